/**
 * A virtio driver transport over vhost-user: the driver (`BlkDriver`, …) runs in this process
 * on guest memory shared with a vhost-user back-end process, which is the device.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import {
  DeviceId,
  DeviceStatus,
  FEATURE_TRANSPORT_MASK,
  Feature,
  featureMask,
  hasFeature,
  MmioInterrupt,
  splitAvailSize,
  splitDescTableSize,
  splitUsedSize,
} from "@virtio-ts/spec";
import {
  type ConfigReader,
  type DriverDeviceInfo,
  type DriverQueueSetupOptions,
  type DriverTransport,
  TransportError,
} from "@virtio-ts/transport";
import {
  PackedDriverQueue,
  type QueueLayout,
  ringFeatures,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { VhostUserError } from "./errors.js";
import { EventFd } from "./eventfd.js";
import { VhostUserFrontend } from "./frontend.js";
import { VHOST_USER_F_PROTOCOL_FEATURES, VhostUserProtocolFeature } from "./messages.js";
import type { SharedGuestMemory } from "./shared-memory.js";

/** Feature bit 26, VHOST_F_LOG_ALL: a vhost feature (dirty logging), never a device's. */
export const VHOST_F_LOG_ALL = 26;

/**
 * The ring/transport feature bits a driver may negotiate over this transport: INDIRECT_DESC,
 * EVENT_IDX, VERSION_1, RING_PACKED, IN_ORDER and ORDER_PLATFORM. Not ACCESS_PLATFORM (no
 * IOTLB), NOTIFICATION_DATA (kicks are eventfds, which carry no data) nor RING_RESET
 * (vhost-user has no per-queue reset).
 */
export const VHOST_USER_DRIVER_TRANSPORT_FEATURES: bigint = [
  Feature.RING_INDIRECT_DESC,
  Feature.RING_EVENT_IDX,
  Feature.VERSION_1,
  Feature.RING_PACKED,
  Feature.IN_ORDER,
  Feature.ORDER_PLATFORM,
].reduce((m, bit) => m | featureMask(bit), 0n);

/** The protocol features asked for by default: MQ, REPLY_ACK and CONFIG. */
export const VHOST_USER_DEFAULT_PROTOCOL_FEATURES: bigint =
  (1n << BigInt(VhostUserProtocolFeature.MQ)) |
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG));

/** Size of the virtio-blk configuration space as QEMU 7.2 reads it (`struct virtio_blk_config`). */
const BLK_CONFIG_SIZE = 60;

/** Options of {@link VhostUserDriverTransport.connect}. */
export interface VhostUserDriverOptions {
  /** The device ID (`DeviceId`): vhost-user does not say which device a back-end is. */
  readonly deviceId: number;
  /** Guest memory shared with the back-end ({@link createSharedMemory}); rings and buffers live there. */
  readonly memory: SharedGuestMemory;
  /**
   * Bytes of configuration space read with GET_CONFIG at connect time (default 60 for a block
   * device, else 0: no configuration). At most 256.
   */
  readonly configSize?: number;
  /**
   * Largest queue size reported by `queueMaxSize` (default 1024, libvhost-user's
   * VIRTQUEUE_MAX_SIZE; vhost-user has no message to ask).
   */
  readonly queueMaxSize?: number;
  /**
   * Device feature bits withheld from the driver's offer (default 0), as a VMM's device model
   * filters a back-end's features. Example: qemu-storage-daemon 7.2 offers
   * VIRTIO_BLK_F_SIZE_MAX with `size_max` 0, which `BlkDriver` refuses ("blk-bad-config") and
   * Linux clamps to a page; withholding the bit avoids the quirk.
   */
  readonly hiddenFeatures?: bigint;
  /** Protocol features to accept when offered (default {@link VHOST_USER_DEFAULT_PROTOCOL_FEATURES}). */
  readonly protocolFeatures?: bigint;
  /** Reply timeout of the front-end (see {@link VhostUserFrontendOptions.replyTimeoutMs}). */
  readonly replyTimeoutMs?: number;
}

interface LiveQueue {
  readonly queue: SplitDriverQueue<unknown> | PackedDriverQueue<unknown>;
  readonly kick: EventFd;
  readonly call: EventFd;
}

/**
 * The driver side of a virtio device served by a vhost-user back-end (qemu-storage-daemon's
 * vhost-user-blk export, a vhost-user-net switch, …), as a {@link DriverTransport}: hand it to
 * `BlkDriver` instead of an `MmioDriverTransport`.
 *
 * {@link VhostUserDriverTransport.connect} does the asynchronous part of vhost-user
 * (vhost-user.rst, in QEMU's order): SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
 * GET_QUEUE_NUM (MQ), GET_CONFIG (CONFIG) and SET_MEM_TABLE with the shared memory's memfd.
 * The driver-facing methods are synchronous, like register accesses: `negotiate` sends
 * SET_FEATURES, `setupQueue` sends SET_VRING_NUM / BASE / ADDR (user addresses) / KICK / CALL
 * with two new eventfds, `driverOk` sends SET_VRING_ENABLE; with REPLY_ACK each is
 * acknowledged later, and a refusal or any protocol violation is reported as the device
 * needing a reset (below).
 *
 * Notifications: `notify` writes the queue's kick eventfd; the back-end's writes to the call
 * eventfd wake the {@link VhostUserDriverTransport.onInterrupt} handler from the event loop,
 * and `takeInterrupt` then returns `USED_BUFFER`.
 *
 * Failure: the back-end is untrusted and may die. When the connection closes or a request is
 * refused, `status` gains DEVICE_NEEDS_RESET and a configuration-change interrupt is raised,
 * so a driver fails its requests in flight (`BlkDriver`: "blk-needs-reset") instead of
 * waiting forever. `closeReason` says why.
 *
 * @example
 * ```ts
 * const shared = createSharedMemory({ size: 4 << 20 });
 * const t = await VhostUserDriverTransport.connect("/tmp/vhost.sock", { deviceId: DeviceId.BLOCK, memory: shared });
 * const blk = new BlkDriver(t, shared.memory, new SlabAllocator(0x100000, 4096, 256), { ringBase: 0x10000 });
 * t.onInterrupt(() => blk.onInterrupt());
 * const sector0 = await blk.read(0, 512);
 * ```
 */
export class VhostUserDriverTransport implements DriverTransport {
  readonly #fe: VhostUserFrontend;
  readonly #shared: SharedGuestMemory;
  readonly #deviceId: number;
  readonly #offered: bigint;
  readonly #vhostFeatures: bigint;
  readonly #protocolFeatures: bigint;
  readonly #queueCount: number;
  readonly #queueMax: number;
  #config: Uint8Array;
  #status = 0;
  #features = 0n;
  readonly #queues = new Map<number, LiveQueue>();
  #irq = 0;
  #handler: (() => void) | undefined;
  #fault: VhostUserError | undefined;
  #closing = false;

  private constructor(
    fe: VhostUserFrontend,
    shared: SharedGuestMemory,
    deviceId: number,
    offered: bigint,
    protocolFeatures: bigint,
    queueCount: number,
    queueMax: number,
    config: Uint8Array,
  ) {
    this.#fe = fe;
    this.#shared = shared;
    this.#deviceId = deviceId;
    this.#vhostFeatures = offered & featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
    this.#offered =
      offered & ~featureMask(VHOST_USER_F_PROTOCOL_FEATURES) & ~featureMask(VHOST_F_LOG_ALL);
    this.#protocolFeatures = protocolFeatures;
    this.#queueCount = queueCount;
    this.#queueMax = queueMax;
    this.#config = config;
    fe.onClose((e) => {
      if (!this.#closing) {
        this.#raiseFault(e ?? new VhostUserError("closed", "the vhost-user connection was closed"));
      }
    });
  }

  /**
   * Connect to a back-end and run the asynchronous part of the set-up (see the class).
   * @param target - the back-end's unix socket path, or a fresh {@link VhostUserFrontend}
   * @param options - device ID, shared memory, config size, limits
   * @returns the transport, ready for a driver's `negotiate`
   * @throws RangeError / TypeError naming an invalid option; VhostUserError from the back-end
   *   (the connection is then closed); NativeAddonMissingError if the addon is not built
   */
  static async connect(
    target: string | VhostUserFrontend,
    options: VhostUserDriverOptions,
  ): Promise<VhostUserDriverTransport> {
    const { deviceId, memory } = options;
    if (!Number.isInteger(deviceId) || deviceId < 1 || deviceId > 0xffff) {
      throw new RangeError(`options.deviceId must be a device ID in [1, 0xffff], got ${deviceId}`);
    }
    if (typeof memory?.userAddress !== "function" || !Array.isArray(memory.regions)) {
      throw new TypeError("options.memory must be a SharedGuestMemory (createSharedMemory)");
    }
    const configSize = options.configSize ?? (deviceId === DeviceId.BLOCK ? BLK_CONFIG_SIZE : 0);
    if (!Number.isInteger(configSize) || configSize < 0 || configSize > 256) {
      throw new RangeError(`options.configSize must be an integer in [0, 256], got ${configSize}`);
    }
    const queueMax = options.queueMaxSize ?? 1024;
    if (!Number.isInteger(queueMax) || queueMax < 1 || queueMax > 32768) {
      throw new RangeError(
        `options.queueMaxSize must be an integer in [1, 32768], got ${queueMax}`,
      );
    }
    const hidden = options.hiddenFeatures ?? 0n;
    if (typeof hidden !== "bigint" || hidden < 0n) {
      throw new TypeError("options.hiddenFeatures must be a non-negative bigint");
    }
    const wanted = options.protocolFeatures ?? VHOST_USER_DEFAULT_PROTOCOL_FEATURES;
    if (typeof wanted !== "bigint" || wanted < 0n) {
      throw new TypeError("options.protocolFeatures must be a non-negative bigint");
    }
    const fe =
      typeof target === "string"
        ? VhostUserFrontend.connect(
            target,
            options.replyTimeoutMs === undefined ? {} : { replyTimeoutMs: options.replyTimeoutMs },
          )
        : target;
    if (!(fe instanceof VhostUserFrontend)) {
      throw new TypeError("target must be a socket path or a VhostUserFrontend");
    }
    try {
      await fe.setOwner();
      const offered = await fe.getFeatures();
      let pf = 0n;
      if (hasFeature(offered, VHOST_USER_F_PROTOCOL_FEATURES)) {
        pf = (await fe.getProtocolFeatures()) & wanted;
        await fe.setProtocolFeatures(pf);
      }
      const has = (bit: number): boolean => (pf & (1n << BigInt(bit))) !== 0n;
      const queues = has(VhostUserProtocolFeature.MQ) ? await fe.getQueueNum() : 1;
      let config: Uint8Array = new Uint8Array(configSize);
      if (configSize > 0) {
        if (!has(VhostUserProtocolFeature.CONFIG)) {
          throw new VhostUserError(
            "unsupported",
            "the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG, so the device configuration cannot be read",
          );
        }
        config = await fe.getConfig(0, configSize);
      }
      await fe.setMemTable(memory.regions);
      return new VhostUserDriverTransport(
        fe,
        memory,
        deviceId,
        offered & ~hidden,
        pf,
        queues,
        queueMax,
        config,
      );
    } catch (e) {
      fe.close();
      throw e;
    }
  }

  /** The front-end connection (for requests this transport does not make). */
  get frontend(): VhostUserFrontend {
    return this.#fe;
  }

  /** The negotiated protocol features. */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  /** Number of queues the back-end supports (GET_QUEUE_NUM, or 1 without MQ). */
  get queueCount(): number {
    return this.#queueCount;
  }

  /** Why the device needs a reset (the connection closed or a request was refused), if it does. */
  get closeReason(): VhostUserError | undefined {
    return this.#fault;
  }

  /** The negotiated features (0 before {@link VhostUserDriverTransport.negotiate}). */
  get features(): bigint {
    return this.#features;
  }

  /**
   * The device status as this side tracks it (vhost-user has no status register without
   * PROTOCOL_F_STATUS); DEVICE_NEEDS_RESET is set when the back-end failed.
   */
  get status(): number {
    return this.#status;
  }

  /** Whether DEVICE_NEEDS_RESET is set: the back-end failed (see {@link VhostUserDriverTransport.closeReason}). */
  get needsReset(): boolean {
    return (this.#status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /**
   * The device ID given at connect time (vendor 0).
   * @returns the device info
   */
  probe(): DriverDeviceInfo {
    return { deviceId: this.#deviceId, vendorId: 0 };
  }

  /**
   * Steps 1–6 of §3.1.1 against the features GET_FEATURES returned (without the vhost-only
   * bits 26 and 30): choose, send SET_FEATURES (with bit 30 when the back-end speaks protocol
   * features, as QEMU does), set FEATURES_OK. VIRTIO_F_VERSION_1 is required and always
   * accepted.
   * @param accept - the wanted features, or a function choosing them from the offer
   * @returns the negotiated features
   * @throws TransportError "not-modern" (FAILED is set) if the back-end lacks VERSION_1
   */
  negotiate(accept: bigint | ((offered: bigint) => bigint)): bigint {
    this.#features = 0n;
    this.#status |= DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER;
    const offered = this.#offered;
    if (!hasFeature(offered, Feature.VERSION_1)) {
      this.fail();
      throw new TransportError(
        "not-modern",
        "the vhost-user back-end does not offer VIRTIO_F_VERSION_1",
      );
    }
    const wanted = typeof accept === "bigint" ? accept : accept(offered);
    const accepted =
      (wanted & offered & ~(FEATURE_TRANSPORT_MASK & ~VHOST_USER_DRIVER_TRANSPORT_FEATURES)) |
      featureMask(Feature.VERSION_1);
    this.#post(this.#fe.setFeatures(accepted | this.#vhostFeatures));
    this.#features = accepted;
    this.#status |= DeviceStatus.FEATURES_OK;
    return accepted;
  }

  /**
   * Run `fn` on the configuration read with GET_CONFIG (one reply, so always consistent; see
   * {@link VhostUserDriverTransport.refreshConfig}).
   * @param fn - reads the fields
   * @returns what `fn` returned
   * @throws RangeError naming `offset` for a field outside the configuration read or misaligned
   */
  readConfig<R>(fn: (cfg: ConfigReader) => R): R {
    const c = this.#config;
    const v = new DataView(c.buffer, c.byteOffset, c.length);
    const at = (offset: number, size: number): number => {
      if (
        !Number.isInteger(offset) ||
        offset < 0 ||
        offset % Math.min(size, 4) !== 0 ||
        offset + size > c.length
      ) {
        throw new RangeError(
          `offset must be a multiple of ${Math.min(size, 4)} with offset + ${size} ≤ ${c.length} (the configuration read), got ${offset}`,
        );
      }
      return offset;
    };
    return fn({
      u8: (o) => v.getUint8(at(o, 1)),
      u16: (o) => v.getUint16(at(o, 2), true),
      u32: (o) => v.getUint32(at(o, 4), true),
      u64: (o) => v.getBigUint64(at(o, 8), true),
    });
  }

  /**
   * Read the configuration again (GET_CONFIG); if it changed, raise a configuration-change
   * interrupt (§2.5: a driver re-reads, e.g. a resized disk's capacity).
   * @returns whether it changed
   * @throws VhostUserError from the back-end
   */
  async refreshConfig(): Promise<boolean> {
    if (this.#config.length === 0) return false;
    const fresh = await this.#fe.getConfig(0, this.#config.length);
    const changed = fresh.some((b, i) => b !== this.#config[i]);
    this.#config = fresh;
    if (changed) this.#raise(MmioInterrupt.CONFIG);
    return changed;
  }

  /**
   * The largest queue size for queue `index` (the `queueMaxSize` option), or 0 past the
   * back-end's queue count.
   * @param index - queue index
   */
  queueMaxSize(index: number): number {
    return Number.isInteger(index) && index >= 0 && index < this.#queueCount ? this.#queueMax : 0;
  }

  /**
   * Set up queue `index` (a split ring, or a packed one once RING_PACKED is negotiated) and
   * hand it to the back-end: SET_VRING_NUM, SET_VRING_BASE (0; packed: positions 0 with wrap
   * counters 1, QEMU's encoding), SET_VRING_ADDR with the rings' user addresses, SET_VRING_KICK and
   * SET_VRING_CALL with new eventfds (QEMU's order, vhost_virtqueue_start).
   * @param index - queue index (below the queue count and 256)
   * @param memory - must be the shared memory's `memory`
   * @param layout - ring addresses and size, inside the shared memory
   * @param options - indirect table area
   * @returns the driver queue
   * @throws TransportError "queue-unavailable", "queue-in-use" or "queue-too-large";
   *   RangeError naming `memory` or a `layout` field outside the shared memory
   */
  setupQueue<T>(
    index: number,
    memory: GuestMemory,
    layout: QueueLayout,
    options: DriverQueueSetupOptions = {},
  ): SplitDriverQueue<T> | PackedDriverQueue<T> {
    if (!Number.isInteger(index) || index < 0 || index > 0xff) {
      throw new RangeError(`index must be an integer in [0, 255], got ${index}`);
    }
    if (index >= this.#queueCount) {
      throw new TransportError(
        "queue-unavailable",
        `queue ${index}: the back-end has ${this.#queueCount} queues`,
        this.#queueCount,
      );
    }
    if (this.#queues.has(index)) {
      throw new TransportError("queue-in-use", `queue ${index} is live`, 1);
    }
    if (layout.size > this.#queueMax) {
      throw new TransportError(
        "queue-too-large",
        `queue ${index} holds at most ${this.#queueMax}`,
        this.#queueMax,
      );
    }
    if (memory !== this.#shared.memory) {
      throw new RangeError("memory must be the SharedGuestMemory's memory given to connect");
    }
    const size = layout.size;
    const user = (addr: number, len: number, name: string): bigint => {
      const u = this.#shared.userAddress(addr, len);
      if (u === undefined) {
        throw new RangeError(
          `${name} (0x${addr.toString(16)}) is not in the memory shared with the back-end`,
        );
      }
      return u;
    };
    const packed = hasFeature(this.#features, Feature.RING_PACKED);
    // Packed: descriptor ring of 16-byte descriptors, two 4-byte event suppression areas.
    const desc = user(layout.desc, packed ? 16 * size : splitDescTableSize(size), "layout.desc");
    const avail = user(layout.driver, packed ? 4 : splitAvailSize(size), "layout.driver");
    const used = user(layout.device, packed ? 4 : splitUsedSize(size), "layout.device");
    // The queue zeroes its rings; it must do so before SET_VRING_ADDR, where libvhost-user
    // reads used.idx to resume from.
    const qopts = options.indirect === undefined ? {} : { indirect: options.indirect };
    const rf = ringFeatures(this.#features);
    const queue = packed
      ? new PackedDriverQueue<T>(memory, layout, rf, qopts)
      : new SplitDriverQueue<T>(memory, layout, rf, qopts);
    const kick = new EventFd();
    const call = new EventFd();
    call.watch(() => this.#raise(MmioInterrupt.USED_BUFFER));
    this.#queues.set(index, {
      queue: queue as SplitDriverQueue<unknown> | PackedDriverQueue<unknown>,
      kick,
      call,
    });
    const fe = this.#fe;
    this.#post(fe.setVringNum(index, size));
    // Packed: both ring positions 0 with wrap counters 1 (§2.8.1), as QEMU encodes them.
    this.#post(fe.setVringBase(index, packed ? 0x8000_8000 : 0));
    this.#post(fe.setVringAddr({ index, flags: 0, desc, used, avail, log: 0n }));
    this.#post(fe.setVringKick(index, kick.fd));
    this.#post(fe.setVringCall(index, call.fd));
    return queue;
  }

  /**
   * Step 8 of §3.1.1: enable every queue set up (SET_VRING_ENABLE, when protocol features are
   * in use; otherwise rings start enabled) and set DRIVER_OK.
   */
  driverOk(): void {
    if (this.#vhostFeatures !== 0n) {
      for (const index of this.#queues.keys()) this.#post(this.#fe.setVringEnable(index, true));
    }
    this.#status |= DeviceStatus.DRIVER_OK;
  }

  /**
   * Kick queue `index`: write its kick eventfd. Does nothing for a queue not set up or once
   * the device needs a reset.
   * @param index - queue index
   */
  notify(index: number): void {
    if (this.#fault !== undefined) return;
    this.#queues.get(index)?.kick.signal();
  }

  /**
   * Take the pending interrupt causes: `USED_BUFFER` after a call eventfd fired, `CONFIG`
   * after a configuration change or a failure (then {@link VhostUserDriverTransport.needsReset}).
   * @returns the causes (bit 0, bit 1), now cleared
   */
  takeInterrupt(): number {
    const s = this.#irq;
    this.#irq = 0;
    return s;
  }

  /**
   * Set the interrupt handler, called from the event loop when a call eventfd fires or the
   * device fails (typically `() => blk.onInterrupt()`). Causes pending already are delivered
   * on the next turn of the loop.
   * @param handler - the handler
   * @throws TypeError naming `handler`
   */
  onInterrupt(handler: () => void): void {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    this.#handler = handler;
    if (this.#irq !== 0) setImmediate(() => this.#deliver());
  }

  /** Set FAILED: the driver gives up (§3.1.1). Nothing is sent; close the transport to end. */
  fail(): void {
    this.#status |= DeviceStatus.FAILED;
  }

  /**
   * Stop every queue (GET_VRING_BASE, which the back-end answers once it has stopped
   * processing the ring) and return where each stopped.
   * @returns queue index → next available index the back-end would have read
   * @throws VhostUserError from the back-end
   */
  async stop(): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    for (const index of this.#queues.keys()) out.set(index, await this.#fe.getVringBase(index));
    return out;
  }

  /**
   * Close the connection and the eventfds (idempotent). The shared memory stays with its
   * owner. No interrupt is raised for this close.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#fe.close();
    for (const q of this.#queues.values()) {
      q.kick.close();
      q.call.close();
    }
    this.#queues.clear();
  }

  #post(p: Promise<void>): void {
    p.catch((e: unknown) => {
      if (this.#closing) return;
      this.#raiseFault(e instanceof VhostUserError ? e : new VhostUserError("io-error", String(e)));
    });
  }

  #raiseFault(e: VhostUserError): void {
    if (this.#fault !== undefined) return;
    this.#fault = e;
    this.#status |= DeviceStatus.DEVICE_NEEDS_RESET;
    this.#raise(MmioInterrupt.CONFIG);
  }

  #raise(bits: number): void {
    this.#irq |= bits;
    this.#deliver();
  }

  #deliver(): void {
    if (this.#irq !== 0 && !this.#closing) this.#handler?.();
  }
}
