import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'

/**
 * Chunk hashing on worker threads: SHA-256 through OpenSSL (SHA-NI where the CPU has it). A chunk
 * of a file is read by the thread that hashes it ({@link HashPool.scan}), in slices small enough
 * to stay in the CPU's cache between the read, the hash and the write of the same bytes; a chunk
 * that came another way (a stream) is transferred to a thread and back, never copied.
 */
export interface HashPool {
  readonly threads: number
  /** hashes `buffer[0, length)`; resolves with the digest and the buffer (now usable again) */
  hash(buffer: Buffer, length: number): Promise<{ readonly digest: Buffer; readonly buffer: Buffer }>
  /** reads one chunk of a file on a thread, hashes it, and writes or hands back its bytes as the job says */
  scan(job: ChunkJob): Promise<ChunkResult>
  /** closes the files the threads opened for {@link scan}: at the end of each scan */
  closeFiles(): Promise<void>
  /** seconds the workers spent hashing, summed over the workers */
  busySeconds(): number
  close(): Promise<void>
}

/** One chunk for {@link HashPool.scan}. */
export interface ChunkJob {
  readonly path: string
  readonly offset: number
  readonly length: number
  /**
   * A file to write the chunk's bytes into at the same offset. Where `known` is undefined the file
   * holds zeros there (a hole): the bytes go as they are read, except slices of zeros. Where it is
   * the digest of what the file holds, the chunk is written whole once hashed, and only if it differs.
   */
  readonly writeTo?: string | undefined
  readonly known?: Buffer | undefined
  /** a buffer of at least `length` bytes (from {@link chunkBuffer}) to hand the bytes back in: they come back unless they equal `known` */
  readonly buffer?: Buffer | undefined
}

export type ChunkResult =
  | { readonly kind: 'zero'; readonly buffer?: Buffer | undefined }
  | { readonly kind: 'data'; readonly digest: Buffer; readonly written: number; readonly delivered: boolean; readonly buffer?: Buffer | undefined }
  /** the file ended at `at`, before the chunk's end */
  | { readonly kind: 'short'; readonly at: number; readonly buffer?: Buffer | undefined }
  /** a read, write or open failed: `cause` as Node's fs would throw it */
  | { readonly kind: 'failed'; readonly operation: 'open' | 'read' | 'write'; readonly path: string; readonly cause: NodeJS.ErrnoException; readonly buffer?: Buffer | undefined }

// an eval'd CommonJS worker: no separate file to locate after bundling
const WORKER = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const fs = require('node:fs')
const SLICE = 128 * 1024
const zeros = Buffer.alloc(SLICE)
const files = new Map()
let slice
let whole
const isZero = (b) => b.equals(zeros.subarray(0, b.length))
const open = (path, flags) => {
  const key = flags + '\\0' + path
  let fd = files.get(key)
  if (fd === undefined) {
    fd = fs.openSync(path, flags)
    files.set(key, fd)
  }
  return fd
}
class Failed extends Error {
  constructor(operation, path, cause) { super(cause.message); this.operation = operation; this.path = path; this.cause = cause }
}
const step = (operation, path, body) => {
  try { return body() } catch (e) { throw new Failed(operation, path, e) }
}
const scan = (job, hashing) => {
  const src = step('open', job.path, () => open(job.path, 'r'))
  const out = job.writeTo === undefined ? undefined : step('open', job.writeTo, () => open(job.writeTo, 'r+'))
  const known = job.known === undefined ? undefined : Buffer.from(job.known)
  // the whole chunk is kept to hand it back, or to write it once it is known to differ
  const keep = job.buffer !== undefined ? Buffer.from(job.buffer) : out !== undefined && known !== undefined ? (whole = whole !== undefined && whole.length >= job.length ? whole : Buffer.allocUnsafe(job.length)) : undefined
  slice ??= Buffer.allocUnsafe(SLICE)
  const hash = createHash('sha256')
  let leadingZeros = 0
  let data = false
  let written = 0
  for (let at = 0; at < job.length;) {
    const n = Math.min(SLICE, job.length - at)
    const piece = keep === undefined ? slice.subarray(0, n) : keep.subarray(at, at + n)
    for (let got = 0; got < n;) {
      const r = step('read', job.path, () => fs.readSync(src, piece, got, n - got, job.offset + at + got))
      if (r === 0) return { kind: 'short', at: job.offset + at + got }
      got += r
    }
    const zero = isZero(piece)
    if (!data && zero) {
      // zeros are hashed only once the chunk turns out to hold data: a chunk of zeros has no hash
      leadingZeros += n
      at += n
      continue
    }
    const started = process.hrtime.bigint()
    if (!data) {
      data = true
      for (let z = leadingZeros; z > 0; z -= Math.min(z, SLICE)) hash.update(zeros.subarray(0, Math.min(z, SLICE)))
    }
    hash.update(piece)
    hashing.nanos += Number(process.hrtime.bigint() - started)
    if (out !== undefined && known === undefined && !zero) {
      step('write', job.writeTo, () => fs.writeSync(out, piece, 0, n, job.offset + at))
      written += n
    }
    at += n
  }
  if (!data) return { kind: 'zero' }
  const digest = hash.digest()
  const differs = known === undefined || !digest.equals(known)
  if (out !== undefined && known !== undefined && differs) {
    step('write', job.writeTo, () => fs.writeSync(out, keep, 0, job.length, job.offset))
    written = job.length
  }
  return { kind: 'data', digest: digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.length), written, delivered: job.buffer !== undefined && differs }
}
parentPort.on('message', (m) => {
  if (m.type === 'hash') {
    const started = process.hrtime.bigint()
    const digest = createHash('sha256').update(new Uint8Array(m.buffer, 0, m.length)).digest()
    const nanos = Number(process.hrtime.bigint() - started)
    parentPort.postMessage({ buffer: m.buffer, digest: digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.length), nanos }, [m.buffer])
  } else if (m.type === 'scan') {
    const hashing = { nanos: 0 }
    let result
    try {
      result = scan(m.job, hashing)
    } catch (e) {
      if (!(e instanceof Failed)) throw e
      result = { kind: 'failed', operation: e.operation, path: e.path, cause: { code: e.cause.code, message: e.cause.message, syscall: e.cause.syscall } }
    }
    const back = m.job.buffer === undefined ? [] : [m.job.buffer]
    parentPort.postMessage({ result, buffer: m.job.buffer, nanos: hashing.nanos }, back)
  } else if (m.type === 'close-files') {
    for (const fd of files.values()) fs.closeSync(fd)
    files.clear()
    parentPort.postMessage({ nanos: 0 })
  }
})
`

interface Pending {
  resolve(value: { buffer?: ArrayBuffer; digest?: ArrayBuffer; result?: RawResult }): void
  reject(error: Error): void
}

type RawResult =
  | { readonly kind: 'zero' }
  | { readonly kind: 'data'; readonly digest: ArrayBuffer; readonly written: number; readonly delivered: boolean }
  | { readonly kind: 'short'; readonly at: number }
  | { readonly kind: 'failed'; readonly operation: 'open' | 'read' | 'write'; readonly path: string; readonly cause: { readonly code?: string; readonly message: string; readonly syscall?: string } }

export const DIGEST_BYTES = 32

/** A buffer that owns its memory, so that it can be transferred to a worker. */
export const chunkBuffer = (size: number): Buffer => Buffer.from(new ArrayBuffer(size))

const owned = (buffer: Buffer): ArrayBuffer => {
  if (buffer.byteOffset !== 0 || buffer.buffer.byteLength !== buffer.length) throw new Error('hash pool: the buffer must own its ArrayBuffer (use chunkBuffer)')
  return buffer.buffer as ArrayBuffer
}

const asErrno = (cause: { readonly code?: string; readonly message: string; readonly syscall?: string }): NodeJS.ErrnoException =>
  Object.assign(new Error(cause.message), cause.code === undefined ? {} : { code: cause.code }, cause.syscall === undefined ? {} : { syscall: cause.syscall })

export const openHashPool = (threads = Math.min(8, Math.max(1, availableParallelism()))): HashPool => {
  let busyNanos = 0
  const workers = Array.from({ length: threads }, () => {
    const worker = new Worker(WORKER, { eval: true })
    const entry: { readonly worker: Worker; readonly queue: Pending[]; gone?: Error } = { worker, queue: [] }
    worker.on('message', (m: { buffer?: ArrayBuffer; digest?: ArrayBuffer; result?: RawResult; nanos: number }) => {
      busyNanos += m.nanos
      entry.queue.shift()?.resolve(m)
    })
    // a worker that failed or ended answers nothing more: what waits on it, and what is sent to it later, fails
    const end = (e: Error): void => {
      entry.gone ??= e
      for (const p of entry.queue.splice(0)) p.reject(entry.gone)
    }
    worker.on('error', end)
    worker.on('exit', (code) => end(new Error(`hash pool: a worker thread ended (exit ${code})`)))
    return entry
  })
  const send = (to: (typeof workers)[number], message: unknown, transfer: ArrayBuffer[] = []): Promise<{ buffer?: ArrayBuffer; digest?: ArrayBuffer; result?: RawResult }> =>
    new Promise((resolve, reject) => {
      if (to.gone !== undefined) return reject(to.gone)
      to.queue.push({ resolve, reject })
      to.worker.postMessage(message, transfer)
    })
  /** to the worker with the fewest jobs waiting */
  const post = (message: unknown, transfer: ArrayBuffer[]): ReturnType<typeof send> =>
    send(workers.reduce((a, b) => (b.queue.length < a.queue.length ? b : a)), message, transfer)
  return {
    threads,
    hash: async (buffer, length) => {
      const m = await post({ type: 'hash', buffer: owned(buffer), length }, [owned(buffer)])
      if (m.buffer === undefined || m.digest === undefined) throw new Error('hash pool: a hash came back without its buffer')
      return { digest: Buffer.from(m.digest), buffer: Buffer.from(m.buffer) }
    },
    scan: async (job) => {
      const transfer = job.buffer === undefined ? [] : [owned(job.buffer)]
      const m = await post({ type: 'scan', job: { ...job, buffer: job.buffer === undefined ? undefined : owned(job.buffer), known: job.known === undefined ? undefined : Uint8Array.from(job.known) } }, transfer)
      const raw = m.result
      if (raw === undefined) throw new Error('hash pool: a scan came back without its result')
      const buffer = m.buffer === undefined ? undefined : Buffer.from(m.buffer)
      switch (raw.kind) {
        case 'data':
          return { kind: 'data', digest: Buffer.from(raw.digest), written: raw.written, delivered: raw.delivered, buffer }
        case 'failed':
          return { kind: 'failed', operation: raw.operation, path: raw.path, cause: asErrno(raw.cause), buffer }
        default:
          return { ...raw, buffer }
      }
    },
    closeFiles: async () => {
      // a worker that ended (a bug) can close nothing: its files stay open until the process exits
      await Promise.allSettled(workers.map((w) => send(w, { type: 'close-files' })))
    },
    busySeconds: () => busyNanos / 1e9,
    close: async () => {
      await Promise.all(workers.map((w) => w.worker.terminate()))
    },
  }
}
