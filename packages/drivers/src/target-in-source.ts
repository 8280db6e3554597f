import { realpath } from 'node:fs/promises'
import { posix } from 'node:path'
import type { Transport } from '@bb/core'

/**
 * Where the target lies in the source, both on this host: its path relative to the source (`''`:
 * the source itself), or undefined when it is not inside (or either is on another host). Compared
 * as the paths really are (symlinks followed) where they exist.
 * @example
 * await targetInSource(localTransport('/'), localTransport('/backups')) // 'backups'
 */
export const targetInSource = async (source: Transport, target: Transport): Promise<string | undefined> =>
  (source.location.kind !== 'local' || target.location.kind !== 'local' ? undefined : pathIn(source.location.path, target.location.path))

/** Where `inner` lies in `outer`, paths on this host: relative path (`''`: the same place), or undefined when outside. Symlinks followed where the paths exist. */
export const pathIn = async (outer: string, inner: string): Promise<string | undefined> => {
  const real = async (path: string): Promise<string> => realpath(path).catch(() => posix.resolve(path))
  const relative = posix.relative(await real(outer), await real(inner))
  return relative === '' || (relative !== '..' && !relative.startsWith('../') && !posix.isAbsolute(relative)) ? relative : undefined
}
