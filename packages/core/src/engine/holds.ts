import { createHash } from 'node:crypto'
import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '../errors.js'
import { formatLocation } from '../location/location.js'
import type { LockHandle, Transport } from '../transport/transport.js'
import { oneSpelling, type Job } from './job.js'

/**
 * Restores under way hold the backup they read: a lock file each, in the directory of job states
 * (`/var/lib/bbackup/jobs/.holds/<place>/`), beside the job's own state like {@link heldBeside}'s
 * jobs, so that the prune of any job whose state lives there (a cron run's) keeps what a restore
 * reads. A lock whose holder is gone (a killed restore: dead pid, earlier boot) holds nothing.
 */
const holdsOf = (job: Job, at: Transport): string => {
  const place = createHash('sha256').update(formatLocation({ ...at.location, path: oneSpelling(at.location.path) })).digest('hex').slice(0, 16)
  return posix.join(posix.dirname(oneSpelling(job.state.directory)), '.holds', place)
}

const HOLD = /^(.+)\.(\d+)\.hold$/

/** A hold (or the directory of holds) that cannot be read: it may hold what a restore reads. */
const unreadableHold = (path: string, cause: BbError): BbError =>
  bbError(cause.code, `the holds of restores under way (${path}) cannot be read: ${cause.message}`, cause.hint, cause.details)

/**
 * Holds `snapshot` at `at` for this process until the handle is released; undefined when the hold
 * cannot be written (a directory of job states this user may not write): the restore goes on
 * without it.
 */
export const holdForRestore = async (job: Job, at: Transport, snapshot: string): Promise<LockHandle | undefined> => {
  const dir = holdsOf(job, at)
  const made = await job.state.transport.mkdir(dir, { recursive: true })
  if (made.isErr()) return undefined
  const lock = await job.state.transport.lock(posix.join(dir, `${snapshot}.${process.pid}.hold`), { command: `restore of ${snapshot} from ${formatLocation(at.location)}` })
  return lock.isOk() ? lock.value : undefined
}

/** A snapshot a restore under way reads, and who: the restore as its hold names it. */
export interface RestoreHold {
  readonly snapshot: string
  readonly holder: string
}

/**
 * The snapshots at `at` that restores under way hold. The hold of a restore that is gone is
 * removed; one that cannot be read is an error (it may hold what a restore reads).
 */
export const heldByRestores = async (job: Job, at: Transport): Promise<Result<RestoreHold[], BbError>> => {
  const { transport } = job.state
  const dir = holdsOf(job, at)
  const listed = await transport.list(dir)
  if (listed.isErr()) return listed.error.code === 'NOT_FOUND' ? ok([]) : err(unreadableHold(dir, listed.error))
  const held: RestoreHold[] = []
  for (const entry of listed.value) {
    const m = HOLD.exec(entry.name)
    if (m === null || entry.kind !== 'file') continue
    const path = posix.join(dir, entry.name)
    const lock = await transport.inspectLock(path)
    if (lock.isErr()) return err(unreadableHold(path, lock.error))
    if (lock.value === undefined) continue
    if (lock.value.verdict.stale) {
      await transport.remove(path)
      continue
    }
    const info = lock.value.info
    held.push({ snapshot: m[1] ?? '', holder: info === undefined ? entry.name : `pid ${info.pid} on ${info.host}, since ${info.startedAt}` })
  }
  return ok(held)
}

export const restoreHoldReason = (h: RestoreHold): string => `a restore under way reads it (${h.holder})`
