import type { DiffEntry } from '@bb/core'
import { SEND_COMMANDS as C, type SendCommand } from './send-stream.js'

/** a name in the snapshot being built from FROM to TO, as the stream's commands move it about */
interface Node {
  name: string
  parent: Node | undefined
  readonly children: Map<string, Node>
  /** its path in FROM; undefined for what FROM did not have */
  orig: string | undefined
  /** a name the stream made: a new file, directory, link, ... */
  created: boolean
  bytes: number
  content: boolean
  metadata: boolean
}

const join = (dir: string, name: string): string => (dir === '' ? name : `${dir}/${name}`)
const parts = (path: string): string[] => path.split('/').filter((p) => p !== '' && p !== '.')

const node = (name: string, parent: Node | undefined, orig: string | undefined, created: boolean): Node =>
  ({ name, parent, children: new Map(), orig, created, bytes: 0, content: false, metadata: false })

/**
 * What changed from one snapshot to another, read from the commands of `btrfs send --no-data -p FROM
 * TO`: names added, deleted, renamed (with where they were), files whose data changed (with the bytes
 * written) and names whose mode, owner or extended attributes changed. A name deleted and made anew
 * (an editor saving through a new file) is one modified file. A change of times alone is not one:
 * every directory whose entries changed has it (its entries are listed), and so does a nested
 * subvolume's stand-in directory whenever a snapshot is taken in it.
 */
export class StreamDiff {
  private readonly root = node('', undefined, '', false)
  /** paths in FROM that TO does not have */
  private readonly deleted = new Set<string>()
  /** the links made to a name, by the name: a link then an unlink of the old name is how send moves a file */
  private readonly links = new Map<Node, Node[]>()

  /** the name at `path` now, made (as it was in FROM) when no command has touched it yet */
  private at(path: string): Node {
    let here = this.root
    for (const name of parts(path)) {
      let next = here.children.get(name)
      if (next === undefined) {
        next = node(name, here, here.orig === undefined ? undefined : join(here.orig, name), false)
        here.children.set(name, next)
      }
      here = next
    }
    return here
  }

  /** takes `n` out of the tree; what FROM had there is deleted, unless a link made to it carries it on */
  private remove(n: Node): void {
    n.parent?.children.delete(n.name)
    n.parent = undefined
    const links = (this.links.get(n) ?? []).filter((l) => l.parent !== undefined)
    this.links.delete(n)
    // moved by link and unlink: the link of the same name if there is one (`mv dir/x other/x`), else the first
    const heir = links.find((l) => l.name === n.name) ?? links[0]
    if (heir !== undefined && n.orig !== undefined) {
      heir.orig = n.orig
      heir.created = false
      heir.content ||= n.content
      heir.bytes += n.bytes
      heir.metadata ||= n.metadata
      return
    }
    if (n.orig !== undefined && n.orig !== '') this.deleted.add(n.orig)
  }

  /** puts `n` at `path`, in place of what was there */
  private place(path: string, n: Node): void {
    const names = parts(path)
    const name = names.pop()
    if (name === undefined) return
    const dir = this.at(names.join('/'))
    const there = dir.children.get(name)
    if (there !== undefined && there !== n) this.remove(there)
    n.name = name
    n.parent = dir
    dir.children.set(name, n)
  }

  add(c: SendCommand): void {
    const path = c.path ?? ''
    switch (c.cmd) {
      case C.mkfile: case C.mkdir: case C.mknod: case C.mkfifo: case C.mksock: case C.symlink:
        this.place(path, node('', undefined, undefined, true))
        return
      case C.link: {
        const made = node('', undefined, undefined, true)
        if (c.pathLink !== undefined) {
          const target = this.at(c.pathLink)
          this.links.set(target, [...(this.links.get(target) ?? []), made])
        }
        this.place(path, made)
        return
      }
      case C.rename: {
        if (c.pathTo === undefined) return
        const n = this.at(path)
        n.parent?.children.delete(n.name)
        this.place(c.pathTo, n)
        return
      }
      case C.unlink: case C.rmdir:
        this.remove(this.at(path))
        return
      case C.setXattr: case C.removeXattr: case C.chmod: case C.chown: case C.setflags:
        this.at(path).metadata = true
        return
      case C.write: case C.clone: case C.updateExtent: case C.fallocate: case C.encodedWrite: case C.truncate: {
        const n = this.at(path)
        n.content = true
        n.bytes += c.length ?? 0
        return
      }
      default:
    }
  }

  /** the changes, by path */
  entries(): DiffEntry[] {
    const out = new Map<string, DiffEntry>()
    const visit = (n: Node, path: string): void => {
      for (const child of n.children.values()) visit(child, join(path, child.name))
      if (n === this.root) {
        if (n.metadata) out.set('.', { change: 'metadata', path: '.' })
        return
      }
      const expected = n.parent?.orig === undefined ? undefined : join(n.parent.orig, n.name)
      const bytes = n.content ? { bytes: n.bytes } : {}
      let entry: DiffEntry | undefined
      if (n.created) entry = { change: 'added', path, ...bytes }
      else if (n.orig !== expected && n.orig !== undefined) entry = { change: 'renamed', path, from: n.orig, ...bytes }
      else if (n.content) entry = { change: 'modified', path, ...bytes }
      else if (n.metadata) entry = { change: 'metadata', path }
      if (entry !== undefined) out.set(path, entry)
    }
    visit(this.root, '')
    for (const path of this.deleted) {
      const now = out.get(path)
      // deleted and made anew under the same name: replaced, what `diff` of the two trees calls modified
      if (now?.change === 'added') out.set(path, { change: 'modified', path, ...(now.bytes === undefined ? {} : { bytes: now.bytes }) })
      else if (now === undefined) out.set(path, { change: 'deleted', path })
      else out.set(`${path}\0deleted`, { change: 'deleted', path })
    }
    return [...out.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.change < b.change ? -1 : 1))
  }
}
