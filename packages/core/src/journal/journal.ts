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
}

export interface Journal {
  readonly version: 1
  readonly entries: readonly JournalEntry[]
}

export type JournalError = TransportError | BbError<'JOURNAL_CORRUPT'>

const EMPTY: Journal = { version: 1, entries: [] }

/**
 * Reads the journal; a missing file is an empty journal. A file that does not parse is an error,
 * never silently emptied: it may be all that protects a partial transfer.
 */
export const readJournal = (transport: Transport, path: string): ResultAsync<Journal, JournalError> =>
  transport.readFile(path).andThen((text): ResultAsync<Journal, JournalError> => {
    if (text === undefined) return okAsync(EMPTY)
    try {
      const value = JSON.parse(text) as Journal
      if (value.version === 1 && Array.isArray(value.entries)) return okAsync(value)
    } catch {
      // reported below
    }
    return errAsync(bbError('JOURNAL_CORRUPT', `the journal ${path} is not a bbackup journal`, `move it aside and run again; check the targets for *.partial copies by hand`, { path }))
  })

const write = (transport: Transport, path: string, journal: Journal): ResultAsync<Journal, JournalError> =>
  transport.writeFileAtomic(path, `${JSON.stringify(journal, null, 2)}\n`).map(() => journal)

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
