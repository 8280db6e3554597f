import { once } from 'node:events'
import { remoteMain } from './remote.js'

void remoteMain(process.argv.slice(2), {
  stderr: (text) => void process.stderr.write(text),
  stdin: process.stdin,
  stdout: (bytes) => void process.stdout.write(bytes),
  writeOut: async (bytes) => {
    if (!process.stdout.write(bytes)) await once(process.stdout, 'drain')
  },
  env: process.env,
}).then((code) => {
  process.exitCode = code
})
