import type { Command } from 'commander'

/** What completion needs of a command, read from the same commander definitions as --help. */
interface CommandSpec {
  readonly name: string
  readonly description: string
  readonly options: readonly { readonly short?: string; readonly long?: string; readonly description: string; readonly takesValue: boolean; readonly choices?: readonly string[] }[]
}

export type Shell = 'bash' | 'zsh' | 'fish'

const specOf = (program: Command): CommandSpec[] => program.commands.map((c) => ({
  name: c.name(),
  description: c.description(),
  options: [...c.options.map((o) => ({
    ...(o.short === undefined ? {} : { short: o.short }), ...(o.long === undefined ? {} : { long: o.long }),
    description: o.description, takesValue: o.required || o.optional, ...(o.argChoices === undefined ? {} : { choices: o.argChoices }),
  })), { long: '--help', short: '-h', description: 'show the help of the command', takesValue: false }],
}))

/** one line, single-quoted for sh/zsh/fish: `'` closes, an escaped `'`, opens again */
const quote = (s: string): string => `'${s.replace(/\s+/g, ' ').replaceAll("'", "'\\''")}'`
const flagsOf = (o: CommandSpec['options'][number]): string[] => [o.short, o.long].filter((f): f is string => f !== undefined)

const bash = (commands: readonly CommandSpec[]): string => [
  '# bash completion for bbackup: source it, or save it as /etc/bash_completion.d/bbackup',
  '_bbackup() {',
  '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
  '  if [ "$COMP_CWORD" -eq 1 ]; then',
  `    COMPREPLY=( $(compgen -W ${quote([...commands.map((c) => c.name), '--help', '--version'].join(' '))} -- "$cur") )`,
  '    return',
  '  fi',
  '  local options="" valued="" choices=""',
  '  case "${COMP_WORDS[1]}" in',
  ...commands.map((c) => {
    const choiceCases = c.options.filter((o) => o.choices !== undefined).flatMap((o) => flagsOf(o).map((f) => `${f}) choices=${quote((o.choices ?? []).join(' '))} ;;`))
    return [
      `    ${c.name})`,
      `      options=${quote(c.options.flatMap(flagsOf).join(' '))}`,
      `      valued=${quote(` ${c.options.filter((o) => o.takesValue).flatMap(flagsOf).join(' ')} `)}`,
      ...(choiceCases.length === 0 ? [] : [`      case "$prev" in ${choiceCases.join(' ')} esac`]),
      '      ;;',
    ].join('\n')
  }),
  '  esac',
  '  if [ -n "$choices" ]; then COMPREPLY=( $(compgen -W "$choices" -- "$cur") ); return; fi',
  '  # the value of an option, or an argument (a path or a location): files',
  '  if [[ "$valued" == *" $prev "* || "$cur" != -* ]]; then COMPREPLY=( $(compgen -f -- "$cur") ); return; fi',
  '  COMPREPLY=( $(compgen -W "$options" -- "$cur") )',
  '}',
  'complete -o filenames -o bashdefault -F _bbackup bbackup',
  '',
].join('\n')

const fish = (commands: readonly CommandSpec[]): string => [
  '# fish completion for bbackup: save it as ~/.config/fish/completions/bbackup.fish',
  'complete -c bbackup -n __fish_use_subcommand -s h -l help -d \'show the help\'',
  'complete -c bbackup -n __fish_use_subcommand -s V -l version -d \'show the version\'',
  ...commands.map((c) => `complete -c bbackup -f -n __fish_use_subcommand -a ${c.name} -d ${quote(c.description)}`),
  ...commands.flatMap((c) => c.options.map((o) => [
    `complete -c bbackup -n '__fish_seen_subcommand_from ${c.name}'`,
    ...(o.short === undefined ? [] : [`-s ${o.short.slice(1)}`]), ...(o.long === undefined ? [] : [`-l ${o.long.slice(2)}`]),
    ...(o.choices !== undefined ? [`-x -a ${quote(o.choices.join(' '))}`] : o.takesValue ? ['-r'] : []),
    `-d ${quote(o.description)}`,
  ].join(' '))),
  '',
].join('\n')

/** zsh's _arguments spec of an option: `(-c --config)'{-c,--config}'[text]:value:_files` */
const zshOption = (o: CommandSpec['options'][number]): string => {
  const flags = flagsOf(o)
  const text = `[${o.description.replace(/\s+/g, ' ').replace(/[[\]:\\]/g, (ch) => `\\${ch}`)}]`
  const value = o.choices !== undefined ? `:value:(${o.choices.join(' ')})` : o.takesValue ? ':value:_files' : ''
  return flags.length === 1 ? quote(`${flags[0] ?? ''}${text}${value}`) : `${quote(`(${flags.join(' ')})`)}{${flags.join(',')}}${quote(`${text}${value}`)}`
}

const zsh = (commands: readonly CommandSpec[]): string => [
  '#compdef bbackup',
  '# zsh completion for bbackup: save it as _bbackup in a directory of $fpath',
  '_bbackup() {',
  '  local -a commands',
  `  commands=(${commands.map((c) => quote(`${c.name}:${c.description.replace(/:/g, '\\:')}`)).join(' ')})`,
  '  if (( CURRENT == 2 )); then',
  "    _describe 'command' commands",
  '    return',
  '  fi',
  '  case $words[2] in',
  ...commands.map((c) => `    ${c.name}) _arguments -s ${c.options.map(zshOption).join(' ')} '*:file:_files' ;;`),
  '  esac',
  '}',
  '_bbackup "$@"',
  '',
].join('\n')

/** The completion script of `bbackup completion SHELL`, made from the program's own commands and options. */
export const completionScript = (shell: Shell, program: Command): string => {
  const commands = specOf(program).filter((c) => c.name !== 'help')
  return shell === 'bash' ? bash(commands) : shell === 'zsh' ? zsh(commands) : fish(commands)
}
