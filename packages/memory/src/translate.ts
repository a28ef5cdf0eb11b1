import { GuestMemoryError } from "./errors.js";
import { ADDRESS_LIMIT, addressError, hex, isAddress, isLength, lengthError } from "./limits.js";
import type { AccessKind, GuestMemory } from "./types.js";

/** Result of translating the start of an IO-virtual range. */
export interface Translation {
  /** Guest-physical address the IO-virtual address maps to. */
  readonly gpa: number;
  /**
   * How many bytes from there map contiguously with the requested permission: at least 1 and
   * at most the requested length (0 only when 0 was asked).
   */
  readonly len: number;
}

/**
 * An IOMMU translation hook: translate the longest prefix of `[iova, iova + len)` that maps
 * contiguously to guest-physical memory with permission `access`, or return null for a fault
 * (unmapped address, missing permission, invalid number).
 *
 * Implementer contract: never throw, whatever the numbers (they come from the guest); when
 * `len > 0` a non-null result has `1 ≤ len ≤ requested`; when `len` is 0 return `{ gpa, len: 0 }`
 * if `iova` is inside a window or exactly at its end. The result may be a reused object, so
 * callers read its fields before calling the hook again.
 */
export type TranslateFn = (iova: number, len: number, access: AccessKind) => Translation | null;

/** Permissions of a DMA window: device reads ("r"), device writes ("w"), or both. */
export type WindowAccess = "r" | "w" | "rw";

/** One DMA window: IO-virtual `[iova, iova + size)` maps to guest-physical `[gpa, gpa + size)`. */
export interface DmaWindow {
  /** IO-virtual address the device uses: a safe integer ≥ 0. */
  readonly iova: number;
  /** Guest-physical address it maps to; `iova - gpa` must be a multiple of 8 (alignment is kept). */
  readonly gpa: number;
  /** Size in bytes: > 0, with `iova + size` and `gpa + size` at most 2^53. */
  readonly size: number;
  /** What the device may do there. */
  readonly access: WindowAccess;
}

interface MutableTranslation {
  gpa: number;
  len: number;
}

/**
 * A table of DMA windows (an IOMMU's mappings for one device) and its translation hook.
 * Windows are validated and must not overlap in IOVA space; they may overlap in guest-physical
 * space (two IOVAs aliasing one page). {@link DmaWindows.translate} binary-searches the table and
 * allocates nothing: it returns one reused result object.
 *
 * `map` and `unmap` change the table at run time, as a guest programming a virtual IOMMU would.
 * Views handed out before an `unmap` stay usable (JavaScript cannot revoke them), so a host
 * that revokes access must also drop the views it gave the device.
 *
 * @example
 * ```ts
 * import { createGuestMemory, DmaWindows, TranslatedMemory } from "@virtio-ts/memory";
 *
 * const ram = createGuestMemory({ size: 1 << 20 });
 * const iommu = new DmaWindows([{ iova: 0, gpa: 0x40000, size: 0x1000, access: "r" }]);
 * const dev = new TranslatedMemory(ram, iommu.translate);
 * iommu.map({ iova: 0x1000, gpa: 0x80000, size: 0x1000, access: "w" });
 * dev.writeU8(0x1000, 1); // lands at guest-physical 0x80000
 * iommu.unmap(0x1000); // from now on: GuestMemoryError "translation-fault"
 * ```
 */
export class DmaWindows {
  /** The windows sorted by `iova`; replaced (not mutated) by `map` and `unmap`. */
  #windows: readonly DmaWindow[] = [];
  readonly #result: MutableTranslation = { gpa: 0, len: 0 };

  /**
   * @param windows - the initial table, in any order.
   * @throws TypeError if `windows` is not an array or a window not an object; RangeError naming
   *   the window (`windows[2].size`) for an invalid number or access, or an overlap.
   */
  constructor(windows: readonly DmaWindow[] = []) {
    if (!Array.isArray(windows)) throw new TypeError("windows must be an array of DMA windows");
    const ws = windows.map((w: DmaWindow, i) => ({ at: i, w: checkWindow(w, `windows[${i}]`) }));
    ws.sort((a, b) => a.w.iova - b.w.iova);
    for (let i = 1; i < ws.length; i++) {
      const prev = ws[i - 1]!;
      const cur = ws[i]!;
      if (cur.w.iova < prev.w.iova + prev.w.size) {
        throw new RangeError(
          `windows[${cur.at}] (iova ${hex(cur.w.iova)}) overlaps windows[${prev.at}] (iova ${hex(prev.w.iova)}, size ${hex(prev.w.size)})`,
        );
      }
    }
    this.#windows = Object.freeze(ws.map((x) => x.w));
  }

  /** The current windows, sorted by `iova` (a frozen snapshot). */
  get windows(): readonly DmaWindow[] {
    return this.#windows;
  }

  /**
   * Add a window.
   * @param window - the new window; it must not overlap an existing one in IOVA space.
   * @throws RangeError naming `window` for an invalid number or an overlap.
   */
  map(window: DmaWindow): void {
    const w = checkWindow(window, "window");
    const ws = this.#windows;
    let i = 0;
    while (i < ws.length && ws[i]!.iova < w.iova) i++;
    const prev = ws[i - 1];
    const next = ws[i];
    if (
      (prev !== undefined && w.iova < prev.iova + prev.size) ||
      (next !== undefined && next.iova < w.iova + w.size)
    ) {
      throw new RangeError(`window (iova ${hex(w.iova)}) overlaps an existing window`);
    }
    this.#windows = Object.freeze([...ws.slice(0, i), w, ...ws.slice(i)]);
  }

  /**
   * Remove the window that starts at `iova`.
   * @param iova - the `iova` the window was mapped with.
   * @returns whether a window was removed.
   */
  unmap(iova: number): boolean {
    const i = this.#windows.findIndex((w) => w.iova === iova);
    if (i < 0) return false;
    this.#windows = Object.freeze(this.#windows.filter((_, j) => j !== i));
    return true;
  }

  /**
   * The translation hook ({@link TranslateFn}) over the current table, bound to this object so
   * it can be passed around. Allocates nothing: the result object is reused.
   */
  readonly translate: TranslateFn = (iova, len, access) => {
    const ws = this.#windows;
    if (!(iova >= 0 && len >= 0) || !Number.isInteger(iova)) return null;
    // Largest window with w.iova ≤ iova; NaN and negative inputs were rejected above.
    let lo = 0;
    let hi = ws.length - 1;
    if (hi < 0 || iova < ws[0]!.iova) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (ws[mid]!.iova <= iova) lo = mid;
      else hi = mid - 1;
    }
    const w = ws[lo]!;
    const off = iova - w.iova;
    // A zero-length range may sit exactly at a window's end; anything else must start inside.
    if (off > w.size || (off === w.size && len > 0)) return null;
    if (access === "read" ? w.access === "w" : w.access === "r") return null;
    const r = this.#result;
    r.gpa = w.gpa + off;
    r.len = Math.min(len, w.size - off);
    return r;
  };
}

function checkWindow(w: DmaWindow, at: string): DmaWindow {
  if (w === null || typeof w !== "object") throw new TypeError(`${at} must be an object`);
  const { iova, gpa, size, access } = w;
  for (const [k, v] of [
    ["iova", iova],
    ["gpa", gpa],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new RangeError(`${at}.${k} must be a safe integer ≥ 0, got ${v}`);
    }
  }
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`${at}.size must be an integer > 0, got ${size}`);
  }
  // Exact subtractions: all values are safe integers.
  if (size > ADDRESS_LIMIT - iova || size > ADDRESS_LIMIT - gpa) {
    throw new RangeError(`${at}.size: iova + size and gpa + size must not exceed 2^53`);
  }
  if ((iova - gpa) % 8 !== 0) {
    throw new RangeError(`${at}.iova and ${at}.gpa must be congruent modulo 8 (alignment is kept)`);
  }
  if (access !== "r" && access !== "w" && access !== "rw") {
    throw new RangeError(`${at}.access must be "r", "w" or "rw", got ${String(access)}`);
  }
  return Object.freeze({ iova, gpa, size, access });
}

/**
 * A translation hook over a fixed table of DMA windows: shorthand for
 * `new DmaWindows(windows).translate`.
 *
 * @param windows - the windows, in any order.
 * @throws TypeError or RangeError naming the offending window, as {@link DmaWindows}.
 */
export function dmaWindows(windows: readonly DmaWindow[]): TranslateFn {
  return new DmaWindows(windows).translate;
}

/**
 * Guest memory as a device behind an IOMMU sees it: every address the device uses is
 * IO-virtual (an IOVA) and is translated by a {@link TranslateFn} before it reaches the
 * underlying {@link GuestMemory}. A device given a `TranslatedMemory` reaches nothing outside
 * its windows, and only with the permission each window grants.
 *
 * This is how virtio-ts confines a device:
 * - **VIRTIO_F_ACCESS_PLATFORM** (VIRTIO 1.3 §6.1): when it is negotiated the device accesses
 *   memory through the platform's translation, so addresses in descriptors and queue registers
 *   are IOVAs; give the device model a `TranslatedMemory` instead of the raw guest memory.
 * - **Pass-through**: a back-end that owns a device directly gets only the windows it is meant to
 *   reach (a ring, its buffers), e.g. read-only windows for data it may only transmit.
 *
 * Errors: a missing window or permission is {@link GuestMemoryError} "translation-fault"; a
 * scalar or view needing two windows is "cross-region"; a non-integer or negative address is a
 * `RangeError`. Failures of the underlying memory (a window onto unbacked or read-only
 * guest-physical memory) keep their code but carry the IOVA, with the guest-physical address in
 * the message. Ranges may span several windows for `read`, `write`, `fill`, `check` and `sg`;
 * views must lie in one window. Every operation checks the whole range before touching memory.
 *
 * @example
 * ```ts
 * import { createGuestMemory, dmaWindows, GuestMemoryError, TranslatedMemory } from "@virtio-ts/memory";
 *
 * const ram = createGuestMemory({ size: 1 << 20 });
 * // VIRTIO_F_ACCESS_PLATFORM negotiated: the device sees its ring at IOVA 0 and may read,
 * // but not write, one 64 KiB data window at IOVA 0x10000.
 * const dev = new TranslatedMemory(
 *   ram,
 *   dmaWindows([
 *     { iova: 0x0, gpa: 0x8000, size: 0x1000, access: "rw" },
 *     { iova: 0x10000, gpa: 0x40000, size: 0x10000, access: "r" },
 *   ]),
 * );
 * dev.readU32(0x10010); // reads guest-physical 0x40010
 * try {
 *   dev.writeU8(0x10010, 0); // read-only window
 * } catch (e) {
 *   if (e instanceof GuestMemoryError) console.log(e.code); // "translation-fault"
 * }
 * ```
 */
export class TranslatedMemory implements GuestMemory {
  /** The memory behind the translation (guest-physical). */
  readonly inner: GuestMemory;
  /** The translation hook. */
  readonly translate: TranslateFn;
  /** Reused by `sg` to collect the inner memory's pieces of one window. */
  readonly #scratch: Uint8Array[] = [];

  /**
   * @param inner - memory behind the IOMMU, addressed by guest-physical addresses.
   * @param translate - the translation hook, e.g. {@link dmaWindows} or {@link DmaWindows.translate}.
   * @throws TypeError if `translate` is not a function.
   */
  constructor(inner: GuestMemory, translate: TranslateFn) {
    if (inner === null || typeof inner !== "object")
      throw new TypeError("inner must be a GuestMemory");
    if (typeof translate !== "function") throw new TypeError("translate must be a function");
    this.inner = inner;
    this.translate = translate;
  }

  /** {@inheritDoc GuestMemory.shared} */
  get shared(): boolean {
    return this.inner.shared;
  }

  /** Translate a range that must map through one window; returns its guest-physical address. */
  #one(addr: number, len: number, access: AccessKind): number {
    const t = this.translate(addr, len, access);
    if (t !== null && t.len >= len && isAddress(addr)) return t.gpa;
    throw this.#translationError(addr, len, access, true);
  }

  /** Does every byte of `[addr, addr + len)` translate for `access`? (Inner memory not consulted.) */
  #translates(addr: number, len: number, access: AccessKind): boolean {
    let a = addr;
    let remaining = len;
    for (;;) {
      const t = this.translate(a, remaining, access);
      if (t === null) return false;
      const n = t.len;
      if (!(n > 0 || (n === 0 && remaining === 0))) return false; // hook broke its contract
      if (n >= remaining) return true;
      remaining -= n;
      a += n;
    }
  }

  #translationError(addr: number, len: number, access: AccessKind, single: boolean): Error {
    if (!isAddress(addr)) return addressError("addr", addr);
    if (!this.#translates(addr, len, access)) {
      return new GuestMemoryError("translation-fault", addr, len, `no ${access} mapping`);
    }
    return single
      ? new GuestMemoryError("cross-region", addr, len, "the access must lie in one DMA window")
      : this.#innerError(addr, len, access);
  }

  /** After translation succeeded: the error of the first piece the inner memory refuses. */
  #innerError(addr: number, len: number, access: AccessKind): GuestMemoryError {
    let a = addr;
    let remaining = len;
    for (;;) {
      const t = this.translate(a, remaining, access)!;
      const gpa = t.gpa;
      const n = Math.min(t.len, remaining);
      if (!this.inner.check(gpa, n, access)) {
        const code =
          access === "write" && this.inner.check(gpa, n, "read") ? "read-only" : "out-of-bounds";
        return new GuestMemoryError(code, addr, len, `at guest-physical ${hex(gpa)}`);
      }
      remaining -= n;
      a += n;
      // Unreachable unless the inner memory's check and accessors disagree.
      if (remaining <= 0) return new GuestMemoryError("out-of-bounds", addr, len);
    }
  }

  /** Report an inner failure with the IOVA the caller used. */
  #rethrow(e: unknown, addr: number, len: number, gpa: number): unknown {
    if (!(e instanceof GuestMemoryError)) return e;
    return new GuestMemoryError(e.code, addr, len, `at guest-physical ${hex(gpa)}`);
  }

  /**
   * Is `[addr, addr + len)` accessible for `access`? Every piece must translate with that
   * permission and be accessible in the inner memory. Never throws; allocates nothing when the
   * hook does not (as {@link DmaWindows.translate}).
   * @param addr - first IO-virtual address
   * @param len - length in bytes (may be 0: valid inside a window or exactly at its end)
   * @param access - "read" (default) or "write"
   * @returns true when a `read`/`write` of the range would succeed
   */
  check(addr: number, len: number, access: AccessKind = "read"): boolean {
    if (!isLength(len) || !isAddress(addr)) return false;
    let a = addr;
    let remaining = len;
    for (;;) {
      const t = this.translate(a, remaining, access);
      if (t === null) return false;
      const gpa = t.gpa;
      const n = Math.min(t.len, remaining);
      if (!(n > 0 || (n === 0 && remaining === 0))) return false;
      if (!this.inner.check(gpa, n, access)) return false;
      remaining -= n;
      if (remaining === 0) return true;
      a += n;
    }
  }

  /** {@inheritDoc GuestMemory.readU8} */
  readU8(addr: number): number {
    const gpa = this.#one(addr, 1, "read");
    try {
      return this.inner.readU8(gpa);
    } catch (e) {
      throw this.#rethrow(e, addr, 1, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.readU16} */
  readU16(addr: number): number {
    const gpa = this.#one(addr, 2, "read");
    try {
      return this.inner.readU16(gpa);
    } catch (e) {
      throw this.#rethrow(e, addr, 2, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.readU32} */
  readU32(addr: number): number {
    const gpa = this.#one(addr, 4, "read");
    try {
      return this.inner.readU32(gpa);
    } catch (e) {
      throw this.#rethrow(e, addr, 4, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.readU64} */
  readU64(addr: number): bigint {
    const gpa = this.#one(addr, 8, "read");
    try {
      return this.inner.readU64(gpa);
    } catch (e) {
      throw this.#rethrow(e, addr, 8, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.writeU8} */
  writeU8(addr: number, value: number): void {
    const gpa = this.#one(addr, 1, "write");
    try {
      this.inner.writeU8(gpa, value);
    } catch (e) {
      throw this.#rethrow(e, addr, 1, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.writeU16} */
  writeU16(addr: number, value: number): void {
    const gpa = this.#one(addr, 2, "write");
    try {
      this.inner.writeU16(gpa, value);
    } catch (e) {
      throw this.#rethrow(e, addr, 2, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.writeU32} */
  writeU32(addr: number, value: number): void {
    const gpa = this.#one(addr, 4, "write");
    try {
      this.inner.writeU32(gpa, value);
    } catch (e) {
      throw this.#rethrow(e, addr, 4, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.writeU64} */
  writeU64(addr: number, value: bigint): void {
    const gpa = this.#one(addr, 8, "write");
    try {
      this.inner.writeU64(gpa, value);
    } catch (e) {
      throw this.#rethrow(e, addr, 8, gpa);
    }
  }

  /** {@inheritDoc GuestMemory.read} */
  read(addr: number, dst: Uint8Array): void {
    this.#copy(addr, dst.length, "read", dst, 0);
  }
  /** {@inheritDoc GuestMemory.write} */
  write(addr: number, src: Uint8Array): void {
    this.#copy(addr, src.length, "write", src, 0);
  }
  /** {@inheritDoc GuestMemory.fill} */
  fill(addr: number, len: number, byte: number): void {
    if (!isLength(len)) throw lengthError("len", len);
    this.#copy(addr, len, "write", undefined, byte);
  }

  /** Copy or fill window by window, after checking the whole range (all or nothing). */
  #copy(addr: number, len: number, access: AccessKind, data: Uint8Array | undefined, byte: number) {
    const t = this.translate(addr, len, access);
    if (t !== null && t.len >= len && isAddress(addr)) {
      // One window: the inner memory checks and copies all or nothing itself.
      const gpa = t.gpa;
      try {
        if (data === undefined) this.inner.fill(gpa, len, byte);
        else if (access === "read") this.inner.read(gpa, data);
        else this.inner.write(gpa, data);
      } catch (e) {
        throw this.#rethrow(e, addr, len, gpa);
      }
      return;
    }
    if (!this.check(addr, len, access)) throw this.#translationError(addr, len, access, false);
    let a = addr;
    let done = 0;
    while (done < len) {
      const p = this.translate(a, len - done, access)!;
      const gpa = p.gpa;
      const n = Math.min(p.len, len - done);
      if (data === undefined) this.inner.fill(gpa, n, byte);
      else if (access === "read") this.inner.read(gpa, data.subarray(done, done + n));
      else this.inner.write(gpa, data.subarray(done, done + n));
      done += n;
      a += n;
    }
  }

  /** {@inheritDoc GuestMemory.slice} */
  slice(addr: number, len: number, access: AccessKind = "read"): Uint8Array {
    if (!isLength(len)) throw lengthError("len", len);
    const gpa = this.#one(addr, len, access);
    try {
      return this.inner.slice(gpa, len, access);
    } catch (e) {
      throw this.#rethrow(e, addr, len, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.dataView} */
  dataView(addr: number, len: number, access: AccessKind = "read"): DataView {
    if (!isLength(len)) throw lengthError("len", len);
    const gpa = this.#one(addr, len, access);
    try {
      return this.inner.dataView(gpa, len, access);
    } catch (e) {
      throw this.#rethrow(e, addr, len, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.u16View} */
  u16View(addr: number, count: number, access: AccessKind = "read"): Uint16Array {
    const gpa = this.#viewStart(addr, count, access, 2);
    try {
      return this.inner.u16View(gpa, count, access);
    } catch (e) {
      throw this.#rethrow(e, addr, count * 2, gpa);
    }
  }
  /** {@inheritDoc GuestMemory.u32View} */
  u32View(addr: number, count: number, access: AccessKind = "read"): Uint32Array {
    const gpa = this.#viewStart(addr, count, access, 4);
    try {
      return this.inner.u32View(gpa, count, access);
    } catch (e) {
      throw this.#rethrow(e, addr, count * 4, gpa);
    }
  }

  #viewStart(addr: number, count: number, access: AccessKind, unit: number): number {
    if (!isLength(count * unit) || !Number.isInteger(count))
      throw lengthError("count", count, unit);
    if (isAddress(addr) && addr % unit !== 0) {
      throw new GuestMemoryError("misaligned", addr, count * unit, `needs ${unit}-byte alignment`);
    }
    return this.#one(addr, count * unit, access);
  }

  /** {@inheritDoc GuestMemory.sg} */
  sg(addr: number, len: number, out: Uint8Array[] = [], access: AccessKind = "read"): Uint8Array[] {
    if (!isLength(len)) throw lengthError("len", len);
    out.length = 0;
    if (!this.check(addr, len, access)) throw this.#translationError(addr, len, access, false);
    const pieces = this.#scratch;
    let a = addr;
    let done = 0;
    do {
      const t = this.translate(a, len - done, access)!;
      const gpa = t.gpa;
      const n = Math.min(t.len, len - done);
      this.inner.sg(gpa, n, pieces, access);
      for (let i = 0; i < pieces.length; i++) out.push(pieces[i]!);
      done += n;
      a += n;
    } while (done < len);
    pieces.length = 0;
    return out;
  }
}
