// The split-ring workload shared by the one-thread and two-worker benchmarks: the same shape as
// c/split_ring.c (one readable 64-byte buffer per chain, the device answers length 0).
import type { GuestMemory } from "@virtio-ts/memory";
import {
  DescriptorChain,
  NO_RING_FEATURES,
  type QueueLayout,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";

/** Ring placement for a queue of `size` entries in a 1 MiB memory. */
export function layoutFor(size: number): QueueLayout {
  return { size, desc: 0x1000, driver: 0x1000 + 16 * size, device: 0x2000 + 18 * size };
}

/** Data buffers start here. */
export const DATA = 0x80000;

/** Driver-side loop state; `step` adds up to `batch` chains, publishes, and reaps. */
export class DriverLoop {
  readonly q: SplitDriverQueue<number>;
  readonly seg = [{ addr: 0, len: 64 }];
  readonly none: { addr: number; len: number }[] = [];
  sent = 0;
  reaped = 0;
  constructor(
    mem: GuestMemory,
    readonly size: number,
    readonly batch: number,
  ) {
    this.q = new SplitDriverQueue<number>(mem, layoutFor(size), NO_RING_FEATURES);
  }
  add(total: number): number {
    let added = 0;
    const q = this.q;
    while (added < this.batch && this.sent < total && q.numFree > 0) {
      const slot = this.sent % this.size;
      this.seg[0]!.addr = DATA + 64 * slot;
      q.add(this.seg, this.none, slot);
      this.sent++;
      added++;
    }
    if (added > 0) q.publish();
    return added;
  }
  reap(): number {
    let n = 0;
    while (this.q.reap() !== undefined) n++;
    this.reaped += n;
    return n;
  }
}

/** Device-side loop state; `step` pops everything available and pushes it used. */
export class DeviceLoop {
  readonly q: SplitDeviceQueue;
  readonly chain: DescriptorChain;
  done = 0;
  constructor(mem: GuestMemory, size: number) {
    this.q = new SplitDeviceQueue(mem, layoutFor(size), NO_RING_FEATURES);
    this.chain = new DescriptorChain(size);
  }
  step(): number {
    let n = 0;
    const q = this.q;
    const chain = this.chain;
    while (q.pop(chain)) {
      q.push(chain.head, 0);
      n++;
    }
    if (n > 0) q.needsInterrupt();
    this.done += n;
    return n;
  }
}
