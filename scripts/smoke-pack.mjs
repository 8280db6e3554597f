#!/usr/bin/env node
// The packed packages as a user gets them: `pnpm pack` each published package (after the build),
// `npm install` the tarballs into an empty directory, then run `bbackup run` end to end with the
// installed bin, bbackup-remote as sshd would start it, and `import { backup } from '@bb/core'`
// from a plain Node script. Run by `npm test` after the build; exits non-zero on any failure.
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const work = mkdtempSync(join(tmpdir(), 'bbackup-pack-'))

const run = (file, args, options = {}) => {
  const r = spawnSync(file, args, { encoding: 'utf8', ...options })
  if (r.status !== 0) {
    console.error(`smoke: ${file} ${args.join(' ')} failed (exit ${r.status})\n${r.stdout}\n${r.stderr}`)
    throw new Error('smoke test failed')
  }
  return r.stdout
}

try {
  const packs = join(work, 'packs')
  // under `pnpm run`, the pnpm that runs us (it need not be on the PATH)
  const pnpm = process.env.npm_execpath?.includes('pnpm') === true ? [process.execPath, process.env.npm_execpath] : ['pnpm']
  for (const name of ['core', 'drivers', 'transports', 'cli']) run(pnpm[0], [...pnpm.slice(1), 'pack', '--pack-destination', packs], { cwd: join(root, 'packages', name) })
  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), '{ "name": "smoke", "private": true, "type": "module" }\n')
  run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', ...readdirSync(packs).map((f) => join(packs, f))], { cwd: app })

  mkdirSync(join(work, 'src/sub'), { recursive: true })
  writeFileSync(join(work, 'src/a.txt'), 'a\n')
  writeFileSync(join(work, 'src/sub/b.txt'), 'b\n')
  const bin = join(app, 'node_modules/.bin')
  // the bins' code cache in the work directory, not in the home of whoever runs the tests
  const env = { ...process.env, XDG_CACHE_HOME: join(work, 'cache') }
  run(join(bin, 'bbackup'), ['run', join(work, 'src'), join(work, 'dst'), '--state-dir', join(work, 'state'), '-q'], { cwd: app, env })
  const cached = readdirSync(join(work, 'cache/bbackup'))
  if (cached.length !== 1 || !cached[0].endsWith('.v8')) throw new Error(`smoke: bbackup left no code cache, or more than one: ${cached.join(', ')}`)
  const listed = JSON.parse(run(join(bin, 'bbackup'), ['list', join(work, 'src'), join(work, 'dst'), '--state-dir', join(work, 'state'), '--json'], { cwd: app, env }))
  if (listed[0]?.snapshots?.length !== 1) throw new Error(`smoke: expected one backup, got ${JSON.stringify(listed)}`)
  const version = run(join(bin, 'bbackup-remote'), ['--role', 'list', '--restrict-path', work], { env: { ...env, SSH_ORIGINAL_COMMAND: 'rsync --version' } })
  if (!/^rsync +version/.test(version)) throw new Error(`smoke: bbackup-remote did not run rsync --version: ${version}`)
  writeFileSync(join(app, 'sdk.mjs'), "import { backup, prometheusMetrics } from '@bb/core'\nimport { rsyncDriver } from '@bb/drivers/rsync'\nimport { localTransport } from '@bb/transports/local'\nconsole.log(typeof backup, typeof prometheusMetrics, typeof rsyncDriver, typeof localTransport)\n")
  const types = run(process.execPath, ['sdk.mjs'], { cwd: app }).trim()
  if (types !== 'function function function function') throw new Error(`smoke: the SDK's exports are ${types}`)
  // the manual page of npm's man field, as packed
  const man = readFileSync(join(app, 'node_modules/@bb/cli/dist/man/bbackup.1'), 'utf8')
  if (!man.startsWith('.TH BBACKUP 1 ')) throw new Error(`smoke: the packed bbackup.1 is not a manual page: ${man.slice(0, 80)}`)
  console.log('smoke: the packed packages install in an empty directory; bbackup ran a backup (and made its code cache), bbackup-remote, the SDK and the manual page work')
} finally {
  rmSync(work, { recursive: true, force: true })
}
