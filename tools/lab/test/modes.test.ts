// The exit and interrupt counts per request of modes 2 and 3 at queue depth 1. The vhost worker
// runs the built JavaScript (packages/vhost/dist), so this file builds that package first.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { MmioVersion } from "@virtio-ts/spec";
import { beforeAll, describe, expect, it } from "vitest";
import { blockSequence, measure } from "../src/measure.js";
import { ataRig, makeImage, passthroughRig, vhostRig, virtioRig } from "../src/rigs.js";

const image = makeImage(1 << 20);
const seq = blockSequence(50, 256);
const vhostDist = new URL("../../../packages/vhost/dist/", import.meta.url);

beforeAll(() => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", fileURLToPath(new URL("..", vhostDist))], {
    stdio: "pipe",
  });
});

describe("the modes side by side at queue depth 1", () => {
  it("full emulation costs 1038 exits, 8 interrupts and 4096 VMM-copied bytes per 4 KiB read", async () => {
    const r = await measure(ataRig(image), seq, 1);
    expect(r.requests).toBe(40);
    expect(r.mismatches).toBe(0);
    expect(r.counters.exits).toBe(40 * 1038);
    expect(r.counters.interrupts).toBe(40 * 8);
    expect(r.counters.vmmBytes).toBe(40 * 4096);
  });

  it("virtio-mmio v2 costs exactly 3 exits (QueueNotify, InterruptStatus, InterruptACK) and 1 interrupt per read", async () => {
    const r = await measure(virtioRig(image, MmioVersion.MODERN), seq, 1);
    expect(r.mismatches).toBe(0);
    expect(r.counters.exits).toBe(120);
    expect(r.counters.byRegister).toEqual({
      QueueNotify: 40,
      InterruptStatus: 40,
      InterruptACK: 40,
    });
    expect(r.counters.interrupts).toBe(40);
  });

  it("virtio-mmio v1 (legacy, QueuePFN) costs the same 3 exits and 1 interrupt per read, and the device copies only the 16-byte header and the status byte", async () => {
    const r = await measure(virtioRig(image, MmioVersion.LEGACY), seq, 1);
    expect(r.mismatches).toBe(0);
    expect(r.counters.byRegister).toEqual({
      QueueNotify: 40,
      InterruptStatus: 40,
      InterruptACK: 40,
    });
    expect(r.counters.interrupts).toBe(40);
    expect(r.counters.vmmBytes).toBe(40 * 17);
  });

  it("vhost serves the same reads from its worker, with at most one kick and one interrupt handler run per read", async () => {
    const rig = await vhostRig(image, {
      script: new URL("vhost-worker.js", vhostDist),
      blkModule: new URL("blk.js", vhostDist),
      backendDisk: new URL("../../backend-disk/dist/node.js", vhostDist),
    });
    try {
      const r = await measure(rig, seq, 1);
      expect(r.mismatches).toBe(0);
      expect(r.counters.byRegister.QueueNotify).toBeLessThanOrEqual(40);
      expect(r.counters.interrupts).toBeGreaterThan(0);
      expect(r.counters.byRegister.InterruptStatus).toBe(r.counters.interrupts);
    } finally {
      await rig.close();
    }
  });

  it("pass-through costs no exit and one interrupt per read", async () => {
    const rig = passthroughRig(image);
    const r = await measure(rig, seq, 1);
    expect(r.mismatches).toBe(0);
    expect(r.counters.exits).toBe(0);
    expect(r.counters.interrupts).toBe(40);
    expect(rig.fn.stats.submitted).toBe(50);
    await rig.close();
  });
});
