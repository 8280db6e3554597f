#!/usr/bin/env node
// `npm run demo`: a real backup of a generated sample tree with the built bbackup CLI. Runs
// `bbackup run` twice with a change in between (the second run is incremental: unchanged files are
// hard links to the first backup), then `bbackup list` and `bbackup status`. Everything lives in
// .demo/ beside this repository; no root needed.
import { spawnSync } from 'node:child_process'
import { mkdirSync, rmSync, statSync, writeFileSync, readlinkSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const demo = join(root, '.demo')
const source = join(demo, 'source')
const target = join(demo, 'backups')
const state = join(demo, 'state')
const cli = join(root, 'packages/cli/bin/bbackup.cjs')

const has = (tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0
if (!has('rsync')) {
  if (process.getuid?.() === 0 && has('apt-get')) {
    console.log('demo: installing rsync (apt-get install rsync)')
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit' })
    const r = spawnSync('apt-get', ['install', '-y', '-qq', 'rsync'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
    if (r.status !== 0) process.exit(1)
  } else {
    console.error('demo: rsync is not installed. Install it (Debian/Ubuntu: sudo apt-get install rsync), then run npm run demo again.')
    process.exit(1)
  }
}

const bbackup = (...args) => {
  console.log(`\n$ bbackup ${args.join(' ')}`)
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit', cwd: demo })
  if (r.status !== 0) {
    console.error(`demo: bbackup ${args[0]} exited with ${r.status}`)
    process.exit(r.status ?? 1)
  }
}

rmSync(demo, { recursive: true, force: true })
// a sample tree: 40 folders of 25 files, some of them larger
for (let d = 0; d < 40; d++) {
  mkdirSync(join(source, `project-${d}`, 'src'), { recursive: true })
  for (let f = 0; f < 25; f++) {
    const body = `project ${d} file ${f}\n`.repeat(f % 5 === 0 ? 2000 : 20)
    writeFileSync(join(source, `project-${d}`, 'src', `file-${f}.txt`), body)
  }
}
console.log(`demo: generated 1000 files in ${source}`)

const common = ['--state-dir', state, '--keep-backups', '7d 4w 12m']
bbackup('run', 'source', 'backups', ...common)
const first = readlinkSync(join(target, 'latest'))

// a change between the runs: one file edited, one added, one removed
writeFileSync(join(source, 'project-0/src/file-1.txt'), 'edited between the two runs\n')
writeFileSync(join(source, 'project-1/NEW.txt'), 'added between the two runs\n')
rmSync(join(source, 'project-2/src/file-2.txt'))
// names carry the time to the second: make sure the second run gets its own
spawnSync('sleep', ['1'])
bbackup('run', 'source', 'backups', ...common)
const second = readlinkSync(join(target, 'latest'))

const inode = (backup, path) => statSync(join(target, backup, path)).ino
const unchangedLinked = inode(first, 'project-5/src/file-5.txt') === inode(second, 'project-5/src/file-5.txt')
const editedCopied = inode(first, 'project-0/src/file-1.txt') !== inode(second, 'project-0/src/file-1.txt')
console.log(`\ndemo: an unchanged file is ${unchangedLinked ? 'one inode shared by both backups (hard link)' : 'NOT shared'}; the edited one is ${editedCopied ? 'a new copy' : 'NOT a new copy'}`)

bbackup('list', 'source', 'backups', '--state-dir', state)
bbackup('status', 'source', 'backups', '--state-dir', state)
if (!unchangedLinked || !editedCopied) process.exit(1)
console.log(`\ndemo: done. Look around in ${demo}; remove it with: rm -rf .demo`)
