import { describe, expect, it } from 'vitest'
import { parseCrypttab } from '../src/local/crypt-disk.js'

describe('parseCrypttab', () => {
  it('reads the four fields of each line, with comments, blank lines and tabs around them', () => {
    const text = [
      '# <target name> <source device> <key file> <options>',
      '',
      'usb\tUUID=3f0c8a9e-1111-4222-8333-444455556666\t/etc/bbackup/usb.key\tluks,noauto,discard',
      '  root_crypt /dev/sda2 none luks',
      'ask PARTLABEL=backup -',
      'bare /dev/sdc1',
      'loner',
    ].join('\n')
    expect(parseCrypttab(text)).toEqual([
      { name: 'usb', source: 'UUID=3f0c8a9e-1111-4222-8333-444455556666', keyFile: '/etc/bbackup/usb.key', options: ['luks', 'noauto', 'discard'], line: 3 },
      { name: 'root_crypt', source: '/dev/sda2', keyFile: undefined, options: ['luks'], line: 4 },
      { name: 'ask', source: 'PARTLABEL=backup', keyFile: undefined, options: [], line: 5 },
      { name: 'bare', source: '/dev/sdc1', keyFile: undefined, options: [], line: 6 },
    ])
  })
})
