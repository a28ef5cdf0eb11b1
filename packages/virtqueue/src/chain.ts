import type { GuestMemory } from "@virtio-ts/memory";

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
 *
 * A device that keeps several requests in flight keeps one cursor per request (a pool).
 */
export class DescriptorChain {
  /** Maximum number of segments this cursor holds; longer chains are rejected by `pop`. */
  readonly capacity: number;
  /** Guest address of each segment (numbers, see `@virtio-ts/memory` for the representation). */
  readonly addrs: Float64Array;
  /** Length in bytes of each segment. */
  readonly lens: Uint32Array;
  /** The id to pass to `push()`: split ring, the head descriptor index; packed ring, the buffer ID. */
  head = 0;
  /** Number of segments. */
  count = 0;
  /** Number of leading device-readable segments. */
  readableCount = 0;
  /** Total bytes of the readable segments. */
  readableBytes = 0;
  /** Total bytes of the writable segments. */
  writableBytes = 0;
  /** Packed ring: ring descriptors this chain occupied (1 for an indirect chain). Split: unused. */
  descCount = 0;

  /**
   * @param capacity maximum segments per chain (1 to 65536); a queue never accepts more than
   *   its queue size, so `capacity ≥ queue size` accepts every valid chain.
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

  /** Guest address of segment `i`. */
  addr(i: number): number {
    return this.addrs[i]!;
  }

  /** Length of segment `i`. */
  len(i: number): number {
    return this.lens[i]!;
  }

  /** Whether segment `i` is device-writable. */
  writable(i: number): boolean {
    return i >= this.readableCount;
  }

  /**
   * Gather: copy readable bytes starting `offset` bytes into the readable part into `dst`.
   * @returns the number of bytes copied (less than `dst.length` at the end of the readable part).
   */
  copyFromReadable(mem: GuestMemory, offset: number, dst: Uint8Array): number {
    return this.#copy(mem, 0, this.readableCount, offset, dst, false);
  }

  /**
   * Scatter: copy `src` into the writable part starting `offset` bytes into it.
   * @returns the number of bytes copied (less than `src.length` at the end of the writable part).
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
    let skip = offset;
    let done = 0;
    for (let i = from; i < to && done < buf.length; i++) {
      const len = this.lens[i]!;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, buf.length - done);
      const at = this.addrs[i]! + skip;
      const part = buf.subarray(done, done + n);
      if (write) mem.write(at, part);
      else mem.read(at, part);
      done += n;
      skip = 0;
    }
    return done;
  }

  /** @internal Start filling the cursor for a new chain. */
  begin(head: number): void {
    this.head = head;
    this.count = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.descCount = 0;
  }

  /** @internal Append a segment; the caller has checked capacity and ordering. */
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
