// A reader of btrfs send streams (btrfs-progs kernel-shared/send.h): what `bbackup diff` learns from
// `btrfs send --no-data -p FROM TO`, the operations that turn one snapshot into the other, without
// `btrfs receive --dump`, whose text escapes paths differently from one btrfs-progs release to the next.

import type { Result } from 'neverthrow'
import { decodeFileName, type CommandResult, type Transport, type TransportError } from '@bb/core'

/** the commands of a stream that bbackup reads (send.h `enum btrfs_send_cmd`) */
export const SEND_COMMANDS = {
  subvol: 1, snapshot: 2, mkfile: 3, mkdir: 4, mknod: 5, mkfifo: 6, mksock: 7, symlink: 8,
  rename: 9, link: 10, unlink: 11, rmdir: 12, setXattr: 13, removeXattr: 14, write: 15, clone: 16,
  truncate: 17, chmod: 18, chown: 19, utimes: 20, end: 21, updateExtent: 22, fallocate: 23, setflags: 24, encodedWrite: 25,
} as const

/** attributes (send.h) */
const A = { size: 4, path: 15, pathTo: 16, pathLink: 17, data: 19, cloneLen: 24, unencodedLen: 28 } as const

const MAGIC = Buffer.from('btrfs-stream\0', 'latin1')
const HEADER = MAGIC.length + 4
const COMMAND_HEADER = 10

/** one command of a stream: its number and the attributes bbackup reads */
export interface SendCommand {
  readonly cmd: number
  /** PATH, relative to the subvolume's top ('' is the top) */
  readonly path?: string
  /** PATH_TO of a rename */
  readonly pathTo?: string
  /** PATH_LINK of a link (the name it links to) or a symlink (its target) */
  readonly pathLink?: string
  /** bytes of file data the command stands for: SIZE of an update_extent or fallocate, CLONE_LEN, a write's data */
  readonly length?: number
}

export class SendStreamError extends Error {}

const u64 = (b: Buffer, at: number): number => Number(b.readBigUInt64LE(at))

/**
 * Reads a send stream as it arrives: `push` each chunk, `end` at its end; commands come out in
 * order. Throws {@link SendStreamError} on bytes that are not a send stream.
 */
export class SendStreamReader {
  private buffer: Buffer = Buffer.alloc(0)
  private version = 0
  private ended = false

  constructor(private readonly onCommand: (command: SendCommand) => void) {}

  push(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk])
    let at = 0
    if (this.version === 0) {
      if (this.buffer.length < HEADER) return
      if (!this.buffer.subarray(0, MAGIC.length).equals(MAGIC)) throw new SendStreamError('not a btrfs send stream (no btrfs-stream header)')
      this.version = this.buffer.readUInt32LE(MAGIC.length)
      if (this.version < 1 || this.version > 3) throw new SendStreamError(`send stream version ${this.version}, which bbackup does not read`)
      at = HEADER
    }
    while (this.buffer.length - at >= COMMAND_HEADER) {
      const length = this.buffer.readUInt32LE(at)
      if (this.buffer.length - at < COMMAND_HEADER + length) break
      const cmd = this.buffer.readUInt16LE(at + 4)
      this.command(cmd, this.buffer.subarray(at + COMMAND_HEADER, at + COMMAND_HEADER + length))
      at += COMMAND_HEADER + length
    }
    this.buffer = this.buffer.subarray(at)
  }

  /** the stream is over: throws if it stopped inside a command or before its end command */
  end(): void {
    if (this.version === 0) throw new SendStreamError('the send stream is empty')
    if (this.buffer.length > 0) throw new SendStreamError('the send stream ends inside a command')
    if (!this.ended) throw new SendStreamError('the send stream ends before its end command')
  }

  private command(cmd: number, body: Buffer): void {
    if (this.ended) throw new SendStreamError('the send stream goes on after its end command')
    if (cmd === SEND_COMMANDS.end) {
      this.ended = true
      return
    }
    const out: { -readonly [K in keyof SendCommand]: SendCommand[K] } = { cmd }
    let at = 0
    while (at < body.length) {
      if (body.length - at < 2) throw new SendStreamError(`a truncated attribute in command ${cmd}`)
      const type = body.readUInt16LE(at)
      // from version 2 the data of a write is the rest of the command, without a length
      if (type === A.data && this.version >= 2) {
        // an encoded write's data is compressed: its length is UNENCODED_LEN, read before it
        if (cmd !== SEND_COMMANDS.encodedWrite) out.length = (out.length ?? 0) + body.length - at - 2
        break
      }
      if (body.length - at < 4) throw new SendStreamError(`a truncated attribute in command ${cmd}`)
      const length = body.readUInt16LE(at + 2)
      const value = body.subarray(at + 4, at + 4 + length)
      if (value.length !== length) throw new SendStreamError(`a truncated attribute in command ${cmd}`)
      // names are bytes: one that is not UTF-8 keeps them (decodeFileName), so two such names stay two
      if (type === A.path) out.path = decodeFileName(value)
      else if (type === A.pathTo) out.pathTo = decodeFileName(value)
      else if (type === A.pathLink) out.pathLink = decodeFileName(value)
      else if (type === A.data) out.length = (out.length ?? 0) + length
      else if ((type === A.size && (cmd === SEND_COMMANDS.updateExtent || cmd === SEND_COMMANDS.fallocate)) || type === A.cloneLen || (type === A.unencodedLen && cmd === SEND_COMMANDS.encodedWrite)) {
        if (length === 8) out.length = u64(value, 0)
      }
      at += 4 + length
    }
    this.onCommand(out)
  }
}

/** A command whose stdout is a send stream, read as it comes ({@link readSendStream}). */
export interface SendStreamRun {
  /** how the command ended, the bytes of its stream, and why the stream could not be read (undefined: it could, to its end) */
  readonly done: Promise<{ readonly result: Result<CommandResult, TransportError>; readonly bytes: number; readonly broken: string | undefined }>
  /** stops the command (SIGTERM) */
  readonly stop: () => void
}

/**
 * Runs `argv` (a `btrfs send --no-data …`) at `at` and reads its stdout with a {@link SendStreamReader}:
 * each command to `onCommand`. Bytes that are not a send stream stop the command; a stream that
 * ended early is `broken` once the command exited 0.
 * @example
 * const run = readSendStream(at, ['btrfs', 'send', '-q', '--no-data', '-p', from, to], (c) => changes.add(c), signal)
 * const { result, broken } = await run.done
 */
export const readSendStream = (at: Transport, argv: readonly string[], onCommand: (command: SendCommand) => void, signal: AbortSignal | undefined): SendStreamRun => {
  const reader = new SendStreamReader(onCommand)
  const running = at.spawn(argv, { stdout: 'pipe', ...(signal === undefined ? {} : { signal }) })
  const why = (e: unknown): string => (e instanceof SendStreamError ? e.message : String(e))
  let bytes = 0
  let broken: string | undefined
  running.stdout?.on('data', (chunk: Buffer) => {
    bytes += chunk.length
    if (broken !== undefined) return
    try {
      reader.push(chunk)
    } catch (e) {
      broken = why(e)
      running.kill('SIGTERM')
    }
  })
  const done = Promise.resolve(running.done).then((result) => {
    if (broken === undefined && result.isOk() && result.value.exitCode === 0) {
      try {
        reader.end()
      } catch (e) {
        broken = why(e)
      }
    }
    return { result, bytes, broken }
  })
  return { done, stop: () => running.kill('SIGTERM') }
}
