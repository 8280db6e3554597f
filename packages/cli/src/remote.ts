import { spawn } from 'node:child_process'
import { appendFile, realpath, stat } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { commandEnv, localTransport } from '@bb/transports/local'
import { filterRequest, isAheadRequest, isServeRequest, REFUSED_EXIT, REFUSED_TAG, ROLES, SERVE_BANNER, type AllowedRequest, type FilterPolicy, type Role } from '@bb/transports/ssh-filter'

const USAGE = `usage (as the forced command of an authorized_keys line):
  command="bbackup-remote --role ROLE[,ROLE] --restrict-path DIR [--restrict-path DIR] [--sudo] [--log FILE]",restrict ssh-ed25519 AAAA...
roles: receive (write new backups), send (read backups, snapshot sources), delete, list (look only; every role may look)`

export interface RemoteIo {
  readonly stderr: (text: string) => void
  /** sshd's pipes, for the command server (the master connection's own command) */
  readonly stdin?: AsyncIterable<Buffer>
  readonly stdout?: (bytes: string | Buffer) => void
  /** one line of stdin (without its newline), read a byte at a time so that the rest stays for a command; undefined at its end */
  readonly readLine?: () => string | undefined
  /** stdout for bulk bytes: resolves when more may be written */
  readonly writeOut?: (bytes: Buffer) => Promise<void>
  /** the request from sshd, and the client's address */
  readonly env: Readonly<Record<string, string | undefined>>
  /** how to start this program again (node, its flags, the script): what a block scan request runs */
  readonly self: readonly string[]
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
  if (argv[0] === 'block-scan') return blockScan(argv.slice(1), io)
  const options = await policyFrom(argv)
  if (typeof options === 'string') return refuse(io, `the forced command is misconfigured: ${options}`)
  const command = io.env.SSH_ORIGINAL_COMMAND
  if (isServeRequest(command) && io.stdin !== undefined && io.stdout !== undefined) return serve(options, io.stdin, io.stdout, io)
  // a session opened ahead: its request is the first line of stdin, the rest is the command's
  const ahead = isAheadRequest(command) && io.readLine !== undefined
  const line = ahead ? io.readLine?.() : command
  if (ahead && line === undefined) return 0
  const request = await filterRequest(line, options.policy, ahead ? { serveLine: true } : {})
  if (request.isErr()) {
    await logLine(options.log, io.env, `refused ${JSON.stringify(line ?? '')}: ${request.error}`)
    return refuse(io, request.error)
  }
  const run = runnable(request.value, io)
  await logLine(options.log, io.env, `${request.value.role} ${JSON.stringify(run)}`)
  const [file, ...args] = run as [string, ...string[]]
  return new Promise<number>((resolve) => {
    // the bytes of a send or a receive go straight from sshd's pipes to the command
    const child = spawn(file, args, { stdio: 'inherit', env: commandEnv() })
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal)
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, forward)
    child.once('error', (e) => {
      io.stderr(`bbackup-remote: cannot run ${file}: ${e.message}\n`)
      resolve(127)
    })
    child.once('exit', (code, signal) => resolve(exitStatus(code, signal)))
  })
}

/**
 * What an allowed request runs: its argv, where the block scan's helper word stands for this
 * program itself (the word is never run: a client cannot name a program of its choosing).
 */
const runnable = (request: AllowedRequest, io: RemoteIo): readonly string[] =>
  request.selfAt === undefined ? request.argv : [...request.argv.slice(0, request.selfAt), ...io.self, ...request.argv.slice(request.selfAt + 1)]

/**
 * The command server of bbackup's remote protocol, as bbackup-remote: the master connection asks
 * for `sh -c SERVE sh`, and gets this instead, which answers the same way. Each request line is
 * filtered as a request of its own (split without a shell, matched, checked, logged) and run as
 * an argv with stdin at /dev/null; a refused one is answered with exit 255 and the reason.
 */
const serve = async (options: { policy: FilterPolicy; log?: string }, stdin: AsyncIterable<Buffer>, stdout: (bytes: string | Buffer) => void, io: RemoteIo): Promise<number> => {
  stdout(`${SERVE_BANNER}\n`)
  let running: ReturnType<typeof spawn> | undefined
  const stop = (signal: NodeJS.Signals): void => {
    running?.kill(signal)
    process.exit(exitStatus(null, signal))
  }
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, stop)
  const answer = (status: number, out: Buffer, error: Buffer): void => {
    stdout(`${status} ${out.length} ${error.length}\n`)
    stdout(Buffer.concat([out, error]))
  }
  let pending = Buffer.alloc(0)
  for await (const chunk of stdin) {
    pending = Buffer.concat([pending, chunk])
    for (let nl = pending.indexOf(10); nl >= 0; nl = pending.indexOf(10)) {
      const line = pending.subarray(0, nl).toString('utf8')
      pending = pending.subarray(nl + 1)
      const request = await filterRequest(line, options.policy, { serveLine: true })
      if (request.isErr()) {
        await logLine(options.log, io.env, `refused ${JSON.stringify(line)}: ${request.error}`)
        answer(REFUSED_EXIT, Buffer.alloc(0), Buffer.from(`${REFUSED_TAG} ${request.error}\n`))
        continue
      }
      const argv = runnable(request.value, io)
      await logLine(options.log, io.env, `${request.value.role} ${JSON.stringify(argv)}`)
      const [file, ...args] = argv as [string, ...string[]]
      const out: Buffer[] = []
      const error: Buffer[] = []
      const status = await new Promise<number>((resolve) => {
        const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: commandEnv() })
        running = child
        child.stdout.on('data', (b: Buffer) => out.push(b))
        child.stderr.on('data', (b: Buffer) => error.push(b))
        child.once('error', (e) => {
          error.push(Buffer.from(`bbackup-remote: cannot run ${file}: ${e.message}\n`))
          resolve(127)
        })
        child.once('close', (code, signal) => resolve(exitStatus(code, signal)))
      })
      running = undefined
      answer(status, Buffer.concat(out), Buffer.concat(error))
    }
  }
  return 0
}

const SIGNAL_NUMBERS: Readonly<Partial<Record<NodeJS.Signals, number>>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 }
/** a command's exit status as a shell reports it: its code, or 128 + the number of the signal that ended it */
const exitStatus = (code: number | null, signal: NodeJS.Signals | null): number => code ?? 128 + (signal === null ? 0 : SIGNAL_NUMBERS[signal] ?? 0)

const BLOCK_SCAN_USAGE = 'usage: bbackup-remote block-scan --chunk-size BYTES --size BYTES -- IMAGE (the parent\'s hashes on stdin), or block-scan --protocol'

/**
 * `bbackup-remote block-scan`: the block driver's chunk scan on the host of a source, run by the
 * backup host over ssh (not as a forced command). Reads IMAGE, hashes its chunks on this host's
 * cores, and writes only the chunks whose hash differs from the parent's on stdin
 * (docs/drivers/block.md; the records are in @bb/drivers/block's remote-scan).
 */
const blockScan = async (argv: readonly string[], io: RemoteIo): Promise<number> => {
  const { BLOCK_SCAN_PROTOCOL, openHashPool, serveBlockScan } = await import('@bb/drivers/block')
  let parsed
  try {
    parsed = parseArgs({ args: [...argv], options: { 'chunk-size': { type: 'string' }, size: { type: 'string' }, protocol: { type: 'boolean' } }, allowPositionals: true, strict: true })
  } catch (e) {
    io.stderr(`bbackup-remote: ${(e as Error).message}\n${BLOCK_SCAN_USAGE}\n`)
    return 2
  }
  if (parsed.values.protocol === true) {
    io.stdout?.(`${BLOCK_SCAN_PROTOCOL}\n`)
    return 0
  }
  const chunkSize = Number(parsed.values['chunk-size'])
  const size = Number(parsed.values.size)
  const [path, ...more] = parsed.positionals
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || !Number.isSafeInteger(size) || size < 0 || path === undefined || !path.startsWith('/') || more.length > 0 || io.stdin === undefined || io.writeOut === undefined) {
    io.stderr(`bbackup-remote: ${BLOCK_SCAN_USAGE}\n`)
    return 2
  }
  const given: Buffer[] = []
  for await (const b of io.stdin) given.push(b)
  const parentHashes = Buffer.concat(given)
  const pool = openHashPool()
  try {
    await serveBlockScan({ at: localTransport(path), path, size, chunkSize, parentHashes, pool, write: io.writeOut })
    return 0
  } catch (e) {
    io.stderr(`bbackup-remote: block-scan of ${path}: ${(e as Error).message}\n`)
    return 1
  } finally {
    await pool.close()
  }
}
