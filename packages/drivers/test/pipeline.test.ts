import { randomBytes } from 'node:crypto'
import { PassThrough, Writable } from 'node:stream'
import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { describe, expect, it } from 'vitest'
import { bbError, type CommandResult, type RunningCommand, type Transport, type TransportError } from '@bb/core'
import { brokenPipe, fanOut, sendReceive } from '../src/btrfs/pipeline.js'
import { rateLimited } from '../src/stream-way.js'

const exited = (exitCode: number, stderr: string) => ok({ argv: ['btrfs', 'send'], exitCode, stdout: '', stderr })

describe('brokenPipe: the sender only saw its reader go away', () => {
  it('recognises EPIPE, ECONNRESET (seen in CI when btrfs receive hit ENOSPC) and SIGPIPE', () => {
    expect(brokenPipe(exited(1, 'ERROR: send ioctl failed with -32: Broken pipe'))).toBe(true)
    expect(brokenPipe(exited(104, 'ERROR: failed to read stream from kernel: Connection reset by peer'))).toBe(true)
    expect(brokenPipe(err(bbError('COMMAND_FAILED', 'btrfs was killed by SIGPIPE', 'run again')))).toBe(true)
  })
  it('does not take a failure of the sender itself for one', () => {
    expect(brokenPipe(exited(1, 'ERROR: parent subvolume /a is not read-only'))).toBe(false)
    expect(brokenPipe(exited(1, 'ERROR: send ioctl failed with -28: No space left on device'))).toBe(false)
  })
})

describe('rateLimited: the rate limit of a stream that passes through this process', () => {
  const through = async (bytes: Buffer, rate: number, chunk: number): Promise<{ out: Buffer; seconds: number }> => {
    const limit = rateLimited(rate)
    const parts: Buffer[] = []
    limit.on('data', (b: Buffer) => parts.push(b))
    const start = performance.now()
    const ended = new Promise((resolve) => limit.once('end', resolve))
    for (let i = 0; i < bytes.length; i += chunk) limit.write(bytes.subarray(i, i + chunk))
    limit.end()
    await ended
    return { out: Buffer.concat(parts), seconds: (performance.now() - start) / 1000 }
  }

  it('passes every byte in order, no faster than the limit (pipe-sized chunks are split)', async () => {
    const bytes = randomBytes(384 * 1024)
    const { out, seconds } = await through(bytes, 256 * 1024, 64 * 1024)
    expect(out.equals(bytes)).toBe(true)
    // 384 KiB at 256 KiB/s: the first piece goes at once, the rest takes at least (384 - 12.8) / 256 s
    expect(seconds).toBeGreaterThan(1.4)
  })
  it('does not slow a stream that stays under the limit', async () => {
    const { seconds } = await through(randomBytes(64 * 1024), 1024 ** 3, 16 * 1024)
    expect(seconds).toBeLessThan(0.5)
  })
})

describe('fanOut: one stream to several receivers, each at its own pace', () => {
  /** a receiver that keeps what it gets; `hold` makes it stop taking anything until released */
  const receiver = () => {
    const parts: Buffer[] = []
    let held: (() => void) | undefined
    let holding = false
    const w = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _encoding, callback) {
        parts.push(chunk)
        if (holding) held = callback
        else callback()
      },
    })
    return {
      w,
      got: () => Buffer.concat(parts),
      hold: () => { holding = true },
      release: () => { holding = false; const go = held; held = undefined; go?.() },
    }
  }
  const ended = (w: Writable) => new Promise<void>((resolve) => w.once('finish', resolve))
  const chunks = (bytes: Buffer, size: number): Buffer[] => Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => bytes.subarray(i * size, (i + 1) * size))

  it('gives every receiver every byte in order', async () => {
    const bytes = randomBytes(1024 * 1024)
    const from = new PassThrough()
    const [a, b, c] = [receiver(), receiver(), receiver()]
    fanOut(from, [a.w, b.w, c.w], 256 * 1024)
    for (const part of chunks(bytes, 10_000)) from.write(part)
    from.end()
    await Promise.all([ended(a.w), ended(b.w), ended(c.w)])
    for (const r of [a, b, c]) expect(r.got().equals(bytes)).toBe(true)
  })

  it('lets a fast receiver run up to the lag ahead of a stopped one, then stops reading the sender until the slow one catches up', async () => {
    const lag = 256 * 1024
    const from = new PassThrough()
    const [fast, slow] = [receiver(), receiver()]
    slow.hold()
    fanOut(from, [fast.w, slow.w], lag)
    const bytes = randomBytes(1024 * 1024)
    // all of it offered at once: what the fan-out does not read stays with the sender
    for (const part of chunks(bytes, 4096)) from.write(part)
    from.end()
    await new Promise((resolve) => setTimeout(resolve, 50))
    // the stopped one holds its first chunk; the fast one got about the lag, not everything offered
    expect(fast.got().length).toBeGreaterThanOrEqual(lag)
    expect(fast.got().length).toBeLessThan(lag + 64 * 1024)
    slow.release()
    await Promise.all([ended(fast.w), ended(slow.w)])
    expect(fast.got().equals(bytes)).toBe(true)
    expect(slow.got().equals(bytes)).toBe(true)
  })

  it('names a receiver that holds bytes and takes none as stuck (not the idle ones), and goes on without it once dropped', async () => {
    const from = new PassThrough()
    const [fast, held] = [receiver(), receiver()]
    held.hold()
    const fan = fanOut(from, [fast.w, held.w], 64 * 1024)
    const bytes = randomBytes(512 * 1024)
    for (const part of chunks(bytes, 4096)) from.write(part)
    from.end()
    await new Promise((resolve) => setTimeout(resolve, 120))
    // the fast one waits (the sender is paused for the held one) with nothing queued: not stuck
    expect(fast.got().length).toBeLessThan(bytes.length)
    expect(fan.stuck(100)).toEqual([held.w])
    expect(fan.stuck(5_000)).toEqual([])
    const waitedSince = fan.lastTaken()
    expect(Date.now() - waitedSince).toBeGreaterThanOrEqual(100)
    fan.drop(held.w)
    await ended(fast.w)
    expect(fast.got().equals(bytes)).toBe(true)
    expect(held.w.destroyed).toBe(true)
    expect(fan.lastTaken()).toBeGreaterThan(waitedSince)
  })

  it('drops a receiver that fails, the others go on; with none left the sender is destroyed', async () => {
    const from = new PassThrough()
    const [a, b] = [receiver(), receiver()]
    fanOut(from, [a.w, b.w], 256 * 1024)
    const bytes = randomBytes(256 * 1024)
    from.write(bytes.subarray(0, 1000))
    b.w.destroy(new Error('EPIPE'))
    from.write(bytes.subarray(1000))
    from.end()
    await ended(a.w)
    expect(a.got().equals(bytes)).toBe(true)

    const lone = new PassThrough()
    const c = receiver()
    fanOut(lone, [c.w])
    c.w.destroy(new Error('EPIPE'))
    await new Promise((resolve) => setTimeout(resolve, 10))
    expect(lone.destroyed).toBe(true)
  })
})

describe('sendReceive: whose error a stream that broke reports', () => {
  /** a command whose end the test decides; the signals it was sent are kept */
  const command = (argv: readonly string[]) => {
    let end: (r: Result<CommandResult, TransportError>) => void = () => undefined
    const sent: string[] = []
    const running: RunningCommand = {
      argv, pid: undefined, stdout: undefined, stdin: new PassThrough(),
      done: new ResultAsync(new Promise<Result<CommandResult, TransportError>>((resolve) => { end = resolve })),
      bytesWritten: async () => 0,
      kill: (signal = 'SIGTERM') => { sent.push(signal) },
    }
    return { running, sent, end: (r: Result<CommandResult, TransportError>) => end(r) }
  }
  /** a sender on another host (so its receiver starts first and takes its stream), and one receiver here */
  const pair = () => {
    const send = command(['btrfs', 'send', '/src/.snapshots/a'])
    const receive = command(['btrfs', 'receive', '/backup'])
    const at = (kind: 'ssh' | 'local', c: RunningCommand) => ({ location: { kind }, spawn: () => c }) as unknown as Transport
    const result = sendReceive({
      source: at('ssh', send.running), sendArgv: send.running.argv,
      receivers: [{ target: at('local', receive.running), receiveArgv: receive.running.argv }],
      signal: undefined, onBytes: () => undefined,
    })
    return { send, receive, result }
  }
  const killed = (signal: NodeJS.Signals) => err(bbError('COMMAND_FAILED', `btrfs send on root@host was killed by ${signal}`, 'run again', { signal }))
  const cut = ok({ argv: ['btrfs', 'receive'], exitCode: 1, stdout: '', stderr: 'ERROR: short read from stream: expected 49 read 10' })
  const tick = () => new Promise((resolve) => setTimeout(resolve, 5))

  it('the receiver failed of itself while the sender ran: the sender is sent SIGPIPE, and the receiver\'s error is the one', async () => {
    const { send, receive, result } = pair()
    receive.end(ok({ argv: ['btrfs', 'receive'], exitCode: 1, stdout: '', stderr: 'ERROR: No space left on device' }))
    await tick()
    expect(send.sent).toEqual(['SIGPIPE'])
    send.end(killed('SIGPIPE'))
    const [got] = await result
    expect(got?._unsafeUnwrapErr().message).toBe('btrfs receive into /backup: no space left on the target')
  })

  it('the sender was killed by someone else and its receiver\'s failure of the cut stream was known first: the sender\'s end is the one', async () => {
    const { send, receive, result } = pair()
    receive.end(cut)
    await tick()
    send.end(killed('SIGKILL'))
    const [got] = await result
    expect(got?._unsafeUnwrapErr().message).toBe('btrfs send on root@host was killed by SIGKILL')
  })

  it('the sender was killed by someone else and that was known first: the sender\'s end is the one', async () => {
    const { send, receive, result } = pair()
    send.end(killed('SIGKILL'))
    await tick()
    receive.end(cut)
    const [got] = await result
    expect(got?._unsafeUnwrapErr().message).toBe('btrfs send on root@host was killed by SIGKILL')
  })
})
