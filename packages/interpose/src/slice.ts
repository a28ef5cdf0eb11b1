import { BackendError, type BlockBackend, sectorRangeFits } from "@virtio-ts/devices";

/** Where a {@link slice} lies in its back-end, in 512-byte sectors. */
export interface SliceOptions {
  /** First sector of the slice in the inner back-end (a multiple of `blockSize / 512`). */
  readonly offset: number;
  /** Sectors in the slice: its capacity. */
  readonly length: number;
  /** Refuse writes through this slice even if the inner back-end is writable. Default false. */
  readonly readOnly?: boolean;
}

/**
 * A window of `length` sectors starting at `offset` of another back-end, presented as a whole
 * disk: sector 0 of the slice is sector `offset` of `inner`, and the capacity is `length`
 * (many-one: several devices each get a slice of one back-end, like partitions handed to
 * different guests).
 *
 * **Isolation.** Every request is checked against the slice, whatever the device above already
 * checked: a range that does not fit in `[0, length)` is rejected with `BackendError`
 * "out-of-range" and never reaches `inner`, so one slice's device cannot read or change another
 * slice's sectors. `flush` is the inner flush (durability of the whole back-end, which includes
 * the slice). A read-only slice rejects write-type calls with `BackendError` "read-only".
 * Hot path: a bounds check and an addition, no allocation.
 */
export class SliceBackend implements BlockBackend {
  /** The back-end the slice is cut from. */
  readonly inner: BlockBackend;
  /** First inner sector of the slice. */
  readonly offset: number;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;

  /**
   * Prefer {@link slice}.
   * @param inner - the back-end to cut from
   * @param options - offset, length, read-only
   * @throws RangeError naming `options.offset` or `options.length` when the slice does not lie
   *   inside `inner` or `offset` is not aligned to `inner.blockSize`
   */
  constructor(inner: BlockBackend, options: SliceOptions) {
    const { offset, length } = options;
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`options.offset must be a non-negative integer, got ${offset}`);
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`options.length must be a non-negative integer, got ${length}`);
    }
    if (offset > inner.capacity || length > inner.capacity - offset) {
      throw new RangeError(
        `options.offset + options.length (${offset} + ${length}) pass the inner capacity ${inner.capacity}`,
      );
    }
    const align = inner.blockSize / 512;
    if (offset % align !== 0) {
      throw new RangeError(
        `options.offset must be a multiple of ${align} sectors (inner blockSize ${inner.blockSize}), got ${offset}`,
      );
    }
    this.inner = inner;
    this.offset = offset;
    this.capacity = length;
    this.blockSize = inner.blockSize;
    this.readOnly = inner.readOnly || (options.readOnly ?? false);
  }

  /** @inheritdoc */
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    if (!sectorRangeFits(sector, total(iovecs), this.capacity)) return this.#outOfRange(sector);
    return this.inner.read(this.offset + sector, iovecs);
  }

  /** @inheritdoc */
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) return this.#readOnlyError();
    if (!sectorRangeFits(sector, total(iovecs), this.capacity)) return this.#outOfRange(sector);
    return this.inner.write(this.offset + sector, iovecs);
  }

  /** @inheritdoc */
  flush(): Promise<void> {
    return this.inner.flush();
  }

  /** @inheritdoc */
  discard(sector: number, count: number): Promise<void> {
    if (this.readOnly) return this.#readOnlyError();
    if (!this.#countFits(sector, count)) return this.#outOfRange(sector);
    return this.inner.discard(this.offset + sector, count);
  }

  /** @inheritdoc */
  writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    if (this.readOnly) return this.#readOnlyError();
    if (!this.#countFits(sector, count)) return this.#outOfRange(sector);
    return this.inner.writeZeroes(this.offset + sector, count, unmap);
  }

  #countFits(sector: number, count: number): boolean {
    return (
      Number.isSafeInteger(sector) &&
      Number.isSafeInteger(count) &&
      sector >= 0 &&
      count >= 0 &&
      sector <= this.capacity &&
      count <= this.capacity - sector
    );
  }

  #outOfRange(sector: number): Promise<never> {
    return Promise.reject(
      new BackendError(
        "out-of-range",
        `slice: request at sector ${sector} passes the slice capacity ${this.capacity}`,
      ),
    );
  }

  #readOnlyError(): Promise<never> {
    return Promise.reject(new BackendError("read-only", "slice is read-only"));
  }
}

/**
 * Cut a slice of `length` sectors at `offset` out of `inner` (see {@link SliceBackend}).
 * @param inner - the back-end to cut from
 * @param options - offset and length in 512-byte sectors, read-only flag
 * @throws RangeError naming `options.offset` or `options.length`
 * @example
 * ```ts
 * const disk = MemoryDisk.ofSize(2 << 20);           // 4096 sectors
 * const a = new BlkDevice(slice(disk, { offset: 0, length: 2048 }));
 * const b = new BlkDevice(slice(disk, { offset: 2048, length: 2048 }));
 * ```
 */
export function slice(inner: BlockBackend, options: SliceOptions): SliceBackend {
  return new SliceBackend(inner, options);
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}
