import { bbError, refusalHint, type CommandResult, type TransportError } from '@bb/core'
import { REFUSED_TAG } from './remote-protocol.js'

/** Where a command ran, for messages: `backup@nas` or `nas:2222`. */
export interface Endpoint {
  /** as the user wrote it: `[user@]host[:port]` */
  readonly display: string
  readonly host: string
  readonly port?: number
  /** the known_hosts file given for the connection (else ssh's own) */
  readonly knownHostsFile?: string
  /** the ssh_config file bbackup wrote for the connection, which holds the options given to it */
  readonly configFile?: string
  /** where ssh itself went, with every config file applied (`ssh -G`): a host alias's real name and port */
  readonly resolved?: ResolvedHost
}

/** What `ssh -G` says of a host: the name and port it connects to and how it files the key in known_hosts. */
export interface ResolvedHost {
  readonly hostname: string
  readonly port: number
  readonly hostKeyAlias?: string
  /** the first UserKnownHostsFile: where ssh looks first and where a new key belongs */
  readonly knownHostsFile?: string
}

/** Reads the lines of `ssh -G` (lower-case `key value`); undefined when it has no host name. */
export const parseResolvedHost = (text: string): ResolvedHost | undefined => {
  const field = (key: string): string | undefined => new RegExp(`^${key} (.+)$`, 'm').exec(text)?.[1]?.trim()
  const hostname = field('hostname')
  if (hostname === undefined || hostname === '') return undefined
  const port = Number(field('port') ?? '22')
  const alias = field('hostkeyalias')
  const file = field('userknownhostsfile')?.split(' ')[0]
  return {
    hostname,
    port: Number.isInteger(port) && port > 0 ? port : 22,
    ...(alias === undefined || alias === 'none' ? {} : { hostKeyAlias: alias }),
    ...(file === undefined || file === '' || file === 'none' ? {} : { knownHostsFile: file }),
  }
}

const bracketed = (host: string, port: number | undefined): string => (port === undefined || port === 22 ? host : `[${host}]:${port}`)

/** The command that adds the host's keys to the known_hosts file ssh will read, under the name it will look for. */
const keyscan = (e: Endpoint): string => {
  const [host, port] = e.resolved === undefined ? [e.host, e.port] : [e.resolved.hostname, e.resolved.port === 22 ? undefined : e.resolved.port]
  const file = e.knownHostsFile ?? e.resolved?.knownHostsFile ?? '~/.ssh/known_hosts'
  // ssh-keyscan knows nothing of ssh_config: it is given the real name and port, and a HostKeyAlias is written in by hand
  const alias = e.resolved?.hostKeyAlias
  const renamed = alias === undefined ? '' : /^[\w.:[\]-]+$/.test(alias) ? ` | sed 's/^[^ ]*/${alias}/'` : ` (each line's first field changed to ${alias})`
  return `ssh-keyscan ${port === undefined ? '' : `-p ${port} `}${host}${renamed} >> ${file}`
}

/** The name ssh files the host's key under in known_hosts. */
const knownHostsName = (e: Endpoint): string =>
  e.resolved === undefined ? bracketed(e.host, e.port) : e.resolved.hostKeyAlias ?? bracketed(e.resolved.hostname, e.resolved.port)

const knownHostsFlag = (e: Endpoint): string => {
  const file = e.knownHostsFile ?? e.resolved?.knownHostsFile
  return file === undefined ? '' : `-f ${file} `
}

/**
 * What went wrong when ssh itself failed (exit 255 with one of its own messages), or undefined
 * when the failure was the remote command's. Host key and authentication failures are never
 * retried; network failures are (`NETWORK_FAILED`).
 */
export const sshFailure = (result: Pick<CommandResult, 'exitCode' | 'stderr' | 'argv'>, endpoint: Endpoint): TransportError | undefined => {
  if (result.exitCode !== 255) return undefined
  const stderr = result.stderr
  const details = { host: endpoint.display, argv: [...result.argv], stderr }
  if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/.test(stderr)) {
    return bbError('HOSTKEY_CHANGED', `the host key of ${endpoint.display} has CHANGED since it was trusted: refusing to connect (this can be an attack)`,
      `if the host was reinstalled or its key rotated, check the new fingerprint out of band, then: ssh-keygen ${knownHostsFlag(endpoint)}-R '${knownHostsName(endpoint)}' && ${keyscan(endpoint)}`, details)
  }
  if (/No \S+ host key is known for|Host key verification failed/.test(stderr)) {
    return bbError('HOSTKEY_UNKNOWN', `the host key of ${endpoint.display} is not known: bbackup does not trust new hosts by itself`,
      `check its fingerprint, then trust it once: ${keyscan(endpoint)} (or connect once with ssh and answer yes)`, details)
  }
  // ssh's own complaint about its config (ours, with the options given, or the user's): it ends with 'terminating, N bad configuration options'
  const bad = /terminating, \d+ bad configuration options?/.test(stderr) ? /^(.*?):? line (\d+): (.*)$/m.exec(stderr) : null
  if (bad !== null) {
    const text = (bad[3] ?? '').trim().replace(/\.$/, '')
    const option = /^Bad configuration option: (\S+)$/.exec(text)
    const [file, line, what] = [bad[1] ?? '', bad[2], option === null ? `an option: ${text}` : `the option '${option[1] ?? ''}'`]
    const ours = endpoint.configFile !== undefined && file === endpoint.configFile
    return bbError('INVALID_OPTIONS', `ssh does not accept ${what} (${ours ? 'given with --ssh-option or ssh_options' : `${file}, line ${line ?? '?'}`})`,
      ours ? 'write ssh_config keywords as Key=Value, e.g. --ssh-option ConnectTimeout=30 (man ssh_config lists them)' : 'fix that line of your ssh config', details)
  }
  const refused = stderr.split('\n').find((l) => l.startsWith(REFUSED_TAG))
  if (refused !== undefined) {
    const reason = refused.slice(REFUSED_TAG.length).trim()
    // bbackup-remote refuses every request when its own options are wrong: the key's line is to fix, not its role
    const misconfigured = /^the forced command is misconfigured: (.*)$/.exec(reason)
    if (misconfigured !== null) {
      return bbError('AUTH_FAILED', `the forced command on ${endpoint.display} is misconfigured: ${misconfigured[1] ?? ''}`,
        'fix the bbackup-remote options in that key\'s authorized_keys line there (bbackup doctor prints one); see docs/transports/ssh.md', details)
    }
    return bbError('AUTH_FAILED', `the forced command on ${endpoint.display} refused ${reason}`, refusalHint(reason), details)
  }
  if (/Permission denied \(|Too many authentication failures|no mutual signature algorithm|Load key .*: /.test(stderr)) {
    return bbError('AUTH_FAILED', `ssh could not log in to ${endpoint.display}: ${firstSshLine(stderr)}`,
      'bbackup logs in without prompts (BatchMode): give a key with --ssh-identity (or in ~/.ssh/config) whose public half is in the remote authorized_keys', details)
  }
  if (/Could not resolve hostname/.test(stderr)) {
    return bbError('NETWORK_FAILED', `cannot resolve the host name of ${endpoint.display}`, 'check the name (and ~/.ssh/config), and the DNS of this host', details)
  }
  if (/Connection refused|Connection timed out|timed out|No route to host|Network is unreachable|Connection reset|Connection closed|closed by remote host|Broken pipe|not responding|kex_exchange_identification|mux_client|Control socket|master .* died|lost connection|Connection to .* closed/i.test(stderr)) {
    return bbError('NETWORK_FAILED', `the connection to ${endpoint.display} failed: ${firstSshLine(stderr)}`, 'check that the host is up and reachable; the run retries this with backoff, and the next run picks up where it stopped', details)
  }
  return undefined
}

/** The line of ssh's stderr that says what happened (not its banner or the remote's output). */
const firstSshLine = (stderr: string): string => {
  const lines = stderr.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('@@@') && !l.startsWith('Warning: Permanently'))
  return lines.find((l) => /^(ssh|kex_|Connection|Timeout|Permission|Load key|client_loop|mux_)/.test(l)) ?? lines.at(-1) ?? 'ssh exited with 255'
}
