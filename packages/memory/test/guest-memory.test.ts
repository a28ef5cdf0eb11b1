import {
  createGuestMemory,
  GuestMemoryError,
  GuestMemoryMap,
  guestAddress,
  u64ToAddress,
} from "@virtio-ts/memory";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(GuestMemoryError);
    return (e as GuestMemoryError).code;
  }
  return undefined;
}

/** Two regions with a hole: [0x1000, 0x2000) and [0x3000, 0x4000), plus an adjacent [0x4000, 0x5000). */
function holey() {
  return new GuestMemoryMap([
    { guestBase: 0x3000, size: 0x1000, buffer: new ArrayBuffer(0x1000) },
    { guestBase: 0x1000, size: 0x1000, buffer: new SharedArrayBuffer(0x2000), byteOffset: 0x1000 },
    { guestBase: 0x4000, size: 0x1000, buffer: new ArrayBuffer(0x1000) },
  ]);
}

describe("GuestMemoryMap scalar access", () => {
  it("reads and writes u8/u16/u32/u64 little-endian", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.writeU64(8, 0x0102030405060708n);
    expect(mem.readU8(8)).toBe(0x08);
    expect(mem.readU16(8)).toBe(0x0708);
    expect(mem.readU32(8)).toBe(0x05060708);
    expect(mem.readU64(8)).toBe(0x0102030405060708n);
    mem.writeU32(0, 0xdeadbeef);
    expect([...mem.slice(0, 4)]).toEqual([0xef, 0xbe, 0xad, 0xde]);
    mem.writeU16(4, 0x1_2345); // truncated to 16 bits
    expect(mem.readU16(4)).toBe(0x2345);
  });

  it("accepts an access ending exactly at the end of memory and rejects one byte past", () => {
    const mem = createGuestMemory({ size: 64 });
    mem.writeU32(60, 7);
    expect(mem.readU32(60)).toBe(7);
    expect(codeOf(() => mem.readU32(61))).toBe("out-of-bounds");
    expect(mem.check(64, 0)).toBe(true);
    expect(mem.check(65, 0)).toBe(false);
  });

  it("carries address and length in its errors", () => {
    const mem = createGuestMemory({ size: 64 });
    try {
      mem.readU64(0x100);
    } catch (e) {
      expect(e).toMatchObject({ code: "out-of-bounds", addr: 0x100, len: 8 });
      expect((e as Error).message).toContain("0x100");
    }
  });
});

describe("GuestMemoryMap address arithmetic", () => {
  it("maps 64-bit guest values to numbers that stay at or above 2^53 when they are that large", () => {
    expect(u64ToAddress(5, 0)).toBe(5);
    expect(u64ToAddress(0, 1)).toBe(2 ** 32);
    expect(u64ToAddress(0xffffffff, 0x1fffff)).toBe(2 ** 53 - 1);
    expect(u64ToAddress(0xffffffff, 0xffffffff)).toBeGreaterThanOrEqual(2 ** 53);
    expect(u64ToAddress(0, 0x200000)).toBe(2 ** 53);
  });

  it("rejects addresses near 2^53 and 2^64, and ranges that would wrap 2^64, without touching memory", () => {
    const mem = createGuestMemory({ size: 0x1000 });
    const top = u64ToAddress(0xffffff00, 0xffffffff); // 2^64 - 256
    for (const [addr, len] of [
      [2 ** 53 - 1, 1],
      [2 ** 53, 0],
      [top, 0x200],
      [Number.MAX_VALUE, 1],
    ] as const) {
      expect(mem.check(addr, len)).toBe(false);
    }
    expect(codeOf(() => mem.readU8(top))).toBe("out-of-bounds");
    expect(codeOf(() => mem.read(2 ** 53, new Uint8Array(4)))).toBe("out-of-bounds");
  });

  it("check never accepts negative, fractional or NaN inputs", () => {
    const mem = createGuestMemory({ size: 0x1000 });
    expect(mem.check(-1, 1)).toBe(false);
    expect(mem.check(1.5, 1)).toBe(false);
    expect(mem.check(Number.NaN, 1)).toBe(false);
    expect(mem.check(0, Number.NaN)).toBe(false);
    expect(mem.check(0, 2 ** 32 + 1)).toBe(false);
  });

  it("guestAddress brands safe integers and names the argument otherwise", () => {
    expect(guestAddress(0x1000)).toBe(0x1000);
    expect(() => guestAddress(-1)).toThrow(/addr must be a non-negative safe integer/);
    expect(() => guestAddress(2 ** 53)).toThrow(RangeError);
  });
});

describe("GuestMemoryMap regions", () => {
  it("sorts regions and reads across adjacent ones", () => {
    const mem = holey();
    expect(mem.regions.map((r) => r.guestBase)).toEqual([0x1000, 0x3000, 0x4000]);
    mem.write(0x3ffe, new Uint8Array([1, 2, 3, 4]));
    const out = new Uint8Array(4);
    mem.read(0x3ffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
    expect(mem.readU8(0x4001)).toBe(4);
  });

  it("refuses a copy over a hole and copies nothing at all", () => {
    const mem = holey();
    expect(codeOf(() => mem.write(0x1ffe, new Uint8Array([9, 9, 9, 9])))).toBe("out-of-bounds");
    expect(mem.readU16(0x1ffe)).toBe(0);
    expect(mem.check(0x1ffe, 4)).toBe(false);
  });

  it("refuses a scalar or a view that crosses two adjacent regions", () => {
    const mem = holey();
    expect(codeOf(() => mem.readU32(0x3ffe))).toBe("cross-region");
    expect(codeOf(() => mem.slice(0x3ff0, 0x20))).toBe("cross-region");
  });

  it("gives scatter-gather views, one per region crossed, aliasing guest memory", () => {
    const mem = holey();
    const views = mem.sg(0x3ff0, 0x20);
    expect(views.map((v) => v.length)).toEqual([0x10, 0x10]);
    views[1]![0] = 0xaa;
    expect(mem.readU8(0x4000)).toBe(0xaa);
    const reuse: Uint8Array[] = [new Uint8Array(1)];
    expect(mem.sg(0x1000, 8, reuse)).toBe(reuse);
    expect(reuse.length).toBe(1);
  });

  it("makes zero-copy typed views usable with Atomics on shared memory", () => {
    const mem = holey();
    const words = mem.u32View(0x1000, 4);
    expect(words.buffer).toBeInstanceOf(SharedArrayBuffer);
    Atomics.store(words, 1, 0x12345678);
    expect(mem.readU32(0x1004)).toBe(0x12345678);
    const halves = mem.u16View(0x1004, 2);
    expect(Atomics.load(halves, 1)).toBe(0x1234);
  });

  it("rejects misaligned typed views", () => {
    const mem = createGuestMemory({ size: 64 });
    expect(codeOf(() => mem.u16View(1, 2))).toBe("misaligned");
    expect(codeOf(() => mem.u32View(2, 2))).toBe("misaligned");
  });

  it("refuses writes and write views to read-only regions but allows reads", () => {
    const buf = new ArrayBuffer(0x1000);
    new Uint8Array(buf)[0] = 42;
    const mem = new GuestMemoryMap([{ guestBase: 0, size: 0x1000, buffer: buf, readOnly: true }]);
    expect(mem.readU8(0)).toBe(42);
    expect(codeOf(() => mem.writeU8(0, 1))).toBe("read-only");
    expect(codeOf(() => mem.slice(0, 4, "write"))).toBe("read-only");
    expect(codeOf(() => mem.fill(0, 4, 0))).toBe("read-only");
    expect(mem.check(0, 4, "write")).toBe(false);
    expect(mem.check(0, 4, "read")).toBe(true);
  });

  it("validates its regions with messages naming the argument", () => {
    const b = new ArrayBuffer(0x1000);
    expect(() => new GuestMemoryMap([])).toThrow(/regions must be a non-empty array/);
    expect(() => new GuestMemoryMap([{ guestBase: -1, size: 16, buffer: b }])).toThrow(
      /regions\[0\]\.guestBase/,
    );
    expect(() => new GuestMemoryMap([{ guestBase: 0, size: 0, buffer: b }])).toThrow(
      /regions\[0\]\.size/,
    );
    expect(() => new GuestMemoryMap([{ guestBase: 0, size: 0x2000, buffer: b }])).toThrow(
      /regions\[0\]\.byteOffset \+ size/,
    );
    expect(() => new GuestMemoryMap([{ guestBase: 2 ** 53 - 8, size: 16, buffer: b }])).toThrow(
      /must not exceed 2\^53/,
    );
    expect(() => new GuestMemoryMap([{ guestBase: 4, size: 16, buffer: b }])).toThrow(
      /congruent modulo 8/,
    );
    expect(
      () =>
        new GuestMemoryMap([
          { guestBase: 0, size: 0x100, buffer: b },
          { guestBase: 0x80, size: 0x100, buffer: b },
        ]),
    ).toThrow(/regions overlap/);
    expect(
      () => new GuestMemoryMap([{ guestBase: 0, size: 16, buffer: {} as ArrayBuffer }]),
    ).toThrow(TypeError);
  });
});

describe("GuestMemoryMap against a flat reference model", () => {
  it("agrees with a Uint8Array model on random regions with holes and random operations", () => {
    const SPACE = 0x800;
    const layoutArb = fc
      .uniqueArray(fc.integer({ min: 0, max: SPACE / 64 - 1 }), { minLength: 1, maxLength: 12 })
      .map((pages) => pages.sort((a, b) => a - b));
    const opArb = fc.record({
      write: fc.boolean(),
      addr: fc.integer({ min: -8, max: SPACE + 8 }),
      len: fc.integer({ min: 0, max: 160 }),
      seed: fc.nat(255),
    });
    fc.assert(
      fc.property(layoutArb, fc.array(opArb, { maxLength: 40 }), (pages, ops) => {
        const mapped = new Uint8Array(SPACE);
        const model = new Uint8Array(SPACE);
        const mem = new GuestMemoryMap(
          pages.map((p) => {
            mapped.fill(1, p * 64, p * 64 + 64);
            return { guestBase: p * 64, size: 64, buffer: new ArrayBuffer(64) };
          }),
        );
        for (const op of ops) {
          const inRange =
            op.addr >= 0 &&
            op.addr + op.len <= SPACE &&
            (op.len === 0
              ? mapped[op.addr] === 1 || (op.addr > 0 && mapped[op.addr - 1] === 1)
              : mapped.subarray(op.addr, op.addr + op.len).every((b) => b === 1));
          expect(mem.check(op.addr, op.len)).toBe(inRange);
          const data = Uint8Array.from({ length: op.len }, (_, i) => (op.seed + i) & 0xff);
          if (op.addr < 0) continue; // host misuse is a RangeError, covered elsewhere
          if (op.write) {
            if (inRange) {
              mem.write(op.addr, data);
              model.set(data, op.addr);
            } else expect(codeOf(() => mem.write(op.addr, data))).toBe("out-of-bounds");
          } else {
            const out = new Uint8Array(op.len);
            if (inRange) {
              mem.read(op.addr, out);
              expect(out).toEqual(model.subarray(op.addr, op.addr + op.len));
            } else expect(codeOf(() => mem.read(op.addr, out))).toBe("out-of-bounds");
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
