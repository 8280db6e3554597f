import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { parseFilefrag, sameChunks, type Extent } from '../src/block/extents.js'

const BLOCK = 4096

describe('parseFilefrag: filefrag -v -b1 output', () => {
  it('reads extents in bytes, with and without the expected column, and their flags', () => {
    const output = [
      'Filesystem type is: 9123683e',
      'File size of /srv/vm1.img is 100663296 (100663296 blocks of 1 bytes)',
      ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '   0:        0..  4194303: 2057117696..2061312000:  4194304:             shared',
      '   1:  4194304..  4198399: 3000000000..3000004095:     4096: 2061312000: encoded',
      '   2:  4198400.. 67108863: 2061316096..2124226559: 62910464: 3000004096: last,shared,eof',
      '/srv/vm1.img: 3 extents found',
    ].join('\n')
    expect(parseFilefrag(output)).toEqual([
      { logical: 0, physical: 2057117696, length: 4194304, flags: ['shared'] },
      { logical: 4194304, physical: 3000000000, length: 4096, flags: ['encoded'] },
      { logical: 4198400, physical: 2061316096, length: 62910464, flags: ['last', 'shared', 'eof'] },
    ])
  })
  it('takes nothing from output it cannot read whole', () => {
    expect(parseFilefrag('Filesystem type is: 9123683e\n')).toBeUndefined()
    expect(parseFilefrag(' ext:     logical_offset:        physical_offset: length:   expected: flags:\n   0:        0..  zzz: 1..2: 3:\n')).toBeUndefined()
    // a length that does not match its range
    expect(parseFilefrag(' ext:     logical_offset:        physical_offset: length:   expected: flags:\n   0:        0..  4095:  8192..12287: 8192: last\n')).toBeUndefined()
  })
})

/** a file as blocks: undefined a hole, else the block's address on disk (and whether it is compressed) */
type Block = { readonly at: number; readonly encoded: boolean } | undefined

/** extents of a block map: runs of consecutive addresses, cut at random places too (filefrag's boundaries are its own) */
const extentsOf = (blocks: readonly Block[], cuts: ReadonlySet<number>): Extent[] => {
  const out: { logical: number; physical: number; length: number; flags: string[] }[] = []
  blocks.forEach((b, i) => {
    if (b === undefined) return
    const last = out.at(-1)
    const prev = blocks[i - 1]
    if (last !== undefined && prev !== undefined && prev.at + 1 === b.at && prev.encoded === b.encoded && !cuts.has(i)) last.length += BLOCK
    else out.push({ logical: i * BLOCK, physical: b.at * BLOCK, length: BLOCK, flags: b.encoded ? ['encoded'] : ['shared'] })
  })
  return out
}

describe('sameChunks: chunks whose blocks two files share', () => {
  it('is exactly the chunks where every block maps to the same address (or both are holes), never one with a compressed block', () => {
    const block = fc.option(fc.record({ at: fc.integer({ min: 0, max: 40 }), encoded: fc.integer({ min: 0, max: 9 }).map((n) => n === 0) }), { nil: undefined })
    fc.assert(fc.property(
      fc.array(block, { minLength: 1, maxLength: 48 }),
      fc.array(fc.tuple(fc.nat(47), fc.oneof(fc.constant('keep' as const), fc.constant('hole' as const), fc.integer({ min: 100, max: 140 }))), { maxLength: 12 }),
      fc.integer({ min: 1, max: 6 }),
      fc.array(fc.nat(48), { maxLength: 6 }),
      (before, changes, chunkBlocks, cutAt) => {
        const after: Block[] = [...before]
        for (const [i, what] of changes) {
          if (i >= after.length || what === 'keep') continue
          after[i] = what === 'hole' ? undefined : { at: what, encoded: false }
        }
        const size = before.length * BLOCK
        const chunkSize = chunkBlocks * BLOCK
        const got = sameChunks(extentsOf(before, new Set()), extentsOf(after, new Set(cutAt)), size, chunkSize)
        const want = Array.from({ length: Math.ceil(before.length / chunkBlocks) }, (_, c) => {
          for (let i = c * chunkBlocks; i < Math.min(before.length, (c + 1) * chunkBlocks); i++) {
            const [x, y] = [before[i], after[i]]
            if (x === undefined && y === undefined) continue
            if (x === undefined || y === undefined || x.at !== y.at || x.encoded || y.encoded) return 0
          }
          return 1
        })
        expect([...got]).toEqual(want)
      },
    ), { numRuns: 500 })
  })

  it('counts a block unwritten in one file and written in the other as changed, and a chunk past the last extent of both as the same (holes)', () => {
    const written: Extent = { logical: 0, physical: 1 << 20, length: BLOCK, flags: [] }
    const unwritten: Extent = { ...written, flags: ['unwritten'] }
    expect([...sameChunks([written], [unwritten], 2 * BLOCK, BLOCK)]).toEqual([0, 1])
    expect([...sameChunks([unwritten], [unwritten], 2 * BLOCK, BLOCK)]).toEqual([1, 1])
  })
})
