import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { formatSnapshotName, parseSnapshotName, uniqueSnapshotName } from '../src/index.js'

describe('snapshot names', () => {
  it('writes UTC names with an explicit zone that sort by time as strings', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 4_000_000_000 }), fc.integer({ min: 0, max: 4_000_000_000 }), (a, b) => {
      const na = formatSnapshotName({ prefix: 'home.', time: new Date(a * 1000) })
      const nb = formatSnapshotName({ prefix: 'home.', time: new Date(b * 1000) })
      expect(Math.sign(na.localeCompare(nb, 'en'))).toBe(Math.sign(a - b))
      expect(parseSnapshotName(na)).toEqual({ scheme: 'bbackup', prefix: 'home.', time: new Date(a * 1000), sequence: 0, hasTime: true })
    }))
  })

  it('adds a collision suffix past every name in use, unfinished copies included', () => {
    const time = new Date('2026-11-23T00:15:00Z')
    expect(uniqueSnapshotName({ time, existing: [] })).toBe('2026-11-23T001500Z')
    expect(uniqueSnapshotName({ time, existing: ['2026-11-23T001500Z', '2026-11-23T001500Z_1'] })).toBe('2026-11-23T001500Z_2')
    // after the highest of that second, also when the plain one is gone: the new one sorts last
    expect(uniqueSnapshotName({ time, existing: ['2026-11-23T001500Z_1'] })).toBe('2026-11-23T001500Z_2')
    expect(uniqueSnapshotName({ time, existing: ['2026-11-23T001500Z_3', 'x2026-11-23T001500Z_9', '2026-11-23T001500Z_x'] })).toBe('2026-11-23T001500Z_4')
    expect(parseSnapshotName('2026-11-23T001500Z_2')?.sequence).toBe(2)
  })

  it('reads the names of btrbk, btrfs-backup, rsync-system-backup and rsync-time-backup', () => {
    expect(parseSnapshotName('home.20240313T0100+0100')).toEqual({ scheme: 'btrbk', prefix: 'home.', time: new Date('2024-03-13T00:00:00Z'), sequence: 0, hasTime: true })
    expect(parseSnapshotName('home.20240313_2')).toMatchObject({ scheme: 'btrbk', prefix: 'home.', sequence: 2, hasTime: false })
    expect(parseSnapshotName('root-240313-010203')).toMatchObject({ scheme: 'btrfs-backup', prefix: 'root-', time: new Date(2024, 2, 13, 1, 2, 3) })
    // what btrfs-backup writes (util.py DATE_FORMAT = "%Y%m%d-%H%M%S"): the year's four digits are no part of the prefix
    expect(parseSnapshotName('20240313-010203')).toEqual({ scheme: 'btrfs-backup', prefix: '', time: new Date(2024, 2, 13, 1, 2, 3), sequence: 0, hasTime: true })
    expect(parseSnapshotName('home-20240313-010203')).toMatchObject({ scheme: 'btrfs-backup', prefix: 'home-', time: new Date(2024, 2, 13, 1, 2, 3) })
    expect(parseSnapshotName('vm12-240313-010203')).toMatchObject({ scheme: 'btrfs-backup', prefix: 'vm12-', time: new Date(2024, 2, 13, 1, 2, 3) })
    expect(parseSnapshotName('2024-03-13 01:02:03')).toMatchObject({ scheme: 'rsync-system-backup', time: new Date(2024, 2, 13, 1, 2, 3) })
    expect(parseSnapshotName('2024-03-13-010203')).toEqual({ scheme: 'rsync-time-backup', prefix: '', time: new Date(2024, 2, 13, 1, 2, 3), sequence: 0, hasTime: true })
  })

  it.each(['latest', 'lost+found', '2024-13-01T000000Z', 'home.20240230', 'x-240231-000000', '2024-03-13T000000Z.partial', '2024-02-30-010203', 'backup.inprogress', ''])(
    'never reads %j, so it is never touched',
    (name) => expect(parseSnapshotName(name)).toBeUndefined(),
  )
})
