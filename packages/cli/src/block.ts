import { bbError, formatLocation, parseLocation, progressMeter, type BackupEvent, type BackupReport, type BbError, type JobRun, type Location, type TransferProgress, type Transport } from '@bb/core'
import type { BlockBackupReport, BlockExpireReport, BlockSource, BlockVerifyReport, Revision, VolumeStatus } from '@bb/drivers/block'
import { localTransport } from '@bb/transports/local'
import { err, ok, type Result } from 'neverthrow'
import { commandHooks, transportFor, type Connections } from './build-job.js'
import type { HookCommands, SshSpec, WaySpec } from './config.js'
import { waitSecondsOf } from './duration.js'
import { EXIT, exitCodeOf } from './exit-codes.js'
import { count, formatBytes, hookLines, progressLine, renderError, type Io } from './render.js'
import { stopSignal } from './stop-signal.js'

/** backy's spelling for block volumes: `init -b`, `backup -b`, `status -b`, `verify -b`, `restore -b` (docs/drivers/block.md). */
export interface BlockCliOptions {
  readonly json?: boolean
  readonly verbose?: number
  readonly quiet?: boolean
}

/** How a source (or a restore's destination) on another host is reached: the run's ssh session, the ssh settings, and the way its bytes cross. */
export interface BlockRemote {
  readonly connections: Connections
  readonly ssh: SshSpec
  /** `--stream-compress`, `--rate-limit` (config: stream_compress, rate_limit) */
  readonly way?: WaySpec
}

const block = () => import('@bb/drivers/block')

/** The transport of a place on another host (over ssh: a source, a restore's destination); none for a path on this host or an RBD image (rbd runs here). */
const hostOf = async (where: Location | BlockSource, remote: BlockRemote): Promise<{ readonly host?: Transport } | { readonly error: BbError }> => {
  if (where.kind === 'local' || where.kind === 'rbd') return {}
  const t = await transportFor(where, { ssh: remote.ssh }, remote.connections)
  return t.isErr() ? { error: t.error } : { host: t.value }
}

/**
 * A volume's directory (`-b DIR`): a path on this host. Its revisions are reflink copies on this
 * host's disk; a location on another host is refused, not taken as a local name (`./root@kvm1:/…`).
 */
const volumeAt = (io: Io, dir: string): Result<Transport, BbError> => {
  const where = parseLocation(dir, { cwd: io.cwd })
  if (where.isErr()) return err(where.error)
  if (where.value.kind !== 'local') {
    return err(bbError('INVALID_OPTIONS', `the backup directory ${dir} is on another host: a volume's revisions are kept on the disk of the host that runs bbackup`,
      'run bbackup on the backup server with -b a path there; the source may be on another host (bbackup init -b /srv/backy/vm1 root@kvm1:/var/lib/libvirt/images/vm1.img)', { value: dir }))
  }
  return ok(localTransport(where.value.path))
}

const fail = (io: Io, error: BbError, options: BlockCliOptions): number => {
  if (options.json === true) io.stdout(`${JSON.stringify({ error }, null, 2)}\n`)
  else io.stderr(renderError(error, (options.verbose ?? 0) > 0))
  return exitCodeOf(error)
}

const print = (io: Io, options: BlockCliOptions, value: unknown, text: () => string): void => {
  io.stdout(options.json === true ? `${JSON.stringify(value, null, 2)}\n` : text())
}

const waitOption = (wait: string | boolean | undefined): Result<{ waitSeconds?: number }, BbError> =>
  waitSecondsOf(wait).map((seconds) => (seconds === undefined ? {} : { waitSeconds: seconds }))

const utc = (iso: string): string => `${iso.slice(0, 10)} ${iso.slice(11, 19)}`
const short = (uuid: string): string => uuid.slice(0, 8)

export const blockInit = async (io: Io, dir: string, source: string, options: BlockCliOptions & { chunkSize?: string; schedule?: string; snapshot?: boolean; remoteHelper?: string }, remote: BlockRemote): Promise<number> => {
  const { formatBlockSource, initVolume, isRbdSource, parseRbdSource, parseSchedule, parseSize } = await block()
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const where: Result<BlockSource, BbError> = isRbdSource(source) ? parseRbdSource(source) : parseLocation(source, { cwd: io.cwd })
  if (where.isErr()) return fail(io, where.error, options)
  const host = await hostOf(where.value, remote)
  if ('error' in host) return fail(io, host.error, options)
  const chunkSize = options.chunkSize === undefined ? undefined : parseSize(options.chunkSize)
  if (chunkSize === undefined && options.chunkSize !== undefined) {
    return fail(io, bbError('INVALID_OPTIONS', `--chunk-size ${options.chunkSize} is not a size`, 'give bytes with K, M or G, e.g. --chunk-size 4M'), options)
  }
  const schedule = options.schedule === undefined ? undefined : parseSchedule(options.schedule)
  if (schedule?.isErr() === true) return fail(io, schedule.error, options)
  const r = await initVolume({
    at: at.value, source: formatBlockSource(where.value), ...(host.host === undefined ? {} : { sourceHost: host.host }),
    ...(chunkSize === undefined ? {} : { chunkSize }), ...(schedule === undefined ? {} : { schedule: schedule._unsafeUnwrap() }),
    ...(options.snapshot === false ? { snapshot: 'none' as const } : {}), ...(options.remoteHelper === undefined ? {} : { remoteHelper: options.remoteHelper }),
  })
  if (r.isErr()) return fail(io, r.error, options)
  const { formatSchedule } = await block()
  print(io, options, r.value, () => `initialised ${at.value.location.path} for ${r.value.source}: chunks of ${formatBytes(r.value.chunkSize)}, schedule ${formatSchedule(r.value.schedule)}\n`)
  return EXIT.ok
}

const renderBackup = (report: Extract<BlockBackupReport, { skipped: false }>, verbosity: number): string => {
  const { revision: r } = report
  const s = r.stats
  const rate = s.hashSeconds > 0 ? `, hashing at ${formatBytes(s.bytesHashed / s.hashSeconds)}/s per thread (${s.threads} threads)` : ''
  const lines = [
    `revision ${r.uuid} (${r.tags.join(', ')}): ${r.parent === null ? 'full' : `from ${short(r.parent)}`}, ${formatBytes(r.size)}; `
    + `${formatBytes(s.bytesWritten)} written in ${s.chunksWritten} of ${s.chunks} chunks, ${formatBytes(s.bytesRead)} read, in ${s.durationSeconds.toFixed(1)} s`,
  ]
  if (s.bytesTransferred !== undefined) {
    const how = [s.scannedOn === undefined ? 'the image streamed, hashed here' : `hashed on ${s.scannedOn}: only changed chunks`, ...(s.streamCompressed === undefined ? [] : [`${s.streamCompressed}-compressed`])]
    lines.push(`  ${formatBytes(s.bytesTransferred)} crossed the network (${how.join('; ')})`)
  }
  if (s.bytesUnchanged !== undefined) {
    lines.push(`  ${formatBytes(s.bytesUnchanged)} not read: ${r.consistency === 'rbd-snapshot' ? 'unchanged since the last revision (rbd export-diff from its snapshot)' : "unchanged on disk since the last revision (the filesystem's extents)"}`)
  }
  if (verbosity > 0) lines.push(`  ${s.zeroChunks} zero chunks, ${s.chunksPunched} made holes again, ${formatBytes(s.bytesSkipped)} of holes not read${rate}`)
  for (const w of r.warnings) lines.push(`warning: ${w}`)
  if (report.removedIncomplete.length > 0) lines.push(`  removed what an unfinished run left: ${report.removedIncomplete.join(', ')}`)
  for (const uuid of report.expired.removed) lines.push(`  expired ${uuid}`)
  if (verbosity > 0) for (const k of report.expired.kept) lines.push(`  kept ${k.uuid} without tags: ${k.why}`)
  lines.push(...hookLines(report.hooks, verbosity))
  return `${lines.join('\n')}\n`
}

/**
 * A revision as the engine reports a run, for what every job feeds: the metrics file. The volume
 * is the job's one target; its revision, the one snapshot sent; expired revisions, the pruned.
 */
export const blockRunReport = (source: string, route: 'local' | 'pull', report: Extract<BlockBackupReport, { skipped: false }>): BackupReport => {
  const { revision: r } = report
  const mode = r.parent === null ? 'full' as const : 'incremental' as const
  const parent = r.parent === null ? {} : { parent: r.parent }
  const durationMs = Math.round(r.stats.durationSeconds * 1000)
  return {
    source, driver: 'block', dryRun: false, snapshot: r.uuid, startedAt: r.timestamp, durationMs, failed: 0, sourcePruned: [],
    targets: [{
      target: report.dir, ok: true, route, sent: [{ snapshot: r.uuid, mode, ...parent, bytes: r.stats.bytesWritten, durationMs }],
      snapshot: r.uuid, mode, ...parent, bytes: r.stats.bytesWritten, files: 0, durationMs, warnings: r.warnings,
      recovered: report.removedIncomplete.map((name) => ({ snapshot: name, action: 'removed' as const })), pruned: report.expired.removed, kept: report.expired.left, commands: [],
    }],
  }
}

/** What `bbackup run` does with a volume beside printing it: its events (logs), and its outcome as a job's (metrics); none when nothing was due. */
export interface BlockRunHooks {
  /** with --json, the report goes here instead (bbackup run --json prints one document) */
  readonly collect?: (report: BlockBackupReport) => void
  /** where the volume's events go, given its source as it prints */
  readonly eventsFor?: (source: string) => (event: BackupEvent) => void
  /** `source`: the volume's, as it prints (undefined when its volume.json could not be read) */
  readonly ran?: (source: string | undefined, outcome: JobRun['outcome']) => void
}

/** Backs up one volume and prints the report. */
export const blockBackup = async (
  io: Io, dir: string,
  options: BlockCliOptions & { force?: boolean; tag?: string[]; snapshot?: boolean; expire?: boolean; wait?: string | boolean; hookCommands?: HookCommands; jobName?: string },
  remote: BlockRemote, hooks: BlockRunHooks = {},
): Promise<number> => {
  const { backupVolume, formatBlockSource, volumeSource } = await block()
  const jobHooks = options.hookCommands === undefined || Object.keys(options.hookCommands).length === 0 ? undefined : await commandHooks(options.hookCommands, options.jobName)
  const wait = waitOption(options.wait)
  if (wait.isErr()) {
    hooks.ran?.(undefined, { error: wait.error })
    return fail(io, wait.error, options)
  }
  const at = volumeAt(io, dir)
  if (at.isErr()) {
    hooks.ran?.(undefined, { error: at.error })
    return fail(io, at.error, options)
  }
  const where = await volumeSource(at.value)
  if (where.isErr()) {
    hooks.ran?.(undefined, { error: where.error })
    return fail(io, where.error, options)
  }
  const source = formatBlockSource(where.value)
  const host = await hostOf(where.value, remote)
  if ('error' in host) {
    hooks.ran?.(source, { error: host.error })
    return fail(io, host.error, options)
  }
  const stop = stopSignal()
  let shown = -1
  let meter: ((bytes: number) => TransferProgress) | undefined
  let drawnAt = 0
  try {
    const r = await backupVolume({
      at: at.value, ...(host.host === undefined ? {} : { sourceHost: host.host }), ...remote.way, force: options.force === true, tags: options.tag ?? [], noSnapshot: options.snapshot === false, signal: stop.signal,
      ...(options.expire === false ? { expire: false } : {}),
      ...(jobHooks === undefined ? {} : { hooks: jobHooks }),
      ...(hooks.eventsFor === undefined ? {} : { onEvent: hooks.eventsFor(source) }),
      ...wait.value,
      ...(io.isTTY && options.json !== true && options.quiet !== true ? {
        onProgress: ({ bytes, total }: { bytes: number; total: number }) => {
          meter ??= progressMeter(total)
          const now = meter(bytes)
          // redrawn at most four times a second: a chunk is read many times a second
          if (Date.now() - drawnAt < 250) return
          drawnAt = Date.now()
          shown = now.percent ?? 0
          io.stderr(`\r\x1b[K  ${progressLine(now, 'exact')}`)
        },
      } : {}),
    })
    if (shown >= 0) io.stderr('\r\x1b[K')
    if (r.isErr()) {
      hooks.ran?.(source, { error: r.error })
      if (hooks.collect === undefined || options.json !== true) return fail(io, r.error, options)
      io.stderr(renderError(r.error, (options.verbose ?? 0) > 0))
      return exitCodeOf(r.error)
    }
    if (!r.value.skipped) hooks.ran?.(source, { report: blockRunReport(source, where.value.kind === 'ssh' ? 'pull' : 'local', r.value) })
    if (hooks.collect !== undefined && options.json === true) {
      hooks.collect(r.value)
      return EXIT.ok
    }
    // not due: silent, exit 0 (a cron job runs it often; the schedule decides)
    if (r.value.skipped) {
      if (options.json === true) print(io, options, r.value, () => '')
      else if ((options.verbose ?? 0) > 0) io.stdout(`nothing due; next backup due ${utc(r.value.nextDue)} UTC\n`)
      return EXIT.ok
    }
    const report = r.value
    if (options.quiet !== true || options.json === true) print(io, options, report, () => renderBackup(report, options.verbose ?? 0))
    // -q prints only errors and warnings
    else if (report.revision.warnings.length > 0) io.stderr(report.revision.warnings.map((w) => `warning: ${w}\n`).join(''))
    // a hook that failed after the revision was made: the run did not do all it was asked (as a run's exit 10)
    if ((report.hooks ?? []).some((h) => !h.ok)) {
      if (options.quiet === true && options.json !== true) io.stderr(`${hookLines(report.hooks?.filter((h) => !h.ok), 0, '').join('\n')}\n`)
      return EXIT.someTargetsFailed
    }
    return EXIT.ok
  } finally {
    stop.done()
  }
}

/** A dry run of a block volume's backup: whether one is due now, and with which tags. */
export const blockDue = async (io: Io, dir: string, options: BlockCliOptions): Promise<number> => {
  const { volumeStatus } = await block()
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const r = await volumeStatus({ at: at.value })
  if (r.isErr()) return fail(io, r.error, options)
  const { dueNow, nextDue } = r.value.summary
  io.stderr(`${r.value.dir}: ${dueNow.length > 0 ? `would back up ${r.value.source} now (${dueNow.join(', ')})` : `nothing due until ${utc(nextDue)} UTC`}\n`)
  return EXIT.ok
}

const renderStatus = (s: VolumeStatus): string => {
  const rows = s.revisions.map((r: Revision) => [
    r.uuid, utc(r.timestamp), formatBytes(r.size), formatBytes(r.stats.bytesWritten), `${r.stats.durationSeconds.toFixed(1)} s`, r.trust, r.tags.join(','),
  ])
  const header = ['UUID', 'TIME (UTC)', 'SIZE', 'WRITTEN', 'DURATION', 'TRUST', 'TAGS']
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]?.length ?? 0)))
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd()
  const m = s.summary
  return [
    `${s.dir}: ${s.source}, chunks of ${formatBytes(s.chunkSize)}, schedule ${s.schedule}`,
    ...(rows.length === 0 ? ['  no revisions yet'] : [line(header), ...rows.map(line)].map((l) => `  ${l}`)),
    ...(s.runningNow === undefined ? [] : [`  running now: ${s.runningNow.command} (pid ${s.runningNow.pid} on ${s.runningNow.host}, since ${utc(s.runningNow.since)} UTC)`]),
    ...(s.incomplete.length === 0 ? [] : [`  ${s.runningNow === undefined ? 'unfinished (removed by the next backup)' : 'unfinished (being written now, or left by an earlier run)'}: ${s.incomplete.join(', ')}`]),
    ...s.withoutImage.map((uuid) => `  ${uuid}: its image ${uuid}.img is missing: restore cannot use it${s.distrusted.some((d) => d.uuid === uuid) ? '' : ` (bbackup verify -b DIR ${uuid.slice(0, 8)} marks it distrusted)`}`),
    ...s.distrusted.map((d) => `  ${d.uuid}: distrusted: ${d.reason}`),
    ...s.changedSinceMade.map((uuid) => `  ${uuid}: its image was changed after the backup (written to, replaced, or its mode changed): the next backup checks every chunk of it before it is a parent (bbackup verify -b DIR ${uuid.slice(0, 8)} checks it now)`),
    ...(m.ahead.length === 0 ? [] : [`  dated ahead of this host's clock: ${m.ahead.length === 1 ? 'one revision' : `${m.ahead.length} revisions`} (${m.ahead.map((u) => u.slice(0, 8)).join(', ')}): the clock was ahead when ${m.ahead.length === 1 ? 'it was' : 'they were'} made, or is behind now (check it: timedatectl); listed first, ${m.ahead.length === 1 ? 'it serves' : 'they serve'} no schedule slot, and latest is the newest made before now`]),
    ...s.bases.map((b) => (b.kind === 'rbd-snapshot'
      ? `  base snapshot of ${b.revision.slice(0, 8)} (the next backup exports only what changed since): ${b.path}`
      : `  base copy of ${b.revision.slice(0, 8)} beside the image (read-only; the next backup reads only what differs from it): ${b.path}`)),
    `${count(m.revisions, 'revision')}, ${m.verified} verified, ${m.distrusted} distrusted; ${formatBytes(m.bytesWritten)} written in all; `
    + `${m.dueNow.length > 0 ? `due now (${m.dueNow.join(', ')})` : `next due ${utc(m.nextDue)} UTC`}`,
  ].join('\n') + '\n'
}

export const blockStatus = async (io: Io, dir: string, options: BlockCliOptions): Promise<number> => {
  const { volumeStatus } = await block()
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const r = await volumeStatus({ at: at.value })
  if (r.isErr()) return fail(io, r.error, options)
  print(io, options, r.value, () => renderStatus(r.value))
  return r.value.summary.distrusted > 0 || r.value.withoutImage.length > 0 ? EXIT.error : EXIT.ok
}

const parseSubset = (text: string): { index: number; of: number } | undefined => {
  const m = /^(\d+)\/(\d+)$/.exec(text)
  return m === null ? undefined : { index: Number(m[1]), of: Number(m[2]) }
}

const renderVerify = (report: BlockVerifyReport): string =>
  report.checks.map((c) => {
    const what = `${c.uuid} (${c.subset === '1/1' ? 'all chunks' : `subset ${c.subset}`}, ${formatBytes(c.bytesChecked)})`
    if (c.badChunks === 0 && c.problems.length === 0) return `${what}: ok, ${c.trust}\n`
    return `${what}: DAMAGED, now distrusted\n${c.problems.map((p) => `  ${p}\n`).join('')}${c.badOffsets.map((o) => `  bad chunk at byte ${o}\n`).join('')}${c.badChunks > c.badOffsets.length ? `  … ${c.badChunks} bad chunks in all\n` : ''}`
  }).join('')

export const blockVerify = async (io: Io, dir: string, specs: readonly string[], options: BlockCliOptions & { subset?: string }): Promise<number> => {
  const { verifyVolume } = await block()
  const subset = options.subset === undefined ? undefined : parseSubset(options.subset)
  if (options.subset !== undefined && subset === undefined) return fail(io, bbError('INVALID_OPTIONS', `--subset ${options.subset} is not k/n`, 'give e.g. --subset 1/4, then 2/4, 3/4 and 4/4 in later runs'), options)
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const r = await verifyVolume({ at: at.value, ...(specs.length === 0 ? {} : { revisions: specs }), ...(subset === undefined ? {} : { subset }) })
  if (r.isErr()) return fail(io, r.error, options)
  print(io, options, r.value, () => renderVerify(r.value))
  return r.value.ok ? EXIT.ok : EXIT.error
}

const renderExpire = (report: BlockExpireReport, verbosity: number): string => {
  const lines = report.removed.map((uuid) => `${report.dryRun ? 'would expire' : 'expired'} ${uuid}`)
  if (verbosity > 0) for (const k of report.kept) lines.push(`kept ${k.uuid} without tags: ${k.why}`)
  lines.push(`${report.dir}: ${report.left} revision${report.left === 1 ? '' : 's'} ${report.dryRun ? 'would be ' : ''}left`)
  return `${lines.join('\n')}\n`
}

/** `prune -b`: the schedule's expiry now, without a backup. */
export const blockPrune = async (io: Io, dir: string, options: BlockCliOptions & { dryRun?: boolean; wait?: string | boolean }): Promise<number> => {
  const { expireVolume } = await block()
  const wait = waitOption(options.wait)
  if (wait.isErr()) return fail(io, wait.error, options)
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const r = await expireVolume({ at: at.value, dryRun: options.dryRun === true, ...wait.value })
  if (r.isErr()) return fail(io, r.error, options)
  print(io, options, r.value, () => renderExpire(r.value, options.verbose ?? 0))
  return EXIT.ok
}

/** `distrust -b DIR REV...` */
export const blockDistrust = async (io: Io, dir: string, specs: readonly string[], options: BlockCliOptions): Promise<number> => {
  const { distrustRevisions } = await block()
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  const r = await distrustRevisions({ at: at.value, revisions: specs })
  if (r.isErr()) return fail(io, r.error, options)
  print(io, options, r.value, () => `${r.value.distrusted.map((uuid) => `distrusted ${uuid}`).join('\n')}\n`)
  return EXIT.ok
}

export const blockRestore = async (io: Io, dir: string, revision: string, destination: string, options: BlockCliOptions & { force?: boolean }, remote: BlockRemote): Promise<number> => {
  const { isRbdSource, restoreRevision } = await block()
  const at = volumeAt(io, dir)
  if (at.isErr()) return fail(io, at.error, options)
  if (destination === '-') {
    // backy's `restore ... -`: the image on stdout, for a pipe (`| ssh kvm1 dd of=/dev/vg0/vm1`)
    if (io.binaryStdout === undefined) return fail(io, bbError('UNSUPPORTED', 'restoring to stdout (-) needs a byte stream as stdout, which this caller did not give', 'restore to a file instead'), options)
    if (io.binaryStdout.isTTY === true) return fail(io, bbError('INVALID_OPTIONS', 'restore to - writes the image to stdout, which is a terminal', 'pipe it into a command or redirect it to a file, e.g. bbackup restore -b DIR latest - | ssh kvm1 dd of=/dev/vg0/vm1'), options)
    const r = await restoreRevision({ at: at.value, revision, destination: '-', output: io.binaryStdout, force: options.force === true })
    if (r.isErr()) return fail(io, r.error, { ...options, json: false })
    if (options.quiet !== true) io.stderr(`restored ${r.value.uuid} (${formatBytes(r.value.size)}) to stdout\n`)
    return EXIT.ok
  }
  /** where restoreRevision writes: a path here or over ssh; a new Ceph RBD image as given (rbd import runs here) */
  const target = async (): Promise<{ readonly destination: string; readonly destinationHost?: Transport } | { readonly error: BbError }> => {
    if (isRbdSource(destination)) return { destination }
    const where = parseLocation(destination, { cwd: io.cwd })
    if (where.isErr()) return { error: where.error }
    if (where.value.kind !== 'local' && where.value.kind !== 'ssh') {
      return { error: bbError('UNSUPPORTED', `restore -b writes to a file or device on this host or on another over ssh, or to a new RBD image, not to ${formatLocation(where.value)}`, 'give a path, ssh://host/path or rbd:POOL/IMAGE') }
    }
    const host = await hostOf(where.value, remote)
    return 'error' in host ? host : { destination: where.value.path, ...(host.host === undefined ? {} : { destinationHost: host.host }) }
  }
  const to = await target()
  if ('error' in to) return fail(io, to.error, options)
  const r = await restoreRevision({ at: at.value, revision, ...to, ...remote.way, force: options.force === true })
  if (r.isErr()) return fail(io, r.error, options)
  const { bytesTransferred, streamCompressed } = r.value
  print(io, options, r.value, () => [
    `restored ${r.value.uuid} (${formatBytes(r.value.size)}) to ${r.value.destination}\n`,
    ...(bytesTransferred === undefined ? [] : [`  ${formatBytes(bytesTransferred)} crossed the network${streamCompressed === undefined ? '' : ` (${streamCompressed}-compressed)`}\n`]),
    ...(r.value.warnings ?? []).map((w) => `warning: ${w}\n`),
  ].join(''))
  return EXIT.ok
}
