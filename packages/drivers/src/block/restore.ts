import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { constants, promises as fs } from 'node:fs'
import { posix } from 'node:path'
import type { Writable } from 'node:stream'
import type { ResultAsync } from 'neverthrow'
import { bbError, formatLocation, InternalError, ioError, stderrTail, type BbError, type Transport } from '@bb/core'
import { scanChunks } from './chunk-scan.js'
import { dataChunks } from './data-map.js'
import { openHashPool } from './hash-pool.js'
import { localDirectory } from './locked.js'
import { privately } from '../privately.js'
import { formatRbdSource, importArgv, isRbdSource, parseRbdSource, rbdImageExists, removeRbdImage, renameRbdImage, type RbdSource } from './rbd.js'
import { inspectSource, lookRemote } from './source.js'
import { departing } from './crossing.js'
import { streamPlanner, type StreamPlan } from '../stream-way.js'
import { asResult, fsStep, must, stop, Stop } from './stop.js'
import { distrustReason, paths, type Revision, readHashes, readVolume, readVolumeConfig, recordedDigest, recordedZero, selectRevisions } from './volume.js'

export interface BlockRestoreOptions {
  readonly at: Transport
  /** a revision spec: uuid (or a unique start of one), 0 = newest, latest, a tag (its newest revision) */
  readonly revision: string
  /** a file that does not exist yet, a block device (with `force`), or a new Ceph RBD image (`rbd:POOL/IMAGE`, written with rbd import) */
  readonly destination: string
  /** write to a block device; restore a distrusted revision */
  readonly force?: boolean
  readonly signal?: AbortSignal
  readonly threads?: number
  /** the host of `destination` when it is another (over ssh): the image is streamed into `dd` there */
  readonly destinationHost?: Transport
  /** to another host: `zstd` compresses the stream here and decompresses it there, when zstd is on both (else it goes as it is, with a warning) */
  readonly streamCompress?: 'zstd' | 'none'
  /** to another host: at most this many bytes a second cross the network (after compression) */
  readonly rateLimit?: number
  /** write the image to this stream instead, in order, zero bytes included (`restore -b DIR REV -`: stdout) */
  readonly output?: Writable
}

export interface BlockRestoreReport {
  readonly uuid: string
  readonly destination: string
  readonly size: number
  readonly bytesWritten: number
  /** to another host: the bytes that crossed the network (compressed ones, when they were), and how */
  readonly bytesTransferred?: number
  readonly streamCompressed?: 'zstd'
  /** what did not go as asked (a stream that went uncompressed) */
  readonly warnings?: readonly string[]
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
    // a backup's expiry (or prune -b) takes no notice of a restore: one that ran since the listing
    // removed the revision (its .rev first), which is then no damage but gone
    const goneMeanwhile = async (): Promise<BbError | undefined> => (await fs.stat(paths(dir, revision.uuid).rev).catch(() => undefined)) !== undefined ? undefined
      : bbError('SNAPSHOT_NOT_FOUND', `revision ${revision.uuid} was removed as this restore began, by the expiry of a backup (or a prune -b) that ran meanwhile`,
        'bbackup status -b DIR lists the revisions there are: restore one of them', { revision: revision.uuid })
    const missing = bbError('CORRUPT_DATA', `the image of revision ${revision.uuid} (${image}) is missing`, 'restore another revision; bbackup verify -b DIR marks this one distrusted', { revision: revision.uuid, path: image })
    const hashes = await readHashes(dir, revision)
    if (hashes === undefined) {
      return stop(await goneMeanwhile() ?? bbError('CORRUPT_DATA', `the chunk hashes of revision ${revision.uuid} are missing or damaged`, `copy the image itself: ${image} is a plain image file`, { revision: revision.uuid }))
    }
    // opened before anything that takes time (an ssh login, an rbd import): an expiry that runs
    // from now on removes the image's name, not the bytes read through this handle, whose
    // /proc link every reader opens
    const held = await fs.open(image, 'r').catch(async (cause: unknown) =>
      stop((cause as NodeJS.ErrnoException).code === 'ENOENT' ? await goneMeanwhile() ?? missing : ioError('open', image)(cause)))
    try {
      if (!(await held.stat()).isFile()) return stop(missing)
      return await restoreHeld(options, revision, hashes, { name: image, path: `/proc/${process.pid}/fd/${held.fd}` })
    } finally {
      await held.close()
    }
  })

/** Writes `revision`, whose image is open: read through `image.path`, named `image.name`. */
const restoreHeld = async (options: BlockRestoreOptions, revision: Revision, hashes: Buffer, image: { readonly name: string; readonly path: string }): Promise<BlockRestoreReport> => {
  const sink = options.output !== undefined
    ? streamSink(options.output, 'stdout')
    : isRbdSource(options.destination)
      ? await rbdSink(options.at, await must(parseRbdSource(options.destination)), options)
      : options.destinationHost !== undefined && options.destinationHost.location.kind !== 'local'
      ? await remoteSink(options.destinationHost, options.destination, revision, options)
      : await localSink(options.destination, revision, options)
  const pool = openHashPool(options.threads)
  let done = false
  try {
    const damaged = (i: number) => bbError('CORRUPT_DATA', `revision ${revision.uuid} is damaged at byte ${i * revision.chunkSize}: the chunk there does not match its hash`,
      'run bbackup verify -b DIR on it (it is then distrusted) and restore another revision', { revision: revision.uuid, offset: i * revision.chunkSize })
    const dataMap = await dataChunks(options.at, image.path, revision.size, revision.chunkSize)
    await scanChunks({ path: image.path, name: image.name, size: revision.size, chunkSize: revision.chunkSize, pool, signal: options.signal, dataMap, deliver: true }, {
      zero: async (i, length) => {
        if (!recordedZero(hashes, i) && options.force !== true) stop(damaged(i))
        await sink.zero(i * revision.chunkSize, length)
      },
      data: async (i, chunk, digest) => {
        if (chunk === undefined) throw new InternalError('restore: a scan that delivers gave a chunk without its bytes')
        if (!recordedDigest(hashes, i, digest) && options.force !== true) stop(damaged(i))
        await sink.data(i * revision.chunkSize, chunk)
      },
      failed: (error) => sink.failed(error),
    })
    await sink.finish()
    done = true
  } finally {
    await pool.close()
    if (!done) await sink.abandon()
  }
  const crossing = sink.crossing
  return {
    uuid: revision.uuid, destination: sink.name, size: revision.size, bytesWritten: sink.bytesWritten(),
    ...(crossing === undefined ? {} : {
      bytesTransferred: crossing.crossed(), ...(crossing.compress === undefined ? {} : { streamCompressed: crossing.compress }), ...(crossing.warnings.length === 0 ? {} : { warnings: crossing.warnings }),
    }),
  }
}

/** Where a restore writes: chunks at their offsets, handed over one at a time (each `bytes` only valid until its promise settles). */
interface Sink {
  /** the destination as the report names it */
  readonly name: string
  data(offset: number, bytes: Buffer): Promise<void>
  /** `length` zero bytes at `offset`: a hole in a new file */
  zero(offset: number, length: number): Promise<void>
  /** the scan failed: chunks held back to keep the order are let go */
  failed(error: unknown): void
  /** everything is written: flush it and put it in place */
  finish(): Promise<void>
  /** the restore failed: a file it made is removed, what it did not make is left alone */
  abandon(): Promise<void>
  bytesWritten(): number
  /** a destination on another host: how the image crosses the network, and what crossed */
  readonly crossing?: StreamPlan & { crossed(): number }
}

type RestoreTo = Pick<BlockRestoreOptions, 'at' | 'force' | 'signal' | 'streamCompress' | 'rateLimit'>

const refuseExisting = (where: string): never =>
  stop(bbError('ALREADY_EXISTS', `${where} already exists`, 'restore to a new file name (bbackup never overwrites a file), or remove it first', { path: where }))

const refuseDevice = (where: string, deviceSize: number, revision: Revision, options: RestoreTo): void => {
  if (options.force !== true) stop(bbError('ALREADY_EXISTS', `${where} is a block device: restoring overwrites all of it`, 'give --force if that is what you want', { path: where }))
  if (deviceSize < revision.size) stop(bbError('INVALID_OPTIONS', `${where} holds ${deviceSize} bytes, the revision ${revision.size}`, 'restore to a device at least as large, or to a file', { path: where }))
}

/** A new sparse file (zero chunks stay holes), or a device with `force`, on this host: each chunk written at its place as it comes. */
const localSink = async (destination: string, revision: Revision, options: RestoreTo): Promise<Sink> => {
  const existing = await fs.stat(destination).catch(() => undefined)
  const device = existing?.isBlockDevice() === true
  if (existing !== undefined && !device) refuseExisting(destination)
  if (device) refuseDevice(destination, (await inspectSource(destination)).size, revision, options)
  // a device is opened exclusively: the kernel refuses (EBUSY) while it is mounted or held by LVM, dm, md or a VM
  const handle = device
    ? await fs.open(destination, constants.O_WRONLY | constants.O_EXCL).catch((cause: unknown) => stop((cause as NodeJS.ErrnoException).code === 'EBUSY'
      ? bbError('TARGET_UNAVAILABLE', `${destination} is in use: mounted, or held by LVM, device-mapper, md or a running VM`, 'unmount it or stop what holds it (findmnt, lsblk show who), then restore again', { path: destination })
      : ioError('open', destination)(cause)))
    : await fsStep('create', destination, fs.open(destination, 'wx', 0o600))
  let written = 0
  let closed = false
  const close = async () => {
    if (!closed) await handle.close()
    closed = true
  }
  const zeros = Buffer.alloc(revision.chunkSize)
  const write = async (bytes: Buffer, offset: number) => {
    await fsStep('write', destination, handle.write(bytes, 0, bytes.length, offset))
    written += bytes.length
  }
  try {
    if (!device) await fsStep('resize', destination, handle.truncate(revision.size))
  } catch (error) {
    await close()
    if (!device) await fs.rm(destination, { force: true })
    throw error
  }
  return {
    name: destination,
    data: async (offset, bytes) => write(bytes, offset),
    zero: async (offset, length) => (device ? write(zeros.subarray(0, length), offset) : undefined),
    failed: () => undefined,
    finish: async () => {
      await fsStep('flush', destination, handle.sync())
      await close()
    },
    abandon: async () => {
      await close()
      if (!device) await fs.rm(destination, { force: true })
    },
    bytesWritten: () => written,
  }
}

/**
 * The image as one stream, in order, zero bytes included: chunks that come early wait for their
 * turn (the scan has at most two a thread in flight).
 */
const streamSink = (output: Writable, name: string, ended?: {
  readonly finish: () => Promise<void>
  readonly abandon: () => Promise<void>
  /** why the stream broke, as its reader tells (a command's exit), when it can */
  readonly whyBroken?: () => Promise<BbError | undefined>
}): Sink => {
  let next = 0
  let written = 0
  let broken: { error: unknown } | undefined
  const waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>()
  const zeros = new Map<number, Buffer>()
  const fail = (error: unknown) => {
    broken ??= { error: error instanceof Stop ? error : new Stop(writeFailed(error)) }
    for (const w of waiting.values()) w.reject(broken.error)
    waiting.clear()
  }
  const writeFailed = (cause: unknown): BbError => ((cause as NodeJS.ErrnoException).code === 'EPIPE'
    ? bbError('IO_FAILED', `${name} was closed before the whole image was written`, 'what reads it stopped early: check it, and restore again', { path: name })
    : ioError('write', name)(cause))
  // a broken stream fails the write in progress, or the next one: that is where it is reported
  const onError = () => undefined
  output.on('error', onError)
  const put = async (offset: number, bytes: Buffer) => {
    if (broken !== undefined) throw broken.error
    if (offset !== next) await new Promise<void>((resolve, reject) => waiting.set(offset, { resolve, reject }))
    // a copy: the chunk's buffer goes back to the scan, and a stream may hold what it was given (a pipe's buffer)
    await new Promise<void>((resolve, reject) => {
      output.write(Buffer.from(bytes), (error) => (error == null ? resolve() : reject(error)))
    }).then(async () => {
      if (output.writableNeedDrain) await once(output, 'drain')
    }).catch(async (cause: unknown) => {
      const why = await ended?.whyBroken?.().catch(() => undefined)
      fail(why === undefined ? cause : new Stop(why))
      throw broken?.error
    })
    written += bytes.length
    next = offset + bytes.length
    const turn = waiting.get(next)
    waiting.delete(next)
    turn?.resolve()
  }
  return {
    name,
    data: put,
    zero: async (offset, length) => {
      const bytes = zeros.get(length) ?? Buffer.alloc(length)
      zeros.set(length, bytes)
      return put(offset, bytes)
    },
    failed: fail,
    finish: async () => {
      output.off('error', onError)
      await ended?.finish()
    },
    abandon: async () => {
      output.off('error', onError)
      await ended?.abandon()
    },
    bytesWritten: () => written,
  }
}

/**
 * A new RBD image: the image streamed into `rbd import -` (runs of zeros are not written) under a
 * name of ours beside it (`IMAGE.bbackup-partial-…`), renamed to its own only when complete, and
 * never over an image that is there or appeared meanwhile. Whatever fails, the partial image is removed.
 */
const rbdSink = async (at: Transport, destination: RbdSource, options: RestoreTo): Promise<Sink> => {
  const where = formatRbdSource(destination)
  if (await rbdImageExists(at, destination)) {
    stop(bbError('ALREADY_EXISTS', `${where} already exists`, 'restore to a new image name (bbackup never overwrites an image), or remove it first (rbd rm)', { path: where }))
  }
  const partial: RbdSource = { ...destination, image: `${destination.image}.bbackup-partial-${randomBytes(6).toString('hex')}` }
  const writing = at.spawn(importArgv(partial), { stdin: 'pipe', ...(options.signal === undefined ? {} : { signal: options.signal }) })
  if (writing.stdin === undefined) throw new InternalError('spawn with stdin: pipe gave no stdin')
  const input = writing.stdin
  const failedAt = (ended: { exitCode: number; stderr: string }) => bbError('TARGET_UNAVAILABLE', `writing ${where} failed: ${stderrTail(ended.stderr) || `rbd import exit ${ended.exitCode}`}`,
    'check that the cluster has the space and this ceph user may create images in the pool, and run again', { path: where, stderr: stderrTail(ended.stderr) })
  let keep = false
  return streamSink(input, where, {
    whyBroken: async () => {
      const ended = await writing.done
      return ended.isOk() && ended.value.exitCode !== 0 ? failedAt(ended.value) : undefined
    },
    finish: async () => {
      input.end()
      const ended = await must(writing.done)
      if (ended.exitCode !== 0) stop(failedAt(ended))
      if (!(await renameRbdImage(at, partial, destination))) {
        keep = true
        stop(bbError('ALREADY_EXISTS', `${where} appeared while it was restored; the restored image stays as ${formatRbdSource(partial)}`, 'rename one of them (rbd rename)', { path: where }))
      }
    },
    abandon: async () => {
      // the end of its input, not a signal: rbd import closes the image as it ends, where a killed
      // one leaves its watch on it, and rbd rm waits 30 s for that to time out
      input.end()
      const timer = setTimeout(() => writing.kill(), 10_000)
      await writing.done
      clearTimeout(timer)
      if (!keep) await removeRbdImage(at, partial).catch(() => undefined)
    },
  })
}

/**
 * A file or device on another host: the image streamed into `dd` there. A new file is written
 * under a temporary name beside it (`conv=excl,sparse`: zero chunks stay holes) and linked to its
 * name only when complete (`ln`: never over a file that appeared meanwhile); a device needs `force`.
 */
const remoteSink = async (host: Transport, destination: string, revision: Revision, options: RestoreTo): Promise<Sink> => {
  const where = formatLocation({ ...host.location, path: destination })
  const run = async (argv: readonly string[]) => must(host.exec(argv, options.signal === undefined ? {} : { signal: options.signal }))
  const found = await lookRemote(host, destination, (message, stderr) => bbError('TARGET_UNAVAILABLE', message, 'check the path on that host, and that the ssh user may write there (a device: root)', { path: where, stderr }))
  if (found.kind === 'file' || found.kind === 'other') refuseExisting(where)
  const device = found.kind === 'device'
  if (found.kind === 'device') {
    refuseDevice(where, found.size, revision, options)
    const mounted = await run(['findmnt', '-n', '-o', 'TARGET', '--source', destination])
    if (mounted.exitCode === 0) {
      stop(bbError('TARGET_UNAVAILABLE', `${where} is mounted on ${mounted.stdout.trim().split('\n').join(', ')}`, 'unmount it there (and stop a VM that uses it), then restore again', { path: where }))
    }
  }
  const partial = device ? destination : posix.join(posix.dirname(destination), `.${posix.basename(destination)}.${randomBytes(6).toString('hex')}.bbackup-partial`)
  const argv = ['dd', `of=${partial}`, `bs=${revision.chunkSize}`, 'iflag=fullblock', `conv=${device ? 'nocreat,notrunc' : 'excl,sparse'},fsync`, 'status=none']
  const way = await streamPlanner(options)(options.at, host, options.signal)
  const writing = host.spawn(device ? argv : privately(argv), {
    stdin: 'pipe', ...(way.compress === undefined ? {} : { decompressStdin: way.compress }), ...(options.signal === undefined ? {} : { signal: options.signal }),
  })
  if (writing.stdin === undefined) throw new InternalError('spawn with stdin: pipe gave no stdin')
  const departure = departing(writing.stdin, options.at, way, options.signal)
  const input = departure.input
  const failedAt = (ended: { exitCode: number; stderr: string }) => bbError('TARGET_UNAVAILABLE', `writing ${where} failed: ${stderrTail(ended.stderr) || `dd exit ${ended.exitCode}`}`,
    /No such file/i.test(ended.stderr) ? 'create its directory on that host first' : 'check that the ssh user may write there and that there is space, and run again', { path: where, stderr: stderrTail(ended.stderr) })
  // the partial file is ours to remove, unless dd found one there (excl) or it is kept for the user
  let keep = device
  const sink = streamSink(input, where, {
    whyBroken: async () => {
      const ended = await writing.done
      return ended.isOk() && ended.value.exitCode !== 0 ? failedAt(ended.value) : undefined
    },
    finish: async () => {
      input.end()
      await departure.finished(where)
      const ended = await must(writing.done)
      if (ended.exitCode !== 0) {
        keep ||= /File exists/i.test(ended.stderr)
        stop(failedAt(ended))
      }
      if (device) return
      const linked = await run(['ln', '-T', '--', partial, destination])
      if (linked.exitCode !== 0) {
        keep = /File exists/i.test(linked.stderr)
        stop(keep ? bbError('ALREADY_EXISTS', `${where} appeared while it was restored; the restored image stays as ${partial}`, 'rename one of them there', { path: where }) : failedAt(linked))
      }
      await run(['rm', '-f', '--', partial])
    },
    abandon: async () => {
      input.destroy()
      departure.kill()
      writing.kill()
      await writing.done
      if (!keep) await host.exec(['rm', '-f', '--', partial])
    },
  })
  return { ...sink, crossing: { ...way, crossed: () => departure.crossed() } }
}
