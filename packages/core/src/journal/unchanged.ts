import type { ResultAsync } from 'neverthrow'
import type { Transport } from '../transport/transport.js'
import { readStateFile, writeStateFile, type JournalError } from './journal.js'

/**
 * When a run last found the source unchanged since its newest snapshot (a driver that snapshots
 * only on change, btrbk's `snapshot_create onchange`): a backup of that snapshot was current then,
 * however old the snapshot is. Kept beside the journal; `status` ages such a backup from `checkedAt`.
 */
export interface UnchangedCheck {
  readonly version: 1
  /** the source's newest snapshot, which the source still held */
  readonly snapshot: string
  readonly checkedAt: string
}

/** Reads the record of the last run that found the source unchanged; undefined when there is none. */
export const readUnchangedCheck = (transport: Transport, path: string): ResultAsync<UnchangedCheck | undefined, JournalError> =>
  readStateFile<UnchangedCheck | undefined>(transport, path, 'record of the last unchanged source', undefined,
    (v) => typeof v['snapshot'] === 'string' && typeof v['checkedAt'] === 'string' && !Number.isNaN(Date.parse(v['checkedAt'])),
    'delete it: the next run that finds the source unchanged writes it again')

/** Records that the source held what `snapshot` holds at `at`. */
export const recordUnchanged = (transport: Transport, path: string, snapshot: string, at: Date): ResultAsync<UnchangedCheck, JournalError> =>
  writeStateFile<UnchangedCheck>(transport, path, { version: 1, snapshot, checkedAt: at.toISOString() })
