import { describe, expect, it } from 'vitest'
import { planRetention, type RetentionSnapshot, type RotatePolicy } from '../src/index.js'

// Vectors from reference/rsync.md §2.1 (the original rotate-backups 8.1 methods, re-run).

const snapshot = (name: string): RetentionSnapshot => {
  const m = /^(\d{4})-(\d{2})-(\d{2})[_@](\d{2})[-:](\d{2})(?:-(\d{2}))?$/.exec(name)
  return { name, time: m === null ? new Date(Number.NaN) : new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +(m[6] ?? 0))) }
}
const decide = (names: readonly string[], policy: RotatePolicy) => {
  const r = planRetention(names.map(snapshot), policy, { now: new Date('2030-01-01T00:00:00Z'), timeZone: 'UTC' })
  if (r.isErr()) throw new Error(r.error.message)
  return r.value
}
const kept = (names: readonly string[], policy: RotatePolicy): string[] => decide(names, policy).filter((d) => d.keep).map((d) => d.name)

const WORKED = [
  '2023-12-28_12-00-00', '2024-01-01_10-00-00', '2024-01-02_08-00-00', '2024-01-02_20-00-00', '2024-01-05_09-00-00',
  '2024-01-07_09-00-00', '2024-01-08_09-00-00', '2024-01-08_11-00-00', '2024-01-08_15-00-00', '2024-01-08_15-30-00',
  '2024-01-08_16-00-00',
]
const SCHEME: RotatePolicy = { hourly: 3, daily: 3, weekly: 2, monthly: 'always' }

describe('rotate-backups retention reproduces rotate-backups', () => {
  it('worked example, strict and oldest per bucket (the default)', () => {
    expect(kept(WORKED, SCHEME)).toEqual([
      '2023-12-28_12-00-00', '2024-01-01_10-00-00', '2024-01-07_09-00-00', '2024-01-08_09-00-00', '2024-01-08_15-00-00', '2024-01-08_16-00-00',
    ])
  })

  it('worked example, relaxed', () => {
    expect(kept(WORKED, { ...SCHEME, strict: false })).toEqual([
      '2023-12-28_12-00-00', '2024-01-01_10-00-00', '2024-01-05_09-00-00', '2024-01-07_09-00-00', '2024-01-08_09-00-00',
      '2024-01-08_11-00-00', '2024-01-08_15-00-00', '2024-01-08_16-00-00',
    ])
  })

  it('worked example, newest per bucket (--prefer-recent)', () => {
    expect(kept(WORKED, { ...SCHEME, prefer: 'newest' })).toEqual([
      '2023-12-28_12-00-00', '2024-01-07_09-00-00', '2024-01-08_15-30-00', '2024-01-08_16-00-00',
    ])
  })

  it('worked example, relaxed and newest per bucket', () => {
    expect(kept(WORKED, { ...SCHEME, strict: false, prefer: 'newest' })).toEqual([
      '2023-12-28_12-00-00', '2024-01-05_09-00-00', '2024-01-07_09-00-00', '2024-01-08_11-00-00', '2024-01-08_15-30-00', '2024-01-08_16-00-00',
    ])
  })

  it('gives the reasons of every frequency that keeps a backup', () => {
    const newest = decide(WORKED, { ...SCHEME, prefer: 'newest' }).at(-1)
    expect(newest).toEqual({
      name: '2024-01-08_16-00-00',
      keep: true,
      reasons: ['hourly (3)', 'daily (3)', 'weekly (2)', 'monthly (always)', 'protected: the newest snapshot'],
    })
  })

  it('strict drops the 12:00 backup between an hourly and a daily keep; relaxed keeps it', () => {
    const day = ['2016-01-01_10-00', '2016-01-01_12-00', '2016-01-01_16-00']
    expect(kept(day, { hourly: 3, daily: 1 })).toEqual(['2016-01-01_10-00', '2016-01-01_16-00'])
    expect(kept(day, { hourly: 3, daily: 1, strict: false })).toEqual(day)
  })

  it('keeps the oldest of an hour by default and the newest with prefer newest', () => {
    const hour = ['2016-01-01_21-15', '2016-01-01_21-30', '2016-01-01_21-45']
    const byPolicy = (policy: RotatePolicy) => decide(hour, policy).filter((d) => d.reasons.some((r) => r.startsWith('hourly'))).map((d) => d.name)
    expect(byPolicy({ hourly: 1 })).toEqual(['2016-01-01_21-15'])
    expect(byPolicy({ hourly: 1, prefer: 'newest' })).toEqual(['2016-01-01_21-45'])
  })

  it('reproduces the upstream 267-entry sample set: 19 kept and the untimed directory untouched', () => {
    // SAMPLE_BACKUP_SET of rotate-backups' tests: one backup a day at about 20:0x, 2013-10-10 to 2014-07-02
    const names: string[] = []
    for (let t = Date.UTC(2013, 9, 10); t <= Date.UTC(2014, 6, 2); t += 86_400_000) {
      const d = new Date(t)
      names.push(`${d.toISOString().slice(0, 10)}@20:0${(d.getUTCDate() % 8) + 1}`)
    }
    names.push('some-random-directory')
    expect(names).toHaveLength(267)
    const decisions = decide(names, { hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 'always' })
    expect(decisions.filter((d) => d.keep).map((d) => d.name.slice(0, 10))).toEqual([
      '2013-10-10', '2013-11-01', '2013-12-01', '2014-01-01', '2014-02-01', '2014-03-01', '2014-04-01', '2014-05-01', '2014-06-01',
      '2014-06-09', '2014-06-16', '2014-06-23', '2014-06-26', '2014-06-27', '2014-06-28', '2014-06-29', '2014-06-30', '2014-07-01',
      '2014-07-02', 'some-rando',
    ])
    expect(decisions.at(-1)).toEqual({ name: 'some-random-directory', keep: true, reasons: ['protected: its time could not be read'] })
  })
})

describe('rotate-backups retention with its two bugs fixed', () => {
  const days: string[] = []
  for (let t = Date.UTC(2020, 11, 20); t <= Date.UTC(2021, 0, 15); t += 86_400_000) days.push(`${new Date(t).toISOString().slice(0, 10)}_00-00`)
  const weekly = (policy: RotatePolicy) => decide(days, policy).filter((d) => d.reasons.some((r) => r.startsWith('weekly'))).map((d) => d.name.slice(0, 10))

  it('buckets weeks by ISO year and ISO week, so 2021-01-01 is in 2020-W53 (upstream issue #31)', () => {
    expect(weekly({ weekly: 3 })).toEqual(['2020-12-28', '2021-01-04', '2021-01-11'])
  })

  it('relaxed weekly=1 keeps the newest week, not 2021-01-01 alone', () => {
    expect(weekly({ weekly: 1, strict: false })).toEqual(['2021-01-11'])
    expect(kept(days, { weekly: 1, strict: false })).toEqual(['2021-01-11_00-00', '2021-01-15_00-00'])
  })

  it('a count of 0 keeps no bucket of that frequency, strict or relaxed', () => {
    for (const strict of [true, false]) {
      const decisions = decide(days, { daily: 0, weekly: 1, strict })
      expect(decisions.some((d) => d.reasons.some((r) => r.startsWith('daily')))).toBe(false)
    }
  })
})

describe('quarterly (not in rotate-backups: snapper\'s TIMELINE_LIMIT_QUARTERLY)', () => {
  // a backup every day at midnight from 2023-01-01 to 2024-05-15
  const days: string[] = []
  for (let t = Date.UTC(2023, 0, 1); t <= Date.UTC(2024, 4, 15); t += 86_400_000) days.push(`${new Date(t).toISOString().slice(0, 10)}_00-00`)
  const quarterly = (policy: RotatePolicy) => decide(days, policy).filter((d) => d.reasons.some((r) => r.startsWith('quarterly'))).map((d) => d.name.slice(0, 10))

  it('keeps the first backup of each calendar quarter, counted back from the newest', () => {
    expect(quarterly({ quarterly: 3 })).toEqual(['2023-10-01', '2024-01-01', '2024-04-01'])
    expect(quarterly({ quarterly: 'always' })).toEqual(['2023-01-01', '2023-04-01', '2023-07-01', '2023-10-01', '2024-01-01', '2024-04-01'])
    expect(decide(days, { quarterly: 3 }).find((d) => d.name === '2024-01-01_00-00')?.reasons).toEqual(['quarterly (3)'])
  })

  it('strict drops a quarter whose kept backup is older than newest - N quarters; relaxed keeps it', () => {
    // no backups in 2023-Q3: four quarters back from 2024-05-15 is 2023-05-15, after 2023-04-01
    const gap = days.filter((d) => !/^2023-0[789]/.test(d))
    const of = (policy: RotatePolicy) => decide(gap, policy).filter((d) => d.reasons.some((r) => r.startsWith('quarterly'))).map((d) => d.name.slice(0, 10))
    expect(of({ quarterly: 4 })).toEqual(['2023-10-01', '2024-01-01', '2024-04-01'])
    expect(of({ quarterly: 4, strict: false })).toEqual(['2023-04-01', '2023-10-01', '2024-01-01', '2024-04-01'])
  })

  it('prefer newest keeps the last backup of each quarter', () => {
    expect(quarterly({ quarterly: 3, prefer: 'newest' })).toEqual(['2023-12-31', '2024-03-31', '2024-05-15'])
  })
})
