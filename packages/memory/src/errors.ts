/**
 * Base class of every error virtio-ts raises because of what the *other side* (a guest, a
 * device, a peer) did. `code` is a string literal naming the kind, so callers can switch on
 * it; subclasses carry structured fields (addresses, indices, sizes) rather than only text.
 *
 * Misuse by host code raises plain `TypeError` / `RangeError` instead.
 */
export abstract class VirtioError extends Error {
  /** Machine-readable kind of error, a string literal per subclass. */
  abstract readonly code: string;

  /** The subclass name, e.g. "GuestMemoryError", so logs and `instanceof`-free code can tell kinds apart. */
  override get name(): string {
    return this.constructor.name;
  }
}

/** Why a guest memory access failed. */
export type GuestMemoryErrorCode =
  | "out-of-bounds"
  | "cross-region"
  | "misaligned"
  | "translation-fault"
  | "read-only";

/**
 * A guest memory access failed because of the address or length it used, values that may come
 * from an untrusted guest. Nothing was read or written.
 *
 * - "out-of-bounds": some byte of the range is not mapped (including addresses ≥ 2^53).
 * - "cross-region": a scalar or view would need two regions (or two DMA windows).
 * - "misaligned": a typed view's address is not a multiple of its element size.
 * - "translation-fault": an IOMMU / DMA window has no mapping, or not with that permission.
 * - "read-only": a write to read-only memory (ROM).
 */
export class GuestMemoryError extends VirtioError {
  /** What went wrong. */
  readonly code: GuestMemoryErrorCode;
  /** First guest address of the failed access. */
  readonly addr: number;
  /** Length in bytes of the failed access. */
  readonly len: number;

  /**
   * @param code - what went wrong
   * @param addr - first address of the access, as the caller passed it
   * @param len - length of the access in bytes
   * @param detail - optional text appended to the message
   */
  constructor(code: GuestMemoryErrorCode, addr: number, len: number, detail?: string) {
    super(
      `guest memory ${code} at 0x${addr.toString(16)} (+${len} bytes)${detail ? `: ${detail}` : ""}`,
    );
    this.code = code;
    this.addr = addr;
    this.len = len;
  }
}
