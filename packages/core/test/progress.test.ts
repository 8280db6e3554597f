import { describe, expect, it } from 'vitest'
import { progressMeter } from '../src/report/progress.js'

/** a clock the test moves: `tick(ms)` */
const clock = (): { now: () => number; tick: (ms: number) => void } => {
  let t = 1_000_000
  return { now: () => t, tick: (ms) => { t += ms } }
}

describe('progressMeter', () => {
  it('shows bytes and rate alone until the estimate is known, then percent and time left at the rate', async () => {
    const c = clock()
    let settle: (n: number | undefined) => void = () => undefined
    const meter = progressMeter(new Promise((resolve) => { settle = resolve }), c.now)
    c.tick(1000)
    expect(meter(10 * 2 ** 20)).toEqual({ bytes: 10 * 2 ** 20, bytesPerSecond: 10 * 2 ** 20 })
    settle(100 * 2 ** 20)
    await Promise.resolve()
    c.tick(1000)
    // 20 MiB in 2 s: 10 MiB/s, 80 MiB left: 8 s
    expect(meter(20 * 2 ** 20)).toEqual({ bytes: 20 * 2 ** 20, percent: 20, expectedBytes: 100 * 2 ** 20, bytesPerSecond: 10 * 2 ** 20, etaSeconds: 8 })
  })

  it('never says 100% (nor more) before the end: an estimate may fall short', async () => {
    const c = clock()
    const meter = progressMeter(Promise.resolve(1000), c.now)
    await Promise.resolve()
    c.tick(500)
    expect(meter(999).percent).toBe(99)
    c.tick(500)
    expect(meter(5000)).toMatchObject({ percent: 99, etaSeconds: 0 })
  })

  it('the rate follows the last seconds, not the whole transfer', async () => {
    const c = clock()
    const meter = progressMeter(Promise.resolve(undefined), c.now)
    // 100 MiB/s for 20 s, then 1 MiB/s for 20 s
    let bytes = 0
    for (let i = 0; i < 20; i++) {
      c.tick(1000)
      bytes += 100 * 2 ** 20
      meter(bytes)
    }
    for (let i = 0; i < 20; i++) {
      c.tick(1000)
      bytes += 2 ** 20
      meter(bytes)
    }
    const rate = meter(bytes).bytesPerSecond ?? 0
    expect(rate).toBeGreaterThan(0.9 * 2 ** 20)
    expect(rate).toBeLessThan(1.2 * 2 ** 20)
  })

  it('a size known from the start counts from the first call', () => {
    const c = clock()
    const meter = progressMeter(4000, c.now)
    c.tick(1000)
    expect(meter(1000)).toEqual({ bytes: 1000, percent: 25, expectedBytes: 4000, bytesPerSecond: 1000, etaSeconds: 3 })
  })

  it('has no rate before time has passed, and no percent of an estimate that could not be made', async () => {
    const c = clock()
    const meter = progressMeter(Promise.resolve(undefined), c.now)
    await Promise.resolve()
    expect(meter(0)).toEqual({ bytes: 0 })
  })
})
