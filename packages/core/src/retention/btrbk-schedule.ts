import type { BtrbkUnit, NormalizedPolicy } from './policy.js'
import { wallEpoch, type WallClock } from './wall-clock.js'

type BtrbkPolicy = Extract<NormalizedPolicy, { spelling: 'btrbk' }>

export interface ScheduleEntry {
  readonly index: number
  readonly wall: WallClock
  readonly hasTime: boolean
}

interface Deltas {
  readonly h: number
  readonly d: number
  readonly w: number
  readonly m: number
  readonly q: number
  readonly y: number
}

const UNIT_NAMES: Record<BtrbkUnit, string> = { h: 'hourly', d: 'daily', w: 'weekly', m: 'monthly', q: 'quarterly', y: 'yearly' }
const UNIT_AGO: Record<BtrbkUnit, string> = { h: 'hour', d: 'day', w: 'week', m: 'month', q: 'quarter', y: 'year' }

const ago = (n: number, unit: BtrbkUnit): string => `${n} ${UNIT_AGO[unit]}${n === 1 ? '' : 's'} ago`

/**
 * The deltas btrbk's schedule() computes for one entry (btrbk @2bda102 L4585-4632): hours between
 * the hour-truncated wall clocks, then days starting at `hourOfDay`, weeks starting on `dayOfWeek`,
 * and months/years of the week's start day. Only the entry's month is corrected, not now's:
 * reproducing that asymmetry is what makes the output match btrbk's. Quarters (not btrbk's) are
 * counted as its months are: the quarter of the corrected month.
 */
const deltasOf = (e: ScheduleEntry, now: WallClock, nowHour: number, policy: BtrbkPolicy): Deltas => {
  const w = e.wall
  const hod = e.hasTime ? policy.hourOfDay : 0
  let dh = w.hour - hod
  let dowOffset = w.weekday - policy.dayOfWeek
  if (dh < 0) {
    dh += 24
    dowOffset -= 1
  }
  if (dowOffset < 0) dowOffset += 7
  let month = w.month
  let year = w.year
  if (w.day <= dowOffset) {
    month -= 1
    if (month === 0) {
      month = 12
      year -= 1
    }
  }
  const h = Math.round((nowHour - wallEpoch({ ...w, minute: 0, second: 0 })) / 3_600_000)
  const d = Math.trunc((h + dh) / 24)
  const wk = Math.trunc((d + dowOffset) / 7)
  const y = now.year - year
  const quarter = (m: number): number => Math.floor((m - 1) / 3)
  return { h, d, w: wk, m: 12 * y + (now.month - month), q: 4 * y + (quarter(now.month) - quarter(month)), y }
}

/**
 * btrbk's retention: which entries (sorted oldest first) a btrbk policy keeps, and why.
 * `preserveMin` keeps by age; then the "first in period" cascade keeps the oldest entry of each
 * hour, of each day among those, of each week among those, and so on (btrbk L4641-4698).
 */
export const scheduleBtrbk = (entries: readonly ScheduleEntry[], policy: BtrbkPolicy, now: WallClock): Map<number, string[]> => {
  const kept = new Map<number, string[]>()
  const keep = (index: number, reason: string): void => {
    const reasons = kept.get(index)
    if (reasons === undefined) kept.set(index, [reason])
    else reasons.push(reason)
  }
  const nowHour = wallEpoch({ ...now, minute: 0, second: 0 })
  const deltas = entries.map((e) => deltasOf(e, now, nowHour, policy))

  const min = policy.min
  if (min.kind === 'all') entries.forEach((e) => keep(e.index, 'min: all (btrbk default: preserve_min all keeps everything)'))
  else if (min.kind === 'latest' && entries.length > 0) keep((entries[entries.length - 1] as ScheduleEntry).index, 'min: latest')
  else if (min.kind === 'within') {
    entries.forEach((e, i) => {
      const delta = (deltas[i] as Deltas)[min.unit]
      if (delta <= min.count) keep(e.index, `min: ${ago(delta, min.unit)} (within ${min.count}${min.unit})`)
    })
  }

  // Each level's representatives are the oldest among the previous level's representatives (a
  // year's oldest monthly is its oldest quarterly too: quarters between leave btrbk's years as they were)
  let representatives: number[] = entries.map((_, i) => i)
  for (const unit of ['h', 'd', 'w', 'm', 'q', 'y'] as const) {
    const firstInPeriod = new Map<number, number>()
    for (const i of representatives) {
      const key = (deltas[i] as Deltas)[unit]
      if (!firstInPeriod.has(key)) firstInPeriod.set(key, i)
    }
    const limit = policy.matrix[unit]
    if (limit !== undefined && limit !== 0) {
      for (const [delta, i] of firstInPeriod) {
        if (limit === 'all' || delta <= limit) keep((entries[i] as ScheduleEntry).index, `${UNIT_NAMES[unit]}: first of its ${UNIT_AGO[unit]}, ${ago(delta, unit)}`)
      }
    }
    representatives = [...firstInPeriod.values()]
  }
  return kept
}
