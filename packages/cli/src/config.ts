import { readFileSync, statSync } from 'node:fs'
import { posix } from 'node:path'
import { bbError, normalizePolicy, parseLocation, type BbError, type RetentionPolicy } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { parse, TomlError } from 'smol-toml'
import { hookTimeoutOf, parseDuration, parseRate } from './duration.js'
import { parseRetentionSpec } from './retention-spec.js'

export const DEFAULT_CONFIG = '/etc/bbackup/config.toml'

export type DriverChoice = 'rsync' | 'btrfs' | 'block'

/** A job as the CLI runs it, from the command line or one `[jobs.NAME]` table. */
export interface JobSpec {
  readonly name?: string
  /** the groups a filter word may name it by (btrbk's `group`): `bbackup run GROUP` */
  readonly groups?: readonly string[]
  /** false: only a command that names the job or one of its groups takes it (btrbk's `noauto`) */
  readonly auto?: false
  /** the config keys this job took from the top level (defaults): one that does not apply to its driver is left out, not refused */
  readonly inherited?: readonly string[]
  /** `status --check`: the newest backup's age that makes the job a warning, critical ("26h", "2d") */
  readonly warnAge?: string
  readonly criticalAge?: string
  readonly source: string
  readonly targets: readonly string[]
  readonly driver?: DriverChoice
  readonly prefix?: string
  readonly stateDir?: string
  readonly exclude: readonly string[]
  readonly excludeFrom: readonly string[]
  readonly oneFileSystem: boolean
  readonly acceptPartial: boolean
  /** leave out what rsync-system-backup leaves out of a system backup (/dev, /proc, caches…), wherever the source is */
  readonly systemExcludes?: boolean
  /** rsync to a daemon: transfer only, the module's post-xfer exec publishes and rotates (`run -b`) */
  readonly serverPublishes?: boolean
  readonly rsyncOptions: readonly string[]
  readonly keepBackups?: RetentionPolicy
  readonly keepSnapshots?: RetentionPolicy
  /** how many snapshots one prune may delete at a place, or 'all' (the engine's default when omitted) */
  readonly maxDelete?: number | 'all'
  readonly timeZone?: string
  /** btrfs: where the source snapshots go */
  readonly snapshotFolder?: string
  /** btrfs: snapper takes the source's snapshots; a run takes over its newest instead of taking one */
  readonly snapper?: boolean
  /** btrfs: btrbk's `snapshot_create`: `onchange` takes a snapshot only when the source changed since the newest */
  readonly snapshotCreate?: 'always' | 'onchange'
  /** btrfs: btrbk's `incremental`: `no` sends every snapshot in full, `strict` none in full */
  readonly incremental?: 'yes' | 'no' | 'strict'
  readonly sendProtocol?: 'auto' | 1 | 2
  readonly compressedData?: boolean
  /** btrfs: targets that keep the send streams as files (besides `targets`) */
  readonly rawTargets?: readonly string[]
  readonly rawCompress?: 'zstd' | 'none'
  /** btrfs raw targets: `gpg` encrypts each stream file on this host to `rawGpgRecipients` */
  readonly rawEncrypt?: 'gpg' | 'none'
  readonly rawGpgRecipients?: readonly string[]
  /** a keyring file with the recipients' public keys, instead of the user's */
  readonly rawGpgKeyring?: string
  /** btrfs: commands that each get the send streams on stdin (`sh -c`), with a ledger in the state directory */
  readonly pipeTargets?: readonly string[]
  /** btrfs raw targets: a full stream after this many incrementals */
  readonly rawFullEvery?: number
  /** `zstd`: compress what goes to or from another host (btrfs streams; rsync's --compress) */
  readonly streamCompress?: 'zstd' | 'none'
  /** bytes a second at most, on the way to each target */
  readonly rateLimit?: number
  /** btrfs on this host through `sudo -n`, for a user that is not root (`sudo`) */
  readonly sudo?: boolean
  /** how remote (ssh) locations are reached */
  readonly ssh?: SshSpec
  /** how rsync daemon locations are reached */
  readonly rsyncd?: RsyncdSpec
  /** a mount point of /etc/fstab to mount for the run; the targets lie inside it */
  readonly mount?: string
  /** an /etc/crypttab name: the encrypted backup disk unlocked for the run (before `mount`) */
  readonly crypto?: string
  /** shell commands run around the run and around the capture of the source */
  readonly hooks?: HookCommands
}

/**
 * A job's hook commands (`pre_exec`, `pre_snapshot_exec`, `post_snapshot_exec`, `post_exec`; the
 * options `--pre-exec` …), each run as `/bin/sh -c` on this host (core's `commandHook`).
 */
export interface HookCommands {
  readonly preRun?: string
  readonly preSnapshot?: string
  readonly postSnapshot?: string
  readonly postRun?: string
  /** how long each may run (`hook_timeout`, `--hook-timeout`; 0: no limit); default core's `HOOK_TIMEOUT_SECONDS` */
  readonly timeoutSeconds?: number
}

/** The hooks of {@link HookCommands}, each a command. */
export type HookCommandPoint = 'preRun' | 'preSnapshot' | 'postSnapshot' | 'postRun'

/** The config key of each hook. */
export const HOOK_CONFIG_KEYS: Readonly<Record<HookCommandPoint, string>> = {
  preRun: 'pre_exec', preSnapshot: 'pre_snapshot_exec', postSnapshot: 'post_snapshot_exec', postRun: 'post_exec',
}

/** rsync daemon settings of a job: `password_file`, `tunnel` (docs/transports/rsyncd.md). */
export interface RsyncdSpec {
  /** the module's password, alone in a file of mode 0600 */
  readonly passwordFile?: string
  /** `[user@]host[:port]`: reach the daemon through a port forwarded over ssh to this host */
  readonly tunnel?: string
}

/** ssh settings of a job: `ssh_identity`, `ssh_known_hosts`, `ssh_options`, `ssh_program`, `ssh_sudo`. */
export interface SshSpec {
  readonly identityFile?: string
  readonly knownHostsFile?: string
  readonly options?: readonly string[]
  readonly program?: string
  readonly sudo?: boolean
}

/** How what crosses to or from another host travels (`stream_compress`, `rate_limit`). */
export interface WaySpec {
  readonly streamCompress?: 'zstd' | 'none'
  /** bytes a second */
  readonly rateLimit?: number
}

/** A block volume in the config: `driver = "block"` and `backup_dir`; source and schedule are in its volume.json. */
export interface BlockJobSpec {
  readonly name: string
  /** as a job's ({@link JobSpec.groups}, {@link JobSpec.auto}) */
  readonly groups?: readonly string[]
  readonly auto?: false
  readonly backupDir: string
  /** how a source on another host is reached */
  readonly ssh?: SshSpec
  /** how its bytes cross the network */
  readonly way?: WaySpec
  /** status --check: the newest revision may be this old before the volume is a warning, and critical */
  readonly warnAge?: string
  readonly criticalAge?: string
  readonly hooks?: HookCommands
}

export interface Config {
  readonly path: string
  readonly stateDir?: string
  /** where `bbackup run` writes Prometheus metrics after every run (node_exporter's textfile collector) */
  readonly metricsFile?: string
  /** where run and prune append btrbk's transaction log: a line per snapshot created, sent, deleted */
  readonly transactionLog?: string
  readonly jobs: readonly JobSpec[]
  readonly blockJobs: readonly BlockJobSpec[]
}

/** The snake_case keys of a retention table and the policy keys they map to, one to one. */
const RETENTION_KEYS: Readonly<Record<string, string>> = {
  preserve_min: 'preserveMin', preserve: 'preserve', day_of_week: 'dayOfWeek', hour_of_day: 'hourOfDay',
  minutely: 'minutely', hourly: 'hourly', daily: 'daily', weekly: 'weekly', monthly: 'monthly', quarterly: 'quarterly', yearly: 'yearly', strict: 'strict', prefer: 'prefer',
  keep_last: 'keepLast',
}
const JOB_KEYS = ['source', 'targets', 'driver', 'backup_dir', 'prefix', 'state_dir', 'exclude', 'exclude_from', 'one_file_system', 'accept_partial', 'system_excludes', 'rsync_options', 'keep_backups', 'keep_snapshots', 'max_delete', 'time_zone', 'snapshot_folder', 'snapper', 'snapshot_create', 'incremental', 'send_protocol', 'compressed_data', 'raw_targets', 'raw_compress', 'raw_encrypt', 'raw_gpg_recipients', 'raw_gpg_keyring', 'raw_full_every', 'pipe_targets', 'stream_compress', 'rate_limit', 'sudo', 'ssh_identity', 'ssh_known_hosts', 'ssh_options', 'ssh_program', 'ssh_sudo', 'password_file', 'tunnel', 'mount', 'crypto', 'warn_age', 'critical_age', ...Object.values(HOOK_CONFIG_KEYS), 'hook_timeout', 'groups', 'auto']
/** the job keys that may stand at the top level as every job's default: not what names one job's own places, nor which commands take it */
const DEFAULT_KEYS = JOB_KEYS.filter((key) => !['source', 'targets', 'driver', 'backup_dir', 'prefix', 'state_dir', 'raw_targets', 'pipe_targets', 'groups', 'auto'].includes(key))
/** keys of the tools bbackup replaces (btrbk.conf, rsnapshot.conf, btrfs-backup's options): whose, and what to write here instead */
const FOREIGN_KEYS: Readonly<Record<string, readonly [string, string]>> = {
  volume: ['btrbk', 'source = "VOLUME/SUBVOLUME", btrbk\'s volume and subvolume as one path'],
  subvolume: ['btrbk', 'source = "VOLUME/SUBVOLUME", btrbk\'s volume and subvolume as one path'],
  snapshot_dir: ['btrbk', 'snapshot_folder, an absolute path or one inside the source'],
  snapshot_name: ['btrbk', 'prefix, with its dot: prefix = "home."'],
  snapshot_preserve: ['btrbk', 'keep_snapshots = { preserve_min = "…", preserve = "…" }'],
  snapshot_preserve_min: ['btrbk', 'keep_snapshots = { preserve_min = "…", preserve = "…" }'],
  target_preserve: ['btrbk', 'keep_backups = { preserve_min = "…", preserve = "…" }'],
  target_preserve_min: ['btrbk', 'keep_backups = { preserve_min = "…", preserve = "…" }'],
  preserve_day_of_week: ['btrbk', 'day_of_week in the retention table: keep_backups = { preserve = "…", day_of_week = "sunday" }'],
  preserve_hour_of_day: ['btrbk', 'hour_of_day in the retention table: keep_backups = { preserve = "…", hour_of_day = 0 }'],
  noauto: ['btrbk', 'auto = false'],
  send_compressed_data: ['btrbk', 'compressed_data'],
  raw_target_compress: ['btrbk', 'raw_compress'],
  raw_target_encrypt: ['btrbk', 'raw_encrypt'],
  gpg_recipient: ['btrbk', 'raw_gpg_recipients = ["KEY"]'],
  gpg_keyring: ['btrbk', 'raw_gpg_keyring'],
  backend: ['btrbk', 'sudo = true for btrfs-progs-sudo on this host, ssh_sudo = true on the other host'],
  backend_remote: ['btrbk', 'ssh_sudo = true for btrfs-progs-sudo on the other host'],
  ssh_user: ['btrbk', 'the user in the location: "ssh://USER@HOST/path"'],
  lockfile: ['btrbk and rsnapshot', 'nothing: every job has a lock of its own'],
  num_snapshots: ['btrfs-backup', 'keep_snapshots = { keep_last = N }'],
  num_backups: ['btrfs-backup', 'keep_backups = { keep_last = N }'],
  retain: ['rsnapshot', 'keep_backups = { hourly = 6, daily = 7, weekly = 4 }'],
  snapshot_root: ['rsnapshot', 'targets = ["/mnt/backup/NAME"], a directory of the job\'s own'],
  exclude_file: ['rsnapshot', 'exclude_from = ["FILE"]'],
  one_fs: ['rsnapshot', 'one_file_system'],
  rsync_long_args: ['rsnapshot', 'rsync_options = ["…"]'],
  rsync_short_args: ['rsnapshot', 'rsync_options = ["…"]'],
  cmd_preexec: ['rsnapshot', 'pre_exec'],
  cmd_postexec: ['rsnapshot', 'post_exec'],
}

/** 'unknown key' (or `what`), and what it may have meant */
const unknownKey = (key: string, known: readonly string[], what = 'unknown key'): string => {
  const meant = meantKey(key, known)
  return meant === undefined ? what : `${what} (${meant})`
}

/**
 * What an unknown key may have meant: the known key it is a typo of (at most two letters off, one
 * in a short key; a letter left out, added, changed, or two swapped), or what another tool's key
 * is written as here.
 * @example
 * meantKey('snapshot_foldr', JOB_KEYS) // 'did you mean snapshot_folder?'
 */
const meantKey = (key: string, known: readonly string[]): string | undefined => {
  const foreign = FOREIGN_KEYS[key]
  if (foreign !== undefined) return `${foreign[0]}'s key; here: ${foreign[1]}`
  const most = key.length <= 4 ? 1 : 2
  const near = known.map((k) => ({ k, d: editDistance(key.toLowerCase().replace(/-/g, '_'), k) })).filter((n) => n.d <= most).sort((a, b) => a.d - b.d)[0]
  return near === undefined ? undefined : `did you mean ${near.k}?`
}

/** Letters to insert, delete, change or swap (two beside each other) to make one word the other. */
const editDistance = (a: string, b: string): number => {
  const width = b.length + 1
  const d: number[] = []
  const at = (i: number, j: number): number => d[i * width + j] ?? 0
  for (let i = 0; i <= a.length; i++) {
    for (let j = 0; j <= b.length; j++) {
      const swapped = i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]
      d[i * width + j] = i === 0 || j === 0 ? i + j
        : Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + (a[i - 1] === b[j - 1] ? 0 : 1), swapped ? at(i - 2, j - 2) + 1 : Infinity)
    }
  }
  return at(a.length, b.length)
}

/** what a block job may set: the rest of a volume is in its volume.json */
const BLOCK_JOB_KEYS = ['driver', 'backup_dir', 'groups', 'auto', 'warn_age', 'critical_age', 'ssh_identity', 'ssh_known_hosts', 'ssh_options', 'ssh_program', 'stream_compress', 'rate_limit', ...Object.values(HOOK_CONFIG_KEYS), 'hook_timeout']
/** the keys whose values this host runs as commands: a config that has one must be safe from other users */
const COMMAND_KEYS = [...Object.values(HOOK_CONFIG_KEYS), 'pipe_targets', 'ssh_program']
/** What a job may be named: one path component (its state is <state_dir>/jobs/NAME) and a valid systemd unit name (bbackup-NAME) */
export const JOB_NAME = /^[A-Za-z0-9_.-]+$/

const HINT = 'see docs/configuration.md for every key'

/** an /etc/crypttab mapping's name as `crypto` takes it (unlockBackupDisk checks the same for the SDK) */
const CRYPTTAB_NAME = /^[A-Za-z0-9][A-Za-z0-9_.+-]*$/

/** The line of `key` in the table `[section]` ('' = the top; key '' = the header), for error messages. */
const lineOf = (text: string, section: string, key: string): number | undefined => {
  let current = ''
  const keyPattern = new RegExp(`^\\s*"?${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"?\\s*=`)
  for (const [i, line] of text.split('\n').entries()) {
    const header = /^\s*\[\s*([^\]]+?)\s*\]/.exec(line)
    if (header !== null) {
      current = header[1] ?? ''
      if (current === section && key === '') return i + 1
    } else if (current === section && key !== '' && keyPattern.test(line)) return i + 1
  }
  return undefined
}

/**
 * Reads a TOML config of named jobs. Every mistake names the file, the line and the key. A relative
 * path in it is relative to the config's directory, never to where bbackup runs (a timer runs it from /).
 * @example
 * loadConfig('/etc/bbackup/config.toml').map((c) => c.jobs.map((j) => j.name))
 */
export const loadConfig = (path: string): Result<Config, BbError> => readConfig(path).map(anchored)

/**
 * The config with its relative paths made absolute from its directory: sources, targets and the
 * files and directories it names. A location on another host, `~/…` (ssh's), a snapshot folder
 * (relative to its source) and a command are left as written.
 */
const anchored = (config: Config): Config => {
  const dir = posix.dirname(config.path)
  const file = (p: string): string => (p.startsWith('/') || p.startsWith('~') ? p : posix.join(dir, p))
  const place = (p: string): string => (p.startsWith('/') || parseLocation(p, { cwd: dir }).map((l) => l.kind !== 'local').unwrapOr(true) ? p : posix.join(dir, p))
  const optional = <K extends string>(key: K, p: string | undefined, as: (p: string) => string): Partial<Record<K, string>> =>
    (p === undefined ? {} : { [key]: as(p) }) as Partial<Record<K, string>>
  const ssh = (spec: SshSpec | undefined): { ssh?: SshSpec } =>
    (spec === undefined ? {} : { ssh: { ...spec, ...optional('identityFile', spec.identityFile, file), ...optional('knownHostsFile', spec.knownHostsFile, file) } })
  return {
    ...config,
    // (metrics_file and transaction_log are refused unless absolute)
    ...optional('stateDir', config.stateDir, file),
    jobs: config.jobs.map((j) => ({
      ...j, source: place(j.source), targets: j.targets.map(place), excludeFrom: j.excludeFrom.map(file),
      ...(j.rawTargets === undefined ? {} : { rawTargets: j.rawTargets.map(place) }),
      ...optional('stateDir', j.stateDir, file), ...optional('rawGpgKeyring', j.rawGpgKeyring, file), ...optional('mount', j.mount, file),
      ...ssh(j.ssh),
      ...(j.rsyncd === undefined ? {} : { rsyncd: { ...j.rsyncd, ...optional('passwordFile', j.rsyncd.passwordFile, file) } }),
    })),
    blockJobs: config.blockJobs.map((b) => ({ ...b, backupDir: file(b.backupDir), ...ssh(b.ssh) })),
  }
}

const readConfig = (path: string): Result<Config, BbError> => {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return err(bbError('INVALID_OPTIONS', code === 'ENOENT' ? `the config file ${path} does not exist` : `cannot read the config file ${path}: ${(e as Error).message}`,
      code === 'ENOENT' ? `create it (see docs/configuration.md), or give a source and target on the command line` : 'check its permissions', { path }))
  }
  let data: Record<string, unknown>
  try {
    data = parse(text) as Record<string, unknown>
  } catch (e) {
    if (e instanceof TomlError) {
      return err(bbError('INVALID_OPTIONS', `${path}:${e.line}:${e.column}: ${e.message.split('\n')[0] ?? 'not valid TOML'}`, 'fix the TOML syntax at that place', { path, line: e.line }))
    }
    throw e
  }
  const problem = (section: string, key: string, message: string, hint = HINT): Result<never, BbError> => {
    const line = lineOf(text, section, key.split('.')[0] ?? key)
    const where = `${path}${line === undefined ? '' : `:${line}`}`
    return err(bbError('INVALID_OPTIONS', `${where}: ${section === '' ? '' : `[${section}] `}${key}: ${message}`, hint, { path, key, ...(line === undefined ? {} : { line }) }))
  }
  for (const key of Object.keys(data)) {
    if (!['jobs', 'state_dir', 'metrics_file', 'transaction_log', ...DEFAULT_KEYS].includes(key)) {
      return JOB_KEYS.includes(key)
        ? problem('', key, ['groups', 'auto'].includes(key) ? 'says which commands take one job, not a default for every job' : 'names one job\'s own places, not a default for every job', 'move it into the [jobs.NAME] table of its job')
        : problem('', key, unknownKey(key, ['jobs', 'state_dir', 'metrics_file', 'transaction_log', ...DEFAULT_KEYS]), `the top level has state_dir, metrics_file, transaction_log, the [jobs.NAME] tables, and every job's defaults: ${DEFAULT_KEYS.join(', ')}`)
    }
  }
  const unsafe = unsafeToRun(path, data)
  if (unsafe !== undefined) return err(unsafe)
  // a job key at the top level is every job's default (btrbk's global options); a job's own value wins
  const defaults = Object.fromEntries(Object.entries(data).filter(([key]) => DEFAULT_KEYS.includes(key)))
  if (data.state_dir !== undefined && typeof data.state_dir !== 'string') return problem('', 'state_dir', 'must be a path (a string)')
  for (const key of ['metrics_file', 'transaction_log']) {
    if (data[key] !== undefined && (typeof data[key] !== 'string' || !data[key].startsWith('/'))) return problem('', key, 'must be an absolute path (a string)')
  }
  const jobsTable = data.jobs ?? {}
  if (typeof jobsTable !== 'object' || Array.isArray(jobsTable)) return problem('', 'jobs', 'must be tables [jobs.NAME]')
  /** a job's warn_age and critical_age, each a duration when given */
  const checkAges = (section: string, job: Record<string, unknown>): Result<{ warnAge?: string; criticalAge?: string }, BbError> => {
    const ages: { warnAge?: string; criticalAge?: string } = {}
    for (const [key, field] of [['warn_age', 'warnAge'], ['critical_age', 'criticalAge']] as const) {
      const value = job[key]
      if (value === undefined) continue
      if (typeof value !== 'string' || parseDuration(value) === undefined) return problem(section, key, `${JSON.stringify(value)} is not a duration`, 'write a number and a unit: "90m", "26h", "2d", "1w"')
      ages[field] = value
    }
    return ok(ages)
  }
  /** `groups` (btrbk's `group`) and `auto` (false: btrbk's `noauto`): which commands take the job */
  const selectionOf = (section: string, job: Record<string, unknown>): Result<{ groups?: string[]; auto?: false }, BbError> => {
    const groups = typeof job.groups === 'string' ? [job.groups] : (job.groups ?? [])
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) return problem(section, 'groups', 'must be a list of group names', 'groups = ["nightly", "offsite"]')
    const bad = groups.find((g) => !JOB_NAME.test(g) || g === '.' || g === '..')
    if (bad !== undefined) return problem(section, 'groups', `${JSON.stringify(bad)} is not a group name`, 'name a group as a job is named: letters, digits, ".", "_" and "-" (bbackup run NAME takes either)')
    if (job.auto !== undefined && typeof job.auto !== 'boolean') return problem(section, 'auto', 'must be true or false', 'auto = false: only a command that names the job (or one of its groups) runs it')
    return ok({ ...(groups.length === 0 ? {} : { groups: [...new Set(groups as string[])] }), ...(job.auto === false ? { auto: false as const } : {}) })
  }
  /** `stream_compress` and `rate_limit`: how what crosses to or from another host travels */
  const wayOf = (section: string, job: Record<string, unknown>): Result<WaySpec, BbError> => {
    const streamCompress = job.stream_compress
    if (streamCompress !== undefined && streamCompress !== 'zstd' && streamCompress !== 'none') return problem(section, 'stream_compress', `${JSON.stringify(streamCompress)} is not "zstd" or "none"`)
    const rateText = job.rate_limit
    const rateLimit = typeof rateText === 'string' || typeof rateText === 'number' ? parseRate(String(rateText)) : undefined
    if (rateText !== undefined && rateLimit === undefined) {
      return problem(section, 'rate_limit', `${JSON.stringify(rateText)} is not a rate`, 'bytes a second, with k, m or g for KiB, MiB, GiB: rate_limit = "10m"')
    }
    return ok({ ...(streamCompress === undefined ? {} : { streamCompress }), ...(rateLimit === undefined ? {} : { rateLimit }) })
  }
  /** a job's ssh settings: ssh_identity, ssh_known_hosts, ssh_options, ssh_program, and ssh_sudo where `sudo` may be given */
  const sshOf = (section: string, job: Record<string, unknown>): Result<SshSpec, BbError> => {
    const text = (key: string): string | undefined => (typeof job[key] === 'string' ? job[key] : undefined)
    for (const key of ['ssh_identity', 'ssh_known_hosts', 'ssh_program']) if (job[key] !== undefined && text(key) === undefined) return problem(section, key, 'must be a string')
    const options = job.ssh_options ?? []
    if (!Array.isArray(options) || !options.every((x) => typeof x === 'string')) return problem(section, 'ssh_options', 'must be a list of strings')
    if (job.ssh_sudo !== undefined && typeof job.ssh_sudo !== 'boolean') return problem(section, 'ssh_sudo', 'must be true or false')
    const identityFile = text('ssh_identity'), knownHostsFile = text('ssh_known_hosts'), program = text('ssh_program')
    return ok({
      ...(identityFile === undefined ? {} : { identityFile }), ...(knownHostsFile === undefined ? {} : { knownHostsFile }),
      ...(options.length === 0 ? {} : { options: options as string[] }), ...(program === undefined ? {} : { program }), ...(job.ssh_sudo === true ? { sudo: true } : {}),
    })
  }
  /** a job's hook commands, each a command line (a string) */
  const hooksOf = (section: string, job: Record<string, unknown>): Result<{ hooks?: HookCommands }, BbError> => {
    const hooks: Record<string, string | number> = {}
    for (const [field, key] of Object.entries(HOOK_CONFIG_KEYS)) {
      const value = job[key]
      if (value === undefined) continue
      if (typeof value !== 'string' || value.trim() === '') return problem(section, key, 'must be a command line (a string)', `${key} = "/usr/local/sbin/${key === 'pre_snapshot_exec' ? 'freeze-db' : key === 'post_snapshot_exec' ? 'thaw-db' : 'backup-hook'}"`)
      hooks[field] = value
    }
    if (job.hook_timeout !== undefined) {
      const seconds = hookTimeoutOf(job.hook_timeout)
      if (seconds === undefined) return problem(section, 'hook_timeout', `${JSON.stringify(job.hook_timeout)} is not a number of seconds or a duration`, 'hook_timeout = "10m" (or seconds: 600; 0 for no limit)')
      hooks['timeoutSeconds'] = seconds
    }
    return ok(Object.keys(hooks).length === 0 ? {} : { hooks })
  }
  /** a job's table (with the defaults under it) as a JobSpec, each mistake named at its key */
  const jobOf = (name: string, section: string, job: Record<string, unknown>): Result<JobSpec, BbError> => {
    if (job.backup_dir !== undefined) return problem(section, 'backup_dir', 'backup_dir belongs to block jobs', 'add driver = "block", or remove backup_dir')
    for (const key of Object.keys(job)) if (!JOB_KEYS.includes(key)) return problem(section, key, unknownKey(key, JOB_KEYS), `a job has ${JOB_KEYS.join(', ')}`)
    if (typeof job.source !== 'string') return problem(section, job.source === undefined ? '' : 'source', 'source is missing or not a string', 'give the directory (or subvolume) to back up: source = "/home"')
    const targets = typeof job.targets === 'string' ? [job.targets] : (job.targets ?? [])
    const rawTargets = typeof job.raw_targets === 'string' ? [job.raw_targets] : (job.raw_targets ?? [])
    if (!Array.isArray(rawTargets) || !rawTargets.every((t) => typeof t === 'string')) return problem(section, 'raw_targets', 'must be a list of locations', 'raw_targets = ["/mnt/usb/streams"]')
    const pipeTargets = typeof job.pipe_targets === 'string' ? [job.pipe_targets] : (job.pipe_targets ?? [])
    if (!Array.isArray(pipeTargets) || !pipeTargets.every((t) => typeof t === 'string' && t.trim() !== '')) {
      return problem(section, 'pipe_targets', 'must be a list of commands', 'pipe_targets = ["zstd | ssh vault \'cat > streams/$BBACKUP_FILE.zst\'"]')
    }
    // an explicit `targets = []` is a btrfs job of source snapshots alone (btrbk: a subvolume without a target)
    if (!Array.isArray(targets) || (job.targets === undefined && rawTargets.length === 0 && pipeTargets.length === 0) || !targets.every((t) => typeof t === 'string')) {
      return problem(section, job.targets === undefined ? '' : 'targets', 'targets is missing or not a list of locations', 'targets = ["/mnt/backup/home"]')
    }
    const rawCompress = job.raw_compress
    if (rawCompress !== undefined && rawCompress !== 'zstd' && rawCompress !== 'none') return problem(section, 'raw_compress', `${JSON.stringify(rawCompress)} is not "zstd" or "none"`)
    const rawEncrypt = job.raw_encrypt
    if (rawEncrypt !== undefined && rawEncrypt !== 'gpg' && rawEncrypt !== 'none') return problem(section, 'raw_encrypt', `${JSON.stringify(rawEncrypt)} is not "gpg" or "none"`)
    const rawGpgRecipients = typeof job.raw_gpg_recipients === 'string' ? [job.raw_gpg_recipients] : (job.raw_gpg_recipients ?? [])
    if (!Array.isArray(rawGpgRecipients) || !rawGpgRecipients.every((r) => typeof r === 'string' && r.trim() !== '')) {
      return problem(section, 'raw_gpg_recipients', 'must be a list of gpg key ids, fingerprints or e-mail addresses', 'raw_gpg_recipients = ["backup@example.org"]')
    }
    const rawGpgKeyring = job.raw_gpg_keyring
    if (rawGpgKeyring !== undefined && typeof rawGpgKeyring !== 'string') return problem(section, 'raw_gpg_keyring', 'must be the path of a keyring file', 'raw_gpg_keyring = "/etc/bbackup/backup-keys.kbx"')
    const rawFullEvery = job.raw_full_every
    if (rawFullEvery !== undefined && !(typeof rawFullEvery === 'number' && Number.isInteger(rawFullEvery) && rawFullEvery >= 1)) {
      return problem(section, 'raw_full_every', `${JSON.stringify(rawFullEvery)} is not a whole number of at least 1`, 'raw_full_every = 7: a full stream after 7 incrementals')
    }
    const way = wayOf(section, job)
    if (way.isErr()) return err(way.error)
    const strings = (key: string): Result<string[], BbError> => {
      const v = job[key] ?? []
      return Array.isArray(v) && v.every((x) => typeof x === 'string') ? ok(v as string[]) : problem(section, key, 'must be a list of strings')
    }
    const bool = (key: string, fallback: boolean): Result<boolean, BbError> => {
      const v = job[key] ?? fallback
      return typeof v === 'boolean' ? ok(v) : problem(section, key, 'must be true or false')
    }
    const optionalString = (key: string): Result<string | undefined, BbError> => {
      const v = job[key]
      return v === undefined || typeof v === 'string' ? ok(v) : problem(section, key, 'must be a string')
    }
    const retention = (key: string): Result<RetentionPolicy | undefined, BbError> => {
      const v = job[key]
      if (v === undefined) return ok(undefined)
      if (typeof v === 'string' || typeof v === 'number') {
        return parseRetentionSpec(String(v)).orElse((e) => problem(section, key, e.message, e.hint))
      }
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return problem(section, key, 'must be a string such as "24h 7d 4w" or a table')
      const policy: Record<string, unknown> = {}
      for (const [k, value] of Object.entries(v)) {
        const mapped = RETENTION_KEYS[k]
        if (mapped === undefined) return problem(section, key, unknownKey(k, Object.keys(RETENTION_KEYS), `unknown retention key ${k}`), `use ${Object.keys(RETENTION_KEYS).join(', ')}`)
        policy[mapped] = value
      }
      return normalizePolicy(policy as RetentionPolicy).map(() => policy as RetentionPolicy).orElse((e) => problem(section, key, e.message, e.hint))
    }
    const driver = job.driver
    if (driver !== undefined && driver !== 'rsync' && driver !== 'btrfs' && driver !== 'block') return problem(section, 'driver', `${JSON.stringify(driver)} is not rsync, btrfs or block`)
    const sendProtocol = job.send_protocol
    if (sendProtocol !== undefined && sendProtocol !== 'auto' && sendProtocol !== 1 && sendProtocol !== 2) return problem(section, 'send_protocol', `${JSON.stringify(sendProtocol)} is not "auto", 1 or 2`)
    const snapshotCreate = job.snapshot_create
    if (snapshotCreate !== undefined && snapshotCreate !== 'always' && snapshotCreate !== 'onchange') {
      return problem(section, 'snapshot_create', `${JSON.stringify(snapshotCreate)} is not "always" or "onchange"`, 'snapshot_create = "onchange" takes a snapshot only when the source changed; for btrbk\'s "no", run bbackup transfer')
    }
    const incremental = job.incremental
    if (incremental !== undefined && incremental !== 'yes' && incremental !== 'no' && incremental !== 'strict') {
      return problem(section, 'incremental', `${JSON.stringify(incremental)} is not "yes", "no" or "strict"`, 'incremental = "strict" never sends a snapshot in full (btrbk\'s incremental); "yes", the default, sends in full where no parent serves')
    }
    const maxDelete = job.max_delete === undefined ? undefined : parseMaxDelete(job.max_delete)
    if (maxDelete?.isErr() === true) return problem(section, 'max_delete', maxDelete.error.message, maxDelete.error.hint)
    const fields = {
      exclude: strings('exclude'), excludeFrom: strings('exclude_from'), rsyncOptions: strings('rsync_options'),
      oneFileSystem: bool('one_file_system', true), acceptPartial: bool('accept_partial', false), systemExcludes: bool('system_excludes', false),
      prefix: optionalString('prefix'), stateDir: optionalString('state_dir'), timeZone: optionalString('time_zone'),
      keepBackups: retention('keep_backups'), keepSnapshots: retention('keep_snapshots'),
      snapshotFolder: optionalString('snapshot_folder'), snapper: bool('snapper', false), compressedData: bool('compressed_data', true),
      ssh: sshOf(section, job), sudo: bool('sudo', false),
      passwordFile: optionalString('password_file'), tunnel: optionalString('tunnel'), mount: optionalString('mount'),
      crypto: optionalString('crypto').andThen((c) => (c === undefined || CRYPTTAB_NAME.test(c) ? ok(c) : problem(section, 'crypto', `${JSON.stringify(c)} is not the name of an /etc/crypttab mapping`, 'the first field of the disk\'s line in /etc/crypttab (letters, digits, . _ + -), e.g. crypto = "usb-backup"'))),
    }
    for (const r of Object.values(fields)) if (r.isErr()) return err(r.error)
    const v = <T>(r: Result<T, BbError>): T => r._unsafeUnwrap()
    const prefix = v(fields.prefix), stateDir = v(fields.stateDir), timeZone = v(fields.timeZone)
    const keepBackups = v(fields.keepBackups), keepSnapshots = v(fields.keepSnapshots), snapshotFolder = v(fields.snapshotFolder)
    const ssh = v(fields.ssh)
    const passwordFile = v(fields.passwordFile), tunnel = v(fields.tunnel), mount = v(fields.mount), crypto = v(fields.crypto)
    const ages = checkAges(section, job)
    if (ages.isErr()) return err(ages.error)
    const { warnAge, criticalAge } = ages.value
    const hooks = hooksOf(section, job)
    if (hooks.isErr()) return err(hooks.error)
    const selection = selectionOf(section, job)
    if (selection.isErr()) return err(selection.error)
    const rsyncd: RsyncdSpec = { ...(passwordFile === undefined ? {} : { passwordFile }), ...(tunnel === undefined ? {} : { tunnel }) }
    return ok({
      name, ...selection.value, source: job.source, targets: targets as string[],
      ...(driver === undefined ? {} : { driver }),
      exclude: v(fields.exclude), excludeFrom: v(fields.excludeFrom), rsyncOptions: v(fields.rsyncOptions),
      oneFileSystem: v(fields.oneFileSystem), acceptPartial: v(fields.acceptPartial),
      ...(v(fields.systemExcludes) ? { systemExcludes: true } : {}),
      ...(prefix === undefined ? {} : { prefix }), ...(stateDir === undefined ? {} : { stateDir }), ...(timeZone === undefined ? {} : { timeZone }),
      ...(keepBackups === undefined ? {} : { keepBackups }), ...(keepSnapshots === undefined ? {} : { keepSnapshots }),
      ...(maxDelete === undefined ? {} : { maxDelete: maxDelete._unsafeUnwrap() }),
      ...(snapshotFolder === undefined ? {} : { snapshotFolder }), ...(v(fields.snapper) ? { snapper: true } : {}), ...(snapshotCreate === undefined ? {} : { snapshotCreate }), ...(incremental === undefined ? {} : { incremental }), ...(sendProtocol === undefined ? {} : { sendProtocol }),
      ...(v(fields.compressedData) ? {} : { compressedData: false }),
      ...(rawTargets.length === 0 ? {} : { rawTargets: rawTargets as string[] }),
      ...(pipeTargets.length === 0 ? {} : { pipeTargets: pipeTargets as string[] }),
      ...(rawCompress === undefined ? {} : { rawCompress }), ...(rawFullEvery === undefined ? {} : { rawFullEvery }),
      ...(rawEncrypt === undefined ? {} : { rawEncrypt }), ...(rawGpgRecipients.length === 0 ? {} : { rawGpgRecipients: rawGpgRecipients as string[] }),
      ...(rawGpgKeyring === undefined ? {} : { rawGpgKeyring }),
      ...way.value,
      ...(v(fields.sudo) ? { sudo: true } : {}),
      ...(Object.keys(ssh).length === 0 ? {} : { ssh }),
      ...(Object.keys(rsyncd).length === 0 ? {} : { rsyncd }),
      ...(mount === undefined ? {} : { mount }),
      ...(crypto === undefined ? {} : { crypto }),
      ...(warnAge === undefined ? {} : { warnAge }), ...(criticalAge === undefined ? {} : { criticalAge }),
      ...hooks.value,
    })
  }
  // the defaults are checked where they are written, once
  const checked = jobOf('', '', { ...defaults, source: '/', targets: [] })
  if (checked.isErr()) return err(checked.error)
  const jobs: JobSpec[] = []
  const blockJobs: BlockJobSpec[] = []
  for (const [name, raw] of Object.entries(jobsTable as Record<string, unknown>)) {
    if (!JOB_NAME.test(name) || name === '.' || name === '..') {
      return problem('jobs', name, 'is not a job name: it names the directory of the job\'s lock and journal (<state_dir>/jobs/NAME) and its systemd units', 'name the job with letters, digits, ".", "_" and "-" only (not . or ..), e.g. [jobs.home]')
    }
    const section = `jobs.${name}`
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return problem('jobs', name, 'must be a table [jobs.NAME]')
    const own = raw as Record<string, unknown>
    if (own.driver === 'block') {
      const job = { ...Object.fromEntries(Object.entries(defaults).filter(([key]) => BLOCK_JOB_KEYS.includes(key))), ...own }
      const other = Object.keys(job).find((k) => !BLOCK_JOB_KEYS.includes(k))
      if (other !== undefined) return problem(section, other, `a block job has ${BLOCK_JOB_KEYS.join(', ')} only`, 'its source, chunk size and schedule are in the volume\'s volume.json (bbackup init -b DIR SOURCE)')
      if (typeof job.backup_dir !== 'string') return problem(section, job.backup_dir === undefined ? '' : 'backup_dir', 'backup_dir is missing or not a path', 'backup_dir = "/srv/backy/vm1", a directory made by bbackup init -b')
      const ages = checkAges(section, job)
      if (ages.isErr()) return err(ages.error)
      const ssh = sshOf(section, job)
      if (ssh.isErr()) return err(ssh.error)
      const hooks = hooksOf(section, job)
      if (hooks.isErr()) return err(hooks.error)
      const way = wayOf(section, job)
      if (way.isErr()) return err(way.error)
      const selection = selectionOf(section, job)
      if (selection.isErr()) return err(selection.error)
      blockJobs.push({
        name, ...selection.value, backupDir: job.backup_dir, ...ages.value, ...(Object.keys(ssh.value).length === 0 ? {} : { ssh: ssh.value }), ...(Object.keys(way.value).length === 0 ? {} : { way: way.value }), ...hooks.value,
      })
      continue
    }
    const inherited = Object.keys(defaults).filter((key) => !(key in own))
    const spec = jobOf(name, section, { ...defaults, ...own })
    if (spec.isErr()) return err(spec.error)
    jobs.push(inherited.length === 0 ? spec.value : { ...spec.value, inherited })
  }
  // a filter word (bbackup run NAME) names a job or a group, never both
  for (const job of [...jobs, ...blockJobs]) {
    const both = job.groups?.find((g) => [...jobs, ...blockJobs].some((j) => j.name === g))
    if (both !== undefined) return problem(`jobs.${job.name ?? ''}`, 'groups', `${both} is the name of a job as well`, 'give the group a name no job has: bbackup run NAME takes either, and must know which')
  }
  return ok({ path, ...(typeof data.state_dir === 'string' ? { stateDir: data.state_dir } : {}), ...(typeof data.metrics_file === 'string' ? { metricsFile: data.metrics_file } : {}),
    ...(typeof data.transaction_log === 'string' ? { transactionLog: data.transaction_log } : {}), jobs, blockJobs })
}

/**
 * How many snapshots one prune may delete at a place (`--max-delete`, `max_delete`): a whole
 * number of at least 1, or `all` for no limit.
 * @example
 * parseMaxDelete('all') // ok('all')
 */
export const parseMaxDelete = (value: unknown): Result<number | 'all', BbError> => {
  if (value === 'all') return ok('all')
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN
  return Number.isSafeInteger(n) && n >= 1
    ? ok(n)
    : err(bbError('INVALID_OPTIONS', `max-delete ${JSON.stringify(value)} is not a whole number of at least 1, nor all`,
      'give how many snapshots one prune may delete at a place (--max-delete 20, max_delete = 20), or all for no limit'))
}

/** The jobs of a config a command takes: named by a filter (job or group names), or all of them but those with `auto = false`. */
export interface Selection {
  readonly jobs: readonly JobSpec[]
  readonly blockJobs: readonly BlockJobSpec[]
  /** the block jobs named by their own names (not by a group): a command that reads no block volume says so */
  readonly namedBlockJobs: readonly BlockJobSpec[]
  /** the config's other jobs */
  readonly others: readonly JobSpec[]
}

/** every job's name (block volumes too) */
const jobNames = (config: Config): string[] => [...config.jobs, ...config.blockJobs].flatMap((j) => (j.name === undefined ? [] : [j.name]))

/** every group a job joins, each once */
const groupNames = (config: Config): string[] => [...new Set([...config.jobs, ...config.blockJobs].flatMap((j) => j.groups ?? []))]

/** the words a filter takes: every job's name and every group's */
export const filterWords = (config: Config): string[] => [...jobNames(config), ...groupNames(config)]

/**
 * btrbk's filter: `words` (-j NAME, or the names alone) pick the jobs of those names and the jobs in
 * those groups, `auto = false` ones too; no words pick every job but those with `auto = false`
 * (btrbk's `noauto`). A word that is neither is an error that lists what there is.
 * @example
 * selectJobs(config, ['offsite']).map((s) => s.jobs.map((j) => j.name))
 */
export const selectJobs = (config: Config, words: readonly string[]): Result<Selection, BbError> => {
  const known = filterWords(config)
  const unknown = words.filter((w) => !known.includes(w))
  if (unknown.length > 0) {
    const groups = groupNames(config)
    return err(bbError('JOB_NOT_FOUND', `no job or group named ${unknown.join(', ')} in ${config.path}`,
      `its jobs are: ${jobNames(config).join(', ') || 'none'}${groups.length === 0 ? '' : `; its groups: ${groups.join(', ')}`}`))
  }
  const picked = (j: JobSpec | BlockJobSpec): boolean => (words.length === 0 ? j.auto !== false : words.includes(j.name ?? '') || (j.groups ?? []).some((g) => words.includes(g)))
  const manual = [...config.jobs, ...config.blockJobs].filter((j) => j.auto === false)
  if (words.length === 0 && manual.length > 0 && manual.length === config.jobs.length + config.blockJobs.length) {
    return err(bbError('INVALID_OPTIONS', `every job of ${config.path} has auto = false: a command runs one only when it names it`,
      `name the jobs (or a group of them): bbackup run ${manual[0]?.name ?? 'NAME'}, or -j NAME`))
  }
  return ok({
    jobs: config.jobs.filter(picked),
    blockJobs: config.blockJobs.filter(picked),
    namedBlockJobs: config.blockJobs.filter((j) => words.includes(j.name)),
    others: config.jobs.filter((j) => !picked(j)),
  })
}

/** the command keys a config's top level and jobs set, as `[jobs.NAME] key` (or `key` at the top) */
const commandKeysOf = (data: Record<string, unknown>): string[] => {
  const top = COMMAND_KEYS.filter((key) => data[key] !== undefined)
  const jobs = typeof data.jobs === 'object' && data.jobs !== null && !Array.isArray(data.jobs) ? Object.entries(data.jobs as Record<string, unknown>) : []
  const own = jobs.flatMap(([name, job]) => (typeof job === 'object' && job !== null ? COMMAND_KEYS.filter((key) => (job as Record<string, unknown>)[key] !== undefined).map((key) => `[jobs.${name}] ${key}`) : []))
  return [...top, ...own]
}

/**
 * A config that makes this host run commands (hooks, pipe targets, an ssh program) is refused when
 * someone other than its reader (or root) could change it: its file, or its directory without the
 * sticky bit, owned by another user or writable by group or others, as sshd's StrictModes refuses
 * an authorized_keys file. Else anyone who can write the file runs commands as the user (root,
 * usually) that runs bbackup: btrbk's reason for having no hooks at all (btrbk #41).
 */
const unsafeToRun = (path: string, data: Record<string, unknown>): BbError | undefined => unsafeCommandFile(path, commandKeysOf(data), 'config file')

/**
 * Whether the file at `path`, which sets the commands `keys` (config keys or options), may be
 * changed by another user ({@link unsafeToRun}): the error that says so, or undefined.
 */
export const unsafeCommandFile = (path: string, keys: readonly string[], kind: 'config file' | 'argument file'): BbError | undefined => {
  if (keys.length === 0) return undefined
  const me = process.geteuid?.()
  if (me === undefined) return undefined
  const dir = posix.dirname(posix.resolve(path))
  for (const [what, place] of [['file', path], ['directory', dir]] as const) {
    let stat
    try {
      stat = statSync(place)
    } catch {
      continue
    }
    const owner = stat.uid === me || stat.uid === 0 ? undefined : `owned by uid ${stat.uid}`
    const writers = [...((stat.mode & 0o020) === 0 ? [] : ['its group']), ...((stat.mode & 0o002) === 0 ? [] : ['everyone'])]
    const sticky = what === 'directory' && (stat.mode & 0o1000) !== 0
    const why = owner ?? (writers.length === 0 || sticky ? undefined : `writable by ${writers.join(' and ')}`)
    if (why === undefined) continue
    const fix = what === 'directory'
      ? `chmod go-w ${dir}, or keep the config in a directory only ${me === 0 ? 'root' : 'you'} can write`
      : owner === undefined ? `chmod go-w ${path}` : me === 0 ? `chown root: ${path} && chmod go-w ${path}` : `use a copy of your own (cp ${path} ~/)`
    return bbError('INVALID_OPTIONS', `the ${kind} ${path} sets commands to run (${keys.slice(0, 3).join(', ')}${keys.length > 3 ? ', …' : ''}) but ${what === 'file' ? 'it' : `its directory ${place}`} is ${why}: whoever can change it could run any command as ${me === 0 ? 'root' : 'you'}`,
      `${fix}; then run again`, { path: place, key: keys[0] })
  }
  return undefined
}
