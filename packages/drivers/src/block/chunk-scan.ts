import { open, type FileHandle } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { bbError } from '@bb/core'
import { chunkBuffer, type HashPool } from './hash-pool.js'
import { fsStep, stop } from './stop.js'

export interface ScanOptions {
  readonly path: string
  /** bytes to read: the image's size */
  readonly size: number
  readonly chunkSize: number
  readonly pool: HashPool
  readonly signal: AbortSignal | undefined
  /** read only the chunks this accepts (verify's subsets) */
  readonly select?: (index: number) => boolean
  /** chunks known to be holes (0) are passed to `zero` without being read ({@link dataChunks}) */
  readonly dataMap?: Uint8Array | undefined
}

export interface ScanHandlers {
  /** a chunk that is all zero bytes: never hashed */
  zero(index: number, length: number): Promise<void> | void
  /** a chunk with data and its SHA-256; `chunk` is only valid until the returned promise settles */
  data(index: number, chunk: Buffer, digest: Buffer): Promise<void> | void
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

/** reads in flight at once */
const READERS = 4

export const chunkCount = (size: number, chunkSize: number): number => Math.ceil(size / chunkSize)

const readFully = async (handle: FileHandle, path: string, buffer: Buffer, length: number, offset: number): Promise<void> => {
  let done = 0
  while (done < length) {
    const { bytesRead } = await fsStep('read', path, handle.read(buffer, done, length - done, offset + done))
    if (bytesRead === 0) stop(bbError('SOURCE_UNAVAILABLE', `${path} ended at ${offset + done} bytes, before its size of ${offset + length} or more: it shrank while it was read`, 'make sure nothing truncates it during the backup (or use a snapshot), and run again', { path }))
    done += bytesRead
  }
}

/**
 * What the readers share: a fixed set of chunk buffers, zero detection, hashing on the pool's
 * threads while reading goes on, and the first failure. At most two chunks per thread plus one per
 * reader are in memory.
 */
const chunkDispatcher = (chunkSize: number, pool: HashPool, readers: number, handlers: ScanHandlers) => {
  const zeros = Buffer.alloc(chunkSize)
  const free = Array.from({ length: pool.threads * 2 + readers }, () => chunkBuffer(chunkSize))
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
    fail: (error: unknown): void => {
      failure ??= { error }
    },
    acquire: async (): Promise<Buffer> => free.pop() ?? new Promise((resolve) => waiting.push(resolve)),
    release,
    /** a hole known without reading it */
    hole: async (index: number, length: number): Promise<void> => {
      counts.chunksRead++
      counts.zeroChunks++
      counts.bytesSkipped += length
      await handlers.zero(index, length)
    },
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
            await handlers.data(index, back.subarray(0, length), digest)
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
 * Reads a file or block device once, front to back, in fixed chunks (a few reads in flight):
 * zero chunks go to `handlers.zero` at once, the others are hashed on the pool's threads while the
 * next chunks are read. Handlers are called in no particular order.
 */
export const scanChunks = async (options: ScanOptions, handlers: ScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, pool, size, path } = options
  const chunks = chunkDispatcher(chunkSize, pool, READERS, handlers)
  const handle = await fsStep('open', path, open(path, 'r'))
  const total = chunkCount(size, chunkSize)
  let next = 0
  // several reads in flight: the device sees a queue, not one request at a time
  const read = async (): Promise<void> => {
    while (!chunks.failed()) {
      if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
      while (next < total && options.select !== undefined && !options.select(next)) next++
      if (next >= total) return
      const index = next++
      const offset = index * chunkSize
      const length = Math.min(chunkSize, size - offset)
      if (options.dataMap?.[index] === 0) {
        await chunks.hole(index, length)
        continue
      }
      const buffer = await chunks.acquire()
      try {
        await readFully(handle, path, buffer, length, offset)
      } catch (error) {
        chunks.release(buffer)
        throw error
      }
      await chunks.read(index, buffer, length)
    }
  }
  try {
    // the first failure of any reader stops the others at their next chunk
    await Promise.all(Array.from({ length: READERS }, async () => read().catch(chunks.fail)))
    await chunks.finish()
  } finally {
    await chunks.settle()
    await handle.close()
  }
  return { ...chunks.counts }
}

/**
 * Like {@link scanChunks}, for a source that can only be read front to back: a stream of exactly
 * `size` bytes (the output of `head -c SIZE` on another host). `what` names it in errors; a stream
 * that ends early is an error, and reading waits while all buffers are being hashed.
 */
export const scanStream = async (options: { readonly stream: Readable; readonly what: string; readonly size: number; readonly chunkSize: number; readonly pool: HashPool; readonly signal: AbortSignal | undefined }, handlers: ScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, pool, size, stream } = options
  const chunks = chunkDispatcher(chunkSize, pool, 1, handlers)
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
