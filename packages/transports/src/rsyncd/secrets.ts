import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { bbError, ioError, type BbError } from '@bb/core'
import { err, ok, ResultAsync, type Result } from 'neverthrow'

export type SecretsError = BbError<'INSECURE_SECRETS' | 'NOT_FOUND' | 'IO_FAILED' | 'DISK_FULL'>

/**
 * Checks a password file as rsync does, and a little stricter, before any connection: opened
 * without following a symlink, then the open file must be a regular file owned by the caller (or
 * root) that neither group nor others may read or write (reference/reliability.md §2.4). Gives
 * the file's text, read from that same open file (rsync takes the password from it as it would
 * from the file).
 * @example
 * await checkPasswordFile('/etc/bbackup/nas.secret') // err INSECURE_SECRETS when mode is 0644
 */
export const checkPasswordFile = (path: string): ResultAsync<string, SecretsError> =>
  new ResultAsync((async (): Promise<Result<string, SecretsError>> => {
    const fix = `chown ${process.geteuid?.() ?? 0} ${path}; chmod 600 ${path}`
    let handle
    try {
      handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === 'ELOOP') {
        return err(bbError('INSECURE_SECRETS', `the password file ${path} is a symlink; a password is read only from the file itself`, 'give the path of the real file (readlink -f shows it)', { path }))
      }
      if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
        return err(bbError('NOT_FOUND', `the password file ${path} does not exist`, `put the module's password alone in it, readable by you only: umask 077; echo 'THE-PASSWORD' > ${path} (or set RSYNC_PASSWORD instead)`, { path }))
      }
      return err(ioError('read the password file', path)(cause))
    }
    try {
      const s = await handle.stat()
      const euid = process.geteuid?.() ?? 0
      if (!s.isFile()) return err(bbError('INSECURE_SECRETS', `the password file ${path} is not a regular file`, 'put the password alone in a regular file with mode 0600', { path }))
      if (s.uid !== euid && s.uid !== 0) return err(bbError('INSECURE_SECRETS', `the password file ${path} belongs to uid ${s.uid}, not to you (uid ${euid}) or root`, fix, { path }))
      if ((s.mode & 0o077) !== 0) {
        return err(bbError('INSECURE_SECRETS', `the password file ${path} may be read or written by group or others (mode ${(s.mode & 0o777).toString(8).padStart(4, '0')})`, fix, { path }))
      }
      return ok(await handle.readFile('utf8'))
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
        return err(bbError('NOT_FOUND', `the password file ${path} does not exist`, `put the module's password alone in it, readable by you only: umask 077; echo 'THE-PASSWORD' > ${path} (or set RSYNC_PASSWORD instead)`, { path }))
      }
      return err(ioError('read the password file', path)(cause))
    } finally {
      await handle.close()
    }
  })())
