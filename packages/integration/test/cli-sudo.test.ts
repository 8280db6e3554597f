import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { content, finished, ROOT, show } from './helpers.js'

const NOBODY = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim())
const NOGROUP = Number(execFileSync('id', ['-g', 'nobody'], { encoding: 'utf8' }).trim())

/** The bbackup CLI from source, as the user nobody (no capabilities, no groups), as cron would run it. */
const asNobody = (args: readonly string[], home: string): Promise<{ code: number | null; stdout: string; stderr: string }> => finished(spawn('setpriv', [
  `--reuid=${NOBODY}`, `--regid=${NOGROUP}`, '--clear-groups', '--', process.execPath, '--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/cli/src/cli.ts'), ...args,
], { cwd: ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, TMPDIR: home }, stdio: ['ignore', 'pipe', 'pipe'] }))

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
