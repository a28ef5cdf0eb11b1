/**
 * The transport between a suite's raw driver side and the device model under test: virtio-mmio
 * (an {@link MmioDevice} with {@link MmioDriverTransport}) or virtio-pci (a
 * {@link VirtioPciDevice} with {@link PciDriverTransport}, INTx), behind one small interface
 * the rigs use (internal), plus the recording buses the driver suites put in front of the
 * device for the §3.1.1 order check.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import {
  DeviceStatus,
  MmioInterrupt,
  MmioReg,
  PciCap,
  PciCapType,
  PciCfgCap,
  PciCommonCfg,
} from "@virtio-ts/spec";
import {
  type DeviceModel,
  type DriverTransport,
  type MmioBus,
  MmioDevice,
  MmioDriverTransport,
  PciDriverTransport,
  type PciFunctionAccess,
  RateLimitedLog,
  type VirtioDeviceCore,
  VirtioPciDevice,
} from "@virtio-ts/transport";
import { type ContractTransport, ContractViolation } from "./contract.js";
import type { DriverEnv, GuestRange } from "./driver-env.js";
import type { BusEvent } from "./init-order.js";

/** A driver transport the rigs initialise devices with (either kind). */
export type RigDriverTransport = DriverTransport & {
  /** Reset the device (§2.4) and forget its queues. */
  reset(): void;
  /** Write a device-specific configuration field. */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
};

/** One model behind one transport, seen from the rig's raw driver side (internal). */
export interface RigLink {
  /** The transport. */
  readonly kind: ContractTransport;
  /** The device core behind the registers. */
  readonly core: VirtioDeviceCore;
  /** The driver side the rig initialises with. */
  readonly transport: RigDriverTransport;
  /** DEVICE_NEEDS_RESET, as the status register shows it. */
  needsReset(): boolean;
  /**
   * Whether a configuration change interrupt is pending (MMIO InterruptStatus bit 1, PCI ISR
   * bit 1), without acknowledging it.
   */
  configInterrupt(): boolean;
  /** Write the device status register as a driver does. */
  writeStatus(value: number): void;
  /** Write device-specific configuration as a driver does (whatever the device status). */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
  /** The offered feature bits 0–63, read through the registers as a driver does. */
  offeredFeatures(): bigint;
}

/** Wire `model` to a fresh device of `kind`; `onInterrupt` hears each interrupt raised. */
export function linkModel(
  model: DeviceModel,
  memory: GuestMemory,
  kind: ContractTransport,
  onInterrupt: () => void,
): RigLink {
  // Guest faults are what the suites provoke on purpose; keep them out of the test output.
  const log = new RateLimitedLog({ sink: () => {} });
  if (kind === "pci") {
    const dev = new VirtioPciDevice(model, {
      memory,
      log,
      host: {
        setIntx: (level) => {
          if (level) onInterrupt();
        },
      },
    });
    const transport = new PciDriverTransport(dev);
    const common = dev.layout.common;
    return {
      kind,
      core: dev.core,
      transport,
      needsReset: () => transport.needsReset,
      configInterrupt: () => (dev.core.interruptStatus & MmioInterrupt.CONFIG) !== 0,
      writeStatus: (v) => dev.barWrite(0, common + PciCommonCfg.DEVICE_STATUS, 1, v),
      writeConfig: (o, s, v) => dev.barWrite(0, dev.layout.device + o, s, v),
      offeredFeatures: () => pciOffered(dev),
    };
  }
  const dev = new MmioDevice(model, { memory, log, interrupt: () => onInterrupt() });
  const transport = new MmioDriverTransport({
    read: (o, s) => dev.read(o, s),
    write: (o, s, v) => dev.write(o, s, v),
  });
  return {
    kind,
    core: dev.core,
    transport,
    needsReset: () => (dev.read(MmioReg.STATUS, 4) & DeviceStatus.DEVICE_NEEDS_RESET) !== 0,
    configInterrupt: () => (dev.read(MmioReg.INTERRUPT_STATUS, 4) & MmioInterrupt.CONFIG) !== 0,
    writeStatus: (v) => dev.write(MmioReg.STATUS, 4, v),
    writeConfig: (o, s, v) => dev.write(MmioReg.CONFIG + o, s, v),
    offeredFeatures: () => mmioOffered(dev),
  };
}

/** The driver side a driver suite gives the driver under test. */
export interface DriverSide {
  /** The core of the device the driver drives. */
  readonly core: VirtioDeviceCore;
  /** A fresh driver transport over the recording bus. */
  transport(): RigDriverTransport;
  /** The recording bus (virtio-mmio runs). */
  readonly bus: MmioBus | undefined;
  /** The recording PCI function (virtio-pci runs). */
  readonly pci: PciFunctionAccess | undefined;
  /** Whether the device's interrupt line is asserted. */
  interruptPending(): boolean;
  /** The offered feature bits 0–63, read through the registers as a driver would. */
  offeredFeatures(): bigint;
}

/**
 * Hand the driver under test a fresh transport over `side` and its {@link DriverEnv}, as every
 * driver suite starts: a throw or rejection from `attach` is the "attach" violation (the driver
 * did not initialise the device).
 * @param side - the suite's driver side
 * @param kind - the transport of this run
 * @param region - the guest memory the driver may use
 * @param attach - the adapter's `attach`, given the transport and the environment
 */
export async function attachDriver(
  side: DriverSide,
  kind: ContractTransport,
  region: GuestRange,
  attach: (transport: RigDriverTransport, env: DriverEnv) => Promise<void> | void,
): Promise<void> {
  try {
    await attach(side.transport(), { transport: kind, bus: side.bus, pci: side.pci, region });
  } catch (e) {
    throw new ContractViolation(
      "attach",
      "the driver initialises the device",
      e instanceof Error ? `${e.name}: ${e.message}` : String(e),
    );
  }
}

/** What a driver register access means for the §3.1.1 check. */
interface Recorder {
  /** A status write; returns the value to pass on (FEATURES_OK repaired). */
  statusWrite(v: number): number;
  statusRead(v: number): void;
  featureSelect(v: number): void;
  features(v: number): void;
  queueEnable(v: number): void;
  notify(): void;
}

/**
 * A recorder of status writes and reads, driver feature writes, queue enables and
 * notifications into `events`, and of the accepted features into `features` (word per
 * select). A driver that skips FEATURES_OK gets it set on its behalf before its first queue
 * enable or DRIVER_OK (the init check still reports it).
 */
function recorder(
  core: VirtioDeviceCore,
  setStatus: (v: number) => void,
  events: BusEvent[],
  features: number[],
): Recorder {
  let sel = 0;
  let repaired = false;
  // A driver that skipped FEATURES_OK: the init check reports it; set FEATURES_OK on its behalf
  // so the other checks can still measure the rest of the driver.
  const repair = (): void => {
    const s = core.status;
    if ((s & DeviceStatus.DRIVER) !== 0 && (s & DeviceStatus.FEATURES_OK) === 0) {
      repaired = true;
      setStatus(s | DeviceStatus.FEATURES_OK);
    }
  };
  return {
    statusWrite(value) {
      let v = value >>> 0;
      events.push({ e: "status-write", v });
      if (v === 0) repaired = false;
      else if (repaired) v |= DeviceStatus.FEATURES_OK;
      else if ((v & DeviceStatus.DRIVER_OK) !== 0) repair();
      return v;
    },
    statusRead: (v) => events.push({ e: "status-read", v }),
    featureSelect: (v) => {
      sel = v >>> 0;
    },
    features(v) {
      events.push({ e: "driver-features", sel, v: v >>> 0 });
      if (sel < features.length) features[sel] = v >>> 0;
    },
    queueEnable(v) {
      if (v === 0) return;
      events.push({ e: "queue-ready" });
      repair();
    },
    notify: () => events.push({ e: "notify" }),
  };
}

/**
 * The device side of a driver suite: `model` behind a transport of `kind`, with every driver
 * register access recorded. Over PCI the function has no MSI-X capability, so a driver uses
 * INTx (as Linux falls back to when MSI-X is missing).
 */
export function driverSide(
  model: DeviceModel,
  memory: GuestMemory,
  kind: ContractTransport,
  events: BusEvent[],
  features: number[] = [0, 0],
): DriverSide {
  const log = new RateLimitedLog({ sink: () => {} });
  if (kind === "pci") {
    const dev = new VirtioPciDevice(model, { memory, log });
    const common = dev.layout.common;
    const rec = recorder(
      dev.core,
      (v) => dev.barWrite(0, common + PciCommonCfg.DEVICE_STATUS, 1, v),
      events,
      features,
    );
    /** A write to the virtio BAR: record it; returns the value to pass on. */
    const write = (off: number, value: number): number => {
      const l = dev.layout;
      if (off >= l.notify && off < l.notify + l.notifyLength) {
        rec.notify();
        return value;
      }
      switch (off - common) {
        case PciCommonCfg.DEVICE_STATUS:
          return rec.statusWrite(value);
        case PciCommonCfg.DRIVER_FEATURE_SELECT:
          rec.featureSelect(value);
          break;
        case PciCommonCfg.DRIVER_FEATURE:
          rec.features(value);
          break;
        case PciCommonCfg.QUEUE_ENABLE:
          rec.queueEnable(value);
          break;
      }
      return value;
    };
    const read = (off: number, v: number): void => {
      if (off === common + PciCommonCfg.DEVICE_STATUS) rec.statusRead(v);
    };
    // The pci_cfg_data window reaches the same registers (§4.1.4.9).
    const cfgCap = findCap(dev, PciCapType.PCI_CFG);
    const data = cfgCap + PciCfgCap.PCI_CFG_DATA;
    const windowOffset = (): number | undefined => {
      const bar = dev.configSpace[cfgCap + PciCap.BAR];
      const dv = new DataView(dev.configSpace.buffer);
      return bar === 0 ? dv.getUint32(cfgCap + PciCap.OFFSET, true) : undefined;
    };
    const pci: PciFunctionAccess = {
      configRead(offset, size) {
        const v = dev.configRead(offset, size);
        if (offset === data) {
          const off = windowOffset();
          if (off !== undefined) read(off, v);
        }
        return v;
      },
      configWrite(offset, size, value) {
        let v = value;
        if (offset === data) {
          const off = windowOffset();
          if (off !== undefined) v = write(off, value);
        }
        dev.configWrite(offset, size, v);
      },
      barRead(bar, offset, size) {
        const v = dev.barRead(bar, offset, size);
        if (bar === 0) read(offset, v);
        return v;
      },
      barWrite(bar, offset, size, value) {
        dev.barWrite(bar, offset, size, bar === 0 ? write(offset, value) : value);
      },
    };
    return {
      core: dev.core,
      transport: () => new PciDriverTransport(pci),
      bus: undefined,
      pci,
      interruptPending: () => dev.intxAsserted,
      offeredFeatures: () => pciOffered(dev),
    };
  }
  const dev = new MmioDevice(model, { memory, log });
  const rec = recorder(dev.core, (v) => dev.write(MmioReg.STATUS, 4, v), events, features);
  const bus: MmioBus = {
    read: (offset, size) => {
      const v = dev.read(offset, size);
      if (offset === MmioReg.STATUS) rec.statusRead(v);
      return v;
    },
    write: (offset, size, value) => {
      let v = value >>> 0;
      if (offset === MmioReg.STATUS) v = rec.statusWrite(v);
      else if (offset === MmioReg.DRIVER_FEATURES_SEL) rec.featureSelect(v);
      else if (offset === MmioReg.DRIVER_FEATURES) rec.features(v);
      else if (offset === MmioReg.QUEUE_READY) rec.queueEnable(v);
      else if (offset === MmioReg.QUEUE_NOTIFY) rec.notify();
      dev.write(offset, size, v);
    },
  };
  return {
    core: dev.core,
    transport: () => new MmioDriverTransport(bus),
    bus,
    pci: undefined,
    interruptPending: () => dev.core.interruptStatus !== 0,
    offeredFeatures: () => mmioOffered(dev),
  };
}

/** Offered bits 0–63 through DeviceFeaturesSel / DeviceFeatures. */
function mmioOffered(dev: MmioDevice): bigint {
  let f = 0n;
  for (let sel = 0; sel < 2; sel++) {
    dev.write(MmioReg.DEVICE_FEATURES_SEL, 4, sel);
    f |= BigInt(dev.read(MmioReg.DEVICE_FEATURES, 4) >>> 0) << BigInt(32 * sel);
  }
  return f;
}

/** Offered bits 0–63 through device_feature_select / device_feature. */
function pciOffered(dev: VirtioPciDevice): bigint {
  const common = dev.layout.common;
  let f = 0n;
  for (let sel = 0; sel < 2; sel++) {
    dev.barWrite(0, common + PciCommonCfg.DEVICE_FEATURE_SELECT, 4, sel);
    f |= BigInt(dev.barRead(0, common + PciCommonCfg.DEVICE_FEATURE, 4) >>> 0) << BigInt(32 * sel);
  }
  return f;
}

function findCap(dev: VirtioPciDevice, type: number): number {
  let pos = dev.configSpace[0x34]!;
  for (let i = 0; i < 48 && pos !== 0; i++) {
    if (dev.configSpace[pos] === 0x09 && dev.configSpace[pos + PciCap.CFG_TYPE] === type)
      return pos;
    pos = dev.configSpace[pos + 1]!;
  }
  throw new Error(`the device has no capability of type ${type}`);
}
