import { err, ok, type Result } from 'neverthrow'
import { bbError, type BbError, type CommandResult, type Transport } from '@bb/core'
import { btrfsFailure } from './subvolume.js'

export interface SendReceiveInput {
  readonly source: Transport
  readonly target: Transport
  readonly sendArgv: readonly string[]
  readonly receiveArgv: readonly string[]
  readonly signal: AbortSignal | undefined
  /** bytes sent so far, about twice a second */
  readonly onBytes: (bytes: number) => void
}

const brokenPipe = (r: Result<CommandResult, BbError>): boolean =>
  r.isErr() ? /SIGPIPE/.test(r.error.message) : /Broken pipe|-32/.test(r.value.stderr)

/**
 * `btrfs send … | btrfs receive …` with the stream in an OS pipe from one process to the other
 * (it never passes through JavaScript). The sender's byte count comes from /proc for progress.
 * When both fail, the error is the receiver's if the sender only saw the pipe break.
 */
export const sendReceive = async (input: SendReceiveInput): Promise<Result<{ readonly bytes: number }, BbError>> => {
  const options = input.signal === undefined ? {} : { signal: input.signal }
  const send = input.source.spawn(input.sendArgv, { ...options, stdout: 'pipe' })
  const receive = input.target.spawn(input.receiveArgv, { ...options, ...(send.stdout === undefined ? {} : { stdin: send.stdout }) })
  let bytes = 0
  const timer = setInterval(() => {
    void send.bytesWritten().then((n) => {
      if (n !== undefined && n > bytes) {
        bytes = n
        input.onBytes(n)
      }
    })
  }, 500)
  const [sent, received] = await Promise.all([send.done, receive.done])
  clearInterval(timer)
  bytes = Math.max(bytes, (await send.bytesWritten()) ?? 0)
  if (input.signal?.aborted === true) {
    return err(bbError('CANCELLED', 'the transfer was cancelled', 'run again: the unfinished copy is removed and sent anew', { argv: [...input.sendArgv] }))
  }
  const sendFailed = sent.isErr() || sent.value.exitCode !== 0
  const receiveFailed = received.isErr() || received.value.exitCode !== 0
  if (sendFailed && !(receiveFailed && brokenPipe(sent))) {
    if (sent.isErr()) return err(sent.error)
    return err(btrfsFailure(`btrfs send ${input.sendArgv.at(-1) ?? ''}`, input.sendArgv, sent.value.exitCode, sent.value.stderr))
  }
  if (receiveFailed) {
    if (received.isErr()) return err(received.error)
    return err(btrfsFailure(`btrfs receive into ${input.receiveArgv.at(-1) ?? ''}`, input.receiveArgv, received.value.exitCode, received.value.stderr))
  }
  return ok({ bytes })
}
