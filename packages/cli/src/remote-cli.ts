import { once } from 'node:events'
import { readSync } from 'node:fs'
import { remoteMain } from './remote.js'

/** a pause of `ms` that blocks (stdin that would block is polled) */
const nap = (ms: number): void => void Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

void remoteMain(process.argv.slice(2), {
  stderr: (text) => void process.stderr.write(text),
  // made only when asked for: a session opened ahead reads its line from fd 0 itself, and hands the rest on
  get stdin() {
    return process.stdin
  },
  readLine: () => {
    const byte = Buffer.alloc(1)
    const line: number[] = []
    for (let wait = 1; ;) {
      let n: number
      try {
        n = readSync(0, byte, 0, 1, null)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e
        nap(wait)
        wait = Math.min(wait * 2, 20)
        continue
      }
      if (n === 0) return line.length === 0 ? undefined : Buffer.from(line).toString('utf8')
      if (byte[0] === 10) return Buffer.from(line).toString('utf8')
      line.push(byte[0] ?? 0)
    }
  },
  stdout: (bytes) => void process.stdout.write(bytes),
  writeOut: async (bytes) => {
    if (!process.stdout.write(bytes)) await once(process.stdout, 'drain')
  },
  env: process.env,
  self: [process.execPath, ...process.execArgv, ...process.argv.slice(1, 2)],
}).then((code) => {
  process.exitCode = code
})
