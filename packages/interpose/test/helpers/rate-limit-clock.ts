// A hand-stepped RateClock for the rate-limiter tests: time moves only in `advance`, timers
// fire in deadline order, and pending promise work runs to completion after each one, so the
// tests are deterministic and never look at the wall clock.
import type { RateClock } from "../../src/index.js";

interface Timer {
  readonly id: number;
  readonly at: number;
  readonly callback: () => void;
}

/** Let every pending promise reaction (and MemoryDisk completion) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock implements RateClock {
  #t = 0;
  #id = 0;
  #timers: Timer[] = [];

  now(): number {
    return this.#t;
  }

  setTimer(ms: number, callback: () => void): unknown {
    if (!(ms >= 0)) throw new RangeError(`bad delay ${ms}`);
    const id = ++this.#id;
    this.#timers.push({ id, at: this.#t + ms, callback });
    return id;
  }

  clearTimer(handle: unknown): void {
    this.#timers = this.#timers.filter((t) => t.id !== handle);
  }

  /** Timers not yet fired. */
  get pendingTimers(): number {
    return this.#timers.length;
  }

  /** Move time forward by `ms`, firing due timers in order and settling after each. */
  async advance(ms: number): Promise<void> {
    const end = this.#t + ms;
    await settle();
    for (;;) {
      let next: Timer | undefined;
      for (const t of this.#timers)
        if (t.at <= end && (next === undefined || t.at < next.at)) next = t;
      if (next === undefined) break;
      this.#timers = this.#timers.filter((t) => t !== next);
      this.#t = Math.max(this.#t, next.at);
      next.callback();
      await settle();
    }
    this.#t = end;
    await settle();
  }
}
