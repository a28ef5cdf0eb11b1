import { BalloonDevice, type BalloonDeviceOptions } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  BalloonConfig,
  BalloonFeature,
  DeviceId,
  DeviceStatus,
  Feature,
  hasFeature,
} from "@virtio-ts/spec";
import { MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  BalloonDeviceFault,
  BalloonDriver,
  type BalloonDriverOptions,
  type BalloonPageAllocator,
} from "../src/balloon.js";

const MIB = 1 << 20;
const MEM = 32 * MIB;
/** The pages the guest's allocator hands out: 8 MiB to 24 MiB. */
const POOL_FIRST = (8 * MIB) / 4096;
const POOL_PAGES = (16 * MIB) / 4096;

/** A stack of free PFNs; `taken` is what the balloon holds. */
class StackPool implements BalloonPageAllocator {
  readonly stack: number[] = [];
  readonly taken = new Set<number>();
  limit = Number.POSITIVE_INFINITY;
  constructor(first = POOL_FIRST, pages = POOL_PAGES) {
    for (let p = first + pages - 1; p >= first; p--) this.stack.push(p);
  }
  alloc(): number | undefined {
    if (this.taken.size >= this.limit) return undefined;
    const p = this.stack.pop();
    if (p !== undefined) this.taken.add(p);
    return p;
  }
  free(pfn: number): void {
    if (!this.taken.delete(pfn)) throw new Error(`PFN ${pfn} freed but not taken`);
    this.stack.push(pfn);
  }
}

interface Rig {
  memory: GuestMemory;
  device: BalloonDevice;
  mmio: MmioDevice;
  t: MmioDriverTransport;
  pool: StackPool;
  driver: BalloonDriver;
  irq: { pending: boolean };
  /** Deliver interrupts until none is pending (bounded). */
  pump(): void;
}

function rig(
  dev: Partial<BalloonDeviceOptions> = {},
  drv: Partial<BalloonDriverOptions> = {},
  pool = new StackPool(),
): Rig {
  const memory = createGuestMemory({ size: MEM });
  const device = new BalloonDevice({ ram: MEM, ...dev });
  const irq = { pending: false };
  const mmio = new MmioDevice(device, {
    memory,
    interrupt: () => {
      irq.pending = true;
    },
  });
  const t = new MmioDriverTransport({
    read: (o, s) => mmio.read(o, s),
    write: (o, s, v) => mmio.write(o, s, v),
  });
  const driver = new BalloonDriver(t, memory, { base: 0x10000, pages: pool, ...drv });
  const pump = () => {
    for (let i = 0; i < 10_000 && irq.pending; i++) {
      irq.pending = false;
      driver.onInterrupt();
    }
  };
  return { memory, device, mmio, t, pool, driver, irq, pump };
}

async function settle(r: Rig): Promise<void> {
  r.pump();
  let done = false;
  void r.driver.settled().then(() => {
    done = true;
  });
  for (let i = 0; i < 100 && !done; i++) {
    await Promise.resolve();
    r.pump();
  }
  expect(done, "the driver settled").toBe(true);
}

describe("BalloonDriver", () => {
  it("initialises the device with MUST_TELL_HOST, stats and reporting, and sends a first stats buffer (§5.5.5)", () => {
    const r = rig({}, { stats: () => ({ memFree: 5 * MIB, memTotal: 20 * MIB }) });
    const f = r.driver.features;
    expect(hasFeature(f, BalloonFeature.MUST_TELL_HOST)).toBe(true);
    expect(hasFeature(f, BalloonFeature.STATS_VQ)).toBe(true);
    expect(hasFeature(f, BalloonFeature.PAGE_REPORTING)).toBe(true);
    expect(hasFeature(f, BalloonFeature.PAGE_POISON)).toBe(false);
    expect(hasFeature(f, BalloonFeature.DEFLATE_ON_OOM)).toBe(false);
    expect(hasFeature(f, Feature.RING_PACKED)).toBe(true);
    expect(r.t.status & DeviceStatus.DRIVER_OK).toBe(DeviceStatus.DRIVER_OK);
    expect(r.device.guestStats).toMatchObject({ seq: 1, memFree: 5 * MIB, memTotal: 20 * MIB });
    expect(r.device.guestStats?.swapIn).toBeUndefined();
  });

  it("inflates to the device's target, writes actual, and deflates back (§5.5.6.1 MUST update actual)", async () => {
    const r = rig();
    r.device.setTarget(1000);
    await settle(r);
    expect(r.driver.pages).toBe(1000);
    expect(r.device.inflatedPages).toBe(1000);
    expect(r.device.actual).toBe(1000);
    expect(r.pool.taken.size).toBe(1000);
    for (const p of r.pool.taken) expect(r.device.isInflated(p)).toBe(true);
    // 256 PFNs per buffer, one buffer in flight at a time, like Linux.
    expect(r.driver.stats.inflates).toBe(4);
    r.device.setTarget(100);
    await settle(r);
    expect(r.device.inflatedPages).toBe(100);
    expect(r.device.actual).toBe(100);
    expect(r.pool.taken.size).toBe(100);
    expect(r.device.stats.malformed).toBe(0);
  });

  it("stops inflating when the allocator has no page left, and tries again on the next target", async () => {
    const pool = new StackPool();
    pool.limit = 300;
    const r = rig({}, {}, pool);
    r.device.setTarget(500);
    await settle(r);
    expect(r.driver.pages).toBe(300);
    expect(r.device.actual).toBe(300);
    expect(r.driver.stats.outOfPages).toBe(1);
    pool.limit = 1000;
    r.device.setTarget(400);
    await settle(r);
    expect(r.driver.pages).toBe(400);
  });

  it("answers each stats request with a new buffer holding the same statistics subset (§5.5.6.3.1)", () => {
    let free = 100;
    const r = rig({}, { stats: () => ({ memFree: free, available: free * 2, memTotal: 999 }) });
    for (let i = 0; i < 3; i++) {
      free += 10;
      expect(r.device.requestStats()).toBe(true);
      r.pump();
    }
    expect(r.device.guestStats).toMatchObject({
      seq: 4,
      memFree: 130,
      available: 260,
      memTotal: 999,
      caches: undefined,
    });
    expect(r.driver.stats.statsSent).toBe(4);
    expect(r.device.stats.malformed).toBe(0);
  });

  it("keeps reported pages until the device acknowledged the report (§5.5.6.7.1), and the device zeroes them", async () => {
    const r = rig();
    r.memory.fill(12 * MIB, 8192, 0x5a);
    const p = r.driver.report([{ addr: 12 * MIB, len: 8192 }]);
    r.pump();
    await p;
    expect(r.device.stats.pagesReported).toBe(2);
    expect(r.memory.slice(12 * MIB, 8192).every((b) => b === 0)).toBe(true);
    expect(() => r.driver.report([{ addr: 12 * MIB + 1, len: 4096 }])).toThrow(/runs\[0\]/);
    expect(() => r.driver.report([])).toThrow(/runs must hold/);
    const noReport = rig({ pageReporting: false });
    expect(() => noReport.driver.report([{ addr: 12 * MIB, len: 4096 }])).toThrow(
      /PAGE_REPORTING is not negotiated/,
    );
  });

  it("writes poison_val before DRIVER_OK and fills deflated pages with it (§5.5.6.6.1)", async () => {
    const r = rig({ discard: "keep" }, { poisonValue: 0xaaaaaaaa });
    expect(hasFeature(r.driver.features, BalloonFeature.PAGE_POISON)).toBe(true);
    expect(r.device.poisonValue).toBe(0xaaaaaaaa);
    r.device.setTarget(2);
    await settle(r);
    const pages = [...r.pool.taken];
    for (const p of pages) r.memory.fill(p * 4096, 4096, 0x11);
    r.device.setTarget(0);
    await settle(r);
    for (const p of pages) {
      expect(r.memory.slice(p * 4096, 4096).every((b) => b === 0xaa)).toBe(true);
    }
  });

  it("deflates on OOM only with DEFLATE_ON_OOM, and does not chase the target again until it changes", async () => {
    const r = rig({ deflateOnOom: true }, { deflateOnOom: true });
    r.device.setTarget(300);
    await settle(r);
    expect(r.driver.deflateOnOom(50)).toBe(50);
    r.pump();
    await settle(r);
    expect(r.driver.pages).toBe(250);
    expect(r.device.actual).toBe(250);
    expect(r.device.inflatedPages).toBe(250);
    const plain = rig();
    plain.device.setTarget(10);
    await settle(plain);
    expect(plain.driver.deflateOnOom(5)).toBe(0);
    expect(plain.driver.pages).toBe(10);
  });

  it("refuses a device that is not a balloon, setting FAILED", () => {
    const memory = createGuestMemory({ size: MEM });
    const other = new MmioDevice(
      {
        deviceId: DeviceId.RNG,
        features: 0n,
        queueMaxSizes: [64],
        configSize: 0,
        readConfig: () => 0,
        writeConfig: () => {},
        activate: () => {},
        onQueueNotify: () => {},
        reset: () => {},
      },
      { memory },
    );
    const t = new MmioDriverTransport({
      read: (o, s) => other.read(o, s),
      write: (o, s, v) => other.write(o, s, v),
    });
    expect(() => new BalloonDriver(t, memory, { base: 0x10000, pages: new StackPool() })).toThrow(
      BalloonDeviceFault,
    );
    expect(t.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });

  it("rejects pending waits with balloon-ring-broken when the device corrupts a used ring", async () => {
    const r = rig({}, { packed: false });
    r.device.setTarget(10);
    await settle(r);
    // Corrupt: jump the inflate queue's used index far ahead.
    const used = 0x10000 + ringUsedOffset(64);
    r.memory.writeU16(used + 2, 40);
    r.device.setTarget(20);
    r.pump();
    await expect(r.driver.settled()).rejects.toMatchObject({ code: "balloon-ring-broken" });
    await expect(r.driver.report([{ addr: 12 * MIB, len: 4096 }])).rejects.toBeInstanceOf(
      BalloonDeviceFault,
    );
  });

  it("keeps the device's count, actual, the allocator and the reports consistent over random targets and reports", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({
              kind: fc.constant("target" as const),
              pages: fc.integer({ min: 0, max: 1500 }),
            }),
            fc.record({
              kind: fc.constant("report" as const),
              pages: fc.integer({ min: 1, max: 8 }),
            }),
            fc.record({ kind: fc.constant("stats" as const) }),
          ),
          { maxLength: 12 },
        ),
        fc.boolean(),
        async (ops, packed) => {
          const pool = new StackPool();
          const r = rig({}, { packed, stats: () => ({ memFree: pool.stack.length * 4096 }) }, pool);
          for (const op of ops) {
            if (op.kind === "target") {
              r.device.setTarget(op.pages);
              await settle(r);
              expect(r.device.inflatedPages).toBe(op.pages);
              expect(r.device.actual).toBe(op.pages);
              expect(r.driver.pages).toBe(op.pages);
            } else if (op.kind === "report") {
              // Take free pages out of the allocator, report them, put them back once acknowledged.
              const pfns: number[] = [];
              for (let i = 0; i < op.pages; i++) {
                const p = r.pool.alloc();
                if (p !== undefined) pfns.push(p);
              }
              if (pfns.length === 0) continue;
              for (const p of pfns) r.memory.fill(p * 4096, 4096, 0xee);
              const before = r.device.stats.pagesReported;
              const done = r.driver.report(pfns.map((p) => ({ addr: p * 4096, len: 4096 })));
              r.pump();
              await done;
              expect(r.device.stats.pagesReported - before).toBe(pfns.length);
              for (const p of pfns) {
                expect(r.memory.slice(p * 4096, 4096).every((b) => b === 0)).toBe(true);
                expect(r.device.isInflated(p)).toBe(false);
                r.pool.free(p);
              }
            } else {
              r.device.requestStats();
              r.pump();
              expect(r.device.guestStats?.memFree).toBe(r.pool.stack.length * 4096);
            }
            // Pages are either in the balloon (taken, inflated) or free, never both.
            expect(r.pool.taken.size).toBe(r.device.inflatedPages);
            for (const p of r.pool.taken) expect(r.device.isInflated(p)).toBe(true);
          }
          expect(r.device.stats.malformed).toBe(0);
          expect(r.mmio.core.needsReset).toBe(false);
          expect(r.t.readConfig((c) => c.u32(BalloonConfig.ACTUAL))).toBe(r.device.inflatedPages);
        },
      ),
      { numRuns: 40 },
    );
  });
});

/** Offset of the used ring of a split queue of `size` in the driver's area (queue 0). */
function ringUsedOffset(size: number): number {
  const driver = size * 16;
  return Math.ceil((driver + 6 + 2 * size) / 4) * 4;
}
