import { execFile } from 'node:child_process'
import { readFile, realpath } from 'node:fs/promises'
import { posix } from 'node:path'
import { insideRoots, type Check, type FilterPolicy } from './policy.js'

/** the real path of `path`, resolving the part that exists (a path to be created is still confined) */
const resolveExisting = async (path: string): Promise<string> => {
  let existing = posix.normalize(path)
  const rest: string[] = []
  for (;;) {
    try {
      return posix.join(await realpath(existing), ...rest.reverse())
    } catch {
      if (existing === '/') return posix.join('/', ...rest.reverse())
      rest.push(posix.basename(existing))
      existing = posix.dirname(existing)
    }
  }
}

const parentOf = async (pid: number): Promise<number | undefined> => {
  try {
    // the command name (field 2) is in parentheses and may contain spaces: the ppid follows the last ')'
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    return Number.isInteger(ppid) && ppid > 1 ? ppid : undefined
  } catch {
    return undefined
  }
}

const isFilter = async (pid: number): Promise<boolean> => {
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')
    return argv.some((a) => posix.basename(a).startsWith('bbackup-remote'))
  } catch {
    return false
  }
}

/**
 * btrfs subvolume show: a writable subvolume is a receive that did not finish. Without a received
 * uuid it was cut anywhere; with one, at its last step (receive records the received uuid, then
 * makes the copy read-only), which only the client's journal can match to what it sent. A finished
 * backup is read-only, whatever its received uuid.
 */
const unfinishedReceive = (path: string, sudo: boolean): Promise<boolean> => new Promise((resolve) => {
  const argv = [...(sudo ? ['sudo', '-n', '--'] : []), 'btrfs', 'subvolume', 'show', path]
  execFile(argv[0] as string, argv.slice(1), { timeout: 60_000 }, (error, stdout) => {
    if (error !== null) return resolve(false)
    const flags = new RegExp('^\\s*Flags:\\s*(.*?)\\s*$', 'm').exec(stdout)?.[1]
    resolve(flags !== undefined && !/readonly/.test(flags))
  })
})

/**
 * The checks that need the host: a path's symlinks resolved (a link inside the allowed directory
 * that points out of it is refused), a subvolume's state, a process's parent. Resolves to the
 * reason for a refusal, or undefined when everything holds. Paths can still change between this
 * check and the command (as with ssh_filter_btrbk.sh and rrsync's realpath check): the key's
 * directories should not be writable by anyone the key does not trust.
 */
export const checkRequest = async (checks: readonly Check[], policy: FilterPolicy, sudo: boolean): Promise<string | undefined> => {
  for (const check of checks) {
    switch (check.kind) {
      case 'inside': {
        const real = await resolveExisting(check.path)
        if (!insideRoots(real, policy.roots)) return `the path ${JSON.stringify(check.path)}, which leads outside ${policy.roots.join(', ')} (to ${JSON.stringify(real)})`
        break
      }
      case 'unfinished-receive':
        if (!(await unfinishedReceive(check.path, sudo))) return `deleting ${JSON.stringify(check.path)}, which needs the delete role (a receive key deletes only its own unfinished receives)`
        break
      case 'started-here': {
        let pid: number | undefined = check.pid
        let found = false
        // the transfer, the shells of a stream filter, its sudo, the filter: a few generations at most
        for (let depth = 0; depth < 6 && pid !== undefined && !found; depth++) {
          pid = await parentOf(pid)
          found = pid !== undefined && (await isFilter(pid))
        }
        if (!found) return `signalling process ${check.pid}, which bbackup-remote did not start`
        break
      }
    }
  }
  return undefined
}
