import { describe, expect, it } from 'vitest'
import { parseRate, waitSecondsOf } from '../src/duration.js'

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

describe('waitSecondsOf: --wait [seconds]', () => {
  it('reads seconds or a duration; a bare --wait is a day; absent is no waiting', () => {
    expect(waitSecondsOf(undefined)._unsafeUnwrap()).toBeUndefined()
    expect(waitSecondsOf(true)._unsafeUnwrap()).toBe(86400)
    expect(waitSecondsOf('0')._unsafeUnwrap()).toBe(0)
    expect(waitSecondsOf('600')._unsafeUnwrap()).toBe(600)
    expect(waitSecondsOf('10m')._unsafeUnwrap()).toBe(600)
    expect(waitSecondsOf('2h')._unsafeUnwrap()).toBe(7200)
  })
  it('refuses what is not a wait, naming it (a path the option took as its value, a negative number)', () => {
    for (const wrong of ['abc', '/home', '-5', '1.5', '']) {
      expect(waitSecondsOf(wrong)._unsafeUnwrapErr(), wrong).toMatchObject({ code: 'INVALID_OPTIONS', message: `--wait ${wrong} is not a number of seconds or a duration` })
    }
  })
})
