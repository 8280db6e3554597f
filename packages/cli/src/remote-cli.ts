import { remoteMain } from './remote.js'

process.exitCode = await remoteMain(process.argv.slice(2), {
  stderr: (text) => void process.stderr.write(text),
  env: process.env,
})
