import type { DescriptorChain } from "./chain.js";
import { ForwardingDeviceQueue } from "./forwarding-queue.js";
import type { DeviceQueue } from "./types.js";

/** Options of a {@link GatedDeviceQueue}. */
export interface GatedDeviceQueueOptions {
  /**
   * Keep driver notifications off while the model is busy (vhost's `vhost_disable_notify` /
   * `vhost_enable_notify`): a successful `pop` turns them off, and the `pop` that finds the
   * ring empty turns them back on and looks once more, so while the model keeps popping the
   * driver does not kick (VIRTIO 1.3 §2.7.10, §2.8.10). Default false: the model decides.
   */
  readonly suppressWhileBusy?: boolean;
}

/**
 * A device queue a back-end can stop and drain from outside the device model — what a vhost
 * GET_VRING_BASE or a migration needs: while {@link GatedDeviceQueue.stopping} is set, `pop`
 * finds nothing, so the model starts no new request, while requests already in its back-end
 * still complete; {@link GatedDeviceQueue.inFlight} counts chains popped and not yet pushed, and
 * {@link GatedDeviceQueue.onIdle} runs when it drops to zero. Every other call goes to the
 * wrapped queue ({@link ForwardingDeviceQueue}). Allocates nothing.
 *
 * @example
 * ```ts
 * const q = new GatedDeviceQueue(new SplitDeviceQueue(mem, layout, features));
 * // ... the model serves q ...
 * q.stopping = true;
 * if (q.inFlight > 0) await new Promise<void>((resolve) => (q.onIdle = resolve));
 * const state = q.getState(); // nothing in flight: safe to hand over
 * ```
 */
export class GatedDeviceQueue extends ForwardingDeviceQueue {
  /** While true, `pop` returns false without looking at the ring. */
  stopping = false;
  /**
   * With `suppressWhileBusy`: the caller is busy-polling, so leave notifications off even when
   * the ring is empty.
   */
  polling = false;
  /** Chains popped and not yet pushed (a pushed chain that was never counted is ignored). */
  inFlight = 0;
  /** Chains popped since construction (wraps harmlessly; compare for change only). */
  pops = 0;
  /**
   * Chains `pop` may still take before it answers false as if the ring were empty (a back-end's
   * bound on one call of the model: vhost's weight). Infinity (default): no bound.
   */
  popBudget = Number.POSITIVE_INFINITY;
  /** Called each time `inFlight` drops to 0 on a push. */
  onIdle: (() => void) | undefined = undefined;
  /**
   * Called after every `push` (with 1) and `pushBatch` (with its count), once the buffers are
   * used: a back-end can decide a used buffer notification there, mid-batch, instead of only
   * when the model calls `signalUsed` (interrupt moderation by count). What it throws leaves
   * `push` (the buffers are used by then).
   */
  onPushed: ((count: number) => void) | undefined = undefined;
  readonly #suppress: boolean;
  #suppressed = false;

  /**
   * @param inner - the queue to gate
   * @param options - notification suppression
   */
  constructor(inner: DeviceQueue, options: GatedDeviceQueueOptions = {}) {
    super(inner);
    this.#suppress = options.suppressWhileBusy === true;
  }

  /** @inheritdoc */
  override pop(chain: DescriptorChain): boolean {
    if (this.stopping) return false;
    if (this.popBudget <= 0) return false;
    if (this.inner.pop(chain)) {
      this.popBudget--;
      this.inFlight++;
      this.pops++;
      if (this.#suppress && !this.#suppressed) {
        this.#suppressed = true;
        this.inner.disableNotifications();
      }
      return true;
    }
    if (this.#suppressed && !this.polling) {
      this.#suppressed = false;
      // The driver may have published after our last look without kicking (notifications
      // were off): enableNotifications re-checks, and then we pop once more.
      if (this.inner.enableNotifications()) return this.pop(chain);
    }
    return false;
  }

  /** @inheritdoc */
  override push(head: number, written: number): void {
    this.inner.push(head, written);
    this.#done(1);
  }

  /** @inheritdoc */
  override pushBatch(count: number, written: number): void {
    this.inner.pushBatch(count, written);
    this.#done(count);
  }

  #done(n: number): void {
    // A model may return a chain whose validation failed (never counted): clamp at 0.
    this.inFlight = Math.max(0, this.inFlight - n);
    if (this.inFlight === 0 && this.onIdle !== undefined) this.onIdle();
    if (this.onPushed !== undefined) this.onPushed(n);
  }

  /**
   * Ask the driver for notifications again. While {@link GatedDeviceQueue.stopping}, they are
   * turned on but the answer is false: `pop` would find nothing, so a model's "pop until empty,
   * re-enable, pop again if something arrived" loop must not go round again. With `popBudget`
   * spent they stay off and the answer is false, for the same reason (the back-end comes back).
   * @returns true if buffers became available meanwhile (and the queue is not stopping)
   */
  override enableNotifications(): boolean {
    if (this.popBudget <= 0) return false;
    this.#suppressed = false;
    return this.inner.enableNotifications() && !this.stopping;
  }

  /** @inheritdoc */
  override disableNotifications(): void {
    if (this.#suppress) this.#suppressed = true;
    this.inner.disableNotifications();
  }
}
