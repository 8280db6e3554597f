import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { lstat, open, readdir, readFile, stat, statfs, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import parsePrometheus from 'parse-prometheus-text-format'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { mountLoopFilesystem, requireTools, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { finished, patch, runCli, sameBytes, spawnTs } from './helpers.js'

const MiB = 1024 * 1024

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'cp', 'cmp', 'mkfs.ext4', 'losetup'], { root: true }))('bbackup init/backup/status/verify/restore -b (block volumes)', () => {
  let fs: LoopFilesystem
  let dir: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    dir = fs.mountPoint
    const h = await open(join(dir, 'vm.img'), 'w')
    await h.write(randomBytes(12 * MiB), 0, 12 * MiB, 0)
    await h.truncate(32 * MiB)
    await h.close()
  })
  afterEach(async () => {
    await fs.cleanup()
  })

  it('runs the backy-style cycle from the command line', async () => {
    const init = await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '1M'], dir)
    expect(init).toMatchObject({ code: 0, stdout: expect.stringContaining('chunks of 1.0 MiB, schedule daily=1d:7,weekly=1w:4,monthly=30d:3') as unknown })
    const first = await runCli(['backup', '-b', 'backy/vm'], dir)
    expect(first.code).toBe(0)
    expect(first.stdout).toMatch(/^revision [0-9a-f-]{36} \(daily, weekly, monthly\): full, 32\.0 MiB; 12\.0 MiB written in 12 of 32 chunks/)
    // nothing due: silent, exit 0 (cron runs it often)
    expect(await runCli(['backup', '-b', 'backy/vm'], dir)).toEqual({ code: 0, stdout: '', stderr: '' })
    expect((await runCli(['status', '-b', 'backy/vm'], dir)).stdout).toMatch(/\n1 revision, 0 verified, 0 distrusted; 12\.0 MiB written in all/)
    const forced = await runCli(['backup', '-b', 'backy/vm', '-f', '-t', 'manual:pre-upgrade', '--json'], dir)
    expect(JSON.parse(forced.stdout)).toMatchObject({ skipped: false, revision: { tags: ['daily', 'manual:pre-upgrade'], stats: { chunksWritten: 0 } } })

    const status = await runCli(['status', '-b', 'backy/vm'], dir)
    expect(status.code).toBe(0)
    expect(status.stdout).toContain('UUID')
    expect(status.stdout).toContain('manual:pre-upgrade')
    expect(status.stdout).toMatch(/2 revisions, 0 verified, 0 distrusted; 12\.0 MiB written in all/)
    const json = JSON.parse((await runCli(['status', '-b', 'backy/vm', '--json'], dir)).stdout) as { revisions: { uuid: string }[]; bases: { path: string; revision: string; size: number }[] }
    expect(json.revisions).toHaveLength(2)
    // the copy the newest revision was read from, kept beside the image for the next backup: shown, with where it is
    const newest = json.revisions[1]?.uuid ?? ''
    expect(json.bases).toEqual([{ kind: 'reflink-copy', path: expect.stringMatching(new RegExp(`^${dir}/\\.vm\\.img\\.bbackup-[0-9a-f]{8}-base-${newest}$`)) as unknown, revision: newest, size: 32 * MiB }])
    expect(status.stdout).toContain(`base copy of ${newest.slice(0, 8)} beside the image (read-only; the next backup reads only what differs from it): ${json.bases[0]?.path ?? ''}`)

    const verify = await runCli(['verify', '-b', 'backy/vm', 'latest', '--subset', '1/2'], dir)
    expect(verify).toMatchObject({ code: 0, stdout: expect.stringContaining('subset 1/2') as unknown })
    const restore = await runCli(['restore', '-b', 'backy/vm', '0', 'restored.img'], dir)
    expect(restore.code).toBe(0)
    expect(sameBytes(join(dir, 'restored.img'), join(dir, 'vm.img'))).toBe(true)
    expect(await runCli(['restore', '-b', 'backy/vm', 'latest'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('restore -b takes a revision and a destination') as unknown })
 
    // on a terminal the progress is drawn against the volume's size (exact: no ~), and erased at the end
    const drawn = await runCli(['backup', '-b', 'backy/vm', '-f'], dir, { isTTY: true })
    expect(drawn.code).toBe(0)
    expect(drawn.stderr).toMatch(/\[K {2}\d+% {2}[\d.]+ (B|KiB|MiB) of 32\.0 MiB/)
    expect(drawn.stderr.endsWith(`\r${String.fromCharCode(27)}[K`)).toBe(true)
  })

  it('under umask 0 (a service manager\'s), the backup directory and what is in it are not writable by others', async () => {
    const before = process.umask(0)
    try {
      expect((await runCli(['init', '-b', 'backy/vm', 'vm.img'], dir)).code).toBe(0)
      expect((await runCli(['backup', '-b', 'backy/vm'], dir)).code).toBe(0)
      expect((await runCli(['backup', '-b', 'backy/vm', '-f'], dir)).code).toBe(0)
    } finally {
      process.umask(before)
    }
    const volume = join(dir, 'backy/vm')
    expect((await stat(volume)).mode & 0o777).toBe(0o755)
    const writable = []
    for (const name of await readdir(volume)) if (((await lstat(join(volume, name))).mode & 0o022) !== 0 && name !== 'latest') writable.push(name)
    expect(writable).toEqual([])
  })

  it('status -b names the run that holds the volume now, and does not call what it writes a leftover', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img'], dir)).code).toBe(0)
    const partial = '00000000-0000-4000-8000-000000000000.img.partial'
    await writeFile(join(dir, 'backy/vm', partial), '')
    const lock = (await localTransport(join(dir, 'backy/vm')).lock(join(dir, 'backy/vm/.lock'), { command: 'backup' }))._unsafeUnwrap()
    try {
      const busy = await runCli(['status', '-b', 'backy/vm'], dir)
      expect(busy.stdout).toMatch(new RegExp(`\n  running now: backup \\(pid ${process.pid} on ${hostname()}, since \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC\\)\n`))
      expect(busy.stdout).toContain(`  unfinished (being written now, or left by an earlier run): ${partial}\n`)
      expect(JSON.parse((await runCli(['status', '-b', 'backy/vm', '--json'], dir)).stdout)).toMatchObject({ runningNow: { command: 'backup', pid: process.pid } })
    } finally {
      await lock.release()
    }
    const idle = await runCli(['status', '-b', 'backy/vm'], dir)
    expect(idle.stdout).not.toContain('running now')
    expect(idle.stdout).toContain(`  unfinished (removed by the next backup): ${partial}\n`)
  })

  it('refuses bad input with the fix, and changes nothing', async () => {
    expect(await runCli(['backup', '-b', 'nowhere'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('bbackup init -b') as unknown })
    expect(await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '3000'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('multiple of 4K') as unknown })
    expect(await runCli(['init', '-b', 'backy/vm', 'vm.img', '--schedule', 'daily'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('NAME=INTERVAL:KEEP') as unknown })
    expect(await runCli(['init', '-b', 'backy/vm', 'missing.img'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('does not exist') as unknown })
    expect(await readdir(dir)).not.toContain('backy')
    expect(await runCli(['init', '-b', 'vm.img', 'vm.img'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${dir}/vm.img is not a directory`) as unknown })
    // a directory with other files in it is not taken over
    execFileSync('mkdir', ['-p', join(dir, 'used')])
    execFileSync('touch', [join(dir, 'used/notes.txt')])
    expect(await runCli(['init', '-b', 'used', 'vm.img'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('is not empty') as unknown })
    expect(await readdir(join(dir, 'used'))).toEqual(['notes.txt'])
    // a volume.json edited by hand: a chunk size bbackup cannot work with is named, nothing is written
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img'], dir)).code).toBe(0)
    const config = join(dir, 'backy/vm/volume.json')
    await writeFile(config, (await readFile(config, 'utf8')).replace(/"chunkSize": \d+/, '"chunkSize": 0'))
    expect(await runCli(['backup', '-b', 'backy/vm'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config} gives a chunk size of 0 bytes, which is not usable`) as unknown })
    expect(await readdir(join(dir, 'backy/vm'))).toEqual(['volume.json'])
  })

  it('refuses a backup directory without reflinks, and a source that cannot be frozen unless --no-snapshot', async () => {
    const ext4 = await mountLoopFilesystem({ type: 'ext4', sizeMiB: 64 })
    try {
      const onExt4 = await runCli(['init', '-b', join(ext4.mountPoint, 'vm'), join(dir, 'vm.img')], dir)
      expect(onExt4).toMatchObject({ code: 1, stderr: expect.stringContaining('(TARGET_NO_REFLINK)') as unknown })
      // the directory init made for the volume is not left behind
      expect(await readdir(ext4.mountPoint)).toEqual(['lost+found'])
      execFileSync('cp', [join(dir, 'vm.img'), join(ext4.mountPoint, 'ext4.img')])
      const live = await runCli(['init', '-b', 'backy/e', join(ext4.mountPoint, 'ext4.img')], dir)
      expect(live).toMatchObject({ code: 1, stderr: expect.stringContaining('--no-snapshot') as unknown })
      expect(live.stderr).toContain('(NO_CONSISTENT_SNAPSHOT)')
      expect(await readdir(dir)).not.toContain('backy')
      // a source given as a symlink (here on ext4) to an image on btrfs is frozen beside the image, where reflinks work
      execFileSync('ln', ['-s', join(dir, 'vm.img'), join(ext4.mountPoint, 'link.img')])
      expect(await runCli(['init', '-b', 'backy/l', join(ext4.mountPoint, 'link.img')], dir)).toMatchObject({ code: 0 })
      expect(await runCli(['backup', '-b', 'backy/l'], dir)).toMatchObject({ code: 0 })
      const again = await runCli(['backup', '-b', 'backy/l', '-f'], dir)
      expect(again).toMatchObject({ code: 0, stdout: expect.stringContaining('32.0 MiB not read: unchanged on disk') as unknown })
      expect((await readdir(dir)).filter((n) => n.startsWith('.link.img.bbackup-'))).toHaveLength(1)
      expect((await readdir(ext4.mountPoint)).sort()).toEqual(['ext4.img', 'link.img', 'lost+found'])
      expect((await runCli(['init', '-b', 'backy/e', join(ext4.mountPoint, 'ext4.img'), '--no-snapshot'], dir)).code).toBe(0)
      const backup = await runCli(['backup', '-b', 'backy/e'], dir)
      expect(backup.code).toBe(0)
      expect(backup.stdout).toContain('warning: ')
      expect(backup.stdout).toContain('read live, without a snapshot')
      // -q prints only errors and warnings: this one still, on stderr
      const quiet = await runCli(['backup', '-b', 'backy/e', '-f', '-q'], dir)
      expect(quiet).toMatchObject({ code: 0, stdout: '' })
      expect(quiet.stderr).toMatch(/^warning: .*read live, without a snapshot/)
    } finally {
      await ext4.cleanup()
    }
  })
  it('backs up a block device read live (--no-snapshot): every byte of it, then the chunks that changed', async () => {
    const device = execFileSync('losetup', ['-f', '--show', join(dir, 'vm.img')], { encoding: 'utf8' }).trim()
    try {
      expect(await runCli(['init', '-b', 'backy/d', device], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('(NO_CONSISTENT_SNAPSHOT)') as unknown })
      expect((await runCli(['init', '-b', 'backy/d', device, '--no-snapshot', '--chunk-size', '1M'], dir)).code).toBe(0)
      const first = await runCli(['backup', '-b', 'backy/d', '--json'], dir)
      expect(first.code, first.stderr).toBe(0)
      // a device has no holes to skip (its size in stat is 0): it is read whole, and its zeros stay holes in the revision
      expect(JSON.parse(first.stdout)).toMatchObject({ revision: { size: 32 * MiB, stats: { chunks: 32, chunksWritten: 12, zeroChunks: 20, bytesRead: 32 * MiB } } })
      expect(sameBytes(join(dir, 'backy/d/latest'), device)).toBe(true)
      await patch(device, 5 * MiB + 4096, randomBytes(4096))
      const second = await runCli(['backup', '-b', 'backy/d', '-f', '--json'], dir)
      expect(JSON.parse(second.stdout)).toMatchObject({ revision: { stats: { chunksWritten: 1, bytesWritten: MiB } } })
      expect(sameBytes(join(dir, 'backy/d/latest'), device)).toBe(true)
      expect((await runCli(['verify', '-b', 'backy/d'], dir)).code).toBe(0)
    } finally {
      execFileSync('losetup', ['-d', device])
    }
  })

  it("started by cron (PATH=/usr/bin:/bin, which lacks /usr/sbin and so filefrag), a backup still skips the chunks unchanged on disk", async () => {
    // what the test is about: the extents come from filefrag, which cron's PATH does not reach
    expect(['/usr/bin/filefrag', '/bin/filefrag'].filter((p) => existsSync(p))).toEqual([])
    expect((await runCli(['init', '-b', 'backy/c', 'vm.img', '--chunk-size', '1M'], dir)).code).toBe(0)
    expect((await runCli(['backup', '-b', 'backy/c'], dir)).code).toBe(0)
    await patch(join(dir, 'vm.img'), 3 * MiB, randomBytes(4096))
    const cron = await finished(spawnTs('fixtures/cli.ts', ['backup', '-b', join(dir, 'backy/c'), '-f', '--json'], { env: { PATH: '/usr/bin:/bin' } }))
    expect(cron.code, cron.stderr).toBe(0)
    expect(JSON.parse(cron.stdout)).toMatchObject({ revision: { stats: { chunksWritten: 1, bytesRead: MiB } } })
    expect(sameBytes(join(dir, 'backy/c/latest'), join(dir, 'vm.img'))).toBe(true)
  })

  it('bbackup run backs up the block volumes of the config when they are due, next to its other jobs', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img'], dir)).code).toBe(0)
    await writeFile(join(dir, 'bbackup.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\n')
    const dry = await runCli(['run', '-c', 'bbackup.toml', '-n'], dir)
    expect(dry).toMatchObject({ code: 0, stderr: expect.stringContaining('would back up') as unknown })
    expect(await readdir(join(dir, 'backy/vm'))).toEqual(['volume.json'])
    const first = await runCli(['run', '-c', 'bbackup.toml', '--json'], dir)
    expect(first.code).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ job: 'vm', skipped: false, revision: { parent: null, stats: { chunksWritten: 3 } } })
    const second = await runCli(['run', '-c', 'bbackup.toml', '-j', 'vm', '--json'], dir)
    expect(JSON.parse(second.stdout)).toMatchObject({ job: 'vm', skipped: true })
    // a block job takes driver and backup_dir only: the rest is in its volume.json
    await writeFile(join(dir, 'bad.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\ntargets = ["/x"]\n')
    expect(await runCli(['run', '-c', 'bad.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('a block job has driver, backup_dir, groups, auto, warn_age, critical_age, ssh_identity, ssh_known_hosts, ssh_options, ssh_program, stream_compress, rate_limit, pre_exec, pre_snapshot_exec, post_snapshot_exec, post_exec, hook_timeout only') as unknown })
    await writeFile(join(dir, 'bad.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\nssh_options = "Port=2222"\n')
    expect(await runCli(['run', '-c', 'bad.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('ssh_options') as unknown })
    expect(await runCli(['list', '-c', 'bbackup.toml'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('status -b') as unknown })
  })

  it('bbackup run --preserve (or --preserve-backups) expires no revision of its block volumes', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '1M', '--schedule', 'often=1s:1'], dir)).code).toBe(0)
    await writeFile(join(dir, 'bbackup.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\n')
    const revisions = async () => (await readdir(join(dir, 'backy/vm'))).filter((n) => n.endsWith('.rev')).length
    for (const preserve of ['--preserve', '--preserve-backups']) {
      await new Promise((r) => setTimeout(r, 1100))
      expect(await runCli(['run', '-c', 'bbackup.toml', preserve, '-q'], dir)).toMatchObject({ code: 0 })
    }
    expect(await revisions()).toBe(2)
    // --preserve-snapshots keeps source snapshots: a block volume's revisions are its backups
    await new Promise((r) => setTimeout(r, 1100))
    expect(await runCli(['run', '-c', 'bbackup.toml', '--preserve-snapshots', '-q'], dir)).toMatchObject({ code: 0 })
    expect(await revisions()).toBe(1)
  })

  it('bbackup run puts its block volumes in the metrics file, the transaction log and --log-json, as its other jobs', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '1M', '--schedule', 'often=2s:1'], dir)).code).toBe(0)
    await writeFile(join(dir, 'bbackup.toml'), `metrics_file = "${dir}/bbackup.prom"\ntransaction_log = "${dir}/bbackup.log"\n[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\n`)
    const events = (stderr: string): Record<string, unknown>[] => stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
    const first = await runCli(['run', '-c', 'bbackup.toml', '--log-json'], dir)
    expect(first.code).toBe(0)
    const [started, finished] = events(first.stderr)
    const vol = join(dir, 'backy/vm')
    expect(started).toMatchObject({ type: 'transfer-started', target: vol, mode: 'full', from: join(dir, 'vm.img') })
    const uuid = started?.snapshot as string
    expect(finished).toMatchObject({ type: 'transfer-finished', target: vol, snapshot: uuid, bytes: 12 * MiB })
    // the next slot of the 2 s tag: a new revision, the first one's tag expires
    await new Promise((resolve) => setTimeout(resolve, 2500))
    const second = await runCli(['run', '-c', 'bbackup.toml', '--log-json'], dir)
    expect(second.code).toBe(0)
    const later = events(second.stderr)
    expect(later[0]).toMatchObject({ type: 'transfer-started', mode: 'incremental', parent: uuid })
    expect(later).toContainEqual(expect.objectContaining({ type: 'pruned', at: vol, snapshot: uuid, path: join(vol, uuid) }))
    expect(await readdir(vol)).not.toContain(`${uuid}.img`)

    const log = (await readFile(join(dir, 'bbackup.log'), 'utf8')).split('\n').map((l) => l.split(' ').slice(1).join(' '))
    expect(log).toContain(`transfer starting ${vol}/${uuid} ${join(dir, 'vm.img')} - # full`)
    expect(log).toContainEqual(expect.stringMatching(new RegExp(`^transfer success ${vol}/${uuid} ${join(dir, 'vm.img')} - # 12.0 MiB in `)))
    expect(log).toContainEqual(expect.stringMatching(new RegExp(`^transfer starting ${vol}/\\S+ ${join(dir, 'vm.img')} - # incremental from ${uuid}$`)))
    expect(log).toContainEqual(expect.stringMatching(new RegExp(`^delete success ${vol}/${uuid} - - # its tags expired \\(often\\)$`)))

    const metrics = Object.fromEntries(parsePrometheus(await readFile(join(dir, 'bbackup.prom'), 'utf8')).map((f) => [f.name, f.metrics]))
    const one = (name: string): unknown => metrics[name]?.map((m) => ({ ...m.labels, value: Number(m.value) }))
    expect(one('bbackup_run_success')).toEqual([{ job: 'vm', value: 1 }])
    expect(one('bbackup_sent_snapshots')).toEqual([{ job: 'vm', target: vol, value: 1 }])
    expect(one('bbackup_sent_bytes')).toEqual([{ job: 'vm', target: vol, value: 0 }])
    expect(one('bbackup_pruned_snapshots')).toEqual([{ job: 'vm', target: vol, value: 1 }])
    expect(one('bbackup_kept_snapshots')).toEqual([{ job: 'vm', target: vol, value: 1 }])
    expect(one('bbackup_last_success_timestamp_seconds')).toEqual([{ job: 'vm', target: vol, value: expect.any(Number) as unknown }])

    // a volume that cannot be backed up: a failed run in the metrics and the log, its last success kept
    await writeFile(join(dir, 'backy/vm/volume.json'), '{')
    const broken = await runCli(['run', '-c', 'bbackup.toml'], dir)
    expect(broken.code).not.toBe(0)
    const after = Object.fromEntries(parsePrometheus(await readFile(join(dir, 'bbackup.prom'), 'utf8')).map((f) => [f.name, f.metrics]))
    expect(after.bbackup_run_success?.map((m) => Number(m.value))).toEqual([0])
    expect(after.bbackup_last_success_timestamp_seconds).toEqual(metrics.bbackup_last_success_timestamp_seconds)
    expect(await readFile(join(dir, 'bbackup.log'), 'utf8')).toMatch(new RegExp(`job ERROR - ${vol} - # `))
  })

  it('prune -b expires by a changed schedule at once; distrust -b keeps a revision from being a parent until a clean verify', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '1M', '--schedule', 'often=1h:5'], dir)).code).toBe(0)
    for (let i = 0; i < 3; i++) expect((await runCli(['backup', '-b', 'backy/vm', '--force'], dir)).code).toBe(0)
    const revisions = async (): Promise<{ uuid: string; trust: string; tags: string[]; parent: string | null }[]> =>
      (JSON.parse((await runCli(['status', '-b', 'backy/vm', '--json'], dir)).stdout) as { revisions: { uuid: string; trust: string; tags: string[]; parent: string | null }[] }).revisions
    const [first, second, third] = (await revisions()).map((r) => r.uuid)
    // a new schedule without the tag: every revision loses it; all but the newest go
    const file = join(dir, 'backy/vm/volume.json')
    await writeFile(file, JSON.stringify({ ...JSON.parse(await readFile(file, 'utf8')) as object, schedule: 'daily=1d:7' }))
    const dry = await runCli(['prune', '-b', 'backy/vm', '-n'], dir)
    expect(dry).toMatchObject({ code: 0, stdout: `would expire ${first}\nwould expire ${second}\n${join(dir, 'backy/vm')}: 1 revision would be left\n` })
    expect(await revisions()).toHaveLength(3)
    const pruned = await runCli(['prune', '-b', 'backy/vm', '-v'], dir)
    expect(pruned).toMatchObject({ code: 0, stdout: expect.stringContaining(`expired ${first}\nexpired ${second}\nkept ${third} without tags: the newest revision\n`) as unknown })
    expect((await revisions()).map((r) => r.uuid)).toEqual([third])
    expect((await readdir(join(dir, 'backy/vm'))).filter((f) => f.startsWith(first ?? '?') || f.startsWith(second ?? '?'))).toEqual([])
    expect(await runCli(['prune', '-b', 'backy/vm', '/elsewhere'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('prune -b takes no source') as unknown })

    expect(await runCli(['distrust', '-b', 'backy/vm', 'latest'], dir)).toMatchObject({ code: 0, stdout: `distrusted ${third}\n` })
    expect((await revisions())[0]?.trust).toBe('distrusted')
    // no trusted parent left: the next revision is written whole; the distrusted one, kept without tags only while it was the newest, goes
    const next = JSON.parse((await runCli(['backup', '-b', 'backy/vm', '--force', '--json'], dir)).stdout) as { revision: { uuid: string; parent: string | null; stats: { chunksWritten: number } } }
    expect(next.revision).toMatchObject({ parent: null, stats: { chunksWritten: 12 } })
    expect((await revisions()).map((r) => r.uuid)).toEqual([next.revision.uuid])
    // a clean verify trusts a distrusted revision again
    expect(await runCli(['distrust', '-b', 'backy/vm', 'latest'], dir)).toMatchObject({ code: 0, stdout: `distrusted ${next.revision.uuid}\n` })
    expect(await runCli(['verify', '-b', 'backy/vm', next.revision.uuid], dir)).toMatchObject({ code: 0, stdout: expect.stringContaining('ok, verified') as unknown })
    expect((await revisions())[0]?.trust).toBe('verified')
    expect(await runCli(['distrust', '-b', 'backy/vm', 'nosuchtag'], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining("no revision matches 'nosuchtag'") as unknown })
  })

  it('status --check judges the block volumes of the config: the newest revision\'s age, a volume without revisions, damage a verify found', async () => {
    expect((await runCli(['init', '-b', 'backy/vm', 'vm.img', '--chunk-size', '1M'], dir)).code).toBe(0)
    await writeFile(join(dir, 'bbackup.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\nwarn_age = "2h"\n')
    const empty = await runCli(['status', '-c', 'bbackup.toml', '--check'], dir)
    expect(empty).toMatchObject({ code: 2, stdout: `BBACKUP CRITICAL - vm: ${join(dir, 'backy/vm')} has no revision\nvm: critical\n  ${join(dir, 'backy/vm')} has no revision\n` })
    expect((await runCli(['backup', '-b', 'backy/vm'], dir)).code).toBe(0)
    expect(await runCli(['status', '-c', 'bbackup.toml', '--check'], dir)).toMatchObject({ code: 0, stdout: 'BBACKUP OK - 1 job backed up in time\nvm: ok\n' })
    await new Promise((r) => setTimeout(r, 1100))
    const old = await runCli(['status', '-c', 'bbackup.toml', '--check', '--warn-age', '0m', '--json'], dir)
    expect(old.code).toBe(1)
    expect(JSON.parse(old.stdout)).toEqual({ verdict: 'warning', jobs: [{ job: 'vm', verdict: 'warning', reasons: [`${join(dir, 'backy/vm')}: the newest revision is 0 min old (warning after 0 min)`] }] })

    // bit rot in the revision, found by verify: a warning until a good backup follows
    const [revision] = (await readdir(join(dir, 'backy/vm'))).filter((n) => n.endsWith('.img'))
    const stored = join(dir, 'backy/vm', revision!)
    execFileSync('chmod', ['u+w', stored])
    const h = await open(stored, 'r+')
    await h.write(Buffer.from('rot'), 0, 3, 1000)
    await h.close()
    expect((await runCli(['verify', '-b', 'backy/vm'], dir)).code).toBe(1)
    const damaged = await runCli(['status', '-c', 'bbackup.toml', '--check'], dir)
    expect(damaged).toMatchObject({ code: 1, stdout: expect.stringContaining(`vm: warning\n  ${join(dir, 'backy/vm')}: 1 revision is distrusted (damage a verify found, or marked by hand; the next backup is built from the newest good revision)\n`) })
    await writeFile(join(dir, 'bad.toml'), '[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\ncritical_age = "soon"\n')
    expect(await runCli(['status', '-c', 'bad.toml', '--check'], dir)).toMatchObject({ code: 3, stdout: expect.stringMatching(/^BBACKUP UNKNOWN - .*bad.toml:4: \[jobs.vm\] critical_age: "soon" is not a duration/) })
  })
})

describe.runIf(requireTools(['mkfs.xfs', 'mount', 'cp', 'cmp', 'fallocate', 'filefrag', 'losetup'], { root: true }))('block volumes on XFS (reflink=1, mkfs.xfs\'s default): the image on one, the backup directory on another', () => {
  let images: LoopFilesystem | undefined
  let backups: LoopFilesystem | undefined
  afterEach(async () => {
    await images?.cleanup()
    await backups?.cleanup()
  })

  it('freezes the image by a reflink copy, writes revisions as reflinks of the one before, skips what the extents say is unchanged; an XFS without reflinks is refused', async () => {
    images = await mountLoopFilesystem({ type: 'xfs', sizeMiB: 300 })
    backups = await mountLoopFilesystem({ type: 'xfs', sizeMiB: 300 })
    const image = join(images.mountPoint, 'vm.img')
    const dir = join(backups.mountPoint, 'backy/vm')
    const h = await open(image, 'w')
    await h.write(randomBytes(12 * MiB), 0, 12 * MiB, 0)
    await h.truncate(32 * MiB)
    await h.close()
    // preallocated and never written: XFS's unwritten extents, which read as zeros
    execFileSync('fallocate', ['-o', String(16 * MiB), '-l', String(4 * MiB), image])
    expect((await runCli(['init', '-b', dir, image, '--chunk-size', '1M'], images.mountPoint)).code).toBe(0)
    const first = await runCli(['backup', '-b', dir, '--json'], images.mountPoint)
    expect(first.code, first.stderr).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ revision: { size: 32 * MiB, stats: { chunks: 32, chunksWritten: 12 } } })
    expect(sameBytes(join(dir, 'latest'), image)).toBe(true)

    // a write into a written chunk and one into the preallocated range (an unwritten extent made written)
    await patch(image, 3 * MiB + 4096, randomBytes(4096))
    await patch(image, 17 * MiB, randomBytes(8192))
    const free = async (): Promise<number> => {
      const s = await statfs(dir)
      return s.bfree * s.bsize
    }
    const before = await free()
    const second = await runCli(['backup', '-b', dir, '-f', '--json'], images.mountPoint)
    expect(second.code, second.stderr).toBe(0)
    expect(JSON.parse(second.stdout)).toMatchObject({ revision: { stats: { chunksWritten: 2, bytesWritten: 2 * MiB, bytesRead: 2 * MiB } } })
    expect(sameBytes(join(dir, 'latest'), image)).toBe(true)
    // the new revision shares every block but the two chunks written with the one before
    expect(before - (await free())).toBeLessThan(4 * MiB)

    expect((await runCli(['verify', '-b', dir, 'all'], images.mountPoint)).code).toBe(0)
    const restored = join(images.mountPoint, 'restored.img')
    expect((await runCli(['restore', '-b', dir, '1', restored], images.mountPoint)).code).toBe(0)
    expect(sameBytes(restored, image)).toBe(false)
    expect((await runCli(['restore', '-b', dir, '0', join(images.mountPoint, 'newest.img')], images.mountPoint)).code).toBe(0)
    expect(sameBytes(join(images.mountPoint, 'newest.img'), image)).toBe(true)

    const noReflink = await mountLoopFilesystem({ type: 'xfs', sizeMiB: 300, mkfsArgs: ['-m', 'reflink=0'] })
    try {
      const target = await runCli(['init', '-b', join(noReflink.mountPoint, 'vm'), image], images.mountPoint)
      expect(target).toMatchObject({ code: 1, stderr: expect.stringContaining('(TARGET_NO_REFLINK)') as unknown })
      expect(await readdir(noReflink.mountPoint)).toEqual([])
      execFileSync('cp', [image, join(noReflink.mountPoint, 'old.img')])
      const source = await runCli(['init', '-b', join(backups.mountPoint, 'backy/old'), join(noReflink.mountPoint, 'old.img')], images.mountPoint)
      expect(source).toMatchObject({ code: 1, stderr: expect.stringContaining('(NO_CONSISTENT_SNAPSHOT)') as unknown })
      expect(source.stderr).toContain('--no-snapshot')
    } finally {
      await noReflink.cleanup()
    }
  })
})
