/**
 * A {@link DeviceModel} wrapper that lets a suite watch and perturb what a device model does
 * with its queues: every popped chain is shown to `onPop`, and used buffers may be held back
 * and released later in another order (internal).
 * @module
 */
import {
  type DeviceContext,
  type DeviceModel,
  ForwardingDeviceContext,
  type NotificationData,
} from "@virtio-ts/transport";
import {
  type DescriptorChain,
  type DeviceQueue,
  ForwardingDeviceQueue,
} from "@virtio-ts/virtqueue";

/** Hooks of a {@link TapModel}. */
export interface TapHooks {
  /** Called with every chain the model popped, before the model sees it. */
  onPop?(index: number, chain: DescriptorChain, ctx: DeviceContext): void;
  /** Rewrite a configuration read of the model. */
  readConfig?(offset: number, size: 1 | 2 | 4, value: number): number;
}

class TapQueue extends ForwardingDeviceQueue {
  readonly held: [number, number][] = [];
  hold = false;
  constructor(
    q: DeviceQueue,
    readonly index: number,
    readonly tap: TapContext,
  ) {
    super(q);
  }
  override pop(chain: DescriptorChain): boolean {
    if (!super.pop(chain)) return false;
    this.tap.hooks.onPop?.(this.index, chain, this.tap.inner);
    return true;
  }
  override push(head: number, written: number): void {
    if (this.hold) this.held.push([head, written]);
    else super.push(head, written);
  }
}

class TapContext extends ForwardingDeviceContext {
  readonly live: TapQueue[] = [];
  hold = false;
  constructor(
    ctx: DeviceContext,
    readonly hooks: TapHooks,
  ) {
    super(ctx);
  }
  protected override wrapQueue(index: number, queue: DeviceQueue): DeviceQueue {
    const t = new TapQueue(queue, index, this);
    this.live.push(t);
    return t;
  }
  override queue(index: number): DeviceQueue | undefined {
    const t = super.queue(index) as TapQueue | undefined;
    if (t !== undefined) t.hold = this.hold;
    return t;
  }
}

/** Wraps a model; see the module comment. */
export class TapModel implements DeviceModel {
  readonly deviceId: number;
  readonly features: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize: number;
  #tap: TapContext | undefined;
  #hold = false;

  constructor(
    readonly inner: DeviceModel,
    readonly hooks: TapHooks = {},
  ) {
    this.deviceId = inner.deviceId;
    this.features = inner.features;
    this.queueMaxSizes = inner.queueMaxSizes;
    this.configSize = inner.configSize;
  }

  /** Hold used buffers back (until {@link TapModel.release}) instead of pushing them. */
  set hold(on: boolean) {
    this.#hold = on;
    if (this.#tap !== undefined) {
      this.#tap.hold = on;
      for (const q of this.#tap.live) q.hold = on;
    }
  }

  /** Used buffers held back so far. */
  get held(): number {
    let n = 0;
    for (const q of this.#tap?.live ?? []) n += q.held.length;
    return n;
  }

  /**
   * Push the held used buffers, newest first (the reverse of completion order), and send a
   * used buffer notification. @returns how many were pushed
   */
  release(): number {
    const tap = this.#tap;
    if (tap === undefined || tap.inner.needsReset) return 0;
    let n = 0;
    for (const q of tap.live) {
      if (tap.inner.queue(q.index) !== q.inner) {
        q.held.length = 0;
        continue;
      }
      while (q.held.length > 0) {
        const [head, written] = q.held.pop()!;
        q.inner.push(head, written);
        n++;
      }
      if (n > 0) tap.inner.interrupt(q.index);
    }
    return n;
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    const v = this.inner.readConfig(offset, size);
    return this.hooks.readConfig === undefined ? v : this.hooks.readConfig(offset, size, v);
  }
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.inner.writeConfig(offset, size, value);
  }
  activate(ctx: DeviceContext): void {
    this.#tap = new TapContext(ctx, this.hooks);
    this.#tap.hold = this.#hold;
    this.inner.activate(this.#tap);
  }
  onQueueNotify(index: number, data: NotificationData | undefined): void {
    this.inner.onQueueNotify(index, data);
  }
  onQueueEnable(index: number): void {
    this.inner.onQueueEnable?.(index);
  }
  onQueueReset(index: number): void {
    this.inner.onQueueReset?.(index);
  }
  reset(): void {
    this.#tap = undefined;
    this.inner.reset();
  }
  validateFeatures(features: bigint): boolean {
    return this.inner.validateFeatures?.(features) ?? true;
  }
}
