import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { freePort, serverProcess } from './processes.js'
import { makeTempDir } from './temp-dir.js'

const run = promisify(execFile)

/**
 * A real one-node Ceph cluster on 127.0.0.1: one monitor and one OSD whose object store is in
 * memory (memstore, at most 1 GiB), no cephx, and a pool `rbd` of one replica initialised for
 * RBD. The `rbd` and `ceph` commands reach it with `--conf` {@link Ceph.conf}.
 */
export interface Ceph {
  /** the cluster's ceph.conf */
  readonly conf: string
  readonly pool: 'rbd'
  /** runs `rbd ARGS --conf CONF` and returns its stdout */
  rbd(args: readonly string[]): Promise<string>
  /** the end of the monitor's and the OSD's logs, for a failing test's message */
  logs(): Promise<string>
  /** stops the OSD and the monitor (by pid), removes their files; safe to call twice */
  stop(): Promise<void>
}

/**
 * Starts the cluster (a few seconds) in a temp directory: `ceph-mon` and `ceph-osd` in the
 * foreground as children of this process, stopped by `stop`.
 * @example
 * const ceph = await startCeph()
 * try { await ceph.rbd(['create', '--size', '64M', 'rbd/vm1']) } finally { await ceph.stop() }
 */
export const startCeph = async (): Promise<Ceph> => {
  const dir = await makeTempDir('ceph')
  const conf = join(dir.path, 'ceph.conf')
  const port = await freePort()
  const fsid = randomUUID()
  const mon = serverProcess(['ceph-mon', '-f', '-c', conf, '-i', 'a'], port, join(dir.path, 'log', 'mon.a.log'), 'SIGTERM')
  let osd: ChildProcess | undefined
  const ceph = (args: readonly string[]): Promise<{ stdout: string }> => run('ceph', [...args, '--conf', conf, '--connect-timeout', '20'], { timeout: 60_000 })
  const logs = async (): Promise<string> =>
    (await Promise.all(['mon.a', 'osd.0'].map(async (n) => `--- ${n}\n${(await readFile(join(dir.path, 'log', `${n}.log`), 'utf8').catch(() => '')).slice(-3000)}`))).join('\n')
  const stop = async (): Promise<void> => {
    const daemon = osd
    osd = undefined
    if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) {
      const gone = new Promise<void>((resolve) => daemon.once('exit', () => resolve()))
      daemon.kill('SIGKILL')
      await gone
    }
    await mon.stop()
    await dir.cleanup()
  }
  try {
    await Promise.all(['run', 'log', 'mon.a', 'osd.0'].map((d) => mkdir(join(dir.path, d))))
    await writeFile(conf, [
      '[global]',
      `fsid = ${fsid}`,
      `mon_host = v2:127.0.0.1:${port}`,
      'auth_cluster_required = none',
      'auth_service_required = none',
      'auth_client_required = none',
      'osd_pool_default_size = 1',
      'osd_pool_default_min_size = 1',
      'mon_allow_pool_size_one = true',
      'mon_warn_on_pool_no_redundancy = false',
      'osd_crush_chooseleaf_type = 0',
      'ms_bind_ipv6 = false',
      `run_dir = ${dir.path}/run`,
      `admin_socket = ${dir.path}/run/$name.asok`,
      `log_file = ${dir.path}/log/$name.log`,
      `mon_data = ${dir.path}/mon.$id`,
      `osd_data = ${dir.path}/osd.$id`,
      'osd_objectstore = memstore',
      `memstore_device_bytes = ${1024 ** 3}`,
      'keyring = /dev/null',
      '',
    ].join('\n'))
    const monmap = join(dir.path, 'monmap')
    await run('monmaptool', ['--create', '--add', 'a', `v2:127.0.0.1:${port}`, '--fsid', fsid, monmap])
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', monmap])
    await mon.start()
    const osdUuid = randomUUID()
    const id = (await ceph(['osd', 'new', osdUuid])).stdout.trim()
    if (id !== '0') throw new Error(`ceph osd new gave the id ${id}, not 0`)
    await run('ceph-osd', ['-c', conf, '-i', id, '--mkfs', '--osd-uuid', osdUuid])
    osd = spawn('ceph-osd', ['-f', '-c', conf, '-i', id], { stdio: 'ignore' })
    const deadline = Date.now() + 30_000
    for (;;) {
      const stat = JSON.parse((await ceph(['osd', 'stat', '--format', 'json'])).stdout) as { num_up_osds?: number }
      if (stat.num_up_osds === 1) break
      if (osd.exitCode !== null || Date.now() > deadline) throw new Error(`ceph-osd did not come up: ${await logs()}`)
      await new Promise((r) => setTimeout(r, 200))
    }
    await ceph(['osd', 'pool', 'create', 'rbd', '8'])
    await ceph(['osd', 'pool', 'set', 'rbd', 'size', '1', '--yes-i-really-mean-it'])
    await run('rbd', ['pool', 'init', 'rbd', '--conf', conf], { timeout: 60_000 })
  } catch (e) {
    const said = await logs()
    await stop()
    throw new Error(`the test Ceph cluster did not start: ${e instanceof Error ? e.message : String(e)}\n${said}`)
  }
  return {
    conf,
    pool: 'rbd',
    rbd: async (args) => (await run('rbd', [...args, '--conf', conf], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' })).stdout,
    logs,
    stop,
  }
}
