import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { remoteCommand, shQuote } from '../src/ssh/quote.js'

/** What a real POSIX shell makes of a command line: the words it passes to printf, NUL-separated. */
const wordsAfterShell = (shell: string, args: readonly string[]): string[] => {
  const line = remoteCommand(['printf', '%s\\0', ...args])._unsafeUnwrap()
  const out = execFileSync(shell, ['-c', line], { encoding: 'utf8' })
  return out.split('\0').slice(0, -1)
}

const shells = ['sh', 'dash', 'bash'].filter((s) => {
  try {
    execFileSync(s, ['-c', 'true'])
    return true
  } catch {
    return false
  }
})

/** strings made of what shells treat specially, so that most generated cases are hostile */
const hostile = fc.array(fc.constantFrom('$', '`', "'", '"', '\\', ';', '|', '&', '<', '>', '(', ')', '{', '}', '*', '?', '[', '~', '#', '!', '\n', '\t', ' ', '-', '=', '..', '/', 'a', 'é', '$(touch x)'), { maxLength: 12 }).map((parts) => parts.join(''))
const anyText = fc.string({ unit: 'binary', maxLength: 40 }).filter((s) => !/[\uD800-\uDFFF]/u.test(s) && !s.includes('\0'))

describe('POSIX shell quoting', () => {
  it('leaves plain words alone and quotes the rest', () => {
    expect(shQuote('/srv/backups/home.20260101')).toBe('/srv/backups/home.20260101')
    expect(shQuote("it's")).toBe("'it'\\''s'")
    expect(shQuote('')).toBe("''")
    expect(shQuote('-rf')).toBe("'-rf'")
    expect(shQuote('A=1')).toBe("'A=1'")
    expect(shQuote('~root')).toBe("'~root'")
  })

  it.each(shells)('every argument comes out of %s exactly as it went in (hostile strings)', (shell) => {
    fc.assert(fc.property(fc.array(hostile, { minLength: 1, maxLength: 5 }), (args) => {
      expect(wordsAfterShell(shell, args)).toEqual(args)
    }), { numRuns: 150 })
  })

  it.each(shells)('every argument comes out of %s exactly as it went in (any text)', (shell) => {
    fc.assert(fc.property(fc.array(anyText, { minLength: 1, maxLength: 4 }), (args) => {
      expect(wordsAfterShell(shell, args)).toEqual(args)
    }), { numRuns: 100 })
  })

  it('refuses an argument with a NUL byte, naming it', () => {
    const e = remoteCommand(['rm', '-f', '--', '/srv/a\0b'])._unsafeUnwrapErr()
    expect(e.code).toBe('INVALID_OPTIONS')
    expect(e.message).toBe('a remote argument contains a NUL byte: "/srv/a\\u0000b"')
  })
})
