import { definePackage } from '../../tsup.shared.ts'

// cli.ts is what the bin runs; index.ts is the importable main() for tests and embedding
export default definePackage({ index: 'src/index.ts', cli: 'src/cli.ts', 'remote-cli': 'src/remote-cli.ts' })
