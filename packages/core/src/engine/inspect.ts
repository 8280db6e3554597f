import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import type { DiffEntry, DiskUsage, SnapshotInfo, TransferProgress, VerifyOutcome } from '../driver/driver.js'
import { bbError, type BbError } from '../errors.js'
import { readJournal, type JournalEntry } from '../journal/journal.js'
import { knownAt, ofThisJob, readLineage } from '../journal/lineage.js'
import { readUnchangedCheck } from '../journal/unchanged.js'
import { readPins } from '../journal/pins.js'
import { formatLocation } from '../location/location.js'
import { compareSnapshots, parseSnapshotName } from '../names/snapshot-name.js'
import type { LockStatus, Transport } from '../transport/transport.js'
import { aheadOfClock, claimedByOther, journalPath, lineagePath, lockPath, unchangedPath, madeOrder, newestMade, originFor, othersAtSource, ownSnapshots, pinsPath, sendsFor, type Job } from './job.js'
import { planSends } from './plan-sends.js'
import { heldBeside } from './beside.js'
import { holdForRestore } from './holds.js'
import { spaceAt, type Space } from './space.js'

export interface SnapshotList {
  readonly at: string
  readonly side: 'source' | 'target'
  readonly snapshots: readonly SnapshotInfo[]
  /** with `partial`: this place could not be listed (a disk not mounted, a host down); `snapshots` is empty */
  readonly error?: BbError
  /** with `sizes`: the bytes of each complete backup (or snapshot) by name, as the driver's `diskUsage` counts them, and their total */
  readonly sizes?: { readonly bytes: Readonly<Record<string, number>>; readonly counted: DiskUsage['counted']; readonly total?: number }
  /** with `sizes`: why they could not be told (a driver that cannot, a transport without commands, du failed) */
  readonly sizesError?: BbError
  /** with `ofJob`: the names left out of `snapshots`, another source's by their prefix, oldest first */
  readonly otherSources?: readonly string[]
}

/** the sizes of the complete backups at a place, or why there are none */
const sizesAt = (job: Job, at: Transport, snapshots: readonly SnapshotInfo[], signal: AbortSignal | undefined): Promise<Pick<SnapshotList, 'sizes' | 'sizesError'>> => {
  const complete = snapshots.filter((s) => s.complete)
  if (job.driver.diskUsage === undefined) {
    return Promise.resolve({ sizesError: bbError('UNSUPPORTED', `the ${job.driver.name} driver does not tell the size of each backup`, 'du -s on the backups tells their sizes') })
  }
  if (complete.length === 0) return Promise.resolve({})
  return job.driver.diskUsage({ at, snapshots: complete, signal }).match((u) => ({ sizes: { bytes: Object.fromEntries(u.bytes), counted: u.counted, ...(u.total === undefined ? {} : { total: u.total }) } }), (e) => ({ sizesError: e }))
}

const places = (job: Job): [Transport, 'source' | 'target'][] => [
  ...(job.driver.snapshotsSource ? [[job.source, 'source'] as [Transport, 'source']] : []),
  ...job.targets.map((t): [Transport, 'target'] => [t, 'target']),
]

/** whether a snapshot's name is another source's: it parses, with a prefix other than the job's (a name that does not parse is no one's in particular) */
const namedForOther = (job: Job, s: SnapshotInfo): boolean => {
  const parsed = parseSnapshotName(s.name)
  return parsed !== undefined && parsed.prefix !== (job.prefix ?? '')
}

/**
 * The snapshots at the source (for drivers that keep some there) and at each target, unfinished
 * ones included; `only` one side of the two. A place that cannot be listed is the error, or with
 * `partial` its entry's `error`, the other places listed all the same. With `sizes`, each place's
 * complete backups also get their sizes (the driver's `diskUsage`), or the reason there are none.
 * With `ofJob`, the snapshots named with another prefix than the job's (other sources sharing the
 * place) are left out, and named in `otherSources`.
 * @example
 * list(job, { partial: true }).map((lists) => lists.map((l) => `${l.at}: ${l.error?.message ?? l.snapshots.length}`))
 */
export const list = (job: Job, options: { readonly signal?: AbortSignal; readonly only?: 'source' | 'target'; readonly partial?: boolean; readonly sizes?: boolean; readonly ofJob?: boolean } = {}): ResultAsync<SnapshotList[], BbError> =>
  new ResultAsync((async (): Promise<Result<SnapshotList[], BbError>> => {
    const out: SnapshotList[] = []
    for (const [at, side] of places(job).filter(([, side]) => options.only === undefined || side === options.only)) {
      const r = await job.driver.listSnapshots({ at, side, signal: options.signal })
      if (r.isErr() && options.partial !== true) return err(r.error)
      const all = r.unwrapOr([])
      const others = options.ofJob === true ? all.filter((s) => namedForOther(job, s)) : []
      const snapshots = others.length === 0 ? all : all.filter((s) => !namedForOther(job, s))
      const sizes = r.isOk() && options.sizes === true ? await sizesAt(job, at, snapshots, options.signal) : {}
      out.push({ at: formatLocation(at.location), side, snapshots, ...(r.isErr() ? { error: r.error } : {}), ...sizes, ...(others.length === 0 ? {} : { otherSources: others.map((s) => s.name) }) })
    }
    return ok(out)
  })())

export interface TargetStatus {
  readonly at: string
  /** with `only: 'target'`, the source (the prefix of its backups' names) this entry tells of, when a name has one */
  readonly prefix?: string
  readonly reachable: boolean
  /** why it cannot be asked (`reachable` false), or, reachable, why none of its backups is the job's: another source's directory (`TARGET_IN_USE`) */
  readonly error?: BbError
  readonly backups: number
  /** the newest backup made before now ({@link newestMade}: one dated ahead of the clock sorts last, but is older) */
  readonly latest?: {
    readonly name: string; readonly time: string; readonly ageSeconds: number; readonly health: SnapshotInfo['health']
    /** a copy of the source's newest snapshot, and a run found the source unchanged since it at `at` (snapshot_create onchange): it was current then */
    readonly current?: { readonly at: string; readonly ageSeconds: number }
  }
  /** backups dated ahead of the clock ({@link aheadOfClock}), oldest first: named by a clock that was wrong */
  readonly ahead?: readonly string[]
  readonly unfinished: readonly string[]
  /** copies that were backups once and were changed since ({@link SnapshotInfo.altered}), each with why: left alone */
  readonly altered?: readonly { readonly name: string; readonly why: string }[]
  /**
   * of `unfinished`, those the journal records no transfer of (its entry forgotten with
   * --remove-locks, a state directory lost, another tool's receive): a run that resumes from the
   * journal (btrfs) never touches them; none with `only: 'target'`, where the journal is not read
   */
  readonly unrecorded?: readonly string[]
  /**
   * backups named as the job's that are not its own (not copies of its source's snapshots, nor ever
   * sent by it: another source's with the same prefix); not counted above, never pruned by the job
   */
  readonly others?: readonly string[]
  /** backups that cannot be restored as they are ({@link SnapshotInfo.broken}), oldest first, each with why */
  readonly broken?: readonly { readonly name: string; readonly why: string }[]
  /**
   * drivers that keep snapshots at the source (btrfs): the source snapshots this target lacks, oldest
   * first, which the next run sends there (by identity, as a run plans them)
   */
  readonly missing?: readonly string[]
  /** why the next run sends none of `missing` there: it would need a full send, and the driver's `incremental` is strict */
  readonly refused?: string
  /** the filesystem the target is on (df); undefined where it cannot be asked (a daemon module) */
  readonly space?: Space
}

export interface JobStatus {
  readonly source: string
  readonly driver: string
  readonly targets: readonly TargetStatus[]
  readonly pending: readonly JournalEntry[]
  readonly lock: LockStatus | undefined
  /** drivers that keep snapshots at the source (btrfs): how many of the job's are there, and the newest */
  readonly snapshots?: {
    readonly count: number
    readonly latest?: { readonly name: string; readonly time: string; readonly ageSeconds: number; readonly current?: { readonly at: string; readonly ageSeconds: number } }
    /** snapshots dated ahead of the clock, oldest first */
    readonly ahead?: readonly string[]
    /** snapshots in the folder named as the job's but taken of another subvolume (another source's that shares it): not counted, never pruned by the job */
    readonly others?: readonly string[]
  }
  /**
   * btrfs: source snapshots kept for targets that are not this job's (another job's of the same
   * source, or a target gone for good: `prune` with `forgetTargets` lets them go), each its next
   * parent; with `job`, pinned by another job (its state directory) that shares the snapshot folder
   */
  readonly keptForOthers?: readonly { readonly target: string; readonly snapshot: string; readonly job?: string }[]
  /**
   * the source cannot be read: a source on this host that is not there (a typo, a disk not
   * mounted), or btrfs snapshots that could not be listed (a host down); the next run fails on it
   */
  readonly sourceError?: BbError
  /** `'target'`: the targets were asked alone (no source, journal or lock was read: `pending` is empty, `lock` undefined) */
  readonly only?: 'target'
}

const alteredOf = (all: readonly SnapshotInfo[]): { altered?: { name: string; why: string }[] } => {
  const altered = all.flatMap((s) => (s.altered === undefined ? [] : [{ name: s.name, why: s.altered }]))
  return altered.length === 0 ? {} : { altered }
}

const brokenOf = (own: readonly SnapshotInfo[]): { broken?: { name: string; why: string }[] } => {
  const broken = own.flatMap((s) => (s.broken === undefined ? [] : [{ name: s.name, why: s.broken }]))
  return broken.length === 0 ? {} : { broken }
}

/**
 * Per target: how many backups, the newest and its age, unfinished copies, backups that cannot be
 * restored (a broken chain), the source snapshots it lacks, the space on its filesystem; the journal's pending transfers and who holds the job's lock.
 * An unreachable target is reported, not an error; so is a source whose snapshots cannot be listed.
 * With `only: 'target'`, the targets alone: what a directory of backups says without its job (the
 * backup server's view, where neither the source nor the job's state is).
 */
export const status = (job: Job, options: { readonly signal?: AbortSignal; readonly now?: () => Date; readonly only?: 'target' } = {}): ResultAsync<JobStatus, BbError> =>
  new ResultAsync((async (): Promise<Result<JobStatus, BbError>> => {
    const now = (options.now ?? (() => new Date()))().getTime()
    const alone = options.only === 'target'
    const source = job.driver.snapshotsSource && !alone ? await job.driver.listSnapshots({ at: job.source, side: 'source', signal: options.signal }) : undefined
    const sourceOwn = source?.isOk() === true ? ownSnapshots(job, source.value) : undefined
    const ageSeconds = (time: Date): number => Math.round((now - time.getTime()) / 1000)
    const prefixOf = (name: string): string => parseSnapshotName(name)?.prefix ?? ''
    // which backups at a target are the job's own (not another source's with the same prefix): told where the source could be listed
    const lineage = sourceOwn === undefined ? undefined : await readLineage(job.state.transport, lineagePath(job))
    if (lineage?.isErr() === true) return err(lineage.error)
    // a source that is a restored backup swapped in: the backups its original has at a target are its own
    const fromOrigin = sourceOwn === undefined ? undefined : originFor(job, madeOrder(sourceOwn, now), options.signal)
    // a backup of the newest snapshot is as current as the last run that found the source unchanged since it
    const newestSnapshot = sourceOwn === undefined ? undefined : newestMade(sourceOwn, now)
    const check = newestSnapshot === undefined ? undefined : (await readUnchangedCheck(job.state.transport, unchangedPath(job))).unwrapOr(undefined)
    const current = check !== undefined && check.snapshot === newestSnapshot?.name ? { at: check.checkedAt, ageSeconds: ageSeconds(new Date(check.checkedAt)) } : undefined
    const targets: TargetStatus[] = []
    for (const target of job.targets) {
      const at = formatLocation(target.location)
      const r = await job.driver.listSnapshots({ at: target, signal: options.signal })
      if (r.isErr()) {
        targets.push({ at, reachable: false, error: r.error, backups: 0, unfinished: [] })
        continue
      }
      // another source's directory of backups (rsync): none of them is this job's
      const claimed = claimedByOther(job, target, r.value)
      if (claimed !== undefined) {
        targets.push({ at, reachable: true, error: claimed, backups: 0, unfinished: [] })
        continue
      }
      const space = await spaceAt(target, options.signal)
      // alone, a target shared by several sources (btrbk's home.*, root.*) is told source by source
      const prefixes = alone ? [...new Set(r.value.filter((s) => s.time !== undefined).map((s) => prefixOf(s.name)))].sort() : [job.prefix ?? '']
      for (const [i, prefix] of (prefixes.length === 0 ? [''] : prefixes).entries()) {
        const named = ownSnapshots({ ...job, prefix }, r.value)
        const from = sourceOwn === undefined ? undefined : await fromOrigin?.(named)
        const { ours: own, others } = from === undefined || lineage?.isOk() !== true ? { ours: named, others: [] } : ofThisJob(knownAt(lineage.value, at, from, named), named)
        const latest = newestMade(own, now)
        const plan = from === undefined ? undefined : planSends(from, own, sendsFor(job, options.now))
        const ahead = own.filter((s) => aheadOfClock(s, now)).map((s) => s.name)
        targets.push({
          at,
          ...(alone && prefix !== '' ? { prefix } : {}),
          reachable: true,
          backups: own.length,
          ...(latest?.time === undefined ? {} : {
            latest: {
              name: latest.name, time: latest.time.toISOString(), ageSeconds: ageSeconds(latest.time), health: latest.health,
              ...(current !== undefined && latest.name === check?.snapshot ? { current } : {}),
            },
          }),
          ...(ahead.length === 0 ? {} : { ahead }),
          unfinished: r.value.filter((s) => !s.complete && s.altered === undefined && (!alone || prefixOf(s.name) === prefix)).map((s) => s.name),
          ...alteredOf(r.value.filter((s) => !alone || prefixOf(s.name) === prefix)),
          ...brokenOf(own),
          ...(others.length === 0 ? {} : { others: others.map((o) => o.name) }),
          ...(plan === undefined ? {} : { missing: plan.sends.map((s) => s.snapshot.name), ...(plan.refused === undefined ? {} : { refused: plan.refused }) }),
          // the filesystem once, with the first of a shared target's sources
          ...(space === undefined || i > 0 ? {} : { space }),
        })
      }
    }
    const sourceAhead = (sourceOwn ?? []).filter((s) => aheadOfClock(s, now)).map((s) => s.name)
    const sourceOthers = source?.isOk() === true ? othersAtSource(job, source.value).map((s) => s.name) : []
    const snapshots = sourceOwn === undefined ? undefined : {
      count: sourceOwn.length,
      ...(sourceOthers.length === 0 ? {} : { others: sourceOthers }),
      ...(newestSnapshot?.time === undefined ? {} : { latest: { name: newestSnapshot.name, time: newestSnapshot.time.toISOString(), ageSeconds: ageSeconds(newestSnapshot.time), ...(current === undefined ? {} : { current }) } }),
      ...(sourceAhead.length === 0 ? {} : { ahead: sourceAhead }),
    }
    const base = { source: formatLocation(job.source.location), driver: job.driver.name, targets, ...(snapshots === undefined ? {} : { snapshots }) }
    if (alone) return ok({ ...base, pending: [], lock: undefined, only: 'target' })
    // a source on this host is looked at (another host is not logged in to only for this); a btrfs one was, by its listing
    const sourceError = source?.isErr() === true ? source.error : job.source.location.kind === 'local' ? await missingSource(job.source) : undefined
    const journal = await readJournal(job.state.transport, journalPath(job))
    if (journal.isErr()) return err(journal.error)
    const lock = await job.state.transport.inspectLock(lockPath(job))
    if (lock.isErr()) return err(lock.error)
    const pins = job.driver.snapshotsSource ? await readPins(job.state.transport, pinsPath(job)) : undefined
    if (pins?.isErr() === true) return err(pins.error)
    const ownPins = Object.entries(pins?.isOk() === true ? pins.value.pins : {}).filter(([target]) => !targets.some((t) => t.at === target)).map(([target, snapshot]) => ({ target, snapshot }))
    // and those another job of the same source and prefix keeps in the shared folder (its state beside this one's;
    // one that cannot be read is that job's status to tell, and this job's prune's to refuse)
    const beside = sourceOwn === undefined ? undefined : await heldBeside(job, new Set(sourceOwn.map((s) => s.name)))
    const others = [...ownPins, ...(beside?.isOk() === true ? beside.value.flatMap((h) => (h.why === 'pin' && !targets.some((t) => t.at === h.target) ? [{ target: h.target, snapshot: h.snapshot, job: h.job }] : [])) : [])]
    const recorded = (t: TargetStatus, name: string): boolean => journal.value.entries.some((e) => e.target === t.at && e.snapshot === name)
    const told = targets.map((t) => {
      const unrecorded = t.unfinished.filter((n) => !recorded(t, n))
      return unrecorded.length === 0 ? t : { ...t, unrecorded }
    })
    return ok({ ...base, targets: told, pending: journal.value.entries, lock: lock.value, ...(others.length === 0 ? {} : { keptForOthers: others }), ...(sourceError === undefined ? {} : { sourceError }) })
  })())

/** a source on this host that is not there, as the error a run would give */
const missingSource = async (source: Transport): Promise<BbError | undefined> => {
  const path = source.location.path
  const found = await source.stat(path)
  if (found.isErr()) return found.error
  return found.value === undefined ? bbError('SOURCE_UNAVAILABLE', `the source ${path} does not exist`, 'check the path (a typo? is its filesystem mounted?)', { path }) : undefined
}

/**
 * Finds a complete backup by name at a target; `latest` (or no name) is the job's newest made before now ({@link newestMade}). With
 * `anyPrefix`, `latest` is the newest of any source, as long as the target holds one source's backups only.
 * With `side: 'source'`, `at` is a source whose snapshots (btrfs: in its snapshot folder) are looked in.
 */
export const findSnapshot = (
  job: Job, at: Transport, name: string | undefined,
  options: { readonly signal?: AbortSignal | undefined; readonly anyPrefix?: boolean; readonly side?: 'source' | 'target' } = {},
): ResultAsync<SnapshotInfo, BbError> =>
  job.driver.listSnapshots({ at, signal: options.signal, ...(options.side === 'source' ? { side: 'source' as const } : {}) }).andThen((all) => pickSnapshot(job, at, all, name, options))

/** {@link findSnapshot} in the snapshots `all` listed at `at` */
const pickSnapshot = (
  job: Job, at: Transport, all: readonly SnapshotInfo[], name: string | undefined,
  options: { readonly anyPrefix?: boolean; readonly side?: 'source' | 'target' },
): Result<SnapshotInfo, BbError> => {
  const anyPrefix = options.anyPrefix ?? false
  const own = all.filter((s) => s.complete)
  if (anyPrefix && (name === undefined || name === 'latest')) {
    const prefixes = new Set(own.map((s) => parseSnapshotName(s.name)?.prefix).filter((p) => p !== undefined))
    if (prefixes.size > 1) {
      return err(bbError('INVALID_OPTIONS', `${formatLocation(at.location)} holds the backups of several sources (${[...prefixes].map((p) => `${p}…`).join(', ')}): latest is ambiguous`,
        'name the backup, or give the prefix of the source with -p', { at: formatLocation(at.location) }))
    }
    const newest = newestMade(own.filter((s) => s.time !== undefined), Date.now())
    if (newest !== undefined) return ok(newest)
  }
  const found = name === undefined || name === 'latest' ? newestMade(ownSnapshots(job, own), Date.now()) : own.find((s) => s.name === name)
  if (found !== undefined) return ok(found)
  // none of the job's own: what is there (another source's, by prefix) is still worth naming
  const mine = ownSnapshots(job, own)
  const names = (mine.length > 0 ? mine : own).map((s) => s.name)
  const what = options.side === 'source' ? 'snapshot' : 'backup'
  if ((name === undefined || name === 'latest') && mine.length === 0 && names.length > 0) {
    // another source's backups only: the prefix is the mistake, not a missing backup
    const others = [...new Set(own.map((s) => parseSnapshotName(s.name)?.prefix).filter((p) => p !== undefined))].sort().map((p) => (p === '' ? 'no prefix' : `${p}…`))
    return err(bbError(
      'SNAPSHOT_NOT_FOUND',
      `${formatLocation(at.location)} has no complete ${what} of this source (${job.prefix === undefined || job.prefix === '' ? 'names without a prefix' : `names starting ${job.prefix}`}), only other sources' (${others.join(', ')})`,
      `give the prefix of the source with -p (bbackup list ${formatLocation(at.location)} shows them)`,
      { at: formatLocation(at.location), newest: names.at(-1) },
    ))
  }
  return err(bbError(
    'SNAPSHOT_NOT_FOUND',
    name === undefined || name === 'latest' ? `${formatLocation(at.location)} has no complete ${what}` : `no complete ${what} named ${name} at ${formatLocation(at.location)}`,
    names.length === 0 ? 'run a backup first' : `bbackup list shows them; the newest is ${names.at(-1) ?? ''}`,
    { at: formatLocation(at.location), ...(name === undefined ? {} : { snapshot: name }), ...(names.length === 0 ? {} : { newest: names.at(-1) }) },
  ))
}

/**
 * Copies a backup (all of it, or one path inside it) to `to`. Refuses to write into anything
 * that is not empty: restore never overwrites.
 * @example
 * restore(job, { from: job.targets[0], snapshot: 'latest', to: localTransport('/srv/restored') })
 */
export const restore = (
  job: Job,
  options: {
    readonly from: Transport; readonly snapshot?: string; readonly subpath?: string; readonly to: Transport; readonly dryRun?: boolean; readonly signal?: AbortSignal
    /** btrfs: also a writable snapshot of the restored backup */
    readonly writable?: boolean
    /** `latest` means the newest backup whatever its prefix (refused when the target holds several sources' backups) */
    readonly anyPrefix?: boolean
    /** `from` is a source: restore one of its own snapshots (btrfs: from its snapshot folder) */
    readonly side?: 'source' | 'target'
    /** how far the copy has come (RestoreInput.onProgress) */
    readonly onProgress?: (progress: TransferProgress) => void
  },
): ResultAsync<{ readonly snapshot: string; readonly commands: readonly (readonly string[])[] }, BbError> =>
  findSnapshot(job, options.from, options.snapshot, { signal: options.signal, anyPrefix: options.anyPrefix ?? false, side: options.side ?? 'target' }).andThen((snapshot) =>
    new ResultAsync((async () => {
      // held until the copy is done: the prune of a job beside this one (a cron run's) keeps it
      const hold = options.dryRun === true ? undefined : await holdForRestore(job, options.from, snapshot.name)
      try {
        // a prune that came between the listing and the hold
        if (hold !== undefined && (await options.from.stat(snapshot.path)).map((s) => s === undefined).unwrapOr(false)) {
          return err(bbError('SNAPSHOT_NOT_FOUND', `${snapshot.name} was deleted at ${formatLocation(options.from.location)} as this restore began (by a prune that ran meanwhile)`,
            'bbackup list shows the backups there are: restore one of them', { at: formatLocation(options.from.location), snapshot: snapshot.name }))
        }
        return await job.driver
          .restore({
            from: options.from, snapshot, subpath: options.subpath ?? '', to: options.to, dryRun: options.dryRun ?? false, signal: options.signal,
            ...(options.writable === true ? { writable: true } : {}),
            ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
          })
          .map((r) => ({ snapshot: snapshot.name, commands: r.commands }))
      } finally {
        await hold?.release()
      }
    })()),
  )

/**
 * Compares a backup (the newest by default) with the source as it is now, by checksum. Changes made
 * to the source since the backup show up as differences.
 */
export const verify = (job: Job, options: { readonly at?: Transport; readonly snapshot?: string; readonly signal?: AbortSignal } = {}): ResultAsync<VerifyOutcome, BbError> => {
  const at = options.at ?? job.targets[0]
  if (at === undefined) return new ResultAsync(Promise.resolve(err(bbError('INVALID_OPTIONS', 'the job has no target to verify', 'name a target'))))
  return findSnapshot(job, at, options.snapshot, { signal: options.signal }).andThen((snapshot) =>
    job.driver.verify({ source: job.source, target: at, snapshot, signal: options.signal }),
  )
}

export interface SnapshotDiff {
  readonly at: string
  readonly from: string
  readonly to: string
  /** the changes by path */
  readonly entries: readonly DiffEntry[]
  readonly counts: Readonly<Record<DiffEntry['change'], number>>
  /** bytes of file data written by the added and changed files */
  readonly bytes: number
}

/** the complete snapshot of the same source just before `to` in the snapshots `all` listed at `at` */
const before = (at: Transport, all: readonly SnapshotInfo[], to: SnapshotInfo, side: 'source' | 'target'): Result<SnapshotInfo, BbError> => {
  const timed = (s: SnapshotInfo): { name: string; time: Date; sequence: number } | undefined => {
    const p = parseSnapshotName(s.name)
    return p === undefined || s.time === undefined ? undefined : { name: s.name, time: s.time, sequence: p.sequence }
  }
  const self = timed(to)
  const prefix = parseSnapshotName(to.name)?.prefix
  let found: { s: SnapshotInfo; t: NonNullable<ReturnType<typeof timed>> } | undefined
  for (const s of self === undefined ? [] : all) {
    const t = timed(s)
    if (!s.complete || t === undefined || self === undefined || parseSnapshotName(s.name)?.prefix !== prefix || compareSnapshots(t, self) >= 0) continue
    if (found === undefined || compareSnapshots(t, found.t) > 0) found = { s, t }
  }
  return found === undefined
    ? err(bbError('SNAPSHOT_NOT_FOUND', `${to.name} is the oldest complete ${side === 'source' ? 'snapshot' : 'backup'} of its source at ${formatLocation(at.location)}: nothing before it to compare with`,
      'name the two to compare: bbackup diff PLACE FROM TO (bbackup list PLACE shows them)', { at: formatLocation(at.location), snapshot: to.name }))
    : ok(found.s)
}

/**
 * What changed from one snapshot to another at one place (a target, or with `side: 'source'` a
 * source's snapshot folder): `to` defaults to the newest, `from` to the one before it. Drivers
 * without {@link Driver.diff} (block) are refused.
 * @example
 * diff(job, { at: job.targets[0] }).map((d) => d.entries.filter((e) => e.change === 'deleted'))
 */
export const diff = (
  job: Job,
  options: {
    readonly at?: Transport; readonly from?: string; readonly to?: string; readonly side?: 'source' | 'target'
    /** `latest` means the newest of any source, as long as the place holds one source's snapshots only */
    readonly anyPrefix?: boolean; readonly signal?: AbortSignal
  } = {},
): ResultAsync<SnapshotDiff, BbError> => {
  const at = options.at ?? job.targets[0]
  const driver = job.driver
  if (at === undefined) return errAsync(bbError('INVALID_OPTIONS', 'the job has no target to compare backups at', 'name a target'))
  if (driver.diff === undefined) {
    return errAsync(bbError('INVALID_OPTIONS', `the ${driver.name} driver cannot tell what changed between two backups`,
      'diff compares btrfs snapshots and rsync backups; restore the two and compare them', { driver: driver.name }))
  }
  const side = options.side ?? 'target'
  const compare = driver.diff.bind(driver)
  const pick = { anyPrefix: options.anyPrefix ?? false, side }
  return driver.listSnapshots({ at, signal: options.signal, ...(side === 'source' ? { side } : {}) }).andThen((all) =>
    pickSnapshot(job, at, all, options.to, pick).andThen((to) =>
      (options.from === undefined ? before(at, all, to, side) : pickSnapshot(job, at, all, options.from, pick)).map((from) => ({ from, to }))))
    .andThen(({ from, to }) => {
      if (from.name === to.name) {
        return errAsync(bbError('INVALID_OPTIONS', `${from.name} is compared with itself`, 'name two different snapshots: bbackup diff PLACE FROM TO', { snapshot: from.name }))
      }
      return compare({ at, from, to, signal: options.signal }).map((entries) => {
        const counts = { added: 0, deleted: 0, modified: 0, renamed: 0, metadata: 0 }
        let bytes = 0
        for (const e of entries) {
          counts[e.change]++
          bytes += e.bytes ?? 0
        }
        return { at: formatLocation(at.location), from: from.name, to: to.name, entries, counts, bytes }
      })
    })
}
