import { execFileSync } from 'node:child_process'
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem, type TempDir } from '@bb/testkit'
import { finished, runCli, spawnTs } from './helpers.js'

const show = (path: string): string => execFileSync('btrfs', ['subvolume', 'show', path], { encoding: 'utf8' })

/**
 * btrfs receive gives the copy the received uuid of what was sent, then makes it read-only: a
 * receive killed between the two (by strace's fault injection, at the ioctl that would make it
 * read-only) leaves a writable copy with that received uuid, neither unfinished by its form nor
 * complete. The run that knows it sent that snapshot deletes it and sends again.
 */
describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'strace'], { root: true }))('a btrfs receive killed at its last step', () => {
  let fs: LoopFilesystem
  let tmp: TempDir
  let dir: string
  /** PATH with a `btrfs` whose receive is killed just before it makes the copy read-only */
  let cutPath: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    tmp = await makeTempDir('receive-cut')
    dir = fs.mountPoint
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n' })
    // how many ioctls a full receive makes up to the one that makes the copy read-only, on this btrfs-progs
    execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'probe')])
    await mkdir(join(dir, 'probed'))
    const log = join(tmp.path, 'ioctls')
    execFileSync('sh', ['-c', `btrfs send -q probe | strace -o "${log}" -e trace=ioctl btrfs receive -e probed`], { cwd: dir, stdio: 'ignore' })
    const ioctls = (await readFile(log, 'utf8')).split('\n').filter((l) => l.startsWith('ioctl('))
    const readOnly = ioctls.findIndex((l) => l.includes('BTRFS_IOC_SUBVOL_SETFLAGS')) + 1
    if (readOnly === 0) throw new Error(`no BTRFS_IOC_SUBVOL_SETFLAGS among the ioctls of btrfs receive:\n${ioctls.join('\n')}`)
    execFileSync('btrfs', ['subvolume', 'delete', join(dir, 'probed/probe'), join(dir, 'probe')], { stdio: 'ignore' })
    const real = execFileSync('sh', ['-c', 'command -v btrfs'], { encoding: 'utf8' }).trim()
    await mkdir(join(tmp.path, 'bin'))
    await writeFile(join(tmp.path, 'bin/btrfs'), [
      '#!/bin/sh',
      'if [ "$1" = receive ]; then',
      `  strace -o /dev/null -e trace=ioctl -e inject=ioctl:signal=SIGKILL:when=${readOnly} "${real}" "$@"`,
      '  status=$?',
      // the run that started it dies with it (kill -9): only the journal knows what it was receiving
      '  if [ -n "$KILL_RUN" ]; then kill -KILL "$PPID"; fi',
      '  exit $status',
      'fi',
      `exec "${real}" "$@"`,
      '',
    ].join('\n'))
    await chmod(join(tmp.path, 'bin/btrfs'), 0o755)
    cutPath = `${join(tmp.path, 'bin')}:${process.env.PATH ?? ''}`
  })
  afterEach(async () => {
    await fs.cleanup()
    await tmp.cleanup()
  })

  const cutRun = (env: Record<string, string>) => finished(spawnTs('fixtures/cli.ts', ['run', join(dir, 'home'), join(dir, 'backup'), '--state-dir', join(dir, 'state')], { env: { PATH: cutPath, ...env } }))
  const writableWithReceivedUuid = (path: string): void => {
    const shown = show(path)
    expect(shown).toMatch(/Received UUID:\s+[0-9a-f-]{36}\n/)
    expect(shown).toMatch(/Flags:\s+-\n/)
  }

  /** the next run, with the real btrfs: it sends the source's newest snapshot in full, received whole */
  const sentAgain = async (): Promise<{ recovered: unknown[] }> => {
    const next = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    expect(next.code).toBe(0)
    const report = (JSON.parse(next.stdout) as { targets: { ok: boolean; recovered: unknown[]; sent: { snapshot: string; mode: string }[] }[] }).targets[0]!
    expect(report).toMatchObject({ ok: true, sent: [{ mode: 'full' }] })
    expect(show(join(dir, 'backup', report.sent[0]!.snapshot))).toMatch(/Flags:\s+readonly\n/)
    return report
  }

  it('the run whose receive it was deletes the copy at once; the next run sends the snapshot again', async () => {
    const cut = await cutRun({})
    expect(cut.code).toBe(10)
    expect(cut.stdout).toContain('FAILED')
    // nothing half-made is left at the target
    expect(await readdir(join(dir, 'backup'))).toEqual([])
    await sentAgain()
  })

  it('killed with its run: the journal names the copy; the next run deletes it and sends the snapshot again', async () => {
    const cut = await cutRun({ KILL_RUN: '1' })
    expect(cut.signal).toBe('SIGKILL')
    const [snapshot] = await readdir(join(dir, 'home/.snapshots'))
    writableWithReceivedUuid(join(dir, 'backup', snapshot!))
    const status = await runCli(['status', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(status.stdout).toContain(`pending transfer: ${snapshot} → ${join(dir, 'backup')}`)
    const report = await sentAgain()
    expect(report.recovered).toEqual([{ action: 'removed', snapshot }])
    expect(await readdir(join(dir, 'backup'))).not.toContain(snapshot)
    expect(JSON.parse(await readFile(join(dir, 'state/journal.json'), 'utf8'))).toMatchObject({ entries: [] })
  })
})
