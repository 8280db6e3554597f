import type { JobHooks } from './hooks.js'
import { createHash } from 'node:crypto'
import { homedir } from 'node:os'
import { join, posix, resolve } from 'node:path'
import type { Driver, SnapshotInfo } from '../driver/driver.js'
import { bbError, type BbError } from '../errors.js'
import { formatLocation } from '../location/location.js'
import { parseSnapshotName } from '../names/snapshot-name.js'
import type { RetentionPolicy } from '../retention/policy.js'
import type { Transport } from '../transport/transport.js'
import type { BackupEvent } from './events.js'
import { keptByRetention, sameSnapshot, type PlanOptions } from './plan-sends.js'

/** Retention for each side; a side without a policy is never pruned. */
export interface RetentionSettings {
  readonly target?: RetentionPolicy
  readonly source?: RetentionPolicy
  /** IANA zone whose days and weeks the policies count in; the host's zone when omitted */
  readonly timeZone?: string
  /**
   * How many snapshots one prune may delete at one place; a prune that would delete more deletes
   * nothing (`RETENTION_WOULD_DELETE_MANY`). `'all'`: no limit. Default {@link defaultMaxDelete}.
   */
  readonly maxDelete?: number | 'all'
}

/**
 * The deletions one prune may make where the job has `count` snapshots, unless the job says
 * otherwise: half of them, and 10 at least. A run deletes one or two in the steady state; a clock
 * that jumped a year ahead, or a policy mistyped as 1 for 10, would take nearly all.
 * @example
 * defaultMaxDelete(48) // 24
 */
export const defaultMaxDelete = (count: number): number => Math.max(10, Math.floor(count / 2))

/** The limit {@link RetentionSettings.maxDelete} sets where the job has `count` snapshots: undefined for none. */
export const maxDeleteFor = (settings: RetentionSettings | undefined, count: number): number | undefined =>
  (settings?.maxDelete === 'all' ? undefined : settings?.maxDelete ?? defaultMaxDelete(count))

/** A backup job: one source, its targets, and where the job keeps its lock and journal. */
export interface Job {
  readonly driver: Driver
  readonly source: Transport
  readonly targets: readonly Transport[]
  /** where the lock file and the journal live (see {@link defaultStateDir}) */
  readonly state: { readonly transport: Transport; readonly directory: string }
  /** put before the timestamp of every name this job writes; only names with it are this job's */
  readonly prefix?: string
  readonly retention?: RetentionSettings
  /** code run around the run and around the capture of the source (see {@link JobHooks}) */
  readonly hooks?: JobHooks
}

export interface RunOptions {
  readonly dryRun?: boolean
  readonly signal?: AbortSignal
  readonly onEvent?: (event: BackupEvent) => void
  /**
   * whether transfers report how far they got (`transfer-progress` events; default true). false
   * spares that work where nothing shows it: rsync then runs without `--info=progress2`, whose
   * line per file cost a tenth of a full local copy of 20,000 files
   */
  readonly progress?: boolean
  /** wait this long for a lock held by another run instead of failing with LOCK_HELD */
  readonly waitSeconds?: number
  /** the clock; tests pass a fixed one */
  readonly now?: () => Date
  /** how a target that failed on the network (NETWORK_FAILED, STALLED) is tried again in the same run */
  readonly retry?: RetryPolicy
  /**
   * rsync: back up into (and prune) a directory whose backups name another source
   * ({@link claimedByOther}), taking it over: the same source under a new name (a renamed host or
   * path). Default false: refused with `TARGET_IN_USE`
   */
  readonly takeOver?: boolean
}

/** Retries with exponential backoff (x3, jittered); host key, auth, disk-full and other failures are never retried. */
export interface RetryPolicy {
  /** retries after the first try (default 3; 0 = none) */
  readonly attempts?: number
  /** the first pause (default 5000 ms) */
  readonly initialDelayMs?: number
  /** the longest pause (default 60000 ms) */
  readonly maxDelayMs?: number
}

/**
 * A stable name for a job, from its source and targets: the source's last path part and a short
 * hash, so two jobs never share a lock by accident.
 * @example
 * jobId(source, [target]) // 'home-3f9a1c2b'
 */
export const jobId = (source: Transport, targets: readonly Transport[]): string => {
  const key = [source, ...targets].map((t) => formatLocation(t.location)).join('\n')
  const base = (source.location.path.split('/').filter(Boolean).at(-1) ?? 'root').replace(/[^A-Za-z0-9._-]/g, '_')
  return `${base}-${createHash('sha256').update(key).digest('hex').slice(0, 8)}`
}

/** The environment variable that moves bbackup's state on this host (see {@link defaultStateRoot}). */
export const STATE_DIR_ENV = 'BBACKUP_STATE_DIR'

/**
 * Where bbackup keeps its state on this host when neither `--state-dir` nor a config's `state_dir`
 * says: `$BBACKUP_STATE_DIR` when set (an absolute path; a relative one is taken from the current
 * directory), else `/var/lib/bbackup` for root and `$XDG_STATE_HOME/bbackup` (default
 * `~/.local/state/bbackup`) for anyone else.
 */
export const defaultStateRoot = (env: Readonly<Record<string, string | undefined>> = process.env): string => {
  const given = env[STATE_DIR_ENV]
  if (given !== undefined && given !== '') return resolve(given)
  if (process.getuid?.() === 0) return '/var/lib/bbackup'
  return join(env.XDG_STATE_HOME ?? join(homedir(), '.local/state'), 'bbackup')
}

/**
 * Where a job keeps its lock and journal on this host: `<state root>/jobs/<id>`, that is
 * `/var/lib/bbackup/jobs/<id>` for root by default ({@link defaultStateRoot}).
 */
export const defaultStateDir = (id: string, env: Readonly<Record<string, string | undefined>> = process.env): string =>
  join(defaultStateRoot(env), 'jobs', id)

/** A path written one way: `/mnt/b/`, `/mnt//b` and `/mnt/./b` are `/mnt/b` (a location's empty path stays empty). */
export const oneSpelling = (path: string): string => (path === '' ? '' : posix.normalize(path).replace(/(.)\/+$/, '$1'))

export const lockPath = (job: Job): string => join(job.state.directory, 'lock')
export const journalPath = (job: Job): string => join(job.state.directory, 'journal.json')
export const pinsPath = (job: Job): string => join(job.state.directory, 'pins.json')

/** Where the job records the last run that found its source unchanged ({@link UnchangedCheck}). */
export const unchangedPath = (job: Job): string => join(job.state.directory, 'unchanged.json')

/** Where the job keeps which backups at each target are its own ({@link Lineage}). */
export const lineagePath = (job: Job): string => join(job.state.directory, 'lineage.json')

/** The complete snapshots of this job (its prefix, a readable time; at a source, taken of it), oldest first. */
export const ownSnapshots = (job: Job, snapshots: readonly SnapshotInfo[]): SnapshotInfo[] =>
  namedAsJobs(job, snapshots).filter((s) => s.otherSubvolume === undefined)

/**
 * How far ahead of this host's clock a snapshot's name may be dated before it counts as named by a
 * clock that was wrong (the clocks of two hosts, or of one before and after NTP, differ a little).
 */
export const CLOCK_SLACK_MS = 15 * 60_000

/** Whether a snapshot's name is dated ahead of the clock (`now`, ms) by more than {@link CLOCK_SLACK_MS}: its clock was ahead when it was made, or this one is behind now. */
export const aheadOfClock = (s: { readonly time?: Date | undefined }, now: number): boolean => s.time !== undefined && s.time.getTime() > now + CLOCK_SLACK_MS

/**
 * The newest of `snapshots` (oldest first) that was made before now: one dated ahead of the clock
 * sorts last by its name, but what was made after it (once the clock was right again) is newer.
 * When every one is dated ahead, the newest of them.
 * @example
 * newestMade(own, Date.now())?.name // what `latest` means
 */
export const newestMade = <T extends { readonly time?: Date | undefined }>(snapshots: readonly T[], now: number): T | undefined =>
  snapshots.filter((s) => !aheadOfClock(s, now)).at(-1) ?? snapshots.at(-1)

/**
 * Snapshots (oldest first by name) in the order they were made, as far as their names can tell:
 * those dated ahead of the clock first (a clock that was ahead named them, before it was put
 * right: the ones dated before now were made since, or are older, and either way are no older
 * parents than they), then the rest. A run plans its sends in this order, so that a snapshot
 * made after a clock was put right is not taken for older than one it made while wrong (which
 * would leave it unsent: the target "already holds the newest").
 */
export const madeOrder = <T extends { readonly time?: Date | undefined }>(snapshots: readonly T[], now: number): T[] =>
  [...snapshots.filter((s) => aheadOfClock(s, now)), ...snapshots.filter((s) => !aheadOfClock(s, now))]

/** A run's warning for a target whose backups of this job include some dated ahead of the clock; undefined when none is. */
export const clockWarning = (snapshots: readonly SnapshotInfo[], now: number): string | undefined => {
  const ahead = snapshots.filter((s) => aheadOfClock(s, now))
  const newest = ahead.at(-1)
  if (newest?.time === undefined) return undefined
  const days = Math.max(1, Math.round((newest.time.getTime() - now) / 86_400_000))
  return `${ahead.length === 1 ? `one of the backups here, ${newest.name}, is` : `${ahead.length} of the backups here (the newest ${newest.name}) are`} dated ahead of this host's clock (${days} d): the clock was ahead when ${ahead.length === 1 ? 'it was' : 'they were'} made, or is behind now; check it (timedatectl). Nothing is lost: ${ahead.length === 1 ? 'it is' : 'they are'} kept, and latest means the newest made before now`
}

/**
 * The source's snapshots named as the job's but taken of another subvolume
 * ({@link SnapshotInfo.otherSubvolume}): another source's that shares the snapshot folder and the
 * prefix. Left alone: never counted, sent, nor pruned.
 */
export const othersAtSource = (job: Job, snapshots: readonly SnapshotInfo[]): SnapshotInfo[] =>
  namedAsJobs(job, snapshots).filter((s) => s.otherSubvolume !== undefined)

const namedAsJobs = (job: Job, snapshots: readonly SnapshotInfo[]): SnapshotInfo[] =>
  snapshots.filter((s) => s.complete && s.time !== undefined && (parseSnapshotName(s.name)?.prefix ?? '') === (job.prefix ?? ''))

/**
 * Whether a target is another source's, where the driver names the source in each backup (rsync:
 * {@link Driver.sourceName}): whose it is, the newest complete backup named as the job's (its
 * prefix) that names a source says. Such backups are one source's (its `latest`, the parent of its
 * next backup, its retention), so another source's run or prune there is refused with
 * `TARGET_IN_USE`, naming both and nothing touched. Undefined where the job may go on: no backup
 * names a source (made before bbackup named them, or by another tool), the newest that does names
 * this one, the job has no source of its own (a directory of backups named alone), or `takeOver`
 * (the same source under a new name: a host or a path renamed; its next backup names it, and the
 * older ones count as its own).
 */
export const claimedByOther = (job: Job, at: Transport, backups: readonly SnapshotInfo[], takeOver = false): BbError | undefined => {
  const ours = job.driver.sourceName?.(job.source)
  const where = formatLocation(at.location)
  if (ours === undefined || takeOver || formatLocation(job.source.location) === where) return undefined
  // of the backups named as the job's: sources with a prefix each may share a directory
  const claim = namedAsJobs(job, backups).filter((b) => b.madeFrom !== undefined).at(-1)
  if (claim?.madeFrom === undefined || claim.madeFrom === ours) return undefined
  // a directory beside it, named for this source's host and path (`host-home`)
  const host = ours.slice(0, ours.indexOf(':'))
  const name = `${host}-${ours.slice(ours.indexOf(':') + 1).split('/').filter(Boolean).at(-1) ?? 'root'}`.replace(/[^A-Za-z0-9._-]+/g, '_')
  const parent = posix.dirname(at.location.path)
  const ownDirectory = formatLocation({ ...at.location, path: at.location.path === '' || parent === at.location.path ? posix.join(at.location.path, name) : posix.join(parent, name) })
  return bbError('TARGET_IN_USE',
    `${where} holds the backups of ${claim.madeFrom} (newest ${claim.name}), not of this source (${ours}): backups named alike are one source's; nothing was written or deleted there`,
    `give this source a directory of its own, e.g. ${ownDirectory} (or a prefix of its own: -p); or, if those are this source's backups under an old name (a renamed host or path), run once with --take-over`,
    { target: where, madeFrom: claim.madeFrom, source: ours })
}

/**
 * Whether a target's directory is not there (yet): what the first backup makes, and a dry run or a
 * check does not. A target that cannot be asked counts as there (its error comes from elsewhere).
 */
export const notMadeYet = async (target: Transport): Promise<boolean> =>
  (await target.stat(target.location.path)).map((s) => s === undefined).unwrapOr(false)

/** What a target that holds none of the source's snapshots gets: what the job's target retention keeps ({@link keptByRetention}) */
export const newTargetGets = (job: Job, now: (() => Date) | undefined): NonNullable<PlanOptions['backfill']> =>
  keptByRetention(job.retention?.target, { now: (now ?? (() => new Date()))(), ...(job.retention?.timeZone === undefined ? {} : { timeZone: job.retention.timeZone }) })

/**
 * How a target plans its sends ({@link planSends}): a new one gets what the job's target retention
 * keeps ({@link newTargetGets}); one that missed runs gets, of the snapshots newer than its newest
 * copy, what that retention keeps, or all of them where the job keeps every backup (no target policy);
 * full or not as the driver's `incremental` says
 */
export const sendsFor = (job: Job, now: (() => Date) | undefined): PlanOptions => {
  const kept = newTargetGets(job, now)
  return { backfill: kept, ...(job.retention?.target === undefined ? {} : { catchUp: kept }), ...(job.driver.incremental === undefined ? {} : { incremental: job.driver.incremental }) }
}

/**
 * The source's snapshots as a target is planned against: with the subvolume the source was made
 * from first ({@link Driver.origin}: a restored backup swapped in) where the target holds backups
 * of the job, a copy of that one, and a copy of none of the snapshots. The driver is asked once,
 * and only then.
 * @example
 * const from = originFor(job, snapshots, signal)
 * planSends(await from(backupsAtTarget), backupsAtTarget)
 */
export const originFor = (job: Job, snapshots: readonly SnapshotInfo[], signal: AbortSignal | undefined): ((backups: readonly SnapshotInfo[]) => Promise<readonly SnapshotInfo[]>) => {
  let asked: Promise<SnapshotInfo | undefined> | undefined
  return async (backups) => {
    if (job.driver.origin === undefined || backups.length === 0 || snapshots.some((s) => backups.some((b) => sameSnapshot(s, b)))) return snapshots
    asked ??= job.driver.origin({ source: job.source, signal })
    const origin = await asked
    return origin !== undefined && backups.some((b) => sameSnapshot(origin, b)) ? [origin, ...snapshots] : snapshots
  }
}
