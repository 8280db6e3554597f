import { posix } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import {
  bbError, compareSnapshots, parseSnapshotName, type BbError, type RecoverAction, type RestoreInput, type SnapshotInfo, type Transport, type TransferOutcome,
  type VerifyOutcome,
} from '@bb/core'
import { sendReceive, type StreamFilter } from './pipeline.js'
import type { StreamPlan, StreamWay } from '../stream-way.js'
import { refuseExisting } from './subvolume.js'
import { privately } from '../privately.js'
import { targetInSource } from '../target-in-source.js'

const join = posix.join

/** How a raw target stores its stream files. */
export interface RawTargetOptions {
  /** the targets (as their locations print, e.g. `/mnt/usb/raw` or `ssh://nas/srv/raw`) that get stream files instead of `btrfs receive` */
  readonly targets: readonly string[]
  /** `zstd` compresses each stream file (`<name>.btrfs.zst`; zstd needed where the files are); default `none` */
  readonly compress?: 'zstd' | 'none'
  /**
   * start a new chain with a full stream after this many incrementals: without it a chain grows
   * for ever, and retention can delete nothing a kept stream needs
   */
  readonly fullEvery?: number
  /** encrypt each stream file with gpg on this host (after compression) before it goes to the target */
  readonly encrypt?: RawEncryption
}

/**
 * gpg public-key encryption of the stream files (btrbk's `raw_target_encrypt gpg`): the target and
 * whatever carries the files see only ciphertext, and the host that backs up needs only the public
 * keys. Restoring needs a secret key of one of the recipients where bbackup runs.
 */
export interface RawEncryption {
  readonly method: 'gpg'
  /** the public keys to encrypt to (key ids, fingerprints, e-mail addresses), each from the keyring; the secret key of any one decrypts */
  readonly recipients: readonly string[]
  /** a keyring file to take the public keys from instead of the user's (`gpg --no-default-keyring --keyring FILE`) */
  readonly keyring?: string
}

/** The sidecar of a stream file, `<file>.info`, written last: a stream file without it is unfinished. */
export interface RawInfo {
  readonly format: 'bbackup-raw/1'
  /** the snapshot's name; `btrfs receive` of the stream creates a subvolume of this name */
  readonly snapshot: string
  /** the stream file's name, beside the sidecar */
  readonly file: string
  readonly compress: 'zstd' | 'none'
  /** gpg: the file is the (compressed) stream encrypted to `recipients`; absent: not encrypted */
  readonly encrypt?: 'gpg'
  readonly recipients?: readonly string[]
  /** the stream's subvolume uuid: the received uuid a `btrfs receive` of it gets */
  readonly uuid: string
  /** an incremental stream: the snapshot (and its stream uuid) it must be received on top of */
  readonly parent?: string
  readonly parentUuid?: string
  /** 0 for a full stream, else how many incrementals lead back to it */
  readonly chain: number
  /** bytes of the stream, and of the file (compressed) */
  readonly streamBytes: number
  readonly size: number
  readonly sha256: string
  readonly createdAt: string
  readonly sendFlags: readonly string[]
}

/** What the raw store needs from the btrfs driver around it. */
export interface RawDeps {
  readonly options: RawTargetOptions
  readonly stallMs: number
  /** `--proto`/`--compressed-data` the source can send (the stream is received later, elsewhere) */
  readonly sendFlags: (source: Transport, signal: AbortSignal | undefined) => Promise<Result<string[], BbError>>
  /** deletes an unfinished receive at a path (the restore's cleanup) */
  readonly removeGarbled: (at: Transport, path: string) => Promise<Result<unknown, BbError>>
  /** how a stream goes from one host to the other (compressed, rate-limited), with the warnings of its plan */
  readonly planStream: (from: Transport, to: Transport, signal: AbortSignal | undefined) => Promise<StreamPlan>
  /** a restore's destination checked (a directory on btrfs), and made when `make` */
  readonly restoreDestination: (to: Transport, make: boolean) => Promise<Result<void, BbError>>
  /** a pipeline as the report shows it */
  readonly shown: (sendArgv: readonly string[], receiveArgv: readonly string[], way: StreamWay) => string[]
}

const STREAM = /^(.+)\.btrfs(\.zst)?(\.gpg)?$/
const PART = /^(.+)\.btrfs(\.zst)?(\.gpg)?\.part$/

/** Whether a file name is a raw target's sidecar (`NAME.btrfs[.zst][.gpg].info`): what tells a directory of stream files. */
export const isRawSidecar = (name: string): boolean => name.endsWith('.info') && STREAM.test(name.slice(0, -'.info'.length))

/** gpg without prompts: a secret key with a passphrase must be unlocked in gpg-agent beforehand */
const GPG = ['gpg', '--batch', '--no-tty', '--quiet']
const gpgKeyring = (e: RawEncryption): string[] => (e.keyring === undefined ? [] : ['--no-default-keyring', '--keyring', e.keyring])
/**
 * stdin to stdout, to every recipient. `--trust-model always`: the keys were named for this on
 * purpose, so they need no signatures in the web of trust; no compression of gpg's own (zstd's, if any, came first).
 */
export const gpgEncryptArgv = (e: RawEncryption): string[] =>
  [...GPG, ...gpgKeyring(e), '--trust-model', 'always', '--compress-algo', 'none', '--encrypt', ...e.recipients.flatMap((r) => ['--recipient', r])]
const GPG_DECRYPT = [...GPG, '--decrypt']
const ZSTD_COMPRESS = ['zstd', '-q', '-T0', '-c']
const ZSTD_DECOMPRESS = ['zstd', '-dcq']

/** what gpg says when none of the file's recipients' secret keys is here */
const NO_SECRET_KEY = /No secret key/

/**
 * Why gpg here could not decrypt a file when it says "No secret key": none of the recipients'
 * secret keys is here, or one is, locked by a passphrase that gpg, without prompts, could not ask for.
 */
const secretKeyHere = async (here: Transport, info: RawInfo): Promise<boolean> => {
  for (const recipient of info.recipients ?? []) {
    const listed = await here.exec([...GPG, '--with-colons', '--list-secret-keys', '--', recipient])
    if (listed.isOk() && listed.value.exitCode === 0 && /^sec:/m.test(listed.value.stdout)) return true
  }
  return false
}

/**
 * Why gpg here could not decrypt an encrypted stream, when that is why its read failed (gpg said
 * "No secret key"); undefined for any other failure.
 */
const whyUndecryptable = async (e: BbError, info: RawInfo, here: Transport | undefined): Promise<{ readonly reason: string; readonly hint: string } | undefined> => {
  if (info.encrypt === undefined || here === undefined || !NO_SECRET_KEY.test(String(e.details?.stderr ?? ''))) return undefined
  const to = (info.recipients ?? []).join(', ')
  return await secretKeyHere(here, info)
    ? { reason: `the secret key of ${to} is here but locked, and gpg runs without prompts`, hint: 'unlock the key in gpg-agent first (gpg -d of any file encrypted to it asks for the passphrase), then run again' }
    : { reason: `gpg on this host has no secret key of ${to}`, hint: 'import one of those secret keys here (gpg --import), or do this on the host that has it' }
}

/** How a stream travels: ciphertext does not compress, so an encrypted one goes as it is (compressed before gpg, if at all), at the rate limit. */
const wayOf = (planned: StreamWay, encrypted: boolean): StreamWay => (!encrypted ? planned : planned.rateLimit === undefined ? {} : { rateLimit: planned.rateLimit })

/** Where gpg runs: this host, as the source or the target of the stream (the other may be anywhere). */
const hereOf = (a: Transport, b: Transport): Transport | undefined => [a, b].find((t) => t.location.kind === 'local')

const NOT_HERE = (): BbError => bbError('UNSUPPORTED', 'encrypted stream files are encrypted and decrypted by gpg on this host, and neither end of this stream is on it',
  'run bbackup on the host that has the source or the raw target')

const signalOpt = (signal: AbortSignal | undefined): { signal?: AbortSignal } => (signal === undefined ? {} : { signal })

/**
 * Where a stream goes in its chain: incremental on `parent` (itself at `parentChain`), or full, to
 * start a new chain, once `fullEvery` incrementals lead back to a full one.
 */
export const chainStep = (parent: SnapshotInfo | undefined, parentChain: number | undefined, fullEvery: number | undefined): { parent: SnapshotInfo | undefined; chain: number; warnings: string[] } => {
  if (parent === undefined) return { parent: undefined, chain: 0, warnings: [] }
  const chain = (parentChain ?? 0) + 1
  if (fullEvery !== undefined && chain > fullEvery) {
    return { parent: undefined, chain: 0, warnings: [`a new chain starts with a full stream: ${chain - 1} incremental${chain - 1 === 1 ? '' : 's'} since the last full one, up to ${parent.name} (full every ${fullEvery})`] }
  }
  return { parent, chain, warnings: [] }
}

/**
 * Whether `gpg --with-colons --list-keys` names a key that can encrypt: a `pub` record whose key
 * capabilities (field 12) hold `E`, the whole key's, which gpg leaves out when the key or every
 * encryption subkey is revoked, expired or disabled.
 */
export const canEncrypt = (colons: string): boolean =>
  colons.split('\n').some((line) => {
    const fields = line.split(':')
    return fields[0] === 'pub' && (fields[11] ?? '').includes('E') && !['r', 'e', 'd'].includes(fields[1] ?? '')
  })

/** The stream's uuid as `btrfs receive` records it: a snapshot that was itself received keeps its received uuid. */
export const streamUuid = (s: SnapshotInfo | undefined): string | undefined => s?.identity?.receivedUuid ?? s?.identity?.uuid

const parseInfo = (text: string | undefined, file: string): RawInfo | undefined => {
  if (text === undefined) return undefined
  try {
    const info = JSON.parse(text) as Partial<RawInfo>
    if (info.format !== 'bbackup-raw/1' || info.file !== file || typeof info.uuid !== 'string' || typeof info.sha256 !== 'string' || typeof info.size !== 'number') return undefined
    return info as RawInfo
  } catch {
    return undefined
  }
}

/**
 * Marks each complete stream whose chain back to its full stream lacks a link (a parent's stream
 * file missing, or unfinished) as `broken`, with the first missing link named: it cannot be
 * restored, and a new stream on it could not be either.
 * @example
 * withBrokenChains([full, incrementalOnAMissingOne], '/mnt/raw')[1].broken // 'its chain is broken at …'
 */
export const withBrokenChains = (streams: readonly SnapshotInfo[], dir: string): SnapshotInfo[] => {
  const byName = new Map(streams.map((s) => [s.name, s]))
  const why = new Map<string, string | undefined>()
  const brokenOf = (s: SnapshotInfo): string | undefined => {
    if (why.has(s.name)) return why.get(s.name)
    why.set(s.name, undefined) // a loop in the sidecars ends here
    const parent = s.dependsOn === undefined ? undefined : byName.get(s.dependsOn)
    const reason = s.dependsOn === undefined
      ? undefined
      : parent === undefined
        ? `its chain is broken at ${s.dependsOn}, whose stream file is missing at ${dir}`
        : !parent.complete
          ? `its chain is broken at ${s.dependsOn}, whose stream file is unfinished (it has no sidecar) at ${dir}`
          : brokenOf(parent)
    why.set(s.name, reason)
    return reason
  }
  return streams.map((s) => {
    const reason = s.complete ? brokenOf(s) : undefined
    return reason === undefined ? s : { ...s, broken: reason }
  })
}

/**
 * Raw targets: each snapshot's send stream is kept as a file (`<name>.btrfs[.zst]`) with a JSON
 * sidecar (`.info`: uuids, parent, size, sha256) written last, as btrbk's `target raw`. Any
 * filesystem will do, and the target host needs no btrfs. An incremental stream needs its
 * parent's to be restored: listings say so (`dependsOn`), so retention keeps whole chains.
 */
export const rawStore = (deps: RawDeps) => {
  const compress = deps.options.compress ?? 'none'
  const encryption = deps.options.encrypt
  const suffix = `.btrfs${compress === 'zstd' ? '.zst' : ''}${encryption === undefined ? '' : '.gpg'}`
  const fileOf = (name: string): string => `${name}${suffix}`

  /** the writer at the target; an encrypted stream was compressed before gpg, on this host (ciphertext does not compress) */
  const writerArgv = (path: string): string[] => (compress === 'zstd' && encryption === undefined ? ['zstd', '-q', '-T0', '-o', path] : ['dd', `of=${path}`, 'bs=1M', 'status=none'])
  /** what the stream of `snapshot` passes through on this host on its way to the target */
  const writeFilters = (snapshot: string): Omit<StreamFilter, 'at'>[] => (encryption === undefined ? [] : [
    ...(compress === 'zstd' ? [{ argv: ZSTD_COMPRESS, what: `zstd compressing the stream of ${snapshot}` }] : []),
    { argv: gpgEncryptArgv(encryption), what: `gpg encrypting the stream of ${snapshot}` },
  ])
  const readerArgv = (info: RawInfo, path: string): string[] => (info.compress === 'zstd' && info.encrypt === undefined ? ['zstd', '-dcq', '--', path] : ['cat', '--', path])
  /** and on its way back: decrypted on this host, then decompressed */
  const readFilters = (info: RawInfo): Omit<StreamFilter, 'at'>[] => (info.encrypt === undefined ? [] : [
    { argv: GPG_DECRYPT, what: `gpg decrypting ${info.file}` },
    ...(info.compress === 'zstd' ? [{ argv: ZSTD_DECOMPRESS, what: `zstd decompressing ${info.file}` }] : []),
  ])
  const filtersAt = (here: Transport | undefined, filters: readonly Omit<StreamFilter, 'at'>[]): Result<StreamFilter[], BbError> => {
    if (filters.length === 0) return ok([])
    if (here === undefined) return err(NOT_HERE())
    return ok(filters.map((f) => ({ ...f, at: here })))
  }
  /** a pipeline as the report shows it, the filters on this host in the middle */
  const shownWith = (first: readonly string[], filters: readonly StreamFilter[], last: readonly string[], way: StreamWay): string[] =>
    deps.shown([...first, ...filters.flatMap((f) => ['|', ...f.argv])], last, way)

  /** `make`: a missing directory (its parent there) is made, once the checks passed; else (a dry run, a check) it would be */
  const probe = async (target: Transport, source: Transport, signal: AbortSignal | undefined, make: boolean): Promise<Result<void, BbError>> => {
    const dir = target.location.path
    const s = await target.stat(dir)
    if (s.isErr()) return err(s.error)
    if (s.value === undefined) {
      const parent = await target.stat(posix.dirname(dir))
      if (parent.isErr()) return err(parent.error)
      if (parent.value?.kind !== 'directory') {
        return err(bbError('TARGET_UNAVAILABLE', `the raw target ${dir} does not exist, nor does its parent`, 'mount the backup disk, or create the directory (mkdir -p) if this is the right place', { path: dir }))
      }
    } else if (s.value.kind !== 'directory') {
      return err(bbError('TARGET_UNAVAILABLE', `the raw target ${dir} is not a directory`, 'give a directory to keep the stream files in', { path: dir }))
    }
    const inSource = await targetInSource(source, target)
    if (inSource !== undefined) {
      // a subvolume of its own inside the source is left out of the source's snapshots; a directory of it is not (one not made yet would be made on its parent's filesystem)
      const [here, there] = await Promise.all([target.stat(s.value === undefined ? posix.dirname(dir) : dir), source.stat(source.location.path)])
      if (here.isOk() && there.isOk() && here.value !== undefined && here.value.device === there.value?.device) {
        return err(bbError('INVALID_OPTIONS', `the raw target ${dir} is in the source subvolume ${source.location.path}: each stream file would be in the next snapshot, and sent again in the stream after it`,
          `keep the streams outside the source, or make the directory a subvolume of its own (btrfs subvolume create ${dir}), which snapshots of the source leave out`, { path: dir }))
      }
    }
    if (s.value === undefined && make) {
      const made = await target.mkdir(dir)
      if (made.isErr()) return err(made.error)
      // stream files hold all of the source's data: the directory bbackup makes is its owner's only
      const closed = await target.exec(['chmod', '700', dir], signalOpt(signal))
      if (closed.isErr()) return err(closed.error)
    }
    if (encryption !== undefined) return probeEncryption(encryption, hereOf(source, target), signal)
    if (compress === 'zstd') {
      const z = await target.exec(['zstd', '--version'], signalOpt(signal))
      if (z.isErr() && z.error.code !== 'TOOL_MISSING') return err(z.error)
      if (z.isErr() || z.value.exitCode !== 0) {
        return err(bbError('TOOL_MISSING', `zstd is not installed where the raw target ${dir} is`, 'install it there (apt-get install zstd), or store the streams uncompressed (raw compress none)', { path: dir }))
      }
    }
    return ok(undefined)
  }

  /** gpg (and zstd) on this host, and a public key that can encrypt for every recipient: checked before a snapshot is taken */
  const probeEncryption = async (e: RawEncryption, here: Transport | undefined, signal: AbortSignal | undefined): Promise<Result<void, BbError>> => {
    if (here === undefined) return err(NOT_HERE())
    if (e.recipients.length === 0) return err(bbError('INVALID_OPTIONS', 'encrypted stream files need at least one gpg recipient', 'name the public key to encrypt to: --raw-gpg-recipient KEY (raw_gpg_recipients in the config)'))
    for (const [tool, hint] of [['gpg', 'apt-get install gnupg'], ...(compress === 'zstd' ? [['zstd', 'apt-get install zstd']] : [])] as const) {
      const v = await here.exec([tool, '--version'], signalOpt(signal))
      if (v.isErr() && v.error.code !== 'TOOL_MISSING') return err(v.error)
      if (v.isErr() || v.value.exitCode !== 0) return err(bbError('TOOL_MISSING', `${tool} is not installed on this host, which encrypts the stream files`, hint))
    }
    for (const recipient of e.recipients) {
      const argv = [...GPG, ...gpgKeyring(e), '--with-colons', '--list-keys', '--', recipient]
      const listed = await here.exec(argv, signalOpt(signal))
      if (listed.isErr()) return err(listed.error)
      if (!canEncrypt(listed.value.stdout)) {
        return err(bbError('INVALID_OPTIONS', `gpg has no public key for ${JSON.stringify(recipient)} that can encrypt${e.keyring === undefined ? '' : ` in the keyring ${e.keyring}`}`,
          `import the recipient's public key (gpg --import KEY.asc${e.keyring === undefined ? '' : ` --no-default-keyring --keyring ${e.keyring}`}) or name another key; gpg --list-keys shows what is there`, { argv, stderr: listed.value.stderr }))
      }
    }
    return ok(undefined)
  }

  const readInfo = async (at: Transport, dir: string, file: string): Promise<Result<RawInfo | undefined, BbError>> =>
    (await at.readFile(join(dir, `${file}.info`))).map((text) => parseInfo(text, file))

  /** The stream files bbackup can read the names of, oldest first; unfinished ones (`.part`, or no sidecar) too. */
  const list = async (at: Transport): Promise<Result<SnapshotInfo[], BbError>> => {
    const dir = at.location.path
    const entries = await at.list(dir)
    if (entries.isErr()) {
      return err(entries.error.code === 'NOT_FOUND' ? bbError('TARGET_UNAVAILABLE', `the raw target ${dir} does not exist`, 'check the path (is the disk mounted?)', { path: dir }) : entries.error)
    }
    const found: (SnapshotInfo & { readonly sequence: number })[] = []
    for (const e of entries.value) {
      if (e.kind !== 'file') continue
      const part = PART.exec(e.name)
      const stream = part === null ? STREAM.exec(e.name) : null
      const name = (part ?? stream)?.[1]
      const parsed = name === undefined ? undefined : parseSnapshotName(name)
      if (name === undefined || parsed === undefined) continue
      const base = { name, time: parsed.time, health: 'ok' as const, path: join(dir, e.name), sequence: parsed.sequence }
      if (part !== null) {
        found.push({ ...base, complete: false })
        continue
      }
      const info = await readInfo(at, dir, e.name)
      if (info.isErr()) return err(info.error)
      if (info.value === undefined) {
        found.push({ ...base, complete: false })
        continue
      }
      found.push({
        ...base,
        complete: true,
        identity: { uuid: `raw-${info.value.uuid}`, receivedUuid: info.value.uuid, readOnly: true },
        ...(info.value.parent === undefined ? {} : { dependsOn: info.value.parent }),
      })
    }
    const sorted = found.sort((a, b) => compareSnapshots({ name: a.name, time: a.time ?? new Date(0), sequence: a.sequence }, { name: b.name, time: b.time ?? new Date(0), sequence: b.sequence }))
      .map(({ sequence: _, ...s }) => s)
    return ok(withBrokenChains(sorted, dir))
  }

  const partialPath = (target: Transport, snapshot: string): string => join(target.location.path, `${fileOf(snapshot)}.part`)

  /**
   * `btrfs send | [zstd] > NAME.btrfs[.zst].part`, then the file is synced, hashed, renamed into
   * place and its sidecar written last. With `fullEvery`, a chain that long gets a full stream.
   */
  const transfer = async (input: {
    readonly source: Transport; readonly target: Transport; readonly snapshot: string; readonly sent: SnapshotInfo
    readonly parent: SnapshotInfo | undefined; readonly targetParent: SnapshotInfo | undefined
    readonly dryRun: boolean; readonly signal: AbortSignal | undefined; readonly onBytes: (bytes: number) => void
  }): Promise<Result<TransferOutcome, BbError>> => {
    const { source, target, snapshot, sent, signal } = input
    const dir = target.location.path
    const file = fileOf(snapshot)
    const final = join(dir, file)
    const part = `${final}.part`
    // the parent's stream is there from an earlier run (targetParent), or was written earlier in this one, with this run's suffix
    const parentInfo = input.parent === undefined ? ok(undefined) : await readInfo(target, dir, input.targetParent === undefined ? fileOf(input.parent.name) : posix.basename(input.targetParent.path))
    if (parentInfo.isErr()) return err(parentInfo.error)
    const { parent, chain, warnings } = chainStep(input.parent, parentInfo.value?.chain, deps.options.fullEvery)
    const flags = await deps.sendFlags(source, signal)
    if (flags.isErr()) return err(flags.error)
    const sendArgv = ['btrfs', 'send', '-q', ...flags.value, ...(parent === undefined ? [] : ['-p', parent.path]), sent.path]
    const writer = privately(writerArgv(part))
    const filters = filtersAt(hereOf(source, target), writeFilters(snapshot))
    if (filters.isErr()) return err(filters.error)
    const planned = await deps.planStream(source, target, signal)
    const way = wayOf(planned, encryption !== undefined)
    if (encryption === undefined) warnings.push(...planned.warnings)
    const commands: string[][] = [shownWith(sendArgv, filters.value, writer, way), ['sync', '--', part], ['sha256sum', '--', part], ['mv', part, final], ['write', `${final}.info`]]
    const mode = parent === undefined ? 'full' as const : 'incremental' as const
    const outcome = (bytes: number): TransferOutcome => ({ snapshot, mode, ...(parent === undefined ? {} : { parent: parent.name }), bytes, files: 0, warnings, commands })
    if (input.dryRun) return ok(outcome(0))
    const uuid = streamUuid(sent)
    if (uuid === undefined) return err(bbError('COMMAND_FAILED', `the snapshot ${sent.path} has no uuid bbackup could read`, 'run again; if it repeats, check btrfs subvolume show on it', { path: sent.path }))
    for (const p of [final, `${final}.info`, part]) {
      const there = await target.stat(p)
      if (there.isErr()) return err(there.error)
      if (there.value === undefined) continue
      // the sidecar this job wrote for this very snapshot, whose stream is gone (removed by hand): it describes no backup now, and goes before the stream is written again
      const orphan = p === `${final}.info` ? await readInfo(target, dir, file) : undefined
      if (orphan?.isOk() === true && orphan.value?.uuid === uuid) {
        const removed = await target.remove(p)
        if (removed.isErr()) return err(removed.error)
        warnings.push(`${p} was there without its stream file (removed by hand?): the stream is written again, with a new sidecar`)
        continue
      }
      return err(bbError('ALREADY_EXISTS', `${p} already exists at the raw target and is not a backup this run can use`,
        `bbackup never deletes what it did not create: look at it, move it away or delete it yourself, then run again`, { path: p }))
    }
    const [written] = await sendReceive({ source, sendArgv, filters: filters.value, receivers: [{ target, receiveArgv: writer, what: `writing ${part}` }], signal, stallMs: deps.stallMs, way, onBytes: input.onBytes })
    const finished = written === undefined ? err(bbError('COMMAND_FAILED', `writing ${part} gave no result`, 'run again')) : written
    const done = finished.isErr() ? err(finished.error) : await commit(target, part, final, finished.value.bytes, signal)
    if (done.isErr()) {
      // what this transfer created and could not finish goes at once (else the journal removes it next run),
      // unless the host is out of reach: then the retry's recovery does it
      if (done.error.code !== 'NETWORK_FAILED') await target.remove(part)
      return err(done.error)
    }
    const parentUuid = streamUuid(parent)
    const info: RawInfo = {
      format: 'bbackup-raw/1', snapshot, file, compress, ...(encryption === undefined ? {} : { encrypt: encryption.method, recipients: encryption.recipients }), uuid,
      ...(parent === undefined ? {} : { parent: parent.name, ...(parentUuid === undefined ? {} : { parentUuid }) }),
      chain, streamBytes: done.value.streamBytes, size: done.value.size, sha256: done.value.sha256, createdAt: new Date().toISOString(), sendFlags: flags.value,
    }
    const wrote = await target.writeFileAtomic(`${final}.info`, `${JSON.stringify(info, null, 2)}\n`)
    if (wrote.isErr()) return err(wrote.error)
    return ok(outcome(done.value.streamBytes))
  }

  /** The written file to disk, its size and sha256, then renamed into place. */
  const commit = async (target: Transport, part: string, final: string, streamBytes: number, signal: AbortSignal | undefined) => {
    const synced = await target.exec(['sync', '--', part], signalOpt(signal))
    if (synced.isErr()) return err(synced.error)
    if (synced.value.exitCode !== 0) return err(bbError('IO_FAILED', `could not sync ${part} to disk (exit ${synced.value.exitCode})`, 'check the target disk (dmesg)', { stderr: synced.value.stderr }))
    const hashed = await sha256(target, part, signal)
    if (hashed.isErr()) return err(hashed.error)
    const size = await target.stat(part)
    if (size.isErr()) return err(size.error)
    const renamed = await target.rename(part, final)
    if (renamed.isErr()) return err(renamed.error)
    return ok({ streamBytes, size: size.value?.size ?? 0, sha256: hashed.value })
  }

  const sha256 = async (at: Transport, path: string, signal: AbortSignal | undefined): Promise<Result<string, BbError>> => {
    const argv = ['sha256sum', '--', path]
    const r = await at.exec(argv, signalOpt(signal))
    if (r.isErr()) return err(r.error)
    const m = /^([0-9a-f]{64})\s/.exec(r.value.stdout)
    if (r.value.exitCode !== 0 || m?.[1] === undefined) return err(bbError('IO_FAILED', `could not read ${path} to hash it (exit ${r.value.exitCode})`, 'check the target disk (dmesg)', { argv, stderr: r.value.stderr }))
    return ok(m[1])
  }

  /**
   * What the journal says was being written: the `.part` file, or a renamed stream whose sidecar
   * never came. Only those; with no journal entry (`unrecorded`), only the `.part` file (a stream
   * without a sidecar may be any file named so).
   */
  const recover = async (target: Transport, partial: string, dryRun: boolean, unrecorded = false): Promise<Result<RecoverAction, BbError>> => {
    const dir = target.location.path
    if (posix.dirname(partial) !== dir || !PART.test(posix.basename(partial))) return ok('gone')
    const final = partial.slice(0, -'.part'.length)
    const left = await target.stat(partial)
    if (left.isErr()) return err(left.error)
    if (left.value?.kind === 'file') return dryRun ? ok('removed') : (await target.remove(partial)).map(() => 'removed' as const)
    if (unrecorded) return ok('gone')
    const stream = await target.stat(final)
    if (stream.isErr()) return err(stream.error)
    if (stream.value === undefined) return ok('gone')
    const info = await readInfo(target, dir, posix.basename(final))
    if (info.isErr()) return err(info.error)
    if (info.value !== undefined) return ok('complete')
    // renamed into place, but the run ended before its sidecar: unfinished, and this job's
    return dryRun ? ok('removed') : (await target.remove(final)).map(() => 'removed' as const)
  }

  const deleteStreams = async (at: Transport, snapshots: readonly SnapshotInfo[], dryRun: boolean, signal: AbortSignal | undefined): Promise<Result<readonly (readonly string[])[], BbError>> => {
    if (snapshots.length === 0) return ok([])
    for (const s of snapshots) {
      if (!s.complete || !STREAM.test(posix.basename(s.path))) return err(bbError('INVALID_OPTIONS', `refusing to delete ${s.path}: not a complete stream file`, 'this is a bug in bbackup; please report it'))
    }
    // the stream before its sidecar: a crash in between leaves a sidecar without a stream, which lists as nothing
    const argv = ['rm', '-f', '--', ...snapshots.flatMap((s) => [s.path, `${s.path}.info`])]
    if (dryRun) return ok([argv])
    const r = await at.exec(argv, signalOpt(signal))
    if (r.isErr()) return err(r.error)
    if (r.value.exitCode !== 0) return err(bbError('COMMAND_FAILED', `deleting stream files failed (exit ${r.value.exitCode})`, 'see the end of stderr', { argv, stderr: r.value.stderr }))
    return ok([argv])
  }

  /** The sidecars from `snapshot` back to the full stream it builds on, full first. */
  const chainOf = async (at: Transport, snapshot: SnapshotInfo): Promise<Result<RawInfo[], BbError>> => {
    const dir = at.location.path
    const listed = await list(at)
    if (listed.isErr()) return err(listed.error)
    const chain: RawInfo[] = []
    for (let s: SnapshotInfo | undefined = snapshot; s !== undefined;) {
      const info = await readInfo(at, dir, posix.basename(s.path))
      if (info.isErr()) return err(info.error)
      if (info.value === undefined) return err(bbError('NOT_FOUND', `${s.path} has no readable sidecar (${posix.basename(s.path)}.info): it is unfinished or damaged`, 'restore another backup'))
      chain.unshift(info.value)
      const parentName = info.value.parent
      if (parentName === undefined) break
      s = listed.value.find((l) => l.name === parentName && l.complete)
      if (s === undefined) {
        const prefix = parseSnapshotName(snapshot.name)?.prefix
        const whole = listed.value.filter((l) => l.complete && l.broken === undefined && parseSnapshotName(l.name)?.prefix === prefix).at(-1)
        return err(bbError('NOT_FOUND', `${snapshot.name} is incremental on ${parentName}, whose stream file is ${listed.value.some((l) => l.name === parentName) ? 'unfinished (it has no sidecar)' : 'missing'} at ${dir}`,
          whole === undefined ? 'the chain is broken, and no backup there has a whole chain: the next run starts a new one with a full stream' : `the chain is broken: restore a backup whose chain is whole (the newest is ${whole.name}); the next run starts a new chain with a full stream`, { path: dir }))
      }
      if (chain.length > 100_000) return err(bbError('COMMAND_FAILED', `the chain of ${snapshot.name} loops`, 'the sidecars are damaged; restore another backup'))
    }
    return ok(chain)
  }

  /**
   * Receives the chain up to the backup into the destination, full first, then deletes the
   * intermediate subvolumes it made: only the backup is left (and its `.writable` snapshot).
   */
  const restore = async (input: RestoreInput, writableArgv: (landing: string) => string[]): Promise<Result<{ readonly commands: readonly (readonly string[])[] }, BbError>> => {
    const { from, to, snapshot, signal } = input
    if (input.subpath !== '') return err(bbError('UNSUPPORTED', 'restoring one path works from received backups, not from stream files', 'restore the whole backup (no --path), then copy the path out of it'))
    const dest = to.location.path
    const chain = await chainOf(from, snapshot)
    if (chain.isErr()) return err(chain.error)
    const receiveArgv = ['btrfs', 'receive', dest]
    const landing = join(dest, snapshot.name)
    const intermediates = chain.value.slice(0, -1).map((i) => join(dest, i.snapshot))
    const here = hereOf(from, to)
    const filtersOf = (info: RawInfo): Result<StreamFilter[], BbError> => filtersAt(here, readFilters(info))
    for (const info of chain.value) {
      const f = filtersOf(info)
      if (f.isErr()) return err(f.error)
    }
    const planned = await deps.planStream(from, to, signal)
    const commands: string[][] = [
      ...chain.value.map((i) => shownWith(readerArgv(i, join(from.location.path, i.file)), filtersOf(i).unwrapOr([]), receiveArgv, wayOf(planned, i.encrypt !== undefined))),
      ...(intermediates.length === 0 ? [] : [['btrfs', 'subvolume', 'delete', '--commit-after', ...intermediates]]),
      ...(input.writable === true ? [writableArgv(landing)] : []),
    ]
    // (made only where nothing is: a landing that exists is in a destination that did)
    const ready = await deps.restoreDestination(to, !input.dryRun)
    if (ready.isErr()) return err(ready.error)
    const free = await refuseExisting(to, [landing, ...intermediates, ...(input.writable === true ? [`${landing}.writable`] : [])])
    if (free.isErr()) return err(free.error)
    if (input.dryRun) return ok({ commands })
    const received: string[] = []
    const undo = async (): Promise<void> => {
      for (const p of received.reverse()) await deps.removeGarbled(to, p)
    }
    for (const info of chain.value) {
      const path = join(from.location.path, info.file)
      const reader = readerArgv(info, path)
      const [r] = await sendReceive({
        source: from, sendArgv: reader, sendWhat: `reading ${path}`, filters: filtersOf(info).unwrapOr([]), receivers: [{ target: to, receiveArgv }], signal, stallMs: deps.stallMs, way: wayOf(planned, info.encrypt !== undefined), onBytes: () => undefined,
      })
      const landed = join(dest, info.snapshot)
      if (r === undefined || r.isErr()) {
        await deps.removeGarbled(to, landed)
        await undo()
        if (r === undefined) return err(bbError('COMMAND_FAILED', `receiving ${path} gave no result`, 'run again'))
        const why = await whyUndecryptable(r.error, info, here)
        return err(why === undefined ? r.error : bbError('INVALID_OPTIONS', `${path} is encrypted: ${why.reason}`, why.hint, r.error.details))
      }
      received.push(landed)
    }
    if (intermediates.length > 0) {
      const argv = ['btrfs', 'subvolume', 'delete', '--commit-after', ...intermediates]
      const r = await to.exec(argv, signalOpt(signal))
      if (r.isErr()) return err(r.error)
      if (r.value.exitCode !== 0) return err(bbError('COMMAND_FAILED', `deleting the intermediate subvolumes of the chain failed (exit ${r.value.exitCode})`, `delete them yourself: ${argv.join(' ')}`, { argv, stderr: r.value.stderr }))
    }
    if (input.writable === true) {
      const argv = writableArgv(landing)
      const r = await to.exec(argv, signalOpt(signal))
      if (r.isErr()) return err(r.error)
      if (r.value.exitCode !== 0) return err(bbError('COMMAND_FAILED', `making ${landing}.writable failed (exit ${r.value.exitCode})`, 'see the end of stderr', { argv, stderr: r.value.stderr }))
    }
    return ok({ commands })
  }

  /**
   * A stream file is checked without a btrfs target: its size and sha256 against the sidecar, the
   * stream's own checksums (`btrfs receive --dump` reads every command and checks its crc32c, on
   * the source host), and that the chain it needs is whole.
   */
  const verify = async (input: { readonly target: Transport; readonly source: Transport; readonly snapshot: SnapshotInfo; readonly signal: AbortSignal | undefined }): Promise<Result<VerifyOutcome, BbError>> => {
    const { target, snapshot, signal } = input
    const dir = target.location.path
    const differences: string[] = []
    const file = posix.basename(snapshot.path)
    const info = await readInfo(target, dir, file)
    if (info.isErr()) return err(info.error)
    if (info.value === undefined) return ok({ snapshot: snapshot.name, differences: [`${snapshot.path}: no readable sidecar: unfinished or damaged`], differenceCount: 1 })
    const size = await target.stat(snapshot.path)
    if (size.isErr()) return err(size.error)
    if (size.value?.size !== info.value.size) differences.push(`${snapshot.path}: ${size.value?.size ?? 0} bytes, the sidecar says ${info.value.size}`)
    const hashed = await sha256(target, snapshot.path, signal)
    if (hashed.isErr()) return err(hashed.error)
    if (hashed.value !== info.value.sha256) differences.push(`${snapshot.path}: sha256 ${hashed.value}, the sidecar says ${info.value.sha256}`)
    const notes = ['checked: size and sha256 against the sidecar, the stream\'s own checksums (btrfs receive --dump), the chain of parents; the content is not compared with the source']
    const here = hereOf(target, input.source)
    const filters = filtersAt(here, readFilters(info.value))
    if (filters.isErr()) return err(filters.error)
    const [dumped] = await sendReceive({
      source: target, sendArgv: readerArgv(info.value, snapshot.path), sendWhat: `reading ${snapshot.path}`, filters: filters.value,
      receivers: [{ target: input.source, receiveArgv: ['btrfs', 'receive', '--dump'], what: `checking the stream of ${snapshot.path}` }], signal, stallMs: deps.stallMs,
      way: wayOf(await deps.planStream(target, input.source, signal), info.value.encrypt !== undefined), onBytes: () => undefined,
    })
    const why = dumped !== undefined && dumped.isErr() ? await whyUndecryptable(dumped.error, info.value, here) : undefined
    if (why !== undefined) {
      // a host that backs up holds the public keys only: what it can check without decrypting, it did
      notes[0] = `checked: size and sha256 against the sidecar, the chain of parents; not the stream's own checksums: ${why.reason} (${why.hint})`
    } else if (dumped === undefined || dumped.isErr()) {
      const stderr = String(dumped?.error.details?.stderr ?? dumped?.error.message ?? '')
      const said = stderr.split('\n').map((l) => l.replace(/^ERROR:\s*/, '').trim()).filter((l) => l !== '').join('; ')
      differences.push(`${snapshot.path}: the stream does not read back whole (${said === '' ? 'btrfs receive --dump failed' : said})`)
    }
    const chain = await chainOf(target, snapshot)
    if (chain.isErr()) differences.push(`${snapshot.path}: ${chain.error.message}`)
    return ok({ snapshot: snapshot.name, differences, differenceCount: differences.length, notes })
  }

  return { probe, list, partialPath, transfer, recover, deleteStreams, restore, verify }
}
