import { spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { requireTools } from '@bb/testkit'
import { runCli } from './helpers.js'

/** bbackup(1) as man shows it: the page formatted by groff, with its warnings */
const format = (page: string): { text: string; warnings: string } => {
  const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-rLL=200n', '-P', '-cbou'], { input: page, encoding: 'utf8' })
  return { text: r.stdout, warnings: r.stderr }
}

describe.runIf(requireTools(['groff']))('bbackup man', () => {
  it('formats without a warning and holds every command and every option that --help shows, with the exit codes', async () => {
    const page = await runCli(['man'], process.cwd())
    expect(page.code, page.stderr).toBe(0)
    const { text, warnings } = format(page.stdout)
    expect(warnings).toBe('')
    const help = (await runCli(['--help'], process.cwd())).stdout
    const commands = [...help.matchAll(/^ {2}([a-z-]+) /gm)].map((m) => m[1] ?? '').filter((c) => c !== 'help')
    expect(commands).toEqual(expect.arrayContaining(['run', 'restore', 'status', 'schedule', 'man']))
    for (const command of commands) {
      expect(text).toMatch(new RegExp(`^ {3}${command}\\n {7}bbackup ${command} \\[options\\]`, 'm'))
      const options = [...(await runCli([command, '--help'], process.cwd())).stdout.matchAll(/^ {2}(?:-\w, )?(--[a-z-]+)/gm)].map((m) => m[1] ?? '').filter((o) => o !== '--help')
      // the command's part of the page: to the next heading (three spaces, then a word)
      const start = text.search(new RegExp(`^ {3}${command}\\n`, 'm'))
      const body = start + `   ${command}\n`.length
      const next = text.slice(body).search(/^ {0,3}\S/m)
      const section = text.slice(start, next < 0 ? undefined : body + next)
      for (const option of options) expect(section, `${command} ${option}`).toContain(option)
    }
    expect(text).toContain('status --check exits as a Nagios plugin')
    expect(text).toMatch(/EXIT STATUS\n {7}0 +success\n/)
    expect(text).toMatch(/^ {7}10 +the run finished, but at least one target failed/m)
  })
})
