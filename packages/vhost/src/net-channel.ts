/**
 * A bounded single-producer / single-consumer frame channel between two threads: a
 * SharedArrayBuffer ring of fixed-size frame slots with Atomics head/tail words and two
 * doorbells (data for the consumer, space for the producer). No postMessage per frame and no
 * allocation per frame on either side.
 *
 * @module
 */
import { SharedDoorbell } from "@virtio-ts/transport";

/**
 * Index of each Int32 header word of a {@link FrameChannel}, and who writes it.
 *
 * - `HEAD`: frames published (producer; free-running u32, compared with `(a - b) >>> 0`).
 * - `TAIL`: frames consumed (consumer).
 * - `PUSHED`, `DROPS`, `OVERSIZE`: producer counters (accepted, refused because the channel
 *   was full, refused because the frame was longer than a slot).
 * - `DISCARDED`: consumer counter (frames dropped by {@link FrameChannel.clear}).
 * - `DATA_BELL`: the consumer's doorbell, rung by the producer on an empty → non-empty transition.
 * - `SPACE_WANTED`: set by a producer that was refused for want of room; the consumer clears
 *   it and rings `SPACE_BELL` once at least half of the slots are free again.
 * - `SPACE_BELL`: the producer's doorbell.
 * - `DATA_RINGS`: data doorbell rings (a producer statistic: wake-ups it asked for).
 */
export const ChannelWord = {
  /** Frames published (producer). */
  HEAD: 0,
  /** Frames consumed (consumer). */
  TAIL: 1,
  /** Frames accepted (producer). */
  PUSHED: 2,
  /** Frames refused, channel full (producer). */
  DROPS: 3,
  /** Frames refused, longer than a slot (producer). */
  OVERSIZE: 4,
  /** Frames discarded by the consumer's `clear` (consumer). */
  DISCARDED: 5,
  /** Doorbell word of the consumer. */
  DATA_BELL: 6,
  /** A refused producer waits for room (1) or not (0). */
  SPACE_WANTED: 7,
  /** Doorbell word of the producer. */
  SPACE_BELL: 8,
  /** Data doorbell rings (producer). */
  DATA_RINGS: 9,
  /** Header words (the slot lengths follow). */
  COUNT: 16,
} as const;

/** What crosses threads to rebuild a {@link FrameChannel} on the other side (structured-cloneable). */
export interface FrameChannelHandle {
  /** The shared memory: header words, slot lengths, slot bytes. */
  readonly buffer: SharedArrayBuffer;
  /** Number of slots. */
  readonly slots: number;
  /** Bytes per slot (the longest frame the channel carries). */
  readonly slotBytes: number;
}

/** Counters of a {@link FrameChannel}, read from the shared words. */
export interface FrameChannelStats {
  /** Frames accepted by `push`. */
  readonly pushed: number;
  /** Frames `push` refused because every slot was taken. */
  readonly drops: number;
  /** Frames `push` refused because they are longer than a slot. */
  readonly oversize: number;
  /** Frames the consumer discarded with `clear`. */
  readonly discarded: number;
  /** Frames waiting. */
  readonly queued: number;
  /** Data doorbell rings (consumer wake-ups the producer asked for). */
  readonly dataRings: number;
}

/**
 * One direction of a frame channel. Exactly one thread pushes and one thread consumes; each side
 * builds its own instance over the same buffer ({@link FrameChannel.create} then
 * {@link FrameChannel.from} with the {@link FrameChannel.handle}).
 *
 * Publication: the producer copies the frame into slot `HEAD % slots` and its length into the
 * length table with plain writes, then publishes with `Atomics.store(HEAD)`; the consumer reads
 * `HEAD` with `Atomics.load` before it reads the slot, and frees it with `Atomics.store(TAIL)`.
 * Wake-ups are Dekker-style (seq-cst store, then load of the other side's word), so none is
 * lost: after publishing, a producer that sees `TAIL` equal to the old `HEAD` rings the data
 * doorbell; a consumer takes the doorbell *before* it drains and sleeps only if it is still 0.
 * Nothing the other side writes can make either side read or write outside the buffer: lengths
 * are clamped to the slot size and indices are reduced modulo the slot count.
 */
export class FrameChannel {
  /** Number of slots. */
  readonly slots: number;
  /** Bytes per slot. */
  readonly slotBytes: number;
  /** The header words (see {@link ChannelWord}). */
  readonly words: Int32Array;
  /** The consumer's doorbell (rung when data arrives in an empty channel). */
  readonly dataBell: SharedDoorbell;
  /** The producer's doorbell (rung when room appears after a refusal). */
  readonly spaceBell: SharedDoorbell;
  readonly #lengths: Int32Array;
  readonly #bytes: Uint8Array;
  /** Consumer-side view cache, one per slot, reused while the length repeats. */
  readonly #views: (Uint8Array | undefined)[];
  readonly #buffer: SharedArrayBuffer;

  /**
   * Allocate a channel.
   * @param slots - number of frame slots (1 to 65536)
   * @param slotBytes - bytes per slot, the longest frame carried (14 to 65552)
   * @throws RangeError naming `slots` or `slotBytes`
   */
  static create(slots: number, slotBytes: number): FrameChannel {
    checkGeometry(slots, slotBytes);
    const stride = align4(slotBytes);
    const buffer = new SharedArrayBuffer((ChannelWord.COUNT + slots) * 4 + slots * stride);
    return new FrameChannel({ buffer, slots, slotBytes });
  }

  /**
   * Rebuild a channel from a handle received from another thread.
   * @throws TypeError if the buffer is not a SharedArrayBuffer; RangeError if it is too small
   *   for the geometry
   */
  static from(handle: FrameChannelHandle): FrameChannel {
    return new FrameChannel(handle);
  }

  private constructor(h: FrameChannelHandle) {
    if (typeof h !== "object" || h === null || !(h.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError("handle.buffer must be a SharedArrayBuffer");
    }
    checkGeometry(h.slots, h.slotBytes);
    const stride = align4(h.slotBytes);
    const need = (ChannelWord.COUNT + h.slots) * 4 + h.slots * stride;
    if (h.buffer.byteLength < need) {
      throw new RangeError(`handle.buffer must hold ${need} bytes, got ${h.buffer.byteLength}`);
    }
    this.slots = h.slots;
    this.slotBytes = stride;
    this.#buffer = h.buffer;
    this.words = new Int32Array(h.buffer, 0, ChannelWord.COUNT);
    this.#lengths = new Int32Array(h.buffer, ChannelWord.COUNT * 4, h.slots);
    this.#bytes = new Uint8Array(h.buffer, (ChannelWord.COUNT + h.slots) * 4, h.slots * stride);
    this.dataBell = new SharedDoorbell(h.buffer, ChannelWord.DATA_BELL * 4);
    this.spaceBell = new SharedDoorbell(h.buffer, ChannelWord.SPACE_BELL * 4);
    this.#views = new Array(h.slots).fill(undefined);
  }

  /** The structured-cloneable handle for the other thread. */
  get handle(): FrameChannelHandle {
    return { buffer: this.#buffer, slots: this.slots, slotBytes: this.slotBytes };
  }

  /** Frames waiting (either side may ask). */
  get length(): number {
    const w = this.words;
    return Math.min(
      this.slots,
      (Atomics.load(w, ChannelWord.HEAD) - Atomics.load(w, ChannelWord.TAIL)) >>> 0,
    );
  }

  /** Counters (from the shared words). */
  get stats(): FrameChannelStats {
    const w = this.words;
    return {
      pushed: Atomics.load(w, ChannelWord.PUSHED) >>> 0,
      drops: Atomics.load(w, ChannelWord.DROPS) >>> 0,
      oversize: Atomics.load(w, ChannelWord.OVERSIZE) >>> 0,
      discarded: Atomics.load(w, ChannelWord.DISCARDED) >>> 0,
      queued: this.length,
      dataRings: Atomics.load(w, ChannelWord.DATA_RINGS) >>> 0,
    };
  }

  // ---- producer ----

  /**
   * Producer: copy `frame` into the next slot and publish it.
   * @param frame - the frame, not retained
   * @returns false (dropped and counted, nothing published) when every slot is taken or the
   *   frame is longer than a slot; a refusal for want of room also asks the consumer for a
   *   space doorbell
   */
  push(frame: Uint8Array): boolean {
    const w = this.words;
    const len = frame.length;
    if (len > this.slotBytes) {
      Atomics.add(w, ChannelWord.OVERSIZE, 1);
      return false;
    }
    const head = Atomics.load(w, ChannelWord.HEAD);
    if (!this.#room(head)) {
      // Ask for a space doorbell, then look again (the consumer may have freed slots between
      // our load of TAIL and our store of SPACE_WANTED, before it could see the flag).
      Atomics.store(w, ChannelWord.SPACE_WANTED, 1);
      if (!this.#room(head)) {
        Atomics.add(w, ChannelWord.DROPS, 1);
        return false;
      }
    }
    const slot = (head >>> 0) % this.slots;
    this.#bytes.set(frame, slot * this.slotBytes);
    this.#lengths[slot] = len;
    const next = (head + 1) | 0;
    Atomics.store(w, ChannelWord.HEAD, next);
    Atomics.add(w, ChannelWord.PUSHED, 1);
    // Empty → non-empty: the consumer may be asleep (or about to be). Seq-cst store of HEAD
    // then load of TAIL pairs with the consumer's store of TAIL then load of HEAD.
    if (Atomics.load(w, ChannelWord.TAIL) === head) {
      Atomics.add(w, ChannelWord.DATA_RINGS, 1);
      this.dataBell.ring();
    }
    return true;
  }

  #room(head: number): boolean {
    return (head - Atomics.load(this.words, ChannelWord.TAIL)) >>> 0 < this.slots;
  }

  // ---- consumer ----

  /**
   * Consumer: a view of the oldest frame (valid until {@link FrameChannel.shift}), or undefined
   * when the channel is empty. Views are cached per slot, so steady traffic allocates nothing.
   */
  peek(): Uint8Array | undefined {
    const w = this.words;
    const tail = Atomics.load(w, ChannelWord.TAIL);
    if (Atomics.load(w, ChannelWord.HEAD) === tail) return undefined;
    const slot = (tail >>> 0) % this.slots;
    // The producer wrote the length; clamp it so a corrupted word cannot reach another slot.
    let len = this.#lengths[slot]!;
    if (!(len >= 0 && len <= this.slotBytes)) len = 0;
    let v = this.#views[slot];
    if (v === undefined || v.length !== len) {
      const at = slot * this.slotBytes;
      v = this.#bytes.subarray(at, at + len);
      this.#views[slot] = v;
    }
    return v;
  }

  /** Consumer: free the oldest frame; rings the space doorbell when a refused producer waits. */
  shift(): void {
    const w = this.words;
    const tail = Atomics.load(w, ChannelWord.TAIL);
    const head = Atomics.load(w, ChannelWord.HEAD);
    if (head === tail) return;
    const next = (tail + 1) | 0;
    Atomics.store(w, ChannelWord.TAIL, next);
    // Hysteresis: wake the producer once half the slots are free, not for every slot.
    if (
      Atomics.load(w, ChannelWord.SPACE_WANTED) !== 0 &&
      (head - next) >>> 0 <= this.slots >>> 1 &&
      Atomics.exchange(w, ChannelWord.SPACE_WANTED, 0) !== 0
    ) {
      this.spaceBell.ring();
    }
  }

  /**
   * Consumer: drop every waiting frame (counted in `discarded`), e.g. at a device reset.
   * @returns the number of frames dropped
   */
  clear(): number {
    let n = 0;
    while (this.peek() !== undefined) {
      this.shift();
      n++;
    }
    if (n > 0) Atomics.add(this.words, ChannelWord.DISCARDED, n);
    return n;
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function checkGeometry(slots: number, slotBytes: number): void {
  if (!Number.isInteger(slots) || slots < 1 || slots > 65536) {
    throw new RangeError(`slots must be an integer in [1, 65536], got ${slots}`);
  }
  if (!Number.isInteger(slotBytes) || slotBytes < 14 || slotBytes > 65552) {
    throw new RangeError(`slotBytes must be an integer in [14, 65552], got ${slotBytes}`);
  }
}
