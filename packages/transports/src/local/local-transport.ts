import { dirname } from 'node:path'
import { err, errAsync, ok, type ResultAsync } from 'neverthrow'
import { bbError, type LocalLocation, type Transport, type TransportError } from '@bb/core'
import { execCommand } from './exec.js'
import { list, mkdir, readFile, readlink, remove, rename, stat, symlink, syncDirectory, writeFileAtomic } from './files.js'
import { acquireLock, inspectLock } from './lock-file.js'
import { sudoExec, sudoSpawn, sudoWrap } from './sudo.js'
import { spawnWithFilters } from './zstd.js'

export interface LocalTransportOptions {
  /**
   * programs that run as root through `sudo -n` (`['btrfs']`: bbackup as a user that is not root,
   * with a sudoers rule for them); every other command and the file operations run as this user.
   * With `mv` among them, a rename the user may not make (a root-owned directory moved to another
   * directory) is made by `mv` through sudo; with `rm`, so is a recursive removal.
   */
  readonly sudo?: readonly string[]
}

/** the user may not: permission, not a missing file or a full disk */
const denied = (e: TransportError): boolean => e.code === 'IO_FAILED' && ['EACCES', 'EPERM'].includes(String(e.details?.errno))

/**
 * The transport for paths on this host.
 * @example
 * import { localTransport } from '@bb/transports/local'
 * const target = localTransport('/srv/backups/home')
 * await target.exec(['rsync', '--version'])
 * // btrfs as a user that is not root: sudoers has "backup ALL=(root) NOPASSWD: /usr/bin/btrfs"
 * const source = localTransport('/home', { sudo: ['btrfs'] })
 */
export const localTransport = (path: string, options: LocalTransportOptions = {}): Transport => {
  const location: LocalLocation = { kind: 'local', path }
  const wrap = options.sudo === undefined || options.sudo.length === 0 ? undefined : sudoWrap(options.sudo)
  const exec = wrap === undefined ? execCommand : sudoExec(wrap, execCommand)
  /** `argv` through sudo, as the way a file operation the user was refused is made */
  const asRoot = (argv: readonly string[], refused: TransportError): ResultAsync<void, TransportError> => exec(argv).andThen((r) => (r.exitCode === 0
    ? ok(undefined)
    : err(bbError('IO_FAILED', `${refused.message}, and ${argv[0] ?? ''} through sudo failed too: ${r.stderr.trim() || `exit ${r.exitCode}`}`, 'check the permissions there, and what sudo may run (bbackup doctor prints the sudoers line)', { ...refused.details, argv: [...argv], stderr: r.stderr }))))
  const rootMay = (program: string): boolean => wrap?.wraps([program]) === true
  return {
    location,
    exec,
    spawn: wrap === undefined ? spawnWithFilters : sudoSpawn(wrap, spawnWithFilters),
    readFile,
    writeFileAtomic,
    stat,
    list,
    mkdir,
    rename: rootMay('mv')
      ? (from, to) => rename(from, to).orElse((e) => (denied(e) ? asRoot(['mv', '-fT', '--', from, to], e).andThen(() => syncDirectory(dirname(to))) : errAsync(e)))
      : rename,
    symlink,
    readlink,
    remove: rootMay('rm')
      ? (path, o = {}) => remove(path, o).orElse((e) => (o.recursive === true && denied(e) ? asRoot(['rm', '-rf', '--one-file-system', '--', path], e) : errAsync(e)))
      : remove,
    lock: acquireLock,
    inspectLock,
    rsyncEndpoint: (p) => ({ spec: p, options: [] }),
  }
}
