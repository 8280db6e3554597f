/** A signal that Ctrl-C or a kill aborts, for as long as a command runs. */
export interface StopSignal {
  readonly signal: AbortSignal
  /** stops listening: a second SIGINT or SIGTERM, and one after `done`, ends the process as Node's default does */
  readonly done: () => void
}

/**
 * Listens for SIGINT and SIGTERM (Ctrl-C, `kill`, `timeout`, a cron job's end) and aborts
 * `signal` on the first: what the command started with it (rsync, btrfs, du, ssh) stops with it,
 * its lock is released and its report says so, rather than this process ending alone while the
 * commands it started run on without it. Once only: a second signal ends the process at once.
 * @example
 * const stop = stopSignal()
 * try { await prune(job, { signal: stop.signal }) } finally { stop.done() }
 */
export const stopSignal = (): StopSignal => {
  const controller = new AbortController()
  const onSignal = (): void => controller.abort()
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  return {
    signal: controller.signal,
    done: () => {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    },
  }
}
