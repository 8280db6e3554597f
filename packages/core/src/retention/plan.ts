import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '../errors.js'
import { compareSnapshots } from '../names/snapshot-name.js'
import { scheduleBtrbk } from './btrbk-schedule.js'
import { normalizePolicy, type PolicyError, type RetentionPolicy } from './policy.js'
import { scheduleRotate } from './rotate-schedule.js'
import { isValidTimeZone, wallClockReader } from './wall-clock.js'

/** What retention needs to know of a snapshot. */
export interface RetentionSnapshot {
  readonly name: string
  /** an invalid Date marks a time that could not be read: such a snapshot is always kept */
  readonly time: Date
  /** false for names with a date only (btrbk `short`): btrbk then ignores `hourOfDay` */
  readonly hasTime?: boolean
  /** the collision suffix, to order snapshots taken in the same second */
  readonly sequence?: number
  /**
   * the snapshot this one cannot be restored without (a raw incremental stream's parent): kept
   * whenever this one is, whatever the policy says
   */
  readonly dependsOn?: string
}

/** A snapshot that no policy may delete, and why (the next incremental's parent, a journalled transfer). */
export interface Protection {
  readonly name: string
  readonly reason: string
}

export interface RetentionOptions {
  /** the reference time for btrbk's spelling (rotate-backups counts from the newest snapshot) */
  readonly now: Date
  /** IANA zone whose wall clock defines days and weeks; the host's zone when omitted */
  readonly timeZone?: string
  readonly protect?: readonly Protection[]
  /**
   * At most this many deletions: a plan that would delete more is an error
   * (`RETENTION_WOULD_DELETE_MANY`) and deletes nothing, as rsync's `--max-delete` stops. A clock
   * that jumped ahead, or a mistyped policy, would otherwise take most of the snapshots at once.
   * No limit when omitted.
   */
  readonly maxDelete?: number
}

export interface RetentionDecision {
  readonly name: string
  readonly keep: boolean
  /** why it is kept (every rule that keeps it), or why it goes */
  readonly reasons: readonly string[]
}

export type RetentionError = PolicyError | BbError<'RETENTION_WOULD_DELETE_ALL' | 'RETENTION_WOULD_DELETE_MANY'>

/**
 * Decides, for every snapshot, whether the policy keeps it, with the reasons. Whatever the policy
 * says, these are kept: the newest snapshot, snapshots dated in the future, snapshots whose time
 * could not be read, every `protect`ed name, and what a kept snapshot `dependsOn` (all the way down
 * its chain). A policy that keeps none of the snapshots is an
 * error rather than a deletion of everything but the protected ones; so is a plan that deletes
 * more than `maxDelete`.
 * @example
 * planRetention(
 *   [{ name: 'a', time: new Date('2026-01-01') }, { name: 'b', time: new Date('2026-01-02') }],
 *   { keepLast: 1 },
 *   { now: new Date('2026-01-03') },
 * ) // ok([{ name: 'a', keep: false, ... }, { name: 'b', keep: true, ... }])
 */
/** A time zone for retention to count days in: undefined (the host's) or one this Node knows. */
export const timeZoneFits = (timeZone: string | undefined): Result<void, RetentionError> =>
  (timeZone === undefined || isValidTimeZone(timeZone) ? ok(undefined)
    : err(bbError('INVALID_POLICY', `unknown time zone ${JSON.stringify(timeZone)}`, 'use an IANA zone name such as UTC or Europe/Berlin (timedatectl list-timezones)')))

export const planRetention = (
  snapshots: readonly RetentionSnapshot[],
  policy: RetentionPolicy,
  options: RetentionOptions,
): Result<RetentionDecision[], RetentionError> => {
  const zone = timeZoneFits(options.timeZone)
  if (zone.isErr()) return err(zone.error)
  return normalizePolicy(policy).andThen((normalized) => {
    const wall = wallClockReader(options.timeZone)
    const valid = snapshots
      .map((s, index) => ({ ...s, index }))
      .filter((s) => !Number.isNaN(s.time.getTime()))
      .sort(compareSnapshots)
    const entries = valid.map((s) => ({ index: s.index, wall: wall(s.time), hasTime: s.hasTime ?? true }))

    let kept: Map<number, string[]>
    if (normalized.spelling === 'btrbk') kept = scheduleBtrbk(entries, normalized, wall(options.now))
    else if (normalized.spelling === 'rotate') kept = scheduleRotate(entries, normalized)
    else kept = new Map(valid.slice(-normalized.keepLast).map((s, i, all) => [s.index, [`keepLast: ${all.length - i} of ${normalized.keepLast} newest`]]))

    if (valid.length > 0 && kept.size === 0) {
      return err(bbError(
        'RETENTION_WOULD_DELETE_ALL',
        `the retention policy keeps none of the ${valid.length} snapshots (the newest is ${valid[valid.length - 1]?.name ?? ''})`,
        'nothing was deleted; widen the policy (e.g. a larger count or preserveMin) so that it keeps at least one snapshot',
        { snapshots: valid.length },
      ))
    }

    const protections = new Map<number, string[]>()
    const protect = (index: number, reason: string): void => {
      protections.set(index, [...(protections.get(index) ?? []), reason])
    }
    const newest = valid[valid.length - 1]
    if (newest !== undefined) protect(newest.index, 'protected: the newest snapshot')
    const nowMs = options.now.getTime()
    for (const s of valid) if (s.time.getTime() > nowMs) protect(s.index, 'protected: dated in the future')
    const protectedNames = new Map<string, string[]>()
    for (const p of options.protect ?? []) protectedNames.set(p.name, [...(protectedNames.get(p.name) ?? []), `protected: ${p.reason}`])

    const decisions = snapshots.map((s, index): RetentionDecision => {
      if (Number.isNaN(s.time.getTime())) return { name: s.name, keep: true, reasons: ['protected: its time could not be read'] }
      // each reason once: the newest snapshot is often protected as that by the caller too
      const reasons = [...new Set([...(kept.get(index) ?? []), ...(protections.get(index) ?? []), ...(protectedNames.get(s.name) ?? [])])]
      return reasons.length > 0
        ? { name: s.name, keep: true, reasons }
        : { name: s.name, keep: false, reasons: [`not kept by the ${normalized.spelling} policy`] }
    })
    const planned = keepWhatKeptOnesNeed(snapshots, decisions)
    const doomed = valid.filter((s) => planned[s.index]?.keep === false)
    if (options.maxDelete !== undefined && doomed.length > options.maxDelete) {
      return err(bbError(
        'RETENTION_WOULD_DELETE_MANY',
        `the retention policy would delete ${doomed.length} of the ${snapshots.length} snapshots at once (${doomed[0]?.name ?? ''} … ${doomed.at(-1)?.name ?? ''}), more than the ${options.maxDelete} one prune may delete`,
        'nothing was deleted. A clock that jumped ahead, a mistyped policy or a long pause in the backups does this: check the clock and the policy, see what would go (prune -n --max-delete all), then let it happen once (--max-delete N or all; config: max_delete)',
        { snapshots: snapshots.length, deletions: doomed.length, maxDelete: options.maxDelete },
      ))
    }
    return ok(planned)
  })
}

/** Follows `dependsOn` from every kept snapshot down its chain: what a kept one needs is kept too. */
const keepWhatKeptOnesNeed = (snapshots: readonly RetentionSnapshot[], decisions: RetentionDecision[]): RetentionDecision[] => {
  const indexOf = new Map(snapshots.map((s, i) => [s.name, i]))
  const work = decisions.flatMap((d, i) => (d.keep ? [i] : []))
  for (let i = work.pop(); i !== undefined; i = work.pop()) {
    const dependent = snapshots[i]
    const needed = dependent?.dependsOn === undefined ? undefined : indexOf.get(dependent.dependsOn)
    const decision = needed === undefined ? undefined : decisions[needed]
    if (dependent === undefined || needed === undefined || decision === undefined) continue
    const reason = `protected: ${dependent.name} needs it (incremental against it)`
    if (decision.reasons.includes(reason)) continue
    decisions[needed] = { name: decision.name, keep: true, reasons: [...(decision.keep ? decision.reasons : []), reason] }
    if (!decision.keep) work.push(needed)
  }
  return decisions
}
