import { type BlockBackend, BlockGuard } from "@virtio-ts/devices";

const SECTOR = 512;

/** Options of a {@link MemoryDisk}. */
export interface MemoryDiskOptions {
  /** Refuse writes (the device offers VIRTIO_BLK_F_RO). Default false. */
  readonly readOnly?: boolean;
  /** Preferred block size (a power of 2, at least 512). Default 512. */
  readonly blockSize?: number;
  /**
   * Offer `readSync` / `writeSync` (`BlockBackend`'s synchronous path): a `BlkDevice` then
   * completes each read and write inside the guest's notification, with no event-loop turn in
   * between — what an emulator's own in-memory disks do. Default false: operations complete
   * in a microtask, so requests can be in flight.
   */
  readonly synchronous?: boolean;
}

/**
 * A disk held in memory: a `Uint8Array` whose length is a multiple of 512. `flush` does
 * nothing (there is no stable storage), `discard` zeroes the range (so discarded data never
 * leaks back), `writeZeroes` zeroes it. Operations complete in a microtask; with
 * `synchronous: true` reads and writes can also be done before returning (`readSync`,
 * `writeSync`).
 *
 * @example
 * ```ts
 * const disk = MemoryDisk.ofSize(1 << 20); // 2048 sectors
 * await disk.write(0, [new TextEncoder().encode("hello".padEnd(512))]);
 * ```
 */
export class MemoryDisk implements BlockBackend {
  /** The disk contents (shared, not copied). */
  readonly bytes: Uint8Array;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  readonly #guard: BlockGuard;

  /**
   * @param bytes - the contents, used in place; length a multiple of 512
   * @param options - read-only flag, block size
   * @throws RangeError naming `bytes` or `options.blockSize`
   */
  constructor(bytes: Uint8Array, options: MemoryDiskOptions = {}) {
    if (bytes.length % SECTOR !== 0) {
      throw new RangeError(`bytes.length must be a multiple of 512, got ${bytes.length}`);
    }
    const bs = options.blockSize ?? SECTOR;
    if (!Number.isInteger(bs) || bs < SECTOR || (bs & (bs - 1)) !== 0) {
      throw new RangeError(`options.blockSize must be a power of 2 of at least 512, got ${bs}`);
    }
    this.bytes = bytes;
    this.capacity = bytes.length / SECTOR;
    this.blockSize = bs;
    this.readOnly = options.readOnly ?? false;
    this.#guard = new BlockGuard("MemoryDisk", this.capacity, this.readOnly);
    const sync = options.synchronous === true;
    this.readSync = sync ? (sector, iovecs) => this.#copyOut(sector, iovecs) : undefined;
    this.writeSync = sync ? (sector, iovecs) => this.#copyIn(sector, iovecs) : undefined;
  }

  /**
   * A zero-filled disk of `size` bytes.
   * @throws RangeError naming `size` unless it is a non-negative multiple of 512
   */
  static ofSize(size: number, options: MemoryDiskOptions = {}): MemoryDisk {
    if (!Number.isSafeInteger(size) || size < 0 || size % SECTOR !== 0) {
      throw new RangeError(`size must be a non-negative multiple of 512, got ${size}`);
    }
    return new MemoryDisk(new Uint8Array(size), options);
  }

  /** @inheritdoc */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#copyOut(sector, iovecs);
  }

  /** @inheritdoc */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#copyIn(sector, iovecs);
  }

  /**
   * With `synchronous: true`: {@link MemoryDisk.read} done before returning (a device completes
   * the request inside the guest's notification). Undefined otherwise.
   * @throws BackendError when the range is out of the disk
   */
  readonly readSync: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;

  /**
   * With `synchronous: true`: {@link MemoryDisk.write} done before returning. Undefined
   * otherwise.
   * @throws BackendError when read-only or the range is out of the disk
   */
  readonly writeSync: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;

  #copyOut(sector: number, iovecs: readonly Uint8Array[]): void {
    let at = this.#guard.span(sector, total(iovecs));
    for (const v of iovecs) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  #copyIn(sector: number, iovecs: readonly Uint8Array[]): void {
    this.#guard.writable();
    let at = this.#guard.span(sector, total(iovecs));
    for (const v of iovecs) {
      this.bytes.set(v, at);
      at += v.length;
    }
  }

  /** Nothing to do: memory is as stable as it gets. */
  async flush(): Promise<void> {}

  /** Zeroes the range, so stale data never reads back. */
  async discard(sector: number, count: number): Promise<void> {
    this.#guard.writable();
    const at = this.#guard.span(sector, count * SECTOR);
    this.bytes.fill(0, at, at + count * SECTOR);
  }

  /** @inheritdoc */
  async writeZeroes(sector: number, count: number, _unmap: boolean): Promise<void> {
    await this.discard(sector, count);
  }
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}
