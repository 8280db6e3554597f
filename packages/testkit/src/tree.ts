import { createHash } from 'node:crypto'
import { lstat, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'

/** Writes files (path → content) under `root`, creating directories as needed. */
export const writeTree = async (root: string, files: Readonly<Record<string, string | Buffer>>): Promise<void> => {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true })
    await writeFile(join(root, path), content)
  }
}

/**
 * Every entry under `root` with a sha256 of its content (files), its target (links) and its mode:
 * two trees with equal manifests hold the same data.
 */
export const treeManifest = async (root: string): Promise<Record<string, string>> => {
  const out: Record<string, string> = {}
  const walk = async (dir: string): Promise<void> => {
    for (const entry of (await readdir(dir)).sort()) {
      const path = join(dir, entry)
      const s = await lstat(path)
      const key = relative(root, path)
      if (s.isSymbolicLink()) out[key] = `link:${await readlink(path)}`
      else if (s.isDirectory()) {
        out[key] = `dir:${(s.mode & 0o7777).toString(8)}`
        await walk(path)
      } else out[key] = `file:${(s.mode & 0o7777).toString(8)}:${createHash('sha256').update(await readFile(path)).digest('hex')}`
    }
  }
  await walk(root)
  return out
}
