// The faithful lab: the guest in its own vCPU worker, every trap a synchronous exit served by the
// VMM thread. The worker runs the built JavaScript (tools/lab/dist, packages/vhost/dist), so this
// file builds the lab first. Counts only: performance is measured by `pnpm lab`, not by tests.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { blockSequence } from "../src/measure.js";
import { makeImage } from "../src/rigs.js";
import { runVcpuMode, type VcpuRunOptions } from "../src/vmm.js";

const image = makeImage(1 << 20);
const vhostDist = new URL("../../../packages/vhost/dist/", import.meta.url);
const options: VcpuRunOptions = {
  workerScript: new URL("../dist/vcpu-worker.js", import.meta.url),
  vhostFiles: {
    script: new URL("vhost-worker.js", vhostDist),
    blkModule: new URL("blk.js", vhostDist),
    backendDisk: new URL("../../backend-disk/dist/node.js", vhostDist),
  },
};

beforeAll(() => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", fileURLToPath(new URL("..", import.meta.url))], {
    stdio: "pipe",
  });
}, 120_000);

describe("the modes with the guest in a vCPU worker and every trap a VM exit", () => {
  it("full emulation: each 4 KiB read is 1038 exits served by the VMM thread and 8 injected interrupts, and returns the right block", async () => {
    const r = await runVcpuMode("ata", image, blockSequence(10, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.requests).toBe(8);
    expect(r.counters.exits).toBe(8 * 1038);
    expect(r.counters.byRegister.Data).toBe(8 * 1024);
    expect(r.counters.interrupts).toBe(8 * 8);
    expect(r.counters.vmmBytes).toBe(8 * 4096);
    expect(r.ioeventfdKicks).toBe(0);
  });

  it("virtio-mmio v2: each read at QD1 is 3 exits (QueueNotify, InterruptStatus, InterruptACK) and 1 injected interrupt", async () => {
    const r = await runVcpuMode("virtio-v2", image, blockSequence(50, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.requests).toBe(40);
    expect(r.counters.byRegister).toEqual({
      QueueNotify: 40,
      InterruptStatus: 40,
      InterruptACK: 40,
    });
    expect(r.counters.interrupts).toBe(40);
  });

  it("virtio-mmio v1 (legacy) serves the same reads through its own register file with the same 3 exits", async () => {
    const r = await runVcpuMode("virtio-v1", image, blockSequence(50, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.counters.byRegister).toEqual({
      QueueNotify: 40,
      InterruptStatus: 40,
      InterruptACK: 40,
    });
    expect(r.counters.vmmBytes).toBe(40 * 17);
  });

  it("vhost: no kick reaches the VMM thread (they go to the worker's ioeventfd) and the worker's call is the vCPU's interrupt; only the ISR read and its ACK exit", async () => {
    const r = await runVcpuMode("vhost", image, blockSequence(50, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.counters.byRegister.QueueNotify).toBeUndefined();
    expect(r.ioeventfdKicks).toBeGreaterThan(0);
    expect(r.ioeventfdKicks).toBeLessThanOrEqual(40);
    expect(r.counters.interrupts).toBeGreaterThan(0);
    expect(r.counters.byRegister.InterruptStatus).toBe(r.counters.interrupts);
    expect(r.counters.byRegister.InterruptACK).toBe(r.counters.interrupts);
    expect(r.counters.vmmBytes).toBe(0);
  });

  it("vhost with MSI-style interrupts (the irqfd's vector says used buffers): no exit to the VMM thread at all", async () => {
    const r = await runVcpuMode("vhost-msi", image, blockSequence(50, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.counters.exits).toBe(0);
    expect(r.ioeventfdKicks).toBeGreaterThan(0);
    expect(r.counters.interrupts).toBeGreaterThan(0);
  });

  it("pass-through: reads complete with no exit at all and one posted interrupt each", async () => {
    const r = await runVcpuMode("passthrough", image, blockSequence(50, 256), 1, options);
    expect(r.mismatches).toBe(0);
    expect(r.counters.exits).toBe(0);
    expect(r.counters.interrupts).toBe(40);
  });

  it("at queue depth 8 the virtio register file still serves every read right, with fewer than one interrupt per read", async () => {
    const r = await runVcpuMode("virtio-v2", image, blockSequence(200, 256), 8, options);
    expect(r.mismatches).toBe(0);
    expect(r.requests).toBe(160);
    expect(r.counters.interrupts).toBeLessThan(160);
  });
});
