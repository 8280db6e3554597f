import { okAsync, type ResultAsync } from 'neverthrow'
import type { Transport } from '../transport/transport.js'
import { readStateFile, writeStateFile, type JournalError } from './journal.js'

/**
 * Per target, the newest source snapshot it is known to hold: the parent of its next incremental.
 * Kept beside the journal so that the source can be pruned while a target is offline without
 * losing that parent (btrbk prunes nothing then; see reference/btrfs.md §4 #3).
 */
export interface Pins {
  readonly version: 1
  /** target (as `formatLocation` prints it) → snapshot name */
  readonly pins: Readonly<Record<string, string>>
}

const EMPTY: Pins = { version: 1, pins: {} }

/** Reads the pins; a missing file is none, a damaged one an error (it protects parents). */
export const readPins = (transport: Transport, path: string): ResultAsync<Pins, JournalError> =>
  readStateFile(transport, path, 'pin file', EMPTY, (v) => typeof v['pins'] === 'object' && v['pins'] !== null, 'move it aside and run again: the next run pins each reachable target anew')

/** Records that `target` holds `snapshot` (unchanged pins are not rewritten). */
export const pinSnapshot = (transport: Transport, path: string, target: string, snapshot: string): ResultAsync<Pins, JournalError> =>
  readPins(transport, path).andThen((p) => {
    if (p.pins[target] === snapshot) return okAsync(p)
    const next: Pins = { version: 1, pins: { ...p.pins, [target]: snapshot } }
    return writeStateFile(transport, path, next)
  })

/** Drops the pins of `targets` (targets that are gone for good); the file is rewritten only when one was there. */
export const unpinTargets = (transport: Transport, path: string, targets: readonly string[]): ResultAsync<Pins, JournalError> =>
  readPins(transport, path).andThen((p) => {
    const pins = Object.fromEntries(Object.entries(p.pins).filter(([target]) => !targets.includes(target)))
    if (Object.keys(pins).length === Object.keys(p.pins).length) return okAsync(p)
    const next: Pins = { version: 1, pins }
    return writeStateFile(transport, path, next)
  })
