import { decodeFileName, type DiffEntry } from '@bb/core'

/** rsync's escape of a byte it will not print in a name: `\#ooo`, octal */
const ESCAPED = /\\#([0-7]{3})/g

/** a name as rsync printed it, its escaped bytes put back (UTF-8 names with them decode whole; bytes that are not UTF-8 as {@link decodeFileName} has them) */
export const unescapeRsyncName = (name: string): string => {
  if (!name.includes('\\#')) return name
  const bytes: Buffer[] = []
  let at = 0
  for (const m of name.matchAll(ESCAPED)) {
    bytes.push(Buffer.from(name.slice(at, m.index), 'utf8'), Buffer.from([parseInt(m[1] ?? '0', 8)]))
    at = m.index + m[0].length
  }
  bytes.push(Buffer.from(name.slice(at), 'utf8'))
  return decodeFileName(Buffer.concat(bytes))
}

/**
 * A line of `--itemize-changes --out-format='%i %n'` with its name as the file is called: rsync
 * escapes the bytes it will not print (`\#303\#244` for `ä` where the locale is C, as under cron;
 * a newline everywhere). What is not such a line is returned as it is.
 * @example
 * itemizedLine('>fcs....... \\#303\\#244.txt') // '>fcs....... ä.txt'
 */
export const itemizedLine = (line: string): string => (/^.{11} /.test(line) ? `${line.slice(0, 12)}${unescapeRsyncName(line.slice(12))}` : line)

/** `%i %l %n`: the 11 letters of rsync's itemized change (YXcstpoguax) or `*deleting`, the length, the name */
const LINE = /^(.{11}) (\d+) (.*)$/

/**
 * What changed from FROM to TO, from the output of `rsync -an --delete --out-format='%i %l %n' TO/ FROM/`
 * (what it would take to make FROM into TO): added (`+++++++++`), deleted (`*deleting`), modified
 * (content: checksum, size or time of a file, a symlink's target), metadata (permissions, owner,
 * group, ACL, xattrs). A directory's new times alone are not a change (every directory whose
 * entries changed has them). rsync sees no renames: a renamed file is deleted under its old name and
 * added under its new one.
 */
export const parseItemizedDiff = (stdout: string): DiffEntry[] => {
  const out: DiffEntry[] = []
  for (const line of stdout.split('\n')) {
    const m = LINE.exec(line)
    if (m === null) continue
    const flags = (m[1] ?? '').trimEnd()
    const length = Number(m[2])
    const path = unescapeRsyncName(m[3] ?? '').replace(/\/$/, '')
    if (path === '' || path === '.') continue
    if (flags === '*deleting') {
      out.push({ change: 'deleted', path })
      continue
    }
    const type = flags[1]
    const what = flags.slice(2)
    const bytes = type === 'f' ? { bytes: length } : {}
    if (what.startsWith('+++++++++')) out.push({ change: 'added', path, ...bytes })
    else if (type !== 'd' && 'c<>'.includes(flags[0] ?? '.') && /[cst]/.test(what.slice(0, 3))) out.push({ change: 'modified', path, ...bytes })
    else if (/[pogax]/.test(what.slice(3))) out.push({ change: 'metadata', path })
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
}
