import { describe, expect, it } from 'vitest'
import { itemizedLine, parseItemizedDiff, unescapeRsyncName } from '../src/rsync/itemized.js'

// `rsync -an --delete --out-format='%i %l %n' NEWER/ OLDER/` (rsync 3.2.7) as printed on this
// project's test machine: OLDER had gone/x, link -> same, mod, perm (0644), sub; NEWER has link ->
// mod, mod rewritten, perm (0600), a name with a newline, newdir/y, sub with an older time
const OUTPUT = `*deleting   0 gone/x
*deleting   0 gone/
cLc........ 3 link
>f.s....... 10 mod
>f+++++++++ 2 new\\#012line
.f...p..... 2 perm
cd+++++++++ 4096 newdir/
>f+++++++++ 2 newdir/y
.d..t...... 4096 sub/
`

describe("rsync's itemized changes as a diff", () => {
  it('added, deleted, modified (data, size, a link target), metadata; a directory with new times alone is not a change', () => {
    expect(parseItemizedDiff(OUTPUT)).toEqual([
      { change: 'deleted', path: 'gone' },
      { change: 'deleted', path: 'gone/x' },
      { change: 'modified', path: 'link' },
      { change: 'modified', path: 'mod', bytes: 10 },
      { change: 'added', path: 'new\nline', bytes: 2 },
      { change: 'added', path: 'newdir' },
      { change: 'added', path: 'newdir/y', bytes: 2 },
      { change: 'metadata', path: 'perm' },
    ])
  })

  it("puts rsync's escaped bytes back, a UTF-8 name whole; its other lines and the top directory are not changes", () => {
    expect(unescapeRsyncName('caf\\#303\\#251 and \\#012')).toBe('café and \n')
    expect(unescapeRsyncName('plain # name')).toBe('plain # name')
    // a line of verify (%i %n): the name put back, the change letters kept; another line as it is
    expect(itemizedLine('>fcst...... caf\\#303\\#251\\#012')).toBe('>fcst...... café\n')
    expect(itemizedLine('*deleting   gone \\#134#')).toBe('*deleting   gone \\#')
    expect(itemizedLine('/srv/x: received from nothing')).toBe('/srv/x: received from nothing')
    expect(parseItemizedDiff('created directory /tmp/x\ncd+++++++++ 4096 ./\n>f..t...... 5 touched\n.f..t...... 5 times-only\n')).toEqual([
      { change: 'modified', path: 'touched', bytes: 5 },
    ])
  })
})
