// The host timer a device falls back to when its options give none (internal; each device
// documents its own timer interface, RngTimer and BalloonTimer, which this shape satisfies).

/** Current time, and calls scheduled on the host's event loop. */
export interface HostTimer {
  now(): number;
  schedule(fn: () => void, ms: number): unknown;
  cancel(handle: unknown): void;
}

interface TimerGlobals {
  setTimeout?(fn: () => void, ms: number): unknown;
  clearTimeout?(handle: unknown): void;
}

/**
 * `Date.now` and the global `setTimeout` / `clearTimeout` (Node and browsers).
 * @throws TypeError naming `options.timer` where the global timers are missing
 */
export function defaultTimer(): HostTimer {
  const g = globalThis as TimerGlobals;
  const set = g.setTimeout;
  const clear = g.clearTimeout;
  if (set === undefined || clear === undefined) {
    throw new TypeError("options.timer is required: globalThis.setTimeout is missing");
  }
  return {
    now: () => Date.now(),
    schedule: (fn, ms) => set(fn, ms),
    cancel: (h) => clear(h),
  };
}
