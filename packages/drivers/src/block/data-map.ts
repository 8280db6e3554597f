import type { Transport } from '@bb/core'

/**
 * Where a file holds data, by lseek(SEEK_DATA / SEEK_HOLE): the kernel's answer for btrfs, XFS and
 * ext4, that sees unflushed writes too. Node has no lseek, and perl is on every Debian system
 * (perl-base is Essential), so a short perl program asks. Prints the size it saw, then "start end"
 * per data region. Anything but a regular file (a block device: its size in stat is 0, and every
 * byte of it would pass for a hole) exits 3 without an answer.
 */
const SEEK_DATA_SCRIPT = [
  'open(my $f, "<", $ARGV[0]) or die "$ARGV[0]: $!\\n";',
  'exit 3 unless -f $f;',
  'my $end = -s $f; my $o = 0; print "size $end\\n";',
  'while ($o < $end) {',
  '  my $d = sysseek($f, $o, 3); last unless defined $d; $d += 0; last if $d >= $end;',
  '  my $h = sysseek($f, $d, 4); $h = defined $h ? $h + 0 : $end; print "$d $h\\n"; $o = $h;',
  '}',
].join('\n')

/**
 * Which chunks of a file may hold data (1) and which are holes (0), or undefined when that cannot
 * be told (no perl, a device, a file of another size than `size`): then every chunk is read. Holes
 * read as zeros, so skipping them changes nothing but the time: a sparse 10 GiB image with 100 MiB
 * of data is read as 100 MiB.
 */
export const dataChunks = async (at: Transport, path: string, size: number, chunkSize: number): Promise<Uint8Array | undefined> => {
  const r = await at.exec(['perl', '-e', SEEK_DATA_SCRIPT, path])
  if (r.isErr() || r.value.exitCode !== 0) return undefined
  // the map is of the file that was asked about only when it is that size: a size of 0 would make every chunk a hole
  if (!r.value.stdout.startsWith(`size ${size}\n`)) return undefined
  const map = new Uint8Array(Math.ceil(size / chunkSize))
  for (const line of r.value.stdout.split('\n')) {
    const m = /^(\d+) (\d+)$/.exec(line)
    if (m === null) continue
    const start = Number(m[1])
    const end = Math.min(Number(m[2]), size)
    for (let i = Math.floor(start / chunkSize); i * chunkSize < end; i++) map[i] = 1
  }
  return map
}
