import { bbError, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'

export interface RsyncdModuleSpec {
  readonly module: string
  readonly path: string
  readonly user: string
  /** the daemon's secrets file (default /etc/rsyncd.secrets) */
  readonly secretsFile?: string
  /** who may connect: `hosts allow` (default: this network's loopback only) */
  readonly hostsAllow?: string
  /**
   * rsync-system-backup's server-side mode: the module's pre-xfer and post-xfer exec run this
   * bbackup, which publishes what clients send with `run -b` and rotates it by `keepBackups`
   */
  readonly serverSide?: { readonly program: string; readonly keepBackups?: string }
}

const NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/

/**
 * The rsyncd.conf text, secrets file steps and client command line that make a module bbackup can
 * back up into (docs/transports/rsyncd.md): writable, a password for one user, `--delete` and
 * `--link-dest` not refused, TCP_NODELAY, and `fake super` where the daemon is not root (so owners
 * survive). Printed by `bbackup doctor rsyncd`.
 * @example
 * rsyncdModuleText({ module: 'backups', path: '/srv/backups', user: 'bbackup' })
 */
export const rsyncdModuleText = (spec: RsyncdModuleSpec): Result<string, BbError> => {
  for (const [what, value] of [['module', spec.module], ['user', spec.user]] as const) {
    if (!NAME.test(value)) return err(bbError('INVALID_OPTIONS', `the ${what} name ${JSON.stringify(value)} is not letters, digits, . _ -`, `give a plain name with --${what}`))
  }
  if (/[\n\r]/.test(spec.secretsFile ?? '')) return err(bbError('INVALID_OPTIONS', 'the secrets file path has a line break', 'give a path on one line'))
  if (!spec.path.startsWith('/') || /[\n\r]/.test(spec.path)) return err(bbError('INVALID_OPTIONS', `the module path ${JSON.stringify(spec.path)} is not an absolute path on one line`, 'give the directory on the server with --path, e.g. --path /srv/backups'))
  const program = spec.serverSide?.program ?? ''
  if (spec.serverSide !== undefined && !/^\/[A-Za-z0-9._/-]+$/.test(program)) return err(bbError('INVALID_OPTIONS', `the program ${JSON.stringify(program)} is not an absolute path of plain characters`, 'give where bbackup is on the server with --program, e.g. --program /usr/local/bin/bbackup'))
  const keep = spec.serverSide?.keepBackups
  if (keep !== undefined && !/^[A-Za-z0-9=*. ]+$/.test(keep)) return err(bbError('INVALID_OPTIONS', `the retention ${JSON.stringify(keep)} has characters a hook line cannot carry`, "give a policy such as 'hourly=24 daily=7 weekly=4 monthly=always'"))
  const hosts = spec.hostsAllow ?? '127.0.0.1'
  const secrets = spec.secretsFile ?? '/etc/rsyncd.secrets'
  return ok([
    '# 1. on the server: the module, in /etc/rsyncd.conf',
    '# (global settings: each small request of bbackup is a round trip; these save ~40 ms apiece)',
    'socket options = TCP_NODELAY',
    'reverse lookup = no',
    '',
    `[${spec.module}]`,
    `path = ${spec.path}`,
    'read only = no',
    `auth users = ${spec.user}`,
    `secrets file = ${secrets}`,
    'strict modes = yes',
    'use chroot = yes',
    `uid = ${spec.user}`,
    `gid = ${spec.user}`,
    ...(spec.user === 'root' ? [] : [
      `# the daemon runs as ${spec.user}, which cannot give files their owners: it keeps owner, group, setuid bits and`,
      "# device files in an xattr (user.rsync.%stat) and gives them back on restore; without it every file comes back as this account's",
      'fake super = yes',
    ]),
    `hosts allow = ${hosts}`,
    '# bbackup needs --delete (retention) and --link-dest (hard links): never list them in "refuse options"',
    ...(spec.serverSide === undefined ? [] : [
      '# server-side mode (rsync-system-backup\'s): clients send with "bbackup run -b"; after each transfer the daemon',
      '# runs these (as the daemon\'s user, root): a backup is published only if its transfer succeeded, then rotated',
      `pre-xfer exec = ${program} snapshot`,
      `post-xfer exec = ${program} snapshot && ${program} prune${keep === undefined ? '' : ` --keep-backups '${keep}'`}`,
    ]),
    '',
    '# 2. on the server: the account, the directory, the password, the daemon',
    `#   useradd --system --no-create-home --shell /usr/sbin/nologin ${spec.user}`,
    `#   install -d -o ${spec.user} -g ${spec.user} -m 0700 ${spec.path}`,
    `#   umask 077; echo "${spec.user}:$(openssl rand -base64 24)" >> ${secrets}`,
    '#   systemctl enable --now rsync',
    '',
    '# 3. on the client: the same password alone in a file, mode 0600, then a backup',
    `#   umask 077; echo 'THE-PASSWORD' > /etc/bbackup/${spec.module}.secret`,
    `#   bbackup run /home rsync://${spec.user}@SERVER/${spec.module}/$(hostname) --password-file /etc/bbackup/${spec.module}.secret${spec.serverSide === undefined ? '' : ' -b'}`,
    `#   through ssh, with the daemon on the server's loopback ("hosts allow = 127.0.0.1"): add --tunnel root@SERVER`,
    '',
  ].join('\n'))
}
