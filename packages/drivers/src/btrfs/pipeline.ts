import { execFileSync, spawn } from 'node:child_process'
import { constants, openSync } from 'node:fs'
import { Socket } from 'node:net'
import { pipeline, Transform, type Readable, type Writable } from 'node:stream'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { err, ok, type Result } from 'neverthrow'
import { bbError, InternalError, stderrTail, type BbError, type CommandResult, type RunningCommand, type Transport } from '@bb/core'
import { btrfsFailure } from './subvolume.js'

export interface SendReceiveInput {
  readonly source: Transport
  readonly sendArgv: readonly string[]
  /** one receiver per target; with several, the one stream feeds them all */
  readonly receivers: readonly { readonly target: Transport; readonly receiveArgv: readonly string[]; /** names it in errors (default: btrfs receive into …) */ readonly what?: string }[]
  /** names the sender in errors (default: btrfs send …) */
  readonly sendWhat?: string
  readonly signal: AbortSignal | undefined
  /** bytes sent so far, about twice a second */
  readonly onBytes: (bytes: number) => void
  /** no byte sent for this long: every process of the pipeline is killed and the transfer is STALLED */
  readonly stallMs?: number
  /** compressed and rate-limited, or as it is (default) */
  readonly way?: StreamWay
}

/** How a stream travels between its two hosts. */
export interface StreamWay {
  /** zstd-compress the stream on the sender's host and decompress it on the receiver's (one receiver only) */
  readonly compress?: 'zstd'
  /** at most this many bytes a second leave the sender (after compression): the stream then passes through this process */
  readonly rateLimit?: number
}

/**
 * Lets bytes through at `bytesPerSecond` at most, in pieces of a twentieth of a second (1 KiB at
 * least), so that a low limit is smooth rather than bursts of a pipe's 64 KiB.
 */
export const rateLimited = (bytesPerSecond: number): Transform => {
  const piece = Math.max(1024, Math.floor(bytesPerSecond / 20))
  let next = 0
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      let offset = 0
      const step = (): void => {
        if (offset >= chunk.length) {
          callback()
          return
        }
        const part = chunk.subarray(offset, offset + piece)
        offset += part.length
        const now = Date.now()
        const at = Math.max(now, next)
        next = at + (part.length * 1000) / bytesPerSecond
        const go = (): void => {
          this.push(part)
          step()
        }
        if (at > now) setTimeout(go, at - now)
        else go()
      }
      step()
    },
  })
}

/** Counts what passes, for a sender whose own count this host cannot read (one run as root through sudo). */
const counting = (): Transform & { bytes: number } => {
  const counter = Object.assign(new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      counter.bytes += chunk.length
      callback(null, chunk)
    },
  }), { bytes: 0 })
  return counter
}

/** through the rate limit and the counter into a command's stdin; a broken end ends the other (the commands' results tell why) */
const throughJs = (from: Readable | undefined, through: readonly Transform[], to: Writable | undefined): void => {
  if (from === undefined || to === undefined) return
  pipeline([from, ...through, to], () => undefined)
}

/**
 * The sender stopped because its reader went away. Node connects children through socket pairs,
 * so a dead reader shows as ECONNRESET ("Connection reset by peer") as often as as EPIPE.
 */
export const brokenPipe = (r: Result<CommandResult, BbError>): boolean =>
  r.isErr() ? /SIGPIPE/.test(r.error.message) : /Broken pipe|Connection reset by peer|\b-32\b|\b-104\b/.test(r.value.stderr)

const failed = (r: Result<CommandResult, BbError>): boolean => r.isErr() || r.value.exitCode !== 0

/**
 * Copies the sender's stdout to every receiver in one process: the first gets tee's stdout, the
 * others read named pipes (`btrfs receive -f FIFO`), because Node's pipes to children are sockets
 * that tee cannot open by /dev/fd path. With `tee -p` a receiver that fails closes its pipe and
 * the others go on; if one fails before it opens its FIFO, the FIFO is drained here so tee never
 * waits for it. The bytes pass from kernel pipe to kernel pipe.
 */
const fanOut = (from: RunningCommand, first: RunningCommand, fifos: readonly string[], others: readonly RunningCommand[], signal: AbortSignal | undefined, through: readonly Transform[]): Promise<Result<CommandResult, BbError>> => {
  const argv = ['tee', '-p', ...fifos]
  const child = spawn('tee', argv.slice(1), { stdio: [through.length === 0 ? from.stdout ?? 'ignore' : 'pipe', first.stdin ?? 'ignore', 'pipe'], ...(signal === undefined ? {} : { signal }) })
  if (through.length === 0) from.stdout?.destroy()
  else throughJs(from.stdout, through, child.stdin ?? undefined)
  first.stdin?.destroy()
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-8000)
  })
  const exited = new Promise<Result<CommandResult, BbError>>((resolve) => {
    child.once('error', () => undefined)
    child.once('close', (code, sig) => {
      resolve(code === null
        ? err(bbError('COMMAND_FAILED', `tee was killed by ${sig ?? 'a signal'}`, 'run again', { argv }))
        : ok({ argv, exitCode: code, stdout: '', stderr: stderrTail(stderr) }))
    })
  })
  for (const [i, receiver] of others.entries()) {
    void receiver.done.then(() => {
      if (child.exitCode !== null || child.signalCode !== null) return
      // a reader that never came (or went): take its place so tee is never stuck on it
      try {
        const fd = openSync(fifos[i] as string, constants.O_RDONLY | constants.O_NONBLOCK)
        new Socket({ fd, readable: true, writable: false }).on('error', () => undefined).resume()
      } catch {
        // gone already: tee has finished
      }
    })
  }
  return exited
}

/**
 * Whether a stream from `source` to one receiver starts the receiver first: with nothing in
 * between (no rate limit) and a sender whose bytes /proc tells (root's, or an ssh client's). The
 * sender then writes straight into the receiver's stdin, so that a receiver on another host can be
 * the session opened ahead (Transport.prepareSpawn), its login already done.
 */
export const receiverStartsFirst = (source: Transport, rateLimit: number | undefined): boolean =>
  rateLimit === undefined && (process.getuid?.() === 0 || source.location.kind !== 'local')

/**
 * `btrfs send … | btrfs receive …` with the stream in OS pipes from process to process (it never
 * passes through JavaScript); with several receivers, one send feeds them all, so the source is
 * read once. The sender's byte count comes from /proc for progress. Each receiver gets its own
 * result; when the sender only saw its pipe break, the receiver's error is the one reported.
 */
export const sendReceive = async (input: SendReceiveInput): Promise<Result<{ readonly bytes: number }, BbError>[]> => {
  const options = input.signal === undefined ? {} : { signal: input.signal }
  const single = input.receivers.length === 1
  const compress = input.way?.compress
  if (compress !== undefined && !single) throw new InternalError('sendReceive: a compressed stream has one receiver (the fan-out is for targets on this host)')
  const limit = input.way?.rateLimit === undefined ? undefined : rateLimited(input.way.rateLimit)
  const fifoDir = single ? undefined : await mkdtemp(join(tmpdir(), 'bbackup-fanout-'))
  const fifos = input.receivers.slice(1).map((_, i) => join(fifoDir ?? '', `stream-${i + 1}`))
  for (const fifo of fifos) execFileSync('mkfifo', ['-m', '600', fifo])
  const compressing = compress === undefined ? {} : { compressStdout: compress }
  const decompressing = compress === undefined ? {} : { decompressStdin: compress }
  const [only] = input.receivers
  const receiverFirst = single && only !== undefined && receiverStartsFirst(input.source, input.way?.rateLimit)
  const firstReceiver = receiverFirst ? only.target.spawn(only.receiveArgv, { ...options, stdin: 'pipe', ...decompressing }) : undefined
  const send = input.source.spawn(input.sendArgv, { ...options, stdout: firstReceiver?.stdin ?? 'pipe', ...compressing })
  // a receiver that could not start has no stdin: the sender's pipe breaks at once
  if (firstReceiver !== undefined && firstReceiver.stdin === undefined) send.stdout?.destroy()
  // a sender this host cannot count from /proc (sudo's, which runs as root) is counted on its way through here
  const counter = firstReceiver === undefined && send.pid !== undefined && (await send.bytesWritten()) === undefined ? counting() : undefined
  const through = [limit, counter].filter((t) => t !== undefined)
  const sentBytes = async (): Promise<number | undefined> => (counter === undefined ? send.bytesWritten() : counter.bytes)
  const receives = firstReceiver !== undefined ? [firstReceiver] : input.receivers.map((r, i) => {
    if (single) {
      const stdin = through.length > 0 ? 'pipe' as const : send.stdout
      const receiver = r.target.spawn(r.receiveArgv, { ...options, ...(stdin === undefined ? {} : { stdin }), ...decompressing })
      if (through.length > 0) throughJs(send.stdout, through, receiver.stdin)
      return receiver
    }
    if (i === 0) return r.target.spawn(r.receiveArgv, { ...options, stdin: 'pipe' })
    const [btrfs, receive, ...rest] = r.receiveArgv
    return r.target.spawn([btrfs ?? 'btrfs', receive ?? 'receive', '-f', fifos[i - 1] as string, ...rest], options)
  })
  const [firstReceive] = receives
  const teeDone = single || firstReceive === undefined ? undefined : fanOut(send, firstReceive, fifos, receives.slice(1), input.signal, through)
  let bytes = 0
  let movedAt = Date.now()
  let stalled = false
  const timer = setInterval(() => {
    void sentBytes().then((n) => {
      if (n !== undefined && n > bytes) {
        bytes = n
        movedAt = Date.now()
        input.onBytes(n)
      } else if (n !== undefined && input.stallMs !== undefined && !stalled && Date.now() - movedAt > input.stallMs) {
        // a receiver that stopped (SIGSTOP, a hung disk, a peer that stopped reading) holds the pipe full for ever
        stalled = true
        for (const p of [send, ...receives]) p.kill('SIGKILL')
      }
    })
  }, Math.min(500, input.stallMs ?? 500))
  const [sent, tee, ...received] = await Promise.all([send.done, teeDone, ...receives.map((r) => r.done)])
  clearInterval(timer)
  if (fifoDir !== undefined) await rm(fifoDir, { recursive: true, force: true })
  bytes = Math.max(bytes, (await sentBytes()) ?? 0)
  return received.map((got, i): Result<{ readonly bytes: number }, BbError> => {
    const receiver = input.receivers[i]
    const receiveArgv = receiver?.receiveArgv ?? []
    if (stalled) {
      return err(bbError('STALLED', `the stream stopped moving: no byte was sent for ${Math.round((input.stallMs ?? 0) / 1000)} s, so the transfer was stopped`,
        'see whether the receiving side hangs (its disk, its load, the network); the run retries this, and the next run starts it again', { argv: [...input.sendArgv], bytes }))
    }
    if (input.signal?.aborted === true) {
      return err(bbError('CANCELLED', 'the transfer was cancelled', 'run again: the unfinished copy is removed and sent anew', { argv: [...input.sendArgv] }))
    }
    const allReceiversFailed = received.every(failed)
    if (failed(sent) && !(allReceiversFailed && brokenPipe(sent))) {
      if (sent.isErr()) return err(sent.error)
      return err(btrfsFailure(input.sendWhat ?? `btrfs send ${input.sendArgv.at(-1) ?? ''}`, input.sendArgv, sent.value.exitCode, sent.value.stderr))
    }
    if (got.isErr()) return err(got.error)
    if (got.value.exitCode !== 0) return err(btrfsFailure(receiver?.what ?? `btrfs receive into ${receiveArgv.at(-1) ?? ''}`, receiveArgv, got.value.exitCode, got.value.stderr))
    if (tee !== undefined && tee.isErr()) return err(tee.error)
    return ok({ bytes })
  })
}
