import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, open, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { PassThrough } from 'node:stream'
import { ResultAsync } from 'neverthrow'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { backupVolume, distrustRevisions, expireVolume, initVolume, parseSchedule, restoreRevision, verifyVolume, volumeStatus } from '@bb/drivers/block'
import { volumeHealthOf, type Transport } from '@bb/core'
import { mountLoopFilesystem, requireTools, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { at, exclusiveBytes, finished, ok, patch, sameBytes, spawnTs, written } from './helpers.js'

const MiB = 1024 * 1024
const allocatedBytes = async (path: string): Promise<number> => (await stat(path)).blocks * 512

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'cp', 'fallocate', 'cmp', 'filefrag', 'losetup', 'mkfs.ext4'], { root: true }))('block-image driver against a real btrfs target', () => {
  let fs: LoopFilesystem
  let image: string
  let dir: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 1024 })
    image = join(fs.mountPoint, 'images/vm1.img')
    dir = join(fs.mountPoint, 'backy/vm1')
    execFileSync('mkdir', ['-p', join(fs.mountPoint, 'images')])
    // 96 MiB: 64 MiB of data, then 32 MiB never written (a hole)
    const h = await open(image, 'w')
    for (let i = 0; i < 16; i++) await h.write(randomBytes(4 * MiB), 0, 4 * MiB, i * 4 * MiB)
    await h.truncate(96 * MiB)
    await h.close()
  })
  afterEach(async () => {
    await fs.cleanup()
  })

  it('backs up in full, then only the chunks scattered 4 KiB writes touched; each revision is byte-identical to the source', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    expect(first).toMatchObject({ parent: null, size: 96 * MiB, trust: 'trusted', consistency: 'reflink', tags: ['daily', 'weekly', 'monthly'] })
    expect(first.stats).toMatchObject({ chunks: 24, chunksWritten: 16, zeroChunks: 8, bytesWritten: 64 * MiB })
    expect(sameBytes(join(dir, `${first.uuid}.img`), image)).toBe(true)
    // the never-written tail stays a hole in the revision
    expect(await allocatedBytes(join(dir, `${first.uuid}.img`))).toBeLessThanOrEqual(65 * MiB)

    // five 4 KiB writes in five different chunks
    for (const chunk of [0, 3, 7, 12, 15]) await patch(image, chunk * 4 * MiB + 123 * 4096, randomBytes(4096))
    // a transport handed over for a source on this host changes nothing: it is read here, in place
    const second = written(ok(await backupVolume({ at: volume, sourceHost: localTransport(dirname(image)), now: at('2026-11-24T10:00:00Z') })))
    expect(second.stats.bytesTransferred).toBeUndefined()
    expect(second.parent).toBe(first.uuid)
    expect(second.tags).toContain('daily') // and weekly when a weekly slot (the volume's random spread) fell in between
    expect(second.stats).toMatchObject({ chunksWritten: 5, bytesWritten: 5 * 4 * MiB })
    // the copy the first revision was read from was kept: the extents it still shares with the image were not read
    expect(second.stats).toMatchObject({ bytesRead: 5 * 4 * MiB, bytesUnchanged: 19 * 4 * MiB })
    expect(sameBytes(join(dir, `${second.uuid}.img`), image)).toBe(true)
    const bases = (await readdir(dirname(image))).filter((n) => n.includes('.bbackup-'))
    expect(bases).toEqual([expect.stringMatching(new RegExp(`^\\.vm1\\.img\\.bbackup-[0-9a-f]{8}-base-${second.uuid}$`))])
    expect(sameBytes(join(dir, `${first.uuid}.img`), image)).toBe(false)
    // the second revision costs the changed chunks on disk, not the image
    const exclusive = exclusiveBytes(join(dir, `${second.uuid}.img`))
    expect(exclusive).toBeGreaterThanOrEqual(5 * 4 * MiB - 64 * 1024)
    expect(exclusive).toBeLessThanOrEqual(6 * 4 * MiB)
    expect(await readlink(join(dir, 'latest'))).toBe(`${second.uuid}.img`)

    // restore (checking every chunk on the way) gives the source's bytes, sparse
    const restored = join(fs.mountPoint, 'restored.img')
    ok(await restoreRevision({ at: volume, revision: 'latest', destination: restored }))
    expect(sameBytes(restored, image)).toBe(true)
    expect(await allocatedBytes(restored)).toBeLessThanOrEqual(65 * MiB)
    // and it never overwrites a file
    expect(await restoreRevision({ at: volume, revision: 'latest', destination: restored })).toMatchObject({ error: { code: 'ALREADY_EXISTS' } })
  })

  it('chunks that became zero become holes again; a chunk that became data again is written', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, chunkSize: 1 * MiB }))
    written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    await patch(image, 8 * MiB, Buffer.alloc(8 * MiB)) // 8 chunks of data zeroed
    await patch(image, 80 * MiB, randomBytes(MiB)) // one chunk of the hole gets data
    const second = written(ok(await backupVolume({ at: volume, now: at('2026-11-24T10:00:00Z') })))
    expect(second.stats).toMatchObject({ chunksWritten: 1, chunksPunched: 8, bytesWritten: MiB })
    expect(sameBytes(join(dir, `${second.uuid}.img`), image)).toBe(true)
    expect(await allocatedBytes(join(dir, `${second.uuid}.img`))).toBeLessThanOrEqual(58 * MiB)
  })

  it('reads what the extents cannot vouch for: a kept copy written to behind its back, or gone; each revision still equals the source', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const [base] = (await readdir(dirname(image))).filter((n) => n.endsWith(`-base-${first.uuid}`))
    expect(base).toBeDefined()
    // root writes into the kept copy (bbackup made it read-only) at chunk 2, which the image itself keeps as it was
    await chmod(join(dirname(image), base as string), 0o600)
    await patch(join(dirname(image), base as string), 2 * 4 * MiB + 4096, randomBytes(4096))
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    const second = written(ok(await backupVolume({ at: volume, now: at('2026-11-24T10:00:00Z') })))
    // chunk 2 no longer shares its blocks with the copy, so it was read: unchanged, not written
    expect(second.stats).toMatchObject({ bytesRead: 2 * 4 * MiB, chunksWritten: 1 })
    expect(sameBytes(join(dir, `${second.uuid}.img`), image)).toBe(true)
    // without the kept copy everything with data is read, and the result is the same
    for (const n of (await readdir(dirname(image))).filter((n) => n.includes('-base-'))) execFileSync('rm', ['-f', join(dirname(image), n)])
    await patch(image, 9 * 4 * MiB, randomBytes(4096))
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T11:00:00Z') })))
    expect(third.stats.bytesUnchanged).toBeUndefined()
    expect(third.stats).toMatchObject({ bytesRead: 64 * MiB, chunksWritten: 1 })
    expect(sameBytes(join(dir, `${third.uuid}.img`), image)).toBe(true)
    ok(await verifyVolume({ at: volume, revisions: ['all'] }))
  })

  it('an image grown or shrunk since the last revision reads only the chunk its old or new end cuts, and what changed', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    // grown from 96 to 98 MiB (qemu-img resize), data written in the new part and in chunk 3
    await patch(image, 3 * 4 * MiB, randomBytes(4096))
    await patch(image, 97 * MiB, randomBytes(MiB))
    const grown = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T10:00:00Z') })))
    expect(grown.size).toBe(98 * MiB)
    // the 24 old chunks but chunk 3 held the parent's blocks; chunk 24 (96-98 MiB) is new
    expect(grown.stats).toMatchObject({ bytesUnchanged: 23 * 4 * MiB, chunksWritten: 2 })
    expect(grown.stats.bytesRead).toBeLessThanOrEqual(4 * MiB + 2 * MiB)
    expect(sameBytes(join(dir, `${grown.uuid}.img`), image)).toBe(true)
    // shrunk to 62 MiB, into the data: chunk 15 (60-62 MiB) is cut and read, chunk 5 changed
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    execFileSync('truncate', ['-s', String(62 * MiB), image])
    const shrunk = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T11:00:00Z') })))
    expect(shrunk.size).toBe(62 * MiB)
    expect(shrunk.stats).toMatchObject({ bytesUnchanged: 14 * 4 * MiB, bytesRead: 4 * MiB + 2 * MiB, chunksWritten: 2 })
    expect(sameBytes(join(dir, `${shrunk.uuid}.img`), image)).toBe(true)
    ok(await verifyVolume({ at: volume, revisions: ['all'] }))
  })

  it('backs up only when a tag of the schedule is due, unless forced', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    // no spread: every slot at 00:00 UTC, none between the runs below (a random one would put one there now and then)
    const config = join(dir, 'volume.json')
    await writeFile(config, JSON.stringify({ ...JSON.parse(await readFile(config, 'utf8')) as object, spreadSeconds: 0 }))
    written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const again = ok(await backupVolume({ at: volume, now: at('2026-11-23T10:05:00Z') }))
    expect(again).toMatchObject({ skipped: true })
    const forced = written(ok(await backupVolume({ at: volume, force: true, tags: ['manual:before-upgrade'], now: at('2026-11-23T10:06:00Z') })))
    expect(forced.tags).toEqual(['daily', 'manual:before-upgrade'])
    expect(await backupVolume({ at: volume, tags: ['hourly'] })).toMatchObject({ error: { code: 'INVALID_OPTIONS' } })
    const status = ok(await volumeStatus({ at: volume, now: at('2026-11-23T10:07:00Z') }))
    expect(status.summary).toMatchObject({ revisions: 2, dueNow: [], distrusted: 0 })
  })

  it('a revision named by a clock that was ahead serves no schedule slot: the runs once the clock is right back up, each from the newest made, and latest and the status are theirs', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    // no spread: every slot at 00:00 UTC; the last run is made the same UTC day as the status (a slot between them would make a tag due)
    const config = join(dir, 'volume.json')
    await writeFile(config, JSON.stringify({ ...JSON.parse(await readFile(config, 'utf8')) as object, spreadSeconds: 0 }))
    const real = Date.now()
    const sinceMidnight = real % 86_400_000
    const clock = (ms: number) => (): Date => new Date(ms)
    const ahead = written(ok(await backupVolume({ at: volume, now: clock(real + 200 * 86_400_000) })))
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    // without the clock's fix this run was skipped (the revision dated ahead held every slot) until that date
    const made = written(ok(await backupVolume({ at: volume, now: clock(real - 2 * 86_400_000) })))
    expect(made.parent).toBe(ahead.uuid)
    await patch(image, 9 * 4 * MiB, randomBytes(4096))
    const next = written(ok(await backupVolume({ at: volume, now: clock(real - Math.min(3_600_000, Math.floor(sinceMidnight / 2))) })))
    expect(next.parent).toBe(made.uuid)
    expect(next.stats.chunksWritten).toBe(1)
    const status = ok(await volumeStatus({ at: volume, now: clock(real) }))
    expect(status.revisions.map((r) => r.uuid)).toEqual([ahead.uuid, made.uuid, next.uuid])
    expect(status.summary).toMatchObject({ newest: next.timestamp, ahead: [ahead.uuid], dueNow: [] })
    expect(volumeHealthOf({ at: dir, newestAgeSeconds: 3600, distrusted: 0, ahead: status.summary.ahead }).reasons).toEqual([
      `${dir}: a revision is dated ahead of this host's clock (${ahead.uuid}): the clock was ahead when it was made, or is behind now (check it: timedatectl); the age checked is that of the newest revision made before now`,
    ])
    const restored = join(fs.mountPoint, 'restored.img')
    ok(await restoreRevision({ at: volume, revision: 'latest', destination: restored }))
    expect(sameBytes(restored, image)).toBe(true)
  })

  it('a revision dated by a clock that was behind: an expiry on its own keeps it (latest points at it), and the next revision made lets it go', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, schedule: ok(parseSchedule('daily=1d:1')) }))
    written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    // the clock set back two days: the revision of the newest data is dated before the one made before it
    const behind = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-21T10:00:00Z') })))
    const expired = ok(await expireVolume({ at: volume, now: at('2026-11-23T11:00:00Z') }))
    expect(expired.removed).toEqual([])
    expect(expired.kept).toContainEqual({ uuid: behind.uuid, why: expect.stringContaining('latest points at it') })
    // a later run, the clock right: its revision is the newest, and the schedule lets the others go
    await patch(image, 9 * 4 * MiB, randomBytes(4096))
    const next = written(ok(await backupVolume({ at: volume, now: at('2026-11-26T10:00:00Z') })))
    expect(ok(await volumeStatus({ at: volume, now: at('2026-11-26T10:00:00Z') })).revisions.map((r) => r.uuid)).toEqual([next.uuid])
    expect(sameBytes(join(dir, `${next.uuid}.img`), image)).toBe(true)
  })

  it('scenario 13: a run killed while writing leaves no revision; the next run removes its leftovers and builds from the last good one', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, chunkSize: 1 * MiB }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    await patch(image, 0, randomBytes(64 * MiB))
    const killed = await finished(spawnTs('fixtures/block-backup.ts', [dir], { env: { BBACKUP_TEST_CRASH_AT: 'block-half-written' } }))
    expect(killed.signal).toBe('SIGKILL')
    // nothing of it counts: no metadata, latest untouched, its image still partial
    const left = await readdir(dir)
    expect(left.filter((n) => n.endsWith('.rev'))).toEqual([`${first.uuid}.rev`])
    expect(left.filter((n) => n.endsWith('.img.partial'))).toHaveLength(1)
    expect(await readlink(join(dir, 'latest'))).toBe(`${first.uuid}.img`)
    expect(ok(await volumeStatus({ at: volume })).incomplete).toHaveLength(1)
    // the point-in-time copy of the source it made is still beside the source (and the one the first revision was read from, kept)
    expect((await readdir(join(fs.mountPoint, 'images'))).filter((n) => !n.includes('-base-')).length).toBe(2)

    const next = ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T11:00:00Z') }))
    expect(next.removedIncomplete).toHaveLength(2)
    expect(written(next)).toMatchObject({ parent: first.uuid })
    expect((await readdir(join(fs.mountPoint, 'images'))).filter((n) => !n.endsWith(`-base-${written(next).uuid}`))).toEqual(['vm1.img'])
    expect((await readdir(dir)).filter((n) => n.includes('partial'))).toEqual([])
    expect(sameBytes(join(dir, `${written(next).uuid}.img`), image)).toBe(true)
    const verified = ok(await verifyVolume({ at: volume }))
    expect(verified.ok).toBe(true)
    expect(verified.checks.map((c) => c.trust)).toEqual(['verified', 'verified'])
  })
  it('scenario 14: a flipped byte in a stored revision is found by verify, which distrusts it; restore refuses it; the next backup rewrites the chunk', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    const second = written(ok(await backupVolume({ at: volume, now: at('2026-11-24T10:00:00Z') })))
    // bit rot in chunk 9 of the newest revision (revisions are read-only files: the disk does not care)
    const stored = join(dir, `${second.uuid}.img`)
    await chmod(stored, 0o640)
    const offset = 9 * 4 * MiB + 777
    const h = await open(stored, 'r+')
    const byte = Buffer.alloc(1)
    await h.read(byte, 0, 1, offset)
    await h.write(Buffer.from([byte[0]! ^ 0x01]), 0, 1, offset)
    await h.close()

    // streamed in order (restore to stdout): the chunks read ahead of the damaged one are let go, and the stream stops before it
    const stream = new PassThrough()
    const received: Buffer[] = []
    stream.on('data', (b: Buffer) => received.push(b))
    expect(await restoreRevision({ at: volume, revision: second.uuid, destination: '-', output: stream })).toMatchObject({
      error: { code: 'CORRUPT_DATA', message: `revision ${second.uuid} is damaged at byte ${9 * 4 * MiB}: the chunk there does not match its hash` },
    })
    expect(Buffer.concat(received).length).toBeLessThanOrEqual(9 * 4 * MiB)

    const report = ok(await verifyVolume({ at: volume }))
    expect(report.ok).toBe(false)
    expect(report.checks).toEqual([
      expect.objectContaining({ uuid: first.uuid, badChunks: 0, trust: 'verified' }),
      expect.objectContaining({ uuid: second.uuid, badChunks: 1, badOffsets: [9 * 4 * MiB], trust: 'distrusted' }),
    ])
    const status = ok(await volumeStatus({ at: volume }))
    expect(status.revisions.map((r) => r.trust)).toEqual(['verified', 'distrusted'])
    expect(status.revisions[1]?.verification?.badOffsets).toEqual([9 * 4 * MiB])
    expect(status.distrusted).toEqual([{ uuid: second.uuid, reason: `a verify found 1 bad chunk, at byte ${9 * 4 * MiB}` }])

    const refused = await restoreRevision({ at: volume, revision: second.uuid.slice(0, 8), destination: join(fs.mountPoint, 'r.img') })
    expect(refused).toMatchObject({ error: { code: 'REVISION_DISTRUSTED', message: expect.stringContaining(String(9 * 4 * MiB)) as unknown } })
    expect(await readdir(fs.mountPoint)).not.toContain('r.img')

    // the next backup is not built on the damaged revision: it comes from the verified one and carries the good chunk
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T11:00:00Z') })))
    expect(third.parent).toBe(first.uuid)
    expect(third.stats.chunksWritten).toBe(1)
    expect(sameBytes(join(dir, `${third.uuid}.img`), image)).toBe(true)
    // the other revisions are unaffected
    expect(ok(await verifyVolume({ at: volume, revisions: [first.uuid, 'latest'] })).ok).toBe(true)
  })

  it('a revision mounted read-write after its backup is checked before it is a parent: damaged, it is distrusted and the next revision comes from an intact one', async () => {
    // the source is a filesystem, as a VM's disk is
    execFileSync('mkfs.ext4', ['-q', '-F', image])
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const second = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T11:00:00Z') })))
    // an admin looks into the newest revision: a read-write mount writes to it (the superblock, the journal, the file)
    const look = join(fs.mountPoint, 'look')
    execFileSync('mkdir', [look])
    execFileSync('mount', ['-o', 'loop', join(dir, `${second.uuid}.img`), look])
    try {
      await writeFile(join(look, 'note'), 'looked here')
    } finally {
      execFileSync('umount', [look])
    }
    expect(sameBytes(join(dir, `${second.uuid}.img`), image)).toBe(false)
    expect(ok(await volumeStatus({ at: volume })).changedSinceMade).toEqual([second.uuid])

    // a reflink copy of it would carry those bytes under hashes that say otherwise
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T12:00:00Z') })))
    expect(third.parent).toBe(first.uuid)
    expect(third.warnings).toEqual([expect.stringContaining(`the image of revision ${second.uuid} was changed after it was made and is damaged`) as unknown])
    expect(sameBytes(join(dir, `${third.uuid}.img`), image)).toBe(true)
    let status = ok(await volumeStatus({ at: volume }))
    expect(status.distrusted).toEqual([{ uuid: second.uuid, reason: expect.stringMatching(/^the check before it was to be a parent .* found \d+ bad chunks?, at byte/) as unknown }])
    expect(status.changedSinceMade).toEqual([])

    // a change that kept the bytes (its mode) costs one check; then the revision is sealed again, verified
    await chmod(join(dir, `${third.uuid}.img`), 0o640)
    const fourth = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T13:00:00Z') })))
    expect(fourth.parent).toBe(third.uuid)
    expect(fourth.warnings).toEqual([`the image of revision ${third.uuid} was changed after it was made; every chunk of it was checked against its hash before it became the parent, and is intact`])
    const fifth = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T14:00:00Z') })))
    expect([fifth.parent, fifth.warnings]).toEqual([fourth.uuid, []])
    status = ok(await volumeStatus({ at: volume }))
    expect(status.revisions.map((r) => r.trust)).toEqual(['trusted', 'distrusted', 'verified', 'trusted', 'trusted'])
    expect(status.changedSinceMade).toEqual([])
    // a verify seals an image again: the one written to since, found intact
    await chmod(join(dir, `${first.uuid}.img`), 0o600)
    expect(ok(await volumeStatus({ at: volume })).changedSinceMade).toEqual([first.uuid])
    expect(ok(await verifyVolume({ at: volume, revisions: [first.uuid] })).ok).toBe(true)
    expect(ok(await volumeStatus({ at: volume })).changedSinceMade).toEqual([])
  })

  it('a revision whose image was removed by hand: status names it, restore refuses it before writing anything, verify distrusts it and says why', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const second = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T11:00:00Z') })))
    await rm(join(dir, `${first.uuid}.img`))
    const status = ok(await volumeStatus({ at: volume }))
    expect(status.withoutImage).toEqual([first.uuid])
    expect(status.distrusted).toEqual([])

    const destination = join(fs.mountPoint, 'r.img')
    for (const force of [false, true]) {
      expect(await restoreRevision({ at: volume, revision: first.uuid, destination, force })).toMatchObject({
        error: { code: 'CORRUPT_DATA', message: `the image of revision ${first.uuid} (${join(dir, `${first.uuid}.img`)}) is missing` },
      })
    }
    expect(await readdir(fs.mountPoint)).not.toContain('r.img')
    expect(await restoreRevision({ at: volume, revision: 'all', destination })).toMatchObject({ error: { code: 'INVALID_OPTIONS', message: "restore writes one revision, and 'all' names 2" } })

    expect(ok(await verifyVolume({ at: volume, revisions: [first.uuid] })).ok).toBe(false)
    const reason = `a verify found that the image ${join(dir, `${first.uuid}.img`)} is missing`
    expect(ok(await volumeStatus({ at: volume })).distrusted).toEqual([{ uuid: first.uuid, reason }])
    expect(await restoreRevision({ at: volume, revision: first.uuid, destination })).toMatchObject({ error: { code: 'REVISION_DISTRUSTED', message: `revision ${first.uuid} is distrusted: ${reason}` } })
    // distrust by hand keeps the reason a verify found
    ok(await distrustRevisions({ at: volume, revisions: [first.uuid] }))
    expect(ok(await volumeStatus({ at: volume })).distrusted).toEqual([{ uuid: first.uuid, reason }])
    expect(second.uuid).not.toBe(first.uuid)
  })

  it('a revision that a backup\'s expiry removes while a restore reads it is restored whole; one removed as the restore began is named gone, not damaged', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, schedule: ok(parseSchedule('daily=1d:1')) }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const bytes = await readFile(join(dir, `${first.uuid}.img`))
    await patch(image, 5 * 4 * MiB, randomBytes(4096))
    const second = written(ok(await backupVolume({ at: volume, now: at('2026-11-24T10:00:00Z') })))
    // the expiry a backup (or prune -b) runs a day later: the first revision's daily tag is gone, and with it the revision
    const expire = async (): Promise<void> => {
      expect(ok(await expireVolume({ at: volume, now: at('2026-11-25T11:00:00Z') })).removed).toEqual([first.uuid])
    }
    // while the restore is under way: when it asks where the image holds data, before it reads a byte
    let expired = false
    const expiring: Transport = { ...volume, exec: (argv, o) => {
      if (argv[0] !== 'perl' || expired) return volume.exec(argv, o)
      expired = true
      return ResultAsync.fromSafePromise(expire()).andThen(() => volume.exec(argv, o))
    } }
    const restored = join(fs.mountPoint, 'restored.img')
    expect(ok(await restoreRevision({ at: expiring, revision: first.uuid, destination: restored }))).toMatchObject({ uuid: first.uuid, size: 96 * MiB })
    expect(expired).toBe(true)
    expect((await readFile(restored)).equals(bytes)).toBe(true)
    expect((await readdir(dir)).filter((n) => n.startsWith(first.uuid))).toEqual([])
    expect(ok(await volumeStatus({ at: volume })).revisions.map((r) => r.uuid)).toEqual([second.uuid])

    // removed between the listing and the restore's first look at it: gone, which is no damage
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T12:00:00Z') })))
    const listed: Transport = { ...volume, readFile: (path) => volume.readFile(path).map((text) => {
      if (path === join(dir, `${second.uuid}.rev`)) execFileSync('rm', ['-f', ...['rev', 'img', 'hashes'].map((ext) => join(dir, `${second.uuid}.${ext}`))])
      return text
    }) }
    const destination = join(fs.mountPoint, 'r.img')
    expect(await restoreRevision({ at: listed, revision: second.uuid, destination })).toMatchObject({
      error: { code: 'SNAPSHOT_NOT_FOUND', message: `revision ${second.uuid} was removed as this restore began, by the expiry of a backup (or a prune -b) that ran meanwhile` },
    })
    expect(await readdir(fs.mountPoint)).not.toContain('r.img')
    expect(ok(await volumeStatus({ at: volume })).revisions.map((r) => r.uuid)).toEqual([third.uuid])
  })

  it('a revision distrusted by hand says so, and needs a whole new round of verify: subsets passed before do not count', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, chunkSize: 1 * MiB }))
    const rev = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    for (const k of [1, 2, 3]) expect(ok(await verifyVolume({ at: volume, subset: { index: k, of: 4 } })).checks[0]?.trust).toBe('trusted')
    ok(await distrustRevisions({ at: volume, revisions: ['latest'], now: at('2026-11-23T12:00:00Z') }))
    const reason = 'it was marked distrusted by hand (bbackup distrust)'
    expect(ok(await volumeStatus({ at: volume })).distrusted).toEqual([{ uuid: rev.uuid, reason }])
    expect(await restoreRevision({ at: volume, revision: '0', destination: join(fs.mountPoint, 'r.img') })).toMatchObject({ error: { code: 'REVISION_DISTRUSTED', message: `revision ${rev.uuid} is distrusted: ${reason}` } })
    // the fourth subset alone does not make it verified: 1/4 .. 3/4 were checked before it was distrusted
    expect(ok(await verifyVolume({ at: volume, subset: { index: 4, of: 4 } })).checks[0]?.trust).toBe('distrusted')
    expect(ok(await volumeStatus({ at: volume })).distrusted).toEqual([{ uuid: rev.uuid, reason }])
    for (const k of [1, 2, 3]) ok(await verifyVolume({ at: volume, subset: { index: k, of: 4 } }))
    const status = ok(await volumeStatus({ at: volume }))
    expect(status.revisions[0]?.trust).toBe('verified')
    expect(status.revisions[0]?.distrust).toBeUndefined()
    expect(status.distrusted).toEqual([])
  })

  it('restores over a block device only with force, when it is large enough, and never while it is mounted', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image }))
    const rev = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const devices: string[] = []
    const attach = async (name: string, bytes: number): Promise<string> => {
      const file = join(fs.mountPoint, name)
      await writeFile(file, '')
      execFileSync('truncate', ['-s', String(bytes), file])
      const device = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim()
      devices.push(device)
      return device
    }
    const mountPoint = join(fs.mountPoint, 'mounted')
    let mounted = false
    try {
      const small = await attach('small.disk', 64 * MiB)
      expect(await restoreRevision({ at: volume, revision: 'latest', destination: small, force: true })).toMatchObject({ error: { code: 'INVALID_OPTIONS', message: `${small} holds ${64 * MiB} bytes, the revision ${96 * MiB}` } })
      const disk = await attach('vm.disk', 128 * MiB)
      expect(await restoreRevision({ at: volume, revision: 'latest', destination: disk })).toMatchObject({ error: { code: 'ALREADY_EXISTS', message: `${disk} is a block device: restoring overwrites all of it` } })
      // mounted: the kernel's exclusive open refuses, and the filesystem on it is untouched
      execFileSync('mkfs.ext4', ['-q', disk])
      execFileSync('mkdir', ['-p', mountPoint])
      execFileSync('mount', [disk, mountPoint])
      mounted = true
      await writeFile(join(mountPoint, 'keep.txt'), 'still here')
      expect(await restoreRevision({ at: volume, revision: 'latest', destination: disk, force: true })).toMatchObject({ error: { code: 'TARGET_UNAVAILABLE', message: `${disk} is in use: mounted, or held by LVM, device-mapper, md or a running VM` } })
      execFileSync('umount', [mountPoint])
      mounted = false
      execFileSync('fsck.ext4', ['-n', '-f', disk], { stdio: 'ignore' })
      const restored = ok(await restoreRevision({ at: volume, revision: 'latest', destination: disk, force: true }))
      expect(restored).toMatchObject({ uuid: rev.uuid, size: 96 * MiB })
      execFileSync('cmp', ['-n', String(96 * MiB), disk, image])
    } finally {
      if (mounted) execFileSync('umount', [mountPoint])
      for (const device of devices) execFileSync('losetup', ['-d', device])
    }
  })

  it('scenario 25: verify in subsets 1/4 .. 4/4 checks every chunk exactly once, then counts as a whole verify', async () => {
    const volume = localTransport(dir)
    ok(await initVolume({ at: volume, source: image, chunkSize: 1 * MiB }))
    const rev = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    let chunks = 0
    let bytes = 0
    for (let k = 1; k <= 4; k++) {
      const r = ok(await verifyVolume({ at: volume, subset: { index: k, of: 4 } }))
      expect(r.checks).toHaveLength(1)
      chunks += r.checks[0]?.chunksChecked ?? 0
      bytes += r.checks[0]?.bytesChecked ?? 0
      expect(r.checks[0]?.trust).toBe(k < 4 ? 'trusted' : 'verified')
    }
    expect(chunks).toBe(rev.stats.chunks)
    expect(bytes).toBe(rev.size)
    expect(await verifyVolume({ at: volume, subset: { index: 5, of: 4 } })).toMatchObject({ error: { code: 'INVALID_OPTIONS' } })
  })

  it('backs up a sparse 10 GiB image holding 100 MiB of data into 100 MiB on disk', async () => {
    const sparse = join(fs.mountPoint, 'images/big.img')
    const h = await open(sparse, 'w')
    for (let i = 0; i < 25; i++) await h.write(randomBytes(4 * MiB), 0, 4 * MiB, i * 400 * MiB)
    await h.truncate(10 * 1024 * MiB)
    await h.close()
    const volume = localTransport(join(fs.mountPoint, 'backy/big'))
    ok(await initVolume({ at: volume, source: sparse }))
    const rev = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    // the holes were known from the filesystem and not read
    expect(rev.stats).toMatchObject({ chunks: 2560, chunksWritten: 25, zeroChunks: 2535, bytesRead: 100 * MiB, bytesWritten: 100 * MiB })
    // exactly the 25 data chunks are allocated and hold the source's bytes: the rest are holes (zeros),
    // checked without reading 10 GiB of holes twice through cmp
    const stored = join(fs.mountPoint, `backy/big/${rev.uuid}.img`)
    expect(await allocatedBytes(stored)).toBe(100 * MiB)
    expect((await stat(stored)).size).toBe(10 * 1024 * MiB)
    const [a, b] = [await open(stored, 'r'), await open(sparse, 'r')]
    try {
      for (let i = 0; i < 25; i++) {
        const [x, y] = [Buffer.alloc(4 * MiB), Buffer.alloc(4 * MiB)]
        await a.read(x, 0, 4 * MiB, i * 400 * MiB)
        await b.read(y, 0, 4 * MiB, i * 400 * MiB)
        expect(x.equals(y)).toBe(true)
      }
    } finally {
      await a.close()
      await b.close()
    }
  })
})
