// 4 KiB random IOPS through the whole virtio-blk stack, in one thread: BlkDriver (guest) ->
// MmioDriverTransport -> MmioDevice (register file, counting exits) -> BlkDevice -> FileDisk,
// beside raw positional vectored I/O (fs.readv / fs.writev with a callback, what FileDisk
// calls, one promise per request for the closed loop) on the same file, at the same offsets
// and depth, in the same run; and FileHandle.readv / writev (the promise API) for reference.
import { readv, writev } from "node:fs";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { InThreadMmio } from "@virtio-ts/transport";

/** How kicks reach the device model: inside the exit, or the ioeventfd way (next turn). */
export type KickMode = "sync" | "deferred";

/** Bytes per request. */
export const IO = 4096;
/** Size of the image file. */
export const FILE_BYTES = 256 << 20;

/** Guest address of the virtio path's read buffers (one per lane). */
const LANE_BUFFERS = 0x400000;

/** One measured run. */
export interface IopsRun {
  /** Requests timed. */
  readonly ops: number;
  /** Nanoseconds they took. */
  readonly ns: number;
  /** MMIO exits during the timed part (0 for the raw path). */
  readonly exits: number;
  /** Interrupts the guest took during the timed part (0 for the raw path). */
  readonly irqs: number;
  /** QueueNotify exits (kicks) during the timed part (0 for the raw path). */
  readonly kicks: number;
}

type Kind = "read" | "write";

/**
 * `n` random 4 KiB-aligned positions in a disk of `diskBytes`, in units of `unit` bytes (1 for
 * byte offsets, 512 for sectors); xorshift32 with a fixed seed, so every run and every path
 * gets the same sequence.
 */
export function randomBlocks(
  n: number,
  seed: number,
  diskBytes: number,
  unit: number,
): Float64Array {
  const blocks = diskBytes / IO;
  const out = new Float64Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = ((x % blocks) * IO) / unit;
  }
  return out;
}

/** `depth` loops, each taking the next index until `n`; resolves when all are done. */
export async function closedLoop(
  n: number,
  depth: number,
  op: (i: number, lane: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lane = async (k: number): Promise<void> => {
    while (next < n) await op(next++, k);
  };
  const lanes: Promise<void>[] = [];
  for (let k = 0; k < depth; k++) lanes.push(lane(k));
  await Promise.all(lanes);
}

/**
 * The guest and its device, wired in-process. The guest takes an interrupt on the next turn of
 * the event loop (after the host completions already ready), as in the demo; the line is
 * level-triggered, so raising it again before then makes no second interrupt.
 */
export function blkRig(disk: BlockBackend, depth: number, kicks: KickMode = "sync") {
  const memory = createGuestMemory({ size: 0x800000 });
  const vm = new InThreadMmio(new BlkDevice(disk, { queueSize: 256 }), { memory, kicks });
  const driver = new BlkDriver(
    vm.transport,
    memory,
    new SlabAllocator(0x100000, IO, 4 * depth + 8),
    {
      ringBase: 0x10000,
      queueSize: 128,
    },
  );
  vm.line.handler = () => driver.onInterrupt();
  const mmio = vm.device;
  return { driver, mmio, memory, irqs: () => vm.line.taken };
}

/** One run of `n` requests (the first fifth untimed) through the virtio stack. */
async function runVirtio(
  disk: FileDisk,
  kind: Kind,
  depth: number,
  at: Float64Array,
  kicks: KickMode,
): Promise<IopsRun> {
  const r = blkRig(disk, depth, kicks);
  const bufs = Array.from({ length: depth }, (_, k) => new Uint8Array(IO).fill(k + 1));
  // Reads go into one buffer per lane, as the raw path's do (BlkDriver.readInto): buffers in
  // guest memory, above the ring area and the slab, which the device writes directly, as a
  // guest's reads land in its own pages.
  const into = Array.from({ length: depth }, (_, k) =>
    r.memory.slice(LANE_BUFFERS + k * IO, IO, "write"),
  );
  const op =
    kind === "read"
      ? (i: number, k: number) => r.driver.readInto(at[i]! / 512, into[k]!)
      : (i: number, k: number) => r.driver.write(at[i]! / 512, bufs[k]!);
  const warm = Math.floor(at.length / 5);
  await closedLoop(warm, depth, op);
  r.mmio.resetCounters();
  const irq0 = r.irqs();
  const t0 = process.hrtime.bigint();
  await closedLoop(at.length - warm, depth, (i, k) => op(warm + i, k));
  const ns = Number(process.hrtime.bigint() - t0);
  return {
    ops: at.length - warm,
    ns,
    exits: r.mmio.exits,
    irqs: r.irqs() - irq0,
    kicks: r.mmio.exitCounts().QueueNotify ?? 0,
  };
}

/**
 * The same requests as raw positional vectored I/O at the same positions: `fs.readv` /
 * `fs.writev` with a callback on the descriptor (what FileDisk calls), or with `handle` the
 * FileHandle promise methods.
 */
async function runRaw(
  path: string,
  kind: Kind,
  depth: number,
  at: Float64Array,
  handle = false,
): Promise<IopsRun> {
  const fh = await open(path, "r+");
  try {
    const fd = fh.fd;
    const bufs = Array.from({ length: depth }, (_, k) => [new Uint8Array(IO).fill(k + 1)]);
    const cb = (i: number, k: number) =>
      new Promise<void>((resolve, reject) => {
        const done = (e: Error | null) => (e === null ? resolve() : reject(e));
        if (kind === "read") readv(fd, bufs[k]!, at[i]!, done);
        else writev(fd, bufs[k]!, at[i]!, done);
      });
    const promised = (i: number, k: number) =>
      kind === "read" ? fh.readv(bufs[k]!, at[i]!) : fh.writev(bufs[k]!, at[i]!);
    const op = handle ? promised : cb;
    const warm = Math.floor(at.length / 5);
    await closedLoop(warm, depth, op);
    const t0 = process.hrtime.bigint();
    await closedLoop(at.length - warm, depth, (i, k) => op(warm + i, k));
    const ns = Number(process.hrtime.bigint() - t0);
    return { ops: at.length - warm, ns, exits: 0, irqs: 0, kicks: 0 };
  } finally {
    await fh.close();
  }
}

/** Fill a fresh 256 MiB image with non-zero data (so it sits in the page cache). */
async function makeImage(dir: string): Promise<string> {
  const path = join(dir, "disk.img");
  const fh = await open(path, "w");
  const chunk = new Uint8Array(8 << 20);
  let x = 0x9e3779b9;
  for (let i = 0; i < chunk.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    chunk[i] = x & 0xff;
    chunk[i + 1] = (x >>> 8) & 0xff;
    chunk[i + 2] = (x >>> 16) & 0xff;
    chunk[i + 3] = (x >>> 24) & 0xff;
  }
  for (let pos = 0; pos < FILE_BYTES; pos += chunk.length)
    await fh.write(chunk, 0, chunk.length, pos);
  await fh.close();
  return path;
}

const iops = (r: IopsRun) => r.ops / (r.ns / 1e9);

function median(runs: IopsRun[]): IopsRun {
  const s = [...runs].sort((a, b) => iops(a) - iops(b));
  return s[Math.floor(s.length / 2)]!;
}

/** One result row. */
export interface BlkIopsRow {
  /** "read" or "write". */
  readonly kind: Kind;
  /** Queue depth. */
  readonly depth: number;
  /** How kicks reached the device. */
  readonly kicks: KickMode;
  /** Median run through the virtio stack. */
  readonly virtio: IopsRun;
  /** Median raw run (`fs.readv` / `fs.writev`, callback). */
  readonly raw: IopsRun;
  /** Median raw run through the FileHandle promise methods. */
  readonly handle: IopsRun;
  /**
   * Median over the repetitions of virtio / raw IOPS, each virtio run paired with the raw run
   * next to it: robust to load that comes and goes, and to a raw baseline that is bimodal on
   * some machines (the ratio of the two medians is not).
   */
  readonly ratio: number;
}

/**
 * The `blk` bench: 4 KiB random reads and writes at queue depth 1 and 32, virtio stack vs raw,
 * median of `reps` runs (alternating the two paths), and the exits and interrupts per request.
 * @param quick - fewer operations
 * @param reps - runs per case
 * @returns the rows it printed
 */
export async function blkBench(quick: boolean, reps: number): Promise<BlkIopsRow[]> {
  const n = { 1: quick ? 4_000 : 25_000, 32: quick ? 10_000 : 150_000 } as const;
  // At least 5 pairs in a full run: the ratio is a median of pairs.
  const pairs = quick ? reps : Math.max(reps, 5);
  console.log(
    `virtio-blk 4 KiB random IOPS, one thread: BlkDriver -> MmioDriverTransport -> MmioDevice -> ` +
      `BlkDevice -> FileDisk, vs raw fs.readv/writev (callback, what FileDisk calls; FileHandle ` +
      `promise methods for reference) at the same offsets and depth ` +
      `(depth = concurrent requests); ${FILE_BYTES >> 20} MiB file in the page cache (no O_DIRECT, ` +
      `both paths), libuv threadpool ${process.env.UV_THREADPOOL_SIZE ?? 4}; EVENT_IDX; median of ${pairs} ` +
      `runs, TS/raw the median of ${pairs} paired runs (order alternating)`,
  );
  const dir = await mkdtemp(join(tmpdir(), "virtio-ts-bench-blk-"));
  const rows: BlkIopsRow[] = [];
  try {
    const path = await makeImage(dir);
    const disk = await FileDisk.open(path);
    try {
      const cases: [Kind, 1 | 32, KickMode][] = [
        ["read", 1, "sync"],
        ["read", 32, "sync"],
        ["read", 32, "deferred"],
        ["write", 1, "sync"],
        ["write", 32, "sync"],
        ["write", 32, "deferred"],
      ];
      for (const [kind, depth, kicks] of cases) {
        const at = randomBlocks(n[depth], depth * 7 + (kind === "read" ? 1 : 2), FILE_BYTES, 1);
        const v: IopsRun[] = [];
        const r: IopsRun[] = [];
        const h: IopsRun[] = [];
        const ratios: number[] = [];
        for (let i = 0; i < pairs; i++) {
          // Raw then virtio on even repetitions, virtio then raw on odd ones.
          if (i % 2 === 0) r.push(await runRaw(path, kind, depth, at));
          v.push(await runVirtio(disk, kind, depth, at, kicks));
          if (i % 2 === 1) r.push(await runRaw(path, kind, depth, at));
          ratios.push(iops(v[i]!) / iops(r[i]!));
          h.push(await runRaw(path, kind, depth, at, true));
        }
        ratios.sort((a, b) => a - b);
        const ratio = ratios[Math.floor(ratios.length / 2)]!;
        rows.push({
          kind,
          depth,
          kicks,
          virtio: median(v),
          raw: median(r),
          handle: median(h),
          ratio,
        });
      }
    } finally {
      await disk.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const cell = (s: string, w: number, left = false) => (left ? s.padEnd(w) : s.padStart(w));
  const kiops = (r: IopsRun) => `${(iops(r) / 1000).toFixed(1)} k`;
  console.log(
    `${cell("", 24, true)}  ${cell("virtio-ts", 10)}  ${cell("raw readv", 10)}  ${cell("TS/raw", 6)}  ` +
      `${cell("FileHandle", 10)}  ${cell("exits/req", 9)}  ${cell("kicks/req", 9)}  ${cell("irqs/req", 8)}`,
  );
  for (const row of rows) {
    const { virtio: v, raw: r, handle: h } = row;
    console.log(
      `${cell(`${row.kind} QD${row.depth}${row.kicks === "deferred" ? ", deferred kicks" : ""}`, 24, true)}  ` +
        `${cell(kiops(v), 10)}  ${cell(kiops(r), 10)}  ${cell(row.ratio.toFixed(2), 6)}  ` +
        `${cell(kiops(h), 10)}  ${cell((v.exits / v.ops).toFixed(2), 9)}  ` +
        `${cell((v.kicks / v.ops).toFixed(3), 9)}  ${cell((v.irqs / v.ops).toFixed(3), 8)}`,
    );
  }
  return rows;
}
