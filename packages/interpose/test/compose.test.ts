import { MemoryDisk } from "@virtio-ts/backend-disk";
import type { BlockBackend } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { compose, composeAsync, layer, slice } from "../src/index.js";
import { encrypt } from "../src/node.js";

/** A wrapper that records, in `trace`, the order in which requests pass through it. */
function tracer(name: string, trace: string[]): (inner: BlockBackend) => BlockBackend {
  return (inner) => ({
    capacity: inner.capacity,
    blockSize: inner.blockSize,
    readOnly: inner.readOnly,
    read: (s, v) => {
      trace.push(`${name} read`);
      return inner.read(s, v);
    },
    write: (s, v) => {
      trace.push(`${name} write`);
      return inner.write(s, v);
    },
    flush: () => {
      trace.push(`${name} flush`);
      return inner.flush();
    },
    discard: (s, c) => inner.discard(s, c),
    writeZeroes: (s, c, u) => inner.writeZeroes(s, c, u),
  });
}

describe("compose", () => {
  it("puts the first wrapper closest to the disk: requests pass through the last one first", async () => {
    const trace: string[] = [];
    const disk = MemoryDisk.ofSize(4096);
    const stack = compose(disk, tracer("a", trace), tracer("b", trace), tracer("c", trace));
    await stack.write(0, [new Uint8Array(512).fill(1)]);
    await stack.flush();
    expect(trace).toEqual(["c write", "b write", "a write", "c flush", "b flush", "a flush"]);
    expect(disk.bytes[0]).toBe(1);
  });

  it("returns the back-end itself when there is no wrapper (one device, one back-end)", () => {
    const disk = MemoryDisk.ofSize(4096);
    expect(compose(disk)).toBe(disk);
  });

  it("curries factories with layer(): slice closest to the disk, encryption above it", async () => {
    const disk = MemoryDisk.ofSize(64 * 512);
    const key = new Uint8Array(64).map((_, i) => i + 1);
    const stack = compose(disk, layer(slice, { offset: 16, length: 16 }), layer(encrypt, key));
    expect(stack.capacity).toBe(16);
    const plain = new Uint8Array(512).fill(0x42);
    await stack.write(0, [plain]);
    // Ciphertext lands at sector 16 of the disk; what the device reads back is the plaintext.
    const stored = disk.bytes.subarray(16 * 512, 17 * 512);
    expect(stored.some((b) => b !== 0)).toBe(true);
    expect(stored.every((b) => b === 0x42)).toBe(false);
    expect(disk.bytes.subarray(0, 16 * 512).every((b) => b === 0)).toBe(true);
    const back = new Uint8Array(512);
    await stack.read(0, [back]);
    expect(back.every((b) => b === 0x42)).toBe(true);
  });

  it("builds asynchronous layers in order with composeAsync", async () => {
    const trace: string[] = [];
    const disk = MemoryDisk.ofSize(4096);
    const stack = await composeAsync(
      disk,
      async (inner) => tracer("async", trace)(inner),
      tracer("sync", trace),
    );
    await stack.read(0, [new Uint8Array(512)]);
    expect(trace).toEqual(["sync read", "async read"]);
  });

  it("rejects a wrapper that is not a function or does not return a back-end with a TypeError naming it", async () => {
    const disk = MemoryDisk.ofSize(4096);
    expect(() => compose(disk, 5 as never)).toThrow(/wrappers\[0\] must be a function/);
    expect(() => compose(disk, (i) => i, (() => ({})) as never)).toThrow(/wrappers\[1\]/);
    expect(() => compose(disk, (async (i: BlockBackend) => i) as never)).toThrow(/composeAsync/);
    await expect(composeAsync(disk, async () => null as never)).rejects.toThrow(/wrappers\[0\]/);
  });
});
