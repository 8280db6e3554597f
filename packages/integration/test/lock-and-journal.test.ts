import { spawn } from 'node:child_process'
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { addJournalEntry, pinSnapshot, readJournal, readLineage, readPins, removeJournalEntry, type LockInfo } from '@bb/core'
import { makeTempDir, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { finished, ROOT, spawnTs, waitFor } from './helpers.js'

const transport = localTransport('/')
const bootId = async () => (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
const startTime = async (pid: number) => Number((await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')[19])

describe('job lock', () => {
  let tmp: TempDir
  let path: string
  beforeEach(async () => {
    tmp = await makeTempDir('lock')
    path = join(tmp.path, 'lock')
  })
  afterEach(() => tmp.cleanup())

  it('refuses a second holder with LOCK_HELD naming the first, and frees the lock on release', async () => {
    const first = (await transport.lock(path, { command: 'first' }))._unsafeUnwrap()
    const second = await transport.lock(path, { command: 'second' })
    expect(second._unsafeUnwrapErr()).toMatchObject({ code: 'LOCK_HELD', details: { path, holderPid: process.pid, holderHost: hostname() } })
    expect(second._unsafeUnwrapErr().message).toContain(`held by pid ${process.pid}`)
    await first.release()
    expect(await readdir(tmp.path)).toEqual([])
    const third = (await transport.lock(path, { command: 'third' }))._unsafeUnwrap()
    expect(third.tookOver).toBeUndefined()
    await third.release()
  })

  it('takes over the lock of a process that died, with the reason', async () => {
    const child = spawn('sleep', ['30'])
    const pid = child.pid!
    const info: LockInfo = { pid, host: hostname(), bootId: await bootId(), pidStartTime: await startTime(pid), startedAt: 'then', command: 'dead' }
    await writeFile(path, JSON.stringify(info))
    expect((await transport.lock(path, { command: 'x' }))._unsafeUnwrapErr().code).toBe('LOCK_HELD')
    child.kill('SIGKILL')
    await new Promise((r) => child.on('close', r))
    const taken = (await transport.lock(path, { command: 'x' }))._unsafeUnwrap()
    expect(taken.tookOver).toEqual({ previous: info, reason: `pid ${pid} is not running` })
    await taken.release()
  })

  it('takes over the lock of a holder that died and is not reaped yet (a zombie: a container\'s init may reap it seconds later)', async () => {
    // the first sleep's parent becomes the second sleep, which never reaps it: killed, it stays a zombie
    const parent = spawn('bash', ['-c', 'sleep 30 & echo $!; exec sleep 60'])
    try {
      const pid = await new Promise<number>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))))
      const info: LockInfo = { pid, host: hostname(), bootId: await bootId(), pidStartTime: await startTime(pid), startedAt: 'then', command: 'dead' }
      await writeFile(path, JSON.stringify(info))
      expect((await transport.lock(path, { command: 'x' }))._unsafeUnwrapErr().code).toBe('LOCK_HELD')
      process.kill(pid, 'SIGKILL')
      await waitFor(async () => (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.startsWith('Z'), 5000)
      const taken = (await transport.lock(path, { command: 'x' }))._unsafeUnwrap()
      expect(taken.tookOver).toEqual({ previous: info, reason: `pid ${pid} is not running` })
      await taken.release()
    } finally {
      parent.kill('SIGKILL')
    }
  })

  it('holds a killed holder\'s lock while a command it started still runs, and names it', async () => {
    const holder = spawnTs('fixtures/hold-lock.ts', [path])
    const done = finished(holder)
    const sleepPid = await new Promise<number>((resolve) => holder.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))))
    try {
      holder.kill('SIGKILL')
      expect((await done).signal).toBe('SIGKILL')
      const held = (await transport.lock(path, { command: 'x' }))._unsafeUnwrapErr()
      expect(held).toMatchObject({ code: 'LOCK_HELD', details: { holderPid: holder.pid } })
      expect(held.message).toContain(`pid ${holder.pid} is not running, but what it started still runs and may still write: sleep (pid ${sleepPid}); let it end, or stop it: kill ${sleepPid}`)
      expect((await transport.inspectLock(path))._unsafeUnwrap()?.verdict.stale).toBe(false)
    } finally {
      process.kill(sleepPid, 'SIGKILL')
    }
    await waitFor(async () => !(await readFile(`/proc/${sleepPid}/stat`, 'utf8').then(() => true, () => false)), 5000)
    const taken = (await transport.lock(path, { command: 'x' }))._unsafeUnwrap()
    expect(taken.tookOver?.reason).toBe(`pid ${holder.pid} is not running`)
    await taken.release()
  })

  it('takes over a lock whose pid now belongs to another process, or from an earlier boot', async () => {
    const reused: LockInfo = { pid: process.pid, host: hostname(), bootId: await bootId(), pidStartTime: 1, startedAt: 'then', command: 'old' }
    await writeFile(path, JSON.stringify(reused))
    const a = (await transport.lock(path, { command: 'x' }))._unsafeUnwrap()
    expect(a.tookOver?.reason).toMatch(/reused/)
    await a.release()
    await writeFile(path, JSON.stringify({ ...reused, bootId: 'an-earlier-boot' }))
    const b = (await transport.lock(path, { command: 'x' }))._unsafeUnwrap()
    expect(b.tookOver?.reason).toMatch(/before this host last booted/)
    await b.release()
  })

  it('never takes over another host\'s lock', async () => {
    await writeFile(path, JSON.stringify({ pid: 1, host: 'elsewhere', bootId: 'b', pidStartTime: 1, startedAt: 'then', command: 'c' }))
    expect((await transport.lock(path, { command: 'x' }))._unsafeUnwrapErr()).toMatchObject({ code: 'LOCK_HELD', details: { holderHost: 'elsewhere' } })
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ host: 'elsewhere' })
  })

  it('waits for a live holder with waitSeconds', async () => {
    const first = (await transport.lock(path, { command: 'first' }))._unsafeUnwrap()
    setTimeout(() => void first.release(), 300)
    const started = Date.now()
    const second = (await transport.lock(path, { command: 'second', waitSeconds: 10 }))._unsafeUnwrap()
    expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    await second.release()
  })

  it('lets exactly one of several processes hold it at a time (scenario 15)', async () => {
    const log = join(tmp.path, 'held.log')
    const children = Array.from({ length: 6 }, () => finished(spawnTs('fixtures/lock-race.ts', [path, log, '15'])))
    const results = await Promise.all(children)
    expect(results.map((r) => [r.code, r.stderr])).toEqual(results.map(() => [0, '']))
    const spans = (await readFile(log, 'utf8')).trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number, number]).sort((a, b) => a[1] - b[1])
    expect(spans).toHaveLength(90)
    for (let i = 1; i < spans.length; i++) expect(spans[i]![1]).toBeGreaterThanOrEqual(spans[i - 1]![2])
  })
})

describe('atomic writes and the journal (scenario 20)', () => {
  let tmp: TempDir
  beforeEach(async () => { tmp = await makeTempDir('journal') })
  afterEach(() => tmp.cleanup())

  it.each(['after-tmp-write', 'before-rename', 'after-rename-before-dirfsync'])('a crash at %s leaves the old content or the new, never a torn file', async (point) => {
    const path = join(tmp.path, 'journal.json')
    const old = JSON.stringify({ version: 1, entries: [] })
    const next = JSON.stringify({ version: 1, entries: [{ target: '/t', snapshot: 's', partialPath: '/t/s.partial', startedAt: 'now' }], pad: 'x'.repeat(100_000) })
    await writeFile(path, old)
    const child = spawn(process.execPath, ['--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/integration/test/fixtures/crash-write.ts'), path, next], {
      cwd: ROOT, env: { ...process.env, BBACKUP_TEST_CRASH_AT: point }, stdio: 'ignore',
    })
    expect((await finished(child)).signal).toBe('SIGKILL')
    const content = await readFile(path, 'utf8')
    expect(point === 'after-rename-before-dirfsync' ? content === next : content === old).toBe(true)
    expect((await readJournal(localTransport('/'), path)).isOk()).toBe(true)
  })

  it('writes a transfer down before it starts and clears it, and refuses a corrupt journal', async () => {
    const path = join(tmp.path, 'journal.json')
    const entry = { target: '/t', snapshot: 's1', parent: 's0', partialPath: '/t/s1.partial', startedAt: 'now' }
    expect((await addJournalEntry(transport, path, entry))._unsafeUnwrap().entries).toEqual([entry])
    expect((await removeJournalEntry(transport, path, entry))._unsafeUnwrap().entries).toEqual([])
    await writeFile(path, '{"version": 1, "entr')
    expect((await readJournal(transport, path))._unsafeUnwrapErr()).toMatchObject({ code: 'JOURNAL_CORRUPT', details: { path } })
    expect(await readFile(path, 'utf8')).toBe('{"version": 1, "entr')
  })

  it('the pins and the lineage: a missing file is empty, a damaged or misshapen one is refused and left as it is', async () => {
    for (const [file, read, empty] of [['pins.json', readPins, { version: 1, pins: {} }], ['lineage.json', readLineage, { version: 1, targets: {} }]] as const) {
      const path = join(tmp.path, file)
      expect((await read(transport, path))._unsafeUnwrap()).toEqual(empty)
      for (const text of ['{"version": 1, "pi', '{"version": 2, "pins": {}, "targets": {}}', '{"version": 1}', 'null']) {
        await writeFile(path, text)
        expect((await read(transport, path))._unsafeUnwrapErr()).toMatchObject({ code: 'JOURNAL_CORRUPT', message: expect.stringMatching(/is not a bbackup (pin|lineage) file$/) as string, details: { path } })
        expect(await readFile(path, 'utf8')).toBe(text)
      }
    }
    const path = join(tmp.path, 'pins.json')
    await rm(path)
    expect((await pinSnapshot(transport, path, '/t', 's1'))._unsafeUnwrap()).toEqual({ version: 1, pins: { '/t': 's1' } })
    expect((await readPins(transport, path))._unsafeUnwrap()).toEqual({ version: 1, pins: { '/t': 's1' } })
  })
})
