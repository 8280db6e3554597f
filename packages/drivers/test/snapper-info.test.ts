import { describe, expect, it } from 'vitest'
import { parseSnapperInfo } from '../src/btrfs/snapper.js'

/** an info.xml as snapper 0.10 writes it (`snapper create -d first -c timeline`) */
const written = `<?xml version="1.0"?>
<snapshot>
  <type>single</type>
  <num>1</num>
  <date>2026-11-25 13:44:03</date>
  <description>first</description>
  <cleanup>timeline</cleanup>
</snapshot>
`

describe('parseSnapperInfo', () => {
  it("reads snapper's info.xml: number, type, the date as UTC, description and cleanup", () => {
    expect(parseSnapperInfo(written)).toEqual({ number: 1, type: 'single', date: new Date('2026-11-25T13:44:03Z'), description: 'first', cleanup: 'timeline' })
  })

  it('reads a post snapshot without description or cleanup, and unescapes a description', () => {
    const post = '<snapshot>\n  <type>post</type>\n  <num>12</num>\n  <date>2024-02-29 23:59:59</date>\n  <pre_num>11</pre_num>\n</snapshot>\n'
    expect(parseSnapperInfo(post)).toEqual({ number: 12, type: 'post', date: new Date('2024-02-29T23:59:59Z') })
    expect(parseSnapperInfo(written.replace('first', 'zypp(zypper) &lt;install&gt; &amp; more'))?.description).toBe('zypp(zypper) <install> & more')
  })

  it('is undefined for what snapper did not write whole: no number, number 0 (the live system), an unknown type, an impossible date', () => {
    expect(parseSnapperInfo(written.replace('<num>1</num>', ''))).toBeUndefined()
    expect(parseSnapperInfo(written.replace('<num>1</num>', '<num>0</num>'))).toBeUndefined()
    expect(parseSnapperInfo(written.replace('single', 'other'))).toBeUndefined()
    expect(parseSnapperInfo(written.replace('2026-11-25 13:44:03', '2026-02-30 13:44:03'))).toBeUndefined()
    expect(parseSnapperInfo(written.replace('2026-11-25 13:44:03', '2026-11-25 24:00:00'))).toBeUndefined()
    expect(parseSnapperInfo(written.replace('2026-11-25 13:44:03', '2026-11-25'))).toBeUndefined()
    expect(parseSnapperInfo('')).toBeUndefined()
  })
})
