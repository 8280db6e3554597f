import { describe, expect, it } from 'vitest'
import { systemBackupPlan } from '../src/system-backup.js'

const plan = (paths: string[], flags: { backup?: boolean; snapshot?: boolean; rotate?: boolean; force?: boolean } = {}, platform = 'linux') => systemBackupPlan(paths, { ...flags, platform })

describe("system-backup's command line (rsync-system-backup's)", () => {
  it('backs up / when only the destination is given, and SOURCE when two paths are', () => {
    expect(plan(['/mnt/usb/laptop'])._unsafeUnwrap()).toMatchObject({ source: '/', destination: '/mnt/usb/laptop' })
    expect(plan(['/srv', 'nas::backups/srv'])._unsafeUnwrap()).toMatchObject({ source: '/srv', destination: 'nas::backups/srv' })
    for (const paths of [[], ['a', 'b', 'c']]) expect(plan(paths)._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining(`${paths.length} paths were given`) })
  })

  it('reads the stages: none is all three, -b alone leaves publishing to the server, -r alone rotates, -s needs -b', () => {
    const stages = (flags: Parameters<typeof plan>[1]) => plan(['/d'], flags)._unsafeUnwrap().stages
    expect(stages({})).toEqual({ transfer: true, serverPublishes: false, rotate: true })
    expect(stages({ backup: true, snapshot: true, rotate: true })).toEqual({ transfer: true, serverPublishes: false, rotate: true })
    expect(stages({ backup: true, snapshot: true })).toEqual({ transfer: true, serverPublishes: false, rotate: false })
    expect(stages({ backup: true })).toEqual({ transfer: true, serverPublishes: true, rotate: false })
    expect(stages({ backup: true, rotate: true })).toEqual({ transfer: true, serverPublishes: true, rotate: true })
    expect(stages({ rotate: true })).toEqual({ transfer: false, serverPublishes: false, rotate: true })
    for (const flags of [{ snapshot: true }, { snapshot: true, rotate: true }]) {
      expect(plan(['/d'], flags)._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining('-s (the snapshot stage) without -b') })
    }
  })

  it('refuses a system that is not Linux unless forced', () => {
    expect(plan(['/d'], {}, 'darwin')._unsafeUnwrapErr()).toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('darwin, not Linux'), hint: expect.stringContaining('--force') })
    expect(plan(['/d'], { force: true }, 'darwin').isOk()).toBe(true)
  })
})
