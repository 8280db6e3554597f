import { randomUUID } from 'node:crypto'
import { bbError, stderrTail, type BbError, type CommandResult, type Transport } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { stop } from './stop.js'
import type { VolumeConfig } from './volume.js'

/**
 * A Ceph RBD image as a volume's source, in qemu's spelling: `rbd:POOL/IMAGE`,
 * `rbd:POOL/NAMESPACE/IMAGE`, with `:conf=FILE` (the cluster's ceph.conf) and `:id=USER` (the
 * cephx user, without `client.`) after it. Read on this host by the `rbd` command (ceph-common).
 */
export interface RbdSource {
  readonly kind: 'rbd'
  readonly pool: string
  readonly namespace?: string
  readonly image: string
  readonly conf?: string
  readonly id?: string
}

const PREFIX = 'rbd:'
/** what a pool, namespace, image or user name may be here: a leading `-` would read as an option */
const NAME = /^[A-Za-z0-9_.][A-Za-z0-9_.+-]*$/
const OPTIONS = ['conf', 'id'] as const

/** Whether a volume's source names an RBD image (`rbd:` and no `/` after it: `rbd:/path` is a host called rbd). */
export const isRbdSource = (source: string): boolean => source.startsWith(PREFIX) && !source.startsWith(`${PREFIX}/`)

const invalid = (source: string, problem: string): Result<never, BbError> =>
  err(bbError('INVALID_LOCATION', `the source ${source} is not an RBD image: ${problem}`, 'write it as rbd:POOL/IMAGE (or rbd:POOL/NAMESPACE/IMAGE), optionally with :conf=/etc/ceph/ceph.conf:id=USER', { input: source }))

/** Reads `rbd:POOL/[NAMESPACE/]IMAGE[:conf=FILE][:id=USER]`. */
export const parseRbdSource = (source: string): Result<RbdSource, BbError> => {
  if (!isRbdSource(source)) return invalid(source, 'it does not start with rbd:')
  const [spec = '', ...options] = source.slice(PREFIX.length).split(':')
  const parts = spec.split('/')
  if (parts.length < 2 || parts.length > 3) return invalid(source, `"${spec}" is not POOL/IMAGE or POOL/NAMESPACE/IMAGE`)
  const bad = parts.find((p) => !NAME.test(p))
  if (bad !== undefined) return invalid(source, bad === '' ? 'a part of it is empty' : `"${bad}" is not a name rbd takes here (letters, digits, _ . + -, not first -)`)
  const [pool = '', ...rest] = parts
  const image = rest.at(-1) ?? ''
  const settings: { conf?: string; id?: string } = {}
  for (const option of options) {
    const m = /^([a-z]+)=(.+)$/.exec(option)
    const key = OPTIONS.find((k) => k === m?.[1])
    if (m === null || key === undefined) return invalid(source, `"${option}" is not one of ${OPTIONS.map((k) => `${k}=…`).join(', ')}`)
    if (settings[key] !== undefined) return invalid(source, `${key} is given twice`)
    const value = m[2] ?? ''
    if (key === 'conf' && !value.startsWith('/')) return invalid(source, `conf=${value} is not an absolute path`)
    if (key === 'id' && !NAME.test(value)) return invalid(source, `id=${value} is not a ceph user name`)
    settings[key] = value
  }
  return ok({ kind: 'rbd', pool, ...(rest.length === 2 ? { namespace: rest[0] ?? '' } : {}), image, ...settings })
}

/** The source as volume.json keeps it. */
export const formatRbdSource = (source: RbdSource): string =>
  `${PREFIX}${imageSpec(source)}${source.conf === undefined ? '' : `:conf=${source.conf}`}${source.id === undefined ? '' : `:id=${source.id}`}`

/** The image (or one of its snapshots) as rbd names it: `POOL/[NAMESPACE/]IMAGE[@SNAP]`. */
const imageSpec = (source: RbdSource, snapshot?: string): string =>
  `${source.pool}/${source.namespace === undefined ? '' : `${source.namespace}/`}${source.image}${snapshot === undefined ? '' : `@${snapshot}`}`

/** How a snapshot of the image is shown to people (hooks, reports): `rbd:POOL/IMAGE@SNAP`. */
export const snapshotName = (source: RbdSource, snapshot: string): string => `${PREFIX}${imageSpec(source, snapshot)}`

/** a cluster that does not answer fails a command after this long, not after rbd's 300 s */
const MOUNT_TIMEOUT_SECONDS = 30

/** The rbd command: the words, then the source's cluster and user. */
const rbdArgv = (source: RbdSource, words: readonly string[]): string[] => [
  'rbd', ...words, '--client-mount-timeout', String(MOUNT_TIMEOUT_SECONDS),
  ...(source.conf === undefined ? [] : ['--conf', source.conf]), ...(source.id === undefined ? [] : ['--id', source.id]),
]

/** What rbd said went wrong, as the error a user can act on. */
const rbdFailure = (source: RbdSource, what: string, r: CommandResult, code: 'SOURCE_UNAVAILABLE' | 'TARGET_UNAVAILABLE' = 'SOURCE_UNAVAILABLE'): BbError => {
  const said = stderrTail(r.stderr) || `rbd exit ${r.exitCode}`
  const context = { path: formatRbdSource(source), stderr: stderrTail(r.stderr) }
  if (/couldn't connect to the cluster|unable to open config file|authenticate timed out/i.test(r.stderr)) {
    return bbError(code, `cannot ${what}: the Ceph cluster does not answer (${said})`,
      'check the cluster, and the conf= and id= of the source (its ceph.conf and keyring must be readable here); rbd ls POOL tells whether rbd reaches it', context)
  }
  if (/error opening pool/.test(r.stderr)) {
    return bbError(code, `cannot ${what}: the cluster has no pool ${source.pool} (${said})`, 'check the name: ceph osd pool ls lists the pools', context)
  }
  if (/\(2\) No such file or directory/.test(r.stderr)) {
    return bbError(code, `cannot ${what}: ${source.pool}${source.namespace === undefined ? '' : `/${source.namespace}`} has no image ${source.image} (${said})`,
      `check the name: rbd ls ${source.pool}${source.namespace === undefined ? '' : `/${source.namespace}`} lists the images`, context)
  }
  if (/\(1\) Operation not permitted|\(13\) Permission denied/.test(r.stderr)) {
    return bbError('PERMISSION_DENIED', `cannot ${what}: the ceph user may not (${said})`,
      "give the user of id= the rbd profile on the pool: ceph auth caps client.USER mon 'profile rbd' osd 'profile rbd pool=POOL'", context)
  }
  return bbError(code, `cannot ${what}: ${said}`, 'run the rbd command of the error by hand to see why', { ...context, argv: [...r.argv] })
}

/** Runs rbd and says how it ended; one that cannot start is a Stop. */
const rbdExec = async (at: Transport, source: RbdSource, words: readonly string[], signal?: AbortSignal): Promise<CommandResult> => {
  const ran = await at.exec(rbdArgv(source, words), signal === undefined ? {} : { signal })
  if (ran.isErr()) {
    return stop(ran.error.code === 'TOOL_MISSING'
      ? bbError('TOOL_MISSING', 'rbd is not installed (or not on PATH): RBD images are read and written with it', 'install it: apt-get install ceph-common', { path: formatRbdSource(source) })
      : ran.error)
  }
  return ran.value
}

/** Runs rbd; a failure is a Stop that says what could not be done. */
const rbd = async (at: Transport, source: RbdSource, words: readonly string[], what: string, signal?: AbortSignal): Promise<string> => {
  const ran = await rbdExec(at, source, words, signal)
  if (ran.exitCode !== 0) return stop(rbdFailure(source, what, ran))
  return ran.stdout
}

/** Whether the image exists (rbd info answers, or says there is none); a cluster that does not answer is a Stop. */
export const rbdImageExists = async (at: Transport, source: RbdSource): Promise<boolean> => {
  const ran = await rbdExec(at, source, ['info', '--format', 'json', imageSpec(source)])
  if (ran.exitCode === 0) return true
  if (/\(2\) No such file or directory/.test(ran.stderr) && !/error opening pool/.test(ran.stderr)) return false
  return stop(rbdFailure(source, `look for ${formatRbdSource(source)}`, ran, 'TARGET_UNAVAILABLE'))
}

/** The command that writes an image from its stdin (`rbd import -`): runs of zeros are not written (sparse). */
export const importArgv = (source: RbdSource): string[] => rbdArgv(source, ['import', '--no-progress', '--sparse-size', '4096', '-', imageSpec(source)])

/** Gives an image another name in its pool; false where an image of that name exists. */
export const renameRbdImage = async (at: Transport, from: RbdSource, to: RbdSource): Promise<boolean> => {
  const ran = await rbdExec(at, from, ['rename', imageSpec(from), imageSpec(to)])
  if (ran.exitCode === 0) return true
  if (/\(17\) File exists/.test(ran.stderr)) return false
  return stop(rbdFailure(from, `rename ${formatRbdSource(from)} to ${to.image}`, ran, 'TARGET_UNAVAILABLE'))
}

/** Removes an image this run made; one that is not there is fine. */
export const removeRbdImage = async (at: Transport, source: RbdSource): Promise<void> => {
  const ran = await rbdExec(at, source, ['rm', '--no-progress', imageSpec(source)])
  if (ran.exitCode !== 0 && !/\(2\) No such file or directory/.test(ran.stderr)) stop(rbdFailure(source, `remove ${formatRbdSource(source)}`, ran, 'TARGET_UNAVAILABLE'))
}

const json = (text: string, what: string): unknown => {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return stop(bbError('SOURCE_UNAVAILABLE', `rbd said something that is not JSON when asked for ${what}: ${text.slice(0, 200)}`, 'check the rbd version (ceph-common 14 or later)'))
  }
}

/** The size in bytes of the image, or of one of its snapshots. */
export const rbdSize = async (at: Transport, source: RbdSource, snapshot?: string): Promise<number> => {
  const info = json(await rbd(at, source, ['info', '--format', 'json', imageSpec(source, snapshot)], `read the size of ${formatRbdSource(source)}`), 'the image')
  const size = (info as { size?: unknown }).size
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return stop(bbError('SOURCE_UNAVAILABLE', `rbd info gave no size for ${formatRbdSource(source)}`, 'check the rbd version (ceph-common 14 or later)'))
  return size
}

/** The image's snapshots: their names and sizes. */
export const rbdSnapshots = async (at: Transport, source: RbdSource): Promise<{ readonly name: string; readonly size: number }[]> => {
  const list = json(await rbd(at, source, ['snap', 'ls', '--format', 'json', imageSpec(source)], `list the snapshots of ${formatRbdSource(source)}`), 'the snapshots')
  return Array.isArray(list) ? list.flatMap((s: { name?: unknown; size?: unknown }) => (typeof s.name === 'string' ? [{ name: s.name, size: typeof s.size === 'number' ? s.size : 0 }] : [])) : []
}

/**
 * The snapshots this volume makes of its image: `bbackup-<volume id>-<uuid>` while a revision is
 * read from it, `bbackup-<volume id>-base-<revision>` once it is the base of the next backup
 * (`rbd diff` from it tells what changed). No other name is ever removed.
 */
const snapshotPrefix = (config: VolumeConfig): string => `bbackup-${config.id.slice(0, 8)}-`
const BASE = 'base-'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** The name of the snapshot kept as the base of `revision`. */
export const baseSnapshot = (config: VolumeConfig, revision: string): string => `${snapshotPrefix(config)}${BASE}${revision}`

/** The base snapshots among the image's, with the revision each belongs to. */
export const baseSnapshots = <T extends { readonly name: string }>(config: VolumeConfig, snapshots: readonly T[]): (T & { readonly revision: string })[] => {
  const prefix = `${snapshotPrefix(config)}${BASE}`
  return snapshots.filter((s) => s.name.startsWith(prefix) && UUID.test(s.name.slice(prefix.length))).map((s) => ({ ...s, revision: s.name.slice(prefix.length) }))
}

/** The snapshots an earlier run was reading from when it was killed. */
const staleSnapshots = (config: VolumeConfig, snapshots: readonly { readonly name: string }[]): string[] =>
  snapshots.map((s) => s.name).filter((n) => n.startsWith(snapshotPrefix(config)) && UUID.test(n.slice(snapshotPrefix(config).length)))

const removeSnapshot = async (at: Transport, source: RbdSource, snapshot: string): Promise<void> => {
  await rbd(at, source, ['snap', 'rm', '--no-progress', imageSpec(source, snapshot)], `remove the snapshot ${snapshotName(source, snapshot)}`)
}

/** Removes the snapshots that killed runs of this volume were reading from; says their names. */
export const removeStaleRbdSnapshots = async (at: Transport, config: VolumeConfig, source: RbdSource): Promise<string[]> => {
  const stale = staleSnapshots(config, await rbdSnapshots(at, source))
  for (const name of stale) await removeSnapshot(at, source, name)
  return stale.map((n) => snapshotName(source, n))
}

/** An image snapshotted for one revision: what it is called, its size, and how to let it go or keep it. */
export interface RbdFrozen {
  readonly snapshot: string
  readonly size: number
  release(): Promise<void>
  /** renames the snapshot to the base of `revision`, and removes the volume's older bases */
  keepAsBase(revision: string): Promise<void>
}

/** Snapshots the image (`rbd snap create`): a crash-consistent point in time, as a power cut would leave it. */
export const snapshotRbd = async (at: Transport, config: VolumeConfig, source: RbdSource, signal?: AbortSignal): Promise<RbdFrozen> => {
  let snapshot = `${snapshotPrefix(config)}${randomUUID()}`
  let made = false
  const release = async (): Promise<void> => {
    if (made) await removeSnapshot(at, source, snapshot)
    made = false
  }
  try {
    await rbd(at, source, ['snap', 'create', '--no-progress', imageSpec(source, snapshot)], `snapshot ${formatRbdSource(source)}`, signal)
    made = true
    const size = await rbdSize(at, source, snapshot)
    return {
      snapshot, size, release,
      keepAsBase: async (revision) => {
        if (!made) return
        const base = baseSnapshot(config, revision)
        await rbd(at, source, ['snap', 'rename', imageSpec(source, snapshot), imageSpec(source, base)], `rename the snapshot ${snapshotName(source, snapshot)}`)
        snapshot = base
        made = false
        for (const older of baseSnapshots(config, await rbdSnapshots(at, source))) {
          if (older.name !== base) await removeSnapshot(at, source, older.name)
        }
      },
    }
  } catch (e) {
    // a snapshot made by a command that then failed (cancelled) is left to the next run's removeStaleRbdSnapshots
    await release().catch(() => undefined)
    throw e
  }
}

/** The check of `bbackup init`: this user may snapshot the image (one is made and removed at once). */
export const checkRbdSnapshot = async (at: Transport, config: VolumeConfig, source: RbdSource): Promise<void> => {
  await (await snapshotRbd(at, config, source)).release()
}

/** The command that streams the image's data (`rbd export-diff`): from `base` on, or all of it. */
export const exportDiffArgv = (source: RbdSource, snapshot: string | undefined, base: string | undefined): string[] =>
  rbdArgv(source, ['export-diff', '--no-progress', ...(base === undefined ? [] : ['--from-snap', base]), snapshot === undefined ? imageSpec(source) : imageSpec(source, snapshot), '-'])

