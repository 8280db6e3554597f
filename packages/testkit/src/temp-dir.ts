import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TempDir {
  readonly path: string
  /** removes the directory and everything in it; safe to call twice */
  cleanup(): Promise<void>
}

/** A fresh directory under the system temp dir; call `cleanup` in `afterEach`/`afterAll`. */
export const makeTempDir = async (label = 'test'): Promise<TempDir> => {
  const path = await mkdtemp(join(tmpdir(), `bbackup-${label}-`))
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) }
}
