import { statfs } from 'node:fs/promises'
import { posix } from 'node:path'
import { err, errAsync, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import {
  bbError, compareSnapshots, formatLocation, InternalError, parseLocation, parseSnapshotName, progressMeter, sameSnapshot, statGiven, stderrTail, type BbError, type DiffEntry, type DiffInput, type Driver, type Incremental, type RestoreInput,
  type SharedTransferInput, type SnapshotIdentity, type SnapshotInfo, type Transport, type TransferInput, type TransferOutcome, type VerifyInput, type VerifyOutcome,
} from '@bb/core'
import {
  btrfsFailure, compressedMount, isGarbled, isReceived, listSubvolumes, madeWritable, nestedSubvolumes, parseSubvolumeShow, readSubvolumes, refuseExisting, showAndCommit, showInBatch, showSubvolume, swapFilesIn, throughMountOf, type NestedSubvolume, type NoSubvolume, type Subvolume,
} from './subvolume.js'
import { backupSubpath, findInBackup } from '../backup-subpath.js'
import { nearestExisting, restoreDirectory } from '../restore-destination.js'
import { pathIn } from '../target-in-source.js'
import { endpointIo, rsyncHost, rsyncMissingThere } from '../rsync-between.js'
import { itemizedLine } from '../rsync/itemized.js'
import { receiverStartsFirst, sendReceive } from './pipeline.js'
import { streamPlanner, type StreamPlan, type StreamWay } from '../stream-way.js'
import { pipeStore, type PipeTargetOptions } from './pipe.js'
import { rawStore, type RawTargetOptions } from './raw.js'
import { estimateSend, noEstimate, type SendEstimate } from './progress.js'
import { readSendStream, SEND_COMMANDS } from './send-stream.js'
import { StreamDiff } from './stream-diff.js'
import { newestSnapperSnapshot, noSnapper, snapperNumberIn } from './snapper.js'

const join = posix.join

/** the snapshot folder's default in snapper mode, inside the source: `.snapshots` is snapper's */
const SNAPPER_MODE_FOLDER = '.bbackup-snapshots'

/** what statfs(2) says of a path on btrfs (linux/magic.h) */
const BTRFS_SUPER_MAGIC = 0x9123683e

export interface BtrfsDriverOptions {
  /** where the source's snapshots live: absolute, or relative to the source subvolume (default `.snapshots`) */
  readonly snapshotFolder?: string
  /**
   * the send stream version: `'auto'` (default) uses 2 when the sending kernel and btrfs-progs on
   * both ends support it, else 1
   */
  readonly sendProtocol?: 'auto' | 1 | 2
  /** send compressed extents as they are (`--compressed-data`); default: whenever protocol 2 is used */
  readonly compressedData?: boolean
  /** stop a transfer whose stream has not moved for this long (STALLED, retried); default 600 */
  readonly stallTimeoutSeconds?: number
  /** targets that keep the send streams as files instead of receiving them (btrbk's `target raw`) */
  readonly raw?: RawTargetOptions
  /** targets whose streams go to a command of yours, with a ledger of what it took (btrfs-backup's `shell://`) */
  readonly pipe?: PipeTargetOptions
  /**
   * `zstd`: a stream that goes from one host to another is compressed on the sending host and
   * decompressed on the receiving one, when zstd is on both (else it goes as it is, with a warning);
   * default `none`
   */
  readonly streamCompress?: 'zstd' | 'none'
  /** at most this many bytes a second on the way (after compression); default: no limit */
  readonly rateLimit?: number
  /**
   * The source is a directory of backups (or of snapshots), not a subvolume to snapshot (btrbk's
   * `archive`): its read-only subvolumes are what is sent, in the directory
   * itself (no snapshot folder). It is never snapshotted, and nothing in it is told apart as
   * another subvolume's: the job's prefix says which are its (`archive` of @bb/core).
   */
  readonly backupsAtSource?: boolean
  /**
   * The source's snapshots are taken by snapper (`<source>/.snapshots/N/snapshot`, with its
   * `info.xml`): a run takes none of the live source, it takes over snapper's newest snapshot when
   * that is newer than the job's last (a read-only snapshot of it in the snapshot folder, named for
   * snapper's date) and sends that. Snapper's own snapshots are only read, never deleted. The
   * snapshot folder defaults to `.bbackup-snapshots` inside the source (`.snapshots` is snapper's).
   */
  readonly snapper?: boolean
  /**
   * btrbk's `snapshot_create`: `onchange` takes a snapshot only when the source changed since the
   * job's newest snapshot (else none is taken, and the targets get what they lack); `always`
   * (default) takes one on every run. Not with `snapper` (snapper takes the snapshots).
   */
  readonly snapshotCreate?: 'always' | 'onchange'
  /**
   * btrbk's `incremental`: `yes` (default) sends in full where the target shares no snapshot with
   * the source, `no` sends every snapshot in full, `strict` never sends in full (a new target, or
   * one that lost its parent, fails with FULL_SEND_REFUSED; nor is a full stream sent where the
   * target refused an incremental one). The parents are always snapshots of the source's own
   * subvolume, so strict's other rule (a related parent) holds by construction.
   */
  readonly incremental?: Incremental
}

/** The oldest btrfs-progs whose `subvolume show` and `receive` behave as this driver expects. */
const MIN_PROGS = [5, 0] as const
/**
 * btrfs receive could not make the subvolume (`ERROR: creating subvolume NAME failed: …`, or
 * `creating snapshot PARENT -> NAME failed: …`): it created nothing. btrfs-progs is not
 * translated; only the reason after the colon follows the locale.
 */
const RECEIVE_CREATE_FAILED = /ERROR: creating (subvolume|snapshot) .* failed:/
/** btrfs-progs that can send and receive stream version 2 */
const PROTO2_PROGS = [6, 0] as const

const atLeast = (v: readonly [number, number], min: readonly [number, number]): boolean => v[0] > min[0] || (v[0] === min[0] && v[1] >= min[1])

const signalOpt = (signal: AbortSignal | undefined): { signal?: AbortSignal } => (signal === undefined ? {} : { signal })

/**
 * `btrfs receive -e DIR`: it ends at the stream's end marker instead of at the end of its stdin
 * (btrfs-progs reads the stream exactly, never past that marker), so an ssh target can carry the
 * stream in the connection's own session and go on with the next command after it.
 */
const receiving = (dir: string): string[] => ['btrfs', 'receive', '-e', dir]

/**
 * btrfs snapshots with send/receive: the source subvolume is snapshotted read-only into its
 * snapshot folder, and each snapshot is sent to the targets, incrementally against the newest
 * snapshot both sides hold. A backup is identified by its received uuid, never by its name; a
 * receive that died midway (writable, no received uuid) is removed only when the journal says this
 * job was receiving it.
 * @example
 * import { btrfsDriver } from '@bb/drivers/btrfs'
 * const driver = btrfsDriver({ snapshotFolder: '/home/.snapshots' })
 */
export const btrfsDriver = (options: BtrfsDriverOptions = {}): Driver => {
  const atSource = options.backupsAtSource === true
  const snapper = options.snapper === true
  const folderOf = (source: Transport): string => posix.resolve(source.location.path, atSource ? '.' : options.snapshotFolder ?? (snapper ? SNAPPER_MODE_FOLDER : '.snapshots'))
  /** btrfs-progs by host: a source and a target on one host ask once */
  const versions = new Map<string, ResultAsync<readonly [number, number], BbError>>()
  const hostOf = (t: Transport): string => formatLocation({ ...t.location, path: '/' })
  /** both on this host, or both on the same other one (where a command can see both paths) */
  const oneHost = (a: Transport, b: Transport): boolean => a.location.kind === b.location.kind && hostOf(a) === hostOf(b)
  const stallMs = (options.stallTimeoutSeconds ?? 600) * 1000
  const rawLocations = new Set((options.raw?.targets ?? []).map((t) => parseLocation(t, { cwd: '/' }).map(formatLocation).unwrapOr(t)))
  /** a target configured to keep stream files */
  const isRaw = (t: Transport): boolean => rawLocations.has(formatLocation(t.location))
  /** a pipe target: its location is its ledger on this host */
  const isPipe = (t: Transport): boolean => t.location.kind === 'local' && (options.pipe?.targets ?? []).some((p) => p.ledger === t.location.path)
  const limited: StreamPlan = { ...(options.rateLimit === undefined ? {} : { rateLimit: options.rateLimit }), warnings: [] }
  const planStream = streamPlanner(options)
  /** a pipeline as the report shows it, with the stream's zstd on both sides */
  const shown = (sendArgv: readonly string[], receiveArgv: readonly string[], way: StreamWay): string[] =>
    way.compress === undefined ? [...sendArgv, '|', ...receiveArgv] : [...sendArgv, '|', 'zstd', '-cq', '-T0', '|', 'zstd', '-dcq', '|', ...receiveArgv]
  const pipe = pipeStore({
    options: options.pipe ?? { targets: [] },
    stallMs,
    sendFlags: (source, signal) => sendFlags(source, [], signal),
    planStream,
    shown,
  })
  const raw = rawStore({
    options: options.raw ?? { targets: [] },
    stallMs,
    planStream,
    shown,
    sendFlags: (source, signal) => sendFlags(source, [], signal),
    removeGarbled: (at, path) => removeGarbled(at, path, undefined),
    restoreDestination: (to, make) => restoreDestination(to, make),
  })

  /** what `btrfs --version` said: the version, or why it will not do */
  const readVersion = (exitCode: number, output: string): Result<readonly [number, number], BbError> => {
    const m = /v(\d+)\.(\d+)/.exec(output)
    if (exitCode !== 0 || m === null) return err(bbError('TOOL_MISSING', 'btrfs --version failed', 'install btrfs-progs: apt-get install btrfs-progs', { stderr: output }))
    const v: readonly [number, number] = [Number(m[1]), Number(m[2])]
    if (!atLeast(v, MIN_PROGS)) {
      return err(bbError('TOOL_TOO_OLD', `btrfs-progs ${v.join('.')} is too old (bbackup needs ${MIN_PROGS.join('.')} or newer)`, 'upgrade btrfs-progs (Debian 11 and later ship a new enough one)', { version: v.join('.') }))
    }
    return ok(v)
  }

  /** btrfs-progs at a place, once per host (`found`: an answer already read, from a probe's batch) */
  const progsVersion = (at: Transport, signal: AbortSignal | undefined, found?: Result<readonly [number, number], BbError>): ResultAsync<readonly [number, number], BbError> => {
    const host = hostOf(at)
    const known = versions.get(host)
    if (known !== undefined) return known
    const asked: ResultAsync<readonly [number, number], BbError> = found !== undefined
      ? (found.isOk() ? okAsync(found.value) : errAsync(found.error))
      : at.exec(['btrfs', '--version'], signalOpt(signal)).andThen((r) => readVersion(r.exitCode, `${r.stdout}${r.exitCode === 0 ? '' : r.stderr}`))
    // a failure is not cached: the next call asks again
    const settled = asked.orElse((e) => {
      versions.delete(host)
      return err(e)
    })
    versions.set(host, settled)
    return settled
  }

  const probe: Driver['probe'] = ({ source, targets, signal, transferFollows }) => {
    // at the same time, each a command (a round trip on a remote host); a version error comes first
    if (targets.length === 0 && atSource) return ResultAsync.combine([progsVersion(source, signal), probeBackups(source)] as const).map(() => undefined)
    if (targets.length === 0) {
      const show = showInBatch(source.location.path)
      // on another host both in one round trip
      const batch = source.location.kind === 'local' ? undefined : source.execEach?.([['btrfs', '--version'], show.argv], signalOpt(signal))
      // a snapshot folder of the user's choosing is checked before a dry run or a doctor says all is well
      const chosen = (): ResultAsync<unknown, BbError> => (options.snapshotFolder === undefined ? okAsync(undefined) : new ResultAsync(folderFits(source, folderOf(source))))
      // in snapper mode, the snapshots snapper keeps in the source
      const folder = (): ResultAsync<unknown, BbError> => chosen().andThen(() => (!snapper ? okAsync(undefined)
        : source.stat(join(source.location.path, '.snapshots')).andThen((s) => (s?.kind === 'directory' ? okAsync(undefined) : errAsync(noSnapper(source.location.path))))))
      if (batch === undefined) return ResultAsync.combine([progsVersion(source, signal), probeSource(source, signal)] as const).andThen(folder).map(() => undefined)
      return batch.andThen(([version, shown]) => {
        if (version === undefined || shown === undefined) throw new InternalError('execEach gave fewer results than commands')
        return progsVersion(source, signal, readVersion(version.exitCode, version.output)).andThen(() => sourceFound(source.location.path, show.read(shown)))
      }).andThen(folder).map(() => undefined)
    }
    // the target's directory is made only for a backup that sends into it (not a dry run, not a doctor's check)
    const make = transferFollows === true
    const probeOne = (t: Transport): ResultAsync<unknown, BbError> => {
      if (isPipe(t)) return new ResultAsync(pipe.probe(t))
      if (isRaw(t)) return new ResultAsync(raw.probe(t, source, signal, make))
      if (t.location.kind === 'local') return ResultAsync.combine([progsVersion(t, signal), notTheSource(source, t).andThen(() => probeTarget(t, make))] as const)
      return notTheSource(source, t).andThen(() => {
        // the receive's session opens now (where the stream will take it): its login on that host runs while the run lists and snapshots
        if (transferFollows === true && receiverStartsFirst(source, options.rateLimit)) t.prepareSpawn?.({ selfDelimited: options.streamCompress !== 'zstd' })
        // on another host the version and the target's directory in one round trip
        return probeRemoteTarget(t, signal, make)
      })
    }
    return ResultAsync.combine(targets.map(probeOne)).map(() => undefined)
  }

  /**
   * A target that is the source subvolume or its snapshot folder, on the source's host, is refused
   * before anything is received: there a backup would be no copy at all (or collide with the
   * snapshot it is received from).
   */
  const notTheSource = (source: Transport, target: Transport): ResultAsync<void, BbError> => {
    const dir = target.location.path
    // on one remote host the paths as written (symlinks are that host's to resolve)
    const sameHost = source.location.kind !== 'local' && hostOf(source) === hostOf(target)
    if (source.location.kind !== target.location.kind || (source.location.kind !== 'local' && !sameHost)) return okAsync(undefined)
    const written = async (outer: string): Promise<string | undefined> => (posix.resolve(outer) === posix.resolve(dir) ? '' : undefined)
    const where = sameHost ? written : (outer: string) => pathIn(outer, dir)
    return ResultAsync.fromSafePromise(Promise.all([where(source.location.path), where(folderOf(source))]))
      .andThen(([inSource, inFolder]): Result<void, BbError> => {
        if (inSource === '') {
          return err(bbError('INVALID_OPTIONS', `the target ${dir} is the source subvolume itself: a backup must be received somewhere else`,
            'give a directory on another btrfs filesystem (a backup disk), or at least outside the source', { path: dir }))
        }
        if (inFolder === '') {
          return err(bbError('INVALID_OPTIONS', `the target ${dir} is the snapshot folder: the snapshots are kept there already, a backup is a copy of them received somewhere else`,
            'give a directory on another btrfs filesystem (a backup disk); the snapshot folder is --snapshot-folder', { path: dir }))
        }
        return ok(undefined)
      })
  }

  /** a source of backups ({@link BtrfsDriverOptions.backupsAtSource}): a directory on btrfs */
  const probeBackups = (source: Transport): ResultAsync<void, BbError> => {
    const dir = source.location.path
    return ResultAsync.combine([source.stat(dir), fsType(source, dir)] as const).andThen(([s, type]): Result<void, BbError> => {
      if (s === undefined) return err(bbError('SOURCE_UNAVAILABLE', `${dir} does not exist`, 'check the path (is the backup disk mounted?)', { path: dir }))
      if (s.kind !== 'directory') return err(bbError('SOURCE_UNAVAILABLE', `${dir} is not a directory`, 'give the directory that holds the backups', { path: dir }))
      if (type !== 'btrfs') {
        return err(bbError('SOURCE_NOT_SUBVOLUME', `${dir} is not on a btrfs filesystem${type === '' ? '' : ` (it is ${type})`}: it holds no btrfs backups to send`, 'give the directory on the backup disk that holds the received backups (is the disk mounted?)', { path: dir }))
      }
      return ok(undefined)
    })
  }

  /**
   * `btrfs subvolume show` of the source; one asked for while another is under way gets that one's
   * answer (a run asks twice at once: its probe, and its listing of the snapshot folder).
   */
  const sourceShows = new Map<string, ResultAsync<Subvolume | NoSubvolume, BbError>>()
  const showSource = (source: Transport, signal: AbortSignal | undefined): ResultAsync<Subvolume | NoSubvolume, BbError> => {
    const key = `${hostOf(source)}${source.location.path}`
    const going = sourceShows.get(key)
    if (going !== undefined) return going
    const asked = showSubvolume(source, source.location.path, signal)
    sourceShows.set(key, asked)
    void asked.then(() => sourceShows.delete(key))
    return asked
  }

  const probeSource = (source: Transport, signal: AbortSignal | undefined): ResultAsync<void, BbError> =>
    showSource(source, signal).andThen((s) => sourceFound(source.location.path, ok(s)))

  /** the source must be a subvolume: what `btrfs subvolume show` said of it */
  const sourceFound = (path: string, shown: Result<Subvolume | NoSubvolume, BbError>): Result<void, BbError> =>
    shown.andThen((s): Result<void, BbError> => {
      if (typeof s !== 'string') return ok(undefined)
      if (s === 'missing') return err(bbError('SOURCE_UNAVAILABLE', `the source ${path} does not exist`, 'check the path (is the filesystem mounted?)', { path }))
      if (s === 'not-btrfs') {
        return err(bbError('SOURCE_NOT_SUBVOLUME', `the source ${path} is not on a btrfs filesystem`, 'back it up with the rsync driver (--driver rsync), or move the data onto btrfs', { path }))
      }
      return err(bbError('SOURCE_NOT_SUBVOLUME', `the source ${path} is a directory, not a btrfs subvolume: it cannot be snapshotted`,
        `convert it: btrfs subvolume create ${path}.new && cp -a --reflink=always ${path}/. ${path}.new/ && mv ${path} ${path}.old && mv ${path}.new ${path}; or back it up with --driver rsync`, { path }))
    })

  /**
   * The target directory must be on btrfs. A missing one is created only when its parent is on
   * btrfs: a parent on another filesystem is most often the mount point of a disk that is not mounted.
   */
  const probeTarget = (target: Transport, make: boolean): ResultAsync<void, BbError> =>
    // the filesystem is asked with the stat, not after it: one round trip less on a remote host
    ResultAsync.combine([statGiven(target, target.location.path, 'target'), fsType(target, target.location.path)] as const)
      .andThen(([s, type]) => targetFound(target, s === undefined ? 'missing' : s.kind === 'directory' ? 'directory' : 'other', type, make))

  /** `btrfs --version`, the filesystem and the kind of the target's directory (a symbolic link followed), in one round trip */
  const probeRemoteTarget = (target: Transport, signal: AbortSignal | undefined, make: boolean): ResultAsync<unknown, BbError> => {
    const dir = target.location.path
    const asked = target.execEach?.([['btrfs', '--version'], ['stat', '-f', '-c', '%T', dir], ['stat', '-L', '-c', '%F', '--', dir]], signalOpt(signal))
    if (asked === undefined) return ResultAsync.combine([progsVersion(target, signal), probeTarget(target, make)] as const)
    return asked
      .andThen(([version, fs, kind]) => {
        if (version === undefined || fs === undefined || kind === undefined) throw new InternalError('execEach gave fewer results than commands')
        const type = fs.exitCode === 0 ? fs.output.trim() : ''
        return progsVersion(target, signal, readVersion(version.exitCode, version.output))
          .andThen(() => (kind.exitCode === 0
            ? targetFound(target, kind.output.trim() === 'directory' ? 'directory' : 'other', type, make)
            // nothing there, or a symbolic link to nothing (a disk not mounted there): one more look tells which
            : statGiven(target, dir, 'target').andThen(() => targetFound(target, 'missing', type, make))))
      })
  }

  /** the filesystem `path` is on, as `stat -f -c %T` names it ('' when it cannot tell) */
  const fsType = (target: Transport, path: string): ResultAsync<string, BbError> => {
    const named = (): ResultAsync<string, BbError> => target.exec(['stat', '-f', '-c', '%T', path]).map((r) => (r.exitCode === 0 ? r.stdout.trim() : ''))
    if (target.location.kind !== 'local') return named()
    // on this host statfs(2) tells btrfs without a process; only another filesystem's name (for the error) is asked of stat
    return ResultAsync.fromSafePromise(statfs(path).then((s) => s.type === BTRFS_SUPER_MAGIC, () => false)).andThen((btrfs) => (btrfs ? okAsync('btrfs') : named()))
  }

  /** the target's directory: there on btrfs, or made where its parent is on btrfs (`make`; else it would be) */
  const targetFound = (target: Transport, kind: 'directory' | 'other' | 'missing', type: string, make: boolean): ResultAsync<void, BbError> => {
    const dir = target.location.path
    const notBtrfs = (found: string, path: string): BbError => bbError('TARGET_NOT_BTRFS', `the target ${path} is not on a btrfs filesystem${found === '' ? '' : ` (it is ${found})`}: btrfs receive needs one`,
      'is the backup disk mounted? Give a directory on a btrfs filesystem, or use the rsync driver (--driver rsync) for this target', { path: dir })
    if (kind === 'directory') return type === 'btrfs' ? okAsync(undefined) : errAsync(notBtrfs(type, dir))
    if (kind === 'other') return errAsync(bbError('TARGET_UNAVAILABLE', `the target ${dir} is not a directory`, 'give a directory on a btrfs filesystem to receive the backups in', { path: dir }))
    const parent = posix.dirname(dir)
    return target.stat(parent).andThen((p): ResultAsync<void, BbError> => {
      if (p?.kind !== 'directory') {
        return errAsync(bbError('TARGET_UNAVAILABLE', `the target ${dir} does not exist, nor does its parent`, 'mount the backup disk, or create the directory (mkdir -p) if this is the right place', { path: dir }))
      }
      return fsType(target, parent).andThen((found) => (found !== 'btrfs' ? errAsync(notBtrfs(found, parent)) : make ? target.mkdir(dir) : okAsync(undefined)))
    })
  }

  const listSnapshots: Driver['listSnapshots'] = ({ at, side, signal }) => {
    const onSource = side === 'source'
    if (!onSource && isPipe(at)) return new ResultAsync(pipe.list(at))
    if (!onSource && isRaw(at)) return new ResultAsync(raw.list(at))
    const dir = onSource ? folderOf(at) : at.location.path
    // on another host, the subvolume lists are asked for once the login says whether it runs them,
    // in the round trip of the folder's listing, not after it (most folders hold several snapshots)
    const login = at.location.kind !== 'local' ? at.connect?.(signal).then(() => true, () => false) : undefined
    const lists = login?.then((loggedIn) => (loggedIn ? listSubvolumes(at, dir, signal) : undefined))
    // at the source, which subvolume it is: a snapshot in the folder taken of another one (a source
    // that shares the folder and the prefix) is marked, and never this job's to count, send or delete
    // (in snapper mode every snapshot here is one of snapper's taken over: none is of the source itself)
    const ofSource = !onSource || atSource || snapper ? undefined : login === undefined ? sourceShown(at, signal) : login.then((loggedIn) => (loggedIn ? sourceShown(at, signal) : undefined))
    return at.list(dir)
      .orElse((e) => {
        // a snapshot folder that is a file (or under one) says so
        if (e.code !== 'NOT_FOUND') return onSource ? new ResultAsync(nearestExisting(at, dir)).andThen((found) => errAsync(found.kind === 'directory' ? e : notAFolder(dir, found.at))) : errAsync(e)
        // no snapshot folder yet: no snapshots; a missing target is a problem to report
        return onSource ? okAsync([]) : errAsync(bbError('TARGET_UNAVAILABLE', `the target ${dir} does not exist`, 'check the path (is the disk mounted?)', { path: dir }))
      })
      .andThen((entries) => {
        // only names bbackup (or a tool it adopts) writes: anything else in the folder is never looked at, nor touched
        const named = entries.filter((e) => e.kind === 'directory').map((e) => ({ name: e.name, parsed: parseSnapshotName(e.name) })).filter((e) => e.parsed !== undefined)
        return readSubvolumes(at, dir, named.map((e) => e.name), signal, lists).map((found) => named.map((e) => ({ ...e, subvolume: found.get(e.name) })))
      })
      .map((found) => found
        .filter((f): f is typeof f & { subvolume: Subvolume } => f.subvolume !== undefined)
        .sort((a, b) => compareSnapshots(
          { name: a.name, time: a.parsed?.time ?? new Date(0), sequence: a.parsed?.sequence ?? 0 },
          { name: b.name, time: b.parsed?.time ?? new Date(0), sequence: b.parsed?.sequence ?? 0 },
        ))
        .map((f): SnapshotInfo => ({
          name: f.name,
          time: f.parsed?.time,
          // at the source a snapshot is complete once read-only; at a target once received whole
          complete: onSource ? f.subvolume.readOnly : isReceived(f.subvolume),
          health: 'ok',
          path: join(dir, f.name),
          identity: identityOf(f.subvolume),
          ...(!onSource && madeWritable(f.subvolume) ? { altered: MADE_WRITABLE } : {}),
        })))
      .andThen((found) => ResultAsync.fromSafePromise(ofSource ?? Promise.resolve(undefined)).map((source) => {
        if (source === undefined) return found
        // the source's own, and (a source rolled back to one of the snapshots here) those of the subvolume it replaced
        const rolledBackFrom = found.find((s) => s.identity?.uuid === source.parentUuid)?.identity?.parentUuid
        const family = new Set([source.uuid, ...(rolledBackFrom === undefined ? [] : [rolledBackFrom])])
        return found.map((s) => {
          const of = s.identity?.parentUuid
          return of === undefined || family.has(of) ? s : { ...s, otherSubvolume: of }
        })
      }))
  }

  /** the source subvolume; undefined where it cannot be told (gone, not a subvolume, a failure: then no snapshot is marked another's) */
  const sourceShown = async (source: Transport, signal: AbortSignal | undefined): Promise<Subvolume | undefined> =>
    (await showSource(source, signal)).match((s) => (typeof s === 'string' ? undefined : s), () => undefined)

  /**
   * The read-only subvolume the source was made from, outside the snapshot folder: up the source's
   * `Parent UUID`s (`btrfs subvolume show -u`) past writable ones (a `.writable` snapshotted in
   * turn), at most a few, to the first read-only one, seen through the snapshot folder's mount
   * (`btrfs send -p` wants it there). Only where any command may run (this host, a login shell):
   * a forced command allows no `show -u` nor the mount table.
   */
  const origin: NonNullable<Driver['origin']> = async ({ source, signal }) => {
    if (atSource) return undefined
    if (source.location.kind !== 'local' && source.unrestricted?.() !== true) return undefined
    const opts = signalOpt(signal)
    const byUuid = async (uuid: string): Promise<Subvolume | undefined> =>
      (await source.exec(['btrfs', 'subvolume', 'show', '-u', uuid, source.location.path], opts)).match((r) => (r.exitCode === 0 ? parseSubvolumeShow(r.stdout) : undefined), () => undefined)
    const [from, mountinfo] = await Promise.all([
      sourceShown(source, signal),
      source.exec(['cat', '/proc/self/mountinfo'], opts).match((r) => (r.exitCode === 0 ? r.stdout : undefined), () => undefined),
    ])
    let uuid = from?.parentUuid
    for (let step = 0; uuid !== undefined && mountinfo !== undefined && step < 8; step++) {
      const up = await byUuid(uuid)
      if (up === undefined) return undefined
      if (!up.readOnly) {
        uuid = up.parentUuid
        continue
      }
      const path = up.fsPath === undefined ? undefined : throughMountOf(mountinfo, folderOf(source), up.fsPath)
      // the path is the subvolume itself only when it says so (a mount over the way, a symlink)
      const there = path === undefined ? undefined : (await showSubvolume(source, path, signal)).unwrapOr(undefined)
      if (path === undefined || typeof there !== 'object' || there.uuid !== up.uuid) return undefined
      const name = posix.basename(path)
      return { name, time: parseSnapshotName(name)?.time, complete: true, health: 'ok', path, identity: identityOf(up) }
    }
    return undefined
  }

  const createSnapshot: NonNullable<Driver['createSnapshot']> = ({ source, name, from, dryRun, signal }) => {
    const folder = folderOf(source)
    const path = join(folder, name)
    const argv = ['btrfs', 'subvolume', 'snapshot', '-r', from ?? source.location.path, path]
    const planned: SnapshotInfo = { name, time: parseSnapshotName(name)?.time, complete: true, health: 'ok', path }
    if (atSource) return errAsync(bbError('INVALID_OPTIONS', `${source.location.path} holds backups: it is never snapshotted`, 'send its backups with snapshot: false (bbackup archive)', { path: source.location.path }))
    if (snapper && from === undefined) {
      return errAsync(bbError('INVALID_OPTIONS', `snapper takes the snapshots of ${source.location.path}: bbackup takes none of the live source`, 'take one with snapper (snapper -c NAME create), or leave the snapper setting out', { path: source.location.path }))
    }
    return notSnappers(source, folder, name).andThen(() => {
      if (dryRun) return okAsync(planned)
      return taken(source, folder, path, argv, planned, signal)
    })
  }

  /**
   * The default snapshot folder `.snapshots` is snapper's where snapper manages the source
   * (openSUSE's `/`): bbackup's snapshots are not put among snapper's there, unless the job's chain
   * is there already (taken before bbackup looked). A folder of the user's choosing is theirs.
   */
  const notSnappers = (source: Transport, folder: string, name: string): ResultAsync<void, BbError> => {
    if (options.snapshotFolder !== undefined || snapper || atSource) return okAsync(undefined)
    const prefix = parseSnapshotName(name)?.prefix
    return source.list(folder)
      .orElse((e) => (e.code === 'NOT_FOUND' ? okAsync([]) : errAsync(e)))
      .andThen((entries) => {
        if (prefix !== undefined && entries.some((e) => e.kind === 'directory' && parseSnapshotName(e.name)?.prefix === prefix)) return okAsync(undefined)
        return new ResultAsync(snapperNumberIn(source, folder, entries)).andThen((number) => (number === undefined ? ok(undefined)
          : err(bbError('INVALID_OPTIONS', `${folder} is snapper's snapshot folder (its snapshot ${number} is there): bbackup does not put its snapshots among snapper's`,
            'send the snapshots snapper takes (--snapper; snapper = true in a config), or keep bbackup\'s own in a folder of their own (--snapshot-folder .bbackup-snapshots)', { path: folder }))))
      })
  }

  /** the read-only snapshot `path` of the source, taken into `folder` (made where missing) */
  const taken = (source: Transport, folder: string, path: string, argv: readonly string[], planned: SnapshotInfo, signal: AbortSignal | undefined): ResultAsync<SnapshotInfo, BbError> =>
    new ResultAsync(makeFolder(source, folder))
      .andThen((made) => source.exec(argv, signalOpt(signal)).andThen((r) => {
        if (r.exitCode === 0) return okAsync(undefined)
        return ResultAsync.fromSafePromise((async () => {
          // the name was free when it was chosen: something that appeared there since (a snapshot
          // another run of this source took in the same second) made btrfs fail, or try to snapshot
          // into it (read-only: EROFS), and is not the source's
          const there = await source.stat(path)
          // ETXTBSY: btrfs does not snapshot a subvolume with an active swap file in it
          const swapFiles = /Text file busy/i.test(r.stderr) ? swapFilesIn((await source.readFile('/proc/swaps')).unwrapOr(undefined) ?? '', source.location.path) : []
          const failure = there.isOk() && there.value !== undefined
            ? bbError('ALREADY_EXISTS', `taking the snapshot ${path}: something of that name appeared there meanwhile (another run of this source, in the same second?)`, 'run again: the next run chooses a free name', { argv, stderr: r.stderr, path })
            : /cross-device|not a btrfs filesystem/i.test(r.stderr)
              ? bbError('INVALID_OPTIONS', `the snapshot folder ${folder} is not on the source's btrfs filesystem (${source.location.path}): a snapshot stays on its subvolume's filesystem`, 'choose a snapshot folder on the source\'s filesystem (--snapshot-folder; the default is .snapshots inside the source)', { argv, stderr: r.stderr })
              : /Text file busy/i.test(r.stderr)
                ? bbError('SOURCE_UNAVAILABLE', `btrfs cannot snapshot ${source.location.path} while a swap file in it is in use (${swapFiles.length > 0 ? swapFiles.join(', ') : 'see swapon --show'}): "Text file busy"`,
                  `move the swap file into a subvolume of its own, which snapshots leave out: swapoff ${swapFiles[0] ?? 'FILE'}; btrfs subvolume create ${posix.join(source.location.path, 'swap')}; btrfs filesystem mkswapfile --size 4g ${posix.join(source.location.path, 'swap/swapfile')}; swapon it (and name it in /etc/fstab)`, { argv, stderr: r.stderr, ...(swapFiles.length > 0 ? { path: swapFiles[0] } : {}) })
                : btrfsFailure(`taking the snapshot ${path}`, argv, r.exitCode, r.stderr)
          // the folders this run made are removed again (empty, as made): a failed run leaves nothing
          for (const dir of [...made].reverse()) await source.exec(['rmdir', '--', dir])
          return failure
        })()).andThen((failure) => errAsync(failure))
      }))
      .andThen(() => showSubvolume(source, path, signal))
      .andThen((s) => (typeof s === 'string'
        ? err(bbError('COMMAND_FAILED', `the snapshot ${path} is not there after btrfs subvolume snapshot`, 'check the source filesystem (dmesg)', { path }))
        : ok({ ...planned, identity: identityOf(s) })))

  /** snapper's newest snapshot, when it is newer than every one the job took over ({@link BtrfsDriverOptions.snapper}) */
  const adoptable: NonNullable<Driver['adoptable']> = ({ source, snapshots, signal }) => new ResultAsync((async () => {
    const found = await newestSnapperSnapshot(source, source.location.path, signal)
    if (found.isErr() || found.value === undefined) return found.map(() => undefined)
    const newest = found.value
    // taken over already: a snapshot of it is here, or one as new (the one of it a retention kept)
    const taken = snapshots.some((s) => s.identity?.parentUuid === newest.uuid || (s.time !== undefined && s.time.getTime() >= newest.date.getTime()))
    return ok(taken ? undefined : { time: newest.date, from: newest.path, what: `snapper's snapshot ${newest.number}${newest.description === undefined || newest.description === '' ? '' : ` "${newest.description}"`}` })
  })())

  const notAFolder = (folder: string, at: string): BbError =>
    bbError('INVALID_OPTIONS', `the snapshot folder ${folder} ${at === folder ? 'is' : `is under ${at}, which is`} not a directory`, 'choose a directory for the snapshots (--snapshot-folder)', { path: at })

  /**
   * The snapshot folder, made where it is missing with its missing parents (returned, outermost
   * first) once the nearest directory that exists is on btrfs: elsewhere nothing is made.
   */
  const makeFolder = async (source: Transport, folder: string): Promise<Result<readonly string[], BbError>> => {
    const fits = await folderFits(source, folder)
    if (fits.isErr() || fits.value.length === 0) return fits
    const made = await source.mkdir(folder, { recursive: true })
    if (made.isErr() && made.error.details?.errno === 'EROFS') {
      // a read-only subvolume (a snapshot, a received backup) or mount: its snapshots go elsewhere on that filesystem
      return err(bbError('IO_FAILED', `cannot create the snapshot folder ${folder}: it would be in a read-only subvolume or filesystem`,
        'give the snapshots a writable directory on the same btrfs filesystem: --snapshot-folder DIR (snapshot_folder in the config)', made.error.details))
    }
    return made.isErr() ? err(made.error) : ok(fits.value)
  }

  /**
   * Where the snapshot folder would be made: a directory, or missing under one on btrfs (its missing
   * parents returned, outermost first). Nothing is made.
   */
  const folderFits = async (source: Transport, folder: string): Promise<Result<readonly string[], BbError>> => {
    const found = await nearestExisting(source, folder)
    if (found.isErr()) return err(found.error)
    const { at, missing } = found.value
    if (found.value.kind !== 'directory') return err(notAFolder(folder, at))
    if (missing.length === 0) return ok(missing)
    const typed = await fsType(source, at)
    if (typed.isErr()) return err(typed.error)
    const type = typed.value
    if (type !== 'btrfs') {
      return err(bbError('INVALID_OPTIONS', `the snapshot folder ${folder} would not be on the source's btrfs filesystem (${source.location.path}) but on ${type === '' ? 'another' : type}: a snapshot stays on its subvolume's filesystem`,
        'choose a snapshot folder on the source\'s filesystem (--snapshot-folder; the default is .snapshots inside the source)', { path: folder }))
    }
    return ok(missing)
  }

  const partialPath: Driver['partialPath'] = ({ target, snapshot }) => (isRaw(target) ? raw.partialPath(target, snapshot) : join(target.location.path, snapshot))

  /**
   * What the source's snapshots leave out, for the report of a send: its writable nested
   * subvolumes (a snapshot stops at a subvolume's edge), but the snapshot folder and targets inside
   * it, whose subvolumes are bbackup's own. A full send names them all; an incremental one those
   * made since its parent was taken, up to the snapshot it sends (a directory that became a
   * subvolume: its files leave the backups from then on), so each is said once. btrbk only
   * documents this; here the backup says it.
   */
  const leftOut = async (source: Transport, targets: readonly Transport[], sent: SnapshotInfo, parent: SnapshotInfo | undefined, signal: AbortSignal | undefined): Promise<string[]> => {
    const nested = await nestedSubvolumes(source, source.location.path, signal)
    if (nested === undefined) return []
    // (snapper's own snapshots, in snapper mode, are not the data)
    const own = [folderOf(source), ...(snapper ? [join(source.location.path, '.snapshots')] : []), ...targets.filter((t) => oneHost(t, source)).map((t) => t.location.path)]
      .map((p) => posix.relative(source.location.path, p))
      .filter((p) => p !== '' && !p.startsWith('..'))
    const theirs = nested.filter((n) => !n.readOnly && !own.some((o) => n.path === o || n.path.startsWith(`${o}/`)))
    if (theirs.length === 0) return []
    const since = parent === undefined ? undefined : await madeBetween(source, nested, parent, sent, signal)
    if (parent !== undefined && since === undefined) return []
    const out = theirs.filter((n) => since === undefined || (n.creationGeneration > since.after && n.creationGeneration <= since.upTo)).map((n) => n.path)
    if (out.length === 0) return []
    const named = `${out.slice(0, 5).join(', ')}${out.length > 5 ? ` and ${out.length - 5} more` : ''}`
    const one = out.length === 1
    const what = `${one ? 'a subvolume' : `${out.length} subvolumes`} ${parent === undefined ? 'nested in' : 'made in'} ${source.location.path}${parent === undefined ? '' : ` since ${parent.name}`} (${named})`
    const why = parent === undefined ? "a snapshot stops at a subvolume's edge" : "a snapshot stops at a subvolume's edge (a directory that became one: its files are in no backup from now on)"
    return [`not in this backup: ${what}: ${why}; back ${one ? 'it' : 'each'} up as a job of its own, or leave ${one ? 'it' : 'them'} out knowingly`]
  }

  /**
   * The generations two snapshots of the source were made at (`Gen at creation`): from the list of
   * its nested subvolumes when the snapshot folder is inside it, else asked. Undefined when either
   * cannot be read.
   */
  const madeBetween = async (source: Transport, nested: readonly NestedSubvolume[], parent: SnapshotInfo, sent: SnapshotInfo, signal: AbortSignal | undefined): Promise<{ readonly after: number; readonly upTo: number } | undefined> => {
    const [after, upTo] = await Promise.all([parent, sent].map(async (s) => {
      const listed = nested.find((n) => s.identity !== undefined && n.uuid === s.identity.uuid)?.creationGeneration
      if (listed !== undefined) return listed
      const shown = (await showSubvolume(source, s.path, signal)).unwrapOr(undefined)
      return typeof shown === 'object' ? shown.creationGeneration : undefined
    }))
    return after === undefined || upTo === undefined ? undefined : { after, upTo }
  }

  /**
   * An estimate of a send's size for its progress ({@link estimateSend}), made where it can be close:
   * from this host (another host's would take a session of its own), and not of a stream that
   * `--compressed-data` makes smaller than its data (the source's mount compresses).
   */
  const sendEstimate = async (source: Transport, sent: SnapshotInfo, parent: SnapshotInfo | undefined, flags: readonly string[], signal: AbortSignal | undefined): Promise<SendEstimate> => {
    if (source.location.kind !== 'local') return noEstimate
    if (flags.includes('--compressed-data')) {
      const mountinfo = (await source.readFile('/proc/self/mountinfo')).unwrapOr(undefined)
      if (mountinfo === undefined || compressedMount(mountinfo, sent.path)) return noEstimate
    }
    return estimateSend(source, sent, parent, signal)
  }

  /** `--proto` and `--compressed-data` both ends can take (snbk's rule: the lowest of kernel and both btrfs-progs). */
  const sendFlags = async (source: Transport, targets: readonly Transport[], signal: AbortSignal | undefined): Promise<Result<string[], BbError>> => {
    const wanted = options.sendProtocol ?? 'auto'
    let proto = wanted === 'auto' ? 2 : wanted
    if (proto === 2) {
      const versions = await Promise.all([source, ...targets].map((t) => progsVersion(t, signal)))
      const failedProbe = versions.find((v) => v.isErr())
      if (failedProbe !== undefined && failedProbe.isErr()) return err(failedProbe.error)
      const kernel = (await source.readFile('/sys/fs/btrfs/features/send_stream_version')).unwrapOr(undefined)
      const supported = versions.every((v) => v.isOk() && atLeast(v.value, PROTO2_PROGS)) && Number(kernel ?? '1') >= 2
      if (!supported) {
        if (wanted === 2) {
          return err(bbError('UNSUPPORTED', 'send protocol 2 was asked for, but the sending kernel or btrfs-progs on one end does not have it',
            'use protocol 1 (the default picks the best both ends support), or upgrade: Linux 6.0 and btrfs-progs 6.0 on both ends'))
        }
        proto = 1
      }
    }
    if (proto === 1) return ok(wanted === 'auto' ? [] : ['--proto', '1'])
    return ok(['--proto', '2', ...(options.compressedData === false ? [] : ['--compressed-data'])])
  }

  const transfer = (input: TransferInput): ResultAsync<TransferOutcome, BbError> =>
    new ResultAsync(runShared({ ...input, targets: [{ target: input.target, parent: input.parent }] }).then((r) => present(r[0], 'the result of a transfer')))

  const transferShared: NonNullable<Driver['transferShared']> = (input) => runShared(input)

  /**
   * Sends one snapshot to every target of `input.targets` with one `btrfs send` (they share its
   * parent), then checks each copy and commits it. One result per target, in order.
   */
  const runShared = async (input: SharedTransferInput): Promise<Result<TransferOutcome, BbError>[]> => {
    const { source, snapshot, sourceParent: parent, dryRun, signal } = input
    const sent = input.sourceSnapshot
    if (sent === undefined) throw new InternalError('the btrfs driver was asked to transfer without a source snapshot')
    const targets = input.targets.map((t) => t.target)
    if (targets.length > 1) {
      // one stream feeds every btrfs receive, here or on other hosts (through this process); a raw or
      // pipe target, and one whose stream is compressed on its way to its host, gets a send of its own
      const alone = await Promise.all(targets.map(async (t) => isRaw(t) || isPipe(t) || (await planStream(source, t, signal)).compress !== undefined))
      if (alone.some((a) => a)) {
        const sharing = input.targets.filter((_, i) => alone[i] !== true)
        const [together, ...own] = await Promise.all([
          sharing.length === 0 ? Promise.resolve([]) : runShared({ ...input, targets: sharing }),
          ...input.targets.filter((_, i) => alone[i] === true).map((t) => runShared({ ...input, targets: [t] })),
        ])
        const results = [...together ?? []]
        const others = own.flat()
        return alone.map((a) => present(a ? others.shift() : results.shift(), 'the result of a transfer'))
      }
    }
    /** the progress of the one stream, against an estimate of its size where one is made */
    const measured = async (flags: readonly string[], to: readonly Transport[]): Promise<{ readonly onBytes: (bytes: number) => void; readonly estimate: SendEstimate }> => {
      const estimate = dryRun || input.progress === false ? noEstimate : await sendEstimate(source, sent, parent, flags, signal)
      const progress = progressMeter(estimate.bytes)
      return {
        estimate,
        onBytes: (bytes) => {
          const now = progress(bytes)
          for (const t of to) input.onEvent({ type: 'transfer-progress', target: formatLocation(t.location), snapshot, ...now })
        },
      }
    }
    const [only] = input.targets
    // what the snapshot leaves out (all of it for a full send, what is new since the parent for an
    // incremental one), looked for while the stream goes: its lists are started once the stream's
    // processes are (each start of a process holds up this one for a moment)
    const lookForLeftOut = (): Promise<string[]> => leftOut(source, targets, sent, parent, signal)
    if (only !== undefined && (isPipe(only.target) || isRaw(only.target))) {
      const leftOutNotes = lookForLeftOut()
      const target = only.target
      const flags = await sendFlags(source, [], signal)
      const { onBytes, estimate } = await measured(flags.unwrapOr([]), [target])
      const done = isPipe(target)
        ? await pipe.transfer({ source, target, snapshot, sent, parent, dryRun, signal, onBytes })
        : await raw.transfer({ source, target, snapshot, sent, parent, targetParent: only.parent, dryRun, signal, onBytes })
      await estimate.stop()
      const notes = await leftOutNotes
      return [done.map((o) => ({ ...o, warnings: [...notes, ...o.warnings] }))]
    }
    const flags = await sendFlags(source, targets, signal)
    if (flags.isErr()) return targets.map(() => err(flags.error))
    const sendArgv = (p: SnapshotInfo | undefined): string[] => ['btrfs', 'send', '-q', ...flags.value, ...(p === undefined ? [] : ['-p', p.path]), sent.path]
    const receiveArgv = (t: Transport): string[] => receiving(t.location.path)
    // one target: its own way (compressed, limited); several share one uncompressed stream, at the limit alone
    // (runShared gave a target whose stream would be compressed a send of its own: the others' plans say only why not)
    const plans = await Promise.all(targets.map((t) => planStream(source, t, signal)))
    const way: StreamPlan = targets.length === 1 ? present(plans[0], 'the stream plan of a target') : limited
    const pipeline = (p: SnapshotInfo | undefined, to: readonly Transport[]): string[] =>
      to.length === 1 ? shown(sendArgv(p), receiveArgv(to[0] as Transport), way) : [...sendArgv(p), '|', 'tee', ...to.slice(1).map((t) => `>(${receiveArgv(t).join(' ')})`), '|', ...receiveArgv(to[0] as Transport)]
    const outcome = (mode: 'full' | 'incremental', bytes: number, warnings: readonly string[], commands: string[][]): TransferOutcome => ({
      snapshot, mode, ...(mode === 'incremental' && parent !== undefined ? { parent: parent.name } : {}), bytes, files: 0, warnings: [...warnings], commands,
    })
    if (dryRun) {
      const notes = await lookForLeftOut()
      return targets.map((_, i) => ok(outcome(parent === undefined ? 'full' : 'incremental', 0, [...notes, ...plans[i]?.warnings ?? []], [pipeline(parent, targets)])))
    }

    // never receive over something: a stray subvolume with the planned name is refused, and kept.
    // On this host a stat first (no process), btrfs only for what is there. On a remote host that
    // would be a round trip: btrfs receive refuses a name that exists without creating anything, and
    // that refusal is read from its error (finish), so nothing there is ever taken for our own copy.
    const results: (Result<TransferOutcome, BbError> | undefined)[] = await Promise.all(targets.map(async (target) => {
      if (target.location.kind !== 'local') return undefined
      const path = join(target.location.path, snapshot)
      const there = await whatIsAt(target, path, signal)
      if (there.isErr()) return err(there.error)
      return there.value === 'missing' ? undefined : err(strayError(path, there.value))
    }))
    const going = targets.filter((_, i) => results[i] === undefined)
    const { onBytes, estimate } = going.length === 0 ? { onBytes: () => undefined, estimate: noEstimate } : await measured(flags.value, going)
    // (sendReceive starts the stream's processes before it first waits)
    const streamed = going.length === 0 ? Promise.resolve([]) : sendReceive({
      source, sendArgv: sendArgv(parent), receivers: going.map((target) => ({ target, receiveArgv: receiveArgv(target), selfDelimited: true })), signal, stallMs, way,
      // an incremental send from another host comes back on its master's session; a full one (all of the subvolume) by OS pipes from a session of its own
      shareSenderChannel: parent !== undefined,
      onBytes,
    })
    const leftOutNotes = lookForLeftOut()
    const received = await streamed
    await estimate.stop()
    const notes = await leftOutNotes
    const shared = going.length === 0 ? [] : [pipeline(parent, going)]
    // each target is checked and committed at the same time as the others: their filesystems flush at once
    await Promise.all(going.map(async (target, j) => {
      const i = targets.indexOf(target)
      results[i] = await finish(input, target, present(received[j], 'the result of a receive'), { sendArgv, pipeline, commands: [...shared], way: { ...way, warnings: [...notes, ...targets.length === 1 ? way.warnings : plans[i]?.warnings ?? []] } })
    }))
    return results.map((r) => present(r, 'the result of a transfer'))
  }

  /** After the stream: falls back to one full send when the target refused the parent, cleans up a failure, checks and commits a success. */
  const finish = async (
    input: SharedTransferInput,
    target: Transport,
    first: Result<{ readonly bytes: number }, BbError>,
    how: { sendArgv: (p: SnapshotInfo | undefined) => string[]; pipeline: (p: SnapshotInfo | undefined, to: readonly Transport[]) => string[]; commands: string[][]; way: StreamPlan },
  ): Promise<Result<TransferOutcome, BbError>> => {
    const { snapshot, sourceParent: parent, signal } = input
    const sent = input.sourceSnapshot as SnapshotInfo
    const dir = target.location.path
    const path = join(dir, snapshot)
    const warnings: string[] = [...how.way.warnings]
    let mode: 'full' | 'incremental' = parent === undefined ? 'full' : 'incremental'
    let result = first
    const stderr = result.isErr() ? String(result.error.details?.stderr ?? '') : ''
    const parentRefused = parent !== undefined && /cannot find parent subvolume|parent determination failed/i.test(stderr)
    if (result.isErr() && (parentRefused || RECEIVE_CREATE_FAILED.test(stderr))) {
      // btrfs receive stopped before it made the subvolume: whatever is at the path is not ours, and is kept
      const there = await whatIsAt(target, path, signal)
      if (there.isErr()) return err(there.error)
      if (there.value !== 'missing') return err(strayError(path, there.value))
    }
    if (result.isErr() && parentRefused && parent !== undefined && options.incremental === 'strict') {
      return err(bbError('FULL_SEND_REFUSED', `the target refused the incremental send of ${snapshot} against ${parent.name} (${result.error.message}), and incremental = strict sends nothing in full`,
        'see whether the copy of the parent at the target is still there (bbackup list); to send it in full once, run with --incremental yes', { path: dir }))
    }
    if (result.isErr() && parentRefused && parent !== undefined) {
      // the target lost the parent between listing and receiving, or an old kernel's stream was refused: one full send instead
      warnings.push(`the incremental send against ${parent.name} was refused by the target (${result.error.message}); sent in full instead`)
      how.commands.push(how.pipeline(undefined, [target]))
      mode = 'full'
      const again = await sendReceive({ source: input.source, sendArgv: how.sendArgv(undefined), receivers: [{ target, receiveArgv: receiving(dir), selfDelimited: true }], signal, stallMs, way: how.way,
        onBytes: (bytes) => input.onEvent({ type: 'transfer-progress', target: formatLocation(target.location), snapshot, bytes }) })
      result = again[0] ?? result
    }
    if (result.isErr()) {
      // the host is out of reach: a cleanup now would only wait for the connect timeout; the journal has the copy, and the retry's recovery removes it
      if (result.error.code === 'NETWORK_FAILED') return err(result.error)
      // what this call created and could not finish goes at once (the journal would remove it next run otherwise)
      const failure = result.error
      const cleaned = await removeGarbled(target, path, undefined, sent.identity)
      if (cleaned.isErr()) return err(bbError(failure.code, failure.message, `${failure.hint}; also, removing the unfinished ${path} failed: ${cleaned.error.message}`, failure.details))
      return err(failure)
    }
    // complete only when read-only with the received uuid of what was sent (btrbk checks the same);
    // committed before the journal forgets it, so that after a crash the target has it, or nothing
    const [received, synced] = await showAndCommit(target, path, dir, signal)
    if (received.isErr()) return err(received.error)
    const copy = received.value
    const asInfo = (s: Subvolume): SnapshotInfo => ({ name: snapshot, time: undefined, complete: true, health: 'ok', path, identity: identityOf(s) })
    if (typeof copy === 'string' || !isReceived(copy) || !sameSnapshot(sent, asInfo(copy)) || (mode === 'incremental' && copy.parentUuid === undefined)) {
      if (typeof copy !== 'string' && (isGarbled(copy) || cutAtEnd(copy, sent.identity))) await removeGarbled(target, path, undefined, sent.identity)
      return err(bbError('TRANSFER_INCOMPLETE', `btrfs receive ended without error, but ${path} is not a complete copy of ${sent.path}`,
        'run again (the copy is sent anew); if it repeats, check the kernel log (dmesg) of the target', { path }))
    }
    if (synced.isErr()) return err(synced.error)
    if (synced.value.exitCode !== 0) return err(btrfsFailure(`btrfs filesystem sync ${dir}`, synced.value.argv, synced.value.exitCode, synced.value.stderr))
    return ok({ snapshot, mode, ...(mode === 'incremental' && parent !== undefined ? { parent: parent.name } : {}), bytes: result.value.bytes, files: 0, warnings, commands: how.commands })
  }

  /** What is at a target's `path`: nothing, or what `btrfs subvolume show` says of it. */
  const whatIsAt = (target: Transport, path: string, signal: AbortSignal | undefined): ResultAsync<'missing' | Subvolume | NoSubvolume, BbError> =>
    target.stat(path).andThen((s) => (s === undefined ? okAsync('missing' as const) : showSubvolume(target, path, signal)))

  const strayError = (path: string, there: Subvolume | NoSubvolume): BbError => {
    const garbled = typeof there !== 'string' && isGarbled(there)
    const why = garbled ? ' (it looks like an unfinished receive bbackup has no record of)' : typeof there !== 'string' && madeWritable(there) ? ` (${MADE_WRITABLE})` : ''
    return bbError('STRAY_SUBVOLUME', `${path} already exists at the target and is not a backup this run can use${why}`,
      `bbackup never deletes what it did not create: look at it (btrfs subvolume show ${path}) and move it away or delete it yourself${garbled ? ' (bbackup clean, with the job\'s source and target, deletes unfinished receives)' : ''}, then run again`, { path })
  }

  /**
   * Deletes `path` only if it is an unfinished receive (writable, no received uuid; or, given what
   * was sent into it, {@link cutAtEnd}), then commits so the space shows as free.
   */
  const removeGarbled = async (at: Transport, path: string, signal: AbortSignal | undefined, sent?: SentIdentity): Promise<Result<'removed' | 'gone' | 'kept', BbError>> => {
    const s = await showSubvolume(at, path, signal)
    if (s.isErr()) return err(s.error)
    if (typeof s.value === 'string') return ok('gone')
    if (!isGarbled(s.value) && !cutAtEnd(s.value, sent)) return ok('kept')
    const argv = ['btrfs', 'subvolume', 'delete', '--commit-after', path]
    const r = await at.exec(argv, signalOpt(signal))
    if (r.isErr()) return err(r.error)
    if (r.value.exitCode !== 0) return err(btrfsFailure(`deleting the unfinished ${path}`, argv, r.value.exitCode, r.value.stderr))
    // reference/reliability.md §1.9: the freed space shows only after the transaction is committed
    await at.exec(['btrfs', 'filesystem', 'sync', posix.dirname(path)], signalOpt(signal))
    return ok('removed')
  }

  const recover: Driver['recover'] = ({ target, entry, dryRun, unrecorded }) => {
    if (isPipe(target)) return new ResultAsync(pipe.recover())
    if (isRaw(target)) return new ResultAsync(raw.recover(target, entry.partialPath, dryRun, unrecorded === true))
    const dir = target.location.path
    // only ever a subvolume directly in this target: anything else is not ours to touch
    if (posix.dirname(entry.partialPath) !== dir) return okAsync('gone' as const)
    return showSubvolume(target, entry.partialPath).andThen((s): ResultAsync<'removed' | 'gone' | 'complete', BbError> => {
      if (typeof s === 'string') return okAsync('gone')
      if (isReceived(s)) return okAsync('complete')
      if (!isGarbled(s) && !cutAtEnd(s, entry.sent)) {
        const what = madeWritable(s) ? MADE_WRITABLE : s.readOnly ? 'read-only without a received uuid' : 'writable with a received uuid'
        return errAsync(bbError('STRAY_SUBVOLUME', `${entry.partialPath} is not an unfinished receive (${what}), nor a complete one`,
          `bbackup never deletes what it cannot prove it created: look at it (btrfs subvolume show ${entry.partialPath}), move it away or delete it yourself, then run again`, { path: entry.partialPath }))
      }
      if (dryRun) return okAsync('removed')
      return new ResultAsync(removeGarbled(target, entry.partialPath, undefined, entry.sent)).map((r) => (r === 'removed' ? 'removed' as const : 'gone' as const))
    })
  }

  const deleteSnapshots: Driver['deleteSnapshots'] = ({ at, snapshots, dryRun, signal }) => {
    if (snapshots.length === 0) return okAsync([])
    if (isPipe(at)) return new ResultAsync(pipe.forget(at, snapshots, dryRun, signal))
    if (isRaw(at)) return new ResultAsync(raw.deleteStreams(at, snapshots, dryRun, signal))
    for (const s of snapshots) {
      if (!s.complete || s.identity?.readOnly !== true) {
        return errAsync(bbError('INVALID_OPTIONS', `refusing to delete ${s.path}: not a complete read-only snapshot`, 'this is a bug in bbackup; please report it'))
      }
    }
    // one command, one commit at the end (btrbk batches the same way)
    const argv = ['btrfs', 'subvolume', 'delete', '--commit-after', ...snapshots.map((s) => s.path)]
    if (dryRun) return okAsync([argv])
    return at.exec(argv, signalOpt(signal)).andThen((r) => {
      if (r.exitCode === 0) return okAsync([argv])
      // btrfs goes on past a path that is gone (another job's prune of the same source deleted it
      // meanwhile) and fails at the end: done, when none of them is left
      return ResultAsync.fromSafePromise(Promise.all(snapshots.map(async (s) => (await at.stat(s.path)).map((found) => found !== undefined).unwrapOr(true))))
        .andThen((left) => {
          const still = snapshots.filter((_, i) => left[i] === true)
          if (still.length === 0) return ok([argv])
          const failure = btrfsFailure('deleting snapshots', argv, r.exitCode, r.stderr)
          if (failure.code !== 'PERMISSION_DENIED') return err(failure)
          // EPERM for a user who may delete subvolumes here (root, or the same command deleted
          // others of the batch): the kernel refuses to delete one a btrfs send is reading
          const mayDelete = still.length < snapshots.length || (at.location.kind === 'local' && process.geteuid?.() === 0)
          return err(mayDelete ? inUse(at, still, argv, r.stderr)
            : { ...failure, hint: `${failure.hint}. Where it runs as root already, a btrfs send is reading ${still.length === 1 ? 'it' : 'them'} (another job's run, an archive or a restore): the next prune deletes ${still.length === 1 ? 'it' : 'them'} once that is over` })
        })
    })
  }

  /**
   * A restore's destination: a directory on btrfs, where the backup is received as a subvolume.
   * Missing directories are made (`make`) only once the nearest one that exists is on btrfs, so a
   * refused restore leaves nothing behind.
   */
  const restoreDestination = async (to: Transport, make: boolean): Promise<Result<void, BbError>> => {
    const dest = to.location.path
    const found = await restoreDirectory(to)
    if (found.isErr()) return err(found.error)
    const { at, missing } = found.value
    // a failure to ask (a lost connection, sudo refusing) is that, not another filesystem
    const typed = await fsType(to, at)
    if (typed.isErr()) return err(typed.error)
    const type = typed.value
    if (type !== 'btrfs') {
      return err(bbError('TARGET_NOT_BTRFS', `the restore destination ${dest} is not on a btrfs filesystem${type === '' ? '' : ` (it is ${type})`}: a btrfs backup is received there as a subvolume`,
        'restore onto a btrfs filesystem; to copy the files onto another one, restore one directory with --path, or copy them out of the backup yourself (cp -a BACKUP/. DIR/)', { path: dest }))
    }
    return make && missing.length > 0 ? to.mkdir(dest, { recursive: true }) : ok(undefined)
  }

  const restore = (input: RestoreInput): ResultAsync<{ readonly commands: readonly (readonly string[])[] }, BbError> =>
    new ResultAsync(runRestore(input))

  const runRestore = async (input: RestoreInput): Promise<Result<{ readonly commands: readonly (readonly string[])[] }, BbError>> => {
    const { from, to, snapshot, signal } = input
    const dest = to.location.path
    if (isPipe(from)) return err(pipe.unreadable('restore from', from))
    if (isRaw(from)) return raw.restore(input, (landing) => ['btrfs', 'subvolume', 'snapshot', landing, `${landing}.writable`])
    if (input.subpath !== '') return restorePath(input)
    const landing = join(dest, snapshot.name)
    const writable = `${landing}.writable`
    const receiveArgv = receiving(dest)
    const sendArgv = ['btrfs', 'send', '-q', snapshot.path]
    const way = await planStream(from, to, signal)
    const commands: string[][] = [shown(sendArgv, receiveArgv, way), ...(input.writable === true ? [['btrfs', 'subvolume', 'snapshot', landing, writable]] : [])]
    // (made only where nothing is: a landing that exists is in a destination that did)
    const ready = await restoreDestination(to, !input.dryRun)
    if (ready.isErr()) return err(ready.error)
    const free = await refuseExisting(to, [landing, ...(input.writable === true ? [writable] : [])])
    if (free.isErr()) return err(free.error)
    if (input.dryRun) return ok({ commands })
    // a plain stream (no --compressed-data): the estimate holds whatever the filesystem compresses
    const estimate = input.onProgress === undefined ? noEstimate : estimateSend(from, snapshot, undefined, signal)
    const progress = progressMeter(estimate.bytes)
    const onProgress = input.onProgress
    const ran = present((await sendReceive({
      source: from, sendArgv, receivers: [{ target: to, receiveArgv, selfDelimited: true }], signal, stallMs, way,
      onBytes: onProgress === undefined ? () => undefined : (bytes) => onProgress(progress(bytes)),
    }))[0], 'the result of a receive')
    await estimate.stop()
    if (ran.isErr()) {
      const cleaned = await removeGarbled(to, landing, undefined)
      // the hints of a receive speak of a backup's target; here it is the restore's destination
      const e = ran.error
      const left = cleaned.isOk() && cleaned.value !== 'kept' ? 'what was received is removed' : `delete ${formatLocation({ ...to.location, path: landing })} first if it is there`
      if (e.code === 'DISK_FULL') return err(bbError(e.code, e.message, `free space on the destination's filesystem (${formatLocation(to.location)}), then restore again (${left})`, e.details))
      if (e.code === 'CANCELLED') return err(bbError(e.code, 'the restore was stopped', `restore again when ready (${left})`, e.details))
      return err(e)
    }
    if (input.writable === true) {
      // a snapshot of the received copy, never `property set ro false` (that would keep a stale received uuid)
      const argv = ['btrfs', 'subvolume', 'snapshot', landing, writable]
      const r = await to.exec(argv, signalOpt(signal))
      if (r.isErr()) return err(r.error)
      if (r.value.exitCode !== 0) return err(btrfsFailure(`making ${writable}`, argv, r.value.exitCode, r.value.stderr))
    }
    return ok({ commands })
  }

  /**
   * One path out of a backup: copied with reflinks (`cp -a --reflink=auto`) where both ends are on
   * one host (this one, or both on the same other host, where cp runs), by rsync (hard links, ACLs,
   * xattrs, numeric ids kept) from or to another host.
   */
  const restorePath = async (input: RestoreInput): Promise<Result<{ readonly commands: readonly (readonly string[])[] }, BbError>> => {
    const local = oneHost(input.from, input.to)
    const runner = local ? ok(input.to) : rsyncHost(input.from, input.to)
    if (runner.isErr()) return err(runner.error)
    const inside = backupSubpath(input.subpath)
    if (inside.isErr()) return err(inside.error)
    const sub = inside.value
    const from = join(input.snapshot.path, sub)
    const landing = join(input.to.location.path, posix.basename(sub))
    const found = await findInBackup(input.from, input.snapshot.path, sub, input.snapshot.name)
    if (found.isErr()) return err(found.error)
    const into = await restoreDirectory(input.to)
    if (into.isErr()) return err(into.error)
    const free = await refuseExisting(input.to, [landing])
    if (free.isErr()) return err(free.error)
    // rsync copies `from` (no trailing slash) into the destination directory: it lands as <dest>/<its name>, as cp's does
    const src = input.from.rsyncEndpoint(from)
    const dst = input.to.rsyncEndpoint(`${input.to.location.path}/`)
    const argv = local ? ['cp', '-a', '--reflink=auto', '--', from, landing] : ['rsync', '-a', '--sparse', '-H', '-A', '-X', '--numeric-ids', ...src.options, ...dst.options, src.spec, dst.spec]
    if (input.dryRun) return ok({ commands: [argv] })
    const made = await input.to.mkdir(input.to.location.path, { recursive: true })
    if (made.isErr()) return err(made.error)
    const r = await runner.value.exec(argv, local ? signalOpt(input.signal) : endpointIo(src, dst, input.signal))
    if (r.isErr()) return err(r.error)
    if (r.value.exitCode !== 0) {
      const tool = argv[0] ?? 'cp'
      const other = input.from.location.kind === 'local' ? input.to : input.from
      const missing = !local && rsyncMissingThere(r.value.stderr)
      return err(bbError('COMMAND_FAILED', `${tool} failed to restore ${sub} (exit ${r.value.exitCode})${missing ? `: rsync is not installed where ${formatLocation(other.location)} is` : ''}`,
        missing ? 'install rsync there (apt-get install rsync): one path of a backup on another host is copied by rsync' : 'see the end of stderr', { argv, stderr: r.value.stderr }))
    }
    return ok({ commands: [argv] })
  }

  /**
   * A backup is checked as btrbk checks a receive (read-only, received uuid of its source
   * snapshot), then its content is compared by checksum with that source snapshot while it exists.
   */
  const verify = (input: VerifyInput): ResultAsync<VerifyOutcome, BbError> => new ResultAsync((async (): Promise<Result<VerifyOutcome, BbError>> => {
    const { snapshot, signal } = input
    if (isPipe(input.target)) return err(pipe.unreadable('verify', input.target))
    if (isRaw(input.target)) return raw.verify(input)
    const differences: string[] = []
    const notes: string[] = []
    const copy = await showSubvolume(input.target, snapshot.path, signal)
    if (copy.isErr()) return err(copy.error)
    if (typeof copy.value === 'string' || !isReceived(copy.value)) differences.push(`${snapshot.path}: not a complete received subvolume (read-only with a received uuid)`)
    const original = join(folderOf(input.source), snapshot.name)
    const src = await showSubvolume(input.source, original, signal)
    if (src.isErr()) return err(src.error)
    if (typeof src.value === 'string') {
      notes.push(`the source snapshot ${original} no longer exists: the content was not compared`)
    } else {
      if (typeof copy.value !== 'string' && copy.value.receivedUuid !== src.value.uuid && copy.value.receivedUuid !== src.value.receivedUuid) {
        differences.push(`${snapshot.path}: received from ${copy.value.receivedUuid ?? 'nothing'}, not from ${original} (${src.value.uuid})`)
      }
      // rsync compares: on the one host of both ends (this one or another), else on this one, naming the other end host:path
      const together = oneHost(input.source, input.target)
      const runner = together ? ok(input.source) : rsyncHost(input.source, input.target)
      if (runner.isOk()) {
        const from = input.source.rsyncEndpoint(`${original}/`)
        const to = input.target.rsyncEndpoint(`${snapshot.path}/`)
        const ends = together ? [`${original}/`, `${snapshot.path}/`] : [...from.options, ...to.options, from.spec, to.spec]
        const argv = ['rsync', '-a', '-H', '-A', '-X', '--numeric-ids', '--delete', '--dry-run', '--checksum', '--itemize-changes', '--out-format=%i %n', ...ends]
        const r = await runner.value.exec(argv, together ? signalOpt(signal) : endpointIo(from, to, signal))
        if (r.isErr() && r.error.code === 'TOOL_MISSING') notes.push('rsync is not installed: the content was not compared (apt-get install rsync)')
        else if (r.isErr()) return err(r.error)
        else if (r.value.exitCode !== 0) {
          const other = input.source.location.kind === 'local' ? input.target : input.source
          if (!together && rsyncMissingThere(r.value.stderr)) notes.push(`rsync is not installed where ${formatLocation(other.location)} is: the content was not compared (apt-get install rsync there)`)
          else return err(bbError('COMMAND_FAILED', `rsync failed to compare (exit ${r.value.exitCode})`, 'see the end of stderr', { argv, stderr: r.value.stderr }))
        } else {
          for (const line of r.value.stdout.split('\n').filter((l) => l.trim() !== '').map(itemizedLine)) {
            // a nested subvolume is not part of a snapshot: it shows there as an empty stub directory (inode 2) that send leaves out
            const created = /^cd\+{9} (.*?)\/?$/.exec(line)
            if (created?.[1] !== undefined && (await input.source.stat(join(original, created[1]))).unwrapOr(undefined)?.inode === 2) continue
            differences.push(line)
          }
          notes.push(`content compared by checksum with ${formatLocation({ ...input.source.location, path: original })}`)
        }
      } else notes.push('the content is compared only when one end is on this host, or both are on one host: run verify on the source host to compare it')
    }
    return ok({ snapshot: snapshot.name, differences: differences.slice(0, 200), differenceCount: differences.length, notes })
  })())

  /**
   * btrbk's `snapshot_create onchange`. Before a snapshot: the source's generation (once what was
   * written is committed) is the one its newest snapshot `since` was made at, so nothing was
   * written since (btrbk's test), and `since`
   * is a read-only snapshot of this source. Taking or deleting a snapshot in the snapshot folder
   * (or another tool's snapshot of the source) changes the generation too, so where it differs
   * the snapshot just `taken` is compared with `since` (`btrfs send --no-data -p`, read until
   * its first change): no change but the times of the snapshot folder inside the source is
   * unchanged. Anything it cannot tell is a change.
   */
  const unchangedSince = ({ source, since, taken, signal }: { readonly source: Transport; readonly since: SnapshotInfo; readonly taken?: SnapshotInfo; readonly signal: AbortSignal | undefined }): ResultAsync<boolean, BbError> =>
    new ResultAsync((async (): Promise<Result<boolean, BbError>> => {
      if (taken === undefined) {
        // a write shows in the generation once its transaction is committed (as a snapshot would commit it)
        const synced = await source.exec(['btrfs', 'filesystem', 'sync', source.location.path], signalOpt(signal))
        if (synced.isErr()) return err(synced.error)
        if (synced.value.exitCode !== 0) return ok(false)
        const [live, snapshot] = await Promise.all([showSubvolume(source, source.location.path, signal), showSubvolume(source, since.path, signal)])
        if (live.isErr()) return err(live.error)
        if (snapshot.isErr()) return err(snapshot.error)
        if (typeof live.value === 'string' || typeof snapshot.value === 'string') return ok(false)
        return ok(snapshot.value.readOnly && snapshot.value.parentUuid === live.value.uuid && snapshot.value.creationGeneration === live.value.generation)
      }
      const folder = posix.relative(source.location.path, folderOf(source))
      const inside = folder !== '' && !folder.startsWith('../') && folder !== '..' && !posix.isAbsolute(folder)
      let changed = false
      const reading = readSendStream(source, ['btrfs', 'send', '-q', '--no-data', '-p', since.path, taken.path], (c) => {
        if (changed || c.cmd === SEND_COMMANDS.snapshot || (inside && c.cmd === SEND_COMMANDS.utimes && c.path === folder)) return
        changed = true
        reading.stop()
      }, signal)
      const { result, broken } = await reading.done
      if (changed) return ok(false)
      if (result.isErr()) return err(result.error)
      return ok(broken === undefined && result.value.exitCode === 0)
    })())

  /**
   * What changed from one snapshot to another: `btrfs send --no-data -p FROM TO` where they are (the
   * metadata of the change, no file data), its commands read here.
   */
  const diff = (input: DiffInput): ResultAsync<readonly DiffEntry[], BbError> => new ResultAsync((async (): Promise<Result<readonly DiffEntry[], BbError>> => {
    const { at, from, to, signal } = input
    if (isPipe(at) || isRaw(at)) {
      return err(bbError('INVALID_OPTIONS', `${formatLocation(at.location)} holds send streams, not subvolumes: diff compares subvolumes`, 'restore the two backups to a btrfs filesystem (bbackup restore), then compare them there'))
    }
    const argv = ['btrfs', 'send', '-q', '--no-data', '-p', from.path, to.path]
    const changes = new StreamDiff()
    const { result: done, broken } = await readSendStream(at, argv, (c) => changes.add(c), signal).done
    if (done.isErr()) return err(done.error)
    if (signal?.aborted === true) return err(bbError('CANCELLED', 'cancelled while comparing snapshots', 'run again when ready'))
    if (broken !== undefined) {
      return err(bbError('IO_FAILED', `cannot read what btrfs send said of ${from.name} and ${to.name} at ${formatLocation(at.location)}: ${broken}`, 'run again; if it persists, report it with the output of: btrfs send --no-data -p FROM TO | btrfs receive --dump', { argv }))
    }
    if (done.value.exitCode !== 0) return err(btrfsFailure(`comparing ${from.name} with ${to.name}`, argv, done.value.exitCode, done.value.stderr))
    return ok(changes.entries())
  })())

  /**
   * Each subvolume's exclusive bytes (what deleting it alone frees), from one `btrfs filesystem du
   * -s --raw` over them where they are; no total (its `Set shared` is each one's, not the set's).
   */
  const diskUsage: NonNullable<Driver['diskUsage']> = ({ at, snapshots, signal }) => {
    if (isPipe(at) || isRaw(at)) {
      return errAsync(bbError('UNSUPPORTED', `${formatLocation(at.location)} holds send streams, not subvolumes`, 'du -s on its stream files tells their sizes'))
    }
    const argv = ['btrfs', 'filesystem', 'du', '-s', '--raw', '--', ...snapshots.map((s) => s.path)]
    return at.exec(argv, signalOpt(signal)).andThen((r) => {
      const bytes = new Map<string, number>()
      for (const line of r.stdout.split('\n')) {
        const m = /^\s*\d+\s+(\d+)\s+\d+\s+(.*)$/.exec(line)
        const named = m === null ? undefined : snapshots.find((s) => s.path === m[2])
        if (m !== null && named !== undefined) bytes.set(named.name, Number(m[1]))
      }
      if (r.exitCode !== 0 || bytes.size !== snapshots.length) return err(btrfsFailure(`sizing the subvolumes at ${formatLocation(at.location)}`, argv, r.exitCode, r.stderr))
      return ok({ bytes, counted: 'exclusive' as const })
    })
  }

  const onChange = options.snapshotCreate === 'onchange' && !snapper && !atSource
  return { name: 'btrfs', snapshotsSource: true, ...(options.incremental === undefined ? {} : { incremental: options.incremental }), probe, createSnapshot, ...(snapper ? { adoptable } : {}), ...(onChange ? { unchangedSince } : {}), listSnapshots, origin, partialPath, transfer, transferShared, recover, deleteSnapshots, restore, verify, diff, diskUsage }
}

/**
 * `SNAPSHOT_BUSY`: the kernel refused (EPERM) to delete `still`, though this user may delete
 * subvolumes there. It does so while a btrfs send reads one (another job's run, an archive, a
 * restore from it), or for one marked immutable; `details.busy` names them, and the rest of the
 * batch is gone.
 */
const inUse = (at: Transport, still: readonly SnapshotInfo[], argv: readonly string[], stderr: string): BbError<'SNAPSHOT_BUSY'> => {
  const names = still.map((s) => s.name)
  const one = names.length === 1
  return bbError('SNAPSHOT_BUSY',
    `the kernel refused to delete ${names.join(', ')} at ${formatLocation(at.location)}: a btrfs send is reading ${one ? 'it' : 'them'} (another job's run, an archive or a restore from there), or ${one ? 'it is' : 'they are'} marked immutable`,
    `nothing to do for a send: the next prune deletes ${one ? 'it' : 'them'} once it is over; for an immutable one, lsattr -d shows the i flag and chattr -i clears it`,
    { argv: [...argv], stderr: stderrTail(stderr), busy: names })
}

/** One result per target is an invariant of sendReceive and runShared: a missing one is a bug, thrown. */
const present = <T>(value: T | undefined, what: string): T => {
  if (value === undefined) throw new InternalError(`${what} is missing`)
  return value
}

/** what was sent into a copy: the snapshot's uuid, and the one it was itself received from */
type SentIdentity = { readonly uuid: string; readonly receivedUuid?: string }

/**
 * A copy whose receive was cut at its last step: btrfs receive gives the copy the received uuid
 * of what was sent (the sent snapshot's own, or the one that was itself received from), then makes
 * it read-only; killed between the two, the copy is writable with that uuid. Only what was known
 * to be sent into it says so: a writable subvolume with some received uuid may be anyone's.
 */
const cutAtEnd = (s: Subvolume, sent: SentIdentity | undefined): boolean =>
  !s.readOnly && sent !== undefined && s.receivedUuid !== undefined && s.receivedUuid === (sent.receivedUuid ?? sent.uuid)

/** what a backup made writable after its receive is ({@link madeWritable}), as listings and errors say it */
const MADE_WRITABLE = 'a backup made writable after its receive (btrfs property set -f … ro false), perhaps changed since: bbackup leaves it alone'

const identityOf = (s: Subvolume): SnapshotIdentity => ({
  uuid: s.uuid,
  ...(s.receivedUuid === undefined ? {} : { receivedUuid: s.receivedUuid }),
  ...(s.parentUuid === undefined ? {} : { parentUuid: s.parentUuid }),
  readOnly: s.readOnly,
})
