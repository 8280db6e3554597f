import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '@bb/core'

/**
 * A path inside a backup, as restore's `--path` gives it: normalised, without leading or trailing
 * slashes ('' for all of it). A path with `..` is refused: restore never reads outside the backup.
 * @example
 * backupSubpath('/alice//thesis.tex/') // ok('alice/thesis.tex')
 */
export const backupSubpath = (subpath: string): Result<string, BbError> => {
  if (subpath.split('/').includes('..')) return err(bbError('INVALID_OPTIONS', `the path ${subpath} leaves the backup`, 'name a path inside the backup, without ..'))
  return ok(posix.normalize(`/${subpath}`).slice(1).replace(/\/+$/, ''))
}
