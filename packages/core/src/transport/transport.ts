import { errAsync, okAsync, type ResultAsync } from 'neverthrow'
import { posix } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { bbError, type BbError } from '../errors.js'
import type { Location } from '../location/location.js'

/** How a command ended. A non-zero exit is a value here, not an error: drivers classify it. */
export interface CommandResult {
  readonly argv: readonly string[]
  readonly exitCode: number
  /** the stdout of the command, unless a line handler consumed it */
  readonly stdout: string
  /** the last few KiB of stderr */
  readonly stderr: string
}

export interface ExecOptions {
  readonly signal?: AbortSignal
  readonly cwd?: string
  readonly env?: Readonly<Record<string, string>>
  /** receives stdout line by line (`\r` or `\n` ends a line); stdout is then not kept */
  readonly onStdoutLine?: (line: string) => void
  /** written to the command's stdin (small: a file's content), which is closed after it */
  readonly input?: string
}

/** One command of {@link Transport.execEach}: its exit code, and what it printed on stdout and stderr, together. */
export interface CombinedResult {
  readonly argv: readonly string[]
  readonly exitCode: number
  readonly output: string
}

/**
 * A command that runs while others read its output: `btrfs send` feeding `btrfs receive`. Its
 * stdout is an OS pipe that another command takes as its stdin, so the bytes never pass through
 * JavaScript.
 */
export interface RunningCommand {
  readonly argv: readonly string[]
  /** the pid of the process on this host (for a remote command: the ssh client's) */
  readonly pid: number | undefined
  /** the read end of its stdout, when started with `stdout: 'pipe'`; hand it to one other command */
  readonly stdout: Readable | undefined
  /** the write end of its stdin, when started with `stdin: 'pipe'`; hand it to one other command */
  readonly stdin: Writable | undefined
  /** how it ended; the non-zero exit is a value, as with `exec` */
  readonly done: ResultAsync<CommandResult, TransportError>
  /** bytes it has written so far (from /proc/<pid>/io), where this host can tell */
  bytesWritten(): Promise<number | undefined>
  /** bytes it has read so far (from /proc/<pid>/io), where this host can tell: a receiver's count where its sender's is unknown */
  bytesRead?(): Promise<number | undefined>
  kill(signal?: NodeJS.Signals): void
}

export interface SpawnOptions {
  readonly signal?: AbortSignal
  /** the stdout of another command (see {@link RunningCommand.stdout}), or `'pipe'` for another to write into; nothing when omitted */
  readonly stdin?: Readable | 'pipe'
  /**
   * `'pipe'` to connect its stdout to a command started after it; the stdin of a command started
   * before it (see {@link RunningCommand.stdin}), which it then writes into directly; discarded otherwise
   */
  readonly stdout?: 'pipe' | 'ignore' | Writable
  /**
   * a stream over a slow link: `zstd` compresses the command's stdout on its own host before it
   * leaves (the command's exit status stays the one reported; `bytesWritten` counts it uncompressed)
   */
  readonly compressStdout?: 'zstd'
  /** the other end of {@link compressStdout}: stdin is decompressed on the command's host before it reads it */
  readonly decompressStdin?: 'zstd'
  /**
   * The command reads its stdin only up to its input's own end and stops there (`btrfs receive -e`
   * at the stream's end marker): a transport may carry that stdin on a channel it goes on using
   * after it (ssh: the master connection's own session, no second login). Its `stdin` may then stay
   * open when the writer is done, so a writer that fails must be stopped with the command.
   */
  readonly selfDelimited?: boolean
  /**
   * The command's stdout, handed to another command's stdin (`stdout` a Writable), may come back on
   * a channel the transport goes on using after it (ssh: the master connection's own session, no
   * second login); its bytes then pass through this process, which counts them (`bytesWritten`).
   */
  readonly sharedStdout?: boolean
}

export interface EntryStat {
  readonly kind: 'file' | 'directory' | 'symlink' | 'other'
  readonly size: number
  readonly mtime: Date
  readonly device: number
  readonly inode: number
}

export interface DirEntry {
  readonly name: string
  readonly kind: EntryStat['kind']
}

/** What a running job wrote into its lock file: enough to tell a live holder from a dead one. */
export interface LockInfo {
  readonly pid: number
  readonly host: string
  /** /proc/sys/kernel/random/boot_id: a lock from an earlier boot is stale */
  readonly bootId: string
  /** /proc/<pid>/stat field 22 (clock ticks after boot): tells a reused pid from the holder */
  readonly pidStartTime: number
  readonly startedAt: string
  readonly command: string
}

/** A lock held by this process; release it exactly once. */
export interface LockHandle {
  readonly path: string
  readonly info: LockInfo
  /** set when a stale lock was taken over: what it held, and why it was judged stale */
  readonly tookOver?: { readonly previous: LockInfo; readonly reason: string }
  release(): ResultAsync<void, TransportError>
}

export type TransportError = BbError<
  'IO_FAILED' | 'NOT_FOUND' | 'COMMAND_FAILED' | 'TOOL_MISSING' | 'CANCELLED' | 'DISK_FULL' | 'INVALID_OPTIONS'
  // reaching another host: the first three are never retried, NETWORK_FAILED is (with backoff)
  | 'HOSTKEY_UNKNOWN' | 'HOSTKEY_CHANGED' | 'AUTH_FAILED' | 'NETWORK_FAILED'
  // an rsync daemon module: a password file others can read; an operation a module cannot do
  | 'INSECURE_SECRETS' | 'UNSUPPORTED'
>
export type LockError = TransportError | BbError<'LOCK_HELD' | 'LOCK_FAILED'>

/**
 * Small files written and removed together ({@link Transport.changeFiles}), at paths relative to
 * the directory. For a transport where each request is a connection of its own (an rsync daemon
 * module, ~15 ms each), a backup's bookkeeping would otherwise cost more than a small backup.
 */
export interface FileChanges {
  readonly write?: readonly { readonly path: string; readonly data: string }[]
  /** symbolic links made (`path` points at `target`), replacing a link already there, with the writes */
  readonly link?: readonly { readonly path: string; readonly target: string }[]
  /** files only: a directory that is not empty stays */
  readonly remove?: readonly string[]
}

/**
 * Runs commands at a location and handles its small files. Commands are argv arrays, never shell
 * strings; bulk data never passes through JavaScript. Paths are paths at the location.
 */
export interface Transport {
  readonly location: Location
  /**
   * Set when the location runs no commands and cannot rename (an rsync daemon module): files get
   * there only through rsync, so `exec`, `spawn` and `rename` fail with UNSUPPORTED, and a driver
   * marks unfinished work with files instead of renaming it into place.
   */
  readonly filesOnly?: boolean
  /** Runs argv to the end; resolves with its exit code, fails only when it cannot be started or is cancelled. */
  exec(argv: readonly string[], options?: ExecOptions): ResultAsync<CommandResult, TransportError>
  /**
   * Runs several short commands, one after the other, in one go: one round trip on a remote host
   * instead of one each. Each result has the command's exit code and its stdout and stderr
   * together (`output`, text: without NUL bytes and trailing newlines). Optional: where it is
   * missing, run them with `exec`.
   */
  execEach?(argvs: readonly (readonly string[])[], options?: ExecOptions): ResultAsync<CombinedResult[], TransportError>
  /** Starts argv with its stdin and stdout as pipes to connect to other commands (see {@link RunningCommand}). */
  spawn(argv: readonly string[], options?: SpawnOptions): RunningCommand
  /**
   * Whether the host runs whatever bbackup asks of it (a login shell: no forced command filters the
   * requests), as far as this transport knows by now (for ssh: once connected). A driver may then
   * read more than the one directory it works in, e.g. list the filesystem's subvolumes in one
   * command instead of a command per backup. Optional; absent means it does not know.
   */
  unrestricted?(): boolean
  /**
   * Starts reaching the host now (an ssh login), if it is not reached yet, so that the commands
   * that follow do not wait for it; resolves once it is reached or could not be (the first command
   * then says why, without trying again). Optional: a local path has nothing to reach.
   */
  connect?(signal?: AbortSignal): Promise<void>
  /**
   * Says that a spawn will follow soon whose stdin is a pipe and whose stdout is discarded (a
   * receive): a transport to another host opens that session now, so that the login there runs
   * while other work goes on, and the spawn takes it. Optional; a session nobody takes ends with the run.
   * `selfDelimited`: the spawn will be {@link SpawnOptions.selfDelimited}, which a connection that is
   * open anyway may take instead.
   */
  prepareSpawn?(options?: { readonly selfDelimited?: boolean }): void
  /** The file's text, or undefined when it does not exist. */
  readFile(path: string): ResultAsync<string | undefined, TransportError>
  /** Writes a small file so that a crash leaves the old content or the new, never a torn one. */
  writeFileAtomic(path: string, data: string): ResultAsync<void, TransportError>
  /**
   * The files directly in `directory` whose names end in one of `suffixes`, with their text, in one
   * round trip (small files: records, markers); empty when the directory is not there. Optional:
   * where it is missing, `list` and `readFile` each (see {@link FileChanges} for why).
   */
  readFiles?(directory: string, suffixes: readonly string[]): ResultAsync<ReadonlyMap<string, string>, TransportError>
  /**
   * Several small changes under `directory` in one round trip: every write (atomic and flushed, its
   * missing directories inside `directory` made) and link, and only then every removal. Optional:
   * where it is missing, `mkdir`, `writeFileAtomic`, `symlink` and `remove` each.
   */
  changeFiles?(directory: string, changes: FileChanges): ResultAsync<void, TransportError>
  /** undefined when nothing is at the path; symlinks are not followed. */
  stat(path: string): ResultAsync<EntryStat | undefined, TransportError>
  list(directory: string): ResultAsync<DirEntry[], TransportError>
  mkdir(path: string, options?: { readonly recursive?: boolean }): ResultAsync<void, TransportError>
  /** rename(2), then fsync of the directory that holds the new name */
  rename(from: string, to: string): ResultAsync<void, TransportError>
  /** points `path` at `target`, replacing an existing link atomically */
  symlink(target: string, path: string): ResultAsync<void, TransportError>
  readlink(path: string): ResultAsync<string | undefined, TransportError>
  /** removes a file, or a directory tree with `recursive` */
  remove(path: string, options?: { readonly recursive?: boolean }): ResultAsync<void, TransportError>
  /** Takes an exclusive lock file; a stale one (dead or reused pid, earlier boot) is taken over. */
  lock(path: string, options: { readonly command: string; readonly waitSeconds?: number; readonly signal?: AbortSignal }): ResultAsync<LockHandle, LockError>
  /** The lock file's content, if any, and whether its holder is alive. */
  inspectLock(path: string): ResultAsync<LockStatus | undefined, TransportError>
  /**
   * How rsync names a path here: a plain path for local, `host:path` plus `-e` options for ssh,
   * `rsync://host/module/path` plus `--password-file=-` for a daemon; `env` goes to the rsync
   * process, `input()` to its stdin (a daemon's password: a function, so that an endpoint that is
   * printed or logged never shows it).
   */
  rsyncEndpoint(path: string): { readonly spec: string; readonly options: readonly string[]; readonly env?: Readonly<Record<string, string>>; readonly input?: () => string }
  /**
   * An rsync daemon's module: whether it keeps the owner and group rsync gives a file (a daemon
   * that runs as another account than root, without `fake super`, makes every file its own): true
   * when the file at `path`, which root wrote with {@link Transport.changeFiles} (owned by root),
   * reads back owned by root. Asked by root only.
   */
  keepsOwners?(path: string): ResultAsync<boolean, TransportError>
}

export interface LockStatus {
  readonly path: string
  readonly info: LockInfo | undefined
  readonly verdict: LockVerdict
}

export type LockVerdict = { readonly stale: false; readonly reason: string } | { readonly stale: true; readonly reason: string }

/** Where following a path's symbolic links ends: the place reached, what is there, the last link on the way, and whether they went round. */
interface LinkEnd {
  readonly path: string
  readonly stat: EntryStat | undefined
  readonly lastLink: EntryStat | undefined
  readonly loop: boolean
}

/** where the link at `path` whose content is `to` leads */
const linkTarget = (path: string, to: string): string => (posix.isAbsolute(to) ? to : posix.join(posix.dirname(path), to))

/** the kernel's bound (MAXSYMLINKS): more links than this on one path is a loop */
const MAX_LINKS = 40

const followLinks = (at: Transport, path: string, lastLink?: EntryStat, hops = 0): ResultAsync<LinkEnd, BbError> =>
  at.stat(path).andThen((s): ResultAsync<LinkEnd, BbError> => {
    if (s?.kind !== 'symlink') return okAsync({ path, stat: s, lastLink, loop: false })
    if (hops >= MAX_LINKS) return okAsync({ path, stat: s, lastLink: s, loop: true })
    return at.readlink(path).andThen((to) => (to === undefined
      ? okAsync({ path, stat: s, lastLink: s, loop: false })
      : followLinks(at, linkTarget(path, to), s, hops + 1)))
  })

/**
 * What is at `path`, a symbolic link followed (link by link, as the kernel would, up to 40): what
 * it leads to, or the last link on the way when it leads to nothing. For the places a user gives
 * and their parents; what lies inside a place is never followed.
 */
export const statFollowing = (at: Transport, path: string): ResultAsync<EntryStat | undefined, BbError> =>
  followLinks(at, path).map((end) => end.stat ?? end.lastLink)

/**
 * What the place a user gave (a source, a target) is, following it when it is a symbolic link, as
 * rsync, rsnapshot and btrbk do with the paths they are given. A link to nothing is an error that
 * says where it leads (most often onto a disk not mounted), and links that go round in a loop are
 * one that says so.
 * @example
 * statGiven(target, '/backup', 'target') // /backup -> /mnt/usb/backup: the directory's stat
 */
export const statGiven = (at: Transport, path: string, what: 'source' | 'target'): ResultAsync<EntryStat | undefined, BbError> =>
  followLinks(at, path).andThen((end) => {
    if (end.lastLink === undefined || (end.stat !== undefined && !end.loop)) return okAsync(end.stat)
    const code = what === 'source' ? 'SOURCE_UNAVAILABLE' : 'TARGET_UNAVAILABLE'
    return at.readlink(path).andThen((to) => errAsync(end.loop
      ? bbError(code, `the ${what} ${path} is a symbolic link to ${to ?? 'nothing'}, and its links go round in a loop (more than ${MAX_LINKS})`, `see where they lead with: namei ${path}; make one of them lead to a directory`, { path })
      : bbError(code, `the ${what} ${path} is a symbolic link to ${to ?? 'nothing'}${to === undefined || end.path === linkTarget(path, to) ? '' : `, which leads on to ${end.path}`}, which does not exist`,
        'is the disk it leads onto mounted? Mount it, or give the directory itself', { path })))
  })
