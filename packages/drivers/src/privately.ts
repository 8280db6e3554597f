/**
 * argv that runs `argv` with umask 077 on its host, so that a file it creates has mode 0600: stream
 * files and images hold all of the source's data. The script is fixed text (bbackup-remote knows it);
 * only `argv` varies, passed as arguments, never as shell code.
 */
export const privately = (argv: readonly string[]): string[] => ['sh', '-c', 'umask 077 && exec "$@"', 'sh', ...argv]
