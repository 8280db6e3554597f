import { readFile, rename, unlink, writeFile } from 'node:fs/promises'
import { bbError, prometheusMetrics, type BbError, type JobRun } from '@bb/core'
import { ResultAsync } from 'neverthrow'

/**
 * Writes the metrics of this run into `path` atomically (a temporary file beside it, renamed
 * over it), so the textfile collector never reads half a file; the jobs that did not run keep
 * their samples from the file as it was.
 */
export const writeMetrics = (path: string, runs: readonly JobRun[]): ResultAsync<void, BbError> =>
  ResultAsync.fromPromise((async () => {
    const previous = await readFile(path, 'utf8').catch(() => '')
    // node_exporter reads only *.prom files: the temporary name does not end so
    const temp = `${path}.${process.pid}.tmp`
    try {
      await writeFile(temp, prometheusMetrics(runs, previous), { mode: 0o644 })
      await rename(temp, path)
    } catch (e) {
      await unlink(temp).catch(() => undefined)
      throw e
    }
  })(), (e) => bbError('IO_FAILED', `cannot write the metrics file ${path}: ${(e as Error).message}`, 'check that its directory exists and is writable (node_exporter: --collector.textfile.directory)', { path }))
