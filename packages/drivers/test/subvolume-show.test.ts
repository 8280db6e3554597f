import { describe, expect, it } from 'vitest'
import { parseSubvolumeShow } from '../src/btrfs/index.js'
import { isGarbled, isReceived, madeWritable, type Subvolume } from '../src/btrfs/subvolume.js'

// `btrfs subvolume show` of btrfs-progs 6.2, as printed on this project's test machine
const RECEIVED = `tgt/a
\tName: \t\t\ta
\tUUID: \t\t\ta486d3e5-8b35-8f46-b8dc-c117ea767636
\tParent UUID: \t\t-
\tReceived UUID: \t\t049b1390-dbdc-ff4c-b6da-9487eb017f38
\tCreation time: \t\t2026-11-23 19:33:19 +0000
\tSubvolume ID: \t\t258
\tGeneration: \t\t8
\tGen at creation: \t8
\tParent ID: \t\t5
\tTop level ID: \t\t5
\tFlags: \t\t\treadonly
\tSend transid: \t\t7
\tSend time: \t\t2026-11-23 19:33:19 +0000
\tReceive transid: \t8
\tReceive time: \t\t2026-11-23 19:33:19 +0000
\tSnapshot(s):
`

describe('parseSubvolumeShow', () => {
  it('reads identity, read-only flag, generation and the path from the top level of a received subvolume', () => {
    expect(parseSubvolumeShow(RECEIVED)).toEqual({
      name: 'a', fsPath: 'tgt/a', uuid: 'a486d3e5-8b35-8f46-b8dc-c117ea767636', receivedUuid: '049b1390-dbdc-ff4c-b6da-9487eb017f38', readOnly: true, generation: 8, creationGeneration: 8, receiveTransid: 8,
    })
  })
  it('reads an unfinished receive: writable, no received uuid, a parent, no receive finished in it', () => {
    const garbled = RECEIVED.replace('readonly', '-').replace(/Received UUID: \t\t\S+/, 'Received UUID: \t\t-').replace('Parent UUID: \t\t-', 'Parent UUID: \t\t1111')
      .replace('Receive transid: \t8', 'Receive transid: \t0').replace(/Receive time: .*/, 'Receive time: \t\t-')
    const s = parseSubvolumeShow(garbled)
    expect(s).toEqual({ name: 'a', fsPath: 'tgt/a', uuid: 'a486d3e5-8b35-8f46-b8dc-c117ea767636', parentUuid: '1111', readOnly: false, generation: 8, creationGeneration: 8, receiveTransid: 0 })
    expect(s !== undefined && [isGarbled(s), madeWritable(s), isReceived(s)]).toEqual([true, false, false])
  })
  it('tells a received backup made writable by hand (property set -f ro false: its receive transid is that of the change) from an unfinished receive', () => {
    // as btrfs-progs 6.2 shows a backup after `btrfs property set -f PATH ro false`
    const flipped = RECEIVED.replace('readonly', '-').replace(/Received UUID: \t\t\S+/, 'Received UUID: \t\t-').replace('Send transid: \t\t7', 'Send transid: \t\t0')
      .replace('Receive transid: \t8', 'Receive transid: \t11')
    const s = parseSubvolumeShow(flipped)
    expect(s).toMatchObject({ readOnly: false, receiveTransid: 11 })
    expect(s !== undefined && [isGarbled(s), madeWritable(s), isReceived(s)]).toEqual([false, true, false])
    // a subvolume listing says nothing of it: only what show says makes a copy one made writable
    const listed: Subvolume = { name: 'a', uuid: 'u', readOnly: false, generation: 8 }
    expect([isGarbled(listed), madeWritable(listed)]).toEqual([true, false])
  })
  it('reads the generation a subvolume was made at apart from its generation', () => {
    const written = parseSubvolumeShow(RECEIVED.replace('Generation: \t\t8', 'Generation: \t\t31').replace('Gen at creation: \t8', 'Gen at creation: \t29'))
    expect([written?.generation, written?.creationGeneration]).toEqual([31, 29])
  })
  it('does not take "Parent UUID" or "Received UUID" for the UUID, and gives up without one', () => {
    expect(parseSubvolumeShow(RECEIVED.replace(/\tUUID: .*\n/, ''))).toBeUndefined()
    expect(parseSubvolumeShow('')).toBeUndefined()
  })
})
