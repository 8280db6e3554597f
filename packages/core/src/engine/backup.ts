import { getMaxListeners, setMaxListeners } from 'node:events'
import { err, errAsync, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import type { Adoptable, RecoverAction, SnapshotInfo, TransferOutcome } from '../driver/driver.js'
import { bbError, InternalError, type BbError } from '../errors.js'
import { addJournalEntry, readJournal, removeJournalEntry, type JournalEntry } from '../journal/journal.js'
import { formatLocation, parseLocation, type Location } from '../location/location.js'
import { uniqueSnapshotName } from '../names/snapshot-name.js'
import type { Transport } from '../transport/transport.js'
import { knownAt, ofThisJob, othersNote, readLineage, recordLineage, sentUuids } from '../journal/lineage.js'
import { pinSnapshot } from '../journal/pins.js'
import { recordUnchanged } from '../journal/unchanged.js'
import type { RetentionPolicy } from '../retention/policy.js'
import { claimedByOther, clockWarning, oneSpelling, journalPath, lineagePath, madeOrder, newestMade, notMadeYet, originFor, othersAtSource, ownSnapshots, pinsPath, sendsFor, unchangedPath, type Job, type RunOptions } from './job.js'
import { betweenHooks, hookContextOf, type HookRun, type HookRunner } from './hooks.js'
import { planSends, type PlannedSend } from './plan-sends.js'
import { connectHosts, pruneAt, retentionFits, withJobLock, type PruneResult } from './prune.js'

/** One snapshot sent to a target. */
export interface SentSnapshot {
  readonly snapshot: string
  readonly mode: 'full' | 'incremental'
  readonly parent?: string
  readonly bytes: number
  readonly durationMs: number
}

/** What happened at one target. */
export interface TargetReport {
  readonly target: string
  readonly ok: boolean
  /**
   * how the data travelled: `local` on this host, `push` to another host, `pull` from one, or
   * `relay` from one host to another, streamed through this one
   */
  readonly route: Route
  /** every snapshot sent in this run, oldest first (a target that missed runs gets several) */
  readonly sent: readonly SentSnapshot[]
  /** the newest snapshot sent (or that failed) */
  readonly snapshot?: string
  readonly mode?: 'full' | 'incremental'
  /** the backup it was incremental against */
  readonly parent?: string
  /** why the transfer was full, when the target already had backups */
  readonly fullBecause?: string
  /**
   * where the first send was incremental against the subvolume the source was made from, outside
   * its snapshot folder (a restored backup swapped in: {@link Driver.origin}), as a location
   */
  readonly origin?: string
  readonly bytes: number
  readonly files: number
  readonly durationMs: number
  /** how many times the transfer was tried, when a network failure made it try again */
  readonly attempts?: number
  readonly warnings: readonly string[]
  /** what the journal said was left unfinished here, and what became of it */
  readonly recovered: readonly { readonly snapshot: string; readonly action: RecoverAction }[]
  readonly pruned: readonly string[]
  /** the job's backups at the target after the prune stage (absent when it did not run) */
  readonly kept?: number
  /** why the prune stage failed here, when it did (the transfer itself succeeded); the CLI exits 10 */
  readonly pruneError?: BbError
  readonly error?: BbError
  /** the exact commands run (or, in a dry run, that would run) */
  readonly commands: readonly (readonly string[])[]
}

export interface BackupReport {
  readonly source: string
  readonly driver: string
  readonly dryRun: boolean
  /** the snapshot the run took; where it took none ({@link noSnapshot}), the newest (onchange) or the name it would have had */
  readonly snapshot: string
  /** why the run took no snapshot: snapper took no new one, or the source has not changed since its newest (snapshot_create onchange) */
  readonly noSnapshot?: string
  readonly startedAt: string
  readonly durationMs: number
  readonly targets: readonly TargetReport[]
  /** how many targets failed; the CLI exits 10 when any did */
  readonly failed: number
  readonly sourcePruned: readonly string[]
  /**
   * snapshots in the source's snapshot folder named as the job's but taken of another subvolume
   * (another source that shares the folder and the prefix): neither sent nor pruned by the job
   */
  readonly sourceOthers?: readonly string[]
  /** why the source's snapshots were not pruned, when they were not; the CLI exits 10 */
  readonly sourcePruneError?: BbError
  /** what the source's prune left for later, and is no failure (snapshots in use: {@link PruneResult.warnings}) */
  readonly sourceWarnings?: readonly string[]
  /** the job's hooks that ran, in order ({@link JobHooks}); one that failed fails the run (the CLI exits 10) */
  readonly hooks?: readonly HookRun[]
}

/**
 * Whether a run did all it was asked: every target got its backup and every prune stage ran (what
 * the CLI's exit 0 and the metric `bbackup_run_success` mean). btrbk too fails a run (exit 10)
 * whose backups went over but whose old snapshots could not be deleted: a disk that fills up
 * because retention stopped working is found by the run's status, not weeks later.
 */
export const runComplete = (report: BackupReport): boolean =>
  report.failed === 0 && report.sourcePruneError === undefined && report.targets.every((t) => t.pruneError === undefined) && (report.hooks ?? []).every((h) => h.ok)

export interface BackupOptions extends RunOptions {
  /** run the transfer stage (default true); false = snapshot (and prune) only */
  readonly transfer?: boolean
  /**
   * run the prune stage (default true when the job has a retention policy): false deletes nothing,
   * `'snapshots'` prunes the source's snapshots alone and `'backups'` the targets' alone (btrbk's
   * `--preserve-backups` and `--preserve-snapshots`)
   */
  readonly prune?: boolean | 'snapshots' | 'backups'
  /** take a new source snapshot (default true; drivers that copy the live source ignore it) */
  readonly snapshot?: boolean
}

/** whether the run prunes this side, as its `prune` option says */
const prunes = (options: BackupOptions, side: 'snapshots' | 'backups'): boolean =>
  options.prune === undefined || options.prune === true || options.prune === side

/** how many names a snapshot is tried under, when each was taken meanwhile by another run of the source */
const NAME_ATTEMPTS = 5

/** Transfers that fail with these wrote nothing at the target. */
const REFUSED_BEFORE_WRITING: ReadonlySet<string> = new Set(['STRAY_SUBVOLUME', 'ALREADY_EXISTS', 'FULL_SEND_REFUSED'])

/** failures worth another try in the same run: the network, a stream that stopped moving */
const TRANSIENT: ReadonlySet<string> = new Set(['NETWORK_FAILED', 'STALLED'])

const retriesOf = (options: RunOptions): number => options.retry?.attempts ?? 3

/** exponential (x3) with equal jitter: between half and all of min(max, initial * 3^(n-1)) */
const retryDelay = (options: RunOptions, attempt: number): number => {
  const cap = Math.min(options.retry?.maxDelayMs ?? 60_000, (options.retry?.initialDelayMs ?? 5_000) * 3 ** (attempt - 1))
  return Math.round(cap / 2 + Math.random() * (cap / 2))
}

/** read through a call, so that TypeScript does not narrow it between two awaits */
const cancelled = (options: RunOptions): boolean => options.signal?.aborted === true

const pause = (ms: number, signal: AbortSignal | undefined): Promise<void> =>
  new Promise((resolve) => {
    if (signal?.aborted === true) return resolve()
    const done = (): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })

export type Route = 'local' | 'push' | 'pull' | 'relay'

/** how data goes from `source` to `target` ({@link Route}) */
export const routeOf = (source: Location, target: string): Route => {
  const remoteTarget = parseLocation(target).map((l) => l.kind !== 'local').unwrapOr(false)
  if (source.kind === 'local') return remoteTarget ? 'push' : 'local'
  return remoteTarget ? 'relay' : 'pull'
}

/** what a target's part of the run produced; its {@link Route} is derived from the locations at the end */
type TargetResult = Omit<TargetReport, 'route'>

const failedTarget = (target: string, startedMs: number, error: BbError, partial: Partial<TargetResult> = {}): TargetResult => ({
  target, ok: false, sent: [], bytes: 0, files: 0, durationMs: Date.now() - startedMs, warnings: [], recovered: [], pruned: [], commands: [], ...partial, error,
})

/** Retention at a target after its transfer; in a dry run, a target whose directory the run would make holds nothing to prune. */
const pruneTarget = async (job: Job, target: Transport, policy: RetentionPolicy, options: RunOptions, made: readonly string[]): Promise<Result<PruneResult, BbError>> => {
  const r = await pruneAt(job, target, 'target', policy, options, made)
  if (r.isErr() && options.dryRun === true && (await notMadeYet(target))) {
    return ok({ at: formatLocation(target.location), side: 'target', decisions: [], deleted: [], kept: 0, commands: [] })
  }
  return r
}

/** The first target the job names twice, however spelled (`/mnt/b/` and `/mnt/b`, `/mnt/./b`), or undefined. */
const repeatedTarget = (targets: readonly Transport[]): string | undefined => {
  const seen = new Set<string>()
  for (const { location } of targets) {
    const key = formatLocation({ ...location, path: oneSpelling(location.path) })
    if (seen.has(key)) return key
    seen.add(key)
  }
  return undefined
}

/**
 * The main job: lock, probe, recover what the journal left, snapshot the source, send to each
 * target (journalled), prune. One failing target does not stop the others; the report says what
 * each did. An `Err` means the job as a whole could not run (lock held, source unusable).
 * @example
 * const report = await backup(job, { onEvent: console.log })
 * if (report.isOk() && report.value.failed === 0) console.log('all targets are up to date')
 */
export const backup = (job: Job, options: BackupOptions = {}): ResultAsync<BackupReport, BbError> => {
  const prefix = job.prefix ?? ''
  // a name with it must be one file name that reads back as the job's (a newline does not)
  if ([...prefix].some((c) => c === '/' || c.charCodeAt(0) < 0x20 || c === '\x7f')) {
    return errAsync(bbError('INVALID_OPTIONS', `the prefix ${JSON.stringify(prefix)} cannot begin a snapshot's name: it has a ${prefix.includes('/') ? 'slash' : 'control character'}`,
      'give a prefix without / or control characters (-p/--prefix), e.g. home.'))
  }
  const fits = retentionFits(job)
  if (fits.isErr()) return errAsync(fits.error)
  const twice = repeatedTarget(job.targets)
  if (twice !== undefined) {
    return errAsync(bbError('INVALID_OPTIONS', `the target ${twice} is given twice: two transfers would write into it at once`, 'give each target once', { target: twice }))
  }
  // every command of a run listens to the signal, dozens at once while the source and targets are listed: not a leak
  if (options.signal !== undefined) setMaxListeners(Math.max(getMaxListeners(options.signal), 100), options.signal)
  connectHosts([job.source, ...job.targets], options.signal)
  return new ResultAsync(withJobLock(job, options, () => runHooked(job, options)))
}

/**
 * {@link runBackup} between the job's `pre-run` and `post-run` hooks. A `pre-run` hook that fails
 * stops the run (`HOOK_FAILED`); `post-run` runs all the same, told how the run ended.
 */
const runHooked = async (job: Job, options: BackupOptions): Promise<Result<BackupReport, BbError>> => {
  const of = { source: formatLocation(job.source.location), targets: job.targets.map((t) => formatLocation(t.location)), driver: job.driver.name }
  const runner: HookRunner = { hooks: job.hooks, dryRun: options.dryRun ?? false, context: (point, more) => hookContextOf(point, of, options.signal, more), ran: [] }
  const ran = await betweenHooks(runner, ['pre-run', 'post-run'], () => runBackup(job, options, runner), (r) => ({
    status: cancelled(options) ? 'cancelled' : r.isErr() ? 'error' : runComplete({ ...r.value, hooks: runner.ran }) ? 'ok' : 'failed',
    ...(r.isOk() ? { snapshot: r.value.snapshot } : {}),
  }))
  const postFailed = runner.ran.find((h) => h.point === 'post-run')?.error
  if (ran.isErr()) {
    // the run's own failure is the one returned; the hook's is said beside it
    if (postFailed === undefined) return ran
    options.onEvent?.({ type: 'warning', message: postFailed.message })
    return err({ ...ran.error, details: { ...ran.error.details, postRunHook: postFailed.message } })
  }
  return ok(runner.ran.length === 0 ? ran.value : { ...ran.value, hooks: runner.ran })
}

/** The run itself; the hooks it runs (around the capture of the source) are added to `hooks`. */
const runBackup = async (job: Job, options: BackupOptions, hooks: HookRunner): Promise<Result<BackupReport, BbError>> => {
  const started = Date.now()
  const now = (options.now ?? (() => new Date()))()
  const dryRun = options.dryRun ?? false
  const emit = options.onEvent ?? (() => undefined)
  // Everything read before the snapshot is read at the same time: the source's probe, the journal,
  // each target's probe and listing, the source's snapshots (each a command, or a round trip on a
  // remote host). A source that fails its probe is reported first; no target is tried again before it passed.
  const sourceProbed = job.driver.probe({ source: job.source, targets: [], signal: options.signal })
  const journalRead = readJournal(job.state.transport, journalPath(job))

  // The source's own snapshots (btrfs, block): what each target may lack, and the parents. Asked
  // for before the targets: the snapshot waits for them, the targets only for the transfer.
  const sourceListed = job.driver.snapshotsSource ? job.driver.listSnapshots({ at: job.source, side: 'source', signal: options.signal }) : okAsync([])

  // Which targets can be reached, and what each holds; one that is out of reach on the network is tried again, with the transfers' backoff
  const transferFollows = options.transfer !== false && options.dryRun !== true
  const reach = async (target: Transport, where: string) => {
    const [reachable, listedFirst] = await Promise.all([
      job.driver.probe({ source: job.source, targets: [target], signal: options.signal, transferFollows }),
      job.driver.listSnapshots({ at: target, signal: options.signal }),
    ])
    if (reachable.isErr()) return { target, where, error: reachable.error, snapshots: [] }
    // the probe may have made the target's directory (a first run) while it was listed: then once more
    const listed = listedFirst.isOk() ? listedFirst : await job.driver.listSnapshots({ at: target, signal: options.signal })
    if (listed.isErr()) {
      // without a transfer to follow (a dry run) the probe makes no directory: a new target, fit to be made, holds nothing yet
      const absent = !transferFollows && (await notMadeYet(target))
      return absent ? { target, where, error: undefined, snapshots: [] } : { target, where, error: listed.error, snapshots: [] }
    }
    return { target, where, error: undefined, snapshots: listed.value }
  }
  const targetStates = Promise.all(job.targets.map(async (target) => {
    const where = formatLocation(target.location)
    for (let attempt = 1; ; attempt++) {
      const state = await reach(target, where)
      const last = state.error === undefined || !TRANSIENT.has(state.error.code) || attempt > retriesOf(options) || dryRun || cancelled(options)
      if (last || (await sourceProbed).isErr()) return { ...state, attempts: attempt }
      const delayMs = retryDelay(options, attempt)
      emit({ type: 'retrying', target: where, attempt, of: retriesOf(options), delayMs, error: state.error as BbError })
      await pause(delayMs, options.signal)
    }
  }))

  // The snapshot is taken once the source passed its probe and its snapshots are listed, while the
  // targets are still being reached (over ssh: logged in to). Its name is free among the source's
  // snapshots; one that a target holds as well (a backup made in the same second whose source
  // snapshot is gone) is taken again under a name free everywhere, and the first one deleted.
  const snapshotting = job.driver.snapshotsSource && options.snapshot !== false
  // each snapshot is taken between the job's pre-snapshot and post-snapshot hooks (quiesce, thaw)
  // (a driver whose source another tool snapshots takes over that tool's newest snapshot, when it is new)
  let adopted: Adoptable | undefined
  /** the newest snapshot, when the source has not changed since it (a driver that snapshots only on change) */
  let unchanged: SnapshotInfo | undefined
  const take = async (existing: readonly string[]): Promise<Result<SnapshotInfo, BbError>> => {
    const create = job.driver.createSnapshot?.bind(job.driver)
    if (create === undefined) throw new InternalError(`driver ${job.driver.name} snapshots its source but has no createSnapshot`)
    const from = adopted === undefined ? {} : { from: adopted.from }
    const time = adopted?.time ?? now
    // a name taken meanwhile (another job of this source snapshots it in the same second) gives way to the next free one
    const attempt = async (): Promise<Result<SnapshotInfo, BbError>> => {
      const tried: string[] = []
      for (;;) {
        const name = uniqueSnapshotName({ prefix: job.prefix ?? '', time, existing: [...existing, ...tried] })
        const created = await create({ source: job.source, name, ...from, dryRun, signal: options.signal })
        if (created.isOk() || created.error.code !== 'ALREADY_EXISTS' || tried.length >= NAME_ATTEMPTS - 1) return created
        tried.push(name)
      }
    }
    return betweenHooks(hooks, ['pre-snapshot', 'post-snapshot'], attempt, (taken) => (taken.isErr()
      ? { status: cancelled(options) ? 'cancelled' : 'error' }
      : { status: 'ok', snapshot: taken.value.name, snapshotAt: formatLocation({ ...job.source.location, path: taken.value.path }) }))
  }
  const snapshotTaken = (async (): Promise<Result<SnapshotInfo, BbError> | 'none' | undefined> => {
    const [probed, journal, listed] = await Promise.all([sourceProbed, journalRead, sourceListed])
    if (!snapshotting || probed.isErr() || journal.isErr() || listed.isErr()) return undefined
    const adoptable = job.driver.adoptable?.bind(job.driver)
    if (adoptable !== undefined) {
      const found = await adoptable({ source: job.source, snapshots: ownSnapshots(job, listed.value), signal: options.signal })
      if (found.isErr()) return err(found.error)
      if (found.value === undefined) return 'none'
      adopted = found.value
    }
    // snapshot_create onchange: the newest snapshot still holds what the source holds (known at once, or once a new one is compared with it)
    const since = job.driver.unchangedSince === undefined ? undefined : ownSnapshots(job, listed.value).at(-1)
    const same = async (taken?: SnapshotInfo): Promise<boolean> => since !== undefined
      && (await job.driver.unchangedSince?.({ source: job.source, since, ...(taken === undefined ? {} : { taken }), signal: options.signal }))?.unwrapOr(false) === true
    if (await same()) {
      unchanged = since
      return 'none'
    }
    const taken = await take(listed.value.map((x) => x.name))
    if (since === undefined || dryRun || taken.isErr() || !(await same(taken.value))) return taken
    // the one just taken, and nothing else, goes again
    const removed = await job.driver.deleteSnapshots({ at: job.source, snapshots: [taken.value], dryRun, signal: options.signal })
    if (removed.isErr()) return err(removed.error)
    unchanged = since
    return 'none'
  })()
  const [probed, journal, states, listed, taken] = await Promise.all([sourceProbed, journalRead, targetStates, sourceListed, snapshotTaken])
  if (probed.isErr()) return err(probed.error)
  if (journal.isErr()) return err(journal.error)
  if (listed.isErr()) return err(listed.error)
  let sourceSnapshots: SnapshotInfo[] = ownSnapshots(job, listed.value)
  const sourceOthers = othersAtSource(job, listed.value).map((s) => s.name)

  const held = new Set(states.flatMap((s) => s.snapshots).map((x) => x.name))
  let name = uniqueSnapshotName({ prefix: job.prefix ?? '', time: adopted?.time ?? now, existing: [...listed.value.map((x) => x.name), ...held] })

  let sourceSnapshot: SnapshotInfo | undefined
  let noSnapshot: string | undefined
  if (taken === 'none') {
    noSnapshot = unchanged !== undefined
      ? `the source has not changed since its newest snapshot, ${unchanged.name} (snapshot_create onchange): none is taken, and the targets get what they lack`
      : 'the source has no snapshot newer than the last one taken over (or none at all yet): none is taken, and the targets get what they lack'
    emit({ type: 'no-new-snapshot', reason: noSnapshot })
  } else if (taken !== undefined) {
    let created = taken
    if (created.isOk() && held.has(created.value.name)) {
      if (!dryRun) {
        const removed = await job.driver.deleteSnapshots({ at: job.source, snapshots: [created.value], dryRun, signal: options.signal })
        if (removed.isErr()) return err(removed.error)
      }
      created = await take([...listed.value.map((x) => x.name), ...held])
    }
    if (created.isErr()) return err(created.error)
    sourceSnapshot = created.value
    name = created.value.name
    sourceSnapshots = [...sourceSnapshots, created.value]
    emit({ type: 'snapshot-created', snapshot: name, at: formatLocation({ ...job.source.location, path: created.value.path }), ...(adopted === undefined ? {} : { of: adopted.what }) })
  }

  const reports: TargetResult[] = []
  for (const state of states) {
    if (state.error === undefined) continue
    emit({ type: 'transfer-failed', target: state.where, snapshot: name, error: state.error })
    reports.push(failedTarget(state.where, Date.now(), state.error, state.attempts > 1 ? { attempts: state.attempts } : {}))
  }
  const reachable = states.filter((s) => s.error === undefined)
  if (options.transfer !== false && job.driver.snapshotsSource) {
    reports.push(...await sendSnapshots(job, options, reachable, journal.value.entries, sourceSnapshots, unchanged !== undefined))
  } else if (options.transfer !== false && reachable.length > 0) {
    // the live source is read during the transfers: the snapshot hooks go around them (none when no target can be reached)
    const first = reports.length
    const read = await betweenHooks(hooks, ['pre-snapshot', 'post-snapshot'], async () => {
      for (const state of reachable) {
        reports.push(await backupWithRetries(job, options, state, journal.value.entries.filter((e) => e.target === state.where), name))
        if (options.signal?.aborted === true) break
      }
      return ok(undefined)
    }, (r) => ({ status: r.isErr() ? 'error' : cancelled(options) ? 'cancelled' : reports.slice(first).every((t) => t.ok) ? 'ok' : 'failed', snapshot: name }))
    if (read.isErr()) return err(read.error)
  }
  // status ages the newest snapshot, and a backup of it, from now (a record that cannot be written leaves them aged by the snapshot)
  if (unchanged !== undefined && !dryRun) await recordUnchanged(job.state.transport, unchangedPath(job), unchanged.name, now)
  // in the order the targets were given
  reports.sort((a, b) => states.findIndex((s) => s.where === a.target) - states.findIndex((s) => s.where === b.target))
  for (const [i, report] of reports.entries()) {
    const tries = states.find((s) => s.where === report.target && s.error === undefined)?.attempts ?? 1
    if (tries > 1) reports[i] = { ...report, warnings: [`reached on attempt ${tries}: the first tries failed on the network`, ...report.warnings] }
  }
  if (options.signal?.aborted === true) {
    return err(bbError('CANCELLED', 'the backup was cancelled', 'run it again: an unfinished copy is resumed or removed by the next run', { snapshot: name }))
  }

  let sourcePruned: string[] = []
  let sourcePruneError: BbError | undefined
  let sourceWarnings: readonly string[] = []
  const sourcePolicy = job.retention?.source
  // Safe while a target is failing or offline: its pinned parent and everything journalled are kept.
  if (job.driver.snapshotsSource && sourcePolicy !== undefined && prunes(options, 'snapshots')) {
    const pruned = await pruneAt(job, job.source, 'source', sourcePolicy, options, sourceSnapshot === undefined ? [] : [sourceSnapshot.name])
    if (pruned.isErr()) sourcePruneError = pruned.error
    else {
      sourcePruned = [...pruned.value.deleted]
      sourceWarnings = pruned.value.warnings ?? []
    }
  }

  return ok({
    source: formatLocation(job.source.location),
    driver: job.driver.name,
    dryRun,
    snapshot: sourceSnapshot?.name ?? unchanged?.name ?? name,
    ...(noSnapshot === undefined ? {} : { noSnapshot }),
    startedAt: now.toISOString(),
    durationMs: Date.now() - started,
    targets: reports.map((r) => ({ ...r, route: routeOf(job.source.location, r.target) })),
    failed: reports.filter((r) => !r.ok).length,
    sourcePruned,
    ...(sourceWarnings.length === 0 ? {} : { sourceWarnings }),
    ...(sourceOthers.length === 0 ? {} : { sourceOthers }),
    ...(sourcePruneError === undefined ? {} : { sourcePruneError }),
  })
}

/**
 * {@link backupToTarget}, tried again after a pause when the network failed: the journal entry the
 * failed try left makes the driver resume its unfinished copy (rsync continues its `.partial`).
 */
const backupWithRetries = async (
  job: Job,
  options: BackupOptions,
  state: { readonly target: Transport; readonly where: string; readonly snapshots: readonly SnapshotInfo[] },
  pending: readonly JournalEntry[],
  name: string,
): Promise<TargetResult> => {
  let report = await backupToTarget(job, options, state.target, state.snapshots, pending, name)
  for (let attempt = 1; !report.ok && report.error !== undefined && TRANSIENT.has(report.error.code) && attempt <= retriesOf(options); attempt++) {
    if (options.dryRun === true || options.signal?.aborted === true) break
    const delayMs = retryDelay(options, attempt)
    options.onEvent?.({ type: 'retrying', target: state.where, attempt, of: retriesOf(options), delayMs, error: report.error })
    await pause(delayMs, options.signal)
    if (cancelled(options)) break
    const journal = await readJournal(job.state.transport, journalPath(job))
    const listed = await job.driver.listSnapshots({ at: state.target, signal: options.signal })
    if (journal.isErr()) report = failedTarget(state.where, Date.now(), journal.error)
    else if (listed.isErr()) report = failedTarget(state.where, Date.now(), listed.error)
    else report = await backupToTarget(job, options, state.target, listed.value, journal.value.entries.filter((e) => e.target === state.where), name)
    report = { ...report, attempts: attempt + 1 }
  }
  return report
}

const backupToTarget = async (
  job: Job,
  options: BackupOptions,
  target: Transport,
  snapshots: readonly SnapshotInfo[],
  pending: readonly JournalEntry[],
  name: string,
): Promise<TargetResult> => {
  const started = Date.now()
  const where = formatLocation(target.location)
  const dryRun = options.dryRun ?? false
  const emit = options.onEvent ?? (() => undefined)
  const path = journalPath(job)

  // another source's directory (rsync): nothing is recovered, written, linked against nor pruned there
  const claimed = claimedByOther(job, target, snapshots, options.takeOver)
  if (claimed !== undefined) {
    emit({ type: 'transfer-failed', target: where, snapshot: name, error: claimed })
    return failedTarget(where, started, claimed)
  }
  const recovery = await recoverTarget(job, options, target, pending)
  if (recovery.error !== undefined) return failedTarget(where, started, recovery.error, { recovered: recovery.recovered })
  const { recovered, resume } = recovery

  // 5. The parent: the newest complete backup here that did not end with errors (made before now: one named by a clock that was ahead is older than it sorts)
  const own = ownSnapshots(job, snapshots)
  const now = (options.now ?? (() => new Date()))().getTime()
  const parent = newestMade(own.filter((s) => s.health !== 'errors'), now)
  const fullBecause = parent === undefined ? (own.length === 0 ? undefined : 'every backup at the target ended with errors') : undefined
  const entry: JournalEntry = {
    target: where,
    snapshot: name,
    ...(parent === undefined ? {} : { parent: parent.name }),
    partialPath: job.driver.partialPath({ target, snapshot: name }),
    startedAt: new Date().toISOString(),
  }
  if (!dryRun) {
    // written down before the transfer starts; the resumed entry is replaced by this one
    const noted = await addJournalEntry(job.state.transport, path, entry)
    if (noted.isErr()) return failedTarget(where, started, noted.error, { recovered })
    if (resume !== undefined && resume.snapshot !== name) {
      const cleared = await removeJournalEntry(job.state.transport, path, resume)
      if (cleared.isErr()) return failedTarget(where, started, cleared.error, { recovered })
    }
  }
  const mode = parent === undefined ? 'full' : 'incremental'
  emit({ type: 'transfer-started', target: where, snapshot: name, mode, ...(parent === undefined ? {} : { parent: parent.name }), from: formatLocation(job.source.location) })
  const transferred: Result<TransferOutcome, BbError> = await job.driver.transfer({
    source: job.source, target, snapshot: name, parent, resume, dryRun, signal: options.signal, onEvent: emit,
    ...(options.progress === false ? { progress: false } : {}),
  })
  if (transferred.isErr()) {
    emit({ type: 'transfer-failed', target: where, snapshot: name, error: transferred.error })
    return failedTarget(where, started, transferred.error, { recovered, snapshot: name, mode, ...(parent === undefined ? {} : { parent: parent.name }) })
  }
  const outcome = transferred.value
  if (!dryRun) {
    const cleared = await removeJournalEntry(job.state.transport, path, entry)
    if (cleared.isErr()) return failedTarget(where, started, cleared.error, { recovered, snapshot: name })
  }
  emit({ type: 'transfer-finished', target: where, snapshot: name, bytes: outcome.bytes, durationMs: Date.now() - started })

  // 6. Retention, only where this run added a backup: a failing target keeps its history.
  let pruned: readonly string[] = []
  let kept: number | undefined
  let pruneError: BbError | undefined
  const clock = clockWarning(own, now)
  const warnings = [...(clock === undefined ? [] : [clock]), ...outcome.warnings]
  let commands = [...outcome.commands]
  const policy = job.retention?.target
  if (policy !== undefined && prunes(options, 'backups')) {
    const r = await pruneTarget(job, target, policy, options, [outcome.snapshot])
    if (r.isErr()) pruneError = r.error
    else {
      pruned = r.value.deleted
      kept = r.value.kept
      commands = [...commands, ...r.value.commands]
      warnings.push(...(r.value.warnings ?? []))
    }
  }
  return {
    target: where,
    ok: true,
    sent: [{ snapshot: outcome.snapshot, mode: outcome.mode, ...(outcome.parent === undefined ? {} : { parent: outcome.parent }), bytes: outcome.bytes, durationMs: Date.now() - started }],
    snapshot: outcome.snapshot,
    mode: outcome.mode,
    ...(outcome.parent === undefined ? {} : { parent: outcome.parent }),
    ...(fullBecause === undefined ? {} : { fullBecause }),
    bytes: outcome.bytes,
    files: outcome.files,
    durationMs: Date.now() - started,
    warnings,
    recovered,
    pruned,
    ...(kept === undefined ? {} : { kept }),
    ...(pruneError === undefined ? {} : { pruneError }),
    commands,
  }
}

interface Recovery {
  readonly recovered: { snapshot: string; action: RecoverAction }[]
  readonly resume: JournalEntry | undefined
  readonly error?: BbError
}

/** 3. What an earlier run left unfinished at a target: the driver removes it, resumes it, or finds it complete. */
const recoverTarget = async (job: Job, options: BackupOptions, target: Transport, pending: readonly JournalEntry[]): Promise<Recovery> => {
  const where = formatLocation(target.location)
  const dryRun = options.dryRun ?? false
  const recovered: { snapshot: string; action: RecoverAction }[] = []
  let resume: JournalEntry | undefined
  for (const entry of pending) {
    const r = await job.driver.recover({ target, entry, dryRun })
    if (r.isErr()) return { recovered, resume, error: r.error }
    recovered.push({ snapshot: entry.snapshot, action: r.value })
    options.onEvent?.({ type: 'recovered', target: where, snapshot: entry.snapshot, action: r.value })
    if (r.value === 'resume') resume = entry
    else if (!dryRun) {
      const cleared = await removeJournalEntry(job.state.transport, journalPath(job), entry)
      if (cleared.isErr()) return { recovered, resume, error: cleared.error }
    }
  }
  return { recovered, resume }
}

/** One target's part in a run of a driver that snapshots its source. */
interface Lane {
  readonly target: Transport
  readonly where: string
  readonly started: number
  readonly recovered: { snapshot: string; action: RecoverAction }[]
  readonly sends: readonly PlannedSend[]
  readonly fullBecause: string | undefined
  /** where the source's origin is (a location) when the sends start from it */
  readonly origin: string | undefined
  next: number
  readonly sent: SentSnapshot[]
  readonly warnings: string[]
  commands: (readonly string[])[]
  bytes: number
  files: number
  error?: BbError
  /** the snapshot that failed, for the report */
  failedAt?: PlannedSend
  /** 1 + the retries so far */
  attempts: number
}

/**
 * 5. for drivers that snapshot the source (btrfs): sends every snapshot each target lacks, oldest
 * first, each incremental against the one before ({@link planSends}), each journalled. Targets
 * whose next send is the same snapshot from the same parent get it from one stream when the
 * driver can ({@link Driver.transferShared}): the source is read once. The first failure stops
 * the sends to that target only; what was sent stays, and is pinned.
 */
const sendSnapshots = async (
  job: Job,
  options: BackupOptions,
  reachable: readonly { readonly target: Transport; readonly where: string; readonly snapshots: readonly SnapshotInfo[] }[],
  journal: readonly JournalEntry[],
  sourceSnapshots: readonly SnapshotInfo[],
  /** no snapshot was taken as the source had not changed (snapshot_create onchange): a target that holds the newest is as it should be */
  unchanged = false,
): Promise<TargetResult[]> => {
  const dryRun = options.dryRun ?? false
  const emit = options.onEvent ?? (() => undefined)
  const path = journalPath(job)
  const now = (options.now ?? (() => new Date()))().getTime()

  // 3. recovery, then what each target lacks; again before a retry, which first removes the unfinished receive
  const prepare = async (lane: Lane, pending: readonly JournalEntry[], snapshots: readonly SnapshotInfo[] | undefined): Promise<void> => {
    Object.assign(lane, { sends: [], next: 0, fullBecause: undefined, origin: undefined, error: undefined, failedAt: undefined })
    const recovery = await recoverTarget(job, options, lane.target, pending)
    lane.recovered.push(...recovery.recovered)
    if (recovery.error !== undefined) {
      lane.error = recovery.error
      return
    }
    let held = snapshots
    if (held === undefined || recovery.recovered.length > 0) {
      // the recovery removed leftovers or found a finished copy: plan from what is there now
      const relisted = await job.driver.listSnapshots({ at: lane.target, signal: options.signal })
      if (relisted.isErr()) {
        lane.error = relisted.error
        return
      }
      held = relisted.value
    }
    // of the backups named as this job's, its own: another source's with the same prefix is not weighed, nor sent against
    const lineage = await readLineage(job.state.transport, lineagePath(job))
    if (lineage.isErr()) {
      lane.error = lineage.error
      return
    }
    const named = ownSnapshots(job, held)
    const from = (await withOrigin(named)).filter((x) => !gone.has(x.name))
    const known = knownAt(lineage.value, lane.where, from, named)
    const { ours, others } = ofThisJob(known, named)
    if (!dryRun) {
      const recorded = await recordLineage(job.state.transport, lineagePath(job), lane.where, () => known)
      if (recorded.isErr()) {
        lane.error = recorded.error
        return
      }
    }
    const note = othersNote(others)
    if (note !== undefined && !lane.warnings.includes(note)) lane.warnings.push(note)
    const clock = clockWarning(ours, now)
    if (clock !== undefined && !lane.warnings.includes(clock)) lane.warnings.push(clock)
    const plan = planSends(from, ours, sendsFor(job, options.now))
    if (plan.refused !== undefined) {
      lane.error = bbError('FULL_SEND_REFUSED', plan.refused,
        'to send it in full once, run with --incremental yes (config: incremental = "yes") where the link can take it; the runs after it are incremental', { target: lane.where })
      return
    }
    const made = from.length > sourceSnapshots.length ? from[0] : undefined
    const origin = made !== undefined && plan.newestCommon?.source === made ? formatLocation({ ...job.source.location, path: made.path }) : undefined
    Object.assign(lane, { sends: plan.sends, fullBecause: plan.fullBecause, origin })
    if (plan.sends.length === 0 && lane.sent.length === 0 && !(unchanged && sourceSnapshots.length > 0)) lane.warnings.push(sourceSnapshots.length === 0 ? 'the source has no snapshot to send' : 'the target already holds the newest snapshot')
    if (plan.newestCommon !== undefined && plan.sends.length === 0 && !dryRun) {
      const pinned = await pinSnapshot(job.state.transport, pinsPath(job), lane.where, plan.newestCommon.source.name)
      if (pinned.isErr()) lane.error = pinned.error
    }
  }
  // in the order they were made: one named by a clock that was ahead counts as older than those made since it was put right
  const withOrigin = originFor(job, madeOrder(sourceSnapshots, now), options.signal)
  /** source snapshots deleted while the run was to send them (another job's prune of this source, or by hand): planned without */
  const gone = new Set<string>()
  /** of a send that failed, the snapshot and the parent that are no longer at the source */
  const vanished = async (send: PlannedSend): Promise<string[]> => {
    const names: string[] = []
    for (const x of [send.snapshot, send.parent]) {
      if (x === undefined) continue
      const there = await job.source.stat(x.path)
      if (there.isOk() && there.value === undefined) names.push(x.name)
    }
    return names
  }
  const lanes: Lane[] = []
  for (const { target, where, snapshots } of reachable) {
    const lane: Lane = { target, where, started: Date.now(), recovered: [], sends: [], fullBecause: undefined, origin: undefined, next: 0, sent: [], warnings: [], commands: [], bytes: 0, files: 0, attempts: 1 }
    lanes.push(lane)
    await prepare(lane, journal.filter((e) => e.target === where), snapshots)
  }

  // the sends, in rounds: each round is one snapshot from one parent, to every target whose next send it is;
  // targets that failed on the network are tried again after a pause, as long as the retry policy allows
  for (;;) {
    for (;;) {
      if (options.signal?.aborted === true) break
      const active = lanes.filter((l) => l.error === undefined && l.next < l.sends.length)
      const head = active[0]?.sends[active[0].next]
      if (head === undefined) break
      const group = active.filter((l) => {
        const s = l.sends[l.next]
        return s?.snapshot.name === head.snapshot.name && s.parent?.name === head.parent?.name
      })
      const name = head.snapshot.name
      const mode = head.parent === undefined ? 'full' : 'incremental'
      const parentName = head.parent?.name
      const identity = head.snapshot.identity
      const sent = identity === undefined ? undefined : { uuid: identity.uuid, ...(identity.receivedUuid === undefined ? {} : { receivedUuid: identity.receivedUuid }) }
      const entries = new Map<Lane, JournalEntry>()
      for (const lane of group) {
        const entry: JournalEntry = {
          target: lane.where, snapshot: name, ...(parentName === undefined ? {} : { parent: parentName }),
          partialPath: job.driver.partialPath({ target: lane.target, snapshot: name }), startedAt: new Date().toISOString(),
          ...(sent === undefined ? {} : { sent }),
        }
        if (!dryRun) {
          const noted = await addJournalEntry(job.state.transport, path, entry)
          if (noted.isErr()) {
            Object.assign(lane, { error: noted.error, failedAt: head })
            continue
          }
        }
        entries.set(lane, entry)
        emit({
          type: 'transfer-started', target: lane.where, snapshot: name, mode, ...(parentName === undefined ? {} : { parent: parentName }),
          from: formatLocation({ ...job.source.location, path: head.snapshot.path }),
          ...(head.parent === undefined ? {} : { parentFrom: formatLocation({ ...job.source.location, path: head.parent.path }) }),
        })
      }
      const going = [...entries.keys()]
      const replan: Lane[] = []
      const roundStarted = Date.now()
      const common = { source: job.source, snapshot: name, sourceSnapshot: head.snapshot, ...(head.parent === undefined ? {} : { sourceParent: head.parent }), dryRun, signal: options.signal, onEvent: emit, ...(options.progress === false ? { progress: false } : {}) }
      const results: readonly Result<TransferOutcome, BbError>[] = going.length > 1 && job.driver.transferShared !== undefined
        ? await job.driver.transferShared({ ...common, targets: going.map((l) => ({ target: l.target, parent: l.sends[l.next]?.parentAtTarget })) })
        : await Promise.all(going.map((l) => job.driver.transfer({ ...common, target: l.target, parent: l.sends[l.next]?.parentAtTarget, resume: undefined })))
      for (const [i, lane] of going.entries()) {
        const result = results[i]
        const entry = entries.get(lane) as JournalEntry
        if (result === undefined) throw new InternalError(`driver ${job.driver.name} gave ${results.length} results for ${going.length} targets`)
        if (result.isErr()) {
          const error = result.error
          emit({ type: 'transfer-failed', target: lane.where, snapshot: name, error })
          const lost = dryRun || cancelled(options) ? [] : await vanished(head)
          if (lost.length > 0) {
            // what is still at the source is sent all the same: planned again without it, the unfinished copy removed first
            for (const x of lost) gone.add(x)
            const what = lost.length > 1 ? `${name} and its parent ${parentName ?? ''} were` : lost[0] === name ? `${name} was` : `${parentName ?? ''}, the parent of ${name}, was`
            lane.warnings.push(`${what} deleted at the source before this run could send ${name} (another job's prune of this source, or by hand): the rest is planned again without ${lost.length > 1 ? 'them' : 'it'}`)
            replan.push(lane)
            continue
          }
          Object.assign(lane, { error, failedAt: head })
          if (!dryRun && REFUSED_BEFORE_WRITING.has(error.code)) {
            // the place was taken by something that is not ours: the journal must not claim it for the next run to remove
            const cleared = await removeJournalEntry(job.state.transport, path, entry)
            if (cleared.isErr()) lane.warnings.push(`the journal still names ${name}: ${cleared.error.message}`)
          }
          continue
        }
        const outcome = result.value
        if (!dryRun) {
          // three files, written at once: the copy is whole and committed, so any of them alone is true
          const cleared = await ResultAsync.combine([
            removeJournalEntry(job.state.transport, path, entry),
            pinSnapshot(job.state.transport, pinsPath(job), lane.where, name),
            recordLineage(job.state.transport, lineagePath(job), lane.where, (known) => [...(known ?? []), ...sentUuids([head.snapshot])]),
          ] as const)
          if (cleared.isErr()) {
            Object.assign(lane, { error: cleared.error, failedAt: head })
            continue
          }
        }
        emit({ type: 'transfer-finished', target: lane.where, snapshot: name, bytes: outcome.bytes, durationMs: Date.now() - roundStarted })
        lane.sent.push({ snapshot: name, mode: outcome.mode, ...(outcome.parent === undefined ? {} : { parent: outcome.parent }), bytes: outcome.bytes, durationMs: Date.now() - roundStarted })
        lane.bytes += outcome.bytes
        lane.files += outcome.files
        lane.warnings.push(...outcome.warnings)
        lane.commands = [...lane.commands, ...outcome.commands]
        lane.next++
      }
      if (replan.length > 0) {
        const pending = await readJournal(job.state.transport, path)
        for (const lane of replan) {
          if (pending.isErr()) lane.error = pending.error
          else await prepare(lane, pending.value.entries.filter((e) => e.target === lane.where), undefined)
        }
      }
    }
    const again = lanes.filter((l) => l.error !== undefined && TRANSIENT.has(l.error.code) && l.attempts <= retriesOf(options))
    if (again.length === 0 || options.signal?.aborted === true || dryRun) break
    const delayMs = retryDelay(options, Math.max(...again.map((l) => l.attempts)))
    for (const lane of again) emit({ type: 'retrying', target: lane.where, attempt: lane.attempts, of: retriesOf(options), delayMs, error: lane.error as BbError })
    await pause(delayMs, options.signal)
    if (cancelled(options)) break
    const pending = await readJournal(job.state.transport, path)
    for (const lane of again) {
      lane.attempts++
      if (pending.isErr()) lane.error = pending.error
      else await prepare(lane, pending.value.entries.filter((e) => e.target === lane.where), undefined)
    }
  }

  // 6. retention where this run added a backup, then the reports
  const reports: TargetResult[] = []
  for (const lane of lanes) {
    const last = lane.sent.at(-1)
    const common = {
      recovered: lane.recovered, sent: lane.sent, bytes: lane.bytes, files: lane.files, warnings: lane.warnings,
      ...(lane.attempts > 1 ? { attempts: lane.attempts } : {}),
      ...(lane.fullBecause === undefined ? {} : { fullBecause: lane.fullBecause }),
      ...(lane.origin === undefined || lane.sent.length === 0 ? {} : { origin: lane.origin }),
    }
    if (lane.error !== undefined) {
      const at = lane.failedAt
      reports.push(failedTarget(lane.where, lane.started, lane.error, {
        ...common, commands: lane.commands,
        ...(at === undefined ? {} : { snapshot: at.snapshot.name, mode: at.parent === undefined ? 'full' : 'incremental', ...(at.parent === undefined ? {} : { parent: at.parent.name }) }),
      }))
      continue
    }
    let pruned: readonly string[] = []
    let kept: number | undefined
    let pruneError: BbError | undefined
    let pruneWarnings: readonly string[] = []
    const policy = job.retention?.target
    if (policy !== undefined && prunes(options, 'backups') && lane.sent.length > 0 && options.signal?.aborted !== true) {
      const r = await pruneTarget(job, lane.target, policy, options, lane.sent.map((x) => x.snapshot))
      if (r.isErr()) pruneError = r.error
      else {
        pruned = r.value.deleted
        kept = r.value.kept
        lane.commands = [...lane.commands, ...r.value.commands]
        pruneWarnings = r.value.warnings ?? []
      }
    }
    reports.push({
      target: lane.where,
      ok: true,
      ...common,
      warnings: [...lane.warnings, ...pruneWarnings],
      ...(last === undefined ? {} : { snapshot: last.snapshot, mode: last.mode, ...(last.parent === undefined ? {} : { parent: last.parent }) }),
      durationMs: Date.now() - lane.started,
      pruned,
      ...(kept === undefined ? {} : { kept }),
      ...(pruneError === undefined ? {} : { pruneError }),
      commands: lane.commands,
    })
  }
  return reports
}
