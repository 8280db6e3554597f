import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { parseLocation, parseSnapshotName, type SpawnOptions, type SshLocation } from '@bb/core'
import { openSshSession, remoteCommand, sshTransport } from '@bb/transports/ssh'
import { AHEAD, SERVE, SERVE_BANNER } from '@bb/transports/ssh-filter'
import { gpgHome, receiveCutBin, ROOT, runCli, waitFor, withGnupgHome } from './helpers.js'
import { makeTempDir, mountLoopFilesystem, requireTools, startSshd, writeTree, type LoopFilesystem, type Sshd, type TempDir } from '@bb/testkit'

const names = async (dir: string, prefix = 'home.'): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => n.startsWith(prefix)).sort()

/**
 * Scenario 21 of reference/reliability.md §4 and the ssh transport's least-privilege mode: the
 * key's authorized_keys line runs bbackup-remote (the bin's source, through tsx) as its forced
 * command with `restrict`, on a real sshd.
 */
describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'rsync', 'btrfs', 'mkfs.btrfs', 'zstd', 'gpg', 'gpgconf'], { root: true }))('bbackup-remote as the forced command of a real sshd', () => {
  let sshd: Sshd
  let bin: TempDir
  let fs: LoopFilesystem
  let dir: string
  let log: string
  let ssh: string[]

  /** authorized_keys: the client key may only run bbackup-remote with these options */
  const forceCommand = async (options: string): Promise<void> => {
    await sshd.setAuthorizedKeys([`command="bbackup-remote ${options} --log ${log}",restrict %KEY%`].map(runFromSource))
  }
  /** an authorized_keys line for `bbackup-remote` as installed, made to run the filter's source */
  const runFromSource = (line: string): string =>
    // the filter is started by the name that the ancestry check of `kill` looks for
    line.replace('command="bbackup-remote ', `command="cd ${ROOT} && exec ${process.execPath} --conditions=@bb/source --import tsx ${join(bin.path, 'bbackup-remote.ts')} `)
  /** one raw request through ssh, as a hostile client would send it */
  const request = (command: string, input = '') => spawnSync('ssh', ['-p', String(sshd.port), '-i', sshd.identityFile, '-o', `UserKnownHostsFile=${sshd.knownHostsFile}`, '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '--', 'root@127.0.0.1', command], { encoding: 'utf8', input, timeout: 30_000 })
  /** the command server's answers after its banner: `STATUS OUT ERR` lines, each followed by that many bytes (ASCII here) */
  const serverAnswers = (out: string) => {
    const answers: { status: number; stdout: string; stderr: string }[] = []
    let rest = out.slice(out.indexOf(`${SERVE_BANNER}\n`) + SERVE_BANNER.length + 1)
    while (rest !== '') {
      const nl = rest.indexOf('\n')
      const [status, o, e] = rest.slice(0, nl).split(' ').map(Number) as [number, number, number]
      answers.push({ status, stdout: rest.slice(nl + 1, nl + 1 + o), stderr: rest.slice(nl + 1 + o, nl + 1 + o + e) })
      rest = rest.slice(nl + 1 + o + e)
    }
    return answers
  }
  const remote = (path: string): string => `ssh://root@127.0.0.1:${sshd.port}${path}`

  beforeAll(async () => {
    sshd = await startSshd()
    bin = await makeTempDir('bbackup-remote-bin')
    await symlink(join(ROOT, 'packages/cli/src/remote-cli.ts'), join(bin.path, 'bbackup-remote.ts'))
    ssh = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile]
  })
  afterAll(async () => {
    await sshd?.stop()
    await bin?.cleanup()
  })
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    dir = fs.mountPoint
    log = join(dir, 'filter.log')
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await mkdir(join(dir, 'backup'))
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n', 'docs/b.txt': 'b\n', 'big.bin': Buffer.alloc(1024 * 1024, 3) })
  })
  afterEach(async () => {
    await sshd.setAuthorizedKeys(['%KEY%'])
    await fs?.cleanup()
  })

  it.runIf(requireTools(['faketime']))('doctor tells a clock two hours ahead there (scenario 17: only the other side skewed, with libfaketime), and names the fix', async () => {
    // every command of this key runs under faketime: the other host's clock, two hours ahead
    await sshd.setAuthorizedKeys(['command="exec faketime -f +2h /bin/sh -c \\"$SSH_ORIGINAL_COMMAND\\"" %KEY%'])
    const skewed = await runCli(['doctor', remote(join(dir, 'backup')), '--driver', 'btrfs', ...ssh], dir)
    expect(skewed.code, skewed.stdout + skewed.stderr).toBe(1)
    expect(skewed.stdout).toMatch(/^PROBLEM clock: 2 h ahead of this host's: names and ages are this host's, .*\n +fix: set both clocks by NTP/m)
    // the rest is checked all the same
    expect(skewed.stdout).toMatch(/^ok +writable: wrote and removed a file/m)
    // backups there are named by this host's clock, and none is deleted for looking two hours old there
    for (let i = 0; i < 3; i++) {
      const r = await runCli(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--keep-backups', 'min=1h', '-q', ...ssh], dir)
      expect(r.code, r.stdout + r.stderr).toBe(0)
    }
    const there = await names(join(dir, 'backup'))
    expect(there).toHaveLength(3)
    expect(there.map((n) => Math.abs(parseSnapshotName(n)!.time.getTime() - Date.now()) < 5 * 60_000)).toEqual([true, true, true])
  })

  it('doctor checks the location, prints the authorized_keys line, and the key works with that line', async () => {
    const target = remote(join(dir, 'backup'))
    const open = await runCli(['doctor', target, '--driver', 'btrfs', ...ssh], dir)
    expect(open.code, open.stdout + open.stderr).toBe(0)
    expect(open.stdout).toMatch(/^ok +connection: logged in to root@127\.0\.0\.1:\d+ without a prompt$/m)
    expect(open.stdout).toMatch(/^ok +clock: within a second or two of this host's$/m)
    expect(open.stdout).toMatch(/^ok +btrfs: btrfs-progs v/m)
    expect(open.stdout).toMatch(/^ok +filesystem: .* is on btrfs$/m)
    expect(open.stdout).toMatch(/^ok +writable: wrote and removed a file/m)
    expect(await readdir(join(dir, 'backup'))).toEqual([]) // nothing left, no directory made
    expect(open.stdout).toMatch(/^PROBLEM restricted: this key may run any command/m)
    const pub = (await readFile(`${sshd.identityFile}.pub`, 'utf8')).trim()
    const line = open.stdout.split('\n').find((l) => l.startsWith('command='))
    expect(line).toBe(`command="bbackup-remote --role receive --restrict-path ${join(dir, 'backup')} --log /var/log/bbackup-remote.log",restrict ${pub}`)

    await sshd.setAuthorizedKeys([runFromSource((line ?? '').replace('/var/log/bbackup-remote.log', log))])
    const held = await runCli(['doctor', target, '--driver', 'btrfs', ...ssh], dir)
    expect(held.code, held.stdout).toBe(0)
    expect(held.stdout).toMatch(/^ok +restricted: this key already runs bbackup-remote as its forced command$/m)
    expect(held.stdout).toMatch(/^ok +clock: not checked \(this key runs no date there\)$/m)
    expect(held.stdout).toMatch(/^ok +writable: wrote .*\/backup\/\.bbackup-doctor-\S+ \(left there: the key may not delete; remove it by hand\)$/m)
    const run = await runCli(['run', 'home', target, '--state-dir', 'state', '-q', ...ssh], dir)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    // the probe, or the .bbackup/ an older doctor made, does not make the place look like the rsync driver's
    await mkdir(join(dir, 'backup/.bbackup'))
    await writeFile(join(dir, 'backup/.bbackup/doctor-oldhost'), 'x\n')
    await sshd.setAuthorizedKeys(['%KEY%'])
    const told = await runCli(['status', target, ...ssh], dir)
    expect(told.stdout, told.stderr).toMatch(/\(btrfs\) home\.\*: 1 backup/)

    // a location that is not btrfs, a missing directory: named, with the fix, exit 1
    await sshd.setAuthorizedKeys(['%KEY%'])
    const missing = await runCli(['doctor', remote(join(dir, 'nowhere')), '--driver', 'btrfs', ...ssh], dir)
    expect(missing.code).toBe(1)
    expect(missing.stdout).toMatch(/^PROBLEM directory: .*nowhere does not exist\n +fix: create it there: mkdir -p /m)
    const notBtrfs = await runCli(['doctor', remote('/tmp'), '--driver', 'btrfs', ...ssh], dir)
    expect(notBtrfs.code).toBe(1)
    expect(notBtrfs.stdout).toMatch(/^PROBLEM filesystem: \/tmp is on \S+, not btrfs/m)
  })

  it('a receive key takes btrfs backups, full then incremental, and cannot prune them', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    const job = ['home', remote(join(dir, 'backup')), '--state-dir', 'state', ...ssh]
    const first = await runCli(['run', ...job, '-q'], dir)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const [logins, sessions] = [await sshd.logins(), await sshd.sessions()]
    const second = await runCli(['run', ...job, '--json'], dir)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    // bbackup-remote serves the master's short commands itself, each filtered: one login, two sessions (it and the receive)
    expect([await sshd.logins() - logins, await sshd.sessions() - sessions]).toEqual([1, 2])
    const backups = await names(join(dir, 'backup'))
    expect(backups).toHaveLength(2)
    expect(await readFile(log, 'utf8')).toMatch(/ receive \["sh","-c","echo .*","btrfs","receive",/)
    // status tells the free space there: the key may ask df about its directory
    const told = await runCli(['status', ...job], dir)
    expect(told.stdout, told.stderr).toMatch(/space: .* free of /)

    const pruned = await runCli(['prune', ...job, '--keep-backups', '1'], dir)
    expect(pruned.code).not.toBe(0)
    // the two backups were read in one round trip, which the key may do
    expect(await readFile(log, 'utf8')).toMatch(/ list \["sh","-c","while .*","sh","4","btrfs","subvolume","show","[^"]+","4","btrfs","subvolume","show","[^"]+"\]/)
    // a forced command stands in between: the filesystem's subvolume list (beyond the key's directory) is not even asked for
    expect(await readFile(log, 'utf8')).not.toMatch(/"subvolume","list"/)
    expect(pruned.stdout + pruned.stderr).toMatch(/forced command .* refused .*needs the delete role/)
    expect(pruned.stdout + pruned.stderr).toContain('give the key the role this needs')
    expect(await names(join(dir, 'backup'))).toEqual(backups)
    // a target outside the key's directory: the fix is another --restrict-path, not a role
    await mkdir(join(dir, 'elsewhere'))
    const outside = await runCli(['run', 'home', remote(join(dir, 'elsewhere')), '--state-dir', 'state', ...ssh, '-q'], dir)
    expect(outside.code).not.toBe(0)
    expect(outside.stderr).toMatch(/forced command .* refused the path .*elsewhere.*, which is outside /)
    expect(outside.stderr).toContain("hint: let the key reach that path: add its directory to the key's authorized_keys line there (another --restrict-path DIR")
    expect(await readdir(join(dir, 'elsewhere'))).toEqual([])

    // the same key with the delete role prunes, and keeps the newest
    await forceCommand(`--role receive,delete --restrict-path ${join(dir, 'backup')}`)
    const allowed = await runCli(['prune', ...job, '--keep-backups', '1'], dir)
    expect(allowed.code, allowed.stdout + allowed.stderr).toBe(0)
    expect(await names(join(dir, 'backup'))).toEqual(backups.slice(1))
  })

  it('a send key lets this host see what changed between two backups on the far side (diff: btrfs send --no-data there)', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    const job = ['home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q', ...ssh]
    expect((await runCli(['run', ...job], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    await rm(join(dir, 'home/docs/b.txt'))
    expect((await runCli(['run', ...job], dir)).code).toBe(0)
    await forceCommand(`--role send --restrict-path ${join(dir, 'backup')}`)
    const r = await runCli(['diff', remote(join(dir, 'backup')), ...ssh], dir)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.stdout.split('\n')).toEqual(expect.arrayContaining(['M a.txt   (8 B written)', '- docs/b.txt']))
    expect(await readFile(log, 'utf8')).toMatch(/ send \[.*"btrfs","send","-q","--no-data","-p",/)
  })

  it('a receive key stores btrfs streams in a raw target (mode 0600), a delete key prunes them, a send key restores from them', async () => {
    const streams = join(dir, 'backup/streams')
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    // full, incremental, full: the first chain is not the newest's, and a prune may delete it
    const job = ['home', '--raw-target', remote(streams), '--raw-compress', 'zstd', '--raw-full-every', '1', '--state-dir', 'state', ...ssh]
    for (const mode of ['full', 'incremental', 'full']) {
      await writeFile(join(dir, 'home/a.txt'), `${mode}\n`)
      const r = await runCli(['run', ...job, '--json'], dir)
      expect(r.code, r.stdout + r.stderr).toBe(0)
      expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: true, mode }] })
    }
    const files = (await readdir(streams)).sort()
    expect(files.filter((f) => f.endsWith('.btrfs.zst'))).toHaveLength(3)
    expect(files.filter((f) => f.endsWith('.btrfs.zst.info'))).toHaveLength(3)
    expect((await stat(join(streams, files[0] ?? ''))).mode & 0o777).toBe(0o600)
    expect(await readFile(log, 'utf8')).toMatch(/ receive \["sh","-c","echo .*","sh","-c","umask 077 && exec \\"\$@\\"","sh","zstd","-q","-T0","-o","[^"]+\.btrfs\.zst\.part"\]/)

    // pruning needs the delete role
    const refused = await runCli(['prune', ...job, '--keep-backups', '1'], dir)
    expect(refused.code).not.toBe(0)
    expect(refused.stdout + refused.stderr).toMatch(/needs the delete role/)
    expect((await readdir(streams)).sort()).toEqual(files)
    await forceCommand(`--role receive,delete --restrict-path ${join(dir, 'backup')}`)
    const pruned = await runCli(['prune', ...job, '--keep-backups', '1'], dir)
    expect(pruned.code, pruned.stdout + pruned.stderr).toBe(0)
    expect((await readdir(streams)).sort()).toEqual(files.slice(4))

    // a send key reads the streams back out for a restore
    await forceCommand(`--role send --restrict-path ${join(dir, 'backup')}`)
    const restored = await runCli(['restore', remote(streams), 'latest', join(dir, 'restored'), ...ssh], dir)
    expect(restored.code, restored.stdout + restored.stderr).toBe(0)
    const [name] = await readdir(join(dir, 'restored'))
    expect(readFileSync(join(dir, 'restored', name ?? '', 'a.txt'), 'utf8')).toBe('full\n')
  })

  it('encrypted stream files through the forced command: gpg runs here, the receive key writes ciphertext only, a send key reads it back for a restore decrypted here', async () => {
    const streams = join(dir, 'backup/streams')
    const keys = await gpgHome('gnupg', 'bbackup test <backup@example.org>')
    try {
      await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
      const job = ['home', '--raw-target', remote(streams), '--raw-compress', 'zstd', '--raw-encrypt', 'gpg', '--raw-gpg-recipient', 'backup@example.org', '--state-dir', 'state', ...ssh]
      await withGnupgHome(keys, async () => {
        for (const mode of ['full', 'incremental']) {
          await writeFile(join(dir, 'home/a.txt'), `${mode}\n`)
          const r = await runCli(['run', ...job, '--json'], dir)
          expect(r.code, r.stdout + r.stderr).toBe(0)
          expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: true, mode }] })
        }
      })
      const files = (await readdir(streams)).sort()
      expect(files.filter((f) => f.endsWith('.btrfs.zst.gpg'))).toHaveLength(2)
      // what reached the far side was written by dd as it came: no zstd there, no plaintext in the file
      expect(await readFile(log, 'utf8')).toMatch(/ receive \["sh","-c","echo .*","sh","-c","umask 077 && exec \\"\$@\\"","sh","dd","of=[^"]+\.btrfs\.zst\.gpg\.part","bs=1M","status=none"\]/)
      expect((await readFile(join(streams, files[0] ?? ''))).includes(Buffer.from('btrfs-stream'))).toBe(false)

      await forceCommand(`--role send --restrict-path ${join(dir, 'backup')}`)
      const restored = await withGnupgHome(keys, () => runCli(['restore', remote(streams), 'latest', join(dir, 'restored'), ...ssh], dir))
      expect(restored.code, restored.stdout + restored.stderr).toBe(0)
      const [name] = await readdir(join(dir, 'restored'))
      expect(readFileSync(join(dir, 'restored', name ?? '', 'a.txt'), 'utf8')).toBe('incremental\n')
    } finally {
      await keys.cleanup()
    }
  })

  it('a receive key takes rsync backups (compressed on the wire) with hard links to the previous one on the far side', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    const job = ['--driver', 'rsync', join(dir, 'home'), remote(join(dir, 'backup')), '--state-dir', 'state', '--stream-compress', 'zstd', ...ssh]
    expect((await runCli(['run', ...job, '-q'], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runCli(['run', ...job, '-q'], dir)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    const [older, newer] = (await readdir(join(dir, 'backup'))).filter((n) => /^\d{4}-/.test(n)).sort()
    expect((await stat(join(dir, 'backup', newer ?? '', 'big.bin'))).ino).toBe((await stat(join(dir, 'backup', older ?? '', 'big.bin'))).ino)
    expect(await readFile(join(dir, 'backup', newer ?? '', 'a.txt'), 'utf8')).toBe('changed\n')
    expect(await readFile(log, 'utf8')).toMatch(/ receive \["rsync","--server","-[^"]*z[^"]*","--delete",.*"--link-dest",/)
    // list --sizes through the forced command: du runs on the far side, over the key's directory only
    const sized = await runCli(['list', remote(join(dir, 'backup')), '--sizes', '--json', ...ssh], dir)
    expect(sized.code, sized.stdout + sized.stderr).toBe(0)
    expect(Object.keys((JSON.parse(sized.stdout) as [{ sizes: { bytes: Record<string, number> } }])[0].sizes.bytes).sort()).toEqual([older, newer])
    expect(await readFile(log, 'utf8')).toMatch(/ list \["du","-s","-B1","--",/)
  })

  /**
   * Starts a receive through the forced command, stops it (SIGSTOP) on the server, then kills it
   * from the client: the process is gone, killed by bbackup-remote with its own pid.
   */
  const stopStalledReceive = async (options: SpawnOptions): Promise<void> => {
    const session = openSshSession()
    try {
      const target = sshTransport(parseLocation(remote(join(dir, 'backup')))._unsafeUnwrap() as SshLocation, session, { identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile })
      const running = target.spawn(['btrfs', 'receive', join(dir, 'backup')], options)
      const cmdline = (pid: number): string => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
        } catch {
          return '' // gone between the listing and the read
        }
      }
      const receiver = (): number | undefined => sshd.sessionPids().find((pid) => cmdline(pid).startsWith('btrfs\0receive'))
      await waitFor(async () => receiver() !== undefined, 10_000)
      const pid = receiver() as number
      process.kill(pid, 'SIGSTOP')
      // the pid line travels on ssh's stderr ahead of anything else
      await new Promise((r) => setTimeout(r, 500))
      running.kill('SIGKILL')
      await running.done
      await waitFor(async () => !existsSync(`/proc/${pid}`), 10_000)
      expect(await readFile(log, 'utf8')).toMatch(new RegExp(` list \\["kill","-s","KILL","--","${pid}"\\]`))
    } finally {
      await session.close()
    }
  }

  it('lets the client stop a receive it started (a stalled one too), and no other process', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    await stopStalledReceive({ stdin: 'pipe' })
    const other = request(`kill -s KILL -- ${process.pid}`)
    expect(other.status).toBe(255)
    expect(other.stderr).toMatch(/signalling process \d+, which bbackup-remote did not start/)
  })

  it('the zstd stream filters pass the forced command: a compressed push to a receive key, a compressed pull from a send key', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    const pushed = await runCli(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--stream-compress', 'zstd', '--json', ...ssh], dir)
    expect(pushed.code, pushed.stdout + pushed.stderr).toBe(0)
    expect(JSON.parse(pushed.stdout)).toMatchObject({ targets: [{ ok: true, warnings: [] }] })
    expect(await names(join(dir, 'backup'))).toHaveLength(1)
    expect(await readFile(log, 'utf8')).toMatch(/ receive \["sh","-c","echo .*","sh","sh","-c","zstd -dcq \| .*","sh","btrfs","receive",/)

    await forceCommand(`--role send --restrict-path ${join(dir, 'home')}`)
    const pulled = await runCli(['run', remote(join(dir, 'home')), join(dir, 'pulled'), '--state-dir', 'state-pull', '--stream-compress', 'zstd', '--json', ...ssh], dir)
    expect(pulled.code, pulled.stdout + pulled.stderr).toBe(0)
    expect(JSON.parse(pulled.stdout)).toMatchObject({ targets: [{ ok: true, warnings: [] }] })
    expect(await names(join(dir, 'pulled'))).toHaveLength(1)
    expect(await readFile(join(dir, 'pulled', (await names(join(dir, 'pulled')))[0] ?? '', 'big.bin'))).toEqual(Buffer.alloc(1024 * 1024, 3))
  })

  it('stops the btrfs receive behind a zstd filter by its own pid, not the shell around it', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    await stopStalledReceive({ stdin: 'pipe', decompressStdin: 'zstd' })
  })

  it('a send key lets this host pull btrfs backups of the remote subvolume, full then incremental', async () => {
    await forceCommand(`--role send --restrict-path ${join(dir, 'home')}`)
    const job = [remote(join(dir, 'home')), join(dir, 'pulled'), '--state-dir', 'state', ...ssh]
    const first = await runCli(['run', ...job, '-q'], dir)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runCli(['run', ...job, '--json'], dir)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental', route: 'pull' }] })
    expect(await names(join(dir, 'pulled'))).toEqual(await names(join(dir, 'home/.snapshots')))
    expect(await readFile(log, 'utf8')).toMatch(/ send \["btrfs","subvolume","snapshot","-r",/)

    // a key line naming a directory that is not there refuses everything: the run says that, not
    // that --keep-snapshots is a btrfs setting (the source could not be looked at to tell its driver)
    await forceCommand(`--role send --restrict-path ${join(dir, 'home')} --restrict-path ${join(dir, 'no-such-folder')}`)
    const misconfigured = await runCli(['run', ...job, '--keep-snapshots', '2'], dir)
    expect(misconfigured.code).toBe(1)
    expect(misconfigured.stderr).toContain(`the forced command on root@127.0.0.1:${sshd.port} is misconfigured: --restrict-path ${join(dir, 'no-such-folder')} does not exist`)
    expect(misconfigured.stderr).toMatch(/hint: fix the bbackup-remote options in that key's authorized_keys line/)
    expect(misconfigured.stderr).not.toContain('INVALID_OPTIONS')
  })

  it('refuses hostile requests with exit 255 and a logged reason, and never runs them (scenario 21)', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    const marker = join(dir, 'pwned')
    await mkdir(join(dir, 'backup/outside-link-parent'))
    await symlink('/etc', join(dir, 'backup/escape'))
    const hostile = [
      `touch ${marker}`,
      `btrfs receive ${join(dir, 'backup')}; touch ${marker}`,
      `btrfs receive $(touch ${marker})`,
      `btrfs receive \`touch ${marker}\``,
      `btrfs receive ${join(dir, 'backup')} | touch ${marker}`,
      `btrfs receive ${join(dir, 'backup')} && touch ${marker}`,
      `btrfs receive ${join(dir, 'backup')}\ntouch ${marker}`,
      `sh -c 'touch ${marker}'`,
      `sh -c 'echo "bbackup-remote-pid:$$" >&2; exec "$@"' sh touch ${marker}`,
      `btrfs receive ${join(dir, 'backup/../pwned')}`,
      `btrfs receive ${join(dir, 'backup/escape')}`,
      `rsync --server -logDtpre.iLsfxCIvu --log-file=${marker} . ${join(dir, 'backup')}/`,
      `rsync --server -s -logDtpre.iLsfxCIvu . ${join(dir, 'backup')}/`,
      `btrfs send -q ${join(dir, 'backup')}`,
      `sudo -n -- touch ${marker}`,
      `kill -s KILL -- 1`,
      `sh -c 'exec rm -rf -- "$1"' sh ${join(dir, 'backup')}`,
    ]
    for (const command of hostile) {
      const r = request(command)
      expect({ command, status: r.status }).toEqual({ command, status: 255 })
      expect(r.stderr).toMatch(/^bbackup-remote: refused: /m)
    }
    expect(existsSync(marker)).toBe(false)
    expect(existsSync(join(dir, 'backup'))).toBe(true)
    const lines = (await readFile(log, 'utf8')).trim().split('\n')
    expect(lines.filter((l) => / refused /.test(l))).toHaveLength(hostile.length)
    expect(lines.find((l) => l.includes('escape'))).toMatch(/leads outside .* \(to "\/etc"\)/)
    // and what bbackup sends still works through the same key
    const benign = request('btrfs --version')
    expect(benign.status).toBe(0)
    expect(benign.stdout).toMatch(/^btrfs-progs v/)

    // the same lines sent to the command server (the master's own command) are refused one by one, and the server goes on
    // (a line break ends a request: the hostile line with one is two requests here, its second one is `touch`, the first)
    const requests = [...hostile.filter((h) => !h.includes('\n')), 'btrfs --version']
    const served = request(remoteCommand(['sh', '-c', SERVE, 'sh'])._unsafeUnwrap(), `${requests.join('\n')}\n`)
    expect(served.status).toBe(0)
    const answers = serverAnswers(served.stdout)
    expect(answers).toHaveLength(requests.length)
    for (const [i, a] of answers.slice(0, -1).entries()) {
      expect({ line: requests[i], status: a.status }).toEqual({ line: requests[i], status: 255 })
      expect(a.stderr).toMatch(/^bbackup-remote: refused: /)
    }
    expect(answers.at(-1)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^btrfs-progs v/) as unknown })
    expect(existsSync(marker)).toBe(false)

    // a session opened ahead: its first line of stdin is filtered as a request of its own, the rest is never read as one
    const ahead = remoteCommand(['sh', '-c', AHEAD, 'sh'])._unsafeUnwrap()
    for (const line of [hostile[0], hostile[1], hostile[7], hostile[9]]) {
      const r = request(ahead, `${line}\ntouch ${marker}\n`)
      expect({ line, status: r.status }).toEqual({ line, status: 255 })
      expect(r.stderr).toMatch(/^bbackup-remote: refused: /m)
    }
    const allowed = request(ahead, `btrfs --version\ntouch ${marker}\n`)
    expect(allowed.status).toBe(0)
    expect(allowed.stdout).toMatch(/^btrfs-progs v/)
    expect(request(ahead, '').status).toBe(0)
    expect(existsSync(marker)).toBe(false)
  })

  it('lets a receive key delete an unfinished receive, never a finished backup', async () => {
    await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'backup/home.unfinished')])
    execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'backup/home.readonly')])
    const finished = request(`btrfs subvolume delete --commit-after ${join(dir, 'backup/home.readonly')}`)
    expect(finished.status).toBe(255)
    expect(finished.stderr).toMatch(/a receive key deletes only its own unfinished receives/)
    expect(existsSync(join(dir, 'backup/home.readonly'))).toBe(true)
    const unfinished = request(`btrfs subvolume delete --commit-after ${join(dir, 'backup/home.unfinished')}`)
    expect(unfinished.status, unfinished.stderr).toBe(0)
    expect(existsSync(join(dir, 'backup/home.unfinished'))).toBe(false)
  })

  it.runIf(requireTools(['strace']))('a receive key deletes a receive cut at its last step (writable, with the received uuid of what was sent): the run leaves nothing there, the next one sends again', async () => {
    const tmp = await makeTempDir('receive-cut-ssh')
    try {
      // the far side's btrfs receive is killed at the ioctl that would make the copy read-only
      const bin = await receiveCutBin(join(dir, 'home'), dir, tmp.path)
      await sshd.setAuthorizedKeys([`environment="PATH=${bin}:${process.env.PATH ?? ''}",command="bbackup-remote --role receive --restrict-path ${join(dir, 'backup')} --log ${log}",restrict %KEY%`].map(runFromSource))
      const job = ['home', remote(join(dir, 'backup')), '--state-dir', 'state', ...ssh]
      const cut = await runCli(['run', ...job], dir)
      expect(cut.code, cut.stdout + cut.stderr).toBe(10)
      expect(await readFile(log, 'utf8')).toMatch(/ delete \["btrfs","subvolume","delete",/)
      expect(await names(join(dir, 'backup'))).toEqual([])
      await forceCommand(`--role receive --restrict-path ${join(dir, 'backup')}`)
      const next = await runCli(['run', ...job, '--json'], dir)
      expect(next.code, next.stdout + next.stderr).toBe(0)
      expect(JSON.parse(next.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
      const [backup] = await names(join(dir, 'backup'))
      expect(execFileSync('btrfs', ['subvolume', 'show', join(dir, 'backup', backup!)], { encoding: 'utf8' })).toMatch(/Flags:\s+readonly\n/)
    } finally {
      await tmp.cleanup()
    }
  })
})
