import {
  DeviceStatus,
  Feature,
  featureMask,
  PciBar,
  PciCap,
  PciCapId,
  PciCapType,
  PciCfgCap,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciIsr,
  PciMsix,
  PciNotifyCap,
  PciStatus,
  VIRTIO_MSI_NO_VECTOR,
} from "@virtio-ts/spec";
import { QueueConfigError } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { PCI_REGISTER_NAMES, VirtioPciDevice } from "../src/index.js";
import { COMMON_WIDTH, capabilities, capOf, pciDevice, rc, wc } from "./helpers/pci.js";

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;
const C = PciCommonCfg;

/** Negotiate VERSION_1 plus `high` (bits 32–63, as a word) through the common configuration. */
function negotiate(dev: VirtioPciDevice, high = 0): void {
  wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE);
  wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
  wc(dev, C.DRIVER_FEATURE_SELECT, 1);
  wc(dev, C.DRIVER_FEATURE, 1 | high);
  wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

/** Configure queue `q` (size 8) at fixed addresses and enable it. */
function enableQueue(dev: VirtioPciDevice, q = 0, size = 8): void {
  wc(dev, C.QUEUE_SELECT, q);
  wc(dev, C.QUEUE_SIZE, size);
  wc(dev, C.QUEUE_DESC_LO, 0x1000 + q * 0x1000);
  wc(dev, C.QUEUE_DRIVER_LO, 0x1400 + q * 0x1000);
  wc(dev, C.QUEUE_DEVICE_LO, 0x1800 + q * 0x1000);
  wc(dev, C.QUEUE_ENABLE, 1);
}

const bit = (f: number) => 1 << (f - 32);

describe("VirtioPciDevice configuration header (VIRTIO 1.3 §4.1.2)", () => {
  it("§4.1.2.1: Vendor ID 0x1af4 and Device ID 0x1040 + the virtio device ID; Revision 1, Subsystem ID 0x40", () => {
    const { dev } = pciDevice();
    expect(dev.configRead(PciConfig.VENDOR_ID, 2)).toBe(0x1af4);
    expect(dev.configRead(PciConfig.DEVICE_ID, 2)).toBe(0x1040 + 0x3e);
    expect(dev.configRead(0, 4)).toBe(((0x1040 + 0x3e) << 16) | 0x1af4);
    expect(dev.configRead(PciConfig.REVISION_ID, 1)).toBe(1);
    expect(dev.configRead(PciConfig.SUBSYSTEM_VENDOR_ID, 2)).toBe(0x1af4);
    expect(dev.configRead(PciConfig.SUBSYSTEM_ID, 2)).toBe(0x40);
    expect(dev.configRead(PciConfig.HEADER_TYPE, 1)).toBe(0);
    expect(dev.configRead(PciConfig.INTERRUPT_PIN, 1)).toBe(1);
  });

  it("the class code follows the device type (blk: mass storage, net: ethernet, unknown: 0xff) or the option", () => {
    expect(pciDevice().dev.configRead(PciConfig.REVISION_ID, 4) >>> 8).toBe(0xff0000);
    const blk = pciDevice();
    (blk.model as { deviceId: number }).deviceId = 2;
    const dev = new VirtioPciDevice(blk.model, { memory: blk.memory });
    expect(dev.configRead(PciConfig.REVISION_ID, 4) >>> 8).toBe(0x010000);
    expect(dev.configRead(PciConfig.DEVICE_ID, 2)).toBe(0x1042);
    const net = pciDevice();
    (net.model as { deviceId: number }).deviceId = 1;
    expect(
      new VirtioPciDevice(net.model, { memory: net.memory }).configRead(
        PciConfig.REVISION_ID,
        4,
      ) >>> 8,
    ).toBe(0x020000);
    const custom = pciDevice({ options: { classCode: 0x078001, subsystemId: 0x1100 } });
    expect(custom.dev.configRead(PciConfig.REVISION_ID, 4) >>> 8).toBe(0x078001);
    expect(custom.dev.configRead(PciConfig.SUBSYSTEM_ID, 2)).toBe(0x1100);
  });

  it("§4.1.1: read-only header fields keep their value when written; the command register keeps only I/O, memory, master, INTx disable", () => {
    const { dev } = pciDevice();
    const before = dev.configSpace.slice();
    dev.configWrite(PciConfig.VENDOR_ID, 4, 0xdeadbeef);
    dev.configWrite(PciConfig.REVISION_ID, 4, 0xffffffff);
    dev.configWrite(PciConfig.SUBSYSTEM_VENDOR_ID, 4, 0);
    dev.configWrite(PciConfig.CAPABILITY_LIST, 1, 0x80);
    dev.configWrite(PciConfig.INTERRUPT_PIN, 1, 3);
    expect(dev.configSpace.subarray(0, 0x0c)).toEqual(before.subarray(0, 0x0c));
    expect(dev.configRead(PciConfig.CAPABILITY_LIST, 1)).toBe(0x40);
    expect(dev.configRead(PciConfig.INTERRUPT_PIN, 1)).toBe(1);
    dev.configWrite(PciConfig.COMMAND, 2, 0xffff);
    expect(dev.configRead(PciConfig.COMMAND, 2)).toBe(0x407);
    dev.configWrite(PciConfig.INTERRUPT_LINE, 1, 11);
    expect(dev.configRead(PciConfig.INTERRUPT_LINE, 1)).toBe(11);
    expect(dev.configRead(PciConfig.STATUS, 2)).toBe(PciStatus.CAP_LIST);
  });

  it("misaligned, 8-byte and extended-space configuration accesses read 0 or are ignored without throwing", () => {
    const { dev } = pciDevice();
    expect(dev.configRead(1, 2)).toBe(0);
    expect(dev.configRead(2, 4)).toBe(0);
    expect(dev.configRead(0, 8)).toBe(0);
    expect(dev.configRead(0x100, 4)).toBe(0);
    expect(dev.configRead(0xffc, 4)).toBe(0);
    dev.configWrite(PciConfig.COMMAND + 1, 2, 0xffff);
    dev.configWrite(0x200, 4, 0xffffffff);
    expect(dev.command).toBe(0);
    expect(dev.invalidAccesses).toBe(4);
    expect(() => dev.configRead(0x1000, 4)).toThrow(/offset/);
    expect(() => dev.configRead(0, 3)).toThrow(/size/);
  });
});

describe("VirtioPciDevice BARs", () => {
  it("§4.1.1: a 32-bit memory BAR 0 answers the all-ones size probe with its size mask and keeps only address bits", () => {
    const { dev } = pciDevice();
    const bar0 = PciConfig.BASE_ADDRESS_0;
    expect(dev.bars).toEqual([{ index: 0, kind: "memory32", size: 4096, purpose: "virtio" }]);
    expect(dev.configRead(bar0, 4)).toBe(0);
    dev.configWrite(bar0, 4, 0xffffffff);
    expect(dev.configRead(bar0, 4)).toBe(0xfffff000);
    dev.configWrite(bar0, 4, 0xfebf1234);
    expect(dev.configRead(bar0, 4)).toBe(0xfebf1000);
    for (let i = 1; i < 6; i++) {
      dev.configWrite(bar0 + 4 * i, 4, 0xffffffff);
      expect(dev.configRead(bar0 + 4 * i, 4)).toBe(0); // not implemented
    }
  });

  it("an I/O BAR has bit 0 set, at most 256 bytes, and a 64-bit BAR sizes both halves", () => {
    const io = pciDevice({ options: { bar: "io" } }).dev;
    const bar0 = PciConfig.BASE_ADDRESS_0;
    expect(io.bars[0]!.kind).toBe("io");
    expect(io.bars[0]!.size).toBeLessThanOrEqual(256);
    io.configWrite(bar0, 4, 0xffffffff);
    expect(io.configRead(bar0, 4)).toBe((~(io.bars[0]!.size - 1) | PciBar.SPACE_IO) >>> 0);
    const m64 = pciDevice({ options: { bar: "memory64" } }).dev;
    expect(m64.configRead(bar0, 4)).toBe(PciBar.MEM_TYPE_64);
    m64.configWrite(bar0, 4, 0xffffffff);
    m64.configWrite(bar0 + 4, 4, 0xffffffff);
    expect(m64.configRead(bar0, 4)).toBe(0xfffff004);
    expect(m64.configRead(bar0 + 4, 4)).toBe(0xffffffff);
    m64.configWrite(bar0, 4, 0xc0000000);
    m64.configWrite(bar0 + 4, 4, 0x2);
    m64.configWrite(PciConfig.COMMAND, 2, PciCommand.MEMORY);
    expect(m64.barMapping(0)).toEqual({ space: "memory", address: 0x2c0000000, size: 4096 });
  });

  it("tells the host where each BAR is decoded: on memory enable, on a move, never at the probe pattern, and off on disable", () => {
    const { dev, host } = pciDevice();
    const bar0 = PciConfig.BASE_ADDRESS_0;
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.MEMORY); // address 0: not placed yet
    expect(host.maps).toEqual([]);
    dev.configWrite(bar0, 4, 0xffffffff); // a probe with decoding on
    expect(host.maps).toEqual([]);
    dev.configWrite(bar0, 4, 0xfe000000);
    expect(host.maps).toEqual([[0, { space: "memory", address: 0xfe000000, size: 4096 }]]);
    dev.configWrite(bar0, 4, 0xfd000000);
    dev.configWrite(PciConfig.COMMAND, 2, 0);
    expect(host.maps.slice(1)).toEqual([
      [0, { space: "memory", address: 0xfd000000, size: 4096 }],
      [0, undefined],
    ]);
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.IO); // the wrong decoder: still off
    expect(host.maps).toHaveLength(3);
  });

  it("I/O BARs are placed on I/O enable, only below 0x10000, and a PCI reset unmaps them", () => {
    const { dev, host } = pciDevice({ options: { bar: "io", barAddresses: { virtio: 0xc000 } } });
    expect(dev.configRead(PciConfig.BASE_ADDRESS_0, 4)).toBe(0xc001);
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.IO | PciCommand.MASTER);
    expect(host.maps).toEqual([[0, { space: "io", address: 0xc000, size: dev.bars[0]!.size }]]);
    dev.configWrite(PciConfig.BASE_ADDRESS_0, 4, 0x10000);
    expect(host.maps.at(-1)).toEqual([0, undefined]);
    dev.configWrite(PciConfig.BASE_ADDRESS_0, 2, 0xd000); // a 16-bit write of the low half
    expect(dev.configRead(PciConfig.BASE_ADDRESS_0, 4)).toBe(0x1d001);
    expect(host.maps).toHaveLength(2); // still above 0xffff: still unmapped
    dev.configWrite(PciConfig.BASE_ADDRESS_0, 4, 0xd000);
    expect(host.maps.at(-1)).toEqual([
      0,
      { space: "io", address: 0xd000, size: dev.bars[0]!.size },
    ]);
    dev.reset();
    expect(host.maps.at(-1)).toEqual([0, undefined]);
    expect(dev.command).toBe(0);
    expect(dev.configRead(PciConfig.BASE_ADDRESS_0, 4)).toBe(0xc001);
  });

  it("refuses host mistakes with RangeError: a BAR it lacks, an offset past the BAR, a width of 3", () => {
    const { dev } = pciDevice();
    expect(() => dev.barRead(1, 0, 4)).toThrow(/bar 1 is not implemented/);
    expect(() => dev.barRead(6, 0, 4)).toThrow(/bar must be/);
    expect(() => dev.barRead(0, 4096, 4)).toThrow(/offset/);
    expect(() => dev.barWrite(0, 0, 3, 0)).toThrow(/size/);
  });

  it("options are checked: multiplier, I/O BAR size, MSI-X without sendMsi, device IDs PCI cannot carry", () => {
    expect(() => pciDevice({ options: { notifyOffMultiplier: 3 } })).toThrow(/notifyOffMultiplier/);
    expect(() => pciDevice({ options: { notifyOffMultiplier: 8192 } })).toThrow(
      /notifyOffMultiplier/,
    );
    expect(() =>
      pciDevice({ queues: new Array(80).fill(4), options: { bar: "io", notifyOffMultiplier: 4 } }),
    ).toThrow(/256/);
    expect(() => pciDevice({ options: { msixVectors: 3 } })).toThrow(TypeError);
    expect(() => pciDevice({ options: { bar: "mem" as "io" } })).toThrow(/options.bar/);
    const s = pciDevice();
    (s.model as { deviceId: number }).deviceId = 0x7e;
    expect(() => new VirtioPciDevice(s.model, { memory: s.memory })).toThrow(/deviceId/);
    // An I/O BAR with many queues falls back to one shared notification address.
    const many = pciDevice({ queues: new Array(80).fill(4), options: { bar: "io" } }).dev;
    expect(many.notifyOffMultiplier).toBe(0);
  });
});

describe("VirtioPciDevice capabilities (VIRTIO 1.3 §4.1.4)", () => {
  it("§4.1.4.2, §4.1.4.9.1: the list at 0x40 holds common, notify, ISR, device and PCI cfg access capabilities; each cap_len covers its extra data", () => {
    const { dev } = pciDevice();
    expect(dev.configRead(PciConfig.STATUS, 2) & PciStatus.CAP_LIST).toBe(PciStatus.CAP_LIST);
    const caps = capabilities(dev);
    expect(caps.map(([, id, t]) => [id, t])).toEqual([
      [PciCapId.VNDR, PciCapType.COMMON_CFG],
      [PciCapId.VNDR, PciCapType.NOTIFY_CFG],
      [PciCapId.VNDR, PciCapType.ISR_CFG],
      [PciCapId.VNDR, PciCapType.DEVICE_CFG],
      [PciCapId.VNDR, PciCapType.PCI_CFG],
    ]);
    const len = (t: number) => dev.configRead(capOf(dev, t) + PciCap.CAP_LEN, 1);
    expect(len(PciCapType.COMMON_CFG)).toBe(16);
    expect(len(PciCapType.NOTIFY_CFG)).toBe(PciNotifyCap.SIZE);
    expect(len(PciCapType.ISR_CFG)).toBe(16);
    expect(len(PciCapType.DEVICE_CFG)).toBe(16);
    expect(len(PciCapType.PCI_CFG)).toBe(PciCfgCap.SIZE);
    for (const [pos] of caps) {
      expect(pos % 4).toBe(0);
      expect(pos + dev.configRead(pos + PciCap.CAP_LEN, 1)).toBeLessThanOrEqual(0x100);
    }
  });

  it("§4.1.4.3.1: one common configuration capability, 4-byte aligned, 64 bytes in BAR 0", () => {
    const { dev } = pciDevice();
    const cap = capOf(dev, PciCapType.COMMON_CFG);
    expect(dev.configRead(cap + PciCap.BAR, 1)).toBe(0);
    expect(dev.configRead(cap + PciCap.OFFSET, 4) % 4).toBe(0);
    expect(dev.configRead(cap + PciCap.LENGTH, 4)).toBe(64);
  });

  it("§4.1.4.4.1: the notification capability: offset 4-aligned, multiplier 4, length covers every queue's 32-bit notification", () => {
    const { dev } = pciDevice({ queues: [16, 4, 8] });
    const cap = capOf(dev, PciCapType.NOTIFY_CFG);
    const offset = dev.configRead(cap + PciCap.OFFSET, 4);
    const length = dev.configRead(cap + PciCap.LENGTH, 4);
    const mult = dev.configRead(cap + PciNotifyCap.NOTIFY_OFF_MULTIPLIER, 4);
    expect(offset % 4).toBe(0);
    expect(mult).toBe(4);
    for (let q = 0; q < 3; q++) {
      wc(dev, C.QUEUE_SELECT, q);
      expect(length).toBeGreaterThanOrEqual(rc(dev, C.QUEUE_NOTIFY_OFF) * mult + 4);
    }
    expect(offset + length).toBeLessThanOrEqual(dev.bars[0]!.size);
  });

  it("§4.1.4.4.1: a multiplier of 2 is an even power of 2 and leaves VIRTIO_F_NOTIFICATION_DATA out; 0 shares one address", () => {
    const nd = featureMask(Feature.NOTIFICATION_DATA);
    const two = pciDevice({ features: nd, options: { notifyOffMultiplier: 2 } }).dev;
    expect(two.core.offeredFeatures & nd).toBe(0n);
    const cap = capOf(two, PciCapType.NOTIFY_CFG);
    expect(two.configRead(cap + PciCap.OFFSET, 4) % 2).toBe(0);
    expect(two.configRead(cap + PciCap.LENGTH, 4)).toBeGreaterThanOrEqual(1 * 2 + 2);
    const zero = pciDevice({ features: nd, options: { notifyOffMultiplier: 0 } }).dev;
    expect(zero.core.offeredFeatures & nd).toBe(nd);
    wc(zero, C.QUEUE_SELECT, 1);
    expect(rc(zero, C.QUEUE_NOTIFY_OFF)).toBe(0);
    expect(zero.configRead(capOf(zero, PciCapType.NOTIFY_CFG) + PciCap.LENGTH, 4)).toBe(4);
  });

  it("§4.1.4.5.1: one ISR capability; §4.1.4.6.1: the device configuration is 4-byte aligned, and absent without a configuration", () => {
    const { dev } = pciDevice();
    expect(capOf(dev, PciCapType.ISR_CFG)).toBeGreaterThan(0);
    const cap = capOf(dev, PciCapType.DEVICE_CFG);
    expect(dev.configRead(cap + PciCap.OFFSET, 4) % 4).toBe(0);
    expect(dev.configRead(cap + PciCap.LENGTH, 4)).toBe(12);
    const s = pciDevice();
    (s.model as { configSize: number }).configSize = 0;
    const none = new VirtioPciDevice(s.model, { memory: s.memory });
    expect(capabilities(none).map(([, , t]) => t)).not.toContain(PciCapType.DEVICE_CFG);
  });

  it("capability fields other than the PCI cfg access window are read-only", () => {
    const { dev } = pciDevice();
    const before = dev.configSpace.slice();
    for (let o = 0x40; o < capOf(dev, PciCapType.PCI_CFG); o += 4)
      dev.configWrite(o, 4, 0xa5a5a5a5);
    expect(dev.configSpace).toEqual(before);
  });

  it("the device configuration structure reaches the model with 1-, 2- and 4-byte accesses", () => {
    const { dev, model } = pciDevice();
    const base = dev.layout.device;
    expect(dev.barRead(0, base, 4)).toBe(0xc0ffee);
    expect(dev.barRead(0, base, 1)).toBe(0xee);
    expect(dev.barRead(0, base + 2, 2)).toBe(0xc0);
    model.config.setUint32(8, 0x11223344, true);
    expect(dev.barRead(0, base + 8, 4)).toBe(0x11223344);
    expect(dev.barRead(0, base + 1, 4)).toBe(0); // misaligned: the core refuses it
    expect(dev.exitCounts().device_config).toBe(5);
  });
});

describe("VirtioPciDevice common configuration (VIRTIO 1.3 §4.1.4.3)", () => {
  it("§4.1.4.3.1: device_feature shows the offered bits from device_feature_select × 32, and 0 for any other select", () => {
    const { dev } = pciDevice({ features: 0b101n | featureMask(Feature.RING_RESET) });
    expect(rc(dev, C.DEVICE_FEATURE)).toBe(0b101);
    wc(dev, C.DEVICE_FEATURE_SELECT, 1);
    expect(rc(dev, C.DEVICE_FEATURE_SELECT)).toBe(1);
    expect(rc(dev, C.DEVICE_FEATURE)).toBe(1 | bit(Feature.RING_RESET));
    for (const sel of [2, 3, 4, 0x80000000, 0xffffffff]) {
      wc(dev, C.DEVICE_FEATURE_SELECT, sel);
      expect(rc(dev, C.DEVICE_FEATURE)).toBe(0);
    }
  });

  it("§4.1.4.3.1: driver_feature presents the valid bits the driver wrote at driver_feature_select × 32", () => {
    const { dev } = pciDevice({ features: 0b101n });
    wc(dev, C.DRIVER_FEATURE, 0b111);
    expect(rc(dev, C.DRIVER_FEATURE)).toBe(0b101);
    wc(dev, C.DRIVER_FEATURE_SELECT, 1);
    wc(dev, C.DRIVER_FEATURE, 0xffffffff);
    expect(rc(dev, C.DRIVER_FEATURE)).toBe(1);
    wc(dev, C.DRIVER_FEATURE_SELECT, 7);
    wc(dev, C.DRIVER_FEATURE, 0xffffffff);
    expect(rc(dev, C.DRIVER_FEATURE)).toBe(0);
    expect(rc(dev, C.NUM_QUEUES)).toBe(2);
  });

  it("§4.1.4.3.1: config_generation changes after the driver read a changed configuration, even after 256 changes", () => {
    const { dev, model } = pciDevice();
    negotiate(dev);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    const g0 = rc(dev, C.CONFIG_GENERATION);
    expect(rc(dev, C.CONFIG_GENERATION)).toBe(g0);
    model.setCounter(5n);
    expect(dev.barRead(0, dev.layout.device + 4, 4)).toBe(5);
    const g1 = rc(dev, C.CONFIG_GENERATION);
    expect(g1).not.toBe(g0);
    for (let i = 0; i < 256; i++) model.setCounter(BigInt(i + 10));
    expect(dev.barRead(0, dev.layout.device + 4, 4)).toBe(265);
    expect(rc(dev, C.CONFIG_GENERATION)).not.toBe(g1);
    expect(dev.core.configGeneration).toBe(257);
  });

  it("§4.1.4.3.1, §4.1.5.1.2.1: writing 0 to device_status resets the device, which then presents 0; every event is unmapped and the selectors return to 0", () => {
    const { dev, model } = pciDevice({ msi: true });
    negotiate(dev);
    enableQueue(dev);
    wc(dev, C.QUEUE_MSIX_VECTOR, 1);
    wc(dev, C.CONFIG_MSIX_VECTOR, 0);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    expect(model.activations).toBe(1);
    wc(dev, C.DEVICE_STATUS, 0);
    expect(rc(dev, C.DEVICE_STATUS)).toBe(0);
    expect(model.resets).toBe(1);
    expect(rc(dev, C.QUEUE_SELECT)).toBe(0);
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(0);
    expect(rc(dev, C.QUEUE_SIZE)).toBe(16);
    // §4.1.5.1.2.1: all queue and configuration change events are unmapped upon reset.
    expect(rc(dev, C.QUEUE_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
    expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
  });

  it("§4.1.4.3.1: queue_enable is 0 on reset and reads 1 once enabled; the address halves read back", () => {
    const { dev } = pciDevice();
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(0);
    negotiate(dev);
    enableQueue(dev);
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(1);
    expect(rc(dev, C.QUEUE_SIZE)).toBe(8);
    expect(rc(dev, C.QUEUE_DESC_LO)).toBe(0x1000);
    expect(rc(dev, C.QUEUE_DRIVER_LO)).toBe(0x1400);
    expect(rc(dev, C.QUEUE_DEVICE_LO)).toBe(0x1800);
    expect(rc(dev, C.QUEUE_DEVICE_HI)).toBe(0);
    expect(dev.core.queueLayout(0)).toEqual({
      size: 8,
      desc: 0x1000,
      driver: 0x1400,
      device: 0x1800,
    });
  });

  it("§4.1.3.2: the two halves of a 64-bit field are written and read independently, high half first as well", () => {
    const { dev } = pciDevice();
    negotiate(dev);
    wc(dev, C.QUEUE_DESC_HI, 0x12);
    wc(dev, C.QUEUE_DESC_LO, 0x3400);
    expect(rc(dev, C.QUEUE_DESC_HI)).toBe(0x12);
    expect(rc(dev, C.QUEUE_DESC_LO)).toBe(0x3400);
    expect(dev.core.queueAddress(0, "desc")).toBe(0x12_0000_3400);
  });

  it("§4.1.4.3.1: with VIRTIO_F_RING_RESET, queue_reset reads 0 on reset and after enable, resets the queue on 1, then reads 0 with queue_enable 0", () => {
    const { dev, model } = pciDevice({ features: featureMask(Feature.RING_RESET) });
    expect(rc(dev, C.QUEUE_RESET)).toBe(0);
    negotiate(dev, bit(Feature.RING_RESET));
    enableQueue(dev);
    expect(rc(dev, C.QUEUE_RESET)).toBe(0);
    wc(dev, C.QUEUE_RESET, 1);
    expect(rc(dev, C.QUEUE_RESET)).toBe(0);
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(0);
    expect(rc(dev, C.QUEUE_SIZE)).toBe(16);
    expect(model.queueResets).toEqual([0]);
    enableQueue(dev); // §4.1.4.3.2: the driver MAY re-enable it
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(1);
  });

  it("§4.1.4.3.1: queue_size is 0 for an unavailable queue and for a queue_select past num_queues", () => {
    const { dev } = pciDevice({ queues: [16, 0] });
    wc(dev, C.QUEUE_SELECT, 1);
    expect(rc(dev, C.QUEUE_SIZE)).toBe(0);
    for (const sel of [2, 0x7fff, 0xffff]) {
      wc(dev, C.QUEUE_SELECT, sel);
      expect(rc(dev, C.QUEUE_SELECT)).toBe(sel);
      expect(rc(dev, C.QUEUE_SIZE)).toBe(0);
      expect(rc(dev, C.QUEUE_ENABLE)).toBe(0);
      expect(rc(dev, C.QUEUE_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
      expect(rc(dev, C.QUEUE_NOTIFY_OFF)).toBe(0);
      expect(rc(dev, C.QUEUE_DESC_LO)).toBe(0);
    }
  });

  it("out-of-range queue_select: every queue field write is ignored without a fault", () => {
    const { dev } = pciDevice();
    negotiate(dev);
    wc(dev, C.QUEUE_SELECT, 9);
    for (const f of [
      C.QUEUE_SIZE,
      C.QUEUE_MSIX_VECTOR,
      C.QUEUE_ENABLE,
      C.QUEUE_DESC_LO,
      C.QUEUE_RESET,
    ]) {
      wc(dev, f, 1);
    }
    expect(dev.core.needsReset).toBe(false);
    expect(dev.core.stats.faults).toBe(0);
    expect(rc(dev, C.QUEUE_SIZE)).toBe(0);
  });

  it("§4.1.4.3.1: without RING_PACKED queue_size only ever presents a power of 2; a driver writing 3 or 32 (> max) gets DEVICE_NEEDS_RESET", () => {
    for (const bad of [3, 12, 32, 0xffff, 0]) {
      const { dev } = pciDevice();
      negotiate(dev);
      wc(dev, C.QUEUE_SIZE, bad);
      expect(rc(dev, C.QUEUE_SIZE)).toBe(16);
      expect(rc(dev, C.DEVICE_STATUS) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(
        DeviceStatus.DEVICE_NEEDS_RESET,
      );
      expect(dev.core.lastFault).toBeInstanceOf(QueueConfigError);
      expect((dev.core.lastFault as QueueConfigError).value).toBe(bad);
    }
  });

  it("§4.1.4.3.2: with RING_PACKED any size from 1 to the maximum is taken, 0 is a fault", () => {
    const packed = featureMask(Feature.RING_PACKED);
    const ok = pciDevice({ features: packed }).dev;
    negotiate(ok, bit(Feature.RING_PACKED));
    wc(ok, C.QUEUE_SIZE, 3);
    expect(rc(ok, C.QUEUE_SIZE)).toBe(3);
    expect(ok.core.needsReset).toBe(false);
    const zero = pciDevice({ features: packed }).dev;
    negotiate(zero, bit(Feature.RING_PACKED));
    wc(zero, C.QUEUE_SIZE, 0);
    expect(zero.core.needsReset).toBe(true);
  });

  it("§4.1.4.3.2: a write of 0 (or 2) to queue_enable puts the device into DEVICE_NEEDS_RESET; a second enable changes nothing", () => {
    for (const v of [0, 2]) {
      const { dev } = pciDevice();
      negotiate(dev);
      wc(dev, C.QUEUE_ENABLE, v);
      expect(dev.core.needsReset).toBe(true);
      expect((dev.core.lastFault as QueueConfigError).field).toBe("enable");
    }
    const { dev, model } = pciDevice();
    negotiate(dev);
    enableQueue(dev);
    const invalid = dev.invalidAccesses;
    wc(dev, C.QUEUE_ENABLE, 1);
    expect(dev.invalidAccesses).toBe(invalid + 1);
    expect(dev.core.needsReset).toBe(false);
    expect(rc(dev, C.QUEUE_ENABLE)).toBe(1);
    expect(model.enabled).toEqual([]); // not activated yet: onQueueEnable is for later enables
  });

  it("§4.1.4.3.2: writes to device_feature, num_queues, config_generation, queue_notify_off, queue_notif_config_data are ignored", () => {
    const { dev } = pciDevice();
    const before = [C.DEVICE_FEATURE, C.NUM_QUEUES, C.CONFIG_GENERATION, C.QUEUE_NOTIFY_OFF].map(
      (f) => rc(dev, f),
    );
    for (const f of [
      C.DEVICE_FEATURE,
      C.NUM_QUEUES,
      C.CONFIG_GENERATION,
      C.QUEUE_NOTIFY_OFF,
      C.QUEUE_NOTIF_CONFIG_DATA,
      C.ADMIN_QUEUE_INDEX,
      C.ADMIN_QUEUE_NUM,
    ]) {
      wc(dev, f, 0xffffffff);
    }
    expect(dev.invalidAccesses).toBe(7);
    expect(
      [C.DEVICE_FEATURE, C.NUM_QUEUES, C.CONFIG_GENERATION, C.QUEUE_NOTIFY_OFF].map((f) =>
        rc(dev, f),
      ),
    ).toEqual(before);
    expect(rc(dev, C.ADMIN_QUEUE_INDEX)).toBe(2);
    expect(rc(dev, C.ADMIN_QUEUE_NUM)).toBe(0);
  });

  it("§4.1.3.1: accesses of the wrong width or alignment anywhere in the common configuration read 0 and change nothing", () => {
    const { dev } = pciDevice();
    negotiate(dev);
    const status = dev.core.status;
    let invalid = 0;
    for (let off = 0; off < 64; off++) {
      for (const size of [1, 2, 4, 8]) {
        if (COMMON_WIDTH[off] === size) continue;
        expect(dev.barRead(0, off, size)).toBe(0);
        dev.barWrite(0, off, size, 0xffffffff);
        invalid += 2;
      }
    }
    expect(dev.invalidAccesses).toBe(invalid);
    expect(dev.core.status).toBe(status);
    expect(dev.core.needsReset).toBe(false);
    expect(dev.exitCounts().invalid).toBeGreaterThan(0);
  });

  it("counts every trap by register name", () => {
    const { dev } = pciDevice();
    negotiate(dev);
    enableQueue(dev);
    rc(dev, C.QUEUE_SIZE);
    dev.barWrite(0, dev.layout.notify, 2, 0);
    dev.barRead(0, dev.layout.isr, 1);
    dev.configRead(0, 4);
    expect(dev.exitCounts()).toEqual({
      device_status: 3,
      driver_feature_select: 1,
      driver_feature: 1,
      queue_select: 1,
      queue_size: 2,
      queue_desc: 1,
      queue_driver: 1,
      queue_device: 1,
      queue_enable: 1,
      notify: 1,
      isr: 1,
      pci_config: 1,
    });
    expect(dev.exits).toBe(15);
    for (const name of Object.keys(dev.exitCounts())) expect(PCI_REGISTER_NAMES).toContain(name);
    dev.resetCounters();
    expect(dev.exits).toBe(0);
    expect(dev.exitCounts()).toEqual({});
  });
});

describe("VirtioPciDevice notifications (VIRTIO 1.3 §4.1.5.2)", () => {
  it("a 16-bit write of the queue index at the queue's notification address kicks that queue", () => {
    const { dev, model } = pciDevice();
    negotiate(dev);
    enableQueue(dev, 0);
    enableQueue(dev, 1, 4);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    wc(dev, C.QUEUE_SELECT, 1);
    const off = rc(dev, C.QUEUE_NOTIFY_OFF) * dev.notifyOffMultiplier;
    dev.barWrite(0, dev.layout.notify + off, 2, 1);
    expect(model.kicks).toEqual([{ index: 1, data: undefined }]);
  });

  it("a notification with the wrong width, value or address is ignored and counted", () => {
    const { dev, model } = pciDevice();
    negotiate(dev);
    enableQueue(dev, 0);
    enableQueue(dev, 1, 4);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    const n = dev.layout.notify;
    dev.barWrite(0, n + 4, 4, 1); // 32-bit without NOTIFICATION_DATA
    dev.barWrite(0, n + 4, 2, 0); // queue 0's index at queue 1's address
    dev.barWrite(0, n + 2, 2, 0); // between two addresses
    dev.barWrite(0, n + 4, 1, 1); // a byte
    expect(dev.barRead(0, n, 2)).toBe(0); // reads mean nothing
    expect(model.kicks).toEqual([]);
    expect(dev.invalidAccesses).toBe(5);
  });

  it("with VIRTIO_F_NOTIFICATION_DATA the notification is a 32-bit write with the next available position", () => {
    const { dev, model } = pciDevice({ features: featureMask(Feature.NOTIFICATION_DATA) });
    negotiate(dev, bit(Feature.NOTIFICATION_DATA));
    enableQueue(dev, 1, 4);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.barWrite(0, dev.layout.notify + 4, 2, 1); // 16-bit: refused
    dev.barWrite(0, dev.layout.notify + 4, 4, (3 << 16) | 1);
    expect(model.kicks).toEqual([{ index: 1, data: { queueIndex: 1, nextOff: 3, nextWrap: 0 } }]);
  });

  it("with notify_off_multiplier 0 every queue notifies at one address, named by the value", () => {
    const { dev, model } = pciDevice({ options: { notifyOffMultiplier: 0 } });
    negotiate(dev);
    enableQueue(dev, 0);
    enableQueue(dev, 1, 4);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.barWrite(0, dev.layout.notify, 2, 1);
    dev.barWrite(0, dev.layout.notify, 2, 0);
    dev.barWrite(0, dev.layout.notify + 2, 2, 0);
    expect(model.kicks.map((k) => k.index)).toEqual([1, 0]);
  });
});

describe("VirtioPciDevice INTx and the ISR status (VIRTIO 1.3 §4.1.4.5)", () => {
  function live() {
    const s = pciDevice();
    negotiate(s.dev);
    enableQueue(s.dev);
    wc(s.dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    return s;
  }

  it("§4.1.4.5.1: the queue interrupt bit is set before the interrupt; the status register mirrors the ISR; reading the ISR returns it, resets it and deasserts INTx", () => {
    const { dev, host, model } = live();
    model.ctx!.interrupt(0);
    expect(host.intx).toEqual([true]);
    expect(host.isrAtSignal).toEqual([PciIsr.QUEUE]);
    expect(dev.intxAsserted).toBe(true);
    expect(dev.configRead(PciConfig.STATUS, 2) & PciStatus.INTERRUPT).toBe(PciStatus.INTERRUPT);
    expect(dev.barRead(0, dev.layout.isr, 1)).toBe(PciIsr.QUEUE);
    expect(host.intx).toEqual([true, false]);
    expect(dev.configRead(PciConfig.STATUS, 2) & PciStatus.INTERRUPT).toBe(0);
    expect(dev.barRead(0, dev.layout.isr, 1)).toBe(0);
    expect(dev.stats.intxAssertions).toBe(1);
  });

  it("§4.1.4.5.1: the configuration interrupt bit is set before a configuration change notification, and one read returns both bits", () => {
    const { dev, host, model } = live();
    model.setCounter(7n);
    expect(host.isrAtSignal).toEqual([PciIsr.CONFIG]);
    model.ctx!.interrupt(0);
    expect(host.intx).toEqual([true]); // the line was already up
    expect(dev.barRead(0, dev.layout.isr, 1)).toBe(PciIsr.QUEUE | PciIsr.CONFIG);
  });

  it("§2.1.2 over PCI: DEVICE_NEEDS_RESET after DRIVER_OK comes with the configuration interrupt", () => {
    const { dev, host } = live();
    wc(dev, C.QUEUE_SELECT, 1);
    wc(dev, C.QUEUE_SIZE, 3);
    expect(rc(dev, C.DEVICE_STATUS) & DeviceStatus.DEVICE_NEEDS_RESET).not.toBe(0);
    expect(host.intx).toEqual([true]);
    expect(dev.barRead(0, dev.layout.isr, 1)).toBe(PciIsr.CONFIG);
  });

  it("INTx disable in the command register holds the line low but keeps the status bit; clearing it raises the line", () => {
    const { dev, host, model } = live();
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.INTX_DISABLE);
    model.ctx!.interrupt(0);
    expect(host.intx).toEqual([]);
    expect(dev.configRead(PciConfig.STATUS, 2) & PciStatus.INTERRUPT).toBe(PciStatus.INTERRUPT);
    dev.configWrite(PciConfig.COMMAND, 2, 0);
    expect(host.intx).toEqual([true]);
  });

  it("the ISR is read-only, takes 1-, 2- and 4-byte reads at its offset, and a reset clears it and the line", () => {
    const { dev, host, model } = live();
    dev.barWrite(0, dev.layout.isr, 1, 0xff);
    expect(dev.invalidAccesses).toBe(1);
    model.ctx!.interrupt(0);
    expect(dev.barRead(0, dev.layout.isr + 1, 1)).toBe(0);
    expect(dev.barRead(0, dev.layout.isr, 4)).toBe(1);
    model.ctx!.interrupt(0);
    wc(dev, C.DEVICE_STATUS, 0);
    expect(host.intx).toEqual([true, false, true, false]);
  });

  it("no interrupt pin: no INTx at all", () => {
    const s = pciDevice({ options: { interruptPin: 0 } });
    negotiate(s.dev);
    enableQueue(s.dev);
    wc(s.dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    s.model.ctx!.interrupt(0);
    expect(s.host.intx).toEqual([]);
  });
});

describe("VirtioPciDevice MSI-X (VIRTIO 1.3 §4.1.5.1.2)", () => {
  const TABLE_BAR = 2;

  function msix(vectors?: number) {
    const s = pciDevice({
      msi: true,
      ...(vectors === undefined ? {} : { options: { msixVectors: vectors } }),
    });
    const { dev } = s;
    const cap = capabilities(dev).find(([, id]) => id === PciCapId.MSIX)![0];
    // Program each entry: address 0xfee00000, data 0x40 + vector, unmasked; enable MSI-X.
    for (let v = 0; v < dev.msixVectors; v++) {
      dev.barWrite(TABLE_BAR, v * 16, 4, 0xfee00000);
      dev.barWrite(TABLE_BAR, v * 16 + 8, 4, 0x40 + v);
      dev.barWrite(TABLE_BAR, v * 16 + 12, 4, 0);
    }
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER);
    dev.configWrite(cap + 2, 2, PciMsix.FLAGS_ENABLE);
    negotiate(dev);
    return { ...s, cap };
  }

  it("§4.1.5.1.2.1: reports the table size (queues + 1 by default) in the MSI-X capability; table and PBA are in memory BAR 2", () => {
    const { dev, cap } = msix();
    expect(dev.msixVectors).toBe(3);
    expect(dev.configRead(cap + PciMsix.FLAGS, 2) & PciMsix.FLAGS_QSIZE).toBe(2);
    expect(dev.configRead(cap + PciMsix.TABLE, 4)).toBe(0 | TABLE_BAR);
    expect(dev.configRead(cap + PciMsix.PBA, 4)).toBe((3 * 16) | TABLE_BAR);
    expect(dev.bars[1]).toEqual({ index: 2, kind: "memory32", size: 4096, purpose: "msix" });
    expect(dev.msixEnabled).toBe(true);
  });

  it("§4.1.5.1.2.1: any event maps to any vector in the table and reads it back; a vector past the table reads NO_VECTOR; unmapping works", () => {
    const { dev } = msix();
    for (const v of [0, 1, 2]) {
      wc(dev, C.CONFIG_MSIX_VECTOR, v);
      expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(v);
      for (const q of [0, 1]) {
        wc(dev, C.QUEUE_SELECT, q);
        wc(dev, C.QUEUE_MSIX_VECTOR, v);
        expect(rc(dev, C.QUEUE_MSIX_VECTOR)).toBe(v);
      }
    }
    wc(dev, C.QUEUE_MSIX_VECTOR, 3);
    expect(rc(dev, C.QUEUE_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
    wc(dev, C.CONFIG_MSIX_VECTOR, 0x7ff);
    expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
    wc(dev, C.CONFIG_MSIX_VECTOR, 1);
    wc(dev, C.CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
    expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
  });

  it("§4.1.5.1.2.1: without an MSI-X capability every mapping fails (reads NO_VECTOR)", () => {
    const { dev } = pciDevice();
    expect(capabilities(dev).map(([, id]) => id)).not.toContain(PciCapId.MSIX);
    wc(dev, C.CONFIG_MSIX_VECTOR, 0);
    expect(rc(dev, C.CONFIG_MSIX_VECTOR)).toBe(VIRTIO_MSI_NO_VECTOR);
  });

  it("used buffer and configuration notifications send the message of the mapped vector, and no INTx", () => {
    const { dev, host, model } = msix();
    enableQueue(dev, 0);
    wc(dev, C.QUEUE_MSIX_VECTOR, 2);
    wc(dev, C.CONFIG_MSIX_VECTOR, 0);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    model.ctx!.interrupt(0);
    model.setCounter(1n);
    expect(host.msi).toEqual([
      [0xfee00000, 0x42],
      [0xfee00000, 0x40],
    ]);
    // §4.1.4.5.1: the configuration bit is set before the notification, MSI-X or not.
    expect(host.isrAtSignal[1]! & PciIsr.CONFIG).toBe(PciIsr.CONFIG);
    expect(host.intx).toEqual([]);
    expect(dev.stats.msiMessages).toBe(2);
  });

  it("§4.1.5.3.1, §4.1.5.4.1: with MSI-X enabled, an event mapped to NO_VECTOR delivers no interrupt at all", () => {
    const { dev, host, model } = msix();
    enableQueue(dev, 0);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    model.ctx!.interrupt(0);
    model.setCounter(2n);
    expect(host.msi).toEqual([]);
    expect(host.intx).toEqual([]);
    expect(dev.stats.noVector).toBe(2);
  });

  it("a masked vector pends its message (PBA bit) and sends it when unmasked; the function mask does the same", () => {
    const { dev, host, model, cap } = msix();
    enableQueue(dev, 0);
    wc(dev, C.QUEUE_MSIX_VECTOR, 1);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.barWrite(TABLE_BAR, 16 + 12, 4, 1);
    model.ctx!.interrupt(0);
    expect(host.msi).toEqual([]);
    expect(dev.barRead(TABLE_BAR, 3 * 16, 4)).toBe(0b10);
    dev.barWrite(TABLE_BAR, 16 + 12, 4, 0);
    expect(host.msi).toEqual([[0xfee00000, 0x41]]);
    expect(dev.barRead(TABLE_BAR, 3 * 16, 4)).toBe(0);
    dev.configWrite(cap + 2, 2, PciMsix.FLAGS_ENABLE | PciMsix.FLAGS_MASKALL);
    model.ctx!.interrupt(0);
    expect(host.msi).toHaveLength(1);
    dev.configWrite(cap + 2, 2, PciMsix.FLAGS_ENABLE);
    expect(host.msi).toHaveLength(2);
    expect(dev.stats.msiPended).toBe(2);
  });

  it("without bus mastering no MSI is sent; the table takes aligned DWORDs only; the PBA is read-only", () => {
    const { dev, host, model } = msix();
    enableQueue(dev, 0);
    wc(dev, C.QUEUE_MSIX_VECTOR, 1);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.configWrite(PciConfig.COMMAND, 2, PciCommand.MEMORY);
    model.ctx!.interrupt(0);
    expect(host.msi).toEqual([]);
    expect(dev.stats.msiDropped).toBe(1);
    const inv = dev.invalidAccesses;
    expect(dev.barRead(TABLE_BAR, 2, 2)).toBe(0);
    dev.barWrite(TABLE_BAR, 0, 8, 0);
    dev.barWrite(TABLE_BAR, 3 * 16, 4, 0xffffffff);
    expect(dev.invalidAccesses).toBe(inv + 3);
    expect(dev.barRead(TABLE_BAR, 16 + 12, 4)).toBe(0);
    dev.barWrite(TABLE_BAR, 16 + 12, 4, 0xfffffffe);
    expect(dev.barRead(TABLE_BAR, 16 + 12, 4)).toBe(0);
    dev.barWrite(TABLE_BAR, 16, 4, 0xfee00003);
    expect(dev.barRead(TABLE_BAR, 16, 4)).toBe(0xfee00000);
  });

  it("table entries start masked; a PCI reset disables MSI-X and masks every vector again", () => {
    const s = pciDevice({ msi: true });
    expect(s.dev.barRead(TABLE_BAR, 12, 4)).toBe(1);
    const { dev } = msix();
    expect(dev.barRead(TABLE_BAR, 12, 4)).toBe(0);
    dev.reset();
    expect(dev.msixEnabled).toBe(false);
    expect(dev.barRead(TABLE_BAR, 12, 4)).toBe(1);
    expect(dev.barRead(TABLE_BAR, 0, 4)).toBe(0);
  });

  it("a table size of 1 is allowed and the option is bounded by 0x800", () => {
    expect(msix(1).dev.msixVectors).toBe(1);
    expect(() => pciDevice({ msi: true, options: { msixVectors: 0x801 } })).toThrow(/msixVectors/);
    const big = pciDevice({ msi: true, options: { msixVectors: 0x800 } }).dev;
    expect(big.bars[1]!.size).toBe(0x8000 * 2);
  });
});

describe("VirtioPciDevice PCI configuration access capability (VIRTIO 1.3 §4.1.4.9)", () => {
  function window(dev: VirtioPciDevice, bar: number, offset: number, length: number) {
    const cap = capOf(dev, PciCapType.PCI_CFG);
    dev.configWrite(cap + PciCap.BAR, 1, bar);
    dev.configWrite(cap + PciCap.LENGTH, 4, length);
    dev.configWrite(cap + PciCap.OFFSET, 4, offset);
    return cap + PciCfgCap.PCI_CFG_DATA;
  }

  it("§4.1.4.9.1: a read of pci_cfg_data reads cap.length bytes at cap.offset of cap.bar into it", () => {
    const { dev } = pciDevice({ features: 0b1011n });
    expect(dev.configRead(window(dev, 0, C.DEVICE_FEATURE, 4), 4)).toBe(0b1011);
    expect(dev.configRead(window(dev, 0, C.NUM_QUEUES, 2), 2)).toBe(2);
    expect(dev.configRead(window(dev, 0, dev.layout.device, 1), 1)).toBe(0xee);
    expect(dev.exitCounts().pci_cfg_data).toBe(3);
  });

  it("§4.1.4.9.1: a write of pci_cfg_data writes its first cap.length bytes at cap.offset of cap.bar", () => {
    const { dev, model } = pciDevice();
    negotiate(dev);
    enableQueue(dev);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.configWrite(window(dev, 0, dev.layout.notify, 2), 2, 0);
    expect(model.kicks).toEqual([{ index: 0, data: undefined }]);
    dev.configWrite(window(dev, 0, dev.layout.device, 4), 4, 0x1234);
    expect(model.config.getUint32(0, true)).toBe(0x1234);
  });

  it("§4.1.4.9.1: the ISR read through the window clears it and lowers INTx", () => {
    const { dev, host, model } = pciDevice();
    negotiate(dev);
    enableQueue(dev);
    wc(dev, C.DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    model.ctx!.interrupt(0);
    expect(dev.configRead(window(dev, 0, dev.layout.isr, 1), 1)).toBe(1);
    expect(host.intx).toEqual([true, false]);
  });

  it("a window past the BAR, of length 3 or 8, misaligned, or on a BAR that is not a virtio structure BAR does nothing", () => {
    const { dev } = pciDevice({ msi: true });
    const cases: [number, number, number][] = [
      [0, 4096, 4],
      [0, 4094, 4],
      [0, 0, 3],
      [0, 0, 8],
      [0, 2, 4],
      [2, 0, 4],
      [5, 0, 4],
      [0xff, 0, 1],
    ];
    for (const [bar, off, len] of cases) {
      const data = window(dev, bar, off, len);
      dev.configWrite(data, 4, 0x5a5a5a5a);
      expect(dev.configRead(data, 4)).toBe(0x5a5a5a5a); // the window held its bytes; no BAR access
    }
    expect(dev.invalidAccesses).toBe(2 * cases.length);
    expect(dev.core.status).toBe(0);
    expect(dev.barRead(2, 0, 4)).toBe(0); // the MSI-X table was not written
  });
});
