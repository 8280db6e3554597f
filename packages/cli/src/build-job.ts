import { readdir, stat } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { bbError, defaultStateDir, formatLocation, jobId, parseLocation, parseSnapshotName, readJournal, type BbError, type Job, type Transport } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import type { DriverChoice, JobSpec } from './config.js'

/**
 * What a source is, to pick a driver when none is named (DESIGN.md: detected from the source).
 * A source that cannot be read is left to the rsync driver's probe, which says what is wrong.
 */
const detectDriver = async (source: string): Promise<DriverChoice> => {
  const s = await stat(source).catch(() => undefined)
  if (s?.isBlockDevice() === true || s?.isFile() === true) return 'block'
  // a btrfs subvolume's root directory has inode 256
  if (s?.isDirectory() === true && s.ino === 256) return 'btrfs'
  return 'rsync'
}

/**
 * Which driver made the backups in a target directory, for restore: rsync keeps its records in
 * `.bbackup/`; btrfs backups are subvolumes (inode 256).
 */
export const detectBackupDriver = async (target: string): Promise<DriverChoice> => {
  if ((await stat(join(target, '.bbackup')).catch(() => undefined))?.isDirectory() === true) return 'rsync'
  const entries = await readdir(target, { withFileTypes: true }).catch(() => [])
  for (const e of entries) {
    if (!e.isDirectory() || parseSnapshotName(e.name) === undefined) continue
    if ((await stat(join(target, e.name)).catch(() => undefined))?.ino === 256) return 'btrfs'
  }
  return 'rsync'
}

const unavailable = (driver: DriverChoice): BbError =>
  bbError('UNSUPPORTED', `the ${driver} driver is not available in this version of bbackup`, 'back up a directory with the rsync driver instead')

/**
 * Turns a job spec into an engine Job. Drivers and transports are imported here, when a command
 * runs, so that `bbackup --help` loads none of them.
 */
export const buildJob = async (spec: JobSpec, options: { readonly configStateDir?: string; readonly cwd: string }): Promise<Result<Job, BbError>> => {
  const source = parseLocation(spec.source, { cwd: options.cwd })
  if (source.isErr()) return err(source.error)
  const targets = []
  for (const t of spec.targets) {
    const parsed = parseLocation(t, { cwd: options.cwd })
    if (parsed.isErr()) return err(parsed.error)
    targets.push(parsed.value)
  }
  for (const location of [source.value, ...targets]) {
    if (location.kind !== 'local') {
      return err(bbError('UNSUPPORTED', `${location.kind === 'ssh' ? 'ssh' : 'rsync daemon'} locations are not available in this version of bbackup`, 'run bbackup on the machine that has the disk, with local paths'))
    }
  }
  const driverName = spec.driver ?? (await detectDriver(source.value.path))
  if (driverName === 'block') return err(unavailable(driverName))
  const [{ localTransport }, driver] = await Promise.all([
    import('@bb/transports/local'),
    driverName === 'btrfs'
      ? import('@bb/drivers/btrfs').then(({ btrfsDriver }) => btrfsDriver({
        ...(spec.snapshotFolder === undefined ? {} : { snapshotFolder: spec.snapshotFolder }),
        ...(spec.sendProtocol === undefined ? {} : { sendProtocol: spec.sendProtocol }),
        ...(spec.compressedData === undefined ? {} : { compressedData: spec.compressedData }),
      }))
      : import('@bb/drivers/rsync').then(({ rsyncDriver }) => rsyncDriver({
        excludes: spec.exclude, excludeFrom: spec.excludeFrom, oneFileSystem: spec.oneFileSystem, acceptPartial: spec.acceptPartial, extraArgs: spec.rsyncOptions,
      })),
  ])
  const sourceTransport: Transport = localTransport(source.value.path)
  const targetTransports = targets.map((t) => localTransport(t.path))
  // btrfs snapshots live with the source: jobs of one source share its lock, journal and pins, whatever their targets
  const id = spec.name ?? jobId(sourceTransport, driverName === 'btrfs' ? [] : targetTransports)
  const stateDirectory = spec.stateDir !== undefined ? resolve(options.cwd, spec.stateDir) : (options.configStateDir === undefined ? defaultStateDir(id) : join(options.configStateDir, 'jobs', id))
  // several sources can share a target: btrfs names say whose they are (btrbk does the same)
  const prefix = spec.prefix ?? (driverName === 'btrfs' ? `${basename(source.value.path) || 'root'}.` : undefined)
  return ok({
    driver,
    source: sourceTransport,
    targets: targetTransports,
    state: { transport: localTransport(stateDirectory), directory: stateDirectory },
    ...(prefix === undefined ? {} : { prefix }),
    retention: {
      ...(spec.keepBackups === undefined ? {} : { target: spec.keepBackups }),
      ...(spec.keepSnapshots === undefined ? {} : { source: spec.keepSnapshots }),
      ...(spec.timeZone === undefined ? {} : { timeZone: spec.timeZone }),
    },
  })
}

/**
 * btrfs-backup's `--locked-dests`: the job's targets plus every target the journal has a pending
 * transfer to, so that each is retried.
 */
export const withJournalledTargets = async (job: Job): Promise<Result<Job, BbError>> => {
  const journal = await readJournal(job.state.transport, join(job.state.directory, 'journal.json'))
  if (journal.isErr()) return err(journal.error)
  const known = new Set(job.targets.map((t) => formatLocation(t.location)))
  const { localTransport } = await import('@bb/transports/local')
  const added: Transport[] = []
  for (const entry of journal.value.entries) {
    if (known.has(entry.target)) continue
    const location = parseLocation(entry.target, { cwd: '/' })
    if (location.isErr()) return err(location.error)
    if (location.value.kind !== 'local') return err(bbError('UNSUPPORTED', `the journal names ${entry.target}, which is not a local path`, 'give it on the command line when remote targets are available'))
    known.add(entry.target)
    added.push(localTransport(location.value.path))
  }
  return ok({ ...job, targets: [...job.targets, ...added] })
}
