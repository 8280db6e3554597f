import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { bbError, type BbError, type CommandResult } from '@bb/core'
import { err, ok, okAsync, ResultAsync, type Result } from 'neverthrow'
import { deviceOf, devicePresent, type BackupDiskError } from './backup-disk.js'
import { execCommand, SYSTEM_DIRS } from './exec.js'
import { programPath, sudoExec, sudoWrap, type SudoCommand } from './sudo.js'

/** One line of /etc/crypttab (crypttab(5)): the mapping's name, the encrypted device, the key file, the options. */
export interface CrypttabEntry {
  readonly name: string
  /** a device path or `UUID=…`, `LABEL=…`, `PARTUUID=…`, `PARTLABEL=…` */
  readonly source: string
  /** undefined for `none`, `-` or no third field: the passphrase is asked for */
  readonly keyFile: string | undefined
  readonly options: readonly string[]
  /** 1-based, for errors */
  readonly line: number
}

const CRYPTTAB = '/etc/crypttab'
const MAPPER = '/dev/mapper'

/** the names device-mapper takes that need no quoting anywhere (and never start with `-`, so never an option) */
const MAPPING_NAME = /^[A-Za-z0-9][A-Za-z0-9_.+-]*$/

/**
 * Reads crypttab(5): one mapping per line, fields separated by blanks, `#` comments. A line with
 * fewer than two fields is not a mapping and is left out.
 * @example
 * parseCrypttab('usb UUID=3f0c… /etc/bbackup/usb.key luks,noauto\n')[0]?.keyFile // '/etc/bbackup/usb.key'
 */
export const parseCrypttab = (text: string): CrypttabEntry[] =>
  text.split('\n').flatMap((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) return []
    const [name, source, key, options] = line.split(/\s+/)
    if (name === undefined || source === undefined) return []
    return [{ name, source, keyFile: key === undefined || key === 'none' || key === '-' ? undefined : key, options: options === undefined ? [] : options.split(',').filter((o) => o !== ''), line: i + 1 }]
  })

/** An encrypted backup disk opened for a run; `release` locks it again only when this run unlocked it. */
export interface UnlockedDisk {
  readonly name: string
  /** whether this run unlocked it (and so locks it) */
  readonly unlockedHere: boolean
  release(): ResultAsync<void, BbError>
}

/** A program in PATH, else in /usr/sbin or /sbin (which a user's PATH often lacks): its absolute path. */
const findProgram = (program: string): string | undefined => programPath(program, SYSTEM_DIRS)

/** How a crypttab line is opened and closed: Debian's cryptdisks_start/stop, else cryptsetup for a LUKS line. */
const commandsOf = (entry: CrypttabEntry): Result<{ readonly open: readonly string[]; readonly close: readonly string[] }, BbError<'TOOL_MISSING'>> => {
  const start = findProgram('cryptdisks_start')
  const stop = findProgram('cryptdisks_stop')
  if (start !== undefined && stop !== undefined) return ok({ open: [start, entry.name], close: [stop, entry.name] })
  const cryptsetup = findProgram('cryptsetup')
  const install = 'apt-get install cryptsetup (it brings cryptdisks_start, which reads /etc/crypttab)'
  if (cryptsetup === undefined) return err(bbError('TOOL_MISSING', `cryptdisks_start and cryptsetup are not installed: the backup disk ${entry.name} cannot be unlocked`, install))
  // without cryptdisks_start, the options that cryptsetup takes as they are; a plain mapping or a key script needs it
  const unknown = entry.options.filter((o) => !['luks', 'discard', 'readonly', 'read-only', 'noauto', 'nofail'].includes(o))
  if (!entry.options.includes('luks') || unknown.length > 0) {
    return err(bbError('TOOL_MISSING', `the /etc/crypttab line of ${entry.name} (line ${entry.line}) ${entry.options.includes('luks') ? `has ${unknown.join(', ')}, which` : 'is not a LUKS one (no "luks" option), which'} only cryptdisks_start knows, and it is not installed`, install))
  }
  const device = deviceOf(entry.source) ?? entry.source
  return ok({
    open: [cryptsetup, 'open', '--type', 'luks', ...(entry.keyFile === undefined ? [] : ['--key-file', entry.keyFile]),
      ...(entry.options.includes('discard') ? ['--allow-discards'] : []), ...(entry.options.some((o) => o === 'readonly' || o === 'read-only') ? ['--readonly'] : []), device, entry.name],
    close: [cryptsetup, 'close', entry.name],
  })
}

/** the sudoers rule of a disk's unlock and lock: those two commands with their arguments (the name: sudo -n cryptdisks_start usb) */
export const cryptCommands = (name: string): readonly SudoCommand[] => {
  const start = findProgram('cryptdisks_start') ?? 'cryptdisks_start'
  const stop = findProgram('cryptdisks_stop') ?? 'cryptdisks_stop'
  return [[start, name], [stop, name]]
}

const firstLine = (text: string): string | undefined => text.split('\n').map((l) => l.trim()).find((l) => l !== '')

/** Runs argv on this terminal (a passphrase prompt): only its exit code is known. */
const onTerminal = (argv: readonly string[]): ResultAsync<CommandResult, never> =>
  ResultAsync.fromSafePromise(new Promise<CommandResult>((resolve) => {
    const [file, ...args] = argv
    const child = spawn(file ?? '', args, { stdio: 'inherit' })
    child.on('error', (e) => resolve({ argv, exitCode: 127, stdout: '', stderr: e.message }))
    child.on('close', (code) => resolve({ argv, exitCode: code ?? 1, stdout: '', stderr: '' }))
  }))

/**
 * Unlocks the encrypted backup disk `name` of /etc/crypttab for a run, as rsync-system-backup's
 * `--crypto`: nothing when /dev/mapper/NAME is there already, and `release` locks only what this
 * call unlocked. Through Debian's `cryptdisks_start`/`cryptdisks_stop` (crypttab's options, key
 * scripts), else `cryptsetup open`/`close` for a `luks` line. A disk that is not plugged in is
 * `TARGET_UNAVAILABLE` with `details.diskMissing` (the CLI exits 0 quietly for it under cron). A
 * line without a key file asks for the passphrase on the terminal (`interactive`), and is an error
 * without one. With `sudo`, the two commands run through `sudo -n`.
 * @example
 * const disk = await unlockBackupDisk('usb')
 * if (disk.isOk()) { ...; await disk.value.release() }
 */
export const unlockBackupDisk = (name: string, options: { readonly signal?: AbortSignal; readonly sudo?: boolean; readonly interactive?: boolean } = {}): ResultAsync<UnlockedDisk, BackupDiskError> =>
  new ResultAsync((async (): Promise<Result<UnlockedDisk, BackupDiskError>> => {
    if (!MAPPING_NAME.test(name)) {
      return err(bbError('INVALID_OPTIONS', `${JSON.stringify(name)} is not the name of an /etc/crypttab mapping`, 'give the first field of the disk\'s line in /etc/crypttab (letters, digits, . _ + -), e.g. --crypto usb-backup'))
    }
    const mapped = join(MAPPER, name)
    const nothing: UnlockedDisk = { name, unlockedHere: false, release: () => okAsync(undefined) }
    if (existsSync(mapped)) return ok(nothing)
    let text: string
    try {
      text = await readFile(CRYPTTAB, 'utf8')
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      return err(code === 'ENOENT'
        ? bbError('INVALID_OPTIONS', `${name} is not in ${CRYPTTAB} (there is none)`, `add a line for the disk, e.g. "${name}  UUID=<blkid of the LUKS partition>  /etc/bbackup/${name}.key  luks,noauto"`, { path: CRYPTTAB })
        : bbError('IO_FAILED', `cannot read ${CRYPTTAB}: ${(e as Error).message}`, 'run bbackup as root (or through sudo), or let this user read it', { path: CRYPTTAB }))
    }
    const entry = parseCrypttab(text).find((e) => e.name === name)
    if (entry === undefined) {
      return err(bbError('INVALID_OPTIONS', `${name} is not in ${CRYPTTAB}`, `add a line for the disk, e.g. "${name}  UUID=<blkid of the LUKS partition>  /etc/bbackup/${name}.key  luks,noauto", or give the name that is there`, { path: CRYPTTAB }))
    }
    if (!devicePresent(entry.source)) {
      return err(bbError('TARGET_UNAVAILABLE', `the encrypted backup disk ${name} (${entry.source}) is not connected`, 'plug it in and run again; under cron this is not an error', { path: entry.source, source: entry.source, diskMissing: true }))
    }
    const asksPassphrase = entry.keyFile === undefined && !entry.options.some((o) => o.startsWith('keyscript='))
    if (asksPassphrase && options.interactive !== true) {
      return err(bbError('INVALID_OPTIONS', `${name} has no key file in ${CRYPTTAB} (line ${entry.line}), and there is no terminal to ask for its passphrase`,
        `give its line a key file, readable by root alone and added to the disk with cryptsetup luksAddKey ${deviceOf(entry.source) ?? entry.source} FILE; or run bbackup on a terminal`, { path: CRYPTTAB }))
    }
    const commands = commandsOf(entry)
    if (commands.isErr()) return err(commands.error)
    const { open, close } = commands.value
    const wrap = sudoWrap([open[0] ?? '', close[0] ?? ''], [open as SudoCommand, close as SudoCommand])
    const run = options.sudo === true ? sudoExec(wrap, execCommand) : execCommand
    const signal = options.signal === undefined ? {} : { signal: options.signal }
    const opened = await (asksPassphrase ? onTerminal(options.sudo === true ? wrap.argv(open) : open) : run(open, signal))
    if (opened.isErr()) return err(opened.error)
    // cryptdisks_start says "failed" on stdout; what went wrong is cryptsetup's first line on stderr (the whole tail goes in the details)
    const said = firstLine(opened.value.stderr) ?? firstLine(opened.value.stdout) ?? `exit ${opened.value.exitCode}`
    if (opened.value.exitCode !== 0 || !existsSync(mapped)) {
      // a mapping the failed command made after all is closed again: it was not there before
      if (existsSync(mapped)) await run(close)
      return err(bbError('COMMAND_FAILED', `could not unlock the backup disk ${name} (${entry.source}): ${said}`,
        `check its line in ${CRYPTTAB} and its key file (${open.join(' ')} by hand says the same), that this kernel has dm-crypt, and that you are root`, { argv: [...open], stderr: opened.value.stderr }))
    }
    return ok({
      name,
      unlockedHere: true,
      release: () => run(close).andThen((r) => (r.exitCode === 0
        ? ok(undefined)
        : err(bbError('COMMAND_FAILED', `could not lock the backup disk ${name} again: ${firstLine(r.stderr) ?? firstLine(r.stdout) ?? `exit ${r.exitCode}`}`,
          `see what still uses ${mapped} (lsblk, fuser -vm) and run ${close.join(' ')} by hand`, { argv: [...close], stderr: r.stderr })))),
    })
  })())
