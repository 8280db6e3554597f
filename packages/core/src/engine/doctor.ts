import { posix } from 'node:path'
import type { BbError } from '../errors.js'
import { readJournal } from '../journal/journal.js'
import { formatLocation } from '../location/location.js'
import { journalPath, lockPath, notMadeYet, type Job } from './job.js'
import { gib, LOW_SPACE_SHARE, spaceAt } from './space.js'
import { retentionFits } from './prune.js'

/** One check of a setup: what was looked at, what was found, and for a problem how to fix it. */
export interface Finding {
  readonly ok: boolean
  readonly what: string
  readonly detail: string
  /** for a problem: how to fix it */
  readonly fix?: string
}

const found = (what: string, detail: string): Finding => ({ ok: true, what, detail })
const problem = (what: string, detail: string, fix: string): Finding => ({ ok: false, what, detail, fix })
const fromError = (what: string, e: BbError): Finding => problem(what, `${e.message} (${e.code})`, e.hint)


/**
 * Checks every prerequisite of a job without running it: the source as its driver needs it (the
 * tool and its version, the filesystem, permissions), the state directory, its lock and journal,
 * and each target (reachable, the right filesystem, the tools there, free space). Each finding
 * says what is wrong and how to fix it. Like a run's start, the driver may create a missing
 * target directory whose parent exists.
 * @example
 * const findings = await checkJob(job)
 * for (const f of findings.filter((f) => !f.ok)) console.log(`${f.what}: ${f.detail}\n  fix: ${f.fix}`)
 */
export const checkJob = async (job: Job, options: { readonly signal?: AbortSignal } = {}): Promise<Finding[]> => {
  const { signal } = options
  const findings: Finding[] = []
  const source = formatLocation(job.source.location)
  const probed = await job.driver.probe({ source: job.source, targets: [], signal })
  findings.push(probed.isErr() ? fromError(`source ${source}`, probed.error) : found(`source ${source}`, `ready for the ${job.driver.name} driver`))
  const retention = retentionFits(job)
  if (retention.isErr()) findings.push(fromError('retention', retention.error))

  const state = job.state.directory
  const made = await job.state.transport.mkdir(state, { recursive: true })
  if (made.isErr()) findings.push(fromError(`state ${state}`, made.error))
  else {
    const journal = await readJournal(job.state.transport, journalPath(job))
    const lock = await job.state.transport.inspectLock(lockPath(job))
    if (journal.isErr()) findings.push(fromError(`state ${state}`, journal.error))
    else if (lock.isErr()) findings.push(fromError(`state ${state}`, lock.error))
    else {
      const pending = journal.value.entries.length
      const holder = lock.value?.info === undefined || lock.value.verdict.stale ? 'not locked' : `locked by pid ${lock.value.info.pid} on ${lock.value.info.host} since ${lock.value.info.startedAt}`
      findings.push(found(`state ${state}`, `${pending === 0 ? 'no unfinished transfer' : `${pending} unfinished transfer${pending === 1 ? '' : 's'} (the next run finishes or removes them)`}; ${holder}`))
    }
  }

  for (const target of job.targets) {
    const where = `target ${formatLocation(target.location)}`
    const reachable = await job.driver.probe({ source: job.source, targets: [target], signal })
    if (reachable.isErr()) {
      findings.push(fromError(where, reachable.error))
      continue
    }
    // the probe makes no directory for a check: a new target (its parent fit) is measured at its parent
    const absent = target.filesOnly !== true && (await notMadeYet(target))
    const room = await spaceAt(target, signal, absent ? posix.dirname(target.location.path) : target.location.path)
    const ready = absent ? 'ready (the first backup makes the directory)' : 'ready'
    if (room === undefined) findings.push(found(where, `${ready} (free space unknown there)`))
    else if (room.free < room.size * LOW_SPACE_SHARE) {
      findings.push(problem(where, `only ${gib(room.free)} free of ${gib(room.size)}`, 'make room: prune old backups (bbackup prune, with a tighter --keep-backups), or move the backups to a bigger disk'))
    } else findings.push(found(where, `${ready}; ${gib(room.free)} free of ${gib(room.size)}`))
  }
  return findings
}
