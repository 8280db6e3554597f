#!/usr/bin/env node
// The one-file install: bbackup (and bbackup-remote) bundled with every dependency into a single
// ES module each, runnable with the system's Node (>= 20): `node bbackup.mjs run SRC DST`.
//   node scripts/bundle.mjs [OUTDIR]      (default: bundle/)
import { chmodSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(process.argv[2] ?? join(root, 'bundle'))
const version = JSON.parse(readFileSync(join(root, 'packages/cli/package.json'), 'utf8')).version

for (const [name, entry] of [['bbackup', 'packages/cli/src/cli.ts'], ['bbackup-remote', 'packages/cli/src/remote-cli.ts']]) {
  await build({
    entryPoints: [join(root, entry)],
    outfile: join(out, `${name}.mjs`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // the workspace packages from their sources, as in the tests
    conditions: ['@bb/source'],
    define: { BBACKUP_BUNDLED_VERSION: JSON.stringify(version) },
    // commander is CommonJS: give the bundle a require of its own
    banner: { js: `#!/usr/bin/env node\nimport { createRequire as bbackupCreateRequire } from 'node:module';\nconst require = bbackupCreateRequire(import.meta.url);` },
    legalComments: 'eof',
    logLevel: 'warning',
  })
  chmodSync(join(out, `${name}.mjs`), 0o755)
  console.log(join(out, `${name}.mjs`))
}
