import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, readlink, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { scanChunks, type ScanHandlers } from '../src/block/chunk-scan.js'
import { openHashPool, type HashPool } from '../src/block/hash-pool.js'
import { Stop } from '../src/block/stop.js'

// the chunk scan on real files: each chunk read, hashed and written (or handed back) on a pool thread
const KiB = 1024
const CHUNK = 512 * KiB
const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest()
/** this process's open files under `dir` (not all its descriptors: a pool thread that starts holds some of its own) */
const openFiles = async (dir: string): Promise<string[]> => {
  const fds = await readdir('/proc/self/fd')
  const links = await Promise.all(fds.map((fd) => readlink(join('/proc/self/fd', fd)).catch(() => '')))
  return links.filter((l) => l.startsWith(`${dir}/`))
}

/** what the handlers heard, by chunk index */
const listen = () => {
  const heard = new Map<number, { kind: 'zero' } | { kind: 'data'; digest: string; chunk: string | undefined; written: number }>()
  const handlers: ScanHandlers = {
    zero: (index) => void heard.set(index, { kind: 'zero' }),
    data: (index, chunk, digest, written) => void heard.set(index, { kind: 'data', digest: digest.toString('hex'), chunk: chunk === undefined ? undefined : sha256(chunk).toString('hex'), written }),
  }
  return { heard, handlers }
}

describe('scanChunks', () => {
  let dir: string
  let pool: HashPool
  // chunk 0 data; chunk 1 a 128 KiB slice of data between zeros (written zeros, not a hole); chunk 2 zeros
  const image = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(128 * KiB), randomBytes(128 * KiB), Buffer.alloc(256 * KiB), Buffer.alloc(CHUNK)])
  const chunkOf = (i: number): Buffer => image.subarray(i * CHUNK, (i + 1) * CHUNK)
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bbackup-scan-'))
    pool = openHashPool(2)
    await writeFile(join(dir, 'source'), image)
  })
  afterEach(async () => {
    await pool.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('writes a chunk into a hole as it reads it, all but its slices of zeros, and closes what it opened', async () => {
    const target = join(dir, 'target')
    await writeFile(target, '')
    await truncate(target, image.length)
    const { heard, handlers } = listen()
    const counts = await scanChunks({ path: join(dir, 'source'), size: image.length, chunkSize: CHUNK, pool, signal: undefined, writeTo: target, known: () => undefined }, handlers)
    expect(await openFiles(dir)).toEqual([])
    expect(counts).toMatchObject({ bytesRead: 3 * CHUNK, chunksRead: 3, zeroChunks: 1 })
    expect(heard.get(0)).toEqual({ kind: 'data', digest: sha256(chunkOf(0)).toString('hex'), chunk: undefined, written: CHUNK })
    // the digest is of the whole chunk, its zeros included; only its slice of data was written
    expect(heard.get(1)).toEqual({ kind: 'data', digest: sha256(chunkOf(1)).toString('hex'), chunk: undefined, written: 128 * KiB })
    expect(heard.get(2)).toEqual({ kind: 'zero' })
    expect((await readFile(target)).equals(image)).toBe(true)
  })

  it('writes a chunk where the image holds other bytes only when it differs from what is known, and whole', async () => {
    const target = join(dir, 'target')
    // the parent: chunk 0 other bytes, chunk 1 the same, chunk 2 data that became zeros
    const parent = Buffer.concat([randomBytes(CHUNK), chunkOf(1), randomBytes(CHUNK)])
    await writeFile(target, parent)
    const known = (i: number): Buffer => sha256(parent.subarray(i * CHUNK, (i + 1) * CHUNK))
    const { heard, handlers } = listen()
    await scanChunks({ path: join(dir, 'source'), size: image.length, chunkSize: CHUNK, pool, signal: undefined, writeTo: target, known }, handlers)
    expect(heard.get(0)).toMatchObject({ kind: 'data', written: CHUNK })
    expect(heard.get(1)).toMatchObject({ kind: 'data', written: 0 })
    // a chunk that became zeros is the caller's to punch: the scan says so and writes nothing
    expect(heard.get(2)).toEqual({ kind: 'zero' })
    const now = await readFile(target)
    expect(now.subarray(0, 2 * CHUNK).equals(image.subarray(0, 2 * CHUNK))).toBe(true)
    expect(now.subarray(2 * CHUNK).equals(parent.subarray(2 * CHUNK))).toBe(true)
  })

  it('hands back the bytes of each chunk that differs from what is known, and of every chunk with nothing known', async () => {
    const { heard, handlers } = listen()
    await scanChunks({ path: join(dir, 'source'), size: image.length, chunkSize: CHUNK, pool, signal: undefined, deliver: true, known: (i) => (i === 0 ? sha256(chunkOf(0)) : undefined) }, handlers)
    expect(heard.get(0)).toMatchObject({ kind: 'data', chunk: undefined, written: 0 })
    expect(heard.get(1)).toMatchObject({ kind: 'data', chunk: sha256(chunkOf(1)).toString('hex'), written: 0 })
    const again = listen()
    await scanChunks({ path: join(dir, 'source'), size: image.length, chunkSize: CHUNK, pool, signal: undefined, deliver: true }, again.handlers)
    expect(again.heard.get(0)).toMatchObject({ kind: 'data', chunk: sha256(chunkOf(0)).toString('hex') })
  })

  it('fails with what went wrong, the path and the fix, and closes what it opened', async () => {
    const failure = async (run: Promise<unknown>) => {
      const e = await run.then(() => undefined, (error: unknown) => error)
      expect(e).toBeInstanceOf(Stop)
      return (e as Stop).error
    }
    // a source shorter than its size: it shrank while it was read
    const shrank = await failure(scanChunks({ path: join(dir, 'source'), size: image.length + CHUNK, chunkSize: CHUNK, pool, signal: undefined }, listen().handlers))
    expect(shrank).toMatchObject({ code: 'SOURCE_UNAVAILABLE', message: expect.stringContaining(`ended at ${image.length} bytes`) })
    const gone = await failure(scanChunks({ path: join(dir, 'source'), size: image.length, chunkSize: CHUNK, pool, signal: undefined, writeTo: join(dir, 'missing') }, listen().handlers))
    expect(gone).toMatchObject({ code: 'NOT_FOUND', message: expect.stringContaining(join(dir, 'missing')) })
    expect(await openFiles(dir)).toEqual([])
  })
})
