// The README example, kept compiling and running (keep the two in sync).
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioDevice } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { BlkDevice, type BlockBackend } from "../src/blk.js";

describe("README example", () => {
  it("exposes a 1 MiB in-memory disk as 2048 sectors over virtio-mmio", () => {
    const bytes = new Uint8Array(1 << 20); // a 1 MiB disk in memory
    const backend: BlockBackend = {
      capacity: bytes.length / 512,
      blockSize: 512,
      readOnly: false,
      async read(sector, iovecs) {
        let at = sector * 512;
        for (const v of iovecs) {
          v.set(bytes.subarray(at, at + v.length));
          at += v.length;
        }
      },
      async write(sector, iovecs) {
        let at = sector * 512;
        for (const v of iovecs) {
          bytes.set(v, at);
          at += v.length;
        }
      },
      async flush() {},
      async discard() {},
      async writeZeroes(sector, count) {
        bytes.fill(0, sector * 512, (sector + count) * 512);
      },
    };

    const memory = createGuestMemory({ size: 0x100000 });
    const blk = new BlkDevice(backend, { serial: "disk0", queueSize: 128 });
    const device = new MmioDevice(blk, { memory }); // a VMM routes MMIO exits to device.read/write
    expect(device.read(0x100, 4)).toBe(2048);
  });
});
