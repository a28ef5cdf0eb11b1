/**
 * The device-side contract: what a device type ({@link DeviceModel}) implements and what its
 * host ({@link DeviceContext}) gives it. Every host serves this same contract — the in-thread
 * `VirtioDeviceCore`, the vhost worker's `VhostBackend`, the vhost-user back-end's session —
 * so one model class runs unchanged in each. The contract needs none of the hosts.
 *
 * Host authors build on the helpers next to it: `createDeviceQueue` (from
 * `@virtio-ts/virtqueue`) turns negotiated features into a queue, `ForwardingDeviceContext`
 * and `ForwardingDeviceQueue` wrap what a model sees.
 * @module
 */
import type { GuestMemory, VirtioError } from "@virtio-ts/memory";
import type { DeviceQueue, QueueLayout, QueueState } from "@virtio-ts/virtqueue";
import type { Doorbell } from "./doorbell.js";
import type { NotificationData } from "./notification-data.js";

/**
 * What a device model sees of the device core: its queues, the negotiated features, guest
 * memory, and the notifications it may send. The core itself implements it.
 */
export interface DeviceContext {
  /** Guest memory (behind an IOMMU when VIRTIO_F_ACCESS_PLATFORM is in use). */
  readonly memory: GuestMemory;
  /**
   * The negotiated features: what the driver accepted and the device kept (final from
   * FEATURES_OK; legacy: from activation).
   */
  readonly features: bigint;
  /** Number of virtqueues (`queueMaxSizes.length`). */
  readonly numQueues: number;
  /**
   * Incremented by every device reset and queue reset. Asynchronous work (a back-end request)
   * captures it when it starts and drops its result if it changed: that queue, or the whole
   * device, has been reset meanwhile and the buffers belong to nobody.
   */
  readonly epoch: number;
  /** Whether DEVICE_NEEDS_RESET is set (kicks are no longer delivered). */
  readonly needsReset: boolean;
  /**
   * The device side of queue `index` while it is enabled, else undefined. Do not keep it across
   * a queue reset: ask again (it is an array lookup).
   */
  queue(index: number): DeviceQueue | undefined;
  /**
   * Where queue `index` lives (size and the three area addresses) while it is enabled, else
   * undefined. Optional: a model that hands its rings to another thread (vhost SET_VRING_NUM /
   * SET_VRING_ADDR) needs it; the device core implements it.
   */
  queueLayout?(index: number): QueueLayout | undefined;
  /**
   * Send a used buffer notification for queue `index` unconditionally (MMIO: set
   * InterruptStatus bit 0). Dropped before DRIVER_OK (§2.1.2) and after a reset.
   * @returns whether the notification was sent
   */
  interrupt(index: number): boolean;
  /**
   * Send a used buffer notification for queue `index` if the driver wants one
   * (`queue.needsInterrupt()`): call once after a batch of pushes.
   * @returns whether the notification was sent
   */
  signalUsed(index: number): boolean;
  /**
   * The device changed its configuration space: bump the configuration generation and send a
   * configuration change notification (after DRIVER_OK). §2.5, §3.2.1
   */
  notifyConfigChange(): void;
  /**
   * Enter DEVICE_NEEDS_RESET because of `error` (a hostile ring, a fatal back-end failure):
   * count and log it (rate-limited), stop delivering kicks, and send a configuration change
   * notification if DRIVER_OK is set (VIRTIO 1.3 §2.1.2). Register accesses keep working;
   * only a reset clears the state. Idempotent apart from the counting.
   */
  fail(error: VirtioError): void;
  /**
   * Count and log (rate-limited) a guest fault that the model survived, for example a
   * `ChainError` whose chain it returned with length 0.
   */
  noteFault(error: VirtioError): void;
  /**
   * Run `fn`; a `VirtioError` it throws becomes {@link DeviceContext.fail} and `guard` returns
   * undefined. Other errors (bugs) propagate. Use it around queue work that does not run inside
   * `onQueueNotify` (a back-end completion, a timer).
   */
  guard<T>(fn: () => T): T | undefined;
}

/**
 * A virtio device type (blk, net, console, rng…) as the device core drives it. The core does
 * status, features, configuration generation, queue setup and reset; the model does the
 * device-specific part.
 *
 * Implementer contract:
 * - `deviceId`, `features`, `queueMaxSizes` and `configSize` are constant for the model's life.
 *   `features` lists every bit the model handles, device-specific ones and the ring/transport
 *   bits it supports (INDIRECT_DESC, EVENT_IDX, RING_PACKED, IN_ORDER, NOTIFICATION_DATA,
 *   RING_RESET…); the core adds VERSION_1 itself (modern) and drops the bits the transport does
 *   not allow. Never offer a bit you would not handle if accepted (§2.2.2).
 * - `readConfig`/`writeConfig` get an in-range, naturally aligned access of 1, 2 or 4 bytes
 *   (little-endian values; a 64-bit field is read as two 32-bit halves). `readConfig` must work
 *   from construction on, before any feature is negotiated (§2.5.2). When the model changes its
 *   own configuration it calls `ctx.notifyConfigChange()`.
 * - `activate(ctx)` runs once per device life, when the driver sets DRIVER_OK (legacy: at the
 *   first of DRIVER_OK or a kick). Keep `ctx`; queues may already hold buffers.
 * - `onQueueNotify(index, data)` is a kick on an enabled queue of an active device. Process the
 *   queue (pop / push / `ctx.signalUsed`). A `VirtioError` thrown from it (a `ChainError` or
 *   `RingError` from `pop`) is caught by the core and turned into `ctx.fail(error)`; anything
 *   else propagates to the caller of the register access. `data` is the decoded
 *   VIRTIO_F_NOTIFICATION_DATA value (valid only during the call), or undefined.
 * - `onQueueEnable(index)` (optional): a queue became ready after activation (re-enabled after a
 *   queue reset).
 * - `onQueueReset(index)` (optional): the queue was reset (RING_RESET) or disabled; forget its
 *   in-flight requests, never touch its buffers again (§2.6.1.1.1).
 * - `reset()`: the device was reset; forget everything negotiated and in flight, keep what a
 *   device keeps across resets (disk contents, MAC address).
 * - `validateFeatures(features)` (optional): return false to refuse FEATURES_OK for a
 *   combination the model cannot serve (§2.2.2).
 */
export interface DeviceModel {
  /** Device type (§5), e.g. `DeviceId.BLOCK`. */
  readonly deviceId: number;
  /** Feature bits the model offers (see the contract above). */
  readonly features: bigint;
  /** Maximum size of each virtqueue (0 = not available); its length is the queue count. */
  readonly queueMaxSizes: readonly number[];
  /** Size in bytes of the device-specific configuration space. */
  readonly configSize: number;
  /**
   * Read `size` bytes of configuration space at `offset`, little-endian.
   * @returns the value, an unsigned integer below 2^(8·size)
   */
  readConfig(offset: number, size: 1 | 2 | 4): number;
  /** Write `size` bytes of configuration space at `offset` (driver-writable fields only). */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void;
  /** The driver set DRIVER_OK: start serving. */
  activate(ctx: DeviceContext): void;
  /** A kick on queue `index` (see the contract above). */
  onQueueNotify(index: number, data: NotificationData | undefined): void;
  /** Queue `index` was enabled after activation. */
  onQueueEnable?(index: number): void;
  /** Queue `index` was reset or disabled. */
  onQueueReset?(index: number): void;
  /** The device was reset. */
  reset(): void;
  /** Accept or refuse a feature set at FEATURES_OK. */
  validateFeatures?(features: bigint): boolean;
  /**
   * Whether a configuration write at `offset` is allowed before FEATURES_OK (the core refuses
   * such writes otherwise). For fields the spec makes writable on an unconfigured device, e.g.
   * virtio-console `emerg_wr` (VIRTIO 1.3 §5.3.5.1).
   */
  acceptsEarlyConfigWrite?(offset: number, size: 1 | 2 | 4): boolean;
  /**
   * Notification channels served outside the VMM thread (a vhost data plane), read once by the
   * core's constructor. Omit it for an ordinary in-thread model.
   */
  readonly notifiers?: DeviceNotifiers;
  /**
   * Suspend / resume (optional): the model's own state that must move with the device — what
   * the driver changed through the device (a receive filter, an address set by command, a
   * cache mode, open ports), never what the back-end holds. Called on a suspended device, once
   * its queues are stopped. Omit it when the configuration space and the queues say it all.
   */
  saveState?(): Uint8Array;
  /**
   * Suspend / resume (optional): take back what {@link DeviceModel.saveState} of the same model
   * class returned, on a fresh model at the destination, after the features are negotiated
   * and before `activate`. The bytes crossed a process boundary: refuse what you cannot parse
   * by throwing a `VirtioError` (the resume then fails with it).
   */
  restoreState?(state: Uint8Array): void;
  /**
   * Suspend / resume (optional), for a model whose rings are served elsewhere (a vhost worker):
   * stop that data plane — let what is in flight complete — and report where each ring stands
   * (undefined for a queue that is not running). The host then saves these states instead of
   * its own queues'. On resume the model finds the states in `ctx.queue(i).getState()` at
   * `activate`.
   */
  stopRings?(): Promise<readonly (QueueState | undefined)[]>;
  /**
   * Suspend / resume (optional), the other half of {@link DeviceModel.stopRings}: the suspend
   * was cancelled, restart the data plane where each ring stood (`states` as `stopRings`
   * reported them). Failures are the model's to report (`ctx.fail`).
   */
  startRings?(states: readonly (QueueState | undefined)[]): void;
  /**
   * Optional: resolves once no request of this model is in its back-end (at once if none is),
   * also for requests a reset made stale. Hosts wait on it before handing a device's memory or
   * back-end to someone else (`VirtioDeviceCore.abandon`); test kits use it instead of polling.
   */
  whenIdle?(): Promise<void>;
}

/**
 * Notification channels of a {@link DeviceModel} whose data plane runs elsewhere (vhost): the
 * analogues of KVM's ioeventfd (kick) and irqfd (interrupt), which let kicks and used buffer
 * notifications bypass the thread that runs the device core.
 *
 * Implementer contract: the objects are fixed for the model's life (a restarted data plane
 * reuses them). Whoever sets bits in `interruptStatus` uses `Atomics.or` and then signals the
 * interrupt itself (rings the doorbell the driver waits on); the core never calls its
 * `interrupt` option for those bits.
 */
export interface DeviceNotifiers {
  /**
   * Per queue index: the kick doorbell that replaces `model.onQueueNotify` for that queue
   * (installed with `VirtioDeviceCore.setKickDoorbell`); a missing entry keeps direct
   * calls.
   */
  readonly kicks?: readonly (Doorbell | undefined)[];
  /**
   * A shared Int32 word (index 0) into which the data plane ORs interrupt status bits (bit 0:
   * used buffer). The core's `VirtioDeviceCore.interruptStatus` (MMIO InterruptStatus)
   * ORs it in, InterruptACK clears the acknowledged bits in it, and a device reset zeroes it.
   * Written by the data plane thread and the core's thread, always with `Atomics`.
   * @see VIRTIO 1.3 §4.2.2 (InterruptStatus, InterruptACK)
   */
  readonly interruptStatus?: Int32Array;
}
