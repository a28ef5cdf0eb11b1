/**
 * A bounded slab allocator of guest memory.
 * @module
 */

/**
 * Hands out fixed-size slots of one guest-memory region `[base, base + slotSize * slots)`.
 * Bounded: it never grows, `alloc` returns `undefined` when every slot is taken, and its
 * bookkeeping (a free stack and an in-use bitmap) is allocated once in the constructor.
 * Both operations are O(1).
 *
 * The region belongs to the driver: nothing else (least of all the device) may allocate from
 * it. The allocator does not touch guest memory; it only tracks addresses.
 *
 * @example
 * ```ts
 * const slab = new SlabAllocator(0x40000, 4096, 64); // 64 slots of 4 KiB at 0x40000
 * const a = slab.alloc(); // 0x40000 + k * 4096, or undefined when full
 * if (a !== undefined) slab.free(a);
 * ```
 */
export class SlabAllocator {
  /** Guest address of slot 0. */
  readonly base: number;
  /** Size of every slot in bytes (a multiple of 16, at least 64). */
  readonly slotSize: number;
  /** Number of slots. */
  readonly slots: number;
  readonly #free: Uint32Array;
  readonly #used: Uint8Array;
  #top: number;

  /**
   * @param base - guest address of the region (16-aligned)
   * @param slotSize - bytes per slot: a multiple of 16, at least 64
   * @param slots - number of slots, 1 to 2^20
   * @throws RangeError naming `base`, `slotSize` or `slots` if invalid
   */
  constructor(base: number, slotSize: number, slots: number) {
    if (!Number.isSafeInteger(base) || base < 0 || base % 16 !== 0) {
      throw new RangeError(`base must be a non-negative 16-aligned integer, got ${base}`);
    }
    if (!Number.isSafeInteger(slotSize) || slotSize < 64 || slotSize % 16 !== 0) {
      throw new RangeError(`slotSize must be a multiple of 16 of at least 64, got ${slotSize}`);
    }
    if (!Number.isInteger(slots) || slots < 1 || slots > 1 << 20) {
      throw new RangeError(`slots must be an integer in [1, 2^20], got ${slots}`);
    }
    if (!Number.isSafeInteger(base + slotSize * slots)) {
      throw new RangeError(`base + slotSize * slots must be a safe integer`);
    }
    this.base = base;
    this.slotSize = slotSize;
    this.slots = slots;
    this.#free = new Uint32Array(slots);
    this.#used = new Uint8Array(slots);
    // Lowest addresses are handed out first.
    for (let i = 0; i < slots; i++) this.#free[i] = slots - 1 - i;
    this.#top = slots;
  }

  /** Slots currently free. */
  get available(): number {
    return this.#top;
  }

  /** Total bytes of the region (`slotSize * slots`). */
  get byteLength(): number {
    return this.slotSize * this.slots;
  }

  /**
   * Take one slot.
   * @returns its guest address, or undefined if every slot is in use
   */
  alloc(): number | undefined {
    if (this.#top === 0) return undefined;
    const i = this.#free[--this.#top] as number;
    this.#used[i] = 1;
    return this.base + i * this.slotSize;
  }

  /**
   * Return a slot taken by {@link SlabAllocator.alloc}.
   * @param addr - the address `alloc` returned
   * @throws RangeError naming `addr` if it is not the start of a slot in use (double free)
   */
  free(addr: number): void {
    const off = addr - this.base;
    const i = off / this.slotSize;
    if (!Number.isInteger(i) || i < 0 || i >= this.slots || this.#used[i] !== 1) {
      throw new RangeError(`addr ${addr} is not an allocated slot of this allocator`);
    }
    this.#used[i] = 0;
    this.#free[this.#top++] = i;
  }
}
