import { hostname } from 'node:os'
import { posix } from 'node:path'
import { err, errAsync, ok, okAsync, Result, ResultAsync } from 'neverthrow'
import {
  bbError, compareSnapshots, daemonDisplay, daemonRefusedOption, formatLocation, parseSnapshotName, refusalHint, refusedOptionText, statGiven, type BbError, type DiffEntry, type DiffInput, type Driver, type FileChanges, type Location, type RestoreInput, type SnapshotInfo,
  type Transport, type TransferInput, type TransferOutcome, type TransferProgress, type VerifyInput, type VerifyOutcome,
} from '@bb/core'
import { backupSubpath, findInBackup } from '../backup-subpath.js'
import { restoreDirectory } from '../restore-destination.js'
import { endpointIo, execBetween, rsyncHost } from '../rsync-between.js'
import { targetInSource } from '../target-in-source.js'
import { classifyRsyncExit } from './exit-codes.js'
import { flushWhile } from '../flush-while.js'
import { itemizedLine, parseItemizedDiff } from './itemized.js'

export interface RsyncDriverOptions {
  /** rsync `--exclude` patterns */
  readonly excludes?: readonly string[]
  /** files of exclude patterns (`--exclude-from`) */
  readonly excludeFrom?: readonly string[]
  /**
   * paths excluded wherever the source is, matched against the absolute path (`--filter='-/ P'`):
   * {@link SYSTEM_EXCLUDES} for a system backup
   */
  readonly absoluteExcludes?: readonly string[]
  /** stay on the source's filesystem (`--one-file-system`); default true, false = `--multi-fs` */
  readonly oneFileSystem?: boolean
  /** also copy hard links, ACLs, xattrs and numeric ids (`-HAX --numeric-ids`); default: when running as root */
  readonly preserveAll?: boolean
  /** keep a backup that rsync ended with exit 23 (some files failed) as complete, marked `errors` */
  readonly acceptPartial?: boolean
  /** flush the target filesystem (`sync -f`) before a backup is published; default true */
  readonly syncBeforePublish?: boolean
  /** more rsync options, passed before the paths */
  readonly extraArgs?: readonly string[]
  /**
   * `zstd`: rsync compresses what it sends to or from another host (`--compress`, which picks zstd
   * when both rsyncs have it, else the best they share); default `none`
   */
  readonly streamCompress?: 'zstd' | 'none'
  /** at most this many bytes a second (`--bwlimit`, in whole KiB, at least 1) */
  readonly rateLimit?: number
  /**
   * the transfer only (rsync-system-backup's `--backup` stage): an rsync daemon target's
   * `post-xfer exec` publishes the backup ({@link publishReceived}); other targets are refused
   */
  readonly serverPublishes?: boolean
}

/** The per-backup record beside the backups, written before the backup is published. */
export interface BackupRecord {
  readonly health: SnapshotInfo['health']
  readonly rsyncExit: number
  readonly finishedAt: string
  /** what rsync transferred (its --stats); not known where a daemon's post-xfer exec published it */
  readonly bytes?: number
  readonly files?: number
  readonly warnings: readonly string[]
  /** 'post-xfer exec': the daemon's hook published it, from the daemon's exit status */
  readonly publishedBy?: string
  /** the source it is a backup of ({@link sourceNameOf}); not known where a daemon's post-xfer exec published it */
  readonly source?: string
}

/**
 * How a backup's record names its source ({@link SnapshotInfo.madeFrom}): the host it is on and its
 * path there, `HOST:PATH` (a daemon's `HOST::MODULE/PATH`), this host's name for a local source and
 * the host as written for a remote one. A directory of backups is one source's: another source's
 * run there is refused (`TARGET_IN_USE`), so that two hosts' `/home` never link against, prune nor
 * replace each other's backups.
 */
export const sourceNameOf = (location: Location): string => {
  const path = location.path === '' ? '' : posix.normalize(location.path).replace(/(.)\/+$/, '$1')
  switch (location.kind) {
    case 'local':
      return `${hostname()}:${path}`
    case 'ssh':
      return `${location.host}:${path}`
    case 'rsyncd':
      return `${location.host}::${posix.join(location.module, path)}`
  }
}

/**
 * What a backup of a whole system leaves out, as rsync-system-backup does: pseudo and temporary
 * filesystems, mount points of other disks, caches (absolute paths, for `absoluteExcludes`).
 */
export const SYSTEM_EXCLUDES: readonly string[] = ['/dev/', '/proc/', '/sys/', '/run/', '/tmp/', '/mnt/', '/media/', '/var/cache/', '/var/tmp/', '/home/*/.cache/']

/** what a backup's record says of an rsync exit 24, and of an exit 23 kept by --accept-partial */
export const VANISHED_WARNING = 'some source files vanished while they were copied (rsync exit 24); the backup is complete without them'
const ownersLostWarning = (at: Location): string => `${at.kind === 'rsyncd' ? `module ${at.module} at ${daemonDisplay(at)}` : formatLocation(at)} does not keep file owners: every file of this backup belongs to the daemon's account, and comes back so on restore (the daemon runs as another user than root, without "fake super"); add "fake super = yes" (or "uid = root") to the module in rsyncd.conf (bbackup doctor rsyncd prints one), and the next backup keeps them`
export const ACCEPTED_PARTIAL_WARNING = 'rsync could not copy some files (exit 23); kept because of --accept-partial, marked with errors'

export const META = '.bbackup'
/** rsync-time-backup's file in a backup directory while its newest backup is unfinished */
const RSYNC_TIME_BACKUP_MARKER = 'backup.inprogress'
export const PARTIAL = '.partial'

/**
 * Whether `latest` in `dir` is there and is not a link (rsync-system-backup's mirror is a
 * directory of that name): not bbackup's to replace. Asked only once making the link failed.
 */
const latestNotALink = (at: Transport, dir: string): ResultAsync<string | undefined, BbError> =>
  at.stat(join(dir, 'latest')).map((s) => (s === undefined || s.kind === 'symlink' ? undefined
    : `latest in ${formatLocation(at.location)} is a ${s.kind === 'directory' ? 'directory' : 'file'}, not a link bbackup made (rsync-system-backup's mirror?): left as it is, so it does not point at the newest backup; once you no longer need it, remove it (${at.location.kind === 'local' ? `rm -r '${join(dir, 'latest')}'` : 'rm -r on the host that holds it'}), and the next run makes the link`))
const join = posix.join

/** a backup's record and its unfinished-marker, relative to the directory of the backups */
const recordFile = (name: string): string => join(META, `${name}.json`)
const markerFile = (name: string): string => join(META, `${name}${PARTIAL}`)
export const recordPath = (dir: string, name: string): string => join(dir, recordFile(name))
/**
 * Where a location cannot rename (an rsync daemon module), a backup is copied under its final name
 * and this marker, written before the first byte and removed after the record, says it is not
 * complete yet (rsync-time-backup's `backup.inprogress`, one per backup).
 */
export const markerPath = (dir: string, name: string): string => join(dir, markerFile(name))
/** The names in a target's trash: backups an earlier prune moved out but could not remove. */
/**
 * A line of rsync's `--info=progress2`: bytes so far, percent, rate and time left, as rsync wrote them.
 * @example
 * progress2('    104,857,600  45%   98.23MB/s    0:00:02') // { bytes: 104857600, percent: 45, rate: '98.23MB/s', eta: '0:00:02' }
 */
export const progress2 = (line: string): TransferProgress | undefined => {
  const m = /^\s*([\d,.]+)\s+(\d+)%\s+(\S+)\s+(\d+:\d{2}:\d{2})/.exec(line)
  if (m === null) return undefined
  return { bytes: Number((m[1] ?? '').replace(/[,.]/g, '')), percent: Number(m[2]), rate: m[3] ?? '', eta: m[4] ?? '' }
}

const leftovers = async (at: Transport, trash: string): Promise<string[]> => {
  const there = await at.stat(trash)
  if (there.isErr() || there.value?.kind !== 'directory') return []
  return (await at.list(trash)).map((entries) => entries.map((e) => e.name)).unwrapOr([])
}

/** whether `path` names an entry directly inside `dir` ('' is a module's root) */
const directlyIn = (path: string, dir: string): boolean => posix.dirname(path) === (posix.normalize(dir === '' ? '.' : dir).replace(/(.)\/$/, '$1'))

/** an rsync pattern that matches `path` and nothing else: wildcards escaped (a backslash escapes only in a pattern with a wildcard) */
const literalPattern = (path: string): string => (/[*?[]/.test(path) ? path.replace(/[*?[\\]/g, '\\$&') : path)

/**
 * The exclude that keeps a target inside the source out of the copy (anchored at the source, the
 * directory and all in it), or none: otherwise each backup of `/` to `/backups` would hold every
 * backup before it.
 */
const ownBackups = async (source: Transport, target: Transport): Promise<string[]> => {
  const inSource = await targetInSource(source, target)
  return inSource === undefined || inSource === '' ? [] : [`--exclude=/${literalPattern(inSource)}/`]
}

/**
 * rsync + hard links: each backup is a full tree in `<target>/<name>`, and files unchanged since
 * the previous backup are hard links to it (`--link-dest`). A backup is copied into
 * `<name>.partial` and renamed when rsync has finished, so a directory without the suffix is
 * always complete; `latest` points at the newest.
 * @example
 * import { rsyncDriver } from '@bb/drivers/rsync'
 * const driver = rsyncDriver({ excludes: ['.cache/'] })
 */
export const rsyncDriver = (options: RsyncDriverOptions = {}): Driver => {
  const preserveAll = options.preserveAll ?? process.getuid?.() === 0
  const copyFlags = (): string[] => [
    // --sparse: runs of zeros become holes, as a sparse file has them (/var/log/lastlog: terabytes
    // long, a few KiB on disk, which without it the backup writes out whole)
    '-a', '--sparse',
    ...(preserveAll ? ['-H', '-A', '-X', '--numeric-ids'] : []),
    ...(options.oneFileSystem === false ? [] : ['--one-file-system']),
    ...(options.absoluteExcludes ?? []).map((p) => `--filter=-/ ${p}`),
    ...(options.excludes ?? []).map((p) => `--exclude=${p}`),
    ...(options.excludeFrom ?? []).map((p) => `--exclude-from=${p}`),
  ]

  /** rsync must be installed at both ends: on this host and on the other, which rsync starts over ssh; asked once per place */
  /** how what rsync copies between `from` and `to` travels: compressed (`--compress`, nothing between two paths of this host) and at the rate limit */
  const wayFlags = (from: Transport, to: Transport): string[] => [
    ...(options.streamCompress === 'zstd' && (from.location.kind !== 'local' || to.location.kind !== 'local') ? ['--compress'] : []),
    ...(options.rateLimit === undefined ? [] : [`--bwlimit=${Math.max(1, Math.round(options.rateLimit / 1024))}`]),
  ]
  const rsyncFound = new WeakMap<Transport, Promise<Result<void, BbError>>>()
  const hasRsync = (at: Transport, signal: AbortSignal | undefined): ResultAsync<void, BbError> => {
    const asked = rsyncFound.get(at) ?? (async (): Promise<Result<void, BbError>> => {
      const r = await at.exec(['rsync', '--version'], signal === undefined ? {} : { signal }).andThen((ran) =>
        ran.exitCode === 0 ? ok(undefined) : err(bbError('TOOL_MISSING', 'rsync --version failed', 'install rsync: apt-get install rsync', { stderr: ran.stderr })))
      // only a success is remembered: a failure is asked again next time
      if (r.isErr()) rsyncFound.delete(at)
      return r
    })()
    rsyncFound.set(at, asked)
    return new ResultAsync(asked)
  }

  const probe: Driver['probe'] = ({ source, targets, signal, transferFollows }) =>
    Result.combine(targets.map((t) => rsyncHost(source, t))).andThen(() => (options.serverPublishes === true ? serverCanPublish(targets) : ok(undefined)))
      // a daemon module runs no commands: its rsync is the daemon
      .asyncAndThen(() => (source.filesOnly === true ? okAsync(undefined) : hasRsync(source, signal)))
      .andThen(() => ResultAsync.combine(targets.filter((t) => t.filesOnly !== true && (t.location.kind !== 'local' || source.location.kind !== 'local')).map((t) => hasRsync(t, signal))))
      .andThen(() => excludeFilesThere(source.location.kind === 'local' ? source : targets.find((t) => t.location.kind === 'local')))
      // a symlink to a directory is copied as rsync copies SOURCE/: what it points to
      .andThen(() => statGiven(source, source.location.path, 'source'))
      .andThen((s) => {
        if (s?.kind === 'directory') return ok(undefined)
        // on this host its path, elsewhere the whole location (a daemon module's path is the module's)
        const named = source.location.kind === 'local' ? source.location.path : formatLocation(source.location)
        return err(bbError('SOURCE_UNAVAILABLE', s === undefined ? `the source ${named} does not exist` : `the source ${named} is not a directory`,
          s !== undefined ? 'the rsync driver backs up directories; give the directory that holds the file'
            : source.location.kind === 'rsyncd' ? `check the path in the module: rsync --list-only ${formatLocation({ ...source.location, path: '' })}/ lists what it holds`
            : 'check the path (is the filesystem mounted?)', { path: source.location.path }))
      })
      // the target's directory is made only for a backup that copies into it (not a dry run, not a doctor's check)
      .andThen(() => ResultAsync.combine(targets.map((t) => probeTarget(source, t, transferFollows === true))))
      .map(() => undefined)

  /** The exclude files, read by rsync where it runs (on this host, `on`): each must be a file there. */
  const excludeFilesThere = (on: Transport | undefined): ResultAsync<void, BbError> => {
    if (on === undefined) return okAsync(undefined)
    const there = (file: string): ResultAsync<void, BbError> => on.stat(posix.resolve(file)).andThen((s) => (s?.kind === 'file' || s?.kind === 'symlink'
      ? okAsync(undefined)
      : errAsync(bbError('INVALID_OPTIONS', `the exclude file ${file} ${s === undefined ? 'does not exist' : 'is not a file'}`, 'give a file of rsync patterns, one a line (--exclude-from, exclude_from)', { path: file }))))
    return ResultAsync.combine((options.excludeFrom ?? []).map(there)).map(() => undefined)
  }

  /**
   * The target directory must exist, or its parent must (then it is created): a missing parent
   * often means an unmounted disk. It must not be the source itself (a target inside the source
   * is left out of each copy).
   */
  const probeTarget = (source: Transport, target: Transport, make: boolean): ResultAsync<void, BbError> => {
    const dir = target.location.path
    return ResultAsync.fromSafePromise(targetInSource(source, target)).andThen((inSource) => (inSource === ''
      ? errAsync(bbError('INVALID_OPTIONS', `the target ${dir} is the source itself: each backup would be written into what it copies`,
        `keep the backups outside the source, or in a directory of their own inside it (e.g. ${posix.join(dir, 'backups')}), which every backup leaves out`, { path: dir }))
      : okAsync(undefined)))
      .andThen(() => statGiven(target, dir, 'target'))
      .andThen((s): ResultAsync<void, BbError> => {
        if (s?.kind === 'directory') return okAsync(undefined)
        if (s !== undefined) return errAsync(bbError('TARGET_UNAVAILABLE', `the target ${dir} is not a directory`, 'give a directory to keep the backups in', { path: dir }))
        return target.stat(posix.dirname(dir)).andThen((parent) =>
          parent?.kind === 'directory'
            ? (make ? target.mkdir(dir) : okAsync(undefined))
            : errAsync(bbError('TARGET_UNAVAILABLE', `the target ${dir} does not exist, nor does its parent`, 'mount the backup disk, or create the directory (mkdir -p) if this is the right place', { path: dir })))
      })
  }

  const listSnapshots: Driver['listSnapshots'] = ({ at }) => {
    const dir = at.location.path
    // marked unfinished: also where a daemon wrote it and this host reads it (a post-xfer exec's prune);
    // where the transport reads a directory's small files at once, the records come with the markers
    const meta = (): ResultAsync<{ marked: ReadonlySet<string>; records?: ReadonlyMap<string, string> }, BbError> => {
      const unfinished = (names: readonly string[]): ReadonlySet<string> => new Set(names.filter((n) => n.endsWith(PARTIAL)).map((n) => n.slice(0, -PARTIAL.length)))
      if (at.readFiles !== undefined) return at.readFiles(join(dir, META), ['.json', PARTIAL]).map((files) => ({ marked: unfinished([...files.keys()]), records: files }))
      return at.list(join(dir, META)).orElse((e) => (e.code === 'NOT_FOUND' ? ok([]) : err(e)))
        .map((entries) => ({ marked: unfinished(entries.filter((e) => e.kind === 'file').map((e) => e.name)) }))
    }
    const recordOf = (name: string, records: ReadonlyMap<string, string> | undefined): ResultAsync<string | undefined, BbError> =>
      (records === undefined ? at.readFile(recordPath(dir, name)) : okAsync(records.get(posix.basename(recordFile(name)))))
    return ResultAsync.combine([
      at.list(dir).mapErr((e) => (e.code === 'NOT_FOUND' ? bbError('TARGET_UNAVAILABLE', `the target ${dir} does not exist`, 'check the path, or run a backup to create it', { path: dir }) : e)),
      meta(),
    ] as const)
      .andThen(([entries, { marked, records }]) => {
        const unmarked = entries.filter((e) => e.kind === 'directory').map((e) => {
          const complete = !e.name.endsWith(PARTIAL) && !marked.has(e.name)
          const name = e.name.endsWith(PARTIAL) ? e.name.slice(0, -PARTIAL.length) : e.name
          return { name, complete, dirName: e.name, parsed: parseSnapshotName(name) }
        }).filter((b) => b.parsed !== undefined)
        // rsync-time-backup's marker: its newest backup was being made (or resumed) and did not finish
        const interrupted = entries.some((e) => e.kind === 'file' && e.name === RSYNC_TIME_BACKUP_MARKER)
          ? unmarked.filter((b) => b.parsed?.scheme === 'rsync-time-backup').sort((a, b) => (b.parsed?.time.getTime() ?? 0) - (a.parsed?.time.getTime() ?? 0))[0]
          : undefined
        const backups = unmarked.map((b) => (b === interrupted ? { ...b, complete: false } : b))
        return ResultAsync.combine(backups.map((b) =>
          (b.complete ? recordOf(b.name, records) : okAsync(undefined)).map((text) => ({
            info: { name: b.name, time: b.parsed?.time, complete: b.complete, ...recordSays(text), path: join(dir, b.dirName) } satisfies SnapshotInfo,
            order: { name: b.dirName, time: b.parsed?.time ?? new Date(0), sequence: b.parsed?.sequence ?? 0 },
          })),
        ))
      })
      .map((list) => list.sort((a, b) => compareSnapshots(a.order, b.order)).map((s) => s.info))
  }

  // what `latest` points at: a name in the directory (an older tool's link elsewhere, or a mirror directory, names none)
  const lastMade: NonNullable<Driver['lastMade']> = ({ at }) =>
    at.readlink(join(at.location.path, 'latest')).map((to) => (to === undefined || to.includes('/') || parseSnapshotName(to) === undefined ? undefined : to))

  const partialPath: Driver['partialPath'] = ({ target, snapshot }) => join(target.location.path, target.filesOnly === true ? snapshot : `${snapshot}${PARTIAL}`)

  const transfer = (input: TransferInput): ResultAsync<TransferOutcome, BbError> =>
    new ResultAsync(runTransfer(input))

  const runTransfer = async (input: TransferInput): Promise<Result<TransferOutcome, BbError>> => {
    const { source, target, snapshot, parent, resume, dryRun, signal } = input
    const dir = target.location.path
    const partial = partialPath({ target, snapshot })
    const final = join(dir, snapshot)
    const where = formatLocation(target.location)
    // the other host of a pull or push: the one a connection is lost to, or whose daemon or forced command refuses
    const peer = source.location.kind === 'local' ? where : formatLocation(source.location)
    const runner = rsyncHost(source, target)
    if (runner.isErr()) return err(runner.error)
    const filesOnly = target.filesOnly === true
    // what the last run left unfinished under another name: continued into (renamed), or where it cannot be renamed, linked from
    const resumeFrom = resume?.partialPath !== undefined && resume.partialPath !== partial && directlyIn(resume.partialPath, dir)
      && (await target.stat(resume.partialPath)).unwrapOr(undefined)?.kind === 'directory' ? resume.partialPath : undefined
    if (!dryRun) {
      // where nothing can be renamed, rsync itself creates the backup's directory, after the marker
      const prepared = filesOnly
        ? await changeFiles(target, dir, { write: [{ path: markerFile(snapshot), data: `${JSON.stringify({ startedAt: new Date().toISOString(), host: hostname() })}\n` }] })
        : resumeFrom !== undefined ? await target.rename(resumeFrom, partial) : await target.mkdir(partial)
      if (prepared.isErr()) return err(prepared.error)
    }
    // a daemon that makes every file its own (the default for a module without uid = root), seen in
    // the owner of the marker root just wrote: said, in the record as well
    const ownersLost = !dryRun && filesOnly && target.keepsOwners !== undefined && process.getuid?.() === 0
      && !(await target.keepsOwners(markerPath(dir, snapshot))).unwrapOr(true)
    const src = source.rsyncEndpoint(`${source.location.path.replace(/\/+$/, '')}/`)
    const dst = target.rsyncEndpoint(`${partial}/`)
    const leaveOut = await ownBackups(source, target)
    // relative to the destination directory: a daemon module resolves paths inside itself
    const linkDests = [
      ...(parent === undefined ? [] : [filesOnly ? `../${posix.basename(parent.path)}` : parent.path]),
      ...(filesOnly && resumeFrom !== undefined ? [`../${posix.basename(resumeFrom)}`] : []),
    ]
    const argv = [
      'rsync', ...copyFlags(), ...leaveOut, '--delete', '--no-human-readable', '--stats',
      // a line per file, each a wake-up of this process: only when someone shows or logs progress
      ...(input.progress === false ? [] : ['--info=progress2']),
      ...(dryRun ? ['--dry-run'] : []),
      ...linkDests.map((d) => `--link-dest=${d}`),
      // a daemon module cannot run sync(1): the receiver flushes each file it writes
      ...(filesOnly && options.syncBeforePublish !== false ? ['--fsync'] : []),
      ...wayFlags(source, target),
      ...(options.extraArgs ?? []),
      ...src.options, ...dst.options,
      src.spec, dst.spec,
    ]
    let lastProgress = 0
    const statsLines: string[] = []
    // a target on this host is flushed while rsync writes into it, not all at once before the backup is published
    const flusher = !dryRun && !filesOnly && options.syncBeforePublish !== false && target.location.kind === 'local' ? flushWhile(target, partial, signal) : undefined
    const ran = await execBetween(runner.value, argv, {
      ...endpointIo(src, dst, signal),
      onStdoutLine: (line) => {
        if (line.startsWith('Total transferred file size') || line.startsWith('Number of regular files transferred')) statsLines.push(line)
        const p = progress2(line)
        if (p === undefined || Date.now() - lastProgress < 250) return
        lastProgress = Date.now()
        input.onEvent({ type: 'transfer-progress', target: where, snapshot, ...p })
      },
    })
    await flusher?.stop()
    if (ran.isErr()) return err(ran.error)
    const stats = parseStats(statsLines.join('\n'))
    const outcome = classifyRsyncExit(ran.value.exitCode, ran.value.stderr)
    const context = { argv, exitCode: ran.value.exitCode, stderr: ran.value.stderr, partial }
    const refused = refusedByDaemon(ran.value, source.location, target.location)
    if (refused !== undefined) return err(bbError('UNSUPPORTED', refused.message, refused.hint, context))
    const warnings: string[] = ownersLost ? [ownersLostWarning(target.location)] : []
    let health: SnapshotInfo['health'] = ownersLost ? 'warnings' : 'ok'
    switch (outcome.kind) {
      case 'ok':
        break
      case 'vanished':
        health = 'warnings'
        warnings.push(VANISHED_WARNING)
        break
      case 'partial':
        if (options.acceptPartial !== true) {
          return err(bbError('TRANSFER_INCOMPLETE', `rsync could not copy some files to ${where} (exit 23: partial transfer); the backup was not published`,
            'fix what stderr names (often permissions), then run again: it continues where this stopped; or pass --accept-partial to keep such a backup marked with errors', context))
        }
        health = 'errors'
        warnings.push(ACCEPTED_PARTIAL_WARNING)
        break
      case 'disk-full':
        return err(bbError('DISK_FULL', `the target ${where} ran out of space`, 'free space there (or prune old backups), then run again: it continues where this stopped', context))
      case 'refused': {
        const reason = outcome.meaning.replace(/^bbackup-remote: refused: /, '')
        return err(outcome.meaning.startsWith('bbackup-remote')
          ? bbError('AUTH_FAILED', `the ssh key's forced command at ${peer} refused the transfer (${reason})`, refusalHint(reason), context)
          : bbError('AUTH_FAILED', `the rsync daemon at ${peer} refused the transfer (${outcome.meaning})`, 'check the user, the password file and the module\'s "auth users", "hosts allow" and "read only" in rsyncd.conf', context))
      }
      case 'network':
        return err(bbError('NETWORK_FAILED', `rsync lost its connection to ${peer} (exit ${ran.value.exitCode}: ${outcome.meaning})`, 'check that the host (and its rsync daemon) is up; the run retries with backoff, and the unfinished copy is resumed', context))
      case 'failed':
        return err(bbError('COMMAND_FAILED', `rsync failed with exit ${ran.value.exitCode} (${outcome.meaning})`, 'see the end of stderr below; the unfinished copy is resumed by the next run', context))
    }
    const commands: string[][] = [argv]
    if (!dryRun && !(filesOnly && options.serverPublishes === true)) {
      const record: BackupRecord = { health, rsyncExit: ran.value.exitCode, finishedAt: new Date().toISOString(), bytes: stats.bytes, files: stats.files, warnings, source: sourceNameOf(source.location) }
      const published = filesOnly
        ? await publishMarked(target, { dir, snapshot, record, resumedFrom: resumeFrom })
        : await publish(target, { dir, partial, final, snapshot, record }, commands, signal)
      if (published.isErr()) return err(published.error)
      if (published.value !== undefined) warnings.push(published.value)
    }
    return ok({
      snapshot, mode: parent === undefined ? 'full' : 'incremental', ...(parent === undefined ? {} : { parent: parent.name }),
      bytes: stats.bytes, files: stats.files, warnings, commands,
    })
  }

  /**
   * flush, record, rename `<name>.partial` to `<name>` (the commit point), point `latest` at it; a
   * `latest` that is not a link is left alone, and said (the warning)
   */
  const publish = async (
    target: Transport,
    p: { dir: string; partial: string; final: string; snapshot: string; record: BackupRecord },
    commands: string[][],
    signal: AbortSignal | undefined,
  ): Promise<Result<string | undefined, BbError>> => {
    if (options.syncBeforePublish !== false) {
      const syncArgv = ['sync', '-f', p.partial]
      commands.push(syncArgv)
      const synced = await target.exec(syncArgv, signal === undefined ? {} : { signal })
      if (synced.isErr()) return err(synced.error)
      if (synced.value.exitCode !== 0) return err(bbError('IO_FAILED', `could not flush ${p.dir} to disk`, 'check the target filesystem (dmesg) and run again', { stderr: synced.value.stderr }))
    }
    return target.mkdir(join(p.dir, META))
      .andThen(() => target.writeFileAtomic(recordPath(p.dir, p.snapshot), `${JSON.stringify(p.record, null, 2)}\n`))
      .andThen(() => target.rename(p.partial, p.final))
      .andThen(() => target.symlink(p.snapshot, join(p.dir, 'latest')).map(() => undefined)
        .orElse((e) => latestNotALink(target, p.dir).andThen((warning) => (warning === undefined ? errAsync(e) : okAsync(warning)))))
  }

  const recover: Driver['recover'] = ({ target, entry }) => {
    const dir = target.location.path
    if (!directlyIn(entry.partialPath, dir)) return okAsync('gone' as const)
    const isDirectory = (): ResultAsync<'resume' | 'gone', BbError> => target.stat(entry.partialPath).map((s) => (s?.kind === 'directory' ? 'resume' as const : 'gone' as const))
    // only ever what this driver marked unfinished, directly in this target: anything else is not ours to touch
    if (target.filesOnly === true) {
      return target.stat(markerPath(dir, posix.basename(entry.partialPath))).andThen((marker) => (marker === undefined ? okAsync('gone' as const) : isDirectory()))
    }
    if (!entry.partialPath.endsWith(PARTIAL)) return okAsync('gone' as const)
    return isDirectory()
  }

  const deleteSnapshots: Driver['deleteSnapshots'] = ({ at, snapshots, dryRun, signal }) => {
    const dir = at.location.path
    const trash = join(dir, META, 'trash')
    const commands: string[][] = []
    const rmArgv = (path: string): string[] => ['rm', '-rf', '--one-file-system', '--', path]
    const rm = (path: string): ResultAsync<void, BbError> => {
      const argv = rmArgv(path)
      commands.push(argv)
      return at.exec(argv, signal === undefined ? {} : { signal })
        .andThen((res) => (res.exitCode === 0 ? ok(undefined) : err(bbError('COMMAND_FAILED', `could not remove ${path}`, 'it is no longer a backup: the next prune tries again, or remove it by hand (a filesystem mounted inside it is left alone: unmount it first)', { stderr: res.stderr }))))
    }
    const run = async (): Promise<Result<string[][], BbError>> => {
      // what an earlier prune moved out of the backups but could not remove: removed now, before the rest
      const leftover = dryRun || at.filesOnly === true ? [] : await leftovers(at, trash)
      if (snapshots.length === 0 && leftover.length === 0) return ok(commands)
      if (!dryRun && at.filesOnly !== true) {
        const made = await at.mkdir(join(dir, META)).andThen(() => at.mkdir(trash))
        if (made.isErr()) return err(made.error)
      }
      let failed: BbError | undefined
      for (const name of leftover) {
        const r = await rm(join(trash, name)).andThen(() => at.remove(recordPath(dir, name)))
        if (r.isErr()) failed ??= r.error
      }
      for (const s of snapshots) {
        if (!s.complete || !directlyIn(s.path, dir)) return err(bbError('INVALID_OPTIONS', `refusing to delete ${s.path}: not a complete backup in ${dir}`, 'this is a bug in bbackup; please report it'))
        if (at.filesOnly === true) {
          const r = await deleteMarked(at, dir, s, commands, dryRun)
          if (r.isErr()) return err(r.error)
          continue
        }
        // moved out of the backups first, so that a crash mid-delete never leaves a half tree that looks complete
        const doomed = join(trash, s.name)
        if (dryRun) {
          commands.push(rmArgv(doomed))
          continue
        }
        const r = await at.rename(s.path, doomed)
          .andThen(() => rm(doomed))
          .andThen(() => at.remove(recordPath(dir, s.name)))
        if (r.isErr()) return err(r.error)
      }
      return failed === undefined ? ok(commands) : err(failed)
    }
    return new ResultAsync(run())
  }

  /**
   * Where nothing can be renamed out of the way, the backup is marked unfinished first, so that a
   * deletion cut short leaves a tree that is never taken for a complete backup.
   */
  const deleteMarked = (at: Transport, dir: string, s: SnapshotInfo, commands: string[][], dryRun: boolean): ResultAsync<void, BbError> => {
    const endpoint = at.rsyncEndpoint(`${dir}/`)
    commands.push(['rsync', '-r', '--delete', `--include=/${s.name}`, `--include=/${s.name}/**`, '--exclude=*', '<empty directory>/', endpoint.spec])
    if (dryRun) return okAsync(undefined)
    return changeFiles(at, dir, { write: [{ path: markerFile(s.name), data: `${JSON.stringify({ deleting: new Date().toISOString() })}\n` }] })
      .andThen(() => at.remove(s.path, { recursive: true }))
      .andThen(() => changeFiles(at, dir, { remove: [recordFile(s.name), markerFile(s.name)] }))
  }

  /** a daemon module at either end refused an option of the run (its `refuse options`): what it is, and the fix */
  const refusedByDaemon = (r: { readonly exitCode: number; readonly stderr: string }, ...ends: readonly Location[]): { readonly message: string; readonly hint: string } | undefined => {
    const option = r.exitCode === 0 ? undefined : daemonRefusedOption(r.stderr)
    const daemon = ends.find((l) => l.kind === 'rsyncd')
    return option === undefined || daemon?.kind !== 'rsyncd' ? undefined : refusedOptionText(option, daemon)
  }

  const restore = (input: RestoreInput): ResultAsync<{ readonly commands: readonly (readonly string[])[] }, BbError> =>
    new ResultAsync((async (): Promise<Result<{ readonly commands: readonly (readonly string[])[] }, BbError>> => {
      const inside = backupSubpath(input.subpath)
      if (inside.isErr()) return err(inside.error)
      const sub = inside.value
      const dest = input.to.location.path
      const from = sub === '' ? input.snapshot.path : join(input.snapshot.path, sub)
      // a whole backup fills dest; one path lands as dest/<its name>
      const landing = sub === '' ? dest : join(dest, posix.basename(sub))
      if (sub !== '') {
        const found = await findInBackup(input.from, input.snapshot.path, sub, input.snapshot.name)
        if (found.isErr()) return err(found.error)
      }
      const into = await restoreDirectory(input.to)
      if (into.isErr()) return err(into.error)
      const there = await input.to.stat(landing)
      if (there.isErr()) return err(there.error)
      const occupied = there.value === undefined ? false : sub !== '' || there.value.kind !== 'directory' || (await input.to.list(landing)).unwrapOr(['?']).length > 0
      if (occupied) {
        const where = formatLocation({ ...input.to.location, path: landing })
        return err(bbError('ALREADY_EXISTS', `${where} already exists${sub === '' ? ' and is not empty' : ''}; restore never overwrites`, 'restore into a new or empty directory, then move what you need', { path: where }))
      }
      const runner = rsyncHost(input.from, input.to)
      if (runner.isErr()) return err(runner.error)
      const src = input.from.rsyncEndpoint(sub === '' ? `${from}/` : from)
      const dst = input.to.rsyncEndpoint(`${dest}/`)
      const onProgress = input.onProgress
      const argv = [
        'rsync', '-a', '--sparse', ...(preserveAll ? ['-H', '-A', '-X', '--numeric-ids'] : []), ...(input.dryRun ? ['--dry-run'] : []), ...(onProgress === undefined ? [] : ['--info=progress2']),
        ...wayFlags(input.from, input.to), ...src.options, ...dst.options, src.spec, dst.spec,
      ]
      if (input.dryRun) return ok({ commands: [argv] })
      const made = await input.to.mkdir(dest, { recursive: true })
      if (made.isErr()) return err(made.error)
      let lastProgress = 0
      const ran = await execBetween(runner.value, argv, {
        ...endpointIo(src, dst, input.signal),
        ...(onProgress === undefined ? {} : {
          onStdoutLine: (line: string) => {
            const p = progress2(line)
            if (p === undefined || Date.now() - lastProgress < 250) return
            lastProgress = Date.now()
            onProgress(p)
          },
        }),
      })
      // what it copied stays (a restore deletes nothing), and a restore again would refuse the directory as not empty: say so
      const landed = formatLocation({ ...input.to.location, path: landing })
      const again = `delete ${landed} and restore again (restore writes only into a new or empty directory)`
      const partly = (e: BbError, hint: string): BbError => bbError(e.code, `${e.message}; ${landed} holds part of ${input.snapshot.name}`, hint, e.details)
      if (ran.isErr()) return err(partly(ran.error, ran.error.code === 'CANCELLED' ? again : `${ran.error.hint}; then ${again}`))
      const refused = refusedByDaemon(ran.value, input.from.location, input.to.location)
      if (refused !== undefined) return err(partly(bbError('UNSUPPORTED', refused.message, refused.hint, { argv, stderr: ran.value.stderr }), `${refused.hint}; then ${again}`))
      if (ran.value.exitCode !== 0) return err(partly(bbError('COMMAND_FAILED', `rsync failed to restore (exit ${ran.value.exitCode})`, '', { argv, stderr: ran.value.stderr }), `see the end of stderr for why; then ${again}`))
      return ok({ commands: [argv] })
    })())

  const verify = (input: VerifyInput): ResultAsync<VerifyOutcome, BbError> => {
    const runner = rsyncHost(input.source, input.target)
    if (runner.isErr()) return errAsync(runner.error)
    const src = input.source.rsyncEndpoint(`${input.source.location.path.replace(/\/+$/, '')}/`)
    const dst = input.target.rsyncEndpoint(`${input.snapshot.path}/`)
    return ResultAsync.fromSafePromise(ownBackups(input.source, input.target)).andThen((leaveOut) => {
      const argv = ['rsync', ...copyFlags(), ...leaveOut, '--delete', '--dry-run', '--checksum', '--itemize-changes', '--out-format=%i %n', ...src.options, ...dst.options, src.spec, dst.spec]
      return execBetween(runner.value, argv, endpointIo(src, dst, input.signal)).map((r) => ({ argv, r }))
    }).andThen(({ argv, r }) => {
      if (r.exitCode !== 0 && r.exitCode !== 24) return err(bbError('COMMAND_FAILED', `rsync failed to compare (exit ${r.exitCode})`, 'see the end of stderr', { argv, stderr: r.stderr }))
      const differences = r.stdout.split('\n').filter((l) => l.trim() !== '').map(itemizedLine)
      const notes = [
        'content compared by checksum with the source as it is now',
        ...(differences.length === 0 ? [] : ["each difference is rsync's itemized change (rsync(1), --itemize-changes): >f a file whose content or attributes differ (c checksum, s size, t time), cd+ or >f+++ only in the source, *deleting only in the backup; what changed in the source since the backup shows up too"]),
      ]
      return ok({ snapshot: input.snapshot.name, differences: differences.slice(0, 200), differenceCount: differences.length, notes })
    })
  }

  /**
   * What changed from one backup to another: what `rsync -an --delete TO/ FROM/` would do to make
   * FROM into TO, run where both are (nothing is written: -n). Unchanged files are hard links of
   * each other, and rsync's quick check (size and time) passes them by.
   */
  const diff = (input: DiffInput): ResultAsync<readonly DiffEntry[], BbError> => {
    const { at, from, to, signal } = input
    if (at.filesOnly === true) {
      return errAsync(bbError('UNSUPPORTED', `${formatLocation(at.location)} is an rsync daemon's module: rsync cannot compare two of its directories from here`,
        "run bbackup diff on the server, on the module's directory", { at: formatLocation(at.location) }))
    }
    const argv = ['rsync', '-an', ...(preserveAll ? ['-A', '-X'] : []), '--delete', '--out-format=%i %l %n', `${to.path}/`, `${from.path}/`]
    return at.exec(argv, signal === undefined ? {} : { signal }).andThen((r) => {
      // 24: a file vanished while rsync looked, of a backup that was being deleted
      if (r.exitCode !== 0 && r.exitCode !== 24) {
        return err(bbError('COMMAND_FAILED', `rsync could not compare ${from.name} with ${to.name} at ${formatLocation(at.location)} (exit ${r.exitCode})`, 'see the end of its stderr', { argv, stderr: r.stderr }))
      }
      return ok(parseItemizedDiff(r.stdout))
    })
  }

  /**
   * rsnapshot's `du`: one `du -s` over the backups, newest first, run where they are. du counts a
   * file hard-linked into several of them once, in the first it meets it in.
   */
  const diskUsage: NonNullable<Driver['diskUsage']> = ({ at, snapshots, signal }) => {
    if (at.filesOnly === true) {
      return errAsync(bbError('UNSUPPORTED', `${formatLocation(at.location)} is an rsync daemon's module: du cannot run there from here`,
        "run bbackup list --sizes on the server, on the module's directory", { at: formatLocation(at.location) }))
    }
    const newestFirst = [...snapshots].reverse()
    const argv = ['du', '-s', '-B1', '--', ...newestFirst.map((s) => s.path)]
    return at.exec(argv, signal === undefined ? {} : { signal }).andThen((r) => {
      const sizes = new Map<string, number>()
      for (const line of r.stdout.split('\n')) {
        const tab = line.indexOf('\t')
        const named = newestFirst.find((s) => s.path === line.slice(tab + 1))
        if (tab > 0 && named !== undefined) sizes.set(named.name, Number(line.slice(0, tab)))
      }
      // a file du could not read makes it exit 1 and count too little: no sizes rather than wrong ones
      if (r.exitCode !== 0 || sizes.size !== newestFirst.length) {
        return err(bbError('COMMAND_FAILED', `du could not size the backups at ${formatLocation(at.location)} (exit ${r.exitCode})`, 'see the end of its stderr: du must read every directory of the backups, as root does', { argv, stderr: r.stderr }))
      }
      return ok({ bytes: sizes, counted: 'newest-first' as const, total: [...sizes.values()].reduce((a, b) => a + b, 0) })
    })
  }

  return { name: 'rsync', snapshotsSource: false, probe, listSnapshots, lastMade, sourceName: (source) => sourceNameOf(source.location), partialPath, transfer, recover, deleteSnapshots, restore, verify, diff, diskUsage }
}

/**
 * `serverPublishes` needs targets whose server publishes: rsync daemon modules (`filesOnly`),
 * whose post-xfer exec runs `bbackup snapshot`; anything else would keep unfinished copies forever.
 */
export const serverCanPublish = (targets: readonly Transport[]): Result<void, BbError> => {
  const other = targets.find((t) => t.filesOnly !== true)
  return other === undefined ? ok(undefined) : err(bbError('INVALID_OPTIONS', `the backup stage alone (-b) leaves publishing to an rsync daemon's post-xfer exec, and ${other.location.path} is not an rsync daemon module`,
    'drop -b: bbackup publishes and rotates there itself; -b is for a daemon module whose post-xfer exec runs bbackup snapshot (bbackup doctor rsyncd --server-side)'))
}

/**
 * record and `latest`, then the marker removed (the commit point), in one round trip where the
 * transport can; then what an earlier run left, which this backup linked from, is removed with its
 * marker. A crash before the marker is gone leaves `latest` at a backup that is complete but still
 * marked: the next run links from it and replaces it.
 */
export const publishMarked = (target: Transport, p: { dir: string; snapshot: string; record: BackupRecord; resumedFrom: string | undefined }): ResultAsync<string | undefined, BbError> => {
  const write = [{ path: recordFile(p.snapshot), data: `${JSON.stringify(p.record, null, 2)}\n` }]
  const remove = [markerFile(p.snapshot)]
  return changeFiles(target, p.dir, { write, link: [{ path: 'latest', target: p.snapshot }], remove }).map((): string | undefined => undefined)
    // a `latest` that is not a link (rsync-system-backup's mirror) is left alone: published without it
    .orElse((e) => latestNotALink(target, p.dir).andThen((warning) => (warning === undefined ? errAsync(e) : changeFiles(target, p.dir, { write, remove }).map(() => warning))))
    .andThen((warning) => {
      const old = p.resumedFrom
      if (old === undefined) return okAsync(warning)
      return target.remove(old, { recursive: true }).andThen(() => target.remove(markerPath(p.dir, posix.basename(old)))).map(() => warning)
    })
}

/**
 * Small files written, then others removed, under `dir`: in one round trip where the transport
 * can ({@link Transport.changeFiles}: a daemon module), else one operation at a time in that order.
 */
const changeFiles = (at: Transport, dir: string, changes: FileChanges): ResultAsync<void, BbError> => {
  if (at.changeFiles !== undefined) return at.changeFiles(dir, changes)
  const writes = (changes.write ?? []).map((w) => (): ResultAsync<void, BbError> =>
    (posix.dirname(w.path) === '.' ? okAsync(undefined) : at.mkdir(join(dir, posix.dirname(w.path)), { recursive: true })).andThen(() => at.writeFileAtomic(join(dir, w.path), w.data)))
  const links = (changes.link ?? []).map((l) => (): ResultAsync<void, BbError> => at.symlink(l.target, join(dir, l.path)))
  const removes = (changes.remove ?? []).map((path) => (): ResultAsync<void, BbError> => at.remove(join(dir, path)))
  return [...writes, ...links, ...removes].reduce((done, step) => done.andThen(step), okAsync<void, BbError>(undefined))
}

/**
 * A backup's health and source from its record. An adopted backup (no record) is taken as healthy,
 * as the tool that made it did, and names no source; an unreadable record says nothing against a
 * backup that was published.
 */
const recordSays = (record: string | undefined): Pick<SnapshotInfo, 'health' | 'madeFrom'> => {
  if (record === undefined) return { health: 'ok' }
  try {
    const { health, source } = JSON.parse(record) as Partial<BackupRecord>
    return { health: health === 'warnings' || health === 'errors' ? health : 'ok', ...(typeof source === 'string' && source !== '' ? { madeFrom: source } : {}) }
  } catch {
    return { health: 'ok' }
  }
}

/** `--stats --no-human-readable`: files and bytes actually transferred. */
const parseStats = (text: string): { bytes: number; files: number } => ({
  bytes: Number(/Total transferred file size: (\d+)/.exec(text)?.[1] ?? 0),
  files: Number(/Number of regular files transferred: (\d+)/.exec(text)?.[1] ?? 0),
})

