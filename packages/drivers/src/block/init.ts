import { randomBytes, randomUUID } from 'node:crypto'
import { promises as fs } from 'node:fs'
import { dirname, join } from 'node:path'
import type { ResultAsync } from 'neverthrow'
import { bbError, stderrTail, type BbError, type Transport } from '@bb/core'
import { localDirectory } from './locked.js'
import { DEFAULT_SCHEDULE, spreadOf, type Schedule } from './schedule.js'
import { checkRbdSnapshot, rbdSize } from './rbd.js'
import { copiesDir, formatBlockSource, freezeSource, inspectRemoteSource, inspectSource, sourceHostOf, sourceLocation } from './source.js'
import { asResult, fsStep, must, stop } from './stop.js'
import { usableChunkSize, VOLUME_FILE, volumeConfigText, type SnapshotMode, type VolumeConfig } from './volume.js'

export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

export interface InitVolumeOptions {
  /** the backup directory (local): new, or empty */
  readonly at: Transport
  /** the image file or block device to back up: an absolute path, or `ssh://host/path` / `host:/path` on another host; or a Ceph RBD image, `rbd:POOL/IMAGE[:conf=FILE][:id=USER]` */
  readonly source: string
  /** for a source on another host: the transport that reaches it, located at the source (an ssh transport) */
  readonly sourceHost?: Transport
  readonly chunkSize?: number
  readonly schedule?: Schedule
  /** 'none': never freeze the source (read it live; each revision carries a warning) */
  readonly snapshot?: SnapshotMode
  /** a source on another host: the program there that scans it, or 'none' to stream (see {@link VolumeConfig.remoteHelper}) */
  readonly remoteHelper?: string
}

/** `4M`, `512K`, `1048576`: bytes. */
export const parseSize = (text: string): number | undefined => {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(text.trim())
  if (m === null) return undefined
  const unit = (m[2] ?? '').charAt(0).toUpperCase()
  return Number(m[1]) * ({ K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[unit] ?? 1)
}

/** Whether `cp --reflink=always` works in a directory, tried with two small files of our own. */
const reflinks = async (at: Transport, directory: string): Promise<{ ok: true } | { ok: false; stderr: string }> => {
  const probe = join(directory, `.bbackup-reflink-probe-${randomBytes(4).toString('hex')}`)
  await fsStep('write', probe, fs.writeFile(probe, randomBytes(4096), { flag: 'wx' }))
  try {
    const r = await must(at.exec(['cp', '--reflink=always', '--', probe, `${probe}.copy`]))
    return r.exitCode === 0 ? { ok: true } : { ok: false, stderr: stderrTail(r.stderr) }
  } finally {
    await fs.rm(probe, { force: true })
    await fs.rm(`${probe}.copy`, { force: true })
  }
}

/** Removes the empty directories from `dir` up to `made` (the first that mkdir created), deepest first. */
const removeMade = async (dir: string, made: string): Promise<void> => {
  for (let d = dir; d.length >= made.length; d = dirname(d)) {
    if (!(await fs.rmdir(d).then(() => true, () => false))) return
    if (d === made) return
  }
}

/**
 * Creates a backup directory for one volume (backy's `init`): checks that the directory can hold
 * reflink copies and that the source can be frozen, then writes `volume.json`.
 * @example
 * await initVolume({ at: localTransport('/srv/backy/vm1'), source: '/var/lib/libvirt/images/vm1.img' })
 */
export const initVolume = (options: InitVolumeOptions): ResultAsync<VolumeConfig, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE
    if (!usableChunkSize(chunkSize)) {
      return stop(bbError('INVALID_OPTIONS', `a chunk size of ${chunkSize} bytes is not usable`, 'give a multiple of 4K from 64K to 64M, e.g. --chunk-size 4M (the default)'))
    }
    const where = await must(sourceLocation(options.source))
    const id = randomUUID()
    const schedule = options.schedule ?? DEFAULT_SCHEDULE
    const snapshot = options.snapshot ?? 'auto'
    if (options.remoteHelper !== undefined && where.kind !== 'ssh') return stop(bbError('INVALID_OPTIONS', 'a remote helper is for a source on another host', `leave out the remote helper for ${options.source}`))
    const config: VolumeConfig = {
      format: 1, id, source: formatBlockSource(where), chunkSize, schedule, spreadSeconds: spreadOf(id, schedule), snapshot, ...(options.remoteHelper === undefined ? {} : { remoteHelper: options.remoteHelper }),
    }
    const remote = await sourceHostOf(config, options.sourceHost)
    const source = where.kind === 'rbd' ? { kind: 'rbd' as const, size: await rbdSize(options.at, where) } : remote === undefined ? await inspectSource(where.path) : await inspectRemoteSource(remote, where.path)
    const existing = await fs.stat(dir).catch(() => undefined)
    if (existing !== undefined && !existing.isDirectory()) {
      return stop(bbError('INVALID_OPTIONS', `${dir} is not a directory`, 'give -b a new or empty directory on btrfs or XFS, e.g. /srv/backy/vm1', { path: dir }))
    }
    // the directories made here are removed again when the volume cannot be set up in them
    // others may read the revisions' directory, never write to it, whatever the umask
    const made = await fsStep('create', dir, fs.mkdir(dir, { recursive: true, mode: 0o755 }))
    let done = false
    try {
      const present = (await must(options.at.list(dir))).map((e) => e.name).filter((n) => n !== 'lost+found')
      if (present.includes(VOLUME_FILE)) return stop(bbError('ALREADY_EXISTS', `${dir} already holds a volume`, `back it up with bbackup backup -b ${dir}, or choose a new directory`, { path: dir }))
      if (present.length > 0) return stop(bbError('ALREADY_EXISTS', `${dir} is not empty (${present.slice(0, 3).join(', ')}${present.length > 3 ? ', …' : ''})`, 'give a new or empty directory: bbackup init never writes among files it did not make', { path: dir }))
      const target = await reflinks(options.at, dir)
      if (!target.ok) {
        return stop(bbError('TARGET_NO_REFLINK', `${dir} cannot hold revisions: its filesystem makes no reflink copies (${target.stderr})`, 'put the backup directory on btrfs or XFS (mkfs.xfs has reflink=1 by default)', { path: dir }))
      }
      if (where.kind === 'rbd') {
        // the check is the freeze a backup makes: a snapshot, removed at once
        if (snapshot === 'auto') await checkRbdSnapshot(options.at, config, where)
      } else if (snapshot === 'auto' && remote !== undefined && source.kind === 'file') {
        // on another host the check is the freeze a backup makes: a reflink copy beside the image, removed at once
        await (await freezeSource(options.at, config, { noSnapshot: false, signal: undefined, remote })).release()
      } else if (snapshot === 'auto') {
        if (source.kind === 'device') {
          return stop(bbError('NO_CONSISTENT_SNAPSHOT', `the block device ${options.source} cannot be frozen for backups: bbackup snapshots image files on btrfs or XFS (reflinks) so far`,
            'give --no-snapshot if nothing writes to it while it is backed up, or back up an image file on btrfs or XFS', { path: options.source }))
        }
        const frozen = await reflinks(options.at, await copiesDir(config))
        if (!frozen.ok) {
          return stop(bbError('NO_CONSISTENT_SNAPSHOT', `${options.source} cannot be frozen for backups: its filesystem makes no reflink copies (${frozen.stderr})`,
            'keep VM images on btrfs or XFS, or give --no-snapshot to read the file live (stop the VM while it is backed up)', { path: options.source }))
        }
      }
      await must(options.at.writeFileAtomic(join(dir, VOLUME_FILE), volumeConfigText(config)))
      done = true
    } finally {
      if (!done && made !== undefined) await removeMade(dir, made)
    }
    return config
  })
