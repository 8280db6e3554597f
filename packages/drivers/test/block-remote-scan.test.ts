import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { readBlockScan } from '../src/block/remote-scan.js'
import { Stop } from '../src/block/stop.js'

// the backup host's side of `bbackup-remote block-scan` (the serving side runs against real files in block-remote.test.ts)
const record = (type: string, index: number, body: Buffer = Buffer.alloc(0)): Buffer => {
  const b = Buffer.alloc(5)
  b.write(type, 0, 'latin1')
  b.writeUInt32BE(index, 1)
  return Buffer.concat([b, body])
}
const data = (index: number, bytes: Buffer): Buffer => record('D', index, Buffer.concat([createHash('sha256').update(bytes).digest(), bytes]))
const end = (bytesRead: number): Buffer => {
  const b = Buffer.alloc(16)
  b.writeBigUInt64BE(BigInt(bytesRead), 0)
  return record('E', 0, b)
}
/** the stream cut into pieces of `piece` bytes, as a pipe hands it over */
const pieces = (all: Buffer, piece: number): Readable => Readable.from(Array.from({ length: Math.ceil(all.length / piece) }, (_, i) => all.subarray(i * piece, (i + 1) * piece)))

const scan = async (stream: Buffer, piece = 7) => {
  const seen: string[] = []
  const counts = await readBlockScan({ stream: pieces(stream, piece), what: 'kvm1:/vm.img', size: 10, chunkSize: 4 }, {
    unchanged: (i, n) => void seen.push(`S${i}:${n}`),
    zero: (i, n) => void seen.push(`Z${i}:${n}`),
    data: (i, chunk, digest) => void seen.push(`D${i}:${chunk.toString()}:${digest.equals(createHash('sha256').update(chunk).digest())}`),
  })
  return { seen, counts }
}
const failure = async (stream: Buffer): Promise<string> => {
  try {
    await scan(stream)
  } catch (e) {
    if (e instanceof Stop) return e.error.message
    throw e
  }
  return 'no error'
}

describe('readBlockScan', () => {
  it('hands on each record in the order it came, however the bytes are cut, the short last chunk included', async () => {
    const stream = Buffer.concat([data(2, Buffer.from('yz')), record('S', 0), record('Z', 1), end(6)])
    for (const piece of [1, 3, 7, 1000]) {
      const { seen, counts } = await scan(stream, piece)
      expect(seen).toEqual(['D2:yz:true', 'S0:4', 'Z1:4'])
      expect(counts).toMatchObject({ bytesRead: 6, chunksRead: 3, zeroChunks: 1 })
    }
  })

  it('refuses a stream that is not a whole answer', async () => {
    const whole = [record('S', 0), record('Z', 1), data(2, Buffer.from('yz'))]
    expect(await failure(Buffer.concat(whole))).toContain('ended before its end record')
    expect(await failure(Buffer.concat([...whole.slice(0, 2), end(0)]))).toContain('1 of 3 chunks were never answered')
    expect(await failure(Buffer.concat([...whole, record('S', 1), end(0)]))).toContain('chunk 1 came twice')
    expect(await failure(Buffer.concat([...whole, record('S', 3), end(0)]))).toContain('chunk 3 is past the end')
    expect(await failure(Buffer.concat([...whole, record('X', 0), end(0)]))).toContain('an unknown record "X"')
    expect(await failure(Buffer.concat([...whole, end(0), record('S', 0)]))).toContain('bytes after the end record')
    expect(await failure(Buffer.concat([...whole, end(0), Buffer.from('S')]))).toContain('bytes after the end record')
  })
})
