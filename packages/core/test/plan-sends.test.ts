import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { planSends, sameSnapshot, type SnapshotInfo } from '../src/index.js'

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
