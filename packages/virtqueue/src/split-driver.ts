import type { GuestMemory } from "@virtio-ts/memory";
import {
  SplitDescFlags,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "@virtio-ts/spec";
import { UsedIdNotInFlightError, UsedIndexJumpError, UsedLenTooLargeError } from "./errors.js";
import { mapSplitRing, type SplitRingViews } from "./split-layout.js";
import type { DriverQueue, QueueLayout, QueueState, RingFeatures, Segment } from "./types.js";

const TWO_32 = 4294967296;

/** Where a driver keeps indirect descriptor tables: one fixed-size slot per head descriptor. */
export interface IndirectArea {
  /** Guest address of the area (16-aligned), owned by this driver. */
  readonly addr: number;
  /** Entries per table slot; the area is `queue size × maxEntries × 16` bytes. */
  readonly maxEntries: number;
}

/** Options of {@link SplitDriverQueue}. */
export interface SplitDriverOptions {
  /**
   * Memory for indirect tables. With VIRTIO_F_INDIRECT_DESC negotiated and this set, every
   * chain of 2 to `maxEntries` segments uses one ring descriptor and an indirect table.
   */
  readonly indirect?: IndirectArea;
}

/** Byte size of the indirect area a {@link SplitDriverQueue} needs. */
export function indirectAreaSize(queueSize: number, maxEntries: number): number {
  return queueSize * maxEntries * 16;
}

/**
 * Driver side of a split virtqueue (VIRTIO 1.3 §2.7): posts chains, publishes them, decides
 * kicks, reaps used buffers.
 *
 * Drivers distrust devices too: the free list, chain lengths and tokens live in a private shadow
 * (never read back from the shared descriptor table), and a used entry whose id is not in flight,
 * whose length exceeds what was offered, or a used index that jumps, raises a `RingError`.
 *
 * @typeParam T the token type returned by `reap` (anything but `undefined`).
 * @example
 * ```ts
 * const q = new SplitDriverQueue<string>(mem, layout, NO_RING_FEATURES);
 * q.add([{ addr: 0x8000, len: 16 }], [{ addr: 0x9000, len: 512 }], "req-1");
 * if (q.publish()) kick();
 * // ... after the device's interrupt:
 * const token = q.reap(); // "req-1"; q.lastLen holds the written length
 * ```
 */
export class SplitDriverQueue<T> implements DriverQueue<T> {
  /** @inheritdoc */
  readonly size: number;
  /** The negotiated ring features. */
  readonly features: RingFeatures;
  readonly #mem: GuestMemory;
  readonly #v: SplitRingViews;
  readonly #mask: number;
  readonly #usedEventAt: number;
  readonly #availEventAt: number;
  readonly #indirect: IndirectArea | undefined;
  /** Shadow next links (free list and chains). */
  readonly #next: Uint16Array;
  /** Ring descriptors each in-flight head occupies. */
  readonly #descCount: Uint16Array;
  /** Writable bytes each in-flight chain offers. */
  readonly #writable: Float64Array;
  readonly #tokens: (T | undefined)[];
  #freeHead = 0;
  #numFree: number;
  #availIdx = 0;
  #kickedIdx = 0;
  #lastUsed = 0;
  #interruptsEnabled = true;
  #lastLen = 0;

  /**
   * @param mem guest memory.
   * @param layout where the three areas are; the ring memory is initialised here.
   * @param features negotiated ring features.
   * @param options indirect table area.
   * @throws QueueConfigError for an invalid layout; RangeError for an invalid indirect area.
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    features: RingFeatures,
    options: SplitDriverOptions = {},
  ) {
    this.#v = mapSplitRing(mem, layout, "driver");
    this.#mem = mem;
    this.size = layout.size;
    this.features = features;
    this.#mask = layout.size - 1;
    this.#usedEventAt = 2 + layout.size;
    this.#availEventAt = 2 + 4 * layout.size;
    const ind = options.indirect;
    if (ind !== undefined) {
      if (!Number.isInteger(ind.maxEntries) || ind.maxEntries < 2 || ind.maxEntries > layout.size) {
        throw new RangeError(
          `options.indirect.maxEntries must be an integer in [2, queue size], got ${ind.maxEntries}`,
        );
      }
      if (!Number.isSafeInteger(ind.addr) || ind.addr % 16 !== 0) {
        throw new RangeError(`options.indirect.addr must be a 16-aligned address, got ${ind.addr}`);
      }
      if (!mem.check(ind.addr, indirectAreaSize(layout.size, ind.maxEntries), "write")) {
        throw new RangeError("options.indirect area lies outside guest memory");
      }
    }
    this.#indirect = ind;
    this.#next = new Uint16Array(layout.size);
    this.#descCount = new Uint16Array(layout.size);
    this.#writable = new Float64Array(layout.size);
    this.#tokens = new Array<T | undefined>(layout.size).fill(undefined);
    this.#numFree = layout.size;
    this.reset();
  }

  /** @inheritdoc */
  get numFree(): number {
    return this.#numFree;
  }

  /** @inheritdoc */
  get lastLen(): number {
    return this.#lastLen;
  }

  /** @inheritdoc */
  add(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    if (token === undefined) throw new RangeError("token must not be undefined");
    const nr = readable.length;
    const n = nr + writable.length;
    if (n === 0) throw new RangeError("a chain needs at least one segment (readable or writable)");
    let writableBytes = 0;
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i]! : writable[i - nr]!;
      if (!Number.isSafeInteger(s.addr) || s.addr < 0) {
        throw new RangeError(
          `${i < nr ? `readable[${i}]` : `writable[${i - nr}]`}.addr must be a non-negative safe integer, got ${s.addr}`,
        );
      }
      if (!Number.isInteger(s.len) || s.len < 0 || s.len >= TWO_32) {
        throw new RangeError(
          `${i < nr ? `readable[${i}]` : `writable[${i - nr}]`}.len must be an integer in [0, 2^32), got ${s.len}`,
        );
      }
      if (i >= nr) writableBytes += s.len;
    }
    // §2.7.5.3.1: a driver MUST NOT create a chain longer than the queue size.
    if (n > this.size)
      throw new RangeError(`chain of ${n} segments is longer than the queue size ${this.size}`);
    if (writableBytes >= TWO_32)
      throw new RangeError("writable segments add up to 2^32 bytes or more");
    const ind = this.#indirect;
    const useIndirect = this.features.indirect && ind !== undefined && n > 1 && n <= ind.maxEntries;
    const needed = useIndirect ? 1 : n;
    if (this.#numFree < needed) return false;

    const desc = this.#v.desc;
    const head = this.#freeHead;
    let idx = head;
    if (useIndirect) {
      const table = ind.addr + head * ind.maxEntries * 16;
      const mem = this.#mem;
      for (let i = 0; i < n; i++) {
        const s = i < nr ? readable[i]! : writable[i - nr]!;
        const at = table + i * 16;
        const flags = (i < n - 1 ? SplitDescFlags.NEXT : 0) | (i >= nr ? SplitDescFlags.WRITE : 0);
        mem.writeU32(at, s.addr % TWO_32);
        mem.writeU32(at + 4, Math.floor(s.addr / TWO_32));
        mem.writeU32(at + 8, s.len);
        mem.writeU32(at + 12, (flags | ((i + 1) << 16)) >>> 0);
      }
      writeDesc(desc, head, table, n * 16, SplitDescFlags.INDIRECT, 0);
      this.#freeHead = this.#next[head]!;
    } else {
      for (let i = 0; i < n; i++) {
        const s = i < nr ? readable[i]! : writable[i - nr]!;
        const last = i === n - 1;
        const next = this.#next[idx]!;
        const flags = (last ? 0 : SplitDescFlags.NEXT) | (i >= nr ? SplitDescFlags.WRITE : 0);
        writeDesc(desc, idx, s.addr, s.len, flags, last ? 0 : next);
        if (!last) idx = next;
      }
      this.#freeHead = this.#next[idx]!;
    }
    this.#numFree -= needed;
    this.#descCount[head] = needed;
    this.#writable[head] = writableBytes;
    this.#tokens[head] = token;
    // §2.7.13.2: put the head in the next avail ring slot; it becomes visible at publish().
    this.#v.avail[2 + (this.#availIdx & this.#mask)] = head;
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    return true;
  }

  /** @inheritdoc */
  publish(): boolean {
    const v = this.#v;
    const newIdx = this.#availIdx;
    const old = this.#kickedIdx;
    this.#kickedIdx = newIdx;
    if (newIdx === old) return false;
    // §2.7.13.3: descriptors and ring entries are written before idx. Release: the device's
    // Atomics.load of avail.idx then sees them.
    Atomics.store(v.avail, 1, newIdx);
    // The load below is ordered after the store above (both seq-cst): the full barrier Linux gets
    // from virtio_mb() so that the device either sees our idx or we see its event/flag.
    if (this.features.eventIdx) {
      // §2.7.10.1: kick iff avail.idx moved past avail_event in this batch.
      return vringNeedEvent(Atomics.load(v.used16, this.#availEventAt), newIdx, old);
    }
    // §2.7.10.1: without EVENT_IDX, honour VIRTQ_USED_F_NO_NOTIFY.
    return (Atomics.load(v.used16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** @inheritdoc */
  reap(): T | undefined {
    const v = this.#v;
    // Acquire: pairs with the device's store of used.idx after it wrote the element.
    const usedIdx = Atomics.load(v.used16, 1);
    const last = this.#lastUsed;
    const pending = (usedIdx - last) & 0xffff;
    if (pending === 0) return undefined;
    if (pending > this.size) throw new UsedIndexJumpError(usedIdx, last, this.size);
    const slot = (last & this.#mask) << 1;
    const id = v.used32[slot]!;
    const len = v.used32[slot + 1]!;
    if (id >= this.size || this.#tokens[id] === undefined) throw new UsedIdNotInFlightError(id);
    if (len > this.#writable[id]!) throw new UsedLenTooLargeError(id, len, this.#writable[id]!);
    this.#lastUsed = (last + 1) & 0xffff;
    const token = this.#tokens[id]!;
    this.#tokens[id] = undefined;
    this.#free(id);
    this.#lastLen = len;
    if (this.features.eventIdx && this.#interruptsEnabled) {
      // §2.7.10: ask for an interrupt when the device passes what we have reaped.
      Atomics.store(v.avail, this.#usedEventAt, this.#lastUsed);
    }
    return token;
  }

  /** Return a chain's descriptors to the free list, following the private shadow links. */
  #free(head: number): void {
    let last = head;
    for (let i = this.#descCount[head]! - 1; i > 0; i--) last = this.#next[last]!;
    this.#next[last] = this.#freeHead;
    this.#freeHead = head;
    this.#numFree += this.#descCount[head]!;
    this.#descCount[head] = 0;
  }

  /** @inheritdoc */
  enableInterrupts(): boolean {
    this.#interruptsEnabled = true;
    const v = this.#v;
    if (this.features.eventIdx) Atomics.store(v.avail, this.#usedEventAt, this.#lastUsed);
    else Atomics.and(v.avail, 0, ~VIRTQ_AVAIL_F_NO_INTERRUPT & 0xffff);
    // Re-check after publishing our wish: a device that pushed just before seeing it did not
    // interrupt, so the driver must look again.
    return Atomics.load(v.used16, 1) !== this.#lastUsed;
  }

  /** @inheritdoc */
  disableInterrupts(): void {
    this.#interruptsEnabled = false;
    const v = this.#v;
    if (this.features.eventIdx) {
      // The device ignores NO_INTERRUPT with EVENT_IDX (§2.7.10); an event index just behind
      // what we reaped is not crossed again until the ring index wraps (as Linux does).
      Atomics.store(v.avail, this.#usedEventAt, (this.#lastUsed - 1) & 0xffff);
    } else Atomics.or(v.avail, 0, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /** Ring indices (next avail index to publish, next used index to reap). */
  getState(): QueueState {
    return { availIdx: this.#availIdx, usedIdx: this.#lastUsed, availWrap: true, usedWrap: true };
  }

  /** @inheritdoc */
  reset(): void {
    const v = this.#v;
    v.desc.fill(0);
    v.avail.fill(0);
    v.used16.fill(0);
    v.used32.fill(0);
    for (let i = 0; i < this.size; i++) this.#next[i] = (i + 1) & 0xffff;
    this.#descCount.fill(0);
    this.#writable.fill(0);
    this.#tokens.fill(undefined);
    this.#freeHead = 0;
    this.#numFree = this.size;
    this.#availIdx = 0;
    this.#kickedIdx = 0;
    this.#lastUsed = 0;
    this.#lastLen = 0;
    this.#interruptsEnabled = true;
  }
}

function writeDesc(
  desc: Uint32Array,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
): void {
  const w = i << 2;
  desc[w] = addr % TWO_32;
  desc[w + 1] = Math.floor(addr / TWO_32);
  desc[w + 2] = len;
  desc[w + 3] = (flags | (next << 16)) >>> 0;
}
