import { definePackage } from '../../tsup.shared.ts'

export default definePackage({'index':'src/index.ts'})
