import { execFileSync } from 'node:child_process'
import { mkdir, readdir, rename, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { backup, parseLocation, type Job, type SshLocation } from '@bb/core'
import { binWithout, finished, runCli, spawnTs, waitFor } from './helpers.js'
import { btrfsDriver, type BtrfsDriverOptions } from '@bb/drivers/btrfs'
import { localTransport } from '@bb/transports/local'
import { openSshSession, sshTransport, type SshOptions, type SshSession } from '@bb/transports/ssh'
import { descendantsOf, makeTempDir, mountLoopFilesystem, requireTools, startSshd, startTcpProxy, treeManifest, writeTree, type LoopFilesystem, type Sshd, type TempDir } from '@bb/testkit'

/** `btrfs subvolume show` of a path, as key → value */
const show = (path: string): Record<string, string> => Object.fromEntries(execFileSync('btrfs', ['subvolume', 'show', path], { encoding: 'utf8' })
  .split('\n').map((l) => /^\s*([A-Za-z ]+):\s*(.*)$/.exec(l)).filter((m) => m !== null).map((m) => [m[1]?.trim() ?? '', m[2]?.trim() ?? '']))

/** a tree's manifest without the source's snapshot folder (nested subvolumes are empty stubs in a snapshot, and send leaves them out) */
const contentOf = async (path: string): Promise<Record<string, string>> =>
  Object.fromEntries(Object.entries(await treeManifest(path)).filter(([k]) => !k.startsWith('.snapshots/')))

const snapshotsIn = async (dir: string, prefix = 'home.'): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => n.startsWith(prefix)).sort()

describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'rsync', 'btrfs', 'mkfs.btrfs', 'zstd'], { root: true }))('backups over ssh to a real sshd on 127.0.0.1', () => {
  let sshd: Sshd
  let fs: LoopFilesystem
  let dir: string
  let ssh: string[]
  const remote = (path: string): string => `ssh://root@127.0.0.1:${sshd.port}${path}`

  beforeAll(async () => {
    sshd = await startSshd()
    ssh = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile]
  })
  afterAll(async () => {
    await sshd?.stop()
  })
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    dir = fs.mountPoint
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n', 'docs/b.txt': 'b\n', 'big.bin': Buffer.alloc(2 * 1024 * 1024, 3) })
  })
  afterEach(async () => {
    await fs?.cleanup()
  })

  /** runs the CLI and checks that it opened exactly one ssh connection and left none open */
  const runOverSsh = async (argv: string[]) => {
    const before = await sshd.logins()
    const r = await runCli([...argv, ...ssh], dir)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(await sshd.logins() - before).toBe(1)
    // the server's side of the connection ends a moment after the client closed it
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
    return r
  }

  it('btrfs push: full, then incremental, received and read-only on the remote side', async () => {
    await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q'])
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const sessions = await sshd.sessions()
    const second = await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--json'])
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental', route: 'push' }] })
    // one session: the master's command server runs the probe, the listing, the receive (a stream request: btrfs receive -e) and the commit
    expect(await sshd.sessions() - sessions).toBe(1)
    const sent = await snapshotsIn(join(dir, 'backup'))
    expect(sent).toEqual(await snapshotsIn(join(dir, 'home/.snapshots')))
    const [first, newest] = sent.map((n) => show(join(dir, 'backup', n)))
    expect(newest?.['Received UUID']).toBe(show(join(dir, 'home/.snapshots', sent[1] ?? ''))['UUID'])
    expect(newest?.['Parent UUID']).toBe(first?.['UUID'])
    expect(newest?.['Flags']).toBe('readonly')
    expect(await contentOf(join(dir, 'backup', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
  })

  it('lists the backups on a host with a login shell by one btrfs subvolume list in one round trip, not a show per backup; the identities are those btrfs shows', async () => {
    for (let i = 0; i < 3; i++) {
      await writeFile(join(dir, 'home/a.txt'), `round ${i}\n`)
      await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q'])
    }
    // beside them: an unfinished receive (writable, no received uuid), which the list of read-only subvolumes leaves to a show
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'backup', 'home.2099-01-01T000000Z')])
    const session = openSshSession()
    try {
      const target = sshTransport(parseLocation(remote(join(dir, 'backup')))._unsafeUnwrap() as SshLocation, session, { identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile })
      const commands: string[] = []
      const batches: string[][] = []
      const each = target.execEach
      if (each === undefined) throw new Error('the ssh transport runs commands in one round trip (execEach)')
      const watched = {
        ...target,
        exec: (argv: readonly string[], o?: Parameters<typeof target.exec>[1]) => {
          commands.push(argv.slice(0, 3).join(' '))
          return target.exec(argv, o)
        },
        execEach: (argvs: readonly (readonly string[])[], o?: Parameters<typeof target.exec>[1]) => {
          batches.push(argvs.map((argv) => argv.slice(0, 3).join(' ')))
          return each(argvs, o)
        },
      }
      expect((await target.exec(['true']))._unsafeUnwrap().exitCode).toBe(0)
      expect(target.unrestricted?.()).toBe(true)
      const listed = (await btrfsDriver().listSnapshots({ at: watched, side: 'target', signal: undefined }))._unsafeUnwrap()
      expect(listed.map((s) => s.name)).toEqual(await snapshotsIn(join(dir, 'backup')))
      expect(listed).toHaveLength(4)
      for (const snapshot of listed) {
        const s = show(join(dir, 'backup', snapshot.name))
        expect(snapshot.identity?.uuid).toBe(s['UUID'])
        expect(snapshot.identity?.receivedUuid).toBe(s['Received UUID'] === '-' ? undefined : s['Received UUID'])
        expect(snapshot.identity?.readOnly).toBe(s['Flags'] === 'readonly')
      }
      // the list and the mount table in one round trip, and a show of the unfinished receive alone
      expect(commands.filter((c) => c.startsWith('btrfs subvolume'))).toEqual(['btrfs subvolume show'])
      expect(batches).toEqual([['btrfs subvolume list', 'cat /proc/self/mountinfo']])
    } finally {
      await session.close()
    }
  })

  it('asks a host that is not logged in yet for the subvolume lists as soon as it is, before the folder\'s listing has come back', async () => {
    for (let i = 0; i < 2; i++) {
      await writeFile(join(dir, 'home/a.txt'), `round ${i}\n`)
      await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q'])
    }
    const session = openSshSession()
    try {
      const target = sshTransport(parseLocation(remote(join(dir, 'backup')))._unsafeUnwrap() as SshLocation, session, { identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile })
      const each = target.execEach
      if (each === undefined) throw new Error('the ssh transport runs commands in one round trip (execEach)')
      const events: string[] = []
      const watched = {
        ...target,
        list: (directory: string) => target.list(directory).map((entries) => {
          events.push('folder listed')
          return entries
        }),
        execEach: (argvs: readonly (readonly string[])[], o?: Parameters<typeof target.exec>[1]) => {
          events.push(`asked: ${argvs.map((argv) => argv.slice(0, 3).join(' ')).join(', ')}`)
          return each(argvs, o)
        },
      }
      const listed = (await btrfsDriver().listSnapshots({ at: watched, side: 'target', signal: undefined }))._unsafeUnwrap()
      expect(listed.map((s) => s.name)).toEqual(await snapshotsIn(join(dir, 'backup')))
      expect(listed.every((s) => s.complete)).toBe(true)
      expect(events).toEqual(['asked: btrfs subvolume list, cat /proc/self/mountinfo', 'folder listed'])
      expect(session.connectionsOpened).toBe(1)
    } finally {
      await session.close()
    }
  })

  it('btrfs push: a stray subvolume with the planned name on the remote side is refused and kept, writable or read-only (scenario 4)', async () => {
    // a snapshot taken, not sent; then something not ours appears at the target under its name
    expect((await runCli(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--no-transfer', '-q', ...ssh], dir)).code).toBe(0)
    const [name] = await snapshotsIn(join(dir, 'home/.snapshots'))
    const stray = join(dir, 'backup', name ?? '')
    // a run without a transfer leaves the target alone: its directory is the user's here
    execFileSync('mkdir', [join(dir, 'backup')])
    execFileSync('btrfs', ['subvolume', 'create', stray])
    await writeFile(join(stray, 'precious.txt'), 'not ours\n')
    // writable without a received uuid: what an unfinished receive looks like, and what a cleanup would delete
    for (const readOnly of ['false', 'true']) {
      execFileSync('btrfs', ['property', 'set', stray, 'ro', readOnly])
      const r = await runCli(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--no-snapshot', '--json', ...ssh], dir)
      expect(r.code, r.stderr).toBe(10)
      expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: false, error: { code: 'STRAY_SUBVOLUME' } }] })
      expect(readFileSync(join(stray, 'precious.txt'), 'utf8')).toBe('not ours\n')
      expect(show(stray)['UUID']).toBeDefined()
    }
    // nothing journalled for it: a later run does not take the writable one for an unfinished receive of ours
    execFileSync('btrfs', ['property', 'set', stray, 'ro', 'false'])
    const again = await runCli(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '--no-snapshot', '--json', ...ssh], dir)
    expect(JSON.parse(again.stdout)).toMatchObject({ targets: [{ ok: false, error: { code: 'STRAY_SUBVOLUME' } }] })
    expect(readFileSync(join(stray, 'precious.txt'), 'utf8')).toBe('not ours\n')
  })

  it('a remote target that is not on btrfs, not a directory, or not there, and a remote source that is not a subvolume, get the errors local ones get', async () => {
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 64 })
    try {
      await writeFile(join(dir, 'a-file'), 'x\n')
      const cases = [[ext4.mountPoint, 'TARGET_NOT_BTRFS'], [join(dir, 'a-file'), 'TARGET_UNAVAILABLE'], [join(dir, 'no/such'), 'TARGET_UNAVAILABLE']] as const
      for (const [path, code] of cases) {
        const r = await runCli(['run', 'home', remote(path), '--state-dir', 'state', '--json', ...ssh], dir)
        expect(r.code, r.stderr).toBe(10)
        expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: false, error: { code } }] })
      }
      expect(existsSync(join(dir, 'no'))).toBe(false)
      // a symbolic link to a disk not mounted there: said as it is here
      await symlink(join(dir, 'unplugged/backup'), join(dir, 'gone-link'))
      const gone = await runCli(['run', 'home', remote(join(dir, 'gone-link')), '--state-dir', 'state', '--json', ...ssh], dir)
      expect(JSON.parse(gone.stdout)).toMatchObject({ targets: [{ ok: false, error: { code: 'TARGET_UNAVAILABLE', message: `the target ${join(dir, 'gone-link')} is a symbolic link to ${join(dir, 'unplugged/backup')}, which does not exist` } }] })
      expect(existsSync(join(dir, 'unplugged'))).toBe(false)
      // and a remote source (a pull) that is not a subvolume, or not there
      await writeTree(join(dir, 'plain'), { 'x.txt': 'x\n' })
      for (const [path, code] of [[join(dir, 'plain'), 'SOURCE_NOT_SUBVOLUME'], [join(dir, 'gone'), 'SOURCE_UNAVAILABLE']] as const) {
        const r = await runCli(['run', remote(path), join(dir, 'pulled'), '--driver', 'btrfs', '--state-dir', 'state', ...ssh], dir)
        expect(r.code).not.toBe(0)
        expect(r.stderr).toContain(code)
      }
      // a target on the source's host that is the source, or its snapshot folder, as written
      for (const path of [join(dir, 'home'), `${join(dir, 'home')}/`, join(dir, 'home/.snapshots')]) {
        const r = await runCli(['run', remote(join(dir, 'home')), remote(path), '--state-dir', 'state', '--json', ...ssh], dir)
        expect(JSON.parse(r.stdout), path).toMatchObject({ targets: [{ ok: false, error: { code: 'INVALID_OPTIONS', message: expect.stringMatching(/is the source subvolume itself|is the snapshot folder/) } }] })
      }
      expect((await readdir(join(dir, 'home'))).sort()).toEqual(['.snapshots', 'a.txt', 'big.bin', 'docs'])
    } finally {
      await ext4.cleanup()
    }
  })

  it('btrfs push to a raw target: zstd stream files and sidecars on the remote side, restored from there', async () => {
    const streams = remote(join(dir, 'streams'))
    await runOverSsh(['run', 'home', '--raw-target', streams, '--raw-compress', 'zstd', '--state-dir', 'state', '-q'])
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runOverSsh(['run', 'home', '--raw-target', streams, '--raw-compress', 'zstd', '--state-dir', 'state', '--json'])
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental', route: 'push' }] })
    const files = (await readdir(join(dir, 'streams'))).sort()
    expect(files.filter((f) => f.endsWith('.btrfs.zst'))).toHaveLength(2)
    expect(files.filter((f) => f.endsWith('.btrfs.zst.info'))).toHaveLength(2)
    expect((await stat(join(dir, 'streams', files[0] ?? ''))).mode & 0o777).toBe(0o600)
    const verified = await runOverSsh(['verify', 'home', '--raw-target', streams, '--raw-compress', 'zstd', '--state-dir', 'state'])
    expect(verified.stdout).toMatch(/: no problem found\n {2}note: checked: size and sha256 against the sidecar/)
    await runOverSsh(['restore', streams, 'latest', join(dir, 'restored')])
    const [name] = await readdir(join(dir, 'restored'))
    expect(readFileSync(join(dir, 'restored', name ?? '', 'a.txt'), 'utf8')).toBe('changed\n')
  })

  it('btrfs pull: a remote subvolume backed up here, full then incremental', async () => {
    const fullSessions = await sshd.sessions()
    const first = await runOverSsh(['run', remote(join(dir, 'home')), join(dir, 'pulled'), '--state-dir', 'state', '--json'])
    // the full send (all of the subvolume) by a session of its own, its stream in OS pipes, beside the master's
    expect(await sshd.sessions() - fullSessions).toBe(2)
    // counted as the receive here read it (the ssh client's own counts are its master's business): the 2 MiB file and more
    expect(JSON.parse(first.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full', bytes: expect.any(Number) }] })
    expect(JSON.parse(first.stdout).targets[0].bytes).toBeGreaterThan(2 * 1024 * 1024)
    await writeFile(join(dir, 'home/docs/b.txt'), 'changed\n')
    const sessions = await sshd.sessions()
    const second = await runOverSsh(['run', remote(join(dir, 'home')), join(dir, 'pulled'), '--state-dir', 'state', '--json'])
    expect(JSON.parse(second.stdout)).toMatchObject({ driver: 'btrfs', targets: [{ ok: true, mode: 'incremental', route: 'pull' }] })
    // one session: the send too runs in the master's command server (an out-stream request), its stream coming back on the master's stdout
    expect(await sshd.sessions() - sessions).toBe(1)
    const sent = await snapshotsIn(join(dir, 'pulled'))
    expect(sent).toHaveLength(2)
    expect(show(join(dir, 'pulled', sent[1] ?? ''))['Received UUID']).toBe(show(join(dir, 'home/.snapshots', sent[1] ?? ''))['UUID'])
    expect(await contentOf(join(dir, 'pulled', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
  })

  it('archive over ssh: a backup disk pushed to another host, and pulled back from there, incrementally, one login each', async () => {
    for (const change of ['one', 'two']) {
      await writeFile(join(dir, 'home/a.txt'), `${change}\n`)
      expect((await runCli(['run', 'home', join(dir, 'disk'), '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    }
    const pushed = await runOverSsh(['archive', join(dir, 'disk'), remote(join(dir, 'offsite')), '--state-dir', 'archive-state', '--json'])
    expect(JSON.parse(pushed.stdout)).toMatchObject({ failed: 0, families: [{ prefix: 'home.', report: { targets: [{ route: 'push', sent: [{ mode: 'full' }, { mode: 'incremental' }] }] } }] })
    await writeFile(join(dir, 'home/a.txt'), 'three\n')
    expect((await runCli(['run', 'home', join(dir, 'disk'), '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const again = await runOverSsh(['archive', join(dir, 'disk'), remote(join(dir, 'offsite')), '--state-dir', 'archive-state', '--json'])
    expect(JSON.parse(again.stdout).families[0].report.targets[0].sent).toMatchObject([{ mode: 'incremental' }])
    // the copies on the far side are the source's snapshots, by uuid
    const names = await snapshotsIn(join(dir, 'offsite'))
    expect(names).toHaveLength(3)
    for (const name of names) expect(show(join(dir, 'offsite', name))['Received UUID']).toBe(show(join(dir, 'home/.snapshots', name))['UUID'])
    // and back from there: pulled, the newest incremental against its parent
    const pulled = await runOverSsh(['archive', remote(join(dir, 'offsite')), join(dir, 'back'), '--state-dir', 'back-state', '--json'])
    expect(JSON.parse(pulled.stdout).families[0].report.targets[0]).toMatchObject({ route: 'pull', sent: [{ mode: 'full' }, { mode: 'incremental' }, { mode: 'incremental' }] })
    expect(await contentOf(join(dir, 'back', names[2] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', names[2] ?? '')))
  })

  it('btrfs pull from a source swapped for a backup restored there (restore --writable to the host): the next send is incremental against the restored one', async () => {
    const home = join(dir, 'home')
    const run = async () => JSON.parse((await runOverSsh(['run', remote(home), join(dir, 'pulled'), '--state-dir', 'state', '--json'])).stdout)
    await run()
    // the source and its snapshots are lost; the backup is restored onto its host, beside it, and swapped in
    for (const s of await snapshotsIn(join(home, '.snapshots'))) execFileSync('btrfs', ['subvolume', 'delete', join(home, '.snapshots', s)])
    execFileSync('btrfs', ['subvolume', 'delete', home])
    const restored = await runCli(['restore', join(dir, 'pulled'), 'latest', remote(dir), '--writable', ...ssh], dir)
    expect(restored.code, restored.stdout + restored.stderr).toBe(0)
    const [name] = await snapshotsIn(join(dir, 'pulled'))
    await rename(join(dir, `${name ?? ''}.writable`), home)
    await writeFile(join(home, 'docs/b.txt'), 'after the restore\n')
    const next = await run()
    expect(next).toMatchObject({ targets: [{ ok: true, mode: 'incremental', parent: name, origin: remote(join(dir, name ?? '')), route: 'pull' }] })
    expect(next.targets[0].bytes).toBeLessThan(1024 * 1024) // the 2 MiB file was not sent again
    const sent = await snapshotsIn(join(dir, 'pulled'))
    expect(await contentOf(join(dir, 'pulled', sent.at(-1) ?? ''))).toEqual(await contentOf(home))
  })

  it('btrfs pull to a disk that fills up: the error is the receive\'s (DISK_FULL), not the remote send\'s that it stopped, and the half-received copy is removed', async () => {
    const small = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 128 })
    try {
      execFileSync('sh', ['-c', `head -c 200M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
      const r = await runCli(['run', remote(join(dir, 'home')), small.mountPoint, '--state-dir', 'state', '--json', ...ssh], dir)
      expect(r.code, r.stderr).toBe(10)
      expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: false, error: { code: 'DISK_FULL', message: expect.stringMatching(/no space left on the target/) } }] })
      expect(await snapshotsIn(small.mountPoint)).toEqual([])
    } finally {
      await small.cleanup()
    }
  })

  it('btrfs remote to remote: streamed through this host, and the report says so', async () => {
    const first = await runOverSsh(['run', remote(join(dir, 'home')), remote(join(dir, 'relayed')), '--state-dir', 'state', '--json'])
    // what passed through this host is counted (neither ssh client can tell it)
    expect((JSON.parse(first.stdout) as { targets: { mode: string; bytes: number }[] }).targets[0]).toMatchObject({ mode: 'full', bytes: expect.any(Number) as unknown })
    expect((JSON.parse(first.stdout) as { targets: { bytes: number }[] }).targets[0]?.bytes).toBeGreaterThan(1000)
    await writeFile(join(dir, 'home/a.txt'), 'again\n')
    const second = await runOverSsh(['run', remote(join(dir, 'home')), remote(join(dir, 'relayed')), '--state-dir', 'state'])
    expect(second.stdout).toMatch(/incremental from home\.[\s\S]*relayed: streamed from the source host through this one/)
    expect(second.stdout).not.toMatch(/; 0 B sent/)
    const sent = await snapshotsIn(join(dir, 'relayed'))
    expect(sent).toHaveLength(2)
    expect(show(join(dir, 'relayed', sent[1] ?? ''))['Parent UUID']).toBe(show(join(dir, 'relayed', sent[0] ?? ''))['UUID'])
    // both ends on that host: compared there, and the note names the source snapshot with its host
    const verified = await runCli(['verify', remote(join(dir, 'home')), remote(join(dir, 'relayed')), '--state-dir', 'state', ...ssh], dir)
    expect(verified.stdout).toContain(`no problem found\n  note: content compared by checksum with ${remote(join(dir, 'home/.snapshots', sent[1] ?? ''))}\n`)
  })

  it('several targets, on other hosts and here, are fed from one btrfs send (the source is read once); one that refuses the receive fails alone', async () => {
    type Report = { targets: { target: string; ok: boolean; mode?: string; commands: string[][]; error?: { code: string } }[] }
    const [a, b, c] = [remote(join(dir, 'a')), remote(join(dir, 'b')), join(dir, 'c')]
    const sent = (r: Report): string[][] => r.targets.map((t) => [t.target, String(t.ok), t.mode ?? '', String(t.commands.flat().filter((w) => w === 'send').length), String(t.commands.flat().includes('tee'))])
    const first = JSON.parse((await runOverSsh(['run', 'home', a, b, c, '--state-dir', 'state', '--json'])).stdout) as Report
    expect(sent(first)).toEqual([[a, 'true', 'full', '1', 'true'], [b, 'true', 'full', '1', 'true'], [c, 'true', 'full', '1', 'true']])
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = JSON.parse((await runOverSsh(['run', 'home', a, b, c, '--state-dir', 'state', '--json'])).stdout) as Report
    expect(sent(second)).toEqual([[a, 'true', 'incremental', '1', 'true'], [b, 'true', 'incremental', '1', 'true'], [c, 'true', 'incremental', '1', 'true']])
    const newest = (await snapshotsIn(join(dir, 'home/.snapshots'))).at(-1) ?? ''
    for (const target of ['a', 'b', 'c']) {
      expect(show(join(dir, target, newest))).toMatchObject({ Flags: 'readonly', 'Received UUID': show(join(dir, 'home/.snapshots', newest))['UUID'] })
      expect(await contentOf(join(dir, target, newest))).toEqual(await contentOf(join(dir, 'home/.snapshots', newest)))
    }

    // a snapshot not sent yet, and something not ours under its name on b: b's receive refuses it at once, the stream goes on to a and c
    await writeFile(join(dir, 'home/a.txt'), 'third\n')
    expect((await runCli(['run', 'home', a, b, c, '--state-dir', 'state', '--no-transfer', '-q', ...ssh], dir)).code).toBe(0)
    const third = (await snapshotsIn(join(dir, 'home/.snapshots'))).at(-1) ?? ''
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'b', third)])
    await writeFile(join(dir, 'b', third, 'precious.txt'), 'not ours\n')
    const r = await runCli(['run', 'home', a, b, c, '--state-dir', 'state', '--no-snapshot', '--json', ...ssh], dir)
    expect(r.code, r.stderr).toBe(10)
    const report = JSON.parse(r.stdout) as Report
    expect(report.targets.map((t) => [t.target, t.ok, t.error?.code])).toEqual([[a, true, undefined], [b, false, 'STRAY_SUBVOLUME'], [c, true, undefined]])
    expect(sent(report)[0]).toEqual([a, 'true', 'incremental', '1', 'true'])
    expect(readFileSync(join(dir, 'b', third, 'precious.txt'), 'utf8')).toBe('not ours\n')
    for (const target of ['a', 'c']) expect(await contentOf(join(dir, target, third))).toEqual(await contentOf(join(dir, 'home/.snapshots', third)))
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)

    // a stream compressed on its way to another host is that target's own send; the rest still share one
    await writeFile(join(dir, 'home/a.txt'), 'fourth\n')
    const zstd = JSON.parse((await runOverSsh(['run', 'home', c, a, '--state-dir', 'state', '--stream-compress', 'zstd', '--json'])).stdout) as Report
    expect(zstd.targets.map((t) => [t.target, t.ok, t.mode, t.commands.flat().includes('zstd')])).toEqual([[c, true, 'incremental', false], [a, true, 'incremental', true]])
  })

  it('btrfs remote to remote into a target that refuses the receive at once (read-only): the run ends with the receive\'s error, and nothing is left running on either side', async () => {
    // more than the pipes and the channel hold: the send is still writing when the receive fails
    execFileSync('sh', ['-c', `head -c 32M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
    const ro = join(dir, 'read-only')
    await mkdir(ro)
    execFileSync('mount', ['--bind', ro, ro])
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', ro])
      const started = Date.now()
      const r = await runCli(['run', remote(join(dir, 'home')), remote(ro), '--state-dir', 'state', '--json', ...ssh], dir)
      expect(r.code, r.stderr).toBe(10)
      expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: false, error: { message: expect.stringMatching(/btrfs receive into .*read-only: the filesystem is mounted read-only/) } }] })
      // it used to wait for ever on the send's ssh client, which holds what the send wrote for a reader that is gone
      expect(Date.now() - started).toBeLessThan(20_000)
      await waitFor(async () => sshd.sessionPids().length === 0, 5000)
    } finally {
      execFileSync('umount', [ro])
    }
  })

  it('--stream-compress zstd: a push and a pull cross the wire compressed (zstd on both hosts) and arrive whole', async () => {
    // 8 MiB of one byte: most of the stream, and almost nothing once zstd has it
    await writeTree(join(dir, 'home'), { 'same.bin': Buffer.alloc(8 * 1024 * 1024, 7) })
    const proxy = await startTcpProxy(sshd.port)
    try {
      const via = (path: string): string => `ssh://root@127.0.0.1:${proxy.port}${path}`
      const alias = ['--ssh-option', `HostKeyAlias=[127.0.0.1]:${sshd.port}`]
      const wire = async (argv: string[]): Promise<{ up: number; down: number; report: { targets: { commands: string[][]; warnings: string[] }[] } }> => {
        const before = proxy.passed()
        const r = await runOverSsh([...argv, ...alias, '--json'])
        const after = proxy.passed()
        return { up: after.up - before.up, down: after.down - before.down, report: JSON.parse(r.stdout) }
      }
      const plain = await wire(['run', 'home', via(join(dir, 'plain')), '--state-dir', 'state-plain'])
      expect(plain.up).toBeGreaterThan(10 * 1024 * 1024)
      const pushed = await wire(['run', 'home', via(join(dir, 'pushed')), '--state-dir', 'state-push', '--stream-compress', 'zstd'])
      expect(pushed.up).toBeLessThan(plain.up / 8)
      expect(pushed.report.targets[0]?.commands[0]?.join(' ')).toMatch(/^btrfs send .* \| zstd -cq -T0 \| zstd -dcq \| btrfs receive /)
      expect(pushed.report.targets[0]?.warnings).toEqual([])
      const [name] = await snapshotsIn(join(dir, 'pushed'))
      expect(await contentOf(join(dir, 'pushed', name ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', name ?? '')))
      expect(show(join(dir, 'pushed', name ?? ''))['Flags']).toBe('readonly')

      const pulled = await wire(['run', via(join(dir, 'home')), join(dir, 'pulled'), '--state-dir', 'state-pull', '--stream-compress', 'zstd'])
      expect(pulled.down).toBeLessThan(plain.up / 8)
      const [pulledName] = await snapshotsIn(join(dir, 'pulled'))
      expect(await contentOf(join(dir, 'pulled', pulledName ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', pulledName ?? '')))

      // a restore from the other host: compressed there, decompressed here
      await mkdir(join(dir, 'restored'))
      const restored = await wire(['restore', via(join(dir, 'pushed')), 'latest', join(dir, 'restored'), '--stream-compress', 'zstd'])
      expect(restored.down).toBeLessThan(plain.up / 8)
      expect((restored.report as unknown as { commands: string[][] }).commands[0]?.join(' ')).toMatch(/^btrfs send .* \| zstd -cq -T0 \| zstd -dcq \| btrfs receive /)
      expect(await contentOf(join(dir, 'restored', name ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', name ?? '')))
    } finally {
      await proxy.stop()
    }
  })

  it('--stream-compress zstd to a host without zstd: the stream goes uncompressed, the backup is whole, and the report says why', async () => {
    // the key's environment= option gives the remote side a PATH with every command but zstd
    const bin = await binWithout('zstd', (name) => /zstd/.test(name))
    try {
      await sshd.setAuthorizedKeys([`environment="PATH=${bin.path}" %KEY%`])
      const r = await runOverSsh(['run', 'home', remote(join(dir, 'pushed')), '--state-dir', 'state', '--stream-compress', 'zstd', '--json'])
      const target = JSON.parse(r.stdout).targets[0]
      expect(target).toMatchObject({ ok: true, mode: 'full' })
      expect(target.warnings).toEqual([`the stream went uncompressed: zstd is not installed where ${remote(join(dir, 'pushed'))} is (apt-get install zstd there)`])
      expect(target.commands[0].join(' ')).toMatch(/^btrfs send .* \| btrfs receive /)
      const [name] = await snapshotsIn(join(dir, 'pushed'))
      expect(await contentOf(join(dir, 'pushed', name ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', name ?? '')))
    } finally {
      await sshd.setAuthorizedKeys(['%KEY%'])
      await bin.cleanup()
    }
  })

  it('--rate-limit: the stream takes at least as long as the limit allows, and arrives whole', async () => {
    execFileSync('sh', ['-c', `head -c 6M /dev/urandom > "${join(dir, 'home/random.bin')}"`])
    const started = performance.now()
    const r = await runOverSsh(['run', 'home', remote(join(dir, 'limited')), '--state-dir', 'state', '--rate-limit', '2m', '--json'])
    const seconds = (performance.now() - started) / 1000
    // 8 MiB and more of stream at 2 MiB/s; without the limit this takes well under a second here
    expect(seconds).toBeGreaterThan(3.5)
    expect(JSON.parse(r.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    const [name] = await snapshotsIn(join(dir, 'limited'))
    expect(await contentOf(join(dir, 'limited', name ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', name ?? '')))
  })

  it('btrfs restore --path from and to another host (by rsync, hard links kept), and on that host alone (by cp); verify compares the content over ssh', async () => {
    execFileSync('ln', [join(dir, 'home/docs/b.txt'), join(dir, 'home/docs/b-link.txt')])
    await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q'])
    // the backup over there, the copy here
    expect((await runOverSsh(['restore', remote(join(dir, 'backup')), 'latest', join(dir, 'r1'), '--path', 'docs'])).stdout).toMatch(/^restored home\.\S+\/docs to /)
    expect(readFileSync(join(dir, 'r1/docs/b.txt'), 'utf8')).toBe('b\n')
    expect((await stat(join(dir, 'r1/docs/b.txt'))).ino).toBe((await stat(join(dir, 'r1/docs/b-link.txt'))).ino)
    // the backup here, the copy over there; a second time it is refused, and what is there stays
    await runOverSsh(['restore', join(dir, 'backup'), 'latest', remote(join(dir, 'r2')), '--path', '/a.txt'])
    expect(readFileSync(join(dir, 'r2/a.txt'), 'utf8')).toBe('a\n')
    await writeFile(join(dir, 'r2/a.txt'), 'mine\n')
    const again = await runCli(['restore', join(dir, 'backup'), 'latest', remote(join(dir, 'r2')), '--path', 'a.txt', ...ssh], dir)
    expect(again).toMatchObject({ code: 1, stderr: expect.stringContaining(`${remote(join(dir, 'r2/a.txt'))} already exists; restore never overwrites`) as unknown })
    expect(readFileSync(join(dir, 'r2/a.txt'), 'utf8')).toBe('mine\n')
    // both on that host: copied there, nothing crosses this one
    await runOverSsh(['restore', remote(join(dir, 'backup')), 'latest', remote(join(dir, 'r3')), '--path', 'docs'])
    expect((await stat(join(dir, 'r3/docs/b.txt'))).ino).toBe((await stat(join(dir, 'r3/docs/b-link.txt'))).ino)
    // verify: the content of the backup over there compared with its source snapshot here
    const verified = await runOverSsh(['verify', 'home', remote(join(dir, 'backup')), '--state-dir', 'state'])
    expect(verified.stdout).toMatch(/no problem found\n {2}note: content compared by checksum with /)
    // the source snapshot changed behind bbackup's back (a received copy cannot be, without losing its received uuid)
    const [name] = await snapshotsIn(join(dir, 'home/.snapshots'))
    const original = join(dir, 'home/.snapshots', name ?? '')
    execFileSync('btrfs', ['property', 'set', '-ts', original, 'ro', 'false'])
    await writeFile(join(original, 'docs/b.txt'), 'B\n')
    execFileSync('btrfs', ['property', 'set', '-ts', original, 'ro', 'true'])
    const differs = await runCli(['verify', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', ...ssh], dir)
    expect(differs.code).not.toBe(0)
    expect(differs.stdout, differs.stderr).toMatch(/: 2 problems\n {2}[<>]fc\S* docs\/b-link\.txt\n/)
  })

  it('btrfs restore --path and verify with a host that has no rsync: the restore is refused naming the fix, verify says the content was not compared', async () => {
    await runOverSsh(['run', 'home', remote(join(dir, 'backup')), '--state-dir', 'state', '-q'])
    // the key's environment= option gives the remote side a PATH with every command but rsync
    const bin = await binWithout('rsync', (name) => name === 'rsync')
    try {
      await sshd.setAuthorizedKeys([`environment="PATH=${bin.path}" %KEY%`])
      const r = await runCli(['restore', remote(join(dir, 'backup')), 'latest', join(dir, 'r1'), '--path', 'docs', ...ssh], dir)
      expect(r.code).toBe(1)
      // rsync's exit is 127 or 12, as its two processes race to report the missing command
      expect(r.stderr).toMatch(/rsync failed to restore docs \(exit 127?\): rsync is not installed where /)
      expect(r.stderr).toContain(`rsync is not installed where ${remote(join(dir, 'backup'))} is`)
      expect(r.stderr).toMatch(/hint: install rsync there \(apt-get install rsync\)/)
      const verified = await runOverSsh(['verify', 'home', remote(join(dir, 'backup')), '--state-dir', 'state'])
      expect(verified.stdout).toContain(`note: rsync is not installed where ${remote(join(dir, 'backup'))} is: the content was not compared (apt-get install rsync there)`)
    } finally {
      await sshd.setAuthorizedKeys(['%KEY%'])
      await bin.cleanup()
    }
  })

  it('rsync push and pull: hard links to the previous backup are made on the far side', async () => {
    const src = join(dir, 'plain')
    await writeTree(src, { 'keep.txt': 'same\n', 'change.txt': 'one\n' })
    for (const [source, target] of [[src, remote(join(dir, 'rpush'))], [remote(src), join(dir, 'rpull')]] as const) {
      await runOverSsh(['run', source, target, '--state-dir', join('state', target.replace(/\W/g, '_')), '-q'])
      await writeFile(join(src, 'change.txt'), `${Date.now()}\n`)
      await new Promise((r) => setTimeout(r, 1100)) // a new second: a new backup name
      const second = await runOverSsh(['run', source, target, '--state-dir', join('state', target.replace(/\W/g, '_')), '--json'])
      expect(JSON.parse(second.stdout)).toMatchObject({ driver: 'rsync', targets: [{ ok: true, mode: 'incremental', route: source === src ? 'push' : 'pull' }] })
      const where = target.startsWith('ssh://') ? join(dir, 'rpush') : join(dir, 'rpull')
      const backups = (await readdir(where)).filter((n) => /^\d{4}-/.test(n)).sort()
      expect(backups).toHaveLength(2)
      const [a, b] = await Promise.all(backups.map((n) => stat(join(where, n, 'keep.txt'))))
      expect(a?.ino).toBe(b?.ino)
      const [c, d] = await Promise.all(backups.map((n) => stat(join(where, n, 'change.txt'))))
      expect(c?.ino).not.toBe(d?.ino)
    }
    // a restore from the far side: compressed by rsync, at the rate limit (in whole KiB a second)
    const restoring = await runOverSsh(['restore', remote(join(dir, 'rpush')), 'latest', join(dir, 'rrestored'), '--stream-compress', 'zstd', '--rate-limit', '1m', '--json'])
    expect(restoring.code, restoring.stderr).toBe(0)
    expect((JSON.parse(restoring.stdout) as { commands: string[][] }).commands[0]).toEqual(expect.arrayContaining(['--compress', '--bwlimit=1024']))
    expect(readFileSync(join(dir, 'rrestored/keep.txt'), 'utf8')).toBe('same\n')
    // what the second push changed, asked of the far side (rsync runs there): the one file, in one login
    const changed = await runOverSsh(['diff', remote(join(dir, 'rpush'))])
    expect(changed.stdout.split('\n').slice(1)).toEqual([expect.stringMatching(/^M change\.txt {3}\(\d+ B written\)$/), expect.stringMatching(/^1 change: 0 added, 0 deleted, 0 renamed, 1 modified/), ''])
  })

  it('an IPv6 address in [brackets], in the URL and the scp form: btrfs and rsync push to it', async () => {
    await writeTree(join(dir, 'plain'), { 'f.txt': 'x\n' })
    const port = ['--ssh-option', `Port=${sshd.port}`]
    const btrfs = await runOverSsh(['run', 'home', `ssh://root@[::1]:${sshd.port}${join(dir, 'v6')}`, '--state-dir', 'state', '--json'])
    expect(JSON.parse(btrfs.stdout)).toMatchObject({ targets: [{ ok: true, target: `ssh://root@[::1]:${sshd.port}${join(dir, 'v6')}`, mode: 'full' }] })
    expect(await snapshotsIn(join(dir, 'v6'))).toHaveLength(1)
    const rsync = await runOverSsh(['run', join(dir, 'plain'), `root@[::1]:${join(dir, 'v6-rsync')}`, '--state-dir', 'state-rsync', '--json', ...port])
    expect(JSON.parse(rsync.stdout)).toMatchObject({ driver: 'rsync', targets: [{ ok: true, target: `root@[::1]:${join(dir, 'v6-rsync')}` }] })
    expect(readFileSync(join(dir, 'v6-rsync/latest/f.txt'), 'utf8')).toBe('x\n')
  })

  it('refuses rsync from one remote host to another, and a relative remote path, naming the fix', async () => {
    const src = join(dir, 'plain')
    await writeTree(src, { 'f.txt': 'x\n' })
    const relay = await runCli(['run', remote(src), remote(join(dir, 'x')), '--state-dir', 'state', ...ssh], dir)
    expect(relay.code).not.toBe(0)
    expect(relay.stdout + relay.stderr).toMatch(/rsync cannot copy between two other hosts through this one[\s\S]*run bbackup on the source host or on the target host/)
    const relative = await runCli(['run', src, `root@127.0.0.1:backups`, '--state-dir', 'state', ...ssh], dir)
    expect(relative.code).not.toBe(0)
    expect(relative.stderr).toMatch(/the remote path "backups" of root@127.0.0.1:backups is relative[\s\S]*root@127.0.0.1:\/backups/)
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
  })
})

describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'rsync'], { root: true }))('ssh failures on the command line', () => {
  let sshd: Sshd
  let tmp: TempDir
  beforeAll(async () => {
    sshd = await startSshd()
    tmp = await makeTempDir('ssh-cli')
  })
  afterAll(async () => {
    await sshd?.stop()
    await tmp?.cleanup()
  })

  it('an unknown host key stops the run before anything is sent, with the command that trusts it', async () => {
    const empty = join(tmp.path, 'known_hosts')
    await writeFile(empty, '')
    await writeTree(join(tmp.path, 'src'), { 'f.txt': 'x\n' })
    const r = await runCli(['run', join(tmp.path, 'src'), `ssh://root@127.0.0.1:${sshd.port}${tmp.path}/dst`, '--state-dir', 'state', '--ssh-identity', sshd.identityFile, '--ssh-known-hosts', empty], tmp.path)
    expect(r.code).not.toBe(0)
    expect(r.stdout).toMatch(/host key of root@127\.0\.0\.1:\d+ is not known[\s\S]*hint: check its fingerprint, then trust it once: ssh-keyscan -p \d+ 127\.0\.0\.1/)
    expect(await readdir(tmp.path)).not.toContain('dst')
  })

  it('a status ended by a signal while the host is slow to answer leaves no ssh master running, nor its socket directory, and ends by that signal', async () => {
    await writeTree(join(tmp.path, 'slow'), { 'f.txt': 'x\n' })
    // each session of the key waits 30 s before its command runs: the status is waiting on its master when the signal comes
    await sshd.setAuthorizedKeys(['command="sleep 30; eval \\"$SSH_ORIGINAL_COMMAND\\"" %KEY%'])
    const child = spawnTs('fixtures/cli.ts', ['status', join(tmp.path, 'slow'), `ssh://root@127.0.0.1:${sshd.port}${tmp.path}/slow-backups`, '--driver', 'rsync',
      '--state-dir', join(tmp.path, 'state'), '--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile])
    const ended = finished(child)
    const pid = child.pid ?? 0
    /** the private directory of the run's control sockets */
    const runDirectories = (): string[] => readdirSync(tmpdir()).filter((n) => n.startsWith(`bbackup-ssh-${pid}-`))
    /** running (not a zombie); one that ends between the two looks is gone */
    const alive = (p: number): boolean => {
      try {
        return !/^\S+ \(.*\) Z /.test(readFileSync(`/proc/${p}/stat`, 'utf8'))
      } catch {
        return false
      }
    }
    let masters: number[] = []
    try {
      await waitFor(async () => (masters = descendantsOf(pid).filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes('ControlMaster=yes')
        } catch {
          return false
        }
      })).length > 0 && runDirectories().length > 0, 20_000)
      child.kill('SIGTERM')
      const r = await ended
      // by the signal, as a shell sees a command that a signal ended (before: the same, with the master left behind)
      expect(r, r.stderr).toMatchObject({ code: null, signal: 'SIGTERM' })
      expect(runDirectories()).toEqual([])
      // the master was told to stop before the process ended (before: it waited out the host's 30 s)
      await waitFor(async () => !masters.some(alive), 5000)
    } finally {
      for (const p of masters.filter(alive)) process.kill(p, 'SIGKILL')
      child.kill('SIGKILL')
      await ended
      await sshd.setAuthorizedKeys(['%KEY%'])
    }
  })
})

describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'btrfs', 'mkfs.btrfs'], { root: true }))('ssh transfers that break half way', () => {
  let sshd: Sshd
  let fs: LoopFilesystem
  let dir: string
  let session: SshSession
  beforeEach(async () => {
    sshd = await startSshd()
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 2048 })
    dir = fs.mountPoint
    session = openSshSession()
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n' })
  })
  afterEach(async () => {
    // each step even when one before it failed: no server, mount or connection outlives the test
    await Promise.allSettled([session?.close()])
    await Promise.allSettled([sshd?.stop()])
    await fs?.cleanup()
  })

  /** a push to the test's sshd; `via` reaches it through another port (a proxy), `ssh` adds transport options */
  const job = (driver: BtrfsDriverOptions = {}, via?: { readonly port: number; readonly ssh: SshOptions }): Job => {
    const location = parseLocation(`ssh://root@127.0.0.1:${via?.port ?? sshd.port}${join(dir, 'backup')}`)._unsafeUnwrap() as SshLocation
    return {
      driver: btrfsDriver(driver),
      source: localTransport(join(dir, 'home')),
      targets: [sshTransport(location, session, {
        identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile,
        // through a proxy the server is still the one known_hosts names
        ...(via === undefined ? {} : { ...via.ssh, options: [`HostKeyAlias=[127.0.0.1]:${sshd.port}`, ...(via.ssh.options ?? [])] }),
      })],
      state: { transport: localTransport(join(dir, 'state')), directory: join(dir, 'state') },
      prefix: 'home.',
    }
  }

  /** a pull from the test's sshd into `pulled` here */
  const pullJob = (driver: BtrfsDriverOptions = {}): Job => ({
    driver: btrfsDriver(driver),
    source: sshTransport(parseLocation(`ssh://root@127.0.0.1:${sshd.port}${join(dir, 'home')}`)._unsafeUnwrap() as SshLocation, session, { identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile }),
    targets: [localTransport(join(dir, 'pulled'))],
    state: { transport: localTransport(join(dir, 'state')), directory: join(dir, 'state') },
    prefix: 'home.',
  })

  /** the processes of this test's own tree (here) or of the sshd's (there) whose command starts with `argv` */
  const processes = (pids: readonly number[], ...argv: string[]): number[] => pids.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith(argv.join('\0'))
    } catch {
      return false
    }
  })

  it('btrfs pull: the send killed on the far side mid-stream: the run ends with its error, the half-received copy here is removed, the next run sends again', async () => {
    const { first, running: pulling } = await secondRunReceiving(pullJob, 'pulled')
    const senders = processes(sshd.sessionPids(), 'btrfs', 'send')
    expect(senders).toHaveLength(1)
    process.kill(senders[0] as number, 'SIGKILL')
    const failed = (await pulling)._unsafeUnwrap()
    expect(failed.targets[0]).toMatchObject({ ok: false, error: { code: 'COMMAND_FAILED', message: expect.stringMatching(/^btrfs send on root@127\.0\.0\.1:\d+ was killed by SIGKILL/) } })
    expect(processes(descendantsOf(process.pid), 'btrfs', 'receive')).toEqual([])
    expect(await snapshotsIn(join(dir, 'pulled'))).toEqual([first])
    // the same connection serves the next run
    const next = (await backup(pullJob(), { snapshot: false }))._unsafeUnwrap()
    expect(next.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: first })
    const sent = await snapshotsIn(join(dir, 'pulled'))
    expect(await contentOf(join(dir, 'pulled', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
  }, 60_000)

  // one end of the stream killed on this host: the other, on the far side, does not run on (a push's
  // receive, whose stdin is the connection and stays open; a pull's send, whose stream has no reader)
  it.each([
    ['push: the send', 'receive', () => job(), 'backup', 'send'],
    ['pull: the receive', 'send', () => pullJob(), 'pulled', 'receive'],
  ] as const)('btrfs %s here killed mid-stream: the far side\'s %s is stopped too, the run ends with the error of the killed one, the next run sends again', async (_what, there, make, folder, here) => {
    const { first, running } = await secondRunReceiving(make, folder)
    const killed = processes(descendantsOf(process.pid), 'btrfs', here)
    expect(killed).toHaveLength(1)
    process.kill(killed[0] as number, 'SIGKILL')
    const failed = (await running)._unsafeUnwrap()
    expect(failed.targets[0]).toMatchObject({ ok: false, error: { code: 'COMMAND_FAILED', message: expect.stringMatching(/^btrfs was killed by SIGKILL/) } })
    await waitFor(async () => processes(sshd.sessionPids(), 'btrfs', there).length === 0, 10_000)
    // the half-received copy is gone
    expect(await snapshotsIn(join(dir, folder))).toEqual([first])
    const next = (await backup(make(), { snapshot: false }))._unsafeUnwrap()
    expect(next.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: first })
  }, 60_000)

  it('btrfs remote to remote through two connections: the stream goes from the one master to the other, one session on each', async () => {
    const at = (path: string, options: SshOptions) => sshTransport(parseLocation(`ssh://root@127.0.0.1:${sshd.port}${path}`)._unsafeUnwrap() as SshLocation, session, { identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile, ...options })
    // other options make another connection to the same server, as a second host would have
    const relay = (): Job => ({
      driver: btrfsDriver(),
      source: at(join(dir, 'home'), {}),
      targets: [at(join(dir, 'relayed'), { serverAliveInterval: 14 })],
      state: { transport: localTransport(join(dir, 'state')), directory: join(dir, 'state') },
      prefix: 'home.',
    })
    expect((await backup(relay()))._unsafeUnwrap().failed).toBe(0)
    await session.close()
    session = openSshSession()
    await writeFile(join(dir, 'home/a.txt'), 'again\n')
    const [logins, sessions] = [await sshd.logins(), await sshd.sessions()]
    const report = (await backup(relay()))._unsafeUnwrap()
    expect(report.targets[0]).toMatchObject({ ok: true, mode: 'incremental' })
    expect([await sshd.logins() - logins, await sshd.sessions() - sessions]).toEqual([2, 2])
    const sent = await snapshotsIn(join(dir, 'relayed'))
    expect(sent).toHaveLength(2)
    expect(show(join(dir, 'relayed', sent[1] ?? ''))).toMatchObject({ Flags: 'readonly', 'Received UUID': show(join(dir, 'home/.snapshots', sent[1] ?? ''))['UUID'] })
    expect(await contentOf(join(dir, 'relayed', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
    // both connections serve on after the stream
    expect((await backup(relay(), { snapshot: false }))._unsafeUnwrap().failed).toBe(0)
    // a dozen streams along the one channel, each leaving nothing attached to it
    const warnings: Error[] = []
    const warned = (w: Error): void => void warnings.push(w)
    process.on('warning', warned)
    try {
      for (let i = 0; i < 12; i++) expect((await backup(relay(), { transfer: false, now: () => new Date(Date.now() + (i + 1) * 60_000) })).isOk()).toBe(true)
      const caughtUp = (await backup(relay(), { snapshot: false }))._unsafeUnwrap()
      expect(caughtUp.targets[0]?.sent).toHaveLength(12)
      expect(warnings.map((w) => w.message)).toEqual([])
    } finally {
      process.off('warning', warned)
    }
  })

  /** the second (incremental) run's receive exists at the target: the moment to break things */
  const whenReceiving = async (name: () => Promise<string | undefined>): Promise<void> => {
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline) {
      if ((await name()) !== undefined) return
      await new Promise((r) => setTimeout(r, 5))
    }
    throw new Error('the receive never started')
  }

  it('a connection cut mid-send is retried in the same run: the partial receive is removed and the send repeated from the same parent', async () => {
    expect((await backup(job(), { retry: { initialDelayMs: 100 } }))._unsafeUnwrap().failed).toBe(0)
    const [first] = await snapshotsIn(join(dir, 'backup'))
    execFileSync('sh', ['-c', `head -c 200M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
    const events: string[] = []
    const running = backup(job(), { retry: { initialDelayMs: 100 }, onEvent: (e) => { if (e.type === 'retrying' || e.type === 'recovered') events.push(e.type) } })
    await whenReceiving(async () => (await snapshotsIn(join(dir, 'backup'))).find((n) => n !== first))
    // the server side of the connection dies, as when a router drops it
    for (const pid of sshd.sessionPids()) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch (e) {
        // a command of a session killed just before, gone with it between the listing and this kill
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e
      }
    }
    const report = (await running)._unsafeUnwrap()
    expect(report.targets[0]).toMatchObject({ ok: true, attempts: 2, mode: 'incremental', parent: first })
    expect(events).toEqual(['retrying', 'recovered'])
    const sent = await snapshotsIn(join(dir, 'backup'))
    expect(sent).toHaveLength(2)
    expect(show(join(dir, 'backup', sent[1] ?? ''))).toMatchObject({ Flags: 'readonly', 'Parent UUID': show(join(dir, 'backup', first ?? ''))['UUID'] })
    expect(await contentOf(join(dir, 'backup', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
  })

  it('a silent partition (no packet passes, nothing is reset) is detected within the keepalive bound, and the send is retried once it heals (scenario 6)', async () => {
    const proxy = await startTcpProxy(sshd.port)
    try {
      const via = { port: proxy.port, ssh: { serverAliveInterval: 1, serverAliveCountMax: 2 } }
      expect((await backup(job({}, via)))._unsafeUnwrap().failed).toBe(0)
      const [first] = await snapshotsIn(join(dir, 'backup'))
      execFileSync('sh', ['-c', `head -c 200M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
      let droppedAt = 0
      const detected: { code: string; afterMs: number }[] = []
      const running = backup(job({}, via), {
        retry: { initialDelayMs: 1000 },
        onEvent: (e) => {
          if (e.type !== 'retrying') return
          detected.push({ code: e.error.code, afterMs: Date.now() - droppedAt })
          proxy.heal() // before the retry's pause is over
        },
      })
      await whenReceiving(async () => (await snapshotsIn(join(dir, 'backup'))).find((n) => n !== first))
      droppedAt = Date.now()
      proxy.drop()
      const report = (await running)._unsafeUnwrap()
      expect(detected.map((d) => d.code)).toEqual(['NETWORK_FAILED'])
      // ServerAliveInterval 1 × ServerAliveCountMax 2, plus the time to notice the end of the connection
      expect(detected[0]?.afterMs).toBeLessThan(8000)
      expect(report.targets[0]).toMatchObject({ ok: true, attempts: 2, mode: 'incremental', parent: first })
      const sent = await snapshotsIn(join(dir, 'backup'))
      expect(sent).toHaveLength(2)
      expect(show(join(dir, 'backup', sent[1] ?? ''))).toMatchObject({ Flags: 'readonly', 'Parent UUID': show(join(dir, 'backup', first ?? ''))['UUID'] })
      expect(await contentOf(join(dir, 'backup', sent[1] ?? ''))).toEqual(await contentOf(join(dir, 'home/.snapshots', sent[1] ?? '')))
      // the receive cut off by the partition did not outlive it on the server
      await waitFor(async () => processes(sshd.sessionPids(), 'btrfs', 'receive').length === 0, 10_000)
    } finally {
      await proxy.stop()
    }
  }, 120_000)

  it('a host out of reach when the run starts is tried again with backoff, and backed up once it answers; one that stays away is a failed target', async () => {
    const proxy = await startTcpProxy(sshd.port)
    try {
      const via = { port: proxy.port, ssh: { connectTimeout: 1, serverAliveInterval: 1, serverAliveCountMax: 2 } }
      proxy.drop()
      const events: { attempt: number; code: string }[] = []
      const report = (await backup(job({}, via), {
        retry: { initialDelayMs: 200 },
        onEvent: (e) => {
          if (e.type !== 'retrying') return
          events.push({ attempt: e.attempt, code: e.error.code })
          if (e.attempt === 2) proxy.heal()
        },
      }))._unsafeUnwrap()
      expect(events).toEqual([{ attempt: 1, code: 'NETWORK_FAILED' }, { attempt: 2, code: 'NETWORK_FAILED' }])
      expect(report.targets[0]).toMatchObject({ ok: true, mode: 'full', warnings: [expect.stringMatching(/^reached on attempt 3/)] })
      expect(await snapshotsIn(join(dir, 'backup'))).toHaveLength(1)

      proxy.drop()
      const away = (await backup(job({}, via), { retry: { attempts: 1, initialDelayMs: 100 } }))._unsafeUnwrap()
      expect(away.targets[0]).toMatchObject({ ok: false, attempts: 2, error: { code: 'NETWORK_FAILED' } })
      expect(away.failed).toBe(1)
    } finally {
      await proxy.stop()
    }
  }, 60_000)

  /** a first backup (a push, or `make`'s job into `folder`), then a second run of 200 MiB more, not retried, caught once its receive has begun at the target */
  const secondRunReceiving = async (make: () => Job = job, folder = 'backup') => {
    expect((await backup(make()))._unsafeUnwrap().failed).toBe(0)
    const [first] = await snapshotsIn(join(dir, folder))
    execFileSync('sh', ['-c', `head -c 200M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
    const running = backup(make(), { retry: { attempts: 0 } })
    await whenReceiving(async () => (await snapshotsIn(join(dir, folder))).find((n) => n !== first))
    return { first, running }
  }

  it('the remote receive killed mid-send: the half-received copy is removed, and the next run sends again from the same parent (scenario 1)', async () => {
    const { first, running } = await secondRunReceiving()
    const receivers = processes(sshd.sessionPids(), 'btrfs', 'receive')
    expect(receivers).toHaveLength(1)
    process.kill(receivers[0] as number, 'SIGKILL')
    const failed = (await running)._unsafeUnwrap()
    expect(failed.targets[0]).toMatchObject({ ok: false, error: { code: 'COMMAND_FAILED', message: expect.stringMatching(/^btrfs receive on root@127\.0\.0\.1:\d+ was killed by SIGKILL/) } })
    // the failed run removed the half-received copy it made (it was writable, without a received uuid)
    expect(await snapshotsIn(join(dir, 'backup'))).toEqual([first])
    const next = (await backup(job(), { snapshot: false }))._unsafeUnwrap()
    const again = failed.targets[0]?.snapshot ?? ''
    expect(next.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: first, snapshot: again })
    expect(await snapshotsIn(join(dir, 'backup'))).toEqual([first, again])
    expect(show(join(dir, 'backup', again))).toMatchObject({ Flags: 'readonly', 'Parent UUID': show(join(dir, 'backup', first ?? ''))['UUID'] })
  })
  it('a remote receive that stops (SIGSTOP) is killed by the no-progress watchdog, there too, and the send is tried again (scenario 24)', async () => {
    expect((await backup(job()))._unsafeUnwrap().failed).toBe(0)
    const [first] = await snapshotsIn(join(dir, 'backup'))
    execFileSync('sh', ['-c', `head -c 200M /dev/urandom > "${join(dir, 'home/big.bin')}"`])
    const events: string[] = []
    const running = backup(job({ stallTimeoutSeconds: 2 }), { retry: { initialDelayMs: 100 }, onEvent: (e) => { if (e.type === 'retrying') events.push(e.error.code) } })
    await whenReceiving(async () => (await snapshotsIn(join(dir, 'backup'))).find((n) => n !== first))
    const receivers = processes(sshd.sessionPids(), 'btrfs', 'receive')
    expect(receivers).toHaveLength(1)
    const stopped = receivers[0] as number
    process.kill(stopped, 'SIGSTOP')
    const report = (await running)._unsafeUnwrap()
    expect(events).toEqual(['STALLED'])
    expect(report.targets[0]).toMatchObject({ ok: true, attempts: 2, mode: 'incremental', parent: first })
    // the stopped receiver was killed on the server by its pid, not left behind
    expect(existsSync(`/proc/${stopped}`)).toBe(false)
    await session.close()
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
    const sent = await snapshotsIn(join(dir, 'backup'))
    expect(sent).toHaveLength(2)
    expect(show(join(dir, 'backup', sent[1] ?? ''))).toMatchObject({ Flags: 'readonly', 'Parent UUID': show(join(dir, 'backup', first ?? ''))['UUID'] })
  })
})
