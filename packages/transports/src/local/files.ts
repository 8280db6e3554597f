import { randomBytes } from 'node:crypto'
import { constants, promises as fs } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { ResultAsync } from 'neverthrow'
import { ioError, type DirEntry, type EntryStat, type TransportError } from '@bb/core'

const wrap = <T>(operation: string, path: string, body: () => Promise<T>): ResultAsync<T, TransportError> =>
  ResultAsync.fromPromise(body(), ioError(operation, path))

/**
 * Test hook for reliability scenario 20: `BBACKUP_TEST_CRASH_AT=<point>` kills the process at that
 * point of an atomic write, as a power cut would.
 */
const crashPoint = (point: string): void => {
  if (process.env.BBACKUP_TEST_CRASH_AT === point) process.kill(process.pid, 'SIGKILL')
}

const fsyncDirectory = async (directory: string): Promise<void> => {
  const handle = await fs.open(directory, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** A name in the same directory for a temporary file: rename(2) from it is atomic. */
export const tempNameBeside = (path: string): string => join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)

/** Writes `data` to a new file at a temporary name beside `path`, fsynced; returns that name. */
export const writeTempBeside = async (path: string, data: string): Promise<string> => {
  const temp = tempNameBeside(path)
  const handle = await fs.open(temp, 'wx', 0o644)
  try {
    await handle.writeFile(data)
    crashPoint('after-tmp-write')
    await handle.sync()
  } catch (e) {
    await handle.close()
    await fs.rm(temp, { force: true })
    throw e
  }
  await handle.close()
  return temp
}

/** temp file, fsync, rename, fsync directory: a crash leaves the old content or the new. */
export const writeFileAtomic = (path: string, data: string): ResultAsync<void, TransportError> =>
  wrap('write', path, async () => {
    const temp = await writeTempBeside(path, data)
    crashPoint('before-rename')
    try {
      await fs.rename(temp, path)
    } catch (e) {
      await fs.rm(temp, { force: true })
      throw e
    }
    crashPoint('after-rename-before-dirfsync')
    await fsyncDirectory(dirname(path))
  })

export const readFile = (path: string): ResultAsync<string | undefined, TransportError> =>
  wrap('read', path, async () => {
    try {
      return await fs.readFile(path, 'utf8')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw e
    }
  })

const kindOf = (s: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): EntryStat['kind'] =>
  s.isSymbolicLink() ? 'symlink' : s.isDirectory() ? 'directory' : s.isFile() ? 'file' : 'other'

export const stat = (path: string): ResultAsync<EntryStat | undefined, TransportError> =>
  wrap('stat', path, async () => {
    try {
      const s = await fs.lstat(path)
      return { kind: kindOf(s), size: s.size, mtime: s.mtime, device: s.dev, inode: s.ino }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw e
    }
  })

export const list = (directory: string): ResultAsync<DirEntry[], TransportError> =>
  wrap('list', directory, async () => (await fs.readdir(directory, { withFileTypes: true })).map((d) => ({ name: d.name, kind: kindOf(d) })))

/**
 * The mode of the directories bbackup makes (targets, their `.bbackup`, the state): others may read,
 * never write, under any umask. Node's default, 0777, left that to the umask: under `umask 0` (a
 * service manager's or a container's) anyone could have replaced a backup or a journal.
 */
export const DIRECTORY_MODE = 0o755

export const mkdir = (path: string, options: { readonly recursive?: boolean } = {}): ResultAsync<void, TransportError> =>
  wrap('create', path, async () => {
    try {
      await fs.mkdir(path, { recursive: options.recursive ?? false, mode: DIRECTORY_MODE })
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'EEXIST') return
      if (code !== 'ENOENT' || options.recursive !== true) throw e
      // Node's recursive mkdir says ENOENT also where the parent that exists is read-only (EROFS: a
      // read-only subvolume or mount): the first missing directory, made alone, tells the cause
      let missing = path
      while (dirname(missing) !== missing && !(await exists(dirname(missing)))) missing = dirname(missing)
      if (dirname(missing) === missing) throw e
      // there after all (a dangling symlink on the way): the first answer stands
      await fs.mkdir(missing, { mode: DIRECTORY_MODE }).catch((alone: unknown) => {
        throw (alone as NodeJS.ErrnoException).code === 'EEXIST' ? e : alone
      })
      await fs.mkdir(path, { recursive: true, mode: DIRECTORY_MODE })
    }
  })

const exists = (path: string): Promise<boolean> => fs.access(path).then(() => true, () => false)

/** fsync of a directory, after a change to its entries made by another process (`mv` under sudo) */
export const syncDirectory = (directory: string): ResultAsync<void, TransportError> => wrap('sync', directory, () => fsyncDirectory(directory))

export const rename = (from: string, to: string): ResultAsync<void, TransportError> =>
  wrap('rename', from, async () => {
    await fs.rename(from, to)
    await fsyncDirectory(dirname(to))
  })

export const symlink = (target: string, path: string): ResultAsync<void, TransportError> =>
  wrap('link', path, async () => {
    const temp = tempNameBeside(path)
    await fs.symlink(target, temp)
    try {
      await fs.rename(temp, path)
    } catch (e) {
      await fs.rm(temp, { force: true })
      throw e
    }
    await fsyncDirectory(dirname(path))
  })

export const readlink = (path: string): ResultAsync<string | undefined, TransportError> =>
  wrap('read link', path, async () => {
    try {
      return await fs.readlink(path)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'EINVAL') return undefined
      throw e
    }
  })

export const remove = (path: string, options: { readonly recursive?: boolean } = {}): ResultAsync<void, TransportError> =>
  wrap('remove', path, () => fs.rm(path, { recursive: options.recursive ?? false, force: true }))
