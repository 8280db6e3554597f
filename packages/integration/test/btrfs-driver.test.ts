import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { cp, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ok as okResult } from 'neverthrow'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { backup, healthOf, list, prune, readJournal, restore, runComplete, status, type BackupEvent, type BackupReport, type BbError, type Job, type TransferProgress, type Transport } from '@bb/core'
import { descendantsOf, mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { btrfsDriver } from '@bb/drivers/btrfs'
import { localTransport } from '@bb/transports/local'
import { at, btrfs, btrfsJob, content, exists, finished, ok, rsyncJob, show, spawnTs, waitFor } from './helpers.js'

const names = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => n.startsWith('home.')).sort()

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'rsync'], { root: true }))('btrfs driver against real btrfs', () => {
  let fs: LoopFilesystem
  let source: string
  let targetA: string
  let state: string
  const extra: LoopFilesystem[] = []
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    source = join(fs.mountPoint, 'home')
    targetA = join(fs.mountPoint, 'backup-a')
    state = join(fs.mountPoint, 'state')
    btrfs('subvolume', 'create', source)
    await writeTree(source, { 'alice/a.txt': 'alpha\n', 'alice/deep/b.bin': randomBytes(300_000), 'bob/c.txt': 'charlie\n' })
  })
  afterEach(async () => {
    for (const f of extra.splice(0)) await f.cleanup()
    await fs.cleanup()
  })
  /** another host's /home, a subvolume of its own on the same filesystem (its name's prefix is home. too) */
  const otherHome = async (): Promise<string> => {
    const other = join(fs.mountPoint, 'other/home')
    await mkdir(join(fs.mountPoint, 'other'))
    btrfs('subvolume', 'create', other)
    await writeTree(other, { 'x.txt': 'the other host\n' })
    return other
  }

  it('sends in full, then incrementally; the received chain is valid and equals the source', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    const first: BackupReport = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T100000Z', mode: 'full' })
    await writeFile(join(source, 'alice/a.txt'), 'alpha changed\n')
    await rm(join(source, 'bob'), { recursive: true })
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T110000Z', mode: 'incremental', parent: 'home.2026-11-23T100000Z' })
    expect(second.targets[0]?.bytes).toBeGreaterThan(0)
    expect(second.targets[0]?.bytes).toBeLessThan(100_000) // the 300 kB file was not sent again

    for (const name of ['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z']) {
      const snap = show(join(source, '.snapshots', name))
      const copy = show(join(targetA, name))
      expect(snap.readOnly).toBe(true)
      expect(copy.readOnly).toBe(true)
      expect(copy.receivedUuid).toBe(snap.uuid)
      expect(await content(join(targetA, name))).toEqual(await content(join(source, '.snapshots', name)))
    }
    // the incremental was received as a snapshot of the first backup
    expect(show(join(targetA, 'home.2026-11-23T110000Z')).parentUuid).toBe(show(join(targetA, 'home.2026-11-23T100000Z')).uuid)
    expect(await content(join(targetA, 'home.2026-11-23T110000Z'))).toEqual(await content(source))
    expect(await readFile(join(targetA, 'home.2026-11-23T100000Z/alice/a.txt'), 'utf8')).toBe('alpha\n')
    expect((await readJournal(localTransport(state), join(state, 'journal.json')))._unsafeUnwrap().entries).toEqual([])
  })

  it('a target that was offline catches up incrementally, oldest first; the other is not held back', async () => {
    const b = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    extra.push(b)
    const targetB = join(b.mountPoint, 'backups')
    const job = btrfsJob({ source, targets: [targetA, targetB], state })
    const first = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.failed).toBe(0)

    execFileSync('umount', [b.mountPoint]) // the disk is unplugged
    await writeFile(join(source, 'alice/a.txt'), 'second\n')
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.failed).toBe(1)
    expect(second.targets.find((t) => t.target === targetA)).toMatchObject({ ok: true, mode: 'incremental' })
    expect(second.targets.find((t) => t.target === targetB)?.error?.code).toBe('TARGET_NOT_BTRFS')
    expect(await exists(targetB)).toBe(false) // nothing was created on the empty mount point

    // plugged in again: both missed snapshots go there, each incremental against the one before
    execFileSync('mount', ['-o', 'loop', join(b.mountPoint, '../fs.img'), b.mountPoint])
    await writeFile(join(source, 'alice/a.txt'), 'third\n')
    const third = ok(await backup(job, { now: at('2026-11-23T12:00:00Z') }))
    expect(third.failed).toBe(0)
    const atB = third.targets.find((t) => t.target === targetB)
    expect(atB?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([
      ['home.2026-11-23T110000Z', 'incremental', 'home.2026-11-23T100000Z'],
      ['home.2026-11-23T120000Z', 'incremental', 'home.2026-11-23T110000Z'],
    ])
    expect(third.targets.find((t) => t.target === targetA)?.sent.map((s) => s.snapshot)).toEqual(['home.2026-11-23T120000Z'])
    expect(await names(targetB)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])
    expect(await readFile(join(targetB, 'home.2026-11-23T110000Z/alice/a.txt'), 'utf8')).toBe('second\n')

    // a target that keeps the newest two gets those of what it missed (btrbk's target_preserve), not every snapshot to delete right after
    const keepTwo = { ...job, retention: { target: { keepLast: 2 } } }
    execFileSync('umount', [b.mountPoint])
    for (const hour of ['13', '14', '15']) {
      await writeFile(join(source, 'alice/a.txt'), `${hour}\n`)
      expect(ok(await backup(keepTwo, { now: at(`2026-11-23T${hour}:00:00Z`) })).failed).toBe(1)
    }
    execFileSync('mount', ['-o', 'loop', join(b.mountPoint, '../fs.img'), b.mountPoint])
    await writeFile(join(source, 'alice/a.txt'), '16\n')
    const back = ok(await backup(keepTwo, { now: at('2026-11-23T16:00:00Z') }))
    expect(back.targets.find((t) => t.target === targetB)?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([
      ['home.2026-11-23T150000Z', 'incremental', 'home.2026-11-23T120000Z'],
      ['home.2026-11-23T160000Z', 'incremental', 'home.2026-11-23T150000Z'],
    ])
    expect(await names(targetB)).toEqual(['home.2026-11-23T150000Z', 'home.2026-11-23T160000Z'])
    expect(await content(join(targetB, 'home.2026-11-23T160000Z'))).toEqual(await content(source))
  })

  it('a snapshot named by a clock that was ahead: the snapshots made once it was put right are sent (by a transfer of their own too), each from the newest made; status, health and restore take the newest made for the newest', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    const real = Date.now()
    const clock = (ms: number) => (): Date => new Date(ms)
    const first = ok(await backup(job, { now: clock(real - 3_600_000) })).snapshot
    await writeFile(join(source, 'alice/a.txt'), 'made while the clock was 200 days ahead\n')
    const ahead = ok(await backup(job, { now: clock(real + 200 * 86_400_000) })).snapshot
    // the clock put right: snapshots taken alone, then sent by a transfer of its own (btrbk's snapshot, then resume)
    await writeFile(join(source, 'alice/a.txt'), 'once the clock was right\n')
    const third = ok(await backup(job, { now: clock(real - 60_000), transfer: false })).snapshot
    await writeFile(join(source, 'alice/a.txt'), 'the newest\n')
    const fourth = ok(await backup(job, { now: clock(real), transfer: false })).snapshot
    const sent = ok(await backup(job, { now: clock(real), snapshot: false }))
    expect(sent.targets[0]?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([[third, 'incremental', first], [fourth, 'incremental', third]])
    expect(sent.targets[0]?.warnings).toContainEqual(expect.stringContaining(`${ahead}, is dated ahead of this host's clock (200 d)`))
    expect(await content(join(targetA, fourth))).toEqual(await content(source))
    expect(await names(targetA)).toEqual([first, third, fourth, ahead].sort())

    const told = ok(await status(job, { now: clock(real) }))
    expect(told.targets[0]).toMatchObject({ backups: 4, latest: { name: fourth }, ahead: [ahead], missing: [] })
    expect(told.snapshots).toMatchObject({ latest: { name: fourth }, ahead: [ahead] })
    expect(healthOf(told)).toEqual({ verdict: 'warning', reasons: [expect.stringContaining(`a snapshot is dated ahead of this host's clock (${ahead})`), expect.stringContaining(`a backup is dated ahead of this host's clock (${ahead}): the clock was ahead when it was made, or is behind now (check it: timedatectl); the age checked is that of the newest backup made before now`)] })
    // days later without a run: the age of the newest made is what the check sees, not that of the one dated ahead
    expect(healthOf(ok(await status(job, { now: clock(real + 3 * 86_400_000) }))).reasons).toContainEqual(expect.stringMatching(/the newest backup is 3 d old \(critical/))
    const r = ok(await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(join(fs.mountPoint, 'restored')) }))
    expect(r.snapshot).toBe(fourth)
    expect(await readFile(join(fs.mountPoint, 'restored', fourth, 'alice/a.txt'), 'utf8')).toBe('the newest\n')
  })

  it('a snapshot named by a clock that was behind is the newest made: once the clock is right, a prune at the target keeps it (the last one sent there), as the source keeps it for its pin', async () => {
    const job = btrfsJob({ source, targets: [targetA], state, retention: { source: { keepLast: 1 }, target: { keepLast: 1 } } })
    const real = Date.now()
    const clock = (ms: number) => (): Date => new Date(ms)
    const first = ok(await backup(job, { now: clock(real - 2 * 3_600_000), prune: false })).snapshot
    const second = ok(await backup(job, { now: clock(real - 3_600_000), prune: false })).snapshot
    await writeFile(join(source, 'alice/a.txt'), 'made while the clock was 3 days behind\n')
    const behind = ok(await backup(job, { now: clock(real - 3 * 86_400_000), prune: false }))
    expect(behind.targets[0]?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([[behind.snapshot, 'incremental', second]])
    // the clock put right: a prune alone (its own timer), before the next run
    const pruned = ok(await prune(job, { now: clock(real) }))
    const atTarget = pruned.find((p) => p.side === 'target')
    expect(atTarget?.deleted).toEqual([first])
    expect(atTarget?.decisions.find((d) => d.name === behind.snapshot)?.reasons).toContainEqual(expect.stringContaining('the last snapshot sent here (the newest made, though another is named newer'))
    expect(await names(targetA)).toEqual([behind.snapshot, second].sort())
    expect(await names(join(source, '.snapshots'))).toEqual([behind.snapshot, second].sort())
    expect(await readFile(join(targetA, behind.snapshot ?? '', 'alice/a.txt'), 'utf8')).toBe('made while the clock was 3 days behind\n')
  })

  it('targets that share the parent get one send feeding both; a target that fills up fails alone', async () => {
    const small = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 128 })
    extra.push(small)
    const targetS = join(small.mountPoint, 'backups')
    const job = btrfsJob({ source, targets: [targetA, targetS], state })
    const first = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.failed).toBe(0)
    // the first (full) send went to both from one btrfs send
    for (const t of first.targets) expect(t.commands[0]?.filter((w) => w === 'send')).toHaveLength(1)
    expect(first.targets[0]?.commands[0]).toContain('tee')
    expect(first.targets[0]?.commands).toEqual(first.targets[1]?.commands)

    await writeFile(join(source, 'big.bin'), randomBytes(140 * 1024 * 1024))
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.targets.map((t) => [t.target, t.ok, t.error?.code])).toEqual([[targetA, true, undefined], [targetS, false, 'DISK_FULL']])
    expect(show(join(targetA, 'home.2026-11-23T110000Z')).receivedUuid).toBe(show(join(source, '.snapshots/home.2026-11-23T110000Z')).uuid)
    expect(await exists(join(targetS, 'home.2026-11-23T110000Z'))).toBe(false)
    expect(await content(join(targetA, 'home.2026-11-23T110000Z'))).toEqual(await content(source))
  }, 60_000)

  it('the first backup says which nested subvolumes its snapshots leave out, not the snapshot folder nor a target inside the source; the incremental ones after it say nothing', async () => {
    btrfs('subvolume', 'create', join(source, '.snapshots'))
    btrfs('subvolume', 'create', join(source, 'alice/work'))
    await writeTree(join(source, 'alice/work'), { 'thesis.txt': 'not in any snapshot of home\n' })
    const inside = join(source, 'backups')
    const job = btrfsJob({ source, targets: [targetA, inside], state })
    const first = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    for (const t of first.targets) {
      expect(t).toMatchObject({ ok: true, mode: 'full' })
      expect(t.warnings.filter((w) => w.startsWith('not in this backup'))).toEqual([`not in this backup: a subvolume nested in ${source} (alice/work): a snapshot stops at a subvolume's edge; back it up as a job of its own, or leave it out knowingly`])
    }
    // what it says is so: the backup has alice, not what is in alice/work
    expect(await exists(join(targetA, 'home.2026-11-23T100000Z/alice/a.txt'))).toBe(true)
    expect(await exists(join(targetA, 'home.2026-11-23T100000Z/alice/work/thesis.txt'))).toBe(false)
    await writeFile(join(source, 'bob/c.txt'), 'changed\n')
    const second = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    for (const t of second.targets) {
      expect(t).toMatchObject({ ok: true, mode: 'incremental' })
      expect(t.warnings).toEqual([])
    }
  })

  it('an incremental backup says which subvolumes were made in the source since its parent, so a directory that became a subvolume is not left out unknowingly; once', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    // a snapshot taken, not sent yet: the next run sends it, then the one after it
    ok(await backup(job, { now: at('2026-11-23T11:00:00Z'), transfer: false }))
    // bob, a directory, becomes a subvolume of its own (as advised to keep a cache out of the snapshots)
    await rename(join(source, 'bob'), join(source, 'bob.old'))
    btrfs('subvolume', 'create', join(source, 'bob'))
    await cp(join(source, 'bob.old'), join(source, 'bob'), { recursive: true })
    await rm(join(source, 'bob.old'), { recursive: true })
    const run = ok(await backup(job, { now: at('2026-11-23T12:00:00Z') }))
    expect(run.targets.map((t) => t.sent.map((x) => [x.snapshot, x.mode]))).toEqual([[['home.2026-11-23T110000Z', 'incremental'], ['home.2026-11-23T120000Z', 'incremental']]])
    // said by the send of the snapshot that first lacks it, not by the one before
    expect(run.targets.map((t) => t.warnings.filter((w) => w.startsWith('not in this backup')))).toEqual([
      [`not in this backup: a subvolume made in ${source} since home.2026-11-23T110000Z (bob): a snapshot stops at a subvolume's edge (a directory that became one: its files are in no backup from now on); back it up as a job of its own, or leave it out knowingly`],
    ])
    // what it says is so: bob's file was in the backup before, and is in this one no more
    expect(await exists(join(targetA, 'home.2026-11-23T110000Z/bob/c.txt'))).toBe(true)
    expect(await exists(join(targetA, 'home.2026-11-23T120000Z/bob/c.txt'))).toBe(false)
    const after = ok(await backup(job, { now: at('2026-11-23T13:00:00Z') }))
    expect(after.targets.map((t) => t.warnings)).toEqual([[]])
  })

  it('reports a transfer\'s progress against the size btrfs send --no-data foretells, full and incremental; none is foretold when nothing shows it, and nothing is left running', async () => {
    await writeFile(join(source, 'alice/big.bin'), randomBytes(3 * 1024 * 1024))
    const spawned: string[] = []
    const watched = (t: Transport): Transport => ({ ...t, spawn: (argv, o) => {
      spawned.push(argv.join(' '))
      return t.spawn(argv, o)
    } })
    // at 2 MB/s the stream takes long enough for progress to be reported several times
    const base = btrfsJob({ source, targets: [targetA], state, driver: { rateLimit: 2_000_000 } })
    const job = { ...base, source: watched(base.source) }
    const progress: Extract<BackupEvent, { type: 'transfer-progress' }>[] = []
    const onEvent = (e: BackupEvent): void => { if (e.type === 'transfer-progress') progress.push(e) }
    for (const [hour, change] of [['10', undefined], ['11', 'alice/deep/new.bin']] as const) {
      if (change !== undefined) await writeFile(join(source, change), randomBytes(2 * 1024 * 1024))
      progress.length = 0
      const r = ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`), onEvent }))
      const sent = r.targets[0]?.bytes ?? 0
      expect(r.targets[0]).toMatchObject({ ok: true, mode: change === undefined ? 'full' : 'incremental' })
      const estimated = progress.filter((p) => p.expectedBytes !== undefined)
      expect(estimated.length).toBeGreaterThan(0)
      for (const p of estimated) {
        // within 2% of what the real stream came to
        expect(Math.abs((p.expectedBytes ?? 0) - sent) / sent).toBeLessThan(0.02)
        expect(p.percent).toBe(Math.min(99, Math.floor((p.bytes * 100) / (p.expectedBytes ?? 1))))
      }
      const last = estimated.at(-1)
      expect(last?.bytesPerSecond).toBeGreaterThan(500_000)
      expect(last?.bytesPerSecond).toBeLessThan(8_000_000)
      expect(last?.etaSeconds).toBeGreaterThanOrEqual(0)
      expect(spawned.filter((c) => c.includes('--no-data'))).toHaveLength(change === undefined ? 1 : 2)
      expect(spawned.filter((c) => c.includes('--no-data')).at(-1)).toBe(['btrfs send -q --no-data', ...(change === undefined ? [] : ['-p', join(source, '.snapshots/home.2026-11-23T100000Z')]), join(source, `.snapshots/home.2026-11-23T${hour}0000Z`)].join(' '))
      // the estimate ended with the transfer
      expect(descendantsOf(process.pid).filter((pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--no-data') } catch { return false } })).toEqual([])
    }
    // nothing shows the progress: no estimate is made
    await writeFile(join(source, 'bob/c.txt'), 'changed\n')
    ok(await backup(job, { now: at('2026-11-23T12:00:00Z'), onEvent, progress: false }))
    expect(spawned.filter((c) => c.includes('--no-data'))).toHaveLength(2)
    // from a mount that compresses, a --compressed-data stream is smaller than the data: no estimate either
    execFileSync('mount', ['-o', 'remount,compress=zstd', fs.mountPoint])
    await writeFile(join(source, 'bob/c.txt'), 'changed again\n')
    const r = ok(await backup(job, { now: at('2026-11-23T13:00:00Z'), onEvent }))
    const compressedData = r.targets[0]?.commands.flat().includes('--compressed-data') === true
    expect(spawned.filter((c) => c.includes('--no-data'))).toHaveLength(compressedData ? 2 : 3)
  }, 60_000)

  it('of targets that share a send, one that stops taking the stream is stopped alone by the watchdog: the other completes on its first attempt, the stopped one is sent again', async () => {
    const b = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    extra.push(b)
    const targetB = join(b.mountPoint, 'backups')
    const job = btrfsJob({ source, targets: [targetA, targetB], state, driver: { stallTimeoutSeconds: 2 } })
    expect(ok(await backup(job, { now: at('2026-11-23T10:00:00Z') })).failed).toBe(0)

    // more than the fan-out lets one receiver run ahead of another (32 MiB)
    await writeFile(join(source, 'big.bin'), randomBytes(96 * 1024 * 1024))
    const running = backup(job, { now: at('2026-11-23T11:00:00Z') })
    // target B's receive (a child of this process) hangs, as on a dead disk
    let stopped: number | undefined
    await waitFor(async () => {
      stopped = descendantsOf(process.pid).find((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').includes(`receive -e ${targetB}`)
        } catch {
          return false
        }
      })
      return stopped !== undefined
    }, 20_000)
    process.kill(stopped ?? 0, 'SIGSTOP')
    try {
      const report = ok(await running)
      expect(report.failed).toBe(0)
      // A was not stopped with B: its one attempt completed once B was let go
      expect(report.targets.map((t) => [t.target, t.attempts ?? 1])).toEqual([[targetA, 1], [targetB, 2]])
      // B's unfinished receive was removed before it was sent again, alone
      expect(report.targets[1]?.recovered).toEqual([{ snapshot: 'home.2026-11-23T110000Z', action: 'gone' }])
      for (const target of [targetA, targetB]) {
        expect(show(join(target, 'home.2026-11-23T110000Z')).receivedUuid).toBe(show(join(source, '.snapshots/home.2026-11-23T110000Z')).uuid)
        expect(await content(join(target, 'home.2026-11-23T110000Z'))).toEqual(await content(source))
      }
      // the stopped receive was killed, not left behind
      await waitFor(async () => !existsSync(`/proc/${stopped ?? 0}`) || /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${stopped ?? 0}/stat`, 'utf8')), 10_000)
    } finally {
      try {
        process.kill(stopped ?? 0, 'SIGKILL')
      } catch {
        // gone, as it should be
      }
    }
  }, 90_000)

  it('after kill -9 mid-send: no stale lock blocks, the unfinished receive is removed and sent again from the same parent (scenario 2)', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const parent = show(join(targetA, 'home.2026-11-23T100000Z'))
    await writeFile(join(source, 'big.bin'), randomBytes(160 * 1024 * 1024))

    const child = spawnTs('fixtures/run-btrfs-backup.ts', [source, targetA, state, '2026-11-23T11:00:00Z'], { detached: true })
    const done = finished(child)
    const partial = join(targetA, 'home.2026-11-23T110000Z')
    await waitFor(() => exists(partial), 30_000)
    // bbackup, btrfs send and btrfs receive at once, as a power cut would
    process.kill(-child.pid!, 'SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    await waitFor(async () => { try { execFileSync('pgrep', ['-f', `btrfs receive -e ${targetA}`]); return false } catch { return true } }, 10_000)

    const garbled = show(partial)
    expect(garbled.readOnly).toBe(false)
    expect(garbled.receivedUuid).toBeUndefined()
    const pending = (await readJournal(localTransport(state), join(state, 'journal.json')))._unsafeUnwrap().entries
    expect(pending.map((e) => [e.snapshot, e.parent])).toEqual([['home.2026-11-23T110000Z', 'home.2026-11-23T100000Z']])

    // no new snapshot: the killed run's snapshot is the one the target lacks
    const events: string[] = []
    const again = ok(await backup(job, { now: at('2026-11-23T11:30:00Z'), snapshot: false, onEvent: (e) => { if (e.type === 'recovered' || e.type === 'lock-taken-over') events.push(e.type) } }))
    expect(events).toEqual(['lock-taken-over', 'recovered'])
    expect(again.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T110000Z', mode: 'incremental', parent: 'home.2026-11-23T100000Z', recovered: [{ snapshot: 'home.2026-11-23T110000Z', action: 'removed' }] })
    const copy = show(partial)
    expect(copy.readOnly).toBe(true)
    expect(copy.receivedUuid).toBe(show(join(source, '.snapshots/home.2026-11-23T110000Z')).uuid)
    expect(copy.parentUuid).toBe(parent.uuid)
    expect(show(join(targetA, 'home.2026-11-23T100000Z')).uuid).toBe(parent.uuid) // the complete backup was never touched
  }, 90_000)

  it('a full 128 MiB target: DISK_FULL, the unfinished receive is gone with its space, older backups intact; it succeeds once the data fits (scenario 3)', async () => {
    const small = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 128 })
    extra.push(small)
    const target = join(small.mountPoint, 'backups')
    const job = btrfsJob({ source, targets: [target], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const before = await content(join(target, 'home.2026-11-23T100000Z'))
    const free = (): number => Number(execFileSync('df', ['--output=avail', '-B1', small.mountPoint], { encoding: 'utf8' }).split('\n')[1])
    const freeBefore = free()

    await writeFile(join(source, 'big.bin'), randomBytes(140 * 1024 * 1024))
    const full = ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
    expect(full.targets[0]?.ok).toBe(false)
    expect((full.targets[0]?.error as BbError).code, JSON.stringify(full.targets[0]?.error)).toBe('DISK_FULL')
    expect(await names(target)).toEqual(['home.2026-11-23T100000Z'])
    expect(await content(join(target, 'home.2026-11-23T100000Z'))).toEqual(before)
    expect(Math.abs(free() - freeBefore) / freeBefore).toBeLessThan(0.05)
    // the source snapshot it could not send is kept: it is the parent the journal still names, or the next to send
    expect(await names(join(source, '.snapshots'))).toContain('home.2026-11-23T110000Z')

    // a bigger disk: grow the image, then the filesystem
    const device = execFileSync('findmnt', ['-n', '-o', 'SOURCE', small.mountPoint], { encoding: 'utf8' }).trim()
    execFileSync('truncate', ['-s', '400M', join(small.mountPoint, '../fs.img')])
    execFileSync('losetup', ['-c', device])
    btrfs('filesystem', 'resize', 'max', small.mountPoint)
    const after = ok(await backup(job, { now: at('2026-11-23T12:00:00Z') }))
    expect(after.failed).toBe(0)
    expect(after.targets[0]?.sent.map((s) => [s.snapshot, s.mode])).toEqual([['home.2026-11-23T110000Z', 'incremental'], ['home.2026-11-23T120000Z', 'incremental']])
    expect(await content(join(target, 'home.2026-11-23T120000Z'))).toEqual(await content(source))
  }, 90_000)

  it('refuses a complete stray subvolume with the planned name and deletes nothing (scenario 4)', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    // a snapshot is taken but not sent; then something else appears at the target under its name
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z'), transfer: false }))
    await mkdir(targetA, { recursive: true })
    const stray = join(targetA, 'home.2026-11-23T100000Z')
    btrfs('subvolume', 'create', stray)
    await writeFile(join(stray, 'precious.txt'), 'not ours\n')
    btrfs('property', 'set', stray, 'ro', 'true')
    const r = ok(await backup(job, { now: at('2026-11-23T10:30:00Z'), snapshot: false }))
    expect(r.targets[0]?.ok).toBe(false)
    expect(r.targets[0]?.error?.code).toBe('STRAY_SUBVOLUME')
    expect(await readFile(join(stray, 'precious.txt'), 'utf8')).toBe('not ours\n')
    // a writable one (it looks like an unfinished receive) that the journal knows nothing of is not ours either
    btrfs('property', 'set', stray, 'ro', 'false')
    const r2 = ok(await backup(job, { now: at('2026-11-23T10:40:00Z'), snapshot: false }))
    expect(r2.targets[0]?.error?.code).toBe('STRAY_SUBVOLUME')
    expect(r2.targets[0]?.error?.message).toMatch(/unfinished receive bbackup has no record of/)
    expect(await readFile(join(stray, 'precious.txt'), 'utf8')).toBe('not ours\n')
    // a new snapshot never takes a name that is in use at a target
    const r3 = ok(await backup(job, { now: at('2026-11-23T10:00:00Z'), transfer: false }))
    expect(r3.snapshot).toBe('home.2026-11-23T100000Z_1')
    // nor one that only a target holds: the snapshot, taken while the target is listed, is taken again under a free name, the first deleted
    for (const n of ['home.2026-11-23T100000Z', 'home.2026-11-23T100000Z_1']) btrfs('subvolume', 'delete', join(source, '.snapshots', n))
    const events: string[] = []
    const r4 = ok(await backup(job, { now: at('2026-11-23T10:00:00Z'), transfer: false, onEvent: (e) => void (e.type === 'snapshot-created' && events.push(e.snapshot)) }))
    expect([r4.snapshot, events]).toEqual(['home.2026-11-23T100000Z_1', ['home.2026-11-23T100000Z_1']])
    expect(await names(join(source, '.snapshots'))).toEqual(['home.2026-11-23T100000Z_1'])
  })

  it('when the newest common snapshot is deleted at the target or at the source, the next older pair is the parent (scenario 5)', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    for (const hour of [10, 11, 12]) {
      await writeFile(join(source, 'alice/a.txt'), `hour ${hour}\n`)
      ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    }
    btrfs('subvolume', 'delete', join(targetA, 'home.2026-11-23T120000Z'))
    const r = ok(await backup(job, { now: at('2026-11-23T13:00:00Z') }))
    expect(r.targets[0]?.sent.map((s) => [s.snapshot, s.parent])).toEqual([
      ['home.2026-11-23T120000Z', 'home.2026-11-23T110000Z'],
      ['home.2026-11-23T130000Z', 'home.2026-11-23T120000Z'],
    ])
    btrfs('subvolume', 'delete', join(source, '.snapshots/home.2026-11-23T130000Z'))
    const r2 = ok(await backup(job, { now: at('2026-11-23T14:00:00Z') }))
    expect(r2.targets[0]?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([['home.2026-11-23T140000Z', 'incremental', 'home.2026-11-23T120000Z']])
    expect(await content(join(targetA, 'home.2026-11-23T140000Z'))).toEqual(await content(source))
  })

  it("incremental (btrbk's): strict sends nothing in full, not to a new target nor where the target lost the parent before the receive; yes sends that one in full; no sends every snapshot in full", async () => {
    // another filesystem: there receive finds a parent only among the backups (here it would take the source's snapshot)
    const other = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    extra.push(other)
    const target = join(other.mountPoint, 'backup')
    const job = (incremental?: 'yes' | 'no' | 'strict'): Job => btrfsJob({ source, targets: [target], state, ...(incremental === undefined ? {} : { driver: { incremental } }) })
    /** the job, whose target loses its newest backup after the run listed it and before the receive */
    const losing = (j: Job): Job => ({
      ...j,
      driver: {
        ...j.driver,
        transfer: (input) => {
          const newest = readdirSync(target).filter((n) => n.startsWith('home.')).sort().at(-1) ?? ''
          btrfs('subvolume', 'delete', join(target, newest))
          return j.driver.transfer(input)
        },
      },
    })
    const refused = ok(await backup(job('strict'), { now: at('2026-11-23T10:00:00Z') }))
    expect(refused.targets[0]).toMatchObject({ ok: false, error: { code: 'FULL_SEND_REFUSED', message: 'home.2026-11-23T100000Z would be sent in full (the target holds no backup of this source), and incremental = strict sends nothing in full' } })
    expect(refused.targets[0]?.error?.hint).toContain('--incremental yes')
    expect(await names(target)).toEqual([])
    ok(await backup(job(), { now: at('2026-11-23T11:00:00Z') }))
    await writeFile(join(source, 'alice/a.txt'), 'changed\n')
    expect(ok(await backup(job('strict'), { now: at('2026-11-23T12:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T110000Z' })
    // the parent gone at the target between listing and receiving: no full stream in its place
    const lost = ok(await backup(losing(job('strict')), { now: at('2026-11-23T13:00:00Z') }))
    expect(lost.targets[0]).toMatchObject({ ok: false, error: { code: 'FULL_SEND_REFUSED', message: expect.stringContaining('the target refused the incremental send of home.2026-11-23T130000Z against home.2026-11-23T120000Z') } })
    expect(await names(target)).toEqual(['home.2026-11-23T110000Z'])
    expect((await readJournal(localTransport(state), join(state, 'journal.json')))._unsafeUnwrap().entries).toEqual([])
    // the source snapshots gone that the target holds: strict refuses the full send the plan would need
    btrfs('subvolume', 'delete', join(source, '.snapshots/home.2026-11-23T110000Z'))
    const unrelated = ok(await backup(job('strict'), { now: at('2026-11-23T14:00:00Z') }))
    expect(unrelated.targets[0]?.error?.message).toBe('home.2026-11-23T140000Z would be sent in full (none of the 1 backups at the target is a copy of a snapshot still at the source), and incremental = strict sends nothing in full')
    expect(await names(target)).toEqual(['home.2026-11-23T110000Z'])
    // yes: the target gets the newest in full; where it loses the parent before the receive, in full again, with a warning
    expect(ok(await backup(job('yes'), { now: at('2026-11-23T15:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'full' })
    const again = ok(await backup(losing(job('yes')), { now: at('2026-11-23T16:00:00Z') }))
    expect(again.targets[0]).toMatchObject({ ok: true, mode: 'full', warnings: [expect.stringContaining('the incremental send against home.2026-11-23T150000Z was refused by the target')] })
    // no: in full although the target holds the parent; received as a snapshot of nothing
    await writeFile(join(source, 'alice/a.txt'), 'changed again\n')
    expect(ok(await backup(job('no'), { now: at('2026-11-23T17:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'full' })
    expect(show(join(target, 'home.2026-11-23T170000Z')).parentUuid).toBeUndefined()
    expect(await content(join(target, 'home.2026-11-23T170000Z'))).toEqual(await content(source))
  })

  it('a cancel mid-send (SIGINT) stops cleanly: nothing unfinished is left, the lock is free, the next run sends it', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    await writeFile(join(source, 'big.bin'), randomBytes(160 * 1024 * 1024))
    const controller = new AbortController()
    const partial = join(targetA, 'home.2026-11-23T110000Z')
    const running = backup(job, { now: at('2026-11-23T11:00:00Z'), signal: controller.signal })
    await waitFor(() => exists(partial), 30_000)
    controller.abort()
    const r = await running
    expect(r.isErr() && r.error.code).toBe('CANCELLED')
    expect(await exists(partial)).toBe(false)
    expect(await exists(join(state, 'lock'))).toBe(false)
    const next = ok(await backup(job, { now: at('2026-11-23T11:30:00Z'), snapshot: false }))
    expect(next.targets[0]?.sent.map((s) => [s.snapshot, s.mode])).toEqual([['home.2026-11-23T110000Z', 'incremental']])
  }, 90_000)

  it('retention: btrbk windows on real snapshots; the parent of an offline target is pinned at the source', async () => {
    const b = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    extra.push(b)
    const targetB = join(b.mountPoint, 'backups')
    const retention = { source: { keepLast: 1 }, target: { preserveMin: 'no', preserve: '3h' }, timeZone: 'UTC' } as const
    const job: Job = btrfsJob({ source, targets: [targetA, targetB], state, retention })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    execFileSync('umount', [b.mountPoint])
    for (const hour of [11, 12, 13, 14]) ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    // the source keeps its newest and the one targetB holds (10:00), whatever keepLast says
    expect(await names(join(source, '.snapshots'))).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T140000Z'])
    // btrbk "3h" at 14:00: the first snapshot of each hour up to 3 hours back (delta <= 3) stays; 10:00 goes
    expect(await names(targetA)).toEqual(['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z', 'home.2026-11-23T130000Z', 'home.2026-11-23T140000Z'])

    execFileSync('mount', ['-o', 'loop', join(b.mountPoint, '../fs.img'), b.mountPoint])
    const back = ok(await backup(job, { now: at('2026-11-23T15:00:00Z') }))
    expect(back.targets.find((t) => t.target === targetB)?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([
      ['home.2026-11-23T140000Z', 'incremental', 'home.2026-11-23T100000Z'],
      ['home.2026-11-23T150000Z', 'incremental', 'home.2026-11-23T140000Z'],
    ])
    // once targetB has caught up, its old parent is no longer pinned
    expect(await names(join(source, '.snapshots'))).toEqual(['home.2026-11-23T150000Z'])
    const pruned = ok(await prune(job, { dryRun: true, now: at('2026-11-23T15:00:00Z') }))
    expect(pruned.flatMap((p) => p.deleted)).toEqual([])
    const lists = ok(await list(job))
    expect(lists.map((l) => l.side)).toEqual(['source', 'target', 'target'])
  }, 60_000)

  it('two sources with the same prefix into one target (every host\'s /home is home.*): neither weighs nor deletes the other\'s backups; a job from before the lineage keeps its own', async () => {
    const otherSource = await otherHome()
    const retention = { target: { keepLast: 1 } } as const
    const first: Job = btrfsJob({ source, targets: [targetA], state, retention })
    const second: Job = btrfsJob({ source: otherSource, targets: [targetA], state: join(fs.mountPoint, 'state-other'), retention })
    ok(await backup(first, { now: at('2026-11-23T10:00:00Z') }))
    const theirs = ok(await backup(second, { now: at('2026-11-23T11:00:00Z') }))
    // the other source's first backup is full; the first's only backup stays, named as not its own
    expect(theirs.targets[0]).toMatchObject({ ok: true, mode: 'full', pruned: [] })
    expect(theirs.targets[0]?.warnings.join('\n')).toMatch(/a backup here is named as this job's \(home\.2026-11-23T100000Z\) but not a copy of its source's snapshots/)
    expect(await names(targetA)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z'])
    await writeFile(join(source, 'alice/a.txt'), 'changed\n')
    const ours = ok(await backup(first, { now: at('2026-11-23T12:00:00Z') }))
    // incremental on its own backup, and its retention deletes its own older one only
    expect(ours.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T100000Z', pruned: ['home.2026-11-23T100000Z'] })
    expect(await names(targetA)).toEqual(['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])
    const told = ok(await status(second, { now: at('2026-11-23T12:30:00Z') }))
    expect(told.targets[0]).toMatchObject({ backups: 1, latest: { name: 'home.2026-11-23T110000Z' }, others: ['home.2026-11-23T120000Z'] })
    const pruned = ok(await prune(second, { now: at('2026-11-23T12:30:00Z') }))
    expect(pruned[0]).toMatchObject({ deleted: [], others: ['home.2026-11-23T120000Z'] })
    expect(await names(targetA)).toEqual(['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])

    // a job that sent there before it kept a lineage: its backups there (a copy of a snapshot it still has among them) are its own
    await rm(join(state, 'lineage.json'))
    await writeFile(join(source, 'alice/a.txt'), 'changed again\n')
    btrfs('subvolume', 'delete', join(targetA, 'home.2026-11-23T110000Z')) // the other source's, out of the way
    ok(await backup({ ...first, retention: { target: { keepLast: 5 } } }, { now: at('2026-11-23T13:00:00Z') }))
    ok(await backup({ ...first, retention: { target: { keepLast: 5 } } }, { now: at('2026-11-23T14:00:00Z') }))
    await rm(join(state, 'lineage.json'))
    for (const s of ['home.2026-11-23T120000Z', 'home.2026-11-23T130000Z']) btrfs('subvolume', 'delete', join(source, '.snapshots', s))
    const adopted = ok(await prune(first, { now: at('2026-11-23T14:30:00Z') }))
    expect(adopted[0]).toMatchObject({ deleted: ['home.2026-11-23T120000Z', 'home.2026-11-23T130000Z'] })
    expect(adopted[0]?.others).toBeUndefined()
  }, 90_000)

  it('two sources sharing one snapshot folder and prefix: neither counts, sends nor prunes the other\'s snapshots', async () => {
    const otherSource = await otherHome()
    const folder = join(fs.mountPoint, 'snaps')
    const retention = { source: { keepLast: 1 } } as const
    const first: Job = btrfsJob({ source, targets: [targetA], state, retention, driver: { snapshotFolder: folder } })
    const second: Job = btrfsJob({ source: otherSource, targets: [join(fs.mountPoint, 'backup-b')], state: join(fs.mountPoint, 'state-other'), retention, driver: { snapshotFolder: folder } })
    ok(await backup(first, { now: at('2026-11-23T10:00:00Z') }))
    const theirs = ok(await backup(second, { now: at('2026-11-23T11:00:00Z') }))
    // the first source's only snapshot (its target's next parent) stays: named as the second's, but of another subvolume
    expect(theirs).toMatchObject({ sourcePruned: [], sourceOthers: ['home.2026-11-23T100000Z'] })
    expect(theirs.targets[0]).toMatchObject({ ok: true, mode: 'full' })
    expect(await names(folder)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z'])
    await writeFile(join(source, 'alice/a.txt'), 'changed\n')
    // incremental on its own snapshot, never on the other's newer one; its retention deletes its own older snapshot only
    const ours = ok(await backup(first, { now: at('2026-11-23T12:00:00Z') }))
    expect(ours.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T100000Z' })
    expect(ours).toMatchObject({ sourcePruned: ['home.2026-11-23T100000Z'], sourceOthers: ['home.2026-11-23T110000Z'] })
    expect(await names(folder)).toEqual(['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])
    expect(await content(join(targetA, 'home.2026-11-23T120000Z'))).toEqual(await content(source))
    const told = ok(await status(second, { now: at('2026-11-23T12:30:00Z') }))
    expect(told.snapshots).toMatchObject({ count: 1, latest: { name: 'home.2026-11-23T110000Z' }, others: ['home.2026-11-23T120000Z'] })
    const pruned = ok(await prune(second, { now: at('2026-11-23T12:30:00Z') }))
    expect(pruned).toMatchObject([{ side: 'source', deleted: [], others: ['home.2026-11-23T120000Z'] }])
    expect(await names(folder)).toEqual(['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])

    // the first source rolled back to its snapshot (the subvolume it replaced kept aside): the snapshots are still its own, the next send incremental on them
    btrfs('subvolume', 'snapshot', join(folder, 'home.2026-11-23T120000Z'), join(fs.mountPoint, 'home.rolled-back'))
    await rename(source, join(fs.mountPoint, 'home.broken'))
    await rename(join(fs.mountPoint, 'home.rolled-back'), source)
    await writeFile(join(source, 'alice/a.txt'), 'after the rollback\n')
    const rolled = ok(await backup(first, { now: at('2026-11-23T13:00:00Z') }))
    expect(rolled.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T120000Z' })
    expect(rolled).toMatchObject({ sourcePruned: ['home.2026-11-23T120000Z'], sourceOthers: ['home.2026-11-23T110000Z'] })
    expect(await content(join(targetA, 'home.2026-11-23T130000Z'))).toEqual(await content(source))
  }, 90_000)

  it('two runs of one source at once (two jobs, two cron lines): a name the other took in the same second gives way to the next free one; a snapshot the other\'s prune deleted meanwhile counts as deleted', async () => {
    const folder = join(source, '.snapshots')
    const taken = join(folder, 'home.2026-11-23T100000Z')
    let theirs = ''
    // the other run takes its snapshot between this run's look at the folder and its own snapshot
    const job: Job = {
      ...btrfsJob({ source, targets: [targetA], state }),
      hooks: {
        preSnapshot: async () => {
          await mkdir(folder, { recursive: true })
          btrfs('subvolume', 'snapshot', '-r', source, taken)
          theirs = show(taken).uuid
          return okResult(undefined)
        },
      },
    }
    const report = ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(report.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T100000Z_1', mode: 'full' })
    // the other run's snapshot is as it made it
    expect(show(taken)).toMatchObject({ uuid: theirs, readOnly: true })
    expect(show(join(targetA, 'home.2026-11-23T100000Z_1')).receivedUuid).toBe(show(join(folder, 'home.2026-11-23T100000Z_1')).uuid)

    // both prunes chose the same snapshot: the other deleted it first
    const listed = ok(await job.driver.listSnapshots({ at: job.source, side: 'source', signal: undefined }))
    const doomed = listed.filter((s) => s.name === 'home.2026-11-23T100000Z')
    expect(doomed).toHaveLength(1)
    btrfs('subvolume', 'delete', taken)
    expect(ok(await job.driver.deleteSnapshots({ at: job.source, snapshots: doomed, dryRun: false, signal: undefined }))).toHaveLength(1)
    // one that is still there after a failed delete is a failure
    const plain = join(fs.mountPoint, 'plain')
    await mkdir(plain)
    const failed = await job.driver.deleteSnapshots({ at: job.source, snapshots: doomed.map((s) => ({ ...s, path: plain })), dryRun: false, signal: undefined })
    expect(failed._unsafeUnwrapErr()).toMatchObject({ code: 'COMMAND_FAILED', message: 'deleting snapshots failed (exit 1)' })
    expect(existsSync(plain)).toBe(true)
  })

  it('a backup a btrfs send is reading (an archive, a restore) is kept by the prune with a warning, the rest of the batch deleted, and deleted by the next prune', async () => {
    await writeTree(source, { 'big.bin': randomBytes(2 * 1024 * 1024) })
    const job = btrfsJob({ source, targets: [targetA], state })
    for (const hour of ['10', '11', '12']) ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    // a send of the oldest backup that stalls on a full pipe: the kernel holds the subvolume as being sent until it ends
    const reading = join(targetA, 'home.2026-11-23T100000Z')
    const send = spawn('btrfs', ['send', '-q', reading], { stdio: ['ignore', 'pipe', 'ignore'] })
    try {
      await new Promise<void>((resolve, reject) => {
        send.stdout.once('readable', () => resolve())
        send.once('error', reject)
      })
      const kept = { ...job, retention: { target: { keepLast: 1 } } }
      const report = ok(await backup(kept, { now: at('2026-11-23T13:00:00Z') }))
      expect(runComplete(report)).toBe(true)
      const warning = `the kernel refused to delete home.2026-11-23T100000Z at ${targetA}: a btrfs send is reading it (another job's run, an archive or a restore from there), or it is marked immutable`
      expect(report.targets[0]).toMatchObject({ ok: true, pruned: ['home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'], kept: 2, warnings: [expect.stringContaining(warning) as unknown] })
      expect(report.targets[0]?.pruneError).toBeUndefined()
      expect(await names(targetA)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T130000Z'])
      // a prune alone says the same, and why it keeps it in its decisions
      const again = ok(await prune(kept))
      const place = again.find((p) => p.side === 'target')
      expect(place).toMatchObject({ deleted: [], kept: 2, warnings: [expect.stringContaining(warning) as unknown] })
      expect(place?.error).toBeUndefined()
      expect(place?.decisions.find((d) => d.name === 'home.2026-11-23T100000Z')).toMatchObject({ keep: true, reasons: [expect.stringMatching(/^due to be deleted \(.*\), but in use now: the next prune deletes it$/) as unknown] })
    } finally {
      send.kill('SIGKILL')
      if (send.exitCode === null && send.signalCode === null) await new Promise((resolve) => send.once('exit', resolve))
    }
    // the send is over: the next prune deletes it
    const after = ok(await prune({ ...job, retention: { target: { keepLast: 1 } } })).find((p) => p.side === 'target')
    expect(after).toMatchObject({ deleted: ['home.2026-11-23T100000Z'], kept: 1 })
    expect(after?.warnings).toBeUndefined()
    expect(await names(targetA)).toEqual(['home.2026-11-23T130000Z'])
  })

  it('a snapshot deleted at the source while the run was to send it (another job\'s prune, or by hand) is left out: the rest is sent, planned again; while another job\'s run is under way, a prune keeps what it may send', async () => {
    const folder = join(source, '.snapshots')
    ok(await backup(btrfsJob({ source, targets: [targetA], state }), { now: at('2026-11-23T10:00:00Z') }))
    ok(await backup(btrfsJob({ source, targets: [targetA], state }), { now: at('2026-11-23T11:00:00Z'), transfer: false }))
    await writeFile(join(source, 'alice/a.txt'), 'changed\n')
    // the target lacks 11:00 and 12:00; 11:00 goes once the run has listed the source
    const job: Job = {
      ...btrfsJob({ source, targets: [targetA], state }),
      hooks: {
        postSnapshot: async () => {
          btrfs('subvolume', 'delete', join(folder, 'home.2026-11-23T110000Z'))
          return okResult(undefined)
        },
      },
    }
    const report = ok(await backup(job, { now: at('2026-11-23T12:00:00Z') }))
    expect(report.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T120000Z', mode: 'incremental', parent: 'home.2026-11-23T100000Z' })
    expect(report.targets[0]?.warnings).toContain('home.2026-11-23T110000Z was deleted at the source before this run could send home.2026-11-23T110000Z (another job\'s prune of this source, or by hand): the rest is planned again without it')
    expect(await names(targetA)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T120000Z'])
    expect(await content(join(targetA, 'home.2026-11-23T120000Z'))).toEqual(await content(source))
    expect(ok(await readJournal(localTransport(state), join(state, 'journal.json'))).entries).toEqual([])

    // another job of this source (its state beside): while its run holds its lock, what is newer than its targets' newest is kept
    const jobs = join(fs.mountPoint, 'jobs')
    const mine: Job = btrfsJob({ source, targets: [targetA], state: join(jobs, 'a'), retention: { source: { keepLast: 1 } } })
    const theirs: Job = btrfsJob({ source, targets: [join(fs.mountPoint, 'backup-b')], state: join(jobs, 'b') })
    ok(await backup(theirs, { now: at('2026-11-23T13:00:00Z') }))
    ok(await backup(mine, { now: at('2026-11-23T14:00:00Z'), prune: false }))
    ok(await backup(mine, { now: at('2026-11-23T15:00:00Z'), prune: false }))
    const held = ok(await localTransport(join(jobs, 'b')).lock(join(jobs, 'b', 'lock'), { command: 'bbackup run (a test)' }))
    try {
      const [kept] = ok(await prune(mine, { now: at('2026-11-23T15:30:00Z') }))
      expect(kept?.deleted).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T120000Z'])
      expect(kept?.decisions.find((d) => d.name === 'home.2026-11-23T140000Z')?.reasons).toContain(`protected: a run of another job (${join(jobs, 'b')}, pid ${process.pid} on ${held.info.host}) is under way and may send it (newer than what that job's targets hold)`)
      expect(await names(folder)).toEqual(['home.2026-11-23T130000Z', 'home.2026-11-23T140000Z', 'home.2026-11-23T150000Z'])
    } finally {
      ok(await held.release())
    }
    // once it is over, the snapshot is no one's to keep
    const [after] = ok(await prune(mine, { now: at('2026-11-23T15:30:00Z') }))
    expect(after?.deleted).toEqual(['home.2026-11-23T140000Z'])
    expect(await names(folder)).toEqual(['home.2026-11-23T130000Z', 'home.2026-11-23T150000Z'])
  })

  it('status names a source that cannot be read (gone, a typo; a snapshot folder that is a file) and --check warns; a source that is there has none', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    expect(ok(await status(job)).sourceError).toBeUndefined()
    const typo = btrfsJob({ source: join(fs.mountPoint, 'hom'), targets: [targetA], state: join(fs.mountPoint, 'state-typo') })
    const told = ok(await status(typo))
    expect(told.sourceError).toMatchObject({ code: 'SOURCE_UNAVAILABLE', message: expect.stringContaining('hom does not exist') })
    expect(healthOf(told).reasons).toContain(`the source cannot be read: the source ${join(fs.mountPoint, 'hom')} does not exist (the next run fails on it)`)
    // the rsync driver does not list its source, and is told all the same
    const rsyncTypo = rsyncJob({ source: join(fs.mountPoint, 'hom'), targets: [join(fs.mountPoint, 'rsync-backups')], state: join(fs.mountPoint, 'state-rsync') })
    expect(ok(await status(rsyncTypo)).sourceError?.code).toBe('SOURCE_UNAVAILABLE')
    await writeFile(join(fs.mountPoint, 'a-file'), 'x')
    const filed = ok(await status(btrfsJob({ source, targets: [targetA], state, driver: { snapshotFolder: join(fs.mountPoint, 'a-file') } })))
    expect(filed.sourceError).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining('is not a directory') })
  })

  it('restores a backup as a new read-only snapshot, and a writable one to swap in; never over an existing one', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const into = localTransport(join(fs.mountPoint, 'restored'))
    const r = ok(await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: into, writable: true }))
    expect(r.snapshot).toBe('home.2026-11-23T100000Z')
    const restored = join(fs.mountPoint, 'restored/home.2026-11-23T100000Z')
    expect(show(restored).readOnly).toBe(true)
    const writable = show(`${restored}.writable`)
    expect(writable.readOnly).toBe(false)
    expect(writable.receivedUuid).toBeUndefined()
    expect(await content(`${restored}.writable`)).toEqual(await content(source))
    const again = await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: into })
    expect(again.isErr() && again.error.code).toBe('ALREADY_EXISTS')
    // a restore asked for its progress tells it against the stream's size, btrfs send --no-data's
    const slow = { ...job, driver: btrfsDriver({ rateLimit: 250_000 }) }
    const seen: TransferProgress[] = []
    ok(await restore(slow, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(join(fs.mountPoint, 'progress')), onProgress: (p) => seen.push(p) }))
    const estimated = seen.filter((p) => p.expectedBytes !== undefined)
    expect(estimated.length).toBeGreaterThan(0)
    const streamBytes = Number(execFileSync('sh', ['-c', `btrfs send -q ${join(targetA, 'home.2026-11-23T100000Z')} | wc -c`], { encoding: 'utf8' }))
    for (const p of estimated) {
      expect(Math.abs((p.expectedBytes ?? 0) - streamBytes) / streamBytes).toBeLessThan(0.02)
      expect(p.percent).toBeLessThan(100)
    }
    // a destination several levels down is made on btrfs
    ok(await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(join(fs.mountPoint, 'new/a/b')) }))
    expect(show(join(fs.mountPoint, 'new/a/b/home.2026-11-23T100000Z')).readOnly).toBe(true)
    // a name that is not there: the hint names what is
    const unknown = await restore(job, { from: job.targets[0]!, snapshot: 'home.2020-01-01T000000Z', to: into })
    expect(unknown.isErr() && unknown.error).toMatchObject({ code: 'SNAPSHOT_NOT_FOUND', hint: expect.stringContaining('the newest is home.2026-11-23T100000Z') })
  })

  it('a source swapped for a restored backup (restore --writable, the .writable moved into place) sends incrementally against the restored one, through a subvol= mount and with the job\'s state lost too', async () => {
    // the source lives in the subvolume pool, mounted on its own (subvol=pool), as a root filesystem's @home is
    btrfs('subvolume', 'create', join(fs.mountPoint, 'pool'))
    btrfs('filesystem', 'sync', fs.mountPoint) // a subvol= mount finds only what is committed
    const pool = join(fs.mountPoint, '..', 'pool-mount')
    await mkdir(pool)
    execFileSync('mount', ['-o', 'loop,subvol=pool', execFileSync('findmnt', ['-n', '-o', 'SOURCE', fs.mountPoint], { encoding: 'utf8' }).trim(), pool])
    try {
      const home = join(pool, 'home')
      btrfs('subvolume', 'create', home)
      await writeTree(home, { 'a.txt': 'alpha\n', 'big.bin': randomBytes(300_000) })
      const job = btrfsJob({ source: home, targets: [targetA], state, retention: { target: { keepLast: 2 } } })
      ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
      await writeFile(join(home, 'a.txt'), 'changed\n')
      ok(await backup(job, { now: at('2026-11-23T11:00:00Z') }))
      // the source is lost with its snapshots and the job's state; the newest backup is restored beside it and swapped in
      for (const s of await names(join(home, '.snapshots'))) btrfs('subvolume', 'delete', join(home, '.snapshots', s))
      btrfs('subvolume', 'delete', home)
      await rm(state, { recursive: true })
      const restored = join(pool, 'home.2026-11-23T110000Z')
      ok(await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(pool), writable: true }))
      await rename(`${restored}.writable`, home)
      // its backups are the job's again (a copy of the one it was made from among them)
      expect(ok(await status(job)).targets[0]).toMatchObject({ backups: 2, missing: [] })
      await writeFile(join(home, 'a.txt'), 'after the restore\n')
      const targetB = join(fs.mountPoint, 'backup-b')
      const next = ok(await backup({ ...job, targets: [...job.targets, localTransport(targetB)] }, { now: at('2026-11-24T10:00:00Z') }))
      expect(next.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T110000Z', origin: restored, pruned: ['home.2026-11-23T100000Z'] })
      expect(next.targets[0]?.bytes).toBeLessThan(100_000) // the 300 kB file was not sent again
      expect(show(join(targetA, 'home.2026-11-24T100000Z')).parentUuid).toBe(show(join(targetA, 'home.2026-11-23T110000Z')).uuid)
      expect(await content(join(targetA, 'home.2026-11-24T100000Z'))).toEqual(await content(home))
      // a target that holds no copy of it gets a full send; the restored subvolume is the user's, never deleted
      expect(next.targets[1]).toMatchObject({ ok: true, mode: 'full' })
      expect(next.targets[1]?.origin).toBeUndefined()
      expect(show(restored).readOnly).toBe(true)
      // from then on, incremental on the source's own snapshot
      const after = ok(await backup(job, { now: at('2026-11-24T11:00:00Z') }))
      expect(after.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-24T100000Z' })
      expect(after.targets[0]?.origin).toBeUndefined()
    } finally {
      execFileSync('umount', [pool])
    }
  }, 60_000)

  it('refuses a restore destination that is not on btrfs, or under a file, and makes nothing there', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    ok(await backup(job, { now: at('2026-11-23T10:00:00Z') }))
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    extra.push(ext4)
    const before = await readdir(ext4.mountPoint)
    for (const dryRun of [true, false]) {
      const r = await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(join(ext4.mountPoint, 'restored/deeper')), dryRun })
      expect(r.isErr() && r.error).toMatchObject({ code: 'TARGET_NOT_BTRFS', message: expect.stringMatching(/restore destination .* is not on a btrfs filesystem \(it is ext2\/ext3\)/), hint: expect.stringMatching(/--path/) })
    }
    expect(await readdir(ext4.mountPoint)).toEqual(before)
    await writeFile(join(fs.mountPoint, 'a-file'), 'x')
    for (const to of ['a-file', 'a-file/below']) {
      const r = await restore(job, { from: job.targets[0]!, snapshot: 'latest', to: localTransport(join(fs.mountPoint, to)) })
      expect(r.isErr() && r.error, to).toMatchObject({ code: 'TARGET_UNAVAILABLE', message: expect.stringMatching(/a-file.* is not a directory/) })
    }
  })

  it('lists a folder with one btrfs subvolume list of the read-only subvolumes, not a show per snapshot, through a subvol= mount; what it cannot settle is shown', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    for (const hour of ['10', '11', '12']) ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    // beside the backups: an unfinished receive (writable, no received uuid) and a plain directory with a backup's name
    btrfs('subvolume', 'create', join(targetA, 'home.2026-11-23T130000Z'))
    await mkdir(join(targetA, 'home.2026-11-23T140000Z'))
    // the same filesystem mounted once more at its subvolume vol, as subvol= does
    btrfs('subvolume', 'create', join(fs.mountPoint, 'vol'))
    for (const name of ['home.2026-11-23T150000Z', 'home.2026-11-23T160000Z']) btrfs('subvolume', 'snapshot', '-r', join(targetA, 'home.2026-11-23T100000Z'), join(fs.mountPoint, 'vol', name))
    const again = join(fs.mountPoint, '..', 'again')
    await mkdir(again)
    execFileSync('mount', ['-o', `loop,subvol=vol`, execFileSync('findmnt', ['-n', '-o', 'SOURCE', fs.mountPoint], { encoding: 'utf8' }).trim(), again])
    try {
      for (const [dir, expected] of [[targetA, ['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z', 'home.2026-11-23T130000Z']], [again, ['home.2026-11-23T150000Z', 'home.2026-11-23T160000Z']]] as const) {
        const shows: string[] = []
        const lists: string[][] = []
        const plain = localTransport(dir)
        const watched = { ...plain, exec: (argv: readonly string[], o?: Parameters<typeof plain.exec>[1]) => {
          if (argv[1] === 'subvolume' && argv[2] === 'show') shows.push(argv[3] ?? '')
          if (argv[1] === 'subvolume' && argv[2] === 'list') lists.push(argv.slice(3))
          return plain.exec(argv, o)
        } }
        const listed = ok(await job.driver.listSnapshots({ at: watched, side: 'target', signal: undefined }))
        expect(listed.map((s) => s.name)).toEqual(expected)
        for (const snapshot of listed) {
          // the same identity as root's own btrfs subvolume show says
          const s = show(join(dir, snapshot.name))
          expect(snapshot.identity).toEqual({ uuid: s.uuid, readOnly: s.readOnly, ...(s.receivedUuid === undefined ? {} : { receivedUuid: s.receivedUuid }), ...(s.parentUuid === undefined ? {} : { parentUuid: s.parentUuid }) })
          expect(snapshot.complete).toBe(s.readOnly && s.receivedUuid !== undefined)
        }
        // only the unfinished receive (writable) and the plain directory were left to show: they are in no list
        expect(shows.sort()).toEqual(dir === targetA ? [join(targetA, 'home.2026-11-23T130000Z'), join(targetA, 'home.2026-11-23T140000Z')] : [])
        expect(lists).toEqual([['-o', '-r', '-u', '-q', '-R', dir]])
      }
    } finally {
      execFileSync('umount', [again])
    }
  })

  it('a run here asks btrfs each thing once: one show of the source, one list of each folder and two of the source\'s nested subvolumes (what the snapshot leaves out), no stat -f (statfs says btrfs)', async () => {
    const job = btrfsJob({ source, targets: [targetA], state })
    for (const hour of ['10', '11']) ok(await backup(job, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    const asked: string[] = []
    const watch = (t: Transport): Transport => ({ ...t, exec: (argv, o) => {
      asked.push(argv.join(' '))
      return t.exec(argv, o)
    } })
    const third = ok(await backup({ ...job, source: watch(job.source), targets: job.targets.map(watch) }, { now: at('2026-11-23T12:00:00Z') }))
    expect(third.targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T110000Z' })
    expect(asked.filter((c) => c === `btrfs subvolume show ${source}`)).toHaveLength(1)
    expect(asked.filter((c) => c.startsWith('btrfs subvolume list')).sort()).toEqual([
      `btrfs subvolume list -o -r -u -q -R ${join(source, '.snapshots')}`, `btrfs subvolume list -o -r -u -q -R ${targetA}`,
      // all of them with the generations they were made at, and the read-only ones: no show of the two snapshots is needed
      `btrfs subvolume list -o -c -u -q -R ${source}`, `btrfs subvolume list -o -r -u -q -R ${source}`,
    ].sort())
    // the new snapshot's, once, for its uuid
    expect(asked.filter((c) => c.startsWith(`btrfs subvolume show ${join(source, '.snapshots')}`))).toEqual([`btrfs subvolume show ${join(source, '.snapshots/home.2026-11-23T120000Z')}`])
    expect(asked.filter((c) => c.startsWith('stat '))).toEqual([])
  })

  it('probes with errors that name the fix: a plain directory as source, a target not on btrfs', async () => {
    const plain = join(fs.mountPoint, 'plain')
    await mkdir(plain)
    const r = await backup(btrfsJob({ source: plain, targets: [targetA], state }))
    expect(r.isErr() && r.error.code).toBe('SOURCE_NOT_SUBVOLUME')
    expect(r.isErr() && r.error.hint).toMatch(/btrfs subvolume create/)
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    extra.push(ext4)
    const r2 = ok(await backup(btrfsJob({ source, targets: [join(ext4.mountPoint, 'backups')], state }), { now: at('2026-11-23T10:00:00Z') }))
    expect(r2.targets[0]?.error?.code).toBe('TARGET_NOT_BTRFS')
  })

  it('a snapshot folder off the source\'s filesystem is refused (INVALID_OPTIONS) and no folder of it is left behind; one the user made is kept', async () => {
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    const other = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    extra.push(ext4, other)
    await mkdir(join(ext4.mountPoint, 'made-by-user'))
    await mkdir(join(other.mountPoint, 'made-by-user'))
    await writeFile(join(fs.mountPoint, 'a-file'), 'x')
    const cases = [
      [join(ext4.mountPoint, 'snaps/deeper'), /would not be on the source's btrfs filesystem .* but on ext2\/ext3/],
      [join(ext4.mountPoint, 'made-by-user'), /is not on the source's btrfs filesystem/],
      [join(other.mountPoint, 'snaps/deeper'), /is not on the source's btrfs filesystem/],
      [join(other.mountPoint, 'made-by-user'), /is not on the source's btrfs filesystem/],
      [join(fs.mountPoint, 'a-file'), /a-file is not a directory/],
      [join(fs.mountPoint, 'a-file/snaps'), /is under .*a-file, which is not a directory/],
    ] as const
    for (const [folder, message] of cases) {
      const r = await backup(btrfsJob({ source, targets: [targetA], state, driver: { snapshotFolder: folder } }), { now: at('2026-11-23T10:00:00Z') })
      expect(r.isErr() && r.error, folder).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringMatching(message) })
    }
    // a dry run says so too, before any snapshot is planned
    for (const [folder, message] of [cases[0], cases[5]]) {
      const r = await backup(btrfsJob({ source, targets: [targetA], state, driver: { snapshotFolder: folder } }), { now: at('2026-11-23T10:00:00Z'), dryRun: true })
      expect(r.isErr() && r.error, folder).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringMatching(message) })
    }
    expect(await readdir(ext4.mountPoint)).toEqual(['lost+found', 'made-by-user'])
    expect(await readdir(other.mountPoint)).toEqual(['made-by-user'])
    expect(existsSync(targetA) ? await names(targetA) : []).toEqual([])
    // a new folder on the source's filesystem, outside the source, is made
    ok(await backup(btrfsJob({ source, targets: [targetA], state, driver: { snapshotFolder: join(fs.mountPoint, 'snaps/home') } }), { now: at('2026-11-23T10:00:00Z') }))
    expect(await readdir(join(fs.mountPoint, 'snaps/home'))).toEqual(['home.2026-11-23T100000Z'])
  })

  it('refuses the source itself or its snapshot folder as a target, however spelled, and receives nothing there', async () => {
    const folder = join(source, '.snapshots')
    for (const target of [source, `${source}/`, join(source, 'alice/..'), folder, `${folder}/`]) {
      const r = ok(await backup(btrfsJob({ source, targets: [target], state }), { now: at('2026-11-23T10:00:00Z') }))
      expect(r.targets[0]?.error?.code, target).toBe('INVALID_OPTIONS')
      expect(r.targets[0]?.error?.message, target).toMatch(target.startsWith(folder) ? /is the snapshot folder/ : /is the source subvolume itself/)
    }
    // nothing received: the source holds what it did, the folder only the snapshots taken
    expect((await readdir(source)).sort()).toEqual(['.snapshots', 'alice', 'bob'])
    const snapshots = await readdir(folder)
    expect(snapshots.length).toBe(5)
    for (const name of snapshots) expect(show(join(folder, name)).receivedUuid, name).toBeUndefined()
    // a directory inside the source is a target like any other (received subvolumes are left out of the snapshots)
    expect(ok(await backup(btrfsJob({ source, targets: [join(source, 'backups')], state }), { now: at('2026-11-23T11:00:00Z') })).targets[0]).toMatchObject({ ok: true })
  })
})
