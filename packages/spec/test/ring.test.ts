import {
  PACKED_EVENT_F_WRAP_CTR,
  PackedEventFlags,
  packedEventOffset,
  packedEventOffWrap,
  packedEventWrapCounter,
  splitAvailEventOffset,
  splitUsedEventOffset,
  vringNeedEvent,
} from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";

describe("packed event suppression off_wrap words (VIRTIO 1.3 §2.8.14)", () => {
  it("packedEventOffWrap puts the offset in bits 0-14 and the wrap counter in bit 15", () => {
    expect(packedEventOffWrap(0, false)).toBe(0);
    expect(packedEventOffWrap(5, true)).toBe(0x8005);
    expect(packedEventOffWrap(0x7fff, 1)).toBe(0xffff);
    expect(packedEventOffWrap(0x7fff, 0)).toBe(0x7fff);
    expect(1 << PACKED_EVENT_F_WRAP_CTR).toBe(0x8000);
  });

  it("packedEventOffset and packedEventWrapCounter split every 16-bit word back into its parts", () => {
    for (let word = 0; word <= 0xffff; word++) {
      const offset = packedEventOffset(word);
      const wrap = packedEventWrapCounter(word);
      if (packedEventOffWrap(offset, wrap) !== word)
        throw new Error(`round trip failed at ${word}`);
    }
    expect(packedEventOffset(0x8123)).toBe(0x123);
    expect(packedEventWrapCounter(0x8123)).toBe(1);
    expect(packedEventWrapCounter(0x7fff)).toBe(0);
  });

  it("packedEventOffWrap names its argument when the offset does not fit 15 bits", () => {
    expect(() => packedEventOffWrap(0x8000, false)).toThrow(
      /offset must be an integer in \[0, 0x7fff\], got 32768/,
    );
    expect(() => packedEventOffWrap(-1, true)).toThrow(RangeError);
    expect(() => packedEventOffWrap(1.5, true)).toThrow(RangeError);
  });

  it("the DESC event flag value is 2, which needs VIRTIO_F_EVENT_IDX (§2.8.10)", () => {
    expect(PackedEventFlags.DESC).toBe(2);
  });
});

describe("split ring event fields (VIRTIO 1.3 §2.7.6, §2.7.8)", () => {
  it("used_event follows the avail ring entries and avail_event follows the used ring entries", () => {
    expect(splitUsedEventOffset(256)).toBe(4 + 2 * 256);
    expect(splitAvailEventOffset(256)).toBe(4 + 8 * 256);
  });

  it("vringNeedEvent asks for a notification exactly when the event index was crossed, across wrap-around", () => {
    expect(vringNeedEvent(5, 6, 5)).toBe(true);
    expect(vringNeedEvent(5, 5, 4)).toBe(false);
    expect(vringNeedEvent(0xffff, 1, 0xfffe)).toBe(true);
    expect(vringNeedEvent(2, 1, 0xfffe)).toBe(false);
  });
});
