import type { Readable } from 'node:stream'
import { bbError } from '@bb/core'
import { chunkCount, chunkDispatcher, type ScanCounts, type ScanHandlers } from './chunk-scan.js'
import type { HashPool } from './hash-pool.js'
import { stop } from './stop.js'

/**
 * The stream of `rbd export-diff` (format v1, Ceph's doc/dev/rbd-diff.rst): the header
 * `rbd diff v1\n`, then records, little-endian: `f` / `t` u32 length + the from / to snapshot's
 * name, `s` u64 the image size, `w` u64 offset + u64 length + the bytes, `z` u64 offset + u64
 * length (zeroed, or discarded), `e` the end.
 */
export const RBD_DIFF_HEADER = 'rbd diff v1\n'

export interface RbdDiffOptions {
  readonly stream: Readable
  /** names the stream in errors */
  readonly what: string
  readonly size: number
  readonly chunkSize: number
  readonly pool: HashPool
  readonly signal: AbortSignal | undefined
  /**
   * A diff from the snapshot the parent revision was read from: fills `buffer` with the parent's
   * bytes of chunk `index` (the records are laid over them), and a chunk without records is
   * unchanged. Undefined for a whole export: the records over zeros, and a chunk without any is a hole.
   */
  readonly base?: ((index: number, buffer: Buffer, length: number) => Promise<void>) | undefined
}

/** Reads exactly the bytes asked for from a stream of pieces. */
const byteReader = (stream: Readable) => {
  const pieces = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]()
  let held: Buffer = Buffer.alloc(0)
  /** more bytes, or false at the stream's end */
  const more = async (): Promise<boolean> => {
    const next = await pieces.next()
    if (next.done === true) return false
    held = held.length === 0 ? next.value : Buffer.concat([held, next.value])
    return true
  }
  return {
    /** `n` bytes (a small header field); undefined where the stream ends first */
    exact: async (n: number): Promise<Buffer | undefined> => {
      while (held.length < n) if (!(await more())) return undefined
      const out = held.subarray(0, n)
      held = held.subarray(n)
      return out
    },
    /** the next piece of at most `n` bytes, as it came (no copy); undefined at the end */
    upTo: async (n: number): Promise<Buffer | undefined> => {
      if (held.length === 0 && !(await more())) return undefined
      const out = held.subarray(0, Math.min(n, held.length))
      held = held.subarray(out.length)
      return out
    },
  }
}

/**
 * Reads an `rbd export-diff` stream into the volume's chunks: a chunk with records is made whole
 * (over the parent's bytes, or zeros), then hashed on the pool's threads and handed to `data` (or
 * `zero`) like a chunk read from a file; a chunk without records is `unchanged` (a diff from the
 * parent's snapshot) or a hole (`zero`, a whole export: rbd leaves out what was never written).
 * Records must come in the order of their offsets, as rbd writes them; anything else is refused.
 */
export const scanRbdDiff = async (options: RbdDiffOptions, handlers: ScanHandlers & { unchanged(index: number, length: number): Promise<void> | void }): Promise<ScanCounts & { readonly bytesUnchanged?: number }> => {
  const { chunkSize, size, what, base } = options
  const total = chunkCount(size, chunkSize)
  const chunks = chunkDispatcher(chunkSize, options.pool, handlers)
  const reader = byteReader(options.stream)
  const lengthOf = (index: number): number => Math.min(chunkSize, size - index * chunkSize)
  let dataBytes = 0
  let holes = 0
  let holeBytes = 0
  let unchangedBytes = 0
  /** the chunks before it are handed on */
  let next = 0
  let open: { readonly index: number; readonly buffer: Buffer } | undefined

  const broken = (problem: string): never =>
    stop(bbError('SOURCE_UNAVAILABLE', `the export of ${what} cannot be read: ${problem}`, 'run the backup again; if it repeats, check that rbd here is the cluster\'s version (ceph-common), and report it', { path: what }))

  /** hands on the chunks before `end` that no record touched */
  const untouchedUpTo = async (end: number): Promise<void> => {
    for (; next < end; next++) {
      const length = lengthOf(next)
      if (base === undefined) {
        holes++
        holeBytes += length
        await handlers.zero(next, length)
      } else {
        unchangedBytes += length
        await handlers.unchanged(next, length)
      }
    }
  }
  const close = async (): Promise<void> => {
    if (open === undefined) return
    const { index, buffer } = open
    open = undefined
    await chunks.read(index, buffer, lengthOf(index))
  }
  /** the chunk at `index`, made whole to be written over */
  const chunkAt = async (index: number): Promise<Buffer> => {
    if (open?.index === index) return open.buffer
    if (index < (open?.index ?? next)) broken(`a record at chunk ${index} came after chunk ${open?.index ?? next - 1} (out of order)`)
    await close()
    await untouchedUpTo(index)
    const buffer = await chunks.acquire()
    const length = lengthOf(index)
    if (base === undefined) buffer.fill(0, 0, length)
    else await base(index, buffer, length)
    open = { index, buffer }
    next = index + 1
    return buffer
  }
  const u64 = async (field: string): Promise<number> => {
    const b = await reader.exact(8)
    if (b === undefined) return broken(`it ended inside a record (${field})`)
    const n = b.readBigUInt64LE()
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) broken(`the ${field} ${n} is out of range`)
    return Number(n)
  }
  /** a region of the image, checked against its size */
  const region = async (): Promise<{ offset: number; length: number }> => {
    const offset = await u64('offset')
    const length = await u64('length')
    if (offset + length > size) broken(`a record reaches ${offset + length} bytes, past the image's ${size}`)
    return { offset, length }
  }

  try {
    const header = await reader.exact(RBD_DIFF_HEADER.length)
    if (header?.toString('latin1') !== RBD_DIFF_HEADER) {
      broken(header === undefined ? 'it is empty (rbd export-diff wrote nothing)' : `it starts with ${JSON.stringify(header.toString('latin1'))}, not ${JSON.stringify(RBD_DIFF_HEADER)}`)
    }
    for (let ended = false; !ended;) {
      if (options.signal?.aborted === true) stop(bbError('CANCELLED', 'cancelled', 'run it again'))
      const tag = await reader.exact(1)
      if (tag === undefined) return broken('it ended before its end record (rbd stopped early)')
      switch (String.fromCharCode(tag[0] ?? 0)) {
        case 'f':
        case 't': {
          const n = await reader.exact(4)
          if (n === undefined || (await reader.exact(n.readUInt32LE())) === undefined) broken('it ended inside a snapshot name')
          break
        }
        case 's': {
          const said = await u64('size')
          if (said !== size) broken(`it is of an image of ${said} bytes, not ${size}`)
          break
        }
        case 'w': {
          const { offset, length } = await region()
          dataBytes += length
          for (let at = offset; at < offset + length;) {
            const index = Math.floor(at / chunkSize)
            const buffer = await chunkAt(index)
            const piece = await reader.upTo(Math.min(offset + length, (index + 1) * chunkSize) - at)
            if (piece === undefined) return broken(`it ended inside the data at ${at}`)
            piece.copy(buffer, at - index * chunkSize)
            at += piece.length
          }
          break
        }
        case 'z': {
          const { offset, length } = await region()
          for (let at = offset; at < offset + length;) {
            const index = Math.floor(at / chunkSize)
            const buffer = await chunkAt(index)
            const end = Math.min(offset + length, (index + 1) * chunkSize)
            buffer.fill(0, at - index * chunkSize, end - index * chunkSize)
            at = end
          }
          break
        }
        case 'e':
          ended = true
          break
        default:
          broken(`it has a record of unknown kind ${JSON.stringify(tag.toString('latin1'))}`)
      }
    }
    await close()
    await untouchedUpTo(total)
    await chunks.finish()
  } finally {
    if (open !== undefined) chunks.release(open.buffer)
    options.stream.destroy()
    await chunks.settle()
  }
  return {
    bytesRead: dataBytes, chunksRead: chunks.counts.chunksRead + holes, zeroChunks: chunks.counts.zeroChunks + holes, bytesSkipped: holeBytes,
    ...(base === undefined ? {} : { bytesUnchanged: unchangedBytes }),
  }
}
