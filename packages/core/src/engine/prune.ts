import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import type { SnapshotInfo } from '../driver/driver.js'
import { bbError, type BbError } from '../errors.js'
import { readJournal, removeJournalEntry, type JournalEntry } from '../journal/journal.js'
import { formatLocation } from '../location/location.js'
import { planRetention, timeZoneFits, type Protection, type RetentionDecision } from '../retention/plan.js'
import { normalizePolicy, type RetentionPolicy } from '../retention/policy.js'
import type { Transport } from '../transport/transport.js'
import { knownAt, ofThisJob, readLineage, receivedUuids, recordLineage } from '../journal/lineage.js'
import { readPins, unpinTargets } from '../journal/pins.js'
import { claimedByOther, journalPath, lineagePath, lockPath, madeOrder, maxDeleteFor, newestMade, othersAtSource, ownSnapshots, pinsPath, type Job, type RunOptions } from './job.js'
import { planSends, retentionEntry } from './plan-sends.js'
import { heldBeside, heldReason } from './beside.js'
import { heldByRestores, restoreHoldReason } from './holds.js'

export interface PruneResult {
  /** the target (or source), as its location prints */
  readonly at: string
  readonly side: 'source' | 'target'
  readonly decisions: readonly RetentionDecision[]
  readonly deleted: readonly string[]
  /** the job's snapshots left there: those the policy and the protections keep */
  readonly kept: number
  readonly commands: readonly (readonly string[])[]
  /** `prune()`: this place's prune failed (a target offline, a delete refused), and the other places were pruned all the same */
  readonly error?: BbError
  /** at the source, with `forgetTargets`: what the job kept for each of those targets, and no longer keeps */
  readonly forgotten?: readonly ForgottenTarget[]
  /**
   * at a btrfs target: backups named as the job's that are not its own (not copies of its source's
   * snapshots, nor ever sent by it: another source's with the same prefix); at its source, snapshots
   * in the folder taken of another subvolume ({@link SnapshotInfo.otherSubvolume}). Neither weighed nor deleted.
   */
  readonly others?: readonly string[]
  /** what did not go as planned and is no failure: snapshots the kernel would not delete now because they are in use (`SNAPSHOT_BUSY`), kept until the next prune */
  readonly warnings?: readonly string[]
}

/** A target the job no longer keeps anything for (`prune` with `forgetTargets`). */
export interface ForgottenTarget {
  /** as its location prints */
  readonly target: string
  /** the snapshot that was kept as its next incremental's parent */
  readonly pinned?: string
  /** the unfinished transfers to it that were on record */
  readonly pending: readonly JournalEntry[]
}

export interface PruneOptions extends RunOptions {
  /**
   * Targets that are gone for good (a disk retired, a host taken out of the job): the snapshot kept
   * as each one's next parent (its pin) and its unfinished transfers are forgotten first, so that
   * the policy prunes them. Not a target of the job itself, whose next backup would pin it again.
   */
  readonly forgetTargets?: readonly string[]
}

/** which of a job's places a prune is at: the source's snapshots or a target's backups */
type Side = 'source' | 'target'

/**
 * Applies a policy at one place. Kept whatever the policy says: the newest snapshot, the newest
 * healthy one (the next run's parent), everything the journal holds and its parents, and `made`
 * (the snapshots or backups the calling run made).
 */
export const pruneAt = async (job: Job, at: Transport, side: Side, policy: RetentionPolicy, options: PruneOptions, made: readonly string[] = []): Promise<Result<PruneResult, BbError>> => {
  const where = formatLocation(at.location)
  const listed = await job.driver.listSnapshots({ at, side, signal: options.signal })
  if (listed.isErr()) return err(listed.error)
  // another source's directory of backups (rsync): none of them is this job's to weigh or delete
  const claimed = side === 'target' ? claimedByOther(job, at, listed.value, options.takeOver) : undefined
  if (claimed !== undefined) return err(claimed)
  const journal = await readJournal(job.state.transport, journalPath(job))
  if (journal.isErr()) return err(journal.error)
  const named = ownSnapshots(job, listed.value)
  // at a target of a driver with identities, only the job's own backups (another source's with the same prefix is left alone)
  const source = side === 'target' && job.driver.snapshotsSource ? await job.driver.listSnapshots({ at: job.source, side: 'source', signal: options.signal }) : undefined
  if (source?.isErr() === true) return err(source.error)
  const sourceOwn = source?.isOk() === true ? ownSnapshots(job, source.value) : undefined
  const lineage = sourceOwn === undefined ? undefined : await readLineage(job.state.transport, lineagePath(job))
  if (lineage?.isErr() === true) return err(lineage.error)
  const known = sourceOwn === undefined || lineage?.isOk() !== true ? undefined : knownAt(lineage.value, where, sourceOwn, named)
  const { ours: own, others: notOurs } = known === undefined ? { ours: named, others: [] } : ofThisJob(known, named)
  // at the source, snapshots of another subvolume in a shared folder (another source's with the same prefix)
  const others = side === 'source' ? othersAtSource(job, listed.value) : notOurs
  // what this run made is never its retention's to delete, even where it sorts older (a clock set back)
  const protect: Protection[] = made.map((name) => ({ name, reason: 'made by this run' }))
  // what a forgotten target had (in a dry run still on record) protects nothing
  const forgotten = options.forgetTargets ?? []
  for (const entry of journal.value.entries.filter((e) => !forgotten.includes(e.target))) {
    protect.push({ name: entry.snapshot, reason: `a pending transfer to ${entry.target} needs it` })
    if (entry.parent !== undefined) protect.push({ name: entry.parent, reason: `parent of a pending transfer to ${entry.target}` })
  }
  // what a restore under way reads (a restore by hand while cron runs the job)
  const reading = await heldByRestores(job, at)
  if (reading.isErr()) return err(reading.error)
  for (const h of reading.value) protect.push({ name: h.snapshot, reason: restoreHoldReason(h) })
  // the newest made before now (one dated ahead of the clock sorts last, but is older; retention keeps it anyway)
  const now = (options.now ?? (() => new Date()))()
  const newestHealthy = newestMade(own.filter((s) => s.health !== 'errors'), now.getTime())
  if (side === 'source') {
    if (newestHealthy !== undefined) protect.push({ name: newestHealthy.name, reason: 'the newest snapshot' })
    // the parent of each target's next incremental, also of targets that are offline now
    const pins = await readPins(job.state.transport, pinsPath(job))
    if (pins.isErr()) return err(pins.error)
    for (const [target, name] of Object.entries(pins.value.pins).filter(([t]) => !forgotten.includes(t))) protect.push({ name, reason: `the newest snapshot ${target} holds (its next incremental's parent)` })
    // another job of the same source and prefix (its state beside this one's) shares the folder: what it keeps for its targets
    const beside = await heldBeside(job, new Set(own.map((s) => s.name)))
    if (beside.isErr()) return err(beside.error)
    for (const h of beside.value) protect.push({ name: h.snapshot, reason: heldReason(h) })
  } else {
    // rsync links the next backup against it; for received snapshots it is the last good copy
    const why = job.driver.snapshotsSource ? 'the last good copy is never deleted' : 'the next run links against it'
    if (newestHealthy !== undefined) protect.push({ name: newestHealthy.name, reason: `the newest healthy backup (${why})` })
    if (sourceOwn !== undefined) {
      // the copy of the newest snapshot the source still has: the next incremental's parent
      const common = planSends(madeOrder(sourceOwn, now.getTime()), own).newestCommon
      if (common !== undefined) protect.push({ name: common.target.name, reason: `the copy of ${common.source.name}, the newest snapshot the source also holds (the next incremental's parent)` })
    }
    if (job.driver.snapshotsSource) {
      // the last one sent here (its pin) is the newest made, whatever its name says: one named by a clock that was behind sorts older than it is
      const pins = await readPins(job.state.transport, pinsPath(job))
      if (pins.isErr()) return err(pins.error)
      const last = own.find((s) => s.name === pins.value.pins[where])
      if (last !== undefined && !protect.some((p) => p.name === last.name)) {
        protect.push({ name: last.name, reason: 'the last snapshot sent here (the newest made, though another is named newer: a clock that was wrong named one of them)' })
      }
    }
  }
  const planned = (): Result<RetentionDecision[], BbError> => planRetention(
    own.map(retentionEntry),
    policy,
    { now, protect, ...(job.retention?.timeZone === undefined ? {} : { timeZone: job.retention.timeZone }), ...limit(maxDeleteFor(job.retention, own.length)) },
  )
  let plan = planned()
  if (plan.isErr()) return err(plan.error)
  // the backup last made here, where the place records it (rsync's `latest`), asked only when a backup is to go: one named by a clock that was behind sorts older than it is
  if (side === 'target' && job.driver.lastMade !== undefined && plan.value.some((d) => !d.keep)) {
    const last = await job.driver.lastMade({ at, signal: options.signal })
    if (last.isErr()) return err(last.error)
    const name = last.value
    if (name !== undefined && plan.value.some((d) => d.name === name && !d.keep)) {
      protect.push({ name, reason: 'the last backup made here (latest points at it), though another is named newer: a clock that was wrong named one of them' })
      plan = planned()
      if (plan.isErr()) return err(plan.error)
    }
  }
  const doomed: SnapshotInfo[] = own.filter((s) => plan.value.some((d) => d.name === s.name && !d.keep))
  const deleted = await job.driver.deleteSnapshots({ at, snapshots: doomed, dryRun: options.dryRun ?? false, signal: options.signal })
  // in use (a btrfs send reads it): kept for now, and the rest of the batch is gone
  const busy = deleted.isErr() ? busyIn(deleted.error) : []
  if (deleted.isErr() && busy.length === 0) return err(deleted.error)
  const removed = doomed.filter((s) => !busy.includes(s.name))
  if (known !== undefined && options.dryRun !== true) {
    const gone = new Set(receivedUuids(removed))
    const recorded = await recordLineage(job.state.transport, lineagePath(job), where, () => known.filter((u) => !gone.has(u)))
    if (recorded.isErr()) return err(recorded.error)
  }
  for (const s of removed) {
    options.onEvent?.({ type: 'pruned', at: where, snapshot: s.name, reasons: plan.value.find((d) => d.name === s.name)?.reasons ?? [], path: formatLocation({ ...at.location, path: s.path }) })
  }
  const decisions = plan.value.map((d) => (busy.includes(d.name) ? { ...d, keep: true, reasons: [`due to be deleted (${d.reasons.join('; ')}), but in use now: the next prune deletes it`] } : d))
  return ok({
    at: where, side, decisions, deleted: removed.map((s) => s.name), kept: own.length - removed.length,
    commands: deleted.isOk() ? deleted.value : commandOf(deleted.error),
    ...(others.length === 0 ? {} : { others: others.map((o) => o.name) }),
    ...(deleted.isOk() ? {} : { warnings: [`${deleted.error.message}; ${deleted.error.hint}`] }),
  })
}

/** The command an error ran, as its details give it. */
const commandOf = (error: BbError): (readonly string[])[] => {
  const argv = error.details?.argv
  return Array.isArray(argv) ? [argv] : []
}

/** The snapshots a `SNAPSHOT_BUSY` error names (none for any other error). */
const busyIn = (error: BbError): readonly string[] => {
  const busy = error.code === 'SNAPSHOT_BUSY' ? error.details?.busy : undefined
  return Array.isArray(busy) ? busy : []
}

const limit = (maxDelete: number | undefined): { maxDelete?: number } => (maxDelete === undefined ? {} : { maxDelete })

/**
 * A job's retention as it is given: its policies and its time zone. Checked before anything runs,
 * so that a run does not back up first and fail at pruning (nor a dry run pass where the run fails).
 */
export const retentionFits = (job: Job): Result<void, BbError> => {
  const settings = job.retention
  const zone = timeZoneFits(settings?.timeZone)
  if (zone.isErr()) return err(zone.error)
  const max = settings?.maxDelete
  if (max !== undefined && max !== 'all' && !(Number.isSafeInteger(max) && max >= 1)) {
    return err(bbError('INVALID_POLICY', `maxDelete ${JSON.stringify(max)} is not a whole number of at least 1, nor 'all'`,
      "give how many snapshots one prune may delete at a place (--max-delete 20, max_delete = 20), or 'all' for no limit; to delete none, give no policy"))
  }
  for (const policy of [settings?.target, settings?.source]) {
    const checked = policy === undefined ? ok(undefined) : normalizePolicy(policy)
    if (checked.isErr()) return err(checked.error)
  }
  return ok(undefined)
}

/**
 * Applies the job's retention to each target (and the source, where the driver keeps snapshots
 * there), under the job's lock. A side without a policy is left alone. A place that cannot be
 * pruned (a target offline) is one result with its `error`, and the others are pruned all the
 * same, as a run prunes beside a failed target: the source keeps what an offline target's next
 * incremental needs (its pin). The `Result` is an error only for what stops them all (the lock,
 * a bad policy).
 * @example
 * prune(job, { dryRun: true }).map((results) => results.flatMap((r) => r.deleted))
 */
export const prune = (job: Job, options: PruneOptions = {}): ResultAsync<PruneResult[], BbError> => {
  const fits = retentionFits(job)
  if (fits.isErr()) return errAsync(fits.error)
  const forgetting = options.forgetTargets ?? []
  if (forgetting.length > 0 && (!job.driver.snapshotsSource || job.retention?.source === undefined)) {
    return errAsync(bbError('INVALID_OPTIONS', job.driver.snapshotsSource
      ? 'forgetting a target lets the source\'s retention prune what was kept for it, but this job has none'
      : `the ${job.driver.name} driver keeps no source snapshots for its targets: there is nothing to forget`,
    job.driver.snapshotsSource ? 'give the source\'s retention too (--keep-snapshots, config: keep_snapshots)' : 'unfinished transfers to the job\'s own targets are forgotten with --remove-locks'))
  }
  const own = forgetting.find((t) => job.targets.some((at) => formatLocation(at.location) === t))
  if (own !== undefined) {
    return errAsync(bbError('INVALID_OPTIONS', `${own} is a target of this job: its next backup would pin a snapshot for it again`,
      'take it out of the job (the config, or the command line) first, then forget it', { target: own }))
  }
  const places: [Transport, Side, RetentionPolicy][] = [
    ...job.targets.map((t): [Transport, Side, RetentionPolicy | undefined] => [t, 'target', job.retention?.target]),
    ...(job.driver.snapshotsSource ? [[job.source, 'source', job.retention?.source] as [Transport, Side, RetentionPolicy | undefined]] : []),
  ].filter((p): p is [Transport, Side, RetentionPolicy] => p[2] !== undefined)
  connectHosts(places.map(([at]) => at), options.signal)
  return new ResultAsync(withJobLock(job, options, async () => {
    const forgotten = forgetting.length === 0 ? undefined : await forget(job, forgetting, options.dryRun === true)
    if (forgotten?.isErr() === true) return err(forgotten.error)
    const results: PruneResult[] = []
    for (const [at, side, policy] of places) {
      const r = await pruneAt(job, at, side, policy, options)
      const result = r.isOk() ? r.value : { at: formatLocation(at.location), side, decisions: [], deleted: [], kept: 0, commands: [], error: r.error }
      results.push(side === 'source' && forgotten?.isOk() === true ? { ...result, forgotten: forgotten.value } : result)
    }
    return ok(results)
  }))
}

/** What the job keeps for `targets` (pins, journal entries), dropped (in a dry run only told); a target it keeps nothing for is an error that names those it does. */
const forget = async (job: Job, targets: readonly string[], dryRun: boolean): Promise<Result<ForgottenTarget[], BbError>> => {
  const [pins, journal] = [await readPins(job.state.transport, pinsPath(job)), await readJournal(job.state.transport, journalPath(job))]
  if (pins.isErr()) return err(pins.error)
  if (journal.isErr()) return err(journal.error)
  const found = targets.map((target): ForgottenTarget => {
    const pinned = pins.value.pins[target]
    return { target, ...(pinned === undefined ? {} : { pinned }), pending: journal.value.entries.filter((e) => e.target === target) }
  })
  const unknown = found.find((f) => f.pinned === undefined && f.pending.length === 0)
  if (unknown !== undefined) {
    const known = [...new Set([...Object.keys(pins.value.pins), ...journal.value.entries.map((e) => e.target)])].sort()
    return err(bbError('NOT_FOUND', `the job keeps nothing for ${unknown.target}: no snapshot is pinned for it and no transfer to it is pending`,
      known.length === 0 ? 'nothing is kept for any target: there is nothing to forget' : `name the target as the job recorded it: ${known.join(', ')}`, { target: unknown.target }))
  }
  if (dryRun) return ok(found)
  for (const f of found) {
    for (const entry of f.pending) {
      const r = await removeJournalEntry(job.state.transport, journalPath(job), entry)
      if (r.isErr()) return err(r.error)
    }
  }
  const unpinned = await unpinTargets(job.state.transport, pinsPath(job), targets)
  return unpinned.isErr() ? err(unpinned.error) : ok(found)
}

/**
 * Starts reaching the hosts of `places` (`Transport.connect`: ssh logins) at once, so that they log
 * in while the lock is taken and the source is read. A login that fails is reported by the first
 * command on that host.
 */
export const connectHosts = (places: readonly Transport[], signal: AbortSignal | undefined): void => {
  for (const at of places) void at.connect?.(signal)
}

/** Runs `body` holding the job's lock (none in a dry run: it changes nothing), and always releases it. */
export const withJobLock = async <T>(job: Job, options: RunOptions, body: () => Promise<Result<T, BbError>>): Promise<Result<T, BbError>> => {
  if (options.dryRun === true) return body()
  const made = await job.state.transport.mkdir(job.state.directory, { recursive: true })
  if (made.isErr()) return err(made.error)
  const lock = await job.state.transport.lock(lockPath(job), {
    command: `bbackup ${job.driver.name} ${formatLocation(job.source.location)}`,
    ...(options.waitSeconds === undefined ? {} : { waitSeconds: options.waitSeconds }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  })
  if (lock.isErr()) return err(lock.error)
  if (lock.value.tookOver !== undefined) options.onEvent?.({ type: 'lock-taken-over', path: lock.value.path, reason: lock.value.tookOver.reason })
  try {
    return await body()
  } finally {
    await lock.value.release()
  }
}

/**
 * Forgets the pending transfers to `targets` (all of them when omitted) without touching the
 * targets: btrfs-backup's `--remove-locks`. Only for when you know no unfinished copy is left
 * there; the snapshots they protected can then be pruned.
 * @example
 * forgetPending(job, { targets: ['/mnt/backup'] }).map((forgotten) => forgotten.length)
 */
export const forgetPending = (job: Job, options: RunOptions & { readonly targets?: readonly string[] } = {}): ResultAsync<JournalEntry[], BbError> =>
  new ResultAsync(withJobLock(job, options, async () => {
    const journal = await readJournal(job.state.transport, journalPath(job))
    if (journal.isErr()) return err(journal.error)
    const doomed = journal.value.entries.filter((e) => options.targets === undefined || options.targets.includes(e.target))
    if (options.dryRun === true) return ok(doomed)
    for (const entry of doomed) {
      const r = await removeJournalEntry(job.state.transport, journalPath(job), entry)
      if (r.isErr()) return err(r.error)
    }
    return ok(doomed)
  }))
