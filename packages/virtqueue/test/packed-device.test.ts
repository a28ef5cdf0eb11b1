// Device side of the packed ring. Descriptors are written into guest memory by hand (never
// through our driver), so every rule and every kind of hostile input is exercised directly.
import { createGuestMemory, VirtioError } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  BufferOutOfBoundsError,
  ChainError,
  ChainTooLongError,
  DescriptorChain,
  EventOffsetOutOfRangeError,
  HeadInFlightError,
  HeadOutOfRangeError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NO_RING_FEATURES,
  PackedChainUnterminatedError,
  PackedDescNotAvailableError,
  PackedDeviceQueue,
  QueueConfigError,
  ReadableAfterWritableError,
  type RingFeatures,
  ringFeatures,
  TotalLengthOverflowError,
  VirtqueueError,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { mapPackedRing } from "../src/packed-layout.js";
import {
  availBits,
  EV_DESC,
  EV_DISABLE,
  EV_ENABLE,
  F_AVAIL,
  F_INDIRECT,
  F_NEXT,
  F_USED,
  F_WRITE,
  RawPackedRing,
} from "./helpers/raw-packed-ring.js";

/** The error `fn` throws (undefined if it returns). */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

const D = RawPackedRing.DATA;
const TABLE = RawPackedRing.TABLE;
const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));

function setup(size = 8, features: RingFeatures = INDIRECT, capacity = size) {
  const raw = new RawPackedRing(size);
  const q = new PackedDeviceQueue(raw.mem, raw.layout, features);
  return { raw, q, chain: new DescriptorChain(capacity) };
}

function popError(q: PackedDeviceQueue, chain: DescriptorChain): VirtqueueError {
  try {
    q.pop(chain);
  } catch (e) {
    expect(e).toBeInstanceOf(VirtqueueError);
    return e as VirtqueueError;
  }
  throw new Error("pop did not throw");
}

describe("mapPackedRing", () => {
  const mem = createGuestMemory({ size: 0x10000, shared: false });
  const ok = { size: 8, desc: 0x1000, driver: 0x2000, device: 0x2004 };

  it("accepts a queue size that is not a power of 2 (VIRTIO 1.3 §2.8.10.1)", () => {
    const v = mapPackedRing(mem, { ...ok, size: 3 }, "device");
    expect(v.size).toBe(3);
    expect(v.desc.length).toBe(12);
    expect(v.driverEvent.length).toBe(2);
    expect(v.deviceEvent.length).toBe(2);
  });

  it.each([0, 32769, 2.5, -1])(
    "rejects queue size %d with QueueConfigError field 'size'",
    (size) => {
      expect(() => mapPackedRing(mem, { ...ok, size }, "device")).toThrow(
        expect.objectContaining({ code: "queue-config", field: "size", value: size }),
      );
    },
  );

  it.each([
    ["desc", { desc: 0x1008 }],
    ["driver", { driver: 0x2002 }],
    ["device", { device: 0x2006 }],
  ] as const)(
    "rejects a misaligned %s area (VIRTIO 1.3 §2.8.11: 16/4/4 alignment)",
    (field, patch) => {
      const e = caught(() => mapPackedRing(mem, { ...ok, ...patch }, "driver"));
      expect(e).toBeInstanceOf(QueueConfigError);
      expect((e as QueueConfigError).field).toBe(field);
    },
  );

  it("rejects a descriptor ring that runs past the end of guest memory", () => {
    expect(() => mapPackedRing(mem, { ...ok, desc: 0xff00, size: 32 }, "device")).toThrow(
      expect.objectContaining({ field: "desc" }),
    );
  });
});

describe("PackedDeviceQueue.pop", () => {
  it("sees nothing in a zero-initialised ring (VIRTIO 1.3 §2.8.15: MUST NOT use a descriptor before AVAIL changes)", () => {
    const { q, chain } = setup();
    expect(q.pop(chain)).toBe(false);
    expect(q.getState()).toEqual({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
  });

  it("pops a one-descriptor buffer: head is its buffer ID, descCount 1", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 64 }], 5);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(5);
    expect(chain.descCount).toBe(1);
    expect(chain.count).toBe(1);
    expect(chain.addr(0)).toBe(D);
    expect(chain.len(0)).toBe(64);
    expect(chain.readableBytes).toBe(64);
    expect(q.getState().availIdx).toBe(1);
    expect(q.pop(chain)).toBe(false);
  });

  it("takes the buffer ID from the last descriptor of a list (VIRTIO 1.3 §2.8.6)", () => {
    const { raw, q, chain } = setup();
    raw.offer(
      [
        { addr: D, len: 16, id: 7 },
        { addr: D + 0x100, len: 32, id: 6 },
        { addr: D + 0x200, len: 512, flags: F_WRITE, id: 2 },
      ],
      2,
    );
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(2);
    expect(chain.descCount).toBe(3);
    expect(chain.readableCount).toBe(2);
    expect(chain.readableBytes).toBe(48);
    expect(chain.writableBytes).toBe(512);
    expect(chain.writable(2)).toBe(true);
    expect(q.getState().availIdx).toBe(3);
  });

  it("follows a list across the end of the ring, with AVAIL flipped after the wrap (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q, chain } = setup(4);
    raw.offer(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      0,
    );
    expect(q.pop(chain)).toBe(true);
    q.push(0, 0);
    raw.offer(
      [
        { addr: D, len: 2 },
        { addr: D + 8, len: 3 },
      ],
      1,
    );
    // Position 3 has AVAIL=1, position 0 (second lap) AVAIL=0 / USED=1.
    expect(raw.flags(3)).toBe(F_AVAIL | F_NEXT);
    expect(raw.flags(0)).toBe(F_USED);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(1);
    expect(chain.descCount).toBe(2);
    expect(q.getState()).toEqual({ availIdx: 1, usedIdx: 3, availWrap: false, usedWrap: true });
  });

  it("reads an indirect table in order, ignoring NEXT and IDs inside it (VIRTIO 1.3 §2.8.7)", () => {
    const { raw, q, chain } = setup();
    raw.writeTableEntry(TABLE, 0, { addr: D, len: 10, flags: F_NEXT, id: 99 });
    raw.writeTableEntry(TABLE, 1, { addr: D + 0x10, len: 20, flags: F_WRITE });
    raw.writeTableEntry(TABLE, 2, { addr: D + 0x20, len: 30, flags: F_WRITE });
    raw.offer([{ addr: TABLE, len: 48, flags: F_INDIRECT | F_WRITE }], 4);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(4);
    expect(chain.descCount).toBe(1);
    expect(chain.count).toBe(3);
    expect(chain.readableCount).toBe(1);
    expect(chain.writableBytes).toBe(50);
    expect(chain.addr(2)).toBe(D + 0x20);
  });

  it("accepts a list of exactly queue size descriptors", () => {
    const { raw, q, chain } = setup(4);
    raw.offer(
      [0, 1, 2, 3].map((i) => ({ addr: D + i, len: 1 })),
      3,
    );
    expect(q.pop(chain)).toBe(true);
    expect(chain.descCount).toBe(4);
    expect(q.getState()).toMatchObject({ availIdx: 0, availWrap: false });
  });
});

describe("PackedDeviceQueue.push", () => {
  it("writes id, len and flags AVAIL|USED|WRITE at the next used position, leaving addr (VIRTIO 1.3 §2.8.1, §2.8.4)", () => {
    const { raw, q, chain } = setup();
    raw.offer(
      [
        { addr: D, len: 16 },
        { addr: 0x5000, len: 100, flags: F_WRITE },
      ],
      3,
    );
    q.pop(chain);
    q.push(3, 42);
    // addr 0x4000 LE, len 42, id 3, flags 0x8082 (USED | AVAIL | WRITE).
    expect(raw.descBytes(0)).toEqual([0, 0x40, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 3, 0, 0x82, 0x80]);
    expect(q.getState().usedIdx).toBe(2);
  });

  it("leaves WRITE clear and len 0 when nothing was written (VIRTIO 1.3 §2.8.3)", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 16 }], 0);
    q.pop(chain);
    q.push(0, 0);
    expect(raw.flags(0)).toBe(F_AVAIL | F_USED);
    expect(raw.len(0)).toBe(0);
  });

  it("writes used descriptors in completion order and skips by each buffer's descriptor count (VIRTIO 1.3 §2.8.6)", () => {
    const { raw, q, chain } = setup();
    raw.offer(
      [
        { addr: D, len: 1 },
        { addr: D, len: 8, flags: F_WRITE },
      ],
      0,
    );
    raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 1);
    const a = new DescriptorChain(8);
    q.pop(a);
    q.pop(chain);
    q.push(1, 5); // B completes first: its used descriptor overwrites A's first descriptor.
    expect(raw.id(0)).toBe(1);
    expect(raw.len(0)).toBe(5);
    expect(q.getState().usedIdx).toBe(1);
    q.push(0, 8);
    expect(raw.id(1)).toBe(0);
    expect(raw.flags(1)).toBe(F_AVAIL | F_USED | F_WRITE);
    expect(q.getState().usedIdx).toBe(3);
  });

  it("marks used descriptors of the second lap with AVAIL = USED = 0 (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q, chain } = setup(2);
    for (let lap = 0; lap < 2; lap++) {
      for (let i = 0; i < 2; i++) {
        raw.offer([{ addr: D, len: 4, flags: F_WRITE }], i);
        expect(q.pop(chain)).toBe(true);
        q.push(i, 4);
        expect(raw.flags(i)).toBe((lap === 0 ? F_AVAIL | F_USED : 0) | F_WRITE);
      }
    }
    expect(q.getState()).toEqual({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
  });

  it("refuses a buffer ID that is not in flight and a length beyond the writable bytes", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 2);
    q.pop(chain);
    expect(() => q.push(1, 0)).toThrow(RangeError);
    expect(() => q.push(2, 9)).toThrow(RangeError);
    q.push(2, 8);
    expect(() => q.push(2, 0)).toThrow(RangeError);
  });
});

describe("PackedDeviceQueue.use and publishUsed", () => {
  it("§2.8.4 holds back the id/flags word of the first used descriptor until publishUsed, writing the later ones whole", () => {
    const { raw, q, chain } = setup();
    for (let id = 0; id < 3; id++) raw.offer([{ addr: D, len: 8, flags: F_WRITE }], id);
    const heads: number[] = [];
    while (q.pop(chain)) heads.push(chain.head);
    expect(heads).toEqual([0, 1, 2]);
    const availFlags = raw.flags(0);
    q.use(1, 8);
    q.use(0, 0);
    q.use(2, 5);
    // The first position keeps the driver's flags (not used yet for a driver reading in order);
    // its len is written, and the later two are complete used descriptors.
    expect([raw.flags(0), raw.len(0)]).toEqual([availFlags, 8]);
    expect([raw.id(1), raw.len(1), raw.flags(1)]).toEqual([0, 0, F_AVAIL | F_USED]);
    expect([raw.id(2), raw.len(2), raw.flags(2)]).toEqual([2, 5, F_AVAIL | F_USED | F_WRITE]);
    q.publishUsed();
    expect([raw.id(0), raw.flags(0)]).toEqual([1, F_AVAIL | F_USED | F_WRITE]);
    // Nothing is held any more: a second publish writes nothing.
    raw.setFlags(0, 0);
    q.publishUsed();
    expect(raw.flags(0)).toBe(0);
  });

  it("publishes what use held back in push, needsInterrupt and getState", () => {
    for (const publisher of ["push", "needsInterrupt", "getState"] as const) {
      const { raw, q, chain } = setup();
      raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 0);
      raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 1);
      q.pop(chain);
      const first = chain.head;
      q.pop(chain);
      q.use(first, 4);
      expect(raw.flags(0) & F_USED).toBe(0);
      if (publisher === "push") q.push(chain.head, 8);
      else if (publisher === "needsInterrupt") q.needsInterrupt();
      else expect(q.getState().usedIdx).toBe(1);
      expect([raw.id(0), raw.len(0), raw.flags(0)]).toEqual([0, 4, F_AVAIL | F_USED | F_WRITE]);
    }
  });

  it("refuses what push refuses, and holds nothing back after a refusal", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 2);
    q.pop(chain);
    const availFlags = raw.flags(0);
    expect(() => q.use(1, 0)).toThrow(/not a buffer ID in flight/);
    expect(() => q.use(2, 9)).toThrow(/written must be an integer in \[0, 8\]/);
    q.publishUsed();
    expect(raw.flags(0)).toBe(availFlags);
    q.use(2, 8);
    expect(() => q.use(2, 0)).toThrow(RangeError);
  });

  it("forgets a held descriptor on setState, as the ring positions it belonged to are gone", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 8, flags: F_WRITE }], 0);
    q.pop(chain);
    const availFlags = raw.flags(0);
    q.use(0, 8);
    q.setState({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    q.publishUsed();
    expect(raw.flags(0)).toBe(availFlags);
  });
});

describe("PackedDeviceQueue notifications", () => {
  it("interrupts with ENABLE, not with DISABLE, and not twice for the same pushes (VIRTIO 1.3 §2.8.10)", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 1 }], 0);
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(true);
    expect(q.needsInterrupt()).toBe(false);
    raw.setDriverEvent(EV_DISABLE);
    raw.offer([{ addr: D, len: 1 }], 0);
    q.pop(chain);
    q.push(0, 0);
    expect(q.needsInterrupt()).toBe(false);
  });

  it("with EVENT_IDX and DESC, interrupts only when the used position passes the named descriptor (VIRTIO 1.3 §2.8.10)", () => {
    const { raw, q, chain } = setup(4, EVENT_IDX);
    const cycle = () => {
      raw.offer([{ addr: D, len: 1 }], 0);
      q.pop(chain);
      q.push(0, 0);
    };
    cycle();
    expect(q.needsInterrupt()).toBe(true); // the first call after start always interrupts
    raw.setDriverEvent(EV_DESC, 2 | 0x8000); // notify when position 2 (wrap 1) is used
    cycle(); // used position 1
    expect(q.needsInterrupt()).toBe(false);
    cycle(); // used position 2: passes it
    expect(q.needsInterrupt()).toBe(true);
    raw.setDriverEvent(EV_DESC, 0); // position 0, wrap 0: the second lap
    cycle(); // position 3
    expect(q.needsInterrupt()).toBe(false);
    cycle(); // position 0 of lap 2
    expect(q.needsInterrupt()).toBe(true);
  });

  it("treats DESC without EVENT_IDX and the reserved value 3 like ENABLE", () => {
    const { raw, q, chain } = setup(4, NO_RING_FEATURES);
    for (const flags of [EV_DESC, 3]) {
      raw.setDriverEvent(flags, 0x7fff);
      raw.offer([{ addr: D, len: 1 }], 0);
      q.pop(chain);
      q.push(0, 0);
      expect(q.needsInterrupt()).toBe(true);
    }
  });

  it("writes DISABLE and ENABLE into the Device Event Suppression structure (VIRTIO 1.3 §2.8.14)", () => {
    const { raw, q } = setup(4, NO_RING_FEATURES);
    q.disableNotifications();
    expect(raw.deviceEvent()).toEqual({ offWrap: 0, flags: EV_DISABLE });
    expect(q.enableNotifications()).toBe(false);
    expect(raw.deviceEvent()).toEqual({ offWrap: 0, flags: EV_ENABLE });
  });

  it("with EVENT_IDX, enableNotifications names the next descriptor and pop keeps it current", () => {
    const { raw, q, chain } = setup(4, EVENT_IDX);
    expect(q.enableNotifications()).toBe(false);
    expect(raw.deviceEvent()).toEqual({ offWrap: 0x8000, flags: EV_DESC });
    raw.offer(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      0,
    );
    q.pop(chain);
    expect(raw.deviceEvent().offWrap).toBe(0x8003);
    q.push(0, 0);
    raw.offer(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      1,
    );
    q.disableNotifications();
    q.pop(chain);
    expect(raw.deviceEvent()).toEqual({ offWrap: 0x8003, flags: EV_DISABLE });
    expect(q.enableNotifications()).toBe(false);
    expect(raw.deviceEvent()).toEqual({ offWrap: 1, flags: EV_DESC }); // position 1, wrap 0
  });

  it("enableNotifications reports a buffer made available while notifications were off", () => {
    const { raw, q } = setup(4, EVENT_IDX);
    q.disableNotifications();
    raw.offer([{ addr: D, len: 1 }], 0);
    expect(q.enableNotifications()).toBe(true);
  });
});

describe("PackedDeviceQueue state", () => {
  it("restores positions and wrap counters with setState", () => {
    const { raw, q, chain } = setup(4);
    raw.nextAvail = 2;
    raw.availWrap = false;
    raw.offer([{ addr: D, len: 1 }], 3);
    q.setState({ availIdx: 2, usedIdx: 2, availWrap: false, usedWrap: false });
    expect(q.pop(chain)).toBe(true);
    q.push(3, 0);
    expect(raw.flags(2)).toBe(0); // used in a lap with wrap counter 0
    expect(q.getState()).toEqual({ availIdx: 3, usedIdx: 3, availWrap: false, usedWrap: false });
  });

  it("rejects a position outside the ring", () => {
    const { q } = setup(4);
    expect(() => q.setState({ availIdx: 4, usedIdx: 0, availWrap: true, usedWrap: true })).toThrow(
      RangeError,
    );
  });
});

describe("PackedDeviceQueue against a hostile driver", () => {
  it("treats AVAIL = USED = wrap counter at its next position as a used descriptor: nothing available, no error (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, D, 1, 0, F_AVAIL | F_USED);
    expect(q.pop(chain)).toBe(false);
    expect(q.inFlight).toBe(0);
    expect(q.getState()).toEqual({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    // The driver then makes the descriptor available properly: it is served.
    raw.writeDesc(0, D, 1, 3, availBits(true));
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(3);
  });

  it("treats AVAIL = USED = 0 at its next position in the second lap as used, not available (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q, chain } = setup();
    q.setState({ availIdx: 2, usedIdx: 2, availWrap: false, usedWrap: false });
    raw.writeDesc(2, D, 1, 0, 0);
    expect(q.pop(chain)).toBe(false);
  });

  it("enableNotifications agrees with pop: a used descriptor at the head is nothing to pop again for (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, D, 1, 0, F_AVAIL | F_USED);
    expect(q.enableNotifications()).toBe(false);
    raw.writeDesc(0, D, 1, 0, availBits(true));
    expect(q.enableNotifications()).toBe(true);
    expect(q.pop(chain)).toBe(true);
  });

  it("for any flags at the head, enableNotifications reports something to pop exactly when pop takes a chain or throws (VIRTIO 1.3 §2.8.1)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.boolean(), (flags, secondLap) => {
        const { raw, q, chain } = setup(4);
        if (secondLap) q.setState({ availIdx: 1, usedIdx: 1, availWrap: false, usedWrap: false });
        const at = secondLap ? 1 : 0;
        // A one-descriptor list (NEXT and INDIRECT cleared keeps the walk to this descriptor).
        raw.writeDesc(at, D, 1, 0, flags & ~(F_NEXT | F_INDIRECT));
        const announced = q.enableNotifications();
        let popped: boolean;
        try {
          popped = q.pop(chain);
        } catch (e) {
          expect(e).toBeInstanceOf(VirtqueueError);
          popped = true;
        }
        expect(announced).toBe(popped);
        const avail = (flags & F_AVAIL) !== 0;
        const used = (flags & F_USED) !== 0;
        expect(popped).toBe(avail === !secondLap && used !== !secondLap);
      }),
    );
  });

  it("does not use a descriptor made available with the wrong wrap counter (VIRTIO 1.3 §2.8.15)", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, D, 1, 0, availBits(false)); // what a driver in its second lap would write
    expect(q.pop(chain)).toBe(false);
  });

  it("throws PackedDescNotAvailableError when a list continues into a descriptor that is not available (VIRTIO 1.3 §2.8.6)", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(1, D, 1, 0, F_USED); // wrong lap
    raw.writeDesc(0, D, 1, 0, F_AVAIL | F_NEXT);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(PackedDescNotAvailableError);
    expect(e).toMatchObject({
      code: "packed-desc-not-available",
      position: 1,
      flags: F_USED,
      wrap: true,
    });
  });

  it("throws PackedChainUnterminatedError for a list that never ends within the queue size (VIRTIO 1.3 §2.8.17)", () => {
    const { raw, q, chain } = setup(4);
    for (let i = 3; i >= 0; i--) raw.writeDesc(i, D, 1, 0, F_AVAIL | F_NEXT);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(PackedChainUnterminatedError);
    expect(e).toMatchObject({ position: 0, queueSize: 4 });
  });

  it("throws HeadOutOfRangeError for a buffer ID ≥ queue size", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 1 }], 8);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(HeadOutOfRangeError);
    expect(e).toMatchObject({ code: "head-out-of-range", head: 8, queueSize: 8 });
  });

  it("throws HeadInFlightError when a buffer ID is made available again while in flight", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: D, len: 1 }], 3);
    raw.offer([{ addr: D, len: 1 }], 3);
    expect(q.pop(chain)).toBe(true);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(HeadInFlightError);
    expect(e).toMatchObject({ head: 3 });
  });

  it("reports a malformed list as a ChainError whose buffer ID can be pushed with 0, and the ring stays in step", () => {
    const { raw, q, chain } = setup();
    raw.offer(
      [
        { addr: D, len: 8, flags: F_WRITE },
        { addr: D, len: 8 },
        { addr: D, len: 8, id: 5 },
      ],
      6,
    );
    raw.offer([{ addr: D, len: 4 }], 1);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(ReadableAfterWritableError);
    // The buffer ID is the last descriptor's (5), found even though the walk failed earlier.
    expect(e).toMatchObject({
      code: "readable-after-writable",
      head: 5,
      index: 1,
      indirect: false,
    });
    expect(chain.head).toBe(5);
    expect(chain.descCount).toBe(3);
    expect(() => q.push(5, 1)).toThrow(RangeError);
    q.push(5, 0);
    expect(q.pop(chain)).toBe(true);
    expect(chain.head).toBe(1);
  });

  it.each([
    ["outside guest memory", D, 0x10000],
    ["at an address that wraps 2^64", 0xffff_ffff_ffff_fff0n, 0x20],
  ])("throws BufferOutOfBoundsError for a buffer %s", (_, addr, len) => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr, len }], 0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(BufferOutOfBoundsError);
    expect(e).toMatchObject({ head: 0, index: 0, len });
  });

  it("throws TotalLengthOverflowError when the writable part reaches 2^32 bytes", () => {
    // Buffers of 4 GiB cannot be allocated in a test, so this memory accepts every range (the
    // bounds check is tested above); only the length arithmetic is under test.
    const raw = new RawPackedRing(8);
    const m = raw.mem;
    const permissive = new Proxy(m, {
      get: (target, key) => (key === "check" ? () => true : Reflect.get(target, key, target)),
    });
    for (const k of ["u16View", "u32View", "readU32"] as const) {
      Object.defineProperty(permissive, k, { value: m[k].bind(m) });
    }
    const q = new PackedDeviceQueue(permissive, raw.layout, NO_RING_FEATURES);
    raw.offer(
      [
        { addr: D, len: 0xffff_ffff, flags: F_WRITE },
        { addr: D, len: 1, flags: F_WRITE },
      ],
      0,
    );
    const e = popError(q, new DescriptorChain(8));
    expect(e).toBeInstanceOf(TotalLengthOverflowError);
    expect(e).toMatchObject({ head: 0, index: 1 });
  });

  it("throws ChainTooLongError when a list exceeds the cursor's capacity", () => {
    const { raw, q, chain } = setup(8, INDIRECT, 2);
    raw.offer(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      0,
    );
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(ChainTooLongError);
    expect(e).toMatchObject({ head: 0, index: 2, limit: 2 });
    expect(chain.descCount).toBe(3);
  });

  it("throws IndirectNotNegotiatedError without VIRTIO_F_INDIRECT_DESC (VIRTIO 1.3 §2.8.19)", () => {
    const { raw, q, chain } = setup(8, NO_RING_FEATURES);
    raw.writeTableEntry(TABLE, 0, { addr: D, len: 1 });
    raw.offer([{ addr: TABLE, len: 16, flags: F_INDIRECT }], 0);
    expect(popError(q, chain)).toBeInstanceOf(IndirectNotNegotiatedError);
  });

  it("throws IndirectWithNextError for INDIRECT in a list linked by NEXT (VIRTIO 1.3 §2.8.19)", () => {
    for (const order of ["first", "second"] as const) {
      const { raw, q, chain } = setup();
      raw.writeTableEntry(TABLE, 0, { addr: D, len: 1 });
      const ind = { addr: TABLE, len: 16, flags: F_INDIRECT };
      const plain = { addr: D, len: 1 };
      raw.offer(order === "first" ? [ind, plain] : [plain, ind], 2);
      const e = popError(q, chain);
      expect(e).toBeInstanceOf(IndirectWithNextError);
      expect(e).toMatchObject({ head: 2, index: order === "first" ? 0 : 1 });
    }
  });

  it.each([0, 17])(
    "throws IndirectTableLengthError for a table of %d bytes (VIRTIO 1.3 §2.8.7)",
    (len) => {
      const { raw, q, chain } = setup();
      raw.offer([{ addr: TABLE, len, flags: F_INDIRECT }], 0);
      const e = popError(q, chain);
      expect(e).toBeInstanceOf(IndirectTableLengthError);
      expect(e).toMatchObject({ code: "indirect-table-length", len });
    },
  );

  it("throws NestedIndirectError for INDIRECT inside a table (VIRTIO 1.3 §2.8.19)", () => {
    const { raw, q, chain } = setup();
    raw.writeTableEntry(TABLE, 0, { addr: D, len: 1 });
    raw.writeTableEntry(TABLE, 1, { addr: TABLE, len: 16, flags: F_INDIRECT });
    raw.offer([{ addr: TABLE, len: 32, flags: F_INDIRECT }], 0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(NestedIndirectError);
    expect(e).toMatchObject({ index: 1, indirect: true });
  });

  it("throws IndirectTableOutOfBoundsError for a table outside guest memory", () => {
    const { raw, q, chain } = setup();
    raw.offer([{ addr: 0xfff0, len: 32, flags: F_INDIRECT }], 0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(IndirectTableOutOfBoundsError);
    expect(e).toMatchObject({ addr: 0xfff0, len: 32 });
  });

  it("throws ChainTooLongError for a table with more entries than the queue size, before reading it", () => {
    const { raw, q, chain } = setup(4);
    raw.offer([{ addr: TABLE, len: 16 * 5, flags: F_INDIRECT }], 0);
    expect(popError(q, chain)).toMatchObject({ code: "chain-too-long", limit: 4 });
  });

  it("throws readable-after-writable inside an indirect table", () => {
    const { raw, q, chain } = setup();
    raw.writeTableEntry(TABLE, 0, { addr: D, len: 1, flags: F_WRITE });
    raw.writeTableEntry(TABLE, 1, { addr: D, len: 1 });
    raw.offer([{ addr: TABLE, len: 32, flags: F_INDIRECT }], 0);
    expect(popError(q, chain)).toMatchObject({
      code: "readable-after-writable",
      index: 1,
      indirect: true,
    });
  });

  it("throws EventOffsetOutOfRangeError for a DESC event offset ≥ queue size", () => {
    const { raw, q, chain } = setup(4, EVENT_IDX);
    raw.offer([{ addr: D, len: 1 }], 0);
    q.pop(chain);
    q.push(0, 0);
    raw.setDriverEvent(EV_DESC, 0x8004);
    const e = caught(() => q.needsInterrupt());
    expect(e).toBeInstanceOf(EventOffsetOutOfRangeError);
    expect(e).toMatchObject({
      code: "event-offset-out-of-range",
      area: "driver",
      offWrap: 0x8004,
      queueSize: 4,
    });
  });

  it("raises only VirtioErrors and never loops past the queue size on random descriptor rings", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }),
        fc.array(
          fc.record({
            addr: fc.oneof(fc.integer({ min: 0, max: 0x10000 }), fc.constant(TABLE)),
            len: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.constant(0xffffffff)),
            id: fc.integer({ min: 0, max: 10 }),
            flags: fc.integer({ min: 0, max: 0xffff }),
          }),
          { minLength: 8, maxLength: 8 },
        ),
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 16, maxLength: 16 }),
        (size, descs, table) => {
          const { raw, q, chain } = setup(
            size,
            ringFeatures(
              featureMask(Feature.RING_INDIRECT_DESC) | featureMask(Feature.RING_EVENT_IDX),
            ),
            4,
          );
          for (let i = 0; i < size; i++)
            raw.writeDesc(i, descs[i]!.addr, descs[i]!.len, descs[i]!.id, descs[i]!.flags);
          table.forEach((x, i) => {
            raw.mem.writeU32(TABLE + 4 * i, x);
          });
          raw.setDriverEvent(EV_DESC, descs[0]!.flags);
          for (let k = 0; k < 2 * size; k++) {
            try {
              if (q.pop(chain)) q.push(chain.head, 0);
              q.needsInterrupt();
            } catch (e) {
              expect(e).toBeInstanceOf(VirtioError);
              if (e instanceof ChainError) q.push(e.head, 0);
              else break;
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
