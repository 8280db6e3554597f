import { createHash } from 'node:crypto'
import { basename, join, resolve } from 'node:path'
import { bbError, commandHook, defaultStateDir, formatLocation, jobId, parseLocation, parseSnapshotName, readJournal, statGiven, type BbError, type Job, type JobHooks, type Location, type Transport } from '@bb/core'
import type { SshSession } from '@bb/transports/ssh'
import { err, ok, type Result } from 'neverthrow'
import { HOOK_CONFIG_KEYS, type DriverChoice, type HookCommandPoint, type HookCommands, type JobSpec, type RsyncdSpec, type SshSpec } from './config.js'

/** Opens what remote locations need, once per CLI run; `main` closes it at the end. */
export interface Connections {
  ssh(): Promise<SshSession>
}

/** How a job reaches its locations: btrfs through sudo on this host, its ssh settings, and its rsync daemon settings. */
export interface RemoteSpec {
  /** local locations run the driver's commands as root through `sudo -n` ({@link sudoPrograms}) */
  readonly sudo?: boolean | undefined
  readonly ssh?: SshSpec | undefined
  readonly rsyncd?: RsyncdSpec | undefined
}

/**
 * A job's hook commands as the engine's hooks: each runs `/bin/sh -c` on this host, as the user that
 * runs bbackup, with `BBACKUP_JOB` (the job's name, when it has one) and the run's `BBACKUP_*`.
 */
export const commandHooks = async (commands: HookCommands, job: string | undefined): Promise<JobHooks> => {
  const { localTransport } = await import('@bb/transports/local')
  const on = localTransport('/')
  const env = job === undefined ? {} : { BBACKUP_JOB: job }
  const limit = commands.timeoutSeconds === undefined ? {} : { timeoutSeconds: commands.timeoutSeconds }
  return Object.fromEntries((Object.keys(HOOK_CONFIG_KEYS) as HookCommandPoint[]).flatMap((point) => {
    const command = commands[point]
    return command === undefined ? [] : [[point, commandHook(command, { on, env, ...limit })]]
  }))
}

/**
 * What runs as root through `sudo -n` on this host with `sudo`, by driver. btrfs: btrfs alone (the
 * file operations run as the user). rsync: rsync, which then reads every file and keeps owners, and
 * rm and mv, which remove and move the root-owned trees it made (a move and a removal go through
 * sudo only when the user may not make them). The rest runs as the user, who owns the target
 * directory.
 */
export const sudoPrograms = (driver: string | undefined): readonly string[] => (driver === 'rsync' ? ['rsync', 'rm', 'mv'] : ['btrfs'])

/**
 * The transport for a location: this host, another over ssh (one connection per host per run), or
 * an rsync daemon's module (directly, or through a port forwarded over ssh with `tunnel`).
 * Remote paths must be absolute: a path relative to the remote home is easy to get wrong. With
 * `sudo`, a local one runs the commands of `driver` through sudo ({@link sudoPrograms}).
 */
export const transportFor = async (location: Location, remote: RemoteSpec, connections: Connections, driver?: string): Promise<Result<Transport, BbError>> => {
  const ssh = remote.ssh
  switch (location.kind) {
    case 'local':
      return ok((await import('@bb/transports/local')).localTransport(location.path, remote.sudo === true ? { sudo: sudoPrograms(driver) } : {}))
    case 'ssh': {
      if (!location.path.startsWith('/')) {
        return err(bbError('INVALID_LOCATION', `the remote path ${JSON.stringify(location.path)} of ${formatLocation(location)} is relative`, `write it as an absolute path: ${location.user === undefined ? '' : `${location.user}@`}${location.host}:/${location.path.replace(/^\.\//, '')} or ssh://host/abs/path`))
      }
      const { sshTransport } = await import('@bb/transports/ssh')
      return ok(sshTransport(location, await connections.ssh(), ssh ?? {}))
    }
    case 'rsyncd': {
      const { rsyncdTransport } = await import('@bb/transports/rsyncd')
      const passwordFile = remote.rsyncd?.passwordFile
      const options = passwordFile === undefined ? {} : { passwordFile }
      const tunnel = remote.rsyncd?.tunnel
      if (tunnel === undefined) return ok(rsyncdTransport(location, options))
      const through = parseLocation(`ssh://${tunnel}/`)
      if (through.isErr() || through.value.kind !== 'ssh') {
        return err(bbError('INVALID_OPTIONS', `the tunnel ${JSON.stringify(tunnel)} is not [user@]host[:port]`, 'name the ssh host that can reach the daemon, e.g. --tunnel backup@nas or --tunnel nas:2222'))
      }
      // the daemon as the tunnel's host sees it: itself (its loopback) when they are the same host
      const daemonHost = location.host === through.value.host ? 'localhost' : location.host
      const connection = (await connections.ssh()).connection(through.value, ssh ?? {})
      const tunnelEnd = () => connection.forward(daemonHost, location.port ?? 873)
      // opened now, so that a tunnel that cannot be made fails the job before anything else; asked for again before each
      // connection to the daemon: after the ssh connection dropped, a retry gets a new one
      const forwarded = await tunnelEnd()
      if (forwarded.isErr()) return err(forwarded.error)
      return ok(rsyncdTransport(location, { ...options, tunnel: tunnelEnd }))
    }
  }
}

/**
 * What a source is, to pick a driver when none is named (DESIGN.md: detected from the source).
 * A source that cannot be read is left to the rsync driver's probe, which says what is wrong;
 * `unseen` says it here, for a setting that seems to belong to another driver only because the
 * source could not be looked at (a path mistyped, a disk not mounted, a host that refused).
 */
const detectDriver = async (source: Transport): Promise<{ readonly driver: DriverChoice; readonly directory: boolean; readonly unseen?: BbError }> => {
  const path = source.location.path
  const seen = await statGiven(source, path, 'source')
  if (seen.isErr()) return { driver: 'rsync', directory: false, unseen: seen.error }
  const s = seen.value
  if (s === undefined) return { driver: 'rsync', directory: false, unseen: bbError('SOURCE_UNAVAILABLE', `the source ${path} does not exist`, 'check the path (is the filesystem mounted?)', { path }) }
  // a file or a device: an image to back up as blocks
  if (s.kind === 'file' || s.kind === 'other') return { driver: 'block', directory: false }
  // a btrfs subvolume's root directory has inode 256
  return { driver: s.kind === 'directory' && s.inode === 256 ? 'btrfs' : 'rsync', directory: s.kind === 'directory' }
}

/**
 * Which driver made the backups in a target directory: rsync keeps its records in `.bbackup/`
 * (`NAME.json`, and `NAME.partial` while one is unfinished; the directory alone says nothing);
 * btrfs backups are subvolumes (inode 256), or stream files with sidecars (a raw target); plain
 * directories named as backups by another tool, without records, are rsync's to adopt.
 * Undefined when it holds none.
 */
const heldDriver = async (target: Transport): Promise<{ readonly driver: DriverChoice; readonly raw: boolean } | undefined> => {
  const dir = target.location.path
  const records = (await target.list(join(dir, '.bbackup'))).unwrapOr([])
  if (records.some((e) => e.kind === 'file' && /\.(json|partial)$/.test(e.name))) return { driver: 'rsync', raw: false }
  const entries = (await target.list(dir)).unwrapOr([])
  const { isRawSidecar } = await import('@bb/drivers/btrfs')
  if (entries.some((e) => e.kind === 'file' && isRawSidecar(e.name))) return { driver: 'btrfs', raw: true }
  let plain = false
  for (const e of entries) {
    if (e.kind !== 'directory' || parseSnapshotName(e.name) === undefined) continue
    if ((await target.stat(join(dir, e.name))).unwrapOr(undefined)?.inode === 256) return { driver: 'btrfs', raw: false }
    plain = true
  }
  // plain directories named as backups, with no records yet: another tool's (rsync-system-backup's), which rsync adopts
  return plain ? { driver: 'rsync', raw: false } : undefined
}

/**
 * Which driver made the backups in a directory, for restore and list; a btrfs subvolume that holds
 * none is a source (btrfs), anything else rsync.
 */
export const detectBackupDriver = async (target: Transport): Promise<{ readonly driver: DriverChoice; readonly raw: boolean; readonly holdsBackups: boolean }> => {
  const held = await heldDriver(target)
  if (held !== undefined) return { ...held, holdsBackups: true }
  // a subvolume that holds no backups: a btrfs source, whose own snapshots restore and list read
  return { driver: (await target.stat(target.location.path)).unwrapOr(undefined)?.inode === 256 ? 'btrfs' : 'rsync', raw: false, holdsBackups: false }
}

/**
 * A driver detected from the source must be the one whose backups a target on this host holds: a
 * source that is a plain directory where a subvolume was meant (or the other way round) would put
 * backups of another kind beside them.
 */
const sameKindAsTargets = async (source: string, detected: DriverChoice, targets: readonly Transport[]): Promise<Result<void, BbError>> => {
  for (const target of targets) {
    if (target.location.kind !== 'local') continue
    const held = await heldDriver(target)
    if (held === undefined || held.driver === detected) continue
    const why = detected === 'rsync' ? `${source} is not a btrfs subvolume, so it would be copied with rsync` : `${source} is a btrfs subvolume, so it would be sent with btrfs send`
    return err(bbError('INVALID_OPTIONS', `${target.location.path} holds backups made by the ${held.driver} driver, but ${why}`,
      `check the source and the target; to put ${detected} backups there anyway, name the driver: --driver ${detected}`, { path: target.location.path }))
  }
  return ok(undefined)
}

/**
 * A job without the defaults of the config's top level that its driver has no use for: a default
 * `keep_snapshots` is for the btrfs jobs, `exclude` for the rsync jobs, the `raw_*` settings for the
 * jobs with raw targets. The job's own settings are all kept (and refused when they do not apply).
 */
const applicable = (spec: JobSpec, driver: DriverChoice): JobSpec => {
  const inherited = new Set(spec.inherited ?? [])
  if (inherited.size === 0) return spec
  const field = (key: string): string => key.replace(/_(\w)/g, (_, c: string) => c.toUpperCase())
  const unused = [
    ...(driver === 'btrfs' ? [] : ['keep_snapshots', 'snapshot_folder', 'snapper', 'snapshot_create', 'incremental', 'send_protocol', 'compressed_data']),
    ...(driver === 'btrfs' && (spec.rawTargets ?? []).length > 0 ? [] : ['raw_compress', 'raw_encrypt', 'raw_gpg_recipients', 'raw_gpg_keyring', 'raw_full_every']),
    ...(driver === 'rsync' ? [] : ['system_excludes', 'exclude', 'exclude_from', 'rsync_options']),
  ].filter((key) => inherited.has(key))
  const kept: Record<string, unknown> = { ...spec }
  // (the rsync filters are lists, empty when not given)
  for (const key of unused) kept[field(key)] = ['exclude', 'exclude_from', 'rsync_options'].includes(key) ? [] : undefined
  return Object.fromEntries(Object.entries(kept).filter(([, value]) => value !== undefined)) as unknown as JobSpec
}

const blockVolumeOnly = (source: string): BbError =>
  bbError('UNSUPPORTED', `${source} is an image file or device: it is backed up as a block volume, with its own backup directory, not by run/snapshot/transfer`,
    `create the volume once with bbackup init -b DIR ${source}, then run bbackup backup -b DIR (docs/drivers/block.md)`)

/**
 * Turns a job spec into an engine Job. Drivers and transports are imported here, when a command
 * runs, so that `bbackup --help` loads none of them.
 */
export const buildJob = async (given: JobSpec, options: { readonly configStateDir?: string; readonly cwd: string; readonly connections: Connections }): Promise<Result<Job, BbError>> => {
  const source = parseLocation(given.source, { cwd: options.cwd })
  if (source.isErr()) return err(source.error)
  const seen = await transportFor(source.value, given, options.connections, given.driver)
  if (seen.isErr()) return err(seen.error)
  const detected = given.driver === undefined ? await detectDriver(seen.value) : undefined
  const driverName = given.driver ?? detected?.driver ?? 'rsync'
  const spec = applicable(given, driverName)
  /** a setting of another driver than the detected one; where the source was not seen, what kept it from view */
  const mismatch = (e: BbError): Result<Job, BbError> => err(detected?.unseen ?? e)
  // with sudo, a local source runs the commands of the driver it turned out to need
  const sourceTransport = spec.driver === undefined && spec.sudo === true && source.value.kind === 'local' ? await transportFor(source.value, spec, options.connections, driverName) : seen
  if (sourceTransport.isErr()) return err(sourceTransport.error)
  const targetTransports: Transport[] = []
  const rawTargets: string[] = []
  for (const [i, t] of [...spec.targets, ...(spec.rawTargets ?? [])].entries()) {
    const parsed = parseLocation(t, { cwd: options.cwd })
    if (parsed.isErr()) return err(parsed.error)
    const made = await transportFor(parsed.value, spec, options.connections, driverName)
    if (made.isErr()) return err(made.error)
    targetTransports.push(made.value)
    if (i >= spec.targets.length) rawTargets.push(formatLocation(parsed.value))
  }
  if (driverName === 'block') return err(blockVolumeOnly(spec.source))
  // (a source that is not there is left to the probe, which says so)
  if (detected?.directory === true) {
    const same = await sameKindAsTargets(formatLocation(source.value), driverName, targetTransports.slice(0, spec.targets.length))
    if (same.isErr()) return err(same.error)
  }
  if (rawTargets.length > 0 && driverName !== 'btrfs') {
    return mismatch(bbError('INVALID_OPTIONS', `raw targets (${rawTargets.join(', ')}) keep btrfs send streams, but ${spec.source} is backed up by the ${driverName} driver`,
      'raw targets are for btrfs sources (a subvolume, or --driver btrfs); give an ordinary target for this one'))
  }
  if (spec.serverPublishes === true && driverName !== 'rsync') {
    return err(bbError('INVALID_OPTIONS', `-b (the backup stage alone) leaves publishing to an rsync daemon's post-xfer exec, but ${spec.source} is backed up by the ${driverName} driver`,
      'drop -b: the btrfs driver publishes and rotates its backups itself'))
  }
  // a snapshot is the whole subvolume: an exclude there would be a promise not kept
  const filters = [...spec.exclude.map((e) => `--exclude ${e}`), ...spec.excludeFrom.map((e) => `--exclude-from ${e}`), ...spec.rsyncOptions.map((o) => `--rsync-option ${o}`)]
  if (filters.length > 0 && driverName !== 'rsync') {
    return mismatch(bbError('INVALID_OPTIONS', `${filters.join(', ')}: rsync settings, but ${spec.source} is backed up by the ${driverName} driver, which copies all of it`,
      driverName === 'btrfs' ? 'leave them out; to keep a directory out of the snapshots, make it a subvolume of its own (btrfs subvolume create): a snapshot does not take nested subvolumes'
        : 'leave them out, or back the directory up with --driver rsync', { path: spec.source }))
  }
  // settings of btrfs source snapshots and send streams, which another driver has not: left unread, a
  // --keep-snapshots meant as the backups' retention would let the target fill up
  const btrfsOnly = [
    ...(spec.keepSnapshots === undefined ? [] : ['--keep-snapshots (keep_snapshots)']),
    ...(spec.snapshotFolder === undefined ? [] : ['--snapshot-folder (snapshot_folder)']),
    ...(spec.snapper === true ? ['--snapper (snapper)'] : []),
    ...(spec.snapshotCreate === undefined ? [] : ['--snapshot-create (snapshot_create)']),
    ...(spec.incremental === undefined ? [] : ['--incremental (incremental)']),
    ...(spec.sendProtocol === undefined ? [] : ['--send-protocol (send_protocol)']),
    ...(spec.compressedData === false ? ['--no-compressed-data (compressed_data)'] : []),
  ]
  if (btrfsOnly.length > 0 && driverName !== 'btrfs') {
    return mismatch(bbError('INVALID_OPTIONS', `${btrfsOnly.join(', ')}: ${btrfsOnly.length === 1 ? 'a btrfs setting' : 'btrfs settings'}, but ${spec.source} is backed up by the ${driverName} driver, which keeps no source snapshots and sends no streams`,
      `leave ${btrfsOnly.length === 1 ? 'it' : 'them'} out${spec.keepSnapshots === undefined ? '' : `; the retention of the ${driverName} driver's backups is --keep-backups (keep_backups)`}`, { path: spec.source }))
  }
  if (spec.snapper === true && spec.snapshotCreate === 'onchange') {
    return err(bbError('INVALID_OPTIONS', '--snapshot-create onchange (snapshot_create) decides when bbackup takes a snapshot, but with --snapper (snapper) snapper takes them: a run already takes over only a snapshot newer than the last',
      'leave --snapshot-create out; snapper\'s own settings say when it takes one', { path: spec.source }))
  }
  if (spec.systemExcludes === true && driverName !== 'rsync') {
    return mismatch(bbError('INVALID_OPTIONS', `the system excludes are rsync filters, but ${spec.source} is backed up by the ${driverName} driver`, 'use --driver rsync for a system backup, or drop --system-excludes (system_excludes)'))
  }
  // before anything runs (the driver's probe would fail the target, exit 10)
  if (spec.serverPublishes === true) {
    const publishing = (await import('@bb/drivers/rsync')).serverCanPublish(targetTransports)
    if (publishing.isErr()) return err(publishing.error)
  }
  const pipeCommands = spec.pipeTargets ?? []
  if (pipeCommands.length > 0 && driverName !== 'btrfs') {
    return mismatch(bbError('INVALID_OPTIONS', `pipe targets get btrfs send streams, but ${spec.source} is backed up by the ${driverName} driver`,
      'pipe targets are for btrfs sources (a subvolume, or --driver btrfs); give an ordinary target for this one'))
  }
  // btrfs snapshots live with the source: jobs of one source share its lock, journal and pins, whatever their targets
  const id = spec.name ?? jobId(sourceTransport.value, driverName === 'btrfs' ? [] : targetTransports)
  const stateDirectory = spec.stateDir !== undefined ? resolve(options.cwd, spec.stateDir) : (options.configStateDir === undefined ? defaultStateDir(id) : join(options.configStateDir, 'jobs', id))
  // a pipe target's ledger (what its command took) is the job's, in its state directory, one per command
  const pipes = pipeCommands.map((command) => ({ ledger: join(stateDirectory, 'pipes', createHash('sha256').update(command).digest('hex').slice(0, 12)), command }))
  const fullEvery = spec.rawFullEvery === undefined ? {} : { fullEvery: spec.rawFullEvery }
  const recipients = spec.rawGpgRecipients ?? []
  if (spec.rawEncrypt !== 'gpg' && (recipients.length > 0 || spec.rawGpgKeyring !== undefined)) {
    return err(bbError('INVALID_OPTIONS', `gpg ${recipients.length > 0 ? 'recipients are' : 'a keyring is'} given, but the stream files are not encrypted`, 'add --raw-encrypt gpg (raw_encrypt = "gpg"), or leave the gpg settings out'))
  }
  if (spec.rawEncrypt === 'gpg' && recipients.length === 0) {
    return err(bbError('INVALID_OPTIONS', 'encrypted stream files need a gpg recipient: nobody could decrypt them', 'name the public key to encrypt to: --raw-gpg-recipient KEY (raw_gpg_recipients = ["KEY"])'))
  }
  if (spec.rawEncrypt === 'gpg' && rawTargets.length === 0) {
    return err(bbError('INVALID_OPTIONS', '--raw-encrypt gpg encrypts the stream files of raw targets, and this job has none', 'add --raw-target DIR, or leave --raw-encrypt out (a pipe target\'s command can encrypt by itself)'))
  }
  const encrypt = spec.rawEncrypt === 'gpg'
    ? { encrypt: { method: 'gpg' as const, recipients, ...(spec.rawGpgKeyring === undefined ? {} : { keyring: resolve(options.cwd, spec.rawGpgKeyring) }) } }
    : {}
  const way = { ...(spec.streamCompress === undefined ? {} : { streamCompress: spec.streamCompress }), ...(spec.rateLimit === undefined ? {} : { rateLimit: spec.rateLimit }) }
  const [{ localTransport }, driver] = await Promise.all([
    import('@bb/transports/local'),
    driverName === 'btrfs'
      ? import('@bb/drivers/btrfs').then(({ btrfsDriver }) => btrfsDriver({
        ...(spec.snapshotFolder === undefined ? {} : { snapshotFolder: spec.snapshotFolder }),
        ...(spec.snapper === true ? { snapper: true } : {}),
        ...(spec.snapshotCreate === undefined ? {} : { snapshotCreate: spec.snapshotCreate }),
        ...(spec.incremental === undefined ? {} : { incremental: spec.incremental }),
        ...(spec.sendProtocol === undefined ? {} : { sendProtocol: spec.sendProtocol }),
        ...(spec.compressedData === undefined ? {} : { compressedData: spec.compressedData }),
        ...way,
        ...(pipes.length === 0 ? {} : { pipe: { targets: pipes, ...fullEvery } }),
        ...(rawTargets.length === 0 ? {} : {
          raw: { targets: rawTargets, ...(spec.rawCompress === undefined ? {} : { compress: spec.rawCompress }), ...fullEvery, ...encrypt },
        }),
      }))
      : import('@bb/drivers/rsync').then(({ rsyncDriver, SYSTEM_EXCLUDES }) => rsyncDriver({
        ...(spec.systemExcludes === true ? { absoluteExcludes: SYSTEM_EXCLUDES } : {}),
        excludes: spec.exclude, excludeFrom: spec.excludeFrom.map((p) => resolve(options.cwd, p)), oneFileSystem: spec.oneFileSystem, acceptPartial: spec.acceptPartial, extraArgs: spec.rsyncOptions, ...way,
        // rsync through sudo is root: it keeps owners, hard links, ACLs and xattrs as it would for root
        ...(spec.sudo === true ? { preserveAll: true } : {}),
        ...(spec.serverPublishes === true ? { serverPublishes: true } : {}),
      })),
  ])
  // several sources can share a target: btrfs names say whose they are (btrbk does the same)
  const prefix = spec.prefix ?? (driverName === 'btrfs' ? `${basename(sourceTransport.value.location.path) || 'root'}.` : undefined)
  return ok({
    driver,
    source: sourceTransport.value,
    targets: [...targetTransports, ...pipes.map((p) => localTransport(p.ledger))],
    state: { transport: localTransport(stateDirectory), directory: stateDirectory },
    ...(prefix === undefined ? {} : { prefix }),
    ...(spec.hooks === undefined ? {} : { hooks: await commandHooks(spec.hooks, spec.name) }),
    retention: {
      ...(spec.keepBackups === undefined ? {} : { target: spec.keepBackups }),
      ...(spec.keepSnapshots === undefined ? {} : { source: spec.keepSnapshots }),
      // snapper keeps the history at the source: of the snapshots taken over, the newest (and what a target still needs)
      ...(spec.keepSnapshots === undefined && spec.snapper === true && driverName === 'btrfs' ? { source: { keepLast: 1 } } : {}),
      ...(spec.timeZone === undefined ? {} : { timeZone: spec.timeZone }),
      ...(spec.maxDelete === undefined ? {} : { maxDelete: spec.maxDelete }),
    },
  })
}

/**
 * btrfs-backup's `--locked-dests`: the job's targets plus every target the journal has a pending
 * transfer to, so that each is retried. Only an ordinary target can be added so: a raw or pipe
 * target's pending transfer (its unfinished copy is not where the driver puts one at an ordinary
 * target) needs the target given as such (`--raw-target`, `--pipe-target`), and is left out with
 * a warning.
 */
export const withJournalledTargets = async (job: Job, remote: RemoteSpec, connections: Connections): Promise<Result<{ readonly job: Job; readonly skipped: readonly string[] }, BbError>> => {
  const journal = await readJournal(job.state.transport, join(job.state.directory, 'journal.json'))
  if (journal.isErr()) return err(journal.error)
  const known = new Set(job.targets.map((t) => formatLocation(t.location)))
  const added: Transport[] = []
  const skipped: string[] = []
  for (const entry of journal.value.entries) {
    if (known.has(entry.target)) continue
    known.add(entry.target)
    const location = parseLocation(entry.target, { cwd: '/' })
    if (location.isErr()) return err(location.error)
    const made = await transportFor(location.value, remote, connections, job.driver.name)
    if (made.isErr()) return err(made.error)
    // where the driver would put its unfinished copy at an ordinary target of that location
    if (entry.partialPath !== job.driver.partialPath({ target: made.value, snapshot: entry.snapshot })) {
      skipped.push(`the pending transfer of ${entry.snapshot} to ${entry.target} is to a raw or pipe target: retry it by naming that target (--raw-target ${entry.target}, or the pipe command with --pipe-target)`)
      continue
    }
    added.push(made.value)
  }
  return ok({ job: { ...job, targets: [...job.targets, ...added] }, skipped })
}

/** a prefix to suggest: a job's name and a dot, for the first of the jobs whose name is not its prefix already */
const renamed = (prefix: string, names: readonly string[]): string => {
  const name = names.find((n) => `${n}.` !== prefix) ?? names[0] ?? 'job'
  return `in [jobs.${name}]: prefix = "${name}."`
}

/**
 * Two jobs of a config that would keep their backups (or btrfs source snapshots) in one place under
 * one name prefix: each one's retention would take the other's for its own and delete them, and a
 * btrfs job would lose the parent of its next incremental. btrbk refuses such a config ("will create
 * same backup target"); so does bbackup, before anything runs. The error names both jobs and the place.
 */
export const sharedPlaces = (jobs: readonly { readonly job: Job; readonly spec: JobSpec; readonly selected?: boolean }[]): BbError | undefined => {
  const seen = new Map<string, { readonly name: string; readonly selected: boolean }>()
  for (const { job, spec, selected = true } of jobs) {
    const name = spec.name ?? formatLocation(job.source.location)
    const prefix = job.prefix ?? ''
    const places = [
      ...job.targets.map((t) => ({ where: formatLocation(t.location), what: 'backups' })),
      // btrfs: the source's snapshot folder
      ...(job.driver.snapshotsSource
        ? [{ where: formatLocation({ ...job.source.location, path: resolve(job.source.location.path, spec.snapshotFolder ?? (spec.snapper === true ? '.bbackup-snapshots' : '.snapshots')) }), what: 'source snapshots' }]
        : []),
    ]
    for (const { where, what } of new Map(places.map((p) => [p.where, p])).values()) {
      const key = `${where}\0${prefix}`
      const other = seen.get(key)
      // a clash between two jobs this command does not run is theirs to report
      if (other !== undefined && other.name !== name && (other.selected || selected)) {
        return bbError('INVALID_OPTIONS', `jobs ${other.name} and ${name} both keep their ${what} in ${where} ${prefix === '' ? 'under names without a prefix' : `as ${prefix}*`}: each one's retention would delete the other's`,
          `give one of them its own prefix (${renamed(prefix, [name, other.name])}) or its own ${what === 'backups' ? 'target' : 'snapshot_folder'}`, { path: where })
      }
      if (other === undefined || selected) seen.set(key, { name, selected })
    }
  }
  return undefined
}
