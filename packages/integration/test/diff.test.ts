import { appendFile, chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { backup, diff, type SnapshotDiff } from '@bb/core'
import { mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { at, btrfs, btrfsJob, ok, rsyncJob, runCli } from './helpers.js'

/** a path whose last part is `latin1` as Latin-1 bytes (`caf\xe9`: not UTF-8), as an old archive's names are */
const latin1 = (dir: string, name: string): Buffer => Buffer.concat([Buffer.from(`${dir}/`), Buffer.from(name, 'latin1')])

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount'], { root: true }))('diff: what changed between two snapshots (btrbk diff)', () => {
  let fs: LoopFilesystem
  let home: string
  let disk: string
  let state: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    home = join(fs.mountPoint, 'home')
    disk = join(fs.mountPoint, 'disk')
    state = join(fs.mountPoint, 'state')
    btrfs('subvolume', 'create', home)
    await mkdir(disk)
    await writeTree(home, {
      'notes.txt': 'first\n', 'thesis/ch1.tex': 'chapter one\n', 'old/a': 'a\n', 'old/deep/b': 'b\n',
      'keys/id': 'secret\n', 'one': '1\n', 'two': '2\n', 'draft.md': 'draft\n',
    })
    await writeFile(latin1(home, 'caf\xe9'), 'latin-1\n')
    await writeFile(latin1(home, 'caf\xe8'), 'latin-1\n')
  })
  afterEach(async () => {
    await fs.cleanup()
  })

  const job = () => btrfsJob({ source: home, targets: [disk], state })

  /** two backups of home with the changes of a day between them */
  const twoBackups = async (): Promise<void> => {
    ok(await backup(job(), { now: at('2026-11-24T00:15:00Z') }))
    await appendFile(join(home, 'notes.txt'), 'second\n'.repeat(1000))
    await writeFile(join(home, 'new file\nwith a newline'), 'new\n')
    await rm(join(home, 'old'), { recursive: true })
    await rename(join(home, 'thesis'), join(home, 'dissertation'))
    await chmod(join(home, 'keys/id'), 0o600)
    // swapped names, and an editor's save through a new file
    await rename(join(home, 'one'), join(home, 'tmp'))
    await rename(join(home, 'two'), join(home, 'one'))
    await rename(join(home, 'tmp'), join(home, 'two'))
    await writeFile(join(home, 'draft.md.swp'), 'final\n')
    await rename(join(home, 'draft.md.swp'), join(home, 'draft.md'))
    // names that are not UTF-8 stay apart (each as its bytes), where a lossy decoding would make them one
    await appendFile(latin1(home, 'caf\xe9'), 'more\n')
    await rename(latin1(home, 'caf\xe8'), latin1(home, 'na\xefve'))
    ok(await backup(job(), { now: at('2026-11-25T00:15:00Z') }))
  }

  const expected = [
    { change: 'modified', path: 'caf\udce9' },
    { change: 'renamed', path: 'dissertation', from: 'thesis' },
    { change: 'modified', path: 'draft.md' },
    { change: 'metadata', path: 'keys/id' },
    { change: 'renamed', path: 'na\udcefve', from: 'caf\udce8' },
    { change: 'added', path: 'new file\nwith a newline' },
    { change: 'modified', path: 'notes.txt' },
    { change: 'deleted', path: 'old' },
    { change: 'deleted', path: 'old/a' },
    { change: 'deleted', path: 'old/deep' },
    { change: 'deleted', path: 'old/deep/b' },
    { change: 'renamed', path: 'one', from: 'two' },
    { change: 'renamed', path: 'two', from: 'one' },
  ]
  const changes = (d: SnapshotDiff) => d.entries.map(({ bytes: _, ...e }) => e)

  it('names what was added, deleted, renamed and modified, at the target and in the source snapshot folder alike', async () => {
    await twoBackups()
    const atTarget = ok(await diff(job()))
    expect(atTarget).toMatchObject({ from: 'home.2026-11-24T001500Z', to: 'home.2026-11-25T001500Z', at: disk })
    expect(changes(atTarget)).toEqual(expected)
    expect(atTarget.counts).toEqual({ added: 1, deleted: 4, modified: 3, renamed: 4, metadata: 1 })
    // the appended 7000 bytes, in whole extents
    expect(atTarget.entries.find((e) => e.path === 'notes.txt')?.bytes).toBeGreaterThanOrEqual(7000)
    const atSource = ok(await diff(job(), { at: job().source, side: 'source' }))
    expect(changes(atSource)).toEqual(expected)
    // the other way round: what the older one has that the newer has not
    const back = ok(await diff(job(), { from: 'home.2026-11-25T001500Z', to: 'home.2026-11-24T001500Z' }))
    expect(back.counts).toMatchObject({ added: 4, deleted: 1, renamed: 4 })
  })

  it('bbackup diff: the newest against the one before, a line per change; --json; mistakes said', async () => {
    await twoBackups()
    const r = await runCli(['diff', disk], fs.mountPoint)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const lines = r.stdout.trimEnd().split('\n')
    expect(lines[0]).toBe(`${disk}: home.2026-11-24T001500Z -> home.2026-11-25T001500Z`)
    expect(lines).toContain('R thesis -> dissertation')
    expect(lines).toContain('+ new file\\nwith a newline   (4 B)')
    expect(lines).toContain('- old/deep/b')
    expect(lines).toContain('m keys/id   (mode, owner or attributes)')
    // a byte that is not UTF-8 is shown as the byte it is
    expect(lines).toContain('R caf\\xe8 -> na\\xefve')
    expect(lines.some((l) => l.startsWith('M caf\\xe9   ('))).toBe(true)
    expect(lines.at(-1)).toMatch(/^13 changes: 1 added, 4 deleted, 4 renamed, 3 modified, 1 metadata only; .* of file data$/)
    // one name: what that backup brought; the oldest has nothing before it
    const one = await runCli(['diff', disk, 'home.2026-11-25T001500Z', '--json'], fs.mountPoint)
    expect(one.code).toBe(0)
    expect(changes(JSON.parse(one.stdout) as SnapshotDiff)).toEqual(expected)
    const oldest = await runCli(['diff', disk, 'home.2026-11-24T001500Z'], fs.mountPoint)
    expect(oldest.code).not.toBe(0)
    expect(oldest.stderr).toContain('home.2026-11-24T001500Z is the oldest complete backup of its source')
    const three = await runCli(['diff', disk, 'a', 'b', 'c'], fs.mountPoint)
    expect(three.code).not.toBe(0)
    expect(three.stderr).toContain('diff compares two snapshots, and was given 3')
    const missing = await runCli(['diff', disk, 'home.2027-01-01T000000Z', 'home.2026-11-24T001500Z'], fs.mountPoint)
    expect(missing.stderr).toContain('no complete backup named home.2027-01-01T000000Z')
    const nothing = await runCli(['diff', state], fs.mountPoint)
    expect(nothing.code).not.toBe(0)
    expect(nothing.stderr).toContain(`${state} holds no backups (nor is it a btrfs subvolume with snapshots): there is nothing to compare`)
    expect(nothing.stderr).toContain('bbackup diff /mnt/backup/home')
    // the source itself: its snapshot folder
    const source = await runCli(['diff', home], fs.mountPoint)
    expect(source.code).toBe(0)
    expect(source.stdout).toContain('R two -> one')
  })

  it('rsync backups: what rsync would change to make the older into the newer (no renames: deleted and added); a driver without diff refused', async () => {
    const scratch = await mkdtemp(join(tmpdir(), 'bbackup-diff-'))
    try {
      const src = join(scratch, 'src')
      const dst = join(scratch, 'dst')
      await writeTree(src, { 'a.txt': 'a\n', 'b.txt': 'b\n', 'docs/old.txt': 'old\n', 'key': 'k\n' })
      await writeFile(latin1(src, 'caf\xe9'), 'x\n')
      await writeFile(latin1(src, 'caf\xe8'), 'x\n')
      const rsync = rsyncJob({ source: src, targets: [dst], state: join(scratch, 'state') })
      ok(await backup(rsync, { now: at('2026-11-24T00:15:00Z') }))
      await writeFile(join(src, 'a.txt'), 'a, longer now\n')
      await rename(join(src, 'b.txt'), join(src, 'c.txt'))
      await rm(join(src, 'docs'), { recursive: true })
      await writeFile(join(src, 'new\nname'), 'n\n')
      await chmod(join(src, 'key'), 0o600)
      await writeFile(latin1(src, 'caf\xe9'), 'xy\n')
      await rm(latin1(src, 'caf\xe8'))
      ok(await backup(rsync, { now: at('2026-11-25T00:15:00Z') }))
      const d = ok(await diff(rsync))
      expect(d).toMatchObject({ from: '2026-11-24T001500Z', to: '2026-11-25T001500Z' })
      expect(d.entries).toEqual([
        { change: 'modified', path: 'a.txt', bytes: 14 },
        { change: 'deleted', path: 'b.txt' },
        { change: 'added', path: 'c.txt', bytes: 2 },
        { change: 'deleted', path: 'caf\udce8' },
        { change: 'modified', path: 'caf\udce9', bytes: 3 },
        { change: 'deleted', path: 'docs' },
        { change: 'deleted', path: 'docs/old.txt' },
        { change: 'metadata', path: 'key' },
        { change: 'added', path: 'new\nname', bytes: 2 },
      ])
      const cli = await runCli(['diff', dst], scratch)
      expect(cli.code, cli.stderr).toBe(0)
      expect(cli.stdout).toContain('+ new\\nname   (2 B)')
      expect(cli.stdout).toContain('\n- caf\\xe8\nM caf\\xe9   (3 B written)\n')
      // what diff shows cannot be given to restore --path (arguments reach Node as UTF-8): the hint says what to restore instead
      for (const path of ['caf\\xe9', Buffer.from('caf\xe9', 'latin1').toString()]) {
        const restore = await runCli(['restore', dst, 'latest', join(scratch, 'out'), '--path', path], scratch)
        expect(restore).toMatchObject({ code: 1, stderr: expect.stringContaining('cannot be given to --path: restore the directory that holds it (all of the backup: no --path)') as unknown })
      }
      const inside = await runCli(['restore', dst, 'latest', join(scratch, 'out'), '--path', 'docs/caf\\xe9/x'], scratch)
      expect(inside.stderr).toContain('restore the directory that holds it (--path docs)')
      const { diff: _, ...withoutDiff } = rsync.driver
      const e = (await diff({ ...rsync, driver: withoutDiff }))._unsafeUnwrapErr()
      expect(e.code).toBe('INVALID_OPTIONS')
      expect(e.message).toBe('the rsync driver cannot tell what changed between two backups')
    } finally {
      await rm(scratch, { recursive: true, force: true })
    }
  })
})
