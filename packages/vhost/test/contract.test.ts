// The "any virtio-blk device" conformance suite of @virtio-ts/contract, run against vhost-blk:
// each check gets a VhostDevice whose BlkDevice data plane runs in a fresh worker thread over
// a MemoryDisk sharing the suite's image (a SharedArrayBuffer, so the suite can inspect it).
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { type DiskSpec, describeDisk } from "@virtio-ts/backend-disk/node";
import { type BlkDeviceAdapter, blkDeviceSuite } from "@virtio-ts/contract";
import { describeContract } from "@virtio-ts/contract/vitest";
import type { DeviceModel } from "@virtio-ts/transport";
import { afterAll, beforeAll } from "vitest";
import { blkDescription, type VhostBlkArgs, VhostDevice } from "../src/index.js";

const WORKER = new URL("../dist/vhost-worker.js", import.meta.url);
const BLK = new URL("../dist/blk.js", import.meta.url);
/** backend-disk's built module: the worker opens its disk with its `openDisk`. */
const BACKEND_DISK = new URL("../../backend-disk/dist/node.js", import.meta.url).href;

beforeAll(() => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));
  execFileSync(process.execPath, [tsc, "-b", here(".."), here("../../backend-disk")], {
    stdio: "pipe",
  });
}, 120_000);

const devices = new Map<VhostDevice, Uint8Array>();
afterAll(async () => {
  for (const d of devices.keys()) await d.close();
});

const vhostBlk: BlkDeviceAdapter = {
  create: ({ image, readOnly }) => {
    const buffer = new SharedArrayBuffer(image.length);
    new Uint8Array(buffer).set(image);
    const disk: DiskSpec = { kind: "memory", buffer, readOnly };
    const args: VhostBlkArgs = {
      backend: { module: BACKEND_DISK, export: "openDisk", args: disk },
      disk: describeDisk(disk),
      device: { serial: "vhost" },
    };
    const d = new VhostDevice({
      description: blkDescription(args),
      worker: { module: BLK, export: "createBlkModel", args },
      script: WORKER,
    });
    devices.set(d, new Uint8Array(buffer));
    return d;
  },
  readDisk: (model: DeviceModel, sector: number, length: number) =>
    devices.get(model as VhostDevice)!.slice(sector * 512, sector * 512 + length),
  // One round of the device: wait (briefly) for the worker's next used buffer notification.
  whenIdle: async (model: DeviceModel) => {
    const d = model as VhostDevice;
    await d.settled().catch(() => {});
    if (await d.call.wait(5)) d.call.take();
  },
};

describeContract(blkDeviceSuite, vhostBlk, {
  name: "vhost-blk (BlkDevice in a worker)",
  timeout: 20_000,
});
