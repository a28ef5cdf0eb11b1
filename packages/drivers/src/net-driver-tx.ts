/**
 * The transmit path of the virtio-net driver (VIRTIO 1.3 §5.1.6.2): each frame is copied behind
 * a `virtio_net_hdr` into allocator slots (one descriptor per slot) on the transmit queue its
 * flow hashes to; `send`s wait in order for room.
 * @module
 */
import {
  completeChecksum,
  ETH_HLEN,
  flowHash,
  NetFeature,
  NetHdr,
  NetHdrFlags,
} from "@virtio-ts/spec";
import type { NetDriverCore } from "./net-driver-core.js";
import type { NetSendOptions } from "./net-driver-types.js";

/** Mutable segment objects reused for every `add` (the queue copies them into descriptors). */
interface MutSegment {
  addr: number;
  len: number;
}

/** A `send` waiting for room. */
export interface PendingSend {
  readonly frame: Uint8Array;
  readonly options: NetSendOptions | undefined;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

/** The transmit path (internal to the driver). */
export class NetDriverTx {
  /** `send`s waiting for room, in order. */
  readonly sends: PendingSend[] = [];
  /** `whenWritable` waiters. */
  readonly writable: (() => void)[] = [];
  readonly #c: NetDriverCore;
  /** Next slot of a multi-slot frame, by slot number (-1: last). Allocation-free links. */
  readonly #txNext: Int32Array;
  readonly #segs: MutSegment[] = [];
  readonly #noSegs: MutSegment[] = [];
  readonly #hdrScratch = new Uint8Array(NetHdr.SIZE);
  /** `#hdrScratch` cut to the negotiated header length. */
  readonly #hdrView: Uint8Array;

  /** @param core - the driver's shared state */
  constructor(core: NetDriverCore) {
    this.#c = core;
    this.#txNext = new Int32Array(core.slab.slots).fill(-1);
    this.#hdrView = this.#hdrScratch.subarray(0, core.hdrLen);
  }

  /** Refuse a frame or checksum request the caller got wrong (RangeError). */
  checkFrame(frame: Uint8Array, options: NetSendOptions | undefined): void {
    const c = this.#c;
    if (!(frame instanceof Uint8Array) || frame.length < ETH_HLEN || frame.length > c.maxFrame) {
      throw new RangeError(
        `frame must be a Uint8Array of 14 to ${c.maxFrame} bytes, got ${frame?.length}`,
      );
    }
    const cs = options?.csum;
    if (cs !== undefined) {
      const { start, offset } = cs;
      if (
        !Number.isInteger(start) ||
        !Number.isInteger(offset) ||
        start < 0 ||
        offset < 0 ||
        start > 0xffff ||
        offset > 0xffff ||
        start + offset + 2 > frame.length
      ) {
        throw new RangeError(
          `options.csum must have start + offset + 2 within the frame, got ${start} + ${offset}`,
        );
      }
    }
  }

  /** Put `frame` on its pair's transmit queue. @returns false if resources are short. */
  post(frame: Uint8Array, options: NetSendOptions | undefined): boolean {
    const c = this.#c;
    const pair = c.pairs > 1 ? flowHash(frame) % c.pairs : 0;
    const q = c.txQ[pair]!;
    const slotSize = c.slab.slotSize;
    const h = c.hdrLen;
    const lead = c.lead;
    const total = h + frame.length;
    // The first slot starts `lead` bytes in (the frame then starts 8-aligned).
    const nSlots = Math.ceil((lead + total) / slotSize);
    if (c.slab.available < nSlots || q.numFree < nSlots) return false;
    const mem = c.mem;
    const hdr = this.#hdrScratch;
    hdr.fill(0);
    let body = frame;
    const cs = options?.csum;
    if (cs !== undefined) {
      if (c.has(NetFeature.CSUM)) {
        // §5.1.6.2: the device completes the checksum from csum_start into csum_offset.
        hdr[NetHdr.FLAGS] = NetHdrFlags.NEEDS_CSUM;
        hdr[NetHdr.CSUM_START] = cs.start & 0xff;
        hdr[NetHdr.CSUM_START + 1] = cs.start >>> 8;
        hdr[NetHdr.CSUM_OFFSET] = cs.offset & 0xff;
        hdr[NetHdr.CSUM_OFFSET + 1] = cs.offset >>> 8;
      } else {
        // §5.1.6.2.1: no NEEDS_CSUM without CSUM; complete it here instead.
        body = new Uint8Array(frame);
        completeChecksum(body, cs.start, cs.offset);
      }
    }
    // gso_type NONE, num_buffers 0 on transmit (§5.1.6.2: the driver sets it to 0).
    const segs = this.#segs;
    while (segs.length < nSlots) segs.push({ addr: 0, len: 0 });
    // Only when it changes: the `length` setter is a builtin call (1 % of a frame's CPU).
    if (segs.length !== nSlots) segs.length = nSlots;
    let prev = -1;
    let first = -1;
    let off = 0; // bytes of header+frame written
    for (let i = 0; i < nSlots; i++) {
      const slot = c.slab.alloc() as number;
      const idx = (slot - c.slab.base) / slotSize;
      if (prev >= 0) this.#txNext[prev] = idx;
      else first = slot;
      this.#txNext[idx] = -1;
      prev = idx;
      const skip = i === 0 ? lead : 0;
      const n = Math.min(slotSize - skip, total - off);
      let dst = slot + skip;
      let left = n;
      if (off < h) {
        const k = Math.min(h - off, left);
        mem.write(dst, k === h ? this.#hdrView : hdr.subarray(off, off + k));
        dst += k;
        left -= k;
        off += k;
      }
      if (left > 0) {
        const from = off - h;
        // The common case (the frame fits one slot) writes the caller's array without a view.
        mem.write(dst, left === body.length ? body : body.subarray(from, from + left));
        off += left;
      }
      const s = segs[i]!;
      s.addr = slot + skip;
      s.len = n;
    }
    if (!q.add(segs, this.#noSegs, first)) {
      this.free(first);
      return false;
    }
    c.stats.txFrames++;
    c.stats.txBytes += frame.length;
    return true;
  }

  /** Free the slots of a transmitted frame (the transmit queue's token is its first slot). */
  free(first: number): void {
    const c = this.#c;
    const slab = c.slab;
    let idx = (first - slab.base) / slab.slotSize;
    // Bounded by the slot count: a token that is not a slot we linked ends the walk.
    for (let guard = 0; idx >= 0 && guard < this.#txNext.length; guard++) {
      const next = this.#txNext[idx]!;
      this.#txNext[idx] = -1;
      slab.free(slab.base + idx * slab.slotSize);
      idx = next;
    }
  }

  /** Post waiting `send`s that fit now, in order. */
  drainSends(): void {
    const s = this.sends;
    let i = 0;
    while (i < s.length && this.post(s[i]!.frame, s[i]!.options)) i++;
    if (i === 0) return;
    const done = s.splice(0, i);
    for (const p of done) p.resolve();
  }
}
