import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { execa } from 'execa'
import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, stderrTail, STDERR_TAIL_CHARS, type CommandResult, type ExecOptions, type RunningCommand, type SpawnOptions, type TransportError } from '@bb/core'

/** Debian packages that carry the commands bbackup runs, for the hint of TOOL_MISSING. */
const PACKAGES: Readonly<Record<string, string>> = { rsync: 'rsync', btrfs: 'btrfs-progs', ssh: 'openssh-client', sync: 'coreutils', zstd: 'zstd', sudo: 'sudo' }

/** The hint of a command that was cancelled, here or on another host. */
export const CANCELLED_HINT = 'run again when ready; unfinished work is resumed or cleaned up by the next run'

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
      ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
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
      return err(bbError('CANCELLED', `${file} was cancelled`, CANCELLED_HINT, context))
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

/**
 * Starts argv with pipes for stdin and stdout that other commands take over (`btrfs send | btrfs
 * receive` without a shell and without copying through JavaScript). The parent's copy of a pipe it
 * hands on is closed at once, so that a reader that dies gives its writer SIGPIPE.
 */
export const spawnCommand = (argv: readonly string[], options: SpawnOptions = {}, hooks: { readonly onStderr?: (chunk: string) => void } = {}): RunningCommand => {
  const [file, ...args] = argv
  if (file === undefined) {
    return {
      argv, pid: undefined, stdout: undefined, stdin: undefined, bytesWritten: async () => undefined, kill: () => undefined,
      done: errAsync(bbError('COMMAND_FAILED', 'an empty command was given', 'this is a bug in bbackup; please report it')),
    }
  }
  const child = spawn(file, args, { stdio: [options.stdin ?? 'ignore', options.stdout === 'pipe' ? 'pipe' : 'ignore', 'pipe'] })
  if (typeof options.stdin === 'object') options.stdin.destroy()
  let stderr = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-2 * STDERR_TAIL_CHARS)
    hooks.onStderr?.(chunk)
  })
  // stderr ends when the process exits, before it is reaped: the last moment its counters can be read
  let finalBytes: number | undefined
  child.stderr?.once('end', () => {
    finalBytes = readWchar(child.pid)
  })
  let killTimer: NodeJS.Timeout | undefined
  const onAbort = (): void => {
    child.kill('SIGTERM')
    killTimer = setTimeout(() => child.kill('SIGKILL'), 5000)
    killTimer.unref()
  }
  if (options.signal?.aborted === true) onAbort()
  else options.signal?.addEventListener('abort', onAbort, { once: true })
  const done = new ResultAsync(new Promise<Result<CommandResult, TransportError>>((resolve) => {
    let startError: NodeJS.ErrnoException | undefined
    child.once('error', (e: NodeJS.ErrnoException) => {
      startError = e
    })
    child.once('close', (code, signal) => {
      options.signal?.removeEventListener('abort', onAbort)
      if (killTimer !== undefined) clearTimeout(killTimer)
      const context = { argv: [...argv], stderr: stderrTail(stderr) }
      if (options.signal?.aborted === true) {
        resolve(err(bbError('CANCELLED', `${file} was cancelled`, CANCELLED_HINT, context)))
      } else if (startError?.code === 'ENOENT') {
        const pkg = PACKAGES[file]
        resolve(err(bbError('TOOL_MISSING', `${file} is not installed (or not on PATH)`, pkg === undefined ? `install ${file}` : `install it: apt-get install ${pkg}`, context)))
      } else if (startError !== undefined) {
        resolve(err(bbError('COMMAND_FAILED', `${file} could not be started: ${startError.message}`, 'check the command and its permissions', context)))
      } else if (code === null) {
        resolve(err(bbError('COMMAND_FAILED', `${file} was killed by ${signal ?? 'a signal'}`, 'see whether something (the OOM killer, an admin) stopped it, then run again', context)))
      } else {
        resolve(ok({ argv, exitCode: code, stdout: '', stderr: stderrTail(stderr) }))
      }
    })
  }))
  return {
    argv,
    pid: child.pid,
    stdout: child.stdout ?? undefined,
    stdin: child.stdin ?? undefined,
    done,
    bytesWritten: async () => (finalBytes !== undefined || child.exitCode !== null || child.signalCode !== null ? finalBytes : readWchar(child.pid)),
    kill: (signal: NodeJS.Signals = 'SIGTERM') => {
      child.kill(signal)
    },
  }
}

/** Bytes a process on this host has written (`wchar` of /proc/<pid>/io); undefined when it cannot be read. */
const readWchar = (pid: number | undefined): number | undefined => {
  if (pid === undefined) return undefined
  try {
    const m = /^wchar:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))
    return m === null ? undefined : Number(m[1])
  } catch {
    return undefined
  }
}
