import { type GuestMemory, GuestMemoryError } from "@virtio-ts/memory";
import { PackedDescFlags, PackedEventFlags } from "@virtio-ts/spec";
import type { DescriptorChain } from "./chain.js";
import {
  ChainCheck,
  E_IND_LEN,
  E_IND_NEG,
  E_IND_NESTED,
  E_IND_NEXT,
  E_IND_OOB,
  E_OOB,
  E_R_AFTER_W,
  E_TOO_LONG,
  E_TOTAL,
  OK,
} from "./chain-check.js";
import {
  EventOffsetOutOfRangeError,
  HeadInFlightError,
  HeadOutOfRangeError,
  PackedChainUnterminatedError,
  PackedDescNotAvailableError,
  PackedOvercommitError,
} from "./errors.js";
import { mapPackedRing, packedNeedEvent, packedOffWrap } from "./packed-layout.js";
import { inSharedMemory } from "./shared-view.js";
import type { DeviceQueue, InFlightChain, QueueLayout, QueueState, RingFeatures } from "./types.js";

const F_NEXT = PackedDescFlags.NEXT;
const F_WRITE = PackedDescFlags.WRITE;
const F_INDIRECT = PackedDescFlags.INDIRECT;
const F_AVAIL = PackedDescFlags.AVAIL;
const F_USED = PackedDescFlags.USED;
const EV_ENABLE = PackedEventFlags.ENABLE;
const EV_DISABLE = PackedEventFlags.DISABLE;
const EV_DESC = PackedEventFlags.DESC;
const TWO_32 = 4294967296;
const U32_MAX = 0xffffffff;

/** An Int32Array over the same words as `u32`. */
function i32View(u32: Uint32Array): Int32Array {
  return new Int32Array(u32.buffer, u32.byteOffset, u32.length);
}

/**
 * Whether a descriptor with `flags` is available to a device whose avail wrap counter is
 * `wrap`: AVAIL matches the counter and USED does not (VIRTIO 1.3 §2.8.1).
 */
function isAvailable(flags: number, wrap: boolean): boolean {
  return ((flags & F_AVAIL) !== 0) === wrap && ((flags & F_USED) !== 0) !== wrap;
}

/**
 * Device side of a packed virtqueue (VIRTIO 1.3 §2.8): reads available descriptors in ring
 * order, validates every chain, writes used descriptors back into the same ring, and decides
 * notifications through the two event suppression structures.
 *
 * Who writes what (and whether we trust it): the driver writes available descriptors and the
 * Driver Event Suppression structure — untrusted, each descriptor read once and validated; the
 * device (this class) writes used descriptors (over descriptors it has consumed) and the Device
 * Event Suppression structure. A descriptor's `id` and `flags` share one 32-bit word, which is
 * read with `Atomics.load` before the descriptor's other fields and written after them, so
 * publication order holds across threads: with `Atomics.store` for the first used descriptor of
 * a batch, which is written last (see {@link PackedDeviceQueue.use}); the later ones of the
 * batch with plain stores, which that store publishes.
 *
 * Buffer IDs: {@link DescriptorChain.head} is the chain's buffer ID (from its last descriptor,
 * §2.8.6) and {@link DescriptorChain.descCount} the number of ring descriptors it occupied
 * (1 for an indirect chain). `push(id, written)` writes one used descriptor with that ID at the
 * device's next used position and moves that position on by the count recorded at pop time
 * (never the caller's copy), VIRTIO 1.3 §2.8.2 / §2.8.6.
 *
 * In a `ChainError`, `head` is the buffer ID and `index` the ring position of the offending
 * descriptor (or its index in the indirect table when `indirect` is true).
 *
 * After a `RingError` the queue must be reset (device status DEVICE_NEEDS_RESET); after a
 * `ChainError` the chain's buffer ID is known and in flight, and may be pushed with 0.
 *
 * With VIRTIO_F_IN_ORDER buffers must be pushed in the order they were popped, and
 * {@link PackedDeviceQueue.pushBatch} writes one used descriptor for a batch (§2.8.8).
 *
 * @example
 * ```ts
 * const q = new PackedDeviceQueue(mem, { size: 256, desc: 0x1000, driver: 0x2000, device: 0x2004 }, NO_RING_FEATURES);
 * const chain = new DescriptorChain(256);
 * while (q.pop(chain)) {
 *   // ... read chain.addr(i)/chain.len(i) ...
 *   q.push(chain.head, 0);
 * }
 * if (q.needsInterrupt()) raiseInterrupt();
 * ```
 */
export class PackedDeviceQueue implements DeviceQueue {
  /** @inheritdoc */
  readonly size: number;
  /** The negotiated ring features. */
  readonly features: RingFeatures;
  readonly #mem: GuestMemory;
  readonly #check: ChainCheck;
  readonly #layout: QueueLayout;
  /** `features.inOrder` / `features.eventIdx`, as own fields for the hot paths. */
  readonly #inOrder: boolean;
  readonly #eventIdx: boolean;
  /** `features.indirect`, as an own field for the hot path. */
  readonly #indirect: boolean;
  #desc: Uint32Array;
  /**
   * The same ring as Int32 words, for the id/flags word: `Atomics` on it take and return Smis
   * (on a Uint32Array a word with USED set, bit 31, is a heap number, boxed for every call).
   */
  #descI32: Int32Array;
  /** Whether the ring is in shared memory: its id/flags words are then accessed with `Atomics`. */
  #atomic: boolean;
  #driverEvent: Uint16Array;
  #deviceEvent: Uint16Array;
  /** 1 where a buffer ID is popped and not yet pushed. */
  readonly #inFlight: Uint8Array;
  /** Ring descriptors each in-flight buffer ID occupied. */
  readonly #descCount: Uint16Array;
  /** Writable bytes of each in-flight buffer, to refuse a push that claims more. */
  readonly #writable: Float64Array;
  /** IN_ORDER: buffer IDs in flight in the order they were popped (a ring of `size` entries). */
  readonly #order: Uint16Array;
  #orderFirst = 0;
  #inFlightCount = 0;
  #nextAvail = 0;
  #availWrap = true;
  #nextUsed = 0;
  #usedWrap = true;
  /** Ring descriptors marked used since the last needsInterrupt(). */
  #usedSince = 0;
  /**
   * Word index of the id/flags word of the first used descriptor not yet published (-1: none),
   * and the word to store there (see {@link PackedDeviceQueue.use}).
   */
  #heldAt = -1;
  #heldWord = 0;
  #signalledValid = false;
  #notifyEnabled = true;
  /**
   * Copies of the ring descriptors of the buffers in flight, for {@link saveInFlight}: used
   * descriptors overwrite a popped list in the ring once later buffers complete (§2.8.6), so
   * the device keeps what it read. A pool of `size` records of 4 words, linked per buffer ID
   * (`size` is the most descriptors a driver may have outstanding, §2.8.10.1).
   *
   * The records of one list are taken from the head of the free list in turn, so they are
   * already linked in order by the free list's own links: taking a record is one load, and a
   * list goes back whole (first to last) in O(1). A list is walked by its descriptor count,
   * never to a terminator (its last record links on into other records).
   */
  readonly #pool: Uint32Array;
  /** Next record: in the free list, or of the same buffer (up to its last record). */
  readonly #poolNext: Int32Array;
  /** First free record, or -1 (then a list is not recorded: the driver overcommitted). */
  #poolFree = 0;
  /** First and last record of each buffer ID in flight (-1: none). */
  readonly #idFirst: Int32Array;
  readonly #idLast: Int32Array;
  /** 1 where a buffer in flight could not be recorded (the pool ran out). */
  readonly #idLost: Uint8Array;
  // Scratch of the walk in progress: its records and whether one was lost.
  #recFirst = -1;
  #recLast = -1;
  #recLost = false;
  #seenWritable = false;
  /** Chains handed back by {@link restoreInFlight}, served by `pop` before the ring. */
  #replay: readonly InFlightChain[] = [];
  #replayNext = 0;

  /**
   * @param mem guest memory (possibly behind an IOMMU).
   * @param layout where the descriptor ring and the two event structures are.
   * @param features negotiated ring features (see `ringFeatures`).
   * @throws QueueConfigError if the layout is invalid (size, alignment, outside memory).
   */
  constructor(mem: GuestMemory, layout: QueueLayout, features: RingFeatures) {
    const v = mapPackedRing(mem, layout, "device");
    this.#layout = layout;
    this.#mem = mem;
    this.#check = new ChainCheck(mem, "INDIRECT descriptor in a list linked by NEXT");
    this.#desc = v.desc;
    this.#descI32 = i32View(v.desc);
    this.#atomic = inSharedMemory(this.#descI32);
    this.#driverEvent = v.driverEvent;
    this.#deviceEvent = v.deviceEvent;
    this.size = layout.size;
    this.features = features;
    this.#inOrder = features.inOrder === true;
    this.#eventIdx = features.eventIdx === true;
    this.#indirect = features.indirect === true;
    this.#inFlight = new Uint8Array(layout.size);
    this.#descCount = new Uint16Array(layout.size);
    this.#writable = new Float64Array(layout.size);
    this.#order = new Uint16Array(features.inOrder ? layout.size : 0);
    this.#pool = new Uint32Array(layout.size * 4);
    this.#poolNext = new Int32Array(layout.size);
    this.#idFirst = new Int32Array(layout.size);
    this.#idLast = new Int32Array(layout.size);
    this.#idLost = new Uint8Array(layout.size);
    this.#resetPool();
  }

  /**
   * Map the ring again from the same memory and layout, keeping the positions, wrap counters
   * and the buffers in flight. For memory whose backing buffer can be replaced (a
   * `WebAssembly.Memory` that grew detaches its old `ArrayBuffer`, and with it the views this
   * queue made when it was created): call it after the memory object serves the new buffer.
   * @throws QueueConfigError if the ring is no longer inside memory.
   */
  remap(): void {
    const v = mapPackedRing(this.#mem, this.#layout, "device");
    this.#desc = v.desc;
    this.#descI32 = i32View(v.desc);
    this.#atomic = inSharedMemory(this.#descI32);
    this.#driverEvent = v.driverEvent;
    this.#deviceEvent = v.deviceEvent;
  }

  /** Number of buffers popped and not yet pushed. */
  get inFlight(): number {
    return this.#inFlightCount;
  }

  /**
   * @inheritdoc
   * @throws ChainError (head = buffer ID) for a malformed chain: its descriptors are consumed
   *   and its ID is in flight, so it may be pushed with 0.
   * @throws RingError: {@link PackedDescNotAvailableError},
   *   {@link PackedChainUnterminatedError}, {@link HeadOutOfRangeError} (buffer ID ≥ queue size),
   *   {@link HeadInFlightError} (buffer ID already in flight).
   */
  pop(chain: DescriptorChain): boolean {
    if (this.#replayNext < this.#replay.length) return this.#popReplayed(chain);
    const desc = this.#desc;
    const descI32 = this.#descI32;
    const size = this.size;
    const start = this.#nextAvail;
    const wrap = this.#availWrap;
    // Acquire: this seq-cst load of the id/flags word synchronises with the driver's release
    // store of the first descriptor's flags, which it writes after every other descriptor of the
    // chain (VIRTIO 1.3 §2.8.21.1), so the plain reads below see all of them. Memory no other
    // thread can see needs no ordering beyond program order.
    let word = this.#atomic ? Atomics.load(descI32, (start << 2) + 3) : descI32[(start << 2) + 3]!;
    let flags = word >>> 16;
    // §2.8.1: AVAIL and USED "are different for an available descriptor and equal for a used
    // descriptor"; §2.8.15: a device MUST NOT use a descriptor before it observes AVAIL changed.
    // So the head is available only if AVAIL matches our wrap counter and USED does not. AVAIL
    // = USED = wrap counter is a used descriptor: nothing is available there (inside a list the
    // same bits are an error, PackedDescNotAvailableError below).
    if (!isAvailable(flags, wrap)) return false;
    // VIRTIO 1.3 §2.8.17: a list is never longer than the queue size (indirect entries included).
    const budget = Math.min(chain.capacity, size);
    const check = this.#check;
    const addrs = chain.addrs;
    const lens = chain.lens;
    const pool = this.#pool;
    const poolNext = this.#poolNext;
    // The walk's records (see #pool) and the segment totals live in locals, stored once at the
    // end, as in the split ring's walk.
    let free = this.#poolFree;
    let recFirst = -1;
    let recLast = -1;
    let recLost = false;
    let count = 0;
    let readableCount = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let seenWritable = false;
    let code = OK;
    let pos = start;
    let w = wrap;
    let n = 0;
    for (;;) {
      n++;
      const base = pos << 2;
      // Each descriptor is read exactly once; only these locals are used afterwards.
      const lo = desc[base]!;
      const hi = desc[base + 1]!;
      const len = desc[base + 2]!;
      // Keep a copy for saveInFlight (no allocation: a record from the pool, linked per buffer).
      if (free >= 0) {
        const b = free << 2;
        pool[b] = lo;
        pool[b + 1] = hi;
        pool[b + 2] = len;
        pool[b + 3] = word;
        if (recFirst < 0) recFirst = free;
        recLast = free;
        free = poolNext[free]!;
      } else recLost = true;
      // After the first failure only the flags are followed, to find the buffer ID in the last
      // descriptor (§2.8.6) so that the chain can be completed and the ring stays in step.
      if (code === OK) {
        const addr = hi * TWO_32 + lo;
        if ((flags & F_INDIRECT) !== 0) {
          // §2.8.19: INDIRECT only if negotiated, never in a list linked by NEXT. §2.8.7: WRITE
          // on the descriptor that refers to the table is reserved and ignored.
          if (!this.#indirect) code = check.fail(E_IND_NEG, pos, false, 0, 0);
          else if (n > 1 || (flags & F_NEXT) !== 0) code = check.fail(E_IND_NEXT, pos, false, 0, 0);
          else {
            // A table is the whole list (n = 1, no NEXT): its walk appends through the cursor.
            chain.setTotals(0, 0, 0, 0);
            code = this.#walkIndirect(chain, pos, addr, len, budget);
            count = chain.count;
            readableCount = chain.readableCount;
            readableBytes = chain.readableBytes;
            writableBytes = chain.writableBytes;
          }
        } else {
          const writable = (flags & F_WRITE) !== 0;
          // §2.8.4 / §2.7.4.2: device-writable descriptors come after all device-readable ones.
          if (writable) seenWritable = true;
          if (!writable && seenWritable) code = check.fail(E_R_AFTER_W, pos, false, 0, 0);
          else if (count >= budget) code = check.fail(E_TOO_LONG, pos, false, budget, 0);
          else if (!check.accessible(addr, len, writable)) {
            code = check.fail(E_OOB, pos, false, addr, len);
          } else {
            addrs[count] = addr;
            lens[count] = len;
            count++;
            if (writable) writableBytes += len;
            else {
              readableCount++;
              readableBytes += len;
            }
            // §2.7.5.2: at most 2^32 bytes in total (see ChainCheck.segment).
            if (readableBytes + writableBytes > U32_MAX) {
              code = check.fail(E_TOTAL, pos, false, 0, 0);
            }
          }
        }
      }
      if ((flags & F_NEXT) === 0) break;
      if (n === size) {
        chain.setTotals(count, readableCount, readableBytes, writableBytes);
        this.#dropWalk(free, recFirst, recLast);
        throw new PackedChainUnterminatedError(start, size);
      }
      if (++pos === size) {
        pos = 0;
        w = !w;
      }
      // Plain read: written before the first descriptor's flags, which we acquired above.
      word = descI32[(pos << 2) + 3]!;
      flags = word >>> 16;
      // §2.8.6: every descriptor of the list carries correct AVAIL/USED bits for its lap.
      if (!isAvailable(flags, w)) {
        chain.setTotals(count, readableCount, readableBytes, writableBytes);
        this.#dropWalk(free, recFirst, recLast);
        throw new PackedDescNotAvailableError(pos, flags, w);
      }
    }
    chain.setTotals(count, readableCount, readableBytes, writableBytes);
    // §2.8.6: the buffer ID is in the last descriptor of the list.
    const id = word & 0xffff;
    if (id >= size || this.#inFlight[id] === 1) {
      this.#dropWalk(free, recFirst, recLast);
      if (id >= size) throw new HeadOutOfRangeError(id, size);
      throw new HeadInFlightError(id);
    }
    this.#poolFree = free;
    if (++pos === size) {
      pos = 0;
      w = !w;
    }
    this.#nextAvail = pos;
    this.#availWrap = w;
    // Mark the ID in flight with the list just walked (as #setInFlight).
    this.#inFlight[id] = 1;
    if (this.#inOrder) {
      // Fewer than `size` IDs are in flight here (this one was not), so the ring has room.
      this.#order[(this.#orderFirst + this.#inFlightCount) % size] = id;
    }
    this.#inFlightCount++;
    this.#descCount[id] = n;
    this.#writable[id] = code === OK ? writableBytes : 0;
    this.#idFirst[id] = recFirst;
    this.#idLast[id] = recLast;
    this.#idLost[id] = recLost ? 1 : 0;
    chain.head = id;
    chain.descCount = n;
    if (this.#eventIdx && this.#notifyEnabled && !isAvailable(desc[(pos << 2) + 3]! >>> 16, w)) {
      // §2.8.10: name the descriptor we will look at next, so the driver notifies only when it
      // makes that one available (QEMU keeps this current while notifications are on). Skipped
      // while that descriptor already looks available (a plain read, a hint only): the driver
      // has published it, so naming it could bring a kick only for what this loop pops anyway.
      // The pop that takes the last available chain stores it, before the next pop's
      // `Atomics.load` of that descriptor (the Dekker order of enableNotifications).
      Atomics.store(this.#deviceEvent, 0, packedOffWrap(pos, w));
    }
    if (code !== OK) throw check.error(code, id);
    return true;
  }

  /** A ring pop failed as a ring error: put the pool head back and release the walk's records. */
  #dropWalk(free: number, recFirst: number, recLast: number): void {
    this.#poolFree = free;
    if (recFirst >= 0) this.#release(recFirst, recLast);
    this.#beginRecord();
  }

  /**
   * Validate the `n`-th descriptor of a list (at ring position, or record index, `at`) into
   * `chain`; returns the walk code. `#seenWritable` carries the readable-before-writable rule
   * across the list.
   */
  #step(
    chain: DescriptorChain,
    at: number,
    n: number,
    addr: number,
    len: number,
    flags: number,
    budget: number,
  ): number {
    if (n === 1) this.#seenWritable = false;
    if ((flags & F_INDIRECT) !== 0) {
      // §2.8.19: INDIRECT only if negotiated, never in a list linked by NEXT. §2.8.7: WRITE
      // on the descriptor that refers to the table is reserved and ignored.
      if (!this.features.indirect) return this.#check.fail(E_IND_NEG, at, false, 0, 0);
      if (n > 1 || (flags & F_NEXT) !== 0) return this.#check.fail(E_IND_NEXT, at, false, 0, 0);
      return this.#walkIndirect(chain, at, addr, len, budget);
    }
    const writable = (flags & F_WRITE) !== 0;
    if (writable) this.#seenWritable = true;
    else if (this.#seenWritable) return this.#check.fail(E_R_AFTER_W, at, false, 0, 0);
    return this.#check.segment(chain, at, false, addr, len, writable, budget);
  }

  /** Refuse a buffer ID out of range or in flight (the walk's records are dropped first). */
  #take(id: number): void {
    if (id < this.size && this.#inFlight[id] !== 1) return;
    this.#dropRecord();
    if (id >= this.size) throw new HeadOutOfRangeError(id, this.size);
    throw new HeadInFlightError(id);
  }

  /** Mark buffer `id` in flight with the list just walked (`n` descriptors, recorded). */
  #setInFlight(id: number, n: number, writable: number): void {
    this.#inFlight[id] = 1;
    if (this.#inOrder) {
      // Fewer than `size` IDs are in flight here (this one was not), so the ring has room.
      this.#order[(this.#orderFirst + this.#inFlightCount) % this.size] = id;
    }
    this.#inFlightCount++;
    this.#descCount[id] = n;
    this.#writable[id] = writable;
    this.#idFirst[id] = this.#recFirst;
    this.#idLast[id] = this.#recLast;
    this.#idLost[id] = this.#recLost ? 1 : 0;
  }

  /** Serve the next chain handed back by {@link restoreInFlight}, validated like a ring pop. */
  #popReplayed(chain: DescriptorChain): boolean {
    const rec = this.#replay[this.#replayNext++]!;
    const src = rec.descriptors;
    const n = src.length >>> 2;
    const budget = Math.min(chain.capacity, this.size);
    chain.begin(0);
    this.#beginRecord();
    let code = OK;
    for (let k = 0; k < n; k++) {
      const base = k << 2;
      const lo = src[base]!;
      const hi = src[base + 1]!;
      const len = src[base + 2]!;
      const word = src[base + 3]!;
      this.#record(lo, hi, len, word);
      if (code === OK)
        code = this.#step(chain, k, k + 1, hi * TWO_32 + lo, len, word >>> 16, budget);
    }
    const id = rec.id;
    this.#take(id);
    this.#setInFlight(id, n, code === OK ? chain.writableBytes : 0);
    chain.head = id;
    chain.descCount = n;
    if (code !== OK) throw this.#check.error(code, id);
    return true;
  }

  #beginRecord(): void {
    this.#recFirst = -1;
    this.#recLast = -1;
    this.#recLost = false;
  }

  /** Keep a copy of one descriptor of the list being walked (no allocation). */
  #record(lo: number, hi: number, len: number, word: number): void {
    const e = this.#poolFree;
    if (e < 0) {
      this.#recLost = true;
      return;
    }
    this.#poolFree = this.#poolNext[e]!;
    const b = e << 2;
    const pool = this.#pool;
    pool[b] = lo;
    pool[b + 1] = hi;
    pool[b + 2] = len;
    pool[b + 3] = word;
    // Taken from the free list's head in turn: already linked after the previous record.
    if (this.#recFirst < 0) this.#recFirst = e;
    this.#recLast = e;
  }

  /** Return the walk's records to the pool (the walk failed as a ring error). */
  #dropRecord(): void {
    if (this.#recFirst >= 0) this.#release(this.#recFirst, this.#recLast);
    this.#beginRecord();
  }

  /**
   * Return the records `first` to `last` (linked in order since they were taken, see #pool) to
   * the pool. No record inside a list is ever relinked while it is out of the free list.
   */
  #release(first: number, last: number): void {
    this.#poolNext[last] = this.#poolFree;
    this.#poolFree = first;
  }

  #resetPool(): void {
    const next = this.#poolNext;
    for (let i = 0; i < next.length; i++) next[i] = i + 1 < next.length ? i + 1 : -1;
    this.#poolFree = next.length > 0 ? 0 : -1;
    this.#idFirst.fill(-1);
    this.#idLast.fill(-1);
    this.#idLost.fill(0);
    this.#beginRecord();
  }

  /** Forget the records of buffer `id` (it was used). */
  #forget(id: number): void {
    const first = this.#idFirst[id]!;
    if (first >= 0) this.#release(first, this.#idLast[id]!);
    this.#idFirst[id] = -1;
    this.#idLost[id] = 0;
  }

  #walkIndirect(
    chain: DescriptorChain,
    at: number,
    tableAddr: number,
    tableLen: number,
    budget: number,
  ): number {
    // §2.8.7: the table holds len / 16 descriptors; zero or a partial descriptor is malformed.
    if (tableLen === 0 || (tableLen & 15) !== 0)
      return this.#check.fail(E_IND_LEN, at, false, tableLen, 0);
    const n = tableLen >>> 4;
    // Reject a table that cannot fit before reading any of it: no work proportional to a
    // guest-chosen length beyond the queue size.
    if (n > budget) return this.#check.fail(E_TOO_LONG, at, false, budget, 0);
    const mem = this.#mem;
    if (!mem.check(tableAddr, tableLen, "read")) {
      return this.#check.fail(E_IND_OOB, at, false, tableAddr, tableLen);
    }
    let seenWritable = false;
    try {
      // §2.8.7: table entries are used in order, all of them; the ID and every flag but WRITE
      // are reserved and ignored (NEXT included), except that a nested table is refused
      // (§2.8.19: a driver MUST NOT set any flag but WRITE in an indirect descriptor).
      for (let i = 0; i < n; i++) {
        const base = tableAddr + i * 16;
        const lo = mem.readU32(base);
        const hi = mem.readU32(base + 4);
        const len = mem.readU32(base + 8);
        const flags = mem.readU32(base + 12) >>> 16;
        if ((flags & F_INDIRECT) !== 0) return this.#check.fail(E_IND_NESTED, i, true, 0, 0);
        const writable = (flags & F_WRITE) !== 0;
        if (writable) seenWritable = true;
        else if (seenWritable) return this.#check.fail(E_R_AFTER_W, i, true, 0, 0);
        const code = this.#check.segment(chain, i, true, hi * TWO_32 + lo, len, writable, budget);
        if (code !== OK) return code;
      }
    } catch (e) {
      // The whole table was checked above; a read can only fail if the table straddles two
      // regions in a way a scalar read cannot cross. Anything else is a host bug: rethrow it.
      if (!(e instanceof GuestMemoryError)) throw e;
      return this.#check.fail(E_IND_OOB, at, false, tableAddr, tableLen);
    }
    return OK;
  }

  /**
   * Return a buffer as used, with `written` bytes written into its writable part. `head` is the
   * buffer ID from {@link DescriptorChain.head}; one used descriptor is written at the next used
   * position, which then moves on by the descriptor count recorded when the chain was popped.
   * With VIRTIO_F_IN_ORDER `head` must be the oldest buffer in flight (§2.8.8).
   * @throws RangeError if `head` is not in flight (with IN_ORDER: not the oldest) or `written`
   *   exceeds the chain's writable bytes.
   */
  push(head: number, written: number): void {
    this.use(head, written);
    this.publishUsed();
  }

  /**
   * Return a buffer as used, like {@link PackedDeviceQueue.push}, with the same checks, but
   * leave it invisible to the driver until {@link PackedDeviceQueue.publishUsed} (or `push`,
   * `pushBatch`, `needsInterrupt`, `getState`). The first used descriptor since the last
   * publication keeps its id/flags word back; later ones are written whole with plain stores,
   * and publishing stores the held word last, so the driver, which reads used descriptors in
   * ring order, sees the batch at once (QEMU's `virtqueue_packed_flush` fills a batch's
   * first used descriptor last in the same way). In shared memory that is one seq-cst
   * `Atomics.store` per batch instead of per buffer.
   * @param head the buffer ID of a popped chain.
   * @param written bytes written into the chain's writable part.
   * @throws RangeError as {@link PackedDeviceQueue.push}.
   */
  use(head: number, written: number): void {
    if (!(head >= 0 && head < this.size) || this.#inFlight[head] !== 1) {
      throw new RangeError(`head ${head} is not a buffer ID in flight on this queue`);
    }
    const inOrder = this.#inOrder;
    if (inOrder && this.#order[this.#orderFirst] !== head) {
      throw new RangeError(
        `head ${head} is not the oldest buffer in flight (${this.#order[this.#orderFirst]}): VIRTIO_F_IN_ORDER needs buffers used in order`,
      );
    }
    if (!Number.isInteger(written) || written < 0 || written > this.#writable[head]!) {
      throw new RangeError(
        `written must be an integer in [0, ${this.#writable[head]}] (the chain's writable bytes), got ${written}`,
      );
    }
    this.#inFlight[head] = 0;
    this.#inFlightCount--;
    if (inOrder) this.#orderFirst = (this.#orderFirst + 1) % this.size;
    this.#forget(head);
    this.#writeUsed(head, written, this.#descCount[head]!);
  }

  /**
   * VIRTIO_F_IN_ORDER batching (§2.8.8): return the `count` oldest buffers in flight with one
   * used descriptor, written over the first descriptor of the batch and carrying the buffer ID
   * of the last one; the used position then skips every descriptor of the batch. The driver
   * takes the skipped buffers as completely used; `written` is the length of the last one.
   * @param count buffers to return, in [1, {@link PackedDeviceQueue.inFlight}].
   * @param written bytes written into the last buffer's writable part.
   * @throws RangeError if IN_ORDER was not negotiated, or naming `count` / `written`.
   */
  pushBatch(count: number, written: number): void {
    if (!this.features.inOrder) {
      throw new RangeError("pushBatch needs VIRTIO_F_IN_ORDER (features.inOrder)");
    }
    const n = this.#inFlightCount;
    if (!(Number.isInteger(count) && count >= 1 && count <= n)) {
      throw new RangeError(
        `count must be an integer in [1, ${n}] (buffers in flight), got ${count}`,
      );
    }
    const size = this.size;
    const last = this.#order[(this.#orderFirst + count - 1) % size]!;
    const max = this.#writable[last]!;
    if (!(Number.isInteger(written) && written >= 0 && written <= max)) {
      throw new RangeError(
        `written must be an integer in [0, ${max}] (the last buffer's writable bytes), got ${written}`,
      );
    }
    let descs = 0;
    for (let i = 0; i < count; i++) {
      const id = this.#order[(this.#orderFirst + i) % size]!;
      this.#inFlight[id] = 0;
      this.#forget(id);
      descs += this.#descCount[id]!;
    }
    this.#orderFirst = (this.#orderFirst + count) % size;
    this.#inFlightCount = n - count;
    this.#writeUsed(last, written, descs);
    this.publishUsed();
  }

  /**
   * Make every buffer returned by {@link PackedDeviceQueue.use} visible to the driver: store the
   * held id/flags word of the first one (§2.8.4: the flags are written after len and id). Stores
   * nothing when nothing is waiting.
   */
  publishUsed(): void {
    const at = this.#heldAt;
    if (at < 0) return;
    this.#heldAt = -1;
    // Release: a driver whose Atomics.load sees this word also sees len and every used
    // descriptor written after it with plain stores.
    if (this.#atomic) Atomics.store(this.#descI32, at, this.#heldWord);
    else this.#descI32[at] = this.#heldWord;
  }

  /** Write one used descriptor at the next used position, then skip `descs` descriptors. */
  #writeUsed(id: number, written: number, descs: number): void {
    const pos = this.#nextUsed;
    const w = this.#usedWrap;
    const base = pos << 2;
    // §2.8.4: in a used descriptor, len is the number of bytes written; addr is unused.
    this.#desc[base + 2] = written;
    // §2.8.1: AVAIL and USED both equal the used wrap counter; §2.8.3: WRITE says whether
    // any data was written (len is reserved without it).
    const flags = (w ? F_AVAIL | F_USED : 0) | (written > 0 ? F_WRITE : 0);
    // id and flags are one word, stored after len. The first used descriptor since the last
    // publication is held back for publishUsed; the driver reads none after it before seeing
    // it, so the later ones need no ordering of their own. §2.8.15: we never touch this
    // descriptor again this lap.
    if (this.#heldAt < 0) {
      this.#heldAt = base + 3;
      this.#heldWord = id | (flags << 16);
    } else this.#descI32[base + 3] = id | (flags << 16);
    // A batch holds at most `size` descriptors (they were all in flight), so one subtraction
    // brings the position back into the ring.
    let next = pos + descs;
    if (next >= this.size) {
      next -= this.size;
      this.#usedWrap = !w;
    }
    this.#nextUsed = next;
    this.#usedSince += descs;
  }

  /**
   * Whether the driver wants an interrupt for the buffers pushed since the last call (call once
   * per batch of pushes). Reads the Driver Event Suppression structure (VIRTIO 1.3 §2.8.10):
   * ENABLE → true, DISABLE → false, DESC (only with EVENT_IDX) → true iff the used position
   * passed the named descriptor. DESC without EVENT_IDX and the reserved value 3 are treated like
   * ENABLE (an extra interrupt is harmless, a lost one is not).
   * @throws EventOffsetOutOfRangeError if DESC names an offset ≥ queue size.
   */
  needsInterrupt(): boolean {
    this.publishUsed();
    const since = this.#usedSince;
    const valid = this.#signalledValid;
    this.#usedSince = 0;
    this.#signalledValid = true;
    if (valid && since === 0) return false;
    // The seq-cst loads below are ordered after publishUsed's flags store: the full barrier the
    // suppression race needs (Linux virtio_mb before reading the event structure).
    const flags = Atomics.load(this.#driverEvent, 1) & 3;
    if (flags === EV_DISABLE) return false;
    if (flags !== EV_DESC || !this.features.eventIdx) return true;
    const offWrap = Atomics.load(this.#driverEvent, 0);
    if ((offWrap & 0x7fff) >= this.size) {
      // Keep the pending count so a caller that logs and retries still owes this interrupt.
      this.#usedSince = since;
      throw new EventOffsetOutOfRangeError("driver", offWrap, this.size);
    }
    return !valid || packedNeedEvent(this.size, offWrap, this.#nextUsed, this.#usedWrap, since);
  }

  /** @inheritdoc */
  enableNotifications(): boolean {
    this.#notifyEnabled = true;
    const ev = this.#deviceEvent;
    if (this.features.eventIdx) {
      // off_wrap before flags: a driver that sees DESC then reads an up-to-date offset.
      Atomics.store(ev, 0, packedOffWrap(this.#nextAvail, this.#availWrap));
      Atomics.store(ev, 1, EV_DESC);
    } else Atomics.store(ev, 1, EV_ENABLE);
    // Re-check after publishing our wish: a driver that made a buffer available just before
    // seeing it did not notify, so the device must look again (the lost-wakeup race). The test
    // is pop's (§2.8.1): a used descriptor at the head is nothing to pop.
    const flags = Atomics.load(this.#descI32, (this.#nextAvail << 2) + 3) >>> 16;
    return isAvailable(flags, this.#availWrap) || this.#replayNext < this.#replay.length;
  }

  /** @inheritdoc */
  disableNotifications(): void {
    this.#notifyEnabled = false;
    // §2.8.10: DISABLE is valid with or without EVENT_IDX.
    Atomics.store(this.#deviceEvent, 1, EV_DISABLE);
  }

  /** @inheritdoc */
  getState(): QueueState {
    // The saved used position is the one the driver sees: publish what `use` held back.
    this.publishUsed();
    return {
      availIdx: this.#nextAvail,
      usedIdx: this.#nextUsed,
      availWrap: this.#availWrap,
      usedWrap: this.#usedWrap,
    };
  }

  /**
   * Restore positions saved by {@link PackedDeviceQueue.getState}: `availIdx` / `usedIdx` are
   * ring positions in [0, queue size), with their wrap counters. Buffers in flight are
   * forgotten: save state only once they have been pushed. A used descriptor that
   * {@link PackedDeviceQueue.use} held back and nothing published is dropped with them.
   * @throws RangeError for a position outside the ring or a non-boolean wrap counter.
   */
  setState(state: QueueState): void {
    for (const k of ["availIdx", "usedIdx"] as const) {
      const x = state[k];
      if (!Number.isInteger(x) || x < 0 || x >= this.size) {
        throw new RangeError(`state.${k} must be an integer in [0, ${this.size - 1}], got ${x}`);
      }
    }
    for (const k of ["availWrap", "usedWrap"] as const) {
      if (typeof state[k] !== "boolean") throw new RangeError(`state.${k} must be a boolean`);
    }
    this.#nextAvail = state.availIdx;
    this.#availWrap = state.availWrap;
    this.#nextUsed = state.usedIdx;
    this.#usedWrap = state.usedWrap;
    this.#inFlight.fill(0);
    this.#inFlightCount = 0;
    this.#orderFirst = 0;
    this.#usedSince = 0;
    this.#heldAt = -1;
    this.#signalledValid = false;
    this.#resetPool();
    this.#replay = [];
    this.#replayNext = 0;
  }

  /**
   * Suspend / resume: the chains popped and not yet pushed, for {@link DeviceQueue.restoreInFlight}
   * of a queue over the same guest memory. The buffers in flight (in pop order with IN_ORDER, else by buffer ID), then those handed
   * back by {@link restoreInFlight} and not popped again yet, each with a copy of the ring
   * descriptors the device read when it popped the list.
   * @throws PackedOvercommitError if the driver had more descriptors outstanding than the
   *   queue size when a buffer still in flight was popped (its list was not recorded)
   */
  saveInFlight(): InFlightChain[] {
    const out: InFlightChain[] = [];
    const save = (id: number): void => {
      if (this.#idLost[id] === 1) throw new PackedOvercommitError(id, this.size);
      const n = this.#descCount[id]!;
      const words = new Uint32Array(4 * n);
      let e = this.#idFirst[id]!;
      for (let k = 0; k < n && e >= 0; k++, e = this.#poolNext[e]!) {
        words.set(this.#pool.subarray(e << 2, (e << 2) + 4), k << 2);
      }
      out.push({ id, descriptors: words });
    };
    if (this.features.inOrder) {
      for (let i = 0; i < this.#inFlightCount; i++) {
        save(this.#order[(this.#orderFirst + i) % this.size]!);
      }
    } else {
      for (let id = 0; id < this.size; id++) if (this.#inFlight[id] === 1) save(id);
    }
    for (let i = this.#replayNext; i < this.#replay.length; i++) out.push(this.#replay[i]!);
    return out;
  }

  /**
   * Suspend / resume: after {@link PackedDeviceQueue.setState}, make the saved chains the first
   * ones `pop` returns, validated again like any chain. Each entry needs 1 to `size` descriptors (4 words each, at most `size` in all), NEXT on
   * all but the last and its `id` in the last one's ID field (§2.8.6), as `pop` read it; the
   * buffers are then validated again (bounds, indirect rules) when popped.
   */
  restoreInFlight(chains: readonly InFlightChain[]): void {
    if (!Array.isArray(chains) || chains.length > this.size) {
      throw new RangeError(`chains must be an array of at most ${this.size} entries`);
    }
    const seen = new Uint8Array(this.size);
    let total = 0;
    chains.forEach((c, i) => {
      const id = c?.id;
      if (!Number.isInteger(id) || id < 0 || id >= this.size || seen[id] === 1) {
        throw new RangeError(
          `chains[${i}].id must be a buffer ID in [0, ${this.size}) not listed before, got ${id}`,
        );
      }
      seen[id] = 1;
      const d = c.descriptors;
      const n = d instanceof Uint32Array ? d.length >>> 2 : 0;
      total += n;
      if (n === 0 || d.length !== 4 * n || total > this.size) {
        throw new RangeError(
          `chains[${i}].descriptors must hold 1 or more descriptors of 4 words, ${this.size} in all`,
        );
      }
      for (let k = 0; k < n; k++) {
        const word = d[4 * k + 3]!;
        const next = ((word >>> 16) & F_NEXT) !== 0;
        if (next !== k < n - 1 || (k === n - 1 && (word & 0xffff) !== id)) {
          throw new RangeError(
            `chains[${i}].descriptors[${k}]: NEXT on all but the last, buffer ID ${id} in the last`,
          );
        }
      }
    });
    this.#replay = chains.map((c) => ({ id: c.id, descriptors: new Uint32Array(c.descriptors) }));
    this.#replayNext = 0;
  }

  /** Forget everything (device or queue reset): positions 0, wrap counters 1, notifications on. */
  reset(): void {
    this.setState({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    this.#notifyEnabled = true;
  }
}
