import { GuestMemoryError } from "./errors.js";
import type { AccessKind, GuestAddress, GuestMemory } from "./types.js";

/** Every region ends at or below this address, so guest-derived addresses ≥ 2^53 are never mapped. */
export const ADDRESS_LIMIT = 2 ** 53;

/** Largest length accepted by a single access: 2^32 (a descriptor's `le32 len` is below that). */
export const MAX_ACCESS_LENGTH = 2 ** 32;

/** How to build one region of a {@link GuestMemoryMap}. */
export interface GuestRegionOptions {
  /** Guest-physical address of the region's first byte. */
  readonly guestBase: number;
  /** Size in bytes (> 0). */
  readonly size: number;
  /** Backing store; a SharedArrayBuffer lets other threads share the region. */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  /** Offset of the region inside `buffer` (default 0). */
  readonly byteOffset?: number;
  /** Refuse writes and write-access views (ROM). Default false. */
  readonly readOnly?: boolean;
}

/** One mapped region of a {@link GuestMemoryMap}, with views created once. */
export interface GuestRegion {
  /** Guest-physical address of the first byte. */
  readonly guestBase: number;
  /** Size in bytes. */
  readonly size: number;
  /** One past the last guest address (guestBase + size ≤ 2^53). */
  readonly guestEnd: number;
  /** Backing store. */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  /** Offset of the region inside `buffer`. */
  readonly byteOffset: number;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Byte view of the whole region. */
  readonly bytes: Uint8Array;
  /** DataView of the whole region (little-endian accessors are used with it). */
  readonly view: DataView;
}

/** The error a host-supplied address or length deserves: a RangeError naming the argument. */
function checkHostArgs(addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new RangeError(`addr must be a non-negative safe integer, got ${addr}`);
  }
  if (!Number.isInteger(len) || len < 0 || len > MAX_ACCESS_LENGTH) {
    throw new RangeError(`len must be an integer in [0, 2^32], got ${len}`);
  }
}

/**
 * Guest memory made of one or more regions over ArrayBuffers or SharedArrayBuffers.
 *
 * Address rules: a range `[addr, addr + len)` is accessible when it lies inside mapped
 * regions; a zero-length range is accessible at any address inside a region or exactly at its
 * end. Addresses read from the guest may exceed 2^53 (see {@link u64ToAddress}); they are simply
 * unmapped, because every region ends at or below 2^53 and `addr + len` with `len ≤ 2^32` can
 * never round back below it. Host code passing a non-integer, negative or unsafe address gets a
 * RangeError naming the argument; an address that is merely unmapped gets a
 * {@link GuestMemoryError}.
 *
 * Scalar accessors, `check` and region lookup do not allocate. `read`/`write`/`fill`/`sg`
 * may span regions that are adjacent in guest-physical space; views must lie in one region.
 *
 * @example
 * ```ts
 * const mem = new GuestMemoryMap([{ guestBase: 0, size: 65536, buffer: new SharedArrayBuffer(65536) }]);
 * mem.writeU32(0x100, 0xdeadbeef);
 * mem.readU16(0x100); // 0xbeef (little-endian)
 * ```
 */
export class GuestMemoryMap implements GuestMemory {
  /** The regions, sorted by guest address. */
  readonly regions: readonly GuestRegion[];
  /** @inheritdoc */
  readonly shared: boolean;
  #last: GuestRegion;

  /**
   * @param regions the regions; they are sorted and must not overlap.
   * @throws RangeError or TypeError naming the offending argument (e.g. `regions[1].guestBase`).
   */
  constructor(regions: readonly GuestRegionOptions[]) {
    if (!Array.isArray(regions) || regions.length === 0) {
      throw new RangeError("regions must be a non-empty array of region options");
    }
    const built = regions.map((r, i) => buildRegion(r, i));
    built.sort((a, b) => a.guestBase - b.guestBase);
    for (let i = 1; i < built.length; i++) {
      const prev = built[i - 1]!;
      const cur = built[i]!;
      if (cur.guestBase < prev.guestEnd) {
        throw new RangeError(
          `regions overlap: [0x${prev.guestBase.toString(16)}, 0x${prev.guestEnd.toString(16)}) and region at guestBase 0x${cur.guestBase.toString(16)}`,
        );
      }
    }
    this.regions = built;
    this.shared = built.every((r) => r.buffer instanceof SharedArrayBuffer);
    this.#last = built[0]!;
  }

  /** The region holding all of `[addr, addr+len)`, or undefined. Never allocates or throws. */
  regionOf(addr: number, len: number): GuestRegion | undefined {
    let r = this.#last;
    if (!(addr >= r.guestBase && addr + len <= r.guestEnd)) {
      const found = this.#find(addr);
      if (found === undefined || addr + len > found.guestEnd) return undefined;
      r = found;
      this.#last = r;
    }
    return r;
  }

  /** Binary search for the region containing `addr` (or ending exactly at it). */
  #find(addr: number): GuestRegion | undefined {
    const rs = this.regions;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid]!;
      if (addr < r.guestBase) hi = mid - 1;
      else if (addr > r.guestEnd) lo = mid + 1;
      else if (addr === r.guestEnd && mid + 1 < rs.length && rs[mid + 1]!.guestBase === addr) {
        lo = mid + 1; // an adjacent region starts here: prefer it
      } else return r;
    }
    return undefined;
  }

  /** @inheritdoc */
  check(addr: number, len: number, access: AccessKind = "read"): boolean {
    // NaN and negative values fail the comparisons below; no allocation.
    if (!(addr >= 0 && len >= 0 && len <= MAX_ACCESS_LENGTH) || addr !== Math.floor(addr))
      return false;
    const one = this.regionOf(addr, len);
    if (one !== undefined) return !(access === "write" && one.readOnly && len > 0);
    // Slow path: the range may continue into adjacent regions. Each step moves to a new
    // region, so the loop runs at most regions.length times.
    let a = addr;
    let remaining = len;
    for (;;) {
      const r = this.#find(a);
      if (r === undefined) return false;
      if (access === "write" && r.readOnly) return false;
      const avail = r.guestEnd - a;
      if (remaining <= avail) return true;
      if (avail === 0) return false; // a hole follows this region
      remaining -= avail;
      a = r.guestEnd;
    }
  }

  #at(addr: number, len: number, access: AccessKind): GuestRegion {
    const r = this.regionOf(addr, len);
    if (r === undefined || !(addr >= 0) || addr !== Math.floor(addr)) {
      throw this.#fault(addr, len);
    }
    if (access === "write" && r.readOnly) throw new GuestMemoryError("read-only", addr, len);
    return r;
  }

  #fault(addr: number, len: number): GuestMemoryError {
    if (this.check(addr, len)) return new GuestMemoryError("cross-region", addr, len);
    return new GuestMemoryError("out-of-bounds", addr, len);
  }

  /** @inheritdoc */
  readU8(addr: number): number {
    const r = this.#at(addr, 1, "read");
    return r.view.getUint8(addr - r.guestBase);
  }
  /** @inheritdoc */
  readU16(addr: number): number {
    const r = this.#at(addr, 2, "read");
    return r.view.getUint16(addr - r.guestBase, true);
  }
  /** @inheritdoc */
  readU32(addr: number): number {
    const r = this.#at(addr, 4, "read");
    return r.view.getUint32(addr - r.guestBase, true);
  }
  /** @inheritdoc */
  readU64(addr: number): bigint {
    const r = this.#at(addr, 8, "read");
    return r.view.getBigUint64(addr - r.guestBase, true);
  }
  /** @inheritdoc */
  writeU8(addr: number, value: number): void {
    const r = this.#at(addr, 1, "write");
    r.view.setUint8(addr - r.guestBase, value);
  }
  /** @inheritdoc */
  writeU16(addr: number, value: number): void {
    const r = this.#at(addr, 2, "write");
    r.view.setUint16(addr - r.guestBase, value, true);
  }
  /** @inheritdoc */
  writeU32(addr: number, value: number): void {
    const r = this.#at(addr, 4, "write");
    r.view.setUint32(addr - r.guestBase, value, true);
  }
  /** @inheritdoc */
  writeU64(addr: number, value: bigint): void {
    const r = this.#at(addr, 8, "write");
    r.view.setBigUint64(addr - r.guestBase, BigInt.asUintN(64, value), true);
  }

  /** @inheritdoc */
  read(addr: number, dst: Uint8Array): void {
    this.#span(addr, dst.length, "read", dst, 0);
  }
  /** @inheritdoc */
  write(addr: number, src: Uint8Array): void {
    this.#span(addr, src.length, "write", src, 1);
  }
  /** @inheritdoc */
  fill(addr: number, len: number, byte: number): void {
    checkHostArgs(addr, len);
    this.#span(addr, len, "write", undefined, 2, byte);
  }

  /** Copy/fill across adjacent regions after checking the whole range first (all or nothing). */
  #span(
    addr: number,
    len: number,
    access: AccessKind,
    data: Uint8Array | undefined,
    op: 0 | 1 | 2,
    byte = 0,
  ): void {
    const r0 = this.regionOf(addr, len);
    if (r0 !== undefined && addr >= 0 && addr === Math.floor(addr)) {
      if (access === "write" && r0.readOnly) throw new GuestMemoryError("read-only", addr, len);
      spanOp(r0, addr - r0.guestBase, len, data, 0, op, byte);
      return;
    }
    if (!this.check(addr, len, access)) {
      if (this.check(addr, len, "read")) throw new GuestMemoryError("read-only", addr, len);
      throw new GuestMemoryError("out-of-bounds", addr, len);
    }
    let a = addr;
    let done = 0;
    while (done < len) {
      const r = this.#find(a)!;
      const n = Math.min(len - done, r.guestEnd - a);
      spanOp(r, a - r.guestBase, n, data, done, op, byte);
      done += n;
      a += n;
    }
  }

  /** @inheritdoc */
  slice(addr: number, len: number, access: AccessKind = "read"): Uint8Array {
    checkHostArgs(addr, len);
    const r = this.#at(addr, len, access);
    return new Uint8Array(r.buffer, r.byteOffset + (addr - r.guestBase), len);
  }
  /** @inheritdoc */
  dataView(addr: number, len: number, access: AccessKind = "read"): DataView {
    checkHostArgs(addr, len);
    const r = this.#at(addr, len, access);
    return new DataView(r.buffer, r.byteOffset + (addr - r.guestBase), len);
  }
  /** @inheritdoc */
  u16View(addr: number, count: number, access: AccessKind = "read"): Uint16Array {
    checkHostArgs(addr, count * 2);
    if (addr % 2 !== 0)
      throw new GuestMemoryError("misaligned", addr, count * 2, "needs 2-byte alignment");
    const r = this.#at(addr, count * 2, access);
    return new Uint16Array(r.buffer, r.byteOffset + (addr - r.guestBase), count);
  }
  /** @inheritdoc */
  u32View(addr: number, count: number, access: AccessKind = "read"): Uint32Array {
    checkHostArgs(addr, count * 4);
    if (addr % 4 !== 0)
      throw new GuestMemoryError("misaligned", addr, count * 4, "needs 4-byte alignment");
    const r = this.#at(addr, count * 4, access);
    return new Uint32Array(r.buffer, r.byteOffset + (addr - r.guestBase), count);
  }
  /** @inheritdoc */
  sg(addr: number, len: number, out: Uint8Array[] = [], access: AccessKind = "read"): Uint8Array[] {
    checkHostArgs(addr, len);
    out.length = 0;
    if (!this.check(addr, len, access)) {
      if (access === "write" && this.check(addr, len, "read")) {
        throw new GuestMemoryError("read-only", addr, len);
      }
      throw new GuestMemoryError("out-of-bounds", addr, len);
    }
    let a = addr;
    let done = 0;
    while (done < len) {
      const r = this.#find(a)!;
      const n = Math.min(len - done, r.guestEnd - a);
      out.push(new Uint8Array(r.buffer, r.byteOffset + (a - r.guestBase), n));
      done += n;
      a += n;
    }
    return out;
  }
}

function spanOp(
  r: GuestRegion,
  off: number,
  n: number,
  data: Uint8Array | undefined,
  dataOff: number,
  op: 0 | 1 | 2,
  byte: number,
): void {
  if (op === 0) data!.set(r.bytes.subarray(off, off + n), dataOff);
  else if (op === 1) r.bytes.set(data!.subarray(dataOff, dataOff + n), off);
  else r.bytes.fill(byte, off, off + n);
}

function buildRegion(r: GuestRegionOptions, i: number): GuestRegion {
  const at = `regions[${i}]`;
  if (r === null || typeof r !== "object") throw new TypeError(`${at} must be an object`);
  const { guestBase, size, buffer } = r;
  const byteOffset = r.byteOffset ?? 0;
  if (!(buffer instanceof ArrayBuffer || buffer instanceof SharedArrayBuffer)) {
    throw new TypeError(`${at}.buffer must be an ArrayBuffer or SharedArrayBuffer`);
  }
  if (!Number.isSafeInteger(guestBase) || guestBase < 0) {
    throw new RangeError(`${at}.guestBase must be a non-negative safe integer, got ${guestBase}`);
  }
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`${at}.size must be a positive integer, got ${size}`);
  }
  if (guestBase + size > ADDRESS_LIMIT) {
    throw new RangeError(`${at}: guestBase + size must not exceed 2^53`);
  }
  if (
    !Number.isSafeInteger(byteOffset) ||
    byteOffset < 0 ||
    byteOffset + size > buffer.byteLength
  ) {
    throw new RangeError(
      `${at}.byteOffset + size must lie inside the buffer (byteOffset ${byteOffset}, size ${size}, buffer ${buffer.byteLength})`,
    );
  }
  // Guest alignment must equal backing alignment, or typed views of aligned guest
  // structures (and Atomics on them) would be impossible.
  if ((guestBase - byteOffset) % 8 !== 0) {
    throw new RangeError(`${at}: guestBase and byteOffset must be congruent modulo 8`);
  }
  return {
    guestBase,
    size,
    guestEnd: guestBase + size,
    buffer,
    byteOffset,
    readOnly: r.readOnly === true,
    bytes: new Uint8Array(buffer, byteOffset, size),
    view: new DataView(buffer, byteOffset, size),
  };
}

/** Options of {@link createGuestMemory}. */
export interface CreateGuestMemoryOptions {
  /** Size in bytes. */
  readonly size: number;
  /** Back it with a SharedArrayBuffer (default true), so other threads can share it. */
  readonly shared?: boolean;
  /** Guest-physical address of the first byte (default 0). */
  readonly guestBase?: number;
}

/**
 * A one-region guest memory, zero-filled.
 *
 * @example
 * ```ts
 * const mem = createGuestMemory({ size: 1 << 20 });
 * ```
 */
export function createGuestMemory(options: CreateGuestMemoryOptions): GuestMemoryMap {
  const { size, shared = true, guestBase = 0 } = options;
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`options.size must be a positive integer, got ${size}`);
  }
  const buffer = shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
  // Keep guest alignment equal to buffer alignment for any guestBase.
  const byteOffset = 0;
  if (guestBase % 8 !== 0) {
    throw new RangeError(`options.guestBase must be a multiple of 8, got ${guestBase}`);
  }
  return new GuestMemoryMap([{ guestBase, size, buffer, byteOffset }]);
}

/**
 * Turn a guest's 64-bit value (two 32-bit halves) into an address number: `hi * 2^32 + lo`.
 * Values ≥ 2^53 lose precision but stay ≥ 2^53, which no region reaches, so the result is
 * safe to bounds-check.
 */
export function u64ToAddress(lo: number, hi: number): number {
  return (hi >>> 0) * 4294967296 + (lo >>> 0);
}

/**
 * Brand a checked number as a {@link GuestAddress}.
 * @throws RangeError if `addr` is not a safe integer in [0, 2^53).
 */
export function guestAddress(addr: number): GuestAddress {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new RangeError(`addr must be a non-negative safe integer, got ${addr}`);
  }
  return addr as GuestAddress;
}
