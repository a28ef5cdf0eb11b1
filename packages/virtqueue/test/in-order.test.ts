// VIRTIO_F_IN_ORDER on both layouts: descriptor placement in ring order (split §2.7.5.2), batched
// used entries (split §2.7.9, packed §2.8.8) written by the device queues and understood by the
// driver queues, the device's refusal to use buffers out of order, and the driver's distrust of
// a batch that names a buffer it cannot cover.
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  type DeviceQueue,
  type DriverQueue,
  NO_RING_FEATURES,
  PackedDeviceQueue,
  PackedDriverQueue,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
  UsedIdNotInFlightError,
  UsedLenTooLargeError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

const IN_ORDER = ringFeatures(featureMask(Feature.IN_ORDER));
const IN_ORDER_EVENT_IDX = ringFeatures(
  featureMask(Feature.IN_ORDER) | featureMask(Feature.RING_EVENT_IDX),
);
const SIZE = 8;
const SPLIT = { size: SIZE, desc: 0x1000, driver: 0x1080, device: 0x1100 };
const PACKED = { size: SIZE, desc: 0x1000, driver: 0x1080, device: 0x1084 };
const USED_IDX = SPLIT.device + 2;
const USED_RING = SPLIT.device + 4;

type Layout = "split" | "packed";

function pair(layout: Layout, features = IN_ORDER) {
  const mem = createGuestMemory({ size: 0x10000 });
  const drv: DriverQueue<number> =
    layout === "split"
      ? new SplitDriverQueue<number>(mem, SPLIT, features)
      : new PackedDriverQueue<number>(mem, PACKED, features);
  const dev: DeviceQueue & { readonly inFlight: number } =
    layout === "split"
      ? new SplitDeviceQueue(mem, SPLIT, features)
      : new PackedDeviceQueue(mem, PACKED, features);
  return { mem, drv, dev };
}

/** Add `n` one-segment writable buffers of 100 bytes (tokens 0..n-1), publish, pop them all. */
function fill(drv: DriverQueue<number>, dev: DeviceQueue, n: number, first = 0): number[] {
  for (let t = first; t < first + n; t++) {
    expect(drv.add([], [{ addr: 0x4000 + t * 0x100, len: 100 }], t)).toBe(true);
  }
  drv.publish();
  const chain = new DescriptorChain(SIZE);
  const heads: number[] = [];
  for (let i = 0; i < n; i++) {
    expect(dev.pop(chain)).toBe(true);
    heads.push(chain.head);
  }
  return heads;
}

function reapAll(drv: DriverQueue<number>): [number, number][] {
  const out: [number, number][] = [];
  for (let t = drv.reap(); t !== undefined; t = drv.reap()) out.push([t, drv.lastLen]);
  return out;
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe("IN_ORDER on the split ring (§2.7.5.2, §2.7.9)", () => {
  it("places chains in ring order, linking x to x + 1 and the last descriptor to 0", () => {
    const { mem, drv, dev } = pair("split");
    const chain = new DescriptorChain(SIZE);
    // Three 3-segment chains: descriptors 0-2, 3-5, then 6, 7, 0 (wrapping the table), once the
    // first chain has come back.
    const seg = (a: number) => [{ addr: a, len: 10 }];
    expect(drv.add(seg(0x4000), [...seg(0x4100), ...seg(0x4200)], 1)).toBe(true);
    expect(drv.add(seg(0x4300), [...seg(0x4400), ...seg(0x4500)], 2)).toBe(true);
    drv.publish();
    expect(dev.pop(chain)).toBe(true);
    dev.push(chain.head, 0);
    expect(drv.reap()).toBe(1);
    expect(drv.add(seg(0x4600), [...seg(0x4700), ...seg(0x4800)], 3)).toBe(true);
    drv.publish();
    const next = (i: number) => mem.readU16(SPLIT.desc + 16 * i + 14);
    const flags = (i: number) => mem.readU16(SPLIT.desc + 16 * i + 12);
    expect([1, 3, 4, 6, 7].map(next)).toEqual([2, 4, 5, 7, 0]);
    expect(mem.readU16(SPLIT.driver + 4 + 2 * 2)).toBe(6); // the third chain's head
    expect(flags(7) & 1).toBe(1); // NEXT on the table's last descriptor, linking to 0
    expect(flags(0) & 1).toBe(0); // ... which now ends the third chain
    expect(dev.pop(chain)).toBe(true);
    expect(dev.pop(chain)).toBe(true);
    expect([chain.head, chain.addr(2)]).toEqual([6, 0x4800]);
  });

  it("writes one used element for a batch, at the first buffer's entry, naming the last", () => {
    const { mem, drv, dev } = pair("split");
    const heads = fill(drv, dev, 3);
    dev.pushBatch(3, 40);
    expect(mem.readU16(USED_IDX)).toBe(3);
    expect([mem.readU32(USED_RING), mem.readU32(USED_RING + 4)]).toEqual([heads[2], 40]);
    expect(dev.inFlight).toBe(0);
    // The driver returns all three in order; the skipped ones as completely written.
    expect(reapAll(drv)).toEqual([
      [0, 100],
      [1, 100],
      [2, 40],
    ]);
    expect(drv.numFree).toBe(SIZE);
  });

  it("reads element by element when the device returns buffers one at a time", () => {
    const { drv, dev } = pair("split");
    const heads = fill(drv, dev, 3);
    for (const [i, h] of heads.entries()) dev.push(h, 10 * i);
    expect(reapAll(drv)).toEqual([
      [0, 0],
      [1, 10],
      [2, 20],
    ]);
  });

  it("refuses a batch whose id is beyond what used.idx covers, changing nothing", () => {
    const { mem, drv, dev } = pair("split");
    const heads = fill(drv, dev, 3);
    // A hostile device: used.idx moves by 1 but the element names the third buffer.
    mem.writeU32(USED_RING, heads[2]!);
    mem.writeU32(USED_RING + 4, 0);
    mem.writeU16(USED_IDX, 1);
    expect(caught(() => drv.reap())).toBeInstanceOf(UsedIdNotInFlightError);
    expect(drv.numFree).toBe(SIZE - 3);
    // A corrected index makes the same element a valid batch of three.
    mem.writeU16(USED_IDX, 3);
    expect(reapAll(drv).map(([t]) => t)).toEqual([0, 1, 2]);
  });

  it("refuses a batch whose last length exceeds that buffer", () => {
    const { mem, drv, dev } = pair("split");
    const heads = fill(drv, dev, 2);
    mem.writeU32(USED_RING, heads[1]!);
    mem.writeU32(USED_RING + 4, 101);
    mem.writeU16(USED_IDX, 2);
    expect(caught(() => drv.reap())).toBeInstanceOf(UsedLenTooLargeError);
  });

  it("keeps used_event on the entry after a batch with EVENT_IDX, so the next push interrupts", () => {
    const { mem, drv, dev } = pair("split", IN_ORDER_EVENT_IDX);
    fill(drv, dev, 4);
    dev.pushBatch(3, 7);
    expect(dev.needsInterrupt()).toBe(true);
    expect(reapAll(drv).map(([t]) => t)).toEqual([0, 1, 2]);
    expect(drv.enableInterrupts()).toBe(false);
    expect(mem.readU16(SPLIT.driver + 4 + 2 * SIZE)).toBe(3); // used_event
    dev.push(3, 1);
    expect(dev.needsInterrupt()).toBe(true);
  });
});

describe.each(["split", "packed"] as const)("IN_ORDER device side (%s)", (layout) => {
  it("refuses to push a buffer that is not the oldest in flight, naming it", () => {
    const { drv, dev } = pair(layout);
    const heads = fill(drv, dev, 2);
    expect(() => dev.push(heads[1]!, 0)).toThrow(/not the oldest .* in flight/);
    dev.push(heads[0]!, 0);
    dev.push(heads[1]!, 0);
    expect(reapAll(drv).map(([t]) => t)).toEqual([0, 1]);
  });

  it("refuses pushBatch with a count outside [1, in flight] or a length over the last buffer", () => {
    const { drv, dev } = pair(layout);
    fill(drv, dev, 2);
    expect(() => dev.pushBatch(0, 0)).toThrow(/count must be an integer in \[1, 2\]/);
    expect(() => dev.pushBatch(3, 0)).toThrow(/count must be an integer in \[1, 2\]/);
    expect(() => dev.pushBatch(2, 101)).toThrow(/written must be an integer in \[0, 100\]/);
    expect(dev.inFlight).toBe(2);
  });

  it("refuses pushBatch when IN_ORDER was not negotiated", () => {
    const mem: GuestMemory = createGuestMemory({ size: 0x10000 });
    const dev =
      layout === "split"
        ? new SplitDeviceQueue(mem, SPLIT, NO_RING_FEATURES)
        : new PackedDeviceQueue(mem, PACKED, NO_RING_FEATURES);
    expect(() => dev.pushBatch(1, 0)).toThrow(/needs VIRTIO_F_IN_ORDER/);
  });

  it("returns batches across the ring's wrap, every token once with the right length", () => {
    const { drv, dev } = pair(layout);
    const seen: [number, number][] = [];
    const expected: [number, number][] = [];
    for (let round = 0; round < 5; round++) {
      const t = 5 * round;
      fill(drv, dev, 5, t);
      dev.pushBatch(2, 11);
      dev.pushBatch(3, 22);
      expected.push([t, 100], [t + 1, 11], [t + 2, 100], [t + 3, 100], [t + 4, 22]);
      seen.push(...reapAll(drv));
      expect(drv.numFree).toBe(SIZE);
    }
    expect(seen).toEqual(expected);
  });

  it("tells a driver that re-enables interrupts in the middle of a batch to keep reaping", () => {
    const { drv, dev } = pair(layout, IN_ORDER_EVENT_IDX);
    fill(drv, dev, 3);
    dev.pushBatch(3, 5);
    drv.disableInterrupts();
    expect(drv.reap()).toBe(0);
    expect(drv.enableInterrupts()).toBe(true);
    expect(reapAll(drv)).toEqual([
      [1, 100],
      [2, 5],
    ]);
    expect(drv.enableInterrupts()).toBe(false);
  });
});
