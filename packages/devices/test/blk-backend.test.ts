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
