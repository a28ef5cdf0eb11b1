/**
 * Linux eventfds: vhost-user's kick (front-end → back-end) and call (back-end → front-end)
 * notifications. Each is a counter: writing adds, reading returns the sum and resets it
 * (vhost-user.rst: "the 8-byte value itself has no meaning").
 * @module
 */
import { loadNative, type NativeWatch, type VhostUserNative } from "./native.js";

/**
 * A non-blocking, close-on-exec eventfd, with an optional watcher that calls back from the
 * event loop when it is signalled (the counter is read, and so reset, before the callback).
 */
export class EventFd {
  readonly #n: VhostUserNative;
  readonly #fd: number;
  #watch: NativeWatch | undefined;
  #closed = false;

  /**
   * Create an eventfd with counter 0.
   * @throws NativeAddonMissingError if the addon is not built; Error "E<errno>" if eventfd fails
   */
  constructor() {
    this.#n = loadNative();
    this.#fd = this.#n.eventfdCreate();
  }

  /** The file descriptor (to send with SCM_RIGHTS). Owned by this object. */
  get fd(): number {
    return this.#fd;
  }

  /** Whether {@link EventFd.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Signal: add 1 to the counter. Never blocks; a counter at its maximum stays signalled.
   * @throws RangeError if closed
   */
  signal(): void {
    if (this.#closed) throw new RangeError("this eventfd is closed");
    this.#n.eventfdWrite(this.#fd, 1);
  }

  /**
   * Read and reset the counter without blocking.
   * @returns the number of signals since the last read (0n if none)
   * @throws RangeError if closed
   */
  take(): bigint {
    if (this.#closed) throw new RangeError("this eventfd is closed");
    return this.#n.eventfdRead(this.#fd) ?? 0n;
  }

  /**
   * Call `callback(count)` from the event loop each time the eventfd is signalled (the counter
   * is taken first). One watcher at a time; {@link EventFd.unwatch} or close stops it.
   * @param callback - receives the count taken
   * @throws TypeError naming `callback`; RangeError if closed or already watched
   */
  watch(callback: (count: bigint) => void): void {
    if (typeof callback !== "function") throw new TypeError("callback must be a function");
    if (this.#closed) throw new RangeError("this eventfd is closed");
    if (this.#watch !== undefined) throw new RangeError("this eventfd is already watched");
    this.#watch = this.#n.watch(this.#fd, () => {
      if (this.#closed) return;
      const count = this.#n.eventfdRead(this.#fd);
      if (count !== null) callback(count);
    });
  }

  /** Stop the watcher, if any. */
  unwatch(): void {
    if (this.#watch === undefined) return;
    this.#n.unwatch(this.#watch);
    this.#watch = undefined;
  }

  /** Stop watching and close the fd (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.unwatch();
    this.#closed = true;
    this.#n.closeFd(this.#fd);
  }
}
