import { resolve as resolvePath } from 'node:path'
import { DEFAULT_THRESHOLDS, formatLocation, healthOf, NAGIOS_EXIT, status, volumeHealthOf, type BbError, type HealthThresholds, type Job, type JobHealth, type Verdict } from '@bb/core'
import { localTransport } from '@bb/transports/local'
import type { BlockJobSpec, JobSpec } from './config.js'
import { parseDuration } from './duration.js'
import type { Io } from './render.js'

/** Nagios' "unknown": the check itself could not run */
const UNKNOWN = 3

type Resolved = { readonly jobs: readonly Job[]; readonly specOf: ReadonlyMap<Job, JobSpec>; readonly blockJobs: readonly BlockJobSpec[] } | { readonly error: BbError }

const worst = (verdicts: readonly Verdict[]): Verdict => (verdicts.includes('critical') ? 'critical' : verdicts.includes('warning') ? 'warning' : 'ok')

/**
 * `bbackup status --check`: one Nagios-style summary line, then a line per job (block volumes of
 * the config included) with its verdict and reasons; the exit code is the worst verdict (0 ok, 1 warning, 2 critical), or 3 when the
 * check could not be made (no config, a bad threshold).
 */
export const checkHealth = async (io: Io, resolved: Resolved, options: { readonly warnAge?: string; readonly criticalAge?: string; readonly json?: boolean; readonly only?: 'target' }): Promise<number> => {
  const unknown = (message: string): number => {
    io.stdout(`BBACKUP UNKNOWN - ${message}\n`)
    return UNKNOWN
  }
  if ('error' in resolved) {
    // a directory of backups checked on its own that is not there: no backup to restore from
    if (options.only === 'target' && resolved.error.code === 'NOT_FOUND') {
      io.stdout(`BBACKUP CRITICAL - ${resolved.error.message} (${resolved.error.hint})\n`)
      return NAGIOS_EXIT.critical
    }
    // … on a host that cannot be reached now: a warning, as for a job's target on such a host
    if (options.only === 'target' && resolved.error.code === 'NETWORK_FAILED') {
      io.stdout(`BBACKUP WARNING - ${resolved.error.message} (${resolved.error.hint})\n`)
      return NAGIOS_EXIT.warning
    }
    return unknown(`${resolved.error.message} (${resolved.error.hint})`)
  }
  /** the thresholds of a job: the command line's, else its config's, else the defaults */
  const thresholdsOf = (spec: { readonly warnAge?: string; readonly criticalAge?: string } | undefined): HealthThresholds | string => {
    const warnText = options.warnAge ?? spec?.warnAge
    const criticalText = options.criticalAge ?? spec?.criticalAge
    const warn = warnText === undefined ? DEFAULT_THRESHOLDS.warnAgeSeconds : parseDuration(warnText)
    const critical = criticalText === undefined ? DEFAULT_THRESHOLDS.criticalAgeSeconds : parseDuration(criticalText)
    if (warn === undefined || critical === undefined) return `${JSON.stringify(warn === undefined ? warnText : criticalText)} is not an age: write "90m", "26h", "2d" or "1w"`
    return { warnAgeSeconds: warn, criticalAgeSeconds: Math.max(critical, warn) }
  }
  const results: { job: string; health: JobHealth }[] = []
  for (const job of resolved.jobs) {
    const spec = resolved.specOf.get(job)
    const thresholds = thresholdsOf(spec)
    if (typeof thresholds === 'string') return unknown(thresholds)
    const s = await status(job, options.only === undefined ? {} : { only: options.only })
    const name = spec?.name ?? formatLocation(job.source.location)
    if (s.isErr()) return unknown(`${name}: ${s.error.message}`)
    results.push({ job: name, health: healthOf(s.value, thresholds) })
  }
  // the config's block volumes: the age of the newest revision, and damage a verify found
  if (resolved.blockJobs.length > 0) {
    const { volumeStatus } = await import('@bb/drivers/block')
    for (const volume of resolved.blockJobs) {
      const thresholds = thresholdsOf(volume)
      if (typeof thresholds === 'string') return unknown(thresholds)
      const dir = resolvePath(io.cwd, volume.backupDir)
      const s = await volumeStatus({ at: localTransport(dir) })
      if (s.isErr()) {
        // a volume that cannot be read has no revision to restore from
        results.push({ job: volume.name, health: { verdict: 'critical', reasons: [`${dir}: ${s.error.message}`] } })
        continue
      }
      const newest = s.value.summary.newest
      results.push({
        job: volume.name,
        health: volumeHealthOf({ at: dir, newestAgeSeconds: newest === undefined ? undefined : Math.round((Date.now() - Date.parse(newest)) / 1000), distrusted: s.value.summary.distrusted, withoutImage: s.value.withoutImage.length, ahead: s.value.summary.ahead }, thresholds),
      })
    }
  }
  const verdict = worst(results.map((r) => r.health.verdict))
  if (options.json === true) {
    io.stdout(`${JSON.stringify({ verdict, jobs: results.map((r) => ({ job: r.job, verdict: r.health.verdict, reasons: r.health.reasons })) }, null, 2)}\n`)
    return NAGIOS_EXIT[verdict]
  }
  const bad = results.filter((r) => r.health.verdict !== 'ok')
  const summary = bad.length === 0
    ? `${results.length} job${results.length === 1 ? '' : 's'} backed up in time`
    : bad.map((r) => `${r.job}: ${r.health.reasons[0] ?? r.health.verdict}`).join('; ')
  io.stdout([
    `BBACKUP ${verdict.toUpperCase()} - ${summary}`,
    ...results.map((r) => `${r.job}: ${r.health.verdict}${r.health.reasons.map((x) => `\n  ${x}`).join('')}`),
    '',
  ].join('\n'))
  return NAGIOS_EXIT[verdict]
}
