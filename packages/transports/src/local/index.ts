export { localTransport } from './local-transport.js'
export { insideMountPoint, mountBackupDisk } from './backup-disk.js'
export type { BackupDiskError, MountedDisk } from './backup-disk.js'
