import { constants } from 'node:os'
import { pipeline, type Readable, type Writable } from 'node:stream'
import { err, errAsync, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import {
  bbError, type CombinedResult, type CommandResult, type DirEntry, type EntryStat, type ExecOptions, type LockError, type RunningCommand, type SpawnOptions, type SshLocation, type Transport, type TransportError,
} from '@bb/core'
import { CANCELLED_HINT, execCommand, isSharedChannel, runningCommand, SHARED_CHANNEL, spawnCommand } from '../local/exec.js'
import { sshFailure } from './failure.js'
import { remoteCommand, serveLine } from './quote.js'
import { ABSENT, AS_ROOT, FILTERS, PID_TAG, RECORD_END, SCRIPTS, SPAWN_WRAPPER, STREAM_WRAPPER, SUDO_PROGRAMS, SYSTEM_PATH, type ScriptName } from './remote-protocol.js'
import type { ServedResult } from './serve.js'
import type { SshOptions, SshSession } from './session.js'

/** the spawn options of a command that the master's command server takes */
type ServedSpawn = Omit<SpawnOptions, 'compressStdout' | 'decompressStdin' | 'selfDelimited' | 'sharedStdout'>

/** what to do about a remote command that a signal ended */
const KILLED_HINT = 'see whether something on that host (the OOM killer, an admin) stopped it, then run again'

/** a signal's name by its number (SIGKILL for 9), undefined for none */
const signalName = (n: number): string | undefined => Object.entries(constants.signals).find(([, v]) => v === n)?.[0]

/** whole lines only (a chunk can end inside the number); a stream filter says a second pid after the wrapper's */
const PID_LINES = new RegExp(`^${PID_TAG}(\\d+)\\n`, 'gm')
/** in the stderr tail of a finished command, which is trimmed */
const PID_PREFIX = new RegExp(`^${PID_TAG}\\d+(\\n|$)`, 'gm')

const KINDS: Readonly<Record<string, EntryStat['kind']>> = { 'regular file': 'file', 'regular empty file': 'file', directory: 'directory', 'symbolic link': 'symlink' }
const FIND_KINDS: Readonly<Record<string, EntryStat['kind']>> = { f: 'file', d: 'directory', l: 'symlink' }

/**
 * The transport for a path on another host, over ssh. Commands run through the connection's
 * multiplexed master; every argument is quoted once, by {@link remoteCommand}. Locks and job state
 * stay on the host that runs bbackup, so `lock` here is refused.
 * @example
 * const session = openSshSession()
 * const target = sshTransport(parseLocation('backup@nas:/srv/backups')._unsafeUnwrap() as SshLocation, session, { identityFile: '/root/.ssh/backup' })
 */
export const sshTransport = (location: SshLocation, session: SshSession, options: SshOptions = {}): Transport => {
  const connection = session.connection(location, options)
  const sudo = options.sudo === true ? ['sudo', '-n', '--'] : []
  /** what runs on the host for `argv`: through sudo, a program the sudoers rule does not name goes through its sh */
  const asRoot = (argv: readonly string[]): readonly string[] => (sudo.length === 0 ? argv
    : (SUDO_PROGRAMS as readonly string[]).includes(argv[0] ?? '') ? [...sudo, ...argv] : [...sudo, 'sh', '-c', AS_ROOT, 'sh', ...argv])

  /** ssh's own failures become typed errors; a missing remote command (sh's 127) is TOOL_MISSING */
  const classify = async (result: CommandResult, argv: readonly string[]): Promise<Result<CommandResult, TransportError>> => {
    const host = connection.endpoint.display
    const failure = sshFailure(result, connection.endpoint)
    if (failure !== undefined) return err(failure)
    if (result.exitCode === 255 && result.stderr === '') {
      // ssh says nothing both when the connection died under the command and when the remote command was killed
      if (await connection.lost(1000)) {
        return err(bbError('NETWORK_FAILED', `the connection to ${host} was lost while ${argv.slice(0, 2).join(' ')} ran`, 'check that the host is up and reachable; the run retries this with backoff, and the next run picks up where it stopped', { host, argv: [...argv] }))
      }
      return err(bbError('COMMAND_FAILED', `${argv.slice(0, 2).join(' ')} on ${host} ended without an exit status: it was killed by a signal (or exited 255)`, KILLED_HINT, { host, argv: [...argv] }))
    }
    if (result.exitCode === 127 && /not found|No such file/.test(result.stderr)) {
      // sh names what it could not find: a stream filter's zstd, or the command itself
      const tool = /: (zstd): not found/.exec(result.stderr)?.[1] ?? argv[0] ?? 'the command'
      return err(bbError('TOOL_MISSING', `${tool} is not installed on ${host} (or not on the PATH of its non-interactive shell)`, `install it there${tool === 'btrfs' ? ' (apt-get install btrfs-progs)' : tool === 'rsync' ? ' (apt-get install rsync)' : tool === 'zstd' ? ' (apt-get install zstd)' : ''}`, { host, tool, argv: [...argv], stderr: result.stderr }))
    }
    if (sudo.length > 0 && result.exitCode === 1 && /^sudo: /m.test(result.stderr)) {
      return err(bbError('AUTH_FAILED', `sudo on ${host} refused to run ${argv[0] ?? 'the command'} without a password`, 'allow it in sudoers with NOPASSWD for the commands bbackup runs (see docs/transports/ssh.md)', { host, stderr: result.stderr }))
    }
    return ok({ ...result, argv })
  }

  /** `viaServer` false: by its own session even when the server could take it (a kill must not wait behind a long command) */
  const run = (argv: readonly string[], execOptions: ExecOptions, viaServer: boolean): ResultAsync<CommandResult, TransportError> => {
    if (execOptions.cwd !== undefined || execOptions.env !== undefined) {
      return errAsync(bbError('INVALID_OPTIONS', 'cwd and env are not passed to commands on another host', 'this is a bug in bbackup; please report it'))
    }
    const remote = remoteCommand(asRoot(argv))
    if (remote.isErr()) return errAsync(remote.error)
    return ResultAsync.fromSafePromise(connection.ready(execOptions.signal))
      .andThen((ready) => ready)
      .andThen(() => {
        // a short command with no input and no line reader goes to the master's command server, when it has one
        const served = viaServer && execOptions.input === undefined && execOptions.onStdoutLine === undefined ? serveLine(asRoot(argv)).map((line) => connection.serve(line, execOptions.signal)) : undefined
        if (served === undefined || served.isErr() || served.value === undefined) return execCommand(connection.command(remote.value), execOptions)
        return ResultAsync.fromSafePromise(served.value).andThen((r): ResultAsync<CommandResult, TransportError> | Result<CommandResult, TransportError> => {
          // it waited behind a stream whose command failed, and the server ended: it never ran, and goes by a session of its own
          if (r.kind === 'unsent') return execCommand(connection.command(remote.value), execOptions)
          if (r.kind === 'cancelled') return err(bbError('CANCELLED', `${argv[0] ?? 'a command'} on ${connection.endpoint.display} was cancelled`, CANCELLED_HINT, { argv: [...argv] }))
          // the server went away under it: as a session that ends without a status (classify asks whether the connection was lost)
          return ok(r.kind === 'lost' ? { argv, exitCode: 255, stdout: '', stderr: '' } : { argv, exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr })
        })
      })
      .andThen((result) => new ResultAsync(classify(result, argv)))
  }
  /**
   * A program the host's PATH lacks is looked for once more in its sbin directories (a user's
   * login has no /usr/sbin, where `blockdev` and `filefrag` are): if it is not there either (or a
   * forced command refuses the retry), the first error stands.
   */
  const exec = (argv: readonly string[], execOptions: ExecOptions = {}): ResultAsync<CommandResult, TransportError> => run(argv, execOptions, true)
    .orElse((e) => (e.code === 'TOOL_MISSING' && sudo.length === 0 && argv[0] !== undefined && argv[0] !== 'sh' && !argv[0].includes('/') && e.details?.tool === argv[0]
      ? run(['sh', '-c', SYSTEM_PATH, 'sh', ...argv], execOptions, true).map((r) => ({ ...r, argv })).orElse(() => errAsync(e))
      : errAsync(e)))

  /**
   * Signals a remote command by the pid it reported, by a session of its own (the server may be
   * busy with that very command); KILL also ends a stopped process, TERM would wait for it to be continued.
   */
  const killRemote = (pid: string, signal: NodeJS.Signals): void => {
    // PIPE as for a sender whose reader went away (the reader's error is the one reported)
    void run(['kill', '-s', signal === 'SIGTERM' || signal === 'SIGINT' || signal === 'SIGPIPE' ? signal.slice(3) : 'KILL', '--', pid], {}, false).then(() => undefined, () => undefined)
  }

  /**
   * A long-running remote command (a send or a receive) first says its pid on stderr, so that
   * `kill` can stop it on the host too: a receiver that is stopped (SIGSTOP, a hung disk) does not
   * notice that its connection closed, and would stay behind.
   */
  const spawn = (argv: readonly string[], spawnOptions: SpawnOptions = {}): RunningCommand => {
    const { compressStdout, decompressStdin, selfDelimited, sharedStdout, ...plain } = spawnOptions
    // a plain command that stops at its stream's end (or whose stdout may come back that way) goes through the master's own session, when its server takes streams
    const plainCommand = compressStdout === undefined && decompressStdin === undefined && sudo.length === 0
    const streamed = (plainCommand && selfDelimited === true ? inServer(argv, plain) : undefined) ?? (plainCommand && sharedStdout === true ? outOfServer(argv, plain) : undefined)
    if (streamed !== undefined) return streamed
    // the stream filters run on that host, around the command: the filter scripts of the remote protocol
    const filtered = [
      ...(decompressStdin === 'zstd' ? ['sh', '-c', FILTERS.decompressStdin, 'sh'] : []),
      ...(compressStdout === 'zstd' ? ['sh', '-c', plain.stdin === undefined ? FILTERS.compressStdout : FILTERS.compressReaderStdout, 'sh'] : []),
      ...argv,
    ]
    const wrapped = [...sudo, 'sh', '-c', SPAWN_WRAPPER, 'sh', ...filtered]
    const remote = remoteCommand(wrapped)
    let remotePid: string | undefined
    let seen = ''
    const hooks = {
      onStderr: (chunk: string) => {
        if (seen.length > 400) return
        seen += chunk
        for (const m of seen.matchAll(PID_LINES)) remotePid = m[1]
      },
    }
    // a stdout handed to another master's own session (a relay's receive) is copied into it here, and
    // counted: neither ssh client can tell how much passed, and that channel must stay open after it
    const into = plain.stdout
    const relayed = typeof into === 'object' && isSharedChannel(into) ? into : undefined
    let passed = 0
    // a remote command with a NUL byte cannot run: start nothing, report why
    const running = (remote.isOk() && inAhead(wrapped, remote.value, plain, hooks))
      || spawnCommand(remote.isErr() ? [] : connection.command(remote.value), relayed === undefined ? plain : { ...plain, stdout: 'pipe' }, hooks)
    if (relayed !== undefined && running.stdout !== undefined) {
      running.stdout.on('data', (chunk: Buffer) => {
        passed += chunk.length
      })
      intoShared(running.stdout, relayed)
    }
    const withoutPid = (result: CommandResult): CommandResult => ({ ...result, stderr: result.stderr.replace(PID_PREFIX, '') })
    /** the signal it was stopped with from here: its ssh client's end is then no lost connection */
    let stoppedWith: NodeJS.Signals | undefined
    const stopped = (result: CommandResult): Result<CommandResult, TransportError> | undefined =>
      (stoppedWith === undefined || result.exitCode === 0 ? undefined : err(bbError('COMMAND_FAILED', `${argv.slice(0, 2).join(' ')} on ${connection.endpoint.display} was stopped (${stoppedWith})`, KILLED_HINT,
        { host: connection.endpoint.display, argv: [...argv], stderr: withoutPid(result).stderr })))
    return {
      ...running,
      argv,
      ...(relayed === undefined ? {} : { stdout: undefined }),
      // the ssh client here passes its stdin and stdout to the master connection, which does the reading and writing: its own counts say nothing
      bytesWritten: async () => (relayed === undefined ? undefined : passed),
      bytesRead: async () => undefined,
      done: remote.isErr() ? errAsync(remote.error) : running.done.andThen((result) => new ResultAsync(Promise.resolve(stopped(result) ?? classify(withoutPid(result), argv)))),
      kill: (signal: NodeJS.Signals = 'SIGTERM') => {
        stoppedWith ??= signal
        // the ssh client ignores SIGPIPE: it would go on holding the channel, waiting to hand over
        // what the remote command wrote before it was stopped, to a reader that is gone
        running.kill(signal === 'SIGPIPE' ? 'SIGTERM' : signal)
        if (remotePid === undefined) return
        killRemote(remotePid, signal)
      },
    }
  }

  /**
   * A {@link SpawnOptions.selfDelimited} command as a stream request of the master's command server
   * (remote-protocol's `STREAM_TAG`): its stdin is the master's own, marked {@link SHARED_CHANNEL} so
   * that the writer handed it leaves it open for the requests after the stream. Undefined when the
   * server cannot take it (none, not sh's, a stream on its way already) or the command does not fit
   * (stdout wanted, stdin not a pipe).
   */
  const inServer = (argv: readonly string[], spawnOptions: ServedSpawn): RunningCommand | undefined => {
    if (spawnOptions.stdin !== 'pipe' || (spawnOptions.stdout !== undefined && spawnOptions.stdout !== 'ignore')) return undefined
    return served(argv, spawnOptions, (line, onPid) => {
      const taken = connection.serveStream(line, onPid)
      return taken === undefined ? undefined : { ...taken, stdin: Object.assign(taken.stdin, { [SHARED_CHANNEL]: true }) }
    })
  }

  /**
   * A {@link SpawnOptions.sharedStdout} command as an out-stream request of the master's command
   * server (remote-protocol's `OUT_TAG`): its stdout comes on the master's own and is copied into the
   * stdin it was given (left open where that is itself a shared channel: the receive of another
   * host's master). Undefined when the server cannot take it or the command does not fit (input
   * wanted, stdout not another command's stdin).
   */
  const outOfServer = (argv: readonly string[], spawnOptions: ServedSpawn): RunningCommand | undefined => {
    const into = spawnOptions.stdout
    if (spawnOptions.stdin !== undefined || typeof into !== 'object') return undefined
    return served(argv, spawnOptions, (line, onPid) => {
      const taken = connection.serveStreamOut(line, onPid)
      if (taken === undefined) return undefined
      if (isSharedChannel(into)) {
        intoShared(taken.stdout, into)
      } else {
        // a reader that fails takes nothing more: the server's channel is read on, and the rest dropped
        pipeline(taken.stdout, into, () => undefined)
      }
      return { result: taken.result, bytes: taken.bytes }
    })
  }

  /**
   * A command that runs as a stream request of the master's command server (`take` sends it): it
   * says its pid as it starts (a kill before that waits for it), and its answer is its outcome.
   */
  const served = (
    argv: readonly string[],
    spawnOptions: ServedSpawn,
    take: (line: string, onPid: (pid: string) => void) => { readonly result: Promise<ServedResult>; readonly stdin?: Writable; readonly bytes?: () => number } | undefined,
  ): RunningCommand | undefined => {
    const line = serveLine(['sh', '-c', STREAM_WRAPPER, 'sh', ...argv])
    if (line.isErr()) return undefined
    let remotePid: string | undefined
    let pendingKill: NodeJS.Signals | undefined
    /** it answered: its pid may be another process's by now */
    let finished = false
    const taken = take(line.value, (pid) => {
      remotePid = pid
      if (pendingKill !== undefined) killRemote(pid, pendingKill)
    })
    if (taken === undefined) return undefined
    const abort = (): void => made.kill('SIGTERM')
    spawnOptions.signal?.addEventListener('abort', abort, { once: true })
    const done = ResultAsync.fromSafePromise(taken.result).andThen((r): ResultAsync<CommandResult, TransportError> => {
      finished = true
      spawnOptions.signal?.removeEventListener('abort', abort)
      if (spawnOptions.signal?.aborted === true) return errAsync(bbError('CANCELLED', `${argv[0] ?? 'a command'} on ${connection.endpoint.display} was cancelled`, CANCELLED_HINT, { argv: [...argv] }))
      const result: CommandResult = r.kind === 'done' ? { argv, exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr } : { argv, exitCode: 255, stdout: '', stderr: '' }
      // the server's sh says 128 + N for a command that signal N ended
      const signal = r.kind === 'done' && r.exitCode > 128 ? signalName(r.exitCode - 128) : undefined
      if (signal !== undefined) {
        const host = connection.endpoint.display
        return errAsync(bbError('COMMAND_FAILED', `${argv.slice(0, 2).join(' ')} on ${host} was killed by ${signal}`, KILLED_HINT, { host, argv: [...argv], stderr: r.kind === 'done' ? r.stderr : '', signal }))
      }
      return new ResultAsync(classify(result, argv))
    })
    const made: RunningCommand = {
      argv,
      // nothing of it runs on this host (the master's ssh client carries it)
      pid: undefined,
      stdout: undefined,
      stdin: taken.stdin,
      done,
      bytesWritten: async () => taken.bytes?.(),
      kill: (signal: NodeJS.Signals = 'SIGTERM') => {
        if (finished) return
        if (remotePid !== undefined) killRemote(remotePid, signal)
        else pendingKill = signal
      },
    }
    return made
  }

  /**
   * The command in the session opened ahead (`prepareSpawn`), when there is one and the command
   * fits it: stdin a pipe or nothing, stdout discarded. Its line goes first into the session's
   * stdin, and only when it reached the pipe at once is the session used: the stdin may be handed
   * to another process next, whose bytes must come after the line.
   */
  const inAhead = (wrapped: readonly string[], remote: string, spawnOptions: ServedSpawn, hooks: { readonly onStderr: (chunk: string) => void }): RunningCommand | undefined => {
    if ((spawnOptions.stdin !== undefined && spawnOptions.stdin !== 'pipe') || (spawnOptions.stdout !== undefined && spawnOptions.stdout !== 'ignore')) return undefined
    const line = serveLine(wrapped)
    const taken = line.isOk() ? connection.takeAhead() : undefined
    if (taken === undefined || taken.child.stdin === null || line.isErr()) return undefined
    taken.child.stdin.write(`${line.value}\n`)
    if (taken.child.stdin.writableLength !== 0) {
      taken.child.kill('SIGTERM')
      return undefined
    }
    if (spawnOptions.stdin === undefined) taken.child.stdin.end()
    return runningCommand(taken.child, connection.command(remote), spawnOptions, hooks, taken.stderr)
  }

  /** runs one of the file scripts; exit {@link ABSENT} is "nothing there", other failures become IO errors */
  const script = (name: ScriptName, args: readonly string[], what: string, input?: string): ResultAsync<CommandResult, TransportError> =>
    exec(['sh', '-c', SCRIPTS[name], 'sh', ...args], input === undefined ? {} : { input }).andThen((r) => {
      if (r.exitCode === 0 || r.exitCode === ABSENT) return ok(r)
      const details = { host: connection.endpoint.display, path: args[0], stderr: r.stderr }
      if (/No space left|Disk quota exceeded/.test(r.stderr)) return err(bbError('DISK_FULL', `no space left on ${connection.endpoint.display} to ${what} ${args[0] ?? ''}`, 'free space on that filesystem (or prune old backups) and run again', details))
      if (/No such file or directory/.test(r.stderr)) return err(bbError('NOT_FOUND', `cannot ${what} ${args[0] ?? ''} on ${connection.endpoint.display}: it does not exist`, 'check the path, or create its parent directory', details))
      if (/Permission denied|Operation not permitted|Read-only file system/.test(r.stderr)) return err(bbError('IO_FAILED', `cannot ${what} ${args[0] ?? ''} on ${connection.endpoint.display}: permission denied`, 'log in as a user that may write there (or use --ssh-sudo), or fix its permissions', details))
      return err(bbError('IO_FAILED', `cannot ${what} ${args[0] ?? ''} on ${connection.endpoint.display}: ${r.stderr || `exit ${r.exitCode}`}`, 'check the remote filesystem and run again', details))
    })

  const notFound = (path: string): TransportError =>
    bbError('NOT_FOUND', `cannot list ${path} on ${connection.endpoint.display}: it does not exist`, 'check the path, or create it', { host: connection.endpoint.display, path })

  /** the `each` script: the commands one after the other in one round trip, each with its exit status and output */
  const execEach = (argvs: readonly (readonly string[])[], execOptions: ExecOptions = {}): ResultAsync<CombinedResult[], TransportError> => {
    if (argvs.length === 0) return okAsync([])
    return exec(['sh', '-c', SCRIPTS.each, 'sh', ...argvs.flatMap((a) => [String(a.length), ...a])], execOptions).andThen((r): Result<CombinedResult[], TransportError> => {
      const records = r.stdout.split(RECORD_END).slice(0, -1)
      if (r.exitCode !== 0 || records.length !== argvs.length) {
        return err(bbError('IO_FAILED', `${argvs.length} commands in one go on ${connection.endpoint.display} gave ${records.length} results (exit ${r.exitCode})`, 'check that the host has a POSIX sh; run again', { host: connection.endpoint.display, stderr: r.stderr }))
      }
      return ok(records.map((record, i) => {
        const nl = record.indexOf('\n')
        return { argv: argvs[i] ?? [], exitCode: Number(record.slice(0, nl)), output: record.slice(nl + 1) }
      }))
    })
  }

  return {
    location,
    exec,
    execEach,
    spawn,
    unrestricted: () => connection.shellServer(),
    connect: (signal) => connection.connect(signal),
    // a self-delimited spawn goes through the master's server, where it takes streams (not through sudo: the pid could not be said)
    prepareSpawn: (o = {}) => connection.openAhead({ unlessStreams: o.selfDelimited === true && sudo.length === 0 }),
    readFile: (path) => script('read', [path], 'read').map((r) => (r.exitCode === ABSENT ? undefined : r.stdout)),
    writeFileAtomic: (path, data) => script('write', [path], 'write', data).map(() => undefined),
    stat: (path) => script('stat', [path], 'stat').map((r): EntryStat | undefined => {
      if (r.exitCode === ABSENT) return undefined
      // %F may contain '/' only in no kind GNU stat prints; the numbers are the last four fields
      const fields = r.stdout.trim().split('/')
      const [size, mtime, device, inode] = fields.slice(-4).map(Number)
      return { kind: KINDS[fields.slice(0, -4).join('/')] ?? 'other', size: size ?? 0, mtime: new Date((mtime ?? 0) * 1000), device: device ?? 0, inode: inode ?? 0 }
    }),
    list: (directory) => script('list', [directory], 'list').andThen((r): Result<DirEntry[], TransportError> => (r.exitCode === ABSENT
      ? err(notFound(directory))
      : ok(r.stdout.split('\0').filter((e) => e !== '').map((e) => ({ name: e.slice(2), kind: FIND_KINDS[e[0] ?? ''] ?? 'other' }))))),
    mkdir: (path, o = {}) => script(o.recursive === true ? 'mkdirp' : 'mkdir', [path], 'create').map(() => undefined),
    rename: (from, to) => script('rename', [from, to], 'rename').map(() => undefined),
    symlink: (target, path) => script('symlink', [target, path], 'link').map(() => undefined),
    readlink: (path) => script('readlink', [path], 'read link').map((r) => (r.exitCode === ABSENT ? undefined : r.stdout.replace(/\n$/, ''))),
    remove: (path, o = {}) => script(o.recursive === true ? 'removeTree' : 'remove', [path], 'remove').map(() => undefined),
    lock: (path): ResultAsync<never, LockError> =>
      errAsync(bbError('LOCK_FAILED', `bbackup keeps its locks on the host it runs on, not on ${connection.endpoint.display} (${path})`, 'give the job a local --state-dir')),
    inspectLock: () => okAsync(undefined),
    rsyncEndpoint: (path) => ({
      spec: `${connection.rsyncHost}:${path}`,
      options: ['-e', connection.rsyncShell, ...(sudo.length > 0 ? ['--rsync-path=sudo -n rsync'] : [])],
    }),
  }
}

/**
 * Copies a stream into another master's own session (its stdin, {@link SHARED_CHANNEL}): the
 * requests after the stream follow in that channel, so it is never ended, and a failure of it
 * stops this stream only (a run sends many along one channel).
 */
const intoShared = (from: Readable, into: Writable): void => {
  from.pipe(into, { end: false })
  const stop = (): void => void from.destroy()
  into.once('error', stop)
  from.once('close', () => into.removeListener('error', stop))
}
