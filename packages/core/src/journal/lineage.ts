import { okAsync, type ResultAsync } from 'neverthrow'
import type { SnapshotInfo } from '../driver/driver.js'
import type { Transport } from '../transport/transport.js'
import { readStateFile, writeStateFile, type JournalError } from './journal.js'

/**
 * Per target, which of the backups there are this job's, by the uuid each was received from (its
 * source snapshot's). A name says only the prefix: several sources may give the same one (every
 * host's `/home` is `home.*`), and a job must not weigh, let alone delete, another's backups. Kept
 * beside the journal; a target's list grows with what the job sends and shrinks with what it prunes.
 */
export interface Lineage {
  readonly version: 1
  /** target (as `formatLocation` prints it) → the received uuids of this job's backups there */
  readonly targets: Readonly<Record<string, readonly string[]>>
}

const EMPTY: Lineage = { version: 1, targets: {} }

/** Reads the lineage; a missing file is an empty one, a damaged one an error (it keeps other jobs' backups safe). */
export const readLineage = (transport: Transport, path: string): ResultAsync<Lineage, JournalError> =>
  readStateFile(transport, path, 'lineage file', EMPTY, (v) => typeof v['targets'] === 'object' && v['targets'] !== null,
    'move it aside and run again: each target\'s backups are then taken as the job\'s where the target holds a copy of a source snapshot')

/** the uuid a target's copy of a snapshot is received from: a snapshot that was itself received passes its own received uuid on */
const streamUuid = (s: SnapshotInfo): string | undefined => s.identity?.receivedUuid ?? s.identity?.uuid

/**
 * The uuids of this job's backups at a target, as they are known after this look at it: what the
 * lineage says, and every copy of a snapshot the source still has. A target the lineage has no
 * word of is taken as it is when it holds such a copy (the job sent there before it kept a
 * lineage, or adopts a tool's backups: all of them with the job's prefix are its own); when it
 * holds none, none of what is there is the job's (another source's with the same prefix, or its
 * own from before its snapshots were all gone: left alone either way). What is no longer there is
 * no longer known.
 */
export const knownAt = (lineage: Lineage, target: string, source: readonly SnapshotInfo[], backups: readonly SnapshotInfo[]): string[] => {
  const uuids = new Set(source.flatMap((s) => streamUuid(s) ?? []))
  const copies = backups.flatMap((b) => (b.identity?.receivedUuid !== undefined && uuids.has(b.identity.receivedUuid) ? [b.identity.receivedUuid] : []))
  const recorded = lineage.targets[target]
  const present = new Set(backups.flatMap((b) => b.identity?.receivedUuid ?? []))
  // what is gone from there (pruned by hand) is no longer recorded
  const adopted = recorded?.filter((u) => present.has(u)) ?? (copies.length > 0 ? [...present] : [])
  return [...new Set([...adopted, ...copies])]
}

/**
 * The backups (named as the job's) that are its own by {@link knownAt}, and the `others`. Backups
 * without an identity (rsync's) are told by their name alone: all the job's.
 */
export const ofThisJob = (known: readonly string[], backups: readonly SnapshotInfo[]): { readonly ours: SnapshotInfo[]; readonly others: SnapshotInfo[] } => {
  const set = new Set(known)
  const ours: SnapshotInfo[] = []
  const others: SnapshotInfo[] = []
  for (const b of backups) {
    const uuid = b.identity?.receivedUuid
    if (b.identity === undefined || (uuid !== undefined && set.has(uuid))) ours.push(b)
    else others.push(b)
  }
  return { ours, others }
}

/** Sets a target's list to `next` of what is recorded; an unchanged list is not rewritten. */
export const recordLineage = (transport: Transport, path: string, target: string, next: (recorded: readonly string[] | undefined) => readonly string[]): ResultAsync<Lineage, JournalError> =>
  readLineage(transport, path).andThen((l) => {
    const before = l.targets[target]
    const after = [...new Set(next(before))].sort()
    if (before !== undefined && before.length === after.length && [...before].sort().every((u, i) => u === after[i])) return okAsync(l)
    const updated: Lineage = { version: 1, targets: { ...l.targets, [target]: after } }
    return writeStateFile(transport, path, updated)
  })

/** the uuids backups are received from, to add to or take from a target's list */
export const receivedUuids = (snapshots: readonly SnapshotInfo[]): string[] => snapshots.flatMap((s) => s.identity?.receivedUuid ?? [])

/** the uuids that copies of these source snapshots are received from */
export const sentUuids = (snapshots: readonly SnapshotInfo[]): string[] => snapshots.flatMap((s) => streamUuid(s) ?? [])

/** What a run, a prune and status say of the backups named as the job's that are not its own; undefined when there are none. */
export const othersNote = (others: readonly SnapshotInfo[]): string | undefined => {
  if (others.length === 0) return undefined
  const names = others.length <= 3 ? others.map((o) => o.name).join(', ') : `${others[0]?.name ?? ''} … ${others.at(-1)?.name ?? ''}`
  return `${others.length === 1 ? 'a backup here is' : `${others.length} backups here are`} named as this job's (${names}) but not ${others.length === 1 ? 'a copy' : 'copies'} of its source's snapshots: `
    + 'another source\'s with the same prefix, or this source\'s from before its snapshots were all gone; this job neither counts nor deletes them '
    + '(give each source its own prefix with -p, and delete by hand what is no one\'s)'
}
