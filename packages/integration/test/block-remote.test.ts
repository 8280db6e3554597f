import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { createWriteStream, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { chmod, open, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { backupVolume } from '@bb/drivers/block'
import { localTransport } from '@bb/transports/local'
import { makeTempDir, mountLoopFilesystem, requireTools, startSshd, type LoopFilesystem, type Sshd, type TempDir } from '@bb/testkit'
import { ROOT, runCli, sameBytes, waitFor } from './helpers.js'

const MiB = 1024 * 1024

// backy's model: the backup server reads the VM host. Here the "VM host" is a real sshd on 127.0.0.1
// whose filesystem is the same loop-mounted btrfs; the image is frozen there and streamed here.
describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'btrfs', 'mkfs.btrfs', 'cp', 'head', 'stat', 'dd', 'losetup', 'findmnt', 'mkfs.ext4'], { root: true }))('block volumes with the source on another host (ssh)', () => {
  let sshd: Sshd
  let fs: LoopFilesystem
  let dir: string
  let ssh: string[]
  let bin: TempDir
  /** bbackup-remote as installed on the source's host: here its source, run through tsx */
  let helper: string
  const remote = (path: string): string => `ssh://root@127.0.0.1:${sshd.port}${path}`

  beforeAll(async () => {
    sshd = await startSshd()
    ssh = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile]
    bin = await makeTempDir('bbackup-remote-bin')
    helper = join(bin.path, 'bbackup-remote')
    await writeFile(helper, `#!/bin/sh\ncd ${ROOT} && exec ${process.execPath} --conditions=@bb/source --import tsx ${join(ROOT, 'packages/cli/src/remote-cli.ts')} "$@"\n`)
    await chmod(helper, 0o755)
  })
  afterAll(async () => {
    await sshd?.stop()
    await bin?.cleanup()
  })
  beforeEach(async () => {
    fs = await mountLoopFilesystem({ type: 'btrfs', sizeMiB: 512 })
    dir = fs.mountPoint
    await writeFile(join(dir, 'placeholder'), '')
    const h = await open(join(dir, 'vm.img'), 'w')
    await h.write(randomBytes(10 * MiB), 0, 10 * MiB, 0)
    await h.write(randomBytes(3 * MiB), 0, 3 * MiB, 20 * MiB)
    await h.truncate(32 * MiB)
    await h.close()
  })
  afterEach(async () => {
    await fs?.cleanup()
  })

  /** the CLI over one ssh login, with no session left open after it */
  const overSsh = async (argv: string[]) => {
    const before = await sshd.logins()
    const r = await runCli([...argv, ...ssh], dir)
    expect(await sshd.logins() - before).toBe(1)
    await waitFor(async () => sshd.sessionPids().length === 0, 5000)
    return r
  }
  const copiesBesideSource = async (): Promise<string[]> => (await readdir(dir)).filter((n) => n.startsWith('.vm.img.bbackup-'))

  it('freezes the image on its host, streams it once, and writes only the changed chunks; each revision equals the source', async () => {
    const init = await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img')), '--chunk-size', '1M'])
    expect(init.code, init.stderr).toBe(0)
    expect(JSON.parse(readFileSync(join(dir, 'backy/vm/volume.json'), 'utf8'))).toMatchObject({ source: remote(join(dir, 'vm.img')), snapshot: 'auto' })

    const first = await overSsh(['backup', '-b', 'backy/vm', '--json'])
    expect(first.code, first.stdout + first.stderr).toBe(0)
    const full = JSON.parse(first.stdout) as { revision: { uuid: string; consistency: string; stats: { chunksWritten: number; bytesRead: number } } }
    expect(full.revision).toMatchObject({ consistency: 'reflink', stats: { chunksWritten: 13, bytesRead: 32 * MiB } })
    expect(sameBytes(join(dir, 'backy/vm', `${full.revision.uuid}.img`), join(dir, 'vm.img'))).toBe(true)
    expect(await copiesBesideSource()).toEqual([])

    // scattered 4 KiB writes into three chunks, one of them a hole until now
    const h = await open(join(dir, 'vm.img'), 'r+')
    for (const offset of [1 * MiB + 4096, 1 * MiB + 500 * 1024, 7 * MiB, 28 * MiB]) await h.write(randomBytes(4096), 0, 4096, offset)
    await h.close()
    const second = await overSsh(['backup', '-b', 'backy/vm', '-f', '--json'])
    expect(second.code, second.stdout + second.stderr).toBe(0)
    const incr = JSON.parse(second.stdout) as { revision: { uuid: string; parent: string; stats: { chunksWritten: number } } }
    expect(incr.revision).toMatchObject({ parent: full.revision.uuid, stats: { chunksWritten: 3 } })
    expect(sameBytes(join(dir, 'backy/vm', `${incr.revision.uuid}.img`), join(dir, 'vm.img'))).toBe(true)
    expect(await copiesBesideSource()).toEqual([])
  })

  it("with bbackup-remote on the source's host, hashes there: only changed chunks cross the network", async () => {
    expect((await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img')), '--chunk-size', '1M', '--remote-helper', helper])).code).toBe(0)
    type Stats = { chunksWritten: number; bytesTransferred: number; scannedOn?: string; bytesRead: number }
    const first = await overSsh(['backup', '-b', 'backy/vm', '--json'])
    expect(first.code, first.stdout + first.stderr).toBe(0)
    const full = JSON.parse(first.stdout) as { revision: { uuid: string; stats: Stats } }
    // 13 chunks of data cross (and a few bytes a chunk of records); the 19 empty ones are a record each
    expect(full.revision.stats).toMatchObject({ chunksWritten: 13, scannedOn: '127.0.0.1' })
    expect(full.revision.stats.bytesTransferred).toBeGreaterThan(13 * MiB)
    expect(full.revision.stats.bytesTransferred).toBeLessThan(13 * MiB + 4096)
    expect(sameBytes(join(dir, 'backy/vm', `${full.revision.uuid}.img`), join(dir, 'vm.img'))).toBe(true)

    const h = await open(join(dir, 'vm.img'), 'r+')
    for (const offset of [2 * MiB, 9 * MiB + 1234, 30 * MiB]) await h.write(randomBytes(4096), 0, 4096, offset)
    // a chunk of data that becomes zeros: a hole again
    await h.write(Buffer.alloc(MiB), 0, MiB, 5 * MiB)
    await h.close()
    const second = await overSsh(['backup', '-b', 'backy/vm', '-f'])
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(second.stdout).toMatch(/3\.0 MiB written in 3 of 32 chunks/)
    expect(second.stdout).toMatch(/3\.0 MiB crossed the network \(hashed on 127\.0\.0\.1: only changed chunks\)/)
    const latest = join(dir, 'backy/vm', 'latest')
    expect(sameBytes(latest, join(dir, 'vm.img'))).toBe(true)
    expect(await copiesBesideSource()).toEqual([])

    // a job of the config, with its own ssh settings, as a timer runs it
    await writeFile(join(dir, 'bbackup.toml'), `[jobs.vm]\ndriver = "block"\nbackup_dir = "backy/vm"\nssh_identity = "${sshd.identityFile}"\nssh_known_hosts = "${sshd.knownHostsFile}"\n`)
    const logins = await sshd.logins()
    const fromConfig = await runCli(['run', '-c', 'bbackup.toml', '--json'], dir)
    expect(fromConfig.code, fromConfig.stdout + fromConfig.stderr).toBe(0)
    // one revision a day is due and there is one of today: nothing to do, but the source was looked at
    expect(JSON.parse(fromConfig.stdout)).toMatchObject({ job: 'vm', skipped: true })
    expect(await sshd.logins() - logins).toBe(1)

    // a helper named in volume.json must answer: no quiet fall back to streaming
    const config = join(dir, 'backy/vm/volume.json')
    writeFileSync(config, readFileSync(config, 'utf8').replace(helper, '/nonexistent/bbackup-remote'))
    const broken = await overSsh(['backup', '-b', 'backy/vm', '-f'])
    expect(broken.code).toBe(1)
    expect(broken.stderr).toContain('remote helper /nonexistent/bbackup-remote does not answer')
    expect(await copiesBesideSource()).toEqual([])
  })

  it('through the forced command of a send key: the scan runs as bbackup-remote itself, the freeze copy is made and removed there, and a key without the send role reads nothing', async () => {
    const log = join(dir, 'remote.log')
    const forced = (roles: string): Promise<void> => sshd.setAuthorizedKeys([`command="${helper} --role ${roles} --restrict-path ${dir} --log ${log}",restrict %KEY%`])
    try {
      await forced('send')
      expect((await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img')), '--chunk-size', '1M'])).code).toBe(0)
      const { id } = JSON.parse(readFileSync(join(dir, 'backy/vm/volume.json'), 'utf8')) as { id: string }
      const leftover = `.vm.img.bbackup-${id.slice(0, 8)}-00000000-0000-4000-8000-000000000000`
      await writeFile(join(dir, leftover), 'a copy a killed run left')
      const first = await overSsh(['backup', '-b', 'backy/vm', '--json'])
      expect(first.code, first.stdout + first.stderr).toBe(0)
      const full = JSON.parse(first.stdout) as { revision: { uuid: string; stats: { chunksWritten: number; scannedOn?: string } } }
      expect(full.revision.stats).toMatchObject({ chunksWritten: 13, scannedOn: '127.0.0.1' })
      expect(sameBytes(join(dir, 'backy/vm', `${full.revision.uuid}.img`), join(dir, 'vm.img'))).toBe(true)
      const h = await open(join(dir, 'vm.img'), 'r+')
      for (const offset of [2 * MiB, 9 * MiB + 1234, 30 * MiB]) await h.write(randomBytes(4096), 0, 4096, offset)
      await h.close()
      const second = await overSsh(['backup', '-b', 'backy/vm', '-f'])
      expect(second.code, second.stdout + second.stderr).toBe(0)
      expect(second.stdout).toMatch(/3\.0 MiB crossed the network \(hashed on 127\.0\.0\.1: only changed chunks\)/)
      expect(sameBytes(join(dir, 'backy/vm', 'latest'), join(dir, 'vm.img'))).toBe(true)
      expect(await copiesBesideSource()).toEqual([])
      // what the filter ran: the copy, its removal, and the scan as itself (never a program the client named)
      const ran = readFileSync(log, 'utf8')
      expect(ran).not.toContain('refused')
      expect(ran).toMatch(/ send \["cp","--reflink=always","--","[^"]*\/vm\.img","[^"]*\/\.vm\.img\.bbackup-/)
      expect(ran).toMatch(/ delete \["sh","-c",".*","sh","[^"]*\/\.vm\.img\.bbackup-[^"]*00000000-0000-4000-8000-000000000000"\]/)
      expect(ran).toContain(` send ["sh","-c","echo \\"bbackup-remote-pid:$$\\" >&2; exec \\"$@\\"","sh","${process.execPath}",`)
      expect(ran).toMatch(/remote-cli\.ts","block-scan","--chunk-size","1048576","--size","33554432","--","[^"]*\/\.vm\.img\.bbackup-/)

      // a key that may only receive (and look) cannot freeze or read the source
      await forced('receive')
      const refused = await overSsh(['backup', '-b', 'backy/vm', '-f'])
      expect(refused.code).not.toBe(0)
      expect(refused.stderr).toMatch(/needs the send role/)
      expect(await copiesBesideSource()).toEqual([])
    } finally {
      await sshd.setAuthorizedKeys(['%KEY%'])
    }
  })

  it('reads the live image with --no-snapshot (a warning), and removes copies a killed run left beside it', async () => {
    expect((await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img'))])).code).toBe(0)
    const { id } = JSON.parse(readFileSync(join(dir, 'backy/vm/volume.json'), 'utf8')) as { id: string }
    const leftover = `.vm.img.bbackup-${id.slice(0, 8)}-00000000-0000-4000-8000-000000000000`
    await writeFile(join(dir, leftover), 'a copy a killed run left')
    const notOurs = '.vm.img.bbackup-other'
    await writeFile(join(dir, notOurs), 'not of this volume')
    const live = await overSsh(['backup', '-b', 'backy/vm', '--no-snapshot'])
    expect(live.code, live.stderr).toBe(0)
    expect(live.stdout).toContain('read live, without a snapshot')
    expect(live.stdout).toContain(`removed what an unfinished run left: ${leftover}`)
    expect(existsSync(join(dir, leftover))).toBe(false)
    expect(readFileSync(join(dir, notOurs), 'utf8')).toBe('not of this volume')
  })

  it('restores to a new file or a device on the VM host (dd there, holes kept, never over a file), and to stdout', async () => {
    expect((await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img'))])).code).toBe(0)
    expect((await overSsh(['backup', '-b', 'backy/vm'])).code).toBe(0)
    const back = join(dir, 'back.img')
    const restored = await overSsh(['restore', '-b', 'backy/vm', 'latest', remote(back)])
    expect(restored.code, restored.stderr).toBe(0)
    expect(restored.stdout).toMatch(new RegExp(`^restored [0-9a-f-]{36} \\(32\\.0 MiB\\) to ${remote(back)}\n$`))
    expect(sameBytes(back, join(dir, 'vm.img'))).toBe(true)
    // the image holds all of the VM's data: not readable by others; the chunks of zeros stay holes (4 chunks of data)
    const stats = statSync(back)
    expect(stats.mode & 0o777).toBe(0o600)
    expect(stats.blocks * 512).toBeLessThanOrEqual(16 * MiB)
    const partials = async () => (await readdir(dir)).filter((n) => n.endsWith('.bbackup-partial'))
    expect(await partials()).toEqual([])

    writeFileSync(back, 'changed since')
    const again = await runCli(['restore', '-b', 'backy/vm', 'latest', remote(back), ...ssh], dir)
    expect(again).toMatchObject({ code: 1, stderr: expect.stringContaining(`${remote(back)} already exists`) as unknown })
    expect(readFileSync(back, 'utf8')).toBe('changed since')
    const noDir = await runCli(['restore', '-b', 'backy/vm', 'latest', remote(join(dir, 'nodir/vm.img')), ...ssh], dir)
    expect(noDir.code).not.toBe(0)
    expect(noDir.stderr).toContain('create its directory on that host first')
    expect(existsSync(join(dir, 'nodir'))).toBe(false)
    expect(await partials()).toEqual([])

    // backy's `restore ... -`: the image on stdout, for a pipe; never onto a terminal
    const piped = join(dir, 'piped.img')
    const out = createWriteStream(piped)
    const toStdout = await runCli(['restore', '-b', 'backy/vm', '0', '-'], dir, { binaryStdout: out })
    await new Promise((resolve) => out.end(resolve))
    expect(toStdout, toStdout.stderr).toMatchObject({ code: 0, stdout: '', stderr: expect.stringMatching(/^restored .* to stdout\n$/) as unknown })
    expect(sameBytes(piped, join(dir, 'vm.img'))).toBe(true)
    const terminal = Object.assign(new PassThrough(), { isTTY: true })
    const toTerminal = await runCli(['restore', '-b', 'backy/vm', '0', '-'], dir, { binaryStdout: terminal })
    expect(toTerminal).toMatchObject({ code: 2, stderr: expect.stringContaining('pipe it into a command or redirect it') as unknown })
    expect(terminal.read()).toBeNull()

    // a device there: only with --force, at least as large, and not while it is mounted
    const devices: string[] = []
    const mountPoint = join(dir, 'mounted')
    let mounted = false
    try {
      for (const [name, bytes] of [['small.disk', 16 * MiB], ['vm.disk', 40 * MiB]] as const) {
        execFileSync('truncate', ['-s', String(bytes), join(dir, name)])
        devices.push(execFileSync('losetup', ['-f', '--show', join(dir, name)], { encoding: 'utf8' }).trim())
      }
      const [small = '', disk = ''] = devices
      const unforced = await runCli(['restore', '-b', 'backy/vm', 'latest', remote(disk), ...ssh], dir)
      expect(unforced).toMatchObject({ code: 1, stderr: expect.stringContaining(`${remote(disk)} is a block device: restoring overwrites all of it`) as unknown })
      const tooSmall = await runCli(['restore', '-b', 'backy/vm', 'latest', remote(small), '--force', ...ssh], dir)
      expect(tooSmall.stderr).toContain(`holds ${16 * MiB} bytes, the revision ${32 * MiB}`)
      const forced = await overSsh(['restore', '-b', 'backy/vm', 'latest', remote(disk), '--force'])
      expect(forced.code, forced.stderr).toBe(0)
      execFileSync('cmp', ['-n', String(32 * MiB), disk, join(dir, 'vm.img')])
      execFileSync('mkfs.ext4', ['-q', disk])
      execFileSync('mkdir', ['-p', mountPoint])
      execFileSync('mount', [disk, mountPoint])
      mounted = true
      const busy = await runCli(['restore', '-b', 'backy/vm', 'latest', remote(disk), '--force', ...ssh], dir)
      expect(busy).toMatchObject({ code: 1, stderr: expect.stringContaining(`${remote(disk)} is mounted on ${mountPoint}`) as unknown })
    } finally {
      if (mounted) execFileSync('umount', [mountPoint])
      for (const device of devices) execFileSync('losetup', ['-d', device])
    }
  })

  it('refuses what it cannot read, with the fix, and creates nothing', async () => {
    const missing = await runCli(['init', '-b', 'backy/vm', remote(join(dir, 'missing.img')), ...ssh], dir)
    expect(missing).toMatchObject({ code: 1, stderr: expect.stringContaining('does not exist') as unknown })
    const relative = await runCli(['init', '-b', 'backy/vm', `root@127.0.0.1:vm.img`, ...ssh], dir)
    expect(relative.code).not.toBe(0)
    expect(relative.stderr).toContain('absolute')
    expect(existsSync(join(dir, 'backy'))).toBe(false)
    // the revisions are kept here: a backup directory on another host is refused, not taken as a name here
    for (const command of [['init', '-b', `root@127.0.0.1:${join(dir, 'backy/vm')}`, join(dir, 'vm.img')], ['status', '-b', remote(join(dir, 'backy/vm'))], ['backup', '-b', 'root@127.0.0.1:/backy/vm']]) {
      const elsewhere = await runCli(command, dir)
      expect(elsewhere, command.join(' ')).toMatchObject({ code: 2, stderr: expect.stringContaining('is on another host: a volume\'s revisions are kept on the disk of the host that runs bbackup') as unknown })
    }
    expect(await readdir(dir)).not.toContain('root@127.0.0.1:')
    // a library caller must hand over the way to the source's host
    expect((await overSsh(['init', '-b', 'backy/vm', remote(join(dir, 'vm.img'))])).code).toBe(0)
    const r = await backupVolume({ at: localTransport(join(dir, 'backy/vm')), force: true })
    expect(r._unsafeUnwrapErr()).toMatchObject({ code: 'INVALID_OPTIONS', hint: expect.stringContaining('sourceHost') as unknown })
    expect((await readdir(join(dir, 'backy/vm'))).filter((n) => n.endsWith('.img'))).toEqual([])
  })
})
