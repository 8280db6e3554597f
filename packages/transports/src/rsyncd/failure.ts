import { bbError, daemonDisplay, daemonRefusedOption, refusedOptionText, type CommandResult, type RsyncDaemonLocation, type TransportError } from '@bb/core'

/** rsync's exits for a connection that could not be made or was lost (errcode.h): retried with backoff */
const CONNECTION_LOST: ReadonlySet<number> = new Set([10, 12, 30, 35])

/**
 * What went wrong with a daemon itself, whatever the operation: refused login, unknown module, a
 * read-only module, a connection refused, dropped or timed out. Undefined when the daemon served
 * the request (the operation judges its own exit, such as a missing path).
 */
export const daemonFailure = (result: CommandResult, daemon: RsyncDaemonLocation): TransportError | undefined => {
  const { exitCode, stderr } = result
  const [display, module] = [daemonDisplay(daemon), daemon.module]
  if (exitCode === 0) return undefined
  const details = { host: display, exitCode, stderr }
  if (/@ERROR: auth failed/.test(stderr)) {
    return bbError('AUTH_FAILED', `the rsync daemon at ${display} refused the login to module ${module}`,
      'check the user in the location and the password (--password-file or RSYNC_PASSWORD) against the module\'s "auth users" and "secrets file"', details)
  }
  if (/@ERROR: Unknown module/.test(stderr)) {
    return bbError('NOT_FOUND', `the rsync daemon at ${display} has no module ${module}`, `rsync rsync://${display}/ lists its modules; bbackup doctor rsyncd prints a module to add to rsyncd.conf`, details)
  }
  if (/ERROR: module is read only/.test(stderr)) {
    return bbError('IO_FAILED', `module ${module} at ${display} is read only`, 'set "read only = no" for the module in rsyncd.conf', details)
  }
  const refused = daemonRefusedOption(stderr)
  if (refused !== undefined) {
    const { message, hint } = refusedOptionText(refused, daemon)
    return bbError('UNSUPPORTED', message, hint, details)
  }
  if (/@ERROR: access denied/.test(stderr)) {
    return bbError('AUTH_FAILED', `the rsync daemon at ${display} does not allow this host into module ${module}`, 'add this host to the module\'s "hosts allow" in rsyncd.conf', details)
  }
  if (/password file must not be other-accessible|password file must be owned by root/.test(stderr)) {
    return bbError('INSECURE_SECRETS', 'rsync refused the password file: others may read it, or root does not own it', 'chmod 600 the password file (and chown it to the user that runs bbackup)', details)
  }
  if (/@ERROR: max connections/.test(stderr)) {
    return bbError('NETWORK_FAILED', `the rsync daemon at ${display} is serving its "max connections" already`, 'the run tries again with backoff; raise "max connections" for the module if this persists', details)
  }
  if (/No space left on device|Disk quota exceeded/.test(stderr)) {
    return bbError('DISK_FULL', `module ${module} at ${display} ran out of space`, 'free space there (or prune old backups), then run again', details)
  }
  if (CONNECTION_LOST.has(exitCode) || exitCode === 5) {
    const what = exitCode === 35 ? 'did not answer in time' : exitCode === 30 ? 'stopped sending or receiving data (timeout)' : /Connection refused/.test(stderr) ? 'refused the connection (is rsync --daemon running?)' : 'could not be reached or dropped the connection'
    return bbError('NETWORK_FAILED', `the rsync daemon at ${display} ${what}`, 'check that the daemon runs and the host is reachable; the run retries this with backoff, and the next run picks up where it stopped', details)
  }
  return undefined
}
