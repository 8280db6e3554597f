import { ok, ResultAsync } from 'neverthrow'
import type { CommandResult, RunningCommand, SpawnOptions, TransportError } from '@bb/core'
import { spawnCommand } from './exec.js'

/** how the stream filters run: all cores to compress (a link is slower than zstd), quiet */
const ZSTD_COMPRESS = ['zstd', '-cq', '-T0'] as const
const ZSTD_DECOMPRESS = ['zstd', '-dcq'] as const

/**
 * The command and its zstd as one {@link RunningCommand}: the command's pid, byte count and exit
 * status; the helper's failure only when the command itself succeeded. Killing it kills both.
 */
const pair = (main: RunningCommand, helper: RunningCommand, io: { readonly stdin: RunningCommand; readonly stdout: RunningCommand }): RunningCommand => ({
  argv: main.argv,
  pid: main.pid,
  stdin: io.stdin.stdin,
  stdout: io.stdout.stdout,
  done: new ResultAsync(Promise.all([main.done, helper.done]).then(([m, h]) => {
    if (m.isErr() || m.value.exitCode !== 0) return m
    if (h.isErr()) return h
    if (h.value.exitCode !== 0) return ok<CommandResult, TransportError>({ ...m.value, exitCode: h.value.exitCode, stderr: `${h.value.argv.join(' ')}: ${h.value.stderr}` })
    return m
  })),
  bytesWritten: () => main.bytesWritten(),
  // what came in: the stream as it crossed (compressed, where zstd -d reads it)
  bytesRead: async () => io.stdin.bytesRead?.(),
  kill: (signal) => {
    main.kill(signal)
    helper.kill(signal)
  },
})

/**
 * `spawn` on this host with the stream filters of {@link SpawnOptions}: `argv | zstd -c` when its
 * stdout is compressed, `zstd -d | argv` when its stdin is; without them, argv alone.
 */
export const spawnWithFilters = (argv: readonly string[], options: SpawnOptions = {}): RunningCommand => {
  const { compressStdout, decompressStdin, ...plain } = options
  const signal = plain.signal === undefined ? {} : { signal: plain.signal }
  if (compressStdout === 'zstd') {
    const main = spawnWithFilters(argv, { ...plain, ...(decompressStdin === undefined ? {} : { decompressStdin }), stdout: 'pipe' })
    const zstd = spawnCommand(ZSTD_COMPRESS, { ...signal, ...(main.stdout === undefined ? {} : { stdin: main.stdout }), ...(plain.stdout === undefined ? {} : { stdout: plain.stdout }) })
    return pair(main, zstd, { stdin: main, stdout: zstd })
  }
  if (decompressStdin === 'zstd') {
    const zstd = spawnCommand(ZSTD_DECOMPRESS, { ...signal, ...(plain.stdin === undefined ? {} : { stdin: plain.stdin }), stdout: 'pipe' })
    const main = spawnCommand(argv, { ...plain, ...(zstd.stdout === undefined ? {} : { stdin: zstd.stdout }) })
    return pair(main, zstd, { stdin: zstd, stdout: main })
  }
  return spawnCommand(argv, plain)
}
