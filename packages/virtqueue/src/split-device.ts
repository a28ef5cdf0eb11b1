import type { GuestMemory } from "@virtio-ts/memory";
import {
  SplitDescFlags,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "@virtio-ts/spec";
import type { DescriptorChain } from "./chain.js";
import {
  AvailIndexJumpError,
  BufferOutOfBoundsError,
  type ChainError,
  ChainTooLongError,
  DescriptorLoopError,
  HeadInFlightError,
  HeadOutOfRangeError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NextOutOfRangeError,
  ReadableAfterWritableError,
  TotalLengthOverflowError,
} from "./errors.js";
import { mapSplitRing, type SplitRingViews } from "./split-layout.js";
import type { DeviceQueue, QueueLayout, QueueState, RingFeatures } from "./types.js";

const F_NEXT = SplitDescFlags.NEXT;
const F_WRITE = SplitDescFlags.WRITE;
const F_INDIRECT = SplitDescFlags.INDIRECT;
const U32_MAX = 0xffffffff;
const TWO_32 = 4294967296;

// Numeric failure codes of the chain walk: the hot path returns one of these, and an Error is
// built only on the cold path (chainError) from the queue's scratch fields.
const OK = 0;
const E_LOOP = 1;
const E_TOO_LONG = 2;
const E_NEXT = 3;
const E_R_AFTER_W = 4;
const E_OOB = 5;
const E_TOTAL = 6;
const E_IND_NEG = 7;
const E_IND_NEXT = 8;
const E_IND_LEN = 9;
const E_IND_NESTED = 10;
const E_IND_OOB = 11;

/**
 * Device side of a split virtqueue (VIRTIO 1.3 §2.7): consumes the available ring, validates
 * every chain, fills the used ring, and decides notifications.
 *
 * Who writes what (and whether we trust it): the driver writes the descriptor table and the
 * available ring (`flags`, `idx`, `ring[]`, `used_event`) — untrusted, read once and validated;
 * the device (this class) writes the used ring (`flags`, `idx`, `ring[]`, `avail_event`).
 * `avail.idx` and `used.idx`, the flags and the event words are accessed with `Atomics` so
 * that publication order holds when driver and device run on different threads.
 *
 * @example
 * ```ts
 * const q = new SplitDeviceQueue(mem, { size: 256, desc: 0x1000, driver: 0x2000, device: 0x3000 }, NO_RING_FEATURES);
 * const chain = new DescriptorChain(256);
 * while (q.pop(chain)) {
 *   // ... read chain.addr(i)/chain.len(i) ...
 *   q.push(chain.head, 0);
 * }
 * if (q.needsInterrupt()) raiseInterrupt();
 * ```
 */
export class SplitDeviceQueue implements DeviceQueue {
  /** @inheritdoc */
  readonly size: number;
  /** The negotiated ring features. */
  readonly features: RingFeatures;
  readonly #mem: GuestMemory;
  readonly #v: SplitRingViews;
  readonly #mask: number;
  readonly #usedEventAt: number;
  readonly #availEventAt: number;
  /** 1 where a head is popped and not yet pushed. */
  readonly #inFlight: Uint8Array;
  /** Writable bytes of each in-flight chain, to refuse a push that claims more. */
  readonly #writable: Float64Array;
  /** Epoch-stamped visited map for loop detection, reused across pops without clearing. */
  readonly #visited: Uint32Array;
  #epoch = 0;
  #lastAvail = 0;
  #usedIdx = 0;
  #signalledUsed = 0;
  #signalledValid = false;
  #notifyEnabled = true;
  // Scratch fields describing the last walk failure (cold path only).
  #errIndex = 0;
  #errIndirect = false;
  #errA = 0;
  #errB = 0;

  /**
   * @param mem guest memory (possibly behind an IOMMU).
   * @param layout where the three areas are.
   * @param features negotiated ring features (see `ringFeatures`).
   * @throws QueueConfigError if the layout is invalid (size, alignment, outside memory).
   */
  constructor(mem: GuestMemory, layout: QueueLayout, features: RingFeatures) {
    this.#v = mapSplitRing(mem, layout, "device");
    this.#mem = mem;
    this.size = layout.size;
    this.features = features;
    this.#mask = layout.size - 1;
    this.#usedEventAt = 2 + layout.size;
    this.#availEventAt = 2 + 4 * layout.size;
    this.#inFlight = new Uint8Array(layout.size);
    this.#writable = new Float64Array(layout.size);
    this.#visited = new Uint32Array(layout.size);
  }

  /** Number of chains popped and not yet pushed. */
  get inFlight(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) n += this.#inFlight[i]!;
    return n;
  }

  /**
   * Number of chains the driver has made available and the device has not popped yet.
   * @throws AvailIndexJumpError if `avail.idx` ran more than queue size ahead.
   */
  numAvailable(): number {
    const availIdx = Atomics.load(this.#v.avail, 1);
    const pending = (availIdx - this.#lastAvail) & 0xffff;
    if (pending > this.size) throw new AvailIndexJumpError(availIdx, this.#lastAvail, this.size);
    return pending;
  }

  /** @inheritdoc */
  pop(chain: DescriptorChain): boolean {
    const v = this.#v;
    // Acquire: this seq-cst load synchronises with the driver's store of avail.idx, so the
    // plain reads of avail.ring[] and of the descriptors below see what it wrote before.
    const availIdx = Atomics.load(v.avail, 1);
    const last = this.#lastAvail;
    const pending = (availIdx - last) & 0xffff;
    if (pending === 0) return false;
    // §2.7.6: the driver never has more than queue size entries outstanding.
    if (pending > this.size) throw new AvailIndexJumpError(availIdx, last, this.size);
    const head = v.avail[2 + (last & this.#mask)]!;
    this.#lastAvail = (last + 1) & 0xffff;
    if (this.features.eventIdx && this.#notifyEnabled) {
      // §2.7.10: tell the driver which index we will look at next, so it kicks only when it
      // publishes past it (as QEMU does on every pop while notifications are enabled).
      Atomics.store(v.used16, this.#availEventAt, this.#lastAvail);
    }
    if (head >= this.size) throw new HeadOutOfRangeError(head, this.size);
    if (this.#inFlight[head] === 1) throw new HeadInFlightError(head);
    // Mark in flight before validating, so a ChainError's head can be pushed back used.
    this.#inFlight[head] = 1;
    this.#writable[head] = 0;
    const code = this.#walk(head, chain);
    if (code !== OK) throw this.#chainError(code, head);
    this.#writable[head] = chain.writableBytes;
    return true;
  }

  /** Walk and validate the chain at `head` into `chain`; returns OK or an error code. */
  #walk(head: number, chain: DescriptorChain): number {
    const desc = this.#v.desc;
    const size = this.size;
    // VIRTIO 1.3 §2.7.5.3.1: a chain is never longer than the queue size (indirect entries included).
    const budget = Math.min(chain.capacity, size);
    const visited = this.#visited;
    const epoch = this.#nextEpoch();
    chain.begin(head);
    let idx = head;
    let seenWritable = false;
    for (;;) {
      if (visited[idx] === epoch) return this.#fail(E_LOOP, idx, false, 0, 0);
      visited[idx] = epoch;
      const w = idx << 2;
      // Each descriptor is read exactly once; only these locals are used afterwards.
      const addr = desc[w + 1]! * TWO_32 + desc[w]!;
      const len = desc[w + 2]!;
      const fn = desc[w + 3]!;
      const flags = fn & 0xffff;
      const next = fn >>> 16;
      if ((flags & F_INDIRECT) !== 0) {
        // §2.7.5.3.1: INDIRECT only if negotiated, never together with NEXT; the device
        // ignores WRITE on the descriptor that refers to the table.
        if (!this.features.indirect) return this.#fail(E_IND_NEG, idx, false, 0, 0);
        if ((flags & F_NEXT) !== 0) return this.#fail(E_IND_NEXT, idx, false, 0, 0);
        return this.#walkIndirect(chain, idx, addr, len, budget, seenWritable);
      }
      const writable = (flags & F_WRITE) !== 0;
      if (writable) seenWritable = true;
      else if (seenWritable) return this.#fail(E_R_AFTER_W, idx, false, 0, 0);
      const code = this.#segment(chain, idx, false, addr, len, writable, budget);
      if (code !== OK) return code;
      if ((flags & F_NEXT) === 0) return OK;
      if (next >= size) return this.#fail(E_NEXT, idx, false, next, size);
      idx = next;
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
    if (tableLen === 0 || (tableLen & 15) !== 0)
      return this.#fail(E_IND_LEN, at, false, tableLen, 0);
    const n = tableLen >>> 4;
    // Reject a table that cannot fit before reading any of it: no work proportional to a
    // guest-chosen length beyond the queue size.
    if (n > budget) return this.#fail(E_TOO_LONG, at, false, budget, 0);
    const mem = this.#mem;
    if (!mem.check(tableAddr, tableLen, "read"))
      return this.#fail(E_IND_OOB, at, false, tableAddr, tableLen);
    const visited = this.#visited;
    const epoch = this.#nextEpoch();
    let i = 0;
    let seenWritable = seenWritableBefore;
    try {
      for (;;) {
        if (visited[i] === epoch) return this.#fail(E_LOOP, i, true, 0, 0);
        visited[i] = epoch;
        const base = tableAddr + i * 16;
        const lo = mem.readU32(base);
        const hi = mem.readU32(base + 4);
        const len = mem.readU32(base + 8);
        const fn = mem.readU32(base + 12);
        const flags = fn & 0xffff;
        const next = fn >>> 16;
        if ((flags & F_INDIRECT) !== 0) return this.#fail(E_IND_NESTED, i, true, 0, 0);
        const writable = (flags & F_WRITE) !== 0;
        if (writable) seenWritable = true;
        else if (seenWritable) return this.#fail(E_R_AFTER_W, i, true, 0, 0);
        const code = this.#segment(chain, i, true, hi * TWO_32 + lo, len, writable, budget);
        if (code !== OK) return code;
        if ((flags & F_NEXT) === 0) return OK;
        if (next >= n) return this.#fail(E_NEXT, i, true, next, n);
        i = next;
      }
    } catch {
      // The whole table was checked above; a read can only fail if the table straddles two
      // regions that are not host-contiguous in a way a scalar read cannot cross.
      return this.#fail(E_IND_OOB, at, false, tableAddr, tableLen);
    }
  }

  /** Validate one data descriptor and append it. */
  #segment(
    chain: DescriptorChain,
    index: number,
    indirect: boolean,
    addr: number,
    len: number,
    writable: boolean,
    budget: number,
  ): number {
    if (chain.count >= budget) return this.#fail(E_TOO_LONG, index, indirect, budget, 0);
    // Zero-length buffers are accepted (the spec does not forbid them for split rings) but, like
    // any buffer, must start inside guest memory. addr ≥ 2^53 never passes the check.
    if (!this.#mem.check(addr, len, writable ? "write" : "read")) {
      return this.#fail(E_OOB, index, indirect, addr, len);
    }
    chain.append(addr, len, writable);
    if (chain.readableBytes > U32_MAX || chain.writableBytes > U32_MAX) {
      return this.#fail(E_TOTAL, index, indirect, 0, 0);
    }
    return OK;
  }

  #nextEpoch(): number {
    this.#epoch = (this.#epoch + 1) >>> 0;
    if (this.#epoch === 0) {
      this.#visited.fill(0);
      this.#epoch = 1;
    }
    return this.#epoch;
  }

  #fail(code: number, index: number, indirect: boolean, a: number, b: number): number {
    this.#errIndex = index;
    this.#errIndirect = indirect;
    this.#errA = a;
    this.#errB = b;
    return code;
  }

  /** Cold path: build the typed error for the last walk failure. */
  #chainError(code: number, head: number): ChainError {
    const i = this.#errIndex;
    const ind = this.#errIndirect;
    const a = this.#errA;
    const b = this.#errB;
    switch (code) {
      case E_LOOP:
        return new DescriptorLoopError("descriptor chain loops", head, i, ind);
      case E_TOO_LONG:
        return new ChainTooLongError(head, i, ind, a);
      case E_NEXT:
        return new NextOutOfRangeError(head, i, ind, a, b);
      case E_R_AFTER_W:
        return new ReadableAfterWritableError(
          "device-readable descriptor after a writable one",
          head,
          i,
          ind,
        );
      case E_OOB:
        return new BufferOutOfBoundsError(head, i, ind, a, b);
      case E_TOTAL:
        return new TotalLengthOverflowError("chain length reaches 2^32 bytes", head, i, ind);
      case E_IND_NEG:
        return new IndirectNotNegotiatedError(
          "INDIRECT flag without VIRTIO_F_INDIRECT_DESC",
          head,
          i,
          ind,
        );
      case E_IND_NEXT:
        return new IndirectWithNextError("INDIRECT and NEXT set together", head, i, ind);
      case E_IND_LEN:
        return new IndirectTableLengthError(head, i, a);
      case E_IND_NESTED:
        return new NestedIndirectError("INDIRECT inside an indirect table", head, i, ind);
      default:
        return new IndirectTableOutOfBoundsError(head, i, a, b);
    }
  }

  /**
   * @inheritdoc
   * @throws RangeError if `head` is not in flight or `written` exceeds the chain's writable bytes.
   */
  push(head: number, written: number): void {
    if (!(head >= 0 && head < this.size) || this.#inFlight[head] !== 1) {
      throw new RangeError(`head ${head} is not a chain in flight on this queue`);
    }
    if (!Number.isInteger(written) || written < 0 || written > this.#writable[head]!) {
      throw new RangeError(
        `written must be an integer in [0, ${this.#writable[head]}] (the chain's writable bytes), got ${written}`,
      );
    }
    this.#inFlight[head] = 0;
    const v = this.#v;
    const slot = (this.#usedIdx & this.#mask) << 1;
    // §2.7.8.2: the used element (id and len) is written before used.idx is updated.
    v.used32[slot] = head;
    v.used32[slot + 1] = written;
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    // Release: the driver's Atomics.load of used.idx then sees the element written above.
    Atomics.store(v.used16, 1, this.#usedIdx);
  }

  /** @inheritdoc */
  needsInterrupt(): boolean {
    const now = this.#usedIdx;
    const old = this.#signalledUsed;
    const valid = this.#signalledValid;
    this.#signalledUsed = now;
    this.#signalledValid = true;
    if (valid && now === old) return false;
    // The seq-cst load below is ordered after the used.idx store in push(): the full barrier
    // the EVENT_IDX race needs (Linux: virtio_mb before reading used_event).
    if (this.features.eventIdx) {
      // §2.7.7.2: with EVENT_IDX, interrupt iff used.idx moved past used_event since the last one.
      return !valid || vringNeedEvent(Atomics.load(this.#v.avail, this.#usedEventAt), now, old);
    }
    // §2.7.7.2: without EVENT_IDX, honour VIRTQ_AVAIL_F_NO_INTERRUPT.
    return (Atomics.load(this.#v.avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** @inheritdoc */
  enableNotifications(): boolean {
    this.#notifyEnabled = true;
    const v = this.#v;
    if (this.features.eventIdx) Atomics.store(v.used16, this.#availEventAt, this.#lastAvail);
    else Atomics.and(v.used16, 0, ~VIRTQ_USED_F_NO_NOTIFY & 0xffff);
    // Re-check after publishing our wish: a driver that published just before seeing it did
    // not kick, so the device must look again (the classic lost-wakeup race).
    return Atomics.load(v.avail, 1) !== this.#lastAvail;
  }

  /** @inheritdoc */
  disableNotifications(): void {
    this.#notifyEnabled = false;
    // With EVENT_IDX the driver ignores NO_NOTIFY (§2.7.10); leaving avail_event behind is
    // enough to suppress further kicks.
    if (!this.features.eventIdx) Atomics.or(this.#v.used16, 0, VIRTQ_USED_F_NO_NOTIFY);
  }

  /** @inheritdoc */
  getState(): QueueState {
    return { availIdx: this.#lastAvail, usedIdx: this.#usedIdx, availWrap: true, usedWrap: true };
  }

  /**
   * Restore ring indices saved by {@link SplitDeviceQueue.getState}. Chains in flight are
   * forgotten: save state only once they have been pushed (vhost GET_VRING_BASE drains first).
   * @throws RangeError naming the field if an index is not a 16-bit integer.
   */
  setState(state: QueueState): void {
    for (const k of ["availIdx", "usedIdx"] as const) {
      const x = state[k];
      if (!Number.isInteger(x) || x < 0 || x > 0xffff) {
        throw new RangeError(`state.${k} must be an integer in [0, 65535], got ${x}`);
      }
    }
    this.#lastAvail = state.availIdx;
    this.#usedIdx = state.usedIdx;
    this.#inFlight.fill(0);
    this.#signalledValid = false;
  }

  /** Forget everything (device or queue reset): indices 0, nothing in flight, notifications on. */
  reset(): void {
    this.setState({ availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true });
    this.#notifyEnabled = true;
  }
}
