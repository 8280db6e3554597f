import { execFileSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { chmod, open, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { backupVolume, initVolume, restoreRevision, volumeStatus } from '@bb/drivers/block'
import { mountLoopFilesystem, requireTools, startCeph, type Ceph, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { at, exclusiveBytes, ok, runCli, sameBytes, written } from './helpers.js'

// A Ceph RBD image as a volume's source, read from a real one-node cluster (a monitor and a memstore OSD on 127.0.0.1)
const MiB = 1024 * 1024
const CHUNK = 4 * MiB

/** Writes into an image as a guest would, through `rbd import-diff` of a v1 stream: bytes at offsets, or zeros (a discard). */
const writeImage = (ceph: Ceph, image: string, size: number, records: readonly ({ readonly offset: number; readonly data: Buffer } | { readonly offset: number; readonly zero: number })[]): void => {
  const u64 = (n: number): Buffer => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(n))
    return b
  }
  const stream = Buffer.concat([
    Buffer.from('rbd diff v1\ns'), u64(size),
    ...records.map((r) => ('data' in r ? Buffer.concat([Buffer.from('w'), u64(r.offset), u64(r.data.length), r.data]) : Buffer.concat([Buffer.from('z'), u64(r.offset), u64(r.zero)]))),
    Buffer.from('e'),
  ])
  execFileSync('rbd', ['import-diff', '--no-progress', '-', image, '--conf', ceph.conf], { input: stream, stdio: ['pipe', 'ignore', 'pipe'] })
}

describe.runIf(requireTools(['ceph-mon', 'ceph-osd', 'monmaptool', 'ceph', 'rbd', 'btrfs', 'mkfs.btrfs', 'mount', 'cp', 'cmp'], { root: true }))('block-image driver with a Ceph RBD image as its source', () => {
  let ceph: Ceph
  let fs: LoopFilesystem
  let work: string
  let image: string
  let source: string
  const snapshots = async (): Promise<string[]> => (JSON.parse(await ceph.rbd(['snap', 'ls', '--format', 'json', image])) as { name: string }[]).map((s) => s.name)
  /** the image as rbd exports it now, into a file of the test */
  const exported = async (name: string, spec = image): Promise<string> => {
    const file = join(work, name)
    await ceph.rbd(['export', '--no-progress', spec, file])
    return file
  }

  beforeAll(async () => {
    ceph = await startCeph()
  }, 60_000)
  afterAll(async () => {
    await ceph?.stop()
  })
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 1024 })
    work = join(fs.mountPoint, 'work')
    execFileSync('mkdir', ['-p', work])
    image = `rbd/vm-${randomUUID().slice(0, 8)}`
    source = `rbd:${image}:conf=${ceph.conf}`
    // 96 MiB: 64 MiB of data, then 32 MiB never written
    await ceph.rbd(['create', '--size', '96M', image])
    writeImage(ceph, image, 96 * MiB, Array.from({ length: 16 }, (_, i) => ({ offset: i * CHUNK, data: randomBytes(CHUNK) })))
  })
  afterEach(async () => {
    // the snapshots first: rbd removes no image that has any
    await ceph.rbd(['snap', 'purge', '--no-progress', image]).catch(() => undefined)
    await ceph.rbd(['rm', '--no-progress', image]).catch(() => undefined)
    await fs.cleanup()
  })

  it('backs up from a snapshot in full, then only what rbd export-diff says changed; each revision is the image byte for byte', async () => {
    const volume = localTransport(join(fs.mountPoint, 'backy/vm1'))
    const config = ok(await initVolume({ at: volume, source }))
    expect(config.source).toBe(source)
    // init made its check snapshot and removed it; the user's own snapshots are never touched
    expect(await snapshots()).toEqual([])
    await ceph.rbd(['snap', 'create', '--no-progress', `${image}@mine`])

    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    expect(first).toMatchObject({ parent: null, size: 96 * MiB, consistency: 'rbd-snapshot', trust: 'trusted' })
    // rbd leaves out what was never written: those chunks are holes, not read
    expect(first.stats).toMatchObject({ chunks: 24, chunksWritten: 16, zeroChunks: 8, bytesRead: 64 * MiB, bytesSkipped: 32 * MiB, bytesWritten: 64 * MiB })
    const base = `bbackup-${config.id.slice(0, 8)}-base-${first.uuid}`
    expect((await snapshots()).sort()).toEqual([base, 'mine'].sort())
    const firstImage = join(volume.location.path, `${first.uuid}.img`)
    const firstExport = await exported('first.img', `${image}@${base}`)
    expect(sameBytes(firstImage, firstExport)).toBe(true)
    expect((await stat(firstImage)).blocks * 512).toBeLessThanOrEqual(65 * MiB)

    // 4 KiB writes into five chunks with data and one of the never-written tail
    writeImage(ceph, image, 96 * MiB, [0, 3, 7, 12, 15, 20].map((c) => ({ offset: c * CHUNK + 123 * 4096, data: randomBytes(4096) })))
    const second = written(ok(await backupVolume({ at: volume, now: at('2026-11-24T10:00:00Z') })))
    expect(second.parent).toBe(first.uuid)
    expect(second.stats).toMatchObject({ chunksWritten: 6, bytesWritten: 6 * CHUNK, bytesUnchanged: 18 * CHUNK })
    // what rbd exported: the writes (an object new since may come from its start: memstore keeps no holes in it)
    expect(second.stats.bytesRead).toBeGreaterThanOrEqual(6 * 4096)
    expect(second.stats.bytesRead).toBeLessThan(MiB)
    const now = await exported('second.img')
    expect(sameBytes(join(volume.location.path, `${second.uuid}.img`), now)).toBe(true)
    // the first revision is as it was (the second is a reflink copy of it, written over)
    expect(sameBytes(firstImage, firstExport)).toBe(true)
    expect(sameBytes(firstImage, now)).toBe(false)
    // the older base went: one snapshot of ours, the newest revision's
    expect((await snapshots()).sort()).toEqual([`bbackup-${config.id.slice(0, 8)}-base-${second.uuid}`, 'mine'].sort())
    // on the target the second revision costs the changed chunks, not the image
    expect(exclusiveBytes(join(volume.location.path, `${second.uuid}.img`))).toBeLessThanOrEqual(7 * CHUNK)

    // a discarded chunk becomes a hole again
    writeImage(ceph, image, 96 * MiB, [{ offset: 3 * CHUNK, zero: CHUNK }])
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-24T11:00:00Z') })))
    expect(third.stats).toMatchObject({ chunksWritten: 0, chunksPunched: 1, bytesUnchanged: 23 * CHUNK })
    expect(sameBytes(join(volume.location.path, `${third.uuid}.img`), await exported('third.img'))).toBe(true)

    const status = ok(await volumeStatus({ at: volume }))
    expect(status.bases).toEqual([{ kind: 'rbd-snapshot', path: `rbd:${image}@bbackup-${config.id.slice(0, 8)}-base-${third.uuid}`, revision: third.uuid, size: 96 * MiB }])
  }, 120_000)

  it('removes the snapshot a killed run left, keeps other names, and reads in full when its base is gone or the image grew', async () => {
    const volume = localTransport(join(fs.mountPoint, 'backy/vm1'))
    const config = ok(await initVolume({ at: volume, source }))
    const first = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const ours = `bbackup-${config.id.slice(0, 8)}-`
    const killed = `${ours}${randomUUID()}`
    const anotherVolumes = `bbackup-00000000-${randomUUID()}`
    for (const name of [killed, `${ours}not-a-uuid`, anotherVolumes]) await ceph.rbd(['snap', 'create', '--no-progress', `${image}@${name}`])

    // the base snapshot removed by hand: the next backup exports everything, and still writes only what differs from the parent
    await ceph.rbd(['snap', 'rm', '--no-progress', `${image}@${ours}base-${first.uuid}`])
    writeImage(ceph, image, 96 * MiB, [{ offset: 5 * CHUNK, data: randomBytes(4096) }])
    const report = ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T11:00:00Z') }))
    expect(report.removedIncomplete).toEqual([`rbd:${image}@${killed}`])
    const second = written(report)
    expect(second.parent).toBe(first.uuid)
    expect(second.stats.bytesUnchanged).toBeUndefined()
    expect(second.stats).toMatchObject({ bytesRead: 64 * MiB, chunksWritten: 1, bytesWritten: CHUNK })
    expect(sameBytes(join(volume.location.path, `${second.uuid}.img`), await exported('second.img'))).toBe(true)
    expect((await snapshots()).sort()).toEqual([`${ours}base-${second.uuid}`, `${ours}not-a-uuid`, anotherVolumes].sort())

    // grown by 8 MiB: a diff from the base would not say what the new end holds; the whole image is read
    await ceph.rbd(['resize', '--no-progress', '--size', '104M', image])
    writeImage(ceph, image, 104 * MiB, [{ offset: 100 * MiB, data: randomBytes(4096) }])
    const third = written(ok(await backupVolume({ at: volume, force: true, now: at('2026-11-23T12:00:00Z') })))
    expect(third).toMatchObject({ parent: second.uuid, size: 104 * MiB })
    expect(third.stats.bytesUnchanged).toBeUndefined()
    expect(sameBytes(join(volume.location.path, `${third.uuid}.img`), await exported('third.img'))).toBe(true)
  }, 120_000)

  it('says what is wrong with an image that is not there, and leaves no directory and no snapshot', async () => {
    const dir = join(fs.mountPoint, 'backy/nothing')
    const r = await initVolume({ at: localTransport(dir), source: `rbd:rbd/no-such-image:conf=${ceph.conf}` })
    expect(r._unsafeUnwrapErr()).toMatchObject({ code: 'SOURCE_UNAVAILABLE', message: expect.stringContaining('rbd has no image no-such-image') as string, hint: expect.stringContaining('rbd ls rbd') as string })
    expect(await stat(dir).catch(() => undefined)).toBeUndefined()

    // an image removed after init: the backup fails, and makes nothing
    const volume = localTransport(join(fs.mountPoint, 'backy/vm1'))
    ok(await initVolume({ at: volume, source }))
    await ceph.rbd(['rm', '--no-progress', image])
    const failed = await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })
    expect(failed._unsafeUnwrapErr()).toMatchObject({ code: 'SOURCE_UNAVAILABLE' })
    expect(execFileSync('ls', ['-A', volume.location.path], { encoding: 'utf8' }).trim().split('\n').filter((n) => n !== '.lock')).toEqual(['volume.json'])
  }, 120_000)

  it('restores a revision to a new RBD image, checked chunk by chunk; never over an image, and leaves nothing of a restore that failed', async () => {
    const volume = localTransport(join(fs.mountPoint, 'backy/vm1'))
    ok(await initVolume({ at: volume, source }))
    const revision = written(ok(await backupVolume({ at: volume, now: at('2026-11-23T10:00:00Z') })))
    const restored = `${image}-restored`
    const report = ok(await restoreRevision({ at: volume, revision: 'latest', destination: `rbd:${restored}:conf=${ceph.conf}` }))
    expect(report).toMatchObject({ uuid: revision.uuid, destination: `rbd:${restored}:conf=${ceph.conf}`, size: 96 * MiB })
    const revisionImage = join(volume.location.path, `${revision.uuid}.img`)
    expect(sameBytes(revisionImage, await exported('restored.img', restored))).toBe(true)
    // rbd import left the never-written tail unwritten
    expect(await ceph.rbd(['diff', '--format', 'json', restored])).not.toContain(`"offset":${80 * MiB}`)
    const images = async (): Promise<string[]> => (await ceph.rbd(['ls', 'rbd'])).trim().split('\n')

    try {
      // an image of that name is never written over
      const again = await restoreRevision({ at: volume, revision: 'latest', destination: `rbd:${restored}:conf=${ceph.conf}` })
      expect(again._unsafeUnwrapErr()).toMatchObject({ code: 'ALREADY_EXISTS', hint: expect.stringContaining('rbd rm') as string })
      expect(sameBytes(revisionImage, await exported('restored-again.img', restored))).toBe(true)

      // a damaged revision stops the restore at the chunk, and the partial image is removed
      await chmod(revisionImage, 0o640)
      const h = await open(revisionImage, 'r+')
      await h.write(Buffer.from([0xff ^ (await readFile(revisionImage)).readUInt8(9 * CHUNK + 5)]), 0, 1, 9 * CHUNK + 5)
      await h.close()
      const damaged = await restoreRevision({ at: volume, revision: 'latest', destination: `rbd:${image}-damaged:conf=${ceph.conf}` })
      expect(damaged._unsafeUnwrapErr()).toMatchObject({ code: 'CORRUPT_DATA', message: expect.stringContaining(`damaged at byte ${9 * CHUNK}`) as string })
      expect((await images()).filter((n) => n.startsWith(`${image.slice('rbd/'.length)}-damaged`))).toEqual([])
      expect((await images()).filter((n) => n.includes('bbackup-partial'))).toEqual([])
    } finally {
      await ceph.rbd(['rm', '--no-progress', restored]).catch(() => undefined)
    }
  }, 120_000)

  it('bbackup init, backup and status with an rbd: source', async () => {
    const dir = join(fs.mountPoint, 'backy/vm1')
    const init = await runCli(['init', '-b', dir, source], work)
    expect(init).toMatchObject({ code: 0, stderr: '' })
    expect(init.stdout).toContain(`initialised ${dir} for ${source}`)
    expect(JSON.parse(await readFile(join(dir, 'volume.json'), 'utf8'))).toMatchObject({ source })
    const backup = await runCli(['backup', '-b', dir], work)
    expect(backup).toMatchObject({ code: 0, stderr: '' })
    expect(backup.stdout).toMatch(/full, 96\.0 MiB; 64\.0 MiB written in 16 of 24 chunks/)
    writeImage(ceph, image, 96 * MiB, [{ offset: 0, data: randomBytes(4096) }])
    const again = await runCli(['backup', '-b', dir, '--force'], work)
    expect(again.stdout).toContain('92.0 MiB not read: unchanged since the last revision (rbd export-diff from its snapshot)')
    const status = await runCli(['status', '-b', dir], work)
    expect(status.stdout).toMatch(new RegExp(`base snapshot of [0-9a-f]{8} \\(the next backup exports only what changed since\\): rbd:${image}@bbackup-`))
    const restore = await runCli(['restore', '-b', dir, 'latest', `rbd:${image}-restored:conf=${ceph.conf}`], work)
    try {
      expect(restore).toMatchObject({ code: 0, stdout: expect.stringContaining(`to rbd:${image}-restored:conf=`) as string })
      expect(sameBytes(join(dir, 'latest'), await exported('restored.img', `${image}-restored`))).toBe(true)
    } finally {
      await ceph.rbd(['rm', '--no-progress', `${image}-restored`]).catch(() => undefined)
    }
    // a mistyped source is refused before anything is made
    const bad = await runCli(['init', '-b', join(fs.mountPoint, 'backy/vm2'), 'rbd:vm1'], work)
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toContain('is not POOL/IMAGE')
  }, 120_000)
})
