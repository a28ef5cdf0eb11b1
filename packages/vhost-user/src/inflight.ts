/**
 * In-flight I/O tracking in shared memory (vhost-user.rst "Inflight I/O tracking",
 * VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the back-end records in a memfd which requests it has
 * popped and not yet completed; the front-end keeps the memfd across a back-end crash and hands
 * it to the restarted back-end (SET_INFLIGHT_FD), which serves those requests again before
 * anything new — so a write the guest issued is never lost when the back-end process dies.
 *
 * Layout per queue (split ring, `QueueRegionSplit`), every queue's region 64-byte aligned:
 * `u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx`, then
 * `desc_num` entries `{u8 inflight, u8 padding[5], u16 next, u64 counter}`. The region size
 * matches libvhost-user's for queue sizes that are multiples of 4.
 * @module
 */
import type { DescriptorChain, DeviceQueue } from "@virtio-ts/virtqueue";
import { ForwardingDeviceQueue } from "@virtio-ts/virtqueue";

/** Bytes of the split-ring queue region header (`QueueRegionSplit` without `desc`). */
const SPLIT_HEADER = 16;
/** Bytes of one `DescStateSplit`. */
const SPLIT_DESC = 16;
/** Bytes of the packed-ring queue region header (`QueueRegionPacked` without `desc`). */
const PACKED_HEADER = 32;
/** Bytes of one `DescStatePacked`. */
const PACKED_DESC = 32;
/** Version written in a region the back-end initialised (0 means "never used"). */
const INFLIGHT_VERSION = 1;

/**
 * Bytes of one queue's region in the inflight area.
 * @param queueSize - the queue size (1 to 32768)
 * @param packed - packed ring layout (`QueueRegionPacked`) rather than split
 * @returns the size, a multiple of 64
 */
export function inflightQueueRegionSize(queueSize: number, packed: boolean): number {
  const raw = packed
    ? PACKED_HEADER + PACKED_DESC * queueSize
    : SPLIT_HEADER + SPLIT_DESC * queueSize;
  return Math.ceil(raw / 64) * 64;
}

/** What {@link InflightQueueRegion.recover} found in a region a previous back-end left. */
export interface InflightRecovery {
  /** Heads in flight when the previous back-end stopped, oldest first (by their counter). */
  readonly heads: readonly number[];
  /** The next available index to consume: `used.idx` plus the requests in flight. */
  readonly availIdx: number;
  /** Whether the region was fresh (version 0): nothing to resubmit. */
  readonly fresh: boolean;
}

/**
 * One split-ring queue's region in the inflight area: typed-array views made once over the
 * shared mapping. Its contents are untrusted (the front-end can write the memfd).
 */
export class InflightQueueRegion {
  /** Queue size (`desc_num` as this back-end writes it). */
  readonly size: number;
  readonly #u8: Uint8Array;
  readonly #u16: Uint16Array;
  readonly #u32: Uint32Array;
  /** Counter for the next popped request (preserves pop order across a restart). */
  #counter = 0;

  /**
   * @param buffer - the mapping of the inflight fd
   * @param byteOffset - where this queue's region starts (a multiple of 8)
   * @param size - the queue size
   * @throws RangeError if the region does not fit in `buffer` or is misaligned
   */
  constructor(buffer: ArrayBuffer, byteOffset: number, size: number) {
    const bytes = inflightQueueRegionSize(size, false);
    if (byteOffset % 8 !== 0 || byteOffset + bytes > buffer.byteLength) {
      throw new RangeError(
        `the inflight region of a ${size}-entry queue at ${byteOffset} does not fit a ${buffer.byteLength}-byte area`,
      );
    }
    this.size = size;
    this.#u8 = new Uint8Array(buffer, byteOffset, bytes);
    this.#u16 = new Uint16Array(buffer, byteOffset, bytes >> 1);
    this.#u32 = new Uint32Array(buffer, byteOffset, bytes >> 2);
  }

  /** `version` (0: never used). */
  get version(): number {
    return Atomics.load(this.#u16, 4);
  }

  /** `used_idx`: `used.idx` as of the last completed batch. */
  get usedIdx(): number {
    return Atomics.load(this.#u16, 7);
  }

  /** Whether head `h` is marked in flight. */
  inFlight(h: number): boolean {
    return Atomics.load(this.#u8, SPLIT_HEADER + SPLIT_DESC * h) === 1;
  }

  /**
   * Take the region over at ring start (vhost-user.rst "When reconnecting"), given the used
   * ring's `idx` in guest memory: a fresh region is initialised; otherwise the last batch is
   * committed if `used_idx` lags `used.idx` (the previous back-end died between publishing the
   * used index and clearing the batch's flags), and the heads still in flight are returned in
   * counter order, with the available index to resume from.
   * @param usedIdx - `used.idx` read from the ring
   * @returns what to resubmit
   * @throws RangeError naming the field when the region's contents are impossible (its
   *   `desc_num` differs from the queue size, `last_batch_head` is out of range)
   */
  recover(usedIdx: number): InflightRecovery {
    const u16 = this.#u16;
    if (this.version === 0) {
      this.#u8.fill(0);
      Atomics.store(u16, 5, this.size);
      Atomics.store(u16, 7, usedIdx);
      Atomics.store(u16, 4, INFLIGHT_VERSION);
      this.#counter = 0;
      return { heads: [], availIdx: usedIdx, fresh: true };
    }
    const descNum = Atomics.load(u16, 5);
    if (descNum !== this.size) {
      throw new RangeError(
        `inflight region desc_num ${descNum} differs from the queue size ${this.size}`,
      );
    }
    if (this.usedIdx !== usedIdx) {
      const last = Atomics.load(u16, 6);
      if (last >= this.size) {
        throw new RangeError(`inflight region last_batch_head ${last} is not a head`);
      }
      Atomics.store(this.#u8, SPLIT_HEADER + SPLIT_DESC * last, 0);
      Atomics.store(u16, 7, usedIdx);
    }
    const found: { head: number; counter: number }[] = [];
    for (let h = 0; h < this.size; h++) {
      if (this.inFlight(h)) found.push({ head: h, counter: this.#counterOf(h) });
    }
    found.sort((a, b) => a.counter - b.counter);
    this.#counter = found.length === 0 ? 0 : found[found.length - 1]!.counter + 1;
    return {
      heads: found.map((f) => f.head),
      availIdx: (usedIdx + found.length) & 0xffff,
      fresh: false,
    };
  }

  #counterOf(h: number): number {
    const at = (SPLIT_HEADER + SPLIT_DESC * h + 8) >> 2;
    // Counters below 2^53 are exact; a hostile region's larger ones only change the order.
    return this.#u32[at]! + this.#u32[at + 1]! * 0x1_0000_0000;
  }

  /** A request with head `h` was popped: `desc[h].counter = counter++`, then `inflight = 1`. */
  popped(h: number): void {
    const c = this.#counter++;
    const at = (SPLIT_HEADER + SPLIT_DESC * h + 8) >> 2;
    this.#u32[at] = c >>> 0;
    this.#u32[at + 1] = Math.floor(c / 0x1_0000_0000);
    Atomics.store(this.#u8, SPLIT_HEADER + SPLIT_DESC * h, 1);
  }

  /** Before pushing head `h`: `desc[h].next = last_batch_head; last_batch_head = h`. */
  beforePush(h: number): void {
    const u16 = this.#u16;
    Atomics.store(u16, (SPLIT_HEADER + SPLIT_DESC * h + 6) >> 1, Atomics.load(u16, 6));
    Atomics.store(u16, 6, h);
  }

  /** After pushing head `h` (used.idx now `usedIdx`): `inflight = 0`, then `used_idx`. */
  afterPush(h: number, usedIdx: number): void {
    Atomics.store(this.#u8, SPLIT_HEADER + SPLIT_DESC * h, 0);
    Atomics.store(this.#u16, 7, usedIdx);
  }
}

/**
 * A device queue that records every pop and push in an {@link InflightQueueRegion}, in the
 * order vhost-user.rst prescribes, so a back-end killed at any instant leaves enough behind
 * for its successor to serve again exactly the requests whose completion the driver has not
 * seen. Allocates nothing per request (an IN_ORDER batch reads the pop order from a ring of
 * heads made once).
 */
export class InflightTrackingQueue extends ForwardingDeviceQueue {
  readonly #region: InflightQueueRegion;
  /** Pop order, for IN_ORDER batches (empty without IN_ORDER). */
  readonly #order: Uint16Array;
  #first = 0;
  #count = 0;
  #usedIdx: number;

  /**
   * @param inner - the split-ring queue
   * @param region - its inflight region
   * @param usedIdx - the used index the queue starts at
   * @param inOrder - VIRTIO_F_IN_ORDER was negotiated (`pushBatch` may be used)
   */
  constructor(inner: DeviceQueue, region: InflightQueueRegion, usedIdx: number, inOrder: boolean) {
    super(inner);
    this.#region = region;
    this.#order = new Uint16Array(inOrder ? inner.size : 0);
    this.#usedIdx = usedIdx;
  }

  /** @inheritdoc */
  override pop(chain: DescriptorChain): boolean {
    if (!this.inner.pop(chain)) return false;
    this.#region.popped(chain.head);
    if (this.#order.length > 0 && this.#count < this.#order.length) {
      this.#order[(this.#first + this.#count) % this.#order.length] = chain.head;
      this.#count++;
    }
    return true;
  }

  /** @inheritdoc */
  override push(head: number, written: number): void {
    const r = this.#region;
    r.beforePush(head);
    this.inner.push(head, written);
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    r.afterPush(head, this.#usedIdx);
    if (this.#count > 0) this.#forget(head);
  }

  /** @inheritdoc */
  override pushBatch(count: number, written: number): void {
    // IN_ORDER: the batch is the `count` oldest pops. Link them as one batch, publish, clear.
    const r = this.#region;
    const n = Math.min(count, this.#count);
    for (let i = 0; i < n; i++) r.beforePush(this.#order[(this.#first + i) % this.#order.length]!);
    this.inner.pushBatch(count, written);
    // Cold path (IN_ORDER batches only): ask the ring where its used index stands now.
    this.#usedIdx = this.inner.getState().usedIdx;
    for (let i = 0; i < n; i++) {
      r.afterPush(this.#order[(this.#first + i) % this.#order.length]!, this.#usedIdx);
    }
    this.#first = (this.#first + n) % this.#order.length;
    this.#count -= n;
  }

  /** Drop `head` from the pop-order ring (it completed out of order, or first). */
  #forget(head: number): void {
    const len = this.#order.length;
    for (let i = 0; i < this.#count; i++) {
      const at = (this.#first + i) % len;
      if (this.#order[at] !== head) continue;
      // Close the gap by moving the older entries up one place (the ring keeps its order).
      for (let j = i; j > 0; j--) {
        this.#order[(this.#first + j) % len] = this.#order[(this.#first + j - 1) % len]!;
      }
      this.#first = (this.#first + 1) % len;
      this.#count--;
      return;
    }
  }
}
