// The "any virtio-net device" conformance suite of @virtio-ts/contract, run against vhost-net:
// each check gets a VhostNetDevice whose NetDevice data plane runs in a fresh worker thread,
// with the suite's recording back-end on this thread behind the frame channels and the pump.
// The worker runs the built JavaScript (packages/*/dist), so this file builds the package first.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { type NetDeviceAdapter, netDeviceSuite, runContract } from "@virtio-ts/contract";
import { describeContract } from "@virtio-ts/contract/vitest";
import type { DeviceModel } from "@virtio-ts/transport";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VhostNetDevice } from "../src/index.js";

const WORKER = new URL("../dist/vhost-worker.js", import.meta.url);
const NET = new URL("../dist/net.js", import.meta.url);
const MAC = Uint8Array.of(0x02, 0, 0, 0, 0, 0x33);

beforeAll(() => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", fileURLToPath(new URL("..", import.meta.url))], {
    stdio: "pipe",
  });
}, 120_000);

const devices: VhostNetDevice[] = [];
afterAll(async () => {
  for (const d of devices) await d.close();
});

function adapter(mtu?: number): NetDeviceAdapter {
  return {
    mac: MAC,
    create: (backend) => {
      const d = new VhostNetDevice(backend, {
        device: {
          mac: MAC,
          queueSize: 64,
          ctrlQueueSize: 16,
          ...(mtu === undefined ? {} : { mtu }),
        },
        channelSlots: 64,
        script: WORKER,
        module: NET,
        requestTimeoutMs: 5000,
      });
      devices.push(d);
      return d;
    },
    // One round of the device: wait (briefly) for the worker's next used buffer notification.
    whenIdle: async (model: DeviceModel) => {
      const d = model as VhostNetDevice;
      await d.settled().catch(() => {});
      if (await d.call.wait(5)) d.call.take();
    },
  };
}

describeContract(netDeviceSuite, adapter(), {
  name: "vhost-net (NetDevice in a worker)",
  timeout: 20_000,
});

describe("the virtio-net device suite against vhost-net", () => {
  it("passes every check with a 9000-byte MTU (frames of mtu + 14 bytes cross the channels)", async () => {
    const report = await runContract(netDeviceSuite, adapter(9000));
    expect(report.failed).toEqual([]);
    expect(report.passed).toHaveLength(netDeviceSuite.checks.length);
  }, 60_000);
});
