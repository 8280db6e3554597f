import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { bbError, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { unsafeCommandFile } from './config.js'

/** the options whose values this host runs as commands */
const COMMAND_OPTIONS = ['--pre-exec', '--pre-snapshot-exec', '--post-snapshot-exec', '--post-exec', '--pipe-target', '--ssh-program']

/** Splits a line into words as a POSIX shell would: quotes, backslashes, `#` comments. */
export const splitWords = (line: string): Result<string[], string> => {
  const words: string[] = []
  let word: string | undefined
  let quote: '"' | "'" | undefined
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string
    if (quote === "'") {
      if (c === "'") quote = undefined
      else word = (word ?? '') + c
    } else if (quote === '"') {
      if (c === '"') quote = undefined
      else if (c === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1] as string)) word = (word ?? '') + line[++i]
      else word = (word ?? '') + c
    } else if (c === "'" || c === '"') {
      quote = c
      word ??= ''
    } else if (c === '\\' && i + 1 < line.length) {
      word = (word ?? '') + line[++i]
    } else if (c === ' ' || c === '\t') {
      if (word !== undefined) words.push(word)
      word = undefined
    } else if (c === '#' && word === undefined) {
      break
    } else {
      word = (word ?? '') + c
    }
  }
  if (quote !== undefined) return err(`unclosed ${quote} quote`)
  if (word !== undefined) words.push(word)
  return ok(words)
}

/**
 * Expands btrfs-backup's `@file` arguments: each line of the file holds arguments (shell-style
 * words, `#` starts a comment), and a file may include another with `@other` (relative to itself).
 */
export const expandArgFiles = (argv: readonly string[], cwd: string, seen: readonly string[] = []): Result<string[], BbError> => {
  const out: string[] = []
  for (const arg of argv) {
    if (!arg.startsWith('@') || arg.length === 1) {
      out.push(arg)
      continue
    }
    const path = resolve(cwd, arg.slice(1))
    if (seen.includes(path)) return err(bbError('INVALID_OPTIONS', `argument file ${path} includes itself`, 'remove the loop of @file includes'))
    let text: string
    try {
      text = readFileSync(path, 'utf8')
    } catch (e) {
      return err(bbError('INVALID_OPTIONS', `cannot read argument file ${path}: ${(e as Error).message}`, 'check the @file name'))
    }
    const lines = text.split('\n')
    const own: string[] = []
    for (const [index, line] of lines.entries()) {
      const words = splitWords(line)
      if (words.isErr()) return err(bbError('INVALID_OPTIONS', `${path}:${index + 1}: ${words.error}`, 'close the quote on that line'))
      own.push(...words.value)
      const nested = expandArgFiles(words.value, dirname(path), [...seen, path])
      if (nested.isErr()) return nested
      out.push(...nested.value)
    }
    // options that run commands, from a file someone else could change: refused as a config would be
    const commands = [...new Set(own.map((w) => w.split('=')[0] ?? w).filter((w) => COMMAND_OPTIONS.includes(w)))]
    const unsafe = unsafeCommandFile(path, commands, 'argument file')
    if (unsafe !== undefined) return err(unsafe)
  }
  return ok(out)
}
