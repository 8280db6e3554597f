import { join } from 'node:path'
import { bbError, type Transport } from '@bb/core'
import { must, stop } from './stop.js'
import { LOCK_FILE } from './volume.js'

/** The backup directory as a local path; the block driver reads and writes its images directly. */
export const localDirectory = (at: Transport): string =>
  at.location.kind === 'local'
    ? at.location.path
    : stop(bbError('UNSUPPORTED', `a block volume's backup directory must be on this host, not ${at.location.kind === 'ssh' ? `${at.location.host}:` : ''}${at.location.path}`, 'run bbackup on the backup server (it reads remote sources over ssh)'))

/** Runs `body` holding the volume's lock; the lock is released however it ends. */
export const withVolumeLock = async <T>(at: Transport, command: string, options: { readonly waitSeconds?: number; readonly signal?: AbortSignal | undefined }, body: () => Promise<T>): Promise<T> => {
  const lock = await must(at.lock(join(localDirectory(at), LOCK_FILE), {
    command, ...(options.waitSeconds === undefined ? {} : { waitSeconds: options.waitSeconds }), ...(options.signal === undefined ? {} : { signal: options.signal }),
  }))
  try {
    return await body()
  } finally {
    await lock.release()
  }
}
