/**
 * What rsync's exit codes mean (rsync 3.5.0 errcode.h and rsync(1) EXIT VALUES), and what a
 * backup should do with each: reference/rsync.md §4.
 */
export const RSYNC_EXIT_MEANINGS: Readonly<Record<number, string>> = {
  1: 'syntax or usage error',
  2: 'protocol incompatibility',
  3: 'errors selecting input/output files or directories',
  4: 'requested action not supported',
  5: 'error starting the client-server protocol',
  6: 'daemon unable to append to its log file',
  10: 'error in socket I/O',
  11: 'error in file I/O',
  12: 'error in the rsync protocol data stream',
  13: 'errors with program diagnostics',
  14: 'error in IPC code',
  20: 'received SIGUSR1 or SIGINT',
  21: 'some error returned by waitpid()',
  22: 'error allocating core memory buffers',
  23: 'partial transfer due to error',
  24: 'partial transfer due to vanished source files',
  25: 'the --max-delete limit stopped deletions',
  30: 'timeout in data send/receive',
  35: 'timeout waiting for daemon connection',
  127: 'rsync was not found on the remote side',
}

export type RsyncOutcome =
  | { readonly kind: 'ok' }
  | { readonly kind: 'vanished' }
  | { readonly kind: 'partial' }
  | { readonly kind: 'disk-full' }
  | { readonly kind: 'refused'; readonly meaning: string }
  | { readonly kind: 'network'; readonly meaning: string }
  | { readonly kind: 'failed'; readonly meaning: string }

/** ENOSPC shows as exit 11 or 23 (or 12 when the receiver dies of it); its text is what tells. */
const ENOSPC = /No space left on device|Disk quota exceeded/

/** a daemon (or an ssh key's forced command) turned the client away: retrying does not help (reference/rsync.md §4: 1-5 are fatal) */
const REFUSED = /@ERROR: (auth failed|Unknown module|access denied)|ERROR: module is read only|password file must|bbackup-remote: refused: .*/
/** the connection could not be made, or was lost or timed out: a retry may succeed */
const CONNECTION_LOST: ReadonlySet<number> = new Set([5, 10, 12, 30, 35])

export const classifyRsyncExit = (exitCode: number, stderr: string): RsyncOutcome => {
  if (exitCode === 0) return { kind: 'ok' }
  if (ENOSPC.test(stderr)) return { kind: 'disk-full' }
  if (exitCode === 24) return { kind: 'vanished' }
  if (exitCode === 23) return { kind: 'partial' }
  const meaning = RSYNC_EXIT_MEANINGS[exitCode] ?? `exit code ${exitCode}`
  if (REFUSED.test(stderr)) return { kind: 'refused', meaning: REFUSED.exec(stderr)?.[0]?.replace(/^@?ERROR: /, '') ?? meaning }
  if (CONNECTION_LOST.has(exitCode)) return { kind: 'network', meaning }
  return { kind: 'failed', meaning }
}
