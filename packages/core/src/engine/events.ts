import type { RecoverAction, TransferProgress } from '../driver/driver.js'
import type { BbError } from '../errors.js'

/** Progress of a run, through the one `onEvent` callback. The CLI renders these; a library user logs them. */
export type BackupEvent =
  | { readonly type: 'lock-taken-over'; readonly path: string; readonly reason: string }
  | { readonly type: 'recovered'; readonly target: string; readonly snapshot: string; readonly action: RecoverAction }
  /** `at`: where the new snapshot is, as its location prints; `of`: the other tool's snapshot it was made of (`Driver.adoptable`) */
  | { readonly type: 'snapshot-created'; readonly snapshot: string; readonly at: string; readonly of?: string }
  /** no snapshot was taken: the other tool that takes them has taken none since the last run (`Driver.adoptable`) */
  | { readonly type: 'no-new-snapshot'; readonly reason: string }
  /**
   * `from`: what is read, as its location prints (the source snapshot, or the live source for drivers
   * that copy it); `parentFrom`: the parent at the source an incremental is made against
   */
  | { readonly type: 'transfer-started'; readonly target: string; readonly snapshot: string; readonly mode: 'full' | 'incremental'; readonly parent?: string; readonly from: string; readonly parentFrom?: string }
  | ({ readonly type: 'transfer-progress'; readonly target: string; readonly snapshot: string } & TransferProgress)
  | { readonly type: 'transfer-finished'; readonly target: string; readonly snapshot: string; readonly bytes: number; readonly durationMs: number }
  | { readonly type: 'transfer-failed'; readonly target: string; readonly snapshot: string; readonly error: BbError }
  /** a transient failure (network, stall): the target is tried again after `delayMs`; `attempt` of `of` retries */
  | { readonly type: 'retrying'; readonly target: string; readonly attempt: number; readonly of: number; readonly delayMs: number; readonly error: BbError }
  /** `path`: the deleted snapshot's own location, as it prints */
  | { readonly type: 'pruned'; readonly at: string; readonly snapshot: string; readonly reasons: readonly string[]; readonly path: string }
  | { readonly type: 'warning'; readonly message: string }
