import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, writeTree, type TempDir } from '@bb/testkit'
import { ROOT } from './helpers.js'

/**
 * The one-file install (issue 7): scripts/bundle.mjs makes bbackup.mjs and bbackup-remote.mjs,
 * which must run with nothing beside them: no node_modules, no package.json.
 */
describe.runIf(requireTools(['rsync']))('the single-file bundle', () => {
  let tmp: TempDir
  let bin: string
  const bbackup = (args: string[]) => spawnSync(process.execPath, [join(bin, 'bbackup.mjs'), ...args], { cwd: tmp.path, encoding: 'utf8', timeout: 60_000 })

  beforeAll(async () => {
    tmp = await makeTempDir('bundle')
    execFileSync(process.execPath, [join(ROOT, 'scripts/bundle.mjs'), join(tmp.path, 'built')], { stdio: 'pipe' })
    // a directory of its own, far from the repository's node_modules
    bin = join(tmp.path, 'bin')
    execFileSync('mkdir', ['-p', bin])
    for (const name of ['bbackup.mjs', 'bbackup-remote.mjs']) await copyFile(join(tmp.path, 'built', name), join(bin, name))
  }, 60_000)
  afterAll(async () => {
    await tmp?.cleanup()
  })

  it('runs a backup, lists it and reports its status with only Node', async () => {
    expect(await readdir(bin)).toEqual(['bbackup-remote.mjs', 'bbackup.mjs'])
    const version = JSON.parse(await readFile(join(ROOT, 'packages/cli/package.json'), 'utf8')) as { version: string }
    expect(bbackup(['--version']).stdout.trim()).toBe(version.version)
    await writeTree(join(tmp.path, 'src'), { 'a.txt': 'a\n', 'd/b.txt': 'b\n' })
    const run = bbackup(['run', 'src', 'dst', '--state-dir', 'state'])
    expect(run.status, run.stderr).toBe(0)
    await writeFile(join(tmp.path, 'src/a.txt'), 'changed\n')
    expect(bbackup(['run', 'src', 'dst', '--state-dir', 'state', '-q']).status).toBe(0)
    const listed = bbackup(['list', 'src', 'dst', '--state-dir', 'state', '--json'])
    expect((JSON.parse(listed.stdout) as { snapshots: unknown[] }[])[0]?.snapshots).toHaveLength(2)
    expect(bbackup(['status', 'src', 'dst', '--state-dir', 'state', '--check']).stdout).toMatch(/^BBACKUP OK/)
  })

  it('started in a directory deleted since (a shell still in it), says so and how to go on: exit 1, no stack trace, nothing written', async () => {
    const gone = join(tmp.path, 'gone')
    await mkdir(gone)
    await writeTree(join(tmp.path, 'src2'), { 'a.txt': 'a\n' })
    const r = spawnSync('sh', ['-c', 'cd "$1" && rmdir "$1" && exec "$2" "$3" run "$4" "$5" --state-dir "$6"', 'sh', gone, process.execPath, join(bin, 'bbackup.mjs'), join(tmp.path, 'src2'), join(tmp.path, 'dst2'), join(tmp.path, 'state2')], { encoding: 'utf8', timeout: 60_000 })
    expect(r).toMatchObject({ status: 1, stdout: '' })
    expect(r.stderr).toBe('bbackup: error: the current directory no longer exists (it was deleted after this shell went into it)\n  hint: cd to a directory that exists (cd /), and run again\n  (IO_FAILED)\n')
    expect(existsSync(join(tmp.path, 'dst2'))).toBe(false)
  })

  it('has bbackup-remote, which refuses and allows as the forced command does', () => {
    const remote = (command: string) => spawnSync(process.execPath, [join(bin, 'bbackup-remote.mjs'), '--role', 'list', '--restrict-path', tmp.path], { encoding: 'utf8', env: { ...process.env, SSH_ORIGINAL_COMMAND: command } })
    expect(remote('rsync --version')).toMatchObject({ status: 0, stdout: expect.stringMatching(/^rsync +version/) })
    expect(remote(`sh -c 'touch ${join(tmp.path, 'pwned')}'`)).toMatchObject({ status: 255, stderr: expect.stringMatching(/^bbackup-remote: refused: /) })
  })
})

/**
 * The single executable application (issue 7): scripts/bundle.mjs --sea makes bbackup and
 * bbackup-remote binaries that carry Node, for hosts without it.
 */
describe.runIf(requireTools(['rsync']))('the single executable application', () => {
  let tmp: TempDir
  let bin: string
  const run = (name: string, args: string[], env: Record<string, string> = {}) =>
    // nothing of this Node's environment: no NODE_OPTIONS, no conditions, no loader
    spawnSync(join(bin, name), args, { cwd: tmp.path, encoding: 'utf8', timeout: 60_000, env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: tmp.path, ...env } })

  beforeAll(async () => {
    tmp = await makeTempDir('sea')
    bin = join(tmp.path, 'bin')
    execFileSync(process.execPath, [join(ROOT, 'scripts/bundle.mjs'), '--sea', bin], { stdio: 'pipe' })
  }, 120_000)
  afterAll(async () => {
    await tmp?.cleanup()
  })

  it('is one binary that backs up, lists and checks; a timer it writes runs the binary itself', async () => {
    expect((await readdir(bin)).sort()).toEqual(['bbackup', 'bbackup-remote'])
    const version = JSON.parse(await readFile(join(ROOT, 'packages/cli/package.json'), 'utf8')) as { version: string }
    expect(run('bbackup', ['--version']).stdout.trim()).toBe(version.version)
    await writeTree(join(tmp.path, 'src'), { 'a.txt': 'a\n', 'd/b.txt': 'b\n' })
    const first = run('bbackup', ['run', 'src', 'dst', '--state-dir', 'state'])
    expect(first.status, first.stderr).toBe(0)
    const listed = run('bbackup', ['list', 'src', 'dst', '--state-dir', 'state', '--json'])
    expect((JSON.parse(listed.stdout) as { snapshots: unknown[] }[])[0]?.snapshots).toHaveLength(1)
    expect(run('bbackup', ['status', 'src', 'dst', '--state-dir', 'state', '--check']).stdout).toMatch(/^BBACKUP OK/)
    await writeFile(join(tmp.path, 'config.toml'), `[jobs.home]\nsource = "${join(tmp.path, 'src')}"\ntargets = ["${join(tmp.path, 'dst')}"]\n`)
    const units = run('bbackup', ['schedule', 'home', '-c', join(tmp.path, 'config.toml'), '--print'])
    expect(units.stdout).toMatch(new RegExp(`^ExecStart=${join(bin, 'bbackup')} run -c `, 'm'))
  })

  it('has bbackup-remote, which refuses and allows as the forced command does', () => {
    expect(run('bbackup-remote', ['--role', 'list', '--restrict-path', tmp.path], { SSH_ORIGINAL_COMMAND: 'rsync --version' })).toMatchObject({ status: 0, stdout: expect.stringMatching(/^rsync +version/) })
    expect(run('bbackup-remote', ['--role', 'list', '--restrict-path', tmp.path], { SSH_ORIGINAL_COMMAND: `sh -c 'touch ${join(tmp.path, 'pwned')}'` })).toMatchObject({ status: 255, stderr: expect.stringMatching(/^bbackup-remote: refused: /) })
  })
})
