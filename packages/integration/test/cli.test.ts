import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import parsePrometheus from 'parse-prometheus-text-format'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { descendantsOf, makeTempDir, requireTools, writeTree, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { finished, ROOT, runCli, spawnTs, waitFor } from './helpers.js'

describe.runIf(requireTools(['rsync']))('bbackup command line', () => {
  let tmp: TempDir
  let state: string
  beforeEach(async () => {
    tmp = await makeTempDir('cli')
    state = join(tmp.path, 'state')
    await writeTree(join(tmp.path, 'src'), { 'a.txt': 'a\n', 'b/c.txt': 'c\n' })
  })
  afterEach(() => tmp.cleanup())

  it('makes its directories 0755 under any umask, 0 too (a service manager\'s): the target, its .bbackup, the state; no one else can replace a backup or a journal', async () => {
    const before = process.umask(0)
    try {
      const r = await runCli(['run', 'src', 'dst', '--state-dir', 'new-state'], tmp.path)
      expect(r.code, r.stderr).toBe(0)
    } finally {
      process.umask(before)
    }
    const modeOf = (path: string): string => (statSync(join(tmp.path, path)).mode & 0o7777).toString(8)
    for (const dir of ['dst', 'dst/.bbackup', 'new-state']) expect([dir, modeOf(dir)]).toEqual([dir, '755'])
    for (const file of (await readdir(join(tmp.path, 'dst/.bbackup'))).map((n) => `dst/.bbackup/${n}`)) expect([file, modeOf(file)]).toEqual([file, '644'])
  })

  it('has rsync measure progress only where it is drawn (a terminal) or logged (--log-json)', async () => {
    const commandOf = (stdout: string): string[] => (JSON.parse(stdout) as { targets: { commands: string[][] }[] }).targets[0]?.commands[0] ?? []
    // under cron (no terminal), and with --json or -q on a terminal, nothing shows it
    const quiet = await runCli(['run', 'src', 'dst', '--state-dir', state, '--json'], tmp.path, { isTTY: true })
    expect(quiet.code).toBe(0)
    expect(commandOf(quiet.stdout)).not.toContain('--info=progress2')
    const cron = await runCli(['run', 'src', 'dst', '--state-dir', state, '-v'], tmp.path)
    expect(cron.stderr).toContain('(incremental from')
    expect(cron.stderr).not.toContain('%')
    await writeFile(join(tmp.path, 'src/a.txt'), 'changed\n')
    const logged = await runCli(['run', 'src', 'dst', '--state-dir', state, '--log-json', '--json'], tmp.path)
    expect(commandOf(logged.stdout)).toContain('--info=progress2')
    expect(logged.stderr.split('\n').filter((l) => l.includes('"type":"transfer-progress"')).length).toBeGreaterThan(0)
    const drawn = await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path, { isTTY: true })
    // the line redrawn in place: carriage return, erase the line (ESC [ K), the percentage
    expect(drawn.stderr).toContain(`\r${String.fromCharCode(27)}[K  `)
    expect(drawn.stderr).toMatch(/\[K {2}\d+% {2}/)
    // a restore on a terminal draws its progress too, and erases it before it says what it restored
    const restored = await runCli(['restore', 'dst', 'latest', 'out'], tmp.path, { isTTY: true })
    expect(restored).toMatchObject({ code: 0, stdout: expect.stringContaining('restored ') })
    expect(restored.stderr).toMatch(/\[K {2}\d+% {2}[\d.]+ (B|KiB) {2}\S+\/s {2}ETA \d+:\d\d:\d\d/)
    expect(restored.stderr.endsWith(`\r${String.fromCharCode(27)}[K`)).toBe(true)
    const plain = await runCli(['restore', 'dst', 'latest', 'out2'], tmp.path)
    expect(plain.stderr).toBe('')
  })

  it('runs, lists and reports status as text and as JSON', async () => {
    const first = await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path)
    expect(first).toMatchObject({ code: 0, stderr: expect.stringContaining('(full)') })
    expect(first.stdout).toMatch(/dst: \d{4}-\d\d-\d\dT\d{6}Z full; 2 files, 4 B copied/)
    await writeFile(join(tmp.path, 'src/a.txt'), 'changed\n')
    const second = await runCli(['run', 'src', 'dst', '--state-dir', state, '--json'], tmp.path)
    expect(second.code).toBe(0)
    const report = JSON.parse(second.stdout) as { targets: { mode: string; files: number }[] }
    expect(report.targets[0]).toMatchObject({ mode: 'incremental', files: 1 })
    const listed = JSON.parse((await runCli(['list', 'src', 'dst', '--state-dir', state, '--json'], tmp.path)).stdout) as { snapshots: { complete: boolean }[] }[]
    expect(listed[0]?.snapshots.filter((s) => s.complete)).toHaveLength(2)
    const st = await runCli(['status', 'src', 'dst', '--state-dir', state], tmp.path)
    expect(st).toMatchObject({ code: 0, stdout: expect.stringMatching(/2 backups, newest .* ago\)\n {4}space: [\d.]+ \w+ free of [\d.]+ \w+ \(\d+% used\)\n {2}lock: free/) })
    // the filesystem of the target, as df says it
    const df = execFileSync('df', ['-Pk', join(tmp.path, 'dst')], { encoding: 'utf8' }).trim().split('\n').at(-1)?.split(/\s+/) ?? []
    const json = JSON.parse((await runCli(['status', 'src', 'dst', '--state-dir', state, '--json'], tmp.path)).stdout) as { targets: { space: { size: number; free: number } }[]; lock: unknown }
    // a free lock is there, as null, for a monitoring script to read
    expect(json.lock).toBeNull()
    const space = json.targets[0]?.space
    expect(space?.size).toBe(Number(df[1]) * 1024)
    expect(Math.abs((space?.free ?? 0) - Number(df[3]) * 1024)).toBeLessThan(64 * 1024 * 1024)
    // the share used, as df's Use% (give or take a point: the disk may change between the two)
    const shown = Number(/\((\d+)% used\)/.exec(st.stdout)?.[1])
    expect(Math.abs(shown - Number(df[4]?.replace('%', '')))).toBeLessThanOrEqual(1)
  })

  it("list --sizes tells each backup's size as rsnapshot du does: the newest in full, an older one by what no newer one shares", async () => {
    await writeFile(join(tmp.path, 'src/big.bin'), randomBytes(256 * 1024))
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path)).code).toBe(0)
    await writeFile(join(tmp.path, 'src/new.bin'), randomBytes(128 * 1024))
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path)).code).toBe(0)
    const names = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n)).sort()
    expect(names).toHaveLength(2)
    const [older, newer] = names as [string, string]
    const r = await runCli(['list', 'dst', '--sizes', '--json'], tmp.path)
    expect(r.code, r.stderr).toBe(0)
    const [{ sizes }] = JSON.parse(r.stdout) as [{ sizes: { bytes: Record<string, number>; total: number } }]
    // du itself, newest first: a hard-linked file counts in the first backup it is met in
    const du = execFileSync('du', ['-s', '-B1', join(tmp.path, 'dst', newer), join(tmp.path, 'dst', older)], { encoding: 'utf8' }).trim().split('\n').map((l) => Number(l.split('\t')[0]))
    expect(sizes).toEqual({ bytes: { [newer]: du[0], [older]: du[1] }, counted: 'newest-first', total: (du[0] ?? 0) + (du[1] ?? 0) })
    expect(sizes.bytes[newer]).toBeGreaterThanOrEqual(384 * 1024)
    expect(sizes.bytes[older]).toBeLessThan(64 * 1024)
    const text = (await runCli(['list', 'dst', '--sizes'], tmp.path)).stdout
    expect(text).toMatch(new RegExp(`^${join(tmp.path, 'dst')} \\(target\\): 2 backups, [\\d.]+ KiB on disk\n {2}${older} {3}[\\d.]+ KiB\n {2}${newer} {3}[\\d.]+ KiB\n$`))
  })

  it('a reader that goes away (| head) ends nothing with an EPIPE error: the run completes and exits 0', async () => {
    const child = spawn(process.execPath, ['--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/cli/src/cli.ts'), 'run', join(tmp.path, 'src'), join(tmp.path, 'dst'), '--state-dir', state, '-v'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    // head -c 0: close the read end before anything is printed
    child.stdout.destroy()
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const code = await new Promise((resolve) => child.once('close', resolve))
    expect(stderr).not.toMatch(/EPIPE|Unhandled/)
    expect(code).toBe(0)
    expect((await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
  })

  it('a sparse file (lastlog: long, almost all holes) stays sparse in the backup and in a restore', async () => {
    const lastlog = join(tmp.path, 'src/lastlog')
    execFileSync('truncate', ['-s', '64M', lastlog])
    execFileSync('dd', ['of=' + lastlog, 'bs=4096', 'seek=1000', 'conv=notrunc', 'status=none'], { input: randomBytes(4096) })
    // what the test means: the source takes a few KiB (the filesystem of the test's temporary directory keeps holes)
    expect(statSync(lastlog).blocks * 512).toBeLessThan(1024 * 1024)
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const stored = statSync(join(tmp.path, 'dst/latest/lastlog'))
    expect(stored.size).toBe(64 * 1024 * 1024)
    expect(stored.blocks * 512).toBeLessThan(1024 * 1024)
    expect((await runCli(['restore', 'dst', 'latest', 'back'], tmp.path)).code).toBe(0)
    expect(statSync(join(tmp.path, 'back/lastlog')).blocks * 512).toBeLessThan(1024 * 1024)
    expect(readFileSync(join(tmp.path, 'back/lastlog')).equals(readFileSync(lastlog))).toBe(true)
  })

  it('writes Prometheus metrics after each run: from --metrics-file, or metrics_file in the config', async () => {
    const metrics = join(tmp.path, 'bbackup.prom')
    const r = await runCli(['run', 'src', 'dst', '--state-dir', state, '-q', '--metrics-file', metrics], tmp.path)
    expect(r.code).toBe(0)
    const families = parsePrometheus(await readFile(metrics, 'utf8'))
    const sample = (name: string) => families.find((f) => f.name === name)?.metrics
    expect(sample('bbackup_run_success')).toEqual([{ labels: { job: join(tmp.path, 'src') }, value: '1' }])
    expect(sample('bbackup_target_success')).toEqual([{ labels: { job: join(tmp.path, 'src'), target: join(tmp.path, 'dst') }, value: '1' }])
    expect(Number(sample('bbackup_sent_bytes')?.[0]?.value)).toBe(4)

    // a job of the config, a failing target: the file says so, and keeps the other job's samples
    await writeFile(join(tmp.path, 'config.toml'), `metrics_file = "${metrics}"\nstate_dir = "${state}"\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'nowhere/is/this')}"]\n`)
    await writeFile(join(tmp.path, 'nowhere'), 'a file where a directory should be')
    const failed = await runCli(['run', '-c', 'config.toml', '-q'], tmp.path)
    expect(failed.code).toBe(10)
    const after = parsePrometheus(await readFile(metrics, 'utf8'))
    expect(after.find((f) => f.name === 'bbackup_run_success')?.metrics).toEqual([
      { labels: { job: join(tmp.path, 'src') }, value: '1' },
      { labels: { job: 'home' }, value: '0' },
    ])
    expect((await readdir(tmp.path)).filter((n) => n.includes('.tmp'))).toEqual([])
  })

  it('verify checks every target, also after one that fails; --json is one answer per target, in one array', async () => {
    expect((await runCli(['run', 'src', 'dst', 'dst2', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    await mkdir(join(tmp.path, 'empty'))
    const [name = ''] = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))
    const text = await runCli(['verify', 'src', 'empty', 'dst', 'dst2'], tmp.path)
    expect(text.code).toBe(1)
    expect(text.stderr).toContain(`${join(tmp.path, 'empty')} has no complete backup`)
    expect(text.stdout).toMatch(new RegExp(`^${join(tmp.path, 'dst', name)}: no problem found\n(?: {2}note: .*\n)+${join(tmp.path, 'dst2', name)}: no problem found\n`))
    const json = await runCli(['verify', 'src', 'empty', 'dst', '--json'], tmp.path)
    expect(json.code).toBe(1)
    expect(JSON.parse(json.stdout)).toMatchObject([
      { target: join(tmp.path, 'empty'), error: { code: 'SNAPSHOT_NOT_FOUND' } },
      { target: join(tmp.path, 'dst'), snapshot: name, differenceCount: 0 },
    ])
    // one target: its answer alone, as before
    expect(JSON.parse((await runCli(['verify', 'src', 'dst', '--json'], tmp.path)).stdout)).toMatchObject({ target: join(tmp.path, 'dst'), snapshot: name, differenceCount: 0 })
  })

  it("verify names the files that differ as they are called, under cron's C locale too (rsync escapes ä there), control characters escaped on one line, a byte that is not UTF-8 as the byte", async () => {
    // caf\xe9: a Latin-1 name, not UTF-8
    const odd = [Buffer.from('ä.txt'), Buffer.from('nl\ndir'), Buffer.from('back\\#303slash'), Buffer.from('caf\xe9', 'latin1')]
    const inSrc = (name: Buffer): Buffer => Buffer.concat([Buffer.from(join(tmp.path, 'src/')), name])
    for (const name of odd) await writeFile(inSrc(name), 'before\n')
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    for (const name of odd) await writeFile(inSrc(name), 'after!\n')
    const saved = process.env.LC_ALL
    process.env.LC_ALL = 'C'
    try {
      const json = await runCli(['verify', 'src', 'dst', '--json'], tmp.path)
      expect(json.code).toBe(1)
      // the content differs (c); the time too (t) when the second ticked between the two writes
      const differences = (JSON.parse(json.stdout) as { differences: string[] }).differences
      expect(differences.every((d) => /^>fc\.[.t]\.{6} /.test(d))).toBe(true)
      expect(differences.map((d) => d.slice(12)).sort()).toEqual(['back\\#303slash', 'caf\udce9', 'nl\ndir', 'ä.txt'])
      const text = await runCli(['verify', 'src', 'dst'], tmp.path)
      expect(text.stdout).toMatch(/\n {2}>f\S+ ä\.txt\n/)
      expect(text.stdout).toMatch(/\n {2}>f\S+ nl\\ndir\n/)
      expect(text.stdout).toMatch(/\n {2}>f\S+ back\\\\#303slash\n/)
      expect(text.stdout).toMatch(/\n {2}>f\S+ caf\\xe9\n/)
    } finally {
      if (saved === undefined) delete process.env.LC_ALL
      else process.env.LC_ALL = saved
    }
  })

  it('status takes a directory of backups alone (the backup server, where neither the source nor the job state is), also --check', async () => {
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const [name = ''] = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))
    const st = await runCli(['status', 'dst'], tmp.path)
    expect(st).toMatchObject({ code: 0, stdout: expect.stringMatching(new RegExp(`^${tmp.path}/dst \\(rsync\\): 1 backup, newest ${name} \\(\\d+ s ago\\)\n {2}space: [^\n]+\n$`)) })
    expect(JSON.parse((await runCli(['status', 'dst', '--json'], tmp.path)).stdout)).toMatchObject({ only: 'target', pending: [], targets: [{ backups: 1, latest: { name } }] })
    expect(await runCli(['status', 'dst', '--check'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining('BBACKUP OK') })
    // a directory shared by two sources (by prefix) is told source by source, the space once
    expect((await runCli(['run', 'src', 'dst', '-p', 'laptop-', '--state-dir', join(tmp.path, 'state2'), '-q'], tmp.path)).code).toBe(0)
    expect((await runCli(['status', 'dst'], tmp.path)).stdout).toMatch(new RegExp(`^\\S+dst \\(rsync\\): 1 backup, newest ${name} .*\n {2}space: .*\n\\S+dst \\(rsync\\) laptop-\\*: 1 backup, newest laptop-\\d{4}.*\n$`))
    // a prefix that none of them has is named as the mistake, with the ones there
    expect(await runCli(['verify', 'src', 'dst', '-p', 'desktop-'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining(`dst has no complete backup of this source (names starting desktop-), only other sources' (no prefix, laptop-…)\n  hint: give the prefix of the source with -p`) })
    // a monitoring check of a backup disk that is not there: critical, not "unknown"
    expect(await runCli(['status', 'gone', '--check'], tmp.path)).toMatchObject({ code: 2, stdout: expect.stringMatching(/^BBACKUP CRITICAL - \S*gone does not exist/) })
    // a host that cannot be reached is that (a warning for a check), not a place without backups
    if (requireTools(['ssh'])) {
      expect(await runCli(['status', '--check', 'ssh://root@127.0.0.1:1/srv/backups'], tmp.path)).toMatchObject({ code: 1, stdout: expect.stringMatching(/^BBACKUP WARNING - the connection to root@127.0.0.1:1 failed/) })
      expect(await runCli(['list', 'ssh://root@127.0.0.1:1/srv/backups'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining('NETWORK_FAILED') })
    }
    expect(await runCli(['status', 'src', '--check'], tmp.path)).toMatchObject({ code: 3, stdout: expect.stringContaining('BBACKUP UNKNOWN - no target given, and src holds no backups') })
    expect(await runCli(['status', 'src'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('hint: name the targets: bbackup status SOURCE TARGET…, or one directory of backups alone') })
  })

  it("list of a job whose directory other sources share (each by its prefix) lists the job's backups and names the others it left out; the directory alone lists all", async () => {
    await writeTree(join(tmp.path, 'other'), { 'o.txt': 'o\n' })
    expect((await runCli(['run', 'src', 'dst', '-p', 'laptop-', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    expect((await runCli(['run', 'other', 'dst', '-p', 'desktop-', '--state-dir', join(tmp.path, 'state2'), '-q'], tmp.path)).code).toBe(0)
    const names = (await readdir(join(tmp.path, 'dst'))).filter((n) => /-\d{4}-/.test(n)).sort()
    const [desktop = '', laptop = ''] = names
    expect(desktop).toMatch(/^desktop-/)
    expect(laptop).toMatch(/^laptop-/)
    const job = await runCli(['list', 'src', 'dst', '-p', 'laptop-', '--state-dir', state], tmp.path)
    expect(job).toMatchObject({ code: 0, stdout: `${tmp.path}/dst (target): 1 backup\n  ${laptop}\n  not listed: 1 backup of other sources (desktop-…); bbackup list ${tmp.path}/dst lists everything there\n` })
    const json = JSON.parse((await runCli(['list', 'src', 'dst', '-p', 'laptop-', '--state-dir', state, '--json'], tmp.path)).stdout) as { snapshots: { name: string }[]; otherSources: string[] }[]
    expect(json[0]?.snapshots.map((s) => s.name)).toEqual([laptop])
    expect(json[0]?.otherSources).toEqual([desktop])
    // the directory alone: every backup there; with a prefix, that source's
    const all = (await runCli(['list', 'dst'], tmp.path)).stdout.split('\n')
    expect(all[0]).toBe(`${tmp.path}/dst (target): 2 backups`)
    // in the order they were made (the two runs may fall in one second or two)
    expect(all.slice(1, 3).sort()).toEqual(names.map((n) => `  ${n}`))
    expect(all.slice(3)).toEqual([''])
    expect((await runCli(['list', 'dst', '-p', 'desktop-'], tmp.path)).stdout).toBe(`${tmp.path}/dst (target): 1 backup\n  ${desktop}\n  not listed: 1 backup of other sources (laptop-…); bbackup list ${tmp.path}/dst lists everything there\n`)
  })
  it('status --check gives a Nagios verdict per job with thresholds from the config', async () => {
    await writeFile(join(tmp.path, 'config.toml'), `state_dir = "${state}"\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst')}"]\n`)
    expect((await runCli(['run', '-c', 'config.toml', '-q'], tmp.path)).code).toBe(0)
    const fresh = await runCli(['status', '-c', 'config.toml', '--check'], tmp.path)
    expect(fresh).toMatchObject({ code: 0, stdout: 'BBACKUP OK - 1 job backed up in time\nhome: ok\n' })

    // the same backup, judged with an age it is already past; then a target with no backup at all
    await new Promise((r) => setTimeout(r, 1100))
    const old = await runCli(['status', '-c', 'config.toml', '--check', '--warn-age', '0m', '--critical-age', '1h'], tmp.path)
    expect(old.code).toBe(1)
    expect(old.stdout).toMatch(/^BBACKUP WARNING - home: .*dst: the newest backup is 0 min old \(warning after 0 min\)\n/)
    await writeFile(join(tmp.path, 'config.toml'), `state_dir = "${state}"\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst')}", "${join(tmp.path, 'dst2')}"]\nwarn_age = "2d"\n`)
    const missing = await runCli(['status', '-c', 'config.toml', '--check', '--json'], tmp.path)
    expect(missing.code).toBe(2)
    expect(JSON.parse(missing.stdout)).toEqual({ verdict: 'critical', jobs: [{ job: 'home', verdict: 'critical', reasons: [`${join(tmp.path, 'dst2')} has no backup: the target ${join(tmp.path, 'dst2')} does not exist`] }] })

    await writeFile(join(tmp.path, 'config.toml'), `[jobs.home]\nsource = "src"\ntargets = ["dst"]\nwarn_age = "soon"\n`)
    const unknown = await runCli(['status', '-c', 'config.toml', '--check'], tmp.path)
    expect(unknown.code).toBe(3)
    expect(unknown.stdout).toMatch(/^BBACKUP UNKNOWN - .*config.toml:4: \[jobs.home\] warn_age: "soon" is not a duration/)
  })

  it('runs the named jobs of a TOML config with its retention', async () => {
    const config = join(tmp.path, 'config.toml')
    await writeFile(config, `state_dir = "${state}"\n\n[jobs.docs]\nsource = "${tmp.path}/src"\ntargets = ["${tmp.path}/dst"]\nkeep_backups = { keep_last = 1 }\nexclude = ["b/"]\n`)
    for (let i = 0; i < 2; i++) expect((await runCli(['run', '-c', config, '-j', 'docs', '-q'], tmp.path)).code).toBe(0)
    const backups = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}/.test(n))
    expect(backups).toHaveLength(1)
    expect(await readdir(join(tmp.path, 'dst', backups[0]!))).toEqual(['a.txt'])
    expect(await readdir(join(state, 'jobs'))).toEqual(['docs'])
    expect(await runCli(['run', '-c', config, '-j', 'nope'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('no job or group named nope') })
  })

  it("groups and auto = false (btrbk's group and noauto): a run without names leaves the manual job out, its name or group runs it", async () => {
    const config = join(tmp.path, 'config.toml')
    await writeFile(config, [
      `state_dir = "${state}"`,
      '[jobs.docs]', 'source = "src"', 'targets = ["daily"]', 'groups = ["nightly"]',
      '[jobs.usb]', 'source = "src"', 'targets = ["usb"]', 'groups = ["offsite"]', 'auto = false', '',
    ].join('\n'))
    const backups = async (dir: string) => (await readdir(join(tmp.path, dir)).catch(() => [])).filter((n) => /^\d{4}/.test(n))
    expect((await runCli(['run', '-c', config, '-q'], tmp.path)).code).toBe(0)
    expect([await backups('daily'), await backups('usb')].map((b) => b.length)).toEqual([1, 0])
    // a status of every job says nothing of the manual one either
    const status = await runCli(['status', '-c', config], tmp.path)
    expect(status.stdout).toContain('/daily')
    expect(status.stdout).not.toContain('/usb')
    expect((await runCli(['run', '-c', config, 'offsite', '-q'], tmp.path)).code).toBe(0)
    expect([await backups('daily'), await backups('usb')].map((b) => b.length)).toEqual([1, 1])
    await new Promise((r) => setTimeout(r, 1100))
    expect((await runCli(['run', '-c', config, '-j', 'usb', '-j', 'nightly', '-q'], tmp.path)).code).toBe(0)
    expect([await backups('daily'), await backups('usb')].map((b) => b.length)).toEqual([2, 2])
    expect(await runCli(['list', '-c', config, '-j', 'weekly'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('its groups: nightly, offsite') })
  })

  it('rate_limit and stream_compress reach rsync as --bwlimit and (only for another host) --compress; a bad rate names the key', async () => {
    const config = join(tmp.path, 'config.toml')
    await writeFile(config, `state_dir = "${state}"\n\n[jobs.docs]\nsource = "${tmp.path}/src"\ntargets = ["${tmp.path}/dst"]\nrate_limit = "512k"\nstream_compress = "zstd"\n`)
    const r = await runCli(['run', '-c', config, '--json'], tmp.path)
    expect(r.code, r.stderr).toBe(0)
    const [argv] = (JSON.parse(r.stdout) as { targets: { commands: string[][] }[] }).targets[0]?.commands ?? []
    expect(argv).toContain('--bwlimit=512')
    // both ends are on this host: nothing to compress
    expect(argv).not.toContain('--compress')
    const cli = await runCli(['run', 'src', 'dst', '--state-dir', state, '--rate-limit', '2m', '--json'], tmp.path)
    expect((JSON.parse(cli.stdout) as { targets: { commands: string[][] }[] }).targets[0]?.commands[0]).toContain('--bwlimit=2048')
    await writeFile(config, `[jobs.docs]\nsource = "/src"\ntargets = ["/dst"]\nrate_limit = "fast"\n`)
    expect(await runCli(['run', '-c', config], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config}:4: [jobs.docs] rate_limit: "fast" is not a rate`) })
    expect(await runCli(['run', 'src', 'dst', '--rate-limit', '10 MB/s'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('--rate-limit 10 MB/s is not a rate') })
  })

  it('names the file, line and key of a config mistake and exits 2', async () => {
    const config = join(tmp.path, 'bad.toml')
    await writeFile(config, '[jobs.home]\nsource = "/home"\ntargets = ["/mnt/b"]\nkeep_backups = { preserve = "7x" }\n')
    const r = await runCli(['run', '-c', config], tmp.path)
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(`${config}:4: [jobs.home] keep_backups: preserve token "7x" is not`)
    await writeFile(config, '[jobs.home]\nsource = "/home"\ntargetz = ["/mnt/b"]\n')
    expect((await runCli(['run', '-c', config], tmp.path)).stderr).toContain(`${config}:3: [jobs.home] targetz: unknown key`)
    await writeFile(config, '[jobs.home\nsource = 1\n')
    expect((await runCli(['run', '-c', config], tmp.path)).stderr).toContain(`${config}:1:`)
  })

  it("a job key at the config's top level is every job's default (btrbk's global options): a job's own wins, one its driver has no use for is left out", async () => {
    const config = join(tmp.path, 'defaults.toml')
    await writeFile(join(tmp.path, 'src/x.tmp'), 'scratch\n')
    await writeFile(config, [
      'keep_backups = 1', 'exclude = ["*.tmp"]', 'keep_snapshots = 3', `state_dir = "${state}"`,
      '[jobs.one]', 'source = "src"', 'targets = ["one"]',
      '[jobs.two]', 'source = "src"', 'targets = ["two"]', 'keep_backups = 2', 'exclude = []', '',
    ].join('\n'))
    for (let i = 0; i < 3; i++) expect(await runCli(['run', '-c', config, '-q'], tmp.path)).toMatchObject({ code: 0 })
    const backups = async (dir: string): Promise<string[]> => (await readdir(join(tmp.path, dir))).filter((n) => /^\d{4}-/.test(n))
    expect(await backups('one')).toHaveLength(1)
    expect(await backups('two')).toHaveLength(2)
    expect(await readdir(join(tmp.path, 'one/latest'))).toEqual(['a.txt', 'b'])
    expect(await readdir(join(tmp.path, 'two/latest'))).toEqual(['a.txt', 'b', 'x.tmp'])
    // a job's own btrfs setting is still refused for an rsync job
    await writeFile(config, ['[jobs.one]', 'source = "src"', 'targets = ["one"]', 'keep_snapshots = 3', ''].join('\n'))
    expect(await runCli(['run', '-c', config, '-n'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('--keep-snapshots (keep_snapshots): a btrfs setting') })
    // a default is checked where it is written; what names one job's places is not a default
    await writeFile(config, ['keep_backups = "7x"', '[jobs.one]', 'source = "src"', 'targets = ["one"]', ''].join('\n'))
    expect(await runCli(['run', '-c', config], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config}:1: keep_backups: retention "7x"`) })
    await writeFile(config, ['targets = ["one"]', '[jobs.one]', 'source = "src"', ''].join('\n'))
    expect(await runCli(['run', '-c', config], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining(`${config}:1: targets: names one job's own places, not a default for every job\n  hint: move it into the [jobs.NAME] table of its job`) })
  })

  it('reads btrfs-backup style @file arguments, with comments and includes', async () => {
    await mkdir(join(tmp.path, 'args'))
    await writeFile(join(tmp.path, 'args/common'), '# shared options\n--state-dir "' + state + '"\n')
    await writeFile(join(tmp.path, 'args/job'), '@common\nsrc  # the source\ndst\n')
    const r = await runCli(['run', '@args/job'], tmp.path)
    expect(r.code).toBe(0)
    expect(await readlink(join(tmp.path, 'dst/latest'))).toMatch(/^\d{4}-/)
  })

  it('exits 3 when another run holds the job lock, and 10 when a target failed', async () => {
    const lock = (await localTransport(state).mkdir(state, { recursive: true }).andThen(() => localTransport(state).lock(join(state, 'lock'), { command: 'other run' })))._unsafeUnwrap()
    const held = await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path)
    expect(held).toMatchObject({ code: 3, stderr: expect.stringContaining('another run of this job is in progress') })
    // --wait=1m (a duration) queues behind the holder, and runs once it lets go
    const queued = runCli(['run', 'src', 'dst', '--state-dir', state, '--wait=1m', '-q'], tmp.path)
    await new Promise((resolve) => setTimeout(resolve, 700))
    expect(existsSync(join(tmp.path, 'dst/latest'))).toBe(false)
    await lock.release()
    expect(await queued).toMatchObject({ code: 0 })
    expect(existsSync(join(tmp.path, 'dst/latest'))).toBe(true)
    // a lock left by a run before the host rebooted is taken over: a warning, printed under -q too
    await writeFile(join(state, 'lock'), JSON.stringify({ pid: process.pid, host: hostname(), bootId: 'an-earlier-boot', pidStartTime: 1, startedAt: 'then', command: 'old' }))
    const stale = await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)
    expect(stale).toMatchObject({ code: 0, stdout: '' })
    expect(stale.stderr).toMatch(/^warning: took over a stale lock \S+lock: .*before this host last booted/)
    const partly = await runCli(['run', 'src', 'dst', 'missing/deeper', '--state-dir', state], tmp.path)
    expect(partly.code).toBe(10)
    expect(partly.stdout).toContain('missing/deeper: FAILED: the target')
  })

  it('a place written with a trailing slash (as a shell completes a directory) or doubled slashes is the same job: one lock, one state', async () => {
    const plain = await runCli(['locks', 'src', 'dst'], tmp.path)
    const slashed = await runCli(['locks', 'src/', './dst//'], tmp.path)
    expect(plain).toMatchObject({ code: 0, stdout: expect.stringMatching(/\/jobs\/src-[0-9a-f]{8}: free\n$/) })
    expect(slashed.stdout).toBe(plain.stdout)
    expect(await runCli(['run', 'src/', 'dst/', '--state-dir', state, '-q'], tmp.path)).toMatchObject({ code: 0 })
    const status = JSON.parse((await runCli(['status', 'src', 'dst', '--state-dir', state, '--json'], tmp.path)).stdout) as { source: string; targets: { at: string; backups: number }[] }
    expect(status).toMatchObject({ source: join(tmp.path, 'src'), targets: [{ at: join(tmp.path, 'dst'), backups: 1 }] })
  })

  it('keeps what it is not told where to keep (a job, a prune of a directory, a restore) in $BBACKUP_STATE_DIR, and refuses a relative one', async () => {
    const saved = process.env.BBACKUP_STATE_DIR
    const root = join(tmp.path, 'state 100%')
    try {
      process.env.BBACKUP_STATE_DIR = root
      expect(await runCli(['run', 'src', 'dst', '-q'], tmp.path)).toMatchObject({ code: 0 })
      const [job] = await readdir(join(root, 'jobs'))
      expect(job).toMatch(/^src-[0-9a-f]{8}$/)
      expect(existsSync(join(root, 'jobs', job ?? '', 'journal.json'))).toBe(true)
      expect((await runCli(['locks', 'src', 'dst'], tmp.path)).stdout).toBe(`${join(root, 'jobs', job ?? '')}: free\n`)
      expect(await runCli(['prune', 'dst', '--keep-backups', '1'], tmp.path)).toMatchObject({ code: 0 })
      expect(await runCli(['restore', 'dst', 'latest', 'back'], tmp.path)).toMatchObject({ code: 0 })
      expect((await readdir(join(root, 'jobs'))).sort()).toEqual(['.holds', expect.stringMatching(/^dst-[0-9a-f]{8}$/), job])

      process.env.BBACKUP_STATE_DIR = 'state'
      const relative = await runCli(['run', 'src', 'dst'], tmp.path)
      expect(relative).toMatchObject({ code: 2, stdout: '' })
      expect(relative.stderr).toBe('bbackup: error: BBACKUP_STATE_DIR="state" is not an absolute path\n  hint: set it to a full path (export BBACKUP_STATE_DIR=/var/lib/bbackup), or unset it for the default\n  (INVALID_OPTIONS)\n')
      expect(existsSync(join(tmp.path, 'state'))).toBe(false)
      expect((await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
    } finally {
      process.env.BBACKUP_STATE_DIR = saved
    }
  })

  it('follows a target given as a symbolic link (rsync and rsnapshot do): the backups go where it leads, linked to each other', async () => {
    await mkdir(join(tmp.path, 'disk/backups'), { recursive: true })
    await symlink(join(tmp.path, 'disk/backups'), join(tmp.path, 'link'))
    for (let i = 0; i < 2; i++) expect(await runCli(['run', 'src', 'link', '--state-dir', state, '-q'], tmp.path)).toMatchObject({ code: 0 })
    const made = (await readdir(join(tmp.path, 'disk/backups'))).filter((n) => /^\d{4}-/.test(n))
    expect(made).toHaveLength(2)
    const inodes = made.map((n) => statSync(join(tmp.path, 'disk/backups', n, 'a.txt')).ino)
    expect(inodes[0]).toBe(inodes[1])
    expect((await runCli(['list', 'link'], tmp.path)).stdout).toContain('(target): 2 backups')
  })

  it('refuses a target whose links go round in a loop, or lead on to nothing, and says which', async () => {
    await symlink('loop-b', join(tmp.path, 'loop-a'))
    await symlink('loop-a', join(tmp.path, 'loop-b'))
    const loop = await runCli(['run', 'src', 'loop-a', '--state-dir', state], tmp.path)
    expect(loop).toMatchObject({ code: 10, stdout: expect.stringContaining(`the target ${join(tmp.path, 'loop-a')} is a symbolic link to loop-b, and its links go round in a loop (more than 40)`) })
    await symlink('hop', join(tmp.path, 'chain'))
    await symlink(join(tmp.path, 'unplugged/backup'), join(tmp.path, 'hop'))
    const chain = await runCli(['run', 'src', 'chain', '--state-dir', state], tmp.path)
    expect(chain).toMatchObject({ code: 10, stdout: expect.stringContaining(`the target ${join(tmp.path, 'chain')} is a symbolic link to hop, which leads on to ${join(tmp.path, 'unplugged/backup')}, which does not exist`) })
  })

  it.runIf(requireTools(['mount', 'umount', 'findmnt'], { root: true }))('exits 10 when the backup went over but retention could not delete an old one, as btrbk does, and says which', async () => {
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const backups = async (): Promise<string[]> => (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))
    const [old = ''] = await backups()
    // a filesystem mounted inside the old backup: rm --one-file-system leaves it there, and fails
    execFileSync('mount', ['-t', 'tmpfs', 'bbackup-test', join(tmp.path, 'dst', old, 'b')])
    try {
      const metrics = join(tmp.path, 'bbackup.prom')
      const r = await runCli(['run', 'src', 'dst', '--state-dir', state, '--keep-backups', '1', '-q', '--metrics-file', metrics], tmp.path)
      expect(r.code).toBe(10)
      expect(r.stderr).toMatch(new RegExp(`dst: NOT PRUNED: could not remove \\S+trash/${old}\n {2}hint: it is no longer a backup: the next prune tries again`))
      // the new backup went over
      expect((await backups()).filter((n) => n !== old)).toHaveLength(1)
      const success = parsePrometheus(await readFile(metrics, 'utf8')).find((f) => f.name === 'bbackup_run_success')
      expect(success?.metrics[0]).toMatchObject({ value: '0' })
      // once the filesystem is gone, the next prune removes what is left of the old backup, and its record
      execFileSync('umount', [join(tmp.path, 'dst/.bbackup/trash', old, 'b')])
      expect(await runCli(['prune', 'dst', '--keep-backups', '1', '-q', '--state-dir', 'state'], tmp.path)).toMatchObject({ code: 0 })
      expect(await readdir(join(tmp.path, 'dst/.bbackup/trash'))).toEqual([])
      expect(existsSync(join(tmp.path, 'dst/.bbackup', `${old}.json`))).toBe(false)
    } finally {
      // wherever the old backup was moved to before its removal failed
      const mounts = execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).split('\n').filter((m) => m.startsWith(tmp.path))
      for (const m of mounts) execFileSync('umount', [m])
    }
  })

  it('refuses another source\'s run in a directory of backups (exit 10, TARGET_IN_USE, the fix named) until --take-over', async () => {
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    await writeTree(join(tmp.path, 'home'), { 'a.txt': 'a\n' })
    const other = ['run', 'home', 'dst', '--state-dir', join(tmp.path, 'state-home')]
    const refused = await runCli(other, tmp.path)
    expect(refused).toMatchObject({ code: 10, stdout: expect.stringContaining(`dst: FAILED: ${join(tmp.path, 'dst')} holds the backups of ${hostname()}:${join(tmp.path, 'src')}`) })
    expect(refused.stdout).toContain(`hint: give this source a directory of its own, e.g. ${join(tmp.path, `${hostname()}-home`)}`)
    expect((await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
    expect((await runCli(['status', 'home', 'dst', '--state-dir', join(tmp.path, 'state-home')], tmp.path)).code).toBe(10)
    expect(await runCli([...other, '--take-over', '-q'], tmp.path)).toMatchObject({ code: 0 })
    // the new backup is the home directory's: src's b/ is not in it
    expect(existsSync(join(tmp.path, 'dst/latest/b'))).toBe(false)
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state], tmp.path)).code).toBe(10)
  })

  it('restores a backup and refuses to overwrite', async () => {
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    expect(await runCli(['restore', 'dst', 'latest', 'out'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining('restored') })
    expect(await readdir(join(tmp.path, 'out'))).toEqual(['a.txt', 'b'])
    expect(await runCli(['restore', 'dst', 'latest', 'out'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining('restore never overwrites') })
    // a destination that is a file (or under one) is named as such, whole or one path
    for (const args of [['dst', 'latest', 'out/a.txt'], ['--path', 'b', 'dst', 'latest', 'out/a.txt/x']]) {
      expect(await runCli(['restore', ...args], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringMatching(/the restore destination .*out\/a\.txt.* is not a directory[\s\S]*TARGET_UNAVAILABLE/) })
    }
    // list takes the directory of backups alone
    expect(await runCli(['list', 'dst'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringMatching(/dst \(target\): 1 backup\n {2}\d{4}-/) })
  })

  it('a restore stopped by a signal exits 1 and names what it left: rsync\'s part of the backup stays, and the way to restore again', async () => {
    await writeFile(join(tmp.path, 'src/big'), randomBytes(4 << 20))
    expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const back = join(tmp.path, 'back')
    // 1 MiB a second: rsync is copying for seconds
    const child = spawnTs('fixtures/cli.ts', ['restore', join(tmp.path, 'dst'), 'latest', back, '--rate-limit', '1m'])
    const ended = finished(child)
    await waitFor(async () => existsSync(back) && (await readdir(back)).length > 0, 20_000)
    child.kill('SIGTERM')
    const r = await ended
    expect(r.code, r.stderr).toBe(1)
    expect(r.stderr).toMatch(new RegExp(`^bbackup: error: rsync was cancelled; ${back} holds part of \\S+\n  hint: delete ${back} and restore again \\(restore writes only into a new or empty directory\\)\n`))
    expect(await runCli(['restore', 'dst', 'latest', 'back'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining('already exists and is not empty') })
  })

  it('a verify or a prune stopped by a signal stops the rsync or rm it started, and exits 1 with the cancel named, its lock free', async () => {
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    // the real rsync and rm, each held still (SIGSTOP) as it starts, so that it cannot finish before the signal comes
    const held = join(tmp.path, 'held')
    await mkdir(held)
    for (const tool of ['rsync', 'rm']) {
      const real = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim()
      await writeFile(join(held, tool), `#!/bin/sh\nkill -STOP $$\nexec ${real} "$@"\n`, { mode: 0o755 })
    }
    /** whether a signal is pending for a process (/proc's SigPnd and ShdPnd: bit signo - 1) */
    const pending = (pid: number, signo: number): boolean => {
      try {
        return readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter((l) => /^(SigPnd|ShdPnd):/.test(l)).some((l) => ((BigInt(`0x${l.split(/\s+/)[1] ?? '0'}`) >> BigInt(signo - 1)) & 1n) === 1n)
      } catch {
        return false
      }
    }
    const stoppedIn = (pid: number): number | undefined => descendantsOf(pid).find((p) => {
      try {
        return /^\S+ \(.*\) T /.test(readFileSync(`/proc/${p}/stat`, 'utf8'))
      } catch {
        return false
      }
    })
    const [src, dst] = [join(tmp.path, 'src'), join(tmp.path, 'dst')]
    for (const [args, tool] of [[['verify', src, dst], 'rsync'], [['prune', src, dst, '--keep-backups', '1'], 'rm']] as const) {
      const child = spawnTs('fixtures/cli.ts', [...args, '--state-dir', state], { env: { PATH: `${held}:${process.env.PATH ?? ''}` } })
      const ended = finished(child)
      let started: number | undefined
      try {
        await waitFor(async () => (started = stoppedIn(child.pid ?? 0)) !== undefined, 20_000)
        child.kill('SIGTERM')
        // bbackup passes the stop on: the held command has a SIGTERM waiting when it goes on (before, bbackup died alone and left it to run)
        await waitFor(async () => pending(started ?? 0, 15), 10_000)
        process.kill(started ?? 0, 'SIGCONT')
        const r = await ended
        // a cancel ends the command: 1, as a cancelled run (not 10, as if one place had failed and the others were done)
        expect(r.code, r.stderr).toBe(1)
        expect(r.stderr).toContain(`${tool} was cancelled`)
      } finally {
        // whatever the test saw, nothing it started runs on
        for (const pid of [...new Set([started, ...descendantsOf(child.pid ?? 0)])]) {
          try {
            if (pid !== undefined) process.kill(pid, 'SIGKILL')
          } catch {
            // gone
          }
        }
        await ended
      }
      expect(await runCli(['locks', 'src', 'dst', '--state-dir', state], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining(': free') })
    }
  })

  it('shows a prune plan with reasons in a dry run', async () => {
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const r = await runCli(['prune', 'src', 'dst', '--state-dir', state, '--keep-backups', '1', '-n'], tmp.path)
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/would delete 1 of 2\n {2}delete \S+ {2}not kept by the count policy\n {2}keep {3}\S+ {2}keepLast: 1 of 1 newest; protected: the newest snapshot/)
  })

  it('a target that cannot be pruned or listed (a disk not mounted) does not stop the others: exit 10, the failure named, the log says partial', async () => {
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'src', 'dst', '--state-dir', state, '-q'], tmp.path)).code).toBe(0)
    const [older, newer] = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n)).sort()
    const r = await runCli(['prune', 'src', 'gone', 'dst', '--state-dir', state, '--keep-backups', '1', '--transaction-log', 'tlog'], tmp.path)
    expect(r.code).toBe(10)
    expect(r.stderr).toBe(`${join(tmp.path, 'gone')}: NOT PRUNED: the target ${join(tmp.path, 'gone')} does not exist\n  hint: check the path, or run a backup to create it\n`)
    expect(r.stdout).toMatch(new RegExp(`^${join(tmp.path, 'dst')}: deleted 1 of 2\n {2}delete ${older}`))
    expect((await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))).toEqual([newer])
    const log = await readFile(join(tmp.path, 'tlog'), 'utf8')
    expect(log).toMatch(new RegExp(` delete ERROR ${join(tmp.path, 'gone')} - - # TARGET_UNAVAILABLE: `))
    expect(log).toMatch(new RegExp(` delete success ${join(tmp.path, 'dst', older ?? '')} `))
    expect(log).toMatch(/ finished partial - - - # at least one place was not pruned\n$/)
    // --json: every place, the failed one with its error
    const json = await runCli(['prune', 'src', 'gone', 'dst', '--state-dir', state, '--keep-backups', '1', '--json'], tmp.path)
    expect(json.code).toBe(10)
    expect(JSON.parse(json.stdout)).toMatchObject([{ at: join(tmp.path, 'gone'), deleted: [], error: { code: 'TARGET_UNAVAILABLE' } }, { at: join(tmp.path, 'dst'), deleted: [] }])
    // list: the same
    const listed = await runCli(['list', 'src', 'gone', 'dst'], tmp.path)
    expect(listed).toMatchObject({ code: 10, stdout: `${join(tmp.path, 'dst')} (target): 1 backup\n  ${newer}\n` })
    expect(listed.stderr).toMatch(new RegExp(`^${join(tmp.path, 'gone')}: NOT LISTED: the target ${join(tmp.path, 'gone')} does not exist\n  hint: `))
    const listedJson = await runCli(['list', 'src', 'gone', 'dst', '--json'], tmp.path)
    expect(listedJson.code).toBe(10)
    expect(JSON.parse(listedJson.stdout)).toMatchObject([{ at: join(tmp.path, 'gone'), snapshots: [], error: { code: 'TARGET_UNAVAILABLE' } }, { at: join(tmp.path, 'dst'), snapshots: [{ name: newer }] }])
  })

  it("takes over rsync-time-backup's directory: its backups adopted, the one its backup.inprogress says was interrupted never linked against, counted or deleted", async () => {
    const dst = join(tmp.path, 'dst')
    await writeTree(join(dst, '2024-03-13-010203'), { 'a.txt': 'a\n' })
    await writeTree(join(dst, '2024-03-14-010203'), { 'a.txt': 'half\n' })
    await writeFile(join(dst, 'backup.marker'), '')
    await writeFile(join(dst, 'backup.inprogress'), '4242\n')
    const listed = JSON.parse((await runCli(['list', 'dst', '--json'], tmp.path)).stdout) as { snapshots: { name: string; complete: boolean }[] }[]
    expect(listed[0]?.snapshots).toMatchObject([{ name: '2024-03-13-010203', complete: true }, { name: '2024-03-14-010203', complete: false }])
    const run = await runCli(['run', 'src', 'dst', '--state-dir', state, '--json'], tmp.path)
    expect(run.code, run.stderr).toBe(0)
    expect(JSON.parse(run.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'incremental', parent: '2024-03-13-010203' }] })
    expect((await runCli(['status', 'dst'], tmp.path)).stdout).toContain("unfinished, another tool's: 2024-03-14-010203 (left as it is: never counted, linked against or deleted)")
    const pruned = await runCli(['prune', 'dst', '--keep-backups', '1'], tmp.path)
    expect(pruned).toMatchObject({ code: 0, stdout: expect.stringContaining('deleted 1 of 2') })
    expect((await readdir(dst)).filter((n) => n.startsWith('2024'))).toEqual(['2024-03-14-010203'])
    expect(await readFile(join(dst, '2024-03-14-010203', 'a.txt'), 'utf8')).toBe('half\n')
  })

  it('prunes a directory of backups alone (rotate-backups on the backup server), each source by its prefix', async () => {
    for (const prefix of ['', '', 'laptop-', 'laptop-']) {
      expect((await runCli(['run', 'src', 'dst', '-p', prefix, '--state-dir', join(tmp.path, `state${prefix}`), '-q'], tmp.path)).code).toBe(0)
    }
    const backups = async (): Promise<string[]> => (await readdir(join(tmp.path, 'dst'))).filter((n) => /\d{4}-/.test(n)).sort()
    const [, own, , laptop] = await backups()
    // one source's backups never count against another's: one of each is kept, not one in all
    const plan = await runCli(['prune', 'dst', '--keep-backups', '1', '-n'], tmp.path)
    expect(plan).toMatchObject({ code: 0, stdout: expect.stringMatching(/would delete 1 of 2\n[\s\S]*would delete 1 of 2\n/) })
    expect(await backups()).toHaveLength(4)
    const json = JSON.parse((await runCli(['prune', 'dst', '--keep-backups', '1', '--json', '--state-dir', 'state'], tmp.path)).stdout) as { deleted: string[] }[]
    expect(json.flatMap((r) => r.deleted)).toHaveLength(2)
    expect(await backups()).toEqual([own, laptop].sort())
    // -p: one source's alone
    expect((await runCli(['prune', 'dst', '--keep-backups', '1', '-p', 'laptop-', '--state-dir', 'state'], tmp.path)).stdout).toBe(`${tmp.path}/dst: deleted 0 of 1\n  keep   ${laptop}  keepLast: 1 of 1 newest; protected: the newest snapshot; protected: the newest healthy backup (the next run links against it)\n`)
    expect(await runCli(['prune', 'dst'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('no retention policy') })
    expect(await runCli(['prune', 'src', '--keep-backups', '1'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('no target given, and src holds no backups (nor is it a btrfs subvolume with snapshots)\n  hint: name the targets: bbackup prune SOURCE TARGET…, or one directory of backups alone: bbackup prune /mnt/backup/home --keep-backups …') })
    expect(await runCli(['prune', 'gone', '--keep-backups', '1'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining('gone does not exist') })
  })

  it('refuses a prune that would delete more than one may (half of the backups, at least 10, unless --max-delete or max_delete says otherwise), deleting nothing', async () => {
    const dst = join(tmp.path, 'dst')
    const names = Array.from({ length: 13 }, (_, i) => `2024-03-${String(i + 1).padStart(2, '0')}-010203`)
    for (const name of names) await writeTree(join(dst, name), { 'a.txt': `${name}\n` })
    const backups = async (): Promise<string[]> => (await readdir(dst)).filter((n) => n.startsWith('2024')).sort()
    // keeping 1 of 13 (a policy mistyped as 1 for 10, or a clock a year ahead): 12 would go, more than 10
    const refused = await runCli(['prune', 'dst', '--keep-backups', '1'], tmp.path)
    expect(refused.code, refused.stderr).toBe(10)
    expect(refused.stderr).toContain(`${dst}: NOT PRUNED: the retention policy would delete 12 of the 13 snapshots at once (${names[0]} … ${names[11]}), more than the 10 one prune may delete\n`)
    expect(refused.stderr).toContain('then let it happen once (--max-delete N or all; config: max_delete)')
    expect(await runCli(['prune', 'dst', '--keep-backups', '1', '-n'], tmp.path)).toMatchObject({ code: 10 })
    expect(await backups()).toEqual(names)
    // what a dry run that lifts the limit lists; a limit of 11 still refuses
    expect(await runCli(['prune', 'dst', '--keep-backups', '1', '-n', '--max-delete', 'all'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining('would delete 12 of 13') })
    expect(await runCli(['prune', 'dst', '--keep-backups', '1', '--max-delete', '11'], tmp.path)).toMatchObject({ code: 10 })
    // the steady state is far below the limit: keeping 8 deletes 5
    expect(await runCli(['prune', 'dst', '--keep-backups', '8'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining('deleted 5 of 13') })
    expect(await backups()).toEqual(names.slice(5))
    // the config's max_delete, for a job: 6 of 8 may go at 6, not at 5
    const config = (max: string): string => `state_dir = "state"\nmax_delete = ${max}\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${dst}"]\nkeep_backups = 2\n`
    await writeFile(join(tmp.path, 'five.toml'), config('5'))
    expect(await runCli(['prune', '-c', 'five.toml'], tmp.path)).toMatchObject({ code: 10, stderr: expect.stringContaining('would delete 6 of the 8 snapshots at once') })
    await writeFile(join(tmp.path, 'six.toml'), config('6'))
    expect(await runCli(['prune', '-c', 'six.toml'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringContaining('deleted 6 of 8') })
    expect(await backups()).toEqual(names.slice(11))
    // a limit that is no number is refused, naming the key and its line
    await writeFile(join(tmp.path, 'zero.toml'), config('0'))
    expect(await runCli(['prune', '-c', 'zero.toml'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('zero.toml:2: max_delete: max-delete 0 is not a whole number of at least 1, nor all') })
    expect(await runCli(['prune', 'dst', '--keep-backups', '1', '--max-delete', 'some'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('max-delete "some" is not a whole number of at least 1, nor all') })
  })

  it('answers usage errors with exit 2 and a hint', async () => {
    expect(await runCli(['run', 'src'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('no target given\n  hint: name where the backups go') })
    // a job's name where the source goes (btrbk's filter): that job, as -j says; a name that is a path here too is refused
    await writeFile(join(tmp.path, 'jobs.toml'), `state_dir = "state"\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst-home')}"]\n[jobs.etc]\nsource = "${join(tmp.path, 'src', 'b')}"\ntargets = ["${join(tmp.path, 'dst-etc')}"]\n`)
    expect(await runCli(['run', '-c', 'jobs.toml', 'home', '-q'], tmp.path)).toMatchObject({ code: 0 })
    expect(await runCli(['list', '-c', 'jobs.toml', 'home'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringMatching(new RegExp(`^${join(tmp.path, 'dst-home')} \\(target\\): 1 backup\n`)) })
    expect(existsSync(join(tmp.path, 'dst-etc'))).toBe(false)
    expect((await runCli(['status', '-c', 'jobs.toml', 'home', 'etc'], tmp.path)).stdout).toMatch(/^home: [^\n]*\n[\s\S]*\netc: /)
    expect(await runCli(['doctor', '-c', 'jobs.toml', 'home'], tmp.path)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^job home:\n(?![\s\S]*job etc)/) })
    expect(await runCli(['doctor', '-c', 'jobs.toml', 'homes'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining('"homes" is none of them\n  hint: give a job\'s name (the jobs of jobs.toml, or -c FILE)') })
    await mkdir(join(tmp.path, 'etc'))
    for (const command of ['run', 'list', 'status', 'prune', 'locks', 'doctor']) {
      expect(await runCli([command, '-c', 'jobs.toml', 'etc'], tmp.path)).toMatchObject({
        code: 2, stderr: expect.stringContaining(`etc: the name of a job in ${join(tmp.path, 'jobs.toml')}, and of a path in ${tmp.path}\n  hint: say which: -j etc for the job, ./etc for the path`),
      })
    }
    expect(existsSync(join(tmp.path, 'dst-etc'))).toBe(false)
    expect(await runCli(['run', '-c', 'jobs.toml', 'src'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('no target given\n  hint: name where the backups go') })
    expect((await runCli(['run', '--bogus'], tmp.path)).code).toBe(2)
    // --wait takes an optional value: before the paths it takes the source as its seconds
    expect(await runCli(['run', '--wait', 'src', 'dst'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('--wait src is not a number of seconds or a duration') })
    expect(await runCli(['run', 'src', 'nas:2222/x'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('ssh://nas:2222/path') })
    expect(await runCli(['--version'], tmp.path)).toMatchObject({ code: 0, stdout: '0.0.0\n' })
    // one target twice, spelled two ways: two transfers would write into it at once
    expect(await runCli(['run', 'src', 'dst', './dst/', '--state-dir', state], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining(`the target ${tmp.path}/dst is given twice`) })
    // an exclude file that is not there: rsync would fail after the run began (exit 11)
    expect(await runCli(['run', 'src', 'dst', '--state-dir', state, '--exclude-from', 'nope.txt'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining(`the exclude file ${tmp.path}/nope.txt does not exist`) })
    // a retention that cannot be applied is refused before the backup, not after it
    expect(await runCli(['run', 'src', 'dst', '--state-dir', state, '--keep-backups', '7d', '--time-zone', 'Mars/Base'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('unknown time zone "Mars/Base"') })
    // btrfs settings on an rsync job: --keep-snapshots meant as the backups' retention would let the disk fill up
    expect(await runCli(['run', 'src', 'dst', '--state-dir', state, '--keep-snapshots', '3'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringMatching(/--keep-snapshots \(keep_snapshots\): a btrfs setting, but src is backed up by the rsync driver[^\n]*\n {2}hint: leave it out; the retention of the rsync driver's backups is --keep-backups/) })
    expect(await runCli(['prune', 'src', 'dst', '--state-dir', state, '--keep-backups', '3', '--snapshot-folder', 'x', '--send-protocol', '2'], tmp.path)).toMatchObject({ code: 2, stderr: expect.stringContaining('--snapshot-folder (snapshot_folder), --send-protocol (send_protocol): btrfs settings') })
    // ... but of a source that is not there (a typo, a disk not mounted) the driver cannot be told: that is what is said
    expect(await runCli(['run', 'srcx', 'dst', '--state-dir', state, '--keep-snapshots', '3'], tmp.path)).toMatchObject({ code: 1, stderr: expect.stringContaining(`the source ${tmp.path}/srcx does not exist\n  hint: check the path (is the filesystem mounted?)\n  (SOURCE_UNAVAILABLE)`) })
    expect(await readdir(tmp.path)).not.toContain('dst')
  })
})
