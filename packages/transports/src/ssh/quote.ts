import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '@bb/core'

/**
 * Quotes one argument for a POSIX shell: wrapped in single quotes, each `'` written as `'\''`.
 * Inside single quotes sh expands nothing (`$`, backquotes, `\`, newlines are literal), so every
 * string without a NUL byte comes out of the remote shell exactly as it went in. NUL cannot be
 * passed in an argv at all, so it is refused by {@link remoteCommand}, never quoted.
 * @example
 * shQuote("it's") // "'it'\\''s'"
 */
export const shQuote = (arg: string): string => (/^[A-Za-z0-9_@%+:,./-]+$/.test(arg) && !arg.startsWith('-') ? arg : `'${arg.replaceAll("'", "'\\''")}'`)

/**
 * The one place where an argv becomes the command string that ssh hands to the remote user's
 * shell (ssh joins its arguments with spaces, and the remote shell splits them again). Every
 * argument is quoted by {@link shQuote}; an argument with a NUL byte is refused.
 *
 * Quoting keeps a hostile name from becoming shell syntax, but not from becoming an option of the
 * command: callers pass paths as absolute paths or after `--`, never as the first free argument.
 */
export const remoteCommand = (argv: readonly string[]): Result<string, BbError<'INVALID_OPTIONS'>> => {
  if (argv.length === 0) return err(bbError('INVALID_OPTIONS', 'an empty remote command was given', 'this is a bug in bbackup; please report it'))
  const bad = argv.find((a) => a.includes('\0'))
  if (bad !== undefined) {
    return err(bbError('INVALID_OPTIONS', `a remote argument contains a NUL byte: ${JSON.stringify(bad)}`, 'rename the file or directory: no command line can carry a NUL byte', { argument: bad }))
  }
  return ok(argv.map(shQuote).join(' '))
}

/**
 * One request line for the command server (remote-protocol's `SERVE`): the command as
 * {@link remoteCommand} quotes it, with each newline (which shQuote only ever leaves inside single
 * quotes) written as `'"$n"'`: the quote closes, the server's `$n` (a newline) is expanded inside
 * double quotes, the quote opens again. The server's `eval` then sees the same words.
 * @example
 * serveLine(['stat', 'a\nb']) // ok("stat 'a'\"$n\"'b'")
 */
export const serveLine = (argv: readonly string[]): Result<string, BbError<'INVALID_OPTIONS'>> =>
  remoteCommand(argv).map((command) => command.replaceAll('\n', `'"$n"'`))
