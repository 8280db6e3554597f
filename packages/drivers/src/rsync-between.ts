import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, retryWhileDaemonBusy, type BbError, type CommandResult, type ExecOptions, type Transport, type TransportError } from '@bb/core'

/**
 * Where rsync runs between two places: on the side that is this host, naming the other side as
 * `host:path` (its `rsyncEndpoint`). rsync cannot copy between two other hosts, so that is refused.
 */
export const rsyncHost = (a: Transport, b: Transport): Result<Transport, BbError> => {
  if (a.location.kind === 'local') return ok(a)
  if (b.location.kind === 'local') return ok(b)
  return err(bbError('UNSUPPORTED', 'rsync cannot copy between two other hosts through this one', 'run bbackup on the source host or on the target host, so that one side is local'))
}

/** How rsync between two endpoints runs: with their environment, and their stdin (a daemon's password). */
export const endpointIo = (src: ReturnType<Transport['rsyncEndpoint']>, dst: ReturnType<Transport['rsyncEndpoint']>, signal: AbortSignal | undefined): ExecOptions => {
  const env = { ...src.env, ...dst.env }
  const input = (src.input ?? dst.input)?.()
  return { ...(signal === undefined ? {} : { signal }), ...(Object.keys(env).length === 0 ? {} : { env }), ...(input === undefined ? {} : { input }) }
}

/**
 * Runs rsync between two endpoints on `runner` (see {@link rsyncHost}); again, shortly, while an
 * rsync daemon at either end turns it away at its module's "max connections" (nothing was copied
 * then, and a slot frees when a connection ends).
 */
export const execBetween = (runner: Transport, argv: readonly string[], options: ExecOptions): ResultAsync<CommandResult, TransportError> =>
  new ResultAsync(retryWhileDaemonBusy(async () => await runner.exec(argv, options), (r) => (r.isOk() ? r.value.stderr : undefined), { signal: options.signal }))

/** whether rsync failed because the other host has none (its shell said `rsync: not found`) */
export const rsyncMissingThere = (stderr: string): boolean => /\brsync: (command )?not found/.test(stderr)
