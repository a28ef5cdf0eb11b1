// Interposition middleware (@virtio-ts/interpose): throughput with and without each interposer,
// in the same run, as a ratio.
//
// Block: 4 KiB random writes then reads at queue depth 32 through the whole device path, in one
// thread — BlkDriver -> MmioDriverTransport -> MmioDevice -> BlkDevice -> back-end — where the
// back-end is a bare MemoryDisk or an interposer over MemoryDisks. MemoryDisk completes in a
// microtask, so nothing hides an interposer's own cost (snapshotLog's log file does real
// file I/O, which is its cost).
//
// Network: 64 B and 1500 B frames A -> Switch -> B at the NetBackend level (no virtio driver or
// device: what an interposer adds is measured against the least that surrounds it), with and
// without `sniff` on both ports (pcapng to a temporary file), and two switch segments joined by a
// plain cable (`patchBackends`) vs by an `encryptedLink` over a VethPair.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { Switch, VethPair } from "@virtio-ts/backend-net";
import type { BlockBackend, NetBackend } from "@virtio-ts/devices";
import type { BlkDriver } from "@virtio-ts/drivers";
import {
  compose,
  layer,
  mirror,
  RateLimitGroup,
  rateLimit,
  slice,
  sniff,
} from "@virtio-ts/interpose";
import {
  encrypt,
  encryptedLink,
  PcapngWriter,
  patchBackends,
  type SnapshotLog,
  snapshotLog,
} from "@virtio-ts/interpose/node";
import { blkRig, closedLoop, IO, randomBlocks } from "./blk-iops.js";
import { FileLogFloor } from "./log-floor.js";

/** Bytes per block request (the blk bench's). */
export const INTERPOSE_IO = IO;
/** Size of the disk the guest sees (every back-end presents this capacity). */
export const INTERPOSE_DISK_BYTES = 64 << 20;
/** Block requests in flight. */
export const INTERPOSE_DEPTH = 32;
/** Frames sent between two turns of the event loop (every network path, baselines included). */
export const INTERPOSE_NET_WINDOW = 256;

/** One measured run: `ops` requests or frames in `ns` nanoseconds. */
export interface InterposeRun {
  /** Requests (block) or frames (network) timed. */
  readonly ops: number;
  /** Nanoseconds they took. */
  readonly ns: number;
}

const rate = (r: InterposeRun) => r.ops / (r.ns / 1e9);

function median(runs: InterposeRun[]): InterposeRun {
  const s = [...runs].sort((a, b) => rate(a) - rate(b));
  return s[Math.floor(s.length / 2)]!;
}

// ---------------------------------------------------------------------------------------------
// Block

/** A back-end under test and what to do when its run is over. */
interface Stack {
  readonly disk: BlockBackend;
  readonly close: () => Promise<void>;
}

/** A block case: its label and how to build a fresh stack in `dir`. */
interface BlkCase {
  readonly name: string;
  readonly make: (dir: string, rep: number) => Promise<Stack>;
}

const nothing = async (): Promise<void> => {};

/** A 64-byte XTS key whose halves differ. */
function xtsKey(): Uint8Array {
  const k = randomBytes(64);
  k[0] = k[32]! ^ 0xff;
  return k;
}

function blkCases(): BlkCase[] {
  const D = INTERPOSE_DISK_BYTES;
  const mem = () => MemoryDisk.ofSize(D);
  const plain = (disk: BlockBackend): Stack => ({ disk, close: nothing });
  const withLog = async (
    dir: string,
    rep: number,
    top: (log: SnapshotLog) => BlockBackend,
  ): Promise<Stack> => {
    const path = join(dir, `log-${rep}-${Math.random().toString(36).slice(2)}.rlog`);
    const log = await snapshotLog(mem(), path, { create: true });
    return {
      disk: top(log),
      close: async () => {
        await log.close();
        await rm(path, { force: true });
      },
    };
  };
  // Limits a million times above what the bench reaches: the wrapper's overhead only.
  const group = () => new RateLimitGroup({ bytesPerSecond: 1e15, opsPerSecond: 1e12 });
  return [
    { name: "bare MemoryDisk", make: async () => plain(mem()) },
    { name: "encrypt (raw key, XTS)", make: async () => plain(encrypt(mem(), xtsKey())) },
    { name: "snapshotLog (log file)", make: (dir, rep) => withLog(dir, rep, (log) => log) },
    {
      // What any file-backed checksummed log pays (log-floor.ts): the snapshotLog row's floor.
      name: "  its floor: append+CRC-32",
      make: async (dir, rep) => {
        const path = join(dir, `floor-${rep}-${Math.random().toString(36).slice(2)}.log`);
        const floor = new FileLogFloor(path, D / 512);
        return {
          disk: floor,
          close: async () => {
            floor.close();
            await rm(path, { force: true });
          },
        };
      },
    },
    { name: "rateLimit (unreached)", make: async () => plain(rateLimit(group())(mem())) },
    { name: "mirror x2, ack all", make: async () => plain(mirror([mem(), mem()])) },
    {
      name: "mirror x3, ack quorum",
      make: async () => plain(mirror([mem(), mem(), mem()], { ack: "quorum" })),
    },
    {
      name: "slice (2nd half of 2x)",
      make: async () =>
        plain(slice(MemoryDisk.ofSize(2 * D), { offset: D / 512, length: D / 512 })),
    },
    {
      name: "compose(snapshotLog, encrypt)",
      make: (dir, rep) => withLog(dir, rep, (log) => compose(log, layer(encrypt, xtsKey()))),
    },
  ];
}

/** `at.length` requests of one kind (the first fifth untimed). */
async function timed(
  driver: BlkDriver,
  kind: "read" | "write",
  at: Float64Array,
  bufs: Uint8Array[],
): Promise<InterposeRun> {
  // Reads go into the lane's buffer (BlkDriver.readInto): no allocation per request.
  const op =
    kind === "read"
      ? (i: number, k: number) => driver.readInto(at[i]!, bufs[k]!)
      : (i: number, k: number) => driver.write(at[i]!, bufs[k]!);
  const warm = Math.floor(at.length / 5);
  await closedLoop(warm, INTERPOSE_DEPTH, op);
  const t0 = process.hrtime.bigint();
  await closedLoop(at.length - warm, INTERPOSE_DEPTH, (i, k) => op(warm + i, k));
  return { ops: at.length - warm, ns: Number(process.hrtime.bigint() - t0) };
}

/** One block row: a back-end's median write and read runs. */
export interface InterposeBlkRow {
  /** The back-end measured. */
  readonly name: string;
  /** Median 4 KiB random-write run. */
  readonly write: InterposeRun;
  /** Median 4 KiB random-read run (after the writes, on the same stack). */
  readonly read: InterposeRun;
  /** Median of the bare MemoryDisk's write runs paired with this back-end's. */
  readonly bareWrite: InterposeRun;
  /** Median of the bare MemoryDisk's read runs paired with this back-end's. */
  readonly bareRead: InterposeRun;
}

async function blkPart(quick: boolean, reps: number): Promise<InterposeBlkRow[]> {
  const n = quick ? 6_000 : 30_000;
  const cases = blkCases();
  const wAt = randomBlocks(n, 0x1f2e3d, INTERPOSE_DISK_BYTES, 512);
  const rAt = randomBlocks(n, 0x4c5b6a, INTERPOSE_DISK_BYTES, 512);
  const bufs = Array.from({ length: INTERPOSE_DEPTH }, (_, k) =>
    new Uint8Array(INTERPOSE_IO).fill(k + 1),
  );
  const runs = cases.map(() => ({ write: [] as InterposeRun[], read: [] as InterposeRun[] }));
  /** The bare runs paired with case `c` (index 0 unused). */
  const bare = cases.map(() => ({ write: [] as InterposeRun[], read: [] as InterposeRun[] }));
  const dir = await mkdtemp(join(tmpdir(), "virtio-ts-bench-interpose-"));
  try {
    // Warm-up pass (not recorded): every case's code compiled before the first timed run.
    const wWarm = wAt.subarray(0, 2_000);
    const rWarm = rAt.subarray(0, 2_000);
    for (const c of cases) {
      const stack = await c.make(dir, -1);
      try {
        const driver = blkRig(stack.disk, INTERPOSE_DEPTH).driver;
        await timed(driver, "write", wWarm, bufs);
        await timed(driver, "read", rWarm, bufs);
      } finally {
        await stack.close();
      }
    }
    // Each interposer runs next to its own bare run (bare first on even repetitions, second on
    // odd ones), so load that comes and goes hits both sides of a ratio alike.
    const once = async (c: number, rep: number): Promise<void> => {
      const stack = await cases[c]!.make(dir, rep);
      try {
        const driver = blkRig(stack.disk, INTERPOSE_DEPTH).driver;
        runs[c]!.write.push(await timed(driver, "write", wAt, bufs));
        runs[c]!.read.push(await timed(driver, "read", rAt, bufs));
      } finally {
        await stack.close();
      }
    };
    for (let rep = 0; rep < reps; rep++) {
      for (let c = 1; c < cases.length; c++) {
        if (rep % 2 === 0) await once(0, rep);
        await once(c, rep);
        if (rep % 2 === 1) await once(0, rep);
        bare[c]!.write.push(runs[0]!.write.pop()!);
        bare[c]!.read.push(runs[0]!.read.pop()!);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return cases.slice(1).map((c, j) => ({
    name: c.name,
    write: median(runs[j + 1]!.write),
    read: median(runs[j + 1]!.read),
    bareWrite: median(bare[j + 1]!.write),
    bareRead: median(bare[j + 1]!.read),
  }));
}

// ---------------------------------------------------------------------------------------------
// Network

const MAC_A = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0a);
const MAC_B = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0b);

function makeFrame(size: number): Uint8Array {
  const f = new Uint8Array(size);
  f.set(MAC_B, 0);
  f.set(MAC_A, 6);
  f[12] = 0x88;
  f[13] = 0xb6; // IEEE 802 local experimental 2
  for (let i = 18; i < size; i++) f[i] = i & 0xff;
  return f;
}

const setSeq = (f: Uint8Array, seq: number) => {
  f[14] = seq >>> 24;
  f[15] = (seq >>> 16) & 0xff;
  f[16] = (seq >>> 8) & 0xff;
  f[17] = seq & 0xff;
};
const getSeq = (f: Uint8Array) => ((f[14]! << 24) | (f[15]! << 16) | (f[16]! << 8) | f[17]!) >>> 0;

/** A network path measured. */
export type InterposeNetPath = "switch" | "sniff" | "cable" | "link" | "batch";

/** `encryptedLink`'s batchBytes in the "batch" path: the largest a default VethPair carries. */
export const INTERPOSE_LINK_BATCH = 65_503;

interface NetRig {
  readonly tx: NetBackend;
  readonly rx: NetBackend;
  readonly done: () => Promise<void>;
  /** pcapng records dropped (sniff only). */
  readonly dropped: () => number;
  /** Between windows: a turn of the event loop, or (sniff) until the capture is on disk. */
  readonly pace: () => Promise<void>;
}

const turn = () => new Promise<void>((r) => setImmediate(r));

async function netRig(path: InterposeNetPath, dir: string): Promise<NetRig> {
  const none = { done: nothing, dropped: () => 0, pace: turn };
  if (path === "switch") {
    const sw = new Switch();
    return { tx: sw.createPort(), rx: sw.createPort(), ...none };
  }
  if (path === "sniff") {
    const sw = new Switch();
    const file = join(dir, `cap-${Math.random().toString(36).slice(2)}.pcapng`);
    const pcap = new PcapngWriter(file, {
      interfaces: ["a", "b"],
      bufferBytes: 4 << 20,
      rotateBytes: 64 << 20,
      keep: 1,
    });
    return {
      tx: sniff(sw.createPort(), pcap, { iface: 0 }),
      rx: sniff(sw.createPort(), pcap, { iface: 1 }),
      done: async () => {
        await pcap.close();
        await rm(file, { force: true });
        await rm(file.replace(/\.pcapng$/, ".1.pcapng"), { force: true });
      },
      dropped: () => pcap.stats.dropped,
      pace: () => pcap.flush(),
    };
  }
  const left = new Switch();
  const right = new Switch();
  const tx = left.createPort();
  const rx = right.createPort();
  if (path === "cable") {
    const unpatch = patchBackends(left.createPort(), right.createPort());
    return { tx, rx, done: async () => unpatch(), dropped: () => 0, pace: turn };
  }
  const carrier = new VethPair();
  const [a, b] = encryptedLink(
    randomBytes(32),
    [carrier.a, carrier.b],
    path === "batch" ? { batchBytes: INTERPOSE_LINK_BATCH } : {},
  );
  const u1 = patchBackends(left.createPort(), a);
  const u2 = patchBackends(b, right.createPort());
  return {
    tx,
    rx,
    done: async () => {
      u1();
      u2();
    },
    dropped: () => 0,
    pace: turn,
  };
}

/**
 * `warm + n` frames A -> B: `transmit` on A's port, a sink on B's that checks the sequence
 * number and copies the frame into a receive buffer (as a device copies into guest memory).
 * Every {@link INTERPOSE_NET_WINDOW} frames the sender yields: a turn of the event loop, or,
 * with `sniff`, until `PcapngWriter.flush` has the capture on disk, so the figure is a lossless
 * capture rate (the writer drops records rather than block when the disk falls behind; the
 * drops are counted and printed, and should be 0).
 */
async function netRun(
  path: InterposeNetPath,
  dir: string,
  size: number,
  n: number,
  warm: number,
): Promise<InterposeRun & { dropped: number }> {
  const rig = await netRig(path, dir);
  const buffer = new Uint8Array(2048);
  let received = 0;
  rig.rx.attach({
    deliver(f) {
      const seq = getSeq(f);
      if (seq !== received || f.length !== size) {
        throw new Error(`${path}: frame ${received} arrived as ${seq} (${f.length} B)`);
      }
      buffer.set(f);
      received++;
      return true;
    },
  });
  const hello = makeFrame(60);
  hello.set(MAC_A, 0);
  hello.set(MAC_B, 6);
  rig.rx.transmit(hello); // every switch on the way learns B: the frames are known unicast
  const frame = makeFrame(size);
  let t0 = process.hrtime.bigint();
  let dropped0 = 0;
  for (let i = 0; i < warm + n; i++) {
    if (i === warm) {
      t0 = process.hrtime.bigint();
      dropped0 = rig.dropped();
    }
    setSeq(frame, i);
    rig.tx.transmit(frame);
    if ((i + 1) % INTERPOSE_NET_WINDOW === 0) await rig.pace();
  }
  // The last window too: a batching link seals at the end of the task.
  if ((warm + n) % INTERPOSE_NET_WINDOW !== 0) await rig.pace();
  const ns = Number(process.hrtime.bigint() - t0);
  const dropped = rig.dropped() - dropped0;
  await rig.done();
  if (received !== warm + n) throw new Error(`${path}: ${received} of ${warm + n} frames`);
  return { ops: n, ns, dropped };
}

/** One network row: a path at a frame size, its median run and pcapng drops in that run. */
export interface InterposeNetRow {
  /** Frame size in bytes. */
  readonly size: number;
  /** The path. */
  readonly path: InterposeNetPath;
  /** Median run by frames/s. */
  readonly run: InterposeRun;
  /** pcapng records dropped during the median run (sniff only; 2 records per frame). */
  readonly dropped: number;
}

async function netPart(quick: boolean, reps: number): Promise<InterposeNetRow[]> {
  const paths = ["switch", "sniff", "cable", "link", "batch"] as const;
  const dir = await mkdtemp(join(tmpdir(), "virtio-ts-bench-pcap-"));
  const rows: InterposeNetRow[] = [];
  try {
    // Warm every path's code at both sizes first, so the first measured case does not also pay
    // for compilation.
    for (const size of [64, 1500]) for (const p of paths) await netRun(p, dir, size, 20_000, 0);
    for (const size of [64, 1500]) {
      const n = (quick ? 0.1 : 1) * (size <= 64 ? 200_000 : 100_000);
      const warm = Math.floor(n / 5);
      const runs = new Map<InterposeNetPath, (InterposeRun & { dropped: number })[]>(
        paths.map((p) => [p, []]),
      );
      for (let rep = 0; rep < reps; rep++) {
        for (const p of paths) runs.get(p)!.push(await netRun(p, dir, size, n, warm));
      }
      for (const p of paths) {
        const m = median(runs.get(p)!) as InterposeRun & { dropped: number };
        rows.push({ size, path: p, run: m, dropped: m.dropped });
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

/** What {@link interposeBench} measured. */
export interface InterposeResult {
  /** Block rows, one per interposer, each with its paired bare MemoryDisk runs. */
  readonly blk: InterposeBlkRow[];
  /** Network rows. */
  readonly net: InterposeNetRow[];
}

/**
 * The `interpose` bench: block IOPS through each interposer vs the bare MemoryDisk, and frames/s
 * with and without `sniff` and `encryptedLink`, each as a ratio to its baseline measured in the
 * same run (cases alternate within each repetition); median of `reps`.
 * @param quick - fewer requests and frames
 * @param reps - runs per case
 * @returns the rows it printed
 */
export async function interposeBench(quick: boolean, reps: number): Promise<InterposeResult> {
  const cell = (s: string, w: number, left = false) => (left ? s.padEnd(w) : s.padStart(w));
  console.log(
    `interposers, block: 4 KiB random writes then reads, depth ${INTERPOSE_DEPTH}, one thread, ` +
      `BlkDriver -> MmioDriverTransport -> MmioDevice -> BlkDevice -> back-end; back-end = bare ` +
      `MemoryDisk (${INTERPOSE_DISK_BYTES >> 20} MiB) or the interposer over MemoryDisks ` +
      `(snapshotLog: log file in ${tmpdir()}, fresh each run, reads mostly hit it); ` +
      `each interposer run paired with a bare run (order alternating); ratio to bare; median of ${reps}`,
  );
  const blk = await blkPart(quick, reps);
  const kiops = (r: InterposeRun) => `${(rate(r) / 1000).toFixed(1)} k`;
  const ratio = (r: InterposeRun, b: InterposeRun) => (rate(r) / rate(b)).toFixed(2);
  console.log(
    `${cell("back-end", 30, true)}  ${cell("write IOPS", 10)}  ${cell("bare", 8)}  ${cell("ratio", 5)}  ` +
      `${cell("read IOPS", 10)}  ${cell("bare", 8)}  ${cell("ratio", 5)}`,
  );
  for (const row of blk) {
    console.log(
      `${cell(row.name, 30, true)}  ${cell(kiops(row.write), 10)}  ${cell(kiops(row.bareWrite), 8)}  ` +
        `${cell(ratio(row.write, row.bareWrite), 5)}  ${cell(kiops(row.read), 10)}  ` +
        `${cell(kiops(row.bareRead), 8)}  ${cell(ratio(row.read, row.bareRead), 5)}`,
    );
  }

  console.log(
    `interposers, network: frames A -> B at the NetBackend level (no virtio driver or device), ` +
      `one thread, sink copies each frame; sniff = both switch ports wrapped, one PcapngWriter ` +
      `(2 records per frame, file in ${tmpdir()}, rotate at 64 MiB, sender awaits flush() every ` +
      `${INTERPOSE_NET_WINDOW} frames: lossless); link = two Switch segments ` +
      `joined by encryptedLink (AES-256-GCM) over a VethPair vs by a plain patchBackends cable ` +
      `(batched: batchBytes ${INTERPOSE_LINK_BATCH}, one seal per burst); ` +
      `other paths take an event-loop turn every ${INTERPOSE_NET_WINDOW} frames; median of ${reps}`,
  );
  const net = await netPart(quick, reps);
  const LABEL: Record<InterposeNetPath, string> = {
    switch: "Switch",
    sniff: "Switch, both ports sniffed",
    cable: "2 segments, cable",
    link: "2 segments, encryptedLink",
    batch: "2 segments, link, batched",
  };
  const BASE: Record<InterposeNetPath, InterposeNetPath> = {
    switch: "switch",
    sniff: "switch",
    cable: "cable",
    link: "cable",
    batch: "cable",
  };
  console.log(
    `${cell("", 6, true)}  ${cell("path", 26, true)}  ${cell("frames/s", 10)}  ` +
      `${cell("/base", 5)}  ${cell("pcap drops", 10)}`,
  );
  for (const row of net) {
    const base = net.find((r) => r.size === row.size && r.path === BASE[row.path])!.run;
    console.log(
      `${cell(`${row.size} B`, 6, true)}  ${cell(LABEL[row.path], 26, true)}  ` +
        `${cell(`${(rate(row.run) / 1e6).toFixed(3)} M`, 10)}  ` +
        `${cell((rate(row.run) / rate(base)).toFixed(2), 5)}  ` +
        `${cell(row.path === "sniff" ? `${row.dropped}` : "-", 10)}`,
    );
  }
  return { blk, net };
}
