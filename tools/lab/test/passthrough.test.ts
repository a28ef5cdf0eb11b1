import { GuestMemoryError } from "@virtio-ts/memory";
import { describe, expect, it } from "vitest";
import { PassthroughError } from "../src/passthrough.js";
import { makeImage, passthroughRig } from "../src/rigs.js";
import { passthroughRefusals } from "../src/scenarios.js";

const image = makeImage(1 << 20);

describe("pass-through (mode 4)", () => {
  it("refuses a second owner with PassthroughError already-owned, naming the owner", async () => {
    const r = await passthroughRefusals(image);
    expect(r.secondOwner).toBeInstanceOf(PassthroughError);
    expect((r.secondOwner as PassthroughError).code).toBe("already-owned");
    expect((r.secondOwner as PassthroughError).owner).toBe("guest0");
  });

  it("refuses a DMA past the window with dma-outside-window caused by an IOMMU translation fault, and writes nothing there", async () => {
    const r = await passthroughRefusals(image);
    const e = r.outsideWindow as PassthroughError;
    expect(e).toBeInstanceOf(PassthroughError);
    expect(e.code).toBe("dma-outside-window");
    expect(e.iova).toBe(0x60000);
    expect(e.len).toBe(512);
    expect(e.cause).toBeInstanceOf(GuestMemoryError);
    expect((e.cause as GuestMemoryError).code).toBe("translation-fault");
    expect(r.memoryUntouched).toBe(true);
    expect(r.stillServes).toBe(true);
  });

  it("reads blocks with no register file at all: one submission and one completion per request", async () => {
    const rig = passthroughRig(image);
    const d = await rig.read(5 * 8, 4096);
    expect(d[0]).toBe(5);
    expect(rig.fn.stats).toEqual({ submitted: 1, completed: 1, refused: 0, interrupts: 1 });
    expect(rig.counters().interrupts).toBe(1);
    await rig.close();
    expect(rig.disk.owner).toBeUndefined();
  });

  it("refuses everything after detach with PassthroughError detached", async () => {
    const rig = passthroughRig(image);
    await rig.close();
    const e = await rig.read(0, 4096).catch((x: unknown) => x);
    expect((e as PassthroughError).code).toBe("detached");
  });
});
