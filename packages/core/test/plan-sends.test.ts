import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { keptByRetention, planSends, sameSnapshot, type SnapshotInfo } from '../src/index.js'
import { aheadOfClock, clockWarning, madeOrder, newestMade } from '../src/engine/job.js'

const source = (n: number): SnapshotInfo => ({
  name: `s${n}`, time: new Date(Date.UTC(2026, 0, 1, n)), complete: true, health: 'ok', path: `/src/.snapshots/s${n}`,
  identity: { uuid: `uuid-${n}`, parentUuid: 'uuid-home', readOnly: true },
})
/** the copy of source snapshot n received at a target */
const copy = (n: number, at = 'a'): SnapshotInfo => ({
  name: `s${n}`, time: new Date(Date.UTC(2026, 0, 1, n)), complete: true, health: 'ok', path: `/${at}/s${n}`,
  identity: { uuid: `${at}-copy-${n}`, receivedUuid: `uuid-${n}`, readOnly: true },
})
const names = (plan: ReturnType<typeof planSends>): string[] => plan.sends.map((s) => `${s.snapshot.name}<${s.parent?.name ?? 'full'}`)

describe('sameSnapshot', () => {
  it('matches by uuid in every direction btrbk correlates, never by name', () => {
    expect(sameSnapshot(source(1), copy(1))).toBe(true)
    expect(sameSnapshot(copy(1), source(1))).toBe(true)
    expect(sameSnapshot(copy(1, 'a'), copy(1, 'b'))).toBe(true) // both received from the same snapshot
    expect(sameSnapshot(source(1), { ...copy(1), identity: { uuid: 'x', receivedUuid: 'uuid-other', readOnly: true } })).toBe(false)
    expect(sameSnapshot(source(1), source(2))).toBe(false)
  })
  it('falls back to the name for drivers without identities', () => {
    const plain = (name: string): SnapshotInfo => ({ name, time: undefined, complete: true, health: 'ok', path: name })
    expect(sameSnapshot(plain('a'), plain('a'))).toBe(true)
    expect(sameSnapshot(plain('a'), plain('b'))).toBe(false)
  })
})

describe('planSends', () => {
  it('sends the newest in full to an empty target', () => {
    const plan = planSends([source(1), source(2)], [])
    expect(names(plan)).toEqual(['s2<full'])
    expect(plan.fullBecause).toBeUndefined()
  })
  it('sends what a target missed oldest first, each against the one before', () => {
    const plan = planSends([source(1), source(2), source(3), source(4)], [copy(1), copy(2)])
    expect(names(plan)).toEqual(['s3<s2', 's4<s3'])
    expect(plan.sends[0]?.parentAtTarget?.path).toBe('/a/s2')
    expect(plan.sends[1]?.parentAtTarget).toBeUndefined()
    expect(plan.newestCommon?.source.name).toBe('s2')
  })
  it('does not send again what the target pruned, only what is newer than its newest copy', () => {
    expect(names(planSends([source(1), source(2), source(3)], [copy(1), copy(3)]))).toEqual([])
  })
  it('falls back to an older common pair when the newest was deleted at the target (scenario 5)', () => {
    expect(names(planSends([source(1), source(2), source(3)], [copy(1)]))).toEqual(['s2<s1', 's3<s2'])
  })
  it('falls back to an older common pair when the parent was deleted at the source (scenario 5)', () => {
    expect(names(planSends([source(1), source(3)], [copy(1), copy(2)]))).toEqual(['s3<s1'])
  })
  it('says why it sends in full when no backup at the target matches a source snapshot', () => {
    const plan = planSends([source(5)], [copy(1), copy(2)])
    expect(names(plan)).toEqual(['s5<full'])
    expect(plan.fullBecause).toMatch(/none of the 2 backups/)
  })
  it('a same-named backup that was not received from the snapshot is not a parent', () => {
    const impostor: SnapshotInfo = { ...copy(1), identity: { uuid: 'z', receivedUuid: 'uuid-elsewhere', readOnly: true } }
    expect(names(planSends([source(1), source(2)], [impostor]))).toEqual(['s2<full'])
  })
  it('a newest copy that cannot be restored (a broken chain of streams) is no parent: the next send is full, the rest on it', () => {
    const broken: SnapshotInfo = { ...copy(2), broken: 'its chain is broken at s1, whose stream file is missing at /a' }
    const plan = planSends([source(1), source(2), source(3), source(4)], [broken])
    expect(names(plan)).toEqual(['s3<full', 's4<s3'])
    expect(plan.sends[0]?.parentAtTarget).toBeUndefined()
    expect(plan.fullBecause).toMatch(/newest backup at the target, s2, cannot be restored \(its chain is broken at s1/)
    // a whole older copy is passed over too: the newest copy is where a chain goes on
    expect(names(planSends([source(1), source(2), source(3)], [copy(1), broken]))).toEqual(['s3<full'])
    // nothing newer to send: nothing to say
    expect(planSends([source(1), source(2)], [broken])).toEqual({ sends: [], newestCommon: { source: source(2), target: broken } })
  })
  it("incremental 'no' (btrbk's): every send in full, none said to be for want of a parent; the same sends otherwise", () => {
    const plan = planSends([source(1), source(2), source(3)], [copy(1)], { incremental: 'no' })
    expect(names(plan)).toEqual(['s2<full', 's3<full'])
    expect(plan.sends.every((x) => x.parentAtTarget === undefined)).toBe(true)
    expect(plan.fullBecause).toBeUndefined()
    expect(plan.newestCommon?.source.name).toBe('s1')
    expect(planSends([source(5)], [copy(1)], { incremental: 'no' }).fullBecause).toBeUndefined()
  })
  it("incremental 'strict' (btrbk's): a plan with a full send is refused, and says why; one that is all incremental is as with 'yes'", () => {
    expect(planSends([source(1)], [], { incremental: 'strict' })).toMatchObject({ sends: [{ snapshot: { name: 's1' } }], refused: 's1 would be sent in full (the target holds no backup of this source), and incremental = strict sends nothing in full' })
    expect(planSends([source(5)], [copy(1), copy(2)], { incremental: 'strict' }).refused).toBe('s5 would be sent in full (none of the 2 backups at the target is a copy of a snapshot still at the source), and incremental = strict sends nothing in full')
    const broken: SnapshotInfo = { ...copy(2), broken: 'its chain is broken at s1' }
    expect(planSends([source(1), source(2), source(3)], [broken], { incremental: 'strict' }).refused).toMatch(/^s3 would be sent in full \(the newest backup at the target, s2, cannot be restored/)
    const fine = planSends([source(1), source(2), source(3)], [copy(1)], { incremental: 'strict' })
    expect(fine).toEqual(planSends([source(1), source(2), source(3)], [copy(1)]))
    expect(fine.refused).toBeUndefined()
  })
  it('property: every send has a parent the target holds or that was sent before it, and the newest ends at the target', () => {
    fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 30 }), { minLength: 1 }), fc.uniqueArray(fc.integer({ min: 0, max: 30 })), (src, tgt) => {
      const s = [...src].sort((a, b) => a - b).map(source)
      const t = [...tgt].sort((a, b) => a - b).map((n) => copy(n))
      const plan = planSends(s, t)
      const held = new Set(t.map((x) => x.name))
      const newestCommon = [...src].sort((a, b) => a - b).filter((n) => held.has(`s${n}`)).at(-1)
      for (const send of plan.sends) {
        if (send.parent !== undefined) expect(held.has(send.parent.name)).toBe(true)
        expect(held.has(send.snapshot.name)).toBe(false)
        held.add(send.snapshot.name)
      }
      const newest = s.at(-1)!
      // the newest snapshot is at the target afterwards, unless the target already holds a newer copy
      if (newestCommon === undefined || newestCommon < Math.max(...src)) expect(held.has(newest.name)).toBe(true)
      // at most one full send, and only when nothing is in common
      expect(plan.sends.filter((x) => x.parent === undefined).length).toBe(newestCommon === undefined ? 1 : 0)
    }))
  })
})

describe('a new target gets what its retention keeps (btrbk: retention decides what is transferred)', () => {
  /** daily snapshots at 01:00 from 2024-01-01 to 2024-03-13: reference/btrfs.md §2.4 A */
  const daily = (): SnapshotInfo[] => Array.from({ length: 73 }, (_, i) => {
    const time = new Date(Date.UTC(2024, 0, 1 + i, 1))
    const name = `home.${time.toISOString().slice(0, 16).replaceAll('-', '').replace(':', '')}`
    return { name, time, complete: true, health: 'ok', path: `/src/.snapshots/${name}`, identity: { uuid: `uuid-${i}`, readOnly: true } }
  })
  const now = new Date('2024-03-13T12:00:00Z')

  it("btrbk's example A: the 15 snapshots 7d 4w 3m keeps, oldest first, the first in full and each next against the one before", () => {
    const source = daily()
    const plan = planSends(source, [], { backfill: keptByRetention({ preserveMin: 'no', preserve: '7d 4w 3m' }, { now, timeZone: 'UTC' }) })
    expect(plan.sends.map((p) => p.snapshot.time?.toISOString().slice(0, 10))).toEqual([
      '2024-01-01', '2024-01-07', '2024-02-04', '2024-02-11', '2024-02-18', '2024-02-25', '2024-03-03',
      '2024-03-06', '2024-03-07', '2024-03-08', '2024-03-09', '2024-03-10', '2024-03-11', '2024-03-12', '2024-03-13',
    ])
    expect(plan.sends[0]?.parent).toBeUndefined()
    for (const [i, send] of plan.sends.entries()) if (i > 0) expect(send.parent).toBe(plan.sends[i - 1]?.snapshot)
    expect(plan.sends.every((p) => p.parentAtTarget === undefined)).toBe(true)
  })

  it('a count sends the newest N; no policy, or one that cannot be read, the newest alone', () => {
    const source = daily()
    expect(planSends(source, [], { backfill: keptByRetention({ keepLast: 3 }, { now }) }).sends.map((p) => p.snapshot.name)).toEqual(source.slice(-3).map((s) => s.name))
    expect(planSends(source, [], { backfill: keptByRetention(undefined, { now }) }).sends.map((p) => p.snapshot.name)).toEqual([source.at(-1)?.name])
    expect(planSends(source, [], { backfill: keptByRetention({ keepLast: 0 }, { now }) }).sends.map((p) => p.snapshot.name)).toEqual([source.at(-1)?.name])
  })

  it("weighs the backups already there (not copies of these snapshots): one earlier in a day stands for that day", () => {
    const source = daily().slice(-3)
    // a backup of 03-12 00:30, from snapshots the source no longer holds
    const there: SnapshotInfo = { name: 'home.20240312T0030', time: new Date('2024-03-12T00:30:00Z'), complete: true, health: 'ok', path: '/a/home.20240312T0030', identity: { uuid: 'old', receivedUuid: 'gone', readOnly: true } }
    const plan = planSends(source, [there], { backfill: keptByRetention({ preserveMin: 'no', preserve: '7d' }, { now, timeZone: 'UTC' }) })
    expect(plan.sends.map((p) => p.snapshot.time?.toISOString().slice(0, 10))).toEqual(['2024-03-11', '2024-03-13'])
    expect(plan.fullBecause).toContain('none of the 1 backups')
  })

  const copyOf = (s: SnapshotInfo): SnapshotInfo => ({ ...s, path: `/a/${s.name}`, identity: { uuid: `copy-${s.name}`, receivedUuid: s.identity?.uuid ?? '', readOnly: true } })

  it('a target that holds a copy is not backfilled: without a catch-up policy, everything newer than its newest copy is sent', () => {
    const source = daily().slice(-4)
    const plan = planSends(source, [copyOf(source[1] as SnapshotInfo)], { backfill: () => { throw new Error('asked') } })
    expect(plan.sends.map((p) => p.snapshot.name)).toEqual(source.slice(2).map((s) => s.name))
  })

  it("a target that missed runs gets what its retention keeps of the newer snapshots (btrbk's target_preserve), each against the one before, the first against its newest copy", () => {
    // hourly snapshots for two days; the target holds the copy of the first and keeps the newest of each day
    const hourly = Array.from({ length: 48 }, (_, i): SnapshotInfo => {
      const time = new Date(Date.UTC(2024, 2, 11, i, 30))
      const name = `home.${time.toISOString().slice(0, 16).replaceAll('-', '').replace(':', '')}`
      return { name, time, complete: true, health: 'ok', path: `/src/.snapshots/${name}`, identity: { uuid: `h-${i}`, readOnly: true } }
    })
    const common = copyOf(hourly[0] as SnapshotInfo)
    const catchUp = keptByRetention({ preserveMin: 'no', preserve: '7d' }, { now: new Date('2024-03-13T00:00:00Z'), timeZone: 'UTC' })
    const plan = planSends(hourly, [common], { catchUp })
    // 03-11 is the common copy's day already; of 03-12 the first (btrbk keeps the first of a day), and the newest always
    expect(plan.sends.map((p) => p.snapshot.name)).toEqual(['home.20240312T0030', 'home.20240312T2330'])
    expect(plan.sends[0]).toMatchObject({ parent: hourly[0], parentAtTarget: common })
    expect(plan.sends[1]?.parent).toBe(plan.sends[0]?.snapshot)
    expect(plan.newestCommon?.target).toBe(common)
    // a count: the newest N of them
    expect(planSends(hourly, [common], { catchUp: keptByRetention({ keepLast: 2 }, { now }) }).sends.map((p) => p.snapshot.name)).toEqual(hourly.slice(-2).map((s) => s.name))
    // nothing newer: nothing asked
    expect(planSends(hourly, [copyOf(hourly[47] as SnapshotInfo)], { catchUp: () => { throw new Error('asked') } }).sends).toEqual([])
  })
})


describe('snapshots dated ahead of the clock', () => {
  const now = Date.parse('2026-11-25T12:00:00Z')
  const snap = (iso: string): SnapshotInfo => ({ name: iso, time: new Date(iso), complete: true, health: 'ok', path: `/b/${iso}` })
  const [a, b, soon, f] = [snap('2026-11-24T00:00:00Z'), snap('2026-11-25T11:00:00Z'), snap('2026-11-25T12:10:00Z'), snap('2027-06-01T00:00:00Z')]

  it('are those more than 15 minutes ahead (hosts\' clocks differ a little)', () => {
    expect([a, b, soon, f].map((s) => aheadOfClock(s, now))).toEqual([false, false, false, true])
    expect(aheadOfClock({ time: undefined }, now)).toBe(false)
    expect(aheadOfClock(snap('2026-11-25T12:15:01Z'), now)).toBe(true)
  })

  it('count as made before the others, and are the newest only when every one is dated ahead', () => {
    expect(madeOrder([a, b, soon, f], now).map((s) => s.name)).toEqual([f, a, b, soon].map((s) => s.name))
    expect(newestMade([a, b, f], now)).toBe(b)
    expect(newestMade([f], now)).toBe(f)
    expect(newestMade([], now)).toBeUndefined()
  })

  it('leave a run a warning that names the newest of them and how far ahead', () => {
    expect(clockWarning([a, b], now)).toBeUndefined()
    expect(clockWarning([a, f], now)).toBe("one of the backups here, 2027-06-01T00:00:00Z, is dated ahead of this host's clock (188 d): the clock was ahead when it was made, or is behind now; check it (timedatectl). Nothing is lost: it is kept, and latest means the newest made before now")
  })
})
