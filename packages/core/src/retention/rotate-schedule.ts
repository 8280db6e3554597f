import type { NormalizedPolicy, RotateFrequency } from './policy.js'
import { isoWeek, wallEpoch, type WallClock } from './wall-clock.js'

type RotatePolicy = Extract<NormalizedPolicy, { spelling: 'rotate' }>

export interface RotateEntry {
  readonly index: number
  readonly wall: WallClock
}

/** The bucket of an entry at each frequency, as one sortable number. */
const bucketKey = (f: RotateFrequency, w: WallClock): number => {
  switch (f) {
    case 'minutely':
      return (((w.year * 13 + w.month) * 32 + w.day) * 24 + w.hour) * 60 + w.minute
    case 'hourly':
      return ((w.year * 13 + w.month) * 32 + w.day) * 24 + w.hour
    case 'daily':
      return (w.year * 13 + w.month) * 32 + w.day
    case 'weekly': {
      // ISO week-numbering year with the ISO week: rotate-backups pairs the calendar year with
      // the ISO week (issue #31), which sorts 2021-01-01 (week 53) after 2021-01-04 (week 1).
      const iso = isoWeek(w)
      return iso.year * 54 + iso.week
    }
    case 'monthly':
      return w.year * 13 + w.month
    case 'quarterly':
      return w.year * 4 + Math.floor((w.month - 1) / 3)
    case 'yearly':
      return w.year
  }
}

/** `reference - count x unit` on the wall clock, months, quarters and years as calendar units (relativedelta). */
const windowStart = (f: RotateFrequency, count: number, reference: WallClock): number => {
  const ms = { minutely: 60_000, hourly: 3_600_000, daily: 86_400_000, weekly: 7 * 86_400_000 } as const
  if (f !== 'monthly' && f !== 'quarterly' && f !== 'yearly') return wallEpoch(reference) - count * ms[f]
  const months = count * { monthly: 1, quarterly: 3, yearly: 12 }[f]
  const total = reference.year * 12 + (reference.month - 1) - months
  const year = Math.floor(total / 12)
  const month = (total % 12) + 1
  const lastDay = new Date(Date.UTC(year, month, 0)).getUTCDate()
  return wallEpoch({ ...reference, year, month, day: Math.min(reference.day, lastDay) })
}

/**
 * rotate-backups' apply_rotation_scheme (rotate-backups 8.1, RB:713-759), relative to the newest
 * entry, with its two bugs fixed: weeks are ISO weeks of the ISO year, and a count of 0 keeps no
 * bucket (upstream `sorted(...)[-0:]` keeps them all).
 */
export const scheduleRotate = (entries: readonly RotateEntry[], policy: RotatePolicy): Map<number, string[]> => {
  const kept = new Map<number, string[]>()
  const newest = entries[entries.length - 1]
  if (newest === undefined) return kept
  for (const frequency of Object.keys(policy.counts) as RotateFrequency[]) {
    const count = policy.counts[frequency]
    if (count === undefined) continue
    const buckets = new Map<number, RotateEntry>()
    for (const e of entries) {
      const key = bucketKey(frequency, e.wall)
      if (policy.prefer === 'newest' || !buckets.has(key)) buckets.set(key, e)
    }
    let selected = [...buckets.entries()].sort((a, b) => a[0] - b[0])
    if (count !== 'always') {
      if (policy.strict) {
        const start = windowStart(frequency, count, newest.wall)
        selected = selected.filter(([, e]) => wallEpoch(e.wall) >= start)
      }
      selected = count === 0 ? [] : selected.slice(-count)
    }
    for (const [, e] of selected) {
      const reasons = kept.get(e.index)
      const reason = `${frequency}${count === 'always' ? ' (always)' : ` (${count})`}`
      if (reasons === undefined) kept.set(e.index, [reason])
      else reasons.push(reason)
    }
  }
  return kept
}
