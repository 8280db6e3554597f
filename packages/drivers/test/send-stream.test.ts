import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SEND_COMMANDS as C, SendStreamError, SendStreamReader, type SendCommand } from '../src/btrfs/send-stream.js'
import { StreamDiff } from '../src/btrfs/stream-diff.js'

// send streams written here as btrfs-progs' kernel-shared/send.h lays them out; the commands of
// each case are the ones `btrfs send --no-data -p` printed (through `btrfs receive --dump`) on this
// project's test machine for the same change
const u16 = (n: number): Buffer => Buffer.from([n & 0xff, n >> 8])
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}
const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(n))
  return b
}
const attr = (type: number, value: Buffer): Buffer => Buffer.concat([u16(type), u16(value.length), value])
const PATH = 15
const PATH_TO = 16
const PATH_LINK = 17
const cmd = (c: number, ...attrs: Buffer[]): Buffer => {
  const body = Buffer.concat(attrs)
  return Buffer.concat([u32(body.length), u16(c), u32(0), body])
}
const p = (path: string): Buffer => attr(PATH, Buffer.from(path))
const stream = (...cmds: Buffer[]): Buffer => Buffer.concat([Buffer.from('btrfs-stream\0', 'latin1'), u32(1), cmd(C.snapshot), ...cmds, cmd(C.end)])

const rename = (from: string, to: string): Buffer => cmd(C.rename, p(from), attr(PATH_TO, Buffer.from(to)))
const link = (path: string, to: string): Buffer => cmd(C.link, p(path), attr(PATH_LINK, Buffer.from(to)))
const extent = (path: string, length: number): Buffer => cmd(C.updateExtent, p(path), attr(18, u64(0)), attr(4, u64(length)))

const changes = (bytes: Buffer) => {
  const diff = new StreamDiff()
  const reader = new SendStreamReader((c) => diff.add(c))
  reader.push(bytes)
  reader.end()
  return diff.entries()
}

describe('reading a send stream', () => {
  it('gives the commands in order, whatever the chunks it arrives in', () => {
    const bytes = stream(cmd(C.mkfile, p('o257-7-0')), rename('o257-7-0', 'dir/new file'), extent('dir/new file', 4096), cmd(C.unlink, p('gone')))
    const whole: SendCommand[] = []
    const r = new SendStreamReader((c) => whole.push(c))
    r.push(bytes)
    r.end()
    expect(whole.map((c) => c.cmd)).toEqual([C.snapshot, C.mkfile, C.rename, C.updateExtent, C.unlink])
    expect(whole[2]).toMatchObject({ path: 'o257-7-0', pathTo: 'dir/new file' })
    expect(whole[3]).toMatchObject({ path: 'dir/new file', length: 4096 })
    fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 12 }), (cuts) => {
      const got: SendCommand[] = []
      const reader = new SendStreamReader((c) => got.push(c))
      let from = 0
      for (const at of [...cuts].sort((a, b) => a - b)) {
        reader.push(bytes.subarray(from, at))
        from = at
      }
      reader.push(bytes.subarray(from))
      reader.end()
      expect(got).toEqual(whole)
    }))
  })

  it('refuses what is not a whole send stream', () => {
    const bytes = stream(cmd(C.unlink, p('a')))
    const read = (b: Buffer) => () => {
      const r = new SendStreamReader(() => undefined)
      r.push(b)
      r.end()
    }
    expect(read(Buffer.from('not a stream at all'))).toThrow(SendStreamError)
    expect(read(bytes.subarray(0, bytes.length - 3))).toThrow(/inside a command/)
    expect(read(bytes.subarray(0, bytes.length - 10))).toThrow(/before its end command/)
    expect(read(Buffer.alloc(0))).toThrow(/empty/)
    expect(read(Buffer.concat([bytes, cmd(C.unlink, p('b'))]))).toThrow(/after its end/)
  })
})

describe('what changed, from the commands', () => {
  it('a new file, a deleted one, a renamed directory with a changed file in it, a chmod', () => {
    expect(changes(stream(
      rename('d6', 'd6r'), extent('d6r/f6', 3618),
      cmd(C.unlink, p('d3/f3')), cmd(C.utimes, p('d3')),
      cmd(C.chmod, p('d4/f4')), cmd(C.utimes, p('d4/f4')),
      cmd(C.mkdir, p('o2308-193-0')), rename('o2308-193-0', 'newdir'), cmd(C.chmod, p('newdir')),
      cmd(C.mkfile, p('o2309-193-0')), rename('o2309-193-0', 'newdir/a'), extent('newdir/a', 3),
      cmd(C.utimes, p('')), cmd(C.utimes, p('newdir')),
    ))).toEqual([
      { change: 'deleted', path: 'd3/f3' },
      { change: 'metadata', path: 'd4/f4' },
      { change: 'renamed', path: 'd6r', from: 'd6' },
      { change: 'modified', path: 'd6r/f6', bytes: 3618 },
      { change: 'added', path: 'newdir' },
      { change: 'added', path: 'newdir/a', bytes: 3 },
    ])
  })

  it('two names swapped, a file moved by link and unlink, an edited file saved as a new one, a deleted tree', () => {
    expect(changes(stream(
      // mv a t; mv b a; mv t b
      rename('b', 'o2312-194-0'), link('b', 'a'), cmd(C.unlink, p('a')), rename('o2312-194-0', 'a'),
      // rm -r tree
      rename('tree', 'o2313-194-0'), rename('o2313-194-0/sub', 'o2314-194-0'), cmd(C.rmdir, p('o2313-194-0')), cmd(C.unlink, p('o2314-194-0/x')), cmd(C.rmdir, p('o2314-194-0')),
      // ln keep hard; mkdir nd; mv keep nd/keep
      link('hard', 'keep'), cmd(C.mkdir, p('o2319-195-0')), link('o2319-195-0/keep', 'keep'), cmd(C.unlink, p('keep')),
      // echo new > edit.new; mv edit.new edit
      cmd(C.unlink, p('edit')), cmd(C.mkfile, p('o2318-195-0')), rename('o2318-195-0', 'edit'), extent('edit', 4),
      rename('o2319-195-0', 'nd'),
      cmd(C.symlink, p('o2320-195-0'), attr(PATH_LINK, Buffer.from('nd/keep'))), rename('o2320-195-0', 'sym'),
    ))).toEqual([
      { change: 'renamed', path: 'a', from: 'b' },
      { change: 'renamed', path: 'b', from: 'a' },
      { change: 'modified', path: 'edit', bytes: 4 },
      { change: 'added', path: 'hard' },
      { change: 'added', path: 'nd' },
      { change: 'renamed', path: 'nd/keep', from: 'keep' },
      { change: 'added', path: 'sym' },
      { change: 'deleted', path: 'tree' },
      { change: 'deleted', path: 'tree/sub' },
      { change: 'deleted', path: 'tree/sub/x' },
    ])
  })

  it('what was made and deleted again between the two is no change, nor are new times alone', () => {
    expect(changes(stream(
      cmd(C.mkfile, p('o300-9-0')), extent('o300-9-0', 10), cmd(C.unlink, p('o300-9-0')),
      cmd(C.utimes, p('docs/touched')), cmd(C.utimes, p('docs')), cmd(C.chown, p('docs/owned')),
    ))).toEqual([{ change: 'metadata', path: 'docs/owned' }])
  })
})
