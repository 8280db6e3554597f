import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, readFileSync } from 'node:fs'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseLocation, type SshLocation, type Transport } from '@bb/core'
import { childrenOf, makeTempDir, requireTools, startSshd, type Sshd, type TempDir } from '@bb/testkit'
import { localTransport } from '@bb/transports/local'
import { openSshSession, sshTransport, type SshSession } from '@bb/transports/ssh'

/** names a careless remote command line would turn into shell syntax or options */
const HOSTILE = [
  'with space', "it's", 'say "hi"', '$HOME', '`id`', '$(touch MARKER)', "'; touch MARKER; '", 'line\nbreak', '-rf', '--help', 'tab\there', 'back\\slash', '*', 'é ü',
]

/** a process's command line, its words joined by spaces ('' once it is gone) */
const cmdline = (pid: number): string => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
  } catch {
    return ''
  }
}

/** a process's parent (0 once it is gone) */
const parentOf = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    return 0
  }
}

describe.runIf(requireTools(['sshd', 'ssh', 'ssh-keygen'], { root: true }))('the ssh transport against a real sshd on 127.0.0.1', () => {
  let sshd: Sshd
  let dir: TempDir
  let session: SshSession
  let remote: Transport

  const location = (path: string): SshLocation => parseLocation(`ssh://root@127.0.0.1:${sshd.port}${path}`)._unsafeUnwrap() as SshLocation
  const options = () => ({ identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile })

  /** the sessions opened ahead that wait for their command on the host (under this sshd), once there are `count` of them (or 10 s passed) */
  const aheadOnHost = async (count: number): Promise<number[]> => {
    // one per session: a subshell the login shell forks (a .bashrc's $(…)) has its command line too
    const waiting = (): number[] => {
      const pids = sshd.sessionPids().filter((pid) => cmdline(pid).includes('read -r l || exit 0'))
      return pids.filter((pid) => !pids.includes(parentOf(pid)))
    }
    let found = waiting()
    for (const deadline = Date.now() + 10_000; found.length !== count && Date.now() < deadline; found = waiting()) await new Promise((r) => setTimeout(r, 50))
    return found
  }

  beforeAll(async () => {
    sshd = await startSshd()
    dir = await makeTempDir('ssh-transport')
    session = openSshSession()
    remote = sshTransport(location(dir.path), session, options())
  })
  afterAll(async () => {
    await session?.close()
    await sshd?.stop()
    await dir?.cleanup()
  })

  it('runs argv on the host with every argument intact, hostile ones included', async () => {
    const r = (await remote.exec(['printf', '%s\\0', ...HOSTILE]))._unsafeUnwrap()
    expect(r.exitCode).toBe(0)
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(HOSTILE)
  })

  it('runs several commands in one round trip (execEach), each with its exit code and output, hostile arguments intact', async () => {
    await remote.exec(['true'])
    const before = await sshd.logins()
    // (the output of each is text: a NUL byte would be lost)
    const argvs = [['printf', '%s\\037', ...HOSTILE], ['sh', '-c', 'echo to-stderr >&2; exit 7'], ['true'], ['printf', '%s|', ...Array.from({ length: 11 }, (_, i) => String(i + 1))]]
    const results = (await remote.execEach?.(argvs))?._unsafeUnwrap()
    expect(results?.map((r) => r.exitCode)).toEqual([0, 7, 0, 0])
    expect(results?.[0]?.output.split('\x1f').slice(0, -1)).toEqual(HOSTILE)
    expect(results?.[1]?.output).toBe('to-stderr')
    expect(results?.[3]?.output).toBe('1|2|3|4|5|6|7|8|9|10|11|')
    // a remote command runs in the login's home: nothing there was made by a word
    expect(existsSync(join(process.env.HOME ?? '/root', 'MARKER'))).toBe(false)
    // through the connection that is already open: no login
    expect(await sshd.logins()).toBe(before)
  })

  it('moves files with hostile names and never runs what is in them', async () => {
    const base = join(dir.path, 'files')
    expect((await remote.mkdir(base))._unsafeUnwrap()).toBeUndefined()
    for (const name of HOSTILE) {
      const path = join(base, name)
      ;(await remote.writeFileAtomic(path, `content of ${name}\n`))._unsafeUnwrap()
      expect(await readFile(path, 'utf8')).toBe(`content of ${name}\n`)
      expect((await remote.readFile(path))._unsafeUnwrap()).toBe(`content of ${name}\n`)
      const s = (await remote.stat(path))._unsafeUnwrap()
      expect(s?.kind).toBe('file')
      expect(s?.size).toBe(Buffer.byteLength(`content of ${name}\n`))
    }
    expect((await remote.list(base))._unsafeUnwrap().map((e) => e.name).sort()).toEqual([...HOSTILE].sort())
    expect((await readdir(base)).sort()).toEqual([...HOSTILE].sort())
    // the benign half worked (above); the hostile half did nothing
    expect(existsSync(join(base, 'MARKER'))).toBe(false)
    expect(existsSync(join(process.env.HOME ?? '/root', 'MARKER'))).toBe(false)
    expect(existsSync('/MARKER')).toBe(false)
  })

  it('renames, links, removes and reports what is not there', async () => {
    const base = join(dir.path, 'ops')
    ;(await remote.mkdir(join(base, 'a', 'b'), { recursive: true }))._unsafeUnwrap()
    await writeFile(join(base, 'a', 'f'), 'x')
    ;(await remote.rename(join(base, 'a', 'f'), join(base, 'a', 'g h')))._unsafeUnwrap()
    expect(await readdir(join(base, 'a'))).toEqual(['b', 'g h'])
    ;(await remote.symlink('g h', join(base, 'a', 'latest')))._unsafeUnwrap()
    expect((await remote.readlink(join(base, 'a', 'latest')))._unsafeUnwrap()).toBe('g h')
    expect((await remote.stat(join(base, 'a', 'latest')))._unsafeUnwrap()?.kind).toBe('symlink')
    expect((await remote.stat(join(base, 'a', 'b')))._unsafeUnwrap()?.kind).toBe('directory')
    expect((await remote.stat(join(base, 'nothing')))._unsafeUnwrap()).toBeUndefined()
    expect((await remote.readFile(join(base, 'nothing')))._unsafeUnwrap()).toBeUndefined()
    expect((await remote.readlink(join(base, 'a', 'g h')))._unsafeUnwrap()).toBeUndefined()
    expect((await remote.list(join(base, 'nothing')))._unsafeUnwrapErr().code).toBe('NOT_FOUND')
    expect((await remote.mkdir(join(base, 'no', 'parent')))._unsafeUnwrapErr().code).toBe('NOT_FOUND')
    ;(await remote.remove(join(base, 'a'), { recursive: true }))._unsafeUnwrap()
    expect(await readdir(base)).toEqual([])
  })

  it('says which tool is missing on the host', async () => {
    const e = (await remote.exec(['bbackup-no-such-tool', '--version']))._unsafeUnwrapErr()
    expect(e.code).toBe('TOOL_MISSING')
    expect(e.message).toBe(`bbackup-no-such-tool is not installed on root@127.0.0.1:${sshd.port} (or not on the PATH of its non-interactive shell)`)
  })

  it('streams a command\'s output into another command over the connection', async () => {
    const big = join(dir.path, 'big')
    await writeFile(big, Buffer.alloc(3 * 1024 * 1024, 7))
    const sender = remote.spawn(['cat', '--', big], { stdout: 'pipe' })
    const receiver = remote.spawn(['sh', '-c', 'cat > "$1"', 'sh', `${big}.copy`], { stdin: sender.stdout as NonNullable<typeof sender.stdout> })
    expect((await sender.done)._unsafeUnwrap().exitCode).toBe(0)
    expect((await receiver.done)._unsafeUnwrap().exitCode).toBe(0)
    expect((await readFile(`${big}.copy`)).equals(await readFile(big))).toBe(true)
  })

  it('used one ssh connection for all of it', async () => {
    expect(session.connectionsOpened).toBe(1)
    expect(await sshd.logins()).toBe(1)
  })

  it('closes its connection, leaving no session behind on the server', async () => {
    const own = openSshSession()
    const t = sshTransport(location(dir.path), own, options())
    ;(await t.exec(['true']))._unsafeUnwrap()
    const before = sshd.sessionPids().length
    expect(before).toBeGreaterThan(0)
    await own.close()
    const deadline = Date.now() + 5000
    while (sshd.sessionPids().length >= before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    expect(sshd.sessionPids().length).toBeLessThan(before)
  })

  it('runs a spawn in the session opened ahead (prepareSpawn), the stream written straight into it, a hostile name intact', async () => {
    const own = openSshSession()
    try {
      const t = sshTransport(location(dir.path), own, options())
      t.prepareSpawn?.()
      ;(await t.exec(['true']))._unsafeUnwrap()
      // logged in: the session ahead is already an ssh client of this process, waiting on the host
      const clients = childrenOf(process.pid).filter((pid) => cmdline(pid).startsWith('ssh '))
      expect((await aheadOnHost(1)).length).toBe(1)
      const sessionsBefore = await sshd.sessions()
      const big = join(dir.path, 'ahead-source')
      await writeFile(big, Buffer.alloc(2 * 1024 * 1024 + 3, 5))
      const name = join(dir.path, 'line\nbreak $(touch MARKER) \'q\'')
      const receiver = t.spawn(['sh', '-c', 'cat > "$1"', 'sh', name], { stdin: 'pipe' })
      expect(clients).toContain(receiver.pid)
      const sender = localTransport(dir.path).spawn(['cat', '--', big], { stdout: receiver.stdin ?? 'ignore' })
      expect((await sender.done)._unsafeUnwrap().exitCode).toBe(0)
      expect((await receiver.done)._unsafeUnwrap().exitCode).toBe(0)
      expect((await readFile(name)).equals(await readFile(big))).toBe(true)
      expect(existsSync(join(process.env.HOME ?? '/root', 'MARKER'))).toBe(false)
      // no session was started for it
      expect(await sshd.sessions()).toBe(sessionsBefore)
      // the next spawn has no session ahead: it starts its own
      const second = t.spawn(['true'])
      expect(clients).not.toContain(second.pid)
      expect((await second.done)._unsafeUnwrap().exitCode).toBe(0)
    } finally {
      await own.close()
    }
  })

  it('ends a session opened ahead that nothing took, leaving nothing running on the host', async () => {
    const own = openSshSession()
    const t = sshTransport(location(dir.path), own, options())
    t.prepareSpawn?.()
    ;(await t.exec(['true']))._unsafeUnwrap()
    expect((await aheadOnHost(1)).length).toBe(1)
    await own.close()
    expect(await aheadOnHost(0)).toEqual([])
  })

  it('refuses an unknown host key, naming the fix, without retrying', async () => {
    const own = openSshSession()
    const empty = join(dir.path, 'empty_known_hosts')
    await writeFile(empty, '')
    try {
      const before = await sshd.logins()
      const e = (await sshTransport(location(dir.path), own, { identityFile: sshd.identityFile, knownHostsFile: empty }).exec(['true']))._unsafeUnwrapErr()
      expect(e.code).toBe('HOSTKEY_UNKNOWN')
      expect(e.message).toBe(`the host key of root@127.0.0.1:${sshd.port} is not known: bbackup does not trust new hosts by itself`)
      // the hint adds the key to the known_hosts file the connection was given
      expect(e.hint).toContain(`ssh-keyscan -p ${sshd.port} 127.0.0.1 >> ${empty}`)
      expect(await sshd.logins()).toBe(before)
    } finally {
      await own.close()
    }
  })

  it('names a host alias\'s real name and port in the fix for an unknown key, and the HostKeyAlias it is filed under; the fix works', async () => {
    // an alias as ~/.ssh/config would make one: the name in the location is not a host, the options say where it is
    const alias = parseLocation(`ssh://root@backup-nas${dir.path}`)._unsafeUnwrap() as SshLocation
    for (const [name, extra, keyscan] of [
      ['alias', [], `ssh-keyscan -p ${sshd.port} 127.0.0.1 >> `],
      ['filed', ['HostKeyAlias=vault'], `ssh-keyscan -p ${sshd.port} 127.0.0.1 | sed 's/^[^ ]*/vault/' >> `],
    ] as const) {
      const own = openSshSession()
      const file = join(dir.path, `known_hosts_${name}`)
      await writeFile(file, '')
      const sshOptions = { identityFile: sshd.identityFile, knownHostsFile: file, options: ['HostName=127.0.0.1', `Port=${sshd.port}`, ...extra] }
      try {
        const e = (await sshTransport(alias, own, sshOptions).exec(['true']))._unsafeUnwrapErr()
        expect(e.code).toBe('HOSTKEY_UNKNOWN')
        expect(e.message).toBe('the host key of root@backup-nas is not known: bbackup does not trust new hosts by itself')
        const fix = /trust it once: (.*) \(or connect once/.exec(e.hint)?.[1]
        expect(fix).toBe(`${keyscan}${file}`)
        // the command as the hint gives it makes the host known
        execFileSync('sh', ['-c', `${fix ?? ''} 2>/dev/null`])
        expect((await sshTransport(alias, own, sshOptions).exec(['true']))._unsafeUnwrap().exitCode).toBe(0)
      } finally {
        await own.close()
      }
    }
  })

  it('connect logs in ahead of the first command, which then runs on that login', async () => {
    const own = openSshSession()
    try {
      const t = sshTransport(location(dir.path), own, options())
      const before = await sshd.logins()
      await t.connect?.()
      // logged in (and the command server started) before any command was asked for
      expect(await sshd.logins() - before).toBe(1)
      expect(t.unrestricted?.()).toBe(true)
      expect((await t.exec(['true']))._unsafeUnwrap().exitCode).toBe(0)
      expect(own.connectionsOpened).toBe(1)
      expect(await sshd.logins() - before).toBe(1)
    } finally {
      await own.close()
    }
  })

  it('a connect that fails leaves its error to the first command, which does not try again; the one after it does', async () => {
    const own = openSshSession()
    const empty = join(dir.path, 'empty_known_hosts_connect')
    await writeFile(empty, '')
    try {
      const t = sshTransport(location(dir.path), own, { identityFile: sshd.identityFile, knownHostsFile: empty })
      await t.connect?.()
      expect(own.connectionsOpened).toBe(1)
      const e = (await t.exec(['true']))._unsafeUnwrapErr()
      expect(e.code).toBe('HOSTKEY_UNKNOWN')
      expect(own.connectionsOpened).toBe(1)
      // a retry (the run's backoff) connects anew
      expect((await t.exec(['true']))._unsafeUnwrapErr().code).toBe('HOSTKEY_UNKNOWN')
      expect(own.connectionsOpened).toBe(2)
    } finally {
      await own.close()
    }
  })

  it('refuses a login it has no key for', async () => {
    const own = openSshSession()
    const other = join(dir.path, 'other_key')
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other])
    try {
      const e = (await sshTransport(location(dir.path), own, { identityFile: other, knownHostsFile: sshd.knownHostsFile }).exec(['true']))._unsafeUnwrapErr()
      expect(e.code).toBe('AUTH_FAILED')
      expect(e.message).toMatch(/^ssh could not log in to root@127\.0\.0\.1:\d+: .*Permission denied \(publickey\)/)
    } finally {
      await own.close()
    }
  })

  it('names an identity file that is not there, and an ssh option ssh does not take, without connecting or retrying', async () => {
    const own = openSshSession()
    try {
      const before = await sshd.logins()
      const missing = join(dir.path, 'no_such_key')
      const noKey = (await sshTransport(location(dir.path), own, { identityFile: missing, knownHostsFile: sshd.knownHostsFile }).exec(['true']))._unsafeUnwrapErr()
      expect(noKey).toMatchObject({ code: 'INVALID_OPTIONS', message: `the ssh identity file ${missing} does not exist` })
      const directory = (await sshTransport(location(dir.path), own, { identityFile: dir.path, knownHostsFile: sshd.knownHostsFile }).exec(['true']))._unsafeUnwrapErr()
      expect(directory).toMatchObject({ code: 'INVALID_OPTIONS', message: `the ssh identity file ${dir.path} cannot be read` })
      // what ssh would only warn about, then fail to log in: a key others can read, the public half
      const open = join(dir.path, 'open_key')
      copyFileSync(sshd.identityFile, open)
      chmodSync(open, 0o644)
      expect((await sshTransport(location(dir.path), own, { identityFile: open, knownHostsFile: sshd.knownHostsFile }).exec(['true']))._unsafeUnwrapErr())
        .toMatchObject({ code: 'INVALID_OPTIONS', message: `the ssh identity file ${open} can be read by others (mode 644): ssh does not use such a key`, hint: `chmod 600 ${open}` })
      const publicHalf = `${sshd.identityFile}.pub`
      expect((await sshTransport(location(dir.path), own, { identityFile: publicHalf, knownHostsFile: sshd.knownHostsFile }).exec(['true']))._unsafeUnwrapErr())
        .toMatchObject({ code: 'INVALID_OPTIONS', message: `the ssh identity file ${publicHalf} is a public key`, hint: `give its private half: ${sshd.identityFile}` })
      const bogus = (await sshTransport(location(dir.path), own, { ...options(), options: ['Bogus=1'] }).exec(['true']))._unsafeUnwrapErr()
      expect(bogus).toMatchObject({ code: 'INVALID_OPTIONS', message: "ssh does not accept the option 'bogus' (given with --ssh-option or ssh_options)" })
      const port = (await sshTransport(location(dir.path), own, { ...options(), options: ['Port=abc'] }).exec(['true']))._unsafeUnwrapErr()
      expect(port).toMatchObject({ code: 'INVALID_OPTIONS', message: "ssh does not accept an option: Bad port 'abc' (given with --ssh-option or ssh_options)" })
      expect(await sshd.logins()).toBe(before)
    } finally {
      await own.close()
    }
  })

  it('the user and port written in the location win over --ssh-option User= and Port=', async () => {
    const own = openSshSession()
    try {
      const r = await sshTransport(location(dir.path), own, { ...options(), options: ['Port=1', 'User=nobody'] }).exec(['id', '-u'])
      expect(r._unsafeUnwrap()).toMatchObject({ exitCode: 0, stdout: '0\n' })
    } finally {
      await own.close()
    }
  })

  it('reports a host that does not answer as a network failure', async () => {
    const own = openSshSession()
    try {
      const closed = parseLocation('ssh://root@127.0.0.1:1/x')._unsafeUnwrap() as SshLocation
      const e = (await sshTransport(closed, own, options()).exec(['true']))._unsafeUnwrapErr()
      expect(e.code).toBe('NETWORK_FAILED')
      expect(e.message).toMatch(/^the connection to root@127\.0\.0\.1:1 failed: .*Connection refused/)
    } finally {
      await own.close()
    }
  })

  // last: it changes the server's key for good
  it('refuses a changed host key, naming the fix (reliability scenario 22)', async () => {
    await sshd.rotateHostKey()
    const own = openSshSession()
    try {
      const e = (await sshTransport(location(dir.path), own, options()).exec(['true']))._unsafeUnwrapErr()
      expect(e.code).toBe('HOSTKEY_CHANGED')
      // the known_hosts file bbackup was given, not ~/.ssh/known_hosts, is the one to fix
      expect(e.hint).toContain(`ssh-keygen -f ${sshd.knownHostsFile} -R '[127.0.0.1]:${sshd.port}' && ssh-keyscan -p ${sshd.port} 127.0.0.1 >> ${sshd.knownHostsFile}`)
    } finally {
      await own.close()
    }
  })
})
