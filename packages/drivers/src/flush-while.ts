import type { Transport } from '@bb/core'

/** the pause between two flushes while a copy runs */
export const FLUSH_PAUSE_MS = 200

/** A flush of a filesystem repeated until {@link Flusher.stop}. */
export interface Flusher {
  /** no flush starts after this; resolves when the one under way (if any) has ended */
  readonly stop: () => Promise<void>
}

/**
 * Flushes the filesystem that holds `path` (`sync -f`) over and over, a pause after each, while a
 * backup writes into it (rsync's copy, a block revision's chunks). Left alone, the kernel holds the
 * writes in memory until the flush before the backup is recorded, which then waits for all of them
 * at once (on a disk, about a tenth of a full backup's time); flushed as they come, they are written
 * while the copy goes on, with a CPU it leaves idle. A flush that fails is no error here: the flush
 * before recording tells.
 * @example
 * const flusher = flushWhile(target, partial, signal)
 * try { await rsync() } finally { await flusher.stop() }
 */
export const flushWhile = (at: Transport, path: string, signal?: AbortSignal, pauseMs = FLUSH_PAUSE_MS): Flusher => {
  let stopped = false
  let wake: (() => void) | undefined
  const pause = (): Promise<void> => new Promise((resolve) => {
    const timer = setTimeout(resolve, pauseMs)
    wake = () => {
      clearTimeout(timer)
      resolve()
    }
  })
  const loop = (async () => {
    // none starts once the run is cancelled
    while (!stopped && signal?.aborted !== true) {
      await at.exec(['sync', '-f', path], signal === undefined ? {} : { signal })
      if (!stopped) await pause()
    }
  })()
  return {
    stop: async () => {
      stopped = true
      wake?.()
      await loop
    },
  }
}
