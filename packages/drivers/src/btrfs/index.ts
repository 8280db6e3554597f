export { btrfsDriver } from './btrfs-driver.js'
export type { BtrfsDriverOptions } from './btrfs-driver.js'
export { parseSubvolumeShow } from './subvolume.js'
export type { Subvolume } from './subvolume.js'
