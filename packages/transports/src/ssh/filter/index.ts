import { err, ok, type Result } from 'neverthrow'
import { checkRequest } from './checks.js'
import { decide, type FilterPolicy, type Role } from './policy.js'
import { splitCommand } from './words.js'
import { AHEAD, SERVE, SERVE_V2 } from '../remote-protocol.js'

export { splitCommand } from './words.js'
export { decide, ROLES } from './policy.js'
export type { Check, Decision, FilterPolicy, Role } from './policy.js'
export { checkRequest } from './checks.js'
export { AHEAD, REFUSED_EXIT, REFUSED_TAG, SERVE, SERVE_BANNER } from '../remote-protocol.js'

/** a request the filter lets through: run `argv` as it is, with no shell */
export interface AllowedRequest {
  readonly argv: readonly string[]
  readonly role: Role
  /** the word of `argv` that stands for bbackup-remote itself (the block scan's helper): run this program in its place */
  readonly selfAt?: number
}

/**
 * The whole decision of the forced command `bbackup-remote` on one `SSH_ORIGINAL_COMMAND`:
 * split it without a shell, match it against what bbackup sends and the key's roles, and check
 * its paths and processes on this host. An error is the reason for the refusal.
 * @example
 * const r = await filterRequest(process.env.SSH_ORIGINAL_COMMAND, { roles: new Set(['receive']), roots: ['/srv/backups'], sudo: false })
 */
export const filterRequest = async (command: string | undefined, policy: FilterPolicy, options: { readonly serveLine?: boolean } = {}): Promise<Result<AllowedRequest, string>> => {
  if (command === undefined) return err('no SSH_ORIGINAL_COMMAND: bbackup-remote runs as the forced command of an authorized_keys line, from sshd')
  const argv = splitCommand(command, options)
  if (argv.isErr()) return err(argv.error)
  const decision = decide(argv.value, policy)
  if (!decision.allowed) return err(decision.reason)
  const problem = await checkRequest(decision.checks, policy, decision.argv[0] === 'sudo')
  if (problem !== undefined) return err(problem)
  return ok({ argv: decision.argv, role: decision.role, ...(decision.selfAt === undefined ? {} : { selfAt: decision.selfAt }) })
}

/**
 * Whether `SSH_ORIGINAL_COMMAND` starts the command server (remote-protocol's `SERVE`, the master
 * connection's own command, or `SERVE_V2`, an older bbackup's): bbackup-remote then serves the
 * request lines itself, each one filtered as a request of its own (`filterRequest` with
 * `serveLine`). Its answers are those every version of the client reads (banner 1).
 */
export const isServeRequest = (command: string | undefined): boolean => isProgram(command, SERVE) || isProgram(command, SERVE_V2)

/**
 * Whether `SSH_ORIGINAL_COMMAND` is a session opened ahead of its command (remote-protocol's
 * `AHEAD`): bbackup-remote then reads the one request line from stdin itself, filters it as a
 * request of its own (`filterRequest` with `serveLine`), and runs it with the rest of stdin.
 */
export const isAheadRequest = (command: string | undefined): boolean => isProgram(command, AHEAD)

/** `sh -c PROGRAM sh`, exactly */
const isProgram = (command: string | undefined, program: string): boolean => {
  const argv = command === undefined ? undefined : splitCommand(command)
  return argv !== undefined && argv.isOk() && argv.value.length === 4 && argv.value[0] === 'sh' && argv.value[1] === '-c' && argv.value[2] === program && argv.value[3] === 'sh'
}
