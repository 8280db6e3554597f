import { readdir, readFile, stat, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, treeManifest, writeTree, type TempDir } from '@bb/testkit'
import { exists, runCli } from './helpers.js'

const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => /^\d{4}-/.test(n)).sort()
/** a file's access and modification times, to give another the same (rsync's quick check then links it) */
const times = async (path: string): Promise<[Date, Date]> => {
  const s = await stat(path)
  return [s.atime, s.mtime]
}

describe.runIf(requireTools(['rsync']))("bbackup system-backup (rsync-system-backup's command line)", () => {
  let tmp: TempDir
  beforeEach(async () => {
    tmp = await makeTempDir('cli-system-backup')
    await writeTree(join(tmp.path, 'src'), { 'etc/hosts': '127.0.0.1 localhost\n', 'var/log/syslog.log': 'log\n', 'home/u/notes.txt': 'n\n' })
  })
  afterEach(() => tmp?.cleanup())

  it('copies with the system excludes, one filesystem and -x; rotates by rsync-system-backup\'s policy; -r alone rotates only', async () => {
    const first = await runCli(['system-backup', 'src', 'dst', '-x', '*.log', '--state-dir', 'state', '--json'], tmp.path)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    const report = JSON.parse(first.stdout) as { targets: { ok: boolean; mode: string; commands: string[][] }[] }
    expect(report.targets[0]).toMatchObject({ ok: true, mode: 'full' })
    const argv = report.targets[0]?.commands[0] ?? []
    for (const path of ['/dev/', '/proc/', '/sys/', '/run/', '/tmp/', '/mnt/', '/media/', '/var/cache/', '/var/tmp/', '/home/*/.cache/']) expect(argv).toContain(`--filter=-/ ${path}`)
    expect(argv).toContain('--one-file-system')
    expect(argv).toContain('--exclude=*.log')
    const [one] = await backupsIn(join(tmp.path, 'dst'))
    expect(await readFile(join(tmp.path, 'dst', one ?? '', 'home/u/notes.txt'), 'utf8')).toBe('n\n')
    expect(await exists(join(tmp.path, 'dst', one ?? '', 'var/log/syslog.log'))).toBe(false)

    // the rotation it applied: rsync-system-backup's, by default
    const rotated = await runCli(['system-backup', '-r', 'src', 'dst', '--state-dir', 'state', '--json'], tmp.path)
    expect(rotated.code, rotated.stderr).toBe(0)
    const decisions = (JSON.parse(rotated.stdout) as { decisions: { name: string; keep: boolean; reasons: string[] }[] }[])[0]?.decisions ?? []
    expect(decisions).toEqual([expect.objectContaining({ name: one, keep: true, reasons: expect.arrayContaining([expect.stringMatching(/hourly/)]) })])
    expect(await backupsIn(join(tmp.path, 'dst'))).toEqual([one])
  })

  it("takes over rsync-system-backup's directory: its timestamped backups adopted (listed, linked against), its latest/ mirror left as it is, with a warning", async () => {
    // what rsync-system-backup leaves: a latest/ mirror and a cp -al copy of it per backup
    const dst = join(tmp.path, 'dst')
    await writeTree(join(dst, 'latest'), { 'etc/hosts': '127.0.0.1 localhost\n', 'home/u/notes.txt': 'n\n', 'mirror-only.txt': 'm\n' })
    await writeTree(join(dst, '2024-03-13 01:02:03'), { 'etc/hosts': '127.0.0.1 localhost\n', 'home/u/notes.txt': 'n\n' })
    await utimes(join(dst, '2024-03-13 01:02:03', 'home/u/notes.txt'), ...await times(join(tmp.path, 'src/home/u/notes.txt')))
    const mirror = await treeManifest(join(dst, 'latest'))
    // before the first run, the directory alone reads as one of backups
    expect(await runCli(['list', 'dst'], tmp.path)).toMatchObject({ code: 0, stdout: `${dst} (target): 1 backup\n  2024-03-13 01:02:03\n` })
    for (const round of [1, 2]) {
      const r = await runCli(['run', 'src', 'dst', '--state-dir', 'state', '--json'], tmp.path)
      expect(r.code, `round ${round}: ${r.stdout}${r.stderr}`).toBe(0)
      const target = (JSON.parse(r.stdout) as { targets: { ok: boolean; parent?: string; warnings: string[] }[] }).targets[0]
      expect(target).toMatchObject({ ok: true, warnings: [expect.stringContaining(`latest in ${dst} is a directory, not a link bbackup made (rsync-system-backup's mirror?): left as it is`)] })
      if (round === 1) expect(target?.parent).toBe('2024-03-13 01:02:03')
    }
    // -q (a cron job's) prints only errors and warnings: the warning still, on stderr
    const quiet = await runCli(['run', 'src', 'dst', '--state-dir', 'state', '-q'], tmp.path)
    expect(quiet).toMatchObject({ code: 0, stdout: '' })
    expect(quiet.stderr).toContain(`${dst}: warning: latest in ${dst} is a directory, not a link bbackup made`)
    expect(await treeManifest(join(dst, 'latest'))).toEqual(mirror)
    const made = (await backupsIn(dst)).filter((n) => n.includes('T'))
    expect(made).toHaveLength(3)
    // linked against the adopted backup: the unchanged file is one inode
    expect((await stat(join(dst, made[0] ?? '', 'home/u/notes.txt'))).ino).toBe((await stat(join(dst, '2024-03-13 01:02:03', 'home/u/notes.txt'))).ino)
  })

  it('refuses -s without -b and -b to a plain directory, writing nothing', async () => {
    const s = await runCli(['system-backup', '-s', 'src', 'dst', '--state-dir', 'state'], tmp.path)
    expect(s.code).toBe(2)
    expect(s.stderr).toContain('-s (the snapshot stage) without -b')
    const b = await runCli(['system-backup', '-b', 'src', 'dst', '--state-dir', 'state'], tmp.path)
    expect(b.code).toBe(2)
    expect(b.stderr).toContain('is not an rsync daemon module')
    expect(await exists(join(tmp.path, 'dst'))).toBe(false)
  })
})
