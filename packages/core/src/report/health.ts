import type { JobStatus } from '../engine/inspect.js'
import { gib, LOW_SPACE_SHARE } from '../engine/space.js'

export type Verdict = 'ok' | 'warning' | 'critical'

export interface HealthThresholds {
  /** the newest backup at a target may be this old before the job is a warning (default 26 h: a daily job with slack) */
  readonly warnAgeSeconds: number
  /** … and this old before it is critical (default 50 h: two daily runs missed) */
  readonly criticalAgeSeconds: number
}

export const DEFAULT_THRESHOLDS: HealthThresholds = { warnAgeSeconds: 26 * 3600, criticalAgeSeconds: 50 * 3600 }

export interface JobHealth {
  readonly verdict: Verdict
  /** what made it a warning or critical, one line each, in the user's terms */
  readonly reasons: readonly string[]
}

const RANK: Readonly<Record<Verdict, number>> = { ok: 0, warning: 1, critical: 2 }

const age = (seconds: number): string => (seconds >= 2 * 86400 ? `${Math.floor(seconds / 86400)} d` : seconds >= 2 * 3600 ? `${Math.floor(seconds / 3600)} h` : `${Math.floor(seconds / 60)} min`)

/**
 * A job's verdict from its {@link JobStatus}, as a monitoring check reads it: per target, no
 * backup at all (or no directory) or the newest older than `criticalAgeSeconds` is critical; older than
 * `warnAgeSeconds`, a target that cannot be reached, a newest backup with errors, a target with
 * less than {@link LOW_SPACE_SHARE} of its filesystem free, an outstanding
 * transfer while no run holds the lock, or a stale lock is a warning. The job has the worst.
 * @example
 * healthOf(await status(job).unwrapOr(...), DEFAULT_THRESHOLDS) // { verdict: 'ok', reasons: [] }
 */
export const healthOf = (s: JobStatus, thresholds: HealthThresholds = DEFAULT_THRESHOLDS): JobHealth => {
  const found: { verdict: Verdict; reason: string }[] = []
  for (const t of s.targets) {
    // a target directory that is not there (yet) holds no backup; a host that cannot be reached may be off for a while
    if (!t.reachable && (t.error?.code === 'NOT_FOUND' || t.error?.code === 'TARGET_UNAVAILABLE')) found.push({ verdict: 'critical', reason: `${t.at} has no backup: ${t.error.message}` })
    else if (!t.reachable) found.push({ verdict: 'warning', reason: `${t.at} cannot be reached${t.error === undefined ? '' : `: ${t.error.message}`}` })
    else if (t.latest === undefined) found.push({ verdict: 'critical', reason: `${t.at} has no backup` })
    else {
      if (t.latest.ageSeconds > thresholds.criticalAgeSeconds) found.push({ verdict: 'critical', reason: `${t.at}: the newest backup is ${age(t.latest.ageSeconds)} old (critical after ${age(thresholds.criticalAgeSeconds)})` })
      else if (t.latest.ageSeconds > thresholds.warnAgeSeconds) found.push({ verdict: 'warning', reason: `${t.at}: the newest backup is ${age(t.latest.ageSeconds)} old (warning after ${age(thresholds.warnAgeSeconds)})` })
      if (t.latest.health === 'errors') found.push({ verdict: 'warning', reason: `${t.at}: the newest backup has errors (some files were not copied)` })
    }
    if (t.space !== undefined && t.space.free < t.space.size * LOW_SPACE_SHARE) {
      found.push({ verdict: 'warning', reason: `${t.at}: only ${Math.floor((t.space.free / t.space.size) * 100)}% of its filesystem is free (${gib(t.space.free)} of ${gib(t.space.size)})` })
    }
  }
  const running = s.lock !== undefined && !s.lock.verdict.stale
  if (!running) for (const p of s.pending) found.push({ verdict: 'warning', reason: `the transfer of ${p.snapshot} to ${p.target} is outstanding (the next run retries it)` })
  if (s.lock?.verdict.stale === true) found.push({ verdict: 'warning', reason: `a stale lock: ${s.lock.verdict.reason}` })
  const verdict = found.reduce<Verdict>((worst, f) => (RANK[f.verdict] > RANK[worst] ? f.verdict : worst), 'ok')
  return { verdict, reasons: found.map((f) => f.reason) }
}

/** Nagios' exit codes for a verdict: 0 ok, 1 warning, 2 critical (3, unknown, is for a check that could not run) */
export const NAGIOS_EXIT: Readonly<Record<Verdict, number>> = { ok: 0, warning: 1, critical: 2 }
