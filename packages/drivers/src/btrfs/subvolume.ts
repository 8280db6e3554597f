import { err, ok, type Result, type ResultAsync } from 'neverthrow'
import { bbError, type BbError, type SnapshotIdentity, type Transport } from '@bb/core'

/** What `btrfs subvolume show` says about one subvolume. */
export interface Subvolume extends SnapshotIdentity {
  readonly name: string
  readonly generation: number
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
  return {
    name: field('Name') ?? '',
    uuid,
    ...(receivedUuid === undefined ? {} : { receivedUuid }),
    ...(parentUuid === undefined ? {} : { parentUuid }),
    readOnly: /\breadonly\b/.test(field('Flags') ?? ''),
    generation: Number(field('Generation') ?? 0),
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
  if (/No space left on device/.test(stderr)) return bbError('DISK_FULL', `${what}: no space left on the target`, 'free space there (delete old backups: bbackup prune), then run again: the unfinished copy is removed and sent again', context)
  return bbError('COMMAND_FAILED', `${what} failed (exit ${exitCode})`, 'see the end of stderr below', context)
}

/**
 * `btrfs subvolume show PATH`: the subvolume, or why there is none. Any other failure (permission,
 * the tool) is an error.
 */
export const showSubvolume = (at: Transport, path: string, signal?: AbortSignal): ResultAsync<Subvolume | NoSubvolume, BbError> => {
  const argv = ['btrfs', 'subvolume', 'show', path]
  return at.exec(argv, signal === undefined ? {} : { signal }).andThen((r) => {
    if (r.exitCode === 0) {
      const parsed = parseSubvolumeShow(r.stdout)
      return parsed === undefined
        ? err(bbError('COMMAND_FAILED', `could not read the output of btrfs subvolume show ${path}`, 'check that btrfs-progs is 5.0 or newer (btrfs --version)', { argv, stdout: r.stdout.slice(0, 2000) }))
        : ok(parsed)
    }
    if (/No such file or directory/.test(r.stderr)) return ok('missing' as const)
    if (/Not a Btrfs subvolume/i.test(r.stderr)) return ok('not-a-subvolume' as const)
    if (/Not a Btrfs filesystem/i.test(r.stderr)) return ok('not-btrfs' as const)
    return err(btrfsFailure(`btrfs subvolume show ${path}`, argv, r.exitCode, r.stderr))
  })
}

/** A receive that died midway: writable, no received uuid (btrbk's "garbled"; reference/btrfs.md §3.1). */
export const isGarbled = (s: Subvolume): boolean => !s.readOnly && s.receivedUuid === undefined

/** A complete received backup: read-only with a received uuid. */
export const isReceived = (s: Subvolume): boolean => s.readOnly && s.receivedUuid !== undefined

/** Restore never overwrites: the first of `paths` that exists at `to` is an ALREADY_EXISTS error. */
export const refuseExisting = async (to: Transport, paths: readonly string[]): Promise<Result<void, BbError>> => {
  for (const p of paths) {
    const there = await to.stat(p)
    if (there.isErr()) return err(there.error)
    if (there.value !== undefined) return err(bbError('ALREADY_EXISTS', `${p} already exists; restore never overwrites`, 'restore into another directory, or move it away first', { path: p }))
  }
  return ok(undefined)
}
