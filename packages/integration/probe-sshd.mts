import { startSshd } from '@bb/testkit'
import { writeFileSync } from 'node:fs'
const s = await startSshd()
writeFileSync('/tmp/probe/sshd.json', JSON.stringify({ port: s.port, identityFile: s.identityFile, knownHostsFile: s.knownHostsFile, pid: process.pid }))
process.on('SIGTERM', async () => { await s.stop(); process.exit(0) })
setInterval(() => {}, 1 << 30)
