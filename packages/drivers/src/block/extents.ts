import type { Transport } from '@bb/core'
import { chunkCount } from './chunk-scan.js'

/** One extent of a file as FIEMAP tells it, in bytes: `length` bytes at `logical` in the file are at `physical` on the filesystem. */
export interface Extent {
  readonly logical: number
  readonly physical: number
  readonly length: number
  readonly flags: readonly string[]
}

/**
 * Flags of an extent whose physical address says which bytes the file holds there. Any other
 * (`encoded`: compressed, whose address is the compressed extent's start whatever part of it the
 * file uses; `inline`, `delalloc`, `unknown`, …) makes the range count as changed.
 */
const PLAIN = new Set(['last', 'shared', 'eof', 'merged', 'unwritten'])

/**
 * The extents in `filefrag -v -b1` output (byte units): `ext: logical..end: physical..end: length: [expected:] flags`.
 * Undefined when a line that should be an extent cannot be read: then nothing is taken from it.
 */
export const parseFilefrag = (output: string): Extent[] | undefined => {
  const extents: Extent[] = []
  let header = false
  for (const line of output.split('\n')) {
    if (/^\s*ext:\s+logical_offset:/.test(line)) {
      header = true
      continue
    }
    if (!header || !/^\s*\d+:/.test(line)) continue
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):\s*(?:\d+:)?\s*([\w,]*)\s*$/.exec(line)
    if (m === null) return undefined
    const [logical, logicalEnd, physical, , length] = [m[1], m[2], m[3], m[4], m[5]].map(Number) as [number, number, number, number, number]
    if (logicalEnd - logical + 1 !== length) return undefined
    extents.push({ logical, physical, length, flags: (m[6] ?? '').split(',').filter((f) => f !== '') })
  }
  return header ? extents : undefined
}

/** A file's extents from `filefrag` on its host, or undefined when they cannot be had (no filefrag, no FIEMAP). */
export const fileExtents = async (at: Transport, path: string): Promise<Extent[] | undefined> => {
  // -s: flushed first, so that a write still in the page cache shows as the extents it will have
  const r = await at.exec(['filefrag', '-s', '-v', '-b1', '--', path])
  if (r.isErr() || r.value.exitCode !== 0) return undefined
  return parseFilefrag(r.value.stdout)
}

/**
 * Which chunks of two files hold the same bytes because they are the same blocks on disk (1), from
 * their extents: over the whole chunk, each byte of one is where the same byte of the other is, or
 * both are holes. Sound only for files on one copy-on-write filesystem (btrfs, XFS with reflinks)
 * that nothing writes to (two frozen copies): a block two files share is never overwritten in
 * place, so the same address means the same bytes. An extent with a flag outside {@link PLAIN},
 * or unwritten in one file and not in the other, never counts as the same.
 */
export const sameChunks = (before: readonly Extent[], after: readonly Extent[], size: number, chunkSize: number): Uint8Array => {
  const total = chunkCount(size, chunkSize)
  const same = new Uint8Array(total).fill(1)
  const differ = (start: number, end: number): void => {
    for (let i = Math.floor(start / chunkSize); i < total && i * chunkSize < end; i++) same[i] = 0
  }
  const sorted = (xs: readonly Extent[]): Extent[] => [...xs].filter((e) => e.length > 0).sort((a, b) => a.logical - b.logical)
  const a = sorted(before)
  const b = sorted(after)
  const cuts = [...new Set([0, size, ...[...a, ...b].flatMap((e) => [e.logical, e.logical + e.length])])].filter((p) => p >= 0 && p <= size).sort((x, y) => x - y)
  const plain = (e: Extent): boolean => e.flags.every((f) => PLAIN.has(f))
  const unwritten = (e: Extent): boolean => e.flags.includes('unwritten')
  let i = 0
  let j = 0
  for (let k = 0; k + 1 < cuts.length; k++) {
    const from = cuts[k] as number
    const to = cuts[k + 1] as number
    while (i < a.length && (a[i] as Extent).logical + (a[i] as Extent).length <= from) i++
    while (j < b.length && (b[j] as Extent).logical + (b[j] as Extent).length <= from) j++
    const x = a[i] !== undefined && (a[i] as Extent).logical <= from ? a[i] : undefined
    const y = b[j] !== undefined && (b[j] as Extent).logical <= from ? b[j] : undefined
    if (x === undefined && y === undefined) continue
    if (x === undefined || y === undefined || !plain(x) || !plain(y) || unwritten(x) !== unwritten(y) || x.physical - x.logical !== y.physical - y.logical) differ(from, to)
  }
  return same
}
