/**
 * The one pass-through device queue: every wrapper that watches, gates or delays what a device
 * model does with its queue (a stop-and-drain gate, a tap, a publish-before-ack hook) extends
 * it and overrides only what it changes.
 * @module
 */
import type { DescriptorChain } from "./chain.js";
import type { DeviceQueue, InFlightChain, QueueState } from "./types.js";

/**
 * A {@link DeviceQueue} that forwards every call to another one (`inner`). Subclasses override
 * the calls they change and call `super` (or `this.inner`) for the rest, so a new method of the
 * interface reaches every wrapper at once. Allocates nothing.
 *
 * @example
 * ```ts
 * // Count pops without touching the model or the ring.
 * class CountingQueue extends ForwardingDeviceQueue {
 *   pops = 0;
 *   override pop(chain: DescriptorChain): boolean {
 *     const got = super.pop(chain);
 *     if (got) this.pops++;
 *     return got;
 *   }
 * }
 * ```
 */
export class ForwardingDeviceQueue implements DeviceQueue {
  /** @inheritdoc */
  readonly size: number;
  /** The wrapped queue. */
  readonly inner: DeviceQueue;

  /**
   * @param inner - the queue every call goes to
   * @throws TypeError naming `inner` unless it is a DeviceQueue
   */
  constructor(inner: DeviceQueue) {
    if (typeof inner?.pop !== "function" || typeof inner.push !== "function") {
      throw new TypeError("inner must be a DeviceQueue");
    }
    this.inner = inner;
    this.size = inner.size;
  }

  /** @inheritdoc */
  pop(chain: DescriptorChain): boolean {
    return this.inner.pop(chain);
  }

  /** @inheritdoc */
  push(head: number, written: number): void {
    this.inner.push(head, written);
  }

  /**
   * Calls `this.push`, so a wrapper that overrides only `push` still sees every used chain (the
   * chain is then published at once). A wrapper that keeps the deferral overrides `use` too and
   * calls `this.inner.use`.
   */
  use(head: number, written: number): void {
    this.push(head, written);
  }

  /** @inheritdoc */
  publishUsed(): void {
    this.inner.publishUsed();
  }

  /** @inheritdoc */
  pushBatch(count: number, written: number): void {
    this.inner.pushBatch(count, written);
  }

  /** @inheritdoc */
  needsInterrupt(): boolean {
    return this.inner.needsInterrupt();
  }

  /** @inheritdoc */
  enableNotifications(): boolean {
    return this.inner.enableNotifications();
  }

  /** @inheritdoc */
  disableNotifications(): void {
    this.inner.disableNotifications();
  }

  /** @inheritdoc */
  getState(): QueueState {
    return this.inner.getState();
  }

  /** @inheritdoc */
  setState(state: QueueState): void {
    this.inner.setState(state);
  }

  /**
   * @inheritdoc
   * @throws RangeError if the wrapped queue cannot save its chains in flight
   */
  saveInFlight(): InFlightChain[] {
    const inner = this.inner;
    if (inner.saveInFlight === undefined) {
      throw new RangeError("the wrapped queue cannot save its chains in flight (no saveInFlight)");
    }
    return inner.saveInFlight();
  }

  /**
   * @inheritdoc
   * @throws RangeError if the wrapped queue cannot take chains in flight back
   */
  restoreInFlight(chains: readonly InFlightChain[]): void {
    const inner = this.inner;
    if (inner.restoreInFlight === undefined) {
      throw new RangeError(
        "the wrapped queue cannot restore chains in flight (no restoreInFlight)",
      );
    }
    inner.restoreInFlight(chains);
  }
}
