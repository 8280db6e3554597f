import { bbError, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'

/** `90m`, `26h`, `2d`, `1w` in seconds; undefined when it is not such a duration */
export const parseDuration = (text: string): number | undefined => {
  const m = /^(\d+)\s*(m|min|h|d|w)$/.exec(text.trim())
  if (m === null) return undefined
  const unit: Readonly<Record<string, number>> = { m: 60, min: 60, h: 3600, d: 86400, w: 7 * 86400 }
  return Number(m[1]) * (unit[m[2] ?? ''] ?? 0)
}

/**
 * A rate in bytes a second as btrbk's `rate_limit` writes it: a number with an optional k, m, g or t
 * (powers of 1024, either case): `500k`, `10M`, `1.5m`; undefined when it is not one, or below 1 B/s
 */
export const parseRate = (text: string): number | undefined => {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)$/i.exec(text.trim())
  if (m === null) return undefined
  const rate = Math.round(Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] ?? '').toLowerCase() || ' '))
  return rate >= 1 ? rate : undefined
}

/**
 * `--wait [seconds]`: seconds, or a duration (`10m`, `2h`); a day when given without a value;
 * undefined when not given. Anything else is refused: it would not have waited as asked.
 */
export const waitSecondsOf = (wait: string | boolean | undefined): Result<number | undefined, BbError> => {
  if (wait === undefined || wait === false) return ok(undefined)
  if (wait === true) return ok(24 * 3600)
  const seconds = /^\s*\d+\s*$/.test(wait) ? Number(wait) : parseDuration(wait)
  return seconds === undefined
    ? err(bbError('INVALID_OPTIONS', `--wait ${wait} is not a number of seconds or a duration`, 'give seconds or a duration, joined to the option: --wait=600 or --wait=10m (a bare --wait waits up to a day)'))
    : ok(seconds)
}

/** A hook's time limit (`hook_timeout`, `--hook-timeout`): whole seconds (0: no limit) or a duration (`10m`); undefined when it is neither */
export const hookTimeoutOf = (value: unknown): number | undefined => {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : undefined
  if (typeof value !== 'string') return undefined
  return /^\s*\d+\s*$/.test(value) ? Number(value) : parseDuration(value)
}
