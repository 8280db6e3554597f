import { pipeline, Writable, type Readable, type Transform } from 'node:stream'
import { bbError, InternalError, stderrTail, type Transport } from '@bb/core'
import { counting, pacer, rateLimited, type StreamWay } from '../stream-way.js'
import { must, stop } from './stop.js'

/** how this host's zstd runs: all cores to compress (a link is slower than zstd), quiet */
const COMPRESS = ['zstd', '-cq', '-T0'] as const
const DECOMPRESS = ['zstd', '-dcq'] as const

const signalOf = (signal: AbortSignal | undefined): { signal?: AbortSignal } => (signal === undefined ? {} : { signal })

/** The bytes of a volume as they come from another host: what crossed the network, and what was read of it. */
export interface Arrival {
  /** the bytes as the other host's command wrote them (decompressed here when they were compressed there) */
  readonly stream: Readable
  /** the bytes that crossed so far: compressed ones when the stream is */
  crossed(): number
  /** after the stream: this host's zstd exited well (the other end's command is checked by its caller) */
  finished(what: string): Promise<void>
  /** stops this host's part of the stream */
  kill(): void
}

/**
 * The stdout of a command on another host, on its way here: counted as it crosses, held to the
 * way's rate limit, and decompressed by zstd here when the command there was spawned with
 * `compressStdout` (as {@link StreamWay.compress} says).
 */
export const arriving = (from: Readable, here: Transport, way: StreamWay, signal: AbortSignal | undefined): Arrival => {
  const count = counting()
  const stages: Transform[] = [count, ...(way.rateLimit === undefined ? [] : [rateLimited(way.rateLimit)])]
  const unzstd = way.compress === 'zstd' ? here.spawn(DECOMPRESS, { stdin: 'pipe', stdout: 'pipe', ...signalOf(signal) }) : undefined
  if (unzstd !== undefined && (unzstd.stdin === undefined || unzstd.stdout === undefined)) throw new InternalError('spawn with stdin and stdout: pipe gave none')
  // a broken end ends the others; what broke is told by the commands' results and the reader's checks
  pipeline([from, ...stages, ...(unzstd?.stdin === undefined ? [] : [unzstd.stdin])], () => undefined)
  return {
    stream: unzstd?.stdout ?? (stages.at(-1) as Transform),
    crossed: () => count.bytes,
    finished: async (what) => {
      if (unzstd === undefined) return
      const ended = await must(unzstd.done)
      if (ended.exitCode !== 0) {
        stop(bbError('SOURCE_UNAVAILABLE', `the compressed stream of ${what} could not be read: ${stderrTail(ended.stderr) || `zstd exit ${ended.exitCode}`}`,
          'run the backup again; if it repeats, run it without --stream-compress and check zstd on both hosts', { path: what, stderr: stderrTail(ended.stderr) }))
      }
    },
    kill: () => {
      from.destroy()
      unzstd?.kill()
    },
  }
}

/** The bytes of a volume on their way to another host. */
export interface Departure {
  /** what the writer writes into: the bytes as the command there is to read them */
  readonly input: Writable
  /** the bytes that left so far: compressed ones when the stream is */
  crossed(): number
  /** after `input` ended: every byte has left this host (this host's zstd exited well) */
  finished(what: string): Promise<void>
  kill(): void
}

/**
 * The stdin of a command on another host, fed from here: compressed by zstd here when the command
 * there was spawned with `decompressStdin` (as {@link StreamWay.compress} says), held to the way's
 * rate limit (after compression), and counted as it leaves. Without zstd, each write completes
 * only when `into` took it, so that a command there that failed fails the write in progress.
 */
export const departing = (into: Writable, here: Transport, way: StreamWay, signal: AbortSignal | undefined): Departure => {
  let crossed = 0
  // a failure of `into` is told through the writes into it (and the command's own result)
  into.on('error', () => undefined)
  const pace = way.rateLimit === undefined ? undefined : pacer(way.rateLimit)
  const paced = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      const put = (part: Buffer, next: (error?: Error | null) => void): void => {
        into.write(part, (error) => {
          if (error === undefined || error === null) crossed += part.length
          next(error)
        })
      }
      if (pace === undefined) put(chunk, callback)
      else pace(chunk, put, callback)
    },
    final(callback) {
      into.end()
      callback()
    },
    destroy(error, callback) {
      into.destroy()
      callback(error)
    },
  })
  const zstd = way.compress === 'zstd' ? here.spawn(COMPRESS, { stdin: 'pipe', stdout: 'pipe', ...signalOf(signal) }) : undefined
  if (zstd !== undefined && (zstd.stdin === undefined || zstd.stdout === undefined)) throw new InternalError('spawn with stdin and stdout: pipe gave none')
  // zstd's stdin takes the bytes; when `into` breaks, zstd's stdout is destroyed, zstd dies of it, and its stdin breaks in turn
  if (zstd?.stdout !== undefined) pipeline(zstd.stdout, paced, () => undefined)
  return {
    input: zstd?.stdin ?? paced,
    crossed: () => crossed,
    finished: async (what) => {
      if (zstd === undefined) return
      const ended = await must(zstd.done)
      if (ended.exitCode !== 0) {
        stop(bbError('IO_FAILED', `compressing the stream to ${what} failed: ${stderrTail(ended.stderr) || `zstd exit ${ended.exitCode}`}`,
          'restore again; if it repeats, restore without --stream-compress', { path: what, stderr: stderrTail(ended.stderr) }))
      }
    },
    kill: () => {
      zstd?.kill()
      paced.destroy()
    },
  }
}
