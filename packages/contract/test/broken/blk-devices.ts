/**
 * Deliberately broken virtio-blk device models, each breaking exactly one rule, built by
 * wrapping our BlkDevice (the suite must catch them and nothing else).
 */
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import type { VirtioError } from "@virtio-ts/memory";
import { BlkConfig, BlkFeature, featureMask } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import type { DeviceQueue } from "@virtio-ts/virtqueue";
import type { BlkDeviceAdapter } from "../../src/index.js";

/** Delegates everything to a BlkDevice; subclasses override one behaviour. */
class Wrapped implements DeviceModel {
  readonly deviceId: number;
  readonly queueMaxSizes: readonly number[];
  readonly configSize: number;
  features: bigint;
  constructor(readonly inner: BlkDevice) {
    this.deviceId = inner.deviceId;
    this.queueMaxSizes = inner.queueMaxSizes;
    this.configSize = inner.configSize;
    this.features = inner.features;
  }
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.inner.readConfig(offset, size);
  }
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.inner.writeConfig(offset, size, value);
  }
  activate(ctx: DeviceContext): void {
    this.inner.activate(ctx);
  }
  onQueueNotify(index: number): void {
    this.inner.onQueueNotify(index);
  }
  onQueueEnable(index: number): void {
    this.inner.onQueueEnable(index);
  }
  onQueueReset(index: number): void {
    this.inner.onQueueReset(index);
  }
  reset(): void {
    this.inner.reset();
  }
}

function disk(model: DeviceModel): MemoryDisk {
  return ((model as Wrapped).inner.backend as MemoryDisk) ?? (model as BlkDevice).backend;
}

const hooks = {
  readDisk: (model: DeviceModel, sector: number, length: number) =>
    disk(model).bytes.slice(sector * 512, sector * 512 + length),
  whenIdle: (model: DeviceModel) => (model as Wrapped).inner.whenIdle(),
};

/** Offers VIRTIO_BLK_F_RO on a read-only disk but performs writes anyway. */
export const ignoresReadOnly: BlkDeviceAdapter = {
  create: ({ image, readOnly }) => {
    const w = new Wrapped(new BlkDevice(new MemoryDisk(image)));
    if (readOnly) {
      w.features =
        (w.features | featureMask(BlkFeature.RO)) &
        ~(featureMask(BlkFeature.DISCARD) | featureMask(BlkFeature.WRITE_ZEROES));
    }
    return w;
  },
  ...hooks,
};

/** A DeviceContext whose queues report used lengths without the status byte. */
class ShortLenContext implements DeviceContext {
  readonly #ctx: DeviceContext;
  readonly #wrapped = new WeakMap<DeviceQueue, DeviceQueue>();
  constructor(ctx: DeviceContext) {
    this.#ctx = ctx;
  }
  get memory() {
    return this.#ctx.memory;
  }
  get features() {
    return this.#ctx.features;
  }
  get numQueues() {
    return this.#ctx.numQueues;
  }
  get epoch() {
    return this.#ctx.epoch;
  }
  get needsReset() {
    return this.#ctx.needsReset;
  }
  queue(index: number): DeviceQueue | undefined {
    const q = this.#ctx.queue(index);
    if (q === undefined) return undefined;
    let w = this.#wrapped.get(q);
    if (w === undefined) {
      w = {
        size: q.size,
        pop: (chain) => q.pop(chain),
        // The bug: forgets that the status byte counts as written.
        push: (head, written) => q.push(head, Math.max(0, written - 1)),
        use: (head, written) => q.use(head, Math.max(0, written - 1)),
        publishUsed: () => q.publishUsed(),
        pushBatch: (count, written) => q.pushBatch(count, written),
        needsInterrupt: () => q.needsInterrupt(),
        enableNotifications: () => q.enableNotifications(),
        disableNotifications: () => q.disableNotifications(),
        getState: () => q.getState(),
        setState: (s) => q.setState(s),
      };
      this.#wrapped.set(q, w);
    }
    return w;
  }
  interrupt(index: number): boolean {
    return this.#ctx.interrupt(index);
  }
  signalUsed(index: number): boolean {
    return this.#ctx.signalUsed(index);
  }
  notifyConfigChange(): void {
    this.#ctx.notifyConfigChange();
  }
  fail(error: VirtioError): void {
    this.#ctx.fail(error);
  }
  noteFault(error: VirtioError): void {
    this.#ctx.noteFault(error);
  }
  guard<T>(fn: () => T): T | undefined {
    return this.#ctx.guard(fn);
  }
}

class ShortUsedLen extends Wrapped {
  override activate(ctx: DeviceContext): void {
    this.inner.activate(new ShortLenContext(ctx));
  }
}

/** Reports the data bytes as the used length, without the status byte. */
export const wrongUsedLength: BlkDeviceAdapter = {
  create: ({ image, readOnly }) =>
    new ShortUsedLen(new BlkDevice(new MemoryDisk(image, { readOnly }))),
  ...hooks,
};

/** Advertises the image's capacity but serves a larger disk: past-the-end requests succeed. */
class SmallerCapacity extends Wrapped {
  constructor(
    inner: BlkDevice,
    readonly advertised: number,
  ) {
    super(inner);
  }
  override readConfig(offset: number, size: 1 | 2 | 4): number {
    if (offset === BlkConfig.CAPACITY && size === 4) return this.advertised;
    if (offset === BlkConfig.CAPACITY + 4 && size === 4) return 0;
    return this.inner.readConfig(offset, size);
  }
}

/** Answers OK for sectors past the advertised capacity. */
export const okOutOfRange: BlkDeviceAdapter = {
  create: ({ image, readOnly }) => {
    const big = new Uint8Array(image.length + 64 * 512);
    big.set(image);
    return new SmallerCapacity(
      new BlkDevice(new MemoryDisk(big, { readOnly })),
      image.length / 512,
    );
  },
  ...hooks,
};
