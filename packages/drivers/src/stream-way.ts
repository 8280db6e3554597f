import { Transform } from 'node:stream'
import { formatLocation, type Transport } from '@bb/core'

/** How a stream travels between its two hosts. */
export interface StreamWay {
  /** zstd-compress the stream on the sender's host and decompress it on the receiver's (one receiver only) */
  readonly compress?: 'zstd'
  /** at most this many bytes a second leave the sender (after compression): the stream then passes through this process */
  readonly rateLimit?: number
}

/** A {@link StreamWay} as it applies to one stream's two ends, and why a stream to be compressed was not. */
export interface StreamPlan extends StreamWay {
  readonly warnings: readonly string[]
}

/** What a driver was asked for: `streamCompress: 'zstd'` compresses what crosses between two hosts, when zstd is on both. */
export interface StreamWayOptions {
  readonly streamCompress?: 'zstd' | 'none'
  readonly rateLimit?: number
}

/**
 * Plans the way of streams between hosts: compressed when asked for, when the stream leaves a host
 * (never from this host to itself) and zstd is on both ends (else as it is, with a warning that
 * says where to install it); at the rate limit when there is one. Whether a host has zstd is asked
 * once per transport.
 */
export const streamPlanner = (options: StreamWayOptions): ((from: Transport, to: Transport, signal: AbortSignal | undefined) => Promise<StreamPlan>) => {
  const zstdAt = new WeakMap<Transport, Promise<boolean>>()
  const hasZstd = (at: Transport, signal: AbortSignal | undefined): Promise<boolean> => {
    const known = zstdAt.get(at)
    if (known !== undefined) return known
    const found = at.exec(['zstd', '--version'], signal === undefined ? {} : { signal }).match((r) => r.exitCode === 0, () => false)
    zstdAt.set(at, found)
    return found
  }
  const limited: StreamPlan = { ...(options.rateLimit === undefined ? {} : { rateLimit: options.rateLimit }), warnings: [] }
  return async (from, to, signal) => {
    if (options.streamCompress !== 'zstd' || (from.location.kind === 'local' && to.location.kind === 'local')) return limited
    const found = await Promise.all([from, to].map((at) => hasZstd(at, signal)))
    const missing = [from, to].filter((_, i) => found[i] !== true).map((at) => formatLocation(at.location))
    if (missing.length > 0) {
      return { ...limited, warnings: [`the stream went uncompressed: zstd is not installed where ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} (apt-get install zstd there)`] }
    }
    return { ...limited, compress: 'zstd' }
  }
}

/**
 * Paces a stream at `bytesPerSecond` at most: hands each chunk to `put` in pieces of a twentieth of
 * a second's worth (1 KiB at least), each when the rate allows, so that a low limit is smooth
 * rather than bursts of a pipe's 64 KiB. `put` calls `next` once its piece is taken; with an error
 * the rest of the chunk is dropped, and `done` gets the error.
 */
export const pacer = (bytesPerSecond: number) => {
  const piece = Math.max(1024, Math.floor(bytesPerSecond / 20))
  let next = 0
  return (chunk: Buffer, put: (part: Buffer, next: (error?: Error | null) => void) => void, done: (error?: Error | null) => void): void => {
    let offset = 0
    const step = (error?: Error | null): void => {
      if (error !== undefined && error !== null) return done(error)
      if (offset >= chunk.length) return done()
      const part = chunk.subarray(offset, offset + piece)
      offset += part.length
      const now = Date.now()
      const at = Math.max(now, next)
      next = at + (part.length * 1000) / bytesPerSecond
      if (at > now) setTimeout(() => put(part, step), at - now)
      else put(part, step)
    }
    step()
  }
}

/** Lets bytes through at `bytesPerSecond` at most (see {@link pacer}). */
export const rateLimited = (bytesPerSecond: number): Transform => {
  const pace = pacer(bytesPerSecond)
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      pace(chunk, (part, next) => {
        this.push(part)
        next()
      }, callback)
    },
  })
}

/** Counts what passes (a stream whose bytes this host cannot read from a process's counters). */
export const counting = (): Transform & { bytes: number } => {
  const counter = Object.assign(new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      counter.bytes += chunk.length
      callback(null, chunk)
    },
  }), { bytes: 0 })
  return counter
}
