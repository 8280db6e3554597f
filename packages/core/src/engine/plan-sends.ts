import type { Incremental, SnapshotInfo } from '../driver/driver.js'
import { parseSnapshotName } from '../names/snapshot-name.js'
import { planRetention, type RetentionSnapshot } from '../retention/plan.js'
import type { RetentionPolicy } from '../retention/policy.js'

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
  /** why the first send is full although the target holds backups of this job (none in common, or the newest copy cannot be restored) */
  readonly fullBecause?: string
  /** `incremental: 'strict'` and a send would be full: why the target gets none of `sends` */
  readonly refused?: string
}

export interface PlanOptions {
  /**
   * For a target that holds no copy of any source snapshot (a new one): which source snapshots it
   * gets, oldest first, the newest among them ({@link keptByRetention}). Without it, the newest alone.
   */
  readonly backfill?: (source: readonly SnapshotInfo[], target: readonly SnapshotInfo[]) => readonly SnapshotInfo[]
  /**
   * For a target that holds a copy and missed runs: which of the source snapshots newer than its
   * newest copy it gets, oldest first, the newest among them (btrbk weighs them by the target's
   * policy: {@link keptByRetention}). Without it, every one of them (btrbk's default
   * `target_preserve_min all`: a target that keeps everything gets everything).
   */
  readonly catchUp?: (newer: readonly SnapshotInfo[], target: readonly SnapshotInfo[]) => readonly SnapshotInfo[]
  /**
   * btrbk's `incremental` (the driver's `incremental`): `'no'` plans every send in full, `'strict'`
   * sets `refused` when a send would be full (the sends stay, for what a target lacks)
   */
  readonly incremental?: Incremental
}

/** A snapshot as retention weighs it: its time (unreadable: always kept), its collision suffix, the stream it depends on */
export const retentionEntry = (s: SnapshotInfo): RetentionSnapshot => ({
  name: s.name, time: s.time ?? new Date(Number.NaN), sequence: parseSnapshotName(s.name)?.sequence ?? 0, ...(s.dependsOn === undefined ? {} : { dependsOn: s.dependsOn }),
})

/**
 * What a new target gets, as btrbk decides it: every source snapshot that the target's retention
 * would keep, weighed together with the backups already there (an older one from the same day
 * stands for that day); the newest always. Without a target policy, the newest alone (a first run
 * sends one snapshot, as btrfs-backup does; nothing says how much history the target wants).
 * @example
 * planSends(source, target, { backfill: keptByRetention({ preserve: '7d 4w' }, { now: new Date() }) })
 */
export const keptByRetention = (policy: RetentionPolicy | undefined, options: { readonly now: Date; readonly timeZone?: string }) =>
  (source: readonly SnapshotInfo[], target: readonly SnapshotInfo[]): readonly SnapshotInfo[] => {
    const newest = source.slice(-1)
    if (policy === undefined) return newest
    const all = [...source, ...target]
    const plan = planRetention(
      all.map(retentionEntry),
      policy,
      { now: options.now, ...(options.timeZone === undefined ? {} : { timeZone: options.timeZone }) },
    )
    // a policy that cannot be read is reported by the prune that follows; the send keeps to the newest
    if (plan.isErr()) return newest
    const wanted = source.filter((s, i) => plan.value[i]?.keep === true)
    return wanted.at(-1) === newest[0] ? wanted : [...wanted, ...newest]
  }

/**
 * What a target lacks and how to send it. Identity is by uuid ({@link sameSnapshot}), never by name.
 * When the target holds a copy of a source snapshot, the newer source snapshots are sent (all of
 * them, or what `catchUp` picks: what the target's retention keeps), oldest first, each incremental
 * against the one before (a target that missed runs catches up without a full send); older
 * snapshots it lacks are not sent again (its retention may have removed them).
 * When that copy cannot be restored (`broken`: a chain of raw streams lacks a link), the first of
 * them is sent in full instead, to start a chain that can.
 * When it holds none, the oldest of what `backfill` picks (by default the newest alone) is sent in
 * full and the rest incrementally, each against the one before; `fullBecause` says why when the
 * target holds backups of this job.
 *
 * @param source the job's complete snapshots at the source, oldest first
 * @param target the job's complete backups at the target, oldest first
 * @example
 * planSends(sourceSnapshots, targetBackups).sends.map((s) => `${s.snapshot.name} <- ${s.parent?.name ?? 'full'}`)
 */
export const planSends = (source: readonly SnapshotInfo[], target: readonly SnapshotInfo[], options: PlanOptions = {}): SendPlan => {
  const plan = planChain(source, target, options)
  if (options.incremental === 'no') {
    return { sends: plan.sends.map(({ snapshot }) => ({ snapshot })), ...(plan.newestCommon === undefined ? {} : { newestCommon: plan.newestCommon }) }
  }
  const full = plan.sends.find((s) => s.parent === undefined)
  if (options.incremental !== 'strict' || full === undefined) return plan
  return { ...plan, refused: `${full.snapshot.name} would be sent in full (${plan.fullBecause ?? 'the target holds no backup of this source'}), and incremental = strict sends nothing in full` }
}

/** {@link planSends} before `incremental` is weighed: full where no parent serves. */
const planChain = (source: readonly SnapshotInfo[], target: readonly SnapshotInfo[], options: PlanOptions): SendPlan => {
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
    const picked = options.backfill?.(source, target) ?? [newest]
    const sends = picked.map((snapshot, i): PlannedSend => {
      const parent = picked[i - 1]
      return parent === undefined ? { snapshot } : { snapshot, parent }
    })
    return { sends, ...(fullBecause === undefined ? {} : { fullBecause }) }
  }
  const sends: PlannedSend[] = []
  // a copy that cannot be restored (a broken chain of streams) is no parent: nothing sent on it could be restored either
  const broken = newestCommon.target.broken
  let parent: SnapshotInfo | undefined = broken === undefined ? newestCommon.source : undefined
  let parentAtTarget: SnapshotInfo | undefined = broken === undefined ? newestCommon.target : undefined
  const newer = source.slice(index + 1)
  for (const s of newer.length === 0 ? newer : options.catchUp?.(newer, target) ?? newer) {
    sends.push({ snapshot: s, ...(parent === undefined ? {} : { parent }), ...(parentAtTarget === undefined ? {} : { parentAtTarget }) })
    parent = s
    parentAtTarget = undefined
  }
  const fullBecause = broken === undefined || sends.length === 0 ? undefined : `the newest backup at the target, ${newestCommon.target.name}, cannot be restored (${broken}): a new chain starts with a full send`
  return { sends, newestCommon, ...(fullBecause === undefined ? {} : { fullBecause }) }
}
