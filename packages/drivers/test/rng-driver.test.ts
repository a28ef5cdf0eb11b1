import { type EntropySource, RngDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { Feature, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio, MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import { ringLayoutAt } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { RngDeviceFault, RngDriver, SlabAllocator } from "../src/index.js";

const RING = 0x10000;

class CountingSource implements EntropySource {
  at = 0;
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) buf[i] = this.at++ & 0xff;
  }
}

function setup(o: { packed?: boolean; maxRequestBytes?: number; slots?: number } = {}) {
  const memory: GuestMemory = createGuestMemory({ size: 0x200000 });
  const source = new CountingSource();
  const model = new RngDevice({
    source,
    queueSize: 16,
    ...(o.maxRequestBytes === undefined ? {} : { maxRequestBytes: o.maxRequestBytes }),
  });
  const { device, transport } = new InThreadMmio(model, { memory, delivery: "none" });
  const slab = new SlabAllocator(0x100000, 256, o.slots ?? 8);
  const driver = new RngDriver(transport, memory, slab, {
    ringBase: RING,
    queueSize: 16,
    ...(o.packed === undefined ? {} : { packed: o.packed }),
  });
  const settle = async <T>(p: Promise<T>): Promise<T> => {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < 1000 && !done; i++) {
      driver.onInterrupt();
      await Promise.resolve();
    }
    return tracked;
  };
  return { memory, model, device, transport, slab, driver, settle };
}

/** Overwrite the length of the newest used element of a split ring (a hostile device). */
function corruptLastUsedLen(memory: GuestMemory, len: number): void {
  const used = ringLayoutAt(RING, 16).device;
  const idx = memory.readU16(used + 2);
  const slot = (idx - 1) & 15;
  memory.writeU32(used + 4 + slot * 8 + 4, len);
}

describe("RngDriver", () => {
  it("reads n random bytes, exactly the device's bytes in order", async () => {
    const s = setup({ packed: false });
    const got = await s.settle(s.driver.read(100));
    expect(got).toEqual(Uint8Array.from({ length: 100 }, (_, i) => i & 0xff));
    expect(s.slab.available).toBe(s.slab.slots);
  });

  it("keeps several requests in flight for a large read", async () => {
    const s = setup({ packed: false });
    const p = s.driver.read(2000);
    // 2000 bytes in 256-byte slots, 8 slots: all of them posted at once.
    expect(s.driver.inFlight).toBe(8);
    const got = await s.settle(p);
    expect(got.length).toBe(2000);
    expect(s.model.stats.bytes).toBe(2000);
    expect(s.model.stats.requests).toBeGreaterThanOrEqual(8);
  });

  it("serves concurrent reads in FIFO order", async () => {
    const s = setup({ packed: false });
    const [a, b] = await s.settle(Promise.all([s.driver.read(10), s.driver.read(5)]));
    expect([...a!]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect([...b!]).toEqual([10, 11, 12, 13, 14]);
  });

  it("takes only the used length when the device fills part of a buffer (§5.4.6.1)", async () => {
    const s = setup({ packed: false, maxRequestBytes: 7 });
    const got = await s.settle(s.driver.read(50));
    expect(got).toEqual(Uint8Array.from({ length: 50 }, (_, i) => i));
    expect(s.model.stats.requests).toBeGreaterThanOrEqual(8);
  });

  it("negotiates RING_PACKED when the device offers it and reads over a packed ring", async () => {
    const s = setup();
    expect(hasFeature(s.driver.features, Feature.RING_PACKED)).toBe(true);
    const got = await s.settle(s.driver.read(600));
    expect(got).toEqual(Uint8Array.from({ length: 600 }, (_, i) => i & 0xff));
  });

  it("rejects pending reads with a typed fault when a used length exceeds the buffer", async () => {
    const s = setup({ packed: false });
    const p = s.driver.read(16);
    corruptLastUsedLen(s.memory, 4096);
    const err = await s.settle(p).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RngDeviceFault);
    expect(err).toMatchObject({ code: "rng-ring-broken", cause: { code: "used-len-too-large" } });
    await expect(s.driver.read(4)).rejects.toBe(err);
  });

  it("rejects every pending read with rng-ring-broken when the device corrupts the used index", async () => {
    const s = setup({ packed: false });
    const p = s.driver.read(16);
    const used = ringLayoutAt(RING, 16).device;
    s.memory.writeU16(used + 2, 40); // 40 used entries on a ring of 16
    await expect(s.settle(p)).rejects.toBeInstanceOf(RngDeviceFault);
    await expect(s.driver.read(1)).rejects.toMatchObject({ code: "rng-ring-broken" });
  });

  it("a read of 0 bytes resolves at once and bad n throws RangeError naming n", async () => {
    const s = setup();
    expect((await s.driver.read(0)).length).toBe(0);
    expect(() => s.driver.read(-1)).toThrow(/^n must/);
    expect(() => s.driver.read(1.5)).toThrow(RangeError);
  });

  it("refuses a device that is not an entropy device", () => {
    const memory = createGuestMemory({ size: 0x100000 });
    const device = new MmioDevice(new RngDevice({ source: new CountingSource() }), { memory });
    const t = new MmioDriverTransport({
      read: (off, s) => (off === 8 ? 3 : device.read(off, s)),
      write: (off, s, v) => device.write(off, s, v),
    });
    expect(
      () => new RngDriver(t, memory, new SlabAllocator(0x80000, 64, 4), { ringBase: RING }),
    ).toThrow(RngDeviceFault);
  });
});
