import { readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { posix } from 'node:path'
import type { BbError, Finding, SshLocation, Transport } from '@bb/core'
import { SUDO_PROGRAMS } from '@bb/transports/ssh'
import type { Role } from '@bb/transports/ssh-filter'

export interface DoctorSshInput {
  readonly location: SshLocation
  readonly transport: Transport
  /** what the key is for: receive (a push target, default), send (a pull source) */
  readonly roles: readonly Role[]
  /** the backups go with this driver; both tools are checked when not given */
  readonly driver?: 'btrfs' | 'rsync'
  /** the key that logs in, whose public half goes into authorized_keys */
  readonly identityFile?: string
  readonly sudo: boolean
}

export type { Finding }

const found = (what: string, detail: string): Finding => ({ ok: true, what, detail })
const problem = (what: string, detail: string, fix: string): Finding => ({ ok: false, what, detail, fix })
const fromError = (what: string, e: BbError): Finding => problem(what, e.message, e.hint)

/** the first line of `--version` output, or the error that says why there is none */
const version = async (t: Transport, tool: 'btrfs' | 'rsync'): Promise<Finding> => {
  const r = await t.exec([tool, '--version'])
  if (r.isErr()) return fromError(tool, r.error)
  if (r.value.exitCode !== 0) return problem(tool, `${tool} --version failed: ${r.value.stderr.trim() || `exit ${r.value.exitCode}`}`, `install ${tool === 'btrfs' ? 'btrfs-progs' : 'rsync'} there`)
  return found(tool, r.value.stdout.split('\n')[0]?.trim() ?? '')
}

/** how far apart two clocks may be before doctor calls it a problem (kopia's bound) */
const CLOCK_PROBLEM_MS = 5 * 60_000

/**
 * The other host's clock against this one's (`date -u +%s` through a login shell, read against
 * the middle of its round trip: to a second or so). bbackup names snapshots and judges their age by
 * the clock of the host it runs on, so the other's changes what is kept nowhere; but what that host
 * dates itself (a snapper source's snapshots, file times, its logs) is off by as much. A forced
 * command runs no `date`: not checked then.
 */
const clock = async (t: Transport): Promise<Finding> => {
  const before = Date.now()
  const r = await t.exec(['date', '-u', '+%s'])
  const after = Date.now()
  const seconds = r.isOk() && r.value.exitCode === 0 ? Number(r.value.stdout.trim()) : Number.NaN
  if (!Number.isSafeInteger(seconds)) return found('clock', 'not checked (this key runs no date there)')
  const apart = seconds * 1000 - (before + after) / 2
  const told = `${Math.abs(apart) < 2000 ? 'within a second or two of' : `${describeGap(Math.abs(apart))} ${apart > 0 ? 'ahead of' : 'behind'}`} this host's`
  return Math.abs(apart) < CLOCK_PROBLEM_MS
    ? found('clock', told)
    : problem('clock', `${told}: names and ages are this host's, but what that host dates (a snapper source's snapshots, file times, logs) is that far off`,
      'set both clocks by NTP (timedatectl set-ntp true, or chrony), then check again')
}

/** a gap of `ms`, in the largest unit that fits */
const describeGap = (ms: number): string => {
  const s = Math.round(ms / 1000)
  return s < 120 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : s < 172_800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86_400)} days`
}

/**
 * What `bbackup doctor ssh://host/path` checks, in order, each with the fix for a problem: the
 * connection (host key, login), the other host's clock, the tools the driver needs on the other side, the directory
 * (there, a directory, btrfs for the btrfs driver, writable for a target), and whether the key
 * is already held to bbackup-remote. Stops at the first problem that makes the rest meaningless.
 */
export const doctorSsh = async (input: DoctorSshInput): Promise<Finding[]> => {
  const t = input.transport
  const path = input.location.path
  const findings: Finding[] = []
  const login = await t.stat(path)
  if (login.isErr() && login.error.code !== 'NOT_FOUND' && login.error.code !== 'IO_FAILED') return [fromError('connection', login.error)]
  findings.push(found('connection', `logged in to ${input.location.user === undefined ? '' : `${input.location.user}@`}${input.location.host}${input.location.port === undefined ? '' : `:${input.location.port}`} without a prompt`))
  findings.push(await clock(t))

  for (const tool of input.driver === undefined ? (['btrfs', 'rsync'] as const) : [input.driver]) {
    const f = await version(t, tool)
    // without a driver named, one of the two tools is enough
    findings.push(f.ok || input.driver !== undefined ? f : { ...f, ok: true, detail: `${f.detail} (needed only for the ${tool} driver)` })
  }

  const entry = login.unwrapOr(undefined)
  if (entry === undefined) {
    findings.push(problem('directory', `${path} does not exist`, input.roles.includes('receive') ? `create it there: mkdir -p ${path}` : 'check the path'))
  } else if (entry.kind !== 'directory') {
    findings.push(problem('directory', `${path} is a ${entry.kind}, not a directory`, 'give the directory of the backups (or of the source)'))
  } else {
    findings.push(found('directory', `${path} is a directory`))
    if (input.driver === 'btrfs') {
      const fs = await t.exec(['stat', '-f', '-c', '%T', path])
      const type = fs.map((r) => r.stdout.trim()).unwrapOr('')
      findings.push(type === 'btrfs' ? found('filesystem', `${path} is on btrfs`) : problem('filesystem', `${path} is on ${type || 'an unknown filesystem'}, not btrfs`, 'btrfs receive needs a btrfs filesystem: put the backups on one, or use --driver rsync'))
    }
    if (input.roles.includes('receive')) {
      // a file of bbackup's own, named for what it is; no directory is made (the rsync driver's
      // `.bbackup/` would make the place look like rsync's, whatever it holds)
      const probe = posix.join(path, `.bbackup-doctor-${hostname()}`)
      const wrote = await t.writeFileAtomic(probe, `${new Date().toISOString()}\n`)
      if (wrote.isErr()) findings.push(fromError('writable', wrote.error))
      else {
        const removed = await t.remove(probe)
        findings.push(found('writable', removed.isOk() ? `wrote and removed a file in ${path}` : `wrote ${probe} (left there: the key may not delete; remove it by hand)`))
      }
    }
  }

  const filter = await t.exec(['sh', '-c', 'command -v bbackup-remote || true'])
  findings.push(filter.isErr() && filter.error.code === 'AUTH_FAILED' && /forced command/.test(filter.error.message)
    ? found('restricted', 'this key already runs bbackup-remote as its forced command')
    : problem('restricted', `this key may run any command on ${input.location.host}${filter.isOk() && filter.value.stdout.trim() !== '' ? ` (bbackup-remote is installed there: ${filter.value.stdout.trim()})` : ''}`,
      'hold it to what bbackup needs: install bbackup there (npm install -g @bb/cli, which has bbackup-remote) and use the authorized_keys line below'))
  return findings
}

/** the authorized_keys line that holds the key to bbackup-remote, with its public half when it can be read */
export const authorizedKeysLine = async (input: Pick<DoctorSshInput, 'location' | 'roles' | 'identityFile' | 'sudo'>): Promise<string> => {
  const pub = input.identityFile === undefined ? undefined : await readFile(`${input.identityFile}.pub`, 'utf8').then((s) => s.trim(), () => undefined)
  const options = [`--role ${input.roles.join(',')}`, `--restrict-path ${input.location.path}`, ...(input.sudo ? ['--sudo'] : []), '--log /var/log/bbackup-remote.log']
  return `command="bbackup-remote ${options.join(' ')}",restrict ${pub ?? 'ssh-ed25519 AAAA...(the public half of the key bbackup logs in with)'}`
}

/** One line per finding, the fix under each problem. */
export const findingLines = (findings: readonly Finding[]): string[] =>
  findings.map((f) => `${f.ok ? 'ok     ' : 'PROBLEM'} ${f.what}: ${f.detail}${f.fix === undefined ? '' : `\n        fix: ${f.fix}`}`)

export const renderFindings = (findings: readonly Finding[], line: string, sudo: boolean): string => [
  ...findingLines(findings),
  '',
  '# the authorized_keys line on the other host (~/.ssh/authorized_keys of the user bbackup logs in as):',
  line,
  ...(sudo ? [
    '# and, for --ssh-sudo, in /etc/sudoers.d/bbackup (visudo -f): the commands bbackup runs as root there',
    `#   USER ALL=(root) NOPASSWD: ${SUDO_PROGRAMS.map((p) => (p === 'sh' ? '/bin/sh' : `/usr/bin/${p}`)).join(', ')}`,
    '# (sh runs bbackup\'s fixed file scripts and the other tools; with the forced command above, the key cannot run anything else)',
  ] : []),
  '',
].join('\n')
