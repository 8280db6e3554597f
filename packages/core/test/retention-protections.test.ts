import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { bbError, planRetention, type RetentionPolicy } from '../src/index.js'

const BASE = Date.UTC(2024, 0, 1)
const snapshotsArb = fc.uniqueArray(fc.integer({ min: 0, max: 400 * 24 }), { minLength: 1, maxLength: 60 }).map((hours) =>
  hours.map((h) => ({ name: `s${String(h).padStart(5, '0')}`, time: new Date(BASE + h * 3_600_000) })),
)
const policyArb: fc.Arbitrary<RetentionPolicy> = fc.oneof(
  fc.record({ keepLast: fc.integer({ min: 1, max: 10 }) }),
  fc.record({
    preserveMin: fc.constantFrom('no', 'latest', '1d', '2h'),
    preserve: fc.constantFrom('no', '24h', '7d 4w', '1m', '*y', '3h 2d 1w 1m 1y'),
  }),
  fc.record({ hourly: fc.integer({ min: 0, max: 5 }), daily: fc.integer({ min: 1, max: 5 }), weekly: fc.constantFrom(0, 2, 'always' as const) }),
)

describe('protections that no retention policy overrides', () => {
  it('gives each reason once, when a caller protects what the plan protects by itself', () => {
    const snapshots = [{ name: 'a', time: new Date(BASE) }, { name: 'b', time: new Date(BASE + 3_600_000) }]
    const r = planRetention(snapshots, { keepLast: 1 }, { now: new Date(BASE + 7_200_000), protect: [{ name: 'b', reason: 'the newest snapshot' }, { name: 'b', reason: 'the newest snapshot' }] })
    expect(r._unsafeUnwrap().find((d) => d.name === 'b')?.reasons).toEqual(['keepLast: 1 of 1 newest', 'protected: the newest snapshot'])
  })

  it('keeps the newest snapshot, every protected name and never deletes everything', () => {
    fc.assert(
      fc.property(snapshotsArb, policyArb, fc.nat(), (snapshots, policy, pick) => {
        fc.pre(!('preserve' in policy && policy.preserve === 'no' && policy.preserveMin === 'no')) // keeps nothing: INVALID_POLICY
        const protectedName = snapshots[pick % snapshots.length]!.name
        const now = new Date(BASE + 401 * 24 * 3_600_000)
        const r = planRetention(snapshots, policy, { now, timeZone: 'UTC', protect: [{ name: protectedName, reason: 'parent of the next incremental' }] })
        if (r.isErr()) {
          // the only refusal a valid policy may give, and it deletes nothing
          expect(r.error.code).toBe('RETENTION_WOULD_DELETE_ALL')
          return
        }
        const decisions = r.value
        expect(decisions.map((d) => d.name)).toEqual(snapshots.map((s) => s.name))
        const newest = [...snapshots].sort((a, b) => a.time.getTime() - b.time.getTime()).at(-1)!
        expect(decisions.find((d) => d.name === newest.name)?.keep).toBe(true)
        const guarded = decisions.find((d) => d.name === protectedName)!
        expect(guarded.keep).toBe(true)
        expect(guarded.reasons).toContain('protected: parent of the next incremental')
        expect(decisions.some((d) => d.keep)).toBe(true)
      }),
      { numRuns: 500 },
    )
  })

  it('keeps, all the way down, what a kept snapshot needs (raw incremental chains), and only that', () => {
    const chained = snapshotsArb.chain((snapshots) => {
      const sorted = [...snapshots].sort((a, b) => a.time.getTime() - b.time.getTime())
      // each snapshot may need one older snapshot (its stream's parent)
      return fc.tuple(...sorted.map((_, i) => fc.option(fc.integer({ min: 0, max: Math.max(0, i - 1) }), { nil: undefined })))
        .map((parents) => sorted.map((s, i) => ({ ...s, ...(i > 0 && parents[i] !== undefined ? { dependsOn: sorted[parents[i] as number]!.name } : {}) })))
    })
    fc.assert(
      fc.property(chained, policyArb, (snapshots, policy) => {
        fc.pre(!('preserve' in policy && policy.preserve === 'no' && policy.preserveMin === 'no'))
        const now = new Date(BASE + 401 * 24 * 3_600_000)
        const withChains = planRetention(snapshots, policy, { now, timeZone: 'UTC' })
        const without = planRetention(snapshots.map(({ dependsOn: _, ...s }) => s), policy, { now, timeZone: 'UTC' })
        if (withChains.isErr() || without.isErr()) return
        const keep = new Map(withChains.value.map((d) => [d.name, d.keep]))
        for (const s of snapshots) if (keep.get(s.name) === true && s.dependsOn !== undefined) expect(keep.get(s.dependsOn)).toBe(true)
        // nothing is deleted that the policy alone kept; what is added is needed by a kept one
        for (const [i, d] of without.value.entries()) {
          const chainDecision = withChains.value[i]!
          if (d.keep) expect(chainDecision.keep).toBe(true)
          else if (chainDecision.keep) expect(chainDecision.reasons.every((r) => /needs it/.test(r))).toBe(true)
        }
      }),
      { numRuns: 300 },
    )
    const r = planRetention(
      [
        { name: 'full', time: new Date('2024-01-01T00:00:00Z') },
        { name: 'inc1', time: new Date('2024-01-02T00:00:00Z'), dependsOn: 'full' },
        { name: 'inc2', time: new Date('2024-01-03T00:00:00Z'), dependsOn: 'inc1' },
        { name: 'full2', time: new Date('2024-01-04T00:00:00Z') },
        { name: 'inc3', time: new Date('2024-01-05T00:00:00Z'), dependsOn: 'full2' },
      ],
      { keepLast: 1 },
      { now: new Date('2024-01-06T00:00:00Z') },
    )
    expect(r._unsafeUnwrap().map((d) => [d.name, d.keep, d.reasons])).toEqual([
      ['full', false, ['not kept by the count policy']],
      ['inc1', false, ['not kept by the count policy']],
      ['inc2', false, ['not kept by the count policy']],
      ['full2', true, ['protected: inc3 needs it (incremental against it)']],
      ['inc3', true, ['keepLast: 1 of 1 newest', 'protected: the newest snapshot']],
    ])
  })

  it('keeps snapshots whose time could not be read and snapshots dated in the future', () => {
    const r = planRetention(
      [
        { name: 'garbage', time: new Date(Number.NaN) },
        { name: 'old', time: new Date('2024-01-01T00:00:00Z') },
        { name: 'mid', time: new Date('2024-06-01T00:00:00Z') },
        { name: 'future', time: new Date('2031-01-01T00:00:00Z') },
      ],
      { keepLast: 1 },
      { now: new Date('2025-01-01T00:00:00Z') },
    )
    expect(r._unsafeUnwrap()).toEqual([
      { name: 'garbage', keep: true, reasons: ['protected: its time could not be read'] },
      { name: 'old', keep: false, reasons: ['not kept by the count policy'] },
      { name: 'mid', keep: false, reasons: ['not kept by the count policy'] },
      { name: 'future', keep: true, reasons: ['keepLast: 1 of 1 newest', 'protected: the newest snapshot', 'protected: dated in the future'] },
    ])
  })

  it('refuses a policy that keeps none of the snapshots instead of deleting them', () => {
    const r = planRetention([{ name: 'a', time: new Date('2020-01-01T00:00:00Z') }], { preserveMin: 'no', preserve: '1h' }, { now: new Date('2024-01-01T00:00:00Z'), timeZone: 'UTC' })
    expect(r.isErr() && r.error.code).toBe('RETENTION_WOULD_DELETE_ALL')
  })

  it('refuses empty, mixed and malformed policies with a hint', () => {
    const bad = (policy: object) => planRetention([], policy as RetentionPolicy, { now: new Date() })
    expect(bad({})._unsafeUnwrapErr().code).toBe('INVALID_POLICY')
    expect(bad({ keepLast: 3, daily: 2 })._unsafeUnwrapErr().message).toMatch(/mixes spellings/)
    expect(bad({ keepLast: 0 })._unsafeUnwrapErr()).toEqual(
      bbError('INVALID_POLICY', 'keepLast 0 is not a whole number of at least 1', 'keep at least one snapshot: keepLast: 1 or more'),
    )
    expect(bad({ preserve: '7x' })._unsafeUnwrapErr().message).toBe('preserve token "7x" is not <N>{h,d,w,m,q,y} or *{h,d,w,m,q,y}')
    expect(bad({ daily: 0, weekly: 0 })._unsafeUnwrapErr().message).toBe('every rotate-backups count is 0: the policy keeps nothing')
    expect(bad({ keepLats: 3 })._unsafeUnwrapErr().message).toBe('unknown retention key "keepLats"')
    expect(planRetention([], { keepLast: 1 }, { now: new Date(), timeZone: 'Mars/Base' })._unsafeUnwrapErr().code).toBe('INVALID_POLICY')
  })

  it('deletes at most maxDelete: a plan that would delete more deletes nothing and says how many, oldest to newest', () => {
    const hourly = Array.from({ length: 30 }, (_, h) => ({ name: `h${String(h).padStart(2, '0')}`, time: new Date(BASE + h * 3_600_000) }))
    const now = { now: new Date(BASE + 30 * 3_600_000), timeZone: 'UTC' }
    // keepLast 5 deletes 25: allowed at 25, refused at 24
    expect(planRetention(hourly, { keepLast: 5 }, { ...now, maxDelete: 25 })._unsafeUnwrap().filter((d) => !d.keep)).toHaveLength(25)
    const refused = planRetention(hourly, { keepLast: 5 }, { ...now, maxDelete: 24 })._unsafeUnwrapErr()
    expect(refused.code).toBe('RETENTION_WOULD_DELETE_MANY')
    expect(refused.message).toBe('the retention policy would delete 25 of the 30 snapshots at once (h00 … h24), more than the 24 one prune may delete')
    expect(refused.details).toEqual({ snapshots: 30, deletions: 25, maxDelete: 24 })
    // what protections keep does not count: the same policy with four of them protected deletes 21
    const protect = ['h00', 'h01', 'h02', 'h03'].map((name) => ({ name, reason: 'a pending transfer needs it' }))
    expect(planRetention(hourly, { keepLast: 5 }, { ...now, maxDelete: 21, protect }).isOk()).toBe(true)
  })

  it('a clock that jumps a year ahead deletes at most maxDelete, whatever the policy (reliability §3.9, properties 7 and 8)', () => {
    fc.assert(
      fc.property(snapshotsArb, policyArb, fc.integer({ min: 1, max: 20 }), fc.integer({ min: 0, max: 2 * 365 * 24 }), (snapshots, policy, maxDelete, jumpHours) => {
        fc.pre(!('preserve' in policy && policy.preserve === 'no' && policy.preserveMin === 'no'))
        const now = new Date(BASE + 401 * 24 * 3_600_000 + jumpHours * 3_600_000)
        const unlimited = planRetention(snapshots, policy, { now, timeZone: 'UTC' })
        const limited = planRetention(snapshots, policy, { now, timeZone: 'UTC', maxDelete })
        if (unlimited.isErr()) {
          expect(limited._unsafeUnwrapErr()).toEqual(unlimited.error)
          return
        }
        const deletions = unlimited.value.filter((d) => !d.keep).length
        if (deletions <= maxDelete) expect(limited._unsafeUnwrap()).toEqual(unlimited.value)
        else expect(limited._unsafeUnwrapErr().details).toEqual({ snapshots: snapshots.length, deletions, maxDelete })
      }),
      { numRuns: 500 },
    )
  })
})
