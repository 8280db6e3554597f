import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadConfig, selectJobs } from '../src/config.js'

describe('loadConfig', () => {
  let dir: string
  beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'bbackup-config-')) })
  afterEach(() => rmSync(dir, { recursive: true, force: true }))

  it("reads relative paths from the config's directory, whatever the working directory; remote places, ~/ and the snapshot folder stay as written", () => {
    const path = join(dir, 'config.toml')
    writeFileSync(path, [
      'state_dir = "state"', 'metrics_file = "/var/lib/m.prom"', 'transaction_log = "/var/log/bbackup.log"',
      '[jobs.home]', 'source = "home"', 'targets = ["backup/home", "/mnt/usb/home", "nas:/srv/home", "rsync://nas/mod/home"]',
      'raw_targets = ["streams"]', 'exclude_from = ["excludes.txt"]', 'state_dir = "./jobstate"', 'snapshot_folder = ".snapshots"',
      'ssh_identity = "keys/id_ed25519"', 'ssh_known_hosts = "~/.ssh/known_hosts"', 'password_file = "rsyncd.secret"', 'mount = "disk"', 'raw_gpg_keyring = "keys.kbx"',
      '[jobs.vm]', 'driver = "block"', 'backup_dir = "backy/vm"', '',
    ].join('\n'))
    const loaded = loadConfig(path)
    if (loaded.isErr()) throw new Error(loaded.error.message)
    const config = loaded.value
    expect(config).toMatchObject({ stateDir: join(dir, 'state'), metricsFile: '/var/lib/m.prom', transactionLog: '/var/log/bbackup.log' })
    expect(config.jobs[0]).toMatchObject({
      source: join(dir, 'home'), targets: [join(dir, 'backup/home'), '/mnt/usb/home', 'nas:/srv/home', 'rsync://nas/mod/home'],
      rawTargets: [join(dir, 'streams')], excludeFrom: [join(dir, 'excludes.txt')], stateDir: join(dir, 'jobstate'), snapshotFolder: '.snapshots',
      ssh: { identityFile: join(dir, 'keys/id_ed25519'), knownHostsFile: '~/.ssh/known_hosts' }, rsyncd: { passwordFile: join(dir, 'rsyncd.secret') },
      mount: join(dir, 'disk'), rawGpgKeyring: join(dir, 'keys.kbx'),
    })
    expect(config.blockJobs).toEqual([{ name: 'vm', backupDir: join(dir, 'backy/vm') }])
  })

  it('maps every key of a retention table to the SDK policy, quarterly among them', () => {
    const path = join(dir, 'config.toml')
    writeFileSync(path, ['[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b"]', 'keep_backups = { daily = 7, monthly = 12, quarterly = 8, yearly = "always", prefer = "newest" }', 'keep_snapshots = { preserve_min = "1q", preserve = "12m 4q" }', ''].join('\n'))
    const loaded = loadConfig(path)
    if (loaded.isErr()) throw new Error(loaded.error.message)
    expect(loaded.value.jobs[0]).toMatchObject({ keepBackups: { daily: 7, monthly: 12, quarterly: 8, yearly: 'always', prefer: 'newest' }, keepSnapshots: { preserveMin: '1q', preserve: '12m 4q' } })
  })

  it('refuses an unknown key, naming the key it is a typo of, or what another tool\'s key is written as here', () => {
    const path = join(dir, 'config.toml')
    const refused = (lines: readonly string[]): string => {
      writeFileSync(path, [...lines, ''].join('\n'))
      const loaded = loadConfig(path)
      return loaded.isErr() ? `${loaded.error.code} ${loaded.error.message}` : 'loaded'
    }
    const job = ['[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b"]']
    expect(refused([...job, 'snapshot_foldr = ".snapshots"'])).toBe(`INVALID_OPTIONS ${path}:4: [jobs.home] snapshot_foldr: unknown key (did you mean snapshot_folder?)`)
    // two letters swapped, a dash for an underscore, a short key one letter off
    expect(refused([...job, 'keep_bakcups = "7d"'])).toContain('keep_bakcups: unknown key (did you mean keep_backups?)')
    expect(refused([...job, 'one-file-system = false'])).toContain('one-file-system: unknown key (did you mean one_file_system?)')
    expect(refused([...job, 'sudp = true'])).toContain('sudp: unknown key (did you mean sudo?)')
    expect(refused([...job, 'sduo = true'])).toContain('sduo: unknown key (did you mean sudo?)')
    // nothing near: no guess
    expect(refused([...job, 'frobnicate = 1'])).toMatch(/frobnicate: unknown key$/)
    expect(refused([...job, 'snapshot_dir = "snaps"'])).toContain("snapshot_dir: unknown key (btrbk's key; here: snapshot_folder, an absolute path or one inside the source)")
    expect(refused([...job, 'retain = 6'])).toContain("retain: unknown key (rsnapshot's key; here: keep_backups = { hourly = 6, daily = 7, weekly = 4 })")
    expect(refused(['target_preserve = "7d"', ...job])).toContain(`${path}:1: target_preserve: unknown key (btrbk's key; here: keep_backups = { preserve_min = "…", preserve = "…" })`)
    expect(refused([...job, 'keep_backups = { keep-last = 3 }'])).toContain('keep_backups: unknown retention key keep-last (did you mean keep_last?)')
  })

  it('refuses a job name that is not one path component and a unit name: it would put its lock and journal elsewhere, or share them', () => {
    for (const name of ['"a/../x"', '"../../etc"', '".."', '"my job"', '"a$b"']) {
      const path = join(dir, 'config.toml')
      writeFileSync(path, ['state_dir = "state"', `[jobs.${name}]`, 'source = "home"', 'targets = ["backup"]', ''].join('\n'))
      const loaded = loadConfig(path)
      expect(loaded.isErr() && loaded.error).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining(`[jobs] ${JSON.parse(name) as string}: is not a job name`), hint: expect.stringContaining('letters, digits') })
    }
    writeFileSync(join(dir, 'config.toml'), ['[jobs."home-2.daily_x"]', 'source = "home"', 'targets = ["backup"]', ''].join('\n'))
    expect(loadConfig(join(dir, 'config.toml')).isOk()).toBe(true)
  })

  it("gives a block job the stream_compress and rate_limit of its own table or of the top level, and refuses a bad one there too", () => {
    const path = join(dir, 'config.toml')
    writeFileSync(path, ['rate_limit = "20m"', '[jobs.vm1]', 'driver = "block"', 'backup_dir = "/srv/backy/vm1"', 'stream_compress = "zstd"', '[jobs.vm2]', 'driver = "block"', 'backup_dir = "/srv/backy/vm2"', 'rate_limit = "512k"', ''].join('\n'))
    expect(loadConfig(path)._unsafeUnwrap().blockJobs).toEqual([
      { name: 'vm1', backupDir: '/srv/backy/vm1', way: { streamCompress: 'zstd', rateLimit: 20 * 1024 * 1024 } },
      { name: 'vm2', backupDir: '/srv/backy/vm2', way: { rateLimit: 512 * 1024 } },
    ])
    writeFileSync(path, ['[jobs.vm]', 'driver = "block"', 'backup_dir = "/srv/backy/vm"', 'rate_limit = "fast"', ''].join('\n'))
    expect(loadConfig(path)._unsafeUnwrapErr().message).toBe(`${path}:4: [jobs.vm] rate_limit: "fast" is not a rate`)
  })

  it('takes an /etc/crypttab name as crypto, and refuses one that is not (the file, line and key named)', () => {
    const path = join(dir, 'config.toml')
    writeFileSync(path, ['[jobs.usb]', 'source = "/"', 'targets = ["/mnt/usb/b"]', 'crypto = "usb-backup_1"', ''].join('\n'))
    expect(loadConfig(path).map((c) => c.jobs[0]?.crypto)._unsafeUnwrap()).toBe('usb-backup_1')
    for (const name of ['-x', 'a b', 'a/b', '']) {
      writeFileSync(path, ['[jobs.usb]', 'source = "/"', 'targets = ["/mnt/usb/b"]', `crypto = ${JSON.stringify(name)}`, ''].join('\n'))
      const loaded = loadConfig(path)
      expect(loaded.isErr() && loaded.error.message).toBe(`${path}:4: [jobs.usb] crypto: ${JSON.stringify(name)} is not the name of an /etc/crypttab mapping`)
    }
  })
})

describe('selectJobs (btrbk\'s filter, group and noauto)', () => {
  let dir: string
  beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'bbackup-config-')) })
  afterEach(() => rmSync(dir, { recursive: true, force: true }))

  const config = (...lines: string[]) => {
    const path = join(dir, 'config.toml')
    writeFileSync(path, [...lines, ''].join('\n'))
    return { path, loaded: loadConfig(path) }
  }
  const names = (jobs: readonly { readonly name?: string }[]) => jobs.map((j) => j.name)

  it('picks every job but auto = false ones without a word; a job or group name picks those, auto = false ones too', () => {
    const { loaded } = config(
      '[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b/home"]', 'groups = ["nightly"]',
      '[jobs.root]', 'source = "/"', 'targets = ["/mnt/b/root"]', 'groups = ["nightly", "system"]',
      '[jobs.usb]', 'source = "/home"', 'targets = ["/mnt/usb/home"]', 'groups = "offsite"', 'auto = false',
      '[jobs.vm]', 'driver = "block"', 'backup_dir = "/srv/backy/vm"', 'groups = ["offsite"]', 'auto = false',
    )
    const c = loaded._unsafeUnwrap()
    expect(c.jobs.find((j) => j.name === 'usb')).toMatchObject({ groups: ['offsite'], auto: false })
    expect(c.jobs.find((j) => j.name === 'home')?.auto).toBeUndefined()
    const all = selectJobs(c, [])._unsafeUnwrap()
    expect([names(all.jobs), names(all.blockJobs), names(all.others)]).toEqual([['home', 'root'], [], ['usb']])
    const offsite = selectJobs(c, ['offsite'])._unsafeUnwrap()
    expect([names(offsite.jobs), names(offsite.blockJobs), names(offsite.namedBlockJobs)]).toEqual([['usb'], ['vm'], []])
    expect(names(selectJobs(c, ['nightly'])._unsafeUnwrap().jobs)).toEqual(['home', 'root'])
    expect(names(selectJobs(c, ['system', 'usb'])._unsafeUnwrap().jobs)).toEqual(['root', 'usb'])
    expect(names(selectJobs(c, ['vm'])._unsafeUnwrap().namedBlockJobs)).toEqual(['vm'])
    const unknown = selectJobs(c, ['nightly', 'weekly'])._unsafeUnwrapErr()
    expect(unknown).toMatchObject({ code: 'JOB_NOT_FOUND', message: expect.stringContaining('no job or group named weekly'), hint: 'its jobs are: home, root, usb, vm; its groups: nightly, system, offsite' })
  })

  it('says so when every job has auto = false and none is named', () => {
    const { loaded } = config('[jobs.usb]', 'source = "/home"', 'targets = ["/mnt/usb/home"]', 'auto = false')
    const error = selectJobs(loaded._unsafeUnwrap(), [])._unsafeUnwrapErr()
    expect(error).toMatchObject({ code: 'INVALID_OPTIONS', message: expect.stringContaining('has auto = false'), hint: expect.stringContaining('bbackup run usb') })
  })

  it('refuses a group named as a job, a bad group name, a non-boolean auto, and either at the top level (the file, line and key named)', () => {
    const both = config('[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b"]', 'groups = ["root"]', '[jobs.root]', 'source = "/"', 'targets = ["/mnt/r"]')
    expect(both.loaded._unsafeUnwrapErr().message).toBe(`${both.path}:4: [jobs.home] groups: root is the name of a job as well`)
    const bad = config('[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b"]', 'groups = ["my group"]')
    expect(bad.loaded._unsafeUnwrapErr().message).toBe(`${bad.path}:4: [jobs.home] groups: "my group" is not a group name`)
    const auto = config('[jobs.vm]', 'driver = "block"', 'backup_dir = "/srv/vm"', 'auto = "no"')
    expect(auto.loaded._unsafeUnwrapErr().message).toBe(`${auto.path}:4: [jobs.vm] auto: must be true or false`)
    const top = config('auto = false', '[jobs.home]', 'source = "/home"', 'targets = ["/mnt/b"]')
    expect(top.loaded._unsafeUnwrapErr().message).toBe(`${top.path}:1: auto: says which commands take one job, not a default for every job`)
  })
})
