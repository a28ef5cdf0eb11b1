// A minimal legacy (virtio-mmio version 1) virtio-blk guest driver, for mode 2's legacy register
// file: the queue is one contiguous block found through QueuePFN (VIRTIO 1.3 §2.7.2, §4.2.4).
// `BlkDriver` speaks the modern layout only; this one does reads and writes of one slot.

import type { SlabAllocator } from "@virtio-ts/drivers";
import type { GuestMemory } from "@virtio-ts/memory";
import { BlkOutHdr, BlkRequestType, BlkStatus, Feature, featureMask } from "@virtio-ts/spec";
import type { MmioDriverTransport } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";

interface LegacyReq {
  readonly hdr: number;
  readonly data: number;
  readonly len: number;
  readonly into: Uint8Array | undefined;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

interface Waiting {
  readonly type: number;
  readonly sector: number;
  readonly out: Uint8Array | undefined;
  readonly into: Uint8Array | undefined;
  readonly len: number;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

/** A legacy request completed with a status other than OK, or a short used length. */
export class LegacyBlkError extends Error {
  /** The status byte (or 0xff when the device did not write it). */
  readonly status: number;

  /** @param status - the status byte */
  constructor(status: number) {
    super(`legacy virtio-blk request failed with status ${status}`);
    this.status = status;
  }
}

/** Options of a {@link LegacyBlkDriver}. */
export interface LegacyBlkDriverOptions {
  /** Page-aligned guest address of the legacy ring block (`legacySplitLayout`). */
  readonly ringBase: number;
  /** Queue size, a power of 2 (default 128). */
  readonly queueSize?: number;
  /** Accept VIRTIO_F_EVENT_IDX when offered (default true). */
  readonly eventIdx?: boolean;
}

/**
 * A legacy virtio-blk driver over a version 1 `MmioDriverTransport`: negotiates (no FEATURES_OK
 * in legacy), sets up queue 0 with QueueNum / QueueAlign / QueuePFN, and serves 4 KiB-class
 * reads and writes (at most one allocator slot each) as promises; requests wait in a FIFO when
 * slots run out. Completions are reaped by {@link LegacyBlkDriver.onInterrupt}.
 */
export class LegacyBlkDriver {
  readonly #t: MmioDriverTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #q: DriverQueue<LegacyReq>;
  readonly #waiting: Waiting[] = [];

  /**
   * @param transport - a transport on a version 1 device (reset and initialised here)
   * @param memory - guest memory holding the ring and the allocator's region
   * @param allocator - slots for headers and data (at least 2)
   * @param options - ring address and size
   * @throws TransportError from setup; RangeError naming an option
   */
  constructor(
    transport: MmioDriverTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: LegacyBlkDriverOptions,
  ) {
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    transport.probe();
    const wanted = options.eventIdx === false ? 0n : featureMask(Feature.RING_EVENT_IDX);
    transport.negotiate(wanted);
    const size = options.queueSize ?? 128;
    this.#q = transport.setupQueue<LegacyReq>(0, memory, { base: options.ringBase, size });
    transport.driverOk();
  }

  /**
   * Read `length` bytes (a multiple of 512, at most one slot) from `sector`.
   * @throws RangeError naming `length`; rejects with LegacyBlkError
   */
  async read(sector: number, length: number): Promise<Uint8Array> {
    const into = new Uint8Array(length);
    await this.#submit(BlkRequestType.IN, sector, undefined, into, length);
    return into;
  }

  /**
   * Write `data` (a multiple of 512 bytes, at most one slot) at `sector`.
   * @throws RangeError naming `data`; rejects with LegacyBlkError
   */
  write(sector: number, data: Uint8Array): Promise<void> {
    return this.#submit(BlkRequestType.OUT, sector, data, undefined, data.length);
  }

  #submit(
    type: number,
    sector: number,
    out: Uint8Array | undefined,
    into: Uint8Array | undefined,
    len: number,
  ): Promise<void> {
    if (len <= 0 || len % 512 !== 0 || len > this.#slab.slotSize) {
      throw new RangeError(`length must be whole sectors up to one slot, got ${len}`);
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiting = { type, sector, out, into, len, resolve, reject };
      if (this.#waiting.length > 0 || !this.#start(w)) this.#waiting.push(w);
      else this.#kick();
    });
  }

  #start(w: Waiting): boolean {
    if (this.#slab.available < 2 || this.#q.numFree < 3) return false;
    const mem = this.#mem;
    const hdr = this.#slab.alloc() as number;
    const data = this.#slab.alloc() as number;
    mem.writeU32(hdr + BlkOutHdr.TYPE, w.type);
    mem.writeU32(hdr + BlkOutHdr.IOPRIO, 0);
    mem.writeU64(hdr + BlkOutHdr.SECTOR, BigInt(w.sector));
    mem.writeU8(hdr + 16, 0xff);
    const req: LegacyReq = {
      hdr,
      data,
      len: w.len,
      into: w.into,
      resolve: w.resolve,
      reject: w.reject,
    };
    const status = { addr: hdr + 16, len: 1 };
    const seg = { addr: data, len: w.len };
    if (w.out !== undefined) {
      mem.write(data, w.out);
      this.#q.add([{ addr: hdr, len: 16 }, seg], [status], req);
    } else {
      this.#q.add([{ addr: hdr, len: 16 }], [seg, status], req);
    }
    return true;
  }

  #kick(): void {
    if (this.#q.publish()) this.#t.notify(0);
  }

  /**
   * Interrupt handler: acknowledge, reap, settle, submit waiting requests.
   * @returns requests completed
   */
  onInterrupt(): number {
    this.#t.takeInterrupt();
    const q = this.#q;
    let n = 0;
    for (;;) {
      q.disableInterrupts();
      for (let r = q.reap(); r !== undefined; r = q.reap()) {
        this.#complete(r);
        n++;
      }
      if (!q.enableInterrupts()) break;
    }
    let started = false;
    while (this.#waiting.length > 0 && this.#start(this.#waiting[0]!)) {
      this.#waiting.shift();
      started = true;
    }
    if (started) this.#kick();
    return n;
  }

  #complete(r: LegacyReq): void {
    const status = this.#mem.readU8(r.hdr + 16);
    if (status === BlkStatus.OK && r.into !== undefined) this.#mem.read(r.data, r.into);
    this.#slab.free(r.hdr);
    this.#slab.free(r.data);
    if (status === BlkStatus.OK) r.resolve();
    else r.reject(new LegacyBlkError(status));
  }
}
