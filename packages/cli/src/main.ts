import { lstatSync, readFileSync } from 'node:fs'
import { isAbsolute, resolve as resolvePath } from 'node:path'
import { Argument, Command, CommanderError, Option } from 'commander'
import { archive, archiveComplete, backup, bbError, clean, defaultStateDir, diff, jobId, forgetPending, formatLocation, InternalError, list, parseLocation, parseSnapshotName, prune, restore, runComplete, STATE_DIR_ENV, status, verify, type BackupEvent, type BbError, type Job, type JobRun, type JobStatus, type PruneResult, type TransferProgress, type Transport } from '@bb/core'
import type { SshSession } from '@bb/transports/ssh'
import type { Role } from '@bb/transports/ssh-filter'
import type { Shell } from './completion.js'
import { err, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import { buildJob, detectBackupDriver, sharedPlaces, sudoPrograms, transportFor, withJournalledTargets, type Connections } from './build-job.js'
import { expandArgFiles } from './arg-files.js'
import { blockBackup, blockDistrust, blockDue, blockInit, blockPrune, blockRestore, blockStatus, blockVerify } from './block.js'
import { DEFAULT_CONFIG, filterWords, HOOK_CONFIG_KEYS, JOB_NAME, loadConfig, parseMaxDelete, selectJobs, type BlockJobSpec, type DriverChoice, type HookCommandPoint, type HookCommands, type JobSpec, type RsyncdSpec, type SshSpec, type WaySpec } from './config.js'
import { EXIT, exitCodeOf, placesExitCode } from './exit-codes.js'
import { eventRenderer, jsonEventLogger, onOneLine, progressLine, renderArchive, renderArchiveProblems, renderDiff, renderError, renderProblems, renderList, renderClean, renderPlaceFailures, renderPrune, renderPruneWarnings, renderReport, renderStatus, type Io } from './render.js'
import { parseRetentionSpec } from './retention-spec.js'
import { writeMetrics } from './metrics-file.js'
import { openTransactionLog, type TransactionLog } from './transaction-log.js'
import type { JobTimer } from './schedule-command.js'
import { hookTimeoutOf, parseRate, waitSecondsOf } from './duration.js'
import { onSignalEnd, stopSignal } from './stop-signal.js'
import { lowerPriority, parsePriority } from './priority.js'

/** set by the one-file bundle (scripts/bundle.mjs), which has no package.json beside it */
declare const BBACKUP_BUNDLED_VERSION: string | undefined
const VERSION = typeof BBACKUP_BUNDLED_VERSION === 'string'
  ? BBACKUP_BUNDLED_VERSION
  : (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version

interface CommonOptions {
  config?: string
  ionice?: string
  nice?: string
  job?: string[]
  driver?: DriverChoice
  dryRun?: boolean
  /** run -b: the backup stage alone, for a daemon module whose post-xfer exec publishes */
  backup?: boolean
  systemExcludes?: boolean
  json?: boolean
  /** list: each backup's size on disk (rsync, btrfs) */
  sizes?: boolean
  verbose?: number
  quiet?: boolean
  wait?: string | boolean
  stateDir?: string
  metricsFile?: string
  transactionLog?: string
  logJson?: boolean
  prefix?: string
  keepBackups?: string
  keepSnapshots?: string
  maxDelete?: string
  numBackups?: string
  exclude?: string[]
  excludeFrom?: string[]
  multiFs?: boolean
  acceptPartial?: boolean
  rsyncOption?: string[]
  timeZone?: string
  snapshotFolder?: string
  snapper?: boolean
  snapshotCreate?: string
  incremental?: string
  snapshotPrefix?: string
  numSnapshots?: string
  sendProtocol?: string
  compressedData?: boolean
  rawTarget?: string[]
  pipeTarget?: string[]
  rawCompress?: string
  rawEncrypt?: string
  rawGpgRecipient?: string[]
  rawGpgKeyring?: string
  rawFullEvery?: string
  streamCompress?: string
  rateLimit?: string
  snapshot?: boolean
  transfer?: boolean
  /** btrbk's -p: delete nothing in this run; and its --preserve-snapshots, --preserve-backups */
  preserve?: boolean
  preserveSnapshots?: boolean
  preserveBackups?: boolean
  lockedDests?: boolean
  removeLocks?: boolean
  /** rsync: back up into a directory whose backups name another source (the same one, renamed) */
  takeOver?: boolean
  sshIdentity?: string
  sshKnownHosts?: string
  sshOption?: string[]
  sshProgram?: string
  sshSudo?: boolean
  sudo?: boolean
  passwordFile?: string
  tunnel?: string
  mount?: string
  crypto?: string
  retries?: string
  preExec?: string
  preSnapshotExec?: string
  hookTimeout?: string
  postSnapshotExec?: string
  postExec?: string
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** How an ssh host is reached (docs/transports/ssh.md). */
const sshClientOptions = (command: Command): Command =>
  command
    .option('--ssh-identity <file>', 'ssh: the private key to log in to remote locations with')
    .option('--ssh-known-hosts <file>', 'ssh: trust only the host keys in this file (default: ~/.ssh/known_hosts)')
    .option('--ssh-option <Key=Value>', 'ssh: an ssh_config option, as with ssh -o (repeatable)', collect)
    .option('--ssh-program <program>', 'ssh: the ssh client to run (default ssh)')

/** How remote locations are reached (docs/transports/ssh.md). */
const sshOptions = (command: Command): Command =>
  sshClientOptions(command)
    .option('--ssh-sudo', 'ssh: run the remote commands with sudo -n (btrfs as a user that is not root)')
    .option('--sudo', 'as a user that is not root, run the driver\'s commands on this host through sudo -n: btrfs; for rsync: rsync, rm, mv (config: sudo; bbackup doctor prints the sudoers line)')
    .option('--password-file <file>', 'rsync daemon: the module password, alone in a file of mode 0600 (else RSYNC_PASSWORD)')
    .option('--tunnel <[user@]host[:port]>', 'rsync daemon: reach it through a port forwarded over ssh to this host')

/** The backup disk a job's targets are on, made ready for the command and let go of after it (docs/guides/system-backup.md). */
const diskOptions = (command: Command): Command =>
  command
    .option('--mount <dir>', 'mount the backup disk at DIR from /etc/fstab for the command (and unmount it after); the targets must be inside it')
    .option('--crypto <name>', 'unlock the encrypted backup disk NAME of /etc/crypttab for the command (cryptdisks_start), and lock it again after; before --mount')

/** The job's hooks (docs/configuration.md "Hooks"): shell commands run on this host around the run and around the capture of the source. */
const hookOptions = (command: Command): Command =>
  command
    .option('--pre-exec <command>', "run this shell command first, under the job's lock; if it fails, nothing else runs (rsnapshot's cmd_preexec; config: pre_exec)")
    .option('--pre-snapshot-exec <command>', 'run it just before the source is captured (quiesce: flush a database, virsh domfsfreeze); if it fails, no backup is made (config: pre_snapshot_exec)')
    .option('--post-snapshot-exec <command>', 'run it as soon as the source is captured (thaw), also when that failed; rsync reads the live source, so after its transfers (config: post_snapshot_exec)')
    .option('--post-exec <command>', "run it at the end, whatever became of the run, with BBACKUP_STATUS=ok, failed, error or cancelled (rsnapshot's cmd_postexec; config: post_exec)")
    .option('--hook-timeout <time>', 'stop a hook that runs longer (seconds or 10m, 2h; 0 = no limit) with all it started, and fail it; default 5 minutes for the snapshot hooks, no limit for --pre-exec and --post-exec (config: hook_timeout)')

/** The hook commands given on the command line, each a non-empty command line. */
const hookCommandsOf = (options: CommonOptions): Result<HookCommands, BbError> => {
  const given = { preRun: options.preExec, preSnapshot: options.preSnapshotExec, postSnapshot: options.postSnapshotExec, postRun: options.postExec }
  const commands: Record<string, string | number> = {}
  for (const [point, command] of Object.entries(given)) {
    if (command === undefined) continue
    const option = `--${(HOOK_CONFIG_KEYS[point as HookCommandPoint]).replace(/_/g, '-')}`
    if (command.trim() === '') return err(bbError('INVALID_OPTIONS', `${option} is empty`, `give the command to run, e.g. ${option} '/usr/local/sbin/backup-hook'`))
    commands[point] = command
  }
  if (options.hookTimeout !== undefined) {
    const seconds = hookTimeoutOf(options.hookTimeout)
    if (seconds === undefined) return err(bbError('INVALID_OPTIONS', `--hook-timeout ${options.hookTimeout} is not a number of seconds or a duration`, 'give seconds or a duration: --hook-timeout 600, --hook-timeout 10m (0: no limit)'))
    commands['timeoutSeconds'] = seconds
  }
  return ok(commands)
}

/** `--retries N`: a whole number of retries, or undefined when not given */
const retriesOf = (options: CommonOptions): Result<number | undefined, BbError> => {
  const retries = options.retries === undefined ? undefined : Number(options.retries)
  return retries !== undefined && !(Number.isInteger(retries) && retries >= 0)
    ? err(bbError('INVALID_OPTIONS', `--retries ${options.retries ?? ''} is not a whole number of retries`, 'give 0 (no retries) or more, e.g. --retries 5'))
    : ok(retries)
}

/**
 * What `--preserve`, `--preserve-snapshots` and `--preserve-backups` leave of the prune stage: the
 * engine's `prune` (false: nothing; `'backups'`: the targets alone), or undefined when none is given.
 */
const preservedOf = (options: CommonOptions): false | 'snapshots' | 'backups' | undefined => {
  const snapshots = options.preserve === true || options.preserveSnapshots === true
  const backups = options.preserve === true || options.preserveBackups === true
  if (snapshots && backups) return false
  if (snapshots) return 'backups'
  return backups ? 'snapshots' : undefined
}

/** `--rate-limit RATE` in bytes a second, or undefined when not given */
const rateLimitOf = (options: CommonOptions): Result<number | undefined, BbError> => {
  const rate = options.rateLimit === undefined ? undefined : parseRate(options.rateLimit)
  return options.rateLimit !== undefined && rate === undefined
    ? err(bbError('INVALID_OPTIONS', `--rate-limit ${options.rateLimit} is not a rate`, 'bytes a second, with k, m or g for KiB, MiB, GiB: --rate-limit 10m'))
    : ok(rate)
}

/** `--stream-compress` and `--rate-limit` of a block volume's transfer, over its config's (`base`) key by key */
const blockWayOf = (options: CommonOptions, base: WaySpec = {}): Result<WaySpec, BbError> =>
  rateLimitOf(options).map((rateLimit) => ({
    ...base,
    ...(options.streamCompress === undefined ? {} : { streamCompress: options.streamCompress as 'zstd' | 'none' }),
    ...(rateLimit === undefined ? {} : { rateLimit }),
  }))

const sshSpecOf = (options: CommonOptions, cwd: string): SshSpec => ({
  ...(options.sshIdentity === undefined ? {} : { identityFile: resolvePath(cwd, options.sshIdentity) }),
  ...(options.sshKnownHosts === undefined ? {} : { knownHostsFile: resolvePath(cwd, options.sshKnownHosts) }),
  ...(options.sshOption === undefined ? {} : { options: options.sshOption }),
  ...(options.sshProgram === undefined ? {} : { program: options.sshProgram }),
  ...(options.sshSudo === true ? { sudo: true } : {}),
})

const rsyncdSpecOf = (options: CommonOptions, cwd: string): RsyncdSpec => ({
  ...(options.passwordFile === undefined ? {} : { passwordFile: resolvePath(cwd, options.passwordFile) }),
  ...(options.tunnel === undefined ? {} : { tunnel: options.tunnel }),
})

/** Options every job command takes: where the job comes from and how it behaves. */
/** `-i/--ionice` and `--nice` (rsync-system-backup's): the whole run, and all it starts, at a lower priority */
const priorityOptions = (command: Command): Command =>
  command
    .option('-i, --ionice <class>', 'run at this I/O scheduling class (idle, best-effort, realtime), with everything it starts')
    .option('--nice <n>', 'run this much nicer (1-19, as nice -n), with everything it starts')

const jobOptions = (command: Command): Command =>
  sshOptions(command)
    .option('-c, --config <file>', `TOML config of named jobs (default ${DEFAULT_CONFIG}, read when no source is given)`)
    .option('-j, --job <name>', 'run only this job of the config, or the jobs of this group, auto = false ones too (repeatable; the names alone, where no source is given, say the same)', collect)
    .addOption(new Option('--driver <driver>', 'snapshot technology; detected from the source when omitted').choices(['rsync', 'btrfs', 'block']))
    .option('--state-dir <dir>', "where the job keeps its lock and journal (default /var/lib/bbackup/jobs/<job>, or ~/.local/state/... when not root; $BBACKUP_STATE_DIR/jobs/<job> when set)")
    .option('-p, --prefix <prefix>', 'put before the timestamp of each snapshot name (btrfs default: the source\'s name and a dot)')
    .option('--snapshot-prefix <prefix>', "btrfs-backup's spelling of --prefix")
    .option('--keep-backups <policy>', "retention at the targets: '10', '24h 7d 4w 12m *y' (btrbk) or 'daily=7 weekly=4' (rotate-backups)")
    .option('--num-backups <n>', "btrfs-backup's spelling of --keep-backups N")
    .option('--keep-snapshots <policy>', 'retention of the source snapshots (btrfs), in the same spellings')
    .option('-N, --num-snapshots <n>', "btrfs-backup's spelling of --keep-snapshots N")
    .option('--max-delete <n>', 'how many snapshots one prune may delete at a place; more deletes none (a clock that jumped ahead, a mistyped policy). Default: half of them, at least 10; all: no limit (config: max_delete)')
    .option('--snapshot-folder <dir>', 'btrfs: where the source snapshots go, absolute or inside the source (default <source>/.snapshots)')
    .option('--snapper', "btrfs: snapper takes the source's snapshots: take over its newest instead of taking one (folder <source>/.bbackup-snapshots)")
    .addOption(new Option('--incremental <when>', "btrfs: strict never sends a snapshot in full (a target without a common parent fails instead), no always does (btrbk's incremental); default yes").choices(['yes', 'no', 'strict']))
    .addOption(new Option('--snapshot-create <when>', "btrfs: onchange takes a snapshot only when the source changed since its newest (btrbk's snapshot_create); default always").choices(['always', 'onchange']))
    .addOption(new Option('--send-protocol <version>', 'btrfs: send stream version (auto: 2 where both ends support it)').choices(['auto', '1', '2']))
    .option('--no-compressed-data', 'btrfs: decompress extents for the stream instead of sending them as stored (protocol 2)')
    .option('--raw-target <location>', 'btrfs: a target that keeps each send stream as a file, on any filesystem (repeatable; config: raw_targets)', collect)
    .option('--pipe-target <command>', 'btrfs: a command (sh -c, on this host) that gets each send stream on stdin, BBACKUP_FILE and more in its environment (repeatable; config: pipe_targets)', collect)
    .addOption(new Option('--raw-compress <method>', 'btrfs raw targets: compress the stream files (config: raw_compress)').choices(['zstd', 'none']))
    .addOption(new Option('--raw-encrypt <method>', 'btrfs raw targets: encrypt the stream files on this host with gpg, to --raw-gpg-recipient (config: raw_encrypt)').choices(['gpg', 'none']))
    .option('--raw-gpg-recipient <key>', 'a public key to encrypt the stream files to: key id, fingerprint or e-mail (repeatable; config: raw_gpg_recipients)', collect)
    .option('--raw-gpg-keyring <file>', 'take the recipients\' public keys from this keyring file, not the user\'s (config: raw_gpg_keyring)')
    .option('--raw-full-every <n>', 'btrfs raw and pipe targets: a full stream after n incrementals, so that old chains can be pruned (config: raw_full_every)')
    .addOption(new Option('--stream-compress <method>', 'compress what goes to or from another host: btrfs streams with zstd on both ends, rsync with --compress (config: stream_compress)').choices(['zstd', 'none']))
    .option('--rate-limit <rate>', 'at most this many bytes a second to each target, with k, m, g for KiB, MiB, GiB: 10m (config: rate_limit)')
    .option('--time-zone <zone>', 'IANA zone whose days and weeks retention counts in (default: this host\'s)')
    .option('--exclude <pattern>', 'rsync exclude pattern (repeatable)', collect)
    .option('--exclude-from <file>', 'file of exclude patterns (repeatable)', collect)
    .option('--multi-fs', 'cross filesystem boundaries (default: stay on the source filesystem)')
    .option('--system-excludes', "leave out what rsync-system-backup leaves out of a system: /dev /proc /sys /run /tmp /mnt /media /var/cache /var/tmp /home/*/.cache (config: system_excludes)")
    .option('--accept-partial', 'keep a backup that rsync ended with exit 23 (some files failed), marked with errors')
    .option('--rsync-option <option>', 'pass an option to rsync (repeatable), e.g. --rsync-option=--bwlimit=10000', collect)
    .option('--json', 'print the result as JSON')
    .option('-v, --verbose', 'say more (repeat for more)', (_: string, previous: number) => previous + 1, 0)
    .option('-q, --quiet', 'print only errors and warnings')

/** every command of bbackup, in the order of `--help` */
export const COMMANDS = ['run', 'snapshot', 'transfer', 'archive', 'system-backup', 'prune', 'clean', 'list', 'diff', 'status', 'verify', 'restore', 'init', 'distrust', 'backup', 'schedule', 'doctor', 'locks', 'completion', 'man'] as const

/**
 * The one command to define for `argv`: building every command's options costs several ms of each
 * run (commander checks each new option against the ones before it), and a run needs only its own.
 * Undefined, all of them, for `--help`, `help`, a word that names no command (commander suggests
 * the nearest), and `completion` and `man`, which are made from all of them.
 */
export const commandToDefine = (argv: readonly string[]): string | undefined => {
  const first = argv[0]
  return first !== undefined && first !== 'completion' && first !== 'man' && (COMMANDS as readonly string[]).includes(first) ? first : undefined
}

const EXAMPLES: Readonly<Record<string, string>> = {
  archive: `
Examples:
  bbackup archive /mnt/backup /mnt/offsite                  every backup the offsite disk lacks, incrementally
  bbackup archive /mnt/backup /mnt/offsite --keep-backups '4w 12m *y'   a monthly history, pruned there
  bbackup archive /mnt/backup root@nas:/srv/archive -n       what would go to another host
  bbackup archive /mnt/old-disk /mnt/new-disk               move the backups to a new disk; then run the jobs against it`,
  'system-backup': `
Examples:
  bbackup system-backup /mnt/usb/backups/laptop --mount /mnt/usb       / to a USB disk, mounted for the run
  bbackup system-backup rsync://bbackup@nas/backups/laptop --password-file /etc/bbackup/nas.secret
  bbackup system-backup -b nas::backups/laptop --password-file F       copy only: the module's post-xfer exec publishes
  bbackup system-backup -r /mnt/usb/backups/laptop                     rotate only
  bbackup system-backup /srv /mnt/usb/srv -x '*.log' --multi-fs`,
  completion: `
Examples:
  bbackup completion bash > /etc/bash_completion.d/bbackup
  bbackup completion zsh > "\${fpath[1]}/_bbackup"
  bbackup completion fish > ~/.config/fish/completions/bbackup.fish
`,
  schedule: `
Examples:
  bbackup schedule home --on-calendar hourly        /etc/systemd/system/bbackup-home.{service,timer}
  bbackup schedule home --on-calendar '*-*-* 02:30' --randomized-delay 900 --print
  bbackup schedule home --user                      ~/.config/systemd/user, for a user without root
  bbackup schedule --list
  bbackup schedule home --remove
`,
  doctor: `
Examples:
  bbackup doctor backup@nas:/srv/backups                   can this host back up there over ssh? and the authorized_keys line
  bbackup doctor ssh://root@web1/home --role send --driver btrfs    a source to pull from
  bbackup doctor rsyncd                                    an rsyncd.conf module "backups" in /srv/backups for user bbackup
  bbackup doctor rsyncd --module laptops --path /tank/laptops --hosts-allow 192.168.1.0/24
`,
  run: `
Examples:
  bbackup run /home /mnt/backup/home              back up /home: a btrfs subvolume is snapshotted and sent,
                                                  a plain directory is copied with hard links to the last backup
  bbackup run /home /mnt/a --keep-snapshots 3     btrfs: keep three source snapshots (and what a target still needs)
  bbackup run /home --locked-dests --no-snapshot  btrfs: retry the targets of unfinished transfers
  bbackup run /srv /mnt/a /mnt/b --keep-backups '7d 4w 12m'
  bbackup run -c /etc/bbackup/config.toml         every job of the config
  bbackup run home                                the job named home of /etc/bbackup/config.toml (as -j home)
  bbackup run -n /home /mnt/backup/home           show what would be done`,
  snapshot: `
Examples:
  bbackup snapshot /home                      a read-only snapshot in /home/.snapshots, nothing sent (btrfs)
  bbackup snapshot /home /mnt/backup/home     the same; the job's lock and state are those of /home with its targets`,
  transfer: `
Examples:
  bbackup transfer /home /mnt/backup/home     send what the target lacks, no pruning
  bbackup transfer -j home --wait             queue behind a run that is still going`,
  locks: `
Examples:
  bbackup locks -c /etc/bbackup/config.toml   who holds the lock of each job, and whether it is stale
  bbackup locks /home /mnt/backup/home --json`,
  list: `
Examples:
  bbackup list /home /mnt/backup/home
  bbackup list /mnt/backup/home --sizes          each backup's size (rsync: rsnapshot du; btrfs: exclusive bytes)
  bbackup list -c /etc/bbackup/config.toml --json`,
  status: `
Examples:
  bbackup status -b /srv/backy/vm1 --json
  bbackup status /home /mnt/backup/home
  bbackup status --check /srv/backups/laptop     one backup directory alone, as a Nagios check
  bbackup status home --json                     the job named home of the config (as -j home)`,
  prune: `
Examples:
  bbackup prune /home /mnt/backup/home --keep-backups 10 -n     show what would be deleted and why
  bbackup prune -j home
  bbackup prune /mnt/backup/home --keep-backups '7d 4w'   a directory of rsync backups alone, source by source
  bbackup prune -j root --forget-target /mnt/old-disk/root -n   btrfs: a retired target's pinned snapshot, pruned by keep_snapshots
  bbackup prune -b /srv/backy/vm1 -n      block: the schedule's expiry now (after a change of schedule)`,
  clean: `
Examples:
  bbackup clean /home /mnt/backup/home -n     the unfinished receives there, and why any is kept
  bbackup clean -j home                       delete them (btrbk clean), with the job's lock held`,
  distrust: `
Examples:
  bbackup distrust -b /srv/backy/vm1 latest      the next backup does not build on it
  bbackup verify -b /srv/backy/vm1 latest        a clean check of every chunk trusts it again`,
  diff: `
Examples:
  bbackup diff /mnt/backup/home                  what the newest backup brought: it against the one before
  bbackup diff /mnt/backup/home home.2026-11-24T001500Z   what that backup brought
  bbackup diff /home home.2026-11-01T001500Z home.2026-11-25T001500Z   two snapshots of a btrfs source
  bbackup diff root@nas:/srv/backups/home --json`,
  restore: `
Examples:
  bbackup restore -b /srv/backy/vm1 latest /var/lib/libvirt/images/vm1-restored.img
  bbackup restore -b /srv/backy/vm1 latest root@kvm1:/var/lib/libvirt/images/vm1-restored.img
  bbackup restore -b /srv/backy/vm2 latest rbd:vms/vm2-restored:id=backup
  bbackup restore /mnt/backup/home latest /tmp/home-restored
  bbackup restore /mnt/backup/home 2026-11-23T001500Z /tmp/r --path alice/thesis.tex`,
  init: `
Examples:
  bbackup init -b /srv/backy/vm1 /var/lib/libvirt/images/vm1.img
  bbackup init -b /srv/backy/db /dev/vg0/db --no-snapshot --schedule 'daily=1d:14,weekly=1w:8'
  bbackup init -b /srv/backy/vm2 rbd:vms/vm2:id=backup        a Ceph RBD image, read with rbd (ceph-common)`,
  backup: `
Examples:
  bbackup backup -b /srv/backy/vm1                     from cron, every hour: a revision when one is due
  bbackup backup -b /srv/backy/vm1 -f -t manual:pre-upgrade`,
  verify: `
Examples:
  bbackup verify -b /srv/backy/vm1                      check every chunk of every revision
  bbackup verify -b /srv/backy/vm1 --subset 2/7         one seventh of the chunks (a weekly cycle)
  bbackup verify /home /mnt/backup/home                 compare the newest backup with /home by checksum
  bbackup verify /home /mnt/backup/home --snapshot 2026-11-23T001500Z`,
}

type Outcome = { readonly code: number }

/**
 * Runs the bbackup command line: `argv` without the node and script names. Returns the exit
 * code; prints through `io` only.
 * @example
 * const code = await main(['list', '/home', '/mnt/backup/home'], { stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s), isTTY: false, cwd: process.cwd() })
 */
export const main = async (argv: readonly string[], io: Io): Promise<number> => {
  const expanded = expandArgFiles(argv, io.cwd)
  if (expanded.isErr()) {
    io.stderr(renderError(expanded.error, false))
    return EXIT.usage
  }
  const stateRootSet = process.env[STATE_DIR_ENV]
  if (stateRootSet !== undefined && stateRootSet !== '' && !isAbsolute(stateRootSet)) {
    // cron and an interactive shell start in different directories: a relative one would split a job's lock in two
    io.stderr(renderError(bbError('INVALID_OPTIONS', `${STATE_DIR_ENV}=${JSON.stringify(stateRootSet)} is not an absolute path`, `set it to a full path (export ${STATE_DIR_ENV}=/var/lib/bbackup), or unset it for the default`), false))
    return EXIT.usage
  }
  let outcome: Outcome = { code: EXIT.ok }
  // remote locations share one ssh session per run: one connection per host, closed when main returns
  let session: Promise<SshSession> | undefined
  let opened: SshSession | undefined
  const connections: Connections = {
    ssh: () => (session ??= import('@bb/transports/ssh').then(({ openSshSession }) => (opened = openSshSession()))),
  }
  const only = commandToDefine(expanded.value)
  const wanted = (name: (typeof COMMANDS)[number]): boolean => only === undefined || only === name
  const program = new Command('bbackup')
    .description('Backups with btrfs snapshots, rsync hard links or block images: snapshot, transfer, prune.')
    .version(VERSION, '-V, --version')
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .showHelpAfterError('(bbackup <command> --help shows the options)')

  const fail = (error: BbError, options: CommonOptions): Outcome => {
    if (options.json === true) io.stdout(`${JSON.stringify({ error }, null, 2)}\n`)
    else io.stderr(renderError(error, (options.verbose ?? 0) > 0))
    return { code: exitCodeOf(error) }
  }

  /** `--ionice` and `--nice`, applied to this process before the command does anything; an error when they cannot be */
  const withPriority = async (options: CommonOptions): Promise<Outcome | undefined> => {
    const priority = parsePriority(options)
    if (priority.isErr()) return fail(priority.error, options)
    const lowered = await lowerPriority(priority.value)
    return lowered.isErr() ? fail(lowered.error, options) : undefined
  }

  /**
   * btrbk's filter (`btrbk run home`): when every argument is a bare word that names a job (or group) of the
   * config (-c, or the default one) and none is a path here, the arguments select those jobs as -j
   * does. A word that names both is refused: only the user knows which was meant.
   */
  const asJobNames = <O extends CommonOptions>(source: string | undefined, targets: readonly string[], options: O): { source: string | undefined; targets: string[]; options: O } | { error: BbError } => {
    const words = [...(source === undefined ? [] : [source]), ...targets]
    const asGiven = { source, targets: [...targets], options }
    const bare = words.length > 0 && words.every((w) => JOB_NAME.test(w) && w !== '.' && w !== '..')
    if (!bare || options.job !== undefined || (options as { backupDir?: string }).backupDir !== undefined || (options.rawTarget ?? []).length > 0 || (options.pipeTarget ?? []).length > 0) return asGiven
    const configPath = options.config === undefined ? DEFAULT_CONFIG : resolvePath(io.cwd, options.config)
    const names: readonly string[] = loadConfig(configPath).map(filterWords).unwrapOr([])
    if (!words.every((w) => names.includes(w))) return asGiven
    const here = words.filter((w) => lstatSync(resolvePath(io.cwd, w), { throwIfNoEntry: false }) !== undefined)
    if (here.length > 0) {
      return { error: bbError('INVALID_OPTIONS', `${here.join(', ')}: the name of a job in ${configPath}, and of a path in ${io.cwd}`, `say which: -j ${here[0] ?? ''} for the job, ./${here[0] ?? ''} for the path`) }
    }
    return { source: undefined, targets: [], options: { ...options, job: words } }
  }

  /** An action on SOURCE TARGET… whose arguments may be the names of the config's jobs (asJobNames). */
  const byJobName = <O extends CommonOptions>(action: (source: string | undefined, targets: string[], options: O) => Promise<void>) =>
    async (source: string | undefined, targets: string[], options: O): Promise<void> => {
      const named = asJobNames(source, targets, options)
      if ('error' in named) return void (outcome = fail(named.error, options))
      return action(named.source, named.targets, named.options)
    }

  /** The jobs a command acts on: from SOURCE TARGET… on the command line, else from the config. */
  const resolveJobs = async (source: string | undefined, targets: readonly string[], options: CommonOptions, withBlock = false): Promise<{ jobs: Job[]; specOf: Map<Job, JobSpec>; blockJobs: BlockJobSpec[]; metricsFile?: string; transactionLog?: string } | { error: BbError }> => {
    const keepBackups = options.keepBackups ?? options.numBackups
    const retention = keepBackups === undefined ? undefined : parseRetentionSpec(keepBackups)
    if (retention?.isErr() === true) return { error: retention.error }
    const prefix = options.prefix ?? options.snapshotPrefix
    const keepSnapshotsSpec = options.keepSnapshots ?? options.numSnapshots
    const keepSnapshots = keepSnapshotsSpec === undefined ? undefined : parseRetentionSpec(keepSnapshotsSpec)
    if (keepSnapshots?.isErr() === true) return { error: keepSnapshots.error }
    const maxDelete = options.maxDelete === undefined ? undefined : parseMaxDelete(options.maxDelete)
    if (maxDelete?.isErr() === true) return { error: maxDelete.error }
    const rate = rateLimitOf(options)
    if (rate.isErr()) return { error: rate.error }
    const rateLimit = rate.value
    const rawFullEvery = options.rawFullEvery === undefined ? undefined : Number(options.rawFullEvery)
    if (rawFullEvery !== undefined && !(Number.isInteger(rawFullEvery) && rawFullEvery >= 1)) {
      return { error: bbError('INVALID_OPTIONS', `--raw-full-every ${options.rawFullEvery ?? ''} is not a whole number of at least 1`, 'e.g. --raw-full-every 7: a full stream after 7 incrementals') }
    }
    const overrides = {
      ...(options.driver === undefined ? {} : { driver: options.driver }),
      ...(prefix === undefined ? {} : { prefix }),
      ...(options.stateDir === undefined ? {} : { stateDir: options.stateDir }),
      ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }),
      ...(retention === undefined ? {} : { keepBackups: retention._unsafeUnwrap() }),
      ...(keepSnapshots === undefined ? {} : { keepSnapshots: keepSnapshots._unsafeUnwrap() }),
      ...(maxDelete === undefined ? {} : { maxDelete: maxDelete._unsafeUnwrap() }),
      ...(options.acceptPartial === true ? { acceptPartial: true } : {}),
      ...(options.backup === true ? { serverPublishes: true } : {}),
      ...(options.systemExcludes === true ? { systemExcludes: true } : {}),
      ...(options.multiFs === true ? { oneFileSystem: false } : {}),
      ...(options.snapshotFolder === undefined ? {} : { snapshotFolder: options.snapshotFolder }),
      ...(options.snapper === true ? { snapper: true } : {}),
      ...(options.snapshotCreate === undefined ? {} : { snapshotCreate: options.snapshotCreate as 'always' | 'onchange' }),
      ...(options.incremental === undefined ? {} : { incremental: options.incremental as 'yes' | 'no' | 'strict' }),
      ...(options.sendProtocol === undefined ? {} : { sendProtocol: options.sendProtocol === 'auto' ? 'auto' as const : Number(options.sendProtocol) as 1 | 2 }),
      ...(options.compressedData === false ? { compressedData: false } : {}),
      ...(options.rawCompress === undefined ? {} : { rawCompress: options.rawCompress as 'zstd' | 'none' }),
      ...(options.rawEncrypt === undefined ? {} : { rawEncrypt: options.rawEncrypt as 'gpg' | 'none' }),
      ...(options.rawGpgRecipient === undefined ? {} : { rawGpgRecipients: options.rawGpgRecipient }),
      ...(options.rawGpgKeyring === undefined ? {} : { rawGpgKeyring: resolvePath(io.cwd, options.rawGpgKeyring) }),
      ...(options.streamCompress === undefined ? {} : { streamCompress: options.streamCompress as 'zstd' | 'none' }),
      ...(rateLimit === undefined ? {} : { rateLimit }),
      ...(rawFullEvery === undefined ? {} : { rawFullEvery }),
      ...(options.mount === undefined ? {} : { mount: resolvePath(io.cwd, options.mount) }),
      ...(options.crypto === undefined ? {} : { crypto: options.crypto }),
      ...(options.sudo === undefined ? {} : { sudo: options.sudo }),
    }
    const cliSsh = sshSpecOf(options, io.cwd)
    const cliRsyncd = rsyncdSpecOf(options, io.cwd)
    const cliHooks = hookCommandsOf(options)
    if (cliHooks.isErr()) return { error: cliHooks.error }
    // the command line's ssh and daemon settings, and its hooks, go over the config's, key by key
    const withSsh = (spec: JobSpec): JobSpec => ({
      ...spec,
      ...(Object.keys(cliSsh).length === 0 ? {} : { ssh: { ...spec.ssh, ...cliSsh } }),
      ...(Object.keys(cliRsyncd).length === 0 ? {} : { rsyncd: { ...spec.rsyncd, ...cliRsyncd } }),
      ...(Object.keys(cliHooks.value).length === 0 ? {} : { hooks: { ...spec.hooks, ...cliHooks.value } }),
    })
    let specs: JobSpec[]
    let otherSpecs: JobSpec[] = []
    let blockJobs: BlockJobSpec[] = []
    let configStateDir: string | undefined
    let metricsFile = options.metricsFile === undefined ? undefined : resolvePath(io.cwd, options.metricsFile)
    let transactionLog = options.transactionLog === undefined ? undefined : resolvePath(io.cwd, options.transactionLog)
    if (source !== undefined) {
      const rawTargets = options.rawTarget ?? []
      const pipeTargets = options.pipeTarget ?? []
      // a btrfs source's snapshots alone need no target (btrbk snapshot; a laptop away from its backup disk)
      if (targets.length === 0 && rawTargets.length === 0 && pipeTargets.length === 0 && options.lockedDests !== true && only !== 'snapshot' && only !== 'prune') {
        // `bbackup run -c FILE NAME`: a job's name where a source goes
        const configPath = options.config === undefined ? DEFAULT_CONFIG : resolvePath(io.cwd, options.config)
        const named = !source.includes('/') && loadConfig(configPath).map((c) => filterWords(c).includes(source)).unwrapOr(false)
        return {
          error: named
            ? bbError('INVALID_OPTIONS', `no target given: ${source} was taken as the source, and it is also the name of a job (or group) in ${configPath}`, `to run that job, name it with -j: bbackup ${only ?? 'run'}${options.config === undefined ? '' : ` -c ${options.config}`} -j ${source}`)
            : bbError('INVALID_OPTIONS', 'no target given', `name where the backups go: bbackup ${only ?? 'run'} SOURCE TARGET [TARGET…]`),
        }
      }
      specs = [{
        source, targets, ...(rawTargets.length === 0 ? {} : { rawTargets }), ...(pipeTargets.length === 0 ? {} : { pipeTargets }), exclude: options.exclude ?? [], excludeFrom: options.excludeFrom ?? [], oneFileSystem: true, acceptPartial: false,
        rsyncOptions: options.rsyncOption ?? [], ...overrides,
      }]
    } else {
      const config = loadConfig(options.config === undefined ? DEFAULT_CONFIG : resolvePath(io.cwd, options.config))
      if (config.isErr()) {
        return { error: options.config === undefined && config.error.details?.path === DEFAULT_CONFIG
          ? bbError('INVALID_OPTIONS', `no source given, and there is no config at ${DEFAULT_CONFIG}`, 'give SOURCE TARGET on the command line, or a config with -c FILE')
          : config.error }
      }
      configStateDir = config.value.stateDir
      metricsFile ??= config.value.metricsFile
      transactionLog ??= config.value.transactionLog
      const selected = selectJobs(config.value, options.job ?? [])
      if (selected.isErr()) return { error: selected.error }
      blockJobs = [...selected.value.blockJobs]
      const named = selected.value.namedBlockJobs
      if (!withBlock && named.length > 0) {
        return { error: bbError('UNSUPPORTED', `${named.map((j) => j.name).join(', ')}: block volumes are not read by this command`, `use bbackup status -b ${named[0]?.backupDir ?? 'DIR'} (and verify -b, restore -b)`) }
      }
      otherSpecs = [...selected.value.others]
      specs = selected.value.jobs.map((j) => ({
        ...j, ...overrides,
        exclude: [...j.exclude, ...(options.exclude ?? [])], excludeFrom: [...j.excludeFrom, ...(options.excludeFrom ?? [])], rsyncOptions: [...j.rsyncOptions, ...(options.rsyncOption ?? [])],
      }))
      if (specs.length === 0 && !(withBlock && blockJobs.length > 0)) {
        return { error: bbError('INVALID_OPTIONS', `${config.value.path} has no jobs${blockJobs.length > 0 ? ' this command acts on (only block volumes: bbackup status -b DIR reads those)' : ''}`, 'add a [jobs.NAME] table with source and targets') }
      }
    }
    const jobs: Job[] = []
    const specOf = new Map<Job, JobSpec>()
    const building = { cwd: io.cwd, connections, ...(configStateDir === undefined ? {} : { configStateDir }) }
    for (const spec of specs.map(withSsh)) {
      const built = await buildJob(spec, building)
      if (built.isErr()) return { error: built.error }
      // only a btrfs source has snapshots of its own to take and prune without a target
      if (built.value.targets.length === 0 && !built.value.driver.snapshotsSource && options.lockedDests !== true) {
        return { error: bbError('INVALID_OPTIONS', `no target given${spec.name === undefined ? '' : ` for the job ${spec.name}`}, and ${spec.source} is backed up by the ${built.value.driver.name} driver, which keeps nothing at the source`,
          `name where the backups go: ${spec.name === undefined ? `bbackup ${only ?? 'run'} SOURCE TARGET [TARGET…]` : 'targets = ["/mnt/backup/home"]'}`, { path: spec.source }) }
      }
      jobs.push(built.value)
      specOf.set(built.value, spec)
    }
    // the config's other jobs too (a timer runs one job with -j): those whose driver is known
    // without asking another host; one that cannot be built is left to its own run
    const others: { job: Job; spec: JobSpec; selected: false }[] = []
    for (const spec of source === undefined ? otherSpecs : []) {
      if (spec.driver === undefined && parseLocation(spec.source, { cwd: io.cwd }).map((l) => l.kind !== 'local').unwrapOr(true)) continue
      const built = await buildJob(spec, building)
      if (built.isOk()) others.push({ job: built.value, spec, selected: false })
    }
    const shared = sharedPlaces([...[...specOf].map(([job, spec]) => ({ job, spec })), ...others])
    if (shared !== undefined) return { error: shared }
    return { jobs, specOf, blockJobs: withBlock ? blockJobs : [], ...(metricsFile === undefined ? {} : { metricsFile }), ...(transactionLog === undefined ? {} : { transactionLog }) }
  }

  /** a --mount or --crypto disk was not plugged in, and the run ended at once with exit 0 (under cron) */
  let diskMissing = false

  /**
   * `--crypto NAME` and `--mount DIR`: the encrypted backup disk NAME of /etc/crypttab is unlocked,
   * then DIR mounted from /etc/fstab, for the run, and after it unmounted and locked again, each only
   * if this run did it. The job's local targets must lie inside DIR. A disk that is not plugged in
   * ends a run or prune (`quiet`) with one line and exit 0 under cron (no terminal), as
   * rsync-system-backup does; on a terminal, and for a command that reads the backups, it is an error.
   */
  const diskFor = async (places: readonly string[], spec: Pick<JobSpec, 'mount' | 'crypto'> | undefined, options: CommonOptions, signal?: AbortSignal, whenMissing: 'quiet' | 'error' = 'quiet'): Promise<{ release: () => ResultAsync<void, BbError> } | Outcome> => {
    const nothing = { release: () => okAsync(undefined) }
    const { mount: mountPoint, crypto } = spec ?? {}
    if (mountPoint === undefined && crypto === undefined) return nothing
    const { insideMountPoint, mountBackupDisk, unlockBackupDisk } = await import('@bb/transports/local')
    const outside = mountPoint === undefined ? undefined : places.map((place) => insideMountPoint(mountPoint, place)).find((r) => r.isErr())
    if (outside?.isErr() === true) return fail(outside.error, options)
    if (options.dryRun === true) return nothing
    const missing = (error: BbError): Outcome => {
      if (error.details?.diskMissing === true && !io.isTTY && whenMissing === 'quiet') {
        diskMissing = true
        io.stderr(`bbackup: ${error.message}; nothing backed up\n`)
        return { code: EXIT.ok }
      }
      return fail(error, options)
    }
    // a user that is not root unlocks and mounts through sudo when the job runs its commands so
    const sudo = options.sudo === true && process.getuid?.() !== 0 ? { sudo: true } : {}
    let unlocked: { release: () => ResultAsync<void, BbError> } = nothing
    if (crypto !== undefined) {
      const opened = await unlockBackupDisk(crypto, { ...(signal === undefined ? {} : { signal }), interactive: io.isTTY, ...sudo })
      if (opened.isErr()) return missing(opened.error)
      unlocked = opened.value
    }
    let mounted: { release: () => ResultAsync<void, BbError> } = nothing
    if (mountPoint !== undefined) {
      const made = await mountBackupDisk(mountPoint, { ...(signal === undefined ? {} : { signal }), ...sudo })
      if (made.isErr()) {
        // the disk unlocked for a mount that failed is locked again
        const relocked = await unlocked.release()
        if (relocked.isErr()) io.stderr(`warning: ${relocked.error.message} (${relocked.error.hint})\n`)
        return missing(made.error)
      }
      mounted = made.value
    }
    // a disk that could not be unmounted stays unlocked: it is in use
    return { release: () => mounted.release().andThen(() => unlocked.release()) }
  }

  /** the paths of a job's targets on this host: those a --mount disk must hold */
  const localTargets = (job: Job): string[] => job.targets.flatMap((t) => (t.location.kind === 'local' ? [t.location.path] : []))

  /**
   * --crypto and --mount given on the command line, for a command on one place alone (`list DIR`,
   * `prune DIR`): the disk is made ready before that place is looked at. A job's own disk is made
   * ready again per job, which finds it unlocked and mounted and leaves it to this.
   */
  const placeDisk = async (source: string | undefined, targets: readonly string[], options: CommonOptions, whenMissing: 'quiet' | 'error'): ReturnType<typeof diskFor> => {
    const given = { ...(options.mount === undefined ? {} : { mount: resolvePath(io.cwd, options.mount) }), ...(options.crypto === undefined ? {} : { crypto: options.crypto }) }
    const alone = source !== undefined && targets.length === 0 && options.config === undefined && options.job === undefined
    const place = alone ? parseLocation(source, { cwd: io.cwd }).map((l) => (l.kind === 'local' ? [l.path] : [])).unwrapOr([]) : []
    return alone ? diskFor(place, given, options, undefined, whenMissing) : { release: () => okAsync(undefined) }
  }

  /** `command` on a place given alone, with its backup disk (--crypto, --mount) ready for it and let go of after it; the release's failure counts when it is worse */
  const withPlaceDisk = async (source: string | undefined, targets: readonly string[], options: CommonOptions, whenMissing: 'quiet' | 'error', command: () => Promise<Outcome>): Promise<Outcome> => {
    const disk = await placeDisk(source, targets, options, whenMissing)
    if ('code' in disk) return disk
    const done = await command()
    const released = await disk.release()
    return released.isErr() ? { code: Math.max(done.code, fail(released.error, options).code) } : done
  }

  /** What a command on the backup disk came to once the disk was let go of: its own failure first (the release's a warning then), else the release's. */
  const afterRelease = <T>(done: Result<T, BbError>, released: Result<void, BbError>): Result<T, BbError> => {
    if (released.isErr() && done.isErr()) io.stderr(`warning: ${released.error.message} (${released.error.hint})\n`)
    return done.isOk() && released.isErr() ? err(released.error) : done
  }

  /** The transaction log of a run or prune that changes things (none in a dry run, as btrbk). */
  const openLog = (path: string | undefined, options: CommonOptions): { log: TransactionLog | undefined } | { error: BbError } => {
    if (path === undefined || options.dryRun === true) return { log: undefined }
    const opened = openTransactionLog(path, VERSION)
    return opened.isErr() ? { error: opened.error } : { log: opened.value }
  }

  /**
   * Where a job's events go: drawn for people (not with --json), as JSON lines on stderr with
   * --log-json, and into the transaction log.
   */
  const eventsOf = (options: CommonOptions, verbosity: number, log: TransactionLog | undefined, source: string, driver: string): ((event: BackupEvent) => void) => {
    const shown = options.logJson === true ? jsonEventLogger(io) : options.json === true ? undefined : eventRenderer(io, verbosity)
    const logged = log?.forJob(source, driver)
    return (event) => {
      shown?.(event)
      logged?.(event)
    }
  }

  /** whether anything shows or logs the progress of a transfer: drawn on a terminal, or logged by --log-json */
  const progressWanted = (options: CommonOptions, verbosity: number): boolean =>
    options.logJson === true || (io.isTTY && verbosity >= 0 && options.json !== true)

  /** Runs the engine's backup for each job, rendering events and the report. */
  const runJobs = async (source: string | undefined, targets: string[], options: CommonOptions, stages: { transfer?: boolean; prune?: boolean | 'snapshots' | 'backups'; snapshot?: boolean }): Promise<Outcome> => {
    // bbackup run also backs up the config's block volumes, each when its schedule says so
    const runsBlock = stages.snapshot === undefined && stages.transfer === undefined && stages.prune === undefined
    // first: `--wait /home /backup` took the source as its seconds
    const wait = waitSecondsOf(options.wait)
    if (wait.isErr()) return fail(wait.error, options)
    const resolved = await resolveJobs(source, targets, options, runsBlock)
    if ('error' in resolved) return fail(resolved.error, options)
    const opened = openLog(resolved.transactionLog, options)
    if ('error' in opened) return fail(opened.error, options)
    const { log } = opened
    const verbosity = options.quiet === true ? -1 : options.verbose ?? 0
    const stop = stopSignal()
    let code: number = EXIT.ok
    const reports = []
    const runs: JobRun[] = []
    // run's --no-snapshot / --no-transfer (btrfs-backup's flags) and --preserve… (btrbk's) narrow its stages
    const preserved = preservedOf(options)
    const wanted = {
      ...stages, ...(options.snapshot === false ? { snapshot: false } : {}), ...(options.transfer === false ? { transfer: false } : {}),
      // -b: the daemon's post-xfer exec rotates (unless system-backup's -r asks for it here)
      ...(options.backup === true && stages.prune === undefined ? { prune: false } : {}),
      ...(preserved === undefined ? {} : { prune: preserved }),
    }
    try {
      for (const listed of resolved.jobs) {
        let job = listed
        if (options.removeLocks === true) {
          const forgotten = await forgetPending(job, { targets: job.targets.map((t) => formatLocation(t.location)), dryRun: options.dryRun === true })
          if (forgotten.isErr()) {
            code = Math.max(code, fail(forgotten.error, options).code)
            continue
          }
          for (const e of forgotten.value) if (verbosity >= 0 && options.json !== true) io.stderr(`forgot the pending transfer of ${e.snapshot} to ${e.target}\n`)
        }
        if (options.lockedDests === true) {
          const widened = await withJournalledTargets(job, resolved.specOf.get(listed) ?? {}, connections)
          if (widened.isErr()) {
            code = Math.max(code, fail(widened.error, options).code)
            continue
          }
          job = widened.value.job
          for (const why of widened.value.skipped) if (options.json !== true) io.stderr(`warning: ${why}\n`)
        }
        if (stages.snapshot === true && !job.driver.snapshotsSource) {
          code = Math.max(code, fail(bbError('UNSUPPORTED', `the ${job.driver.name} driver copies the live source: it has no source snapshots to take`, 'use bbackup run, which makes the backup'), options).code)
          continue
        }
        const tries = retriesOf(options)
        if (tries.isErr()) {
          code = Math.max(code, fail(tries.error, options).code)
          break
        }
        const retries = tries.value
        const disk = await diskFor(localTargets(job), resolved.specOf.get(listed), options, stop.signal)
        if ('code' in disk) {
          code = Math.max(code, disk.code)
          continue
        }
        const ran = await backup(job, {
          ...(retries === undefined ? {} : { retry: { attempts: retries } }),
          ...wanted,
          dryRun: options.dryRun === true,
          signal: stop.signal,
          onEvent: eventsOf(options, verbosity, log, formatLocation(job.source.location), job.driver.name),
          ...(progressWanted(options, verbosity) ? {} : { progress: false }),
          ...(wait.value === undefined ? {} : { waitSeconds: wait.value }),
          ...(options.takeOver === true ? { takeOver: true } : {}),
        })
        // the disk is let go of whatever became of the run: one left mounted gets unplugged mounted
        const r = afterRelease(ran, await disk.release())
        const name = resolved.specOf.get(listed)?.name ?? formatLocation(job.source.location)
        runs.push({ job: name, finishedAt: new Date(), outcome: r.isErr() ? { error: r.error } : { report: r.value } })
        if (r.isErr()) {
          log?.jobFailed(formatLocation(job.source.location), r.error)
          // --json prints one document: a job that could not run is an entry of it
          if (options.json === true) {
            reports.push({ job: name, error: r.error })
            code = Math.max(code, exitCodeOf(r.error))
          } else code = Math.max(code, fail(r.error, options).code)
          continue
        }
        reports.push(r.value)
        if (options.json !== true && verbosity >= 0) io.stdout(renderReport(r.value, verbosity, wanted))
        // -q prints only errors and warnings: a failed target is one
        else if (options.json !== true) io.stderr(renderProblems(r.value))
        if (options.backup === true && options.json !== true && verbosity >= 0 && options.dryRun !== true) {
          io.stdout('(-b: each backup stays unfinished until the daemon\'s post-xfer exec publishes it; nothing was rotated here)\n')
        }
        if (!runComplete(r.value)) code = Math.max(code, EXIT.someTargetsFailed)
      }
      for (const volume of resolved.blockJobs) {
        code = Math.max(code, options.dryRun === true
          ? await blockDue(io, volume.backupDir, options)
          // the command line's ssh settings go over the config's, key by key, as for the other jobs
          : await blockBackup(io, volume.backupDir, { ...options, jobName: volume.name, hookCommands: { ...volume.hooks, ...hookCommandsOf(options).unwrapOr({}) }, ...(options.preserve === true || options.preserveBackups === true ? { expire: false } : {}) }, {
            connections, ssh: { ...volume.ssh, ...sshSpecOf(options, io.cwd) }, way: blockWayOf(options, volume.way).unwrapOr({}),
          }, {
            collect: (report) => reports.push({ job: volume.name, ...report }),
            eventsFor: (from) => eventsOf(options, verbosity, log, from, 'block'),
            ran: (from, outcome) => {
              runs.push({ job: volume.name, finishedAt: new Date(), outcome })
              if ('error' in outcome) log?.jobFailed(from ?? resolvePath(io.cwd, volume.backupDir), outcome.error)
            },
          }))
      }
    } finally {
      stop.done()
      log?.finish(code === EXIT.ok ? 'success' : 'partial', code === EXIT.ok ? undefined : 'at least one job or target failed')
    }
    if (options.json === true) io.stdout(`${JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2)}\n`)
    if (resolved.metricsFile !== undefined && options.dryRun !== true && runs.length > 0) {
      const written = await writeMetrics(resolved.metricsFile, runs)
      if (written.isErr()) code = Math.max(code, fail(written.error, options).code)
    }
    return { code }
  }

  const runArchive = async (source: string, target: string, options: CommonOptions & { depth?: string }): Promise<Outcome> => {
    const wait = waitSecondsOf(options.wait)
    if (wait.isErr()) return fail(wait.error, options)
    const depth = options.depth === undefined ? undefined : Number(options.depth)
    if (depth !== undefined && !(Number.isInteger(depth) && depth >= 0)) {
      return fail(bbError('INVALID_OPTIONS', `--depth ${options.depth ?? ''} is not a whole number of levels`, 'give 0 (the source alone) or more, e.g. --depth 2'), options)
    }
    const tries = retriesOf(options)
    if (tries.isErr()) return fail(tries.error, options)
    const retries = tries.value
    const retention = options.keepBackups === undefined ? undefined : parseRetentionSpec(options.keepBackups)
    if (retention?.isErr() === true) return fail(retention.error, options)
    const maxDelete = options.maxDelete === undefined ? undefined : parseMaxDelete(options.maxDelete)
    if (maxDelete?.isErr() === true) return fail(maxDelete.error, options)
    const rate = rateLimitOf(options)
    if (rate.isErr()) return fail(rate.error, options)
    const rateLimit = rate.value
    const places = await ResultAsync.combine([placeOf(source, options), placeOf(target, options)])
    if (places.isErr()) return fail(places.error, options)
    const [from, to] = places.value
    const { btrfsDriver } = await import('@bb/drivers/btrfs')
    const driver = btrfsDriver({
      backupsAtSource: true,
      ...(options.sendProtocol === undefined ? {} : { sendProtocol: options.sendProtocol === 'auto' ? 'auto' as const : Number(options.sendProtocol) as 1 | 2 }),
      ...(options.streamCompress === undefined ? {} : { streamCompress: options.streamCompress as 'zstd' | 'none' }),
      ...(rateLimit === undefined ? {} : { rateLimit }),
    })
    const stateDir = options.stateDir === undefined ? defaultStateDir(`archive-${jobId(from, [to])}`) : resolvePath(io.cwd, options.stateDir)
    const { localTransport } = await import('@bb/transports/local')
    const verbosity = options.quiet === true ? -1 : options.verbose ?? 0
    const stop = stopSignal()
    try {
      const r = await archive({
        driver, source: from, target: to, state: { transport: localTransport(stateDir), directory: stateDir },
        ...(retention === undefined ? {} : { retention: retention._unsafeUnwrap() }),
        ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }),
        ...(maxDelete === undefined ? {} : { maxDelete: maxDelete._unsafeUnwrap() }),
        ...(depth === undefined ? {} : { depth }),
        ...(options.exclude === undefined ? {} : { exclude: options.exclude }),
      }, {
        dryRun: options.dryRun === true, signal: stop.signal,
        onEvent: eventsOf(options, verbosity, undefined, formatLocation(from.location), 'btrfs'),
        ...(retries === undefined ? {} : { retry: { attempts: retries } }),
        ...(wait.value === undefined ? {} : { waitSeconds: wait.value }),
      })
      if (r.isErr()) return fail(r.error, options)
      if (options.json === true) io.stdout(`${JSON.stringify(r.value, null, 2)}\n`)
      else if (verbosity >= 0) io.stdout(renderArchive(r.value, verbosity))
      else io.stderr(renderArchiveProblems(r.value))
      return { code: archiveComplete(r.value) ? EXIT.ok : EXIT.someTargetsFailed }
    } finally {
      stop.done()
    }
  }

  /** A place named on the command line, reached as the options say, to see what it holds. */
  const placeOf = (place: string, options: CommonOptions): ResultAsync<Transport, BbError> =>
    parseLocation(place, { cwd: io.cwd }).asyncAndThen((l) => new ResultAsync(transportFor(l, { ...(options.sudo === true ? { sudo: true } : {}), ssh: sshSpecOf(options, io.cwd), rsyncd: rsyncdSpecOf(options, io.cwd) }, connections)))

  /**
   * One place named alone (`list PLACE`, `status PLACE`, `prune PLACE`): the options that read it as a directory of
   * backups (rsync, btrfs, raw streams), or as a btrfs source (the subvolume or its snapshot folder);
   * an error when it is neither.
   */
  const aloneAt = async (place: string, options: CommonOptions, command: 'list' | 'status' | 'prune' | 'diff'): Promise<{ options: CommonOptions; driver: string; raw: boolean; holdsBackups: boolean } | { error: BbError }> => {
    const at = await placeOf(place, options)
    if (at.isErr()) return { error: at.error }
    const there = await at.value.stat(at.value.location.path)
    // a host that cannot be reached is that, not a place without backups
    if (there.isErr()) return { error: there.error }
    if (there.value === undefined) return { error: bbError('NOT_FOUND', `${place} does not exist`, 'check the path (is the disk mounted?)', { path: place }) }
    const { driver, raw, holdsBackups } = await detectBackupDriver(at.value)
    if (!holdsBackups && driver !== 'btrfs' && command === 'diff') {
      return { error: bbError('INVALID_OPTIONS', `${place} holds no backups (nor is it a btrfs subvolume with snapshots): there is nothing to compare`,
        'give a directory of backups, or a btrfs source: bbackup diff /mnt/backup/home', { path: place }) }
    }
    if (!holdsBackups && (driver !== 'btrfs' || command === 'status')) {
      return { error: bbError('INVALID_OPTIONS', `no target given, and ${place} holds no backups${command === 'status' ? driver === 'btrfs' ? ' (it is a btrfs subvolume: a source, whose status is that of its targets)' : '' : ' (nor is it a btrfs subvolume with snapshots)'}`,
        command === 'status'
          ? `name the targets: bbackup status SOURCE TARGET…, or one directory of backups alone: bbackup status /mnt/backup/home${driver === 'btrfs' ? `; its snapshots: bbackup list ${place}` : ''}`
          : `name the targets: bbackup ${command} SOURCE TARGET…, or one directory of backups alone: bbackup ${command} /mnt/backup/home${command === 'prune' ? ' --keep-backups …' : ''}`,
        { path: place }) }
    }
    return { options: { ...options, driver: options.driver ?? driver, ...(raw ? { rawTarget: [place] } : {}), ...(holdsBackups && driver === 'btrfs' && !raw ? { snapshotFolder: '.' } : {}) }, driver, raw, holdsBackups }
  }

  /**
   * `list PLACE`: the backups a target directory holds, or the snapshots of a btrfs source (PLACE is
   * the subvolume or its snapshot folder).
   */
  const listAlone = async (place: string, options: CommonOptions): Promise<void> => {
    const found = await aloneAt(place, options, 'list')
    if ('error' in found) return void (outcome = fail(found.error, options))
    const { driver, raw, holdsBackups } = found
    // one source's among several sharing the place, where its prefix is given
    const ofJob = (options.prefix ?? options.snapshotPrefix) !== undefined
    const listing = (job: Job, signal: AbortSignal) => {
      const sizes = options.sizes === true
      if (!holdsBackups) return list(job, { only: 'source', sizes, ofJob, signal })
      if (raw || driver !== 'btrfs') return list(job, { only: 'target', sizes, ofJob, signal })
      // read-only subvolumes that were never received: a snapshot folder, listed as a source's
      return list(job, { only: 'target', sizes, ofJob, signal }).andThen((lists) =>
        lists.some((l) => l.snapshots.some((s) => s.complete)) ? okAsync(lists) : list(job, { only: 'source', sizes, ofJob, signal }))
    }
    const answers = await eachJob(place, raw ? [] : [place], found.options, listing, (answers) => answers.map(renderList).join(''))
    // sizes asked for and not told: the reason is printed with the list
    if ((answers ?? []).flat().some((l) => l.sizesError !== undefined)) outcome = { code: EXIT.someTargetsFailed }
  }

  /**
   * `diff PLACE [FROM] [TO]`: what changed between two snapshots kept at PLACE (a directory of
   * backups, or a btrfs source and its snapshot folder). One name is TO, compared with the one before it.
   */
  const runDiff = async (place: string, names: string[], options: CommonOptions): Promise<Outcome> => {
    if (names.length > 2) {
      return fail(bbError('INVALID_OPTIONS', `diff compares two snapshots, and was given ${names.length}: ${names.join(' ')}`, 'bbackup diff PLACE [FROM] [TO], e.g. bbackup diff /mnt/backup/home'), options)
    }
    const found = await aloneAt(place, options, 'diff')
    if ('error' in found) return fail(found.error, options)
    const resolved = await resolveJobs(place, found.raw ? [] : [place], found.options)
    if ('error' in resolved) return fail(resolved.error, options)
    const job = resolved.jobs[0] as Job
    const [from, to] = names.length === 2 ? names : [undefined, names[0]]
    const stop = stopSignal()
    const asked = (j: Job, side: 'source' | 'target') => diff(j, {
      at: side === 'source' ? j.source : j.targets[0] as Transport, side, anyPrefix: options.prefix === undefined, signal: stop.signal,
      ...(from === undefined ? {} : { from }), ...(to === undefined ? {} : { to }),
    })
    let r: Awaited<ReturnType<typeof asked>>
    try {
      r = await asked(job, found.holdsBackups ? 'target' : 'source')
      // read-only subvolumes that were never received: a snapshot folder, read as a source's (as list and restore do)
      if (r.isErr() && r.error.code === 'SNAPSHOT_NOT_FOUND' && r.error.details?.newest === undefined && found.driver === 'btrfs' && !found.raw && found.holdsBackups) {
        const asSource = await asked(job, 'source')
        if (asSource.isOk() || asSource.error.code !== 'SNAPSHOT_NOT_FOUND' || asSource.error.details?.newest !== undefined) r = asSource
      }
    } finally {
      stop.done()
    }
    if (r.isErr()) return fail(r.error, options)
    io.stdout(options.json === true ? `${JSON.stringify(r.value, null, 2)}\n` : renderDiff(r.value))
    return { code: 0 }
  }

  /**
   * A command that asks each job one question: resolves the jobs, collects the answers, and prints
   * them as JSON or text; the first error ends it.
   */
  const eachJob = async <T>(
    source: string | undefined, targets: string[], options: CommonOptions,
    /** `signal`: Ctrl-C or a kill (what the asking started stops with it) */
    ask: (job: Job, signal: AbortSignal) => ResultAsync<T, BbError>, print: (answers: T[]) => string,
    /** with each job's backup disk unlocked and mounted for the asking (--crypto, --mount) */
    onDisk = false,
  ): Promise<T[] | undefined> => {
    const resolved = await resolveJobs(source, targets, options)
    if ('error' in resolved) return void (outcome = fail(resolved.error, options))
    const answers: T[] = []
    const stop = stopSignal()
    try {
      for (const job of resolved.jobs) {
        const disk = onDisk ? await diskFor(localTargets(job), resolved.specOf.get(job), options, stop.signal, 'error') : { release: () => okAsync(undefined) }
        if ('code' in disk) return void (outcome = disk)
        const r = afterRelease(await ask(job, stop.signal), await disk.release())
        if (r.isErr()) return void (outcome = fail(r.error, options))
        answers.push(r.value)
      }
    } finally {
      stop.done()
    }
    io.stdout(options.json === true ? `${JSON.stringify(answers.length === 1 ? answers[0] : answers, null, 2)}\n` : print(answers))
    return answers
  }

  /**
   * `snapshot` and `prune` run by an rsync daemon as a module's pre-xfer / post-xfer exec (with no
   * config, job or targets; a source, if any, is the directory of the backups): the server-side
   * mode. undefined when not run so.
   */
  const asRsyncdHook = async (command: 'snapshot' | 'prune', source: string | undefined, targets: string[], options: CommonOptions): Promise<Outcome | undefined> => {
    if (process.env.RSYNC_MODULE_PATH === undefined || targets.length > 0 || options.config !== undefined || options.job !== undefined) return undefined
    const [{ runRsyncdHook }, { readRsyncdHookEnv }] = await Promise.all([import('./rsyncd-hook.js'), import('@bb/transports/rsyncd')])
    const hook = readRsyncdHookEnv(process.env)
    if (hook === undefined) return undefined
    const retention = options.keepBackups === undefined ? undefined : parseRetentionSpec(options.keepBackups)
    if (retention?.isErr() === true) return fail(retention.error, options)
    const maxDelete = options.maxDelete === undefined ? undefined : parseMaxDelete(options.maxDelete)
    if (maxDelete?.isErr() === true) return fail(maxDelete.error, options)
    const r = await runRsyncdHook(command, hook, {
      ...(source === undefined ? {} : { location: resolvePath(io.cwd, source) }),
      ...(options.stateDir === undefined ? {} : { stateDir: resolvePath(io.cwd, options.stateDir) }),
      ...(options.acceptPartial === true ? { acceptPartial: true } : {}),
      ...(retention === undefined ? {} : { retention: retention._unsafeUnwrap() }),
      ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }),
      ...(maxDelete === undefined ? {} : { maxDelete: maxDelete._unsafeUnwrap() }),
    })
    for (const line of r.lines) io.stderr(`bbackup ${command} (${hook.phase} exec): ${line}\n`)
    if (r.error === undefined) return { code: EXIT.ok }
    // a failing pre-xfer exec's stdout is what the client is shown
    if (hook.phase === 'pre-xfer') io.stdout(`bbackup ${command} (pre-xfer exec): ${r.error.message}\n`)
    return fail({ ...r.error, message: `${command} (${hook.phase} exec): ${r.error.message}` }, options)
  }

  /**
   * `prune PLACE` where PLACE is a directory of rsync backups (rotate-backups' use, on the backup
   * server): one job per source whose backups it holds (by the names' prefix, or the one -p names),
   * so that one source's backups never count against another's. A directory of btrfs backups or raw
   * streams needs its source: the parent of the next incremental must stay. undefined when PLACE
   * holds no backups (a btrfs source's own snapshots are pruned as a job without targets).
   */
  const pruneAloneAt = async (place: string, options: CommonOptions): Promise<{ jobs: Job[]; specOf?: Map<Job, JobSpec>; transactionLog?: string } | { error: BbError } | undefined> => {
    if ((options.rawTarget ?? []).length > 0 || (options.pipeTarget ?? []).length > 0 || options.config !== undefined || options.job !== undefined) return undefined
    const found = await aloneAt(place, options, 'prune')
    if ('error' in found) return found
    const { driver, raw, holdsBackups } = found
    if (!holdsBackups) return undefined
    if (driver !== 'rsync' || raw) {
      return { error: bbError('INVALID_OPTIONS', `${place} holds ${raw ? 'btrfs send streams' : 'btrfs backups'}: pruning them alone could delete the parent of the next incremental, which only the source knows`,
        `name the source too: bbackup prune SOURCE ${place} --keep-backups …`, { path: place }) }
    }
    const general = await resolveJobs(place, [place], { ...options, driver: 'rsync' })
    if ('error' in general) return general
    const prefix = options.prefix ?? options.snapshotPrefix
    let prefixes = prefix === undefined ? [] : [prefix]
    if (prefix === undefined) {
      const held = await list(general.jobs[0] as Job, { only: 'target' })
      if (held.isErr()) return { error: held.error }
      const backups = held.value.flatMap((l) => l.snapshots).filter((s) => s.complete && s.time !== undefined)
      prefixes = [...new Set(backups.map((s) => parseSnapshotName(s.name)?.prefix ?? ''))].sort()
    }
    const jobs: Job[] = []
    for (const p of prefixes.length === 0 ? [''] : prefixes) {
      const r = await resolveJobs(place, [place], { ...options, driver: 'rsync', prefix: p })
      if ('error' in r) return r
      jobs.push(...r.jobs)
    }
    return { jobs, ...(general.transactionLog === undefined ? {} : { transactionLog: general.transactionLog }) }
  }

  const runPrune = async (source: string | undefined, targets: readonly string[], options: CommonOptions & { forgetTarget?: readonly string[] }): Promise<Outcome> => {
    return withPlaceDisk(source, targets, options, 'quiet', () => pruneJobs(source, targets, options))
  }

  const pruneJobs = async (source: string | undefined, targets: readonly string[], options: CommonOptions & { forgetTarget?: readonly string[] }): Promise<Outcome> => {
    // a target gone for good, named as the job recorded it (formatLocation of its location)
    const forgetting: string[] = []
    for (const given of options.forgetTarget ?? []) {
      const location = parseLocation(given, { cwd: io.cwd })
      if (location.isErr()) return fail(location.error, options)
      forgetting.push(formatLocation(location.value))
    }
    const alone = source !== undefined && targets.length === 0 ? await pruneAloneAt(source, options) : undefined
    const resolved = alone ?? await resolveJobs(source, targets, options)
    if ('error' in resolved) return fail(resolved.error, options)
    if (forgetting.length > 0 && resolved.jobs.length !== 1) {
      return fail(bbError('INVALID_OPTIONS', `--forget-target is for one job, and ${resolved.jobs.length} are given`, 'name the job whose target it was: -j NAME, or its source and targets'), options)
    }
    for (const job of resolved.jobs) {
      if (job.retention?.target === undefined && job.retention?.source === undefined) {
        return fail(bbError('INVALID_OPTIONS', 'no retention policy: nothing to prune by', "give --keep-backups (e.g. '10' or '7d 4w 12m'), or keep_backups in the config"), options)
      }
    }
    const opened = openLog(resolved.transactionLog, options)
    if ('error' in opened) return fail(opened.error, options)
    const { log } = opened
    let code: number = EXIT.ok
    // with --json, one array of every job's results (what came before a failure too)
    const results: PruneResult[] = []
    const stop = stopSignal()
    try {
      // every job and every place of it is pruned, also after one that fails: exit 10 when a place
      // failed (as a run whose prune failed), else the first failed job's code; none after Ctrl-C or a kill
      for (const job of resolved.jobs) {
        if (stop.signal.aborted) break
        // a disk that is not plugged in: one line and exit 0 under cron, as for run (rsync-system-backup's -r)
        const disk = await diskFor(localTargets(job), resolved.specOf?.get(job), options, stop.signal)
        if ('code' in disk) {
          if (code === EXIT.ok) code = disk.code
          continue
        }
        const r = afterRelease(await prune(job, { dryRun: options.dryRun === true, forgetTargets: forgetting, signal: stop.signal, onEvent: eventsOf({ ...options, json: false }, options.verbose ?? 0, log, formatLocation(job.source.location), job.driver.name) }), await disk.release())
        if (r.isErr()) {
          log?.jobFailed(formatLocation(job.source.location), r.error)
          const failed = fail(r.error, options).code
          if (code === EXIT.ok) code = failed
          continue
        }
        for (const place of r.value) {
          if (place.error !== undefined) log?.pruneFailed(place.at, place.error)
        }
        // a cancel is the command's end, not a place's failure: 1, as a cancelled run
        const placesCode = placesExitCode(r.value.map((p) => p.error))
        if (code === EXIT.ok || (code === EXIT.someTargetsFailed && placesCode === EXIT.error)) code = placesCode
        if (options.json === true) results.push(...r.value)
        else {
          io.stdout(renderPrune(r.value.filter((p) => p.error === undefined), options.dryRun === true))
          io.stderr(renderPlaceFailures(r.value, 'PRUNED'))
          io.stderr(renderPruneWarnings(r.value))
        }
      }
      return { code }
    } finally {
      stop.done()
      if (options.json === true && results.length > 0) io.stdout(`${JSON.stringify(results, null, 2)}\n`)
      log?.finish(code === EXIT.ok ? 'success' : code === EXIT.someTargetsFailed ? 'partial' : 'ERROR', code === EXIT.someTargetsFailed ? 'at least one place was not pruned' : undefined)
    }
  }

  const jobCommand = (name: 'run' | 'snapshot' | 'transfer', description: string, stages: { transfer?: boolean; prune?: boolean; snapshot?: boolean }): void => {
    if (!wanted(name)) return
    const command = diskOptions(jobOptions(program.command(name).description(description).argument('[source]', 'what to back up').argument('[targets...]', 'where the backups go')))
      .option('-n, --dry-run', 'run nothing that changes anything; print the commands that would run')
      .option('--wait [seconds]', 'wait for another run of the job to finish instead of failing with exit 3')
      .option('--locked-dests', 'also retry every target the journal has an unfinished transfer to (btrfs-backup)')
      .option('--retries <n>', 'try a target that failed on the network (or stalled) again up to n times in this run, with growing pauses (default 3)')
      .option('--remove-locks', 'forget the unfinished transfers to the given targets first, leaving the targets as they are (btrfs-backup); only when nothing unfinished is left there')
      .option('--take-over', "rsync: back up into a directory whose backups were made of another source (TARGET_IN_USE) because they are this source's under its old name: a renamed host or path")
      .option('--metrics-file <file>', 'after the run, write Prometheus metrics there for node_exporter\'s textfile collector (config: metrics_file)')
      .option('--transaction-log <file>', "append a line per snapshot created, sent and deleted, in btrbk's transaction log format (config: transaction_log)")
      .option('--log-json', 'print the progress events as JSON lines on stderr, for log collectors')
    hookOptions(priorityOptions(command))
    if (name === 'run') {
      command
        .option('--no-snapshot', 'take no new snapshot: send the ones the targets lack')
        .option('--no-transfer', 'send nothing: snapshot and prune only')
        .option('--preserve', "delete nothing in this run, whatever the retention says (btrbk's -p): neither snapshots, backups nor block revisions")
        .option('--preserve-snapshots', 'keep every source snapshot in this run (prune the targets only)')
        .option('--preserve-backups', 'keep every backup at the targets in this run (prune the source snapshots only)')
        .option('-b, --backup', "rsync to a daemon module: the backup stage alone (rsync-system-backup's -b); the module's post-xfer exec publishes and rotates (bbackup doctor rsyncd --server-side)")
    }
    command
      .addHelpText('after', EXAMPLES[name] ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions) => {
        if (name === 'snapshot') {
          const hooked = await asRsyncdHook('snapshot', source, targets, options)
          if (hooked !== undefined) return void (outcome = hooked)
        }
        outcome = (await withPriority(options)) ?? await runJobs(source, targets, options, stages)
      }))
  }
  jobCommand('run', 'the main job: snapshot, transfer to every target, prune', {})
  jobCommand('snapshot', 'take a source snapshot only (btrfs and block drivers)', { snapshot: true, transfer: false, prune: false })
  jobCommand('transfer', 'send what the targets lack, without a new snapshot or pruning', { snapshot: false, prune: false })

  // btrbk's archive: every backup on one disk that another lacks, copied there incrementally
  if (wanted('archive')) {
    sshClientOptions(program.command('archive'))
      .description("copy the backups in SOURCE (a backup disk, and its subdirectories) that TARGET lacks to TARGET, incrementally; btrfs (btrbk archive)")
      .argument('<source>', 'the directory that holds the backups (received backups, or a snapshot folder)')
      .argument('<target>', 'where the copies go: a directory on another btrfs filesystem; subdirectories of the source are mirrored there')
      .option('-n, --dry-run', 'send and delete nothing; print what would be sent')
      .option('--keep-backups <policy>', "which backups the target gets and keeps, in any spelling of run's --keep-backups (btrbk's archive_preserve; default: all)")
      .option('--time-zone <zone>', 'IANA zone whose days and weeks retention counts in (default: this host\'s)')
      .option('--max-delete <n>', 'how many backups of a family one prune may delete at the target; more deletes none. Default: half of them, at least 10; all: no limit')
      .option('--depth <n>', 'how many levels of subdirectories of the source are searched for backups (default 3; 0: the source alone)')
      .option('--exclude <pattern>', "leave out a directory ('host2', 'host?') or a family of backups ('tmp.*', 'host1/root.*'), relative to SOURCE; * and ? match no slash (btrbk's archive_exclude; repeatable)", collect)
      .option('--state-dir <dir>', 'where each family of backups keeps its lock and journal (default /var/lib/bbackup/jobs/archive-<id>, or ~/.local/state/... when not root; $BBACKUP_STATE_DIR/jobs/... when set)')
      .option('--wait [seconds]', 'wait for another archive of the same backups to finish instead of failing with exit 3')
      .option('--retries <n>', 'try again up to n times in this run when the network fails (default 3)')
      .addOption(new Option('--send-protocol <version>', 'send stream version (auto: 2 where both ends support it)').choices(['auto', '1', '2']))
      .addOption(new Option('--stream-compress <method>', 'compress streams that go from one host to another with zstd on both ends').choices(['zstd', 'none']))
      .option('--rate-limit <rate>', 'at most this many bytes a second, with k, m, g for KiB, MiB, GiB: 10m')
      .option('--ssh-sudo', 'ssh: run the remote commands with sudo -n (btrfs as a user that is not root)')
      .option('--sudo', 'as a user that is not root, run btrfs on this host through sudo -n (bbackup doctor prints the sudoers line)')
      .option('--json', 'print the result as JSON')
      .option('-v, --verbose', 'say more (repeat for more)', (_: string, previous: number) => previous + 1, 0)
      .option('-q, --quiet', 'print only errors and warnings')
      .addHelpText('after', EXAMPLES.archive ?? '')
      .action(async (source: string, target: string, options: CommonOptions & { depth?: string; timeZone?: string }) => {
        outcome = await runArchive(source, target, options)
      })
  }

  // rsync-system-backup's command line, on the rsync driver
  if (wanted('system-backup')) {
    const systemBackup = priorityOptions(diskOptions(jobOptions(program.command('system-backup')
      .description("rsync-system-backup's command: back up SOURCE (default /) to DEST without /dev, /proc, caches and the like; the stages -b, -s, -r alone or together (none: all three)")
      .argument('<paths...>', '[SOURCE] DEST: what to back up (default /) and where'))))
      .option('-b, --backup', 'the backup stage: copy the source (alone: to a daemon module whose post-xfer exec publishes)')
      .option('-s, --snapshot', 'the snapshot stage: publish the copy as a backup (with -b)')
      .option('-r, --rotate', "the rotate stage: retention (--keep-backups, default 'hourly=24 daily=7 weekly=4 monthly=always')")
      .option('-x <pattern>', "rsync-system-backup's spelling of --exclude (repeatable)", collect)
      .option('-n, --dry-run', 'run nothing that changes anything; print the commands that would run')
      .option('--force', 'run on a system that is not Linux (the built-in excludes are Linux\'s)')
      .option('-u, --no-sudo', 'as a user that is not root, run rsync as that user (by default it runs through sudo -n, as rsync-system-backup does)')
      .option('--disable-notifications', 'no desktop notifications (by default each desktop session on this host is told when the backup starts and ends, through notify-send)')
      .option('--wait [seconds]', 'wait for another run of the job to finish instead of failing with exit 3')
      .option('--retries <n>', 'try a target that failed on the network again up to n times in this run (default 3)')
    hookOptions(systemBackup)
      .addHelpText('after', EXAMPLES['system-backup'] ?? '')
      .action(async (paths: string[], options: CommonOptions & { rotate?: boolean; x?: string[]; force?: boolean; disableNotifications?: boolean }) => {
        const { systemBackupPlan, SYSTEM_BACKUP_POLICY } = await import('./system-backup.js')
        const plan = systemBackupPlan(paths, { ...options, platform: process.platform })
        if (plan.isErr()) return void (outcome = fail(plan.error, options))
        const { source, destination, stages } = plan.value
        const lowered = await withPriority(options)
        if (lowered !== undefined) return void (outcome = lowered)
        const withDefaults: CommonOptions = {
          ...options, driver: options.driver ?? 'rsync', systemExcludes: true, exclude: [...(options.exclude ?? []), ...(options.x ?? [])],
          keepBackups: options.keepBackups ?? options.numBackups ?? SYSTEM_BACKUP_POLICY, backup: stages.serverPublishes,
          // a system is read as root: a user that is not gets rsync through sudo unless -u
          sudo: options.sudo ?? process.getuid?.() !== 0,
        }
        // rsync-system-backup's desktop notifications: best effort, never in a dry run
        const notifying = options.disableNotifications !== true && options.dryRun !== true
        const { notifyDesktops } = await import('./notify.js')
        const what = `${source} to ${destination}`
        const started = Date.now()
        if (notifying) await notifyDesktops('System backups', `Starting backup of ${what}`, 'normal')
        outcome = stages.transfer
          ? await runJobs(source, [destination], withDefaults, { prune: stages.rotate })
          : await runPrune(source, [destination], withDefaults)
        const took = `${((Date.now() - started) / 1000).toFixed(1)} s`
        if (notifying) {
          await (diskMissing
            ? notifyDesktops('System backups', `Nothing backed up: the backup disk of ${destination} is not there`, 'normal')
            : outcome.code === EXIT.ok
              ? notifyDesktops('System backups', `Finished backup of ${what} in ${took}.`, 'normal')
              : notifyDesktops('System backups', `Backup of ${what} failed after ${took} (exit ${outcome.code})! Review the system logs for details.`, 'critical'))
        }
      })
  }

  if (wanted('prune')) {
    priorityOptions(diskOptions(jobOptions(program.command('prune').description('apply retention to the targets (and source snapshots)').argument('[source]').argument('[targets...]')))
      .option('-n, --dry-run', 'show what would be deleted and why, delete nothing')
      .option('--transaction-log <file>', "append a line per snapshot deleted, in btrbk's transaction log format (config: transaction_log)")
      .option('--log-json', 'print the deletions as JSON lines on stderr, for log collectors')
      .option('-b, --backup-dir <dir>', "block: expire the volume's revisions by its schedule now, without a backup")
      .option('--forget-target <location>', 'btrfs: a target gone for good (no longer in the job): forget the snapshot kept as its next parent and its unfinished transfers, so the source\'s retention prunes them (repeatable)', collect, []))
      .addHelpText('after', EXAMPLES.prune ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions & { backupDir?: string; forgetTarget?: string[] }) => {
        if (options.backupDir !== undefined) {
          if (source !== undefined) return void (outcome = fail(bbError('INVALID_OPTIONS', `prune -b takes no source or targets (${source})`, 'give the backup directory alone: bbackup prune -b DIR'), options))
          return void (outcome = { code: await blockPrune(io, options.backupDir, options) })
        }
        const hooked = await asRsyncdHook('prune', source, targets, options)
        if (hooked !== undefined) return void (outcome = hooked)
        outcome = (await withPriority(options)) ?? await runPrune(source, targets, options)
      }))
  }

  if (wanted('clean')) {
    diskOptions(jobOptions(program.command('clean').description("delete the unfinished copies that interrupted transfers left at the job's targets, also those the journal no longer records (btrbk clean)").argument('[source]').argument('[targets...]')))
      .option('-n, --dry-run', 'show what would be deleted, delete nothing')
      .addHelpText('after', EXAMPLES.clean ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions) => {
        const answers = await eachJob(source, targets, options, (job, signal) => clean(job, { dryRun: options.dryRun === true, signal }), (all) => renderClean(all.flat(), options.dryRun === true), true)
        const places = (answers ?? []).flat()
        if (options.json !== true) io.stderr(renderPlaceFailures(places, 'CLEANED'))
        if (places.some((p) => p.error !== undefined)) outcome = { code: placesExitCode(places.map((p) => p.error)) }
      }))
  }

  if (wanted('list')) {
    diskOptions(jobOptions(program.command('list').description('list the backups at each target').argument('[source]').argument('[targets...]')))
      .option('--sizes', "each backup's size on disk: rsync as rsnapshot du counts it (the newest in full, each older one by what no newer one shares); btrfs its exclusive bytes (btrfs filesystem du), what deleting it alone frees")
      .addHelpText('after', EXAMPLES.list ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions) => {
        // one place and no target: the backups kept there, or a btrfs source's own snapshots
        if (source !== undefined && targets.length === 0 && (options.rawTarget ?? []).length === 0 && (options.pipeTarget ?? []).length === 0) {
          outcome = await withPlaceDisk(source, targets, options, 'error', async () => {
            await listAlone(source, options)
            return outcome
          })
          return
        }
        // a place that cannot be listed (a disk not mounted) is named, the others listed all the same: exit 10
        const answers = await eachJob(source, targets, options, (job, signal) => list(job, { partial: true, sizes: options.sizes === true, ofJob: true, signal }), (lists) => lists.map(renderList).join(''), true)
        const lists = (answers ?? []).flat()
        if (options.json !== true) io.stderr(renderPlaceFailures(lists, 'LISTED'))
        if (lists.some((l) => l.error !== undefined || l.sizesError !== undefined)) outcome = { code: placesExitCode(lists.flatMap((l) => [l.error, l.sizesError])) }
      }))
  }

  if (wanted('diff')) {
    diskOptions(sshOptions(program.command('diff')))
      .description('what changed between two snapshots or backups (btrfs, rsync): files added, deleted, renamed, modified')
      .argument('<place>', 'a directory of backups, or a btrfs source or its snapshot folder; [user@]host:/path on another host')
      .argument('[snapshots...]', 'none: the newest against the one before it; one: that one against the one before it; two: FROM TO')
      .option('-p, --prefix <prefix>', "only the snapshots whose names start with this (where several sources' are kept)")
      .option('--json', 'print the result as JSON')
      .option('-v, --verbose', 'say more (repeat for more)', (_: string, previous: number) => previous + 1, 0)
      .addHelpText('after', EXAMPLES.diff ?? '')
      .action(async (place: string, names: string[], options: CommonOptions) => {
        outcome = await withPlaceDisk(place, [], options, 'error', () => runDiff(place, names, options))
      })
  }

  /**
   * status does not mount a job's backup disk (a monitor asks it often): a target that cannot be
   * read because the job's `mount` is not mounted says that, not that it does not exist.
   */
  const withDiskAbsent = async (s: JobStatus, spec: JobSpec | undefined): Promise<JobStatus> => {
    const mountPoint = spec?.mount
    if (mountPoint === undefined || s.targets.every((t) => t.reachable)) return s
    const { insideMountPoint, isMounted } = await import('@bb/transports/local')
    if ((await isMounted(mountPoint)).unwrapOr(true)) return s
    const absent = bbError('TARGET_UNAVAILABLE', `the backup disk ${mountPoint} is not mounted`, `the job's runs mount it (and bbackup list, prune, verify, diff, restore and doctor); to look by hand: mount ${mountPoint}`, { path: mountPoint })
    return { ...s, targets: s.targets.map((t) => (!t.reachable && insideMountPoint(mountPoint, t.at).isOk() ? { ...t, error: absent } : t)) }
  }

  if (wanted('status')) {
    jobOptions(program.command('status').description('newest backup and its age per target, pending transfers, the lock; with -b, the revisions of a block volume').argument('[source]').argument('[targets...]'))
      .option('-b, --backup-dir <dir>', 'block: the backup directory of a volume')
      .option('--check', 'a health check for monitoring: a verdict per job, exit 0 ok, 1 warning, 2 critical, 3 unknown (Nagios)')
      .option('--warn-age <age>', 'with --check: the newest backup older than this is a warning (default 26h; config: warn_age)')
      .option('--critical-age <age>', 'with --check: older than this is critical (default 50h; config: critical_age)')
      .addHelpText('after', EXAMPLES.status ?? '')
      .option('--unit-dir <dir>', "where the jobs' timers are (default /etc/systemd/system, or ~/.config/systemd/user when not root)")
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions & { backupDir?: string; check?: boolean; warnAge?: string; criticalAge?: string; unitDir?: string }) => {
        if (options.backupDir !== undefined) return void (outcome = { code: await blockStatus(io, options.backupDir, options) })
        // one place and no target: a directory of backups on its own (the backup server's view)
        const found = source !== undefined && targets.length === 0 && (options.rawTarget ?? []).length === 0 && (options.pipeTarget ?? []).length === 0
          ? await aloneAt(source, options, 'status')
          : undefined
        const targetsOnly = found === undefined ? {} : { only: 'target' as const }
        const jobsOf = (withBlock: boolean) => (found === undefined ? resolveJobs(source, targets, options, withBlock) : 'error' in found ? Promise.resolve(found) : resolveJobs(source, found.raw || source === undefined ? [] : [source], found.options))
        if (options.check === true) {
          const { checkHealth } = await import('./health-check.js')
          return void (outcome = { code: await checkHealth(io, await jobsOf(true), { ...options, ...targetsOnly }) })
        }
        const resolved = await jobsOf(false)
        if ('error' in resolved) return void (outcome = fail(resolved.error, options))
        // a job of the config: also its timer, where `bbackup schedule` wrote it
        const { defaultUnitDir } = await import('./schedule.js')
        const { timerOf } = await import('./schedule-command.js')
        const unitDir = options.unitDir === undefined ? defaultUnitDir(process.getuid?.() !== 0, process.env) : resolvePath(io.cwd, options.unitDir)
        const answers: (Omit<JobStatus, 'lock'> & { lock?: JobStatus['lock'] | null; schedule?: JobTimer | null })[] = []
        const texts: string[] = []
        for (const job of resolved.jobs) {
          const asked = await status(job, targetsOnly)
          if (asked.isErr()) return void (outcome = fail(asked.error, options))
          const s = await withDiskAbsent(asked.value, resolved.specOf.get(job))
          const spec = resolved.specOf.get(job)
          const name = spec?.name
          const timer = name === undefined ? undefined : await timerOf({ name, ...(spec?.groups === undefined ? {} : { groups: spec.groups }) }, unitDir)
          // a free lock is null in JSON (as `bbackup locks --json` says it), not left out; asked at the targets alone, it was not read
          answers.push({ ...s, ...(s.only === 'target' ? {} : { lock: s.lock ?? null }), ...(name === undefined ? {} : { schedule: timer ?? null }) })
          texts.push(renderStatus(s, name === undefined ? undefined : { job: name, timer }))
        }
        io.stdout(options.json === true ? `${JSON.stringify(answers.length === 1 ? answers[0] : answers, null, 2)}\n` : texts.join(''))
        if (answers.some((s) => s.targets.some((t) => !t.reachable || t.error !== undefined))) outcome = { code: EXIT.someTargetsFailed }
      }))
  }

  if (wanted('verify')) {
    diskOptions(jobOptions(program.command('verify').description('compare a backup with the source by checksum; with -b, check the chunks of block revisions').argument('[source]', 'the source; with -b: a revision (default all)').argument('[targets...]', 'the targets; with -b: more revisions')))
      .option('--snapshot <name>', 'the backup to verify (default: the newest)')
      .option('-b, --backup-dir <dir>', 'block: the backup directory of a volume; the arguments are revisions (uuid, 0 = newest, latest, a tag, all)')
      .option('--subset <k/n>', 'block: check only every n-th chunk, starting at the k-th; n runs with k = 1..n check everything once')
      .addHelpText('after', EXAMPLES.verify ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions & { snapshot?: string; backupDir?: string; subset?: string }) => {
        if (options.backupDir !== undefined) return void (outcome = { code: await blockVerify(io, options.backupDir, [...(source === undefined ? [] : [source]), ...targets], options) })
        const resolved = await resolveJobs(source, targets, options)
        if ('error' in resolved) return void (outcome = fail(resolved.error, options))
        // every target is checked, also after one that fails; the exit is the first failure's, else 1 for differences
        const answers: object[] = []
        let failed: BbError | undefined
        const stop = stopSignal()
        try {
          for (const job of resolved.jobs) {
            // none after Ctrl-C or a kill
            if (stop.signal.aborted) break
            const disk = await diskFor(localTargets(job), resolved.specOf.get(job), options, stop.signal, 'error')
            if ('code' in disk) return void (outcome = disk)
            for (const at of job.targets) {
              if (stop.signal.aborted) break
              const target = formatLocation(at.location)
              const r = await verify(job, { at, signal: stop.signal, ...(options.snapshot === undefined ? {} : { snapshot: options.snapshot }) })
              if (r.isErr()) {
                failed ??= r.error
                if (options.json === true) answers.push({ target, error: r.error })
                else io.stderr(renderError(r.error, (options.verbose ?? 0) > 0))
                continue
              }
              if (options.json === true) answers.push({ target, ...r.value })
              else {
                io.stdout(`${target.replace(/\/$/, '')}/${r.value.snapshot}: ${r.value.differenceCount === 0 ? 'no problem found' : `${r.value.differenceCount} ${r.value.differenceCount === 1 ? 'problem' : 'problems'}`}\n${r.value.differences.map((d) => `  ${onOneLine(d)}\n`).join('')}`)
                // what was checked, and what could not be
                io.stdout((r.value.notes ?? []).map((n) => `  note: ${n}\n`).join(''))
              }
              if (r.value.differenceCount > 0) outcome = { code: EXIT.error }
            }
            const released = await disk.release()
            if (released.isErr()) {
              failed ??= released.error
              io.stderr(renderError(released.error, (options.verbose ?? 0) > 0))
            }
          }
        } finally {
          stop.done()
        }
        // one target: its answer; several: one array of them
        if (options.json === true) io.stdout(`${JSON.stringify(answers.length === 1 ? answers[0] : answers, null, 2)}\n`)
        if (failed !== undefined) outcome = { code: exitCodeOf(failed) }
      }))
  }

  /** restore: a backup (or a block revision, with -b) copied to a new place */
  const restoreCommand = async (target: string | undefined, snapshot: string | undefined, destination: string | undefined, options: CommonOptions & { path?: string; writable?: boolean; backupDir?: string; force?: boolean }): Promise<void> => {
    if (options.backupDir !== undefined) {
      if (target === undefined || snapshot === undefined || destination !== undefined) {
        return void (outcome = fail(bbError('INVALID_OPTIONS', 'restore -b takes a revision and a destination', 'bbackup restore -b DIR REVISION DEST, e.g. bbackup restore -b /srv/backy/vm1 latest /tmp/vm1.img'), options))
      }
      const way = blockWayOf(options)
      if (way.isErr()) return void (outcome = fail(way.error, options))
      return void (outcome = { code: await blockRestore(io, options.backupDir, target, snapshot, options, { connections, ssh: sshSpecOf(options, io.cwd), way: way.value }) })
    }
    if (target === undefined || snapshot === undefined || destination === undefined) {
      return void (outcome = fail(bbError('INVALID_OPTIONS', 'restore takes where the backups are, which backup, and a destination', 'bbackup restore TARGET SNAPSHOT DEST, e.g. bbackup restore /mnt/backup/home latest /tmp/home'), options))
    }
    // Ctrl-C or a kill: the copy stops, and what it left unfinished at the destination goes, not this process alone
    const stop = stopSignal()
    try {
      await restoreBackup(target, snapshot, destination, options, stop.signal)
    } finally {
      stop.done()
    }
  }

  const restoreBackup = async (target: string, snapshot: string, destination: string, options: CommonOptions & { path?: string; writable?: boolean }, signal: AbortSignal): Promise<void> => {
    const at = await placeOf(target, options)
    if (at.isErr()) return void (outcome = fail(at.error, options))
    const detected = await detectBackupDriver(at.value)
    const driver = options.driver ?? detected.driver
    // stream files are read through their chain, not copied as they are
    const raw = driver === 'btrfs' && detected.raw
    const resolved = await resolveJobs(destination, raw ? [] : [target], { ...options, driver, prefix: options.prefix ?? '', ...(raw ? { rawTarget: [target] } : {}) })
    if ('error' in resolved) return void (outcome = fail(resolved.error, options))
    // how far the copy has come, redrawn in place on a terminal
    let progressShown = false
    const onProgress = io.isTTY && options.json !== true && options.quiet !== true
      ? (p: TransferProgress) => {
        io.stderr(`\r\x1b[K  ${progressLine(p)}`)
        progressShown = true
      }
      : undefined
    const restoreFrom = (job: Job, side: 'source' | 'target') => restore(job, {
      from: job.targets[0] as Job['source'], snapshot, to: job.source, ...(options.path === undefined ? {} : { subpath: options.path }),
      dryRun: options.dryRun === true, ...(options.writable === true ? { writable: true } : {}), anyPrefix: options.prefix === undefined, side, signal,
      ...(onProgress === undefined ? {} : { onProgress }),
    })
    // a btrfs subvolume that holds no backups is a source: its own snapshots are restored
    const job = resolved.jobs[0] as Job
    let r = await restoreFrom(job, driver === 'btrfs' && !detected.holdsBackups ? 'source' : 'target')
    // read-only subvolumes that were never received: a snapshot folder, read as a source's
    if (r.isErr() && r.error.code === 'SNAPSHOT_NOT_FOUND' && r.error.details?.newest === undefined && driver === 'btrfs' && !raw && detected.holdsBackups) {
      const folder = await resolveJobs(destination, [target], { ...options, driver, prefix: options.prefix ?? '', snapshotFolder: '.' })
      const fromFolder = 'error' in folder ? undefined : await restoreFrom(folder.jobs[0] as Job, 'source')
      // what was not found is said of the snapshots there, not as "run a backup first"
      if (fromFolder !== undefined && (fromFolder.isOk() || fromFolder.error.code !== 'SNAPSHOT_NOT_FOUND' || fromFolder.error.details?.newest !== undefined)) r = fromFolder
    }
    if (progressShown) io.stderr('\r\x1b[K')
    if (r.isErr()) return void (outcome = fail(r.error, options))
    io.stdout(options.json === true ? `${JSON.stringify(r.value, null, 2)}\n` : `${options.dryRun === true ? 'would restore' : 'restored'} ${r.value.snapshot}${options.path === undefined ? '' : `/${options.path.replace(/^\/+/, '')}`} to ${destination}\n`)
    if (options.writable === true && options.path === undefined && options.json !== true && options.dryRun !== true) {
      // what comes next, when the source is to be replaced: the read-only copy is the next backup's parent
      const restored = `${destination.replace(/\/+$/, '')}/${r.value.snapshot}`
      io.stdout(`to put it in the source's place: mv ${restored}.writable SOURCE (or btrfs subvolume snapshot ${restored} SOURCE); keep ${restored} until the next backup has run, which is incremental against it (docs/drivers/btrfs.md, "Swapping a restored backup in")\n`)
    }
  }

  if (wanted('restore')) {
    diskOptions(sshOptions(program.command('restore')))
      .description('copy a backup (or one path in it) to a new or empty directory; never overwrites')
      .argument('[target]', 'where the backups are (with -b: the revision)')
      .argument('[snapshot]', "the backup's name, or latest (with -b: the destination: a new file, a device with --force, ssh://host/path, a new RBD image rbd:POOL/IMAGE, or - for stdout)")
      .argument('[destination]', 'a directory that does not exist or is empty')
      .option('-b, --backup-dir <dir>', 'block: restore -b DIR REVISION DEST writes a revision to a new image file (or a device, with --force), here or on another host (host:/path), or to stdout (-)')
      .option('--force', 'block: write over a block device; restore a distrusted revision')
      .option('--path <path>', 'restore only this path inside the backup')
      .option('--writable', 'btrfs: also make a writable snapshot <name>.writable of the restored backup, ready to be moved into place')
      .option('-p, --prefix <prefix>', 'with latest: the newest backup of the source whose names start with this')
      .addOption(new Option('--driver <driver>', 'the driver that made the backups; detected from the target when omitted').choices(['rsync', 'btrfs']))
      .addOption(new Option('--stream-compress <method>', 'compress what crosses from or to another host: btrfs streams and block images with zstd on both ends, rsync with --compress').choices(['zstd', 'none']))
      .option('--rate-limit <rate>', 'at most this many bytes a second cross from or to another host, with k, m, g for KiB, MiB, GiB: 10m')
      .option('-n, --dry-run', 'print the command, change nothing')
      .option('--json', 'print the result as JSON')
      .addHelpText('after', EXAMPLES.restore ?? '')
      .action(async (target: string | undefined, snapshot: string | undefined, destination: string | undefined, options: CommonOptions & { path?: string; writable?: boolean; backupDir?: string; force?: boolean }) => {
        // --crypto and --mount: the backup disk the backups are on, made ready for the restore and let go of after it
        outcome = await withPlaceDisk(options.backupDir ?? target, [], options, 'error', async () => {
          await restoreCommand(target, snapshot, destination, options)
          return outcome
        })
      })
  }

  if (wanted('init')) {
    sshClientOptions(program.command('init'))
      .description("block: create the backup directory of a volume (backy's init)")
      .requiredOption('-b, --backup-dir <dir>', 'a new or empty directory on btrfs or XFS')
      .argument('<source>', 'the image file or block device to back up: a path, or [user@]host:/path on a host reached over ssh; or a Ceph RBD image, rbd:POOL/IMAGE[:conf=FILE][:id=USER]')
      .option('--chunk-size <size>', 'the unit of change detection (default 4M)')
      .option('--schedule <tags>', "tags as NAME=INTERVAL:KEEP (default 'daily=1d:7,weekly=1w:4,monthly=30d:3')")
      .option('--no-snapshot', 'never freeze the source: read it live (for a device nothing writes to during backups)')
      .option('--remote-helper <program>', "a source on another host: its bbackup-remote, which hashes there so that only changed chunks cross (default: bbackup-remote when found; 'none' streams the image)")
      .option('--json', 'print the result as JSON')
      .addHelpText('after', EXAMPLES.init ?? '')
      .action(async (source: string, options: CommonOptions & { backupDir: string; chunkSize?: string; schedule?: string; snapshot?: boolean; remoteHelper?: string; json?: boolean }) => {
        outcome = { code: await blockInit(io, options.backupDir, source, options, { connections, ssh: sshSpecOf(options, io.cwd) }) }
      })
  }

  if (wanted('distrust')) {
    program.command('distrust')
      .description('block: mark revisions distrusted: never a parent again, refused by restore without --force, until a clean verify')
      .argument('<revisions...>', 'a uuid (or a unique start of one), 0 for the newest, latest, a tag, or all')
      .requiredOption('-b, --backup-dir <dir>', 'the backup directory of the volume')
      .option('--json', 'print the result as JSON')
      .addHelpText('after', EXAMPLES.distrust ?? '')
      .action(async (revisions: string[], options: { backupDir: string; json?: boolean }) => {
        outcome = { code: await blockDistrust(io, options.backupDir, revisions, options) }
      })
  }

  if (wanted('backup')) {
    const backupCommand = sshClientOptions(program.command('backup'))
      .description('block: make a revision of the volume when its schedule says one is due (silent when not)')
      .requiredOption('-b, --backup-dir <dir>', 'the backup directory of the volume')
      .option('-f, --force', 'back up even when nothing is due')
      .option('-t, --tag <tag>', 'add a tag: a schedule tag, or manual:NAME, which never expires (repeatable)', collect)
      .option('--no-snapshot', 'read the source live, without freezing it (a warning in the report)')
      .option('--wait [seconds]', 'wait for another run on the volume to finish instead of failing with exit 3')
      .addOption(new Option('--stream-compress <method>', 'a source on another host: zstd-compress what crosses the network, when zstd is on both hosts (config: stream_compress)').choices(['zstd', 'none']))
      .option('--rate-limit <rate>', 'a source on another host: at most this many bytes a second cross the network, with k, m, g for KiB, MiB, GiB: 10m (config: rate_limit)')
      .option('--json', 'print the result as JSON')
      .option('-v, --verbose', 'say more (repeat for more)', (_: string, previous: number) => previous + 1, 0)
      .option('-q, --quiet', 'print only errors and warnings')
    hookOptions(priorityOptions(backupCommand))
      .addHelpText('after', EXAMPLES.backup ?? '')
      .action(async (options: CommonOptions & { backupDir: string; force?: boolean; tag?: string[]; snapshot?: boolean; wait?: string | boolean; json?: boolean; verbose?: number; quiet?: boolean }) => {
        const hookCommands = hookCommandsOf(options)
        if (hookCommands.isErr()) return void (outcome = fail(hookCommands.error, options))
        const way = blockWayOf(options)
        if (way.isErr()) return void (outcome = fail(way.error, options))
        outcome = (await withPriority(options)) ?? { code: await blockBackup(io, options.backupDir, { ...options, hookCommands: hookCommands.value }, { connections, ssh: sshSpecOf(options, io.cwd), way: way.value }) }
      })
  }

  if (wanted('schedule')) {
    program.command('schedule')
      .description('write (or print) a systemd .service and .timer that run a configured job, or the jobs of a group; --list, --remove')
      .argument('[job]', 'the name of a job in the config, or of a group of its jobs')
      .option('-c, --config <file>', `the config the timer's run reads (default ${DEFAULT_CONFIG})`)
      .option('--on-calendar <when>', 'when to run: a systemd OnCalendar expression (hourly, daily, "*-*-* 02:30")', 'daily')
      .option('--randomized-delay <seconds>', 'start up to this many seconds later (RandomizedDelaySec), so that many hosts do not start at once')
      .option('--user', 'units of your own user (systemctl --user), for a setup without root')
      .option('--unit-dir <dir>', 'where the units go (default /etc/systemd/system, or ~/.config/systemd/user with --user)')
      .option('--print', 'print the units instead of writing them')
      .option('--list', 'list the timers bbackup wrote')
      .option('--remove', 'remove the units of the job (only files bbackup wrote)')
      .addHelpText('after', EXAMPLES.schedule ?? '')
      .action(async (job: string | undefined, options: { config?: string; onCalendar: string; randomizedDelay?: string; user?: boolean; unitDir?: string; print?: boolean; list?: boolean; remove?: boolean }) => {
        const { defaultUnitDir } = await import('./schedule.js')
        const { listSchedules, removeSchedule, scheduleJob } = await import('./schedule-command.js')
        const user = options.user === true
        const unitDir = options.unitDir === undefined ? defaultUnitDir(user, process.env) : resolvePath(io.cwd, options.unitDir)
        const done = options.list === true
          ? await listSchedules(io, { unitDir })
          : job === undefined
            ? err(bbError('INVALID_OPTIONS', 'no job named', 'give the name of a job (or a group) in the config: bbackup schedule JOB --on-calendar hourly (or --list)'))
            : options.remove === true
              ? await removeSchedule(io, job, { unitDir, user })
              : await scheduleJob(io, job, {
                config: resolvePath(io.cwd, options.config ?? DEFAULT_CONFIG), onCalendar: options.onCalendar, user, unitDir, print: options.print === true,
                ...(options.randomizedDelay === undefined ? {} : { randomizedDelay: options.randomizedDelay }),
              })
        if (done.isErr()) outcome = fail(done.error, {})
      })
  }

  if (wanted('doctor')) {
    diskOptions(sshOptions(program.command('doctor')))
      .description('check a setup: every configured job (tools, filesystems, permissions, reachability, free space), an ssh location (and its authorized_keys line), or print an rsyncd.conf module')
      .argument('[what]', 'nothing: the jobs of the config; ssh://[user@]host[:port]/path or [user@]host:/path; or rsyncd')
      .option('-c, --config <file>', `without WHAT: the config whose jobs are checked (default ${DEFAULT_CONFIG})`)
      .option('-j, --job <name>', 'without WHAT: check only this job, or the jobs of this group (repeatable)', collect)
      .option('--role <roles>', 'ssh: what the key is for, comma-separated: receive (a target), send (a source), delete, list', 'receive')
      .option('--driver <driver>', 'ssh: check for this driver only (btrfs or rsync)')
      .option('--module <name>', 'rsyncd: the module\'s name', 'backups')
      .option('--path <dir>', 'rsyncd: the module\'s directory on the server', '/srv/backups')
      .option('--user <name>', 'rsyncd: the user of "auth users" (and the daemon\'s uid for the module)', 'bbackup')
      .option('--secrets-file <file>', 'rsyncd: the daemon\'s secrets file', '/etc/rsyncd.secrets')
      .option('--hosts-allow <hosts>', 'rsyncd: who may connect ("hosts allow")', '127.0.0.1')
      .option('--server-side', "rsyncd: the server publishes and rotates (rsync-system-backup's server-side mode): pre-xfer and post-xfer exec lines, for clients that run bbackup run -b")
      .option('--program <path>', 'rsyncd --server-side: where bbackup is on the server', '/usr/local/bin/bbackup')
      .option('--keep-backups <policy>', "rsyncd --server-side: the rotation of the post-xfer exec (default: rsync-system-backup's 'hourly=24 daily=7 weekly=4 monthly=always')")
      .addHelpText('after', EXAMPLES.doctor ?? '')
      .action(async (what: string | undefined, given: CommonOptions & { role: string; driver?: string; module: string; path: string; user: string; secretsFile: string; hostsAllow: string; serverSide?: boolean; program: string }) => {
        // `bbackup doctor home`: the job of that name, as -j home
        const named = what === 'rsyncd' ? { source: what, options: given } : asJobNames(what, [], given)
        if ('error' in named) return void (outcome = fail(named.error, given))
        const options = named.options
        what = named.source
        if (what === undefined) {
          const { driver: _, ...jobOptions } = options
          const resolved = await resolveJobs(undefined, [], jobOptions, true)
          if ('error' in resolved) return void (outcome = fail(resolved.error, {}))
          const { checkJob } = await import('@bb/core')
          const { findingLines } = await import('./doctor-ssh.js')
          let problems = 0
          const { cryptCommands, mountCommands, sudoersLine } = await import('@bb/transports/local')
          for (const job of resolved.jobs) {
            // the targets checked are those on the job's backup disk, made ready as a run does (a disk that is not there is a problem)
            const ready = await diskFor(localTargets(job), resolved.specOf.get(job), options, undefined, 'error')
            if ('code' in ready) problems++
            const findings = await checkJob(job)
            if (!('code' in ready)) {
              const released = await ready.release()
              if (released.isErr()) io.stderr(renderError(released.error, false))
            }
            problems += findings.filter((f) => !f.ok).length
            // the rule that --sudo needs, whether or not it is in place yet; with a backup disk to unlock and mount, those commands too
            const programs = sudoPrograms(job.driver.name)
            const { mount: mountPoint, crypto } = resolved.specOf.get(job) ?? {}
            const disk = [...(crypto === undefined ? [] : cryptCommands(crypto)), ...(mountPoint === undefined ? [] : mountCommands(resolvePath(io.cwd, mountPoint)))]
            const diskWhat = [...(crypto === undefined ? [] : [`the unlock and lock of ${crypto}`]), ...(mountPoint === undefined ? [] : [`the mount and umount of ${resolvePath(io.cwd, mountPoint)}`])].join(' and ')
            const what = `${programs.join(', ')}${diskWhat === '' ? '' : ` and ${diskWhat}`}`
            const sudo = resolved.specOf.get(job)?.sudo === true ? [`sudo: ${what} run${programs.length === 1 && disk.length === 0 ? 's' : ''} as root through sudo -n; /etc/sudoers.d/bbackup (visudo -f) needs:\n  ${sudoersLine([...programs, ...disk])}`] : []
            io.stdout([`job ${resolved.specOf.get(job)?.name ?? formatLocation(job.source.location)}:`, ...[...findingLines(findings), ...sudo].map((l) => `  ${l.replace(/\n/g, '\n  ')}`), ''].join('\n'))
          }
          for (const block of resolved.blockJobs) io.stdout(`job ${block.name}: a block volume; check it with bbackup status -b ${block.backupDir} and bbackup verify -b ${block.backupDir}\n\n`)
          io.stdout(problems === 0 ? 'no problem found\n' : `${problems} problem${problems === 1 ? '' : 's'} found\n`)
          return void (outcome = { code: problems === 0 ? EXIT.ok : EXIT.error })
        }
        if (what === 'rsyncd') {
          const { rsyncdModuleText } = await import('./doctor-rsyncd.js')
          const text = rsyncdModuleText({
            module: options.module, path: options.path, user: options.user, secretsFile: options.secretsFile, hostsAllow: options.hostsAllow,
            ...(options.serverSide === true ? { serverSide: { program: options.program, ...(options.keepBackups === undefined ? {} : { keepBackups: options.keepBackups }) } } : {}),
          })
          if (text.isErr()) return void (outcome = fail(text.error, {}))
          return void io.stdout(text.value)
        }
        const location = parseLocation(what, { cwd: io.cwd })
        if (location.isErr() || location.value.kind !== 'ssh') {
          return void (outcome = fail(bbError('UNSUPPORTED', `bbackup doctor checks the config's jobs (or one by its name), an ssh location, or prints an rsyncd module; ${JSON.stringify(what)} is none of them`, `give a job's name (the jobs of ${given.config ?? DEFAULT_CONFIG}, or -c FILE), ssh://[user@]host/path (or [user@]host:/path), or rsyncd`), {}))
        }
        const roles = options.role.split(',')
        const { ROLES } = await import('@bb/transports/ssh-filter')
        const badRole = roles.find((r) => !(ROLES as readonly string[]).includes(r))
        if (badRole !== undefined) return void (outcome = fail(bbError('INVALID_OPTIONS', `unknown role ${JSON.stringify(badRole)}`, 'give --role receive, send, delete or list (comma-separated)'), {}))
        if (options.driver !== undefined && options.driver !== 'btrfs' && options.driver !== 'rsync') {
          return void (outcome = fail(bbError('INVALID_OPTIONS', `bbackup doctor checks the btrfs and rsync drivers over ssh, not ${JSON.stringify(options.driver)}`, 'give --driver btrfs or --driver rsync (or leave it out)'), {}))
        }
        const ssh = sshSpecOf(options, io.cwd)
        const transport = await transportFor(location.value, { ssh }, connections)
        if (transport.isErr()) return void (outcome = fail(transport.error, {}))
        const { authorizedKeysLine, doctorSsh, renderFindings } = await import('./doctor-ssh.js')
        const input = {
          location: location.value, transport: transport.value, roles: roles as Role[], sudo: ssh.sudo === true,
          ...(options.driver === undefined ? {} : { driver: options.driver as 'btrfs' | 'rsync' }),
          ...(ssh.identityFile === undefined ? {} : { identityFile: ssh.identityFile }),
        }
        const findings = await doctorSsh(input)
        io.stdout(renderFindings(findings, await authorizedKeysLine(input), input.sudo))
        // a key that may still run anything is advice, not a failure
        outcome = { code: findings.some((f) => !f.ok && f.what !== 'restricted') ? EXIT.error : EXIT.ok }
      })
  }

  if (wanted('locks')) {
    jobOptions(program.command('locks').description('show who holds each job\'s lock').argument('[source]').argument('[targets...]'))
      .addHelpText('after', EXAMPLES.locks ?? '')
      .action(byJobName(async (source: string | undefined, targets: string[], options: CommonOptions) => {
        await eachJob(source, targets, options,
          (job) => job.state.transport.inspectLock(`${job.state.directory}/lock`).map((lock) => ({ job: job.state.directory, lock: lock ?? null })),
          (all) => all.map((l) => `${l.job}: ${l.lock === null ? 'free' : `${l.lock.verdict.stale ? 'stale' : 'held'}: ${l.lock.verdict.reason}`}\n`).join(''))
      }))
  }

  if (wanted('completion')) {
    program.command('completion')
      .description('print the shell completion script (bash, zsh or fish), made from these commands and options')
      .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh', 'fish']))
      .addHelpText('after', EXAMPLES.completion ?? '')
      .action(async (shell: Shell) => {
        const { completionScript } = await import('./completion.js')
        io.stdout(completionScript(shell, program))
      })
  }

  if (wanted('man')) {
    program.command('man')
      .description('print the manual page bbackup(1), made from these commands and options: bbackup man | man -l -')
      .action(async () => {
        const { manPage } = await import('./man-page.js')
        // SOURCE_DATE_EPOCH: a reproducible build's date
        const epoch = Number(process.env.SOURCE_DATE_EPOCH)
        const date = (Number.isFinite(epoch) && process.env.SOURCE_DATE_EPOCH !== '' ? new Date(epoch * 1000) : new Date()).toISOString().slice(0, 10)
        io.stdout(manPage(program, { version: VERSION, examples: EXAMPLES, date }))
      })
  }

  // a signal that ends this process (one no command winds down from, or a second one) leaves no ssh master running, nor its sockets
  const release = onSignalEnd(() => opened?.closeNow())
  try {
    await program.parseAsync(expanded.value, { from: 'user' })
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT.ok
      return EXIT.usage
    }
    if (e instanceof InternalError || e instanceof Error) {
      io.stderr(`bbackup: internal error, please report it (bbackup ${VERSION}): ${e.stack ?? e.message}\n`)
      return EXIT.internal
    }
    throw e
  } finally {
    await (await session)?.close()
    release()
  }
  return outcome.code
}
