import { constants, promises as fs } from 'node:fs'
import type { ResultAsync } from 'neverthrow'
import { bbError, InternalError, ioError, type BbError, type Transport } from '@bb/core'
import { scanChunks } from './chunk-scan.js'
import { dataChunks } from './data-map.js'
import { openHashPool } from './hash-pool.js'
import { localDirectory } from './locked.js'
import { inspectSource } from './source.js'
import { asResult, fsStep, stop } from './stop.js'
import { distrustReason, paths, readHashes, readVolume, readVolumeConfig, recordedDigest, recordedZero, selectRevisions } from './volume.js'

export interface BlockRestoreOptions {
  readonly at: Transport
  /** a revision spec: uuid (or a unique start of one), 0 = newest, latest, a tag (its newest revision) */
  readonly revision: string
  /** a file that does not exist yet, or a block device (with `force`) */
  readonly destination: string
  /** write to a block device; restore a distrusted revision */
  readonly force?: boolean
  readonly signal?: AbortSignal
  readonly threads?: number
}

export interface BlockRestoreReport {
  readonly uuid: string
  readonly destination: string
  readonly size: number
  readonly bytesWritten: number
}

/**
 * Writes a revision to a new image file (sparse: zero chunks stay holes) or, with `force`, over a
 * block device. Every chunk is checked against its recorded hash on the way: damage stops the
 * restore and names the offset. The revision's image is a plain file too: `dd` or `losetup`
 * restore it without bbackup.
 * @example
 * await restoreRevision({ at: localTransport('/srv/backy/vm1'), revision: 'latest', destination: '/var/lib/libvirt/images/vm1-restored.img' })
 */
export const restoreRevision = (options: BlockRestoreOptions): ResultAsync<BlockRestoreReport, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    await readVolumeConfig(options.at, dir)
    const { revisions } = await readVolume(options.at, dir)
    if (options.revision === 'all') {
      return stop(bbError('INVALID_OPTIONS', `restore writes one revision, and 'all' names ${revisions.length}`, 'name one: a uuid (or a unique start of one), 0 for the newest, 1 for the one before, latest, or a tag (its newest revision)', { value: options.revision }))
    }
    const revision = selectRevisions(options.revision, revisions)[0]
    if (revision === undefined) return stop(bbError('SNAPSHOT_NOT_FOUND', `no revision matches '${options.revision}'`, 'bbackup status -b DIR lists them'))
    if (revision.trust === 'distrusted' && options.force !== true) {
      return stop(bbError('REVISION_DISTRUSTED', `revision ${revision.uuid} is distrusted: ${distrustReason(revision)}`,
        'restore an older revision, or give --force to restore this one as it is', { revision: revision.uuid }))
    }
    const image = paths(dir, revision.uuid).image
    const stored = await fs.stat(image).catch(() => undefined)
    if (stored?.isFile() !== true) {
      return stop(bbError('CORRUPT_DATA', `the image of revision ${revision.uuid} (${image}) is missing`, 'restore another revision; bbackup verify -b DIR marks this one distrusted', { revision: revision.uuid, path: image }))
    }
    const hashes = await readHashes(dir, revision)
    if (hashes === undefined) return stop(bbError('CORRUPT_DATA', `the chunk hashes of revision ${revision.uuid} are missing or damaged`, `copy the image itself: ${image} is a plain image file`, { revision: revision.uuid }))
    const existing = await fs.stat(options.destination).catch(() => undefined)
    const device = existing?.isBlockDevice() === true
    if (existing !== undefined && !device) {
      return stop(bbError('ALREADY_EXISTS', `${options.destination} already exists`, 'restore to a new file name (bbackup never overwrites a file), or remove it first', { path: options.destination }))
    }
    if (device) {
      if (options.force !== true) return stop(bbError('ALREADY_EXISTS', `${options.destination} is a block device: restoring overwrites all of it`, 'give --force if that is what you want', { path: options.destination }))
      const { size } = await inspectSource(options.destination)
      if (size < revision.size) return stop(bbError('INVALID_OPTIONS', `${options.destination} holds ${size} bytes, the revision ${revision.size}`, 'restore to a device at least as large, or to a file', { path: options.destination }))
    }
    // a device is opened exclusively: the kernel refuses (EBUSY) while it is mounted or held by LVM, dm, md or a VM
    const handle = device
      ? await fs.open(options.destination, constants.O_WRONLY | constants.O_EXCL).catch((cause: unknown) => stop((cause as NodeJS.ErrnoException).code === 'EBUSY'
        ? bbError('TARGET_UNAVAILABLE', `${options.destination} is in use: mounted, or held by LVM, device-mapper, md or a running VM`, 'unmount it or stop what holds it (findmnt, lsblk show who), then restore again', { path: options.destination })
        : ioError('open', options.destination)(cause)))
      : await fsStep('create', options.destination, fs.open(options.destination, 'wx', 0o600))
    const pool = openHashPool(options.threads)
    let bytesWritten = 0
    let done = false
    try {
      if (!device) await fsStep('resize', options.destination, handle.truncate(revision.size))
      const damaged = (i: number) => bbError('CORRUPT_DATA', `revision ${revision.uuid} is damaged at byte ${i * revision.chunkSize}: the chunk there does not match its hash`,
        'run bbackup verify -b DIR on it (it is then distrusted) and restore another revision', { revision: revision.uuid, offset: i * revision.chunkSize })
      const zeros = Buffer.alloc(revision.chunkSize)
      const dataMap = await dataChunks(options.at, image, revision.size, revision.chunkSize)
      await scanChunks({ path: image, size: revision.size, chunkSize: revision.chunkSize, pool, signal: options.signal, dataMap, deliver: true }, {
        zero: async (i, length) => {
          if (!recordedZero(hashes, i) && options.force !== true) stop(damaged(i))
          if (device) {
            await fsStep('write', options.destination, handle.write(zeros, 0, length, i * revision.chunkSize))
            bytesWritten += length
          }
        },
        data: async (i, chunk, digest) => {
          if (chunk === undefined) throw new InternalError('restore: a scan that delivers gave a chunk without its bytes')
          if (!recordedDigest(hashes, i, digest) && options.force !== true) stop(damaged(i))
          await fsStep('write', options.destination, handle.write(chunk, 0, chunk.length, i * revision.chunkSize))
          bytesWritten += chunk.length
        },
      })
      await fsStep('flush', options.destination, handle.sync())
      done = true
    } finally {
      await handle.close()
      await pool.close()
      if (!done && !device) await fs.rm(options.destination, { force: true })
    }
    return { uuid: revision.uuid, destination: options.destination, size: revision.size, bytesWritten }
  })
