/**
 * The few host functions this package uses that are not in the ES2022 library (timers,
 * microtasks, the console): present in Node and in browsers, typed here without pulling in
 * `@types/node` or the DOM library.
 * @internal
 * @module
 */

/** A timer handle, opaque. */
export type TimerHandle = unknown;

interface HostGlobals {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  queueMicrotask(fn: () => void): void;
  console: { warn(message: string): void };
}

/** The host's globals, typed. @internal */
export const host = globalThis as unknown as HostGlobals;
