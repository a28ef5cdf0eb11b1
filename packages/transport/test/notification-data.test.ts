import { describe, expect, it } from "vitest";
import {
  decodeNotificationData,
  encodeNotificationData,
  packedNotificationData,
  RateLimitedLog,
  splitAvailIndex,
  splitNotificationData,
} from "../src/index.js";

describe("notification data (VIRTIO 1.3 §2.9)", () => {
  it("packs vq_index in bits 0–15, next_off in 16–30 and next_wrap in bit 31", () => {
    expect(encodeNotificationData(3, 0x7fff, 1)).toBe(0xffff0003);
    expect(encodeNotificationData(0xffff, 0, false)).toBe(0x0000ffff);
    expect(packedNotificationData(1, 5, true)).toBe(0x80050001);
  });

  it("split: bits 16–31 are the 16-bit available index", () => {
    expect(splitNotificationData(1, 0x8003)).toBe(0x80030001);
    const d = decodeNotificationData(0x80030001);
    expect(d).toEqual({ queueIndex: 1, nextOff: 3, nextWrap: 1 });
    expect(splitAvailIndex(d)).toBe(0x8003);
    for (const idx of [0, 1, 0x7fff, 0x8000, 0xffff]) {
      expect(splitAvailIndex(decodeNotificationData(splitNotificationData(7, idx)))).toBe(idx);
    }
  });

  it("decodes into a caller-owned object and takes any number modulo 2^32", () => {
    const out = { queueIndex: 9, nextOff: 9, nextWrap: 0 as 0 | 1 };
    expect(decodeNotificationData(-1, out)).toBe(out);
    expect(out).toEqual({ queueIndex: 0xffff, nextOff: 0x7fff, nextWrap: 1 });
  });

  it("rejects out-of-range fields with RangeErrors naming them", () => {
    expect(() => encodeNotificationData(0x10000, 0, 0)).toThrow(/queueIndex/);
    expect(() => encodeNotificationData(0, 0x8000, 0)).toThrow(/nextOff/);
    expect(() => splitNotificationData(0, 0x10000)).toThrow(/availIdx/);
  });
});

describe("RateLimitedLog", () => {
  it("lets `burst` messages through per window and reports the dropped count in the next window", () => {
    let now = 0;
    const out: string[] = [];
    const log = new RateLimitedLog({
      sink: (m) => out.push(m),
      burst: 2,
      windowMs: 1000,
      now: () => now,
    });
    expect([log.log("a"), log.log("b"), log.log("c"), log.log("d")]).toEqual([
      true,
      true,
      false,
      false,
    ]);
    now = 1000;
    log.log("e");
    expect(out).toEqual(["a", "b", "(2 similar messages suppressed)", "e"]);
    expect(log.dropped).toBe(2);
    expect(() => new RateLimitedLog({ burst: 0 })).toThrow(/burst/);
  });
});
