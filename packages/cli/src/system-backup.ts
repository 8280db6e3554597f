import { bbError, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'

/** rsync-system-backup's rotation: the default retention of system-backup and of prune as a post-xfer exec */
export const SYSTEM_BACKUP_POLICY = 'hourly=24 daily=7 weekly=4 monthly=always'

export interface SystemBackupPlan {
  readonly source: string
  readonly destination: string
  readonly stages: {
    /** copy the source (the backup stage) */
    readonly transfer: boolean
    /** -b without -s: the copy is published by the daemon module's post-xfer exec */
    readonly serverPublishes: boolean
    /** apply retention at the destination (the rotate stage) */
    readonly rotate: boolean
  }
}

/**
 * rsync-system-backup's command line read into what bbackup does: `[SOURCE] DEST` (SOURCE
 * defaults to `/`), and its stages `-b` (copy), `-s` (publish the copy as a backup) and `-r`
 * (rotate), alone or together, none meaning all three. bbackup publishes a copy as part of making
 * it, so `-s` goes with `-b`; `-b` alone leaves publishing to a daemon module's post-xfer exec.
 * Refuses a system that is not Linux unless forced: the built-in excludes are Linux's.
 * @example
 * systemBackupPlan(['/mnt/usb/laptop'], { platform: 'linux' }) // source '/', all three stages
 */
export const systemBackupPlan = (
  paths: readonly string[],
  options: { readonly backup?: boolean; readonly snapshot?: boolean; readonly rotate?: boolean; readonly force?: boolean; readonly platform: string },
): Result<SystemBackupPlan, BbError> => {
  if (options.platform !== 'linux' && options.force !== true) {
    return err(bbError('UNSUPPORTED', `this system is ${options.platform}, not Linux: the built-in excludes (/dev, /proc, /sys, …) are Linux's`, 'check what a backup of this system should leave out (-x), then pass --force'))
  }
  if (paths.length === 0 || paths.length > 2) {
    return err(bbError('INVALID_OPTIONS', `system-backup takes [SOURCE] DEST, and ${paths.length} paths were given`, 'give the destination, and before it the source if it is not /: bbackup system-backup /mnt/usb/backups/laptop'))
  }
  const [source, destination] = paths.length === 1 ? ['/', paths[0] as string] : [paths[0] as string, paths[1] as string]
  const b = options.backup === true
  const s = options.snapshot === true
  const r = options.rotate === true
  if (s && !b) {
    return err(bbError('INVALID_OPTIONS', '-s (the snapshot stage) without -b: bbackup publishes a copy as it makes it, so there is no copy here to publish',
      'give -b -s (copy and publish), -r alone (rotate), or none (all three); publishing what a -b left on a daemon module is the module\'s post-xfer exec (bbackup doctor rsyncd --server-side)'))
  }
  const all = !b && !s && !r
  return ok({ source, destination, stages: { transfer: all || b, serverPublishes: b && !s, rotate: all || r } })
}
