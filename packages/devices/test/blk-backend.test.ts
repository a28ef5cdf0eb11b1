import { BlockGuard } from "@virtio-ts/devices";
import { sectorRangeFits } from "@virtio-ts/devices/blk";
import { describe, expect, it } from "vitest";

describe("sectorRangeFits", () => {
  it("accepts ranges that end exactly at the capacity and refuses one sector more", () => {
    expect(sectorRangeFits(0, 0, 0)).toBe(true);
    expect(sectorRangeFits(60, 4 * 512, 64)).toBe(true);
    expect(sectorRangeFits(61, 4 * 512, 64)).toBe(false);
    expect(sectorRangeFits(64, 0, 64)).toBe(true);
    expect(sectorRangeFits(65, 0, 64)).toBe(false);
  });

  it("refuses partial sectors, negative, fractional and unsafe sectors", () => {
    expect(sectorRangeFits(0, 100, 64)).toBe(false);
    expect(sectorRangeFits(-1, 512, 64)).toBe(false);
    expect(sectorRangeFits(1.5, 512, 64)).toBe(false);
    expect(sectorRangeFits(2 ** 53, 512, 2 ** 60)).toBe(false);
  });
});

describe("BlockGuard", () => {
  it("refuses a closed back-end, a write on a read-only one and a range past the capacity, each with its BackendError code and the back-end's name and path", () => {
    const g = new BlockGuard("disk image /x.img", 8, true, "/x.img");
    expect(g.span(4, 2048)).toBe(4 * 512);
    expect(() => g.span(7, 1024)).toThrow(
      expect.objectContaining({ code: "out-of-range", path: "/x.img" }),
    );
    expect(() => g.span(0, 100)).toThrow(expect.objectContaining({ code: "out-of-range" }));
    expect(() => g.writable()).toThrow(
      expect.objectContaining({ code: "read-only", message: "disk image /x.img is read-only" }),
    );
    g.open();
    g.closed = true;
    for (const check of [() => g.open(), () => g.span(0, 512), () => g.writable()]) {
      expect(check).toThrow(expect.objectContaining({ code: "closed", path: "/x.img" }));
    }
  });

  it("names no path when the back-end has none", () => {
    const g = new BlockGuard("MemoryDisk", 1, false);
    g.writable();
    expect(() => g.span(1, 512)).toThrow(
      expect.objectContaining({ code: "out-of-range", path: undefined }),
    );
  });
});
