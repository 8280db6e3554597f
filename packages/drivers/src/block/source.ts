import { randomUUID } from 'node:crypto'
import { promises as fs, type Stats } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { bbError, stderrTail, type Transport } from '@bb/core'
import { fsStep, must, stop } from './stop.js'
import type { Consistency, VolumeConfig } from './volume.js'

/** The source as it is read for one revision: a frozen copy where one could be made. */
export interface FrozenSource {
  /** what to read */
  readonly path: string
  readonly size: number
  readonly consistency: Consistency
  readonly warnings: readonly string[]
  /** removes what freezing made; safe to call more than once */
  release(): Promise<void>
}

/** The prefix of the point-in-time copies this volume makes beside an image file. */
const copyPrefix = (config: VolumeConfig): string => `.${basename(config.source)}.bbackup-${config.id.slice(0, 8)}-`

/** A block device's size from sysfs (a stat of a device says 0). */
const deviceSize = async (path: string, stats: Stats): Promise<number> => {
  const major = Math.floor(stats.rdev / 256) & 0xfff
  const minor = (stats.rdev & 0xff) | (Math.floor(stats.rdev / 4096) & 0xfff00)
  const file = `/sys/dev/block/${major}:${minor}/size`
  const sectors = await fsStep('read the size of', path, fs.readFile(file, 'utf8'))
  return Number(sectors.trim()) * 512
}

/** What kind of source a path is, and its size. */
export const inspectSource = async (path: string): Promise<{ readonly kind: 'file' | 'device'; readonly size: number }> => {
  const stats = await fs.stat(path).catch(() => undefined)
  if (stats === undefined) return stop(bbError('SOURCE_UNAVAILABLE', `the source ${path} does not exist`, 'check the path (a VM image file or a block device); if it moved, edit source in volume.json', { path }))
  if (stats.isFile()) return { kind: 'file', size: stats.size }
  if (stats.isBlockDevice()) return { kind: 'device', size: await deviceSize(path, stats) }
  return stop(bbError('INVALID_OPTIONS', `the source ${path} is neither an image file nor a block device`, 'give the image file or the device of the volume to back up', { path }))
}

/**
 * Removes the point-in-time copies an earlier run of this volume left beside its source (it was
 * killed): only names of this volume's pattern, which nothing else makes.
 */
export const removeStaleCopies = async (config: VolumeConfig): Promise<string[]> => {
  const prefix = copyPrefix(config)
  const names = await fs.readdir(dirname(config.source)).catch(() => [] as string[])
  const stale = names.filter((n) => n.startsWith(prefix) && /^[0-9a-f-]{36}$/.test(n.slice(prefix.length)))
  for (const name of stale) await fsStep('remove', join(dirname(config.source), name), fs.rm(join(dirname(config.source), name), { force: true }))
  return stale
}

/**
 * Freezes the source for reading: an image file is reflinked to a private point-in-time copy
 * beside it (btrfs, XFS); with `snapshot: 'none'` the live source is read, with a warning. A
 * source that cannot be frozen is refused.
 */
export const freezeSource = async (at: Transport, config: VolumeConfig, options: { readonly noSnapshot: boolean; readonly signal: AbortSignal | undefined }): Promise<FrozenSource> => {
  const source = config.source
  const { kind, size } = await inspectSource(source)
  if (options.noSnapshot || config.snapshot === 'none') {
    return { path: source, size, consistency: 'none', warnings: [`${source} was read live, without a snapshot: a VM writing to it meanwhile can leave the revision inconsistent`], release: async () => undefined }
  }
  if (kind === 'device') {
    return stop(bbError('NO_CONSISTENT_SNAPSHOT', `the block device ${source} cannot be frozen for the backup: bbackup snapshots image files on btrfs or XFS (reflinks) so far`,
      'stop or freeze what writes to it and give --no-snapshot, or back up an image file on btrfs or XFS', { path: source }))
  }
  const copy = join(dirname(source), `${copyPrefix(config)}${randomUUID()}`)
  let made = false
  const release = async (): Promise<void> => {
    if (made) await fs.rm(copy, { force: true })
    made = false
  }
  const r = await must(at.exec(['cp', '--reflink=always', '--', source, copy], options.signal === undefined ? {} : { signal: options.signal }))
  made = r.exitCode === 0 || (await fs.stat(copy).catch(() => undefined)) !== undefined
  if (r.exitCode !== 0) {
    await release()
    return stop(bbError('NO_CONSISTENT_SNAPSHOT', `${source} cannot be frozen for the backup: its filesystem makes no reflink copies (${stderrTail(r.stderr) || `cp exit ${r.exitCode}`})`,
      'keep VM images on btrfs or XFS, or stop the VM and give --no-snapshot to read the file live', { path: source, stderr: stderrTail(r.stderr) }))
  }
  const frozen = await fsStep('stat', copy, fs.stat(copy))
  return { path: copy, size: frozen.size, consistency: 'reflink', warnings: [], release }
}
