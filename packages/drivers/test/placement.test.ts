// A driver checks at construction that its allocator's slots and its ring area lie in guest
// memory: a too-small memory fails there, with a RangeError saying what to change, instead of a
// GuestMemoryError out-of-bounds at the first request.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { type DeviceModel, InThreadMmio } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { BlkDriver, ConsoleDriver, NetDriver, RngDriver, SlabAllocator } from "../src/index.js";

const MiB = 0x100000;

function rig(model: DeviceModel, size: number) {
  const memory = createGuestMemory({ size, shared: false });
  const vm = new InThreadMmio(model, { memory });
  return { memory, vm };
}

describe("BlkDriver placement checks at construction", () => {
  it("refuses slots past the end of guest memory, naming allocator and the end address, before any register access", () => {
    // The drivers README's slab (64 × 4 KiB at 1 MiB) with the devices README's 1 MiB memory.
    const { memory, vm } = rig(new BlkDevice(MemoryDisk.ofSize(MiB)), MiB);
    const slab = new SlabAllocator(0x100000, 4096, 64);
    let error: unknown;
    try {
      new BlkDriver(vm.transport, memory, slab, { ringBase: 0x10000 });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RangeError);
    const message = (error as Error).message;
    expect(message).toMatch(/^allocator: its 64 slots of 4096 bytes at \[0x100000, 0x140000\)/);
    expect(message).toContain("make the guest memory reach 0x140000");
    expect(message).toContain("createGuestMemory({ size: 0x140000 })");
    expect(vm.device.exits).toBe(0);
  });

  it("accepts the same layout once the memory reaches the slots' end, and serves a request", async () => {
    const { memory, vm } = rig(new BlkDevice(MemoryDisk.ofSize(MiB)), 0x140000);
    const blk = new BlkDriver(vm.transport, memory, new SlabAllocator(0x100000, 4096, 64), {
      ringBase: 0x10000,
    });
    vm.line.handler = () => blk.onInterrupt();
    await blk.write(0, new Uint8Array(512).fill(3));
    expect((await blk.read(0, 512))[511]).toBe(3);
  });

  it("refuses a ring area that runs past guest memory, naming options.ringBase and its size", () => {
    const { memory, vm } = rig(new BlkDevice(MemoryDisk.ofSize(MiB)), MiB);
    const slab = new SlabAllocator(0x80000, 4096, 16);
    const bytes = BlkDriver.ringBytes(128, 15, true);
    expect(() => new BlkDriver(vm.transport, memory, slab, { ringBase: 0xff000 })).toThrow(
      new RangeError(
        `options.ringBase: the ring area [0xff000, 0x${(0xff000 + bytes).toString(16)}) (BlkDriver.ringBytes(128, 15, true) = ${bytes} bytes) is not all in writable guest memory: make the guest memory reach 0x${(0xff000 + bytes).toString(16)}, or move ringBase or choose a smaller queueSize`,
      ),
    );
  });

  it("refuses a ring area that overlaps the allocator's slots", () => {
    const { memory, vm } = rig(new BlkDevice(MemoryDisk.ofSize(MiB)), 0x200000);
    const slab = new SlabAllocator(0x10000, 4096, 64);
    expect(() => new BlkDriver(vm.transport, memory, slab, { ringBase: 0x20000 })).toThrow(
      /^options\.ringBase: the ring area \[0x20000, 0x[0-9a-f]+\) .* overlaps the allocator's slots \[0x10000, 0x50000\): place them apart$/,
    );
  });
});

describe("the other drivers check their allocator at construction too", () => {
  // The check comes before the driver reads a register, so the device behind it never matters.
  const slab = () => new SlabAllocator(0x70000, 4096, 32); // ends at 0x90000
  const builds: [string, (vm: InThreadMmio, m: GuestMemory) => unknown][] = [
    ["RngDriver", (vm, m) => new RngDriver(vm.transport, m, slab(), { ringBase: 0x1000 })],
    ["ConsoleDriver", (vm, m) => new ConsoleDriver(vm.transport, m, slab(), { ringBase: 0x1000 })],
    ["NetDriver", (vm, m) => new NetDriver(vm.transport, m, slab(), { ringBase: 0x1000 })],
  ];
  for (const [name, build] of builds) {
    it(`${name} refuses slots past the end of guest memory, naming allocator and 0x90000`, () => {
      const { memory, vm } = rig(new BlkDevice(MemoryDisk.ofSize(MiB)), 0x80000);
      expect(() => build(vm, memory)).toThrow(/^allocator: .*make the guest memory reach 0x90000/);
      expect(vm.device.exits).toBe(0);
    });
  }
});
