// virtio-ts benchmarks. Every figure is printed beside a baseline measured in the same run.
//
//   node [--expose-gc] tools/bench/dist/main.js [split] [packed] [heap] [blk] [vhost] [wake] [net] [vhost-net] [interpose] [log-open] [guest-dd] [balloon] [--quick]
//
// With more than one bench (or none named: every default one), each runs in a child process of
// its own with the same Node flags, so no bench inherits another's JIT or heap state.
//
// split: split-ring round trips per second, one thread (in shared memory, and in a plain
//        ArrayBuffer where the ring needs no Atomics) and two workers with Atomics doorbells,
//        beside c/split_ring.c (same shape) compiled with gcc in this run; ratio TS / C. Two
//        floors in the same run: the same calls written minimal (split-api-floor.ts) and the
//        same work with no API (split-floor.ts); and the rows again with used.idx published
//        once per batch (use + publishUsed; C's single-deferred).
// heap:  heap growth and garbage collections over 1,000,000 operations of each hot loop: ring
//        round trips, blk requests (MemoryDisk, depth 32) and virtio-net frames.
// blk:   4 KiB random IOPS, BlkDriver -> MMIO -> BlkDevice -> FileDisk vs raw positional I/O on
//        the same file, queue depth 1 and 32; ratio TS path / raw.
// vhost: the blk workload at depth 32 with the device in the VMM thread vs in a vhost worker
//        (Atomics kick/call), beside raw positional reads in the same run; ratio to raw.
// wake:  the cost of one cross-thread wake-up (a kick or an interrupt that finds the other side
//        asleep): SharedDoorbell ping-pong between two workers and between the main thread
//        (Atomics.waitAsync) and a worker, beside c/wake.c (two pthreads, futex) in this run.
// vhost-net: 64 B and 1500 B frames A -> Switch -> B with the NetDevices in the VMM thread vs in
//        vhost workers (SharedArrayBuffer frame channels to the VMM-side Switch port).
// net:   64 B and 1500 B frames NetDriver A -> MMIO -> NetDevice -> Switch -> NetDevice -> NetDriver B,
//        one thread, vs a bare Switch, a bare VethPair and a MessageChannel in the same run.
// interpose: 4 KiB random IOPS at depth 32 through BlkDriver -> MMIO -> BlkDevice with each
//        @virtio-ts/interpose block interposer vs the bare MemoryDisk, and frames/s through a
//        Switch with and without sniff and encryptedLink; ratios to the baselines in the same run.
// log-open: opening a snapshot log of 100k, 200k and 400k records vs reading and CRC-ing the same
//        file, and one write's cost at that many extents vs on an empty log.
// guest-dd: a Linux guest under QEMU (TCG) runs sequential O_DIRECT dd (1 MiB, read and write)
//        on our VhostUserBlkBackend vs qemu-storage-daemon on the same image; ratio ours / qsd.
//        Not in the default set (needs QEMU, a kernel and the vhost-user addon): name it.
// balloon: what a migration copies of a 256 MiB Linux guest in v86 after it wrote and freed
//        100 MiB: no balloon vs free page reporting vs reporting + 64 MiB inflated (bytes to
//        copy, encode time, ratio to the plain guest). Not in the default set (two v86 boots,
//        about 2 minutes of one core): name it.
import { execFileSync, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { PerformanceObserver } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Worker } from "node:worker_threads";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { createGuestMemory } from "@virtio-ts/memory";
import { balloonBench } from "./balloon.js";
import { blkBench, blkRig, closedLoop, IO, randomBlocks } from "./blk-iops.js";
import { buildC } from "./build-c.js";
import { guestDdBench } from "./guest-dd.js";
import { interposeBench } from "./interpose.js";
import { logOpenBench } from "./log-open.js";
import { netBench, runVirtio } from "./net.js";
import { runPackedFloor } from "./packed-floor.js";
import type { RingRunKind } from "./ring-worker.js";
import { runFloor } from "./split-floor.js";
import {
  BATCH,
  Ctl,
  DeviceSide,
  DriverSide,
  MEM_SIZE,
  type Rate,
  READ_LEN,
  roundTrips,
  runSingle,
  SIZE,
  WRITE_LEN,
} from "./split-workload.js";
import { vhostBench } from "./vhost.js";
import { vhostNetBench } from "./vhost-net.js";
import { wakeBench } from "./wake.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const REPS = quick ? 1 : 3;

/** Operations per measured run (the first fifth is warm-up), by case. */
const OPS = quick
  ? { tsSingle: 500_000, cSingle: 4_000_000, tsThreads: 300_000, cThreads: 1_000_000 }
  : { tsSingle: 5_000_000, cSingle: 40_000_000, tsThreads: 3_000_000, cThreads: 10_000_000 };

interface ThreadRate extends Rate {
  readonly kicks: number;
  readonly irqs: number;
}

const perSecond = (r: Rate) => r.ops / (r.ns / 1e9);

function median<T extends Rate>(runs: T[]): T {
  const sorted = [...runs].sort((a, b) => perSecond(a) - perSecond(b));
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function repeat<T extends Rate>(run: () => T | Promise<T>): Promise<T> {
  return median(await repeatAll(run));
}

async function repeatAll<T extends Rate>(run: () => T | Promise<T>): Promise<T[]> {
  const runs: T[] = [];
  for (let i = 0; i < REPS; i++) runs.push(await run());
  return runs;
}

function mops(r: Rate | undefined): string {
  return r === undefined ? "n/a" : `${(perSecond(r) / 1e6).toFixed(2)} M/s`;
}

function ratio(ts: Rate, c: Rate | undefined): string {
  return c === undefined ? "n/a" : (perSecond(ts) / perSecond(c)).toFixed(2);
}

/** CPU time per operation, ns: the median over the runs (least disturbed by descheduling). */
function cpuPerOp(runs: readonly Rate[]): number | undefined {
  const v = runs.filter((r) => r.cpuNs !== undefined).map((r) => r.cpuNs! / r.ops);
  if (v.length === 0) return undefined;
  v.sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
}

/** `of` runs at `base`'s CPU cost: base CPU per op / `of` CPU per op. */
function cpuRatio(of: readonly Rate[], base: readonly Rate[] | undefined): string {
  const a = cpuPerOp(of);
  const b = base === undefined ? undefined : cpuPerOp(base);
  return a === undefined || b === undefined ? "n/a" : (b / a).toFixed(2);
}

function row(cells: string[]): string {
  const widths = [30, 13, 13, 6, 9];
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
}

function runC(
  bin: string,
  mode: "single" | "single-deferred" | "threads",
  ops: number,
): ThreadRate {
  const out = execFileSync(bin, [mode, `${ops}`, `${SIZE}`, `${BATCH}`], { encoding: "utf8" });
  const [measured, ns, kicks, irqs, cpuNs] = out.trim().split(/\s+/).map(Number);
  return { ops: measured!, ns: ns!, kicks: kicks!, irqs: irqs!, cpuNs: cpuNs! };
}

/**
 * {@link runSingle} (or the JS floor) in a fresh worker isolate (see ring-worker.ts for why).
 * `deferred`: the device publishes used.idx once per batch (`use` + `publishUsed`).
 */
function runIsolated(
  kind: RingRunKind,
  shared: boolean,
  ops: number,
  deferred = false,
): Promise<Rate> {
  const w = new Worker(new URL("./ring-worker.js", import.meta.url), {
    workerData: { kind, shared, ops, deferred },
  });
  return new Promise<Rate>((resolve, reject) => {
    w.once("message", (r: Rate) => {
      resolve(r);
      void w.terminate();
    });
    w.once("error", reject);
  });
}

/** Two workers (driver, device) over one SharedArrayBuffer, fresh for each run. */
async function runThreads(total: number): Promise<ThreadRate> {
  const buffer = new SharedArrayBuffer(MEM_SIZE);
  const ctlBuffer = new SharedArrayBuffer(Ctl.COUNT * 4);
  const script = new URL("./split-worker.js", import.meta.url);
  const workers = (["device", "driver"] as const).map(
    (role) => new Worker(script, { workerData: { role, buffer, ctlBuffer, total } }),
  );
  const reports = await Promise.all(
    workers.map(
      (w) =>
        new Promise<{ role: string } & Partial<Rate>>((resolve, reject) => {
          w.once("message", resolve);
          w.once("error", reject);
        }),
    ),
  );
  await Promise.all(workers.map((w) => w.terminate()));
  const driver = reports.find((r) => r.role === "driver")!;
  const ctl = new Int32Array(ctlBuffer);
  return { ops: driver.ops!, ns: driver.ns!, kicks: ctl[Ctl.KICKS]!, irqs: ctl[Ctl.IRQS]! };
}

async function splitBench(): Promise<void> {
  console.log(
    `split ring round trips (add+publish -> pop -> push -> reap): queue ${SIZE}, batch ${BATCH}, ` +
      `2-descriptor chains (${READ_LEN} B readable + ${WRITE_LEN} B writable), VIRTIO_F_EVENT_IDX; ` +
      `median of ${REPS}`,
  );
  const c = buildC("split_ring");
  const bin = typeof c === "string" ? undefined : c.bin;
  if (typeof c === "string") console.log(`  C baseline skipped: ${c}`);
  const tsSingleRuns = await repeatAll(() =>
    runSingle(createGuestMemory({ size: MEM_SIZE }), OPS.tsSingle),
  );
  // The same in a plain ArrayBuffer: one thread sees it, so the ring uses no Atomics (as for a
  // one-thread emulator's guest RAM in a non-shared WebAssembly.Memory). In a fresh isolate.
  const tsPlainRuns = await repeatAll(() => runIsolated("split", false, OPS.tsSingle));
  // The same work written out by hand in one function (split-floor.ts): what V8 charges for it.
  // Placed as the library rows are: shared memory in this isolate, ArrayBuffer in fresh ones.
  const floorRuns = await repeatAll(() => runFloor(true, OPS.tsSingle));
  // The same calls written minimal (split-api-floor.ts): what the API shape itself costs. In
  // fresh isolates, so this isolate's ring call sites stay monomorphic.
  const apiFloorRuns = await repeatAll(() => runIsolated("apiFloor", true, OPS.tsSingle));
  const floorPlainRuns = await repeatAll(() => runIsolated("floor", false, OPS.tsSingle));
  const cSingleRuns = bin ? await repeatAll(() => runC(bin, "single", OPS.cSingle)) : undefined;
  // The device returns each batch with `use` and publishes used.idx once (QEMU's
  // virtqueue_fill / virtqueue_flush), in all three: library, floor and C (single-deferred).
  // Shared memory, each in a fresh isolate.
  const tsDeferredRuns = await repeatAll(() => runIsolated("split", true, OPS.tsSingle, true));
  const apiFloorDeferredRuns = await repeatAll(() =>
    runIsolated("apiFloor", true, OPS.tsSingle, true),
  );
  const floorDeferredRuns = await repeatAll(() => runIsolated("floor", true, OPS.tsSingle, true));
  const cDeferredRuns = bin
    ? await repeatAll(() => runC(bin, "single-deferred", OPS.cSingle))
    : undefined;
  const tsSingle = median(tsSingleRuns);
  const tsPlain = median(tsPlainRuns);
  const cSingle = cSingleRuns === undefined ? undefined : median(cSingleRuns);
  const tsThreads = await repeat(() => runThreads(OPS.tsThreads));
  const cThreads = bin ? await repeat(() => runC(bin, "threads", OPS.cThreads)) : undefined;
  if (typeof c !== "string") rmSync(c.dir, { recursive: true, force: true });

  console.log(row(["", "virtio-ts", "C (gcc -O2)", "TS/C", "TS/C CPU"]));
  console.log(
    row([
      "one thread",
      mops(tsSingle),
      mops(cSingle),
      ratio(tsSingle, cSingle),
      cpuRatio(tsSingleRuns, cSingleRuns),
    ]),
  );
  console.log(
    row([
      "one thread, ArrayBuffer memory",
      mops(tsPlain),
      mops(cSingle),
      ratio(tsPlain, cSingle),
      cpuRatio(tsPlainRuns, cSingleRuns),
    ]),
  );
  const floor = median(floorRuns);
  const floorPlain = median(floorPlainRuns);
  const apiFloor = median(apiFloorRuns);
  console.log(
    row([
      "API floor (same calls, minimal)",
      mops(apiFloor),
      mops(cSingle),
      ratio(apiFloor, cSingle),
      cpuRatio(apiFloorRuns, cSingleRuns),
    ]),
  );
  console.log(
    row([
      "JS floor (hand-inlined, no API)",
      mops(floor),
      mops(cSingle),
      ratio(floor, cSingle),
      cpuRatio(floorRuns, cSingleRuns),
    ]),
  );
  console.log(
    row([
      "JS floor, ArrayBuffer memory",
      mops(floorPlain),
      mops(cSingle),
      ratio(floorPlain, cSingle),
      cpuRatio(floorPlainRuns, cSingleRuns),
    ]),
  );
  const cDeferred = cDeferredRuns === undefined ? undefined : median(cDeferredRuns);
  const tsDeferred = median(tsDeferredRuns);
  const floorDeferred = median(floorDeferredRuns);
  const apiFloorDeferred = median(apiFloorDeferredRuns);
  console.log(
    row([
      "one thread, used.idx per batch",
      mops(tsDeferred),
      mops(cDeferred),
      ratio(tsDeferred, cDeferred),
      cpuRatio(tsDeferredRuns, cDeferredRuns),
    ]),
  );
  console.log(
    row([
      "API floor, used.idx per batch",
      mops(apiFloorDeferred),
      mops(cDeferred),
      ratio(apiFloorDeferred, cDeferred),
      cpuRatio(apiFloorDeferredRuns, cDeferredRuns),
    ]),
  );
  console.log(
    row([
      "JS floor, used.idx per batch",
      mops(floorDeferred),
      mops(cDeferred),
      ratio(floorDeferred, cDeferred),
      cpuRatio(floorDeferredRuns, cDeferredRuns),
    ]),
  );
  console.log(
    row([
      "two threads, Atomics doorbells",
      mops(tsThreads),
      mops(cThreads),
      ratio(tsThreads, cThreads),
      "–",
    ]),
  );
  const cpuNs = (runs: readonly Rate[] | undefined) => {
    const v = runs === undefined ? undefined : cpuPerOp(runs);
    return v === undefined ? "n/a" : `${v.toFixed(1)} ns`;
  };
  console.log(
    `  one thread, CPU per round trip (median of ${REPS}; TS/C CPU is their inverse ratio): ` +
      `virtio-ts ${cpuNs(tsSingleRuns)} (ArrayBuffer memory ${cpuNs(tsPlainRuns)}), ` +
      `API floor ${cpuNs(apiFloorRuns)}, JS floor ${cpuNs(floorRuns)} (ArrayBuffer memory ${cpuNs(floorPlainRuns)}), C ${cpuNs(cSingleRuns)}; ` +
      `the library's CPU ${cpuRatio(floorRuns, tsSingleRuns)}× the floor's (ArrayBuffer memory ${cpuRatio(floorPlainRuns, tsPlainRuns)}×), ` +
      `${cpuRatio(apiFloorRuns, tsSingleRuns)}× the API floor's`,
  );
  console.log(
    `  used.idx per batch (use + publishUsed): virtio-ts ${cpuNs(tsDeferredRuns)}, API floor ${cpuNs(apiFloorDeferredRuns)}, ` +
      `JS floor ${cpuNs(floorDeferredRuns)}, C ${cpuNs(cDeferredRuns)}; the library's CPU ` +
      `${cpuRatio(floorDeferredRuns, tsDeferredRuns)}× the floor's, ${cpuRatio(apiFloorDeferredRuns, tsDeferredRuns)}× the API floor's`,
  );
  const per1k = (r: ThreadRate | undefined, n: number, k: "kicks" | "irqs") =>
    r === undefined ? "n/a" : ((1000 * r[k]) / n).toFixed(1);
  console.log(
    `  two threads, per 1000 buffers: kicks ${per1k(tsThreads, OPS.tsThreads, "kicks")} (C ${per1k(cThreads, OPS.cThreads, "kicks")}), ` +
      `interrupts ${per1k(tsThreads, OPS.tsThreads, "irqs")} (C ${per1k(cThreads, OPS.cThreads, "irqs")})`,
  );
}

/** global.gc if node runs with --expose-gc, else the same function obtained at run time. */
function getGc(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
}

/** What a hot loop left on the heap: see {@link heapBench}. */
interface HeapRun {
  /** `heapUsed` growth over the loop, with no GC forced in between. */
  readonly grew: number;
  /** Growth after a final forced GC: what the loop retained. */
  readonly retained: number;
  /** Garbage collections during the loop. */
  readonly gcs: number;
}

/**
 * Measure the heap around a hot loop: `run` calls `begin` when its timed part starts (after a
 * warm-up; a GC is forced there) and `end` when it is over.
 */
async function measureHeap(
  run: (begin: () => void, end: () => void) => void | Promise<void>,
): Promise<HeapRun> {
  const gc = getGc();
  const gcs: number[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push(e.startTime);
  });
  observer.observe({ entryTypes: ["gc"] });
  let before = 0;
  let after = 0;
  let t0 = 0;
  let t1 = 0;
  await run(
    () => {
      gc();
      before = process.memoryUsage().heapUsed;
      t0 = performance.now();
    },
    () => {
      t1 = performance.now();
      after = process.memoryUsage().heapUsed; // no gc() first: per-op garbage would show here
    },
  );
  gc();
  const retained = process.memoryUsage().heapUsed;
  await new Promise((r) => setTimeout(r, 50)); // gc entries are delivered asynchronously
  observer.disconnect();
  return {
    grew: after - before,
    retained: retained - before,
    gcs: gcs.filter((t) => t >= t0 && t <= t1).length,
  };
}

/**
 * Heap over a million operations of each hot loop: ring round trips (one thread), blk requests
 * (the whole virtio-blk path over a MemoryDisk, depth 32, reads into lane buffers and writes)
 * and virtio-net frames (1500 B, A -> switch -> B, lending receive).
 */
async function heapBench(): Promise<void> {
  const ops = quick ? 100_000 : 1_000_000;
  const kib = (n: number) => `${n >= 0 ? "+" : ""}${(n / 1024).toFixed(1)} KiB`;
  const line = (what: string, r: HeapRun) =>
    console.log(
      `heap over ${ops.toLocaleString("en")} ${what}: ${kib(r.grew)} used ` +
        `(${(r.grew / ops).toFixed(3)} B/op), ${r.gcs} GCs during the loop, ` +
        `${kib(r.retained)} retained after gc`,
    );
  const mem = createGuestMemory({ size: MEM_SIZE });
  const drv = new DriverSide(mem);
  const dev = new DeviceSide(mem);
  // Let the JIT settle first (compiled code and feedback are not per-op garbage), across one full
  // GC: the first million round trips after the process's first forced GC grew the heap by
  // ~200 KiB once however long the warm-up before it, later millions by 5–20 KiB, nothing retained.
  roundTrips(drv, dev, 200_000);
  getGc()();
  roundTrips(drv, dev, 400_000);
  line(
    "one-thread ring round trips",
    await measureHeap((begin, end) => {
      begin();
      roundTrips(drv, dev, drv.reaped + ops);
      end();
    }),
  );
  line(
    "blk requests (MemoryDisk, depth 32, half reads half writes)",
    await measureHeap(async (begin, end) => {
      const disk = MemoryDisk.ofSize(64 << 20);
      const driver = blkRig(disk, 32).driver;
      const at = randomBlocks(Math.min(ops, 100_000), 0x5eed, 64 << 20, 512);
      const bufs = Array.from({ length: 32 }, (_, k) => new Uint8Array(IO).fill(k));
      const op = (i: number, k: number) =>
        (i & 1) === 0
          ? driver.readInto(at[i % at.length]!, bufs[k]!)
          : driver.write(at[i % at.length]!, bufs[k]!);
      await closedLoop(20_000, 32, op);
      begin();
      await closedLoop(ops, 32, op);
      end();
    }),
  );
  line(
    "virtio-net 1500 B frames (trySendBatch, tryReceiveView)",
    await measureHeap((begin, end) => {
      runVirtio(1500, ops, 20_000, { onWarm: begin, onDone: end });
    }),
  );
}

/** Packed vs split: the same one-thread workload on both layouts, same run, as a ratio. */
async function packedBench(): Promise<void> {
  console.log(
    `packed vs split ring, one thread: same workload as above (queue ${SIZE}, batch ${BATCH}, ` +
      `2-descriptor chains, EVENT_IDX); the library, then the JS floors (each ring's round trip ` +
      `hand-inlined in one function, same checks and Atomics policy); median of ${REPS}`,
  );
  console.log(row(["", "split", "packed", "packed/split", "CPU"]));
  // SharedArrayBuffer memory (the rings use Atomics on index and flag words) and a plain
  // ArrayBuffer (one thread: plain accesses, measured in fresh isolates); the library, then
  // the JS floors (split-floor.ts, packed-floor.ts: the same work hand-inlined in one function
  // each), which say whether a packed ring can beat a split one in V8 at all. Alternating, so
  // load that comes and goes hits both alike.
  for (const floor of [false, true]) {
    for (const shared of [true, false]) {
      const splitRuns: Rate[] = [];
      const packedRuns: Rate[] = [];
      for (let i = 0; i < REPS; i++) {
        if (shared && floor) {
          splitRuns.push(runFloor(true, OPS.tsSingle));
          packedRuns.push(runPackedFloor(true, OPS.tsSingle));
        } else if (shared) {
          splitRuns.push(runSingle(createGuestMemory({ size: MEM_SIZE }), OPS.tsSingle, "split"));
          packedRuns.push(runSingle(createGuestMemory({ size: MEM_SIZE }), OPS.tsSingle, "packed"));
        } else {
          // Plain memory in fresh isolates (see runIsolated).
          splitRuns.push(await runIsolated(floor ? "floor" : "split", false, OPS.tsSingle));
          packedRuns.push(await runIsolated(floor ? "packedFloor" : "packed", false, OPS.tsSingle));
        }
      }
      const split = median(splitRuns);
      const packed = median(packedRuns);
      const label = floor ? "JS floors" : "one thread";
      console.log(
        row([
          shared ? label : `${label}, ArrayBuffer memory`,
          mops(split),
          mops(packed),
          ratio(packed, split),
          cpuRatio(packedRuns, splitRuns),
        ]),
      );
    }
  }
}

const benches: Record<string, () => Promise<void>> = {
  split: splitBench,
  packed: packedBench,
  heap: heapBench,
  blk: async () => {
    await blkBench(quick, REPS);
  },
  vhost: () => vhostBench(quick),
  wake: () => wakeBench(quick, REPS),
  "vhost-net": () => vhostNetBench(quick, REPS),
  net: async () => {
    await netBench(quick, REPS);
  },
  interpose: async () => {
    await interposeBench(quick, REPS);
  },
  "log-open": async () => {
    await logOpenBench(quick, REPS);
  },
  "guest-dd": () => guestDdBench(quick),
  balloon: () => balloonBench(),
};
/** Benches run only when named: they need tools outside Node (QEMU, a kernel, the addon, v86). */
const optIn = new Set(["guest-dd", "balloon"]);
const names = args.filter((a) => !a.startsWith("--"));
const unknown = names.filter((n) => !(n in benches));
if (unknown.length > 0) {
  console.error(
    `unknown bench ${unknown.join(", ")}; choose from: ${Object.keys(benches).join(", ")}`,
  );
  process.exit(2);
}
const all = Object.keys(benches).filter((n) => !optIn.has(n));
const selected = names.length > 0 ? names : all;
if (selected.length === 1) await benches[selected[0]!]!();
else {
  // Each bench in a process of its own (same Node flags): run after the others in one process, a
  // bench was seen at half its own rate (the batched GCM link at 64 B: 0.21× the cable in a full
  // run, 0.50× alone), as JIT and heap state carried over from the benches before it.
  const flags = args.filter((a) => a.startsWith("--"));
  const script = fileURLToPath(import.meta.url);
  const failed: string[] = [];
  for (const name of selected) {
    const r = spawnSync(process.execPath, [...process.execArgv, script, name, ...flags], {
      stdio: "inherit",
    });
    if (r.status !== 0) failed.push(`${name} (${r.status ?? r.signal})`);
  }
  if (failed.length > 0) {
    console.error(`benches failed: ${failed.join(", ")}`);
    process.exit(1);
  }
}
