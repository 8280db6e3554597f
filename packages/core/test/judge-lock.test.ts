import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { judgeLock, parseLockInfo, type LockInfo } from '../src/index.js'

const holder: LockInfo = { pid: 4242, host: 'nas', bootId: 'boot-a', pidStartTime: 1000, startedAt: '2026-11-23T10:00:00.000Z', command: 'bbackup rsync /home' }
const here = (running: Record<number, number>) => ({ host: 'nas', bootId: 'boot-a', startTimeOf: (pid: number) => running[pid] })

describe('judging a lock (reliability scenario 16)', () => {
  it.each<[string, LockInfo | undefined, ReturnType<typeof here> | { host: string; bootId: string; startTimeOf: () => undefined }, boolean, string]>([
    ['its holder runs', holder, here({ 4242: 1000 }), false, 'held by pid 4242 on nas since 2026-11-23T10:00:00.000Z (bbackup rsync /home)'],
    ['its pid is dead', holder, here({}), true, 'pid 4242 is not running'],
    ['its pid was reused', holder, here({ 4242: 5555 }), true, 'pid 4242 now belongs to another process (the holder died and its pid was reused)'],
    ['it is from an earlier boot', holder, { host: 'nas', bootId: 'boot-b', startTimeOf: () => undefined }, true, 'taken before this host last booted (boot id boot-a)'],
    ['it is another host\'s', { ...holder, host: 'laptop' }, here({}), false, 'held by laptop, another host: bbackup cannot tell whether pid 4242 still runs there'],
    ['it is torn or empty', undefined, here({ 4242: 1000 }), true, 'the lock file is empty or unreadable (its writer died while writing it)'],
  ])('when %s', (_, info, context, stale, reason) => {
    expect(judgeLock(info, context)).toEqual({ stale, reason })
  })

  it('holds a dead holder\'s lock while what it started still runs, and names it', () => {
    const left = [{ pid: 4300, command: 'rsync' }, { pid: 4301, command: 'rsync' }]
    const survived = 'but what it started still runs and may still write: rsync (pid 4300), rsync (pid 4301); let it end, or stop it: kill 4300 4301'
    expect(judgeLock(holder, { ...here({}), heldOpenBy: () => left })).toEqual({ stale: false, reason: `pid 4242 is not running, ${survived}` })
    expect(judgeLock(holder, { ...here({ 4242: 5555 }), heldOpenBy: () => left })).toEqual({ stale: false, reason: `pid 4242 now belongs to another process (the holder died and its pid was reused), ${survived}` })
    expect(judgeLock(holder, { ...here({}), heldOpenBy: () => [] })).toEqual({ stale: true, reason: 'pid 4242 is not running' })
    // nothing started before this host's last boot can still run
    expect(judgeLock(holder, { host: 'nas', bootId: 'boot-b', startTimeOf: () => undefined, heldOpenBy: () => left }).stale).toBe(true)
  })

  it('never calls another host\'s lock stale, whatever this host runs', () => {
    fc.assert(fc.property(fc.string({ minLength: 1 }), fc.integer({ min: 1 }), fc.option(fc.integer()), (host, pid, startTime) => {
      fc.pre(host !== 'nas')
      expect(judgeLock({ ...holder, host, pid }, { host: 'nas', bootId: 'boot-a', startTimeOf: () => startTime ?? undefined }).stale).toBe(false)
    }))
  })

  it('reads only complete lock records', () => {
    expect(parseLockInfo(JSON.stringify(holder))).toEqual(holder)
    expect(parseLockInfo('{"pid": 1')).toBeUndefined()
    expect(parseLockInfo('{"pid": 1, "host": "x"}')).toBeUndefined()
    expect(parseLockInfo('')).toBeUndefined()
  })
})
