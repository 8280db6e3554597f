import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { mountLoopFilesystem, requireTools, startSshd, writeTree, type LoopFilesystem, type Sshd } from '@bb/testkit'
import { runCli } from './helpers.js'

/** snapper without its D-Bus daemon: the command does the work itself, as root */
const snapper = (config: string, ...args: string[]): string => execFileSync('snapper', ['--no-dbus', '-c', config, ...args], { encoding: 'utf8' })

/** the name bbackup gives the snapshot it takes over: the source's name and snapper's date (UTC) */
const nameOf = (infoXml: string): string => {
  const date = /<date>(\d{4}-\d\d-\d\d) (\d\d):(\d\d):(\d\d)<\/date>/.exec(infoXml)
  if (date === null) throw new Error(`no date in ${infoXml}`)
  return `home.${date[1]}T${date[2]}${date[3]}${date[4]}Z`
}

/**
 * Each test: a loop-mounted btrfs with the subvolume `home` (a.txt: "one") that snapper manages by
 * a config of the test's own (snapper keeps it in /etc/snapper/configs and /etc/default/snapper),
 * removed again after the test.
 */
const withSnapper = (): { readonly dir: () => string; readonly config: string } => {
  let fs: LoopFilesystem | undefined
  const config = `bbackup-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    execFileSync('btrfs', ['subvolume', 'create', join(fs.mountPoint, 'home')])
    await writeTree(join(fs.mountPoint, 'home'), { 'a.txt': 'one\n' })
    snapper(config, 'create-config', join(fs.mountPoint, 'home'))
  })
  afterEach(async () => {
    try {
      snapper(config, 'delete-config')
    } catch {
      // (snapper cannot delete a config whose subvolume is gone: its two records are removed by hand)
      rmSync(join('/etc/snapper/configs', config), { force: true })
      const defaults = '/etc/default/snapper'
      if (existsSync(defaults)) writeFileSync(defaults, readFileSync(defaults, 'utf8').replace(/^SNAPPER_CONFIGS="([^"]*)"/m, (_, names: string) => `SNAPPER_CONFIGS="${names.split(' ').filter((n) => n !== config).join(' ')}"`))
    } finally {
      await fs?.cleanup()
    }
  })
  return {
    dir: () => {
      if (fs === undefined) throw new Error('no filesystem: beforeEach failed')
      return fs.mountPoint
    },
    config,
  }
}

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'snapper'], { root: true }))('bbackup --snapper: the snapshots snapper takes, sent', () => {
  const setup = withSnapper()
  const config = setup.config
  let dir: string
  beforeEach(() => {
    dir = setup.dir()
  })
  const info = (n: number): string => readFileSync(join(dir, 'home/.snapshots', String(n), 'info.xml'), 'utf8')
  const run = (...more: string[]) => runCli(['run', 'home', 'backup', '--snapper', '--state-dir', 'state', ...more], dir)

  it("sends snapper's newest snapshot, never the live source; takes none when snapper took none; prunes only what it took over, to the newest", async () => {
    snapper(config, 'create', '-d', 'first')
    await writeFile(join(dir, 'home/a.txt'), 'live\n')
    const first = await run()
    const one = nameOf(info(1))
    expect(first).toMatchObject({ code: 0, stdout: expect.stringContaining(`backup: ${one} full;`) })
    // the backup is snapper's snapshot 1, not the source as it is now; snapper's .snapshots is not warned of as left out
    expect(readFileSync(join(dir, 'backup', one, 'a.txt'), 'utf8')).toBe('one\n')
    expect(first.stdout).not.toContain('warning')
    expect(first.stderr).toContain(`snapshot ${one} (of snapper's snapshot 1 "first")`)

    // nothing new from snapper: no snapshot of the live source, nothing sent
    const again = await run()
    expect(again).toMatchObject({ code: 0, stderr: expect.stringContaining('no new snapshot: the source has no snapshot newer than the last one taken over') })
    expect(await readdir(join(dir, 'home/.bbackup-snapshots'))).toEqual([one])
    expect(await readdir(join(dir, 'backup'))).toEqual([one])

    await new Promise((resolve) => setTimeout(resolve, 1100))
    snapper(config, 'create', '-d', 'second')
    const two = nameOf(info(2))
    const second = await run('--json')
    expect(JSON.parse(second.stdout)).toMatchObject({ targets: [{ ok: true, sent: [{ snapshot: two, mode: 'incremental', parent: one }] }] })
    expect(readFileSync(join(dir, 'backup', two, 'a.txt'), 'utf8')).toBe('live\n')
    // of the snapshots taken over, the newest is kept (snapper keeps the history); snapper's own are all there
    expect(await readdir(join(dir, 'home/.bbackup-snapshots'))).toEqual([two])
    expect((await readdir(join(dir, 'home/.snapshots'))).sort()).toEqual(['1', '2'])

    // snapper's cleanup deletes its snapshot 2: the one taken over of it is still this job's, the next parent, and pruned after
    snapper(config, 'delete', '2')
    await writeFile(join(dir, 'home/a.txt'), 'three\n')
    await new Promise((resolve) => setTimeout(resolve, 1100))
    // (snapper gives the next snapshot the number after the highest there: 2 again)
    const three = nameOf(info(Number(snapper(config, 'create', '-p', '-d', 'third'))))
    const third = await run('--json')
    expect(JSON.parse(third.stdout)).toMatchObject({ targets: [{ ok: true, sent: [{ snapshot: three, mode: 'incremental', parent: two }] }] })
    expect(await readdir(join(dir, 'home/.bbackup-snapshots'))).toEqual([three])
    expect((await readdir(join(dir, 'backup'))).sort()).toEqual([one, two, three])
    expect(readFileSync(join(dir, 'backup', three, 'a.txt'), 'utf8')).toBe('three\n')
  })

  it('a source without snapper snapshots is refused with how to set snapper up; --snapper on a directory names the btrfs setting (exit 2)', async () => {
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'plain')])
    const none = await runCli(['run', 'plain', 'backup', '--snapper', '--state-dir', 'state'], dir)
    expect(none).toMatchObject({ code: 1, stderr: expect.stringContaining(`${join(dir, 'plain')} has no snapper snapshots: ${join(dir, 'plain/.snapshots')} does not exist`) })
    expect(none.stderr).toContain('snapper -c NAME create-config')
    expect(existsSync(join(dir, 'backup')) ? await readdir(join(dir, 'backup')) : []).toEqual([])
    await writeTree(join(dir, 'docs'), { 'b.txt': 'b\n' })
    const rsync = await runCli(['run', 'docs', 'copy', '--snapper', '--state-dir', 'state2'], dir)
    expect(rsync).toMatchObject({ code: 2, stderr: expect.stringContaining('--snapper (snapper): a btrfs setting, but') })
  })

  it("without --snapper, bbackup's own snapshots are not put among snapper's in .snapshots (run, dry run, snapshot: exit 2 with both ways out); a folder of their own works; a chain already there carries on", async () => {
    snapper(config, 'create', '-d', 'first')
    const refused = `${join(dir, 'home/.snapshots')} is snapper's snapshot folder (its snapshot 1 is there)`
    for (const args of [['run', 'home', 'backup'], ['run', '-n', 'home', 'backup'], ['snapshot', 'home']]) {
      const r = await runCli([...args, '--state-dir', 'state'], dir)
      expect(r, args.join(' ')).toMatchObject({ code: 2, stderr: expect.stringContaining(refused) })
      expect(r.stderr).toContain('--snapper')
      expect(r.stderr).toContain('--snapshot-folder .bbackup-snapshots')
    }
    expect(await readdir(join(dir, 'home/.snapshots'))).toEqual(['1'])
    expect(existsSync(join(dir, 'backup')) ? await readdir(join(dir, 'backup')) : []).toEqual([])

    const apart = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--snapshot-folder', '.bbackup-snapshots'], dir)
    expect(apart).toMatchObject({ code: 0, stdout: expect.stringContaining(' full;') })
    expect(await readdir(join(dir, 'home/.bbackup-snapshots'))).toHaveLength(1)

    // a chain of the job's in snapper's folder already (an older bbackup put it there): the job goes on with it
    execFileSync('btrfs', ['subvolume', 'snapshot', '-r', join(dir, 'home'), join(dir, 'home/.snapshots/home.2026-01-01T000000Z')])
    const chained = await runCli(['run', 'home', 'other', '--state-dir', 'state2'], dir)
    expect(chained).toMatchObject({ code: 0 })
    const ours = (await readdir(join(dir, 'home/.snapshots'))).filter((n) => n.startsWith('home.'))
    expect(ours).toHaveLength(2)
    // (snapper deletes its config's folder only when nothing else is in it)
    for (const name of ours) execFileSync('btrfs', ['subvolume', 'delete', join(dir, 'home/.snapshots', name)])
  })

  it('snapper = true in a config job: the same, and list sees the snapshot taken over', async () => {
    snapper(config, 'create', '-d', 'cron')
    await writeFile(join(dir, 'bbackup.toml'), `state_dir = "state"\n[jobs.home]\nsource = "home"\ntargets = ["backup"]\nsnapper = true\n`)
    expect(await runCli(['run', '-c', 'bbackup.toml', '-q'], dir)).toMatchObject({ code: 0 })
    const one = nameOf(info(1))
    expect(await readdir(join(dir, 'backup'))).toEqual([one])
    const listed = await runCli(['list', '-c', 'bbackup.toml'], dir)
    expect(listed.stdout).toContain(`${join(dir, 'home')} (source): 1 snapshot\n  ${one}\n`)
  })
})

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'snapper', 'sshd', 'ssh', 'ssh-keygen'], { root: true }))('bbackup --snapper from another host', () => {
  const setup = withSnapper()
  let sshd: Sshd
  beforeAll(async () => {
    sshd = await startSshd()
  })
  afterAll(async () => {
    await sshd?.stop()
  })

  it("a pull: snapper's newest snapshot on the host is taken over there and received here, incrementally the next time, over one login each", async () => {
    const dir = setup.dir()
    const ssh = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile]
    const pull = async () => {
      const before = await sshd.logins()
      const r = await runCli(['run', `ssh://root@127.0.0.1:${sshd.port}${join(dir, 'home')}`, join(dir, 'pulled'), '--snapper', '--state-dir', 'state', '--json', ...ssh], dir)
      expect(r.code, r.stdout + r.stderr).toBe(0)
      expect(await sshd.logins() - before).toBe(1)
      return JSON.parse(r.stdout) as unknown
    }
    snapper(setup.config, 'create', '-d', 'first')
    await writeFile(join(dir, 'home/a.txt'), 'two\n')
    const one = nameOf(readFileSync(join(dir, 'home/.snapshots/1/info.xml'), 'utf8'))
    expect(await pull()).toMatchObject({ targets: [{ ok: true, route: 'pull', sent: [{ snapshot: one, mode: 'full' }] }] })
    expect(readFileSync(join(dir, 'pulled', one, 'a.txt'), 'utf8')).toBe('one\n')
    await new Promise((resolve) => setTimeout(resolve, 1100))
    snapper(setup.config, 'create', '-d', 'second')
    const two = nameOf(readFileSync(join(dir, 'home/.snapshots/2/info.xml'), 'utf8'))
    expect(await pull()).toMatchObject({ targets: [{ ok: true, sent: [{ snapshot: two, mode: 'incremental', parent: one }] }] })
    expect(readFileSync(join(dir, 'pulled', two, 'a.txt'), 'utf8')).toBe('two\n')
    expect(await readdir(join(dir, 'home/.bbackup-snapshots'))).toEqual([two])
  })
})
