import { err, ok, ResultAsync, type Result } from 'neverthrow'
import type { RecoverAction } from '../driver/driver.js'
import type { BbError } from '../errors.js'
import { readJournal, removeJournalEntry, type JournalEntry } from '../journal/journal.js'
import { formatLocation } from '../location/location.js'
import { parseSnapshotName } from '../names/snapshot-name.js'
import type { Transport } from '../transport/transport.js'
import { journalPath, type Job, type RunOptions } from './job.js'
import { connectHosts, withJobLock } from './prune.js'

/** What {@link clean} did at one target. */
export interface CleanResult {
  /** the target, as its location prints */
  readonly at: string
  /** the unfinished copies removed (in a dry run: those that would be) */
  readonly removed: readonly string[]
  /** unfinished copies left where they are, each with why (the next run continues it; it is not an unfinished receive) */
  readonly kept: readonly { readonly name: string; readonly why: string }[]
  /** this target could not be cleaned (offline, not listable); the others were cleaned all the same */
  readonly error?: BbError
}

/**
 * btrbk's `clean`: removes what unfinished transfers left at the job's targets, also those the
 * journal no longer records (forgotten with `--remove-locks`, or made by a run whose state was
 * lost), which a run leaves alone (`STRAY_SUBVOLUME`). Only copies named as the job's that the
 * driver itself calls unfinished: at a btrfs target a writable subvolume without a received uuid
 * (a read-only one, or one received whole, is kept and said why), a raw target's `.part` file (a
 * stream without its sidecar only where the journal names it); an rsync `.partial` is kept, as the
 * next run continues it. Their
 * journal entries are dropped with them. Under the job's lock, so that no run of the job is
 * receiving there; another program receiving into the same target is not seen.
 * @example
 * clean(job, { dryRun: true }).map((results) => results.flatMap((r) => r.removed))
 */
export const clean = (job: Job, options: RunOptions = {}): ResultAsync<CleanResult[], BbError> => {
  connectHosts(job.targets, options.signal)
  return new ResultAsync(withJobLock(job, options, async () => {
    const results: CleanResult[] = []
    for (const target of job.targets) {
      const r = await cleanAt(job, target, options)
      results.push(r.isOk() ? r.value : { at: formatLocation(target.location), removed: [], kept: [], error: r.error })
    }
    return ok(results)
  }))
}

const cleanAt = async (job: Job, target: Transport, options: RunOptions): Promise<Result<CleanResult, BbError>> => {
  const where = formatLocation(target.location)
  const dryRun = options.dryRun === true
  const listed = await job.driver.listSnapshots({ at: target, side: 'target', signal: options.signal })
  if (listed.isErr()) return err(listed.error)
  const journal = await readJournal(job.state.transport, journalPath(job))
  if (journal.isErr()) return err(journal.error)
  const recorded = journal.value.entries.filter((e) => e.target === where)
  const prefix = job.prefix ?? ''
  // unfinished copies named as the job's (its prefix, a readable time) that no entry records: where its transfers put them
  const unrecorded = listed.value
    .filter((s) => !s.complete && parseSnapshotName(s.name)?.prefix === prefix && !recorded.some((e) => e.snapshot === s.name))
    .map((s): JournalEntry => ({ target: where, snapshot: s.name, partialPath: job.driver.partialPath({ target, snapshot: s.name }), startedAt: '' }))
  const removed: string[] = []
  const kept: { name: string; why: string }[] = []
  for (const entry of [...recorded, ...unrecorded]) {
    const r = await job.driver.recover({ target, entry, dryRun, ...(recorded.includes(entry) ? {} : { unrecorded: true }) })
    if (r.isErr()) {
      // not an unfinished copy after all (a read-only subvolume someone put there): never ours to delete
      if (r.error.code === 'STRAY_SUBVOLUME') {
        kept.push({ name: entry.snapshot, why: `${r.error.message}: not bbackup's to delete (look at it, and delete it yourself if it is not wanted)` })
        continue
      }
      return err(r.error)
    }
    const why = keptBecause(r.value, recorded.includes(entry))
    if (why !== undefined) kept.push({ name: entry.snapshot, why })
    if (r.value === 'removed') {
      removed.push(entry.snapshot)
      options.onEvent?.({ type: 'recovered', target: where, snapshot: entry.snapshot, action: 'removed' })
    }
    if (r.value !== 'resume' && recorded.includes(entry) && !dryRun) {
      const cleared = await removeJournalEntry(job.state.transport, journalPath(job), entry)
      if (cleared.isErr()) return err(cleared.error)
    }
  }
  return ok({ at: where, removed, kept })
}

/** why an unfinished copy was not removed; undefined when it was, or nothing of it was left */
const keptBecause = (action: RecoverAction, recorded: boolean): string | undefined => {
  if (action === 'resume') return 'the next run continues it'
  // listed as unfinished, but not by its form one of this job's (a raw stream without its sidecar, a .part of another compression)
  if (action === 'gone' && !recorded) return "unfinished, but no transfer on record left it, and its form does not say bbackup did: not bbackup's to delete (look at it, and delete it yourself if it is not wanted)"
  return undefined
}
