import { ResultAsync, type Result } from 'neverthrow'
import { ioError, type BbError } from '@bb/core'

/**
 * The block driver's steps are long sequences of file operations with cleanup in `finally`
 * (safeTry would skip it on an early Err). Inside this folder an expected failure travels as a
 * `Stop` carrying its BbError; each public operation turns it back into an Err at its edge
 * ({@link asResult}). Anything else thrown is a bug and stays thrown.
 */
export class Stop extends Error {
  constructor(readonly error: BbError) {
    super(error.message)
  }
}

/** The value of a Result, or a Stop with its error. */
export const must = async <T>(result: Result<T, BbError> | ResultAsync<T, BbError>): Promise<T> => {
  const r = await result
  if (r.isErr()) throw new Stop(r.error)
  return r.value
}

/** Runs an fs call; its failure becomes a Stop that names the operation and the path. */
export const fsStep = async <T>(operation: string, path: string, body: Promise<T>): Promise<T> =>
  body.catch((cause: unknown) => {
    throw new Stop(ioError(operation, path)(cause))
  })

export const stop = (error: BbError): never => {
  throw new Stop(error)
}

/** The edge: a body that may throw Stop, as a ResultAsync. */
export const asResult = <T>(body: () => Promise<T>): ResultAsync<T, BbError> =>
  ResultAsync.fromPromise(body(), (e) => {
    if (e instanceof Stop) return e.error
    throw e
  })
