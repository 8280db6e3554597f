import { describe, expect, it } from 'vitest'
import { bbError, DEFAULT_THRESHOLDS, healthOf, volumeHealthOf, type JobStatus } from '../src/index.js'

const H = 3600
type Target = JobStatus['targets'][number]
const target = (at: string, ageSeconds: number | undefined, extra: Partial<Target> = {}): Target => ({
  at, reachable: true, backups: ageSeconds === undefined ? 0 : 3, unfinished: [],
  ...(ageSeconds === undefined ? {} : { latest: { name: 'b', time: '2026-11-23T00:00:00Z', ageSeconds, health: 'ok' as const } }), ...extra,
})
const job = (targets: Target[], extra: Partial<JobStatus> = {}): JobStatus => ({ source: '/home', driver: 'rsync', targets, pending: [], lock: undefined, ...extra })
const pending = [{ target: '/mnt/b', snapshot: 's1', partialPath: '/mnt/b/s1.partial', startedAt: '2026-11-23T00:00:00Z' }] as JobStatus['pending']

describe('the health verdict of a job', () => {
  it('is ok while every target has a backup younger than the warning age', () => {
    expect(healthOf(job([target('/mnt/a', 1 * H), target('/mnt/b', 25 * H)]))).toEqual({ verdict: 'ok', reasons: [] })
  })

  it('is a warning past the warning age and critical past the critical age, per target, the worst winning', () => {
    expect(healthOf(job([target('/mnt/a', 1 * H), target('/mnt/b', 27 * H)]))).toEqual({ verdict: 'warning', reasons: ['/mnt/b: the newest backup is 27 h old (warning after 26 h)'] })
    expect(healthOf(job([target('/mnt/a', 30 * H), target('/mnt/b', 51 * H)]))).toEqual({
      verdict: 'critical', reasons: ['/mnt/a: the newest backup is 30 h old (warning after 26 h)', '/mnt/b: the newest backup is 2 d old (critical after 2 d)'],
    })
    expect(healthOf(job([target('/mnt/a', 2 * H)]), { warnAgeSeconds: 30 * 60, criticalAgeSeconds: 90 * 60 }).verdict).toBe('critical')
  })

  it('ages the newest backup of a source found unchanged since it (snapshot_create onchange) from that run: current while the runs go on', () => {
    const unchanged = (ageSeconds: number, checked: number): Target => target('/mnt/a', ageSeconds, { latest: { name: 'b', time: '2026-11-23T00:00:00Z', ageSeconds, health: 'ok', current: { at: '2026-11-24T00:00:00Z', ageSeconds: checked } } })
    expect(healthOf(job([unchanged(5 * 24 * H, 1 * H)]))).toEqual({ verdict: 'ok', reasons: [] })
    expect(healthOf(job([unchanged(5 * 24 * H, 30 * H)]))).toEqual({ verdict: 'warning', reasons: ['/mnt/a: the newest backup, counted from the last run that found the source unchanged since it, is 30 h old (warning after 26 h)'] })
    const snapshotsAlone = job([], { snapshots: { count: 1, latest: { name: 's', time: '2026-11-23T00:00:00Z', ageSeconds: 5 * 24 * H, current: { at: '2026-11-24T00:00:00Z', ageSeconds: 2 * H } } } })
    expect(healthOf(snapshotsAlone)).toEqual({ verdict: 'ok', reasons: [] })
    expect(healthOf(job([], { snapshots: { count: 1, latest: { name: 's', time: '2026-11-23T00:00:00Z', ageSeconds: 5 * 24 * H } } })).verdict).toBe('critical')
  })

  it('is critical for a target without a backup, a warning for one that cannot be reached', () => {
    expect(healthOf(job([target('/mnt/a', 1 * H), target('/mnt/new', undefined)]))).toEqual({ verdict: 'critical', reasons: ['/mnt/new has no backup'] })
    const offline = target('nas:/b', undefined, { reachable: false, error: bbError('NETWORK_FAILED', 'connection refused', 'check') })
    expect(healthOf(job([target('/mnt/a', 1 * H), offline]))).toEqual({ verdict: 'warning', reasons: ['nas:/b cannot be reached: connection refused'] })
    const absent = target('/mnt/c', undefined, { reachable: false, error: bbError('NOT_FOUND', 'cannot list /mnt/c: it does not exist', 'check') })
    expect(healthOf(job([absent]))).toEqual({ verdict: 'critical', reasons: ['/mnt/c has no backup: cannot list /mnt/c: it does not exist'] })
  })

  it("tells the sources of a shared target checked alone apart by their names' prefix: one stale source is not hidden by a fresh one", () => {
    const alone = job([target('/mnt/b', 1 * H, { prefix: 'home.' }), target('/mnt/b', 60 * H, { prefix: 'root.' })], { only: 'target' })
    expect(healthOf(alone)).toEqual({ verdict: 'critical', reasons: ['/mnt/b (root.*): the newest backup is 2 d old (critical after 2 d)'] })
  })

  it('warns of backups dated ahead of the clock; a newest backup dated ahead (all of them are) gives no age to judge', () => {
    expect(healthOf(job([target('/mnt/a', 1 * H, { ahead: ['b.2027'] })])).reasons).toEqual([
      "/mnt/a: a backup is dated ahead of this host's clock (b.2027): the clock was ahead when it was made, or is behind now (check it: timedatectl); the age checked is that of the newest backup made before now",
    ])
    expect(healthOf(job([target('/mnt/a', 60 * H, { ahead: ['b.2027'] })])).verdict).toBe('critical')
    expect(healthOf(job([target('/mnt/a', -200 * 24 * H, { ahead: ['a.2027', 'b.2027'] })]))).toEqual({
      verdict: 'warning', reasons: ["/mnt/a: 2 backups are dated ahead of this host's clock (b.2027): the clock was ahead when they were made, or is behind now (check it: timedatectl); the age checked is that of the newest backup made before now"],
    })
  })

  it('warns of a target with less than 5% of its filesystem free, naming how much is left', () => {
    const G = 1024 ** 3
    expect(healthOf(job([target('/mnt/a', 1 * H, { space: { size: 100 * G, used: 96 * G, free: 4 * G } })]))).toEqual({
      verdict: 'warning', reasons: ['/mnt/a: only 4% of its filesystem is free (4.0 GiB of 100 GiB)'],
    })
    expect(healthOf(job([target('/mnt/a', 1 * H, { space: { size: 100 * G, used: 95 * G, free: 5 * G } })])).verdict).toBe('ok')
  })

  it('warns of a newest backup with errors, an outstanding transfer when no run is going, and a stale lock', () => {
    const withErrors = target('/mnt/a', 1 * H)
    expect(healthOf(job([{ ...withErrors, latest: { ...withErrors.latest!, health: 'errors' } }])).verdict).toBe('warning')
    expect(healthOf(job([target('/mnt/a', 1 * H)], { pending })).reasons).toEqual(['the transfer of s1 to /mnt/b is outstanding (the next run retries it)'])
    const held = { path: '/state/lock', info: undefined, verdict: { stale: false as const, reason: 'held by pid 4242' } }
    expect(healthOf(job([target('/mnt/a', 1 * H)], { pending, lock: held }))).toEqual({ verdict: 'ok', reasons: [] })
    const stale = { path: '/state/lock', info: undefined, verdict: { stale: true as const, reason: 'pid 4242 is not running' } }
    expect(healthOf(job([target('/mnt/a', 1 * H)], { lock: stale }))).toEqual({ verdict: 'warning', reasons: ['a stale lock: pid 4242 is not running'] })
  })

  it('defaults to 26 h and 50 h', () => {
    expect(DEFAULT_THRESHOLDS).toEqual({ warnAgeSeconds: 26 * H, criticalAgeSeconds: 50 * H })
  })

  it('judges a block volume by its newest revision and its distrusted ones, with the same thresholds', () => {
    expect(volumeHealthOf({ at: '/srv/backy/vm', newestAgeSeconds: 1 * H, distrusted: 0 })).toEqual({ verdict: 'ok', reasons: [] })
    expect(volumeHealthOf({ at: '/srv/backy/vm', newestAgeSeconds: undefined, distrusted: 0 })).toEqual({ verdict: 'critical', reasons: ['/srv/backy/vm has no revision'] })
    expect(volumeHealthOf({ at: '/v', newestAgeSeconds: 27 * H, distrusted: 2 })).toEqual({
      verdict: 'warning', reasons: ['/v: the newest revision is 27 h old (warning after 26 h)', '/v: 2 revisions are distrusted (damage a verify found, or marked by hand; the next backup is built from the newest good revision)'],
    })
    expect(volumeHealthOf({ at: '/v', newestAgeSeconds: 3 * H, distrusted: 0 }, { warnAgeSeconds: H, criticalAgeSeconds: 2 * H }).verdict).toBe('critical')
    expect(volumeHealthOf({ at: '/v', newestAgeSeconds: 1 * H, distrusted: 0, withoutImage: 1 })).toEqual({
      verdict: 'warning', reasons: ['/v: 1 revision has lost its image (bbackup status -b names them; restore cannot use them)'],
    })
  })
})
