/**
 * A guest-physical (or, behind a translation layer, IO-virtual) address.
 *
 * Representation: a non-negative JavaScript `number`. Addresses that the *host* passes in
 * must be safe integers in [0, 2^53). A 64-bit address read from *guest* memory (e.g. a
 * descriptor's `le64 addr`) is converted with `hi * 2^32 + lo`; values ≥ 2^53 lose precision
 * but always stay ≥ 2^53, and every region ends at or below 2^53, so bounds checks stay exact:
 * such an address is simply outside every region. `addr + len` with `len < 2^32` is likewise
 * never rounded back into range, so 64-bit wrap-around can never alias a mapped address.
 *
 * The brand keeps host code from passing a length or an index where an address is meant;
 * use {@link guestAddress} to make one from a checked number.
 */
export type GuestAddress = number & {
  /** Type-level brand only; no such property exists at run time. */
  readonly __brand: "GuestAddress";
};

/** Kind of access, for translation hooks (IOMMU / DMA windows). */
export type AccessKind = "read" | "write";

/**
 * The consumer-side interface every device and driver uses to reach guest memory.
 * Implementations: {@link GuestMemoryMap} (regions over (Shared)ArrayBuffers) and
 * {@link TranslatedMemory} (IOMMU / DMA windows in front of another GuestMemory).
 *
 * Implementer contract: every method either succeeds on the full range or throws
 * {@link GuestMemoryError} without touching memory (no partial copies for `read`/`write`
 * into/out of a single call); `check` never throws and never allocates.
 */
export interface GuestMemory {
  /** Whether every byte reachable through this memory is backed by a SharedArrayBuffer. */
  readonly shared: boolean;
  /** Non-throwing, non-allocating: is [addr, addr+len) fully accessible for `access`? len may be 0. */
  check(addr: number, len: number, access?: AccessKind): boolean;
  /** Read one byte. @throws GuestMemoryError if unmapped. */
  readU8(addr: number): number;
  /** Read a little-endian u16 (inside one region). @throws GuestMemoryError if unmapped or crossing regions. */
  readU16(addr: number): number;
  /** Read a little-endian u32 (inside one region). @throws GuestMemoryError if unmapped or crossing regions. */
  readU32(addr: number): number;
  /** Read a little-endian u64 as a bigint (inside one region). @throws GuestMemoryError if unmapped or crossing regions. */
  readU64(addr: number): bigint;
  /** Write one byte (value truncated to 8 bits). @throws GuestMemoryError if unmapped or read-only. */
  writeU8(addr: number, value: number): void;
  /** Write a little-endian u16 (value truncated to 16 bits). @throws GuestMemoryError if unmapped or read-only. */
  writeU16(addr: number, value: number): void;
  /** Write a little-endian u32 (value truncated to 32 bits). @throws GuestMemoryError if unmapped or read-only. */
  writeU32(addr: number, value: number): void;
  /** Write a little-endian u64 (value taken modulo 2^64). @throws GuestMemoryError if unmapped or read-only. */
  writeU64(addr: number, value: bigint): void;
  /** Copy guest [addr, addr+dst.length) into dst; may span adjacent regions. */
  read(addr: number, dst: Uint8Array): void;
  /** Copy src into guest [addr, addr+src.length); may span adjacent regions. */
  write(addr: number, src: Uint8Array): void;
  /** Fill guest [addr, addr+len) with `byte`. */
  fill(addr: number, len: number, byte: number): void;
  /** Zero-copy view of [addr, addr+len); throws GuestMemoryError code "cross-region" if it spans regions. */
  slice(addr: number, len: number, access?: AccessKind): Uint8Array;
  /** Zero-copy DataView of a range inside one region. */
  dataView(addr: number, len: number, access?: AccessKind): DataView;
  /** Zero-copy Uint16Array of `count` elements; addr must be 2-aligned (code "misaligned"). Usable with Atomics. */
  u16View(addr: number, count: number, access?: AccessKind): Uint16Array;
  /** Zero-copy Uint32Array of `count` elements; addr must be 4-aligned. Usable with Atomics. */
  u32View(addr: number, count: number, access?: AccessKind): Uint32Array;
  /**
   * Scatter-gather: zero-copy views covering [addr, addr+len) in order, one per region crossed.
   * Appends to `out` (cleared first) and returns it, so a caller can reuse one array.
   */
  sg(addr: number, len: number, out?: Uint8Array[], access?: AccessKind): Uint8Array[];
}
