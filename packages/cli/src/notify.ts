import { spawn } from 'node:child_process'
import { readdir, readFile, stat } from 'node:fs/promises'

/** A graphical session on this host: whose it is, and how its programs reach its notification server. */
export interface DesktopSession {
  readonly uid: number
  readonly gid: number
  /** DISPLAY / WAYLAND_DISPLAY, XAUTHORITY, DBUS_SESSION_BUS_ADDRESS, XDG_RUNTIME_DIR, HOME of one of its processes */
  readonly env: Readonly<Record<string, string>>
}

const KEPT = ['DISPLAY', 'WAYLAND_DISPLAY', 'XAUTHORITY', 'DBUS_SESSION_BUS_ADDRESS', 'XDG_RUNTIME_DIR', 'HOME'] as const

/**
 * The desktop sessions this process may see: a process with a display (X11 or Wayland) and a
 * session bus in its environment, one per user, the lowest pid first (as rsync-system-backup's
 * notify_desktop finds them). As root that is every user's; as a user, its own.
 */
export const desktopSessions = async (): Promise<DesktopSession[]> => {
  const found = new Map<number, DesktopSession>()
  const pids = (await readdir('/proc').catch(() => [])).filter((e) => /^\d+$/.test(e)).map(Number).sort((a, b) => a - b)
  for (const pid of pids) {
    try {
      const owner = await stat(`/proc/${pid}`)
      if (found.has(owner.uid)) continue
      const env = Object.fromEntries((await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').flatMap((kv) => {
        const at = kv.indexOf('=')
        return at > 0 && (KEPT as readonly string[]).includes(kv.slice(0, at)) ? [[kv.slice(0, at), kv.slice(at + 1)]] : []
      })) as Record<string, string>
      if ((env.DISPLAY === undefined && env.WAYLAND_DISPLAY === undefined) || env.DBUS_SESSION_BUS_ADDRESS === undefined) continue
      found.set(owner.uid, { uid: owner.uid, gid: owner.gid, env })
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return [...found.values()]
}

/** How long one notify-send may take before it is given up (a bus that does not answer must not hold the backup). */
const NOTIFY_MS = 5000

/**
 * Shows a notification in every desktop session (`notify-send`, as the session's user when this
 * runs as root). Best effort, as in rsync-system-backup: no notify-send, no session or a failure
 * changes nothing and says nothing.
 */
export const notifyDesktops = async (summary: string, body: string, urgency: 'normal' | 'critical'): Promise<void> => {
  const sessions = await desktopSessions()
  const self = process.getuid?.()
  await Promise.all(sessions.map((s) => new Promise<void>((resolve) => {
    const notify = ['notify-send', '--app-name=bbackup', `--urgency=${urgency}`, '--', summary, body]
    const argv = self === 0 && s.uid !== 0 ? ['setpriv', `--reuid=${s.uid}`, `--regid=${s.gid}`, '--init-groups', '--', ...notify] : notify
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: 'ignore', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...s.env } })
    const timer = setTimeout(() => child.kill('SIGKILL'), NOTIFY_MS)
    const done = (): void => {
      clearTimeout(timer)
      resolve()
    }
    child.once('error', done)
    child.once('close', done)
  })))
}
