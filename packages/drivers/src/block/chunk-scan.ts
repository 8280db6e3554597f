import { open, type FileHandle } from 'node:fs/promises'
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
 * Reads a file or block device once, front to back, in fixed chunks (a few reads in flight):
 * zero chunks go to `handlers.zero` at once, the others are hashed on the pool's threads while the
 * next chunks are read. Handlers are called in no particular order. At most two chunks per thread
 * plus one per read in flight are in memory.
 */
export const scanChunks = async (options: ScanOptions, handlers: ScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, pool, size, path } = options
  const zeros = Buffer.alloc(chunkSize)
  const free = Array.from({ length: pool.threads * 2 + READERS }, () => chunkBuffer(chunkSize))
  const waiting: ((b: Buffer) => void)[] = []
  const acquire = async (): Promise<Buffer> => free.pop() ?? new Promise((resolve) => waiting.push(resolve))
  const release = (b: Buffer): void => {
    const next = waiting.shift()
    if (next === undefined) free.push(b)
    else next(b)
  }
  let failure: { error: unknown } | undefined
  const inflight = new Set<Promise<void>>()
  let bytesRead = 0
  let chunksRead = 0
  let zeroChunks = 0
  let bytesSkipped = 0
  const handle = await fsStep('open', path, open(path, 'r'))
  const total = chunkCount(size, chunkSize)
  let next = 0
  // several reads in flight: the device sees a queue, not one request at a time
  const read = async (): Promise<void> => {
    while (failure === undefined) {
      if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
      while (next < total && options.select !== undefined && !options.select(next)) next++
      if (next >= total) return
      const index = next++
      const offset = index * chunkSize
      const length = Math.min(chunkSize, size - offset)
      if (options.dataMap?.[index] === 0) {
        chunksRead++
        zeroChunks++
        bytesSkipped += length
        await handlers.zero(index, length)
        continue
      }
      const buffer = await acquire()
      try {
        await readFully(handle, path, buffer, length, offset)
      } catch (error) {
        release(buffer)
        throw error
      }
      bytesRead += length
      chunksRead++
      if (buffer.subarray(0, length).equals(zeros.subarray(0, length))) {
        zeroChunks++
        try {
          await handlers.zero(index, length)
        } finally {
          release(buffer)
        }
        continue
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
    }
  }
  // the first failure of any reader stops the others at their next chunk
  const reader = async (): Promise<void> => read().catch((error: unknown) => {
    failure ??= { error }
  })
  try {
    await Promise.all(Array.from({ length: READERS }, reader))
    await Promise.all(inflight)
    if (failure !== undefined) throw failure.error
  } finally {
    await Promise.allSettled(inflight)
    await handle.close()
  }
  return { bytesRead, chunksRead, zeroChunks, bytesSkipped }
}
