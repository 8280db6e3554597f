#!/usr/bin/env node
// Entry point of the README's commands (`npm run demo`, `npm test`) on a machine that has only
// Node and npm: make sure the pinned pnpm is available (a private copy under .tools/ when the
// machine has none, so no root is needed), install the workspace, then run `pnpm <args>`.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const wanted = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).packageManager.split('@')[1]
const wantedMajor = wanted.split('.')[0]

const run = (file, args, options = {}) =>
  spawnSync(file, args, { cwd: root, stdio: 'inherit', ...options })

const versionOf = (file) => {
  const r = spawnSync(file, ['--version'], { cwd: root, encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : undefined
}

const findPnpm = () => {
  const local = join(root, '.tools', 'node_modules', '.bin', 'pnpm')
  if (existsSync(local) && versionOf(local) === wanted) return local
  const onPath = versionOf('pnpm')
  if (onPath !== undefined && onPath.split('.')[0] === wantedMajor) return 'pnpm'
  console.error(`bbackup: installing pnpm ${wanted} into .tools/ (no pnpm ${wantedMajor}.x on PATH)`)
  const r = run('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--prefix', join(root, '.tools'), `pnpm@${wanted}`])
  if (r.status !== 0 || !existsSync(local)) {
    console.error(`bbackup: could not install pnpm ${wanted} with npm. Install it yourself: npm install -g pnpm@${wanted}`)
    process.exit(1)
  }
  return local
}

const pnpm = findPnpm()
const install = run(pnpm, ['install', '--frozen-lockfile', '--prefer-offline', '--reporter=silent'])
if (install.status !== 0) {
  console.error('bbackup: `pnpm install --frozen-lockfile` failed; see the output above')
  process.exit(install.status ?? 1)
}
const result = run(pnpm, process.argv.slice(2), {
  env: { ...process.env, PATH: `${dirname(pnpm === 'pnpm' ? '' : pnpm)}:${process.env.PATH ?? ''}` },
})
process.exit(result.status ?? 1)
