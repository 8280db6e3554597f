import type { LockInfo, LockVerdict } from '../transport/transport.js'

/** What this host knows when it judges a lock file. */
export interface LockContext {
  readonly host: string
  readonly bootId: string
  /** the start time of `pid` on this host, or undefined when no such process runs */
  readonly startTimeOf: (pid: number) => number | undefined
}

/**
 * Decides whether a lock's holder is gone. Only what can be proven on this host counts: a lock of
 * another host is never stale (its holder may be alive there, and our clock says nothing of its
 * clock), as borg and restic decide (reference/reliability.md §1.3).
 * @example
 * judgeLock(info, { host: 'nas', bootId: 'b1', startTimeOf: () => undefined }) // { stale: true, reason: 'pid 4242 is not running' }
 */
export const judgeLock = (info: LockInfo | undefined, here: LockContext): LockVerdict => {
  if (info === undefined) return { stale: true, reason: 'the lock file is empty or unreadable (its writer died while writing it)' }
  if (info.host !== here.host) return { stale: false, reason: `held by ${info.host}, another host: bbackup cannot tell whether pid ${info.pid} still runs there` }
  if (info.bootId !== here.bootId) return { stale: true, reason: `taken before this host last booted (boot id ${info.bootId.slice(0, 8)})` }
  const startTime = here.startTimeOf(info.pid)
  if (startTime === undefined) return { stale: true, reason: `pid ${info.pid} is not running` }
  if (startTime !== info.pidStartTime) return { stale: true, reason: `pid ${info.pid} now belongs to another process (the holder died and its pid was reused)` }
  return { stale: false, reason: `held by pid ${info.pid} on ${info.host} since ${info.startedAt} (${info.command})` }
}

/** Reads a lock file's JSON; undefined for anything that is not a complete lock record. */
export const parseLockInfo = (text: string): LockInfo | undefined => {
  try {
    const v = JSON.parse(text) as Partial<LockInfo>
    if (typeof v.pid !== 'number' || typeof v.host !== 'string' || typeof v.bootId !== 'string' || typeof v.pidStartTime !== 'number') return undefined
    return { pid: v.pid, host: v.host, bootId: v.bootId, pidStartTime: v.pidStartTime, startedAt: String(v.startedAt ?? ''), command: String(v.command ?? '') }
  } catch {
    return undefined
  }
}
