import {
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
  legacySplitLayout,
  splitAvailSize,
  splitUsedSize,
} from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";

describe("feature helpers", () => {
  it("featureMask turns bit numbers above 31 into exact bigint masks", () => {
    expect(featureMask(Feature.VERSION_1)).toBe(0x1_0000_0000n);
    expect(featureMask(0)).toBe(1n);
    expect(featureMask(127)).toBe(1n << 127n);
  });

  it("featureMask names its argument when the bit is out of range", () => {
    expect(() => featureMask(128)).toThrow(/bit must be an integer in \[0, 127\], got 128/);
    expect(() => featureMask(1.5)).toThrow(RangeError);
  });

  it("hasFeature tests one bit of a feature set", () => {
    const set = featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.VERSION_1);
    expect(hasFeature(set, Feature.RING_EVENT_IDX)).toBe(true);
    expect(hasFeature(set, Feature.VERSION_1)).toBe(true);
    expect(hasFeature(set, Feature.RING_PACKED)).toBe(false);
  });
});

describe("split ring sizes", () => {
  it("§2.7 sizes the avail and used rings including their event fields", () => {
    expect(splitAvailSize(256)).toBe(6 + 512);
    expect(splitUsedSize(256)).toBe(6 + 2048);
  });

  it("§2.7.2 places the legacy used ring on the next 4096-byte boundary", () => {
    expect(legacySplitLayout(256)).toEqual({
      desc: 0,
      avail: 4096,
      used: 8192,
      total: 8192 + 6 + 2048,
    });
  });
});

describe("transport feature range", () => {
  it("§6 FEATURE_TRANSPORT_MASK covers exactly bits 24 to 41", () => {
    for (let bit = 0; bit < 64; bit++) {
      expect(hasFeature(FEATURE_TRANSPORT_MASK, bit)).toBe(bit >= 24 && bit <= 41);
    }
  });
});
