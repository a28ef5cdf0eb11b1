/**
 * The receive path of the virtio-net driver (VIRTIO 1.3 §5.1.6.3, §5.1.6.4): receive buffers
 * are posted and refilled, frames spread over `num_buffers` buffers are reassembled, and what
 * the device wrote is distrusted. Received frames wait in a bounded queue; when it is full the
 * driver stops reaping (back-pressure).
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
  /** Reaping stopped because the frame queue was full. */
  stalled = false;
  /** `frames()` iterators waiting for a frame. */
  readonly waiters: {
    resolve: (r: IteratorResult<Uint8Array>) => void;
    reject: (e: unknown) => void;
  }[] = [];
  readonly #c: NetDriverCore;
  readonly #rx: RxState[] = [];
  readonly #frames: Uint8Array[] = [];
  #frameHead = 0;
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
  }

  /** Received frames waiting to be taken. */
  get pending(): number {
    return this.#frames.length - this.#frameHead;
  }

  /** Take one received frame, or undefined. */
  take(): Uint8Array | undefined {
    if (this.#frameHead === this.#frames.length) return undefined;
    const f = this.#frames[this.#frameHead]!;
    this.#frames[this.#frameHead++] = undefined as unknown as Uint8Array;
    if (this.#frameHead === this.#frames.length) {
      this.#frames.length = 0;
      this.#frameHead = 0;
    }
    return f;
  }

  /** Post receive buffers on pair `p` until `rxBuffers` are posted or slots run out. */
  fill(p: number): void {
    const c = this.#c;
    const q = c.rxQ[p];
    const rx = this.#rx[p];
    if (q === undefined || rx === undefined || c.broken !== undefined) return;
    const seg = this.#rxSeg[0]!;
    while (rx.posted < this.#rxBuffers && q.numFree > 0 && c.slab.available > this.#reserve) {
      const slot = c.slab.alloc() as number;
      seg.addr = slot;
      seg.len = c.slab.slotSize;
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
    for (;;) {
      q.disableInterrupts();
      while (this.pending < this.#limit) {
        const slot = q.reap();
        if (slot === undefined) break;
        rx.posted--;
        n++;
        this.#rxBuffer(rx, slot, q.lastLen);
        c.slab.free(slot);
      }
      if (this.pending >= this.#limit) {
        // Back-pressure: leave used buffers on the ring until a frame is taken.
        this.stalled = true;
        break;
      }
      if (!q.enableInterrupts()) break;
    }
    if (n > 0 && p < c.pairs) this.fill(p);
    return n;
  }

  #fault(code: NetDeviceFaultCode, message: string, value: number): void {
    const c = this.#c;
    c.stats.rxFaults++;
    this.lastFault = new NetDeviceFault(code, message, value);
  }

  /** One used receive buffer of `len` bytes (distrusted) at `slot`. */
  #rxBuffer(rx: RxState, slot: number, len: number): void {
    const c = this.#c;
    const mem = c.mem;
    const h = c.hdrLen;
    if (len > c.slab.slotSize) {
      // Longer than the buffer: the device wrote past it or lies; drop the whole frame.
      this.#fault("net-bad-used-len", `used length ${len} exceeds the buffer`, len);
      if (rx.left > 0) rx.discard = true;
      else return;
      len = 0;
    }
    if (rx.left === 0) {
      if (len < h) {
        this.#fault("net-bad-used-len", `used length ${len} is shorter than the header`, len);
        return;
      }
      const flags = mem.readU8(slot + NetHdr.FLAGS);
      const gso = mem.readU8(slot + NetHdr.GSO_TYPE);
      let nb = h === NetHdr.SIZE ? mem.readU16(slot + NetHdr.NUM_BUFFERS) : 1;
      if (!c.mrg && nb !== 1) {
        // §5.1.6.4: without MRG_RXBUF the device sets num_buffers to 1.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} without MRG_RXBUF`, nb);
        nb = 1;
        rx.discard = true;
      } else if (nb === 0 || nb > c.rxQ[0]!.size) {
        // More buffers than a queue holds can never arrive: drop this buffer alone.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} is impossible`, nb);
        return;
      } else {
        rx.discard = false;
      }
      if (gso !== 0) {
        this.#fault("net-bad-header", `gso_type ${gso} was not negotiated`, gso);
        rx.discard = true;
      }
      rx.flags = flags;
      rx.csumStart = mem.readU16(slot + NetHdr.CSUM_START);
      rx.csumOffset = mem.readU16(slot + NetHdr.CSUM_OFFSET);
      rx.got = 0;
      rx.left = nb;
      this.#append(rx, slot + h, len - h);
    } else {
      this.#append(rx, slot, len);
    }
    rx.left--;
    if (rx.left === 0) this.#finishFrame(rx);
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
    const c = this.#c;
    if (rx.discard) {
      rx.discard = false;
      return;
    }
    if (rx.got < ETH_HLEN) {
      this.#fault("net-bad-frame", `frame of ${rx.got} bytes`, rx.got);
      return;
    }
    const frame = rx.buf.slice(0, rx.got);
    if ((rx.flags & NetHdrFlags.NEEDS_CSUM) !== 0) {
      // §5.1.6.4: a partial checksum on receive is only allowed with GUEST_CSUM; complete it.
      if (!c.has(NetFeature.GUEST_CSUM) || !completeChecksum(frame, rx.csumStart, rx.csumOffset)) {
        this.#fault("net-bad-header", "unusable NEEDS_CSUM on receive", rx.csumStart);
        return;
      }
    }
    c.stats.rxFrames++;
    c.stats.rxBytes += frame.length;
    const w = this.waiters.shift();
    if (w !== undefined) w.resolve({ value: frame, done: false });
    else this.#frames.push(frame);
  }
}
