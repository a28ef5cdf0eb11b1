// vhost-blk end to end: BlkDriver (this thread, the "guest") → MmioDevice hosting a
// VhostDevice (this thread, the "VMM") → BlkDevice in a worker thread over shared guest memory.
// The worker runs the built JavaScript (packages/*/dist), so this file builds the package first
// (incrementally; `pnpm test` has already done it).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type DiskSpec, describeDisk } from "@virtio-ts/backend-disk/node";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceStatus, Feature, hasFeature } from "@virtio-ts/spec";
import { MmioDevice, MmioDriverTransport, RateLimitedLog } from "@virtio-ts/transport";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { pattern as random } from "../../../test-support/pattern.js";
import {
  blkDescription,
  type VhostBlkArgs,
  VhostDevice,
  type VhostWorkerSpec,
} from "../src/index.js";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const backendDiskDir = fileURLToPath(new URL("../../backend-disk", import.meta.url));
const WORKER = new URL("../dist/vhost-worker.js", import.meta.url);
const BLK = new URL("../dist/blk.js", import.meta.url);
const CRASH = new URL("./fixtures/crash-model.mjs", import.meta.url);

/** backend-disk's built module: the worker opens its disk with its `openDisk`. */
const BACKEND_DISK = new URL("../../backend-disk/dist/node.js", import.meta.url).href;

/** vhost-blk arguments for a disk the worker opens with backend-disk's `openDisk`. */
function onDisk(spec: DiskSpec): Pick<VhostBlkArgs, "backend" | "disk"> {
  return {
    backend: { module: BACKEND_DISK, export: "openDisk", args: spec },
    disk: describeDisk(spec),
  };
}

function buildDist(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  try {
    execFileSync(process.execPath, [tsc, "-b", packageDir, backendDiskDir], { stdio: "pipe" });
  } catch (e) {
    const out = String((e as { stdout?: unknown }).stdout ?? "");
    if (!existsSync(fileURLToPath(WORKER))) throw new Error(`cannot build packages/vhost:\n${out}`);
    console.warn(`tsc -b packages/vhost failed; running the existing dist.\n${out}`);
  }
}

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) await o.close();
});

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 2));
  }
}

interface Options {
  readonly sectors?: number;
  readonly args?: VhostBlkArgs;
  readonly worker?: VhostWorkerSpec;
  readonly pollUs?: number;
  readonly packed?: boolean;
  readonly requestTimeoutMs?: number;
}

function setup(o: Options = {}) {
  const sectors = o.sectors ?? 4096;
  const disk = new SharedArrayBuffer(sectors * 512);
  const args: VhostBlkArgs = o.args ?? {
    ...onDisk({ kind: "memory", buffer: disk }),
    device: { queueSize: 256 },
  };
  const memory = createGuestMemory({ size: 0x800000 });
  const faults: string[] = [];
  const vhost = new VhostDevice({
    description: blkDescription(args),
    worker: o.worker ?? { module: BLK, export: "createBlkModel", args },
    script: WORKER,
    requestTimeoutMs: o.requestTimeoutMs ?? 5000,
    ...(o.pollUs === undefined ? {} : { pollUs: o.pollUs }),
  });
  const mmio = new MmioDevice(vhost, {
    memory,
    interrupt: () => vhost.call.ring(),
    log: new RateLimitedLog({ sink: (m) => faults.push(m) }),
  });
  const transport = new MmioDriverTransport({
    read: (off, size) => mmio.read(off, size),
    write: (off, size, v) => mmio.write(off, size, v),
  });
  const newDriver = () =>
    new BlkDriver(transport, memory, new SlabAllocator(0x100000, 4096, 512), {
      ringBase: 0x10000,
      queueSize: 128,
      packed: o.packed ?? true,
    });
  let driver = newDriver();
  // The guest's interrupt handler: sleep on the call doorbell (irqfd), then reap.
  let running = true;
  const pump = (async () => {
    while (running) {
      await vhost.call.wait(20);
      vhost.call.take();
      driver.onInterrupt();
    }
  })();
  open.push({
    close: async () => {
      running = false;
      await pump;
      await vhost.close();
    },
  });
  return {
    faults,
    disk: new Uint8Array(disk),
    memory,
    vhost,
    mmio,
    get driver() {
      return driver;
    },
    /** The guest resets the device and sets it up again (§3.1.1). */
    reinit() {
      driver = newDriver();
    },
  };
}

describe("vhost-blk: BlkDevice in a worker thread", () => {
  beforeAll(buildDist, 120_000);

  it("serves 32 concurrent writes and reads of random data with no kick handled on the VMM thread", async () => {
    const t = setup();
    const jobs = Array.from({ length: 32 }, (_, i) => ({
      sector: i * 64 + (i % 7),
      data: random(512 * (1 + (i % 16)), i + 1),
    }));
    await Promise.all(jobs.map((j) => t.driver.write(j.sector, j.data)));
    // The worker wrote the shared disk: check it from this thread.
    for (const j of jobs) {
      expect(t.disk.subarray(j.sector * 512, j.sector * 512 + j.data.length)).toEqual(j.data);
    }
    const got = await Promise.all(jobs.map((j) => t.driver.read(j.sector, j.data.length)));
    for (let i = 0; i < jobs.length; i++) expect(got[i]).toEqual(jobs[i]!.data);
    const s = t.vhost.stats;
    expect(s.vmmNotifies).toBe(0);
    expect(s.workerKicks).toBeGreaterThan(0);
    expect(s.workerInterrupts).toBeGreaterThan(0);
    expect(t.mmio.exitCounts().QueueNotify).toBeGreaterThan(0);
    expect(t.vhost.workerThreadId).toBeGreaterThan(0);
  });

  it.each(["pool", "sync"] as const)(
    "serves a FileDisk opened in the worker (io: %s), and the data reaches the file",
    async (io) => {
      const dir = mkdtempSync(join(tmpdir(), "vhost-blk-"));
      try {
        const path = join(dir, "disk.img");
        writeFileSync(path, new Uint8Array(512 * 1024));
        const t = setup({
          args: { ...onDisk({ kind: "file", path, io }), device: { serial: "vhost0" } },
        });
        expect(t.driver.capacity).toBe(1024n);
        const data = random(16384, 99);
        await t.driver.write(100, data);
        await t.driver.flush();
        expect(await t.driver.read(100, data.length)).toEqual(data);
        expect(new Uint8Array(readFileSync(path)).subarray(100 * 512, 100 * 512 + 16384)).toEqual(
          data,
        );
        expect(await t.driver.getId()).toBe("vhost0");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("busy-polls with pollUs and still completes every request", async () => {
    const t = setup({ pollUs: 2000 });
    const jobs = Array.from({ length: 64 }, (_, i) => t.driver.write(i * 8, random(4096, i + 3)));
    await Promise.all(jobs);
    for (let i = 0; i < 64; i++) {
      expect(t.disk.subarray(i * 4096, i * 4096 + 4096)).toEqual(random(4096, i + 3));
    }
  });

  it.each([
    ["exits", "exit"],
    ["throws an uncaught error", "throw"],
  ] as const)(
    "§2.1.2: a worker that %s puts the device into DEVICE_NEEDS_RESET with a config interrupt, and a reset starts a fresh worker",
    async (_name, how) => {
      const buffer = new SharedArrayBuffer(256 * 512);
      const args = { buffer, sector: 8, how };
      const t = setup({
        args: onDisk({ kind: "memory", buffer }),
        worker: { module: CRASH, export: "createCrashingBlk", args },
      });
      await t.driver.write(0, random(512, 1));
      const lost = t.driver.write(8, random(512, 2)); // the worker dies on this one
      lost.catch(() => {});
      await until(() => t.mmio.core.needsReset);
      expect(t.vhost.lastError?.code).toBe("vhost-worker-died");
      expect(t.mmio.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(
        DeviceStatus.DEVICE_NEEDS_RESET,
      );
      // The configuration change interrupt reached the driver through the call doorbell: it
      // failed the request the dead worker will never complete instead of waiting forever.
      await expect(lost).rejects.toMatchObject({ code: "blk-needs-reset" });
      expect(t.vhost.workerAlive).toBe(false);
      // The guest resets and reinitialises the device: a fresh worker serves it.
      t.reinit();
      expect(t.mmio.core.needsReset).toBe(false);
      expect(await t.driver.read(0, 512)).toEqual(random(512, 1));
      expect(t.vhost.stats.workersStarted).toBe(2);
    },
  );

  it("§2.1.2: a failing model factory puts the device into DEVICE_NEEDS_RESET", async () => {
    const t = setup({ worker: { module: CRASH, export: "createNothing" } });
    await until(() => t.mmio.core.needsReset);
    expect(t.vhost.lastError?.code).toBe("vhost-factory");
    expect(t.vhost.lastError?.message).toMatch(/factory refuses/);
    expect(t.faults).toEqual([
      "virtio device 2: guest fault VhostError: SET_OWNER: the model factory failed: factory refuses",
    ]);
  });

  it("§2.1.2: a control request without reply in requestTimeoutMs puts the device into DEVICE_NEEDS_RESET", async () => {
    const t = setup({ worker: { module: CRASH, export: "createNever" }, requestTimeoutMs: 200 });
    await until(() => t.mmio.core.needsReset);
    expect(t.vhost.lastError?.code).toBe("vhost-timeout");
    expect(t.vhost.lastError?.request).toBe("SET_OWNER");
  });

  it("§2.1.2: a hostile ring found by the worker's model (avail.idx jumping past the queue size) puts the device into DEVICE_NEEDS_RESET", async () => {
    const t = setup({ packed: false });
    await t.driver.write(0, random(512, 5));
    const layout = t.mmio.core.queueLayout(0)!;
    const idx = t.memory.readU16(layout.driver + 2);
    t.memory.writeU16(layout.driver + 2, (idx + 1000) & 0xffff);
    t.mmio.write(0x50, 4, 0); // QueueNotify
    await until(() => t.mmio.core.needsReset);
    expect(t.vhost.lastError?.code).toBe("vhost-device-failed");
    expect(t.vhost.lastError?.message).toMatch(/avail/i);
    expect(t.vhost.stats.workerFaults).toBe(1);
    // The worker survived (a guest fault is not a crash) and serves the re-initialised device.
    expect(t.vhost.workerAlive).toBe(true);
    t.reinit();
    expect(await t.driver.read(0, 512)).toEqual(random(512, 5));
    expect(t.vhost.stats.workersStarted).toBe(1);
  });

  it.each([
    ["a fresh worker", "split", true],
    ["the same worker", "split", false],
    ["a fresh worker", "packed", true],
    ["the same worker", "packed", false],
  ] as const)(
    "stops (GET_VRING_BASE) and resumes (SET_VRING_BASE) in %s mid-workload on a %s ring, completing every request exactly once",
    async (_name, ring, fresh) => {
      const t = setup({ packed: ring === "packed" });
      expect(hasFeature(t.mmio.core.features, Feature.RING_PACKED)).toBe(ring === "packed");
      const N = 600;
      const DEPTH = 32;
      let next = 0;
      let completed = 0;
      const done = new Uint8Array(N);
      const lane = async () => {
        for (let i = next++; i < N; i = next++) {
          await t.driver.write(i * 4, random(2048, i + 1000));
          done[i]!++;
          completed++;
        }
      };
      const lanes = Promise.all(Array.from({ length: DEPTH }, lane));
      const restarts: number[] = [];
      for (let k = 0; k < 4; k++) {
        await until(() => completed >= ((k + 1) * N) / 6);
        restarts.push(completed);
        await t.vhost.restart({ fresh });
      }
      await lanes;
      expect(done.every((d) => d === 1)).toBe(true);
      // Restarts happened while requests were still coming.
      expect(restarts.every((c) => c < N)).toBe(true);
      expect(t.vhost.stats.workersStarted).toBe(fresh ? 5 : 1);
      for (let i = 0; i < N; i++) {
        expect(t.disk.subarray(i * 2048, i * 2048 + 2048)).toEqual(random(2048, i + 1000));
      }
      // At the ring level: one used entry per request, no more, no less.
      // Split: free-running 16-bit indices. Packed: positions in the 128-entry ring, and wrap
      // counters flipped once per lap (§2.8.1).
      const [state] = await t.vhost.stop();
      const at = ring === "split" ? N : N % 128;
      const wrap = ring === "split" ? true : Math.floor(N / 128) % 2 === 0;
      expect(state).toEqual({ availIdx: at, usedIdx: at, availWrap: wrap, usedWrap: wrap });
    },
  );

  it("§2.4: a device reset with requests in flight fences the worker, and the re-initialised device works", async () => {
    const t = setup();
    const inflight = Array.from({ length: 32 }, (_, i) => t.driver.write(i * 8, random(4096, i)));
    for (const p of inflight) p.catch(() => {});
    t.reinit(); // writes status 0 while the worker may be mid-request
    const data = random(4096, 77);
    await t.driver.write(1000, data);
    expect(await t.driver.read(1000, 4096)).toEqual(data);
    expect(t.vhost.stats.workersStarted).toBe(1);
    expect(t.mmio.core.needsReset).toBe(false);
  });
});
