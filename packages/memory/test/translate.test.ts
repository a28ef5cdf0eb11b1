import {
  createGuestMemory,
  type DmaWindow,
  DmaWindows,
  dmaWindows,
  type GuestMemory,
  GuestMemoryError,
  type GuestMemoryErrorCode,
  GuestMemoryMap,
  TranslatedMemory,
  type TranslateFn,
  u64ToAddress,
} from "@virtio-ts/memory";
import * as fc from "fast-check";
import { describe, expect, it } from "vitest";

function expectFault(f: () => unknown, code: GuestMemoryErrorCode, addr: number, len: number) {
  let thrown: unknown;
  try {
    f();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(GuestMemoryError);
  expect(thrown).toMatchObject({ code, addr, len });
}

/**
 * IOVA [0, 0x1000) rw → GPA 0x8000; [0x1000, 0x2000) r → GPA 0x2000 (adjacent in IOVA, not in
 * GPA); [0x4000, 0x4100) w → GPA 0x3000.
 */
function setup() {
  const ram = createGuestMemory({ size: 0x10000, shared: false });
  const dev = new TranslatedMemory(
    ram,
    dmaWindows([
      { iova: 0x1000, gpa: 0x2000, size: 0x1000, access: "r" },
      { iova: 0x0, gpa: 0x8000, size: 0x1000, access: "rw" },
      { iova: 0x4000, gpa: 0x3000, size: 0x100, access: "w" },
    ]),
  );
  return { ram, dev };
}

describe("TranslatedMemory translation", () => {
  it("translates IO-virtual addresses to guest-physical ones for every scalar width", () => {
    const { ram, dev } = setup();
    dev.writeU8(0x10, 0xab);
    dev.writeU16(0x12, 0xcdef);
    dev.writeU32(0x14, 0xcafef00d);
    dev.writeU64(0x18, 0x0123456789abcdefn);
    expect([ram.readU8(0x8010), ram.readU16(0x8012), ram.readU32(0x8014)]).toEqual([
      0xab, 0xcdef, 0xcafef00d,
    ]);
    expect(ram.readU64(0x8018)).toBe(0x0123456789abcdefn);
    ram.writeU64(0x2008, 0x1122334455667788n);
    expect([dev.readU8(0x1008), dev.readU16(0x1008), dev.readU32(0x1008)]).toEqual([
      0x88, 0x7788, 0x55667788,
    ]);
    expect(dev.readU64(0x1008)).toBe(0x1122334455667788n);
  });

  it("copies and fills through a window", () => {
    const { ram, dev } = setup();
    dev.write(0x100, Uint8Array.of(1, 2, 3));
    dev.fill(0x103, 2, 9);
    const out = new Uint8Array(5);
    dev.read(0x100, out);
    expect([...out]).toEqual([1, 2, 3, 9, 9]);
    expect([...ram.slice(0x8100, 5)]).toEqual([1, 2, 3, 9, 9]);
  });

  it("gives views that alias the guest-physical memory behind the window", () => {
    const { ram, dev } = setup();
    const words = dev.u32View(0x100, 2, "write");
    words[1] = 0xdeadbeef;
    expect(ram.readU32(0x8104)).toBe(0xdeadbeef);
    expect(dev.u16View(0x104, 2)[1]).toBe(0xdead);
    expect(dev.slice(0x104, 4).byteOffset).toBe(0x8104);
    expect(dev.dataView(0x104, 4).getUint32(0, true)).toBe(0xdeadbeef);
    expect(dev.shared).toBe(false);
  });

  it("faults outside every window with code translation-fault and touches nothing", () => {
    const { ram, dev } = setup();
    expectFault(() => dev.readU8(0x3000), "translation-fault", 0x3000, 1);
    expectFault(() => dev.writeU32(0x2000, 1), "translation-fault", 0x2000, 4);
    expectFault(() => dev.slice(0x5000, 4), "translation-fault", 0x5000, 4);
    expectFault(
      () => dev.write(0x0ff0, new Uint8Array(0x2000).fill(1)),
      "translation-fault",
      0x0ff0,
      0x2000,
    );
    expectFault(() => dev.fill(0x40f0, 0x20, 1), "translation-fault", 0x40f0, 0x20);
    expectFault(() => dev.sg(0x1ff0, 0x20), "translation-fault", 0x1ff0, 0x20);
    expect([...ram.slice(0x8ff0, 0x10)].every((b) => b === 0)).toBe(true);
    expect(ram.readU8(0x30f0)).toBe(0);
    expect(dev.check(0x2000, 1)).toBe(false);
    expect(dev.check(0x1fff, 2)).toBe(false);
  });

  it("rejects hostile 64-bit IOVAs and wrapping ranges as translation faults", () => {
    const { dev } = setup();
    const top = u64ToAddress(0xfffffff0, 0xffffffff);
    expectFault(() => dev.readU32(top), "translation-fault", top, 4);
    expectFault(() => dev.read(top, new Uint8Array(0x20)), "translation-fault", top, 0x20);
    expect(dev.check(2 ** 53, 0)).toBe(false);
    expect(dev.check(top, 0x20)).toBe(false);
  });

  it("raises RangeError for host misuse: negative or fractional addresses, bad lengths", () => {
    const { dev } = setup();
    expect(() => dev.readU8(-1)).toThrow(/^addr must be an integer ≥ 0/);
    expect(() => dev.read(0.5, new Uint8Array(1))).toThrow(/^addr must/);
    expect(() => dev.fill(0, -1, 0)).toThrow(/^len must/);
    expect(() => dev.u32View(0, Number.NaN)).toThrow(/^count must/);
    expect(dev.check(-1, 1)).toBe(false);
    expect(dev.check(0, 2 ** 32 + 1)).toBe(false);
  });
});

describe("TranslatedMemory permissions", () => {
  it("refuses device writes to a read-only window and keeps its memory unchanged", () => {
    const { ram, dev } = setup();
    ram.writeU32(0x2000, 0x11111111);
    expectFault(() => dev.writeU8(0x1000, 1), "translation-fault", 0x1000, 1);
    expectFault(() => dev.writeU32(0x1000, 1), "translation-fault", 0x1000, 4);
    expectFault(() => dev.write(0x1000, Uint8Array.of(1)), "translation-fault", 0x1000, 1);
    expectFault(() => dev.fill(0x1000, 4, 0), "translation-fault", 0x1000, 4);
    expectFault(() => dev.slice(0x1000, 4, "write"), "translation-fault", 0x1000, 4);
    expectFault(() => dev.u32View(0x1000, 1, "write"), "translation-fault", 0x1000, 4);
    expectFault(() => dev.sg(0x1000, 4, [], "write"), "translation-fault", 0x1000, 4);
    expect(ram.readU32(0x2000)).toBe(0x11111111);
    expect(dev.check(0x1000, 16, "write")).toBe(false);
    expect(dev.check(0x1000, 16, "read")).toBe(true);
    expect(dev.readU32(0x1000)).toBe(0x11111111);
  });

  it("refuses device reads from a write-only window but allows writes", () => {
    const { ram, dev } = setup();
    expectFault(() => dev.readU8(0x4000), "translation-fault", 0x4000, 1);
    expectFault(() => dev.read(0x4000, new Uint8Array(4)), "translation-fault", 0x4000, 4);
    expectFault(() => dev.slice(0x4000, 4), "translation-fault", 0x4000, 4);
    dev.writeU16(0x4000, 0x0707);
    expect(ram.readU16(0x3000)).toBe(0x0707);
    expect(dev.slice(0x4000, 4, "write").length).toBe(4);
  });

  it("refuses a write spanning a read-write and a read-only window, writing none of it", () => {
    const { ram, dev } = setup();
    expectFault(() => dev.write(0x0ffe, Uint8Array.of(1, 2, 3, 4)), "translation-fault", 0x0ffe, 4);
    expect(ram.readU16(0x8ffe)).toBe(0);
  });
});

describe("TranslatedMemory stableRange", () => {
  it("offers none, even over RAM that has one: its windows are mapped and unmapped at run time", () => {
    const ram = createGuestMemory({ size: 0x10000 });
    const dev = new TranslatedMemory(
      ram,
      dmaWindows([{ iova: 0, gpa: 0x8000, size: 0x1000, access: "rw" }]),
    );
    expect(ram.stableRange).toEqual({ start: 0, end: 0x10000 });
    expect((dev as GuestMemory).stableRange).toBeUndefined();
  });
});

describe("TranslatedMemory across windows", () => {
  it("reads, writes, fills and scatter-gathers across IOVA-adjacent windows", () => {
    const rw: DmaWindow[] = [
      { iova: 0x0, gpa: 0x8000, size: 0x1000, access: "rw" },
      { iova: 0x1000, gpa: 0x2000, size: 0x1000, access: "rw" },
    ];
    const ram = createGuestMemory({ size: 0x10000 });
    const dev = new TranslatedMemory(ram, dmaWindows(rw));
    dev.write(0x0ffe, Uint8Array.of(1, 2, 3, 4));
    expect([...ram.slice(0x8ffe, 2), ...ram.slice(0x2000, 2)]).toEqual([1, 2, 3, 4]);
    const out = new Uint8Array(4);
    dev.read(0x0ffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
    dev.fill(0x0fff, 2, 7);
    expect([ram.readU8(0x8fff), ram.readU8(0x2000)]).toEqual([7, 7]);
    const views = dev.sg(0x0ffe, 4);
    expect(views.map((v) => [v.byteOffset, [...v]])).toEqual([
      [0x8ffe, [1, 7]],
      [0x2000, [7, 4]],
    ]);
    expect(dev.check(0x0ffe, 4, "write")).toBe(true);
  });

  it("keeps scalars and views inside one window (code cross-region)", () => {
    const { dev } = setup();
    expectFault(() => dev.readU32(0x0ffe), "cross-region", 0x0ffe, 4);
    expectFault(() => dev.slice(0x0ffe, 4), "cross-region", 0x0ffe, 4);
    expectFault(() => dev.dataView(0x0ff0, 0x20), "cross-region", 0x0ff0, 0x20);
    expectFault(() => dev.u32View(0x0ffc, 2), "cross-region", 0x0ffc, 8);
    expect(dev.u32View(0x100, 2).length).toBe(2);
  });

  it("splits scatter-gather pieces at region boundaries of the memory behind a window", () => {
    const ram = new GuestMemoryMap([
      { guestBase: 0x0, size: 0x100, buffer: new ArrayBuffer(0x100) },
      { guestBase: 0x100, size: 0x100, buffer: new ArrayBuffer(0x100) },
    ]);
    const dev = new TranslatedMemory(
      ram,
      dmaWindows([{ iova: 0x1000, gpa: 0, size: 0x200, access: "rw" }]),
    );
    const reuse = [new Uint8Array(3)];
    expect(dev.sg(0x10f0, 0x20, reuse)).toBe(reuse);
    expect(reuse.map((v) => v.length)).toEqual([0x10, 0x10]);
    expectFault(() => dev.readU32(0x10fe), "cross-region", 0x10fe, 4);
  });

  it("accepts a zero-length range inside a window or exactly at its end", () => {
    const { dev } = setup();
    expect(dev.check(0x4100, 0, "write")).toBe(true);
    expect(dev.check(0x4050, 0, "write")).toBe(true);
    expect(dev.check(0x4101, 0, "write")).toBe(false);
    expect(dev.check(0x3fff, 0, "write")).toBe(false);
    expect(dev.slice(0x4100, 0, "write").length).toBe(0);
    expect(dev.sg(0x2000, 0).map((v) => v.length)).toEqual([0]);
  });

  it("rejects misaligned views by their IO-virtual address", () => {
    const { dev } = setup();
    expectFault(() => dev.u16View(0x101, 1), "misaligned", 0x101, 2);
    expectFault(() => dev.u32View(0x102, 1), "misaligned", 0x102, 4);
  });

  it("reports failures of the memory behind a window with the IOVA the device used", () => {
    const rom = new GuestMemoryMap([
      { guestBase: 0, size: 0x100, buffer: new ArrayBuffer(0x100), readOnly: true },
      { guestBase: 0x100, size: 0x100, buffer: new ArrayBuffer(0x100) },
    ]);
    const dev = new TranslatedMemory(
      rom,
      dmaWindows([
        { iova: 0x1000, gpa: 0, size: 0x200, access: "rw" },
        { iova: 0x2000, gpa: 0x180, size: 0x100, access: "rw" }, // half of it is unbacked
      ]),
    );
    expectFault(() => dev.writeU32(0x1010, 1), "read-only", 0x1010, 4);
    expectFault(() => dev.write(0x10f0, new Uint8Array(0x20)), "read-only", 0x10f0, 0x20);
    expectFault(() => dev.readU32(0x2090), "out-of-bounds", 0x2090, 4);
    expectFault(() => dev.read(0x2070, new Uint8Array(0x20)), "out-of-bounds", 0x2070, 0x20);
    expect(() => dev.readU32(0x2090)).toThrow(/guest-physical 0x210/);
    expect(dev.check(0x2070, 0x20)).toBe(false);
    expect(dev.check(0x1100, 0x10, "write")).toBe(true);
  });
});

describe("DmaWindows", () => {
  it("validates the window table with messages naming the window", () => {
    const cases: [unknown, RegExp][] = [
      [
        [{ iova: -1, gpa: 0, size: 8, access: "r" }],
        /^windows\[0\]\.iova must be a safe integer ≥ 0/,
      ],
      [[{ iova: 0, gpa: 0.5, size: 8, access: "r" }], /^windows\[0\]\.gpa/],
      [[{ iova: 0, gpa: 0, size: 0, access: "r" }], /^windows\[0\]\.size must be an integer > 0/],
      [[{ iova: 2 ** 53 - 8, gpa: 0, size: 16, access: "r" }], /^windows\[0\]\.size: iova \+ size/],
      [[{ iova: 0, gpa: 2 ** 53 - 8, size: 16, access: "r" }], /gpa \+ size must not exceed 2\^53/],
      [
        [{ iova: 4, gpa: 0, size: 8, access: "r" }],
        /^windows\[0\]\.iova and windows\[0\]\.gpa must be congruent modulo 8/,
      ],
      [
        [{ iova: 0, gpa: 0, size: 8, access: "x" }],
        /^windows\[0\]\.access must be "r", "w" or "rw"/,
      ],
      [
        [
          { iova: 0x80, gpa: 0, size: 0x100, access: "r" },
          { iova: 0, gpa: 0, size: 0x100, access: "r" },
        ],
        /^windows\[0\] \(iova 0x80\) overlaps windows\[1\]/,
      ],
    ];
    for (const [table, message] of cases) {
      expect(() => dmaWindows(table as DmaWindow[])).toThrow(RangeError);
      expect(() => new DmaWindows(table as DmaWindow[])).toThrow(message);
    }
    expect(() => dmaWindows([null as never])).toThrow(/^windows\[0\] must be an object/);
    expect(() => new TranslatedMemory(createGuestMemory({ size: 8 }), 1 as never)).toThrow(
      TypeError,
    );
  });

  it("translates the longest contiguous prefix and returns null on a fault, reusing its result object", () => {
    const w = new DmaWindows([{ iova: 0x1000, gpa: 0x9000, size: 0x100, access: "r" }]);
    const t = w.translate(0x10f0, 0x40, "read");
    expect(t).toEqual({ gpa: 0x90f0, len: 0x10 });
    expect(w.translate(0x1000, 4, "read")).toBe(t);
    expect(w.translate(0x1000, 4, "write")).toBeNull();
    expect(w.translate(0xfff, 4, "read")).toBeNull();
    expect(w.translate(0x1100, 1, "read")).toBeNull();
    expect(w.translate(0x1100, 0, "read")).toEqual({ gpa: 0x9100, len: 0 });
    for (const bad of [Number.NaN, -1, 0.5, 2 ** 64])
      expect(w.translate(bad, 1, "read")).toBeNull();
  });

  it("maps and unmaps windows at run time, as a guest programming a virtual IOMMU", () => {
    const ram = createGuestMemory({ size: 0x10000 });
    const iommu = new DmaWindows();
    const dev = new TranslatedMemory(ram, iommu.translate);
    expectFault(() => dev.readU8(0), "translation-fault", 0, 1);
    iommu.map({ iova: 0x2000, gpa: 0x4000, size: 0x1000, access: "rw" });
    iommu.map({ iova: 0, gpa: 0x8000, size: 0x1000, access: "r" });
    expect(iommu.windows.map((w) => w.iova)).toEqual([0, 0x2000]);
    expect(() => iommu.map({ iova: 0x2800, gpa: 0, size: 0x1000, access: "r" })).toThrow(
      /overlaps/,
    );
    expect(() => iommu.map({ iova: 0x1800, gpa: 0, size: 0x1000, access: "r" })).toThrow(
      /overlaps/,
    );
    expect(() => iommu.map({ iova: 0x1000, gpa: 1, size: 8, access: "r" })).toThrow(
      /^window\.iova and window\.gpa/,
    );
    dev.writeU32(0x2010, 5);
    expect(ram.readU32(0x4010)).toBe(5);
    expect(iommu.unmap(0x2000)).toBe(true);
    expect(iommu.unmap(0x2000)).toBe(false);
    expectFault(() => dev.readU32(0x2010), "translation-fault", 0x2010, 4);
    expect(dev.readU32(0)).toBe(0);
  });

  it("works with any hook, e.g. a page-granular IOMMU function", () => {
    const ram = createGuestMemory({ size: 0x10000, shared: false });
    // IOVA page n maps to guest page 15 - n, read-write.
    const pageFlip: TranslateFn = (iova, len) => {
      if (!(iova >= 0 && iova < 0x10000)) return null;
      const off = iova & 0xfff;
      return { gpa: (15 - (iova >>> 12)) * 0x1000 + off, len: Math.min(len, 0x1000 - off) };
    };
    const dev = new TranslatedMemory(ram, pageFlip);
    dev.write(0xffe, Uint8Array.of(1, 2, 3, 4));
    expect([
      ram.readU8(0xfffe),
      ram.readU8(0xffff),
      ram.readU8(0xe000),
      ram.readU8(0xe001),
    ]).toEqual([1, 2, 3, 4]);
    const out = new Uint8Array(4);
    dev.read(0xffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
  });

  it("treats a hook that breaks its contract as a fault rather than looping or copying", () => {
    const ram = createGuestMemory({ size: 0x1000 });
    const zero: TranslateFn = () => ({ gpa: 0, len: 0 });
    const nan: TranslateFn = () => ({ gpa: 0, len: Number.NaN });
    for (const hook of [zero, nan]) {
      const dev = new TranslatedMemory(ram, hook);
      expect(dev.check(0, 4)).toBe(false);
      expectFault(() => dev.write(0, Uint8Array.of(1, 2, 3, 4)), "translation-fault", 0, 4);
    }
    expect(ram.readU32(0)).toBe(0);
  });
});

describe("TranslatedMemory against a byte-level model", () => {
  it("agrees with a per-byte IOVA → GPA table for random windows and operations", () => {
    const PAGE = 16;
    const windowsArb = fc.array(
      fc.record({
        gapPages: fc.integer({ min: 0, max: 2 }),
        pages: fc.integer({ min: 1, max: 3 }),
        gpaPage: fc.integer({ min: 0, max: 31 }),
        access: fc.constantFrom("r" as const, "w" as const, "rw" as const),
      }),
      { minLength: 1, maxLength: 6 },
    );
    const opArb = fc.record({
      write: fc.boolean(),
      addr: fc.integer({ min: 0, max: 480 }),
      len: fc.integer({ min: 1, max: 30 }),
      seed: fc.nat(255),
    });
    fc.assert(
      fc.property(windowsArb, fc.array(opArb, { maxLength: 30 }), (spec, ops) => {
        const RAM = 32 * PAGE; // guest-physical memory; windows may point past it (unbacked)
        const ram = createGuestMemory({ size: RAM - 4 * PAGE, shared: false });
        const model = new Uint8Array(RAM);
        const gpaOf = new Float64Array(512).fill(-1);
        const perm: string[] = new Array(512).fill("");
        const table: DmaWindow[] = [];
        let iova = 0;
        for (const w of spec) {
          iova += w.gapPages * PAGE;
          const size = w.pages * PAGE;
          const gpa = w.gpaPage * PAGE;
          table.push({ iova, gpa, size, access: w.access });
          for (let i = 0; i < size; i++) {
            gpaOf[iova + i] = gpa + i;
            perm[iova + i] = w.access;
          }
          iova += size;
        }
        const dev = new TranslatedMemory(ram, dmaWindows(table));
        const backed = (g: number) => g >= 0 && g < RAM - 4 * PAGE;
        const ok = (a: number, n: number, w: boolean) => {
          for (let i = a; i < a + n; i++) {
            if (!(gpaOf[i]! >= 0) || !backed(gpaOf[i]!)) return false;
            if (!perm[i]!.includes(w ? "w" : "r")) return false;
          }
          return true;
        };
        for (const op of ops) {
          const expected = ok(op.addr, op.len, op.write);
          expect(dev.check(op.addr, op.len, op.write ? "write" : "read")).toBe(expected);
          if (op.write) {
            const data = Uint8Array.from({ length: op.len }, (_, i) => (op.seed + i) & 0xff);
            let failed = false;
            try {
              dev.write(op.addr, data);
            } catch (e) {
              expect(e).toBeInstanceOf(GuestMemoryError);
              failed = true;
            }
            expect(failed).toBe(!expected);
            if (!failed) for (let i = 0; i < op.len; i++) model[gpaOf[op.addr + i]!] = data[i]!;
          } else {
            const out = new Uint8Array(op.len);
            let failed = false;
            try {
              dev.read(op.addr, out);
            } catch (e) {
              expect(e).toBeInstanceOf(GuestMemoryError);
              failed = true;
            }
            expect(failed).toBe(!expected);
            if (!failed) {
              for (let i = 0; i < op.len; i++) expect(out[i]).toBe(model[gpaOf[op.addr + i]!]);
            }
          }
          expect(ram.slice(0, RAM - 4 * PAGE)).toEqual(model.subarray(0, RAM - 4 * PAGE));
        }
      }),
      { numRuns: 200 },
    );
  });
});
