// The split-ring workload shared by the one-thread and the two-worker benchmarks. Same shape as
// c/split_ring.c: 2-descriptor chains (16 readable bytes, 64 writable bytes at fixed addresses,
// the device touches no data and answers with the full writable length), queue size 256,
// batches of 32, VIRTIO_F_EVENT_IDX notification suppression.
import type { GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask, splitAvailSize } from "@virtio-ts/spec";
import {
  DescriptorChain,
  type DriverQueue,
  PackedDeviceQueue,
  PackedDriverQueue,
  type QueueLayout,
  ringFeatures,
  type Segment,
  SplitDeviceQueue,
  SplitDriverQueue,
} from "@virtio-ts/virtqueue";
import { ApiFloorDevice, ApiFloorDriver, type BenchDeviceQueue } from "./split-api-floor.js";

/** Queue size of every split-ring bench. */
export const SIZE = 256;
/** Chains the driver adds per publish, and the device pops per interrupt decision. */
export const BATCH = 32;
/** Guest memory size of every bench. */
export const MEM_SIZE = 1 << 20;
/** Where the (shared, never touched) data buffers live. */
export const DATA = 0x10000;
/** Readable bytes per chain. */
export const READ_LEN = 16;
/** Writable bytes per chain; the device reports them all written. */
export const WRITE_LEN = 64;
/** Ring features of every bench. */
export const FEATURES = ringFeatures(featureMask(Feature.RING_EVENT_IDX));

/** Int32 indices of the doorbell and counter words of the two-worker bench. */
export const Ctl = {
  /** Kick doorbell (driver → device). */
  KICK: 0,
  /** Interrupt doorbell (device → driver). */
  IRQ: 1,
  /** Set once the driver has initialised the ring. */
  READY: 2,
  /** Kicks the driver sent. */
  KICKS: 3,
  /** Interrupts the device sent. */
  IRQS: 4,
  /** Number of words. */
  COUNT: 5,
} as const;

/** A measured run: `ops` round trips in `ns` nanoseconds (warm-up excluded). */
export interface Rate {
  readonly ops: number;
  readonly ns: number;
  /** Process CPU time (every thread) over the same part, in ns, when measured. */
  readonly cpuNs?: number;
}

/** Round trips run before timing starts: the first fifth (JIT warm-up, caches). */
export function warmOps(total: number): number {
  return Math.floor(total / 5);
}

/** Ring placement: descriptor table at 0x1000, avail ring after it, used ring page-aligned. */
export function layoutFor(size: number): QueueLayout {
  const driver = 0x1000 + 16 * size;
  const device = Math.ceil((driver + splitAvailSize(size)) / 0x1000) * 0x1000;
  return { size, desc: 0x1000, driver, device };
}

/** Packed ring placement: descriptor ring at 0x1000, the two event structures after it. */
export function packedLayoutFor(size: number): QueueLayout {
  const driver = 0x1000 + 16 * size;
  return { size, desc: 0x1000, driver, device: driver + 4 };
}

/**
 * Which ring a bench runs on: the library's split or packed queues, or the split ring's API
 * floor (split-api-floor.ts: the same calls, minimal, for the bench's chains only).
 */
export type RingKind = "split" | "packed" | "apiFloor";

/** Driver side: adds batches of 2-descriptor chains, publishes, reaps. */
export class DriverSide {
  readonly q: DriverQueue<number>;
  readonly #readable: readonly Segment[] = [{ addr: DATA, len: READ_LEN }];
  readonly #writable: readonly Segment[] = [{ addr: DATA + 64, len: WRITE_LEN }];
  /** Chains added so far. */
  sent = 0;
  /** Chains reaped so far. */
  reaped = 0;

  constructor(mem: GuestMemory, kind: RingKind = "split") {
    this.q =
      kind === "split"
        ? new SplitDriverQueue<number>(mem, layoutFor(SIZE), FEATURES)
        : kind === "packed"
          ? new PackedDriverQueue<number>(mem, packedLayoutFor(SIZE), FEATURES)
          : new ApiFloorDriver(mem, layoutFor(SIZE));
  }

  /** Add up to {@link BATCH} chains (fewer if the ring is full or `total` is reached). */
  addBatch(total: number): number {
    const q = this.q;
    let added = 0;
    while (added < BATCH && this.sent < total && q.add(this.#readable, this.#writable, this.sent)) {
      this.sent++;
      added++;
    }
    return added;
  }

  /**
   * Reap every used buffer; calls `onWarm` once when `reaped` reaches `warm`.
   * @returns how many were reaped.
   */
  reapAll(warm: number, onWarm: () => void): number {
    const q = this.q;
    let n = 0;
    while (q.reap() !== undefined) {
      n++;
      if (++this.reaped === warm) onWarm();
    }
    return n;
  }
}

/**
 * Device side: pops validated chains and returns them used, with `push` (each published at
 * once) or, when `deferred`, with `use` (published together by the `needsInterrupt` that
 * follows the batch).
 */
export class DeviceSide {
  readonly q: BenchDeviceQueue;
  readonly #chain = new DescriptorChain(SIZE);
  readonly #deferred: boolean;
  /** Chains pushed so far. */
  done = 0;

  constructor(mem: GuestMemory, kind: RingKind = "split", deferred = false) {
    this.q =
      kind === "split"
        ? new SplitDeviceQueue(mem, layoutFor(SIZE), FEATURES)
        : kind === "packed"
          ? new PackedDeviceQueue(mem, packedLayoutFor(SIZE), FEATURES)
          : new ApiFloorDevice(mem, layoutFor(SIZE));
    this.#deferred = deferred;
  }

  /** Pop and return up to `max` chains; returns how many. */
  serve(max: number): number {
    const q = this.q;
    const chain = this.#chain;
    let n = 0;
    if (this.#deferred) {
      while (n < max && q.pop(chain)) {
        q.use(chain.head, chain.writableBytes);
        n++;
      }
    } else {
      while (n < max && q.pop(chain)) {
        q.push(chain.head, chain.writableBytes);
        n++;
      }
    }
    this.done += n;
    return n;
  }
}

/**
 * One-thread round trips until `drv` has reaped `total`: add a batch, publish, pop and push
 * everything, decide the interrupt, reap everything.
 */
export function roundTrips(
  drv: DriverSide,
  dev: DeviceSide,
  total: number,
  warm = -1,
  onWarm: () => void = () => {},
): void {
  while (drv.reaped < total) {
    drv.addBatch(total);
    drv.q.publish();
    dev.serve(SIZE);
    dev.q.needsInterrupt();
    drv.reapAll(warm, onWarm);
  }
}

/**
 * The one-thread bench on a fresh queue pair; timed after {@link warmOps}. `deferred`: the
 * device returns chains with `use`, published once per batch (see {@link DeviceSide}).
 */
export function runSingle(
  mem: GuestMemory,
  total: number,
  kind: RingKind = "split",
  deferred = false,
): Rate {
  const warm = warmOps(total);
  let tWarm = 0;
  let cpuWarm = process.cpuUsage();
  roundTrips(new DriverSide(mem, kind), new DeviceSide(mem, kind, deferred), total, warm, () => {
    tWarm = performance.now();
    cpuWarm = process.cpuUsage();
  });
  const ns = (performance.now() - tWarm) * 1e6;
  const cpu = process.cpuUsage(cpuWarm);
  return { ops: total - warm, ns, cpuNs: (cpu.user + cpu.system) * 1000 };
}
