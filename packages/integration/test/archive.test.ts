import { randomBytes } from 'node:crypto'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { archive, backup, type ArchiveReport, type ArchiveSpec, type RetentionPolicy } from '@bb/core'
import { btrfsDriver } from '@bb/drivers/btrfs'
import { mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { at, btrfs, btrfsJob, content, exists, ok, runCli, show, waitFor } from './helpers.js'

const subvolumes = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => /\.\d{4}-/.test(n)).sort()

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount'], { root: true }))('archive: the backups on one disk copied to another (btrbk archive)', () => {
  let one: LoopFilesystem
  let two: LoopFilesystem
  let home: string
  let root: string
  /** the first backup disk: home's backups at its top, another host's root in hosts/host1/ */
  let disk: string
  /** the second disk, the archive */
  let offsite: string
  let state: string
  beforeEach(async () => {
    one = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    two = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    home = join(one.mountPoint, 'home')
    root = join(one.mountPoint, 'root')
    disk = join(one.mountPoint, 'disk')
    offsite = join(two.mountPoint, 'offsite')
    state = join(one.mountPoint, 'state')
    btrfs('subvolume', 'create', home)
    btrfs('subvolume', 'create', root)
    // a subvolume of its own (as btrbk advises for targets): the backups in it are received, not snapshots of it
    btrfs('subvolume', 'create', disk)
    await mkdir(join(disk, 'hosts/host1'), { recursive: true })
    await mkdir(offsite)
    await writeTree(home, { 'a.txt': 'alpha\n', 'big.bin': randomBytes(400_000) })
    await writeTree(root, { 'etc/hostname': 'host1\n' })
  })
  afterEach(async () => {
    await two.cleanup()
    await one.cleanup()
  })

  const homeJob = (targets: readonly string[] = [disk]) => btrfsJob({ source: home, targets, state: join(state, 'home') })
  const rootJob = () => btrfsJob({ source: root, targets: [join(disk, 'hosts/host1')], state: join(state, 'root'), prefix: 'root.' })
  const spec = (retention?: RetentionPolicy): ArchiveSpec => ({
    driver: btrfsDriver({ backupsAtSource: true }),
    source: localTransport(disk),
    target: localTransport(offsite),
    state: { transport: localTransport(state), directory: join(state, 'archive') },
    ...(retention === undefined ? {} : { retention }),
  })
  const family = (report: ArchiveReport, name: string) => {
    const f = report.families.find((x) => `${x.directory === '' ? '' : `${x.directory}/`}${x.prefix}` === name)
    if (f === undefined) throw new Error(`no family ${name} in ${JSON.stringify(report.families.map((x) => [x.directory, x.prefix]))}`)
    return f.report?.targets[0]
  }

  it('copies what the second disk lacks, oldest first and incrementally, mirroring subdirectories; the copies are the same backups', async () => {
    for (const [i, time] of ['10', '11', '12'].entries()) {
      await writeFile(join(home, 'a.txt'), `change ${i}\n`)
      expect(ok(await backup(homeJob(), { now: at(`2026-11-23T${time}:00:00Z`) })).failed).toBe(0)
    }
    expect(ok(await backup(rootJob(), { now: at('2026-11-23T10:30:00Z') })).failed).toBe(0)
    // named as a backup but a plain directory (another tool's): left alone, and said so
    await mkdir(join(disk, 'home.2020-01-01T000000Z'))

    const first = ok(await archive(spec()))
    expect(first.failed).toBe(0)
    expect(first.families.map((f) => [f.directory, f.prefix])).toEqual([['', 'home.'], ['hosts/host1', 'root.']])
    expect(family(first, 'home.')?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([
      ['home.2026-11-23T100000Z', 'full', undefined],
      ['home.2026-11-23T110000Z', 'incremental', 'home.2026-11-23T100000Z'],
      ['home.2026-11-23T120000Z', 'incremental', 'home.2026-11-23T110000Z'],
    ])
    expect(family(first, 'hosts/host1/root.')?.sent.map((s) => s.mode)).toEqual(['full'])
    expect(first.notes.join('\n')).toMatch(/1 named as backups but not read-only subvolumes \(home\.2020-01-01T000000Z\)/)
    expect(await subvolumes(offsite)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])
    expect(await exists(join(offsite, 'home.2020-01-01T000000Z'))).toBe(false)
    for (const name of await subvolumes(offsite)) {
      // a copy of a copy: read-only, received from the source's snapshot itself, holding the same data
      const copy = show(join(offsite, name))
      expect(copy.readOnly).toBe(true)
      expect(copy.receivedUuid).toBe(show(join(home, '.snapshots', name)).uuid)
      expect(await content(join(offsite, name))).toEqual(await content(join(home, '.snapshots', name)))
    }
    expect(show(join(offsite, 'home.2026-11-23T110000Z')).parentUuid).toBe(show(join(offsite, 'home.2026-11-23T100000Z')).uuid)
    expect(show(join(offsite, 'hosts/host1/root.2026-11-23T103000Z')).receivedUuid).toBe(show(join(root, '.snapshots/root.2026-11-23T103000Z')).uuid)

    const again = ok(await archive(spec()))
    expect(again.families.map((f) => f.report?.targets[0]?.sent.length)).toEqual([0, 0])

    await writeFile(join(home, 'a.txt'), 'change 3\n')
    ok(await backup(homeJob(), { now: at('2026-11-23T13:00:00Z') }))
    const third = ok(await archive(spec()))
    expect(family(third, 'home.')?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([['home.2026-11-23T130000Z', 'incremental', 'home.2026-11-23T120000Z']])
    expect(family(third, 'home.')?.bytes).toBeLessThan(100_000)

    // the archive disk can take the first one's place: the job's next backup there is incremental
    await writeFile(join(home, 'a.txt'), 'change 4\n')
    const moved = ok(await backup(homeJob([offsite]), { now: at('2026-11-23T14:00:00Z') }))
    expect(moved.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T130000Z' })
    // the source disk was only read
    expect(await subvolumes(disk)).toEqual(['home.2020-01-01T000000Z', 'home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z', 'home.2026-11-23T130000Z'])
  })

  it("a policy picks what a new archive gets and prunes it later; the source disk keeps everything", async () => {
    for (const time of ['10', '11', '12']) ok(await backup(homeJob(), { now: at(`2026-11-23T${time}:00:00Z`) }))
    const first = ok(await archive(spec({ keepLast: 2 }), { now: at('2026-11-23T12:30:00Z') }))
    expect(family(first, 'home.')?.sent.map((s) => [s.snapshot, s.mode])).toEqual([['home.2026-11-23T110000Z', 'full'], ['home.2026-11-23T120000Z', 'incremental']])
    ok(await backup(homeJob(), { now: at('2026-11-23T13:00:00Z') }))
    const second = ok(await archive(spec({ keepLast: 2 }), { now: at('2026-11-23T13:30:00Z') }))
    expect(family(second, 'home.')).toMatchObject({ pruned: ['home.2026-11-23T110000Z'] })
    expect(await subvolumes(offsite)).toEqual(['home.2026-11-23T120000Z', 'home.2026-11-23T130000Z'])
    expect(await subvolumes(disk)).toHaveLength(4)
    // maxDelete holds at the archive too (an archive prunes a family it sends to): keeping 1 of 4 deletes 3, refused at 2, done with 'all'
    ok(await backup(homeJob(), { now: at('2026-11-23T14:00:00Z') }))
    ok(await archive(spec({ keepLast: 3 }), { now: at('2026-11-23T14:05:00Z') }))
    ok(await backup(homeJob(), { now: at('2026-11-23T14:10:00Z') }))
    const refused = ok(await archive({ ...spec({ keepLast: 1 }), maxDelete: 2 }, { now: at('2026-11-23T14:15:00Z') }))
    expect(family(refused, 'home.')).toMatchObject({ ok: true, pruned: [], pruneError: { code: 'RETENTION_WOULD_DELETE_MANY', details: { deletions: 3, maxDelete: 2 } } })
    expect(await subvolumes(offsite)).toEqual(['home.2026-11-23T120000Z', 'home.2026-11-23T130000Z', 'home.2026-11-23T140000Z', 'home.2026-11-23T141000Z'])
    ok(await backup(homeJob(), { now: at('2026-11-23T14:20:00Z') }))
    const allowed = ok(await archive({ ...spec({ keepLast: 1 }), maxDelete: 'all' }, { now: at('2026-11-23T14:25:00Z') }))
    expect(family(allowed, 'home.')?.pruned).toHaveLength(4)
    expect(await subvolumes(offsite)).toEqual(['home.2026-11-23T142000Z'])
  })

  it('a stray subvolume where a copy would go stops that family alone and is kept; a dry run makes nothing', async () => {
    ok(await backup(homeJob(), { now: at('2026-11-23T10:00:00Z') }))
    ok(await backup(rootJob(), { now: at('2026-11-23T10:00:00Z') }))
    const dry = ok(await archive(spec(), { dryRun: true }))
    expect(dry.dryRun).toBe(true)
    expect(family(dry, 'home.')?.sent.map((s) => s.snapshot)).toEqual(['home.2026-11-23T100000Z'])
    // hosts/host1/ is not made in a dry run: what it would get is planned all the same
    expect(family(dry, 'hosts/host1/root.')).toMatchObject({ ok: true, sent: [{ snapshot: 'root.2026-11-23T100000Z', mode: 'full' }] })
    expect(await readdir(offsite)).toEqual([])
    expect(await exists(join(state, 'archive'))).toBe(false)

    btrfs('subvolume', 'create', join(offsite, 'home.2026-11-23T100000Z'))
    await writeFile(join(offsite, 'home.2026-11-23T100000Z/mine.txt'), 'not a backup\n')
    const r = ok(await archive(spec()))
    expect(r.failed).toBe(1)
    expect(family(r, 'home.')).toMatchObject({ ok: false, error: { code: 'STRAY_SUBVOLUME' } })
    expect(family(r, 'hosts/host1/root.')).toMatchObject({ ok: true, sent: [{ snapshot: 'root.2026-11-23T100000Z', mode: 'full' }] })
    expect(await content(join(offsite, 'home.2026-11-23T100000Z'))).toMatchObject({ 'mine.txt': expect.any(String) })
  })

  it('refuses a target inside the source, and a source that is not on btrfs', async () => {
    const nested = await archive({ ...spec(), target: localTransport(join(disk, 'archive')) })
    expect(nested._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringMatching(/target is inside its source/) })
    const tmp = join(state, 'x')
    await mkdir(tmp, { recursive: true })
    const ext = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    try {
      const notBtrfs = await archive({ ...spec(), source: localTransport(ext.mountPoint) })
      expect(notBtrfs._unsafeUnwrapErr()).toMatchObject({ code: 'SOURCE_NOT_SUBVOLUME', message: expect.stringMatching(/not on a btrfs filesystem \(it is ext/) })
      const toExt = await archive({ ...spec(), target: localTransport(ext.mountPoint) })
      expect(toExt._unsafeUnwrapErr()).toMatchObject({ code: 'TARGET_NOT_BTRFS', hint: expect.not.stringMatching(/rsync/) })
    } finally {
      await ext.cleanup()
    }
  })

  it('an archive cancelled mid-send leaves no copy behind that is not whole; the next one finishes it', async () => {
    await writeTree(home, { 'more.bin': randomBytes(20_000_000) })
    ok(await backup(homeJob(), { now: at('2026-11-23T10:00:00Z') }))
    ok(await backup(rootJob(), { now: at('2026-11-23T10:00:00Z') }))
    const controller = new AbortController()
    // at 2 MB/s the send takes ten seconds: it is cancelled once its receive has begun
    const running = archive({ ...spec(), driver: btrfsDriver({ backupsAtSource: true, rateLimit: 2_000_000 }) }, { signal: controller.signal })
    await waitFor(() => exists(join(offsite, 'home.2026-11-23T100000Z')), 30_000)
    controller.abort()
    const cut = await running
    const report = ok(cut)
    expect(report.families[0]?.error?.code).toBe('CANCELLED')
    expect(report.families[1]?.skipped).toMatch(/cancelled|stopped/)
    expect(await exists(join(offsite, 'hosts/host1'))).toBe(false)
    // nothing half-received is left as if it were a backup
    for (const name of await subvolumes(offsite)) expect(show(join(offsite, name)).receivedUuid).toBeDefined()

    const next = ok(await archive(spec()))
    expect(next.failed).toBe(0)
    expect(await subvolumes(offsite)).toEqual(['home.2026-11-23T100000Z'])
    expect(await content(join(offsite, 'home.2026-11-23T100000Z'))).toEqual(await content(join(home, '.snapshots/home.2026-11-23T100000Z')))
    expect(await subvolumes(join(offsite, 'hosts/host1'))).toEqual(['root.2026-11-23T100000Z'])
  }, 60_000)

  it('bbackup archive: the report, a dry run, --json, and a bad policy', async () => {
    ok(await backup(homeJob(), { now: at('2026-11-23T10:00:00Z') }))
    ok(await backup(homeJob(), { now: at('2026-11-23T11:00:00Z') }))
    const st = ['--state-dir', join(state, 'cli')]
    const dry = await runCli(['archive', disk, offsite, '-n', ...st], one.mountPoint)
    expect(dry.code).toBe(0)
    expect(dry.stdout).toContain('dry run: ')
    expect(dry.stdout).toMatch(/home\.\*: 2 backups to send to .*offsite\n {4}home\.2026-11-23T100000Z full\n {4}home\.2026-11-23T110000Z incremental from home\.2026-11-23T100000Z/)
    expect(dry.stdout).toMatch(/\$ btrfs send -q .* -p .*home\.2026-11-23T100000Z .*home\.2026-11-23T110000Z \| btrfs receive -e /)
    expect(await readdir(offsite)).toEqual([])

    const real = await runCli(['archive', disk, offsite, ...st], one.mountPoint)
    expect(real.code).toBe(0)
    expect(real.stdout).toMatch(/→ .*offsite: 1 family of backups, 2 sent/)
    const json = await runCli(['archive', disk, offsite, '--json', ...st], one.mountPoint)
    expect(json.code).toBe(0)
    expect(JSON.parse(json.stdout)).toMatchObject({ failed: 0, families: [{ prefix: 'home.', report: { targets: [{ sent: [] }] } }] })

    // what --exclude leaves out is said, not archived
    ok(await backup(rootJob(), { now: at('2026-11-23T10:00:00Z') }))
    const some = await runCli(['archive', disk, offsite, '--exclude', 'hosts/*', ...st], one.mountPoint)
    expect(some.code).toBe(0)
    expect(some.stdout).toMatch(/1 family of backups, 0 sent/)
    // why nothing went: the engine's own words, as run prints them
    expect(some.stdout).toMatch(/home\.\*: nothing sent to .*offsite\n {4}warning: the target already holds the newest snapshot/)
    expect(some.stdout).toMatch(/note: .*disk\/hosts\/host1: left out \(--exclude hosts\/\*\)/)
    const other = await runCli(['archive', disk, offsite, '--exclude', 'home.*', '--json', ...st], one.mountPoint)
    expect(JSON.parse(other.stdout)).toMatchObject({ families: [{ directory: 'hosts/host1', prefix: 'root.' }], notes: [expect.stringMatching(/home\.\*: left out \(--exclude home\.\*\)/)] })
    expect(await subvolumes(join(offsite, 'hosts/host1'))).toEqual(['root.2026-11-23T100000Z'])

    const bad = await runCli(['archive', disk, offsite, '--keep-backups', '7x', ...st], one.mountPoint)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/retention "7x"/)
    expect(await runCli(['archive', disk, offsite, '--max-delete', '0', ...st], one.mountPoint)).toMatchObject({ code: 2, stderr: expect.stringContaining('max-delete "0" is not a whole number of at least 1, nor all') })
    const nested = await runCli(['archive', disk, join(disk, 'copy'), ...st], one.mountPoint)
    expect(nested.code).toBe(2)
    expect(nested.stderr).toMatch(/inside its source/)
  })
})
