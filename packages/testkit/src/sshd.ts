import { execFileSync } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { freePort, serverProcess } from './processes.js'
import { makeTempDir } from './temp-dir.js'

/** A real OpenSSH server on 127.0.0.1, with its own host key and a client key that may log in. */
export interface Sshd {
  readonly host: '127.0.0.1'
  readonly port: number
  /** the private key that logs in (as the user running the tests) */
  readonly identityFile: string
  /** a known_hosts file that trusts this server's host key */
  readonly knownHostsFile: string
  /** a directory of the fixture for the test's own files */
  readonly directory: string
  /** replaces authorized_keys: one line per entry, `%KEY%` standing for the client's public key */
  setAuthorizedKeys(lines: readonly string[]): Promise<void>
  /** gives the server a new host key and restarts it: the known_hosts entry is now wrong */
  rotateHostKey(): Promise<void>
  /** how many logins the server has accepted so far */
  logins(): Promise<number>
  /** how many sessions (commands) the server has started so far, over all logins */
  sessions(): Promise<number>
  /** pids of every process below the listener now: the sshd processes serving connections and what their sessions run */
  sessionPids(): number[]
  /** stops the server and every connection it serves; safe to call twice */
  stop(): Promise<void>
}


/**
 * Starts `sshd -D` on a free port of 127.0.0.1 with generated host and client keys (ed25519),
 * password logins off and its log in the fixture's directory. Needs root (sshd's privilege
 * separation) and openssh-server. `stop` ends the listener and the sessions it started, by pid.
 */
export const startSshd = async (): Promise<Sshd> => {
  const dir = await makeTempDir('sshd')
  const hostKey = join(dir.path, 'host_ed25519')
  const clientKey = join(dir.path, 'client_ed25519')
  const knownHosts = join(dir.path, 'known_hosts')
  const authorizedKeys = join(dir.path, 'authorized_keys')
  const config = join(dir.path, 'sshd_config')
  const log = join(dir.path, 'sshd.log')
  const port = await freePort()
  const keygen = (file: string): void => {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'bbackup-test', '-f', file], { stdio: 'ignore' })
  }
  const trustHostKey = async (): Promise<void> => {
    const pub = (await readFile(`${hostKey}.pub`, 'utf8')).trim().split(' ').slice(0, 2).join(' ')
    await writeFile(knownHosts, `[127.0.0.1]:${port} ${pub}\n[::1]:${port} ${pub}\n`)
  }
  const server = serverProcess(['/usr/sbin/sshd', '-D', '-f', config, '-E', log], port, log, 'SIGTERM')
  const stop = async (): Promise<void> => {
    await server.stop()
    await dir.cleanup()
  }
  try {
    keygen(hostKey)
    keygen(clientKey)
    await writeFile(authorizedKeys, await readFile(`${clientKey}.pub`, 'utf8'))
    await trustHostKey()
    await writeFile(config, [
      // also on IPv6's loopback, for locations written with an address in [brackets]
      `Port ${port}`, 'ListenAddress 127.0.0.1', 'ListenAddress ::1', `HostKey ${hostKey}`, `PidFile ${join(dir.path, 'sshd.pid')}`,
      `AuthorizedKeysFile ${authorizedKeys}`, 'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'PubkeyAuthentication yes',
      'PermitRootLogin prohibit-password', 'StrictModes no', 'UsePAM no', 'LogLevel VERBOSE', 'MaxSessions 64', 'MaxStartups 64',
      // a key's environment="PATH=..." option can take a tool away from the remote side (a host without zstd)
      'PrintMotd no', 'Subsystem sftp internal-sftp', 'PermitUserEnvironment PATH', '',
    ].join('\n'))
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
    await server.start()
  } catch (e) {
    await stop()
    throw e
  }
  return {
    host: '127.0.0.1',
    port,
    identityFile: clientKey,
    knownHostsFile: knownHosts,
    directory: dir.path,
    setAuthorizedKeys: async (lines) => {
      const key = (await readFile(`${clientKey}.pub`, 'utf8')).trim()
      await writeFile(authorizedKeys, lines.map((l) => `${l.replaceAll('%KEY%', key)}\n`).join(''))
    },
    rotateHostKey: async () => {
      await server.stop()
      execFileSync('rm', ['-f', hostKey, `${hostKey}.pub`])
      keygen(hostKey)
      await server.start()
    },
    logins: async () => ((await readFile(log, 'utf8').catch(() => '')).match(/Accepted publickey/g) ?? []).length,
    sessions: async () => ((await readFile(log, 'utf8').catch(() => '')).match(/Starting session:/g) ?? []).length,
    sessionPids: server.sessionPids,
    stop,
  }
}
