import type { GuestMemory } from "@virtio-ts/memory";
import type { DescriptorChain } from "./chain.js";
import {
  BufferOutOfBoundsError,
  type ChainError,
  ChainTooLongError,
  DescriptorLoopError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NextOutOfRangeError,
  ReadableAfterWritableError,
  TotalLengthOverflowError,
} from "./errors.js";

// Numeric results of a chain walk, shared by the split and packed device sides. The hot path
// returns one of these; an Error is built only on the cold path (ChainCheck.error) from the
// scratch fields recorded by ChainCheck.fail.
/** @internal The walk succeeded. */
export const OK = 0;
/** @internal A descriptor was visited twice. */
export const E_LOOP = 1;
/** @internal More segments than the queue size or the cursor's capacity. */
export const E_TOO_LONG = 2;
/** @internal A `next` outside the table. */
export const E_NEXT = 3;
/** @internal A readable descriptor after a writable one. */
export const E_R_AFTER_W = 4;
/** @internal A buffer outside guest memory (or without the needed access). */
export const E_OOB = 5;
/** @internal The chain adds up to 2^32 bytes or more. */
export const E_TOTAL = 6;
/** @internal INDIRECT without VIRTIO_F_INDIRECT_DESC. */
export const E_IND_NEG = 7;
/** @internal INDIRECT together with NEXT / inside a linked list. */
export const E_IND_NEXT = 8;
/** @internal An indirect table length of 0 or not a multiple of 16. */
export const E_IND_LEN = 9;
/** @internal INDIRECT inside an indirect table. */
export const E_IND_NESTED = 10;
/** @internal An indirect table outside guest memory. */
export const E_IND_OOB = 11;

const U32_MAX = 0xffffffff;

/**
 * The per-segment checks and the cold-path error construction both ring layouts share. One per
 * device queue, created with it; allocates nothing on the success path.
 * @internal
 */
export class ChainCheck {
  readonly #mem: GuestMemory;
  /**
   * `mem.stableRange` (empty if none: start 1, end 0): a buffer inside it needs no `mem.check`
   * call. Read by the split walk, which checks it inline before calling `accessible`.
   */
  readonly rangeStart: number;
  readonly rangeEnd: number;
  readonly #indirectWithNext: string;
  #index = 0;
  #indirect = false;
  #a = 0;
  #b = 0;

  /** @param mem guest memory; @param indirectWithNext the message for E_IND_NEXT in this layout. */
  constructor(mem: GuestMemory, indirectWithNext: string) {
    this.#mem = mem;
    const r = mem.stableRange;
    this.rangeStart = r === undefined ? 1 : r.start;
    this.rangeEnd = r === undefined ? 0 : r.end;
    this.#indirectWithNext = indirectWithNext;
  }

  /** Record where a walk failed and return `code`. */
  fail(code: number, index: number, indirect: boolean, a: number, b: number): number {
    this.#index = index;
    this.#indirect = indirect;
    this.#a = a;
    this.#b = b;
    return code;
  }

  /** Validate one data descriptor (already read once into locals) and append it to `chain`. */
  segment(
    chain: DescriptorChain,
    index: number,
    indirect: boolean,
    addr: number,
    len: number,
    writable: boolean,
    budget: number,
  ): number {
    if (chain.count >= budget) return this.fail(E_TOO_LONG, index, indirect, budget, 0);
    if (!this.accessible(addr, len, writable)) return this.fail(E_OOB, index, indirect, addr, len);
    chain.append(addr, len, writable);
    // §2.7.5.2: a chain is at most 2^32 bytes in total; we stop one byte earlier, as our drivers
    // do, so every total (and the used `len`) fits a le32. Exact: at most 32768 lengths < 2^32.
    if (chain.readableBytes + chain.writableBytes > U32_MAX) {
      return this.fail(E_TOTAL, index, indirect, 0, 0);
    }
    return OK;
  }

  /**
   * Whether a buffer lies inside guest memory with the access it needs: writable buffers need
   * "write" (read-only regions, IOMMU permissions).
   *
   * The range check is an exact `len ≤ end − addr` inside GuestMemory, so addr + len cannot
   * wrap 2^64 back into memory; addr ≥ 2^53 never passes. Zero-length buffers are accepted (the
   * spec sets no lower bound) but must still start inside guest memory. Inside the memory's
   * stable range (the same exact comparison) the call to `check` is skipped.
   */
  accessible(addr: number, len: number, writable: boolean): boolean {
    return (
      (addr >= this.rangeStart && len <= this.rangeEnd - addr) ||
      this.#mem.check(addr, len, writable ? "write" : "read")
    );
  }

  /** Cold path: the typed error for the last failure, for the chain identified by `head`. */
  error(code: number, head: number): ChainError {
    const i = this.#index;
    const ind = this.#indirect;
    const a = this.#a;
    const b = this.#b;
    switch (code) {
      case E_LOOP:
        return new DescriptorLoopError("descriptor chain loops", head, i, ind);
      case E_TOO_LONG:
        return new ChainTooLongError(head, i, ind, a);
      case E_NEXT:
        return new NextOutOfRangeError(head, i, ind, a, b);
      case E_R_AFTER_W:
        return new ReadableAfterWritableError(
          "device-readable descriptor after a writable one",
          head,
          i,
          ind,
        );
      case E_OOB:
        return new BufferOutOfBoundsError(head, i, ind, a, b);
      case E_TOTAL:
        return new TotalLengthOverflowError("chain length reaches 2^32 bytes", head, i, ind);
      case E_IND_NEG:
        return new IndirectNotNegotiatedError(
          "INDIRECT flag without VIRTIO_F_INDIRECT_DESC",
          head,
          i,
          ind,
        );
      case E_IND_NEXT:
        return new IndirectWithNextError(this.#indirectWithNext, head, i, ind);
      case E_IND_LEN:
        return new IndirectTableLengthError(head, i, a);
      case E_IND_NESTED:
        return new NestedIndirectError("INDIRECT inside an indirect table", head, i, ind);
      default:
        return new IndirectTableOutOfBoundsError(head, i, a, b);
    }
  }
}
