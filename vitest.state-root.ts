import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * Every test's bbackup keeps the state it is not told where to keep (no --state-dir: a `prune` of
 * a directory, a restore's hold) in a directory of this run, not in /var/lib/bbackup or the home
 * directory, and the directory goes when the run ends. The test workers inherit the variable.
 */
export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'bbackup-test-state-'))
  process.env.BBACKUP_STATE_DIR = root
  return () => rmSync(root, { recursive: true, force: true })
}
