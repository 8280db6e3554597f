#!/usr/bin/env node
// bbackup and bbackup-remote bundled with every dependency, so that a command loads one or a few
// files instead of hundreds of modules (it starts in about two thirds of the time).
//   node scripts/bundle.mjs [OUTDIR]   the one-file install (default bundle/): one ES module per
//                                      command, runnable with the system's Node (>= 20)
//   node scripts/bundle.mjs --sea [OUTDIR]  a Node single executable application of each command
//                                      (default bundle/): bbackup and bbackup-remote, binaries for hosts
//                                      without Node, made from the Node that runs this (same version, same
//                                      architecture; about 100 MB each)
//   node scripts/bundle.mjs --bin      @bb/cli's own bins (its build runs this): packages/cli/dist/bin/,
//                                      one CommonJS script per command, which packages/cli/bin/ runs with a
//                                      V8 code cache (load-bundle.cjs), and the manual page bbackup(1) from
//                                      them, packages/cli/dist/man/bbackup.1
import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const bin = process.argv[2] === '--bin'
const sea = process.argv[2] === '--sea'
const out = bin ? join(root, 'packages/cli/dist/bin') : resolve((sea ? process.argv[3] : process.argv[2]) ?? join(root, 'bundle'))
const version = JSON.parse(readFileSync(join(root, 'packages/cli/package.json'), 'utf8')).version
const entryPoints = { bbackup: join(root, 'packages/cli/src/cli.ts'), 'bbackup-remote': join(root, 'packages/cli/src/remote-cli.ts') }

const options = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // the workspace packages from their sources, as in the tests
  conditions: ['@bb/source'],
  define: { BBACKUP_BUNDLED_VERSION: JSON.stringify(version) },
  // commander is CommonJS: give the bundle a require of its own
  banner: { js: `import { createRequire as bbackupCreateRequire } from 'node:module';\nconst require = bbackupCreateRequire(import.meta.url);` },
  legalComments: 'eof',
  logLevel: 'warning',
}

const commonJs = {
  format: 'cjs',
  banner: {},
  // the one import.meta (main.ts reading package.json) is on the path BBACKUP_BUNDLED_VERSION closes
  logOverride: { 'empty-import-meta': 'silent' },
}

if (bin) {
  rmSync(out, { recursive: true, force: true })
  // CommonJS: a script can be compiled from a code cache on Node 20, an ES module cannot
  await build({ ...options, ...commonJs, entryPoints, outdir: out, outExtension: { '.js': '.cjs' } })
  console.log(out)
  // the manual page, from the same command definitions as --help (`bbackup man`)
  const man = join(root, 'packages/cli/dist/man')
  mkdirSync(man, { recursive: true })
  writeFileSync(join(man, 'bbackup.1'), execFileSync(process.execPath, [join(root, 'packages/cli/bin/bbackup.cjs'), 'man'], { env: { ...process.env, NODE_DISABLE_COMPILE_CACHE: '1' } }))
  console.log(join(man, 'bbackup.1'))
} else if (sea) {
  // a single executable application runs one CommonJS script, with only Node's own modules to require
  const { inject } = await import('postject')
  mkdirSync(out, { recursive: true })
  const work = mkdtempSync(join(tmpdir(), 'bbackup-sea-'))
  try {
    for (const [name, entry] of Object.entries(entryPoints)) {
      const script = join(work, `${name}.cjs`)
      const blob = join(work, `${name}.blob`)
      await build({
        ...options, ...commonJs, entryPoints: [entry], outfile: script, define: { ...options.define, BBACKUP_SEA: 'true' },
      })
      writeFileSync(join(work, `${name}.json`), JSON.stringify({ main: script, output: blob, disableExperimentalSEAWarning: true }))
      execFileSync(process.execPath, ['--experimental-sea-config', join(work, `${name}.json`)], { stdio: 'pipe' })
      const outfile = join(out, name)
      rmSync(outfile, { force: true })
      copyFileSync(process.execPath, outfile)
      chmodSync(outfile, 0o755)
      // the fuse is Node's: it tells the binary that it carries a script (nodejs.org/api/single-executable-applications.html)
      await inject(outfile, 'NODE_SEA_BLOB', readFileSync(blob), { sentinelFuse: 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2' })
      console.log(outfile)
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
} else {
  for (const [name, entry] of Object.entries(entryPoints)) {
    const outfile = join(out, `${name}.mjs`)
    await build({ ...options, entryPoints: [entry], outfile, banner: { js: `#!/usr/bin/env node\n${options.banner.js}` } })
    chmodSync(outfile, 0o755)
    console.log(outfile)
  }
}
