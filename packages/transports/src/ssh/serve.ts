import { randomBytes } from 'node:crypto'
import { PassThrough, type Readable, type Writable } from 'node:stream'
import { stderrTail } from '@bb/core'
import { OUT_TAG, PID_TAG, RUN_TAG, SERVE_BANNER_PREFIX, STREAM_TAG } from './remote-protocol.js'

/**
 * How one command on the server ended; `lost`: the server went away before it answered; `unsent`:
 * it ended before the request was written (it waited behind a stream): nothing of it ran, it may go
 * by a session of its own.
 */
export type ServedResult =
  | { readonly kind: 'done'; readonly exitCode: number; readonly stdout: string; readonly stderr: string }
  | { readonly kind: 'lost' }
  | { readonly kind: 'cancelled' }
  | { readonly kind: 'unsent' }

/** The client side of the command server (remote-protocol's `SERVE`) on one master connection. */
export interface CommandServer {
  /** false once its output ended: later commands go by their own session */
  readonly alive: boolean
  /** true once the server said its banner; false when its output ended (or `limitMs` passed) first */
  readonly started: Promise<boolean>
  /** it said (in its banner) that it takes stream requests: bbackup's own sh server does, bbackup-remote's does not */
  readonly streams: boolean
  /** sends one request line (from `serveLine`); answers come in the order the requests went */
  run(line: string, signal?: AbortSignal): Promise<ServedResult>
  /**
   * Sends a stream request (remote-protocol's `STREAM_TAG`) for a command that reads the stream
   * after its line and stops at its end: the stream's writer gets `stdin` (the connection's own,
   * which stays open: the requests after it follow the stream). `onPid` hears the pid the command
   * says as it starts. Requests made meanwhile wait, and are written once it has answered. None
   * when this server takes no streams (bbackup-remote's), has ended, or carries a stream already.
   */
  stream(line: string, onPid: (pid: string) => void): { readonly stdin: Writable; readonly result: Promise<ServedResult> } | undefined
  /**
   * Sends an out-stream request (remote-protocol's `OUT_TAG`): the command's stdout comes back on
   * the connection's own, up to the request's token, and is handed on as `stdout` (the connection
   * is read no faster than `stdout` is). `bytes` counts what came. The requests made meanwhile go as
   * usual: the server reads them once the command has ended. None where a stream runs already, or
   * the server takes none (bbackup-remote's) or has ended.
   */
  streamOut(line: string, onPid: (pid: string) => void): { readonly stdout: Readable; readonly result: Promise<ServedResult>; readonly bytes: () => number } | undefined
}

/**
 * A command's stdout on its way, up to its token: an out-stream's, handed on to its reader, or
 * (SERVE's framed answers) any command's, kept for its answer.
 */
interface OutStream {
  readonly token: Buffer
  /** the out-stream's reader; none: the bytes are kept (`kept`, up to STDOUT_LIMIT) */
  readonly sink: PassThrough | undefined
  readonly kept: Buffer[]
  bytes: number
  /** a byte of the stream came: a pid line now would be the stream's own bytes */
  begun: boolean
}

interface Waiting {
  readonly resolve: (result: ServedResult) => void
  /** its caller gave up (cancelled): the answer is still read, and dropped */
  settled: boolean
  /** a stream request's: the pid line before its answer is for it */
  readonly onPid?: (pid: string) => void
  /** an out-stream request's (any request's, where answers are framed), until its token came */
  out?: OutStream | undefined
  /** framed answers: the token came after the stdout (kept here); its status, stderr and the token again follow */
  rest?: { readonly token: Buffer; readonly stdout: string } | undefined
}

/** `bbackup-serve:VERSION`: 1 runs requests; 3 also takes streams, and frames each answer by a token (SERVE's) */
const BANNER = new RegExp(`${SERVE_BANNER_PREFIX}(\\d+)\\n`)
const BANNER_PREFIX = Buffer.from(SERVE_BANNER_PREFIX)
const PID_LINE = Buffer.from(PID_TAG)
const NEWLINE = Buffer.from('\n')
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
  /** SERVE's (banner 3): it takes streams, and every request carries a token that follows its stdout and ends its answer */
  let framed = false
  let ended = false
  /** a stream is on its way: the lines of later requests wait here, unwritten */
  let held: { readonly line: string; readonly waiting: Waiting }[] | undefined
  /** the server ends (a stream command failed): later requests are not written */
  let ending = false
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

  /** the requests that waited behind a stream: written now, or (the server ends) never */
  const release = (write: boolean): void => {
    const waited = held ?? []
    held = undefined
    for (const { line, waiting } of waited) {
      // one whose caller gave up meanwhile is not run at all
      if (write && waiting.settled) continue
      if (write) {
        queue.push(waiting)
        stdin.write(`${line}\n`)
      } else if (!waiting.settled) {
        waiting.settled = true
        waiting.resolve({ kind: 'unsent' })
      }
    }
  }

  const parse = (): void => {
    if (!banner) {
      // a login script may print before the server starts: everything up to the banner is skipped
      const found = BANNER.exec(buffer.toString('latin1'))
      if (found === null) {
        const partial = buffer.lastIndexOf(BANNER_PREFIX)
        buffer = buffer.subarray(partial >= 0 ? partial : Math.max(0, buffer.length - BANNER_PREFIX.length))
        return
      }
      buffer = buffer.subarray(found.index + found[0].length)
      banner = true
      // 1 (bbackup-remote's) and 2 (an older bbackup's SERVE_V2) answer `STATUS OUT-BYTES ERR-BYTES` and the bytes
      framed = Number(found[1]) >= 3
      clearTimeout(timer)
      announce(true)
    }
    for (;;) {
      const stream = queue[0]?.out
      if (stream !== undefined && stream.begun) {
        if (!streamed(stream)) return
        continue
      }
      const rest = queue[0]?.rest
      if (rest !== undefined) {
        if (!framedEnd(rest.token, rest.stdout)) return
        continue
      }
      const nl = buffer.indexOf(10)
      const prefix = Math.min(buffer.length, PID_LINE.length)
      if (stream !== undefined && !buffer.subarray(0, prefix).equals(PID_LINE.subarray(0, prefix))) {
        // not (the start of) the pid line the command says first: its stream has begun
        stream.begun = true
        continue
      }
      if (nl < 0) return
      if (buffer.subarray(0, PID_LINE.length).equals(PID_LINE)) {
        // a stream command says its pid before its answer (an out-stream's: once, before its stream)
        queue[0]?.onPid?.(buffer.subarray(PID_LINE.length, nl).toString('latin1'))
        if (stream !== undefined) stream.begun = true
        buffer = buffer.subarray(nl + 1)
        continue
      }
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

  /**
   * Passes bytes of an out-stream to its reader, and holds the connection while the reader is full
   * (it resumes it when it drains, or closes); a reader that went away (its command failed) takes
   * nothing more: the rest is read and dropped.
   */
  const handOn = (out: OutStream, piece: Buffer): void => {
    const room = STDOUT_LIMIT - out.bytes
    out.bytes += piece.length
    if (out.sink === undefined) {
      if (room > 0) out.kept.push(room >= piece.length ? piece : piece.subarray(0, room))
      return
    }
    if (!out.sink.destroyed && !out.sink.write(piece)) stdout.pause()
  }

  /**
   * Hands on the stream's bytes up to its token (the bytes that could be the token's start wait
   * for the next chunk); true once the token came: the buffer then starts with the answer.
   */
  const streamed = (out: OutStream): boolean => {
    const at = buffer.indexOf(out.token)
    const upTo = at >= 0 ? at : Math.max(0, buffer.length - (out.token.length - 1))
    if (upTo > 0) {
      handOn(out, buffer.subarray(0, upTo))
      buffer = buffer.subarray(upTo)
    }
    if (at < 0) return false
    buffer = buffer.subarray(out.token.length)
    const waiting = queue[0]
    if (waiting !== undefined) {
      waiting.out = undefined
      waiting.rest = { token: out.token, stdout: Buffer.concat(out.kept).toString('utf8') }
    }
    out.sink?.end()
    return true
  }

  /**
   * The end of a framed answer, after the stdout's token: ` STATUS`, a line break, the stderr, a
   * line break and the token again; false until all of it came.
   */
  const framedEnd = (token: Buffer, out: string): boolean => {
    const nl = buffer.indexOf(10)
    if (nl < 0) return false
    const end = buffer.indexOf(Buffer.concat([NEWLINE, token, NEWLINE]), nl)
    if (end < 0) return false
    const status = Number(buffer.subarray(0, nl).toString('latin1').trim())
    const err = buffer.subarray(nl + 1, end).toString('utf8')
    buffer = buffer.subarray(end + token.length + 2)
    answer({ kind: 'done', exitCode: Number.isInteger(status) ? status : 255, stdout: out, stderr: stderrTail(err) })
    return true
  }

  /**
   * A chunk in the middle of an out-stream, as {@link streamed} would take it but without joining
   * it to the few bytes held back before it (no copy of the stream's bulk): false where the token
   * is in it or across the two, which the parser then takes.
   */
  const midStream = (chunk: Buffer): boolean => {
    const out = queue[0]?.out
    const keep = (out?.token.length ?? 0) - 1
    if (out === undefined || !out.begun || buffer.length > keep || chunk.length <= keep) return false
    if (Buffer.concat([buffer, chunk.subarray(0, keep)]).includes(out.token) || chunk.includes(out.token)) return false
    if (buffer.length > 0) handOn(out, buffer)
    handOn(out, chunk.subarray(0, chunk.length - keep))
    buffer = chunk.subarray(chunk.length - keep)
    return true
  }

  /**
   * One stream at a time, either way: a stream request behind an out-stream would wait in the
   * channel that the out-stream's answer must first leave.
   */
  const canStream = (): boolean => framed && !ended && !ending && held === undefined && !queue.some((w) => w.out?.sink !== undefined)

  /** a request's stdout up to a new random token: handed on to `sink`, or kept for its answer */
  const tokenOut = (tag: string, sink?: PassThrough): OutStream =>
    // a stream command says its pid before its stdout; a plain one's stdout begins at once
    ({ token: Buffer.from(`${tag}${randomBytes(12).toString('hex')}`), sink, kept: [], bytes: 0, begun: tag === RUN_TAG })

  /** a request's line as it goes: with its token where answers are framed (its `out` then keeps the stdout) */
  const framing = (tag: string, line: string): { readonly wire: string; readonly out: OutStream | undefined } => {
    if (!framed) return { wire: line, out: undefined }
    const out = tokenOut(tag)
    return { wire: `${out.token.toString('latin1')} ${line}`, out }
  }

  stdout.on('data', (chunk: Buffer) => {
    if (midStream(chunk)) return
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
    parse()
  })
  const end = (): void => {
    if (ended) return
    ended = true
    clearTimeout(timer)
    announce(false)
    // a stream cut short ends here, with the bytes that came (none held back for a token): its reader sees it end without its end
    const out = queue[0]?.out
    if (out !== undefined) {
      if (out.begun && buffer.length > 0) handOn(out, buffer)
      out.sink?.end()
    }
    while (queue.length > 0) answer({ kind: 'lost' })
    release(false)
  }
  stdout.once('end', end)
  stdout.once('close', end)
  stdin.on('error', end)

  const run = (line: string, signal?: AbortSignal): Promise<ServedResult> => new Promise<ServedResult>((resolve) => {
    // how a request goes depends on the banner: one asked before it waits for it
    // (a server that did not start in time ran none of it: it may go by a session of its own)
    if (!banner && !ended) return void started.then((up) => (up ? run(line, signal) : { kind: 'unsent' as const })).then(resolve)
    if (ending) return resolve({ kind: 'unsent' })
    if (ended) return resolve({ kind: 'lost' })
    if (signal?.aborted === true) return resolve({ kind: 'cancelled' })
    const { wire, out } = framing(RUN_TAG, line)
    const waiting: Waiting = { resolve, settled: false, out }
    signal?.addEventListener('abort', () => {
      if (waiting.settled) return
      // the command runs on to its end on the host; its answer is read and dropped (one never written is not)
      waiting.settled = true
      resolve({ kind: 'cancelled' })
    }, { once: true })
    if (held !== undefined) {
      held.push({ line: wire, waiting })
      return
    }
    queue.push(waiting)
    stdin.write(`${wire}\n`)
  })

  return {
    started,
    get streams() {
      return framed
    },
    get alive() {
      return !ended
    },
    run,
    stream: (line, onPid) => {
      if (!canStream()) return undefined
      const out = tokenOut(STREAM_TAG)
      const token = out.token.toString('latin1')
      held = []
      const result = new Promise<ServedResult>((resolve) => {
        queue.push({ resolve, settled: false, onPid, out })
        stdin.write(`${token} ${line}\n`)
      }).then((r) => {
        if (r.kind === 'done' && r.exitCode === 0) {
          // the stream was read to its end: the token says so to the server, then the requests that waited
          stdin.write(`${token}\n`)
          release(true)
        } else {
          // the server ends without reading on (the rest of the stream is in its way)
          ending = true
          release(false)
        }
        return r
      })
      return { stdin, result }
    },
    streamOut: (line, onPid) => {
      if (!canStream()) return undefined
      const sink = new PassThrough({ highWaterMark: 1024 * 1024 })
      const out = tokenOut(OUT_TAG, sink)
      sink.on('drain', () => stdout.resume())
      sink.once('close', () => stdout.resume())
      const result = new Promise<ServedResult>((resolve) => {
        queue.push({ resolve, settled: false, onPid, out })
        stdin.write(`${out.token.toString('latin1')} ${line}\n`)
      })
      return { stdout: sink, result, bytes: () => out.bytes }
    },
  }
}
