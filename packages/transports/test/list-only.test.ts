import { describe, expect, it } from 'vitest'
import { parseListOnly } from '../src/rsyncd/list-only.js'

describe('parseListOnly (rsync --list-only --no-human-readable -l)', () => {
  it('reads directories, files, symlinks with their targets, names with spaces and escaped bytes', () => {
    const out = [
      'drwxr-xr-x        4096 2026/11/23 21:37:00 .',
      'lrwxrwxrwx          18 2026/11/23 21:37:14 latest -> 2026-11-23T110000Z',
      '-rw-r--r--           4 2026/11/23 21:37:00 sp ace',
      'drwx------        4096 2026/01/02 03:04:05 2026-11-23T100000Z',
      '-rw-------          12 2026/11/23 21:37:00 new\\#012line',
      'crw-rw-rw-           0 2026/11/23 21:37:00 null',
      '',
    ].join('\n')
    expect(parseListOnly(out)).toEqual([
      { name: '.', kind: 'directory', size: 4096, mtime: new Date(2026, 10, 23, 21, 37, 0) },
      { name: 'latest', kind: 'symlink', size: 18, mtime: new Date(2026, 10, 23, 21, 37, 14), linkTarget: '2026-11-23T110000Z' },
      { name: 'sp ace', kind: 'file', size: 4, mtime: new Date(2026, 10, 23, 21, 37, 0) },
      { name: '2026-11-23T100000Z', kind: 'directory', size: 4096, mtime: new Date(2026, 0, 2, 3, 4, 5) },
      { name: 'new\nline', kind: 'file', size: 12, mtime: new Date(2026, 10, 23, 21, 37, 0) },
      { name: 'null', kind: 'other', size: 0, mtime: new Date(2026, 10, 23, 21, 37, 0) },
    ])
  })

  it('skips what is not an entry: a message of the day, a module list', () => {
    expect(parseListOnly('Welcome to the backup server\nbackups        \tnightly backups\n')).toEqual([])
  })
})
