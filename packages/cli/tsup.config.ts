import { definePackage } from '../../tsup.shared.ts'

// index.ts is the importable main() for tests and embedding; the bins (src/cli.ts, src/remote-cli.ts)
// are bundled with their dependencies into dist/bin/ by scripts/bundle.mjs --bin, run after tsup
export default definePackage({ index: 'src/index.ts' })
