import type { ResultAsync } from 'neverthrow'
import { bbError, type BackupEvent, type BbError, type Transport } from '@bb/core'
import { expireRevisions, type ExpiredRevisions } from './backup.js'
import { localDirectory, withVolumeLock } from './locked.js'
import { asResult, stop } from './stop.js'
import { readVolume, readVolumeConfig, selectRevisions, writeRevision, type Revision } from './volume.js'

interface VolumeOperation {
  /** the backup directory (a local transport) */
  readonly at: Transport
  /** wait this long for another run on the volume to finish (default: fail at once with LOCK_HELD) */
  readonly waitSeconds?: number
  readonly signal?: AbortSignal
}

export interface BlockExpireReport extends ExpiredRevisions {
  readonly dir: string
  readonly dryRun: boolean
}

/**
 * The schedule's expiry now, without a backup (backy's `gc --expire`): after the schedule in
 * volume.json changed, revisions whose tags are gone go at once. A backup does the same after
 * writing its revision. With `dryRun`, only what would go. The newest revision and the newest
 * verified one always stay.
 * @example
 * const r = await expireVolume({ at: localTransport('/srv/backy/vm1'), dryRun: true })
 */
export const expireVolume = (options: VolumeOperation & { readonly dryRun?: boolean; readonly now?: () => Date; readonly onEvent?: (event: BackupEvent) => void }): ResultAsync<BlockExpireReport, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    const config = await readVolumeConfig(options.at, dir)
    const body = async (): Promise<BlockExpireReport> => {
      const { revisions } = await readVolume(options.at, dir)
      const now = (options.now ?? (() => new Date()))()
      const expired = await expireRevisions(options.at, dir, config, revisions, now, { dryRun: options.dryRun === true, onEvent: options.onEvent })
      return { dir, dryRun: options.dryRun === true, ...expired }
    }
    // a dry run changes nothing: it does not wait for a running backup
    return options.dryRun === true ? body() : withVolumeLock(options.at, 'prune', options, body)
  })

export interface BlockDistrustReport {
  readonly dir: string
  /** the revisions now distrusted, newest first */
  readonly distrusted: readonly string[]
}

/**
 * Marks revisions distrusted (backy's `distrust`): when their storage is suspect (a disk error, a
 * restore that went wrong). A distrusted revision is never a parent, so the next backup writes
 * every chunk that differs from an older trusted revision (every chunk, when none is left);
 * restore refuses it without force; a clean `verify` of all its chunks makes it verified again.
 * @example
 * await distrustRevisions({ at: localTransport('/srv/backy/vm1'), revisions: ['latest'] })
 */
export const distrustRevisions = (options: VolumeOperation & { readonly revisions: readonly string[]; readonly now?: () => Date }): ResultAsync<BlockDistrustReport, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    if (options.revisions.length === 0) return stop(bbError('INVALID_OPTIONS', 'no revision named to distrust', 'name them: a uuid, 0 for the newest, latest, a tag, or all'))
    await readVolumeConfig(options.at, dir)
    return withVolumeLock(options.at, 'distrust', options, async () => {
      const { revisions } = await readVolume(options.at, dir)
      const chosen = new Map<string, Revision>()
      for (const spec of options.revisions) for (const r of selectRevisions(spec, revisions)) chosen.set(r.uuid, r)
      const at = (options.now ?? (() => new Date()))().toISOString()
      for (const r of chosen.values()) {
        // subsets checked clean before now no longer count: only a whole new round of verify clears it
        await writeRevision(options.at, dir, {
          ...r, trust: 'distrusted',
          ...(r.verification === undefined ? {} : { verification: { ...r.verification, subsets: [] } }),
          distrust: r.trust === 'distrusted' && r.distrust !== undefined ? r.distrust : { at, by: 'hand', reason: 'it was marked distrusted by hand (bbackup distrust)' },
        })
      }
      return { dir, distrusted: [...chosen.keys()] }
    })
  })
