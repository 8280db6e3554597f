import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import { serveLine } from '../src/ssh/quote.js'
import { SERVE } from '../src/ssh/remote-protocol.js'
import { commandServer } from '../src/ssh/serve.js'

/** the command server in a local sh, as the master connection's command runs it on the host; `before` runs first (a chatty login script) */
const started: ChildProcessWithoutNullStreams[] = []
const startServer = (before = '') => {
  const child = spawn('sh', ['-c', `${before}${SERVE}`, 'sh'])
  started.push(child)
  return { child, server: commandServer(child.stdin, child.stdout, 10_000) }
}
afterEach(() => {
  for (const child of started.splice(0)) if (child.exitCode === null) child.kill('SIGKILL')
})

const line = (argv: readonly string[]) => serveLine(argv)._unsafeUnwrap()
const hostile = fc.array(fc.constantFrom('$', '`', "'", '"', '\\', ';', '|', '&', '<', '>', '(', ')', '*', '?', '[', '~', '#', '\n', '\r', '\t', ' ', '-', '=', '$n', "'\"$n\"'", 'a', 'é', '$(touch x)'), { maxLength: 12 }).map((parts) => parts.join(''))

describe('the command server', () => {
  it('runs requests one after the other, each argument exactly as it went in (hostile strings)', async () => {
    const { server } = startServer()
    expect(await server.started).toBe(true)
    await fc.assert(fc.asyncProperty(fc.array(hostile, { minLength: 1, maxLength: 5 }), async (args) => {
      const r = await server.run(line(['printf', '%s\\0', ...args]))
      expect(r).toEqual({ kind: 'done', exitCode: 0, stdout: args.map((a) => `${a}\0`).join(''), stderr: '' })
    }), { numRuns: 150 })
  })

  it('keeps stdout and stderr apart with the exit status, and answers requests sent together in order', async () => {
    const { server } = startServer()
    const answers = await Promise.all([
      server.run(line(['sh', '-c', 'printf "out\\n\\n"; echo err >&2; exit 3'])),
      server.run(line(['cat'])),
      server.run(line(['no-such-command-here'])),
      server.run(line(['printf', '%s', 'x'.repeat(200_000)])),
    ])
    expect(answers[0]).toEqual({ kind: 'done', exitCode: 3, stdout: 'out\n\n', stderr: 'err' })
    // stdin is /dev/null: a command cannot read the requests that follow
    expect(answers[1]).toEqual({ kind: 'done', exitCode: 0, stdout: '', stderr: '' })
    expect(answers[2]).toMatchObject({ kind: 'done', exitCode: 127, stderr: expect.stringContaining('not found') as unknown })
    expect(answers[3]).toMatchObject({ kind: 'done', exitCode: 0, stdout: 'x'.repeat(200_000) })
  })

  it('skips what a login script prints before it starts', async () => {
    const { server } = startServer('echo "Welcome to host"; printf "no newline"; ')
    expect(await server.started).toBe(true)
    expect(await server.run(line(['echo', 'hi']))).toEqual({ kind: 'done', exitCode: 0, stdout: 'hi\n', stderr: '' })
  })

  it('drops the answer of a request its caller cancelled, and the next answers stay in step', async () => {
    const { server } = startServer()
    const abort = new AbortController()
    const slow = server.run(line(['sh', '-c', 'sleep 0.3; echo late']), abort.signal)
    const next = server.run(line(['echo', 'next']))
    abort.abort()
    expect(await slow).toEqual({ kind: 'cancelled' })
    expect(await next).toEqual({ kind: 'done', exitCode: 0, stdout: 'next\n', stderr: '' })
  })

  it('says lost for what was asked when it goes away, and that it is gone; one that never starts says so', async () => {
    const { child, server } = startServer()
    expect(await server.started).toBe(true)
    const pending = server.run(line(['sleep', '5']))
    child.kill('SIGKILL')
    expect(await pending).toEqual({ kind: 'lost' })
    expect(server.alive).toBe(false)
    expect(await server.run(line(['true']))).toEqual({ kind: 'lost' })

    const refused = spawn('sh', ['-c', 'echo "bbackup-remote: refused: not allowed" >&2; exit 255'])
    started.push(refused)
    const never = commandServer(refused.stdin, refused.stdout, 10_000)
    expect(await never.started).toBe(false)
    expect(never.alive).toBe(false)
  })

  it('removes its temporary directory when its input ends', async () => {
    const { child, server } = startServer()
    // a raw line, not one of serveLine's: it may name the server's own variable
    const dir = await server.run('echo "$d"')
    const path = dir.kind === 'done' ? dir.stdout.trim() : ''
    expect(existsSync(join(path, 'o'))).toBe(true)
    child.stdin.end()
    await new Promise((resolve) => child.once('close', resolve))
    expect(existsSync(path)).toBe(false)
  })
})
