import { MMIO_MAGIC, MmioReg, MmioVersion } from "@virtio-ts/spec";
import { type DeviceCoreOptions, VirtioDeviceCore } from "./device-core.js";
import type { DeviceModel } from "./device-model.js";

/**
 * Names of the virtio-mmio registers, as the standard's register table spells them, plus
 * "Config" (the device configuration space) and "Invalid" (an offset that is no register of
 * this version). Exits are counted under these names.
 *
 * @see VIRTIO 1.3 §4.2.2, §4.2.4
 */
export const MMIO_REGISTER_NAMES = [
  "MagicValue",
  "Version",
  "DeviceID",
  "VendorID",
  "DeviceFeatures",
  "DeviceFeaturesSel",
  "DriverFeatures",
  "DriverFeaturesSel",
  "GuestPageSize",
  "QueueSel",
  "QueueNumMax",
  "QueueNum",
  "QueueAlign",
  "QueuePFN",
  "QueueReady",
  "QueueNotify",
  "InterruptStatus",
  "InterruptACK",
  "Status",
  "QueueDescLow",
  "QueueDescHigh",
  "QueueDriverLow",
  "QueueDriverHigh",
  "QueueDeviceLow",
  "QueueDeviceHigh",
  "SHMSel",
  "SHMLenLow",
  "SHMLenHigh",
  "SHMBaseLow",
  "SHMBaseHigh",
  "QueueReset",
  "ConfigGeneration",
  "Config",
  "Invalid",
] as const;

/** One virtio-mmio register name (see {@link MMIO_REGISTER_NAMES}). */
export type MmioRegisterName = (typeof MMIO_REGISTER_NAMES)[number];

const R = 1;
const W = 2;
const RW = 3;

/** [offset, name, direction, versions (bit 1: v1, bit 2: v2)]. §4.2.2 and §4.2.4 tables. */
const TABLE: readonly (readonly [number, MmioRegisterName, number, number])[] = [
  [MmioReg.MAGIC_VALUE, "MagicValue", R, 3],
  [MmioReg.VERSION, "Version", R, 3],
  [MmioReg.DEVICE_ID, "DeviceID", R, 3],
  [MmioReg.VENDOR_ID, "VendorID", R, 3],
  [MmioReg.DEVICE_FEATURES, "DeviceFeatures", R, 3],
  [MmioReg.DEVICE_FEATURES_SEL, "DeviceFeaturesSel", W, 3],
  [MmioReg.DRIVER_FEATURES, "DriverFeatures", W, 3],
  [MmioReg.DRIVER_FEATURES_SEL, "DriverFeaturesSel", W, 3],
  [MmioReg.GUEST_PAGE_SIZE, "GuestPageSize", W, 1],
  [MmioReg.QUEUE_SEL, "QueueSel", W, 3],
  [MmioReg.QUEUE_NUM_MAX, "QueueNumMax", R, 3],
  [MmioReg.QUEUE_NUM, "QueueNum", W, 3],
  [MmioReg.QUEUE_ALIGN, "QueueAlign", W, 1],
  [MmioReg.QUEUE_PFN, "QueuePFN", RW, 1],
  [MmioReg.QUEUE_READY, "QueueReady", RW, 2],
  [MmioReg.QUEUE_NOTIFY, "QueueNotify", W, 3],
  [MmioReg.INTERRUPT_STATUS, "InterruptStatus", R, 3],
  [MmioReg.INTERRUPT_ACK, "InterruptACK", W, 3],
  [MmioReg.STATUS, "Status", RW, 3],
  [MmioReg.QUEUE_DESC_LOW, "QueueDescLow", W, 2],
  [MmioReg.QUEUE_DESC_HIGH, "QueueDescHigh", W, 2],
  [MmioReg.QUEUE_DRIVER_LOW, "QueueDriverLow", W, 2],
  [MmioReg.QUEUE_DRIVER_HIGH, "QueueDriverHigh", W, 2],
  [MmioReg.QUEUE_DEVICE_LOW, "QueueDeviceLow", W, 2],
  [MmioReg.QUEUE_DEVICE_HIGH, "QueueDeviceHigh", W, 2],
  [MmioReg.SHM_SEL, "SHMSel", W, 2],
  [MmioReg.SHM_LEN_LOW, "SHMLenLow", R, 2],
  [MmioReg.SHM_LEN_HIGH, "SHMLenHigh", R, 2],
  [MmioReg.SHM_BASE_LOW, "SHMBaseLow", R, 2],
  [MmioReg.SHM_BASE_HIGH, "SHMBaseHigh", R, 2],
  [MmioReg.QUEUE_RESET, "QueueReset", RW, 2],
  [MmioReg.CONFIG_GENERATION, "ConfigGeneration", R, 2],
];

const ID_CONFIG = MMIO_REGISTER_NAMES.indexOf("Config");
const ID_INVALID = MMIO_REGISTER_NAMES.indexOf("Invalid");

/** Per version: register id by word index (offset / 4) below 0x100, and its direction. */
function registerMap(version: 1 | 2): { ids: Int8Array; dirs: Uint8Array } {
  const ids = new Int8Array(MmioReg.CONFIG / 4).fill(ID_INVALID);
  const dirs = new Uint8Array(MmioReg.CONFIG / 4);
  for (const [offset, name, dir, versions] of TABLE) {
    if ((versions & version) === 0) continue;
    ids[offset / 4] = MMIO_REGISTER_NAMES.indexOf(name);
    dirs[offset / 4] = dir;
  }
  return { ids, dirs };
}

/** Options of an {@link MmioDevice}: the core's options plus the MMIO-specific ones. */
export interface MmioDeviceOptions extends Omit<DeviceCoreOptions, "legacy"> {
  /** `Version` register: 2 (modern, default) or 1 (legacy, QueuePFN based). §4.2.4 */
  readonly version?: MmioVersion;
  /** `VendorID` register (default 0x554d4551, "QEMU" as QEMU's devices report). */
  readonly vendorId?: number;
}

/**
 * The device side of virtio-mmio: the register file a VMM's trap handler calls on each MMIO
 * exit, `read(offset, size)` / `write(offset, size, value)` with `offset` from the device's base
 * address. It decodes registers for version 2 (modern) or version 1 (legacy), keeps the selector
 * registers, and forwards everything else to a {@link VirtioDeviceCore} (`core`).
 *
 * Access rules (§4.2.2.2): control registers (below 0x100) take 32-bit aligned accesses only;
 * the configuration space (0x100 on) takes 1-, 2- and 4-byte naturally aligned accesses.
 * Anything else, an offset that is no register of this version, a read of a write-only register
 * or a write to a read-only one reads 0 / is ignored, and is counted in `invalidAccesses`.
 * Every access is an exit and is counted by register name ({@link MmioDevice.exitCounts}), for
 * the "full emulation vs paravirtualization" measurements.
 *
 * Unused MMIO features: no shared memory regions (SHMLen and SHMBase read all ones, §4.2.2,
 * "non-existent region"); QueueReset completes synchronously, so it always reads 0 (§4.2.2.1).
 * Version 1 assumes a little-endian guest (§2.6.3: legacy uses guest-native endianness).
 *
 * @example
 * ```ts
 * const dev = new MmioDevice(model, { memory, interrupt: () => irq.ring() });
 * // in the VMM's MMIO exit handler for [base, base + 0x200):
 * const value = dev.read(addr - base, 4);
 * ```
 */
export class MmioDevice {
  /** The device core behind the registers. */
  readonly core: VirtioDeviceCore;
  /** The `Version` register value. */
  readonly version: MmioVersion;
  /** The `VendorID` register value. */
  readonly vendorId: number;
  /** Accesses that were not valid (bad offset, width or direction). */
  invalidAccesses = 0;
  readonly #ids: Int8Array;
  readonly #dirs: Uint8Array;
  readonly #counts = new Float64Array(MMIO_REGISTER_NAMES.length);
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #queueSel = 0;
  #guestPageSize = 4096;

  /**
   * @param model - the device type
   * @param options - memory, version, vendor ID, interrupt line, log
   * @throws RangeError for an unknown version or invalid model (see {@link VirtioDeviceCore})
   */
  constructor(model: DeviceModel, options: MmioDeviceOptions) {
    const version = options.version ?? MmioVersion.MODERN;
    if (version !== MmioVersion.MODERN && version !== MmioVersion.LEGACY) {
      throw new RangeError(`options.version must be 1 or 2, got ${version}`);
    }
    this.version = version;
    this.vendorId = (options.vendorId ?? 0x554d4551) >>> 0;
    this.core = new VirtioDeviceCore(model, {
      ...options,
      legacy: version === MmioVersion.LEGACY,
    });
    const map = registerMap(version);
    this.#ids = map.ids;
    this.#dirs = map.dirs;
  }

  /** Total exits (register accesses) since construction or {@link MmioDevice.resetCounters}. */
  get exits(): number {
    let n = 0;
    for (const c of this.#counts) n += c;
    return n;
  }

  /** Exits by register name, only the registers that were accessed. */
  exitCounts(): Partial<Record<MmioRegisterName, number>> {
    const out: Partial<Record<MmioRegisterName, number>> = {};
    for (let i = 0; i < MMIO_REGISTER_NAMES.length; i++) {
      if (this.#counts[i]! > 0) out[MMIO_REGISTER_NAMES[i]!] = this.#counts[i]!;
    }
    return out;
  }

  /** Zero the exit counters and `invalidAccesses`. */
  resetCounters(): void {
    this.#counts.fill(0);
    this.invalidAccesses = 0;
  }

  /**
   * Reset the device from the host side (as a driver writing 0 to Status does), and zero the
   * selector registers.
   */
  reset(): void {
    this.core.reset();
    this.#clearSelectors();
  }

  /**
   * The selector registers a driver may be in the middle of using (DeviceFeaturesSel,
   * DriverFeaturesSel, QueueSel, legacy GuestPageSize), as 16 bytes to move with the core's
   * state (`VirtioDeviceCore.saveState(mmio.saveTransportState())`): a guest stopped between
   * writing QueueSel and using it finds the same queue selected after the move.
   */
  saveTransportState(): Uint8Array {
    const out = new Uint8Array(16);
    const v = new DataView(out.buffer);
    v.setUint32(0, this.#deviceFeaturesSel, true);
    v.setUint32(4, this.#driverFeaturesSel, true);
    v.setUint32(8, this.#queueSel, true);
    v.setUint32(12, this.#guestPageSize, true);
    return out;
  }

  /**
   * Take back the selector registers saved by {@link MmioDevice.saveTransportState} (an empty
   * array leaves them as they are).
   * @param state - 16 bytes from `saveTransportState`, or none
   * @throws RangeError naming `state` unless it is 0 or 16 bytes
   */
  restoreTransportState(state: Uint8Array): void {
    if (!(state instanceof Uint8Array) || (state.length !== 0 && state.length !== 16)) {
      throw new RangeError("state must be the 16 bytes of saveTransportState (or empty)");
    }
    if (state.length === 0) return;
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    this.#deviceFeaturesSel = v.getUint32(0, true);
    this.#driverFeaturesSel = v.getUint32(4, true);
    this.#queueSel = v.getUint32(8, true);
    // Untrusted: a page size the register itself would refuse is left alone.
    const page = v.getUint32(12, true);
    if (page !== 0 && (page & (page - 1)) === 0) this.#guestPageSize = page;
  }

  #clearSelectors(): void {
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#queueSel = 0;
  }

  /** Register id of an access, counting the exit; -1 if the access is not valid. */
  #decode(offset: number, size: number, dir: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`offset must be a non-negative safe integer, got ${offset}`);
    }
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) {
      throw new RangeError(`size must be 1, 2, 4 or 8, got ${size}`);
    }
    if (offset >= MmioReg.CONFIG) {
      this.#counts[ID_CONFIG]!++;
      return ID_CONFIG;
    }
    const id = this.#ids[offset >>> 2]!;
    this.#counts[id]!++;
    // §4.2.2.2: 32-bit wide and aligned accesses only; and only in the register's direction.
    if (
      id === ID_INVALID ||
      size !== 4 ||
      (offset & 3) !== 0 ||
      (this.#dirs[offset >>> 2]! & dir) === 0
    ) {
      this.invalidAccesses++;
      return -1;
    }
    return id;
  }

  /**
   * Handle a guest read.
   *
   * @param offset - byte offset from the device's base address
   * @param size - access width in bytes: 1, 2, 4 or 8
   * @returns the value read (an unsigned integer of `size` bytes; 0 for an invalid access)
   * @throws RangeError naming `offset` or `size` for impossible arguments (VMM bugs)
   */
  read(offset: number, size: number): number {
    const id = this.#decode(offset, size, R);
    if (id < 0) return 0;
    const core = this.core;
    if (id === ID_CONFIG) {
      // The 64-bit access the spec does not allow for config (§4.2.2.2) reads 0 like others.
      return core.readConfig(offset - MmioReg.CONFIG, size);
    }
    switch (offset) {
      case MmioReg.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MmioReg.VERSION:
        return this.version;
      case MmioReg.DEVICE_ID:
        return core.model.deviceId >>> 0;
      case MmioReg.VENDOR_ID:
        return this.vendorId;
      case MmioReg.DEVICE_FEATURES:
        return core.deviceFeatureWord(this.#deviceFeaturesSel);
      case MmioReg.QUEUE_NUM_MAX:
        return core.queueMaxSize(this.#queueSel);
      case MmioReg.QUEUE_PFN:
        return core.legacyQueuePfn(this.#queueSel);
      case MmioReg.QUEUE_READY:
        return core.queueReady(this.#queueSel) ? 1 : 0;
      case MmioReg.INTERRUPT_STATUS:
        return core.interruptStatus;
      case MmioReg.STATUS:
        return core.status;
      case MmioReg.SHM_LEN_LOW:
      case MmioReg.SHM_LEN_HIGH:
      case MmioReg.SHM_BASE_LOW:
      case MmioReg.SHM_BASE_HIGH:
        // §4.2.2: a non-existent region has length -1 and base 0xffffffffffffffff.
        return 0xffffffff;
      case MmioReg.QUEUE_RESET:
        // Queue resets complete synchronously: 0 once done and after re-enable (§4.2.2.1).
        return 0;
      case MmioReg.CONFIG_GENERATION:
        return core.configGeneration;
      default:
        return 0;
    }
  }

  /**
   * Handle a guest write.
   *
   * @param offset - byte offset from the device's base address
   * @param size - access width in bytes: 1, 2, 4 or 8
   * @param value - the value written (taken modulo 2^(8·size), at most 2^32)
   * @throws RangeError naming `offset` or `size` for impossible arguments (VMM bugs); never for
   *   anything the guest chose
   */
  write(offset: number, size: number, value: number): void {
    const id = this.#decode(offset, size, W);
    if (id < 0) return;
    const core = this.core;
    if (id === ID_CONFIG) {
      core.writeConfig(offset - MmioReg.CONFIG, size, value);
      return;
    }
    const v = value >>> 0;
    const sel = this.#queueSel;
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        this.#deviceFeaturesSel = v;
        return;
      case MmioReg.DRIVER_FEATURES:
        core.writeDriverFeatureWord(this.#driverFeaturesSel, v);
        return;
      case MmioReg.DRIVER_FEATURES_SEL:
        this.#driverFeaturesSel = v;
        return;
      case MmioReg.GUEST_PAGE_SIZE:
        // A power of 2 (§4.2.4); 0 or anything else would make QueuePFN meaningless.
        if (v !== 0 && (v & (v - 1)) === 0) this.#guestPageSize = v;
        else this.invalidAccesses++;
        return;
      case MmioReg.QUEUE_SEL:
        this.#queueSel = v;
        return;
      case MmioReg.QUEUE_NUM:
        core.setQueueSize(sel, v);
        return;
      case MmioReg.QUEUE_ALIGN:
        core.setLegacyQueueAlign(sel, v);
        return;
      case MmioReg.QUEUE_PFN:
        core.setLegacyQueuePfn(sel, v, this.#guestPageSize);
        return;
      case MmioReg.QUEUE_READY:
        core.setQueueReady(sel, v);
        return;
      case MmioReg.QUEUE_NOTIFY:
        core.notify(v);
        return;
      case MmioReg.INTERRUPT_ACK:
        core.ackInterrupt(v);
        return;
      case MmioReg.STATUS:
        core.writeStatus(v);
        if (v === 0) this.#clearSelectors();
        return;
      case MmioReg.QUEUE_DESC_LOW:
      case MmioReg.QUEUE_DESC_HIGH:
        core.setQueueAddressWord(sel, "desc", offset === MmioReg.QUEUE_DESC_HIGH, v);
        return;
      case MmioReg.QUEUE_DRIVER_LOW:
      case MmioReg.QUEUE_DRIVER_HIGH:
        core.setQueueAddressWord(sel, "driver", offset === MmioReg.QUEUE_DRIVER_HIGH, v);
        return;
      case MmioReg.QUEUE_DEVICE_LOW:
      case MmioReg.QUEUE_DEVICE_HIGH:
        core.setQueueAddressWord(sel, "device", offset === MmioReg.QUEUE_DEVICE_HIGH, v);
        return;
      case MmioReg.QUEUE_RESET:
        // §4.2.2: writing one resets the queue; other values mean nothing.
        if (v === 1) core.resetQueue(sel);
        else this.invalidAccesses++;
        return;
      default:
        // SHMSel: there are no regions to select.
        return;
    }
  }
}
