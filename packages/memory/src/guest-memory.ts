import { GuestMemoryError } from "./errors.js";
import { ADDRESS_LIMIT, addressError, hex, isAddress, isLength, lengthError } from "./limits.js";
import type { AccessKind, GuestAddress, GuestMemory, StableRange } from "./types.js";

/** How to build one region of a {@link GuestMemoryMap}. */
export interface GuestRegionOptions {
  /** Guest-physical address of the region's first byte: a safe integer ≥ 0. */
  readonly guestBase: number;
  /** Size in bytes: an integer > 0 with `guestBase + size ≤ 2^53`. */
  readonly size: number;
  /**
   * Backing store. A SharedArrayBuffer lets other threads (a vhost-style worker, the guest's
   * vCPU thread) share the region. A resizable ArrayBuffer is refused because it could shrink
   * under the views created here.
   */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  /**
   * Offset of the region inside `buffer` (default 0). `guestBase - byteOffset` must be a
   * multiple of 8, so a guest address and its backing byte have the same alignment and aligned
   * guest structures can be viewed as `Uint16Array`/`Uint32Array` (and used with `Atomics`).
   */
  readonly byteOffset?: number;
  /** Refuse writes and write-access views, like a ROM (default false). */
  readonly readOnly?: boolean;
}

/**
 * One mapped region of a {@link GuestMemoryMap}, with its views created once at construction.
 * Host code may use `bytes` and `view` directly (they are not bounds-checked against guest
 * addresses and ignore `readOnly`); guest-facing code goes through the {@link GuestMemory}
 * methods.
 */
export interface GuestRegion {
  /** Guest-physical address of the first byte. */
  readonly guestBase: number;
  /** Size in bytes. */
  readonly size: number;
  /** One past the last guest address (`guestBase + size ≤ 2^53`). */
  readonly guestEnd: number;
  /** Backing store. */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  /** Offset of the region inside `buffer`. */
  readonly byteOffset: number;
  /** Whether guest-facing writes are refused (code "read-only"). */
  readonly readOnly: boolean;
  /** Whether `buffer` is a SharedArrayBuffer. */
  readonly shared: boolean;
  /** Byte view of the whole region: index 0 is guest address `guestBase`. */
  readonly bytes: Uint8Array;
  /** DataView of the whole region: offset 0 is guest address `guestBase`. */
  readonly view: DataView;
}

/** Options of {@link createGuestMemory}. */
export interface CreateGuestMemoryOptions {
  /** Size in bytes: a safe integer > 0. */
  readonly size: number;
  /**
   * Back the memory with a SharedArrayBuffer (default true) so other threads can share it.
   * Browsers only provide SharedArrayBuffer on cross-origin-isolated pages; pass `false` elsewhere.
   */
  readonly shared?: boolean;
  /** Guest-physical address of the first byte (default 0); any safe integer ≥ 0. */
  readonly guestBase?: number;
}

// `SharedArrayBuffer` is not defined on browser pages that are not cross-origin isolated.
const SAB: SharedArrayBufferConstructor | undefined =
  typeof SharedArrayBuffer === "function" ? SharedArrayBuffer : undefined;

function isShared(buffer: unknown): buffer is SharedArrayBuffer {
  return SAB !== undefined && buffer instanceof SAB;
}

/**
 * Copies of at least this many bytes between shared memory and a buffer whose alignment
 * differs modulo 8 go through {@link GuestMemoryMap}'s bounce buffer (see `#copyIn`).
 */
const BOUNCE_MIN = 128;
/** Bytes of the bounce buffer; longer copies go through it in pieces. */
const BOUNCE_BYTES = 64 * 1024;

/**
 * Guest memory made of one or more regions over ArrayBuffers or SharedArrayBuffers.
 *
 * **Addresses** are numbers. A range `[addr, addr + len)` is accessible when every byte lies in
 * a region; a zero-length range is accessible at any address inside a region or exactly at its
 * end. An address must be an integer ≥ 0: negative, fractional or non-finite values can only
 * come from host code and raise a `RangeError` naming `addr`. Integers ≥ 2^53 do come from
 * guests (a 64-bit descriptor address, see {@link u64ToAddress}) and are simply unmapped:
 * {@link GuestMemoryError} "out-of-bounds". Bounds are compared as `len ≤ guestEnd - addr`, an
 * exact subtraction, so no rounding or 64-bit wrap-around can bring a range back into a region.
 * Lengths are integers in [0, 2^32] ({@link MAX_ACCESS_LENGTH}).
 *
 * **Regions** are sorted by address and must not overlap. `read`, `write`, `fill` and `sg` may
 * span regions that are adjacent in guest-physical space (a hole makes the whole access fail
 * and nothing is copied); scalars and views must lie inside one region ("cross-region").
 * Region lookup caches the last region hit and otherwise binary-searches; `check`, `readU*`
 * (except the bigint `readU64` returns) and `writeU*` allocate nothing.
 *
 * @example
 * ```ts
 * import { GuestMemoryMap } from "@virtio-ts/memory";
 *
 * const low = new SharedArrayBuffer(0x10000);
 * const mem = new GuestMemoryMap([
 *   { guestBase: 0, size: 0x10000, buffer: low },
 *   { guestBase: 0xfff0_0000, size: 0x1000, buffer: new ArrayBuffer(0x1000), readOnly: true },
 * ]);
 * mem.writeU32(0x100, 0xdeadbeef);
 * mem.readU16(0x100); // 0xbeef: virtio is little-endian
 * mem.check(0x10000, 1); // false: nothing is mapped there
 * ```
 */
export class GuestMemoryMap implements GuestMemory {
  /** The regions, sorted by `guestBase`; frozen. */
  readonly regions: readonly GuestRegion[];
  /** Whether every region is backed by a SharedArrayBuffer. */
  readonly shared: boolean;
  /**
   * The largest writable region as a {@link StableRange} (regions never change), or undefined
   * if every region is read-only.
   */
  readonly stableRange: StableRange | undefined;
  /** The region of the last successful lookup: ring accesses hit the same region repeatedly. */
  #last: GuestRegion;
  /** Bounce buffer for misaligned copies to and from shared regions, made on first use. */
  #bounce: Uint8Array | undefined = undefined;

  /**
   * @param regions - the regions, in any order; they are sorted and must not overlap.
   * @throws TypeError if `regions` is not an array or a region is not an object with an
   *   ArrayBuffer/SharedArrayBuffer `buffer`; RangeError for an invalid number. Messages name the
   *   argument, e.g. `regions[1].guestBase`.
   */
  constructor(regions: readonly GuestRegionOptions[]) {
    if (!Array.isArray(regions)) throw new TypeError("regions must be an array of region options");
    if (regions.length === 0) throw new RangeError("regions must be a non-empty array");
    const built = regions.map((r: GuestRegionOptions, i) => ({ at: i, region: buildRegion(r, i) }));
    built.sort((a, b) => a.region.guestBase - b.region.guestBase);
    for (let i = 1; i < built.length; i++) {
      const prev = built[i - 1]!;
      const cur = built[i]!;
      if (cur.region.guestBase < prev.region.guestEnd) {
        throw new RangeError(
          `regions[${cur.at}] (guestBase ${hex(cur.region.guestBase)}) overlaps regions[${prev.at}] ([${hex(prev.region.guestBase)}, ${hex(prev.region.guestEnd)}))`,
        );
      }
    }
    this.regions = Object.freeze(built.map((b) => b.region));
    this.shared = this.regions.every((r) => isShared(r.buffer));
    let big: GuestRegion | undefined;
    for (const r of this.regions) {
      if (!r.readOnly && (big === undefined || r.size > big.size)) big = r;
    }
    this.stableRange =
      big === undefined ? undefined : Object.freeze({ start: big.guestBase, end: big.guestEnd });
    this.#last = this.regions[0]!;
  }

  /**
   * The one region holding all of `[addr, addr + len)`, or undefined (also for invalid input).
   * Never throws, never allocates.
   * @param addr - first guest address
   * @param len - length in bytes
   * @returns the region, whose `bytes[addr - guestBase]` is the byte at `addr`
   */
  regionOf(addr: number, len: number): GuestRegion | undefined {
    return len >= 0 ? this.#within(addr, len) : undefined;
  }

  /** {@inheritDoc GuestMemory.addressOf} */
  addressOf(view: ArrayBufferView): number | undefined {
    // Each of `buffer`, `byteOffset` and `byteLength` is a builtin call in V8 (10–17 ns), so
    // each is read once; a Uint8Array's `length` (inlined) stands for its `byteLength`.
    const buffer = view.buffer;
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i]!;
      if (r.buffer !== buffer) continue;
      const off = view.byteOffset - r.byteOffset;
      const len = view instanceof Uint8Array ? view.length : view.byteLength;
      if (off >= 0 && len <= r.size - off) return r.guestBase + off;
      // Another region may share the buffer (a buffer split into several regions).
    }
    return undefined;
  }

  /** Region lookup for the hot paths; `len` must be ≥ 0 (callers check host lengths first). */
  #within(addr: number, len: number): GuestRegion | undefined {
    // `len <= guestEnd - addr` is exact (both operands below 2^53 when addr is in the region);
    // `addr + len <= guestEnd` could round down to guestEnd near 2^53.
    const last = this.#last;
    // A zero-length range exactly at the cached region's end is looked up: an adjacent region
    // starting there owns it (as #find says), whichever region was used last.
    if (
      addr >= last.guestBase &&
      len <= last.guestEnd - addr &&
      (len > 0 || addr < last.guestEnd) &&
      Number.isInteger(addr)
    ) {
      return last;
    }
    const r = this.#find(addr);
    if (r === undefined || !(len <= r.guestEnd - addr) || !Number.isInteger(addr)) return undefined;
    this.#last = r;
    return r;
  }

  /**
   * The region with the largest `guestBase ≤ addr` (so at a boundary between two adjacent
   * regions, the one that starts there), or undefined. NaN finds nothing.
   */
  #find(addr: number): GuestRegion | undefined {
    const rs = this.regions;
    if (!(addr >= rs[0]!.guestBase)) return undefined;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (rs[mid]!.guestBase <= addr) lo = mid;
      else hi = mid - 1;
    }
    return rs[lo];
  }

  /** Slow path: does `[addr, addr + len)` lie in guest-contiguous regions allowing `access`? */
  #spans(addr: number, len: number, access: AccessKind): boolean {
    let a = addr;
    let remaining = len;
    // Each turn moves `a` to the end of a further region, so it runs at most regions.length times.
    for (;;) {
      const r = this.#find(a);
      if (r === undefined) return false;
      if (access === "write" && r.readOnly) return false;
      const avail = r.guestEnd - a;
      if (remaining <= avail) return true;
      if (avail <= 0) return false; // a hole starts at `a` (an adjacent region would have been found)
      remaining -= avail;
      a = r.guestEnd;
    }
  }

  /**
   * The error for a failed access (cold path). `single`: the access needs one region.
   * Callers have validated `len`.
   */
  #fail(addr: number, len: number, access: AccessKind, single: boolean): Error {
    if (!isAddress(addr)) return addressError("addr", addr);
    if (single) {
      const r = this.#within(addr, len);
      if (r !== undefined) return new GuestMemoryError("read-only", addr, len);
      return this.#spans(addr, len, "read")
        ? new GuestMemoryError("cross-region", addr, len, "the access must lie in one region")
        : new GuestMemoryError("out-of-bounds", addr, len);
    }
    if (access === "write" && this.#spans(addr, len, "read")) {
      return new GuestMemoryError("read-only", addr, len);
    }
    return new GuestMemoryError("out-of-bounds", addr, len);
  }

  /**
   * Is `[addr, addr + len)` accessible for `access`? Never throws, never allocates. A range may
   * span adjacent regions; a zero-length range is accessible inside a region or exactly at its
   * end. Invalid numbers (negative, fractional, NaN, a length above 2^32) answer false. A write
   * is refused on a read-only region even for zero bytes.
   * @param addr - first guest address
   * @param len - length in bytes
   * @param access - "read" (default) or "write"
   * @returns true when a `read`/`write`/`fill`/`sg` of the range would succeed
   */
  check(addr: number, len: number, access: AccessKind = "read"): boolean {
    if (!isLength(len)) return false;
    const r = this.#within(addr, len);
    if (r !== undefined) return !(access === "write" && r.readOnly);
    return isAddress(addr) && this.#spans(addr, len, access);
  }

  /** {@inheritDoc GuestMemory.readU8} */
  readU8(addr: number): number {
    const r = this.#within(addr, 1);
    if (r === undefined) throw this.#fail(addr, 1, "read", true);
    return r.bytes[addr - r.guestBase]!;
  }
  /** {@inheritDoc GuestMemory.readU16} */
  readU16(addr: number): number {
    const r = this.#within(addr, 2);
    if (r === undefined) throw this.#fail(addr, 2, "read", true);
    return r.view.getUint16(addr - r.guestBase, true);
  }
  /** {@inheritDoc GuestMemory.readU32} */
  readU32(addr: number): number {
    const r = this.#within(addr, 4);
    if (r === undefined) throw this.#fail(addr, 4, "read", true);
    return r.view.getUint32(addr - r.guestBase, true);
  }
  /** {@inheritDoc GuestMemory.readU64} */
  readU64(addr: number): bigint {
    const r = this.#within(addr, 8);
    if (r === undefined) throw this.#fail(addr, 8, "read", true);
    return r.view.getBigUint64(addr - r.guestBase, true);
  }
  /** {@inheritDoc GuestMemory.writeU8} */
  writeU8(addr: number, value: number): void {
    const r = this.#within(addr, 1);
    if (r === undefined || r.readOnly) throw this.#fail(addr, 1, "write", true);
    r.bytes[addr - r.guestBase] = value;
  }
  /** {@inheritDoc GuestMemory.writeU16} */
  writeU16(addr: number, value: number): void {
    const r = this.#within(addr, 2);
    if (r === undefined || r.readOnly) throw this.#fail(addr, 2, "write", true);
    r.view.setUint16(addr - r.guestBase, value, true);
  }
  /** {@inheritDoc GuestMemory.writeU32} */
  writeU32(addr: number, value: number): void {
    const r = this.#within(addr, 4);
    if (r === undefined || r.readOnly) throw this.#fail(addr, 4, "write", true);
    r.view.setUint32(addr - r.guestBase, value, true);
  }
  /** {@inheritDoc GuestMemory.writeU64} */
  writeU64(addr: number, value: bigint): void {
    const r = this.#within(addr, 8);
    if (r === undefined || r.readOnly) throw this.#fail(addr, 8, "write", true);
    // setBigUint64 reduces the value modulo 2^64 itself.
    r.view.setBigUint64(addr - r.guestBase, value, true);
  }

  /** {@inheritDoc GuestMemory.read} */
  read(addr: number, dst: Uint8Array): void {
    const len = dst.length;
    const r = this.#within(addr, len);
    if (r !== undefined) {
      this.#copy(r, addr - r.guestBase, dst, 0, len, false);
      return;
    }
    this.#copySlow(addr, len, "read", dst, 0);
  }
  /** {@inheritDoc GuestMemory.write} */
  write(addr: number, src: Uint8Array): void {
    const r = this.#within(addr, src.length);
    if (r !== undefined && !r.readOnly) {
      this.#copy(r, addr - r.guestBase, src, 0, src.length, true);
      return;
    }
    this.#copySlow(addr, src.length, "write", src, 0);
  }

  /**
   * Copy `len` bytes between region `r` at byte `off` and `buf` at `at` (`toGuest`: into the
   * region). V8 copies to or from a SharedArrayBuffer with a relaxed-atomic memmove that goes
   * byte by byte unless source and destination have the same alignment modulo 8 (a
   * virtio-net frame after its 12-byte header: about 6× slower than a memmove). Such a copy
   * goes through a non-shared bounce buffer placed at the region's alignment: a plain memmove
   * into (or out of) it, then an aligned relaxed copy.
   */
  #copy(
    r: GuestRegion,
    off: number,
    buf: Uint8Array,
    at: number,
    len: number,
    toGuest: boolean,
  ): void {
    const shift = (r.byteOffset + off) & 7;
    if (len < BOUNCE_MIN || ((buf.byteOffset + at) & 7) === shift || !r.shared) {
      if (toGuest) {
        r.bytes.set(at === 0 && len === buf.length ? buf : buf.subarray(at, at + len), off);
      } else if (at === 0 && len === buf.length) buf.set(r.bytes.subarray(off, off + len));
      else buf.set(r.bytes.subarray(off, off + len), at);
      return;
    }
    let b = this.#bounce;
    if (b === undefined) {
      b = new Uint8Array(BOUNCE_BYTES + 8);
      this.#bounce = b;
    }
    for (let done = 0; done < len; ) {
      const n = Math.min(len - done, BOUNCE_BYTES);
      // The bounce buffer's bytes start 8-aligned, so `shift` puts them at the region's
      // alignment; `done` stays a multiple of 8 (BOUNCE_BYTES is).
      const tmp = b.subarray(shift, shift + n);
      if (toGuest) {
        tmp.set(buf.subarray(at + done, at + done + n));
        r.bytes.set(tmp, off + done);
      } else {
        tmp.set(r.bytes.subarray(off + done, off + done + n));
        buf.set(tmp, at + done);
      }
      done += n;
    }
  }
  /** {@inheritDoc GuestMemory.fill} */
  fill(addr: number, len: number, byte: number): void {
    if (!isLength(len)) throw lengthError("len", len);
    const r = this.#within(addr, len);
    if (r !== undefined && !r.readOnly) {
      const off = addr - r.guestBase;
      r.bytes.fill(byte, off, off + len);
      return;
    }
    this.#copySlow(addr, len, "write", undefined, byte);
  }

  /** Copy or fill across adjacent regions, after checking the whole range (all or nothing). */
  #copySlow(
    addr: number,
    len: number,
    access: AccessKind,
    data: Uint8Array | undefined,
    byte: number,
  ): void {
    if (!isAddress(addr) || !this.#spans(addr, len, access)) {
      throw this.#fail(addr, len, access, false);
    }
    let a = addr;
    let done = 0;
    while (done < len) {
      const r = this.#find(a)!;
      const off = a - r.guestBase;
      const n = Math.min(len - done, r.size - off);
      if (data === undefined) r.bytes.fill(byte, off, off + n);
      else this.#copy(r, off, data, done, n, access === "write");
      done += n;
      a += n;
    }
  }

  /** {@inheritDoc GuestMemory.slice} */
  slice(addr: number, len: number, access: AccessKind = "read"): Uint8Array {
    const r = this.#view(addr, len, access, 1, "len");
    return new Uint8Array(r.buffer, r.byteOffset + (addr - r.guestBase), len);
  }
  /** {@inheritDoc GuestMemory.dataView} */
  dataView(addr: number, len: number, access: AccessKind = "read"): DataView {
    const r = this.#view(addr, len, access, 1, "len");
    return new DataView(r.buffer, r.byteOffset + (addr - r.guestBase), len);
  }
  /** {@inheritDoc GuestMemory.u16View} */
  u16View(addr: number, count: number, access: AccessKind = "read"): Uint16Array {
    const r = this.#view(addr, count, access, 2, "count");
    // The constructor made guest alignment equal buffer alignment, so this offset is 2-aligned.
    return new Uint16Array(r.buffer, r.byteOffset + (addr - r.guestBase), count);
  }
  /** {@inheritDoc GuestMemory.u32View} */
  u32View(addr: number, count: number, access: AccessKind = "read"): Uint32Array {
    const r = this.#view(addr, count, access, 4, "count");
    return new Uint32Array(r.buffer, r.byteOffset + (addr - r.guestBase), count);
  }

  /** The region for a view of `count` elements of `unit` bytes at `addr`, or throw. */
  #view(addr: number, count: number, access: AccessKind, unit: number, name: string): GuestRegion {
    if (!isLength(count * unit) || !Number.isInteger(count)) throw lengthError(name, count, unit);
    const len = count * unit;
    const r = this.#within(addr, len);
    if (r !== undefined && addr % unit === 0 && !(access === "write" && r.readOnly)) return r;
    if (isAddress(addr) && addr % unit !== 0) {
      throw new GuestMemoryError("misaligned", addr, len, `needs ${unit}-byte alignment`);
    }
    throw this.#fail(addr, len, access, true);
  }

  /** {@inheritDoc GuestMemory.sg} */
  sg(addr: number, len: number, out: Uint8Array[] = [], access: AccessKind = "read"): Uint8Array[] {
    if (!isLength(len)) throw lengthError("len", len);
    const r0 = this.#within(addr, len);
    if (r0 !== undefined && !(access === "write" && r0.readOnly)) {
      // Set the length only when it changes: a reused one-view array (every call of a device's
      // hot path) would otherwise pay the `length` setter builtin twice per call.
      if (out.length !== 1) out.length = 1;
      out[0] = new Uint8Array(r0.buffer, r0.byteOffset + (addr - r0.guestBase), len);
      return out;
    }
    out.length = 0;
    if (!isAddress(addr) || !this.#spans(addr, len, access)) {
      throw this.#fail(addr, len, access, false);
    }
    let a = addr;
    let done = 0;
    while (done < len) {
      const r = this.#find(a)!;
      const off = a - r.guestBase;
      const n = Math.min(len - done, r.size - off);
      out.push(new Uint8Array(r.buffer, r.byteOffset + off, n));
      done += n;
      a += n;
    }
    return out;
  }
}

function buildRegion(r: GuestRegionOptions, i: number): GuestRegion {
  const at = `regions[${i}]`;
  if (r === null || typeof r !== "object") throw new TypeError(`${at} must be an object`);
  const { guestBase, size, buffer } = r;
  const byteOffset = r.byteOffset ?? 0;
  if (!(buffer instanceof ArrayBuffer || isShared(buffer))) {
    throw new TypeError(`${at}.buffer must be an ArrayBuffer or SharedArrayBuffer`);
  }
  // A resizable ArrayBuffer may shrink under our fixed-length views (ES2024; typed loosely
  // because the ES2022 lib does not know the property).
  if ((buffer as { resizable?: boolean }).resizable === true) {
    throw new TypeError(`${at}.buffer must not be a resizable ArrayBuffer`);
  }
  if (!Number.isSafeInteger(guestBase) || guestBase < 0) {
    throw new RangeError(`${at}.guestBase must be a safe integer ≥ 0, got ${guestBase}`);
  }
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`${at}.size must be an integer > 0, got ${size}`);
  }
  // Exact: both operands are safe integers and guestBase ≤ 2^53.
  if (size > ADDRESS_LIMIT - guestBase) {
    throw new RangeError(`${at}.guestBase + size must not exceed 2^53, got ${guestBase} + ${size}`);
  }
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0) {
    throw new RangeError(`${at}.byteOffset must be a safe integer ≥ 0, got ${byteOffset}`);
  }
  if (size > buffer.byteLength - byteOffset) {
    throw new RangeError(
      `${at}.byteOffset + size must lie inside the buffer: ${byteOffset} + ${size} > ${buffer.byteLength}`,
    );
  }
  // Guest alignment must equal backing alignment, or typed views of aligned guest structures
  // (and Atomics on them) would be impossible.
  if ((guestBase - byteOffset) % 8 !== 0) {
    throw new RangeError(
      `${at}.guestBase and ${at}.byteOffset must be congruent modulo 8, got ${guestBase} and ${byteOffset}`,
    );
  }
  return Object.freeze({
    guestBase,
    size,
    guestEnd: guestBase + size,
    buffer,
    byteOffset,
    readOnly: r.readOnly === true,
    shared: isShared(buffer),
    bytes: new Uint8Array(buffer, byteOffset, size),
    view: new DataView(buffer, byteOffset, size),
  });
}

/**
 * A one-region guest memory, zero-filled, at `guestBase` (default 0).
 *
 * The buffer starts `guestBase % 8` bytes before guest address `guestBase` so alignment is
 * preserved (see {@link GuestRegionOptions.byteOffset}); for the usual 8-aligned base the
 * region's `buffer` is exactly the guest memory.
 *
 * @example
 * ```ts
 * import { createGuestMemory } from "@virtio-ts/memory";
 *
 * const mem = createGuestMemory({ size: 1 << 20 }); // 1 MiB at guest address 0, shared
 * const rom = createGuestMemory({ size: 4096, guestBase: 0x1000_0000, shared: false });
 * ```
 * @throws TypeError if `options` is not an object or SharedArrayBuffer is unavailable while
 *   `shared` is true; RangeError naming `options.size` or `options.guestBase`.
 */
export function createGuestMemory(options: CreateGuestMemoryOptions): GuestMemoryMap {
  if (options === null || typeof options !== "object") {
    throw new TypeError("options must be an object");
  }
  const { size, shared = true, guestBase = 0 } = options;
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`options.size must be an integer > 0, got ${size}`);
  }
  if (!Number.isSafeInteger(guestBase) || guestBase < 0) {
    throw new RangeError(`options.guestBase must be a safe integer ≥ 0, got ${guestBase}`);
  }
  if (size > ADDRESS_LIMIT - guestBase) {
    throw new RangeError(`options.guestBase + options.size must not exceed 2^53`);
  }
  if (shared && SAB === undefined) {
    throw new TypeError(
      "options.shared: SharedArrayBuffer is unavailable here (browsers need cross-origin isolation); pass shared: false",
    );
  }
  const byteOffset = guestBase % 8;
  const bytes = byteOffset + size;
  const buffer = shared && SAB !== undefined ? new SAB(bytes) : new ArrayBuffer(bytes);
  return new GuestMemoryMap([{ guestBase, size, buffer, byteOffset }]);
}

/**
 * Turn a 64-bit value the guest wrote as two little-endian 32-bit halves (a descriptor's
 * `le64 addr`, a queue address register pair) into an address number: `hi * 2^32 + lo`.
 *
 * Below 2^53 the result is exact. At or above it the result may round, but it stays ≥ 2^53
 * (and ≤ 2^64), where no region lies, so a bounds check rejects it: a guest cannot wrap an
 * address around 2^64 into mapped memory. Both halves are taken modulo 2^32 (`>>> 0`).
 *
 * @param lo - low 32 bits (bytes 0–3 of the le64)
 * @param hi - high 32 bits (bytes 4–7)
 * @returns an integer in [0, 2^64]
 *
 * @example
 * ```ts
 * import { createGuestMemory, u64ToAddress } from "@virtio-ts/memory";
 *
 * const mem = createGuestMemory({ size: 0x1000 });
 * const addr = u64ToAddress(mem.readU32(0x10), mem.readU32(0x14)); // a descriptor's addr field
 * mem.check(addr, 16); // false for any value a hostile guest picks outside memory
 * ```
 */
export function u64ToAddress(lo: number, hi: number): number {
  return (hi >>> 0) * 4294967296 + (lo >>> 0);
}

/**
 * Brand a host-chosen number as a {@link GuestAddress} after checking it.
 *
 * @param addr - a safe integer in [0, 2^53)
 * @returns the same number, typed as a guest address
 * @throws RangeError naming `addr` if it is not a safe integer ≥ 0.
 */
export function guestAddress(addr: number): GuestAddress {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new RangeError(`addr must be a non-negative safe integer, got ${addr}`);
  }
  return addr as GuestAddress;
}
