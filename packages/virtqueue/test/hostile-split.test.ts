// One test per kind of hostile input, each written into guest memory by hand (never through our
// driver). Every case asserts the typed error and its fields, and that the queue is usable again
// after a reset.
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
  ringFeatures,
  SplitDeviceQueue,
  TotalLengthOverflowError,
  VirtqueueError,
} from "@virtio-ts/virtqueue";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";
import { F_INDIRECT, F_NEXT, F_WRITE, RawSplitRing } from "./helpers/raw-split-ring.js";

const INDIRECT = ringFeatures(featureMask(Feature.RING_INDIRECT_DESC));
const D = RawSplitRing.DATA;
const TABLE = 0x5000;

function setup(size = 8, features = INDIRECT) {
  const raw = new RawSplitRing(size);
  const q = new SplitDeviceQueue(raw.mem, raw.layout, features);
  return { raw, q, chain: new DescriptorChain(size) };
}

function popError(q: SplitDeviceQueue, chain: DescriptorChain): VirtqueueError {
  try {
    q.pop(chain);
  } catch (e) {
    expect(e).toBeInstanceOf(VirtqueueError);
    return e as VirtqueueError;
  }
  throw new Error("pop did not throw");
}

/** After the failure: reset the queue, offer a good chain, and see it popped. */
function expectUsableAfterReset(raw: RawSplitRing, q: SplitDeviceQueue, chain: DescriptorChain) {
  q.reset();
  raw.availIdx = 0;
  raw.writeDesc(0, { addr: D, len: 8 });
  raw.offer(0);
  expect(q.pop(chain)).toBe(true);
  expect(chain.head).toBe(0);
  expect(chain.readableBytes).toBe(8);
}

describe("hostile split rings: chain errors", () => {
  it("a descriptor whose next points to itself is a DescriptorLoopError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(2, { addr: D, len: 8, flags: F_NEXT, next: 2 });
    raw.offer(2);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(DescriptorLoopError);
    expect(e).toMatchObject({
      code: "descriptor-loop",
      scope: "chain",
      head: 2,
      index: 2,
      indirect: false,
    });
    expectUsableAfterReset(raw, q, chain);
  });

  it("a two-descriptor cycle is a DescriptorLoopError at the revisited descriptor", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(1, { addr: D, len: 8, flags: F_NEXT, next: 4 });
    raw.writeDesc(4, { addr: D, len: 8, flags: F_NEXT, next: 1 });
    raw.offer(1);
    expect(popError(q, chain)).toMatchObject({ code: "descriptor-loop", head: 1, index: 1 });
  });

  it("a loop through the whole table is caught within queue-size steps", () => {
    const { raw, q, chain } = setup(256);
    for (let i = 0; i < 256; i++)
      raw.writeDesc(i, { addr: D, len: 1, flags: F_NEXT, next: (i + 1) % 256 });
    raw.offer(0);
    expect(popError(q, chain)).toBeInstanceOf(DescriptorLoopError);
  });

  it("§2.7.5.3.1 a chain longer than the cursor's capacity is a ChainTooLongError", () => {
    const { raw, q } = setup(8);
    const small = new DescriptorChain(2);
    for (let i = 0; i < 3; i++)
      raw.writeDesc(i, { addr: D, len: 1, flags: i < 2 ? F_NEXT : 0, next: i + 1 });
    raw.offer(0);
    const e = popError(q, small);
    expect(e).toBeInstanceOf(ChainTooLongError);
    expect(e).toMatchObject({ code: "chain-too-long", head: 0, index: 2, limit: 2 });
  });

  it("a next index outside the descriptor table is a NextOutOfRangeError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 8 });
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(NextOutOfRangeError);
    expect(e).toMatchObject({
      code: "next-out-of-range",
      head: 0,
      index: 0,
      next: 8,
    });
  });

  it("§2.7.4.2 a readable descriptor after a writable one is a ReadableAfterWritableError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT | F_WRITE, next: 1 });
    raw.writeDesc(1, { addr: D, len: 8 });
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(ReadableAfterWritableError);
    expect(e).toMatchObject({ head: 0, index: 1 });
  });

  it("a buffer one byte past the end of guest memory is a BufferOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 0x10000 - 63, len: 64 });
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(BufferOutOfBoundsError);
    expect(e).toMatchObject({ addr: 0x10000 - 63, len: 64 });
  });

  it("a buffer whose addr + len wraps 2^64 is a BufferOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 0xffff_ffff_ffff_ff00n, len: 0x200 });
    raw.offer(0);
    const e = popError(q, chain) as BufferOutOfBoundsError;
    expect(e).toBeInstanceOf(BufferOutOfBoundsError);
    expect(e.addr).toBeGreaterThanOrEqual(2 ** 53);
  });

  it("a buffer at an address above 2^53 is a BufferOutOfBoundsError even with length 0", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 1n << 60n, len: 0 });
    raw.offer(0);
    expect(popError(q, chain)).toBeInstanceOf(BufferOutOfBoundsError);
  });

  it("a device-writable buffer in read-only memory is a BufferOutOfBoundsError", async () => {
    const { GuestMemoryMap } = await import("@virtio-ts/memory");
    const buf = new ArrayBuffer(0x10000);
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x8000, buffer: buf },
      { guestBase: 0x8000, size: 0x8000, buffer: buf, byteOffset: 0x8000, readOnly: true },
    ]);
    const raw = new RawSplitRing(8);
    const q = new SplitDeviceQueue(mem, raw.layout, NO_RING_FEATURES);
    // Write the raw ring through a writable alias of the same bytes.
    const alias = new RawSplitRing(8);
    Object.assign(alias, {
      mem: new GuestMemoryMap([{ guestBase: 0, size: 0x10000, buffer: buf }]),
    });
    alias.writeDesc(0, { addr: 0x9000, len: 16, flags: F_WRITE });
    alias.offer(0);
    expect(popError(q, new DescriptorChain(8))).toMatchObject({
      code: "buffer-out-of-bounds",
      addr: 0x9000,
    });
  });

  it("a chain whose writable part reaches 2^32 bytes is a TotalLengthOverflowError", () => {
    // Buffers of 4 GiB cannot be allocated in a test, so the memory here accepts every range
    // (the bounds check is tested above); only the length arithmetic is under test.
    const raw = new RawSplitRing(8);
    const m = raw.mem;
    const permissive = new Proxy(m, {
      get: (target, key) => (key === "check" ? () => true : Reflect.get(target, key, target)),
    });
    for (const k of ["u16View", "u32View", "readU32"] as const) {
      Object.defineProperty(permissive, k, { value: m[k].bind(m) });
    }
    const q = new SplitDeviceQueue(permissive, raw.layout, NO_RING_FEATURES);
    raw.writeDesc(0, { addr: D, len: 0xffff_ffff, flags: F_NEXT | F_WRITE, next: 1 });
    raw.writeDesc(1, { addr: D, len: 1, flags: F_WRITE });
    raw.offer(0);
    const e = popError(q, new DescriptorChain(8));
    expect(e).toBeInstanceOf(TotalLengthOverflowError);
    expect(e).toMatchObject({ head: 0, index: 1 });
  });

  it("§2.7.5.3.1 INDIRECT without VIRTIO_F_INDIRECT_DESC is an IndirectNotNegotiatedError", () => {
    const { raw, q, chain } = setup(8, NO_RING_FEATURES);
    raw.writeDesc(0, { addr: TABLE, len: 16, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, chain)).toBeInstanceOf(IndirectNotNegotiatedError);
  });

  it("§2.7.5.3.1 INDIRECT together with NEXT is an IndirectWithNextError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 16, flags: F_INDIRECT | F_NEXT, next: 1 });
    raw.offer(0);
    expect(popError(q, chain)).toBeInstanceOf(IndirectWithNextError);
  });

  it("an indirect table of length 0 is an IndirectTableLengthError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 0, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "indirect-table-length", len: 0 });
  });

  it("an indirect table whose length is not a multiple of 16 is an IndirectTableLengthError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 24, flags: F_INDIRECT });
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(IndirectTableLengthError);
    expect(e).toMatchObject({ len: 24 });
  });

  it("§2.7.5.3.1 an indirect table longer than the queue size is a ChainTooLongError before it is read", () => {
    const { raw, q, chain } = setup(8);
    raw.writeDesc(0, { addr: 1n << 62n, len: 0xffff_fff0, flags: F_INDIRECT });
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "chain-too-long", limit: 8 });
  });

  it("an indirect table outside guest memory is an IndirectTableOutOfBoundsError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: 0x10000 - 16, len: 32, flags: F_INDIRECT });
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(IndirectTableOutOfBoundsError);
    expect(e).toMatchObject({ addr: 0x10000 - 16, len: 32 });
  });

  it("§2.7.5.3.1 INDIRECT inside an indirect table is a NestedIndirectError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    raw.writeDesc(1, { addr: TABLE, len: 16, flags: F_INDIRECT }, TABLE);
    raw.offer(0);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(NestedIndirectError);
    expect(e).toMatchObject({ index: 1, indirect: true });
  });

  it("a loop inside an indirect table is a DescriptorLoopError flagged indirect", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    raw.writeDesc(1, { addr: D, len: 8, flags: F_NEXT, next: 0 }, TABLE);
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({ code: "descriptor-loop", indirect: true, index: 0 });
  });

  it("an indirect next outside the table is a NextOutOfRangeError flagged indirect", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(0, { addr: TABLE, len: 32, flags: F_INDIRECT });
    raw.writeDesc(0, { addr: D, len: 8, flags: F_NEXT, next: 2 }, TABLE);
    raw.offer(0);
    expect(popError(q, chain)).toMatchObject({
      code: "next-out-of-range",
      indirect: true,
      next: 2,
    });
  });

  it("a chain error leaves the head in flight, so the device can return it used with length 0", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(5, { addr: D, len: 8, flags: F_NEXT, next: 5 });
    raw.offer(5);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(ChainError);
    q.push((e as ChainError).head, 0);
    expect(raw.usedElem(0)).toEqual({ id: 5, len: 0 });
  });
});

describe("hostile split rings: ring errors", () => {
  it("§2.7.6 avail.idx jumping more than queue size ahead is an AvailIndexJumpError", () => {
    const { raw, q, chain } = setup();
    raw.setAvailIdx(9);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(AvailIndexJumpError);
    expect(e).toMatchObject({ scope: "ring", availIdx: 9, lastAvailIdx: 0, queueSize: 8 });
    expectUsableAfterReset(raw, q, chain);
  });

  it("avail.idx moving backwards (a 16-bit jump of 65535) is an AvailIndexJumpError", () => {
    const { raw, q, chain } = setup();
    raw.setAvailIdx(0xffff);
    expect(popError(q, chain)).toBeInstanceOf(AvailIndexJumpError);
  });

  it("an available head outside the descriptor table is a HeadOutOfRangeError", () => {
    const { raw, q, chain } = setup();
    raw.offer(8);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(HeadOutOfRangeError);
    expect(e).toMatchObject({ head: 8, queueSize: 8 });
    expect(e).toBeInstanceOf(RingError);
  });

  it("the same head made available twice while in flight is a HeadInFlightError", () => {
    const { raw, q, chain } = setup();
    raw.writeDesc(3, { addr: D, len: 8 });
    raw.offer(3);
    raw.offer(3);
    expect(q.pop(chain)).toBe(true);
    const e = popError(q, chain);
    expect(e).toBeInstanceOf(HeadInFlightError);
    expect(e).toMatchObject({ code: "head-in-flight", head: 3 });
  });
});

describe("hostile split rings: random garbage", () => {
  it("pop on random descriptor tables and avail rings throws only VirtqueueError and terminates", () => {
    const size = 16;
    const ringBytes = 16 * size + 6 + 2 * size;
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: ringBytes, maxLength: ringBytes }),
        fc.uint8Array({ minLength: 256, maxLength: 256 }),
        fc.boolean(),
        (ringGarbage, tableGarbage, indirect) => {
          const raw = new RawSplitRing(size);
          raw.mem.write(raw.layout.desc, ringGarbage);
          raw.mem.write(TABLE, tableGarbage);
          // Point some descriptors at the garbage table so indirect paths are exercised.
          raw.mem.writeU32(raw.layout.desc, TABLE);
          raw.mem.writeU32(raw.layout.desc + 4, 0);
          const q = new SplitDeviceQueue(
            raw.mem,
            raw.layout,
            indirect ? INDIRECT : NO_RING_FEATURES,
          );
          const chain = new DescriptorChain(size);
          let pops = 0;
          for (let i = 0; i < 2 * size; i++) {
            try {
              if (!q.pop(chain)) break;
              pops++;
              expect(chain.count).toBeLessThanOrEqual(size);
              expect(chain.count).toBeGreaterThan(0);
            } catch (e) {
              expect(e).toBeInstanceOf(VirtqueueError);
              if (e instanceof RingError) break;
            }
          }
          expect(pops).toBeLessThanOrEqual(size);
        },
      ),
      { numRuns: 500 },
    );
  });
});
