import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkRequestType, SplitUsed } from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";
import { BlkRig, testImage } from "../src/blk-rig.js";
import { TapModel } from "../src/tap.js";

describe("TapModel", () => {
  it("holds used buffers back and releases them newest first", async () => {
    const blk = new BlkDevice(new MemoryDisk(testImage(64)));
    const popped: number[] = [];
    const tap = new TapModel(blk, { onPop: (_i, chain) => popped.push(chain.head) });
    const rig = BlkRig.wrap(tap, () => blk.whenIdle(), "mmio").init({ sectors: 64 });
    tap.hold = true;
    for (let i = 0; i < 3; i++) rig.submit({ type: BlkRequestType.IN, sector: i, inLens: [512] });
    await blk.whenIdle();
    expect(popped).toEqual([0, 3, 6]);
    expect(tap.held).toBe(3);
    expect(rig.usedIdx()).toBe(0);
    expect(tap.release()).toBe(3);
    expect(rig.usedIdx()).toBe(3);
    const ids = [0, 1, 2].map((k) =>
      rig.memory.readU32(rig.usedAddr + SplitUsed.RING + k * SplitUsed.ENTRY_SIZE),
    );
    expect(ids).toEqual([6, 3, 0]);
  });

  it("rewrites configuration reads through its readConfig hook", () => {
    const blk = new BlkDevice(new MemoryDisk(testImage(64)));
    const tap = new TapModel(blk, { readConfig: (offset, _size, v) => (offset === 12 ? 3 : v) });
    expect(tap.readConfig(12, 4)).toBe(3);
    expect(tap.readConfig(0, 4)).toBe(64);
  });
});
