import { err, ok, type Result } from 'neverthrow'

/**
 * Characters that may stand bare in a word: everything a POSIX shell gives no meaning to.
 * Whitespace, quotes, `\`, `$`, backquote, `; & | < > ( ) { } * ? [ ] ! #` and control characters
 * need quoting (shQuote and rsync's own escaping both quote them).
 */
const SPECIAL = /^[\s'"\\$`;&|<>(){}*?[\]!#]$/u
const bare = (c: string): boolean => !SPECIAL.test(c) && (c.codePointAt(0) ?? 0) > 0x1f && c !== '\u007f'

/** how the command server's request lines write a newline, outside quotes: the server's `$n` */
const NEWLINE = '"$n"'

/**
 * Splits the command line that sshd hands a forced command (`SSH_ORIGINAL_COMMAND`) into its argv,
 * for the one grammar bbackup's clients write: words separated by spaces, each made of bare
 * characters, `'single-quoted'` runs ({@link shQuote}) and backslash escapes (rsync's `-e`
 * escaping). Nothing is expanded or evaluated; anything else a shell would interpret (a `$`, a
 * `;`, a pipe, a glob, a leading `~`, an unterminated quote) is refused, with the reason. With
 * `serveLine`, also `"$n"` outside quotes, which a request line of the command server has for a
 * newline (quote.ts's serveLine).
 * @example
 * splitCommand("sh -c 'exec cat -- \"$1\"' sh /srv/a\\ b") // ok(['sh', '-c', 'exec cat -- "$1"', 'sh', '/srv/a b'])
 */
export const splitCommand = (command: string, options: { readonly serveLine?: boolean } = {}): Result<string[], string> => {
  const words: string[] = []
  let word: string | undefined
  for (let i = 0; i < command.length; i++) {
    const c = command[i] as string
    if (c === ' ' || c === '\t') {
      if (word !== undefined) words.push(word)
      word = undefined
      continue
    }
    if (c === "'") {
      const end = command.indexOf("'", i + 1)
      if (end < 0) return err('an unterminated single quote')
      word = (word ?? '') + command.slice(i + 1, end)
      i = end
      continue
    }
    if (c === '\\') {
      const next = command[i + 1]
      if (next === undefined || next === '\n') return err('a backslash at the end of a line')
      word = (word ?? '') + next
      i++
      continue
    }
    if (options.serveLine === true && command.startsWith(NEWLINE, i)) {
      // a request line of the command server: a newline of a word, between two single-quoted runs (serveLine)
      word = `${word ?? ''}\n`
      i += NEWLINE.length - 1
      continue
    }
    if (c === '~' && word === undefined) return err('a word that starts with ~ (the shell would expand it)')
    if (!bare(c)) return err(`the shell character ${JSON.stringify(c)} outside quotes`)
    word = (word ?? '') + c
  }
  if (word !== undefined) words.push(word)
  if (words.length === 0) return err('an empty command')
  return ok(words)
}
