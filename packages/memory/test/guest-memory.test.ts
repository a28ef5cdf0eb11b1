import {
  ADDRESS_LIMIT,
  createGuestMemory,
  type GuestMemory,
  GuestMemoryError,
  type GuestMemoryErrorCode,
  GuestMemoryMap,
  type GuestRegionOptions,
  guestAddress,
  MAX_ACCESS_LENGTH,
  u64ToAddress,
} from "@virtio-ts/memory";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";

/** The GuestMemoryError `f` throws, checked for code, addr and len. */
function expectFault(f: () => unknown, code: GuestMemoryErrorCode, addr: number, len: number) {
  let thrown: unknown;
  try {
    f();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(GuestMemoryError);
  expect(thrown).toMatchObject({ code, addr, len, name: "GuestMemoryError" });
}

/** The error code `f` throws (a GuestMemoryError), or undefined when it succeeds. */
function codeOf(f: () => unknown): GuestMemoryErrorCode | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(GuestMemoryError);
    return (e as GuestMemoryError).code;
  }
  return undefined;
}

/**
 * [0x1000, 0x2000) in a SharedArrayBuffer at byteOffset 0x1000, a hole, then two adjacent
 * regions [0x3000, 0x4000) and [0x4000, 0x5000) in separate ArrayBuffers. Given out of order.
 */
function holey() {
  const a = new SharedArrayBuffer(0x2000);
  const b = new ArrayBuffer(0x1000);
  const c = new ArrayBuffer(0x1000);
  const mem = new GuestMemoryMap([
    { guestBase: 0x3000, size: 0x1000, buffer: b },
    { guestBase: 0x1000, size: 0x1000, buffer: a, byteOffset: 0x1000 },
    { guestBase: 0x4000, size: 0x1000, buffer: c },
  ]);
  return { mem, a, b, c };
}

/** Every byte of every region, to prove a failed access touched nothing. */
function snapshot(mem: GuestMemoryMap): number[] {
  return mem.regions.flatMap((r) => [...r.bytes]);
}

describe("GuestMemoryMap little-endian accessors", () => {
  it("round-trips u8, u16, u32 and u64 values and stores them least significant byte first", () => {
    const mem = createGuestMemory({ size: 64, shared: false });
    mem.writeU8(1, 0xa5);
    mem.writeU16(2, 0x1234);
    mem.writeU32(4, 0xdeadbeef);
    mem.writeU64(8, 0x0102030405060708n);
    expect(mem.readU8(1)).toBe(0xa5);
    expect(mem.readU16(2)).toBe(0x1234);
    expect(mem.readU32(4)).toBe(0xdeadbeef);
    expect(mem.readU64(8)).toBe(0x0102030405060708n);
    expect([...mem.slice(0, 16)]).toEqual([
      0, 0xa5, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 8, 7, 6, 5, 4, 3, 2, 1,
    ]);
  });

  it("reads multi-byte values at unaligned addresses", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.write(1, Uint8Array.of(0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88));
    expect(mem.readU16(1)).toBe(0x2211);
    expect(mem.readU32(3)).toBe(0x66554433);
    expect(mem.readU64(1)).toBe(0x8877665544332211n);
    mem.writeU32(9, 0xcafebabe);
    expect(mem.readU32(9)).toBe(0xcafebabe);
  });

  it("reduces written values modulo their width", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.writeU8(0, 0x1ff);
    mem.writeU16(2, 0x1_2345);
    mem.writeU32(4, 2 ** 32 + 7);
    mem.writeU64(8, 2n ** 64n + 9n);
    mem.writeU64(16, -1n);
    expect([mem.readU8(0), mem.readU16(2), mem.readU32(4)]).toEqual([0xff, 0x2345, 7]);
    expect(mem.readU64(8)).toBe(9n);
    expect(mem.readU64(16)).toBe(2n ** 64n - 1n);
  });

  it("reads values with their top bit set as unsigned", () => {
    const mem = createGuestMemory({ size: 16 });
    mem.fill(0, 16, 0xff);
    expect([mem.readU8(0), mem.readU16(0), mem.readU32(0)]).toEqual([0xff, 0xffff, 0xffffffff]);
    expect(mem.readU64(0)).toBe(0xffffffffffffffffn);
  });

  it("copies bytes in and out with read, write and fill", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.write(10, Uint8Array.of(1, 2, 3, 4, 5));
    mem.fill(12, 2, 0x1ab);
    const out = new Uint8Array(6);
    mem.read(9, out);
    expect([...out]).toEqual([0, 1, 2, 0xab, 0xab, 5]);
  });

  it("gives a DataView whose little-endian reads match the scalar accessors", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.writeU32(20, 0x11223344);
    const dv = mem.dataView(16, 8);
    expect(dv.getUint32(4, true)).toBe(0x11223344);
    dv.setUint16(0, 0xbeef, true);
    expect(mem.readU16(16)).toBe(0xbeef);
  });
});

describe("GuestMemoryMap bounds", () => {
  const base = 0x1000;
  const size = 64;
  const end = base + size;
  const widths = [
    ["readU8", 1, (m: GuestMemory, a: number) => m.readU8(a)],
    ["readU16", 2, (m: GuestMemory, a: number) => m.readU16(a)],
    ["readU32", 4, (m: GuestMemory, a: number) => m.readU32(a)],
    ["readU64", 8, (m: GuestMemory, a: number) => m.readU64(a)],
    ["writeU8", 1, (m: GuestMemory, a: number) => m.writeU8(a, 1)],
    ["writeU16", 2, (m: GuestMemory, a: number) => m.writeU16(a, 1)],
    ["writeU32", 4, (m: GuestMemory, a: number) => m.writeU32(a, 1)],
    ["writeU64", 8, (m: GuestMemory, a: number) => m.writeU64(a, 1n)],
    ["read", 5, (m: GuestMemory, a: number) => m.read(a, new Uint8Array(5))],
    ["write", 5, (m: GuestMemory, a: number) => m.write(a, new Uint8Array(5))],
    ["fill", 5, (m: GuestMemory, a: number) => m.fill(a, 5, 1)],
    ["slice", 5, (m: GuestMemory, a: number) => m.slice(a, 5)],
    ["dataView", 5, (m: GuestMemory, a: number) => m.dataView(a, 5)],
    ["sg", 5, (m: GuestMemory, a: number) => m.sg(a, 5)],
  ] as const;

  for (const [name, len, op] of widths) {
    it(`${name} succeeds when it ends exactly at the end of memory and fails one byte past`, () => {
      const mem = createGuestMemory({ size, guestBase: base });
      op(mem, end - len);
      op(mem, base);
      expectFault(() => op(mem, end - len + 1), "out-of-bounds", end - len + 1, len);
      expectFault(() => op(mem, base - 1), "out-of-bounds", base - 1, len);
      expect(mem.check(end - len, len)).toBe(true);
      expect(mem.check(end - len + 1, len)).toBe(false);
    });
  }

  it("typed views end exactly at the end of memory and fail one element past", () => {
    const mem = createGuestMemory({ size, guestBase: base });
    expect(mem.u16View(end - 4, 2).length).toBe(2);
    expect(mem.u32View(end - 8, 2).length).toBe(2);
    expectFault(() => mem.u16View(end - 2, 2), "out-of-bounds", end - 2, 4);
    expectFault(() => mem.u32View(end - 4, 2), "out-of-bounds", end - 4, 8);
  });

  it("accepts a zero-length range inside a region or exactly at its end, and nowhere else", () => {
    const { mem } = holey();
    for (const addr of [0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x5000]) {
      expect(mem.check(addr, 0)).toBe(true);
      expect(mem.slice(addr, 0).length).toBe(0);
      mem.read(addr, new Uint8Array(0));
    }
    for (const addr of [0, 0xfff, 0x2001, 0x2fff, 0x5001, 2 ** 53]) {
      expect(mem.check(addr, 0)).toBe(false);
      expectFault(() => mem.read(addr, new Uint8Array(0)), "out-of-bounds", addr, 0);
      expectFault(() => mem.slice(addr, 0), "out-of-bounds", addr, 0);
    }
  });

  it("reports code, address and length of a failed access, and names them in the message", () => {
    const mem = createGuestMemory({ size: 64 });
    let error: unknown;
    try {
      mem.readU64(0x100);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(GuestMemoryError);
    expect(error).toMatchObject({ code: "out-of-bounds", addr: 0x100, len: 8 });
    expect((error as Error).message).toBe("guest memory out-of-bounds at 0x100 (+8 bytes)");
    expect((error as Error).name).toBe("GuestMemoryError");
  });
});

describe("GuestMemoryMap 64-bit guest addresses", () => {
  it("converts two 32-bit halves with hi * 2^32 + lo, exactly below 2^53", () => {
    expect(u64ToAddress(5, 0)).toBe(5);
    expect(u64ToAddress(0, 1)).toBe(2 ** 32);
    expect(u64ToAddress(0xffffffff, 0)).toBe(2 ** 32 - 1);
    expect(u64ToAddress(0xffffffff, 0x1fffff)).toBe(2 ** 53 - 1);
    expect(u64ToAddress(0, 0x200000)).toBe(2 ** 53);
    expect(u64ToAddress(-1, -1)).toBe(u64ToAddress(0xffffffff, 0xffffffff));
  });

  it("keeps every value at or above 2^53 at or above 2^53, up to 2^64", () => {
    fc.assert(
      fc.property(fc.nat(0xffffffff), fc.integer({ min: 0x200000, max: 0xffffffff }), (lo, hi) => {
        const a = u64ToAddress(lo, hi);
        expect(a).toBeGreaterThanOrEqual(2 ** 53);
        expect(a).toBeLessThanOrEqual(2 ** 64);
      }),
    );
  });

  it("rejects 2^53 - 1, 2^53, addresses near 2^64 and ranges wrapping 2^64 without touching memory", () => {
    const mem = createGuestMemory({ size: 0x1000, shared: false });
    mem.fill(0, 0x1000, 0x5a);
    const before = snapshot(mem);
    const nearTop = u64ToAddress(0xffffff00, 0xffffffff); // 2^64 - 256: + 0x200 wraps to 0x100
    const top = u64ToAddress(0xffffffff, 0xffffffff);
    for (const [addr, len] of [
      [2 ** 53 - 1, 1],
      [2 ** 53, 0],
      [2 ** 53, 8],
      [nearTop, 0x200],
      [top, 1],
      [top, 0],
      [Number.MAX_VALUE, 1],
    ] as const) {
      expect(mem.check(addr, len)).toBe(false);
      expect(mem.check(addr, len, "write")).toBe(false);
      expectFault(() => mem.write(addr, new Uint8Array(len)), "out-of-bounds", addr, len);
      expectFault(() => mem.fill(addr, len, 0), "out-of-bounds", addr, len);
      expectFault(() => mem.read(addr, new Uint8Array(len)), "out-of-bounds", addr, len);
      expectFault(() => mem.sg(addr, len), "out-of-bounds", addr, len);
      expectFault(() => mem.slice(addr, len), "out-of-bounds", addr, len);
    }
    expectFault(() => mem.readU32(nearTop), "out-of-bounds", nearTop, 4);
    expectFault(() => mem.writeU64(top, 1n), "out-of-bounds", top, 8);
    expectFault(() => mem.u32View(nearTop, 0x80), "out-of-bounds", nearTop, 0x200);
    expect(snapshot(mem)).toEqual(before);
  });

  it("maps a region ending exactly at 2^53 and refuses a range that would end past it", () => {
    const base = ADDRESS_LIMIT - 0x1000;
    const mem = new GuestMemoryMap([
      { guestBase: base, size: 0x1000, buffer: new ArrayBuffer(0x1000) },
    ]);
    mem.writeU8(2 ** 53 - 1, 0x77);
    expect(mem.readU8(2 ** 53 - 1)).toBe(0x77);
    expect(mem.check(2 ** 53, 0)).toBe(true);
    // 2^53 - 1 + 2 is not a double: a naive `addr + len <= end` would round it to 2^53.
    expect(mem.check(2 ** 53 - 1, 2)).toBe(false);
    expectFault(() => mem.readU16(2 ** 53 - 1), "out-of-bounds", 2 ** 53 - 1, 2);
    const out = Uint8Array.of(1, 2);
    expectFault(() => mem.read(2 ** 53 - 1, out), "out-of-bounds", 2 ** 53 - 1, 2);
    expect([...out]).toEqual([1, 2]);
  });
});

describe("GuestMemoryMap host argument checks", () => {
  const mem = createGuestMemory({ size: 0x1000 });

  it("raises a RangeError naming addr for negative, fractional or non-finite addresses", () => {
    for (const addr of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -0.5]) {
      expect(() => mem.readU8(addr)).toThrow(/^addr must be an integer ≥ 0/);
      expect(() => mem.writeU32(addr, 0)).toThrow(RangeError);
      expect(() => mem.read(addr, new Uint8Array(1))).toThrow(/^addr must/);
      expect(() => mem.fill(addr, 1, 0)).toThrow(/^addr must/);
      expect(() => mem.slice(addr, 1)).toThrow(/^addr must/);
      expect(() => mem.u32View(addr, 1)).toThrow(/^addr must/);
      expect(() => mem.sg(addr, 1)).toThrow(/^addr must/);
      expect(mem.check(addr, 1)).toBe(false);
    }
  });

  it("raises a RangeError naming len or count for lengths outside [0, 2^32]", () => {
    for (const len of [-1, 0.5, Number.NaN, MAX_ACCESS_LENGTH + 1]) {
      expect(() => mem.fill(0, len, 0)).toThrow(/^len must be an integer in \[0, 2\^32\]/);
      expect(() => mem.slice(0, len)).toThrow(/^len must/);
      expect(() => mem.dataView(0, len)).toThrow(/^len must/);
      expect(() => mem.sg(0, len)).toThrow(/^len must/);
      expect(() => mem.u16View(0, len)).toThrow(/^count must/);
      expect(mem.check(0, len)).toBe(false);
    }
    expect(() => mem.u32View(0, 2 ** 30 + 1)).toThrow(
      /^count must be an integer in \[0, 2\^32 \/ 4\]/,
    );
  });

  it("brands only safe integers ≥ 0 as guest addresses", () => {
    expect(guestAddress(0x1000)).toBe(0x1000);
    expect(guestAddress(2 ** 53 - 1)).toBe(2 ** 53 - 1);
    expect(() => guestAddress(-1)).toThrow(/^addr must be a non-negative safe integer/);
    expect(() => guestAddress(2 ** 53)).toThrow(RangeError);
    expect(() => guestAddress(0.5)).toThrow(RangeError);
  });
});

describe("GuestMemoryMap regions", () => {
  it("sorts and freezes its regions and records backing buffers and offsets", () => {
    const { mem, a, b } = holey();
    expect(mem.regions.map((r) => [r.guestBase, r.guestEnd])).toEqual([
      [0x1000, 0x2000],
      [0x3000, 0x4000],
      [0x4000, 0x5000],
    ]);
    expect(mem.regions[0]).toMatchObject({ buffer: a, byteOffset: 0x1000, readOnly: false });
    expect(mem.regions[1]!.buffer).toBe(b);
    expect(Object.isFrozen(mem.regions)).toBe(true);
    expect(Object.isFrozen(mem.regions[0])).toBe(true);
    expect(mem.shared).toBe(false);
    expect(mem.regionOf(0x3ffc, 4)).toBe(mem.regions[1]);
    expect(mem.regionOf(0x3ffc, 8)).toBeUndefined();
  });

  it("addressOf maps a view back to its guest address only when all of it lies in one region", () => {
    const { mem, a, b } = holey();
    expect(mem.addressOf(mem.slice(0x1800, 16))).toBe(0x1800);
    expect(mem.addressOf(mem.slice(0x3000, 0x1000))).toBe(0x3000);
    // Any view of the backing buffer inside the region: region a starts 0x1000 into its buffer.
    expect(mem.addressOf(new Uint8Array(a, 0x1004, 8))).toBe(0x1004);
    expect(mem.addressOf(new Uint32Array(b, 0x10, 2))).toBe(0x3010);
    // Outside the region's part of the buffer, spilling past its end, or another buffer.
    expect(mem.addressOf(new Uint8Array(a, 0, 16))).toBeUndefined();
    expect(mem.addressOf(new Uint8Array(b, 0xff8, 8))).toBe(0x3ff8);
    expect(mem.addressOf(new Uint8Array(a, 0x1ff8, 8))).toBe(0x1ff8);
    // Straddling the region's start inside its buffer.
    expect(mem.addressOf(new Uint8Array(a, 0xff8, 16))).toBeUndefined();
    expect(mem.addressOf(new Uint8Array(new ArrayBuffer(16)))).toBeUndefined();
    expect(mem.addressOf(new Uint8Array(b, 0xffc, 4))).toBe(0x3ffc);
    // A region over part of a larger buffer: a view spilling past the region's end is outside,
    // whether its length is counted in bytes (Uint8Array) or in elements (Uint16Array).
    const big = new ArrayBuffer(0x2000);
    const part = new GuestMemoryMap([{ guestBase: 0x8000, size: 0x1000, buffer: big }]);
    expect(part.addressOf(new Uint8Array(big, 0xff8, 8))).toBe(0x8ff8);
    expect(part.addressOf(new Uint8Array(big, 0xff8, 9))).toBeUndefined();
    expect(part.addressOf(new Uint16Array(big, 0xff8, 4))).toBe(0x8ff8);
    expect(part.addressOf(new Uint16Array(big, 0xff8, 5))).toBeUndefined();
  });

  it("is shared only when every region is a SharedArrayBuffer", () => {
    expect(createGuestMemory({ size: 8 }).shared).toBe(true);
    expect(createGuestMemory({ size: 8, shared: false }).shared).toBe(false);
    const s = new SharedArrayBuffer(16);
    expect(
      new GuestMemoryMap([
        { guestBase: 0, size: 8, buffer: s },
        { guestBase: 8, size: 8, buffer: s, byteOffset: 8 },
      ]).shared,
    ).toBe(true);
  });

  it("reads, writes and fills across adjacent regions into the right backing buffers", () => {
    const { mem, b, c } = holey();
    mem.write(0x3ffe, Uint8Array.of(1, 2, 3, 4));
    expect([...new Uint8Array(b, 0xffe, 2)]).toEqual([1, 2]);
    expect([...new Uint8Array(c, 0, 2)]).toEqual([3, 4]);
    const out = new Uint8Array(4);
    mem.read(0x3ffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
    mem.fill(0x3fff, 2, 9);
    expect([...new Uint8Array(b, 0xffe, 2)]).toEqual([1, 9]);
    expect([...new Uint8Array(c, 0, 2)]).toEqual([9, 4]);
    expect(mem.check(0x3000, 0x2000)).toBe(true);
  });

  it("alternates between regions without the lookup cache returning a stale region", () => {
    const { mem } = holey();
    for (let i = 0; i < 8; i++) {
      mem.writeU32(0x1000 + i * 4, i);
      mem.writeU32(0x4000 + i * 4, 100 + i);
      mem.writeU32(0x3000 + i * 4, 200 + i);
    }
    for (let i = 0; i < 8; i++) {
      expect([mem.readU32(0x4000 + i * 4), mem.readU32(0x1000 + i * 4)]).toEqual([100 + i, i]);
      expect(mem.readU32(0x3000 + i * 4)).toBe(200 + i);
    }
  });

  it("refuses a copy, fill or sg over a hole and touches nothing", () => {
    const { mem } = holey();
    mem.fill(0x1ff0, 0x10, 0x33);
    const before = snapshot(mem);
    expectFault(() => mem.write(0x1ffe, Uint8Array.of(9, 9, 9, 9)), "out-of-bounds", 0x1ffe, 4);
    expectFault(() => mem.fill(0x1ff0, 0x20, 0), "out-of-bounds", 0x1ff0, 0x20);
    const out = new Uint8Array(4).fill(7);
    expectFault(() => mem.read(0x1ffe, out), "out-of-bounds", 0x1ffe, 4);
    expect([...out]).toEqual([7, 7, 7, 7]);
    const reuse = [new Uint8Array(1)];
    expectFault(() => mem.sg(0x1ffe, 4, reuse), "out-of-bounds", 0x1ffe, 4);
    expect(reuse).toEqual([]);
    expect(mem.check(0x1ffe, 4)).toBe(false);
    expect(mem.check(0x4ff0, 0x20)).toBe(false);
    expect(snapshot(mem)).toEqual(before);
  });

  it("refuses a scalar or a view that would cross two adjacent regions", () => {
    const { mem } = holey();
    expectFault(() => mem.readU16(0x3fff), "cross-region", 0x3fff, 2);
    expectFault(() => mem.readU32(0x3ffe), "cross-region", 0x3ffe, 4);
    expectFault(() => mem.readU64(0x3ffc), "cross-region", 0x3ffc, 8);
    expectFault(() => mem.writeU32(0x3ffe, 0), "cross-region", 0x3ffe, 4);
    expectFault(() => mem.slice(0x3ff0, 0x20), "cross-region", 0x3ff0, 0x20);
    expectFault(() => mem.dataView(0x3ff0, 0x20), "cross-region", 0x3ff0, 0x20);
    expectFault(() => mem.u16View(0x3ffe, 2), "cross-region", 0x3ffe, 4);
    expectFault(() => mem.u32View(0x3ffc, 2), "cross-region", 0x3ffc, 8);
    expectFault(() => mem.readU32(0x1ffe), "out-of-bounds", 0x1ffe, 4);
  });

  it("gives scatter-gather views, one per region crossed, that alias guest memory", () => {
    const { mem, b, c } = holey();
    const views = mem.sg(0x3ff0, 0x20);
    expect(views.map((v) => [v.buffer, v.byteOffset, v.length])).toEqual([
      [b, 0xff0, 0x10],
      [c, 0, 0x10],
    ]);
    views[1]![0] = 0xaa;
    expect(mem.readU8(0x4000)).toBe(0xaa);
    const reuse: Uint8Array[] = [new Uint8Array(1), new Uint8Array(2)];
    expect(mem.sg(0x1000, 8, reuse)).toBe(reuse);
    expect(reuse.map((v) => [v.byteOffset, v.length])).toEqual([[0x1000, 8]]);
    expect(mem.sg(0x2000, 0).map((v) => v.length)).toEqual([0]);
  });

  it("makes zero-copy views that alias the backing buffer at the region's byte offset", () => {
    const { mem, a } = holey();
    const s = mem.slice(0x1010, 16);
    expect([s.buffer, s.byteOffset]).toEqual([a, 0x1010]);
    s[0] = 0x42;
    expect(mem.readU8(0x1010)).toBe(0x42);
    mem.writeU16(0x1012, 0x1234);
    expect(mem.u16View(0x1010, 4)[1]).toBe(0x1234);
    const w = mem.u32View(0x1010, 4);
    expect([w.buffer, w.byteOffset, w.length]).toEqual([a, 0x1010, 4]);
    w[3] = 0xfeedface;
    expect(mem.readU32(0x101c)).toBe(0xfeedface);
    expect(mem.dataView(0x1010, 16).buffer).toBe(a);
  });

  it("makes typed views usable with Atomics on a SharedArrayBuffer", () => {
    const { mem } = holey();
    const words = mem.u32View(0x1000, 4);
    expect(words.buffer).toBeInstanceOf(SharedArrayBuffer);
    Atomics.store(words, 1, 0x12345678);
    expect(mem.readU32(0x1004)).toBe(0x12345678);
    const halves = mem.u16View(0x1004, 2);
    expect(Atomics.load(halves, 1)).toBe(0x1234);
    expect(Atomics.add(halves, 0, 1)).toBe(0x5678);
    expect(mem.readU16(0x1004)).toBe(0x5679);
    expect(Atomics.compareExchange(words, 1, 0x12345679, 7)).toBe(0x12345679);
    expect(mem.readU32(0x1004)).toBe(7);
  });

  it("rejects typed views at addresses that are not a multiple of the element size", () => {
    const mem = createGuestMemory({ size: 64 });
    expectFault(() => mem.u16View(1, 2), "misaligned", 1, 4);
    expectFault(() => mem.u32View(2, 2), "misaligned", 2, 8);
    expectFault(() => mem.u32View(7, 1), "misaligned", 7, 4);
    expect(mem.u32View(4, 1).byteOffset).toBe(4);
  });

  it("keeps guest alignment when a region starts at an offset inside its buffer", () => {
    const buf = new SharedArrayBuffer(0x100);
    const mem = new GuestMemoryMap([
      { guestBase: 0x2008, size: 0x80, buffer: buf, byteOffset: 0x10 },
    ]);
    const v = mem.u32View(0x200c, 2);
    expect(v.byteOffset).toBe(0x14);
    Atomics.store(v, 0, 5);
    expect(new DataView(buf).getUint32(0x14, true)).toBe(5);
    expect(createGuestMemory({ size: 16, guestBase: 0x1003 }).u32View(0x1004, 1).length).toBe(1);
  });
});

describe("GuestMemoryMap copies to and from shared memory at any alignment", () => {
  it("reads and writes correctly when guest address and buffer differ in alignment, across the 64 KiB bounce size", () => {
    const mem = createGuestMemory({ size: 0x40000 });
    for (const len of [1, 127, 128, 1500, 4096, 65536 + 300]) {
      for (const [guestShift, bufShift] of [
        [12, 0],
        [0, 4],
        [3, 5],
        [8, 0],
      ] as const) {
        const addr = 0x1000 + guestShift;
        const backing = new Uint8Array(len + 16);
        const src = backing.subarray(bufShift, bufShift + len);
        for (let i = 0; i < len; i++) src[i] = (i * 31 + len) & 0xff;
        mem.fill(addr - 8, len + 16, 0xee);
        mem.write(addr, src);
        expect(mem.readU8(addr - 1)).toBe(0xee);
        expect(mem.readU8(addr + len)).toBe(0xee);
        const out = new Uint8Array(len + 16).subarray(bufShift ^ 1, (bufShift ^ 1) + len);
        mem.read(addr, out);
        expect(out).toEqual(src);
      }
    }
  });
});

describe("GuestMemoryMap zero-length ranges at a boundary", () => {
  it("belong to the region that starts there, whichever region was used last", () => {
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 8, buffer: new ArrayBuffer(8) },
      { guestBase: 8, size: 8, buffer: new ArrayBuffer(8), readOnly: true },
    ]);
    mem.readU8(0); // the writable region is the cached one
    expect(codeOf(() => mem.write(8, new Uint8Array(0)))).toBe("read-only");
    expect(mem.check(8, 0, "write")).toBe(false);
    expect(mem.check(8, 0, "read")).toBe(true);
  });
});

describe("GuestMemoryMap stableRange", () => {
  it("is the largest writable region, and every range inside it passes check for writing", () => {
    const rom = new ArrayBuffer(0x4000);
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x1000, buffer: new ArrayBuffer(0x1000) },
      { guestBase: 0x10000, size: 0x2000, buffer: new SharedArrayBuffer(0x2000) },
      { guestBase: 0x20000, size: 0x4000, buffer: rom, readOnly: true },
    ]);
    expect(mem.stableRange).toEqual({ start: 0x10000, end: 0x12000 });
    expect(Object.isFrozen(mem.stableRange)).toBe(true);
    fc.assert(
      fc.property(fc.nat(0x2000), fc.nat(0x2000), (off, n) => {
        const len = Math.min(n, 0x2000 - off);
        return mem.check(0x10000 + off, len, "write");
      }),
    );
  });

  it("is undefined when every region is read-only", () => {
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x1000, buffer: new ArrayBuffer(0x1000), readOnly: true },
    ]);
    expect(mem.stableRange).toBeUndefined();
  });
});

describe("GuestMemoryMap read-only regions", () => {
  function romAndRam() {
    const rom = new ArrayBuffer(0x100);
    new Uint8Array(rom).set([42, 43, 44, 45]);
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x100, buffer: rom, readOnly: true },
      { guestBase: 0x100, size: 0x100, buffer: new ArrayBuffer(0x100) },
    ]);
    return { mem, rom };
  }

  it("serves reads and read views from a read-only region", () => {
    const { mem } = romAndRam();
    expect(mem.regions[0]!.readOnly).toBe(true);
    expect(mem.readU32(0)).toBe(0x2d2c2b2a);
    expect([...mem.slice(0, 2)]).toEqual([42, 43]);
    expect(mem.u16View(0, 2)[0]).toBe(0x2b2a);
    expect(mem.check(0, 4, "read")).toBe(true);
  });

  it("refuses every write and write view to a read-only region with code read-only", () => {
    const { mem, rom } = romAndRam();
    const before = [...new Uint8Array(rom)];
    expectFault(() => mem.writeU8(0, 1), "read-only", 0, 1);
    expectFault(() => mem.writeU16(2, 1), "read-only", 2, 2);
    expectFault(() => mem.writeU32(4, 1), "read-only", 4, 4);
    expectFault(() => mem.writeU64(8, 1n), "read-only", 8, 8);
    expectFault(() => mem.write(0, Uint8Array.of(1)), "read-only", 0, 1);
    expectFault(() => mem.fill(0, 4, 0), "read-only", 0, 4);
    expectFault(() => mem.slice(0, 4, "write"), "read-only", 0, 4);
    expectFault(() => mem.dataView(0, 4, "write"), "read-only", 0, 4);
    expectFault(() => mem.u32View(0, 1, "write"), "read-only", 0, 4);
    expectFault(() => mem.sg(0, 4, [], "write"), "read-only", 0, 4);
    expectFault(() => mem.write(0x10, new Uint8Array(0)), "read-only", 0x10, 0);
    expect(mem.check(0, 4, "write")).toBe(false);
    expect(mem.check(0x10, 0, "write")).toBe(false);
    expect([...new Uint8Array(rom)]).toEqual(before);
  });

  it("refuses a write spanning from RAM into ROM and writes none of it", () => {
    const { mem, rom } = romAndRam();
    expectFault(() => mem.write(0xfe, Uint8Array.of(1, 2, 3, 4)), "read-only", 0xfe, 4);
    expect(mem.readU16(0x100)).toBe(0);
    expect(new Uint8Array(rom)[0xfe]).toBe(0);
    const out = new Uint8Array(4);
    mem.read(0xfe, out);
    expect([...out]).toEqual([0, 0, 0, 0]);
    expect(mem.check(0x100, 0, "write")).toBe(true); // the RAM region starts there
  });
});

describe("GuestMemoryMap constructor and createGuestMemory", () => {
  const b = new ArrayBuffer(0x1000);
  const cases: [string, unknown, RegExp][] = [
    ["an empty array", [], /^regions must be a non-empty array/],
    ["a negative guestBase", [{ guestBase: -1, size: 16, buffer: b }], /^regions\[0\]\.guestBase/],
    [
      "a fractional guestBase",
      [{ guestBase: 0.5, size: 16, buffer: b }],
      /^regions\[0\]\.guestBase/,
    ],
    [
      "a zero size",
      [{ guestBase: 0, size: 0, buffer: b }],
      /^regions\[0\]\.size must be an integer > 0/,
    ],
    ["a NaN size", [{ guestBase: 0, size: Number.NaN, buffer: b }], /^regions\[0\]\.size/],
    [
      "a size past the buffer",
      [{ guestBase: 0, size: 0x1001, buffer: b }],
      /^regions\[0\]\.byteOffset \+ size must lie inside the buffer/,
    ],
    [
      "an offset past the buffer",
      [{ guestBase: 8, size: 0x1000, buffer: b, byteOffset: 8 }],
      /^regions\[0\]\.byteOffset \+ size/,
    ],
    [
      "a negative byteOffset",
      [{ guestBase: 0, size: 8, buffer: b, byteOffset: -8 }],
      /^regions\[0\]\.byteOffset must be a safe integer/,
    ],
    [
      "an end past 2^53",
      [{ guestBase: 2 ** 53 - 8, size: 16, buffer: b }],
      /^regions\[0\]\.guestBase \+ size must not exceed 2\^53/,
    ],
    [
      "an end past 2^53 by one byte",
      [{ guestBase: 2 ** 53 - 1, size: 2, buffer: b }],
      /must not exceed 2\^53/,
    ],
    [
      "misaligned backing",
      [{ guestBase: 4, size: 16, buffer: b }],
      /^regions\[0\]\.guestBase and regions\[0\]\.byteOffset must be congruent modulo 8/,
    ],
    [
      "a second region misaligned",
      [
        { guestBase: 0, size: 8, buffer: b },
        { guestBase: 0x100, size: 8, buffer: b, byteOffset: 2 },
      ],
      /^regions\[1\]\.guestBase/,
    ],
    [
      "overlapping regions, named by index",
      [
        { guestBase: 0x80, size: 0x100, buffer: b },
        { guestBase: 0, size: 0x100, buffer: b },
      ],
      /^regions\[0\] \(guestBase 0x80\) overlaps regions\[1\]/,
    ],
  ];
  for (const [what, regions, message] of cases) {
    it(`rejects ${what} with a RangeError naming the argument`, () => {
      expect(() => new GuestMemoryMap(regions as GuestRegionOptions[])).toThrow(RangeError);
      expect(() => new GuestMemoryMap(regions as GuestRegionOptions[])).toThrow(message);
    });
  }

  it("rejects wrong types with a TypeError naming the argument", () => {
    const mk = (r: unknown) => () => new GuestMemoryMap(r as GuestRegionOptions[]);
    expect(mk(undefined)).toThrow(/^regions must be an array/);
    expect(mk([null])).toThrow(/^regions\[0\] must be an object/);
    expect(mk([{ guestBase: 0, size: 16, buffer: new Uint8Array(16) }])).toThrow(
      /^regions\[0\]\.buffer must be an ArrayBuffer or SharedArrayBuffer/,
    );
    const resizable = new (ArrayBuffer as new (n: number, o: object) => ArrayBuffer)(16, {
      maxByteLength: 32,
    });
    expect(mk([{ guestBase: 0, size: 16, buffer: resizable }])).toThrow(/resizable/);
  });

  it("accepts regions that touch but do not overlap", () => {
    const mem = new GuestMemoryMap([
      { guestBase: 0, size: 0x100, buffer: b },
      { guestBase: 0x100, size: 0x100, buffer: b, byteOffset: 0x100 },
    ]);
    expect(mem.regions).toHaveLength(2);
  });

  it("creates a zero-filled one-region memory and validates its options by name", () => {
    const mem = createGuestMemory({ size: 0x100, guestBase: 0x8000 });
    expect(mem.regions).toHaveLength(1);
    expect(mem.regions[0]).toMatchObject({ guestBase: 0x8000, size: 0x100, byteOffset: 0 });
    expect(mem.regions[0]!.buffer.byteLength).toBe(0x100);
    expect(mem.check(0x8000, 0x100)).toBe(true);
    expect([...mem.slice(0x8000, 0x100)].every((x) => x === 0)).toBe(true);
    const odd = createGuestMemory({ size: 0x10, guestBase: 0x1005, shared: false });
    expect(odd.regions[0]).toMatchObject({ byteOffset: 5 });
    expect(odd.check(0x1005, 0x10)).toBe(true);
    expect(() => createGuestMemory({ size: 0 })).toThrow(/^options\.size must be an integer > 0/);
    expect(() => createGuestMemory({ size: 8, guestBase: -8 })).toThrow(/^options\.guestBase/);
    expect(() => createGuestMemory({ size: 16, guestBase: 2 ** 53 - 8 })).toThrow(
      /^options\.guestBase \+ options\.size/,
    );
    expect(() => createGuestMemory(null as never)).toThrow(TypeError);
  });
});

describe("GuestMemoryMap against a flat reference model", () => {
  /** Layout: regions of 8..32 bytes separated by gaps of 0..16 bytes; some are ROM. */
  const layoutArb = fc.array(
    fc.record({
      gap: fc.integer({ min: 0, max: 2 }),
      units: fc.integer({ min: 1, max: 4 }),
      rom: fc.boolean(),
      offsetUnits: fc.integer({ min: 0, max: 2 }),
      shared: fc.boolean(),
    }),
    { minLength: 1, maxLength: 8 },
  );
  const opArb = fc.record({
    kind: fc.constantFrom("read", "write", "fill", "check", "sg", "u32", "slice"),
    addr: fc.integer({ min: 0, max: 400 }),
    len: fc.integer({ min: 0, max: 48 }),
    seed: fc.nat(255),
    writeAccess: fc.boolean(),
  });

  it("agrees with a Uint8Array model on random layouts with holes, adjacent regions and ROM", () => {
    fc.assert(
      fc.property(
        layoutArb,
        fc.array(opArb, { maxLength: 40 }),
        fc.boolean(),
        (layout, ops, shuffle) => {
          const SPACE = 400; // the layout ends by 8 * (16 + 32) = 384
          const region = new Int16Array(SPACE).fill(-1); // index of the region holding each byte
          const rom = new Uint8Array(SPACE);
          const model = new Uint8Array(SPACE);
          const options: GuestRegionOptions[] = [];
          let at = 0;
          for (const [i, r] of layout.entries()) {
            at += r.gap * 8;
            const size = r.units * 8;
            const byteOffset = r.offsetUnits * 8;
            const buffer = r.shared
              ? new SharedArrayBuffer(byteOffset + size)
              : new ArrayBuffer(byteOffset + size);
            options.push({ guestBase: at, size, buffer, byteOffset, readOnly: r.rom });
            region.fill(i, at, at + size);
            rom.fill(r.rom ? 1 : 0, at, at + size);
            at += size;
          }
          const mem = new GuestMemoryMap(shuffle ? [...options].reverse() : options);

          /** The region index whose byte range holds a zero-length access at `a`, or -1. */
          const zeroLenRegion = (a: number) =>
            (region[a] ?? -1) >= 0 ? region[a]! : a > 0 ? region[a - 1]! : -1;
          const readable = (a: number, n: number) =>
            n === 0
              ? zeroLenRegion(a) >= 0
              : a + n <= SPACE && region.subarray(a, a + n).every((x) => x >= 0);
          const writable = (a: number, n: number) =>
            readable(a, n) &&
            (n === 0
              ? !layout[zeroLenRegion(a)]!.rom
              : rom.subarray(a, a + n).every((x) => x === 0));
          const oneRegion = (a: number, n: number) =>
            readable(a, n) && (n === 0 || region[a] === region[a + n - 1]);
          const expectedCode = (a: number, n: number, write: boolean, single: boolean) => {
            if (!readable(a, n)) return "out-of-bounds";
            if (single && !oneRegion(a, n)) return "cross-region";
            if (write && !writable(a, n)) return "read-only";
            return undefined;
          };

          for (const op of ops) {
            const { addr, len } = op;
            const data = Uint8Array.from({ length: len }, (_, i) => (op.seed + i * 7) & 0xff);
            switch (op.kind) {
              case "check":
                expect(mem.check(addr, len)).toBe(readable(addr, len));
                expect(mem.check(addr, len, "write")).toBe(writable(addr, len));
                break;
              case "write": {
                const code = expectedCode(addr, len, true, false);
                expect(codeOf(() => mem.write(addr, data))).toBe(code);
                if (code === undefined) model.set(data, addr);
                break;
              }
              case "fill": {
                const code = expectedCode(addr, len, true, false);
                expect(codeOf(() => mem.fill(addr, len, op.seed))).toBe(code);
                if (code === undefined) model.fill(op.seed, addr, addr + len);
                break;
              }
              case "read": {
                const out = new Uint8Array(len);
                expect(codeOf(() => mem.read(addr, out))).toBe(
                  expectedCode(addr, len, false, false),
                );
                if (readable(addr, len)) expect(out).toEqual(model.subarray(addr, addr + len));
                break;
              }
              case "sg": {
                const access = op.writeAccess ? "write" : "read";
                let views: Uint8Array[] = [];
                expect(codeOf(() => (views = mem.sg(addr, len, [], access)))).toBe(
                  expectedCode(addr, len, op.writeAccess, false),
                );
                if (views.length > 0) {
                  const joined = Uint8Array.from(views.flatMap((v) => [...v]));
                  expect(joined).toEqual(model.subarray(addr, addr + len));
                }
                break;
              }
              case "slice": {
                const access = op.writeAccess ? "write" : "read";
                let view: Uint8Array | undefined;
                expect(codeOf(() => (view = mem.slice(addr, len, access)))).toBe(
                  expectedCode(addr, len, op.writeAccess, true),
                );
                if (view !== undefined) expect(view).toEqual(model.subarray(addr, addr + len));
                break;
              }
              case "u32": {
                const code = expectedCode(addr, 4, false, true);
                let value = -1;
                expect(codeOf(() => (value = mem.readU32(addr)))).toBe(code);
                if (code === undefined) {
                  const m = model;
                  expect(value).toBe(
                    (m[addr]! |
                      (m[addr + 1]! << 8) |
                      (m[addr + 2]! << 16) |
                      (m[addr + 3]! << 24)) >>>
                      0,
                  );
                }
                break;
              }
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
