import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, compareSnapshots, parseSnapshotName, type BbError, type RecoverAction, type SnapshotInfo, type TransferOutcome, type Transport } from '@bb/core'
import { sendReceive } from './pipeline.js'
import type { StreamPlan, StreamWay } from '../stream-way.js'
import { chainStep, streamUuid } from './raw.js'

const join = posix.join

/** Targets whose send streams go to a command of yours (btrfs-backup's `shell://` storage). */
export interface PipeTargetOptions {
  /**
   * each target: its ledger, a directory on this host (as the target's location prints) where
   * bbackup records what the command took, and the `sh -c` command that reads a stream on stdin
   */
  readonly targets: readonly { readonly ledger: string; readonly command: string }[]
  /** start a new chain with a full stream after this many incrementals */
  readonly fullEvery?: number
}

/** One ledger entry, `<ledger>/<snapshot>.json`: the command took this stream and exited 0. */
export interface PipeEntry {
  readonly format: 'bbackup-pipe/1'
  readonly snapshot: string
  /** the name the command was given for the stream (`BBACKUP_FILE`) */
  readonly file: string
  readonly command: string
  /** the stream's subvolume uuid: the received uuid a `btrfs receive` of it gets */
  readonly uuid: string
  readonly parent?: string
  readonly parentUuid?: string
  /** 0 for a full stream, else how many incrementals lead back to one */
  readonly chain: number
  readonly streamBytes: number
  readonly deliveredAt: string
  readonly sendFlags: readonly string[]
}

export interface PipeDeps {
  readonly options: PipeTargetOptions
  readonly stallMs: number
  readonly sendFlags: (source: Transport, signal: AbortSignal | undefined) => Promise<Result<string[], BbError>>
  readonly planStream: (from: Transport, to: Transport, signal: AbortSignal | undefined) => Promise<StreamPlan>
  readonly shown: (sendArgv: readonly string[], receiveArgv: readonly string[], way: StreamWay) => string[]
}

const ENTRY = /^(.+)\.json$/

const parseEntry = (text: string | undefined, snapshot: string): PipeEntry | undefined => {
  if (text === undefined) return undefined
  try {
    const e = JSON.parse(text) as Partial<PipeEntry>
    return e.format === 'bbackup-pipe/1' && e.snapshot === snapshot && typeof e.uuid === 'string' && typeof e.chain === 'number' ? e as PipeEntry : undefined
  } catch {
    return undefined
  }
}

/**
 * Pipe targets: each snapshot's send stream is the stdin of `sh -c COMMAND` on this host, with
 * the stream's name, parent and uuids in its environment; exit 0 means the command has it, and
 * bbackup records that in the target's ledger. Incrementals build on what the ledger says the
 * command took, as with raw targets. What the command stored is the user's: bbackup never reads,
 * checks or deletes it; a prune forgets ledger entries only.
 */
export const pipeStore = (deps: PipeDeps) => {
  const commandOf = (t: Transport): string => deps.options.targets.find((p) => p.ledger === t.location.path)?.command ?? ''

  const probe = async (target: Transport): Promise<Result<void, BbError>> => {
    const dir = target.location.path
    if (target.location.kind !== 'local') return err(bbError('INVALID_OPTIONS', `a pipe target's ledger must be on this host, not ${dir}`, 'this is a bug in bbackup; please report it'))
    const made = await target.mkdir(dir, { recursive: true })
    if (made.isErr()) return err(made.error)
    return ok(undefined)
  }

  const readEntry = async (at: Transport, snapshot: string): Promise<Result<PipeEntry | undefined, BbError>> =>
    (await at.readFile(join(at.location.path, `${snapshot}.json`))).map((text) => parseEntry(text, snapshot))

  /** The streams the command took, oldest first, as the ledger has them. */
  const list = async (at: Transport): Promise<Result<SnapshotInfo[], BbError>> => {
    const dir = at.location.path
    const entries = await at.list(dir)
    if (entries.isErr()) return entries.error.code === 'NOT_FOUND' ? ok([]) : err(entries.error)
    const found: (SnapshotInfo & { readonly sequence: number })[] = []
    for (const e of entries.value) {
      const name = e.kind === 'file' ? ENTRY.exec(e.name)?.[1] : undefined
      const parsed = name === undefined ? undefined : parseSnapshotName(name)
      if (name === undefined || parsed === undefined) continue
      const entry = await readEntry(at, name)
      if (entry.isErr()) return err(entry.error)
      if (entry.value === undefined) continue
      found.push({
        name, time: parsed.time, sequence: parsed.sequence, complete: true, health: 'ok', path: join(dir, e.name),
        identity: { uuid: `pipe-${entry.value.uuid}`, receivedUuid: entry.value.uuid, readOnly: true },
        ...(entry.value.parent === undefined ? {} : { dependsOn: entry.value.parent }),
      })
    }
    return ok(found.sort((a, b) => compareSnapshots({ name: a.name, time: a.time ?? new Date(0), sequence: a.sequence }, { name: b.name, time: b.time ?? new Date(0), sequence: b.sequence }))
      .map(({ sequence: _, ...s }) => s))
  }

  /** `btrfs send | sh -c COMMAND` with the stream's facts in the environment, then the ledger entry. */
  const transfer = async (input: {
    readonly source: Transport; readonly target: Transport; readonly snapshot: string; readonly sent: SnapshotInfo
    readonly parent: SnapshotInfo | undefined; readonly dryRun: boolean; readonly signal: AbortSignal | undefined; readonly onBytes: (bytes: number) => void
  }): Promise<Result<TransferOutcome, BbError>> => {
    const { source, target, snapshot, sent, signal } = input
    const command = commandOf(target)
    const parentEntry = input.parent === undefined ? ok(undefined) : await readEntry(target, input.parent.name)
    if (parentEntry.isErr()) return err(parentEntry.error)
    const { parent, chain, warnings } = chainStep(input.parent, parentEntry.value?.chain, deps.options.fullEvery)
    const uuid = streamUuid(sent)
    if (uuid === undefined) return err(bbError('COMMAND_FAILED', `the snapshot ${sent.path} has no uuid bbackup could read`, 'run again; if it repeats, check btrfs subvolume show on it', { path: sent.path }))
    const parentUuid = streamUuid(parent)
    const flags = await deps.sendFlags(source, signal)
    if (flags.isErr()) return err(flags.error)
    const sendArgv = ['btrfs', 'send', '-q', ...flags.value, ...(parent === undefined ? [] : ['-p', parent.path]), sent.path]
    const file = `${snapshot}.btrfs`
    const environment = {
      BBACKUP_SNAPSHOT: snapshot, BBACKUP_FILE: file, BBACKUP_MODE: parent === undefined ? 'full' : 'incremental',
      BBACKUP_PARENT: parent?.name ?? '', BBACKUP_UUID: uuid, BBACKUP_PARENT_UUID: parentUuid ?? '', BBACKUP_CHAIN: String(chain),
    }
    // env(1) sets the variables without a shell reading them; only the command itself is sh's
    const commandArgv = ['env', ...Object.entries(environment).map(([k, v]) => `${k}=${v}`), 'sh', '-c', command]
    const way = await deps.planStream(source, target, signal)
    warnings.push(...way.warnings)
    const mode = parent === undefined ? 'full' as const : 'incremental' as const
    const commands = [deps.shown(sendArgv, commandArgv, way), ['write', join(target.location.path, `${snapshot}.json`)]]
    const outcome = (bytes: number): TransferOutcome => ({ snapshot, mode, ...(parent === undefined ? {} : { parent: parent.name }), bytes, files: 0, warnings, commands })
    if (input.dryRun) return ok(outcome(0))
    const [piped] = await sendReceive({ source, sendArgv, receivers: [{ target, receiveArgv: commandArgv, what: `the pipe command (${command})` }], signal, stallMs: deps.stallMs, way, onBytes: input.onBytes })
    if (piped === undefined) return err(bbError('COMMAND_FAILED', 'the pipe command gave no result', 'run again'))
    if (piped.isErr()) {
      const details = piped.error.details
      // the command's own failure, not btrfs's: its stderr is the user's to read, and the stream comes again next run
      if (Array.isArray(details?.argv) && details.argv[0] === 'env' && typeof details.exitCode === 'number') {
        return err(bbError('COMMAND_FAILED', `the pipe command (${command}) failed (exit ${details.exitCode})`,
          'see the end of its stderr; the stream is sent again on the next run, under the same BBACKUP_FILE (the command should replace what it left)', details))
      }
      return err(piped.error)
    }
    const entry: PipeEntry = {
      format: 'bbackup-pipe/1', snapshot, file, command, uuid,
      ...(parent === undefined ? {} : { parent: parent.name, ...(parentUuid === undefined ? {} : { parentUuid }) }),
      chain, streamBytes: piped.value.bytes, deliveredAt: new Date().toISOString(), sendFlags: flags.value,
    }
    const wrote = await target.writeFileAtomic(join(target.location.path, `${snapshot}.json`), `${JSON.stringify(entry, null, 2)}\n`)
    if (wrote.isErr()) return err(wrote.error)
    return ok(outcome(piped.value.bytes))
  }

  /** Nothing of bbackup's is left by a pipe that failed: the ledger entry comes only after exit 0. */
  const recover = async (): Promise<Result<RecoverAction, BbError>> => ok('gone')

  /** A prune forgets ledger entries; what the command stored is the user's to expire. */
  const forget = async (at: Transport, snapshots: readonly SnapshotInfo[], dryRun: boolean, signal: AbortSignal | undefined): Promise<Result<readonly (readonly string[])[], BbError>> => {
    if (snapshots.length === 0) return ok([])
    for (const s of snapshots) {
      if (posix.dirname(s.path) !== at.location.path || !ENTRY.test(posix.basename(s.path))) return err(bbError('INVALID_OPTIONS', `refusing to remove ${s.path}: not a ledger entry`, 'this is a bug in bbackup; please report it'))
    }
    const argv = ['rm', '-f', '--', ...snapshots.map((s) => s.path)]
    if (dryRun) return ok([argv])
    const r = await at.exec(argv, signal === undefined ? {} : { signal })
    if (r.isErr()) return err(r.error)
    if (r.value.exitCode !== 0) return err(bbError('COMMAND_FAILED', `removing ledger entries failed (exit ${r.value.exitCode})`, 'see the end of stderr', { argv, stderr: r.value.stderr }))
    return ok([argv])
  }

  const unreadable = (what: string, t: Transport): BbError =>
    bbError('UNSUPPORTED', `bbackup cannot ${what} a pipe target (${commandOf(t)}): the streams are wherever that command put them`,
      'feed them back yourself, full first, each into btrfs receive DIR (the ledger in the state directory lists the chain: bbackup list)')

  return { probe, list, transfer, recover, forget, unreadable }
}
