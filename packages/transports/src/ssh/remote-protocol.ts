/**
 * What the ssh transport asks of a remote host, in one module without imports, so that the
 * forced-command filter (`bbackup-remote`) recognises exactly the programs the transport sends.
 */

/** The exit code the remote file scripts use for "nothing is there". */
export const ABSENT = 3

/** How a spawned remote command reports its pid, on the first line of its stderr. */
export const PID_TAG = 'bbackup-remote-pid:'

/** run as `sh -c SPAWN_WRAPPER sh ARGV...`: says the pid, then becomes the command (same pid) */
export const SPAWN_WRAPPER = `echo "${PID_TAG}$$" >&2; exec "$@"`

/**
 * The programs that `--ssh-sudo` runs as `sudo -n -- PROGRAM ...`: the sudoers rule names these
 * (bbackup doctor prints it). Every other program goes as `sudo -n -- sh -c AS_ROOT sh ARGV...`,
 * through the rule's sh, so that one short rule covers what any driver runs there.
 */
export const SUDO_PROGRAMS = ['btrfs', 'rsync', 'sync', 'kill', 'sh'] as const

/** run as `sh -c AS_ROOT sh ARGV...` under sudo: becomes ARGV (a program the sudoers rule does not name) */
export const AS_ROOT = 'exec "$@"'

/**
 * Run as `sh -c SYSTEM_PATH sh ARGV...`: ARGV with the system's sbin directories after the PATH,
 * for a program an ordinary user's login does not find (`blockdev`, `filefrag` live in /usr/sbin,
 * which sshd's default PATH for a user lacks). A forced command refuses it: bbackup-remote runs its
 * commands with that PATH already.
 */
export const SYSTEM_PATH = 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; exec "$@"'

/**
 * Run as `sh -c PRIVATE_WRITER sh ARGV...` inside {@link SPAWN_WRAPPER}: ARGV writes a file only its
 * owner may read (the btrfs driver's raw target keeps the source's data in its stream files).
 * The same text as the raw target's in @bb/drivers (which does not depend on this package).
 */
export const PRIVATE_WRITER = 'umask 077 && exec "$@"'

/**
 * Small POSIX sh programs for the file operations, run as `sh -c PROGRAM sh ARG...`: the arguments
 * arrive as "$1", "$2", quoted once by remoteCommand, and are never part of the program text.
 * They need only POSIX sh and GNU coreutils/findutils (stat -c, find -printf, sync FILE, mv -T).
 */
export const SCRIPTS = {
  read: `[ -e "$1" ] || exit ${ABSENT}; exec cat -- "$1"`,
  // temp file beside the target, fsync, rename, fsync of the directory
  write: 'd=${1%/*}; [ -n "$d" ] || d=/; t="$d/.${1##*/}.tmp-$$"; if cat > "$t" && sync -- "$t" && mv -fT -- "$t" "$1" && sync -- "$d"; then exit 0; fi; s=$?; rm -f -- "$t"; exit $s',
  stat: `[ -e "$1" ] || [ -h "$1" ] || exit ${ABSENT}; exec stat -c '%F/%s/%Y/%d/%i' -- "$1"`,
  list: `[ -d "$1" ] || exit ${ABSENT}; exec find "$1" -mindepth 1 -maxdepth 1 -printf '%y/%f\\0'`,
  mkdir: '[ -d "$1" ] || mkdir -- "$1"',
  mkdirp: 'exec mkdir -p -- "$1"',
  rename: 'd=${2%/*}; [ -n "$d" ] || d=/; mv -fT -- "$1" "$2" && sync -- "$d"',
  symlink: 'd=${2%/*}; [ -n "$d" ] || d=/; t="$d/.${2##*/}.tmp-$$"; ln -s -- "$1" "$t" && mv -fT -- "$t" "$2" && sync -- "$d"',
  readlink: `[ -h "$1" ] || exit ${ABSENT}; exec readlink -- "$1"`,
  remove: 'exec rm -f -- "$1"',
  removeTree: 'exec rm -rf -- "$1"',
  /**
   * several commands in one round trip: the arguments are COUNT WORD... for each; each runs with
   * its words as "${i}" references (eval sees only those, never a word), and prints its exit
   * status, its stdout and stderr together, and a line of RECORD_END
   */
  each: 'while [ "$#" -gt 0 ]; do n=$1; shift; c=; i=1; while [ "$i" -le "$n" ]; do c="$c \\"\\${$i}\\""; i=$((i + 1)); done; o=$(eval "$c" 2>&1); s=$?; printf "%s\\n%s\\n\\036\\n" "$s" "$o"; shift "$n"; done',
} as const

/**
 * The first line the command server prints once it is ready (anything a login script printed before
 * it is skipped). bbackup-remote's own server says this one: it runs request lines only.
 */
export const SERVE_BANNER = 'bbackup-serve:1'
/** what {@link SERVE_V2} said: it also takes a stream request ({@link STREAM_TAG}) */
export const SERVE_STREAMS_BANNER = 'bbackup-serve:2'
/** what {@link SERVE} says: it takes streams, and every request carries a token that ends its answer ({@link RUN_TAG}) */
export const SERVE_FRAMED_BANNER = 'bbackup-serve:3'
/** what every banner starts with; the version follows */
export const SERVE_BANNER_PREFIX = 'bbackup-serve:'

/**
 * A request line that starts with this, a token and a space is a stream request: its command reads
 * the session's stdin itself, where the stream follows the line, and must stop exactly at the
 * stream's end (`btrfs receive -e` stops at the end marker). The server answers as for any request;
 * after a command that failed it ends (the rest of the stream would follow, never to be read as a
 * request), and after one that succeeded it reads the next line only if that line is the token
 * again, which the client writes once it has the answer: anything else (bytes of a stream that was
 * not read to its end) ends the server too.
 */
export const STREAM_TAG = 'bbackup-stream:'

/**
 * A request line that starts with this, a token and a space is an out-stream request: the server
 * runs it as any request (its stdout goes onto the session's, up to the token; see {@link SERVE}),
 * and the client hands that stdout on as a stream instead of keeping it for the answer. The
 * command's stdin is /dev/null, so the server reads on as usual.
 */
export const OUT_TAG = 'bbackup-out:'

/**
 * Run as `sh -c STREAM_WRAPPER sh ARGV...` as a stream request (in or out): says its pid on the
 * server's own stdout (fd 4) at once, before its stdout, then becomes the command (same pid), so
 * that a kill can stop it while it runs.
 */
export const STREAM_WRAPPER = `echo "${PID_TAG}$$" >&4; exec "$@"`

/**
 * A request line that starts with this, a token and a space is a plain request of {@link SERVE}
 * (a stream request starts with {@link STREAM_TAG}, an out-stream request with {@link OUT_TAG}).
 */
export const RUN_TAG = 'bbackup-run:'

/**
 * The command server: run as the master connection's own command (`sh -c SERVE sh`), it runs the
 * commands that come on its stdin one after the other, so that each costs a line on an open
 * channel instead of a new session and a login shell. A request is one line: a tag and a token
 * random per request ({@link RUN_TAG}, {@link STREAM_TAG} or {@link OUT_TAG}), a space, and a
 * command quoted by `remoteCommand` in which each newline (only ever inside single quotes) is
 * written `'"$n"'` (see `serveLine`); `eval` sees exactly what the login shell would see from ssh,
 * in a subshell. The command's stdin is /dev/null (a stream request's: the session's stdin, see
 * {@link STREAM_TAG}); its stdout goes straight onto the session's, and its stderr is kept by the
 * shell. The answer follows the stdout: `TOKEN STATUS`, a line break, the stderr, a line break and
 * the token again, so that the client finds where each part ends by a token that no command's
 * output can foresee. No process runs but the command itself (no temporary files to count and
 * print, no cleanup). sh's `read` takes a pipe's bytes one at a time, so a request line is read to
 * its newline and no further. The program has no line break of its own (a csh login shell could
 * not pass one through its quotes): `$n` is made by printf.
 */
export const SERVE = `n=$(printf '\\n_'); n=\${n%_}; exec 4>&1; echo "${SERVE_FRAMED_BANNER}"; while IFS= read -r l; do u=\${l%% *}; l=\${l#* }; case $u in "${STREAM_TAG}"*) e=$( { eval "$l"; } 2>&1 >&4 ); s=$?;; *) e=$( { eval "$l"; } </dev/null 2>&1 >&4 ); s=$?;; esac; printf '%s %s\\n%s\\n%s\\n' "$u" "$s" "$e" "$u"; case $u in "${STREAM_TAG}"*) [ "$s" -eq 0 ] || exit 0; IFS= read -r l && [ "$l" = "$u" ] || exit 0;; esac; done`

/**
 * The command server of bbackup before {@link SERVE} (banner {@link SERVE_STREAMS_BANNER}): its
 * commands' output went to files in a temporary directory, counted and printed after each (two
 * more processes per request). bbackup-remote still knows it, for clients not yet updated.
 */
export const SERVE_V2 = `n=$(printf '\\n_'); n=\${n%_}; d=$(mktemp -d) || exit 1; trap 'rm -rf -- "$d"' EXIT; trap 'exit 129' HUP; trap 'exit 143' TERM; exec 4>&1; echo "${SERVE_STREAMS_BANNER}"; while IFS= read -r l; do t=; case $l in "${STREAM_TAG}"*) t=\${l%% *}; l=\${l#* }; { eval "$l"; } >"$d/o" 2>"$d/e"; s=$?;; "${OUT_TAG}"*) u=\${l%% *}; l=\${l#* }; { eval "$l"; } </dev/null 2>"$d/e"; s=$?; : >"$d/o"; printf %s "$u";; *) { eval "$l"; } </dev/null >"$d/o" 2>"$d/e" 4>&-; s=$?;; esac; set -- $(cd "$d" && wc -c o e); echo "$s $1 $3"; [ "$1$3" = 00 ] || cat -- "$d/o" "$d/e"; if [ -n "$t" ]; then [ "$s" -eq 0 ] || exit 0; IFS= read -r l && [ "$l" = "$t" ] || exit 0; fi; done`

/**
 * A session opened ahead of its command, so that its login runs while other work goes on: run as
 * `sh -c AHEAD sh`, it reads one request line as the command server does (`serveLine`) and becomes
 * that command, whose stdin is the rest of its own. sh's `read` takes a pipe's bytes one at a
 * time, so nothing after the line is consumed. At the end of its stdin without a line it exits 0.
 */
export const AHEAD = `n=$(printf '\\n_'); n=\${n%_}; IFS= read -r l || exit 0; eval "exec $l"`

/** ends each command's record in the output of the `each` script */
export const RECORD_END = '\n\u001e\n'

export type ScriptName = keyof typeof SCRIPTS

/**
 * `"$@" | zstd -c`: the command is started with `&` to learn its pid, and such a command reads
 * /dev/null (POSIX, without job control) unless it is given the filter's stdin, which `reads` does
 * through fd 5.
 */
const compressing = (reads: boolean): string =>
  `exec 4>&1${reads ? ' 5<&0' : ''}; s=$( { { "$@" ${reads ? '<&5 5<&- ' : ''}3>&- 4>&- & p=$!; echo "${PID_TAG}$p" >&2; wait "$p"; echo "$?" >&3; } | { zstd -cq -T0 3>&- >&4 4>&- || echo "$?" >&3; }; } 3>&1 ); for c in $s; do [ "$c" -eq 0 ] || exit "$c"; done`

/**
 * The stream filters of a spawned command (`compressStdout`, `decompressStdin`), run as
 * `sh -c FILTER sh ARGV...` inside {@link SPAWN_WRAPPER}; ARGV is itself a command the wrapper
 * could run. Each says the pid of ARGV's process on a later line, which replaces the wrapper's,
 * so that a kill stops the command and not the shell around it. POSIX sh has no pipefail: the
 * compressing one carries both exit statuses out through fd 3 and exits with the first failure.
 * `compressReaderStdout` is `compressStdout` for a command that reads its stdin too (a block scan
 * reads the parent revision's hashes); a send reads none, and keeps the text older bbackup-remotes know.
 */
export const FILTERS = {
  compressStdout: compressing(false),
  compressReaderStdout: compressing(true),
  decompressStdin: `zstd -dcq | { sh -c 'echo "${PID_TAG}$PPID" >&2'; exec "$@"; }`,
} as const

export type FilterName = keyof typeof FILTERS

/** the exit status with which the filter refuses a request (as ssh_filter_btrbk.sh) */
export const REFUSED_EXIT = 255
/** the first words of the filter's refusal on stderr */
export const REFUSED_TAG = 'bbackup-remote: refused:'
