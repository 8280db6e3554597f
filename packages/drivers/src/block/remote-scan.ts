import type { Readable } from 'node:stream'
import { bbError, type Transport } from '@bb/core'
import { chunkCount, scanChunks, type ScanCounts } from './chunk-scan.js'
import { dataChunks } from './data-map.js'
import { DIGEST_BYTES, type HashPool } from './hash-pool.js'
import { stop } from './stop.js'

/**
 * The chunk scan on the source's host (`bbackup-remote block-scan`): it reads the image there,
 * hashes its chunks on that host's cores and sends only what the backup host lacks. Its stdin is
 * the parent revision's hashes (32 bytes a chunk); its stdout a stream of records, each a type
 * byte and the chunk's index (uint32, big-endian):
 * - `S`: the chunk's hash equals the parent's: nothing more
 * - `Z`: the chunk is all zeros (or a hole)
 * - `D`: its SHA-256 (32 bytes), then the chunk's bytes
 * - `E` (index 0): the end, then bytes read and bytes of holes skipped (uint64 each)
 * Records come in no particular order.
 */
export const BLOCK_SCAN_PROTOCOL = 'bbackup-block-scan 1'

const HEADER = 5

/** Serves a block scan on this host: what `bbackup-remote block-scan` runs. */
export const serveBlockScan = async (options: {
  readonly at: Transport
  readonly path: string
  readonly size: number
  readonly chunkSize: number
  readonly parentHashes: Buffer
  readonly pool: HashPool
  /** writes bytes out; resolves when more may be written (backpressure) */
  readonly write: (bytes: Buffer) => Promise<void>
}): Promise<void> => {
  const { chunkSize, parentHashes } = options
  const record = (type: string, index: number, extra = 0): Buffer => {
    const b = Buffer.alloc(HEADER + extra)
    b.write(type, 0, 'latin1')
    b.writeUInt32BE(index, 1)
    return b
  }
  const parentChunks = parentHashes.length / DIGEST_BYTES
  const dataMap = await dataChunks(options.at, options.path, options.size, chunkSize)
  // only the chunks that differ from the parent's come back from the threads
  const known = (index: number): Buffer | undefined => (index < parentChunks ? parentHashes.subarray(index * DIGEST_BYTES, (index + 1) * DIGEST_BYTES) : undefined)
  const counts = await scanChunks({ path: options.path, size: options.size, chunkSize, pool: options.pool, signal: undefined, dataMap, known, deliver: true }, {
    zero: async (index) => options.write(record('Z', index)),
    data: async (index, chunk, digest) => {
      if (chunk === undefined) return options.write(record('S', index))
      const head = record('D', index, DIGEST_BYTES)
      digest.copy(head, HEADER)
      // one write a record: handlers run at once, and two writes of one record could take another's between them
      // (a copy too: the chunk's buffer goes back to the scan when this resolves)
      return options.write(Buffer.concat([head, chunk]))
    },
  })
  const end = record('E', 0, 16)
  end.writeBigUInt64BE(BigInt(counts.bytesRead), HEADER)
  end.writeBigUInt64BE(BigInt(counts.bytesSkipped), HEADER + 8)
  await options.write(end)
}

/** What the backup host does with each record of a remote scan. */
export interface RemoteScanHandlers {
  unchanged(index: number, length: number): Promise<void> | void
  zero(index: number, length: number): Promise<void> | void
  /** `digest` as the source's host computed it; `chunk` is valid until the returned promise settles */
  data(index: number, chunk: Buffer, digest: Buffer): Promise<void> | void
}

/**
 * Reads the records of a remote scan (see {@link BLOCK_SCAN_PROTOCOL}) from its stdout. Every chunk
 * must be answered exactly once and the end record must come: anything else is an error that
 * names `what`. Counts are as the source's host read them.
 */
export const readBlockScan = async (options: { readonly stream: Readable; readonly what: string; readonly size: number; readonly chunkSize: number }, handlers: RemoteScanHandlers): Promise<ScanCounts> => {
  const { chunkSize, size } = options
  const total = chunkCount(size, chunkSize)
  const seen = new Uint8Array(total)
  const broken = (why: string): never => stop(bbError('SOURCE_UNAVAILABLE', `the chunk scan of ${options.what} broke off: ${why}`, 'run the backup again; if it repeats, check bbackup-remote on that host (the same version as here)', { path: options.what }))
  // pieces are kept as they come and joined once a whole record is there: a 4 MiB chunk arrives in many
  let parts: Buffer[] = []
  let have = 0
  const take = (n: number): Buffer => {
    const all = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, have)
    parts = have > n ? [all.subarray(n)] : []
    have -= n
    return all.subarray(0, n)
  }
  const peek = (n: number): Buffer => {
    if (parts.length > 1) parts = [Buffer.concat(parts, have)]
    return (parts[0] as Buffer).subarray(0, n)
  }
  let answered = 0
  let zeroChunks = 0
  let end: { bytesRead: number; bytesSkipped: number } | undefined
  // the bytes of the record being read: its header first, then all of it
  let need = HEADER
  for await (const piece of options.stream as AsyncIterable<Buffer>) {
    parts.push(piece)
    have += piece.length
    while (have >= need) {
      if (end !== undefined) broken('bytes after the end record')
      const header = peek(HEADER)
      const type = String.fromCharCode(header[0] ?? 0)
      const index = header.readUInt32BE(1)
      const whole = type === 'E' ? HEADER + 16 : type === 'D' ? HEADER + DIGEST_BYTES + Math.max(0, Math.min(chunkSize, size - index * chunkSize)) : HEADER
      if (need < whole) {
        need = whole
        continue
      }
      const record = take(whole)
      need = HEADER
      if (type === 'E') {
        end = { bytesRead: Number(record.readBigUInt64BE(HEADER)), bytesSkipped: Number(record.readBigUInt64BE(HEADER + 8)) }
        continue
      }
      if (type !== 'S' && type !== 'Z' && type !== 'D') broken(`an unknown record ${JSON.stringify(type)}`)
      if (index >= total || seen[index] === 1) broken(`chunk ${index} ${index >= total ? 'is past the end of the image' : 'came twice'}`)
      seen[index] = 1
      answered++
      const length = Math.min(chunkSize, size - index * chunkSize)
      if (type === 'Z') {
        zeroChunks++
        await handlers.zero(index, length)
      } else if (type === 'S') {
        await handlers.unchanged(index, length)
      } else {
        await handlers.data(index, record.subarray(HEADER + DIGEST_BYTES), Buffer.from(record.subarray(HEADER, HEADER + DIGEST_BYTES)))
      }
    }
  }
  if (end !== undefined && have > 0) broken('bytes after the end record')
  if (end === undefined || answered !== total) broken(end === undefined ? 'the stream ended before its end record' : `${total - answered} of ${total} chunks were never answered`)
  return { bytesRead: end?.bytesRead ?? 0, chunksRead: total, zeroChunks, bytesSkipped: end?.bytesSkipped ?? 0 }
}
