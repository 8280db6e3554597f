import type { Command, Option } from 'commander'
import { EXIT } from './exit-codes.js'

/** Text for roff: backslashes and hyphens escaped, a line that would start a request made text. */
const text = (s: string): string => s
  .replaceAll('\\', '\\e')
  .replaceAll('-', '\\-')
  .split('\n')
  .map((line) => (/^[.']/.test(line) ? `\\&${line}` : line))
  .join('\n')

const bold = (s: string): string => `\\fB${text(s)}\\fR`
const italic = (s: string): string => `\\fI${text(s)}\\fR`

/** `-c, --config <file>` with the flags bold and the value italic */
const optionTerm = (o: Option): string => {
  const flags = [o.short, o.long].filter((f): f is string => f !== undefined).map(bold).join(', ')
  const value = /[<[].*[>\]]$/.exec(o.flags)?.[0]
  return value === undefined ? flags : `${flags} ${italic(value)}`
}

const synopsisOf = (c: Command): string =>
  [bold(`bbackup ${c.name()}`), '[\\fIoptions\\fR]', ...c.registeredArguments.map((a) => {
    const name = `${a.name()}${a.variadic ? '...' : ''}`
    return a.required ? italic(name) : `[${italic(name)}]`
  })].join(' ')

const EXIT_TEXT: Readonly<Record<keyof typeof EXIT, string>> = {
  ok: 'success',
  error: 'an error: the message names it and the hint says how to fix it',
  usage: 'a usage or configuration mistake (a bad option, location, policy or job name)',
  lockHeld: 'another run of the job holds its lock (a timer counts this as done)',
  someTargetsFailed: 'the run finished, but at least one target failed or could not be reached',
  internal: 'a bug in bbackup: please report it with the output of -v',
}

export interface ManPageOptions {
  readonly version: string
  /** the examples each command's --help ends with, by command name */
  readonly examples: Readonly<Record<string, string>>
  /** the page's date, YYYY-MM-DD */
  readonly date: string
}

/**
 * bbackup(1) in roff (man(7) macros), made from the same commander definitions as `--help`: every
 * command with its arguments, description, options and examples, then the exit codes and files.
 */
export const manPage = (program: Command, o: ManPageOptions): string => {
  const commands = program.commands.filter((c) => c.name() !== 'help')
  const lines: string[] = [
    `.TH BBACKUP 1 "${o.date}" "bbackup ${text(o.version)}" "User Commands"`,
    '.SH NAME',
    `bbackup \\- ${text(program.description())}`,
    '.SH SYNOPSIS',
    `${bold('bbackup')} ${italic('command')} [\\fIoptions\\fR] [${italic('source')}] [${italic('target')}...]`,
    '.br',
    `${bold('bbackup')} [${bold('-h')}|${bold('-V')}]`,
    '.SH DESCRIPTION',
    text('bbackup takes snapshots of a source and copies them to one or more targets: btrfs subvolumes with send and receive (incremental), plain directories with rsync and hard links to the previous backup, and block devices or VM images as chunked revisions. Targets are local directories, hosts over ssh, or rsync daemon modules. Retention follows btrbk or rotate-backups rules and never deletes the last backup, a snapshot a pending transfer needs, or anything bbackup did not create.'),
    '.PP',
    text('A job is a source and its targets, given on the command line or as a named job of the configuration file. Every command that changes something takes the job\'s lock and keeps a journal of outstanding transfers, so that an interrupted run is finished or cleaned up by the next one.'),
    '.SH COMMANDS',
  ]
  for (const c of commands) {
    lines.push(`.SS ${bold(c.name())}`, synopsisOf(c), '.PP', text(c.description()))
    const args = c.registeredArguments.filter((a) => a.description !== '')
    for (const a of args) lines.push('.TP', italic(a.name()), text(a.description))
    for (const opt of c.options.filter((x) => !x.hidden)) {
      lines.push('.TP', optionTerm(opt), text(`${opt.description}${opt.argChoices === undefined ? '' : ` (one of: ${opt.argChoices.join(', ')})`}${opt.defaultValue === undefined || typeof opt.defaultValue === 'boolean' ? '' : ` (default: ${String(opt.defaultValue)})`}`))
    }
    const examples = o.examples[c.name()]?.replace(/^\s*Examples:\n/, '').trimEnd()
    if (examples !== undefined && examples !== '') lines.push('.PP', 'Examples:', '.PP', '.nf', '.RS 4', text(examples.split('\n').map((l) => l.replace(/^ {2}/, '')).join('\n')), '.RE', '.fi')
  }
  lines.push(
    '.SH EXIT STATUS',
    ...(Object.entries(EXIT) as [keyof typeof EXIT, number][]).sort((a, b) => a[1] - b[1]).flatMap(([key, code]) => ['.TP', bold(String(code)), text(EXIT_TEXT[key])]),
    '.PP',
    text('status --check exits as a Nagios plugin: 0 ok, 1 warning, 2 critical, 3 unknown.'),
    '.SH FILES',
    '.TP', italic('/etc/bbackup/config.toml'), text('the named jobs, read when no source is given (-c FILE for another)'),
    '.TP', italic('/var/lib/bbackup/jobs/JOB/'), text('each job\'s lock and journal of outstanding transfers (~/.local/state/bbackup/jobs/JOB/ when not root; --state-dir, state_dir or BBACKUP_STATE_DIR for another place)'),
    '.TP', italic('~/.cache/bbackup/'), text('the compiled code of the bbackup and bbackup-remote commands, so that they start sooner ($XDG_CACHE_HOME/bbackup/ when set); safe to delete'),
    '.SH ENVIRONMENT',
    '.TP', bold('BBACKUP_STATE_DIR'), text('an absolute path: where jobs keep their state (DIR/jobs/JOB/) when neither --state-dir nor the config\'s state_dir says, instead of /var/lib/bbackup or ~/.local/state/bbackup; bbackup schedule writes it into the units it makes'),
    '.TP', bold('RSYNC_PASSWORD'), text('the password of an rsync daemon module, when no --password-file is given'),
    '.TP', bold('NODE_DISABLE_COMPILE_CACHE'), text('set (to 1): the commands neither read nor write their code cache'),
    '.SH SEE ALSO',
    `${bold('btrfs')}(8), ${bold('rsync')}(1), ${bold('ssh')}(1), ${bold('systemd.timer')}(5), ${bold('btrbk')}(1), ${bold('rsnapshot')}(1)`,
    '',
  )
  return lines.join('\n')
}
