import { execa } from 'execa'
import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, stderrTail, STDERR_TAIL_CHARS, type CommandResult, type ExecOptions, type TransportError } from '@bb/core'

/** Debian packages that carry the commands bbackup runs, for the hint of TOOL_MISSING. */
const PACKAGES: Readonly<Record<string, string>> = { rsync: 'rsync', btrfs: 'btrfs-progs', ssh: 'openssh-client', sync: 'coreutils' }

/** The most stdout kept when no line handler reads it; more than that is a bug in the caller. */
const STDOUT_LIMIT = 16 * 1024 * 1024

/**
 * Runs argv without a shell and resolves with how it ended. Output is read from the pipes as it
 * comes (never handed to execa's buffering), stderr keeps only its tail, and the signal cancels
 * the process with SIGTERM, then SIGKILL after 5 s.
 */
export const execCommand = (argv: readonly string[], options: ExecOptions = {}): ResultAsync<CommandResult, TransportError> => {
  const [file, ...args] = argv
  if (file === undefined) return errAsync(bbError('COMMAND_FAILED', 'an empty command was given', 'this is a bug in bbackup; please report it'))
  return new ResultAsync((async (): Promise<Result<CommandResult, TransportError>> => {
    const child = execa(file, args, {
      reject: false,
      buffer: false,
      stdin: 'ignore',
      forceKillAfterDelay: 5000,
      ...(options.signal === undefined ? {} : { cancelSignal: options.signal }),
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      ...(options.env === undefined ? {} : { env: options.env }),
    })
    let stdout = ''
    let pending = ''
    let stderr = ''
    child.stdout?.setEncoding('utf8')
    child.stderr?.setEncoding('utf8')
    child.stdout?.on('data', (chunk: string) => {
      if (options.onStdoutLine === undefined) {
        if (stdout.length < STDOUT_LIMIT) stdout += chunk
        return
      }
      pending += chunk
      const lines = pending.split(/[\r\n]/)
      pending = lines.pop() ?? ''
      for (const line of lines) if (line !== '') options.onStdoutLine(line)
    })
    child.stderr?.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-2 * STDERR_TAIL_CHARS)
    })
    const result = await child
    if (pending !== '') options.onStdoutLine?.(pending)
    const context = { argv: [...argv], stderr: stderrTail(stderr) }
    if (result.isCanceled || options.signal?.aborted === true) {
      return err(bbError('CANCELLED', `${file} was cancelled`, 'run again when ready; unfinished work is resumed or cleaned up by the next run', context))
    }
    if (result.exitCode === undefined) {
      const code = (result.cause as NodeJS.ErrnoException | undefined)?.code
      if (code === 'ENOENT') {
        const pkg = PACKAGES[file]
        return err(bbError('TOOL_MISSING', `${file} is not installed (or not on PATH)`, pkg === undefined ? `install ${file}` : `install it: apt-get install ${pkg}`, context))
      }
      if (result.signal !== undefined) {
        return err(bbError('COMMAND_FAILED', `${file} was killed by ${result.signal}`, 'see whether something (the OOM killer, an admin) stopped it, then run again', context))
      }
      return err(bbError('COMMAND_FAILED', `${file} could not be started: ${result.shortMessage}`, 'check the command and its permissions', context))
    }
    return ok({ argv, exitCode: result.exitCode, stdout, stderr: stderrTail(stderr) })
  })())
}
