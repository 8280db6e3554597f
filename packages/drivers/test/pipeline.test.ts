import { err, ok } from 'neverthrow'
import { describe, expect, it } from 'vitest'
import { bbError } from '@bb/core'
import { brokenPipe } from '../src/btrfs/pipeline.js'

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
