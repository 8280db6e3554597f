import { describe, expect, it } from 'vitest'
import { planRetention, type BtrbkPolicy, type RetentionSnapshot } from '../src/index.js'

// Golden vectors: real btrbk output (btrbk @2bda102, TZ=UTC) from reference/btrfs.md §2.4.

const at = (iso: string): Date => new Date(`${iso}Z`)
const series = (fromIso: string, toIso: string, stepHours: number): RetentionSnapshot[] => {
  const out: RetentionSnapshot[] = []
  for (let t = at(fromIso).getTime(); t <= at(toIso).getTime(); t += stepHours * 3_600_000) {
    out.push({ name: new Date(t).toISOString().slice(0, 16), time: new Date(t) })
  }
  return out
}
const kept = (snapshots: RetentionSnapshot[], policy: BtrbkPolicy, now: string, timeZone = 'UTC'): string[] => {
  const r = planRetention(snapshots, policy, { now: at(now), timeZone })
  if (r.isErr()) throw new Error(r.error.message)
  // btrbk's own answer: what a policy rule keeps, leaving out bbackup's protections (newest snapshot)
  return r.value.filter((d) => d.reasons.some((reason) => !reason.startsWith('protected:') && !reason.startsWith('not kept'))).map((d) => d.name)
}
const reasonsOf = (snapshots: RetentionSnapshot[], policy: BtrbkPolicy, now: string, name: string, timeZone = 'UTC'): readonly string[] => {
  const r = planRetention(snapshots, policy, { now: at(now), timeZone })
  if (r.isErr()) throw new Error(r.error.message)
  return r.value.find((d) => d.name === name)?.reasons ?? []
}

describe('btrbk retention reproduces btrbk', () => {
  it('A: daily snapshots with 7d 4w 3m keep 15 of 73, reaching back into btrbk-December', () => {
    const snapshots = series('2024-01-01T01:00', '2024-03-13T01:00', 24)
    expect(snapshots).toHaveLength(73)
    expect(kept(snapshots, { preserveMin: 'no', preserve: '7d 4w 3m' }, '2024-03-13T12:00')).toEqual([
      '2024-01-01T01:00', '2024-01-07T01:00', '2024-02-04T01:00', '2024-02-11T01:00', '2024-02-18T01:00',
      '2024-02-25T01:00', '2024-03-03T01:00', '2024-03-06T01:00', '2024-03-07T01:00', '2024-03-08T01:00',
      '2024-03-09T01:00', '2024-03-10T01:00', '2024-03-11T01:00', '2024-03-12T01:00', '2024-03-13T01:00',
    ])
  })

  it('B: 6-hourly snapshots with day start 06:00 and week start monday keep 10 of 67', () => {
    const snapshots = series('2024-02-26T00:00', '2024-03-13T12:00', 6)
    expect(snapshots).toHaveLength(67)
    const policy: BtrbkPolicy = { preserveMin: '1d', preserve: '12h 3d 2w', dayOfWeek: 'monday', hourOfDay: 6 }
    expect(kept(snapshots, policy, '2024-03-13T12:30')).toEqual([
      '2024-02-26T06:00', '2024-03-04T06:00', '2024-03-10T06:00', '2024-03-11T06:00', '2024-03-12T06:00',
      '2024-03-12T12:00', '2024-03-12T18:00', '2024-03-13T00:00', '2024-03-13T06:00', '2024-03-13T12:00',
    ])
    // 03-12 00:00 belongs to the day that began 03-11 06:00 (2 days ago), so min 1d does not cover it
    expect(reasonsOf(snapshots, policy, '2024-03-13T12:30', '2024-03-12T00:00')).toEqual(['not kept by the btrbk policy'])
  })

  describe('C: daily 03:00 snapshots from 2022-11-15 to 2024-03-13', () => {
    const snapshots = series('2022-11-15T03:00', '2024-03-13T03:00', 24)
    const now = '2024-03-13T12:00'

    it('0d 2w *m 1y keeps one per btrbk-month back to the first snapshot, two weeklies and no dailies', () => {
      expect(snapshots).toHaveLength(485)
      const result = kept(snapshots, { preserveMin: 'no', preserve: '0d 2w *m 1y' }, now)
      expect(result).toHaveLength(19)
      expect(result).toEqual(expect.arrayContaining(['2022-11-15T03:00', '2023-01-01T03:00', '2024-01-07T03:00', '2024-02-25T03:00', '2024-03-10T03:00']))
      expect(result).not.toContain('2024-03-12T03:00')
    })

    it('*y alone keeps the first weekly of each btrbk-year', () => {
      expect(kept(snapshots, { preserveMin: 'no', preserve: '*y' }, now)).toEqual(['2022-11-15T03:00', '2023-01-01T03:00', '2024-01-07T03:00'])
    })

    it('2d with min latest keeps three days', () => {
      expect(kept(snapshots, { preserveMin: 'latest', preserve: '2d' }, now)).toEqual(['2024-03-11T03:00', '2024-03-12T03:00', '2024-03-13T03:00'])
    })
  })

  describe('D: edge cases', () => {
    const snapshots = series('2024-08-01T01:00', '2024-10-01T01:00', 24)

    it('1m on Tue 2024-10-01 keeps only the first weekly of btrbk-September', () => {
      expect(kept(snapshots, { preserveMin: 'no', preserve: '1m' }, '2024-10-01T12:00')).toEqual(['2024-09-01T01:00'])
    })

    it('keeps the newest snapshot even when the btrbk policy would not', () => {
      expect(reasonsOf(snapshots, { preserveMin: 'no', preserve: '1m' }, '2024-10-01T12:00', '2024-10-01T01:00')).toEqual(['protected: the newest snapshot'])
    })

    it('2w keeps the first of each of the last three weeks', () => {
      expect(kept(snapshots, { preserveMin: 'no', preserve: '2w' }, '2024-10-01T12:00')).toEqual(['2024-09-15T01:00', '2024-09-22T01:00', '2024-09-29T01:00'])
    })

    it('hours are truncated before counting', () => {
      const hours = ['08:59', '09:00', '09:30', '10:15', '12:29'].map((h) => ({ name: h, time: at(`2024-03-13T${h}`) }))
      expect(kept(hours, { preserveMin: 'no', preserve: '3h' }, '2024-03-13T12:00')).toEqual(['09:00', '10:15', '12:29'])
    })

    it('counts wall-clock hours across a DST jump', () => {
      // Europe/Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST. now = 12:00 CEST = 10:00 UTC.
      const local = [
        { name: '00:00', time: new Date('2024-03-30T23:00:00Z') },
        { name: '01:00', time: new Date('2024-03-31T00:00:00Z') },
        { name: '03:00', time: new Date('2024-03-31T01:00:00Z') },
      ]
      const r = planRetention(local, { preserveMin: 'no', preserve: '11h' }, { now: new Date('2024-03-31T10:00:00Z'), timeZone: 'Europe/Berlin' })
      expect(r.isOk() && r.value.map((d) => [d.name, d.keep])).toEqual([['00:00', false], ['01:00', true], ['03:00', true]])
      expect(r.isOk() && r.value[1]?.reasons).toEqual(['hourly: first of its hour, 11 hours ago'])
    })
  })
})

describe('btrbk spelling with quarters (q: not in btrbk, btrbk #589)', () => {
  // daily 03:00 snapshots from 2023-01-01 to 2024-05-15; weeks start on sunday, so 2024-04-01 (a
  // monday) is still btrbk-March and btrbk-Q2 2024 starts with sunday 2024-04-07
  const snapshots = series('2023-01-01T03:00', '2024-05-15T03:00', 24)
  const now = '2024-05-15T12:00'

  it('3q keeps the first snapshot of each of the last four btrbk-quarters, each with its reason', () => {
    expect(kept(snapshots, { preserveMin: 'no', preserve: '3q' }, now)).toEqual(['2023-07-02T03:00', '2023-10-01T03:00', '2024-01-07T03:00', '2024-04-07T03:00'])
    expect(reasonsOf(snapshots, { preserveMin: 'no', preserve: '3q' }, now, '2023-07-02T03:00')).toEqual(['quarterly: first of its quarter, 3 quarters ago'])
    expect(kept(snapshots, { preserveMin: '1q', preserve: 'no' }, now)[0]).toBe('2024-01-07T03:00')
  })

  it('quarters between months and years leave what btrbk itself keeps as it was', () => {
    const without = planRetention(snapshots, { preserveMin: 'no', preserve: '7d 4w 6m *y' }, { now: at(now), timeZone: 'UTC' })._unsafeUnwrap()
    const withQ = planRetention(snapshots, { preserveMin: 'no', preserve: '7d 4w 6m 2q *y' }, { now: at(now), timeZone: 'UTC' })._unsafeUnwrap()
    without.forEach((d, i) => {
      expect(withQ[i]?.reasons.filter((r) => !r.startsWith('quarterly') && !r.startsWith('not kept'))).toEqual(d.reasons.filter((r) => !r.startsWith('not kept')))
    })
    expect(withQ.filter((d) => d.keep).length).toBeGreaterThan(without.filter((d) => d.keep).length)
  })
})
