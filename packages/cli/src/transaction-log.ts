import { closeSync, openSync, writeSync } from 'node:fs'
import { bbError, type BackupEvent, type BbError } from '@bb/core'
import { err, ok, type Result } from 'neverthrow'
import { formatBytes } from './render.js'

/**
 * btrbk's transaction log: one line per action, appended, in btrbk's columns
 * `localtime type status target_url source_url parent_url # message`, `-` for what an action lacks.
 * Types: startup, snapshot, send-receive (btrfs) or transfer (other drivers), delete,
 * delete_garbled (a partial receive removed), job (a job that failed as a whole), finished;
 * statuses: starting, success, ERROR, and partial for a run where a job or target failed.
 */
export interface TransactionLog {
  /** the events of one job's run or prune: `source` is the job's source as it prints, `driver` its driver */
  readonly forJob: (source: string, driver: string) => (event: BackupEvent) => void
  /** a job that ended before any action of its own (the lock held, the source missing): `job ERROR` */
  readonly jobFailed: (source: string, error: BbError) => void
  /** a place (`at`, as it prints) that a prune could not prune: `delete ERROR` */
  readonly pruneFailed: (at: string, error: BbError) => void
  /** the last line, `finished`, and the file closed */
  readonly finish: (status: 'success' | 'partial' | 'ERROR', message?: string) => void
}

/** `2026-11-24T03:10:44+0100`: local time with its offset, as btrbk writes it */
export const tlogTime = (at: Date): string => {
  const pad = (n: number, width = 2): string => String(n).padStart(width, '0')
  const offset = -at.getTimezoneOffset()
  const sign = offset < 0 ? '-' : '+'
  const abs = Math.abs(offset)
  return `${pad(at.getFullYear(), 4)}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}T${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}${sign}${pad(Math.floor(abs / 60))}${pad(abs % 60)}`
}

/** a column: a location with a space or newline in it must stay one column and one line */
const column = (value: string | undefined): string => (value === undefined || value === '' ? '-' : value.replace(/[\s\\]/g, (c) => (c === ' ' ? '\\040' : c === '\\' ? '\\\\' : `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)))

/** One line of the log, ending in a newline; the message (free text, newlines flattened) after `# `. */
export const tlogLine = (at: Date, type: string, status: string, target?: string, source?: string, parent?: string, message?: string): string =>
  `${[tlogTime(at), type, status, column(target), column(source), column(parent)].join(' ')}${message === undefined ? '' : ` # ${message.replace(/\s*\n\s*/g, ' ')}`}\n`

/**
 * Opens (creating, mode 0644) the log at `path` for appending and writes the `startup` line. Each
 * line is one write to a file opened with O_APPEND, so two runs writing at once do not mix lines.
 */
export const openTransactionLog = (path: string, version: string, now: () => Date = () => new Date()): Result<TransactionLog, BbError> => {
  let fd: number
  try {
    fd = openSync(path, 'a', 0o644)
  } catch (e) {
    return err(bbError('IO_FAILED', `cannot open the transaction log ${path}: ${(e as Error).message}`, 'check that its directory exists and is writable, or leave out --transaction-log (config: transaction_log)', { path }))
  }
  let open = true
  const write = (type: string, status: string, target?: string, source?: string, parent?: string, message?: string): void => {
    if (!open) return
    // a log that cannot be written does not stop the backup: the run's report is the record
    try {
      writeSync(fd, tlogLine(now(), type, status, target, source, parent, message))
    } catch {
      open = false
    }
  }
  write('startup', `v${version}`, undefined, undefined, undefined, `bbackup ${version}`)
  return ok({
    forJob: (source, driver) => {
      const transferType = driver === 'btrfs' ? 'send-receive' : 'transfer'
      // what a transfer reads, from its start, for the line that ends it
      const reading = new Map<string, { from: string; parentFrom?: string }>()
      const key = (target: string, snapshot: string): string => `${target}\0${snapshot}`
      const into = (target: string, snapshot: string): string => `${target.replace(/\/+$/, '')}/${snapshot}`
      return (event) => {
        switch (event.type) {
          case 'snapshot-created':
            write('snapshot', 'success', event.at, event.of === undefined ? source : `${source} (${event.of})`)
            return
          case 'transfer-started':
            reading.set(key(event.target, event.snapshot), { from: event.from, ...(event.parentFrom === undefined ? {} : { parentFrom: event.parentFrom }) })
            write(transferType, 'starting', into(event.target, event.snapshot), event.from, event.parentFrom, event.mode === 'full' ? 'full' : `incremental from ${event.parent ?? '?'}`)
            return
          case 'transfer-finished': {
            const r = reading.get(key(event.target, event.snapshot))
            write(transferType, 'success', into(event.target, event.snapshot), r?.from ?? source, r?.parentFrom, `${formatBytes(event.bytes)} in ${(event.durationMs / 1000).toFixed(1)} s`)
            return
          }
          case 'transfer-failed': {
            const r = reading.get(key(event.target, event.snapshot))
            write(transferType, 'ERROR', into(event.target, event.snapshot), r?.from ?? source, r?.parentFrom, `${event.error.code}: ${event.error.message}`)
            return
          }
          case 'pruned':
            write('delete', 'success', event.path, undefined, undefined, event.reasons.join('; '))
            return
          case 'recovered':
            if (event.action === 'removed') write('delete_garbled', 'success', into(event.target, event.snapshot), undefined, undefined, 'the partial copy of an interrupted transfer')
            return
          default:
        }
      }
    },
    jobFailed: (source, error) => write('job', 'ERROR', undefined, source, undefined, `${error.code}: ${error.message}`),
    pruneFailed: (at, error) => write('delete', 'ERROR', at, undefined, undefined, `${error.code}: ${error.message}`),
    finish: (status, message) => {
      write('finished', status, undefined, undefined, undefined, message)
      open = false
      try {
        closeSync(fd)
      } catch {
        // closed already
      }
    },
  })
}
