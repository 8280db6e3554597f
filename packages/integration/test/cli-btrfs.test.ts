import { execFileSync } from 'node:child_process'
import { readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { addJournalEntry } from '@bb/core'
import { mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { runCli } from './helpers.js'

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount'], { root: true }))('bbackup command line with btrfs', () => {
  let fs: LoopFilesystem
  let dir: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    dir = fs.mountPoint
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n' })
  })
  afterEach(() => fs.cleanup())

  it('detects a subvolume, names snapshots after the source, sends in full then incrementally', async () => {
    const first = await runCli(['run', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(first).toMatchObject({ code: 0, stdout: expect.stringMatching(/backup: home\.\d{4}-\d\d-\d\dT\d{6}Z full; .* sent/) })
    await writeFile(join(dir, 'home/a.txt'), 'changed\n')
    const second = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    expect(JSON.parse(second.stdout)).toMatchObject({ driver: 'btrfs', targets: [{ ok: true, mode: 'incremental' }] })
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(2)
    const listed = await runCli(['list', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(listed.stdout).toMatch(/\(source\): 2 backups[\s\S]*\(target\): 2 backups/)
    // a dry run prints the pipeline it would run, and changes nothing
    const dry = await runCli(['run', '-n', 'home', 'backup', '--state-dir', 'state'], dir)
    expect(dry.stdout).toMatch(/\$ btrfs send -q .*-p .*\| btrfs receive /)
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(2)
  })

  it("takes btrfs-backup's flags: --no-transfer, then --no-snapshot; -N keeps N source snapshots", async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-transfer', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    expect((await readdir(join(dir, 'backup')).catch(() => [])).filter((n) => n.startsWith('home.'))).toHaveLength(0)
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--no-snapshot', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
    expect((await readdir(join(dir, 'backup'))).filter((n) => n.startsWith('home.'))).toHaveLength(1)
    for (let i = 0; i < 2; i++) expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-N', '1', '-q'], dir)).code).toBe(0)
    expect(await readdir(join(dir, 'home/.snapshots'))).toHaveLength(1)
  })

  it('--locked-dests retries a target only the journal names; --remove-locks forgets it', async () => {
    expect((await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q'], dir)).code).toBe(0)
    const snapshot = (await readdir(join(dir, 'home/.snapshots')))[0]!
    // a run to a second target was interrupted before anything reached it
    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'other'), snapshot, partialPath: join(dir, 'other', snapshot), startedAt: new Date().toISOString(),
    })
    const retried = await runCli(['transfer', 'home', '--locked-dests', '--state-dir', 'state', '--json'], dir)
    expect(retried.code, retried.stdout + retried.stderr).toBe(0)
    expect(JSON.parse(retried.stdout).targets.map((t: { target: string }) => t.target)).toEqual([join(dir, 'other')])
    expect(await readdir(join(dir, 'other'))).toEqual([snapshot])

    await addJournalEntry(localTransport(join(dir, 'state')), join(dir, 'state/journal.json'), {
      target: join(dir, 'backup'), snapshot: 'home.2001-01-01T000000Z', partialPath: join(dir, 'backup/home.2001-01-01T000000Z'), startedAt: new Date().toISOString(),
    })
    const forgot = await runCli(['transfer', 'home', 'backup', '--remove-locks', '--state-dir', 'state'], dir)
    expect(forgot).toMatchObject({ code: 0, stderr: expect.stringContaining('forgot the pending transfer of home.2001-01-01T000000Z') })
    const status = await runCli(['status', 'home', 'backup', '--state-dir', 'state', '--json'], dir)
    expect(JSON.parse(status.stdout).pending).toEqual([])
  })

  it('refuses a plain directory as a btrfs source with the fix in the hint (exit 1)', async () => {
    const r = await runCli(['run', '--driver', 'btrfs', '/tmp', join(dir, 'backup'), '--state-dir', 'state'], dir)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/not on a btrfs filesystem[\s\S]*--driver rsync[\s\S]*SOURCE_NOT_SUBVOLUME/)
  })
})
