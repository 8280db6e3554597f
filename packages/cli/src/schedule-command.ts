import { execFile } from 'node:child_process'
import { mkdir, readdir, readFile, readlink, rename, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { bbError, STATE_DIR_ENV, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { loadConfig, selectJobs } from './config.js'
import type { Io } from './render.js'
import { calendarOf, checkCalendar, enableCommands, serviceUnit, timerUnit, UNIT_MARK, unitStem, type ScheduleCommandOptions } from './schedule.js'

const readIfThere = (path: string): Promise<string | undefined> => readFile(path, 'utf8').catch(() => undefined)

/** a unit file bbackup may replace or remove: absent, or written by it */
const ours = async (path: string): Promise<Result<boolean, BbError>> => {
  const text = await readIfThere(path)
  if (text === undefined) return ok(false)
  return text.startsWith(UNIT_MARK) ? ok(true) : err(bbError('INVALID_OPTIONS', `${path} exists and was not written by bbackup schedule: it is left as it is`, 'move it away (or choose another job name) and run again', { path }))
}

const writeAtomic = async (path: string, text: string): Promise<void> => {
  const temp = `${path}.tmp-${process.pid}`
  await writeFile(temp, text, { mode: 0o644 })
  await rename(temp, path)
}

/**
 * `bbackup schedule NAME`: the .service and .timer that run a configured job, or the jobs of a group
 * (btrbk's `btrbk run GROUP` in a cron line), written or printed
 */
export const scheduleJob = async (io: Io, job: string, o: ScheduleCommandOptions): Promise<Result<void, BbError>> => {
  const config = loadConfig(o.config)
  if (config.isErr()) return err(config.error)
  const selected = selectJobs(config.value, [job])
  if (selected.isErr()) return err(selected.error)
  const isJob = [...config.value.jobs, ...config.value.blockJobs].some((j) => j.name === job)
  const members = [...selected.value.jobs, ...selected.value.blockJobs].map((j) => j.name ?? '')
  const what = isJob ? `job ${job}` : `group ${job} (${members.length === 1 ? 'job' : 'jobs'} ${members.join(', ')})`
  const stem = unitStem(job)
  if (stem.isErr()) return err(stem.error)
  const calendar = await checkCalendar(o.onCalendar)
  if (calendar.isErr()) return err(calendar.error)
  let delay: number | undefined
  if (o.randomizedDelay !== undefined) {
    delay = Number(o.randomizedDelay)
    if (!Number.isInteger(delay) || delay < 0) return err(bbError('INVALID_OPTIONS', `--randomized-delay ${o.randomizedDelay} is not a whole number of seconds`, 'give seconds, e.g. --randomized-delay 900'))
  }
  const stateRoot = process.env[STATE_DIR_ENV]
  const spec = { job, what, configPath: o.config, self: io.self ?? [process.execPath, process.argv[1] ?? 'bbackup'], onCalendar: o.onCalendar, ...(delay === undefined ? {} : { randomizedDelaySeconds: delay }), ...(stateRoot === undefined || stateRoot === '' ? {} : { stateRoot }) }
  const files: [string, string][] = [[join(o.unitDir, `${stem.value}.service`), serviceUnit(spec)], [join(o.unitDir, `${stem.value}.timer`), timerUnit(spec)]]
  if (o.print) {
    io.stdout(files.map(([path, text]) => `# ${path}\n${text}`).join('\n'))
    return ok(undefined)
  }
  for (const [path] of files) {
    const mine = await ours(path)
    if (mine.isErr()) return err(mine.error)
  }
  try {
    // ~/.config/systemd/user is often not there yet (systemctl --user edit makes it too)
    await mkdir(o.unitDir, { recursive: true })
    for (const [path, text] of files) await writeAtomic(path, text)
  } catch (e) {
    const denied = ['EACCES', 'EPERM', 'EROFS'].includes((e as NodeJS.ErrnoException).code ?? '')
    return err(bbError('IO_FAILED', `cannot write the units into ${o.unitDir}: ${(e as Error).message}`,
      denied && !o.user ? 'run as root, or give --user for units of your own user' : 'check the directory (--unit-dir) and its permissions', { path: o.unitDir }))
  }
  io.stdout([
    ...files.map(([path]) => `wrote ${path}`),
    `${what} runs ${calendar.value}${delay === undefined ? '' : ` (up to ${delay} s later)`}; a run missed while the host was off starts when it is up`,
    'to start the timer:',
    ...enableCommands(stem.value, o.user).map((c) => `  ${c}`),
    '',
  ].join('\n'))
  return ok(undefined)
}

/** `bbackup schedule --list`: the timers bbackup wrote in the unit directory */
export const listSchedules = async (io: Io, o: Pick<ScheduleCommandOptions, 'unitDir'>): Promise<Result<void, BbError>> => {
  const entries = await readdir(o.unitDir).catch(() => [] as string[])
  const lines: string[] = []
  for (const name of entries.filter((n) => /^bbackup-.*\.timer$/.test(n)).sort()) {
    const text = await readIfThere(join(o.unitDir, name))
    if (text?.startsWith(UNIT_MARK) !== true) continue
    lines.push(`${name.slice('bbackup-'.length, -'.timer'.length)}\t${calendarOf(text) ?? '?'}\t${join(o.unitDir, name)}`)
  }
  io.stdout(lines.length === 0 ? `no bbackup timers in ${o.unitDir}\n` : `${lines.join('\n')}\n`)
  return ok(undefined)
}

/** `bbackup schedule --remove JOB`: its two units and the timer's enablement link, if bbackup wrote them */
export const removeSchedule = async (io: Io, job: string, o: Pick<ScheduleCommandOptions, 'unitDir' | 'user'>): Promise<Result<void, BbError>> => {
  const stem = unitStem(job)
  if (stem.isErr()) return err(stem.error)
  const paths = [join(o.unitDir, `${stem.value}.timer`), join(o.unitDir, `${stem.value}.service`)]
  let found = false
  for (const path of paths) {
    const mine = await ours(path)
    if (mine.isErr()) return err(mine.error)
    found ||= mine.value
  }
  if (!found) return err(bbError('JOB_NOT_FOUND', `there is no bbackup timer for job ${JSON.stringify(job)} in ${o.unitDir}`, 'bbackup schedule --list shows the ones there'))
  // what `systemctl disable` removes: the link in timers.target.wants, when it points at our timer
  const wants = join(o.unitDir, 'timers.target.wants', `${stem.value}.timer`)
  const link = await readlink(wants).catch(() => undefined)
  const removed: string[] = []
  for (const path of [...(link === paths[0] ? [wants] : []), ...paths]) {
    if ((await unlink(path).then(() => true, () => false))) removed.push(path)
  }
  const systemctl = o.user ? 'systemctl --user' : 'systemctl'
  io.stdout([...removed.map((p) => `removed ${p}`), `then: ${systemctl} stop ${stem.value}.timer; ${systemctl} daemon-reload`, ''].join('\n'))
  return ok(undefined)
}

/** A job's timer as `bbackup schedule` wrote it, for `bbackup status`. */
export interface JobTimer {
  /** the timer unit's file */
  readonly path: string
  /** the group whose timer it is (`bbackup schedule GROUP`); absent for the job's own */
  readonly group?: string
  readonly onCalendar: string
  /** linked into timers.target.wants, as `systemctl enable` does */
  readonly enabled: boolean
  /** the next time the calendar expression elapses (ISO, UTC), as `systemd-analyze calendar` reckons it; undefined without systemd's tools */
  readonly next?: string
}

/** `systemd-analyze calendar`'s next elapse of an expression, in UTC */
const nextElapse = (expression: string): Promise<string | undefined> => new Promise((resolve) => {
  execFile('systemd-analyze', ['calendar', '--iterations=1', '--', expression], { timeout: 10_000, env: { ...process.env, TZ: 'UTC', LC_ALL: 'C' } }, (error, stdout) => {
    const m = error === null ? /Next elapse: \S+ (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d) UTC/.exec(stdout) : null
    resolve(m === null ? undefined : `${m[1] ?? ''}T${m[2] ?? ''}Z`)
  })
})

/** The timer `bbackup schedule` wrote for the name (a job's or a group's) in `unitDir`, or undefined when there is none. */
const timerNamed = async (name: string, unitDir: string): Promise<JobTimer | undefined> => {
  const stem = unitStem(name)
  if (stem.isErr()) return undefined
  const path = join(unitDir, `${stem.value}.timer`)
  const text = await readIfThere(path)
  const onCalendar = text?.startsWith(UNIT_MARK) === true ? calendarOf(text) : undefined
  if (onCalendar === undefined) return undefined
  const enabled = (await readlink(join(unitDir, 'timers.target.wants', `${stem.value}.timer`)).catch(() => undefined)) !== undefined
  const next = await nextElapse(onCalendar)
  return { path, onCalendar, enabled, ...(next === undefined ? {} : { next }) }
}

/**
 * The timer that runs a job next: its own or one of its groups' (`bbackup schedule NAME` took
 * either), an enabled one before one that is not, the soonest next elapse first; undefined when
 * none was written.
 */
export const timerOf = async (job: { readonly name: string; readonly groups?: readonly string[] }, unitDir: string): Promise<JobTimer | undefined> => {
  const timers: JobTimer[] = []
  for (const name of [job.name, ...(job.groups ?? [])]) {
    const timer = await timerNamed(name, unitDir)
    if (timer !== undefined) timers.push(name === job.name ? timer : { ...timer, group: name })
  }
  const rank = (t: JobTimer): number => (t.enabled ? (t.next === undefined ? Number.MAX_SAFE_INTEGER : Date.parse(t.next)) : Infinity)
  return timers.reduce<JobTimer | undefined>((best, t) => (best === undefined || rank(t) < rank(best) ? t : best), undefined)
}
