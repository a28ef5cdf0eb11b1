import { GuestMemoryError } from "./errors.js";
import { MAX_ACCESS_LENGTH } from "./guest-memory.js";
import type { AccessKind, GuestMemory } from "./types.js";

/** Result of translating the start of an IO-virtual range. */
export interface Translation {
  /** Guest-physical address the IO-virtual address maps to. */
  readonly gpa: number;
  /** How many bytes from there map contiguously (may be less than asked). */
  readonly len: number;
}

/**
 * An IOMMU: translate the longest contiguous prefix of `[iova, iova + len)` for `access`,
 * or return null for a fault (unmapped address or missing permission).
 *
 * Implementer contract: never throw for guest-supplied values; return a `len` > 0 when not null.
 */
export type TranslateFn = (iova: number, len: number, access: AccessKind) => Translation | null;

/** Permissions of a DMA window. */
export type WindowAccess = "r" | "w" | "rw";

/** One DMA window: IO-virtual `[iova, iova + size)` maps to guest-physical `[gpa, gpa + size)`. */
export interface DmaWindow {
  /** IO-virtual address the device uses. */
  readonly iova: number;
  /** Guest-physical address it maps to. */
  readonly gpa: number;
  /** Size in bytes. */
  readonly size: number;
  /** What the device may do there. */
  readonly access: WindowAccess;
}

/**
 * A translation hook from a fixed table of DMA windows (validated, non-overlapping in IOVA
 * space). Lookup is a binary search and does not allocate on a fault.
 *
 * @throws RangeError naming the offending window.
 */
export function dmaWindows(windows: readonly DmaWindow[]): TranslateFn {
  const ws = windows.map((w, i) => {
    const at = `windows[${i}]`;
    for (const k of ["iova", "gpa", "size"] as const) {
      if (!Number.isSafeInteger(w[k]) || w[k] < 0) {
        throw new RangeError(`${at}.${k} must be a non-negative safe integer, got ${w[k]}`);
      }
    }
    if (w.size === 0) throw new RangeError(`${at}.size must be positive`);
    if (w.access !== "r" && w.access !== "w" && w.access !== "rw") {
      throw new RangeError(`${at}.access must be "r", "w" or "rw", got ${String(w.access)}`);
    }
    return { ...w };
  });
  ws.sort((a, b) => a.iova - b.iova);
  for (let i = 1; i < ws.length; i++) {
    if (ws[i]!.iova < ws[i - 1]!.iova + ws[i - 1]!.size) {
      throw new RangeError(`DMA windows overlap at iova 0x${ws[i]!.iova.toString(16)}`);
    }
  }
  return (iova, len, access) => {
    let lo = 0;
    let hi = ws.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const w = ws[mid]!;
      if (iova < w.iova) hi = mid - 1;
      else if (iova >= w.iova + w.size) lo = mid + 1;
      else {
        if (access === "read" ? w.access === "w" : w.access === "r") return null;
        const off = iova - w.iova;
        return { gpa: w.gpa + off, len: Math.min(len, w.size - off) };
      }
    }
    return null;
  };
}

/**
 * Guest memory seen through an IOMMU or DMA windows: every address a device uses is IO-virtual
 * and is translated before it reaches the underlying {@link GuestMemory}. A device handed a
 * `TranslatedMemory` can reach nothing outside its windows — this is how
 * VIRTIO_F_ACCESS_PLATFORM (VIRTIO 1.3 §6.1) and pass-through confinement are modelled.
 *
 * Faults raise {@link GuestMemoryError} with code "translation-fault". Ranges may span several
 * windows for `read`, `write`, `fill` and `sg`; views (`slice`, `u16View`, …) must lie in one.
 *
 * @example
 * ```ts
 * const ram = createGuestMemory({ size: 1 << 20 });
 * // The device sees 64 KiB at IOVA 0, backed by guest-physical 0x40000, read-only.
 * const dev = new TranslatedMemory(ram, dmaWindows([{ iova: 0, gpa: 0x40000, size: 0x10000, access: "r" }]));
 * dev.readU32(0x10); // reads guest-physical 0x40010
 * ```
 */
export class TranslatedMemory implements GuestMemory {
  /** The memory behind the translation. */
  readonly inner: GuestMemory;
  /** The translation hook. */
  readonly translate: TranslateFn;

  /** @param inner memory behind the IOMMU; @param translate the translation hook. */
  constructor(inner: GuestMemory, translate: TranslateFn) {
    if (typeof translate !== "function") throw new TypeError("translate must be a function");
    this.inner = inner;
    this.translate = translate;
  }

  /** @inheritdoc */
  get shared(): boolean {
    return this.inner.shared;
  }

  /** Translate a range that must map contiguously; throws translation-fault otherwise. */
  #one(iova: number, len: number, access: AccessKind): number {
    if (!(iova >= 0) || iova !== Math.floor(iova))
      throw new GuestMemoryError("translation-fault", iova, len);
    const t = this.translate(iova, len, access);
    if (t === null || (t.len < len && len > 0)) {
      if (t !== null)
        throw new GuestMemoryError("cross-region", iova, len, "range spans DMA windows");
      throw new GuestMemoryError("translation-fault", iova, len);
    }
    return t.gpa;
  }

  /** @inheritdoc */
  check(addr: number, len: number, access: AccessKind = "read"): boolean {
    if (!(addr >= 0 && len >= 0 && len <= MAX_ACCESS_LENGTH) || addr !== Math.floor(addr))
      return false;
    let a = addr;
    let remaining = len;
    // Each step consumes at least one byte of a window; a zero-length range checks one point.
    do {
      const t = this.translate(a, remaining, access);
      if (
        t === null ||
        !(t.len > 0) ||
        !this.inner.check(t.gpa, Math.min(t.len, remaining), access)
      ) {
        return false;
      }
      const n = Math.min(t.len, remaining);
      remaining -= n;
      a += n;
    } while (remaining > 0);
    return true;
  }

  /** @inheritdoc */
  readU8(addr: number): number {
    return this.inner.readU8(this.#one(addr, 1, "read"));
  }
  /** @inheritdoc */
  readU16(addr: number): number {
    return this.inner.readU16(this.#one(addr, 2, "read"));
  }
  /** @inheritdoc */
  readU32(addr: number): number {
    return this.inner.readU32(this.#one(addr, 4, "read"));
  }
  /** @inheritdoc */
  readU64(addr: number): bigint {
    return this.inner.readU64(this.#one(addr, 8, "read"));
  }
  /** @inheritdoc */
  writeU8(addr: number, value: number): void {
    this.inner.writeU8(this.#one(addr, 1, "write"), value);
  }
  /** @inheritdoc */
  writeU16(addr: number, value: number): void {
    this.inner.writeU16(this.#one(addr, 2, "write"), value);
  }
  /** @inheritdoc */
  writeU32(addr: number, value: number): void {
    this.inner.writeU32(this.#one(addr, 4, "write"), value);
  }
  /** @inheritdoc */
  writeU64(addr: number, value: bigint): void {
    this.inner.writeU64(this.#one(addr, 8, "write"), value);
  }

  /** Visit each translated piece after checking the whole range (all or nothing). */
  #pieces(
    addr: number,
    len: number,
    access: AccessKind,
    visit: (gpa: number, n: number, done: number) => void,
  ): void {
    if (!this.check(addr, len, access)) throw new GuestMemoryError("translation-fault", addr, len);
    let a = addr;
    let done = 0;
    while (done < len) {
      const t = this.translate(a, len - done, access)!;
      const n = Math.min(t.len, len - done);
      visit(t.gpa, n, done);
      done += n;
      a += n;
    }
  }

  /** @inheritdoc */
  read(addr: number, dst: Uint8Array): void {
    this.#pieces(addr, dst.length, "read", (gpa, n, done) =>
      this.inner.read(gpa, dst.subarray(done, done + n)),
    );
  }
  /** @inheritdoc */
  write(addr: number, src: Uint8Array): void {
    this.#pieces(addr, src.length, "write", (gpa, n, done) =>
      this.inner.write(gpa, src.subarray(done, done + n)),
    );
  }
  /** @inheritdoc */
  fill(addr: number, len: number, byte: number): void {
    this.#pieces(addr, len, "write", (gpa, n) => this.inner.fill(gpa, n, byte));
  }
  /** @inheritdoc */
  slice(addr: number, len: number, access: AccessKind = "read"): Uint8Array {
    return this.inner.slice(this.#one(addr, len, access), len, access);
  }
  /** @inheritdoc */
  dataView(addr: number, len: number, access: AccessKind = "read"): DataView {
    return this.inner.dataView(this.#one(addr, len, access), len, access);
  }
  /** @inheritdoc */
  u16View(addr: number, count: number, access: AccessKind = "read"): Uint16Array {
    if (addr % 2 !== 0) throw new GuestMemoryError("misaligned", addr, count * 2);
    return this.inner.u16View(this.#one(addr, count * 2, access), count, access);
  }
  /** @inheritdoc */
  u32View(addr: number, count: number, access: AccessKind = "read"): Uint32Array {
    if (addr % 4 !== 0) throw new GuestMemoryError("misaligned", addr, count * 4);
    return this.inner.u32View(this.#one(addr, count * 4, access), count, access);
  }
  /** @inheritdoc */
  sg(addr: number, len: number, out: Uint8Array[] = [], access: AccessKind = "read"): Uint8Array[] {
    out.length = 0;
    const pieces: Uint8Array[] = [];
    this.#pieces(addr, len, access, (gpa, n) => {
      for (const v of this.inner.sg(gpa, n, pieces, access)) out.push(v);
    });
    return out;
  }
}
