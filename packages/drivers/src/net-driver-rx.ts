/**
 * The receive path of the virtio-net driver (VIRTIO 1.3 §5.1.6.3, §5.1.6.4): receive buffers
 * are posted and refilled, frames spread over `num_buffers` buffers are reassembled, and what
 * the device wrote is distrusted. Received frames wait in a bounded queue. A frame that the
 * device put in one receive buffer stays there (no copy): the buffer is posted again only once
 * the frame is taken, and at most `rxBuffers` frames are held so, and only while the allocator
 * can still refill the queue. Any other frame is copied into one preallocated byte ring
 * (no allocation per frame). When the queue or the ring is full the driver stops reaping
 * (back-pressure). `takeView` lends a frame's bytes where they are; `take` copies them.
 * @module
 */
import { completeChecksum, ETH_HLEN, NetFeature, NetHdr, NetHdrFlags } from "@virtio-ts/spec";
import type { NetDriverCore } from "./net-driver-core.js";
import { NetDeviceFault, type NetDeviceFaultCode } from "./net-driver-types.js";

/** Reassembly state of one receive queue (a frame spread over `num_buffers` buffers). */
class RxState {
  /** Buffers still expected for the frame being reassembled (0: none in progress). */
  left = 0;
  got = 0;
  /** The frame is malformed: consume its buffers, then drop it. */
  discard = false;
  flags = 0;
  csumStart = 0;
  csumOffset = 0;
  /** Buffers posted and not yet reaped. */
  posted = 0;
  /** The last `fill` stopped short of `rxBuffers` for want of allocator slots. */
  short = false;
  readonly buf: Uint8Array;
  constructor(maxFrame: number) {
    this.buf = new Uint8Array(maxFrame);
  }
}

/** Mutable segment objects reused for every `add` (the queue copies them into descriptors). */
interface MutSegment {
  addr: number;
  len: number;
}

/** The receive path (internal to the driver). */
export class NetDriverRx {
  /** The last malformed receive buffer's fault (the buffer was dropped). */
  lastFault: NetDeviceFault | undefined = undefined;
  /** Reaping stopped because the frame queue or the frame store was full. */
  stalled = false;
  /** A held frame's buffer went back to the allocator while a queue was short: refill it. */
  refillDue = false;
  /** `frames()` iterators waiting for a frame. */
  readonly waiters: {
    resolve: (r: IteratorResult<Uint8Array>) => void;
    reject: (e: unknown) => void;
  }[] = [];
  readonly #c: NetDriverCore;
  readonly #rx: RxState[] = [];
  /**
   * Received frames, oldest first: a ring of `limit` entries. A frame held in its receive
   * buffer has its view of guest memory in `#views` and its allocator slot in `#slots`; any
   * other has its offset in `#store`, a byte ring (each frame contiguous and 8-aligned, a frame
   * that does not fit before the end starts again at 0, the tail skipped). Both have a length.
   */
  readonly #offs: Uint32Array;
  readonly #lens: Uint32Array;
  readonly #views: (Uint8Array | undefined)[];
  readonly #slots: Float64Array;
  #first = 0;
  #count = 0;
  readonly #store: Uint8Array;
  /**
   * Frames in `#store` (the other `#count - #stored` are held in their receive buffers); start
   * of the oldest one's bytes, and where the next one's go.
   */
  #stored = 0;
  #head = 0;
  #tail = 0;
  readonly #sg: Uint8Array[] = [];
  /** A frame lent by `takeView`: its bytes stay untouched until the next take or reap. */
  #lent = false;
  readonly #noSegs: MutSegment[] = [];
  readonly #rxSeg: MutSegment[] = [{ addr: 0, len: 1 }];
  readonly #rxBuffers: number;
  readonly #limit: number;
  readonly #reserve: number;

  /**
   * @param core - the driver's shared state
   * @param pairs - receive queues set up
   * @param rxBuffers - buffers kept posted on each queue in use
   * @param limit - received frames buffered before reaping stops
   * @param reserve - slots refills leave free (one largest transmit frame and a command)
   */
  constructor(
    core: NetDriverCore,
    pairs: number,
    rxBuffers: number,
    limit: number,
    reserve: number,
  ) {
    this.#c = core;
    for (let p = 0; p < pairs; p++) this.#rx.push(new RxState(core.maxFrame));
    this.#rxBuffers = rxBuffers;
    this.#limit = limit;
    this.#reserve = reserve;
    this.#offs = new Uint32Array(limit);
    this.#lens = new Uint32Array(limit);
    this.#views = new Array<Uint8Array | undefined>(limit).fill(undefined);
    this.#slots = new Float64Array(limit);
    // Room for the queue limit of 2 KiB frames (up to 1024 of them), and two largest frames.
    const bytes = Math.max(2 * core.maxFrame, Math.min(limit, 1024) * 2048);
    this.#store = new Uint8Array((bytes + 7) & ~7);
  }

  /** Received frames waiting to be taken. */
  get pending(): number {
    return this.#count;
  }

  /** The oldest frame, copied into a new array (the caller owns it), or undefined. */
  take(): Uint8Array | undefined {
    this.release();
    if (this.#count === 0) return undefined;
    const i = this.#first;
    const held = this.#views[i];
    const at = this.#offs[i]!;
    // slice() of a view over a SharedArrayBuffer copies into a new, unshared ArrayBuffer.
    const f = held !== undefined ? held.slice() : this.#store.slice(at, at + this.#lens[i]!);
    this.#drop();
    return f;
  }

  /**
   * The oldest frame, lent: a view of its receive buffer in guest memory, or of the driver's
   * frame store, valid until the next `take`, `takeView` or reap (`release` gives the bytes
   * back), or undefined.
   */
  takeView(): Uint8Array | undefined {
    this.release();
    if (this.#count === 0) return undefined;
    const i = this.#first;
    this.#lent = true;
    const held = this.#views[i];
    if (held !== undefined) return held;
    const at = this.#offs[i]!;
    return this.#store.subarray(at, at + this.#lens[i]!);
  }

  /** Give back the frame lent by `takeView`, if any. */
  release(): void {
    if (!this.#lent) return;
    this.#lent = false;
    this.#drop();
  }

  /**
   * Forget the oldest frame: a held frame's buffer goes back to the allocator (to be posted
   * again by the next refill); a stored frame's bytes are free again.
   */
  #drop(): void {
    const i = this.#first;
    const held = this.#views[i];
    if (held !== undefined) {
      this.#views[i] = undefined;
      this.#c.slab.free(this.#slots[i]!);
      if (!this.refillDue) {
        // Only queues in use are refilled (a queue beyond `pairs` stays short for good).
        for (let p = 0; p < this.#c.pairs; p++) if (this.#rx[p]!.short) this.refillDue = true;
      }
    } else if (--this.#stored === 0) {
      this.#head = 0;
      this.#tail = 0;
    } else {
      // The next stored frame starts here, or at 0 if it did not fit before the end.
      this.#head = Math.min(this.#offs[i]! + ((this.#lens[i]! + 7) & ~7), this.#store.length);
    }
    this.#first = i + 1 === this.#limit ? 0 : i + 1;
    if (--this.#count === 0) this.#first = 0;
  }

  /** Where `n` contiguous bytes can go in the store, or -1 if there is no room now. */
  #room(n: number): number {
    const cap = this.#store.length;
    if (this.#stored === 0) return n <= cap ? 0 : -1;
    const head = this.#head;
    const tail = this.#tail;
    if (tail > head) {
      // Used: [head, tail). Free: [tail, cap), then [0, head).
      if (n <= cap - tail) return tail;
      return n < head ? 0 : -1;
    }
    // Wrapped (full when tail === head): free is [tail, head). Strictly less, so that a full
    // ring never looks empty.
    return n < head - tail ? tail : -1;
  }

  /**
   * Queue a frame of `n` bytes: stored at `at` (a place `#room` gave), or, with `held`, held in
   * its receive buffer (allocator slot `slot`).
   */
  #commit(at: number, n: number, held: Uint8Array | undefined, slot: number): void {
    const j = this.#first + this.#count;
    const i = j >= this.#limit ? j - this.#limit : j;
    this.#offs[i] = at;
    this.#lens[i] = n;
    this.#views[i] = held;
    this.#slots[i] = slot;
    this.#count++;
    if (held !== undefined) return;
    if (this.#stored++ === 0) this.#head = at;
    // Frames start 8-aligned, as in guest memory (see NetDriverCore.lead): copies between
    // them run as words, not bytes.
    this.#tail = Math.min(at + ((n + 7) & ~7), this.#store.length);
  }

  /** Post receive buffers on pair `p` until `rxBuffers` are posted or slots run out. */
  fill(p: number): void {
    const c = this.#c;
    const q = c.rxQ[p];
    const rx = this.#rx[p];
    if (q === undefined || rx === undefined || c.broken !== undefined) return;
    const seg = this.#rxSeg[0]!;
    rx.short = false;
    while (rx.posted < this.#rxBuffers && q.numFree > 0) {
      if (c.slab.available <= this.#reserve) {
        // Slots are out (frames held, transmissions in flight): refill when one comes back.
        rx.short = true;
        break;
      }
      const slot = c.slab.alloc() as number;
      // The buffer starts `lead` bytes into the slot, so the frame after the header is 8-aligned.
      seg.addr = slot + c.lead;
      seg.len = c.slab.slotSize - c.lead;
      if (!q.add(this.#noSegs, this.#rxSeg, slot)) {
        c.slab.free(slot);
        break;
      }
      rx.posted++;
    }
  }

  /** Reap receive queue `p` (while the frame queue has room), then refill it. */
  reap(p: number): number {
    const c = this.#c;
    const q = c.rxQ[p]!;
    const rx = this.#rx[p]!;
    let n = 0;
    // Reaping may reuse the bytes of a lent frame: its loan ends here.
    this.release();
    for (;;) {
      q.disableInterrupts();
      while (this.#count < this.#limit && this.#room(c.maxFrame) >= 0) {
        const slot = q.reap();
        if (slot === undefined) break;
        rx.posted--;
        n++;
        // A frame held in place keeps its slot until it is taken.
        if (!this.#rxBuffer(rx, slot, q.lastLen)) c.slab.free(slot);
      }
      if (this.#count >= this.#limit || this.#room(c.maxFrame) < 0) {
        // Back-pressure: leave used buffers on the ring until a frame is taken.
        this.stalled = true;
        break;
      }
      if (!q.enableInterrupts()) break;
    }
    if ((n > 0 || rx.short) && p < c.pairs) this.fill(p);
    return n;
  }

  #fault(code: NetDeviceFaultCode, message: string, value: number): void {
    const c = this.#c;
    c.stats.rxFaults++;
    this.lastFault = new NetDeviceFault(code, message, value);
  }

  /**
   * One used receive buffer of `len` bytes (distrusted) at `slot`.
   * @returns whether the frame is held in it (the slot stays allocated until it is taken)
   */
  #rxBuffer(rx: RxState, slot: number, len: number): boolean {
    const c = this.#c;
    const mem = c.mem;
    const h = c.hdrLen;
    const buf = slot + c.lead;
    if (len > c.slab.slotSize - c.lead) {
      // Longer than the buffer: the device wrote past it or lies; drop the whole frame.
      this.#fault("net-bad-used-len", `used length ${len} exceeds the buffer`, len);
      if (rx.left > 0) rx.discard = true;
      else return false;
      len = 0;
    }
    if (rx.left === 0) {
      if (len < h) {
        this.#fault("net-bad-used-len", `used length ${len} is shorter than the header`, len);
        return false;
      }
      const flags = mem.readU8(buf + NetHdr.FLAGS);
      const gso = mem.readU8(buf + NetHdr.GSO_TYPE);
      let nb = h === NetHdr.SIZE ? mem.readU16(buf + NetHdr.NUM_BUFFERS) : 1;
      if (!c.mrg && nb !== 1) {
        // §5.1.6.4: without MRG_RXBUF the device sets num_buffers to 1.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} without MRG_RXBUF`, nb);
        nb = 1;
        rx.discard = true;
      } else if (nb === 0 || nb > c.rxQ[0]!.size) {
        // More buffers than a queue holds can never arrive: drop this buffer alone.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} is impossible`, nb);
        return false;
      } else {
        rx.discard = false;
      }
      if (gso !== 0) {
        this.#fault("net-bad-header", `gso_type ${gso} was not negotiated`, gso);
        rx.discard = true;
      }
      rx.flags = flags;
      rx.csumStart = mem.readU16(buf + NetHdr.CSUM_START);
      rx.csumOffset = mem.readU16(buf + NetHdr.CSUM_OFFSET);
      rx.got = 0;
      rx.left = nb;
      if (nb === 1 && !rx.discard) {
        // The whole frame is in this buffer: hold it there, or copy it straight into the store.
        rx.left = 0;
        return this.#queueFrame(rx, undefined, buf + h, len - h, slot);
      }
      this.#append(rx, buf + h, len - h);
    } else {
      this.#append(rx, buf, len);
    }
    rx.left--;
    if (rx.left === 0) this.#finishFrame(rx);
    return false;
  }

  #append(rx: RxState, addr: number, n: number): void {
    const c = this.#c;
    if (rx.discard || n === 0) return;
    if (rx.got + n > c.maxFrame) {
      this.#fault("net-bad-frame", `frame longer than ${c.maxFrame} bytes`, rx.got + n);
      rx.discard = true;
      return;
    }
    c.mem.read(addr, rx.buf.subarray(rx.got, rx.got + n));
    rx.got += n;
  }

  #finishFrame(rx: RxState): void {
    if (rx.discard) {
      rx.discard = false;
      return;
    }
    this.#queueFrame(rx, rx.buf, 0, rx.got, -1);
  }

  /**
   * Check a received frame of `n` bytes (in guest memory at `addr`, or in `from` when it was
   * reassembled there) and queue it: held in its receive buffer (allocator slot `slot`, or -1
   * for none) when that is allowed, else copied into the store. Reaping goes on only while the
   * store has room for a largest frame, so there is room.
   * @returns whether the frame is held (its slot stays allocated until it is taken)
   */
  #queueFrame(
    rx: RxState,
    from: Uint8Array | undefined,
    addr: number,
    n: number,
    slot: number,
  ): boolean {
    const c = this.#c;
    if (n < ETH_HLEN) {
      this.#fault("net-bad-frame", `frame of ${n} bytes`, n);
      return false;
    }
    if (n > c.maxFrame) {
      this.#fault("net-bad-frame", `frame longer than ${c.maxFrame} bytes`, n);
      return false;
    }
    // Held only while the allocator can still refill this queue to `rxBuffers` and keep its
    // reserve, and never for a waiting `frames()` reader, which owns what it gets: a copy.
    let held: Uint8Array | undefined;
    let at = 0;
    if (
      slot >= 0 &&
      this.#count - this.#stored < this.#rxBuffers &&
      c.slab.available >= this.#rxBuffers - rx.posted + this.#reserve &&
      this.waiters.length === 0
    ) {
      const views = c.mem.sg(addr, n, this.#sg, "write");
      if (views.length === 1) held = views[0];
    }
    let frame = held;
    if (frame === undefined) {
      at = this.#room(n);
      frame = this.#store.subarray(at, at + n);
      if (from === undefined) c.mem.read(addr, frame);
      else frame.set(from.subarray(0, n));
    }
    if ((rx.flags & NetHdrFlags.NEEDS_CSUM) !== 0) {
      // §5.1.6.4: a partial checksum on receive is only allowed with GUEST_CSUM; complete it
      // (in the receive buffer when the frame is held there: the driver owns it now).
      if (!c.has(NetFeature.GUEST_CSUM) || !completeChecksum(frame, rx.csumStart, rx.csumOffset)) {
        this.#fault("net-bad-header", "unusable NEEDS_CSUM on receive", rx.csumStart);
        return false;
      }
    }
    c.stats.rxFrames++;
    c.stats.rxBytes += n;
    const w = this.waiters.shift();
    if (w !== undefined) {
      w.resolve({ value: frame.slice(), done: false });
      return false;
    }
    this.#commit(at, n, held, slot);
    return held !== undefined;
  }
}
