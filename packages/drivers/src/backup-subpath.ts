import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError, type EntryStat, type Transport } from '@bb/core'

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

/**
 * What `sub` (a {@link backupSubpath}) is in the backup at `top` on `at`, found without
 * following a symbolic link on the way: a link inside the backup (`a -> /etc`) would have `a/passwd`
 * read from the host as it is now, not from the backup, so a path through one is refused. The
 * path itself may be a link: it is restored as one.
 */
export const findInBackup = async (at: Transport, top: string, sub: string, backup: string): Promise<Result<EntryStat, BbError>> => {
  const parts = sub.split('/')
  for (let i = 1; i < parts.length; i++) {
    const through = parts.slice(0, i).join('/')
    const step = await at.stat(posix.join(top, through))
    if (step.isErr()) return err(step.error)
    if (step.value === undefined) break
    if (step.value.kind === 'symlink') {
      const target = (await at.readlink(posix.join(top, through))).unwrapOr(undefined)
      return err(bbError('INVALID_OPTIONS', `${through} is a symbolic link in backup ${backup}${target === undefined ? '' : ` (to ${target})`}: ${sub} through it is not in the backup`,
        `restore the link itself (--path ${through}), or give the path it stands for inside the backup`, { path: posix.join(top, through), ...(target === undefined ? {} : { target }) }))
    }
  }
  const found = await at.stat(posix.join(top, sub))
  if (found.isErr()) return err(found.error)
  if (found.value === undefined) {
    // bytes that are not UTF-8 reach a Node program as U+FFFD, and diff and verify show them as \xHH: such a name cannot be given
    const notUtf8 = (part: string): boolean => part.includes('\uFFFD') || /\\x[0-9a-f]{2}/i.test(part)
    const first = parts.findIndex(notUtf8)
    const holder = parts.slice(0, first).join('/')
    return err(bbError('NOT_FOUND', `${sub} is not in backup ${backup}`, first >= 0
      ? `a name whose bytes are not UTF-8 (shown as \\xHH) cannot be given to --path: restore the directory that holds it${holder === '' ? ' (all of the backup: no --path)' : ` (--path ${holder})`}`
      : 'look inside the backup (bbackup list shows where it is) and give a path relative to its top', { path: posix.join(top, sub) }))
  }
  return ok(found.value)
}
