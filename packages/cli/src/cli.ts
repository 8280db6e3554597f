import { main } from './main.js'

/** set by the single executable build (scripts/bundle.mjs --sea): the binary is bbackup itself */
declare const BBACKUP_SEA: boolean | undefined
const sea = typeof BBACKUP_SEA === 'boolean' && BBACKUP_SEA

// a reader that went away (`bbackup list | head`) is not an error, and must not stop a backup half way: the rest of the output is dropped
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e
  })
}

void main(process.argv.slice(2), {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
  binaryStdout: process.stdout,
  isTTY: process.stderr.isTTY,
  cwd: process.cwd(),
  // what runs this bbackup again (a timer's ExecStart): Node and the script, or the one binary
  self: sea ? [process.execPath] : [process.execPath, process.argv[1] ?? 'bbackup'],
}).then((code) => {
  process.exitCode = code
})
