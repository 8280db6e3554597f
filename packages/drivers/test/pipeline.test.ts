import { randomBytes } from 'node:crypto'
import { err, ok } from 'neverthrow'
import { describe, expect, it } from 'vitest'
import { bbError } from '@bb/core'
import { brokenPipe, rateLimited } from '../src/btrfs/pipeline.js'

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
