/** Deliberately broken balloon devices, each breaking one rule. */
import { BalloonDevice } from "@virtio-ts/devices";
import { BalloonConfig } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel, NotificationData } from "@virtio-ts/transport";
import type {
  BalloonDeviceAdapter,
  BalloonDeviceHandle,
  BalloonDeviceSetup,
} from "../../src/index.js";

/** `ctx` with some members replaced; methods of the real context stay bound to it. */
function override(ctx: DeviceContext, with_: Partial<DeviceContext>): DeviceContext {
  return new Proxy(ctx, {
    get(target, key) {
      if (key in with_) return (with_ as Record<PropertyKey, unknown>)[key];
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** A BalloonDevice behind hooks on its context, kicks and configuration writes. */
class Wrapped implements DeviceModel {
  readonly deviceId: number;
  readonly features: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize: number;
  constructor(
    readonly inner: BalloonDevice,
    readonly hooks: {
      ctx?: Partial<DeviceContext>;
      afterNotify?: (inner: BalloonDevice) => void;
      writeConfig?: (offset: number) => boolean;
    },
  ) {
    this.deviceId = inner.deviceId;
    this.features = inner.features;
    this.queueMaxSizes = inner.queueMaxSizes;
    this.configSize = inner.configSize;
  }
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.inner.readConfig(offset, size);
  }
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    if (this.hooks.writeConfig?.(offset) === false) return;
    this.inner.writeConfig(offset, size, value);
  }
  activate(ctx: DeviceContext): void {
    this.inner.activate(this.hooks.ctx === undefined ? ctx : override(ctx, this.hooks.ctx));
    this.hooks.afterNotify?.(this.inner);
  }
  onQueueNotify(index: number, data: NotificationData | undefined): void {
    this.inner.onQueueNotify(index);
    void data;
    this.hooks.afterNotify?.(this.inner);
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

function adapter(hooks: Wrapped["hooks"]): BalloonDeviceAdapter {
  return {
    create({ ram, host }: BalloonDeviceSetup): BalloonDeviceHandle {
      const inner = new BalloonDevice({ ram, host });
      return {
        model: new Wrapped(inner, hooks),
        setTarget: (p) => inner.setTarget(p),
        requestStats: () => inner.requestStats(),
      };
    },
  };
}

/** Changes num_pages without a configuration change notification (the driver never hears). */
export const silentTarget: BalloonDeviceAdapter = adapter({ ctx: { notifyConfigChange() {} } });

/** Returns every stats buffer as soon as it arrives instead of holding it for the host (§5.5.6.3). */
export const eagerStats: BalloonDeviceAdapter = adapter({
  afterNotify: (inner) => {
    inner.requestStats();
  },
});

/** Never takes poison_val, so it zeroes reported pages even under PAGE_POISON (§5.5.6.7.2). */
export const zeroPoison: BalloonDeviceAdapter = adapter({
  writeConfig: (offset) => offset !== BalloonConfig.POISON_VAL,
});
