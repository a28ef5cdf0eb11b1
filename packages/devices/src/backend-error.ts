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
