import { definePackage } from '../../tsup.shared.ts'

export default definePackage({'rsync/index':'src/rsync/index.ts'})
