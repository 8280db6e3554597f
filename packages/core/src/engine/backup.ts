import { err, ok, ResultAsync, type Result } from 'neverthrow'
import type { SnapshotInfo, TransferOutcome } from '../driver/driver.js'
import { bbError, InternalError, type BbError } from '../errors.js'
import { addJournalEntry, readJournal, removeJournalEntry, type JournalEntry } from '../journal/journal.js'
import { formatLocation } from '../location/location.js'
import { uniqueSnapshotName } from '../names/snapshot-name.js'
import type { Transport } from '../transport/transport.js'
import { journalPath, ownSnapshots, type Job, type RunOptions } from './job.js'
import { pruneAt, withJobLock } from './prune.js'

/** What happened at one target. */
export interface TargetReport {
  readonly target: string
  readonly ok: boolean
  readonly snapshot?: string
  readonly mode?: 'full' | 'incremental'
  /** the backup it was incremental against */
  readonly parent?: string
  /** why the transfer was full, when the target already had backups */
  readonly fullBecause?: string
  readonly bytes: number
  readonly files: number
  readonly durationMs: number
  readonly warnings: readonly string[]
  /** what the journal said was left unfinished here, and what became of it */
  readonly recovered: readonly { readonly snapshot: string; readonly action: 'removed' | 'resume' | 'gone' }[]
  readonly pruned: readonly string[]
  readonly error?: BbError
  /** the exact commands run (or, in a dry run, that would run) */
  readonly commands: readonly (readonly string[])[]
}

export interface BackupReport {
  readonly source: string
  readonly driver: string
  readonly dryRun: boolean
  readonly snapshot: string
  readonly startedAt: string
  readonly durationMs: number
  readonly targets: readonly TargetReport[]
  /** how many targets failed; the CLI exits 10 when any did */
  readonly failed: number
  readonly sourcePruned: readonly string[]
}

export interface BackupOptions extends RunOptions {
  /** run the transfer stage (default true); false = snapshot (and prune) only */
  readonly transfer?: boolean
  /** run the prune stage (default true when the job has a retention policy) */
  readonly prune?: boolean
  /** take a new source snapshot (default true; drivers that copy the live source ignore it) */
  readonly snapshot?: boolean
}

const failedTarget = (target: string, startedMs: number, error: BbError, partial: Partial<TargetReport> = {}): TargetReport => ({
  target, ok: false, bytes: 0, files: 0, durationMs: Date.now() - startedMs, warnings: [], recovered: [], pruned: [], commands: [], ...partial, error,
})

/**
 * The main job: lock, probe, recover what the journal left, snapshot the source, send to each
 * target (journalled), prune. One failing target does not stop the others; the report says what
 * each did. An `Err` means the job as a whole could not run (lock held, source unusable).
 * @example
 * const report = await backup(job, { onEvent: console.log })
 * if (report.isOk() && report.value.failed === 0) console.log('all targets are up to date')
 */
export const backup = (job: Job, options: BackupOptions = {}): ResultAsync<BackupReport, BbError> =>
  new ResultAsync(withJobLock(job, options, () => runBackup(job, options)))

const runBackup = async (job: Job, options: BackupOptions): Promise<Result<BackupReport, BbError>> => {
  const started = Date.now()
  const now = (options.now ?? (() => new Date()))()
  const dryRun = options.dryRun ?? false
  const emit = options.onEvent ?? (() => undefined)
  const probed = await job.driver.probe({ source: job.source, targets: [], signal: options.signal })
  if (probed.isErr()) return err(probed.error)
  const journal = await readJournal(job.state.transport, journalPath(job))
  if (journal.isErr()) return err(journal.error)

  // Which targets can be reached, and what each holds.
  const states = await Promise.all(job.targets.map(async (target) => {
    const where = formatLocation(target.location)
    const reachable = await job.driver.probe({ source: job.source, targets: [target], signal: options.signal })
    if (reachable.isErr()) return { target, where, error: reachable.error }
    const listed = await job.driver.listSnapshots({ at: target, signal: options.signal })
    if (listed.isErr()) return { target, where, error: listed.error }
    return { target, where, snapshots: listed.value }
  }))

  const existing = states.flatMap((s) => ('snapshots' in s ? (s.snapshots ?? []).map((x) => x.name) : []))
  const name = uniqueSnapshotName({ prefix: job.prefix ?? '', time: now, existing })

  let sourceSnapshot: SnapshotInfo | undefined
  if (job.driver.snapshotsSource && options.snapshot !== false) {
    if (job.driver.createSnapshot === undefined) throw new InternalError(`driver ${job.driver.name} snapshots its source but has no createSnapshot`)
    const created = await job.driver.createSnapshot({ source: job.source, name, dryRun, signal: options.signal })
    if (created.isErr()) return err(created.error)
    sourceSnapshot = created.value
    emit({ type: 'snapshot-created', snapshot: name })
  }

  const reports: TargetReport[] = []
  for (const state of states) {
    const targetStarted = Date.now()
    if ('error' in state && state.error !== undefined) {
      emit({ type: 'transfer-failed', target: state.where, snapshot: name, error: state.error })
      reports.push(failedTarget(state.where, targetStarted, state.error))
      continue
    }
    if (options.transfer === false) continue
    const report = await backupToTarget(job, options, state.target, state.snapshots ?? [], journal.value.entries.filter((e) => e.target === state.where), sourceSnapshot?.name ?? name)
    reports.push(report)
    if (options.signal?.aborted === true) break
  }
  if (options.signal?.aborted === true) {
    return err(bbError('CANCELLED', 'the backup was cancelled', 'run it again: an unfinished copy is resumed or removed by the next run', { snapshot: name }))
  }

  let sourcePruned: string[] = []
  const sourcePolicy = job.retention?.source
  if (job.driver.snapshotsSource && sourcePolicy !== undefined && options.prune !== false && reports.every((r) => r.ok)) {
    const pruned = await pruneAt(job, job.source, sourcePolicy, options)
    if (pruned.isErr()) emit({ type: 'warning', message: `source snapshots were not pruned: ${pruned.error.message}` })
    else sourcePruned = [...pruned.value.deleted]
  }

  return ok({
    source: formatLocation(job.source.location),
    driver: job.driver.name,
    dryRun,
    snapshot: sourceSnapshot?.name ?? name,
    startedAt: now.toISOString(),
    durationMs: Date.now() - started,
    targets: reports,
    failed: reports.filter((r) => !r.ok).length,
    sourcePruned,
  })
}

const backupToTarget = async (
  job: Job,
  options: BackupOptions,
  target: Transport,
  snapshots: readonly SnapshotInfo[],
  pending: readonly JournalEntry[],
  name: string,
): Promise<TargetReport> => {
  const started = Date.now()
  const where = formatLocation(target.location)
  const dryRun = options.dryRun ?? false
  const emit = options.onEvent ?? (() => undefined)
  const path = journalPath(job)

  // 3. What an earlier run left unfinished here: the driver removes it or resumes it.
  const recovered: { snapshot: string; action: 'removed' | 'resume' | 'gone' }[] = []
  let resume: JournalEntry | undefined
  for (const entry of pending) {
    const r = await job.driver.recover({ target, entry, dryRun })
    if (r.isErr()) return failedTarget(where, started, r.error, { recovered })
    recovered.push({ snapshot: entry.snapshot, action: r.value })
    emit({ type: 'recovered', target: where, snapshot: entry.snapshot, action: r.value })
    if (r.value === 'resume') resume = entry
    else if (!dryRun) {
      const cleared = await removeJournalEntry(job.state.transport, path, entry)
      if (cleared.isErr()) return failedTarget(where, started, cleared.error, { recovered })
    }
  }

  // 5. The parent: the newest complete backup here that did not end with errors.
  const own = ownSnapshots(job, snapshots)
  const parent = own.filter((s) => s.health !== 'errors').at(-1)
  const fullBecause = parent === undefined ? (own.length === 0 ? undefined : 'every backup at the target ended with errors') : undefined
  const entry: JournalEntry = {
    target: where,
    snapshot: name,
    ...(parent === undefined ? {} : { parent: parent.name }),
    partialPath: job.driver.partialPath({ target, snapshot: name }),
    startedAt: new Date().toISOString(),
  }
  if (!dryRun) {
    // written down before the transfer starts; the resumed entry is replaced by this one
    const noted = await addJournalEntry(job.state.transport, path, entry)
    if (noted.isErr()) return failedTarget(where, started, noted.error, { recovered })
    if (resume !== undefined && resume.snapshot !== name) {
      const cleared = await removeJournalEntry(job.state.transport, path, resume)
      if (cleared.isErr()) return failedTarget(where, started, cleared.error, { recovered })
    }
  }
  const mode = parent === undefined ? 'full' : 'incremental'
  emit({ type: 'transfer-started', target: where, snapshot: name, mode, ...(parent === undefined ? {} : { parent: parent.name }) })
  const transferred: Result<TransferOutcome, BbError> = await job.driver.transfer({
    source: job.source, target, snapshot: name, parent, resume, dryRun, signal: options.signal, onEvent: emit,
  })
  if (transferred.isErr()) {
    emit({ type: 'transfer-failed', target: where, snapshot: name, error: transferred.error })
    return failedTarget(where, started, transferred.error, { recovered, snapshot: name, mode, ...(parent === undefined ? {} : { parent: parent.name }) })
  }
  const outcome = transferred.value
  if (!dryRun) {
    const cleared = await removeJournalEntry(job.state.transport, path, entry)
    if (cleared.isErr()) return failedTarget(where, started, cleared.error, { recovered, snapshot: name })
  }
  emit({ type: 'transfer-finished', target: where, snapshot: name, bytes: outcome.bytes, durationMs: Date.now() - started })

  // 6. Retention, only where this run added a backup: a failing target keeps its history.
  let pruned: readonly string[] = []
  const warnings = [...outcome.warnings]
  let commands = [...outcome.commands]
  const policy = job.retention?.target
  if (policy !== undefined && options.prune !== false) {
    const r = await pruneAt(job, target, policy, options)
    if (r.isErr()) warnings.push(`not pruned: ${r.error.message}`)
    else {
      pruned = r.value.deleted
      commands = [...commands, ...r.value.commands]
    }
  }
  return {
    target: where,
    ok: true,
    snapshot: outcome.snapshot,
    mode: outcome.mode,
    ...(outcome.parent === undefined ? {} : { parent: outcome.parent }),
    ...(fullBecause === undefined ? {} : { fullBecause }),
    bytes: outcome.bytes,
    files: outcome.files,
    durationMs: Date.now() - started,
    warnings,
    recovered,
    pruned,
    commands,
  }
}
