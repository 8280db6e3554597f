import { posix } from 'node:path'
import { AS_ROOT, FILTERS, PRIVATE_WRITER, SCRIPTS, SPAWN_WRAPPER, type ScriptName } from '../remote-protocol.js'
import { parseRsyncServer } from './rsync-server.js'

/**
 * What a key may do: `list` looks (read, stat, list, show, versions) and comes with every role;
 * `receive` writes new backups (btrfs receive, rsync into a directory, files); `send` reads
 * backups out and takes snapshots of sources; `delete` deletes snapshots and backups.
 */
export type Role = 'send' | 'receive' | 'delete' | 'list'
export const ROLES: readonly Role[] = ['send', 'receive', 'delete', 'list']

export interface FilterPolicy {
  readonly roles: ReadonlySet<Role>
  /** absolute directories (real paths) that every path of a request must be inside */
  readonly roots: readonly string[]
  /** accept the `sudo -n --` prefix that `--ssh-sudo` adds, and keep it */
  readonly sudo: boolean
}

/** what must still hold on the host before the command runs (checked by {@link checkRequest}) */
export type Check =
  /** exists or not, the path resolves (symlinks and all) inside one of the roots */
  | { readonly kind: 'inside'; readonly path: string }
  /** a btrfs subvolume that is an unfinished receive: writable (a finished one is read-only) */
  | { readonly kind: 'unfinished-receive'; readonly path: string }
  /** a process that a bbackup-remote started (a send or a receive to stop) */
  | { readonly kind: 'started-here'; readonly pid: number }

export type Decision =
  /** `selfAt`: the word of `argv` to run as bbackup-remote itself (the block driver's chunk scan names its helper there) */
  | { readonly allowed: true; readonly argv: readonly string[]; readonly role: Role; readonly checks: readonly Check[]; readonly selfAt?: number }
  | { readonly allowed: false; readonly reason: string }

/** the role each file script needs; a source's snapshot folder is made (mkdir) on a pull's first run */
const SCRIPT_ROLES: Readonly<Record<ScriptName, { readonly role: Role; readonly also?: Role }>> = {
  read: { role: 'list' }, stat: { role: 'list' }, list: { role: 'list' }, readlink: { role: 'list' },
  write: { role: 'receive' }, mkdir: { role: 'receive', also: 'send' }, mkdirp: { role: 'receive', also: 'send' }, rename: { role: 'receive' }, symlink: { role: 'receive' },
  remove: { role: 'delete' }, removeTree: { role: 'delete' }, each: { role: 'list' },
}
const SCRIPT_BY_TEXT: ReadonlyMap<string, ScriptName> = new Map(Object.entries(SCRIPTS).map(([name, text]) => [text, name as ScriptName]))
const FILTER_TEXTS: ReadonlySet<string> = new Set(Object.values(FILTERS))
/** how many arguments each script takes, all of them paths except symlink's target */
const SCRIPT_ARGS: Readonly<Record<ScriptName, number>> = {
  read: 1, stat: 1, list: 1, readlink: 1, write: 1, mkdir: 1, mkdirp: 1, rename: 2, symlink: 2, remove: 1, removeTree: 1, each: 0,
}

/**
 * The commands of an `each` script (COUNT WORD... for each): every one must be a command that only
 * looks (the list role), as the driver sends them to read many subvolumes in one round trip.
 */
const each = (operands: readonly string[]): Match => {
  const checks: Check[] = []
  // commands that look, and a commit (a receive's check and commit in one trip): the script needs the commit's role
  let acting: { readonly role: Role; readonly also?: Role } | undefined
  for (let j = 0; j < operands.length;) {
    const n = /^[1-9]\d{0,3}$/.test(operands[j] ?? '') ? Number(operands[j]) : 0
    if (n === 0 || j + 1 + n > operands.length) return 'an each script whose counts do not match its words'
    const inner = operands.slice(j + 1, j + 1 + n)
    const m = match(inner, false)
    const commit = same(inner.slice(0, 3), ['btrfs', 'filesystem', 'sync']) || same(inner.slice(0, 2), ['sync', '-f'])
    if (m === undefined || typeof m === 'string' || inner[0] === 'sh' || (m.role !== 'list' && !commit)) return `${label(inner)} inside an each script, which runs only commands that look, and a commit`
    if (m.role !== 'list') {
      if (acting !== undefined && (acting.role !== m.role || acting.also !== m.also)) return `${label(inner)} inside an each script that already needs the ${acting.role} role`
      acting = { role: m.role, ...(m.also === undefined ? {} : { also: m.also }) }
    }
    checks.push(...m.checks)
    j += 1 + n
  }
  return checks.length === 0 && operands.length === 0 ? 'an empty each script' : { role: 'list', ...acting, checks }
}

/** a raw target's files: streams and their sidecars */
const RAW_FILE = /\.btrfs(\.zst)?(\.gpg)?(\.info)?$/
/** a raw target's stream while it is written */
const RAW_PART = /\.btrfs(\.zst)?(\.gpg)?\.part$/

/** what writes a raw target's stream: `zstd -q -T0 -o PATH` or `dd of=PATH bs=1M status=none`, into a `.part` file */
const rawWriter = (argv: readonly string[]): Match | undefined => {
  const [program, ...args] = argv
  const path = program === 'zstd' && args.length === 4 && same(args.slice(0, 3), ['-q', '-T0', '-o']) ? args[3]
    : program === 'dd' && args.length === 3 && args[0]?.startsWith('of=') === true && same(args.slice(1), ['bs=1M', 'status=none']) ? args[0].slice(3)
      : undefined
  if (path === undefined) return undefined
  return RAW_PART.test(path) ? { role: 'receive', checks: inside(path) } : 'a raw stream written anywhere but a new .part file'
}

/**
 * A recognised command: the role it needs (or `also` another), the checks, and for a delete of
 * subvolumes, that a receive key may still do it when each one is an unfinished receive.
 */
type Match = {
  readonly role: Role; readonly checks: readonly Check[]; readonly also?: Role; readonly unfinished?: readonly string[]
  /** the block driver's chunk scan: the word of the matched argv that names the helper, which the filter runs as itself (never that word) */
  readonly selfAt?: number
} | string

/**
 * The block driver's point-in-time copy of an image, made beside it and removed after the read:
 * `.IMAGE.bbackup-VOLUME-UUID` (source.ts's copyPrefix and a random uuid).
 */
const FREEZE_COPY = /^\.(.+)\.bbackup-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const DIGITS = /^(0|[1-9]\d{0,18})$/

/** `cp --reflink=always -- IMAGE COPY`: the copy is a freeze copy of that image, in its directory */
const freezeCopy = (image: string, copy: string): Match =>
  posix.dirname(copy) === posix.dirname(image) && FREEZE_COPY.exec(posix.basename(copy))?.[1] === posix.basename(image)
    ? { role: 'send', checks: inside(image, copy) }
    : `a copy of ${JSON.stringify(image)} that is not the block driver's freeze copy beside it`

/** `HELPER block-scan --protocol`, and spawned `HELPER block-scan --chunk-size N --size N -- IMAGE` (the parent's hashes on stdin) */
const blockScan = (args: readonly string[], spawned: boolean): Match | undefined => {
  if (!spawned) return same(args, ['block-scan', '--protocol']) ? { role: 'list', checks: [], selfAt: 0 } : undefined
  const [verb, chunkFlag, chunk, sizeFlag, size, dashes, image] = args
  if (args.length !== 7 || verb !== 'block-scan' || chunkFlag !== '--chunk-size' || sizeFlag !== '--size' || dashes !== '--' || !DIGITS.test(chunk ?? '') || !DIGITS.test(size ?? '')) return undefined
  return { role: 'send', checks: inside(image ?? ''), selfAt: 0 }
}

const inside = (...paths: readonly string[]): Check[] => paths.map((path) => ({ kind: 'inside', path }))
const same = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i])

/** whether a normalized absolute path is one of the roots or below one */
export const insideRoots = (path: string, roots: readonly string[]): boolean => roots.some((root) => path === root || path.startsWith(root === '/' ? '/' : `${root}/`))

/** a path as bbackup sends it: absolute, with no `.` or `..` component and no NUL */
const badPath = (path: string): string | undefined => {
  if (!path.startsWith('/')) return `the relative path ${JSON.stringify(path)} (bbackup sends absolute paths)`
  if (path.split('/').some((c) => c === '..' || c === '.')) return `the path ${JSON.stringify(path)}, which has a . or .. component`
  return undefined
}

/** the btrfs commands the driver sends, by their fixed words; the rest are paths */
const btrfs = (args: readonly string[]): Match | undefined => {
  const [sub, verb] = args
  if (same(args, ['--version'])) return { role: 'list', checks: [] }
  if (sub === 'subvolume' && verb === 'show' && args.length === 3) return { role: 'list', checks: inside(args[2] as string) }
  if (sub === 'filesystem' && verb === 'sync' && args.length === 3) return { role: 'receive', also: 'delete', checks: inside(args[2] as string) }
  // list --sizes: the subvolumes' exclusive bytes
  if (sub === 'filesystem' && verb === 'du' && args.length > 5 && same(args.slice(2, 5), ['-s', '--raw', '--'])) return { role: 'list', checks: inside(...args.slice(5)) }
  if (sub === 'subvolume' && verb === 'snapshot') {
    if (args[2] === '-r' && args.length === 5) return { role: 'send', checks: inside(args[3] as string, args[4] as string) }
    // a writable copy of a received backup, for a restore
    if (args.length === 4 && !(args[2] as string).startsWith('-')) return { role: 'receive', checks: inside(args[2] as string, args[3] as string) }
  }
  if (sub === 'subvolume' && verb === 'delete' && args[2] === '--commit-after' && args.length > 3) {
    const paths = args.slice(3)
    return { role: 'delete', checks: inside(...paths), unfinished: paths }
  }
  // btrfs receive [-e] DIR: -e ends it at the stream's end marker
  if (sub === 'receive' && args.length === 2) return { role: 'receive', checks: inside(verb as string) }
  if (sub === 'receive' && verb === '-e' && args.length === 3) return { role: 'receive', checks: inside(args[2] as string) }
  if (sub === 'send') {
    // btrfs send -q [--proto N] [--compressed-data] [--no-data] [-p PARENT] [-c CLONE]... SNAPSHOT (--no-data: what `diff` reads)
    const paths: string[] = []
    let i = 1
    if (args[i] !== '-q') return undefined
    for (i = 2; i < args.length - 1; i++) {
      const a = args[i] as string
      if (a === '--proto' && /^[12]$/.test(args[i + 1] ?? '')) i++
      else if (a === '--compressed-data' || a === '--no-data') continue
      else if ((a === '-p' || a === '-c') && args[i + 1] !== undefined) paths.push(args[++i] as string)
      else return `the btrfs send option ${JSON.stringify(a)}, which bbackup-remote does not allow`
    }
    if (i !== args.length - 1) return 'btrfs send without a snapshot'
    return { role: 'send', checks: inside(...paths, args[i] as string) }
  }
  return undefined
}

const match = (argv: readonly string[], spawned: boolean): Match | undefined => {
  const [program, ...args] = argv
  if (spawned) {
    // a stream filter (zstd around the command) runs what a spawn may run, four words further on
    if (program === 'sh' && args[0] === '-c' && FILTER_TEXTS.has(args[1] ?? '') && args[2] === 'sh') {
      const inner = match(args.slice(3), true)
      return typeof inner === 'object' && inner.selfAt !== undefined ? { ...inner, selfAt: inner.selfAt + 4 } : inner
    }
    // only the long-running transfers are started through the pid wrapper
    if (program === 'btrfs' && (args[0] === 'send' || args[0] === 'receive')) return btrfs(args)
    // a raw target's stream file: written (mode 0600) into a new `.part` file, read out for a restore
    if (program === 'sh' && args[0] === '-c' && args[1] === PRIVATE_WRITER && args[2] === 'sh') return rawWriter(args.slice(3))
    if ((program === 'zstd' && same(args.slice(0, 2), ['-dcq', '--']) && args.length === 3) || (program === 'cat' && args[0] === '--' && args.length === 2)) {
      return { role: 'send', checks: inside(args[args.length - 1] as string) }
    }
    // a block source's frozen image, streamed as it is, or scanned by the helper there
    if (program === 'head' && args.length === 4 && args[0] === '-c' && DIGITS.test(args[1] ?? '') && args[2] === '--') return { role: 'send', checks: inside(args[3] as string) }
    return args[0] === 'block-scan' ? blockScan(args, true) : undefined
  }
  if (args[0] === 'block-scan') return blockScan(args, false)
  switch (program) {
    case 'true':
      return { role: 'list', checks: [] }
    case 'btrfs':
      return btrfs(args)
    case 'rsync': {
      if (same(args, ['--version'])) return { role: 'list', checks: [] }
      const request = parseRsyncServer(args)
      if (typeof request === 'string') return request
      const checks = inside(...request.paths, ...request.optionPaths)
      if (request.sender) return request.deletes ? { role: 'delete', checks } : { role: 'send', checks }
      // a receive may clean up inside an unfinished copy (`NAME.partial`), never in a published backup
      const intoPartial = request.paths.length === 1 && /\.partial\/?$/.test(request.paths[0] as string)
      return request.deletes && !intoPartial ? { role: 'delete', checks } : { role: 'receive', checks }
    }
    case 'zstd':
      return same(args, ['--version']) ? { role: 'list', checks: [] } : undefined
    case 'stat':
      // the filesystem's type, or what kind of file a path is, a symbolic link followed (and a block source's size)
      if (args.length === 5 && (same(args.slice(0, 4), ['-L', '-c', '%F:%s', '--']) || same(args.slice(0, 4), ['-L', '-c', '%F', '--']))) return { role: 'list', checks: inside(args[4] as string) }
      return args.length === 4 && same(args.slice(0, 3), ['-f', '-c', '%T']) ? { role: 'list', checks: inside(args[3] as string) } : undefined
    case 'blockdev':
      // a block source's size
      return args.length === 2 && args[0] === '--getsize64' ? { role: 'list', checks: inside(args[1] as string) } : undefined
    case 'sync':
      // a filesystem's (rsync), or a raw target's stream file
      return args.length === 2 && (args[0] === '-f' || args[0] === '--') ? { role: 'receive', checks: inside(args[1] as string) } : undefined
    case 'df':
      // the free space where the backups go (status, doctor)
      return args.length === 3 && same(args.slice(0, 2), ['-Pk', '--']) ? { role: 'list', checks: inside(args[2] as string) } : undefined
    case 'du':
      // list --sizes: rsync backups, as rsnapshot du counts them
      return args.length > 3 && same(args.slice(0, 3), ['-s', '-B1', '--']) ? { role: 'list', checks: inside(...args.slice(3)) } : undefined
    case 'sha256sum':
      return args.length === 2 && args[0] === '--' ? { role: 'list', checks: inside(args[1] as string) } : undefined
    case 'chmod':
      // a raw target's directory that bbackup made: its owner's only
      return args.length === 2 && args[0] === '700' ? { role: 'receive', checks: inside(args[1] as string) } : undefined
    case 'rm':
      if (args.length === 4 && same(args.slice(0, 3), ['-rf', '--one-file-system', '--'])) return { role: 'delete', checks: inside(args[3] as string) }
      // a raw target's pruned streams and their sidecars
      return args.length > 2 && same(args.slice(0, 2), ['-f', '--']) && args.slice(2).every((a) => RAW_FILE.test(a)) ? { role: 'delete', checks: inside(...args.slice(2)) } : undefined
    case 'cp':
      // a block source frozen for its read: a reflink copy beside the image
      if (args.length === 4 && same(args.slice(0, 2), ['--reflink=always', '--'])) return freezeCopy(args[2] as string, args[3] as string)
      // a restore's copy out of a backup
      return args.length === 5 && same(args.slice(0, 3), ['-a', '--reflink=auto', '--']) ? { role: 'receive', checks: inside(args[3] as string, args[4] as string) } : undefined
    case 'kill': {
      const pid = args[3] ?? ''
      return args.length === 4 && args[0] === '-s' && /^(TERM|INT|PIPE|KILL)$/.test(args[1] ?? '') && args[2] === '--' && /^[1-9]\d{0,9}$/.test(pid)
        ? { role: 'list', checks: [{ kind: 'started-here', pid: Number(pid) }] }
        : undefined
    }
    case 'sh': {
      // under sudo, a program its rule does not name: that program, as if sent alone
      if (args[0] === '-c' && args[1] === AS_ROOT && args[2] === 'sh') {
        const inner = args[3] === 'sh' ? undefined : match(args.slice(3), false)
        return typeof inner === 'object' && inner.selfAt !== undefined ? { ...inner, selfAt: inner.selfAt + 4 } : inner
      }
      const name = args[0] === '-c' && args[2] === 'sh' ? SCRIPT_BY_TEXT.get(args[1] ?? '') : undefined
      if (name === undefined) return undefined
      const operands = args.slice(3)
      if (name === 'each') return each(operands)
      if (operands.length !== SCRIPT_ARGS[name]) return `the ${name} script with ${operands.length} arguments`
      // a receive key removes the raw stream it could not finish (its `.part` file)
      if (name === 'remove' && RAW_PART.test(operands[0] ?? '')) return { role: 'delete', also: 'receive', checks: inside(...operands) }
      // a send key removes the freeze copy it made of a block source (or one a killed run left)
      if (name === 'remove' && FREEZE_COPY.test(posix.basename(operands[0] ?? ''))) return { role: 'delete', also: 'send', checks: inside(...operands) }
      // a symlink's target is its content (`latest` -> a backup's name), not a path that is opened
      return { ...SCRIPT_ROLES[name], checks: inside(...(name === 'symlink' ? operands.slice(1) : operands)) }
    }
    default:
      return undefined
  }
}

/** a request in a refusal: a script by its name and operands, a command by its first words */
const label = (argv: readonly string[]): string => {
  if (argv[0] === 'sh' && argv[1] === '-c' && argv[2] === AS_ROOT && argv[3] === 'sh') return label(argv.slice(4))
  const name = argv[0] === 'sh' && argv[1] === '-c' ? SCRIPT_BY_TEXT.get(argv[2] ?? '') : undefined
  return JSON.stringify(name === undefined ? argv.slice(0, 3).join(' ') : [name, ...argv.slice(4)].join(' '))
}

/**
 * Whether a request (an argv from {@link splitCommand}) may run under this policy, and what must
 * still be checked on the host first. A pure function of the request: the table of commands is
 * exactly what bbackup's btrfs and rsync drivers send, with every path absolute.
 * @example
 * decide(['btrfs', 'receive', '/srv/backups/home'], { roles: new Set(['receive']), roots: ['/srv/backups'], sudo: false })
 * // { allowed: true, role: 'receive', argv: [...], checks: [{ kind: 'inside', path: '/srv/backups/home' }] }
 */
export const decide = (request: readonly string[], policy: FilterPolicy): Decision => {
  let argv = request
  const sudo = same(argv.slice(0, 3), ['sudo', '-n', '--']) ? argv.slice(0, 3) : same(argv.slice(0, 2), ['sudo', '-n']) ? argv.slice(0, 2) : []
  if (sudo.length > 0) {
    if (!policy.sudo) return { allowed: false, reason: 'sudo, which this key may not use (add --sudo to the forced command)' }
    argv = argv.slice(sudo.length)
  }
  const spawned = argv[0] === 'sh' && argv[1] === '-c' && argv[2] === SPAWN_WRAPPER && argv[3] === 'sh'
  const m = match(spawned ? argv.slice(4) : argv, spawned)
  if (m === undefined) return { allowed: false, reason: `the command ${label(argv)}, which is not one that bbackup sends` }
  if (typeof m === 'string') return { allowed: false, reason: m }
  if (m.selfAt !== undefined && sudo.length > 0) return { allowed: false, reason: 'the block scan through sudo: let the key\'s user read the image (or log in as the user who may), without --ssh-sudo' }
  let checks = m.checks
  if (!policy.roles.has(m.role) && m.role !== 'list' && !(m.also !== undefined && policy.roles.has(m.also))) {
    // a receive key cleans up after its own interrupted receive, and deletes nothing else
    if (m.unfinished !== undefined && policy.roles.has('receive')) checks = [...checks, ...m.unfinished.map((path): Check => ({ kind: 'unfinished-receive', path }))]
    else return { allowed: false, reason: `${label(spawned ? argv.slice(4) : argv)}, which needs the ${m.role} role (this key has ${[...policy.roles].join(', ')})` }
  }
  for (const c of checks) {
    if (c.kind !== 'inside') continue
    const bad = badPath(c.path)
    if (bad !== undefined) return { allowed: false, reason: bad }
    if (!insideRoots(posix.normalize(c.path), policy.roots)) {
      return { allowed: false, reason: `the path ${JSON.stringify(c.path)}, which is outside ${policy.roots.join(', ')}` }
    }
  }
  return { allowed: true, argv: request, role: m.role, checks, ...(m.selfAt === undefined ? {} : { selfAt: (spawned ? 4 : 0) + m.selfAt }) }
}
