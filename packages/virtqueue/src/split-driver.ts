import { type GuestMemory, GuestMemoryError } from "@virtio-ts/memory";
import {
  SplitDescFlags,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "@virtio-ts/spec";
import { checkChainArgs, segmentValuesOk } from "./chain-args.js";
import {
  UsedIdNotInFlightError,
  UsedIdOutOfRangeError,
  UsedIndexJumpError,
  UsedLenTooLargeError,
} from "./errors.js";
import { mapSplitRing, type SplitRingViews } from "./split-layout.js";
import type { DriverQueue, QueueLayout, QueueState, RingFeatures, Segment } from "./types.js";

const TWO_32 = 4294967296;
const F_NEXT = SplitDescFlags.NEXT;
const F_WRITE = SplitDescFlags.WRITE;
const F_INDIRECT = SplitDescFlags.INDIRECT;

// Life of a head descriptor in the private shadow. Only an ADDED head that a publish has made
// visible (its publish generation is past, see reap) may come back used.
const FREE = 0;
const ADDED = 1;

/**
 * Where a driver keeps its indirect descriptor tables (VIRTIO 1.3 §2.7.5.3, §2.8.7): one
 * fixed-size slot of `maxEntries` descriptors per head descriptor (split ring) or buffer ID
 * (packed ring), so slot `h` (at `addr + h × maxEntries × 16`) belongs to the chain with head
 * or ID `h` and is never shared by two chains in flight. The driver writes the tables; the
 * device only reads them, and the driver never reads them back.
 */
export interface IndirectArea {
  /**
   * Guest address of the area: 16-aligned, writable, inside one memory region, and owned by
   * this queue ({@link indirectAreaSize} bytes).
   */
  readonly addr: number;
  /**
   * Descriptors per table slot, in [2, queue size]: chains of 2 to `maxEntries` segments go
   * indirect, longer ones use ring descriptors directly.
   */
  readonly maxEntries: number;
}

/** Options of {@link SplitDriverQueue}. */
export interface SplitDriverOptions {
  /**
   * Memory for indirect tables. Used only when VIRTIO_F_INDIRECT_DESC was negotiated (§2.7.5.3.1:
   * the driver MUST NOT set VIRTQ_DESC_F_INDIRECT otherwise), so it may be passed unconditionally.
   * Every chain of 2 to `maxEntries` segments then takes one ring descriptor.
   */
  readonly indirect?: IndirectArea;
}

/**
 * Byte size of the indirect area a driver queue needs: `queueSize × maxEntries × 16`.
 *
 * @example
 * ```ts
 * indirectAreaSize(256, 8); // 32768
 * ```
 */
export function indirectAreaSize(queueSize: number, maxEntries: number): number {
  return queueSize * maxEntries * 16;
}

/**
 * Driver side of a split virtqueue (VIRTIO 1.3 §2.7): adds descriptor chains, publishes them
 * in the available ring, decides kicks, and reaps used buffers.
 *
 * Who writes what: this class writes the descriptor table, the available ring (`flags`, `idx`,
 * `ring[]`, `used_event`) and any indirect tables; the device writes the used ring (`flags`,
 * `idx`, `ring[]`, `avail_event`). Nothing the device writes is trusted:
 * - chains are freed from a private shadow (next links, descriptor counts, writable bytes,
 *   tokens, per-head state; Linux's `desc_extra`), never from the shared descriptor table,
 *   which a device could scribble on;
 * - `reap` raises a `RingError` for a used index that jumps more than the queue size
 *   ({@link UsedIndexJumpError}), an id outside the table ({@link UsedIdOutOfRangeError}),
 *   an id that is not the head of a published chain in flight ({@link UsedIdNotInFlightError}),
 *   and a length larger than the chain's writable bytes ({@link UsedLenTooLargeError}). The
 *   last one is stricter than the spec requires (§2.7.8.3 only tells drivers to ignore data past
 *   `len`): a device that claims more than it was offered is broken or hostile, and trusting its
 *   `len` could expose stale memory (the note in §2.7.8). After a `RingError` the queue state
 *   is unchanged; the driver is expected to reset the device.
 *
 * Shared index, flag and event words are accessed with `Atomics` (seq-cst); descriptors and
 * ring entries are plain writes ordered by the `Atomics.store` of `avail.idx`. Nothing is
 * allocated by `add`, `publish` or `reap`: every array is created in the constructor.
 *
 * With VIRTIO_F_IN_ORDER descriptors are used in ring order (§2.7.5.2: from 0 on, wrapping,
 * `next` = x + 1 and 0 after the last), and `reap` understands batches (§2.7.9): one used
 * element, at the entry of the batch's first buffer, names the last buffer of the batch; the
 * others are returned in order as completely written. The element's id must be one of the
 * buffers the used index covers, or {@link UsedIdNotInFlightError} is raised.
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
  // The ring's views as own fields (not through a views object): one load fewer per use, which
  // measured ~3 ns of a ~60 ns round trip.
  /** Descriptor table, 4 u32 words per descriptor. */
  readonly #desc: Uint32Array;
  /** Available ring as u16 words: flags, idx, ring[size], used_event. */
  readonly #avail: Uint16Array;
  /** Used ring as u16 words: flags, idx, …, avail_event. */
  readonly #used16: Uint16Array;
  /** Used ring elements as u32 words, from used+4: id, len per element. */
  readonly #used32: Uint32Array;
  /** `features.inOrder` / `features.eventIdx`, as own fields for the hot paths. */
  readonly #inOrder: boolean;
  readonly #eventIdx: boolean;
  readonly #mask: number;
  readonly #usedEventAt: number;
  readonly #availEventAt: number;
  /** Indirect tables as u32 words (4 per descriptor), or undefined when not in use. */
  readonly #ind: Uint32Array | undefined;
  readonly #indAddr: number;
  readonly #indMax: number;
  // ---- private shadow, one entry per descriptor / head ----
  /** Next links: the free list, and the links of each in-flight direct chain. */
  readonly #next: Uint16Array;
  /** Ring descriptors each in-flight head holds (1 for an indirect chain). */
  readonly #descCount: Uint16Array;
  /** Writable bytes each in-flight chain offers (< 2^32 by the check in add). */
  readonly #writable: Uint32Array;
  /** FREE or ADDED (in flight, published or not), per head. */
  readonly #state: Uint8Array;
  /**
   * The publish generation each in-flight head was added in (`#generation` at its add): it is
   * published once `#generation` has moved past it, so publish marks nothing per chain. A
   * Float64Array and a counter of publishes that cannot wrap (2^53), not avail indices: a head
   * may stay in flight across any number of adds of other chains.
   */
  readonly #addedIn: Float64Array;
  /** Publishes that made something visible so far: the current publish generation. */
  #generation = 0;
  /**
   * Heads by avail position: with IN_ORDER the order in which the device returns them
   * (entries from `#reapPos` to `#availIdx` are in flight).
   */
  readonly #availHeads: Uint16Array;
  readonly #tokens: (T | undefined)[];
  #freeHead = 0;
  #numFree: number;
  /** Avail index the next add uses. */
  #availIdx = 0;
  /** `avail.idx` as last stored by publish (the "old" of the kick decision). */
  #publishedIdx = 0;
  /** Next used index to reap. */
  #lastUsed = 0;
  /**
   * `used.idx` as last loaded (and validated) by `reap`: the elements before it are published,
   * so `reap` loads the shared index again only after it has taken them (one `Atomics.load`
   * per batch rather than per buffer; in V8 every `Atomics` call is a builtin call).
   */
  #shadowUsed = 0;
  #interruptsEnabled = true;
  #lastLen = 0;
  /** IN_ORDER: avail position of the oldest buffer in flight. */
  #reapPos = 0;
  /** IN_ORDER: buffers left in the batch being reaped (0: read the next used element). */
  #batchLeft = 0;
  /** IN_ORDER: the used length of the batch's last buffer. */
  #batchLen = 0;

  /**
   * Map the ring and initialise its memory (everything zero: flags, indices, events).
   *
   * @param mem guest memory.
   * @param layout queue size and the three area addresses.
   * @param features negotiated ring features (see `ringFeatures`).
   * @param options indirect table area.
   * @throws QueueConfigError for an invalid layout; RangeError naming the option for an invalid
   *   indirect area.
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    features: RingFeatures,
    options: SplitDriverOptions = {},
  ) {
    const views: SplitRingViews = mapSplitRing(mem, layout, "driver");
    this.#desc = views.desc;
    this.#avail = views.avail;
    this.#used16 = views.used16;
    this.#used32 = views.used32;
    const size = layout.size;
    this.size = size;
    this.features = features;
    this.#inOrder = features.inOrder === true;
    this.#eventIdx = features.eventIdx === true;
    this.#mask = size - 1;
    this.#usedEventAt = 2 + size;
    this.#availEventAt = 2 + 4 * size;
    const ind = options.indirect;
    this.#indAddr = 0;
    this.#indMax = 0;
    if (ind !== undefined) {
      if (!Number.isInteger(ind.maxEntries) || ind.maxEntries < 2 || ind.maxEntries > size) {
        throw new RangeError(
          `options.indirect.maxEntries must be an integer in [2, queue size ${size}], got ${ind.maxEntries}`,
        );
      }
      if (!Number.isSafeInteger(ind.addr) || ind.addr < 0 || ind.addr % 16 !== 0) {
        throw new RangeError(
          `options.indirect.addr must be a 16-aligned non-negative safe integer, got ${ind.addr}`,
        );
      }
      const bytes = indirectAreaSize(size, ind.maxEntries);
      if (!mem.check(ind.addr, bytes, "write")) {
        throw new RangeError(
          `options.indirect area [0x${ind.addr.toString(16)}, +${bytes}) is not writable guest memory`,
        );
      }
      // §2.7.5.3.1: INDIRECT only when negotiated; the area is simply unused otherwise.
      if (features.indirect) {
        try {
          this.#ind = mem.u32View(ind.addr, bytes / 4, "write");
        } catch (e) {
          if (!(e instanceof GuestMemoryError)) throw e;
          throw new RangeError(`options.indirect area must lie in one memory region: ${e.message}`);
        }
        this.#indAddr = ind.addr;
        this.#indMax = ind.maxEntries;
      }
    }
    this.#next = new Uint16Array(size);
    this.#descCount = new Uint16Array(size);
    this.#writable = new Uint32Array(size);
    this.#state = new Uint8Array(size);
    this.#addedIn = new Float64Array(size);
    this.#availHeads = new Uint16Array(size);
    this.#tokens = new Array<T | undefined>(size).fill(undefined);
    this.#numFree = size;
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

  /**
   * Add one chain: `readable` segments (device reads) then `writable` ones (device writes),
   * with `token` to be returned by {@link SplitDriverQueue.reap}.
   *
   * Places readable segments first, then writable ones (VIRTIO 1.3 §2.7.4.2), each in a free
   * descriptor linked by VIRTQ_DESC_F_NEXT (§2.7.13.1), or, with VIRTIO_F_INDIRECT_DESC and an
   * indirect area, a chain of 2 to `maxEntries` segments in the head's indirect table referred
   * to by one ring descriptor carrying only VIRTQ_DESC_F_INDIRECT (§2.7.5.3.1: never with NEXT,
   * never nested). The head goes into the next available ring entry (§2.7.13.2); none of this is
   * visible to the device before {@link SplitDriverQueue.publish}.
   *
   * @throws RangeError naming the argument: `token` undefined; no segment; more segments than
   *   the queue size (§2.7.5.3.1); a segment whose `addr` is not a non-negative safe integer or
   *   whose `len` is not an integer in [0, 2^32); segments adding up to 2^32 bytes or more
   *   (§2.7.5.2, and `len` in the used ring is a le32).
   * @throws TypeError if a segment is not an object.
   * @returns false, adding nothing, if there are not enough free descriptors.
   */
  add(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    // Fast paths, direct descriptors or an indirect table, each segment checked as it is written.
    // Anything else, or any argument they refuse, goes to #addChecked, which checks every argument
    // before writing (and throws the error naming the argument).
    const n = readable.length + writable.length;
    if (token !== undefined && n > 0) {
      if (this.#ind !== undefined && n > 1 && n <= this.#indMax) {
        if (this.#numFree > 0 && this.#addIndirect(readable, writable, token)) return true;
      } else if (n <= this.#numFree && this.#addDirect(readable, writable, token)) return true;
    }
    return this.#addChecked(readable, writable, token);
  }

  /**
   * Write a chain of direct descriptors, checking each segment as it is written (each field read
   * once, and the value checked is the value written). Needs a defined `token` and 1 to
   * `numFree` segments. Returns false when a segment or the total is refused: nothing changed
   * then but the content of free descriptors, which the device does not read.
   */
  #addDirect(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    const nr = readable.length;
    const n = nr + writable.length;
    const desc = this.#desc;
    const next = this.#next;
    const head = this.#freeHead;
    let idx = head;
    let last = head;
    let total = 0;
    let writableBytes = 0;
    // One loop over both lists, each descriptor written with NEXT and the shadow link (what the
    // free list already holds: the chain keeps it, so freeing walks the same links without
    // reading the shared table); the last one's flags word is rewritten after the loop. Small on
    // purpose: V8 inlines a callee only below a bytecode size, and this one must fit into `add`.
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i] : writable[i - nr];
      if (typeof s !== "object" || s === null) return false;
      const addr = s.addr;
      const len = s.len;
      if (!segmentValuesOk(addr, len)) return false;
      total += len;
      if (i >= nr) writableBytes += len;
      last = idx;
      idx = next[idx]!;
      writeDesc(desc, last, addr, len, i < nr ? F_NEXT : F_NEXT | F_WRITE, idx);
    }
    // The last descriptor: no NEXT, next 0 (§2.7.5: `next` is meaningful only with NEXT).
    desc[last * 4 + 3] = n > nr ? F_WRITE : 0;
    // §2.7.5.2 (and the le32 used length): the whole chain below 2^32 bytes.
    if (total >= TWO_32) return false;
    this.#freeHead = idx;
    this.#record(head, n, writableBytes, token);
    return true;
  }

  /**
   * Write a chain of 2 to `maxEntries` segments into its head's indirect table (§2.7.5.3),
   * checking each segment as it is written, then the one ring descriptor that refers to it.
   * Needs a defined `token`, a free descriptor and the indirect area. Returns false when a
   * segment or the total is refused: nothing changed then but the free head's own table slot,
   * which the device does not read.
   */
  #addIndirect(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    const ind = this.#ind!;
    const nr = readable.length;
    const n = nr + writable.length;
    // The head's own slot: free while the head is free, so no other chain uses it.
    const head = this.#freeHead;
    const base = head * this.#indMax;
    let total = 0;
    let writableBytes = 0;
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i] : writable[i - nr];
      if (typeof s !== "object" || s === null) return false;
      const addr = s.addr;
      const len = s.len;
      if (!segmentValuesOk(addr, len)) return false;
      total += len;
      if (i >= nr) writableBytes += len;
      // §2.7.5.3: entries chained by next from index 0; WRITE marks device-writable entries.
      writeDesc(ind, base + i, addr, len, i >= nr ? F_WRITE | F_NEXT : F_NEXT, i + 1);
    }
    // The last entry: no NEXT, next 0.
    ind[(base + n - 1) * 4 + 3] = n > nr ? F_WRITE : 0;
    // §2.7.5.2 (and the le32 used length): the whole chain below 2^32 bytes.
    if (total >= TWO_32) return false;
    // The one ring descriptor, carrying only INDIRECT (§2.7.5.3.1: never with NEXT, never
    // nested; the referring descriptor's WRITE is ignored, §2.7.5.3.2).
    writeDesc(this.#desc, head, this.#indAddr + base * 16, n * 16, F_INDIRECT, 0);
    this.#freeHead = this.#next[head]!;
    this.#record(head, 1, writableBytes, token);
    return true;
  }

  /**
   * `add` with every argument checked first (checkChainArgs): indirect chains, a full ring,
   * and every argument the fast path refuses.
   */
  #addChecked(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    checkChainArgs(readable, writable, token, this.size, "§2.7.5.3.1");
    const n = readable.length + writable.length;
    const indirect = this.#ind !== undefined && n > 1 && n <= this.#indMax;
    const needed = indirect ? 1 : n;
    if (this.#numFree < needed) return false;
    // Every argument passed the checks, so the fast writers take them all (unless a getter
    // answered differently the second time).
    if (
      indirect
        ? this.#addIndirect(readable, writable, token)
        : this.#addDirect(readable, writable, token)
    ) {
      return true;
    }
    throw new RangeError("readable and writable changed while add() was reading them");
  }

  /** Shadow bookkeeping of a chain just written at `head`, and its avail ring entry. */
  #record(head: number, needed: number, writableBytes: number, token: T): void {
    this.#numFree -= needed;
    this.#descCount[head] = needed;
    this.#writable[head] = writableBytes;
    this.#tokens[head] = token;
    this.#state[head] = ADDED;
    // §2.7.13.2: avail->ring[(avail->idx + added++) % qsz] = head. A plain write: the device
    // reads it only after seeing the avail.idx that publish() stores. The slot is free: at most
    // `size` chains are in flight and each holds a descriptor until the device has read its
    // entry (§2.7.13 "this is not possible since the ring buffer is the same size").
    const pos = this.#availIdx;
    const slot = pos & this.#mask;
    this.#avail[2 + slot] = head;
    if (this.#inOrder) this.#availHeads[slot] = head;
    this.#addedIn[head] = this.#generation;
    this.#availIdx = (pos + 1) & 0xffff;
  }

  /**
   * Make the chains added since the last publish visible to the device, and decide the kick.
   *
   * Stores `avail.idx` with `Atomics.store` after the plain writes of descriptors and ring
   * entries (VIRTIO 1.3 §2.7.13.3.1: a barrier before the idx update; a seq-cst store is a
   * release), then decides the kick (§2.7.10.1): with VIRTIO_F_EVENT_IDX,
   * `vring_need_event(avail_event, new idx, idx at the previous publish)`; without it, kick
   * unless the device set VIRTQ_USED_F_NO_NOTIFY. Returns false when nothing was added since
   * the previous publish.
   *
   * @returns whether the device must be notified (kicked).
   */
  publish(): boolean {
    const newIdx = this.#availIdx;
    const old = this.#publishedIdx;
    if (newIdx === old) return false;
    this.#publishedIdx = newIdx;
    this.#generation++;
    Atomics.store(this.#avail, 1, newIdx);
    // §2.7.13.4.1: a barrier between the idx store and the read of flags / avail_event, or a
    // wakeup is lost: we read a stale avail_event (no kick) while the device, which stores
    // avail_event and then re-reads avail.idx, reads our stale idx (and sleeps). Linux puts
    // virtio_mb() here because a store followed by a load may be reordered (store buffers).
    // Seq-cst Atomics give the same: all of them fall into one total order consistent with each
    // agent's program order, so this load cannot be ordered before the store above, and one of
    // the two sides is bound to see the other's write.
    if (this.#eventIdx) {
      return vringNeedEvent(Atomics.load(this.#used16, this.#availEventAt), newIdx, old);
    }
    return (Atomics.load(this.#used16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * @inheritdoc
   * @throws UsedIndexJumpError if `used.idx` is more than the queue size ahead of what was reaped.
   * @throws UsedIdOutOfRangeError if the used element's id is ≥ the queue size.
   * @throws UsedIdNotInFlightError if the id is not the head of a published chain in flight.
   * @throws UsedLenTooLargeError if the used length exceeds the chain's writable bytes.
   */
  reap(): T | undefined {
    if (this.#inOrder) return this.#reapInOrder();
    const last = this.#lastUsed;
    if (last === this.#shadowUsed) {
      // Acquire: pairs with the device's store of used.idx after it wrote the elements, so the
      // plain reads of every element before that index see what the device wrote (§2.7.8.2).
      const usedIdx = Atomics.load(this.#used16, 1);
      const pending = (usedIdx - last) & 0xffff;
      if (pending === 0) return undefined;
      if (pending > this.size) throw new UsedIndexJumpError(usedIdx, last, this.size);
      this.#shadowUsed = usedIdx;
    }
    const slot = (last & this.#mask) << 1;
    // Read once into locals: the device may change the element while we look at it.
    const used32 = this.#used32;
    const id = used32[slot]!;
    const len = used32[slot + 1]!;
    if (id >= this.size) throw new UsedIdOutOfRangeError(id, this.size);
    // In flight and published: added in an earlier publish generation than the current one
    // (one added since the last publish has the current generation).
    if (this.#state[id] !== ADDED || this.#addedIn[id] === this.#generation) {
      throw new UsedIdNotInFlightError(id);
    }
    const offered = this.#writable[id]!;
    if (len > offered) throw new UsedLenTooLargeError(id, len, offered);
    const token = this.#tokens[id] as T;
    this.#tokens[id] = undefined;
    // Free the chain's descriptors, following the private shadow links only (the count and
    // writable bytes of a free head are never read, so they are left as they are).
    const count = this.#descCount[id]!;
    const links = this.#next;
    let tail = id;
    for (let i = count - 1; i > 0; i--) tail = links[tail]!;
    links[tail] = this.#freeHead;
    this.#freeHead = id;
    this.#numFree += count;
    this.#state[id] = FREE;
    const next = (last + 1) & 0xffff;
    this.#lastUsed = next;
    this.#lastLen = len;
    if (this.#eventIdx && this.#interruptsEnabled && next === this.#shadowUsed) {
      // §2.7.7.1: interrupt when the device writes the entry at the index we reap next. Written
      // only once this reap took the last element known to be used (Linux writes it on every
      // get_buf): an index before that names an element the device has already used, so it
      // could only bring an interrupt for elements this loop reaps anyway. A driver that waits
      // after this reap has the last value stored, and the next `reap` loads used.idx after it:
      // the Dekker order of enableInterrupts.
      Atomics.store(this.#avail, this.#usedEventAt, next);
    }
    return token;
  }

  /** `reap` with VIRTIO_F_IN_ORDER: buffers come back in avail order, possibly batched. */
  #reapInOrder(): T | undefined {
    const last = this.#lastUsed;
    const mask = this.#mask;
    if (this.#batchLeft === 0) {
      const usedIdx = Atomics.load(this.#used16, 1);
      const pending = (usedIdx - last) & 0xffff;
      if (pending === 0) return undefined;
      if (pending > this.size) throw new UsedIndexJumpError(usedIdx, last, this.size);
      const slot = (last & mask) << 1;
      const id = this.#used32[slot]!;
      const len = this.#used32[slot + 1]!;
      if (id >= this.size) throw new UsedIdOutOfRangeError(id, this.size);
      // §2.7.9: the id names the batch's last buffer; the batch starts at the oldest one and
      // cannot be longer than what used.idx covers or what is published. Bounded by the size.
      const published = (this.#publishedIdx - this.#reapPos) & 0xffff;
      const limit = Math.min(pending, published);
      let k = 0;
      while (k < limit && this.#availHeads[(this.#reapPos + k) & mask] !== id) k++;
      if (k === limit) throw new UsedIdNotInFlightError(id);
      const offered = this.#writable[id]!;
      if (len > offered) throw new UsedLenTooLargeError(id, len, offered);
      this.#batchLeft = k + 1;
      this.#batchLen = len;
    }
    const head = this.#availHeads[this.#reapPos & mask]!;
    // §2.7.9: buffers skipped by a batch were used completely.
    const len = --this.#batchLeft === 0 ? this.#batchLen : this.#writable[head]!;
    const token = this.#tokens[head] as T;
    this.#tokens[head] = undefined;
    // §2.7.5.2: descriptors are taken in ring order and come back in the same order, so the
    // free ones are always the `numFree` that follow the in-flight ones; the links stay fixed.
    this.#numFree += this.#descCount[head]!;
    this.#state[head] = FREE;
    this.#reapPos = (this.#reapPos + 1) & 0xffff;
    this.#lastUsed = (last + 1) & 0xffff;
    this.#lastLen = len;
    if (this.#eventIdx && this.#interruptsEnabled) {
      Atomics.store(this.#avail, this.#usedEventAt, this.#lastUsed);
    }
    return token;
  }

  /**
   * Ask the device for used buffer notifications (interrupts) again.
   *
   * Without VIRTIO_F_EVENT_IDX clears VIRTQ_AVAIL_F_NO_INTERRUPT; with it, writes `used_event`
   * = the next index to reap (§2.7.7.1; `flags` stays 0). Then re-reads `used.idx`: a device
   * that pushed before seeing our wish did not interrupt, so the caller must reap again.
   *
   * @returns true if used buffers are already pending.
   */
  enableInterrupts(): boolean {
    this.#interruptsEnabled = true;
    const avail = this.#avail;
    if (this.features.eventIdx) Atomics.store(avail, this.#usedEventAt, this.#lastUsed);
    else Atomics.and(avail, 0, ~VIRTQ_AVAIL_F_NO_INTERRUPT & 0xffff);
    // Seq-cst store then load: the same Dekker ordering as in publish().
    return Atomics.load(this.#used16, 1) !== this.#lastUsed;
  }

  /**
   * Ask the device not to interrupt while the driver is polling.
   *
   * Without VIRTIO_F_EVENT_IDX sets VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7.1: flags 0 or 1). With
   * it `flags` MUST stay 0 (§2.7.7.1), so `used_event` is set one behind the next index to
   * reap: the device's used index does not come back to it before 65536 more entries.
   * Suppression is a hint; spurious interrupts remain possible and harmless.
   */
  disableInterrupts(): void {
    this.#interruptsEnabled = false;
    if (this.features.eventIdx) {
      Atomics.store(this.#avail, this.#usedEventAt, (this.#lastUsed - 1) & 0xffff);
    } else Atomics.or(this.#avail, 0, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /**
   * Ring indices: `availIdx` is the avail index the next {@link SplitDriverQueue.add} uses
   * (equal to `avail.idx` once published), `usedIdx` the next used index to reap. The wrap
   * counters are unused on a split ring (always true).
   */
  getState(): QueueState {
    return { availIdx: this.#availIdx, usedIdx: this.#lastUsed, availWrap: true, usedWrap: true };
  }

  /**
   * Continue at other ring indices, e.g. to match a device restored elsewhere, or in tests of
   * the 16-bit wrap. Only while nothing is in flight (every descriptor free): the driver then
   * owns the whole ring, so it stores `avail.idx` = `state.availIdx` and, as when it initialises
   * the ring, `used.idx` = `state.usedIdx` (and `used_event` with EVENT_IDX, interrupts on).
   *
   * @throws RangeError if chains are in flight or an index is not an integer in [0, 65535].
   */
  setState(state: QueueState): void {
    if (this.#numFree !== this.size || this.#availIdx !== this.#publishedIdx) {
      throw new RangeError("setState needs an idle queue: chains are still in flight");
    }
    for (const k of ["availIdx", "usedIdx"] as const) {
      const x = state[k];
      if (!Number.isInteger(x) || x < 0 || x > 0xffff) {
        throw new RangeError(`state.${k} must be an integer in [0, 65535], got ${x}`);
      }
    }
    this.#availIdx = state.availIdx;
    this.#publishedIdx = state.availIdx;
    this.#lastUsed = state.usedIdx;
    this.#shadowUsed = state.usedIdx;
    this.#reapPos = state.availIdx;
    this.#batchLeft = 0;
    this.#interruptsEnabled = true;
    Atomics.store(this.#avail, 0, 0);
    if (this.features.eventIdx) Atomics.store(this.#avail, this.#usedEventAt, state.usedIdx);
    Atomics.store(this.#used16, 1, state.usedIdx);
    Atomics.store(this.#avail, 1, state.availIdx);
  }

  /**
   * Forget all in-flight chains and reinitialise the ring memory (driver-side reset).
   *
   * Zeroes the descriptor table and both rings, so `avail.flags`, `avail.idx`, `used_event`,
   * `used.flags` (§2.7.10.1: the driver MUST initialise it to 0), `used.idx` and `avail_event`
   * start at 0; every descriptor is free and interrupts are enabled.
   */
  reset(): void {
    this.#desc.fill(0);
    this.#avail.fill(0);
    this.#used16.fill(0);
    this.#used32.fill(0);
    const size = this.size;
    // The last link (= size) is never followed: add checks numFree before taking descriptors.
    for (let i = 0; i < size; i++) this.#next[i] = i + 1;
    // §2.7.5.2: with IN_ORDER the last descriptor's `next` is 0 (the table wraps).
    if (this.features.inOrder) this.#next[size - 1] = 0;
    this.#descCount.fill(0);
    this.#writable.fill(0);
    this.#state.fill(FREE);
    this.#tokens.fill(undefined);
    this.#freeHead = 0;
    this.#numFree = size;
    this.#availIdx = 0;
    this.#publishedIdx = 0;
    this.#lastUsed = 0;
    this.#shadowUsed = 0;
    this.#lastLen = 0;
    this.#interruptsEnabled = true;
    this.#reapPos = 0;
    this.#batchLeft = 0;
    this.#batchLen = 0;
  }
}

/** Write one 16-byte descriptor (le64 addr, le32 len, le16 flags, le16 next) as 4 u32 words. */
function writeDesc(
  words: Uint32Array,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
): void {
  const w = i * 4; // not i << 2: indirect areas can have 2^30 descriptors
  // The store converts with ToUint32, which keeps the low 32 bits of the (safe integer) addr;
  // the high word is 0 below 2^32, where a division would cost a float divide and a floor.
  words[w] = addr;
  words[w + 1] = addr > 0xffffffff ? Math.floor(addr / TWO_32) : 0;
  words[w + 2] = len;
  words[w + 3] = (flags | (next << 16)) >>> 0;
}
