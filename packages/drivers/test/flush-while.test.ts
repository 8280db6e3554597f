import { bbError, type CommandResult, type Transport } from '@bb/core'
import { errAsync, ResultAsync } from 'neverthrow'
import { describe, expect, it } from 'vitest'
import { FLUSH_PAUSE_MS, flushWhile } from '../src/flush-while.js'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** resolves once `condition` holds (a slow machine may take its time), failing after 10 s */
const until = async (condition: () => boolean): Promise<void> => {
  for (const started = Date.now(); !condition(); await sleep(5)) {
    if (Date.now() - started > 10_000) throw new Error('timed out')
  }
}

/** a transport whose commands end when the test says (`finish`), recording each */
const heldTransport = () => {
  const calls: (readonly string[])[] = []
  const pending: (() => void)[] = []
  const at = {
    exec: (argv: readonly string[]) => {
      calls.push(argv)
      return ResultAsync.fromSafePromise(new Promise<CommandResult>((resolve) => {
        pending.push(() => resolve({ argv, exitCode: 0, stdout: '', stderr: '' }))
      }))
    },
  } as unknown as Transport
  /** ends the commands under way */
  const finish = (): void => {
    for (const done of pending.splice(0)) done()
  }
  return { at, calls, finish }
}

// the loop's scheduling alone; that the flushes shorten a real backup is the benchmark's to show (pnpm bench)
describe('flushWhile: sync -f over and over while a copy runs', () => {
  it('flushes the filesystem of the path, one flush at a time with a pause after each, until stopped', async () => {
    const { at, calls, finish } = heldTransport()
    const flusher = flushWhile(at, '/backups/b.partial')
    expect(calls).toEqual([['sync', '-f', '/backups/b.partial']])
    // the first has not ended: no second one beside it
    await sleep(FLUSH_PAUSE_MS * 2)
    expect(calls).toHaveLength(1)
    finish()
    // the next comes after the pause, not at once
    const ended = Date.now()
    await until(() => calls.length === 2)
    expect(Date.now() - ended).toBeGreaterThanOrEqual(FLUSH_PAUSE_MS - 5)
    expect(calls[1]).toEqual(['sync', '-f', '/backups/b.partial'])
    finish()
    await sleep(FLUSH_PAUSE_MS / 4)
    await flusher.stop()
    // stopped in the pause: none after
    await sleep(FLUSH_PAUSE_MS * 2)
    expect(calls).toHaveLength(2)
  })

  it('stopped in its pause, it ends at once, not when the pause would have', async () => {
    const { at, calls, finish } = heldTransport()
    // a pause longer than the test may take
    const flusher = flushWhile(at, '/backups/b.partial', undefined, 3_600_000)
    finish()
    await sleep(20)
    await flusher.stop()
    expect(calls).toHaveLength(1)
  })

  it('stop waits for the flush under way, and starts none after it', async () => {
    const { at, calls, finish } = heldTransport()
    const flusher = flushWhile(at, '/backups/b.partial')
    let stopped = false
    const stopping = flusher.stop().then(() => {
      stopped = true
    })
    await sleep(FLUSH_PAUSE_MS / 4)
    expect(stopped).toBe(false)
    finish()
    await stopping
    await sleep(FLUSH_PAUSE_MS * 2)
    expect(calls).toHaveLength(1)
  })

  it('a flush that fails does not end the loop or throw: the flush before publishing is the one that tells', async () => {
    const calls: (readonly string[])[] = []
    const at = { exec: (argv: readonly string[]) => {
      calls.push(argv)
      return errAsync(bbError('COMMAND_FAILED', 'sync: not found', 'install coreutils'))
    } } as unknown as Transport
    const flusher = flushWhile(at, '/backups/b.partial')
    await until(() => calls.length >= 2)
    await flusher.stop()
  })

  it('starts no flush once the run is cancelled', async () => {
    const { at, calls, finish } = heldTransport()
    const controller = new AbortController()
    const flusher = flushWhile(at, '/backups/b.partial', controller.signal)
    controller.abort()
    finish()
    await sleep(FLUSH_PAUSE_MS * 2)
    expect(calls).toHaveLength(1)
    await flusher.stop()
  })
})
