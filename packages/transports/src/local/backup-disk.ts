import { existsSync } from 'node:fs'
import { isAbsolute, relative, resolve } from 'node:path'
import { bbError, type BbError, type TransportError } from '@bb/core'
import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { execCommand } from './exec.js'
import { mountCommands, sudoExec, sudoWrap } from './sudo.js'

/** A backup disk mounted for a run; `release` unmounts it only when this run mounted it. */
export interface MountedDisk {
  readonly mountPoint: string
  /** whether this run mounted it (and so unmounts it) */
  readonly mountedHere: boolean
  release(): ResultAsync<void, BbError>
}

export type BackupDiskError = TransportError | BbError<'TARGET_UNAVAILABLE'>

/** fstab sources that name a device by a property: it is present when udev made its link */
const BY_PROPERTY: Readonly<Record<string, string>> = { UUID: '/dev/disk/by-uuid/', LABEL: '/dev/disk/by-label/', PARTUUID: '/dev/disk/by-partuuid/', PARTLABEL: '/dev/disk/by-partlabel/' }

/** The device file an fstab or crypttab source names (`UUID=…` as udev's link), or undefined for one that is not a device (a network share). */
export const deviceOf = (source: string): string | undefined => {
  const m = /^(UUID|LABEL|PARTUUID|PARTLABEL)=["']?([^"']*)["']?$/.exec(source)
  if (m !== null) return `${BY_PROPERTY[m[1] ?? ''] ?? ''}${m[2] ?? ''}`
  // a device or an image file (loop) by path
  return source.startsWith('/') ? source : undefined
}

/** whether the disk is plugged in; anything but a device (a network share) is left to mount */
export const devicePresent = (source: string): boolean => {
  const device = deviceOf(source)
  return device === undefined || existsSync(device)
}

/** Whether something is mounted at `dir` (findmnt). */
export const isMounted = (dir: string, signal?: AbortSignal): ResultAsync<boolean, TransportError> =>
  execCommand(['findmnt', '-n', '--mountpoint', resolve(dir)], signal === undefined ? {} : { signal }).map((r) => r.exitCode === 0)

/**
 * Mounts the backup disk at `mountPoint` from /etc/fstab for the length of a run, as
 * rsync-system-backup's `--mount` does: nothing when it is mounted already, and `release` unmounts
 * only what this call mounted. A disk that is not plugged in is `TARGET_UNAVAILABLE` with
 * `details.diskMissing` (the CLI exits 0 quietly for it under cron). With `sudo`, mount and umount
 * run through `sudo -n` (for a user that is not root; sudo's refusal is AUTH_FAILED with the rule).
 * @example
 * const disk = await mountBackupDisk('/mnt/usb')
 * if (disk.isOk()) { ...; await disk.value.release() }
 */
export const mountBackupDisk = (mountPoint: string, options: { readonly signal?: AbortSignal; readonly sudo?: boolean } = {}): ResultAsync<MountedDisk, BackupDiskError> =>
  new ResultAsync((async (): Promise<Result<MountedDisk, BackupDiskError>> => {
    const signal = options.signal === undefined ? {} : { signal: options.signal }
    // as a user that is not root: mount and umount through sudo -n (rsync-system-backup's sudo mount)
    const dir = resolve(mountPoint)
    // the rule a refusal prints allows the mount and unmount of this mount point, not any mount
    const asRoot = options.sudo === true ? sudoExec(sudoWrap(['mount', 'umount'], mountCommands(dir)), execCommand) : execCommand
    const mounted = await isMounted(dir, options.signal)
    if (mounted.isErr()) return err(mounted.error)
    const unmount = (): ResultAsync<void, BbError> => asRoot(['umount', dir]).andThen((r) => (r.exitCode === 0
      ? ok(undefined)
      : err(bbError('COMMAND_FAILED', `could not unmount ${dir}: ${r.stderr || `exit ${r.exitCode}`}`, 'see what still uses it (fuser -vm) and unmount it by hand', { stderr: r.stderr }))))
    if (mounted.value) return ok({ mountPoint: dir, mountedHere: false, release: () => ResultAsync.fromSafePromise(Promise.resolve(undefined)) })
    const entry = await execCommand(['findmnt', '--fstab', '-n', '-o', 'SOURCE', '--mountpoint', dir], signal)
    if (entry.isErr()) return err(entry.error)
    const source = entry.value.stdout.trim()
    if (entry.value.exitCode !== 0 || source === '') {
      return err(bbError('INVALID_OPTIONS', `${dir} is not in /etc/fstab`, `add a line for the backup disk, e.g. "UUID=<blkid of the disk>  ${dir}  ext4  noauto,nofail  0 2", or give the mount point that is there`, { path: dir }))
    }
    if (!devicePresent(source)) {
      return err(bbError('TARGET_UNAVAILABLE', `the backup disk for ${dir} (${source}) is not connected`, 'plug it in (and unlock it) and run again; under cron this is not an error', { path: dir, source, diskMissing: true }))
    }
    const made = await asRoot(['mount', dir], signal)
    if (made.isErr()) return err(made.error)
    if (made.value.exitCode !== 0) {
      return err(bbError('COMMAND_FAILED', `could not mount ${dir} (${source}): ${made.value.stderr || `exit ${made.value.exitCode}`}`, 'check the fstab line and the disk (dmesg), and that you are root', { stderr: made.value.stderr }))
    }
    return ok({ mountPoint: dir, mountedHere: true, release: unmount })
  })())

/**
 * Refuses a target outside the mount point: with the disk unplugged, such a path would be written
 * into the root filesystem (or the empty mount point) instead.
 */
export const insideMountPoint = (mountPoint: string, targetPath: string): Result<void, BbError<'INVALID_OPTIONS'>> => {
  const rel = relative(resolve(mountPoint), resolve(targetPath))
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)
    ? ok(undefined)
    : err(bbError('INVALID_OPTIONS', `the target ${targetPath} is not inside the mount point ${mountPoint}`, `put the backups in a directory on the disk, e.g. ${resolve(mountPoint, 'backups')}`, { path: targetPath }))
}
