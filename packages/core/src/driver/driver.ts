import type { Result, ResultAsync } from 'neverthrow'
import type { BbError } from '../errors.js'
import type { JournalEntry } from '../journal/journal.js'
import type { Transport } from '../transport/transport.js'
import type { BackupEvent } from '../engine/events.js'

export type DriverName = 'rsync' | 'btrfs' | 'block'

/**
 * What backups take on disk. rsync counts as rsnapshot's `du`: newest first, each the bytes of the
 * files no newer one shares (hard links), so the newest counts in full and an older one by what it
 * holds besides. btrfs: each one's exclusive bytes (`btrfs filesystem du`), what deleting it alone frees.
 */
export interface DiskUsage {
  /** bytes by name */
  readonly bytes: ReadonlyMap<string, number>
  /** how: `newest-first` (rsync), `exclusive` (btrfs) */
  readonly counted: 'newest-first' | 'exclusive'
  /** what they take together, shared data counted once, where the driver can tell (rsync) */
  readonly total?: number
}

/** A backup or a source snapshot as a driver sees it at one place. */
export interface SnapshotInfo {
  /** the snapshot's name, also while it is unfinished (`path` says where its copy is) */
  readonly name: string
  /** from the name; undefined when the name has no time bbackup can read (never touched) */
  readonly time: Date | undefined
  /** false for an unfinished copy (`<name>.partial`): never a parent, never counted by retention */
  readonly complete: boolean
  /** how its transfer ended: `warnings` (rsync 24: files vanished), `errors` (rsync 23, accepted) */
  readonly health: 'ok' | 'warnings' | 'errors'
  readonly path: string
  /** btrfs: who the snapshot is (uuid), what it is a copy of (received uuid) and whether it is read-only */
  readonly identity?: SnapshotIdentity
  /**
   * the name of the backup at the same place this one cannot be restored without (a raw
   * incremental stream needs its parent's stream): retention keeps it whenever it keeps this one
   */
  readonly dependsOn?: string
  /**
   * why it cannot be restored as it is (a raw stream whose chain lacks a stream file): listed and
   * counted by retention like any backup, never the parent of a new one
   */
  readonly broken?: string
  /**
   * why this copy is no longer the backup it was, though it was once complete (btrfs: a backup made
   * writable after its receive, perhaps changed since): not unfinished, never a parent, never
   * counted by retention, never deleted; bbackup leaves it to whoever changed it
   */
  readonly altered?: string
  /**
   * at a source: the uuid of the subvolume this snapshot was taken of, when that is not the job's
   * source (another source that shares the snapshot folder and the prefix, or the subvolume the
   * source replaced): the job never counts, sends, nor deletes it
   */
  readonly otherSubvolume?: string
  /**
   * rsync: the source the backup was made from, as its record names it ({@link Driver.sourceName});
   * undefined where nothing names one (a record from before bbackup wrote it, a backup a daemon's
   * post-xfer exec published, another tool's). See {@link claimedByOther}
   */
  readonly madeFrom?: string
}

/** btrbk's `incremental`: see {@link Driver.incremental} */
export type Incremental = 'yes' | 'no' | 'strict'

/**
 * A snapshot's identity where the technology has one. Two snapshots are the same backup when one
 * was received from the other, or both from the same snapshot ({@link sameSnapshot}).
 */
export interface SnapshotIdentity {
  readonly uuid: string
  /** the uuid of the snapshot this one was received from; undefined for a snapshot taken here */
  readonly receivedUuid?: string
  /** the uuid of the subvolume this one is a snapshot of */
  readonly parentUuid?: string
  readonly readOnly: boolean
}

/** A snapshot another tool took, for a run to take over ({@link Driver.adoptable}). */
export interface Adoptable {
  /** when it was taken: the run's snapshot is named for this time */
  readonly time: Date
  /** the read-only snapshot's path at the source */
  readonly from: string
  /** what it is, as a report says it (`snapper's snapshot 12`) */
  readonly what: string
}

/** What one transfer did; `commands` are the exact commands it ran, or would run in a dry run. */
export interface TransferOutcome {
  readonly snapshot: string
  readonly mode: 'full' | 'incremental'
  readonly parent?: string
  readonly bytes: number
  readonly files: number
  readonly warnings: readonly string[]
  readonly commands: readonly (readonly string[])[]
}

export interface TransferInput {
  readonly source: Transport
  readonly target: Transport
  /** the name the new backup gets at the target */
  readonly snapshot: string
  /** the complete backup at the target to share unchanged data with */
  readonly parent: SnapshotInfo | undefined
  /** drivers that snapshot the source: the source snapshot to send */
  readonly sourceSnapshot?: SnapshotInfo
  /** drivers that snapshot the source: the snapshot at the source the transfer is incremental against */
  readonly sourceParent?: SnapshotInfo
  /** an unfinished copy at the target that this transfer may continue (rsync resumes into it) */
  readonly resume: JournalEntry | undefined
  readonly dryRun: boolean
  readonly signal: AbortSignal | undefined
  readonly onEvent: (event: BackupEvent) => void
  /** false: no `transfer-progress` events are wanted, and the work of measuring progress can be left out (RunOptions.progress) */
  readonly progress?: boolean
}

/** One snapshot to several targets that all hold its parent: the source is read once. */
export interface SharedTransferInput extends Omit<TransferInput, 'target' | 'parent' | 'resume'> {
  readonly targets: readonly { readonly target: Transport; readonly parent: SnapshotInfo | undefined }[]
}

/**
 * How far a transfer or a restore has come: `bytes` moved so far; as far as the driver can tell,
 * `percent`, `expectedBytes` (the estimated whole), `bytesPerSecond` and `etaSeconds`, or rsync's
 * own `rate` and `eta` text.
 */
export interface TransferProgress {
  readonly bytes: number
  readonly percent?: number
  readonly expectedBytes?: number
  readonly bytesPerSecond?: number
  readonly etaSeconds?: number
  readonly rate?: string
  readonly eta?: string
}

export interface RestoreInput {
  readonly from: Transport
  readonly snapshot: SnapshotInfo
  /** a path inside the backup, '' for all of it */
  readonly subpath: string
  readonly to: Transport
  /** btrfs: also make a writable snapshot of the restored backup, ready to be swapped in */
  readonly writable?: boolean
  readonly dryRun: boolean
  readonly signal: AbortSignal | undefined
  /** how far the copy has come, about twice a second; without it, the work of measuring that is left out */
  readonly onProgress?: (progress: TransferProgress) => void
}

export interface VerifyInput {
  readonly source: Transport
  readonly target: Transport
  readonly snapshot: SnapshotInfo
  readonly signal: AbortSignal | undefined
}

export interface VerifyOutcome {
  readonly snapshot: string
  /** paths whose content or metadata differ from the source (bounded) */
  readonly differences: readonly string[]
  readonly differenceCount: number
  /** what was checked besides the content, or could not be */
  readonly notes?: readonly string[]
}

/** one change between two snapshots (see {@link Driver.diff}) */
export interface DiffEntry {
  readonly change: 'added' | 'deleted' | 'modified' | 'renamed' | 'metadata'
  /** the path inside the snapshot: in the newer one, or for `deleted` in the older */
  readonly path: string
  /** `renamed`: where it was in the older snapshot */
  readonly from?: string
  /** bytes of file data written: a new file's, a changed file's (btrfs: whole extents) */
  readonly bytes?: number
}

export interface DiffInput {
  readonly at: Transport
  readonly from: SnapshotInfo
  readonly to: SnapshotInfo
  readonly signal: AbortSignal | undefined
}

export type DriverError = BbError

/**
 * What became of an unfinished transfer: its leftovers were `removed`, it is kept to `resume`,
 * nothing of it is left (`gone`), or it had in fact finished (`complete`).
 */
export type RecoverAction = 'removed' | 'resume' | 'gone' | 'complete'

/**
 * One snapshot technology. The engine calls these in the order of DESIGN.md's run; a driver never
 * knows which transport it runs over.
 */
export interface Driver {
  readonly name: DriverName
  /** btrfs and block snapshot the source first; rsync copies the live source */
  readonly snapshotsSource: boolean
  /**
   * btrbk's `incremental`, for a driver that sends against a parent: `'yes'` (the default) sends
   * in full where no parent serves, `'no'` always in full, `'strict'` never in full (the plan's
   * `refused` says why a target gets nothing; the driver sends no full stream in place of an
   * incremental one the target refused).
   */
  readonly incremental?: Incremental
  /** Tools present, right filesystem, versions; fails with a hint that says what to install or fix. */
  probe(input: {
    readonly source: Transport
    readonly targets: readonly Transport[]
    readonly signal: AbortSignal | undefined
    /** a backup that will transfer follows (not a dry run, not a doctor's check): the driver may get its targets ready (`Transport.prepareSpawn`) */
    readonly transferFollows?: boolean
  }): ResultAsync<void, DriverError>
  /**
   * Takes a read-only snapshot of the source named `name` (drivers with `snapshotsSource` only);
   * with `from`, a snapshot of that read-only snapshot another tool took ({@link Driver.adoptable}).
   */
  createSnapshot?(input: { readonly source: Transport; readonly name: string; readonly from?: string; readonly dryRun: boolean; readonly signal: AbortSignal | undefined }): ResultAsync<SnapshotInfo, DriverError>
  /**
   * A driver whose source is snapshotted by another tool (btrfs with snapper): the newest snapshot
   * it took that the run takes over instead of taking one, when that one is newer than every
   * snapshot of the job's (`snapshots`, at the source) and not taken over already. The run's
   * snapshot, named for `time`, is made of it ({@link Driver.createSnapshot}'s `from`).
   * Undefined: nothing new since the last run, which takes no snapshot and sends what the
   * targets lack.
   */
  adoptable?(input: { readonly source: Transport; readonly snapshots: readonly SnapshotInfo[]; readonly signal: AbortSignal | undefined }): ResultAsync<Adoptable | undefined, DriverError>
  /**
   * A driver that takes a snapshot only when the source changed (btrbk's `snapshot_create
   * onchange`): whether the source still holds what its newest snapshot `since` holds. Asked
   * before a snapshot is taken (known without one: none is taken, and the targets get what they
   * lack), and where that could not tell, again with the snapshot just `taken`: the same content
   * as `since` means it is deleted again. An error, or any doubt, says changed.
   */
  unchangedSince?(input: { readonly source: Transport; readonly since: SnapshotInfo; readonly taken?: SnapshotInfo; readonly signal: AbortSignal | undefined }): ResultAsync<boolean, DriverError>
  /** Backups at a target (or the snapshots at the source, `side: 'source'`), oldest first, including unfinished ones. */
  listSnapshots(input: { readonly at: Transport; readonly side?: 'source' | 'target'; readonly signal: AbortSignal | undefined }): ResultAsync<SnapshotInfo[], DriverError>
  /**
   * Optional: the backup last made at a target, as the place itself records it, whatever its name
   * says (rsync: the one `latest` points at). A clock that was behind names a backup older than
   * it is; a prune keeps this one. Undefined where nothing records it.
   */
  lastMade?(input: { readonly at: Transport; readonly signal: AbortSignal | undefined }): ResultAsync<string | undefined, DriverError>
  /** Optional: the disk space of the complete backups (or snapshots) `snapshots` at a place ({@link DiskUsage}). */
  diskUsage?(input: { readonly at: Transport; readonly snapshots: readonly SnapshotInfo[]; readonly signal: AbortSignal | undefined }): ResultAsync<DiskUsage, DriverError>
  /**
   * btrfs: the read-only subvolume the source was made from, when it is not in the snapshot folder:
   * a backup restored (`restore --writable`) and swapped in for the source, its `.writable` moved
   * into the source's place. A target that holds a copy of it and of none of the source's
   * snapshots gets the next one incrementally against it, not in full. It is never listed,
   * counted, sent nor deleted. Undefined when there is none, or it cannot be told or reached.
   */
  origin?(input: { readonly source: Transport; readonly signal: AbortSignal | undefined }): Promise<SnapshotInfo | undefined>
  /**
   * rsync: how each backup's record names the source it is made from (`HOST:PATH`): a directory of
   * such backups is one source's, and another source's run or prune there is refused ({@link claimedByOther})
   */
  sourceName?(source: Transport): string
  /** Where a transfer of `snapshot` to `target` leaves its copy until it is complete (journalled before it starts). */
  partialPath(input: { readonly target: Transport; readonly snapshot: string }): string
  transfer(input: TransferInput): ResultAsync<TransferOutcome, DriverError>
  /** Optional: one stream to several targets at once (btrfs: one `btrfs send` feeds them all); one result per target, in order. */
  transferShared?(input: SharedTransferInput): Promise<readonly Result<TransferOutcome, DriverError>[]>
  /**
   * What the journal says was left unfinished at a target: the driver removes it, or keeps it to
   * be resumed (`'resume'`). It must never remove anything it did not create. `unrecorded`: no
   * journal entry says so (`clean`, for an unfinished copy listed at the target): only what is
   * unfinished by its very form is removed (btrfs: an unfinished receive; raw: a `.part` file),
   * anything else is `'gone'` to the caller.
   */
  recover(input: { readonly target: Transport; readonly entry: JournalEntry; readonly dryRun: boolean; readonly unrecorded?: boolean }): ResultAsync<RecoverAction, DriverError>
  /** Deletes complete snapshots; returns the commands it ran (or would run). */
  deleteSnapshots(input: { readonly at: Transport; readonly snapshots: readonly SnapshotInfo[]; readonly dryRun: boolean; readonly signal: AbortSignal | undefined }): ResultAsync<readonly (readonly string[])[], DriverError>
  restore(input: RestoreInput): ResultAsync<{ readonly commands: readonly (readonly string[])[] }, DriverError>
  verify(input: VerifyInput): ResultAsync<VerifyOutcome, DriverError>
  /** what changed from one snapshot to another at the same place, by path; optional (btrfs has it) */
  diff?(input: DiffInput): ResultAsync<readonly DiffEntry[], DriverError>
}
