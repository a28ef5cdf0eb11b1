import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  indirectAreaSize,
  NO_RING_FEATURES,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
  UsedIdNotInFlightError,
  UsedIndexJumpError,
  UsedLenTooLargeError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { RawSplitRing } from "./helpers/raw-split-ring.js";

const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const D = RawSplitRing.DATA;

function setup(size = 8, features = NO_RING_FEATURES, indirect = false) {
  const raw = new RawSplitRing(size);
  const q = new SplitDriverQueue<string>(
    raw.mem,
    raw.layout,
    features,
    indirect ? { indirect: { addr: 0x8000, maxEntries: 4 } } : {},
  );
  return { raw, q, mem: raw.mem, L: raw.layout };
}

function readDesc(raw: RawSplitRing, i: number, table = raw.layout.desc) {
  const at = table + 16 * i;
  return {
    addr: Number(raw.mem.readU64(at)),
    len: raw.mem.readU32(at + 8),
    flags: raw.mem.readU16(at + 12),
    next: raw.mem.readU16(at + 14),
  };
}

/** Device-side helper: write a used element and bump used.idx, as a (possibly hostile) device. */
function deviceUse(raw: RawSplitRing, slot: number, id: number, len: number, newIdx = slot + 1) {
  const at = raw.layout.device + 4 + 8 * (slot % raw.layout.size);
  raw.mem.writeU32(at, id);
  raw.mem.writeU32(at + 4, len);
  raw.mem.writeU16(raw.layout.device + 2, newIdx);
}

describe("SplitDriverQueue.add and publish", () => {
  it("§2.7.13.1 writes readable then writable descriptors linked by NEXT", () => {
    const { raw, q } = setup();
    expect(
      q.add(
        [{ addr: D, len: 16 }],
        [
          { addr: D + 0x100, len: 512 },
          { addr: D + 0x400, len: 1 },
        ],
        "a",
      ),
    ).toBe(true);
    expect(readDesc(raw, 0)).toEqual({ addr: D, len: 16, flags: 1, next: 1 });
    expect(readDesc(raw, 1)).toEqual({ addr: D + 0x100, len: 512, flags: 3, next: 2 });
    expect(readDesc(raw, 2)).toEqual({ addr: D + 0x400, len: 1, flags: 2, next: 0 });
    expect(q.numFree).toBe(5);
  });

  it("§2.7.13.3 makes chains visible only when publish stores avail.idx", () => {
    const { raw, q, mem, L } = setup();
    q.add([{ addr: D, len: 4 }], [], "a");
    q.add([{ addr: D, len: 4 }], [], "b");
    expect(mem.readU16(L.driver + 2)).toBe(0);
    expect([mem.readU16(L.driver + 4), mem.readU16(L.driver + 6)]).toEqual([0, 1]);
    q.publish();
    expect(mem.readU16(L.driver + 2)).toBe(2);
    expect(raw.usedIdx()).toBe(0);
  });

  it("writes 64-bit addresses as two little-endian halves", () => {
    const { raw, q } = setup();
    q.add([{ addr: 2 ** 40 + 0x123, len: 4 }], [], "a");
    expect(raw.mem.readU64(raw.layout.desc)).toBe(2n ** 40n + 0x123n);
  });

  it("returns false, adding nothing, when there are not enough free descriptors", () => {
    const { q } = setup(4);
    expect(
      q.add(
        [
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
        ],
        [],
        "a",
      ),
    ).toBe(true);
    expect(
      q.add(
        [
          { addr: D, len: 1 },
          { addr: D, len: 1 },
        ],
        [],
        "b",
      ),
    ).toBe(false);
    expect(q.numFree).toBe(1);
  });

  it("rejects bad host arguments with errors that name them", () => {
    const { q } = setup(4);
    expect(() => q.add([], [], "a")).toThrow(/at least one segment/);
    expect(() => q.add([{ addr: -1, len: 1 }], [], "a")).toThrow(/readable\[0\]\.addr/);
    expect(() => q.add([], [{ addr: 0, len: 2 ** 32 }], "a")).toThrow(/writable\[0\]\.len/);
    expect(() => q.add([{ addr: 0, len: 1 }], [], undefined as unknown as string)).toThrow(/token/);
    const five = Array.from({ length: 5 }, () => ({ addr: D, len: 1 }));
    expect(() => q.add(five, [], "a")).toThrow(/longer than the queue size 4/);
  });

  it("§2.7.10.1 without EVENT_IDX kicks unless the device set VIRTQ_USED_F_NO_NOTIFY", () => {
    const { q, mem, L } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    expect(q.publish()).toBe(true);
    expect(q.publish()).toBe(false); // nothing new
    mem.writeU16(L.device, 1);
    q.add([{ addr: D, len: 1 }], [], "b");
    expect(q.publish()).toBe(false);
  });

  it("§2.7.10.1 with EVENT_IDX kicks only when avail.idx passes avail_event", () => {
    const { raw, q, mem, L } = setup(8, EVENT_IDX);
    const availEventAt = L.device + 4 + 8 * 8;
    mem.writeU16(availEventAt, 1); // device wants a kick once idx moves past 1
    q.add([{ addr: D, len: 1 }], [], "a");
    expect(q.publish()).toBe(false); // idx 0 -> 1 does not pass 1
    q.add([{ addr: D, len: 1 }], [], "b");
    expect(q.publish()).toBe(true); // idx 1 -> 2 passes
    expect(raw.availIdx).toBe(0);
  });

  it("§2.7.10.1 the EVENT_IDX kick decision is correct across the 16-bit index wrap", () => {
    const { q, mem, L } = setup(8, EVENT_IDX);
    const dev = new SplitDeviceQueue(mem, L, EVENT_IDX);
    const chain = new DescriptorChain(8);
    let kicks = 0;
    for (let i = 0; i < 70000; i++) {
      q.add([{ addr: D, len: 1 }], [], "x");
      if (q.publish()) kicks++;
      expect(dev.pop(chain)).toBe(true); // device pops and re-arms avail_event each time
      dev.push(chain.head, 0);
      expect(q.reap()).toBe("x");
    }
    expect(kicks).toBe(70000); // the device always waited for exactly the next entry
  });

  it("§2.7.5.3 uses one descriptor and an indirect table when INDIRECT_DESC is negotiated", () => {
    const { raw, q } = setup(8, INDIRECT, true);
    expect(indirectAreaSize(8, 4)).toBe(8 * 4 * 16);
    q.add(
      [{ addr: D, len: 16 }],
      [
        { addr: D + 0x100, len: 512 },
        { addr: D + 0x400, len: 1 },
      ],
      "a",
    );
    expect(q.numFree).toBe(7);
    expect(readDesc(raw, 0)).toEqual({ addr: 0x8000, len: 48, flags: 4, next: 0 });
    expect(readDesc(raw, 0, 0x8000)).toEqual({ addr: D, len: 16, flags: 1, next: 1 });
    expect(readDesc(raw, 1, 0x8000)).toEqual({ addr: D + 0x100, len: 512, flags: 3, next: 2 });
    expect(readDesc(raw, 2, 0x8000)).toMatchObject({ addr: D + 0x400, len: 1, flags: 2 });
  });
});

describe("SplitDriverQueue.reap", () => {
  it("returns tokens with the written length and frees the descriptors", () => {
    const { raw, q } = setup(4);
    q.add(
      [
        { addr: D, len: 4 },
        { addr: D, len: 4 },
      ],
      [{ addr: D, len: 100 }],
      "a",
    );
    q.add([], [{ addr: D, len: 8 }], "b");
    q.publish();
    expect(q.numFree).toBe(0);
    deviceUse(raw, 0, 3, 8);
    expect(q.reap()).toBe("b");
    expect(q.lastLen).toBe(8);
    expect(q.numFree).toBe(1);
    expect(q.reap()).toBeUndefined();
    deviceUse(raw, 1, 0, 77);
    expect(q.reap()).toBe("a");
    expect(q.lastLen).toBe(77);
    expect(q.numFree).toBe(4);
    expect(
      q.add(
        [
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
        ],
        [],
        "c",
      ),
    ).toBe(true);
  });

  it("frees chains from its private shadow even if the device scribbles on the descriptor table", () => {
    const { raw, q } = setup(4);
    q.add(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      [],
      "a",
    );
    q.publish();
    raw.mem.fill(raw.layout.desc, 64, 0xff); // hostile device overwrites next fields
    deviceUse(raw, 0, 0, 0);
    expect(q.reap()).toBe("a");
    expect(q.numFree).toBe(4);
    expect(
      q.add(
        [
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
        ],
        [],
        "b",
      ),
    ).toBe(true);
  });

  it("rejects a used id that is not in flight", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    deviceUse(raw, 0, 5, 0);
    expect(() => q.reap()).toThrow(UsedIdNotInFlightError);
    deviceUse(raw, 0, 1000, 0);
    try {
      q.reap();
    } catch (e) {
      expect(e).toMatchObject({ code: "used-id-not-in-flight", id: 1000 });
    }
  });

  it("rejects a used length larger than the writable bytes offered", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 100 }], [{ addr: D, len: 10 }], "a");
    q.publish();
    deviceUse(raw, 0, 0, 11);
    expect(() => q.reap()).toThrow(UsedLenTooLargeError);
  });

  it("rejects a used index that jumps more than the queue size", () => {
    const { raw, q } = setup();
    deviceUse(raw, 0, 0, 0, 9);
    expect(() => q.reap()).toThrow(UsedIndexJumpError);
  });

  it("§2.7.10 writes used_event as the next index it will reap while interrupts are enabled", () => {
    const { raw, q, mem, L } = setup(8, EVENT_IDX);
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    deviceUse(raw, 0, 0, 0);
    q.reap();
    expect(mem.readU16(L.driver + 4 + 2 * 8)).toBe(1);
  });

  it("disableInterrupts sets NO_INTERRUPT, enableInterrupts clears it and reports pending buffers", () => {
    const { raw, q, mem, L } = setup();
    q.disableInterrupts();
    expect(mem.readU16(L.driver)).toBe(1);
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    deviceUse(raw, 0, 0, 0);
    expect(q.enableInterrupts()).toBe(true);
    expect(mem.readU16(L.driver)).toBe(0);
    expect(q.reap()).toBe("a");
    expect(q.enableInterrupts()).toBe(false);
  });

  it("with EVENT_IDX, disableInterrupts stops the device's interrupts until re-enabled", () => {
    const { q, mem, L } = setup(8, EVENT_IDX);
    const dev = new SplitDeviceQueue(mem, L, EVENT_IDX);
    const chain = new DescriptorChain(8);
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    dev.pop(chain);
    dev.push(chain.head, 0);
    expect(dev.needsInterrupt()).toBe(true);
    q.reap();
    q.disableInterrupts();
    for (const t of ["b", "c"]) {
      q.add([{ addr: D, len: 1 }], [], t);
      q.publish();
      dev.pop(chain);
      dev.push(chain.head, 0);
      expect(dev.needsInterrupt()).toBe(false);
    }
    expect(q.enableInterrupts()).toBe(true);
  });

  it("reset forgets in-flight chains and zeroes the ring", () => {
    const { q, mem, L } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    q.reset();
    expect(q.numFree).toBe(8);
    expect(mem.readU16(L.driver + 2)).toBe(0);
    expect(q.getState()).toMatchObject({ availIdx: 0, usedIdx: 0 });
  });
});
