import { describe, expect, it } from 'vitest'
import { commandEnv, execCommand, spawnCommand, withSystemDirs } from '../src/local/exec.js'

// the one place every local command goes through, against real processes (sh, cat, sleep)
describe('execCommand', () => {
  it('gives the exit code, stdout and the tail of stderr', async () => {
    const r = (await execCommand(['sh', '-c', 'printf out; printf err >&2; exit 3']))._unsafeUnwrap()
    expect(r).toMatchObject({ exitCode: 3, stdout: 'out', stderr: 'err' })
  })

  it('hands stdout over line by line when asked, a last line without a newline included', async () => {
    const lines: string[] = []
    const r = (await execCommand(['sh', '-c', 'printf "a\\nb\\r\\nc"'], { onStdoutLine: (l) => lines.push(l) }))._unsafeUnwrap()
    expect(lines).toEqual(['a', 'b', 'c'])
    expect(r.stdout).toBe('')
  })

  it('writes input to stdin and closes it', async () => {
    expect((await execCommand(['cat'], { input: 'line 1\nline 2\n' }))._unsafeUnwrap().stdout).toBe('line 1\nline 2\n')
  })

  it('judges a command that does not read its input by its exit code', async () => {
    expect((await execCommand(['true'], { input: 'x'.repeat(1024 * 1024) }))._unsafeUnwrap().exitCode).toBe(0)
  })

  it('adds env to the environment instead of replacing it, and runs in cwd', async () => {
    const r = (await execCommand(['sh', '-c', 'printf "%s %s %s" "$BB_EXEC_TEST" "${PATH:+has-path}" "$(pwd)"'], { env: { BB_EXEC_TEST: 'set' }, cwd: '/tmp' }))._unsafeUnwrap()
    expect(r.stdout).toBe('set has-path /tmp')
  })

  it("finds a program in /usr/sbin under cron's PATH (/usr/bin:/bin), and passes that PATH on; a program found first on the PATH still wins", async () => {
    expect(withSystemDirs('/usr/bin:/bin')).toBe('/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin')
    expect(withSystemDirs('/sbin:/usr/bin:/usr/sbin')).toBe('/sbin:/usr/bin:/usr/sbin:/usr/local/sbin')
    expect(withSystemDirs('')).toBe('/usr/local/sbin:/usr/sbin:/sbin')
    expect(withSystemDirs(undefined)).toBeUndefined()
    const saved = process.env.PATH
    process.env.PATH = '/usr/bin:/bin'
    try {
      // sh, found on cron's PATH, says what PATH it was given, and where it finds a tool of /usr/sbin
      const r = (await execCommand(['sh', '-c', 'printf "%s\\n" "$PATH"; command -v blockdev']))._unsafeUnwrap()
      expect(r.stdout).toMatch(/^\/usr\/bin:\/bin:\/usr\/local\/sbin:\/usr\/sbin:\/sbin\n\/(usr\/)?sbin\/blockdev\n$/)
      const spawned = spawnCommand(['blockdev', '--help'], { stdout: 'ignore' })
      expect((await spawned.done)._unsafeUnwrap().exitCode).toBe(0)
      expect(commandEnv({ BB_EXEC_TEST: 'set' })).toMatchObject({ BB_EXEC_TEST: 'set', PATH: '/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin' })
    } finally {
      process.env.PATH = saved
    }
  })

  it('names the package of a command that is not installed', async () => {
    const e = (await execCommand(['rsync-not-here-bb']))._unsafeUnwrapErr()
    expect(e.code).toBe('TOOL_MISSING')
    // the command is looked up on the PATH it is given
    const btrfs = (await execCommand(['btrfs', '--version'], { env: { PATH: '/nonexistent' } }))._unsafeUnwrapErr()
    expect(btrfs.code).toBe('TOOL_MISSING')
    expect(btrfs.hint).toContain('apt-get install btrfs-progs')
  })

  it('reports a command killed by a signal', async () => {
    const e = (await execCommand(['sh', '-c', 'kill -KILL $$']))._unsafeUnwrapErr()
    expect(e.code).toBe('COMMAND_FAILED')
    expect(e.message).toContain('SIGKILL')
    // which signal, for a pipeline to tell a sender it stopped (SIGPIPE) from one someone else killed
    expect(e.details?.['signal']).toBe('SIGKILL')
  })

  it('cancels with the signal: SIGTERM at once, CANCELLED as the answer', async () => {
    const controller = new AbortController()
    const started = Date.now()
    const running = execCommand(['sleep', '30'], { signal: controller.signal })
    setTimeout(() => controller.abort(), 100)
    const e = (await running)._unsafeUnwrapErr()
    expect(e.code).toBe('CANCELLED')
    expect(Date.now() - started).toBeLessThan(4000)
  })

  it('kills with SIGKILL a command that ignores SIGTERM, 5 s later', async () => {
    const controller = new AbortController()
    const started = Date.now()
    const running = execCommand(['sh', '-c', 'trap "" TERM; while :; do sleep 0.1; done'], { signal: controller.signal })
    setTimeout(() => controller.abort(), 100)
    expect((await running)._unsafeUnwrapErr().code).toBe('CANCELLED')
    const took = Date.now() - started
    expect(took).toBeGreaterThanOrEqual(5000)
    expect(took).toBeLessThan(9000)
  }, 15_000)

  it('does not start a command whose signal is already aborted', async () => {
    const controller = new AbortController()
    controller.abort()
    const e = (await execCommand(['sh', '-c', 'touch /nonexistent-bb/should-not-run'], { signal: controller.signal }))._unsafeUnwrapErr()
    expect(e.code).toBe('CANCELLED')
  })
})

describe('spawnCommand', () => {
  it('pipes one command into another without JavaScript copying the bytes', async () => {
    const producer = spawnCommand(['sh', '-c', 'seq 1 100000'], { stdout: 'pipe' })
    if (producer.stdout === undefined) throw new Error('spawnCommand gave no stdout pipe')
    const consumer = spawnCommand(['sh', '-c', 'wc -l >&2'], { stdin: producer.stdout })
    const [made, counted] = await Promise.all([producer.done, consumer.done])
    expect(made._unsafeUnwrap().exitCode).toBe(0)
    expect(counted._unsafeUnwrap().stderr.trim()).toBe('100000')
    expect(await producer.bytesWritten()).toBeGreaterThan(500_000)
  })

  it('names a missing command and reports cancellation', async () => {
    expect((await spawnCommand(['btrfs-not-here-bb']).done)._unsafeUnwrapErr().code).toBe('TOOL_MISSING')
    const controller = new AbortController()
    const running = spawnCommand(['sleep', '30'], { signal: controller.signal })
    controller.abort()
    expect((await running.done)._unsafeUnwrapErr().code).toBe('CANCELLED')
  })
})
