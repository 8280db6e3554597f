import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, mountLoopFilesystem, requireTools, startRsyncd, writeTree, type LoopFilesystem, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { content, finished, NOBODY, nobodySudoRule, NOGROUP, ROOT, show } from './helpers.js'


/** The bbackup CLI from source, as the user nobody (no capabilities, no groups), as cron would run it. */
const asNobody = (args: readonly string[], home: string, env: Readonly<Record<string, string>> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> => finished(spawn('setpriv', [
  `--reuid=${NOBODY}`, `--regid=${NOGROUP}`, '--clear-groups', '--', process.execPath, '--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/cli/src/cli.ts'), ...args,
], { cwd: ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, TMPDIR: home, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }))

/** Is the process with this pid still there (a zombie counts as gone)? */
const alive = (pid: number): boolean => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/**
 * btrfs as a user that is not root (issue 3, "Non-root operation"): `--sudo` runs btrfs through
 * `sudo -n` with the sudoers line that bbackup itself prints; everything else runs as the user.
 */
describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'sudo', 'setpriv', 'visudo'], { root: true }))('btrfs through sudo, as a user that is not root', () => {
  let fs: LoopFilesystem
  let dir: string
  let home: TempDir
  const sudoers = `/etc/sudoers.d/bbackup-test-${process.pid}`
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    dir = fs.mountPoint
    // the temp dir above the mount point is private (0700): nobody must be able to walk to it
    await chmod(dirname(dir), 0o755)
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n', 'sub/b.bin': 'b'.repeat(300_000) })
    // made by root once, as the docs say: a user cannot create directories here
    await mkdir(join(dir, 'home/.snapshots'))
    await mkdir(join(dir, 'backup'))
    home = await makeTempDir('sudo-home')
    await chmod(home.path, 0o755)
    await chown(home.path, NOBODY, NOGROUP)
  })
  afterEach(async () => {
    await rm(sudoers, { force: true })
    await fs.cleanup()
    await home.cleanup()
  })

  it('without a rule fails with the sudoers line to add; with that line, full then incremental backups and pruning work', async () => {
    const args = ['run', join(dir, 'home'), join(dir, 'backup'), '--state-dir', join(home.path, 'state')]
    const plain = await asNobody([...args, '-q'], home.path)
    expect(plain.code).toBe(1)
    expect(plain.stderr).toMatch(/permission denied[\s\S]*--sudo[\s\S]*PERMISSION_DENIED/)

    const refused = await asNobody([...args, '--sudo', '-q'], home.path)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('AUTH_FAILED')
    const btrfsPath = execFileSync('sh', ['-c', 'command -v btrfs'], { encoding: 'utf8' }).trim()
    const line = /add the line "([^"]+)"/.exec(refused.stderr)?.[1]
    expect(line).toBe(`nobody ALL=(root) NOPASSWD: ${btrfsPath}`)

    // the line as printed is the rule
    await writeFile(sudoers, `${line ?? ''}\n`, { mode: 0o440 })
    execFileSync('visudo', ['-c', '-q', '-f', sudoers])
    const first = await asNobody([...args, '--sudo', '--json'], home.path)
    expect(first.code, first.stderr).toBe(0)
    const report = JSON.parse(first.stdout) as { targets: { ok: boolean; mode: string; bytes: number }[] }
    expect(report.targets[0]).toMatchObject({ ok: true, mode: 'full' })
    // sudo's btrfs cannot be counted from /proc by this user: the stream is counted on its way
    expect(report.targets[0]?.bytes).toBeGreaterThan(300_000)

    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    // from a config this time: `sudo = true`, and doctor prints the same line
    const config = join(home.path, 'config.toml')
    await writeFile(config, [
      '[jobs.home]', `source = "${join(dir, 'home')}"`, `targets = ["${join(dir, 'backup')}"]`, `state_dir = "${join(home.path, 'state')}"`,
      'sudo = true', 'keep_backups = "1"', 'keep_snapshots = "1"', '',
    ].join('\n'))
    const doctor = await asNobody(['doctor', '-c', config], home.path)
    expect(doctor.code, doctor.stdout).toBe(0)
    expect(doctor.stdout).toContain(line)
    const second = await asNobody(['run', '-c', config, '--json'], home.path)
    expect(second.code, second.stderr).toBe(0)
    expect(JSON.parse(second.stdout).targets).toMatchObject([{ ok: true, mode: 'incremental' }])

    // what nobody received is a complete backup, root's btrfs says, and kept one of each side
    const backups = (await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))
    expect(backups).toHaveLength(1)
    expect(await readdir(join(dir, 'home/.snapshots'))).toEqual(backups)
    const received = show(join(dir, 'backup', backups[0] ?? ''))
    expect(received.readOnly).toBe(true)
    expect(received.receivedUuid).toBe(show(join(dir, 'home/.snapshots', backups[0] ?? '')).uuid)
    expect(await content(join(dir, 'backup', backups[0] ?? ''))).toEqual(await content(join(dir, 'home')))
  })

  it('a kill reaches the command under sudo: SIGKILL would stop sudo alone, so it goes as TERM, which sudo passes on', async () => {
    // as root sudo needs no rule; `sleep` stands in for a btrfs receive that hangs
    const at = localTransport(dir, { sudo: ['sleep'] })
    const running = at.spawn(['sleep', '300'])
    let child: number | undefined
    try {
      for (let i = 0; i < 50 && child === undefined; i++) {
        await new Promise((r) => setTimeout(r, 100))
        child = Number(execFileSync('sh', ['-c', `cat /proc/${running.pid ?? 0}/task/*/children`], { encoding: 'utf8' }).trim().split(/\s+/)[0]) || undefined
      }
      expect(child).toBeDefined()
      running.kill('SIGKILL')
      // an orphaned sleep would hold sudo's stderr open: done would never come
      const done = await Promise.race([running.done, new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000))])
      expect(done).toBeDefined()
      expect(done?.isOk() === true ? done.value.exitCode : done?._unsafeUnwrapErr().code).not.toBe(0)
      expect(alive(child ?? 0)).toBe(false)
    } finally {
      if (child !== undefined && alive(child)) process.kill(child, 'SIGKILL')
    }
  })
})

/**
 * The rsync driver as a user that is not root (issue 3, "rsync driver under --sudo"; issue 5,
 * rsync-system-backup's sudo by default and `-u/--no-sudo`): rsync reads and keeps what only root
 * may, and the root-owned trees it made are moved and removed through sudo as well.
 */
describe.runIf(requireTools(['rsync', 'sudo', 'setpriv', 'visudo'], { root: true }))('the rsync driver through sudo, as a user that is not root', () => {
  let base: TempDir
  let home: TempDir
  const sudoers = `/etc/sudoers.d/bbackup-test-rsync-${process.pid}`
  const path = (...p: string[]): string => join(base.path, ...p)
  /** the complete backups in a target directory, oldest first */
  const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => !n.startsWith('.') && n !== 'latest' && !n.endsWith('.partial')).sort()
  const rule = (): string => nobodySudoRule(['rsync', 'rm', 'mv'])
  beforeEach(async () => {
    base = await makeTempDir('rsync-sudo')
    await chmod(base.path, 0o755)
    // a source of root's with what only root may read
    await writeTree(path('src'), { 'pub.txt': 'public\n', 'big.bin': 'b'.repeat(200_000), 'secret/key': 'root only\n' })
    await chmod(path('src/secret'), 0o700)
    await chmod(path('src/secret/key'), 0o600)
    // the target directories are the user's, as the docs say
    for (const d of ['backup', 'system', 'as-user']) {
      await mkdir(path(d))
      await chown(path(d), NOBODY, NOGROUP)
    }
    home = await makeTempDir('rsync-sudo-home')
    await chmod(home.path, 0o755)
    await chown(home.path, NOBODY, NOGROUP)
  })
  afterEach(async () => {
    await rm(sudoers, { force: true })
    await base.cleanup()
    await home.cleanup()
  })

  it('run --sudo: the sudoers line for rsync, rm and mv; then what only root reads is backed up with its owner, linked to the last backup, and pruned', async () => {
    const args = ['run', path('src'), path('backup'), '--driver', 'rsync', '--state-dir', join(home.path, 'state'), '--sudo']
    const refused = await asNobody([...args, '-q'], home.path)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('AUTH_FAILED')
    expect(/add the line "([^"]+)"/.exec(refused.stderr)?.[1]).toBe(rule())
    expect(await backupsIn(path('backup'))).toEqual([])

    await writeFile(sudoers, `${rule()}\n`, { mode: 0o440 })
    execFileSync('visudo', ['-c', '-q', '-f', sudoers])
    const first = await asNobody([...args, '--json'], home.path)
    expect(first.code, first.stderr).toBe(0)
    const [one] = await backupsIn(path('backup'))
    expect(readFileSync(path('backup', one ?? '', 'secret/key'), 'utf8')).toBe('root only\n')
    const key = await stat(path('backup', one ?? '', 'secret/key'))
    expect([key.uid, key.mode & 0o777]).toEqual([0, 0o600])

    await writeFile(path('src/pub.txt'), 'changed\n')
    await new Promise((r) => setTimeout(r, 1100))
    const second = await asNobody([...args, '--json'], home.path)
    expect(second.code, second.stderr).toBe(0)
    const [older, newer] = await backupsIn(path('backup'))
    expect(newer).toBeDefined()
    // unchanged files are hard links into the last backup, as root made them
    expect((await stat(path('backup', newer ?? '', 'big.bin'))).ino).toBe((await stat(path('backup', older ?? '', 'big.bin'))).ino)
    expect(readFileSync(path('backup', newer ?? '', 'pub.txt'), 'utf8')).toBe('changed\n')

    // the older tree is root's: the user may neither move it to the trash nor empty it, sudo does both
    const pruned = await asNobody(['prune', path('src'), path('backup'), '--driver', 'rsync', '--state-dir', join(home.path, 'state'), '--sudo', '--keep-backups', '1'], home.path)
    expect(pruned.code, pruned.stderr).toBe(0)
    expect(await backupsIn(path('backup'))).toEqual([newer])
    expect(await readdir(path('backup/.bbackup/trash'))).toEqual([])
    // the doctor prints the same rule for the job
    const config = join(home.path, 'config.toml')
    await writeFile(config, ['[jobs.src]', `source = "${path('src')}"`, `targets = ["${path('backup')}"]`, 'driver = "rsync"', `state_dir = "${join(home.path, 'state')}"`, 'sudo = true', ''].join('\n'))
    const doctor = await asNobody(['doctor', '-c', config], home.path)
    expect(doctor.stdout).toContain(`rsync, rm, mv run as root through sudo -n; /etc/sudoers.d/bbackup (visudo -f) needs:\n    ${rule()}`)
  })

  it('system-backup: as a user that is not root rsync runs through sudo unless -u, which copies as the user', async () => {
    const noRule = await asNobody(['system-backup', path('src'), path('system'), '--state-dir', join(home.path, 'state1'), '-q'], home.path)
    expect(noRule.code).toBe(1)
    expect(noRule.stderr).toContain('AUTH_FAILED')

    await writeFile(sudoers, `${rule()}\n`, { mode: 0o440 })
    execFileSync('visudo', ['-c', '-q', '-f', sudoers])
    const withSudo = await asNobody(['system-backup', path('src'), path('system'), '--state-dir', join(home.path, 'state1'), '-q'], home.path)
    expect(withSudo.code, withSudo.stderr).toBe(0)
    const [made] = await backupsIn(path('system'))
    expect((await stat(path('system', made ?? '', 'secret/key'))).uid).toBe(0)

    // -u: rsync as nobody, who cannot read the secret: the copy is incomplete and not published
    const asUser = await asNobody(['system-backup', '-u', path('src'), path('as-user'), '--state-dir', join(home.path, 'state2'), '-q'], home.path)
    expect(asUser.code).not.toBe(0)
    // -q still says why
    expect(asUser.stderr).toMatch(/FAILED: rsync could not copy some files[\s\S]*hint: [\s\S]*Permission denied/)
    expect(await backupsIn(path('as-user'))).toEqual([])
    // what nobody may read is copied, owned by nobody: no sudo was involved
    await rm(path('src/secret'), { recursive: true })
    const readable = await asNobody(['system-backup', '-u', path('src'), path('as-user'), '--state-dir', join(home.path, 'state2'), '-q'], home.path)
    expect(readable.code, readable.stderr).toBe(0)
    const [copied] = await backupsIn(path('as-user'))
    expect((await stat(path('as-user', copied ?? '', 'pub.txt'))).uid).toBe(NOBODY)
  })

  it('to an rsync daemon: the password reaches rsync under sudo, from the user\'s own password file and from RSYNC_PASSWORD (sudo drops the environment, and rsync as root refuses a password file root does not own)', async () => {
    const daemon = await startRsyncd()
    try {
      await writeFile(sudoers, `${rule()}\n`, { mode: 0o440 })
      execFileSync('visudo', ['-c', '-q', '-f', sudoers])
      const file = join(home.path, 'nas.secret')
      await writeFile(file, `${daemon.password}\n`, { mode: 0o600 })
      await chown(file, NOBODY, NOGROUP)
      const withFile = await asNobody(['run', path('src'), daemon.url('sudo-file'), '--driver', 'rsync', '--sudo', '--password-file', file, '--state-dir', join(home.path, 'state1'), '--json'], home.path)
      expect(withFile.code, withFile.stdout + withFile.stderr).toBe(0)
      const [one] = await backupsIn(join(daemon.modulePath, 'sudo-file'))
      // root read it here: only rsync under sudo could
      expect(readFileSync(join(daemon.modulePath, 'sudo-file', one ?? '', 'secret/key'), 'utf8')).toBe('root only\n')

      const withEnv = await asNobody(['system-backup', path('src'), daemon.url('sudo-env'), '--state-dir', join(home.path, 'state2'), '-q'], home.path, { RSYNC_PASSWORD: daemon.password })
      expect(withEnv.code, withEnv.stdout + withEnv.stderr).toBe(0)
      const [two] = await backupsIn(join(daemon.modulePath, 'sudo-env'))
      expect(readFileSync(join(daemon.modulePath, 'sudo-env', two ?? '', 'secret/key'), 'utf8')).toBe('root only\n')
      expect(withFile.stdout + withFile.stderr + withEnv.stdout + withEnv.stderr).not.toContain(daemon.password)

      // a wrong password is refused as such, not asked for on a terminal
      const wrong = await asNobody(['run', path('src'), daemon.url('sudo-wrong'), '--driver', 'rsync', '--sudo', '--state-dir', join(home.path, 'state3'), '-q'], home.path, { RSYNC_PASSWORD: 'not-it' })
      expect(wrong.code).not.toBe(0)
      expect(wrong.stderr + wrong.stdout).toContain('refused the login to module backups')
    } finally {
      await daemon.stop()
    }
  })
})
