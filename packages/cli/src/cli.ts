import { main } from './main.js'

process.exitCode = await main(process.argv.slice(2), {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
  isTTY: process.stderr.isTTY,
  cwd: process.cwd(),
  self: [process.execPath, process.argv[1] ?? 'bbackup'],
})
