import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { join, posix } from 'node:path'
import { bbError, type BbError } from '@bb/core'
import { err, ok, ResultAsync, type Result } from 'neverthrow'

/**
 * What an rsync daemon tells a module's `pre-xfer exec` or `post-xfer exec` (rsyncd.conf(5)):
 * the request and its arguments only before the transfer, the exit status only after it. Both see
 * the same `RSYNC_PID`, which ties them together.
 */
export type RsyncdHookEnv =
  | { readonly phase: 'pre-xfer'; readonly connection: RsyncdConnection; readonly args: readonly string[] }
  | { readonly phase: 'post-xfer'; readonly connection: RsyncdConnection; readonly exitStatus: number }

export interface RsyncdConnection {
  readonly module: string
  readonly modulePath: string
  readonly pid: string
  readonly hostAddr: string
  readonly user: string
}

/**
 * What a connection asked the daemon for, written by the pre-xfer exec for the post-xfer exec to
 * read: an upload (the client sends, the daemon receives) and where it went, relative to the module.
 */
export interface RsyncdTicket extends RsyncdConnection {
  readonly upload: boolean
  /** an upload's one destination, relative to the module, normalized ('' = the module's top) */
  readonly destination?: string
  readonly at: string
}

/**
 * The hook's view of its environment, or undefined when not run by an rsync daemon's pre-xfer or
 * post-xfer exec.
 * @example
 * const hook = readRsyncdHookEnv(process.env)
 */
export const readRsyncdHookEnv = (env: Readonly<Record<string, string | undefined>>): RsyncdHookEnv | undefined => {
  const { RSYNC_MODULE_NAME: module, RSYNC_MODULE_PATH: modulePath, RSYNC_PID: pid } = env
  if (module === undefined || modulePath === undefined || pid === undefined || !/^\d+$/.test(pid)) return undefined
  const connection = { module, modulePath, pid, hostAddr: env.RSYNC_HOST_ADDR ?? '', user: env.RSYNC_USER_NAME ?? '' }
  if (env.RSYNC_EXIT_STATUS !== undefined) {
    const exitStatus = Number(env.RSYNC_EXIT_STATUS)
    return { phase: 'post-xfer', connection, exitStatus: Number.isInteger(exitStatus) ? exitStatus : -1 }
  }
  if (env.RSYNC_REQUEST === undefined) return undefined
  const args: string[] = []
  for (let i = 1; env[`RSYNC_ARG${i}`] !== undefined; i++) args.push(env[`RSYNC_ARG${i}`] as string)
  return { phase: 'pre-xfer', connection, args }
}

/**
 * The ticket of a pre-xfer exec: `RSYNC_ARG1..` are the server's options, `.`, then the paths
 * (module name stripped). An upload is a `--server` without `--sender`, with one path.
 */
export const ticketOf = (hook: Extract<RsyncdHookEnv, { phase: 'pre-xfer' }>, now: Date = new Date()): RsyncdTicket => {
  const dot = hook.args.indexOf('.')
  const options = dot < 0 ? hook.args : hook.args.slice(0, dot)
  const paths = dot < 0 ? [] : hook.args.slice(dot + 1)
  const upload = options.includes('--server') && !options.includes('--sender') && paths.length === 1
  const raw = paths[0] ?? ''
  const normalized = posix.normalize(`/${raw}`).slice(1).replace(/\/$/, '')
  // a path that climbs out (rsyncd sanitizes them, but the hook does not rely on that) is no destination
  const destination = upload && !raw.split('/').includes('..') ? normalized : undefined
  return { ...hook.connection, upload: destination !== undefined, ...(destination === undefined ? {} : { destination }), at: now.toISOString() }
}

const ticketPath = (dir: string, pid: string): string => join(dir, `${pid}.json`)
const DAY_MS = 24 * 3600 * 1000

/**
 * Writes the connection's ticket (atomically) and removes tickets older than two days, which a
 * daemon killed before its post-xfer exec left behind.
 */
export const writeTicket = (dir: string, ticket: RsyncdTicket): ResultAsync<void, BbError> =>
  ResultAsync.fromPromise((async () => {
    await mkdir(dir, { recursive: true, mode: 0o700 })
    const file = ticketPath(dir, ticket.pid)
    await writeFile(`${file}.tmp`, `${JSON.stringify(ticket)}\n`, { mode: 0o600 })
    await rename(`${file}.tmp`, file)
    for (const name of await readdir(dir)) {
      if (!/^\d+\.json$/.test(name)) continue
      const s = await stat(join(dir, name)).catch(() => undefined)
      if (s !== undefined && Date.now() - s.mtimeMs > 2 * DAY_MS) await unlink(join(dir, name)).catch(() => undefined)
    }
  })(), (e) => bbError('IO_FAILED', `could not record the transfer in ${dir}: ${(e as Error).message}`, 'check that the daemon\'s user can write there (--state-dir)'))

/**
 * The ticket its pre-xfer exec wrote for this connection, or an error that says the pre-xfer exec
 * is missing. A ticket of another connection that had the same pid is not taken.
 */
export const readTicket = (dir: string, connection: RsyncdConnection): ResultAsync<RsyncdTicket, BbError> =>
  ResultAsync.fromSafePromise(readFile(ticketPath(dir, connection.pid), 'utf8').then((t) => t, () => undefined)).andThen((text): Result<RsyncdTicket, BbError> => {
    const missing = bbError('NOT_FOUND', `no record of what connection ${connection.pid} to module ${connection.module} asked for in ${dir}`,
      'run the same command as the module\'s pre-xfer exec too (bbackup doctor rsyncd --server-side prints both lines), with the same --state-dir')
    if (text === undefined) return err(missing)
    try {
      const ticket = JSON.parse(text) as RsyncdTicket
      const same = ticket.module === connection.module && ticket.modulePath === connection.modulePath && ticket.hostAddr === connection.hostAddr && ticket.user === connection.user
      return same ? ok(ticket) : err(missing)
    } catch {
      return err(missing)
    }
  })
