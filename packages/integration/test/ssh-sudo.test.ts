import { execFileSync } from 'node:child_process'
import { chmod, chown, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { makeTempDir, mountLoopFilesystem, requireTools, startSshd, writeTree, type LoopFilesystem, type Sshd, type TempDir } from '@bb/testkit'
import { content, runCli, show } from './helpers.js'

/**
 * Over ssh as a user that is not root, with `--ssh-sudo` (issue 4, "`sudo` on the remote for btrfs
 * commands"): the host's sudoers holds exactly the line `bbackup doctor` prints, and every command
 * of a btrfs and an rsync job works through it: run, restore onto that host, list --sizes, prune,
 * status. The backup directories there are root's (0700): without sudo the user could not even look in.
 */
describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'sudo', 'visudo', 'useradd', 'userdel', 'rsync', 'btrfs', 'mkfs.btrfs'], { root: true }))('over ssh as a user that is not root, through sudo with the rule doctor prints', () => {
  let sshd: Sshd
  let fs: LoopFilesystem
  let home: TempDir
  let dir: string
  let ssh: string[]
  // a login of its own, made for this test and removed after it
  const user = `bbsudo${process.pid}`
  const sudoers = `/etc/sudoers.d/bbackup-test-ssh-${process.pid}`
  let created = false
  const remote = (path: string): string => `ssh://${user}@127.0.0.1:${sshd.port}${path}`

  beforeAll(async () => {
    sshd = await startSshd()
    // sshd reads authorized_keys as the user who logs in: the fixture's directory is root's alone
    await chmod(sshd.directory, 0o755)
    await chmod(join(sshd.directory, 'authorized_keys'), 0o644)
    ssh = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile, '--ssh-sudo']
    home = await makeTempDir('ssh-sudo-home')
    // a password of '*' (none can match) rather than useradd's '!' (locked): sshd lets a locked account in by no key
    execFileSync('useradd', ['--no-create-home', '--home-dir', home.path, '--shell', '/bin/sh', '--password', '*', user])
    created = true
    await chmod(home.path, 0o755)
    await chown(home.path, Number(execFileSync('id', ['-u', user], { encoding: 'utf8' })), Number(execFileSync('id', ['-g', user], { encoding: 'utf8' })))
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    dir = fs.mountPoint
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n', 'sub/b.bin': 'b'.repeat(300_000) })
    await writeTree(join(dir, 'plain'), { 'keep.txt': 'same\n', 'change.txt': 'one\n' })
    for (const d of ['backup', 'rbackup', 'restored']) await mkdir(join(dir, d), { mode: 0o700 })
  })
  afterAll(async () => {
    await rm(sudoers, { force: true })
    await sshd?.stop()
    // sshd is gone, and with it every process of the user's sessions
    if (created) execFileSync('userdel', [user])
    await fs?.cleanup()
    await home?.cleanup()
  })

  it('doctor prints the sudoers line; with it, a btrfs push, incremental, and a restore onto that host work, and doctor finds the filesystem and the clock', async () => {
    const before = await runCli(['doctor', remote(join(dir, 'backup')), '--driver', 'btrfs', ...ssh], dir)
    expect(before.stdout).toMatch(/PROBLEM connection: sudo on .* refused to run/)
    const line = /^# {3}USER (ALL=\(root\) NOPASSWD: .*)$/m.exec(before.stdout)?.[1]
    expect(line).toBeDefined()
    await writeFile(sudoers, `${user} ${line ?? ''}\n`, { mode: 0o440 })
    execFileSync('visudo', ['-c', '-q', '-f', sudoers])

    const doctor = await runCli(['doctor', remote(join(dir, 'backup')), '--driver', 'btrfs', ...ssh], dir)
    // every check passes but the advice to hold the key to bbackup-remote
    expect(doctor.stdout.split('\n').filter((l) => l.startsWith('PROBLEM'))).toEqual([expect.stringMatching(/^PROBLEM restricted:/)])
    expect(doctor.stdout).toMatch(/ok +clock: within a second or two of this host's/)
    expect(doctor.stdout).toMatch(/ok +filesystem: .* is on btrfs/)

    const args = ['run', join(dir, 'home'), remote(join(dir, 'backup')), '--state-dir', join(home.path, 'state'), ...ssh]
    const first = await runCli([...args, '--json'], dir)
    expect(first.code, first.stderr).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runCli([...args, '--json'], dir)
    expect(second.code, second.stderr).toBe(0)
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    const status = await runCli(['status', join(dir, 'home'), remote(join(dir, 'backup')), '--state-dir', join(home.path, 'state'), ...ssh], dir)
    expect(status.stdout).toMatch(/space: .* free of /)

    const restored = await runCli(['restore', join(dir, 'backup'), 'latest', remote(join(dir, 'restored/new')), ...ssh], dir)
    expect(restored.code, restored.stderr).toBe(0)
    const [name] = (await readdir(join(dir, 'restored/new')))
    expect(show(join(dir, 'restored/new', name ?? '')).readOnly).toBe(true)
    expect(await content(join(dir, 'restored/new', name ?? ''))).toEqual(await content(join(dir, 'home')))
  })

  it('rsync: backups linked on the far side, their sizes listed, pruned to one, and the space left in status', async () => {
    const job = [join(dir, 'plain'), remote(join(dir, 'rbackup')), '--state-dir', join(home.path, 'rstate'), ...ssh]
    for (let i = 0; i < 2; i++) {
      const r = await runCli(['run', ...job, '-q'], dir)
      expect(r.code, r.stderr).toBe(0)
      await writeFile(join(dir, 'plain/change.txt'), `${i}\n`)
      await new Promise((resolve) => setTimeout(resolve, 1100)) // a new second: a new backup name
    }
    const listed = await runCli(['list', ...job, '--sizes'], dir)
    expect(listed.code, listed.stdout + listed.stderr).toBe(0)
    expect(listed.stdout).toMatch(/2 backups, .* on disk/)
    const pruned = await runCli(['prune', ...job, '--keep-backups', '1'], dir)
    expect(pruned.code, pruned.stdout + pruned.stderr).toBe(0)
    expect((await readdir(join(dir, 'rbackup'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
    const status = await runCli(['status', ...job], dir)
    expect(status.stdout).toMatch(/space: .* free of /)
  })
})
