/**
 * Storage behind a virtio-blk device ({@link BlkDevice}): a file, memory, a network volume.
 * Sectors are always 512 bytes (VIRTIO 1.3 §5.2.6), whatever {@link BlockBackend.blockSize}
 * says.
 *
 * Implementer contract:
 * - `capacity`, `blockSize` and `readOnly` are constant while a device uses the back-end,
 *   except that `capacity` may change when the host then calls `BlkDevice.updateCapacity()`
 *   (a resize). `capacity` is a safe integer number of 512-byte sectors; `blockSize` a power of two of at
 *   least 512 (a hint for the guest's I/O alignment, not a unit of the requests).
 * - The device has already checked every range: `sector + length` never passes `capacity`,
 *   request lengths are whole sectors, and write-type calls never reach a read-only back-end.
 *   Implementations may still check and reject with a `BackendError`.
 * - `iovecs` are zero-copy views of guest memory (possibly over a `SharedArrayBuffer`) that
 *   together form one contiguous byte range starting at `sector`. `read` fills all of them,
 *   `write` consumes all of them. Use them only until the returned promise settles, never keep
 *   them; the guest may change the bytes of a write at any time (copy first if you need a stable
 *   snapshot, e.g. for a checksum).
 * - Every method returns a promise; operations may run concurrently and complete in any order.
 *   A failure rejects (preferably with a `BackendError`); the device reports it as
 *   VIRTIO_BLK_S_IOERR for that request only. Never throw synchronously.
 * - `flush` resolves only when every write that *completed* before it was called is on stable
 *   storage (survives a host crash or power loss).
 * - `discard` may do nothing; afterwards the discarded sectors read as their old contents or as
 *   zeroes. `writeZeroes` must make the range read as zeroes; with `unmap` it may also
 *   deallocate the space.
 *
 * @see VIRTIO 1.3 §5.2.6 "Device Operation"
 */
export interface BlockBackend {
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  /** Preferred block size in bytes (VIRTIO_BLK_F_BLK_SIZE `blk_size`). */
  readonly blockSize: number;
  /** Whether writes are refused (the device offers VIRTIO_BLK_F_RO). */
  readonly readOnly: boolean;
  /**
   * Read `sum(iovecs[i].length)` bytes from `sector × 512` into `iovecs`, in order.
   * @throws BackendError (as a rejection) on host I/O failure
   */
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void>;
  /**
   * Write the bytes of `iovecs`, in order, at `sector × 512`.
   * @throws BackendError (as a rejection) on host I/O failure
   */
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void>;
  /**
   * Make completed writes durable.
   * @throws BackendError (as a rejection) on host I/O failure
   */
  flush(): Promise<void>;
  /**
   * Hint that `count` sectors from `sector` are no longer needed (may be a no-op).
   * @throws BackendError (as a rejection) on host I/O failure
   */
  discard(sector: number, count: number): Promise<void>;
  /**
   * Make `count` sectors from `sector` read as zeroes; `unmap` allows deallocating them.
   * @throws BackendError (as a rejection) on host I/O failure
   */
  writeZeroes(sector: number, count: number, unmap: boolean): Promise<void>;
  /**
   * Optional: {@link BlockBackend.read} done before returning, for back-ends whose bytes are at
   * hand (memory) or that may block their thread (a file read synchronously on a thread that
   * does nothing else). A device that finds it completes a read inside the guest's notification,
   * with no event-loop turn in between: in an emulator the guest then sees the completion as
   * soon as it takes interrupts again, as with a synchronous emulated controller, instead of
   * going idle and being woken. Same rules as `read`; throws (a `BackendError`) instead of
   * rejecting.
   */
  readonly readSync?: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;
  /** Optional: {@link BlockBackend.write} done before returning (see `readSync`). */
  readonly writeSync?: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;
}

/**
 * Whether `byteLength` bytes starting at 512-byte `sector` lie inside a disk of `capacity`
 * sectors: `sector` a non-negative safe integer, `byteLength` whole sectors, and no overflow
 * (compared as `byteLength / 512 ≤ capacity − sector`). The range check every
 * {@link BlockBackend} implementation needs.
 */
export function sectorRangeFits(sector: number, byteLength: number, capacity: number): boolean {
  return (
    Number.isSafeInteger(sector) &&
    sector >= 0 &&
    byteLength % 512 === 0 &&
    sector <= capacity &&
    byteLength / 512 <= capacity - sector
  );
}
