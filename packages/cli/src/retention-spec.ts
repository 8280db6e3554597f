import { bbError, normalizePolicy, ROTATE_FREQUENCIES, type BbError, type RetentionPolicy, type RotatePolicy } from '@bb/core'
import { err, type Result } from 'neverthrow'

const HINT = "write a count ('10'), btrbk's matrix ('24h 7d 4w 12m *y', optionally 'min=2d' first) or rotate-backups' ('hourly=24 daily=7 weekly=4 monthly=always')"
/** `daily=7`, `monthly=always`: one of rotate-backups' frequencies (and quarterly) with its count */
const FREQUENCY = new RegExp(`^(${ROTATE_FREQUENCIES.join('|')})=(\\d+|always)$`)

/**
 * Reads the one-line spellings of `--keep-backups` / `--keep-snapshots`:
 * - `10`: the newest 10 (btrfs-backup's `--num-backups`);
 * - `24h 7d 4w 12m *y`, with an optional `min=2d` (btrbk's `preserve` and `preserve_min`; without
 *   `min=` nothing is kept by age alone: preserve_min no);
 * - `hourly=24 daily=7 weekly=4 monthly=always`, with optional `relaxed` and `prefer-recent`
 *   (`quarterly=N` too).
 */
export const parseRetentionSpec = (spec: string): Result<RetentionPolicy, BbError> => {
  const text = spec.trim()
  if (text === '') return err(bbError('INVALID_POLICY', 'the retention policy is empty', HINT))
  let policy: RetentionPolicy
  if (/^\d+$/.test(text)) policy = { keepLast: Number(text) }
  // any `word=` but btrbk's `min=` is a frequency: one that is not gets its own error here
  else if (text.split(/\s+/).some((word) => /^[a-z]+=/.test(word) && !word.startsWith('min='))) {
    const rotate: Record<string, unknown> = {}
    for (const word of text.split(/\s+/)) {
      const m = FREQUENCY.exec(word)
      if (m !== null && (m[1] as string) in rotate) return err(bbError('INVALID_POLICY', `retention ${JSON.stringify(spec)}: ${m[1] as string} is given twice`, 'give each frequency once, e.g. daily=7 weekly=4'))
      if (m !== null) rotate[m[1] as string] = m[2] === 'always' ? 'always' : Number(m[2])
      else if (word === 'relaxed') rotate.strict = false
      else if (word === 'prefer-recent') rotate.prefer = 'newest'
      else return err(bbError('INVALID_POLICY', `retention ${JSON.stringify(spec)}: ${JSON.stringify(word)} is not <frequency>=<N|always>, relaxed or prefer-recent`, HINT))
    }
    policy = rotate as RotatePolicy
  } else {
    const words = text.split(/\s+/)
    const min = words[0]?.startsWith('min=') === true ? (words.shift() ?? '').slice(4) : 'no'
    policy = { preserveMin: min, preserve: words.join(' ') || 'no' }
  }
  return normalizePolicy(policy).map(() => policy).mapErr((e) => ({ ...e, message: `retention ${JSON.stringify(spec)}: ${e.message}`, hint: HINT }))
}
