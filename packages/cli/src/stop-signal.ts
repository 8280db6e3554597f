/** A signal that Ctrl-C or a kill aborts, for as long as a command runs. */
export interface StopSignal {
  readonly signal: AbortSignal
  /** stops listening: a signal after `done` ends the process (see {@link onSignalEnd}) */
  readonly done: () => void
}

/** Ctrl-C, `kill` (and `timeout`, a cron job's or a unit's end), a closed terminal */
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const

/** what the commands under way abort on the first signal */
const stops = new Set<AbortController>()
/** what must be done before a process that a signal ends is gone (stopping the ssh masters of each main under way) */
const lastWords = new Set<() => void>()
let users = 0
let received = 0

const onSignal = (signal: NodeJS.Signals): void => {
  received += 1
  if (received === 1 && stops.size > 0) {
    for (const stop of stops) stop.abort()
    return
  }
  // nothing under way that winds down on its own (a command that only reads), or a second signal:
  // the process ends now, by the signal itself (a shell running it sees that, and a script stops), after its last words
  for (const words of lastWords) {
    try {
      words()
    } catch {
      // ending anyway
    }
  }
  for (const s of SIGNALS) process.off(s, onSignal)
  process.kill(process.pid, signal)
}

const listen = (): void => {
  if (users++ === 0) for (const s of SIGNALS) process.on(s, onSignal)
}

const unlisten = (): void => {
  if (--users > 0) return
  for (const s of SIGNALS) process.off(s, onSignal)
  received = 0
}

/**
 * Listens for SIGINT, SIGTERM and SIGHUP (Ctrl-C, `kill`, `timeout`, a cron job's end, a closed
 * terminal) and aborts `signal` on the first: what the command started with it (rsync, btrfs, du,
 * ssh) stops with it, its lock is released and its report says so, rather than this process ending
 * alone while the commands it started run on without it. Once only: a second signal ends the
 * process at once.
 * @example
 * const stop = stopSignal()
 * try { await prune(job, { signal: stop.signal }) } finally { stop.done() }
 */
export const stopSignal = (): StopSignal => {
  const controller = new AbortController()
  stops.add(controller)
  listen()
  let listening = true
  return {
    signal: controller.signal,
    done: () => {
      if (!listening) return
      listening = false
      stops.delete(controller)
      unlisten()
    },
  }
}

/**
 * Until the returned function is called, a signal that no {@link stopSignal} takes (one that comes
 * while nothing is under way that winds down on its own, or a second one) calls `words` and then
 * ends the process by that signal, as it would have ended without a handler. `words` must be
 * synchronous: nothing else runs after it (stop the processes started, remove temporary files).
 * @example
 * const release = onSignalEnd(() => session.closeNow())
 * try { ... } finally { release() }
 */
export const onSignalEnd = (words: () => void): (() => void) => {
  const said = (): void => words()
  lastWords.add(said)
  listen()
  let listening = true
  return () => {
    if (!listening) return
    listening = false
    lastWords.delete(said)
    unlisten()
  }
}
