import { describe, expect, it } from 'vitest'
import { daemonConnectionLimit, retryWhileDaemonBusy } from '../src/transport/rsync-daemon.js'

const BUSY = '@ERROR: max connections (2) reached -- try again later\nrsync error: error starting client-server protocol (code 5) at main.c(1954) [Receiver=3.5.0]\n'

describe('daemonConnectionLimit', () => {
  it("reads the module's limit from the daemon's refusal, and nothing from any other answer", () => {
    expect(daemonConnectionLimit(BUSY)).toBe(2)
    expect(daemonConnectionLimit('@ERROR: auth failed on module backups\n')).toBeUndefined()
    expect(daemonConnectionLimit('')).toBeUndefined()
  })
})

describe('retryWhileDaemonBusy', () => {
  it('tries again while the daemon is busy, telling the limit each time, and returns the first other answer', async () => {
    const answers = [BUSY, BUSY, 'done']
    const heard: number[] = []
    let calls = 0
    const result = await retryWhileDaemonBusy(async () => answers[calls++] ?? 'none', (r) => r, { onBusy: (limit) => heard.push(limit) })
    expect(result).toBe('done')
    expect(calls).toBe(3)
    expect(heard).toEqual([2, 2])
  })

  it('gives up after 6 tries with the last refusal, for the caller to report', async () => {
    let calls = 0
    const result = await retryWhileDaemonBusy(async () => {
      calls++
      return BUSY
    }, (r) => r)
    expect(result).toBe(BUSY)
    expect(calls).toBe(6)
  }, 20_000)

  it('stops trying once cancelled', async () => {
    const cancel = new AbortController()
    let calls = 0
    const result = await retryWhileDaemonBusy(async () => {
      calls++
      cancel.abort()
      return BUSY
    }, (r) => r, { signal: cancel.signal })
    expect(result).toBe(BUSY)
    expect(calls).toBe(1)
  })
})
