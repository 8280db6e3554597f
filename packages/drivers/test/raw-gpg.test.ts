import { describe, expect, it } from 'vitest'
import { canEncrypt, gpgEncryptArgv } from '../src/btrfs/raw.js'

// `gpg --with-colons --list-keys` as gpg 2.2 prints it
const ENCRYPTS = [
  'tru:o:1:1795511810:1:3:1:5',
  'pub:u:255:22:6DD96CE85A0C63FA:1795511810:::u:::scESC:::::ed25519:::0:',
  'uid:u::::1795511810::1296FC331D8ECC0A1DAB313D99F913977A2937CA::x <x@example.org>::::::::::0:',
  'sub:u:255:18:40D7F4425372C0AA:1795511810::::::e:::::cv25519::',
].join('\n')

describe('gpg keys for encrypted stream files', () => {
  it('a key whose usable capabilities include E can encrypt', () => {
    expect(canEncrypt(ENCRYPTS)).toBe(true)
  })

  it('a signing-only key, a revoked or expired one, or no key at all cannot', () => {
    expect(canEncrypt('pub:u:255:22:FDBF91F33EB22F31:1795511810:::u:::scSC:::::ed25519:::0:')).toBe(false)
    expect(canEncrypt(ENCRYPTS.replace('pub:u:', 'pub:r:'))).toBe(false)
    expect(canEncrypt(ENCRYPTS.replace('pub:u:', 'pub:e:'))).toBe(false)
    // the subkey's lowercase e alone is no usable capability: gpg drops E from the key when that subkey expires
    expect(canEncrypt(ENCRYPTS.replace(':scESC:', ':scSC:'))).toBe(false)
    expect(canEncrypt('')).toBe(false)
  })

  it('encrypts to every recipient, from the keyring file when one is given, without prompts or compression of its own', () => {
    expect(gpgEncryptArgv({ method: 'gpg', recipients: ['a@example.org', '0x1234'], keyring: '/etc/bbackup/keys.kbx' })).toEqual([
      'gpg', '--batch', '--no-tty', '--quiet', '--no-default-keyring', '--keyring', '/etc/bbackup/keys.kbx',
      '--trust-model', 'always', '--compress-algo', 'none', '--encrypt', '--recipient', 'a@example.org', '--recipient', '0x1234',
    ])
  })
})
