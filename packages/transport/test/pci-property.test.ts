// Property tests of virtio-pci: a hostile driver's random register traffic never throws out of
// the trap handlers and never breaks the device's presented invariants; and our driver side
// against our device side moves random data correctly in every combination of BAR kind,
// interrupt mode, access path, notification multiplier and ring type.
import {
  DeviceStatus,
  Feature,
  featureMask,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciIsr,
  PciStatus,
} from "@virtio-ts/spec";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type PciBarKind, PciDriverTransport, type VirtioPciDevice } from "../src/index.js";
import { COMMON_WIDTH, pciDevice, rc } from "./helpers/pci.js";

const C = PciCommonCfg;
const FIELDS = Object.keys(COMMON_WIDTH).map(Number);

/** One access of the hostile driver. */
type Op =
  | { k: "bringup"; accept: number }
  | { k: "init"; accept: number }
  | { k: "queue"; q: number; exp: number; base: number }
  | { k: "live" }
  | { k: "kick"; q: number }
  | { k: "field"; off: number; write: boolean; value: number }
  | { k: "notify"; rel: number; size: number; value: number }
  | { k: "isr" }
  | { k: "cfg"; off: number; size: number; write: boolean; value: number }
  | { k: "bar"; bar: number; off: number; size: number; write: boolean; value: number };

const sizes = fc.constantFrom(1, 2, 4, 8);
const small = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 4, 8, 16, 0x80, 0xff, 0xffff, 0xffffffff),
  fc.integer({ min: 0, max: 0xffffffff }),
);
const statusValue = fc.constantFrom(
  0,
  DeviceStatus.ACKNOWLEDGE,
  DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER,
  DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK,
  DeviceStatus.ACKNOWLEDGE |
    DeviceStatus.DRIVER |
    DeviceStatus.FEATURES_OK |
    DeviceStatus.DRIVER_OK,
  0xff,
);

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("bringup" as const),
      // Mostly without NOTIFICATION_DATA (bit 38), whose 32-bit kicks the "kick" op does not do.
      accept: fc.integer({ min: 0, max: 0x1ff }).map((a) => (a & 3 ? a & ~0x40 : a)),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("init" as const),
      accept: fc.integer({ min: 0, max: 0x1ff }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("queue" as const),
      q: fc.constantFrom(0, 1),
      exp: fc.integer({ min: 0, max: 4 }),
      base: fc.integer({ min: 0x100, max: 0xe00 }).map((b) => b * 16),
    }),
  },
  { weight: 3, arbitrary: fc.constant({ k: "live" as const }) },
  {
    weight: 6,
    arbitrary: fc.record({ k: fc.constant("kick" as const), q: fc.constantFrom(0, 0, 0, 1) }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("field" as const),
      off: fc.constantFrom(...FIELDS),
      write: fc.boolean(),
      value: small,
    }),
  },
  {
    weight: 1,
    arbitrary: fc
      .record({ k: fc.constant("field" as const), write: fc.constant(true), value: statusValue })
      .map((r) => ({ ...r, off: C.DEVICE_STATUS })),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("notify" as const),
      rel: fc.integer({ min: 0, max: 15 }),
      size: sizes,
      value: fc.integer({ min: 0, max: 0x3ffff }),
    }),
  },
  { weight: 2, arbitrary: fc.constant({ k: "isr" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("cfg" as const),
      off: fc.oneof(fc.integer({ min: 0, max: 0xff }), fc.constantFrom(0x04, 0x10, 0x14, 0x18)),
      size: sizes,
      write: fc.boolean(),
      value: small,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("bar" as const),
      bar: fc.constantFrom(0, 2),
      off: fc.integer({ min: 0, max: 4095 }),
      size: sizes,
      write: fc.boolean(),
      value: small,
    }),
  },
);

function apply(dev: VirtioPciDevice, o: Op): void {
  const w = (f: number, v: number) => dev.barWrite(0, f, COMMON_WIDTH[f]!, v);
  switch (o.k) {
    case "bringup":
      // A well-behaved driver's whole initialisation, so hostile traffic hits a live device.
      apply(dev, { k: "init", accept: o.accept });
      apply(dev, { k: "queue", q: 0, exp: 3, base: 0x1000 });
      apply(dev, { k: "live" });
      return;
    case "init": {
      // A correct negotiation of VERSION_1 plus a random subset of the offered bits 32–40.
      w(C.DEVICE_STATUS, 0);
      w(C.DEVICE_STATUS, DeviceStatus.ACKNOWLEDGE);
      w(C.DEVICE_STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
      w(C.DEVICE_FEATURE_SELECT, 1);
      const offered = dev.barRead(0, C.DEVICE_FEATURE, 4);
      w(C.DRIVER_FEATURE_SELECT, 1);
      w(C.DRIVER_FEATURE, (offered & (o.accept | 1)) >>> 0);
      w(C.DEVICE_STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
      return;
    }
    case "queue":
      w(C.QUEUE_SELECT, o.q);
      w(C.QUEUE_SIZE, 1 << o.exp);
      w(C.QUEUE_DESC_LO, o.base);
      w(C.QUEUE_DRIVER_LO, o.base + 0x400);
      w(C.QUEUE_DEVICE_LO, o.base + 0x800);
      w(C.QUEUE_ENABLE, 1);
      return;
    case "live":
      w(C.DEVICE_STATUS, dev.core.status | DeviceStatus.DRIVER_OK);
      return;
    case "kick":
      dev.barWrite(0, dev.layout.notify + o.q * dev.notifyOffMultiplier, 2, o.q);
      return;
    case "field":
      if (o.write) dev.barWrite(0, o.off, COMMON_WIDTH[o.off]!, o.value);
      else dev.barRead(0, o.off, COMMON_WIDTH[o.off]!);
      return;
    case "notify":
      dev.barWrite(0, dev.layout.notify + o.rel, o.size, o.value);
      return;
    case "isr":
      dev.barRead(0, dev.layout.isr, 1);
      return;
    case "cfg":
      if (o.write) dev.configWrite(o.off, o.size, o.value);
      else dev.configRead(o.off, o.size);
      return;
    case "bar": {
      const info = dev.bars.find((b) => b.index === o.bar);
      if (info === undefined) return;
      const off = o.off % info.size;
      if (o.write) dev.barWrite(o.bar, off, o.size, o.value);
      else dev.barRead(o.bar, off, o.size);
    }
  }
}

/** What the device presents must stay self-consistent whatever the driver did. */
function checkInvariants(dev: VirtioPciDevice): void {
  const core = dev.core;
  // §4.1.4.3.1: without RING_PACKED negotiated, queue_size presents 0 or a power of 2.
  const packed =
    (core.status & DeviceStatus.FEATURES_OK) !== 0 &&
    (core.features & featureMask(Feature.RING_PACKED)) !== 0n;
  for (let q = 0; q < core.numQueues; q++) {
    const size = core.queueSize(q);
    if (!packed) expect(size === 0 || (size & (size - 1)) === 0).toBe(true);
    expect(size).toBeLessThanOrEqual(core.queueMaxSize(q));
  }
  expect(core.status & ~0xff).toBe(0);
  // §4.1.4.5.1: the status register's interrupt bit is the OR of the ISR bits (MSI-X off);
  // INTx follows it unless disabled.
  const isr = core.interruptStatus & (PciIsr.QUEUE | PciIsr.CONFIG);
  const pending = !dev.msixEnabled && isr !== 0;
  expect((dev.configSpace[PciConfig.STATUS]! & PciStatus.INTERRUPT) !== 0).toBe(pending);
  expect(dev.intxAsserted).toBe(pending && (dev.command & PciCommand.INTX_DISABLE) === 0);
  expect(dev.configSpace[PciConfig.STATUS]! & PciStatus.CAP_LIST).toBe(PciStatus.CAP_LIST);
  expect(dev.configRead(PciConfig.VENDOR_ID, 4)).toBe(((0x1040 + 0x3e) << 16) | 0x1af4);
}

describe("VirtioPciDevice under random hostile register traffic", () => {
  it("never throws from a trap handler and keeps queue_size, ISR, status bit and INTx consistent", () => {
    const features =
      featureMask(Feature.RING_PACKED) |
      featureMask(Feature.RING_RESET) |
      featureMask(Feature.NOTIFICATION_DATA) |
      featureMask(Feature.RING_EVENT_IDX);
    const reach = { live: 0, kicks: 0, faulted: 0 };
    fc.assert(
      fc.property(
        fc.constantFrom<PciBarKind>("io", "memory32", "memory64"),
        fc.boolean(),
        fc.array(op, { minLength: 1, maxLength: 60 }),
        (bar, msi, ops) => {
          const { dev } = pciDevice({ features, msi, options: { bar } });
          for (const o of ops) {
            apply(dev, o);
            checkInvariants(dev);
          }
          if (dev.core.active) reach.live++;
          reach.kicks += dev.core.stats.notifies - dev.core.stats.ignoredNotifies;
          if (dev.core.stats.faults > 0) reach.faulted++;
          // Whatever happened, a reset gives a device that presents its defaults again.
          dev.barWrite(0, C.DEVICE_STATUS, 1, 0);
          expect(rc(dev, C.DEVICE_STATUS)).toBe(0);
          expect(rc(dev, C.QUEUE_ENABLE)).toBe(0);
          expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(0xffff);
          expect(dev.core.interruptStatus).toBe(0);
        },
      ),
      { numRuns: 150 },
    );
    // The generator reaches a live device, kicks that get through, and failed devices.
    expect(reach.live).toBeGreaterThan(10);
    expect(reach.kicks).toBeGreaterThan(5);
    expect(reach.faulted).toBeGreaterThan(5);
  });
});

describe("PciDriverTransport with VirtioPciDevice, every combination", () => {
  it("echoes random messages in every BAR kind, interrupt mode, access path, multiplier and ring type", () => {
    const ring = featureMask(Feature.RING_PACKED) | featureMask(Feature.RING_EVENT_IDX);
    fc.assert(
      fc.property(
        fc.record({
          bar: fc.constantFrom<PciBarKind>("io", "memory32", "memory64"),
          msix: fc.boolean(),
          access: fc.constantFrom<"bar" | "pci-cfg">("bar", "pci-cfg"),
          mult: fc.constantFrom(0, 2, 4, 4096),
          packed: fc.boolean(),
          size: fc.constantFrom(2, 4, 8),
          messages: fc.array(fc.uint8Array({ minLength: 1, maxLength: 48 }), {
            minLength: 1,
            maxLength: 12,
          }),
        }),
        (p) => {
          if (p.bar === "io" && p.mult === 4096) return; // larger than an I/O BAR may be
          const { dev, memory, host } = pciDevice({
            features: ring,
            msi: p.msix,
            options: { bar: p.bar, notifyOffMultiplier: p.mult },
          });
          let msiPending = false;
          let interrupts = 0;
          const drv: PciDriverTransport = new PciDriverTransport(dev, {
            interrupts: p.msix ? "msix" : "intx",
            access: p.access,
          });
          drv.negotiate((o) => (p.packed ? o : o & ~featureMask(Feature.RING_PACKED)));
          const q = drv.setupQueue<number>(0, memory, {
            size: p.size,
            desc: 0x1000,
            driver: 0x1400,
            device: 0x1800,
          });
          drv.driverOk();
          for (const [i, m] of p.messages.entries()) {
            memory.write(0x4000, m);
            expect(q.add([{ addr: 0x4000, len: m.length }], [{ addr: 0x5000, len: 64 }], i)).toBe(
              true,
            );
            const sent = host.msi.length;
            if (q.publish()) drv.notify(0);
            if (p.msix) {
              for (const [a, d] of host.msi.slice(sent)) msiPending ||= drv.receiveMsi(a, d);
            }
            const irq = p.msix ? msiPending : dev.intxAsserted;
            msiPending = false;
            if (irq) {
              interrupts++;
              expect(drv.takeInterrupt() & PciIsr.QUEUE).toBe(PciIsr.QUEUE);
            }
            expect(q.reap()).toBe(i);
            expect(memory.slice(0x5000, q.lastLen)).toEqual(m);
          }
          // The first used buffer always interrupts (EVENT_IDX or not); each was delivered.
          expect(interrupts).toBeGreaterThan(0);
          expect(dev.invalidAccesses).toBe(0);
          expect(dev.core.needsReset).toBe(false);
          if (p.msix) expect(dev.exitCounts().isr).toBeUndefined();
        },
      ),
      { numRuns: 60 },
    );
  });
});
