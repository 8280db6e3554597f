import { describe, expect, it } from 'vitest'
import { progress2 } from '../src/rsync/rsync-driver.js'

// `rsync -a --info=progress2` (rsync 3.2.7) as printed on this project's test machine, with and
// without --no-human-readable; each line ends in a carriage return, which the line reader splits on
describe('progress2: a line of rsync --info=progress2', () => {
  it('reads bytes, percent, rate and time left, with or without digit separators', () => {
    expect(progress2('     10,518,528  35%    9.78MB/s    0:00:01  ')).toEqual({ bytes: 10_518_528, percent: 35, rate: '9.78MB/s', eta: '0:00:01' })
    expect(progress2('       30000000 100%    9.97MB/s    0:00:02 (xfr#1, to-chk=0/2)')).toEqual({ bytes: 30_000_000, percent: 100, rate: '9.97MB/s', eta: '0:00:02' })
    expect(progress2('         32,768   0%    0.00kB/s    0:00:00  ')).toEqual({ bytes: 32_768, percent: 0, rate: '0.00kB/s', eta: '0:00:00' })
  })
  it('is undefined for any other line rsync prints', () => {
    expect(progress2('sending incremental file list')).toBeUndefined()
    expect(progress2('Number of files: 3 (reg: 2, dir: 1)')).toBeUndefined()
    expect(progress2('')).toBeUndefined()
  })
})
