/**
 * Snapshot names. bbackup writes `<prefix>YYYY-MM-DDTHHMMSSZ[_N]`: always UTC with an explicit
 * `Z`, so names sort by time as plain strings on every host and DST never repeats a name; `_N`
 * separates two snapshots taken in the same second. The parser also reads the names of the tools
 * we replace, so their backups can be adopted. A name it cannot read is never touched.
 */

/** Which tool's naming scheme a name follows. */
export type NameScheme = 'bbackup' | 'btrbk' | 'btrfs-backup' | 'rsync-system-backup' | 'rsync-time-backup'

export interface ParsedSnapshotName {
  readonly scheme: NameScheme
  /** the part before the timestamp, separator included (btrbk's `home.`, bbackup's default `home.`, btrfs-backup's `home-`): names alike are one family */
  readonly prefix: string
  readonly time: Date
  /** the collision suffix `_N`, 0 when absent */
  readonly sequence: number
  /** false for names that carry only a date (btrbk's `short` format) */
  readonly hasTime: boolean
}

const pad = (n: number, width = 2): string => String(n).padStart(width, '0')

/**
 * The name of a snapshot taken at `time`.
 * @example
 * formatSnapshotName({ prefix: 'home.', time: new Date('2026-11-23T00:15:00Z') }) // 'home.2026-11-23T001500Z'
 */
export const formatSnapshotName = (options: { readonly prefix?: string; readonly time: Date; readonly sequence?: number }): string => {
  const t = options.time
  const stamp =
    `${pad(t.getUTCFullYear(), 4)}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}` +
    `T${pad(t.getUTCHours())}${pad(t.getUTCMinutes())}${pad(t.getUTCSeconds())}Z`
  const sequence = options.sequence ?? 0
  return `${options.prefix ?? ''}${stamp}${sequence > 0 ? `_${sequence}` : ''}`
}

/**
 * A name for a new snapshot that collides with none of `existing` (pass the names of unfinished
 * copies too): the plain name, else the `_N` suffix after the highest one of that second, so that
 * the new snapshot sorts after every one made in the same second before it (also when an older one
 * of them is gone).
 */
export const uniqueSnapshotName = (options: { readonly prefix?: string; readonly time: Date; readonly existing: Iterable<string> }): string => {
  const plain = formatSnapshotName({ ...options, sequence: 0 })
  let highest = -1
  for (const name of options.existing) {
    const suffix = name === plain ? '0' : name.startsWith(`${plain}_`) ? name.slice(plain.length + 1) : undefined
    if (suffix !== undefined && /^\d+$/.test(suffix)) highest = Math.max(highest, Number(suffix))
  }
  return formatSnapshotName({ ...options, sequence: highest + 1 })
}

interface Fields {
  readonly year: number
  readonly month: number
  readonly day: number
  readonly hour: number
  readonly minute: number
  readonly second: number
}

const validFields = (f: Fields): boolean => {
  if (f.month < 1 || f.month > 12 || f.day < 1 || f.hour > 23 || f.minute > 59 || f.second > 59) return false
  const daysInMonth = new Date(Date.UTC(f.year, f.month, 0)).getUTCDate()
  return f.day <= daysInMonth
}

/** Names without a zone are local time of this host, as the tools that wrote them meant. */
const localTime = (f: Fields): Date => new Date(f.year, f.month - 1, f.day, f.hour, f.minute, f.second)
const utcTime = (f: Fields, offsetMinutes = 0): Date =>
  new Date(Date.UTC(f.year, f.month - 1, f.day, f.hour, f.minute, f.second) - offsetMinutes * 60_000)

const num = (s: string | undefined): number => (s === undefined ? 0 : Number(s))

const BBACKUP = /^(.*?)(\d{4})-(\d{2})-(\d{2})T(\d{2})(\d{2})(\d{2})Z(?:_(\d+))?$/
// btrbk: name.YYYYMMDD[Thhmm[ss][+hhmm]][_N] (btrbk.conf.5 timestamp_format short/long/long-iso)
const BTRBK = /^(.+\.)(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2})?(?:([+-])(\d{2})(\d{2}))?)?(?:_(\d+))?$/
// btrfs-backup: prefix + %Y%m%d-%H%M%S (its util.py DATE_FORMAT), or the two-digit year %y%m%d-%H%M%S; local time
const BTRFS_BACKUP = /^(.*?)(\d{4}|\d{2})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})$/
// rsync-system-backup: '%Y-%m-%d %H:%M:%S' (local time)
const RSYNC_SYSTEM_BACKUP = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/
// rsync-time-backup: '%Y-%m-%d-%H%M%S' (local time)
const RSYNC_TIME_BACKUP = /^(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})$/

/**
 * Reads a snapshot name written by bbackup, btrbk, btrfs-backup, rsync-system-backup or rsync-time-backup.
 * Returns `undefined` for anything else, and for impossible dates: such names are never touched.
 * @example
 * parseSnapshotName('home.20240313T0100')?.scheme // 'btrbk'
 */
export const parseSnapshotName = (name: string): ParsedSnapshotName | undefined => {
  let m = BBACKUP.exec(name)
  if (m !== null) {
    const f = { year: num(m[2]), month: num(m[3]), day: num(m[4]), hour: num(m[5]), minute: num(m[6]), second: num(m[7]) }
    if (!validFields(f)) return undefined
    return { scheme: 'bbackup', prefix: m[1] ?? '', time: utcTime(f), sequence: num(m[8]), hasTime: true }
  }
  m = BTRBK.exec(name)
  if (m !== null) {
    const hasTime = m[5] !== undefined
    const f = { year: num(m[2]), month: num(m[3]), day: num(m[4]), hour: num(m[5]), minute: num(m[6]), second: num(m[7]) }
    if (!validFields(f)) return undefined
    const sign = m[8]
    const time = sign === undefined ? localTime(f) : utcTime(f, (sign === '-' ? -1 : 1) * (num(m[9]) * 60 + num(m[10])))
    return { scheme: 'btrbk', prefix: m[1] ?? '', time, sequence: num(m[11]), hasTime }
  }
  m = RSYNC_SYSTEM_BACKUP.exec(name)
  if (m !== null) {
    const f = { year: num(m[1]), month: num(m[2]), day: num(m[3]), hour: num(m[4]), minute: num(m[5]), second: num(m[6]) }
    if (!validFields(f)) return undefined
    return { scheme: 'rsync-system-backup', prefix: '', time: localTime(f), sequence: 0, hasTime: true }
  }
  m = RSYNC_TIME_BACKUP.exec(name)
  if (m !== null) {
    const f = { year: num(m[1]), month: num(m[2]), day: num(m[3]), hour: num(m[4]), minute: num(m[5]), second: num(m[6]) }
    if (!validFields(f)) return undefined
    return { scheme: 'rsync-time-backup', prefix: '', time: localTime(f), sequence: 0, hasTime: true }
  }
  m = BTRFS_BACKUP.exec(name)
  if (m !== null) {
    const year = m[2] ?? ''
    const f = { year: year.length === 4 ? num(year) : 2000 + num(year), month: num(m[3]), day: num(m[4]), hour: num(m[5]), minute: num(m[6]), second: num(m[7]) }
    if (!validFields(f)) return undefined
    return { scheme: 'btrfs-backup', prefix: m[1] ?? '', time: localTime(f), sequence: 0, hasTime: true }
  }
  return undefined
}

/** Orders parsed names oldest first; equal times fall back to the collision suffix, then the name. */
export const compareSnapshots = (
  a: { readonly name: string; readonly time: Date; readonly sequence?: number },
  b: { readonly name: string; readonly time: Date; readonly sequence?: number },
): number => a.time.getTime() - b.time.getTime() || (a.sequence ?? 0) - (b.sequence ?? 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
