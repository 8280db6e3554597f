import { posix } from 'node:path'

/**
 * rsync's server-side options that a client may send, as rsync 3.5.0's `support/rrsync` lists
 * them (reference/reliability.md §2.1), minus what a restricted backup key must not get:
 * `-s` (arguments sent where they cannot be checked), `-L`/`-k`/`-K` (follow symlinks out of the
 * allowed directories), `--log-file`, `--files-from`, batch files, devices, `--daemon`.
 */
const SHORT = 'ACDEHIJNORSUWXbcdgilmnopqrtuvxyz'
const SHORT_BUNDLE = new RegExp(`^-(?=.)[${SHORT}]*(e\\d*\\.\\w*)?$`)
const SHORT_NUMBER = /^-[@B]\d+$/

/** long options without a value */
const FLAGS = new Set([
  'append', 'copy-unsafe-links', 'delay-updates', 'delete', 'delete-after', 'delete-before', 'delete-delay', 'delete-during', 'delete-excluded',
  'delete-missing-args', 'existing', 'fake-super', 'force', 'from0', 'fsync', 'fuzzy', 'group', 'hard-links', 'ignore-errors', 'ignore-existing',
  'ignore-missing-args', 'ignore-times', 'inplace', 'links', 'list-only', 'mkpath', 'msgs2stderr', 'munge-links', 'new-compress', 'no-W',
  'no-implied-dirs', 'no-msgs2stderr', 'no-r', 'no-relative', 'no-specials', 'numeric-ids', 'old-compress', 'one-file-system', 'open-noatime',
  'owner', 'partial', 'perms', 'preallocate', 'recursive', 'remove-sent-files', 'remove-source-files', 'safe-links', 'sender', 'size-only',
  'specials', 'stats', 'super', 'times', 'use-qsort',
])
/** long options whose value is not a path */
const VALUES = new Set([
  'block-size', 'bwlimit', 'checksum-choice', 'checksum-seed', 'compress-choice', 'compress-level', 'compress-threads', 'debug', 'groupmap', 'iconv',
  'info', 'log-format', 'max-alloc', 'max-delete', 'max-size', 'min-size', 'modify-window', 'skip-compress', 'stderr', 'suffix', 'timeout', 'usermap',
])
/** long options whose value is a directory, relative to the destination when not absolute */
const PATHS = new Set(['backup-dir', 'compare-dest', 'copy-dest', 'link-dest', 'partial-dir', 'temp-dir'])

export interface RsyncServerRequest {
  readonly sender: boolean
  /** the paths after `.`, as given */
  readonly paths: readonly string[]
  /** the directories that path-valued options name, resolved against the destination */
  readonly optionPaths: readonly string[]
  /** `--delete*` or `--remove*`: the request removes files */
  readonly deletes: boolean
}

/**
 * Reads the arguments of `rsync --server [--sender] OPTIONS . PATH...` (what an rsync client
 * asks the remote side to run) against the allow-list; a string is the reason for a refusal.
 */
export const parseRsyncServer = (args: readonly string[]): RsyncServerRequest | string => {
  if (args[0] !== '--server') return 'rsync without --server first'
  const sender = args[1] === '--sender'
  const optionValues: string[] = []
  let deletes = false
  let i = sender ? 2 : 1
  for (; i < args.length; i++) {
    const arg = args[i] as string
    if (arg === '.') break
    if (SHORT_BUNDLE.test(arg) || SHORT_NUMBER.test(arg)) continue
    const long = /^--([^=]+)(?:=(.*))?$/s.exec(arg)
    if (long === null) return `the rsync option ${JSON.stringify(arg)}, which bbackup-remote does not allow`
    const name = long[1] as string
    if (name.startsWith('delete') || name.startsWith('remove')) deletes = true
    if (FLAGS.has(name)) {
      if (long[2] !== undefined) return `a value for the rsync option --${name}`
      if (name === 'sender' && !sender) return '--sender anywhere but right after --server'
      continue
    }
    if (!VALUES.has(name) && !PATHS.has(name)) return `the rsync option --${name}, which bbackup-remote does not allow`
    const value = long[2] ?? args[++i]
    if (value === undefined) return `no value for the rsync option --${name}`
    if (PATHS.has(name)) optionValues.push(value)
  }
  if (args[i] !== '.') return 'an rsync server command without its "." argument'
  const paths = args.slice(i + 1)
  if (paths.length === 0) return 'an rsync server command without a path'
  const destination = paths[paths.length - 1] as string
  return { sender, paths, optionPaths: optionValues.map((v) => posix.resolve(destination, v)), deletes }
}
