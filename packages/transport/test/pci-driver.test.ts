import type { GuestMemoryMap } from "@virtio-ts/memory";
import {
  DeviceStatus,
  Feature,
  featureMask,
  PciCap,
  PciCapType,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciIsr,
  VIRTIO_MSI_NO_VECTOR,
} from "@virtio-ts/spec";
import { PackedDriverQueue, type SplitDriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type PciDriverOptions,
  PciDriverTransport,
  type PciFunctionAccess,
  TransportError,
  type VirtioPciDevice,
  type VirtioPciDeviceOptions,
} from "../src/index.js";
import { capOf, pciDevice } from "./helpers/pci.js";

const LAYOUT = { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 } as const;
const LAYOUT1 = { size: 4, desc: 0x3000, driver: 0x3080, device: 0x3100 } as const;

/** A function access that records every call and lets a test replace configuration bytes. */
function tap(dev: VirtioPciDevice, patch: Map<number, number> = new Map()) {
  const log: string[] = [];
  const bus: PciFunctionAccess = {
    configRead(offset, size) {
      let v = 0;
      let patched = false;
      for (let i = 0; i < size; i++) {
        const b = patch.get(offset + i);
        if (b !== undefined) patched = true;
        v |= (b ?? dev.configSpace[offset + i]!) << (8 * i);
      }
      const out = patched ? v >>> 0 : dev.configRead(offset, size);
      log.push(`cr ${offset} ${size}`);
      return out;
    },
    configWrite(offset, size, value) {
      log.push(`cw ${offset} ${size} ${value >>> 0}`);
      dev.configWrite(offset, size, value);
    },
    barRead(bar, offset, size) {
      log.push(`br ${bar} ${offset} ${size}`);
      return dev.barRead(bar, offset, size);
    },
    barWrite(bar, offset, size, value) {
      log.push(`bw ${bar} ${offset} ${size} ${value >>> 0}`);
      dev.barWrite(bar, offset, size, value);
    },
  };
  return { bus, log };
}

function pair(
  o: {
    features?: bigint;
    queues?: readonly number[];
    device?: Partial<VirtioPciDeviceOptions>;
    driver?: PciDriverOptions;
  } = {},
) {
  const msi = o.driver?.interrupts === "msix";
  const s = pciDevice({
    ...(o.features === undefined ? {} : { features: o.features }),
    ...(o.queues === undefined ? {} : { queues: o.queues }),
    msi,
    ...(o.device === undefined ? {} : { options: o.device }),
  });
  const drv = new PciDriverTransport(s.dev, o.driver);
  return { ...s, drv };
}

/** Send `text` through the echo queue; `irq` says whether the interrupt arrived, then takes it. */
function echo(
  drv: PciDriverTransport,
  q: SplitDriverQueue<string> | PackedDriverQueue<string>,
  mem: GuestMemoryMap,
  text: string,
  irq: () => boolean,
): string {
  const bytes = new TextEncoder().encode(text);
  mem.write(0x4000, bytes);
  expect(q.add([{ addr: 0x4000, len: bytes.length }], [{ addr: 0x5000, len: 64 }], text)).toBe(
    true,
  );
  if (q.publish()) drv.notify(0);
  expect(irq()).toBe(true);
  expect(drv.takeInterrupt() & PciIsr.QUEUE).toBe(PciIsr.QUEUE);
  expect(q.reap()).toBe(text);
  const out = new Uint8Array(q.lastLen);
  mem.read(0x5000, out);
  return new TextDecoder().decode(out);
}

describe("PciDriverTransport against VirtioPciDevice (VIRTIO 1.3 §3.1.1, §4.1.5)", () => {
  it("§3.1.1, §4.1.3.1, §4.1.4.3.2 over INTx: probes, negotiates and sets up queues with field-wide accesses only and no write to a read-only field; the echo queue answers through ISR interrupts", () => {
    const { dev, drv, memory, model, host } = pair({
      features: featureMask(Feature.RING_EVENT_IDX) | 0b1n,
    });
    const info = drv.probe();
    expect(info.deviceId).toBe(0x3e);
    expect(info.vendorId).toBe(0x1af4);
    expect(info.pciDeviceId).toBe(0x107e);
    expect(info.bars[0]).toEqual({ kind: "memory32", size: 4096 });
    expect(info.common).toMatchObject({ bar: 0, offset: 0, length: 64 });
    expect(info.notify.multiplier).toBe(4);
    expect(info.device).toMatchObject({ offset: dev.layout.device, length: 12 });
    expect(dev.command).toBe(PciCommand.MEMORY | PciCommand.MASTER);
    const f = drv.negotiate((offered) => offered);
    expect(f).toBe(0b1n | featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.VERSION_1));
    const q = drv.setupQueue<string>(0, memory, LAYOUT);
    drv.setupQueue<string>(1, memory, LAYOUT1);
    drv.driverOk();
    expect(model.activations).toBe(1);
    expect(echo(drv, q, memory, "hello over pci", () => host.intx.at(-1) === true)).toBe(
      "hello over pci",
    );
    expect(host.intx).toEqual([true, false]);
    expect(drv.readConfig((c) => c.u32(0))).toBe(0xc0ffee);
    drv.writeConfig(0, 4, 0x55);
    expect(model.config.getUint32(0, true)).toBe(0x55);
    // §4.1.3.1: every access had its field's width: the device counted nothing invalid.
    expect(dev.invalidAccesses).toBe(0);
    expect(dev.core.stats.violations).toBe(0);
  });

  it("§4.1.5.1.2, §4.1.4.5.2: over MSI-X each queue gets its own vector and configuration changes vector 0; the ISR is never read", () => {
    const { dev, drv, memory, model, host } = pair({ driver: { interrupts: "msix" } });
    const q = (() => {
      drv.negotiate(0n);
      const q0 = drv.setupQueue<string>(0, memory, LAYOUT);
      drv.setupQueue<string>(1, memory, LAYOUT1);
      drv.driverOk();
      return q0;
    })();
    expect(dev.msixEnabled).toBe(true);
    expect(dev.command & PciCommand.INTX_DISABLE).toBe(PciCommand.INTX_DISABLE);
    const deliver = () => {
      const m = host.msi.shift();
      return m !== undefined && drv.receiveMsi(m[0], m[1]);
    };
    expect(echo(drv, q, memory, "msi", deliver)).toBe("msi");
    expect(host.intx).toEqual([]);
    model.setCounter(9n);
    expect(host.msi).toEqual([[0xfee00000, 0x4000]]);
    expect(deliver()).toBe(true);
    expect(drv.takeInterrupt()).toBe(PciIsr.CONFIG);
    expect(drv.takeInterrupt()).toBe(0);
    dev.core.interrupt(1);
    expect(host.msi).toEqual([[0xfee00000, 0x4002]]);
    expect(drv.receiveMsi(0xfee00000, 0x9999)).toBe(false);
    expect(drv.receiveMsi(0xfee01000, 0x4000)).toBe(false);
    expect(dev.exitCounts().isr).toBeUndefined();
    expect(dev.invalidAccesses).toBe(0);
  });

  it("§4.1.5.4.2: with a single MSI-X vector, one message reports both a used buffer and a configuration change", () => {
    const { drv, memory, model, host } = pair({
      device: { msixVectors: 1 },
      driver: { interrupts: "msix" },
    });
    drv.negotiate(0n);
    drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    model.setCounter(1n);
    const [addr, data] = host.msi[0]!;
    expect(drv.receiveMsi(addr, data)).toBe(true);
    expect(drv.takeInterrupt()).toBe(PciIsr.QUEUE | PciIsr.CONFIG);
  });

  it("§4.1.5.1.2.2: with a table of two vectors, the queues share vector 1 and nothing maps past the table", () => {
    const { dev, drv, memory } = pair({
      device: { msixVectors: 2 },
      driver: { interrupts: "msix" },
    });
    drv.negotiate(0n);
    drv.setupQueue<string>(0, memory, LAYOUT);
    drv.setupQueue<string>(1, memory, LAYOUT1);
    for (const q of [0, 1]) {
      dev.barWrite(0, PciCommonCfg.QUEUE_SELECT, 2, q);
      expect(dev.barRead(0, PciCommonCfg.QUEUE_MSIX_VECTOR, 2)).toBe(1);
    }
  });

  it("§4.1.4.9: the whole session also runs through the pci_cfg_data window, with every access aligned and inside the BAR", () => {
    const { dev, drv, memory, host } = pair({ driver: { access: "pci-cfg" } });
    drv.negotiate(0n);
    const q = drv.setupQueue<string>(0, memory, LAYOUT);
    drv.driverOk();
    expect(echo(drv, q, memory, "through the window", () => host.intx.at(-1) === true)).toBe(
      "through the window",
    );
    const counts = dev.exitCounts();
    expect(Object.keys(counts).sort()).toEqual(["pci_cfg_data", "pci_config"]);
    // §4.1.4.9.2: no window access was refused.
    expect(dev.invalidAccesses).toBe(0);
  });

  it("works with the structures in an I/O BAR and in a 64-bit memory BAR", () => {
    for (const bar of ["io", "memory64"] as const) {
      const { dev, drv, memory, host } = pair({ device: { bar } });
      expect(drv.probe().bars[0]).toEqual({ kind: bar, size: dev.bars[0]!.size });
      drv.negotiate(0n);
      const q = drv.setupQueue<string>(0, memory, LAYOUT);
      drv.driverOk();
      expect(echo(drv, q, memory, bar, () => host.intx.at(-1) === true)).toBe(bar);
      expect(dev.command & (bar === "io" ? PciCommand.IO : PciCommand.MEMORY)).not.toBe(0);
    }
  });

  it("packed rings, NOTIFICATION_DATA (32-bit notifications) and RING_RESET over PCI", () => {
    const features =
      featureMask(Feature.RING_PACKED) |
      featureMask(Feature.NOTIFICATION_DATA) |
      featureMask(Feature.RING_RESET);
    const { dev, drv, memory, model, host } = pair({ features });
    expect(drv.negotiate((o) => o)).toBe(features | featureMask(Feature.VERSION_1));
    const q = drv.setupQueue<string>(0, memory, { ...LAYOUT, size: 6 });
    expect(q).toBeInstanceOf(PackedDriverQueue);
    drv.driverOk();
    expect(echo(drv, q, memory, "packed", () => host.intx.at(-1) === true)).toBe("packed");
    expect(model.kicks[0]!.data).toEqual({ queueIndex: 0, nextOff: 2, nextWrap: 1 });
    drv.resetQueue(0);
    expect(model.queueResets).toEqual([0]);
    const again = drv.setupQueue<string>(0, memory, { ...LAYOUT, size: 4 });
    expect(echo(drv, again, memory, "again", () => host.intx.at(-1) === true)).toBe("again");
    expect(dev.invalidAccesses).toBe(0);
  });

  it("§4.1.4.4.1: with a multiplier of 2 the driver does not accept NOTIFICATION_DATA", () => {
    const nd = featureMask(Feature.NOTIFICATION_DATA);
    const { drv } = pair({ features: nd, device: { notifyOffMultiplier: 2 } });
    expect(drv.negotiate((o) => o) & nd).toBe(0n);
  });

  it("§4.1.5.2.1: notifications are 16-bit writes of the queue index at the queue's address", () => {
    const { dev, drv, memory } = pair();
    const { bus, log } = tap(dev);
    const t = new PciDriverTransport(bus);
    t.negotiate(0n);
    t.setupQueue<string>(0, memory, LAYOUT);
    t.setupQueue<string>(1, memory, LAYOUT1);
    t.driverOk();
    log.length = 0;
    t.notify(1);
    t.notify(0);
    expect(log).toEqual([`bw 0 ${dev.layout.notify + 4} 2 1`, `bw 0 ${dev.layout.notify} 2 0`]);
    expect(drv).toBeDefined();
  });
});

describe("PciDriverTransport discovery (VIRTIO 1.3 §4.1.2.2, §4.1.4.1)", () => {
  it("§4.1.2.2: refuses a Vendor ID other than 0x1af4 and a Device ID outside 0x1000–0x107f", () => {
    for (const [off, bytes] of [
      [0, [0x86, 0x80]],
      [2, [0x80, 0x10]],
      [2, [0xff, 0x0f]],
    ] as const) {
      const { dev } = pciDevice();
      const patch = new Map(bytes.map((b, i) => [off + i, b]));
      const t = new PciDriverTransport(tap(dev, patch).bus);
      expect(() => t.probe()).toThrow(TransportError);
      try {
        t.probe();
      } catch (e) {
        expect((e as TransportError).code).toBe("not-virtio");
      }
    }
  });

  it("§4.1.2.2: matches any Revision ID, and takes a transitional Device ID's virtio ID from the Subsystem ID", () => {
    for (const rev of [0, 1, 0xff]) {
      const { dev } = pciDevice({ options: { revisionId: rev } });
      expect(new PciDriverTransport(dev).probe().revisionId).toBe(rev);
    }
    const { dev } = pciDevice({ options: { subsystemId: 2 } });
    const t = new PciDriverTransport(
      tap(
        dev,
        new Map([
          [2, 0x01],
          [3, 0x10],
        ]),
      ).bus,
    );
    expect(t.probe().deviceId).toBe(2);
    expect(t.probe().pciDeviceId).toBe(0x1001);
  });

  /**
   * A device whose capability list starts with extra capabilities at 0xc0 (free configuration
   * space) before the real ones at 0x40.
   */
  function withExtraCaps(caps: number[][]) {
    const s = pciDevice();
    const patch = new Map<number, number>();
    let at = 0xc0;
    patch.set(PciConfig.CAPABILITY_LIST, at);
    caps.forEach((c, i) => {
      const next = i + 1 < caps.length ? at + 0x10 : 0x40;
      for (const [j, b] of [0x09, next, ...c].entries()) patch.set(at + j, b);
      at += 0x10;
    });
    return { ...s, ...tap(s.dev, patch) };
  }

  it("§4.1.4.1: ignores reserved cfg_type and bar values and takes the first usable instance of each type", () => {
    const { bus, dev } = withExtraCaps([
      // cap_len, cfg_type, bar, id, pad, pad, offset (le32), length (le32)
      [16, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0], // reserved cfg_type 7
      [16, PciCapType.COMMON_CFG, 6, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0], // reserved bar 6
      [16, PciCapType.ISR_CFG, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], // BAR 3 is not implemented
    ]);
    const info = new PciDriverTransport(bus).probe();
    expect(info.common.cap).toBe(capOf(dev, PciCapType.COMMON_CFG));
    expect(info.isr.cap).toBe(capOf(dev, PciCapType.ISR_CFG));
  });

  it("§4.1.4.1: accepts a cap_len larger than the structure and an unexpectedly large length (cut at the BAR's end)", () => {
    const { bus } = withExtraCaps([
      [48, PciCapType.ISR_CFG, 0, 0, 0, 0, 0x40, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f],
    ]);
    const info = new PciDriverTransport(bus).probe();
    expect(info.isr).toEqual({ cap: 0xc0, bar: 0, offset: 0x40, length: 4096 - 0x40 });
  });

  it("§4.1.4.1: writes no capability field: configuration writes go only to the command register, BARs (sizing) and the PCI cfg window", () => {
    const { dev } = pciDevice({ msi: true });
    const { bus, log } = tap(dev);
    const t = new PciDriverTransport(bus, { access: "pci-cfg" });
    t.negotiate(0n);
    const pciCfg = capOf(dev, PciCapType.PCI_CFG);
    for (const line of log.filter((l) => l.startsWith("cw "))) {
      const off = Number(line.split(" ")[1]);
      const ok =
        off === PciConfig.COMMAND ||
        (off >= PciConfig.BASE_ADDRESS_0 && off < PciConfig.BASE_ADDRESS_0 + 24) ||
        (off >= pciCfg + PciCap.BAR && off < pciCfg + 20);
      expect(ok, line).toBe(true);
    }
  });

  it("§4.1.5.1.1: a missing ISR capability or capability list is refused (no legacy fallback); so are a structure outside its BAR, misaligned or short, and a looping list", () => {
    const cases: [Map<number, number>, string][] = [
      // The ISR capability's cfg_type turned into a reserved one: no ISR structure.
      [new Map([[0x64 + 3, 0x0a]]), "missing-capability"],
      // The common configuration placed at 0xff0 of a 4096-byte BAR.
      [
        new Map([
          [0x40 + 8, 0xf0],
          [0x40 + 9, 0x0f],
        ]),
        "bad-capability",
      ],
      // The common configuration misaligned.
      [new Map([[0x40 + 8, 0x02]]), "bad-capability"],
      // The common configuration shorter than virtio_pci_common_cfg.
      [new Map([[0x40 + 12, 0x20]]), "bad-capability"],
      // The last capability points back to the first.
      [new Map([[0x84 + 1, 0x40]]), "bad-capability"],
      // No capability list bit in the status register.
      [new Map([[PciConfig.STATUS, 0]]), "missing-capability"],
    ];
    for (const [patch, code] of cases) {
      const { dev } = pciDevice();
      const t = new PciDriverTransport(tap(dev, patch).bus);
      let err: unknown;
      try {
        t.probe();
      } catch (e) {
        err = e;
      }
      expect(err, code).toBeInstanceOf(TransportError);
      expect((err as TransportError).code).toBe(code);
    }
  });

  it("leaves RING_RESET out when the common configuration ends before queue_reset", () => {
    const { dev } = pciDevice({ features: featureMask(Feature.RING_RESET) });
    const t = new PciDriverTransport(tap(dev, new Map([[0x40 + 12, 56]])).bus);
    expect(t.negotiate((o) => o) & featureMask(Feature.RING_RESET)).toBe(0n);
  });

  it('interrupts: "msix" on a device without MSI-X is refused at probe', () => {
    const { dev } = pciDevice();
    expect(() => new PciDriverTransport(dev, { interrupts: "msix" }).probe()).toThrow(
      /no MSI-X capability/,
    );
  });
});

describe("PciDriverTransport driver requirements (VIRTIO 1.3 §4.1.4.3.2, §4.1.5.1.2.2)", () => {
  it("§4.1.4.3.2: configures every queue field before queue_enable, writes queue_enable only with 1", () => {
    const { dev, memory } = pair();
    const { bus, log } = tap(dev);
    const t = new PciDriverTransport(bus);
    t.negotiate(0n);
    log.length = 0;
    t.setupQueue<string>(0, memory, LAYOUT);
    const writes = log.filter((l) => l.startsWith("bw ")).map((l) => Number(l.split(" ")[2]));
    expect(writes.at(-1)).toBe(PciCommonCfg.QUEUE_ENABLE);
    expect(writes.filter((o) => o === PciCommonCfg.QUEUE_ENABLE)).toHaveLength(1);
    expect(writes).toEqual(
      expect.arrayContaining([
        PciCommonCfg.QUEUE_SIZE,
        PciCommonCfg.QUEUE_DESC_LO,
        PciCommonCfg.QUEUE_DESC_HI,
        PciCommonCfg.QUEUE_DRIVER_LO,
        PciCommonCfg.QUEUE_DRIVER_HI,
        PciCommonCfg.QUEUE_DEVICE_LO,
        PciCommonCfg.QUEUE_DEVICE_HI,
      ]),
    );
    expect(log).toContain(`bw 0 ${PciCommonCfg.QUEUE_ENABLE} 2 1`);
  });

  it("§4.1.4.3.2: never writes a queue_size that is not a power of 2 for a split ring (nor 0 for a packed one)", () => {
    const { drv, memory } = pair();
    drv.negotiate(0n);
    expect(() => drv.setupQueue(0, memory, { ...LAYOUT, size: 6 })).toThrow(RangeError);
    expect(() => drv.setupQueue(0, memory, { ...LAYOUT, size: 0 })).toThrow(RangeError);
    const p = pair({ features: featureMask(Feature.RING_PACKED) });
    p.drv.negotiate((o) => o);
    expect(() => p.drv.setupQueue(0, p.memory, { ...LAYOUT, size: 0 })).toThrow(RangeError);
  });

  it("§4.1.4.3.2: after writing 0 to device_status, waits until it reads 0, and gives up with reset-timeout", () => {
    for (const [late, ok] of [
      [3, true],
      [1000, false],
    ] as const) {
      const { dev } = pciDevice();
      let stale = 0;
      const base = tap(dev).bus;
      const bus: PciFunctionAccess = {
        ...base,
        barRead: (bar, off, size) =>
          off === PciCommonCfg.DEVICE_STATUS && stale-- > 0
            ? DeviceStatus.ACKNOWLEDGE
            : base.barRead(bar, off, size),
        barWrite: (bar, off, size, v) => {
          if (off === PciCommonCfg.DEVICE_STATUS && v === 0) stale = late;
          base.barWrite(bar, off, size, v);
        },
      };
      const t = new PciDriverTransport(bus, { maxRetries: 8 });
      t.probe();
      if (ok) {
        t.reset();
        expect(stale).toBe(-1);
      } else {
        expect(() => t.reset()).toThrow(/device_status did not read 0/);
      }
    }
  });

  it("§4.1.4.3.2: after writing 1 to queue_reset, waits until it reads 0", () => {
    const { dev, memory } = pciDevice({ features: featureMask(Feature.RING_RESET) });
    const base = tap(dev).bus;
    let busy = 2;
    const bus: PciFunctionAccess = {
      ...base,
      barRead: (bar, off, size) =>
        off === PciCommonCfg.QUEUE_RESET && busy-- > 0 ? 1 : base.barRead(bar, off, size),
    };
    const t = new PciDriverTransport(bus);
    t.negotiate((o) => o);
    t.setupQueue(0, memory, LAYOUT);
    t.resetQueue(0);
    expect(busy).toBe(-1);
  });

  it("§4.1.5.1.2.2: reads each vector back after mapping it and fails the device when it reads NO_VECTOR", () => {
    for (const field of [PciCommonCfg.CONFIG_MSIX_VECTOR, PciCommonCfg.QUEUE_MSIX_VECTOR]) {
      const { dev, memory } = pciDevice({ msi: true });
      const base = tap(dev).bus;
      const bus: PciFunctionAccess = {
        ...base,
        barRead: (bar, off, size) =>
          bar === 0 && off === field ? VIRTIO_MSI_NO_VECTOR : base.barRead(bar, off, size),
      };
      const t = new PciDriverTransport(bus, { interrupts: "msix" });
      let err: unknown;
      try {
        t.negotiate(0n);
        t.setupQueue(0, memory, LAYOUT);
      } catch (e) {
        err = e;
      }
      expect((err as TransportError).code).toBe("vector-refused");
      expect(dev.core.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    }
  });

  it("§2.5.1: re-reads the configuration while config_generation changes, and gives up after maxRetries", () => {
    const { dev, drv, model } = pair();
    drv.negotiate(0n);
    drv.driverOk();
    let changes = 2;
    const seen = drv.readConfig((c) => {
      const v = c.u64(4);
      if (changes-- > 0) model.setCounter(v + 1n);
      return v;
    });
    expect(seen).toBe(2n);
    const t = new PciDriverTransport(dev, { maxRetries: 3 });
    t.probe();
    expect(() => t.readConfig((c) => model.setCounter(c.u64(4) + 1n))).toThrow(/config-unstable/);
  });

  it("a configuration read past the device configuration structure is a bad-capability error, not a wild access", () => {
    const { drv, dev } = pair();
    drv.negotiate(0n);
    expect(() => drv.readConfig((c) => c.u32(12))).toThrow(/past the 12-byte device configuration/);
    expect(() => drv.readConfig((c) => c.u16(1))).toThrow(RangeError);
    expect(dev.invalidAccesses).toBe(0);
  });

  it("cuts every value it reads to the field's width, so a bus returning stray high bits changes nothing", () => {
    const { dev, memory, host } = pciDevice();
    const base = tap(dev).bus;
    const noisy: PciFunctionAccess = {
      configRead: (o, s) => (s === 4 ? base.configRead(o, s) : base.configRead(o, s) | 0xabcd0000),
      configWrite: base.configWrite,
      barRead: (b, o, s) => (s === 4 ? base.barRead(b, o, s) : base.barRead(b, o, s) | 0x7f0000),
      barWrite: base.barWrite,
    };
    const t = new PciDriverTransport(noisy);
    expect(t.probe().deviceId).toBe(0x3e);
    t.negotiate(0n);
    const q = t.setupQueue<string>(0, memory, LAYOUT);
    t.driverOk();
    expect(t.status & 0xffffff00).toBe(0);
    expect(echo(t, q, memory, "clean", () => host.intx.at(-1) === true)).toBe("clean");
    expect(dev.invalidAccesses).toBe(0);
  });

  it("checks its options", () => {
    const { dev } = pciDevice();
    expect(() => new PciDriverTransport(dev, { maxRetries: 0 })).toThrow(/maxRetries/);
    expect(() => new PciDriverTransport(dev, { interrupts: "msi" as "msix" })).toThrow(
      /interrupts/,
    );
    expect(() => new PciDriverTransport(dev, { access: "mmio" as "bar" })).toThrow(/access/);
    expect(() => new PciDriverTransport(dev, { msiAddress: 3 })).toThrow(/msiAddress/);
    expect(() => new PciDriverTransport(dev, { msiDataBase: -1 })).toThrow(/msiDataBase/);
  });

  it("queue setup refuses a live queue, an unavailable queue and a size over the maximum", () => {
    const { drv, memory } = pair({ queues: [16, 0] });
    drv.negotiate(0n);
    drv.setupQueue(0, memory, LAYOUT);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as TransportError).code;
      }
      return "none";
    };
    expect(code(() => drv.setupQueue(0, memory, LAYOUT))).toBe("queue-in-use");
    expect(code(() => drv.setupQueue(1, memory, LAYOUT1))).toBe("queue-unavailable");
    expect(code(() => drv.setupQueue(2, memory, LAYOUT1))).toBe("queue-unavailable");
    const big = pair();
    big.drv.negotiate(0n);
    expect(code(() => big.drv.setupQueue(0, big.memory, { ...LAYOUT, size: 32 }))).toBe(
      "queue-too-large",
    );
    expect(big.drv.queueMaxSize(0)).toBe(16);
    expect(big.drv.numQueues).toBe(2);
  });
});
