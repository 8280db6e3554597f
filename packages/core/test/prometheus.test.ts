import parsePrometheus from 'parse-prometheus-text-format'
import { describe, expect, it } from 'vitest'
import { bbError, prometheusMetrics, type BackupReport, type JobRun, type TargetReport } from '../src/index.js'

const target = (name: string, ok: boolean, extra: Partial<TargetReport> = {}): TargetReport => ({
  target: name, ok, route: 'local', sent: ok ? [{ snapshot: 's2', mode: 'incremental', bytes: 2048, files: 3, durationMs: 10 } as never] : [], bytes: ok ? 2048 : 0, files: ok ? 3 : 0,
  durationMs: 10, warnings: [], recovered: [], pruned: ok ? ['s0'] : [], commands: [], ...extra,
})
const report = (targets: TargetReport[], extra: Partial<BackupReport> = {}): BackupReport => ({
  source: '/home', driver: 'rsync', dryRun: false, snapshot: 's2', startedAt: '2026-11-23T10:00:00.000Z', durationMs: 12_500,
  targets, failed: targets.filter((t) => !t.ok).length, sourcePruned: [], ...extra,
})
const at = (iso: string): Date => new Date(iso)
/** metric name -> the samples, as a Prometheus text-format parser reads the file */
const read = (text: string): Record<string, Record<string, string | number>[] | undefined> => Object.fromEntries(parsePrometheus(text).map((f) => [f.name, f.metrics.map((m) => ({ ...m.labels, value: Number(m.value) }))]))

describe('Prometheus metrics after a run', () => {
  it('has per job and per target gauges that a text-format parser reads back', () => {
    const runs: JobRun[] = [{ job: 'home', finishedAt: at('2026-11-23T10:00:12.500Z'), outcome: { report: report([target('/mnt/a', true, { kept: 7 }), target('nas:/b "x"', false)]) } }]
    const text = prometheusMetrics(runs)
    const families = parsePrometheus(text)
    expect(families.every((f) => f.type === 'GAUGE' && f.help !== '')).toBe(true)
    const m = read(text)
    expect(m.bbackup_run_success).toEqual([{ job: 'home', value: 0 }])
    expect(m.bbackup_run_failed_targets).toEqual([{ job: 'home', value: 1 }])
    expect(m.bbackup_run_duration_seconds).toEqual([{ job: 'home', value: 12.5 }])
    expect(m.bbackup_run_timestamp_seconds).toEqual([{ job: 'home', value: Date.parse('2026-11-23T10:00:12.500Z') / 1000 }])
    expect(m.bbackup_target_success).toEqual([{ job: 'home', target: '/mnt/a', value: 1 }, { job: 'home', target: 'nas:/b "x"', value: 0 }])
    expect(m.bbackup_sent_bytes).toEqual([{ job: 'home', target: '/mnt/a', value: 2048 }, { job: 'home', target: 'nas:/b "x"', value: 0 }])
    expect(m.bbackup_pruned_snapshots?.[0]).toEqual({ job: 'home', target: '/mnt/a', value: 1 })
    // kept: only where the prune stage ran
    expect(m.bbackup_kept_snapshots).toEqual([{ job: 'home', target: '/mnt/a', value: 7 }])
    // only the target that succeeded has a last success
    expect(m.bbackup_last_success_timestamp_seconds).toEqual([{ job: 'home', target: '/mnt/a', value: Date.parse('2026-11-23T10:00:12.500Z') / 1000 }])
  })

  it('keeps a target\'s last success when it fails later, and the jobs that did not run', () => {
    const first = prometheusMetrics([
      { job: 'home', finishedAt: at('2026-11-22T10:00:00Z'), outcome: { report: report([target('/mnt/a', true), target('/mnt/b', true)]) } },
      { job: 'srv', finishedAt: at('2026-11-22T11:00:00Z'), outcome: { report: report([target('/mnt/s', true)]) } },
    ])
    const second = prometheusMetrics([{ job: 'home', finishedAt: at('2026-11-23T10:00:00Z'), outcome: { report: report([target('/mnt/a', true), target('/mnt/b', false)]) } }], first)
    const m = read(second)
    expect(m.bbackup_last_success_timestamp_seconds).toEqual([
      { job: 'srv', target: '/mnt/s', value: Date.parse('2026-11-22T11:00:00Z') / 1000 },
      { job: 'home', target: '/mnt/a', value: Date.parse('2026-11-23T10:00:00Z') / 1000 },
      { job: 'home', target: '/mnt/b', value: Date.parse('2026-11-22T10:00:00Z') / 1000 },
    ])
    expect(m.bbackup_run_success).toEqual([{ job: 'srv', value: 1 }, { job: 'home', value: 0 }])

    // a job stopped before any target (its lock held): failed, and every last success kept
    const third = read(prometheusMetrics([{ job: 'home', finishedAt: at('2026-11-24T10:00:00Z'), outcome: { error: bbError('LOCK_HELD', 'held', 'wait') } }], second))
    expect(third.bbackup_run_success).toEqual([{ job: 'srv', value: 1 }, { job: 'home', value: 0 }])
    expect(third.bbackup_last_success_timestamp_seconds?.filter((s) => s.job === 'home')).toHaveLength(2)
    expect(third.bbackup_target_success?.filter((s) => s.job === 'home')).toEqual([])
  })

  it('changes nothing for a dry run', () => {
    const before = prometheusMetrics([{ job: 'home', finishedAt: at('2026-11-22T10:00:00Z'), outcome: { report: report([target('/mnt/a', true)]) } }])
    expect(prometheusMetrics([{ job: 'home', finishedAt: at('2026-11-23T10:00:00Z'), outcome: { report: report([target('/mnt/a', false)], { dryRun: true }) } }], before)).toBe(before)
  })
})
