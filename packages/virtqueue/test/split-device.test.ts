// SplitDeviceQueue against rings written by hand (test/helpers/raw-split-ring.ts): one test per
// rule, the section of the spec in the name where it states a MUST. Hostile input has its own
// file (hostile-split.test.ts).
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  ChainTooLongError,
  DescriptorChain,
  HeadInFlightError,
  NO_RING_FEATURES,
  QueueConfigError,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
  TotalLengthOverflowError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  permissiveMemory,
  RawSplitRing,
} from "./helpers/raw-split-ring.js";

const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const D = RawSplitRing.DATA;
const TABLE = RawSplitRing.TABLE;
const MEM_END = 0x10000;

function setup(size = 8, features = NO_RING_FEATURES, capacity = size) {
  const raw = new RawSplitRing(size);
  const q = new SplitDeviceQueue(raw.mem, raw.layout, features);
  return { raw, q, chain: new DescriptorChain(capacity) };
}

const chain8 = () => new DescriptorChain(8);

/** Offer `n` one-descriptor readable chains at heads 0..n-1. */
function offerSimple(raw: RawSplitRing, n: number, from = 0) {
  for (let i = from; i < from + n; i++) {
    raw.writeDesc(i, { addr: D, len: 4 });
    raw.offer(i);
  }
}

describe("ringFeatures", () => {
  it("reads VIRTIO_F_INDIRECT_DESC (28), VIRTIO_F_EVENT_IDX (29) and VIRTIO_F_IN_ORDER (35)", () => {
    expect(ringFeatures(0n)).toEqual({ indirect: false, eventIdx: false, inOrder: false });
    expect(ringFeatures((1n << 28n) | (1n << 35n))).toEqual({
      indirect: true,
      eventIdx: false,
      inOrder: true,
    });
    expect(ringFeatures((1n << 29n) | (1n << 32n))).toEqual({
      indirect: false,
      eventIdx: true,
      inOrder: false,
    });
  });

  it("refuses a feature set that is not a bigint, naming it", () => {
    expect(() => ringFeatures((1 << 28) as unknown as bigint)).toThrow(TypeError);
    expect(() => ringFeatures((1 << 28) as unknown as bigint)).toThrow(/features/);
  });
});

describe("SplitDeviceQueue layout checks", () => {
  it("§2.7 refuses a queue size that is not a power of 2, naming the field", () => {
    const raw = new RawSplitRing(8);
    let e: unknown;
    try {
      new SplitDeviceQueue(raw.mem, { ...raw.layout, size: 6 }, NO_RING_FEATURES);
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(QueueConfigError);
    expect(e).toMatchObject({ field: "size", value: 6 });
  });

  it("§2.7.1 refuses a descriptor table that is not 16-byte aligned", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, desc: 0x1008 }, NO_RING_FEATURES),
    ).toThrow(/desc area must be 16-byte aligned/);
  });

  it("§2.7.1 refuses a used ring that is not 4-byte aligned and an avail ring that is not 2-byte aligned", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, device: 0x3002 }, NO_RING_FEATURES),
    ).toThrow(QueueConfigError);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, driver: 0x2001 }, NO_RING_FEATURES),
    ).toThrow(QueueConfigError);
  });

  it("refuses a used ring that runs past the end of guest memory", () => {
    const raw = new RawSplitRing(8);
    expect(
      () => new SplitDeviceQueue(raw.mem, { ...raw.layout, device: MEM_END - 8 }, NO_RING_FEATURES),
    ).toThrow(/outside guest memory/);
  });

  it("writes nothing into guest memory when constructed", () => {
    const raw = new RawSplitRing(8);
    raw.mem.fill(raw.layout.device, 6 + 8 * 8, 0xaa);
    new SplitDeviceQueue(raw.mem, raw.layout, EVENT_IDX);
    expect([...raw.mem.slice(raw.layout.device, 6 + 8 * 8)].every((b) => b === 0xaa)).toBe(true);
  });
});

describe("SplitDeviceQueue.pop", () => {
  it("returns false when the driver has made nothing available", () => {
    const { q, chain } = setup();
    expect(q.pop(chain)).toBe(false);
    expect(q.numAvailable()).toBe(0);
  });

  it("§2.7.5 reads a chain of readable then writable descriptors in next order", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(3, { addr: D, len: 16, flags: F_NEXT, next: 5 });
    raw.writeDesc(5, { addr: D + 0x100, len: 512, flags: F_NEXT | F_WRITE, next: 1 });
    raw.writeDesc(1, { addr: D + 0x400, len: 1, flags: F_WRITE });
    raw.offer(3);
    expect(q.numAvailable()).toBe(1);
    expect(q.pop(chain)).toBe(true);
    expect(chain).toMatchObject({
      head: 3,
      count: 3,
      readableCount: 1,
      readableBytes: 16,
      writableBytes: 513,
    });
    expect([chain.addr(0), chain.len(0), chain.writable(0)]).toEqual([D, 16, false]);
    expect([chain.addr(1), chain.len(1), chain.writable(1)]).toEqual([D + 0x100, 512, true]);
    expect([chain.addr(2), chain.len(2), chain.writable(2)]).toEqual([D + 0x400, 1, true]);
    expect(q.pop(chain)).toBe(false);
    expect(q.inFlight).toBe(1);
  });

  it("ignores descriptor flag bits other than NEXT, WRITE and INDIRECT", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8, flags: 0xfff8 | F_WRITE });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect([chain.count, chain.writableBytes]).toEqual([1, 8]);
  });

  it("keeps the validated copy when the guest rewrites a descriptor after pop", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8 });
    raw.offer(0);
    q.pop(chain);
    raw.writeDesc(0, { addr: 0xdead0000, len: 0xffff, flags: F_NEXT | F_WRITE, next: 0 });
    expect([chain.count, chain.addr(0), chain.len(0), chain.writable(0)]).toEqual([1, D, 8, false]);
  });

  it("§2.7.5.3.1 accepts a chain exactly as long as the queue", () => {
    const { raw, q, chain } = setup(4);
    for (let i = 0; i < 4; i++)
      raw.writeDesc(i, { addr: D + i * 16, len: 16, flags: i < 3 ? F_NEXT : 0, next: i + 1 });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.count).toBe(4);
  });

  it("§2.7.5.3.1 accepts direct plus indirect descriptors adding up to exactly the queue size", () => {
    const { raw, q, chain } = setup(4, INDIRECT, 16);
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 1 });
    raw.writeDesc(1, { addr: TABLE, len: 48, flags: F_INDIRECT });
    raw.writeTable(TABLE, [
      { addr: D, len: 8, flags: F_NEXT, next: 1 },
      { addr: D, len: 8, flags: F_NEXT | F_WRITE, next: 2 },
      { addr: D, len: 8, flags: F_WRITE },
    ]);
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect([chain.count, chain.readableCount]).toEqual([4, 2]);
  });

  it("§2.7.5.3.1 rejects a chain longer than the queue size even when the cursor holds more", () => {
    const { raw, q, chain } = setup(4, INDIRECT, 16);
    raw.writeDesc(0, { addr: TABLE, len: 80, flags: F_INDIRECT });
    raw.offer(0);
    // A 5-entry table cannot fit a queue of 4: refused before reading it.
    expect(() => q.pop(chain)).toThrow(ChainTooLongError);
  });

  it("§2.7.5.3.2 follows an indirect table placed after direct descriptors", () => {
    const { raw, q, chain } = setup(8, INDIRECT);
    raw.writeDesc(0, { addr: D, len: 16, flags: F_NEXT, next: 2 });
    raw.writeDesc(2, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeTable(TABLE, [
      { addr: D + 0x10, len: 100, flags: F_NEXT, next: 1 },
      { addr: D + 0x200, len: 200, flags: F_WRITE },
    ]);
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain).toMatchObject({ count: 3, readableCount: 2, readableBytes: 116 });
    expect(chain.writableBytes).toBe(200);
    expect(chain.addr(2)).toBe(D + 0x200);
  });

  it("§2.7.5.3.2 ignores the WRITE flag of the descriptor that refers to an indirect table", () => {
    const { raw, q, chain } = setup(8, INDIRECT);
    raw.writeDesc(4, { addr: TABLE, len: 16, flags: F_INDIRECT | F_WRITE });
    raw.writeTable(TABLE, [{ addr: D, len: 24 }]);
    raw.offer(4);
    expect(q.pop(chain)).toBe(true);
    expect([chain.head, chain.readableCount, chain.readableBytes, chain.writableBytes]).toEqual([
      4, 1, 24, 0,
    ]);
  });

  it("§2.7.5.3 follows next links inside an indirect table, out of table order", () => {
    const { raw, q, chain } = setup(8, INDIRECT);
    raw.writeDesc(0, { addr: TABLE, len: 48, flags: F_INDIRECT });
    raw.writeTable(TABLE, [
      { addr: D, len: 1, flags: F_NEXT, next: 2 },
      { addr: D + 0x20, len: 3, flags: F_WRITE },
      { addr: D + 0x10, len: 2, flags: F_NEXT | F_WRITE, next: 1 },
    ]);
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect([0, 1, 2].map((i) => chain.addr(i))).toEqual([D, D + 0x10, D + 0x20]);
  });

  it("accepts a buffer ending exactly at the end of guest memory", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: MEM_END - 64, len: 64, flags: F_WRITE });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.writableBytes).toBe(64);
  });

  it("accepts zero-length buffers inside guest memory and at its very end", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 0, flags: F_NEXT, next: 1 });
    raw.writeDesc(1, { addr: MEM_END, len: 0, flags: F_WRITE });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect([chain.count, chain.len(0), chain.len(1), chain.writableBytes]).toEqual([2, 0, 0, 0]);
  });

  it("§2.7.5.2 accepts 2^32 − 1 bytes in total and refuses 2^32, readable and writable together", () => {
    // Only the length arithmetic is under test: this memory accepts every range.
    const raw = new RawSplitRing(8);
    const q = new SplitDeviceQueue(permissiveMemory(raw.mem), raw.layout, NO_RING_FEATURES);
    const chain = new DescriptorChain(8);
    raw.writeDesc(0, { addr: D, len: 0xffff_fffe, flags: F_NEXT, next: 1 });
    raw.writeDesc(1, { addr: D, len: 1, flags: F_WRITE });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.readableBytes + chain.writableBytes).toBe(0xffff_ffff);
    raw.writeDesc(2, { addr: D, len: 0xffff_ffff, flags: F_NEXT, next: 3 });
    raw.writeDesc(3, { addr: D, len: 1, flags: F_WRITE });
    raw.offer(2);
    expect(() => q.pop(chain)).toThrow(TotalLengthOverflowError);
  });

  it("§2.7.6 consumes avail entries in ring order across the 16-bit index wrap", () => {
    const { raw, q, chain } = setup(4);
    q.setState({ availIdx: 0xfffe, usedIdx: 0, availWrap: true, usedWrap: true });
    raw.availIdx = 0xfffe;
    offerSimple(raw, 4);
    expect(q.numAvailable()).toBe(4);
    const heads: number[] = [];
    while (q.pop(chain)) heads.push(chain.head);
    expect(heads).toEqual([0, 1, 2, 3]);
    expect(q.getState().availIdx).toBe(2);
  });

  it("§2.7.6 pops a head again once it was pushed and made available anew", () => {
    const { raw, q, chain } = setup();
    offerSimple(raw, 1);
    q.pop(chain);
    raw.offer(0);
    expect(() => q.pop(chain)).toThrow(HeadInFlightError);
    q.reset();
    raw.clearRing();
    offerSimple(raw, 1);
    q.pop(chain);
    q.push(0, 0);
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
  });

  it("with trackInFlight off, accepts a head made available twice", () => {
    const raw = new RawSplitRing(8);
    const q = new SplitDeviceQueue(raw.mem, raw.layout, NO_RING_FEATURES, { trackInFlight: false });
    const chain = new DescriptorChain(8);
    offerSimple(raw, 1);
    raw.offer(0);
    expect([q.pop(chain), q.pop(chain), q.inFlight]).toEqual([true, true, 2]);
    q.push(0, 0);
    q.push(0, 0);
    expect(raw.usedIdx()).toBe(2);
    expect(() => q.push(8, 0)).toThrow(/head must be a descriptor index in \[0, 8\), got 8/);
  });
});

describe("SplitDeviceQueue.push", () => {
  it("§2.7.8.2 writes the used element, then advances used.idx", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(6, { addr: D, len: 64, flags: F_WRITE });
    raw.offer(6);
    q.pop(chain);
    q.push(chain.head, 42);
    expect(raw.usedIdx()).toBe(1);
    expect(raw.usedElem(0)).toEqual({ id: 6, len: 42 });
    expect(q.inFlight).toBe(0);
  });

  it("§2.7.8 fills used slots in order across the 16-bit index wrap, in any completion order", () => {
    const { raw, q, chain } = setup(4);
    q.setState({ availIdx: 0, usedIdx: 0xfffe, availWrap: true, usedWrap: true });
    offerSimple(raw, 4);
    while (q.pop(chain));
    for (const h of [2, 0, 3, 1]) q.push(h, 0);
    expect(raw.usedIdx()).toBe(2);
    // used.idx 0xfffe and 0xffff land in slots 2 and 3, then 0 and 1.
    expect([2, 3, 0, 1].map((s) => raw.usedElem(s).id)).toEqual([2, 0, 3, 1]);
  });

  it("refuses a head that is not in flight, naming it", () => {
    const { raw, q, chain } = setup();
    expect(() => q.push(3, 0)).toThrow(/head 3 is not a chain in flight/);
    offerSimple(raw, 1);
    q.pop(chain);
    q.push(0, 0);
    expect(() => q.push(0, 0)).toThrow(RangeError);
    expect(raw.usedIdx()).toBe(1);
  });

  it("refuses a head that is not an index of the queue, naming it", () => {
    const { q } = setup();
    for (const bad of [-1, 8, 1.5, Number.NaN, 2 ** 32, "0", 0n, null]) {
      expect(() => q.push(bad as number, 0)).toThrow(RangeError);
      expect(() => q.push(bad as number, 0)).toThrow(/head must be a descriptor index/);
    }
  });

  it("refuses a written length that is negative, fractional or larger than the writable bytes", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 64, flags: F_WRITE });
    raw.offer(0);
    q.pop(chain);
    for (const bad of [65, -1, 0.5, Number.NaN, 2 ** 32, "8", 8n, null]) {
      expect(() => q.push(0, bad as number)).toThrow(RangeError);
      expect(() => q.push(0, bad as number)).toThrow(/written must be an integer in \[0, 64\]/);
    }
    expect(raw.usedIdx()).toBe(0);
    // -0 is the integer 0.
    q.push(0, -0);
    expect(raw.usedElem(0).len).toBe(0);
    raw.offer(0);
    q.pop(chain);
    q.push(0, 64);
    expect(raw.usedElem(1).len).toBe(64);
  });
});

describe("SplitDeviceQueue.use and publishUsed", () => {
  it("§2.7.8.2 writes used elements without moving used.idx, then publishUsed stores it once", () => {
    const { raw, q, chain } = setup();
    offerSimple(raw, 3);
    while (q.pop(chain));
    q.use(2, 0);
    q.use(0, 0);
    expect(raw.usedIdx()).toBe(0);
    expect([raw.usedElem(0).id, raw.usedElem(1).id]).toEqual([2, 0]);
    expect(q.inFlight).toBe(1);
    q.publishUsed();
    expect(raw.usedIdx()).toBe(2);
    q.use(1, 0);
    expect(raw.usedIdx()).toBe(2);
    q.publishUsed();
    expect(raw.usedIdx()).toBe(3);
  });

  it("publishes what use left waiting in push, needsInterrupt and getState", () => {
    for (const publisher of ["push", "needsInterrupt", "getState"] as const) {
      const { raw, q, chain } = setup();
      offerSimple(raw, 2);
      while (q.pop(chain));
      q.use(0, 0);
      if (publisher === "push") q.push(1, 0);
      else if (publisher === "needsInterrupt") expect(q.needsInterrupt()).toBe(true);
      else expect(q.getState().usedIdx).toBe(1);
      expect(raw.usedIdx()).toBe(publisher === "push" ? 2 : 1);
    }
  });

  it("stores nothing when nothing waits, so a driver's used.idx is never rewritten", () => {
    const { raw, q, chain } = setup();
    offerSimple(raw, 1);
    q.pop(chain);
    q.push(0, 0);
    raw.mem.writeU16(raw.layout.device + 2, 0x1234);
    q.publishUsed();
    expect(raw.usedIdx()).toBe(0x1234);
  });

  it("refuses what push refuses, naming head or written", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 64, flags: F_WRITE });
    raw.offer(0);
    q.pop(chain);
    expect(() => q.use(3, 0)).toThrow(/head 3 is not a chain in flight/);
    expect(() => q.use(0, 65)).toThrow(/written must be an integer in \[0, 64\]/);
    q.use(0, 64);
    expect(() => q.use(0, 0)).toThrow(/head 0 is not a chain in flight/);
    q.publishUsed();
    expect(raw.usedElem(0)).toEqual({ id: 0, len: 64 });
    expect(raw.usedIdx()).toBe(1);
  });
});

describe("SplitDeviceQueue used buffer notifications", () => {
  it("§2.7.7.2 without EVENT_IDX notifies unless VIRTQ_AVAIL_F_NO_INTERRUPT is set", () => {
    const { raw, q, chain } = setup();
    offerSimple(raw, 2);
    expect(q.needsInterrupt()).toBe(false); // nothing pushed yet
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true);
    expect(q.needsInterrupt()).toBe(false); // nothing new pushed
    raw.setAvailFlags(1);
    q.pop(chain);
    q.push(1, 0);
    expect(q.needsInterrupt()).toBe(false);
  });

  it("§2.7.7.2 with EVENT_IDX notifies only when used.idx passes used_event, ignoring the flag", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    offerSimple(raw, 4);
    raw.setAvailFlags(1); // must be ignored
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true); // first signal after start: previous index unknown
    raw.setUsedEvent(2); // notify once the entry at used index 2 is written, i.e. idx 3
    q.pop(chain);
    q.push(1, 0);
    expect(q.needsInterrupt()).toBe(false); // used.idx = 2
    q.pop(chain);
    q.push(2, 0);
    expect(q.needsInterrupt()).toBe(true); // used.idx = 3
    q.pop(chain);
    q.push(3, 0);
    expect(q.needsInterrupt()).toBe(false); // used_event already passed
  });

  it("§2.7.7.2 with EVENT_IDX notifies once for a batch that crosses used_event, across the wrap", () => {
    const { raw, q, chain } = setup(4, EVENT_IDX);
    q.setState({ availIdx: 0, usedIdx: 0xfffe, availWrap: true, usedWrap: true });
    offerSimple(raw, 4);
    while (q.pop(chain));
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true); // first call after setState
    raw.setUsedEvent(0); // the entry at used index 0 (after 0xffff)
    q.push(1, 0);
    q.push(2, 0);
    q.push(3, 0);
    expect(raw.usedIdx()).toBe(2);
    expect(q.needsInterrupt()).toBe(true);
  });
});

describe("SplitDeviceQueue available buffer notifications", () => {
  it("§2.7.10.2 with EVENT_IDX publishes avail_event as the next index it will read", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    offerSimple(raw, 1);
    raw.offer(0, false);
    q.pop(chain);
    expect(raw.availEvent()).toBe(1);
  });

  it("with EVENT_IDX writes avail_event once per batch: when a pop takes the last entry it loaded", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    offerSimple(raw, 3);
    q.pop(chain);
    q.pop(chain);
    // Entries 0..2 were published together: an event index of 1 or 2 lies inside what the
    // driver has already published and could bring no kick, so it is not written.
    expect(raw.availEvent()).toBe(0);
    q.pop(chain);
    expect(raw.availEvent()).toBe(3);
    expect(q.pop(chain)).toBe(false);
  });

  it("with EVENT_IDX a device that popped the only published chain is kicked for the next one", () => {
    const mem = createGuestMemory({ size: 0x10000 });
    const layout = { size: 8, desc: 0x1000, driver: 0x1100, device: 0x1200 };
    const drv = new SplitDriverQueue<number>(mem, layout, EVENT_IDX);
    const dev = new SplitDeviceQueue(mem, layout, EVENT_IDX);
    drv.add([{ addr: 0x4000, len: 4 }], [], 1);
    expect(drv.publish()).toBe(true);
    expect(dev.pop(chain8())).toBe(true); // no second pop: it goes to sleep here
    drv.add([{ addr: 0x4000, len: 4 }], [], 2);
    expect(drv.publish()).toBe(true);
    drv.add([{ addr: 0x4000, len: 4 }], [], 3);
    expect(drv.publish()).toBe(false); // the device has not looked at entry 1 yet
  });

  it("§2.7.10.2 with EVENT_IDX leaves used.flags 0 and stops moving avail_event while disabled", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    offerSimple(raw, 3);
    q.disableNotifications();
    q.pop(chain);
    q.pop(chain);
    expect([raw.usedFlags(), raw.availEvent()]).toEqual([0, 0]);
    expect(q.enableNotifications()).toBe(true); // one more is pending
    expect(raw.availEvent()).toBe(2);
    q.pop(chain);
    expect([raw.usedFlags(), raw.availEvent()]).toEqual([0, 3]);
    expect(q.enableNotifications()).toBe(false);
  });

  it("§2.7.10.2 without EVENT_IDX sets and clears VIRTQ_USED_F_NO_NOTIFY", () => {
    const { raw, q } = setup();
    q.disableNotifications();
    expect(raw.usedFlags()).toBe(1);
    expect(q.enableNotifications()).toBe(false);
    expect(raw.usedFlags()).toBe(0);
  });

  it("enableNotifications reports chains that arrived while notifications were off", () => {
    for (const features of [NO_RING_FEATURES, EVENT_IDX]) {
      const { raw, q } = setup(8, features);
      q.disableNotifications();
      offerSimple(raw, 1);
      expect(q.enableNotifications()).toBe(true);
    }
  });
});

describe("SplitDeviceQueue state", () => {
  it("getState and setState carry ring positions across a restart on another queue object", () => {
    const { raw, q, chain } = setup();
    offerSimple(raw, 3);
    q.pop(chain);
    q.push(0, 0);
    const state = q.getState();
    expect(state).toEqual({ availIdx: 1, usedIdx: 1, availWrap: true, usedWrap: true });
    const q2 = new SplitDeviceQueue(raw.mem, raw.layout, NO_RING_FEATURES);
    q2.setState(state);
    expect(q2.numAvailable()).toBe(2);
    expect(q2.pop(chain)).toBe(true);
    expect(chain.head).toBe(1);
    q2.push(1, 0);
    expect(raw.usedElem(1).id).toBe(1);
  });

  it("setState rejects indices outside 16 bits, naming the field", () => {
    const { q } = setup();
    expect(() =>
      q.setState({ availIdx: 70000, usedIdx: 0, availWrap: true, usedWrap: true }),
    ).toThrow(/state.availIdx/);
    expect(() => q.setState({ availIdx: 0, usedIdx: -1, availWrap: true, usedWrap: true })).toThrow(
      /state.usedIdx/,
    );
  });

  it("reset forgets chains in flight and starts at index 0 with notifications on", () => {
    const { raw, q, chain } = setup(8, EVENT_IDX);
    offerSimple(raw, 2);
    q.disableNotifications();
    q.pop(chain);
    q.reset();
    expect([q.inFlight, q.getState().availIdx, q.getState().usedIdx]).toEqual([0, 0, 0]);
    expect(() => q.push(0, 0)).toThrow(RangeError);
    expect(q.pop(chain)).toBe(true);
    expect(q.pop(chain)).toBe(true); // notifications on again: avail_event moves
    expect(raw.availEvent()).toBe(2);
  });
});

describe("README device-side example", () => {
  it("serves a request from our driver and notifies", () => {
    // Same code as README.md "Device side".
    const mem = createGuestMemory({ size: 0x10000 });
    const layout = { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 };
    const driver = new SplitDriverQueue<string>(mem, layout, NO_RING_FEATURES);
    driver.add([{ addr: 0x4000, len: 4 }], [{ addr: 0x5000, len: 16 }], "req-1");
    mem.write(0x4000, new Uint8Array([1, 2, 3, 4]));
    driver.publish();

    const queue = new SplitDeviceQueue(mem, layout, NO_RING_FEATURES);
    const chain = new DescriptorChain(queue.size);
    const request = new Uint8Array(4);
    let notify = false;
    queue.disableNotifications();
    do {
      while (queue.pop(chain)) {
        const got = chain.copyFromReadable(mem, 0, request);
        const reply = request.subarray(0, got).reverse();
        queue.push(chain.head, chain.copyToWritable(mem, 0, reply));
      }
    } while (queue.enableNotifications());
    notify = queue.needsInterrupt();

    expect(notify).toBe(true);
    expect(driver.reap()).toBe("req-1");
    expect(driver.lastLen).toBe(4);
    expect([...mem.slice(0x5000, 4)]).toEqual([4, 3, 2, 1]);
  });
});
