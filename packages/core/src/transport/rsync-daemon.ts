import { setTimeout as sleep } from 'node:timers/promises'

/** tries of a connection an rsync daemon turns away as busy, the pauses between them doubling from 250 ms (about 8 s in all) */
const BUSY_ATTEMPTS = 6
const BUSY_DELAY_MS = 250

/**
 * How many connections an rsync daemon's module takes, when the daemon turned one away at that
 * limit (`@ERROR: max connections (N) reached`); undefined for any other answer.
 * @example
 * daemonConnectionLimit('@ERROR: max connections (1) reached -- try again later\n') // 1
 */
export const daemonConnectionLimit = (stderr: string): number | undefined => {
  const m = /@ERROR: max connections \((\d+)\) reached/.exec(stderr)
  return m === null ? undefined : Number(m[1])
}

/**
 * Runs `attempt` again while an rsync daemon turns it away at its module's "max connections":
 * nothing was transferred then, and a slot frees as soon as a connection ends (another client's,
 * or one of ours whose daemon process is still ending when the next starts). Pauses of 250 ms
 * doubling, with jitter, about 8 s in all; then the last answer is returned for the caller's own
 * handling (a run's backoff). `onBusy` hears the module's limit each time.
 */
export const retryWhileDaemonBusy = async <R>(
  attempt: () => Promise<R>,
  stderrOf: (r: R) => string | undefined,
  options: { readonly onBusy?: (limit: number) => void; readonly signal?: AbortSignal | undefined } = {},
): Promise<R> => {
  for (let n = 1; ; n++) {
    const result = await attempt()
    const stderr = stderrOf(result)
    const limit = stderr === undefined ? undefined : daemonConnectionLimit(stderr)
    if (limit === undefined || n >= BUSY_ATTEMPTS || options.signal?.aborted === true) return result
    options.onBusy?.(limit)
    await sleep(BUSY_DELAY_MS * 2 ** (n - 1) * (0.5 + Math.random()), undefined, options.signal === undefined ? {} : { signal: options.signal }).catch(() => undefined)
  }
}
