import { promises as fs } from 'node:fs'
import type { ResultAsync } from 'neverthrow'
import { bbError, type BbError, type Transport } from '@bb/core'
import { scanChunks } from './chunk-scan.js'
import { dataChunks } from './data-map.js'
import { openHashPool, type HashPool } from './hash-pool.js'
import { localDirectory, withVolumeLock } from './locked.js'
import { asResult, stop } from './stop.js'
import { paths, readHashes, readVolume, readVolumeConfig, recordedDigest, recordedZero, sealOf, selectRevisions, writeRevision, type Revision, type Seal, type Trust } from './volume.js'

export interface BlockVerifyOptions {
  readonly at: Transport
  /** revision specs (default: all) */
  readonly revisions?: readonly string[]
  /** check only chunk k of every n (k from 1): n runs with k = 1..n cover every chunk exactly once */
  readonly subset?: { readonly index: number; readonly of: number }
  readonly now?: () => Date
  readonly signal?: AbortSignal
  readonly threads?: number
  readonly waitSeconds?: number
}

export interface RevisionCheck {
  readonly uuid: string
  readonly subset: string
  readonly chunksChecked: number
  readonly bytesChecked: number
  /** byte offsets of the chunks that do not match their hashes (the first 100) */
  readonly badOffsets: readonly number[]
  readonly badChunks: number
  /** what else is wrong: a damaged hash list, a wrong image size */
  readonly problems: readonly string[]
  /** the revision's trust after this check */
  readonly trust: Trust
}

export interface BlockVerifyReport {
  readonly dir: string
  readonly checks: readonly RevisionCheck[]
  /** false when any revision was found damaged */
  readonly ok: boolean
}

const MAX_OFFSETS = 100

const parseSubsets = (subsets: readonly string[], of: number): Set<number> =>
  new Set(subsets.filter((s) => s.endsWith(`/${of}`)).map((s) => Number(s.split('/')[0])))

/** Reads a revision's chunks (or one subset of them) and compares each with its recorded hash. */
export const checkRevision = async (
  at: Transport, dir: string, revision: Revision, options: Pick<BlockVerifyOptions, 'subset' | 'signal'>, pool: HashPool,
): Promise<Omit<RevisionCheck, 'trust'>> => {
  const { index, of } = options.subset ?? { index: 1, of: 1 }
  const image = paths(dir, revision.uuid).image
  const problems: string[] = []
  const badOffsets: number[] = []
  let badChunks = 0
  const bad = (offset: number): void => {
    badChunks++
    if (badOffsets.length < MAX_OFFSETS) badOffsets.push(offset)
  }
  const hashes = await readHashes(dir, revision)
  const stats = await fs.stat(image).catch(() => undefined)
  if (stats === undefined) problems.push(`the image ${image} is missing`)
  else if (stats.size !== revision.size) problems.push(`the image is ${stats.size} bytes, the revision ${revision.size}`)
  if (hashes === undefined) problems.push(`the chunk hashes (${paths(dir, revision.uuid).hashes}) are missing or do not match the digest in the metadata`)
  if (hashes === undefined || stats === undefined || stats.size !== revision.size) {
    return { uuid: revision.uuid, subset: `${index}/${of}`, chunksChecked: 0, bytesChecked: 0, badOffsets, badChunks, problems }
  }
  // holes in the image are zeros on any disk: only chunks with data can rot
  const dataMap = await dataChunks(at, image, revision.size, revision.chunkSize)
  const counts = await scanChunks({ path: image, size: revision.size, chunkSize: revision.chunkSize, pool, signal: options.signal, select: (i) => i % of === index - 1, dataMap }, {
    zero: (i) => {
      if (!recordedZero(hashes, i)) bad(i * revision.chunkSize)
    },
    data: (i, _chunk, digest) => {
      if (!recordedDigest(hashes, i, digest)) bad(i * revision.chunkSize)
    },
  })
  badOffsets.sort((a, b) => a - b)
  return { uuid: revision.uuid, subset: `${index}/${of}`, chunksChecked: counts.chunksRead, bytesChecked: counts.bytesRead + counts.bytesSkipped, badOffsets, badChunks, problems }
}

/** What a check (`by`: a verify, or the one before a backup) found, in one line: the first problem, or where the bad chunks are. */
const damageReason = (check: Omit<RevisionCheck, 'trust'>, by: string): string =>
  check.problems.length > 0 ? `${by} found that ${check.problems[0] ?? ''}`
    : `${by} found ${check.badChunks} bad chunk${check.badChunks === 1 ? '' : 's'}, at byte ${check.badOffsets.slice(0, 3).join(', ')}${check.badChunks > 3 ? ', …' : ''}`

export const isDamaged = (check: Omit<RevisionCheck, 'trust'>): boolean => check.badChunks > 0 || check.problems.length > 0

/**
 * Writes what a check of `subset` found into the revision's metadata and returns its trust after
 * it: damage distrusts it; all its chunks checked clean, in this check or with the subsets before,
 * verifies it. `seal`: the image's, taken before a whole check, which seals it when it was clean;
 * `by`: what checked, in the reason of a distrust.
 */
export const recordCheck = async (
  at: Transport, dir: string, revision: Revision, check: Omit<RevisionCheck, 'trust'>, subset: { readonly index: number; readonly of: number }, now: Date,
  found: { readonly seal?: Seal | undefined; readonly by: string },
): Promise<Trust> => {
  const damaged = isDamaged(check)
  const label = `${subset.index}/${subset.of}`
  const passed = damaged ? [] : [...new Set([...(revision.verification?.subsets ?? []).filter((s) => s.endsWith(`/${subset.of}`)), label])]
  const whole = passed.includes('1/1') || parseSubsets(passed, subset.of).size === subset.of
  const trust: Trust = damaged ? 'distrusted' : whole ? 'verified' : revision.trust
  const checkedAt = now.toISOString()
  const { distrust: before, sealed: was, ...rest } = revision
  // damage found now is the reason; a clean subset keeps the reason of a revision that stays distrusted
  const distrust = damaged ? { at: checkedAt, by: 'verify' as const, reason: damageReason(check, found.by) } : trust === 'distrusted' ? before : undefined
  const sealed = !damaged && subset.of === 1 && found.seal !== undefined ? found.seal : was
  await writeRevision(at, dir, {
    ...rest, trust,
    verification: { checkedAt, subsets: whole ? ['1/1'] : passed, ...(damaged ? { badOffsets: check.badOffsets } : {}) },
    ...(distrust === undefined ? {} : { distrust }),
    ...(sealed === undefined ? {} : { sealed }),
  })
  return trust
}

/**
 * Scrubs revisions: reads every chunk (or one subset of them) and checks it against its recorded
 * SHA-256. A damaged revision is marked distrusted (never again a parent; restore refuses it
 * without force); one whose chunks have all been checked clean, in one run or in subsets, is
 * marked verified. The result of every check is written into the revision's metadata.
 * @example
 * const r = await verifyVolume({ at: localTransport('/srv/backy/vm1'), revisions: ['latest'] })
 */
export const verifyVolume = (options: BlockVerifyOptions): ResultAsync<BlockVerifyReport, BbError> =>
  asResult(async () => {
    const dir = localDirectory(options.at)
    const subset = options.subset ?? { index: 1, of: 1 }
    if (!Number.isInteger(subset.of) || !Number.isInteger(subset.index) || subset.of < 1 || subset.index < 1 || subset.index > subset.of) {
      return stop(bbError('INVALID_OPTIONS', `--subset ${subset.index}/${subset.of} is not a subset`, 'give k/n with 1 <= k <= n, e.g. 1/4, then 2/4, 3/4 and 4/4 in later runs'))
    }
    await readVolumeConfig(options.at, dir)
    return withVolumeLock(options.at, 'verify', options, async () => {
      const { revisions } = await readVolume(options.at, dir)
      const chosen = new Map<string, Revision>()
      for (const spec of options.revisions ?? ['all']) for (const r of selectRevisions(spec, revisions)) chosen.set(r.uuid, r)
      const pool = openHashPool(options.threads)
      const checks: RevisionCheck[] = []
      try {
        for (const revision of [...chosen.values()].sort((a, b) => a.timestamp.localeCompare(b.timestamp))) {
          // taken before the read: a write to the image during it shows as a change the next time
          const seal = subset.of === 1 ? await sealOf(paths(dir, revision.uuid).image) : undefined
          const check = await checkRevision(options.at, dir, revision, options, pool)
          const trust = await recordCheck(options.at, dir, revision, check, subset, (options.now ?? (() => new Date()))(), { seal, by: 'a verify' })
          checks.push({ ...check, trust })
        }
      } finally {
        await pool.close()
      }
      return { dir, checks, ok: checks.every((c) => !isDamaged(c)) }
    })
  })
