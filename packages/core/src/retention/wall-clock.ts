/**
 * Calendar fields of an instant as a clock on the wall shows them in one time zone. Retention
 * buckets are wall-clock days, weeks and months (btrbk and rotate-backups both work this way), so
 * a DST change makes a "day" 23 or 25 real hours, exactly as in the tools we reproduce.
 */
export interface WallClock {
  readonly year: number
  /** 1..12 */
  readonly month: number
  readonly day: number
  readonly hour: number
  readonly minute: number
  readonly second: number
  /** 0 = Sunday .. 6 = Saturday */
  readonly weekday: number
}

/** Reads wall-clock fields in `timeZone` (an IANA name); the host's zone when it is undefined. */
export const wallClockReader = (timeZone: string | undefined): ((d: Date) => WallClock) => {
  if (timeZone === undefined) {
    return (d) => ({ year: d.getFullYear(), month: d.getMonth() + 1, day: d.getDate(), hour: d.getHours(), minute: d.getMinutes(), second: d.getSeconds(), weekday: d.getDay() })
  }
  if (timeZone === 'UTC' || timeZone === 'Etc/UTC') {
    return (d) => ({ year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: d.getUTCDate(), hour: d.getUTCHours(), minute: d.getUTCMinutes(), second: d.getUTCSeconds(), weekday: d.getUTCDay() })
  }
  const format = new Intl.DateTimeFormat('en-US', {
    timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
  })
  return (d) => {
    const parts: Record<string, number> = {}
    for (const p of format.formatToParts(d)) if (p.type !== 'literal') parts[p.type] = Number(p.value)
    const year = parts.year ?? 0, month = parts.month ?? 1, day = parts.day ?? 1
    return { year, month, day, hour: parts.hour ?? 0, minute: parts.minute ?? 0, second: parts.second ?? 0, weekday: new Date(Date.UTC(year, month - 1, day)).getUTCDay() }
  }
}

/** Whether `timeZone` is a zone this Node knows. */
export const isValidTimeZone = (timeZone: string): boolean => {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone })
    return true
  } catch {
    return false
  }
}

/** The wall-clock fields as if they were UTC, in ms: arithmetic on wall time that ignores DST. */
export const wallEpoch = (w: Pick<WallClock, 'year' | 'month' | 'day'> & Partial<WallClock>): number =>
  Date.UTC(w.year, w.month - 1, w.day, w.hour ?? 0, w.minute ?? 0, w.second ?? 0)

/** ISO 8601 week-numbering year and week of a calendar date. */
export const isoWeek = (w: Pick<WallClock, 'year' | 'month' | 'day'>): { readonly year: number; readonly week: number } => {
  const date = new Date(Date.UTC(w.year, w.month - 1, w.day))
  const weekday = date.getUTCDay() || 7
  date.setUTCDate(date.getUTCDate() + 4 - weekday) // the Thursday of this week decides its year
  const year = date.getUTCFullYear()
  const week = Math.floor((date.getTime() - Date.UTC(year, 0, 1)) / 86_400_000 / 7) + 1
  return { year, week }
}
