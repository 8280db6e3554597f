import { execFileSync } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { makeTempDir } from './temp-dir.js'

export interface LoopFilesystem {
  /** where the filesystem is mounted */
  readonly mountPoint: string
  /** unmounts, detaches the loop device and removes the image; safe to call twice */
  cleanup(): Promise<void>
}

const run = (file: string, args: readonly string[]): string => execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

const isMounted = (path: string): boolean => {
  try {
    run('mountpoint', ['-q', path])
    return true
  } catch {
    return false
  }
}

/**
 * A real filesystem of `sizeMiB` in an image file, loop-mounted (root only). A failure half way
 * undoes what was done; `cleanup` undoes the rest even after a failed test.
 */
export const mountLoopFilesystem = async (options: {
  readonly type: 'ext4' | 'btrfs' | 'xfs'
  readonly sizeMiB: number
  /** more arguments to mkfs, e.g. `['-m', 'reflink=0']` for an XFS without reflinks */
  readonly mkfsArgs?: readonly string[]
}): Promise<LoopFilesystem> => {
  const dir = await makeTempDir(`loop-${options.type}`)
  const image = join(dir.path, 'fs.img')
  const mountPoint = join(dir.path, 'mnt')
  let mounted = false
  const cleanup = async (): Promise<void> => {
    if (mounted) {
      // mount -o loop attached the device with autoclear: unmounting detaches it
      try {
        run('umount', [mountPoint])
      } catch {
        // a test may have unmounted it already (an unplugged disk); else it is busy
        if (isMounted(mountPoint)) run('umount', ['-l', mountPoint])
      }
      mounted = false
    }
    await dir.cleanup()
  }
  try {
    await writeFile(image, '')
    run('truncate', ['-s', `${options.sizeMiB}M`, image])
    const more = options.mkfsArgs ?? []
    if (options.type === 'ext4') run('mkfs.ext4', ['-q', '-F', '-m', '0', ...more, image])
    // XFS is 300 MiB at least (xfsprogs >= 5.19)
    else if (options.type === 'xfs') run('mkfs.xfs', ['-q', '-f', ...more, image])
    else run('mkfs.btrfs', ['-q', '-f', ...more, image])
    await mkdir(mountPoint)
    run('mount', ['-o', 'loop', image, mountPoint])
    mounted = true
  } catch (e) {
    await cleanup()
    throw e
  }
  return { mountPoint, cleanup }
}

