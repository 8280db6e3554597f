import { describe, expect, it } from 'vitest'
import { classifyRsyncExit } from '../src/rsync/exit-codes.js'

describe('classifyRsyncExit (reference/rsync.md §4)', () => {
  it('retries what a lost or refused connection ends with, and never a refusal by the daemon', () => {
    expect(classifyRsyncExit(10, 'rsync: [sender] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused (111)')).toEqual({ kind: 'network', meaning: 'error in socket I/O' })
    expect(classifyRsyncExit(12, 'rsync: connection unexpectedly closed')).toEqual({ kind: 'network', meaning: 'error in the rsync protocol data stream' })
    expect(classifyRsyncExit(30, '')).toMatchObject({ kind: 'network' })
    expect(classifyRsyncExit(35, '')).toMatchObject({ kind: 'network' })
    expect(classifyRsyncExit(5, '@ERROR: max connections (4) reached -- try again later')).toMatchObject({ kind: 'network' })
    expect(classifyRsyncExit(5, '@ERROR: auth failed on module backups')).toEqual({ kind: 'refused', meaning: 'auth failed' })
    expect(classifyRsyncExit(5, "@ERROR: Unknown module 'nope'")).toEqual({ kind: 'refused', meaning: 'Unknown module' })
    expect(classifyRsyncExit(1, 'ERROR: password file must not be other-accessible')).toEqual({ kind: 'refused', meaning: 'password file must' })
    expect(classifyRsyncExit(12, 'bbackup-remote: refused: the rsync option --log-file, which bbackup-remote does not allow\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]')).toEqual({ kind: 'refused', meaning: 'bbackup-remote: refused: the rsync option --log-file, which bbackup-remote does not allow' })
  })

  it('keeps the backup-level outcomes: ok, vanished, partial, disk full, other failures', () => {
    expect(classifyRsyncExit(0, '')).toEqual({ kind: 'ok' })
    expect(classifyRsyncExit(24, '')).toEqual({ kind: 'vanished' })
    expect(classifyRsyncExit(23, '')).toEqual({ kind: 'partial' })
    expect(classifyRsyncExit(12, 'write failed: No space left on device (28)')).toEqual({ kind: 'disk-full' })
    expect(classifyRsyncExit(2, '')).toEqual({ kind: 'failed', meaning: 'protocol incompatibility' })
  })
})
