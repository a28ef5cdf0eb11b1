import { type GuestMemory, GuestMemoryError } from "@virtio-ts/memory";
import { PackedDescFlags, PackedEventFlags } from "@virtio-ts/spec";
import { checkChainArgs, segmentValuesOk } from "./chain-args.js";
import {
  EventOffsetOutOfRangeError,
  UsedIdNotInFlightError,
  UsedLenTooLargeError,
} from "./errors.js";
import {
  mapPackedRing,
  type PackedRingViews,
  packedNeedEvent,
  packedOffWrap,
} from "./packed-layout.js";
import { inSharedMemory } from "./shared-view.js";
import { type IndirectArea, indirectAreaSize } from "./split-driver.js";
import type { DriverQueue, QueueLayout, QueueState, RingFeatures, Segment } from "./types.js";

const F_NEXT = PackedDescFlags.NEXT;
const F_WRITE = PackedDescFlags.WRITE;
const F_INDIRECT = PackedDescFlags.INDIRECT;
const F_AVAIL = PackedDescFlags.AVAIL;
const F_USED = PackedDescFlags.USED;
const EV_ENABLE = PackedEventFlags.ENABLE;
const EV_DISABLE = PackedEventFlags.DISABLE;
const EV_DESC = PackedEventFlags.DESC;
const TWO_32 = 4294967296;

/** Options of {@link PackedDriverQueue}. */
export interface PackedDriverOptions {
  /**
   * Memory for indirect tables, one slot of `maxEntries` descriptors per buffer ID (the area is
   * `indirectAreaSize(queue size, maxEntries)` bytes). With VIRTIO_F_INDIRECT_DESC negotiated
   * and this set, every chain of 2 to `maxEntries` segments uses one ring descriptor.
   */
  readonly indirect?: IndirectArea;
}

/**
 * Driver side of a packed virtqueue (VIRTIO 1.3 §2.8): writes available descriptors, exposes
 * them at {@link PackedDriverQueue.publish}, decides kicks, reaps used descriptors.
 *
 * Drivers distrust devices too: buffer IDs, descriptor counts, writable sizes and tokens live in
 * a private shadow (never read back from the ring). A used descriptor is recognised only when its
 * AVAIL and USED bits both equal the driver's used wrap counter (§2.8.1), so stale descriptors
 * of an earlier lap never look used; its ID must be in flight and its length (when WRITE is set)
 * no larger than what was offered, or a `RingError` is raised. The next used position moves by
 * the shadow descriptor count of the returned ID (§2.8.6), never by anything the device wrote.
 *
 * Publication: `add` writes every descriptor of a chain except the first one's `id`/`flags`
 * word; `publish` stores those words with `Atomics.store`, in ring order, so a device never sees
 * a partial list (§2.8.6, §2.8.21.1) and nothing is visible before `publish`, as on a split ring.
 *
 * With VIRTIO_F_IN_ORDER, `reap` understands batches (§2.8.8): one used descriptor, written
 * over the first descriptor of the batch, names the last buffer of the batch; the buffers
 * before it are returned in order as completely written, and the used position skips all
 * their descriptors. The named ID must be one of the published buffers in flight, or
 * {@link UsedIdNotInFlightError} is raised.
 *
 * @typeParam T the token type returned by `reap` (anything but `undefined`).
 * @example
 * ```ts
 * const q = new PackedDriverQueue<string>(mem, layout, NO_RING_FEATURES);
 * q.add([{ addr: 0x8000, len: 16 }], [{ addr: 0x9000, len: 512 }], "req-1");
 * if (q.publish()) kick();
 * // ... after the device's interrupt:
 * const token = q.reap(); // "req-1"; q.lastLen holds the written length
 * ```
 */
export class PackedDriverQueue<T> implements DriverQueue<T> {
  /** @inheritdoc */
  readonly size: number;
  /** The negotiated ring features. */
  readonly features: RingFeatures;
  readonly #mem: GuestMemory;
  readonly #v: PackedRingViews;
  readonly #desc: Uint32Array;
  /**
   * The same ring as Int32 words, for the id/flags word: `Atomics` on it take and return Smis
   * (on a Uint32Array a word with USED set, bit 31, is a heap number, boxed for every call).
   */
  readonly #descI32: Int32Array;
  /** Whether the ring is in shared memory: its id/flags words are then accessed with `Atomics`. */
  readonly #atomic: boolean;
  /** `features.inOrder` / `features.eventIdx`, as own fields for the hot paths. */
  readonly #inOrder: boolean;
  readonly #eventIdx: boolean;
  readonly #indirect: IndirectArea | undefined;
  /**
   * The indirect area as u32 words, when it lies in one memory region (else undefined, and the
   * tables are written through `mem.writeU32`).
   */
  readonly #indWords: Uint32Array | undefined;
  /** Stack of free buffer IDs: `[0, #idTop)`. */
  readonly #freeIds: Uint16Array;
  #idTop = 0;
  /** Ring descriptors each in-flight buffer ID occupies. */
  readonly #descCount: Uint16Array;
  /** Writable bytes each in-flight buffer offers. */
  readonly #writable: Float64Array;
  readonly #tokens: (T | undefined)[];
  /** First descriptors added but not yet published: ring position and id/flags word. */
  readonly #pendingPos: Uint16Array;
  readonly #pendingWord: Int32Array;
  #pendingCount = 0;
  /** Ring descriptors added since the last publish (at most the queue size). */
  #addedSincePublish = 0;
  #numFree: number;
  #nextAvail = 0;
  #availWrap = true;
  #nextUsed = 0;
  #usedWrap = true;
  #interruptsEnabled = true;
  #lastLen = 0;
  /** IN_ORDER: buffer IDs in the order they were added (a ring of `size` entries). */
  readonly #order: Uint16Array;
  #orderFirst = 0;
  #orderCount = 0;
  /** IN_ORDER: buffers left in the batch being reaped (0: read the next used descriptor). */
  #batchLeft = 0;
  /** IN_ORDER: the used length of the batch's last buffer. */
  #batchLen = 0;

  /**
   * @param mem guest memory.
   * @param layout where the ring and the event structures are; the ring memory is zeroed here.
   * @param features negotiated ring features.
   * @param options indirect table area.
   * @throws QueueConfigError for an invalid layout; RangeError for an invalid indirect area.
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    features: RingFeatures,
    options: PackedDriverOptions = {},
  ) {
    this.#v = mapPackedRing(mem, layout, "driver");
    this.#desc = this.#v.desc;
    this.#descI32 = new Int32Array(this.#desc.buffer, this.#desc.byteOffset, this.#desc.length);
    this.#atomic = inSharedMemory(this.#descI32);
    this.#mem = mem;
    this.size = layout.size;
    this.features = features;
    this.#inOrder = features.inOrder === true;
    this.#eventIdx = features.eventIdx === true;
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
    let words: Uint32Array | undefined;
    if (ind !== undefined && features.indirect) {
      try {
        words = mem.u32View(ind.addr, indirectAreaSize(layout.size, ind.maxEntries) / 4, "write");
      } catch (e) {
        if (!(e instanceof GuestMemoryError)) throw e;
      }
    }
    this.#indWords = words;
    this.#freeIds = new Uint16Array(layout.size);
    this.#descCount = new Uint16Array(layout.size);
    this.#writable = new Float64Array(layout.size);
    this.#tokens = new Array<T | undefined>(layout.size).fill(undefined);
    this.#pendingPos = new Uint16Array(layout.size);
    this.#pendingWord = new Int32Array(layout.size);
    this.#order = new Uint16Array(features.inOrder ? layout.size : 0);
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

  /**
   * Add one chain: `readable` segments (device reads) then `writable` ones (device writes). It
   * takes a free buffer ID and `readable.length + writable.length` ring descriptors (1 with an
   * indirect table) and becomes visible to the device at the next
   * {@link PackedDriverQueue.publish}. The ID is written into every descriptor (§2.8.6 needs it
   * in the last one).
   * @returns false if there is not enough room (nothing was added).
   * @throws RangeError naming the argument (see the split driver): no segment, more segments than
   *   the queue size, a bad `addr`/`len`, or segments adding up to 2^32 bytes or more (§2.7.5.2,
   *   the same total the packed device enforces); TypeError if a segment is not an object.
   */
  add(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    // Fast paths, direct descriptors or an indirect table, each segment checked as it is written.
    // Anything else, or any argument they refuse, goes to #addChecked, which checks every argument
    // before writing (and throws the error naming the argument).
    const n = readable.length + writable.length;
    if (token !== undefined && n > 0) {
      const ind = this.#indirect;
      if (this.features.indirect && ind !== undefined && n > 1 && n <= ind.maxEntries) {
        if (this.#numFree > 0 && this.#addIndirect(readable, writable, token)) return true;
      } else if (n <= this.#numFree && this.#addDirect(readable, writable, token)) return true;
    }
    return this.#addChecked(readable, writable, token);
  }

  /**
   * Write a list of direct descriptors, checking each segment as its body is written (each field
   * read once, and the value checked is the value written); the flag words, which make
   * descriptors look available, only once every segment is accepted. Needs a defined `token` and
   * 1 to `numFree` segments. Returns false when a segment or the total is refused: nothing
   * changed then but bodies in free slots whose flags still say "not available".
   */
  #addDirect(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    const nr = readable.length;
    const n = nr + writable.length;
    const desc = this.#desc;
    const size = this.size;
    const first = this.#nextAvail;
    let pos = first;
    let total = 0;
    let writableBytes = 0;
    // One loop over both lists (small on purpose: V8 inlines a callee only below a bytecode
    // size, and this one must fit into `add`).
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i] : writable[i - nr];
      if (typeof s !== "object" || s === null) return false;
      const addr = s.addr;
      const len = s.len;
      if (!segmentValuesOk(addr, len)) return false;
      writeBody(desc, pos, addr, len);
      total += len;
      if (i >= nr) writableBytes += len;
      if (++pos === size) pos = 0;
    }
    // §2.7.5.2 (and the le32 used length): the whole chain below 2^32 bytes.
    if (total >= TWO_32) return false;
    const id = this.#freeIds[--this.#idTop]!;
    // §2.8.21.1: WRITE for device-writable elements, AVAIL = wrap counter, USED = inverse;
    // §2.8.6: NEXT on all but the last; the ID in every descriptor. The first descriptor's word
    // is kept for publish(); the rest get a plain store, made visible by the first one's
    // release store in publish().
    pos = first;
    let w = this.#availWrap;
    const last = n - 1;
    let firstWord = 0;
    for (let i = 0; i < n; i++) {
      const word = descWord(id, (i < last ? F_NEXT : 0) | (i >= nr ? F_WRITE : 0) | availBits(w));
      if (i === 0) firstWord = word;
      else desc[(pos << 2) + 3] = word;
      if (++pos === size) {
        pos = 0;
        w = !w;
      }
    }
    this.#record(id, first, pos, w, firstWord, n, writableBytes, token);
    return true;
  }

  /**
   * Write a list of 2 to `maxEntries` segments into its buffer ID's indirect table (§2.8.7),
   * checking each segment as it is written, then the one ring descriptor that refers to it.
   * Needs a defined `token`, a free descriptor and the table area as words. Returns false when
   * the area is not one view or a segment or the total is refused: nothing changed then but
   * the free ID's own table slot, which the device does not read.
   */
  #addIndirect(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    const words = this.#indWords;
    if (words === undefined) return false;
    const nr = readable.length;
    const n = nr + writable.length;
    const id = this.#freeIds[this.#idTop - 1]!; // taken below, once every segment is accepted
    const base = id * this.#indirect!.maxEntries;
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
      // Table entries have the ring descriptors' layout; §2.8.19: WRITE is the only flag
      // allowed in an indirect descriptor, and the ID is reserved.
      writeBody(words, base + i, addr, len);
      words[(base + i) * 4 + 3] = i >= nr ? F_WRITE << 16 : 0;
    }
    // §2.7.5.2 (and the le32 used length): the whole list below 2^32 bytes.
    if (total >= TWO_32) return false;
    this.#idTop--;
    this.#writeIndirectHead(id, this.#indirect!.addr + base * 16, n, writableBytes, token);
    return true;
  }

  /**
   * `add` with every argument checked first (checkChainArgs): indirect chains, a full ring,
   * and every argument the fast path refuses.
   */
  #addChecked(readable: readonly Segment[], writable: readonly Segment[], token: T): boolean {
    // §2.8.17: a driver MUST NOT create a descriptor list longer than the queue size.
    const writableBytes = checkChainArgs(readable, writable, token, this.size, "§2.8.17");
    const nr = readable.length;
    const n = nr + writable.length;
    const ind = this.#indirect;
    const useIndirect = this.features.indirect && ind !== undefined && n > 1 && n <= ind.maxEntries;
    const needed = useIndirect ? 1 : n;
    // §2.8.17: room for the whole list before its first descriptor is made available. A free
    // descriptor implies a free ID: every buffer in flight holds at least one descriptor.
    if (this.#numFree < needed) return false;

    if (!useIndirect || this.#indWords !== undefined) {
      // Every argument passed the checks, so the fast writers take them all (unless a getter
      // answered differently the second time).
      const ok = useIndirect
        ? this.#addIndirect(readable, writable, token)
        : this.#addDirect(readable, writable, token);
      if (ok) return true;
      throw new RangeError("readable and writable changed while add() was reading them");
    }
    // An area across memory regions: one ring descriptor refers to the ID's own table slot
    // (§2.8.7), written entry by entry through the memory's checked accessors.
    const id = this.#freeIds[--this.#idTop]!;
    const table = ind.addr + id * ind.maxEntries * 16;
    const mem = this.#mem;
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i]! : writable[i - nr]!;
      // §2.8.19: WRITE is the only flag allowed in an indirect descriptor; the ID is reserved.
      const at = table + i * 16;
      mem.writeU32(at, s.addr % TWO_32);
      mem.writeU32(at + 4, Math.floor(s.addr / TWO_32));
      mem.writeU32(at + 8, s.len);
      mem.writeU32(at + 12, i >= nr ? F_WRITE << 16 : 0);
    }
    this.#writeIndirectHead(id, table, n, writableBytes, token);
    return true;
  }

  /** The one ring descriptor referring to buffer `id`'s table of `n` entries at `table`. */
  #writeIndirectHead(id: number, table: number, n: number, writableBytes: number, token: T): void {
    const first = this.#nextAvail;
    let pos = first;
    let w = this.#availWrap;
    writeBody(this.#desc, pos, table, n * 16);
    const firstWord = descWord(id, F_INDIRECT | availBits(w));
    if (++pos === this.size) {
      pos = 0;
      w = !w;
    }
    this.#record(id, first, pos, w, firstWord, 1, writableBytes, token);
  }

  /**
   * Bookkeeping of a list just written from ring position `first` (its head word kept for
   * publish), with the next free position `pos` and wrap counter `w` after it.
   */
  #record(
    id: number,
    first: number,
    pos: number,
    w: boolean,
    firstWord: number,
    needed: number,
    writableBytes: number,
    token: T,
  ): void {
    this.#nextAvail = pos;
    this.#availWrap = w;
    // At most one pending entry per descriptor, so the arrays (queue size) never overflow.
    this.#pendingPos[this.#pendingCount] = first;
    this.#pendingWord[this.#pendingCount] = firstWord;
    this.#pendingCount++;
    this.#addedSincePublish += needed;
    this.#numFree -= needed;
    this.#descCount[id] = needed;
    this.#writable[id] = writableBytes;
    this.#tokens[id] = token;
    if (this.#inOrder) {
      // Fewer than `size` buffers were in flight (this one found a free descriptor).
      this.#order[(this.#orderFirst + this.#orderCount) % this.size] = id;
      this.#orderCount++;
    }
  }

  /**
   * Make added chains visible to the device and say whether it must be notified (kicked).
   * Reads the Device Event Suppression structure (VIRTIO 1.3 §2.8.10): ENABLE → kick, DISABLE →
   * no kick, DESC (only with EVENT_IDX) → kick iff the published descriptors include the named
   * one. DESC without EVENT_IDX and the reserved value 3 are treated like ENABLE.
   * @throws EventOffsetOutOfRangeError if DESC names an offset ≥ queue size (the chains are
   *   published all the same; treat the device as broken).
   */
  publish(): boolean {
    const k = this.#pendingCount;
    if (k === 0) return false;
    const desc = this.#desc;
    // The lists are made available in reverse ring order: every head but the first with a
    // plain store, the first one last with an `Atomics.store` (a release). A device processes
    // descriptors in ring order (§2.8.12), so it reaches any of these heads only after its
    // `Atomics.load` of the first one has seen that store, which makes every write before it
    // (the later heads and every list's body) visible to it: §2.8.21.1, "the device MAY access
    // the descriptor and any following descriptors the driver created". Each list is still
    // complete before its own head (§2.8.17), and the batch costs one `Atomics` call (in V8
    // each is a builtin call, not an instruction).
    const pos = this.#pendingPos;
    const word = this.#pendingWord;
    for (let j = k - 1; j > 0; j--) desc[(pos[j]! << 2) + 3] = word[j]!;
    // Release (§2.8.21.1.1): the first descriptor's flags are stored after every other field.
    Atomics.store(this.#descI32, (pos[0]! << 2) + 3, word[0]!);
    this.#pendingCount = 0;
    const added = this.#addedSincePublish;
    this.#addedSincePublish = 0;
    // §2.8.21.3.1: the seq-cst loads below are ordered after the flag stores above (the full
    // barrier before reading the Device Area), so either the device sees our descriptors when it
    // re-checks after enabling notifications, or we see its request to be notified.
    const ev = this.#v.deviceEvent;
    const flags = Atomics.load(ev, 1) & 3;
    if (flags === EV_DISABLE) return false;
    if (flags !== EV_DESC || !this.features.eventIdx) return true;
    const offWrap = Atomics.load(ev, 0);
    if ((offWrap & 0x7fff) >= this.size)
      throw new EventOffsetOutOfRangeError("device", offWrap, this.size);
    return packedNeedEvent(this.size, offWrap, this.#nextAvail, this.#availWrap, added);
  }

  /**
   * @inheritdoc
   * @throws UsedIdNotInFlightError or UsedLenTooLargeError (both `RingError`s).
   */
  reap(): T | undefined {
    if (this.#inOrder) return this.#reapInOrder();
    const desc = this.#desc;
    const pos = this.#nextUsed;
    const w = this.#usedWrap;
    // Acquire: pairs with the device's release store of id/flags after it wrote len (in memory
    // no other thread can see, program order is enough).
    const at = (pos << 2) + 3;
    const word = this.#atomic ? Atomics.load(this.#descI32, at) : this.#descI32[at]!;
    const flags = word >>> 16;
    // §2.8.1: used iff AVAIL = USED = our used wrap counter. Anything else is our own
    // available descriptor, or one used or skipped in the previous lap.
    if (((flags & F_USED) !== 0) !== w || ((flags & F_AVAIL) !== 0) !== w) return undefined;
    const id = word & 0xffff;
    if (id >= this.size || this.#tokens[id] === undefined) throw new UsedIdNotInFlightError(id);
    // §2.8.4: len is reserved (and ignored) unless WRITE says data was written.
    const len = (flags & F_WRITE) !== 0 ? desc[(pos << 2) + 2]! : 0;
    if (len > this.#writable[id]!) throw new UsedLenTooLargeError(id, len, this.#writable[id]!);
    // §2.8.6: skip the list's remaining descriptors, by our own count for this ID.
    const n = this.#descCount[id]!;
    let next = pos + n;
    if (next >= this.size) {
      next -= this.size;
      this.#usedWrap = !w;
    }
    this.#nextUsed = next;
    const token = this.#tokens[id]!;
    this.#tokens[id] = undefined;
    this.#descCount[id] = 0;
    this.#freeIds[this.#idTop++] = id;
    this.#numFree += n;
    this.#lastLen = len;
    if (this.#eventIdx && this.#interruptsEnabled && !this.#seenUsed(next, this.#usedWrap)) {
      // §2.8.10: ask for an interrupt when the device uses the descriptor we will look at next.
      // Skipped while that descriptor already looks used (a plain read, a hint only): the
      // event would name a descriptor the device has passed, which can bring no interrupt for
      // anything this loop does not reap anyway; the reap that takes the last used descriptor
      // stores it, before the next reap's `Atomics.load` (the Dekker order of enableInterrupts).
      Atomics.store(this.#v.driverEvent, 0, packedOffWrap(next, this.#usedWrap));
    }
    return token;
  }

  /** Whether the descriptor at `pos` looks used in lap `w` (plain read: a hint, not an acquire). */
  #seenUsed(pos: number, w: boolean): boolean {
    const flags = this.#desc[(pos << 2) + 3]! >>> 16;
    return ((flags & F_USED) !== 0) === w && ((flags & F_AVAIL) !== 0) === w;
  }

  /** `reap` with VIRTIO_F_IN_ORDER: buffers come back in the order added, possibly batched. */
  #reapInOrder(): T | undefined {
    const size = this.size;
    if (this.#batchLeft === 0) {
      const desc = this.#desc;
      const pos = this.#nextUsed;
      const w = this.#usedWrap;
      const word = Atomics.load(this.#descI32, (pos << 2) + 3);
      const flags = word >>> 16;
      if (((flags & F_USED) !== 0) !== w || ((flags & F_AVAIL) !== 0) !== w) return undefined;
      const id = word & 0xffff;
      // §2.8.8: the ID names the batch's last buffer; the batch starts at the oldest published
      // buffer. The search is bounded by the queue size.
      const limit = this.#orderCount - this.#pendingCount;
      let k = 0;
      while (k < limit && this.#order[(this.#orderFirst + k) % size] !== id) k++;
      if (k === limit) throw new UsedIdNotInFlightError(id);
      const len = (flags & F_WRITE) !== 0 ? desc[(pos << 2) + 2]! : 0;
      if (len > this.#writable[id]!) throw new UsedLenTooLargeError(id, len, this.#writable[id]!);
      this.#batchLeft = k + 1;
      this.#batchLen = len;
    }
    const id = this.#order[this.#orderFirst]!;
    this.#orderFirst = (this.#orderFirst + 1) % size;
    this.#orderCount--;
    // §2.8.8: buffers skipped by a batch were used completely.
    const len = --this.#batchLeft === 0 ? this.#batchLen : this.#writable[id]!;
    const n = this.#descCount[id]!;
    let next = this.#nextUsed + n;
    if (next >= size) {
      next -= size;
      this.#usedWrap = !this.#usedWrap;
    }
    this.#nextUsed = next;
    const token = this.#tokens[id]!;
    this.#tokens[id] = undefined;
    this.#descCount[id] = 0;
    this.#freeIds[this.#idTop++] = id;
    this.#numFree += n;
    this.#lastLen = len;
    if (this.features.eventIdx && this.#interruptsEnabled) {
      Atomics.store(this.#v.driverEvent, 0, packedOffWrap(next, this.#usedWrap));
    }
    return token;
  }

  /** @inheritdoc */
  enableInterrupts(): boolean {
    this.#interruptsEnabled = true;
    const ev = this.#v.driverEvent;
    if (this.features.eventIdx) {
      // off_wrap before flags: a device that sees DESC then reads an up-to-date offset.
      Atomics.store(ev, 0, packedOffWrap(this.#nextUsed, this.#usedWrap));
      Atomics.store(ev, 1, EV_DESC);
    } else Atomics.store(ev, 1, EV_ENABLE);
    // IN_ORDER: buffers of a batch already read are still to be returned (and the event above
    // named a position inside the batch, which the device has passed: the reap that finishes
    // the batch moves it on).
    if (this.#batchLeft > 0) return true;
    // Re-check after publishing our wish: a device that used a buffer just before seeing it did
    // not interrupt, so the driver must look again.
    const flags = Atomics.load(this.#descI32, (this.#nextUsed << 2) + 3) >>> 16;
    const w = this.#usedWrap;
    return ((flags & F_USED) !== 0) === w && ((flags & F_AVAIL) !== 0) === w;
  }

  /** @inheritdoc */
  disableInterrupts(): void {
    this.#interruptsEnabled = false;
    // §2.8.10: DISABLE is valid with or without EVENT_IDX.
    Atomics.store(this.#v.driverEvent, 1, EV_DISABLE);
  }

  /**
   * Ring positions and wrap counters: next descriptor to make available (the `next_off` /
   * `next_wrap` of a notification with VIRTIO_F_NOTIFICATION_DATA, §2.8.16) and next used
   * descriptor to read. Unpublished chains count as made available.
   */
  getState(): QueueState {
    return {
      availIdx: this.#nextAvail,
      usedIdx: this.#nextUsed,
      availWrap: this.#availWrap,
      usedWrap: this.#usedWrap,
    };
  }

  /** @inheritdoc */
  reset(): void {
    const v = this.#v;
    // §2.8.13: the descriptor ring is zero-initialised (and so are both event structures:
    // flags 0 is ENABLE).
    v.desc.fill(0);
    v.driverEvent.fill(0);
    v.deviceEvent.fill(0);
    // IDs are handed out from the top of the stack: 0 first.
    for (let i = 0; i < this.size; i++) this.#freeIds[i] = this.size - 1 - i;
    this.#idTop = this.size;
    this.#descCount.fill(0);
    this.#writable.fill(0);
    this.#tokens.fill(undefined);
    this.#pendingCount = 0;
    this.#addedSincePublish = 0;
    this.#numFree = this.size;
    this.#nextAvail = 0;
    this.#availWrap = true;
    this.#nextUsed = 0;
    this.#usedWrap = true;
    this.#lastLen = 0;
    this.#interruptsEnabled = true;
    this.#orderFirst = 0;
    this.#orderCount = 0;
    this.#batchLeft = 0;
    this.#batchLen = 0;
  }
}

/** §2.8.21.1: AVAIL set to the driver's wrap counter, USED to its inverse. */
function availBits(wrap: boolean): number {
  return wrap ? F_AVAIL : F_USED;
}

function descWord(id: number, flags: number): number {
  return id | (flags << 16);
}

/** Write descriptor `pos`'s addr and len words (ring or indirect table; the caller writes its id/flags word). */
function writeBody(desc: Uint32Array, pos: number, addr: number, len: number): void {
  const w = pos * 4; // not pos << 2: an indirect area can hold 2^30 entries
  // ToUint32 keeps the low 32 bits of the safe-integer addr; below 2^32 the high word is 0.
  desc[w] = addr;
  desc[w + 1] = addr > 0xffffffff ? Math.floor(addr / TWO_32) : 0;
  desc[w + 2] = len;
}
