import { spawn } from 'node:child_process'
import { appendFile, realpath, stat } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { filterRequest, REFUSED_EXIT, REFUSED_TAG, ROLES, type FilterPolicy, type Role } from '@bb/transports/ssh-filter'

const USAGE = `usage (as the forced command of an authorized_keys line):
  command="bbackup-remote --role ROLE[,ROLE] --restrict-path DIR [--restrict-path DIR] [--sudo] [--log FILE]",restrict ssh-ed25519 AAAA...
roles: receive (write new backups), send (read backups, snapshot sources), delete, list (look only; every role may look)`

export interface RemoteIo {
  readonly stderr: (text: string) => void
  /** the request from sshd, and the client's address */
  readonly env: Readonly<Record<string, string | undefined>>
}

const refuse = (io: RemoteIo, reason: string): number => {
  io.stderr(`${REFUSED_TAG} ${reason}\n`)
  return REFUSED_EXIT
}

const policyFrom = async (argv: readonly string[]): Promise<{ policy: FilterPolicy; log?: string } | string> => {
  let parsed
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { role: { type: 'string', multiple: true }, 'restrict-path': { type: 'string', multiple: true }, sudo: { type: 'boolean' }, log: { type: 'string' } },
      strict: true,
    }).values
  } catch (e) {
    return `${(e as Error).message}\n${USAGE}`
  }
  const roles = (parsed.role ?? []).flatMap((r) => r.split(','))
  const unknown = roles.find((r) => !(ROLES as readonly string[]).includes(r))
  if (roles.length === 0 || unknown !== undefined) return `${unknown === undefined ? 'no --role given' : `unknown role ${JSON.stringify(unknown)}`}\n${USAGE}`
  const dirs = parsed['restrict-path'] ?? []
  if (dirs.length === 0) return `no --restrict-path given: name the directories this key may touch\n${USAGE}`
  const roots: string[] = []
  for (const dir of dirs) {
    if (!dir.startsWith('/')) return `--restrict-path ${dir} is not an absolute path`
    try {
      const real = await realpath(dir)
      if (!(await stat(real)).isDirectory()) return `--restrict-path ${dir} is not a directory`
      roots.push(real)
    } catch {
      return `--restrict-path ${dir} does not exist: create it, or fix the authorized_keys line`
    }
  }
  return { policy: { roles: new Set(roles as Role[]), roots, sudo: parsed.sudo === true }, ...(parsed.log === undefined ? {} : { log: parsed.log }) }
}

const logLine = async (file: string | undefined, env: RemoteIo['env'], text: string): Promise<void> => {
  if (file === undefined) return
  const client = env.SSH_CONNECTION?.split(' ')[0] ?? '-'
  // a log that cannot be written must not stop the backup; the refusal still goes to stderr
  await appendFile(file, `${new Date().toISOString()} ${client} ${text}\n`).catch(() => undefined)
}

/**
 * bbackup-remote: the forced command for a backup key. Runs the request in `SSH_ORIGINAL_COMMAND`
 * when it is one that bbackup sends and the key's roles and directories allow it, as an argv
 * without a shell, passing stdin, stdout and stderr straight through; refuses anything else with
 * exit 255 and a line that names the reason. Resolves to the exit status.
 */
export const remoteMain = async (argv: readonly string[], io: RemoteIo): Promise<number> => {
  const options = await policyFrom(argv)
  if (typeof options === 'string') return refuse(io, `the forced command is misconfigured: ${options}`)
  const command = io.env.SSH_ORIGINAL_COMMAND
  const request = await filterRequest(command, options.policy)
  if (request.isErr()) {
    await logLine(options.log, io.env, `refused ${JSON.stringify(command ?? '')}: ${request.error}`)
    return refuse(io, request.error)
  }
  await logLine(options.log, io.env, `${request.value.role} ${JSON.stringify(request.value.argv)}`)
  const [file, ...args] = request.value.argv as [string, ...string[]]
  return new Promise<number>((resolve) => {
    // the bytes of a send or a receive go straight from sshd's pipes to the command
    const child = spawn(file, args, { stdio: 'inherit' })
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal)
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, forward)
    child.once('error', (e) => {
      io.stderr(`bbackup-remote: cannot run ${file}: ${e.message}\n`)
      resolve(127)
    })
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal === null ? 0 : SIGNAL_NUMBERS[signal] ?? 0)))
  })
}

const SIGNAL_NUMBERS: Readonly<Partial<Record<NodeJS.Signals, number>>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 }
