import type { SnapshotInfo } from '../driver/driver.js'

/**
 * Whether two snapshots hold the same data: one was received from the other, or both were received
 * from the same snapshot (btrbk's `_correlated_nodes`). Without identities (rsync), the same name.
 * @example
 * sameSnapshot(sourceSnapshot, backupAtTarget) // true when the backup was received from it
 */
export const sameSnapshot = (a: SnapshotInfo, b: SnapshotInfo): boolean => {
  const x = a.identity
  const y = b.identity
  if (x === undefined || y === undefined) return a.name === b.name
  if (x.uuid === y.receivedUuid || y.uuid === x.receivedUuid) return true
  return x.receivedUuid !== undefined && x.receivedUuid === y.receivedUuid
}

/** A source snapshot and its complete copy at a target. */
export interface CommonPair {
  readonly source: SnapshotInfo
  readonly target: SnapshotInfo
}

/** One send of a plan; `parent` is the source snapshot it is incremental against. */
export interface PlannedSend {
  readonly snapshot: SnapshotInfo
  readonly parent?: SnapshotInfo
  /** the parent's copy at the target, when it is there before the run (undefined when sent earlier in this run) */
  readonly parentAtTarget?: SnapshotInfo
}

export interface SendPlan {
  readonly sends: readonly PlannedSend[]
  /** the newest snapshot the source and the target both hold: the next incremental's parent */
  readonly newestCommon?: CommonPair
  /** why the first send is full although the target holds backups of this job */
  readonly fullBecause?: string
}

/**
 * What a target lacks and how to send it. Identity is by uuid ({@link sameSnapshot}), never by name.
 * When the target holds a copy of a source snapshot, every newer source snapshot is sent, oldest
 * first, each incremental against the one before (a target that missed runs catches up without a
 * full send); older snapshots it lacks are not sent again (its retention may have removed them).
 * When it holds none, only the newest snapshot is sent, in full, and `fullBecause` says why.
 *
 * @param source the job's complete snapshots at the source, oldest first
 * @param target the job's complete backups at the target, oldest first
 * @example
 * planSends(sourceSnapshots, targetBackups).sends.map((s) => `${s.snapshot.name} <- ${s.parent?.name ?? 'full'}`)
 */
export const planSends = (source: readonly SnapshotInfo[], target: readonly SnapshotInfo[]): SendPlan => {
  let newestCommon: CommonPair | undefined
  let index = -1
  source.forEach((s, i) => {
    const copy = target.find((t) => sameSnapshot(s, t))
    if (copy !== undefined) {
      newestCommon = { source: s, target: copy }
      index = i
    }
  })
  const newest = source.at(-1)
  if (newest === undefined) return { sends: [] }
  if (newestCommon === undefined) {
    const fullBecause = target.length === 0
      ? undefined
      : `none of the ${target.length} backups at the target is a copy of a snapshot still at the source`
    return { sends: [{ snapshot: newest }], ...(fullBecause === undefined ? {} : { fullBecause }) }
  }
  const sends: PlannedSend[] = []
  let parent: SnapshotInfo = newestCommon.source
  let parentAtTarget: SnapshotInfo | undefined = newestCommon.target
  for (const s of source.slice(index + 1)) {
    sends.push({ snapshot: s, parent, ...(parentAtTarget === undefined ? {} : { parentAtTarget }) })
    parent = s
    parentAtTarget = undefined
  }
  return { sends, newestCommon }
}
