/**
 * A raw driver side with several queues, for the suites of multi-queue devices (virtio-net,
 * virtio-console): our device side of virtio-mmio or virtio-pci over fresh guest memory, our
 * driver transport for initialisation, and driver queues the rig fills itself (internal).
 * @module
 */
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { SplitAvail, SplitDesc, SplitDescFlags, SplitUsed } from "@virtio-ts/spec";
import type { DeviceModel, VirtioDeviceCore } from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import { type ContractTransport, ContractViolation } from "./contract.js";
import { linkModel, type RigDriverTransport, type RigLink } from "./rig-link.js";
import { MAX_TURNS, macrotask } from "./wait.js";

const MEM_SIZE = 0x800000;
const RING = 0x10000;
/** Ring area per queue (a split ring of 256 entries takes under 0x1c00 bytes). */
const RING_STRIDE = 0x4000;
const HEAP = 0x200000;

/** A chain the rig published. */
export interface QueuePending {
  /** Rig-wide id. */
  readonly id: number;
  /** Queue index. */
  readonly queue: number;
  /** Device-readable buffers. */
  readonly outSegs: readonly Segment[];
  /** Device-writable buffers. */
  readonly inSegs: readonly Segment[];
}

/** A used chain. */
export interface QueueCompletion {
  /** Used length the device reported. */
  readonly len: number;
  /** The writable buffers, concatenated. */
  readonly data: Uint8Array;
}

/** A device model under test with several raw driver queues. */
export class QueueRig {
  /** Guest memory of the rig. */
  readonly memory: GuestMemory;
  /** The model under test. */
  readonly model: DeviceModel;
  /** The transport between the rig and the model. */
  readonly link: RigLink;
  /** The device core behind the transport. */
  readonly core: VirtioDeviceCore;
  /** The driver side of the registers. */
  readonly transport: RigDriverTransport;
  /** The adapter's idle hook, bound to the model. */
  readonly idle: () => Promise<void>;
  /** Times the device raised its interrupt line. */
  irqs = 0;
  /** DeviceFeatures offered at the last `init`. */
  offered = 0n;
  /** Features negotiated at the last `init`. */
  features = 0n;
  /** Driver queues by index. */
  readonly queues = new Map<number, DriverQueue<number>>();
  /** Queue sizes by index. */
  readonly sizes = new Map<number, number>();
  /** Ids in the order the device used them, per queue. */
  readonly usedOrder = new Map<number, number[]>();
  #heap = HEAP;
  #nextId = 1;
  readonly #done = new Map<number, number>();
  readonly #heads = new Map<number, Map<number, number>>();
  readonly #lastUsed = new Map<number, number>();
  readonly #stuck = new Set<number>();

  /**
   * @param model - the device model (not yet activated)
   * @param kind - the transport to put between the rig and the model
   * @param idle - optional hook: resolves when the model has nothing in flight
   */
  constructor(
    model: DeviceModel,
    kind: ContractTransport,
    idle?: (model: DeviceModel) => Promise<void>,
  ) {
    this.model = model;
    // Without the adapter's hook, the model's own (optional in the device contract).
    this.idle =
      idle === undefined ? () => model.whenIdle?.() ?? Promise.resolve() : () => idle(model);
    this.memory = createGuestMemory({ size: MEM_SIZE });
    this.link = linkModel(model, this.memory, kind, () => {
      this.irqs++;
    });
    this.core = this.link.core;
    this.transport = this.link.transport;
  }

  /**
   * Negotiate (§3.1.1) with `accept`, run `beforeQueues` (e.g. read the configuration), set up
   * `queues` (split rings, at most `queueSize` entries) and, unless `driverOk` is false, set
   * DRIVER_OK.
   */
  init(
    accept: (offered: bigint) => bigint,
    queues: (features: bigint) => readonly number[],
    o: { queueSize?: number; driverOk?: boolean } = {},
  ): this {
    const t = this.transport;
    this.#done.clear();
    this.queues.clear();
    this.usedOrder.clear();
    this.#heads.clear();
    this.#lastUsed.clear();
    this.#stuck.clear();
    this.features = t.negotiate((offered) => {
      this.offered = offered;
      return accept(offered);
    });
    for (const qi of queues(this.features)) {
      const max = t.queueMaxSize(qi);
      if (max === 0) {
        throw new ContractViolation(`the maximum size of queue ${qi} (§4.2.2, §4.1.4.3)`, "> 0", 0);
      }
      const size = 2 ** Math.floor(Math.log2(Math.min(o.queueSize ?? 64, max, 256)));
      const desc = this.descAddr(qi);
      const avail = desc + size * SplitDesc.SIZE;
      const used = (avail + SplitAvail.RING + 2 * size + 2 + 3) & ~3;
      this.queues.set(
        qi,
        t.setupQueue<number>(qi, this.memory, { size, desc, driver: avail, device: used }),
      );
      this.sizes.set(qi, size);
      this.usedOrder.set(qi, []);
      this.#heads.set(qi, new Map());
      this.#lastUsed.set(qi, 0);
    }
    if (o.driverOk ?? true) t.driverOk();
    return this;
  }

  /** Descriptor table of queue `qi`. */
  descAddr(qi: number): number {
    return RING + qi * RING_STRIDE;
  }

  /** Available ring of queue `qi`. */
  availAddr(qi: number): number {
    return this.descAddr(qi) + this.sizes.get(qi)! * SplitDesc.SIZE;
  }

  /** Used ring of queue `qi`. */
  usedAddr(qi: number): number {
    const size = this.sizes.get(qi)!;
    return (this.availAddr(qi) + SplitAvail.RING + 2 * size + 2 + 3) & ~3;
  }

  /** `used.idx` of queue `qi`. */
  usedIdx(qi: number): number {
    return this.memory.readU16(this.usedAddr(qi) + SplitUsed.IDX);
  }

  /** Whether the device has set DEVICE_NEEDS_RESET. */
  get needsReset(): boolean {
    return this.link.needsReset();
  }

  /** Whether a configuration change interrupt is pending. */
  get configInterrupt(): boolean {
    return this.link.configInterrupt();
  }

  /** Allocate `n` bytes of buffer memory (16-aligned). */
  alloc(n: number): number {
    const a = this.#heap;
    this.#heap = (this.#heap + Math.max(n, 1) + 15) & ~15;
    if (this.#heap > MEM_SIZE) throw new RangeError("the rig ran out of buffer memory");
    return a;
  }

  /**
   * Publish one chain on queue `qi`: `readable` buffers (copied into guest memory), then
   * writable buffers of `writableLens` bytes filled with `fill`; notify unless `kick` is false. With `loop`, the chain's last descriptor is
   * linked back to its head before publication (§2.7.5.2: the driver MUST NOT do this).
   */
  submit(
    qi: number,
    readable: readonly Uint8Array[],
    writableLens: readonly number[] = [],
    fill = 0xa5,
    kick = true,
    loop = false,
  ): QueuePending {
    const q = this.queues.get(qi);
    if (q === undefined) throw new Error(`queue ${qi} is not set up`);
    const outSegs: Segment[] = readable.map((d) => {
      const a = this.alloc(d.length);
      this.memory.write(a, d);
      return { addr: a, len: d.length };
    });
    const inSegs: Segment[] = writableLens.map((n) => {
      const a = this.alloc(n);
      this.memory.fill(a, n, fill);
      return { addr: a, len: n };
    });
    const id = this.#nextId++;
    const head = this.#add(qi, q, outSegs, inSegs, id);
    if (loop) {
      // Walk the chain in the table and link its last descriptor back to the head.
      const d = this.descAddr(qi);
      let i = head;
      for (let n = 0; n < 64; n++) {
        const flags = this.memory.readU16(d + 16 * i + SplitDesc.FLAGS);
        if ((flags & SplitDescFlags.NEXT) === 0) break;
        i = this.memory.readU16(d + 16 * i + SplitDesc.NEXT);
      }
      this.memory.writeU16(
        d + 16 * i + SplitDesc.FLAGS,
        this.memory.readU16(d + 16 * i + SplitDesc.FLAGS) | SplitDescFlags.NEXT,
      );
      this.memory.writeU16(d + 16 * i + SplitDesc.NEXT, head);
    }
    q.publish();
    if (kick) this.transport.notify(qi);
    return { id, queue: qi, outSegs, inSegs };
  }

  /**
   * Publish one chain of segments the caller placed and filled itself (say page-aligned runs) on
   * queue `qi`, and notify.
   */
  submitSegments(
    qi: number,
    outSegs: readonly Segment[],
    inSegs: readonly Segment[],
  ): QueuePending {
    const q = this.queues.get(qi);
    if (q === undefined) throw new Error(`queue ${qi} is not set up`);
    const id = this.#nextId++;
    this.#add(qi, q, [...outSegs], [...inSegs], id);
    q.publish();
    this.transport.notify(qi);
    return { id, queue: qi, outSegs, inSegs };
  }

  /** Add a chain and return its head (read back from the available ring). */
  #add(qi: number, q: DriverQueue<number>, out: Segment[], inn: Segment[], id: number): number {
    const av = this.availAddr(qi);
    const slot = this.memory.readU16(av + SplitAvail.IDX) % this.sizes.get(qi)!;
    if (!q.add(out, inn, id)) throw new Error(`queue ${qi} of the rig is full`);
    const head = this.memory.readU16(av + SplitAvail.RING + 2 * slot);
    this.#heads.get(qi)!.set(head, id);
    return head;
  }

  /** Let the device run one round: its idle hook, then a macrotask; then reap. */
  async turn(): Promise<void> {
    await this.idle();
    await macrotask();
    this.reap();
  }

  /**
   * Read every new used element of every queue straight from the used ring (so a device that
   * breaks the rules is observed rather than refused), then let the driver queue free the
   * descriptors; once the driver queue rejects an element (say a used length above the writable
   * bytes), that queue's descriptors are no longer recycled.
   */
  reap(): void {
    const mem = this.memory;
    for (const [qi, q] of this.queues) {
      const order = this.usedOrder.get(qi)!;
      const heads = this.#heads.get(qi)!;
      const size = this.sizes.get(qi)!;
      const used = this.usedAddr(qi);
      const idx = mem.readU16(used + SplitUsed.IDX);
      let last = this.#lastUsed.get(qi)!;
      for (; last !== idx; last = (last + 1) & 0xffff) {
        const at = used + SplitUsed.RING + 8 * (last % size);
        const head = mem.readU32(at);
        const id = heads.get(head);
        if (id === undefined) continue; // not a chain in flight: the driver queue complains
        heads.delete(head);
        this.#done.set(id, mem.readU32(at + 4));
        order.push(id);
      }
      this.#lastUsed.set(qi, last);
      if (this.#stuck.has(qi)) continue;
      try {
        while (q.reap() !== undefined) {}
      } catch {
        this.#stuck.add(qi);
      }
    }
  }

  /** Whether the chain is used yet (after a reap). */
  isDone(p: QueuePending): boolean {
    return this.#done.has(p.id);
  }

  /** Run turns (bounded) until `cond` holds; returns whether it did. */
  async until(cond: () => boolean, turns = MAX_TURNS): Promise<boolean> {
    this.reap();
    for (let i = 0; i < turns && !cond(); i++) await this.turn();
    return cond();
  }

  /** The completion of a used chain. */
  completion(p: QueuePending): QueueCompletion {
    const len = this.#done.get(p.id);
    if (len === undefined) throw new Error("chain not used");
    let total = 0;
    for (const s of p.inSegs) total += s.len;
    const data = new Uint8Array(total);
    let off = 0;
    for (const s of p.inSegs) {
      this.memory.read(s.addr, data.subarray(off, off + s.len));
      off += s.len;
    }
    return { len, data };
  }

  /**
   * Wait (bounded) until every chain in `ps` is used.
   * @throws ContractViolation naming how many stayed unused
   */
  async wait(ps: readonly QueuePending[], what: string): Promise<QueueCompletion[]> {
    await this.until(() => ps.every((p) => this.#done.has(p.id)));
    const missing = ps.filter((p) => !this.#done.has(p.id)).length;
    if (missing > 0) {
      throw new ContractViolation(`${what}: used buffers`, ps.length, ps.length - missing);
    }
    return ps.map((p) => this.completion(p));
  }
}

/** Kick wrapper: an exception out of the device is a violation (never crash the VMM). */
export function noThrow<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new ContractViolation(
      `${what}: the register access`,
      "no exception (a guest fault is handled inside the device)",
      e instanceof Error ? `${e.name}: ${e.message}` : String(e),
    );
  }
}
