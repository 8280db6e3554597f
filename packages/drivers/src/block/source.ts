import { randomUUID } from 'node:crypto'
import { promises as fs, type Stats } from 'node:fs'
import { basename, dirname, join, posix } from 'node:path'
import { bbError, formatLocation, parseLocation, stderrTail, type BbError, type Location, type Transport } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { baseSnapshots, formatRbdSource, isRbdSource, parseRbdSource, rbdSize, rbdSnapshots, removeStaleRbdSnapshots, snapshotName, snapshotRbd, type RbdSource } from './rbd.js'
import { fsStep, must, stop } from './stop.js'
import type { Consistency, VolumeConfig } from './volume.js'

/** A volume's source: an image file or device here or over ssh, or a Ceph RBD image. */
export type BlockSource = Location | RbdSource

/**
 * Where a volume's source is: an absolute path on this host, an image or device on another host
 * reached over ssh (`ssh://[user@]host[:port]/path`, `[user@]host:/path`), read as a stream, or a
 * Ceph RBD image (`rbd:POOL/IMAGE`), read here with rbd.
 */
export const sourceLocation = (source: string): Result<BlockSource, BbError> => {
  if (isRbdSource(source)) return parseRbdSource(source)
  const where = parseLocation(source)
  if (where.isErr()) return err(where.error)
  if (where.value.kind === 'rsyncd') return err(bbError('INVALID_LOCATION', `the source ${source} is an rsync daemon module: a block source is a path here or on an ssh host`, 'give /path/to/image here, or ssh://host/path/to/image'))
  if (!where.value.path.startsWith('/')) {
    return err(bbError('INVALID_OPTIONS', `the source ${source} is not an absolute path`, where.value.kind === 'local' ? 'give the full path of the image file or device' : 'write the remote path in full: host:/var/lib/libvirt/images/vm1.img'))
  }
  return ok(where.value)
}

/** The source as volume.json and reports write it. */
export const formatBlockSource = (where: BlockSource): string => (where.kind === 'rbd' ? formatRbdSource(where) : formatLocation(where))

/** The source as it is read for one revision: a frozen copy where one could be made. */
export interface FrozenSource {
  /** what to read: a path on this host, or on `remote` */
  readonly path: string
  /** the host the path is on, when it is not this one: read as a stream */
  readonly remote?: Transport
  /** an RBD image: read by rbd export-diff, of the snapshot made for it (none when read live) */
  readonly rbd?: { readonly source: RbdSource; readonly snapshot?: string }
  readonly size: number
  readonly consistency: Consistency
  readonly warnings: readonly string[]
  /** removes what freezing made; safe to call more than once */
  release(): Promise<void>
  /**
   * Keeps the point-in-time copy (a reflink copy on this host) as the base of the revision it was
   * read into ({@link baseCopy}), in place of the volume's earlier one; nothing to keep otherwise
   */
  keepAsBase(revision: string): Promise<void>
}

/** The prefix of the point-in-time copies this volume makes beside an image file. */
const copyPrefix = (config: VolumeConfig): string => `.${basename(config.source)}.bbackup-${config.id.slice(0, 8)}-`

const BASE = 'base-'
const UUID = /^[0-9a-f-]{36}$/

/**
 * The point-in-time copy the backup of `revision` was read from, kept beside a local image file
 * until the next revision: the blocks the source still shares with it are unchanged, so the next
 * backup need not read them (extents.ts). It costs the space of what changed since.
 */
export const baseCopy = async (config: VolumeConfig, revision: string): Promise<string> => join(await copiesDir(config), baseName(config, revision))

const baseName = (config: VolumeConfig, revision: string): string => `${copyPrefix(config)}${BASE}${revision}`

/**
 * Where the point-in-time copies of a local image file go: beside the file itself, so a source
 * given as a symlink is copied on the filesystem of the image it names (reflinks do not cross
 * filesystems), not beside the link.
 */
export const copiesDir = async (config: VolumeConfig): Promise<string> => dirname(await fs.realpath(config.source).catch(() => config.source))

/** The copies of this volume's pattern (`prefix` then a uuid) among `names`, which nothing else makes. */
const copiesNamed = (names: readonly string[], prefix: string): string[] =>
  names.filter((n) => n.startsWith(prefix) && UUID.test(n.slice(prefix.length)))

/** A base copy kept beside a volume's image ({@link baseCopy}), or the base snapshot of an RBD image. */
export interface KeptBase {
  readonly kind: 'reflink-copy' | 'rbd-snapshot'
  /** the copy's path; the snapshot as `rbd:POOL/IMAGE@SNAP` */
  readonly path: string
  /** the revision that was read from it */
  readonly revision: string
  /** its apparent size; on disk it takes only what the image no longer shares with it */
  readonly size: number
}

/** The base copies of this volume beside its image on this host, or its base snapshot of an RBD image (none for a source on another host). */
export const keptBases = async (at: Transport, config: VolumeConfig): Promise<KeptBase[]> => {
  const where = sourceLocation(config.source)
  if (where.isOk() && where.value.kind === 'rbd') {
    const image = where.value
    // status works while the cluster is away: the snapshots are then not listed
    const snapshots = await rbdSnapshots(at, image).catch(() => [])
    return baseSnapshots(config, snapshots).map((b) => ({ kind: 'rbd-snapshot' as const, path: snapshotName(image, b.name), revision: b.revision, size: b.size }))
  }
  if (where.isErr() || where.value.kind !== 'local') return []
  const dir = await copiesDir(config)
  const prefix = `${copyPrefix(config)}${BASE}`
  const names = await fs.readdir(dir).catch(() => [] as string[])
  const found = await Promise.all(copiesNamed(names, prefix).map(async (n) => {
    const stats = await fs.lstat(join(dir, n)).catch(() => undefined)
    return stats?.isFile() === true ? [{ kind: 'reflink-copy' as const, path: join(dir, n), revision: n.slice(prefix.length), size: stats.size }] : []
  }))
  return found.flat()
}

/** A block device's size from sysfs (a stat of a device says 0). */
const deviceSize = async (path: string, stats: Stats): Promise<number> => {
  const major = Math.floor(stats.rdev / 256) & 0xfff
  const minor = (stats.rdev & 0xff) | (Math.floor(stats.rdev / 4096) & 0xfff00)
  const file = `/sys/dev/block/${major}:${minor}/size`
  const sectors = await fsStep('read the size of', path, fs.readFile(file, 'utf8'))
  return Number(sectors.trim()) * 512
}

/** What kind of source a path is, and its size. */
export const inspectSource = async (path: string): Promise<{ readonly kind: 'file' | 'device'; readonly size: number }> => {
  const stats = await fs.stat(path).catch(() => undefined)
  if (stats === undefined) return stop(bbError('SOURCE_UNAVAILABLE', `the source ${path} does not exist`, 'check the path (a VM image file or a block device); if it moved, edit source in volume.json', { path }))
  if (stats.isFile()) return { kind: 'file', size: stats.size }
  if (stats.isBlockDevice()) return { kind: 'device', size: await deviceSize(path, stats) }
  return stop(bbError('INVALID_OPTIONS', `the source ${path} is neither an image file nor a block device`, 'give the image file or the device of the volume to back up', { path }))
}

/** What is at a path on another host: nothing, an image file or a device (with its size), or something else. */
export type RemoteEntry = { readonly kind: 'missing' } | { readonly kind: 'file' | 'device'; readonly size: number } | { readonly kind: 'other'; readonly type: string }

/**
 * What is at a path on another host (`stat -L`, and `blockdev` for a device: its size). A stat or
 * blockdev that fails for another reason than a missing path is a Stop with `unreadable`'s error.
 */
export const lookRemote = async (at: Transport, path: string, unreadable: (message: string, stderr: string) => BbError): Promise<RemoteEntry> => {
  const where = formatLocation({ ...at.location, path })
  const r = await must(at.exec(['stat', '-L', '-c', '%F:%s', '--', path]))
  if (r.exitCode !== 0) {
    if (/No such file/i.test(r.stderr)) return { kind: 'missing' }
    return stop(unreadable(`cannot look at ${where}: ${stderrTail(r.stderr) || `stat exit ${r.exitCode}`}`, stderrTail(r.stderr)))
  }
  const [type = '', bytes = ''] = r.stdout.trim().split(':')
  if (type.startsWith('regular')) return { kind: 'file', size: Number(bytes) }
  if (type !== 'block special file') return { kind: 'other', type }
  const size = await must(at.exec(['blockdev', '--getsize64', path]))
  if (size.exitCode !== 0 || !/^\d+$/.test(size.stdout.trim())) {
    return stop(unreadable(`cannot read the size of the device ${where}: ${stderrTail(size.stderr) || `blockdev exit ${size.exitCode}`}`, stderrTail(size.stderr)))
  }
  return { kind: 'device', size: Number(size.stdout.trim()) }
}

/** What kind of source a path on another host is, and its size. */
export const inspectRemoteSource = async (at: Transport, path: string): Promise<{ readonly kind: 'file' | 'device'; readonly size: number }> => {
  const where = formatLocation({ ...at.location, path })
  const found = await lookRemote(at, path, (message, stderr) => bbError('SOURCE_UNAVAILABLE', message, 'check the path on that host, and that the ssh user may read it (a device: root, or the disk group)', { path: where, stderr }))
  if (found.kind === 'missing') return stop(bbError('SOURCE_UNAVAILABLE', `the source ${where} does not exist`, 'check the path on that host, and that the ssh user may read it', { path: where }))
  if (found.kind === 'other') return stop(bbError('INVALID_OPTIONS', `the source ${where} is neither an image file nor a block device (it is a ${found.type})`, 'give the image file or the device of the volume to back up', { path: where }))
  return found
}

/**
 * Removes the point-in-time copies an earlier run of this volume left beside its source (it was
 * killed), or the snapshots of an RBD image it read from: only names of this volume's pattern,
 * which nothing else makes. `at` runs commands here; `remote`: the source's host, when it is another.
 */
export const removeStaleCopies = async (at: Transport, config: VolumeConfig, remote?: Transport): Promise<string[]> => {
  const where = sourceLocation(config.source)
  if (where.isOk() && where.value.kind === 'rbd') return removeStaleRbdSnapshots(at, config, where.value)
  const prefix = copyPrefix(config)
  if (remote !== undefined) {
    const dir = posix.dirname(remote.location.path)
    const listed = await remote.list(dir)
    const stale = copiesNamed(listed.isOk() ? listed.value.map((e) => e.name) : [], prefix)
    for (const name of stale) await must(remote.remove(posix.join(dir, name)))
    return stale
  }
  const dir = await copiesDir(config)
  const names = await fs.readdir(dir).catch(() => [] as string[])
  const stale = copiesNamed(names, prefix)
  for (const name of stale) await fsStep('remove', join(dir, name), fs.rm(join(dir, name), { force: true }))
  return stale
}

/**
 * Freezes the source for reading: an image file is reflinked to a private point-in-time copy
 * beside it (btrfs, XFS), on its own host; with `snapshot: 'none'` the live source is read, with a
 * warning. A source that cannot be frozen is refused. `at` runs commands on this host; `remote`
 * is the source's host when it is another (its location is the source).
 */
export const freezeSource = async (at: Transport, config: VolumeConfig, options: { readonly noSnapshot: boolean; readonly signal: AbortSignal | undefined; readonly remote?: Transport | undefined }): Promise<FrozenSource> => {
  const where = await must(sourceLocation(config.source))
  if (where.kind === 'rbd') return freezeRbd(at, config, where, options)
  const { remote } = options
  const source = remote === undefined ? config.source : remote.location.path
  const { kind, size } = remote === undefined ? await inspectSource(source) : await inspectRemoteSource(remote, source)
  const on = remote === undefined ? {} : { remote }
  if (options.noSnapshot || config.snapshot === 'none') {
    return {
      path: source, ...on, size, consistency: 'none', warnings: [`${config.source} was read live, without a snapshot: a VM writing to it meanwhile can leave the revision inconsistent`],
      release: async () => undefined, keepAsBase: async () => undefined,
    }
  }
  if (kind === 'device') {
    return stop(bbError('NO_CONSISTENT_SNAPSHOT', `the block device ${source} cannot be frozen for the backup: bbackup snapshots image files on btrfs or XFS (reflinks) so far`,
      'stop or freeze what writes to it and give --no-snapshot, or back up an image file on btrfs or XFS', { path: source }))
  }
  const copy = posix.join(remote === undefined ? await copiesDir(config) : posix.dirname(source), `${copyPrefix(config)}${randomUUID()}`)
  let made = false
  const release = async (): Promise<void> => {
    if (made) {
      if (remote === undefined) await fs.rm(copy, { force: true })
      // a connection that broke leaves the copy to the next run's removeStaleCopies, and the error that broke it to the report
      else await remote.remove(copy)
    }
    made = false
  }
  const r = await must((remote ?? at).exec(['cp', '--reflink=always', '--', source, copy], options.signal === undefined ? {} : { signal: options.signal }))
  made = r.exitCode === 0 || (remote === undefined ? (await fs.stat(copy).catch(() => undefined)) !== undefined : (await remote.stat(copy)).unwrapOr(undefined) !== undefined)
  if (r.exitCode !== 0) {
    await release()
    return stop(bbError('NO_CONSISTENT_SNAPSHOT', `${config.source} cannot be frozen for the backup: its filesystem makes no reflink copies (${stderrTail(r.stderr) || `cp exit ${r.exitCode}`})`,
      'keep VM images on btrfs or XFS, or stop the VM and give --no-snapshot to read the file live', { path: config.source, stderr: stderrTail(r.stderr) }))
  }
  const frozen = remote === undefined ? await fsStep('stat', copy, fs.stat(copy)) : await inspectRemoteSource(remote, copy)
  const keepAsBase = async (revision: string): Promise<void> => {
    if (!made || remote !== undefined) return
    const base = join(dirname(copy), baseName(config, revision))
    const prefix = `${copyPrefix(config)}${BASE}`
    // read-only, and renamed: from now on only the next backup reads it, and removes it
    await fsStep('protect', copy, fs.chmod(copy, 0o400))
    await fsStep('rename', copy, fs.rename(copy, base))
    made = false
    const names = await fs.readdir(dirname(copy)).catch(() => [] as string[])
    for (const name of copiesNamed(names, prefix).filter((n) => n !== basename(base))) {
      await fsStep('remove', join(dirname(copy), name), fs.rm(join(dirname(copy), name), { force: true }))
    }
  }
  return { path: copy, ...on, size: frozen.size, consistency: 'reflink', warnings: [], release, keepAsBase }
}

/**
 * Freezes an RBD image with `rbd snap create` (crash-consistent, like a power cut; a guest agent's
 * fsfreeze in the pre-snapshot hook makes it application-consistent), or reads it live with
 * `snapshot: 'none'`, with a warning.
 */
const freezeRbd = async (at: Transport, config: VolumeConfig, source: RbdSource, options: { readonly noSnapshot: boolean; readonly signal: AbortSignal | undefined }): Promise<FrozenSource> => {
  const none = async (): Promise<void> => undefined
  if (options.noSnapshot || config.snapshot === 'none') {
    return {
      path: formatRbdSource(source), rbd: { source }, size: await rbdSize(at, source), consistency: 'none',
      warnings: [`${config.source} was read live, without a snapshot: a VM writing to it meanwhile can leave the revision inconsistent`], release: none, keepAsBase: none,
    }
  }
  const snapshot = await snapshotRbd(at, config, source, options.signal)
  return {
    path: snapshotName(source, snapshot.snapshot), rbd: { source, snapshot: snapshot.snapshot }, size: snapshot.size, consistency: 'rbd-snapshot', warnings: [],
    release: () => snapshot.release(), keepAsBase: (revision) => snapshot.keepAsBase(revision),
  }
}

/**
 * The transport of the source's host when it is another: the one given, which must be there. A
 * local source needs none (one given is refused: it would be read from the wrong place).
 */
export const sourceHostOf = async (config: VolumeConfig, given: Transport | undefined): Promise<Transport | undefined> => {
  const where = await must(sourceLocation(config.source))
  if (where.kind === 'local' || where.kind === 'rbd') {
    if (given !== undefined && given.location.kind !== 'local') {
      return stop(bbError('INVALID_OPTIONS', `the volume's source ${config.source} is ${where.kind === 'rbd' ? 'read by rbd on this host' : 'on this host'}, but a transport to ${formatLocation(given.location)} was given`, 'back it up without a source transport'))
    }
    return undefined
  }
  if (given === undefined || given.location.kind !== 'ssh' || given.location.host !== where.host || given.location.path !== where.path) {
    return stop(bbError('INVALID_OPTIONS', `the volume's source ${config.source} is on another host: the backup needs a transport that reaches it`,
      `pass sourceHost: sshTransport(<the location of ${config.source}>, session) (the bbackup command makes it from volume.json)`))
  }
  return given
}
