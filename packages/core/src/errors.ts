/**
 * Every expected failure in bbackup is one of these plain, readonly objects: a stable `code`
 * (documented in docs/errors.md), a `message` that states the problem in the user's terms, a
 * `hint` that says what to do, and `details` for context (path, argv, exit code, stderr tail).
 * They serialise to JSON as they are and compare with `toEqual` in tests.
 */
export type ErrorCode =
  | 'INVALID_LOCATION'
  | 'INVALID_POLICY'
  | 'RETENTION_WOULD_DELETE_ALL'
  | 'RETENTION_WOULD_DELETE_MANY'
  | 'INVALID_OPTIONS'
  | 'LOCK_HELD'
  | 'LOCK_FAILED'
  | 'JOURNAL_CORRUPT'
  | 'IO_FAILED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'COMMAND_FAILED'
  | 'TOOL_MISSING'
  | 'CANCELLED'
  | 'DISK_FULL'
  | 'TRANSFER_INCOMPLETE'
  | 'SOURCE_UNAVAILABLE'
  | 'TARGET_UNAVAILABLE'
  | 'SNAPSHOT_NOT_FOUND'
  | 'UNSUPPORTED'
  | 'JOB_NOT_FOUND'
  | 'SOURCE_NOT_SUBVOLUME'
  | 'TARGET_NOT_BTRFS'
  | 'STRAY_SUBVOLUME'
  | 'FULL_SEND_REFUSED'
  | 'PERMISSION_DENIED'
  | 'TOOL_TOO_OLD'
  | 'HOSTKEY_UNKNOWN'
  | 'HOSTKEY_CHANGED'
  | 'AUTH_FAILED'
  | 'NETWORK_FAILED'
  | 'STALLED'
  | 'NO_CONSISTENT_SNAPSHOT'
  | 'TARGET_NO_REFLINK'
  | 'REVISION_DISTRUSTED'
  | 'CORRUPT_DATA'
  | 'INSECURE_SECRETS'
  | 'HOOK_FAILED'
  | 'TARGET_IN_USE'
  | 'SNAPSHOT_BUSY'

/** Context carried by an error. Values are small: a stderr tail, never a whole stream. */
export type ErrorDetails = Readonly<Record<string, string | number | boolean | readonly string[] | undefined>>

export interface BbError<C extends ErrorCode = ErrorCode> {
  readonly code: C
  readonly message: string
  readonly hint: string
  readonly details?: ErrorDetails
}

/**
 * Builds a {@link BbError}.
 * @example
 * bbError('NOT_FOUND', 'source /srv/data does not exist', 'check the path, or create it')
 */
export const bbError = <C extends ErrorCode>(
  code: C,
  message: string,
  hint: string,
  details?: ErrorDetails,
): BbError<C> => (details === undefined ? { code, message, hint } : { code, message, hint, details })

/**
 * What to do about a request that a key's forced command (bbackup-remote) refused, by its reason:
 * a path outside the key's directories wants another `--restrict-path`, a role it lacks another
 * `--role`.
 * @example
 * refusalHint('the path "/srv/new", which is outside /srv/backups') // 'let the key reach that path: …'
 */
export const refusalHint = (reason: string): string =>
  (/^the path .*, which (?:is|leads) outside /.test(reason)
    ? "let the key reach that path: add its directory to the key's authorized_keys line there (another --restrict-path DIR of bbackup-remote), or back up into a directory the key has; see docs/transports/ssh.md"
    : 'give the key the role this needs in its authorized_keys line (bbackup-remote --role ...), or use a key that has it; see docs/transports/ssh.md')

/** The longest stderr tail an error keeps, in characters. */
export const STDERR_TAIL_CHARS = 4000

/** The last {@link STDERR_TAIL_CHARS} characters of a process's stderr, trimmed. */
export const stderrTail = (stderr: string): string => stderr.slice(-STDERR_TAIL_CHARS).trim()

/**
 * Thrown (never returned) when an invariant breaks: a bug in bbackup, not a failure of the
 * user's system. The CLI prints it as "internal error, please report".
 */
export class InternalError extends Error {
  override readonly name = 'InternalError'
}

/** Turns a Node fs error into an error that names the operation, the path and the fix. */
export const ioError = (operation: string, path: string) => (cause: unknown): BbError<'DISK_FULL' | 'NOT_FOUND' | 'IO_FAILED'> => {
  const e = cause as NodeJS.ErrnoException
  const details = { path, errno: e.code ?? 'unknown' }
  switch (e.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return bbError('DISK_FULL', `no space left to ${operation} ${path}`, 'free space on that filesystem (or prune old backups) and run again', details)
    case 'ENOENT':
      return bbError('NOT_FOUND', `cannot ${operation} ${path}: it does not exist`, 'check the path, or create its parent directory', details)
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return e.code === 'EROFS'
        ? bbError('IO_FAILED', `cannot ${operation} ${path}: the filesystem (or btrfs subvolume) is read-only`, 'write elsewhere: a read-only subvolume is a snapshot or a backup; a filesystem mounted read-only by itself has found errors (see dmesg)', details)
        : bbError('IO_FAILED', `cannot ${operation} ${path}: permission denied`, 'run as a user that may write there, or fix its permissions', details)
    default:
      return bbError('IO_FAILED', `cannot ${operation} ${path}: ${e.message}`, 'check the filesystem and run again', details)
  }
}
