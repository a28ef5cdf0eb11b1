import { createGuestMemory } from "@virtio-ts/memory";
import {
  DeviceStatus,
  Feature,
  featureMask,
  MMIO_MAGIC,
  MmioInterrupt,
  MmioReg,
} from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";
import { MMIO_REGISTER_NAMES, MmioDevice, RateLimitedLog } from "../src/index.js";
import { ECHO_ID, EchoModel } from "./helpers/echo-model.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;

function device(version: 1 | 2 = 2, features = featureMask(Feature.RING_RESET)) {
  const model = new EchoModel(features);
  const memory = createGuestMemory({ size: 0x10000, shared: false });
  const dev = new MmioDevice(model, {
    memory,
    version,
    vendorId: 0x1234,
    log: new RateLimitedLog({ sink: () => {} }),
  });
  return { dev, model, core: dev.core };
}

const r = (dev: MmioDevice, reg: number) => dev.read(reg, 4);
const w = (dev: MmioDevice, reg: number, v: number) => dev.write(reg, 4, v);

function negotiate(dev: MmioDevice): void {
  w(dev, MmioReg.STATUS, ACKNOWLEDGE);
  w(dev, MmioReg.STATUS, ACKNOWLEDGE | DRIVER);
  w(dev, MmioReg.DRIVER_FEATURES_SEL, 1);
  w(dev, MmioReg.DRIVER_FEATURES, 1 | (1 << (Feature.RING_RESET - 32)));
  w(dev, MmioReg.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

describe("virtio-mmio version 2 registers (VIRTIO 1.3 §4.2.2)", () => {
  it("§4.2.2.1: reads MagicValue 0x74726976 and Version 2, then DeviceID and VendorID", () => {
    const { dev } = device();
    expect(r(dev, MmioReg.MAGIC_VALUE)).toBe(MMIO_MAGIC);
    expect(r(dev, MmioReg.MAGIC_VALUE)).toBe(0x74726976);
    expect(r(dev, MmioReg.VERSION)).toBe(2);
    expect(r(dev, MmioReg.DEVICE_ID)).toBe(ECHO_ID);
    expect(r(dev, MmioReg.VENDOR_ID)).toBe(0x1234);
  });

  it("DeviceFeatures shows the window DeviceFeaturesSel selects", () => {
    const { dev } = device(2, 0b1001n | featureMask(Feature.RING_RESET));
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(0b1001);
    w(dev, MmioReg.DEVICE_FEATURES_SEL, 1);
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(1 | (1 << 8));
    w(dev, MmioReg.DEVICE_FEATURES_SEL, 2);
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(0);
  });

  it("DriverFeatures writes the window DriverFeaturesSel selects", () => {
    const { dev, core } = device(2, 0b11n);
    w(dev, MmioReg.DRIVER_FEATURES, 0b10);
    w(dev, MmioReg.DRIVER_FEATURES_SEL, 1);
    w(dev, MmioReg.DRIVER_FEATURES, 1);
    expect(core.features).toBe(0b10n | (1n << 32n));
  });

  it("Status reads back what was kept; writing 0 resets and zeroes the selectors", () => {
    const { dev, core } = device();
    negotiate(dev);
    expect(r(dev, MmioReg.STATUS)).toBe(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    w(dev, MmioReg.DEVICE_FEATURES_SEL, 1);
    w(dev, MmioReg.STATUS, 0);
    expect(r(dev, MmioReg.STATUS)).toBe(0);
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(core.deviceFeatureWord(0));
  });

  it("queue registers: QueueSel, QueueNumMax, QueueNum, the six address halves, QueueReady read back", () => {
    const { dev, core } = device();
    negotiate(dev);
    w(dev, MmioReg.QUEUE_SEL, 1);
    expect(r(dev, MmioReg.QUEUE_NUM_MAX)).toBe(4);
    w(dev, MmioReg.QUEUE_SEL, 2);
    expect(r(dev, MmioReg.QUEUE_NUM_MAX)).toBe(0);
    expect(r(dev, MmioReg.QUEUE_READY)).toBe(0);
    w(dev, MmioReg.QUEUE_SEL, 0);
    expect(r(dev, MmioReg.QUEUE_NUM_MAX)).toBe(16);
    w(dev, MmioReg.QUEUE_NUM, 8);
    w(dev, MmioReg.QUEUE_DESC_LOW, 0x1000);
    w(dev, MmioReg.QUEUE_DESC_HIGH, 0);
    w(dev, MmioReg.QUEUE_DRIVER_LOW, 0x1080);
    w(dev, MmioReg.QUEUE_DRIVER_HIGH, 0);
    w(dev, MmioReg.QUEUE_DEVICE_LOW, 0x2000);
    w(dev, MmioReg.QUEUE_DEVICE_HIGH, 0);
    w(dev, MmioReg.QUEUE_READY, 1);
    expect(r(dev, MmioReg.QUEUE_READY)).toBe(1);
    expect(core.queue(0)?.size).toBe(8);
    expect(core.queueAddress(0, "device")).toBe(0x2000);
  });

  it("§4.2.2.1: QueueReset resets the selected queue and reads 0 once done; QueueReady then reads 0", () => {
    const { dev, model } = device();
    negotiate(dev);
    w(dev, MmioReg.QUEUE_NUM, 8);
    w(dev, MmioReg.QUEUE_DESC_LOW, 0x1000);
    w(dev, MmioReg.QUEUE_DRIVER_LOW, 0x1080);
    w(dev, MmioReg.QUEUE_DEVICE_LOW, 0x2000);
    w(dev, MmioReg.QUEUE_READY, 1);
    w(dev, MmioReg.QUEUE_RESET, 1);
    expect(r(dev, MmioReg.QUEUE_RESET)).toBe(0);
    expect(r(dev, MmioReg.QUEUE_READY)).toBe(0);
    expect(model.queueResets).toEqual([0]);
    w(dev, MmioReg.QUEUE_RESET, 2);
    expect(dev.invalidAccesses).toBe(1);
  });

  it("QueueNotify kicks the model; InterruptStatus and InterruptACK follow the core", () => {
    const { dev, model } = device();
    negotiate(dev);
    w(dev, MmioReg.QUEUE_NUM, 8);
    w(dev, MmioReg.QUEUE_DESC_LOW, 0x1000);
    w(dev, MmioReg.QUEUE_DRIVER_LOW, 0x1080);
    w(dev, MmioReg.QUEUE_DEVICE_LOW, 0x2000);
    w(dev, MmioReg.QUEUE_READY, 1);
    w(dev, MmioReg.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    w(dev, MmioReg.QUEUE_NOTIFY, 0);
    expect(model.kicks.map((k) => k.index)).toEqual([0]);
    dev.core.interrupt(0);
    dev.core.notifyConfigChange();
    expect(r(dev, MmioReg.INTERRUPT_STATUS)).toBe(MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG);
    w(dev, MmioReg.INTERRUPT_ACK, MmioInterrupt.CONFIG);
    expect(r(dev, MmioReg.INTERRUPT_STATUS)).toBe(MmioInterrupt.USED_BUFFER);
  });

  it("ConfigGeneration moves with device configuration changes", () => {
    const { dev } = device();
    const g = r(dev, MmioReg.CONFIG_GENERATION);
    dev.core.notifyConfigChange();
    expect(r(dev, MmioReg.CONFIG_GENERATION)).toBe(g + 1);
  });

  it("§4.2.2: shared memory registers describe no region: length -1 and base all ones", () => {
    const { dev } = device();
    w(dev, MmioReg.SHM_SEL, 0);
    expect(r(dev, MmioReg.SHM_LEN_LOW)).toBe(0xffffffff);
    expect(r(dev, MmioReg.SHM_LEN_HIGH)).toBe(0xffffffff);
    expect(r(dev, MmioReg.SHM_BASE_LOW)).toBe(0xffffffff);
    expect(r(dev, MmioReg.SHM_BASE_HIGH)).toBe(0xffffffff);
    expect(dev.invalidAccesses).toBe(0);
  });

  it("configuration space at 0x100 takes 1-, 2- and 4-byte aligned accesses", () => {
    const { dev } = device();
    expect(dev.read(0x100, 4)).toBe(0xc0ffee);
    expect(dev.read(0x100, 2)).toBe(0xffee);
    expect(dev.read(0x102, 1)).toBe(0xc0);
    expect(dev.read(0x101, 2)).toBe(0);
    expect(dev.read(0x100, 8)).toBe(0);
    expect(dev.read(0x10c, 4)).toBe(0);
    negotiate(dev);
    dev.write(0x100, 4, 0xabcd);
    expect(dev.read(0x100, 4)).toBe(0xabcd);
  });

  it("§4.2.2.2: control registers take only 32-bit aligned accesses: others read 0, writes are ignored", () => {
    const { dev, core } = device();
    expect(dev.read(MmioReg.MAGIC_VALUE, 2)).toBe(0);
    expect(dev.read(MmioReg.MAGIC_VALUE, 1)).toBe(0);
    expect(dev.read(MmioReg.MAGIC_VALUE + 1, 4)).toBe(0);
    expect(dev.read(MmioReg.MAGIC_VALUE, 8)).toBe(0);
    dev.write(MmioReg.STATUS, 1, ACKNOWLEDGE);
    dev.write(MmioReg.STATUS, 2, ACKNOWLEDGE);
    expect(core.status).toBe(0);
    expect(dev.invalidAccesses).toBe(6);
  });

  it("undefined offsets and the version 1 registers read 0 and ignore writes on version 2", () => {
    const { dev, core } = device();
    for (const off of [
      0x018, 0x01c, 0x02c, 0x048, 0x04c, 0x054, 0x068, 0x06c, 0x074, 0x0a8, 0x0c4, 0x0f8,
    ]) {
      expect(dev.read(off, 4)).toBe(0);
      dev.write(off, 4, 0xffffffff);
    }
    expect(dev.read(MmioReg.QUEUE_PFN, 4)).toBe(0);
    dev.write(MmioReg.GUEST_PAGE_SIZE, 4, 4096);
    dev.write(MmioReg.QUEUE_ALIGN, 4, 4096);
    dev.write(MmioReg.QUEUE_PFN, 4, 1);
    expect(core.queueReady(0)).toBe(false);
    expect(dev.invalidAccesses).toBe(28);
    expect(dev.exitCounts().Invalid).toBe(28);
  });

  it("§4.2.2.2: reads of write-only registers read 0 and writes to read-only registers are ignored", () => {
    const { dev, core } = device();
    w(dev, MmioReg.QUEUE_SEL, 1);
    expect(dev.read(MmioReg.QUEUE_SEL, 4)).toBe(0);
    expect(dev.read(MmioReg.QUEUE_NOTIFY, 4)).toBe(0);
    expect(dev.read(MmioReg.INTERRUPT_ACK, 4)).toBe(0);
    w(dev, MmioReg.MAGIC_VALUE, 0);
    w(dev, MmioReg.INTERRUPT_STATUS, 0);
    w(dev, MmioReg.CONFIG_GENERATION, 9);
    expect(r(dev, MmioReg.MAGIC_VALUE)).toBe(MMIO_MAGIC);
    expect(core.configGeneration).toBe(0);
    expect(dev.invalidAccesses).toBe(6);
  });

  it("counts every exit by register name", () => {
    const { dev } = device();
    r(dev, MmioReg.MAGIC_VALUE);
    r(dev, MmioReg.MAGIC_VALUE);
    w(dev, MmioReg.QUEUE_NOTIFY, 0);
    dev.read(0x104, 1);
    dev.read(0x300, 4);
    dev.read(0x06c, 4);
    expect(dev.exitCounts()).toEqual({ MagicValue: 2, QueueNotify: 1, Config: 2, Invalid: 1 });
    expect(dev.exits).toBe(6);
    dev.resetCounters();
    expect(dev.exits).toBe(0);
    expect(dev.exitCounts()).toEqual({});
    expect(MMIO_REGISTER_NAMES).toContain("QueueReset");
  });

  it("throws RangeError for impossible offsets or widths (VMM bugs), never for guest values", () => {
    const { dev } = device();
    expect(() => dev.read(-4, 4)).toThrow(/offset/);
    expect(() => dev.read(0.5, 4)).toThrow(/offset/);
    expect(() => dev.read(0, 3)).toThrow(/size/);
    expect(() => dev.write(MmioReg.STATUS, 4, -1)).not.toThrow();
    expect(
      () =>
        new MmioDevice(new EchoModel(), {
          memory: createGuestMemory({ size: 4096 }),
          version: 3 as 2,
        }),
    ).toThrow(/version/);
  });
});

describe("virtio-mmio version 1 (legacy) registers (VIRTIO 1.3 §4.2.4)", () => {
  it("reads Version 1 and offers no VERSION_1", () => {
    const { dev } = device(1, 0b1n | featureMask(Feature.RING_EVENT_IDX));
    expect(r(dev, MmioReg.VERSION)).toBe(1);
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(1 | (1 << Feature.RING_EVENT_IDX));
    w(dev, MmioReg.DEVICE_FEATURES_SEL, 1);
    expect(r(dev, MmioReg.DEVICE_FEATURES)).toBe(0);
  });

  it("GuestPageSize, QueueNum, QueueAlign and QueuePFN set up the legacy layout; QueuePFN reads back", () => {
    const { dev, core } = device(1, 0n);
    w(dev, MmioReg.GUEST_PAGE_SIZE, 0x1000);
    w(dev, MmioReg.QUEUE_SEL, 0);
    expect(r(dev, MmioReg.QUEUE_PFN)).toBe(0);
    expect(r(dev, MmioReg.QUEUE_NUM_MAX)).toBe(16);
    w(dev, MmioReg.QUEUE_NUM, 8);
    w(dev, MmioReg.QUEUE_ALIGN, 0x1000);
    w(dev, MmioReg.QUEUE_PFN, 3);
    expect(r(dev, MmioReg.QUEUE_PFN)).toBe(3);
    expect(core.queue(0)?.size).toBe(8);
    // §4.2.4: writing 0 to Status resets, and the device sets QueuePFN to 0 for all queues.
    w(dev, MmioReg.STATUS, 0);
    expect(r(dev, MmioReg.QUEUE_PFN)).toBe(0);
  });

  it("uses GuestPageSize for QueuePFN and ignores a page size that is not a power of 2", () => {
    const { dev, core } = device(1, 0n);
    w(dev, MmioReg.GUEST_PAGE_SIZE, 3000);
    expect(dev.invalidAccesses).toBe(1);
    w(dev, MmioReg.GUEST_PAGE_SIZE, 0x800);
    w(dev, MmioReg.QUEUE_NUM, 4);
    w(dev, MmioReg.QUEUE_PFN, 5);
    expect(core.queueAddress(0, "desc")).toBe(0); // legacy does not use the address registers
    expect(core.queue(0)).toBeDefined();
    expect(core.legacyQueuePfn(0)).toBe(5);
  });

  it("the version 2 registers read 0 and ignore writes on version 1", () => {
    const { dev, core } = device(1, 0n);
    for (const off of [
      MmioReg.QUEUE_READY,
      MmioReg.QUEUE_DESC_LOW,
      MmioReg.QUEUE_DRIVER_HIGH,
      MmioReg.SHM_SEL,
      MmioReg.SHM_LEN_LOW,
      MmioReg.SHM_BASE_HIGH,
      MmioReg.QUEUE_RESET,
      MmioReg.CONFIG_GENERATION,
    ]) {
      expect(dev.read(off, 4)).toBe(0);
      dev.write(off, 4, 1);
    }
    expect(core.queueReady(0)).toBe(false);
    expect(dev.invalidAccesses).toBe(16);
  });
});
