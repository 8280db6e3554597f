import { remoteMain } from './remote.js'

void remoteMain(process.argv.slice(2), {
  stderr: (text) => void process.stderr.write(text),
  stdin: process.stdin,
  stdout: (bytes) => void process.stdout.write(bytes),
  env: process.env,
}).then((code) => {
  process.exitCode = code
})
