import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, writeTree, type TempDir } from '@bb/testkit'
import { finished, NOBODY, nobodySudoRule, NOGROUP, ROOT } from './helpers.js'

/**
 * Runs the CLI in a private mount namespace whose /etc/fstab is `fstab` (bind-mounted over it), so
 * the test's fstab entries and mounts never reach the machine's. `before` runs first in that
 * namespace; the shell prints STILL-MOUNTED if `mountPoint` is mounted when the CLI has exited.
 * `etc`: a directory laid over /etc there (its crypttab); `crypt`: a mapping name, and the shell
 * prints STILL-UNLOCKED if /dev/mapper/NAME is there after the CLI (and closes it).
 */
const runInNamespace = async (p: { fstab: string; mountPoint: string; args: readonly string[]; tty?: boolean; before?: string; nobody?: { readonly home: string }; etc?: string; crypt?: string }) => {
  const script = `if [ -n "$ETC" ]; then mount -t overlay overlay -o "lowerdir=$ETC:/etc" /etc || exit 96; fi
mount --bind "$1" /etc/fstab || exit 97; ${p.before ?? ''}
shift 2; "$@"; code=$?; if findmnt -n --mountpoint "$MP" >/dev/null; then echo STILL-MOUNTED; umount "$MP"; fi
if [ -n "$CRYPT" ] && [ -e "/dev/mapper/$CRYPT" ]; then echo STILL-UNLOCKED; cryptsetup close "$CRYPT" 2>/dev/null; fi; exit $code`
  // as the user nobody (no groups), for the CLI alone: the namespace's set-up is root's
  const user = p.nobody === undefined ? [] : ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOGROUP}`, '--clear-groups', '--']
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', p.fstab, p.mountPoint, ...user,
    process.execPath, '--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/integration/test/fixtures/cli.ts'), ...p.args], {
    // tsx resolves from the repository; every path the test gives is absolute
    cwd: ROOT,
    env: { ...process.env, MP: p.mountPoint, ETC: p.etc ?? '', CRYPT: p.crypt ?? '', ...(p.tty === true ? { BB_TEST_TTY: '1' } : {}), ...(p.nobody === undefined ? {} : { HOME: p.nobody.home, TMPDIR: p.nobody.home }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  return finished(child)
}


describe.runIf(requireTools(['rsync', 'mkfs.ext4', 'unshare', 'findmnt', 'mount', 'losetup'], { root: true }))('--mount: the backup disk from /etc/fstab, mounted for the run (rsync-system-backup --mount)', () => {
  let tmp: TempDir
  let image: string
  let mnt: string
  let fstab: string
  beforeEach(async () => {
    tmp = await makeTempDir('backup-disk')
    image = join(tmp.path, 'usb.img')
    mnt = join(tmp.path, 'usb')
    fstab = join(tmp.path, 'fstab')
    await mkdir(mnt)
    execFileSync('truncate', ['-s', '64M', image])
    execFileSync('mkfs.ext4', ['-q', '-F', image])
    await writeTree(join(tmp.path, 'home'), { 'a.txt': 'alpha\n', 'docs/b.txt': 'bravo\n' })
  })
  afterEach(async () => {
    // a loop device left by a failed test is detached, then the files go
    for (const line of execFileSync('losetup', ['-j', image], { encoding: 'utf8' }).split('\n')) {
      const dev = line.split(':')[0]
      if (dev !== undefined && dev !== '') execFileSync('losetup', ['-d', dev])
    }
    await tmp?.cleanup()
  })

  const backupsOnImage = (): string[] => {
    const look = join(tmp.path, 'look')
    execFileSync('mkdir', ['-p', look])
    execFileSync('mount', ['-o', 'loop,ro', image, look])
    try {
      return execFileSync('ls', [join(look, 'backups')], { encoding: 'utf8' }).split('\n').filter((n) => /^\d{4}-/.test(n))
    } finally {
      execFileSync('umount', [look])
    }
  }

  it('mounts the disk, backs up onto it, and unmounts it; the mount point itself stays empty', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const r = await runInNamespace({ fstab, mountPoint: mnt, args: ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')] })
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.stdout).not.toContain('STILL-MOUNTED')
    expect(execFileSync('losetup', ['-j', image], { encoding: 'utf8' }).trim()).toBe('')
    expect(await readdir(mnt)).toEqual([])
    expect(backupsOnImage()).toHaveLength(1)
  })

  it.runIf(requireTools(['sudo', 'visudo', 'setpriv'], { root: true }))('system-backup as a user that is not root mounts and unmounts through sudo, and copies through it', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const home = join(tmp.path, 'nobody')
    await mkdir(home)
    await chown(home, NOBODY, NOGROUP)
    await chmod(tmp.path, 0o755)
    // the disk's backup directory is the user's, made once by root
    const once = join(tmp.path, 'once')
    await mkdir(once)
    execFileSync('mount', ['-o', 'loop', image, once])
    try {
      await mkdir(join(once, 'backups'))
      await chown(join(once, 'backups'), NOBODY, NOGROUP)
    } finally {
      execFileSync('umount', [once])
    }
    const args = ['system-backup', join(tmp.path, 'home'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(home, 'state'), '--disable-notifications']
    const sudoers = `/etc/sudoers.d/bbackup-test-mount-${process.pid}`
    try {
      const refused = await runInNamespace({ fstab, mountPoint: mnt, args, nobody: { home } })
      expect(refused.code).toBe(1)
      // the rule allows the mount and unmount of this mount point, not any mount (which is as good as root)
      const onPath = (p: string): string => execFileSync('sh', ['-c', `command -v ${p}`], { encoding: 'utf8' }).trim()
      const [mount, umount] = [onPath('mount'), onPath('umount')]
      const mountRule = `nobody ALL=(root) NOPASSWD: ${mount} ${mnt}, ${umount} ${mnt}`
      expect(refused.stderr).toContain(mountRule)
      // doctor prints one line with all the job needs
      const config = join(home, 'bbackup.toml')
      await writeFile(config, ['[jobs.laptop]', `source = "${join(tmp.path, 'home')}"`, `targets = ["${join(mnt, 'backups')}"]`, 'driver = "rsync"', `mount = "${mnt}"`, 'sudo = true', `state_dir = "${join(home, 'state')}"`, ''].join('\n'))
      const doctor = await runInNamespace({ fstab, mountPoint: mnt, args: ['doctor', '-c', config], nobody: { home } })
      const line = `${nobodySudoRule(['rsync', 'rm', 'mv'])}, ${mount} ${mnt}, ${umount} ${mnt}`
      expect(doctor.stdout).toContain(`rsync, rm, mv and the mount and umount of ${mnt} run as root through sudo -n; /etc/sudoers.d/bbackup (visudo -f) needs:\n    ${line}`)
      // the line as printed is the rule, and sudo holds the mount to it
      await writeFile(sudoers, `${line}\n`, { mode: 0o440 })
      execFileSync('visudo', ['-c', '-q', '-f', sudoers])
      expect(() => execFileSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOGROUP}`, '--clear-groups', '--', 'sudo', '-n', '-l', mount, '/mnt'], { stdio: 'ignore' })).toThrow()
      execFileSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOGROUP}`, '--clear-groups', '--', 'sudo', '-n', '-l', mount, mnt], { stdio: 'ignore' })
      const r = await runInNamespace({ fstab, mountPoint: mnt, args, nobody: { home } })
      expect(r.code, r.stdout + r.stderr).toBe(0)
      expect(r.stdout).not.toContain('STILL-MOUNTED')
      expect(backupsOnImage()).toHaveLength(1)
    } finally {
      await rm(sudoers, { force: true })
    }
  })

  it('unmounts the disk after a run that failed (the source is gone)', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const r = await runInNamespace({ fstab, mountPoint: mnt, args: ['run', join(tmp.path, 'gone'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')] })
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).toContain(`the source ${join(tmp.path, 'gone')} does not exist`)
    expect(r.stdout).not.toContain('STILL-MOUNTED')
  })

  it('list, prune, verify, diff and restore mount the disk for their length too (a job of the config, or a place given alone); status says it is not mounted', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const backups = join(mnt, 'backups')
    const config = join(tmp.path, 'bbackup.toml')
    await writeFile(config, ['[jobs.usb]', `source = "${join(tmp.path, 'home')}"`, `targets = ["${backups}"]`, 'driver = "rsync"', `mount = "${mnt}"`, `state_dir = "${join(tmp.path, 'state')}"`, ''].join('\n'))
    const restored = join(tmp.path, 'restored')
    for (const args of [
      ['run', '-c', config], ['run', '-c', config], ['list', '-c', config], ['list', backups, '--mount', mnt], ['verify', '-c', config],
      ['diff', backups, '--mount', mnt], ['restore', backups, 'latest', restored, '--mount', mnt], ['prune', backups, '--mount', mnt, '--keep-backups', '1'],
    ]) {
      const r = await runInNamespace({ fstab, mountPoint: mnt, args })
      // what the second backup has and the first has not
      if (args[0] === 'run' && !existsSync(join(tmp.path, 'home/new.txt'))) await writeFile(join(tmp.path, 'home/new.txt'), 'made between the backups\n')
      expect(r.code, `${args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(0)
      expect(r.stdout, args.join(' ')).not.toContain('STILL-MOUNTED')
      if (args[0] === 'list') expect(r.stdout, args.join(' ')).toContain(`${backups} (target): 2 backups`)
      if (args[0] === 'verify') expect(r.stdout).toContain('no problem found')
      if (args[0] === 'diff') expect(r.stdout).toMatch(/^\+ new\.txt /m)
    }
    expect(readFileSync(join(restored, 'new.txt'), 'utf8')).toBe('made between the backups\n')
    expect(backupsOnImage()).toHaveLength(1)
    // doctor checks the target on the disk (its 64 MiB, backups there), not the empty mount point on this host's disk
    const doctor = await runInNamespace({ fstab, mountPoint: mnt, args: ['doctor', '-c', config] })
    expect(doctor.code, doctor.stdout + doctor.stderr).toBe(0)
    expect(doctor.stdout).toContain(`target ${backups}: ready; 0.0 GiB free of 0.1 GiB`)
    expect(doctor.stdout).not.toContain('STILL-MOUNTED')
    const status = await runInNamespace({ fstab, mountPoint: mnt, args: ['status', '-c', config] })
    expect(status.code).toBe(10)
    expect(status.stdout).toContain(`${backups}: unreachable: the backup disk ${mnt} is not mounted`)
    // the commands that never mount refuse the option rather than ignore it
    for (const args of [['status', '-c', config], ['locks', '-c', config]]) {
      const command = args[0] ?? ''
      const refused = await runInNamespace({ fstab, mountPoint: mnt, args: [...args, '--mount', mnt] })
      expect(refused.code, command).toBe(2)
      expect(refused.stderr, command).toContain("unknown option '--mount'")
    }
  })

  it('leaves a disk mounted that was mounted before the run', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const r = await runInNamespace({ fstab, mountPoint: mnt, before: `mount "${mnt}" || exit 98;`, args: ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')] })
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.stdout).toContain('STILL-MOUNTED')
    expect(backupsOnImage()).toHaveLength(1)
  })

  it('a disk that is not plugged in: one line and exit 0 under cron, an error on a terminal; nothing written', async () => {
    await writeFile(fstab, `UUID=0bad0bad-0000-4000-8000-000000000000 ${mnt} ext4 noauto,nofail 0 0\n`)
    const args = ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')]
    const cron = await runInNamespace({ fstab, mountPoint: mnt, args })
    expect(cron.code, cron.stdout + cron.stderr).toBe(0)
    expect(cron.stderr).toBe(`bbackup: the backup disk for ${mnt} (UUID=0bad0bad-0000-4000-8000-000000000000) is not connected; nothing backed up\n`)
    const terminal = await runInNamespace({ fstab, mountPoint: mnt, args, tty: true })
    expect(terminal.code).toBe(1)
    expect(terminal.stderr).toContain('is not connected')
    expect(terminal.stderr).toContain('plug it in')
    expect(await readdir(mnt)).toEqual([])
  })

  it('refuses a target outside the mount point, and a mount point fstab does not know (exit 2)', async () => {
    await writeFile(fstab, `${image} ${mnt} ext4 loop,noauto 0 0\n`)
    const outside = await runInNamespace({ fstab, mountPoint: mnt, args: ['run', join(tmp.path, 'home'), join(tmp.path, 'elsewhere'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')] })
    expect(outside.code).toBe(2)
    expect(outside.stderr).toContain(`the target ${join(tmp.path, 'elsewhere')} is not inside the mount point ${mnt}`)
    await writeFile(fstab, '\n')
    const unknown = await runInNamespace({ fstab, mountPoint: mnt, args: ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--mount', mnt, '--state-dir', join(tmp.path, 'state')] })
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain(`${mnt} is not in /etc/fstab`)
    expect(await readdir(tmp.path)).not.toContain('elsewhere')
  })
})

/** whether this kernel has device-mapper (dm-crypt): without it no LUKS disk can be opened here */
const hasDeviceMapper = (): boolean => {
  try {
    execFileSync('dmsetup', ['version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

describe.runIf(requireTools(['rsync', 'mkfs.ext4', 'unshare', 'findmnt', 'mount', 'losetup', 'cryptsetup', 'cryptdisks_start'], { root: true }))('--crypto: the encrypted backup disk of /etc/crypttab, unlocked for the run (rsync-system-backup --crypto)', () => {
  let tmp: TempDir
  let mnt: string
  let fstab: string
  let etc: string
  const name = `bbtest${process.pid}`
  beforeEach(async () => {
    tmp = await makeTempDir('crypt-disk')
    mnt = join(tmp.path, 'usb')
    fstab = join(tmp.path, 'fstab')
    etc = join(tmp.path, 'etc')
    await mkdir(mnt)
    await mkdir(etc)
    await writeFile(fstab, `/dev/mapper/${name} ${mnt} ext4 noauto 0 0\n`)
    await writeTree(join(tmp.path, 'home'), { 'a.txt': 'alpha\n', 'docs/b.txt': 'bravo\n' })
  })
  afterEach(async () => {
    for (const line of execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n')) {
      const dev = line.split(':')[0]
      if (dev !== undefined && dev !== '' && line.includes(tmp.path)) execFileSync('losetup', ['-d', dev])
    }
    await tmp?.cleanup()
  })
  const args = (...more: string[]): string[] => ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--crypto', name, '--mount', mnt, '--state-dir', join(tmp.path, 'state'), ...more]

  it('opens the LUKS disk with cryptdisks_start, else cryptsetup, mounts it, backs up, unmounts and locks it; where the kernel cannot open it, says why and leaves nothing behind', async () => {
    const image = join(tmp.path, 'luks.img')
    const key = join(tmp.path, 'usb.key')
    execFileSync('truncate', ['-s', '64M', image])
    await writeFile(key, 'a key file of the backup disk, not a passphrase\n', { mode: 0o400 })
    execFileSync('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', key, image])
    await writeFile(join(etc, 'crypttab'), `# the test's disk\n${name} ${image} ${key} luks,noauto\n`)
    const dm = hasDeviceMapper()
    if (dm) {
      // the filesystem inside, made once by hand as a user would
      execFileSync('cryptsetup', ['open', '--key-file', key, image, name])
      try {
        execFileSync('mkfs.ext4', ['-q', '-F', `/dev/mapper/${name}`])
      } finally {
        execFileSync('cryptsetup', ['close', name])
      }
    }
    // with Debian's cryptdisks_start, then with cryptsetup alone (cryptdisks_start hidden)
    for (const before of ['', 'mount --bind /dev/null "$(command -v cryptdisks_start)" || exit 95;']) {
      const r = await runInNamespace({ fstab, mountPoint: mnt, etc, crypt: name, before, args: args() })
      expect(r.stdout).not.toContain('STILL-MOUNTED')
      expect(r.stdout).not.toContain('STILL-UNLOCKED')
      if (dm) {
        expect(r.code, r.stdout + r.stderr).toBe(0)
        continue
      }
      // this kernel has no device-mapper: cryptsetup's reason is in the error, and nothing went to the empty mount point
      expect(r.code, r.stdout + r.stderr).toBe(1)
      expect(r.stderr).toContain(`could not unlock the backup disk ${name} (${image})`)
      expect(r.stderr).toContain('device-mapper')
      expect(r.stderr).toContain(before === '' ? 'cryptdisks_start' : 'cryptsetup open --type luks --key-file')
      expect(await readdir(mnt)).toEqual([])
    }
    if (dm) {
      execFileSync('cryptsetup', ['open', '--key-file', key, image, name])
      const look = join(tmp.path, 'look')
      await mkdir(look)
      execFileSync('mount', ['-o', 'ro', `/dev/mapper/${name}`, look])
      try {
        expect((await readdir(join(look, 'backups'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(2)
      } finally {
        execFileSync('umount', [look])
        execFileSync('cryptsetup', ['close', name])
      }
    }
    // without cryptdisks_start, a line cryptsetup alone cannot open is refused, naming what to install
    await writeFile(join(etc, 'crypttab'), `${name} ${image} ${key} plain,cipher=aes-xts-plain64\n`)
    const plain = await runInNamespace({ fstab, mountPoint: mnt, etc, crypt: name, before: 'mount --bind /dev/null "$(command -v cryptdisks_start)" || exit 95;', args: args() })
    expect(plain.code, plain.stdout + plain.stderr).toBe(1)
    expect(plain.stderr).toContain(`the /etc/crypttab line of ${name} (line 1) is not a LUKS one`)
    expect(plain.stderr).toContain('apt-get install cryptsetup')
  })

  it('uses a disk that is unlocked already, and leaves it unlocked', async () => {
    const image = join(tmp.path, 'inner.img')
    execFileSync('truncate', ['-s', '64M', image])
    execFileSync('mkfs.ext4', ['-q', '-F', image])
    const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim()
    // an open mapping is a link in /dev/mapper to its device; here a private /dev/mapper holds one to a loop device
    await writeFile(join(etc, 'crypttab'), `${name} /dev/nonexistent-disk /nonexistent.key luks\n`)
    const r = await runInNamespace({ fstab, mountPoint: mnt, etc, crypt: name, before: `mount -t tmpfs tmpfs /dev/mapper && ln -s ${loop} /dev/mapper/${name} || exit 94;`, args: args() })
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.stdout).not.toContain('STILL-MOUNTED')
    expect(r.stdout).toContain('STILL-UNLOCKED')
    const look = join(tmp.path, 'look')
    await mkdir(look)
    execFileSync('mount', ['-o', 'ro', loop, look])
    try {
      expect((await readdir(join(look, 'backups'))).filter((n) => /^\d{4}-/.test(n))).toHaveLength(1)
    } finally {
      execFileSync('umount', [look])
    }
  })

  it('a disk that is not plugged in: one line and exit 0 under cron, an error on a terminal; bad names and lines are refused (exit 2)', async () => {
    const key = join(tmp.path, 'usb.key')
    await writeFile(key, 'k\n', { mode: 0o400 })
    await writeFile(join(etc, 'crypttab'), `${name} UUID=0bad0bad-0000-4000-8000-000000000000 ${key} luks,noauto\nask${name} /dev/null none luks\n`)
    const cron = await runInNamespace({ fstab, mountPoint: mnt, etc, crypt: name, args: args() })
    expect(cron.code, cron.stdout + cron.stderr).toBe(0)
    expect(cron.stderr).toBe(`bbackup: the encrypted backup disk ${name} (UUID=0bad0bad-0000-4000-8000-000000000000) is not connected; nothing backed up\n`)
    const terminal = await runInNamespace({ fstab, mountPoint: mnt, etc, crypt: name, args: args(), tty: true })
    expect(terminal.code).toBe(1)
    expect(terminal.stderr).toContain('plug it in')
    // a line with no key file cannot be opened under cron: nobody is there to type the passphrase
    const asks = await runInNamespace({ fstab, mountPoint: mnt, etc, args: ['run', join(tmp.path, 'home'), join(mnt, 'backups'), '--crypto', `ask${name}`, '--state-dir', join(tmp.path, 'state')] })
    expect(asks.code, asks.stdout + asks.stderr).toBe(2)
    expect(asks.stderr).toContain(`ask${name} has no key file in /etc/crypttab (line 2), and there is no terminal to ask for its passphrase`)
    expect(asks.stderr).toContain('cryptsetup luksAddKey /dev/null FILE')
    const unknown = await runInNamespace({ fstab, mountPoint: mnt, etc, args: args('--crypto', 'other') })
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain('other is not in /etc/crypttab')
    const hostile = await runInNamespace({ fstab, mountPoint: mnt, etc, args: args('--crypto', '--help') })
    expect(hostile.code).toBe(2)
    expect(hostile.stderr).toContain('"--help" is not the name of an /etc/crypttab mapping')
    expect(await readdir(mnt)).toEqual([])
    expect(await readdir(tmp.path)).not.toContain('state')
  })
})
