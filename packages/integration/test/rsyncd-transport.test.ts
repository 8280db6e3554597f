import { spawnSync } from 'node:child_process'
import { chmod, chown, readdir, readFile, readlink, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { backup, list, parseLocation, prune, restore, type BackupEvent, type Job, type RsyncDaemonLocation } from '@bb/core'
import { rsyncDriver } from '@bb/drivers/rsync'
import { localTransport } from '@bb/transports/local'
import { rsyncdTransport, type RsyncdOptions } from '@bb/transports/rsyncd'
import { makeTempDir, requireTools, startRsyncd, treeManifest, writeTree, type Rsyncd, type TempDir } from '@bb/testkit'
import { at, ok, waitFor } from './helpers.js'

const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => /^\d{4}-/.test(n)).sort()

describe.runIf(requireTools(['rsync']))('rsync daemon transport against a real rsync --daemon on 127.0.0.1', () => {
  let daemon: Rsyncd
  let tmp: TempDir
  const location = (path: string): RsyncDaemonLocation => parseLocation(daemon.url(path))._unsafeUnwrap() as RsyncDaemonLocation
  const module = (path: string, options: RsyncdOptions = { passwordFile: daemon.passwordFile }) => rsyncdTransport(location(path), options)

  beforeAll(async () => {
    daemon = await startRsyncd()
  })
  afterAll(async () => {
    await daemon?.stop()
  })
  beforeEach(async () => {
    tmp = await makeTempDir('rsyncd-test')
  })
  afterEach(async () => {
    await tmp?.cleanup()
  })

  it('lists, stats, reads, writes, links and removes files in the module through rsync alone', async () => {
    const m = module('')
    await writeTree(join(daemon.modulePath, 'ops'), { 'a.txt': 'alpha\n', 'sub/deep/b.txt': 'bravo\n', 'with space': 'x' })
    expect(ok(await m.list('ops')).sort((a, b) => a.name.localeCompare(b.name))).toEqual([
      { name: 'a.txt', kind: 'file' }, { name: 'sub', kind: 'directory' }, { name: 'with space', kind: 'file' },
    ])
    expect(ok(await m.stat('ops/a.txt'))).toMatchObject({ kind: 'file', size: 6 })
    expect(ok(await m.stat('ops/sub'))).toMatchObject({ kind: 'directory' })
    expect(ok(await m.stat(''))).toMatchObject({ kind: 'directory' })
    expect(ok(await m.stat('ops/missing'))).toBeUndefined()
    expect(ok(await m.readFile('ops/a.txt'))).toBe('alpha\n')
    expect(ok(await m.readFile('ops/missing.json'))).toBeUndefined()
    expect((await m.list('ops/missing'))._unsafeUnwrapErr()).toMatchObject({ code: 'NOT_FOUND' })

    ok(await m.writeFileAtomic('ops/record.json', '{"ok":true}\n'))
    expect(await readFile(join(daemon.modulePath, 'ops/record.json'), 'utf8')).toBe('{"ok":true}\n')
    ok(await m.mkdir('ops/new'))
    ok(await m.mkdir('ops/x/y/z', { recursive: true }))
    expect((await stat(join(daemon.modulePath, 'ops/x/y/z'))).isDirectory()).toBe(true)
    ok(await m.symlink('sub', 'ops/latest'))
    expect(ok(await m.readlink('ops/latest'))).toBe('sub')

    // a tree is removed only when asked for; then one name goes, with everything under it; its neighbours stay
    expect((await m.remove('ops/sub'))._unsafeUnwrapErr()).toMatchObject({ code: 'IO_FAILED', message: expect.stringContaining('not empty') })
    expect((await stat(join(daemon.modulePath, 'ops/sub/deep/b.txt'))).isFile()).toBe(true)
    ok(await m.remove('ops/sub', { recursive: true }))
    ok(await m.remove('ops/a.txt'))
    expect((await readdir(join(daemon.modulePath, 'ops'))).sort()).toEqual(['latest', 'new', 'record.json', 'with space', 'x'])
    ok(await m.remove('ops/not-there'))

    expect(m.filesOnly).toBe(true)
    expect((await m.exec(['true']))._unsafeUnwrapErr()).toMatchObject({ code: 'UNSUPPORTED' })
    expect((await m.rename('ops/new', 'ops/old'))._unsafeUnwrapErr()).toMatchObject({ code: 'UNSUPPORTED' })
  })

  it('takes away the temporary directories of runs killed mid-request (kill -9), once untouched for ten minutes, and nothing else', async () => {
    const tmpdir = process.env.TMPDIR
    process.env.TMPDIR = tmp.path
    try {
      await writeTree(join(daemon.modulePath, 'sweep'), { 'a.json': '{}\n' })
      const dead = spawnSync('true').pid
      const left = async (name: string, options: { readonly ageMinutes: number; readonly mode?: number }): Promise<string> => {
        await writeTree(join(tmp.path, name), { 'file': 'what the killed run read', '.bbackup/x.json': '{}' })
        await chmod(join(tmp.path, name), options.mode ?? 0o700)
        const then = new Date(Date.now() - options.ageMinutes * 60_000)
        await utimes(join(tmp.path, name), then, then)
        return name
      }
      await left(`bbackup-rsyncd-${dead}-Killed`, { ageMinutes: 11 })
      const kept = [
        await left(`bbackup-rsyncd-${dead}-Young1`, { ageMinutes: 5 }), // a request of a run elsewhere (another pid namespace) may be in it
        await left('bbackup-rsyncd-1-Alive1', { ageMinutes: 60 }), // a process that runs (init)
        await left(`bbackup-rsyncd-${dead}-Shared`, { ageMinutes: 60, mode: 0o755 }), // not private to its user
        await left('bbackup-rsyncd-Old123', { ageMinutes: 60 }), // an older bbackup's name, without its pid
      ]
      expect(ok(await module('').readFile('sweep/a.json'))).toBe('{}\n')
      // and the request's own directory is gone with it
      expect((await readdir(tmp.path)).sort()).toEqual(kept.sort())
    } finally {
      if (tmpdir === undefined) delete process.env.TMPDIR
      else process.env.TMPDIR = tmpdir
    }
  })

  it('names a daemon at an IPv6 address as rsync:// writes it, in [brackets]', async () => {
    const at6 = rsyncdTransport(parseLocation('rsync://[::1]:1/mod')._unsafeUnwrap() as RsyncDaemonLocation, {})
    const e = (await at6.list(''))._unsafeUnwrapErr()
    expect(e.message).toMatch(/^the rsync daemon at \[::1\]:1 (refused the connection|could not be reached)/)
  })

  it('reads the small files of a directory and writes and removes several, each in one connection', async () => {
    const m = module('')
    await writeTree(join(daemon.modulePath, 'batch'), {
      '.meta/a.json': '{"a":1}\n', '.meta/b.partial': 'b\n', '.meta/c.txt': 'not asked for', '.meta/trash/d.json': 'in a subdirectory', 'keep.json': 'a level up',
    })
    const connections = async (): Promise<number> => ((await daemon.log()).match(/connect from/g) ?? []).length
    let before = await connections()
    const files = ok(await m.readFiles!('batch/.meta', ['.json', '.partial']))
    expect(Object.fromEntries(files)).toEqual({ 'a.json': '{"a":1}\n', 'b.partial': 'b\n' })
    expect(await connections()).toBe(before + 1)
    expect(ok(await m.readFiles!('batch/missing', ['.json'])).size).toBe(0)

    before = await connections()
    ok(await m.changeFiles!('batch', { write: [{ path: '.meta/e.json', data: '{"e":1}\n' }, { path: 'new dir/[x]*.json', data: 'odd name\n' }], remove: ['.meta/b.partial', '.meta/not-there'] }))
    expect(await connections()).toBe(before + 1)
    expect((await readdir(join(daemon.modulePath, 'batch/.meta'))).sort()).toEqual(['a.json', 'c.txt', 'e.json', 'trash'])
    expect(await readFile(join(daemon.modulePath, 'batch/.meta/e.json'), 'utf8')).toBe('{"e":1}\n')
    expect(await readFile(join(daemon.modulePath, 'batch/new dir/[x]*.json'), 'utf8')).toBe('odd name\n')
    // neighbours stay: the other files of the directory, its subdirectories, the level above
    expect(await readFile(join(daemon.modulePath, 'batch/.meta/trash/d.json'), 'utf8')).toBe('in a subdirectory')
    expect((await readdir(join(daemon.modulePath, 'batch'))).sort()).toEqual(['.meta', 'keep.json', 'new dir'])
    // links made with the writes, a link already there replaced, in the same one connection
    before = await connections()
    ok(await m.changeFiles!('batch', { write: [{ path: '.meta/f.json', data: '{"f":1}\n' }], link: [{ path: 'latest', target: 'new dir' }, { path: '.meta/last', target: 'f.json' }], remove: ['.meta/c.txt'] }))
    ok(await m.changeFiles!('batch', { link: [{ path: 'latest', target: '.meta' }], remove: ['.meta/f.json'] }))
    expect(await connections()).toBe(before + 2)
    // read back through the daemon, which un-munges what `munge symlinks` stored
    expect(ok(await m.readlink('batch/latest'))).toBe('.meta')
    expect(ok(await m.readlink('batch/.meta/last'))).toBe('f.json')
    expect((await readdir(join(daemon.modulePath, 'batch/.meta'))).sort()).toEqual(['a.json', 'e.json', 'last', 'trash'])
    ok(await m.changeFiles!('batch', { remove: ['.meta/e.json', '.meta/a.json', '.meta/last', 'latest'] }))
    expect((await readdir(join(daemon.modulePath, 'batch/.meta'))).sort()).toEqual(['trash'])
    expect((await m.changeFiles!('batch', { write: [{ path: '../out.json', data: 'x' }] }))._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS' })
    expect(await readdir(daemon.modulePath)).not.toContain('out.json')
  })

  it('refuses an unsafe password file before connecting, and a wrong password without retrying (scenario 11)', async () => {
    const logBefore = (await daemon.log()).length
    const file = join(tmp.path, 'pw')
    await writeFile(file, `${daemon.password}\n`, { mode: 0o600 })

    await chmod(file, 0o644)
    const readable = (await module('', { passwordFile: file }).list(''))._unsafeUnwrapErr()
    expect(readable).toMatchObject({ code: 'INSECURE_SECRETS', message: `the password file ${file} may be read or written by group or others (mode 0644)` })
    expect(readable.hint).toContain('chmod 600')

    await chmod(file, 0o600)
    const link = join(tmp.path, 'pw-link')
    await symlink(file, link)
    expect((await module('', { passwordFile: link }).list(''))._unsafeUnwrapErr()).toMatchObject({ code: 'INSECURE_SECRETS', message: expect.stringContaining('is a symlink') })

    await chown(file, 65534, 65534)
    expect((await module('', { passwordFile: file }).list(''))._unsafeUnwrapErr()).toMatchObject({ code: 'INSECURE_SECRETS', message: expect.stringContaining('belongs to uid 65534') })
    const missing = join(tmp.path, 'nas.secret')
    expect((await module('', { passwordFile: missing }).list(''))._unsafeUnwrapErr()).toMatchObject({
      code: 'NOT_FOUND', message: `the password file ${missing} does not exist`, hint: expect.stringContaining(`umask 077; echo 'THE-PASSWORD' > ${missing}`) as unknown,
    })
    // none of these reached the daemon
    expect((await daemon.log()).slice(logBefore)).not.toMatch(/connect from/)

    const wrong = join(tmp.path, 'wrong')
    await writeFile(wrong, 'not-the-password\n', { mode: 0o600 })
    const refused = (await module('', { passwordFile: wrong }).list(''))._unsafeUnwrapErr()
    expect(refused).toMatchObject({ code: 'AUTH_FAILED', message: `the rsync daemon at 127.0.0.1:${daemon.port} refused the login to module backups` })

    // no password at all: rsync would ask on the terminal; it fails instead
    const saved = process.env.RSYNC_PASSWORD
    delete process.env.RSYNC_PASSWORD
    try {
      expect((await module('', {}).list(''))._unsafeUnwrapErr()).toMatchObject({ code: 'AUTH_FAILED' })
    } finally {
      if (saved !== undefined) process.env.RSYNC_PASSWORD = saved
    }

    // the right file works, and the password is in no argv and no error
    const good = module('')
    expect(ok(await good.stat(''))).toMatchObject({ kind: 'directory' })
    const endpoint = good.rsyncEndpoint('x/')
    expect(JSON.stringify([endpoint, readable, refused])).not.toContain(daemon.password)
    // rsync reads it on its stdin, where it also reaches an rsync run through sudo
    expect(endpoint.options).toContain('--password-file=-')
    expect(endpoint.input?.()).toBe(`${daemon.password}\n`)
  })

  const daemonJob = (target: string, state: string, source: string, extraArgs: readonly string[] = []): Job => ({
    driver: rsyncDriver({ extraArgs }),
    source: localTransport(source),
    targets: [module(target)],
    state: { transport: localTransport(state), directory: state },
  })

  it('backs up into the module: full, then incremental with hard links made by the daemon, listed, pruned and restored through it', async () => {
    const source = join(tmp.path, 'source')
    await writeTree(source, { 'a.txt': 'alpha\n', 'dir/b.txt': 'bravo\n', 'dir/big.bin': Buffer.alloc(300_000, 5) })
    const job = daemonJob('laptop', join(tmp.path, 'state'), source)
    const first = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T100000Z', mode: 'full', files: 3 })
    await writeFile(join(source, 'a.txt'), 'alpha changed\n')
    const connections = async (): Promise<number> => ((await daemon.log()).match(/connect from/g) ?? []).length
    const before = await connections()
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T110000Z', mode: 'incremental', parent: '2026-11-23T100000Z', files: 1 })
    // each connection is a login to the daemon: the target's check, listing and records (three at
    // once), the marker (as root: read back, for its owner), the copy, then the record, `latest` and the marker's removal in one
    expect(await connections() - before).toBe(process.getuid?.() === 0 ? 7 : 6)
    expect(second.targets[0]?.commands[0]).toContain('--link-dest=../2026-11-23T100000Z')

    const dir = join(daemon.modulePath, 'laptop')
    expect(await backupsIn(dir)).toEqual(['2026-11-23T100000Z', '2026-11-23T110000Z'])
    const [one, two] = ['2026-11-23T100000Z', '2026-11-23T110000Z'].map((n) => join(dir, n)) as [string, string]
    expect((await stat(join(one, 'dir/big.bin'))).ino).toBe((await stat(join(two, 'dir/big.bin'))).ino)
    expect((await stat(join(one, 'a.txt'))).ino).not.toBe((await stat(join(two, 'a.txt'))).ino)
    expect(await treeManifest(two)).toEqual(await treeManifest(source))
    // records written, no marker of an unfinished backup left
    expect((await readdir(join(dir, '.bbackup'))).sort()).toEqual(['2026-11-23T100000Z.json', '2026-11-23T110000Z.json'])
    expect(await readlink(join(dir, 'latest'))).toMatch(/2026-11-23T110000Z$/)

    const listed = ok(await list(job))
    expect(listed[0]?.snapshots.map((s) => [s.name, s.complete])).toEqual([['2026-11-23T100000Z', true], ['2026-11-23T110000Z', true]])

    const restored = join(tmp.path, 'restored')
    ok(await restore(job, { from: job.targets[0] ?? job.source, snapshot: '2026-11-23T100000Z', to: localTransport(restored) }))
    expect(await readFile(join(restored, 'a.txt'), 'utf8')).toBe('alpha\n')

    const pruned = ok(await prune({ ...job, retention: { target: { keepLast: 1 } } }))
    expect(pruned.flatMap((p) => p.deleted)).toEqual(['2026-11-23T100000Z'])
    expect(await backupsIn(dir)).toEqual(['2026-11-23T110000Z'])
    expect(await readdir(join(dir, '.bbackup'))).toEqual(['2026-11-23T110000Z.json'])
    expect(await treeManifest(two)).toEqual(await treeManifest(source))
  })

  /** 400 files of 64 KiB: with --bwlimit, a transfer that runs long enough to be cut */
  const manyFiles = async (): Promise<string> => {
    const source = join(tmp.path, 'source')
    const files: Record<string, Buffer> = {}
    for (let i = 0; i < 400; i++) files[`f/${i}.bin`] = Buffer.alloc(64 * 1024, i % 251)
    await writeTree(source, files)
    return source
  }

  it('finishes the run when the daemon is killed mid-transfer and comes back (scenario 12)', async () => {
    const source = await manyFiles()
    // slowed down, so that the kill lands mid-transfer
    const job = daemonJob('cut', join(tmp.path, 'state'), source, ['--bwlimit=8m'])
    const events: BackupEvent[] = []
    let cut = false
    const run = backup(job, {
      now: at('2026-11-23T12:00:00Z'),
      retry: { attempts: 3, initialDelayMs: 1500, maxDelayMs: 3000 },
      onEvent: (e) => {
        events.push(e)
      },
    })
    // kill while files are arriving, then bring the daemon back before the retry
    await waitFor(async () => (await readdir(join(daemon.modulePath, 'cut/2026-11-23T120000Z/f')).catch(() => [])).length > 20, 20_000)
    await daemon.kill()
    cut = true
    await new Promise((r) => setTimeout(r, 500))
    await daemon.start()
    const report = ok(await run)
    expect(cut).toBe(true)
    expect(events.some((e) => e.type === 'retrying' && e.error.code === 'NETWORK_FAILED')).toBe(true)
    expect(report.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T120000Z' })
    const dir = join(daemon.modulePath, 'cut')
    expect(await treeManifest(join(dir, '2026-11-23T120000Z'))).toEqual(await treeManifest(source))
    expect(await readdir(join(dir, '.bbackup'))).toEqual(['2026-11-23T120000Z.json'])
  }, 60_000)

  it('resumes what a failed run left: the next backup links from it and removes it, and it never counts as a backup', async () => {
    const source = await manyFiles()
    const job = daemonJob('resume', join(tmp.path, 'state'), source, ['--bwlimit=8m'])
    const run = backup(job, { now: at('2026-11-23T13:00:00Z'), retry: { attempts: 0 } })
    await waitFor(async () => (await readdir(join(daemon.modulePath, 'resume/2026-11-23T130000Z/f')).catch(() => [])).length > 20, 20_000)
    await daemon.kill()
    const failed = ok(await run)
    await daemon.start()
    expect(failed.targets[0]).toMatchObject({ ok: false, error: { code: 'NETWORK_FAILED' } })
    // the message names the daemon's location, not the path inside the module
    expect(failed.targets[0]?.error?.message).toMatch(new RegExp(`^rsync lost its connection to rsync://backup@127\\.0\\.0\\.1:${daemon.port}/backups/resume \\(exit \\d+`))
    const dir = join(daemon.modulePath, 'resume')
    expect(await readdir(join(dir, '.bbackup'))).toEqual(['2026-11-23T130000Z.partial'])
    expect(ok(await list(job))[0]?.snapshots.map((s) => [s.name, s.complete])).toEqual([['2026-11-23T130000Z', false]])
    const copied = (await readdir(join(dir, '2026-11-23T130000Z/f'))).filter((n) => !n.startsWith('.'))
    const someInode = (await stat(join(dir, '2026-11-23T130000Z/f', copied[0] ?? ''))).ino

    const next = ok(await backup(job, { now: at('2026-11-23T14:00:00Z') }))
    expect(next.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T140000Z', mode: 'full' })
    expect(next.targets[0]?.commands[0]).toContain('--link-dest=../2026-11-23T130000Z')
    // what the cut run had copied was linked, not sent again; then the unfinished copy went
    expect((await stat(join(dir, '2026-11-23T140000Z/f', copied[0] ?? ''))).ino).toBe(someInode)
    expect(await backupsIn(dir)).toEqual(['2026-11-23T140000Z'])
    expect(await readdir(join(dir, '.bbackup'))).toEqual(['2026-11-23T140000Z.json'])
    expect(await treeManifest(join(dir, '2026-11-23T140000Z'))).toEqual(await treeManifest(source))
  }, 60_000)
})
