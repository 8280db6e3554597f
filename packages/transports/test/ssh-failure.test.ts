import { describe, expect, it } from 'vitest'
import { parseResolvedHost, sshFailure, type Endpoint } from '../src/ssh/failure.js'

// the lines of `ssh -G nas` that matter, for a ~/.ssh/config with Host nas / HostName 10.0.0.5 / Port 2222
const shown = ['user backup', 'hostname 10.0.0.5', 'port 2222', 'userknownhostsfile /home/op/.ssh/known_hosts /home/op/.ssh/known_hosts2', 'stricthostkeychecking true', ''].join('\n')

const changed = { exitCode: 255, argv: ['ssh'], stderr: 'Host key for [10.0.0.5]:2222 has changed and you have requested strict checking.\nHost key verification failed.\n' }

describe('parseResolvedHost', () => {
  it('reads the real name, port and first known_hosts file', () => {
    expect(parseResolvedHost(shown)).toEqual({ hostname: '10.0.0.5', port: 2222, knownHostsFile: '/home/op/.ssh/known_hosts' })
  })

  it('reads a HostKeyAlias, and takes none for none', () => {
    expect(parseResolvedHost(`${shown}hostkeyalias vault\n`)?.hostKeyAlias).toBe('vault')
    expect(parseResolvedHost(`${shown}hostkeyalias none\n`)).not.toHaveProperty('hostKeyAlias')
    expect(parseResolvedHost(shown.replace(/^userknownhostsfile .*$/m, 'userknownhostsfile none'))).not.toHaveProperty('knownHostsFile')
  })

  it('is undefined without a host name (not ssh -G output)', () => {
    expect(parseResolvedHost('')).toBeUndefined()
    expect(parseResolvedHost('usage: ssh [-46AaCfGgKkMNnqsTtVvXxYy]\n')).toBeUndefined()
  })
})

describe('the host key hints of a host alias', () => {
  const alias: Endpoint = { display: 'nas', host: 'nas' }

  it('without what ssh resolved: the name as written', () => {
    expect(sshFailure(changed, alias)?.hint).toContain("ssh-keygen -R 'nas' && ssh-keyscan nas >> ~/.ssh/known_hosts")
  })

  it('with it: the real name and port, in the known_hosts file ssh reads', () => {
    const resolved = parseResolvedHost(shown)
    expect(sshFailure(changed, { ...alias, ...(resolved === undefined ? {} : { resolved }) })?.hint)
      .toContain("ssh-keygen -f /home/op/.ssh/known_hosts -R '[10.0.0.5]:2222' && ssh-keyscan -p 2222 10.0.0.5 >> /home/op/.ssh/known_hosts")
  })

  it('port 22 is left out, a HostKeyAlias is the name the key is filed under, and a known_hosts file given to bbackup wins', () => {
    const endpoint: Endpoint = { ...alias, knownHostsFile: '/etc/bbackup/known_hosts', resolved: { hostname: 'nas.lan', port: 22, hostKeyAlias: 'vault' } }
    expect(sshFailure(changed, endpoint)?.hint)
      .toContain("ssh-keygen -f /etc/bbackup/known_hosts -R 'vault' && ssh-keyscan nas.lan | sed 's/^[^ ]*/vault/' >> /etc/bbackup/known_hosts")
    const odd: Endpoint = { ...endpoint, resolved: { hostname: 'nas.lan', port: 22, hostKeyAlias: "it's" } }
    expect(sshFailure({ ...changed, stderr: 'Host key verification failed.\n' }, odd)?.hint)
      .toContain("ssh-keyscan nas.lan (each line's first field changed to it's) >> /etc/bbackup/known_hosts")
  })
})
