// Hostile drivers against SplitDeviceQueue. Every ring here is written into guest memory by
// hand (test/helpers/raw-split-ring.ts), never through our driver. One test per error class
// asserts the class, its literal code and fields, that nothing but a VirtqueueError escapes,
// and that the queue works again afterwards: a ChainError's head is pushed back with length 0
// and the queue goes on; after any error a reset queue serves a freshly initialised ring.
import { GuestMemoryMap } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  AvailIndexJumpError,
  BufferOutOfBoundsError,
  ChainError,
  ChainTooLongError,
  DescriptorChain,
  DescriptorLoopError,
  HeadInFlightError,
  HeadOutOfRangeError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NextOutOfRangeError,
  NO_RING_FEATURES,
  ReadableAfterWritableError,
  RingError,
  type RingFeatures,
  ringFeatures,
  SplitDeviceQueue,
  TotalLengthOverflowError,
  VirtqueueError,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  countingMemory,
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  permissiveMemory,
  RawSplitRing,
} from "./helpers/raw-split-ring.js";

const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const ALL = ringFeatures(
  featureMask(Feature.RING_INDIRECT_DESC) | featureMask(Feature.RING_EVENT_IDX),
);
const D = RawSplitRing.DATA;
const TABLE = RawSplitRing.TABLE;
const MEM_END = 0x10000;

// biome-ignore lint/suspicious/noExplicitAny: an error class of any constructor signature
type ErrorClass = abstract new (...args: any[]) => VirtqueueError;

interface Case {
  /** Test name (a sentence; cites the section of the MUST the driver broke, if any). */
  name: string;
  error: ErrorClass;
  /** code, scope and the structured fields the error must carry. */
  fields: Record<string, unknown>;
  features?: RingFeatures;
  size?: number;
  capacity?: number;
  /** Queue over other memory than raw.mem (raw.mem is still where the test writes). */
  memory?: (raw: RawSplitRing) => ConstructorParameters<typeof SplitDeviceQueue>[0];
  /** Write the hostile ring; the queue is already constructed. */
  write: (raw: RawSplitRing, q: SplitDeviceQueue, chain: DescriptorChain) => void;
}

const chainCases: Case[] = [
  {
    name: "§2.7.5.2 a descriptor whose next is itself is a DescriptorLoopError",
    error: DescriptorLoopError,
    fields: { code: "descriptor-loop", head: 2, index: 2, indirect: false },
    write: (raw) => {
      raw.writeDesc(2, { addr: D, len: 8, flags: F_NEXT, next: 2 });
      raw.offer(2);
    },
  },
  {
    name: "§2.7.5.3.1 a chain longer than the queue size (through an indirect table) is a ChainTooLongError",
    error: ChainTooLongError,
    fields: { code: "chain-too-long", head: 0, index: 2, indirect: true, limit: 4 },
    size: 4,
    capacity: 16,
    features: INDIRECT,
    write: (raw) => {
      // 2 direct + 3 indirect = 5 descriptors in a queue of 4.
      raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: D, len: 8, flags: F_NEXT, next: 2 });
      raw.writeDesc(2, { addr: TABLE, len: 48, flags: F_INDIRECT });
      raw.writeTable(TABLE, [
        { addr: D, len: 8, flags: F_NEXT, next: 1 },
        { addr: D, len: 8, flags: F_NEXT, next: 2 },
        { addr: D, len: 8 },
      ]);
      raw.offer(0);
    },
  },
  {
    name: "§2.7.5 a next index outside the descriptor table is a NextOutOfRangeError",
    error: NextOutOfRangeError,
    fields: { code: "next-out-of-range", head: 0, index: 0, indirect: false, next: 8 },
    write: (raw) => {
      raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 8 });
      raw.offer(0);
    },
  },
  {
    name: "§2.7.4.2 a readable descriptor after a writable one is a ReadableAfterWritableError",
    error: ReadableAfterWritableError,
    fields: { code: "readable-after-writable", head: 0, index: 1, indirect: false },
    write: (raw) => {
      raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT | F_WRITE, next: 1 });
      raw.writeDesc(1, { addr: D, len: 8 });
      raw.offer(0);
    },
  },
  {
    name: "a buffer one byte past the end of guest memory is a BufferOutOfBoundsError",
    error: BufferOutOfBoundsError,
    fields: {
      code: "buffer-out-of-bounds",
      head: 1,
      index: 1,
      indirect: false,
      addr: MEM_END - 63,
      len: 64,
    },
    write: (raw) => {
      raw.writeDesc(1, { addr: MEM_END - 63, len: 64, flags: F_WRITE });
      raw.offer(1);
    },
  },
  {
    name: "§2.7.5.2 a chain of 2^32 bytes (readable and writable together) is a TotalLengthOverflowError",
    error: TotalLengthOverflowError,
    fields: { code: "total-length-overflow", head: 0, index: 1, indirect: false },
    // 4 GiB buffers cannot be allocated in a test, so this memory accepts every range (bounds
    // are tested above); only the length arithmetic is under test.
    memory: (raw) => permissiveMemory(raw.mem),
    write: (raw) => {
      raw.writeDesc(0, { addr: D, len: 0x8000_0000, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: D, len: 0x8000_0000, flags: F_WRITE });
      raw.offer(0);
    },
  },
  {
    name: "§2.7.5.3.1 INDIRECT without VIRTIO_F_INDIRECT_DESC is an IndirectNotNegotiatedError",
    error: IndirectNotNegotiatedError,
    fields: { code: "indirect-not-negotiated", head: 0, index: 0, indirect: false },
    features: NO_RING_FEATURES,
    write: (raw) => {
      raw.writeTable(TABLE, [{ addr: D, len: 8 }]);
      raw.writeDesc(0, { addr: TABLE, len: 16, flags: F_INDIRECT });
      raw.offer(0);
    },
  },
  {
    name: "§2.7.5.3.1 INDIRECT together with NEXT is an IndirectWithNextError",
    error: IndirectWithNextError,
    fields: { code: "indirect-with-next", head: 0, index: 0, indirect: false },
    write: (raw) => {
      raw.writeTable(TABLE, [{ addr: D, len: 8 }]);
      raw.writeDesc(0, { addr: TABLE, len: 16, flags: F_INDIRECT | F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: D, len: 8 });
      raw.offer(0);
    },
  },
  {
    name: "§2.7.5.3 an indirect table whose length is not a multiple of 16 is an IndirectTableLengthError",
    error: IndirectTableLengthError,
    fields: { code: "indirect-table-length", head: 3, index: 3, indirect: false, len: 24 },
    write: (raw) => {
      raw.writeDesc(3, { addr: TABLE, len: 24, flags: F_INDIRECT });
      raw.offer(3);
    },
  },
  {
    name: "§2.7.5.3.1 INDIRECT inside an indirect table is a NestedIndirectError",
    error: NestedIndirectError,
    fields: { code: "nested-indirect", head: 0, index: 1, indirect: true },
    write: (raw) => {
      raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
      raw.writeTable(TABLE, [
        { addr: D, len: 8, flags: F_NEXT, next: 1 },
        { addr: TABLE, len: 16, flags: F_INDIRECT },
      ]);
      raw.offer(0);
    },
  },
  {
    name: "an indirect table running past the end of guest memory is an IndirectTableOutOfBoundsError",
    error: IndirectTableOutOfBoundsError,
    fields: {
      code: "indirect-table-out-of-bounds",
      head: 0,
      index: 0,
      indirect: false,
      addr: MEM_END - 16,
      len: 32,
    },
    write: (raw) => {
      raw.writeDesc(0, { addr: MEM_END - 16, len: 32, flags: F_INDIRECT });
      raw.offer(0);
    },
  },
];

const ringCases: Case[] = [
  {
    name: "§2.7.13 avail.idx more than queue size ahead is an AvailIndexJumpError",
    error: AvailIndexJumpError,
    fields: { code: "avail-index-jump", availIdx: 9, lastAvailIdx: 0, queueSize: 8 },
    write: (raw) => raw.setAvailIdx(9),
  },
  {
    name: "§2.7.6 an available head outside the descriptor table is a HeadOutOfRangeError",
    error: HeadOutOfRangeError,
    fields: { code: "head-out-of-range", head: 8, queueSize: 8 },
    write: (raw) => raw.offer(8),
  },
  {
    name: "the same head made available again while in flight is a HeadInFlightError",
    error: HeadInFlightError,
    fields: { code: "head-in-flight", head: 3 },
    write: (raw, q, chain) => {
      raw.writeDesc(3, { addr: D, len: 8 });
      raw.offer(3);
      raw.offer(3);
      expect(q.pop(chain)).toBe(true);
    },
  },
];

function popError(q: SplitDeviceQueue, chain: DescriptorChain): unknown {
  try {
    q.pop(chain);
  } catch (e) {
    return e;
  }
  throw new Error("pop did not throw");
}

/** Offer a good one-descriptor chain at `head` and check that it pops (then push it). */
function expectServes(raw: RawSplitRing, q: SplitDeviceQueue, chain: DescriptorChain, head = 0) {
  raw.writeDesc(head, { addr: D + 0x100, len: 8, flags: F_WRITE });
  raw.offer(head);
  expect(q.pop(chain)).toBe(true);
  expect([chain.head, chain.count, chain.writableBytes]).toEqual([head, 1, 8]);
  q.push(head, 8);
}

function run(c: Case) {
  const raw = new RawSplitRing(c.size ?? 8);
  const features = c.features ?? INDIRECT;
  const q = new SplitDeviceQueue(c.memory?.(raw) ?? raw.mem, raw.layout, features);
  const chain = new DescriptorChain(c.capacity ?? c.size ?? 8);
  c.write(raw, q, chain);
  const e = popError(q, chain);
  // Nothing but the expected VirtqueueError subclass escapes.
  expect(e).toBeInstanceOf(c.error);
  expect(e).toBeInstanceOf(VirtqueueError);
  expect(e).toMatchObject(c.fields);
  expect((e as Error).name).toBe(c.error.name);
  return { raw, q, chain, e: e as VirtqueueError };
}

describe("hostile split rings: one ChainError per class", () => {
  for (const c of chainCases) {
    it(`${c.name}; the head can be pushed used with length 0, the queue goes on, and works after a reset`, () => {
      const { raw, q, chain, e } = run(c);
      expect(e).toBeInstanceOf(ChainError);
      expect(e.scope).toBe("chain");
      // §2.7.8: the avail entry is consumed and the head in flight; return it unused.
      const head = (e as ChainError).head;
      const usedBefore = raw.usedIdx();
      q.push(head, 0);
      expect(raw.usedElem(usedBefore % raw.layout.size)).toEqual({ id: head, len: 0 });
      expect(raw.usedIdx()).toBe(usedBefore + 1);
      expect(q.pop(chain)).toBe(false);
      // The queue goes on with the next chain …
      expectServes(raw, q, chain, raw.layout.size - 1);
      // … and a reset queue serves a freshly initialised ring.
      q.reset();
      raw.clearRing();
      expectServes(raw, q, chain);
      expect(raw.usedElem(0)).toEqual({ id: 0, len: 8 });
    });
  }
});

describe("hostile split rings: one RingError per class", () => {
  for (const c of ringCases) {
    it(`${c.name}; a reset queue then serves a freshly initialised ring`, () => {
      const { raw, q, chain, e } = run(c);
      expect(e).toBeInstanceOf(RingError);
      expect(e.scope).toBe("ring");
      q.reset();
      raw.clearRing();
      expectServes(raw, q, chain);
      expect(q.inFlight).toBe(0);
    });
  }

  it("avail.idx moving backwards (a 16-bit distance of 65535) is an AvailIndexJumpError that consumes nothing", () => {
    const raw = new RawSplitRing(8);
    const q = new SplitDeviceQueue(raw.mem, raw.layout, NO_RING_FEATURES);
    raw.setAvailIdx(0xffff);
    expect(popError(q, new DescriptorChain(8))).toMatchObject({
      code: "avail-index-jump",
      availIdx: 0xffff,
      lastAvailIdx: 0,
    });
    expect(q.getState().availIdx).toBe(0);
    expect(() => q.numAvailable()).toThrow(AvailIndexJumpError);
  });
});

describe("hostile split rings: more shapes of the same errors", () => {
  function setup(size = 8, features = INDIRECT) {
    const raw = new RawSplitRing(size);
    const q = new SplitDeviceQueue(raw.mem, raw.layout, features);
    return { raw, q, chain: new DescriptorChain(size) };
  }

  it("a two-descriptor cycle is a DescriptorLoopError at the revisited descriptor", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(1, { addr: D, len: 8, flags: F_NEXT, next: 4 });
    raw.writeDesc(4, { addr: D, len: 8, flags: F_NEXT, next: 1 });
    raw.offer(1);
    expect(popError(q, chain)).toMatchObject({ code: "descriptor-loop", head: 1, index: 1 });
  });

  it("a loop through the whole table of 256 is a DescriptorLoopError back at the head", () => {
    const { raw, q, chain } = setup(256);
    for (let i = 0; i < 256; i++)
      raw.writeDesc(i, { addr: D, len: 1, flags: F_NEXT, next: (i + 1) % 256 });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "descriptor-loop", head: 0, index: 0 });
  });

  it("a loop through a table of the maximum size 32768 is caught after exactly 32768 descriptor reads", () => {
    const size = 32768;
    const raw = new RawSplitRing(size, 0x200000);
    // Descriptor i links to i + 1 (mod size), written as raw words: flags NEXT, next in the high half.
    const words = new Uint32Array(4 * size);
    for (let i = 0; i < size; i++) {
      words[4 * i] = D;
      words[4 * i + 2] = 1;
      words[4 * i + 3] = F_NEXT | (((i + 1) % size) << 16);
    }
    raw.mem.write(raw.layout.desc, new Uint8Array(words.buffer));
    raw.offer(0);
    const { mem, counter } = countingMemory(raw.mem, raw.layout);
    const q = new SplitDeviceQueue(mem, raw.layout, NO_RING_FEATURES);
    expect(popError(q, new DescriptorChain(size))).toMatchObject({
      code: "descriptor-loop",
      head: 0,
      index: 0,
    });
    expect(counter.words).toBe(4 * size);
  });

  it("a loop inside an indirect table is a DescriptorLoopError flagged indirect", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeTable(TABLE, [
      { addr: D, len: 8, flags: F_NEXT, next: 1 },
      { addr: D, len: 8, flags: F_NEXT, next: 0 },
    ]);
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(DescriptorLoopError);
    expect(e).toMatchObject({ code: "descriptor-loop", head: 0, index: 0, indirect: true });
  });

  it("§2.7.4.1 a chain longer than the cursor's capacity is a ChainTooLongError with that limit", () => {
    const { raw, q } = setup(8);
    for (let i = 0; i < 3; i++)
      raw.writeDesc(i, { addr: D, len: 1, flags: i < 2 ? F_NEXT : 0, next: i + 1 });
    raw.offer(0);
    expect(popError(q, new DescriptorChain(2))).toMatchObject({
      code: "chain-too-long",
      head: 0,
      index: 2,
      indirect: false,
      limit: 2,
    });
  });

  it("§2.7.5.3.1 an indirect table longer than the queue size is refused before it is read", () => {
    const { raw, q, chain } = setup(8);
    // An address no memory maps: reading the table would fail differently.
    raw.writeDesc(0, { addr: 1n << 62n, len: 0xffff_fff0, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({
      code: "chain-too-long",
      index: 0,
      indirect: false,
      limit: 8,
    });
  });

  it("an indirect table of length 0 is an IndirectTableLengthError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 0, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "indirect-table-length", len: 0 });
  });

  it("an indirect next outside the table (but inside the ring's table) is a NextOutOfRangeError flagged indirect", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeTable(TABLE, [{ addr: D, len: 8, flags: F_NEXT, next: 2 }]);
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({
      code: "next-out-of-range",
      index: 0,
      indirect: true,
      next: 2,
    });
  });

  it("§2.7.4.2 a readable indirect entry after a writable direct descriptor is a ReadableAfterWritableError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT | F_WRITE, next: 1 });
    raw.writeDesc(1, { addr: TABLE, len: 16, flags: F_INDIRECT });
    raw.writeTable(TABLE, [{ addr: D, len: 8 }]);
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({
      code: "readable-after-writable",
      index: 0,
      indirect: true,
    });
  });

  it("a buffer whose addr + len wraps 2^64 is a BufferOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 0xffff_ffff_ffff_ff00n, len: 0x200 });
    raw.offer(0);
    const e = popError(q, chain) as BufferOutOfBoundsError;
    expect(e).toBeInstanceOf(BufferOutOfBoundsError);
    expect(e.addr).toBeGreaterThanOrEqual(2 ** 53);
    expect(e.len).toBe(0x200);
  });

  it("a zero-length buffer at an address above 2^53 is a BufferOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 1n << 60n, len: 0 });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "buffer-out-of-bounds", len: 0 });
  });

  it("a zero-length buffer one byte past the end of guest memory is a BufferOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: MEM_END + 1, len: 0 });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "buffer-out-of-bounds", addr: MEM_END + 1 });
  });

  it("an indirect entry one byte past the end of guest memory is a BufferOutOfBoundsError flagged indirect", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 16, flags: F_INDIRECT });
    raw.writeTable(TABLE, [{ addr: MEM_END - 7, len: 8, flags: F_WRITE }]);
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({
      code: "buffer-out-of-bounds",
      index: 0,
      indirect: true,
      addr: MEM_END - 7,
      len: 8,
    });
  });

  it("§2.7.5.1 a device-writable buffer in read-only memory is a BufferOutOfBoundsError; a readable one is fine", () => {
    const buf = new ArrayBuffer(MEM_END);
    const rom = new GuestMemoryMap([
      { guestBase: 0, size: 0x8000, buffer: buf },
      { guestBase: 0x8000, size: 0x8000, buffer: buf, byteOffset: 0x8000, readOnly: true },
    ]);
    // The test writes the ring through a writable alias of the same bytes.
    const raw = new RawSplitRing(
      8,
      MEM_END,
      new GuestMemoryMap([{ guestBase: 0, size: MEM_END, buffer: buf }]),
    );
    const q = new SplitDeviceQueue(rom, raw.layout, NO_RING_FEATURES);
    const chain = new DescriptorChain(8);
    raw.writeDesc(0, { addr: 0x9000, len: 16 });
    raw.offer(0);
    expect(q.pop(chain)).toBe(true);
    raw.writeDesc(1, { addr: 0x9000, len: 16, flags: F_WRITE });
    raw.offer(1);
    expect(popError(q, chain)).toMatchObject({
      code: "buffer-out-of-bounds",
      head: 1,
      addr: 0x9000,
      len: 16,
    });
  });

  it("an indirect table whose entry straddles two separately backed regions is an IndirectTableOutOfBoundsError", () => {
    // Guest-contiguous regions over different buffers: the table passes the range check, but
    // entry 0 cannot be read as one scalar.
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x8000, buffer: new ArrayBuffer(0x8000) },
      { guestBase: 0x8000, size: 0x8000, buffer: new ArrayBuffer(0x8000) },
    ]);
    const raw = new RawSplitRing(8, MEM_END, mem);
    const q = new SplitDeviceQueue(mem, raw.layout, INDIRECT);
    // Entry 0 is [0x7ffa, 0x800a): its second word, [0x7ffe, 0x8002), needs both regions.
    raw.writeDesc(0, { addr: 0x8000 - 6, len: 32, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, new DescriptorChain(8))).toMatchObject({
      code: "indirect-table-out-of-bounds",
      head: 0,
      index: 0,
      addr: 0x8000 - 6,
      len: 32,
    });
  });

  it("a ChainError while notifications are on still moves avail_event (EVENT_IDX)", () => {
    const { raw, q, chain } = setup(8, ALL);
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 0 });
    raw.offer(0);
    expect(popError(q, chain)).toBeInstanceOf(DescriptorLoopError);
    expect(raw.availEvent()).toBe(1);
  });
});

describe("hostile split rings: random garbage", () => {
  const size = 8;
  // Mostly plausible values (so chains get deep enough to loop, nest and run long), sometimes
  // anything a u16/u32/u64 field can hold.
  const mostly = <T>(plausible: fc.Arbitrary<T>, anything: fc.Arbitrary<T>) =>
    fc.oneof({ arbitrary: plausible, weight: 6 }, { arbitrary: anything, weight: 1 });
  const descArb = fc.record({
    addr: mostly<number | bigint>(
      fc.constantFrom(D, D + 0x200, TABLE, TABLE + 16, MEM_END - 16, MEM_END),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    ),
    len: mostly(fc.constantFrom(0, 1, 16, 32, 48, 128), fc.nat({ max: 0xffff_ffff })),
    flags: mostly(fc.nat({ max: 7 }), fc.nat({ max: 0xffff })),
    next: mostly(fc.nat({ max: size }), fc.nat({ max: 0xffff })),
  });
  const head = mostly(fc.nat({ max: size - 1 }), fc.nat({ max: 0xffff }));

  it("pop throws only VirtqueueError, reads at most min(size, capacity) + 2 descriptors, and terminates", () => {
    fc.assert(
      fc.property(
        fc.array(descArb, { minLength: size, maxLength: size }),
        fc.array(descArb, { minLength: 2 * size, maxLength: 2 * size }),
        fc.array(head, { minLength: size, maxLength: size }),
        fc.record({
          start: fc.nat({ max: 0xffff }),
          ahead: mostly(fc.nat({ max: size }), fc.nat({ max: 0xffff })),
          availFlags: fc.nat({ max: 0xffff }),
          usedEvent: fc.nat({ max: 0xffff }),
          indirect: fc.boolean(),
          eventIdx: fc.boolean(),
          capacity: fc.integer({ min: 1, max: 2 * size }),
          pushEvery: fc.integer({ min: 1, max: 3 }),
        }),
        (table, indirectTable, heads, o) => {
          const raw = new RawSplitRing(size);
          for (const [i, d] of table.entries()) raw.writeDesc(i, d);
          raw.writeTable(TABLE, indirectTable);
          for (const [i, h] of heads.entries()) raw.mem.writeU16(raw.layout.driver + 4 + 2 * i, h);
          raw.setAvailFlags(o.availFlags);
          raw.setUsedEvent(o.usedEvent);
          raw.setAvailIdx((o.start + o.ahead) & 0xffff);
          const { mem, counter } = countingMemory(raw.mem, raw.layout);
          const features = ringFeatures(
            (o.indirect ? featureMask(Feature.RING_INDIRECT_DESC) : 0n) |
              (o.eventIdx ? featureMask(Feature.RING_EVENT_IDX) : 0n),
          );
          const q = new SplitDeviceQueue(mem, raw.layout, features);
          q.setState({ availIdx: o.start, usedIdx: o.start, availWrap: true, usedWrap: true });
          const chain = new DescriptorChain(o.capacity);
          const maxWords = 4 * (Math.min(size, o.capacity) + 2);
          let pops = 0;
          for (let i = 0; i < 3 * size; i++) {
            counter.words = 0;
            let more: boolean;
            try {
              more = q.pop(chain);
            } catch (e) {
              expect(e).toBeInstanceOf(VirtqueueError);
              expect(counter.words).toBeLessThanOrEqual(maxWords);
              if (e instanceof RingError) break;
              // A ChainError leaves its head in flight: return it unused and go on.
              q.push((e as ChainError).head, 0);
              pops++;
              continue;
            }
            expect(counter.words).toBeLessThanOrEqual(maxWords);
            if (!more) break;
            pops++;
            // What a successful pop returns obeys every rule.
            expect(chain.count).toBeGreaterThan(0);
            expect(chain.count).toBeLessThanOrEqual(Math.min(size, o.capacity));
            expect(chain.readableBytes + chain.writableBytes).toBeLessThanOrEqual(0xffff_ffff);
            for (let k = 0; k < chain.count; k++) {
              const access = chain.writable(k) ? "write" : "read";
              expect(raw.mem.check(chain.addr(k), chain.len(k), access)).toBe(true);
            }
            if (pops % o.pushEvery === 0) q.push(chain.head, chain.writableBytes);
            q.needsInterrupt();
          }
          expect(pops).toBeLessThanOrEqual(Math.min(o.ahead, size));
        },
      ),
      { numRuns: 1000 },
    );
  });
});
