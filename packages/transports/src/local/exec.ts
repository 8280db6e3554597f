import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { delimiter } from 'node:path'
import { err, errAsync, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, stderrTail, STDERR_TAIL_CHARS, type CommandResult, type ExecOptions, type RunningCommand, type SpawnOptions, type TransportError } from '@bb/core'

/** Debian packages that carry the commands bbackup runs, for the hint of TOOL_MISSING. */
const PACKAGES: Readonly<Record<string, string>> = { rsync: 'rsync', btrfs: 'btrfs-progs', ssh: 'openssh-client', sync: 'coreutils', zstd: 'zstd', sudo: 'sudo', rbd: 'ceph-common' }

/**
 * Where a system keeps its administration tools (`blockdev`, `filefrag`, `cryptsetup`, `fsfreeze`),
 * which cron's PATH (`/usr/bin:/bin`) and an ordinary user's lack.
 */
export const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'] as const

/**
 * `path` with the {@link SYSTEM_DIRS} it lacks appended: a program found in what `path` names still
 * wins. Undefined (no PATH at all) stays undefined.
 * @example
 * withSystemDirs('/usr/bin:/bin') // '/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin'
 */
export const withSystemDirs = (path: string | undefined): string | undefined => {
  if (path === undefined) return undefined
  const have = new Set(path.split(delimiter))
  const missing = SYSTEM_DIRS.filter((dir) => !have.has(dir))
  return missing.length === 0 ? path : [...(path === '' ? [] : [path]), ...missing].join(delimiter)
}

/**
 * The environment of a command started here: this process's, `extra` over it, and a PATH that
 * also has the {@link SYSTEM_DIRS}, so that a job run from cron (or by a user) finds the tools a
 * root login finds, and passes the same PATH on to what its commands start (a hook's own tools).
 */
export const commandEnv = (extra?: Readonly<Record<string, string>>): NodeJS.ProcessEnv => {
  const env = extra === undefined ? { ...process.env } : { ...process.env, ...extra }
  const path = withSystemDirs(env.PATH)
  if (path !== undefined) env.PATH = path
  return env
}

/** The hint of a command that was cancelled, here or on another host. */
export const CANCELLED_HINT = 'run again when ready; unfinished work is resumed or cleaned up by the next run'

/** The most stdout kept when no line handler reads it; more than that is a bug in the caller. */
const STDOUT_LIMIT = 16 * 1024 * 1024

/** How long a cancelled command has after SIGTERM before SIGKILL. */
const KILL_AFTER_MS = 5000

/**
 * Descriptors that every command started here inherits (as its fd 3, 4, …): the lock files this
 * process holds open. A command that outlives a killed run so keeps the run's lock held (see
 * `heldOpenBy` of judgeLock), and the next run does not resume beside it.
 */
const passedOn = new Set<number>()

/** Hands `fd` to every command started from now on, until the returned function is called. */
export const passToCommands = (fd: number): (() => void) => {
  passedOn.add(fd)
  return () => {
    passedOn.delete(fd)
  }
}

/**
 * Runs argv without a shell and resolves with how it ended. Output is read from the pipes as it
 * comes, stderr keeps only its tail, and the signal cancels the process with SIGTERM, then SIGKILL
 * after 5 s. `env` adds to this process's environment ({@link commandEnv}). Plain `child_process.spawn`: a backup run
 * is a dozen short commands, and execa's per-command work and its load time were a fifth of an
 * incremental btrfs run (measured with `node --cpu-prof`).
 */
export const execCommand = (argv: readonly string[], options: ExecOptions = {}): ResultAsync<CommandResult, TransportError> => {
  const [file, ...args] = argv
  if (file === undefined) return errAsync(bbError('COMMAND_FAILED', 'an empty command was given', 'this is a bug in bbackup; please report it'))
  if (options.signal?.aborted === true) return errAsync(bbError('CANCELLED', `${file} was cancelled before it started`, CANCELLED_HINT, { argv: [...argv] }))
  return new ResultAsync(new Promise<Result<CommandResult, TransportError>>((resolve) => {
    const child = spawn(file, args, {
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe', ...passedOn],
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      env: commandEnv(options.env),
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
    if (options.input !== undefined && child.stdin !== null) {
      // a command that exits without reading its input is judged by its exit code, not by EPIPE
      child.stdin.on('error', () => undefined)
      child.stdin.end(options.input)
    }
    const stopWatching = cancelOn(child, options.signal)
    ended(child, (code, signal, startError) => {
      stopWatching()
      if (pending !== '') options.onStdoutLine?.(pending)
      resolve(outcome(argv, { code, signal, startError, stdout, stderr, cancelled: options.signal?.aborted === true }))
    })
  }))
}

/** On `signal`: SIGTERM, then SIGKILL after {@link KILL_AFTER_MS}. Returns what stops watching. */
const cancelOn = (child: ChildProcess, signal: AbortSignal | undefined): (() => void) => {
  let killTimer: NodeJS.Timeout | undefined
  const onAbort = (): void => {
    child.kill('SIGTERM')
    killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS)
    killTimer.unref()
  }
  if (signal?.aborted === true) onAbort()
  else signal?.addEventListener('abort', onAbort, { once: true })
  return () => {
    signal?.removeEventListener('abort', onAbort)
    if (killTimer !== undefined) clearTimeout(killTimer)
  }
}

/** Calls back once the child has exited and its pipes are closed, or could not be started. */
const ended = (child: ChildProcess, then: (code: number | null, signal: NodeJS.Signals | null, startError: NodeJS.ErrnoException | undefined) => void): void => {
  let startError: NodeJS.ErrnoException | undefined
  child.once('error', (e: NodeJS.ErrnoException) => {
    startError = e
  })
  child.once('close', (code, signal) => then(code, signal, startError))
}

/** How a command ended, as bbackup reports it. */
const outcome = (argv: readonly string[], how: {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly startError: NodeJS.ErrnoException | undefined
  readonly stdout: string
  readonly stderr: string
  readonly cancelled: boolean
}): Result<CommandResult, TransportError> => {
  const file = argv[0] ?? ''
  const context = { argv: [...argv], stderr: stderrTail(how.stderr) }
  if (how.cancelled) return err(bbError('CANCELLED', `${file} was cancelled`, CANCELLED_HINT, context))
  if (how.startError?.code === 'ENOENT') {
    const pkg = PACKAGES[file]
    return err(bbError('TOOL_MISSING', `${file} is not installed (or not on PATH)`, pkg === undefined ? `install ${file}` : `install it: apt-get install ${pkg}`, context))
  }
  if (how.startError !== undefined) return err(bbError('COMMAND_FAILED', `${file} could not be started: ${how.startError.message}`, 'check the command and its permissions', context))
  if (how.code === null) {
    return err(bbError('COMMAND_FAILED', `${file} was killed by ${how.signal ?? 'a signal'}`, 'see whether something (the OOM killer, an admin) stopped it, then run again', { ...context, signal: how.signal ?? undefined }))
  }
  return ok({ argv, exitCode: how.code, stdout: how.stdout, stderr: stderrTail(how.stderr) })
}

/**
 * Marks the stdin of a {@link SpawnOptions.selfDelimited} command that is a channel its transport
 * goes on using (the ssh master's own session): a writer handed it leaves the parent's copy open.
 */
export const SHARED_CHANNEL: unique symbol = Symbol('bbackup.sharedChannel')

/** whether a stream is marked {@link SHARED_CHANNEL} */
export const isSharedChannel = (stream: object): boolean => (stream as { [SHARED_CHANNEL]?: boolean })[SHARED_CHANNEL] === true

/**
 * Starts argv with pipes for stdin and stdout that other commands take over (`btrfs send | btrfs
 * receive` without a shell and without copying through JavaScript). The parent's copy of a pipe it
 * hands on is closed at once, so that a reader that dies gives its writer SIGPIPE (not a
 * {@link SHARED_CHANNEL}'s: its reader stops at its input's end by itself).
 */
export const spawnCommand = (argv: readonly string[], options: SpawnOptions = {}, hooks: { readonly onStderr?: (chunk: string) => void } = {}): RunningCommand => {
  const [file, ...args] = argv
  if (file === undefined) {
    return {
      argv, pid: undefined, stdout: undefined, stdin: undefined, bytesWritten: async () => undefined, kill: () => undefined,
      done: errAsync(bbError('COMMAND_FAILED', 'an empty command was given', 'this is a bug in bbackup; please report it')),
    }
  }
  const stdout = options.stdout === 'pipe' ? 'pipe' : options.stdout === 'ignore' || options.stdout === undefined ? 'ignore' : options.stdout
  const child = spawn(file, args, { stdio: [options.stdin ?? 'ignore', stdout, 'pipe', ...passedOn], env: commandEnv() })
  if (typeof options.stdin === 'object') options.stdin.destroy()
  if (typeof options.stdout === 'object' && !isSharedChannel(options.stdout)) options.stdout.destroy()
  return runningCommand(child, argv, options, hooks)
}

/**
 * A started child as a {@link RunningCommand}: its stderr tail, its cancel, its outcome. `earlier`
 * is what it wrote on stderr before it was handed over (a session opened ahead of its command).
 */
export const runningCommand = (child: ChildProcess, argv: readonly string[], options: SpawnOptions, hooks: { readonly onStderr?: (chunk: string) => void } = {}, earlier = ''): RunningCommand => {
  let stderr = earlier.slice(-2 * STDERR_TAIL_CHARS)
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-2 * STDERR_TAIL_CHARS)
    hooks.onStderr?.(chunk)
  })
  // stderr ends when the process exits, before it is reaped: the last moment its counters can be read
  let finalBytes: { readonly written?: number; readonly read?: number } | undefined
  child.stderr?.once('end', () => {
    finalBytes = readIo(child.pid)
  })
  const exited = (): boolean => finalBytes !== undefined || child.exitCode !== null || child.signalCode !== null
  const stopWatching = cancelOn(child, options.signal)
  const done = new ResultAsync(new Promise<Result<CommandResult, TransportError>>((resolve) => {
    ended(child, (code, signal, startError) => {
      stopWatching()
      resolve(outcome(argv, { code, signal, startError, stdout: '', stderr, cancelled: options.signal?.aborted === true }))
    })
  }))
  return {
    argv,
    pid: child.pid,
    stdout: child.stdout ?? undefined,
    stdin: child.stdin ?? undefined,
    done,
    bytesWritten: async () => (exited() ? finalBytes : readIo(child.pid))?.written,
    bytesRead: async () => (exited() ? finalBytes : readIo(child.pid))?.read,
    kill: (signal: NodeJS.Signals = 'SIGTERM') => {
      child.kill(signal)
    },
  }
}

/** Bytes a process on this host has written and read (`wchar`, `rchar` of /proc/<pid>/io); undefined when they cannot be read. */
const readIo = (pid: number | undefined): { readonly written?: number; readonly read?: number } | undefined => {
  if (pid === undefined) return undefined
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8')
    const [written, read] = [/^wchar:\s*(\d+)/m.exec(io), /^rchar:\s*(\d+)/m.exec(io)]
    return { ...(written === null ? {} : { written: Number(written[1]) }), ...(read === null ? {} : { read: Number(read[1]) }) }
  } catch {
    return undefined
  }
}
