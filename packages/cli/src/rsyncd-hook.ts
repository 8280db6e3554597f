import { realpath } from 'node:fs/promises'
import { posix } from 'node:path'
import { bbError, defaultStateRoot, jobId, parseSnapshotName, prune, type BbError, type Job, type RetentionPolicy } from '@bb/core'
import { publishReceived, rsyncDriver } from '@bb/drivers/rsync'
import { localTransport } from '@bb/transports/local'
import { readTicket, ticketOf, writeTicket, type RsyncdHookEnv } from '@bb/transports/rsyncd'
import { err, ok, type Result } from 'neverthrow'
import { parseRetentionSpec } from './retention-spec.js'
import { SYSTEM_BACKUP_POLICY } from './system-backup.js'


export interface HookOptions {
  /** only backups uploaded directly into this directory (default: wherever in the module the upload went) */
  readonly location?: string
  /** where the tickets (and the prune's lock) live (default /var/lib/bbackup/rsyncd, ~/.local/state/bbackup/rsyncd when not root, or $BBACKUP_STATE_DIR/rsyncd) */
  readonly stateDir?: string
  readonly acceptPartial?: boolean
  readonly retention?: RetentionPolicy
  readonly timeZone?: string
  /** how many backups the prune may delete at once (the job's retention.maxDelete) */
  readonly maxDelete?: number | 'all'
}

export interface HookResult {
  /** what to print (stderr: rsyncd discards a hook's output, or keeps it in its journal under systemd) */
  readonly lines: readonly string[]
  readonly error?: BbError
}

const stateBase = (options: HookOptions): string => options.stateDir ?? posix.join(defaultStateRoot(), 'rsyncd')

/**
 * `bbackup snapshot` / `bbackup prune` as a daemon module's `pre-xfer exec` and `post-xfer exec`
 * (rsync-system-backup's server-side mode): before the transfer, what it is (a ticket keyed by
 * RSYNC_PID); after it, for an upload of a backup that a client sent with `-b`, `snapshot`
 * publishes it when the daemon's exit status says it succeeded, and `prune` applies retention to
 * its directory once it is published. Everything else (listings, markers) is left alone.
 */
export const runRsyncdHook = async (command: 'snapshot' | 'prune', hook: RsyncdHookEnv, options: HookOptions): Promise<HookResult> => {
  const base = stateBase(options)
  const tickets = posix.join(base, 'tickets')
  if (hook.phase === 'pre-xfer') {
    const written = await writeTicket(tickets, ticketOf(hook))
    return written.isErr() ? { lines: [], error: written.error } : { lines: [] }
  }
  const ticket = await readTicket(tickets, hook.connection)
  if (ticket.isErr()) return { lines: [], error: ticket.error }
  if (!ticket.value.upload || ticket.value.destination === undefined || ticket.value.destination === '') return { lines: [] }
  const modulePath = posix.normalize(hook.connection.modulePath).replace(/(.)\/$/, '$1')
  const uploaded = posix.join(modulePath, ticket.value.destination)
  const dir = posix.dirname(uploaded)
  const name = posix.basename(uploaded)
  if (options.location !== undefined && posix.normalize(options.location).replace(/(.)\/$/, '$1') !== dir) return { lines: [] }
  if (parseSnapshotName(name) === undefined) return { lines: [] }
  const real = await checkRealDirectory(modulePath, dir)
  if (real.isErr()) return { lines: [], error: real.error }
  const at = localTransport(dir)
  const who = `${dir}/${name}`
  if (command === 'snapshot') {
    const r = await publishReceived({ at, snapshot: name, exitStatus: hook.exitStatus, ...(options.acceptPartial === undefined ? {} : { acceptPartial: options.acceptPartial }) })
    if (r.isErr()) return { lines: [], error: r.error }
    switch (r.value.kind) {
      case 'not-a-backup':
        return { lines: [] }
      case 'failed':
        return { lines: [], error: bbError('TRANSFER_INCOMPLETE', `not published: ${who}: ${r.value.reason}`, 'nothing to do here: it stays marked unfinished, and the client\'s next run continues it') }
      case 'published':
        return {
          lines: [
            `published ${who}${r.value.health === 'ok' ? '' : ` (${r.value.health})`}`,
            ...r.value.warnings.map((w) => `warning: ${w}`),
            ...r.value.removedLeftovers.map((n) => `removed the unfinished copy ${dir}/${n}, which it continues`),
          ],
        }
    }
  }
  // prune: only after a backup was published there (never after a failed transfer)
  const listed = await rsyncDriver().listSnapshots({ at, side: 'target', signal: undefined })
  if (listed.isErr()) return { lines: [], error: listed.error }
  if (listed.value.find((s) => s.name === name)?.complete !== true) return { lines: [] }
  const prefix = parseSnapshotName(name)?.prefix ?? ''
  const source = localTransport(dir)
  const id = jobId(source, [at])
  const job: Job = {
    driver: rsyncDriver(),
    source,
    targets: [at],
    state: { transport: localTransport(base), directory: posix.join(base, 'jobs', id) },
    ...(prefix === '' ? {} : { prefix }),
    retention: {
      target: options.retention ?? parseRetentionSpec(SYSTEM_BACKUP_POLICY)._unsafeUnwrap(),
      ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }), ...(options.maxDelete === undefined ? {} : { maxDelete: options.maxDelete }),
    },
  }
  const pruned = await prune(job, { waitSeconds: 600 })
  if (pruned.isErr()) return { lines: [], error: pruned.error }
  // one place, the module's directory: its failure is the hook's
  const failed = pruned.value.find((p) => p.error !== undefined)?.error
  return { lines: pruned.value.flatMap((p) => p.deleted.map((n) => `deleted ${dir}/${n} (retention)`)), ...(failed === undefined ? {} : { error: failed }) }
}

/** the directory as named, with no symlink on the way: what a client uploaded is never followed out of the module */
const checkRealDirectory = async (modulePath: string, dir: string): Promise<Result<void, BbError>> => {
  const [realModule, real] = await Promise.all([realpath(modulePath).catch(() => undefined), realpath(dir).catch(() => undefined)])
  if (realModule !== undefined && real === posix.join(realModule, posix.relative(modulePath, dir))) return ok(undefined)
  return err(bbError('INVALID_OPTIONS', `${dir} is ${real === undefined ? 'gone' : `a symlink (to ${real})`}: a post-xfer exec follows no symlink in a module`,
    'give the module a path without symlinks, and have clients upload into plain directories'))
}
