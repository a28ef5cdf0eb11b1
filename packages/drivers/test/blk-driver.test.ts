import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import {
  createGuestMemory,
  dmaWindows,
  type GuestMemory,
  TranslatedMemory,
  VirtioError,
} from "@virtio-ts/memory";
import { BlkStatus, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio, type MmioDevice } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { pattern as random } from "../../../test-support/pattern.js";
import { BlkDeviceFault, BlkDriver, BlkStatusError, SlabAllocator } from "../src/index.js";

interface Setup {
  readonly memory: GuestMemory;
  readonly disk: MemoryDisk;
  readonly model: BlkDevice;
  readonly device: MmioDevice;
  readonly driver: BlkDriver;
  readonly slab: SlabAllocator;
  /** Run the in-process device until `p` settles, reaping after each round. */
  settle<T>(p: Promise<T>): Promise<T>;
}

function setup(
  o: {
    sectors?: number;
    readOnly?: boolean;
    queueSize?: number;
    slots?: number;
    indirect?: boolean;
    eventIdx?: boolean;
    /** Accept RING_PACKED (default false: the tests that poke ring bytes assume a split ring). */
    packed?: boolean;
    maxDiscardSectors?: number;
    /** The memory the driver is given (default: the device's own map). */
    driverMemory?: (m: GuestMemory) => GuestMemory;
  } = {},
): Setup {
  const memory = createGuestMemory({ size: 0x400000 });
  const disk = new MemoryDisk(new Uint8Array((o.sectors ?? 2048) * 512), {
    readOnly: o.readOnly ?? false,
  });
  const model = new BlkDevice(disk, {
    queueSize: 256,
    serial: "virtio-ts-disk0",
    ...(o.maxDiscardSectors === undefined ? {} : { maxDiscardSectors: o.maxDiscardSectors }),
  });
  const { device, transport } = new InThreadMmio(model, { memory, delivery: "none" });
  const slab = new SlabAllocator(0x100000, 4096, o.slots ?? 256);
  const driver = new BlkDriver(transport, o.driverMemory?.(memory) ?? memory, slab, {
    ringBase: 0x10000,
    queueSize: o.queueSize ?? 128,
    packed: o.packed ?? false,
    ...(o.indirect === undefined ? {} : { indirect: o.indirect }),
    ...(o.eventIdx === undefined ? {} : { eventIdx: o.eventIdx }),
  });
  const settle = async <T>(p: Promise<T>): Promise<T> => {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < 10_000 && !done; i++) {
      await model.whenIdle();
      driver.onInterrupt();
      await new Promise((r) => setImmediate(r));
    }
    return tracked;
  };
  return { memory, disk, model, device, driver, slab, settle };
}

/** A fatal device-side fault for the NEEDS_RESET test. */
class BackendLost extends VirtioError {
  readonly code = "test-backend-lost";
}

describe("BlkDriver", () => {
  it("negotiates the blk features the device offers and reads capacity, blk_size and ro", () => {
    const s = setup({ sectors: 4096 });
    expect(s.driver.capacity).toBe(4096n);
    expect(s.driver.blockSize).toBe(512);
    expect(s.driver.readOnly).toBe(false);
    expect(s.driver.maxTransferBytes).toBeGreaterThanOrEqual(4096);
  });

  it("writes then reads back random data at random sectors with 32 requests in flight", async () => {
    const s = setup();
    const rnd = random(64, 7);
    const jobs = Array.from({ length: 32 }, (_, i) => ({
      // Disjoint 16-sector extents in a random order.
      sector: i * 64 + ((rnd[i] as number) % 48),
      data: random(512 * (1 + ((rnd[i + 32] as number) % 16)), i + 1),
    }));
    const writes = jobs.map((j) => s.driver.write(j.sector, j.data));
    expect(s.driver.inFlight).toBe(32);
    await s.settle(Promise.all(writes));
    const reads = jobs.map((j) => s.driver.read(j.sector, j.data.length));
    expect(s.driver.inFlight).toBe(32);
    const got = await s.settle(Promise.all(reads));
    for (let i = 0; i < jobs.length; i++) expect(got[i]).toEqual(jobs[i]?.data);
    expect(s.driver.inFlight).toBe(0);
    expect(s.slab.available).toBe(s.slab.slots);
  });

  it("queues excess requests in a FIFO when descriptors run out and completes them all", async () => {
    const s = setup({ queueSize: 8, indirect: false });
    const jobs = Array.from({ length: 32 }, (_, i) => s.driver.write(i * 2, random(1024, i + 9)));
    expect(s.driver.inFlight).toBeLessThanOrEqual(8);
    expect(s.driver.waiting).toBeGreaterThan(0);
    await s.settle(Promise.all(jobs));
    expect(s.driver.waiting).toBe(0);
    const back = await s.settle(s.driver.read(0, 64 * 512));
    for (let i = 0; i < 32; i++) {
      expect(back.subarray(i * 1024, i * 1024 + 1024)).toEqual(random(1024, i + 9));
    }
  });

  it("readInto fills the caller's buffer and settles with that same buffer, split or not", async () => {
    const s = setup({ slots: 8 });
    const data = random(s.driver.maxTransferBytes * 2 + 1024, 11);
    await s.settle(s.driver.write(20, data));
    const small = new Uint8Array(1024);
    expect(await s.settle(s.driver.readInto(20, small))).toBe(small);
    expect(small).toEqual(data.subarray(0, 1024));
    const big = new Uint8Array(data.length);
    expect(await s.settle(s.driver.readInto(20, big))).toBe(big);
    expect(big).toEqual(data);
    await expect(s.driver.readInto(0, new Uint8Array(100))).rejects.toThrow(/dst\.length/);
    await expect(s.driver.readInto(4096, new Uint8Array(512))).rejects.toThrow(/capacity/);
  });

  it("readInto a view of guest memory lets the device write it directly: one slot (the header) per request, not a bounce slot too", async () => {
    const s = setup({ slots: 8 });
    const data = random(s.driver.maxTransferBytes * 2 + 1024, 12);
    await s.settle(s.driver.write(40, data));
    // Guest memory above the ring area and the slab (which ends at 0x108000).
    const dst = s.memory.slice(0x200000, data.length, "write");
    const free = s.slab.available;
    const p = s.driver.readInto(40, dst);
    // Three requests (the read is split at maxTransferBytes), each holding only its header slot.
    expect(s.driver.inFlight).toBe(3);
    expect(free - s.slab.available).toBe(3);
    expect(await s.settle(p)).toBe(dst);
    expect(Buffer.from(dst).equals(Buffer.from(data))).toBe(true);
    expect(s.slab.available).toBe(free);
    // A host buffer bounces: a header slot and data slots.
    const host = new Uint8Array(1024);
    const q = s.driver.readInto(40, host);
    expect(free - s.slab.available).toBe(2);
    await s.settle(q);
    expect(host).toEqual(data.subarray(0, 1024));
  });

  it("readInto a guest view inside the driver's own slab is not handed to the device: it bounces, with the same data", async () => {
    const s = setup({ slots: 8 });
    const data = random(1024, 13);
    await s.settle(s.driver.write(60, data));
    // The last slot: free now, but the device must never be pointed into the allocator's area.
    const dst = s.memory.slice(0x100000 + 7 * 4096, 1024, "write");
    const free = s.slab.available;
    const p = s.driver.readInto(60, dst);
    expect(free - s.slab.available).toBe(2);
    await s.settle(p);
    expect(Buffer.from(dst).equals(Buffer.from(data))).toBe(true);
  });

  it("splits transfers longer than maxTransferBytes into several requests", async () => {
    const s = setup({ slots: 8 });
    const data = random(s.driver.maxTransferBytes * 3, 3);
    await s.settle(s.driver.write(10, data));
    expect(await s.settle(s.driver.read(10, data.length))).toEqual(data);
  });

  it("accepts VIRTIO_F_EVENT_IDX by default and declines it with eventIdx: false (§2.7.10)", async () => {
    const bit = featureMask(Feature.RING_EVENT_IDX);
    const on = setup();
    const off = setup({ eventIdx: false });
    expect(on.driver.features & bit).toBe(bit);
    expect(off.driver.features & bit).toBe(0n);
    expect(off.device.core.features & bit).toBe(0n);
    // Without EVENT_IDX the flags words suppress notifications; requests still complete.
    const data = random(4096, 21);
    await off.settle(off.driver.write(8, data));
    expect(await off.settle(off.driver.read(8, 4096))).toEqual(data);
    expect(off.device.exitCounts().QueueNotify).toBe(2);
  });

  it("flushes", async () => {
    const s = setup();
    await expect(s.settle(s.driver.flush())).resolves.toBeUndefined();
  });

  it("discards a range", async () => {
    const s = setup();
    await s.settle(s.driver.write(0, random(4096, 5)));
    await expect(s.settle(s.driver.discard(0, 8))).resolves.toBeUndefined();
  });

  it("writeZeroes makes the range read back as zeros, with and without unmap", async () => {
    const s = setup();
    await s.settle(s.driver.write(100, random(8192, 11)));
    await s.settle(s.driver.writeZeroes(100, 8));
    await s.settle(s.driver.writeZeroes(108, 8, true));
    expect(await s.settle(s.driver.read(100, 8192))).toEqual(new Uint8Array(8192));
  });

  it("getId returns the device serial", async () => {
    const s = setup();
    expect(await s.settle(s.driver.getId())).toBe("virtio-ts-disk0");
  });

  it("behind a translated memory (no cached slab view) the headers and status bytes go through the memory's calls, with the same results", async () => {
    // An identity window over all of memory: the driver writes the same bytes, but not through
    // the view of its slab it keeps for a plain memory map.
    const identity = (m: GuestMemory) =>
      new TranslatedMemory(m, dmaWindows([{ iova: 0, gpa: 0, size: 0x400000, access: "rw" }]));
    const s = setup({ driverMemory: identity });
    const data = random(8 * 512, 3);
    await s.settle(s.driver.write(77, data));
    expect(s.disk.bytes.subarray(77 * 512, 85 * 512)).toEqual(data);
    expect(await s.settle(s.driver.read(77, data.length))).toEqual(data);
    const ro = setup({ readOnly: true, driverMemory: identity });
    const err = await ro.settle(ro.driver.write(0, new Uint8Array(512))).catch((e: unknown) => e);
    expect((err as BlkStatusError).status).toBe(BlkStatus.IOERR);
  });

  it("a write to a read-only disk fails with BlkStatusError IOERR", async () => {
    const s = setup({ readOnly: true });
    expect(s.driver.readOnly).toBe(true);
    const err = await s.settle(s.driver.write(0, new Uint8Array(512))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlkStatusError);
    expect((err as BlkStatusError).status).toBe(BlkStatus.IOERR);
    expect((err as BlkStatusError).code).toBe("blk-ioerr");
  });

  it("discard on a read-only disk (DISCARD not offered) is rejected UNSUPP without a request", async () => {
    const s = setup({ readOnly: true });
    const err = await s.driver.discard(0, 1).catch((e: unknown) => e);
    expect((err as BlkStatusError).status).toBe(BlkStatus.UNSUPP);
    expect(s.driver.inFlight).toBe(0);
  });

  it("refuses reads, writes and ranges past capacity before sending anything (§5.2.6.1), and later requests still work", async () => {
    const s = setup({ sectors: 64 });
    const exits = s.device.exits;
    for (const p of [
      s.driver.read(63, 1024),
      s.driver.write(64, new Uint8Array(512)),
      s.driver.discard(60, 5),
      s.driver.writeZeroes(0, 65),
    ]) {
      const err = await p.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RangeError);
      expect((err as Error).message).toMatch(/capacity of 64 sectors/);
    }
    expect(s.device.exits).toBe(exits);
    expect(await s.settle(s.driver.read(63, 512))).toEqual(new Uint8Array(512));
  });

  it("rejects invalid arguments with a RangeError naming them", async () => {
    const s = setup();
    await expect(s.driver.read(-1, 512)).rejects.toThrow(/sector/);
    await expect(s.driver.read(0, 100)).rejects.toThrow(/length/);
    await expect(s.driver.write(0, new Uint8Array(3))).rejects.toThrow(/data\.length/);
    await expect(s.driver.discard(0, 0)).rejects.toThrow(/count/);
  });
});

describe("BlkDriver distrusts the device", () => {
  it("rejects a completion whose used length does not cover the status byte", async () => {
    const s = setup();
    const p = s.driver.flush();
    // The driver kicks at the end of the task (requests issued together share one kick).
    await new Promise((r) => setImmediate(r));
    await s.model.whenIdle();
    // Overwrite the used element's len (used ring of a 128-entry queue at 0x10000).
    const used = 0x10000 + 128 * 16 + 6 + 2 * 128;
    const usedAligned = Math.ceil(used / 4) * 4;
    s.memory.writeU32(usedAligned + 4 + 4, 0);
    s.driver.onInterrupt();
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlkDeviceFault);
    expect((err as BlkDeviceFault).code).toBe("blk-short-used");
  });

  it("fails every pending request, without throwing, when the device corrupts the used ring", async () => {
    const s = setup();
    const flush = s.driver.flush();
    const write = s.driver.write(0, new Uint8Array(512));
    await s.model.whenIdle();
    // A hostile device makes used.idx jump past the queue size (used ring of a 128-entry queue).
    const used = Math.ceil((0x10000 + 128 * 16 + 6 + 2 * 128) / 4) * 4;
    s.memory.writeU16(used + 2, 1000);
    expect(() => s.driver.onInterrupt()).not.toThrow();
    for (const p of [flush, write]) {
      const err = await p.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BlkDeviceFault);
      expect((err as BlkDeviceFault).code).toBe("blk-ring-broken");
    }
    expect(s.driver.inFlight).toBe(0);
    const later = await s.driver.read(0, 512).catch((e: unknown) => e);
    expect((later as BlkDeviceFault).code).toBe("blk-ring-broken");
  });

  it("uses the packed ring when the device offers it, with and without indirect tables (§2.8)", async () => {
    for (const indirect of [true, false]) {
      const s = setup({ packed: true, indirect });
      expect(hasFeature(s.driver.features, Feature.RING_PACKED)).toBe(true);
      const data = random(64 * 1024, 7);
      await s.settle(
        Promise.all([s.driver.write(8, data), s.driver.write(400, data.subarray(512))]),
      );
      expect(await s.settle(s.driver.read(8, data.length))).toEqual(data);
      expect(s.disk.bytes.subarray(400 * 512, 400 * 512 + data.length - 512)).toEqual(
        data.subarray(512),
      );
    }
  });

  it("splits a discard longer than max_discard_sectors into single-range requests (§5.2.5)", async () => {
    const s = setup({ maxDiscardSectors: 8 });
    const calls: [number, number][] = [];
    const discard = s.disk.discard.bind(s.disk);
    s.disk.discard = (sector: number, count: number) => {
      calls.push([sector, count]);
      return discard(sector, count);
    };
    await s.settle(s.driver.discard(100, 20));
    expect(calls.sort((a, b) => a[0] - b[0])).toEqual([
      [100, 8],
      [108, 8],
      [116, 4],
    ]);
  });

  it("fails every pending and later request with blk-needs-reset when the device sets DEVICE_NEEDS_RESET (§2.1.2)", async () => {
    const s = setup();
    // The device enters NEEDS_RESET (a fatal fault) and stops serving kicks.
    s.device.core.fail(new BackendLost("back-end lost"));
    const p = s.driver.write(0, new Uint8Array(512));
    expect(s.driver.onInterrupt()).toBe(0);
    const err = await p.catch((e: unknown) => e);
    expect((err as BlkDeviceFault).code).toBe("blk-needs-reset");
    const later = await s.driver.flush().catch((e: unknown) => e);
    expect((later as BlkDeviceFault).code).toBe("blk-needs-reset");
    expect(s.driver.inFlight).toBe(0);
  });
});
