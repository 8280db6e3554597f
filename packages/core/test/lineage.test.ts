import { describe, expect, it } from 'vitest'
import { knownAt, ofThisJob, othersNote, type Lineage, type SnapshotInfo } from '../src/index.js'

const snapshot = (n: number): SnapshotInfo => ({
  name: `home.${n}`, time: new Date(Date.UTC(2026, 0, 1, n)), complete: true, health: 'ok', path: `/src/.snapshots/home.${n}`,
  identity: { uuid: `src-${n}`, parentUuid: 'home', readOnly: true },
})
/** a backup at the target received from the snapshot whose uuid is `from` */
const backup = (n: number, from = `src-${n}`): SnapshotInfo => ({
  name: `home.${n}`, time: new Date(Date.UTC(2026, 0, 1, n)), complete: true, health: 'ok', path: `/t/home.${n}`,
  identity: { uuid: `t-${n}`, receivedUuid: from, readOnly: true },
})
const none: Lineage = { version: 1, targets: {} }
const split = (lineage: Lineage, source: SnapshotInfo[], backups: SnapshotInfo[]) => {
  const { ours, others } = ofThisJob(knownAt(lineage, '/t', source, backups), backups)
  return { ours: ours.map((b) => b.name), others: others.map((b) => b.name) }
}

describe('which backups at a target are the job\'s own', () => {
  it('a target it has no word of is adopted whole when it holds a copy of a source snapshot (sent before the lineage, or a tool\'s backups)', () => {
    expect(split(none, [snapshot(5)], [backup(1), backup(2), backup(5)])).toEqual({ ours: ['home.1', 'home.2', 'home.5'], others: [] })
  })
  it('a target it has no word of that holds no copy: none of it is the job\'s (another source\'s with the same prefix)', () => {
    expect(split(none, [snapshot(5)], [backup(1, 'elsewhere-1'), backup(2, 'elsewhere-2')])).toEqual({ ours: [], others: ['home.1', 'home.2'] })
  })
  it('what the lineage records, and every copy of a snapshot the source still has; the rest is another\'s', () => {
    const lineage: Lineage = { version: 1, targets: { '/t': ['src-1'] } }
    expect(split(lineage, [snapshot(3)], [backup(1), backup(2, 'elsewhere-2'), backup(3)])).toEqual({ ours: ['home.1', 'home.3'], others: ['home.2'] })
    expect(knownAt(lineage, '/t', [snapshot(3)], [backup(1), backup(3)]).sort()).toEqual(['src-1', 'src-3'])
    // what is gone from the target is no longer known
    expect(knownAt(lineage, '/t', [snapshot(3)], [backup(3)])).toEqual(['src-3'])
    // a recorded empty list is a word: a copy that appears later does not adopt the others'
    expect(split({ version: 1, targets: { '/t': [] } }, [snapshot(3)], [backup(2, 'elsewhere-2'), backup(3)])).toEqual({ ours: ['home.3'], others: ['home.2'] })
  })
  it('backups without an identity (rsync\'s) are the job\'s by their name', () => {
    const plain: SnapshotInfo = { name: 'x', time: new Date(0), complete: true, health: 'ok', path: '/t/x' }
    expect(ofThisJob([], [plain]).ours).toEqual([plain])
  })
  it('says what it leaves alone, and nothing when there is nothing', () => {
    expect(othersNote([])).toBeUndefined()
    expect(othersNote([backup(1)])).toMatch(/^a backup here is named as this job's \(home\.1\) but not a copy/)
    expect(othersNote([backup(1), backup(2), backup(3), backup(4)])).toMatch(/^4 backups here are named as this job's \(home\.1 … home\.4\) but not copies/)
  })
})
