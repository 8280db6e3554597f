import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'

/**
 * Chunk hashing on worker threads: SHA-256 through OpenSSL (SHA-NI where the CPU has it). The
 * chunk's memory is transferred to the worker and back, never copied.
 */
export interface HashPool {
  readonly threads: number
  /** hashes `buffer[0, length)`; resolves with the digest and the buffer (now usable again) */
  hash(buffer: Buffer, length: number): Promise<{ readonly digest: Buffer; readonly buffer: Buffer }>
  /** seconds the workers spent hashing, summed over the workers */
  busySeconds(): number
  close(): Promise<void>
}

// an eval'd CommonJS worker: no separate file to locate after bundling
const WORKER = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
parentPort.on('message', ({ buffer, length }) => {
  const started = process.hrtime.bigint()
  const digest = createHash('sha256').update(new Uint8Array(buffer, 0, length)).digest()
  const nanos = Number(process.hrtime.bigint() - started)
  parentPort.postMessage({ buffer, digest: digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.length), nanos }, [buffer])
})
`

interface Pending {
  resolve(value: { digest: Buffer; buffer: Buffer }): void
  reject(error: Error): void
}

export const DIGEST_BYTES = 32

/** A buffer that owns its memory, so that it can be transferred to a worker. */
export const chunkBuffer = (size: number): Buffer => Buffer.from(new ArrayBuffer(size))

export const openHashPool = (threads = Math.min(8, Math.max(1, availableParallelism()))): HashPool => {
  let busyNanos = 0
  const workers = Array.from({ length: threads }, () => {
    const worker = new Worker(WORKER, { eval: true })
    const queue: Pending[] = []
    worker.on('message', (m: { buffer: ArrayBuffer; digest: ArrayBuffer; nanos: number }) => {
      busyNanos += m.nanos
      queue.shift()?.resolve({ digest: Buffer.from(m.digest), buffer: Buffer.from(m.buffer) })
    })
    worker.on('error', (e) => {
      for (const p of queue.splice(0)) p.reject(e)
    })
    return { worker, queue }
  })
  return {
    threads,
    hash: (buffer, length) => {
      if (buffer.byteOffset !== 0 || buffer.buffer.byteLength !== buffer.length) throw new Error('hash pool: the buffer must own its ArrayBuffer (use chunkBuffer)')
      const target = workers.reduce((a, b) => (b.queue.length < a.queue.length ? b : a))
      return new Promise((resolve, reject) => {
        target.queue.push({ resolve, reject })
        target.worker.postMessage({ buffer: buffer.buffer, length }, [buffer.buffer as ArrayBuffer])
      })
    },
    busySeconds: () => busyNanos / 1e9,
    close: async () => {
      await Promise.all(workers.map((w) => w.worker.terminate()))
    },
  }
}
