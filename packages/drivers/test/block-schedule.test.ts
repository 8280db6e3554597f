import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { DEFAULT_SCHEDULE, dueTags, formatSchedule, nextDue, parseDuration, parseSchedule, planExpiry, type ScheduledRevision } from '../src/block/schedule.js'

const DAY = 86_400_000
/** backy's worked example: job test01's spread (reference/block.md §2.3) */
const SPREAD = 639_092

/** Runs the schedule once a day at `time` from `from` for `days` days, expiring after each backup as backy's daemon does. */
const simulate = (days: number, from = '2025-01-01T09:31:32Z') => {
  let revisions: ScheduledRevision[] = []
  const log: { day: string; tags: string[]; removed: string[] }[] = []
  for (let i = 0; i < days; i++) {
    const now = new Date(Date.parse(from) + i * DAY)
    const tags = dueTags(DEFAULT_SCHEDULE, revisions, now, SPREAD)
    if (tags.length > 0) revisions.push({ uuid: now.toISOString().slice(0, 10), timestamp: now, tags })
    const newest = revisions.at(-1)
    const plan = planExpiry(DEFAULT_SCHEDULE, revisions, now, new Map(newest === undefined ? [] : [[newest.uuid, 'newest']]))
    revisions = revisions.filter((r) => !plan.remove.includes(r.uuid)).map((r) => ({ ...r, tags: plan.retag.get(r.uuid) ?? r.tags }))
    log.push({ day: now.toISOString().slice(0, 10), tags: [...tags].sort(), removed: [...plan.remove] })
  }
  return { revisions, log }
}

describe('block schedule (backy tags)', () => {
  it("tags and expires exactly as backy's worked example for the first three weeks", () => {
    const { log } = simulate(20)
    const byDay = Object.fromEntries(log.map((l) => [l.day, l]))
    expect(byDay['2025-01-01']?.tags).toEqual(['daily', 'monthly', 'weekly'])
    for (const d of ['2025-01-02', '2025-01-03', '2025-01-04', '2025-01-05', '2025-01-07']) expect(byDay[d]?.tags).toEqual(['daily'])
    expect(byDay['2025-01-06']?.tags).toEqual(['daily', 'weekly'])
    expect(byDay['2025-01-13']?.tags).toEqual(['daily', 'weekly'])
    expect(byDay['2025-01-17']?.tags).toEqual(['daily', 'monthly'])
    expect(byDay['2025-01-20']?.tags).toEqual(['daily', 'weekly'])
    expect(byDay['2025-01-09']?.removed).toEqual([])
    expect(byDay['2025-01-10']?.removed).toEqual(['2025-01-02'])
    expect(byDay['2025-01-11']?.removed).toEqual(['2025-01-03'])
    expect(byDay['2025-01-13']?.removed).toEqual(['2025-01-05'])
    expect(byDay['2025-01-14']?.removed).toEqual([]) // 01-06 loses daily, keeps weekly
    expect(byDay['2025-01-17']?.removed).toEqual(['2025-01-09'])
    expect(byDay['2025-01-20']?.removed).toEqual(['2025-01-12'])
  })

  it("leaves backy's 14 revisions after 100 days, with 8 dailies (the 7-day-old one is inside keep x interval)", () => {
    const { revisions } = simulate(100)
    expect(revisions.at(-1)?.uuid).toBe('2025-04-10')
    const inventory = Object.fromEntries(revisions.map((r) => [r.uuid, [...r.tags].sort().join(' ')]))
    expect(inventory).toEqual({
      '2025-01-17': 'monthly', '2025-02-16': 'monthly', '2025-03-18': 'monthly',
      '2025-03-17': 'weekly', '2025-03-24': 'weekly', '2025-03-31': 'weekly', '2025-04-07': 'daily weekly',
      '2025-04-03': 'daily', '2025-04-04': 'daily', '2025-04-05': 'daily', '2025-04-06': 'daily',
      '2025-04-08': 'daily', '2025-04-09': 'daily', '2025-04-10': 'daily',
    })
  })

  it('makes one revision per slot however a cron job drifts around it', () => {
    fc.assert(fc.property(fc.array(fc.integer({ min: -600, max: 600 }), { minLength: 30, maxLength: 30 }), (drift) => {
      const daily = { daily: { intervalSeconds: 86_400, keep: 100 } }
      const revisions: ScheduledRevision[] = []
      // a run every 6 hours, each a little early or late
      for (let i = 0; i < 120; i++) {
        const now = new Date(Date.parse('2025-01-01T02:00:00Z') + i * 6 * 3_600_000 + (drift[i % 30] ?? 0) * 1000)
        if (dueTags(daily, revisions, now, 0).length > 0) revisions.push({ uuid: String(i), timestamp: now, tags: ['daily'] })
      }
      // 30 days of runs from 02:00: the slot of each UTC midnight gets one revision
      expect(revisions).toHaveLength(30)
    }))
  })

  it('never expires manual tags, and drops tags the schedule no longer has', () => {
    const now = new Date('2025-06-01T00:00:00Z')
    const old = (uuid: string, tags: string[]) => ({ uuid, timestamp: new Date('2024-01-01T00:00:00Z'), tags })
    const plan = planExpiry({ daily: { intervalSeconds: 86_400, keep: 1 } }, [old('a', ['manual:keep-me']), old('b', ['hourly']), old('c', ['hourly', 'daily'])], now, new Map())
    expect(plan.remove).toEqual(['b'])
    expect(plan.retag.get('c')).toEqual(['daily'])
    expect(plan.retag.has('a')).toBe(false)
  })

  it('keeps a protected revision that has lost its tags, and says why; removes it once nothing protects it', () => {
    const revs = [{ uuid: 'x', timestamp: new Date('2024-01-01T00:00:00Z'), tags: ['gone'] }]
    const plan = planExpiry(DEFAULT_SCHEDULE, revs, new Date('2025-01-01T00:00:00Z'), new Map([['x', 'the newest verified revision']]))
    expect(plan.remove).toEqual([])
    expect(plan.protected.get('x')).toBe('the newest verified revision')
    expect(plan.retag.get('x')).toEqual([])
    // kept without tags; once the protection has gone to another revision, the next expiry removes it
    const untagged = [{ uuid: 'x', timestamp: new Date('2024-01-01T00:00:00Z'), tags: [] }, { uuid: 'y', timestamp: new Date('2024-12-31T00:00:00Z'), tags: ['daily'] }]
    const later = planExpiry(DEFAULT_SCHEDULE, untagged, new Date('2025-01-01T00:00:00Z'), new Map([['y', 'the newest verified revision']]))
    expect(later.remove).toEqual(['x'])
    expect(later.protected.size).toBe(0)
    expect(planExpiry(DEFAULT_SCHEDULE, untagged, new Date('2025-01-01T00:00:00Z'), new Map([['x', 'the newest verified revision']])).protected.get('x')).toBe('the newest verified revision')
  })

  it('parses and prints schedules; refuses bad ones with the form to use', () => {
    expect(parseSchedule('daily=1d:7, weekly=1w:4 monthly=30d:3')._unsafeUnwrap()).toEqual(DEFAULT_SCHEDULE)
    expect(formatSchedule(DEFAULT_SCHEDULE)).toBe('daily=1d:7,weekly=1w:4,monthly=30d:3')
    for (const bad of ['', 'daily', 'daily=1x:7', 'daily=1d:0', 'Daily=1d:7', 'daily=1d:7,daily=2d:3']) {
      const r = parseSchedule(bad)
      expect(r.isErr(), bad).toBe(true)
      expect(r._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_POLICY', hint: expect.stringMatching(/NAME=INTERVAL:KEEP|once/) })
    }
    expect(parseDuration('90')).toBe(90)
    expect(parseDuration('0d')).toBeUndefined()
  })

  it('says when the next tag is due', () => {
    expect(nextDue({ daily: { intervalSeconds: 86_400, keep: 7 } }, new Date('2025-01-01T10:00:00Z'), 3600).toISOString()).toBe('2025-01-02T01:00:00.000Z')
  })
})
