import { chmod } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, startDesktopSession, writeTree, type DesktopSession, type TempDir } from '@bb/testkit'
import { NOBODY, NOGROUP, runCli } from './helpers.js'


/**
 * rsync-system-backup's desktop notifications (issue 5): a real session bus and notification server
 * of the user nobody, found by bbackup running as root (as from cron), told through notify-send.
 */
describe.runIf(requireTools(['rsync', 'notify-send', 'dbus-daemon', 'setpriv'], { root: true }))('system-backup tells the desktop sessions', () => {
  let tmp: TempDir
  let desktop: DesktopSession
  beforeEach(async () => {
    tmp = await makeTempDir('cli-notify')
    await chmod(tmp.path, 0o755)
    await writeTree(join(tmp.path, 'src'), { 'etc/hosts': '127.0.0.1 localhost\n' })
    desktop = await startDesktopSession({ uid: NOBODY, gid: NOGROUP })
  })
  afterEach(async () => {
    await desktop?.stop()
    await tmp?.cleanup()
  })
  /** what this test's runs said (other tests' system backups may run meanwhile) */
  const told = (dest: string): { summary: string; body: string; urgency?: number; app: string }[] => desktop.notifications().filter((n) => n.body.includes(join(tmp.path, dest)))

  it('when the backup starts and when it ends, failures as critical; not with --disable-notifications or -n', async () => {
    const ran = await runCli(['system-backup', join(tmp.path, 'src'), join(tmp.path, 'dst'), '--state-dir', 'state', '-q'], tmp.path)
    expect(ran.code, ran.stderr).toBe(0)
    expect(told('dst')).toEqual([
      { app: 'bbackup', summary: 'System backups', body: `Starting backup of ${join(tmp.path, 'src')} to ${join(tmp.path, 'dst')}`, urgency: 1 },
      { app: 'bbackup', summary: 'System backups', body: expect.stringMatching(/^Finished backup of .* in \d+\.\d s\.$/), urgency: 1 },
    ])

    const failed = await runCli(['system-backup', join(tmp.path, 'missing'), join(tmp.path, 'dst2'), '--state-dir', 'state2', '-q'], tmp.path)
    expect(failed.code).not.toBe(0)
    expect(told('dst2').map((n) => [n.body.replace(/\d+\.\d s/, 'T'), n.urgency])).toEqual([
      [`Starting backup of ${join(tmp.path, 'missing')} to ${join(tmp.path, 'dst2')}`, 1],
      [`Backup of ${join(tmp.path, 'missing')} to ${join(tmp.path, 'dst2')} failed after T (exit ${failed.code})! Review the system logs for details.`, 2],
    ])

    const quiet = await runCli(['system-backup', join(tmp.path, 'src'), join(tmp.path, 'dst3'), '--state-dir', 'state3', '-q', '--disable-notifications'], tmp.path)
    expect(quiet.code, quiet.stderr).toBe(0)
    const dry = await runCli(['system-backup', join(tmp.path, 'src'), join(tmp.path, 'dst4'), '--state-dir', 'state4', '-q', '-n'], tmp.path)
    expect(dry.code, dry.stderr).toBe(0)
    expect([...told('dst3'), ...told('dst4')]).toEqual([])
  })
})
