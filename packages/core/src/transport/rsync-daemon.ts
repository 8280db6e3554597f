import type { RsyncDaemonLocation } from '../location/location.js'
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

/**
 * The option an rsync daemon's module refuses (its `refuse options` in rsyncd.conf), when it turned
 * a request away for one: `--delete` from "The server is configured to refuse --delete".
 * @example
 * daemonRefusedOption('rsync: The server is configured to refuse --delete\n') // '--delete'
 */
export const daemonRefusedOption = (stderr: string): string | undefined =>
  /The server is configured to refuse (-{1,2}[\w-]+)/.exec(stderr)?.[1]

/** What bbackup needs each option a module may refuse for. */
const NEEDED_FOR: Readonly<Record<string, string>> = {
  '--delete': 'to remove old backups and to bring an unfinished copy up to date',
  '--delete-after': 'to remove old backups and their records',
  '--link-dest': 'to hard-link unchanged files to the previous backup',
}

/** A daemon as messages name it: `host[:port]`, an IPv6 address in brackets. */
export const daemonDisplay = (daemon: Pick<RsyncDaemonLocation, 'host' | 'port'>): string =>
  `${daemon.host.includes(':') ? `[${daemon.host}]` : daemon.host}${daemon.port === undefined ? '' : `:${daemon.port}`}`

/** The message and hint for a module that refuses an option bbackup uses. */
export const refusedOptionText = (option: string, daemon: RsyncDaemonLocation): { readonly message: string; readonly hint: string } => ({
  message: `module ${daemon.module} at ${daemonDisplay(daemon)} refuses rsync's ${option}${NEEDED_FOR[option] === undefined ? '' : `, which bbackup needs ${NEEDED_FOR[option]}`}`,
  hint: `take ${option.replace(/^-+/, '')} out of the module's "refuse options" in rsyncd.conf on the server (bbackup doctor rsyncd prints a module that works)`,
})
