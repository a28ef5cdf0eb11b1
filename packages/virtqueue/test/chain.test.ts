// DescriptorChain, the cursor a device queue fills: construction, segment access and the
// gather/scatter helpers. The cursor is filled here with begin/append, as the queues do.
import { createGuestMemory } from "@virtio-ts/memory";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

const mem = () => createGuestMemory({ size: 0x10000, shared: false });

/** A chain of readable segments [0x100,+3) [0x200,+0) [0x300,+200), writable [0x1000,+2) [0x2000,+100). */
function filled() {
  const chain = new DescriptorChain(8);
  chain.begin(5);
  chain.append(0x100, 3, false);
  chain.append(0x200, 0, false);
  chain.append(0x300, 200, false);
  chain.append(0x1000, 2, true);
  chain.append(0x2000, 100, true);
  return chain;
}

const pattern = (n: number, from = 0) =>
  Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

describe("DescriptorChain construction", () => {
  it("holds capacity segments in arrays created once", () => {
    const chain = new DescriptorChain(16);
    expect([chain.capacity, chain.addrs.length, chain.lens.length, chain.count]).toEqual([
      16, 16, 16, 0,
    ]);
    expect(new DescriptorChain(65536).capacity).toBe(65536);
  });

  it("refuses a capacity that is not an integer in [1, 65536], naming it", () => {
    for (const bad of [0, -1, 1.5, 65537, Number.NaN]) {
      expect(() => new DescriptorChain(bad)).toThrow(/capacity must be an integer in \[1, 65536\]/);
    }
  });
});

describe("DescriptorChain segments", () => {
  it("keeps readable segments first and sums bytes per direction", () => {
    const chain = filled();
    expect(chain).toMatchObject({
      head: 5,
      count: 5,
      readableCount: 3,
      readableBytes: 203,
      writableBytes: 102,
    });
    expect([0, 1, 2, 3, 4].map((i) => [chain.addr(i), chain.len(i), chain.writable(i)])).toEqual([
      [0x100, 3, false],
      [0x200, 0, false],
      [0x300, 200, false],
      [0x1000, 2, true],
      [0x2000, 100, true],
    ]);
  });

  it("refuses a segment index outside [0, count), naming it", () => {
    const chain = filled();
    for (const bad of [5, -1, 0.5, Number.NaN]) {
      expect(() => chain.addr(bad)).toThrow(/i must be a segment index in \[0, 5\)/);
      expect(() => chain.len(bad)).toThrow(RangeError);
      expect(() => chain.writable(bad)).toThrow(RangeError);
    }
  });

  it("begin forgets the previous chain", () => {
    const chain = filled();
    chain.begin(1);
    expect(chain).toMatchObject({
      head: 1,
      count: 0,
      readableCount: 0,
      readableBytes: 0,
      writableBytes: 0,
    });
    expect(() => chain.addr(0)).toThrow(RangeError);
  });
});

describe("DescriptorChain.copyFromReadable", () => {
  it("gathers across segments, skipping zero-length ones, from an offset", () => {
    const m = mem();
    m.write(0x100, pattern(3, 10));
    m.write(0x300, pattern(200, 50));
    const dst = new Uint8Array(6);
    expect(filled().copyFromReadable(m, 1, dst)).toBe(6);
    expect([...dst]).toEqual([11, 12, 50, 51, 52, 53]);
  });

  it("copies a large piece that fills only part of the destination", () => {
    const m = mem();
    m.write(0x100, pattern(3, 10));
    m.write(0x300, pattern(200, 50));
    const dst = new Uint8Array(203);
    expect(filled().copyFromReadable(m, 0, dst)).toBe(203);
    expect([...dst]).toEqual([...pattern(3, 10), ...pattern(200, 50)]);
  });

  it("stops at the end of the readable part and never reads the writable part", () => {
    const m = mem();
    m.write(0x300, pattern(200, 1));
    m.write(0x1000, new Uint8Array([0xee, 0xee]));
    const dst = new Uint8Array(16).fill(0x77);
    expect(filled().copyFromReadable(m, 195, dst)).toBe(8);
    expect([...dst.subarray(0, 8)]).toEqual([...pattern(8, 193)]);
    expect([...dst.subarray(8)]).toEqual(new Array(8).fill(0x77));
  });

  it("copies nothing for an offset at or past the end, or an empty destination", () => {
    const chain = filled();
    expect(chain.copyFromReadable(mem(), 203, new Uint8Array(4))).toBe(0);
    expect(chain.copyFromReadable(mem(), 2 ** 40, new Uint8Array(4))).toBe(0);
    expect(chain.copyFromReadable(mem(), 0, new Uint8Array(0))).toBe(0);
  });

  it("refuses an offset that is not a non-negative safe integer, naming it", () => {
    for (const bad of [-1, 0.5, Number.NaN, 2 ** 53]) {
      expect(() => filled().copyFromReadable(mem(), bad, new Uint8Array(1))).toThrow(
        /offset must be a non-negative safe integer/,
      );
    }
  });
});

describe("DescriptorChain.copyToWritable", () => {
  it("§2.7.5.1 scatters into the writable part only, never into a readable buffer", () => {
    const m = mem();
    m.fill(0x100, 3, 0xaa);
    m.fill(0x300, 200, 0xaa);
    const src = pattern(150, 1);
    expect(filled().copyToWritable(m, 0, src)).toBe(102);
    expect([...m.slice(0x1000, 2)]).toEqual([1, 2]);
    expect([...m.slice(0x2000, 100)]).toEqual([...pattern(100, 3)]);
    expect(m.readU8(0x2000 + 100)).toBe(0);
    expect([...m.slice(0x100, 3), ...m.slice(0x300, 200)].every((b) => b === 0xaa)).toBe(true);
  });

  it("starts offset bytes into the writable part", () => {
    const m = mem();
    expect(filled().copyToWritable(m, 1, new Uint8Array([9, 8, 7]))).toBe(3);
    expect([m.readU8(0x1000), m.readU8(0x1001), m.readU8(0x2000), m.readU8(0x2001)]).toEqual([
      0, 9, 8, 7,
    ]);
  });

  it("copies nothing for an offset at or past the end of the writable part", () => {
    expect(filled().copyToWritable(mem(), 102, new Uint8Array(1))).toBe(0);
  });

  it("copies nothing for a chain without writable segments", () => {
    const chain = new DescriptorChain(1);
    chain.begin(0);
    chain.append(0x100, 8, false);
    expect(chain.copyToWritable(mem(), 0, new Uint8Array(8))).toBe(0);
  });
});
