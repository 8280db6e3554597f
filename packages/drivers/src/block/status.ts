import { join } from 'node:path'
import type { ResultAsync } from 'neverthrow'
import { aheadOfClock, type BbError, type Transport } from '@bb/core'
import { localDirectory } from './locked.js'
import { dueTags, formatSchedule, nextDue } from './schedule.js'
import { keptBases, sourceLocation, type BlockSource, type KeptBase } from './source.js'
import { asResult, must } from './stop.js'
import { changedSinceSealed, distrustReason, LOCK_FILE, paths, readVolume, readVolumeConfig, scheduled, sealOf, type Revision } from './volume.js'

export interface VolumeStatus {
  readonly dir: string
  readonly source: string
  readonly chunkSize: number
  readonly schedule: string
  /** complete revisions, oldest first (those dated ahead of the clock first: see readVolume) */
  readonly revisions: readonly Revision[]
  /** files of unfinished revisions: being written by the run that holds the lock, else removed by the next backup */
  readonly incomplete: readonly string[]
  /** the run that holds the volume's lock now (a backup, prune, verify or distrust), if any; a lock its holder left behind is not one */
  readonly runningNow?: { readonly command: string; readonly pid: number; readonly host: string; readonly since: string }
  /** revisions whose image is gone from the directory: restore cannot use them */
  readonly withoutImage: readonly string[]
  /** revisions (not distrusted) whose image was written to or replaced after the backup sealed it: the next backup checks one before it is a parent */
  readonly changedSinceMade: readonly string[]
  /** the distrusted revisions and why, oldest first */
  readonly distrusted: readonly { readonly uuid: string; readonly reason: string }[]
  /**
   * the read-only copies kept beside the image as the next backup's base (one, after a backup of a
   * local image file): each costs the space of what the VM wrote since; remove it to give that back
   */
  readonly bases: readonly KeptBase[]
  readonly summary: {
    readonly revisions: number
    /** the timestamp of the newest revision made before now (one dated ahead of the clock sorts last by its timestamp, but is older) */
    readonly newest: string | undefined
    readonly oldest: string | undefined
    /** revisions dated ahead of the clock (a clock that was ahead named them), oldest first: they serve no schedule slot */
    readonly ahead: readonly string[]
    /** bytes written by all kept revisions: what the volume's backups cost on disk, about */
    readonly bytesWritten: number
    readonly verified: number
    readonly distrusted: number
    /** the tags a backup now would carry (empty: nothing due) */
    readonly dueNow: readonly string[]
    readonly nextDue: string
  }
}

/**
 * The revisions of a volume with their timestamp, size, duration, tags and trust, and a summary,
 * and the run that holds its lock now. Reads only; takes no lock.
 */
export const volumeStatus = (options: { readonly at: Transport; readonly now?: () => Date }): ResultAsync<VolumeStatus, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    const config = await readVolumeConfig(options.at, dir)
    const now = (options.now ?? (() => new Date()))()
    const [{ revisions, incomplete, withoutImage }, bases, lock] = await Promise.all([readVolume(options.at, dir, now), keptBases(options.at, config), must(options.at.inspectLock(join(dir, LOCK_FILE)))])
    const ahead = revisions.filter((r) => aheadOfClock({ time: new Date(r.timestamp) }, now.getTime()))
    const held = lock?.verdict.stale === false ? lock.info : undefined
    const changedSinceMade: string[] = []
    for (const r of revisions) {
      const seal = r.trust === 'distrusted' || withoutImage.includes(r.uuid) ? undefined : await sealOf(paths(dir, r.uuid).image)
      if (seal !== undefined && changedSinceSealed(r, seal)) changedSinceMade.push(r.uuid)
    }
    return {
      dir, source: config.source, chunkSize: config.chunkSize, schedule: formatSchedule(config.schedule), revisions, incomplete, withoutImage, bases,
      ...(held === undefined ? {} : { runningNow: { command: held.command, pid: held.pid, host: held.host, since: held.startedAt } }),
      changedSinceMade,
      distrusted: revisions.filter((r) => r.trust === 'distrusted').map((r) => ({ uuid: r.uuid, reason: distrustReason(r) })),
      summary: {
        revisions: revisions.length,
        newest: revisions.at(-1)?.timestamp,
        oldest: revisions.filter((r) => !ahead.includes(r))[0]?.timestamp ?? revisions[0]?.timestamp,
        ahead: ahead.map((r) => r.uuid),
        bytesWritten: revisions.reduce((n, r) => n + r.stats.bytesWritten, 0),
        verified: revisions.filter((r) => r.trust === 'verified').length,
        distrusted: revisions.filter((r) => r.trust === 'distrusted').length,
        dueNow: dueTags(config.schedule, scheduled(revisions), now, config.spreadSeconds),
        nextDue: nextDue(config.schedule, now, config.spreadSeconds).toISOString(),
      },
    }
  })

/**
 * Where the volume's source is (volume.json): a path on this host, a location on another host
 * for which a backup needs a transport (`sourceHost`), or an RBD image (read here).
 */
export const volumeSource = (at: Transport): ResultAsync<BlockSource, BbError> =>
  asResult(async () => must(sourceLocation((await readVolumeConfig(at, localDirectory(at))).source)))
