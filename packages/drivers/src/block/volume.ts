import { createHash, randomBytes } from 'node:crypto'
import { constants, promises as fs } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { bbError, madeOrder, type Transport } from '@bb/core'
import { DIGEST_BYTES } from './hash-pool.js'
import { formatSchedule, parseSchedule, type Schedule, type ScheduledRevision } from './schedule.js'
import { fsStep, must, stop } from './stop.js'

/**
 * A backup directory holds one volume's revisions (docs/drivers/block.md):
 *
 *   volume.json        what is backed up, chunk size, schedule
 *   <uuid>.img         a revision: a plain image file, a reflink copy of its parent with the changed chunks written
 *   <uuid>.hashes      SHA-256 of every chunk, 32 bytes each (32 zero bytes: an all-zero chunk)
 *   <uuid>.rev         the revision's metadata (JSON), written last: without it the revision is incomplete
 *   latest             symlink to the newest revision's image
 *   .lock              held by the run that changes the directory
 */
export const VOLUME_FILE = 'volume.json'
export const LOCK_FILE = '.lock'
export const LATEST_LINK = 'latest'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
/** files a run of ours left behind: an image being written, or the parts of a revision without metadata */
const OURS = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(img|img\.partial|hashes|rev)$/

export type SnapshotMode = 'auto' | 'none'

export interface VolumeConfig {
  readonly format: 1
  /** the volume's identity; also seeds its schedule spread */
  readonly id: string
  /** an image file or a block device: an absolute path here, or `host:/path` / `ssh://host/path` on another host; or a Ceph RBD image, `rbd:POOL/IMAGE` */
  readonly source: string
  readonly chunkSize: number
  readonly schedule: Schedule
  /** the offset of this volume's slots into each tag's interval (seconds) */
  readonly spreadSeconds: number
  /** 'none': read the live source, never freeze it */
  readonly snapshot: SnapshotMode
  /**
   * a source on another host: the program there that scans it (`bbackup-remote`, which must then
   * answer), or 'none' to stream the image; unset: `bbackup-remote` when found, else stream
   */
  readonly remoteHelper?: string
}

export type Trust = 'trusted' | 'distrusted' | 'verified'
/** how the source was frozen while it was read: a reflink copy of the image file, a snapshot of the RBD image, or not (read live) */
export type Consistency = 'reflink' | 'rbd-snapshot' | 'none'

export interface RevisionStats {
  readonly durationSeconds: number
  readonly bytesRead: number
  /** holes of the source, known from the filesystem, not read */
  readonly bytesSkipped: number
  readonly bytesWritten: number
  /** bytes of the chunks with data, which were hashed */
  readonly bytesHashed: number
  readonly chunks: number
  readonly chunksWritten: number
  readonly zeroChunks: number
  /** chunks with data before that are zero now: their space was given back (hole punched) */
  readonly chunksPunched: number
  /** seconds the hashing threads were busy, summed */
  readonly hashSeconds: number
  readonly threads: number
  /** a source on another host: the bytes that crossed the network to here (compressed ones, when they were) */
  readonly bytesTransferred?: number
  /** a source on another host: how what crossed was compressed */
  readonly streamCompressed?: 'zstd'
  /** the host that read and hashed the source, when its bbackup-remote did (only changed chunks crossed) */
  readonly scannedOn?: string
  /** bytes not read because the filesystem's extents showed them unchanged since the parent (the copy kept from its backup shares those blocks) */
  readonly bytesUnchanged?: number
}

export interface Verification {
  readonly checkedAt: string
  /** the subsets (`k/n`) checked without damage since the revision was written; `1/1` for a whole check */
  readonly subsets: readonly string[]
  /** where damage was found: the byte offset of each bad chunk (bounded) */
  readonly badOffsets?: readonly number[]
}

export interface Revision {
  readonly format: 1
  readonly uuid: string
  readonly parent: string | null
  /** UTC, ISO 8601 */
  readonly timestamp: string
  readonly size: number
  readonly chunkSize: number
  readonly hash: 'sha256'
  /** SHA-256 of the `.hashes` file */
  readonly hashesDigest: string
  readonly tags: readonly string[]
  readonly trust: Trust
  readonly consistency: Consistency
  readonly stats: RevisionStats
  readonly warnings: readonly string[]
  readonly verification?: Verification
  /** why the revision is distrusted: set with trust 'distrusted', gone when a verify clears it */
  readonly distrust?: Distrust
  /**
   * the image file when the backup wrote it or a whole verify last found it clean: a later change
   * (a read-write mount of the image, a copy put back) makes it be checked before it is a parent
   * again. Revisions written before it was recorded have none, and are not checked.
   */
  readonly sealed?: Seal
}

/** An image file's inode and change time (ns, as text): writing to it or replacing it changes them, reading and reflink copies of it do not. */
export interface Seal {
  readonly inode: string
  readonly ctimeNs: string
}

/** The seal of the image at `path` now; undefined when it is not there. */
export const sealOf = async (path: string): Promise<Seal | undefined> => {
  const s = await fs.stat(path, { bigint: true }).catch(() => undefined)
  return s === undefined ? undefined : { inode: String(s.ino), ctimeNs: String(s.ctimeNs) }
}

/** Whether a revision's image was written to or replaced since it was sealed (`now`: its seal now). */
export const changedSinceSealed = (revision: Revision, now: Seal): boolean =>
  revision.sealed !== undefined && (revision.sealed.inode !== now.inode || revision.sealed.ctimeNs !== now.ctimeNs)

export interface Distrust {
  /** UTC, ISO 8601 */
  readonly at: string
  /** what found it: 'verify' (the damage is in `reason`) or 'hand' (bbackup distrust) */
  readonly by: 'verify' | 'hand'
  readonly reason: string
}

/** Why a distrusted revision is distrusted, in words (revisions written before `distrust` was recorded say what their verification holds). */
export const distrustReason = (revision: Revision): string =>
  revision.distrust !== undefined ? revision.distrust.reason
    : (revision.verification?.badOffsets?.length ?? 0) > 0 ? `a verify found damage at byte ${revision.verification?.badOffsets?.slice(0, 3).join(', ')}`
    : 'it was marked distrusted'

export const paths = (dir: string, uuid: string) => ({
  image: join(dir, `${uuid}.img`),
  partial: join(dir, `${uuid}.img.partial`),
  hashes: join(dir, `${uuid}.hashes`),
  rev: join(dir, `${uuid}.rev`),
})

const volumeNotFound = (dir: string) =>
  bbError('NOT_FOUND', `${dir} is not a backup directory of a block volume (it has no ${VOLUME_FILE})`, `create it with: bbackup init -b ${dir} SOURCE`, { path: dir })

const MIN_CHUNK = 64 * 1024
const MAX_CHUNK = 64 * 1024 * 1024

/** A chunk size bbackup works with: a multiple of 4 KiB from 64 KiB to 64 MiB. */
export const usableChunkSize = (bytes: number): boolean => Number.isInteger(bytes) && bytes % 4096 === 0 && bytes >= MIN_CHUNK && bytes <= MAX_CHUNK

export const readVolumeConfig = async (at: Transport, dir: string): Promise<VolumeConfig> => {
  const file = join(dir, VOLUME_FILE)
  const text = await must(at.readFile(file))
  if (text === undefined) return stop(volumeNotFound(dir))
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(text) as Record<string, unknown>
  } catch {
    return stop(bbError('IO_FAILED', `${file} is not valid JSON`, 'restore it from your config management, or run bbackup init again in a new directory', { path: file }))
  }
  const schedule = parseSchedule(String(raw.schedule))
  if (raw.format !== 1 || typeof raw.id !== 'string' || typeof raw.source !== 'string' || typeof raw.chunkSize !== 'number' || typeof raw.spreadSeconds !== 'number' || schedule.isErr()) {
    return stop(bbError('IO_FAILED', `${file} is not a volume file bbackup can read`, 'check its fields against docs/drivers/block.md', { path: file }))
  }
  if (!usableChunkSize(raw.chunkSize)) {
    return stop(bbError('INVALID_OPTIONS', `${file} gives a chunk size of ${raw.chunkSize} bytes, which is not usable`, 'give chunkSize a multiple of 4096 from 65536 to 67108864, e.g. 4194304 (4 MiB)', { path: file }))
  }
  if (!Number.isFinite(raw.spreadSeconds) || raw.spreadSeconds < 0) {
    return stop(bbError('INVALID_OPTIONS', `${file} gives spreadSeconds ${raw.spreadSeconds}, which is not an offset in seconds`, 'give 0 or more seconds (init picks one below the shortest interval)', { path: file }))
  }
  return {
    format: 1, id: raw.id, source: raw.source, chunkSize: raw.chunkSize, schedule: schedule.value, spreadSeconds: raw.spreadSeconds, snapshot: raw.snapshot === 'none' ? 'none' : 'auto',
    ...(typeof raw.remoteHelper === 'string' && raw.remoteHelper !== '' ? { remoteHelper: raw.remoteHelper } : {}),
  }
}

export const volumeConfigText = (config: VolumeConfig): string =>
  `${JSON.stringify({ ...config, schedule: formatSchedule(config.schedule) }, null, 2)}\n`

export interface VolumeContents {
  /** complete revisions, oldest first */
  readonly revisions: readonly Revision[]
  /** names of files a run left unfinished (no metadata) */
  readonly incomplete: readonly string[]
  /** complete revisions whose image is not in the directory (removed by hand, or lost): nothing can restore them */
  readonly withoutImage: readonly string[]
}

const parseRevision = (text: string, file: string): Revision => {
  try {
    const r = JSON.parse(text) as Revision
    if (r.format === 1 && UUID.test(r.uuid) && typeof r.timestamp === 'string' && typeof r.size === 'number') return r
  } catch {
    // falls through to the error below
  }
  return stop(bbError('IO_FAILED', `${file} is not revision metadata bbackup can read`, 'move it out of the backup directory (the revision is then treated as incomplete and removed)', { path: file }))
}

/**
 * The revisions of a volume in the order they were made (the ones dated ahead of the clock, `now`,
 * first: a clock that was ahead named them, and those made since it was put right are newer; the
 * newest, `latest`, `0` and the next backup's parent are of those), its unfinished files, and the
 * revisions whose image is gone.
 */
export const readVolume = async (at: Transport, dir: string, now: Date = new Date()): Promise<VolumeContents> => {
  const entries = await must(at.list(dir))
  const names = new Set(entries.map((e) => e.name))
  const revisions: Revision[] = []
  const incomplete: string[] = []
  for (const name of [...names].sort()) {
    const m = OURS.exec(name)
    if (m === null) continue
    const uuid = m[1] ?? ''
    if (m[2] === 'rev') {
      const text = await must(at.readFile(join(dir, name)))
      if (text !== undefined) revisions.push(parseRevision(text, join(dir, name)))
    } else if (m[2] === 'img.partial' || !names.has(`${uuid}.rev`)) {
      incomplete.push(name)
    }
  }
  revisions.sort((a, b) => a.timestamp.localeCompare(b.timestamp))
  const withoutImage = revisions.filter((r) => !names.has(`${r.uuid}.img`)).map((r) => r.uuid)
  return { revisions: madeOrder(revisions.map((r) => ({ r, time: new Date(r.timestamp) })), now.getTime()).map(({ r }) => r), incomplete, withoutImage }
}

export const writeRevision = async (at: Transport, dir: string, revision: Revision): Promise<void> =>
  must(at.writeFileAtomic(paths(dir, revision.uuid).rev, `${JSON.stringify(revision, null, 2)}\n`))

/** Writes a binary file so that a crash leaves the old content or the new: temp, fsync, rename, fsync of the directory. */
export const writeBinaryAtomic = async (path: string, data: Buffer): Promise<void> => {
  const temp = join(dirname(path), `.${basename(path)}.tmp-${randomBytes(4).toString('hex')}`)
  const handle = await fsStep('create', temp, fs.open(temp, 'wx', 0o644))
  try {
    await fsStep('write', temp, handle.writeFile(data))
    await fsStep('flush', temp, handle.sync())
  } finally {
    await handle.close()
  }
  await fsStep('rename', path, fs.rename(temp, path))
  const directory = await fsStep('open', dirname(path), fs.open(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY))
  try {
    await fsStep('flush', dirname(path), directory.sync())
  } finally {
    await directory.close()
  }
}

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex')

/** A revision's chunk hashes, or undefined when the file is missing or does not match the digest its metadata recorded. */
export const readHashes = async (dir: string, revision: Revision): Promise<Buffer | undefined> => {
  const data = await fs.readFile(paths(dir, revision.uuid).hashes).catch(() => undefined)
  return data !== undefined && sha256(data) === revision.hashesDigest ? data : undefined
}

/** Whether a revision recorded chunk `index` as all zeros (its hash slot is 32 zero bytes). */
export const recordedZero = (hashes: Buffer, index: number): boolean => {
  for (let i = index * DIGEST_BYTES; i < (index + 1) * DIGEST_BYTES; i++) if (hashes[i] !== 0) return false
  return true
}

/** Whether `digest` is the hash a revision recorded for chunk `index`. */
export const recordedDigest = (hashes: Buffer, index: number, digest: Buffer): boolean =>
  hashes.compare(digest, 0, DIGEST_BYTES, index * DIGEST_BYTES, (index + 1) * DIGEST_BYTES) === 0

/** Revisions as the schedule sees them. */
export const scheduled = (revisions: readonly Revision[]): ScheduledRevision[] =>
  revisions.map((r) => ({ uuid: r.uuid, timestamp: new Date(r.timestamp), tags: r.tags }))

const newestFirst = (revisions: readonly Revision[]): Revision[] => [...revisions].reverse()

/**
 * The revisions a spec names, newest first: `all`, `latest` (or `last`), `N` (the N-th newest, 0
 * being the newest), a full uuid or a unique prefix of one, or a tag (every revision carrying it).
 */
export const selectRevisions = (spec: string, revisions: readonly Revision[]): Revision[] => {
  const newest = newestFirst(revisions)
  const forms = "a uuid (or a unique start of one), 0 for the newest, 1 for the one before, latest, a tag, or all"
  if (spec.trim() === '') return stop(bbError('SNAPSHOT_NOT_FOUND', 'an empty revision name', `name a revision by ${forms}`, { value: spec }))
  if (newest.length === 0) return stop(bbError('SNAPSHOT_NOT_FOUND', 'the volume has no complete revisions yet', 'make one with bbackup backup -b DIR --force'))
  if (spec === 'all') return newest
  if (spec === 'latest' || spec === 'last') return newest.slice(0, 1)
  const number = /^\d+$/.test(spec)
  // a number is the N-th newest when there is one; a longer one may be the start of a uuid (which can be all digits)
  const nth = number ? newest[Number(spec)] : undefined
  if (nth !== undefined) return [nth]
  const tagged = newest.filter((r) => r.tags.includes(spec))
  if (tagged.length > 0) return tagged
  const matching = newest.filter((r) => r.uuid.startsWith(spec.toLowerCase()))
  if (matching.length === 1) return matching
  if (matching.length > 1) {
    return stop(bbError('SNAPSHOT_NOT_FOUND', `'${spec}' starts ${matching.length} revisions: ${matching.map((r) => r.uuid).join(', ')}`, 'give more of the uuid', { value: spec }))
  }
  if (number) {
    return stop(bbError('SNAPSHOT_NOT_FOUND', `there is no revision ${spec}: the volume has ${newest.length} (0 is the newest), and no uuid starts with it`, `give a number from 0 to ${newest.length - 1}, or more of the uuid`, { value: spec }))
  }
  return stop(bbError('SNAPSHOT_NOT_FOUND', `no revision matches '${spec}'`, `name a revision by ${forms}; bbackup status -b DIR lists them`, { value: spec }))
}
