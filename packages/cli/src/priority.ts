import { execFile } from 'node:child_process'
import { getPriority, setPriority } from 'node:os'
import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '@bb/core'

/** `ionice -c` classes by rsync-system-backup's names and by number */
const IONICE_CLASSES: Readonly<Record<string, string>> = { realtime: '1', 'best-effort': '2', idle: '3', 1: '1', 2: '2', 3: '3' }

/** What `--ionice` and `--nice` ask for, checked before anything runs. */
export interface Priority {
  /** the `ionice -c` class: 1 realtime, 2 best-effort, 3 idle */
  readonly ioClass?: string
  /** how much nicer than now, 1 to 19 (as `nice -n`) */
  readonly nice?: number
}

/**
 * Reads `-i/--ionice CLASS` (idle, best-effort, realtime or 1-3, as rsync-system-backup) and
 * `--nice N` (1 to 19, as `nice -n`).
 * @example
 * parsePriority({ ionice: 'idle', nice: '10' }) // ok({ ioClass: '3', nice: 10 })
 */
export const parsePriority = (options: { readonly ionice?: string; readonly nice?: string }): Result<Priority, BbError> => {
  const ioClass = options.ionice === undefined ? undefined : IONICE_CLASSES[options.ionice]
  if (options.ionice !== undefined && ioClass === undefined) {
    return err(bbError('INVALID_OPTIONS', `--ionice ${options.ionice} is not an I/O scheduling class`, 'give idle, best-effort or realtime (or 3, 2, 1, as ionice -c)'))
  }
  const nice = options.nice === undefined ? undefined : Number(options.nice)
  if (nice !== undefined && (!Number.isInteger(nice) || nice < 1 || nice > 19)) {
    return err(bbError('INVALID_OPTIONS', `--nice ${options.nice ?? ''} is not an adjustment from 1 to 19`, 'give how much nicer the run should be, as with nice -n: --nice 10'))
  }
  return ok({ ...(ioClass === undefined ? {} : { ioClass }), ...(nice === undefined ? {} : { nice }) })
}

/**
 * Lowers the priority of this process before the run starts anything: the commands it starts
 * (rsync, btrfs send and receive, cp, the hashing threads of the block driver) inherit it. The
 * I/O class is set with `ionice -c CLASS -p PID` (util-linux), the CPU priority by setpriority.
 */
export const lowerPriority = async (priority: Priority, pid = process.pid): Promise<Result<void, BbError>> => {
  if (priority.nice !== undefined) {
    try {
      setPriority(pid, Math.min(19, getPriority(pid) + priority.nice))
    } catch (e) {
      return err(bbError('PERMISSION_DENIED', `cannot make the run nicer: ${(e as Error).message}`, 'run it as a user that may (any user may raise its own niceness), or leave out --nice'))
    }
  }
  if (priority.ioClass === undefined) return ok(undefined)
  const ioClass = priority.ioClass
  return new Promise((resolve) => {
    execFile('ionice', ['-c', ioClass, '-p', String(pid)], (e, _stdout, stderr) => {
      if (e === null) return resolve(ok(undefined))
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return resolve(err(bbError('TOOL_MISSING', 'ionice is not installed (or not on PATH)', 'install it: apt-get install util-linux, or leave out --ionice')))
      resolve(err(bbError('PERMISSION_DENIED', `ionice -c ${ioClass} refused: ${stderr.trim() || e.message}`, ioClass === '1' ? 'the realtime class needs root: run as root, or use best-effort or idle' : 'check the I/O scheduler of the disks, or leave out --ionice')))
    })
  })
}
