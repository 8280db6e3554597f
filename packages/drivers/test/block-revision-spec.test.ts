import { describe, expect, it } from 'vitest'
import { selectRevisions, type Revision } from '../src/block/volume.js'

const revision = (uuid: string, timestamp: string, tags: string[] = []): Revision =>
  ({ uuid, timestamp, tags }) as Partial<Revision> as Revision

/** oldest first, as the volume lists them */
const revisions = [
  revision('45072527-0b1c-4f3e-9a11-2f6a0c1d2e3f', '2026-11-20T10:00:00Z', ['daily']),
  revision('9b369afa-77aa-4c2b-8e0d-5c4b3a291807', '2026-11-21T10:00:00Z', ['daily', 'weekly']),
  revision('4507ffff-1111-4222-8333-944455556666', '2026-11-22T10:00:00Z'),
]
const uuids = (spec: string) => selectRevisions(spec, revisions).map((r) => r.uuid.slice(0, 8))

describe('selectRevisions', () => {
  it('reads a small number as the N-th newest', () => {
    expect(uuids('0')).toEqual(['4507ffff'])
    expect(uuids('2')).toEqual(['45072527'])
    expect(uuids('latest')).toEqual(['4507ffff'])
    expect(uuids('all')).toEqual(['4507ffff', '9b369afa', '45072527'])
  })
  it('reads a number beyond the count as the start of a uuid, which can be all digits', () => {
    expect(uuids('45072527')).toEqual(['45072527'])
    expect(uuids('450725')).toEqual(['45072527'])
  })
  it('names an ambiguous start and a number that matches nothing', () => {
    expect(() => selectRevisions('4507', revisions)).toThrow(/'4507' starts 2 revisions/)
    expect(() => selectRevisions('12', revisions)).toThrow(/there is no revision 12: the volume has 3 \(0 is the newest\), and no uuid starts with it/)
    expect(() => selectRevisions('zz', revisions)).toThrow(/no revision matches 'zz'/)
    // an empty spec is not the start of every uuid
    expect(() => selectRevisions('', revisions)).toThrow(/an empty revision name/)
    expect(() => selectRevisions(' ', revisions)).toThrow(/an empty revision name/)
  })
  it('reads a tag as every revision carrying it, newest first', () => {
    expect(uuids('daily')).toEqual(['9b369afa', '45072527'])
  })
})
