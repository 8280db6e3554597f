import { err, ok, type Result } from 'neverthrow'
import { posix } from 'node:path'
import { bbError, type BbError } from '../errors.js'
import { readJournal } from '../journal/journal.js'
import { readPins } from '../journal/pins.js'
import { compareSnapshots, parseSnapshotName } from '../names/snapshot-name.js'
import { oneSpelling, type Job } from './job.js'

/**
 * A source snapshot another job keeps: the parent of its target's next incremental, one its
 * unfinished transfer needs, or one its run under way may send (`running`: newer than what its
 * targets hold; `holder`: the run, as its lock names it).
 */
export type HeldBeside = {
  /** the other job's state directory */
  readonly job: string
  readonly snapshot: string
} & ({ readonly why: 'pin' | 'pending' | 'pending-parent'; readonly target: string } | { readonly why: 'running'; readonly holder: string })

/**
 * What the jobs whose state lives beside this one's (the same directory of job states:
 * /var/lib/bbackup/jobs by default) keep of the snapshots named `names`: each one's pins and
 * unfinished transfers. Two jobs of one source with the same prefix share its snapshot folder
 * (`bbackup run /home /mnt/a` and `bbackup run /home nas:/b` from two cron lines are two jobs,
 * each with its own state), and one's prune must not take what the other's next incremental or
 * pending transfer needs; nor, while a run of the other holds its lock, a snapshot newer than the
 * oldest its targets hold (that run may be about to send it: it journals each transfer only as it
 * starts). A job whose state lives elsewhere (`--state-dir` in another directory) is not seen. A
 * pin, journal or lock there that cannot be read is an error: it may protect a parent.
 */
export const heldBeside = async (job: Job, names: ReadonlySet<string>): Promise<Result<HeldBeside[], BbError>> => {
  const { transport } = job.state
  // as the job's own is spelled when listed beside the others ('state/' and 'state' are one)
  const directory = oneSpelling(job.state.directory)
  const root = posix.dirname(directory)
  const listed = await transport.list(root)
  if (listed.isErr()) return listed.error.code === 'NOT_FOUND' ? ok([]) : err(listed.error)
  const held: HeldBeside[] = []
  for (const entry of listed.value) {
    const dir = posix.join(root, entry.name)
    // .holds: the holds of restores under way (holds.ts), no job
    if (entry.kind !== 'directory' || dir === directory || entry.name === '.holds') continue
    const pins = await readPins(transport, posix.join(dir, 'pins.json'))
    if (pins.isErr()) return err(unreadable(dir, pins.error))
    for (const [target, snapshot] of Object.entries(pins.value.pins)) held.push({ job: dir, target, snapshot, why: 'pin' })
    const journal = await readJournal(transport, posix.join(dir, 'journal.json'))
    if (journal.isErr()) return err(unreadable(dir, journal.error))
    for (const e of journal.value.entries) {
      held.push({ job: dir, target: e.target, snapshot: e.snapshot, why: 'pending' })
      if (e.parent !== undefined) held.push({ job: dir, target: e.target, snapshot: e.parent, why: 'pending-parent' })
    }
    const lock = await transport.inspectLock(posix.join(dir, 'lock'))
    if (lock.isErr()) return err(unreadable(dir, lock.error))
    if (lock.value !== undefined && !lock.value.verdict.stale) {
      const oldest = Object.values(pins.value.pins).sort(byName)[0]
      const holder = lock.value.info === undefined ? 'its lock' : `pid ${lock.value.info.pid} on ${lock.value.info.host}`
      for (const name of names) {
        if (oldest === undefined || byName(name, oldest) > 0) held.push({ job: dir, holder, snapshot: name, why: 'running' })
      }
    }
  }
  return ok(held.filter((h) => names.has(h.snapshot)))
}

/** two snapshots in the order their names tell; one whose name tells no time sorts after */
const byName = (a: string, b: string): number => {
  const x = parseSnapshotName(a)
  const y = parseSnapshotName(b)
  if (x === undefined || y === undefined) return (x === undefined ? 1 : 0) - (y === undefined ? 1 : 0)
  return compareSnapshots({ name: a, time: x.time, sequence: x.sequence }, { name: b, time: y.time, sequence: y.sequence })
}

/** another job's state that cannot be read: the source is not pruned (what it holds is not known), and the error says whose */
const unreadable = (dir: string, e: BbError): BbError =>
  bbError(e.code, `another job's state beside this one's cannot be read, so the source's snapshots it may need are not known: ${e.message}`,
    `${e.hint} (that is the other job's state, in ${dir}; a directory there that is no job's state: move it out of the directory of job states)`, { ...e.details, path: dir })

/** why a snapshot {@link heldBeside} is kept, as a prune's reason says it */
export const heldReason = (h: HeldBeside): string =>
  h.why === 'running' ? `a run of another job (${h.job}, ${h.holder}) is under way and may send it (newer than what that job's targets hold)`
    : h.why === 'pin' ? `the newest snapshot ${h.target} holds for another job (${h.job}): its next incremental's parent`
      : h.why === 'pending' ? `a pending transfer of another job (${h.job}) to ${h.target} needs it`
        : `parent of a pending transfer of another job (${h.job}) to ${h.target}`
