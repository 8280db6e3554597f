import { describe, expect, it } from 'vitest'
import { compressedMount, parseSubvolumeList, pathInFilesystem, swapFilesIn, throughMountOf } from '../src/btrfs/subvolume.js'

// `btrfs subvolume list -o -u -q -R` of btrfs-progs 6.2, as printed on this project's test machine
const LIST = [
  'ID 257 gen 8 top level 5 parent_uuid 69f0249d-d0d7-7a46-8455-e288e424c8c9 received_uuid -                                    uuid 1cf54ab0-4593-784d-914d-4c1978994b57 path btrbk-snaps/src.20261124T004343+0000',
  'ID 260 gen 22 top level 5 parent_uuid -                                    received_uuid b0367afd-0089-ee45-b34e-c3c163f87c7c uuid 3baf0dca-fb7c-4146-8310-8846afaf0d30 path inc/src.2026-11-24T004344Z',
  'ID 368 gen 284 top level 367 parent_uuid - received_uuid - uuid ee72a18b-fe4f-2f46-ba18-8cea05c0fadf path @data/my backups/home.2026-01-01T000000Z',
  '',
].join('\n')

describe('parseSubvolumeList', () => {
  it('reads id, generation, the three uuids (- is unset) and the path from the top level, spaces and all', () => {
    expect(parseSubvolumeList(LIST)).toEqual([
      { id: 257, generation: 8, uuid: '1cf54ab0-4593-784d-914d-4c1978994b57', parentUuid: '69f0249d-d0d7-7a46-8455-e288e424c8c9', path: 'btrbk-snaps/src.20261124T004343+0000' },
      { id: 260, generation: 22, uuid: '3baf0dca-fb7c-4146-8310-8846afaf0d30', receivedUuid: 'b0367afd-0089-ee45-b34e-c3c163f87c7c', path: 'inc/src.2026-11-24T004344Z' },
      { id: 368, generation: 284, uuid: 'ee72a18b-fe4f-2f46-ba18-8cea05c0fadf', path: '@data/my backups/home.2026-01-01T000000Z' },
    ])
  })
  it('reads the generation each was made at with -c (cgen)', () => {
    const line = 'ID 261 gen 14 cgen 13 top level 256 parent_uuid -                                    received_uuid -                                    uuid cd321d23-7aec-324e-b22c-a9b17255bdaf path home/nested'
    expect(parseSubvolumeList(line)).toEqual([{ id: 261, generation: 14, creationGeneration: 13, uuid: 'cd321d23-7aec-324e-b22c-a9b17255bdaf', path: 'home/nested' }])
  })
  it('skips what is not a line of it (a warning, the -r form without uuids)', () => {
    expect(parseSubvolumeList('WARNING: something\nID 368 gen 284 top level 367 path @data/x\n')).toEqual([])
  })
})

describe('pathInFilesystem', () => {
  const MOUNTINFO = [
    '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
    '43 22 0:39 / /mnt rw,relatime shared:2 - btrfs /dev/loop0 rw,subvolid=5,subvol=/',
    '44 22 0:39 /@data /srv/data rw,relatime shared:3 - btrfs /dev/loop0 rw,subvolid=367,subvol=/@data',
    '45 22 0:40 / /media/usb\\040disk rw - btrfs /dev/sdb1 rw',
    '46 43 0:41 / /mnt/inner rw - btrfs /dev/sdc rw',
  ].join('\n')
  it('is the way from the top level: the mount root, then the path below the mount point', () => {
    expect(pathInFilesystem(MOUNTINFO, '/mnt/backups/home')).toBe('backups/home')
    expect(pathInFilesystem(MOUNTINFO, '/mnt')).toBe('')
    expect(pathInFilesystem(MOUNTINFO, '/srv/data/backups')).toBe('@data/backups')
    expect(pathInFilesystem(MOUNTINFO, '/srv/data')).toBe('@data')
  })
  it('takes the deepest btrfs mount, and reads the escapes of mountinfo', () => {
    expect(pathInFilesystem(MOUNTINFO, '/mnt/inner/b')).toBe('b')
    expect(pathInFilesystem(MOUNTINFO, '/media/usb disk/b')).toBe('b')
    // a name that only starts like a mount point is not inside it
    expect(pathInFilesystem(MOUNTINFO, '/mntx/b')).toBeUndefined()
  })
  it('is undefined where no btrfs is mounted', () => {
    expect(pathInFilesystem(MOUNTINFO, '/home/x')).toBeUndefined()
  })
})

describe('throughMountOf', () => {
  const MOUNTINFO = [
    '43 22 0:39 / /mnt rw,relatime shared:2 - btrfs /dev/loop0 rw,subvolid=5,subvol=/',
    '44 22 0:39 /@home /home rw,relatime shared:3 - btrfs /dev/loop0 rw,subvolid=367,subvol=/@home',
    '45 22 0:40 /@pool /srv/pool rw - btrfs /dev/sdb1 rw',
  ].join('\n')
  it('is the subvolume\'s path through the mount that holds the folder', () => {
    expect(throughMountOf(MOUNTINFO, '/mnt/home/.snapshots', 'home.2026-01-01T000000Z')).toBe('/mnt/home.2026-01-01T000000Z')
    expect(throughMountOf(MOUNTINFO, '/srv/pool/home/.snapshots', '@pool/restored/home.x')).toBe('/srv/pool/restored/home.x')
    expect(throughMountOf(MOUNTINFO, '/home/.snapshots', '@home/.snapshots/home.x')).toBe('/home/.snapshots/home.x')
  })
  it('is undefined where that mount does not show it (subvol= of another part of the tree), or no btrfs holds the folder', () => {
    expect(throughMountOf(MOUNTINFO, '/home/.snapshots', 'home.2026-01-01T000000Z')).toBeUndefined()
    expect(throughMountOf(MOUNTINFO, '/home/.snapshots', '@home2/x')).toBeUndefined()
    expect(throughMountOf(MOUNTINFO, '/var/x', 'x')).toBeUndefined()
  })
})

describe('compressedMount', () => {
  const MOUNTINFO = [
    '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
    '43 22 0:39 / /home rw,relatime shared:2 - btrfs /dev/sda2 rw,compress=zstd:1,ssd,space_cache=v2,subvolid=5,subvol=/',
    '44 22 0:40 / /data rw,relatime shared:3 - btrfs /dev/sdb rw,compress-force=lzo,subvolid=5,subvol=/',
    '45 22 0:41 / /plain rw - btrfs /dev/sdc rw,space_cache=v2,subvolid=5,subvol=/',
    '46 22 0:42 / /off rw - btrfs /dev/sdd rw,compress=no,subvolid=5,subvol=/',
    '47 45 0:43 / /plain/zip rw - btrfs /dev/sde rw,compress,subvolid=5,subvol=/',
  ].join('\n')
  it('is true where the btrfs mount holding the path compresses (compress, compress=ALG, compress-force)', () => {
    expect(compressedMount(MOUNTINFO, '/home/.snapshots/home.x')).toBe(true)
    expect(compressedMount(MOUNTINFO, '/data/x')).toBe(true)
    expect(compressedMount(MOUNTINFO, '/plain/zip/x')).toBe(true)
  })
  it('is false where it does not (no option, compress=no, the deepest mount does not) and where no btrfs holds it', () => {
    expect(compressedMount(MOUNTINFO, '/plain/x')).toBe(false)
    expect(compressedMount(MOUNTINFO, '/off/x')).toBe(false)
    expect(compressedMount(MOUNTINFO, '/srv/x')).toBe(false)
  })
})

describe('swapFilesIn (/proc/swaps)', () => {
  // as Linux 6.1 prints it; a name with a space is escaped as in mountinfo
  const SWAPS = [
    'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority',
    '/dev/dm-1                               partition\t1003516\t\t0\t\t-2',
    '/home/swapfile                          file\t\t65532\t\t0\t\t-3',
    '/home/my\\040swap                        file\t\t65532\t\t0\t\t-4',
    '/homes/other                            file\t\t65532\t\t0\t\t-5',
    '',
  ].join('\n')

  it('names the swap files in use under a directory, not a partition nor a file of a directory that only starts alike', () => {
    expect(swapFilesIn(SWAPS, '/home')).toEqual(['/home/swapfile', '/home/my swap'])
    expect(swapFilesIn(SWAPS, '/')).toEqual(['/home/swapfile', '/home/my swap', '/homes/other'])
    expect(swapFilesIn(SWAPS, '/srv')).toEqual([])
    expect(swapFilesIn('', '/home')).toEqual([])
  })
})
