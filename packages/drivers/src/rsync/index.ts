export { rsyncDriver } from './rsync-driver.js'
export type { RsyncDriverOptions } from './rsync-driver.js'
export { classifyRsyncExit, RSYNC_EXIT_MEANINGS } from './exit-codes.js'
export type { RsyncOutcome } from './exit-codes.js'
