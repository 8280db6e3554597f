import { bbError } from '@bb/core'
import { main } from './main.js'
import { renderError } from './render.js'

/** set by the single executable build (scripts/bundle.mjs --sea): the binary is bbackup itself */
declare const BBACKUP_SEA: boolean | undefined
const sea = typeof BBACKUP_SEA === 'boolean' && BBACKUP_SEA

// a reader that went away (`bbackup list | head`) is not an error, and must not stop a backup half way: the rest of the output is dropped
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e
  })
}

/** the directory bbackup was started in; undefined when it was deleted since (a shell can still be in it), where getcwd fails */
const startedIn = (): string | undefined => {
  try {
    return process.cwd()
  } catch {
    return undefined
  }
}

const cwd = startedIn()
if (cwd === undefined) {
  // relative paths would mean nothing, and rsync fails there too (getcwd: exit 3)
  process.stderr.write(renderError(bbError('IO_FAILED', 'the current directory no longer exists (it was deleted after this shell went into it)', 'cd to a directory that exists (cd /), and run again'), false))
  process.exitCode = 1
} else {
  void main(process.argv.slice(2), {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    binaryStdout: process.stdout,
    isTTY: process.stderr.isTTY,
    cwd,
    // what runs this bbackup again (a timer's ExecStart): Node and the script, or the one binary
    self: sea ? [process.execPath] : [process.execPath, process.argv[1] ?? 'bbackup'],
  }).then((code) => {
    process.exitCode = code
  })
}
