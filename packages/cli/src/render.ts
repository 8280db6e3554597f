import { basename } from 'node:path'
import type { Writable } from 'node:stream'
import { familyName, parseSnapshotName, runComplete, type ArchiveFamily, type ArchiveReport, type BackupEvent, type BackupReport, type BbError, type CleanResult, type HookRun, type JobStatus, type PruneResult, type SnapshotDiff, type SnapshotList, type TransferProgress } from '@bb/core'
import type { JobTimer } from './schedule-command.js'

export interface Io {
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
  /** stderr is a terminal: progress is drawn in place */
  readonly isTTY: boolean
  readonly cwd: string
  /** the argv that runs this bbackup (node and its bin), for units that run it later; default: this process's */
  readonly self?: readonly string[]
  /** stdout for bytes (`restore -b DIR REV -`), with whether it is a terminal; absent where the caller has none */
  readonly binaryStdout?: Writable & { readonly isTTY?: boolean }
}

/** `1 backup`, `2 backups` */
export const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`

export const formatBytes = (n: number): string => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}

export const formatAge = (seconds: number): string => {
  if (seconds < 90) return `${seconds} s`
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`
  if (seconds < 129_600) return `${Math.round(seconds / 3600)} h`
  return `${Math.round(seconds / 86400)} d`
}

/** how long ago a snapshot's name is dated, or how far ahead of the clock (a clock that was wrong named it) */
const agoOrAhead = (seconds: number): string => (seconds < 0 ? `dated ${formatAge(-seconds)} ahead of this host's clock` : `${formatAge(seconds)} ago`)

/** a newest snapshot (or its copy) that a run found the source unchanged since (snapshot_create onchange) */
const unchangedNote = (current: { readonly ageSeconds: number } | undefined): string =>
  (current === undefined ? '' : `; the source unchanged since, as of ${agoOrAhead(current.ageSeconds)}`)

/** the status line for snapshots dated ahead of the clock (a target's or the source's `ahead` in `status`) */
const aheadLine = (ahead: readonly string[] | undefined, noun: string): string[] =>
  ahead === undefined || ahead.length === 0 ? [] : [`    dated ahead of this host's clock: ${count(ahead.length, noun)} (${brief(ahead)}): the clock was ahead when ${ahead.length === 1 ? 'it was' : 'they were'} made, or is behind now (check it: timedatectl); kept, and never taken for the newest`]

/** what an error's details add under its hint: the end of the command's stderr, and (verbose) the command */
const detailLines = (error: BbError, verbose: boolean, indent: string): string[] => {
  const lines: string[] = []
  const stderr = error.details?.stderr
  if (typeof stderr === 'string' && stderr !== '') lines.push(`${indent}stderr (end): ${stderr.split('\n').slice(-8).join(`\n${indent}              `)}`)
  const argv = error.details?.argv
  if (verbose && Array.isArray(argv)) lines.push(`${indent}command: ${shellLine(argv as readonly string[])}`)
  return lines
}

export const renderError = (error: BbError, verbose: boolean): string => {
  const lines = [`bbackup: error: ${error.message}`, `  hint: ${error.hint}`, ...detailLines(error, verbose, '  ')]
  lines.push(`  (${error.code})`)
  return `${lines.join('\n')}\n`
}

/** `--log-json`: each event as one line of JSON on stderr, with the time it happened. */
export const jsonEventLogger = (io: Io, now: () => Date = () => new Date()): ((event: BackupEvent) => void) =>
  (event) => io.stderr(`${JSON.stringify({ time: now().toISOString(), ...event })}\n`)

/** `0:03:07`: hours, minutes and seconds, as rsync shows the time left */
export const formatClock = (seconds: number): string => {
  const s = Math.max(0, Math.round(seconds))
  return `${Math.floor(s / 3600)}:${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`
}

/**
 * A transfer's progress in one line: the percentage and the time left only where the driver could
 * tell them (rsync's own text, or an estimate), never a made-up 0% or `ETA ?`. The size is shown
 * as an estimate (`~`) unless it is `exact` (a block volume's).
 * @example
 * progressLine({ bytes: 1048576, percent: 40, expectedBytes: 2621440, bytesPerSecond: 524288, etaSeconds: 3 })
 * // '40%  1.0 MiB of ~2.5 MiB  512.0 KiB/s  ETA 0:00:03'
 */
export const progressLine = (event: TransferProgress, size: 'estimated' | 'exact' = 'estimated'): string => {
  const rate = event.rate ?? (event.bytesPerSecond === undefined ? undefined : `${formatBytes(Math.round(event.bytesPerSecond))}/s`)
  const eta = event.eta ?? (event.etaSeconds === undefined ? undefined : formatClock(event.etaSeconds))
  const bytes = event.expectedBytes === undefined ? formatBytes(event.bytes) : `${formatBytes(event.bytes)} of ${size === 'exact' ? '' : '~'}${formatBytes(event.expectedBytes)}`
  return [event.percent === undefined ? undefined : `${event.percent}%`, bytes, rate, eta === undefined || eta === '' ? undefined : `ETA ${eta}`]
    .filter((p) => p !== undefined && p !== '').join('  ')
}

/** Event lines for a terminal (progress redrawn in place) or a log (one line per step). */
export const eventRenderer = (io: Io, verbosity: number): ((event: BackupEvent) => void) => {
  let progressShown = false
  const line = (text: string): void => {
    if (progressShown) io.stderr('\r\x1b[K')
    progressShown = false
    io.stderr(`${text}\n`)
  }
  return (event) => {
    // -q: the warnings alone (a stale lock taken over is one)
    if (verbosity < 0 && event.type !== 'warning' && event.type !== 'lock-taken-over') return
    switch (event.type) {
      case 'transfer-progress':
        if (!io.isTTY) return
        io.stderr(`\r\x1b[K  ${progressLine(event)}`)
        progressShown = true
        return
      case 'transfer-started':
        line(`→ ${event.target}: ${event.snapshot} (${event.mode}${event.parent === undefined ? '' : ` from ${event.parent}`})`)
        return
      case 'transfer-finished':
        line(`✓ ${event.target}: ${event.snapshot}, ${formatBytes(event.bytes)} in ${(event.durationMs / 1000).toFixed(1)} s`)
        return
      case 'transfer-failed':
        line(`✗ ${event.target}: ${event.error.message}`)
        return
      case 'retrying':
        line(`  ${event.target}: trying again in ${Math.ceil(event.delayMs / 1000)} s (retry ${event.attempt} of ${event.of})`)
        return
      case 'pruned':
        if (verbosity > 0) line(`  pruned ${event.path}: ${event.reasons.join('; ')}`)
        return
      case 'recovered':
        line(`  ${event.target}: ${event.action === 'resume' ? 'continuing' : event.action === 'removed' ? 'removed' : 'forgot'} the unfinished ${event.snapshot}`)
        return
      case 'lock-taken-over':
        line(`warning: took over a stale lock ${event.path}: ${event.reason}`)
        return
      case 'snapshot-created':
        line(`  snapshot ${event.snapshot}${event.of === undefined ? '' : ` (of ${event.of})`}`)
        return
      case 'no-new-snapshot':
        line(`  no new snapshot: ${event.reason}`)
        return
      case 'warning':
        line(`warning: ${event.message}`)
        return
    }
  }
}

const failedLines = (t: BackupReport['targets'][number], verbosity: number): string[] =>
  [`  ${t.target}: FAILED: ${t.error?.message ?? 'unknown error'}`, `    hint: ${t.error?.hint ?? ''}`, ...(t.error === undefined ? [] : detailLines(t.error, verbosity > 0, '    '))]

/** A prune stage that failed after its backup went over: the backup is there, the old ones are too. */
const notPrunedLines = (what: string, error: BbError, verbosity: number, indent: string): string[] =>
  [`${indent}${what}NOT PRUNED: ${error.message}`, `${indent}  hint: ${error.hint}`, ...detailLines(error, verbosity > 0, `${indent}  `)]

/** The failed targets and prune stages of a run alone, with their hints (what `-q` still prints, on stderr); empty when none failed. */
/**
 * The job's hooks of a run: a failure always (its message and hint), the others with -v (and what
 * they printed), and in a dry run the ones that would run.
 */
export const hookLines = (hooks: readonly HookRun[] | undefined, verbosity: number, indent = '  '): string[] =>
  (hooks ?? []).flatMap((h) => {
    if (h.skipped !== undefined) return [`${indent}would run the ${h.point} hook`]
    if (h.error !== undefined) {
      const printed = verbosity > 0 && typeof h.error.details?.stderr === 'string' ? h.error.details.stderr.split('\n').map((l) => `${indent}  | ${l}`) : []
      return [`${indent}hook failed: ${h.error.message}`, ...printed, `${indent}  hint: ${h.error.hint}`]
    }
    if (verbosity <= 0) return []
    return [`${indent}${h.point} hook ran, ${(h.durationMs / 1000).toFixed(1)} s`, ...(h.output ?? '').split('\n').filter((l) => l !== '').map((l) => `${indent}  | ${l}`)]
  })

/**
 * What `-q` still prints of a run, on stderr: the targets that failed, what was not pruned, the
 * hooks that failed, and every warning (a cron job's mail is where they are read); empty when the
 * run had none of these.
 */
export const renderProblems = (report: BackupReport): string => {
  const failed = report.targets.filter((t) => !t.ok)
  const others = report.sourceOthers ?? []
  const lines = [
    ...(failed.length === 0 ? [] : [`${report.source}: ${failed.length} of ${report.targets.length} target${report.targets.length === 1 ? '' : 's'} failed`, ...failed.flatMap((t) => failedLines(t, 0))]),
    ...report.targets.flatMap((t) => (t.ok ? t.warnings.map((w) => `${t.target}: warning: ${w}`) : [])),
    ...(others.length === 0 ? [] : [`${report.source}: warning: ${others.length} source ${others.length === 1 ? 'snapshot' : 'snapshots'} named as the job's (${brief(others)}) taken of another subvolume (${OTHER_SUBVOLUME}): neither sent nor pruned by this job (give each source its own prefix: -p)`]),
    ...report.targets.flatMap((t) => (t.pruneError === undefined ? [] : notPrunedLines(`${t.target}: `, t.pruneError, 0, ''))),
    ...(report.sourcePruneError === undefined ? [] : notPrunedLines(`${report.source} (source snapshots): `, report.sourcePruneError, 0, '')),
    ...(report.sourceWarnings ?? []).map((w) => `${report.source} (source snapshots): warning: ${w}`),
    ...((report.hooks ?? []).every((h) => h.ok) ? [] : [`${report.source}:`, ...hookLines((report.hooks ?? []).filter((h) => !h.ok), 0)]),
  ]
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`
}

/** how one send went: incremental from its parent, or full (and why, when the target held backups) */
const sendMode = (t: BackupReport['targets'][number], mode: string | undefined, parent: string | undefined): string =>
  mode === 'incremental' ? `incremental from ${parent ?? '?'}` : `full${t.fullBecause === undefined ? '' : ` (${t.fullBecause})`}`

/** One family of an archive: what was sent to its directory at the target, or why nothing was. */
const archiveFamilyLines = (f: ArchiveFamily, verbosity: number): string[] => {
  const name = familyName(f.directory, f.prefix)
  if (f.skipped !== undefined) return [`  ${name}: not tried: ${f.skipped}`]
  if (f.error !== undefined) return [`  ${name}: FAILED: ${f.error.message}`, `    hint: ${f.error.hint}`, ...detailLines(f.error, verbosity > 0, '    ')]
  const t = f.report?.targets[0]
  if (t === undefined) return [`  ${name}: nothing done`]
  if (!t.ok) return failedLines(t, verbosity).map((l, i) => (i === 0 ? `  ${name}: ${l.trim()}` : l))
  const out = t.sent.length === 0
    ? [`  ${name}: nothing sent to ${t.target}`]
    : [`  ${name}: ${t.sent.length} ${t.sent.length === 1 ? 'backup' : 'backups'} ${f.report?.dryRun === true ? 'to send' : 'sent'} to ${t.target}${f.report?.dryRun === true ? '' : `, ${formatBytes(t.bytes)}`}`,
        ...t.sent.map((x) => `    ${x.snapshot} ${sendMode(t, x.mode, x.parent)}${f.report?.dryRun === true ? '' : `; ${formatBytes(x.bytes)}`}`)]
  if (t.attempts !== undefined) out.push(`    took ${t.attempts} tries (network failures)`)
  for (const w of t.warnings) out.push(`    warning: ${w}`)
  if (t.pruned.length > 0) out.push(`    pruned: ${t.pruned.join(', ')}`)
  if (t.pruneError !== undefined) out.push(...notPrunedLines('', t.pruneError, verbosity, '    '))
  if (f.report?.dryRun === true || verbosity > 0) for (const c of t.commands) out.push(`    $ ${shellLine(c)}`)
  return out
}

/** What `bbackup archive` did: each family of backups, then what was found and left alone. */
export const renderArchive = (report: ArchiveReport, verbosity: number): string => {
  const sent = report.families.reduce((n, f) => n + (f.report?.targets[0]?.sent.length ?? 0), 0)
  const out = [
    `${report.dryRun ? 'dry run: ' : ''}${report.source} → ${report.target}: ${report.families.length} ${report.families.length === 1 ? 'family' : 'families'} of backups, ${sent} ${report.dryRun ? 'to send' : 'sent'}${report.failed === 0 ? '' : `, ${report.failed} failed`}, ${(report.durationMs / 1000).toFixed(1)} s`,
    ...(report.families.length === 0 ? ['  no read-only subvolume named as a backup was found there'] : []),
    ...report.families.flatMap((f) => archiveFamilyLines(f, verbosity)),
    ...report.notes.map((n) => `  note: ${n}`),
  ]
  return `${out.join('\n')}\n`
}

/** The families of an archive that failed, and the warnings of the others (what `-q` still prints, on stderr); empty when there are none. */
export const renderArchiveProblems = (report: ArchiveReport): string => {
  const failed = report.families.filter((f) => f.report === undefined || !runComplete(f.report))
  const warned = report.families.filter((f) => !failed.includes(f)).flatMap((f) => (f.report?.targets ?? []).flatMap((t) => t.warnings.map((w) => `${familyName(f.directory, f.prefix)}: warning: ${w}`)))
  const lines = [...(failed.length === 0 ? [] : [`${report.source} → ${report.target}: ${failed.length} of ${report.families.length} failed`, ...failed.flatMap((f) => archiveFamilyLines(f, 0))]), ...warned]
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`
}

export const renderReport = (report: BackupReport, verbosity: number, stages: { readonly snapshot?: boolean } = {}): string => {
  const out = [report.targets.length === 0 && stages.snapshot !== false
    // the snapshot stage alone (bbackup snapshot, run --no-transfer)
    ? `${report.dryRun ? 'dry run: ' : ''}${report.source}: ${report.noSnapshot !== undefined ? `no new snapshot: ${report.noSnapshot}` : `${report.dryRun ? 'would take' : 'took'} snapshot ${report.snapshot}`}, ${(report.durationMs / 1000).toFixed(1)} s`
    : `${report.dryRun ? 'dry run: ' : ''}${report.source} → ${report.targets.length} target${report.targets.length === 1 ? '' : 's'}, ${(report.durationMs / 1000).toFixed(1)} s`]
  for (const t of report.targets) {
    if (!t.ok) {
      out.push(...failedLines(t, verbosity))
      continue
    }
    const files = report.driver === 'rsync' ? `${t.files} ${t.files === 1 ? 'file' : 'files'}, ` : ''
    if (t.sent.length === 0 && report.driver !== 'rsync') out.push(`  ${t.target}: nothing sent`)
    else if (t.sent.length <= 1) out.push(`  ${t.target}: ${t.snapshot ?? ''} ${sendMode(t, t.mode, t.parent)}; ${files}${formatBytes(t.bytes)} ${report.driver === 'rsync' ? 'copied' : 'sent'}`)
    else {
      out.push(`  ${t.target}: ${t.sent.length} snapshots sent, ${formatBytes(t.bytes)}`)
      for (const x of t.sent) out.push(`    ${x.snapshot} ${sendMode(t, x.mode, x.parent)}; ${formatBytes(x.bytes)}`)
    }
    if (t.origin !== undefined) out.push(`    incremental against ${t.origin}: the read-only subvolume the source was made from (a restored backup), outside the snapshot folder`)
    if (t.attempts !== undefined) out.push(`    took ${t.attempts} tries (network failures)`)
    if (t.route === 'relay') out.push('    relayed: streamed from the source host through this one')
    for (const w of t.warnings) out.push(`    warning: ${w}`)
    if (t.pruned.length > 0) out.push(`    pruned: ${t.pruned.join(', ')}`)
    if (t.pruneError !== undefined) out.push(...notPrunedLines('', t.pruneError, verbosity, '    '))
    if (report.dryRun || verbosity > 0) for (const c of t.commands) out.push(`    $ ${shellLine(c)}`)
  }
  if (report.sourcePruned.length > 0) out.push(`  source snapshots pruned: ${report.sourcePruned.join(', ')}`)
  for (const w of report.sourceWarnings ?? []) out.push(`  source snapshots: warning: ${w}`)
  const others = report.sourceOthers ?? []
  if (others.length > 0) out.push(`  source snapshots not this job's: ${others.length} named as its own (${brief(others)}) but taken of another subvolume (${OTHER_SUBVOLUME}): neither sent nor pruned by this job (give each source its own prefix: -p, or its own --snapshot-folder; delete by hand what is no one's)`)
  if (report.sourcePruneError !== undefined) out.push(...notPrunedLines('source snapshots: ', report.sourcePruneError, verbosity, '  '))
  out.push(...hookLines(report.hooks, verbosity))
  return `${out.join('\n')}\n`
}

/** why a snapshot in the source's folder, named as the job's, is another subvolume's */
const OTHER_SUBVOLUME = 'another source\'s that shares the snapshot folder and prefix, or the subvolume this source replaced?'

/** a few names in full, more as the first … the last */
const brief = (names: readonly string[]): string => (names.length <= 3 ? names.join(', ') : `${names[0] ?? ''} … ${names.at(-1) ?? ''}`)

/** `list` of a job: what it left out, other sources' snapshots sharing the place, and how to see them */
const otherSourcesLine = (l: SnapshotList): string[] => {
  const others = l.otherSources ?? []
  if (others.length === 0) return []
  const prefixes = [...new Set(others.map((n) => parseSnapshotName(n)?.prefix ?? ''))].sort().map((p) => (p === '' ? 'no prefix' : `${p}…`))
  return [`  not listed: ${count(others.length, l.side === 'source' ? 'snapshot' : 'backup')} of other sources (${prefixes.join(', ')}); bbackup list ${l.at} lists everything there`]
}

export const renderList = (lists: readonly SnapshotList[]): string =>
  lists.filter((l) => l.error === undefined).map((l) => {
    const bytes = l.sizes?.bytes ?? {}
    const size = (name: string): string => (bytes[name] === undefined ? '' : `   ${formatBytes(bytes[name])}${l.sizes?.counted === 'exclusive' ? ' exclusive' : ''}`)
    return [
      `${l.at} (${l.side}): ${count(l.snapshots.filter((s) => s.complete).length, l.side === 'source' ? 'snapshot' : 'backup')}${l.sizes?.total === undefined ? '' : `, ${formatBytes(l.sizes.total)} on disk`}`,
      ...l.snapshots.map((s) => `  ${s.name}${size(s.name)}${s.altered !== undefined ? `   (${s.altered})` : s.complete ? '' : '   (unfinished)'}${s.health === 'ok' ? '' : `   (${s.health})`}${s.broken === undefined ? '' : `   (cannot be restored: ${s.broken})`}${s.otherSubvolume === undefined ? '' : '   (of another subvolume: not this source\'s)'}`),
      ...(l.sizesError === undefined ? [] : [`  sizes: not told: ${l.sizesError.message}; ${l.sizesError.hint}`]),
      ...otherSourcesLine(l),
    ].join('\n')
  }).join('\n') + '\n'

/**
 * a path on one line: control characters and backslashes escaped as in C, and a byte that is not
 * UTF-8 (U+DC80 to U+DCFF: decodeFileName) as `\xHH`, so `caf\xe9.txt` says which byte it is
 */
export const onOneLine = (path: string): string =>
  // eslint-disable-next-line no-control-regex -- the control characters are what is escaped
  path.replace(/[\\\x00-\x1f\x7f\u{dc80}-\u{dcff}]/gu, (c) => ({ '\\': '\\\\', '\n': '\\n', '\t': '\\t', '\r': '\\r' })[c] ?? `\\x${(c.charCodeAt(0) & 0xff).toString(16).padStart(2, '0')}`)

const DIFF_MARK = { added: '+', deleted: '-', modified: 'M', renamed: 'R', metadata: 'm' } as const

/** `diff` for people: a line per change, then the counts */
export const renderDiff = (d: SnapshotDiff): string => {
  const lines = [`${d.at}: ${d.from} -> ${d.to}`]
  for (const e of d.entries) {
    const what = e.change === 'renamed' ? `${onOneLine(e.from ?? '')} -> ${onOneLine(e.path)}` : onOneLine(e.path)
    const extra = e.change === 'metadata' ? '   (mode, owner or attributes)' : e.bytes !== undefined && e.bytes > 0 ? `   (${formatBytes(e.bytes)}${e.change === 'added' ? '' : ' written'})` : ''
    lines.push(`${DIFF_MARK[e.change]} ${what}${extra}`)
  }
  const c = d.counts
  const total = d.entries.length
  lines.push(total === 0
    ? 'no change'
    : `${count(total, 'change')}: ${c.added} added, ${c.deleted} deleted, ${c.renamed} renamed, ${c.modified} modified, ${c.metadata} metadata only; ${formatBytes(d.bytes)} of file data`)
  return `${lines.join('\n')}\n`
}

/**
 * A job's status for people. A job of the config also says when it runs next: `scheduled` is its
 * name and the timer `bbackup schedule` wrote for it (undefined: none).
 */
export const renderStatus = (s: JobStatus, scheduled?: { readonly job: string; readonly timer: JobTimer | undefined }, now: Date = new Date()): string => {
  // a directory of backups on its own: its lines, without a job's source, journal and lock
  const alone = s.only === 'target'
  const out = alone ? [] : [`${scheduled === undefined ? '' : `${scheduled.job}: `}${s.source} (${s.driver})`]
  if (scheduled !== undefined) out.push(`  ${scheduleLine(scheduled.job, scheduled.timer, now)}`)
  if (s.sourceError !== undefined) out.push(`  source: cannot be read: ${s.sourceError.message}; ${s.sourceError.hint}`)
  // none to count where the source cannot be read: its error says why
  if (s.snapshots !== undefined && !(s.sourceError !== undefined && s.snapshots.count === 0)) {
    const newest = s.snapshots.latest
    out.push(`  source: ${count(s.snapshots.count, 'snapshot')}${newest === undefined ? ', none yet' : `, newest ${newest.name} (${agoOrAhead(newest.ageSeconds)}${unchangedNote(newest.current)})`}${s.targets.length === 0 ? '; no target (snapshots only)' : ''}`)
    out.push(...aheadLine(s.snapshots.ahead, 'snapshot'))
    const others = s.snapshots.others ?? []
    if (others.length > 0) out.push(`    not this job's: ${count(others.length, 'snapshot')} named as its own (${brief(others)}) taken of another subvolume (${OTHER_SUBVOLUME}): not counted, never pruned here (give each source its own prefix: -p)`)
  }
  for (const t of s.targets) {
    if (!t.reachable) {
      out.push(`  ${t.at}: unreachable: ${t.error?.message ?? ''}`)
      continue
    }
    if (t.error !== undefined) {
      out.push(`  ${t.at}: ${t.error.message}`, `    hint: ${t.error.hint}`)
      continue
    }
    out.push(`  ${t.at}${alone ? ` (${s.driver})` : ''}${t.prefix === undefined ? '' : ` ${t.prefix}*`}: ${count(t.backups, 'backup')}${t.latest === undefined ? ', none yet' : `, newest ${t.latest.name} (${agoOrAhead(t.latest.ageSeconds)}${t.latest.health === 'ok' ? '' : `, ${t.latest.health}`}${unchangedNote(t.latest.current)})`}`)
    out.push(...aheadLine(t.ahead, 'backup'))
    // bbackup's own unfinished copies, and another tool's (rsync-time-backup's interrupted backup), which it leaves alone
    const own = t.unfinished.filter((n) => parseSnapshotName(n)?.scheme === 'bbackup')
    const foreign = t.unfinished.filter((n) => !own.includes(n))
    // btrfs: continued by the next run only where the journal still records its transfer
    const orphaned = s.driver === 'btrfs' ? own.filter((n) => t.unrecorded?.includes(n) === true) : []
    const recorded = own.filter((n) => !orphaned.includes(n))
    if (recorded.length > 0) out.push(`    unfinished: ${recorded.join(', ')} (the next run continues ${recorded.length === 1 ? 'it' : 'them'})`)
    if (orphaned.length > 0) {
      const it = orphaned.length === 1 ? 'it' : 'them'
      out.push(`    unfinished, not in the journal: ${orphaned.join(', ')} (no run continues ${it}: the transfer that left ${it} is no longer recorded, and a run deletes nothing it cannot prove it made; look at ${it}: bbackup clean deletes an unfinished receive named as this job's)`)
    }
    if (foreign.length > 0) out.push(`    unfinished, another tool's: ${foreign.join(', ')} (left as it is: never counted, linked against or deleted)`)
    const altered = t.altered ?? []
    const [firstAltered] = altered
    if (firstAltered !== undefined) out.push(`    changed since it was made: ${brief(altered.map((a) => a.name))}: ${firstAltered.why} (never counted, sent from or deleted)`)
    const others = t.others ?? []
    if (others.length > 0) out.push(`    not this job's: ${count(others.length, 'backup')} named as its own (${brief(others)}) that are not copies of this source's snapshots: another source's with the same prefix? Not counted, never pruned here (give each source its own prefix: -p)`)
    const broken = t.broken ?? []
    const [firstBroken] = broken
    if (firstBroken !== undefined) out.push(`    cannot be restored: ${count(broken.length, 'backup')} (${brief(broken.map((b) => b.name))}): ${firstBroken.why}`)
    const missing = t.missing ?? []
    if (missing.length > 0) out.push(`    missing: ${count(missing.length, 'source snapshot')} (${brief(missing)}): ${t.refused === undefined ? `the next run sends ${missing.length === 1 ? 'it' : 'them'}` : `not sent: ${t.refused} (run once with --incremental yes)`}`)
    // used as df's Use% counts it: of what is used and what is free to users (space reserved for root left out)
    if (t.space !== undefined) out.push(`    space: ${formatBytes(t.space.free)} free of ${formatBytes(t.space.size)} (${Math.ceil((t.space.used * 100) / Math.max(1, t.space.used + t.space.free))}% used)`)
  }
  for (const p of s.pending) out.push(`  pending transfer: ${p.snapshot} → ${p.target} (since ${p.startedAt})`)
  for (const k of s.keptForOthers ?? []) {
    out.push(k.job === undefined
      ? `  kept for ${k.target}, not a target here: ${k.snapshot}, its next parent (another job's target, or one gone for good: bbackup prune … --forget-target ${k.target})`
      : `  kept for ${k.target}, the target of another job of this source (state ${k.job}): ${k.snapshot}, its next parent (if that job is no longer run, move its state directory away)`)
  }
  if (!alone) out.push(s.lock === undefined ? '  lock: free' : `  lock: ${s.lock.verdict.stale ? 'stale' : 'held'}: ${s.lock.verdict.reason}`)
  // one level less: the place is the first line
  return `${(alone ? out.map((l) => l.slice(2)) : out).join('\n')}\n`
}

const scheduleLine = (job: string, timer: JobTimer | undefined, now: Date): string => {
  if (timer === undefined) return `next run: not scheduled (bbackup schedule ${job} --on-calendar daily writes a timer)`
  const unit = basename(timer.path)
  // a group's timer (bbackup schedule GROUP) runs the job too
  const by = timer.group === undefined ? unit : `${unit} (group ${timer.group})`
  if (!timer.enabled) return `next run: ${unit} (${timer.onCalendar}${timer.group === undefined ? '' : `, group ${timer.group}`}) is not enabled: systemctl enable --now ${unit}`
  if (timer.next === undefined) return `next run: ${timer.onCalendar}, by ${by}`
  const seconds = Math.max(0, Math.round((Date.parse(timer.next) - now.getTime()) / 1000))
  return `next run: ${timer.next.replace('T', ' ').replace(/:\d\dZ$/, ' UTC')} (in ${formatAge(seconds)}), by ${by}`
}

/** `clean`: per target, what was (or would be) deleted, and what is kept and why */
export const renderClean = (results: readonly CleanResult[], dryRun: boolean): string =>
  results.filter((r) => r.error === undefined).flatMap((r) => [
    ...(r.removed.length === 0 && r.kept.length === 0 ? [`${r.at}: nothing unfinished`] : []),
    ...r.removed.map((name) => `${r.at}: ${dryRun ? 'would delete' : 'deleted'} ${name} (an unfinished copy)`),
    ...r.kept.map((k) => `${r.at}: kept ${k.name}: ${k.why}`),
  ]).map((l) => `${l}\n`).join('')

export const renderPrune = (results: readonly PruneResult[], dryRun: boolean): string =>
  results.map((r) => [
    ...(r.forgotten ?? []).map((f) => `${dryRun ? 'would forget' : 'forgot'} ${f.target}: ${[
      ...(f.pinned === undefined ? [] : [`${f.pinned} no longer kept as its next parent`]),
      ...(f.pending.length === 0 ? [] : [`${f.pending.length} unfinished transfer${f.pending.length === 1 ? '' : 's'} (${f.pending.map((e) => e.snapshot).join(', ')}) no longer retried`]),
    ].join('; ')}`),
    `${r.at}: ${dryRun ? 'would delete' : 'deleted'} ${r.deleted.length} of ${r.decisions.length}`,
    ...r.decisions.map((d) => `  ${d.keep ? 'keep  ' : 'delete'} ${d.name}  ${d.reasons.join('; ')}`),
    ...(r.others ?? []).map((name) => `  other  ${name}  not this job's: ${r.side === 'source' ? `a snapshot of another subvolume (${OTHER_SUBVOLUME})` : 'not a copy of its source\'s snapshots (another source\'s with the same prefix?)'}; left alone`),
  ].join('\n')).join('\n') + '\n'

/** What the prunes left for later, `AT: warning: …` (for stderr); empty when nothing was. */
export const renderPruneWarnings = (results: readonly PruneResult[]): string =>
  results.flatMap((r) => (r.warnings ?? []).map((w) => `${r.at}: warning: ${w}\n`)).join('')

/** The places a prune or a list could not reach, `AT: NOT PRUNED: why` with the hint (for stderr); empty when none failed. */
export const renderPlaceFailures = (places: readonly { readonly at: string; readonly error?: BbError }[], what: 'PRUNED' | 'LISTED' | 'CLEANED'): string =>
  places.flatMap((p) => (p.error === undefined ? [] : [`${p.at}: NOT ${what}: ${p.error.message}`, `  hint: ${p.error.hint}`, ...detailLines(p.error, false, '  ')])).map((l) => `${l}\n`).join('')

/**
 * A command as a shell reads it back, to copy and run by hand: a word with a space, a quote or
 * another character the shell would take apart is single-quoted; a pipeline's `|` stays bare.
 */
export const shellLine = (argv: readonly string[]): string =>
  argv.map((w) => (w === '|' || /^[A-Za-z0-9_@%+:,./=-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\\''")}'`)).join(' ')
