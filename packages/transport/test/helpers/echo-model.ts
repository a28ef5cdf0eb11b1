// A tiny device model for the transport tests: queue 0 echoes (copies each chain's readable
// bytes into its writable part), queue 1 only records kicks. Its 12-byte configuration space
// holds a u32 the driver may write at 0 and a u64 the device changes at 4.
import { VirtioError } from "@virtio-ts/memory";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import type {
  DeviceContext,
  DeviceModel,
  MmioBus,
  MmioDevice,
  NotificationData,
} from "../../src/index.js";

/** Device ID of the echo model (unassigned in the standard, fine for tests). */
export const ECHO_ID = 0x7e;

export class EchoModel implements DeviceModel {
  readonly deviceId: number = ECHO_ID;
  readonly features: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize = 12;
  readonly config = new DataView(new ArrayBuffer(12));
  ctx: DeviceContext | undefined;
  activations = 0;
  resets = 0;
  readonly kicks: { index: number; data: NotificationData | undefined }[] = [];
  readonly enabled: number[] = [];
  readonly queueResets: number[] = [];
  accept: (features: bigint) => boolean = () => true;
  readonly #chain = new DescriptorChain(64);
  readonly #scratch = new Uint8Array(4096);

  constructor(features = 0n, queueMaxSizes: readonly number[] = [16, 4]) {
    this.features = features;
    this.queueMaxSizes = queueMaxSizes;
    this.config.setUint32(0, 0xc0ffee, true);
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    if (size === 1) return this.config.getUint8(offset);
    if (size === 2) return this.config.getUint16(offset, true);
    return this.config.getUint32(offset, true);
  }

  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    // Only the u32 at 0 is driver-writable.
    if (offset !== 0 || size !== 4) return;
    this.config.setUint32(0, value, true);
  }

  /** The device changes its u64 (two halves: a driver may see them torn without the generation). */
  setCounter(value: bigint, notify = true): void {
    this.config.setBigUint64(4, value, true);
    if (notify) this.ctx?.notifyConfigChange();
  }

  validateFeatures(features: bigint): boolean {
    return this.accept(features);
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
  }

  onQueueNotify(index: number, data: NotificationData | undefined): void {
    this.kicks.push({ index, data: data === undefined ? undefined : { ...data } });
    const ctx = this.ctx;
    if (index !== 0 || ctx === undefined) return;
    const q = ctx.queue(0);
    if (q === undefined) return;
    const chain = this.#chain;
    const mem = ctx.memory;
    while (q.pop(chain)) {
      const n = chain.copyFromReadable(
        mem,
        0,
        this.#scratch.subarray(0, Math.min(chain.readableBytes, 4096)),
      );
      q.push(chain.head, chain.copyToWritable(mem, 0, this.#scratch.subarray(0, n)));
    }
    ctx.signalUsed(0);
  }

  onQueueEnable(index: number): void {
    this.enabled.push(index);
  }

  onQueueReset(index: number): void {
    this.queueResets.push(index);
  }

  reset(): void {
    this.resets++;
    this.ctx = undefined;
  }
}

/** A guest fault for tests of `fail`. */
export class TestFault extends VirtioError {
  readonly code = "test-fault" as const;
}

/** The bus a driver uses to reach `dev` in the same process. */
export function busOf(dev: MmioDevice): MmioBus {
  return { read: (o, s) => dev.read(o, s), write: (o, s, v) => dev.write(o, s, v) };
}
