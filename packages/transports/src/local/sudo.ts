import { accessSync, constants } from 'node:fs'
import { userInfo } from 'node:os'
import { delimiter, join } from 'node:path'
import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, type CommandResult, type ExecOptions, type RunningCommand, type SpawnOptions, type TransportError } from '@bb/core'
import { SYSTEM_DIRS } from './exec.js'

/** The program's absolute path: the first executable of that name in PATH, then in `more` directories; undefined when there is none. */
export const programPath = (program: string, more: readonly string[] = []): string | undefined => {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), ...more]) {
    if (dir === '') continue
    try {
      accessSync(join(dir, program), constants.X_OK)
      return join(dir, program)
    } catch {
      // not here
    }
  }
  return undefined
}

/** The program's absolute path (what sudoers must name) as the commands started here find it, or the bare name when it is not found. */
const onPath = (program: string): string => (program.includes('/') ? program : programPath(program, SYSTEM_DIRS) ?? program)

/** The user bbackup runs as, for the sudoers line. */
const userName = (): string => {
  try {
    return userInfo().username
  } catch {
    return String(process.getuid?.() ?? 'USER')
  }
}

/** A program, or a program with the exact arguments the rule allows (`['mount', '/mnt/usb']`). */
export type SudoCommand = string | readonly [program: string, ...args: string[]]

/** sudoers words need no escape: a rule with an argument that would is left without arguments (any, as for a bare program) */
const PLAIN_ARGUMENT = /^[\w./@+-]+$/

/** The mount point's own mount and umount, for a user that mounts the backup disk through sudo. */
export const mountCommands = (mountPoint: string): readonly SudoCommand[] => [['mount', mountPoint], ['umount', mountPoint]]

/**
 * The sudoers line that lets this user run `commands` as root without a password, as `bbackup
 * doctor` and the errors print it (absolute paths, as sudo matches them; a command with arguments
 * allows those alone).
 * @example
 * sudoersLine(['btrfs']) // 'backup ALL=(root) NOPASSWD: /usr/bin/btrfs'
 * sudoersLine(mountCommands('/mnt/usb')) // 'backup ALL=(root) NOPASSWD: /usr/bin/mount /mnt/usb, /usr/bin/umount /mnt/usb'
 */
export const sudoersLine = (commands: readonly SudoCommand[]): string => `${userName()} ALL=(root) NOPASSWD: ${commands.map((c) => {
  if (typeof c === 'string') return onPath(c)
  const [program, ...args] = c
  return args.every((a) => PLAIN_ARGUMENT.test(a)) ? [onPath(program), ...args].join(' ') : onPath(program)
}).join(', ')}`

/** Commands whose program is in `programs` run as `sudo -n -- /abs/program …`; the rest as they are. */
export interface SudoWrap {
  readonly argv: (argv: readonly string[]) => readonly string[]
  readonly wraps: (argv: readonly string[]) => boolean
  /** sudo's own refusal (`sudo: …` on stderr, exit 1) as AUTH_FAILED; anything else is the command's result */
  readonly classify: (argv: readonly string[], result: CommandResult) => Result<CommandResult, TransportError>
}

/** `rule`: what the sudoers line in a refusal names (default: `programs`, with any arguments) */
export const sudoWrap = (programs: readonly string[], rule: readonly SudoCommand[] = programs): SudoWrap => {
  const paths = new Map<string, string>()
  const pathOf = (program: string): string => {
    const known = paths.get(program)
    if (known !== undefined) return known
    const found = onPath(program)
    paths.set(program, found)
    return found
  }
  const wraps = (argv: readonly string[]): boolean => argv[0] !== undefined && programs.includes(argv[0])
  return {
    wraps,
    argv: (argv) => {
      const [program, ...args] = argv
      return program === undefined || !wraps(argv) ? argv : ['sudo', '-n', '--', pathOf(program), ...args]
    },
    classify: (argv, result) => {
      if (!wraps(argv) || result.exitCode !== 1 || !/^sudo: /m.test(result.stderr)) return ok({ ...result, argv })
      const program = pathOf(argv[0] ?? '')
      // the whole rule the transport needs, not this program's part of it
      const line = sudoersLine(rule)
      const details = { argv: [...argv], stderr: result.stderr }
      if (/password is required|may not run sudo|not allowed to execute|not in the sudoers/.test(result.stderr)) {
        return err(bbError('AUTH_FAILED', `sudo refused to run ${program} as root without a password`,
          `let ${userName()} run it: add the line "${line}" to /etc/sudoers.d/bbackup (visudo -f /etc/sudoers.d/bbackup; bbackup doctor prints the line for a job)`, details))
      }
      return err(bbError('AUTH_FAILED', `sudo could not run ${program}: ${result.stderr.trim().split('\n')[0] ?? ''}`, `check sudo's rule for it ("${line}"), then run again`, details))
    },
  }
}

/** `exec` with the wrap: sudo's refusals become AUTH_FAILED. */
export const sudoExec = (
  wrap: SudoWrap,
  run: (argv: readonly string[], options?: ExecOptions) => ResultAsync<CommandResult, TransportError>,
) => (argv: readonly string[], options: ExecOptions = {}): ResultAsync<CommandResult, TransportError> =>
  (wrap.wraps(argv) ? run(wrap.argv(argv), options).andThen((r) => wrap.classify(argv, r)) : run(argv, options))

/**
 * `spawn` with the wrap. The process on this host is sudo, running as root: its byte count cannot
 * be read from /proc (the stream is counted where it is read instead), and a SIGKILL would end sudo
 * but not the command under it, so a kill is sent as SIGTERM, which sudo passes on, then SIGKILL.
 */
export const sudoSpawn = (
  wrap: SudoWrap,
  run: (argv: readonly string[], options?: SpawnOptions) => RunningCommand,
) => (argv: readonly string[], options: SpawnOptions = {}): RunningCommand => {
  if (!wrap.wraps(argv)) return run(argv, options)
  const running = run(wrap.argv(argv), options)
  let killTimer: NodeJS.Timeout | undefined
  return {
    ...running,
    argv,
    done: new ResultAsync((async () => {
      const r = await running.done
      if (killTimer !== undefined) clearTimeout(killTimer)
      return r.andThen((result) => wrap.classify(argv, result))
    })()),
    kill: (signal: NodeJS.Signals = 'SIGTERM') => {
      if (signal !== 'SIGKILL') return running.kill(signal)
      running.kill('SIGTERM')
      killTimer ??= setTimeout(() => running.kill('SIGKILL'), 5000)
      killTimer.unref()
    },
  }
}
