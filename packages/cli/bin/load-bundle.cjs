'use strict'
// Runs one of @bb/cli's bundled commands (dist/bin/<name>.cjs, made by scripts/bundle.mjs --bin) with
// a V8 code cache, what Node 22's module.enableCompileCache() does and Node 20 lacks: a command
// compiled once starts about 20 ms sooner on every later run (measured on `bbackup run`).
//
// The cache is $XDG_CACHE_HOME/bbackup or else ~/.cache/bbackup in the home directory of the user that
// runs the command (not $HOME, which sudo may keep), a directory of the user's own that no one else can
// write to: V8 runs the code a cache holds, so a cache that is not ours is never read.
// A cache is named for the command and its first word (`run`, `list`: V8 compiles a function when it
// is first called, and a cache holds the functions compiled by the run that wrote it, so `run` from a
// cache that `--version` wrote took 10 ms longer), the bundle's content (V8 itself would take one
// made from other code of the same length) and the Node version; the caches of a command's builds
// before the last few go. A command that ends with a usage error (exit 2: a mistyped word) writes none.
// NODE_DISABLE_COMPILE_CACHE=1 (Node's own switch) turns it off.
// Nothing here may fail a command: a cache that cannot be read or written is done without.
// CommonJS, because only a script (not an ES module) can be compiled from a cache on Node 20.
const { createHash } = require('node:crypto')
const { closeSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } = require('node:fs')
const Module = require('node:module')
const { userInfo } = require('node:os')
const { basename, dirname, join } = require('node:path')
const { Script } = require('node:vm')

/** the cache directory, made if missing, or undefined when there is none we may trust */
function cacheDir(env) {
  if (env.NODE_DISABLE_COMPILE_CACHE !== undefined && env.NODE_DISABLE_COMPILE_CACHE !== '') return undefined
  try {
    const base = env.XDG_CACHE_HOME?.startsWith('/') ? env.XDG_CACHE_HOME : join(userInfo().homedir, '.cache')
    const dir = join(base, 'bbackup')
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    return ours(statSync(dir)) ? dir : undefined
  } catch {
    return undefined
  }
}

/** owned by this user and writable by no one else */
const ours = (stat) => stat.uid === process.geteuid() && (stat.mode & 0o022) === 0

/** the cache an earlier run wrote to `file`, if it is one we may use */
function readCache(file) {
  let fd
  try {
    fd = openSync(file, 'r')
    return ours(fstatSync(fd)) ? readFileSync(fd) : undefined
  } catch {
    return undefined
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** how many builds of one command keep their caches: this one and those used last before it */
const KEEP = 3

/** the first word of the command line (`run`, `list`), or '' */
const firstWord = (args) => args.find((a) => /^[a-z][a-z0-9-]{0,23}$/.test(a)) ?? ''

/** `<command>[.<word>]-<sha256 of the code, 32 hex>-<node version>-<arch>.v8`: what writeCache makes, and all it removes */
const cacheName = (command, word, hash) => `${command}${word === '' ? '' : `.${word}`}-${hash}-${process.version}-${process.arch}.v8`
const ownCache = (command) => new RegExp(`^${command.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?:\\.[a-z][a-z0-9-]*)?-([0-9a-f]{32})-v[0-9.]+-[a-z0-9]+\\.v8$`)

function writeCache(dir, command, name, hash, data) {
  const file = join(dir, name)
  const temp = `${file}.${process.pid}.tmp`
  try {
    writeFileSync(temp, data, { mode: 0o600, flag: 'wx' })
    renameSync(temp, file)
    // an upgrade leaves the old build's caches behind: those of the few builds used last are kept (this one counts as the newest)
    const own = ownCache(command)
    const caches = readdirSync(dir).map((n) => ({ n, of: own.exec(n)?.[1] })).filter((c) => c.of !== undefined)
      .map((c) => ({ ...c, mtime: c.of === hash ? Infinity : statSync(join(dir, c.n)).mtimeMs }))
    const used = new Map()
    for (const c of caches) used.set(c.of, Math.max(used.get(c.of) ?? -Infinity, c.mtime))
    const kept = new Set([...used].sort((a, b) => b[1] - a[1]).slice(0, KEEP).map(([of]) => of))
    for (const c of caches) if (!kept.has(c.of)) rmSync(join(dir, c.n), { force: true })
  } catch {
    // a cache is an optimisation: without one the next run compiles again
    rmSync(temp, { force: true })
  }
}

/**
 * Runs the CommonJS bundle `file` as the main script. Returns what became of the cache: 'used',
 * 'made' (none or a rejected one; written when the process exits), or 'off'.
 */
function loadBundle(file, env = process.env) {
  let bytes
  try {
    bytes = readFileSync(file)
  } catch (e) {
    if (e.code !== 'ENOENT') throw e
    process.stderr.write(`bbackup: ${file} is missing: this checkout of @bb/cli is not built (run \`pnpm build\`, or \`npm run demo\` once)\n`)
    process.exit(1)
  }
  const dir = cacheDir(env)
  const command = basename(file, '.cjs')
  // the file's bytes hashed, not the string (which the hash would encode to them again)
  const hash = dir === undefined ? '' : createHash('sha256').update(bytes).digest('hex').slice(0, 32)
  const source = bytes.toString('utf8')
  const name = dir === undefined ? '' : cacheName(command, firstWord(process.argv.slice(2)), hash)
  const cachedData = dir === undefined ? undefined : readCache(join(dir, name))
  const script = new Script(Module.wrap(source), { filename: file, cachedData })
  const state = dir === undefined ? 'off' : cachedData !== undefined && !script.cachedDataRejected ? 'used' : 'made'
  // made after the run, so that it holds the functions the command compiled on its way
  if (state === 'made') process.once('exit', (code) => code !== 2 && writeCache(dir, command, name, hash, script.createCachedData()))
  const mod = new Module(file, module)
  mod.filename = file
  script.runInThisContext()(mod.exports, Module.createRequire(file), mod, file, dirname(file))
  return state
}

module.exports = { loadBundle }
