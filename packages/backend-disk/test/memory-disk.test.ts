import { BackendError } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { MemoryDisk } from "../src/index.js";

describe("MemoryDisk", () => {
  it("reports capacity in 512-byte sectors and the block size", () => {
    const disk = MemoryDisk.ofSize(8192, { blockSize: 4096 });
    expect([disk.capacity, disk.blockSize, disk.readOnly]).toEqual([16, 4096, false]);
  });

  it("writes scattered buffers and reads them back into other scattered buffers", async () => {
    const disk = MemoryDisk.ofSize(4096);
    const data = Uint8Array.from({ length: 1024 }, (_, i) => i * 3);
    await disk.write(2, [data.subarray(0, 100), data.subarray(100)]);
    const a = new Uint8Array(600);
    const b = new Uint8Array(424);
    await disk.read(2, [a, b]);
    expect([...a, ...b]).toEqual([...data]);
  });

  it("writeZeroes and discard make the range read as zeroes", async () => {
    const disk = new MemoryDisk(new Uint8Array(2048).fill(9));
    await disk.writeZeroes(1, 1, true);
    await disk.discard(3, 1);
    expect([disk.bytes[511], disk.bytes[512], disk.bytes[1023], disk.bytes[1024]]).toEqual([
      9, 0, 0, 9,
    ]);
    expect(disk.bytes[1536]).toBe(0);
    await expect(disk.flush()).resolves.toBeUndefined();
  });

  it("rejects writes to a read-only disk with BackendError read-only", async () => {
    const disk = MemoryDisk.ofSize(1024, { readOnly: true });
    await expect(disk.write(0, [new Uint8Array(512)])).rejects.toMatchObject({
      name: "BackendError",
      code: "read-only",
    });
    await expect(disk.writeZeroes(0, 1, false)).rejects.toBeInstanceOf(BackendError);
  });

  it("rejects ranges past the capacity with BackendError out-of-range", async () => {
    const disk = MemoryDisk.ofSize(1024);
    await expect(disk.read(1, [new Uint8Array(1024)])).rejects.toMatchObject({
      code: "out-of-range",
    });
    await expect(disk.discard(2, 1)).rejects.toMatchObject({ code: "out-of-range" });
  });

  it("rejects a size that is not a multiple of 512 with a RangeError naming it", () => {
    expect(() => MemoryDisk.ofSize(1000)).toThrow(/size must be/);
    expect(() => new MemoryDisk(new Uint8Array(100))).toThrow(/bytes\.length/);
    expect(() => MemoryDisk.ofSize(512, { blockSize: 768 })).toThrow(/options\.blockSize/);
  });
});

describe("MemoryDisk's synchronous path", () => {
  it("has no readSync / writeSync unless created with synchronous: true (operations stay asynchronous)", () => {
    const d = MemoryDisk.ofSize(4096);
    expect(d.readSync).toBeUndefined();
    expect(d.writeSync).toBeUndefined();
  });

  it("with synchronous: true, readSync and writeSync move the bytes before returning, as read and write do", () => {
    const d = MemoryDisk.ofSize(4096, { synchronous: true });
    d.writeSync!(2, [Uint8Array.of(1, 2), new Uint8Array(510).fill(9)]);
    const a = new Uint8Array(3);
    const b = new Uint8Array(509);
    d.readSync!(2, [a, b]);
    expect([...a]).toEqual([1, 2, 9]);
    expect(b.every((x) => x === 9)).toBe(true);
  });

  it("writeSync on a read-only disk throws BackendError read-only and changes nothing", () => {
    const d = new MemoryDisk(new Uint8Array(1024), { readOnly: true, synchronous: true });
    expect(() => d.writeSync!(0, [new Uint8Array(512).fill(1)])).toThrow(
      expect.objectContaining({ code: "read-only" }),
    );
    expect(d.bytes.every((x) => x === 0)).toBe(true);
  });
});
