import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { SshLocation } from '@bb/core'
import { openSshSession } from '../src/ssh/session.js'

describe("an ssh session's private directory", () => {
  let dir: string
  const tmp = process.env.TMPDIR
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'bbackup-sweep-'))
    process.env.TMPDIR = dir
  })
  afterEach(() => {
    if (tmp === undefined) delete process.env.TMPDIR
    else process.env.TMPDIR = tmp
    rmSync(dir, { recursive: true, force: true })
  })

  const made = (name: string, files: readonly string[], mode = 0o700): string => {
    mkdirSync(join(dir, name), { mode })
    for (const f of files) writeFileSync(join(dir, name, f), '')
    return name
  }

  it('takes away those of runs killed before they could (their pid runs no more; only their own files in it), and nothing else', async () => {
    // a process that has ended: its pid runs no more
    const dead = spawnSync('true').pid
    made(`bbackup-ssh-${dead}-AbC123`, ['0.conf', '0.sock', '1.conf'])
    // a process that ended and is not reaped yet (its parent, `sleep 30`, never waits): a zombie runs no more
    const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] })
    try {
      const zombie = Number(await new Promise<string>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(d.toString()))))
      for (let i = 0; i < 100 && !/\) Z /.test(readFileSync(`/proc/${zombie}/stat`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 20))
      made(`bbackup-ssh-${zombie}-Zombie`, ['0.conf', '0.sock'])
      const kept = [
        made(`bbackup-ssh-${dead}-keep01`, ['0.conf', 'notes.txt']), // something else inside
        made('bbackup-ssh-1-keep02', ['0.conf']), // a process that runs (init)
        made(`bbackup-ssh-${dead}-keep03`, ['0.conf'], 0o755), // not private to its user
        made('bbackup-ssh-keep04', ['0.conf']), // an older bbackup's name, without its pid
        made(`other-${dead}-keep05`, ['0.conf']), // not a run's directory at all
      ]

      const session = openSshSession()
      session.connection({ kind: 'ssh', host: '127.0.0.1', port: 1, path: '/x' } as SshLocation)
      const own = readdirSync(dir).filter((n) => n.startsWith(`bbackup-ssh-${process.pid}-`))
      expect(own).toHaveLength(1)
      expect(readdirSync(dir).sort()).toEqual([...kept, ...own].sort())
      await session.close()
      expect(existsSync(join(dir, own[0] as string))).toBe(false)
    } finally {
      parent.kill('SIGKILL')
    }
  })
})
