import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { createWriteStream, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { chmod, chown, open, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { backupVolume } from '@bb/drivers/block'
import { localTransport } from '@bb/transports/local'
import { makeTempDir, mountLoopFilesystem, requireTools, startSshd, startTcpProxy, type LoopFilesystem, type Sshd, type TempDir } from '@bb/testkit'
import { binWithout, patch, ROOT, runCli, sameBytes, waitFor } from './helpers.js'

const MiB = 1024 * 1024

// backy's model: the backup server reads the VM host. Here the "VM host" is a real sshd on 127.0.0.1
// whose filesystem is the same loop-mounted btrfs; the image is frozen there and streamed here.
describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen', 'btrfs', 'mkfs.btrfs', 'cp', 'head', 'stat', 'dd', 'losetup', 'findmnt', 'mkfs.ext4', 'zstd', 'useradd', 'userdel', 'getent'], { root: true }))('block volumes with the source on another host (ssh)', () => {
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

  it("a block device on the source's host, read live by bbackup-remote there: all of it the first time, then the changed chunks", async () => {
    const device = execFileSync('losetup', ['-f', '--show', join(dir, 'vm.img')], { encoding: 'utf8' }).trim()
    try {
      expect((await overSsh(['init', '-b', 'backy/dev', remote(device), '--no-snapshot', '--chunk-size', '1M', '--remote-helper', helper])).code).toBe(0)
      const first = await overSsh(['backup', '-b', 'backy/dev', '--json'])
      expect(first.code, first.stdout + first.stderr).toBe(0)
      // a device has no hole map: every chunk is read there, and the 13 with data cross
      expect(JSON.parse(first.stdout)).toMatchObject({ revision: { size: 32 * MiB, stats: { chunksWritten: 13, bytesRead: 32 * MiB, scannedOn: '127.0.0.1' } } })
      expect(sameBytes(join(dir, 'backy/dev/latest'), device)).toBe(true)
      await patch(device, 4 * MiB + 4096, randomBytes(4096))
      const second = await overSsh(['backup', '-b', 'backy/dev', '-f'])
      expect(second.stdout).toMatch(/1\.0 MiB written in 1 of 32 chunks/)
      expect(sameBytes(join(dir, 'backy/dev/latest'), device)).toBe(true)
    } finally {
      execFileSync('losetup', ['-d', device])
    }
  })

  it('a device on that host read by an ordinary user of its disk group, whose PATH lacks /usr/sbin (blockdev): by a plain login, and through the forced command', async () => {
    const user = `bbdisk${process.pid}`
    const home = await makeTempDir('block-remote-user')
    const device = execFileSync('losetup', ['-f', '--show', join(dir, 'vm.img')], { encoding: 'utf8' }).trim()
    const before = statSync(device)
    const diskGroup = Number(execFileSync('getent', ['group', 'disk'], { encoding: 'utf8' }).split(':')[2])
    const log = join(home.path, 'remote.log')
    let created = false
    try {
      // a password of '*' (none can match): sshd lets a locked account ('!') in by no key
      execFileSync('useradd', ['--no-create-home', '--home-dir', home.path, '--shell', '/bin/sh', '--password', '*', '--groups', 'disk', user])
      created = true
      await chown(home.path, Number(execFileSync('id', ['-u', user], { encoding: 'utf8' })), diskGroup)
      // sshd reads authorized_keys as the user, who also runs the helper; the device as udev leaves a disk
      await chmod(sshd.directory, 0o755)
      await chmod(join(sshd.directory, 'authorized_keys'), 0o644)
      await chmod(bin.path, 0o755)
      await chown(device, 0, diskGroup)
      await chmod(device, 0o660)
      const at = `ssh://${user}@127.0.0.1:${sshd.port}${device}`
      // the user's PATH is sshd's default for a user, without /usr/sbin (the test means nothing otherwise)
      const path = execFileSync('ssh', ['-p', String(sshd.port), '-i', sshd.identityFile, '-o', `UserKnownHostsFile=${sshd.knownHostsFile}`, '-o', 'BatchMode=yes', `${user}@127.0.0.1`, 'echo "$PATH"'], { encoding: 'utf8' })
      expect(path.trim().split(':')).not.toContain('/usr/sbin')

      const init = await overSsh(['init', '-b', 'backy/plain', at, '--no-snapshot', '--chunk-size', '1M', '--remote-helper', 'none'])
      expect(init.code, init.stderr).toBe(0)
      const first = await overSsh(['backup', '-b', 'backy/plain', '--json'])
      expect(first.code, first.stdout + first.stderr).toBe(0)
      expect(JSON.parse(first.stdout)).toMatchObject({ revision: { size: 32 * MiB, stats: { chunksWritten: 13 } } })
      expect(sameBytes(join(dir, 'backy/plain/latest'), device)).toBe(true)

      await sshd.setAuthorizedKeys([`command="${helper} --role send --restrict-path /dev --log ${log}",restrict %KEY%`])
      expect((await overSsh(['init', '-b', 'backy/forced', at, '--no-snapshot', '--chunk-size', '1M'])).code).toBe(0)
      await patch(device, 4 * MiB + 4096, randomBytes(4096))
      const forced = await overSsh(['backup', '-b', 'backy/forced', '--json'])
      expect(forced.code, forced.stdout + forced.stderr).toBe(0)
      expect(JSON.parse(forced.stdout)).toMatchObject({ revision: { size: 32 * MiB, stats: { chunksWritten: 13, scannedOn: '127.0.0.1' } } })
      expect(sameBytes(join(dir, 'backy/forced/latest'), device)).toBe(true)
      expect(readFileSync(log, 'utf8')).toContain(` list ["blockdev","--getsize64","${device}"]`)
    } finally {
      await sshd.setAuthorizedKeys(['%KEY%'])
      await chown(device, before.uid, before.gid)
      await chmod(device, before.mode & 0o7777)
      execFileSync('losetup', ['-d', device])
      // sshd ended each session: no process of the user is left
      if (created) execFileSync('userdel', [user])
      await home.cleanup()
    }
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
      // compressed there: the scan, its stdin (the parent's hashes) and zstd under the filter; the
      // chunk that was a hole is 4 KiB of data once compressed
      const second = await overSsh(['backup', '-b', 'backy/vm', '-f', '--stream-compress', 'zstd'])
      expect(second.code, second.stdout + second.stderr).toBe(0)
      expect(second.stdout).toMatch(/2\.0 MiB crossed the network \(hashed on 127\.0\.0\.1: only changed chunks; zstd-compressed\)/)
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
    expect(restored.stdout).toMatch(new RegExp(`^restored [0-9a-f-]{36} \\(32\\.0 MiB\\) to ${remote(back)}\n  32\\.0 MiB crossed the network\n$`))
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

  it('--stream-compress zstd: the image crosses compressed both ways (streamed, scanned there, restored there); --rate-limit holds each to its rate', async () => {
    // 6 MiB of a guest's text log between the random data: most of it, and the holes, almost nothing once zstd has it
    const h = await open(join(dir, 'vm.img'), 'r+')
    await h.write(Buffer.from('Nov 25 12:00:01 vm1 sshd[812]: Accepted publickey for backup from 10.0.0.2\n'.repeat(6 * MiB / 76)), 0, undefined, 12 * MiB)
    await h.close()
    const proxy = await startTcpProxy(sshd.port)
    try {
      const via = (path: string): string => `ssh://root@127.0.0.1:${proxy.port}${path}`
      const alias = ['--ssh-option', `HostKeyAlias=[127.0.0.1]:${sshd.port}`]
      /** the CLI through the proxy: what crossed down to here and up to the other host, as the wire saw it */
      const wire = async (argv: string[]): Promise<{ up: number; down: number; seconds: number; stdout: string }> => {
        const before = proxy.passed()
        const started = performance.now()
        const r = await runCli([...argv, ...ssh, ...alias], dir)
        expect(r.code, r.stdout + r.stderr).toBe(0)
        const after = proxy.passed()
        return { up: after.up - before.up, down: after.down - before.down, seconds: (performance.now() - started) / 1000, stdout: r.stdout }
      }
      type Report = { revision: { uuid: string; warnings: string[]; stats: { bytesTransferred: number; streamCompressed?: string; chunksWritten: number } } }

      // streamed (no bbackup-remote there): every byte of the image, holes included, unless compressed
      for (const name of ['plain', 'packed']) expect((await wire(['init', '-b', `backy/${name}`, via(join(dir, 'vm.img')), '--chunk-size', '1M', '--remote-helper', 'none'])).stdout).toMatch(/^initialised/)
      const plain = await wire(['backup', '-b', 'backy/plain', '--json'])
      expect(plain.down).toBeGreaterThan(32 * MiB)
      const packed = await wire(['backup', '-b', 'backy/packed', '--stream-compress', 'zstd', '--json'])
      const packedRevision = (JSON.parse(packed.stdout) as Report).revision
      expect(packed.down).toBeLessThan(14 * MiB)
      expect(packedRevision).toMatchObject({ warnings: [], stats: { streamCompressed: 'zstd' } })
      // counted as it crossed: what zstd made of the image, no more than the wire carried
      expect(packedRevision.stats.bytesTransferred).toBeGreaterThan(13 * MiB)
      expect(packedRevision.stats.bytesTransferred).toBeLessThanOrEqual(packed.down)
      expect(sameBytes(join(dir, 'backy/packed/latest'), join(dir, 'vm.img'))).toBe(true)

      // scanned there: the parent's hashes still reach the scan, so an unchanged image sends nothing
      expect((await wire(['init', '-b', 'backy/scan', via(join(dir, 'vm.img')), '--chunk-size', '1M', '--remote-helper', helper])).stdout).toMatch(/^initialised/)
      expect((await wire(['backup', '-b', 'backy/scan', '--stream-compress', 'zstd'])).down).toBeLessThan(14 * MiB)
      const unchanged = await wire(['backup', '-b', 'backy/scan', '-f', '--stream-compress', 'zstd', '--json'])
      expect((JSON.parse(unchanged.stdout) as Report).revision.stats).toMatchObject({ chunksWritten: 0, streamCompressed: 'zstd' })
      expect(unchanged.down).toBeLessThan(256 * 1024)
      // 3 MiB of random data changed: at 2 MiB/s it takes a second and a half longer than a scan that sends nothing
      const w = await open(join(dir, 'vm.img'), 'r+')
      await w.write(randomBytes(3 * MiB), 0, 3 * MiB, 24 * MiB)
      await w.close()
      const limited = await wire(['backup', '-b', 'backy/scan', '-f', '--stream-compress', 'zstd', '--rate-limit', '2m', '--json'])
      expect((JSON.parse(limited.stdout) as Report).revision.stats.chunksWritten).toBe(3)
      expect(limited.seconds - unchanged.seconds).toBeGreaterThan(1.1)
      expect(sameBytes(join(dir, 'backy/scan/latest'), join(dir, 'vm.img'))).toBe(true)

      // restored to the VM host: compressed here, decompressed there, at the limit
      const back = join(dir, 'back.img')
      const restored = await wire(['restore', '-b', 'backy/packed', 'latest', via(back), '--stream-compress', 'zstd', '--rate-limit', '8m'])
      expect(restored.up).toBeLessThan(14 * MiB)
      expect(restored.seconds).toBeGreaterThan(1.5)
      expect(restored.stdout).toMatch(/^restored .*\n {2}1[34]\.\d MiB crossed the network \(zstd-compressed\)\n$/)
      expect(sameBytes(back, join(dir, 'backy/packed/latest'))).toBe(true)
    } finally {
      await proxy.stop()
    }

    // a source host without zstd: the image crosses as it is, and the revision says why
    const bin = await binWithout('zstd', (name) => /zstd/.test(name))
    try {
      await sshd.setAuthorizedKeys([`environment="PATH=${bin.path}" %KEY%`])
      expect((await overSsh(['init', '-b', 'backy/direct', remote(join(dir, 'vm.img')), '--remote-helper', 'none'])).code).toBe(0)
      const r = await overSsh(['backup', '-b', 'backy/direct', '--stream-compress', 'zstd', '--json'])
      expect(r.code, r.stderr).toBe(0)
      const revision = (JSON.parse(r.stdout) as { revision: { warnings: string[]; stats: { bytesTransferred: number; streamCompressed?: string } } }).revision
      expect(revision.warnings).toEqual([`the stream went uncompressed: zstd is not installed where ${remote(join(dir, 'vm.img'))} is (apt-get install zstd there)`])
      expect(revision.stats.streamCompressed).toBeUndefined()
      expect(revision.stats.bytesTransferred).toBe(32 * MiB)
    } finally {
      await sshd.setAuthorizedKeys(['%KEY%'])
      await bin.cleanup()
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

    // a scan that fails there: its own words, not only that its stream stopped short; nothing is left
    const failing = join(bin.path, 'failing-helper')
    await writeFile(failing, `#!/bin/sh\n[ "$2" = --protocol ] && exec ${helper} "$@"\necho 'block-scan: reading the image: Input/output error' >&2\nexit 3\n`)
    await chmod(failing, 0o755)
    expect((await overSsh(['init', '-b', 'backy/failing', remote(join(dir, 'vm.img')), '--remote-helper', failing])).code).toBe(0)
    for (const way of [[], ['--stream-compress', 'zstd']]) {
      const broken = await overSsh(['backup', '-b', 'backy/failing', ...way])
      expect(broken.code, way.join(' ')).toBe(1)
      expect(broken.stderr, way.join(' ')).toContain('block-scan: reading the image: Input/output error')
    }
    expect((await readdir(join(dir, 'backy/failing'))).filter((n) => n.includes('.img'))).toEqual([])
    expect(await copiesBesideSource()).toEqual([])
  })
})
