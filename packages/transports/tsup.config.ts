import { definePackage } from '../../tsup.shared.ts'

export default definePackage({'local/index':'src/local/index.ts','ssh/index':'src/ssh/index.ts','ssh/filter/index':'src/ssh/filter/index.ts','rsyncd/index':'src/rsyncd/index.ts'})
