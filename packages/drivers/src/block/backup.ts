import { createHash, randomUUID } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as delay } from 'node:timers/promises'
import type { ResultAsync } from 'neverthrow'
import { bbError, formatLocation, hookContextOf, InternalError, runHookOf, stderrTail, type BackupEvent, type BbError, type HookRun, type HookRunner, type HookStatus, type JobHooks, type Transport } from '@bb/core'
import { chunkCount, scanChunks, scanStream, type ScanCounts, type ScanHandlers } from './chunk-scan.js'
import { BLOCK_SCAN_PROTOCOL, readBlockScan } from './remote-scan.js'
import { arriving } from './crossing.js'
import { streamPlanner, type StreamWay } from '../stream-way.js'
import { flushWhile } from '../flush-while.js'
import { dataChunks } from './data-map.js'
import { DIGEST_BYTES, openHashPool, type HashPool } from './hash-pool.js'
import { localDirectory, withVolumeLock } from './locked.js'
import { dueTags, MANUAL_PREFIX, nextDue, planExpiry } from './schedule.js'
import { fileExtents, sameChunks } from './extents.js'
import { baseSnapshot, exportDiffArgv, rbdSnapshots } from './rbd.js'
import { scanRbdDiff } from './rbd-diff.js'
import { baseCopy, freezeSource, removeStaleCopies, sourceHostOf, type FrozenSource } from './source.js'
import { asResult, fsStep, must, stop, Stop } from './stop.js'
import {
  changedSinceSealed, LATEST_LINK, paths, readHashes, readVolume, readVolumeConfig, recordedDigest, recordedZero, scheduled, sealOf, sha256, writeBinaryAtomic, writeRevision, type Revision, type VolumeConfig,
} from './volume.js'
import { checkRevision, isDamaged, recordCheck } from './verify.js'

export interface BlockBackupOptions {
  /** the backup directory (a local transport) */
  readonly at: Transport
  /**
   * For a source on another host (`source` in volume.json is `ssh://host/path` or `host:/path`):
   * the transport that reaches it, located at the source (an ssh transport). The image is frozen
   * there, then scanned there by `bbackup-remote block-scan` (only changed chunks cross) or, without
   * it, streamed here once with `head -c`.
   */
  readonly sourceHost?: Transport
  /**
   * A source on another host: `zstd` compresses what crosses the network there and decompresses it
   * here, when zstd is on both hosts (else it crosses as it is, with a warning in the revision)
   */
  readonly streamCompress?: 'zstd' | 'none'
  /** a source on another host: at most this many bytes a second cross the network (after compression) */
  readonly rateLimit?: number
  /** back up even when no tag of the schedule is due */
  readonly force?: boolean
  /** more tags for the revision: `manual:NAME` tags never expire */
  readonly tags?: readonly string[]
  /** read the live source without freezing it (a warning in the report) */
  readonly noSnapshot?: boolean
  /** expire what the schedule no longer keeps after the new revision (default true; false: `run --preserve`) */
  readonly expire?: boolean
  readonly now?: () => Date
  readonly signal?: AbortSignal
  /** hashing threads (default: the cores, at most 8) */
  readonly threads?: number
  /** wait this long for another run on the volume to finish (default: fail at once with LOCK_HELD) */
  readonly waitSeconds?: number
  readonly onProgress?: (progress: { readonly bytes: number; readonly total: number }) => void
  /**
   * The engine's events, for logs: `transfer-started` / `-finished` / `-failed` for the revision
   * (target: the backup directory, snapshot: its uuid, bytes: what was written), `pruned` for each
   * expired revision (path: the directory and its uuid, the name of its .img, .hashes and .rev), `recovered` for what an unfinished run left and was removed.
   */
  readonly onEvent?: (event: BackupEvent) => void
  /**
   * Run when a revision is made: `preRun` / `postRun` around it, `preSnapshot` / `postSnapshot`
   * around the point-in-time copy of the image (a guest's filesystems frozen only for the instant
   * of the reflink), or, when the source is read live (`noSnapshot`), around the whole read
   */
  readonly hooks?: JobHooks
}

export interface ExpiredRevisions {
  readonly removed: readonly string[]
  /** revisions that lost their last tag but were kept, and why */
  readonly kept: readonly { readonly uuid: string; readonly why: string }[]
  /** how many revisions are left (with a dry run: would be left) */
  readonly left: number
}

export type BlockBackupReport =
  | { readonly skipped: true; readonly dir: string; readonly nextDue: string; readonly removedIncomplete: readonly string[] }
  | {
    readonly skipped: false
    readonly dir: string
    readonly revision: Revision
    readonly removedIncomplete: readonly string[]
    readonly expired: ExpiredRevisions
    readonly nextDue: string
    /** the hooks that ran, in order; one that failed fails the run (the CLI exits 10) */
    readonly hooks?: readonly HookRun[]
  }

/** Test hook for reliability scenario 13: `BBACKUP_TEST_CRASH_AT=block-half-written` kills the run halfway through writing a revision. */
const crashPoint = (point: string): void => {
  if (process.env.BBACKUP_TEST_CRASH_AT === point) process.kill(process.pid, 'SIGKILL')
}

/** Byte ranges (any order) sorted and coalesced. */
const coalesce = (ranges: readonly (readonly [number, number])[]): [number, number][] => {
  const out: [number, number][] = []
  for (const [offset, length] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const last = out.at(-1)
    if (last !== undefined && last[0] + last[1] === offset) last[1] += length
    else out.push([offset, length])
  }
  return out
}

/**
 * The newest revision a new one can be a reflink copy of: complete, not distrusted, same chunk
 * size, hashes intact, and its image as sealed, or else checked chunk by chunk first (and
 * distrusted, and passed over, when damaged). What the checks found goes into `check.warnings`.
 */
const chooseParent = async (
  at: Transport, dir: string, revisions: readonly Revision[], config: VolumeConfig, check: { readonly pool: HashPool; readonly signal: AbortSignal | undefined; readonly now: Date; readonly warnings: string[] },
): Promise<{ revision: Revision; hashes: Buffer } | undefined> => {
  for (const r of [...revisions].reverse()) {
    if (r.trust === 'distrusted' || r.chunkSize !== config.chunkSize) continue
    const hashes = await readHashes(dir, r)
    const seal = await sealOf(paths(dir, r.uuid).image)
    if (hashes === undefined || seal === undefined) continue
    if (!changedSinceSealed(r, seal)) return { revision: r, hashes }
    // written to or replaced since it was made (a read-write mount of it, a copy put back): the new
    // revision is a copy of its bytes, and they may no longer be those its hashes say
    const found = await checkRevision(at, dir, r, check.signal === undefined ? {} : { signal: check.signal }, check.pool)
    await recordCheck(at, dir, r, found, { index: 1, of: 1 }, check.now, { seal, by: 'the check before it was to be a parent (its image had changed since the backup)' })
    if (!isDamaged(found)) {
      check.warnings.push(`the image of revision ${r.uuid} was changed after it was made; every chunk of it was checked against its hash before it became the parent, and is intact`)
      return { revision: r, hashes }
    }
    check.warnings.push(`the image of revision ${r.uuid} was changed after it was made and is damaged (${found.problems[0] ?? `${found.badChunks} bad chunk${found.badChunks === 1 ? '' : 's'}, the first at byte ${found.badOffsets[0] ?? 0}`}): it is distrusted now, and not the parent`)
  }
  return undefined
}

/** Removes revisions (metadata first: a crash in between leaves an incomplete revision, removed next time). */
export const removeRevisions = async (dir: string, uuids: readonly string[]): Promise<void> => {
  for (const uuid of uuids) {
    const p = paths(dir, uuid)
    for (const file of [p.rev, p.image, p.hashes]) await fsStep('remove', file, fs.rm(file, { force: true }))
  }
}

/**
 * Applies the schedule's expiry (with `dryRun`, only says what it would do); never removes the
 * newest complete revision, the newest verified one, or the one `latest` points at (the last made). Each removal is a `pruned` event (path:
 * the directory and the uuid, the name of its .img, .hashes and .rev).
 */
export const expireRevisions = async (
  at: Transport, dir: string, config: VolumeConfig, revisions: readonly Revision[], now: Date,
  options: { readonly dryRun?: boolean; readonly onEvent?: ((event: BackupEvent) => void) | undefined } = {},
): Promise<ExpiredRevisions> => {
  const protect = new Map<string, string>()
  const newestVerified = [...revisions].reverse().find((r) => r.trust === 'verified')
  if (newestVerified !== undefined) protect.set(newestVerified.uuid, 'the newest verified revision')
  const newest = revisions.at(-1)
  if (newest !== undefined) protect.set(newest.uuid, 'the newest revision')
  // the last one made, which `latest` points at: one dated by a clock that was behind sorts older than the revisions made before it
  const last = (await must(at.readlink(join(dir, LATEST_LINK))))?.replace(/\.img$/, '')
  if (last !== undefined && !protect.has(last) && revisions.some((r) => r.uuid === last)) {
    protect.set(last, 'the last revision made (latest points at it), though another is dated newer: a clock that was wrong dated one of them')
  }
  const plan = planExpiry(config.schedule, scheduled(revisions), now, protect)
  const expired = { removed: plan.remove, kept: [...plan.protected].map(([uuid, why]) => ({ uuid, why })), left: revisions.length - plan.remove.length }
  if (options.dryRun === true) return expired
  for (const r of revisions) {
    const tags = plan.retag.get(r.uuid)
    if (tags !== undefined && !plan.remove.includes(r.uuid)) await writeRevision(at, dir, { ...r, tags })
  }
  await removeRevisions(dir, plan.remove)
  for (const uuid of plan.remove) {
    const was = revisions.find((r) => r.uuid === uuid)
    options.onEvent?.({ type: 'pruned', at: dir, snapshot: uuid, reasons: [`its tags expired (${was?.tags.join(', ') ?? ''})`], path: join(dir, uuid) })
  }
  return expired
}

/** Removes what killed runs left: images being written, revision parts without metadata. */
export const removeIncomplete = async (dir: string, names: readonly string[]): Promise<void> => {
  for (const name of names) await fsStep('remove', join(dir, name), fs.rm(join(dir, name), { force: true }))
}

/**
 * The chunk scan program on the source's host, when it is there and speaks our protocol: the
 * volume's `remoteHelper` (which must work), else `bbackup-remote` if found; undefined to stream.
 */
const remoteHelperOf = async (remote: Transport, config: VolumeConfig, signal: AbortSignal | undefined): Promise<string | undefined> => {
  if (config.remoteHelper === 'none') return undefined
  const program = config.remoteHelper ?? 'bbackup-remote'
  const asked = await remote.exec([program, 'block-scan', '--protocol'], signal === undefined ? {} : { signal })
  if (asked.isOk() && asked.value.exitCode === 0 && asked.value.stdout.trim() === BLOCK_SCAN_PROTOCOL) return program
  if (asked.isErr() && asked.error.code === 'CANCELLED') return stop(asked.error)
  if (config.remoteHelper === undefined) return undefined
  const said = asked.isErr() ? asked.error.message : stderrTail(asked.value.stderr) || asked.value.stdout.trim() || `exit ${asked.value.exitCode}`
  return stop(bbError('TOOL_MISSING', `the volume's remote helper ${program} does not answer on ${formatLocation(remote.location)} (${said})`,
    `install bbackup there (the same version as here) or fix remoteHelper in volume.json; "none" streams the image instead`, { path: formatLocation(remote.location) }))
}

/**
 * The chunks of the frozen source that are, block for block on disk, those of the copy the parent
 * revision was read from (kept beside the image: {@link baseCopy}): they hold the parent's bytes and
 * need not be read. Undefined (read everything) without that copy, for a source on another host, or
 * when filefrag cannot tell the extents. An image grown or shrunk since (`qemu-img resize`) keeps
 * this for the chunks that lie whole within both sizes; the one its old or new end cuts is read.
 */
const unchangedSinceParent = async (at: Transport, config: VolumeConfig, frozen: FrozenSource, parent: Revision): Promise<Uint8Array | undefined> => {
  if (frozen.remote !== undefined || frozen.consistency !== 'reflink') return undefined
  const base = await baseCopy(config, parent.uuid)
  const kept = await fs.stat(base).catch(() => undefined)
  if (kept?.isFile() !== true || kept.size !== parent.size) return undefined
  const [was, now] = await Promise.all([fileExtents(at, base), fileExtents(at, frozen.path)])
  if (was === undefined || now === undefined) return undefined
  if (frozen.size === parent.size) return sameChunks(was, now, frozen.size, config.chunkSize)
  const whole = Math.floor(Math.min(frozen.size, parent.size) / config.chunkSize) * config.chunkSize
  const same = new Uint8Array(chunkCount(frozen.size, config.chunkSize))
  same.set(sameChunks(was, now, whole, config.chunkSize))
  return same
}

/**
 * The snapshot of an RBD image that the parent revision was read from, when it is still there: an
 * export-diff from it carries only what changed since. Undefined (export everything) otherwise, or
 * when the image was resized since.
 */
const rbdBaseOf = async (at: Transport, config: VolumeConfig, frozen: FrozenSource, parent: Revision): Promise<string | undefined> => {
  if (frozen.rbd === undefined || frozen.size !== parent.size) return undefined
  const base = baseSnapshot(config, parent.uuid)
  return (await rbdSnapshots(at, frozen.rbd.source)).some((s) => s.name === base) ? base : undefined
}

/** What a read of the source hands on; `unchanged`: a chunk known to hold the parent's bytes (a scan on the source's host compares with the parent itself, and extents tell it here). */
type SourceHandlers = ScanHandlers & { unchanged(index: number, length: number): Promise<void> | void }

/**
 * Reads the frozen source once: on this host in place (holes skipped); on another host by the
 * chunk scan there (`bbackup-remote block-scan`: only changed chunks cross), else as the stream of
 * `head -c SIZE`.
 */
const readSource = async (input: {
  readonly at: Transport; readonly frozen: FrozenSource; readonly config: VolumeConfig; readonly parentHashes: Buffer | undefined; readonly same: Uint8Array | undefined
  /** an RBD image's snapshot the parent was read from: only what changed since is exported */
  readonly rbdBase: string | undefined
  readonly pool: ReturnType<typeof openHashPool>; readonly signal: AbortSignal | undefined
  /** the revision's image, which a read on this host writes the chunks into itself; `known`: what it holds at a chunk already */
  readonly writeTo: string; readonly known: (index: number) => Buffer | undefined
  /** how the bytes of a source on another host cross the network */
  readonly way: StreamWay
}, handlers: SourceHandlers): Promise<ScanCounts & { readonly bytesTransferred?: number; readonly streamCompressed?: 'zstd'; readonly scannedOn?: string; readonly bytesUnchanged?: number }> => {
  const { frozen, pool, signal, same } = input
  const { chunkSize } = input.config
  const { remote } = frozen
  if (frozen.rbd !== undefined) return readRbd(input, handlers)
  if (remote === undefined) {
    const dataMap = await dataChunks(input.at, frozen.path, frozen.size, chunkSize)
    let bytesUnchanged = 0
    if (same !== undefined) {
      for (let index = 0; index < same.length; index++) {
        if (same[index] !== 1) continue
        const length = Math.min(chunkSize, frozen.size - index * chunkSize)
        bytesUnchanged += length
        await handlers.unchanged(index, length)
      }
    }
    const counts = await scanChunks({
      path: frozen.path, size: frozen.size, chunkSize, pool, signal, dataMap, writeTo: input.writeTo, known: input.known,
      ...(same === undefined ? {} : { select: (index: number) => same[index] !== 1 }),
    }, handlers)
    return same === undefined ? counts : { ...counts, bytesUnchanged }
  }
  const what = formatLocation({ ...remote.location, path: frozen.path })
  const helper = await remoteHelperOf(remote, input.config, signal)
  const argv = helper === undefined
    ? ['head', '-c', String(frozen.size), '--', frozen.path]
    : [helper, 'block-scan', '--chunk-size', String(chunkSize), '--size', String(frozen.size), '--', frozen.path]
  const readFailed = (ended: { readonly exitCode: number; readonly stderr: string }): never =>
    stop(bbError('SOURCE_UNAVAILABLE', `reading ${what} failed: ${stderrTail(ended.stderr) || `${argv[0] ?? ''} exit ${ended.exitCode}`}`, 'check that the ssh user may read it, and run again', { path: what, stderr: stderrTail(ended.stderr) }))
  const reading = remote.spawn(argv, {
    stdout: 'pipe', ...(helper === undefined ? {} : { stdin: 'pipe' as const }), ...(input.way.compress === undefined ? {} : { compressStdout: input.way.compress }), ...(signal === undefined ? {} : { signal }),
  })
  if (reading.stdout === undefined) throw new InternalError('spawn with stdout: pipe gave no stdout')
  // the parent's hashes tell the scan there what is here already
  reading.stdin?.on('error', () => undefined)
  reading.stdin?.end(input.parentHashes ?? Buffer.alloc(0))
  const arrival = arriving(reading.stdout, input.at, input.way, signal)
  let counts: ScanCounts
  try {
    counts = helper === undefined
      ? await scanStream({ stream: arrival.stream, what, size: frozen.size, chunkSize, pool, signal }, handlers)
      : await readBlockScan({ stream: arrival.stream, what, size: frozen.size, chunkSize }, {
        ...handlers,
        data: async (index, chunk, digest) => {
          // the bytes crossed a network: they must be the ones hashed there
          if (!createHash('sha256').update(chunk).digest().equals(digest)) {
            stop(bbError('SOURCE_UNAVAILABLE', `chunk ${index} of ${what} arrived with another hash than it left with`, 'run the backup again; if it repeats, check the network and the memory of both hosts', { path: what }))
          }
          await handlers.data(index, chunk, digest, 0)
        },
      })
  } catch (error) {
    arrival.kill()
    // a stream that stopped short: the command there ended (or is ending), and its own failure says more
    const short = error instanceof Stop && error.error.code === 'SOURCE_UNAVAILABLE'
    const ended = short ? await Promise.race([reading.done, delay(2000).then(() => undefined)]) : undefined
    reading.kill()
    await reading.done
    // it ended before the kill: whatever it says is its own (a refusal of the forced command, a failure there)
    if (ended?.isErr() === true) stop(ended.error)
    if (ended?.isOk() === true && ended.value.exitCode !== 0) readFailed(ended.value)
    throw error
  }
  const ended = await must(reading.done)
  if (ended.exitCode !== 0) readFailed(ended)
  await arrival.finished(what)
  return {
    ...counts, bytesTransferred: arrival.crossed(), ...(input.way.compress === undefined ? {} : { streamCompressed: input.way.compress }),
    ...(helper === undefined ? {} : { scannedOn: remote.location.kind === 'ssh' ? remote.location.host : 'the source host' }),
  }
}

/**
 * Reads an RBD image by `rbd export-diff` of its snapshot: from the parent's snapshot, only the
 * changed extents, laid over the parent's bytes (the revision being written is a reflink copy of
 * it); else all the image's data, the rest holes.
 */
const readRbd = async (input: Parameters<typeof readSource>[0], handlers: SourceHandlers): ReturnType<typeof readSource> => {
  const { frozen, signal, rbdBase } = input
  const image = frozen.rbd
  if (image === undefined) throw new InternalError('readRbd without an RBD source')
  const argv = exportDiffArgv(image.source, image.snapshot, rbdBase)
  const reading = input.at.spawn(argv, { stdout: 'pipe', ...(signal === undefined ? {} : { signal }) })
  if (reading.stdout === undefined) throw new InternalError('spawn with stdout: pipe gave no stdout')
  const failed = (ended: { readonly exitCode: number; readonly stderr: string }): never =>
    stop(bbError('SOURCE_UNAVAILABLE', `reading ${frozen.path} failed: ${stderrTail(ended.stderr) || `rbd exit ${ended.exitCode}`}`, 'check that the cluster is up and this ceph user may read the image, and run again', { path: frozen.path, stderr: stderrTail(ended.stderr) }))
  const parent = rbdBase === undefined ? undefined : await fsStep('open', input.writeTo, fs.open(input.writeTo, 'r'))
  let counts
  try {
    counts = await scanRbdDiff({
      stream: reading.stdout, what: frozen.path, size: frozen.size, chunkSize: input.config.chunkSize, pool: input.pool, signal,
      ...(parent === undefined ? {} : {
        base: async (index: number, buffer: Buffer, length: number) => {
          const { bytesRead } = await fsStep('read', input.writeTo, parent.read(buffer, 0, length, index * input.config.chunkSize))
          // past the parent's end the copy is a hole: zeros
          buffer.fill(0, bytesRead, length)
        },
      }),
    }, handlers)
  } catch (error) {
    reading.kill()
    const ended = await reading.done
    // rbd's own failure says more than a stream that stopped short
    if (ended.isOk() && ended.value.exitCode !== 0 && !(error instanceof Stop && error.error.code === 'CANCELLED')) failed(ended.value)
    throw error
  } finally {
    await parent?.close()
  }
  const ended = await must(reading.done)
  if (ended.exitCode !== 0) failed(ended)
  return counts
}

/** The hooks of a volume's backup, and what each is told. */
const hookRunner = (config: VolumeConfig, dir: string, options: BlockBackupOptions): HookRunner => ({
  hooks: options.hooks, dryRun: false, ran: [], context: (point, more) => hookContextOf(point, { source: config.source, targets: [dir], driver: 'block' }, options.signal, more),
})

/** how a part of a run that ended with `failure` (or without) is told to its post hook */
const statusOf = (failure: unknown, options: BlockBackupOptions): HookStatus =>
  failure === undefined ? 'ok' : options.signal?.aborted === true ? 'cancelled' : 'error'

/**
 * The source frozen between the pre-snapshot and post-snapshot hooks; `thaw` runs the post hook
 * (once): at once for a point-in-time copy, after the read for a source read live.
 */
const freezeBetweenHooks = async (at: Transport, config: VolumeConfig, options: BlockBackupOptions, remote: Transport | undefined, hooks: HookRunner): Promise<{ readonly frozen: FrozenSource; readonly thaw: (failure: unknown) => Promise<void> }> => {
  let thawed = false
  const thaw = async (failure: unknown, frozen?: FrozenSource): Promise<void> => {
    if (thawed) return
    thawed = true
    const where = frozen === undefined || frozen.consistency === 'none' ? {} : { snapshotAt: remote === undefined ? frozen.path : formatLocation({ ...remote.location, path: frozen.path }) }
    await runHookOf(hooks, 'post-snapshot', { status: statusOf(failure, options), ...where })
  }
  const pre = await runHookOf(hooks, 'pre-snapshot')
  if (pre?.error !== undefined) {
    await thaw(pre.error)
    return stop(pre.error)
  }
  let frozen: FrozenSource
  try {
    frozen = await freezeSource(at, config, { noSnapshot: options.noSnapshot === true, signal: options.signal, remote })
  } catch (e) {
    await thaw(e)
    throw e
  }
  if (frozen.consistency !== 'none') await thaw(undefined, frozen)
  return { frozen, thaw: (failure) => thaw(failure, frozen) }
}

const writeRevisionImage = async (at: Transport, dir: string, config: VolumeConfig, revisions: readonly Revision[], tags: readonly string[], options: BlockBackupOptions, remote: Transport | undefined, now: Date, hooks: HookRunner): Promise<Revision> => {
  const started = performance.now()
  const { frozen, thaw } = await freezeBetweenHooks(at, config, options, remote, hooks)
  const uuid = randomUUID()
  const target = paths(dir, uuid)
  const pool = openHashPool(options.threads)
  let done = false
  let announced = false
  try {
    const checked: string[] = []
    const parent = await chooseParent(at, dir, revisions, config, { pool, signal: options.signal, now, warnings: checked })
    const same = parent === undefined ? undefined : await unchangedSinceParent(at, config, frozen, parent.revision)
    const rbdBase = parent === undefined ? undefined : await rbdBaseOf(at, config, frozen, parent.revision)
    // a source on another host: how its bytes cross the network (an RBD image is read by rbd here)
    const way = frozen.remote === undefined || frozen.rbd !== undefined ? { warnings: [] } : await streamPlanner(options)(frozen.remote, at, options.signal)
    options.onEvent?.({
      type: 'transfer-started', target: dir, snapshot: uuid, mode: parent === undefined ? 'full' : 'incremental', ...(parent === undefined ? {} : { parent: parent.revision.uuid }), from: config.source,
    })
    announced = true
    if (parent === undefined) {
      await fsStep('create', target.partial, fs.writeFile(target.partial, '', { flag: 'wx', mode: 0o600 }))
    } else {
      const copy = await must(at.exec(['cp', '--reflink=always', '--', paths(dir, parent.revision.uuid).image, target.partial], options.signal === undefined ? {} : { signal: options.signal }))
      if (copy.exitCode !== 0) {
        return stop(bbError('TARGET_NO_REFLINK', `cannot make a reflink copy of the previous revision in ${dir}: ${stderrTail(copy.stderr) || `cp exit ${copy.exitCode}`}`,
          'keep the backup directory on btrfs or XFS (reflinks), with free space', { path: dir, stderr: stderrTail(copy.stderr) }))
      }
    }
    const chunks = chunkCount(frozen.size, config.chunkSize)
    const parentChunks = parent === undefined ? 0 : parent.hashes.length / DIGEST_BYTES
    const hashes = Buffer.alloc(chunks * DIGEST_BYTES)
    const punch: [number, number][] = []
    let bytesWritten = 0
    let bytesHashed = 0
    let chunksWritten = 0
    let progress = 0
    const handle = await fsStep('open', target.partial, fs.open(target.partial, 'r+'))
    // written out while the chunks are read and hashed, not all at the flush before the revision is recorded
    const flusher = flushWhile(at, target.partial, options.signal)
    let counts
    try {
      await fsStep('resize', target.partial, handle.truncate(frozen.size))
      // what the image holds at a chunk: the parent's bytes up to its end (a chunk it had as zeros is written whole, as it differs), and a hole after it
      const known = (index: number): Buffer | undefined =>
        parent === undefined || index >= parentChunks ? undefined : parent.hashes.subarray(index * DIGEST_BYTES, (index + 1) * DIGEST_BYTES)
      counts = await readSource({ at, frozen, config, parentHashes: parent?.hashes, same, rbdBase, pool, signal: options.signal, writeTo: target.partial, known, way }, {
        unchanged: (index, length) => {
          parent?.hashes.copy(hashes, index * DIGEST_BYTES, index * DIGEST_BYTES, (index + 1) * DIGEST_BYTES)
          options.onProgress?.({ bytes: (progress += length), total: frozen.size })
        },
        zero: (index, length) => {
          if (index < parentChunks && parent !== undefined && !recordedZero(parent.hashes, index)) punch.push([index * config.chunkSize, length])
          options.onProgress?.({ bytes: (progress += length), total: frozen.size })
        },
        data: async (index, chunk, digest, written) => {
          const length = Math.min(config.chunkSize, frozen.size - index * config.chunkSize)
          digest.copy(hashes, index * DIGEST_BYTES)
          bytesHashed += length
          // a chunk that came here (from another host) is written here, unless the parent has it
          if (chunk !== undefined && !(parent !== undefined && index < parentChunks && recordedDigest(parent.hashes, index, digest))) {
            await fsStep('write', target.partial, handle.write(chunk, 0, chunk.length, index * config.chunkSize))
            written = chunk.length
          }
          if (written > 0) {
            bytesWritten += written
            chunksWritten++
            if (chunksWritten >= chunks / 2) crashPoint('block-half-written')
          }
          options.onProgress?.({ bytes: (progress += length), total: frozen.size })
        },
      })
      // chunks that held data in the parent and are zero now become holes again
      for (const [offset, length] of coalesce(punch)) {
        const r = await must(at.exec(['fallocate', '--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), target.partial]))
        if (r.exitCode !== 0) {
          for (let o = offset; o < offset + length; o += config.chunkSize) {
            const n = Math.min(config.chunkSize, offset + length - o)
            await fsStep('write', target.partial, handle.write(Buffer.alloc(n), 0, n, o))
          }
        }
      }
      await flusher.stop()
      await fsStep('flush', target.partial, handle.sync())
    } finally {
      await flusher.stop()
      await handle.close()
    }
    await fsStep('protect', target.partial, fs.chmod(target.partial, 0o440))
    await must(at.rename(target.partial, target.image))
    // after the rename, which changes the change time
    const sealed = await sealOf(target.image)
    await writeBinaryAtomic(target.hashes, hashes)
    const revision: Revision = {
      format: 1, uuid, parent: parent?.revision.uuid ?? null, timestamp: now.toISOString(), size: frozen.size, chunkSize: config.chunkSize, hash: 'sha256',
      hashesDigest: sha256(hashes), tags: [...tags], trust: 'trusted', consistency: frozen.consistency,
      stats: {
        durationSeconds: Math.round(performance.now() - started) / 1000, bytesRead: counts.bytesRead, bytesSkipped: counts.bytesSkipped, bytesWritten, bytesHashed, chunks, chunksWritten,
        zeroChunks: counts.zeroChunks, chunksPunched: punch.reduce((n, [, length]) => n + Math.ceil(length / config.chunkSize), 0),
        hashSeconds: Math.round(pool.busySeconds() * 1000) / 1000, threads: pool.threads,
        ...(counts.bytesTransferred === undefined ? {} : { bytesTransferred: counts.bytesTransferred }), ...(counts.streamCompressed === undefined ? {} : { streamCompressed: counts.streamCompressed }),
        ...(counts.scannedOn === undefined ? {} : { scannedOn: counts.scannedOn }),
        ...(counts.bytesUnchanged === undefined ? {} : { bytesUnchanged: counts.bytesUnchanged }),
      },
      warnings: [...frozen.warnings, ...way.warnings, ...checked],
      ...(sealed === undefined ? {} : { sealed }),
    }
    await writeRevision(at, dir, revision)
    done = true
    // the copy just read is the next backup's base: what the source still shares with it is not read again
    await frozen.keepAsBase(uuid).catch(() => undefined)
    await must(at.symlink(`${uuid}.img`, join(dir, LATEST_LINK)))
    options.onEvent?.({ type: 'transfer-finished', target: dir, snapshot: uuid, bytes: bytesWritten, durationMs: Math.round(performance.now() - started) })
    return revision
  } catch (e) {
    if (announced && e instanceof Stop) options.onEvent?.({ type: 'transfer-failed', target: dir, snapshot: uuid, error: e.error })
    await thaw(e)
    throw e
  } finally {
    // a source read live is let go of once it has been read
    await thaw(undefined)
    await pool.close()
    await frozen.release()
    if (!done) await removeIncomplete(dir, [`${uuid}.img.partial`, `${uuid}.img`, `${uuid}.hashes`])
  }
}

/**
 * Backs up a block volume when its schedule says a revision is due (or with `force`): freezes the
 * source, reads it once, hashes its chunks on all cores and writes only the chunks that differ
 * from the parent revision into a reflink copy of it; then expires revisions by the schedule.
 * @example
 * const r = await backupVolume({ at: localTransport('/srv/backy/vm1') })
 * if (r.isOk() && !r.value.skipped) console.log(r.value.revision.stats.bytesWritten)
 */
export const backupVolume = (options: BlockBackupOptions): ResultAsync<BlockBackupReport, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    const config = await readVolumeConfig(options.at, dir)
    const remote = await sourceHostOf(config, options.sourceHost)
    const unknown = (options.tags ?? []).filter((t) => !t.startsWith(MANUAL_PREFIX) && !(t in config.schedule))
    if (unknown.length > 0) {
      return stop(bbError('INVALID_OPTIONS', `the tag ${unknown.join(', ')} is not in the volume's schedule`, `use a schedule tag (${Object.keys(config.schedule).join(', ')}) or a manual tag that never expires, e.g. manual:before-upgrade`))
    }
    return withVolumeLock(options.at, 'backup', options, async () => {
      const now = (options.now ?? (() => new Date()))()
      const { revisions, incomplete } = await readVolume(options.at, dir, now)
      await removeIncomplete(dir, incomplete)
      const removedIncomplete = [...incomplete, ...(await removeStaleCopies(options.at, config, remote))]
      for (const name of removedIncomplete) options.onEvent?.({ type: 'recovered', target: dir, snapshot: name, action: 'removed' })
      const due = dueTags(config.schedule, scheduled(revisions), now, config.spreadSeconds)
      if (due.length === 0 && options.force !== true) {
        return { skipped: true as const, dir, nextDue: nextDue(config.schedule, now, config.spreadSeconds).toISOString(), removedIncomplete }
      }
      // a forced run between slots still carries the schedule's shortest tag, so that it expires like the others
      const [shortest] = Object.entries(config.schedule).reduce((a, b) => (b[1].intervalSeconds < a[1].intervalSeconds ? b : a))
      const tags = [...new Set([...(due.length > 0 || (options.tags ?? []).some((t) => !t.startsWith(MANUAL_PREFIX)) ? due : [shortest]), ...(options.tags ?? [])])]
      // the pre-run and post-run hooks go around the making of a revision, not around a run that finds none due
      const hooks = hookRunner(config, dir, options)
      const pre = await runHookOf(hooks, 'pre-run')
      let made: { readonly revision: Revision; readonly expired: ExpiredRevisions } | undefined
      let failure: unknown = pre?.error === undefined ? undefined : new Stop(pre.error)
      if (failure === undefined) {
        try {
          const revision = await writeRevisionImage(options.at, dir, config, revisions, tags, options, remote, now, hooks)
          const all = [...revisions, revision]
          made = {
            revision,
            expired: options.expire === false
              ? { removed: [], kept: [], left: all.length }
              : await expireRevisions(options.at, dir, config, all, now, { onEvent: options.onEvent }),
          }
        } catch (e) {
          failure = e
        }
      }
      const status = failure === undefined && !hooks.ran.every((h) => h.ok) ? 'failed' : statusOf(failure, options)
      const post = await runHookOf(hooks, 'post-run', { status, ...(made === undefined ? {} : { snapshot: made.revision.uuid }) })
      if (made === undefined) {
        if (post?.error !== undefined) options.onEvent?.({ type: 'warning', message: post.error.message })
        throw failure
      }
      return {
        skipped: false as const, dir, ...made, removedIncomplete, nextDue: nextDue(config.schedule, now, config.spreadSeconds).toISOString(), ...(hooks.ran.length === 0 ? {} : { hooks: hooks.ran }),
      }
    })
  })
