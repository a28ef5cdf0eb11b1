import {
  DeviceId,
  DeviceStatus,
  Feature,
  featureMask,
  hasFeature,
  PCI_DEVICE_ID_MODERN_BASE,
  PCI_VENDOR_ID_VIRTIO,
  PciBar,
  PciCap,
  PciCapId,
  PciCapType,
  PciCfgCap,
  PciClass,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciMsix,
  PciNotifyCap,
  PciStatus,
  VIRTIO_MSI_MAX_VECTOR,
  VIRTIO_MSI_NO_VECTOR,
} from "@virtio-ts/spec";
import { QueueConfigError } from "@virtio-ts/virtqueue";
import {
  CONFIG_CHANGE_SOURCE,
  type DeviceCoreOptions,
  MMIO_TRANSPORT_FEATURES,
  VirtioDeviceCore,
} from "./device-core.js";
import type { DeviceModel } from "./device-model.js";
import { type DeviceState, DeviceStateMismatchError } from "./device-state.js";
import { decodePciTransportState, encodePciTransportState } from "./pci-transport-state.js";

/**
 * The reserved transport/ring feature bits a {@link VirtioPciDevice} may offer: the same set as
 * virtio-mmio (INDIRECT_DESC, EVENT_IDX, VERSION_1, ACCESS_PLATFORM, RING_PACKED, IN_ORDER,
 * ORDER_PLATFORM, NOTIFICATION_DATA, RING_RESET). Left out: SR_IOV (no SR-IOV capability),
 * NOTIF_CONFIG_DATA (`queue_notif_config_data` is the queue index, a driver gains nothing) and
 * ADMIN_VQ (no administration virtqueues). NOTIFICATION_DATA is dropped as well when the
 * notification multiplier is not a multiple of 4 (§4.1.4.4.1).
 *
 * @see VIRTIO 1.3 §2.2, §6
 */
export const PCI_TRANSPORT_FEATURES: bigint = MMIO_TRANSPORT_FEATURES;

/**
 * Names under which a {@link VirtioPciDevice} counts its traps: each field of
 * `virtio_pci_common_cfg` by its VIRTIO 1.3 name (a 64-bit field counts both halves), then the
 * other structures and PCI configuration space accesses, and "invalid" (an offset that is no
 * register).
 *
 * @see VIRTIO 1.3 §4.1.4.3
 */
export const PCI_REGISTER_NAMES = [
  "device_feature_select",
  "device_feature",
  "driver_feature_select",
  "driver_feature",
  "config_msix_vector",
  "num_queues",
  "device_status",
  "config_generation",
  "queue_select",
  "queue_size",
  "queue_msix_vector",
  "queue_enable",
  "queue_notify_off",
  "queue_desc",
  "queue_driver",
  "queue_device",
  "queue_notif_config_data",
  "queue_reset",
  "admin_queue_index",
  "admin_queue_num",
  /** A write to a queue's notification address (an available buffer notification). */
  "notify",
  /** The ISR status byte. */
  "isr",
  /** The device-specific configuration structure. */
  "device_config",
  /** The MSI-X table. */
  "msix_table",
  /** The MSI-X pending bit array. */
  "msix_pba",
  /** PCI configuration space outside `pci_cfg_data` (header and capabilities). */
  "pci_config",
  /** The `pci_cfg_data` window of the PCI configuration access capability. */
  "pci_cfg_data",
  "invalid",
] as const;

/** One trap counter name (see {@link PCI_REGISTER_NAMES}). */
export type PciRegisterName = (typeof PCI_REGISTER_NAMES)[number];

/**
 * The address space a BAR claims: I/O ports, or memory with a 32-bit or 64-bit address (a
 * 64-bit BAR takes two BAR registers).
 */
export type PciBarKind = "io" | "memory32" | "memory64";

/** A BAR of a {@link VirtioPciDevice}: what the host has to route to it once mapped. */
export interface PciBarInfo {
  /** BAR number, 0–5 (a 64-bit BAR also takes `index + 1`). */
  readonly index: number;
  /** Address space and width. */
  readonly kind: PciBarKind;
  /** Size in bytes, a power of 2 (I/O: at most 256; memory: at least 4096). */
  readonly size: number;
  /** What it holds: the virtio structures, or the MSI-X table and pending bit array. */
  readonly purpose: "virtio" | "msix";
}

/** Where the guest placed a BAR, while the device decodes it. */
export interface PciBarMapping {
  /** I/O port space or memory space. */
  readonly space: "io" | "memory";
  /** First port / guest-physical address. */
  readonly address: number;
  /** Size in bytes. */
  readonly size: number;
}

/**
 * What an emulator provides to a {@link VirtioPciDevice}: the device owns its configuration
 * space and BAR contents, the host owns the address spaces and the interrupt controller.
 * Guest RAM is the `GuestMemory` given in the options. Every callback is optional; one the host
 * leaves out is simply not called (a test rig that reaches BARs by number needs none).
 *
 * Implementer contract:
 * - `mapBar(bar, mapping)` is called whenever the place where BAR `bar` is decoded changes: the
 *   guest set or cleared the I/O or memory enable bit of the command register, or moved the BAR
 *   (firmware assigning addresses, an OS re-balancing). `undefined` means "not decoded any
 *   more": remove the handlers. Otherwise route guest accesses to
 *   `[mapping.address, mapping.address + mapping.size)` of `mapping.space` to
 *   `device.barRead(bar, addr - mapping.address, size)` / `barWrite`, with the guest's own
 *   access width: virtio-pci registers take field-wide accesses only (§4.1.3.1), so a bus that
 *   splits a 16- or 32-bit access into bytes (or merges bytes) breaks them. Calls come from inside
 *   `configWrite` (and `reset`); the host must not re-enter `configWrite` from it. A BAR is never
 *   reported mapped at address 0, across the top of the 32-bit space (the all-ones pattern of a
 *   BAR size probe), or for I/O above 0xffff.
 * - `setIntx(asserted)` drives the function's INTx pin (the one in `Interrupt Pin`, INTA# by
 *   default) as a level: it is called only when the level changes. Route it through the
 *   emulator's PCI interrupt routing (PIRQ / IOAPIC). Level-triggered is what PCI specifies; an
 *   edge-triggered controller also works because every read of the ISR status lowers the line
 *   before the next notification raises it again.
 * - `sendMsi(address, data)` delivers one MSI-X message: a 32-bit memory write of `data` to
 *   guest-physical `address` (on x86, the local APIC range 0xfee00000). Without it the device
 *   has no MSI-X capability unless `msixVectors` asks for one.
 * - None of them may throw; the device calls them from inside the guest's register access.
 *
 * @example
 * ```ts
 * const host: PciHost = {
 *   mapBar: (bar, m) => (m === undefined ? ports.unmap(bar) : ports.map(m.address, m.size, bar)),
 *   setIntx: (level) => pic.setLevel(irq, level),
 * };
 * ```
 */
export interface PciHost {
  /** BAR `bar` is now decoded at `mapping` (undefined: no longer decoded). */
  mapBar?(bar: number, mapping: PciBarMapping | undefined): void;
  /** The INTx line's new level. */
  setIntx?(asserted: boolean): void;
  /** Deliver an MSI-X message: write the 32-bit `data` at guest-physical `address`. */
  sendMsi?(address: number, data: number): void;
}

/** Options of a {@link VirtioPciDevice}: the core's options plus the PCI-specific ones. */
export interface VirtioPciDeviceOptions extends Omit<DeviceCoreOptions, "legacy" | "interrupt"> {
  /** The emulator's callbacks (BAR placement, INTx, MSI). Default: none. */
  readonly host?: PciHost;
  /**
   * Where the virtio structures (common configuration, notifications, ISR, device
   * configuration) live: an I/O BAR (BAR 0, at most 256 bytes; what emulators that cannot move
   * memory BARs, like v86, want), a 32-bit memory BAR (BAR 0, the default) or a 64-bit memory
   * BAR (BARs 0–1, as QEMU does). Linux's virtio_pci takes all three (§4.1.4: "The BAR is
   * permitted to be either 32-bit or 64-bit, it can map Memory Space or I/O Space").
   */
  readonly bar?: PciBarKind;
  /**
   * Number of MSI-X vectors (table entries), 0 for no MSI-X capability (INTx only). Default:
   * `numQueues + 1` (one per queue and one for configuration changes, at most 0x800) when
   * `host.sendMsi` exists, else 0. The table and pending bit array are in BAR 2, a 32-bit
   * memory BAR (the PCI specification puts MSI-X structures in memory space only).
   * @see VIRTIO 1.3 §4.1.5.1.2.1 (SHOULD support at least 2 and at most 0x800 vectors)
   */
  readonly msixVectors?: number;
  /**
   * `notify_off_multiplier`: 0 (every queue notifies at the same address; the written value
   * names the queue) or a power of 2 from 2 to 4096 (queue `n` notifies at `n × multiplier`).
   * Default 4, or 0 if per-queue addresses would not fit in a 256-byte I/O BAR. A multiplier of
   * 2 leaves VIRTIO_F_NOTIFICATION_DATA out of the offer (§4.1.4.4.1).
   */
  readonly notifyOffMultiplier?: number;
  /** PCI Revision ID (default 1: §4.1.2.1, non-transitional devices SHOULD have 1 or higher). */
  readonly revisionId?: number;
  /** 24-bit class code (default: per device type, as QEMU does; see {@link PciClass}). */
  readonly classCode?: number;
  /** Subsystem Vendor ID (default 0x1af4). */
  readonly subsystemVendorId?: number;
  /** Subsystem ID (default 0x40: §4.1.2.1, non-transitional devices SHOULD have 0x40 or higher). */
  readonly subsystemId?: number;
  /** Interrupt Pin: 1–4 for INTA#–INTD#, 0 for none (default 1). */
  readonly interruptPin?: number;
  /**
   * BAR addresses at power-on, for hosts without firmware that assigns them (default 0:
   * unassigned). Decoding still needs the command register's enable bits.
   */
  readonly barAddresses?: {
    /** Address of the virtio structures' BAR. */
    readonly virtio?: number;
    /** Address of the MSI-X BAR. */
    readonly msix?: number;
  };
}

/** Interrupt and fault counters of a {@link VirtioPciDevice}. */
export interface PciDeviceStats {
  /** Times the INTx line went from deasserted to asserted. */
  intxAssertions: number;
  /** MSI-X messages sent through `host.sendMsi`. */
  msiMessages: number;
  /** MSI-X notifications held pending because their vector or the function was masked. */
  msiPended: number;
  /** MSI-X notifications not sent because bus mastering is disabled in the command register. */
  msiDropped: number;
  /** Notifications not delivered because their event is mapped to NO_VECTOR (§4.1.5.3.1). */
  noVector: number;
}

// ---- layout ----

/** Offsets of the virtio structures in their BAR. */
const COMMON_OFF = 0;
const COMMON_LEN = PciCommonCfg.SIZE;
const ISR_OFF = 0x40;
const ISR_LEN = 4;
const DEVICE_OFF = 0x44;
const IO_BAR_MAX = 256;
const MEM_BAR_MIN = 4096;
const MSIX_BAR = 2;

/** Capability offsets in configuration space. */
const CAP_COMMON = 0x40;
const CAP_NOTIFY = CAP_COMMON + PciCap.SIZE; // 0x50
const CAP_ISR = CAP_NOTIFY + PciNotifyCap.SIZE; // 0x64
const CAP_DEVICE = CAP_ISR + PciCap.SIZE; // 0x74
const CAP_PCI_CFG = CAP_DEVICE + PciCap.SIZE; // 0x84
const CAP_MSIX = CAP_PCI_CFG + PciCfgCap.SIZE; // 0x98

const R = 1;
const W = 2;
const RW = 3;

/** [offset, name, width, direction] of each field of `virtio_pci_common_cfg`. §4.1.4.3 */
const COMMON_FIELDS: readonly (readonly [number, PciRegisterName, number, number])[] = [
  [PciCommonCfg.DEVICE_FEATURE_SELECT, "device_feature_select", 4, RW],
  [PciCommonCfg.DEVICE_FEATURE, "device_feature", 4, R],
  [PciCommonCfg.DRIVER_FEATURE_SELECT, "driver_feature_select", 4, RW],
  [PciCommonCfg.DRIVER_FEATURE, "driver_feature", 4, RW],
  [PciCommonCfg.CONFIG_MSIX_VECTOR, "config_msix_vector", 2, RW],
  [PciCommonCfg.NUM_QUEUES, "num_queues", 2, R],
  [PciCommonCfg.DEVICE_STATUS, "device_status", 1, RW],
  [PciCommonCfg.CONFIG_GENERATION, "config_generation", 1, R],
  [PciCommonCfg.QUEUE_SELECT, "queue_select", 2, RW],
  [PciCommonCfg.QUEUE_SIZE, "queue_size", 2, RW],
  [PciCommonCfg.QUEUE_MSIX_VECTOR, "queue_msix_vector", 2, RW],
  [PciCommonCfg.QUEUE_ENABLE, "queue_enable", 2, RW],
  [PciCommonCfg.QUEUE_NOTIFY_OFF, "queue_notify_off", 2, R],
  [PciCommonCfg.QUEUE_DESC_LO, "queue_desc", 4, RW],
  [PciCommonCfg.QUEUE_DESC_HI, "queue_desc", 4, RW],
  [PciCommonCfg.QUEUE_DRIVER_LO, "queue_driver", 4, RW],
  [PciCommonCfg.QUEUE_DRIVER_HI, "queue_driver", 4, RW],
  [PciCommonCfg.QUEUE_DEVICE_LO, "queue_device", 4, RW],
  [PciCommonCfg.QUEUE_DEVICE_HI, "queue_device", 4, RW],
  [PciCommonCfg.QUEUE_NOTIF_CONFIG_DATA, "queue_notif_config_data", 2, R],
  [PciCommonCfg.QUEUE_RESET, "queue_reset", 2, RW],
  [PciCommonCfg.ADMIN_QUEUE_INDEX, "admin_queue_index", 2, R],
  [PciCommonCfg.ADMIN_QUEUE_NUM, "admin_queue_num", 2, R],
];

const ID = (name: PciRegisterName): number => PCI_REGISTER_NAMES.indexOf(name);
const ID_NOTIFY = ID("notify");
const ID_ISR = ID("isr");
const ID_DEVICE_CONFIG = ID("device_config");
const ID_MSIX_TABLE = ID("msix_table");
const ID_MSIX_PBA = ID("msix_pba");
const ID_PCI_CONFIG = ID("pci_config");
const ID_PCI_CFG_DATA = ID("pci_cfg_data");
const ID_INVALID = ID("invalid");

/** By byte offset in the common configuration: field id (-1: no field starts here), width, direction. */
const COMMON_ID = new Int8Array(COMMON_LEN).fill(-1);
const COMMON_WIDTH = new Uint8Array(COMMON_LEN);
const COMMON_DIR = new Uint8Array(COMMON_LEN);
for (const [off, name, width, dir] of COMMON_FIELDS) {
  COMMON_ID[off] = ID(name);
  COMMON_WIDTH[off] = width;
  COMMON_DIR[off] = dir;
}

/** The class code QEMU gives each device type (virtio-pci `class_code` defaults). */
function defaultClassCode(deviceId: number): number {
  switch (deviceId) {
    case DeviceId.NET:
      return PciClass.NETWORK_ETHERNET << 8;
    case DeviceId.BLOCK:
    case DeviceId.SCSI:
      return PciClass.STORAGE_SCSI << 8;
    case DeviceId.CONSOLE:
    case DeviceId.VSOCK:
      return PciClass.COMMUNICATION_OTHER << 8;
    case DeviceId.BALLOON:
    case DeviceId.MEM:
      return PciClass.MEMORY_RAM << 8;
    case DeviceId.GPU:
      return PciClass.DISPLAY_OTHER << 8;
    case DeviceId.INPUT:
      return PciClass.INPUT_OTHER << 8;
    default:
      return PciClass.OTHERS << 8;
  }
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function checkU(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer in [0, ${max}], got ${value}`);
  }
  return value;
}

/**
 * The device side of virtio over PCI (VIRTIO 1.3 §4.1), for a modern (non-transitional) device:
 * the function's whole PCI configuration space and the contents of its BARs, as an emulator's
 * trap handler calls them. It knows nothing of any emulator: BAR placement, the INTx line and
 * MSI delivery go through the {@link PciHost} callbacks, and guest RAM is the `GuestMemory` in
 * the options. Everything virtio-generic is forwarded to a {@link VirtioDeviceCore} (`core`).
 *
 * What the guest finds:
 * - a type 0 header: Vendor ID 0x1af4, Device ID 0x1040 + device ID (§4.1.2.1), Revision 1,
 *   the class code of the device type, subsystem IDs, the command register (I/O, memory, bus
 *   master, INTx disable), the status register (capability list; interrupt status mirrors the
 *   ISR, §4.1.4.5.1), Interrupt Line / Pin, and BARs that answer size probes;
 * - a capability list at 0x40: common configuration, notification (with
 *   `notify_off_multiplier`), ISR status, device-specific configuration (when the device has
 *   one), the PCI configuration access capability (§4.1.4.9, its `pci_cfg_data` window reads and
 *   writes the virtio BAR), and MSI-X when enabled;
 * - BAR 0 (BARs 0–1 for a 64-bit BAR): common configuration at 0x00 (64 bytes), ISR status at
 *   0x40, device-specific configuration at 0x44, notification addresses after it;
 * - BAR 2 with MSI-X: the table, then the pending bit array.
 *
 * Interrupts: with MSI-X disabled, a notification sets ISR bits and asserts INTx (unless the
 * command register disables it); reading the ISR returns and clears it and deasserts the line.
 * With MSI-X enabled, a notification sends the message of the vector mapped to its queue
 * (`queue_msix_vector`) or to configuration changes (`config_msix_vector`), pends it while the
 * vector or the function is masked, and sends nothing for NO_VECTOR.
 *
 * Hostile drivers: nothing a guest does throws out of a trap handler. Accesses that are not a
 * field (wrong width, misaligned, past a structure) or go the wrong way (writes to read-only
 * fields) read 0 / are ignored and counted in `invalidAccesses`. A `queue_size` that is not a
 * power of 2 (split rings) or exceeds the maximum, and a `queue_enable` write other than 1, are
 * driver errors the device cannot work with: it enters DEVICE_NEEDS_RESET with a
 * `QueueConfigError`, like a bad ring address does. Only impossible arguments from the host
 * itself (a BAR the device does not have, an offset past the BAR) raise `RangeError`.
 *
 * Every trap handler call counts one exit, by register ({@link VirtioPciDevice.exitCounts}),
 * for the mode measurements of the lab.
 *
 * Emulators with a passive model of configuration space (an array the PCI bus reads) can keep
 * it: {@link VirtioPciDevice.configSpace} is kept current (including the interrupt status bit)
 * and {@link VirtioPciDevice.bars} describes each BAR. Writes must still reach `configWrite`
 * for BAR moves, MSI-X control and the `pci_cfg_data` window, and only `configRead` performs the
 * window's read side effect.
 *
 * Not implemented: the legacy (transitional) interface and its I/O BAR layout (§4.1.4.10),
 * shared memory and vendor data capabilities, SR-IOV, PCI Express capabilities (the device is a
 * conventional PCI function; extended configuration space reads 0), an expansion ROM, and
 * power management.
 *
 * @example
 * ```ts
 * const dev = new VirtioPciDevice(new RngDevice(source), { memory, bar: "io", host });
 * // the bus's configuration-space handler for this function:
 * const v = dev.configRead(reg, 4);
 * // the port handlers the host installed when mapBar(0, { space: "io", address, size }) came:
 * dev.barWrite(0, port - address, 2, value);
 * ```
 */
export class VirtioPciDevice {
  /** The device core behind the registers. */
  readonly core: VirtioDeviceCore;
  /**
   * The configuration space image (256 bytes, little-endian), kept current after every access
   * and interrupt change. Read-only for the host: write through {@link VirtioPciDevice.configWrite}.
   */
  readonly configSpace: Uint8Array;
  /** The BARs the device implements, virtio structures first. */
  readonly bars: readonly PciBarInfo[];
  /** `notify_off_multiplier` presented in the notification capability. */
  readonly notifyOffMultiplier: number;
  /** Number of MSI-X vectors (0: no MSI-X capability). */
  readonly msixVectors: number;
  /** Offsets of the structures in the virtio BAR. */
  readonly layout: {
    /** Common configuration. */
    readonly common: number;
    /** ISR status. */
    readonly isr: number;
    /** Device-specific configuration (its length is `model.configSize`). */
    readonly device: number;
    /** Notification area. */
    readonly notify: number;
    /** Length of the notification area. */
    readonly notifyLength: number;
  };
  /** Interrupt counters (mutated in place). */
  readonly stats: PciDeviceStats = {
    intxAssertions: 0,
    msiMessages: 0,
    msiPended: 0,
    msiDropped: 0,
    noVector: 0,
  };
  /** Accesses that were not valid (no such field, wrong width or direction, bad window). */
  invalidAccesses = 0;

  readonly #host: PciHost;
  readonly #cfg: Uint8Array;
  readonly #wmask: Uint8Array;
  readonly #dv: DataView;
  readonly #initial: Uint8Array;
  readonly #counts = new Float64Array(PCI_REGISTER_NAMES.length);
  readonly #virtioBar: PciBarInfo;
  readonly #msixBar: PciBarInfo | undefined;
  readonly #mapped: (PciBarMapping | undefined)[] = [undefined, undefined, undefined];
  readonly #queueVectors: Uint16Array;
  readonly #msixTable: Uint32Array;
  readonly #msixPba: Uint32Array;
  readonly #msixPbaOff: number;
  readonly #hasDeviceCfg: boolean;
  #configVector = VIRTIO_MSI_NO_VECTOR;
  #deviceFeatureSel = 0;
  #driverFeatureSel = 0;
  #queueSel = 0;
  #generation = 0;
  #seenGeneration = 0;
  #intx = false;
  #exits = 0;
  /** Whether VIRTIO_F_NOTIFICATION_DATA is negotiated (FEATURES_OK set with it). */
  #notificationData = false;

  /**
   * @param model - the device type
   * @param options - memory, host callbacks, BAR kind, MSI-X vectors, IDs
   * @throws RangeError naming the option that is out of range (or from {@link VirtioDeviceCore}
   *   for an invalid model); TypeError if `msixVectors` asks for MSI-X without `host.sendMsi`
   */
  constructor(model: DeviceModel, options: VirtioPciDeviceOptions) {
    this.#host = options.host ?? {};
    const kind = options.bar ?? "memory32";
    if (kind !== "io" && kind !== "memory32" && kind !== "memory64") {
      throw new RangeError(`options.bar must be "io", "memory32" or "memory64", got ${kind}`);
    }
    const nq = model.queueMaxSizes.length;
    const configSize = model.configSize;
    const msix = checkU(
      "options.msixVectors",
      options.msixVectors ??
        (this.#host.sendMsi === undefined ? 0 : Math.min(nq + 1, VIRTIO_MSI_MAX_VECTOR + 1)),
      VIRTIO_MSI_MAX_VECTOR + 1,
    );
    if (msix > 0 && this.#host.sendMsi === undefined) {
      throw new TypeError("options.msixVectors > 0 needs options.host.sendMsi to deliver MSI-X");
    }
    this.msixVectors = msix;
    const notifyOff = (size: number) => (DEVICE_OFF + size + 3) & ~3;
    const notifyLen = (mult: number) => Math.max(4, nq === 0 ? 4 : (nq - 1) * mult + 4);
    let mult = options.notifyOffMultiplier;
    if (mult === undefined) {
      mult = kind === "io" && notifyOff(configSize) + notifyLen(4) > IO_BAR_MAX && nq > 1 ? 0 : 4;
    } else if (
      !Number.isInteger(mult) ||
      (mult !== 0 && (mult < 2 || mult > 4096 || (mult & (mult - 1)) !== 0))
    ) {
      // §4.1.4.4.1: an even power of 2 (a multiple of 4 with NOTIFICATION_DATA) or 0.
      throw new RangeError(
        `options.notifyOffMultiplier must be 0 or a power of 2 in [2, 4096], got ${mult}`,
      );
    }
    this.notifyOffMultiplier = mult;
    const layout = {
      common: COMMON_OFF,
      isr: ISR_OFF,
      device: DEVICE_OFF,
      notify: notifyOff(configSize),
      notifyLength: notifyLen(mult),
    };
    this.layout = layout;
    const total = layout.notify + layout.notifyLength;
    if (kind === "io" && total > IO_BAR_MAX) {
      // PCI 3.0 §6.2.5.1: an I/O BAR must not claim more than 256 bytes.
      throw new RangeError(
        `the virtio structures need ${total} bytes, more than an I/O BAR's 256: use options.bar "memory32" or options.notifyOffMultiplier 0`,
      );
    }
    this.#virtioBar = {
      index: 0,
      kind,
      size: kind === "io" ? nextPow2(total) : Math.max(MEM_BAR_MIN, nextPow2(total)),
      purpose: "virtio",
    };
    const pbaOff = msix * PciMsix.ENTRY_SIZE;
    this.#msixPbaOff = pbaOff;
    if (msix > 0) {
      this.#msixBar = {
        index: MSIX_BAR,
        kind: "memory32",
        size: Math.max(MEM_BAR_MIN, nextPow2(pbaOff + 8 * Math.ceil(msix / 64))),
        purpose: "msix",
      };
    }
    this.bars = this.#msixBar === undefined ? [this.#virtioBar] : [this.#virtioBar, this.#msixBar];
    this.#msixTable = new Uint32Array(4 * msix);
    this.#msixPba = new Uint32Array(2 * Math.ceil(msix / 64));
    this.#queueVectors = new Uint16Array(nq).fill(VIRTIO_MSI_NO_VECTOR);
    this.#hasDeviceCfg = configSize > 0;

    let transportFeatures = options.transportFeatures ?? PCI_TRANSPORT_FEATURES;
    if (mult % 4 !== 0) transportFeatures &= ~featureMask(Feature.NOTIFICATION_DATA);
    this.core = new VirtioDeviceCore(model, {
      ...options,
      transportFeatures,
      legacy: false,
      interrupt: (_status, source) => this.#onNotification(source),
    });

    const cfg = new Uint8Array(PciConfig.SIZE);
    this.#cfg = cfg;
    this.configSpace = cfg;
    this.#dv = new DataView(cfg.buffer);
    this.#wmask = new Uint8Array(PciConfig.SIZE);
    this.#buildHeader(model, options);
    this.#initial = cfg.slice();
    this.#resetMsix();
  }

  #buildHeader(model: DeviceModel, o: VirtioPciDeviceOptions): void {
    const dv = this.#dv;
    const wm = this.#wmask;
    const id = model.deviceId;
    if (!Number.isInteger(id) || id < 1 || id > 63) {
      throw new RangeError(`model.deviceId must be in [1, 63] for PCI (0x1040 + ID), got ${id}`);
    }
    dv.setUint16(PciConfig.VENDOR_ID, PCI_VENDOR_ID_VIRTIO, true);
    dv.setUint16(PciConfig.DEVICE_ID, PCI_DEVICE_ID_MODERN_BASE + id, true);
    dv.setUint16(PciConfig.STATUS, PciStatus.CAP_LIST, true);
    dv.setUint8(PciConfig.REVISION_ID, checkU("options.revisionId", o.revisionId ?? 1, 0xff));
    const cls = checkU("options.classCode", o.classCode ?? defaultClassCode(id), 0xffffff);
    dv.setUint8(PciConfig.CLASS_PROG, cls & 0xff);
    dv.setUint16(PciConfig.CLASS_DEVICE, cls >>> 8, true);
    dv.setUint16(
      PciConfig.SUBSYSTEM_VENDOR_ID,
      checkU("options.subsystemVendorId", o.subsystemVendorId ?? PCI_VENDOR_ID_VIRTIO, 0xffff),
      true,
    );
    dv.setUint16(
      PciConfig.SUBSYSTEM_ID,
      checkU("options.subsystemId", o.subsystemId ?? 0x40, 0xffff),
      true,
    );
    dv.setUint8(PciConfig.INTERRUPT_PIN, checkU("options.interruptPin", o.interruptPin ?? 1, 4));
    dv.setUint8(PciConfig.CAPABILITY_LIST, CAP_COMMON);
    // Writable bits: command (I/O, memory, bus master, INTx disable), cache line size, line.
    wm[PciConfig.COMMAND] = PciCommand.IO | PciCommand.MEMORY | PciCommand.MASTER;
    wm[PciConfig.COMMAND + 1] = PciCommand.INTX_DISABLE >> 8;
    wm[PciConfig.CACHE_LINE_SIZE] = 0xff;
    wm[PciConfig.INTERRUPT_LINE] = 0xff;

    // BARs: address bits above the size are writable, the type bits are not.
    for (const bar of this.bars) {
      const reg = PciConfig.BASE_ADDRESS_0 + 4 * bar.index;
      const flags =
        bar.kind === "io"
          ? PciBar.SPACE_IO
          : bar.kind === "memory64"
            ? PciBar.MEM_TYPE_64
            : PciBar.MEM_TYPE_32;
      const mask = ~(bar.size - 1) & (bar.kind === "io" ? PciBar.IO_MASK : PciBar.MEM_MASK);
      dv.setUint32(reg, flags, true);
      for (let i = 0; i < 4; i++) wm[reg + i] = (mask >>> (8 * i)) & 0xff;
      if (bar.kind === "memory64") wm.fill(0xff, reg + 4, reg + 8);
      const addr = bar.purpose === "virtio" ? o.barAddresses?.virtio : o.barAddresses?.msix;
      if (addr !== undefined) {
        const max = bar.kind === "memory64" ? Number.MAX_SAFE_INTEGER : 0xffffffff;
        if (!Number.isSafeInteger(addr) || addr < 0 || addr > max || addr % bar.size !== 0) {
          throw new RangeError(
            `options.barAddresses.${bar.purpose} must be a multiple of the BAR size ${bar.size} below ${max + 1}, got ${addr}`,
          );
        }
        dv.setUint32(reg, ((addr % 0x100000000) | flags) >>> 0, true);
        if (bar.kind === "memory64") dv.setUint32(reg + 4, Math.floor(addr / 0x100000000), true);
      }
    }

    // Capabilities (§4.1.4): common, notify, ISR, device (if any), PCI cfg access, MSI-X.
    const caps: [number, number][] = [];
    const vcap = (at: number, type: number, len: number, offset: number, length: number) => {
      dv.setUint8(at + PciCap.CAP_VNDR, PciCapId.VNDR);
      dv.setUint8(at + PciCap.CAP_LEN, len); // §4.1.4.2: cap_len covers the extra data
      dv.setUint8(at + PciCap.CFG_TYPE, type);
      dv.setUint8(at + PciCap.BAR, this.#virtioBar.index);
      dv.setUint32(at + PciCap.OFFSET, offset, true);
      dv.setUint32(at + PciCap.LENGTH, length, true);
      caps.push([at, len]);
    };
    const l = this.layout;
    vcap(CAP_COMMON, PciCapType.COMMON_CFG, PciCap.SIZE, l.common, COMMON_LEN);
    vcap(CAP_NOTIFY, PciCapType.NOTIFY_CFG, PciNotifyCap.SIZE, l.notify, l.notifyLength);
    dv.setUint32(CAP_NOTIFY + PciNotifyCap.NOTIFY_OFF_MULTIPLIER, this.notifyOffMultiplier, true);
    vcap(CAP_ISR, PciCapType.ISR_CFG, PciCap.SIZE, l.isr, ISR_LEN);
    if (this.#hasDeviceCfg) {
      vcap(CAP_DEVICE, PciCapType.DEVICE_CFG, PciCap.SIZE, l.device, model.configSize);
    }
    vcap(CAP_PCI_CFG, PciCapType.PCI_CFG, PciCfgCap.SIZE, 0, 0);
    // §4.1.4.9: cap.bar, cap.offset, cap.length and pci_cfg_data are read-write.
    wm[CAP_PCI_CFG + PciCap.BAR] = 0xff;
    wm.fill(0xff, CAP_PCI_CFG + PciCap.OFFSET, CAP_PCI_CFG + PciCfgCap.SIZE);
    if (this.#msixBar !== undefined) {
      const n = this.msixVectors;
      dv.setUint8(CAP_MSIX, PciCapId.MSIX);
      dv.setUint16(CAP_MSIX + PciMsix.FLAGS, n - 1, true);
      dv.setUint32(CAP_MSIX + PciMsix.TABLE, 0 | MSIX_BAR, true);
      dv.setUint32(CAP_MSIX + PciMsix.PBA, this.#msixPbaOff | MSIX_BAR, true);
      wm[CAP_MSIX + PciMsix.FLAGS + 1] = (PciMsix.FLAGS_ENABLE | PciMsix.FLAGS_MASKALL) >> 8;
      caps.push([CAP_MSIX, PciMsix.CAP_SIZE]);
    }
    for (let i = 0; i + 1 < caps.length; i++) dv.setUint8(caps[i]![0] + 1, caps[i + 1]![0]);
  }

  // ---- counters ----

  /** Total exits (trap handler calls) since construction or {@link VirtioPciDevice.resetCounters}. */
  get exits(): number {
    return this.#exits;
  }

  /** Exits by register name, only the registers that were accessed. */
  exitCounts(): Partial<Record<PciRegisterName, number>> {
    const out: Partial<Record<PciRegisterName, number>> = {};
    for (let i = 0; i < PCI_REGISTER_NAMES.length; i++) {
      if (this.#counts[i]! > 0) out[PCI_REGISTER_NAMES[i]!] = this.#counts[i]!;
    }
    return out;
  }

  /** Zero the exit counters, `invalidAccesses` and the interrupt counters. */
  resetCounters(): void {
    this.#counts.fill(0);
    this.#exits = 0;
    this.invalidAccesses = 0;
    const s = this.stats;
    s.intxAssertions = s.msiMessages = s.msiPended = s.msiDropped = s.noVector = 0;
  }

  // ---- state the host may look at ----

  /** Whether the INTx line is asserted. */
  get intxAsserted(): boolean {
    return this.#intx;
  }

  /** Whether the guest enabled MSI-X (message control bit 15). */
  get msixEnabled(): boolean {
    return this.msixVectors > 0 && (this.#cfg[CAP_MSIX + 3]! & 0x80) !== 0;
  }

  /** The command register. */
  get command(): number {
    return this.#dv.getUint16(PciConfig.COMMAND, true);
  }

  /** Where BAR `bar` is decoded now, undefined while it is not. */
  barMapping(bar: number): PciBarMapping | undefined {
    return this.#mapped[bar];
  }

  /**
   * PCI reset (RST#, or a function-level reset): the configuration space returns to its
   * power-on contents (decoding off, so every mapped BAR is unmapped; MSI-X disabled with every
   * vector masked; the `pci_cfg` window cleared) and the virtio device is reset (§2.4).
   */
  reset(): void {
    this.core.reset();
    this.#virtioReset();
    this.#cfg.set(this.#initial);
    this.#resetMsix();
    this.#updateMappings();
    this.#updateIntx();
  }

  /**
   * Re-evaluate the INTx line from the ISR status. Needed only when a data plane elsewhere sets
   * bits in the model's shared `DeviceNotifiers.interruptStatus` word (vhost): call it when that
   * data plane signals its interrupt.
   */
  syncInterrupts(): void {
    this.#updateIntx();
  }

  // ---- suspend / resume: moving the function (a migration, a snapshot) ----

  /**
   * The function's own registers, for the transport section of the device state
   * (`core.saveState(pci.saveTransportState())`, or {@link savePciDevice} in one call):
   * configuration space (command register, BAR addresses, Interrupt Line, the `pci_cfg`
   * capability, MSI-X control), the MSI-X table and pending bits, the vectors mapped to each
   * queue and to configuration changes, the common configuration's selectors
   * (`device_feature_select`, `driver_feature_select`, `queue_select`, §4.1.4.3) and the
   * presented `config_generation`. The ISR status and the INTx level are the core's (its
   * `interruptStatus`), saved by `core.saveState`.
   * @returns versioned bytes for {@link VirtioPciDevice.restoreState}
   */
  saveTransportState(): Uint8Array {
    return encodePciTransportState({
      config: this.#cfg,
      msixTable: this.#msixTable,
      msixPba: this.#msixPba,
      queueVectors: this.#queueVectors,
      configVector: this.#configVector,
      deviceFeatureSelect: this.#deviceFeatureSel,
      driverFeatureSelect: this.#driverFeatureSel,
      queueSelect: this.#queueSel,
      generation: this.#generation,
      seenGeneration: this.#seenGeneration,
    });
  }

  /**
   * Bring this fresh function (never configured: command register 0, no BAR decoded, device
   * status 0) to a saved state and resume it: the registers of the transport section, then
   * the core (`core.restoreState`: features, queues with their chains in flight, model state,
   * pending interrupt), then the host hears of the restored placement: `mapBar` for every BAR
   * the saved command register decodes, `setIntx(true)` when the ISR holds a bit the driver
   * has not read (§4.1.4.5.1: INTx follows the ISR while MSI-X is off), and MSI-X messages for
   * pending vectors that are unmasked (PCI 3.0 §6.8.3.3).
   *
   * The state is untrusted. It must have been saved from a function of the same shape: every
   * read-only bit of configuration space (IDs, class, BAR types and sizes, capabilities,
   * `notify_off_multiplier`, MSI-X table size) equal, the same queue and vector counts, and
   * vectors inside the table. Otherwise nothing is applied and a typed error says which field
   * differs; the function stays fresh. Values a guest could have written itself are taken as
   * they are, so register accesses afterwards behave as for any guest and never throw.
   * @param state - from `decodeDeviceState` (or `core.saveState(pci.saveTransportState())`)
   * @throws RangeError unless this function is fresh; DeviceStateMismatchError naming the
   *   field that does not fit (`transport`, `pci.config[0x..]`, `pci.queueVectors[i]`, …, or
   *   one of the core's); DeviceStateFormatError for malformed registers; a `VirtioError`
   *   from the model's `restoreState`
   */
  restoreState(state: DeviceState): void {
    const core = this.core;
    if (core.status !== 0 || this.command !== 0 || this.#mapped.some((m) => m !== undefined)) {
      throw new RangeError(
        "restoreState needs a fresh VirtioPciDevice (never configured by firmware or a driver)",
      );
    }
    const r = decodePciTransportState(state.transport, this.#queueVectors.length, this.msixVectors);
    const initial = this.#initial;
    const wm = this.#wmask;
    for (let i = 0; i < PciConfig.SIZE; i++) {
      // The interrupt status bit is not configuration: it follows the ISR (§4.1.4.5.1).
      const dynamic = i === PciConfig.STATUS ? PciStatus.INTERRUPT : 0;
      const ro = ~(wm[i]! | dynamic) & 0xff;
      if ((r.config[i]! & ro) !== (initial[i]! & ro)) {
        throw new DeviceStateMismatchError(
          `pci.config[0x${i.toString(16)}]`,
          `read-only bits saved 0x${(r.config[i]! & ro).toString(16)}, this function 0x${(initial[i]! & ro).toString(16)}`,
        );
      }
    }
    // §4.1.5.1.2.1: a vector outside the table is never stored (it reads back NO_VECTOR).
    const vectorOk = (v: number) => v === VIRTIO_MSI_NO_VECTOR || v < this.msixVectors;
    if (!vectorOk(r.configVector)) {
      throw new DeviceStateMismatchError("pci.configVector", `vector ${r.configVector}`);
    }
    r.queueVectors.forEach((v, i) => {
      if (!vectorOk(v)) throw new DeviceStateMismatchError(`pci.queueVectors[${i}]`, `vector ${v}`);
    });
    for (let v = 0; v < this.msixVectors; v++) {
      // What #msixWrite stores: a DWORD-aligned address, only the mask bit of vector control.
      if (
        (r.msixTable[4 * v]! & 3) !== 0 ||
        (r.msixTable[4 * v + 3]! & ~PciMsix.ENTRY_CTRL_MASKBIT) !== 0
      ) {
        throw new DeviceStateMismatchError(`pci.msixTable[${v}]`, "bits the table never holds");
      }
    }
    for (let w = 0; w < r.msixPba.length; w++) {
      const valid = Math.min(32, this.msixVectors - 32 * w);
      const mask = valid >= 32 ? 0xffffffff : valid <= 0 ? 0 : (1 << valid) - 1;
      if ((r.msixPba[w]! & ~mask) !== 0) {
        throw new DeviceStateMismatchError(`pci.msixPba[${w}]`, "pending bits past the table");
      }
    }
    const cfg = this.#cfg;
    for (let i = 0; i < PciConfig.SIZE; i++) {
      cfg[i] = (initial[i]! & ~wm[i]!) | (r.config[i]! & wm[i]!);
    }
    this.#msixTable.set(r.msixTable);
    this.#msixPba.set(r.msixPba);
    this.#queueVectors.set(r.queueVectors);
    this.#configVector = r.configVector;
    this.#deviceFeatureSel = r.deviceFeatureSelect;
    this.#driverFeatureSel = r.driverFeatureSelect;
    this.#queueSel = r.queueSelect;
    this.#generation = r.generation;
    this.#seenGeneration = r.seenGeneration;
    try {
      core.restoreState(state);
    } catch (e) {
      // Nothing was resumed: back to power-on, the host having heard of nothing.
      core.reset();
      cfg.set(initial);
      this.#resetMsix();
      this.#virtioReset();
      this.#generation = 0;
      this.#seenGeneration = 0;
      throw e;
    }
    this.#notificationData =
      (core.status & DeviceStatus.FEATURES_OK) !== 0 &&
      hasFeature(core.features, Feature.NOTIFICATION_DATA);
    this.#updateMappings();
    this.#updateIntx();
    this.#msixFlushPending();
  }

  #virtioReset(): void {
    // §4.1.5.1.2.1: every event is unmapped upon reset; the selectors return to 0.
    this.#notificationData = false;
    this.#queueVectors.fill(VIRTIO_MSI_NO_VECTOR);
    this.#configVector = VIRTIO_MSI_NO_VECTOR;
    this.#deviceFeatureSel = 0;
    this.#driverFeatureSel = 0;
    this.#queueSel = 0;
  }

  #resetMsix(): void {
    this.#msixTable.fill(0);
    // PCI 3.0 §6.8.2.9: each vector's mask bit is set at reset.
    for (let v = 0; v < this.msixVectors; v++) {
      this.#msixTable[4 * v + 3] = PciMsix.ENTRY_CTRL_MASKBIT;
    }
    this.#msixPba.fill(0);
  }

  // ---- configuration space ----

  #checkHostAccess(offset: number, size: number, limit: number, what: string): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= limit) {
      throw new RangeError(`offset must be an integer in [0, ${limit}) for ${what}, got ${offset}`);
    }
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) {
      throw new RangeError(`size must be 1, 2, 4 or 8, got ${size}`);
    }
  }

  #count(id: number): void {
    this.#exits++;
    this.#counts[id]!++;
  }

  /** Whether [offset, offset + size) touches the `pci_cfg_data` bytes. */
  #touchesWindow(offset: number, size: number): boolean {
    const d = CAP_PCI_CFG + PciCfgCap.PCI_CFG_DATA;
    return offset < d + 4 && offset + size > d;
  }

  /**
   * Handle a guest read of configuration space.
   *
   * @param offset - register offset in the function's configuration space (0–4095; past 255,
   *   the PCI Express extended space, reads 0)
   * @param size - access width: 1, 2 or 4 (8 is counted as invalid and reads 0)
   * @returns the value read, an unsigned integer of `size` bytes
   * @throws RangeError naming `offset` or `size` for impossible arguments (host bugs)
   */
  configRead(offset: number, size: number): number {
    this.#checkHostAccess(offset, size, 4096, "configuration space");
    const window = offset < PciConfig.SIZE && this.#touchesWindow(offset, size);
    this.#count(window ? ID_PCI_CFG_DATA : ID_PCI_CONFIG);
    if (size === 8 || offset % size !== 0) {
      this.invalidAccesses++;
      return 0;
    }
    if (offset >= PciConfig.SIZE) return 0;
    // §4.1.4.9.1: a read of pci_cfg_data first reads cap.length bytes of the BAR into it.
    if (window) this.#windowAccess(false);
    return this.#get(offset, size);
  }

  /**
   * Handle a guest write of configuration space. Read-only bits keep their value; BAR writes
   * keep only the address bits (so an all-ones write reads back the size mask); the host's
   * `mapBar` hears of every change in decoding.
   *
   * @param offset - register offset in the function's configuration space (0–4095)
   * @param size - access width: 1, 2 or 4 (8 is counted as invalid and ignored)
   * @param value - the value written (taken modulo 2^(8·size))
   * @throws RangeError naming `offset` or `size` for impossible arguments (host bugs); never for
   *   anything the guest chose
   */
  configWrite(offset: number, size: number, value: number): void {
    this.#checkHostAccess(offset, size, 4096, "configuration space");
    const window = offset < PciConfig.SIZE && this.#touchesWindow(offset, size);
    this.#count(window ? ID_PCI_CFG_DATA : ID_PCI_CONFIG);
    if (size === 8 || offset % size !== 0) {
      this.invalidAccesses++;
      return;
    }
    if (offset >= PciConfig.SIZE) return;
    const cfg = this.#cfg;
    const wm = this.#wmask;
    const msixCtl = this.msixVectors > 0 ? cfg[CAP_MSIX + 3]! : 0;
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      const b = (value >>> (8 * i)) & 0xff;
      cfg[o] = (cfg[o]! & ~wm[o]!) | (b & wm[o]!);
    }
    const end = offset + size;
    if (offset < PciConfig.BASE_ADDRESS_0 + 24 && end > PciConfig.COMMAND) {
      this.#updateMappings();
      this.#updateIntx();
    }
    if (this.msixVectors > 0 && offset <= CAP_MSIX + 3 && end > CAP_MSIX + 3) {
      this.#msixControlWritten(msixCtl);
    }
    // §4.1.4.9.1: a write of pci_cfg_data writes its first cap.length bytes to the BAR.
    if (window) this.#windowAccess(true);
  }

  #get(offset: number, size: number): number {
    const dv = this.#dv;
    return size === 1
      ? dv.getUint8(offset)
      : size === 2
        ? dv.getUint16(offset, true)
        : dv.getUint32(offset, true);
  }

  /** The `pci_cfg_data` window (§4.1.4.9): one BAR access as the capability describes it. */
  #windowAccess(write: boolean): void {
    const dv = this.#dv;
    const bar = dv.getUint8(CAP_PCI_CFG + PciCap.BAR);
    const off = dv.getUint32(CAP_PCI_CFG + PciCap.OFFSET, true);
    const len = dv.getUint32(CAP_PCI_CFG + PciCap.LENGTH, true);
    const data = CAP_PCI_CFG + PciCfgCap.PCI_CFG_DATA;
    const vb = this.#virtioBar;
    // §4.1.4.9.2: the driver MUST address cap.length (1, 2 or 4) aligned bytes inside a BAR
    // range of another virtio capability; anything else is refused without a BAR access.
    if (
      bar !== vb.index ||
      (len !== 1 && len !== 2 && len !== 4) ||
      off % len !== 0 ||
      off + len > vb.size
    ) {
      this.invalidAccesses++;
      return;
    }
    if (write) {
      this.#virtioWrite(off, len, this.#get(data, len));
      return;
    }
    const v = this.#virtioRead(off, len);
    if (len === 1) dv.setUint8(data, v);
    else if (len === 2) dv.setUint16(data, v, true);
    else dv.setUint32(data, v, true);
  }

  /** BAR placement after a command or BAR write; tells the host of every change. */
  #updateMappings(): void {
    const cmd = this.command;
    for (const bar of this.bars) {
      const reg = PciConfig.BASE_ADDRESS_0 + 4 * bar.index;
      const lo = this.#dv.getUint32(reg, true);
      let next: PciBarMapping | undefined;
      if (bar.kind === "io") {
        const a = (lo & PciBar.IO_MASK) >>> 0;
        // x86 port space ends at 0xffff; 0 is "unassigned".
        if ((cmd & PciCommand.IO) !== 0 && a !== 0 && a + bar.size <= 0x10000) {
          next = { space: "io", address: a, size: bar.size };
        }
      } else {
        let a = (lo & PciBar.MEM_MASK) >>> 0;
        let top = 0x100000000;
        if (bar.kind === "memory64") {
          a += this.#dv.getUint32(reg + 4, true) * 0x100000000;
          top = 2 ** 53;
        }
        // The all-ones pattern of a size probe ends at the top of the space: not a placement.
        if ((cmd & PciCommand.MEMORY) !== 0 && a !== 0 && a + bar.size < top) {
          next = { space: "memory", address: a, size: bar.size };
        }
      }
      const prev = this.#mapped[bar.index];
      if (prev?.address === next?.address && (prev === undefined) === (next === undefined)) {
        continue;
      }
      this.#mapped[bar.index] = next;
      this.#host.mapBar?.(bar.index, next);
    }
  }

  // ---- BARs ----

  #barFor(bar: number, offset: number, size: number): PciBarInfo {
    if (!Number.isInteger(bar) || bar < 0 || bar > 5) {
      throw new RangeError(`bar must be an integer in [0, 5], got ${bar}`);
    }
    const info =
      bar === this.#virtioBar.index
        ? this.#virtioBar
        : bar === this.#msixBar?.index
          ? this.#msixBar
          : undefined;
    if (info === undefined) throw new RangeError(`bar ${bar} is not implemented by this device`);
    this.#checkHostAccess(offset, size, info.size, `BAR ${bar}`);
    return info;
  }

  /**
   * Handle a guest read of a BAR.
   *
   * @param bar - BAR number (one of {@link VirtioPciDevice.bars})
   * @param offset - byte offset from the BAR's base
   * @param size - access width: 1, 2, 4 (8 is counted as invalid and reads 0)
   * @returns the value read, an unsigned integer of `size` bytes (0 for an invalid access)
   * @throws RangeError naming `bar`, `offset` or `size` for impossible arguments (host bugs)
   */
  barRead(bar: number, offset: number, size: number): number {
    const info = this.#barFor(bar, offset, size);
    if (info.purpose === "msix") return this.#msixRead(offset, size);
    return this.#virtioRead(offset, size, true);
  }

  /**
   * Handle a guest write of a BAR.
   *
   * @param bar - BAR number (one of {@link VirtioPciDevice.bars})
   * @param offset - byte offset from the BAR's base
   * @param size - access width: 1, 2, 4 (8 is counted as invalid and ignored)
   * @param value - the value written (taken modulo 2^(8·size))
   * @throws RangeError naming `bar`, `offset` or `size` for impossible arguments (host bugs);
   *   never for anything the guest chose
   */
  barWrite(bar: number, offset: number, size: number, value: number): void {
    const info = this.#barFor(bar, offset, size);
    if (info.purpose === "msix") {
      this.#msixWrite(offset, size, value);
      return;
    }
    this.#virtioWrite(offset, size, value, true);
  }

  /** The structure an offset of the virtio BAR is in: a counter id, or -1 for a gap. */
  #region(offset: number): number {
    if (offset < COMMON_LEN) return -2; // common configuration, decoded per field
    if (offset >= ISR_OFF && offset < ISR_OFF + ISR_LEN) return ID_ISR;
    const l = this.layout;
    if (offset >= l.device && offset < l.device + this.core.model.configSize) {
      return ID_DEVICE_CONFIG;
    }
    if (offset >= l.notify && offset < l.notify + l.notifyLength) return ID_NOTIFY;
    return ID_INVALID;
  }

  #virtioRead(offset: number, size: number, trap = false): number {
    const region = this.#region(offset);
    if (region === -2) return this.#commonRead(offset, size, trap);
    if (trap) this.#count(region);
    if (region === ID_DEVICE_CONFIG) {
      // The core checks width, alignment and range (counting violations).
      return this.core.readConfig(offset - this.layout.device, size);
    }
    if (region === ID_ISR && offset === ISR_OFF && size !== 8) {
      // §4.1.4.5: reading the ISR status returns it, resets it to 0 and deasserts INTx.
      const isr = this.core.interruptStatus & 0xff;
      if (isr !== 0) {
        this.core.ackInterrupt(isr);
        this.#updateIntx();
      }
      return isr;
    }
    this.invalidAccesses++;
    return 0;
  }

  #virtioWrite(offset: number, size: number, value: number, trap = false): void {
    const region = this.#region(offset);
    if (region === -2) {
      this.#commonWrite(offset, size, value, trap);
      return;
    }
    if (trap) this.#count(region);
    if (region === ID_DEVICE_CONFIG) {
      this.core.writeConfig(offset - this.layout.device, size, value);
      return;
    }
    if (region === ID_NOTIFY) {
      this.#notify(offset - this.layout.notify, size, value);
      return;
    }
    this.invalidAccesses++; // the ISR is read-only, the rest is no structure
  }

  /** An available buffer notification at `rel` in the notification area. §4.1.5.2 */
  #notify(rel: number, size: number, value: number): void {
    const nd = this.#notificationData;
    const mult = this.notifyOffMultiplier;
    // §4.1.5.2.1: a 16-bit notification, or 32-bit with VIRTIO_F_NOTIFICATION_DATA; at the
    // queue's address, with the queue index as value (vq_index in the low 16 bits).
    const v = value >>> 0;
    const index = v & 0xffff;
    if (
      size !== (nd ? 4 : 2) ||
      (mult === 0 ? rel !== 0 : rel % mult !== 0 || rel / mult !== index)
    ) {
      this.invalidAccesses++;
      return;
    }
    this.core.notify(nd ? v : index);
  }

  // ---- common configuration (§4.1.4.3) ----

  #commonField(offset: number, size: number, dir: number, trap: boolean): number {
    const id = COMMON_ID[offset]!;
    if (trap) this.#count(id < 0 ? ID_INVALID : id);
    // §4.1.3.1: field-wide accesses only (a 64-bit field as two 32-bit halves).
    if (id < 0 || COMMON_WIDTH[offset] !== size || (COMMON_DIR[offset]! & dir) === 0) {
      this.invalidAccesses++;
      return -1;
    }
    return id;
  }

  #commonRead(offset: number, size: number, trap: boolean): number {
    if (this.#commonField(offset, size, R, trap) < 0) return 0;
    const core = this.core;
    const sel = this.#queueSel;
    switch (offset) {
      case PciCommonCfg.DEVICE_FEATURE_SELECT:
        return this.#deviceFeatureSel;
      case PciCommonCfg.DEVICE_FEATURE:
        // §4.1.4.3.1: the offered bits from bit device_feature_select × 32 (0 past them).
        return core.deviceFeatureWord(this.#deviceFeatureSel);
      case PciCommonCfg.DRIVER_FEATURE_SELECT:
        return this.#driverFeatureSel;
      case PciCommonCfg.DRIVER_FEATURE:
        // §4.1.4.3.1: the valid (offered) bits the driver wrote.
        return (
          (core.driverFeatureWord(this.#driverFeatureSel) &
            core.deviceFeatureWord(this.#driverFeatureSel)) >>>
          0
        );
      case PciCommonCfg.CONFIG_MSIX_VECTOR:
        return this.#configVector;
      case PciCommonCfg.NUM_QUEUES:
        return core.numQueues;
      case PciCommonCfg.DEVICE_STATUS:
        return core.status & 0xff;
      case PciCommonCfg.CONFIG_GENERATION:
        return this.#configGeneration();
      case PciCommonCfg.QUEUE_SELECT:
        return sel;
      case PciCommonCfg.QUEUE_SIZE:
        // §4.1.4.3.1: 0 for an unavailable queue (and for one that does not exist).
        return core.queueSize(sel) & 0xffff;
      case PciCommonCfg.QUEUE_MSIX_VECTOR:
        return this.#queueVectors[sel] ?? VIRTIO_MSI_NO_VECTOR;
      case PciCommonCfg.QUEUE_ENABLE:
        return core.queueReady(sel) ? 1 : 0;
      case PciCommonCfg.QUEUE_NOTIFY_OFF:
        return this.notifyOffMultiplier === 0 || sel >= core.numQueues ? 0 : sel;
      case PciCommonCfg.QUEUE_DESC_LO:
      case PciCommonCfg.QUEUE_DESC_HI:
        return core.queueAddressWord(sel, "desc", offset === PciCommonCfg.QUEUE_DESC_HI);
      case PciCommonCfg.QUEUE_DRIVER_LO:
      case PciCommonCfg.QUEUE_DRIVER_HI:
        return core.queueAddressWord(sel, "driver", offset === PciCommonCfg.QUEUE_DRIVER_HI);
      case PciCommonCfg.QUEUE_DEVICE_LO:
      case PciCommonCfg.QUEUE_DEVICE_HI:
        return core.queueAddressWord(sel, "device", offset === PciCommonCfg.QUEUE_DEVICE_HI);
      case PciCommonCfg.QUEUE_NOTIF_CONFIG_DATA:
        // Without VIRTIO_F_NOTIF_CONFIG_DATA this field does not exist; the queue index is the
        // value a driver would use anyway.
        return sel < core.numQueues ? sel : 0;
      case PciCommonCfg.QUEUE_RESET:
        // Queue resets complete synchronously: 0 after reset, after enable and after a reset
        // completes (§4.1.4.3.1).
        return 0;
      case PciCommonCfg.ADMIN_QUEUE_INDEX:
        // Not offered (VIRTIO_F_ADMIN_VQ); past the last queue, as §4.1.4.3.1 would require.
        return core.numQueues;
      default:
        return 0; // admin_queue_num: no administration virtqueues
    }
  }

  /**
   * §4.1.4.3.1: `config_generation` changes after the driver read a changed configuration. It
   * has 8 bits, so the core's 32-bit generation is not shown directly (256 changes would look
   * like none): the presented value moves by one whenever the core's moved since the last read.
   */
  #configGeneration(): number {
    const g = this.core.configGeneration;
    if (g !== this.#seenGeneration) {
      this.#seenGeneration = g;
      this.#generation = (this.#generation + 1) & 0xff;
    }
    return this.#generation;
  }

  #commonWrite(offset: number, size: number, value: number, trap: boolean): void {
    if (this.#commonField(offset, size, W, trap) < 0) return;
    const core = this.core;
    const sel = this.#queueSel;
    const v = value >>> 0;
    switch (offset) {
      case PciCommonCfg.DEVICE_FEATURE_SELECT:
        this.#deviceFeatureSel = v;
        return;
      case PciCommonCfg.DRIVER_FEATURE_SELECT:
        this.#driverFeatureSel = v;
        return;
      case PciCommonCfg.DRIVER_FEATURE:
        core.writeDriverFeatureWord(this.#driverFeatureSel, v);
        return;
      case PciCommonCfg.CONFIG_MSIX_VECTOR:
        this.#configVector = this.#mapVector(v & 0xffff);
        return;
      case PciCommonCfg.DEVICE_STATUS:
        core.writeStatus(v & 0xff);
        // §4.1.4.3.1: writing 0 resets the device; status then reads 0.
        if ((v & 0xff) === 0) this.#virtioReset();
        // Decided once here (features are frozen from FEATURES_OK), not per notification: the
        // kick path stays free of bigint work.
        this.#notificationData =
          (core.status & DeviceStatus.FEATURES_OK) !== 0 &&
          hasFeature(core.features, Feature.NOTIFICATION_DATA);
        this.#updateIntx();
        return;
      case PciCommonCfg.QUEUE_SELECT:
        this.#queueSel = v & 0xffff;
        return;
      case PciCommonCfg.QUEUE_SIZE:
        this.#writeQueueSize(sel, v & 0xffff);
        return;
      case PciCommonCfg.QUEUE_MSIX_VECTOR:
        if (sel < this.#queueVectors.length) this.#queueVectors[sel] = this.#mapVector(v & 0xffff);
        else this.invalidAccesses++;
        return;
      case PciCommonCfg.QUEUE_ENABLE:
        this.#writeQueueEnable(sel, v & 0xffff);
        return;
      case PciCommonCfg.QUEUE_DESC_LO:
      case PciCommonCfg.QUEUE_DESC_HI:
        core.setQueueAddressWord(sel, "desc", offset === PciCommonCfg.QUEUE_DESC_HI, v);
        return;
      case PciCommonCfg.QUEUE_DRIVER_LO:
      case PciCommonCfg.QUEUE_DRIVER_HI:
        core.setQueueAddressWord(sel, "driver", offset === PciCommonCfg.QUEUE_DRIVER_HI, v);
        return;
      case PciCommonCfg.QUEUE_DEVICE_LO:
      case PciCommonCfg.QUEUE_DEVICE_HI:
        core.setQueueAddressWord(sel, "device", offset === PciCommonCfg.QUEUE_DEVICE_HI, v);
        return;
      default: // queue_reset
        // §4.1.4.3.1: the device MUST reset the queue when 1 is written (with RING_RESET; the
        // core counts the write as a violation without it).
        if ((v & 0xffff) === 1) core.resetQueue(sel);
        else this.invalidAccesses++;
        return;
    }
  }

  /**
   * §4.1.5.1.2.1: a vector inside the table maps; anything else (or any vector without MSI-X)
   * is a mapping failure, reported by reading back NO_VECTOR.
   */
  #mapVector(v: number): number {
    return v < this.msixVectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  #writeQueueSize(sel: number, size: number): void {
    const core = this.core;
    const max = core.queueMaxSize(sel);
    if (sel >= core.numQueues || core.queueReady(sel)) {
      core.setQueueSize(sel, size); // the core ignores and counts it
      return;
    }
    const packed =
      (core.status & DeviceStatus.FEATURES_OK) !== 0 &&
      hasFeature(core.features, Feature.RING_PACKED);
    // §4.1.4.3.2: the driver MUST NOT write 0 (packed) or a non-power of 2 (split); and
    // §4.1.4.3.1: the device MUST present 0 or a power of 2 without RING_PACKED, so such a value
    // cannot be stored. The ring it describes cannot be served: DEVICE_NEEDS_RESET.
    if (size === 0 || size > max || (!packed && (size & (size - 1)) !== 0)) {
      core.fail(
        new QueueConfigError(
          `queue ${sel} size must be ${packed ? "in" : "a power of 2 in"} [1, ${max}] (§4.1.4.3.2)`,
          "size",
          size,
        ),
      );
      return;
    }
    core.setQueueSize(sel, size);
  }

  #writeQueueEnable(sel: number, v: number): void {
    const core = this.core;
    if (sel >= core.numQueues) {
      core.setQueueReady(sel, v); // counted by the core
      return;
    }
    if (v !== 1) {
      // §4.1.4.3.2: the driver MUST NOT write 0 to queue_enable (queues are disabled by reset).
      core.fail(
        new QueueConfigError(`queue ${sel}: queue_enable takes only 1 (§4.1.4.3.2)`, "enable", v),
      );
      return;
    }
    if (core.queueReady(sel)) {
      this.invalidAccesses++; // enabled twice: nothing to do
      return;
    }
    core.setQueueReady(sel, 1);
  }

  // ---- interrupts ----

  /** A notification from the core: route it to the MSI-X vector or the INTx line. */
  #onNotification(source: number): void {
    if (this.msixEnabled) {
      const vector =
        source === CONFIG_CHANGE_SOURCE
          ? this.#configVector
          : (this.#queueVectors[source] ?? VIRTIO_MSI_NO_VECTOR);
      // §4.1.5.3.1, §4.1.5.4.1: no interrupt for an event mapped to NO_VECTOR.
      if (vector === VIRTIO_MSI_NO_VECTOR) this.stats.noVector++;
      else this.#msixSignal(vector);
      return;
    }
    // §4.1.4.5.1: the core has set the ISR bit before this call; now the INTx line.
    this.#updateIntx();
  }

  /**
   * §4.1.4.5.1: with MSI-X disabled, the status register's interrupt bit is the OR of the ISR
   * bits, and INTx follows it unless the command register disables it.
   */
  #updateIntx(): void {
    const pending = !this.msixEnabled && (this.core.interruptStatus & 0xff) !== 0;
    const cfg = this.#cfg;
    if (pending) cfg[PciConfig.STATUS] = cfg[PciConfig.STATUS]! | PciStatus.INTERRUPT;
    else cfg[PciConfig.STATUS] = cfg[PciConfig.STATUS]! & ~PciStatus.INTERRUPT;
    const level =
      pending &&
      (this.#dv.getUint16(PciConfig.COMMAND, true) & PciCommand.INTX_DISABLE) === 0 &&
      cfg[PciConfig.INTERRUPT_PIN] !== 0;
    if (level === this.#intx) return;
    this.#intx = level;
    if (level) this.stats.intxAssertions++;
    this.#host.setIntx?.(level);
  }

  #msixMasked(vector: number): boolean {
    return (
      (this.#cfg[CAP_MSIX + 3]! & (PciMsix.FLAGS_MASKALL >> 8)) !== 0 ||
      (this.#msixTable[4 * vector + 3]! & PciMsix.ENTRY_CTRL_MASKBIT) !== 0
    );
  }

  #msixSignal(vector: number): void {
    if ((this.command & PciCommand.MASTER) === 0) {
      // Without bus mastering the function cannot issue the memory write an MSI is.
      this.stats.msiDropped++;
      return;
    }
    if (this.#msixMasked(vector)) {
      this.#msixPba[vector >>> 5] = this.#msixPba[vector >>> 5]! | (1 << (vector & 31));
      this.stats.msiPended++;
      return;
    }
    this.#msixSend(vector);
  }

  #msixSend(vector: number): void {
    const t = this.#msixTable;
    const address = t[4 * vector + 1]! * 0x100000000 + t[4 * vector]!;
    this.stats.msiMessages++;
    this.#host.sendMsi?.(address, t[4 * vector + 2]!);
  }

  /** Send the pending messages whose vectors are no longer masked (PCI 3.0 §6.8.3.3). */
  #msixFlushPending(): void {
    if (!this.msixEnabled || (this.command & PciCommand.MASTER) === 0) return;
    const pba = this.#msixPba;
    for (let w = 0; w < pba.length; w++) {
      if (pba[w] === 0) continue;
      for (let b = 0; b < 32; b++) {
        const vector = 32 * w + b;
        if ((pba[w]! & (1 << b)) === 0 || this.#msixMasked(vector)) continue;
        pba[w] = pba[w]! & ~(1 << b);
        this.#msixSend(vector);
      }
    }
  }

  #msixControlWritten(previous: number): void {
    const now = this.#cfg[CAP_MSIX + 3]!;
    if (((previous ^ now) & 0x80) !== 0) this.#updateIntx(); // INTx is unused under MSI-X
    this.#msixFlushPending();
  }

  #msixRead(offset: number, size: number): number {
    const table = this.msixVectors * PciMsix.ENTRY_SIZE;
    const inTable = offset < table;
    this.#count(inTable ? ID_MSIX_TABLE : ID_MSIX_PBA);
    // PCI 3.0 §6.8.2: the table and the PBA take aligned DWORD accesses (hosts split QWORDs).
    if (size !== 4 || (offset & 3) !== 0) {
      this.invalidAccesses++;
      return 0;
    }
    if (inTable) return this.#msixTable[offset >>> 2]!;
    const rel = offset - this.#msixPbaOff;
    if (rel < 0 || rel >= 4 * this.#msixPba.length) {
      this.invalidAccesses++;
      return 0;
    }
    return this.#msixPba[rel >>> 2]! >>> 0;
  }

  #msixWrite(offset: number, size: number, value: number): void {
    const table = this.msixVectors * PciMsix.ENTRY_SIZE;
    const inTable = offset < table;
    this.#count(inTable ? ID_MSIX_TABLE : ID_MSIX_PBA);
    if (!inTable || size !== 4 || (offset & 3) !== 0) {
      this.invalidAccesses++; // the PBA is read-only
      return;
    }
    const word = offset >>> 2;
    const v = value >>> 0;
    switch (word & 3) {
      case 0:
        this.#msixTable[word] = v & ~3; // the message address is DWORD aligned
        return;
      case 3: {
        this.#msixTable[word] = v & PciMsix.ENTRY_CTRL_MASKBIT; // other bits are reserved
        this.#msixFlushPending();
        return;
      }
      default:
        this.#msixTable[word] = v;
    }
  }
}
