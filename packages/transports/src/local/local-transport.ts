import type { LocalLocation, Transport } from '@bb/core'
import { execCommand } from './exec.js'
import { list, mkdir, readFile, readlink, remove, rename, stat, symlink, writeFileAtomic } from './files.js'
import { acquireLock, inspectLock } from './lock-file.js'
import { sudoExec, sudoSpawn, sudoWrap } from './sudo.js'
import { spawnWithFilters } from './zstd.js'

export interface LocalTransportOptions {
  /**
   * programs that run as root through `sudo -n` (`['btrfs']`: bbackup as a user that is not root,
   * with a sudoers rule for them); every other command and the file operations run as this user
   */
  readonly sudo?: readonly string[]
}

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
  return {
    location,
    exec: wrap === undefined ? execCommand : sudoExec(wrap, execCommand),
    spawn: wrap === undefined ? spawnWithFilters : sudoSpawn(wrap, spawnWithFilters),
    readFile,
    writeFileAtomic,
    stat,
    list,
    mkdir,
    rename,
    symlink,
    readlink,
    remove,
    lock: acquireLock,
    inspectLock,
    rsyncEndpoint: (p) => ({ spec: p, options: [] }),
  }
}
