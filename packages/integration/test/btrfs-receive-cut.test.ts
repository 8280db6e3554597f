import { execFileSync } from 'node:child_process'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem, type TempDir } from '@bb/testkit'
import { finished, receiveCutBin, runCli, spawnTs } from './helpers.js'

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
    cutPath = `${await receiveCutBin(join(dir, 'home'), dir, tmp.path)}:${process.env.PATH ?? ''}`
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
