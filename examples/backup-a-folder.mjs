// Backs up a folder from a plain Node script with the bbackup SDK, then lists the backups.
//
//   node examples/backup-a-folder.mjs SOURCE TARGET      back up SOURCE into TARGET
//   node examples/backup-a-folder.mjs --self-test        do it on a temporary tree and check it
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backup, defaultStateDir, jobId, list } from '@bb/core'
import { rsyncDriver } from '@bb/drivers/rsync'
import { localTransport } from '@bb/transports/local'

const selfTest = process.argv[2] === '--self-test'
const scratch = selfTest ? mkdtempSync(join(tmpdir(), 'bbackup-example-')) : undefined
const [source, target] = selfTest ? [join(scratch, 'source'), join(scratch, 'backups')] : process.argv.slice(2)
if (source === undefined || target === undefined) {
  console.error('usage: node examples/backup-a-folder.mjs SOURCE TARGET | --self-test')
  process.exit(2)
}
if (selfTest) {
  mkdirSync(join(source, 'notes'), { recursive: true })
  writeFileSync(join(source, 'notes', 'todo.txt'), 'water the plants\n')
}

const sourceTransport = localTransport(source)
const targets = [localTransport(target)]
// the job's lock and journal: where the CLI keeps them too, unless this is the self-test
const stateDir = selfTest ? join(scratch, 'state') : defaultStateDir(jobId(sourceTransport, targets))
const job = {
  driver: rsyncDriver({ excludes: ['.cache/'] }),
  source: sourceTransport,
  targets,
  state: { transport: localTransport(stateDir), directory: stateDir },
  retention: { target: { keepLast: 10 } },
}

const report = await backup(job, { onEvent: (event) => event.type === 'transfer-finished' && console.log(`backed up to ${event.target}: ${event.snapshot}`) })
const lists = await list(job)
try {
  if (report.isErr()) throw new Error(`${report.error.message} (${report.error.hint})`)
  if (report.value.failed > 0) throw new Error(report.value.targets.map((t) => t.error?.message).join('; '))
  if (lists.isErr()) throw new Error(lists.error.message)
  const names = lists.value[0].snapshots.filter((s) => s.complete).map((s) => s.name)
  console.log(`${target} holds ${names.length} backup(s): ${names.join(', ')}`)
  if (selfTest && names.length !== 1) throw new Error(`self-test: expected 1 backup, found ${names.length}`)
} catch (e) {
  console.error(`example failed: ${e.message}`)
  process.exitCode = 1
} finally {
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true })
}
