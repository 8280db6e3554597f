import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { shellLine } from '../src/render.js'

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
