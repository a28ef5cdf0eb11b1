import { host } from "./host.js";

/** Options of a {@link RateLimitedLog}. */
export interface RateLimitedLogOptions {
  /** Where messages go (default `console.warn`). */
  readonly sink?: (message: string) => void;
  /** Messages let through per window (default 10). */
  readonly burst?: number;
  /** Window length in milliseconds (default 60 000). */
  readonly windowMs?: number;
  /** Clock in milliseconds (default `Date.now`); inject one in tests. */
  readonly now?: () => number;
}

/**
 * A log that lets through at most `burst` messages per window and then counts what it drops,
 * reporting the count with the first message of a later window. Guest faults go through one of
 * these: a hostile guest can trigger a fault per kick, and an unbounded log is a denial of
 * service on the host (firecracker and QEMU rate-limit theirs the same way).
 */
export class RateLimitedLog {
  readonly #sink: (message: string) => void;
  readonly #burst: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  #windowStart = Number.NEGATIVE_INFINITY;
  #inWindow = 0;
  #suppressed = 0;
  /** Messages dropped since construction. */
  dropped = 0;

  /**
   * @param options - sink, burst, window and clock
   * @throws RangeError naming `burst` or `windowMs` if not a positive integer
   */
  constructor(options: RateLimitedLogOptions = {}) {
    const burst = options.burst ?? 10;
    const windowMs = options.windowMs ?? 60_000;
    if (!Number.isInteger(burst) || burst < 1) {
      throw new RangeError(`burst must be a positive integer, got ${burst}`);
    }
    if (!Number.isInteger(windowMs) || windowMs < 1) {
      throw new RangeError(`windowMs must be a positive integer, got ${windowMs}`);
    }
    this.#sink = options.sink ?? ((m) => host.console.warn(m));
    this.#burst = burst;
    this.#windowMs = windowMs;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Log `message` unless the window's budget is spent.
   * @returns whether the message was passed to the sink
   */
  log(message: string): boolean {
    const now = this.#now();
    if (now - this.#windowStart >= this.#windowMs) {
      this.#windowStart = now;
      this.#inWindow = 0;
      if (this.#suppressed > 0) {
        const n = this.#suppressed;
        this.#suppressed = 0;
        this.#sink(`(${n} similar message${n === 1 ? "" : "s"} suppressed)`);
      }
    }
    if (this.#inWindow >= this.#burst) {
      this.#suppressed++;
      this.dropped++;
      return false;
    }
    this.#inWindow++;
    this.#sink(message);
    return true;
  }
}
