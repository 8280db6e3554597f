import { spawn, type ChildProcess } from 'node:child_process'
import type { Readable, Writable } from 'node:stream'
import { accessSync, closeSync, constants, existsSync, lstatSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, stderrTail, type SshLocation, type TransportError } from '@bb/core'
import { execCommand } from '../local/exec.js'
import { makeRunDirectory, type RunDirectoryKind } from '../local/run-directory.js'
import { parseResolvedHost, sshFailure, type Endpoint } from './failure.js'
import { remoteCommand } from './quote.js'
import { AHEAD, SERVE } from './remote-protocol.js'
import { commandServer, type CommandServer, type ServedResult } from './serve.js'

/** How bbackup reaches one host over ssh; every field has a safe default. */
export interface SshOptions {
  /** the ssh client to run (default `ssh`) */
  readonly program?: string
  /** a private key to log in with (sets IdentitiesOnly) */
  readonly identityFile?: string
  /** a known_hosts file for this host instead of the user's */
  readonly knownHostsFile?: string
  /** more ssh_config options, `Key=Value` as with `ssh -o`; they take precedence over bbackup's defaults */
  readonly options?: readonly string[]
  /** run the remote commands with `sudo -n` (for btrfs as a user that is not root) */
  readonly sudo?: boolean
  /** seconds between keepalives inside the connection (default 15); `ServerAliveCountMax` misses end it (default 4) */
  readonly serverAliveInterval?: number
  readonly serverAliveCountMax?: number
  /** seconds to wait for the TCP connection (default 15) */
  readonly connectTimeout?: number
}

/** One host as bbackup reaches it: its generated ssh_config and the multiplexed master connection. */
export interface SshConnection {
  readonly endpoint: Endpoint
  readonly options: SshOptions
  /** the ssh argv that runs `remote` (already one shell-quoted string) on the host, through the master */
  command(remote: string): string[]
  /** rsync's `-e` value and the host part of its `host:path` */
  readonly rsyncShell: string
  readonly rsyncHost: string
  /** opens the master connection if it is not open; the error says why it could not be */
  ready(signal?: AbortSignal): Promise<Result<void, TransportError>>
  /**
   * Opens the master connection ahead of the first command (`Transport.connect`). When it cannot
   * be opened, the next `ready` gets that error instead of trying again.
   */
  connect(signal?: AbortSignal): Promise<void>
  /**
   * Whether the master connection has ended, or ends within `waitMs`: tells a connection that died
   * under a command (ssh exits 255 and says nothing) from a remote command that ended oddly.
   */
  lost(waitMs: number): Promise<boolean>
  /**
   * Runs one request line (from `serveLine`) on the master's command server, after `ready`.
   * Undefined when there is none (the host refused it, e.g. a forced command, or it ended): run
   * the command by its own session then.
   */
  serve(line: string, signal?: AbortSignal): Promise<ServedResult> | undefined
  /**
   * A local port forwarded through the master connection to `host:port` as the remote host sees
   * it (`ssh -O forward -L`): an rsync daemon reached through a tunnel. It lasts as long as the
   * connection, so the session's `close` tears it down; asked for again after the connection
   * dropped, it is forwarded anew through a new one (on another local port).
   */
  forward(host: string, port: number, signal?: AbortSignal): Promise<Result<{ readonly host: '127.0.0.1'; readonly port: number }, TransportError>>
  /**
   * Opens a session ahead of its command (remote-protocol's `AHEAD`) as soon as the master has
   * logged in, beside the command server's start; ended again on a host that refuses the server (a
   * forced command other than bbackup-remote would refuse this too). `unlessStreams`: for a command
   * the server could take as a stream (`serveStream`), only once the server has said it cannot.
   */
  openAhead(options?: { readonly unlessStreams?: boolean }): void
  /**
   * Runs one stream request line (`serveLine` of a command that stops reading at its stream's end)
   * on the master's command server: the writer of the stream gets `stdin`, the master's own (no
   * second session, no second login). Undefined when the server cannot take it now.
   */
  serveStream(line: string, onPid: (pid: string) => void): { readonly stdin: Writable; readonly result: Promise<ServedResult> } | undefined
  /**
   * Runs one out-stream request line (`serveLine` of a command with no input) on the master's
   * command server: its stdout comes back on the master's own (see CommandServer.streamOut).
   * Undefined when the server cannot take it now.
   */
  serveStreamOut(line: string, onPid: (pid: string) => void): { readonly stdout: Readable; readonly result: Promise<ServedResult>; readonly bytes: () => number } | undefined
  /**
   * The master's server is bbackup's own sh program (it takes streams): the login shell ran it, so
   * no forced command stands between bbackup and the host. False before it started, and where a
   * forced command (bbackup-remote's or another) answers instead.
   */
  shellServer(): boolean
  /**
   * The session opened ahead, if it still waits for its command line, with what it wrote on stderr
   * so far; its stdout is discarded. The taker writes the line first, then its stdin is the command's.
   */
  takeAhead(): { readonly child: ChildProcess; readonly stderr: string } | undefined
}

/**
 * The ssh connections of one run: one multiplexed master per host (OpenSSH ControlMaster) with
 * its socket in a private directory, all closed by {@link SshSession.close}, and also when the
 * process exits.
 */
export interface SshSession {
  connection(location: SshLocation, options?: SshOptions): SshConnection
  /** how many master connections this session has opened (the benchmark counts them) */
  readonly connectionsOpened: number
  close(): Promise<void>
  /**
   * What {@link close} does, without waiting for the masters to end: for a process about to end
   * (a signal's handler), where nothing asynchronous runs any more.
   */
  closeNow(): void
}

const CONFIG_VALUE = /^[^\n\r"]*$/

/** Writes `Key value` lines for ssh_config; values are double-quoted, which ssh_config supports. */
const configLine = (key: string, value: string | number): string => `  ${key} "${value}"`

const optionLines = (extra: readonly string[]): Result<string[], TransportError> => {
  const lines: string[] = []
  for (const option of extra) {
    const m = /^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(.*)$/.exec(option)
    if (m === null || !CONFIG_VALUE.test(m[2] ?? '')) {
      return err(bbError('INVALID_OPTIONS', `the ssh option ${JSON.stringify(option)} is not Key=Value on one line`, 'write it as with ssh -o, e.g. --ssh-option ConnectTimeout=30'))
    }
    lines.push(`  ${m[1] ?? ''} ${m[2] ?? ''}`)
  }
  return ok(lines)
}

/**
 * The ssh_config of one connection. First value wins in ssh_config, so the location's user and port
 * come first, then the user's `-o` options, then bbackup's fail-closed defaults, then the user's and the system's own config files
 * (host aliases, ProxyJump, ... keep working).
 */
const configText = (location: SshLocation, options: SshOptions, controlPath: string, extra: readonly string[]): Result<string, TransportError> => {
  for (const [what, value] of [['ssh program', options.program], ['identity file', options.identityFile], ['known_hosts file', options.knownHostsFile], ['control path', controlPath]] as const) {
    if (value !== undefined && !CONFIG_VALUE.test(value)) return err(bbError('INVALID_OPTIONS', `the ${what} ${JSON.stringify(value)} contains a quote or a line break`, 'use a path without " or line breaks'))
  }
  // ssh only warns about a key it cannot read, then fails to log in: named here instead
  if (options.identityFile !== undefined && !readable(options.identityFile)) {
    return err(bbError('INVALID_OPTIONS', `the ssh identity file ${options.identityFile} ${existsSync(expandHome(options.identityFile)) ? 'cannot be read' : 'does not exist'}`,
      'give the private key that logs in (--ssh-identity or ssh_identity), e.g. /root/.ssh/id_ed25519', { path: options.identityFile }))
  }
  const unusable = options.identityFile === undefined ? undefined : unusableKey(options.identityFile)
  if (unusable !== undefined) return err(unusable)
  return ok([
    'Host *',
    // the user and port written in the location are the most specific: before the -o options
    ...(location.user === undefined ? [] : [configLine('User', location.user)]),
    ...(location.port === undefined ? [] : [configLine('Port', location.port)]),
    ...extra,
    ...(options.identityFile === undefined ? [] : [configLine('IdentityFile', options.identityFile), '  IdentitiesOnly yes']),
    ...(options.knownHostsFile === undefined ? [] : [configLine('UserKnownHostsFile', options.knownHostsFile), '  GlobalKnownHostsFile /dev/null']),
    '  BatchMode yes',
    '  StrictHostKeyChecking yes',
    '  UpdateHostKeys no',
    `  ConnectTimeout ${options.connectTimeout ?? 15}`,
    `  ServerAliveInterval ${options.serverAliveInterval ?? 15}`,
    `  ServerAliveCountMax ${options.serverAliveCountMax ?? 4}`,
    configLine('ControlPath', controlPath),
    '  ControlMaster no',
    '  ControlPersist no',
    '  LogLevel ERROR',
    'Include ~/.ssh/config',
    'Include /etc/ssh/ssh_config',
    '',
  ].join('\n'))
}

/** A path as ssh reads it: a leading `~/` is the home directory. */
const expandHome = (path: string): string => (path.startsWith('~/') ? join(homedir(), path.slice(2)) : path)

/**
 * What ssh would only warn about and then log in without: a private key that others can read (ssh
 * ignores it), or the public half given for the private one.
 */
const unusableKey = (path: string): TransportError | undefined => {
  if (path.includes('%')) return undefined
  const file = expandHome(path)
  try {
    const st = statSync(file)
    const buffer = Buffer.alloc(64)
    const fd = openSync(file, 'r')
    let length: number
    try {
      length = readSync(fd, buffer, 0, buffer.length, 0)
    } finally {
      closeSync(fd)
    }
    const head = buffer.subarray(0, length).toString('latin1')
    if (/^(ssh-|ecdsa-sha2-|sk-)\S+ AAAA/.test(head)) {
      return bbError('INVALID_OPTIONS', `the ssh identity file ${path} is a public key`, `give its private half${path.endsWith('.pub') ? `: ${path.slice(0, -'.pub'.length)}` : ' (the file without .pub)'}`, { path })
    }
    // ssh's own rule (sshkey_perm_ok): a key of this user that its group or others may read is not used
    if (st.uid === process.getuid?.() && (st.mode & 0o077) !== 0) {
      return bbError('INVALID_OPTIONS', `the ssh identity file ${path} can be read by others (mode ${(st.mode & 0o777).toString(8)}): ssh does not use such a key`, `chmod 600 ${path}`, { path })
    }
  } catch {
    return undefined
  }
  return undefined
}

/** Whether ssh can read a key file; a path with ssh's `%` tokens is left to ssh. */
const readable = (path: string): boolean => {
  if (path.includes('%')) return true
  const file = expandHome(path)
  try {
    accessSync(file, constants.R_OK)
    return statSync(file).isFile()
  } catch {
    return false
  }
}

/** a host as rsync's `host:path` and ssh's `-L` spec write it: an IPv6 address in [brackets] */
const hostArg = (host: string): string => (host.includes(':') ? `[${host}]` : host)

/** a port on 127.0.0.1 that nothing listens on now (another process may still take it before us) */
const freeLocalPort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))))
    })
  })

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** the master's own command: the command server, quoted once like every remote command */
const SERVE_COMMAND = remoteCommand(['sh', '-c', SERVE, 'sh'])._unsafeUnwrap()
/** the command of a session opened ahead */
const AHEAD_COMMAND = remoteCommand(['sh', '-c', AHEAD, 'sh'])._unsafeUnwrap()
/** how long a login may take to start the server before its commands go by their own sessions */
const SERVE_START_MS = 20_000

/** a run's private directory, `bbackup-ssh-PID-XXXXXX`, holds a config and a control socket per host */
const RUN_FILE = /^[0-9]+\.(?:conf|sock)$/
const SSH_RUN: RunDirectoryKind = { prefix: 'bbackup-ssh', holdsOnlyOurs: (path, names) => names.every((f) => RUN_FILE.test(f) && !lstatSync(join(path, f)).isDirectory()) }

/**
 * Opens an ssh session for one run.
 * @example
 * const session = openSshSession()
 * try { ... sshTransport(location, session) ... } finally { await session.close() }
 */
export const openSshSession = (): SshSession => {
  let directory: string | undefined
  const connections = new Map<string, SshConnection>()
  const masters = new Set<ChildProcess>()
  /** sessions opened ahead that nobody took yet: stopped with the masters */
  const waiting = new Set<ChildProcess>()
  let opened = 0
  let closed = false

  // last resort: a process that exits without close() still stops its masters and removes its sockets
  const onExit = (): void => {
    for (const m of [...masters, ...waiting]) m.kill('SIGTERM')
    if (directory !== undefined) rmSync(directory, { recursive: true, force: true })
  }
  process.once('exit', onExit)

  const privateDirectory = (): string => {
    if (directory !== undefined) return directory
    // created 0700: the control sockets in it are reachable by this user only
    directory = makeRunDirectory(SSH_RUN)
    return directory
  }

  const connection = (location: SshLocation, options: SshOptions = {}): SshConnection => {
    const key = JSON.stringify([location.user, location.host, location.port, options])
    const existing = connections.get(key)
    if (existing !== undefined) return existing
    const index = connections.size
    const dir = privateDirectory()
    const configPath = join(dir, `${index}.conf`)
    const controlPath = join(dir, `${index}.sock`)
    const program = options.program ?? 'ssh'
    const endpoint: Endpoint = {
      display: `${location.user === undefined ? '' : `${location.user}@`}${hostArg(location.host)}${location.port === undefined ? '' : `:${location.port}`}`,
      host: location.host,
      ...(location.port === undefined ? {} : { port: location.port }),
      ...(options.knownHostsFile === undefined ? {} : { knownHostsFile: options.knownHostsFile }),
      configFile: configPath,
    }
    const written = optionLines(options.options ?? []).andThen((extra) => configText(location, options, controlPath, extra))
    if (written.isOk()) writeFileSync(configPath, written.value, { mode: 0o600 })
    const base = [program, '-F', configPath]
    let master: ChildProcess | undefined
    let lastMaster: ChildProcess | undefined
    let opening: Promise<Result<void, TransportError>> | undefined
    let server: CommandServer | undefined
    /** the host ended the server before it started (a forced command that does not know it): masters run no command */
    let serveRefused = false
    let ahead: { readonly child: ChildProcess; stderr: string; readonly stop: () => void } | undefined
    /** the master being opened or open */
    let current: ChildProcess | undefined
    /** it is logged in (its socket answers), whether or not its command server has started yet */
    let loggedIn = false
    let aheadWanted = false
    /** the session ahead is wanted only if the server turns out to take no streams */
    let aheadUnlessStreams = false
    /** a failure of `connect` that no `ready` has been told yet */
    let unclaimed: Result<void, TransportError> | undefined
    /** a `ready` came since the last `connect` (it waited for the same opening, and got its outcome) */
    let claimed = true

    /** starts the session ahead when one is wanted, through a master that runs the command server (or is about to) */
    const startAhead = (): void => {
      if (!aheadWanted || aheadUnlessStreams || closed || serveRefused || !loggedIn || written.isErr()) return
      aheadWanted = false
      const child = spawn(program, [...base, '--', location.host, AHEAD_COMMAND].slice(1), { stdio: ['pipe', 'ignore', 'pipe'] })
      child.once('error', () => undefined)
      child.stdin?.on('error', () => undefined)
      const entry = {
        child,
        stderr: '',
        stop: () => {
          child.stderr?.off('data', collect)
          waiting.delete(child)
        },
      }
      const collect = (chunk: string): void => {
        entry.stderr = (entry.stderr + chunk).slice(-8000)
      }
      child.stderr?.setEncoding('utf8')
      child.stderr?.on('data', collect)
      child.once('close', () => {
        waiting.delete(child)
        if (ahead === entry) ahead = undefined
      })
      waiting.add(child)
      ahead = entry
    }

    /** the endpoint with what `ssh -G` says of the host (its real name and port, known_hosts file); as it was if ssh cannot say */
    const resolvedEndpoint = async (): Promise<Endpoint> => {
      const shown = await execCommand([...base, '-G', '--', location.host])
      const resolved = shown.isOk() && shown.value.exitCode === 0 ? parseResolvedHost(shown.value.stdout) : undefined
      return resolved === undefined ? endpoint : { ...endpoint, resolved }
    }

    const open = async (signal?: AbortSignal): Promise<Result<void, TransportError>> => {
      if (written.isErr()) return err(written.error)
      if (closed) return err(bbError('CANCELLED', 'the ssh session was closed', 'this is a bug in bbackup; please report it'))
      // the socket a master that died without cleaning up left in our private directory: the new one binds the same path
      rmSync(controlPath, { force: true })
      // the master's own session is the command server, which runs the short commands of the run on that one login
      const serving = !serveRefused
      const child = spawn(program, [...base, ...(serving ? [] : ['-N']), '-o', 'ControlMaster=yes', '--', location.host, ...(serving ? [SERVE_COMMAND] : [])].slice(1), {
        stdio: [serving ? 'pipe' : 'ignore', serving ? 'pipe' : 'ignore', 'pipe'],
      })
      const served = serving && child.stdin !== null && child.stdout !== null ? commandServer(child.stdin, child.stdout, SERVE_START_MS) : undefined
      let stderr = ''
      child.stderr?.setEncoding('utf8')
      child.stderr?.on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-8000)
      })
      let exited: { code: number | null; error?: NodeJS.ErrnoException } | undefined
      child.once('error', (e: NodeJS.ErrnoException) => {
        exited = { code: null, error: e }
      })
      child.once('close', (code) => {
        exited ??= { code }
        masters.delete(child)
        if (current === child) loggedIn = false
        if (master === child) {
          master = undefined
          opening = undefined
          server = undefined
        }
      })
      masters.add(child)
      current = child
      loggedIn = false
      opened++
      const deadline = Date.now() + ((options.connectTimeout ?? 15) * 2 + 10) * 1000
      // the master makes its socket once logged in: looked for every 5 ms (no process), then confirmed with -O check
      for (let wait = 5; ; wait = existsSync(controlPath) ? Math.min(wait * 2, 200) : 5) {
        await sleep(wait)
        if (exited !== undefined) {
          if (exited.error?.code === 'ENOENT') return err(bbError('TOOL_MISSING', `${program} is not installed (or not on PATH)`, 'install it: apt-get install openssh-client'))
          const argv = [...base, '-N', '--', location.host]
          const failure = sshFailure({ exitCode: 255, stderr: stderrTail(stderr), argv }, endpoint)
          // a host key to trust: named as ssh filed it, for a host alias from an ssh config as well
          if (failure?.code === 'HOSTKEY_UNKNOWN' || failure?.code === 'HOSTKEY_CHANGED') return err(sshFailure({ exitCode: 255, stderr: stderrTail(stderr), argv }, await resolvedEndpoint()) ?? failure)
          return err(failure
            ?? bbError('NETWORK_FAILED', `could not connect to ${endpoint.display}: ${stderrTail(stderr) || `ssh exited with ${exited.code ?? 'a signal'}`}`, 'check the host, the port and your ssh config', { argv, stderr: stderrTail(stderr) }))
        }
        if (signal?.aborted === true || Date.now() > deadline) {
          child.kill('SIGTERM')
          return err(signal?.aborted === true
            ? bbError('CANCELLED', `cancelled while connecting to ${endpoint.display}`, 'run again when ready')
            : bbError('NETWORK_FAILED', `connecting to ${endpoint.display} did not finish in time`, 'check that the host is up and reachable'))
        }
        if (!existsSync(controlPath)) continue
        const check = await execCommand([...base, '-O', 'check', '--', location.host])
        if (check.isOk() && check.value.exitCode === 0) break
      }
      // logged in: a session wanted ahead opens now, its login beside the server's
      loggedIn = true
      startAhead()
      const started = served !== undefined && (await served.started)
      if (served !== undefined && !started && !served.alive) {
        // logged in, and the host ended the server before it started (a forced command refused it): the
        // master ends with its session, and the next one runs none (commands by their own sessions)
        const ended = exited !== undefined || await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 5000)
          child.once('close', () => {
            clearTimeout(timer)
            resolve(true)
          })
        })
        if (ended) {
          serveRefused = true
          // a host that refuses the server refuses the session ahead as well
          ahead?.child.kill('SIGTERM')
          ahead = undefined
          return open(signal)
        }
      }
      master = child
      lastMaster = child
      // a server that has not started in time (a login script that hangs) is not waited for: commands get sessions
      server = started && served.alive ? served : undefined
      if (aheadUnlessStreams) {
        // a stream goes through the server that takes it; a session ahead only where it cannot
        aheadUnlessStreams = false
        if (server?.streams === true) aheadWanted = false
        else startAhead()
      }
      return ok(undefined)
    }

    /** forwarded ports by `host:port`, each with the master that holds it: one that ended took its ports with it */
    const forwards = new Map<string, { readonly through: () => ChildProcess | undefined; readonly port: Promise<Result<{ readonly host: '127.0.0.1'; readonly port: number }, TransportError>> }>()
    const forward = async (toHost: string, toPort: number, signal?: AbortSignal): Promise<Result<{ readonly host: '127.0.0.1'; readonly port: number }, TransportError>> => {
      const ready = await made.ready(signal)
      if (ready.isErr()) return err(ready.error)
      let last = ''
      // the port is chosen here and bound by ssh: another process can take it in between, so try a few
      for (let attempt = 0; attempt < 3; attempt++) {
        const port = await freeLocalPort()
        const spec = `127.0.0.1:${port}:${hostArg(toHost)}:${toPort}`
        const ran = await execCommand([...base, '-O', 'forward', '-L', spec, '--', location.host], signal === undefined ? {} : { signal })
        if (ran.isErr()) return err(ran.error)
        if (ran.value.exitCode === 0) return ok({ host: '127.0.0.1', port })
        last = ran.value.stderr
      }
      return err(bbError('NETWORK_FAILED', `could not forward a local port through ${endpoint.display} to ${toHost}:${toPort}`, 'check that the ssh server allows port forwarding (AllowTcpForwarding) for this user', { host: endpoint.display, stderr: last }))
    }

    /** the master, opened if it is not open */
    const openMaster = (signal?: AbortSignal): Promise<Result<void, TransportError>> => {
      if (master !== undefined && master.exitCode === null && master.signalCode === null) return Promise.resolve(ok(undefined))
      opening ??= open(signal).then((r) => {
        if (r.isErr()) opening = undefined
        return r
      })
      return opening
    }

    const made: SshConnection = {
      forward: (toHost, toPort, signal) => {
        const key = `${toHost}:${toPort}`
        const existing = forwards.get(key)
        // a port of a master that has ended (the connection dropped) is forwarded again, through a new one
        const holder = existing?.through()
        if (existing !== undefined && (holder === undefined || (holder.exitCode === null && holder.signalCode === null))) return existing.port
        let through: ChildProcess | undefined
        const opened = forward(toHost, toPort, signal).then((r) => {
          // a master that ended meanwhile took the port with it: the next caller forwards anew
          if (r.isErr() || master === undefined) forwards.delete(key)
          else through = master
          return r
        })
        forwards.set(key, { through: () => through, port: opened })
        return opened
      },
      endpoint,
      options,
      serve: (line, signal) => (server?.alive === true ? server.run(line, signal) : undefined),
      shellServer: () => server?.alive === true && server.streams,
      serveStream: (line, onPid) => (server?.alive === true ? server.stream(line, onPid) : undefined),
      serveStreamOut: (line, onPid) => (server?.alive === true ? server.streamOut(line, onPid) : undefined),
      openAhead: (wish = {}) => {
        if (ahead !== undefined) return
        // the master is open (its server started, or not) once `master` is set
        const open = master !== undefined && master.exitCode === null && master.signalCode === null
        if (wish.unlessStreams === true && open && server?.streams === true) return
        aheadWanted = true
        aheadUnlessStreams = wish.unlessStreams === true && !open
        // with the master up, now; else when it is (a failure to connect is reported to whoever waits for ready)
        if (loggedIn) startAhead()
        // (not after a connect that failed: the command that follows is told why)
        else if (unclaimed === undefined) void openMaster().then(() => undefined, () => undefined)
      },
      takeAhead: () => {
        const taken = ahead
        ahead = undefined
        if (taken === undefined) return undefined
        taken.stop()
        if (taken.child.pid === undefined || taken.child.exitCode !== null || taken.child.signalCode !== null || taken.child.stdin === null) return undefined
        return { child: taken.child, stderr: taken.stderr }
      },
      command: (remote) => [...base, '--', location.host, remote],
      // rsync splits -e itself (not a shell) and honours double quotes: the paths hold none (checked above)
      rsyncShell: `"${program}" -F "${configPath}"`,
      rsyncHost: hostArg(location.host),
      lost: async (waitMs) => {
        const m = lastMaster
        if (m === undefined) return false
        if (m.exitCode !== null || m.signalCode !== null) return true
        return new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), waitMs)
          m.once('close', () => {
            clearTimeout(timer)
            resolve(true)
          })
        })
      },
      connect: async (signal) => {
        const opened = openMaster(signal)
        claimed = false
        const r = await opened
        // a ready() meanwhile waited for this very opening; else the first one to come takes the error, and does not connect again
        if (r.isErr() && !claimed) unclaimed = r
      },
      ready: (signal) => {
        claimed = true
        if (unclaimed !== undefined) {
          const failed = unclaimed
          unclaimed = undefined
          return Promise.resolve(failed)
        }
        return openMaster(signal)
      },
    }
    connections.set(key, made)
    return made
  }

  return {
    connection,
    get connectionsOpened() {
      return opened
    },
    close: async () => {
      closed = true
      process.off('exit', onExit)
      await Promise.all([...masters, ...waiting].map(async (m) => {
        const gone = new Promise<void>((resolve) => {
          if (m.exitCode !== null || m.signalCode !== null) resolve()
          else m.once('close', () => resolve())
        })
        m.kill('SIGTERM')
        const timer = setTimeout(() => m.kill('SIGKILL'), 3000)
        await gone
        clearTimeout(timer)
      }))
      if (directory !== undefined) rmSync(directory, { recursive: true, force: true })
      directory = undefined
    },
    closeNow: () => {
      closed = true
      process.off('exit', onExit)
      onExit()
      directory = undefined
    },
  }
}
