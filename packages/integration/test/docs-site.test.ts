import { spawnSync } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { makeTempDir, type TempDir } from '@bb/testkit'
import { ROOT } from './helpers.js'

const build = (args: string[]) => spawnSync(process.execPath, [join(ROOT, 'scripts/docs-site.mjs'), ...args], { encoding: 'utf8', timeout: 60_000 })

/** docs/ as a browsable site (issue 7): every page rendered, every link between pages leading somewhere */
describe('the documentation site', () => {
  let tmp: TempDir
  beforeEach(async () => {
    tmp = await makeTempDir('docs-site')
  })
  afterEach(async () => {
    await tmp?.cleanup()
  })

  it('renders the README and every page of docs/, with links between them that lead to a page and a heading there', async () => {
    const r = build([join(tmp.path, 'site')])
    expect(r.status, r.stderr).toBe(0)
    const index = await readFile(join(tmp.path, 'site/index.html'), 'utf8')
    for (const page of ['configuration.html', 'drivers/btrfs.html', 'transports/ssh.html', 'guides/monitoring.html', 'install.html']) {
      expect(index).toContain(`href="${page}"`)
      expect(await readFile(join(tmp.path, 'site', page), 'utf8')).toMatch(/^<!doctype html>/)
    }
    // a link with a heading: rewritten to the HTML page, whose heading has that id
    const block = await readFile(join(tmp.path, 'site/drivers/block.html'), 'utf8')
    expect(block).toContain('href="../configuration.html#block-volumes"')
    expect(await readFile(join(tmp.path, 'site/configuration.html'), 'utf8')).toContain('<h2 id="block-volumes">')
  })

  it('refuses a link to a page or a heading that is not there, naming each, and leaves no site', async () => {
    await mkdir(join(tmp.path, 'repo/docs'), { recursive: true })
    await writeFile(join(tmp.path, 'repo/README.md'), '# bbackup\n\n[config](docs/config.md#keys) and [gone](docs/gone.md)\n')
    await writeFile(join(tmp.path, 'repo/docs/config.md'), '# Config\n\n## The keys\n\n[back](../README.md#bbackup)\n')
    const r = build([join(tmp.path, 'site'), '--from', join(tmp.path, 'repo')])
    expect(r.status).toBe(1)
    expect(r.stderr).toBe('docs-site: 2 broken links:\n  README.md: docs/config.md#keys: docs/config.md has no heading #keys\n  README.md: docs/gone.md: there is no such page\n')
    expect(spawnSync('ls', [join(tmp.path, 'site')]).status).not.toBe(0)
  })
})
