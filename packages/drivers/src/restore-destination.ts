import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, statFollowing, type BbError, type Transport } from '@bb/core'

/**
 * The nearest of `path` and its parents that exists (what it is), and the ones below it that do
 * not, outermost first. A path under a file cannot be looked at (ENOTDIR): the file is found further up.
 */
export const nearestExisting = async (at: Transport, path: string): Promise<Result<{ readonly at: string; readonly kind: 'directory' | 'other'; readonly missing: readonly string[] }, BbError>> => {
  const missing: string[] = []
  let failed: BbError | undefined
  for (let here = path; ;) {
    // a symbolic link to a directory is that directory; one to nothing is not one
    const s = await statFollowing(at, here)
    if (s.isErr()) failed ??= s.error
    else if (s.value !== undefined && s.value.kind !== 'directory') return ok({ at: here, kind: 'other', missing })
    else if (s.value !== undefined) return failed === undefined ? ok({ at: here, kind: 'directory', missing }) : err(failed)
    else missing.unshift(here)
    const up = posix.dirname(here)
    if (up === here) return failed === undefined ? ok({ at: here, kind: 'directory', missing }) : err(failed)
    here = up
  }
}

/**
 * A restore goes into a directory, new or existing: a destination that is a file, or under one, is
 * TARGET_UNAVAILABLE. The nearest directory that exists, and the missing ones below it, are returned.
 */
export const restoreDirectory = async (to: Transport): Promise<Result<{ readonly at: string; readonly missing: readonly string[] }, BbError>> => {
  const dest = to.location.path
  const found = await nearestExisting(to, dest)
  if (found.isErr()) return err(found.error)
  const { at, missing } = found.value
  if (found.value.kind !== 'directory') {
    return err(bbError('TARGET_UNAVAILABLE', `the restore destination ${at === dest ? dest : `${dest} is under ${at}, which`} is not a directory`, 'give a directory (new, or empty) to restore into', { path: at }))
  }
  return ok({ at, missing })
}
