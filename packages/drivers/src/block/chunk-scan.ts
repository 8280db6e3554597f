import type { Readable } from 'node:stream'
import { bbError, ioError } from '@bb/core'
import { chunkBuffer, type HashPool } from './hash-pool.js'
import { stop, Stop } from './stop.js'

export interface ScanOptions {
  readonly path: string
  /** the file as messages name it, where `path` is another way to it (a /proc/PID/fd link to an open file) */
  readonly name?: string
  /** bytes to read: the image's size */
  readonly size: number
  readonly chunkSize: number
  readonly pool: HashPool
  readonly signal: AbortSignal | undefined
  /** read only the chunks this accepts (verify's subsets) */
  readonly select?: (index: number) => boolean
  /** chunks known to be holes (0) are passed to `zero` without being read ({@link dataChunks}) */
  readonly dataMap?: Uint8Array | undefined
  /**
   * The image being written (a backup's): each chunk with data is written there by the thread that
   * read it, at the same offset, where it differs from what {@link known} says the image holds.
   */
  readonly writeTo?: string | undefined
  /** the digest of what `writeTo` holds at chunk `index` (the parent's), undefined where it holds zeros; with `deliver`, a chunk equal to it is not handed on */
  readonly known?: ((index: number) => Buffer | undefined) | undefined
  /** hand each chunk's bytes to `data` (restore writes them elsewhere; a remote scan sends them) */
  readonly deliver?: boolean | undefined
}

export interface ScanHandlers {
  /** a chunk that is all zero bytes: never hashed */
  zero(index: number, length: number): Promise<void> | void
  /**
   * A chunk with data and its SHA-256. `chunk`: its bytes where the scan hands them on, only valid
   * until the returned promise settles; undefined where they were not asked for, or equal what
   * `known` says is there. `written`: the bytes of it the scan wrote into `writeTo`.
   */
  data(index: number, chunk: Buffer | undefined, digest: Buffer, written: number): Promise<void> | void
  /** the scan failed and stops: a handler that holds chunks back (to write them in order) lets them go */
  failed?(error: unknown): void
}

export interface ScanCounts {
  readonly bytesRead: number
  /** chunks read, and holes passed over */
  readonly chunksRead: number
  /** chunks of zeros, holes included */
  readonly zeroChunks: number
  /** bytes of holes that were not read */
  readonly bytesSkipped: number
}

export const chunkCount = (size: number, chunkSize: number): number => Math.ceil(size / chunkSize)

const shrank = (path: string, at: number, size: number): never =>
  stop(bbError('SOURCE_UNAVAILABLE', `${path} ended at ${at} bytes, before its size of ${size}: it shrank while it was read`, 'make sure nothing truncates it during the backup (or use a snapshot), and run again', { path }))

/**
 * Reads a file or block device once, in fixed chunks, on the pool's threads: each thread reads a
 * chunk, hashes it and writes it (`writeTo`) or hands it back (`deliver`), two chunks a thread in
 * flight. Chunks of zeros go to `handlers.zero`, the others to `handlers.data`, in no particular
 * order; a handler's promise holds its chunk's place (at most two chunks a thread wait).
 */
export const scanChunks = async (options: ScanOptions, handlers: ScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, pool, size, path } = options
  const name = options.name ?? path
  const total = chunkCount(size, chunkSize)
  const lanes = pool.threads * 2
  const free = options.deliver === true ? Array.from({ length: lanes }, () => chunkBuffer(chunkSize)) : []
  const counts = { bytesRead: 0, chunksRead: 0, zeroChunks: 0, bytesSkipped: 0 }
  let failure: { error: unknown } | undefined
  let next = 0

  const chunk = async (index: number): Promise<void> => {
    const offset = index * chunkSize
    const length = Math.min(chunkSize, size - offset)
    counts.chunksRead++
    if (options.dataMap?.[index] === 0) {
      counts.zeroChunks++
      counts.bytesSkipped += length
      return handlers.zero(index, length)
    }
    const result = await pool.scan({ path, offset, length, writeTo: options.writeTo, known: options.known?.(index), buffer: free.pop() })
    try {
      switch (result.kind) {
        case 'failed':
          throw new Stop(ioError(result.operation, result.path === path ? name : result.path)(result.cause))
        case 'short':
          return shrank(name, result.at, size)
        case 'zero':
          counts.bytesRead += length
          counts.zeroChunks++
          return await handlers.zero(index, length)
        case 'data':
          counts.bytesRead += length
          return await handlers.data(index, result.delivered ? result.buffer?.subarray(0, length) : undefined, result.digest, result.written)
      }
    } finally {
      if (result.buffer !== undefined) free.push(result.buffer)
    }
  }

  const lane = async (): Promise<void> => {
    while (failure === undefined) {
      if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
      while (next < total && options.select !== undefined && !options.select(next)) next++
      if (next >= total) return
      await chunk(next++)
    }
  }
  try {
    // the first failure of any lane stops the others at their next chunk
    await Promise.all(Array.from({ length: lanes }, async () => lane().catch((error: unknown) => {
      failure ??= { error }
      handlers.failed?.(error)
    })))
  } finally {
    await pool.closeFiles()
  }
  if (failure !== undefined) throw failure.error
  return { ...counts }
}

/** What {@link scanStream}'s reads share: a fixed set of chunk buffers, hashing on the pool's threads while reading goes on, and the first failure. */
export const chunkDispatcher = (chunkSize: number, pool: HashPool, handlers: ScanHandlers) => {
  const zeros = Buffer.alloc(chunkSize)
  const free = Array.from({ length: pool.threads * 2 + 1 }, () => chunkBuffer(chunkSize))
  const waiting: ((b: Buffer) => void)[] = []
  const release = (b: Buffer): void => {
    const next = waiting.shift()
    if (next === undefined) free.push(b)
    else next(b)
  }
  const inflight = new Set<Promise<void>>()
  const counts = { bytesRead: 0, chunksRead: 0, zeroChunks: 0, bytesSkipped: 0 }
  let failure: { error: unknown } | undefined
  return {
    counts,
    failed: (): boolean => failure !== undefined,
    acquire: async (): Promise<Buffer> => free.pop() ?? new Promise((resolve) => waiting.push(resolve)),
    release,
    /** a chunk read into `buffer` (acquired here): zero, or hashed and handed on; the buffer comes back */
    read: async (index: number, buffer: Buffer, length: number): Promise<void> => {
      counts.bytesRead += length
      counts.chunksRead++
      if (buffer.subarray(0, length).equals(zeros.subarray(0, length))) {
        counts.zeroChunks++
        try {
          await handlers.zero(index, length)
        } finally {
          release(buffer)
        }
        return
      }
      const work = pool.hash(buffer, length)
        .then(async ({ digest, buffer: back }) => {
          try {
            await handlers.data(index, back.subarray(0, length), digest, 0)
          } finally {
            release(back)
          }
        }, (error: unknown) => {
          release(chunkBuffer(chunkSize)) // the transferred buffer is gone with the failed worker
          throw error
        })
        .catch((error: unknown) => {
          failure ??= { error }
        })
      inflight.add(work)
      void work.finally(() => inflight.delete(work))
    },
    /** waits for the chunks being hashed; throws the first failure */
    finish: async (): Promise<void> => {
      await Promise.all(inflight)
      if (failure !== undefined) throw failure.error
    },
    settle: async (): Promise<void> => {
      await Promise.allSettled(inflight)
    },
  }
}

/**
 * Like {@link scanChunks}, for a source that can only be read front to back: a stream of exactly
 * `size` bytes (the output of `head -c SIZE` on another host). `what` names it in errors; a stream
 * that ends early is an error, and reading waits while all buffers are being hashed.
 */
export const scanStream = async (options: { readonly stream: Readable; readonly what: string; readonly size: number; readonly chunkSize: number; readonly pool: HashPool; readonly signal: AbortSignal | undefined }, handlers: ScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, pool, size, stream } = options
  const chunks = chunkDispatcher(chunkSize, pool, handlers)
  const total = chunkCount(size, chunkSize)
  let index = 0
  let filled = 0
  let buffer = total > 0 ? await chunks.acquire() : undefined
  try {
    for await (const piece of stream as AsyncIterable<Buffer>) {
      if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
      if (chunks.failed()) break
      let at = 0
      while (at < piece.length && buffer !== undefined) {
        const length = Math.min(chunkSize, size - index * chunkSize)
        const n = Math.min(length - filled, piece.length - at)
        piece.copy(buffer, filled, at, at + n)
        filled += n
        at += n
        if (filled < length) continue
        await chunks.read(index++, buffer, length)
        filled = 0
        buffer = index < total ? await chunks.acquire() : undefined
      }
    }
    await chunks.finish()
    if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
    if (index < total) {
      stop(bbError('SOURCE_UNAVAILABLE', `${options.what} ended at ${index * chunkSize + filled} bytes, before its size of ${size}: it shrank while it was read, or the connection broke`,
        'make sure nothing truncates it during the backup (or use a snapshot), and run again', { path: options.what }))
    }
  } finally {
    if (buffer !== undefined) chunks.release(buffer)
    stream.destroy()
    await chunks.settle()
  }
  return { ...chunks.counts }
}
