/**
 * The interfaces both ring layouts implement, so drivers and device models never care which
 * layout was negotiated.
 * @module
 */
import type { DescriptorChain } from "./chain.js";

/**
 * Where a virtqueue lives in guest memory, in the spec's words: the Descriptor Area
 * (descriptor table / packed descriptor ring), the Driver Area (split: available ring;
 * packed: driver event suppression) and the Device Area (split: used ring; packed: device
 * event suppression). Addresses are guest-physical (or IO-virtual behind a translation).
 *
 * @see VIRTIO 1.3 §2.6 "Virtqueues"
 */
export interface QueueLayout {
  /** Queue size (number of descriptors). Split: a power of 2 in [1, 32768]. */
  readonly size: number;
  /** Guest address of the Descriptor Area. */
  readonly desc: number;
  /** Guest address of the Driver Area. */
  readonly driver: number;
  /** Guest address of the Device Area. */
  readonly device: number;
}

/**
 * The ring features both sides must agree on, derived from the negotiated feature bits
 * with {@link ringFeatures}.
 */
export interface RingFeatures {
  /** VIRTIO_F_INDIRECT_DESC (28) was negotiated. */
  readonly indirect: boolean;
  /** VIRTIO_F_EVENT_IDX (29) was negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_IN_ORDER (35) was negotiated. */
  readonly inOrder: boolean;
}

/**
 * Ring indices and flags that must survive a stop/restart (vhost GET/SET_VRING_BASE) or a
 * migration. For the split ring the wrap counters are unused (always true).
 */
export interface QueueState {
  /** Split: next avail index to consume (device) / next to publish (driver). Packed: ring position. */
  readonly availIdx: number;
  /** Split: next used index to fill (device) / to reap (driver). Packed: ring position. */
  readonly usedIdx: number;
  /** Packed only: the avail wrap counter. */
  readonly availWrap: boolean;
  /** Packed only: the used wrap counter. */
  readonly usedWrap: boolean;
}

/**
 * Device side of a virtqueue: consume available descriptor chains, return used buffers.
 *
 * Everything read from guest memory is untrusted. {@link DeviceQueue.pop} validates each
 * chain completely before returning it and throws a {@link VirtqueueError} subclass on
 * hostile input: a {@link ChainError} when only that request is malformed (its head is
 * known and may be returned used with length 0), a {@link RingError} when the ring
 * itself is inconsistent. Either way the device is expected to enter DEVICE_NEEDS_RESET
 * (VIRTIO 1.3 §2.1.2); nothing else is ever thrown for guest input, no loop runs longer
 * than the queue size, and nothing is allocated in proportion to guest-controlled values.
 */
export interface DeviceQueue {
  /** Queue size. */
  readonly size: number;
  /**
   * Take the next available chain into `chain` (a reusable, caller-owned cursor).
   * @returns false if no chain is available.
   * @throws ChainError or RingError on hostile input.
   */
  pop(chain: DescriptorChain): boolean;
  /**
   * Return a chain as used, with `written` bytes written into its writable part. With
   * VIRTIO_F_IN_ORDER, only the oldest chain in flight may be returned.
   */
  push(head: number, written: number): void;
  /**
   * Return a chain as used like {@link DeviceQueue.push}, but leave it invisible to the driver
   * until {@link DeviceQueue.publishUsed} (or `push`, `pushBatch`, `needsInterrupt`,
   * `getState`, which publish first): a device that completes several chains at once publishes them together,
   * as QEMU's `virtqueue_fill` / `virtqueue_flush` and Linux vhost's `vhost_add_used_n` do. In
   * shared memory this saves a seq-cst `Atomics.store` per chain.
   */
  use(head: number, written: number): void;
  /** Make every chain returned by {@link DeviceQueue.use} visible to the driver (§2.7.8.2, §2.8.4). */
  publishUsed(): void;
  /**
   * VIRTIO_F_IN_ORDER only: return the `count` oldest chains in flight with one used entry
   * (split §2.7.9, packed §2.8.8); all but the last count as completely written, the last
   * as `written` bytes.
   */
  pushBatch(count: number, written: number): void;
  /**
   * Whether the driver wants an interrupt for the used buffers pushed since the last call
   * (NO_INTERRUPT flag, or `used_event` with EVENT_IDX). Call once per batch of pushes.
   * Publishes what {@link DeviceQueue.use} left unpublished first.
   */
  needsInterrupt(): boolean;
  /**
   * Ask the driver for notifications again (clear NO_NOTIFY, or set `avail_event`).
   * @returns true if buffers became available meanwhile (the caller should poll again).
   */
  enableNotifications(): boolean;
  /** Ask the driver not to notify (kick) while the device is polling. */
  disableNotifications(): void;
  /**
   * Ring indices for stop/restart and migration; publishes what {@link DeviceQueue.use} left
   * unpublished first, so the state matches the ring in memory.
   */
  getState(): QueueState;
  /** Restore ring indices saved by {@link DeviceQueue.getState}. */
  setState(state: QueueState): void;
  /**
   * Optional (suspend / resume): the chains popped and not yet pushed, in a form
   * {@link DeviceQueue.restoreInFlight} of a queue over the same guest memory takes back. Both
   * ring layouts implement it.
   * @throws PackedOvercommitError (packed ring) if the driver kept more descriptors outstanding
   *   than the queue size, so a chain in flight was not recorded
   */
  saveInFlight?(): InFlightChain[];
  /**
   * Optional (suspend / resume): after {@link DeviceQueue.setState}, make the chains saved by
   * {@link DeviceQueue.saveInFlight} the first ones `pop` returns, validated again like any
   * chain, so the model serves them once more; they count as in flight from that `pop` on.
   * Untrusted input (it crossed a process boundary).
   * @throws RangeError naming the offending entry (an id out of range or twice, a malformed
   *   descriptor list)
   */
  restoreInFlight?(chains: readonly InFlightChain[]): void;
}

/**
 * One chain in flight (popped, not yet pushed) as a device queue saves it for a move: a
 * suspend / resume or a migration that does not wait for every request to complete.
 */
export interface InFlightChain {
  /** What the device pushes: split ring, the head descriptor index; packed ring, the buffer ID. */
  readonly id: number;
  /**
   * Packed ring: the ring descriptors the chain occupied, 4 little-endian u32 words each (addr
   * low, addr high, len, id | flags << 16), as the device read them when it popped the chain:
   * used descriptors written since may have overwritten them in the ring (VIRTIO 1.3 §2.8.6).
   * Split ring: empty, because a chain made available belongs to the device until it is used
   * (§2.7.13), so the descriptor table still holds it.
   */
  readonly descriptors: Uint32Array;
}

/** One (address, length) buffer segment as the driver hands it to {@link DriverQueue.add}. */
export interface Segment {
  /** Guest address. */
  readonly addr: number;
  /** Length in bytes (0 ≤ len < 2^32). */
  readonly len: number;
}

/**
 * Driver side of a virtqueue: post buffers, notify, reap used buffers.
 *
 * Drivers distrust devices too: a used id that is not in flight, or a used index that
 * jumps, is reported as a {@link RingError}, never silently accepted.
 */
export interface DriverQueue<T> {
  /** Queue size. */
  readonly size: number;
  /** Descriptors currently free. */
  readonly numFree: number;
  /**
   * Add one chain: `readable` segments (device reads) then `writable` ones (device writes).
   * It becomes visible to the device at the next {@link DriverQueue.publish}.
   * @returns false if there is not enough room (nothing was added).
   * @throws RangeError if the chain is empty, longer than the queue, or a segment is invalid.
   */
  add(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean;
  /**
   * Make added chains visible to the device (release order: descriptors, then avail idx).
   * @returns whether the device must be notified (kicked), per NO_NOTIFY or `avail_event`.
   */
  publish(): boolean;
  /**
   * Reap one used buffer.
   * @returns its token, or undefined if none; the written length is then in {@link DriverQueue.lastLen}.
   * @throws RingError if the device returned an id that is not in flight or its index jumped.
   */
  reap(): T | undefined;
  /** Written length of the buffer returned by the last successful {@link DriverQueue.reap}. */
  readonly lastLen: number;
  /**
   * Ask the device for interrupts again (clear NO_INTERRUPT, or set `used_event`).
   * @returns true if used buffers are already pending (the caller should reap again).
   */
  enableInterrupts(): boolean;
  /** Ask the device not to interrupt while the driver is polling. */
  disableInterrupts(): void;
  /** Forget all in-flight buffers and reinitialise the ring memory (driver-side reset). */
  reset(): void;
}
