import type { BbError } from '@bb/core'

/** bbackup's exit codes (DESIGN.md "The CLI"). */
export const EXIT = { ok: 0, error: 1, usage: 2, lockHeld: 3, internal: 70, someTargetsFailed: 10 } as const

export const exitCodeOf = (error: BbError): number => {
  switch (error.code) {
    case 'LOCK_HELD':
      return EXIT.lockHeld
    case 'INVALID_LOCATION':
    case 'INVALID_POLICY':
    case 'INVALID_OPTIONS':
    case 'JOB_NOT_FOUND':
      return EXIT.usage
    default:
      return EXIT.error
  }
}

/**
 * A command that went over several places (prune, clean, list): 10 when one of them failed, the
 * others done; 1 when one was cancelled (Ctrl-C, a kill), as a cancelled run, verify or restore exits.
 */
export const placesExitCode = (errors: readonly (BbError | undefined)[]): number =>
  errors.some((e) => e?.code === 'CANCELLED') ? EXIT.error : errors.some((e) => e !== undefined) ? EXIT.someTargetsFailed : EXIT.ok
