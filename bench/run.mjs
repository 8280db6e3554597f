#!/usr/bin/env node
// `pnpm bench`: bbackup against the plain tools, measured in the same run on the same data, printed
// as ratios (bbackup time / plain tool time). Not a test: nothing here passes or fails.
//
//   BENCH_FILES (20000)  BENCH_MB (1500)  BENCH_REPEAT (3)  BENCH_DIR (bench/.work)
//   BENCH_BLOCK_GB (4): the image of the block driver's rounds;  BENCH_ONLY=block: those rounds alone
//   BENCH_ONLY=rsync: the rsync driver's rounds alone (with rsnapshot);  BENCH_ONLY=rsyncd: the rsync daemon rounds alone;  BENCH_ONLY=btrfs: the btrfs driver's rounds alone
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const FILES = Number(process.env.BENCH_FILES ?? 20_000)
const MB = Number(process.env.BENCH_MB ?? 1500)
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3)
const work = process.env.BENCH_DIR ?? join(root, 'bench/.work')
const cli = join(root, 'packages/cli/bin/bbackup.cjs')
const asRoot = process.getuid?.() === 0

const has = (tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0
const run = (file, args, options = {}) => {
  const r = spawnSync(file, args, { stdio: ['ignore', 'ignore', 'pipe'], ...options })
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.status}: ${r.stderr?.toString().slice(-500)}`)
}
const seconds = (fn) => {
  // start with nothing dirty in the page cache: sync -f (syncfs) would otherwise pay for the runs before it
  spawnSync('sync')
  const start = process.hrtime.bigint()
  fn()
  return Number(process.hrtime.bigint() - start) / 1e9
}
/** how busy the CPUs were while `fn` ran (0..1, all cores), from /proc/stat: whether a run was CPU-bound */
const busy = (fn) => {
  const ticks = () => {
    const [, ...n] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number)
    return { idle: n[3] + n[4], all: n.slice(0, 8).reduce((a, b) => a + b, 0) }
  }
  const before = ticks()
  const value = fn()
  const after = ticks()
  return { value, busy: 1 - (after.idle - before.idle) / (after.all - before.all) }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const rows = []
const report = (what, ours, theirs, peer) => {
  rows.push({ what, bbackup: ours, peer, theirs, ratio: ours / theirs })
  console.log(`  ${what}: bbackup ${ours.toFixed(3)} s, ${peer} ${theirs.toFixed(3)} s, ratio ${(ours / theirs).toFixed(3)}`)
}

// NODE_EXTRA_CA_CERTS makes every start of Node 20 read and parse the file it names, before any of
// bbackup's code runs (docs/install.md): set for this shell's other tools, it is not bbackup's and not
// what a job under cron or systemd has, so the runs here go without it, and what it costs is printed
if (process.env.NODE_EXTRA_CA_CERTS) {
  const nodeStart = (env) => median(Array.from({ length: 11 }, () => seconds(() => execFileSync(process.execPath, ['-e', '0'], { env }))))
  const withIt = nodeStart(process.env)
  delete process.env.NODE_EXTRA_CA_CERTS
  const without = nodeStart(process.env)
  console.log(`bench: NODE_EXTRA_CA_CERTS is set here, and costs each start of Node ${((withIt - without) * 1000).toFixed(0)} ms (node -e 0: ${(withIt * 1000).toFixed(0)} ms with it, ${(without * 1000).toFixed(0)} without); bbackup runs without it below, as under cron or systemd`)
}

if (!has('rsync')) {
  console.error('bench: rsync is not installed: apt-get install rsync')
  process.exit(1)
}

/**
 * The block driver: a GB-sized image of random data on a loop-mounted btrfs, every run from a cold
 * page cache. A full backup against cp of the image, an incremental after 1% of the chunks changed
 * against cat of the image (the read-bound limit), the hashing throughput per thread, peak memory.
 */
async function blockBench() {
  if (!asRoot || !has('mkfs.btrfs')) {
    console.log('\nblock driver: skipped (needs root and btrfs-progs: apt-get install btrfs-progs)')
    return
  }
  const GB = Number(process.env.BENCH_BLOCK_GB ?? 4)
  const fsImage = join(work, 'block-fs.img')
  const mnt = join(work, 'block')
  mkdirSync(mnt, { recursive: true })
  run('truncate', ['-s', `${GB * 3 + 2}G`, fsImage])
  run('mkfs.btrfs', ['-q', '-f', fsImage])
  run('mount', ['-o', 'loop', fsImage, mnt])
  try {
    const vm = join(mnt, 'vm.img')
    const piece = randomBytes(64 * 1024 * 1024)
    const fd = openSync(vm, 'w')
    for (let i = 0; i < GB * 16; i++) {
      piece.writeUInt32LE(i, 0) // no two chunks alike
      writeSync(fd, piece)
    }
    closeSync(fd)
    const cold = (fn) => {
      spawnSync('sync')
      writeFileSync('/proc/sys/vm/drop_caches', '3')
      return seconds(fn)
    }
    // the CLI, reporting its peak memory (resident set, worker threads included) on stderr
    const ours = (args) => {
      const r = spawnSync(process.execPath, ['-e', "process.on('exit', () => process.stderr.write(`maxrss ${process.resourceUsage().maxRSS}\\n`)); import(process.env.BBACKUP_CLI)", 'bbackup', ...args], {
        env: { ...process.env, BBACKUP_CLI: cli }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024,
      })
      if (r.status !== 0) throw new Error(`bbackup ${args.join(' ')} exited ${r.status}: ${r.stderr.slice(-500)}`)
      return { report: JSON.parse(r.stdout), maxRssKiB: Number(/maxrss (\d+)/.exec(r.stderr)?.[1]) }
    }
    // the first GBs written to a fresh filesystem on a sparse loop image take about twice as long
    // (measured: a first cp ~20 s, the next ~10 s): one copy is written and removed before anything
    // is timed, then cp and bbackup each write where the one before them was removed
    const copy = () => run('sh', ['-c', `cp --reflink=never "${vm}" "${mnt}/copy.img" && sync -f "${mnt}/copy.img"`])
    const removeCopy = () => run('sh', ['-c', `rm "${mnt}/copy.img" && sync`])
    copy()
    removeCopy()
    // REPEAT full rounds, cp then bbackup, medians (one of each varies by 20%); each round but the
    // last removes its volume (and the base copy it kept beside the image), so that the next writes
    // where it was
    const dir = join(mnt, 'backy')
    const cps = []
    const fulls = []
    let full
    for (let round = 0; round < REPEAT; round++) {
      cps.push(cold(copy))
      removeCopy()
      run(process.execPath, [cli, 'init', '-b', dir, vm])
      fulls.push(cold(() => { full = ours(['backup', '-b', dir, '-f', '--json']) }))
      if (round < REPEAT - 1) run('sh', ['-c', `rm -rf "${dir}" "${mnt}"/.vm.img.bbackup-* && sync`])
    }
    const [cp, oursFull] = [median(cps), median(fulls)]
    // REPEAT rounds: 1% of the chunks get a 4 KiB write each, then a backup; cat as often
    const chunks = GB * 256
    let incr
    const oursIncr = []
    const cat = []
    for (let round = 0; round < REPEAT; round++) {
      const h = openSync(vm, 'r+')
      for (let i = 0; i < Math.max(1, Math.round(chunks / 100)); i++) writeSync(h, randomBytes(4096), 0, 4096, Math.floor(Math.random() * chunks) * 4 * 1024 * 1024 + 8192)
      closeSync(h)
      oursIncr.push(cold(() => { incr = ours(['backup', '-b', dir, '-f', '--json']) }))
      cat.push(cold(() => run('sh', ['-c', `cat "${vm}" > /dev/null`])))
    }
    const s = full.report.revision.stats
    console.log(`\nblock driver, ${GB} GiB image on loop-mounted btrfs, cold cache (goals: full vs cp <= 1.2, incremental vs cat <= 1.25, memory < 256 MiB)`)
    report(`full backup vs cp --reflink=never + sync (medians of ${REPEAT})`, oursFull, cp, 'cp')
    report(`incremental, 1% of chunks changed, vs cat image > /dev/null (medians of ${REPEAT})`, median(oursIncr), median(cat), 'cat')
    console.log(`  hashing: ${(s.bytesHashed / s.hashSeconds / 1024 / 1024).toFixed(0)} MiB/s per thread, ${s.threads} threads; incremental wrote ${incr.report.revision.stats.chunksWritten} chunks, read ${(incr.report.revision.stats.bytesRead / 1024 / 1024).toFixed(0)} MiB (${((incr.report.revision.stats.bytesUnchanged ?? 0) / 1024 / 1024).toFixed(0)} MiB known unchanged from the extents)`)
    console.log(`  peak memory: full ${(full.maxRssKiB / 1024).toFixed(0)} MiB, incremental ${(incr.maxRssKiB / 1024).toFixed(0)} MiB`)
    rows.push({ what: 'block peak memory MiB', bbackup: full.maxRssKiB / 1024 })
  } finally {
    spawnSync('umount', [mnt])
    rmSync(fsImage, { force: true })
  }
}

if (process.env.BENCH_ONLY === 'block') {
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work, { recursive: true })
  await blockBench()
  rmSync(work, { recursive: true, force: true })
  console.log(`\n${JSON.stringify({ rows })}`)
  process.exit(0)
}

// --- the data: FILES files, MB in all, in directories of 200 ---------------------------------
rmSync(work, { recursive: true, force: true })
const source = join(work, 'source')
const perFile = Math.max(1, Math.floor((MB * 1024 * 1024) / FILES))
console.log(`bench: generating ${FILES} files, ${MB} MB in ${source}`)
const block = randomBytes(Math.min(perFile * 4, 64 * 1024 * 1024))
for (let i = 0; i < FILES; i++) {
  const dir = join(source, `d${Math.floor(i / 200)}`)
  if (i % 200 === 0) mkdirSync(dir, { recursive: true })
  const size = Math.max(1, Math.floor(perFile * (0.5 + ((i * 7919) % 100) / 100)))
  const offset = (i * 4099) % Math.max(1, block.length - size)
  writeFileSync(join(dir, `f${i}`), block.subarray(offset, offset + size))
}
const changeOnePercent = (round, tree = source) => {
  for (let i = round; i < FILES; i += 100) writeFileSync(join(tree, `d${Math.floor(i / 200)}`, `f${i}`), `changed in round ${round}\n`)
}
// the same rsync flags bbackup uses, so the comparison is of the work around rsync
const flags = ['-a', ...(asRoot ? ['-H', '-A', '-X', '--numeric-ids'] : []), '--one-file-system', '--delete']
run('tar', ['-cf', '/dev/null', '-C', source, '.']) // warm the page cache for everyone alike

/** runs the steps starting with the r-th (round r of REPEAT): each goes first once in three rounds */
const rotated = (r, steps) => {
  for (let i = 0; i < steps.length; i++) steps[(r + i) % steps.length]()
}

if (process.env.BENCH_ONLY === 'rsyncd') {
  rsyncdBench()
  rmSync(work, { recursive: true, force: true })
  console.log(`\n${JSON.stringify({ files: FILES, mb: MB, repeat: REPEAT, rows })}`)
  process.exit(0)
}

// --- rsync driver: full and 1% incremental -------------------------------------------------
if (process.env.BENCH_ONLY !== 'btrfs') {
  console.log('\nrsync driver (ratio goal <= 1.05)')
  const full = { ours: [], plain: [], plainSync: [] }
  const incr = { ours: [], plain: [], plainSync: [] }
  for (let r = 0; r < REPEAT; r++) {
    const dir = join(work, `round${r}`)
    mkdirSync(dir)
    const plain = join(dir, 'plain')
    mkdirSync(plain)
    const ours = ['run', source, join(dir, 'bbackup'), '--state-dir', join(dir, 'state'), '-q']
    // each round in another order: the disk writes the third copy of a round slower than the first
    // (its cache on the host fills), which a fixed order would charge to the same one every time
    rotated(r, [
      () => full.plain.push(seconds(() => run('rsync', [...flags, `${source}/`, join(plain, 'a/')]))),
      () => full.plainSync.push(seconds(() => { run('rsync', [...flags, `${source}/`, join(plain, 'a2/')]); run('sync', ['-f', plain]) })),
      () => full.ours.push(seconds(() => run(process.execPath, [cli, ...ours]))),
    ])
    changeOnePercent(r + 1)
    spawnSync('sleep', ['1']) // a new name needs a new second
    rotated(r, [
      () => incr.plain.push(seconds(() => run('rsync', [...flags, `--link-dest=${join(plain, 'a')}`, `${source}/`, join(plain, 'b/')]))),
      () => incr.plainSync.push(seconds(() => { run('rsync', [...flags, `--link-dest=${join(plain, 'a')}`, `${source}/`, join(plain, 'b2/')]); run('sync', ['-f', plain]) })),
      () => incr.ours.push(seconds(() => run(process.execPath, [cli, ...ours]))),
    ])
    rmSync(dir, { recursive: true, force: true })
  }
  report('full backup vs rsync -a', median(full.ours), median(full.plain), 'rsync')
  report('full backup vs rsync -a + sync -f', median(full.ours), median(full.plainSync), 'rsync+sync')
  report('1% incremental vs rsync --link-dest', median(incr.ours), median(incr.plain), 'rsync --link-dest')
  report('1% incremental vs rsync --link-dest + sync -f', median(incr.ours), median(incr.plainSync), 'rsync --link-dest+sync')

  if (has('rsnapshot')) {
    const dir = join(work, 'rsnapshot')
    mkdirSync(dir)
    const conf = join(dir, 'rsnapshot.conf')
    // rsnapshot's config is TAB-separated
    writeFileSync(conf, [
      'config_version\t1.2', `snapshot_root\t${dir}/root/`, 'cmd_rsync\t/usr/bin/rsync', 'link_dest\t1', 'retain\talpha\t10',
      `lockfile\t${dir}/rsnapshot.pid`, `backup\t${source}/\tlocalhost/`, '',
    ].join('\n'))
    const ours = ['run', source, join(dir, 'bbackup'), '--state-dir', join(dir, 'state'), '-q']
    const rsnapFull = seconds(() => run('rsnapshot', ['-c', conf, 'alpha']))
    const oursFull = seconds(() => run(process.execPath, [cli, ...ours]))
    changeOnePercent(99)
    const rsnapIncr = seconds(() => run('rsnapshot', ['-c', conf, 'alpha']))
    spawnSync('sleep', ['1'])
    const oursIncr = seconds(() => run(process.execPath, [cli, ...ours]))
    console.log('\nrsnapshot (Debian package), same data, link_dest 1')
    report('full backup vs rsnapshot', oursFull, rsnapFull, 'rsnapshot')
    report('1% incremental vs rsnapshot', oursIncr, rsnapIncr, 'rsnapshot')
  } else {
    console.log('\nrsnapshot: not installed, skipped (apt-get install rsnapshot)')
  }
}

// --- rsync daemon: a module on 127.0.0.1, the daemon making the hard links ---------------------
function rsyncdBench() {
  const dir = join(work, 'rsyncd')
  const module = join(dir, 'module')
  mkdirSync(module, { recursive: true })
  const port = 20_000 + (process.pid % 20_000)
  writeFileSync(join(dir, 'secrets'), 'backup:bench\n', { mode: 0o600 })
  writeFileSync(join(dir, 'password'), 'bench\n', { mode: 0o600 })
  writeFileSync(join(dir, 'rsyncd.conf'), [
    'socket options = TCP_NODELAY', 'reverse lookup = no', 'use chroot = no', `uid = ${process.getuid?.() ?? 0}`, `gid = ${process.getgid?.() ?? 0}`,
    `log file = ${join(dir, 'rsyncd.log')}`, '[backups]', `path = ${module}`, 'read only = no', 'auth users = backup', `secrets file = ${join(dir, 'secrets')}`, '',
  ].join('\n'))
  const daemon = spawn('rsync', ['--daemon', '--no-detach', `--config=${join(dir, 'rsyncd.conf')}`, `--port=${port}`, '--address=127.0.0.1'], { stdio: 'ignore' })
  try {
    for (let i = 0; i < 100 && spawnSync('rsync', ['--list-only', `rsync://127.0.0.1:${port}/`], { stdio: 'ignore' }).status !== 0; i++) spawnSync('sleep', ['0.05'])
    const url = (path) => `rsync://backup@127.0.0.1:${port}/backups/${path}`
    // what bbackup gives every daemon connection, so the comparison is of the work around rsync
    const connection = ['--contimeout=30', '--timeout=300', '--sockopts=TCP_NODELAY', `--password-file=${join(dir, 'password')}`]
    const ours = (r) => ['run', source, url(`bbackup${r}`), '--password-file', join(dir, 'password'), '--state-dir', join(dir, `state${r}`), '-q']
    const daemonFull = { ours: [], plain: [], plainSync: [] }
    const daemonIncr = { ours: [], plain: [], plainSync: [] }
    for (let r = 0; r < REPEAT; r++) {
      rotated(r, [
        () => daemonFull.plain.push(seconds(() => run('rsync', [...flags, ...connection, '--mkpath', `${source}/`, url(`plain${r}/a/`)]))),
        // bbackup has the daemon flush what it writes (--fsync): against rsync followed by a flush of the module's filesystem
        () => daemonFull.plainSync.push(seconds(() => { run('rsync', [...flags, ...connection, '--mkpath', `${source}/`, url(`plain${r}/a2/`)]); run('sync', ['-f', module]) })),
        () => daemonFull.ours.push(seconds(() => run(process.execPath, [cli, ...ours(r)]))),
      ])
      changeOnePercent(50 + r)
      spawnSync('sleep', ['1'])
      rotated(r, [
        () => daemonIncr.plain.push(seconds(() => run('rsync', [...flags, ...connection, '--link-dest=../a', `${source}/`, url(`plain${r}/b/`)]))),
        () => daemonIncr.plainSync.push(seconds(() => { run('rsync', [...flags, ...connection, '--link-dest=../a', `${source}/`, url(`plain${r}/b2/`)]); run('sync', ['-f', module]) })),
        () => daemonIncr.ours.push(seconds(() => run(process.execPath, [cli, ...ours(r)]))),
      ])
    }
    console.log('\nrsync daemon module on 127.0.0.1 (ratio goal <= 1.05 for the incremental)')
    report('full backup to a module vs rsync -a', median(daemonFull.ours), median(daemonFull.plain), 'rsync to the module')
    report('full backup to a module vs rsync -a + sync -f on the server', median(daemonFull.ours), median(daemonFull.plainSync), 'rsync+sync')
    report('1% incremental to a module vs rsync --link-dest', median(daemonIncr.ours), median(daemonIncr.plain), 'rsync --link-dest to the module')
    report('1% incremental to a module vs rsync --link-dest + sync -f on the server', median(daemonIncr.ours), median(daemonIncr.plainSync), 'rsync --link-dest+sync')
  } finally {
    daemon.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}
if (process.env.BENCH_ONLY === 'rsync') {
  rmSync(work, { recursive: true, force: true })
  console.log(`\n${JSON.stringify({ files: FILES, mb: MB, repeat: REPEAT, rows })}`)
  process.exit(0)
}
if (process.env.BENCH_ONLY === undefined) rsyncdBench()

// --- btrfs driver (root, btrfs-progs): full send, incremental vs btrbk, two targets ------------
const btrfsReady = asRoot && has('btrfs') && has('mkfs.btrfs')
if (!btrfsReady) {
  console.log('\nbtrfs driver: skipped (needs root and btrfs-progs: apt-get install btrfs-progs)')
} else {
  const image = join(work, 'btrfs.img')
  const mnt = join(work, 'btrfs')
  mkdirSync(mnt)
  run('truncate', ['-s', `${Math.max(1024, MB * 7 + 1024)}M`, image])
  run('mkfs.btrfs', ['-q', '-f', image])
  run('mount', ['-o', 'loop', image, mnt])
  try {
    const src = join(mnt, 'src')
    const sh = (script) => run('sh', ['-c', script])
    const btrfsCmd = (...args) => run('btrfs', args)
    btrfsCmd('subvolume', 'create', src)
    run('cp', ['-a', `${source}/.`, `${src}/`])
    const commit = () => btrfsCmd('filesystem', 'sync', mnt)
    commit()
    const ours = (targets, extra = []) => run(process.execPath, [cli, 'run', src, ...targets, '--state-dir', join(work, 'btrfs-state'), '-q', ...extra])
    const clear = (...paths) => {
      for (const p of paths) sh(`for s in "${p}"/*; do [ -d "$s" ] && btrfs subvolume delete -c "$s" >/dev/null; done; rm -rf "${p}"`)
      rmSync(join(work, 'btrfs-state'), { recursive: true, force: true })
      sh(`for s in "${src}"/.snapshots/*; do [ -d "$s" ] && btrfs subvolume delete -c "$s" >/dev/null; done; true`)
      commit()
    }
    console.log('\nbtrfs driver, on loop-mounted btrfs (goals: full <= 1.05, incremental vs btrbk <= 1.0, two targets <= 1.15)')
    // full: snapshot -r + send | receive by hand, against bbackup run
    const hand = join(mnt, 'hand')
    const handSnaps = join(mnt, 'hand-snaps')
    mkdirSync(hand)
    mkdirSync(handSnaps)
    const handRun = (name, flush) => seconds(() => {
      btrfsCmd('subvolume', 'snapshot', '-r', src, join(handSnaps, name))
      sh(`btrfs send -q ${handSnaps}/${name} | btrfs receive ${hand}`)
      if (flush) commit()
    })
    // by hand before and after bbackup, each time into an empty target: the order favours no one
    const handBefore = handRun('h1', false)
    const handSyncBefore = handRun('h2', true)
    clear(hand, handSnaps)
    mkdirSync(hand)
    mkdirSync(handSnaps)
    const oursFull = seconds(() => ours([join(mnt, 'one')]))
    clear(join(mnt, 'one'))
    const byHand = (handBefore + handRun('h1', false)) / 2
    const byHandSync = (handSyncBefore + handRun('h2', true)) / 2
    clear(hand, handSnaps)
    ours([join(mnt, 'one')])
    report('full send vs snapshot -r + send | receive', oursFull, byHand, 'by hand')
    report('full send vs snapshot -r + send | receive + filesystem sync', oursFull, byHandSync, 'by hand+sync')
    clear(join(mnt, 'one'))
    // two targets that share the parent: one send feeds both
    const oursTwo = seconds(() => ours([join(mnt, 'two-a'), join(mnt, 'two-b')]))
    clear(join(mnt, 'two-a'), join(mnt, 'two-b'))
    // without the shared stream: the source read twice, one send per target
    const twoSends = seconds(() => { ours([join(mnt, 'two-a')]); ours([join(mnt, 'two-b')], ['--no-snapshot']) })
    clear(join(mnt, 'two-a'), join(mnt, 'two-b'))
    report('full send to two targets vs to one (all on one disk: the writes double)', oursTwo, oursFull, 'one target')
    report('full send to two targets vs two sends one after the other', oursTwo, twoSends, 'two sends')
    // the same on two disks of their own (loop images in RAM): what one disk cannot show, whether one send feeds both at the pace of one
    if (existsSync('/dev/shm')) {
      const shm = mkdtempSync('/dev/shm/bbackup-bench-')
      const disks = []
      try {
        for (const n of ['ram-a', 'ram-b']) {
          const img = join(shm, `${n}.img`)
          const m = join(work, n)
          mkdirSync(m)
          run('truncate', ['-s', `${MB * 2 + 512}M`, img])
          run('mkfs.btrfs', ['-q', '-f', img])
          run('mount', ['-o', 'loop', img, m])
          disks.push(m)
        }
        const [a, b] = disks.map((m) => join(m, 'backups'))
        const oneRam = busy(() => seconds(() => ours([a])))
        clear(a)
        const twoRam = busy(() => seconds(() => ours([a, b])))
        clear(a, b)
        report('full send to two targets on two RAM-backed disks vs to one of them', twoRam.value, oneRam.value, 'one target')
        // each receive (and each loop device) costs as much CPU as the send: where the CPUs are all busy, the time is theirs, not the source's
        console.log(`    CPUs busy: ${Math.round(twoRam.busy * 100)}% of ${availableParallelism()} with two targets, ${Math.round(oneRam.busy * 100)}% with one`)
      } finally {
        for (const m of disks) spawnSync('umount', [m])
        rmSync(shm, { recursive: true, force: true })
      }
    }

    if (has('btrbk')) {
      // the same job for btrbk and for bbackup: snapshot, send incrementally, keep everything; each
      // keeps its snapshots in a folder beside the source, as btrbk's snapshot_dir is (bbackup's
      // default, btrfs-backup's, is inside the source: what that costs is measured after)
      const conf = join(work, 'btrbk.conf')
      mkdirSync(join(mnt, 'btrbk-snaps'))
      mkdirSync(join(mnt, 'bb-snaps'))
      const incremental = () => ours([join(mnt, 'inc')], ['--snapshot-folder', join(mnt, 'bb-snaps')])
      mkdirSync(join(mnt, 'btrbk-target'))
      writeFileSync(conf, ['timestamp_format long-iso', 'snapshot_preserve_min all', 'target_preserve_min all', `volume ${mnt}`, '  snapshot_dir btrbk-snaps', '  subvolume src', `    target ${join(mnt, 'btrbk-target')}`, ''].join('\n'))
      const btrbk = () => run('btrbk', ['-c', conf, '-q', 'run'])
      btrbk()
      incremental()
      // REPEAT rounds of a 1% change, each tool in turn first; bbackup flushes the target filesystem before it records a backup, btrbk does not
      const rounds = { ours: [], theirs: [], theirsSync: [], oursIdle: [], theirsIdle: [] }
      for (let r = 0; r < REPEAT; r++) {
        const both = [['theirs', btrbk], ['ours', incremental]]
        if (r % 2) both.reverse()
        changeOnePercent(50 + r, src)
        commit()
        spawnSync('sleep', ['1'])
        for (const [who, fn] of both) rounds[who].push(seconds(fn))
        changeOnePercent(60 + r, src)
        commit()
        spawnSync('sleep', ['1'])
        rounds.theirsSync.push(seconds(() => { btrbk(); commit() }))
        incremental()
        spawnSync('sleep', ['1'])
        for (const [who, fn] of both) rounds[`${who}Idle`].push(seconds(fn))
      }
      console.log(`\nbtrbk (Debian package), same subvolume, incremental after a 1% change (medians of ${REPEAT})`)
      report('1% incremental run vs btrbk run', median(rounds.ours), median(rounds.theirs), 'btrbk')
      report('1% incremental run vs btrbk run + filesystem sync', median(rounds.ours), median(rounds.theirsSync), 'btrbk+sync')
      report('run with nothing changed (fixed overhead) vs btrbk run', median(rounds.oursIdle), median(rounds.theirsIdle), 'btrbk')
      // bbackup's default snapshot folder is inside the source (<source>/.snapshots): a snapshot taken into it, against one beside the source
      const snapshotInto = (folder) => {
        const times = []
        for (let i = 0; i < 5; i++) {
          commit()
          times.push(seconds(() => btrfsCmd('subvolume', 'snapshot', '-r', src, join(folder, `timed${i}`))))
          btrfsCmd('subvolume', 'delete', '-c', join(folder, `timed${i}`))
        }
        return median(times)
      }
      mkdirSync(join(src, '.snapshots'), { recursive: true })
      const [inside, beside] = [snapshotInto(join(src, '.snapshots')), snapshotInto(join(mnt, 'bb-snaps'))]
      console.log(`    one btrfs subvolume snapshot -r into the default folder inside the source: ${(inside * 1000).toFixed(1)} ms; into a folder beside it (above): ${(beside * 1000).toFixed(1)} ms`)
    } else {
      console.log('\nbtrbk: not installed, skipped (apt-get install btrbk)')
    }

    // over ssh to 127.0.0.1: bbackup run against send -p | ssh host btrfs receive by hand, and the logins it takes
    if (has('sshd') && has('ssh')) {
      const { startSshd } = await import(join(root, 'packages/testkit/dist/index.js'))
      const sshd = await startSshd()
      try {
        const sshArgs = ['--ssh-identity', sshd.identityFile, '--ssh-known-hosts', sshd.knownHostsFile]
        const remote = `ssh://root@127.0.0.1:${sshd.port}${join(mnt, 'over-ssh')}`
        const sshHand = `ssh -p ${sshd.port} -i ${sshd.identityFile} -o UserKnownHostsFile=${sshd.knownHostsFile} -o BatchMode=yes root@127.0.0.1`
        // bbackup's snapshots beside the source, as the ones by hand are
        const viaSsh = (extra = []) => run(process.execPath, [cli, 'run', src, remote, '--state-dir', join(work, 'ssh-state'), '--snapshot-folder', join(mnt, 'ssh-snaps'), '-q', ...extra, ...sshArgs])
        mkdirSync(join(mnt, 'ssh-snaps'))
        mkdirSync(join(mnt, 'ssh-hand'))
        mkdirSync(join(mnt, 'ssh-hand-snaps'))
        viaSsh()
        btrfsCmd('subvolume', 'snapshot', '-r', src, join(mnt, 'ssh-hand-snaps', 'h0'))
        sh(`btrfs send -q ${mnt}/ssh-hand-snaps/h0 | ${sshHand} btrfs receive ${mnt}/ssh-hand`)
        let handSnapshots = 1
        /** REPEAT rounds of a 1% change: bbackup with `extra`, then by hand with `pipe` between send and ssh (`receive` on the far side) */
        const rounds = async (seed, extra, pipe, receive) => {
          const ours = []
          const hand = []
          const logins = []
          const sessions = []
          for (let i = 0; i < REPEAT; i++) {
            changeOnePercent(seed + i, src)
            commit()
            spawnSync('sleep', ['1'])
            const before = await sshd.logins()
            const sessionsBefore = await sshd.sessions()
            ours.push(seconds(() => viaSsh(extra)))
            logins.push((await sshd.logins()) - before)
            sessions.push((await sshd.sessions()) - sessionsBefore)
            const [prev, next] = [`h${handSnapshots - 1}`, `h${handSnapshots++}`]
            hand.push(seconds(() => {
              btrfsCmd('subvolume', 'snapshot', '-r', src, join(mnt, 'ssh-hand-snaps', next))
              sh(`btrfs send -q -p ${mnt}/ssh-hand-snaps/${prev} ${mnt}/ssh-hand-snaps/${next} | ${pipe}${sshHand} ${receive}`)
            }))
          }
          return { ours: median(ours), hand: median(hand), logins, sessions }
        }
        const plain = await rounds(60, [], '', `btrfs receive ${mnt}/ssh-hand`)
        // bbackup flushes the target filesystem before it records a backup (btrfs filesystem sync): the same by hand
        const synced = await rounds(65, [], '', `'btrfs receive ${mnt}/ssh-hand && btrfs filesystem sync ${mnt}/ssh-hand'`)
        console.log(`\nbtrfs over ssh to 127.0.0.1 (goal <= 1.05; ssh logins per run: ${plain.logins.join(', ')}, goal 1; sessions per run: ${plain.sessions.join(', ')})`)
        report('1% incremental run over ssh vs send -p | ssh host btrfs receive', plain.ours, plain.hand, 'by hand')
        report('1% incremental run over ssh vs send -p | ssh host btrfs receive + filesystem sync', synced.ours, synced.hand, 'by hand+sync')
        if (has('zstd')) {
          // --stream-compress zstd against the same pipeline by hand, zstd on both sides (the data is random: this is the cost of the filters)
          const zstd = await rounds(70, ['--stream-compress', 'zstd'], 'zstd -cq -T0 | ', `'zstd -dcq | btrfs receive ${mnt}/ssh-hand'`)
          report('1% incremental over ssh, --stream-compress zstd vs send -p | zstd | ssh host zstd -d | btrfs receive', zstd.ours, zstd.hand, 'by hand with zstd')
        }
        // a pull: the snapshot and the send on the host, the receive here; by hand one ssh command does both
        const pulled = join(mnt, 'pulled')
        const pulledHand = join(mnt, 'pulled-hand')
        mkdirSync(pulled)
        mkdirSync(pulledHand)
        mkdirSync(join(mnt, 'pull-snaps'))
        const pull = () => run(process.execPath, [cli, 'run', `ssh://root@127.0.0.1:${sshd.port}${src}`, pulled, '--state-dir', join(work, 'pull-state'), '--snapshot-folder', join(mnt, 'pull-snaps'), '-q', ...sshArgs])
        pull()
        sh(`btrfs send -q ${mnt}/ssh-hand-snaps/h${handSnapshots - 1} | btrfs receive ${pulledHand}`)
        const pulls = { ours: [], hand: [], sessions: [] }
        for (let i = 0; i < REPEAT; i++) {
          changeOnePercent(75 + i, src)
          commit()
          spawnSync('sleep', ['1'])
          const sessionsBefore = await sshd.sessions()
          pulls.ours.push(seconds(pull))
          pulls.sessions.push((await sshd.sessions()) - sessionsBefore)
          const [prev, next] = [`h${handSnapshots - 1}`, `h${handSnapshots++}`]
          pulls.hand.push(seconds(() => sh(`${sshHand} 'btrfs subvolume snapshot -r ${src} ${mnt}/ssh-hand-snaps/${next} >/dev/null && btrfs send -q -p ${mnt}/ssh-hand-snaps/${prev} ${mnt}/ssh-hand-snaps/${next}' | btrfs receive ${pulledHand} && btrfs filesystem sync ${pulledHand}`)))
        }
        console.log(`  (pull: sessions per run: ${pulls.sessions.join(', ')}, goal 1)`)
        report('1% incremental pull over ssh vs ssh host snapshot + send -p | btrfs receive + filesystem sync', median(pulls.ours), median(pulls.hand), 'by hand+sync')
      } finally {
        await sshd.stop()
      }
    } else {
      console.log('\nbtrfs over ssh: skipped (apt-get install openssh-server openssh-client)')
    }
  } finally {
    spawnSync('umount', [mnt])
  }
}

if (process.env.BENCH_ONLY === 'btrfs') {
  rmSync(work, { recursive: true, force: true })
  console.log(`\n${JSON.stringify({ files: FILES, mb: MB, repeat: REPEAT, rows })}`)
  process.exit(0)
}
await blockBench()

// --- start-up ---------------------------------------------------------------------------------
console.log('\nstart-up (goal <= 2)')
const times = (args) => Array.from({ length: 15 }, () => seconds(() => execFileSync(process.execPath, args)))
report('bbackup --version vs node -e 0', median(times([cli, '--version'])), median(times(['-e', '0'])), 'node -e 0')

// --- retention ----------------------------------------------------------------------------------
console.log('\nplanRetention on 100,000 snapshots (goal < 1 s)')
const { planRetention } = await import(join(root, 'packages/core/dist/index.js'))
const snapshots = Array.from({ length: 100_000 }, (_, i) => ({ name: `s${i}`, time: new Date(Date.UTC(2015, 0, 1) + i * 3_600_000) }))
const now = new Date(Date.UTC(2015, 0, 1) + 100_001 * 3_600_000)
for (const [label, policy] of [['btrbk 24h 7d 4w 12m *y', { preserveMin: '2d', preserve: '24h 7d 4w 12m *y' }], ['rotate-backups', { hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 'always' }], ['keepLast', { keepLast: 50 }]]) {
  const t = seconds(() => planRetention(snapshots, policy, { now, timeZone: 'UTC' }))
  rows.push({ what: `planRetention ${label}`, bbackup: t })
  console.log(`  ${label}: ${t.toFixed(3)} s`)
}

rmSync(work, { recursive: true, force: true })
console.log(`\n${JSON.stringify({ files: FILES, mb: MB, repeat: REPEAT, rows })}`)
