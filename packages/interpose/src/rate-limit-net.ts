import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import { checkPositive, type RateClock, systemClock, TokenBucket } from "./token-bucket.js";

/** Options of {@link rateLimitNet}. At least one of the two rates is required. */
export interface NetRateLimitOptions {
  /** Transmitted frames per second. */
  readonly framesPerSecond?: number;
  /** Transmitted bytes per second (Ethernet frame bytes, no `virtio_net_hdr`). */
  readonly bytesPerSecond?: number;
  /** Frame bucket size. Default a tenth of a second's worth, at least 1. */
  readonly burstFrames?: number;
  /** Byte bucket size. Default a tenth of a second's worth, at least 1514. */
  readonly burstBytes?: number;
  /** Frames held while waiting for tokens (the queue bound). Default 256; 0 drops at once. */
  readonly queueFrames?: number;
  /** Bytes of the preallocated queue storage. Default 256 KiB. */
  readonly queueBytes?: number;
  /** Time source (default {@link systemClock}); tests inject a fake one. */
  readonly clock?: RateClock;
}

/** Counters of a {@link RateLimitedNetBackend} (mutated in place). */
export interface NetRateLimitStats {
  /** Frames passed to the inner back-end (at once or from the queue). */
  sent: number;
  /** Bytes of those frames. */
  sentBytes: number;
  /** Frames that had to wait in the queue. */
  queued: number;
  /** Frames dropped because the queue was full (`transmit` returned false). */
  dropped: number;
  /** Queued frames the inner back-end refused when they were finally sent. */
  innerDropped: number;
}

/**
 * A {@link NetBackend} that limits what the guest transmits (frames/s and bytes/s, token
 * buckets with burst) before it reaches `inner`. Frames over the budget wait in a bounded FIFO
 * — at most `queueFrames` frames and `queueBytes` bytes, copied into storage allocated once —
 * and are sent in order as tokens come back; when the FIFO is full the frame is dropped,
 * counted, and `transmit` returns false. A frame that passes at once is handed to `inner`
 * without a copy. Receive (network → guest) is not limited: `attach`, `detach` and `rxReady`
 * go straight to `inner`.
 */
export class RateLimitedNetBackend implements NetBackend {
  /** The wrapped back-end. */
  readonly inner: NetBackend;
  /** Counters. */
  readonly stats: NetRateLimitStats = {
    sent: 0,
    sentBytes: 0,
    queued: 0,
    dropped: 0,
    innerDropped: 0,
  };
  readonly #frames: TokenBucket | undefined;
  readonly #bytes: TokenBucket | undefined;
  readonly #clock: RateClock;
  /** Queue storage: frame bytes in a ring, each frame contiguous. */
  readonly #store: Uint8Array;
  readonly #off: Uint32Array;
  readonly #len: Uint32Array;
  #head = 0;
  #count = 0;
  /** Where the next frame goes, and whether the used region wraps past the end. */
  #write = 0;
  #wrapped = false;
  #timer: unknown = undefined;
  readonly #onTimer = (): void => {
    this.#timer = undefined;
    this.#drain();
  };

  /**
   * @param inner - the back-end frames go to
   * @param options - rates, bursts, queue bounds, clock
   * @throws TypeError when neither rate is given; RangeError naming the bad option
   */
  constructor(inner: NetBackend, options: NetRateLimitOptions) {
    const { framesPerSecond: fps, bytesPerSecond: bps } = options;
    if (fps === undefined && bps === undefined) {
      throw new TypeError("options must set framesPerSecond or bytesPerSecond");
    }
    this.inner = inner;
    this.#clock = options.clock ?? systemClock;
    if (fps !== undefined) {
      checkPositive("options.framesPerSecond", fps);
      const burst = options.burstFrames ?? Math.max(fps / 10, 1);
      checkPositive("options.burstFrames", burst);
      this.#frames = new TokenBucket(fps, burst, this.#clock);
    }
    if (bps !== undefined) {
      checkPositive("options.bytesPerSecond", bps);
      const burst = options.burstBytes ?? Math.max(bps / 10, 1514);
      checkPositive("options.burstBytes", burst);
      this.#bytes = new TokenBucket(bps, burst, this.#clock);
    }
    const qf = options.queueFrames ?? 256;
    if (!Number.isSafeInteger(qf) || qf < 0 || qf > 1 << 20) {
      throw new RangeError(`options.queueFrames must be an integer in [0, 2^20], got ${qf}`);
    }
    const qb = options.queueBytes ?? 256 << 10;
    if (!Number.isSafeInteger(qb) || qb < 0 || qb > 1 << 30) {
      throw new RangeError(`options.queueBytes must be an integer in [0, 2^30], got ${qb}`);
    }
    this.#store = new Uint8Array(qf === 0 ? 0 : qb);
    this.#off = new Uint32Array(qf);
    this.#len = new Uint32Array(qf);
  }

  /** Frames waiting for tokens. */
  get queuedFrames(): number {
    return this.#count;
  }

  /** @inheritdoc */
  transmit(frame: Uint8Array): boolean {
    if (this.#count === 0 && this.#wait(frame.length) === 0) {
      this.#charge(frame.length);
      return this.#send(frame);
    }
    const at = this.#reserve(frame.length);
    if (at < 0) {
      this.stats.dropped++;
      return false;
    }
    // The view is valid only during this call (NetBackend contract): copy it.
    this.#store.set(frame, at);
    const slot = (this.#head + this.#count) % this.#off.length;
    this.#off[slot] = at;
    this.#len[slot] = frame.length;
    this.#count++;
    this.stats.queued++;
    if (this.#timer === undefined) {
      this.#timer = this.#clock.setTimer(this.#wait(this.#len[this.#head]!), this.#onTimer);
    }
    return true;
  }

  /** @inheritdoc */
  attach(sink: NetFrameSink): void {
    this.inner.attach(sink);
  }

  /** @inheritdoc */
  detach(): void {
    this.inner.detach();
  }

  /** @inheritdoc */
  rxReady(): void {
    this.inner.rxReady?.();
  }

  #send(frame: Uint8Array): boolean {
    const ok = this.inner.transmit(frame);
    if (ok) {
      this.stats.sent++;
      this.stats.sentBytes += frame.length;
    }
    return ok;
  }

  #wait(bytes: number): number {
    const a = this.#frames?.msUntil(1) ?? 0;
    const b = this.#bytes?.msUntil(bytes) ?? 0;
    return Math.max(a, b);
  }

  #charge(bytes: number): void {
    this.#frames?.take(1);
    this.#bytes?.take(bytes);
  }

  /** Offset for `len` contiguous bytes in the ring, or -1 when the queue is full. */
  #reserve(len: number): number {
    const cap = this.#off.length;
    if (this.#count >= cap || len > this.#store.length) return -1;
    if (this.#count === 0) {
      this.#write = 0;
      this.#wrapped = false;
    }
    const oldest = this.#count === 0 ? 0 : this.#off[this.#head]!;
    if (!this.#wrapped) {
      if (this.#write + len <= this.#store.length) return this.#advance(len);
      // No room at the end: start again at 0 if the oldest frame leaves space before it.
      if (len <= oldest) {
        this.#write = 0;
        this.#wrapped = true;
        return this.#advance(len);
      }
      return -1;
    }
    return this.#write + len <= oldest ? this.#advance(len) : -1;
  }

  #advance(len: number): number {
    const at = this.#write;
    this.#write += len;
    return at;
  }

  /** Send queued frames in order while the buckets allow; re-arm the timer for the rest. */
  #drain(): void {
    while (this.#count > 0) {
      const len = this.#len[this.#head]!;
      const wait = this.#wait(len);
      if (wait > 0) {
        this.#timer = this.#clock.setTimer(wait, this.#onTimer);
        return;
      }
      this.#charge(len);
      const off = this.#off[this.#head]!;
      this.#head = (this.#head + 1) % this.#off.length;
      this.#count--;
      // The next oldest frame starting before this one means the ring unwrapped.
      if (this.#count > 0 && this.#off[this.#head]! < off) this.#wrapped = false;
      if (!this.#send(this.#store.subarray(off, off + len))) this.stats.innerDropped++;
    }
  }
}

/**
 * Limit what a guest transmits through `inner` (see {@link RateLimitedNetBackend}).
 * @param inner - the back-end frames go to
 * @param options - rates, bursts, queue bounds, clock
 * @throws TypeError when neither rate is given; RangeError naming the bad option
 * @example
 * ```ts
 * const port = rateLimitNet(sw.createPort(), { bytesPerSecond: 12_500_000 }); // 100 Mbit/s
 * ```
 */
export function rateLimitNet(
  inner: NetBackend,
  options: NetRateLimitOptions,
): RateLimitedNetBackend {
  return new RateLimitedNetBackend(inner, options);
}
