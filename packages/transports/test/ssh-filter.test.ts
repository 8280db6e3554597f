import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decide, isServeRequest, splitCommand, type FilterPolicy, type Role } from '../src/ssh/filter/index.js'
import { parseRsyncServer } from '../src/ssh/filter/rsync-server.js'
import { remoteCommand, serveLine } from '../src/ssh/quote.js'
import { AS_ROOT, FILTERS, PRIVATE_WRITER, SCRIPTS, SERVE, SERVE_V2, SPAWN_WRAPPER } from '../src/ssh/remote-protocol.js'

const hostile = fc.array(fc.constantFrom('$', '`', "'", '"', '\\', ';', '|', '&', '<', '>', '(', ')', '{', '}', '*', '?', '[', '~', '#', '!', '\n', '\t', ' ', '-', '=', '..', '/', 'a', 'é', '$(touch x)'), { maxLength: 12 }).map((parts) => parts.join(''))
const anyText = fc.string({ unit: 'binary', maxLength: 40 }).filter((s) => !/[\uD800-\uDFFF]/u.test(s) && !s.includes('\0'))

/** what sh makes of a command line put after `printf '%s\0'`: the words it would run */
const shWords = (line: string): string[] => execFileSync('sh', ['-c', `printf '%s\\0' ${line}`], { encoding: 'utf8' }).split('\0').slice(0, -1)

const policy = (roles: readonly Role[], extra: Partial<FilterPolicy> = {}): FilterPolicy => ({ roles: new Set(roles), roots: ['/srv/backups'], sudo: false, ...extra })
const script = (name: keyof typeof SCRIPTS, ...args: string[]): string[] => ['sh', '-c', SCRIPTS[name], 'sh', ...args]
const reason = (argv: readonly string[], p: FilterPolicy): string => {
  const d = decide(argv, p)
  return d.allowed ? 'allowed' : d.reason
}

describe('splitting SSH_ORIGINAL_COMMAND without a shell', () => {
  it('gives back exactly the argv that remoteCommand quoted, for any argument', () => {
    fc.assert(fc.property(fc.array(fc.oneof(hostile, anyText), { minLength: 1, maxLength: 5 }), (args) => {
      expect(splitCommand(remoteCommand(['cmd', ...args])._unsafeUnwrap())._unsafeUnwrap()).toEqual(['cmd', ...args])
    }), { numRuns: 500 })
  })

  it('gives back the argv of a command server request line (newlines as "$n"), for any argument; not elsewhere', () => {
    fc.assert(fc.property(fc.array(fc.oneof(hostile, anyText), { minLength: 1, maxLength: 5 }), (args) => {
      expect(splitCommand(serveLine(['cmd', ...args])._unsafeUnwrap(), { serveLine: true })._unsafeUnwrap()).toEqual(['cmd', ...args])
    }), { numRuns: 500 })
    // a "$n" inside quotes is text, and outside a request line it is refused
    expect(splitCommand(remoteCommand(['cmd', '\'"$n"\''])._unsafeUnwrap(), { serveLine: true })._unsafeUnwrap()).toEqual(['cmd', '\'"$n"\''])
    expect(splitCommand(serveLine(['cmd', 'a\nb'])._unsafeUnwrap())._unsafeUnwrapErr()).toBe('the shell character "\\"" outside quotes')
    expect(isServeRequest(remoteCommand(['sh', '-c', SERVE, 'sh'])._unsafeUnwrap())).toBe(true)
    expect(isServeRequest(remoteCommand(['sh', '-c', SERVE, 'sh', 'x'])._unsafeUnwrap())).toBe(false)
    // an older bbackup's server is served as well (by bbackup-remote's own, whose answers both read)
    expect(isServeRequest(remoteCommand(['sh', '-c', SERVE_V2, 'sh'])._unsafeUnwrap())).toBe(true)
    expect(isServeRequest(remoteCommand(['sh', '-c', `${SERVE_V2} `, 'sh'])._unsafeUnwrap())).toBe(false)
  })

  it('reads rsync\'s backslash escaping of remote paths', () => {
    expect(splitCommand('rsync --server -logDtpre.iLsfxCIvu . /srv/backups/x\\ y\\$z\\\'.partial/')._unsafeUnwrap())
      .toEqual(['rsync', '--server', '-logDtpre.iLsfxCIvu', '.', "/srv/backups/x y$z'.partial/"])
  })

  it('never accepts a line that sh would read differently', () => {
    fc.assert(fc.property(fc.array(fc.oneof(hostile, fc.constantFrom("'a b'", '\\ ', '\\$', 'x', ' ')), { minLength: 1, maxLength: 6 }).map((p) => p.join('')), (line) => {
      const split = splitCommand(line)
      if (split.isOk()) expect(shWords(line)).toEqual(split.value)
    }), { numRuns: 400 })
  })

  it.each([
    ['btrfs receive /srv/backups; touch /tmp/pwned', '";"'],
    ['btrfs receive $(touch /tmp/pwned)', '"$"'],
    ['btrfs receive `touch /tmp/pwned`', '"`"'],
    ['btrfs receive /srv | sh', '"|"'],
    ['btrfs receive /srv && sh', '"&"'],
    ['cat > /etc/passwd', '">"'],
    ['btrfs receive "/srv/backups"', '"\\""'],
    ['rm -rf /srv/backups/*', '"*"'],
    ['btrfs receive ~/x', 'starts with ~'],
    ["btrfs receive '/srv/backups", 'unterminated'],
    ['btrfs receive /srv\n touch /tmp/pwned', '"\\n"'],
    ['', 'empty'],
  ])('refuses %j', (line, why) => {
    expect(splitCommand(line)._unsafeUnwrapErr()).toContain(why)
  })
})

describe('what each role may run', () => {
  it('lets a receive key receive, write and look, inside its directory only', () => {
    const p = policy(['receive'])
    expect(decide(['btrfs', 'receive', '/srv/backups/home'], p)).toEqual({ allowed: true, argv: ['btrfs', 'receive', '/srv/backups/home'], role: 'receive', checks: [{ kind: 'inside', path: '/srv/backups/home' }] })
    expect(reason(['sh', '-c', SPAWN_WRAPPER, 'sh', 'btrfs', 'receive', '/srv/backups/home'], p)).toBe('allowed')
    // -e: it ends at the stream's end marker (the driver's receives all have it)
    expect(reason(['sh', '-c', SPAWN_WRAPPER, 'sh', 'btrfs', 'receive', '-e', '/srv/backups/home'], p)).toBe('allowed')
    expect(reason(['btrfs', 'receive', '-e', '/etc'], p)).toContain('outside /srv/backups')
    expect(reason(['btrfs', 'receive', '-e', '-e', '/srv/backups/home'], p)).not.toBe('allowed')
    expect(reason(['btrfs', 'receive', '-f', '/srv/backups/x', '/srv/backups/home'], p)).not.toBe('allowed')
    expect(reason(script('write', '/srv/backups/home/.bbackup/x'), p)).toBe('allowed')
    expect(reason(script('list', '/srv/backups'), p)).toBe('allowed')
    expect(reason(['stat', '-L', '-c', '%F', '--', '/srv/backups/home'], p)).toBe('allowed')
    expect(reason(['stat', '-L', '-c', '%F', '--', '/etc/shadow'], p)).toContain('outside /srv/backups')
    expect(reason(['stat', '-L', '-c', '%n%F', '--', '/srv/backups/home'], p)).toContain('not one that bbackup sends')
    expect(reason(['btrfs', 'receive', '/etc'], p)).toContain('outside /srv/backups')
    expect(reason(['btrfs', 'receive', '/srv/backupsX'], p)).toContain('outside /srv/backups')
    expect(reason(['btrfs', 'receive', '/srv/backups/../../etc'], p)).toContain('.. component')
    expect(reason(['btrfs', 'receive', 'srv/backups'], p)).toContain('relative path')
  })

  it('does not let a receive key delete, send or take snapshots', () => {
    const p = policy(['receive'])
    expect(reason(script('removeTree', '/srv/backups/home'), p)).toContain('needs the delete role')
    expect(reason(['rm', '-rf', '--one-file-system', '--', '/srv/backups/home.1'], p)).toContain('needs the delete role')
    expect(reason(['btrfs', 'send', '-q', '/srv/backups/home.1'], p)).toContain('needs the send role')
    expect(reason(['btrfs', 'subvolume', 'snapshot', '-r', '/srv/backups/a', '/srv/backups/b'], p)).toContain('needs the send role')
    // rsync --delete only inside an unfinished copy
    expect(reason(['rsync', '--server', '-logDtpre.iLsfxCIvu', '--delete', '.', '/srv/backups/home.2026.partial/'], p)).toBe('allowed')
    expect(reason(['rsync', '--server', '-logDtpre.iLsfxCIvu', '--delete', '.', '/srv/backups/home.2026/'], p)).toContain('needs the delete role')
  })

  it('lets a receive key delete a subvolume only after checking that it is an unfinished receive', () => {
    const d = decide(['btrfs', 'subvolume', 'delete', '--commit-after', '/srv/backups/home.1'], policy(['receive']))
    expect(d).toMatchObject({ allowed: true, checks: [{ kind: 'inside', path: '/srv/backups/home.1' }, { kind: 'unfinished-receive', path: '/srv/backups/home.1' }] })
    expect(decide(['btrfs', 'subvolume', 'delete', '--commit-after', '/srv/backups/home.1'], policy(['delete']))).toMatchObject({ allowed: true, checks: [{ kind: 'inside' }] })
    expect(reason(['btrfs', 'subvolume', 'delete', '--commit-after', '/srv/backups/home.1'], policy(['send']))).toContain('needs the delete role')
  })

  it('lets a send key send with parents inside its directories, and a list key only look', () => {
    expect(reason(['btrfs', 'send', '-q', '--proto', '2', '--compressed-data', '-p', '/srv/backups/a', '/srv/backups/b'], policy(['send']))).toBe('allowed')
    expect(reason(['btrfs', 'send', '-q', '--no-data', '-p', '/srv/backups/a', '/srv/backups/b'], policy(['send']))).toBe('allowed')
    expect(reason(['btrfs', 'send', '-q', '--no-data', '-p', '/srv/backups/a', '/srv/backups/b'], policy(['list']))).toContain('needs the send role')
    expect(reason(['btrfs', 'send', '-q', '-p', '/etc/a', '/srv/backups/b'], policy(['send']))).toContain('outside')
    expect(reason(['btrfs', 'send', '-q', '-f', '/srv/backups/out', '/srv/backups/b'], policy(['send']))).toContain('does not allow')
    expect(reason(['rsync', '--server', '--sender', '-logDtpre.iLsfxCIvu', '.', '/srv/backups/home/'], policy(['send']))).toBe('allowed')
    expect(reason(['rsync', '--server', '--sender', '-logDtpre.iLsfxCIvu', '.', '/srv/backups/home/'], policy(['list']))).toContain('needs the send role')
    expect(reason(['btrfs', 'subvolume', 'show', '/srv/backups/a'], policy(['list']))).toBe('allowed')
    // list --sizes, and only over paths inside, with the words bbackup sends
    expect(reason(['du', '-s', '-B1', '--', '/srv/backups/b', '/srv/backups/a'], policy(['list']))).toBe('allowed')
    expect(reason(['btrfs', 'filesystem', 'du', '-s', '--raw', '--', '/srv/backups/a', '/srv/backups/b'], policy(['list']))).toBe('allowed')
    expect(reason(['du', '-s', '-B1', '--', '/srv/backups/a', '/etc'], policy(['list']))).toContain('outside')
    expect(reason(['btrfs', 'filesystem', 'du', '-s', '--raw', '--', '/etc'], policy(['list']))).toContain('outside')
    expect(reason(['du', '-s', '-B1', '--files0-from=/etc/shadow', '/srv/backups/a'], policy(['list']))).toContain('not one that bbackup sends')
    expect(reason(['du', '-s', '-B1', '--'], policy(['list']))).toContain('not one that bbackup sends')
    expect(reason(script('mkdirp', '/srv/backups/.snapshots'), policy(['send']))).toBe('allowed')
    expect(reason(script('mkdirp', '/srv/backups/.snapshots'), policy(['list']))).toContain('needs the receive role')
    expect(reason(script('write', '/srv/backups/x'), policy(['list']))).toContain('needs the receive role')
  })

  it('refuses what bbackup never sends, and sudo unless the key allows it', () => {
    const p = policy(['send', 'receive', 'delete'])
    expect(reason(['sh', '-c', 'touch /tmp/pwned'], p)).toContain('not one that bbackup sends')
    expect(reason(['sh', '-c', SPAWN_WRAPPER, 'sh', 'sh', '-c', 'touch /tmp/pwned'], p)).toContain('not one that bbackup sends')
    expect(reason(['bash', '-i'], p)).toContain('not one that bbackup sends')
    expect(reason(['btrfs', 'property', 'set', '/srv/backups/a', 'ro', 'false'], p)).toContain('not one that bbackup sends')
    expect(reason(['kill', '-s', 'KILL', '--', '-1'], p)).toContain('not one that bbackup sends')
    expect(reason(['kill', '-s', 'HUP', '--', '123'], p)).toContain('not one that bbackup sends')
    // the signals bbackup sends a command it started (PIPE: to a sender whose reader went away), each checked against the pid
    for (const signal of ['TERM', 'INT', 'PIPE', 'KILL']) expect(decide(['kill', '-s', signal, '--', '123'], p)).toMatchObject({ allowed: true, checks: [{ kind: 'started-here', pid: 123 }] })
    expect(reason(script('read', '/srv/backups/a', '/etc/shadow'), p)).toContain('2 arguments')
    expect(reason(['sudo', '-n', '--', 'btrfs', 'receive', '/srv/backups/a'], p)).toContain('--sudo')
    expect(reason(['sudo', '-n', '--', 'btrfs', 'receive', '/srv/backups/a'], { ...p, sudo: true })).toBe('allowed')
    expect(reason(['sudo', '-n', 'rsync', '--server', '-logDtpre.iLsfxCIvu', '.', '/srv/backups/a.partial/'], { ...p, sudo: true })).toBe('allowed')
  })

  it('takes a program that the sudoers rule does not name, sent through its sh (AS_ROOT), as that program alone: same role, same paths', () => {
    const asRoot = (...argv: string[]): string[] => ['sudo', '-n', '--', 'sh', '-c', AS_ROOT, 'sh', ...argv]
    const p = policy(['receive'], { sudo: true })
    expect(decide(asRoot('stat', '-f', '-c', '%T', '/srv/backups/a'), p)).toMatchObject({ allowed: true, role: 'list', checks: [{ kind: 'inside', path: '/srv/backups/a' }] })
    expect(reason(asRoot('stat', '-f', '-c', '%T', '/etc'), p)).toContain('outside /srv/backups')
    expect(reason(asRoot('rm', '-rf', '--one-file-system', '--', '/srv/backups/a'), p)).toContain('"rm -rf --one-file-system", which needs the delete role')
    expect(decide(asRoot('df', '-Pk', '--', '/srv/backups/a'), p)).toMatchObject({ allowed: true, role: 'list', checks: [{ kind: 'inside', path: '/srv/backups/a' }] })
    expect(reason(['df', '-Pk', '--', '/'], p)).toContain('outside /srv/backups')
    expect(reason(['df', '-h', '/srv/backups'], p)).toContain('not one that bbackup sends')
    expect(reason(asRoot('touch', '/srv/backups/x'), p)).toContain('the command "touch /srv/backups/x", which is not one')
    // no shell string through it: not sh again, nor a script
    expect(reason(asRoot('sh', '-c', 'touch /tmp/pwned'), p)).toContain('not one that bbackup sends')
    expect(reason(asRoot(...script('remove', '/srv/backups/a')), p)).toContain('not one that bbackup sends')
    expect(reason(['sh', '-c', `${AS_ROOT}; touch /tmp/pwned`, 'sh', 'true'], p)).toContain('not one that bbackup sends')
  })

  it('lets the zstd stream filters run around a transfer the key may start, and around nothing else', () => {
    const spawned = (...argv: string[]): string[] => ['sh', '-c', SPAWN_WRAPPER, 'sh', ...argv]
    const unzstd = ['sh', '-c', FILTERS.decompressStdin, 'sh']
    const zstd = ['sh', '-c', FILTERS.compressStdout, 'sh']
    expect(reason(spawned(...unzstd, 'btrfs', 'receive', '/srv/backups/home'), policy(['receive']))).toBe('allowed')
    expect(reason(spawned(...zstd, 'btrfs', 'send', '-q', '-p', '/srv/backups/a', '/srv/backups/b'), policy(['send']))).toBe('allowed')
    expect(reason(spawned(...unzstd, 'btrfs', 'receive', '/etc'), policy(['receive']))).toContain('outside /srv/backups')
    expect(reason(spawned(...zstd, 'btrfs', 'send', '-q', '/srv/backups/b'), policy(['receive']))).toContain('needs the send role')
    expect(reason(spawned(...unzstd, 'sh', '-c', 'touch /tmp/pwned'), policy(['receive', 'send', 'delete']))).toContain('not one that bbackup sends')
    expect(reason(spawned(...unzstd, 'rm', '-rf', '--one-file-system', '--', '/srv/backups/a'), policy(['receive', 'send', 'delete']))).toContain('not one that bbackup sends')
    // only through the pid wrapper, and only the texts bbackup sends
    expect(reason([...unzstd, 'btrfs', 'receive', '/srv/backups/home'], policy(['receive']))).toContain('not one that bbackup sends')
    expect(reason(spawned('sh', '-c', `${FILTERS.decompressStdin} `, 'sh', 'btrfs', 'receive', '/srv/backups/home'), policy(['receive']))).toContain('not one that bbackup sends')
    expect(reason(['zstd', '--version'], policy(['list']))).toBe('allowed')
    expect(reason(['zstd', '-d', '-o', '/srv/backups/x'], policy(['receive']))).toContain('not one that bbackup sends')
  })

  it('lets a receive key write a raw target\'s streams into new .part files (mode 0600), a delete key prune them, a send key read them', () => {
    const spawned = (...argv: string[]): string[] => ['sh', '-c', SPAWN_WRAPPER, 'sh', ...argv]
    const privately = (...argv: string[]): string[] => spawned('sh', '-c', PRIVATE_WRITER, 'sh', ...argv)
    const receive = policy(['receive'])
    expect(reason(privately('zstd', '-q', '-T0', '-o', '/srv/backups/s/home.1.btrfs.zst.part'), receive)).toBe('allowed')
    expect(reason(privately('dd', 'of=/srv/backups/s/home.1.btrfs.part', 'bs=1M', 'status=none'), receive)).toBe('allowed')
    expect(reason(privately('dd', 'of=/srv/backups/s/home.1.btrfs', 'bs=1M', 'status=none'), receive)).toContain('new .part file')
    expect(reason(privately('dd', 'of=/etc/x.btrfs.part', 'bs=1M', 'status=none'), receive)).toContain('outside /srv/backups')
    expect(reason(privately('dd', 'of=/srv/backups/x.btrfs.part', 'bs=1M', 'status=none', 'if=/etc/shadow'), receive)).toContain('not one that bbackup sends')
    expect(reason(privately('sh', '-c', 'id'), receive)).toContain('not one that bbackup sends')
    for (const argv of [['sync', '--', '/srv/backups/s/a.btrfs.part'], ['sha256sum', '--', '/srv/backups/s/a.btrfs.part'], ['chmod', '700', '/srv/backups/s'], script('remove', '/srv/backups/s/a.btrfs.zst.part')]) {
      expect(reason(argv, receive)).toBe('allowed')
    }
    expect(reason(['chmod', '777', '/srv/backups/s'], receive)).toContain('not one that bbackup sends')
    expect(reason(script('remove', '/srv/backups/s/a.btrfs.zst'), receive)).toContain('needs the delete role')
    const prune = ['rm', '-f', '--', '/srv/backups/s/a.btrfs.zst', '/srv/backups/s/a.btrfs.zst.info']
    expect(reason(prune, receive)).toContain('needs the delete role')
    expect(reason(prune, policy(['delete']))).toBe('allowed')
    expect(reason(['rm', '-f', '--', '/srv/backups/s/a.btrfs.zst', '/srv/backups/s/other'], policy(['delete']))).toContain('not one that bbackup sends')
    expect(reason(spawned('zstd', '-dcq', '--', '/srv/backups/s/a.btrfs.zst'), policy(['send']))).toBe('allowed')
    expect(reason(spawned('cat', '--', '/srv/backups/s/a.btrfs'), receive)).toContain('needs the send role')
    expect(reason(spawned('cat', '--', '/etc/shadow'), policy(['send']))).toContain('outside /srv/backups')
  })

  it('lets a send key read a block source: freeze it by a reflink copy beside it, stream or scan it, remove the copy; the scan runs as bbackup-remote itself', () => {
    const spawned = (...argv: string[]): string[] => ['sh', '-c', SPAWN_WRAPPER, 'sh', ...argv]
    const send = policy(['send'])
    const image = '/srv/backups/vm.img'
    const copy = '/srv/backups/.vm.img.bbackup-0a1b2c3d-9b2e7c1a-1234-4def-8abc-0123456789ab'
    for (const argv of [['stat', '-L', '-c', '%F:%s', '--', image], ['blockdev', '--getsize64', image]]) expect(decide(argv, policy(['list']))).toMatchObject({ allowed: true, role: 'list' })
    expect(decide(['cp', '--reflink=always', '--', image, copy], send)).toMatchObject({ allowed: true, role: 'send', checks: [{ kind: 'inside', path: image }, { kind: 'inside', path: copy }] })
    expect(reason(['cp', '--reflink=always', '--', image, copy], policy(['receive']))).toContain('needs the send role')
    // only the freeze copy of that image, beside it: no other name, no other place, no other image's name
    expect(reason(['cp', '--reflink=always', '--', image, '/srv/backups/vm.img.bak'], send)).toContain('not the block driver\'s freeze copy')
    expect(reason(['cp', '--reflink=always', '--', image, `/srv/backups/sub/${copy.split('/').pop() ?? ''}`], send)).toContain('not the block driver\'s freeze copy')
    expect(reason(['cp', '--reflink=always', '--', '/srv/backups/other.img', copy], send)).toContain('not the block driver\'s freeze copy')
    expect(reason(['cp', '--reflink=always', '--', '/etc/shadow', '/etc/.shadow.bbackup-0a1b2c3d-9b2e7c1a-1234-4def-8abc-0123456789ab'], send)).toContain('outside /srv/backups')
    expect(reason(script('remove', copy), send)).toBe('allowed')
    expect(reason(script('remove', image), send)).toContain('needs the delete role')
    expect(decide(spawned('head', '-c', '33554432', '--', image), send)).toMatchObject({ allowed: true, role: 'send' })
    expect(reason(spawned('head', '-c', '-5', '--', image), send)).toContain('not one that bbackup sends')
    expect(reason(spawned('head', '-c', '10', '--', '/etc/shadow'), send)).toContain('outside /srv/backups')
    // the helper's word is never run: the filter runs itself there (selfAt), whatever the client named
    expect(decide(['bbackup-remote', 'block-scan', '--protocol'], policy(['list']))).toMatchObject({ allowed: true, role: 'list', selfAt: 0 })
    const scan = spawned('/tmp/anything', 'block-scan', '--chunk-size', '4194304', '--size', '33554432', '--', image)
    expect(decide(scan, send)).toMatchObject({ allowed: true, role: 'send', selfAt: 4, checks: [{ kind: 'inside', path: image }] })
    expect(reason(scan, policy(['receive']))).toContain('needs the send role')
    // compressed there (--stream-compress zstd): the helper's word is four words further on, behind the filter that keeps the scan's stdin
    const compressed = spawned('sh', '-c', FILTERS.compressReaderStdout, 'sh', '/tmp/anything', 'block-scan', '--chunk-size', '4194304', '--size', '33554432', '--', image)
    expect(decide(compressed, send)).toMatchObject({ allowed: true, role: 'send', selfAt: 8 })
    expect(compressed[8]).toBe('/tmp/anything')
    expect(reason(spawned('bbackup-remote', 'block-scan', '--chunk-size', '4M', '--size', '1', '--', image), send)).toContain('not one that bbackup sends')
    expect(reason(spawned('bbackup-remote', 'block-scan', '--chunk-size', '1', '--size', '1', '--', '/etc/shadow'), send)).toContain('outside /srv/backups')
    expect(reason(['sudo', '-n', '--', 'bbackup-remote', 'block-scan', '--protocol'], policy(['send'], { sudo: true }))).toContain('block scan through sudo')
  })

  it('runs an each script of commands that only look (and a commit), every path inside, and nothing else in one', () => {
    const show = (path: string): string[] => ['4', 'btrfs', 'subvolume', 'show', path]
    const p = policy(['receive'])
    const d = decide(script('each', ...show('/srv/backups/a'), ...show('/srv/backups/b c'), '2', 'btrfs', '--version'), p)
    expect(d).toMatchObject({ allowed: true, role: 'list', checks: [{ kind: 'inside', path: '/srv/backups/a' }, { kind: 'inside', path: '/srv/backups/b c' }] })
    expect(reason(script('each', ...show('/srv/backups/a'), ...show('/etc')), p)).toContain('outside /srv/backups')
    // a command that changes something is not run inside it, whatever the key's roles
    expect(reason(script('each', ...show('/srv/backups/a'), '2', 'btrfs', 'receive', '/srv/backups/x'), policy(['receive', 'send', 'delete']))).toContain('inside an each script, which runs only commands that look, and a commit')
    expect(reason(script('each', '4', 'btrfs', 'subvolume', 'delete', '--commit-after', '/srv/backups/x'), policy(['receive', 'send', 'delete']))).toContain('inside an each script')
    // a receive's check and commit in one trip: the script needs what the commit needs
    const commit = script('each', ...show('/srv/backups/a'), '4', 'btrfs', 'filesystem', 'sync', '/srv/backups')
    expect(decide(commit, p)).toMatchObject({ allowed: true, role: 'receive' })
    expect(reason(commit, policy(['list']))).toContain('needs the receive role')
    expect(reason(script('each', '4', 'btrfs', 'filesystem', 'sync', '/etc'), p)).toContain('outside /srv/backups')
    expect(reason(script('each', '5', ...script('read', '/srv/backups/a')), p)).toContain('inside an each script')
    expect(reason(script('each', '3', 'touch', '/tmp/pwned', 'x'), p)).toContain('inside an each script')
    // counts that do not match the words, or none at all
    expect(reason(script('each', '5', 'btrfs', 'subvolume', 'show', '/srv/backups/a'), p)).toContain('counts do not match')
    expect(reason(script('each', '0'), p)).toContain('counts do not match')
    expect(reason(script('each', 'x', 'true'), p)).toContain('counts do not match')
    expect(reason(script('each'), p)).toContain('empty each script')
  })

  it('never lets a generated request out of the directory or past the table', () => {
    const p = policy(['receive', 'send', 'delete'])
    fc.assert(fc.property(fc.constantFrom('btrfs receive', 'btrfs send -q', 'rsync --server .', 'stat -f -c %T', 'stat -L -c %F --', 'sync -f'), fc.array(fc.oneof(hostile, fc.constantFrom('/srv/backups/', '/srv/backups/a', '/etc', '--log-file=/tmp/x', '-L')), { minLength: 1, maxLength: 3 }), (prefix, args) => {
      const d = decide([...prefix.split(' '), ...args], p)
      if (!d.allowed) return
      for (const c of d.checks) if (c.kind === 'inside') expect(c.path === '/srv/backups' || c.path.startsWith('/srv/backups/')).toBe(true)
      expect(args.every((a) => !a.includes('..'))).toBe(true)
    }), { numRuns: 500 })
  })
})

describe('rsync --server requests', () => {
  it('reads what an rsync client sends, with the link-dest resolved against the destination', () => {
    expect(parseRsyncServer(['--server', '-lHogDtpAXre.iLsfxCIvu', '--delete', '--stats', '--numeric-ids', '--fsync', '--link-dest', '../home.1', '.', '/srv/backups/home.2.partial/']))
      .toEqual({ sender: false, paths: ['/srv/backups/home.2.partial/'], optionPaths: ['/srv/backups/home.1'], deletes: true })
  })

  it.each([
    [['--server', '-s', '.', '/srv/backups/a'], '"-s"'],
    [['--server', '-logDtprLe.iLsfxCIvu', '.', '/srv/backups/a'], 'does not allow'],
    [['--server', '--log-file=/tmp/x', '.', '/srv/backups/a'], '--log-file'],
    [['--server', '--files-from', '/etc/shadow', '.', '/srv/backups/a'], '--files-from'],
    [['--server', '--daemon', '.', '/srv/backups/a'], '--daemon'],
    [['--server', '-logDtpre.iLsfxCIvu', '--sender', '.', '/srv/backups/a'], '--sender anywhere'],
    [['--server', '-logDtpre.iLsfxCIvu', '/srv/backups/a'], '"/srv/backups/a", which bbackup-remote does not allow'],
    [['--server', '-logDtpre.iLsfxCIvu', '--numeric-ids'], '"." argument'],
    [['--server', '-logDtpre.iLsfxCIvu', '.'], 'without a path'],
    [['-logDtpre.iLsfxCIvu', '.', '/srv/backups/a'], 'without --server'],
  ])('refuses %j', (args, why) => {
    expect(parseRsyncServer(args)).toEqual(expect.stringContaining(why))
  })
})
