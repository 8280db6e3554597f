import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { formatLocation, parseLocation, type Location } from '../src/index.js'

describe('locations', () => {
  it.each<[string, Location]>([
    ['/srv/backups', { kind: 'local', path: '/srv/backups' }],
    ['ssh://backup@nas:2222/srv/b', { kind: 'ssh', user: 'backup', host: 'nas', port: 2222, path: '/srv/b', style: 'url' }],
    ['ssh://[fe80::1]/x', { kind: 'ssh', host: 'fe80::1', path: '/x', style: 'url' }],
    ['root@[2001:db8::7]:/srv/b', { kind: 'ssh', user: 'root', host: '2001:db8::7', path: '/srv/b', style: 'scp' }],
    ['[::1]:/srv/b', { kind: 'ssh', host: '::1', path: '/srv/b', style: 'scp' }],
    ['u@[::1]::mod/dir', { kind: 'rsyncd', user: 'u', host: '::1', module: 'mod', path: 'dir', style: 'double-colon' }],
    ['root@host.example:/data', { kind: 'ssh', user: 'root', host: 'host.example', path: '/data', style: 'scp' }],
    ['host:backups', { kind: 'ssh', host: 'host', path: 'backups', style: 'scp' }],
    ['rsync://u@nas:8873/mod/a/b', { kind: 'rsyncd', user: 'u', host: 'nas', port: 8873, module: 'mod', path: 'a/b', style: 'url' }],
    ['nas::mod', { kind: 'rsyncd', host: 'nas', module: 'mod', path: '', style: 'double-colon' }],
    ['u@nas::mod/dir', { kind: 'rsyncd', user: 'u', host: 'nas', module: 'mod', path: 'dir', style: 'double-colon' }],
  ])('parses %s', (input, expected) => {
    expect(parseLocation(input)._unsafeUnwrap()).toEqual(expected)
    expect(formatLocation(expected)).toBe(input)
  })

  it('resolves relative paths against cwd only when one is given', () => {
    expect(parseLocation('data/x', { cwd: '/home/me' })._unsafeUnwrap()).toEqual({ kind: 'local', path: '/home/me/data/x' })
    expect(parseLocation('data/x')._unsafeUnwrapErr().message).toBe('invalid location "data/x": path is relative; give an absolute path')
  })

  it.each([
    ['ssh://nas:99999/x', 'port "99999"'],
    ['ftp://nas/x', 'scheme "ftp"'],
    ['-oProxyCommand=evil:/x', 'host "-oProxyCommand=evil"'],
    ['nas:2222/x', 'starts like a port; for port 2222 write ssh://nas:2222/path, for a relative path write nas:./2222/x'],
    ['rsync://nas', 'path'],
    ['nas::', 'module'],
    ['/a\nb', 'path'],
    ['', 'location'],
  ])('refuses %j naming the offending part', (input, part) => {
    const e = parseLocation(input)._unsafeUnwrapErr()
    expect(e.code).toBe('INVALID_LOCATION')
    expect(e.message).toContain(part)
    expect(e.hint).toMatch(/ssh:\/\//)
  })

  it('refuses a host that would be read as an ssh option', () => {
    expect(parseLocation('-oProxyCommand=x:/p')._unsafeUnwrapErr().code).toBe('INVALID_LOCATION')
    expect(parseLocation('ssh://-oProxyCommand=x/p')._unsafeUnwrapErr().code).toBe('INVALID_LOCATION')
  })

  it('spells each place one way: doubled slashes, `.` parts and a trailing slash go', () => {
    const same: [string, string][] = [
      ['/mnt/backup/', '/mnt/backup'],
      ['/mnt//backup/./home//', '/mnt/backup/home'],
      ['/mnt/backup/.', '/mnt/backup'],
      ['ssh://nas//srv/backups/', 'ssh://nas/srv/backups'],
      ['nas:/srv/backups/', 'nas:/srv/backups'],
      ['nas:backups/', 'nas:backups'],
      ['nas::mod/dir/', 'nas::mod/dir'],
      ['rsync://nas/mod/', 'rsync://nas/mod'],
    ]
    for (const [written, tidy] of same) expect(formatLocation(parseLocation(written)._unsafeUnwrap())).toBe(tidy)
    // what a slash or a dot means stays: the root, a parent (behind a symlink), a relative remote path
    expect(parseLocation('/')._unsafeUnwrap()).toEqual({ kind: 'local', path: '/' })
    expect(parseLocation('//')._unsafeUnwrap()).toEqual({ kind: 'local', path: '/' })
    expect(parseLocation('/mnt/link/../x/')._unsafeUnwrap()).toEqual({ kind: 'local', path: '/mnt/link/../x' })
    expect(parseLocation('nas:./2222/')._unsafeUnwrap()).toMatchObject({ path: './2222' })
    expect(parseLocation('./x/', { cwd: '/home/me/' })._unsafeUnwrap()).toEqual({ kind: 'local', path: '/home/me/x' })
    expect(parseLocation('rsync://nas/mod//x')._unsafeUnwrapErr().message).toContain('doubled slash')
  })

  it('round-trips every location it prints', () => {
    const name = fc.stringMatching(/^[a-z0-9_][a-z0-9._-]{0,12}$/)
    // a host name, or an IPv6 address (written in [brackets] in every form)
    const host = fc.oneof(name, fc.ipV6())
    // as parseLocation gives a path: no `.` parts (it drops them)
    const path = fc.array(fc.stringMatching(/^[^/\0\n\r]{1,8}$/).filter((part) => part !== '.'), { minLength: 1, maxLength: 4 }).map((p) => `/${p.join('/')}`)
    const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined })
    const strip = (o: object): Location => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as unknown as Location
    const location: fc.Arbitrary<Location> = fc.oneof(
      path.map((p): Location => ({ kind: 'local', path: p })),
      fc.record({ user: opt(name), host, port: opt(fc.integer({ min: 1, max: 65535 })), path }).map((r) => strip({ kind: 'ssh', ...r, style: 'url' })),
      fc.record({ user: opt(name), host, path }).map((r) => strip({ kind: 'ssh', ...r, style: 'scp' })),
      fc.record({ user: opt(name), host, port: opt(fc.integer({ min: 1, max: 65535 })), module: name, path: path.map((p) => p.slice(1)) }).map((r) =>
        strip({ kind: 'rsyncd', ...r, style: 'url' })),
      fc.record({ user: opt(name), host, module: name, path: fc.constantFrom('', 'a', 'a/b c') }).map((r) => strip({ kind: 'rsyncd', ...r, style: 'double-colon' })),
    )
    fc.assert(fc.property(location, (l) => {
      expect(parseLocation(formatLocation(l))._unsafeUnwrap()).toEqual(l)
    }), { numRuns: 1000 })
  })
})
