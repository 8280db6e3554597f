import type { Transport } from '../transport/transport.js'

/** A target with less free space than this share of its filesystem is a problem (doctor) and a warning (status --check). */
export const LOW_SPACE_SHARE = 0.05

const GIB = 1024 ** 3

/** `3.2 GiB`, `812 GiB`: a size as df users read it */
export const gib = (bytes: number): string => `${(bytes / GIB).toFixed(bytes < 10 * GIB ? 1 : 0)} GiB`

/** The filesystem a place is on: its size, what is used and what is free, in bytes. */
export interface Space {
  readonly size: number
  readonly used: number
  readonly free: number
}

/**
 * `df -Pk` of a path where it is (one command, also on another host), or undefined where no command
 * runs (a daemon module) or df fails. Free is what a user that is not root may still write.
 */
export const spaceAt = async (at: Transport, signal: AbortSignal | undefined, path: string = at.location.path): Promise<Space | undefined> => {
  if (at.filesOnly === true) return undefined
  const r = await at.exec(['df', '-Pk', '--', path], signal === undefined ? {} : { signal })
  if (r.isErr() || r.value.exitCode !== 0) return undefined
  const fields = r.value.stdout.trim().split('\n').at(-1)?.split(/\s+/) ?? []
  const [size, used, free] = [fields[1], fields[2], fields[3]].map((f) => Number(f) * 1024)
  return size !== undefined && used !== undefined && free !== undefined && [size, used, free].every(Number.isFinite) && size > 0 ? { size, used, free } : undefined
}
