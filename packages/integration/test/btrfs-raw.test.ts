import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { backup, clean, healthOf, list, prune, readJournal, restore, status, verify, type Job } from '@bb/core'
import type { RawInfo, RawTargetOptions } from '@bb/drivers/btrfs'
import { makeTempDir, mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { at, btrfs, btrfsJob, content, exists, finished, gpgHome, ok, show, spawnTs, waitFor, withGnupgHome } from './helpers.js'

const files = async (dir: string): Promise<string[]> => (await readdir(dir)).sort()
const info = async (path: string): Promise<RawInfo> => JSON.parse(await readFile(`${path}.info`, 'utf8')) as RawInfo

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'zstd', 'sha256sum', 'gpg', 'gpgconf'], { root: true }))('btrfs raw targets: send streams kept as files', () => {
  let fs: LoopFilesystem
  let outside: TempDir
  let source: string
  let raw: string
  let state: string
  const job = (options: Omit<RawTargetOptions, 'targets'> = {}, retention?: Job['retention']): Job =>
    btrfsJob({ source, targets: [raw], state, driver: { raw: { targets: [raw], ...options } }, ...(retention === undefined ? {} : { retention }) })
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    // the streams go to a filesystem that is not btrfs: a raw target needs none
    outside = await makeTempDir('raw')
    source = join(fs.mountPoint, 'home')
    raw = join(outside.path, 'streams')
    state = join(fs.mountPoint, 'state')
    btrfs('subvolume', 'create', source)
    await writeTree(source, { 'alice/a.txt': 'alpha\n', 'alice/deep/b.bin': randomBytes(300_000), 'bob/c.txt': 'charlie\n' })
  })
  afterEach(async () => {
    await outside.cleanup()
    await fs.cleanup()
  })

  it('refuses a raw target in the source subvolume (each stream would be in the next snapshot), and takes one that is a subvolume of its own there', async () => {
    const inside = join(source, 'streams')
    const refused = ok(await backup(btrfsJob({ source, targets: [inside], state, driver: { raw: { targets: [inside] } } }), { now: at('2026-11-23T10:00:00Z') }))
    expect(refused.targets[0]).toMatchObject({ ok: false, error: { code: 'INVALID_OPTIONS', message: expect.stringContaining('in the source subvolume') } })
    // refused before its directory was made; a dry run makes none either
    await expect(stat(inside)).rejects.toThrow()
    const fresh = join(outside.path, 'fresh-streams')
    const planned = ok(await backup(btrfsJob({ source, targets: [fresh], state, driver: { raw: { targets: [fresh] } } }), { dryRun: true, now: at('2026-11-23T10:30:00Z') }))
    expect(planned.targets[0]).toMatchObject({ ok: true, mode: 'full' })
    await expect(stat(fresh)).rejects.toThrow()

    btrfs('subvolume', 'create', inside)
    const j = btrfsJob({ source, targets: [inside], state, driver: { raw: { targets: [inside] } } })
    ok(await backup(j, { now: at('2026-11-23T11:00:00Z') }))
    await writeFile(join(source, 'alice/a.txt'), 'alpha changed\n')
    const second = ok(await backup(j, { now: at('2026-11-23T12:00:00Z') }))
    expect(second.targets[0]).toMatchObject({ ok: true, mode: 'incremental' })
    // the snapshot left the streams' subvolume out: the second stream is small
    expect(second.targets[0]?.bytes).toBeLessThan(100_000)
    expect(await readdir(join(source, '.snapshots/home.2026-11-23T120000Z/streams'))).toEqual([])
  })

  it('writes a full, then incremental zstd streams with sidecars (mode 0600, sha256), on a filesystem that is not btrfs; restores the newest through its chain', async () => {
    const j = job({ compress: 'zstd' })
    const first = ok(await backup(j, { now: at('2026-11-23T10:00:00Z') }))
    expect(first.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T100000Z', mode: 'full' })
    await writeFile(join(source, 'alice/a.txt'), 'alpha changed\n')
    const second = ok(await backup(j, { now: at('2026-11-23T11:00:00Z') }))
    expect(second.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T110000Z', mode: 'incremental', parent: 'home.2026-11-23T100000Z' })
    expect(second.targets[0]?.bytes).toBeLessThan(100_000) // the 300 kB file was not sent again
    await rm(join(source, 'bob'), { recursive: true })
    ok(await backup(j, { now: at('2026-11-23T12:00:00Z') }))

    expect(await files(raw)).toEqual([
      'home.2026-11-23T100000Z.btrfs.zst', 'home.2026-11-23T100000Z.btrfs.zst.info',
      'home.2026-11-23T110000Z.btrfs.zst', 'home.2026-11-23T110000Z.btrfs.zst.info',
      'home.2026-11-23T120000Z.btrfs.zst', 'home.2026-11-23T120000Z.btrfs.zst.info',
    ])
    const full = join(raw, 'home.2026-11-23T100000Z.btrfs.zst')
    const third = join(raw, 'home.2026-11-23T120000Z.btrfs.zst')
    expect((await stat(full)).mode & 0o777).toBe(0o600)
    expect((await stat(raw)).mode & 0o777).toBe(0o700)
    const fullInfo = await info(full)
    expect(fullInfo).toMatchObject({ format: 'bbackup-raw/1', snapshot: 'home.2026-11-23T100000Z', compress: 'zstd', chain: 0, uuid: show(join(source, '.snapshots/home.2026-11-23T100000Z')).uuid })
    expect(fullInfo.parent).toBeUndefined()
    expect(fullInfo.sha256).toBe(execFileSync('sha256sum', [full], { encoding: 'utf8' }).slice(0, 64))
    expect(fullInfo.size).toBe((await stat(full)).size)
    expect(await info(third)).toMatchObject({ parent: 'home.2026-11-23T110000Z', parentUuid: show(join(source, '.snapshots/home.2026-11-23T110000Z')).uuid, chain: 2 })
    // the stream itself says what it is
    const dump = execFileSync('sh', ['-c', `zstd -dcq '${third}' | btrfs receive --dump | head -1`], { encoding: 'utf8' })
    expect(dump).toMatch(new RegExp(`^snapshot\\s+\\./home\\.2026-11-23T120000Z\\s+uuid=${show(join(source, '.snapshots/home.2026-11-23T120000Z')).uuid}`))

    const listed = ok(await list(j))
    expect(listed[0]?.snapshots.map((s) => [s.name, s.complete])).toEqual([
      ['home.2026-11-23T100000Z', true], ['home.2026-11-23T110000Z', true], ['home.2026-11-23T120000Z', true],
    ])

    const into = join(fs.mountPoint, 'restored')
    const restored = ok(await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into), writable: true }))
    expect(restored.snapshot).toBe('home.2026-11-23T120000Z')
    // the chain was received full first; only the backup (and its writable snapshot) is left
    expect(await files(into)).toEqual(['home.2026-11-23T120000Z', 'home.2026-11-23T120000Z.writable'])
    const back = show(join(into, 'home.2026-11-23T120000Z'))
    expect(back.readOnly).toBe(true)
    expect(back.receivedUuid).toBe(show(join(source, '.snapshots/home.2026-11-23T120000Z')).uuid)
    expect(await content(join(into, 'home.2026-11-23T120000Z'))).toEqual(await content(join(source, '.snapshots/home.2026-11-23T120000Z')))
    expect(show(join(into, 'home.2026-11-23T120000Z.writable')).readOnly).toBe(false)
    // restore never overwrites
    const again = await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into) })
    expect(again.isErr() && again.error.code).toBe('ALREADY_EXISTS')
  }, 90_000)

  it('starts a new chain after fullEvery incrementals; retention keeps every stream a kept one needs, and deletes whole old chains', async () => {
    const j = job({ fullEvery: 2 }, { target: { keepLast: 1 } })
    const modes: string[] = []
    for (const hour of ['10', '11', '12', '13', '14']) {
      await writeFile(join(source, 'alice/a.txt'), `at ${hour}\n`)
      const r = ok(await backup(j, { now: at(`2026-11-23T${hour}:00:00Z`), prune: false }))
      modes.push(r.targets[0]?.mode ?? 'failed')
    }
    expect(modes).toEqual(['full', 'incremental', 'incremental', 'full', 'incremental'])
    expect((await info(join(raw, 'home.2026-11-23T130000Z.btrfs'))).chain).toBe(0)

    const pruned = ok(await prune(j))
    const target = pruned.find((p) => p.at === raw)
    expect(target?.deleted).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z'])
    expect(target?.decisions.find((d) => d.name === 'home.2026-11-23T130000Z')?.reasons).toContain('protected: home.2026-11-23T140000Z needs it (incremental against it)')
    expect(await files(raw)).toEqual([
      'home.2026-11-23T130000Z.btrfs', 'home.2026-11-23T130000Z.btrfs.info', 'home.2026-11-23T140000Z.btrfs', 'home.2026-11-23T140000Z.btrfs.info',
    ])
    // what is left still restores
    const into = join(fs.mountPoint, 'restored')
    ok(await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into) }))
    expect(await readFile(join(into, 'home.2026-11-23T140000Z/alice/a.txt'), 'utf8')).toBe('at 14\n')
  }, 90_000)

  it('several snapshots the raw target lacks are sent in one run, oldest first, each on the one before, and fullEvery counts them', async () => {
    ok(await backup(job(), { now: at('2026-11-23T10:00:00Z') }))
    for (const hour of ['11', '12']) {
      await writeFile(join(source, 'alice/a.txt'), `at ${hour}\n`)
      ok(await backup(job(), { now: at(`2026-11-23T${hour}:00:00Z`), transfer: false }))
    }
    const r = ok(await backup(job({ fullEvery: 1 }), { now: at('2026-11-23T13:00:00Z') }))
    expect(r.targets[0]?.sent.map((s) => [s.snapshot, s.mode, s.parent])).toEqual([
      ['home.2026-11-23T110000Z', 'incremental', 'home.2026-11-23T100000Z'],
      ['home.2026-11-23T120000Z', 'full', undefined],
      ['home.2026-11-23T130000Z', 'incremental', 'home.2026-11-23T120000Z'],
    ])
    expect((await info(join(raw, 'home.2026-11-23T110000Z.btrfs'))).chain).toBe(1)
    expect((await info(join(raw, 'home.2026-11-23T130000Z.btrfs'))).chain).toBe(1)
  }, 60_000)

  it('verify finds a damaged stream (sha256 and the stream\'s own checksums) and a broken chain', async () => {
    const j = job()
    ok(await backup(j, { now: at('2026-11-23T10:00:00Z') }))
    await writeFile(join(source, 'alice/a.txt'), 'changed\n')
    ok(await backup(j, { now: at('2026-11-23T11:00:00Z') }))
    const good = ok(await verify(j, { at: localTransport(raw) }))
    expect(good).toMatchObject({ snapshot: 'home.2026-11-23T110000Z', differenceCount: 0 })

    const full = join(raw, 'home.2026-11-23T100000Z.btrfs')
    execFileSync('dd', ['of=' + full, 'bs=1', 'seek=300', 'count=1', 'conv=notrunc', 'status=none'], { input: Buffer.from('X') })
    const bad = ok(await verify(j, { at: localTransport(raw), snapshot: 'home.2026-11-23T100000Z' }))
    expect(bad.differences.join('\n')).toMatch(/sha256 [0-9a-f]{64}, the sidecar says/)
    expect(bad.differences.join('\n')).toMatch(/does not read back whole.*crc32 mismatch/)

    await rm(full)
    const broken = ok(await verify(j, { at: localTransport(raw) }))
    expect(broken.differences.join('\n')).toMatch(/incremental on home\.2026-11-23T100000Z, whose stream file is missing/)
    const r = await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(join(fs.mountPoint, 'restored')) })
    expect(r.isErr() && r.error.code).toBe('NOT_FOUND')
  }, 60_000)

  it('a chain broken by a lost stream file: what cannot be restored is listed and reported, the next run starts a new chain in full, and restore names the newest whole backup', async () => {
    const j = job()
    for (const [i, hour] of ['10', '11', '12'].entries()) {
      await writeFile(join(source, 'alice/a.txt'), `version ${i}\n`)
      ok(await backup(j, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    }
    await rm(join(raw, 'home.2026-11-23T110000Z.btrfs')) // lost; its sidecar stays
    const why = /its chain is broken at home\.2026-11-23T110000Z, whose stream file is missing/
    const listed = ok(await list(j, { only: 'target' }))
    expect(listed[0]?.snapshots.map((s) => [s.name, s.broken !== undefined])).toEqual([['home.2026-11-23T100000Z', false], ['home.2026-11-23T120000Z', true]])
    const before = ok(await status(j, { now: at('2026-11-23T12:30:00Z') }))
    expect(before.targets[0]?.broken).toEqual([{ name: 'home.2026-11-23T120000Z', why: expect.stringMatching(why) as string }])
    expect(healthOf(before)).toMatchObject({ verdict: 'warning', reasons: [expect.stringMatching(/the newest backup, home\.2026-11-23T120000Z, cannot be restored: its chain is broken/)] })
    const into = join(fs.mountPoint, 'restored')
    const refused = await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into) })
    expect(refused.isErr() && refused.error.hint).toMatch(/restore a backup whose chain is whole \(the newest is home\.2026-11-23T100000Z\)/)

    // an incremental on the broken one could never be restored either: a new chain
    await writeFile(join(source, 'alice/a.txt'), 'version 3\n')
    const next = ok(await backup(j, { now: at('2026-11-23T13:00:00Z') }))
    expect(next.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T130000Z', mode: 'full', fullBecause: expect.stringMatching(/home\.2026-11-23T120000Z, cannot be restored/) as string })
    expect((await info(join(raw, 'home.2026-11-23T130000Z.btrfs'))).chain).toBe(0)
    const after = ok(await status(j, { now: at('2026-11-23T13:30:00Z') }))
    expect(after.targets[0]?.broken?.map((b) => b.name)).toEqual(['home.2026-11-23T120000Z'])
    expect(healthOf(after).reasons).toEqual([expect.stringMatching(/a backup cannot be restored \(home\.2026-11-23T120000Z\)/)])
    const restored = ok(await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into) }))
    expect(restored.snapshot).toBe('home.2026-11-23T130000Z')
    expect(await readFile(join(into, 'home.2026-11-23T130000Z/alice/a.txt'), 'utf8')).toBe('version 3\n')
  }, 90_000)

  it('the newest stream file removed by hand, its sidecar left: the next run writes it again on its parent and replaces the sidecar; a sidecar of another snapshot is never touched', async () => {
    const j = job()
    for (const [i, hour] of ['10', '11', '12'].entries()) {
      await writeFile(join(source, 'alice/a.txt'), `version ${i}\n`)
      ok(await backup(j, { now: at(`2026-11-23T${hour}:00:00Z`) }))
    }
    const lost = join(raw, 'home.2026-11-23T120000Z.btrfs')
    const was = await info(lost)
    await rm(lost)
    await writeFile(join(source, 'alice/a.txt'), 'version 3\n')
    const next = ok(await backup(j, { now: at('2026-11-23T13:00:00Z') }))
    expect(next.targets[0]).toMatchObject({
      ok: true, sent: [{ snapshot: 'home.2026-11-23T120000Z', mode: 'incremental' }, { snapshot: 'home.2026-11-23T130000Z', mode: 'incremental' }],
      warnings: [`${lost}.info was there without its stream file (removed by hand?): the stream is written again, with a new sidecar`],
    })
    const now = await info(lost)
    expect([now.uuid, now.parent, now.createdAt === was.createdAt]).toEqual([was.uuid, 'home.2026-11-23T110000Z', false])
    expect(ok(await verify(j, { at: localTransport(raw), snapshot: 'home.2026-11-23T120000Z' }))).toMatchObject({ snapshot: 'home.2026-11-23T120000Z', differenceCount: 0 })
    const into = join(fs.mountPoint, 'restored')
    ok(await restore(j, { from: localTransport(raw), snapshot: 'home.2026-11-23T120000Z', to: localTransport(into) }))
    expect(await readFile(join(into, 'home.2026-11-23T120000Z/alice/a.txt'), 'utf8')).toBe('version 2\n')

    // the sidecar in the way says it is of another snapshot (another job, the same name): refused, left as it was
    const newest = join(raw, 'home.2026-11-23T130000Z.btrfs')
    await rm(newest)
    const foreign = `${JSON.stringify({ ...(await info(newest)), uuid: '00000000-0000-0000-0000-000000000000' }, null, 2)}\n`
    await writeFile(`${newest}.info`, foreign)
    const refused = ok(await backup(j, { now: at('2026-11-23T14:00:00Z') }))
    expect(refused.targets[0]).toMatchObject({ ok: false, error: { code: 'ALREADY_EXISTS', message: `${newest}.info already exists at the raw target and is not a backup this run can use` } })
    expect(await readFile(`${newest}.info`, 'utf8')).toBe(foreign)
  }, 90_000)

  it('encrypts the stream files with gpg on this host: ciphertext at the target, restored and verified with the secret key; a host with the public key only backs up, verifies what it can and says why it cannot restore', async () => {
    const keys = await gpgHome('gnupg', 'bbackup test <backup@example.org>')
    const publicOnly = await gpgHome('gnupg-public')
    const locked = await gpgHome('gnupg-locked', 'locked <locked@example.org>', 'secret')
    try {
      publicOnly.gpg(['--import'], keys.gpg(['--export', 'backup@example.org']))
      const j = job({ compress: 'zstd', encrypt: { method: 'gpg', recipients: ['backup@example.org'] } })
      const into = join(fs.mountPoint, 'restored')
      await withGnupgHome(keys, async () => {
        expect(ok(await backup(j, { now: at('2026-11-23T10:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'full' })
        await writeFile(join(source, 'alice/a.txt'), 'alpha changed\n')
        expect(ok(await backup(j, { now: at('2026-11-23T11:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T100000Z' })
      })
      expect(await files(raw)).toEqual([
        'home.2026-11-23T100000Z.btrfs.zst.gpg', 'home.2026-11-23T100000Z.btrfs.zst.gpg.info',
        'home.2026-11-23T110000Z.btrfs.zst.gpg', 'home.2026-11-23T110000Z.btrfs.zst.gpg.info',
      ])
      const second = join(raw, 'home.2026-11-23T110000Z.btrfs.zst.gpg')
      expect(await info(second)).toMatchObject({ compress: 'zstd', encrypt: 'gpg', recipients: ['backup@example.org'], parent: 'home.2026-11-23T100000Z', chain: 1 })
      // the file is an OpenPGP message (its first byte a packet tag), neither a stream nor zstd; decrypted by hand it is the stream
      const bytes = await readFile(second)
      expect(bytes[0]! & 0x80).toBe(0x80)
      expect(bytes.includes(Buffer.from('btrfs-stream'))).toBe(false)
      expect(bytes.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe(false)
      const dump = execFileSync('sh', ['-c', `zstd -dcq | btrfs receive --dump | head -1`], { input: keys.gpg(['-d', second]), encoding: 'utf8' })
      expect(dump).toMatch(new RegExp(`^snapshot\\s+\\./home\\.2026-11-23T110000Z\\s+uuid=${show(join(source, '.snapshots/home.2026-11-23T110000Z')).uuid}`))

      await withGnupgHome(keys, async () => {
        const checked = ok(await verify(j, { at: localTransport(raw) }))
        expect(checked).toMatchObject({ snapshot: 'home.2026-11-23T110000Z', differenceCount: 0 })
        expect(checked.notes?.join('\n')).toMatch(/the stream's own checksums \(btrfs receive --dump\)/)
        ok(await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(into) }))
      })
      expect(await content(join(into, 'home.2026-11-23T110000Z'))).toEqual(await content(join(source, '.snapshots/home.2026-11-23T110000Z')))

      // the host that backs up needs the public key only
      const elsewhere = join(fs.mountPoint, 'restored-elsewhere')
      await withGnupgHome(publicOnly, async () => {
        await writeFile(join(source, 'bob/c.txt'), 'charlie changed\n')
        expect(ok(await backup(j, { now: at('2026-11-23T12:00:00Z') })).targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home.2026-11-23T110000Z' })
        const unkeyed = ok(await verify(j, { at: localTransport(raw) }))
        expect(unkeyed).toMatchObject({ snapshot: 'home.2026-11-23T120000Z', differenceCount: 0 })
        expect(unkeyed.notes?.join('\n')).toMatch(/not the stream's own checksums: gpg on this host has no secret key of backup@example\.org \(import one/)
        const refused = await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(elsewhere) })
        expect(refused.isErr() && [refused.error.code, refused.error.message]).toEqual(['INVALID_OPTIONS', expect.stringMatching(/\.btrfs\.zst\.gpg is encrypted: gpg on this host has no secret key of backup@example\.org$/)])
        expect(await files(elsewhere)).toEqual([])
        // a recipient gpg has no key for is refused before anything is written
        const stranger = await backup(job({ encrypt: { method: 'gpg', recipients: ['nobody@example.org'] } }), { now: at('2026-11-23T13:00:00Z') })
        const failed = stranger.isOk() ? stranger.value.targets[0]?.error : stranger.error
        expect(failed).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringMatching(/gpg has no public key for "nobody@example\.org" that can encrypt/) })
        expect((await files(raw)).filter((f) => f.includes('T130000Z'))).toEqual([])
      })
      // with the secret key, the chain of three restores
      await withGnupgHome(keys, async () => ok(await restore(j, { from: localTransport(raw), snapshot: 'latest', to: localTransport(elsewhere) })))
      expect(await readFile(join(elsewhere, 'home.2026-11-23T120000Z/bob/c.txt'), 'utf8')).toBe('charlie changed\n')

      // a secret key with a passphrase: gpg asks nothing, so restore says it is locked, and works once gpg-agent holds it unlocked
      const lockedRaw = join(outside.path, 'locked')
      const lockedJob = btrfsJob({ source, targets: [lockedRaw], state, driver: { raw: { targets: [lockedRaw], encrypt: { method: 'gpg', recipients: ['locked@example.org'] } } } })
      const unlockedAfter = join(fs.mountPoint, 'restored-locked')
      await withGnupgHome(locked, async () => {
        ok(await backup(lockedJob, { now: at('2026-11-23T14:00:00Z') }))
        const still = await restore(lockedJob, { from: localTransport(lockedRaw), snapshot: 'latest', to: localTransport(unlockedAfter) })
        expect(still.isErr() && [still.error.message, still.error.hint]).toEqual([
          expect.stringMatching(/is encrypted: the secret key of locked@example\.org is here but locked, and gpg runs without prompts$/), expect.stringMatching(/^unlock the key in gpg-agent first/),
        ])
        const [file] = (await files(lockedRaw)).filter((f) => f.endsWith('.gpg'))
        locked.gpg(['--pinentry-mode', 'loopback', '--passphrase', 'secret', '-d', join(lockedRaw, file!)])
        ok(await restore(lockedJob, { from: localTransport(lockedRaw), snapshot: 'latest', to: localTransport(unlockedAfter) }))
      })
      expect(await readFile(join(unlockedAfter, 'home.2026-11-23T140000Z/bob/c.txt'), 'utf8')).toBe('charlie changed\n')
    } finally {
      for (const home of [keys, publicOnly, locked]) await home.cleanup()
    }
  }, 90_000)

  it('after kill -9 mid-write the .part file is removed and the stream written again; a file it did not write is never touched', async () => {
    ok(await backup(job(), { now: at('2026-11-23T10:00:00Z') }))
    await writeFile(join(source, 'big.bin'), randomBytes(160 * 1024 * 1024))
    const child = spawnTs('fixtures/run-btrfs-backup.ts', [source, raw, state, '2026-11-23T11:00:00Z', 'raw'], { detached: true })
    const done = finished(child)
    const part = join(raw, 'home.2026-11-23T110000Z.btrfs.part')
    await waitFor(async () => ((await stat(part).catch(() => undefined))?.size ?? 0) > 1024 * 1024, 30_000)
    process.kill(-child.pid!, 'SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    // the killed btrfs send ends once its ioctl returns: until then the lock rightly counts it as the run's, still writing (a zombie it does not)
    await waitFor(async () => { try { execFileSync('pgrep', ['-g', String(child.pid), '-r', 'R,S,D,T,t']); return false } catch { return true } }, 10_000)
    const pending = (await readJournal(localTransport(state), join(state, 'journal.json')))._unsafeUnwrap().entries
    expect(pending.map((e) => [e.snapshot, e.partialPath])).toEqual([['home.2026-11-23T110000Z', part]])

    const again = ok(await backup(job(), { now: at('2026-11-23T11:30:00Z'), snapshot: false }))
    expect(again.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T110000Z', mode: 'incremental', recovered: [{ snapshot: 'home.2026-11-23T110000Z', action: 'removed' }] })
    expect(await exists(part)).toBe(false)
    expect(ok(await verify(job(), { at: localTransport(raw) })).differenceCount).toBe(0)

    // a stream file nobody journalled, with the name the next one would get: never touched, the new one gets another name
    const stray = join(raw, 'home.2026-11-23T120000Z.btrfs')
    await writeFile(stray, 'not ours\n')
    const beside = ok(await backup(job(), { now: at('2026-11-23T12:00:00Z') }))
    expect(beside.targets[0]).toMatchObject({ ok: true, snapshot: 'home.2026-11-23T120000Z_1', mode: 'incremental' })
    expect(await readFile(stray, 'utf8')).toBe('not ours\n')
    // keepLast 1 keeps the whole chain the newest stream needs, and does not see the stray
    const pruned = ok(await prune(job({}, { target: { keepLast: 1 } })))[0]
    expect(pruned?.deleted).toEqual([])
    expect(pruned?.decisions.map((d) => d.name)).toEqual(['home.2026-11-23T100000Z', 'home.2026-11-23T110000Z', 'home.2026-11-23T120000Z_1'])
    expect(await readFile(stray, 'utf8')).toBe('not ours\n')
    // clean (btrbk's): a .part file no transfer on record left is unfinished by its form, and removed; the stray is kept, and said why
    const leftPart = join(raw, 'home.2026-11-23T130000Z.btrfs.part')
    await writeFile(leftPart, 'cut short\n')
    expect(ok(await clean(job(), { dryRun: true }))).toEqual([{ at: raw, removed: ['home.2026-11-23T130000Z'], kept: [{ name: 'home.2026-11-23T120000Z', why: expect.stringContaining('no transfer on record left it') }] }])
    expect(await exists(leftPart)).toBe(true)
    expect(ok(await clean(job()))).toEqual([{ at: raw, removed: ['home.2026-11-23T130000Z'], kept: [{ name: 'home.2026-11-23T120000Z', why: expect.stringContaining('no transfer on record left it') }] }])
    expect(await exists(leftPart)).toBe(false)
    expect(await readFile(stray, 'utf8')).toBe('not ours\n')
  }, 90_000)
})
