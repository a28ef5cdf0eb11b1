import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { SliceBackend, slice } from "../src/index.js";

/** A guest with a BlkDriver talking to a BlkDevice over `disk` through the MMIO registers. */
function guest(disk: BlockBackend): { driver: BlkDriver; model: BlkDevice } {
  const memory = createGuestMemory({ size: 0x200000 });
  const model = new BlkDevice(disk, { queueSize: 16 });
  let driver: BlkDriver | undefined;
  const mmio = new MmioDevice(model, {
    memory,
    interrupt: () => queueMicrotask(() => driver?.onInterrupt()),
  });
  const transport = new MmioDriverTransport({
    read: (off, size) => mmio.read(off, size),
    write: (off, size, v) => mmio.write(off, size, v),
  });
  driver = new BlkDriver(transport, memory, new SlabAllocator(0x100000, 4096, 64), {
    ringBase: 0x10000,
    queueSize: 16,
  });
  return { driver, model };
}

describe("slice", () => {
  it("presents the window as a whole disk: capacity is the length, sector 0 is the offset", async () => {
    const disk = MemoryDisk.ofSize(64 * 512);
    const s = slice(disk, { offset: 16, length: 8 });
    expect([s.capacity, s.blockSize, s.readOnly, s.offset]).toEqual([8, 512, false, 16]);
    await s.write(0, [new Uint8Array(512).fill(5)]);
    await s.writeZeroes(7, 1, false);
    expect([disk.bytes[16 * 512 - 1], disk.bytes[16 * 512], disk.bytes[17 * 512]]).toEqual([
      0, 5, 0,
    ]);
    const back = new Uint8Array(512);
    await s.read(0, [back]);
    expect(back[100]).toBe(5);
  });

  it("rejects every request outside the slice with BackendError out-of-range, even unchecked ones", async () => {
    const disk = new MemoryDisk(new Uint8Array(64 * 512).fill(3));
    const s = slice(disk, { offset: 8, length: 8 });
    const one = new Uint8Array(512);
    // Each of these lies inside the inner disk, so only the slice can refuse them.
    await expect(s.read(8, [one])).rejects.toMatchObject({
      name: "BackendError",
      code: "out-of-range",
    });
    await expect(s.write(7, [new Uint8Array(1024)])).rejects.toMatchObject({
      code: "out-of-range",
    });
    await expect(s.write(-1, [one])).rejects.toMatchObject({ code: "out-of-range" });
    await expect(s.write(0.5, [one])).rejects.toMatchObject({ code: "out-of-range" });
    await expect(s.discard(4, 5)).rejects.toMatchObject({ code: "out-of-range" });
    await expect(s.writeZeroes(8, 1, true)).rejects.toMatchObject({ code: "out-of-range" });
    await expect(s.writeZeroes(0, Number.MAX_SAFE_INTEGER, true)).rejects.toMatchObject({
      code: "out-of-range",
    });
    expect(disk.bytes.every((b) => b === 3)).toBe(true);
  });

  it("refuses writes through a read-only slice with BackendError read-only", async () => {
    const disk = MemoryDisk.ofSize(16 * 512);
    const s = slice(disk, { offset: 0, length: 8, readOnly: true });
    expect(s.readOnly).toBe(true);
    await expect(s.write(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "read-only" });
    await expect(s.discard(0, 1)).rejects.toMatchObject({ code: "read-only" });
    await expect(s.read(0, [new Uint8Array(512)])).resolves.toBeUndefined();
  });

  it("rejects a slice that does not lie inside the back-end with a RangeError naming the option", () => {
    const disk = MemoryDisk.ofSize(64 * 512, { blockSize: 4096 });
    expect(() => slice(disk, { offset: 64, length: 1 })).toThrow(
      /options\.offset \+ options\.length/,
    );
    expect(() => slice(disk, { offset: 56, length: 9 })).toThrow(RangeError);
    expect(() => slice(disk, { offset: -8, length: 1 })).toThrow(/options\.offset/);
    expect(() => slice(disk, { offset: 0, length: 1.5 })).toThrow(/options\.length/);
    expect(() => slice(disk, { offset: 4, length: 8 })).toThrow(/multiple of 8 sectors/);
    expect(new SliceBackend(disk, { offset: 8, length: 56 }).capacity).toBe(56);
  });

  it("keeps two BlkDevices on two slices of one MemoryDisk isolated through real guest requests", async () => {
    const disk = MemoryDisk.ofSize(2 * 64 * 512);
    const a = guest(slice(disk, { offset: 0, length: 64 }));
    const b = guest(slice(disk, { offset: 64, length: 64 }));
    expect([a.model.backend.capacity, b.model.backend.capacity]).toEqual([64, 64]);
    // Each guest fills its whole disk with its own byte.
    await Promise.all([
      a.driver.write(0, new Uint8Array(64 * 512).fill(0xa1)),
      b.driver.write(0, new Uint8Array(64 * 512).fill(0xb2)),
    ]);
    expect(disk.bytes.subarray(0, 64 * 512).every((x) => x === 0xa1)).toBe(true);
    expect(disk.bytes.subarray(64 * 512).every((x) => x === 0xb2)).toBe(true);
    // Each reads back only its own data, and its last sector is the last one of its half.
    const lastA = await a.driver.read(63, 512);
    const firstB = await b.driver.read(0, 512);
    expect([lastA[0], lastA[511], firstB[0], firstB[511]]).toEqual([0xa1, 0xa1, 0xb2, 0xb2]);
    // Zeroing and discarding in A does not reach B.
    await a.driver.writeZeroes(32, 32);
    await a.driver.discard(0, 8);
    await a.driver.flush();
    expect(disk.bytes[63 * 512]).toBe(0);
    expect(disk.bytes.subarray(64 * 512).every((x) => x === 0xb2)).toBe(true);
    // A write past A's end is refused (by A's driver or A's device, whichever checks first)
    // and never lands in B's half.
    const err = await a.driver.write(64, new Uint8Array(512).fill(0xee)).then(
      () => undefined,
      (e: Error) => e.name,
    );
    expect(["RangeError", "BlkStatusError"]).toContain(err);
    expect(disk.bytes.subarray(64 * 512).every((x) => x === 0xb2)).toBe(true);
    expect(b.model.stats.ioErrors).toBe(0);
  });
});
