import { createHash } from 'node:crypto'
import { posix } from 'node:path'
import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import type { Driver } from '../driver/driver.js'
import { bbError, type BbError } from '../errors.js'
import { formatLocation } from '../location/location.js'
import { parseSnapshotName } from '../names/snapshot-name.js'
import type { RetentionPolicy } from '../retention/policy.js'
import type { Transport } from '../transport/transport.js'
import { backup, routeOf, runComplete, type BackupReport } from './backup.js'
import { ownSnapshots, sendsFor, type Job, type RunOptions } from './job.js'
import { planSends } from './plan-sends.js'

/** btrbk's default `archive_preserve_min all`: an archive keeps every backup it received. */
export const KEEP_ALL: RetentionPolicy = { preserveMin: 'all' }

/** What to archive, and where: btrbk's `archive` (one backup disk copied to another, incrementally). */
export interface ArchiveSpec {
  /** a driver that reads the backups in `source` itself as the snapshots to send (`btrfsDriver({ backupsAtSource: true })`) */
  readonly driver: Driver
  /** the directory that holds the backups (a backup disk, a snapshot folder) */
  readonly source: Transport
  /** where their copies go; each subdirectory of the source that holds backups is mirrored there */
  readonly target: Transport
  /** where the archive keeps a lock, a journal and a lineage for each family of backups, one directory each */
  readonly state: { readonly transport: Transport; readonly directory: string }
  /** which of the backups the target gets and keeps (btrbk's `archive_preserve`); default {@link KEEP_ALL} */
  readonly retention?: RetentionPolicy
  /** IANA zone whose days and weeks the policy counts in; the host's zone when omitted */
  readonly timeZone?: string
  /** how many backups of a family one prune may delete at the target, as a job's `retention.maxDelete` */
  readonly maxDelete?: number | 'all'
  /** how many levels of subdirectories of the source are searched for backups (default 3; 0: the source alone) */
  readonly depth?: number
  /**
   * shell wildcards (`*`, `?`: neither matches a slash) of what is left out, relative to the
   * source (btrbk's `archive_exclude`): a directory (`host2`, `host?`: all below it), or backups
   * (`tmp.*`, `host1/root.*`: their family)
   */
  readonly exclude?: readonly string[]
}

/** One family: the backups with one prefix in one directory of the source. */
export interface ArchiveFamily {
  /** the directory under the source (and under the target) that holds them; '' for the source itself */
  readonly directory: string
  readonly prefix: string
  /** what its archive did (one target: the target's directory for this family) */
  readonly report?: BackupReport
  /** why it could not be archived at all (its lock held, its source unreadable) */
  readonly error?: BbError
  /** why it was not tried: an earlier family's failure that stops them all (a full disk, a host out of reach, a cancel) */
  readonly skipped?: string
}

export interface ArchiveReport {
  readonly source: string
  readonly target: string
  readonly dryRun: boolean
  readonly startedAt: string
  readonly durationMs: number
  /** in the order found: the source's own directory first, then its subdirectories by name */
  readonly families: readonly ArchiveFamily[]
  /** families that were not archived whole (an error, a failed target, a prune that failed, skipped) */
  readonly failed: number
  /** what was found and left alone (directories named as backups that are not read-only subvolumes) */
  readonly notes: readonly string[]
}

/** The same host and connection as `at`, at another directory. */
export const transportAt = (at: Transport, path: string): Transport => ({ ...at, location: { ...at.location, path } })

/** a shell wildcard (`*`, `?`: neither matches a slash) as a regular expression over a whole relative path */
const wildcard = (pattern: string): RegExp =>
  new RegExp(`^${[...pattern.replace(/^\/+|\/+$/g, '')].map((c) => (c === '*' ? '[^/]*' : c === '?' ? '[^/]' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&'))).join('')}$`)

/** failures after which the next family would fail the same way: the archive stops */
const STOPS_ALL: ReadonlySet<string> = new Set(['DISK_FULL', 'NETWORK_FAILED', 'CANCELLED', 'HOSTKEY_UNKNOWN', 'HOSTKEY_CHANGED', 'AUTH_FAILED'])

/** Whether the archive did everything: every family archived and pruned. */
export const archiveComplete = (report: ArchiveReport): boolean => report.failed === 0

/**
 * btrbk's `archive`: copies the backups in `source` (and in its subdirectories, mirrored) to
 * `target`, each family (one prefix in one directory) as a job of its own with its own lock and
 * journal: what the target lacks is sent oldest first, each incremental against the newest backup
 * both hold ({@link backup} without a snapshot), identified by received uuid, never by name. A
 * copy of a copy keeps the received uuid of the snapshot it came from, so the target's copies are
 * the same backups as the source's, and as any other target's of the job that made them. The
 * source is only read; the target is pruned by `retention` alone (default: keep all), never below
 * its newest copy. An unfinished receive is removed by the next archive, as a run's is.
 * @example
 * const report = await archive({ driver: btrfsDriver({ backupsAtSource: true }), source: localTransport('/mnt/backup'), target: localTransport('/mnt/offsite'), state })
 */
export const archive = (spec: ArchiveSpec, options: RunOptions & { readonly prune?: boolean } = {}): ResultAsync<ArchiveReport, BbError> => {
  const nested = nestedPlaces(spec.source, spec.target)
  if (nested !== undefined) return errAsync(nested)
  return new ResultAsync(runArchive(spec, options))
}

/** The source and the target on one host, one inside the other: the archive would copy its own copies. */
const nestedPlaces = (source: Transport, target: Transport): BbError | undefined => {
  const host = (t: Transport): string => formatLocation({ ...t.location, path: '/' })
  if (source.location.kind !== target.location.kind || host(source) !== host(target)) return undefined
  const a = posix.resolve('/', source.location.path)
  const b = posix.resolve('/', target.location.path)
  const inside = (outer: string, inner: string): boolean => inner === outer || inner.startsWith(outer === '/' ? '/' : `${outer}/`)
  if (!inside(a, b) && !inside(b, a)) return undefined
  return bbError('INVALID_OPTIONS', a === b ? `the archive's source and target are the same directory (${a})` : `the archive's ${inside(a, b) ? 'target is inside its source' : 'source is inside its target'} (${a}, ${b}): it would copy its own copies`,
    'give a target on another btrfs filesystem (another disk), outside the source', { source: a, target: b })
}

const runArchive = async (spec: ArchiveSpec, options: RunOptions & { readonly prune?: boolean }): Promise<Result<ArchiveReport, BbError>> => {
  const started = Date.now()
  const now = (options.now ?? (() => new Date()))()
  const dryRun = options.dryRun ?? false
  const { driver, source, target } = spec
  // the source, and the target's directory (made, where its parent is on btrfs, when the archive will write)
  const probed = await ResultAsync.combine([
    driver.probe({ source, targets: [], signal: options.signal }),
    driver.probe({ source, targets: [target], signal: options.signal, transferFollows: !dryRun }),
  ])
  if (probed.isErr()) {
    // a target that is not on btrfs: no other driver can take an archive of subvolumes
    const e = probed.error
    return err(e.code === 'TARGET_NOT_BTRFS' ? { ...e, hint: 'is the disk mounted? An archive is received into a directory on a btrfs filesystem' } : e)
  }
  const found = await findFamilies(spec, options.signal)
  if (found.isErr()) return err(found.error)
  const families: ArchiveFamily[] = []
  let stop: string | undefined
  for (const { directory, prefix } of found.value.families) {
    if (stop !== undefined || options.signal?.aborted === true) {
      families.push({ directory, prefix, skipped: stop ?? 'the archive was cancelled' })
      continue
    }
    const family = await archiveFamily(spec, options, directory, prefix, now)
    families.push(family)
    const failure = family.error ?? family.report?.targets.find((t) => t.error !== undefined)?.error
    if (failure !== undefined && STOPS_ALL.has(failure.code)) stop = `stopped after ${familyName(directory, prefix)} failed: ${failure.message}`
  }
  return ok({
    source: formatLocation(source.location),
    target: formatLocation(target.location),
    dryRun,
    startedAt: now.toISOString(),
    durationMs: Date.now() - started,
    families,
    failed: families.filter((f) => f.report === undefined || !runComplete(f.report)).length,
    notes: found.value.notes,
  })
}

/** `dir/prefix*`, as the report names a family */
export const familyName = (directory: string, prefix: string): string => `${directory === '' ? '' : `${directory}/`}${prefix}*`

/** the job that archives one family: its own lock, journal and lineage, under the archive's state directory */
const familyJob = (spec: ArchiveSpec, directory: string, prefix: string): Job => {
  const key = `${directory}\n${prefix}`
  const readable = `${directory}/${prefix}`.replace(/^\/+/, '').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 48)
  return {
    driver: spec.driver,
    source: transportAt(spec.source, posix.join(spec.source.location.path, directory)),
    targets: [transportAt(spec.target, posix.join(spec.target.location.path, directory))],
    prefix,
    state: { transport: spec.state.transport, directory: posix.join(spec.state.directory, `${readable}-${createHash('sha256').update(key).digest('hex').slice(0, 8)}`) },
    retention: { target: spec.retention ?? KEEP_ALL, ...(spec.timeZone === undefined ? {} : { timeZone: spec.timeZone }), ...(spec.maxDelete === undefined ? {} : { maxDelete: spec.maxDelete }) },
  }
}

const archiveFamily = async (spec: ArchiveSpec, options: RunOptions & { readonly prune?: boolean }, directory: string, prefix: string, now: Date): Promise<ArchiveFamily> => {
  const job = familyJob(spec, directory, prefix)
  const into = job.targets[0] as Transport
  const there = await into.stat(into.location.path)
  if (there.isErr()) return { directory, prefix, error: there.error }
  if (there.value === undefined && options.dryRun === true) {
    // nothing is made in a dry run: what a new directory would get, planned as a run plans it
    const planned = await planNew(job, into, options, now)
    return planned.isErr() ? { directory, prefix, error: planned.error } : { directory, prefix, report: planned.value }
  }
  if (there.value === undefined && directory !== '') {
    const made = await into.mkdir(into.location.path, { recursive: true })
    if (made.isErr()) return { directory, prefix, error: made.error }
  }
  const r = await backup(job, { ...options, snapshot: false, now: () => now })
  return r.isErr() ? { directory, prefix, error: r.error } : { directory, prefix, report: r.value }
}

/** A dry run's report for a family whose directory at the target does not exist yet: all it would get, from nothing. */
const planNew = async (job: Job, into: Transport, options: RunOptions, now: Date): Promise<Result<BackupReport, BbError>> => {
  const listed = await job.driver.listSnapshots({ at: job.source, side: 'source', signal: options.signal })
  if (listed.isErr()) return err(listed.error)
  const { sends } = planSends(ownSnapshots(job, listed.value), [], sendsFor(job, () => now))
  const where = formatLocation(into.location)
  const last = sends.at(-1)
  return ok({
    source: formatLocation(job.source.location), driver: job.driver.name, dryRun: true, snapshot: last?.snapshot.name ?? '', startedAt: now.toISOString(), durationMs: 0,
    targets: [{
      target: where, ok: true, route: routeOf(job.source.location, where),
      sent: sends.map((s) => ({ snapshot: s.snapshot.name, mode: s.parent === undefined ? 'full' : 'incremental', ...(s.parent === undefined ? {} : { parent: s.parent.name }), bytes: 0, durationMs: 0 })),
      ...(last === undefined ? {} : { snapshot: last.snapshot.name, mode: last.parent === undefined ? 'full' : 'incremental', ...(last.parent === undefined ? {} : { parent: last.parent.name }) }),
      bytes: 0, files: 0, durationMs: 0, warnings: [`${where} does not exist yet: it would be made`], recovered: [], pruned: [], commands: [],
    }],
    failed: 0, sourcePruned: [],
  })
}

/**
 * The families of backups under the source: in each directory (the source, then its
 * subdirectories `depth` levels down, by name), the read-only subvolumes named as backups, by
 * prefix. A directory named as a backup is never searched further (it is one); one that is not a
 * read-only subvolume is noted and left alone.
 */
const findFamilies = async (spec: ArchiveSpec, signal: AbortSignal | undefined): Promise<Result<{ families: { directory: string; prefix: string }[]; notes: string[] }, BbError>> => {
  const families: { directory: string; prefix: string }[] = []
  const notes: string[] = []
  const root = spec.source.location.path
  const excluded = (relative: string): string | undefined => (spec.exclude ?? []).find((p) => wildcard(p).test(relative))
  const visit = async (directory: string, depth: number): Promise<Result<void, BbError>> => {
    const path = posix.join(root, directory)
    const leftOutBy = directory === '' ? undefined : excluded(directory)
    if (leftOutBy !== undefined) {
      notes.push(`${path}: left out (--exclude ${leftOutBy})`)
      return ok(undefined)
    }
    const entries = await spec.source.list(path)
    // a subdirectory that went away or cannot be read while the source could is not the archive's to fail on
    if (entries.isErr()) {
      if (directory === '') return err(entries.error)
      notes.push(`${path} could not be read: ${entries.error.message}`)
      return ok(undefined)
    }
    const dirs = entries.value.filter((e) => e.kind === 'directory').sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    const named = dirs.filter((e) => parseSnapshotName(e.name) !== undefined)
    if (named.length > 0) {
      const listed = await spec.driver.listSnapshots({ at: transportAt(spec.source, path), side: 'source', signal })
      if (listed.isErr()) return err(listed.error)
      const complete = listed.value.filter((s) => s.complete)
      const prefixes = [...new Set(complete.map((s) => parseSnapshotName(s.name)?.prefix ?? ''))].sort()
      for (const prefix of prefixes) {
        const one = complete.find((s) => (parseSnapshotName(s.name)?.prefix ?? '') === prefix)?.name ?? prefix
        const by = excluded(posix.join(directory, one))
        if (by === undefined) families.push({ directory, prefix })
        else notes.push(`${familyName(posix.join(root, directory), prefix)}: left out (--exclude ${by})`)
      }
      const left = named.filter((e) => !complete.some((s) => s.name === e.name))
      if (left.length > 0) {
        const shown = left.length <= 3 ? left.map((e) => e.name).join(', ') : `${left[0]?.name ?? ''} … ${left.at(-1)?.name ?? ''}`
        notes.push(`${path}: ${left.length} named as backups but not read-only subvolumes (${shown}): not archived (unfinished receives, or another tool's directories)`)
      }
    }
    if (depth <= 0) return ok(undefined)
    for (const d of dirs) {
      if (parseSnapshotName(d.name) !== undefined) continue
      const r = await visit(posix.join(directory, d.name), depth - 1)
      if (r.isErr()) return r
    }
    return ok(undefined)
  }
  const r = await visit('', spec.depth ?? 3)
  return r.isErr() ? err(r.error) : ok({ families, notes })
}
