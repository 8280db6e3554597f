import { spawnSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

const loader = fileURLToPath(new URL('../bin/load-bundle.cjs', import.meta.url))

/** a stand-in for dist/bin/bbackup.cjs: says which version of it ran, with what CommonJS gave it */
const bundle = (version: string, exitCode = 0): string =>
  `const { readFileSync } = require('node:fs')\n` +
  `process.exitCode = ${exitCode}\n` +
  `console.log(JSON.stringify({ version: '${version}', file: __filename, module: module.filename, read: typeof readFileSync, args: process.argv.slice(1) }))\n`

let dir: string
let cacheHome: string
let file: string
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bbackup-load-bundle-'))
  cacheHome = join(dir, 'cache')
  file = join(dir, 'command.cjs')
})
afterEach(() => rmSync(dir, { recursive: true, force: true }))

/** runs `file` through the loader as a bin would, in a process of its own (`node -e`: the arguments start at argv[1]) */
function run(env: Record<string, string> = {}, args: readonly string[] = ['a1', 'a 2']) {
  const r = spawnSync(process.execPath, ['-e', `process.stdout.write('state=' + require(${JSON.stringify(loader)}).loadBundle(${JSON.stringify(file)}) + '\\n')`, ...args], {
    env: { PATH: process.env.PATH ?? '', XDG_CACHE_HOME: cacheHome, ...env },
    encoding: 'utf8',
  })
  const [ran, state] = r.stdout.trim().split('\n')
  return { status: r.status, stderr: r.stderr, ran: ran === undefined || ran === '' ? undefined : JSON.parse(ran) as Record<string, unknown>, state }
}
const caches = () => (existsSync(join(cacheHome, 'bbackup')) ? readdirSync(join(cacheHome, 'bbackup')) : [])

describe('load-bundle: the bins run their bundle with a V8 code cache of the user\'s own', () => {
  it('compiles a bundle once, then runs it from the cache, as CommonJS with the arguments given', () => {
    writeFileSync(file, bundle('A'))
    const first = run()
    expect(first).toEqual({ status: 0, stderr: '', state: 'state=made', ran: { version: 'A', file, module: file, read: 'function', args: ['a1', 'a 2'] } })
    expect(caches()).toEqual([expect.stringMatching(new RegExp(`^command-[0-9a-f]{32}-${process.version}-${process.arch}\\.v8$`))])
    expect(statSync(join(cacheHome, 'bbackup')).mode & 0o777).toBe(0o700)
    expect(statSync(join(cacheHome, 'bbackup', caches()[0] ?? '')).mode & 0o777).toBe(0o600)
    expect(run()).toEqual({ ...first, state: 'state=used' })
  })

  it('never runs the cached code of another bundle, even one of the same length (V8 would take its cache)', () => {
    writeFileSync(file, bundle('A'))
    expect(run().state).toBe('state=made')
    writeFileSync(file, bundle('B'))
    const changed = run()
    expect([changed.state, changed.ran?.version]).toEqual(['state=made', 'B'])
    expect(caches()).toHaveLength(2)
  })

  it('keeps the caches of the last few builds of a command and removes older ones, never a file of another name', () => {
    const own = join(cacheHome, 'bbackup')
    mkdirSync(own, { recursive: true, mode: 0o700 })
    // four older builds of this command (the oldest first), another command's cache and a file of the user's
    const older = [1, 2, 3, 4].map((i) => `command-${String(i).repeat(32)}-${process.version}-${process.arch}.v8`)
    const kept = ['other-command-' + 'a'.repeat(32) + `-${process.version}-${process.arch}.v8`, 'notes.txt', `command-${'5'.repeat(32)}-${process.version}-${process.arch}.v8.bak`]
    for (const [i, n] of [...older, ...kept].entries()) {
      writeFileSync(join(own, n), 'x')
      utimesSync(join(own, n), 1_000_000 + i, 1_000_000 + i)
    }
    writeFileSync(file, bundle('A'))
    expect(run().state).toBe('state=made')
    const mine = caches().filter((n) => !older.includes(n) && !kept.includes(n))
    expect(mine).toHaveLength(1)
    expect(caches().sort()).toEqual([...mine, ...older.slice(2), ...kept].sort())
  })

  it('passes the exit code through, and still writes the cache; after a usage error (exit 2, a mistyped word) none', () => {
    writeFileSync(file, bundle('A', 3))
    expect([run().status, run().state]).toEqual([3, 'state=used'])
    writeFileSync(file, bundle('A', 2))
    expect([run({}, ['bin', 'rnu']).status, run({}, ['bin', 'rnu']).state]).toEqual([2, 'state=made'])
    expect(caches()).toHaveLength(1)
  })

  it('keeps a cache for each first word of the command line (V8 holds what the run that wrote it compiled); an upgrade removes those of old builds', () => {
    writeFileSync(file, bundle('A'))
    // the argv of a bin: [node, bin, ...words]; an option or a path is no word
    expect(run({}, ['bin', '--version']).state).toBe('state=made')
    expect(run({}, ['bin', '-q', 'run', 'home']).state).toBe('state=made')
    expect(run({}, ['bin', 'run', '/srv']).state).toBe('state=used')
    expect(run({}, ['bin', 'list']).state).toBe('state=made')
    const tail = `-[0-9a-f]{32}-${process.version}-${process.arch}\\.v8$`
    expect(caches().sort()).toEqual([expect.stringMatching(new RegExp(`^command${tail}`)), expect.stringMatching(new RegExp(`^command\\.list${tail}`)), expect.stringMatching(new RegExp(`^command\\.run${tail}`))])
    // three builds later only the newest three builds' caches are left, whichever words they were made for
    for (const version of ['B', 'C', 'D']) {
      writeFileSync(file, bundle(version))
      expect(run({}, ['bin', 'status']).state).toBe('state=made')
    }
    const builds = new Set(caches().map((n) => /-([0-9a-f]{32})-/.exec(n)?.[1]))
    expect([caches().length, builds.size]).toEqual([3, 3])
    expect(caches().every((n) => n.startsWith('command.status-'))).toBe(true)
  })

  it('replaces a cache that V8 rejects, and runs the bundle all the same', () => {
    writeFileSync(file, bundle('A'))
    run()
    const cache = join(cacheHome, 'bbackup', caches()[0] ?? '')
    writeFileSync(cache, 'not a code cache')
    const r = run()
    expect([r.state, r.ran?.version]).toEqual(['state=made', 'A'])
    expect(statSync(cache).size).toBeGreaterThan(100)
    expect(run().state).toBe('state=used')
  })

  it('uses no cache in a directory that others can write to, and writes none there', () => {
    writeFileSync(file, bundle('A'))
    run()
    chmodSync(join(cacheHome, 'bbackup'), 0o777)
    const r = run()
    expect([r.state, r.ran?.version]).toEqual(['state=off', 'A'])
    chmodSync(join(cacheHome, 'bbackup'), 0o700)
    expect(caches()).toHaveLength(1)
  })

  it.runIf(process.getuid?.() === 0)('does not read a cache file that another user owns', () => {
    writeFileSync(file, bundle('A'))
    run()
    const cache = join(cacheHome, 'bbackup', caches()[0] ?? '')
    chownSync(cache, 65534, 65534)
    expect(run().state).toBe('state=made')
    expect(statSync(cache).uid).toBe(0)
  })

  it('is off with NODE_DISABLE_COMPILE_CACHE, Node\'s own switch, and then makes no directory', () => {
    writeFileSync(file, bundle('A'))
    const r = run({ NODE_DISABLE_COMPILE_CACHE: '1' })
    expect([r.state, r.ran?.version]).toEqual(['state=off', 'A'])
    expect(existsSync(cacheHome)).toBe(false)
  })

  it('says how to build when the bundle is missing', () => {
    const r = run()
    expect(r.status).toBe(1)
    expect(r.stderr).toBe(`bbackup: ${file} is missing: this checkout of @bb/cli is not built (run \`pnpm build\`, or \`npm run demo\` once)\n`)
  })
})
