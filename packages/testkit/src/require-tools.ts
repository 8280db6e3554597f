import { execFileSync } from 'node:child_process'

const PACKAGES: Readonly<Record<string, string>> = {
  rsync: 'rsync', 'mkfs.ext4': 'e2fsprogs', filefrag: 'e2fsprogs', 'mkfs.btrfs': 'btrfs-progs', 'mkfs.xfs': 'xfsprogs', btrfs: 'btrfs-progs', losetup: 'mount', mount: 'mount', swapon: 'mount', swapoff: 'mount', sshd: 'openssh-server', ssh: 'openssh-client', 'ssh-keygen': 'openssh-client', unshare: 'util-linux', findmnt: 'util-linux', 'systemd-analyze': 'systemd', zsh: 'zsh', fish: 'fish', sudo: 'sudo', visudo: 'sudo', setpriv: 'util-linux', gpg: 'gnupg', gpgconf: 'gnupg', 'ceph-mon': 'ceph-mon', 'ceph-osd': 'ceph-osd', monmaptool: 'ceph-base', ceph: 'ceph-common', rbd: 'ceph-common', cryptsetup: 'cryptsetup', cryptdisks_start: 'cryptsetup', snapper: 'snapper', strace: 'strace', faketime: 'faketime',
}

const has = (tool: string): boolean => {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/**
 * Whether the tools a test needs are here. In CI (`CI=true`) a missing tool throws, naming the
 * Debian package to install: an integration test never skips there. Elsewhere it returns false
 * so the test can be skipped, and says why.
 * @example
 * describe.runIf(requireTools(['rsync']))('rsync driver', () => { ... })
 */
export const requireTools = (tools: readonly string[], options: { readonly root?: boolean } = {}): boolean => {
  const missing = tools.filter((t) => !has(t))
  const notRoot = options.root === true && process.getuid?.() !== 0
  if (missing.length === 0 && !notRoot) return true
  const why = [
    ...(missing.length === 0 ? [] : [`missing ${missing.join(', ')}: apt-get install ${[...new Set(missing.map((t) => PACKAGES[t] ?? t))].join(' ')}`]),
    ...(notRoot ? ['needs root (loop devices and mounts)'] : []),
  ].join('; ')
  if (process.env.CI === 'true') throw new Error(`integration test cannot run in CI: ${why}`)
  console.warn(`skipping: ${why}`)
  return false
}
