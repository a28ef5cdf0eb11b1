import { describe, expect, it } from "vitest";
import { SlabAllocator } from "../src/index.js";

describe("SlabAllocator", () => {
  it("hands out every slot once, lowest first, then undefined", () => {
    const s = new SlabAllocator(0x1000, 64, 3);
    expect([s.alloc(), s.alloc(), s.alloc(), s.alloc()]).toEqual([
      0x1000,
      0x1040,
      0x1080,
      undefined,
    ]);
    expect(s.available).toBe(0);
    expect(s.byteLength).toBe(192);
  });

  it("reuses freed slots", () => {
    const s = new SlabAllocator(0, 64, 2);
    const a = s.alloc() as number;
    s.alloc();
    s.free(a);
    expect(s.available).toBe(1);
    expect(s.alloc()).toBe(a);
  });

  it("rejects a double free and foreign addresses with a RangeError naming addr", () => {
    const s = new SlabAllocator(0, 64, 2);
    const a = s.alloc() as number;
    s.free(a);
    expect(() => s.free(a)).toThrow(/addr/);
    expect(() => s.free(32)).toThrow(/addr/);
    expect(() => s.free(128)).toThrow(/addr/);
  });

  it("rejects invalid geometry with a RangeError naming the argument", () => {
    expect(() => new SlabAllocator(8, 64, 1)).toThrow(/base/);
    expect(() => new SlabAllocator(0, 48, 1)).toThrow(/slotSize/);
    expect(() => new SlabAllocator(0, 64, 0)).toThrow(/slots/);
  });
});
