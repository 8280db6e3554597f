import { err, ok, ResultAsync, type Result } from 'neverthrow'
import { bbError, stderrTail, type BbError } from '../errors.js'
import type { Transport } from '../transport/transport.js'

/**
 * Where in a run a hook runs:
 * - `pre-run` once the job's lock is taken, before anything is read (mount a disk, wake a host);
 * - `pre-snapshot` just before the source is captured (quiesce: flush a database, freeze a guest);
 * - `post-snapshot` as soon as it is captured (thaw), before anything is sent;
 * - `post-run` at the end, whatever became of the run (unmount, notify).
 * A driver that reads the live source (rsync) captures it during its transfers: its snapshot hooks
 * run around them.
 */
export type HookPoint = 'pre-run' | 'pre-snapshot' | 'post-snapshot' | 'post-run'

/**
 * How a run ended, as `post-run` (and `post-snapshot`) hooks are told: `ok`; `failed` (some target or
 * prune stage failed, the CLI exits 10); `error` (the job could not run); `cancelled`.
 */
export type HookStatus = 'ok' | 'failed' | 'error' | 'cancelled'

export interface HookContext {
  readonly point: HookPoint
  /** the job's source, as its location prints */
  readonly source: string
  readonly targets: readonly string[]
  readonly driver: string
  /** post-snapshot: the snapshot just taken (btrfs, block); post-run: the run's snapshot */
  readonly snapshot?: string
  /** post-snapshot: where it is, as its location prints */
  readonly snapshotAt?: string
  /** post hooks: how the part they close ended */
  readonly status?: HookStatus
  readonly signal?: AbortSignal
}

/** What a hook printed, when it has something to show (the end of it). */
export interface HookOutput {
  readonly output?: string
}

/**
 * A hook: code the job runs at a {@link HookPoint}. An `Err` (or a throw) is a failure: at a `pre`
 * point the part it opens does not run, and its `post` hook still does.
 */
export type Hook = (context: HookContext) => ResultAsync<HookOutput | undefined | void, BbError> | Promise<Result<HookOutput | undefined | void, BbError>>

/**
 * A job's hooks. The `post` hook of a pair runs whenever its `pre` point was reached, also when the
 * `pre` hook failed (a freeze that failed half way is thawed) and when there is none.
 */
export interface JobHooks {
  readonly preRun?: Hook
  readonly preSnapshot?: Hook
  readonly postSnapshot?: Hook
  readonly postRun?: Hook
}

/** One hook that ran (or, in a dry run, would have). */
export interface HookRun {
  readonly point: HookPoint
  readonly ok: boolean
  readonly durationMs: number
  /** a dry run runs no hook */
  readonly skipped?: 'dry run'
  /** the end of what it printed */
  readonly output?: string
  readonly error?: BbError
}

const HOOK_OF: Readonly<Record<HookPoint, keyof JobHooks>> = {
  'pre-run': 'preRun',
  'pre-snapshot': 'preSnapshot',
  'post-snapshot': 'postSnapshot',
  'post-run': 'postRun',
}

/**
 * Runs the job's hook at `context.point`, if it has one; a dry run only notes it. A hook that throws
 * fails as one that returned an `Err`.
 */
export const runHook = async (hooks: JobHooks | undefined, context: HookContext, dryRun: boolean): Promise<HookRun | undefined> => {
  const hook = hooks?.[HOOK_OF[context.point]]
  if (hook === undefined) return undefined
  if (dryRun) return { point: context.point, ok: true, durationMs: 0, skipped: 'dry run' }
  const started = Date.now()
  const done = await Promise.resolve()
    .then(async (): Promise<Result<HookOutput | undefined | void, BbError>> => await hook(context))
    .then((r) => r, (thrown: unknown): Result<HookOutput | undefined | void, BbError> => err(bbError('HOOK_FAILED', `the ${context.point} hook threw: ${thrown instanceof Error ? thrown.message : String(thrown)}`,
      'fix the hook: it must return a Result (an Err for a failure), not throw', { point: context.point })))
  const durationMs = Date.now() - started
  if (done.isErr()) return { point: context.point, ok: false, durationMs, error: done.error }
  const output = done.value?.output
  return { point: context.point, ok: true, durationMs, ...(output === undefined || output === '' ? {} : { output }) }
}

/** What a hook is told of the job it runs for: its context at `point`. A post hook gets no signal: a thaw runs also after a cancel. */
export const hookContextOf = (
  point: HookPoint, job: Pick<HookContext, 'source' | 'targets' | 'driver'>, signal: AbortSignal | undefined, more: Partial<HookContext> = {},
): HookContext => ({ point, ...job, ...(signal === undefined || point.startsWith('post') ? {} : { signal }), ...more })

/** A run's hooks as {@link betweenHooks} runs them: the job's hooks, whether it is a dry run, the context of each point, and where those that ran are noted. */
export interface HookRunner {
  readonly hooks: JobHooks | undefined
  readonly dryRun: boolean
  readonly context: (point: HookPoint, more?: Partial<HookContext>) => HookContext
  readonly ran: HookRun[]
}

/** The job's hook at `point` (if it has one) run with the runner's context, and noted among those that ran. */
export const runHookOf = async (runner: HookRunner, point: HookPoint, more?: Partial<HookContext>): Promise<HookRun | undefined> => {
  const run = await runHook(runner.hooks, runner.context(point, more), runner.dryRun)
  if (run !== undefined) runner.ran.push(run)
  return run
}

/**
 * `body` between the hooks at `pre` and `post`: a `pre` hook that fails stops it (its error is the
 * outcome), and the `post` hook runs all the same, told what `told` makes of the outcome.
 */
export const betweenHooks = async <T>(
  runner: HookRunner, [pre, post]: readonly [HookPoint, HookPoint], body: () => Promise<Result<T, BbError>>, told: (outcome: Result<T, BbError>) => Partial<HookContext>,
): Promise<Result<T, BbError>> => {
  const before = await runHookOf(runner, pre)
  const outcome = before?.error !== undefined ? err(before.error) : await body()
  await runHookOf(runner, post, told(outcome))
  return outcome
}

/** The environment a command hook gets, beside this process's own. */
export const hookEnvironment = (context: HookContext, extra: Readonly<Record<string, string>> = {}): Record<string, string> => ({
  ...extra,
  BBACKUP_HOOK: context.point,
  BBACKUP_SOURCE: context.source,
  BBACKUP_TARGETS: context.targets.join('\n'),
  BBACKUP_DRIVER: context.driver,
  ...(context.snapshot === undefined ? {} : { BBACKUP_SNAPSHOT: context.snapshot }),
  ...(context.snapshotAt === undefined ? {} : { BBACKUP_SNAPSHOT_AT: context.snapshotAt }),
  ...(context.status === undefined ? {} : { BBACKUP_STATUS: context.status }),
})

export interface CommandHookOptions {
  /** the host the command runs on: this one (`localTransport('/')` of `@bb/transports/local`) */
  readonly on: Transport
  /** more environment, e.g. the job's name as `BBACKUP_JOB` */
  readonly env?: Readonly<Record<string, string>>
  /**
   * how long it may run before it is stopped, with everything it started, and fails
   * (`HOOK_FAILED`); 0 for no limit. Default {@link HOOK_TIMEOUT_SECONDS} of its point
   */
  readonly timeoutSeconds?: number
}

/**
 * How long a command hook may run by default, by point: a quiesce or a thaw (`pre-snapshot`,
 * `post-snapshot`) five minutes, so that a freeze that hangs fails and its thaw runs, rather than
 * holding a guest frozen and the job's lock for good; `pre-run` and `post-run` (a dump, a mount) no
 * limit.
 */
export const HOOK_TIMEOUT_SECONDS: Readonly<Record<HookPoint, number>> = { 'pre-run': 0, 'pre-snapshot': 300, 'post-snapshot': 300, 'post-run': 0 }

/** after its time is up, a hook gets SIGTERM, and SIGKILL this much later (coreutils' `timeout -k`) */
const HOOK_KILL_AFTER_SECONDS = 10

/**
 * A {@link Hook} that runs a shell command (`/bin/sh -c`, from `/`, so that a `post-run` hook may
 * unmount the backup disk) with the run's context in `BBACKUP_*` variables; a non-zero exit is a
 * failure (`HOOK_FAILED`) whose details hold the end of what it printed. This is what the CLI's
 * `--pre-exec` and friends (rsnapshot's `cmd_preexec` / `cmd_postexec`) run. One that runs past its
 * time ({@link CommandHookOptions.timeoutSeconds}) is stopped with everything it started, and fails.
 * @example
 * const hooks = { preSnapshot: commandHook('virsh domfsfreeze vm1', { on: localTransport('/') }) }
 */
export const commandHook = (command: string, options: CommandHookOptions): Hook => (context) => {
  const limit = options.timeoutSeconds ?? HOOK_TIMEOUT_SECONDS[context.point]
  const started = Date.now()
  // coreutils' timeout runs the command in a process group of its own and stops the whole group, also when it is itself told to stop (a cancelled run)
  const argv = ['/bin/sh', '-c', command]
  return new ResultAsync(
    options.on.exec(limit > 0 ? ['timeout', '-k', String(HOOK_KILL_AFTER_SECONDS), String(limit), ...argv] : argv, {
      cwd: '/',
      env: hookEnvironment(context, options.env),
      ...(context.signal === undefined ? {} : { signal: context.signal }),
    }).match(
      (r): Result<HookOutput, BbError> => {
        const output = stderrTail(`${r.stdout}${r.stdout !== '' && r.stderr !== '' && !r.stdout.endsWith('\n') ? '\n' : ''}${r.stderr}`)
        if (r.exitCode === 0) return ok(output === '' ? {} : { output })
        if (limit > 0 && (r.exitCode === 124 || r.exitCode === 137) && Date.now() - started >= limit * 1000) {
          return err(bbError('HOOK_FAILED', `the ${context.point} hook \`${command}\` did not finish in ${limit} s: it was stopped, with everything it started`,
            `find out why it hangs (run it by hand: /bin/sh -c, from /), or give it more time (--hook-timeout, config: hook_timeout; 0 = no limit)`,
            { point: context.point, command, timeoutSeconds: limit, ...(output === '' ? {} : { stderr: output }) }))
        }
        return err(bbError('HOOK_FAILED', `the ${context.point} hook \`${command}\` exited with ${r.exitCode}${output === '' ? '' : `: ${output.split('\n').at(-1) ?? ''}`}`,
          `fix the command or what it relies on; run it by hand to see why (/bin/sh -c, from /, with BBACKUP_HOOK=${context.point} and the other BBACKUP_* variables of docs/configuration.md "Hooks")`,
          { point: context.point, command, exitCode: r.exitCode, ...(output === '' ? {} : { stderr: output }) }))
      },
      (e): Result<HookOutput, BbError> => err(bbError('HOOK_FAILED', `the ${context.point} hook \`${command}\` could not run: ${e.message}`, e.hint, { point: context.point, command })),
    ),
  )
}
