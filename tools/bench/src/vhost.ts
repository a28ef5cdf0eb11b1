// vhost bench: the same virtio-blk workload (4 KiB random reads at depth 32 through
// BlkDriver → MmioDevice → BlkDevice → FileDisk) with the device's data plane
//   (a) in the VMM thread, which handles each kick (the paravirtualized path), and
//   (b) in a vhost worker (kicks and interrupts through Atomics doorbells), with FileDisk's
//       thread-pool I/O (also busy-polling after a kick) or its synchronous I/O on the worker,
// beside raw positional reads of the same file at the same depth (FileHandle.read with a
// position), measured in the same run. The raw reads are `fs.read` with a callback on the
// descriptor (what FileDisk calls, one promise per request for the closed loop), and the guest
// reads into one buffer per lane (BlkDriver.readInto), as the raw path does. Reports requests/s, the ratio to raw reads, VMM-thread
// handler invocations per request (kicks served + interrupt callbacks on the VMM thread) and
// used buffer notifications per request.
import { randomFillSync } from "node:crypto";
import { mkdtempSync, read, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type DiskSpec, describeDisk, FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory, type GuestMemoryMap } from "@virtio-ts/memory";
import { type MmioBus, MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import { createVhostBlk } from "@virtio-ts/vhost";

/** backend-disk's built module, which the vhost worker imports to open the image. */
const BACKEND_DISK = pathToFileURL(
  createRequire(import.meta.url).resolve("@virtio-ts/backend-disk/node"),
).href;

const BLOCK = 4096;
const DEPTH = 32;
const FILE_BYTES = 64 << 20;

interface Result {
  readonly name: string;
  readonly ops: number;
  readonly ns: number;
  /** Handler invocations on the VMM thread per request (kicks served + interrupt callbacks). */
  readonly vmmPerReq: number | undefined;
  /** Used buffer notifications per request. */
  readonly irqPerReq: number | undefined;
  /** QueueNotify writes (kicks) per request. */
  readonly kickPerReq: number | undefined;
  /** Process CPU time (all threads, user + system) per request, in µs. */
  readonly cpuUs: number;
}

const perSecond = (r: Result) => r.ops / (r.ns / 1e9);

/** xorshift32 block numbers: the same sequence for every case. */
function blocks(n: number): Uint32Array {
  const out = new Uint32Array(n);
  let x = 0x9e3779b9;
  const count = FILE_BYTES / BLOCK;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) % count;
  }
  return out;
}

/**
 * Run `ops` requests with `DEPTH` lanes, each issuing its next request when one completes.
 * @returns elapsed ns and process CPU µs per request
 */
async function lanes(
  ops: number,
  one: (i: number, lane: number) => Promise<unknown>,
): Promise<{ ns: number; cpuUs: number }> {
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: DEPTH }, async (_, k) => {
      for (let i = next++; i < ops; i = next++) await one(i, k);
    }),
  );
  const ns = Number(process.hrtime.bigint() - t0);
  const cpu = process.cpuUsage(cpu0);
  return { ns, cpuUs: (cpu.user + cpu.system) / ops };
}

async function raw(path: string, ops: number, seq: Uint32Array): Promise<Result> {
  const fh = await open(path, "r");
  const bufs = Array.from({ length: DEPTH }, () => new Uint8Array(BLOCK));
  const fd = fh.fd;
  try {
    const m = await lanes(
      ops,
      (i, k) =>
        new Promise<void>((resolve, reject) =>
          read(fd, bufs[k]!, 0, BLOCK, seq[i]! * BLOCK, (e) =>
            e === null ? resolve() : reject(e),
          ),
        ),
    );
    return {
      name: "raw fs.read (position, callback)",
      ops,
      ...m,
      vmmPerReq: undefined,
      irqPerReq: undefined,
      kickPerReq: undefined,
    };
  } finally {
    await fh.close();
  }
}

function driverFor(memory: GuestMemoryMap, mmio: MmioDevice): BlkDriver {
  const bus: MmioBus = { read: (o, s) => mmio.read(o, s), write: (o, s, v) => mmio.write(o, s, v) };
  return new BlkDriver(
    new MmioDriverTransport(bus),
    memory,
    new SlabAllocator(0x100000, BLOCK + 64, 2 * DEPTH),
    { ringBase: 0x10000, queueSize: 128 },
  );
}

async function inThread(path: string, ops: number, seq: Uint32Array): Promise<Result> {
  const disk = await FileDisk.open(path, { readOnly: true });
  const model = new BlkDevice(disk);
  let kicks = 0;
  const notify = model.onQueueNotify.bind(model);
  model.onQueueNotify = (index) => {
    kicks++;
    notify(index);
  };
  const memory = createGuestMemory({ size: 0x400000 });
  let irqCalls = 0;
  let scheduled = false;
  let driver: BlkDriver | undefined;
  const reap = () => {
    scheduled = false;
    driver?.onInterrupt();
  };
  const mmio = new MmioDevice(model, {
    memory,
    // The VMM's interrupt callback: the "guest" reaps in a microtask (one per burst).
    interrupt: () => {
      irqCalls++;
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(reap);
      }
    },
  });
  driver = driverFor(memory, mmio);
  mmio.resetCounters();
  const d = driver;
  try {
    const into = Array.from({ length: DEPTH }, () => new Uint8Array(BLOCK));
    const m = await lanes(ops, (i, k) => d.readInto(seq[i]! * 8, into[k]!));
    return {
      name: "in-thread device (VMM handles kicks)",
      ops,
      ...m,
      vmmPerReq: (kicks + irqCalls) / ops,
      irqPerReq: mmio.core.stats.usedInterrupts / ops,
      kickPerReq: kicksOf(mmio) / ops,
    };
  } finally {
    await disk.close();
  }
}

async function vhost(
  path: string,
  ops: number,
  seq: Uint32Array,
  pollUs: number,
  io: "pool" | "sync" = "pool",
): Promise<Result> {
  const disk: DiskSpec = { kind: "file", path, readOnly: true, io };
  const dev = createVhostBlk(
    {
      backend: { module: BACKEND_DISK, export: "openDisk", args: disk },
      disk: describeDisk(disk),
    },
    { pollUs },
  );
  const memory = createGuestMemory({ size: 0x400000 });
  let irqCalls = 0;
  const mmio = new MmioDevice(dev, {
    memory,
    interrupt: () => {
      irqCalls++;
      dev.call.ring();
    },
  });
  const driver = driverFor(memory, mmio);
  let running = true;
  // The guest's interrupt handler sleeps on the call doorbell (irqfd), not on the VMM.
  const pump = (async () => {
    while (running) {
      if (await dev.call.wait()) {
        dev.call.take();
        driver.onInterrupt();
      }
    }
  })();
  try {
    await dev.settled();
    mmio.resetCounters();
    const before = dev.stats;
    const into = Array.from({ length: DEPTH }, () => new Uint8Array(BLOCK));
    const m = await lanes(ops, (i, k) => driver.readInto(seq[i]! * 8, into[k]!));
    const after = dev.stats;
    return {
      name:
        io === "sync"
          ? "vhost worker, sync file I/O"
          : pollUs > 0
            ? `vhost worker, busy-poll ${pollUs} µs`
            : "vhost worker (Atomics kick/call)",
      ops,
      ...m,
      vmmPerReq: (after.vmmNotifies - before.vmmNotifies + irqCalls) / ops,
      irqPerReq: (after.workerInterrupts - before.workerInterrupts) / ops,
      kickPerReq: kicksOf(mmio) / ops,
    };
  } finally {
    running = false;
    dev.call.ring(); // wake the pump so it sees running = false
    await pump;
    await dev.close();
  }
}

function kicksOf(mmio: MmioDevice): number {
  return mmio.exitCounts().QueueNotify ?? 0;
}

function median(runs: Result[]): Result {
  return [...runs].sort((a, b) => perSecond(a) - perSecond(b))[Math.floor(runs.length / 2)]!;
}

/** The vhost bench (see the top of this file). */
export async function vhostBench(quick: boolean): Promise<void> {
  const ops = quick ? 20_000 : 100_000;
  const reps = quick ? 1 : 3;
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-vhost-"));
  const path = join(dir, "disk.img");
  const data = new Uint8Array(FILE_BYTES);
  randomFillSync(data);
  writeFileSync(path, data);
  console.log(
    `vhost-blk: ${BLOCK} B random reads at depth ${DEPTH} from a ${FILE_BYTES >> 20} MiB file ` +
      `(page cache), ${ops.toLocaleString("en")} requests per run, median of ${reps}`,
  );
  try {
    const seq = blocks(ops);
    const cases: [string, () => Promise<Result>][] = [
      ["raw", () => raw(path, ops, seq)],
      ["in-thread", () => inThread(path, ops, seq)],
      ["vhost", () => vhost(path, ops, seq, 0)],
      ["vhost-poll", () => vhost(path, ops, seq, 50)],
      ["vhost-sync", () => vhost(path, ops, seq, 0, "sync")],
    ];
    // Warm up every path once (JIT, page cache), then measure them interleaved.
    for (const [, run] of cases) await run();
    const runs = new Map<string, Result[]>(cases.map(([k]) => [k, []]));
    for (let r = 0; r < reps; r++) for (const [k, run] of cases) runs.get(k)!.push(await run());
    const results = cases.map(([k]) => median(runs.get(k)!));
    const base = results[0]!;
    const cell = (x: number | undefined, d = 2) => (x === undefined ? "–" : x.toFixed(d));
    console.log(
      `${"".padEnd(38)}${"req/s".padStart(10)}${"× raw".padStart(8)}${"VMM calls/req".padStart(15)}` +
        `${"kicks/req".padStart(11)}${"irqs/req".padStart(10)}${"CPU µs/req".padStart(12)}`,
    );
    for (const r of results) {
      console.log(
        `${r.name.padEnd(38)}${Math.round(perSecond(r)).toLocaleString("en").padStart(10)}` +
          `${cell(perSecond(r) / perSecond(base)).padStart(8)}${cell(r.vmmPerReq, 3).padStart(15)}` +
          `${cell(r.kickPerReq, 3).padStart(11)}${cell(r.irqPerReq, 3).padStart(10)}` +
          `${cell(r.cpuUs, 1).padStart(12)}`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
