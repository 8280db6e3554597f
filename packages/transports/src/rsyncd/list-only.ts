import type { EntryStat } from '@bb/core'

/** One line of `rsync --list-only --no-human-readable -l`. */
export interface ListedEntry {
  readonly name: string
  readonly kind: EntryStat['kind']
  readonly size: number
  readonly mtime: Date
  /** a symlink's target (as the daemon gives it back: un-munged) */
  readonly linkTarget?: string
}

// `%s %11s %s %s`: permissions, size, date and time in the client's time zone, name (rsync list_file_entry)
const LINE = /^([dl\-bcps])[rwxsStT-]{9}[.+]?\s+(\d+)\s+(\d{4})\/(\d\d)\/(\d\d) (\d\d):(\d\d):(\d\d) (.+)$/
const KINDS: Readonly<Record<string, EntryStat['kind']>> = { '-': 'file', d: 'directory', l: 'symlink' }

/** rsync prints bytes it will not show as `\#ooo` (octal), and a backslash stays as it is */
const unescape = (text: string): string => text.replace(/\\#([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)))

/**
 * Reads what `rsync --list-only` prints for a directory (its entries, `.` first) or for one path.
 * Lines that are not entries (a daemon's message of the day) are skipped.
 * @example
 * parseListOnly('drwxr-xr-x        4096 2026/11/23 21:37:00 backups\n')
 * // [{ name: 'backups', kind: 'directory', size: 4096, mtime: <local 2026-11-23 21:37:00> }]
 */
export const parseListOnly = (stdout: string): ListedEntry[] => {
  const entries: ListedEntry[] = []
  for (const line of stdout.split('\n')) {
    const m = LINE.exec(line)
    if (m === null) continue
    const [, type = '-', size = '0', year = '0', month = '1', day = '1', hour = '0', minute = '0', second = '0', rest = ''] = m
    const kind = KINDS[type] ?? 'other'
    const arrow = kind === 'symlink' ? rest.indexOf(' -> ') : -1
    const mtime = new Date(Number(year), Number(month) - 1, Number(day), Number(hour), Number(minute), Number(second))
    entries.push({
      name: unescape(arrow < 0 ? rest : rest.slice(0, arrow)),
      kind,
      size: Number(size),
      mtime,
      ...(arrow < 0 ? {} : { linkTarget: unescape(rest.slice(arrow + 4)) }),
    })
  }
  return entries
}
