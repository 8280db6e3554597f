import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { addJournalEntry } from '@bb/core'
import { mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { finished, gpgHome, ROOT, runCli, spawnTs, waitFor, withGnupgHome } from './helpers.js'

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'gpg', 'gpgconf', 'swapon', 'swapoff'], { root: true }))('bbackup command line with btrfs', () => {
  let fs: LoopFilesystem
  let dir: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    dir = fs.mountPoint
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n' })
  })
  afterEach(() => fs.cleanup())

  it('detects a subvolume, names snapshots after the source, sends in full then incrementally', async () => {
    const first = await runCli(['run', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(first).toMatchObject({ code: 0, stdout: expect.stringMatching(/backup: home\.\d{4}-\d\d-\d\dT\d{6}Z full; .* sent/) })
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    expect(JSON.parse(second.stdout)).toMatchObject({ driver: 'btrfs', targets: [{ ok: true, mode: 'incremental' }] })
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(2)
    const listed = await runCli(['list', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(listed.stdout).toMatch(/\(source\): 2 snapshots[\s\S]*\(target\): 2 backups/)
    // a dry run prints the pipeline it would run, and changes nothing
    const dry = await runCli(['run', '-n', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(dry.stdout).toMatch(/\$ btrfs send -q .*-p .*\| btrfs receive /)
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(2)
    // nor does it make a new target's directory: it plans a full send into it
    const fresh = await runCli(['run', '-n', 'home', 'fresh', '--state-dir', 'state', '--keep-backups', '2'], dir)
    // a new target gets what its retention keeps (btrbk): here the two newest, the older in full
    expect(fresh).toMatchObject({ code: 0, stdout: expect.stringMatching(/fresh: 2 snapshots sent, 0 B\n {4}home\.\S+ full; 0 B\n {4}home\.\S+ incremental from home\.\S+; 0 B\n/) })
    expect(fresh.stdout).not.toContain('warning')
    expect(await readdir(dir)).not.toContain('fresh')

    // snapshots taken without a transfer: status names what the target lacks, which the next transfer sends
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-transfer', '-q'], dir)).code).toBe(0)
    const untransferred = (await readdir(join(dir, 'home/.snapshots'))).sort().slice(-2)
    const lacking = await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(lacking.stdout).toContain(`    missing: 2 source snapshots (${untransferred.join(', ')}): the next run sends them\n`)
    expect((await runCli(['transfer', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const caughtUp = JSON.parse((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout) as { targets: { missing: string[]; backups: number }[] }
    expect(caughtUp.targets[0]).toMatchObject({ missing: [], backups: 4 })
    // restore of a name that is not there names the newest that is
    const newest = (await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.')).sort().at(-1)!
    // why the newest is kept, in btrfs terms (no next run links against a received snapshot)
    const dryPrune = await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '--keep-backups', '1', '-n'], dir)
    expect(dryPrune.stdout).toMatch(new RegExp(`keep   ${newest}  .*; protected: the newest healthy backup \\(the last good copy is never deleted\\); protected: the copy of ${newest}`))
    expect(await runCli(['restore', 'backup', 'home.2020-01-01T000000Z', 'restored'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining(`hint: bbackup list shows them; the newest is ${newest}`) })
    // restored and swapped in for the source (the old one kept aside): restore says how, and the next run is incremental against the restored copy
    const swap = await runCli(['restore', 'backup', 'latest', '.', '--writable'], dir)
    expect(swap).toMatchObject({ code: 0, stdout: expect.stringContaining(`to put it in the source's place: mv ./${newest}.writable SOURCE (or btrfs subvolume snapshot ./${newest} SOURCE); keep ./${newest} until`) })
    await rename(join(dir, 'home'), join(dir, 'home.lost'))
    await rename(join(dir, `${newest}.writable`), join(dir, 'home'))
    const swapped = await runCli(['run', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(swapped).toMatchObject({ code: 0, stdout: expect.stringContaining(`incremental from ${newest}; `) })
    expect(swapped.stdout).toContain(`    incremental against ${join(dir, newest)}: the read-only subvolume the source was made from (a restored backup), outside the snapshot folder\n`)
  })

  it('follows a source and a target given as symbolic links (as btrbk and rsync do); a link to nothing names where it leads', async () => {
    await mkdir(join(dir, 'disk/backup'), { recursive: true })
    await symlink(join(dir, 'home'), join(dir, 'home-link'))
    await symlink(join(dir, 'disk/backup'), join(dir, 'backup-link'))
    const first = await runCli(['run', 'home-link', 'backup-link', '--state-dir', 'state', '--json'], dir)
    expect(JSON.parse(first.stdout)).toMatchObject({ driver: 'btrfs', targets: [{ ok: true, mode: 'full' }] })
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    expect(JSON.parse((await runCli(['run', 'home-link', 'backup-link', '--state-dir', 'state', '--json'], dir)).stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    const received = (await readdir(join(dir, 'disk/backup'))).sort()
    expect(received).toHaveLength(2)
    expect(readFileSync(join(dir, 'disk/backup', received[1]!, 'a.txt'), 'utf8')).toBe('changed\n')
    await symlink(join(dir, 'unplugged/backup'), join(dir, 'gone-link'))
    const gone = await runCli(['run', 'home', 'gone-link', '--state-dir', 'state'], dir)
    expect(gone).toMatchObject({ code: 10, stdout: expect.stringContaining(`gone-link: FAILED: the target ${join(dir, 'gone-link')} is a symbolic link to ${join(dir, 'unplugged/backup')}, which does not exist`) })
    expect(existsSync(join(dir, 'unplugged'))).toBe(false)
  })

  it('a read-only subvolume as the source (a snapshot) needs a snapshot folder elsewhere, and says so; a target in one is named read-only', async () => {
    execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'frozen')])
    const refused = await runCli(['run', 'frozen', 'backup', '--state-dir', 'state'], dir)
    expect(refused).toMatchObject({ code: 1, stderr: expect.stringContaining(`cannot create the snapshot folder ${join(dir, 'frozen/.snapshots')}: it would be in a read-only subvolume or filesystem\n  hint: give the snapshots a writable directory on the same btrfs filesystem: --snapshot-folder DIR`) as unknown })
    expect(existsSync(join(dir, 'backup')) ? await readdir(join(dir, 'backup')) : []).toEqual([])
    const elsewhere = await runCli(['run', 'frozen', 'backup', '--state-dir', 'state', '--snapshot-folder', join(dir, 'snaps'), '--json'], dir)
    expect(elsewhere.code, elsewhere.stderr).toBe(0)
    expect(JSON.parse(elsewhere.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    // rsync into a directory of a read-only subvolume: the cause, not "it does not exist"
    await writeTree(join(dir, 'plain'), { 'p.txt': 'p\n' })
    const into = await runCli(['run', 'plain', join(dir, 'frozen/backups'), '--state-dir', 'state2'], dir)
    expect(into.code).toBe(10)
    expect(into.stdout).toContain(`cannot create ${join(dir, 'frozen/backups')}: the filesystem (or btrfs subvolume) is read-only`)
  })

  it('a source with a swap file in use cannot be snapshotted (btrfs: Text file busy): the error names the file and how to move it; the way it says works', async () => {
    const swapFile = join(dir, 'home/swapfile')
    execFileSync('btrfs', ['filesystem', 'mkswapfile', '--size', '16m', swapFile])
    const active: string[] = []
    try {
      execFileSync('swapon', [swapFile])
      active.push(swapFile)
      const refused = await runCli(['run', 'home', 'backup', '--state-dir', 'state'], dir)
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain(`btrfs cannot snapshot ${join(dir, 'home')} while a swap file in it is in use (${swapFile}): "Text file busy"\n  hint: move the swap file into a subvolume of its own, which snapshots leave out: swapoff ${swapFile}; btrfs subvolume create ${join(dir, 'home/swap')}; `)
      expect(refused.stderr).toContain('(SOURCE_UNAVAILABLE)')
      expect(await readdir(join(dir, 'home'))).toEqual(['a.txt', 'swapfile'])
      // what the hint says: the swap file in a subvolume of its own, nested in the source
      execFileSync('swapoff', [swapFile])
      active.pop()
      await rm(swapFile)
      execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home/swap')])
      execFileSync('btrfs', ['filesystem', 'mkswapfile', '--size', '16m', join(dir, 'home/swap/swapfile')])
      execFileSync('swapon', [join(dir, 'home/swap/swapfile')])
      active.push(join(dir, 'home/swap/swapfile'))
      const backed = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
      expect(backed.code, backed.stderr).toBe(0)
      expect(JSON.parse(backed.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    } finally {
      // an active swap file keeps the filesystem busy: off before the cleanup unmounts it
      for (const file of active) execFileSync('swapoff', [file])
    }
  })

  it('status tells an unfinished receive the journal records (the next run removes it) from one it has no record of (left for the user to delete)', async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const [recorded, orphan] = ['home.2026-01-02T000000Z', 'home.2026-01-01T000000Z']
    for (const n of [recorded, orphan]) execFileSync('btrfs', ['subvolume', 'create', join(dir, 'backup', n)])
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'backup'), snapshot: recorded, partialPath: join(dir, 'backup', recorded), startedAt: new Date().toISOString(),
    })
    const before = await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(before.stdout).toContain(`    unfinished: ${recorded} (the next run continues it)\n`)
    expect(before.stdout).toContain(`    unfinished, not in the journal: ${orphan} (no run continues it: the transfer that left it is no longer recorded, and a run deletes nothing it cannot prove it made; look at it: bbackup clean deletes an unfinished receive named as this job's)\n`)
    // the SDK's status says the same (what --json prints)
    const told = JSON.parse((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout) as { targets: { unfinished: string[]; unrecorded?: string[] }[] }
    expect(told.targets[0]).toMatchObject({ unfinished: [orphan, recorded], unrecorded: [orphan] })
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    expect((await readdir(join(dir, 'backup'))).filter((n) => n === recorded || n === orphan)).toEqual([orphan])
    const after = await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(after.stdout).not.toContain(`    unfinished: `)
    expect(after.stdout).toContain(`    unfinished, not in the journal: ${orphan} (no run continues it`)
  })

  it('clean deletes the unfinished receives at a target, also one the journal no longer records (btrbk clean); what is not one is kept and said why', async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/big'), randomBytes(8 << 20))
    expect((await runCli(['snapshot', 'home', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const [parent, interrupted] = (await readdir(join(dir, 'home/.snapshots'))).sort()
    // a receive cut short (its stream ends early): a writable subvolume without a received uuid
    const cut = spawnSync('sh', ['-c', `btrfs send -q -p "home/.snapshots/${parent}" "home/.snapshots/${interrupted}" | head -c 1000000 | btrfs receive backup`], { cwd: dir, encoding: 'utf8' })
    expect(cut.status).not.toBe(0)
    expect(execFileSync('btrfs', ['subvolume', 'show', join(dir, 'backup', interrupted!)], { encoding: 'utf8' })).toMatch(/Received UUID:\s+-\n/)
    const blocked = await runCli(['transfer', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(blocked).toMatchObject({ code: 10, stdout: expect.stringContaining('(bbackup clean, with the job\'s source and target, deletes unfinished receives)') })
    // one the journal records; one read-only that was never received; one of another prefix
    const [recorded, readOnly, other] = ['home.2026-01-02T000000Z', 'home.2026-01-01T000000Z', 'other.2026-01-01T000000Z']
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'backup', recorded)])
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'backup'), snapshot: recorded, partialPath: join(dir, 'backup', recorded), startedAt: new Date().toISOString(),
    })
    execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'backup', readOnly)])
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'backup', other)])
    const before = (await readdir(join(dir, 'backup'))).sort()
    const dry = await runCli(['clean', 'home', 'backup', '--state-dir', 'state', '-n'], dir)
    expect(dry).toMatchObject({ code: 0 })
    expect(dry.stdout).toContain(`would delete ${recorded} (an unfinished copy)\n`)
    expect(dry.stdout).toContain(`would delete ${interrupted} (an unfinished copy)\n`)
    expect(dry.stdout).toContain(`kept ${readOnly}: ${join(dir, 'backup', readOnly)} is not an unfinished receive (read-only without a received uuid), nor a complete one: not bbackup's to delete`)
    expect(dry.stdout).not.toContain(other)
    expect((await readdir(join(dir, 'backup'))).sort()).toEqual(before)
    const cleaned = JSON.parse((await runCli(['clean', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout) as { removed: string[]; kept: { name: string }[] }[]
    expect(cleaned).toMatchObject([{ at: join(dir, 'backup'), removed: [recorded, interrupted], kept: [{ name: readOnly }] }])
    expect((await readdir(join(dir, 'backup'))).sort()).toEqual(before.filter((n) => n !== recorded && n !== interrupted))
    const told = JSON.parse((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout) as { pending: unknown[] }
    expect(told.pending).toEqual([])
    // the snapshot it blocked is sent by the next run, incrementally
    const next = await runCli(['transfer', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    expect(JSON.parse(next.stdout)).toMatchObject({ targets: [{ ok: true, sent: [{ snapshot: interrupted, mode: 'incremental', parent }] }] })
  })

  it('a backup made writable after its receive (btrfs property set -f … ro false) is no unfinished receive: clean, prune and a run leave it and what was written into it; list and status say what it is', async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/b.txt'), 'b\n')
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const [older, newer] = (await readdir(join(dir, 'backup'))).sort()
    const changed = join(dir, 'backup', older ?? '')
    // what a user does to look into a backup, or to use it in place: no received uuid, writable, like a receive cut short
    execFileSync('btrfs', ['property', 'set', '-f', changed, 'ro', 'false'])
    await writeFile(join(changed, 'notes'), 'mine\n')
    expect(execFileSync('btrfs', ['subvolume', 'show', changed], { encoding: 'utf8' })).toMatch(/Received UUID:\s+-\n[\s\S]*Flags:\s+-\n/)
    const why = 'a backup made writable after its receive (btrfs property set -f … ro false), perhaps changed since: bbackup leaves it alone'

    for (const dry of [['-n'], []]) {
      const cleaned = await runCli(['clean', 'home', 'backup', '--state-dir', 'state', ...dry], dir)
      expect(cleaned).toMatchObject({ code: 0 })
      expect(cleaned.stdout).toContain(`kept ${older}: ${changed} is not an unfinished receive (${why}), nor a complete one: not bbackup's to delete`)
    }
    expect((await runCli(['list', 'home', 'backup', '--state-dir', 'state'], dir)).stdout).toContain(`/backup (target): 1 backup\n  ${older}   (${why})\n  ${newer}\n`)
    const told = JSON.parse((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout) as { targets: unknown[] }
    expect(told.targets[0]).toMatchObject({ backups: 1, unfinished: [], altered: [{ name: older, why }] })
    expect((await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)).stdout).toContain(`    changed since it was made: ${older}: ${why} (never counted, sent from or deleted)\n`)

    await writeFile(join(dir, 'home/c.txt'), 'c\n')
    const pruned = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--keep-backups', '1', '--keep-snapshots', '1', '--json'], dir)
    expect(JSON.parse(pruned.stdout)).toMatchObject({ targets: [{ ok: true, sent: [{ mode: 'incremental', parent: newer }], pruned: [newer] }] })
    // a journal entry that names it (a state directory copied from elsewhere): refused, not deleted
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'backup'), snapshot: older ?? '', partialPath: changed, startedAt: new Date().toISOString(),
    })
    const refused = await runCli(['run', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(refused.code).toBe(10)
    expect(refused.stdout).toContain(`${changed} is not an unfinished receive (${why}), nor a complete one`)
    expect(await readFile(join(changed, 'notes'), 'utf8')).toBe('mine\n')
  })

  it('a restore stopped by a signal (Ctrl-C, a kill) removes what it received, exits 1 and says so; the next restore there works', async () => {
    await writeFile(join(dir, 'home/big'), randomBytes(6 << 20))
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const [name] = await readdir(join(dir, 'backup'))
    const restored = join(dir, 'restored')
    // 1 MiB a second: the receive is under way for seconds
    const child = spawnTs('fixtures/cli.ts', ['restore', join(dir, 'backup'), 'latest', restored, '--rate-limit', '1m'])
    const ended = finished(child)
    await waitFor(async () => existsSync(join(restored, name ?? '')), 20_000)
    child.kill('SIGINT')
    const r = await ended
    expect(r.code, r.stderr).toBe(1)
    expect(r.stderr).toContain('bbackup: error: the restore was stopped\n  hint: restore again when ready (what was received is removed)\n')
    expect(await readdir(restored)).toEqual([])
    expect(await runCli(['restore', 'backup', 'latest', 'restored'], dir)).toMatchObject({ code: 0 })
    // (Buffer.equals: vitest's deep equality takes half a minute over 6 MiB)
    expect((await readFile(join(restored, name ?? '', 'big'))).equals(await readFile(join(dir, 'home/big')))).toBe(true)
  })

  it('two jobs of one source with one prefix (two cron lines, two targets) share the snapshot folder: neither prunes the parent the other\'s next incremental needs', async () => {
    const run = async (target: string, json = false): Promise<{ code: number; stdout: string }> => {
      await writeFile(join(dir, 'home/a.txt'), randomBytes(64).toString('hex'))
      return runCli(['run', 'home', target, '--keep-snapshots', '1', '--state-dir', `jobs/${target}`, ...(json ? ['--json'] : ['-q'])], dir)
    }
    expect((await run('a')).code).toBe(0)
    expect(JSON.parse((await run('b', true)).stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    const bHolds = (await readdir(join(dir, 'b'))).sort().at(-1)!
    // job a runs more often: its prune keeps one snapshot of its own, and b's next parent
    for (let i = 0; i < 3; i++) expect((await run('a')).code).toBe(0)
    expect(existsSync(join(dir, 'home/.snapshots', bHolds))).toBe(true)
    const dry = await runCli(['prune', 'home', 'a', '--keep-snapshots', '1', '--state-dir', 'jobs/a', '-n'], dir)
    expect(dry.stdout).toContain(`keep   ${bHolds}  protected: the newest snapshot ${join(dir, 'b')} holds for another job (${join(dir, 'jobs/b')}): its next incremental's parent`)
    const told = await runCli(['status', 'home', 'a', '--state-dir', 'jobs/a'], dir)
    expect(told.stdout).toContain(`  kept for ${join(dir, 'b')}, the target of another job of this source (state ${join(dir, 'jobs/b')}): ${bHolds}, its next parent`)
    // (b lacks a's newest snapshot too, still at the source: sent first, each incremental on the one before)
    const next = JSON.parse((await run('b', true)).stdout) as { targets: { ok: boolean; sent: { mode: string; parent?: string }[] }[] }
    expect(next.targets[0]).toMatchObject({ ok: true, sent: [{ mode: 'incremental', parent: bHolds }, { mode: 'incremental' }] })
    // once b holds a newer one, its old parent is no one's to keep: b's own prune let it go
    expect(existsSync(join(dir, 'home/.snapshots', bHolds))).toBe(false)
    // a state beside it that cannot be read: the source is not pruned, and the error says whose
    await mkdir(join(dir, 'jobs/broken'))
    await writeFile(join(dir, 'jobs/broken/pins.json'), '{')
    const refused = await runCli(['prune', 'home', 'a', '--keep-snapshots', '1', '--state-dir', 'jobs/a'], dir)
    expect(refused).toMatchObject({ code: 10, stderr: expect.stringContaining(`${join(dir, 'home')}: NOT PRUNED: another job's state beside this one's cannot be read, so the source's snapshots it may need are not known: the pin file ${join(dir, 'jobs/broken/pins.json')} is not a bbackup pin file`) })
    // status tells the rest all the same
    expect(await runCli(['status', 'home', 'a', '--state-dir', 'jobs/a'], dir)).toMatchObject({ code: 0, stdout: expect.stringContaining(`  ${join(dir, 'a')}: `) })
  })

  it.runIf(requireTools(['btrbk']))("takes over btrbk's snapshots and backups (the Debian package's, named home.YYYYMMDDThhmmss+zone): the first run is incremental from btrbk's newest", async () => {
    // a btrbk user's setup: snapshot_dir beside the subvolume, one target
    const snaps = join(dir, 'btrbk-snaps')
    await mkdir(snaps)
    await mkdir(join(dir, 'backup'))
    const conf = join(dir, 'btrbk.conf')
    await writeFile(conf, ['timestamp_format long-iso', 'snapshot_preserve_min all', 'target_preserve_min all', `volume ${dir}`, '  snapshot_dir btrbk-snaps', '  subvolume home', `    target ${join(dir, 'backup')}`, ''].join('\n'))
    // names a second apart: within one second the order of two tools' names is not known
    const nextSecond = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 1000 - (Date.now() % 1000) + 20))
    execFileSync('btrbk', ['-c', conf, '-q', 'run'])
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    await nextSecond()
    execFileSync('btrbk', ['-c', conf, '-q', 'run'])
    const btrbks = (await readdir(snaps)).sort()
    expect(btrbks).toHaveLength(2)
    expect(btrbks.every((n) => n.startsWith('home.'))).toBe(true)
    // bbackup with the default prefix (home.) and btrbk's snapshot folder
    await writeFile(join(dir, 'home/b.txt'), 'new\n')
    await nextSecond()
    const r = await runCli(['run', 'home', 'backup', '--snapshot-folder', snaps, '--state-dir', 'state', '--json'], dir)
    expect(r.code, r.stderr).toBe(0)
    expect((JSON.parse(r.stdout) as { targets: unknown[] }).targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: btrbks.at(-1) })
    const listed = await runCli(['list', 'home', 'backup', '--snapshot-folder', snaps, '--state-dir', 'state'], dir)
    expect(listed.stdout).toMatch(/\(source\): 3 snapshots[\s\S]*\(target\): 3 backups/)
    // btrbk's are the job's to keep or prune: the newest alone stays, btrbk's two go at both sides
    const pruned = await runCli(['prune', 'home', 'backup', '--snapshot-folder', snaps, '--state-dir', 'state', '--keep-snapshots', '1', '--keep-backups', '1', '-q'], dir)
    expect(pruned.code, pruned.stderr).toBe(0)
    expect(await readdir(snaps)).toHaveLength(1)
    expect((await readdir(join(dir, 'backup'))).filter((n) => btrbks.includes(n))).toEqual([])
  })

  it("takes over btrfs-backup's snapshots and backups (named prefix + %Y%m%d-%H%M%S): with its prefix, the first run is incremental from its newest", async () => {
    // what btrfs-backup leaves: snapshots in its folder inside the source, each received at the target under its name
    await mkdir(join(dir, 'home/snapshot'))
    await mkdir(join(dir, 'backup'))
    for (const name of ['home-20261101-120000', 'home-20261102-120000']) {
      execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'home/snapshot', name)])
      execFileSync('sh', ['-c', 'btrfs send -q "$1" | btrfs receive -e "$2"', 'sh', join(dir, 'home/snapshot', name), join(dir, 'backup')], { stdio: 'ignore' })
    }
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const r = await runCli(['run', 'home', 'backup', '--snapshot-folder', 'snapshot', '-p', 'home-', '--state-dir', 'state', '--json'], dir)
    expect(r.code, r.stderr).toBe(0)
    expect((JSON.parse(r.stdout) as { targets: unknown[] }).targets[0]).toMatchObject({ ok: true, mode: 'incremental', parent: 'home-20261102-120000' })
    const listed = await runCli(['list', 'home', 'backup', '--snapshot-folder', 'snapshot', '-p', 'home-', '--state-dir', 'state'], dir)
    expect(listed.stdout).toMatch(/\(source\): 3 snapshots\n {2}home-20261101-120000\n {2}home-20261102-120000\n[\s\S]*\(target\): 3 backups/)
  })

  it('snapshot takes a source snapshot alone, no target needed (btrbk snapshot: a laptop away from its disk); a later run sends it', async () => {
    expect(await runCli(['snapshot', 'home', '--state-dir', 'state', '-n'], dir)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^dry run: \S+home: would take snapshot home\.\d{4}-\d\d-\d\dT\d{6}Z, /) })
    expect(existsSync(join(dir, 'home/.snapshots'))).toBe(false)
    const took = await runCli(['snapshot', 'home', '--state-dir', 'state'], dir)
    const [name = ''] = await readdir(join(dir, 'home/.snapshots'))
    expect(took).toMatchObject({ code: 0, stdout: `${dir}/home: took snapshot ${name}, ${/, ([\d.]+ s)\n$/.exec(took.stdout)?.[1] ?? '?'}\n` })
    const sent = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-snapshot', '--json'], dir)
    expect(JSON.parse(sent.stdout)).toMatchObject({ targets: [{ ok: true, sent: [{ snapshot: name, mode: 'full' }] }] })
  })

  it("--snapshot-create onchange (btrbk's snapshot_create): a snapshot only when the source changed, even where pruning in the snapshot folder inside it changed its generation; a target that lacks the newest still gets it", async () => {
    const gens = (path: string): [number, number] => {
      const shown = execFileSync('btrfs', ['subvolume', 'show', path], { encoding: 'utf8' })
      return [Number(/Generation:\s*(\d+)/.exec(shown)?.[1]), Number(/Gen at creation:\s*(\d+)/.exec(shown)?.[1])]
    }
    const run = (...more: string[]) => runCli(['run', 'home', 'backup', ...more, '--state-dir', 'state', '--snapshot-create', 'onchange', '--keep-snapshots', '1'], dir)
    const snapshots = async () => (await readdir(join(dir, 'home/.snapshots'))).sort()
    expect((await run()).code).toBe(0)
    const [first = ''] = await snapshots()
    const idle = await run()
    expect(idle).toMatchObject({ code: 0, stderr: expect.stringContaining(`no new snapshot: the source has not changed since its newest snapshot, ${first} (snapshot_create onchange)`) })
    expect(idle.stdout + idle.stderr).not.toContain('warning')
    expect(await snapshots()).toEqual([first])
    // written just before the run, not yet committed: the run commits it before it compares
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    expect(JSON.parse((await run('--json')).stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }], sourcePruned: [first] })
    const [second = ''] = await snapshots()
    expect(second).not.toBe(first)
    // deleting the older snapshot inside the source moved the source's generation past the newest snapshot's
    expect(gens(join(dir, 'home'))[0]).toBeGreaterThan(gens(join(dir, 'home/.snapshots', second))[1])
    const compared = await run('backup2')
    expect(compared).toMatchObject({ code: 0, stderr: expect.stringContaining(`no new snapshot: the source has not changed since its newest snapshot, ${second}`) })
    expect(compared.stdout).toMatch(/backup2: home\.\S+ full/)
    expect(await snapshots()).toEqual([second])
    expect((await readdir(join(dir, 'backup2'))).filter((n) => n.startsWith('home.'))).toEqual([second])
    // status ages the backups of the unchanged newest snapshot from the run that found it unchanged
    type Latest = { name: string; current?: { ageSeconds: number } }
    const statusOf = async () => JSON.parse((await runCli(['status', 'home', 'backup', 'backup2', '--state-dir', 'state', '--json'], dir)).stdout) as { targets: { latest: Latest }[]; snapshots: { latest: Latest } }
    const fresh = await statusOf()
    expect(fresh.targets.map((t) => [t.latest.name, t.latest.current?.ageSeconds])).toEqual([[second, expect.any(Number)], [second, expect.any(Number)]])
    expect(fresh.snapshots.latest.current).toBeDefined()
    expect((await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)).stdout).toMatch(new RegExp(`newest ${second} \\(.*; the source unchanged since, as of \\d+ s ago\\)`))
    // the snapshot stage alone says it took none
    const stage = await runCli(['snapshot', 'home', '--state-dir', 'state', '--snapshot-create', 'onchange'], dir)
    expect(stage).toMatchObject({ code: 0, stdout: expect.stringContaining(`/home: no new snapshot: the source has not changed since its newest snapshot, ${second} (snapshot_create onchange)`) })
    expect(await snapshots()).toEqual([second])
    // a rename alone is a change
    await rename(join(dir, 'home/a.txt'), join(dir, 'home/b.txt'))
    expect((await run()).stderr).not.toContain('no new snapshot')
    expect(await snapshots()).not.toEqual([second])
    // a new snapshot: the record is of an older one
    expect((await statusOf()).targets[0]?.latest.current).toBeUndefined()
    expect(await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--snapshot-create', 'onchange', '--snapper'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('with --snapper (snapper) snapper takes them') })
    await writeFile(join(dir, 'bad.toml'), `[jobs.home]\nsource = "${dir}/home"\ntargets = ["${dir}/backup"]\nsnapshot_create = "sometimes"\n`)
    expect(await runCli(['run', '-c', 'bad.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('snapshot_create') })
  })

  it("--preserve, --preserve-snapshots, --preserve-backups (btrbk's): a run that deletes nothing on the side named, whatever the config's retention says", async () => {
    await writeFile(join(dir, 'config.toml'), 'state_dir = "state"\n[jobs.home]\nsource = "home"\ntargets = ["backup"]\nkeep_snapshots = "1"\nkeep_backups = "1"\n')
    const counts = async () => [(await readdir(join(dir, 'home/.snapshots'))).length, (await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.')).length]
    const run = async (...more: string[]) => {
      const r = await runCli(['run', '-c', 'config.toml', ...more, '--json'], dir)
      expect(r.code).toBe(0)
      return JSON.parse(r.stdout) as { sourcePruned: string[]; targets: { pruned: string[] }[] }
    }
    expect(await run()).toMatchObject({ sourcePruned: [], targets: [{ pruned: [] }] })
    expect(await run('--preserve')).toMatchObject({ sourcePruned: [], targets: [{ pruned: [] }] })
    expect(await counts()).toEqual([2, 2])
    expect(await run('--preserve-snapshots')).toMatchObject({ sourcePruned: [], targets: [{ pruned: [expect.any(String), expect.any(String)] }] })
    expect(await counts()).toEqual([3, 1])
    expect(await run('--preserve-backups')).toMatchObject({ sourcePruned: [expect.any(String), expect.any(String), expect.any(String)], targets: [{ pruned: [] }] })
    expect(await counts()).toEqual([1, 2])
    // both flags: as --preserve
    expect(await run('--preserve-snapshots', '--preserve-backups')).toMatchObject({ sourcePruned: [], targets: [{ pruned: [] }] })
    expect(await counts()).toEqual([2, 3])
    expect(await run()).toMatchObject({ targets: [{ pruned: [expect.any(String), expect.any(String), expect.any(String)] }] })
    expect(await counts()).toEqual([1, 1])
  })

  it("--incremental strict (btrbk's incremental): a target that would need a full send fails with the fix, and gets nothing; incremental = \"yes\" in the config sends it", async () => {
    const strict = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--incremental', 'strict'], dir)
    expect(strict).toMatchObject({ code: 10, stdout: expect.stringMatching(/backup: FAILED: home\.\S+ would be sent in full \(the target holds no backup of this source\), and incremental = strict sends nothing in full\n\s+hint: to send it in full once, run with --incremental yes/) })
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toEqual([])
    expect((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--incremental', 'strict'], dir)).stdout).toMatch(/missing: 1 source snapshot \(home\.\S+\): not sent: home\.\S+ would be sent in full \(the target holds no backup of this source\), and incremental = strict sends nothing in full \(run once with --incremental yes\)/)
    await writeFile(join(dir, 'config.toml'), 'state_dir = "state"\nincremental = "strict"\n[jobs.home]\nsource = "home"\ntargets = ["backup"]\n')
    expect((await runCli(['run', '-c', 'config.toml'], dir)).code).toBe(10)
    expect(await runCli(['run', '-c', 'config.toml', '--incremental', 'yes', '-q'], dir)).toMatchObject({ code: 0 })
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    expect(JSON.parse((await runCli(['run', '-c', 'config.toml', '--json'], dir)).stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental' }] })
    await writeFile(join(dir, 'bad.toml'), '[jobs.home]\nsource = "home"\ntargets = ["backup"]\nincremental = "sometimes"\n')
    expect(await runCli(['run', '-c', 'bad.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('incremental: "sometimes" is not "yes", "no" or "strict"') })
    await mkdir(join(dir, 'plain'))
    expect(await runCli(['run', 'plain', 'rsynced', '--driver', 'rsync', '--incremental', 'strict', '--state-dir', 'state2'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('--incremental (incremental): a btrfs setting') })
  })

  it('a job of source snapshots alone: targets = [] in the config (btrbk: a subvolume without a target), prune SOURCE alone; status and --check judge its snapshots', async () => {
    await writeFile(join(dir, 'config.toml'), 'state_dir = "state"\n[jobs.home]\nsource = "home"\ntargets = []\nkeep_snapshots = "1"\n')
    for (let i = 0; i < 2; i++) expect((await runCli(['run', '-c', 'config.toml', '-q'], dir)).code).toBe(0)
    const snapshots = await readdir(join(dir, 'home/.snapshots'))
    expect(snapshots).toHaveLength(1)
    expect(await runCli(['status', '-c', 'config.toml'], dir)).toMatchObject({ code: 0, stdout: expect.stringContaining(`  source: 1 snapshot, newest ${snapshots[0]} (`) })
    expect((await runCli(['status', '-c', 'config.toml'], dir)).stdout).toContain('; no target (snapshots only)')
    await new Promise((r) => setTimeout(r, 1100))
    expect(await runCli(['status', '-c', 'config.toml', '--check', '--warn-age', '0m'], dir)).toMatchObject({ code: 1, stdout: expect.stringContaining(`home: warning\n  ${dir}/home: the newest snapshot is 0 min old (warning after 0 min)`) })
    // on the command line: snapshot and prune need no target; a snapshot the journal or a pin needs is kept
    expect((await runCli(['snapshot', 'home', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const pruned = await runCli(['prune', 'home', '--keep-snapshots', '1', '--state-dir', 'state'], dir)
    expect(pruned).toMatchObject({ code: 0, stdout: expect.stringContaining(`delete ${snapshots[0]}`) })
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    // a plain directory has no snapshots of its own: without a target, nothing would be kept anywhere
    await mkdir(join(dir, 'plain'))
    await writeFile(join(dir, 'config.toml'), 'state_dir = "state"\n[jobs.plain]\nsource = "plain"\ntargets = []\n')
    expect(await runCli(['run', '-c', 'config.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`no target given for the job plain, and ${dir}/plain is backed up by the rsync driver, which keeps nothing at the source`) })
  })

  it('refuses a config whose two jobs would keep their backups in one target under one prefix (two subvolumes named home), as btrbk does', async () => {
    await mkdir(join(dir, 'srv'))
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'srv/home')])
    const config = (extra: string) => `state_dir = "state"\n[jobs.home]\nsource = "home"\ntargets = ["backup"]\nkeep_backups = "1"\n[jobs.srv]\nsource = "srv/home"\ntargets = ["backup"]\nkeep_backups = "1"\n${extra}`
    await writeFile(join(dir, 'config.toml'), config(''))
    // also one job alone, as its timer runs it
    for (const command of [['run'], ['run', '-j', 'srv'], ['prune', '-j', 'home'], ['doctor']]) {
      const refused = await runCli([...command, '-c', 'config.toml'], dir)
      expect(refused, command.join(' ')).toMatchObject({ code: 2, stderr: expect.stringMatching(new RegExp(`jobs (home and srv|srv and home) both keep their backups in ${dir}/backup as home\\.\\*: each one's retention would delete the other's`)) })
      expect(refused.stderr).toContain('hint: give one of them its own prefix (in [jobs.srv]: prefix = "srv.") or its own target')
    }
    expect(existsSync(join(dir, 'backup'))).toBe(false)
    expect(existsSync(join(dir, 'home/.snapshots'))).toBe(false)
    // one snapshot folder for both sources: their snapshots, too
    await writeFile(join(dir, 'config.toml'), config('prefix = "srv."\n').replaceAll('targets = ["backup"]\n', 'targets = ["backup"]\nsnapshot_folder = "/snaps"\n').replaceAll('/snaps', join(dir, 'snaps')))
    const apart = await runCli(['run', '-c', 'config.toml', '-q'], dir)
    expect(apart.code, apart.stderr).toBe(0)
    await writeFile(join(dir, 'config.toml'), config('').replaceAll('targets = ["backup"]\n', `targets = ["backup-$"]\nsnapshot_folder = "${join(dir, 'snaps')}"\n`).replace('backup-$', 'b1').replace('backup-$', 'b2'))
    expect(await runCli(['run', '-c', 'config.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`both keep their source snapshots in ${dir}/snaps as home.*`) })
    expect(existsSync(join(dir, 'b1'))).toBe(false)
  })

  it("list --sizes tells each backup's exclusive bytes (btrfs filesystem du: what deleting it alone frees); a raw target's streams are refused, exit 10", async () => {
    await writeFile(join(dir, 'home/big.bin'), randomBytes(1024 * 1024))
    await writeFile(join(dir, 'home/shared.bin'), randomBytes(256 * 1024))
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await rm(join(dir, 'home/big.bin'))
    await writeFile(join(dir, 'home/new.bin'), randomBytes(512 * 1024))
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const [older, newer] = (await readdir(join(dir, 'backup'))).sort() as [string, string]
    const r = await runCli(['list', 'backup', '--sizes', '--json'], dir)
    expect(r.code, r.stderr).toBe(0)
    const [{ sizes }] = JSON.parse(r.stdout) as [{ sizes: { bytes: Record<string, number>; counted: string } }]
    const du = execFileSync('btrfs', ['filesystem', 'du', '-s', '--raw', join(dir, 'backup', older), join(dir, 'backup', newer)], { encoding: 'utf8' })
      .trim().split('\n').slice(1).map((l) => Number(l.trim().split(/\s+/)[1]))
    expect(sizes).toEqual({ bytes: { [older]: du[0], [newer]: du[1] }, counted: 'exclusive' })
    // the file only the older one holds, the file only the newer one holds (not the one both do)
    expect(sizes.bytes[older]).toBe(1024 * 1024)
    expect(sizes.bytes[newer]).toBe(512 * 1024)
    expect((await runCli(['list', 'backup', '--sizes'], dir)).stdout).toBe(`${dir}/backup (target): 2 backups\n  ${older}   1.0 MiB exclusive\n  ${newer}   512.0 KiB exclusive\n`)

    expect((await runCli(['run', 'home', '--raw-target', 'raw', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const raw = await runCli(['list', 'home', '--raw-target', 'raw', '--state-dir', 'state', '--sizes'], dir)
    expect(raw.code).toBe(10)
    expect(raw.stdout).toMatch(/raw \(target\): 1 backup\n {2}home\.\S+\n {2}sizes: not told: .*raw holds send streams, not subvolumes; du -s on its stream files tells their sizes\n/)
  })

  it('list and restore take one place alone: a target, the source subvolume or its snapshot folder (a snapshot the target lacks restores from the source)', async () => {
    await symlink('/etc', join(dir, 'home/etc'))
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-transfer', '-q'], dir)).code).toBe(0)
    const [first, second] = (await readdir(join(dir, 'home/.snapshots'))).sort()
    expect(await runCli(['list', 'backup'], dir)).toMatchObject({ code: 0, stdout: `${dir}/backup (target): 1 backup\n  ${first}\n` })
    for (const place of ['home', 'home/.snapshots']) {
      expect(await runCli(['list', place], dir)).toMatchObject({ code: 0, stdout: `${dir}/${place} (source): 2 snapshots\n  ${first}\n  ${second}\n` })
    }
    expect(await runCli(['list', 'nothere'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('nothere does not exist') })
    await mkdir(join(dir, 'plain'))
    expect(await runCli(['list', 'plain'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('no target given, and plain holds no backups') })
    // status takes a target alone too (the backup server's view: no source, journal or lock); a source alone is sent to list
    expect(await runCli(['status', 'backup'], dir)).toMatchObject({ code: 0, stdout: expect.stringMatching(new RegExp(`^${dir}/backup \\(btrfs\\) home\\.\\*: 1 backup, newest ${first} \\(\\d+ s ago\\)\n {2}space: .*\n$`)) })
    expect(await runCli(['status', 'home'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('it is a btrfs subvolume: a source') })
    expect((await runCli(['status', 'home'], dir)).stderr).toContain('its snapshots: bbackup list home')
    // received backups are not pruned alone: only the source knows the parent of the next incremental
    expect(await runCli(['prune', 'backup', '--keep-backups', '1'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`backup holds btrfs backups: pruning them alone could delete the parent of the next incremental, which only the source knows\n  hint: name the source too: bbackup prune SOURCE backup --keep-backups …`) })

    // the newest snapshot never reached the target: it is restored from the source
    expect(await runCli(['restore', 'home', 'latest', 'r1'], dir)).toMatchObject({ code: 0, stdout: `restored ${second} to r1\n` })
    expect(readFileSync(join(dir, 'r1', second!, 'a.txt'), 'utf8')).toBe('changed\n')
    expect(await runCli(['restore', '--path', '/a.txt', 'home/.snapshots', first!, 'r2'], dir)).toMatchObject({ code: 0, stdout: `restored ${first}/a.txt to r2\n` })
    expect(readFileSync(join(dir, 'r2/a.txt'), 'utf8')).toBe('a\n')
    // a path through a symbolic link in the backup would be the host's file, not the backup's: refused, nothing made
    expect(await runCli(['restore', '--path', 'etc/hostname', 'home/.snapshots', first!, 'r4'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`etc is a symbolic link in backup ${first} (to /etc): etc/hostname through it is not in the backup`) })
    expect(existsSync(join(dir, 'r4'))).toBe(false)
    expect(await runCli(['restore', 'home', 'home.2020-01-01T000000Z', 'r3'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining(`no complete snapshot named home.2020-01-01T000000Z at`) })
    expect((await runCli(['restore', 'home', 'home.2020-01-01T000000Z', 'r3'], dir)).stderr).toContain(`the newest is ${second}`)
    // a destination that is a file is named, whole or one path; nothing is written
    await writeFile(join(dir, 'file'), 'mine\n')
    for (const args of [['backup', 'latest', 'file'], ['--path', 'a.txt', 'backup', 'latest', 'file'], ['--path', 'a.txt', 'backup', 'latest', 'file/sub']]) {
      expect(await runCli(['restore', ...args], dir)).toMatchObject({ code: 1, stderr: expect.stringMatching(/the restore destination .*file.* is not a directory[\s\S]*TARGET_UNAVAILABLE/) })
    }
    expect(readFileSync(join(dir, 'file'), 'utf8')).toBe('mine\n')
    expect(existsSync(join(dir, 'r3'))).toBe(false)
  })

  it("takes btrfs-backup's flags: --no-transfer, then --no-snapshot; -N keeps N source snapshots", async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-transfer', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    expect((await readdir(join(dir, 'backup')).catch(() => [])).filter((n) => n.startsWith('home.'))).toHaveLength(0)
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-snapshot', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(1)
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-N', '1', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
  })

  it('--locked-dests retries a target only the journal names; --remove-locks forgets it', async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const snapshot = (await readdir(join(dir, 'home/.snapshots')))[0]!
    // a run to a second target was interrupted before anything reached it
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'other'), snapshot, partialPath: join(dir, 'other', snapshot), startedAt: new Date().toISOString(),
    })
    // and one to a raw target, which is not a place to receive into
    await mkdir(join(dir, 'streams'))
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'streams'), snapshot, partialPath: join(dir, 'streams', `${snapshot}.btrfs.part`), startedAt: new Date().toISOString(),
    })
    const retried = await runCli(['transfer', 'home', '--locked-dests', '--state-dir', 'state', '--json'], dir)
    expect(retried.code, retried.stdout + retried.stderr).toBe(0)
    expect(JSON.parse(retried.stdout).targets.map((t: { target: string }) => t.target)).toEqual([join(dir, 'other')])
    expect(await readdir(join(dir, 'other'))).toEqual([snapshot])
    expect(await readdir(join(dir, 'streams'))).toEqual([])
    const warned = await runCli(['transfer', 'home', '--locked-dests', '--state-dir', 'state'], dir)
    expect(warned.stderr).toContain(`warning: the pending transfer of ${snapshot} to ${join(dir, 'streams')} is to a raw or pipe target: retry it by naming that target (--raw-target ${join(dir, 'streams')}`)

    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'backup'), snapshot: 'home.2001-01-01T000000Z', partialPath: join(dir, 'backup/home.2001-01-01T000000Z'), startedAt: new Date().toISOString(),
    })
    const forgot = await runCli(['transfer', 'home', 'backup', '--remove-locks', '--state-dir', 'state'], dir)
    expect(forgot).toMatchObject({ code: 0, stderr: expect.stringContaining('forgot the pending transfer of home.2001-01-01T000000Z') })
    const status = await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    // what is left: the raw target's, which nothing here retried
    expect(JSON.parse(status.stdout).pending.map((e: { target: string }) => e.target)).toEqual([join(dir, 'streams')])
  })

  it("a new target gets the snapshots its retention keeps, oldest first, the first in full and the rest incremental (btrbk's resume); status names them", async () => {
    for (let i = 0; i < 4; i++) {
      await writeFile(join(dir, 'home/a.txt'), `${i}\n`)
      expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    }
    const snapshots = (await readdir(join(dir, 'home/.snapshots'))).sort()
    expect(snapshots).toHaveLength(4)
    await mkdir(join(dir, 'second'))
    const lacking = JSON.parse((await runCli(['status', 'home', 'backup', 'second', '--state-dir', 'state', '--keep-backups', '3', '--json'], dir)).stdout) as { targets: { at: string; missing: string[] }[] }
    expect(lacking.targets[1]).toMatchObject({ at: join(dir, 'second'), missing: snapshots.slice(1) })
    const sent = JSON.parse((await runCli(['transfer', 'home', 'backup', 'second', '--state-dir', 'state', '--keep-backups', '3', '--json'], dir)).stdout) as { targets: { target: string; sent: { snapshot: string; mode: string; parent?: string }[] }[] }
    expect(sent.targets.find((t) => t.target === join(dir, 'second'))?.sent).toMatchObject([
      { snapshot: snapshots[1], mode: 'full' },
      { snapshot: snapshots[2], mode: 'incremental', parent: snapshots[1] },
      { snapshot: snapshots[3], mode: 'incremental', parent: snapshots[2] },
    ])
    expect((await readdir(join(dir, 'second'))).sort()).toEqual(snapshots.slice(1))
    // each is the source snapshot's copy, with its content
    for (const [i, name] of snapshots.slice(1).entries()) {
      const show = execFileSync('btrfs', ['subvolume', 'show', join(dir, 'second', name)], { encoding: 'utf8' })
      const uuid = /^\s*UUID:\s*(\S+)/m.exec(execFileSync('btrfs', ['subvolume', 'show', join(dir, 'home/.snapshots', name)], { encoding: 'utf8' }))?.[1]
      expect(show).toMatch(new RegExp(`Received UUID:\\s*${uuid ?? 'none'}`))
      expect(readFileSync(join(dir, 'second', name, 'a.txt'), 'utf8')).toBe(`${i + 1}\n`)
    }
    // without a target policy a new target gets the newest alone
    await mkdir(join(dir, 'third'))
    const one = JSON.parse((await runCli(['transfer', 'home', 'third', '--state-dir', 'state', '--json'], dir)).stdout) as { targets: { sent: { snapshot: string; mode: string }[] }[] }
    expect(one.targets[0]?.sent).toMatchObject([{ snapshot: snapshots[3], mode: 'full' }])
  })

  it('a target gone for good keeps its pinned snapshot until prune --forget-target lets it go; status names it; a target of the job, an unknown one, or no source retention is refused', async () => {
    const run = async (...targets: string[]) => expect((await runCli(['run', 'home', ...targets, '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await run('backup', 'old')
    const [oldParent = ''] = await readdir(join(dir, 'old'))
    // the old disk is retired: the runs go on to the other target alone
    for (const text of ['b\n', 'c\n']) {
      await writeFile(join(dir, 'home/a.txt'), text)
      await run('backup')
    }
    const status = await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(status.stdout).toContain(`kept for ${join(dir, 'old')}, not a target here: ${oldParent}, its next parent (another job's target, or one gone for good: bbackup prune … --forget-target ${join(dir, 'old')})`)
    expect(JSON.parse((await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)).stdout)).toMatchObject({ keptForOthers: [{ target: join(dir, 'old'), snapshot: oldParent }] })
    // the policy alone keeps it
    const kept = await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '-N', '1'], dir)
    expect(kept.stdout).toContain(`keep   ${oldParent}  protected: the newest snapshot ${join(dir, 'old')} holds`)
    expect(await readdir(join(dir, 'home/.snapshots'))).toContain(oldParent)
    // refused: the job's own target, a target it keeps nothing for, no source policy to prune by
    expect(await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '-N', '1', '--forget-target', 'backup'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('is a target of this job') })
    expect(await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '-N', '1', '--forget-target', 'elsewhere'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining(`hint: name the target as the job recorded it: ${join(dir, 'backup')}, ${join(dir, 'old')}`) })
    expect(await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '--num-backups', '5', '--forget-target', 'old'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('give the source\'s retention too') })
    // a transfer to it that never finished is on record too, with its parent
    const newest = (await readdir(join(dir, 'home/.snapshots'))).sort().at(-1) ?? ''
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'old'), snapshot: newest, parent: oldParent, partialPath: join(dir, 'old', newest), startedAt: new Date().toISOString(),
    })
    // a dry run says what it would forget and prune, and changes nothing
    const dry = await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '-N', '1', '--forget-target', 'old', '-n'], dir)
    expect(dry.stdout).toContain(`would forget ${join(dir, 'old')}: ${oldParent} no longer kept as its next parent; 1 unfinished transfer (${newest}) no longer retried`)
    expect(dry.stdout).toContain(`delete ${oldParent}`)
    expect(await readdir(join(dir, 'home/.snapshots'))).toContain(oldParent)
    const forgot = await runCli(['prune', 'home', 'backup', '--state-dir', 'state', '-N', '1', '--forget-target', 'old'], dir)
    expect(forgot).toMatchObject({ code: 0, stdout: expect.stringContaining(`forgot ${join(dir, 'old')}`) })
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    expect(await readdir(join(dir, 'home/.snapshots'))).not.toContain(oldParent)
    expect((await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)).stdout).not.toMatch(/kept for|pending transfer/)
    // the backups on the old disk are its own: nothing there was touched
    expect(await readdir(join(dir, 'old'))).toEqual([oldParent])
  })

  it("--transaction-log appends btrbk's columns per snapshot, send and delete (ERROR and partial for a failed target); --log-json prints events as JSON lines; a dry run logs nothing", async () => {
    const log = join(dir, 'bbackup.tlog')
    const line = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (\S+) (\S+) (\S+) (\S+) (\S+)(?: # (.*))?$/
    const rows = (): string[][] => readFileSync(log, 'utf8').trimEnd().split('\n').map((l) => {
      const m = line.exec(l)
      if (m === null) throw new Error(`not a transaction log line: ${l}`)
      return m.slice(1).map((x) => x ?? '')
    })
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q', '--transaction-log', 'bbackup.tlog'], dir)).code).toBe(0)
    const [first] = await readdir(join(dir, 'home/.snapshots'))
    expect(rows().map((r) => r.slice(0, 5))).toEqual([
      ['startup', expect.stringMatching(/^v\d/), '-', '-', '-'],
      ['snapshot', 'success', join(dir, 'home/.snapshots', first!), join(dir, 'home'), '-'],
      ['send-receive', 'starting', join(dir, 'backup', first!), join(dir, 'home/.snapshots', first!), '-'],
      ['send-receive', 'success', join(dir, 'backup', first!), join(dir, 'home/.snapshots', first!), '-'],
      ['finished', 'success', '-', '-', '-'],
    ])

    // a dry run writes nothing to the log
    const before = readFileSync(log, 'utf8')
    expect((await runCli(['run', '-n', 'home', 'backup', '--state-dir', 'state', '-q', '--transaction-log', 'bbackup.tlog'], dir)).code).toBe(0)
    expect(readFileSync(log, 'utf8')).toBe(before)

    // from the config; the second target is a file: its send is refused, the run is partial; --log-json on stderr
    await writeFile(join(dir, 'nowhere'), 'a file where a directory should be')
    await writeFile(join(dir, 'config.toml'), `transaction_log = "${log}"\nstate_dir = "${join(dir, 'state')}"\n[jobs.home]\nsource = "${join(dir, 'home')}"\ntargets = ["${join(dir, 'backup')}", "${join(dir, 'nowhere/deeper')}"]\nkeep_backups = "1"\nkeep_snapshots = "1"\n`)
    const second = await runCli(['run', '-c', 'config.toml', '--log-json'], dir)
    expect(second.code).toBe(10)
    const events = second.stderr.trimEnd().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { time: string; type: string; mode?: string })
    expect(events.map((e) => e.type)).toEqual(expect.arrayContaining(['snapshot-created', 'transfer-started', 'transfer-finished', 'transfer-failed', 'pruned']))
    expect(events.every((e) => !Number.isNaN(Date.parse(e.time)))).toBe(true)
    expect(events.find((e) => e.type === 'transfer-started')?.mode).toBe('incremental')
    const snapshots = await readdir(join(dir, 'home/.snapshots'))
    expect(snapshots).toHaveLength(1)
    const newest = snapshots[0]!
    const later = rows().slice(5)
    expect(later.map((r) => r.slice(0, 5))).toEqual(expect.arrayContaining([
      ['snapshot', 'success', join(dir, 'home/.snapshots', newest), join(dir, 'home'), '-'],
      ['send-receive', 'success', join(dir, 'backup', newest), join(dir, 'home/.snapshots', newest), join(dir, 'home/.snapshots', first!)],
      ['send-receive', 'ERROR', join(dir, 'nowhere/deeper', newest), '-', '-'].map((x, i) => (i === 3 ? expect.any(String) : x)),
      ['delete', 'success', join(dir, 'backup', first!), '-', '-'],
      ['delete', 'success', join(dir, 'home/.snapshots', first!), '-', '-'],
    ]))
    expect(later.at(-1)?.slice(0, 2)).toEqual(['finished', 'partial'])
    expect(later.find((r) => r[1] === 'ERROR')?.[5]).toMatch(/^[A-Z_]+: .*nowhere\/deeper/)

    // a log that cannot be opened stops the run before it changes anything
    const unwritable = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--transaction-log', 'no/such/dir/log'], dir)
    expect(unwritable).toMatchObject({ code: 1, stderr: expect.stringMatching(/cannot open the transaction log .*no\/such\/dir\/log: ENOENT[\s\S]*hint: check that its directory exists/) })
    expect(await readdir(join(dir, 'home/.snapshots'))).toEqual(snapshots)
  })

  it('a target on a read-only mount: the run fails naming it, with the hint and the end of stderr; nothing is left there', async () => {
    await mkdir(join(dir, 'ro-target'))
    await mkdir(join(dir, 'ro'))
    execFileSync('mount', ['--bind', join(dir, 'ro-target'), join(dir, 'ro')])
    try {
      execFileSync('mount', ['-o', 'remount,bind,ro', join(dir, 'ro')])
      const r = await runCli(['run', 'home', 'ro', '--state-dir', 'state', '-v'], dir)
      expect(r.code).toBe(10)
      expect(r.stdout + r.stderr).toMatch(/FAILED: btrfs receive into \S+ro: the filesystem is mounted read-only\n {4}hint: mount it read-write .*\n {4}stderr \(end\): .*\n.*Read-only file system\n {4}command: btrfs receive /)
      expect(await readdir(join(dir, 'ro-target'))).toEqual([])
    } finally {
      execFileSync('umount', [join(dir, 'ro')])
    }
  })

  it('refuses rsync filters for a subvolume (a snapshot takes all of it), naming the nested-subvolume way (exit 2)', async () => {
    for (const filter of [['--exclude', '*.tmp'], ['--exclude-from', 'list.txt'], ['--rsync-option=--bwlimit=10']]) {
      expect(await runCli(['run', 'home', 'backup', '--state-dir', 'state', ...filter], dir), filter.join(' ')).toMatchObject({ code: 2, stderr: expect.stringMatching(/rsync settings, but .*home is backed up by the btrfs driver[\s\S]*a subvolume of its own/) })
    }
    expect(existsSync(join(dir, 'home/.snapshots'))).toBe(false)
  })

  it('refuses a plain directory as a btrfs source with the fix in the hint (exit 1)', async () => {
    const r = await runCli(['run', '--driver', 'btrfs', '/tmp', join(dir, 'backup'), '--state-dir', 'state'], dir)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/not on a btrfs filesystem[\s\S]*--driver rsync[\s\S]*SOURCE_NOT_SUBVOLUME/)
  })

  it('a source detected as the other kind than the backups a target holds is refused (exit 2), naming --driver; named, it is taken', async () => {
    expect((await runCli(['run', 'home', 'btrfs-backups', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    await mkdir(join(dir, 'plain'))
    await writeFile(join(dir, 'plain/p.txt'), 'p\n')
    const before = (await readdir(join(dir, 'btrfs-backups'))).sort()
    for (const command of ['run', 'list']) {
      const r = await runCli([command, 'plain', 'btrfs-backups', '--state-dir', 'state2'], dir)
      expect(r.code, command).toBe(2)
      expect(r.stderr).toMatch(/btrfs-backups holds backups made by the btrfs driver, but .*plain is not a btrfs subvolume[\s\S]*--driver rsync[\s\S]*INVALID_OPTIONS/)
    }
    expect((await readdir(join(dir, 'btrfs-backups'))).sort()).toEqual(before)
    // the other way round: a subvolume source where rsync backups are
    expect((await runCli(['run', 'plain', 'rsync-backups', '--state-dir', 'state2', '-q'], dir)).code).toBe(0)
    const other = await runCli(['run', 'home', 'rsync-backups', '--state-dir', 'state', '-q'], dir)
    expect(other).toMatchObject({ code: 2, stderr: expect.stringMatching(/rsync-backups holds backups made by the rsync driver, but .*home is a btrfs subvolume[\s\S]*--driver btrfs/) })
    // a source that is not there is the probe's to report
    expect((await runCli(['run', 'nosuch', 'btrfs-backups', '--state-dir', 'state2'], dir)).stderr).toMatch(/SOURCE_UNAVAILABLE/)
    const named = await runCli(['run', '--driver', 'rsync', 'plain', 'btrfs-backups', '--state-dir', 'state2', '-q'], dir)
    expect(named.code).toBe(0)
    expect((await readdir(join(dir, 'btrfs-backups'))).length).toBe(before.length + 3) // the backup, .bbackup and latest
  })

  it('--raw-target keeps zstd stream files beside a received target; list, verify and restore read them (restore detects them)', async () => {
    const run = await runCli(['run', 'home', 'backup', '--raw-target', 'streams', '--raw-compress', 'zstd', '--state-dir', 'state', '--json'], dir)
    expect(run.code, run.stderr).toBe(0)
    expect(JSON.parse(run.stdout).targets.map((t: { target: string; ok: boolean; mode: string }) => [t.target, t.ok, t.mode])).toEqual([
      [join(dir, 'backup'), true, 'full'], [join(dir, 'streams'), true, 'full'],
    ])
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    expect((await runCli(['run', 'home', '--raw-target', 'streams', '--raw-compress', 'zstd', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const files = (await readdir(join(dir, 'streams'))).sort()
    expect(files).toHaveLength(4)
    expect(files.every((f) => /^home\.\d{4}-\d\d-\d\dT\d{6}Z(_\d+)?\.btrfs\.zst(\.info)?$/.test(f))).toBe(true)
    const listed = await runCli(['list', 'home', '--raw-target', 'streams', '--raw-compress', 'zstd', '--state-dir', 'state'], dir)
    expect(listed.stdout).toMatch(/streams \(target\): 2 backups/)
    expect(await runCli(['status', 'streams'], dir)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^\S+streams \(btrfs\) home\.\*: 2 backups, newest home\./) })
    const verified = await runCli(['verify', 'home', '--raw-target', 'streams', '--raw-compress', 'zstd', '--state-dir', 'state'], dir)
    expect(verified.code, verified.stdout + verified.stderr).toBe(0)
    // the streams are received: not onto another filesystem, where nothing is made
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 32 })
    try {
      const elsewhere = await runCli(['restore', 'streams', 'latest', join(ext4.mountPoint, 'restored')], dir)
      expect(elsewhere).toMatchObject({ code: 1, stderr: expect.stringMatching(/restore destination .* is not on a btrfs filesystem[\s\S]*TARGET_NOT_BTRFS/) })
      expect(await readdir(ext4.mountPoint)).toEqual(['lost+found'])
    } finally {
      await ext4.cleanup()
    }
    const restored = await runCli(['restore', 'streams', 'latest', 'restored'], dir)
    expect(restored.code, restored.stderr).toBe(0)
    const [name] = await readdir(join(dir, 'restored'))
    expect(execFileSync('cat', [join(dir, 'restored', name!, 'a.txt')], { encoding: 'utf8' })).toBe('changed\n')
    // raw targets hold btrfs streams: an rsync job cannot have one
    const wrong = await runCli(['run', '--driver', 'rsync', 'home', 'backup2', '--raw-target', 'streams2', '--state-dir', 'state2'], dir)
    expect(wrong).toMatchObject({ code: 2, stderr: expect.stringMatching(/raw targets .* keep btrfs send streams/) })
  })

  it('raw_encrypt = "gpg" in the config: the stream files are encrypted to the configured key and restore decrypts them; gpg settings that cannot work are refused (exit 2)', async () => {
    const keys = await gpgHome('gnupg', 'bbackup test <backup@example.org>')
    try {
      await writeFile(join(dir, 'bbackup.toml'), `[jobs.home]\nsource = "${join(dir, 'home')}"\nraw_targets = ["${join(dir, 'streams')}"]\nraw_encrypt = "gpg"\nraw_gpg_recipients = ["backup@example.org"]\nstate_dir = "${join(dir, 'state')}"\n`)
      await withGnupgHome(keys, async () => {
        const run = await runCli(['run', '-c', 'bbackup.toml', '-q'], dir)
        expect(run.code, run.stderr).toBe(0)
        const files = (await readdir(join(dir, 'streams'))).sort()
        expect(files.map((f) => f.replace(/^home\.[^.]*\./, ''))).toEqual(['btrfs.gpg', 'btrfs.gpg.info'])
        const restored = await runCli(['restore', 'streams', 'latest', 'restored'], dir)
        expect(restored.code, restored.stderr).toBe(0)
      })
      const [name] = await readdir(join(dir, 'restored'))
      expect(readFileSync(join(dir, 'restored', name!, 'a.txt'), 'utf8')).toBe(readFileSync(join(dir, 'home/a.txt'), 'utf8'))
      const noRecipient = await runCli(['run', 'home', '--raw-target', 'streams2', '--raw-encrypt', 'gpg', '--state-dir', 'state2'], dir)
      expect(noRecipient).toMatchObject({ code: 2, stderr: expect.stringMatching(/encrypted stream files need a gpg recipient[\s\S]*--raw-gpg-recipient KEY/) })
      const notOn = await runCli(['run', 'home', '--raw-target', 'streams2', '--raw-gpg-recipient', 'backup@example.org', '--state-dir', 'state2'], dir)
      expect(notOn).toMatchObject({ code: 2, stderr: expect.stringMatching(/gpg recipients are given, but the stream files are not encrypted[\s\S]*--raw-encrypt gpg/) })
      expect(existsSync(join(dir, 'streams2'))).toBe(false)
    } finally {
      await keys.cleanup()
    }
  })

  it('--pipe-target: each stream to a command with its facts in the environment, incrementals on what the command took; restorable by hand, full first', async () => {
    const out = join(dir, 'piped')
    await mkdir(out)
    // fails while the marker exists, without reading its stdin: the sender sees a broken pipe
    const command = `[ ! -e ${out}/fail ] && cat > "${out}/$BBACKUP_FILE" && echo "$BBACKUP_MODE $BBACKUP_PARENT $BBACKUP_CHAIN" >> ${out}/log`
    const job = ['home', '--pipe-target', command, '--state-dir', 'state']
    expect((await runCli(['run', ...job, '-q'], dir)).code).toBe(0)
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    await writeFile(join(out, 'fail'), '')
    const failed = await runCli(['run', ...job, '--json'], dir)
    expect(failed.code).toBe(10)
    expect(JSON.parse(failed.stdout).targets).toMatchObject([{ ok: false, error: { code: 'COMMAND_FAILED', message: expect.stringMatching(/^the pipe command \(.*\) failed \(exit 1\)$/) } }])
    execFileSync('rm', [join(out, 'fail')])
    const second = await runCli(['run', ...job, '--no-snapshot', '--json'], dir)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    const [first, newer] = (await readdir(join(dir, 'home/.snapshots'))).sort()
    expect(JSON.parse(second.stdout).targets).toMatchObject([{ ok: true, mode: 'incremental', parent: first, snapshot: newer }])
    expect(readFileSync(join(out, 'log'), 'utf8')).toBe(`full  0\nincremental ${first} 1\n`)
    const listed = await runCli(['list', ...job], dir)
    expect(listed.stdout).toMatch(/\(target\): 2 backups/)
    // what the command stored is a real chain of send streams: received full first, the newest has the change
    await mkdir(join(dir, 'restored'))
    for (const name of [first, newer]) execFileSync('btrfs', ['receive', '-f', join(out, `${name}.btrfs`), join(dir, 'restored')])
    expect(readFileSync(join(dir, 'restored', newer ?? '', 'a.txt'), 'utf8')).toBe('changed\n')
    const restore = await runCli(['verify', ...job], dir)
    expect(restore.code).not.toBe(0)
    expect(restore.stdout + restore.stderr).toMatch(/cannot verify a pipe target .*: the streams are wherever that command put them/)
    // the newest is incremental on the first: a prune keeps the chain whole
    expect((await runCli(['prune', ...job, '--keep-backups', '1', '-q'], dir)).code).toBe(0)
    expect((await runCli(['list', ...job], dir)).stdout).toMatch(/\(target\): 2 backups/)
    // a new chain (full every 1), then the prune forgets the old chain's ledger entries, and leaves the command's files alone
    const third = await runCli(['run', ...job, '--raw-full-every', '1', '--json'], dir)
    expect(JSON.parse(third.stdout).targets).toMatchObject([{ ok: true, mode: 'full' }])
    expect((await runCli(['prune', ...job, '--keep-backups', '1', '-q'], dir)).code).toBe(0)
    expect((await runCli(['list', ...job], dir)).stdout).toMatch(/\(target\): 1 backup\b/)
    expect((await readdir(out)).filter((f) => f.endsWith('.btrfs'))).toHaveLength(3)
  })

  it('a config job may have raw_targets only; raw_full_every = 1 makes every stream full; a bad value names the key', async () => {
    const config = join(dir, 'bbackup.toml')
    await writeFile(config, `state_dir = "${join(dir, 'state')}"\n[jobs.home]\nsource = "${join(dir, 'home')}"\nraw_targets = ["${join(dir, 'streams')}"]\nraw_full_every = 1\n`)
    for (let i = 0; i < 2; i++) {
      const r = await runCli(['run', '-c', config, '--json'], dir)
      expect(r.code, r.stderr).toBe(0)
      expect(JSON.parse(r.stdout).targets).toMatchObject([{ ok: true, mode: i === 0 ? 'full' : 'incremental' }])
      await writeFile(join(dir, 'home/a.txt'), `run ${i}\n`)
    }
    const r = await runCli(['run', '-c', config, '--json'], dir)
    // the third stream would be the second incremental in the chain: a new full one instead
    expect(JSON.parse(r.stdout).targets).toMatchObject([{ ok: true, mode: 'full', warnings: [expect.stringMatching(/^a new chain starts with a full stream: 1 incremental since the last full one, up to \S+ \(full every 1\)$/)] }])
    await writeFile(config, `[jobs.home]\nsource = "/home"\nraw_targets = ["/x"]\nraw_full_every = 0\n`)
    expect(await runCli(['run', '-c', config], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config}:4: [jobs.home] raw_full_every: 0 is not a whole number of at least 1`) })
    await writeFile(config, `[jobs.home]\nsource = "/home"\npipe_targets = [""]\n`)
    expect(await runCli(['run', '-c', config], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config}:3: [jobs.home] pipe_targets: must be a list of commands`) })
    await mkdir(join(dir, 'plain'))
    expect(await runCli(['run', 'plain', '--pipe-target', 'cat >/dev/null', '--state-dir', 'state'], dir)).toMatchObject({ code: 2, stderr: expect.stringMatching(/pipe targets get btrfs send streams, but plain is backed up by the rsync driver/) })
  })

  it('-i/--ionice and --nice: the run and every command it starts at that priority; bad values refused before anything runs', async () => {
    // in a Node of its own: the priority of the process that runs the job is what changes
    const bbackup = (...args: string[]) => spawnSync(process.execPath, ['--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/cli/src/cli.ts'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 })
    const seen = join(dir, 'seen')
    // the pipe target is a command the run starts: it says its own I/O class and niceness
    const command = `ionice -p $$ > ${seen}; cut -d' ' -f19 /proc/$$/stat >> ${seen}; cat >/dev/null`
    const before = spawnSync('sh', ['-c', `ionice -p $$; cut -d' ' -f19 /proc/$$/stat`], { encoding: 'utf8' }).stdout
    expect(before).not.toMatch(/^idle/)
    const ran = bbackup('run', join(dir, 'home'), '--pipe-target', command, '--state-dir', join(dir, 'state'), '--ionice', 'idle', '--nice', '7')
    expect({ status: ran.status, stderr: ran.status === 0 ? '' : ran.stderr }).toEqual({ status: 0, stderr: '' })
    const [ioClass, niceness] = readFileSync(seen, 'utf8').trim().split('\n')
    expect(ioClass).toBe('idle')
    expect(Number(niceness)).toBe(Math.min(19, Number(before.trim().split('\n')[1]) + 7))
    for (const [args, message] of [[['--ionice', 'sometimes'], /--ionice sometimes is not an I\/O scheduling class/], [['--nice', '0'], /--nice 0 is not an adjustment from 1 to 19/], [['--nice', 'x'], /--nice x is not/]] as const) {
      const refused = bbackup('run', join(dir, 'home'), '--pipe-target', 'cat >/dev/null', '--state-dir', join(dir, 'state2'), ...args)
      expect(refused.status).toBe(2)
      expect(refused.stderr).toMatch(message)
      expect(existsSync(join(dir, 'state2'))).toBe(false)
    }
  })

  it('doctor checks every configured job: source, state, each target and its free space, with the fix for each problem (exit 1)', async () => {
    const config = join(dir, 'bbackup.toml')
    await mkdir(join(dir, 'plain'))
    await writeFile(config, [
      `state_dir = "${join(dir, 'state')}"`,
      '[jobs.home]', `source = "${join(dir, 'home')}"`, `targets = ["${join(dir, 'backup')}"]`,
      '[jobs.broken]', `source = "${join(dir, 'plain')}"`, 'driver = "btrfs"', `targets = ["${join(dir, 'nodisk/backup')}"]`,
      '',
    ].join('\n'))
    const healthy = await runCli(['doctor', '-c', config, '-j', 'home'], dir)
    expect(healthy.code, healthy.stdout + healthy.stderr).toBe(0)
    // the target is not there yet: a check does not make it, it says the first backup will
    expect(healthy.stdout).toMatch(/^job home:\n {2}ok {5} source .*home: ready for the btrfs driver\n {2}ok {5} state .*: no unfinished transfer; not locked\n {2}ok {5} target .*backup: ready \(the first backup makes the directory\); [\d.]+ GiB free of [\d.]+ GiB\n/)
    expect(healthy.stdout).toMatch(/no problem found\n$/)
    expect(await readdir(dir)).not.toContain('backup')
    expect((await runCli(['run', 'home', 'backup', '--state-dir', join(dir, 'state'), '-q'], dir)).code).toBe(0)
    expect((await runCli(['doctor', '-c', config, '-j', 'home'], dir)).stdout).toMatch(/ok {5} target .*backup: ready; [\d.]+ GiB free of [\d.]+ GiB\n/)

    const all = await runCli(['doctor', '-c', config], dir)
    expect(all.code).toBe(1)
    expect(all.stdout).toMatch(/job broken:\n {2}PROBLEM source .*plain: .*is a directory, not a btrfs subvolume.*\(SOURCE_NOT_SUBVOLUME\)\n {10}fix: convert it/)
    expect(all.stdout).toMatch(/PROBLEM target .*nodisk\/backup: .*does not exist, nor does its parent \(TARGET_UNAVAILABLE\)\n {10}fix: mount the backup disk/)
    expect(all.stdout).toMatch(/2 problems found\n$/)

    // a target filesystem that is nearly full
    const free = Number(execFileSync('df', ['--output=avail', '-B1', dir], { encoding: 'utf8' }).split('\n')[1])
    execFileSync('fallocate', ['-l', String(Math.max(0, free - 4 * 1024 * 1024)), join(dir, 'filler')])
    const full = await runCli(['doctor', '-c', config, '-j', 'home'], dir)
    expect(full).toMatchObject({ code: 1, stdout: expect.stringMatching(/PROBLEM target .*backup: only [\d.]+ GiB free of [\d.]+ GiB\n {10}fix: make room: prune old backups/) })
  })
})
