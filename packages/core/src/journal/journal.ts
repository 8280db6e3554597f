import { errAsync, okAsync, type ResultAsync } from 'neverthrow'
import { bbError, type BbError } from '../errors.js'
import type { Transport, TransportError } from '../transport/transport.js'

/**
 * One transfer that was started and not yet verified complete: btrfs-backup's
 * `.outstanding_transfers`. While it is here, neither its snapshot nor its parent is pruned, and
 * the next run first lets the driver deal with what it left at the target.
 */
export interface JournalEntry {
  /** the target, as `formatLocation` prints it */
  readonly target: string
  readonly snapshot: string
  /** the snapshot the transfer was incremental against */
  readonly parent?: string
  /** where the unfinished copy lives at the target */
  readonly partialPath: string
  readonly startedAt: string
  /**
   * the identity of the snapshot sent, where the driver has one (btrfs: its uuid, and the one it
   * was itself received from): a copy that carries it was made by this transfer
   */
  readonly sent?: { readonly uuid: string; readonly receivedUuid?: string }
}

export interface Journal {
  readonly version: 1
  readonly entries: readonly JournalEntry[]
}

export type JournalError = TransportError | BbError<'JOURNAL_CORRUPT'>

const EMPTY: Journal = { version: 1, entries: [] }

/**
 * One of the job's small JSON state files (`{ "version": 1, … }`: the journal, the pins, the
 * lineage). A missing file is `empty`; one that does not parse or has not the shape (`fits`) is
 * JOURNAL_CORRUPT, never silently emptied: it may be all that protects what it records.
 */
export const readStateFile = <T>(transport: Transport, path: string, kind: string, empty: T, fits: (value: Record<string, unknown>) => boolean, hint: string): ResultAsync<T, JournalError> =>
  transport.readFile(path).andThen((text): ResultAsync<T, JournalError> => {
    if (text === undefined) return okAsync(empty)
    try {
      const value = JSON.parse(text) as unknown
      if (typeof value === 'object' && value !== null && (value as Record<string, unknown>)['version'] === 1 && fits(value as Record<string, unknown>)) return okAsync(value as T)
    } catch {
      // reported below
    }
    return errAsync(bbError('JOURNAL_CORRUPT', `the ${kind} ${path} is not a bbackup ${kind}`, hint, { path }))
  })

/** Writes a state file whole (temp, fsync, rename), and gives back what it wrote. */
export const writeStateFile = <T>(transport: Transport, path: string, value: T): ResultAsync<T, JournalError> =>
  transport.writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`).map(() => value)

/** Reads the journal; a missing file is an empty journal. */
export const readJournal = (transport: Transport, path: string): ResultAsync<Journal, JournalError> =>
  readStateFile(transport, path, 'journal', EMPTY, (v) => Array.isArray(v['entries']), 'move it aside and run again; check the targets for *.partial copies by hand')

const write = writeStateFile<Journal>

/** Writes an entry down before its transfer starts (replacing one for the same target and snapshot). */
export const addJournalEntry = (transport: Transport, path: string, entry: JournalEntry): ResultAsync<Journal, JournalError> =>
  readJournal(transport, path).andThen((j) =>
    write(transport, path, { version: 1, entries: [...j.entries.filter((e) => !(e.target === entry.target && e.snapshot === entry.snapshot)), entry] }),
  )

/** Clears an entry once its transfer is verified complete, or its leftovers are dealt with. */
export const removeJournalEntry = (transport: Transport, path: string, match: { readonly target: string; readonly snapshot: string }): ResultAsync<Journal, JournalError> =>
  readJournal(transport, path).andThen((j) => {
    const entries = j.entries.filter((e) => !(e.target === match.target && e.snapshot === match.snapshot))
    return entries.length === j.entries.length ? okAsync(j) : write(transport, path, { version: 1, entries })
  })
