/**
 * Notification channels: the kick (available buffer notification, driver → device; KVM's
 * ioeventfd) and the interrupt (used buffer / configuration change notification, device →
 * driver; KVM's irqfd) behind one interface, in-thread or across threads.
 *
 * A doorbell works like an eventfd: `ring` adds to a counter, `take` reads and zeroes it, and
 * waiting returns once the counter is non-zero. Rings that arrive while nobody waits are never
 * lost, and several rings before one `take` coalesce, exactly as notifications may (VIRTIO 1.3
 * §2.3: a notification says a buffer *may* have been made available or used; the receiver
 * always looks at the ring itself).
 *
 * @module
 */

import { host, type TimerHandle } from "./host.js";

/**
 * One notification channel.
 *
 * Implementer contract: `ring` never blocks and never throws for a valid count; a ring that
 * happens before a `wait` makes that `wait` resolve true (no lost wakeup); `take` returns the
 * sum of the rings since the previous `take` and zeroes it atomically with respect to `ring`;
 * `wait` does not consume (call `take` after it); spurious true results are allowed, missed
 * rings are not.
 */
export interface Doorbell {
  /**
   * Signal the other side.
   * @param count - how much to add (default 1), a positive integer below 2^31
   */
  ring(count?: number): void;
  /** Consume the pending rings: return their count and reset it to 0 (0 if none). */
  take(): number;
  /** The pending count, without consuming it. */
  pending(): number;
  /**
   * Resolve true as soon as a ring is pending (immediately if one already is), or false after
   * `timeoutMs` (default: no timeout).
   */
  wait(timeoutMs?: number): Promise<boolean>;
}

/** Options of a {@link LocalDoorbell}. */
export interface LocalDoorbellOptions {
  /**
   * Called when the doorbell rings, the in-thread analogue of a handler bound to an eventfd:
   * the receiver should `take()` and then look at its queues.
   */
  readonly onRing?: () => void;
  /**
   * "sync" calls `onRing` inside `ring` (a kick is a direct call, as a trap handler that
   * processes the queue before returning to the guest); "microtask" (default) calls it once from
   * a microtask for all the rings of the current task (coalescing, as an eventfd does).
   */
  readonly delivery?: "sync" | "microtask";
}

function checkCount(count: number): void {
  if (!Number.isInteger(count) || count < 1 || count > 0x7fffffff) {
    throw new RangeError(`count must be an integer in [1, 2^31), got ${count}`);
  }
}

/** A monotonic clock in ms (`Date.now()` can jump with the wall clock); `performance` is in
 * Node and browsers but not in the ES2022 library. */
const perf = (globalThis as { performance?: { now(): number } }).performance;
const now: () => number = perf !== undefined ? () => perf.now() : () => Date.now();

/** When a wait of `timeoutMs` (undefined: forever) started now ends, on the {@link now} clock. */
function deadlineOf(timeoutMs: number | undefined): number {
  return timeoutMs === undefined ? Number.POSITIVE_INFINITY : now() + timeoutMs;
}

function checkTimeout(timeoutMs: number | undefined): void {
  if (timeoutMs !== undefined && !(timeoutMs >= 0)) {
    throw new RangeError(`timeoutMs must be a non-negative number, got ${timeoutMs}`);
  }
}

/**
 * A doorbell inside one thread: `ring` bumps a counter, wakes `wait`ers and calls `onRing`
 * directly or from a microtask. Use it when the driver and the device (or the VMM loop and the
 * device model) share a thread.
 *
 * @example
 * ```ts
 * const kick = new LocalDoorbell({ onRing: () => { kick.take(); device.processQueue(0); } });
 * kick.ring(); // processQueue runs in a microtask
 * ```
 */
export class LocalDoorbell implements Doorbell {
  readonly #onRing: (() => void) | undefined;
  readonly #sync: boolean;
  #count = 0;
  #scheduled = false;
  readonly #waiters = new Set<(rang: boolean) => void>();
  readonly #deliver = (): void => {
    this.#scheduled = false;
    this.#onRing?.();
  };

  /** @param options - the handler and how to deliver to it */
  constructor(options: LocalDoorbellOptions = {}) {
    this.#onRing = options.onRing;
    this.#sync = options.delivery === "sync";
  }

  /** @inheritdoc */
  ring(count = 1): void {
    checkCount(count);
    this.#count = Math.min(this.#count + count, 0x7fffffff);
    if (this.#waiters.size > 0) {
      for (const w of this.#waiters) w(true);
      this.#waiters.clear();
    }
    if (this.#onRing === undefined) return;
    if (this.#sync) this.#onRing();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      host.queueMicrotask(this.#deliver);
    }
  }

  /** @inheritdoc */
  take(): number {
    const n = this.#count;
    this.#count = 0;
    return n;
  }

  /** @inheritdoc */
  pending(): number {
    return this.#count;
  }

  /**
   * @inheritdoc
   * @throws RangeError naming `timeoutMs` if it is negative or NaN
   */
  wait(timeoutMs?: number): Promise<boolean> {
    checkTimeout(timeoutMs);
    if (this.#count > 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      let timer: TimerHandle | undefined;
      const waiter = (rang: boolean): void => {
        if (timer !== undefined) host.clearTimeout(timer);
        resolve(rang);
      };
      this.#waiters.add(waiter);
      if (timeoutMs !== undefined && timeoutMs !== Number.POSITIVE_INFINITY) {
        timer = host.setTimeout(() => {
          this.#waiters.delete(waiter);
          resolve(this.#count > 0);
        }, timeoutMs);
      }
    });
  }
}

type WaitAsync = (
  array: Int32Array,
  index: number,
  value: number,
  timeout?: number,
) =>
  | { async: false; value: "not-equal" | "timed-out" }
  | { async: true; value: Promise<"ok" | "timed-out"> };

// Atomics.waitAsync is ES2024 (Node 16+, Chrome 87+); the lib target here is ES2022.
const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

/** Where a {@link SharedDoorbell} lives, to hand it to another thread with `postMessage`. */
export interface SharedDoorbellHandle {
  /** The shared buffer holding the doorbell word. */
  readonly buffer: SharedArrayBuffer;
  /** Byte offset of the Int32 word (a multiple of 4). */
  readonly byteOffset: number;
}

/**
 * A doorbell across threads: one Int32 word in a SharedArrayBuffer. `ring` is `Atomics.add`
 * then `Atomics.notify`; `take` is `Atomics.exchange(…, 0)`; `waitSync` is `Atomics.wait` (a
 * worker, or Node's main thread) and `wait` is `Atomics.waitAsync` (any thread, including a
 * browser's main thread). Waiting compares the word with 0 atomically inside the wait, so a ring
 * between a check and the sleep is never lost.
 *
 * Both threads construct a `SharedDoorbell` over the same word: pass {@link SharedDoorbell.handle}
 * in a message and call {@link SharedDoorbell.from} on the other side.
 *
 * @example
 * ```ts
 * // main thread
 * const irq = new SharedDoorbell();
 * worker.postMessage({ irq: irq.handle });
 * if (await irq.wait(1000)) irq.take();
 * // worker
 * const irq = SharedDoorbell.from(msg.irq);
 * irq.ring();
 * ```
 */
export class SharedDoorbell implements Doorbell {
  /** Bytes one doorbell occupies. */
  static readonly BYTES = 4;
  /** The Int32 word (index 0), shared with the other thread. */
  readonly word: Int32Array;

  /**
   * @param buffer - shared memory holding the word (default: a new 4-byte buffer)
   * @param byteOffset - offset of the word, a multiple of 4 inside `buffer`
   * @throws TypeError if `buffer` is not a SharedArrayBuffer; RangeError naming `byteOffset`
   */
  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(4), byteOffset = 0) {
    if (!(buffer instanceof SharedArrayBuffer)) {
      throw new TypeError("buffer must be a SharedArrayBuffer");
    }
    if (
      !Number.isInteger(byteOffset) ||
      byteOffset < 0 ||
      byteOffset % 4 !== 0 ||
      byteOffset + 4 > buffer.byteLength
    ) {
      throw new RangeError(
        `byteOffset must be a multiple of 4 with 4 bytes inside the buffer, got ${byteOffset}`,
      );
    }
    this.word = new Int32Array(buffer, byteOffset, 1);
  }

  /** Rebuild a doorbell from a {@link SharedDoorbellHandle} received from another thread. */
  static from(handle: SharedDoorbellHandle): SharedDoorbell {
    return new SharedDoorbell(handle.buffer, handle.byteOffset);
  }

  /** The buffer and offset, structured-cloneable for `postMessage`. */
  get handle(): SharedDoorbellHandle {
    return { buffer: this.word.buffer as SharedArrayBuffer, byteOffset: this.word.byteOffset };
  }

  /** @inheritdoc */
  ring(count = 1): void {
    checkCount(count);
    // seq-cst add: everything this thread wrote before (ring indices, buffers) is visible to a
    // thread that observes the new value. Then wake every sleeper on the word. Always: skipping
    // the notify when the word was already non-zero would leave a waiter asleep on a non-zero
    // word whenever the ring that made it non-zero has added but not yet notified (another
    // thread, stalled or terminated in between); an eventfd does add and wake in one step.
    Atomics.add(this.word, 0, count);
    Atomics.notify(this.word, 0);
  }

  /** @inheritdoc */
  take(): number {
    return Atomics.exchange(this.word, 0, 0);
  }

  /** @inheritdoc */
  pending(): number {
    return Atomics.load(this.word, 0);
  }

  /**
   * Block the calling thread until a ring is pending or `timeoutMs` passes (default: forever).
   * Not allowed on a browser's main thread (use {@link SharedDoorbell.wait}).
   * @returns true if a ring is pending
   * @throws RangeError naming `timeoutMs`; TypeError where the platform forbids `Atomics.wait`
   */
  waitSync(timeoutMs?: number): boolean {
    checkTimeout(timeoutMs);
    const deadline = deadlineOf(timeoutMs);
    for (;;) {
      if (Atomics.load(this.word, 0) !== 0) return true;
      const left = deadline - now();
      if (left <= 0) return false;
      // Sleeps only while the word is still 0: a ring before this point returns "not-equal".
      // A wake-up can find the word 0 again: the notify of a ring whose count this thread has
      // already taken can arrive after it went back to sleep. Sleep on until the deadline.
      Atomics.wait(this.word, 0, 0, left === Number.POSITIVE_INFINITY ? undefined : left);
    }
  }

  /**
   * @inheritdoc
   * @throws RangeError naming `timeoutMs` if it is negative or NaN
   */
  wait(timeoutMs?: number): Promise<boolean> {
    checkTimeout(timeoutMs);
    if (Atomics.load(this.word, 0) !== 0) return Promise.resolve(true);
    if (waitAsync !== undefined) return this.#waitAsync(deadlineOf(timeoutMs));
    return this.#poll(timeoutMs ?? Number.POSITIVE_INFINITY);
  }

  /**
   * `Atomics.waitAsync` until the word is non-zero or `deadline` (on the `now` clock) passes; a
   * stale notify (see {@link SharedDoorbell.waitSync}) sends it back to sleep.
   */
  async #waitAsync(deadline: number): Promise<boolean> {
    for (;;) {
      if (Atomics.load(this.word, 0) !== 0) return true;
      const left = deadline - now();
      if (left <= 0) return false;
      const r = waitAsync!(this.word, 0, 0, left === Number.POSITIVE_INFINITY ? undefined : left);
      if (r.async) await r.value;
    }
  }

  /** Fallback where `Atomics.waitAsync` is missing: poll every millisecond. */
  #poll(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    return new Promise<boolean>((resolve) => {
      const tick = (): void => {
        if (Atomics.load(this.word, 0) !== 0) resolve(true);
        else if (Date.now() >= deadline) resolve(false);
        else host.setTimeout(tick, 1);
      };
      tick();
    });
  }
}
