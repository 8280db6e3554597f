import type { LocalLocation, Transport } from '@bb/core'
import { execCommand } from './exec.js'
import { list, mkdir, readFile, readlink, remove, rename, stat, symlink, writeFileAtomic } from './files.js'
import { acquireLock, inspectLock } from './lock-file.js'
import { spawnWithFilters } from './zstd.js'

/**
 * The transport for paths on this host.
 * @example
 * import { localTransport } from '@bb/transports/local'
 * const target = localTransport('/srv/backups/home')
 * await target.exec(['rsync', '--version'])
 */
export const localTransport = (path: string): Transport => {
  const location: LocalLocation = { kind: 'local', path }
  return {
    location,
    exec: execCommand,
    spawn: spawnWithFilters,
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
