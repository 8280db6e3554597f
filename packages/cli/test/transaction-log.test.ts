import { afterEach, describe, expect, it } from 'vitest'
import { tlogLine, tlogTime } from '../src/transaction-log.js'

describe('transaction log lines', () => {
  const zone = process.env.TZ
  afterEach(() => {
    if (zone === undefined) delete process.env.TZ
    else process.env.TZ = zone
  })

  it("write local time with the zone's offset, as btrbk does", () => {
    process.env.TZ = 'Asia/Kolkata'
    expect(tlogTime(new Date('2026-11-24T03:10:44Z'))).toBe('2026-11-24T08:40:44+0530')
    process.env.TZ = 'America/St_Johns'
    expect(tlogTime(new Date('2026-01-05T23:59:59Z'))).toBe('2026-01-05T20:29:59-0330')
    process.env.TZ = 'UTC'
    expect(tlogTime(new Date('2026-11-24T03:10:44Z'))).toBe('2026-11-24T03:10:44+0000')
  })

  it('keep a location with blanks or backslashes one column, a message one line, and write - for what is missing', () => {
    process.env.TZ = 'UTC'
    const at = new Date('2026-11-24T03:10:44Z')
    expect(tlogLine(at, 'delete', 'success', '/mnt/my backups/home.1', undefined, '', 'a\n  b')).toBe('2026-11-24T03:10:44+0000 delete success /mnt/my\\040backups/home.1 - - # a b\n')
    expect(tlogLine(at, 'snapshot', 'success', 'C:\\x\ty\nz', '/home')).toBe('2026-11-24T03:10:44+0000 snapshot success C:\\\\x\\011y\\012z /home -\n')
    // every line splits into the same six columns before the message
    const line = tlogLine(at, 'send-receive', 'ERROR', 'host:/a b/c', 'x y', undefined, 'TARGET_FULL: no space # left')
    expect(line.split(' # ')[0]?.split(' ')).toHaveLength(6)
  })
})
