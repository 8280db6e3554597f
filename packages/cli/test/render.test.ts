import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { formatClock, progressLine, shellLine } from '../src/render.js'

describe('shellLine: a command as the report prints it', () => {
  it('quotes the words a shell would take apart, and sh reads every word back as it was', () => {
    const argv = ['rsync', '-a', '-e', 'ssh -F "/tmp/x y/0.conf"', '--rsync-path=sudo -n rsync', "it's", '$HOME', '', 'a*b', '/srv/back ups/', '2026-11-23T001500Z']
    const line = shellLine(argv)
    expect(line).toBe(`rsync -a -e 'ssh -F "/tmp/x y/0.conf"' '--rsync-path=sudo -n rsync' 'it'\\''s' '$HOME' '' 'a*b' '/srv/back ups/' 2026-11-23T001500Z`)
    // the shell's own reading of it (the words after rsync), NUL-separated
    const read = execFileSync('sh', ['-c', `printf '%s\\0' ${line.slice('rsync '.length)}`], { encoding: 'utf8' })
    expect(read.split('\0').slice(0, -1)).toEqual(argv.slice(1))
  })
  it("leaves a pipeline's | bare", () => {
    expect(shellLine(['btrfs', 'send', '/a b', '|', 'btrfs', 'receive', '/c'])).toBe("btrfs send '/a b' | btrfs receive /c")
  })
})

describe('progressLine: a transfer\'s progress as a terminal shows it', () => {
  const base = { type: 'transfer-progress', target: '/b', snapshot: 'home.x' } as const
  it('shows what is known, with an estimate as ~, and makes nothing up', () => {
    expect(progressLine({ ...base, bytes: 1_048_576, percent: 40, expectedBytes: 2_621_440, bytesPerSecond: 524_288, etaSeconds: 3 })).toBe('40%  1.0 MiB of ~2.5 MiB  512.0 KiB/s  ETA 0:00:03')
    // no estimate (a stream from another host, or one compressed on the way): no 0%, no ETA ?
    expect(progressLine({ ...base, bytes: 367_001_600, bytesPerSecond: 104_857_600 })).toBe('350.0 MiB  100.0 MiB/s')
    expect(progressLine({ ...base, bytes: 0 })).toBe('0 B')
    // a size known for sure (a block volume's) is shown without ~
    expect(progressLine({ ...base, bytes: 1_048_576, percent: 50, expectedBytes: 2_097_152 }, 'exact')).toBe('50%  1.0 MiB of 2.0 MiB')
  })
  it('shows rsync\'s own rate and time left as rsync wrote them', () => {
    expect(progressLine({ ...base, bytes: 2048, percent: 7, rate: '1.95kB/s', eta: '0:00:41' })).toBe('7%  2.0 KiB  1.95kB/s  ETA 0:00:41')
  })
  it('writes the time left as H:MM:SS', () => {
    expect([formatClock(0), formatClock(59.4), formatClock(61), formatClock(3600 * 27 + 62)]).toEqual(['0:00:00', '0:00:59', '0:01:01', '27:01:02'])
  })
})
