import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { freePort, serverProcess } from './processes.js'
import { makeTempDir } from './temp-dir.js'

/** A real `rsync --daemon` on 127.0.0.1 with one writable module that needs a password. */
export interface Rsyncd {
  readonly host: '127.0.0.1'
  readonly port: number
  readonly module: 'backups'
  readonly user: 'backup'
  /** the module's directory on this host */
  readonly modulePath: string
  /** a password file for the user, mode 0600 */
  readonly passwordFile: string
  readonly password: string
  /** a directory of the fixture for the test's own files */
  readonly directory: string
  /** `rsync://backup@127.0.0.1:PORT/backups/<path>` */
  url(path?: string): string
  /** kills the daemon and every transfer it serves (SIGKILL, by pid), as a crash would */
  kill(): Promise<void>
  /** starts it again on the same port, after `kill` */
  start(): Promise<void>
  /** pids of the processes serving connections now (children of the listener) */
  sessionPids(): number[]
  /** the daemon's log */
  log(): Promise<string>
  /** stops the daemon and its transfers, removes its files; safe to call twice */
  stop(): Promise<void>
}

/**
 * Starts `rsync --daemon --no-detach` on a free port of 127.0.0.1 with a generated rsyncd.conf:
 * module `backups`, writable, `auth users = backup` with a secrets file (strict modes), running
 * as the user of the tests (`uid`/`gid` 0 when root). Extra module lines (`refuse options = ...`)
 * can be given, or `configText` in place of the module (the fixture keeps its port, log and pid). `stop` ends the listener and the transfers it started, by pid.
 * @example
 * const daemon = await startRsyncd()
 * try { ... daemon.url('host1') ... } finally { await daemon.stop() }
 */
export const startRsyncd = async (options: { readonly moduleLines?: readonly string[]; readonly configText?: string } = {}): Promise<Rsyncd> => {
  const dir = await makeTempDir('rsyncd')
  const modulePath = join(dir.path, 'module')
  const config = join(dir.path, 'rsyncd.conf')
  const secrets = join(dir.path, 'rsyncd.secrets')
  const passwordFile = join(dir.path, 'password')
  const logFile = join(dir.path, 'rsyncd.log')
  const password = `pw-${process.pid}-${Date.now().toString(36)}`
  const port = await freePort()
  const server = serverProcess(['rsync', '--daemon', '--no-detach', `--config=${config}`, `--port=${port}`, '--address=127.0.0.1'], port, logFile, 'SIGKILL')
  const stop = async (): Promise<void> => {
    await server.stop()
    await dir.cleanup()
  }
  try {
    await mkdir(modulePath)
    await writeFile(secrets, `backup:${password}\n`, { mode: 0o600 })
    await writeFile(passwordFile, `${password}\n`, { mode: 0o600 })
    await chmod(passwordFile, 0o600)
    const uid = process.getuid?.() ?? 0
    const gid = process.getgid?.() ?? 0
    await writeFile(config, [
      `log file = ${logFile}`, 'socket options = TCP_NODELAY', 'reverse lookup = no', 'use chroot = no', `uid = ${uid}`, `gid = ${gid}`, 'max connections = 16', `lock file = ${join(dir.path, 'rsyncd.lock')}`,
      ...(options.configText === undefined
        ? ['[backups]', `path = ${modulePath}`, 'read only = no', 'auth users = backup', `secrets file = ${secrets}`, 'strict modes = yes', ...(options.moduleLines ?? [])]
        : [options.configText]),
      '',
    ].join('\n'))
    await server.start()
  } catch (e) {
    await stop()
    throw e
  }
  return {
    host: '127.0.0.1',
    port,
    module: 'backups',
    user: 'backup',
    modulePath,
    passwordFile,
    password,
    directory: dir.path,
    url: (path = '') => `rsync://backup@127.0.0.1:${port}/backups${path === '' ? '' : `/${path}`}`,
    kill: server.stop,
    start: server.start,
    sessionPids: server.sessionPids,
    log: () => readFile(logFile, 'utf8').catch(() => ''),
    stop,
  }
}
