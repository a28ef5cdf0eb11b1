import { type GuestMemory, GuestMemoryError } from "@virtio-ts/memory";
import {
  SplitDescFlags,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "@virtio-ts/spec";
import type { DescriptorChain } from "./chain.js";
import {
  ChainCheck,
  E_IND_LEN,
  E_IND_NEG,
  E_IND_NESTED,
  E_IND_NEXT,
  E_IND_OOB,
  E_LOOP,
  E_NEXT,
  E_OOB,
  E_R_AFTER_W,
  E_TOO_LONG,
  E_TOTAL,
  OK,
} from "./chain-check.js";
import {
  AvailIndexJumpError,
  type ChainError,
  HeadInFlightError,
  HeadOutOfRangeError,
} from "./errors.js";
import { inSharedMemory } from "./shared-view.js";
import { mapSplitRing, type SplitRingViews } from "./split-layout.js";
import type { DeviceQueue, InFlightChain, QueueLayout, QueueState, RingFeatures } from "./types.js";

const F_NEXT = SplitDescFlags.NEXT;
const F_WRITE = SplitDescFlags.WRITE;
const F_INDIRECT = SplitDescFlags.INDIRECT;
const U32_MAX = 0xffffffff;
const TWO_32 = 4294967296;
// Why the walk in `pop` stopped early, for `#walkTail` (0: it did not). The walk writes these, the
// flag bits and 2^32 as literals: a module-level `const` or an import costs a context load and a
// TDZ check per use in V8, and bytecode.
const STOP_INDIRECT = 1; // an INDIRECT descriptor: not a failure, the tail walks the table
const STOP_LOOP = 2;
const STOP_READABLE_AFTER_WRITABLE = 3;
const STOP_TOO_LONG = 4;
const STOP_OUT_OF_BOUNDS = 5;
const STOP_TOTAL = 6;
const STOP_NEXT = 7;

/** Options of a {@link SplitDeviceQueue}. */
export interface SplitDeviceOptions {
  /**
   * Track which heads are popped and not yet pushed (default true). Then `pop` refuses a head
   * the driver makes available again while it is still in flight ({@link HeadInFlightError}),
   * and `push` refuses a head that is not in flight and a `written` larger than the chain's
   * writable bytes. Turn it off only for a device that does its own bookkeeping; `push` then
   * checks only that `head` is below the queue size and `written` is a le32. Must stay on with
   * VIRTIO_F_IN_ORDER, whose order checks need the bookkeeping.
   */
  readonly trackInFlight?: boolean;
}

/**
 * Device side of a split virtqueue (VIRTIO 1.3 §2.7): consumes the available ring, validates
 * every chain, fills the used ring, and decides notifications.
 *
 * Who writes what (and whether we trust it): the driver writes the descriptor table, indirect
 * tables and the available ring (`flags`, `idx`, `ring[]`, `used_event`): untrusted, each word
 * read once and validated. The device (this class) writes the used ring (`flags`, `idx`,
 * `ring[]`, `avail_event`), which the driver must not write. `avail.idx`, `used.idx`, the
 * flags and the event words are accessed with `Atomics` so that publication order holds when
 * driver and device run on different threads; descriptors, ring entries and used elements are
 * plain accesses ordered by those atomics.
 *
 * Allocation: the ring views, the in-flight map and the loop-detection map are created in the
 * constructor; `pop`, `push`, `needsInterrupt` and the notification methods allocate nothing
 * (an `Error` is built only when throwing).
 *
 * @example
 * ```ts
 * const layout = { size: 256, desc: 0x1000, driver: 0x2000, device: 0x3000 };
 * const q = new SplitDeviceQueue(mem, layout, ringFeatures(negotiated));
 * const chain = new DescriptorChain(layout.size);
 * q.disableNotifications();
 * do {
 *   while (q.pop(chain)) q.push(chain.head, serve(chain));
 * } while (q.enableNotifications());
 * if (q.needsInterrupt()) raiseInterrupt();
 * ```
 */
export class SplitDeviceQueue implements DeviceQueue {
  /** @inheritdoc */
  readonly size: number;
  /** The negotiated ring features. */
  readonly features: RingFeatures;
  readonly #mem: GuestMemory;
  readonly #check: ChainCheck;
  readonly #layout: QueueLayout;
  // The ring's views as own fields (not through a views object): one load fewer per use.
  // Set together by #map() (the constructor and remap()).
  /** Descriptor table, 4 u32 words per descriptor. */
  #desc!: Uint32Array;
  /** Available ring as u16 words: flags, idx, ring[size], used_event. */
  #avail!: Uint16Array;
  /** Used ring as u16 words: flags, idx, …, avail_event. */
  #used16!: Uint16Array;
  /** Used ring elements as u32 words, from used+4: id, len per element. */
  #used32!: Uint32Array;
  /** Whether the ring is in shared memory: `used.idx` is then published with `Atomics`. */
  #atomic!: boolean;
  readonly #mask: number;
  readonly #eventIdx: boolean;
  readonly #indirect: boolean;
  readonly #track: boolean;
  readonly #inOrder: boolean;
  /** Word index of `used_event` in the avail view. */
  readonly #usedEventAt: number;
  /** Word index of `avail_event` in the used16 view. */
  readonly #availEventAt: number;
  /** 1 where a head is popped and not yet pushed (when tracking). */
  readonly #inFlight: Uint8Array;
  /** Writable bytes of each in-flight chain, to refuse a push that claims more. */
  readonly #writable: Uint32Array;
  /** Epoch-stamped visited map for loop detection, reused across pops without clearing. */
  readonly #visited: Uint32Array;
  /** IN_ORDER: heads in flight in the order they were popped (a ring of `size` entries). */
  readonly #order: Uint16Array;
  #orderFirst = 0;
  #epoch = 0;
  #inFlightCount = 0;
  /** Next avail ring index to consume (free-running, 16 bits). */
  #lastAvail = 0;
  /**
   * `avail.idx` as last loaded (and validated) by {@link SplitDeviceQueue.pop}: entries before
   * it are published, so `pop` loads the shared index again only once it has consumed them
   * (Linux vhost's `avail_idx`, QEMU's `shadow_avail_idx`). One `Atomics.load` per batch
   * instead of one per chain: V8 compiles each `Atomics` call to a builtin call, not an
   * instruction.
   */
  #shadowAvail = 0;
  /** Next used ring index to fill (free-running, 16 bits). */
  #usedIdx = 0;
  /** `used.idx` as last stored: entries from it to `#usedIdx` are used, not yet published. */
  #publishedUsed = 0;
  /** `used.idx` at the previous needsInterrupt() (Linux/QEMU: signalled_used). */
  #signalledUsed = 0;
  #signalledValid = false;
  #notifyEnabled = true;
  /** Heads handed back by {@link SplitDeviceQueue.restoreInFlight}, served before the ring. */
  #replay: readonly number[] = [];
  #replayNext = 0;

  /**
   * Map the ring (once) and start at indices 0 with notifications enabled. Ring memory is not
   * written: the driver initialises it (§2.7.10.1: `used.flags` is 0 when it allocates the ring).
   *
   * @param mem guest memory (possibly behind an IOMMU).
   * @param layout where the three areas are; the device maps the used ring for writing.
   * @param features negotiated ring features (see {@link ringFeatures}).
   * @param options see {@link SplitDeviceOptions}.
   * @throws QueueConfigError if the layout is invalid (size, alignment, outside memory).
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    features: RingFeatures,
    options: SplitDeviceOptions = {},
  ) {
    this.#layout = layout;
    this.#mem = mem;
    this.#map();
    this.#check = new ChainCheck(mem, "INDIRECT and NEXT set together");
    this.size = layout.size;
    this.features = features;
    this.#eventIdx = features.eventIdx === true;
    this.#indirect = features.indirect === true;
    this.#track = options.trackInFlight !== false;
    this.#inOrder = features.inOrder === true;
    if (features.inOrder && !this.#track) {
      throw new RangeError("options.trackInFlight cannot be false with features.inOrder");
    }
    this.#mask = layout.size - 1;
    this.#usedEventAt = 2 + layout.size;
    this.#availEventAt = 2 + 4 * layout.size;
    this.#inFlight = new Uint8Array(layout.size);
    this.#writable = new Uint32Array(layout.size);
    this.#visited = new Uint32Array(layout.size);
    this.#order = new Uint16Array(features.inOrder ? layout.size : 0);
  }

  /** Number of chains popped and not yet pushed (including chains that failed validation). */
  get inFlight(): number {
    return this.#inFlightCount;
  }

  /**
   * Number of chains the driver has made available and the device has not popped yet
   * (`avail.idx` minus the next index to consume, 16-bit). Reads `avail.idx` with `Atomics`.
   * @throws AvailIndexJumpError if `avail.idx` is more than queue size ahead.
   */
  numAvailable(): number {
    const availIdx = Atomics.load(this.#avail, 1);
    const pending = (availIdx - this.#lastAvail) & 0xffff;
    if (pending > this.size) throw new AvailIndexJumpError(availIdx, this.#lastAvail, this.size);
    this.#shadowAvail = availIdx;
    return pending;
  }

  /**
   * Take the next available chain, validated completely, into `chain`.
   *
   * What is refused (all typed, nothing else escapes for any guest-written content):
   * - {@link RingError}s, the ring is inconsistent: `avail.idx` more than queue size ahead
   *   ({@link AvailIndexJumpError}, nothing consumed), a head ≥ queue size
   *   ({@link HeadOutOfRangeError}), a head still in flight ({@link HeadInFlightError}).
   *   Stop the queue and set DEVICE_NEEDS_RESET (§2.1.2).
   * - {@link ChainError}s, this chain is malformed: a loop, more descriptors than
   *   `min(queue size, chain.capacity)` (indirect entries count), a `next` outside its table, a
   *   readable descriptor after a writable one, a buffer outside guest memory (writable buffers
   *   need "write" access), more than 2^32 − 1 bytes in total, and the indirect rules. The avail
   *   entry has been consumed and the head is in flight: the device may `push(e.head, 0)` and
   *   go on, or set DEVICE_NEEDS_RESET.
   *
   * Zero-length descriptors are valid (VIRTIO 1.3 §2.7.5 and §2.7.13.1 give `len` no lower
   * bound; QEMU refuses them, Linux drivers do not make them): they appear as segments of
   * length 0 and their address is still checked (inside guest memory or at a region's end).
   * Flag bits other than NEXT, WRITE and INDIRECT are ignored.
   *
   * @param chain caller-owned cursor, overwritten (also on failure).
   * @returns false if no chain is available.
   * @throws RingError or ChainError subclasses, as above.
   */
  pop(chain: DescriptorChain): boolean {
    // One function from the avail index to the filled cursor, with no call on the way for a
    // valid direct chain: V8 inlines a callee only below a bytecode size, which the walk is not,
    // so splitting it off costs a call per chain (measured: 3–4 ns of a ~65 ns round trip).
    const size = this.size;
    let head: number;
    if (this.#replayNext < this.#replay.length) {
      head = this.#replay[this.#replayNext++]!;
    } else {
      const avail = this.#avail;
      const last = this.#lastAvail;
      if (last === this.#shadowAvail) {
        // Acquire: the driver writes descriptors and ring entries with plain stores, then stores
        // avail.idx (§2.7.13.3.1: with a memory barrier in between). This seq-cst load reads
        // that store and synchronises with it, so every plain read below (ring entries,
        // descriptors, indirect tables) of the entries before it sees what the driver wrote
        // before publishing. Reading the ring before this load could see a stale entry. Until
        // `pop` has consumed those entries it needs no further load: they stay published.
        const availIdx = Atomics.load(avail, 1);
        const pending = (availIdx - last) & 0xffff;
        if (pending === 0) return false;
        // §2.7.13: the ring is the size of the table, so a driver never has more than queue
        // size entries outstanding; a larger distance (or a decrement, §2.7.6.1) is a corrupt
        // index.
        if (pending > size) throw new AvailIndexJumpError(availIdx, last, size);
        this.#shadowAvail = availIdx;
      }
      head = avail[2 + (last & this.#mask)]!;
      const next = (last + 1) & 0xffff;
      this.#lastAvail = next;
      if (this.#eventIdx && this.#notifyEnabled && next === this.#shadowAvail) {
        // §2.7.10: tell the driver which index we will look at next, so it kicks only when it
        // publishes past it (as QEMU does on every pop while notifications are enabled).
        // Written only when this pop consumed the last entry known to be published: an index
        // before that names an entry the driver has already published, so it could only bring
        // a kick for entries this loop consumes anyway (vring_need_event fires for an event
        // index inside the entries being published). Whoever sleeps after this pop has the
        // last value stored, and the next `pop` loads avail.idx after it: the Dekker order of
        // enableNotifications.
        Atomics.store(this.#used16, this.#availEventAt, next);
      }
    }
    // Mark the head in flight, then walk its chain.
    if (head >= size) throw new HeadOutOfRangeError(head, size);
    if (this.#track) {
      if (this.#inFlight[head] === 1) throw new HeadInFlightError(head);
      // Marked before validating, so a ChainError's head can be pushed back used (with 0
      // writable bytes until the walk succeeds).
      this.#inFlight[head] = 1;
      this.#writable[head] = 0;
      // The in-flight count is below the queue size here (the head was not in flight), so the
      // order ring has room.
      if (this.#inOrder) {
        this.#order[(this.#orderFirst + this.#inFlightCount) & this.#mask] = head;
      }
    }
    this.#inFlightCount++;
    // The walk: the segment count and byte totals live in locals and are stored into the
    // cursor once, at the end. A failure only sets `stop` and leaves the loop; what the error
    // needs, and an indirect table, are worked out in #walkTail, off the hot path.
    const desc = this.#desc;
    // §2.7.5.3.1: a chain is never longer than the queue size (indirect entries included);
    // §2.7.4.1: the device may set a lower limit, here the cursor's capacity.
    let budget = chain.capacity;
    if (budget > size) budget = size;
    const visited = this.#visited;
    let epoch = (this.#epoch + 1) >>> 0;
    if (epoch === 0) {
      // Once per 2^32 walks: clear the stamps so an old one cannot look like this epoch.
      visited.fill(0);
      epoch = 1;
    }
    this.#epoch = epoch;
    const addrs = chain.addrs;
    const lens = chain.lens;
    const check = this.#check;
    chain.begin(head);
    // The memory's stable range, checked inline; ChainCheck.accessible only outside it.
    const rangeStart = check.rangeStart;
    const rangeEnd = check.rangeEnd;
    let count = 0;
    let readableCount = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let stop = 0;
    let idx = head;
    let addr = 0;
    let len = 0;
    let fn = 0;
    // Terminates: each turn marks a new descriptor (idx < size) or leaves, so at most `size`
    // descriptors are read.
    for (;;) {
      if (visited[idx] === epoch) {
        stop = 2; // STOP_LOOP
        break;
      }
      visited[idx] = epoch;
      const w = idx << 2;
      // Each descriptor is read exactly once; only these locals are used afterwards.
      addr = desc[w + 1]! * 4294967296 + desc[w]!;
      len = desc[w + 2]!;
      fn = desc[w + 3]!; // flags in the low half, next in the high half
      if ((fn & 4) !== 0) {
        stop = 1; // STOP_INDIRECT
        break;
      }
      const writable = (fn & 2) !== 0;
      // §2.7.4.2: device-writable descriptors come after all device-readable ones. Every
      // accepted segment counts in `count`, readable ones also in `readableCount`, so they
      // differ exactly when a writable one came before.
      if (!writable && count !== readableCount) {
        stop = 3; // STOP_READABLE_AFTER_WRITABLE
        break;
      }
      if (count >= budget) {
        stop = 4; // STOP_TOO_LONG
        break;
      }
      // Inside the memory's stable range (an exact `len ≤ end − addr`, so addr + len cannot
      // wrap), or else whatever the memory says (ChainCheck.accessible).
      if (
        !(addr >= rangeStart && len <= rangeEnd - addr) &&
        !check.accessible(addr, len, writable)
      ) {
        stop = 5; // STOP_OUT_OF_BOUNDS
        break;
      }
      addrs[count] = addr;
      lens[count] = len;
      count++;
      if (writable) writableBytes += len;
      else {
        readableCount++;
        readableBytes += len;
      }
      // §2.7.5.2: at most 2^32 bytes in total (see ChainCheck.segment).
      if (readableBytes + writableBytes > 0xffffffff) {
        stop = 6; // STOP_TOTAL
        break;
      }
      if ((fn & 1) === 0) break;
      if (fn >>> 16 >= size) {
        stop = 7; // STOP_NEXT
        break;
      }
      idx = fn >>> 16;
    }
    chain.setTotals(count, readableCount, readableBytes, writableBytes);
    if (stop !== 0) {
      const code = this.#walkTail(stop, chain, idx, addr, len, fn, budget);
      // A chain that failed validation can only be pushed back with `written` 0.
      if (code !== OK) throw check.error(code, head);
    }
    this.#writable[head] = chain.writableBytes;
    return true;
  }

  /**
   * The end of a walk that stopped at descriptor `idx` without finishing: follow an INDIRECT
   * descriptor into its table, or record the failure for the error the caller builds.
   */
  #walkTail(
    stop: number,
    chain: DescriptorChain,
    idx: number,
    addr: number,
    len: number,
    fn: number,
    budget: number,
  ): number {
    const check = this.#check;
    switch (stop) {
      case STOP_INDIRECT: {
        if (!this.#indirect) return check.fail(E_IND_NEG, idx, false, 0, 0);
        // §2.7.5.3.1 makes INDIRECT with NEXT a driver MUST NOT and gives the device no rule
        // for it. Continuing after the table (as Linux vhost does) would guess at the driver's
        // intent, so the chain is refused. §2.7.5.3.2: zero or more direct descriptors followed
        // by one INDIRECT descriptor is valid, and its WRITE flag is ignored.
        if ((fn & 1) !== 0) return check.fail(E_IND_NEXT, idx, false, 0, 0);
        // count > readableCount exactly when a writable segment was accepted (see pop).
        const seenWritable = chain.count !== chain.readableCount;
        return this.#walkIndirect(chain, idx, addr, len, budget, seenWritable);
      }
      case STOP_TOO_LONG:
        return check.fail(E_TOO_LONG, idx, false, budget, 0);
      case STOP_OUT_OF_BOUNDS:
        return check.fail(E_OOB, idx, false, addr, len);
      case STOP_NEXT:
        return check.fail(E_NEXT, idx, false, fn >>> 16, this.size);
      case STOP_LOOP:
        return check.fail(E_LOOP, idx, false, 0, 0);
      case STOP_READABLE_AFTER_WRITABLE:
        return check.fail(E_R_AFTER_W, idx, false, 0, 0);
      case STOP_TOTAL:
        return check.fail(E_TOTAL, idx, false, 0, 0);
      default:
        throw new Error(`SplitDeviceQueue: unknown walk stop ${stop}`);
    }
  }

  #walkIndirect(
    chain: DescriptorChain,
    at: number,
    tableAddr: number,
    tableLen: number,
    budget: number,
    seenWritableBefore: boolean,
  ): number {
    // §2.7.5.3: the table holds len / 16 descriptors; a length that is 0 or not a multiple of
    // 16 describes no valid table.
    if (tableLen === 0 || (tableLen & 15) !== 0) {
      return this.#check.fail(E_IND_LEN, at, false, tableLen, 0);
    }
    const n = tableLen >>> 4;
    // Refuse a table that cannot fit before reading any of it: no work proportional to a
    // guest-chosen length beyond the budget (n ≤ budget ≤ size also keeps `visited` in range).
    if (n > budget) return this.#check.fail(E_TOO_LONG, at, false, budget, 0);
    const mem = this.#mem;
    if (!mem.check(tableAddr, tableLen, "read")) {
      return this.#check.fail(E_IND_OOB, at, false, tableAddr, tableLen);
    }
    const visited = this.#visited;
    const epoch = this.#nextEpoch();
    let i = 0;
    let seenWritable = seenWritableBefore;
    try {
      // Terminates as the direct walk: at most n ≤ budget entries are read.
      for (;;) {
        if (visited[i] === epoch) return this.#check.fail(E_LOOP, i, true, 0, 0);
        visited[i] = epoch;
        const base = tableAddr + i * 16;
        // Each entry is read exactly once, as for the direct table.
        const lo = mem.readU32(base);
        const hi = mem.readU32(base + 4);
        const len = mem.readU32(base + 8);
        const fn = mem.readU32(base + 12);
        const flags = fn & 0xffff;
        const next = fn >>> 16;
        // §2.7.5.3.1: only one table per descriptor.
        if ((flags & F_INDIRECT) !== 0) return this.#check.fail(E_IND_NESTED, i, true, 0, 0);
        const writable = (flags & F_WRITE) !== 0;
        if (writable) seenWritable = true;
        else if (seenWritable) return this.#check.fail(E_R_AFTER_W, i, true, 0, 0);
        const code = this.#check.segment(chain, i, true, hi * TWO_32 + lo, len, writable, budget);
        if (code !== OK) return code;
        if ((flags & F_NEXT) === 0) return OK;
        // §2.7.5.3: `next` indexes the indirect table itself.
        if (next >= n) return this.#check.fail(E_NEXT, i, true, next, n);
        i = next;
      }
    } catch (e) {
      // The whole table was checked above, so a scalar read fails only where the table spans
      // two regions (or DMA windows) and an entry straddles the boundary.
      if (!(e instanceof GuestMemoryError)) throw e;
      return this.#check.fail(E_IND_OOB, at, false, tableAddr, tableLen);
    }
  }

  #nextEpoch(): number {
    this.#epoch = (this.#epoch + 1) >>> 0;
    if (this.#epoch === 0) {
      // Once per 2^32 walks: clear the stamps so an old one cannot look like this epoch.
      this.#visited.fill(0);
      this.#epoch = 1;
    }
    return this.#epoch;
  }

  /**
   * Return a chain as used: write the used element, then publish `used.idx`.
   *
   * With VIRTIO_F_IN_ORDER the device uses buffers in the order they were made available
   * (§2.7.9), so `head` must be the oldest chain in flight; {@link SplitDeviceQueue.pushBatch}
   * returns several at once.
   *
   * @param head `chain.head` of a popped chain (also of one whose pop threw a ChainError).
   * @param written bytes written into the chain's writable part (§2.7.8.2: at least that many
   *   were written, from the first writable buffer on).
   * @throws RangeError naming `head` if it is not in flight (or, with IN_ORDER, not the oldest
   *   chain in flight), or `written` if it is not an integer in [0, the chain's writable bytes].
   */
  push(head: number, written: number): void {
    this.use(head, written);
    this.#publishUsedIdx();
  }

  /**
   * Return a chain as used, like {@link SplitDeviceQueue.push}, with the same checks, but
   * without storing `used.idx`: the used element is written, and the driver sees it once
   * {@link SplitDeviceQueue.publishUsed} (or `push`, `pushBatch`, `needsInterrupt`,
   * `getState`) stores the index. A device that serves a batch calls `use` per chain and
   * publishes once (QEMU's `virtqueue_fill` / `virtqueue_flush`, Linux vhost's
   * `vhost_add_used_n`): in shared memory that is one seq-cst `Atomics.store` per batch, where
   * `push` pays one per chain (JavaScript has no release store).
   *
   * @param head `chain.head` of a popped chain.
   * @param written bytes written into the chain's writable part.
   * @throws RangeError as {@link SplitDeviceQueue.push}.
   */
  use(head: number, written: number): void {
    // `typeof x === "number" && x >>> 0 === x`: an integer in [0, 2^32) (no NaN, fraction, string
    // or BigInt).
    const track = this.#track;
    if (
      !(typeof head === "number" && head >>> 0 === head && head < this.size) ||
      (track && this.#inFlight[head] !== 1) ||
      (this.#inOrder && this.#order[this.#orderFirst]! !== head)
    ) {
      throw this.#pushHeadError(head);
    }
    const max = track ? this.#writable[head]! : U32_MAX;
    if (!(typeof written === "number" && written >>> 0 === written && written <= max)) {
      throw writtenError("", max, written);
    }
    if (track) this.#inFlight[head] = 0;
    if (this.#inFlightCount > 0) this.#inFlightCount--;
    if (this.#inOrder) this.#orderFirst = (this.#orderFirst + 1) & this.#mask;
    this.#writeUsed(head, written, 1);
  }

  /**
   * Store `used.idx`, making every chain returned by {@link SplitDeviceQueue.use} visible to the
   * driver (§2.7.8.2: the used elements are written before the index). Stores nothing when
   * nothing is waiting.
   */
  publishUsed(): void {
    if (this.#publishedUsed !== this.#usedIdx) this.#publishUsedIdx();
  }

  /** Cold path of `push`: the RangeError naming `head`. */
  #pushHeadError(head: number): RangeError {
    if (!(head >= 0 && head < this.size && Number.isInteger(head))) {
      return new RangeError(`head must be a descriptor index in [0, ${this.size}), got ${head}`);
    }
    if (this.#track && this.#inFlight[head] !== 1) {
      return new RangeError(`head ${head} is not a chain in flight on this queue`);
    }
    return new RangeError(
      `head ${head} is not the oldest chain in flight (${this.#order[this.#orderFirst]}): VIRTIO_F_IN_ORDER needs buffers used in order`,
    );
  }

  /**
   * VIRTIO_F_IN_ORDER batching (§2.7.9): return the `count` oldest chains in flight as used
   * with a single used element, at the used ring entry of the first of them, whose id is the
   * head of the last one, and advance `used.idx` by `count`. The driver takes the skipped
   * chains as completely used (all their writable bytes written); `written` is the length of
   * the last one.
   *
   * @param count chains to return, in [1, {@link SplitDeviceQueue.inFlight}].
   * @param written bytes written into the last chain's writable part.
   * @throws RangeError if IN_ORDER was not negotiated, or naming `count` / `written`.
   */
  pushBatch(count: number, written: number): void {
    if (!this.features.inOrder) {
      throw new RangeError("pushBatch needs VIRTIO_F_IN_ORDER (features.inOrder)");
    }
    const n = this.#inFlightCount;
    if (!(Number.isInteger(count) && count >= 1 && count <= n)) {
      throw new RangeError(
        `count must be an integer in [1, ${n}] (chains in flight), got ${count}`,
      );
    }
    const mask = this.#mask;
    const last = this.#order[(this.#orderFirst + count - 1) & mask]!;
    const max = this.#writable[last]!;
    if (!(typeof written === "number" && written >>> 0 === written && written <= max)) {
      throw writtenError("last ", max, written);
    }
    for (let i = 0; i < count; i++) this.#inFlight[this.#order[(this.#orderFirst + i) & mask]!] = 0;
    this.#orderFirst = (this.#orderFirst + count) & mask;
    this.#inFlightCount = n - count;
    this.#writeUsed(last, written, count);
    this.#publishUsedIdx();
  }

  /** Write one used element at the next used entry and move the private used index on. */
  #writeUsed(id: number, written: number, advance: number): void {
    const used32 = this.#used32;
    const slot = (this.#usedIdx & this.#mask) << 1;
    // §2.7.8.2: the used element (id and len) is written before used.idx is updated.
    used32[slot] = id;
    used32[slot + 1] = written;
    this.#usedIdx = (this.#usedIdx + advance) & 0xffff;
  }

  /** Store `used.idx`: the used elements written so far become visible to the driver. */
  #publishUsedIdx(): void {
    // Release: the seq-cst store is ordered after the plain element writes (and after the
    // device model's writes into the buffers), so a driver that Atomics.loads used.idx sees them.
    // Memory no other thread can see needs no ordering beyond program order.
    const idx = this.#usedIdx;
    this.#publishedUsed = idx;
    if (this.#atomic) Atomics.store(this.#used16, 1, idx);
    else this.#used16[1] = idx;
  }

  /**
   * Whether to send a used buffer notification for the buffers pushed since the previous call
   * (call once per batch, after the pushes). False if nothing was pushed since.
   *
   * §2.7.7.2: without VIRTIO_F_EVENT_IDX, notify unless the driver set
   * VIRTQ_AVAIL_F_NO_INTERRUPT; with it, ignore the flag and notify when the batch wrote the
   * entry at `used_event` (`vring_need_event(used_event, new used.idx, used.idx at the previous
   * call)`). The first call after construction, `setState` or `reset` notifies if anything
   * was pushed, since the previous index is unknown (as QEMU does).
   */
  needsInterrupt(): boolean {
    this.publishUsed();
    const now = this.#usedIdx;
    const old = this.#signalledUsed;
    const valid = this.#signalledValid;
    this.#signalledUsed = now;
    this.#signalledValid = true;
    // Nothing pushed since the previous call (or since setState / reset): nothing to signal.
    if (now === old) return false;
    // Full barrier: the driver re-enabling interrupts stores used_event / clears NO_INTERRUPT
    // and then loads used.idx; we stored used.idx (push) and now load its word. All four are
    // seq-cst Atomics, so they fall into one total order and at least one side sees the other's
    // store: either we see the new used_event and notify, or the driver sees our used.idx and
    // reaps without waiting. Plain accesses (or a load reordered before the store, which
    // acquire/release alone allows) could lose the wakeup; Linux uses virtio_mb() here.
    if (this.#eventIdx) {
      return !valid || vringNeedEvent(Atomics.load(this.#avail, this.#usedEventAt), now, old);
    }
    return (Atomics.load(this.#avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the driver for available buffer notifications again: §2.7.10.2, clear
   * VIRTQ_USED_F_NO_NOTIFY, or with VIRTIO_F_EVENT_IDX set `avail_event` to the next index to
   * consume. Then re-read `avail.idx`.
   *
   * The re-check closes the lost-wakeup race: a driver that published just before our store
   * saw notifications still off and did not kick. Both the store and the re-read are seq-cst
   * (matching the driver's store of `avail.idx` then load of the flags / `avail_event`, §2.7.13.4),
   * so either the driver sees our request and kicks, or we see its index here.
   *
   * @returns true if chains are available (pop again before sleeping).
   */
  enableNotifications(): boolean {
    this.#notifyEnabled = true;
    const used16 = this.#used16;
    if (this.#eventIdx) Atomics.store(used16, this.#availEventAt, this.#lastAvail);
    else Atomics.store(used16, 0, 0); // §2.7.10.2: flags is 0 or 1, and only we write it.
    return (
      Atomics.load(this.#avail, 1) !== this.#lastAvail || this.#replayNext < this.#replay.length
    );
  }

  /**
   * Ask the driver not to notify while the device polls: §2.7.10.2, set
   * VIRTQ_USED_F_NO_NOTIFY; with VIRTIO_F_EVENT_IDX (where `flags` must stay 0) stop moving
   * `avail_event` forward, so the driver kicks at most once more, when it passes it.
   */
  disableNotifications(): void {
    this.#notifyEnabled = false;
    if (!this.#eventIdx) Atomics.store(this.#used16, 0, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Ring indices for stop/restart and migration: `availIdx` is the next avail index to
   * consume, `usedIdx` the next used index to fill (wrap counters unused, always true). Save it
   * when no chain is in flight (vhost GET_VRING_BASE stops and drains first). Chains returned
   * by {@link SplitDeviceQueue.use} are published first, so `used.idx` in memory matches.
   */
  getState(): QueueState {
    // The saved used index is the one in memory: publish what `use` left waiting.
    this.publishUsed();
    return { availIdx: this.#lastAvail, usedIdx: this.#usedIdx, availWrap: true, usedWrap: true };
  }

  /**
   * Map the ring again from the same memory and layout, keeping every index and the chains in
   * flight. For memory whose backing buffer can be replaced (a `WebAssembly.Memory` that grew
   * detaches its old `ArrayBuffer`, and with it the views this queue made when it was
   * created): call it after the memory object serves the new buffer.
   * @throws QueueConfigError if the ring is no longer inside memory.
   */
  remap(): void {
    this.#map();
  }

  /** Map the ring's views (the constructor and remap), and whether they are in shared memory. */
  #map(): void {
    const views: SplitRingViews = mapSplitRing(this.#mem, this.#layout, "device");
    this.#desc = views.desc;
    this.#avail = views.avail;
    this.#used16 = views.used16;
    this.#used32 = views.used32;
    this.#atomic = inSharedMemory(views.used16);
  }

  /**
   * Restore ring indices saved by {@link SplitDeviceQueue.getState}. Chains in flight are
   * forgotten, and the next {@link SplitDeviceQueue.needsInterrupt} notifies if anything was
   * pushed. Ring memory is not written (so chains returned by {@link SplitDeviceQueue.use} and
   * not published stay unpublished).
   * @throws RangeError naming the field if an index is not an integer in [0, 65535].
   */
  setState(state: QueueState): void {
    checkIndex("availIdx", state.availIdx);
    checkIndex("usedIdx", state.usedIdx);
    this.#lastAvail = state.availIdx;
    this.#shadowAvail = state.availIdx;
    this.#usedIdx = state.usedIdx;
    this.#publishedUsed = state.usedIdx;
    this.#signalledUsed = state.usedIdx;
    this.#inFlight.fill(0);
    this.#inFlightCount = 0;
    this.#orderFirst = 0;
    this.#signalledValid = false;
    this.#replay = [];
    this.#replayNext = 0;
  }

  /**
   * Suspend / resume: the chains popped and not yet pushed, for {@link DeviceQueue.restoreInFlight}
   * of a queue over the same guest memory. The heads in flight (in pop order with IN_ORDER, else by index), then those handed back by
   * {@link SplitDeviceQueue.restoreInFlight} and not popped again yet. `descriptors` is empty:
   * the descriptor table still holds every chain in flight (§2.7.13: a buffer made available
   * belongs to the device until it is used).
   * @throws RangeError if the queue was built with `trackInFlight: false`
   */
  saveInFlight(): InFlightChain[] {
    if (!this.#track) throw new RangeError("saveInFlight needs options.trackInFlight");
    const none = new Uint32Array(0);
    const out: InFlightChain[] = [];
    if (this.features.inOrder) {
      for (let i = 0; i < this.#inFlightCount; i++) {
        out.push({ id: this.#order[(this.#orderFirst + i) & this.#mask]!, descriptors: none });
      }
    } else {
      for (let h = 0; h < this.size; h++) {
        if (this.#inFlight[h] === 1) out.push({ id: h, descriptors: none });
      }
    }
    for (let i = this.#replayNext; i < this.#replay.length; i++) {
      out.push({ id: this.#replay[i]!, descriptors: none });
    }
    return out;
  }

  /**
   * Suspend / resume: after {@link SplitDeviceQueue.setState}, make the saved chains the first
   * ones `pop` returns, validated again like any chain. Each `id` is a head in [0, size), listed once; `descriptors` is ignored (the chain is walked
   * again from the descriptor table when popped, with every check of a ring pop).
   */
  restoreInFlight(chains: readonly InFlightChain[]): void {
    if (!Array.isArray(chains) || chains.length > this.size) {
      throw new RangeError(`chains must be an array of at most ${this.size} entries`);
    }
    const seen = new Uint8Array(this.size);
    const heads = chains.map((c, i) => {
      const id = c?.id;
      if (!Number.isInteger(id) || id < 0 || id >= this.size || seen[id] === 1) {
        throw new RangeError(
          `chains[${i}].id must be a head in [0, ${this.size}) not listed before, got ${id}`,
        );
      }
      seen[id] = 1;
      return id;
    });
    this.#replay = heads;
    this.#replayNext = 0;
  }

  /**
   * Forget everything (device or queue reset, §2.1.2 / §2.6.1): indices 0, nothing in flight,
   * notifications on. Ring memory is not written; the driver reinitialises it.
   */
  reset(): void {
    this.setState({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    this.#notifyEnabled = true;
  }
}

/** Cold path of `push` / `pushBatch`: the RangeError naming `written`. */
function writtenError(which: string, max: number, written: number): RangeError {
  return new RangeError(
    `written must be an integer in [0, ${max}] (the ${which}chain's writable bytes), got ${written}`,
  );
}

function checkIndex(field: string, x: number): void {
  if (!Number.isInteger(x) || x < 0 || x > 0xffff) {
    throw new RangeError(`state.${field} must be an integer in [0, 65535], got ${x}`);
  }
}
