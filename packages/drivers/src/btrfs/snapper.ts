import { posix } from 'node:path'
import { bbError, type BbError, type Transport } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { showSubvolume } from './subvolume.js'

/**
 * One snapshot of snapper's, as its `info.xml` describes it: snapper keeps them at
 * `<subvolume>/.snapshots/<number>/snapshot`, the description beside it.
 */
export interface SnapperSnapshot {
  readonly number: number
  readonly type: 'single' | 'pre' | 'post'
  /** when snapper took it (info.xml's `<date>`, UTC) */
  readonly date: Date
  readonly description?: string
  /** snapper's cleanup algorithm for it (`timeline`, `number`, empty) */
  readonly cleanup?: string
}

const TAG = (xml: string, tag: string): string | undefined => {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)
  return m?.[1]
}

const unescapeXml = (text: string): string =>
  text.replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[e] ?? '')

/**
 * Reads snapper's `info.xml` of one snapshot; undefined when it is not one snapper wrote whole (no
 * number, type or date, or a date that is no time).
 * @example
 * parseSnapperInfo('<snapshot><type>single</type><num>4</num><date>2026-11-25 13:44:03</date></snapshot>')
 * // { number: 4, type: 'single', date: 2026-11-25T13:44:03Z }
 */
export const parseSnapperInfo = (xml: string): SnapperSnapshot | undefined => {
  const num = TAG(xml, 'num')
  const type = TAG(xml, 'type')
  const date = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(TAG(xml, 'date') ?? '')
  if (num === undefined || !/^[1-9]\d*$/.test(num) || (type !== 'single' && type !== 'pre' && type !== 'post') || date === null) return undefined
  const [, y, mo, d, h, mi, s] = date.map(Number) as [number, number, number, number, number, number, number]
  const time = new Date(Date.UTC(y, mo - 1, d, h, mi, s))
  // Date.UTC rolls an impossible day or hour over into the next: such a date is not snapper's
  if (time.getUTCMonth() !== mo - 1 || time.getUTCDate() !== d || time.getUTCHours() !== h || time.getUTCMinutes() !== mi || time.getUTCSeconds() !== s) return undefined
  const description = TAG(xml, 'description')
  const cleanup = TAG(xml, 'cleanup')
  return {
    number: Number(num),
    type,
    date: time,
    ...(description === undefined ? {} : { description: unescapeXml(description) }),
    ...(cleanup === undefined || cleanup === '' ? {} : { cleanup }),
  }
}

/** A snapper snapshot that can be sent: its info, the read-only subvolume's path and uuid. */
export interface SnapperFound extends SnapperSnapshot {
  readonly path: string
  readonly uuid: string
}

/** a subvolume snapper does not snapshot: it has no `.snapshots` */
export const noSnapper = (subvolume: string): BbError => {
  const folder = posix.join(subvolume, '.snapshots')
  return bbError('SOURCE_UNAVAILABLE', `${subvolume} has no snapper snapshots: ${folder} does not exist`,
    `set snapper up for it (snapper -c NAME create-config ${subvolume}), or leave --snapper (snapper) out to let bbackup take the snapshots`, { path: folder })
}

/** how many of the newest numbers are looked at for one that is whole (snapper writes info.xml after the snapshot) */
const LOOK_BACK = 16

/**
 * The newest snapshot snapper has taken of `subvolume`: the highest number in its `.snapshots`
 * whose info.xml is whole and whose `snapshot` is a read-only subvolume (one snapper is still
 * writing, or a writable one a rollback made, is passed over). Undefined when there is none yet.
 */
export const newestSnapperSnapshot = async (at: Transport, subvolume: string, signal: AbortSignal | undefined): Promise<Result<SnapperFound | undefined, BbError>> => {
  const folder = posix.join(subvolume, '.snapshots')
  const listed = await at.list(folder)
  if (listed.isErr()) return err(listed.error.code === 'NOT_FOUND' ? noSnapper(subvolume) : listed.error)
  for (const number of numbered(listed.value)) {
    const info = await infoOf(at, folder, number)
    if (info.isErr()) return err(info.error)
    if (info.value === undefined) continue
    const path = posix.join(folder, String(number), 'snapshot')
    const shown = await showSubvolume(at, path, signal)
    if (shown.isErr()) return err(shown.error)
    if (typeof shown.value === 'string' || !shown.value.readOnly) continue
    return ok({ ...info.value, path, uuid: shown.value.uuid })
  }
  return ok(undefined)
}

/** the numbered directories of a snapper folder's listing, the newest {@link LOOK_BACK} of them, newest first */
const numbered = (entries: readonly { readonly name: string; readonly kind: string }[]): number[] =>
  entries.filter((e) => e.kind === 'directory' && /^[1-9]\d*$/.test(e.name)).map((e) => Number(e.name)).sort((a, b) => b - a).slice(0, LOOK_BACK)

/** the info.xml of snapper's snapshot `number` in `folder`, when snapper wrote it whole */
const infoOf = async (at: Transport, folder: string, number: number): Promise<Result<SnapperSnapshot | undefined, BbError>> => {
  const xml = await at.readFile(posix.join(folder, String(number), 'info.xml'))
  if (xml.isErr()) return err(xml.error)
  const info = xml.value === undefined ? undefined : parseSnapperInfo(xml.value)
  return ok(info?.number === number ? info : undefined)
}

/**
 * The number of snapper's newest snapshot in `folder` (a numbered directory whose info.xml snapper
 * wrote), given the folder's listing: the folder is then snapper's. Undefined when none is there.
 */
export const snapperNumberIn = async (at: Transport, folder: string, entries: readonly { readonly name: string; readonly kind: string }[]): Promise<Result<number | undefined, BbError>> => {
  for (const number of numbered(entries)) {
    const info = await infoOf(at, folder, number)
    if (info.isErr() || info.value !== undefined) return info.map(() => number)
  }
  return ok(undefined)
}
