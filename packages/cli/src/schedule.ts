import { execFile } from 'node:child_process'
import { bbError, STATE_DIR_ENV, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { JOB_NAME } from './config.js'

/** the first line of every unit bbackup writes: `--list` and `--remove` touch only files that have it */
export const UNIT_MARK = '# Written by bbackup schedule.'

export interface ScheduleSpec {
  /** the name `bbackup run -j` is given: a job's or a group's */
  readonly job: string
  /** how the units describe it: `job home`, `group offsite (jobs home, srv)` */
  readonly what: string
  /** an absolute path: the config the timer's run reads */
  readonly configPath: string
  /** the argv that runs this bbackup (node and the bin's path) */
  readonly self: readonly string[]
  /** systemd's OnCalendar (`hourly`, `*-*-* 02:30`), checked by `systemd-analyze calendar` */
  readonly onCalendar: string
  /** spread the start over this many seconds (RandomizedDelaySec), so a fleet does not start at once */
  readonly randomizedDelaySeconds?: number
  /** `BBACKUP_STATE_DIR` where the schedule was written: the timer's runs keep their state where the runs by hand do */
  readonly stateRoot?: string
}

/** `bbackup-JOB`, the stem of both units; a job name must be a valid unit name as it is */
export const unitStem = (job: string): Result<string, BbError> => (JOB_NAME.test(job)
  ? ok(`bbackup-${job}`)
  : err(bbError('INVALID_OPTIONS', `the job name ${JSON.stringify(job)} cannot be part of a systemd unit name`, 'name the job with letters, digits, ".", "_" and "-" only', { job })))

/** a word of ExecStart: systemd splits on spaces and reads C-style quotes, and expands % and $ */
const execWord = (word: string): string => {
  const escaped = word.replaceAll('%', '%%').replaceAll('$', '$$')
  return /^[A-Za-z0-9_@+:,./=-]+$/.test(escaped) ? escaped : `"${escaped.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`
}

/** an assignment of Environment=: in quotes, C-style escapes; systemd expands % there, not $ */
const environmentWord = (assignment: string): string =>
  `"${assignment.replaceAll('%', '%%').replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`

/**
 * The `.service` of a job: one run, niced and idle on I/O, that counts a run which found the job
 * already running (exit 3, the lock is held) as done: the other run is doing the work.
 */
export const serviceUnit = (spec: ScheduleSpec): string => [
  UNIT_MARK,
  `[Unit]`,
  `Description=bbackup ${spec.what}`,
  'Wants=network-online.target',
  'After=network-online.target',
  '',
  '[Service]',
  'Type=oneshot',
  ...(spec.stateRoot === undefined ? [] : [`Environment=${environmentWord(`${STATE_DIR_ENV}=${spec.stateRoot}`)}`]),
  `ExecStart=${[...spec.self, 'run', '-c', spec.configPath, '-j', spec.job].map(execWord).join(' ')}`,
  'SuccessExitStatus=3',
  'Nice=10',
  'IOSchedulingClass=idle',
  'CPUSchedulingPolicy=batch',
  // a backup takes as long as it takes; the run's own no-progress watchdog ends a stalled transfer
  'TimeoutStartSec=infinity',
  '',
].join('\n')

export const timerUnit = (spec: ScheduleSpec): string => [
  UNIT_MARK,
  '[Unit]',
  `Description=bbackup ${spec.what}, ${spec.onCalendar}`,
  '',
  '[Timer]',
  `OnCalendar=${spec.onCalendar}`,
  // a run missed while the machine was off starts when it is up again
  'Persistent=true',
  ...(spec.randomizedDelaySeconds === undefined ? [] : [`RandomizedDelaySec=${spec.randomizedDelaySeconds}`]),
  'AccuracySec=1min',
  '',
  '[Install]',
  'WantedBy=timers.target',
  '',
].join('\n')

/** what to run after the units are written (bbackup does not call systemctl itself) */
export const enableCommands = (stem: string, user: boolean): string[] => {
  const systemctl = user ? 'systemctl --user' : 'systemctl'
  return [`${systemctl} daemon-reload`, `${systemctl} enable --now ${stem}.timer`, ...(user ? ['loginctl enable-linger "$USER"   # run while you are logged out too'] : [])]
}

/** `systemd-analyze calendar EXPR`: systemd's own reading of the expression, or why it has none */
export const checkCalendar = (expression: string): Promise<Result<string, BbError>> => new Promise((resolve) => {
  if (/[\n\r]/.test(expression)) return resolve(err(bbError('INVALID_OPTIONS', 'the --on-calendar expression has a line break', 'give it on one line, e.g. --on-calendar hourly')))
  execFile('systemd-analyze', ['calendar', '--', expression], { timeout: 10_000 }, (error, stdout, stderr) => {
    if (error !== null && (error as NodeJS.ErrnoException).code === 'ENOENT') {
      // without systemd's tools the expression is written as given: systemd reports it when it loads the timer
      return resolve(ok(expression))
    }
    if (error !== null) {
      return resolve(err(bbError('INVALID_OPTIONS', `systemd does not read --on-calendar ${JSON.stringify(expression)} as a time: ${stderr.trim() || error.message}`,
        'give an OnCalendar expression (systemd.time(7)): hourly, daily, "*-*-* 02:30", "Mon..Fri 22:00"; try it with: systemd-analyze calendar EXPR')))
    }
    resolve(ok(/Normalized form: (.*)/.exec(stdout)?.[1]?.trim() ?? expression))
  })
})

/** reads back the OnCalendar of a timer bbackup wrote, for `schedule --list` */
export const calendarOf = (timerText: string): string | undefined => /^OnCalendar=(.*)$/m.exec(timerText)?.[1]

export interface ScheduleCommandOptions {
  readonly config: string
  readonly onCalendar: string
  readonly randomizedDelay?: string
  readonly user: boolean
  readonly unitDir: string
  readonly print: boolean
}

/** the directory units go to: the system's, or the user's with --user */
export const defaultUnitDir = (user: boolean, env: Readonly<Record<string, string | undefined>>): string =>
  user ? `${env.XDG_CONFIG_HOME ?? `${env.HOME ?? '~'}/.config`}/systemd/user` : '/etc/systemd/system'
