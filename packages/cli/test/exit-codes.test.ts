import { bbError } from '@bb/core'
import { describe, expect, it } from 'vitest'
import { EXIT, placesExitCode } from '../src/exit-codes.js'

describe('placesExitCode (prune, clean, list over several places)', () => {
  it('is 0 when every place was done, 10 when one failed, 1 when one was cancelled (whatever the others did)', () => {
    const failed = bbError('TARGET_UNAVAILABLE', 'gone', 'mount it')
    const cancelled = bbError('CANCELLED', 'rm was cancelled', 'run again')
    expect(placesExitCode([undefined, undefined])).toBe(EXIT.ok)
    expect(placesExitCode([])).toBe(EXIT.ok)
    expect(placesExitCode([undefined, failed])).toBe(EXIT.someTargetsFailed)
    expect(placesExitCode([failed, cancelled, undefined])).toBe(EXIT.error)
    expect(placesExitCode([cancelled])).toBe(EXIT.error)
  })
})
