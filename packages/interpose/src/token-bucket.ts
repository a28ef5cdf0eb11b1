/**
 * Time and timers for the rate limiters, injectable so tests are deterministic (a fake clock
 * that tests advance by hand) and production uses the event loop ({@link systemClock}).
 *
 * Implementer contract: `now` never decreases; a timer's callback runs once, asynchronously (never
 * inside `setTimer`), no earlier than `ms` after it was set, unless cleared first.
 */
export interface RateClock {
  /** Current time in milliseconds (any origin, monotonic). */
  now(): number;
  /**
   * Call `callback` once after `ms` milliseconds.
   * @param ms - delay, ≥ 0
   * @param callback - what to run
   * @returns a handle for {@link RateClock.clearTimer}
   */
  setTimer(ms: number, callback: () => void): unknown;
  /**
   * Cancel a timer that has not run yet (no effect otherwise).
   * @param handle - what `setTimer` returned
   */
  clearTimer(handle: unknown): void;
}

/**
 * The real clock: `performance.now()` and `setTimeout` (unref'ed, so a limiter waiting for
 * tokens does not keep a process alive by itself).
 */
export const systemClock: RateClock = Object.freeze({
  now: () => performance.now(),
  setTimer: (ms: number, callback: () => void): unknown => {
    const t = setTimeout(callback, Math.max(0, Math.ceil(ms)));
    (t as { unref?: () => void }).unref?.();
    return t;
  },
  clearTimer: (handle: unknown): void => clearTimeout(handle as ReturnType<typeof setTimeout>),
});

/**
 * A token bucket: holds at most `burst` tokens, refilled continuously at `rate` tokens per
 * second from the clock. Taking `n` tokens succeeds when the bucket holds at least
 * `min(n, burst)`: a request larger than the burst can still pass (when the bucket is full) and
 * drives the level negative, so it is paid for by the refill that follows — the long-run rate
 * never exceeds `rate` and nothing is refused forever. Starts full. No allocation per call.
 */
export class TokenBucket {
  /** Tokens added per second. */
  readonly rate: number;
  /** Largest number of tokens held. */
  readonly burst: number;
  readonly #clock: RateClock;
  #level: number;
  #at: number;

  /**
   * @param rate - tokens per second, finite and > 0
   * @param burst - bucket size, finite and > 0
   * @param clock - time source (default {@link systemClock})
   * @throws RangeError naming `rate` or `burst`
   */
  constructor(rate: number, burst: number, clock: RateClock = systemClock) {
    checkPositive("rate", rate);
    checkPositive("burst", burst);
    this.rate = rate;
    this.burst = burst;
    this.#clock = clock;
    this.#level = burst;
    this.#at = clock.now();
  }

  /** Tokens held now (negative while a request larger than the burst is being paid off). */
  get level(): number {
    this.#refill();
    return this.#level;
  }

  /**
   * Whether `n` tokens could be taken now.
   * @param n - tokens, ≥ 0
   */
  canTake(n: number): boolean {
    this.#refill();
    return this.#level >= this.#threshold(n);
  }

  /**
   * Take `n` tokens if {@link TokenBucket.canTake} allows.
   * @param n - tokens, ≥ 0
   * @returns whether they were taken
   */
  tryTake(n: number): boolean {
    if (!this.canTake(n)) return false;
    this.#level -= n;
    return true;
  }

  /**
   * Take `n` tokens unconditionally (the level may go negative). For callers that checked
   * {@link TokenBucket.canTake} on several buckets before charging all of them.
   * @param n - tokens, ≥ 0
   */
  take(n: number): void {
    this.#refill();
    this.#level -= n;
  }

  /**
   * Milliseconds until `n` tokens can be taken (0 when they can be now).
   * @param n - tokens, ≥ 0
   */
  msUntil(n: number): number {
    this.#refill();
    if (this.#level >= this.#threshold(n)) return 0;
    // Wait for the exact amount: landing a rounding error short of it is within the slack.
    return ((Math.min(n, this.burst) - this.#level) / this.rate) * 1000;
  }

  /**
   * The level needed to take `n`: `min(n, burst)` less a slack of 10^-9 of the burst, so that
   * after waiting `msUntil(n)` the take succeeds instead of asking for another, vanishing wait.
   */
  #threshold(n: number): number {
    return Math.min(n, this.burst) - this.burst * 1e-9;
  }

  #refill(): void {
    const now = this.#clock.now();
    const dt = now - this.#at;
    if (dt <= 0) return;
    this.#at = now;
    const l = this.#level + (dt * this.rate) / 1000;
    this.#level = Math.min(l, this.burst);
  }
}

/** @internal Throw a RangeError naming `name` unless `v` is finite and > 0. */
export function checkPositive(name: string, v: number): void {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new RangeError(`${name} must be a finite number > 0, got ${String(v)}`);
  }
}
