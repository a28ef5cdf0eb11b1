/**
 * The transmit path of the virtio-net device (VIRTIO 1.3 §5.1.6.2): each chain's readable part
 * is the header then the frame. The back-end gets the frame as a view of guest memory when it
 * lies in one segment and one memory region; otherwise (or when a partial checksum must be
 * completed) a copy.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import { completeChecksum, ETH_HLEN, NetHdr, NetHdrFlags } from "@virtio-ts/spec";
import type { DeviceContext } from "@virtio-ts/transport";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import type { NetBackend } from "./net-backend.js";
import { MAX_SEGMENTS } from "./net-rx.js";
import { NetGuestFault, type NetState } from "./net-state.js";

/** `queueMicrotask` (Node and browsers; typed here without the DOM or Node libraries). */
const hostGlobals = globalThis as unknown as { queueMicrotask(fn: () => void): void };

/** Transmit views cached by length (a direct-mapped cache, see `#txView`). */
const TX_VIEW_CACHE = 64;

/** The transmit path (internal to the device). */
export class NetTransmitter {
  /** The last exception a back-end threw from `transmit` (a contract violation). */
  lastBackendError: unknown = undefined;
  readonly #st: NetState;
  readonly #backend: NetBackend;
  readonly #chains: DescriptorChain[] = [];
  readonly #txBuf: Uint8Array;
  readonly #txViews: (Uint8Array | undefined)[] = new Array(TX_VIEW_CACHE).fill(undefined);
  readonly #txHdr = new Uint8Array(NetHdr.SIZE);
  /** The reused output of `mem.sg` for zero-copy frames. */
  readonly #sg: Uint8Array[] = [];
  readonly #coalesce: boolean;
  /** Transmit queues with a notification due at the end of the task (bit per pair). */
  #due = 0;
  #dueCtx: DeviceContext | undefined = undefined;
  readonly #flush = (): void => {
    const ctx = this.#dueCtx;
    const due = this.#due;
    this.#due = 0;
    this.#dueCtx = undefined;
    // A reset in between made the context stale: its queues belong to nobody now.
    if (ctx === undefined || ctx !== this.#st.ctx) return;
    for (let p = 0; p < 32; p++) if ((due & (1 << p)) !== 0) ctx.signalUsed(2 * p + 1);
  };

  /**
   * @param state - the device's shared state
   * @param backend - where frames go
   * @param pairs - transmit queues (one per queue pair)
   * @param coalesce - one used buffer notification per task and queue (see
   *   `NetDeviceOptions.txInterrupts`) instead of one per batch
   */
  constructor(state: NetState, backend: NetBackend, pairs: number, coalesce = false) {
    this.#coalesce = coalesce;
    this.#st = state;
    this.#backend = backend;
    this.#txBuf = new Uint8Array(state.maxFrame);
    for (let i = 0; i < pairs; i++) this.#chains.push(new DescriptorChain(MAX_SEGMENTS));
  }

  /** Serve transmit queue `qi`: every chain, until the ring is empty with kicks back on. */
  transmit(ctx: DeviceContext, qi: number): void {
    const q = ctx.queue(qi);
    if (q === undefined) return;
    const chain = this.#chains[qi >> 1]!;
    let pushed = false;
    for (;;) {
      q.disableNotifications();
      while (this.#st.pop(ctx, q, chain)) {
        this.#transmitOne(ctx, chain);
        // The device writes nothing into a transmit buffer.
        q.push(chain.head, 0);
        pushed = true;
      }
      if (!q.enableNotifications()) break;
    }
    if (!pushed) return;
    const pair = qi >> 1;
    if (!this.#coalesce || pair >= 32) {
      ctx.signalUsed(qi);
      return;
    }
    if (this.#due === 0) hostGlobals.queueMicrotask(this.#flush);
    this.#due |= 1 << pair;
    this.#dueCtx = ctx;
  }

  /**
   * The little-endian 16-bit header field at byte `field`: from guest memory at `at` when the
   * header lies in the first segment (`inPlace`), else from its copy in `#txHdr`. Byte by byte:
   * `pop` accepts a segment across adjacent regions, where a 16-bit read could straddle the
   * boundary (`readU16` refuses that); a byte never does.
   */
  #hdrU16(mem: GuestMemory, inPlace: boolean, at: number, field: number): number {
    if (inPlace) return mem.readU8(at + field) | (mem.readU8(at + field + 1) << 8);
    const hdr = this.#txHdr;
    return hdr[field]! | (hdr[field + 1]! << 8);
  }

  #transmitOne(ctx: DeviceContext, chain: DescriptorChain): void {
    const st = this.#st;
    const s = st.stats;
    const mem = ctx.memory;
    const h = st.hdrLen;
    const r = chain.readableBytes;
    if (r < h) {
      s.txShortHeader++;
      ctx.noteFault(new NetGuestFault("net-tx-short-header", chain.head, r));
      return;
    }
    // The header's fields, each read once. In the common case (the header inside the first
    // segment) straight from guest memory: copying 12 bytes costs a view (~45 ns in V8).
    let flags: number;
    let gso: number;
    const at = chain.addrs[0]!;
    const inFirst = chain.lens[0]! >= h;
    if (inFirst) {
      flags = mem.readU8(at + NetHdr.FLAGS);
      gso = mem.readU8(at + NetHdr.GSO_TYPE);
    } else {
      const hdr = this.#txHdr;
      chain.copyFromReadable(mem, 0, h === NetHdr.SIZE ? hdr : hdr.subarray(0, h));
      flags = hdr[NetHdr.FLAGS]!;
      gso = hdr[NetHdr.GSO_TYPE]!;
    }
    const len = r - h;
    if (len < ETH_HLEN) {
      s.txRunt++;
      ctx.noteFault(new NetGuestFault("net-tx-runt", chain.head, len));
      return;
    }
    if (len > st.maxFrame) {
      s.txOversize++;
      ctx.noteFault(new NetGuestFault("net-tx-oversize", chain.head, len));
      return;
    }
    // §5.1.6.2.1: without HOST_TSO4/6/UFO (none offered) the driver MUST set gso_type NONE.
    if (gso !== 0) {
      s.txGso++;
      ctx.noteFault(new NetGuestFault("net-tx-gso", chain.head, gso));
      return;
    }
    const needsCsum = (flags & NetHdrFlags.NEEDS_CSUM) !== 0;
    // Zero-copy when the frame lies in one segment (the header in front of it in the same one,
    // or alone in the one before) inside one region: the back-end gets a view of guest memory,
    // valid during `transmit` only (the NetBackend contract). A checksum to complete is written
    // into the frame, and the device must not write a driver-readable buffer (§2.7.5.1): copy.
    let frame: Uint8Array | undefined;
    if (!needsCsum) frame = this.#inPlace(mem, chain, h, len);
    if (frame === undefined) {
      frame = this.#txView(len);
      chain.copyFromReadable(mem, h, frame);
    }
    if (needsCsum) {
      // §5.1.6.2.1: NEEDS_CSUM only with CSUM negotiated. §5.1.6.2.2: the device completes
      // the checksum from csum_start, stored at csum_start + csum_offset.
      const start = this.#hdrU16(mem, inFirst, at, NetHdr.CSUM_START);
      const off = this.#hdrU16(mem, inFirst, at, NetHdr.CSUM_OFFSET);
      if (!st.csum || !completeChecksum(frame, start, off)) {
        s.txBadCsum++;
        ctx.noteFault(new NetGuestFault("net-tx-bad-csum", chain.head, start + off));
        return;
      }
    }
    s.txFrames++;
    s.txBytes += len;
    let ok = false;
    try {
      ok = this.#backend.transmit(frame);
    } catch (e) {
      // The contract says never throw; a buggy back-end must not stop the queue.
      this.lastBackendError = e;
    }
    if (!ok) s.txBackendDrops++;
  }

  /**
   * A view of guest memory holding the `len` frame bytes that start `h` bytes into the
   * readable part, when they lie in one segment and one region; else undefined (copy them).
   */
  #inPlace(
    mem: GuestMemory,
    chain: DescriptorChain,
    h: number,
    len: number,
  ): Uint8Array | undefined {
    const lens = chain.lens;
    let i = 0;
    let off = h;
    if (lens[0]! <= h) {
      // The header fills the first segment (a zero-length one or a split header: copy).
      if (lens[0] !== h || chain.readableCount < 2) return undefined;
      i = 1;
      off = 0;
    }
    if (lens[i]! - off < len) return undefined;
    const views = mem.sg(chain.addrs[i]! + off, len, this.#sg);
    return views.length === 1 ? views[0] : undefined;
  }

  /**
   * A view of the first `len` bytes of the transmit buffer. Views are cached by length in a
   * small direct-mapped table, so steady traffic of a few frame sizes allocates nothing.
   */
  #txView(len: number): Uint8Array {
    const slot = len % TX_VIEW_CACHE;
    let v = this.#txViews[slot];
    if (v === undefined || v.length !== len) {
      v = this.#txBuf.subarray(0, len);
      this.#txViews[slot] = v;
    }
    return v;
  }
}
