import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError, type ExecOptions, type Transport } from '@bb/core'

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

/** whether rsync failed because the other host has none (its shell said `rsync: not found`) */
export const rsyncMissingThere = (stderr: string): boolean => /\brsync: (command )?not found/.test(stderr)
