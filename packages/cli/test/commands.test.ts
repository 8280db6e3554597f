import { describe, expect, it } from 'vitest'
import { COMMANDS, commandToDefine, main } from '../src/main.js'

/** main() with its output caught */
const run = async (argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
  let stdout = ''
  let stderr = ''
  const code = await main(argv, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), isTTY: false, cwd: '/' })
  return { code, stdout, stderr }
}

describe('the commands main defines: only the one a run names, all of them where all are shown', () => {
  it('names every command in COMMANDS, which --help lists', async () => {
    const { code, stdout } = await run(['--help'])
    expect(code).toBe(0)
    const listed = stdout.split('Commands:\n')[1]?.split('\n').map((l) => /^ {2}([a-z-]+)/.exec(l)?.[1]).filter((n) => n !== undefined && n !== 'help')
    expect(listed).toEqual([...COMMANDS])
  })

  it('defines the named command alone, and all for help, completion, man and a word that names none', () => {
    expect(commandToDefine(['run', '/home', '/mnt/b'])).toBe('run')
    expect(commandToDefine(['system-backup', '/mnt/b'])).toBe('system-backup')
    for (const argv of [[], ['--help'], ['-V'], ['help', 'run'], ['completion', 'bash'], ['man'], ['rnu'], ['/home']]) expect(commandToDefine(argv), argv.join(' ')).toBeUndefined()
  })

  it('a command still has all its own options and help', async () => {
    const { code, stdout } = await run(['run', '--help'])
    expect(code).toBe(0)
    expect(stdout).toContain('Usage: bbackup run [options] [source] [targets...]')
    expect(stdout).toContain('--keep-backups')
    expect(stdout).toContain('--no-transfer')
    const status = await run(['help', 'status'])
    expect(status.stdout).toContain('--warn-age')
  })

  it('a mistyped command is told the nearest one, which only all of them defined can find', async () => {
    const { code, stderr } = await run(['rnu', '/home', '/mnt/b'])
    expect(code).not.toBe(0)
    expect(stderr).toContain("unknown command 'rnu'")
    expect(stderr).toContain('Did you mean run?')
  })
})
