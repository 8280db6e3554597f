import { promises as fs, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs'
import { hostname } from 'node:os'
import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, ioError, judgeLock, parseLockInfo, type LockContext, type LockError, type LockHandle, type LockInfo, type LockStatus, type LockSurvivor, type TransportError } from '@bb/core'
import { passToCommands } from './exec.js'
import { writeTempBeside } from './files.js'

const readText = async (path: string): Promise<string | undefined> => {
  try {
    return await fs.readFile(path, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
}

/** /proc/<pid>/stat from field 3 (the state) on; undefined when there is no such process (or no /proc) */
const statFields = (pid: number): string[] | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

const runsNoMore = (fields: readonly string[] | undefined): boolean => fields?.[0] === 'Z' || fields?.[0] === 'X'

/**
 * A zombie (state `Z`: dead, its files closed, not yet reaped, which a container's init may take
 * seconds to do) or a process on its way out (`X`): it runs no more, though its pid is still taken.
 */
export const isZombie = (pid: number): boolean => runsNoMore(statFields(pid))

/**
 * /proc/<pid>/stat field 22, the process's start time in clock ticks after boot; undefined when no
 * such process runs ({@link isZombie} too).
 */
const startTimeOf = (pid: number): number | undefined => {
  const fields = statFields(pid)
  if (fields === undefined || runsNoMore(fields)) return undefined
  return Number(fields[19])
}

const bootId = (): string => {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return 'unknown'
  }
}

/**
 * The processes that have the file at `path` open, as /proc/<pid>/fd shows them (as `fuser` finds
 * them). Another user's processes cannot be looked into, unless this is root.
 */
const heldOpenBy = (path: string): LockSurvivor[] => {
  let real: string
  try {
    real = realpathSync(path)
  } catch {
    return []
  }
  const found: LockSurvivor[] = []
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let fds: string[]
    try {
      fds = readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    const holds = fds.some((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`) === real
      } catch {
        return false
      }
    })
    if (holds) found.push({ pid: Number(pid), command: commandOf(pid) })
  }
  return found
}

const commandOf = (pid: string): string => {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return '?'
  }
}

/** What this host knows to judge the lock at `path`: its name, boot, running processes and who has the lock open. */
export const hostContext = (path: string): LockContext => ({ host: hostname(), bootId: bootId(), startTimeOf, heldOpenBy: () => heldOpenBy(path) })

/**
 * Puts a complete file at `path` only if nothing is there: the content is written beside it and
 * hard-linked into place, so no reader ever sees a half-written lock.
 */
const createExclusive = async (path: string, data: string): Promise<boolean> => {
  const temp = await writeTempBeside(path, data)
  try {
    await fs.link(temp, path)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw e
  } finally {
    await fs.rm(temp, { force: true })
  }
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => {
      clearTimeout(timer)
      resolve()
    }, { once: true })
  })

/**
 * Removes the stale lock whose text was `seen`, unless someone replaced it meanwhile. A short-lived
 * `<path>.break` lock makes the check and the removal one step, so two processes breaking the same
 * stale lock cannot remove the fresh lock one of them has just taken.
 */
const breakStale = async (path: string, seen: string, self: string): Promise<void> => {
  const breaker = `${path}.break`
  for (let attempt = 0; attempt < 200; attempt++) {
    if (await createExclusive(breaker, self)) {
      try {
        if ((await readText(path)) === seen) await fs.rm(path, { force: true })
      } finally {
        await fs.rm(breaker, { force: true })
      }
      return
    }
    const holder = await readText(breaker)
    if (holder !== undefined && judgeLock(parseLockInfo(holder), hostContext(breaker)).stale) {
      // its holder died inside the few lines above; the break lock itself is stale
      if ((await readText(breaker)) === holder) await fs.rm(breaker, { force: true })
    }
    await sleep(10)
  }
}

/**
 * Takes the lock file at `path`: pid, host, boot id and the pid's start time, so that a lock left by
 * a dead (or reused) pid on this host is taken over with a warning, and a live one fails with
 * LOCK_HELD, or is waited for up to `waitSeconds`.
 */
export const acquireLock = (
  path: string,
  options: { readonly command: string; readonly waitSeconds?: number; readonly signal?: AbortSignal },
): ResultAsync<LockHandle, LockError> =>
  new ResultAsync((async (): Promise<Result<LockHandle, LockError>> => {
    const here = hostContext(path)
    const info: LockInfo = {
      pid: process.pid,
      host: here.host,
      bootId: here.bootId,
      pidStartTime: startTimeOf(process.pid) ?? 0,
      startedAt: new Date().toISOString(),
      command: options.command,
    }
    const text = `${JSON.stringify(info)}\n`
    const deadline = Date.now() + (options.waitSeconds ?? 0) * 1000
    let tookOver: LockHandle['tookOver']
    let open: fs.FileHandle
    let created = false
    try {
      for (;;) {
        created = await createExclusive(path, text)
        if (created) break
        const seen = await readText(path)
        if (seen === undefined) continue
        const previous = parseLockInfo(seen)
        const verdict = judgeLock(previous, here)
        if (verdict.stale) {
          await breakStale(path, seen, text)
          if (previous !== undefined) tookOver = { previous, reason: verdict.reason }
          continue
        }
        if (options.signal?.aborted === true) return err(bbError('CANCELLED', 'cancelled while waiting for the lock', 'run again later', { path }))
        if (Date.now() >= deadline) {
          return err(bbError('LOCK_HELD', `another run of this job is in progress: ${verdict.reason}`, options.waitSeconds === undefined
            ? 'wait for it to finish, or pass --wait[=SECONDS] to queue behind it'
            : `it still held the lock after ${options.waitSeconds} s; try again later`, { path, holderPid: previous?.pid, holderHost: previous?.host }))
        }
        await sleep(Math.min(250, Math.max(10, deadline - Date.now())), options.signal)
      }
      open = await fs.open(path, 'r')
    } catch (e) {
      // taken but not opened (out of file descriptors): not left behind as this live process's lock
      if (created) await fs.rm(path, { force: true }).catch(() => undefined)
      const io = ioError('lock', path)(e)
      return err(io.code === 'DISK_FULL' || io.code === 'IO_FAILED' ? bbError('LOCK_FAILED', io.message, io.hint, io.details) : io)
    }
    // every command of the run holds the lock open with it, so one that outlives a killed run keeps it held
    const stopPassing = passToCommands(open.fd)
    let released = false
    const release = (): ResultAsync<void, TransportError> =>
      ResultAsync.fromPromise((async () => {
        if (released) return
        released = true
        stopPassing()
        await open.close()
        // remove only our own lock: never one that another run took over after judging ours stale
        if ((await readText(path)) === text) await fs.rm(path, { force: true })
      })(), ioError('release the lock', path))
    return ok({ path, info, ...(tookOver === undefined ? {} : { tookOver }), release })
  })())

/** The lock at `path` and whether its holder is alive; undefined when there is none. */
export const inspectLock = (path: string): ResultAsync<LockStatus | undefined, TransportError> =>
  ResultAsync.fromPromise(readText(path), ioError('read', path)).map((text) => {
    if (text === undefined) return undefined
    const info = parseLockInfo(text)
    return { path, info, verdict: judgeLock(info, hostContext(path)) }
  })
