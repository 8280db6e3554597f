import type { SnapshotInfo, TransferProgress, Transport } from '@bb/core'
import { SendStreamReader } from './send-stream.js'

/** A running estimate of a send's size, and the means to stop it when the send ends first. */
export interface SendEstimate {
  /** the estimate, or undefined when it could not be made (the command failed, or was stopped) */
  readonly bytes: Promise<number | undefined>
  /** stops it, if it still runs; resolves once it has exited */
  readonly stop: () => Promise<void>
}

/** Nothing to estimate: the progress shows bytes and rate alone. */
export const noEstimate: SendEstimate = { bytes: Promise.resolve(undefined), stop: () => Promise.resolve() }

/**
 * The size of the stream `btrfs send [-p PARENT] SNAPSHOT` will write, from `btrfs send --no-data`
 * of the same (run beside the real send: it reads metadata only): the bytes of that stream, which
 * carries every command but the data, plus the file data its update_extent commands stand for.
 * Close for a plain stream; with `--compressed-data` from a filesystem that compresses, the real
 * stream is smaller, and an estimate is better not made ({@link noEstimate}).
 * @example
 * const estimate = estimateSend(source, snapshot, parent, signal)
 * const total = await estimate.bytes // 1_573_000_000
 */
export const estimateSend = (source: Transport, sent: SnapshotInfo, parent: SnapshotInfo | undefined, signal: AbortSignal | undefined): SendEstimate => {
  const argv = ['btrfs', 'send', '-q', '--no-data', ...(parent === undefined ? [] : ['-p', parent.path]), sent.path]
  const running = source.spawn(argv, { stdout: 'pipe', ...(signal === undefined ? {} : { signal }) })
  let streamBytes = 0
  let dataBytes = 0
  let unreadable = false
  const reader = new SendStreamReader((c) => {
    if (c.length !== undefined) dataBytes += c.length
  })
  running.stdout?.on('data', (chunk: Buffer) => {
    streamBytes += chunk.length
    if (unreadable) return
    try {
      reader.push(chunk)
    } catch {
      unreadable = true
      running.kill('SIGTERM')
    }
  })
  const bytes = Promise.resolve(running.done).then((r): number | undefined => {
    if (unreadable || r.isErr() || r.value.exitCode !== 0) return undefined
    try {
      reader.end()
    } catch {
      return undefined
    }
    return streamBytes + dataBytes
  })
  let ended = false
  void bytes.then(() => {
    ended = true
  })
  return {
    bytes,
    stop: async () => {
      if (!ended) running.kill('SIGTERM')
      await bytes
    },
  }
}

/** how far back the rate looks: long enough to even out a pipe's bursts, short enough to follow a change of pace */
const RATE_WINDOW_MS = 10_000

/**
 * Turns the byte counts of a transfer into its progress against an estimate that may come later:
 * percent (at most 99 until the transfer has ended: an estimate may fall short), rate over the last
 * seconds, and the time left at that rate.
 * @example
 * const progress = progressMeter(estimate.bytes)
 * onBytes: (n) => emit({ type: 'transfer-progress', target, snapshot, bytes: n, ...progress(n) })
 */
export const progressMeter = (expected: Promise<number | undefined>, now: () => number = Date.now): ((bytes: number) => TransferProgress) => {
  let total: number | undefined
  void expected.then((n) => {
    total = n
  })
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
