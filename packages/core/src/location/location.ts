import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError } from '../errors.js'

/** Where snapshots live: this host, a host over ssh, or an rsync daemon module. */
export type Location = LocalLocation | SshLocation | RsyncDaemonLocation

export interface LocalLocation {
  readonly kind: 'local'
  /** absolute path */
  readonly path: string
}

export interface SshLocation {
  readonly kind: 'ssh'
  readonly user?: string
  /** a host name, an ssh_config alias, an IPv4 address or an IPv6 address (without brackets) */
  readonly host: string
  readonly port?: number
  /** absolute, or relative to the remote user's home (scp form only) */
  readonly path: string
  /** how it was written: `ssh://host/path` or `host:/path` */
  readonly style: 'url' | 'scp'
}

export interface RsyncDaemonLocation {
  readonly kind: 'rsyncd'
  readonly user?: string
  readonly host: string
  readonly port?: number
  readonly module: string
  /** inside the module, without a leading slash; '' is the module's root */
  readonly path: string
  /** how it was written: `rsync://host/module/path` or `host::module/path` */
  readonly style: 'url' | 'double-colon'
}

export type LocationError = BbError<'INVALID_LOCATION'>

const NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/
const IPV6 = /^[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?$/
const HINT =
  'write a location as /abs/path, ssh://[user@]host[:port]/path, [user@]host:/path, ' +
  'rsync://[user@]host[:port]/module[/path] or [user@]host::module[/path]'

const invalid = (input: string, part: string, problem: string): LocationError =>
  bbError('INVALID_LOCATION', `invalid location ${JSON.stringify(input)}: ${part} ${problem}`, HINT, { input, part })

interface Authority {
  readonly user?: string
  readonly host: string
  readonly port?: number
}

const checkPath = (input: string, path: string): LocationError | undefined => {
  if (path.includes('\0')) return invalid(input, `path ${JSON.stringify(path)}`, 'contains a NUL byte')
  if (path.includes('\n') || path.includes('\r')) return invalid(input, `path ${JSON.stringify(path)}`, 'contains a line break')
  return undefined
}

/**
 * One spelling per place: doubled slashes and `.` parts after the first go, and a trailing slash
 * (a shell's completion of a directory adds one), so that `/mnt/backup/` and `/mnt/backup` name one
 * target, one job, one lock. `..` stays (a symlink before it decides where it leads), and so does a
 * leading `./` of a relative remote path (`host:./2222` is not a port).
 */
const tidyPath = (path: string): string => {
  let tidy = path.replace(/\/{2,}/g, '/')
  while (/\/\.(\/|$)/.test(tidy)) tidy = tidy.replace(/\/\.(\/|$)/, '/')
  return tidy.length > 1 ? tidy.replace(/\/+$/, '') : tidy
}

const parseUser = (input: string, user: string | undefined): Result<string | undefined, LocationError> => {
  if (user === undefined) return ok(undefined)
  return NAME.test(user) ? ok(user) : err(invalid(input, `user ${JSON.stringify(user)}`, 'is not a valid user name (letters, digits, . _ -; not starting with - or .)'))
}

const parseHost = (input: string, host: string): Result<string, LocationError> => {
  if (host.startsWith('[') && host.endsWith(']')) {
    const inner = host.slice(1, -1)
    return IPV6.test(inner) && inner.includes(':') ? ok(inner) : err(invalid(input, `host ${JSON.stringify(host)}`, 'is not an IPv6 address'))
  }
  if (host === '') return err(invalid(input, 'host', 'is empty'))
  return NAME.test(host) ? ok(host) : err(invalid(input, `host ${JSON.stringify(host)}`, 'is not a valid host name (letters, digits, . _ -; not starting with - or .)'))
}

const parsePort = (input: string, port: string | undefined): Result<number | undefined, LocationError> => {
  if (port === undefined) return ok(undefined)
  const n = /^\d{1,5}$/.test(port) ? Number(port) : Number.NaN
  return n >= 1 && n <= 65535 ? ok(n) : err(invalid(input, `port ${JSON.stringify(port)}`, 'is not a number from 1 to 65535'))
}

/** user@host:port, the host possibly in [brackets] */
const parseAuthority = (input: string, text: string, allowPort: boolean): Result<Authority, LocationError> => {
  const at = text.lastIndexOf('@')
  const userText = at >= 0 ? text.slice(0, at) : undefined
  const hostPort = at >= 0 ? text.slice(at + 1) : text
  const m = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(hostPort)
  if (m === null) return err(invalid(input, `host ${JSON.stringify(hostPort)}`, 'is not host[:port]'))
  const [, hostText = '', portText] = m
  if (!allowPort && portText !== undefined) return err(invalid(input, `host ${JSON.stringify(hostPort)}`, 'cannot carry a port in this form; use the URL form'))
  return parseUser(input, userText).andThen((user) =>
    parseHost(input, hostText).andThen((host) =>
      parsePort(input, portText).map((port): Authority => ({
        host,
        ...(user === undefined ? {} : { user }),
        ...(port === undefined ? {} : { port }),
      })),
    ),
  )
}

const parseUrl = (input: string, scheme: 'ssh' | 'rsync'): Result<Location, LocationError> => {
  const rest = input.slice(scheme.length + 3)
  const slash = rest.indexOf('/')
  if (slash < 0) return err(invalid(input, 'path', scheme === 'ssh' ? 'is missing (ssh://host/path)' : 'is missing: name the module (rsync://host/module)'))
  const authority = rest.slice(0, slash)
  const path = rest.slice(slash)
  const pathProblem = checkPath(input, path)
  if (pathProblem !== undefined) return err(pathProblem)
  return parseAuthority(input, authority, true).andThen((a): Result<Location, LocationError> => {
    if (scheme === 'ssh') return ok({ kind: 'ssh', ...a, path: tidyPath(path), style: 'url' })
    return moduleAndPath(input, path.slice(1)).map(({ module, modulePath }) => ({ kind: 'rsyncd', ...a, module, path: modulePath, style: 'url' }))
  })
}

const moduleAndPath = (input: string, text: string): Result<{ module: string; modulePath: string }, LocationError> => {
  const slash = text.indexOf('/')
  const module = slash < 0 ? text : text.slice(0, slash)
  const modulePath = slash < 0 ? '' : tidyPath(text.slice(slash + 1))
  if (module === '') return err(invalid(input, 'module', 'is empty'))
  if (!NAME.test(module)) return err(invalid(input, `module ${JSON.stringify(module)}`, 'is not a valid module name (letters, digits, . _ -)'))
  if (modulePath.startsWith('/')) return err(invalid(input, `path ${JSON.stringify(modulePath)}`, 'has a doubled slash after the module'))
  return ok({ module, modulePath })
}

/**
 * Parses a location in any of the forms the tools we replace use. Relative local paths are
 * resolved against `cwd` when it is given, and refused otherwise.
 * @example
 * parseLocation('backup@nas:2222/srv/backups') // err: looks like a port; write ssh://backup@nas:2222/path
 * parseLocation('ssh://backup@nas:2222/srv/backups') // ok({ kind: 'ssh', user: 'backup', host: 'nas', port: 2222, ... })
 */
export const parseLocation = (input: string, options: { readonly cwd?: string } = {}): Result<Location, LocationError> => {
  if (input === '') return err(invalid(input, 'location', 'is empty'))
  if (input.startsWith('ssh://')) return parseUrl(input, 'ssh')
  if (input.startsWith('rsync://')) return parseUrl(input, 'rsync')
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(input)) {
    return err(invalid(input, `scheme ${JSON.stringify(input.slice(0, input.indexOf(':')))}`, 'is not supported (ssh:// or rsync://)'))
  }
  const firstSlash = input.indexOf('/')
  const head = firstSlash < 0 ? input : input.slice(0, firstSlash)
  // an IPv6 address in [brackets], after user@ or alone: its colons are not the one after the host
  const bracket = /^(?:[^@:[\]]*@)?\[/.test(head) ? head.indexOf(']') : -1
  const colon = bracket >= 0 ? head.indexOf(':', bracket) : head.indexOf(':')
  if (colon < 0) {
    const pathProblem = checkPath(input, input)
    if (pathProblem !== undefined) return err(pathProblem)
    if (input.startsWith('/')) return ok({ kind: 'local', path: tidyPath(input) })
    if (options.cwd === undefined) return err(invalid(input, 'path', 'is relative; give an absolute path'))
    return ok({ kind: 'local', path: tidyPath(`${options.cwd}/${input}`) })
  }
  const authority = input.slice(0, colon)
  const afterColon = input.slice(colon + 1)
  if (afterColon.startsWith(':')) {
    return parseAuthority(input, authority, false).andThen((a) =>
      moduleAndPath(input, afterColon.slice(1)).andThen(({ module, modulePath }) => {
        const pathProblem = checkPath(input, modulePath)
        return pathProblem === undefined
          ? ok<Location, LocationError>({ kind: 'rsyncd', ...a, module, path: modulePath, style: 'double-colon' })
          : err(pathProblem)
      }),
    )
  }
  if (afterColon === '') return err(invalid(input, 'path', 'is empty after "host:"; write host:/path'))
  const portLike = /^(\d{1,5})(\/|$)/.exec(afterColon)
  if (portLike !== null) {
    // scp reads host:2222/x as the relative path 2222/x; a backup tool should not guess
    return err(invalid(input, `path ${JSON.stringify(afterColon)}`, `starts like a port; for port ${portLike[1] ?? ''} write ssh://${authority}:${portLike[1] ?? ''}/path, for a relative path write ${authority}:./${afterColon}`))
  }
  const pathProblem = checkPath(input, afterColon)
  if (pathProblem !== undefined) return err(pathProblem)
  return parseAuthority(input, authority, false).map((a): Location => ({ kind: 'ssh', ...a, path: tidyPath(afterColon), style: 'scp' }))
}

const hostText = (host: string): string => (host.includes(':') ? `[${host}]` : host)
const userText = (user: string | undefined): string => (user === undefined ? '' : `${user}@`)
const portText = (port: number | undefined): string => (port === undefined ? '' : `:${port}`)

/**
 * Prints a location in the form it was written; `parseLocation(formatLocation(l))` gives `l` back.
 * @example
 * formatLocation({ kind: 'local', path: '/srv/backups' }) // '/srv/backups'
 */
export const formatLocation = (location: Location): string => {
  switch (location.kind) {
    case 'local':
      return location.path
    case 'ssh':
      return location.style === 'url'
        ? `ssh://${userText(location.user)}${hostText(location.host)}${portText(location.port)}${location.path}`
        : `${userText(location.user)}${hostText(location.host)}:${location.path}`
    case 'rsyncd': {
      const tail = location.path === '' ? '' : `/${location.path}`
      return location.style === 'url'
        ? `rsync://${userText(location.user)}${hostText(location.host)}${portText(location.port)}/${location.module}${tail}`
        : `${userText(location.user)}${hostText(location.host)}::${location.module}${tail}`
    }
  }
}
