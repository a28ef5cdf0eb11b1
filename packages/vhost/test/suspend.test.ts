// A vhost-blk device moved with the library's suspend / save / restore: its rings drain in the
// worker (GET_VRING_BASE, the model's stopRings), the state is saved on the VMM thread, and a
// new VhostDevice with a fresh worker resumes them from the saved ring positions. Requests
// posted before and during the suspension complete exactly once.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { type DiskSpec, describeDisk } from "@virtio-ts/backend-disk/node";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import {
  MmioDevice,
  MmioDriverTransport,
  restoreMmioDevice,
  SharedDoorbell,
  saveMmioDevice,
} from "@virtio-ts/transport";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { blkDescription, type VhostBlkArgs, VhostDevice } from "../src/index.js";

const WORKER = new URL("../dist/vhost-worker.js", import.meta.url);
const BLK = new URL("../dist/blk.js", import.meta.url);
const BACKEND_DISK = new URL("../../backend-disk/dist/node.js", import.meta.url).href;

beforeAll(() => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));
  execFileSync(process.execPath, [tsc, "-b", here(".."), here("../../backend-disk")], {
    stdio: "pipe",
  });
}, 120_000);

const open: VhostDevice[] = [];
afterEach(async () => {
  for (const d of open.splice(0)) await d.close();
});

function vhostBlk(args: VhostBlkArgs, call: SharedDoorbell): VhostDevice {
  const d = new VhostDevice({
    description: blkDescription(args),
    worker: { module: BLK, export: "createBlkModel", args },
    script: WORKER,
    call,
  });
  open.push(d);
  return d;
}

describe.each([
  ["split", false],
  ["packed", true],
] as const)("vhost-blk suspend / save / restore on a %s ring", (_name, packed) => {
  it("drains the worker's rings at the suspend, and a new worker resumes them where they stood: every request completes exactly once", async () => {
    const buffer = new SharedArrayBuffer(2048 * 512);
    const spec: DiskSpec = { kind: "memory", buffer };
    const args: VhostBlkArgs = {
      backend: { module: BACKEND_DISK, export: "openDisk", args: spec },
      disk: describeDisk(spec),
      device: { queueSize: 256 },
    };
    const memory = createGuestMemory({ size: 0x800000 });
    const call = new SharedDoorbell();
    const first = vhostBlk(args, call);
    let mmio = new MmioDevice(first, { memory, interrupt: () => call.ring() });
    const driver = new BlkDriver(
      new MmioDriverTransport({
        read: (o, s) => mmio.read(o, s),
        write: (o, s, v) => mmio.write(o, s, v),
      }),
      memory,
      new SlabAllocator(0x100000, 4096, 256),
      { ringBase: 0x10000, queueSize: 128, packed },
    );
    let running = true;
    const pump = (async () => {
      while (running) {
        await call.wait(20);
        call.take();
        driver.onInterrupt();
      }
    })();
    try {
      const data = (i: number) => new Uint8Array(4096).fill(i + 1);
      const before = Array.from({ length: 16 }, (_, i) => driver.write(i * 8, data(i)));
      await mmio.core.suspend();
      // Posted while suspended: the kicks are held; the requests wait in the ring.
      const during = Array.from({ length: 8 }, (_, i) => driver.write((16 + i) * 8, data(16 + i)));
      // The worker drained its ring: nothing in flight, and the ring moved on from 0.
      const saved = mmio.core.saveState().queues[0]!;
      expect(saved.inFlight).toEqual([]);
      expect(saved.state.availIdx).toBeGreaterThan(0);
      const bytes = saveMmioDevice(mmio);
      await mmio.core.abandon();
      const second = vhostBlk(args, call);
      mmio = restoreMmioDevice(bytes, second, { memory, interrupt: () => call.ring() });
      await Promise.all([...before, ...during]);
      expect(second.workerThreadId).not.toBe(first.workerThreadId);
      const disk = new Uint8Array(buffer);
      for (let i = 0; i < 24; i++) {
        expect(disk.subarray(i * 4096, i * 4096 + 4096)).toEqual(data(i));
      }
      const back = await Promise.all(
        Array.from({ length: 24 }, (_, i) => driver.read(i * 8, 4096)),
      );
      for (const [i, b] of back.entries()) expect(b).toEqual(data(i));
      expect(driver.inFlight).toBe(0);
    } finally {
      running = false;
      await pump;
    }
  });
});
