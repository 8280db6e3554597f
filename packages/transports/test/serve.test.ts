import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { PassThrough } from 'node:stream'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import { serveLine } from '../src/ssh/quote.js'
import { OUT_TAG, PID_TAG, SERVE, SERVE_V2, STREAM_WRAPPER } from '../src/ssh/remote-protocol.js'
import { commandServer } from '../src/ssh/serve.js'

/** the command server in a local sh, as the master connection's command runs it on the host; `before` runs first (a chatty login script) */
const started: ChildProcessWithoutNullStreams[] = []
const startServer = (before = '', program = SERVE) => {
  // a group of its own, as the session on the host: `gone` ends it all, as a connection that closes
  const child = spawn('sh', ['-c', `${before}${program}`, 'sh'], { detached: true })
  started.push(child)
  return { child, server: commandServer(child.stdin, child.stdout, 10_000) }
}
/** the server and the commands it runs, all killed at once */
const gone = (child: ChildProcessWithoutNullStreams): void => {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL')
  } catch {
    // it had ended
  }
}
afterEach(() => {
  for (const child of started.splice(0)) gone(child)
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
    gone(child)
    expect(await pending).toEqual({ kind: 'lost' })
    expect(server.alive).toBe(false)
    expect(await server.run(line(['true']))).toEqual({ kind: 'lost' })

    const refused = spawn('sh', ['-c', 'echo "bbackup-remote: refused: not allowed" >&2; exit 255'])
    started.push(refused)
    const never = commandServer(refused.stdin, refused.stdout, 10_000)
    expect(await never.started).toBe(false)
    expect(never.alive).toBe(false)
  })

  it('passes output exactly where it looks like the answers around it (tokens, status lines, no last newline), and keeps no more stdout than a local command', async () => {
    const { server } = startServer()
    expect(await server.started).toBe(true)
    const looks = ['bbackup-run:00 0\n\nbbackup-run:00\n', '0 5 0\nhello', 'bbackup-remote-pid:1\n', '\n\n', 'no newline']
    const answers = await Promise.all(looks.map((text) => server.run(line(['sh', '-c', 'printf "%s" "$1"; printf "%s" "$1" >&2', 'sh', text]))))
    expect(answers).toEqual(looks.map((text) => ({ kind: 'done', exitCode: 0, stdout: text, stderr: text.replace(/\n+$/, '') })))
    const big = await server.run(line(['head', '-c', String(17 * 1024 * 1024), '/dev/zero']))
    expect(big.kind === 'done' && big.stdout.length).toBe(16 * 1024 * 1024)
    expect(await server.run(line(['echo', 'after']))).toEqual({ kind: 'done', exitCode: 0, stdout: 'after\n', stderr: '' })
  })

  it('runs each command in a process of its own: none can change the server (cd, variables, exit)', async () => {
    const { server } = startServer()
    // raw lines, not serveLine's: they touch the shell itself
    expect(await server.run('cd / && x=1 && exit 7')).toMatchObject({ kind: 'done', exitCode: 7 })
    expect(await server.run('echo "$PWD" "${x-unset}"')).toEqual({ kind: 'done', exitCode: 0, stdout: `${process.cwd()} unset\n`, stderr: '' })
  })

  it('still reads the answers of an older server (SERVE_V2: counted bytes), taking no streams of it', async () => {
    const { server } = startServer('', SERVE_V2)
    expect(await server.started).toBe(true)
    expect(server.streams).toBe(false)
    expect(await server.run(line(['sh', '-c', 'printf out; echo err >&2; exit 2']))).toEqual({ kind: 'done', exitCode: 2, stdout: 'out', stderr: 'err' })
  })
})

/** writes `bytes` into `to` from a process of its own, as btrfs send does: through the fd, not through JavaScript */
const writeFrom = (to: NodeJS.WritableStream, bytes: string): Promise<number | null> => {
  const writer = spawn('printf', ['%s', bytes], { stdio: ['ignore', to as never, 'ignore'] })
  return new Promise((resolve) => writer.once('close', resolve))
}

/** once the server's process has ended */
const closed = (child: ChildProcessWithoutNullStreams): Promise<unknown> => new Promise((resolve) => (child.exitCode === null ? child.once('close', resolve) : resolve(undefined)))

/** a temporary directory, removed after the test */
const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})
const scratch = () => {
  const d = mkdtempSync(join(tmpdir(), 'bbackup-serve-test-'))
  dirs.push(d)
  return d
}

describe('stream requests', () => {

  it('hands the stream after its line to a command that stops at its end; its pid comes first; requests made meanwhile wait, then run', async () => {
    const { server } = startServer()
    expect(await server.started).toBe(true)
    expect(server.streams).toBe(true)
    let pid: string | undefined
    // head -c 10 reads exactly the ten bytes of the stream, as btrfs receive -e reads to its end marker
    const taken = server.stream(line(['sh', '-c', STREAM_WRAPPER, 'sh', 'head', '-c', '10']), (p) => {
      pid = p
    })
    expect(taken).toBeDefined()
    // a second stream cannot go on the same channel while this one does
    expect(server.stream(line(['true']), () => undefined)).toBeUndefined()
    const meanwhile = server.run(line(['echo', 'after']))
    expect(await writeFrom(taken?.stdin as NodeJS.WritableStream, '0123456789')).toBe(0)
    expect(await taken?.result).toEqual({ kind: 'done', exitCode: 0, stdout: '0123456789', stderr: '' })
    expect(pid).toMatch(/^\d+$/)
    expect(await meanwhile).toEqual({ kind: 'done', exitCode: 0, stdout: 'after\n', stderr: '' })
    // the channel goes on: another stream, another request
    const again = server.stream(line(['head', '-c', '3']), () => undefined)
    expect(await writeFrom(again?.stdin as NodeJS.WritableStream, 'abc')).toBe(0)
    expect(await again?.result).toEqual({ kind: 'done', exitCode: 0, stdout: 'abc', stderr: '' })
    expect(await server.run(line(['echo', 'still']))).toEqual({ kind: 'done', exitCode: 0, stdout: 'still\n', stderr: '' })
  })

  it('ends when the stream command fails: the rest of the stream is never run as a request, and the requests that waited come back unsent', async () => {
    const dir = scratch()
    const marker = join(dir, 'pwned')
    const { child, server } = startServer()
    expect(await server.started).toBe(true)
    const taken = server.stream(line(['sh', '-c', 'head -c 3 >/dev/null; exit 1']), () => undefined)
    const waited = server.run(line(['echo', 'after']))
    // what follows the three bytes read looks like a request
    await writeFrom(taken?.stdin as NodeJS.WritableStream, `abc\ntouch ${marker}\ntouch ${marker}\n`)
    expect(await taken?.result).toEqual({ kind: 'done', exitCode: 1, stdout: '', stderr: '' })
    expect(await waited).toEqual({ kind: 'unsent' })
    expect(await server.run(line(['true']))).toEqual({ kind: 'unsent' })
    await closed(child)
    expect(existsSync(marker)).toBe(false)
  })

  it('ends when a stream command that succeeded left bytes unread: the line after it must be the token', async () => {
    const dir = scratch()
    const marker = join(dir, 'pwned')
    const { child, server } = startServer()
    expect(await server.started).toBe(true)
    const taken = server.stream(line(['head', '-c', '3']), () => undefined)
    await writeFrom(taken?.stdin as NodeJS.WritableStream, `abc touch ${marker}\n`)
    expect(await taken?.result).toEqual({ kind: 'done', exitCode: 0, stdout: 'abc', stderr: '' })
    const next = await server.run(line(['touch', marker]))
    expect(next).toEqual({ kind: 'lost' })
    await closed(child)
    expect(existsSync(marker)).toBe(false)
  })

  it('takes no stream where the server does not say it can (bbackup-remote answers requests only)', async () => {
    const child = spawn('sh', ['-c', 'echo bbackup-serve:1; cat >/dev/null'])
    started.push(child)
    const server = commandServer(child.stdin, child.stdout, 10_000)
    expect(await server.started).toBe(true)
    expect(server.streams).toBe(false)
    expect(server.stream(line(['head', '-c', '1']), () => undefined)).toBeUndefined()
  })
})

/** everything a readable gives until it ends */
const drained = async (from: NodeJS.ReadableStream): Promise<Buffer> => {
  const chunks: Buffer[] = []
  for await (const chunk of from) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

describe('out-stream requests', () => {

  it('hands on exactly the bytes the command wrote, up to its token, even where they look like the protocol; its pid comes first; requests made meanwhile run after it', async () => {
    const dir = scratch()
    // 3 MiB of random bytes, with what could pass for a pid line, a token and an answer in it
    const payload = Buffer.concat([Buffer.from(`${PID_TAG}1\n${OUT_TAG}0123 0 0 0\n`), randomBytes(3 * 1024 * 1024), Buffer.from(`\n${OUT_TAG}`)])
    writeFileSync(join(dir, 'payload'), payload)
    const { server } = startServer()
    expect(await server.started).toBe(true)
    let pid: string | undefined
    const taken = server.streamOut(line(['sh', '-c', STREAM_WRAPPER, 'sh', 'cat', join(dir, 'payload')]), (p) => {
      pid = p
    })
    expect(taken).toBeDefined()
    // one stream at a time, either way, on the channel
    expect(server.streamOut(line(['true']), () => undefined)).toBeUndefined()
    expect(server.stream(line(['true']), () => undefined)).toBeUndefined()
    const meanwhile = server.run(line(['echo', 'after']))
    const [got, result] = await Promise.all([drained(taken?.stdout as NodeJS.ReadableStream), taken?.result])
    expect(got.equals(payload)).toBe(true)
    expect(taken?.bytes()).toBe(payload.length)
    expect(result).toEqual({ kind: 'done', exitCode: 0, stdout: '', stderr: '' })
    expect(pid).toMatch(/^\d+$/)
    expect(await meanwhile).toEqual({ kind: 'done', exitCode: 0, stdout: 'after\n', stderr: '' })
    // the channel goes on: an empty stream, a failed one with its stderr, a request
    const empty = server.streamOut(line(['true']), () => undefined)
    expect([(await drained(empty?.stdout as NodeJS.ReadableStream)).length, await empty?.result]).toEqual([0, { kind: 'done', exitCode: 0, stdout: '', stderr: '' }])
    const failing = server.streamOut(line(['sh', '-c', 'printf partial; echo broken >&2; exit 5']), () => undefined)
    expect([(await drained(failing?.stdout as NodeJS.ReadableStream)).toString(), await failing?.result]).toEqual(['partial', { kind: 'done', exitCode: 5, stdout: '', stderr: 'broken' }])
    expect(await server.run(line(['echo', 'still']))).toEqual({ kind: 'done', exitCode: 0, stdout: 'still\n', stderr: '' })
  })

  it('reads the channel no faster than the stream is taken, and drops the rest once its reader has gone, answering on', async () => {
    const { server } = startServer()
    expect(await server.started).toBe(true)
    const taken = server.streamOut(line(['head', '-c', String(20 * 1024 * 1024), '/dev/zero']), () => undefined)
    const stdout = taken?.stdout as NodeJS.ReadableStream & { destroy(): void }
    // nobody reads yet: the server's side waits (a pipe's and the pass-through's worth came, not 20 MiB)
    await new Promise((r) => setTimeout(r, 300))
    expect(taken?.bytes()).toBeLessThan(4 * 1024 * 1024)
    stdout.destroy()
    expect(await taken?.result).toEqual({ kind: 'done', exitCode: 0, stdout: '', stderr: '' })
    expect(taken?.bytes()).toBe(20 * 1024 * 1024)
    expect(await server.run(line(['echo', 'next']))).toEqual({ kind: 'done', exitCode: 0, stdout: 'next\n', stderr: '' })
  })

  it('finds its token wherever the chunks of the channel split it', async () => {
    const stream = Buffer.from(`btrfs-stream${OUT_TAG}x\n`)
    for (const size of [1, 2, 5, 7, 13, 36, 37, 64]) {
      const [toServer, fromServer] = [new PassThrough(), new PassThrough()]
      const server = commandServer(toServer, fromServer, 10_000)
      fromServer.write(`${'bbackup-serve:3'}\n`)
      expect(await server.started).toBe(true)
      const taken = server.streamOut('cat', () => undefined)
      const token = /^(\S+) cat\n$/.exec(String(toServer.read()))?.[1] ?? ''
      expect(token.startsWith(OUT_TAG)).toBe(true)
      const channel = Buffer.concat([Buffer.from(`${PID_TAG}42\n`), stream, Buffer.from(`${token} 0\nerr\n${token}\n`)])
      for (let at = 0; at < channel.length; at += size) fromServer.write(channel.subarray(at, at + size))
      expect([size, (await drained(taken?.stdout as NodeJS.ReadableStream)).toString()]).toEqual([size, stream.toString()])
      expect(await taken?.result).toEqual({ kind: 'done', exitCode: 0, stdout: '', stderr: 'err' })
    }
  })

  it('ends a stream cut short when the server goes away, with the bytes that came', async () => {
    // its own process group: the server and the command it runs go away together, as with a connection
    const child = spawn('sh', ['-c', SERVE, 'sh'], { detached: true })
    started.push(child)
    const server = commandServer(child.stdin, child.stdout, 10_000)
    expect(await server.started).toBe(true)
    const taken = server.streamOut(line(['sh', '-c', 'printf some; sleep 30']), () => undefined)
    const got = drained(taken?.stdout as NodeJS.ReadableStream)
    await new Promise((r) => setTimeout(r, 200))
    process.kill(-(child.pid as number), 'SIGKILL')
    expect((await got).toString()).toBe('some')
    expect(await taken?.result).toEqual({ kind: 'lost' })
  })
})
