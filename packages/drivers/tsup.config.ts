import { definePackage } from '../../tsup.shared.ts'

export default definePackage({ 'btrfs/index': 'src/btrfs/index.ts', 'rsync/index': 'src/rsync/index.ts', 'block/index': 'src/block/index.ts' })
