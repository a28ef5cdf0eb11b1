/** Scheduling helpers shared by the suites (internal). @module */

interface TimerGlobal {
  setTimeout(fn: () => void, ms: number): unknown;
}

/**
 * Resolve after the current macrotask, so promise chains of an asynchronous back-end (and its
 * timers of 0 ms) get to run. Uses `globalThis.setTimeout`, present in browsers and Node.
 */
export function macrotask(): Promise<void> {
  return new Promise((resolve) => (globalThis as unknown as TimerGlobal).setTimeout(resolve, 0));
}

/** How many macrotasks a suite waits for a completion before declaring the implementation silent. */
export const MAX_TURNS = 200;
