import { spawnSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { makeTempDir, requireTools, type TempDir } from '@bb/testkit'
import { runCli } from './helpers.js'

/** The completion scripts, loaded into the real shells and asked what they complete. */
describe.runIf(requireTools(['bash', 'zsh', 'fish']))('bbackup completion', () => {
  let tmp: TempDir
  const script: Record<string, string> = {}
  const sh = (shell: string, args: string[]) => spawnSync(shell, args, { encoding: 'utf8', timeout: 30_000 })

  beforeAll(async () => {
    tmp = await makeTempDir('completion')
    for (const shell of ['bash', 'zsh', 'fish']) {
      const r = await runCli(['completion', shell], tmp.path)
      expect(r.code, r.stderr).toBe(0)
      script[shell] = join(tmp.path, `bbackup.${shell}`)
      await writeFile(script[shell] ?? '', r.stdout)
    }
  })
  afterAll(async () => {
    await tmp?.cleanup()
  })

  /** what bash's completion function offers for the words typed so far */
  const bashOffers = (...words: string[]): string[] =>
    sh('bash', ['-c', `source "$1"; COMP_WORDS=(bbackup "\${@:2}"); COMP_CWORD=$(( $# - 1 )); _bbackup; printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', script.bash ?? '', ...words]).stdout.split('\n').filter((l) => l !== '')
  const fishOffers = (line: string): string[] =>
    sh('fish', ['-c', `source ${script.fish ?? ''}; complete -C ${JSON.stringify(line)}`]).stdout.split('\n').filter((l) => l !== '').map((l) => l.split('\t')[0] ?? '')

  it('bash: commands, the options of each command, the choices of an option, files for a value', async () => {
    expect(bashOffers('sch')).toEqual(['schedule'])
    expect(bashOffers('run', '--keep-')).toEqual(['--keep-backups', '--keep-snapshots'])
    expect(bashOffers('status', '--ch')).toEqual(['--check'])
    expect(bashOffers('run', '--driver', '')).toEqual(['rsync', 'btrfs', 'block'])
    await writeFile(join(tmp.path, 'config-for-completion.toml'), '')
    expect(bashOffers('run', '-c', join(tmp.path, 'config-for'))).toEqual([join(tmp.path, 'config-for-completion.toml')])
  })

  it('fish: the same, from its own completion engine', () => {
    expect(fishOffers('bbackup sch')).toEqual(['schedule'])
    expect(fishOffers('bbackup run --keep-')).toEqual(['--keep-backups', '--keep-snapshots'])
    expect(fishOffers('bbackup run --driver ').sort()).toEqual(['block', 'btrfs', 'rsync'])
  })

  it('zsh: the script parses, and defines its completion function when loaded', () => {
    expect(sh('zsh', ['-n', script.zsh ?? ''])).toMatchObject({ status: 0, stderr: '' })
    const loaded = sh('zsh', ['-c', `autoload -U compinit && compinit -u -d ${join(tmp.path, 'zcompdump')} && source ${script.zsh ?? ''} 2>/dev/null; whence -w _bbackup`])
    expect(loaded.stdout.trim()).toBe('_bbackup: function')
  })
})
