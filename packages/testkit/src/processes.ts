import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { connect, createServer } from 'node:net'

/** a free TCP port on 127.0.0.1 */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))))
    })
  })

/** whether something accepts TCP connections on 127.0.0.1:port */
export const accepting = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })

/** pids whose parent is `pid`, from /proc */
const childrenOf = (pid: number): number[] => {
  const found: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) found.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return found
}

/** every process below `pid` (children, their children, ...), from /proc */
export const descendantsOf = (pid: number): number[] => childrenOf(pid).flatMap((c) => [c, ...descendantsOf(c)])

/**
 * Starts a server (argv) and waits until it accepts on 127.0.0.1:port; throws with the end of its
 * log when it exits first or takes more than 10 s.
 */
export const startServer = async (argv: readonly string[], port: number, logFile: string): Promise<ChildProcess> => {
  const [file = '', ...args] = argv
  const child = spawn(file, args, { stdio: 'ignore' })
  const deadline = Date.now() + 10_000
  while (!(await accepting(port))) {
    if (child.exitCode !== null) throw new Error(`${file} exited with ${child.exitCode}: ${(await readFile(logFile, 'utf8').catch(() => '')).slice(-2000)}`)
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`${file} did not accept connections within 10 s`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return child
}

/** Stops a server started by {@link startServer}: what it forked with SIGKILL, itself with `signal`; waits for it to exit. */
export const stopServer = async (server: ChildProcess | undefined, signal: NodeJS.Signals): Promise<void> => {
  if (server?.pid === undefined || server.exitCode !== null || server.signalCode !== null) return
  for (const pid of descendantsOf(server.pid)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
  const gone = new Promise<void>((resolve) => server.once('exit', () => resolve()))
  server.kill(signal)
  await gone
}
