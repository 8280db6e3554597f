import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decodeFileName, fileNameBytes } from '../src/index.js'

const bytes = (...b: number[]): Buffer => Buffer.from(b)

describe('file names as bytes (decodeFileName, fileNameBytes)', () => {
  it.each<[string, Buffer, string]>([
    ['UTF-8 as it is', Buffer.from('café ä 😀'), 'café ä 😀'],
    ['a Latin-1 é', bytes(0x63, 0x61, 0x66, 0xe9), 'caf\udce9'],
    ['U+FFFD written in the name itself', Buffer.from('a\uFFFDb'), 'a\uFFFDb'],
    ['an overlong slash (C0 AF)', bytes(0xc0, 0xaf), '\udcc0\udcaf'],
    ['a surrogate encoded in UTF-8 (ED A0 80)', bytes(0xed, 0xa0, 0x80), '\udced\udca0\udc80'],
    ['past U+10FFFF (F4 90 80 80)', bytes(0xf4, 0x90, 0x80, 0x80), '\udcf4\udc90\udc80\udc80'],
    ['a sequence cut short, then ASCII', bytes(0xe2, 0x82, 0x41), '\udce2\udc82A'],
    ['a stray continuation byte between characters', Buffer.concat([Buffer.from('ä'), bytes(0x80), Buffer.from('ö')]), 'ä\udc80ö'],
  ])('%s', (_, raw, decoded) => {
    expect(decodeFileName(raw)).toBe(decoded)
    expect(fileNameBytes(decoded)).toEqual(raw)
  })

  it('gives every name its bytes back, so two names never read as one', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (raw) => {
      expect(fileNameBytes(decodeFileName(raw))).toEqual(Buffer.from(raw))
    }), { numRuns: 2000 })
    fc.assert(fc.property(fc.string({ unit: 'grapheme', maxLength: 32 }), (name) => {
      expect(decodeFileName(Buffer.from(name, 'utf8'))).toBe(name)
    }))
  })

  it('reads a name inside a larger buffer by its own bytes', () => {
    const whole = bytes(0x41, 0xe9, 0x42, 0x43)
    expect(decodeFileName(whole.subarray(1, 3))).toBe('\udce9B')
  })
})
