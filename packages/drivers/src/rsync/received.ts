import { posix } from 'node:path'
import { err, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import { parseSnapshotName, type BbError, type SnapshotInfo, type Transport } from '@bb/core'
import { RSYNC_EXIT_MEANINGS } from './exit-codes.js'
import { ACCEPTED_PARTIAL_WARNING, markerPath, META, PARTIAL, publishMarked, VANISHED_WARNING, type BackupRecord } from './rsync-driver.js'

const join = posix.join

export interface ReceivedInput {
  /** the directory of the backups, on this host (the daemon's side) */
  readonly at: Transport
  /** the name of the directory the transfer wrote, directly in `at` */
  readonly snapshot: string
  /** the daemon's exit status for that transfer (`$RSYNC_EXIT_STATUS`; -1 when it did not exit properly) */
  readonly exitStatus: number
  /** publish a transfer that ended with exit 23 (some files failed), marked `errors` */
  readonly acceptPartial?: boolean
}

export type ReceivedOutcome =
  /** published: the marker is gone, the record says how healthy it is */
  | { readonly kind: 'published'; readonly health: SnapshotInfo['health']; readonly warnings: readonly string[]; readonly removedLeftovers: readonly string[] }
  /** the transfer failed: left marked unfinished, never a backup (the client's next run continues it) */
  | { readonly kind: 'failed'; readonly reason: string }
  /** not an unfinished backup the rsync driver marked there (a listing, a marker or record upload, anything else) */
  | { readonly kind: 'not-a-backup' }

/**
 * The server's half of a backup that a client sent with `-b` (the rsync driver's
 * `serverPublishes`), run by the daemon module's `post-xfer exec` once the transfer is over:
 * publishes it (record, marker removed, `latest`) when the daemon's own exit status says the
 * transfer succeeded, and then removes older unfinished copies of the same job, which it was linked
 * from. A failed transfer is never published: rsync-system-backup snapshots it anyway.
 * @example
 * publishReceived({ at: localTransport('/srv/backups/laptop'), snapshot: '2026-11-24T05:00:00Z', exitStatus: 0 })
 */
export const publishReceived = (input: ReceivedInput): ResultAsync<ReceivedOutcome, BbError> => {
  const { at, snapshot } = input
  const dir = at.location.path
  const notABackup = { kind: 'not-a-backup' } as const
  if (snapshot.includes('/') || snapshot.startsWith('.') || parseSnapshotName(snapshot) === undefined) return okAsync(notABackup)
  // real directories only: a symlink planted by whoever can write the module is not followed
  return ResultAsync.combine([at.stat(join(dir, META)), at.stat(markerPath(dir, snapshot)), at.stat(join(dir, snapshot))]).andThen(([meta, marker, tree]) => {
    if (meta?.kind !== 'directory' || marker?.kind !== 'file' || tree?.kind !== 'directory') return okAsync(notABackup)
    const status = input.exitStatus
    const warnings: string[] = []
    let health: SnapshotInfo['health'] = 'ok'
    if (status === 24) {
      health = 'warnings'
      warnings.push(VANISHED_WARNING)
    } else if (status === 23 && input.acceptPartial === true) {
      health = 'errors'
      warnings.push(ACCEPTED_PARTIAL_WARNING)
    } else if (status !== 0) {
      const reason = status < 0 ? 'the transfer did not end properly (exit status -1)'
        : `the transfer ended with exit ${status} (${RSYNC_EXIT_MEANINGS[status] ?? 'an rsync error'})${status === 23 ? '; --accept-partial publishes such a backup marked with errors' : ''}`
      return okAsync({ kind: 'failed', reason } as const)
    }
    const record: BackupRecord = { health, rsyncExit: status, finishedAt: new Date().toISOString(), warnings, publishedBy: 'post-xfer exec' }
    return publishMarked(at, { dir, snapshot, record, resumedFrom: undefined })
      .andThen((latest) => removeLeftovers(at, snapshot).map((removedLeftovers) => ({ kind: 'published', health, warnings: latest === undefined ? warnings : [...warnings, latest], removedLeftovers } as const)))
  })
}

/**
 * Unfinished copies older than the backup just published, of the same job (prefix): what earlier
 * transfers left, which the client linked this one from. Only what the rsync driver marked.
 */
const removeLeftovers = (at: Transport, published: string): ResultAsync<string[], BbError> => {
  const dir = at.location.path
  const mine = parseSnapshotName(published)
  return at.list(join(dir, META)).andThen((entries) => {
    const older = entries
      .filter((e) => e.kind === 'file' && e.name.endsWith(PARTIAL))
      .map((e) => e.name.slice(0, -PARTIAL.length))
      .filter((name) => {
        const parsed = parseSnapshotName(name)
        return parsed !== undefined && mine !== undefined && parsed.prefix === mine.prefix && parsed.time.getTime() < mine.time.getTime()
      })
    const removeEach = async (): Promise<Result<string[], BbError>> => {
      for (const name of older) {
        const tree = await at.stat(join(dir, name))
        if (tree.isErr()) return err(tree.error)
        const r = await (tree.value?.kind === 'directory' ? at.remove(join(dir, name), { recursive: true }) : okAsync(undefined))
          .andThen(() => at.remove(markerPath(dir, name)))
        if (r.isErr()) return err(r.error)
      }
      return ok(older)
    }
    return new ResultAsync(removeEach())
  })
}
