import { describe, expect, it } from 'vitest'
import { parseRate } from '../src/duration.js'

describe('parseRate: btrbk\'s rate_limit spelling, in bytes a second', () => {
  it('reads plain bytes and k, m, g, t as powers of 1024, in either case', () => {
    expect(parseRate('4096')).toBe(4096)
    expect(parseRate('500k')).toBe(500 * 1024)
    expect(parseRate('10M')).toBe(10 * 1024 ** 2)
    expect(parseRate('1.5m')).toBe(1.5 * 1024 ** 2)
    expect(parseRate('2g')).toBe(2 * 1024 ** 3)
    expect(parseRate(' 1T ')).toBe(1024 ** 4)
  })
  it('refuses what is not a rate, and a rate below one byte a second', () => {
    for (const text of ['', 'fast', '10 MB/s', '-5m', '1e6', '10x', '0', '0.2']) expect(parseRate(text), text).toBeUndefined()
  })
})
