import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '../errors.js'

/** Days of the week as btrbk's `preserve_day_of_week` spells them. */
export type Weekday = 'sunday' | 'monday' | 'tuesday' | 'wednesday' | 'thursday' | 'friday' | 'saturday'
export const WEEKDAYS: readonly Weekday[] = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday']

/**
 * btrbk's spelling (btrbk.conf(5) "RETENTION POLICY"): `preserveMin` is `all` (btrbk's default:
 * keep everything, `preserve` then has no effect), `latest`, `no` or `<N>{h,d,w,m,q,y}`;
 * `preserve` is a matrix such as `'24h 7d 4w 12m *y'` or `no`. Calendar-aligned: days start at
 * `hourOfDay`, weeks on `dayOfWeek`; the first snapshot of each period is kept. One unit btrbk
 * lacks (btrbk #589): `q`, calendar quarters (January, April, July, October), e.g. `'12m 8q *y'`.
 * @example
 * const policy: BtrbkPolicy = { preserveMin: '2d', preserve: '24h 7d 4w 12m *y', dayOfWeek: 'sunday', hourOfDay: 0 }
 */
export interface BtrbkPolicy {
  readonly preserveMin?: string
  readonly preserve?: string
  readonly dayOfWeek?: Weekday
  readonly hourOfDay?: number
}

/** A rotate-backups count: a number of buckets, or `'always'` for every bucket. */
export type RotateCount = number | 'always'

/**
 * rotate-backups' spelling: one kept backup per hour/day/ISO week/month/quarter/year bucket,
 * counted back from the newest backup (`quarterly`, calendar quarters, is not in rotate-backups:
 * snapper's `TIMELINE_LIMIT_QUARTERLY`). `strict` (the default) also drops buckets older than
 * `newest - count x unit`; `strict: false` is rotate-backups' `--relaxed`. `prefer: 'newest'` is
 * its `--prefer-recent`.
 * @example
 * const policy: RotatePolicy = { hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 'always' }
 */
export interface RotatePolicy {
  readonly minutely?: RotateCount
  readonly hourly?: RotateCount
  readonly daily?: RotateCount
  readonly weekly?: RotateCount
  readonly monthly?: RotateCount
  readonly quarterly?: RotateCount
  readonly yearly?: RotateCount
  readonly strict?: boolean
  readonly prefer?: 'oldest' | 'newest'
}

/**
 * Keep the newest N snapshots: btrfs-backup's `--num-snapshots` / `--num-backups`.
 * @example
 * const policy: CountPolicy = { keepLast: 10 }
 */
export interface CountPolicy {
  readonly keepLast: number
}

/** Any of the three spellings; which one is meant is read from the keys it has. */
export type RetentionPolicy = BtrbkPolicy | RotatePolicy | CountPolicy

export type PolicyError = BbError<'INVALID_POLICY'>

export type BtrbkUnit = 'h' | 'd' | 'w' | 'm' | 'q' | 'y'
export type MinSpec = { readonly kind: 'all' } | { readonly kind: 'latest' } | { readonly kind: 'no' } | { readonly kind: 'within'; readonly unit: BtrbkUnit; readonly count: number }
/** count per unit; `'all'` for `*`; absent or 0 = not set */
export type PreserveMatrix = Partial<Record<BtrbkUnit, number | 'all'>>

export type NormalizedPolicy =
  | { readonly spelling: 'btrbk'; readonly min: MinSpec; readonly matrix: PreserveMatrix; readonly dayOfWeek: number; readonly hourOfDay: number }
  | { readonly spelling: 'rotate'; readonly counts: Partial<Record<RotateFrequency, RotateCount>>; readonly strict: boolean; readonly prefer: 'oldest' | 'newest' }
  | { readonly spelling: 'count'; readonly keepLast: number }

export const ROTATE_FREQUENCIES = ['minutely', 'hourly', 'daily', 'weekly', 'monthly', 'quarterly', 'yearly'] as const
export type RotateFrequency = (typeof ROTATE_FREQUENCIES)[number]

const BTRBK_KEYS = ['preserveMin', 'preserve', 'dayOfWeek', 'hourOfDay'] as const
const ROTATE_KEYS = [...ROTATE_FREQUENCIES, 'strict', 'prefer'] as const
const COUNT_KEYS = ['keepLast'] as const

const HINT =
  "use one spelling: btrbk { preserveMin: '2d', preserve: '24h 7d 4w 12m *y' }, " +
  "rotate-backups { hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 'always' }, or counts { keepLast: 10 }"

const invalid = (message: string, hint = HINT): PolicyError => bbError('INVALID_POLICY', message, hint)

const parseMin = (text: string): Result<MinSpec, PolicyError> => {
  const t = text.trim()
  if (t === 'all' || t === 'latest' || t === 'no') return ok({ kind: t })
  const m = /^(\d+)([hdwmqy])$/.exec(t)
  if (m === null) return err(invalid(`preserveMin ${JSON.stringify(text)} is not all, latest, no or <N>{h,d,w,m,q,y}`, "write e.g. preserveMin: '2d'"))
  return ok({ kind: 'within', count: Number(m[1]), unit: m[2] as BtrbkUnit })
}

/** Parses btrbk's preserve matrix, e.g. `'24h 7d 4w 12m *y'` (each unit at most once). */
export const parsePreserveMatrix = (text: string): Result<PreserveMatrix, PolicyError> => {
  const t = text.trim()
  if (t === 'no' || t === '') return ok({})
  const matrix: Partial<Record<BtrbkUnit, number | 'all'>> = {}
  for (const token of t.split(/\s+/)) {
    const m = /^(\*|\d+)([hdwmqyHDWMQY])$/.exec(token)
    if (m === null) return err(invalid(`preserve token ${JSON.stringify(token)} is not <N>{h,d,w,m,q,y} or *{h,d,w,m,q,y}`, "write e.g. preserve: '24h 7d 4w 12m *y'"))
    const unit = (m[2] ?? 'h').toLowerCase() as BtrbkUnit
    if (unit in matrix) return err(invalid(`preserve ${JSON.stringify(text)} names the unit ${unit} twice`, 'give each of h, d, w, m, q, y at most once'))
    const count = m[1] === '*' ? 'all' : Number(m[1])
    matrix[unit] = count // 0 is kept as "not set": btrbk tests the count for truth, so 0d keeps no dailies
  }
  return ok(matrix)
}

const has = (policy: object, keys: readonly string[]): boolean => keys.some((k) => k in policy && (policy as Record<string, unknown>)[k] !== undefined)

/** Checks a policy object and reads which spelling it is. */
export const normalizePolicy = (policy: RetentionPolicy): Result<NormalizedPolicy, PolicyError> => {
  if (typeof policy !== 'object' || policy === null) return err(invalid('the retention policy is not an object'))
  const known = new Set<string>([...BTRBK_KEYS, ...ROTATE_KEYS, ...COUNT_KEYS])
  const unknown = Object.keys(policy).filter((k) => !known.has(k))
  if (unknown.length > 0) return err(invalid(`unknown retention key ${unknown.map((k) => JSON.stringify(k)).join(', ')}`))
  const spellings = [has(policy, BTRBK_KEYS), has(policy, ROTATE_FREQUENCIES), has(policy, COUNT_KEYS)].filter(Boolean).length
  if (spellings === 0) return err(invalid('the retention policy is empty: it would keep nothing'))
  if (spellings > 1) return err(invalid('the retention policy mixes spellings (btrbk preserve*, rotate-backups hourly/daily/..., keepLast)'))
  if (has(policy, COUNT_KEYS)) {
    const keepLast = (policy as CountPolicy).keepLast
    if (!Number.isInteger(keepLast) || keepLast < 1) return err(invalid(`keepLast ${String(keepLast)} is not a whole number of at least 1`, 'keep at least one snapshot: keepLast: 1 or more'))
    return ok({ spelling: 'count', keepLast })
  }
  if (has(policy, BTRBK_KEYS)) {
    const p = policy as BtrbkPolicy
    const dayOfWeek = WEEKDAYS.indexOf(p.dayOfWeek ?? 'sunday')
    if (dayOfWeek < 0) return err(invalid(`dayOfWeek ${JSON.stringify(p.dayOfWeek)} is not a weekday`, `use one of ${WEEKDAYS.join(', ')}`))
    const hourOfDay = p.hourOfDay ?? 0
    if (!Number.isInteger(hourOfDay) || hourOfDay < 0 || hourOfDay > 23) return err(invalid(`hourOfDay ${String(hourOfDay)} is not a whole hour from 0 to 23`, 'use 0..23'))
    return parseMin(p.preserveMin ?? 'all').andThen((min) =>
      parsePreserveMatrix(p.preserve ?? 'no').andThen((matrix) => {
        const keepsSome = min.kind !== 'no' || Object.values(matrix).some((v) => v === 'all' || v > 0)
        return keepsSome
          ? ok<NormalizedPolicy, PolicyError>({ spelling: 'btrbk', min, matrix, dayOfWeek, hourOfDay })
          : err(invalid("preserveMin 'no' with preserve 'no' keeps nothing", "set preserveMin (e.g. 'latest') or preserve (e.g. '7d')"))
      }),
    )
  }
  const p = policy as RotatePolicy
  const counts: Partial<Record<RotateFrequency, RotateCount>> = {}
  for (const f of ROTATE_FREQUENCIES) {
    const c = p[f]
    if (c === undefined) continue
    if (c !== 'always' && (!Number.isInteger(c) || c < 0)) return err(invalid(`${f} ${JSON.stringify(c)} is not a whole number or 'always'`, `write e.g. ${f}: 7 or ${f}: 'always'`))
    counts[f] = c
  }
  if (!Object.values(counts).some((c) => c === 'always' || c > 0)) return err(invalid('every rotate-backups count is 0: the policy keeps nothing', 'give at least one count above 0, e.g. daily: 7'))
  if (p.prefer !== undefined && p.prefer !== 'oldest' && p.prefer !== 'newest') return err(invalid(`prefer ${JSON.stringify(p.prefer)} is not 'oldest' or 'newest'`))
  return ok({ spelling: 'rotate', counts, strict: p.strict ?? true, prefer: p.prefer ?? 'oldest' })
}
