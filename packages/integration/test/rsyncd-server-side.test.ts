import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { childrenOf, makeTempDir, requireTools, startRsyncd, writeTree, type Rsyncd, type TempDir } from '@bb/testkit'
import { ROOT, runCli, waitFor } from './helpers.js'

const backupsIn = async (dir: string): Promise<string[]> => (await readdir(dir).catch(() => [])).filter((n) => /^\d{4}-/.test(n)).sort()
const markersIn = async (dir: string): Promise<string[]> => (await readdir(join(dir, '.bbackup')).catch(() => [])).filter((n) => n.endsWith('.partial')).sort()
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * rsync-system-backup's server-side mode against a real daemon: the module's pre-xfer and
 * post-xfer exec (printed by `bbackup doctor rsyncd --server-side`) run bbackup's own source
 * through tsx; clients send with `bbackup run -b`.
 */
describe.runIf(requireTools(['rsync'], { root: true }))('an rsync daemon whose post-xfer exec publishes and rotates (server-side mode)', () => {
  let tmp: TempDir
  let daemon: Rsyncd
  let hookLog: string
  let laptop: string
  beforeAll(async () => {
    tmp = await makeTempDir('rsyncd-server-side')
    hookLog = join(tmp.path, 'hook.log')
    const program = join(tmp.path, 'bbackup')
    // the hook's state (tickets, the prune's lock) in the fixture, its stderr in a log the test reads
    await writeFile(program, `#!/bin/sh\ncd ${ROOT} && exec ${process.execPath} --conditions=@bb/source --import tsx packages/cli/src/cli.ts "$@" --state-dir ${join(tmp.path, 'hook-state')} 2>>${hookLog}\n`)
    await chmod(program, 0o755)
    const modulePath = join(tmp.path, 'module')
    const secrets = join(tmp.path, 'rsyncd.secrets')
    const printed = await runCli(['doctor', 'rsyncd', '--server-side', '--program', program, '--keep-backups', '2', '--module', 'backups', '--path', modulePath, '--user', 'root', '--secrets-file', secrets], tmp.path)
    expect(printed.code, printed.stderr).toBe(0)
    expect(printed.stdout).toContain(`post-xfer exec = ${program} snapshot && ${program} prune --keep-backups '2'`)
    await mkdir(modulePath)
    await writeFile(secrets, 'root:server-side-pw\n', { mode: 0o600 })
    await writeFile(join(tmp.path, 'pw'), 'server-side-pw\n', { mode: 0o600 })
    daemon = await startRsyncd({ configText: printed.stdout })
    laptop = join(modulePath, 'laptop')
    await writeTree(join(tmp.path, 'home'), { 'a.txt': 'alpha\n', 'docs/b.txt': 'bravo\n', 'big.bin': Buffer.alloc(3 * 1024 * 1024, 7) })
  })
  afterAll(async () => {
    await daemon?.stop()
    await tmp?.cleanup()
  })

  const target = (): string => `rsync://root@127.0.0.1:${daemon.port}/backups/laptop`
  const run = (...more: string[]): ReturnType<typeof runCli> =>
    runCli(['run', 'home', target(), '-b', '--password-file', 'pw', '--state-dir', 'state', '--retries', '0', '--json', ...more], tmp.path)
  const published = (count: number, dir = laptop) => async (): Promise<boolean> => (await backupsIn(dir)).length >= count && (await markersIn(dir)).length === 0

  it('publishes each backup after its transfer, hard-linked to the previous one, and rotates by the policy', async () => {
    const first = await run()
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ targets: [{ ok: true, mode: 'full' }] })
    await waitFor(published(1), 20_000)
    const [one] = await backupsIn(laptop)
    const record = JSON.parse(await readFile(join(laptop, '.bbackup', `${one}.json`), 'utf8')) as Record<string, unknown>
    expect(record).toMatchObject({ health: 'ok', rsyncExit: 0, publishedBy: 'post-xfer exec' })
    await waitFor(async () => (await readFile(hookLog, 'utf8')).includes(`published ${laptop}/${one}`), 20_000)

    await pause(1100)
    await writeFile(join(tmp.path, 'home/a.txt'), 'changed\n')
    const second = await run()
    expect(JSON.parse(second.stdout), second.stderr).toMatchObject({ targets: [{ ok: true, mode: 'incremental', parent: one }] })
    await waitFor(published(2), 20_000)
    const [, two] = await backupsIn(laptop)
    expect((await stat(join(laptop, two ?? '', 'big.bin'))).ino).toBe((await stat(join(laptop, one ?? '', 'big.bin'))).ino)
    expect(await readFile(join(laptop, two ?? '', 'a.txt'), 'utf8')).toBe('changed\n')

    await pause(1100)
    const third = await run()
    expect(third.code, third.stderr).toBe(0)
    // keep 2: the oldest goes, once the third is published
    await waitFor(async () => (await backupsIn(laptop)).length === 2 && !(await backupsIn(laptop)).includes(one ?? ''), 20_000)
    await waitFor(async () => (await readFile(hookLog, 'utf8')).includes(`deleted ${laptop}/${one} (retention)`), 20_000)
    const listed = await runCli(['list', 'home', target(), '--password-file', 'pw', '--state-dir', 'state', '--json'], tmp.path)
    expect(JSON.parse(listed.stdout)).toMatchObject([{ snapshots: [{ name: two, complete: true }, { complete: true }] }])
  })

  it("publishes beside rsync-system-backup's latest/ mirror, which it leaves as it is, and says so in the daemon's log", async () => {
    const rsb = join(tmp.path, 'module', 'rsb')
    await writeTree(join(rsb, 'latest'), { 'a.txt': 'alpha\n', 'mirror-only.txt': 'm\n' })
    const r = await runCli(['run', 'home', `rsync://root@127.0.0.1:${daemon.port}/backups/rsb`, '-b', '--password-file', 'pw', '--state-dir', 'state-rsb', '--retries', '0', '--json'], tmp.path)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    await waitFor(published(1, rsb), 20_000)
    await waitFor(async () => (await readFile(hookLog, 'utf8')).includes(`warning: latest in ${rsb} is a directory, not a link bbackup made`), 20_000)
    expect((await readdir(join(rsb, 'latest'))).sort()).toEqual(['a.txt', 'mirror-only.txt'])
  })

  it('refuses -b where nothing publishes for it (a plain directory), and a post-xfer exec without its pre-xfer exec', async () => {
    const local = await runCli(['run', 'home', 'plain', '-b', '--state-dir', 'state'], tmp.path)
    expect(local.code).toBe(2)
    expect(local.stderr).toContain('is not an rsync daemon module')
    expect(local.stdout + local.stderr).toContain('drop -b')
    expect(await readdir(join(tmp.path, 'plain')).catch(() => [])).toEqual([])
    // as the daemon runs it, for a connection whose pre-xfer exec never wrote what it asked for
    const hook = spawnSync(process.execPath, ['--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/cli/src/cli.ts'), 'snapshot', '--state-dir', join(tmp.path, 'hook-state')], {
      cwd: ROOT, encoding: 'utf8', timeout: 60_000,
      env: { ...process.env, RSYNC_MODULE_NAME: 'backups', RSYNC_MODULE_PATH: join(tmp.path, 'module'), RSYNC_PID: '999999999', RSYNC_HOST_ADDR: '127.0.0.1', RSYNC_USER_NAME: 'root', RSYNC_EXIT_STATUS: '0' },
    })
    expect(hook.status).not.toBe(0)
    expect(hook.stderr).toContain('no record of what connection 999999999 to module backups asked for')
    expect(hook.stdout + hook.stderr).toContain('pre-xfer exec too')
  })

  it('never publishes a transfer the daemon saw fail; the next run continues it and the leftover goes', async () => {
    const before = await backupsIn(laptop)
    await pause(1100)
    await writeFile(join(tmp.path, 'home/big.bin'), Buffer.alloc(3 * 1024 * 1024, 9))
    // slow enough to be cut: the client's rsync (a child of this process) is killed mid-transfer
    const cut = run('--rate-limit', '256k')
    await waitFor(async () => (await backupsIn(laptop)).length > before.length, 20_000)
    await pause(1500)
    // the client's rsync, not the daemon (also a child of this process)
    const rsyncs = childrenOf(process.pid).filter((pid) => commandOf(pid)[0] === 'rsync' && !commandOf(pid).includes('--daemon'))
    expect(rsyncs.length).toBeGreaterThan(0)
    for (const pid of rsyncs) process.kill(pid, 'SIGKILL')
    const failed = await cut
    expect(failed.code).not.toBe(0)
    const [unfinished] = (await backupsIn(laptop)).filter((n) => !before.includes(n))
    await waitFor(async () => (await readFile(hookLog, 'utf8')).includes(`not published: ${laptop}/${unfinished}: the transfer ended with exit`), 20_000)
    expect(await markersIn(laptop)).toEqual([`${unfinished}.partial`])
    await expect(stat(join(laptop, '.bbackup', `${unfinished}.json`))).rejects.toThrow()
    const listed = await runCli(['list', 'home', target(), '--password-file', 'pw', '--state-dir', 'state', '--json'], tmp.path)
    expect(listed.code, listed.stdout + listed.stderr).toBe(0)
    expect(JSON.parse(listed.stdout)[0].snapshots).toContainEqual(expect.objectContaining({ name: unfinished, complete: false }))

    await pause(1100)
    const again = await run()
    expect(again.code, again.stdout + again.stderr).toBe(0)
    // published, the leftover removed, then rotated back to two
    await waitFor(async () => (await markersIn(laptop)).length === 0 && !(await backupsIn(laptop)).includes(unfinished ?? '') && (await backupsIn(laptop)).length === 2, 20_000)
    const now = await backupsIn(laptop)
    expect(await readFile(join(laptop, now.at(-1) ?? '', 'big.bin'))).toEqual(Buffer.alloc(3 * 1024 * 1024, 9))
    await waitFor(async () => (await readFile(hookLog, 'utf8')).includes(`removed the unfinished copy ${laptop}/${unfinished}`), 20_000)
  })
})

const commandOf = (pid: number): string[] => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  } catch {
    return []
  }
}
