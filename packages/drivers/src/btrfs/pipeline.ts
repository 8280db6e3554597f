import { pipeline, type Readable, type Transform, type Writable } from 'node:stream'
import { err, ok, type Result } from 'neverthrow'
import { bbError, InternalError, type BbError, type CommandResult, type RunningCommand, type Transport } from '@bb/core'
import { counting, rateLimited, type StreamWay } from '../stream-way.js'
import { btrfsFailure } from './subvolume.js'

export interface SendReceiveInput {
  readonly source: Transport
  readonly sendArgv: readonly string[]
  /** one receiver per target; with several, the one stream feeds them all */
  readonly receivers: readonly {
    readonly target: Transport
    readonly receiveArgv: readonly string[]
    /** names it in errors (default: btrfs receive into …) */
    readonly what?: string
    /** it stops reading at the stream's end by itself (`btrfs receive -e`): see SpawnOptions.selfDelimited */
    readonly selfDelimited?: boolean
  }[]
  /** names the sender in errors (default: btrfs send …) */
  readonly sendWhat?: string
  readonly signal: AbortSignal | undefined
  /** bytes sent so far, about twice a second */
  readonly onBytes: (bytes: number) => void
  /** no byte sent for this long: every process of the pipeline is killed and the transfer is STALLED */
  readonly stallMs?: number
  /** compressed and rate-limited, or as it is (default) */
  readonly way?: StreamWay
  /**
   * The sender's stdout may come back on its transport's own channel (SpawnOptions.sharedStdout;
   * over ssh the master's session: no second login, but the bytes pass through this process): for
   * an incremental stream, usually small, where the login saved counts more than the copy.
   */
  readonly shareSenderChannel?: boolean
  /**
   * Commands the stream passes through between the sender and the receivers, in order, each on
   * its own host (gpg and zstd on this host for an encrypted raw target): stdin from the one before.
   */
  readonly filters?: readonly StreamFilter[]
}

/** A command in the middle of a stream: it reads the stream on stdin and writes it changed on stdout. */
export interface StreamFilter {
  readonly at: Transport
  readonly argv: readonly string[]
  /** names it in errors */
  readonly what: string
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
 * A sender that was stopped rather than failed of itself: killed by the SIGPIPE it was sent when its
 * receiver failed, or over ssh a session that ended without a status (its remote command died of
 * the broken pipe), saying nothing. Not one that another signal killed (someone else stopped it,
 * and its receiver then failed only of the cut stream, perhaps before the sender's end was known),
 * nor a lost connection (NETWORK_FAILED: retried), nor a command that said why it failed.
 */
const stoppedOnly = (r: Result<CommandResult, BbError>): boolean => {
  if (r.isOk()) return r.value.stderr.trim() === ''
  const signal = r.error.details?.['signal']
  return r.error.code === 'COMMAND_FAILED' && (signal === undefined || signal === 'SIGPIPE')
}

/**
 * How far (in bytes) the fastest receiver of a fan-out may run ahead of the slowest before the
 * sender is no longer read: enough that each receiver works at its own pace (tee, whose writes go
 * to each reader in turn through 64 KiB pipes, holds every receiver to the slowest one's
 * momentary pace), small beside a stream's size.
 */
export const FAN_OUT_LAG = 32 * 1024 * 1024

/** The writers of a {@link fanOut}, as its stall watchdog sees them. */
export interface FanOut {
  /** the writers that hold bytes and have taken none for `ms`: the ones that keep the others waiting */
  stuck(ms: number): Writable[]
  /** drops a writer as if it had failed: the others go on without it */
  drop(w: Writable): void
  /** when a writer last took a chunk: a slow one that still moves is no stall, though the sender waits for it */
  lastTaken(): number
}

/**
 * Copies `from` to every writer in `to`, each at its own pace: a chunk is queued for every writer
 * at once, and `from` is paused only while one of them is {@link FAN_OUT_LAG} behind. A writer that
 * fails (its receiver died: EPIPE) is dropped and the others go on, as with `tee -p`; when none is
 * left, `from` is destroyed, so the sender sees its pipe break.
 */
export const fanOut = (from: Readable, to: readonly Writable[], lag = FAN_OUT_LAG): FanOut => {
  const queued = new Map<Writable, number>(to.map((w) => [w, 0]))
  /** when each writer last took a chunk (or the start) */
  const tookAt = new Map<Writable, number>(to.map((w) => [w, Date.now()]))
  let paused = false
  const behind = (): number => Math.max(0, ...queued.values())
  const resumeIfCaughtUp = (): void => {
    if (paused && behind() < lag / 2) {
      paused = false
      from.resume()
    }
  }
  const drop = (w: Writable): void => {
    if (!queued.delete(w)) return
    w.destroy()
    if (queued.size === 0) from.destroy()
    else resumeIfCaughtUp()
  }
  for (const w of to) w.on('error', () => drop(w))
  from.on('data', (chunk: Buffer) => {
    for (const w of queued.keys()) {
      // an idle writer is not stuck: its clock starts with the first chunk it waits for
      if ((queued.get(w) ?? 0) === 0) tookAt.set(w, Date.now())
      queued.set(w, (queued.get(w) ?? 0) + chunk.length)
      w.write(chunk, (e) => {
        if (!queued.has(w)) return
        queued.set(w, (queued.get(w) ?? 0) - chunk.length)
        tookAt.set(w, Date.now())
        if (e !== null && e !== undefined) drop(w)
        else resumeIfCaughtUp()
      })
    }
    if (!paused && behind() >= lag) {
      paused = true
      from.pause()
    }
  })
  from.once('end', () => {
    for (const w of queued.keys()) w.end()
  })
  from.once('error', () => {
    for (const w of queued.keys()) w.destroy()
  })
  return {
    stuck: (ms) => [...queued].filter(([w, n]) => n > 0 && Date.now() - (tookAt.get(w) ?? 0) >= ms).map(([w]) => w),
    drop,
    lastTaken: () => Math.max(0, ...[...queued.keys()].map((w) => tookAt.get(w) ?? 0)),
  }
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
 * `btrfs send … | btrfs receive …` with the stream in OS pipes from process to process (it
 * passes through JavaScript only with a rate limit or a count to keep); with several receivers,
 * one send feeds them all through {@link fanOut}, so the source is read once. The sender's byte count comes from /proc for progress. Each receiver gets its own
 * result; when the sender only saw its pipe break, the receiver's error is the one reported.
 */
export const sendReceive = async (input: SendReceiveInput): Promise<Result<{ readonly bytes: number }, BbError>[]> => {
  const options = input.signal === undefined ? {} : { signal: input.signal }
  const single = input.receivers.length === 1
  const compress = input.way?.compress
  if (compress !== undefined && !single) throw new InternalError('sendReceive: a compressed stream has one receiver (a target whose stream is compressed has a send of its own)')
  const limit = input.way?.rateLimit === undefined ? undefined : rateLimited(input.way.rateLimit)
  const compressing = compress === undefined ? {} : { compressStdout: compress }
  const decompressing = compress === undefined ? {} : { decompressStdin: compress }
  const [only] = input.receivers
  const filterSpecs = input.filters ?? []
  const receiverFirst = single && only !== undefined && filterSpecs.length === 0 && receiverStartsFirst(input.source, input.way?.rateLimit)
  const firstReceiver = receiverFirst ? only.target.spawn(only.receiveArgv, { ...options, stdin: 'pipe', ...decompressing, ...(only.selfDelimited === true ? { selfDelimited: true } : {}) }) : undefined
  const shared = input.shareSenderChannel === true && firstReceiver?.stdin !== undefined ? { sharedStdout: true } : {}
  const send = input.source.spawn(input.sendArgv, { ...options, stdout: firstReceiver?.stdin ?? 'pipe', ...compressing, ...shared })
  // a receiver that could not start has no stdin: the sender's pipe breaks at once
  if (firstReceiver !== undefined && firstReceiver.stdin === undefined) send.stdout?.destroy()
  /** the receiver failed while the sender still ran: whatever the sender then says (a broken pipe, or an ssh session that ended without a status), the receiver's error is the one */
  let receiverFailedFirst = false
  if (firstReceiver?.stdin !== undefined) {
    // the receiver's stdin may be a channel that stays open (selfDelimited): a sender that fails does
    // not end it, and a receiver that fails does not break it, so each stops the other (the sender
    // as its pipe breaking would)
    let sending = true
    let receiving = true
    void send.done.then((r) => {
      sending = false
      if (failed(r) && receiving) firstReceiver.kill('SIGTERM')
    })
    void firstReceiver.done.then((r) => {
      receiving = false
      if (!failed(r) || !sending) return
      receiverFailedFirst = true
      send.kill('SIGPIPE')
    })
  }
  // the filters, each reading the one before (a stage that did not start gives the next an empty stream)
  const filters: RunningCommand[] = []
  let stream = send.stdout
  for (const f of filterSpecs) {
    const filter = f.at.spawn(f.argv, { ...options, stdin: stream ?? 'pipe', stdout: 'pipe' })
    if (stream === undefined) filter.stdin?.end()
    filters.push(filter)
    stream = filter.stdout
  }
  // a sender this host cannot count from /proc (sudo's, which runs as root: its counters are not this user's) is counted on its way through here
  const counter = firstReceiver === undefined && send.pid !== undefined && (await send.bytesWritten()) === undefined ? counting() : undefined
  const through = [limit, counter].filter((t) => t !== undefined)
  // where the sender cannot tell (an ssh client's, whose master does its writing), what its one receiver read
  const sentBytes = async (): Promise<number | undefined> => (counter === undefined ? (await send.bytesWritten()) ?? firstReceiver?.bytesRead?.() : counter.bytes)
  const receives = firstReceiver !== undefined ? [firstReceiver] : input.receivers.map((r) => {
    const stdin = !single || through.length > 0 ? 'pipe' as const : stream
    const receiver = r.target.spawn(r.receiveArgv, { ...options, ...(stdin === undefined ? {} : { stdin }), ...decompressing })
    if (single && through.length > 0) throughJs(stream, through, receiver.stdin)
    return receiver
  })
  let fan: FanOut | undefined
  if (!single) {
    const stdins = receives.flatMap((r) => (r.stdin === undefined ? [] : [r.stdin]))
    const last = through.at(-1)
    if (stream === undefined) {
      // a sender that did not start: the receivers get an empty stream and end
      for (const stdin of stdins) stdin.end()
    } else {
      if (last !== undefined) pipeline([stream, ...through], () => undefined)
      fan = fanOut(last ?? stream, stdins)
    }
  }
  let bytes = 0
  let movedAt = Date.now()
  /** every process was stopped (the sender, or all its receivers, stood still) */
  let stalled = false
  /** receivers stopped alone: they stood still while the others waited for them */
  const stuck = new Set<number>()
  const timer = setInterval(() => {
    void sentBytes().then((n) => {
      if (n !== undefined && n > bytes) {
        bytes = n
        movedAt = Date.now()
        input.onBytes(n)
      } else if (n !== undefined && input.stallMs !== undefined && !stalled && Date.now() - Math.max(movedAt, fan?.lastTaken() ?? 0) > input.stallMs) {
        // a receiver that stopped (SIGSTOP, a hung disk, a peer that stopped reading) holds the pipe full for ever
        const holding = new Set(fan?.stuck(input.stallMs) ?? [])
        const alone = receives.flatMap((r, i) => (r.stdin !== undefined && holding.has(r.stdin) ? [i] : []))
        const others = receives.filter((_, i) => !alone.includes(i) && !stuck.has(i))
        if (alone.length > 0 && others.length > 0) {
          // of several targets, the ones that hold the rest back are stopped, and the rest go on
          for (const i of alone) {
            stuck.add(i)
            receives[i]?.kill('SIGKILL')
            const stdin = receives[i]?.stdin
            if (stdin !== undefined) fan?.drop(stdin)
          }
          movedAt = Date.now()
          return
        }
        stalled = true
        for (const p of [send, ...filters, ...receives]) p.kill('SIGKILL')
      }
    })
  }, Math.min(500, input.stallMs ?? 500))
  const [sent, ...ended] = await Promise.all([send.done, ...filters.map((f) => f.done), ...receives.map((r) => r.done)])
  const filtered = ended.slice(0, filters.length)
  const received = ended.slice(filters.length)
  clearInterval(timer)
  bytes = Math.max(bytes, (await sentBytes()) ?? 0)
  return received.map((got, i): Result<{ readonly bytes: number }, BbError> => {
    const receiver = input.receivers[i]
    const receiveArgv = receiver?.receiveArgv ?? []
    if (stuck.has(i)) {
      return err(bbError('STALLED', `${receiver?.what ?? `btrfs receive into ${receiveArgv.at(-1) ?? ''}`} stopped taking the stream for ${Math.round((input.stallMs ?? 0) / 1000)} s while the other targets waited for it, so it was stopped and they went on`,
        'see whether this target hangs (its disk, its load, the network); the next run sends it again', { argv: [...receiveArgv], bytes }))
    }
    if (stalled) {
      return err(bbError('STALLED', `the stream stopped moving: no byte was sent for ${Math.round((input.stallMs ?? 0) / 1000)} s, so the transfer was stopped`,
        'see whether the receiving side hangs (its disk, its load, the network); the run retries this, and the next run starts it again', { argv: [...input.sendArgv], bytes }))
    }
    if (input.signal?.aborted === true) {
      return err(bbError('CANCELLED', 'the transfer was cancelled', 'run again: the unfinished copy is removed and sent anew', { argv: [...input.sendArgv] }))
    }
    // the first stage that failed of itself, not because the one after it went away (its pipe broke)
    const stages = [sent, ...filtered]
    const names = [{ what: input.sendWhat ?? `btrfs send ${input.sendArgv.at(-1) ?? ''}`, argv: input.sendArgv }, ...filterSpecs]
    for (const [k, stage] of stages.entries()) {
      const next = stages[k + 1]
      const afterFailed = next === undefined ? received.every(failed) : failed(next)
      if (!failed(stage) || (afterFailed && (brokenPipe(stage) || (k === 0 && receiverFailedFirst && stoppedOnly(stage))))) continue
      if (stage.isErr()) return err(stage.error)
      return err(btrfsFailure(names[k]?.what ?? '', names[k]?.argv ?? [], stage.value.exitCode, stage.value.stderr))
    }
    if (got.isErr()) return err(got.error)
    if (got.value.exitCode !== 0) return err(btrfsFailure(receiver?.what ?? `btrfs receive into ${receiveArgv.at(-1) ?? ''}`, receiveArgv, got.value.exitCode, got.value.stderr))
    return ok({ bytes })
  })
}
