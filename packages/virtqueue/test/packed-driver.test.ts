// Driver side of the packed ring. The device is played by hand (raw writes into the ring), so
// the exact bytes the driver writes and its distrust of the device are both visible.
import { GuestMemoryMap } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  EventOffsetOutOfRangeError,
  NO_RING_FEATURES,
  PackedDriverQueue,
  type RingFeatures,
  ringFeatures,
  UsedIdNotInFlightError,
  UsedLenTooLargeError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  EV_DESC,
  EV_DISABLE,
  EV_ENABLE,
  F_AVAIL,
  F_INDIRECT,
  F_NEXT,
  F_USED,
  F_WRITE,
  RawPackedRing,
  usedBits,
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

function setup(size = 8, features: RingFeatures = NO_RING_FEATURES, indirect = false) {
  const raw = new RawPackedRing(size);
  const q = new PackedDriverQueue<string>(
    raw.mem,
    raw.layout,
    features,
    indirect ? { indirect: { addr: TABLE, maxEntries: 4 } } : {},
  );
  return { raw, q };
}

/** Play the device: write a used descriptor at `pos`. */
function use(
  raw: RawPackedRing,
  pos: number,
  id: number,
  len: number,
  wrap = true,
  write = len > 0,
) {
  raw.writeDesc(pos, 0, len, id, usedBits(wrap) | (write ? F_WRITE : 0));
}

describe("PackedDriverQueue.add and publish", () => {
  it("writes addr, len, id and AVAIL (USED clear) and exposes the descriptor only at publish (VIRTIO 1.3 §2.8.21.1)", () => {
    const { raw, q } = setup();
    expect(q.add([{ addr: 0x1_2345_6780, len: 16 }], [], "a")).toBe(true);
    // Body written, flags still zero: the device cannot see it yet.
    expect(raw.descBytes(0)).toEqual([0x80, 0x67, 0x45, 0x23, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]);
    expect(q.publish()).toBe(true);
    expect(raw.descBytes(0)).toEqual([
      0x80, 0x67, 0x45, 0x23, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0x80, 0,
    ]);
    expect(q.numFree).toBe(7);
  });

  it("a segment refused after valid ones leaves no descriptor looking available, and the next list takes the same positions and ID", () => {
    const { raw, q } = setup(4);
    expect(() =>
      q.add(
        [{ addr: D, len: 16 }],
        [
          { addr: D + 0x100, len: 32 },
          { addr: D + 0x200, len: 0.5 },
        ],
        "bad",
      ),
    ).toThrow(/writable\[1\]\.len/);
    expect(q.numFree).toBe(4);
    // No flags were written: positions 1 and 2 do not look available to a device.
    expect([raw.flags(0), raw.flags(1), raw.flags(2)]).toEqual([0, 0, 0]);
    expect(q.add([{ addr: D, len: 8 }], [], "a")).toBe(true);
    expect(q.publish()).toBe(true);
    expect(raw.flags(0)).toBe(F_AVAIL);
    expect(raw.flags(1)).toBe(0);
    // The same ID as on a queue that never saw the refused call.
    const fresh = setup(4);
    fresh.q.add([{ addr: D, len: 8 }], [], "a");
    fresh.q.publish();
    expect(raw.id(0)).toBe(fresh.raw.id(0));
  });

  it("writes every descriptor of a list but the first at add, the first at publish, NEXT on all but the last (VIRTIO 1.3 §2.8.6)", () => {
    const { raw, q } = setup();
    q.add(
      [{ addr: D, len: 1 }],
      [
        { addr: D + 16, len: 2 },
        { addr: D + 32, len: 3 },
      ],
      "a",
    );
    expect(raw.flags(0)).toBe(0);
    expect(raw.flags(1)).toBe(F_AVAIL | F_WRITE | F_NEXT);
    expect(raw.flags(2)).toBe(F_AVAIL | F_WRITE);
    expect([raw.id(0), raw.id(1), raw.id(2)]).toEqual([0, 0, 0]);
    q.publish();
    expect(raw.flags(0)).toBe(F_AVAIL | F_NEXT);
    expect(raw.id(0)).toBe(0);
    expect(q.getState()).toEqual({ availIdx: 3, usedIdx: 0, availWrap: true, usedWrap: true });
  });

  it("sets AVAIL to the wrap counter and USED to its inverse in the second lap (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q } = setup(2);
    q.add([{ addr: D, len: 1 }], [], "a");
    q.add([{ addr: D, len: 1 }], [], "b");
    q.publish();
    use(raw, 0, 0, 0);
    use(raw, 1, 1, 0);
    expect(q.reap()).toBe("a");
    expect(q.reap()).toBe("b");
    q.add([{ addr: D, len: 1 }], [{ addr: D, len: 1 }], "c");
    q.publish();
    expect(raw.flags(0)).toBe(F_USED | F_NEXT);
    expect(raw.flags(1)).toBe(F_USED | F_WRITE);
  });

  it("uses one ring descriptor and an indirect table with only WRITE flags when negotiated (VIRTIO 1.3 §2.8.7, §2.8.19)", () => {
    const { raw, q } = setup(8, INDIRECT, true);
    q.add([{ addr: D, len: 10 }], [{ addr: D + 0x100, len: 20 }], "a");
    q.publish();
    expect(q.numFree).toBe(7);
    expect(raw.flags(0)).toBe(F_AVAIL | F_INDIRECT);
    expect(raw.addr(0)).toBe(BigInt(TABLE));
    expect(raw.len(0)).toBe(32);
    // Table slot of buffer ID 0: entry 0 readable, entry 1 WRITE, IDs 0.
    expect(raw.mem.readU16(TABLE + 14)).toBe(0);
    expect(raw.mem.readU16(TABLE + 16 + 14)).toBe(F_WRITE);
    expect(raw.mem.readU32(TABLE + 16 + 8)).toBe(20);
    expect(raw.mem.readU16(TABLE + 16 + 12)).toBe(0);
  });

  it("writes the same indirect tables whether the area lies in one memory region or spans two", () => {
    // Two regions meeting at 0x8040: the area [0x8000, +8 × 4 × 16) spans them, so the driver
    // cannot view it as one array and writes each word through the memory object instead.
    const split = new GuestMemoryMap([
      { guestBase: 0, size: 0x8040, buffer: new ArrayBuffer(0x8040) },
      { guestBase: 0x8040, size: 0x7fc0, buffer: new ArrayBuffer(0x7fc0) },
    ]);
    const rings = [new RawPackedRing(8), new RawPackedRing(8, 0x10000, split)];
    const tables = rings.map((raw) => {
      const q = new PackedDriverQueue<string>(raw.mem, raw.layout, INDIRECT, {
        indirect: { addr: TABLE, maxEntries: 4 },
      });
      // Buffer IDs 0 and 1: the second table starts at 0x8040, in the second region.
      q.add([{ addr: 2 ** 40 + 8, len: 10 }], [{ addr: D + 0x100, len: 20 }], "a");
      q.add(
        [{ addr: D, len: 3 }],
        [
          { addr: D + 8, len: 4 },
          { addr: D + 16, len: 5 },
        ],
        "b",
      );
      q.publish();
      const bytes = new Uint8Array(2 * 4 * 16);
      raw.mem.read(TABLE, bytes);
      return bytes;
    });
    expect(tables[1]).toEqual(tables[0]);
    // Table of ID 0 (popped from the top of the free-ID stack first), entry 0: addr 2^40 + 8.
    const t = new DataView(tables[0]!.buffer, tables[0]!.byteOffset);
    const firstId = rings[0]!.id(0);
    expect(t.getBigUint64(firstId * 64, true)).toBe(2n ** 40n + 8n);
    expect(t.getUint32(firstId * 64 + 8, true)).toBe(10);
  });

  it("returns false when the ring has no room for the whole list (VIRTIO 1.3 §2.8.17)", () => {
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

  it("refuses misuse with RangeError: empty chain, undefined token, longer than the queue, bad length", () => {
    const { q } = setup(2);
    expect(() => q.add([], [], "a")).toThrow(RangeError);
    expect(() => q.add([{ addr: D, len: 1 }], [], undefined as unknown as string)).toThrow(
      RangeError,
    );
    expect(() =>
      q.add(
        [
          { addr: D, len: 1 },
          { addr: D, len: 1 },
          { addr: D, len: 1 },
        ],
        [],
        "a",
      ),
    ).toThrow(RangeError);
    expect(() => q.add([{ addr: D, len: 2 ** 32 }], [], "a")).toThrow(RangeError);
    expect(() => q.add([{ addr: -1, len: 1 }], [], "a")).toThrow(RangeError);
  });

  it("refuses a chain of 2^32 bytes in total, the same rule the packed device enforces (VIRTIO 1.3 §2.7.5.2)", () => {
    const { q } = setup(2);
    const half = 2 ** 31;
    expect(() => q.add([{ addr: D, len: half }], [{ addr: D, len: half }], "a")).toThrow(
      /add up to 4294967296 bytes/,
    );
    expect(q.numFree).toBe(2);
    expect(q.add([{ addr: D, len: half }], [{ addr: D, len: half - 1 }], "b")).toBe(true);
  });

  it("returns false from publish when nothing was added", () => {
    const { q } = setup();
    expect(q.publish()).toBe(false);
  });
});

describe("PackedDriverQueue kick decision (VIRTIO 1.3 §2.8.10)", () => {
  it("kicks with ENABLE and not with DISABLE", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    expect(q.publish()).toBe(true);
    raw.setDeviceEvent(EV_DISABLE);
    q.add([{ addr: D, len: 1 }], [], "b");
    expect(q.publish()).toBe(false);
  });

  it("with EVENT_IDX and DESC, kicks only when the published descriptors include the named one", () => {
    const { raw, q } = setup(4, EVENT_IDX);
    raw.setDeviceEvent(EV_DESC, 0x8002); // position 2, wrap 1
    q.add(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      [],
      "a",
    ); // positions 0–1
    expect(q.publish()).toBe(false);
    q.add([{ addr: D, len: 1 }], [], "b"); // position 2
    expect(q.publish()).toBe(true);
    raw.setDeviceEvent(EV_DESC, 0x0000); // position 0 of the second lap
    use(raw, 0, 0, 0);
    use(raw, 2, 1, 0);
    q.reap();
    q.reap();
    q.add([{ addr: D, len: 1 }], [], "c"); // position 3
    expect(q.publish()).toBe(false);
    q.add([{ addr: D, len: 1 }], [], "d"); // position 0, wrap 0
    expect(q.publish()).toBe(true);
  });

  it("treats DESC without EVENT_IDX and the reserved value 3 like ENABLE", () => {
    const { raw, q } = setup(4);
    for (const flags of [EV_DESC, 3]) {
      raw.setDeviceEvent(flags, 0x7fff);
      q.add([{ addr: D, len: 1 }], [], "a");
      expect(q.publish()).toBe(true);
    }
  });

  it("throws EventOffsetOutOfRangeError for a DESC offset ≥ queue size, after publishing", () => {
    const { raw, q } = setup(4, EVENT_IDX);
    raw.setDeviceEvent(EV_DESC, 4);
    q.add([{ addr: D, len: 1 }], [], "a");
    const e = caught(() => q.publish());
    expect(e).toBeInstanceOf(EventOffsetOutOfRangeError);
    expect(e).toMatchObject({ area: "device", offWrap: 4, queueSize: 4 });
    expect(raw.flags(0)).toBe(F_AVAIL);
  });
});

describe("PackedDriverQueue.reap", () => {
  it("returns the token and length of a used descriptor and skips the list's descriptors (VIRTIO 1.3 §2.8.6)", () => {
    const { raw, q } = setup();
    q.add(
      [{ addr: D, len: 1 }],
      [
        { addr: D, len: 100 },
        { addr: D, len: 100 },
      ],
      "a",
    );
    q.add([{ addr: D, len: 1 }], [], "b");
    q.publish();
    expect(q.reap()).toBeUndefined();
    use(raw, 0, 0, 150);
    expect(q.reap()).toBe("a");
    expect(q.lastLen).toBe(150);
    expect(q.getState().usedIdx).toBe(3);
    use(raw, 3, 1, 0);
    expect(q.reap()).toBe("b");
    expect(q.lastLen).toBe(0);
    expect(q.numFree).toBe(8);
  });

  it("reads len as 0 when WRITE is clear in the used descriptor (VIRTIO 1.3 §2.8.4)", () => {
    const { raw, q } = setup();
    q.add([], [{ addr: D, len: 8 }], "a");
    q.publish();
    use(raw, 0, 0, 1234, true, false);
    expect(q.reap()).toBe("a");
    expect(q.lastLen).toBe(0);
  });

  it("does not take a descriptor left available from the previous lap for a used one (VIRTIO 1.3 §2.8.1)", () => {
    const { raw, q } = setup(2);
    q.add(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      [],
      "a",
    ); // positions 0–1, AVAIL=1 USED=0
    q.publish();
    use(raw, 0, 0, 0); // position 1 keeps its available flags
    expect(q.reap()).toBe("a");
    q.add([{ addr: D, len: 1 }], [], "b"); // position 0 of lap 2
    q.publish();
    use(raw, 0, 0, 0, false);
    expect(q.reap()).toBe("b");
    // Position 1 shows AVAIL=1, USED=0: USED matches the used wrap counter 0 but AVAIL differs.
    expect(raw.flags(1)).toBe(F_AVAIL);
    expect(q.reap()).toBeUndefined();
  });

  it("throws UsedIdNotInFlightError for an ID the driver has not issued", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    use(raw, 0, 3, 0);
    expect(() => q.reap()).toThrow(UsedIdNotInFlightError);
    use(raw, 0, 9, 0);
    expect(() => q.reap()).toThrow(
      expect.objectContaining({ code: "used-id-not-in-flight", id: 9 }),
    );
  });

  it("throws UsedLenTooLargeError when the device claims more than the writable bytes", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 64 }], [{ addr: D, len: 8 }], "a");
    q.publish();
    use(raw, 0, 0, 9);
    const e = caught(() => q.reap());
    expect(e).toBeInstanceOf(UsedLenTooLargeError);
    expect(e).toMatchObject({ id: 0, len: 9, writableBytes: 8 });
  });

  it("hands a reaped buffer ID out again", () => {
    const { raw, q } = setup(4);
    q.add([{ addr: D, len: 1 }], [], "a");
    q.add([{ addr: D, len: 1 }], [], "b");
    q.publish();
    expect([raw.id(0), raw.id(1)]).toEqual([0, 1]);
    use(raw, 0, 1, 0); // b completes first
    expect(q.reap()).toBe("b");
    q.add([{ addr: D, len: 1 }], [], "c");
    q.publish();
    expect(raw.id(2)).toBe(1);
  });
});

describe("PackedDriverQueue interrupts", () => {
  it("writes DISABLE and ENABLE into the Driver Event Suppression structure (VIRTIO 1.3 §2.8.14)", () => {
    const { raw, q } = setup();
    q.disableInterrupts();
    expect(raw.driverEvent()).toEqual({ offWrap: 0, flags: EV_DISABLE });
    expect(q.enableInterrupts()).toBe(false);
    expect(raw.driverEvent()).toEqual({ offWrap: 0, flags: EV_ENABLE });
  });

  it("with EVENT_IDX, names the next used position and keeps it current while reaping", () => {
    const { raw, q } = setup(4, EVENT_IDX);
    expect(q.enableInterrupts()).toBe(false);
    expect(raw.driverEvent()).toEqual({ offWrap: 0x8000, flags: EV_DESC });
    q.add(
      [
        { addr: D, len: 1 },
        { addr: D, len: 1 },
        { addr: D, len: 1 },
        { addr: D, len: 1 },
      ],
      [],
      "a",
    );
    q.publish();
    use(raw, 0, 0, 0);
    expect(q.reap()).toBe("a");
    expect(raw.driverEvent()).toEqual({ offWrap: 0, flags: EV_DESC }); // position 0, wrap 0
  });

  it("enableInterrupts reports a used buffer that arrived while interrupts were off", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    q.disableInterrupts();
    use(raw, 0, 0, 0);
    expect(q.enableInterrupts()).toBe(true);
  });

  it("reset zeroes the ring and both event structures (VIRTIO 1.3 §2.8.13) and frees every ID", () => {
    const { raw, q } = setup();
    q.add([{ addr: D, len: 1 }], [], "a");
    q.publish();
    q.disableInterrupts();
    raw.setDeviceEvent(EV_DISABLE, 5);
    q.reset();
    expect(raw.descBytes(0)).toEqual(new Array(16).fill(0));
    expect(raw.driverEvent()).toEqual({ offWrap: 0, flags: 0 });
    expect(raw.deviceEvent()).toEqual({ offWrap: 0, flags: 0 });
    expect(q.numFree).toBe(8);
    expect(q.getState()).toEqual({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    expect(F_USED).toBe(0x8000);
  });
});
