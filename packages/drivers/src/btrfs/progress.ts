import type { SnapshotInfo, Transport } from '@bb/core'
import { readSendStream } from './send-stream.js'

/** A running estimate of a send's size, and the means to stop it when the send ends first. */
export interface SendEstimate {
  /** the estimate, or undefined when it could not be made (the command failed, or was stopped) */
  readonly bytes: Promise<number | undefined>
  /** stops it, if it still runs; resolves once it has exited */
  readonly stop: () => Promise<void>
}

/** Nothing to estimate: the progress shows bytes and rate alone. */
export const noEstimate: SendEstimate = { bytes: Promise.resolve(undefined), stop: () => Promise.resolve() }

/**
 * The size of the stream `btrfs send [-p PARENT] SNAPSHOT` will write, from `btrfs send --no-data`
 * of the same (run beside the real send: it reads metadata only): the bytes of that stream, which
 * carries every command but the data, plus the file data its update_extent commands stand for.
 * Close for a plain stream; with `--compressed-data` from a filesystem that compresses, the real
 * stream is smaller, and an estimate is better not made ({@link noEstimate}).
 * @example
 * const estimate = estimateSend(source, snapshot, parent, signal)
 * const total = await estimate.bytes // 1_573_000_000
 */
export const estimateSend = (source: Transport, sent: SnapshotInfo, parent: SnapshotInfo | undefined, signal: AbortSignal | undefined): SendEstimate => {
  const argv = ['btrfs', 'send', '-q', '--no-data', ...(parent === undefined ? [] : ['-p', parent.path]), sent.path]
  let dataBytes = 0
  const running = readSendStream(source, argv, (c) => {
    if (c.length !== undefined) dataBytes += c.length
  }, signal)
  const bytes = running.done.then(({ result, bytes: streamBytes, broken }): number | undefined =>
    (broken !== undefined || result.isErr() || result.value.exitCode !== 0 ? undefined : streamBytes + dataBytes))
  let ended = false
  void bytes.then(() => {
    ended = true
  })
  return {
    bytes,
    stop: async () => {
      if (!ended) running.stop()
      await bytes
    },
  }
}
