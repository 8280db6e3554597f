import { lstatSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isZombie } from './lock-file.js'

/** whether `pid` is a process that runs (a zombie does not; EPERM: it runs, as another user) */
const running = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH'
  }
  return !isZombie(pid)
}

/** What a kind of run directory is: its name before the pid, and what a run of it puts inside. */
export interface RunDirectoryKind {
  /** the name up to the pid, e.g. `bbackup-ssh` for `bbackup-ssh-<pid>-XXXXXX` */
  readonly prefix: string
  /** whether the directory (its path, the names in it) holds only what a run of this kind puts there */
  readonly holdsOnlyOurs: (path: string, names: readonly string[]) => boolean
  /** untouched (its mtime) for this long at least before it is taken away: a run in another pid namespace sharing the directory may still use it */
  readonly minAgeMs?: number
}

/**
 * Removes the private directories (`<prefix>-<pid>-XXXXXX`) that runs killed before they could
 * (kill -9) left in `dir`: this user's own (0700), of a process that no longer runs, holding only
 * what such a run puts there. Anything else is left as it is; nothing here fails the run.
 */
export const sweepDeadRuns = (dir: string, kind: RunDirectoryKind, now = Date.now()): void => {
  const named = new RegExp(`^${kind.prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-([1-9][0-9]*)-[A-Za-z0-9]{6}$`)
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  for (const name of names) {
    const pid = Number(named.exec(name)?.[1])
    if (!Number.isSafeInteger(pid) || pid === process.pid || running(pid)) continue
    const path = join(dir, name)
    try {
      const st = lstatSync(path)
      if (!st.isDirectory() || st.uid !== process.geteuid?.() || (st.mode & 0o777) !== 0o700) continue
      if (now - st.mtimeMs < (kind.minAgeMs ?? 0)) continue
      if (!kind.holdsOnlyOurs(path, readdirSync(path))) continue
      rmSync(path, { recursive: true })
    } catch {
      // another run swept it first, or it changed: left alone
    }
  }
}

/**
 * A new private directory (0700) of this run under the system's temporary directory, named with
 * its pid so that a later run can tell when it was left by one that was killed; the first of each
 * kind in a process first sweeps those ({@link sweepDeadRuns}).
 */
export const makeRunDirectory = (() => {
  const swept = new Set<string>()
  return (kind: RunDirectoryKind): string => {
    const key = join(tmpdir(), kind.prefix)
    if (!swept.has(key)) {
      swept.add(key)
      sweepDeadRuns(tmpdir(), kind)
    }
    return mkdtempSync(join(tmpdir(), `${kind.prefix}-${process.pid}-`))
  }
})()
