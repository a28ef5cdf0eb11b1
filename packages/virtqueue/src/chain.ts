import type { GuestMemory } from "@virtio-ts/memory";

/** Pieces up to this many bytes are copied byte by byte, so no view of the caller's buffer is made. */
const SMALL_PIECE = 64;

/**
 * A validated descriptor chain: a reusable, caller-owned cursor that a device queue fills on
 * `pop()`. Its arrays are allocated once, at construction, for `capacity` segments, so popping
 * allocates nothing.
 *
 * Each descriptor is read from guest memory exactly once, into this cursor; everything after
 * uses only this copy, so a guest rewriting its descriptors after they were validated changes
 * nothing (no time-of-check/time-of-use gap). The segments are in chain order: the
 * `readableCount` device-readable segments first, then the device-writable ones (a chain that
 * puts a readable descriptor after a writable one is rejected by `pop`, VIRTIO 1.3 §2.7.4.2).
 * The *contents* of the buffers stay in guest memory and may change at any time: copy what you
 * parse (for example with {@link DescriptorChain.copyFromReadable}) and parse the copy.
 *
 * The fields are valid after a successful `pop` and until the next `pop` into the same cursor.
 * A device that keeps several requests in flight keeps one cursor per request (a pool).
 *
 * @example
 * ```ts
 * const chain = new DescriptorChain(queue.size);
 * const header = new Uint8Array(16);
 * while (queue.pop(chain)) {
 *   if (chain.copyFromReadable(mem, 0, header) < 16) {
 *     queue.push(chain.head, 0); // too short: return it unused
 *     continue;
 *   }
 *   const reply = handle(header); // a Uint8Array
 *   queue.push(chain.head, chain.copyToWritable(mem, 0, reply)); // bytes actually written
 * }
 * ```
 */
export class DescriptorChain {
  /** Maximum number of segments this cursor holds; longer chains are rejected by `pop`. */
  readonly capacity: number;
  /**
   * Guest address of each segment (index < `count`). Numbers, see `@virtio-ts/memory` for the
   * representation; every address was checked against guest memory by `pop`.
   */
  readonly addrs: Float64Array;
  /** Length in bytes of each segment (index < `count`). */
  readonly lens: Uint32Array;
  /** The id to pass to `push()`: split ring, the head descriptor index; packed ring, the buffer ID. */
  head = 0;
  /** Number of segments (1 to `capacity`; zero-length segments count). */
  count = 0;
  /** Number of leading device-readable segments. */
  readableCount = 0;
  /** Total bytes of the readable segments. */
  readableBytes = 0;
  /** Total bytes of the writable segments (the most `push` accepts as `written`). */
  writableBytes = 0;
  /** Packed ring: ring descriptors this chain occupied (1 for an indirect chain). Split: unused. */
  descCount = 0;

  /**
   * @param capacity maximum segments per chain (1 to 65536); a queue never accepts more than
   *   its queue size, so `capacity ≥ queue size` accepts every valid chain, and a smaller one is
   *   the device's "reasonable limit of descriptors" (VIRTIO 1.3 §2.7.4.1).
   * @throws RangeError if `capacity` is not an integer in [1, 65536].
   */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536) {
      throw new RangeError(`capacity must be an integer in [1, 65536], got ${capacity}`);
    }
    this.capacity = capacity;
    this.addrs = new Float64Array(capacity);
    this.lens = new Uint32Array(capacity);
  }

  /**
   * Guest address of segment `i`.
   * @throws RangeError naming `i` unless it is an integer in [0, `count`).
   */
  addr(i: number): number {
    if (!(i >>> 0 === i && i < this.count)) throw segmentIndexError(i, this.count);
    return this.addrs[i]!;
  }

  /**
   * Length in bytes of segment `i`.
   * @throws RangeError naming `i` unless it is an integer in [0, `count`).
   */
  len(i: number): number {
    if (!(i >>> 0 === i && i < this.count)) throw segmentIndexError(i, this.count);
    return this.lens[i]!;
  }

  /**
   * Whether segment `i` is device-writable (the device must not write any other, §2.7.5.1).
   * @throws RangeError naming `i` unless it is an integer in [0, `count`).
   */
  writable(i: number): boolean {
    if (!(i >>> 0 === i && i < this.count)) throw segmentIndexError(i, this.count);
    return i >= this.readableCount;
  }

  /**
   * Gather: copy the readable part, from `offset` bytes into it, into `dst` (as much as fits).
   *
   * Bounded by the segment count; allocates nothing itself except one `subarray` view of `dst`
   * for a piece longer than 64 bytes that fills only part of it (a piece that fills all of
   * `dst` is passed as is). What `mem.read` does inside is up to the memory implementation.
   *
   * @param mem the guest memory the chain was popped from.
   * @param offset byte offset into the readable part (a non-negative safe integer; past the end
   *   copies nothing).
   * @param dst destination; up to `dst.length` bytes are copied.
   * @returns the number of bytes copied: `min(dst.length, readableBytes - offset)`, or 0.
   * @throws RangeError naming `offset`; GuestMemoryError only if `mem` no longer maps a segment
   *   that `pop` checked (an IOMMU mapping removed meanwhile).
   */
  copyFromReadable(mem: GuestMemory, offset: number, dst: Uint8Array): number {
    return this.#copy(mem, 0, this.readableCount, offset, dst, false);
  }

  /**
   * Scatter: copy `src` into the writable part, from `offset` bytes into it (as much as fits).
   * Bounded and allocation-free as {@link DescriptorChain.copyFromReadable}.
   *
   * @param mem the guest memory the chain was popped from.
   * @param offset byte offset into the writable part (a non-negative safe integer; past the end
   *   copies nothing).
   * @param src source bytes.
   * @returns the number of bytes copied: `min(src.length, writableBytes - offset)`, or 0.
   * @throws RangeError naming `offset`; GuestMemoryError only if `mem` no longer maps a segment
   *   that `pop` checked.
   */
  copyToWritable(mem: GuestMemory, offset: number, src: Uint8Array): number {
    return this.#copy(mem, this.readableCount, this.count, offset, src, true);
  }

  #copy(
    mem: GuestMemory,
    from: number,
    to: number,
    offset: number,
    buf: Uint8Array,
    write: boolean,
  ): number {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`offset must be a non-negative safe integer, got ${offset}`);
    }
    const want = buf.length;
    let skip = offset;
    let done = 0;
    for (let i = from; i < to && done < want; i++) {
      const len = this.lens[i]!;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, want - done);
      const at = this.addrs[i]! + skip;
      if (n === want) {
        // The whole buffer in one piece (so done is 0): no view needed.
        if (write) mem.write(at, buf);
        else mem.read(at, buf);
      } else if (n <= SMALL_PIECE) {
        if (write) for (let k = 0; k < n; k++) mem.writeU8(at + k, buf[done + k]!);
        else for (let k = 0; k < n; k++) buf[done + k] = mem.readU8(at + k);
      } else {
        const part = buf.subarray(done, done + n);
        if (write) mem.write(at, part);
        else mem.read(at, part);
      }
      done += n;
      skip = 0;
    }
    return done;
  }

  /**
   * Start filling the cursor for a new chain (used by the device queues; not for device models).
   * @param head the chain's id.
   */
  begin(head: number): void {
    this.head = head;
    this.count = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.descCount = 0;
  }

  /**
   * Set the segment count and totals after the caller wrote `addrs` / `lens` itself (used by
   * the device queues' chain walks, which keep them in locals; not for device models).
   * @param count segments written.
   * @param readableCount leading readable segments.
   * @param readableBytes their total bytes.
   * @param writableBytes total bytes of the writable segments.
   */
  setTotals(count: number, readableCount: number, readableBytes: number, writableBytes: number) {
    this.count = count;
    this.readableCount = readableCount;
    this.readableBytes = readableBytes;
    this.writableBytes = writableBytes;
  }

  /**
   * Append a segment (used by the device queues, which have checked capacity, ordering and
   * bounds; not for device models).
   * @param addr guest address.
   * @param len length in bytes.
   * @param writable device-writable.
   */
  append(addr: number, len: number, writable: boolean): void {
    const i = this.count++;
    this.addrs[i] = addr;
    this.lens[i] = len;
    if (writable) this.writableBytes += len;
    else {
      this.readableCount++;
      this.readableBytes += len;
    }
  }
}

function segmentIndexError(i: number, count: number): RangeError {
  return new RangeError(`i must be a segment index in [0, ${count}), got ${i}`);
}
