import type { GuestMemory } from "@virtio-ts/memory";
import {
  DeviceId,
  DeviceStatus,
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
  LEGACY_VRING_ALIGN,
  legacySplitLayout,
  MMIO_MAGIC,
  MmioInterrupt,
  MmioReg,
  MmioVersion,
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
import { packedNotificationData, splitNotificationData } from "./notification-data.js";

/**
 * How a driver reaches a virtio-mmio device's registers: a pair of functions, whatever sits
 * behind them (an {@link MmioDevice} in the same process, a VMM's bus, a worker). Offsets are
 * from the device's base address; values are unsigned and little-endian.
 *
 * Implementer contract: `read` returns an unsigned integer of `size` bytes; neither function
 * throws for an access the device does not implement (a real bus reads 0 and drops writes).
 */
export interface MmioBus {
  /** Read `size` bytes at `offset`. */
  read(offset: number, size: 1 | 2 | 4): number;
  /** Write `size` bytes of `value` at `offset`. */
  write(offset: number, size: 1 | 2 | 4, value: number): void;
}

/** What {@link MmioDriverTransport.probe} found. */
export interface MmioDeviceInfo extends DriverDeviceInfo {
  /** `Version`: 1 (legacy) or 2. */
  readonly version: MmioVersion;
  /** `DeviceID` (never 0: such a slot is refused). */
  readonly deviceId: number;
  /** `VendorID`. */
  readonly vendorId: number;
}

/** Options of an {@link MmioDriverTransport}. */
export interface MmioDriverOptions {
  /**
   * Bound on every loop that waits for the device: reset completion, queue reset, and retries
   * of a configuration read whose generation changed (default 64). Drivers distrust devices.
   */
  readonly maxRetries?: number;
  /** Legacy (version 1) only: the guest page size written to GuestPageSize (default 4096). */
  readonly pageSize?: number;
}

/**
 * Where a legacy (version 1) queue lives: one contiguous block at `base` laid out as
 * `legacySplitLayout(size, align)` (§2.7.2), `base` a multiple of the page size.
 */
export interface LegacyQueueLayout {
  /** Queue size, a power of 2 up to QueueNumMax. */
  readonly size: number;
  /** Guest address of the block (page aligned). */
  readonly base: number;
  /** Used ring alignment written to QueueAlign (default 4096). */
  readonly align?: number;
}

/**
 * The ring/transport bits this driver side can handle: INDIRECT_DESC, EVENT_IDX, VERSION_1,
 * ACCESS_PLATFORM, RING_PACKED, IN_ORDER (both driver queues place descriptors in ring order
 * and read batched used entries), ORDER_PLATFORM, NOTIFICATION_DATA and RING_RESET.
 */
export const DRIVER_TRANSPORT_FEATURES: bigint = [
  Feature.RING_INDIRECT_DESC,
  Feature.RING_EVENT_IDX,
  Feature.VERSION_1,
  Feature.ACCESS_PLATFORM,
  Feature.RING_PACKED,
  Feature.IN_ORDER,
  Feature.ORDER_PLATFORM,
  Feature.NOTIFICATION_DATA,
  Feature.RING_RESET,
].reduce((m, bit) => m | featureMask(bit), 0n);

const CFG = MmioReg.CONFIG;

/**
 * The driver side of virtio-mmio: probes a device, runs the initialisation sequence, reads the
 * configuration space consistently, sets up virtqueues (creating the matching
 * `SplitDriverQueue` / `PackedDriverQueue`), notifies, and handles interrupts, over any
 * {@link MmioBus}. Version 2 and legacy version 1 devices are supported.
 *
 * Every access is a 32-bit aligned access to a control register, or a field-width access to
 * the configuration space (§4.2.2.2). Nothing the device returns is trusted: loops that wait
 * for it are bounded (`maxRetries`) and a misbehaving device raises a {@link TransportError}.
 *
 * @example
 * ```ts
 * const t = new MmioDriverTransport({ read: (o, s) => dev.read(o, s), write: (o, s, v) => dev.write(o, s, v) });
 * t.negotiate((offered) => offered & wanted); // §3.1.1 steps 1–6
 * const q = t.setupQueue<string>(0, mem, { size: 8, desc: 0x1000, driver: 0x1080, device: 0x2000 });
 * t.driverOk(); // step 8
 * q.add([{ addr: 0x4000, len: 4 }], [{ addr: 0x5000, len: 4 }], "req");
 * if (q.publish()) t.notify(0);
 * ```
 */
export class MmioDriverTransport implements DriverTransport {
  readonly #bus: MmioBus;
  readonly #maxRetries: number;
  readonly #pageSize: number;
  #info: MmioDeviceInfo | undefined;
  #features = 0n;
  readonly #queues: (SplitDriverQueue<unknown> | PackedDriverQueue<unknown> | undefined)[] = [];
  readonly #trace: number[] = [];

  /**
   * @param bus - register access functions
   * @param options - retry bound and legacy page size
   * @throws RangeError naming `maxRetries` or `pageSize` if invalid
   */
  constructor(bus: MmioBus, options: MmioDriverOptions = {}) {
    const maxRetries = options.maxRetries ?? 64;
    const pageSize = options.pageSize ?? 4096;
    if (!Number.isInteger(maxRetries) || maxRetries < 1) {
      throw new RangeError(`maxRetries must be a positive integer, got ${maxRetries}`);
    }
    if (
      !Number.isInteger(pageSize) ||
      pageSize < 1 ||
      pageSize > 0x80000000 ||
      (pageSize & (pageSize - 1)) !== 0
    ) {
      throw new RangeError(`pageSize must be a power of 2, got ${pageSize}`);
    }
    this.#bus = bus;
    this.#maxRetries = maxRetries;
    this.#pageSize = pageSize;
  }

  #r(offset: number): number {
    return this.#bus.read(offset, 4) >>> 0;
  }

  #w(offset: number, value: number): void {
    this.#bus.write(offset, 4, value >>> 0);
  }

  /** What `probe` found (probing first if needed). */
  get info(): MmioDeviceInfo {
    return this.#info ?? this.probe();
  }

  /** The negotiated features (0 before {@link MmioDriverTransport.negotiate}). */
  get features(): bigint {
    return this.#features;
  }

  /**
   * Read and check MagicValue, Version and DeviceID (§4.2.3.1.1: the driver MUST check them
   * first, and MUST NOT touch other registers of a device with ID 0). Version 1 devices get
   * GuestPageSize here, as Linux does.
   *
   * @throws TransportError "bad-magic", "unsupported-version" or "no-device"
   */
  probe(): MmioDeviceInfo {
    const magic = this.#r(MmioReg.MAGIC_VALUE);
    if (magic !== MMIO_MAGIC) {
      throw new TransportError("bad-magic", `MagicValue is 0x${magic.toString(16)}`, magic);
    }
    const version = this.#r(MmioReg.VERSION);
    if (version !== MmioVersion.MODERN && version !== MmioVersion.LEGACY) {
      throw new TransportError("unsupported-version", `Version is ${version}`, version);
    }
    const deviceId = this.#r(MmioReg.DEVICE_ID);
    if (deviceId === DeviceId.INVALID) {
      throw new TransportError("no-device", "DeviceID is 0 (placeholder slot)", 0);
    }
    const vendorId = this.#r(MmioReg.VENDOR_ID);
    if (version === MmioVersion.LEGACY) this.#w(MmioReg.GUEST_PAGE_SIZE, this.#pageSize);
    this.#info = { version, deviceId, vendorId };
    return this.#info;
  }

  /** The device status field. */
  get status(): number {
    return this.#r(MmioReg.STATUS) & 0xff;
  }

  /** Set status bits, keeping the ones already set (§2.1.1: never clear one). */
  #setStatus(bits: number): void {
    this.#w(MmioReg.STATUS, this.status | bits);
  }

  /** Whether the device has set DEVICE_NEEDS_RESET. */
  get needsReset(): boolean {
    return (this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /**
   * Reset the device: write 0 to Status and wait (bounded) until it reads 0 (§2.4.2). Forgets
   * every queue set up through this transport.
   * @throws TransportError "reset-timeout"
   */
  reset(): void {
    this.#w(MmioReg.STATUS, 0);
    this.#queues.length = 0;
    this.#features = 0n;
    for (let i = 0; i < this.#maxRetries; i++) {
      if (this.status === 0) return;
    }
    throw new TransportError("reset-timeout", "Status did not read 0 after a reset", this.status);
  }

  /** Set FAILED: the driver gives up on the device (§3.1.1); reset before trying again. */
  fail(): void {
    this.#setStatus(DeviceStatus.FAILED);
  }

  /**
   * Steps 1–6 of the initialisation sequence (§3.1.1): reset, ACKNOWLEDGE, DRIVER, read the
   * offered features, write the accepted subset, FEATURES_OK and read it back. Legacy devices
   * skip FEATURES_OK (§3.1.2).
   *
   * The accepted set is `accept(offered)` (or `accept & offered` for a mask) restricted to the
   * offered bits and, among the reserved bits, to {@link DRIVER_TRANSPORT_FEATURES}; on a
   * version 2 device VIRTIO_F_VERSION_1 is always accepted (§6.1), on version 1 only bits 0–31
   * exist. Bits 0–63 are read (two windows).
   *
   * @param accept - the features the caller wants, or a function choosing them from the offer
   * @returns the negotiated features
   * @throws TransportError "bad-magic" / "unsupported-version" / "no-device" (probe),
   *   "not-modern" (version 2 without VERSION_1) or "features-refused"; in the last two cases
   *   FAILED has been set.
   */
  negotiate(accept: bigint | ((offered: bigint) => bigint)): bigint {
    const info = this.#info ?? this.probe();
    const legacy = info.version === MmioVersion.LEGACY;
    this.reset();
    this.#setStatus(DeviceStatus.ACKNOWLEDGE);
    this.#setStatus(DeviceStatus.DRIVER);
    let offered = 0n;
    for (let sel = 0; sel < 2; sel++) {
      // §4.2.2.2: write DeviceFeaturesSel before reading DeviceFeatures.
      this.#w(MmioReg.DEVICE_FEATURES_SEL, sel);
      offered |= BigInt(this.#r(MmioReg.DEVICE_FEATURES)) << BigInt(32 * sel);
    }
    if (legacy) offered &= 0xffffffffn;
    else if (!hasFeature(offered, Feature.VERSION_1)) {
      this.fail();
      throw new TransportError("not-modern", "a version 2 device must offer VIRTIO_F_VERSION_1");
    }
    const wanted = typeof accept === "bigint" ? accept : accept(offered);
    let accepted = wanted & offered & ~(FEATURE_TRANSPORT_MASK & ~DRIVER_TRANSPORT_FEATURES);
    if (!legacy) accepted |= featureMask(Feature.VERSION_1);
    for (let sel = 0; sel < 2; sel++) {
      this.#w(MmioReg.DRIVER_FEATURES_SEL, sel);
      this.#w(MmioReg.DRIVER_FEATURES, Number((accepted >> BigInt(32 * sel)) & 0xffffffffn));
    }
    if (!legacy) {
      this.#setStatus(DeviceStatus.FEATURES_OK);
      const s = this.status;
      if ((s & DeviceStatus.FEATURES_OK) === 0) {
        this.fail();
        throw new TransportError(
          "features-refused",
          "FEATURES_OK did not stick (§3.1.1 step 6)",
          s,
        );
      }
    }
    this.#features = accepted;
    return accepted;
  }

  /**
   * QueueNumMax of queue `index`: 0 if the queue is not available.
   */
  queueMaxSize(index: number): number {
    this.#w(MmioReg.QUEUE_SEL, index);
    return this.#r(MmioReg.QUEUE_NUM_MAX);
  }

  /**
   * Set up queue `index` (§4.2.3.2, legacy §4.2.4): check it is free and large enough, create the
   * driver queue (which zeroes its ring memory), then tell the device its size and addresses
   * and enable it, and read back that it is enabled. The ring type follows the negotiated
   * VIRTIO_F_RING_PACKED.
   *
   * @param index - queue index
   * @param memory - guest memory the ring is in
   * @param layout - version 2: the three area addresses; version 1: a {@link LegacyQueueLayout}
   * @param options - indirect table area
   * @returns the driver queue
   * @throws TransportError "queue-unavailable", "queue-in-use", "queue-too-large" or
   *   "queue-refused"; QueueConfigError / RangeError from the queue for an invalid layout
   */
  setupQueue<T>(
    index: number,
    memory: GuestMemory,
    layout: QueueLayout | LegacyQueueLayout,
    options: DriverQueueSetupOptions = {},
  ): SplitDriverQueue<T> | PackedDriverQueue<T> {
    if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
      throw new RangeError(`index must be an integer in [0, 0xffff], got ${index}`);
    }
    const legacy = this.info.version === MmioVersion.LEGACY;
    this.#w(MmioReg.QUEUE_SEL, index);
    const inUse = legacy ? this.#r(MmioReg.QUEUE_PFN) : this.#r(MmioReg.QUEUE_READY);
    if (inUse !== 0) throw new TransportError("queue-in-use", `queue ${index} is live`, inUse);
    const max = this.#r(MmioReg.QUEUE_NUM_MAX);
    if (max === 0) throw new TransportError("queue-unavailable", `queue ${index} has size 0`, 0);
    if (layout.size > max) {
      throw new TransportError("queue-too-large", `queue ${index} holds at most ${max}`, max);
    }
    const ring = ringFeatures(this.#features);
    const qopts = options.indirect === undefined ? {} : { indirect: options.indirect };
    let q: SplitDriverQueue<T> | PackedDriverQueue<T>;
    if (legacy) {
      if (!("base" in layout))
        throw new TypeError("layout must be a LegacyQueueLayout for a version 1 device");
      const align = layout.align ?? LEGACY_VRING_ALIGN;
      const { base, size } = layout;
      if (
        !Number.isSafeInteger(base) ||
        base <= 0 ||
        base % this.#pageSize !== 0 ||
        base / this.#pageSize > 0xffffffff
      ) {
        throw new RangeError(
          `layout.base must be a non-zero page-aligned address below 2^32 pages, got ${base}`,
        );
      }
      const l = legacySplitLayout(size, align);
      q = new SplitDriverQueue<T>(
        memory,
        { size, desc: base, driver: base + l.avail, device: base + l.used },
        ring,
        qopts,
      );
      this.#w(MmioReg.QUEUE_NUM, size);
      this.#w(MmioReg.QUEUE_ALIGN, align);
      const pfn = base / this.#pageSize;
      this.#w(MmioReg.QUEUE_PFN, pfn);
      const back = this.#r(MmioReg.QUEUE_PFN);
      if (back !== pfn)
        throw new TransportError("queue-refused", `queue ${index} QueuePFN reads ${back}`, back);
    } else {
      if (!("desc" in layout))
        throw new TypeError("layout must be a QueueLayout for a version 2 device");
      q = hasFeature(this.#features, Feature.RING_PACKED)
        ? new PackedDriverQueue<T>(memory, layout, ring, qopts)
        : new SplitDriverQueue<T>(memory, layout, ring, qopts);
      this.#w(MmioReg.QUEUE_NUM, layout.size);
      this.#writeAddress(MmioReg.QUEUE_DESC_LOW, layout.desc);
      this.#writeAddress(MmioReg.QUEUE_DRIVER_LOW, layout.driver);
      this.#writeAddress(MmioReg.QUEUE_DEVICE_LOW, layout.device);
      this.#w(MmioReg.QUEUE_READY, 1);
      const back = this.#r(MmioReg.QUEUE_READY);
      if (back !== 1)
        throw new TransportError("queue-refused", `queue ${index} QueueReady reads ${back}`, back);
    }
    this.#queues[index] = q as SplitDriverQueue<unknown> | PackedDriverQueue<unknown>;
    return q;
  }

  #writeAddress(lowReg: number, addr: number): void {
    this.#w(lowReg, addr % 0x100000000);
    this.#w(lowReg + 4, Math.floor(addr / 0x100000000));
  }

  /**
   * Reset queue `index` alone (VIRTIO_F_RING_RESET, §2.6.1, §4.2.2.2): write 1 to QueueReset
   * and wait (bounded) until it reads 0. Set the queue up again to reuse it.
   * @throws RangeError if RING_RESET was not negotiated; TransportError "reset-timeout"
   */
  resetQueue(index: number): void {
    if (!hasFeature(this.#features, Feature.RING_RESET)) {
      throw new RangeError("resetQueue needs VIRTIO_F_RING_RESET negotiated");
    }
    this.#w(MmioReg.QUEUE_SEL, index);
    this.#w(MmioReg.QUEUE_RESET, 1);
    this.#queues[index] = undefined;
    for (let i = 0; i < this.#maxRetries; i++) {
      if (this.#r(MmioReg.QUEUE_RESET) === 0) return;
    }
    throw new TransportError("reset-timeout", `queue ${index} reset did not complete`, 1);
  }

  /** Step 8 (§3.1.1): set DRIVER_OK; the device is live. */
  driverOk(): void {
    this.#setStatus(DeviceStatus.DRIVER_OK);
  }

  /**
   * Send an available buffer notification for queue `index` (§4.2.3.3): the queue index, or
   * with VIRTIO_F_NOTIFICATION_DATA the index with the queue's next available position.
   */
  notify(index: number): void {
    const q = this.#queues[index];
    if (q !== undefined && hasFeature(this.#features, Feature.NOTIFICATION_DATA)) {
      const st = q.getState();
      this.#w(
        MmioReg.QUEUE_NOTIFY,
        q instanceof PackedDriverQueue
          ? packedNotificationData(index, st.availIdx, st.availWrap)
          : splitNotificationData(index, st.availIdx),
      );
      return;
    }
    this.#w(MmioReg.QUEUE_NOTIFY, index);
  }

  /** InterruptStatus, with undefined bits ignored (§4.2.2.2). */
  interruptStatus(): number {
    return this.#r(MmioReg.INTERRUPT_STATUS) & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG);
  }

  /** Acknowledge the interrupt bits in `bits` (§4.2.3.4). */
  ackInterrupt(bits: number): void {
    this.#w(MmioReg.INTERRUPT_ACK, bits & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG));
  }

  /**
   * Handle an interrupt: read InterruptStatus, acknowledge what was set, return it. Reap the
   * queues after this (a buffer used after the read raises a new interrupt).
   * @returns bit 0: used buffers (check every queue), bit 1: configuration change (check
   *   {@link MmioDriverTransport.needsReset} too, §2.1.2)
   */
  takeInterrupt(): number {
    const s = this.interruptStatus();
    if (s !== 0) this.ackInterrupt(s);
    return s;
  }

  /** ConfigGeneration (always 0 for a version 1 device, which has none). */
  configGeneration(): number {
    return this.info.version === MmioVersion.LEGACY ? 0 : this.#r(MmioReg.CONFIG_GENERATION);
  }

  /**
   * Read configuration fields consistently (§2.5.1): run `fn` between two reads of
   * ConfigGeneration and run it again while they differ. A version 1 device has no generation,
   * so `fn` runs until two runs read the same values (§2.5.4). Bounded by `maxRetries`.
   *
   * @param fn - reads the fields through the given reader; may run several times
   * @returns what the last (consistent) run of `fn` returned
   * @throws TransportError "config-unstable" if no consistent run happened within the bound
   */
  readConfig<R>(fn: (cfg: ConfigReader) => R): R {
    const legacy = this.info.version === MmioVersion.LEGACY;
    const trace = this.#trace;
    const reader = this.#reader;
    let previous: number[] | undefined;
    for (let i = 0; i < this.#maxRetries; i++) {
      trace.length = 0;
      const before = legacy ? 0 : this.#r(MmioReg.CONFIG_GENERATION);
      const result = fn(reader);
      if (!legacy) {
        if (this.#r(MmioReg.CONFIG_GENERATION) === before) return result;
        continue;
      }
      if (previous !== undefined && sameValues(previous, trace)) return result;
      previous = trace.slice();
    }
    throw new TransportError(
      "config-unstable",
      `configuration changed on each of ${this.#maxRetries} reads`,
    );
  }

  readonly #reader: ConfigReader = {
    u8: (offset) => this.#cfg(offset, 1),
    u16: (offset) => this.#cfg(offset, 2),
    u32: (offset) => this.#cfg(offset, 4),
    u64: (offset) => {
      const lo = this.#cfg(offset, 4);
      const hi = this.#cfg(offset + 4, 4);
      return (BigInt(hi) << 32n) | BigInt(lo);
    },
  };

  #cfg(offset: number, size: 1 | 2 | 4): number {
    if (!Number.isInteger(offset) || offset < 0 || offset % size !== 0) {
      throw new RangeError(`offset must be a non-negative multiple of ${size}, got ${offset}`);
    }
    const v = this.#bus.read(CFG + offset, size) >>> 0;
    this.#trace.push(v);
    return v;
  }

  /**
   * Write a configuration field of `size` bytes (after FEATURES_OK, §3.1.1 step 4).
   * @throws RangeError naming `offset` if it is not aligned to `size`
   */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset % size !== 0) {
      throw new RangeError(`offset must be a non-negative multiple of ${size}, got ${offset}`);
    }
    this.#bus.write(CFG + offset, size, value);
  }
}

function sameValues(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
