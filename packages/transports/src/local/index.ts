export { localTransport, type LocalTransportOptions } from './local-transport.js'
export { sudoersLine } from './sudo.js'
export { insideMountPoint, mountBackupDisk } from './backup-disk.js'
export type { BackupDiskError, MountedDisk } from './backup-disk.js'
