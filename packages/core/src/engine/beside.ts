import { err, ok, type Result } from 'neverthrow'
import { posix } from 'node:path'
import { bbError, type BbError } from '../errors.js'
import { readJournal } from '../journal/journal.js'
import { readPins } from '../journal/pins.js'
import type { Job } from './job.js'

/** A source snapshot another job keeps: the parent of its target's next incremental, or one its unfinished transfer needs. */
export interface HeldBeside {
  /** the other job's state directory */
  readonly job: string
  readonly target: string
  readonly snapshot: string
  readonly why: 'pin' | 'pending' | 'pending-parent'
}

/**
 * What the jobs whose state lives beside this one's (the same directory of job states:
 * /var/lib/bbackup/jobs by default) keep of the snapshots named `names`: each one's pins and
 * unfinished transfers. Two jobs of one source with the same prefix share its snapshot folder
 * (`bbackup run /home /mnt/a` and `bbackup run /home nas:/b` from two cron lines are two jobs,
 * each with its own state), and one's prune must not take what the other's next incremental or
 * pending transfer needs. A job whose state lives elsewhere (`--state-dir` in another directory)
 * is not seen. A pin or journal there that cannot be read is an error: it may protect a parent.
 */
export const heldBeside = async (job: Job, names: ReadonlySet<string>): Promise<Result<HeldBeside[], BbError>> => {
  const { transport } = job.state
  // as the job's own is spelled when listed beside the others ('state/' and 'state' are one)
  const directory = posix.normalize(job.state.directory).replace(/(.)\/+$/, '$1')
  const root = posix.dirname(directory)
  const listed = await transport.list(root)
  if (listed.isErr()) return listed.error.code === 'NOT_FOUND' ? ok([]) : err(listed.error)
  const held: HeldBeside[] = []
  for (const entry of listed.value) {
    const dir = posix.join(root, entry.name)
    if (entry.kind !== 'directory' || dir === directory) continue
    const pins = await readPins(transport, posix.join(dir, 'pins.json'))
    if (pins.isErr()) return err(unreadable(dir, pins.error))
    for (const [target, snapshot] of Object.entries(pins.value.pins)) held.push({ job: dir, target, snapshot, why: 'pin' })
    const journal = await readJournal(transport, posix.join(dir, 'journal.json'))
    if (journal.isErr()) return err(unreadable(dir, journal.error))
    for (const e of journal.value.entries) {
      held.push({ job: dir, target: e.target, snapshot: e.snapshot, why: 'pending' })
      if (e.parent !== undefined) held.push({ job: dir, target: e.target, snapshot: e.parent, why: 'pending-parent' })
    }
  }
  return ok(held.filter((h) => names.has(h.snapshot)))
}

/** another job's state that cannot be read: the source is not pruned (what it holds is not known), and the error says whose */
const unreadable = (dir: string, e: BbError): BbError =>
  bbError(e.code, `another job's state beside this one's cannot be read, so the source's snapshots it may need are not known: ${e.message}`,
    `${e.hint} (that is the other job's state, in ${dir}; a directory there that is no job's state: move it out of the directory of job states)`, { ...e.details, path: dir })

/** why a snapshot {@link heldBeside} is kept, as a prune's reason says it */
export const heldReason = (h: HeldBeside): string =>
  h.why === 'pin' ? `the newest snapshot ${h.target} holds for another job (${h.job}): its next incremental's parent`
    : h.why === 'pending' ? `a pending transfer of another job (${h.job}) to ${h.target} needs it`
      : `parent of a pending transfer of another job (${h.job}) to ${h.target}`
