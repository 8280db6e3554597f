import { homedir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { defaultStateDir, defaultStateRoot } from '../src/index.js'

const root = process.getuid?.() === 0

describe('where a job keeps its state when it is not told', () => {
  it('BBACKUP_STATE_DIR moves every job, for root and anyone else alike', () => {
    const env = { BBACKUP_STATE_DIR: '/srv/bbackup-state', XDG_STATE_HOME: '/home/u/.state' }
    expect(defaultStateRoot(env)).toBe('/srv/bbackup-state')
    expect(defaultStateDir('home-3f9a1c2b', env)).toBe('/srv/bbackup-state/jobs/home-3f9a1c2b')
    // written another way, the same place (one lock per job)
    expect(defaultStateDir('home-3f9a1c2b', { BBACKUP_STATE_DIR: '/srv//bbackup-state/' })).toBe('/srv/bbackup-state/jobs/home-3f9a1c2b')
  })

  it('unset or empty: /var/lib/bbackup for root, $XDG_STATE_HOME/bbackup (or ~/.local/state/bbackup) for anyone else', () => {
    for (const env of [{}, { BBACKUP_STATE_DIR: '' }]) {
      expect(defaultStateDir('j', { ...env, XDG_STATE_HOME: '/home/u/.state' })).toBe(root ? '/var/lib/bbackup/jobs/j' : '/home/u/.state/bbackup/jobs/j')
      expect(defaultStateDir('j', env)).toBe(root ? '/var/lib/bbackup/jobs/j' : join(homedir(), '.local/state/bbackup/jobs/j'))
    }
  })
})
