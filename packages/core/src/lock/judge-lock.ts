import type { LockInfo, LockVerdict } from '../transport/transport.js'

/** What this host knows when it judges a lock file. */
export interface LockContext {
  readonly host: string
  readonly bootId: string
  /** the start time of `pid` on this host, or undefined when no such process runs */
  readonly startTimeOf: (pid: number) => number | undefined
  /**
   * the processes of this host that still have the lock file open: what a dead holder started
   * (every command of a run inherits its lock), which may still write to its target
   */
  readonly heldOpenBy?: () => readonly LockSurvivor[]
}

/** A process that outlived the run that started it, and still has that run's lock file open. */
export interface LockSurvivor {
  readonly pid: number
  /** its command name (/proc/<pid>/comm) */
  readonly command: string
}

/** a dead holder's verdict, unless what it started still runs: that holds the lock until it ends */
const unlessSurvived = (reason: string, here: LockContext): LockVerdict => {
  const left = here.heldOpenBy?.() ?? []
  if (left.length === 0) return { stale: true, reason }
  const named = left.map((p) => `${p.command} (pid ${p.pid})`).join(', ')
  return { stale: false, reason: `${reason}, but what it started still runs and may still write: ${named}; let it end, or stop it: kill ${left.map((p) => p.pid).join(' ')}` }
}

/**
 * Decides whether a lock's holder is gone. Only what can be proven on this host counts: a lock of
 * another host is never stale (its holder may be alive there, and our clock says nothing of its
 * clock), as borg and restic decide (reference/reliability.md §1.3). A dead holder's lock still
 * holds while a command it started runs on (an rsync orphaned by `kill -9`): taking it over would
 * let two copies write into one partial backup.
 * @example
 * judgeLock(info, { host: 'nas', bootId: 'b1', startTimeOf: () => undefined }) // { stale: true, reason: 'pid 4242 is not running' }
 */
export const judgeLock = (info: LockInfo | undefined, here: LockContext): LockVerdict => {
  if (info === undefined) return { stale: true, reason: 'the lock file is empty or unreadable (its writer died while writing it)' }
  if (info.host !== here.host) return { stale: false, reason: `held by ${info.host}, another host: bbackup cannot tell whether pid ${info.pid} still runs there` }
  if (info.bootId !== here.bootId) return { stale: true, reason: `taken before this host last booted (boot id ${info.bootId.slice(0, 8)})` }
  const startTime = here.startTimeOf(info.pid)
  if (startTime === undefined) return unlessSurvived(`pid ${info.pid} is not running`, here)
  if (startTime !== info.pidStartTime) return unlessSurvived(`pid ${info.pid} now belongs to another process (the holder died and its pid was reused)`, here)
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
