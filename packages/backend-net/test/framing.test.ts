import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeLengthPrefixed, LengthPrefixedDecoder, TunnelError } from "../src/index.js";

function stream(frames: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(frames.reduce((n, f) => n + 4 + f.length, 0));
  let at = 0;
  for (const f of frames) at += encodeLengthPrefixed(f, out.subarray(at));
  return out;
}

function collect(max?: number): { decoder: LengthPrefixedDecoder; got: number[][] } {
  const got: number[][] = [];
  const decoder = new LengthPrefixedDecoder(max, (f) => got.push([...f]));
  return { decoder, got };
}

const frames = [14, 60, 1514, 15].map((n, i) =>
  Uint8Array.from({ length: n }, (_, j) => (i * 31 + j * 7) & 0xff),
);
const expected = frames.map((f) => [...f]);

describe("QEMU stream framing", () => {
  it("writes a 4-byte big-endian length before the frame (QEMU net/stream.c: htonl(size))", () => {
    const out = new Uint8Array(4 + 300);
    expect(encodeLengthPrefixed(new Uint8Array(300).fill(9), out)).toBe(304);
    expect([...out.subarray(0, 5)]).toEqual([0, 0, 1, 44, 9]);
  });

  it("decodes frames coalesced into one chunk", () => {
    const { decoder, got } = collect();
    expect(decoder.push(stream(frames))).toBeUndefined();
    expect(got).toEqual(expected);
    expect(decoder.pendingBytes).toBe(0);
  });

  it("decodes the same frames when the stream is split at every byte boundary", () => {
    const bytes = stream(frames);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const { decoder, got } = collect();
      decoder.push(bytes.subarray(0, cut));
      decoder.push(bytes.subarray(cut));
      expect(got).toEqual(expected);
    }
  });

  it("decodes the stream fed one byte at a time", () => {
    const bytes = stream(frames);
    const { decoder, got } = collect();
    for (let i = 0; i < bytes.length; i++) {
      decoder.push(bytes.subarray(i, i + 1));
      expect(decoder.pendingBytes).toBeLessThanOrEqual(4 + 1514);
    }
    expect(got).toEqual(expected);
  });

  it("decodes the stream split at every pair of boundaries in a small case", () => {
    const small = [new Uint8Array(14).fill(1), new Uint8Array(16).fill(2)];
    const bytes = stream(small);
    for (let i = 0; i <= bytes.length; i++) {
      for (let j = i; j <= bytes.length; j++) {
        const { decoder, got } = collect();
        decoder.push(bytes.subarray(0, i));
        decoder.push(bytes.subarray(i, j));
        decoder.push(bytes.subarray(j));
        expect(got).toEqual(small.map((f) => [...f]));
      }
    }
  });

  it("rejects a zero length with a bad-length TunnelError and consumes nothing afterwards", () => {
    const { decoder, got } = collect();
    const err = decoder.push(Uint8Array.of(0, 0, 0, 0, ...stream(frames)));
    expect(err).toBeInstanceOf(TunnelError);
    expect([err?.code, err?.length]).toEqual(["bad-length", 0]);
    expect(decoder.push(stream(frames))).toBe(err);
    expect(got).toEqual([]);
  });

  it("rejects a length above the maximum frame size, even one above 2^31", () => {
    const a = collect(1518);
    const err = a.decoder.push(Uint8Array.of(0, 0, 5, 0xef)); // 1519
    expect([err?.code, err?.length, err?.maxFrameSize]).toEqual(["bad-length", 1519, 1518]);
    expect(err?.message).toMatch(/1519 bytes/);
    const b = collect();
    const { decoder } = b;
    decoder.push(Uint8Array.of(0xff, 0xff));
    expect(decoder.push(Uint8Array.of(0xff, 0xff))?.length).toBe(0xffff_ffff);
  });

  it("delivers the frames before a bad header and stops at it", () => {
    const { decoder, got } = collect();
    const bytes = Uint8Array.of(...stream([frames[0]!]), 0, 0, 0, 0);
    expect(decoder.push(bytes)?.code).toBe("bad-length");
    expect(got).toEqual([expected[0]]);
  });

  it("never throws on hostile input: random bytes in random chunks yield frames within bounds or one bad-length error", () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 32 }),
        fc.constantFrom([], [0, 0, 0, 20], [0, 0, 0, 0], [0xff, 0xff, 0xff, 0xff]),
        (chunks, prefix) => {
          const sizes: number[] = [];
          const decoder = new LengthPrefixedDecoder(100, (f) => sizes.push(f.length));
          let error: TunnelError | undefined;
          for (const c of [Uint8Array.from(prefix), ...chunks]) error = decoder.push(c) ?? error;
          for (const n of sizes) expect(n >= 1 && n <= 100).toBe(true);
          if (error !== undefined) expect(error.code).toBe("bad-length");
          expect(decoder.pendingBytes).toBeLessThanOrEqual(104);
        },
      ),
      { numRuns: 300 },
    );
  });
});
