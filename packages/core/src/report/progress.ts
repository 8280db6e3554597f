import type { TransferProgress } from '../driver/driver.js'

/** how far back the rate looks: long enough to even out a pipe's bursts, short enough to follow a change of pace */
const RATE_WINDOW_MS = 10_000

/**
 * Turns the byte counts of a transfer into its progress against its size, known or an estimate that
 * may come later: percent (at most 99 until the transfer has ended: an estimate may fall short), rate
 * over the last seconds, and the time left at that rate.
 * @example
 * const progress = progressMeter(estimate.bytes)
 * onBytes: (n) => emit({ type: 'transfer-progress', target, snapshot, bytes: n, ...progress(n) })
 */
export const progressMeter = (expected: Promise<number | undefined> | number, now: () => number = Date.now): ((bytes: number) => TransferProgress) => {
  let total: number | undefined = typeof expected === 'number' ? expected : undefined
  if (typeof expected !== 'number') {
    void expected.then((n) => {
      total = n
    })
  }
  const samples: { readonly at: number; readonly bytes: number }[] = [{ at: now(), bytes: 0 }]
  return (bytes) => {
    const at = now()
    samples.push({ at, bytes })
    while (samples.length > 2 && at - (samples[1]?.at ?? at) >= RATE_WINDOW_MS) samples.shift()
    const first = samples[0] ?? { at, bytes }
    const seconds = (at - first.at) / 1000
    const bytesPerSecond = seconds > 0 ? Math.max(0, (bytes - first.bytes) / seconds) : undefined
    if (total === undefined || total <= 0) return bytesPerSecond === undefined ? { bytes } : { bytes, bytesPerSecond }
    const percent = Math.min(99, Math.floor((bytes * 100) / total))
    const left = Math.max(0, total - bytes)
    return {
      bytes, percent, expectedBytes: total,
      ...(bytesPerSecond === undefined ? {} : { bytesPerSecond }),
      ...(bytesPerSecond === undefined || bytesPerSecond === 0 ? {} : { etaSeconds: Math.ceil(left / bytesPerSecond) }),
    }
  }
}
