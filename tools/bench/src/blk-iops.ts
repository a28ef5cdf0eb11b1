// 4 KiB random IOPS through the whole virtio-blk stack, in one thread: BlkDriver (guest) ->
// MmioDriverTransport -> MmioDevice (register file, counting exits) -> BlkDevice -> FileDisk,
// beside raw positional vectored I/O (FileHandle.readv / writev, what FileDisk calls) on the
// same file, at the same offsets and depth, in the same run.
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { InThreadMmio } from "@virtio-ts/transport";

/** Bytes per request. */
export const IO = 4096;
/** Size of the image file. */
export const FILE_BYTES = 256 << 20;

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
export function blkRig(disk: BlockBackend, depth: number) {
  const memory = createGuestMemory({ size: 0x800000 });
  const vm = new InThreadMmio(new BlkDevice(disk, { queueSize: 256 }), { memory });
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
  return { driver, mmio, irqs: () => vm.line.taken };
}

/** One run of `n` requests (the first fifth untimed) through the virtio stack. */
async function runVirtio(
  disk: FileDisk,
  kind: Kind,
  depth: number,
  at: Float64Array,
): Promise<IopsRun> {
  const r = blkRig(disk, depth);
  const bufs = Array.from({ length: depth }, (_, k) => new Uint8Array(IO).fill(k + 1));
  const op =
    kind === "read"
      ? (i: number) => r.driver.read(at[i]! / 512, IO)
      : (i: number, k: number) => r.driver.write(at[i]! / 512, bufs[k]!);
  const warm = Math.floor(at.length / 5);
  await closedLoop(warm, depth, op);
  r.mmio.resetCounters();
  const irq0 = r.irqs();
  const t0 = process.hrtime.bigint();
  await closedLoop(at.length - warm, depth, (i, k) => op(warm + i, k));
  const ns = Number(process.hrtime.bigint() - t0);
  return { ops: at.length - warm, ns, exits: r.mmio.exits, irqs: r.irqs() - irq0 };
}

/** The same requests as raw FileHandle.readv / writev at the same positions. */
async function runRaw(path: string, kind: Kind, depth: number, at: Float64Array): Promise<IopsRun> {
  const fh = await open(path, "r+");
  try {
    const bufs = Array.from({ length: depth }, (_, k) => [new Uint8Array(IO).fill(k + 1)]);
    const op =
      kind === "read"
        ? (i: number, k: number) => fh.readv(bufs[k]!, at[i]!)
        : (i: number, k: number) => fh.writev(bufs[k]!, at[i]!);
    const warm = Math.floor(at.length / 5);
    await closedLoop(warm, depth, op);
    const t0 = process.hrtime.bigint();
    await closedLoop(at.length - warm, depth, (i, k) => op(warm + i, k));
    const ns = Number(process.hrtime.bigint() - t0);
    return { ops: at.length - warm, ns, exits: 0, irqs: 0 };
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
  /** Median run through the virtio stack. */
  readonly virtio: IopsRun;
  /** Median raw run. */
  readonly raw: IopsRun;
}

/**
 * The `blk` bench: 4 KiB random reads and writes at queue depth 1 and 32, virtio stack vs raw,
 * median of `reps` runs (alternating the two paths), and the exits and interrupts per request.
 * @param quick - fewer operations
 * @param reps - runs per case
 * @returns the rows it printed
 */
export async function blkBench(quick: boolean, reps: number): Promise<BlkIopsRow[]> {
  const n = { 1: quick ? 4_000 : 25_000, 32: quick ? 10_000 : 60_000 } as const;
  console.log(
    `virtio-blk 4 KiB random IOPS, one thread: BlkDriver -> MmioDriverTransport -> MmioDevice -> ` +
      `BlkDevice -> FileDisk, vs raw FileHandle.readv/writev at the same offsets and depth ` +
      `(depth = concurrent requests); ${FILE_BYTES >> 20} MiB file in the page cache (no O_DIRECT, ` +
      `both paths), libuv threadpool ${process.env.UV_THREADPOOL_SIZE ?? 4}; EVENT_IDX; median of ${reps}`,
  );
  const dir = await mkdtemp(join(tmpdir(), "virtio-ts-bench-blk-"));
  const rows: BlkIopsRow[] = [];
  try {
    const path = await makeImage(dir);
    const disk = await FileDisk.open(path);
    try {
      for (const kind of ["read", "write"] as const) {
        for (const depth of [1, 32] as const) {
          const at = randomBlocks(n[depth], depth * 7 + (kind === "read" ? 1 : 2), FILE_BYTES, 1);
          const v: IopsRun[] = [];
          const r: IopsRun[] = [];
          for (let i = 0; i < reps; i++) {
            r.push(await runRaw(path, kind, depth, at));
            v.push(await runVirtio(disk, kind, depth, at));
          }
          rows.push({ kind, depth, virtio: median(v), raw: median(r) });
        }
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
    `${cell("", 14, true)}  ${cell("virtio-ts", 10)}  ${cell("raw fs", 10)}  ${cell("TS/raw", 6)}  ` +
      `${cell("exits/req", 9)}  ${cell("irqs/req", 8)}`,
  );
  for (const row of rows) {
    const { virtio: v, raw: r } = row;
    console.log(
      `${cell(`${row.kind} QD${row.depth}`, 14, true)}  ${cell(kiops(v), 10)}  ${cell(kiops(r), 10)}  ` +
        `${cell((iops(v) / iops(r)).toFixed(2), 6)}  ${cell((v.exits / v.ops).toFixed(2), 9)}  ` +
        `${cell((v.irqs / v.ops).toFixed(2), 8)}`,
    );
  }
  return rows;
}
