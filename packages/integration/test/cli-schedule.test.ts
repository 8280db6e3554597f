import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, writeTree, type TempDir } from '@bb/testkit'
import { ROOT, runCli as runAsCron } from './helpers.js'

/** how the units run this bbackup: its source, through tsx (the tests run before the build) */
const SELF = [process.execPath, '--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/integration/test/fixtures/cli.ts')]

const runCli = (argv: string[], cwd: string) => runAsCron(argv, cwd, { self: SELF })

/** ExecStart's words as systemd splits them (double quotes with backslash escapes; %% and $$ for % and $) */
const execStartOf = (unit: string): string[] => {
  const line = /^ExecStart=(.*)$/m.exec(unit)?.[1] ?? ''
  return [...line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)].map((m) => (m[1] === undefined ? m[2] ?? '' : m[1].replace(/\\(.)/g, '$1')).replaceAll('%%', '%').replaceAll('$$', '$'))
}

describe.runIf(requireTools(['systemd-analyze', 'rsync']))('bbackup schedule: systemd units for a configured job', () => {
  let tmp: TempDir
  let units: string
  let config: string

  beforeEach(async () => {
    tmp = await makeTempDir('schedule')
    // not there yet, as ~/.config/systemd/user often is not: schedule makes it
    units = join(tmp.path, 'config/systemd/user')
    await writeTree(join(tmp.path, 'src'), { 'a.txt': 'a\n', 'd/b.txt': 'b\n' })
    config = join(tmp.path, 'config 100%.toml')
    await writeFile(config, `state_dir = "${join(tmp.path, 'state')}"\n\n[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst')}"]\ndriver = "rsync"\n`)
  })
  afterEach(async () => {
    await tmp?.cleanup()
  })

  it('writes a service and a timer that systemd-analyze verify accepts, and the service runs the job', async () => {
    const r = await runCli(['schedule', 'home', '-c', config, '--on-calendar', 'hourly', '--randomized-delay', '600', '--unit-dir', units], tmp.path)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain(`wrote ${join(units, 'bbackup-home.service')}\nwrote ${join(units, 'bbackup-home.timer')}\njob home runs *-*-* *:00:00 (up to 600 s later)`)
    expect(r.stdout).toContain('  systemctl enable --now bbackup-home.timer')
    const verify = spawnSync('systemd-analyze', ['verify', join(units, 'bbackup-home.service'), join(units, 'bbackup-home.timer')], { encoding: 'utf8', cwd: units })
    expect({ status: verify.status, stderr: verify.stderr }).toEqual({ status: 0, stderr: '' })

    const service = await readFile(join(units, 'bbackup-home.service'), 'utf8')
    expect(service).toMatch(/^Type=oneshot$/m)
    expect(service).toMatch(/^Nice=10$/m)
    expect(service).toMatch(/^IOSchedulingClass=idle$/m)
    expect(service).toMatch(/^SuccessExitStatus=3$/m)
    const timer = await readFile(join(units, 'bbackup-home.timer'), 'utf8')
    expect(timer).toMatch(/^OnCalendar=hourly$/m)
    expect(timer).toMatch(/^Persistent=true$/m)
    expect(timer).toMatch(/^RandomizedDelaySec=600$/m)
    expect(timer).toMatch(/^WantedBy=timers.target$/m)

    // no systemd as init here: run what the timer would start, word for word
    const argv = execStartOf(service)
    expect(argv.slice(-5)).toEqual(['run', '-c', config, '-j', 'home'])
    execFileSync(argv[0] ?? '', argv.slice(1), { cwd: ROOT, stdio: 'pipe' })
    const backups = (await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))
    expect(backups).toHaveLength(1)
    expect(await readFile(join(tmp.path, 'dst', backups[0] ?? '', 'd/b.txt'), 'utf8')).toBe('b\n')
  })

  it('writes BBACKUP_STATE_DIR into the service, so that the timer\'s runs keep their state where the runs by hand do', async () => {
    const saved = process.env.BBACKUP_STATE_DIR
    // systemd reads %, " and \\ in an assignment: each must come through as it is
    const root = join(tmp.path, 'state "a" 100% \\b')
    await writeFile(config, `[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst')}"]\ndriver = "rsync"\n`)
    try {
      process.env.BBACKUP_STATE_DIR = root
      expect((await runCli(['schedule', 'home', '-c', config, '--unit-dir', units], tmp.path)).code).toBe(0)
    } finally {
      process.env.BBACKUP_STATE_DIR = saved
    }
    const verify = spawnSync('systemd-analyze', ['verify', join(units, 'bbackup-home.service')], { encoding: 'utf8', cwd: units })
    expect({ status: verify.status, stderr: verify.stderr }).toEqual({ status: 0, stderr: '' })
    const service = await readFile(join(units, 'bbackup-home.service'), 'utf8')
    const quoted = /^Environment="((?:[^"\\]|\\.)*)"$/m.exec(service)?.[1]
    const assignment = quoted?.replace(/\\(.)/g, '$1').replaceAll('%%', '%')
    expect(assignment).toBe(`BBACKUP_STATE_DIR=${root}`)
    // what the timer starts, with the environment systemd gives it
    const argv = execStartOf(service)
    execFileSync(argv[0] ?? '', argv.slice(1), { cwd: ROOT, stdio: 'pipe', env: { ...process.env, BBACKUP_STATE_DIR: root } })
    expect(await readdir(join(root, 'jobs'))).toEqual(['home'])
    // without the variable, no Environment line
    try {
      delete process.env.BBACKUP_STATE_DIR
      const printed = await runCli(['schedule', 'home', '-c', config, '--print', '--unit-dir', units], tmp.path)
      expect(printed).toMatchObject({ code: 0, stdout: expect.stringContaining('ExecStart=') })
      expect(printed.stdout).not.toContain('Environment=')
    } finally {
      process.env.BBACKUP_STATE_DIR = saved
    }
  })

  it('status says when a configured job runs next: not scheduled, a timer not enabled, or the next elapse of an enabled one', async () => {
    const status = async (): Promise<string> => (await runCli(['status', '-c', config, '--unit-dir', units], tmp.path)).stdout
    expect(await status()).toMatch(/^home: .*src \(rsync\)\n {2}next run: not scheduled \(bbackup schedule home --on-calendar daily writes a timer\)\n/)
    expect((await runCli(['schedule', 'home', '-c', config, '--on-calendar', 'hourly', '--unit-dir', units], tmp.path)).code).toBe(0)
    expect(await status()).toContain('  next run: bbackup-home.timer (hourly) is not enabled: systemctl enable --now bbackup-home.timer\n')
    // what systemctl enable does
    await mkdir(join(units, 'timers.target.wants'))
    await symlink(join(units, 'bbackup-home.timer'), join(units, 'timers.target.wants', 'bbackup-home.timer'))
    // the next full hour, taken before and after the command: an hour may turn while it runs
    const nextHour = (): string => {
      const hour = new Date()
      hour.setUTCHours(hour.getUTCHours() + 1, 0, 0, 0)
      return hour.toISOString().replace('.000Z', 'Z')
    }
    const before = nextHour()
    const text = await status()
    const json = JSON.parse((await runCli(['status', '-c', config, '--unit-dir', units, '--json'], tmp.path)).stdout) as { schedule: { next: string } }
    const hours = [before, nextHour()]
    expect(hours.map((h) => `  next run: ${h.slice(0, 16).replace('T', ' ')} UTC (in `).some((line) => text.includes(line)), text).toBe(true)
    expect(hours).toContain(json.schedule.next)
    expect(json.schedule).toEqual({ path: join(units, 'bbackup-home.timer'), onCalendar: 'hourly', enabled: true, next: json.schedule.next })
  })

  it('a group gets a timer of its own that runs its jobs (auto = false ones too), and status names it as the next run of each', async () => {
    await writeTree(join(tmp.path, 'usb-src'), { 'u.txt': 'u\n' })
    await writeFile(config, [
      `state_dir = "${join(tmp.path, 'state')}"`, '',
      '[jobs.home]', `source = "${join(tmp.path, 'src')}"`, `targets = ["${join(tmp.path, 'dst')}"]`, 'driver = "rsync"', 'groups = ["nightly"]', '',
      '[jobs.usb]', `source = "${join(tmp.path, 'usb-src')}"`, `targets = ["${join(tmp.path, 'usb')}"]`, 'driver = "rsync"', 'groups = ["nightly"]', 'auto = false', '',
    ].join('\n'))
    const r = await runCli(['schedule', 'nightly', '-c', config, '--on-calendar', 'hourly', '--unit-dir', units], tmp.path)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain(`wrote ${join(units, 'bbackup-nightly.timer')}\ngroup nightly (jobs home, usb) runs *-*-* *:00:00`)
    const service = await readFile(join(units, 'bbackup-nightly.service'), 'utf8')
    expect(service).toMatch(/^Description=bbackup group nightly \(jobs home, usb\)$/m)
    const verify = spawnSync('systemd-analyze', ['verify', join(units, 'bbackup-nightly.service'), join(units, 'bbackup-nightly.timer')], { encoding: 'utf8', cwd: units })
    expect({ status: verify.status, stderr: verify.stderr }).toEqual({ status: 0, stderr: '' })
    const argv = execStartOf(service)
    expect(argv.slice(-5)).toEqual(['run', '-c', config, '-j', 'nightly'])
    execFileSync(argv[0] ?? '', argv.slice(1), { cwd: ROOT, stdio: 'pipe' })
    expect((await readdir(join(tmp.path, 'dst'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
    expect((await readdir(join(tmp.path, 'usb'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)

    const status = async (): Promise<string> => (await runCli(['status', '-c', config, '-j', 'nightly', '--unit-dir', units], tmp.path)).stdout
    expect(await status()).toContain('  next run: bbackup-nightly.timer (hourly, group nightly) is not enabled: systemctl enable --now bbackup-nightly.timer\n')
    await mkdir(join(units, 'timers.target.wants'))
    await symlink(join(units, 'bbackup-nightly.timer'), join(units, 'timers.target.wants', 'bbackup-nightly.timer'))
    // the job's own timer, not enabled, does not hide the group's that is
    expect((await runCli(['schedule', 'home', '-c', config, '--on-calendar', 'daily', '--unit-dir', units], tmp.path)).code).toBe(0)
    const text = await status()
    expect(text.match(/ UTC \(in [^)]*\), by bbackup-nightly\.timer \(group nightly\)\n/g), text).toHaveLength(2)
    const json = JSON.parse((await runCli(['status', '-c', config, '-j', 'home', '--unit-dir', units, '--json'], tmp.path)).stdout) as { schedule: { group?: string; enabled: boolean } }
    expect(json.schedule).toMatchObject({ group: 'nightly', enabled: true, path: join(units, 'bbackup-nightly.timer') })
  })

  it('lists and removes only the units it wrote, and refuses bad input without writing', async () => {
    expect((await runCli(['schedule', 'home', '-c', config, '--unit-dir', units], tmp.path)).code).toBe(0)
    await mkdir(join(units, 'timers.target.wants'))
    await symlink(join(units, 'bbackup-home.timer'), join(units, 'timers.target.wants/bbackup-home.timer'))
    await writeFile(join(units, 'bbackup-other.timer'), '[Timer]\nOnCalendar=daily\n')
    const listed = await runCli(['schedule', '--list', '--unit-dir', units], tmp.path)
    expect(listed.stdout).toBe(`home\tdaily\t${join(units, 'bbackup-home.timer')}\n`)

    const printed = await runCli(['schedule', 'home', '-c', config, '--on-calendar', 'Mon..Fri 22:00', '--print', '--unit-dir', join(tmp.path, 'nowhere')], tmp.path)
    expect(printed.code).toBe(0)
    expect(printed.stdout).toContain(`# ${join(tmp.path, 'nowhere', 'bbackup-home.timer')}\n# Written by bbackup schedule.`)
    expect(printed.stdout).toMatch(/^OnCalendar=Mon\.\.Fri 22:00$/m)
    expect(existsSync(join(tmp.path, 'nowhere'))).toBe(false)

    const bad = await runCli(['schedule', 'home', '-c', config, '--on-calendar', 'every tuesday-ish', '--unit-dir', units], tmp.path)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/systemd does not read --on-calendar "every tuesday-ish" as a time/)
    const unknown = await runCli(['schedule', 'nope', '-c', config, '--unit-dir', units], tmp.path)
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toMatch(/no job or group named nope in .*\n {2}hint: its jobs are: home/)
    const foreign = await runCli(['schedule', 'other', '-c', config, '--remove', '--unit-dir', units], tmp.path)
    expect(foreign.code).not.toBe(0)
    expect(foreign.stderr).toMatch(/bbackup-other.timer exists and was not written by bbackup schedule/)
    expect(existsSync(join(units, 'bbackup-other.timer'))).toBe(true)

    const removed = await runCli(['schedule', 'home', '--remove', '--unit-dir', units], tmp.path)
    expect(removed.code, removed.stderr).toBe(0)
    expect((await readdir(units)).sort()).toEqual(['bbackup-other.timer', 'timers.target.wants'])
    expect(await readdir(join(units, 'timers.target.wants'))).toEqual([])
  })
})
