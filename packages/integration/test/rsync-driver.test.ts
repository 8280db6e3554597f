import { randomBytes } from 'node:crypto'
import { chmod, lstat, mkdir, readdir, readFile, readlink, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest'
import { ResultAsync } from 'neverthrow'
import { backup, list, prune, restore, status, verify, type BackupEvent, type BackupReport, type TransferProgress, type Transport } from '@bb/core'
import { makeTempDir, mountLoopFilesystem, requireTools, treeManifest, writeTree, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { at, finished, ok, rsyncJob, spawnTs, waitFor } from './helpers.js'

const backupsIn = async (dir: string) => (await readdir(dir)).filter((n) => /^\d{4}-/.test(n)).sort()

describe.runIf(requireTools(['rsync']))('rsync driver against real rsync', () => {
  let tmp: TempDir
  let source: string
  let target: string
  let state: string
  beforeEach(async () => {
    tmp = await makeTempDir('rsync')
    source = join(tmp.path, 'source')
    target = join(tmp.path, 'target')
    state = join(tmp.path, 'state')
    await writeTree(source, { 'a.txt': 'alpha\n', 'dir/b.txt': 'bravo\n', 'dir/deep/c.bin': Buffer.alloc(100_000, 7) })
  })
  afterEach(() => tmp.cleanup())

  it('a backup named by a clock that was ahead: the next one links against the newest made, and latest (the link, status, restore) is that one', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    const real = Date.now()
    const clock = (ms: number) => (): Date => new Date(ms)
    const first = ok(await backup(job, { now: clock(real - 3_600_000) })).snapshot
    const { mtime } = await stat(join(source, 'a.txt'))
    await writeFile(join(source, 'a.txt'), 'made while the clock was 200 days ahead\n')
    const ahead = ok(await backup(job, { now: clock(real + 200 * 86_400_000) })).snapshot
    // a.txt as it was in the first backup, to rsync's quick check too (size and time)
    await writeFile(join(source, 'a.txt'), 'alpha\n')
    await utimes(join(source, 'a.txt'), mtime, mtime)
    await writeFile(join(source, 'new.txt'), 'made once the clock was right\n')
    const made = ok(await backup(job, { now: clock(real) }))
    // linked against the first (the same a.txt), not the one dated ahead
    expect(made.targets[0]).toMatchObject({ mode: 'incremental', parent: first })
    expect(made.targets[0]?.warnings).toContainEqual(expect.stringContaining(`${ahead}, is dated ahead of this host's clock (200 d)`))
    expect((await stat(join(target, made.snapshot, 'a.txt'))).ino).toBe((await stat(join(target, first, 'a.txt'))).ino)
    expect(await readlink(join(target, 'latest'))).toBe(made.snapshot)
    expect(ok(await status(job, { now: clock(real) })).targets[0]).toMatchObject({ latest: { name: made.snapshot }, ahead: [ahead] })
    const into = join(tmp.path, 'restored')
    expect(ok(await restore(job, { from: job.targets[0]!, to: localTransport(into) })).snapshot).toBe(made.snapshot)
    expect(await readFile(join(into, 'new.txt'), 'utf8')).toBe('made once the clock was right\n')
    // a prune keeping one: the one dated ahead is kept (a wrong clock is no reason to delete) and so is the newest made, which the next run links against
    const pruned = ok(await prune({ ...job, retention: { target: { keepLast: 1 } } }, { now: clock(real) }))
    expect(pruned[0]?.deleted).toEqual([first])
    expect(await backupsIn(target)).toEqual([made.snapshot, ahead].sort())
  })

  it('leaves out absolute excludes (rsync-system-backup\'s -/ filters) wherever they are, and nothing else', async () => {
    await writeTree(source, { 'var/cache/apt/x.deb': 'deb\n', 'var/lib/keep.txt': 'keep\n', 'home/u/.cache/thumbs/t': 't\n', 'home/u/notes.txt': 'n\n' })
    const job = rsyncJob({ source, targets: [target], state, driver: { absoluteExcludes: [`${source}/var/cache/`, `${source}/home/*/.cache/`] } })
    const r = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(r.targets[0]?.commands[0]).toContain(`--filter=-/ ${source}/var/cache/`)
    const copy = Object.keys(await treeManifest(join(target, '2026-11-23T100000Z'))).sort()
    expect(copy).toEqual(['a.txt', 'dir', 'dir/b.txt', 'dir/deep', 'dir/deep/c.bin', 'home', 'home/u', 'home/u/notes.txt', 'var', 'var/lib', 'var/lib/keep.txt'])
  })

  it('leaves a target inside the source out of every copy and every verify, and refuses the source itself as the target', async () => {
    // a name rsync would read as a pattern: only that directory is left out
    const inside = join(source, 'back[ups]*')
    await writeTree(source, { 'backups/kept.txt': 'a neighbour\n' })
    const job = rsyncJob({ source, targets: [inside], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    const second = join(inside, '2026-11-23T110000Z')
    expect(Object.keys(await treeManifest(second)).sort()).toEqual(['a.txt', 'backups', 'backups/kept.txt', 'dir', 'dir/b.txt', 'dir/deep', 'dir/deep/c.bin'])
    expect(ok(await verify(job))).toMatchObject({ snapshot: '2026-11-23T110000Z', differenceCount: 0 })

    for (const itself of [source, `${source}/`, join(source, 'dir', '..')]) {
      const refused = ok(await backup(rsyncJob({ source, targets: [itself], state }), { now: at('2026-11-23T12:00:00Z') }))
      expect(refused.targets[0]).toMatchObject({ ok: false, error: { code: 'INVALID_OPTIONS' } })
    }
    expect((await readdir(source)).sort()).toEqual(['a.txt', 'back[ups]*', 'backups', 'dir'])
  })

  it('takes any prefix that reads back as the job\'s, and refuses one with a slash or a control character before anything is written', async () => {
    for (const prefix of ['a/b.', 'x\ny.', 'tab\t.']) {
      const refused = (await backup({ ...rsyncJob({ source, targets: [target], state }), prefix }, { now: at('2026-11-23T10:00:00Z') }))._unsafeUnwrapErr()
      expect(refused, JSON.stringify(prefix)).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining(JSON.stringify(prefix)) })
    }
    expect(await readdir(tmp.path)).toEqual(['source'])
    const job = { ...rsyncJob({ source, targets: [target], state }), prefix: 'web server.' }
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    await writeFile(join(source, 'a.txt'), 'changed\n')
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    // the first backup is the job's own: the second links against it
    expect(second.targets[0]).toMatchObject({ ok: true, snapshot: 'web server.2026-11-23T110000Z', parent: 'web server.2026-11-23T100000Z' })
  })

  it('backs up what a source that is a symlink to a directory points to, as rsync copies SOURCE/', async () => {
    const link = join(tmp.path, 'link')
    await symlink(source, link)
    ok(await backup(rsyncJob({ source: link, targets: [target], state }), { now: at('2026-11-23T10:00:00Z') }))
    expect(await treeManifest(join(target, '2026-11-23T100000Z'))).toEqual(await treeManifest(source))
    await symlink(join(tmp.path, 'a.txt'), join(tmp.path, 'to-a-file'))
    await writeFile(join(tmp.path, 'a.txt'), 'a file\n')
    const refused = (await backup(rsyncJob({ source: join(tmp.path, 'to-a-file'), targets: [target], state }), { now: at('2026-11-23T11:00:00Z') }))._unsafeUnwrapErr()
    expect(refused).toMatchObject({ code: 'SOURCE_UNAVAILABLE', message: expect.stringContaining('to-a-file is not a directory') })
  })

  it('starts reaching the hosts (Transport.connect) before it takes the lock: backup every place, prune those with a policy', async () => {
    const events: string[] = []
    const plain = rsyncJob({ source, targets: [target], state })
    const connecting = (t: typeof plain.source, what: string): typeof plain.source => ({ ...t, connect: async () => void events.push(`connect ${what}`) })
    const job = {
      ...plain,
      source: connecting(plain.source, 'source'),
      targets: [connecting(plain.targets[0] as typeof plain.source, 'target')],
      state: { ...plain.state, transport: { ...plain.state.transport, lock: (...a: Parameters<typeof plain.state.transport.lock>) => (events.push('lock'), plain.state.transport.lock(...a)) } },
    }
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(events).toEqual(['connect source', 'connect target', 'lock'])
    events.length = 0
    ok(await prune({ ...job, retention: { target: { keepLast: 5 } } }))
    expect(events).toEqual(['connect target', 'lock'])
  })

  it('makes a full backup, then an incremental one that hard-links unchanged files', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    const first: BackupReport = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.failed).toBe(0)
    expect(first.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T100000Z', mode: 'full', files: 3 })
    await writeFile(join(source, 'a.txt'), 'alpha changed\n')
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T110000Z', mode: 'incremental', parent: '2026-11-23T100000Z', files: 1 })

    const [one, two] = ['2026-11-23T100000Z', '2026-11-23T110000Z'].map((n) => join(target, n)) as [string, string]
    expect((await stat(join(one, 'dir/deep/c.bin'))).ino).toBe((await stat(join(two, 'dir/deep/c.bin'))).ino)
    expect((await stat(join(one, 'a.txt'))).ino).not.toBe((await stat(join(two, 'a.txt'))).ino)
    expect(await readFile(join(one, 'a.txt'), 'utf8')).toBe('alpha\n')
    expect(await treeManifest(two)).toEqual(await treeManifest(source))
    expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T110000Z')
    expect(second.targets[0]?.commands[0]).not.toContain('--inplace')
  })

  it('a restore under way holds its backup: the prune of a run meanwhile keeps it and says why, the restore finishes whole, and the next prune deletes it', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const before = await treeManifest(source)
    await writeFile(join(source, 'a.txt'), 'alpha changed\n')
    ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    // the restore (a job and state of its own beside the run's, as bbackup restore TARGET SNAPSHOT DEST has) waits just before rsync copies
    let open = (): void => undefined
    const gate = new Promise<void>((resolve) => {
      open = resolve
    })
    let reached = (): void => undefined
    const atRsync = new Promise<void>((resolve) => {
      reached = resolve
    })
    const gated = (t: Transport): Transport => ({ ...t, exec: (argv, o) => {
      if (argv[0] !== 'rsync') return t.exec(argv, o)
      reached()
      return ResultAsync.fromSafePromise(gate).andThen(() => t.exec(argv, o))
    } })
    const into = join(tmp.path, 'restored')
    const restoring = restore(rsyncJob({ source: into, targets: [target], state: join(tmp.path, 'restore-state') }), {
      from: gated(localTransport(target)), snapshot: '2026-11-23T100000Z', to: gated(localTransport(into)),
    })
    await atRsync
    // a cron run meanwhile, whose retention would delete it
    const keepOne = { ...job, retention: { target: { keepLast: 1 } } }
    expect(ok(await backup(keepOne, { now: at('2026-11-23T12:00:00Z') })).targets[0]).toMatchObject({ ok: true, pruned: ['2026-11-23T110000Z'] })
    const plan = ok(await prune(keepOne, { dryRun: true }))[0]
    expect(plan?.decisions.find((d) => d.name === '2026-11-23T100000Z')).toMatchObject({
      keep: true, reasons: expect.arrayContaining([expect.stringMatching(/^protected: a restore under way reads it \(pid \d+ on .+, since .+\)$/)]) as unknown,
    })
    open()
    expect(ok(await restoring).snapshot).toBe('2026-11-23T100000Z')
    expect(await treeManifest(into)).toEqual(before)
    // the restore is over: the next prune deletes it
    expect(ok(await prune(keepOne))[0]).toMatchObject({ deleted: ['2026-11-23T100000Z'] })
    expect((await readdir(target)).filter((n) => n.startsWith('2026'))).toEqual(['2026-11-23T120000Z'])
  })

  it('reports progress from rsync\'s own (--info=progress2), and with progress: false asks rsync for none', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    const shown: BackupEvent[] = []
    const first = ok(await backup(job, { now: at('2026-11-23T10:00:00Z'), onEvent: (e) => shown.push(e) }))
    expect(first.targets[0]?.commands[0]).toContain('--info=progress2')
    expect(shown.filter((e) => e.type === 'transfer-progress').length).toBeGreaterThan(0)

    shown.length = 0
    await writeFile(join(source, 'a.txt'), 'alpha changed\n')
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z'), onEvent: (e) => shown.push(e), progress: false }))
    expect(second.targets[0]).toMatchObject({ ok: true, mode: 'incremental', files: 1 })
    expect(second.targets[0]?.commands[0]).not.toContain('--info=progress2')
    expect(shown.map((e) => e.type)).toEqual(expect.arrayContaining(['transfer-started', 'transfer-finished']))
    expect(shown.filter((e) => e.type === 'transfer-progress')).toEqual([])
    expect(await treeManifest(join(target, '2026-11-23T110000Z'))).toEqual(await treeManifest(source))
  })

  it('keeps the previous backup unchanged when the source file is rewritten in place (scenario 10)', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const before = await treeManifest(join(target, '2026-11-23T100000Z'))
    // same size, same mtime: only content and mode differ
    const file = join(source, 'dir/b.txt')
    const { mtime } = await stat(file)
    await writeFile(file, 'BRAVO\n')
    await chmod(file, 0o600)
    const { utimes } = await import('node:fs/promises')
    await utimes(file, mtime, mtime)
    ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(await treeManifest(join(target, '2026-11-23T100000Z'))).toEqual(before)
    expect((await lstat(join(target, '2026-11-23T110000Z/dir/b.txt'))).mode & 0o777).toBe(0o600)
  })

  it('resumes into the partial copy after the backup process is killed (scenario 7)', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    await writeTree(source, Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`big/f${String(i).padStart(2, '0')}`, Buffer.alloc(400_000, i)])))

    // its own process group, so that what it leaves behind is stopped by it even if the test fails
    const child = spawnTs('fixtures/run-backup.ts', [source, target, state, '2000'], { detached: true })
    onTestFinished(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {
        // the group has ended
      }
    })
    const done = finished(child)
    await waitFor(async () => (await readdir(target)).some((n) => n.endsWith('.partial')) && (await readdir(join(target, (await readdir(target)).find((n) => n.endsWith('.partial'))!))).includes('big'), 20_000)
    await new Promise((r) => setTimeout(r, 700))
    child.kill('SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    // the orphaned rsync goes on copying into the partial: the lock stays held until it ends
    const orphaned = ok(await status(job)).lock
    expect(orphaned?.verdict).toMatchObject({ stale: false, reason: expect.stringMatching(new RegExp(`^pid ${child.pid} is not running, but what it started still runs and may still write: rsync \\(pid \\d+\\)`)) })
    expect((await backup(job, { now: at('2026-11-23T11:00:00Z') }))._unsafeUnwrapErr()).toMatchObject({ code: 'LOCK_HELD' })
    await waitFor(async () => ok(await status(job)).lock?.verdict.stale === true, 30_000)

    const partial = (await readdir(target)).find((n) => n.endsWith('.partial'))
    expect(partial).toBeDefined()
    expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T100000Z')
    const listed = ok(await list(job))[0]!.snapshots
    expect(listed.filter((s) => s.complete).map((s) => s.name)).toEqual(['2026-11-23T100000Z'])
    expect(listed.filter((s) => !s.complete)).toEqual([{ name: partial!.replace(/\.partial$/, ''), time: expect.any(Date), complete: false, health: 'ok', path: join(target, partial!) }])
    expect(ok(await status(job)).pending).toHaveLength(1)

    const events: BackupEvent[] = []
    const resumed = ok(await backup(job, { now: at('2026-11-23T12:00:00Z'), onEvent: (e) => events.push(e) }))
    expect(events).toContainEqual({ type: 'recovered', target, snapshot: partial!.replace(/\.partial$/, ''), action: 'resume' })
    expect(resumed.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T120000Z', mode: 'incremental', parent: '2026-11-23T100000Z' })
    expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z', '2026-11-23T120000Z'])
    expect(await treeManifest(join(target, '2026-11-23T120000Z'))).toEqual(await treeManifest(source))
    expect(ok(await status(job)).pending).toEqual([])
  })

  it('cancels cleanly on an abort signal (SIGINT): lock released, journal true, and the next run resumes', async () => {
    const job = rsyncJob({ source, targets: [target], state, driver: { extraArgs: ['--bwlimit=1000'] } })
    await writeTree(source, Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`big/f${i}`, Buffer.alloc(300_000, i)])))
    const controller = new AbortController()
    const running = backup(job, { now: at('2026-11-23T10:00:00Z'), signal: controller.signal })
    await waitFor(async () => (await readdir(target).catch((): string[] => [])).includes('2026-11-23T100000Z.partial'), 10_000)
    await new Promise((r) => setTimeout(r, 300))
    controller.abort()
    expect((await running)._unsafeUnwrapErr()).toMatchObject({ code: 'CANCELLED' })
    const after = ok(await status(job))
    expect(after.lock).toBeUndefined()
    expect(after.pending.map((p) => p.snapshot)).toEqual(['2026-11-23T100000Z'])
    expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z.partial'])
    const resumed = ok(await backup(rsyncJob({ source, targets: [target], state }), { now: at('2026-11-23T11:00:00Z') }))
    expect(resumed.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T110000Z', recovered: [{ snapshot: '2026-11-23T100000Z', action: 'resume' }] })
    expect(await treeManifest(join(target, '2026-11-23T110000Z'))).toEqual(await treeManifest(source))
  })

  it('marks vanished files as a warning, and refuses an exit-23 backup unless accepted (scenario 9)', async () => {
    await symlink('/nonexistent/target', join(source, 'dangling'))
    const strict = rsyncJob({ source, targets: [target], state, driver: { extraArgs: ['--copy-links'] } })
    const refused = ok(await backup(strict, { now: at('2026-11-23T10:00:00Z') }))
    expect(refused.failed).toBe(1)
    expect(refused.targets[0]?.error).toMatchObject({ code: 'TRANSFER_INCOMPLETE', details: { exitCode: 23 } })
    expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z.partial'])

    const accepting = rsyncJob({ source, targets: [target], state, driver: { extraArgs: ['--copy-links'], acceptPartial: true } })
    const accepted = ok(await backup(accepting, { now: at('2026-11-23T11:00:00Z') }))
    expect(accepted.targets[0]).toMatchObject({ ok: true, snapshot: '2026-11-23T110000Z' })
    expect(ok(await list(accepting))[0]!.snapshots).toEqual([expect.objectContaining({ name: '2026-11-23T110000Z', complete: true, health: 'errors' })])

    // exit 24: a file deleted after rsync listed it and before it was copied
    await rm(join(source, 'dangling'))
    await writeTree(source, Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`v/f${i}`, Buffer.alloc(300_000, i)])))
    const slow = rsyncJob({ source, targets: [target], state, driver: { extraArgs: ['--bwlimit=1500'] } })
    const running = backup(slow, { now: at('2026-11-23T12:00:00Z') })
    await waitFor(async () => (await readdir(target)).includes('2026-11-23T120000Z.partial'), 10_000)
    await new Promise((r) => setTimeout(r, 500))
    await rm(join(source, 'v/f9'))
    const vanished = ok(await running)
    expect(vanished.targets[0]).toMatchObject({ ok: true, warnings: [expect.stringContaining('exit 24')] })
    expect(ok(await list(slow))[0]!.snapshots.at(-1)).toMatchObject({ name: '2026-11-23T120000Z', health: 'warnings' })
  })

  it('prunes by policy, never the newest healthy backup, and a dry run deletes nothing', async () => {
    const job = rsyncJob({ source, targets: [target], state, retention: { target: { keepLast: 2 } } })
    for (const hour of ['10', '11', '12']) ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`), prune: false }))
    const planned = ok(await prune(job, { dryRun: true, now: at('2026-11-23T13:00:00Z') }))
    expect(planned[0]).toMatchObject({ deleted: ['2026-11-23T100000Z'], kept: 2 })
    expect(planned[0]?.commands).toEqual([['rm', '-rf', '--one-file-system', '--', join(target, '.bbackup/trash/2026-11-23T100000Z')]])
    expect(await backupsIn(target)).toHaveLength(3)
    const events: BackupEvent[] = []
    const report = ok(await backup(job, { now: at('2026-11-23T13:00:00Z'), onEvent: (e) => events.push(e) }))
    expect(report.targets[0]).toMatchObject({ pruned: ['2026-11-23T100000Z', '2026-11-23T110000Z'], kept: 2 })
    expect(await backupsIn(target)).toEqual(['2026-11-23T120000Z', '2026-11-23T130000Z'])
    expect(events.filter((e) => e.type === 'pruned').map((e) => e.type === 'pruned' && e.snapshot)).toEqual(['2026-11-23T100000Z', '2026-11-23T110000Z'])
    expect(await readdir(join(target, '.bbackup/trash'))).toEqual([])
  })

  it('refuses a second source\'s run, prune and status in a directory of another\'s backups (TARGET_IN_USE), and touches nothing there', async () => {
    // every host's /home backs up as a run of plain time names: alike in one directory, until a backup names its source
    const other = join(tmp.path, 'other', 'home')
    await writeTree(other, { 'a.txt': 'other\n' })
    const keepOne = { target: { keepLast: 1 } }
    const first = rsyncJob({ source, targets: [target], state: join(tmp.path, 'state-a'), retention: keepOne })
    const second = rsyncJob({ source: other, targets: [target], state: join(tmp.path, 'state-b'), retention: keepOne })
    ok(await backup(first, { now: at('2026-11-23T10:00:00Z') }))
    const record = JSON.parse(await readFile(join(target, '.bbackup/2026-11-23T100000Z.json'), 'utf8')) as { source?: string }
    expect(record.source).toBe(`${hostname()}:${source}`)

    for (const dryRun of [true, false]) {
      const refused = ok(await backup(second, { now: at('2026-11-23T11:00:00Z'), dryRun }))
      expect(refused.failed).toBe(1)
      expect(refused.targets[0]).toMatchObject({ ok: false, commands: [], error: { code: 'TARGET_IN_USE', message: expect.stringContaining(`holds the backups of ${hostname()}:${source}`) } })
      expect(refused.targets[0]?.error?.hint).toContain(join(tmp.path, `${hostname()}-home`))
    }
    const pruned = ok(await prune(second, { now: at('2026-11-23T12:00:00Z') }))
    expect(pruned[0]).toMatchObject({ deleted: [], error: { code: 'TARGET_IN_USE' } })
    const seen = ok(await status(second, { now: at('2026-11-23T12:00:00Z') }))
    expect(seen.targets[0]).toMatchObject({ reachable: true, backups: 0, error: { code: 'TARGET_IN_USE' } })
    // the first source's backup is as it was, and still its latest
    expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z'])
    expect(await treeManifest(join(target, '2026-11-23T100000Z'))).toEqual(await treeManifest(source))
    expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T100000Z')
    ok(await backup(first, { now: at('2026-11-23T13:00:00Z') }))
    expect(await backupsIn(target)).toEqual(['2026-11-23T130000Z'])

    // a prefix of its own shares the directory: its backups are named apart
    const prefixed = ok(await backup({ ...second, prefix: 'other.' }, { now: at('2026-11-23T14:00:00Z') }))
    expect(prefixed.targets[0]).toMatchObject({ ok: true, snapshot: 'other.2026-11-23T140000Z', mode: 'full' })
    expect(await backupsIn(target)).toEqual(['2026-11-23T130000Z'])
  })

  it('takes over a directory of its backups under an old name with takeOver, and a backup whose record names no source claims nothing', async () => {
    const keepOne = { target: { keepLast: 1 } }
    ok(await backup(rsyncJob({ source, targets: [target], state, retention: keepOne }), { now: at('2026-11-23T10:00:00Z') }))
    // the same data under a new path (a disk mounted elsewhere): refused until taken over, then linked against and pruned as its own
    const moved = join(tmp.path, 'moved')
    await rename(source, moved)
    const job = rsyncJob({ source: moved, targets: [target], state, retention: keepOne })
    expect(ok(await backup(job, { now: at('2026-11-23T11:00:00Z') })).targets[0]?.error?.code).toBe('TARGET_IN_USE')
    const taken = ok(await backup(job, { now: at('2026-11-23T12:00:00Z'), takeOver: true }))
    expect(taken.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: '2026-11-23T100000Z', files: 0, pruned: ['2026-11-23T100000Z'] })
    expect(ok(await backup(job, { now: at('2026-11-23T13:00:00Z') })).targets[0]).toMatchObject({ ok: true, parent: '2026-11-23T120000Z' })

    // records from before a backup named its source (and another tool's backups, which have none)
    const recordPath = join(target, '.bbackup/2026-11-23T130000Z.json')
    const { source: _named, ...unnamed } = JSON.parse(await readFile(recordPath, 'utf8')) as Record<string, unknown>
    await writeFile(recordPath, JSON.stringify(unnamed))
    await writeTree(join(tmp.path, 'later'), { 'a.txt': 'later\n' })
    const later = ok(await backup(rsyncJob({ source: join(tmp.path, 'later'), targets: [target], state: join(tmp.path, 'state-later') }), { now: at('2026-11-23T14:00:00Z') }))
    expect(later.targets[0]).toMatchObject({ ok: true, parent: '2026-11-23T130000Z' })
  })

  it('never prunes the backup the run just made: one made in the same second as the others sorts after them, one under a clock set back is kept, also by a prune on its own before the next run', async () => {
    const job = rsyncJob({ source, targets: [target], state, retention: { target: { keepLast: 1 } } })
    const second = at('2026-11-23T10:00:00Z')
    for (let i = 0; i < 3; i++) ok(await backup(job, { now: second }))
    // _1 pruned the plain name: the third is _2 (not the plain name again, which would sort before _1 and be pruned at once)
    expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z_2'])
    expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T100000Z_2')
    // the clock was set back an hour: the new backup sorts older than the last one, and stays
    const report = ok(await backup(job, { now: at('2026-11-23T09:00:00Z') }))
    expect(report.targets[0]?.pruned).toEqual([])
    expect(await backupsIn(target)).toEqual(['2026-11-23T090000Z', '2026-11-23T100000Z_2'])
    expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T090000Z')
    // a prune on its own before the next run keeps it too: latest says it is the newest made
    const alone = ok(await prune(job, { now: at('2026-11-23T10:30:00Z') }))
    expect(alone[0]?.deleted).toEqual([])
    expect(alone[0]?.decisions.find((d) => d.name === '2026-11-23T090000Z')?.reasons).toContainEqual(expect.stringContaining('latest points at it'))
    // once the next run has made a newer one, both go
    const next = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect([...(next.targets[0]?.pruned ?? [])].sort()).toEqual(['2026-11-23T090000Z', '2026-11-23T100000Z_2'])
    expect(await backupsIn(target)).toEqual([next.snapshot])
  })

  it('restores a whole backup or one path, and never overwrites', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const into = join(tmp.path, 'restored')
    const whole = ok(await restore(job, { from: job.targets[0]!, to: localTransport(into) }))
    expect(whole.snapshot).toBe('2026-11-23T100000Z')
    expect(await treeManifest(into)).toEqual(await treeManifest(source))
    expect((await restore(job, { from: job.targets[0]!, to: localTransport(into) }))._unsafeUnwrapErr()).toMatchObject({ code: 'ALREADY_EXISTS' })
    const one = join(tmp.path, 'one')
    ok(await restore(job, { from: job.targets[0]!, snapshot: '2026-11-23T100000Z', subpath: 'dir/deep', to: localTransport(one) }))
    expect(await readdir(one)).toEqual(['deep'])
    expect((await restore(job, { from: job.targets[0]!, subpath: '../etc', to: localTransport(join(tmp.path, 'x')) }))._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS' })
    expect((await restore(job, { from: job.targets[0]!, snapshot: 'nope', to: localTransport(join(tmp.path, 'y')) }))._unsafeUnwrapErr()).toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' })
  })

  it('a restore asked for its progress runs rsync with --info=progress2 and passes on what rsync says; one not asked runs without it', async () => {
    await writeFile(join(source, 'big.bin'), randomBytes(2 * 1024 * 1024))
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const seen: TransferProgress[] = []
    const asked = ok(await restore(job, { from: job.targets[0]!, to: localTransport(join(tmp.path, 'r1')), onProgress: (p) => seen.push(p) }))
    expect(asked.commands[0]).toContain('--info=progress2')
    expect(seen.length).toBeGreaterThan(0)
    for (const p of seen) {
      expect(p.percent).toBeGreaterThanOrEqual(0)
      expect(p.percent).toBeLessThanOrEqual(100)
      expect(p.rate).toMatch(/B\/s$/)
      expect(p.eta).toMatch(/^\d+:\d\d:\d\d$/)
    }
    expect(await treeManifest(join(tmp.path, 'r1'))).toEqual(await treeManifest(source))
    const quiet = ok(await restore(job, { from: job.targets[0]!, to: localTransport(join(tmp.path, 'r2')) }))
    expect(quiet.commands[0]).not.toContain('--info=progress2')
  })

  it('restores no path through a symbolic link in the backup (it would be read outside it, from the host as it is now); the link itself restores as a link (scenario 23)', async () => {
    const outside = join(tmp.path, 'outside')
    await writeTree(outside, { 'secret.txt': 'the host now\n' })
    await symlink(outside, join(source, 'link'))
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const through = join(tmp.path, 'through')
    const refused = (await restore(job, { from: job.targets[0]!, subpath: 'link/secret.txt', to: localTransport(through) }))._unsafeUnwrapErr()
    expect(refused).toMatchObject({ code: 'INVALID_OPTIONS', message: `link is a symbolic link in backup 2026-11-23T100000Z (to ${outside}): link/secret.txt through it is not in the backup`, hint: expect.stringContaining('--path link') })
    await expect(stat(through)).rejects.toThrow()
    const itself = join(tmp.path, 'itself')
    ok(await restore(job, { from: job.targets[0]!, subpath: 'link', to: localTransport(itself) }))
    expect(await readlink(join(itself, 'link'))).toBe(outside)
    expect((await restore(job, { from: job.targets[0]!, subpath: 'dir/nothere', to: localTransport(join(tmp.path, 'z')) }))._unsafeUnwrapErr()).toMatchObject({ code: 'NOT_FOUND', message: 'dir/nothere is not in backup 2026-11-23T100000Z' })
  })

  it('verifies a backup against the source by checksum', async () => {
    const job = rsyncJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(ok(await verify(job))).toEqual({ snapshot: '2026-11-23T100000Z', differences: [], differenceCount: 0, notes: ['content compared by checksum with the source as it is now'] })
    const file = join(target, '2026-11-23T100000Z/dir/b.txt')
    const { mtime } = await stat(file)
    await writeFile(file, 'brav0\n') // same size, same time: only a checksum sees it
    const { utimes } = await import('node:fs/promises')
    await utimes(file, mtime, mtime)
    expect(ok(await verify(job))).toMatchObject({ differenceCount: 1, differences: [expect.stringMatching(/^>fc.* dir\/b\.txt$/)], notes: [expect.anything(), expect.stringContaining("rsync's itemized change")] })
  })

  it('changes nothing in a dry run, not even a new target\'s directory, and returns the rsync command it would run', async () => {
    const job = rsyncJob({ source, targets: [target], state, retention: { target: { keepLast: 2 } } })
    const r = ok(await backup(job, { dryRun: true, now: at('2026-11-23T10:00:00Z') }))
    expect(r.targets[0]?.commands[0]).toEqual(expect.arrayContaining(['rsync', '--dry-run', `${source}/`, `${target}/2026-11-23T100000Z.partial/`]))
    // the first backup would make the target: the plan is a full backup, with nothing to prune
    expect(r.targets[0]).toMatchObject({ ok: true, mode: 'full', warnings: [], pruned: [] })
    await expect(stat(target)).rejects.toThrow()
    await expect(stat(state)).rejects.toThrow()
  })

  it('reports a missing source and a target whose parent is missing, and goes on with the other target', async () => {
    const missing = rsyncJob({ source: join(tmp.path, 'nope'), targets: [target], state })
    expect((await backup(missing))._unsafeUnwrapErr()).toMatchObject({ code: 'SOURCE_UNAVAILABLE' })
    const unmounted = join(tmp.path, 'mnt/usb/backups')
    const job = rsyncJob({ source, targets: [unmounted, target], state })
    const r = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(r.failed).toBe(1)
    expect(r.targets.map((t) => [t.target, t.ok, t.error?.code])).toEqual([[unmounted, false, 'TARGET_UNAVAILABLE'], [target, true, undefined]])
    await expect(stat(join(tmp.path, 'mnt'))).rejects.toThrow()
  })
})

describe.runIf(requireTools(['rsync', 'mkfs.ext4', 'mount'], { root: true }))('rsync driver on a full disk (scenario 8)', () => {
  it('fails with DISK_FULL, leaves the last complete backup untouched, and completes once space is freed', async () => {
    const fs = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    const tmp = await makeTempDir('enospc')
    try {
      const source = join(tmp.path, 'source')
      const target = join(fs.mountPoint, 'backups')
      await mkdir(target)
      await writeTree(source, { small: Buffer.alloc(2_000_000, 1) })
      const job = rsyncJob({ source, targets: [target], state: join(tmp.path, 'state') })
      ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
      const first = join(target, '2026-11-23T100000Z/small')
      const links = (await stat(first)).nlink

      await writeTree(source, { big: Buffer.alloc(50_000_000, 2) })
      const full = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
      expect(full.targets[0]?.error).toMatchObject({ code: 'DISK_FULL' })
      expect(await readlink(join(target, 'latest'))).toBe('2026-11-23T100000Z')
      expect((await stat(first)).nlink).toBe(links + 1) // the partial links to it; nothing was deleted
      expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z', '2026-11-23T110000Z.partial'])

      await rm(join(source, 'big'))
      const after = ok(await backup(job, { now: at('2026-11-23T12:00:00Z') }))
      expect(after.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: '2026-11-23T100000Z' })
      expect(await backupsIn(target)).toEqual(['2026-11-23T100000Z', '2026-11-23T120000Z'])
    } finally {
      await tmp.cleanup()
      await fs.cleanup()
    }
  })
})
