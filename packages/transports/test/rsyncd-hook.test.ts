import { describe, expect, it } from 'vitest'
import { readRsyncdHookEnv, ticketOf } from '../src/rsyncd/hook.js'

// what rsync 3.5.0 set for a pre-xfer exec of `rsync -a src/ rsync://host/mod/h1/n1/` (and its post-xfer exec)
const connection = { RSYNC_MODULE_NAME: 'mod', RSYNC_MODULE_PATH: '/srv/mod', RSYNC_PID: '8010', RSYNC_HOST_ADDR: '127.0.0.1', RSYNC_USER_NAME: 'backup' }
const preXfer = (...args: string[]): Record<string, string> => ({
  ...connection, RSYNC_REQUEST: 'mod/h1/n1/', RSYNC_ARG0: 'rsyncd', ...Object.fromEntries(args.map((a, i) => [`RSYNC_ARG${i + 1}`, a])),
})

describe('an rsync daemon hook\'s environment', () => {
  it('reads an upload\'s destination from a pre-xfer exec, relative to the module', () => {
    const hook = readRsyncdHookEnv(preXfer('--server', '-logDtpre.iLsfxCIvu', '.', 'h1/n1/'))
    expect(hook?.phase).toBe('pre-xfer')
    if (hook?.phase !== 'pre-xfer') return
    expect(ticketOf(hook, new Date(0))).toEqual({ module: 'mod', modulePath: '/srv/mod', pid: '8010', hostAddr: '127.0.0.1', user: 'backup', upload: true, destination: 'h1/n1', at: '1970-01-01T00:00:00.000Z' })
  })

  it('takes a download (--sender), a listing or a path that climbs out for no upload', () => {
    for (const args of [['--server', '--sender', '-logDtpre.iLsfxCIvu', '.', 'h1/n1/'], ['--server', '--sender', '-de.LsfxCIvu', '.', 'h1/'], ['--server', '-logDtpr', '.', '../etc/']]) {
      const hook = readRsyncdHookEnv(preXfer(...args))
      if (hook?.phase !== 'pre-xfer') throw new Error('not a pre-xfer hook')
      expect(ticketOf(hook).upload, args.join(' ')).toBe(false)
      expect(ticketOf(hook).destination).toBeUndefined()
    }
  })

  it('reads the exit status of a post-xfer exec (-1 when it is not a number) and is undefined outside a daemon', () => {
    expect(readRsyncdHookEnv({ ...connection, RSYNC_EXIT_STATUS: '23', RSYNC_RAW_STATUS: '5888' })).toMatchObject({ phase: 'post-xfer', exitStatus: 23, connection: { pid: '8010', module: 'mod' } })
    expect(readRsyncdHookEnv({ ...connection, RSYNC_EXIT_STATUS: 'x' })).toMatchObject({ exitStatus: -1 })
    expect(readRsyncdHookEnv({ PATH: '/usr/bin' })).toBeUndefined()
    expect(readRsyncdHookEnv({ ...connection })).toBeUndefined()
  })
})
