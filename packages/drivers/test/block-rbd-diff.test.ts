import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openHashPool, type HashPool } from '../src/block/hash-pool.js'
import { formatRbdSource, isRbdSource, parseRbdSource } from '../src/block/rbd.js'
import { RBD_DIFF_HEADER, scanRbdDiff } from '../src/block/rbd-diff.js'
import { Stop } from '../src/block/stop.js'

// `rbd export-diff` streams read into chunks; the integration test (block-rbd) reads real ones from a real cluster
const CHUNK = 64 * 1024
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

type Record = { readonly kind: 'w'; readonly offset: number; readonly data: Buffer } | { readonly kind: 'z'; readonly offset: number; readonly length: number }

/** a v1 stream as Ceph's doc/dev/rbd-diff.rst lays it out */
const encode = (size: number, records: readonly Record[], options: { readonly end?: boolean } = {}): Buffer => {
  const u64 = (n: number): Buffer => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(n))
    return b
  }
  const name = Buffer.from('snap')
  const parts = [Buffer.from(RBD_DIFF_HEADER), Buffer.from('t'), Buffer.from([name.length, 0, 0, 0]), name, Buffer.from('s'), u64(size)]
  for (const r of records) {
    parts.push(r.kind === 'w' ? Buffer.concat([Buffer.from('w'), u64(r.offset), u64(r.data.length), r.data]) : Buffer.concat([Buffer.from('z'), u64(r.offset), u64(r.length)]))
  }
  if (options.end !== false) parts.push(Buffer.from('e'))
  return Buffer.concat(parts)
}

/** the stream cut into pieces of `piece` bytes, as a pipe hands them */
const streamOf = (bytes: Buffer, piece: number): Readable => {
  const pieces: Buffer[] = []
  for (let at = 0; at < bytes.length; at += piece) pieces.push(bytes.subarray(at, at + piece))
  return Readable.from(pieces)
}

/** what each chunk became: unchanged, zero, or data with the digest handed on and the bytes' own */
const scan = async (pool: HashPool, bytes: Buffer, size: number, piece: number, parent?: Buffer) => {
  const heard = new Map<number, string>()
  const counts = await scanRbdDiff({
    stream: streamOf(bytes, piece), what: 'rbd:rbd/vm1@s', size, chunkSize: CHUNK, pool, signal: undefined,
    ...(parent === undefined ? {} : { base: async (index: number, buffer: Buffer, length: number) => void parent.copy(buffer, 0, index * CHUNK, index * CHUNK + length) }),
  }, {
    unchanged: (index) => void heard.set(index, 'unchanged'),
    zero: (index) => void heard.set(index, 'zero'),
    data: (index, chunk, digest) => {
      if (chunk === undefined || sha256(chunk) !== digest.toString('hex')) throw new Error(`chunk ${index}: its digest is not of its bytes`)
      heard.set(index, digest.toString('hex'))
    },
  })
  return { heard, counts }
}

const stopped = async (body: Promise<unknown>): Promise<string> => {
  try {
    await body
  } catch (e) {
    if (e instanceof Stop) return `${e.error.code}: ${e.error.message}`
    throw e
  }
  throw new Error('expected a Stop')
}

describe('scanRbdDiff', () => {
  let pool: HashPool
  beforeAll(() => {
    pool = openHashPool(2)
  })
  afterAll(async () => {
    await pool.close()
  })

  it('makes each chunk what the image is after the records, over the parent or over zeros, whatever the pieces the pipe hands', async () => {
    const size = 9 * CHUNK + 1000
    const region = fc.record({ chunk: fc.nat(9), at: fc.nat(CHUNK - 1), length: fc.integer({ min: 1, max: 2 * CHUNK }), zero: fc.boolean(), byte: fc.integer({ min: 1, max: 255 }) })
    await fc.assert(fc.asyncProperty(fc.array(region, { maxLength: 8 }), fc.boolean(), fc.integer({ min: 1, max: 3 * CHUNK }), async (regions, fromParent, piece) => {
      const parent = Buffer.alloc(size)
      for (let i = 0; i < size; i++) parent[i] = (i * 7 + 3) % 251
      // rbd writes records in the order of their offsets, not overlapping
      const records: Record[] = []
      let end = 0
      for (const r of [...regions].sort((a, b) => a.chunk * CHUNK + a.at - (b.chunk * CHUNK + b.at))) {
        const offset = Math.max(end, r.chunk * CHUNK + r.at)
        const length = Math.min(r.length, size - offset)
        if (length <= 0) continue
        records.push(r.zero ? { kind: 'z', offset, length } : { kind: 'w', offset, data: Buffer.alloc(length, r.byte) })
        end = offset + length
      }
      const expected = fromParent ? Buffer.from(parent) : Buffer.alloc(size)
      const touched = new Set<number>()
      for (const r of records) {
        const length = r.kind === 'w' ? r.data.length : r.length
        if (r.kind === 'w') r.data.copy(expected, r.offset)
        else expected.fill(0, r.offset, r.offset + length)
        for (let c = Math.floor(r.offset / CHUNK); c * CHUNK < r.offset + length; c++) touched.add(c)
      }
      const { heard, counts } = await scan(pool, encode(size, records), size, piece, fromParent ? parent : undefined)
      for (let c = 0; c * CHUNK < size; c++) {
        const bytes = expected.subarray(c * CHUNK, (c + 1) * CHUNK)
        const want = !touched.has(c) ? (fromParent ? 'unchanged' : 'zero') : bytes.equals(Buffer.alloc(bytes.length)) ? 'zero' : sha256(bytes)
        expect(heard.get(c), `chunk ${c}`).toBe(want)
      }
      expect(heard.size).toBe(10)
      expect(counts.bytesRead).toBe(records.reduce((n, r) => n + (r.kind === 'w' ? r.data.length : 0), 0))
      expect(fromParent ? counts.bytesUnchanged : counts.bytesSkipped).toBe([...Array(10).keys()].filter((c) => !touched.has(c)).reduce((n, c) => n + Math.min(CHUNK, size - c * CHUNK), 0))
    }), { numRuns: 60 })
  })

  it('refuses a stream it cannot trust: records out of order, past the end, cut short, another size or format', async () => {
    const size = 4 * CHUNK
    const w = (offset: number, length = 10): Record => ({ kind: 'w', offset, data: Buffer.alloc(length, 1) })
    expect(await stopped(scan(pool, encode(size, [w(2 * CHUNK), w(0)]), size, 4096))).toMatch(/SOURCE_UNAVAILABLE: .*out of order/)
    expect(await stopped(scan(pool, encode(size, [w(size - 5)]), size, 4096))).toMatch(/past the image's/)
    expect(await stopped(scan(pool, encode(size, [w(0)], { end: false }), size, 4096))).toMatch(/ended before its end record/)
    expect(await stopped(scan(pool, encode(size, [w(0, 100)]).subarray(0, 60), size, 4096))).toMatch(/ended inside the data/)
    expect(await stopped(scan(pool, encode(size + 1, []), size, 4096))).toMatch(/an image of 262145 bytes, not 262144/)
    expect(await stopped(scan(pool, Buffer.concat([Buffer.from('rbd diff v2\n'), Buffer.from('e')]), size, 4096))).toMatch(/not "rbd diff v1\\n"/)
    expect(await stopped(scan(pool, Buffer.alloc(0), size, 4096))).toMatch(/it is empty/)
    expect(await stopped(scan(pool, Buffer.concat([encode(size, []).subarray(0, -1), Buffer.from('q')]), size, 4096))).toMatch(/unknown kind "q"/)
  })
})

describe('RBD sources', () => {
  it('reads qemu\'s spelling, with a namespace, the cluster\'s conf and the user, and writes it back the same', () => {
    for (const text of ['rbd:rbd/vm1', 'rbd:vms/tenant-a/vm1.disk0', 'rbd:rbd/vm1:conf=/etc/ceph/backup.conf:id=backup']) {
      expect(formatRbdSource(parseRbdSource(text)._unsafeUnwrap())).toBe(text)
    }
    expect(parseRbdSource('rbd:vms/tenant-a/vm1:id=backup')._unsafeUnwrap()).toEqual({ kind: 'rbd', pool: 'vms', namespace: 'tenant-a', image: 'vm1', id: 'backup' })
    // rbd:/path is a path on a host called rbd, not an image
    expect(isRbdSource('rbd:/var/lib/vm1.img')).toBe(false)
  })

  it('refuses what is not an image of a pool, naming the part and the spelling', () => {
    const said = (text: string): string => {
      const r = parseRbdSource(text)
      if (r.isOk()) throw new Error(`${text} was taken`)
      expect(r.error.code).toBe('INVALID_LOCATION')
      expect(r.error.hint).toContain('rbd:POOL/IMAGE')
      return r.error.message
    }
    expect(said('rbd:vm1')).toContain('"vm1" is not POOL/IMAGE')
    expect(said('rbd:a/b/c/d')).toContain('is not POOL/IMAGE')
    expect(said('rbd:rbd/-vm1')).toContain('"-vm1" is not a name')
    expect(said('rbd:rbd/vm1@snap')).toContain('"vm1@snap" is not a name')
    expect(said('rbd:rbd//vm1')).toContain('a part of it is empty')
    expect(said('rbd:rbd/vm1:mon_host=1.2.3.4')).toContain('"mon_host=1.2.3.4" is not one of conf=…, id=…')
    expect(said('rbd:rbd/vm1:conf=ceph.conf')).toContain('not an absolute path')
    expect(said('rbd:rbd/vm1:id=a:id=b')).toContain('id is given twice')
  })
})
