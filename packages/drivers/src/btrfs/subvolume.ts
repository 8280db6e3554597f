import { posix } from 'node:path'
import { err, ok, Result, ResultAsync } from 'neverthrow'
import { bbError, formatLocation, InternalError, type BbError, type SnapshotIdentity, type Transport } from '@bb/core'

/** What `btrfs subvolume show` says about one subvolume. */
export interface Subvolume extends SnapshotIdentity {
  readonly name: string
  readonly generation: number
  /** the generation it was made at (`Gen at creation`; not in a list): a snapshot's equals its source's generation until the source changes */
  readonly creationGeneration?: number
  /** its path from the filesystem's top level (the first line of `btrfs subvolume show`), where that was asked */
  readonly fsPath?: string
  /**
   * `Receive transid` (not in a list): set when a receive into it finished (btrfs receive's last
   * step records it), and again when its received uuid was cleared by hand; 0 in an unfinished
   * receive, whose writable snapshot of the parent starts with none
   */
  readonly receiveTransid?: number
}

/**
 * Parses `btrfs subvolume show` (btrfs-progs 5.x and 6.x print the same `Key: value` lines).
 * `-` means unset for the uuids.
 * @example
 * parseSubvolumeShow('home\n\tName: \t\thome\n\tUUID: \t\t\t5d8e…\n\tFlags: \t\t\treadonly\n')
 */
export const parseSubvolumeShow = (text: string): Subvolume | undefined => {
  const field = (key: string): string | undefined => {
    const m = new RegExp(`^\\s*${key}:\\s*(.*?)\\s*$`, 'm').exec(text)
    return m?.[1]
  }
  const uuid = field('UUID')
  if (uuid === undefined || uuid === '-') return undefined
  const set = (v: string | undefined): string | undefined => (v === undefined || v === '-' || v === '' ? undefined : v)
  const receivedUuid = set(field('Received UUID'))
  const parentUuid = set(field('Parent UUID'))
  const fsPath = text.split('\n')[0]?.trim()
  return {
    name: field('Name') ?? '',
    ...(fsPath === undefined || fsPath === '' ? {} : { fsPath }),
    uuid,
    ...(receivedUuid === undefined ? {} : { receivedUuid }),
    ...(parentUuid === undefined ? {} : { parentUuid }),
    readOnly: /\breadonly\b/.test(field('Flags') ?? ''),
    generation: Number(field('Generation') ?? 0),
    ...(field('Gen at creation') === undefined ? {} : { creationGeneration: Number(field('Gen at creation')) }),
    ...(field('Receive transid') === undefined ? {} : { receiveTransid: Number(field('Receive transid')) }),
  }
}

/** Why `btrfs subvolume show` found no subvolume at a path. */
export type NoSubvolume = 'missing' | 'not-a-subvolume' | 'not-btrfs'

/** The hint for running btrfs commands without root. */
export const NOT_ROOT_HINT =
  'btrfs needs root for this: run bbackup as root, or as this user with --sudo (config: sudo = true) and a sudoers rule for btrfs, whose exact line a run with --sudo and bbackup doctor print (docs/drivers/btrfs.md, "Running without root")'

/** Classifies a failed btrfs command from its stderr into the error a user can act on. */
export const btrfsFailure = (what: string, argv: readonly string[], exitCode: number, stderr: string): BbError => {
  const context = { argv: [...argv], exitCode, stderr }
  if (/Operation not permitted|Permission denied/.test(stderr)) return bbError('PERMISSION_DENIED', `${what}: permission denied`, NOT_ROOT_HINT, context)
  if (/Read-only file system/.test(stderr)) return bbError('IO_FAILED', `${what}: the filesystem is mounted read-only`, 'mount it read-write (mount -o remount,rw on its mount point), then run again', context)
  if (/No space left on device/.test(stderr)) return bbError('DISK_FULL', `${what}: no space left on the target`, 'free space there (delete old backups: bbackup prune), then run again: the unfinished copy is removed and sent again', context)
  const hint = stderr.trim() === '' ? 'it said nothing on stderr: run it by hand to see why (-v prints the command)' : 'see the end of stderr below'
  return bbError('COMMAND_FAILED', `${what} failed (exit ${exitCode})`, hint, context)
}

/**
 * `btrfs subvolume show PATH`: the subvolume, or why there is none. Any other failure (permission,
 * the tool) is an error.
 */
export const showSubvolume = (at: Transport, path: string, signal?: AbortSignal): ResultAsync<Subvolume | NoSubvolume, BbError> =>
  at.exec(showArgv(path), signal === undefined ? {} : { signal }).andThen((r) => readShow(path, r.exitCode, r.stdout, r.stderr))

const showArgv = (path: string): string[] => ['btrfs', 'subvolume', 'show', path]

/** `btrfs subvolume show PATH` as one command of an {@link Transport.execEach} batch. */
export const showInBatch = (path: string): { readonly argv: string[]; readonly read: (r: { readonly exitCode: number; readonly output: string }) => Result<Subvolume | NoSubvolume, BbError> } =>
  ({ argv: showArgv(path), read: (r) => readShow(path, r.exitCode, r.output, r.output) })

/** What a `btrfs subvolume show` that ended so says (stdout and stderr may be one text). */
const readShow = (path: string, exitCode: number, stdout: string, stderr: string): Result<Subvolume | NoSubvolume, BbError> => {
  const argv = showArgv(path)
  if (exitCode === 0) {
    const parsed = parseSubvolumeShow(stdout)
    return parsed === undefined
      ? err(bbError('COMMAND_FAILED', `could not read the output of btrfs subvolume show ${path}`, 'check that btrfs-progs is 5.0 or newer (btrfs --version)', { argv, stdout: stdout.slice(0, 2000) }))
      : ok(parsed)
  }
  if (/No such file or directory/.test(stderr)) return ok('missing' as const)
  if (/Not a Btrfs subvolume/i.test(stderr)) return ok('not-a-subvolume' as const)
  if (/Not a Btrfs filesystem/i.test(stderr)) return ok('not-btrfs' as const)
  return err(btrfsFailure(`btrfs subvolume show ${path}`, argv, exitCode, stderr))
}

/**
 * A received backup someone made writable (`btrfs property set -f PATH ro false` clears its
 * received uuid, and records that in its receive transid): writable, no received uuid, like an
 * unfinished receive, but its receive finished. Perhaps changed since, perhaps in use: never a
 * parent, never counted, never deleted.
 */
export const madeWritable = (s: Subvolume): boolean => !s.readOnly && s.receivedUuid === undefined && (s.receiveTransid ?? 0) > 0

/**
 * A receive that died midway: writable, no received uuid (btrbk's "garbled"; reference/btrfs.md
 * §3.1), and no receive ever finished in it (not {@link madeWritable}).
 */
export const isGarbled = (s: Subvolume): boolean => !s.readOnly && s.receivedUuid === undefined && !madeWritable(s)

/**
 * After a receive: what is at `path` (`btrfs subvolume show`), and `btrfs filesystem sync` of
 * `dir`, which commits it. On a host with {@link Transport.execEach} (ssh) both in one round trip;
 * here both at once. A commit of an incomplete copy harms nothing.
 */
export const showAndCommit = async (at: Transport, path: string, dir: string, signal?: AbortSignal): Promise<readonly [Result<Subvolume | NoSubvolume, BbError>, Result<{ readonly argv: readonly string[]; readonly exitCode: number; readonly stderr: string }, BbError>]> => {
  const syncArgv = ['btrfs', 'filesystem', 'sync', dir]
  const opts = signal === undefined ? {} : { signal }
  if (at.execEach !== undefined && at.location.kind !== 'local') {
    const show = showInBatch(path)
    const both = await at.execEach([show.argv, syncArgv], opts)
    if (both.isErr()) return [err(both.error), err(both.error)]
    const [shown, synced] = both.value
    if (shown === undefined || synced === undefined) throw new InternalError('execEach gave fewer results than commands')
    return [show.read(shown), ok({ argv: syncArgv, exitCode: synced.exitCode, stderr: synced.output })]
  }
  return Promise.all([showSubvolume(at, path, signal), at.exec(syncArgv, opts)] as const)
}

/** A complete received backup: read-only with a received uuid. */
export const isReceived = (s: Subvolume): boolean => s.readOnly && s.receivedUuid !== undefined

/** Restore never overwrites: the first of `paths` that exists at `to` is an ALREADY_EXISTS error. */
export const refuseExisting = async (to: Transport, paths: readonly string[]): Promise<Result<void, BbError>> => {
  for (const p of paths) {
    const there = await to.stat(p)
    if (there.isErr()) return err(there.error)
    if (there.value !== undefined) {
      const where = formatLocation({ ...to.location, path: p })
      return err(bbError('ALREADY_EXISTS', `${where} already exists; restore never overwrites`, 'restore into another directory, or move it away first', { path: where }))
    }
  }
  return ok(undefined)
}

/** One line of `btrfs subvolume list -o [-r] [-c] -u -q -R`: `path` is from the filesystem's top level; `creationGeneration` with `-c`. */
interface ListedSubvolume extends Omit<Subvolume, 'name' | 'readOnly'> {
  readonly id: number
  readonly path: string
}

const LIST_LINE = /^ID (\d+) gen (\d+) (?:cgen (\d+) )?top level \d+ parent_uuid (\S+)\s+received_uuid (\S+)\s+uuid (\S+) path (.+)$/

/**
 * Parses `btrfs subvolume list -o [-r] [-c] -u -q -R` (btrfs-progs 5.x and 6.x); `-` means unset.
 * @example
 * parseSubvolumeList('ID 258 gen 9 top level 5 parent_uuid - received_uuid 1cf5… uuid 5c51… path backup/home.2026-01-01T000000Z\n')
 */
export const parseSubvolumeList = (text: string): ListedSubvolume[] => text.split('\n').flatMap((line) => {
  const m = LIST_LINE.exec(line)
  if (m === null) return []
  const set = (v: string | undefined): string | undefined => (v === undefined || v === '-' ? undefined : v)
  const [, id, gen, cgen, parentUuid, receivedUuid, uuid, path] = m
  return [{
    id: Number(id), generation: Number(gen), ...(cgen === undefined ? {} : { creationGeneration: Number(cgen) }), uuid: uuid ?? '', path: path ?? '',
    ...(set(receivedUuid) === undefined ? {} : { receivedUuid: receivedUuid as string }), ...(set(parentUuid) === undefined ? {} : { parentUuid: parentUuid as string }),
  }]
})

/** `\040` and the other octal escapes of /proc/self/mountinfo */
const unescapeMountinfo = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

/**
 * The swap files in use under `dir`, from /proc/swaps (`Filename Type Size Used Priority`, names
 * escaped as in mountinfo). btrfs will not snapshot a subvolume that holds an active swap file.
 * @example
 * swapFilesIn('Filename\tType\tSize\tUsed\tPriority\n/home/swapfile file 65532 0 -2\n', '/home') // ['/home/swapfile']
 */
export const swapFilesIn = (procSwaps: string, dir: string): string[] =>
  procSwaps.split('\n').slice(1).flatMap((line) => {
    const [name, type] = line.trim().split(/\s+/)
    const path = name === undefined ? '' : unescapeMountinfo(name)
    return type === 'file' && path.startsWith(dir === '/' ? '/' : `${dir}/`) ? [path] : []
  })

/**
 * Where `dir` is inside its btrfs filesystem, from the top level (as `btrfs subvolume list` prints
 * paths): the deepest btrfs mount above it, its root (`/@data` for `subvol=@data`) and the rest of
 * the way down. Undefined when no btrfs mount holds it.
 * @example
 * pathInFilesystem('44 27 0:39 /@data /mnt rw - btrfs /dev/sdb rw\n', '/mnt/backups') // '@data/backups'
 */
export const pathInFilesystem = (mountinfo: string, dir: string): string | undefined => {
  const best = mountHolding(mountinfo, dir)
  if (best === undefined) return undefined
  return posix.join(best.root, posix.relative(best.mountPoint, dir)).replace(/^\/+/, '').replace(/^\.$/, '')
}

/**
 * Where a subvolume whose path from the top level is `fsPath` is seen through the btrfs mount that
 * holds `dir` (what `btrfs send -p` needs: a parent on the mount of the snapshot it sends).
 * Undefined when that mount does not show it (mounted with `subvol=` of another part of the tree).
 * @example
 * throughMountOf('44 27 0:39 /@pool /mnt rw - btrfs /dev/sdb rw\n', '/mnt/home/.snapshots', '@pool/home.2026-01-01T000000Z') // '/mnt/home.2026-01-01T000000Z'
 */
export const throughMountOf = (mountinfo: string, dir: string, fsPath: string): string | undefined => {
  const mount = mountHolding(mountinfo, dir)
  if (mount === undefined) return undefined
  const root = mount.root.replace(/^\/+/, '')
  const inside = posix.relative(root === '' ? '/' : `/${root}`, `/${fsPath.replace(/^\/+/, '')}`)
  return inside === '..' || inside.startsWith('../') ? undefined : posix.join(mount.mountPoint, inside)
}

/**
 * Whether the btrfs mount that holds `dir` compresses what is written (`compress` or
 * `compress-force` among its options): a `--compressed-data` stream from it is smaller than its data.
 * @example
 * compressedMount('44 27 0:39 / /home rw - btrfs /dev/sda2 rw,compress=zstd:1\n', '/home') // true
 */
export const compressedMount = (mountinfo: string, dir: string): boolean =>
  (mountHolding(mountinfo, dir)?.options ?? []).some((o) => /^compress(-force)?(=|$)/.test(o) && !/=no$/.test(o))

/** the deepest btrfs mount above `dir`: its mount point, the subvolume path it shows there (`/` for the top level), its filesystem's options */
const mountHolding = (mountinfo: string, dir: string): { readonly mountPoint: string; readonly root: string; readonly options: readonly string[] } | undefined => {
  let best: { readonly mountPoint: string; readonly root: string; readonly options: readonly string[] } | undefined
  for (const line of mountinfo.split('\n')) {
    const [fields, rest] = line.split(' - ')
    const parts = fields?.split(' ') ?? []
    const after = rest?.split(' ') ?? []
    if (after[0] !== 'btrfs' || parts.length < 5) continue
    const root = unescapeMountinfo(parts[3] ?? '')
    const mountPoint = unescapeMountinfo(parts[4] ?? '')
    const inside = dir === mountPoint || dir.startsWith(mountPoint === '/' ? '/' : `${mountPoint}/`)
    // the deepest mount point wins; of two at one place, the later one (mounted over the other)
    if (inside && (best === undefined || mountPoint.length >= best.mountPoint.length)) best = { mountPoint, root, options: (after[2] ?? '').split(',') }
  }
  return best
}

/** what `btrfs subvolume list -o -r -u -q -R` and /proc/self/mountinfo said (undefined: a failure) */
export interface SubvolumeLists {
  readonly readOnly: string | undefined
  readonly mountinfo: string | undefined
}

/**
 * The read-only subvolumes of `dir`'s filesystem and the mount table, where {@link readSubvolumes}
 * may use them (on this host, or one that runs whatever it is asked); undefined elsewhere. Never
 * fails: a list that could not be made is undefined, and left to `btrfs subvolume show`.
 */
export const listSubvolumes = async (at: Transport, dir: string, signal?: AbortSignal): Promise<SubvolumeLists | undefined> => {
  if (at.location.kind !== 'local' && at.unrestricted?.() !== true) return undefined
  const opts = signal === undefined ? {} : { signal }
  const list = ['btrfs', 'subvolume', 'list', '-o', '-r', '-u', '-q', '-R', dir]
  // both in one round trip where the transport can (ssh), else at once
  const [readOnly, mountinfo] = at.execEach !== undefined
    ? (await at.execEach([list, ['cat', '/proc/self/mountinfo']], opts)).match((rs) => rs.map((r) => (r.exitCode === 0 ? r.output : undefined)), () => [])
    : await Promise.all([
      at.exec(list, opts).match((r) => (r.exitCode === 0 ? r.stdout : undefined), () => undefined),
      at.readFile('/proc/self/mountinfo').unwrapOr(undefined),
    ])
  return { readOnly, mountinfo }
}

/** A subvolume nested in a source (a snapshot of the source leaves it out, a writable one being the data that is left out). */
export interface NestedSubvolume {
  /** its path inside the source */
  readonly path: string
  readonly uuid: string
  readonly readOnly: boolean
  /** the generation it was made at: a subvolume made after a snapshot has a greater one than the snapshot's */
  readonly creationGeneration: number
}

/**
 * The subvolumes nested in the subvolume `source` (`btrfs subvolume list -o -c`; the read-only ones,
 * snapshots and received backups, told by a second list), by their paths inside it, sorted: what a
 * snapshot of it leaves out. Undefined where the lists cannot be had or read (through a forced
 * command, which lists nothing beyond its directory; an old btrfs-progs; no permission).
 * @example
 * await nestedSubvolumes(localTransport('/home'), '/home') // [{ path: 'alice', readOnly: false, creationGeneration: 812, … }, …]
 */
export const nestedSubvolumes = async (at: Transport, source: string, signal?: AbortSignal): Promise<NestedSubvolume[] | undefined> => {
  if (at.location.kind !== 'local' && at.unrestricted?.() !== true) return undefined
  const all = ['btrfs', 'subvolume', 'list', '-o', '-c', '-u', '-q', '-R', source]
  // all of them, beside the read-only ones and the mount table as a listing of a folder has them
  const [listed, lists] = await Promise.all([
    at.exec(all, signal === undefined ? {} : { signal }).match((r) => (r.exitCode === 0 ? r.stdout : undefined), () => undefined),
    listSubvolumes(at, source, signal),
  ])
  const listedReadOnly = lists?.readOnly
  const mountinfo = lists?.mountinfo
  if (listed === undefined || listedReadOnly === undefined || mountinfo === undefined) return undefined
  const prefix = pathInFilesystem(mountinfo, source)
  if (prefix === undefined) return undefined
  const frozen = new Set(parseSubvolumeList(listedReadOnly).map((v) => v.id))
  return parseSubvolumeList(listed)
    .map((v) => ({ path: prefix === '' ? v.path : posix.relative(prefix, v.path), uuid: v.uuid, readOnly: frozen.has(v.id), creationGeneration: v.creationGeneration ?? 0 }))
    .filter((v) => v.path !== '' && !v.path.startsWith('..'))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
}

/**
 * The subvolumes among `names` in `dir`. On this host, and on another one that runs whatever it is
 * asked (`Transport.unrestricted`: a login shell), one `btrfs subvolume list` of the read-only
 * subvolumes (a fixed number of commands however many snapshots there are; btrbk asks two) matched
 * by their exact path from the top level; anything it does not settle (a writable subvolume: an
 * unfinished receive, a plain directory) by `btrfs subvolume show` each. Through a forced command
 * the list is not used (it names every subvolume beside `dir` on that filesystem, which a key
 * restricted to one directory should not learn): the shows go 64 to a round trip where the
 * transport can (`execEach`), else 8 at a time. `lists`: what {@link listSubvolumes} gave, when it
 * was asked for ahead of the names.
 */
export const readSubvolumes = (at: Transport, dir: string, names: readonly string[], signal?: AbortSignal, lists?: Promise<SubvolumeLists | undefined>): ResultAsync<ReadonlyMap<string, Subvolume | undefined>, BbError> =>
  new ResultAsync((async (): Promise<Result<ReadonlyMap<string, Subvolume | undefined>, BbError>> => {
    const found = new Map<string, Subvolume | undefined>()
    const opts = signal === undefined ? {} : { signal }
    const listed = names.length > 1 ? await (lists ?? listSubvolumes(at, dir, signal)) : undefined
    if (listed !== undefined) {
      const { readOnly, mountinfo } = listed
      const prefix = mountinfo === undefined ? undefined : pathInFilesystem(mountinfo, dir)
      // any doubt (an old btrfs-progs, no permission, a path through a symlink) leaves it to show
      if (prefix !== undefined && readOnly !== undefined) {
        const byPath = new Map(parseSubvolumeList(readOnly).map((s) => [s.path, s]))
        for (const name of names) {
          const s = byPath.get(prefix === '' ? name : `${prefix}/${name}`)
          if (s === undefined) continue
          const { id: _, path: __, ...identity } = s
          found.set(name, { ...identity, name, readOnly: true })
        }
      }
    }
    const rest = names.filter((n) => !found.has(n))
    // where the transport runs many commands in one round trip (ssh), 64 shows a trip; else 8 at a time
    const width = at.execEach !== undefined && rest.length > 1 ? 64 : 8
    for (let i = 0; i < rest.length; i += width) {
      const part = rest.slice(i, i + width)
      const shown = at.execEach !== undefined && part.length > 1
        ? await at.execEach(part.map((name) => showArgv(posix.join(dir, name))), opts)
          .andThen((results) => Result.combine(results.map((r, j) => showInBatch(posix.join(dir, part[j] ?? '')).read(r))))
        : await ResultAsync.combine(part.map((name) => showSubvolume(at, posix.join(dir, name), signal)))
      if (shown.isErr()) return err(shown.error)
      for (const [j, s] of shown.value.entries()) found.set(part[j] ?? '', typeof s === 'string' ? undefined : s)
    }
    return ok(found)
  })())
