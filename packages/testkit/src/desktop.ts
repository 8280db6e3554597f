import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmod, chown, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { makeTempDir } from './temp-dir.js'

/** A notification as the desktop's notification server received it (org.freedesktop.Notifications.Notify). */
export interface ReceivedNotification {
  readonly app: string
  readonly summary: string
  readonly body: string
  /** the urgency hint: 0 low, 1 normal, 2 critical (absent when not given) */
  readonly urgency?: number
}

/** A desktop session of one user: its own D-Bus session bus and a notification server on it. */
export interface DesktopSession {
  /** the DISPLAY its server process has in its environment, which marks it as a desktop session */
  readonly display: string
  readonly busAddress: string
  /** what the notification server received so far */
  notifications(): ReceivedNotification[]
  /** stops the server and the bus, by pid, and removes the fixture's directory; safe to call twice */
  stop(): Promise<void>
}

/**
 * The notification server: owns org.freedesktop.Notifications on the session bus and prints each
 * Notify as a JSON line (python3 with GObject introspection, Debian's python3-gi).
 */
const SERVER = `
import json, sys
from gi.repository import Gio, GLib
XML = '''<node><interface name="org.freedesktop.Notifications">
<method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="as" direction="in"/><arg type="a{sv}" direction="in"/><arg type="i" direction="in"/><arg type="u" direction="out"/></method>
<method name="GetServerInformation"><arg type="s" direction="out"/><arg type="s" direction="out"/><arg type="s" direction="out"/><arg type="s" direction="out"/></method>
<method name="GetCapabilities"><arg type="as" direction="out"/></method>
<method name="CloseNotification"><arg type="u" direction="in"/></method>
</interface></node>'''
node = Gio.DBusNodeInfo.new_for_xml(XML)
count = [0]
def call(conn, sender, path, iface, method, params, invocation):
    if method == 'Notify':
        app, _id, _icon, summary, body, _actions, hints, _timeout = params.unpack()
        count[0] += 1
        print(json.dumps({'app': app, 'summary': summary, 'body': body, **({'urgency': hints['urgency']} if 'urgency' in hints else {})}), flush=True)
        invocation.return_value(GLib.Variant('(u)', (count[0],)))
    elif method == 'GetServerInformation':
        invocation.return_value(GLib.Variant('(ssss)', ('bbackup-test', 'bbackup', '1', '1.2')))
    elif method == 'GetCapabilities':
        invocation.return_value(GLib.Variant('(as)', (['body'],)))
    else:
        invocation.return_value(None)
def bus_acquired(conn, name):
    conn.register_object('/org/freedesktop/Notifications', node.interfaces[0], call, None, None)
def name_acquired(conn, name):
    print('ready', flush=True)
Gio.bus_own_name(Gio.BusType.SESSION, 'org.freedesktop.Notifications', Gio.BusNameOwnerFlags.NONE, bus_acquired, name_acquired, None)
GLib.MainLoop().run()
`

const PYTHON = '/usr/bin/python3'

/**
 * Starts a desktop session for the user `uid`: `dbus-daemon --session` and the notification
 * server, both as that user, the server with DISPLAY and the bus address in its environment (what
 * a program looking for desktop sessions finds). Needs root (to run as another user), dbus-daemon
 * and python3-gi.
 */
export const startDesktopSession = async (user: { readonly uid: number; readonly gid: number }): Promise<DesktopSession> => {
  if (spawnSync(PYTHON, ['-c', 'import gi'], { stdio: 'ignore' }).status !== 0) throw new Error(`${PYTHON} cannot import gi: apt-get install python3-gi`)
  const dir = await makeTempDir('desktop')
  await chmod(dir.path, 0o755)
  await chown(dir.path, user.uid, user.gid)
  const server = join(dir.path, 'notifications.py')
  await writeFile(server, SERVER)
  const asUser = (argv: readonly string[], env: Record<string, string>): ChildProcess =>
    spawn('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', ...argv], { env: { PATH: '/usr/bin:/bin', HOME: dir.path, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const processes: ChildProcess[] = []
  const stop = async (): Promise<void> => {
    for (const p of processes.reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue
      const gone = new Promise((resolve) => p.once('close', resolve))
      p.kill('SIGTERM')
      await gone
    }
    processes.length = 0
    await dir.cleanup()
  }
  /** the first line the process prints, or its stderr when it ends first or takes more than 10 s */
  const firstLine = (p: ChildProcess, what: string): Promise<string> => new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    const timer = setTimeout(() => reject(new Error(`${what} did not start in 10 s: ${err}`)), 10_000)
    p.stderr?.on('data', (c: Buffer) => {
      err += c.toString()
    })
    p.stdout?.on('data', (c: Buffer) => {
      out += c.toString()
      const nl = out.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      resolve(out.slice(0, nl))
    })
    p.once('close', (code) => {
      clearTimeout(timer)
      reject(new Error(`${what} exited with ${code}: ${err}`))
    })
  })
  try {
    const bus = asUser(['dbus-daemon', '--session', '--nofork', '--print-address=1', `--address=unix:path=${join(dir.path, 'bus')}`], {})
    processes.push(bus)
    const busAddress = (await firstLine(bus, 'dbus-daemon')).trim()
    const display = `:bbackup-test-${process.pid}`
    const notifier = asUser([PYTHON, server], { DISPLAY: display, DBUS_SESSION_BUS_ADDRESS: busAddress })
    processes.push(notifier)
    const received: ReceivedNotification[] = []
    let rest = ''
    notifier.stdout?.on('data', (c: Buffer) => {
      rest += c.toString()
      const lines = rest.split('\n')
      rest = lines.pop() ?? ''
      for (const line of lines) if (line.startsWith('{')) received.push(JSON.parse(line) as ReceivedNotification)
    })
    if ((await firstLine(notifier, 'the notification server')) !== 'ready') throw new Error('the notification server did not say ready')
    return { display, busAddress, notifications: () => [...received], stop }
  } catch (e) {
    await stop()
    throw e
  }
}
