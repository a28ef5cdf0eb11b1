// A device model whose requests complete later, as a back-end would: queue 0 pops every chain,
// keeps it, and on `release()` copies each chain's readable bytes, plus one, into its writable
// part. A request started under one epoch and finished under another is dropped (the device
// was reset or abandoned meanwhile), as the DeviceContext contract asks. Its own state — a
// counter of requests served — moves with saveState / restoreState.
import { VirtioError } from "@virtio-ts/memory";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import type { DeviceContext, DeviceModel } from "../../src/index.js";

export const HELD_ID = 0x7d;

class BadModelState extends VirtioError {
  readonly code = "test-bad-model-state" as const;
}

export class HeldModel implements DeviceModel {
  readonly deviceId: number = HELD_ID;
  readonly features: bigint;
  readonly queueMaxSizes: readonly number[] = [32];
  readonly configSize = 4;
  /** Config: a u32 the host sets (a "disk size"), so a mismatched destination shows. */
  readonly size: number;
  ctx: DeviceContext | undefined;
  /** Requests completed, a model state that moves. */
  served = 0;
  /** Chains popped and not yet completed. */
  readonly held: { chain: DescriptorChain; epoch: number }[] = [];
  /** Results dropped because the epoch changed. */
  dropped = 0;
  readonly #pool: DescriptorChain[] = [];

  constructor(features = 0n, size = 0x1234) {
    this.features = features;
    this.size = size;
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    const v = this.size;
    if (size === 4) return v >>> 0;
    if (size === 2) return (v >>> (8 * offset)) & 0xffff;
    return (v >>> (8 * offset)) & 0xff;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }
  onQueueNotify(index: number): void {
    const ctx = this.ctx!;
    const q = ctx.queue(index);
    if (q === undefined) return;
    for (;;) {
      const c = this.#pool.pop() ?? new DescriptorChain(8);
      if (!q.pop(c)) {
        this.#pool.push(c);
        return;
      }
      this.held.push({ chain: c, epoch: ctx.epoch });
    }
  }
  /**
   * Complete `n` held requests (all by default), the oldest first or, with `newest`, the
   * newest first, as a back-end finishing.
   */
  release(n = this.held.length, newest = false): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const q = ctx.queue(0);
    const done = newest
      ? this.held.splice(this.held.length - n, n).reverse()
      : this.held.splice(0, n);
    for (const { chain, epoch } of done) {
      if (epoch !== ctx.epoch || q === undefined) {
        this.dropped++;
        continue;
      }
      const mem = ctx.memory;
      const buf = new Uint8Array(chain.readableBytes);
      chain.copyFromReadable(mem, 0, buf);
      for (let i = 0; i < buf.length; i++) buf[i] = (buf[i]! + 1) & 0xff;
      q.push(chain.head, chain.copyToWritable(mem, 0, buf));
      this.served++;
      this.#pool.push(chain);
    }
    ctx.signalUsed(0);
  }
  saveState(): Uint8Array {
    return Uint8Array.of(0xa5, this.served & 0xff, (this.served >>> 8) & 0xff);
  }
  restoreState(state: Uint8Array): void {
    if (state.length !== 3 || state[0] !== 0xa5) throw new BadModelState("not HeldModel state");
    this.served = state[1]! | (state[2]! << 8);
  }
  reset(): void {
    this.ctx = undefined;
    this.held.length = 0;
  }
}
