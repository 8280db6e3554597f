import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { main, type Io } from '@bb/cli'
import type { Job, RetentionSettings } from '@bb/core'
import { existsSync } from 'node:fs'
import { chmod, mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { makeTempDir, treeManifest, type TempDir } from '@bb/testkit'
import { btrfsDriver, parseSubvolumeShow, type BtrfsDriverOptions, type Subvolume } from '@bb/drivers/btrfs'
import type { BlockBackupReport, Revision } from '@bb/drivers/block'
import { rsyncDriver, type RsyncDriverOptions } from '@bb/drivers/rsync'
import { localTransport } from '@bb/transports/local'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..')

/** The value of an Ok result; an Err fails the test with the error in the message. */
export const ok = <T>(r: { isOk(): boolean; _unsafeUnwrap(): T; _unsafeUnwrapErr(): unknown }): T => {
  if (!r.isOk()) throw new Error(`expected ok, got ${JSON.stringify(r._unsafeUnwrapErr())}`)
  return r._unsafeUnwrap()
}

/** The revision a block backup made; one that was skipped (not due) fails the test. */
export const written = (r: BlockBackupReport): Revision => {
  if (r.skipped) throw new Error('expected a revision, the backup was skipped')
  return r.revision
}

/** bytes only this file holds on btrfs (not shared with a reflink copy) */
export const exclusiveBytes = (path: string): number => {
  execFileSync('sync')
  const line = execFileSync('btrfs', ['filesystem', 'du', '--raw', path], { encoding: 'utf8' }).trim().split('\n').at(-1) ?? ''
  return Number(line.trim().split(/\s+/)[1])
}

/** A fixed clock for a run's `now` option. */
export const at = (iso: string) => (): Date => new Date(iso)

export const exists = async (path: string): Promise<boolean> => (await stat(path).catch(() => undefined)) !== undefined

export const btrfs = (...args: string[]): string => execFileSync('btrfs', args, { encoding: 'utf8' })

/** `btrfs subvolume show` of a path, parsed; a path that is not a subvolume fails the test. */
export const show = (path: string): Subvolume => {
  const s = parseSubvolumeShow(btrfs('subvolume', 'show', path))
  if (s === undefined) throw new Error(`${path} is not a subvolume`)
  return s
}

/** The data of a tree, without the snapshot folder (nested subvolumes are not part of a snapshot). */
export const content = async (dir: string): Promise<Record<string, string>> =>
  Object.fromEntries(Object.entries(await treeManifest(dir)).filter(([k]) => !k.startsWith('.snapshots')))

/** Runs the bbackup CLI in this process, as cron would (no terminal), with what it printed. */
export const runCli = async (argv: string[], cwd: string, io: Partial<Io> = {}): Promise<{ code: number; stdout: string; stderr: string }> => {
  let stdout = ''
  let stderr = ''
  const code = await main(argv, { stdout: (s) => { stdout += s }, stderr: (s) => { stderr += s }, isTTY: false, cwd, ...io })
  return { code, stdout, stderr }
}

/** A job over local paths with the rsync driver, its state kept in `state`. */
export const rsyncJob = (p: { source: string; targets: readonly string[]; state: string; retention?: RetentionSettings; driver?: RsyncDriverOptions }): Job => ({
  driver: rsyncDriver(p.driver ?? {}),
  source: localTransport(p.source),
  targets: p.targets.map((t) => localTransport(t)),
  state: { transport: localTransport(p.state), directory: p.state },
  ...(p.retention === undefined ? {} : { retention: p.retention }),
})

/** A job over local paths with the btrfs driver (snapshots in `<source>/.snapshots`, prefix `home.`). */
export const btrfsJob = (p: { source: string; targets: readonly string[]; state: string; retention?: RetentionSettings; driver?: BtrfsDriverOptions; prefix?: string }): Job => ({
  driver: btrfsDriver(p.driver ?? {}),
  source: localTransport(p.source),
  targets: p.targets.map((t) => localTransport(t)),
  state: { transport: localTransport(p.state), directory: p.state },
  prefix: p.prefix ?? 'home.',
  ...(p.retention === undefined ? {} : { retention: p.retention }),
})

/** Runs a TypeScript file of this package in a child Node, resolving our packages to source. */
export const spawnTs = (file: string, args: readonly string[], options: { readonly detached?: boolean; readonly env?: Readonly<Record<string, string>> } = {}): ChildProcess =>
  spawn(process.execPath, ['--conditions=@bb/source', '--import', 'tsx', join(ROOT, 'packages/integration/test', file), ...args], {
    cwd: ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // its own process group: a test can kill it with every command it started (a power cut, an OOM kill of the cgroup)
    detached: options.detached ?? false,
  })

/** Resolves with the exit code (or signal) of a child, collecting its output. */
export const finished = (child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })

export const waitFor = async (condition: () => Promise<boolean>, timeoutMs: number): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Whether two files hold the same bytes (cmp). */
export const sameBytes = (a: string, b: string): boolean => {
  try {
    execFileSync('cmp', ['--silent', a, b])
    return true
  } catch {
    return false
  }
}

/** Writes `data` at `offset` of a file or a device, in place (a VM writing into its disk). */
export const patch = async (path: string, offset: number, data: Buffer): Promise<void> => {
  const h = await open(path, 'r+')
  try {
    await h.write(data, 0, data.length, offset)
  } finally {
    await h.close()
  }
}

/** The user nobody and its group, for the tests that run bbackup as a user that is not root. */
export const NOBODY = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim())
export const NOGROUP = Number(execFileSync('id', ['-g', 'nobody'], { encoding: 'utf8' }).trim())

/** The sudoers line that lets nobody run `programs` as root, with their paths on this PATH (as bbackup prints it). */
export const nobodySudoRule = (programs: readonly string[]): string =>
  `nobody ALL=(root) NOPASSWD: ${programs.map((p) => execFileSync('sh', ['-c', `command -v ${p}`], { encoding: 'utf8' }).trim()).join(', ')}`

/** A gpg home of its own (GNUPGHOME) with a key pair for `uid`, its secret key locked by `passphrase` (default: none). */
export interface GpgHome {
  readonly path: string
  /** gpg with this home; stdout as bytes */
  gpg(args: readonly string[], input?: Buffer): Buffer
  /** stops the gpg-agent gpg started for this home (by gpgconf, which asks that agent to end) and removes the home */
  cleanup(): Promise<void>
}

export const gpgHome = async (label: string, uid?: string, passphrase = ''): Promise<GpgHome> => {
  const dir = await makeTempDir(label)
  const env = { ...process.env, GNUPGHOME: dir.path }
  const home: GpgHome = {
    path: dir.path,
    gpg: (args, input) => execFileSync('gpg', ['--batch', '--quiet', ...args], { env, ...(input === undefined ? {} : { input }), stdio: ['pipe', 'pipe', 'ignore'] }),
    cleanup: async () => {
      execFileSync('gpgconf', ['--kill', 'gpg-agent'], { env, stdio: 'ignore' })
      await dir.cleanup()
    },
  }
  try {
    if (uid !== undefined) home.gpg(['--pinentry-mode', 'loopback', '--passphrase', passphrase, '--quick-gen-key', uid, 'future-default', 'default', 'never'])
  } catch (e) {
    await home.cleanup()
    throw e
  }
  return home
}

/** Runs `fn` with GNUPGHOME set to `home` (gpg as bbackup runs it, in this process), then as it was. */
export const withGnupgHome = async <T>(home: GpgHome, fn: () => Promise<T>): Promise<T> => {
  const saved = process.env.GNUPGHOME
  process.env.GNUPGHOME = home.path
  try {
    return await fn()
  } finally {
    if (saved === undefined) delete process.env.GNUPGHOME
    else process.env.GNUPGHOME = saved
  }
}

/** a directory of symlinks to every command on the standard PATH but those `left` picks: a host's PATH without them */
export const binWithout = async (what: string, left: (name: string) => boolean): Promise<TempDir> => {
  const bin = await makeTempDir(`bbackup-no-${what}`)
  try {
    for (const d of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
      for (const name of existsSync(d) ? await readdir(d) : []) {
        if (!left(name) && !existsSync(join(bin.path, name))) execFileSync('ln', ['-s', join(d, name), join(bin.path, name)])
      }
    }
    return bin
  } catch (e) {
    await bin.cleanup()
    throw e
  }
}

/**
 * A directory with a `btrfs` whose `receive` is killed (SIGKILL, by strace's fault injection) at
 * the ioctl that would make the copy read-only: the copy is left writable with the received uuid of
 * what was sent. The ioctl's position is measured on this btrfs-progs with a traced receive of a
 * throwaway snapshot of `subvolume` on its filesystem (`scratch`, a directory there). With
 * `KILL_RUN` set, the wrapper also kills its parent (the run that started it).
 */
export const receiveCutBin = async (subvolume: string, scratch: string, into: string): Promise<string> => {
  const probe = join(scratch, 'probe')
  execFileSync('btrfs', ['subvolume', 'snapshot', '-r', subvolume, probe])
  await mkdir(join(scratch, 'probed'))
  const log = join(into, 'ioctls')
  execFileSync('sh', ['-c', `btrfs send -q "${probe}" | strace -o "${log}" -e trace=ioctl btrfs receive -e "${join(scratch, 'probed')}"`], { stdio: 'ignore' })
  const ioctls = (await readFile(log, 'utf8')).split('\n').filter((l) => l.startsWith('ioctl('))
  const readOnly = ioctls.findIndex((l) => l.includes('BTRFS_IOC_SUBVOL_SETFLAGS')) + 1
  if (readOnly === 0) throw new Error(`no BTRFS_IOC_SUBVOL_SETFLAGS among the ioctls of btrfs receive:\n${ioctls.join('\n')}`)
  execFileSync('btrfs', ['subvolume', 'delete', join(scratch, 'probed/probe'), probe], { stdio: 'ignore' })
  const real = execFileSync('sh', ['-c', 'command -v btrfs'], { encoding: 'utf8' }).trim()
  const bin = join(into, 'bin')
  await mkdir(bin)
  await writeFile(join(bin, 'btrfs'), [
    '#!/bin/sh',
    'if [ "$1" = receive ]; then',
    `  strace -o /dev/null -e trace=ioctl -e inject=ioctl:signal=SIGKILL:when=${readOnly} "${real}" "$@"`,
    '  status=$?',
    // the run that started it dies with it (kill -9): only the journal knows what it was receiving
    '  if [ -n "$KILL_RUN" ]; then kill -KILL "$PPID"; fi',
    '  exit $status',
    'fi',
    `exec "${real}" "$@"`,
    '',
  ].join('\n'))
  await chmod(join(bin, 'btrfs'), 0o755)
  return bin
}
