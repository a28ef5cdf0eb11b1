/**
 * The one forwarding {@link DeviceContext}: what a model wrapper hands the model it wraps when
 * it changes how the model sees its queues (a tap, a publish-before-ack hook).
 * @module
 */
import type { GuestMemory, VirtioError } from "@virtio-ts/memory";
import type { DeviceQueue, QueueLayout } from "@virtio-ts/virtqueue";
import type { DeviceContext } from "./device-model.js";

/**
 * A {@link DeviceContext} that forwards every member to another one (`inner`), and lets a
 * subclass wrap each queue the model asks for ({@link ForwardingDeviceContext.wrapQueue},
 * typically a `ForwardingDeviceQueue` subclass). A queue is wrapped once per queue object: the
 * wrapper is kept while `inner.queue(index)` returns the same object and made again when it
 * changes (a queue reset or a restarted ring makes a new one), so `queue()` allocates nothing
 * on the hot path.
 *
 * @example
 * ```ts
 * class CountingContext extends ForwardingDeviceContext {
 *   protected override wrapQueue(index: number, queue: DeviceQueue): DeviceQueue {
 *     return new CountingQueue(queue); // a ForwardingDeviceQueue subclass
 *   }
 * }
 * model.activate(new CountingContext(ctx));
 * ```
 */
export class ForwardingDeviceContext implements DeviceContext {
  /** The context every call goes to. */
  readonly inner: DeviceContext;
  /** Per queue index: the inner queue last wrapped, and its wrapper. */
  readonly #from: (DeviceQueue | undefined)[] = [];
  readonly #to: (DeviceQueue | undefined)[] = [];

  /**
   * @param inner - the host's context
   * @throws TypeError naming `inner` unless it is a DeviceContext
   */
  constructor(inner: DeviceContext) {
    if (typeof inner?.queue !== "function" || typeof inner.guard !== "function") {
      throw new TypeError("inner must be a DeviceContext");
    }
    this.inner = inner;
  }

  /**
   * What the model gets for queue `index`: `queue` itself by default. Called once per queue
   * object; override it to wrap.
   * @param index - queue index
   * @param queue - the inner context's queue
   */
  protected wrapQueue(index: number, queue: DeviceQueue): DeviceQueue {
    void index;
    return queue;
  }

  /** @inheritdoc */
  get memory(): GuestMemory {
    return this.inner.memory;
  }

  /** @inheritdoc */
  get features(): bigint {
    return this.inner.features;
  }

  /** @inheritdoc */
  get numQueues(): number {
    return this.inner.numQueues;
  }

  /** @inheritdoc */
  get epoch(): number {
    return this.inner.epoch;
  }

  /** @inheritdoc */
  get needsReset(): boolean {
    return this.inner.needsReset;
  }

  /** @inheritdoc */
  queue(index: number): DeviceQueue | undefined {
    const q = this.inner.queue(index);
    if (q === undefined) return undefined;
    if (this.#from[index] === q) return this.#to[index];
    const w = this.wrapQueue(index, q);
    this.#from[index] = q;
    this.#to[index] = w;
    return w;
  }

  /** @inheritdoc */
  queueLayout(index: number): QueueLayout | undefined {
    return this.inner.queueLayout?.(index);
  }

  /** @inheritdoc */
  interrupt(index: number): boolean {
    return this.inner.interrupt(index);
  }

  /** @inheritdoc */
  signalUsed(index: number): boolean {
    return this.inner.signalUsed(index);
  }

  /** @inheritdoc */
  notifyConfigChange(): void {
    this.inner.notifyConfigChange();
  }

  /** @inheritdoc */
  fail(error: VirtioError): void {
    this.inner.fail(error);
  }

  /** @inheritdoc */
  noteFault(error: VirtioError): void {
    this.inner.noteFault(error);
  }

  /** @inheritdoc */
  guard<T>(fn: () => T): T | undefined {
    return this.inner.guard(fn);
  }
}
