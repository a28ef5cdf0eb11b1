import { type BlockBackend, sectorRangeFits } from "./blk-backend.js";

/** What went wrong in a back-end, as a literal a caller can switch on. */
export type BackendErrorCode =
  /** The backing object (a file) does not exist. */
  | "not-found"
  /** The host refused access (EACCES / EPERM). */
  | "permission"
  /** The backing object has an unusable size (e.g. not a multiple of 512 bytes). */
  | "bad-size"
  /** A write-type operation on a read-only back-end. */
  | "read-only"
  /** An operation past the end of the device. */
  | "out-of-range"
  /** The back-end was closed. */
  | "closed"
  /** Any other host I/O failure (the host error is in `cause`). */
  | "io";

/**
 * A host I/O failure in a back-end (a file that cannot be opened or written, a closed disk).
 * Not a guest fault: a device model turns it into an error status for the one request
 * (virtio-blk: VIRTIO_BLK_S_IOERR) and keeps serving. It is not a `VirtioError`, so it never
 * puts a device into DEVICE_NEEDS_RESET by itself.
 */
export class BackendError extends Error {
  /** What went wrong. */
  readonly code: BackendErrorCode;
  /** The path of the backing file, when there is one. */
  readonly path: string | undefined;

  /**
   * @param code - what went wrong
   * @param message - text for humans
   * @param options - the host error (`cause`) and the backing path
   */
  constructor(
    code: BackendErrorCode,
    message: string,
    options: { readonly cause?: unknown; readonly path?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "BackendError";
    this.code = code;
    this.path = options.path;
  }
}

/**
 * The three checks every {@link BlockBackend} implementation makes before an operation —
 * closed, read-only, range — each raising its {@link BackendError} with the back-end's name
 * (and path) in the message. Keep one per back-end and set {@link BlockGuard.closed} when it
 * closes.
 *
 * @example
 * ```ts
 * class MyDisk implements BlockBackend {
 *   readonly #guard = new BlockGuard("my disk", capacity, readOnly);
 *   async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
 *     this.#guard.writable();
 *     const at = this.#guard.span(sector, total(iovecs)); // byte offset of `sector`
 *     // ...
 *   }
 * }
 * ```
 */
export class BlockGuard {
  /** How messages name the back-end, e.g. "disk image /x.img". */
  readonly name: string;
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** The backing path, carried by the errors. */
  readonly path: string | undefined;
  /** Once true, every check throws BackendError "closed". */
  closed = false;

  /**
   * @param name - how messages name the back-end
   * @param capacity - size in 512-byte sectors
   * @param readOnly - whether writes are refused
   * @param path - the backing path, if any
   */
  constructor(name: string, capacity: number, readOnly: boolean, path?: string) {
    this.name = name;
    this.capacity = capacity;
    this.readOnly = readOnly;
    this.path = path;
  }

  /** @throws BackendError "closed" once {@link BlockGuard.closed} is set */
  open(): void {
    if (this.closed) throw new BackendError("closed", `${this.name} is closed`, this.#options());
  }

  /** @throws BackendError "closed", or "read-only" for a read-only back-end */
  writable(): void {
    this.open();
    if (this.readOnly) {
      throw new BackendError("read-only", `${this.name} is read-only`, this.#options());
    }
  }

  /**
   * Check that `byteLength` bytes from `sector` lie inside the back-end ({@link sectorRangeFits}).
   * @returns the byte offset of `sector`
   * @throws BackendError "closed", or "out-of-range"
   */
  span(sector: number, byteLength: number): number {
    this.open();
    if (!sectorRangeFits(sector, byteLength, this.capacity)) {
      throw new BackendError(
        "out-of-range",
        `${byteLength} bytes at sector ${sector} pass the capacity of ${this.name} (${this.capacity} sectors)`,
        this.#options(),
      );
    }
    return sector * 512;
  }

  #options(): { readonly path?: string } {
    return this.path === undefined ? {} : { path: this.path };
  }
}
