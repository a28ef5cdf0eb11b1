import { type GuestMemory, u64ToAddress, VirtioError } from "@virtio-ts/memory";
import {
  DeviceStatus,
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
  LEGACY_VRING_ALIGN,
  legacySplitLayout,
  MmioInterrupt,
  PACKED_QUEUE_MAX_SIZE,
} from "@virtio-ts/spec";
import {
  createDeviceQueue,
  type DeviceQueue,
  GatedDeviceQueue,
  type PackedDeviceQueue,
  QueueConfigError,
  type QueueLayout,
  type QueueState,
  type SplitDeviceQueue,
} from "@virtio-ts/virtqueue";
import type { DeviceContext, DeviceModel } from "./device-model.js";
import { type DeviceState, DeviceStateMismatchError, type QueueSnapshot } from "./device-state.js";
import type { Doorbell } from "./doorbell.js";
import { host } from "./host.js";
import { decodeNotificationData, type NotificationData } from "./notification-data.js";
import { RateLimitedLog } from "./rate-limit.js";

/** Number of 32-bit feature words a device presents (feature bits 0–127). */
export const FEATURE_WORDS = 4;

const ALL_FEATURES = (1n << BigInt(32 * FEATURE_WORDS)) - 1n;

const ZERO_STATE: QueueState = { availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true };

/** Status bits the driver may set (DEVICE_NEEDS_RESET is the device's; SUSPEND unsupported). */
const DRIVER_STATUS_BITS =
  DeviceStatus.ACKNOWLEDGE |
  DeviceStatus.DRIVER |
  DeviceStatus.FEATURES_OK |
  DeviceStatus.DRIVER_OK |
  DeviceStatus.FAILED;

/**
 * The reserved transport/ring feature bits (24–41) a modern virtio-mmio device may offer:
 * INDIRECT_DESC, EVENT_IDX, VERSION_1, ACCESS_PLATFORM, RING_PACKED, IN_ORDER, ORDER_PLATFORM,
 * NOTIFICATION_DATA and RING_RESET. Left out: the legacy-only NOTIFY_ON_EMPTY and ANY_LAYOUT
 * (not described for 1.x devices), SR_IOV (PCI only), NOTIF_CONFIG_DATA (no MMIO mechanism)
 * and ADMIN_VQ (§4.2.5: reserved for future use over MMIO).
 *
 * @see VIRTIO 1.3 §2.2 ("per-transport lists of allowed features"), §6
 */
export const MMIO_TRANSPORT_FEATURES: bigint = [
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

/**
 * The reserved bits a legacy (pre-1.0) device may offer: NOTIFY_ON_EMPTY, ANY_LAYOUT,
 * INDIRECT_DESC and EVENT_IDX. Legacy devices only have bits 0–31.
 * @see VIRTIO 1.3 §6.3 "Legacy Interface: Reserved Feature Bits"
 */
export const LEGACY_TRANSPORT_FEATURES: bigint = [
  Feature.NOTIFY_ON_EMPTY,
  Feature.ANY_LAYOUT,
  Feature.RING_INDIRECT_DESC,
  Feature.RING_EVENT_IDX,
].reduce((m, bit) => m | featureMask(bit), 0n);

/** One of the three areas of a virtqueue. @see VIRTIO 1.3 §2.6 */
export type QueueArea = "desc" | "driver" | "device";

/** Options of a {@link VirtioDeviceCore}. */
export interface DeviceCoreOptions {
  /** Guest memory the queues live in. */
  readonly memory: GuestMemory;
  /**
   * Run the legacy (pre-1.0) interface: no FEATURES_OK, feature bits 0–31 only, no
   * VERSION_1, split rings only, kicks accepted before DRIVER_OK (§3.1.2). Default false.
   */
  readonly legacy?: boolean;
  /**
   * Reserved bits (24–41) the transport allows; bits of the model outside this set are not
   * offered. Default {@link MMIO_TRANSPORT_FEATURES} (modern) or
   * {@link LEGACY_TRANSPORT_FEATURES} (legacy).
   */
  readonly transportFeatures?: bigint;
  /**
   * The interrupt line: called each time a notification sets a bit of the interrupt status,
   * with the new status and what caused it: the index of the queue for a used buffer
   * notification, {@link CONFIG_CHANGE_SOURCE} (-1) for a configuration change notification.
   * The line stays asserted while {@link VirtioDeviceCore.interruptStatus} is non-zero (a
   * level-triggered MMIO interrupt). Wire it to a `Doorbell` for an irqfd; a transport with
   * per-queue vectors (virtio-pci MSI-X) routes by `source`.
   */
  readonly interrupt?: (status: number, source: number) => void;
  /** Where guest faults are logged (rate-limited). Default: a `RateLimitedLog` on console.warn. */
  readonly log?: RateLimitedLog;
  /**
   * When a kick (an available buffer notification, §2.9) reaches the model:
   * - `"sync"` (default): inside the exit that wrote it (`onQueueNotify` runs before
   *   `QueueNotify` returns), so the ring is empty whenever the driver publishes again and every
   *   request costs a kick, EVENT_IDX or not.
   * - `"deferred"`: the ioeventfd behaviour. The exit only records the kick and disables the
   *   queue's notifications (§2.7.10 / §2.8.10: avail_event stops moving, or NO_NOTIFY /
   *   DISABLE); the model is called on a later turn of the event loop (`setImmediate`, or
   *   `setTimeout(0)` where there is none), once per queue however many kicks came, and
   *   notifications are enabled again when it has taken what it could. A driver that publishes
   *   more before then does not kick, so a deep queue costs few kicks. Costs a turn of latency.
   */
  readonly kicks?: "sync" | "deferred";
}

/**
 * The `source` the core's interrupt callback reports for a configuration change notification
 * (including the one that announces DEVICE_NEEDS_RESET, §2.1.2); used buffer notifications
 * report their queue index instead.
 */
export const CONFIG_CHANGE_SOURCE = -1;

/** Counters of a device core, for tests and the exit / fault measurements. */
export interface DeviceCoreStats {
  /** Available buffer notifications received (valid or not). */
  notifies: number;
  /** Notifications not delivered: unknown or disabled queue, device not live or failed. */
  ignoredNotifies: number;
  /** Used buffer notifications sent. */
  usedInterrupts: number;
  /** Configuration change notifications sent. */
  configInterrupts: number;
  /** Guest faults reported through `fail` or `noteFault`. */
  faults: number;
  /**
   * Driver protocol violations the device tolerated by ignoring them: clearing a status bit,
   * writing features after FEATURES_OK, changing a live queue, kicking before DRIVER_OK…
   */
  violations: number;
}

/** Options of {@link VirtioDeviceCore.suspend}. */
export interface SuspendOptions {
  /**
   * Wait at most this long (ms) for the chains the model has in flight to complete before
   * resolving (default 0: do not wait; they are saved with the state and served again after
   * the move). A model with `stopRings` (vhost) always drains in its data plane.
   */
  readonly drainTimeoutMs?: number;
}

class QueueSlot {
  readonly maxSize: number;
  size: number;
  readonly addr = new Uint32Array(6); // desc lo/hi, driver lo/hi, device lo/hi
  ready = false;
  /** The model's view of the ring: gated, so a suspend can stop it from outside the model. */
  queue: GatedDeviceQueue | undefined = undefined;
  /** The ring under the gate, remapped when the memory's backing buffer is replaced. */
  ring: SplitDeviceQueue | PackedDeviceQueue | undefined = undefined;
  layout: QueueLayout | undefined = undefined;
  /** Legacy: page frame number (0 = not in use) and used ring alignment. */
  pfn = 0;
  align = LEGACY_VRING_ALIGN;
  kick: Doorbell | undefined = undefined;
  /** Deferred kicks: a kick is recorded and the model not called yet (notifications off). */
  kickPending = false;
  /** The notification data of the last recorded kick (VIRTIO_F_NOTIFICATION_DATA). */
  kickData: NotificationData | undefined = undefined;

  constructor(maxSize: number) {
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  clear(): void {
    this.size = this.maxSize;
    this.addr.fill(0);
    this.ready = false;
    this.queue = undefined;
    this.ring = undefined;
    this.layout = undefined;
    this.pfn = 0;
    this.align = LEGACY_VRING_ALIGN;
    this.kickPending = false;
    this.kickData = undefined;
  }
}

// Deferred kicks run on the next turn of the event loop: setImmediate where it exists (Node),
// else a zero timeout.
const nextTurn: (fn: () => void) => void =
  typeof (globalThis as { setImmediate?: unknown }).setImmediate === "function"
    ? (fn) => (globalThis as unknown as { setImmediate(f: () => void): void }).setImmediate(fn)
    : (fn) => host.setTimeout(fn, 0);

const AREA_WORD: Readonly<Record<QueueArea, number>> = { desc: 0, driver: 2, device: 4 };

/**
 * The transport-independent part of a virtio device: the device status state machine, feature
 * negotiation in 32-bit windows, the device configuration space with its generation counter,
 * per-queue setup and reset, and the interrupt status. Transports (virtio-mmio here, PCI later)
 * translate register accesses into calls on it; a {@link DeviceModel} supplies the device type.
 *
 * Everything a driver writes is untrusted: out-of-range selectors, sizes and addresses are
 * refused without throwing, protocol violations are ignored and counted in
 * {@link VirtioDeviceCore.stats}, and a hostile ring found while the model processes a queue
 * puts the device into DEVICE_NEEDS_RESET instead of throwing to the VMM.
 *
 * Status rules (VIRTIO 1.3 §2.1, §3.1):
 * - writing 0 resets everything (§2.4.1): status, features, queues, interrupt status;
 * - the driver cannot clear a bit (§2.1.1): bits it omits stay set, and the write counts as a
 *   violation; DEVICE_NEEDS_RESET can only be set by the device;
 * - FEATURES_OK is kept only if ACKNOWLEDGE and DRIVER are set, every accepted bit was offered,
 *   VERSION_1 is accepted (modern), and the model validates the set (§2.2.2);
 * - DRIVER_OK is kept only after FEATURES_OK (modern), and activates the model.
 *
 * @example
 * ```ts
 * const core = new VirtioDeviceCore(model, { memory, interrupt: (s) => irq.ring() });
 * core.writeStatus(DeviceStatus.ACKNOWLEDGE);
 * ```
 */
export class VirtioDeviceCore implements DeviceContext {
  /** The device type this core drives. */
  readonly model: DeviceModel;
  /** @inheritdoc */
  readonly memory: GuestMemory;
  /** Whether this core runs the legacy interface. */
  readonly legacy: boolean;
  /** Feature bits offered to the driver. */
  readonly offeredFeatures: bigint;
  /** Counters (mutated in place). */
  readonly stats: DeviceCoreStats = {
    notifies: 0,
    ignoredNotifies: 0,
    usedInterrupts: 0,
    configInterrupts: 0,
    faults: 0,
    violations: 0,
  };
  /** Faults by error `code`. */
  readonly faultCounts = new Map<string, number>();
  /** The last fault reported, if any. */
  lastFault: VirtioError | undefined = undefined;
  /** Why the last violation was counted (for debugging drivers). */
  lastViolation: string | undefined = undefined;
  /** Why FEATURES_OK was last refused, if it was. */
  featuresRefusal: string | undefined = undefined;

  readonly #queues: QueueSlot[];
  readonly #irq: ((status: number, source: number) => void) | undefined;
  readonly #log: RateLimitedLog;
  readonly #nd: NotificationData = { queueIndex: 0, nextOff: 0, nextWrap: 0 };
  #status = 0;
  #driverFeatures = 0n;
  #unofferedHigh = false;
  #isr = 0;
  readonly #sharedIsr: Int32Array | undefined;
  #generation = 0;
  #epoch = 0;
  #active = false;
  #notificationData = false;
  #suspended = false;
  /** Ring states the model's data plane reported at suspend (`stopRings`), if it has one. */
  #ringStates: readonly (QueueState | undefined)[] | undefined = undefined;
  /** `options.kicks === "deferred"`. */
  readonly #deferKicks: boolean;
  /** A run of {@link VirtioDeviceCore.#serveKicks} is scheduled. */
  #kicksScheduled = false;
  /** Arguments of `#notifyModel` (fields, so a notification allocates no closure). */
  #notifyIndex = 0;
  #notifyData: NotificationData | undefined = undefined;
  readonly #notifyModel = (): void => {
    this.model.onQueueNotify(this.#notifyIndex, this.#notifyData);
  };
  readonly #serveKicks = (): void => this.#serveDeferred();

  /**
   * @param model - the device type
   * @param options - memory, legacy mode, interrupt line, log
   * @throws RangeError if the model's queue sizes or config size are invalid
   */
  constructor(model: DeviceModel, options: DeviceCoreOptions) {
    const max = model.queueMaxSizes;
    if (max.length > 0xffff) {
      throw new RangeError(
        `model.queueMaxSizes must have at most 65535 entries, got ${max.length}`,
      );
    }
    for (const [i, m] of max.entries()) {
      if (!Number.isInteger(m) || m < 0 || m > PACKED_QUEUE_MAX_SIZE) {
        throw new RangeError(
          `model.queueMaxSizes[${i}] must be an integer in [0, 32768], got ${m}`,
        );
      }
    }
    if (!Number.isInteger(model.configSize) || model.configSize < 0) {
      throw new RangeError(
        `model.configSize must be a non-negative integer, got ${model.configSize}`,
      );
    }
    this.model = model;
    this.memory = options.memory;
    this.legacy = options.legacy === true;
    this.#irq = options.interrupt;
    this.#log = options.log ?? new RateLimitedLog();
    const kicks = options.kicks ?? "sync";
    if (kicks !== "sync" && kicks !== "deferred") {
      throw new RangeError(`options.kicks must be "sync" or "deferred", got ${String(kicks)}`);
    }
    this.#deferKicks = kicks === "deferred";
    const allowed =
      options.transportFeatures ??
      (this.legacy ? LEGACY_TRANSPORT_FEATURES : MMIO_TRANSPORT_FEATURES);
    let offered = model.features & ALL_FEATURES & ~(FEATURE_TRANSPORT_MASK & ~allowed);
    if (this.legacy) {
      // Bits 32 and up came with VIRTIO 1.0; a legacy device has none of them.
      offered &= 0xffffffffn;
    } else {
      // §6.2: a device MUST offer VIRTIO_F_VERSION_1.
      offered |= featureMask(Feature.VERSION_1);
    }
    this.offeredFeatures = offered;
    this.#queues = max.map((m) => new QueueSlot(m));
    const n = model.notifiers;
    if (n?.interruptStatus !== undefined) {
      const w = n.interruptStatus;
      if (!(w instanceof Int32Array) || w.length < 1) {
        throw new TypeError("model.notifiers.interruptStatus must be a non-empty Int32Array");
      }
      this.#sharedIsr = w;
    }
    n?.kicks?.forEach((kick, i) => {
      if (kick !== undefined) this.setKickDoorbell(i, kick);
    });
  }

  // ---- status (VIRTIO 1.3 §2.1) ----

  /** The device status field. */
  get status(): number {
    return this.#status;
  }

  /** @inheritdoc */
  get needsReset(): boolean {
    return (this.#status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /** Whether the model has been activated (DRIVER_OK, or a legacy first use). */
  get active(): boolean {
    return this.#active;
  }

  /** @inheritdoc */
  get epoch(): number {
    return this.#epoch;
  }

  /** @inheritdoc */
  get numQueues(): number {
    return this.#queues.length;
  }

  /**
   * The driver writes the device status field.
   *
   * @param value - the written value; only bits 0–7 exist (others are ignored and counted)
   * @see VIRTIO 1.3 §2.1, §2.4, §3.1.1
   */
  writeStatus(value: number): void {
    const v = value >>> 0;
    if (v === 0) {
      this.reset();
      return;
    }
    if (v > 0xff) this.#violation(`status bits 0x${(v & ~0xff).toString(16)} do not exist`);
    const old = this.#status;
    // §2.1.1: the driver MUST NOT clear a device status bit; keep them.
    if ((old & DRIVER_STATUS_BITS & ~v) !== 0) {
      this.#violation(`status write 0x${v.toString(16)} clears bits of 0x${old.toString(16)}`);
    }
    let next = old | (v & DRIVER_STATUS_BITS);
    const added = next & ~old;
    if ((added & DeviceStatus.FEATURES_OK) !== 0 && !this.#acceptFeatures(next)) {
      next &= ~DeviceStatus.FEATURES_OK;
    }
    if (
      (added & DeviceStatus.DRIVER_OK) !== 0 &&
      !this.legacy &&
      (next & DeviceStatus.FEATURES_OK) === 0
    ) {
      // §3.1.1: DRIVER_OK comes after a successful FEATURES_OK; without negotiated features the
      // device cannot go live.
      this.#violation("DRIVER_OK without FEATURES_OK");
      next &= ~DeviceStatus.DRIVER_OK;
    }
    this.#status = next;
    if ((next & ~old & DeviceStatus.DRIVER_OK) !== 0) this.#activate();
  }

  /** Decide FEATURES_OK (§2.2.2): the reason it is refused, or undefined. */
  #acceptFeatures(status: number): boolean {
    let why: string | undefined;
    const f = this.#driverFeatures;
    if (this.legacy) why = "legacy devices have no FEATURES_OK (§3.1.2)";
    else if ((status & (DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)) !== 3) {
      why = "FEATURES_OK before ACKNOWLEDGE and DRIVER (§3.1.1)";
    } else if (this.#unofferedHigh || (f & ~this.offeredFeatures) !== 0n) {
      why = "the driver accepted features the device did not offer (§2.2.1)";
    } else if (!hasFeature(f, Feature.VERSION_1)) {
      why = "VIRTIO_F_VERSION_1 not accepted by the driver (§6.1, §6.2)";
    } else if (this.model.validateFeatures?.(f) === false) {
      why = "the device model refused this feature combination (§2.2.2)";
    }
    this.featuresRefusal = why;
    if (why !== undefined) return false;
    this.#notificationData = hasFeature(f, Feature.NOTIFICATION_DATA);
    return true;
  }

  #activate(): void {
    if (this.#active) return;
    this.#active = true;
    this.guard(() => this.model.activate(this));
  }

  /**
   * Reset the device (the driver wrote 0 to the status, or the host resets it): the model
   * forgets its state, every queue is disabled and returns to its defaults, features, status and
   * interrupt status go back to 0 (VIRTIO 1.3 §2.4.1, §4.2.2.1). The configuration generation is
   * not reset, so a driver straddling the reset still sees it move.
   */
  reset(): void {
    this.model.reset();
    for (const q of this.#queues) q.clear();
    this.#status = 0;
    this.#driverFeatures = 0n;
    this.#unofferedHigh = false;
    this.#isr = 0;
    if (this.#sharedIsr !== undefined) Atomics.store(this.#sharedIsr, 0, 0);
    this.#active = false;
    this.#notificationData = false;
    this.#suspended = false;
    this.#ringStates = undefined;
    this.featuresRefusal = undefined;
    this.#epoch++;
  }

  // ---- features (VIRTIO 1.3 §2.2) ----

  /**
   * The 32 offered feature bits of window `select` (bits `32·select` to `32·select + 31`); 0
   * past the last window.
   */
  deviceFeatureWord(select: number): number {
    const sel = select >>> 0;
    if (sel >= FEATURE_WORDS) return 0;
    return Number((this.offeredFeatures >> BigInt(32 * sel)) & 0xffffffffn);
  }

  /**
   * The driver writes 32 accepted feature bits for window `select`. Ignored (and counted) once
   * FEATURES_OK is set (modern) or the device is active (legacy): features are frozen. Bits in
   * windows past the last are remembered only as "accepted something unoffered", so FEATURES_OK
   * is refused and no guest value can grow a big integer.
   */
  writeDriverFeatureWord(select: number, value: number): void {
    const sel = select >>> 0;
    const v = value >>> 0;
    if (
      (!this.legacy && (this.#status & DeviceStatus.FEATURES_OK) !== 0) ||
      (this.legacy && this.#active)
    ) {
      this.#violation("driver features written after negotiation");
      return;
    }
    if (sel >= FEATURE_WORDS) {
      if (v !== 0) this.#unofferedHigh = true;
      return;
    }
    const shift = BigInt(32 * sel);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
  }

  /** The 32 accepted feature bits of window `select` as written so far. */
  driverFeatureWord(select: number): number {
    const sel = select >>> 0;
    if (sel >= FEATURE_WORDS) return 0;
    return Number((this.#driverFeatures >> BigInt(32 * sel)) & 0xffffffffn);
  }

  /**
   * The negotiated features: what the driver accepted, restricted to the offered bits (final
   * from FEATURES_OK; before it, what the driver has written so far).
   */
  get features(): bigint {
    return this.#driverFeatures & this.offeredFeatures;
  }

  // ---- configuration space (VIRTIO 1.3 §2.5) ----

  /** The configuration generation: changes whenever the device changes its configuration. */
  get configGeneration(): number {
    return this.#generation;
  }

  /**
   * Read configuration space. Out-of-range or misaligned accesses read 0 and count as
   * violations.
   * @param offset - byte offset into the configuration space
   * @param size - 1, 2 or 4
   */
  readConfig(offset: number, size: number): number {
    if (!this.#configAccessOk(offset, size)) return 0;
    const v = this.model.readConfig(offset, size as 1 | 2 | 4);
    return size === 4 ? v >>> 0 : v & ((1 << (8 * size)) - 1);
  }

  /**
   * Write configuration space. Out-of-range or misaligned writes are ignored; so are writes
   * before FEATURES_OK on a modern device (§3.1.1 step 4: the driver MUST NOT write the
   * configuration before negotiation is done).
   */
  writeConfig(offset: number, size: number, value: number): void {
    if (!this.#configAccessOk(offset, size)) return;
    if (
      !this.legacy &&
      (this.#status & DeviceStatus.FEATURES_OK) === 0 &&
      this.model.acceptsEarlyConfigWrite?.(offset, size as 1 | 2 | 4) !== true
    ) {
      this.#violation("configuration written before FEATURES_OK");
      return;
    }
    const mask = size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
    this.model.writeConfig(offset, size as 1 | 2 | 4, (value & mask) >>> 0);
  }

  #configAccessOk(offset: number, size: number): boolean {
    if (
      (size === 1 || size === 2 || size === 4) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset % size === 0 &&
      offset + size <= this.model.configSize
    ) {
      return true;
    }
    this.#violation(`configuration access of ${size} bytes at ${offset}`);
    return false;
  }

  /** @inheritdoc */
  notifyConfigChange(): void {
    this.#generation = (this.#generation + 1) >>> 0;
    if ((this.#status & DeviceStatus.DRIVER_OK) !== 0) {
      this.stats.configInterrupts++;
      this.#raise(MmioInterrupt.CONFIG, CONFIG_CHANGE_SOURCE);
    }
  }

  // ---- queues (VIRTIO 1.3 §2.6, §4.2.3.2) ----

  /** Maximum size of queue `index`, 0 if there is no such queue (or it is not available). */
  queueMaxSize(index: number): number {
    return this.#queues[index]?.maxSize ?? 0;
  }

  /** The size the driver chose for queue `index` (default: its maximum). */
  queueSize(index: number): number {
    return this.#queues[index]?.size ?? 0;
  }

  /** Whether queue `index` is enabled (QueueReady, or a legacy non-zero QueuePFN). */
  queueReady(index: number): boolean {
    return this.#queues[index]?.ready === true;
  }

  /**
   * The driver sets the size of queue `index`. Validated when the queue is enabled (the
   * register only stores it). Ignored while the queue is enabled (§4.2.2.2).
   */
  setQueueSize(index: number, size: number): void {
    const q = this.#liveCheck(index);
    if (q !== undefined) q.size = size >>> 0;
  }

  /**
   * The driver writes one 32-bit half of an area address of queue `index`. Ignored while the
   * queue is enabled (§4.2.2.2).
   */
  setQueueAddressWord(index: number, area: QueueArea, high: boolean, value: number): void {
    const q = this.#liveCheck(index);
    if (q !== undefined) q.addr[AREA_WORD[area] + (high ? 1 : 0)] = value >>> 0;
  }

  /**
   * One 32-bit half of an area address of queue `index` as the driver wrote it (0 for a queue
   * that does not exist): what a register that reads back the address presents.
   */
  queueAddressWord(index: number, area: QueueArea, high: boolean): number {
    const q = this.#queues[index];
    return q === undefined ? 0 : q.addr[AREA_WORD[area] + (high ? 1 : 0)]!;
  }

  /** The 64-bit address of an area of queue `index` (inexact above 2^53, see memory). */
  queueAddress(index: number, area: QueueArea): number {
    const q = this.#queues[index];
    if (q === undefined) return 0;
    const w = AREA_WORD[area];
    return u64ToAddress(q.addr[w]!, q.addr[w + 1]!);
  }

  #liveCheck(index: number): QueueSlot | undefined {
    const q = this.#queues[index];
    if (q === undefined) {
      this.#violation(`queue ${index} does not exist`);
      return undefined;
    }
    if (q.ready) {
      this.#violation(`queue ${index} changed while enabled`);
      return undefined;
    }
    return q;
  }

  /**
   * The driver writes QueueReady of queue `index`: non-zero enables the queue with its current
   * size and addresses, 0 disables it.
   *
   * Enabling validates the configuration by mapping the ring (split or packed, per
   * VIRTIO_F_RING_PACKED): size in [1, max] (split: a power of 2), areas aligned and inside
   * guest memory. A bad configuration is a driver error (§2.6.1, §2.7, §2.8.10.1) the device
   * cannot work with: the queue stays disabled (QueueReady reads 0) and the device enters
   * DEVICE_NEEDS_RESET through {@link VirtioDeviceCore.fail} with the `QueueConfigError`.
   * Enabling before FEATURES_OK (the ring type is not known yet) is ignored and counted.
   */
  setQueueReady(index: number, value: number): void {
    const q = this.#queues[index];
    if (q === undefined) {
      this.#violation(`queue ${index} does not exist`);
      return;
    }
    if (value >>> 0 === 0) {
      if (q.ready) this.#stopQueue(index, q);
      return;
    }
    if (q.ready) return;
    if (!this.legacy && (this.#status & DeviceStatus.FEATURES_OK) === 0) {
      this.#violation(`queue ${index} enabled before FEATURES_OK`);
      return;
    }
    const layout: QueueLayout = {
      size: q.size,
      desc: this.queueAddress(index, "desc"),
      driver: this.queueAddress(index, "driver"),
      device: this.queueAddress(index, "device"),
    };
    this.#enable(index, q, layout);
  }

  #enable(index: number, q: QueueSlot, layout: QueueLayout): boolean {
    const f = this.features;
    try {
      if (q.maxSize === 0 || layout.size < 1 || layout.size > q.maxSize) {
        throw new QueueConfigError(
          `queue ${index} size must be in [1, ${q.maxSize}]`,
          "size",
          layout.size,
        );
      }
      // A legacy device has no bit 34 (RING_PACKED) to negotiate: its features stop at 31.
      q.ring = createDeviceQueue(this.memory, layout, f);
      q.queue = new GatedDeviceQueue(q.ring);
      q.queue.stopping = this.#suspended;
    } catch (e) {
      if (!(e instanceof QueueConfigError)) throw e;
      this.fail(e);
      return false;
    }
    q.ready = true;
    q.layout = layout;
    if (this.#active) this.guard(() => this.model.onQueueEnable?.(index));
    return true;
  }

  #stopQueue(index: number, q: QueueSlot): void {
    this.#epoch++;
    this.guard(() => this.model.onQueueReset?.(index));
    q.ready = false;
    q.queue = undefined;
    q.ring = undefined;
    q.layout = undefined;
    q.pfn = 0;
  }

  /**
   * The driver resets queue `index` (VIRTIO_F_RING_RESET, §2.6.1): the model forgets the queue,
   * which returns to its default state (disabled, maximum size, addresses 0). Completes at once,
   * so the QueueReset register reads 0 afterwards (§4.2.2.1). Ignored and counted without the
   * feature.
   */
  resetQueue(index: number): void {
    const q = this.#queues[index];
    if (q === undefined || this.legacy || !hasFeature(this.features, Feature.RING_RESET)) {
      this.#violation(`queue ${index} reset without VIRTIO_F_RING_RESET`);
      return;
    }
    if (!(this.#status & DeviceStatus.FEATURES_OK)) {
      this.#violation(`queue ${index} reset before FEATURES_OK`);
      return;
    }
    if (q.ready) this.#stopQueue(index, q);
    q.clear();
  }

  /**
   * Legacy: the driver sets the used ring alignment of queue `index` (QueueAlign). Ignored
   * while the queue is in use. Validated when the queue is enabled.
   */
  setLegacyQueueAlign(index: number, align: number): void {
    const q = this.#liveCheck(index);
    if (q !== undefined) q.align = align >>> 0;
  }

  /** Legacy: QueuePFN of queue `index` (0 when not in use). */
  legacyQueuePfn(index: number): number {
    return this.#queues[index]?.pfn ?? 0;
  }

  /**
   * Legacy: the driver writes QueuePFN of queue `index`. 0 stops the queue; otherwise the queue
   * is enabled with the contiguous layout at `pfn × pageSize` (§2.7.2, `legacySplitLayout`) and
   * the used ring aligned to QueueAlign. A bad configuration (size not a power of 2 up to the
   * maximum, alignment not a power of 2 of at least 4, memory outside guest RAM) leaves
   * QueuePFN at 0 and enters DEVICE_NEEDS_RESET.
   */
  setLegacyQueuePfn(index: number, pfn: number, pageSize: number): void {
    const q = this.#queues[index];
    if (q === undefined) {
      this.#violation(`queue ${index} does not exist`);
      return;
    }
    const p = pfn >>> 0;
    if (p === 0) {
      if (q.ready) this.#stopQueue(index, q);
      return;
    }
    if (q.ready) {
      this.#violation(`queue ${index} changed while enabled`);
      return;
    }
    const align = q.align;
    if (align < 4 || (align & (align - 1)) !== 0) {
      this.fail(
        new QueueConfigError("QueueAlign must be a power of 2 of at least 4", "align", align),
      );
      return;
    }
    const size = q.size;
    // legacySplitLayout only needs a plausible size; #enable validates it against the maximum
    // and mapSplitRing checks that it is a power of 2.
    const l = legacySplitLayout(Math.min(size, 0x8000), align);
    const base = p * pageSize;
    if (
      this.#enable(index, q, { size, desc: base, driver: base + l.avail, device: base + l.used })
    ) {
      q.pfn = p;
    }
  }

  // ---- notifications (VIRTIO 1.3 §2.3, §2.9) ----

  /**
   * Route kicks of queue `index` to `doorbell` instead of `model.onQueueNotify` (the ioeventfd
   * analogue: a data plane elsewhere waits on the doorbell). `undefined` restores direct calls.
   * Kicks are still validated (queue enabled, device live) before ringing.
   */
  setKickDoorbell(index: number, doorbell: Doorbell | undefined): void {
    const q = this.#queues[index];
    if (q === undefined) throw new RangeError(`index must be a queue index, got ${index}`);
    q.kick = doorbell;
  }

  /**
   * An available buffer notification with the transport's raw value: the queue index, or with
   * VIRTIO_F_NOTIFICATION_DATA the 32-bit notification data (§2.9). Delivered to the model (or
   * the queue's kick doorbell) only for an enabled queue of a live device; otherwise ignored and
   * counted. A `VirtioError` from the model becomes {@link VirtioDeviceCore.fail}.
   */
  notify(value: number): void {
    this.stats.notifies++;
    const v = value >>> 0;
    let index = v;
    let data: NotificationData | undefined;
    if (this.#notificationData) {
      data = decodeNotificationData(v, this.#nd);
      index = data.queueIndex;
    }
    const q = this.#queues[index];
    const s = this.#status;
    if (
      q === undefined ||
      q.queue === undefined ||
      (s & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) !== 0
    ) {
      this.stats.ignoredNotifies++;
      return;
    }
    if (!this.#active) {
      if (!this.legacy) {
        // §3.1.1: the driver MUST NOT notify before DRIVER_OK.
        this.stats.ignoredNotifies++;
        this.#violation(`queue ${index} notified before DRIVER_OK`);
        return;
      }
      // §3.1.2: a legacy driver may use the device before DRIVER_OK.
      this.#activate();
      if (this.needsReset) return;
    }
    if (this.#suspended) {
      // Held: the chains stay in the ring; resume (here or at the destination) kicks every
      // queue once.
      this.stats.ignoredNotifies++;
      return;
    }
    this.#deliver(index, q, data);
  }

  #deliver(index: number, q: QueueSlot, data: NotificationData | undefined): void {
    if (q.kick !== undefined) {
      q.kick.ring();
      return;
    }
    if (this.#deferKicks) {
      // The ioeventfd behaviour: record the kick, stop further ones until the model has
      // drained the queue (§2.7.10 / §2.8.10), serve on a later turn.
      if (!q.kickPending) {
        q.kickPending = true;
        q.queue?.disableNotifications();
      }
      q.kickData = data;
      if (!this.#kicksScheduled) {
        this.#kicksScheduled = true;
        nextTurn(this.#serveKicks);
      }
      return;
    }
    this.#notifyIndex = index;
    this.#notifyData = data;
    this.guard(this.#notifyModel);
  }

  /** Whether a deferred kick may reach the model now (as `notify` checks for a sync one). */
  #servable(): boolean {
    return (
      this.#active &&
      !this.#suspended &&
      (this.#status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) === 0
    );
  }

  /**
   * Deferred kicks: call the model once for each queue kicked since the last run, then enable
   * its notifications again. If the driver published meanwhile (it could not kick), the model
   * is called again, as long as it keeps taking chains (a model that took none is busy and
   * pops when it can, like BlkDevice on a completion).
   */
  #serveDeferred(): void {
    this.#kicksScheduled = false;
    const queues = this.#queues;
    for (let i = 0; i < queues.length; i++) {
      const q = queues[i]!;
      if (!q.kickPending) continue;
      q.kickPending = false;
      const data = q.kickData;
      q.kickData = undefined;
      const g = q.queue;
      // Disabled or reset since the kick: a new ring starts with notifications on.
      if (g === undefined) continue;
      // Each further round needs the model to have taken a chain; a driver that keeps
      // publishing from another thread is served again on the next turn after 16 rounds.
      for (let round = 0; ; round++) {
        if (round === 16) {
          q.kickPending = true;
          q.kickData = data;
          if (!this.#kicksScheduled) {
            this.#kicksScheduled = true;
            nextTurn(this.#serveKicks);
          }
          break;
        }
        const pops = g.pops;
        const live = this.#servable();
        if (live) {
          this.#notifyIndex = i;
          this.#notifyData = data;
          this.guard(this.#notifyModel);
        }
        if (q.queue !== g) break;
        if (!g.enableNotifications() || !live || g.pops === pops) break;
        g.disableNotifications();
      }
    }
  }

  /**
   * The memory's backing buffer was replaced (a `WebAssembly.Memory` that grew detaches its old
   * `ArrayBuffer`): map every live queue's ring again over the buffer `memory` serves now,
   * keeping indices and requests in flight. Hosts whose guest RAM is a wasm memory (JS
   * emulators such as v86) call it when they see `memory.buffer` change, before the guest or
   * the model touches a ring again. A ring that no longer fits puts the device into
   * DEVICE_NEEDS_RESET.
   */
  remapMemory(): void {
    for (const q of this.#queues) {
      const queue = q.ring;
      if (queue === undefined) continue;
      try {
        queue.remap();
      } catch (e) {
        if (!(e instanceof QueueConfigError)) throw e;
        this.fail(e);
        return;
      }
    }
  }

  /** @inheritdoc */
  queue(index: number): DeviceQueue | undefined {
    return this.#queues[index]?.queue;
  }

  /** @inheritdoc */
  queueLayout(index: number): QueueLayout | undefined {
    return this.#queues[index]?.layout;
  }

  // ---- interrupts (VIRTIO 1.3 §2.3, §4.2.2) ----

  /**
   * The interrupt status: bit 0 used buffer, bit 1 configuration change; with the bits the
   * model's data plane set in {@link DeviceNotifiers.interruptStatus}, if it has one.
   */
  get interruptStatus(): number {
    const shared = this.#sharedIsr;
    return shared === undefined ? this.#isr : (this.#isr | Atomics.load(shared, 0)) >>> 0;
  }

  /**
   * The driver acknowledges the interrupt bits in `bits` (undefined bits are ignored), here and
   * in {@link DeviceNotifiers.interruptStatus}.
   */
  ackInterrupt(bits: number): void {
    const b = bits & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG);
    this.#isr &= ~b;
    // Atomic and: the data plane may be setting bit 0 again at the same moment; its new
    // notification must survive the acknowledgement of the old one.
    if (this.#sharedIsr !== undefined) Atomics.and(this.#sharedIsr, 0, ~b);
  }

  /** @inheritdoc */
  interrupt(index: number): boolean {
    // §2.1.2: no used buffer notifications before DRIVER_OK (legacy: before first use).
    if (!this.#active || this.#queues[index]?.ready !== true) return false;
    this.stats.usedInterrupts++;
    this.#raise(MmioInterrupt.USED_BUFFER, index);
    return true;
  }

  /** @inheritdoc */
  signalUsed(index: number): boolean {
    const q = this.#queues[index]?.queue;
    if (q === undefined || !q.needsInterrupt()) return false;
    return this.interrupt(index);
  }

  #raise(bit: number, source: number): void {
    this.#isr |= bit;
    this.#irq?.(this.#isr, source);
  }

  // ---- suspend / resume: moving a device (a migration, a snapshot) ----

  /** Whether the device is suspended (see {@link VirtioDeviceCore.suspend}). */
  get suspended(): boolean {
    return this.#suspended;
  }

  /** Chains the model popped and has not pushed yet, over every queue. */
  get inFlight(): number {
    let n = 0;
    for (const q of this.#queues) n += q.queue?.inFlight ?? 0;
    return n;
  }

  /**
   * Stop serving, to save the device ({@link VirtioDeviceCore.saveState}) or to pause it: the
   * model pops nothing more (its queues are gated from outside it), kicks are held, while
   * requests already in its back-end still complete, push and interrupt. A model with
   * `stopRings` (a vhost data plane) stops and drains its rings and reports where they stand.
   * Otherwise, with `drainTimeoutMs`, waits that long at most for the chains in flight; those
   * still in flight are saved with the state and served again after the move.
   *
   * Register accesses keep working; a reset ends the suspension. Idempotent.
   * @param options - drain bound
   * @throws RangeError naming `options.drainTimeoutMs`; whatever the model's `stopRings`
   *   rejects with (the device is then not suspended)
   */
  async suspend(options: SuspendOptions = {}): Promise<void> {
    const ms = options.drainTimeoutMs ?? 0;
    if (!(ms >= 0 && ms <= 3_600_000)) {
      throw new RangeError(`options.drainTimeoutMs must be in [0, 3600000], got ${ms}`);
    }
    if (this.#suspended) return;
    this.#gate(true);
    const model = this.model;
    if (model.stopRings !== undefined && this.#active && !this.needsReset) {
      try {
        this.#ringStates = [...(await model.stopRings())];
      } catch (e) {
        this.#gate(false);
        throw e;
      }
      return;
    }
    if (ms > 0) await this.#whenIdle(ms);
  }

  /**
   * End a suspension in place (the move was cancelled): queues are ungated, a data plane
   * stopped by `stopRings` restarts where it stood (`startRings`), and every enabled queue gets
   * one kick for the buffers that arrived meanwhile. No-op unless suspended.
   */
  resume(): void {
    if (!this.#suspended) return;
    this.#gate(false);
    const states = this.#ringStates;
    this.#ringStates = undefined;
    if (states !== undefined && this.#active) {
      const model = this.model;
      this.guard(() => model.startRings?.(states));
    }
    this.#kickAll();
  }

  /**
   * After the state was saved and the device resumed elsewhere: reset this device (the model
   * forgets its requests in flight, so what its back-end completes late is dropped instead of
   * completing a second time) and resolve once the model's back-end is idle (its `whenIdle`,
   * if it has one). Until then a late read may still write into this device's guest memory:
   * when source and destination share memory or a back-end, resume the destination only
   * after this resolves.
   * @throws RangeError unless suspended
   */
  async abandon(): Promise<void> {
    if (!this.#suspended) throw new RangeError("abandon needs a suspended device");
    this.reset();
    await this.model.whenIdle?.();
  }

  /**
   * Capture the suspended device: status, features, configuration, every queue's addresses,
   * ring position and chains in flight, the model's own state (`saveState`) and, opaque, the
   * transport's registers. Encode it with {@link encodeDeviceState}.
   * @param transport - the transport's state (e.g. `MmioDevice.saveTransportState()`), or none
   * @returns a state {@link VirtioDeviceCore.restoreState} of a device of the same type takes
   * @throws RangeError unless suspended; PackedOvercommitError if a hostile driver overcommitted
   *   a packed ring so a chain in flight was not kept
   */
  saveState(transport: Uint8Array = new Uint8Array(0)): DeviceState {
    if (!this.#suspended) {
      throw new RangeError("saveState needs a suspended device (await core.suspend() first)");
    }
    const model = this.model;
    const config = new Uint8Array(model.configSize);
    for (let i = 0; i < config.length; i++) config[i] = model.readConfig(i, 1);
    const rings = this.#ringStates;
    const queues = this.#queues.map((q, i): QueueSnapshot => {
      const l = q.layout;
      const queue = q.queue;
      return {
        ready: q.ready,
        size: q.size,
        desc: l?.desc ?? this.queueAddress(i, "desc"),
        driver: l?.driver ?? this.queueAddress(i, "driver"),
        device: l?.device ?? this.queueAddress(i, "device"),
        pfn: q.pfn,
        align: q.align,
        state: rings?.[i] ?? queue?.getState() ?? ZERO_STATE,
        // A data plane elsewhere drained its rings; this core's queue objects never popped.
        inFlight: queue === undefined || rings !== undefined ? [] : queue.saveInFlight(),
      };
    });
    return {
      deviceId: model.deviceId,
      legacy: this.legacy,
      active: this.#active,
      status: this.#status,
      interruptStatus: this.interruptStatus & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG),
      configGeneration: this.#generation,
      offeredFeatures: this.offeredFeatures,
      driverFeatures: this.#driverFeatures,
      config,
      queues,
      model: model.saveState?.() ?? new Uint8Array(0),
      transport: new Uint8Array(transport),
    };
  }

  /**
   * Bring a fresh device (status 0, nothing negotiated, model never activated) to a state
   * saved by {@link VirtioDeviceCore.saveState} — on this thread, another, or another machine
   * — and resume it: features, model state, configuration check, queues with their ring
   * positions and the chains in flight (served again first), status, pending interrupt, model
   * activation, then one kick per enabled queue for what arrived while it was suspended.
   *
   * The state is untrusted: it must fit this device exactly (device type, interface, offered
   * features, queue count and sizes, configuration space byte for byte once the model state
   * is restored), or nothing is resumed.
   * @param state - from {@link decodeDeviceState} (or `saveState`)
   * @throws RangeError unless this device is fresh; DeviceStateMismatchError naming the field
   *   that does not fit; a `VirtioError` from the model's `restoreState`
   */
  restoreState(state: DeviceState): void {
    if (this.#status !== 0 || this.#active || this.#driverFeatures !== 0n) {
      throw new RangeError("restoreState needs a fresh device (status 0, nothing negotiated)");
    }
    const model = this.model;
    const differs = (field: string, message: string, cause?: unknown): never => {
      throw new DeviceStateMismatchError(field, message, cause);
    };
    if (state.deviceId !== model.deviceId) {
      differs("deviceId", `saved ${state.deviceId}, this device ${model.deviceId}`);
    }
    if (state.legacy !== this.legacy) differs("legacy", `saved ${state.legacy}`);
    if (state.offeredFeatures !== this.offeredFeatures) {
      differs(
        "offeredFeatures",
        `saved 0x${state.offeredFeatures.toString(16)}, this device 0x${this.offeredFeatures.toString(16)}`,
      );
    }
    if (state.queues.length !== this.#queues.length) {
      differs("queues", `saved ${state.queues.length}, this device ${this.#queues.length}`);
    }
    if (state.config.length !== model.configSize) {
      differs("config", `saved ${state.config.length} bytes, this device ${model.configSize}`);
    }
    const status = state.status & 0xff;
    this.#driverFeatures = state.driverFeatures & ALL_FEATURES;
    if (
      !this.legacy &&
      (status & DeviceStatus.FEATURES_OK) !== 0 &&
      !this.#acceptFeatures(status)
    ) {
      differs("driverFeatures", this.featuresRefusal ?? "refused");
    }
    if (state.model.length > 0) {
      if (model.restoreState === undefined) differs("model", "this model keeps no state");
      model.restoreState!(state.model);
    }
    for (let i = 0; i < state.config.length; i++) {
      const here = model.readConfig(i, 1);
      if (here !== state.config[i]) {
        differs(
          `config[${i}]`,
          `saved 0x${state.config[i]!.toString(16)}, here 0x${here.toString(16)}`,
        );
      }
    }
    state.queues.forEach((saved, i) => {
      const q = this.#queues[i]!;
      if (saved.size > q.maxSize || (saved.ready && saved.size < 1)) {
        differs(`queues[${i}].size`, `saved ${saved.size}, this device's maximum ${q.maxSize}`);
      }
      q.size = saved.size;
      q.align = saved.align;
      const a = q.addr;
      for (const [w, v] of [
        [0, saved.desc],
        [2, saved.driver],
        [4, saved.device],
      ] as const) {
        a[w] = v % 0x100000000;
        a[w + 1] = Math.floor(v / 0x100000000);
      }
      if (!saved.ready) return;
      const layout = {
        size: saved.size,
        desc: saved.desc,
        driver: saved.driver,
        device: saved.device,
      };
      if (!this.#enable(i, q, layout)) {
        differs(`queues[${i}]`, this.lastFault?.message ?? "refused", this.lastFault);
      }
      q.pfn = saved.pfn;
      try {
        q.queue!.setState(saved.state);
        q.queue!.restoreInFlight(saved.inFlight);
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        differs(`queues[${i}].state`, e.message, e);
      }
    });
    this.#generation = state.configGeneration >>> 0;
    this.#status = status;
    if (state.active && (status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) === 0) {
      this.#activate();
    }
    // The driver has not acknowledged these yet: the (level-triggered) line is asserted again.
    this.#isr = state.interruptStatus & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG);
    // Which queue an unacknowledged interrupt came from was not saved: with MSI-X (one vector
    // per queue) every enabled queue signals once; a spurious interrupt costs the driver one
    // empty reap, a lost one would stall it.
    if ((this.#isr & MmioInterrupt.CONFIG) !== 0) this.#irq?.(this.#isr, CONFIG_CHANGE_SOURCE);
    if ((this.#isr & MmioInterrupt.USED_BUFFER) !== 0) {
      this.#queues.forEach((q, i) => {
        if (q.queue !== undefined) this.#irq?.(this.#isr, i);
      });
    }
    this.#kickAll();
  }

  #gate(on: boolean): void {
    this.#suspended = on;
    for (const q of this.#queues) if (q.queue !== undefined) q.queue.stopping = on;
  }

  /** One kick per enabled queue of a live device (buffers may have arrived unannounced). */
  #kickAll(): void {
    if (!this.#active || this.needsReset) return;
    this.#queues.forEach((q, i) => {
      if (q.queue !== undefined) this.#deliver(i, q, undefined);
    });
  }

  /** Resolves true once nothing is in flight, false after `ms` (onIdle of every queue). */
  #whenIdle(ms: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    const queues = this.#queues.flatMap((q) => (q.queue === undefined ? [] : [q.queue]));
    return new Promise<boolean>((resolve) => {
      const done = (drained: boolean): void => {
        host.clearTimeout(timer);
        for (const q of queues) q.onIdle = undefined;
        resolve(drained);
      };
      const timer = host.setTimeout(() => done(false), ms);
      for (const q of queues) {
        q.onIdle = () => {
          if (this.inFlight === 0) done(true);
        };
      }
    });
  }

  // ---- faults ----

  /** @inheritdoc */
  fail(error: VirtioError): void {
    this.noteFault(error);
    if (this.needsReset) return;
    this.#status |= DeviceStatus.DEVICE_NEEDS_RESET;
    // §2.1.2: if DRIVER_OK is set, after setting DEVICE_NEEDS_RESET the device MUST send a
    // device configuration change notification.
    if ((this.#status & DeviceStatus.DRIVER_OK) !== 0) {
      this.stats.configInterrupts++;
      this.#raise(MmioInterrupt.CONFIG, CONFIG_CHANGE_SOURCE);
    }
  }

  /** @inheritdoc */
  noteFault(error: VirtioError): void {
    this.stats.faults++;
    this.faultCounts.set(error.code, (this.faultCounts.get(error.code) ?? 0) + 1);
    this.lastFault = error;
    this.#log.log(
      `virtio device ${this.model.deviceId}: guest fault ${error.name}: ${error.message}`,
    );
  }

  /** @inheritdoc */
  guard<T>(fn: () => T): T | undefined {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      this.fail(e);
      return undefined;
    }
  }

  #violation(why: string): void {
    this.stats.violations++;
    this.lastViolation = why;
  }
}
