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

type Finding = { verdict: Verdict; reason: string }

/**
 * {@link ageFindings} of a newest backup (or snapshot); one of a source that a run found unchanged
 * since it (snapshot_create onchange) is aged from that run, and the finding says so
 */
const newestFindings = (at: string, noun: string, newest: { readonly ageSeconds: number; readonly current?: { readonly ageSeconds: number } }, thresholds: HealthThresholds): Finding[] =>
  newest.current !== undefined && newest.current.ageSeconds < newest.ageSeconds
    ? ageFindings(at, `${noun}, counted from the last run that found the source unchanged since it,`, newest.current.ageSeconds, thresholds)
    : ageFindings(at, noun, newest.ageSeconds, thresholds)

/** the newest backup's age against the thresholds: a critical or warning finding, or none */
const ageFindings = (at: string, noun: string, ageSeconds: number, thresholds: HealthThresholds): Finding[] =>
  ageSeconds > thresholds.criticalAgeSeconds ? [{ verdict: 'critical', reason: `${at}: the newest ${noun} is ${age(ageSeconds)} old (critical after ${age(thresholds.criticalAgeSeconds)})` }]
    : ageSeconds > thresholds.warnAgeSeconds ? [{ verdict: 'warning', reason: `${at}: the newest ${noun} is ${age(ageSeconds)} old (warning after ${age(thresholds.warnAgeSeconds)})` }]
      : []

/** snapshots dated ahead of the clock: a clock that was wrong named them, and the age of the newest would say nothing */
const aheadFinding = (at: string, noun: string, ahead: readonly string[], aged: boolean): Finding => ({
  verdict: 'warning',
  reason: `${at}: ${ahead.length === 1 ? `a ${noun} is` : `${ahead.length} ${noun}s are`} dated ahead of this host's clock (${ahead.at(-1) ?? ''}): the clock was ahead when ${ahead.length === 1 ? 'it was' : 'they were'} made, or is behind now (check it: timedatectl)${aged ? `; the age checked is that of the newest ${noun} made before now` : ''}`,
})

const verdictOf = (found: readonly Finding[]): JobHealth => ({
  verdict: found.reduce<Verdict>((worst, f) => (RANK[f.verdict] > RANK[worst] ? f.verdict : worst), 'ok'),
  reasons: found.map((f) => f.reason),
})

/**
 * A job's verdict from its {@link JobStatus}, as a monitoring check reads it: per target, no
 * backup at all (or no directory) or the newest older than `criticalAgeSeconds` is critical; older than
 * `warnAgeSeconds`, a target that cannot be reached, a newest backup with errors, a backup that
 * cannot be restored (a broken chain of raw streams), a source that cannot be read, a target with
 * less than {@link LOW_SPACE_SHARE} of its filesystem free, backups dated ahead of the clock, an outstanding
 * transfer while no run holds the lock, or a stale lock is a warning. A job without targets (btrfs
 * source snapshots alone) is judged by its newest snapshot the same way. The job has the worst.
 * @example
 * healthOf(await status(job).unwrapOr(...), DEFAULT_THRESHOLDS) // { verdict: 'ok', reasons: [] }
 */
export const healthOf = (s: JobStatus, thresholds: HealthThresholds = DEFAULT_THRESHOLDS): JobHealth => {
  const found: Finding[] = []
  // a job of source snapshots alone (no target): their age is its health
  if (s.targets.length === 0 && s.snapshots !== undefined) {
    if (s.snapshots.latest === undefined) found.push({ verdict: 'critical', reason: `${s.source} has no snapshot` })
    else found.push(...newestFindings(s.source, 'snapshot', s.snapshots.latest, thresholds))
  }
  if (s.snapshots?.ahead !== undefined && s.snapshots.ahead.length > 0) found.push(aheadFinding(s.source, 'snapshot', s.snapshots.ahead, s.targets.length === 0))
  for (const target of s.targets) {
    // a target shared by several sources, checked on its own: each source's backups by name
    const t = target.prefix === undefined ? target : { ...target, at: `${target.at} (${target.prefix}*)` }
    // a target directory that is not there (yet) holds no backup; a host that cannot be reached may be off for a while
    if (!t.reachable && (t.error?.code === 'NOT_FOUND' || t.error?.code === 'TARGET_UNAVAILABLE')) found.push({ verdict: 'critical', reason: `${t.at} has no backup: ${t.error.message}` })
    else if (!t.reachable) found.push({ verdict: 'warning', reason: `${t.at} cannot be reached${t.error === undefined ? '' : `: ${t.error.message}`}` })
    // another source's directory (TARGET_IN_USE): none of this job's backups is there
    else if (t.error !== undefined) found.push({ verdict: 'critical', reason: `${t.at} has no backup of this source: ${t.error.message}` })
    else if (t.latest === undefined) found.push({ verdict: 'critical', reason: `${t.at} has no backup` })
    else {
      // a newest backup dated ahead of the clock has no age to judge: the warning below says why
      if (t.latest.ageSeconds >= 0) found.push(...newestFindings(t.at, 'backup', t.latest, thresholds))
      if (t.ahead !== undefined && t.ahead.length > 0) found.push(aheadFinding(t.at, 'backup', t.ahead, true))
      if (t.latest.health === 'errors') found.push({ verdict: 'warning', reason: `${t.at}: the newest backup has errors (some files were not copied)` })
      const broken = t.broken ?? []
      const newestBroken = broken.find((b) => b.name === t.latest?.name)
      if (newestBroken !== undefined) found.push({ verdict: 'warning', reason: `${t.at}: the newest backup, ${newestBroken.name}, cannot be restored: ${newestBroken.why}` })
      else if (broken.length > 0) found.push({ verdict: 'warning', reason: `${t.at}: ${broken.length === 1 ? 'a backup cannot' : `${broken.length} backups cannot`} be restored (${broken.map((b) => b.name).join(', ')}): ${broken[0]?.why ?? ''}` })
    }
    if (t.space !== undefined && t.space.free < t.space.size * LOW_SPACE_SHARE) {
      found.push({ verdict: 'warning', reason: `${t.at}: only ${Math.floor((t.space.free / t.space.size) * 100)}% of its filesystem is free (${gib(t.space.free)} of ${gib(t.space.size)})` })
    }
  }
  if (s.sourceError !== undefined) found.push({ verdict: 'warning', reason: `the source cannot be read: ${s.sourceError.message} (the next run fails on it)` })
  const running = s.lock !== undefined && !s.lock.verdict.stale
  if (!running) for (const p of s.pending) found.push({ verdict: 'warning', reason: `the transfer of ${p.snapshot} to ${p.target} is outstanding (the next run retries it)` })
  if (s.lock?.verdict.stale === true) found.push({ verdict: 'warning', reason: `a stale lock: ${s.lock.verdict.reason}` })
  return verdictOf(found)
}

/**
 * The verdict of a block volume (docs/drivers/block.md) by the same rules: no revision, or the
 * newest older than `criticalAgeSeconds`, is critical; older than `warnAgeSeconds`, revisions dated ahead of the clock, a revision
 * distrusted (a verify found damage, or by hand), or one whose image is gone, is a warning.
 * @example
 * volumeHealthOf({ at: '/srv/backy/vm1', newestAgeSeconds: 3600, distrusted: 0 }) // { verdict: 'ok', reasons: [] }
 */
export const volumeHealthOf = (v: { readonly at: string; readonly newestAgeSeconds: number | undefined; readonly distrusted: number; readonly withoutImage?: number; readonly ahead?: readonly string[] }, thresholds: HealthThresholds = DEFAULT_THRESHOLDS): JobHealth =>
  verdictOf([
    ...(v.newestAgeSeconds === undefined ? [{ verdict: 'critical' as const, reason: `${v.at} has no revision` }] : v.newestAgeSeconds < 0 ? [] : ageFindings(v.at, 'revision', v.newestAgeSeconds, thresholds)),
    ...(v.ahead === undefined || v.ahead.length === 0 ? [] : [aheadFinding(v.at, 'revision', v.ahead, true)]),
    ...(v.distrusted === 0 ? [] : [{ verdict: 'warning' as const, reason: `${v.at}: ${v.distrusted} revision${v.distrusted === 1 ? ' is' : 's are'} distrusted (damage a verify found, or marked by hand; the next backup is built from the newest good revision)` }]),
    ...((v.withoutImage ?? 0) === 0 ? [] : [{ verdict: 'warning' as const, reason: `${v.at}: ${v.withoutImage} revision${v.withoutImage === 1 ? ' has lost its image' : 's have lost their images'} (bbackup status -b names them; restore cannot use them)` }]),
  ])

/** Nagios' exit codes for a verdict: 0 ok, 1 warning, 2 critical (3, unknown, is for a check that could not run) */
export const NAGIOS_EXIT: Readonly<Record<Verdict, number>> = { ok: 0, warning: 1, critical: 2 }
