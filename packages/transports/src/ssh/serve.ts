import type { Readable, Writable } from 'node:stream'
import { stderrTail } from '@bb/core'
import { SERVE_BANNER } from './remote-protocol.js'

/** How one command on the server ended; `lost`: the server went away before it answered. */
export type ServedResult =
  | { readonly kind: 'done'; readonly exitCode: number; readonly stdout: string; readonly stderr: string }
  | { readonly kind: 'lost' }
  | { readonly kind: 'cancelled' }

/** The client side of the command server (remote-protocol's `SERVE`) on one master connection. */
export interface CommandServer {
  /** false once its output ended: later commands go by their own session */
  readonly alive: boolean
  /** true once the server said its banner; false when its output ended (or `limitMs` passed) first */
  readonly started: Promise<boolean>
  /** sends one request line (from `serveLine`); answers come in the order the requests went */
  run(line: string, signal?: AbortSignal): Promise<ServedResult>
}

interface Waiting {
  readonly resolve: (result: ServedResult) => void
  /** its caller gave up (cancelled): the answer is still read, and dropped */
  settled: boolean
}

const BANNER = Buffer.from(`${SERVE_BANNER}\n`)
/** the most stdout kept of one command, as for a local one */
const STDOUT_LIMIT = 16 * 1024 * 1024

/**
 * Talks to the server over the master's stdin and stdout. Requests are written as they come (the
 * server reads the next line when it has answered the last), and matched to answers in order.
 */
export const commandServer = (stdin: Writable, stdout: Readable, limitMs: number): CommandServer => {
  const queue: Waiting[] = []
  let buffer: Buffer = Buffer.alloc(0)
  let banner = false
  let ended = false
  let announce: (up: boolean) => void = () => undefined
  const started = new Promise<boolean>((resolve) => {
    announce = resolve
  })
  const timer = setTimeout(() => announce(false), limitMs)
  timer.unref()

  const answer = (result: ServedResult): void => {
    const waiting = queue.shift()
    if (waiting === undefined || waiting.settled) return
    waiting.settled = true
    waiting.resolve(result)
  }

  const parse = (): void => {
    if (!banner) {
      // a login script may print before the server starts: everything up to the banner is skipped
      const at = buffer.indexOf(BANNER)
      if (at < 0) {
        buffer = buffer.subarray(Math.max(0, buffer.length - BANNER.length))
        return
      }
      buffer = buffer.subarray(at + BANNER.length)
      banner = true
      clearTimeout(timer)
      announce(true)
    }
    for (;;) {
      const nl = buffer.indexOf(10)
      if (nl < 0) return
      const [status, outBytes, errBytes] = buffer.subarray(0, nl).toString('latin1').split(' ').map(Number)
      const out = outBytes ?? 0
      const error = errBytes ?? 0
      if (buffer.length < nl + 1 + out + error) return
      const body = buffer.subarray(nl + 1)
      answer({
        kind: 'done',
        exitCode: status ?? 255,
        stdout: body.subarray(0, Math.min(out, STDOUT_LIMIT)).toString('utf8'),
        stderr: stderrTail(body.subarray(out, out + error).toString('utf8')),
      })
      buffer = body.subarray(out + error)
    }
  }

  stdout.on('data', (chunk: Buffer) => {
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
    parse()
  })
  const end = (): void => {
    if (ended) return
    ended = true
    clearTimeout(timer)
    announce(false)
    while (queue.length > 0) answer({ kind: 'lost' })
  }
  stdout.once('end', end)
  stdout.once('close', end)
  stdin.on('error', end)

  return {
    started,
    get alive() {
      return !ended
    },
    run: (line, signal) => new Promise<ServedResult>((resolve) => {
      if (ended) return resolve({ kind: 'lost' })
      if (signal?.aborted === true) return resolve({ kind: 'cancelled' })
      const waiting: Waiting = { resolve, settled: false }
      queue.push(waiting)
      signal?.addEventListener('abort', () => {
        if (waiting.settled) return
        // the command runs on to its end on the host; its answer is read and dropped
        waiting.settled = true
        resolve({ kind: 'cancelled' })
      }, { once: true })
      stdin.write(`${line}\n`)
    }),
  }
}
