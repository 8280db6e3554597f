import { lstat, mkdir as mkdirLocal, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import { err, errAsync, fromThrowable, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import {
  bbError, daemonDisplay, ioError, retryWhileDaemonBusy, type CommandResult, type DirEntry, type EntryStat, type FileChanges, type LockError, type RsyncDaemonLocation, type RunningCommand, type Transport, type TransportError,
} from '@bb/core'
import { execCommand } from '../local/exec.js'
import { makeRunDirectory, type RunDirectoryKind } from '../local/run-directory.js'
import { daemonFailure } from './failure.js'
import { parseListOnly, type ListedEntry } from './list-only.js'
import { checkPasswordFile } from './secrets.js'

/**
 * The short-lived directories of a run's requests to a daemon (the files it reads and writes go
 * through them): what a run killed in one left is any file, so only those untouched for ten
 * minutes go (a request takes seconds; older, its run is gone even if its pid is another's now).
 */
const RSYNCD_TEMP: RunDirectoryKind = { prefix: 'bbackup-rsyncd', holdsOnlyOurs: () => true, minAgeMs: 10 * 60_000 }

export interface RsyncdOptions {
  /** a file that holds the module's password (rsync's `--password-file`); checked before every connection. Without it, `RSYNC_PASSWORD` from the environment is used */
  readonly passwordFile?: string
  /** seconds to wait for the daemon to answer (`--contimeout`); default 30 */
  readonly connectTimeoutSeconds?: number
  /** seconds without any data before rsync gives up (`--timeout`); default 300 */
  readonly ioTimeoutSeconds?: number
  /**
   * Where to connect instead of the location's host and port: the local end of an ssh tunnel,
   * asked for before every connection, so that a tunnel whose ssh connection dropped can be opened
   * again and a retry after a drop gets through
   */
  readonly tunnel?: () => Promise<Result<{ readonly host: string; readonly port: number }, TransportError>>
  /** rsync connections this transport opens at once for its file operations (a module's "max connections"); default 4 */
  readonly maxConnections?: number
}

/** owner and group as numbers: root's files are written with them, and what the daemon kept of them shows when one is read back */
const OWNERS = ['-o', '-g', '--numeric-ids']

/** a path inside the module, as rsync wants it: no leading slash, '' for the module's root */
const modulePath = (path: string): Result<string, TransportError> => {
  const normal = posix.normalize(`/${path}`).replace(/^\/+/, '').replace(/\/+$/, '')
  if (normal.split('/').includes('..')) return err(bbError('INVALID_OPTIONS', `the path ${path} leaves the module`, 'give a path inside the module'))
  return ok(normal)
}

/** rsync filter patterns treat * ? [ and \ as wildcards; a name is matched as it is */
const literal = (name: string): string => name.replace(/[*?[\\]/g, '\\$&')

const unsupported = (what: string, where: string): TransportError =>
  bbError('UNSUPPORTED', `an rsync daemon module (${where}) runs no commands, so it cannot ${what}`, 'this is a bug in bbackup (a driver asked a daemon module to run a command); please report it')

/**
 * The transport for a module of an rsync daemon (`rsync://[user@]host[:port]/module/path` or
 * `host::module/path`). A daemon runs no commands: every file operation is an rsync run from this
 * host (`--list-only` to list and stat, a copy to read or write a small file, a filtered
 * `--delete` to remove), so `exec`, `spawn` and `rename` are refused and the transport says
 * `filesOnly`. Every run gets `--contimeout` and `--timeout`; the password goes on rsync's stdin,
 * never in argv.
 * @example
 * import { rsyncdTransport } from '@bb/transports/rsyncd'
 * const target = rsyncdTransport(parseLocation('backup@nas::backups/laptop')._unsafeUnwrap() as RsyncDaemonLocation, { passwordFile: '/etc/bbackup/nas.secret' })
 */
export const rsyncdTransport = (location: RsyncDaemonLocation, options: RsyncdOptions = {}): Transport => {
  /** where rsync connects now: the daemon (undefined), or the local end of its tunnel as last asked for */
  let connectTo: { readonly host: string; readonly port: number } | undefined
  /** the module's url, through the tunnel when one is open */
  const base = (): string =>
    `rsync://${location.user === undefined ? '' : `${location.user}@`}${daemonDisplay(connectTo ?? location)}/${location.module}`
  const display = daemonDisplay(location)
  const where = `${display}::${location.module}`
  const url = (path: string): string => (path === '' ? `${base()}/` : `${base()}/${path}`)
  const connectionOptions = [
    '--no-motd',
    // each small request is a round trip: without it, Nagle and delayed ACKs add ~40 ms to each (the daemon wants "socket options = TCP_NODELAY" too)
    '--sockopts=TCP_NODELAY',
    `--contimeout=${options.connectTimeoutSeconds ?? 30}`,
    `--timeout=${options.ioTimeoutSeconds ?? 300}`,
  ]

  /**
   * The password, which rsync reads on its stdin (`--password-file=-`): so it reaches an rsync that
   * runs through sudo as well, where RSYNC_PASSWORD would be lost (sudo clears the environment) and
   * the user's password file refused (rsync as root reads only one that root owns). The password
   * file's text once it passed its check, else RSYNC_PASSWORD.
   */
  let password: string | undefined = options.passwordFile === undefined ? process.env.RSYNC_PASSWORD : undefined
  const auth = (): { readonly options: readonly string[]; readonly input?: string; readonly env?: Readonly<Record<string, string>> } => {
    if (password !== undefined && password !== '') return { options: ['--password-file=-'], input: options.passwordFile === undefined ? `${password}\n` : password }
    // not checked yet (no connection has been made): rsync reads the file itself
    if (options.passwordFile !== undefined) return { options: [`--password-file=${options.passwordFile}`] }
    // rsync asks for a password on the terminal when it has none: an empty one fails instead of hanging
    return { options: [], env: { RSYNC_PASSWORD: '' } }
  }

  // the password file is checked once, before the first connection
  let secrets: Promise<Result<void, TransportError>> | undefined
  const checkSecrets = (): ResultAsync<void, TransportError> => {
    const file = options.passwordFile
    if (file === undefined) return okAsync(undefined)
    const checked = secrets ?? (async (): Promise<Result<void, TransportError>> => checkPasswordFile(file).map((text) => {
      password = text
    }))()
    secrets = checked
    return new ResultAsync(checked)
  }

  // a few rsync connections at a time: a daemon turns away more than its "max connections", whose
  // number its refusal names: from then on no more of ours at once than that
  let limit = Math.max(1, options.maxConnections ?? 4)
  let running = 0
  const waiting: (() => void)[] = []
  const slot = async <T>(work: () => Promise<T>): Promise<T> => {
    // a wait ends when a connection ends; the limit may have fallen meanwhile, so it is asked again
    while (running >= limit) await new Promise<void>((resolve) => waiting.push(resolve))
    running += 1
    try {
      return await work()
    } finally {
      running -= 1
      waiting.shift()?.()
    }
  }

  /** a path of the module (see modulePath), once the tunnel (if any) is open: the urls made next go through it */
  const inModule = (path: string): ResultAsync<string, TransportError> =>
    (options.tunnel === undefined ? okAsync(undefined) : new ResultAsync(options.tunnel()).map((end) => {
      connectTo = end
    })).andThen(() => modulePath(path))

  /**
   * runs one rsync against the daemon; the daemon's own failures become typed errors. One turned
   * away at the module's "max connections" (by ours or by other clients') is tried again shortly,
   * with no more of ours at once than that limit from then on.
   */
  const rsync = (args: readonly string[]): ResultAsync<CommandResult, TransportError> =>
    checkSecrets().andThen(() => new ResultAsync((async (): Promise<Result<CommandResult, TransportError>> => {
      const ran = await retryWhileDaemonBusy(() => slot(async () => {
        const { options: passwordOptions, ...io } = auth()
        return execCommand(['rsync', ...connectionOptions, ...passwordOptions, ...args], io)
      }), (r) => (r.isOk() ? r.value.stderr : undefined), {
        onBusy: (modulesLimit) => {
          limit = Math.max(1, Math.min(limit, modulesLimit))
        },
      })
      if (ran.isErr()) return ran
      const failure = daemonFailure(ran.value, location)
      return failure === undefined ? ran : err(failure)
    })()))

  /** exit 23 with "No such file" is rsync's answer for a path that is not there */
  const absent = (r: CommandResult): boolean => r.exitCode === 23 && /No such file or directory \(2\)/.test(r.stderr)

  const failed = (what: string, given: string, r: CommandResult): TransportError => {
    const details = { host: display, path: given, exitCode: r.exitCode, stderr: r.stderr }
    // the module's own directory is '' (a location without a path)
    const path = given === '' || given === '/' ? 'in the top directory' : given
    if (/Permission denied|Operation not permitted|Read-only file system/.test(r.stderr)) {
      return bbError('IO_FAILED', `cannot ${what} ${path} in module ${location.module} at ${display}: permission denied`, 'let the daemon write there: "uid"/"gid" of the module in rsyncd.conf and the ownership of its path', details)
    }
    if (absent(r)) return bbError('NOT_FOUND', `cannot ${what} ${path} in module ${location.module} at ${display}: it does not exist`, 'check the path, or create its parent directory', details)
    return bbError('IO_FAILED', `cannot ${what} ${path} in module ${location.module} at ${display}: rsync exit ${r.exitCode}`, 'see the end of stderr', details)
  }

  /** a temporary directory on this host for the duration of `work`, removed afterwards (or, after a kill -9, by a later run) */
  const withTemp = <T>(work: (dir: string) => ResultAsync<T, TransportError>): ResultAsync<T, TransportError> =>
    fromThrowable(() => makeRunDirectory(RSYNCD_TEMP), ioError('create a temporary directory in', tmpdir()))()
      .asyncAndThen((dir) => new ResultAsync((async (): Promise<Result<T, TransportError>> => {
        const result = await work(dir)
        await rm(dir, { recursive: true, force: true })
        return result
      })()))

  const listOnly = (path: string, self: boolean): ResultAsync<ListedEntry[] | undefined, TransportError> =>
    inModule(path).andThen((p) => rsync(['--list-only', '--no-human-readable', '-l', ...(self ? ['-d', url(p).replace(/\/$/, '/.')] : [`${url(p).replace(/\/$/, '')}/`])]))
      .andThen((r) => (r.exitCode === 0 ? ok(parseListOnly(r.stdout)) : absent(r) ? ok(undefined) : err(failed(self ? 'stat' : 'list', path, r))))

  const stat = (path: string): ResultAsync<EntryStat | undefined, TransportError> =>
    listOnly(path, true).map((entries) => {
      const entry = entries?.[0]
      return entry === undefined ? undefined : { kind: entry.kind, size: entry.size, mtime: entry.mtime, device: 0, inode: 0 }
    })

  const list = (directory: string): ResultAsync<DirEntry[], TransportError> =>
    listOnly(directory, false).andThen((entries) => (entries === undefined
      ? err(bbError('NOT_FOUND', `cannot list ${directory} in module ${location.module} at ${display}: it does not exist`, 'check the path, or create it', { host: display, path: directory }))
      : ok(entries.filter((e) => e.name !== '.').map((e) => ({ name: e.name, kind: e.kind })))))

  const readFileAt = (path: string): ResultAsync<string | undefined, TransportError> =>
    inModule(path).andThen((p) => withTemp((dir) => rsync([url(p), join(dir, 'file')]).andThen((r) => {
      if (absent(r)) return okAsync(undefined)
      if (r.exitCode !== 0) return errAsync(failed('read', path, r))
      return ResultAsync.fromPromise(readFile(join(dir, 'file'), 'utf8'), ioError('read', join(dir, 'file')))
    })))

  // rsync writes into a temporary name beside the file and renames it: a reader sees old or new
  const writeFileAtomic = (path: string, data: string): ResultAsync<void, TransportError> =>
    inModule(path).andThen((p) => withTemp((dir) => ResultAsync.fromPromise(writeFile(join(dir, 'file'), data, { mode: 0o600 }), ioError('write', join(dir, 'file')))
      .andThen(() => rsync(['--fsync', join(dir, 'file'), url(p)]))
      .andThen((r) => (r.exitCode === 0 ? ok(undefined) : err(failed('write', path, r))))))

  /** one rsync of the directory's matching files into a local one, then read there */
  const readFiles = (directory: string, suffixes: readonly string[]): ResultAsync<ReadonlyMap<string, string>, TransportError> =>
    inModule(directory).andThen((p) => withTemp((dir) => rsync(['-d', ...suffixes.map((s) => `--include=*${literal(s)}`), '--exclude=*', `${url(p).replace(/\/$/, '')}/`, `${dir}/`])
      .andThen((r) => {
        if (absent(r)) return okAsync(new Map<string, string>())
        if (r.exitCode !== 0) return errAsync(failed('read', directory, r))
        return ResultAsync.fromPromise((async () => {
          const files = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile() && suffixes.some((s) => e.name.endsWith(s)))
          return new Map(await Promise.all(files.map(async (e) => [e.name, await readFile(join(dir, e.name), 'utf8')] as const)))
        })(), ioError('read', dir))
      })))

  /**
   * A local tree of the files to write and the links to make (and the directories of the files to
   * remove), copied with -r -l: filters let only those names through, so nothing else there is
   * touched; --delete-after removes the named files once every write is in place (--fsync: flushed).
   */
  const changeFiles = (directory: string, changes: FileChanges): ResultAsync<void, TransportError> => {
    const writes = changes.write ?? []
    const links = changes.link ?? []
    const removes = changes.remove ?? []
    const relative = [...writes.map((w) => w.path), ...links.map((l) => l.path), ...removes].map((path) => posix.normalize(path))
    const bad = relative.find((path) => path.startsWith('/') || path === '.' || path.split('/').includes('..'))
    if (bad !== undefined) return errAsync(bbError('INVALID_OPTIONS', `${bad} is not a path inside ${directory}`, 'this is a bug in bbackup; please report it'))
    const dirs = new Set(relative.flatMap((path) => path.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))))
    const filters = [...[...dirs].sort().map((d) => `--include=/${literal(d)}/`), ...relative.map((path) => `--include=/${literal(path)}`), '--exclude=*']
    return inModule(directory).andThen((p) => withTemp((dir) => ResultAsync.fromPromise((async () => {
      for (const d of dirs) await mkdirLocal(join(dir, d), { recursive: true })
      for (const w of writes) await writeFile(join(dir, posix.normalize(w.path)), w.data, { mode: 0o600 })
      for (const l of links) await symlink(l.target, join(dir, posix.normalize(l.path)))
    })(), ioError('write', dir))
      .andThen(() => rsync(['-r', '-l', '--fsync', ...(process.getuid?.() === 0 ? OWNERS : []), ...(removes.length > 0 ? ['--delete-after'] : []), ...filters, `${dir}/`, `${url(p).replace(/\/$/, '')}/`]))
      .andThen((r) => (r.exitCode === 0 ? ok(undefined) : err(failed('write', directory, r))))))
  }

  // a file root wrote (with changeFiles, owned by root here), read back with its owner as the daemon gives it
  const keepsOwners = (path: string): ResultAsync<boolean, TransportError> =>
    inModule(path).andThen((p) => withTemp((dir) => rsync([...OWNERS, url(p), join(dir, 'back')])
      .andThen((r) => (r.exitCode === 0 ? ResultAsync.fromPromise(lstat(join(dir, 'back')), ioError('read', join(dir, 'back'))) : errAsync(failed('read', path, r))))
      .map((back) => back.uid === 0 && back.gid === 0)))

  const mkdir = (path: string, o: { readonly recursive?: boolean } = {}): ResultAsync<void, TransportError> =>
    inModule(path).andThen((p) => withTemp((dir) => rsync(['-d', ...(o.recursive === true ? ['--mkpath'] : []), `${dir}/`, `${url(p)}/`])
      .andThen((r) => (r.exitCode === 0 ? ok(undefined) : err(failed('create', path, r))))))

  const symlinkAt = (target: string, path: string): ResultAsync<void, TransportError> =>
    inModule(path).andThen((p) => withTemp((dir) => ResultAsync.fromPromise(symlink(target, join(dir, 'link')), ioError('create a link in', dir))
      .andThen(() => rsync(['-l', join(dir, 'link'), url(p)]))
      .andThen((r) => (r.exitCode === 0 ? ok(undefined) : err(failed('link', path, r))))))

  const readlink = (path: string): ResultAsync<string | undefined, TransportError> =>
    listOnly(path, true).map((entries) => entries?.[0]?.linkTarget)

  /**
   * deletes one name of its directory: an empty directory synced with --delete, every other name
   * excluded (so protected). Without `recursive` only that name is matched, and rsync keeps a
   * directory that is not empty (it says so on stdout, and exits 0), which is an error here.
   */
  const remove = (path: string, o: { readonly recursive?: boolean } = {}): ResultAsync<void, TransportError> =>
    inModule(path).andThen((p) => {
      if (p === '') return errAsync(bbError('INVALID_OPTIONS', `refusing to remove the whole module ${location.module}`, 'this is a bug in bbackup; please report it'))
      const parent = posix.dirname(p) === '.' ? '' : posix.dirname(p)
      const name = literal(posix.basename(p))
      const filters = o.recursive === true ? ['-r', `--include=/${name}`, `--include=/${name}/**`] : ['-d', `--include=/${name}`]
      return withTemp((dir) => rsync([...filters, '--delete', '--exclude=*', `${dir}/`, `${url(parent).replace(/\/$/, '')}/`])
        .andThen((r) => {
          if (/cannot delete non-empty directory/.test(r.stdout)) {
            return err(bbError('IO_FAILED', `cannot remove ${path} in module ${location.module} at ${display}: it is a directory that is not empty`, 'this is a bug in bbackup (it removes trees only when it means to); please report it', { host: display, path }))
          }
          return r.exitCode === 0 || absent(r) ? ok(undefined) : err(failed('remove', path, r))
        }))
    })

  const spawn = (argv: readonly string[]): RunningCommand => ({
    argv, pid: undefined, stdout: undefined, stdin: undefined, bytesWritten: async () => undefined, kill: () => undefined,
    done: errAsync(unsupported(`run ${argv[0] ?? 'a command'}`, where)),
  })

  return {
    location,
    filesOnly: true,
    exec: (argv) => errAsync(unsupported(`run ${argv[0] ?? 'a command'}`, where)),
    spawn,
    readFile: readFileAt,
    writeFileAtomic,
    readFiles,
    changeFiles,
    stat,
    list,
    mkdir,
    rename: () => errAsync(unsupported('rename', where)),
    symlink: symlinkAt,
    readlink,
    remove,
    lock: (path): ResultAsync<never, LockError> =>
      errAsync(bbError('LOCK_FAILED', `bbackup keeps its locks on the host it runs on, not in the daemon module ${where} (${path})`, 'give the job a local --state-dir')),
    inspectLock: () => okAsync(undefined),
    keepsOwners,
    rsyncEndpoint: (path) => {
      const p = modulePath(path).unwrapOr(path)
      const { options: passwordOptions, input, env } = auth()
      return {
        spec: url(p) + (path.endsWith('/') && p !== '' ? '/' : ''), options: [...connectionOptions, ...passwordOptions],
        ...(env === undefined ? {} : { env }), ...(input === undefined ? {} : { input: () => input }),
      }
    },
  }
}
