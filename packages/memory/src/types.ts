/**
 * A guest-physical (or, behind a translation layer, IO-virtual) address.
 *
 * Representation: a non-negative integer JavaScript `number`.
 * - Addresses the *host* chooses are safe integers in [0, 2^53); {@link guestAddress} checks
 *   and brands one.
 * - A 64-bit address read from *guest* memory (a descriptor's `le64 addr`) is converted with
 *   {@link u64ToAddress}: `hi * 2^32 + lo`. Values ≥ 2^53 may round but always stay ≥ 2^53,
 *   and every region ends at or below 2^53, so such an address is simply unmapped
 *   ({@link GuestMemoryError} "out-of-bounds"), never a `RangeError`.
 * - Bounds are compared as `len ≤ end - addr` (an exact subtraction) with `len ≤ 2^32`, so
 *   neither rounding nor 64-bit wrap-around can bring a range back into mapped memory.
 * - Negative, fractional or non-finite numbers cannot come from a guest; accessors reject them
 *   with a `RangeError` naming `addr` (`check` answers false).
 *
 * The brand keeps host code from passing a length or an index where an address is meant. The
 * {@link GuestMemory} methods take plain numbers, because ring code computes addresses.
 */
export type GuestAddress = number & {
  /** Type-level brand only; no such property exists at run time. */
  readonly __brand: "GuestAddress";
};

/**
 * Direction of an access, seen from the code holding the {@link GuestMemory}: "read" takes
 * bytes out of guest memory, "write" puts bytes in. Checked against read-only regions and
 * against the permission of IOMMU / DMA windows.
 */
export type AccessKind = "read" | "write";

/**
 * A half-open range of guest addresses `[start, end)`, see {@link GuestMemory.stableRange}.
 */
export interface StableRange {
  /** First address of the range: an integer ≥ 0. */
  readonly start: number;
  /** One past the last address: an integer with `start ≤ end ≤ 2^53`. */
  readonly end: number;
}

/**
 * The consumer-side interface every device and driver uses to reach guest memory; it hides how
 * memory is provided. Implementations: {@link GuestMemoryMap} (regions over
 * (Shared)ArrayBuffers) and {@link TranslatedMemory} (IOMMU / DMA windows in front of another
 * GuestMemory).
 *
 * Guest memory is written by the guest at any time (and by other threads when `shared`):
 * treat every value read from it as untrusted, and read each field once.
 *
 * Ranges: `[addr, addr + len)` with `addr` an integer ≥ 0 (see {@link GuestAddress}) and `len`
 * an integer in [0, 2^32]. A zero-length range is valid at any address inside a region or
 * exactly at its end. `read`, `write`, `fill`, `sg` and `check` accept ranges spanning
 * guest-contiguous regions; scalars and views need one region. Multi-byte values are
 * little-endian (VIRTIO 1.3 §1.4: virtio structures are little-endian).
 *
 * Implementer contract: every method either succeeds on the full range or throws without
 * touching memory (no partial copies); guest-caused failures throw {@link GuestMemoryError}
 * with `addr`/`len` of the request, host misuse (negative or fractional address, length out of
 * range) throws `RangeError` naming the argument; `check` never throws and never allocates, and
 * `check(addr, len, access)` is true exactly when the matching `read`/`write`/`fill`/`sg` of that
 * range would succeed.
 */
export interface GuestMemory {
  /** Whether every byte reachable through this memory is backed by a SharedArrayBuffer. */
  readonly shared: boolean;
  /**
   * Optional fast path for hot bounds checks (the virtqueue chain walk does one per descriptor):
   * a range of addresses inside which every `[addr, addr + len)` is accessible for reads and
   * writes, for as long as this object lives. A caller may accept a range that lies inside it
   * without calling {@link GuestMemory.check}, and must call `check` for anything else.
   *
   * Implementer contract: set it only if the whole range stays mapped and writable (never
   * unmapped, shrunk or made read-only: so not in front of an IOMMU whose mappings change), and
   * never change it. Leave it undefined when unsure; `check` alone is always correct.
   */
  readonly stableRange?: StableRange | undefined;
  /**
   * Is `[addr, addr + len)` accessible for `access`? Never throws, never allocates; invalid
   * numbers answer false.
   * @param addr - first address
   * @param len - length in bytes (may be 0)
   * @param access - "read" (default) or "write"
   * @returns true when a `read`/`write` of the range would succeed
   */
  check(addr: number, len: number, access?: AccessKind): boolean;
  /**
   * Read one byte.
   * @param addr - guest address
   * @returns the byte, 0–255
   * @throws GuestMemoryError "out-of-bounds" if unmapped; RangeError for an invalid `addr`.
   */
  readU8(addr: number): number;
  /**
   * Read a little-endian u16 lying in one region (no alignment required).
   * @param addr - guest address of the first byte
   * @returns the value, 0–0xffff
   * @throws GuestMemoryError "out-of-bounds" or "cross-region"; RangeError for an invalid `addr`.
   */
  readU16(addr: number): number;
  /**
   * Read a little-endian u32 lying in one region (no alignment required).
   * @param addr - guest address of the first byte
   * @returns the value, 0–0xffffffff
   * @throws GuestMemoryError "out-of-bounds" or "cross-region"; RangeError for an invalid `addr`.
   */
  readU32(addr: number): number;
  /**
   * Read a little-endian u64 lying in one region, as a bigint (the only accessor that allocates).
   * For a 64-bit guest address prefer two `readU32` and {@link u64ToAddress}.
   * @param addr - guest address of the first byte
   * @returns the value, 0n–2^64-1
   * @throws GuestMemoryError "out-of-bounds" or "cross-region"; RangeError for an invalid `addr`.
   */
  readU64(addr: number): bigint;
  /**
   * Write one byte.
   * @param addr - guest address
   * @param value - taken modulo 2^8
   * @throws GuestMemoryError "out-of-bounds" or "read-only"; RangeError for an invalid `addr`.
   */
  writeU8(addr: number, value: number): void;
  /**
   * Write a little-endian u16 lying in one region.
   * @param addr - guest address of the first byte
   * @param value - taken modulo 2^16
   * @throws GuestMemoryError "out-of-bounds", "cross-region" or "read-only"; RangeError for an
   *   invalid `addr`.
   */
  writeU16(addr: number, value: number): void;
  /**
   * Write a little-endian u32 lying in one region.
   * @param addr - guest address of the first byte
   * @param value - taken modulo 2^32
   * @throws GuestMemoryError "out-of-bounds", "cross-region" or "read-only"; RangeError for an
   *   invalid `addr`.
   */
  writeU32(addr: number, value: number): void;
  /**
   * Write a little-endian u64 lying in one region.
   * @param addr - guest address of the first byte
   * @param value - taken modulo 2^64
   * @throws GuestMemoryError "out-of-bounds", "cross-region" or "read-only"; RangeError for an
   *   invalid `addr`.
   */
  writeU64(addr: number, value: bigint): void;
  /**
   * Copy guest `[addr, addr + dst.length)` into `dst`; may span guest-contiguous regions.
   * @param addr - first guest address
   * @param dst - destination; its whole length is read
   * @throws GuestMemoryError "out-of-bounds" (nothing copied); RangeError for an invalid `addr`.
   */
  read(addr: number, dst: Uint8Array): void;
  /**
   * Copy `src` into guest `[addr, addr + src.length)`; may span guest-contiguous regions.
   * @param addr - first guest address
   * @param src - source bytes
   * @throws GuestMemoryError "out-of-bounds" or "read-only" (nothing written); RangeError for an
   *   invalid `addr`.
   */
  write(addr: number, src: Uint8Array): void;
  /**
   * Fill guest `[addr, addr + len)` with `byte`; may span guest-contiguous regions.
   * @param addr - first guest address
   * @param len - length in bytes, an integer in [0, 2^32]
   * @param byte - fill value, taken modulo 2^8
   * @throws GuestMemoryError "out-of-bounds" or "read-only" (nothing written); RangeError naming
   *   `addr` or `len`.
   */
  fill(addr: number, len: number, byte: number): void;
  /**
   * Zero-copy byte view of `[addr, addr + len)`, which must lie in one region. It aliases guest
   * memory: the guest sees writes through it and may change it under you.
   * @param addr - first guest address
   * @param len - length in bytes, an integer in [0, 2^32]
   * @param access - intended use, "read" (default) or "write"; "write" is refused on read-only
   *   memory. The view itself is always writable: JavaScript cannot make it read-only.
   * @returns a Uint8Array over the backing buffer
   * @throws GuestMemoryError "out-of-bounds", "cross-region" or "read-only"; RangeError naming
   *   `addr` or `len`.
   */
  slice(addr: number, len: number, access?: AccessKind): Uint8Array;
  /**
   * Zero-copy DataView of `[addr, addr + len)`, which must lie in one region (remember to pass
   * `true` for little-endian to its accessors).
   * @param addr - first guest address
   * @param len - length in bytes, an integer in [0, 2^32]
   * @param access - intended use, as for `slice`
   * @returns a DataView over the backing buffer
   * @throws GuestMemoryError "out-of-bounds", "cross-region" or "read-only"; RangeError naming
   *   `addr` or `len`.
   */
  dataView(addr: number, len: number, access?: AccessKind): DataView;
  /**
   * Zero-copy Uint16Array of `count` elements at a 2-aligned address, in one region; usable with
   * `Atomics` when `shared`. Elements are in host byte order, which equals virtio's
   * little-endian on every platform JavaScript engines ship for except big-endian s390x.
   * @param addr - first guest address, a multiple of 2
   * @param count - number of elements, an integer with `2 * count ≤ 2^32`
   * @param access - intended use, as for `slice`
   * @returns a Uint16Array over the backing buffer
   * @throws GuestMemoryError "misaligned", "out-of-bounds", "cross-region" or "read-only";
   *   RangeError naming `addr` or `count`.
   */
  u16View(addr: number, count: number, access?: AccessKind): Uint16Array;
  /**
   * Zero-copy Uint32Array of `count` elements at a 4-aligned address, in one region; usable with
   * `Atomics` when `shared`. Host byte order, as for `u16View`.
   * @param addr - first guest address, a multiple of 4
   * @param count - number of elements, an integer with `4 * count ≤ 2^32`
   * @param access - intended use, as for `slice`
   * @returns a Uint32Array over the backing buffer
   * @throws GuestMemoryError "misaligned", "out-of-bounds", "cross-region" or "read-only";
   *   RangeError naming `addr` or `count`.
   */
  u32View(addr: number, count: number, access?: AccessKind): Uint32Array;
  /**
   * Scatter-gather: zero-copy views covering `[addr, addr + len)` in order, one per region (or
   * window) crossed; a zero-length range gives one empty view. `out` is cleared first and
   * returned, so a caller can reuse one array.
   * @param addr - first guest address
   * @param len - length in bytes, an integer in [0, 2^32]
   * @param out - array to fill (default: a new one)
   * @param access - intended use, as for `slice`
   * @returns `out`
   * @throws GuestMemoryError "out-of-bounds" or "read-only" (`out` left empty); RangeError naming
   *   `addr` or `len`.
   */
  sg(addr: number, len: number, out?: Uint8Array[], access?: AccessKind): Uint8Array[];
  /**
   * The guest address of `view` when all of it lies in one region's backing buffer (a view from
   * `slice`, or any view of that buffer inside the region), else undefined. Lets a driver point
   * the device at a caller's buffer that is already in guest memory (DMA) instead of bouncing
   * it. Optional: memory whose addresses are not a plain offset into a buffer (an IOMMU window)
   * leaves it out, and callers treat that as undefined. Never throws.
   * @param view - any view
   * @returns the guest address of `view`'s first byte, or undefined
   */
  addressOf?(view: ArrayBufferView): number | undefined;
}
