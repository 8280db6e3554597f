import { chmod, chown, lchown, lstat, mkdir, readdir, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, startRsyncd, startSshd, treeManifest, writeTree, type Rsyncd, type Sshd, type TempDir } from '@bb/testkit'
import { NOBODY, NOGROUP, runCli, waitFor } from './helpers.js'

const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => /^\d{4}-/.test(n)).sort()

describe.runIf(requireTools(['rsync', 'sshd', 'ssh', 'ssh-keygen'], { root: true }))('bbackup with an rsync daemon target (and through an ssh tunnel)', () => {
  let daemon: Rsyncd
  let sshd: Sshd
  let tmp: TempDir
  beforeAll(async () => {
    daemon = await startRsyncd()
    sshd = await startSshd()
  })
  afterAll(async () => {
    await daemon?.stop()
    await sshd?.stop()
  })
  beforeEach(async () => {
    tmp = await makeTempDir('cli-rsyncd')
    await writeTree(join(tmp.path, 'home'), { 'a.txt': 'alpha\n', 'docs/b.txt': 'bravo\n' })
  })
  afterEach(async () => {
    await tmp?.cleanup()
  })

  it('runs, lists and restores with rsync://user@host:port/module/path and --password-file', async () => {
    const target = daemon.url('cli')
    const args = ['--password-file', daemon.passwordFile, '--state-dir', 'state']
    const first = await runCli(['run', 'home', target, ...args, '--json'], tmp.path)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    await writeFile(join(tmp.path, 'home/a.txt'), 'changed\n')
    const second = await runCli(['run', 'home', target, ...args, '--json'], tmp.path)
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    const made = await backupsIn(join(daemon.modulePath, 'cli'))
    expect(made).toHaveLength(2)
    const [one, two] = made.map((n) => join(daemon.modulePath, 'cli', n)) as [string, string]
    expect((await stat(join(one, 'docs/b.txt'))).ino).toBe((await stat(join(two, 'docs/b.txt'))).ino)

    const listed = await runCli(['list', 'home', target, ...args, '--json'], tmp.path)
    expect(listed.code, listed.stderr).toBe(0)
    expect(JSON.parse(listed.stdout)).toMatchObject([{ side: 'target', snapshots: [{ name: made[0], complete: true }, { name: made[1], complete: true }] }])
    const restored = await runCli(['restore', target, 'latest', 'restored', '--password-file', daemon.passwordFile], tmp.path)
    expect(restored.code, restored.stdout + restored.stderr).toBe(0)
    expect(await treeManifest(join(tmp.path, 'restored'))).toEqual(await treeManifest(join(tmp.path, 'home')))
  })

  it('works with a module of "max connections = 1": a run, an incremental one, list, prune and restore, none of them retried by the run', async () => {
    const single = await startRsyncd({ moduleLines: ['max connections = 1'] })
    try {
      const target = single.url('one')
      const args = ['--password-file', single.passwordFile, '--state-dir', 'state']
      for (const change of ['first', 'second']) {
        await writeFile(join(tmp.path, 'home/a.txt'), `${change}\n`)
        const r = await runCli(['run', 'home', target, ...args, '--retries', '0'], tmp.path)
        expect(r.code, r.stdout + r.stderr).toBe(0)
      }
      const made = await backupsIn(join(single.modulePath, 'one'))
      expect(made).toHaveLength(2)
      const listed = await runCli(['list', target, '--password-file', single.passwordFile, '--json'], tmp.path)
      expect(listed.code, listed.stderr).toBe(0)
      expect(JSON.parse(listed.stdout)).toMatchObject([{ snapshots: made.map((name) => ({ name, complete: true })) }])
      const pruned = await runCli(['prune', 'home', target, ...args, '--keep-backups', '1'], tmp.path)
      expect(pruned.code, pruned.stdout + pruned.stderr).toBe(0)
      expect(await backupsIn(join(single.modulePath, 'one'))).toEqual(made.slice(1))
      const restored = await runCli(['restore', target, 'latest', 'restored', '--password-file', single.passwordFile], tmp.path)
      expect(restored.code, restored.stdout + restored.stderr).toBe(0)
      expect(await treeManifest(join(tmp.path, 'restored'))).toEqual(await treeManifest(join(tmp.path, 'home')))
      // the daemon did turn connections away, and the run waited for a free one
      expect(await single.log()).toMatch(/max connections \(1\) reached/)
    } finally {
      await single.stop()
    }
  })

  it('names the option a module refuses (refuse options) and the line to change, and does not retry it', async () => {
    for (const [refused, needed] of [['delete', 'to remove old backups'], ['link-dest', 'to hard-link unchanged files']] as const) {
      const strict = await startRsyncd({ moduleLines: [`refuse options = ${refused}`] })
      try {
        const args = ['--password-file', strict.passwordFile, '--state-dir', `state-${refused}`]
        // --link-dest is first given to the second run, which has a backup to link to
        for (const change of refused === 'delete' ? ['first'] : ['first', 'second']) {
          await writeFile(join(tmp.path, 'home/a.txt'), `${change}\n`)
          const r = await runCli(['run', 'home', strict.url('strict'), ...args], tmp.path)
          if (change === 'first' && refused === 'link-dest') {
            expect(r.code, r.stdout + r.stderr).toBe(0)
            continue
          }
          expect(r.code).toBe(10)
          expect(r.stdout).toContain(`FAILED: module backups at 127.0.0.1:${strict.port} refuses rsync's --${refused}, which bbackup needs ${needed}`)
          expect(r.stdout).toContain(`hint: take ${refused} out of the module's "refuse options" in rsyncd.conf on the server`)
          expect(r.stderr).not.toMatch(/trying again/)
        }
      } finally {
        await strict.stop()
      }
    }
  })

  it("takes over a module rsync-system-backup wrote to: its backups adopted, its latest/ mirror left as it is (a warning), each backup published", async () => {
    const dir = join(daemon.modulePath, 'rsb')
    await writeTree(join(dir, 'latest'), { 'a.txt': 'alpha\n', 'mirror-only.txt': 'm\n' })
    await writeTree(join(dir, '2024-03-13 01:02:03'), { 'a.txt': 'alpha\n' })
    const mirror = await treeManifest(join(dir, 'latest'))
    const args = ['--password-file', daemon.passwordFile, '--state-dir', 'state']
    for (const round of [1, 2]) {
      const r = await runCli(['run', 'home', daemon.url('rsb'), ...args, '--json'], tmp.path)
      expect(r.code, `round ${round}: ${r.stdout}${r.stderr}`).toBe(0)
      expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: true, warnings: [expect.stringMatching(/^latest in rsync:\/\/.*\/rsb is a directory, not a link bbackup made/)] }] })
    }
    expect(await treeManifest(join(dir, 'latest'))).toEqual(mirror)
    // both published: complete, nothing left marked unfinished
    const listed = await runCli(['list', daemon.url('rsb'), '--password-file', daemon.passwordFile, '--json'], tmp.path)
    expect(JSON.parse(listed.stdout)).toMatchObject([{ snapshots: [{ name: '2024-03-13 01:02:03', complete: true }, { complete: true }, { complete: true }] }])
    expect((await readdir(join(dir, '.bbackup'))).filter((n) => n.endsWith('.partial'))).toEqual([])
  })

  it('refuses a password file others can read, with the fix, and writes nothing (the target failed: exit 10)', async () => {
    const file = join(tmp.path, 'pw')
    await writeFile(file, `${daemon.password}\n`)
    await chmod(file, 0o644)
    const r = await runCli(['run', 'home', daemon.url('refused'), '--password-file', 'pw', '--state-dir', 'state'], tmp.path)
    expect(r.code).toBe(10)
    expect(r.stderr).toContain(`the password file ${file} may be read or written by group or others (mode 0644)`)
    expect(r.stdout).toContain('hint: chown 0')
    expect(r.stdout).toContain('chmod 600')
    expect(r.stderr + r.stdout).not.toContain(daemon.password)
    expect(await readdir(daemon.modulePath)).not.toContain('refused')
  })

  it("backs up a module as the source (rsnapshot's rsync://host/module/ sources): full, then incremental with hard links here; a missing path and a wrong password refused", async () => {
    await writeTree(join(daemon.modulePath, 'client'), { 'etc/hosts': '127.0.0.1 localhost\n', 'big.bin': 'b'.repeat(100_000) })
    const args = ['--password-file', daemon.passwordFile, '--state-dir', 'state', '--json']
    const first = await runCli(['run', daemon.url('client'), 'pulled', ...args], tmp.path)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    await writeFile(join(daemon.modulePath, 'client/etc/hosts'), 'changed\n')
    const second = await runCli(['run', daemon.url('client'), 'pulled', ...args], tmp.path)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    const made = (await backupsIn(join(tmp.path, 'pulled'))).map((n) => join(tmp.path, 'pulled', n))
    expect(made).toHaveLength(2)
    const [one, two] = made as [string, string]
    expect((await stat(join(one, 'big.bin'))).ino).toBe((await stat(join(two, 'big.bin'))).ino)
    expect(await treeManifest(two)).toEqual(await treeManifest(join(daemon.modulePath, 'client')))

    const missing = await runCli(['run', daemon.url('not-there'), 'pulled', ...args], tmp.path)
    expect(missing.code).toBe(1)
    // one JSON document, the job's error in it, naming the whole location
    expect(JSON.parse(missing.stdout)).toMatchObject({ error: {
      code: 'SOURCE_UNAVAILABLE', message: `the source ${daemon.url('not-there')} does not exist`,
      hint: `check the path in the module: rsync --list-only ${daemon.url()}/ lists what it holds`,
    } })
    await writeFile(join(tmp.path, 'wrong'), 'not the password\n', { mode: 0o600 })
    const refused = await runCli(['run', daemon.url('client'), 'pulled', '--password-file', 'wrong', '--state-dir', 'state', '--json'], tmp.path)
    expect(refused.code).toBe(1)
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: 'AUTH_FAILED' } })
    expect(await backupsIn(join(tmp.path, 'pulled'))).toHaveLength(2)
  })

  /** the module `doctor rsyncd` prints for `user`, its directory made, the password in the daemon's secrets file and in ./pw */
  const doctorModule = async (module: string, user: string): Promise<{ readonly modulePath: string; readonly printed: string }> => {
    const modulePath = join(tmp.path, 'module')
    await mkdir(modulePath)
    const secrets = join(tmp.path, 'rsyncd.secrets')
    const printed = await runCli(['doctor', 'rsyncd', '--module', module, '--path', modulePath, '--user', user, '--secrets-file', secrets], tmp.path)
    expect(printed.code, printed.stderr).toBe(0)
    await writeFile(secrets, `${user}:doctor-password\n`, { mode: 0o600 })
    await writeFile(join(tmp.path, 'pw'), 'doctor-password\n', { mode: 0o600 })
    return { modulePath, printed: printed.stdout }
  }

  it('doctor rsyncd prints a module that a real daemon serves and bbackup backs up into', async () => {
    const { modulePath, printed } = await doctorModule('fromdoctor', 'root')
    expect(printed).toContain('[fromdoctor]')
    const served = await startRsyncd({ configText: printed })
    try {
      const target = `rsync://root@127.0.0.1:${served.port}/fromdoctor/laptop`
      for (const round of [1, 2]) {
        const r = await runCli(['run', 'home', target, '--password-file', 'pw', '--state-dir', 'state', '--json'], tmp.path)
        expect(r.code, r.stdout + r.stderr).toBe(0)
        expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: true, mode: round === 1 ? 'full' : 'incremental' }] })
        await new Promise((resolve) => setTimeout(resolve, 1000))
      }
      const made = await backupsIn(join(modulePath, 'laptop'))
      expect(made).toHaveLength(2)
      const [one, two] = made.map((n) => join(modulePath, 'laptop', n)) as [string, string]
      expect((await stat(join(one, 'a.txt'))).ino).toBe((await stat(join(two, 'a.txt'))).ino)
    } finally {
      await served.stop()
    }
  })

  it('doctor rsyncd for a daemon that is not root prints fake super, so owners, groups and setuid bits come back on restore', async () => {
    // the daemon chroots into the module, then runs as nobody: it cannot chown
    const { modulePath, printed } = await doctorModule('unprivileged', 'nobody')
    await chown(modulePath, NOBODY, NOGROUP)
    expect(printed).toContain('\nfake super = yes\n')
    const home = join(tmp.path, 'home')
    await writeFile(join(home, 'suid'), '#!/bin/sh\n')
    await chown(join(home, 'suid'), 1234, 5678)
    await chmod(join(home, 'suid'), 0o4755)
    await chown(join(home, 'docs'), 1, 4)
    await symlink('a.txt', join(home, 'link'))
    await lchown(join(home, 'link'), 2, 3)
    const owners = async (root: string): Promise<string[]> => Promise.all(['suid', 'docs', 'link', 'a.txt'].map(async (name) => {
      const s = await lstat(join(root, name))
      return `${name} ${s.uid}:${s.gid} ${(s.mode & 0o7777).toString(8)}`
    }))
    // Debian has no group "nobody": the printed gid is the account's own group, nogroup here
    const config = printed.replace('gid = nobody', `gid = ${NOGROUP}`)
    const run = async (port: number): Promise<{ readonly ok: boolean; readonly warnings: readonly string[] }> => {
      const r = await runCli(['run', 'home', `rsync://nobody@127.0.0.1:${port}/unprivileged/host`, '--password-file', 'pw', '--state-dir', 'state', '--json'], tmp.path)
      expect(r.code, r.stdout + r.stderr).toBe(0)
      await new Promise((resolve) => setTimeout(resolve, 1000))
      return (JSON.parse(r.stdout) as { targets: { ok: boolean; warnings: string[] }[] }).targets[0] ?? { ok: false, warnings: [] }
    }
    // the module as it was printed before fake super: the run says that owners are lost
    const bare = await startRsyncd({ configText: config.replace('fake super = yes', '') })
    try {
      const lost = await run(bare.port)
      expect(lost.warnings).toEqual([expect.stringMatching(/^module unprivileged at 127\.0\.0\.1:\d+ does not keep file owners: every file of this backup belongs to the daemon's account[\s\S]*add "fake super = yes"/)])
      // and the backup's record says so
      const listed = await runCli(['list', `rsync://nobody@127.0.0.1:${bare.port}/unprivileged/host`, '--password-file', 'pw', '--json'], tmp.path)
      expect(JSON.parse(listed.stdout)).toMatchObject([{ snapshots: [{ complete: true, health: 'warnings' }] }])
    } finally {
      await bare.stop()
    }
    const served = await startRsyncd({ configText: config })
    try {
      const target = `rsync://nobody@127.0.0.1:${served.port}/unprivileged/host`
      for (const round of [1, 2]) {
        if (round === 2) await writeFile(join(home, 'a.txt'), 'changed\n')
        expect((await run(served.port)).warnings).toEqual([])
      }
      const made = await backupsIn(join(modulePath, 'host'))
      expect(made).toHaveLength(3)
      const [, one, two] = made.map((n) => join(modulePath, 'host', n)) as [string, string, string]
      // stored as the daemon's user, hard-linked between the backups
      expect((await stat(join(two, 'suid'))).uid).toBe(NOBODY)
      expect((await stat(join(one, 'suid'))).ino).toBe((await stat(join(two, 'suid'))).ino)
      const restored = await runCli(['restore', target, 'latest', 'restored', '--password-file', 'pw'], tmp.path)
      expect(restored.code, restored.stdout + restored.stderr).toBe(0)
      expect(await owners(join(tmp.path, 'restored'))).toEqual(await owners(home))
      expect(await treeManifest(join(tmp.path, 'restored'))).toEqual(await treeManifest(home))
    } finally {
      await served.stop()
    }
  })

  it('reaches the daemon through --tunnel (a port forwarded over ssh), from the config, and closes it afterwards', async () => {
    await writeFile(join(tmp.path, 'bbackup.toml'), [
      '[jobs.home]', 'source = "home"', `targets = ["${daemon.url('tunnelled')}"]`, 'state_dir = "state"',
      `password_file = "${daemon.passwordFile}"`, `tunnel = "root@127.0.0.1:${sshd.port}"`,
      `ssh_identity = "${sshd.identityFile}"`, `ssh_known_hosts = "${sshd.knownHostsFile}"`, '',
    ].join('\n'))
    const before = await sshd.logins()
    const r = await runCli(['run', '-c', 'bbackup.toml', '--json', '-v'], tmp.path)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    const text = JSON.stringify(JSON.parse(r.stdout))
    // rsync went to the local end of the tunnel, not to the daemon's own port
    const ports = [...text.matchAll(/rsync:\/\/backup@127\.0\.0\.1:(\d+)\/backups\/tunnelled\/\d{4}-/g)].map((m) => Number(m[1]))
    expect(ports).toHaveLength(1)
    expect(ports[0]).not.toBe(daemon.port)
    expect(await sshd.logins() - before).toBe(1)
    expect(await backupsIn(join(daemon.modulePath, 'tunnelled'))).toHaveLength(1)
    // the tunnel ended with the run
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
  })

  it('opens the tunnel again when its ssh connection drops mid-transfer: the retry goes through a new one and the run completes', async () => {
    const files: Record<string, Buffer> = {}
    for (let i = 0; i < 400; i++) files[`f/${i}.bin`] = Buffer.alloc(64 * 1024, i % 251)
    await writeTree(join(tmp.path, 'big'), files)
    await writeFile(join(tmp.path, 'bbackup.toml'), [
      '[jobs.big]', 'source = "big"', `targets = ["${daemon.url('dropped')}"]`, 'state_dir = "state"', 'rsync_options = ["--bwlimit=8m"]',
      `password_file = "${daemon.passwordFile}"`, `tunnel = "root@127.0.0.1:${sshd.port}"`,
      `ssh_identity = "${sshd.identityFile}"`, `ssh_known_hosts = "${sshd.knownHostsFile}"`, '',
    ].join('\n'))
    const module = join(daemon.modulePath, 'dropped')
    const arrived = async (): Promise<number> => (await readdir(module, { recursive: true }).catch(() => [])).filter((n) => n.endsWith('.bin')).length
    const before = await sshd.logins()
    const run = runCli(['run', '-c', 'bbackup.toml', '--json', '--retries', '1'], tmp.path)
    // the connection dies under the transfer: the server's side of it killed (its processes, started by our sshd)
    await waitFor(async () => (await arrived()) > 20, 20_000)
    const dropped = sshd.sessionPids()
    expect(dropped.length).toBeGreaterThan(0)
    for (const pid of dropped) process.kill(pid, 'SIGKILL')
    const r = await run
    expect(r.code, r.stdout + r.stderr).toBe(0)
    const [target] = JSON.parse(r.stdout).targets
    // tried twice, the second time resuming what the first left
    expect(target).toMatchObject({ ok: true, attempts: 2, recovered: [{ action: 'resume' }] })
    // a second login made the new tunnel; the backup is whole
    expect(await sshd.logins() - before).toBe(2)
    const backups = await backupsIn(module)
    expect(backups).toHaveLength(1)
    expect(await treeManifest(join(module, backups[0] as string))).toEqual(await treeManifest(join(tmp.path, 'big')))
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
  }, 60_000)
})
