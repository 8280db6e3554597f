import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, mkdir, open, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest'
import { mountLoopFilesystem, requireTools, writeTree, type LoopFilesystem } from '@bb/testkit'
import { runCli, waitFor } from './helpers.js'

/** A hook command that appends its point, status and more to `log` (one line each) */
const logLine = (log: string, more = ''): string => `echo "$BBACKUP_HOOK \${BBACKUP_STATUS:--}${more}" >> ${log}`

const lines = (log: string): string[] => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [])

describe.runIf(requireTools(['btrfs', 'mkfs.btrfs', 'mount', 'rsync', 'cp'], { root: true }))('hooks: pre/post-run and pre/post-snapshot commands', () => {
  let fs: LoopFilesystem
  let dir: string
  let log: string
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 256 })
    dir = fs.mountPoint
    log = join(dir, 'hooks.log')
    execFileSync('btrfs', ['subvolume', 'create', join(dir, 'home')])
    await writeTree(join(dir, 'home'), { 'a.txt': 'a\n' })
  })
  afterEach(() => fs.cleanup())

  it('btrfs: the snapshot is taken between pre-snapshot and post-snapshot, before anything is sent; post-run is told how the run ended', async () => {
    // the "quiesce" writes a file the "thaw" removes: only a snapshot taken between the two holds it
    const run = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-v',
      '--pre-exec', logLine(log),
      '--pre-snapshot-exec', `${logLine(log)}; echo quiesced > "$BBACKUP_SOURCE/marker"`,
      '--post-snapshot-exec', `${logLine(log, ' $BBACKUP_SNAPSHOT')}; rm "$BBACKUP_SOURCE/marker"; test -f "$BBACKUP_SNAPSHOT_AT/marker" && echo thawed`,
      '--post-exec', logLine(log, ' $BBACKUP_SNAPSHOT'),
    ], dir)
    expect(run.code).toBe(0)
    const [snapshot = ''] = await readdir(join(dir, 'home/.snapshots'))
    expect(lines(log)).toEqual(['pre-run -', 'pre-snapshot -', `post-snapshot ok ${snapshot}`, `post-run ok ${snapshot}`])
    expect(readFileSync(join(dir, 'backup', snapshot, 'marker'), 'utf8')).toBe('quiesced\n')
    expect(existsSync(join(dir, 'home/marker'))).toBe(false)
    expect(run.stdout).toContain('  post-snapshot hook ran, ')
    expect(run.stdout).toContain('    | thawed\n')
  })

  it('btrfs: thaw comes before the send (post-snapshot sees no backup at the target yet)', async () => {
    const target = join(dir, 'backup')
    const run = await runCli(['run', 'home', target, '--state-dir', 'state', '-q', '--post-snapshot-exec', `echo "$(ls ${target} 2>/dev/null | wc -l)" > ${log}`], dir)
    expect(run.code).toBe(0)
    expect(lines(log)).toEqual(['0'])
    expect(await readdir(target)).toHaveLength(1)
  })

  it('a pre-snapshot hook that fails: no snapshot, nothing sent, exit 1 naming it; post-snapshot and post-run still run, told "error"', async () => {
    const run = await runCli(['run', 'home', 'backup', '--state-dir', 'state',
      '--pre-snapshot-exec', 'echo cannot reach the database >&2; exit 3',
      '--post-snapshot-exec', logLine(log), '--post-exec', logLine(log)], dir)
    expect(run).toMatchObject({ code: 1, stderr: expect.stringContaining('the pre-snapshot hook `echo cannot reach the database >&2; exit 3` exited with 3: cannot reach the database') })
    expect(run.stderr).toContain('(HOOK_FAILED)')
    expect(existsSync(join(dir, 'home/.snapshots')) ? await readdir(join(dir, 'home/.snapshots')) : []).toEqual([])
    expect(existsSync(join(dir, 'backup')) ? await readdir(join(dir, 'backup')) : []).toEqual([])
    expect(lines(log)).toEqual(['post-snapshot error', 'post-run error'])
  })

  it('a hook that hangs is stopped after its time with everything it started, and fails; the thaw runs (--hook-timeout, config: hook_timeout)', async () => {
    // the "freeze" starts a child that would outlive it, and waits on it for good
    const pids = join(dir, 'pids')
    const hang = `echo $$ > ${pids}; sleep 300 & echo $! >> ${pids}; wait`
    const gone = (pid: number): boolean => !existsSync(`/proc/${pid}`) || /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
    // should a hook outlive the run after all, what it started is stopped here: by the pids it wrote, while they are still its
    const stopLeftovers = (): void => {
      for (const pid of existsSync(pids) ? readFileSync(pids, 'utf8').trim().split('\n').map(Number) : []) {
        if (!gone(pid) && /sleep|sh/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'))) process.kill(pid, 'SIGKILL')
      }
    }
    onTestFinished(stopLeftovers)
    const started = Date.now()
    const run = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--hook-timeout', '2', '--pre-snapshot-exec', hang, '--post-snapshot-exec', logLine(log)], dir)
    expect(Date.now() - started).toBeLessThan(15_000)
    expect(run).toMatchObject({ code: 1, stderr: expect.stringContaining(`the pre-snapshot hook \`${hang}\` did not finish in 2 s: it was stopped, with everything it started`) })
    expect(run.stderr).toContain('(HOOK_FAILED)')
    expect(lines(log)).toEqual(['post-snapshot error'])
    const [shell, child] = readFileSync(pids, 'utf8').trim().split('\n').map(Number) as [number, number]
    await waitFor(async () => gone(shell) && gone(child), 5_000)
    expect(existsSync(join(dir, 'home/.snapshots')) ? await readdir(join(dir, 'home/.snapshots')) : []).toEqual([])

    // a pre-run hook has no limit unless one is set; a config's hook_timeout sets it
    await mkdir(join(dir, 'etc'), { mode: 0o755 })
    const config = join(dir, 'etc/config.toml')
    await writeFile(config, [`state_dir = "${join(dir, 'state')}"`, 'hook_timeout = "1"', '[jobs.home]', `source = "${join(dir, 'home')}"`, `targets = ["${join(dir, 'backup')}"]`, `pre_exec = '${hang}'`, ''].join('\n'), { mode: 0o644 })
    expect(await runCli(['run', '-c', config], dir)).toMatchObject({ code: 1, stderr: expect.stringContaining('did not finish in 1 s') })
    await writeFile(config, ['hook_timeout = "soon"', '[jobs.home]', `source = "${join(dir, 'home')}"`, ''].join('\n'), { mode: 0o644 })
    expect(await runCli(['run', '-c', config], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('hook_timeout') })
  })

  it('a pre-run hook that fails stops the run before the source is read; a post hook that fails after a good backup is exit 10 (the backup stays)', async () => {
    const stopped = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--pre-exec', 'false', '--pre-snapshot-exec', logLine(log), '--post-exec', logLine(log)], dir)
    expect(stopped).toMatchObject({ code: 1, stderr: expect.stringContaining('the pre-run hook `false` exited with 1') })
    expect(lines(log)).toEqual(['post-run error'])
    expect(existsSync(join(dir, 'home/.snapshots'))).toBe(false)

    const thawFailed = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '-q', '--post-snapshot-exec', 'echo still frozen >&2; exit 4'], dir)
    expect(thawFailed).toMatchObject({ code: 10, stderr: expect.stringContaining('hook failed: the post-snapshot hook `echo still frozen >&2; exit 4` exited with 4: still frozen') })
    expect(await readdir(join(dir, 'backup'))).toHaveLength(1)
    const json = await runCli(['run', 'home', 'backup', '--state-dir', 'state', '--json', '--post-exec', 'exit 5'], dir)
    expect(json.code).toBe(10)
    expect(JSON.parse(json.stdout)).toMatchObject({ failed: 0, hooks: [{ point: 'post-run', ok: false, error: { code: 'HOOK_FAILED', details: { exitCode: 5 } } }] })
    expect(await readdir(join(dir, 'backup'))).toHaveLength(2)
  })

  it('a dry run runs no hook and says which would run', async () => {
    const dry = await runCli(['run', '-n', 'home', 'backup', '--state-dir', 'state', '--pre-exec', logLine(log), '--post-snapshot-exec', logLine(log)], dir)
    expect(dry.code).toBe(0)
    expect(dry.stdout).toContain('  would run the pre-run hook\n  would run the post-snapshot hook\n')
    expect(existsSync(log)).toBe(false)
  })

  it('rsync reads the live source: its snapshot hooks go around the transfer, and post-snapshot sees the finished backup', async () => {
    await mkdir(join(dir, 'plain'))
    await writeFile(join(dir, 'plain/a.txt'), 'a\n')
    const target = join(dir, 'rsync-backups')
    const run = await runCli(['run', 'plain', target, '--state-dir', 'rstate', '-q',
      '--pre-snapshot-exec', `${logLine(log)}; ls ${target} 2>/dev/null | grep -c T >> ${log} || true`,
      '--post-snapshot-exec', `${logLine(log, ' $BBACKUP_SNAPSHOT')}; test -f ${target}/$BBACKUP_SNAPSHOT/a.txt && echo complete >> ${log}`], dir)
    expect(run.code).toBe(0)
    const [backup = ''] = (await readdir(target)).filter((n) => /^\d{4}-/.test(n))
    expect(lines(log)).toEqual(['pre-snapshot -', '0', `post-snapshot ok ${backup}`, 'complete'])

    // no target to be reached (its disk not mounted): nothing is stopped for nothing; post-run is told the run failed
    await writeFile(log, '')
    const offline = await runCli(['run', 'plain', join(dir, 'not-mounted/backups'), '--state-dir', 'rstate', '-q', '--pre-snapshot-exec', logLine(log), '--post-exec', logLine(log)], dir)
    expect(offline.code).toBe(10)
    expect(lines(log)).toEqual(['post-run failed'])
  })

  it('block: the guest is "frozen" only for the reflink copy, which holds what was written between the hooks', async () => {
    const image = join(dir, 'vm.img')
    const h = await open(image, 'w')
    await h.truncate(4 * 1024 * 1024)
    await h.close()
    expect((await runCli(['init', '-b', 'backy/vm', image, '--chunk-size', '1M'], dir)).code).toBe(0)
    const poke = (text: string): string => `printf ${text} | dd of=${image} conv=notrunc status=none`
    const run = await runCli(['backup', '-b', 'backy/vm', '-f',
      '--pre-snapshot-exec', `${poke('FROZEN')}; ${logLine(log)}`,
      '--post-snapshot-exec', `${poke('THAWED')}; ${logLine(log, ` $(ls ${join(dir, 'backy/vm')} | grep -c 'img$')`)}`,
      '--post-exec', logLine(log, ' $BBACKUP_SNAPSHOT')], dir)
    expect(run.code).toBe(0)
    const [rev = ''] = (await readdir(join(dir, 'backy/vm'))).filter((n) => n.endsWith('.img'))
    // thawed before the image was read: no revision's image was there yet
    expect(lines(log)).toEqual(['pre-snapshot -', 'post-snapshot ok 0', `post-run ok ${rev.replace(/\.img$/, '')}`])
    expect((await readFile(join(dir, 'backy/vm', rev))).subarray(0, 6).toString()).toBe('FROZEN')
    expect((await readFile(image)).subarray(0, 6).toString()).toBe('THAWED')
    // a failing thaw fails the run (exit 10), and the revision stays
    const failed = await runCli(['backup', '-b', 'backy/vm', '-f', '--post-snapshot-exec', 'exit 2'], dir)
    expect(failed).toMatchObject({ code: 10, stdout: expect.stringContaining('hook failed: the post-snapshot hook `exit 2` exited with 2') })
    expect((await readdir(join(dir, 'backy/vm'))).filter((n) => n.endsWith('.img'))).toHaveLength(2)
  })

  it('config: hooks per job and as every job\'s default, told the job\'s name; a config others could change is refused before anything runs', async () => {
    await mkdir(join(dir, 'etc'), { mode: 0o755 })
    const config = join(dir, 'etc/config.toml')
    await writeFile(config, [
      `post_exec = '${logLine(log, ' $BBACKUP_JOB')}'`,
      `state_dir = "${join(dir, 'state')}"`,
      '[jobs.home]', `source = "${join(dir, 'home')}"`, `targets = ["${join(dir, 'backup')}"]`, `pre_snapshot_exec = '${logLine(log, ' $BBACKUP_JOB')}'`, '',
    ].join('\n'), { mode: 0o644 })
    expect((await runCli(['run', '-c', config, '-q'], dir)).code).toBe(0)
    expect(lines(log)).toEqual(['pre-snapshot - home', 'post-run ok home'])
    await chmod(config, 0o664)
    const refused = await runCli(['run', '-c', config], dir)
    expect(refused).toMatchObject({ code: 2, stderr: expect.stringContaining(`the config file ${config} sets commands to run (post_exec, [jobs.home] pre_snapshot_exec) but it is writable by its group`) })
    expect(refused.stderr).toContain(`hint: chmod go-w ${config}; then run again`)
    await chmod(config, 0o644)
    await chmod(join(dir, 'etc'), 0o777)
    expect(await runCli(['run', '-c', config], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`but its directory ${join(dir, 'etc')} is writable by its group and everyone`) })
    expect(lines(log)).toHaveLength(2)
    expect(await readdir(join(dir, 'backup'))).toHaveLength(1)

    // btrfs-backup's @file arguments are held to the same rule when they set a command
    await chmod(join(dir, 'etc'), 0o755)
    const args = join(dir, 'etc/home.args')
    await writeFile(args, `--post-exec='${logLine(log, ' args')}'\nhome backup --state-dir state -q\n`, { mode: 0o644 })
    expect((await runCli(['run', `@${args}`], dir)).code).toBe(0)
    expect(lines(log).at(-1)).toBe('post-run ok args')
    await chmod(args, 0o646)
    expect(await runCli(['run', `@${args}`], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining(`the argument file ${args} sets commands to run (--post-exec) but it is writable by everyone`) })
    expect(lines(log)).toHaveLength(3)
  })
})
