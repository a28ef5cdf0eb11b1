import type { GuestMemory } from "@virtio-ts/memory";
import {
  DeviceStatus,
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
  PCI_COMMON_CFG_V1_0_SIZE,
  PCI_DEVICE_ID_MODERN_BASE,
  PCI_DEVICE_ID_MODERN_LAST,
  PCI_VENDOR_ID_VIRTIO,
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
import {
  PackedDriverQueue,
  type QueueLayout,
  ringFeatures,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import type {
  ConfigReader,
  DriverDeviceInfo,
  DriverQueueSetupOptions,
  DriverTransport,
} from "./driver-transport.js";
import { TransportError } from "./errors.js";
import { DRIVER_TRANSPORT_FEATURES } from "./mmio-driver.js";
import { packedNotificationData, splitNotificationData } from "./notification-data.js";

/**
 * How a driver reaches one PCI function: its configuration space and its BARs by number,
 * whatever sits behind them (a {@link VirtioPciDevice} in the same process, which has exactly
 * these four methods, an emulator's bus, a worker). Values are unsigned and little-endian;
 * offsets are from the start of configuration space / of the BAR.
 *
 * Implementer contract: reads return an unsigned integer of `size` bytes; nothing throws for an
 * access the function does not implement (a real bus reads 0 or all ones and drops writes).
 * BAR accesses reach the BAR wherever it is mapped (the accessor stands for the guest's view
 * through the BAR's current address).
 */
export interface PciFunctionAccess {
  /** Read `size` bytes of configuration space at `offset`. */
  configRead(offset: number, size: 1 | 2 | 4): number;
  /** Write `size` bytes of configuration space at `offset`. */
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void;
  /** Read `size` bytes at `offset` of BAR `bar`. */
  barRead(bar: number, offset: number, size: 1 | 2 | 4): number;
  /** Write `size` bytes at `offset` of BAR `bar`. */
  barWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void;
}

/** Where a virtio structure is: the capability that described it and its place in a BAR. */
export interface PciStructureLocation {
  /** Configuration-space offset of the capability. */
  readonly cap: number;
  /** BAR number. */
  readonly bar: number;
  /** Offset in the BAR. */
  readonly offset: number;
  /** Usable length (the capability's `length`, cut at the end of the BAR). */
  readonly length: number;
}

/** Where the notification structure is, with its `notify_off_multiplier`. */
export interface PciNotifyLocation extends PciStructureLocation {
  /** `notify_off_multiplier`: queue `n` notifies at `queue_notify_off(n) × multiplier`. */
  readonly multiplier: number;
}

/** A BAR as the driver sized it. */
export interface PciBarSize {
  /** I/O or memory space (`memory64` takes this BAR and the next). */
  readonly kind: "io" | "memory32" | "memory64";
  /** Size in bytes. */
  readonly size: number;
}

/** What {@link PciDriverTransport.probe} found. */
export interface PciDeviceInfo extends DriverDeviceInfo {
  /** The virtio device ID (Device ID − 0x1040, or the Subsystem ID for a transitional ID). */
  readonly deviceId: number;
  /** The Subsystem Vendor ID (what Linux reports as the virtio vendor). */
  readonly vendorId: number;
  /** The PCI Device ID. */
  readonly pciDeviceId: number;
  /** The PCI Revision ID (any value matches, §4.1.2.2). */
  readonly revisionId: number;
  /** The BARs (undefined: not implemented), as sized with decoding off. */
  readonly bars: readonly (PciBarSize | undefined)[];
  /** The first usable common configuration capability. */
  readonly common: PciStructureLocation;
  /** The first usable notification capability, with its multiplier. */
  readonly notify: PciNotifyLocation;
  /** The first usable ISR status capability. */
  readonly isr: PciStructureLocation;
  /** The device-specific configuration, if the device has one. */
  readonly device: PciStructureLocation | undefined;
  /** Configuration-space offset of the PCI configuration access capability, if present. */
  readonly pciCfgCap: number | undefined;
  /** The MSI-X capability, if present. */
  readonly msix:
    | {
        /** Configuration-space offset of the capability. */
        readonly cap: number;
        /** Number of table entries (Table Size + 1). */
        readonly vectors: number;
        /** BAR of the table. */
        readonly tableBar: number;
        /** Offset of the table in its BAR. */
        readonly tableOffset: number;
      }
    | undefined;
}

/** Options of a {@link PciDriverTransport}. */
export interface PciDriverOptions {
  /**
   * Bound on every loop that waits for the device: reset completion, queue reset, retries of a
   * configuration read whose generation changed (default 64).
   */
  readonly maxRetries?: number;
  /**
   * How the device interrupts: "intx" (default: the ISR status, read-to-clear) or "msix" (the
   * driver programs the MSI-X table with `msiAddress` / `msiDataBase + vector` and the host
   * hands each message to {@link PciDriverTransport.receiveMsi}). "msix" needs a device with
   * an MSI-X capability.
   */
  readonly interrupts?: "intx" | "msix";
  /** MSI-X message address programmed into every table entry (default 0xfee00000). */
  readonly msiAddress?: number;
  /** MSI-X message data of vector 0; vector `v` sends `msiDataBase + v` (default 0x4000). */
  readonly msiDataBase?: number;
  /**
   * How the structures are reached: "bar" (default) or "pci-cfg", through the `pci_cfg_data`
   * window of the PCI configuration access capability (§4.1.4.9), as firmware does when it
   * cannot map a BAR.
   */
  readonly access?: "bar" | "pci-cfg";
}

const COMMON_RING_RESET_END = PciCommonCfg.QUEUE_RESET + 2;

/** A value read from the device, cut to its width: a bus may return more bits than asked. */
function fit(v: number, size: 1 | 2 | 4): number {
  return size === 4 ? v >>> 0 : v & (size === 1 ? 0xff : 0xffff);
}

/**
 * The driver side of virtio over PCI (VIRTIO 1.3 §4.1), for modern devices, over any
 * {@link PciFunctionAccess}. It does what a guest's PCI core and virtio_pci driver do for one
 * function: check the IDs (§4.1.2.2), size the BARs with decoding off, enable decoding and bus
 * mastering, walk the capability list for the virtio structures (§4.1.4.1: reserved types and
 * BARs ignored, the first usable instance of each type taken, every structure checked against
 * its BAR), then run the initialisation sequence (§3.1.1), set up virtqueues (§4.1.5.1.3),
 * notify (§4.1.5.2) and take interrupts, by the ISR status (INTx) or by MSI-X vectors
 * (§4.1.5.1.2: one per queue plus one for configuration changes when the table has room, else
 * shared).
 *
 * Every access has its field's width (§4.1.3.1). Nothing the device returns is trusted:
 * waiting loops are bounded and a misbehaving device raises a {@link TransportError}.
 *
 * @example
 * ```ts
 * const dev = new VirtioPciDevice(model, { memory });
 * const t = new PciDriverTransport(dev); // a VirtioPciDevice is a PciFunctionAccess
 * t.negotiate((offered) => offered & wanted);
 * const q = t.setupQueue<string>(0, memory, { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 });
 * t.driverOk();
 * ```
 */
export class PciDriverTransport implements DriverTransport {
  readonly #bus: PciFunctionAccess;
  readonly #maxRetries: number;
  readonly #msi: boolean;
  readonly #msiAddress: number;
  readonly #msiData: number;
  readonly #viaCfg: boolean;
  #info: PciDeviceInfo | undefined;
  #features = 0n;
  readonly #queues: (SplitDriverQueue<unknown> | PackedDriverQueue<unknown> | undefined)[] = [];
  readonly #notifyOff: number[] = [];
  #msixReady = false;
  #pending = new Uint8Array(0);
  #configVector = VIRTIO_MSI_NO_VECTOR;

  /**
   * @param bus - configuration space and BAR access
   * @param options - retry bound, interrupt mode, MSI address/data, access path
   * @throws RangeError naming the option that is invalid
   */
  constructor(bus: PciFunctionAccess, options: PciDriverOptions = {}) {
    const maxRetries = options.maxRetries ?? 64;
    if (!Number.isInteger(maxRetries) || maxRetries < 1) {
      throw new RangeError(`options.maxRetries must be a positive integer, got ${maxRetries}`);
    }
    const mode = options.interrupts ?? "intx";
    if (mode !== "intx" && mode !== "msix") {
      throw new RangeError(`options.interrupts must be "intx" or "msix", got ${mode}`);
    }
    const access = options.access ?? "bar";
    if (access !== "bar" && access !== "pci-cfg") {
      throw new RangeError(`options.access must be "bar" or "pci-cfg", got ${access}`);
    }
    const addr = options.msiAddress ?? 0xfee00000;
    if (!Number.isSafeInteger(addr) || addr < 0 || addr % 4 !== 0) {
      throw new RangeError(`options.msiAddress must be a 4-aligned address, got ${addr}`);
    }
    const data = options.msiDataBase ?? 0x4000;
    if (!Number.isInteger(data) || data < 0 || data > 0xffffffff - 0x800) {
      throw new RangeError(`options.msiDataBase must be in [0, 2^32 - 0x800], got ${data}`);
    }
    this.#bus = bus;
    this.#maxRetries = maxRetries;
    this.#msi = mode === "msix";
    this.#msiAddress = addr;
    this.#msiData = data;
    this.#viaCfg = access === "pci-cfg";
  }

  /** What `probe` found (probing first if needed). */
  get info(): PciDeviceInfo {
    return this.#info ?? this.probe();
  }

  /** The negotiated features (0 before {@link PciDriverTransport.negotiate}). */
  get features(): bigint {
    return this.#features;
  }

  // ---- discovery (§4.1.2, §4.1.4, §4.1.5.1.1) ----

  #cfg(offset: number, size: 1 | 2 | 4): number {
    return fit(this.#bus.configRead(offset, size), size);
  }

  /**
   * Check the IDs, size the BARs, enable the function and find the virtio structures.
   *
   * @returns what was found
   * @throws TransportError "not-virtio", "missing-capability" or "bad-capability"
   */
  probe(): PciDeviceInfo {
    const bus = this.#bus;
    const vendor = this.#cfg(PciConfig.VENDOR_ID, 2);
    const pciDeviceId = this.#cfg(PciConfig.DEVICE_ID, 2);
    // §4.1.2.2: match Vendor 0x1af4 with Device 0x1040–0x107f (or a transitional 0x1000–0x103f).
    if (
      vendor !== PCI_VENDOR_ID_VIRTIO ||
      pciDeviceId < 0x1000 ||
      pciDeviceId > PCI_DEVICE_ID_MODERN_LAST
    ) {
      throw new TransportError(
        "not-virtio",
        `PCI ID ${vendor.toString(16)}:${pciDeviceId.toString(16)} is no virtio device`,
        (vendor << 16) | pciDeviceId,
      );
    }
    const subsystem = this.#cfg(PciConfig.SUBSYSTEM_ID, 2);
    const deviceId =
      pciDeviceId >= PCI_DEVICE_ID_MODERN_BASE
        ? pciDeviceId - PCI_DEVICE_ID_MODERN_BASE
        : subsystem;
    const bars = this.#sizeBars();
    const found = this.#walk(bars);
    // Enable the decoders the structures need, and bus mastering (the rings are DMA).
    let cmd = this.#cfg(PciConfig.COMMAND, 2) | PciCommand.MASTER;
    for (const b of bars) {
      if (b !== undefined) cmd |= b.kind === "io" ? PciCommand.IO : PciCommand.MEMORY;
    }
    if (this.#msi) cmd |= PciCommand.INTX_DISABLE; // as Linux's pci_intx_for_msi does
    bus.configWrite(PciConfig.COMMAND, 2, cmd);
    this.#info = {
      deviceId,
      vendorId: this.#cfg(PciConfig.SUBSYSTEM_VENDOR_ID, 2),
      pciDeviceId,
      revisionId: this.#cfg(PciConfig.REVISION_ID, 1),
      bars,
      ...found,
    };
    if (this.#msi && found.msix === undefined) {
      throw new TransportError(
        "missing-capability",
        'options.interrupts is "msix" but the device has no MSI-X capability',
      );
    }
    return this.#info;
  }

  /** Size every BAR with decoding off (writing all ones and restoring), as a PCI core does. */
  #sizeBars(): (PciBarSize | undefined)[] {
    const bus = this.#bus;
    const cmd = this.#cfg(PciConfig.COMMAND, 2);
    bus.configWrite(PciConfig.COMMAND, 2, cmd & ~(PciCommand.IO | PciCommand.MEMORY));
    const probe = (reg: number): [number, number] => {
      const orig = this.#cfg(reg, 4);
      bus.configWrite(reg, 4, 0xffffffff);
      const mask = this.#cfg(reg, 4);
      bus.configWrite(reg, 4, orig);
      return [orig, mask];
    };
    const bars: (PciBarSize | undefined)[] = [];
    for (let i = 0; i < 6; i++) {
      const reg = PciConfig.BASE_ADDRESS_0 + 4 * i;
      const [orig, mask] = probe(reg);
      if (mask === 0) {
        bars.push(undefined);
        continue;
      }
      if ((orig & PciBar.SPACE_IO) !== 0) {
        let m = (mask & PciBar.IO_MASK) >>> 0;
        if ((m & 0xffff0000) === 0) m = (m | 0xffff0000) >>> 0; // 16-bit I/O decode
        bars.push({ kind: "io", size: (~m >>> 0) + 1 });
        continue;
      }
      const m = (mask & PciBar.MEM_MASK) >>> 0;
      if ((orig & PciBar.MEM_TYPE_MASK) === PciBar.MEM_TYPE_64 && i < 5) {
        const [, hi] = probe(reg + 4);
        const size = m === 0 ? ((~hi >>> 0) + 1) * 0x100000000 : (~m >>> 0) + 1;
        bars.push({ kind: "memory64", size }, undefined);
        i++;
        continue;
      }
      bars.push(m === 0 ? undefined : { kind: "memory32", size: (~m >>> 0) + 1 });
    }
    bus.configWrite(PciConfig.COMMAND, 2, cmd);
    return bars;
  }

  #walk(bars: readonly (PciBarSize | undefined)[]) {
    if ((this.#cfg(PciConfig.STATUS, 2) & PciStatus.CAP_LIST) === 0) {
      throw new TransportError("missing-capability", "the status register has no capability list");
    }
    const first = new Map<
      number,
      { cap: number; bar: number; offset: number; length: number; mult: number }
    >();
    let pciCfgCap: number | undefined;
    let msix: PciDeviceInfo["msix"];
    const seen = new Set<number>();
    let pos = this.#cfg(PciConfig.CAPABILITY_LIST, 1) & ~3;
    while (pos !== 0) {
      if (pos < PciConfig.HEADER_SIZE || pos > PciConfig.SIZE - 4 || seen.has(pos)) {
        throw new TransportError("bad-capability", `capability pointer 0x${pos.toString(16)}`, pos);
      }
      seen.add(pos);
      const id = this.#cfg(pos, 1);
      const next = this.#cfg(pos + 1, 1) & ~3;
      if (id === PciCapId.MSIX && msix === undefined) {
        const flags = this.#cfg(pos + PciMsix.FLAGS, 2);
        const table = this.#cfg(pos + PciMsix.TABLE, 4);
        const vectors = (flags & PciMsix.FLAGS_QSIZE) + 1;
        const tableBar = table & PciMsix.BIR_MASK;
        const tableOffset = (table & ~PciMsix.BIR_MASK) >>> 0;
        const b = bars[tableBar];
        if (
          b !== undefined &&
          b.kind !== "io" &&
          tableOffset + vectors * PciMsix.ENTRY_SIZE <= b.size
        ) {
          msix = { cap: pos, vectors, tableBar, tableOffset };
        }
      } else if (id === PciCapId.VNDR && pos + PciCap.SIZE <= PciConfig.SIZE) {
        const capLen = this.#cfg(pos + PciCap.CAP_LEN, 1);
        const type = this.#cfg(pos + PciCap.CFG_TYPE, 1);
        const bar = this.#cfg(pos + PciCap.BAR, 1);
        // §4.1.4.1: ignore reserved cfg_type and bar values; take the first of each type;
        // accept a cap_len larger than the structure (but not a shorter one).
        const need =
          type === PciCapType.NOTIFY_CFG
            ? PciNotifyCap.SIZE
            : type === PciCapType.PCI_CFG
              ? PciCfgCap.SIZE
              : PciCap.SIZE;
        if (type === PciCapType.PCI_CFG) {
          if (pciCfgCap === undefined && capLen >= need) pciCfgCap = pos;
        } else if (
          type >= PciCapType.COMMON_CFG &&
          type <= PciCapType.DEVICE_CFG &&
          bar <= 5 &&
          bars[bar] !== undefined &&
          capLen >= need &&
          !first.has(type)
        ) {
          first.set(type, {
            cap: pos,
            bar,
            offset: this.#cfg(pos + PciCap.OFFSET, 4),
            length: this.#cfg(pos + PciCap.LENGTH, 4),
            mult:
              type === PciCapType.NOTIFY_CFG
                ? this.#cfg(pos + PciNotifyCap.NOTIFY_OFF_MULTIPLIER, 4)
                : 0,
          });
        }
      }
      pos = next;
    }
    // As Linux's vp_modern_map_capability: minimum length, alignment, inside the BAR.
    const place = (
      type: number,
      what: string,
      minlen: number,
      align: number,
    ): PciStructureLocation => {
      const c = first.get(type);
      if (c === undefined) {
        throw new TransportError("missing-capability", `no usable ${what} capability (§4.1.4)`);
      }
      const barSize = bars[c.bar]!.size;
      if (c.length < minlen || c.offset % align !== 0 || c.offset + minlen > barSize) {
        throw new TransportError(
          "bad-capability",
          `${what} structure ${c.length}@0x${c.offset.toString(16)} in BAR ${c.bar} of ${barSize} bytes (needs ${minlen} bytes aligned to ${align})`,
          c.offset,
        );
      }
      return {
        cap: c.cap,
        bar: c.bar,
        offset: c.offset,
        length: Math.min(c.length, barSize - c.offset),
      };
    };
    const common = place(
      PciCapType.COMMON_CFG,
      "common configuration",
      PCI_COMMON_CFG_V1_0_SIZE,
      4,
    );
    const isr = place(PciCapType.ISR_CFG, "ISR status", 1, 1);
    const notify = place(PciCapType.NOTIFY_CFG, "notification", 2, 2);
    const device = first.has(PciCapType.DEVICE_CFG)
      ? place(PciCapType.DEVICE_CFG, "device configuration", 0, 4)
      : undefined;
    return {
      common,
      isr,
      notify: { ...notify, multiplier: first.get(PciCapType.NOTIFY_CFG)!.mult },
      device,
      pciCfgCap,
      msix,
    };
  }

  // ---- structure access ----

  #rd(s: PciStructureLocation, off: number, size: 1 | 2 | 4): number {
    const v = this.#viaCfg
      ? this.#window(s.bar, s.offset + off, size, undefined)
      : this.#bus.barRead(s.bar, s.offset + off, size);
    return fit(v, size);
  }

  #wr(s: PciStructureLocation, off: number, size: 1 | 2 | 4, value: number): void {
    if (this.#viaCfg) this.#window(s.bar, s.offset + off, size, value >>> 0);
    else this.#bus.barWrite(s.bar, s.offset + off, size, value >>> 0);
  }

  /** One access through `pci_cfg_data` (§4.1.4.9): bar, length and offset, then the data. */
  #window(bar: number, offset: number, size: 1 | 2 | 4, value: number | undefined): number {
    const cap = this.info.pciCfgCap;
    if (cap === undefined) {
      throw new TransportError("missing-capability", "no PCI configuration access capability");
    }
    const bus = this.#bus;
    bus.configWrite(cap + PciCap.BAR, 1, bar);
    bus.configWrite(cap + PciCap.LENGTH, 4, size);
    // §4.1.4.9.2: cap.offset is a multiple of cap.length (every field access is aligned).
    bus.configWrite(cap + PciCap.OFFSET, 4, offset);
    if (value === undefined) return bus.configRead(cap + PciCfgCap.PCI_CFG_DATA, size);
    bus.configWrite(cap + PciCfgCap.PCI_CFG_DATA, size, value);
    return 0;
  }

  #common(off: number, size: 1 | 2 | 4): number {
    return this.#rd(this.info.common, off, size);
  }

  #setCommon(off: number, size: 1 | 2 | 4, value: number): void {
    this.#wr(this.info.common, off, size, value);
  }

  /** The device status field. */
  get status(): number {
    return this.#common(PciCommonCfg.DEVICE_STATUS, 1);
  }

  /** Set status bits, keeping the ones already set (§2.1.1: never clear one). */
  #setStatus(bits: number): void {
    this.#setCommon(PciCommonCfg.DEVICE_STATUS, 1, this.status | bits);
  }

  /** Whether the device has set DEVICE_NEEDS_RESET. */
  get needsReset(): boolean {
    return (this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /** `num_queues`: the number of virtqueues the device has. */
  get numQueues(): number {
    return this.#common(PciCommonCfg.NUM_QUEUES, 2);
  }

  /**
   * Reset the device: write 0 to `device_status` and wait (bounded) until it reads 0
   * (§4.1.4.3.2). Forgets every queue set up through this transport.
   * @throws TransportError "reset-timeout"
   */
  reset(): void {
    this.#setCommon(PciCommonCfg.DEVICE_STATUS, 1, 0);
    this.#queues.length = 0;
    this.#notifyOff.length = 0;
    this.#features = 0n;
    this.#configVector = VIRTIO_MSI_NO_VECTOR;
    for (let i = 0; i < this.#maxRetries; i++) {
      if (this.status === 0) return;
    }
    throw new TransportError(
      "reset-timeout",
      "device_status did not read 0 after a reset",
      this.status,
    );
  }

  /** Set FAILED: the driver gives up on the device (§3.1.1); reset before trying again. */
  fail(): void {
    this.#setStatus(DeviceStatus.FAILED);
  }

  /**
   * Steps 1–6 of the initialisation sequence (§3.1.1), and with MSI-X the table and the
   * configuration change vector (§4.1.5.1.2).
   *
   * The accepted set is `accept(offered)` (or `accept & offered`) restricted to the offered
   * bits and, among the reserved bits, to {@link DRIVER_TRANSPORT_FEATURES}, with VERSION_1
   * always; NOTIFICATION_DATA is left out when the notification structure cannot take 32-bit
   * notifications (§4.1.4.4.1) and RING_RESET when the common configuration ends before
   * `queue_reset`.
   *
   * @param accept - the features the caller wants, or a function choosing them from the offer
   * @returns the negotiated features
   * @throws TransportError from `probe`, "not-modern", "features-refused" or "vector-refused"
   *   (FAILED set in the last three cases)
   */
  negotiate(accept: bigint | ((offered: bigint) => bigint)): bigint {
    const info = this.info;
    this.reset();
    this.#setStatus(DeviceStatus.ACKNOWLEDGE);
    this.#setStatus(DeviceStatus.DRIVER);
    let offered = 0n;
    for (let sel = 0; sel < 2; sel++) {
      this.#setCommon(PciCommonCfg.DEVICE_FEATURE_SELECT, 4, sel);
      offered |= BigInt(this.#common(PciCommonCfg.DEVICE_FEATURE, 4)) << BigInt(32 * sel);
    }
    if (!hasFeature(offered, Feature.VERSION_1)) {
      this.fail();
      throw new TransportError("not-modern", "the device does not offer VIRTIO_F_VERSION_1");
    }
    const wanted = typeof accept === "bigint" ? accept : accept(offered);
    let accepted = wanted & offered & ~(FEATURE_TRANSPORT_MASK & ~DRIVER_TRANSPORT_FEATURES);
    accepted |= featureMask(Feature.VERSION_1);
    const n = info.notify;
    if (n.offset % 4 !== 0 || n.multiplier % 4 !== 0 || n.length < 4) {
      accepted &= ~featureMask(Feature.NOTIFICATION_DATA);
    }
    if (info.common.length < COMMON_RING_RESET_END) accepted &= ~featureMask(Feature.RING_RESET);
    for (let sel = 0; sel < 2; sel++) {
      this.#setCommon(PciCommonCfg.DRIVER_FEATURE_SELECT, 4, sel);
      this.#setCommon(
        PciCommonCfg.DRIVER_FEATURE,
        4,
        Number((accepted >> BigInt(32 * sel)) & 0xffffffffn),
      );
    }
    this.#setStatus(DeviceStatus.FEATURES_OK);
    const s = this.status;
    if ((s & DeviceStatus.FEATURES_OK) === 0) {
      this.fail();
      throw new TransportError("features-refused", "FEATURES_OK did not stick (§3.1.1 step 6)", s);
    }
    this.#features = accepted;
    if (this.#msi) {
      this.#enableMsix();
      this.#configVector = 0;
      this.#setCommon(PciCommonCfg.CONFIG_MSIX_VECTOR, 2, 0);
      this.#checkVector(this.#common(PciCommonCfg.CONFIG_MSIX_VECTOR, 2), "config_msix_vector");
    }
    return accepted;
  }

  /** Program every MSI-X table entry and enable MSI-X (function masked while programming). */
  #enableMsix(): void {
    if (this.#msixReady) return;
    const m = this.info.msix!;
    const bus = this.#bus;
    const flags = m.cap + PciMsix.FLAGS;
    bus.configWrite(flags, 2, PciMsix.FLAGS_ENABLE | PciMsix.FLAGS_MASKALL);
    for (let v = 0; v < m.vectors; v++) {
      const e = m.tableOffset + v * PciMsix.ENTRY_SIZE;
      bus.barWrite(m.tableBar, e + PciMsix.ENTRY_LOWER_ADDR, 4, this.#msiAddress % 0x100000000);
      bus.barWrite(
        m.tableBar,
        e + PciMsix.ENTRY_UPPER_ADDR,
        4,
        Math.floor(this.#msiAddress / 0x100000000),
      );
      bus.barWrite(m.tableBar, e + PciMsix.ENTRY_DATA, 4, (this.#msiData + v) >>> 0);
      bus.barWrite(m.tableBar, e + PciMsix.ENTRY_VECTOR_CTRL, 4, 0);
    }
    bus.configWrite(flags, 2, PciMsix.FLAGS_ENABLE);
    this.#pending = new Uint8Array(m.vectors);
    this.#msixReady = true;
  }

  /** §4.1.5.1.2.2: after mapping a vector, the driver MUST check it by reading it back. */
  #checkVector(read: number, field: string): void {
    if (read !== VIRTIO_MSI_NO_VECTOR) return;
    this.fail();
    throw new TransportError("vector-refused", `${field} reads NO_VECTOR after mapping`, read);
  }

  /** The vector queue `index` uses: its own when the table has room, else one shared. */
  #queueVector(index: number): number {
    const vectors = this.info.msix!.vectors;
    if (vectors >= this.numQueues + 1) return 1 + index;
    return vectors >= 2 ? 1 : 0;
  }

  // ---- queues (§4.1.5.1.3) ----

  /** `queue_size` of queue `index` after a reset: its maximum, 0 if it is unavailable. */
  queueMaxSize(index: number): number {
    this.#setCommon(PciCommonCfg.QUEUE_SELECT, 2, index);
    return this.#common(PciCommonCfg.QUEUE_SIZE, 2);
  }

  /**
   * Set up queue `index` (§4.1.5.1.3): check it is free and large enough, create the driver
   * queue (which zeroes its ring memory), write its size and areas, map its MSI-X vector and
   * check the mapping, find its notification address, enable it and read back that it is
   * enabled. The ring type follows the negotiated VIRTIO_F_RING_PACKED.
   *
   * @param index - queue index
   * @param memory - guest memory the ring is in
   * @param layout - the three area addresses and the size
   * @param options - indirect table area
   * @returns the driver queue
   * @throws TransportError "queue-unavailable", "queue-in-use", "queue-too-large",
   *   "queue-refused", "vector-refused" or "bad-capability" (notification address outside the
   *   notification structure); RangeError for a size the ring type does not allow
   */
  setupQueue<T>(
    index: number,
    memory: GuestMemory,
    layout: QueueLayout,
    options: DriverQueueSetupOptions = {},
  ): SplitDriverQueue<T> | PackedDriverQueue<T> {
    if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
      throw new RangeError(`index must be an integer in [0, 0xffff], got ${index}`);
    }
    const packed = hasFeature(this.#features, Feature.RING_PACKED);
    const size = layout.size;
    // §4.1.4.3.2: a power of 2 for split rings, never 0 for packed ones.
    if (!Number.isInteger(size) || size < 1 || (!packed && (size & (size - 1)) !== 0)) {
      throw new RangeError(
        `layout.size must be ${packed ? "positive" : "a power of 2"} for this ring, got ${size}`,
      );
    }
    this.#setCommon(PciCommonCfg.QUEUE_SELECT, 2, index);
    const enabled = this.#common(PciCommonCfg.QUEUE_ENABLE, 2);
    if (enabled !== 0) throw new TransportError("queue-in-use", `queue ${index} is live`, enabled);
    const max = this.#common(PciCommonCfg.QUEUE_SIZE, 2);
    if (max === 0) throw new TransportError("queue-unavailable", `queue ${index} has size 0`, 0);
    if (size > max) {
      throw new TransportError("queue-too-large", `queue ${index} holds at most ${max}`, max);
    }
    const n = this.info.notify;
    const nd = hasFeature(this.#features, Feature.NOTIFICATION_DATA);
    const notifyOff = this.#common(PciCommonCfg.QUEUE_NOTIFY_OFF, 2) * n.multiplier;
    if (notifyOff + (nd ? 4 : 2) > n.length) {
      throw new TransportError(
        "bad-capability",
        `queue ${index} notifies at ${notifyOff}, past the ${n.length}-byte notification structure`,
        notifyOff,
      );
    }
    const ring = ringFeatures(this.#features);
    const qopts = options.indirect === undefined ? {} : { indirect: options.indirect };
    const q = packed
      ? new PackedDriverQueue<T>(memory, layout, ring, qopts)
      : new SplitDriverQueue<T>(memory, layout, ring, qopts);
    this.#setCommon(PciCommonCfg.QUEUE_SIZE, 2, size);
    this.#writeAddress(PciCommonCfg.QUEUE_DESC_LO, layout.desc);
    this.#writeAddress(PciCommonCfg.QUEUE_DRIVER_LO, layout.driver);
    this.#writeAddress(PciCommonCfg.QUEUE_DEVICE_LO, layout.device);
    if (this.#msi) {
      this.#setCommon(PciCommonCfg.QUEUE_MSIX_VECTOR, 2, this.#queueVector(index));
      this.#checkVector(
        this.#common(PciCommonCfg.QUEUE_MSIX_VECTOR, 2),
        `queue ${index} queue_msix_vector`,
      );
    }
    // §4.1.4.3.2: the other queue fields are configured before queue_enable.
    this.#setCommon(PciCommonCfg.QUEUE_ENABLE, 2, 1);
    const back = this.#common(PciCommonCfg.QUEUE_ENABLE, 2);
    if (back !== 1) {
      throw new TransportError("queue-refused", `queue ${index} queue_enable reads ${back}`, back);
    }
    this.#queues[index] = q as SplitDriverQueue<unknown> | PackedDriverQueue<unknown>;
    this.#notifyOff[index] = notifyOff;
    return q;
  }

  #writeAddress(lowReg: number, addr: number): void {
    this.#setCommon(lowReg, 4, addr % 0x100000000);
    this.#setCommon(lowReg + 4, 4, Math.floor(addr / 0x100000000));
  }

  /**
   * Reset queue `index` alone (VIRTIO_F_RING_RESET, §2.6.1): write 1 to `queue_reset` and wait
   * (bounded) until it reads 0 (§4.1.4.3.2). Set the queue up again to reuse it.
   * @throws RangeError if RING_RESET was not negotiated; TransportError "reset-timeout"
   */
  resetQueue(index: number): void {
    if (!hasFeature(this.#features, Feature.RING_RESET)) {
      throw new RangeError("resetQueue needs VIRTIO_F_RING_RESET negotiated");
    }
    this.#setCommon(PciCommonCfg.QUEUE_SELECT, 2, index);
    this.#setCommon(PciCommonCfg.QUEUE_RESET, 2, 1);
    this.#queues[index] = undefined;
    for (let i = 0; i < this.#maxRetries; i++) {
      if (this.#common(PciCommonCfg.QUEUE_RESET, 2) === 0) return;
    }
    throw new TransportError("reset-timeout", `queue ${index} reset did not complete`, 1);
  }

  /** Step 8 (§3.1.1): set DRIVER_OK; the device is live. */
  driverOk(): void {
    this.#setStatus(DeviceStatus.DRIVER_OK);
  }

  /**
   * Send an available buffer notification for queue `index` (§4.1.5.2): a 16-bit write of the
   * queue index at its notification address, or with VIRTIO_F_NOTIFICATION_DATA a 32-bit write
   * of the index with the queue's next available position.
   */
  notify(index: number): void {
    const off = this.#notifyOff[index];
    if (off === undefined) return;
    const q = this.#queues[index];
    if (q !== undefined && hasFeature(this.#features, Feature.NOTIFICATION_DATA)) {
      const st = q.getState();
      this.#wr(
        this.info.notify,
        off,
        4,
        q instanceof PackedDriverQueue
          ? packedNotificationData(index, st.availIdx, st.availWrap)
          : splitNotificationData(index, st.availIdx),
      );
      return;
    }
    this.#wr(this.info.notify, off, 2, index);
  }

  // ---- interrupts ----

  /**
   * The host delivered an MSI-X message (from its `sendMsi`): note the vector.
   * @returns whether the message is one of this driver's (address and data match)
   */
  receiveMsi(address: number, data: number): boolean {
    const v = (data >>> 0) - this.#msiData;
    if (!this.#msixReady || address !== this.#msiAddress || v < 0 || v >= this.#pending.length) {
      return false;
    }
    this.#pending[v] = 1;
    return true;
  }

  /**
   * Handle an interrupt. INTx: read the ISR status, which clears it (§4.1.4.5). MSI-X: take
   * the vectors received since the last call; the configuration vector means a configuration
   * change, any other a used buffer (a vector shared by both reports both, §4.1.5.4.2).
   * @returns bit 0: used buffers (check every queue), bit 1: configuration change (check
   *   {@link PciDriverTransport.needsReset} too, §2.1.2)
   */
  takeInterrupt(): number {
    if (!this.#msixReady) {
      return this.#rd(this.info.isr, 0, 1) & (PciIsr.QUEUE | PciIsr.CONFIG);
    }
    let bits = 0;
    const p = this.#pending;
    for (let v = 0; v < p.length; v++) {
      if (p[v] === 0) continue;
      p[v] = 0;
      if (v === this.#configVector) bits |= PciIsr.CONFIG;
      if (v !== this.#configVector || p.length === 1) bits |= PciIsr.QUEUE;
    }
    return bits;
  }

  // ---- configuration (§2.5, §4.1.4.6) ----

  /** `config_generation`. */
  configGeneration(): number {
    return this.#common(PciCommonCfg.CONFIG_GENERATION, 1);
  }

  /**
   * Read configuration fields consistently (§2.5.1): run `fn` between two reads of
   * `config_generation` and again while they differ, bounded by `maxRetries`.
   *
   * @param fn - reads the fields through the given reader; may run several times
   * @returns what the last (consistent) run of `fn` returned
   * @throws TransportError "config-unstable", or "missing-capability" / "bad-capability" if
   *   the device has no configuration structure or `fn` reads past it
   */
  readConfig<R>(fn: (cfg: ConfigReader) => R): R {
    for (let i = 0; i < this.#maxRetries; i++) {
      const before = this.configGeneration();
      const result = fn(this.#reader);
      if (this.configGeneration() === before) return result;
    }
    throw new TransportError(
      "config-unstable",
      `configuration changed on each of ${this.#maxRetries} reads`,
    );
  }

  readonly #reader: ConfigReader = {
    u8: (offset) => this.#config(offset, 1),
    u16: (offset) => this.#config(offset, 2),
    u32: (offset) => this.#config(offset, 4),
    u64: (offset) => {
      const lo = this.#config(offset, 4);
      const hi = this.#config(offset + 4, 4);
      return (BigInt(hi) << 32n) | BigInt(lo);
    },
  };

  #deviceCfg(offset: number, size: 1 | 2 | 4): PciStructureLocation {
    if (!Number.isInteger(offset) || offset < 0 || offset % size !== 0) {
      throw new RangeError(`offset must be a non-negative multiple of ${size}, got ${offset}`);
    }
    const d = this.info.device;
    if (d === undefined) {
      throw new TransportError("missing-capability", "the device has no device configuration");
    }
    if (offset + size > d.length) {
      throw new TransportError(
        "bad-capability",
        `configuration field at ${offset} is past the ${d.length}-byte device configuration`,
        offset,
      );
    }
    return d;
  }

  #config(offset: number, size: 1 | 2 | 4): number {
    return this.#rd(this.#deviceCfg(offset, size), offset, size);
  }

  /**
   * Write a configuration field of `size` bytes (after FEATURES_OK, §3.1.1 step 4).
   * @throws RangeError naming `offset` if it is not aligned to `size`; TransportError as
   *   {@link PciDriverTransport.readConfig}
   */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.#wr(this.#deviceCfg(offset, size), offset, size, value);
  }
}
