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
export const childrenOf = (pid: number): number[] => {
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

/** A server process on 127.0.0.1 that a fixture starts, restarts and stops, by pid. */
export interface ServerProcess {
  /** starts it and waits until it accepts on the port; throws with the end of its log when it exits first or takes more than 10 s */
  start(): Promise<void>
  /** stops what it forked with SIGKILL, itself with the signal given at creation, and waits for it; safe to call twice */
  stop(): Promise<void>
  /** pids of the processes serving connections now (below the listener) */
  sessionPids(): number[]
}

export const serverProcess = (argv: readonly string[], port: number, logFile: string, stopSignal: NodeJS.Signals): ServerProcess => {
  const [file = '', ...args] = argv
  let child: ChildProcess | undefined
  return {
    start: async () => {
      const started = spawn(file, args, { stdio: 'ignore' })
      child = started
      const deadline = Date.now() + 10_000
      while (!(await accepting(port))) {
        if (started.exitCode !== null) throw new Error(`${file} exited with ${started.exitCode}: ${(await readFile(logFile, 'utf8').catch(() => '')).slice(-2000)}`)
        if (Date.now() > deadline) {
          started.kill('SIGKILL')
          throw new Error(`${file} did not accept connections within 10 s`)
        }
        await new Promise((r) => setTimeout(r, 20))
      }
    },
    stop: async () => {
      const server = child
      child = undefined
      if (server?.pid === undefined || server.exitCode !== null || server.signalCode !== null) return
      for (const pid of descendantsOf(server.pid)) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
      const gone = new Promise<void>((resolve) => server.once('exit', () => resolve()))
      server.kill(stopSignal)
      await gone
    },
    sessionPids: () => (child?.pid === undefined ? [] : descendantsOf(child.pid)),
  }
}
