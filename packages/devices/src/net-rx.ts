/**
 * The receive path of the virtio-net device (VIRTIO 1.3 §5.1.6.3, §5.1.6.4): frames from the
 * back-end are filtered, steered to a receive queue and copied, behind a `virtio_net_hdr`, into
 * guest buffers — one buffer, or with MRG_RXBUF as many as needed.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import { ETH_HLEN, flowHash, NetHdr, NetStatus } from "@virtio-ts/spec";
import type { DeviceContext } from "@virtio-ts/transport";
import { DescriptorChain, type DeviceQueue } from "@virtio-ts/virtqueue";
import { NetGuestFault, type NetState } from "./net-state.js";

/** Segments per chain the device accepts (§2.7.4.1 "reasonable limit"); Linux uses ≤ 19. */
export const MAX_SEGMENTS = 64;

/** Receive-side state of one receive queue: chains popped but not yet used for a frame. */
class RxQueueState {
  /** Cursors; the first `count` hold popped chains, in ring order. */
  readonly held: DescriptorChain[] = [];
  count = 0;
  /** Writable bytes of the held chains. */
  bytes = 0;

  cursor(i: number): DescriptorChain {
    let c = this.held[i];
    if (c === undefined) {
      // Grows to at most the queue size (a queue never has more chains), then is reused.
      c = new DescriptorChain(MAX_SEGMENTS);
      this.held[i] = c;
    }
    return c;
  }

  clear(): void {
    this.count = 0;
    this.bytes = 0;
  }
}

/** The receive path (internal to the device). */
export class NetReceiver {
  readonly #st: NetState;
  readonly #held: RxQueueState[] = [];
  readonly #rxHdr = new Uint8Array(NetHdr.SIZE);
  #rxHdrView: Uint8Array = this.#rxHdr;
  /** A frame was refused for want of buffers: tell the back-end when buffers come. */
  starved = false;
  /** Argument of `#receiveBound` (passed in a field so `deliver` allocates no closure). */
  #frame: Uint8Array | undefined = undefined;
  readonly #receiveBound = (): boolean => this.receive(this.#frame!);

  /**
   * @param state - the device's shared state
   * @param pairs - receive queues (one per queue pair)
   */
  constructor(state: NetState, pairs: number) {
    this.#st = state;
    for (let i = 0; i < pairs; i++) this.#held.push(new RxQueueState());
  }

  /**
   * Receive one frame: drop (and count) what the size checks, the link or the filter refuse,
   * else copy it into the steered receive queue. See `NetDevice.deliver`.
   */
  deliver(frame: Uint8Array): boolean {
    const st = this.#st;
    const ctx = st.ctx;
    if (ctx === undefined || ctx.needsReset) {
      st.stats.rxNoBuffer++;
      return false;
    }
    const len = frame.length;
    if (len < ETH_HLEN || len > st.maxFrame) {
      st.stats.rxBadFrame++;
      return true;
    }
    if ((st.status & NetStatus.LINK_UP) === 0) {
      st.stats.rxLinkDown++;
      return true;
    }
    if (st.ctrlRx && !st.filter.accepts(frame, st.mac)) {
      st.stats.rxFiltered++;
      return true;
    }
    this.#frame = frame;
    const ok = ctx.guard(this.#receiveBound) === true;
    this.#frame = undefined;
    if (!ok) {
      st.stats.rxNoBuffer++;
      this.starved = true;
    }
    return ok;
  }

  /** Forget the chains held from receive queue `pair` (a queue reset, §2.6.1.1.1). */
  forget(pair: number): void {
    this.#held[pair]?.clear();
  }

  /** Forget every held chain (a device reset). */
  clear(): void {
    for (const r of this.#held) r.clear();
    this.starved = false;
  }

  /** Copy `frame` into the steered receive queue. A `VirtioError` from the ring propagates. */
  receive(frame: Uint8Array): boolean {
    const st = this.#st;
    const ctx = st.ctx!;
    const pair = st.pairs > 1 ? flowHash(frame) % st.pairs : 0;
    const qi = 2 * pair;
    const q = ctx.queue(qi);
    if (q === undefined) return false;
    const rx = this.#held[pair]!;
    const h = st.hdrLen;
    const need = h + frame.length;
    const mem = ctx.memory;
    let returned = false;
    if (!st.mrg) {
      // §5.1.6.4: without MRG_RXBUF the whole packet goes into one buffer.
      for (;;) {
        const c = rx.cursor(0);
        if (rx.count === 0) {
          if (!st.pop(ctx, q, c)) {
            if (returned) ctx.signalUsed(qi);
            return false;
          }
          rx.count = 1;
          rx.bytes = c.writableBytes;
        }
        if (rx.bytes >= need) break;
        // §5.1.6.3.1: buffers SHOULD hold 1526 bytes (the largest frame here); a smaller one
        // cannot take this frame: return it unused.
        this.#smallBuffer(ctx, q, c, rx.bytes);
        rx.clear();
        returned = true;
      }
      const c = rx.held[0]!;
      this.#writeHeader(mem, c, 1);
      c.copyToWritable(mem, h, frame);
      q.push(c.head, need);
      rx.clear();
    } else {
      // §5.1.6.4: with MRG_RXBUF, take buffers until the packet fits; `num_buffers` says how many.
      while (rx.bytes < need) {
        if (rx.count >= q.size) {
          // Every buffer the queue can hold is held and the frame still does not fit: the
          // driver posts buffers too small for any frame. Return them all unused, drop it.
          for (let i = 0; i < rx.count; i++) {
            const c = rx.held[i]!;
            this.#smallBuffer(ctx, q, c, c.writableBytes);
          }
          rx.clear();
          ctx.signalUsed(qi);
          return true;
        }
        const c = rx.cursor(rx.count);
        if (!st.pop(ctx, q, c)) {
          if (returned) ctx.signalUsed(qi);
          return false;
        }
        // §5.1.6.3.1: with MRG_RXBUF each buffer MUST be at least the header size.
        if (c.writableBytes < h) {
          this.#smallBuffer(ctx, q, c, c.writableBytes);
          returned = true;
          continue;
        }
        rx.count++;
        rx.bytes += c.writableBytes;
      }
      let n = 0;
      let left = need;
      while (left > 0) left -= rx.held[n++]!.writableBytes;
      this.#writeHeader(mem, rx.held[0]!, n);
      // Scatter the frame: after the header in the first buffer, then buffer by buffer.
      let off = 0;
      for (let i = 0; i < n; i++) {
        const c = rx.held[i]!;
        const at = i === 0 ? h : 0;
        const room = c.writableBytes - at;
        const take = Math.min(room, frame.length - off);
        const piece = off === 0 && take === frame.length ? frame : frame.subarray(off, off + take);
        c.copyToWritable(mem, at, piece);
        q.push(c.head, at + take);
        off += take;
      }
      // Keep the chains not used (rare: a frame smaller than the held ones), in order.
      const held = rx.held;
      let bytes = 0;
      for (let i = n; i < rx.count; i++) {
        const t = held[i - n]!;
        held[i - n] = held[i]!;
        held[i] = t;
        bytes += held[i - n]!.writableBytes;
      }
      rx.count -= n;
      rx.bytes = bytes;
    }
    st.stats.rxFrames++;
    st.stats.rxBytes += frame.length;
    ctx.signalUsed(qi);
    return true;
  }

  #writeHeader(mem: GuestMemory, c: DescriptorChain, numBuffers: number): void {
    // flags 0 (no DATA_VALID: the device verified nothing), gso_type NONE, hdr_len, gso_size,
    // csum_start, csum_offset 0. §5.1.6.4.1: num_buffers is 1 without MRG_RXBUF (VERSION_1).
    const hdr = this.#rxHdr;
    hdr[NetHdr.NUM_BUFFERS] = numBuffers & 0xff;
    hdr[NetHdr.NUM_BUFFERS + 1] = numBuffers >>> 8;
    // The view is remade only when the negotiated header length changes (no per-frame view).
    let view = this.#rxHdrView;
    if (view.length !== this.#st.hdrLen) {
      view = hdr.subarray(0, this.#st.hdrLen);
      this.#rxHdrView = view;
    }
    c.copyToWritable(mem, 0, view);
  }

  #smallBuffer(ctx: DeviceContext, q: DeviceQueue, c: DescriptorChain, bytes: number): void {
    this.#st.stats.rxSmallBuffers++;
    ctx.noteFault(new NetGuestFault("net-rx-small-buffer", c.head, bytes));
    q.push(c.head, 0);
  }
}
