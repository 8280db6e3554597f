import { createHash } from 'node:crypto'
import { err, ok, type Result } from 'neverthrow'
import { aheadOfClock, bbError, type BbError } from '@bb/core'

/**
 * backy's schedule: named tags, each with an interval and a keep count (reference/block.md §2.3).
 * Every backup carries the tags that were due when it ran; expiry takes tags away, and a revision
 * left without tags is deleted. `manual:` tags are outside the schedule and never expire.
 */
export interface ScheduleTag {
  readonly intervalSeconds: number
  readonly keep: number
}
export type Schedule = Readonly<Record<string, ScheduleTag>>

/** backy's default schedule: a week of dailies, four weeklies, three 30-day monthlies. */
export const DEFAULT_SCHEDULE: Schedule = {
  daily: { intervalSeconds: 86_400, keep: 7 },
  weekly: { intervalSeconds: 7 * 86_400, keep: 4 },
  monthly: { intervalSeconds: 30 * 86_400, keep: 3 },
}

/** Slots are counted from 0001-01-01T00:00Z (a Monday), as backy's datetime.min: weekly slots fall on Mondays. */
const GRID_ORIGIN_MS = -62_135_596_800_000

export const MANUAL_PREFIX = 'manual:'

const UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400, w: 7 * 86_400 }

/** `1d`, `12h`, `1w`, `30d`, `90m`, `45s` or bare seconds (backy's parse_duration). */
export const parseDuration = (text: string): number | undefined => {
  const m = /^(\d+)([smhdw]?)$/.exec(text.trim())
  if (m === null) return undefined
  const seconds = Number(m[1]) * (UNITS[m[2] ?? ''] ?? 1)
  return seconds > 0 ? seconds : undefined
}

export const formatDuration = (seconds: number): string => {
  for (const [unit, size] of [['w', 7 * 86_400], ['d', 86_400], ['h', 3600], ['m', 60]] as const) {
    if (seconds % size === 0) return `${seconds / size}${unit}`
  }
  return `${seconds}s`
}

const TAG_NAME = /^[a-z][a-z0-9_-]*$/

/**
 * Parses `daily=1d:7,weekly=1w:4,monthly=30d:3` (commas or spaces between tags): each tag, its
 * interval and how many revisions carrying it to keep.
 */
export const parseSchedule = (text: string): Result<Schedule, BbError<'INVALID_POLICY'>> => {
  const schedule: Record<string, ScheduleTag> = {}
  const parts = text.split(/[\s,]+/).filter((p) => p !== '')
  if (parts.length === 0) return err(bbError('INVALID_POLICY', 'the schedule is empty', "give tags as NAME=INTERVAL:KEEP, e.g. 'daily=1d:7,weekly=1w:4,monthly=30d:3'"))
  for (const part of parts) {
    const m = /^([^=]+)=([^:]+):(\d+)$/.exec(part)
    const name = m?.[1] ?? ''
    const interval = m === null ? undefined : parseDuration(m[2] ?? '')
    const keep = Number(m?.[3])
    if (m === null || interval === undefined || !TAG_NAME.test(name) || !(keep > 0)) {
      return err(bbError('INVALID_POLICY', `'${part}' is not a schedule tag`, "write NAME=INTERVAL:KEEP with a lower-case name, an interval like 1d, 12h, 1w or 30d and a keep count above 0, e.g. 'daily=1d:7'", { value: part }))
    }
    if (name in schedule) return err(bbError('INVALID_POLICY', `the schedule names the tag '${name}' twice`, 'give each tag once', { value: text }))
    schedule[name] = { intervalSeconds: interval, keep }
  }
  return ok(schedule)
}

export const formatSchedule = (schedule: Schedule): string =>
  Object.entries(schedule).map(([name, t]) => `${name}=${formatDuration(t.intervalSeconds)}:${t.keep}`).join(',')

/** A volume's fixed offset into every tag's slot grid, from its id, so that volumes do not all run at once. */
export const spreadOf = (volumeId: string, schedule: Schedule): number => {
  const longest = Math.max(...Object.values(schedule).map((t) => t.intervalSeconds))
  return Number(BigInt(`0x${createHash('sha256').update(volumeId).digest('hex').slice(0, 12)}`) % BigInt(longest))
}

/** The latest slot of a tag at or before `now`. */
const lastSlot = (tag: ScheduleTag, spreadSeconds: number, now: Date): number => {
  const interval = tag.intervalSeconds * 1000
  const offset = (spreadSeconds % tag.intervalSeconds) * 1000
  return GRID_ORIGIN_MS + offset + Math.floor((now.getTime() - GRID_ORIGIN_MS - offset) / interval) * interval
}

/** The next slot of a tag after `now`. */
const nextSlot = (tag: ScheduleTag, spreadSeconds: number, now: Date): number => lastSlot(tag, spreadSeconds, now) + tag.intervalSeconds * 1000

/** What schedule decisions need to know of a revision. */
export interface ScheduledRevision {
  readonly uuid: string
  readonly timestamp: Date
  readonly tags: readonly string[]
}

/**
 * The tags due at `now`: those whose latest slot has no revision carrying the tag at or after it.
 * Runs at any time (cron, by hand) thus make one revision per slot; a missed slot is caught up
 * by the next run. With no revisions, every tag is due. A revision dated ahead of the clock serves none.
 */
export const dueTags = (schedule: Schedule, revisions: readonly ScheduledRevision[], now: Date, spreadSeconds: number): string[] =>
  Object.entries(schedule)
    .filter(([name, tag]) => {
      const slot = lastSlot(tag, spreadSeconds, now)
      // a revision dated ahead of the clock (a clock that was ahead named it) serves no slot: it would hold every one until its date
      return !revisions.some((r) => r.tags.includes(name) && r.timestamp.getTime() >= slot && !aheadOfClock({ time: r.timestamp }, now.getTime()))
    })
    .map(([name]) => name)

/** When the next tag becomes due after `now`. */
export const nextDue = (schedule: Schedule, now: Date, spreadSeconds: number): Date =>
  new Date(Math.min(...Object.values(schedule).map((t) => nextSlot(t, spreadSeconds, now))))

export interface ExpiryPlan {
  /** the tags each revision keeps (only revisions whose tags change) */
  readonly retag: ReadonlyMap<string, readonly string[]>
  /** revisions left without tags, to be deleted */
  readonly remove: readonly string[]
  /** revisions left without tags but kept, and why */
  readonly protected: ReadonlyMap<string, string>
}

/**
 * backy's expiry: per tag, a revision loses the tag when it is not among the `keep` newest carrying
 * it and is older than keep × interval; tags no longer in the schedule go (except `manual:` ones);
 * a revision without tags is removed, unless it is protected (the newest complete revision, the
 * newest verified one). `revisions` are complete ones, any order.
 */
export const planExpiry = (
  schedule: Schedule, revisions: readonly ScheduledRevision[], now: Date, protect: ReadonlyMap<string, string>,
): ExpiryPlan => {
  const tags = new Map(revisions.map((r) => [r.uuid, new Set(r.tags)]))
  const oldestFirst = [...revisions].sort((a, b) => a.timestamp.getTime() - b.timestamp.getTime())
  for (const [name, tag] of Object.entries(schedule)) {
    const carrying = oldestFirst.filter((r) => r.tags.includes(name))
    if (carrying.length <= tag.keep) continue
    const horizon = now.getTime() - tag.keep * tag.intervalSeconds * 1000
    for (const r of carrying.slice(0, carrying.length - tag.keep)) {
      if (r.timestamp.getTime() < horizon) tags.get(r.uuid)?.delete(name)
    }
  }
  for (const set of tags.values()) {
    for (const t of set) if (!(t in schedule) && !t.startsWith(MANUAL_PREFIX)) set.delete(t)
  }
  const retag = new Map<string, readonly string[]>()
  const remove: string[] = []
  const kept = new Map<string, string>()
  for (const r of oldestFirst) {
    const left = [...(tags.get(r.uuid) ?? [])]
    // also one that had lost its tags before, kept then by a protection it no longer has (a newer revision verified since)
    if (left.length === 0) {
      const why = protect.get(r.uuid)
      if (why === undefined) {
        remove.push(r.uuid)
        continue
      }
      kept.set(r.uuid, why)
    }
    if (left.length !== r.tags.length) retag.set(r.uuid, left)
  }
  return { retag, remove, protected: kept }
}
