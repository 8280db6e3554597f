import type { BbError } from '../errors.js'
import { runComplete, type BackupReport } from '../engine/backup.js'

/** One job's outcome in a run: its report, or the error that stopped it before any target. */
export interface JobRun {
  /** the job's name (the config's), or its source for a job from the command line */
  readonly job: string
  readonly finishedAt: Date
  readonly outcome: { readonly report: BackupReport } | { readonly error: BbError }
}

interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const HELP: Readonly<Record<string, string>> = {
  bbackup_run_timestamp_seconds: 'when the last run of the job ended',
  bbackup_run_duration_seconds: 'how long the last run of the job took',
  bbackup_run_success: '1 when the last run of the job backed up to every target and pruned every place it prunes, else 0',
  bbackup_run_failed_targets: 'targets that failed in the last run of the job',
  bbackup_target_success: '1 when the last run backed up to this target, else 0',
  bbackup_last_success_timestamp_seconds: 'when a run last backed up to this target',
  bbackup_sent_bytes: 'bytes sent to this target in the last run',
  bbackup_sent_files: 'files transferred to this target in the last run (rsync)',
  bbackup_sent_snapshots: 'snapshots sent to this target in the last run',
  bbackup_pruned_snapshots: 'backups deleted at this target by retention in the last run',
  bbackup_kept_snapshots: 'backups of the job at this target after retention in the last run',
  bbackup_source_pruned_snapshots: 'source snapshots deleted by retention in the last run',
}

/** Prometheus' label value escaping: backslash, double quote and line feed */
const escapeLabel = (v: string): string => v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')
const unescapeLabel = (v: string): string => v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))

const sampleLine = (s: Sample): string => {
  const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')
  return `${s.name}{${labels}} ${Number.isInteger(s.value) ? s.value : s.value.toFixed(3)}`
}

/** the samples of a metrics file bbackup wrote before; lines it does not understand are dropped */
const parseSamples = (text: string): Sample[] => text.split('\n').flatMap((line) => {
  const m = /^(bbackup_[a-z_]+)\{(.*)\} (\S+)$/.exec(line)
  if (m === null) return []
  const labels: Record<string, string> = {}
  for (const l of (m[2] ?? '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] ?? ''] = unescapeLabel(l[2] ?? '')
  const value = Number(m[3])
  return Number.isFinite(value) ? [{ name: m[1] ?? '', labels, value }] : []
})

const samplesOf = (run: JobRun, previous: readonly Sample[]): Sample[] => {
  const job = run.job
  const end = run.finishedAt.getTime() / 1000
  if ('error' in run.outcome) {
    // nothing reached a target: keep when each one last succeeded
    return [
      { name: 'bbackup_run_timestamp_seconds', labels: { job }, value: end },
      { name: 'bbackup_run_success', labels: { job }, value: 0 },
      ...previous.filter((s) => s.name === 'bbackup_last_success_timestamp_seconds' && s.labels.job === job),
    ]
  }
  const report = run.outcome.report
  const samples: Sample[] = [
    { name: 'bbackup_run_timestamp_seconds', labels: { job }, value: end },
    { name: 'bbackup_run_duration_seconds', labels: { job }, value: report.durationMs / 1000 },
    { name: 'bbackup_run_success', labels: { job }, value: runComplete(report) ? 1 : 0 },
    { name: 'bbackup_run_failed_targets', labels: { job }, value: report.failed },
    { name: 'bbackup_source_pruned_snapshots', labels: { job }, value: report.sourcePruned.length },
  ]
  for (const t of report.targets) {
    const labels = { job, target: t.target }
    samples.push(
      { name: 'bbackup_target_success', labels, value: t.ok ? 1 : 0 },
      { name: 'bbackup_sent_bytes', labels, value: t.bytes },
      { name: 'bbackup_sent_files', labels, value: t.files },
      { name: 'bbackup_sent_snapshots', labels, value: t.sent.length },
      { name: 'bbackup_pruned_snapshots', labels, value: t.pruned.length },
      ...(t.kept === undefined ? [] : [{ name: 'bbackup_kept_snapshots', labels, value: t.kept }]),
    )
    const before = previous.find((s) => s.name === 'bbackup_last_success_timestamp_seconds' && s.labels.job === job && s.labels.target === t.target)
    if (t.ok) samples.push({ name: 'bbackup_last_success_timestamp_seconds', labels, value: end })
    else if (before !== undefined) samples.push(before)
  }
  return samples
}

/**
 * The Prometheus text format (version 0.0.4) for node_exporter's textfile collector, after a run
 * of some jobs. `previous` is the file as it was: the samples of jobs that did not run now are
 * kept, and so is a target's last success when it failed this time. A dry run changes nothing.
 * @example
 * await writeFile(tmp, prometheusMetrics([{ job: 'home', finishedAt: new Date(), outcome: { report } }], old)); await rename(tmp, path)
 */
export const prometheusMetrics = (runs: readonly JobRun[], previous = ''): string => {
  const old = parseSamples(previous)
  const live = runs.filter((r) => !('report' in r.outcome) || !r.outcome.report.dryRun)
  const ran = new Set(live.map((r) => r.job))
  const samples = [...old.filter((s) => !ran.has(s.labels.job ?? '')), ...live.flatMap((r) => samplesOf(r, old))]
  const lines: string[] = []
  for (const name of Object.keys(HELP)) {
    const of = samples.filter((s) => s.name === name)
    if (of.length === 0) continue
    lines.push(`# HELP ${name} ${HELP[name] ?? ''}`, `# TYPE ${name} gauge`, ...of.map(sampleLine))
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`
}
