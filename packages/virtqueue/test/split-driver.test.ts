// Unit tests of SplitDriverQueue: the exact bytes it writes into ring memory, its kick and
// interrupt-suppression decisions, and how it treats a device that lies. The device side is
// played by hand (raw writes into the used ring) unless a test says otherwise.
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  DescriptorChain,
  indirectAreaSize,
  NO_RING_FEATURES,
  ringFeatures,
  SplitDeviceQueue,
  SplitDriverQueue,
  UsedIdNotInFlightError,
  UsedIdOutOfRangeError,
  UsedIndexJumpError,
  UsedLenTooLargeError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { RawSplitRing } from "./helpers/raw-split-ring.js";

const EVENT_IDX = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const IND_AREA = 0x8000;
const D = RawSplitRing.DATA;

function setup(size = 8, features = NO_RING_FEATURES, indirect = false) {
  const raw = new RawSplitRing(size);
  const q = new SplitDriverQueue<string>(
    raw.mem,
    raw.layout,
    features,
    indirect ? { indirect: { addr: IND_AREA, maxEntries: 4 } } : {},
  );
  const L = raw.layout;
  return {
    raw,
    q,
    mem: raw.mem,
    L,
    usedEventAt: L.driver + 4 + 2 * size,
    availEventAt: L.device + 4 + 8 * size,
  };
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

function availRing(raw: RawSplitRing, from: number, count: number): number[] {
  const { driver, size } = raw.layout;
  return Array.from({ length: count }, (_, k) =>
    raw.mem.readU16(driver + 4 + 2 * ((from + k) % size)),
  );
}

/** Play the device: write used element number `usedIdx` and store used.idx = usedIdx + 1. */
function deviceUse(raw: RawSplitRing, usedIdx: number, id: number, len: number, newIdx?: number) {
  const at = raw.layout.device + 4 + 8 * (usedIdx % raw.layout.size);
  raw.mem.writeU32(at, id);
  raw.mem.writeU32(at + 4, len);
  raw.mem.writeU16(raw.layout.device + 2, newIdx ?? (usedIdx + 1) & 0xffff);
}

const one = (len = 1) => [{ addr: D, len }];
const segs = (n: number, len = 1) => Array.from({ length: n }, (_, i) => ({ addr: D + i, len }));

describe("SplitDriverQueue construction and reset", () => {
  it("§2.7.10.1 initialises the ring memory: used.flags, both idx, both event words and the table are zero", () => {
    const raw = new RawSplitRing(8);
    const L = raw.layout;
    raw.mem.fill(L.desc, 16 * 8, 0xaa);
    raw.mem.fill(L.driver, 6 + 2 * 8, 0xbb);
    raw.mem.fill(L.device, 6 + 8 * 8, 0xcc);
    const q = new SplitDriverQueue<string>(raw.mem, L, EVENT_IDX);
    expect([...raw.mem.slice(L.desc, 16 * 8)].every((b) => b === 0)).toBe(true);
    expect([...raw.mem.slice(L.driver, 6 + 2 * 8)].every((b) => b === 0)).toBe(true);
    expect([...raw.mem.slice(L.device, 6 + 8 * 8)].every((b) => b === 0)).toBe(true);
    expect(q.numFree).toBe(8);
    expect(q.getState()).toEqual({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
  });

  it("reset forgets in-flight chains, zeroes the ring again and starts over at descriptor 0", () => {
    const { raw, q, mem, L } = setup();
    q.add(one(), [], "a");
    q.add(one(), [], "b");
    q.publish();
    q.disableInterrupts();
    deviceUse(raw, 0, 0, 0);
    q.reset();
    expect(q.numFree).toBe(8);
    expect(mem.readU16(L.driver)).toBe(0);
    expect(mem.readU16(L.driver + 2)).toBe(0);
    expect(raw.usedIdx()).toBe(0);
    expect(readDesc(raw, 0)).toEqual({ addr: 0, len: 0, flags: 0, next: 0 });
    expect(q.reap()).toBeUndefined();
    q.add(one(), [], "c");
    q.publish();
    expect(availRing(raw, 0, 1)).toEqual([0]);
    deviceUse(raw, 0, 0, 0);
    expect(q.reap()).toBe("c");
  });

  it("rejects an invalid indirect area with a RangeError naming the option", () => {
    const raw = new RawSplitRing(8);
    const make = (addr: number, maxEntries: number) =>
      new SplitDriverQueue(raw.mem, raw.layout, INDIRECT, { indirect: { addr, maxEntries } });
    expect(() => make(IND_AREA, 1)).toThrow(/options\.indirect\.maxEntries.*got 1/);
    expect(() => make(IND_AREA, 9)).toThrow(/options\.indirect\.maxEntries/);
    expect(() => make(IND_AREA + 8, 4)).toThrow(/options\.indirect\.addr.*16-aligned/);
    expect(() => make(0xfff0, 4)).toThrow(/options\.indirect area \[0xfff0, \+512\)/);
    expect(indirectAreaSize(8, 4)).toBe(512);
  });

  it("§2.7.5.3.1 never sets INDIRECT when VIRTIO_F_INDIRECT_DESC was not negotiated, even with an area", () => {
    const raw = new RawSplitRing(8);
    const q = new SplitDriverQueue<string>(raw.mem, raw.layout, NO_RING_FEATURES, {
      indirect: { addr: IND_AREA, maxEntries: 4 },
    });
    q.add(one(), one(), "a");
    expect(q.numFree).toBe(6);
    expect(readDesc(raw, 0).flags).toBe(1);
    expect(readDesc(raw, 1).flags).toBe(2);
  });
});

describe("SplitDriverQueue.add", () => {
  it("§2.7.4.2 §2.7.13.1 writes readable then writable descriptors linked by NEXT", () => {
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

  it("writes each descriptor as le64 addr, le32 len, le16 flags, le16 next", () => {
    const { raw, q, L } = setup();
    q.add([{ addr: 2 ** 40 + 0x12345678, len: 0xa0b0c0d }], one(), "a");
    expect([...raw.mem.slice(L.desc, 16)]).toEqual([
      0x78,
      0x56,
      0x34,
      0x12,
      0x00,
      0x01,
      0x00,
      0x00, // addr
      0x0d,
      0x0c,
      0x0b,
      0x0a, // len
      0x01,
      0x00, // flags: NEXT
      0x01,
      0x00, // next: 1
    ]);
  });

  it("accepts the largest address and length the types allow", () => {
    const { raw, q } = setup();
    expect(q.add([{ addr: Number.MAX_SAFE_INTEGER, len: 0xffffffff }], [], "a")).toBe(true);
    expect(raw.mem.readU64(raw.layout.desc)).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(readDesc(raw, 0).len).toBe(0xffffffff);
  });

  it("§2.7.13.2 fills avail ring entries in add order but leaves avail.idx to publish", () => {
    const { raw, q, mem, L } = setup();
    q.add(segs(2), [], "a");
    q.add(one(), [], "b");
    q.add([], one(), "c");
    expect(availRing(raw, 0, 3)).toEqual([0, 2, 3]);
    expect(mem.readU16(L.driver + 2)).toBe(0);
    expect(q.getState().availIdx).toBe(3);
  });

  it("returns false, adding nothing, when there are not enough free descriptors", () => {
    const { raw, q, mem, L } = setup(4);
    expect(q.add(segs(3), [], "a")).toBe(true);
    const before = [...mem.slice(L.desc, 16 * 4 + 0)];
    expect(q.add(segs(2), [], "b")).toBe(false);
    expect(q.numFree).toBe(1);
    expect(q.getState().availIdx).toBe(1);
    expect([...mem.slice(L.desc, 16 * 4)]).toEqual(before);
    expect(availRing(raw, 1, 1)).toEqual([0]);
    expect(q.add(one(), [], "c")).toBe(true);
    expect(q.add(one(), [], "d")).toBe(false);
  });

  it("§2.7.5.3.1 rejects a chain of more segments than the queue size, naming the arguments", () => {
    const { q } = setup(4);
    expect(() => q.add(segs(3), segs(2), "a")).toThrow(
      /readable and writable hold 5 segments, more than the queue size 4/,
    );
  });

  it("§2.7.5.2 rejects segments adding up to 2^32 bytes, readable and writable together", () => {
    const { q } = setup();
    expect(() => q.add([{ addr: D, len: 2 ** 31 }], [{ addr: D, len: 2 ** 31 }], "a")).toThrow(
      /add up to 4294967296 bytes/,
    );
    expect(q.add([{ addr: D, len: 2 ** 31 }], [{ addr: D, len: 2 ** 31 - 1 }], "a")).toBe(true);
  });

  it("rejects bad host arguments with errors naming them, and adds nothing", () => {
    const { q } = setup(4);
    const bad: [() => unknown, RegExp, ErrorConstructor][] = [
      [() => q.add([], [], "a"), /both empty/, RangeError],
      [
        () => q.add(one(), [], undefined as unknown as string),
        /token must not be undefined/,
        RangeError,
      ],
      [
        () => q.add([{ addr: -1, len: 1 }], [], "a"),
        /readable\[0\]\.addr must be a non-negative safe integer, got -1/,
        RangeError,
      ],
      [() => q.add([{ addr: 0.5, len: 1 }], [], "a"), /readable\[0\]\.addr/, RangeError],
      [() => q.add([{ addr: 2 ** 53, len: 1 }], [], "a"), /readable\[0\]\.addr/, RangeError],
      [
        () => q.add([], [{ addr: 0, len: 2 ** 32 }], "a"),
        /writable\[0\]\.len must be an integer in \[0, 2\^32\)/,
        RangeError,
      ],
      [
        () =>
          q.add(
            one(),
            [
              { addr: 0, len: 1 },
              { addr: 0, len: -1 },
            ],
            "a",
          ),
        /writable\[1\]\.len.*got -1/,
        RangeError,
      ],
      [() => q.add([{ addr: 0, len: Number.NaN }], [], "a"), /readable\[0\]\.len/, RangeError],
      [
        () => q.add([null as unknown as { addr: number; len: number }], [], "a"),
        /readable\[0\] must be a \{ addr, len \} object/,
        TypeError,
      ],
    ];
    for (const [call, message, type] of bad) {
      expect(call).toThrow(type);
      expect(call).toThrow(message);
    }
    expect(q.numFree).toBe(4);
    expect(q.getState().availIdx).toBe(0);
  });

  it("writes the values it checked, even from a segment whose getters answer differently each time", () => {
    const { raw, q } = setup(4);
    let reads = 0;
    // len reads 16, then -1, then 16, ...: checking one read and writing another would let -1
    // (2^32 − 1 in the descriptor and the chain's writable bytes) through.
    const shifty = {
      addr: D,
      get len() {
        return reads++ % 2 === 0 ? 16 : -1;
      },
    };
    expect(q.add([], [shifty], "a")).toBe(true);
    q.publish();
    expect(raw.mem.readU32(raw.layout.desc + 8)).toBe(16);
    deviceUse(raw, 0, 0, 1000);
    expect(() => q.reap()).toThrow(UsedLenTooLargeError);
  });

  it("refuses odd segment values with the error naming the field: BigInt, strings, objects, 2^53, fractions", () => {
    const { q } = setup(4);
    const cases: [{ addr: number; len: number }, RegExp][] = [
      [{ addr: D, len: 8n as unknown as number }, /readable\[0\]\.len/],
      [{ addr: D, len: "8" as unknown as number }, /readable\[0\]\.len/],
      [{ addr: D, len: { valueOf: () => 8 } as unknown as number }, /readable\[0\]\.len/],
      [{ addr: D, len: 4294967295.5 }, /readable\[0\]\.len/],
      [{ addr: 4096n as unknown as number, len: 8 }, /readable\[0\]\.addr/],
      [{ addr: 2 ** 53, len: 8 }, /readable\[0\]\.addr/],
    ];
    for (const [seg, message] of cases) {
      expect(() => q.add([seg], [], "a")).toThrow(RangeError);
      expect(() => q.add([seg], [], "a")).toThrow(message);
    }
    expect(q.numFree).toBe(4);
    // The extremes that are valid.
    expect(q.add([{ addr: -0, len: 4294967295 }], [], "b")).toBe(true);
  });

  it("a segment refused after valid ones leaves the free list as it was: the next chain takes the same descriptors", () => {
    const { raw, q } = setup(4);
    // The first segment is valid and written by the fast path before the second is refused.
    expect(() => q.add(one(), [{ addr: D, len: -1 }], "bad")).toThrow(/writable\[0\]\.len/);
    expect(q.numFree).toBe(4);
    expect(q.add([{ addr: D, len: 16 }], [{ addr: D + 0x100, len: 32 }], "a")).toBe(true);
    expect(q.add(one(), [], "b")).toBe(true);
    expect(availRing(raw, 0, 2)).toEqual([0, 2]);
    expect(q.numFree).toBe(1);
  });

  it("§2.7.5.3.1 puts a multi-segment chain in the head's indirect table behind one INDIRECT-only descriptor", () => {
    const { raw, q } = setup(8, INDIRECT, true);
    q.add(
      [{ addr: D, len: 16 }],
      [
        { addr: D + 0x100, len: 512 },
        { addr: D + 0x400, len: 1 },
      ],
      "a",
    );
    expect(q.numFree).toBe(7);
    // INDIRECT alone: never with NEXT, and WRITE has no meaning there (§2.7.5.3.2).
    expect(readDesc(raw, 0)).toEqual({ addr: IND_AREA, len: 48, flags: 4, next: 0 });
    // §2.7.5.3: entries chained from index 0 by next; no INDIRECT inside the table.
    expect(readDesc(raw, 0, IND_AREA)).toEqual({ addr: D, len: 16, flags: 1, next: 1 });
    expect(readDesc(raw, 1, IND_AREA)).toEqual({ addr: D + 0x100, len: 512, flags: 3, next: 2 });
    expect(readDesc(raw, 2, IND_AREA)).toEqual({ addr: D + 0x400, len: 1, flags: 2, next: 0 });
    // The next chain's head is descriptor 1, so its table is slot 1 of maxEntries × 16 bytes.
    q.add(segs(4), [], "b");
    expect(readDesc(raw, 1)).toEqual({ addr: IND_AREA + 64, len: 64, flags: 4, next: 0 });
    expect(readDesc(raw, 3, IND_AREA + 64)).toEqual({ addr: D + 3, len: 1, flags: 0, next: 0 });
  });

  it("uses ring descriptors for one segment, or for more segments than an indirect slot holds", () => {
    const { raw, q } = setup(8, INDIRECT, true);
    q.add([], one(), "a");
    expect(readDesc(raw, 0)).toEqual({ addr: D, len: 1, flags: 2, next: 0 });
    q.add(segs(3), segs(2), "b");
    expect(q.numFree).toBe(2);
    expect(readDesc(raw, 1)).toEqual({ addr: D, len: 1, flags: 1, next: 2 });
    expect(readDesc(raw, 5)).toEqual({ addr: D + 1, len: 1, flags: 2, next: 0 });
    q.add(segs(2), [], "c"); // fits a slot again: one descriptor
    expect(q.numFree).toBe(1);
    expect(readDesc(raw, 6).flags).toBe(4);
  });
});

describe("SplitDriverQueue.publish and kicks", () => {
  it("§2.7.13.3.1 batches several adds into one avail.idx store and one kick decision", () => {
    const { q, mem, L } = setup();
    q.add(one(), [], "a");
    q.add(one(), [], "b");
    q.add(one(), [], "c");
    expect(q.publish()).toBe(true);
    expect(mem.readU16(L.driver + 2)).toBe(3);
    expect(q.publish()).toBe(false); // nothing new: no store, no kick
    expect(mem.readU16(L.driver + 2)).toBe(3);
  });

  it("§2.7.10.1 without EVENT_IDX kicks iff VIRTQ_USED_F_NO_NOTIFY is clear, ignoring avail_event", () => {
    const { q, mem, L, availEventAt } = setup();
    mem.writeU16(availEventAt, 100); // would suppress the kick with EVENT_IDX
    q.add(one(), [], "a");
    expect(q.publish()).toBe(true);
    mem.writeU16(L.device, 1);
    q.add(one(), [], "b");
    expect(q.publish()).toBe(false);
    mem.writeU16(L.device, 0);
    q.add(one(), [], "c");
    expect(q.publish()).toBe(true);
  });

  it("§2.7.10.1 with EVENT_IDX kicks iff the published range [old, new) contains avail_event", () => {
    for (const [event, kick] of [
      [0, true],
      [1, true],
      [2, true],
      [3, false],
      [0xffff, false],
    ] as const) {
      const { q, mem, availEventAt } = setup(8, EVENT_IDX);
      mem.writeU16(availEventAt, event);
      q.add(one(), [], "a");
      q.add(one(), [], "b");
      q.add(one(), [], "c");
      expect([event, q.publish()]).toEqual([event, kick]);
    }
  });

  it("§2.7.10.1 with EVENT_IDX ignores the lower bit of used.flags and judges from the previous publish", () => {
    const { q, mem, L, availEventAt } = setup(8, EVENT_IDX);
    mem.writeU16(L.device, 1);
    mem.writeU16(availEventAt, 1);
    q.add(one(), [], "a");
    expect(q.publish()).toBe(false); // 0 -> 1 does not reach entry 1
    q.add(one(), [], "b");
    expect(q.publish()).toBe(true); // 1 -> 2 wrote entry 1
    q.add(one(), [], "c");
    expect(q.publish()).toBe(false); // 2 -> 3: entry 1 was announced already
  });

  it("§2.7.10.1 with EVENT_IDX the kick decision holds across the 16-bit index wrap", () => {
    const { raw, q, mem, L, availEventAt } = setup(8, EVENT_IDX);
    q.setState({ availIdx: 0xfffe, usedIdx: 0xfffe, availWrap: true, usedWrap: true });
    expect(mem.readU16(L.driver + 2)).toBe(0xfffe);
    for (const [event, kick] of [
      [0xfffe, true],
      [0xffff, true],
      [0, true],
      [1, false],
      [0xfffd, false],
    ] as const) {
      q.reset();
      q.setState({ availIdx: 0xfffe, usedIdx: 0xfffe, availWrap: true, usedWrap: true });
      mem.writeU16(availEventAt, event);
      q.add(one(), [], "a");
      q.add(one(), [], "b");
      q.add(one(), [], "c");
      expect([event, q.publish()]).toEqual([event, kick]);
      expect(mem.readU16(L.driver + 2)).toBe(1);
      // Entries 0xfffe, 0xffff, 0 sit in slots 6, 7, 0 of an 8-entry ring.
      expect(availRing(raw, 6, 3)).toEqual([0, 1, 2]);
    }
  });

  it("wraps avail.idx from 65535 to 0 without EVENT_IDX too", () => {
    const { q, mem, L } = setup();
    q.setState({ availIdx: 0xffff, usedIdx: 0xffff, availWrap: true, usedWrap: true });
    q.add(one(), [], "a");
    expect(q.publish()).toBe(true);
    expect(mem.readU16(L.driver + 2)).toBe(0);
  });

  it("round trips with our device across the wrap, kicking and interrupting exactly when asked", () => {
    const { q, mem, L } = setup(8, EVENT_IDX);
    const dev = new SplitDeviceQueue(mem, L, EVENT_IDX);
    const start = { availIdx: 0xfff0, usedIdx: 0xfff0, availWrap: true, usedWrap: true };
    q.setState(start);
    dev.setState(start);
    dev.enableNotifications();
    const chain = new DescriptorChain(8);
    for (let i = 0; i < 40; i++) {
      q.add(one(), one(), `t${i}`);
      expect(q.publish()).toBe(true); // the device re-armed avail_event at its next entry
      expect(dev.pop(chain)).toBe(true);
      expect(dev.enableNotifications()).toBe(false);
      dev.push(chain.head, 1);
      expect(dev.needsInterrupt()).toBe(true); // used_event is the entry we reap next
      expect(q.reap()).toBe(`t${i}`);
      expect(q.lastLen).toBe(1);
    }
    expect(q.getState()).toMatchObject({ availIdx: 0x18, usedIdx: 0x18 });
  });
});

describe("SplitDriverQueue.reap", () => {
  it("returns tokens with the written length and frees the descriptors", () => {
    const { raw, q } = setup(4);
    q.add(segs(2), [{ addr: D, len: 100 }], "a");
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
    expect(q.add(segs(4), [], "c")).toBe(true);
  });

  it("reaps a batch of used entries in used-ring order, then reports none", () => {
    const { raw, q } = setup();
    for (const t of ["a", "b", "c"]) q.add([], one(8), t);
    q.publish();
    deviceUse(raw, 0, 2, 1, 0);
    deviceUse(raw, 1, 0, 2, 0);
    deviceUse(raw, 2, 1, 3);
    const got: [string, number][] = [];
    for (let t = q.reap(); t !== undefined; t = q.reap()) got.push([t, q.lastLen]);
    expect(got).toEqual([
      ["c", 1],
      ["a", 2],
      ["b", 3],
    ]);
    expect(q.numFree).toBe(8);
  });

  it("accepts a used index exactly the queue size ahead", () => {
    const { raw, q } = setup(4);
    for (const t of ["a", "b", "c", "d"]) q.add(one(), [], t);
    q.publish();
    for (let i = 0; i < 4; i++) deviceUse(raw, i, i, 0, 4);
    expect([q.reap(), q.reap(), q.reap(), q.reap(), q.reap()]).toEqual([
      "a",
      "b",
      "c",
      "d",
      undefined,
    ]);
  });

  it("reuses the most recently freed descriptors first, following its shadow free list", () => {
    const { raw, q } = setup();
    q.add(segs(2), [], "a"); // descriptors 0, 1
    q.add(one(), [], "b"); // 2
    q.add(segs(3), [], "c"); // 3, 4, 5
    q.publish();
    deviceUse(raw, 0, 3, 0);
    expect(q.reap()).toBe("c");
    q.add(segs(4), [], "d"); // 3, 4, 5, then 6 from the old free list
    expect(availRing(raw, 3, 1)).toEqual([3]);
    expect([3, 4, 5, 6].map((i) => readDesc(raw, i).next)).toEqual([4, 5, 6, 0]);
    expect(q.numFree).toBe(1);
  });

  it("frees chains from its private shadow even if the device scribbles on the descriptor table", () => {
    const { raw, q } = setup(4);
    q.add(segs(2), [], "a");
    q.publish();
    raw.mem.fill(raw.layout.desc, 64, 0xff); // hostile device overwrites next fields
    deviceUse(raw, 0, 0, 0);
    expect(q.reap()).toBe("a");
    expect(q.numFree).toBe(4);
    expect(q.add(segs(4), [], "b")).toBe(true);
    expect([0, 1, 2, 3].map((i) => readDesc(raw, i).next)).toEqual([1, 2, 3, 0]);
  });

  it("rejects a used id outside the descriptor table with UsedIdOutOfRangeError", () => {
    const { raw, q } = setup();
    q.add(one(), [], "a");
    q.publish();
    deviceUse(raw, 0, 0xfffffff0, 0);
    expect(() => q.reap()).toThrow(UsedIdOutOfRangeError);
    expect(() => q.reap()).toThrow(
      expect.objectContaining({ code: "used-id-out-of-range", id: 0xfffffff0, queueSize: 8 }),
    );
  });

  it("rejects used ids that are not the head of a published chain with UsedIdNotInFlightError", () => {
    const notInFlight = (id: number) =>
      expect.objectContaining({ code: "used-id-not-in-flight", id, scope: "ring" });
    const { raw, q } = setup();
    q.add(segs(2), [], "a"); // head 0, second descriptor 1
    q.publish();
    q.add(one(), [], "b"); // head 2, added but not published
    deviceUse(raw, 0, 5, 0); // free descriptor
    expect(() => q.reap()).toThrow(UsedIdNotInFlightError);
    expect(() => q.reap()).toThrow(notInFlight(5));
    deviceUse(raw, 0, 1, 0); // inside a chain, not its head
    expect(() => q.reap()).toThrow(notInFlight(1));
    deviceUse(raw, 0, 2, 0); // a head the device was never shown
    expect(() => q.reap()).toThrow(notInFlight(2));
    deviceUse(raw, 0, 0, 0);
    expect(q.reap()).toBe("a");
    deviceUse(raw, 1, 0, 0); // the same head twice
    expect(() => q.reap()).toThrow(notInFlight(0));
  });

  it("accepts a head that stayed in flight while more than a ring's worth of other chains came and went", () => {
    const { raw, q } = setup(4);
    q.add(one(), [], "long"); // head 0, avail index 0
    q.publish();
    let used = 0;
    for (let i = 0; i < 9; i++) {
      q.add(one(), [], `short-${i}`);
      q.publish();
      const [head] = availRing(raw, i + 1, 1);
      expect(head).not.toBe(0);
      deviceUse(raw, used++, head!, 0);
      expect(q.reap()).toBe(`short-${i}`);
    }
    // Nine avail indices later (more than the queue size), the long chain comes back.
    deviceUse(raw, used++, 0, 0);
    expect(q.reap()).toBe("long");
    expect(q.numFree).toBe(4);
  });

  it("tells published from unpublished heads across the 16-bit wrap of the avail index", () => {
    const { raw, q } = setup();
    q.setState({ availIdx: 65534, usedIdx: 65534, availWrap: true, usedWrap: true });
    q.add(one(), [], "a"); // head 0 at avail index 65534
    q.add(one(), [], "b"); // head 1 at 65535
    q.publish();
    q.add(one(), [], "c"); // head 2 at 0, added but not published
    deviceUse(raw, 65534, 2, 0);
    expect(() => q.reap()).toThrow(
      expect.objectContaining({ code: "used-id-not-in-flight", id: 2 }),
    );
    deviceUse(raw, 65534, 1, 0);
    expect(q.reap()).toBe("b");
    q.publish(); // now head 2, at avail index 0, is published
    deviceUse(raw, 65535, 2, 0);
    expect(q.reap()).toBe("c");
    deviceUse(raw, 0, 0, 0, 1);
    expect(q.reap()).toBe("a");
    expect(q.numFree).toBe(8);
  });

  it("rejects a used length larger than the writable bytes offered, and accepts exactly that many", () => {
    const { raw, q } = setup();
    q.add(
      [{ addr: D, len: 100 }],
      [
        { addr: D, len: 10 },
        { addr: D, len: 6 },
      ],
      "a",
    );
    q.add(one(100), [], "b");
    q.publish();
    deviceUse(raw, 0, 0, 17);
    expect(() => q.reap()).toThrow(UsedLenTooLargeError);
    expect(() => q.reap()).toThrow(
      expect.objectContaining({ code: "used-len-too-large", id: 0, len: 17, writableBytes: 16 }),
    );
    deviceUse(raw, 0, 0, 16);
    expect([q.reap(), q.lastLen]).toEqual(["a", 16]);
    deviceUse(raw, 1, 3, 1); // a readable-only chain offers nothing to write
    expect(() => q.reap()).toThrow(expect.objectContaining({ id: 3, len: 1, writableBytes: 0 }));
  });

  it("rejects a used index that jumps more than the queue size, and stays unchanged after it", () => {
    const { raw, q } = setup();
    q.add(one(), [], "a");
    q.publish();
    deviceUse(raw, 0, 0, 0, 9);
    expect(() => q.reap()).toThrow(UsedIndexJumpError);
    expect(() => q.reap()).toThrow(
      expect.objectContaining({
        code: "used-index-jump",
        usedIdx: 9,
        lastUsedIdx: 0,
        queueSize: 8,
      }),
    );
    expect(q.numFree).toBe(7);
    raw.mem.writeU16(raw.layout.device + 2, 1);
    expect(q.reap()).toBe("a");
  });

  it("returns falsy tokens such as 0 and null, only undefined meaning none", () => {
    const raw = new RawSplitRing(4);
    const q = new SplitDriverQueue<number | null>(raw.mem, raw.layout, NO_RING_FEATURES);
    q.add(one(), [], 0);
    q.add(one(), [], null);
    q.publish();
    deviceUse(raw, 0, 0, 0, 2);
    deviceUse(raw, 1, 1, 0, 2);
    expect([q.reap(), q.reap(), q.reap()]).toEqual([0, null, undefined]);
  });
});

describe("SplitDriverQueue interrupt suppression", () => {
  it("§2.7.7.1 without EVENT_IDX sets flags to 1 to suppress and back to 0, reporting pending buffers", () => {
    const { raw, q, mem, L, usedEventAt } = setup();
    q.disableInterrupts();
    expect(mem.readU16(L.driver)).toBe(1);
    q.add(one(), [], "a");
    q.publish();
    deviceUse(raw, 0, 0, 0);
    expect(q.enableInterrupts()).toBe(true);
    expect(mem.readU16(L.driver)).toBe(0);
    expect(q.reap()).toBe("a");
    expect(q.enableInterrupts()).toBe(false);
    expect(mem.readU16(usedEventAt)).toBe(0); // used_event is not used without EVENT_IDX
  });

  it("§2.7.7.1 with EVENT_IDX keeps flags 0 and writes used_event: next to reap when on, one behind when off", () => {
    const { raw, q, mem, L, usedEventAt } = setup(8, EVENT_IDX);
    q.add(one(), [], "a");
    q.add(one(), [], "b");
    q.publish();
    deviceUse(raw, 0, 0, 0);
    q.reap();
    expect(mem.readU16(usedEventAt)).toBe(1); // written by reap while interrupts are on
    q.disableInterrupts();
    expect(mem.readU16(usedEventAt)).toBe(0);
    deviceUse(raw, 1, 1, 0);
    q.reap();
    expect(mem.readU16(usedEventAt)).toBe(0); // not moved while off
    expect(q.enableInterrupts()).toBe(false);
    expect(mem.readU16(usedEventAt)).toBe(2);
    expect(mem.readU16(L.driver)).toBe(0);
  });

  it("with EVENT_IDX, disableInterrupts at used index 0 writes used_event 65535", () => {
    const { q, mem, usedEventAt } = setup(8, EVENT_IDX);
    q.disableInterrupts();
    expect(mem.readU16(usedEventAt)).toBe(0xffff);
  });

  it("with EVENT_IDX, our device stays quiet while interrupts are off and enableInterrupts finds its work", () => {
    const { q, mem, L } = setup(8, EVENT_IDX);
    const dev = new SplitDeviceQueue(mem, L, EVENT_IDX);
    const chain = new DescriptorChain(8);
    q.add(one(), [], "a");
    q.publish();
    dev.pop(chain);
    dev.push(chain.head, 0);
    expect(dev.needsInterrupt()).toBe(true);
    expect(q.reap()).toBe("a");
    q.disableInterrupts();
    for (const t of ["b", "c"]) {
      q.add(one(), [], t);
      q.publish();
      dev.pop(chain);
      dev.push(chain.head, 0);
      expect(dev.needsInterrupt()).toBe(false);
    }
    expect(q.enableInterrupts()).toBe(true);
    expect([q.reap(), q.reap(), q.reap()]).toEqual(["b", "c", undefined]);
  });
});

describe("SplitDriverQueue state", () => {
  it("setState refuses while chains are in flight or added, and checks the indices", () => {
    const { q } = setup();
    const st = (availIdx: number, usedIdx: number) => ({
      availIdx,
      usedIdx,
      availWrap: true,
      usedWrap: true,
    });
    expect(() => q.setState(st(65536, 0))).toThrow(/state\.availIdx.*got 65536/);
    expect(() => q.setState(st(0, -1))).toThrow(/state\.usedIdx/);
    q.add(one(), [], "a");
    expect(() => q.setState(st(5, 5))).toThrow(/idle queue/);
  });

  it("setState stores avail.idx, used.idx and used_event so the ring continues from there", () => {
    const { raw, q, mem, L, usedEventAt } = setup(8, EVENT_IDX);
    q.setState({ availIdx: 300, usedIdx: 299, availWrap: true, usedWrap: true });
    expect([mem.readU16(L.driver + 2), raw.usedIdx(), mem.readU16(usedEventAt)]).toEqual([
      300, 299, 299,
    ]);
    expect(q.getState()).toEqual({ availIdx: 300, usedIdx: 299, availWrap: true, usedWrap: true });
  });
});
