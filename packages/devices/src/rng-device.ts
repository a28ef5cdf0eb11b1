import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import { DeviceId, Feature, featureMask, RngQueue } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import { checkQueueSizeOption, DescriptorChain } from "@virtio-ts/virtqueue";
import { defaultTimer } from "./host-timer.js";
import { CryptoEntropySource, type EntropySource } from "./rng-backend.js";

/** The largest `maxRequestBytes` a {@link RngDevice} accepts (1 MiB). */
export const RNG_MAX_REQUEST_BYTES = 1 << 20;

/** Why an entropy request chain was refused. */
export type RngRequestErrorCode =
  /** The chain has device-readable descriptors (§5.4.6.1: the driver MUST NOT). */
  | "rng-readable-descriptor"
  /** The chain has no device-writable byte: nothing to fill. */
  | "rng-no-writable";

/**
 * One entropy request is malformed (a guest fault the device survives). Reported through
 * `ctx.noteFault`, never thrown: the chain is returned used with length 0 and the device keeps
 * serving.
 */
export class RngRequestError extends VirtioError {
  /** @inheritdoc */
  readonly code: RngRequestErrorCode;
  /** The chain's id (split: head descriptor index; packed: buffer ID). */
  readonly head: number;
  /** Device-readable bytes in the chain (guest-controlled). */
  readonly readableBytes: number;
  /** Device-writable bytes in the chain (guest-controlled). */
  readonly writableBytes: number;

  /**
   * @param code - what is wrong
   * @param head - chain id
   * @param readableBytes - readable bytes of the chain
   * @param writableBytes - writable bytes of the chain
   */
  constructor(
    code: RngRequestErrorCode,
    head: number,
    readableBytes: number,
    writableBytes: number,
  ) {
    super(
      `virtio-rng request ${code} (chain ${head}, ${readableBytes} readable, ${writableBytes} writable bytes)`,
    );
    this.code = code;
    this.head = head;
    this.readableBytes = readableBytes;
    this.writableBytes = writableBytes;
  }
}

/** A timer API (for the rate limit); `setTimeout` / `clearTimeout` shaped. */
export interface RngTimer {
  /** Current time in milliseconds (monotonic is best). */
  now(): number;
  /** Call `fn` after `ms` milliseconds; returns a handle for {@link RngTimer.cancel}. */
  schedule(fn: () => void, ms: number): unknown;
  /** Cancel a scheduled call. */
  cancel(handle: unknown): void;
}

/** Options of a {@link RngDevice}. */
export interface RngDeviceOptions {
  /** Maximum size of the request queue (a power of 2, 2 to 32768). Default 64. */
  readonly queueSize?: number;
  /** Where random bytes come from. Default a {@link CryptoEntropySource}. */
  readonly source?: EntropySource;
  /**
   * Bytes filled per request at most (1 to {@link RNG_MAX_REQUEST_BYTES}); larger buffers are
   * filled partly, which §5.4.6.2 allows. Default 65536.
   */
  readonly maxRequestBytes?: number;
  /**
   * Rate limit in bytes per second (token bucket); undefined means unlimited (each kick is still
   * bounded by queue size × `maxRequestBytes`).
   */
  readonly bytesPerSecond?: number;
  /** Bucket size of the rate limit in bytes (the most served at once). Default `bytesPerSecond` (at most 2^30). */
  readonly burstBytes?: number;
  /** Clock and timer for the rate limit. Default `Date.now` and `globalThis.setTimeout`. */
  readonly timer?: RngTimer;
}

/** Counters of a {@link RngDevice} (mutated in place). */
export interface RngDeviceStats {
  /** Requests popped from the queue. */
  requests: number;
  /** Random bytes written into guest buffers. */
  bytes: number;
  /** Malformed chains (also reported through `ctx.noteFault`), returned with length 0. */
  malformed: number;
  /** Times the queue loop stopped because the rate limit ran out of tokens. */
  throttled: number;
  /** Entropy source failures (the request is returned with length 0). */
  sourceErrors: number;
}

/** Tokens the bucket waits for before it retries (avoids waking up for a few bytes). */
const WAKE_TOKENS = 4096;

/**
 * The entropy device model (VIRTIO 1.3 §5.4): one request queue of device-writable buffers that
 * the device fills with random bytes from an {@link EntropySource}. No device-specific feature
 * bits and no configuration space; ring features INDIRECT_DESC, EVENT_IDX, RING_PACKED,
 * IN_ORDER (requests complete in order, synchronously) and RING_RESET.
 *
 * Each request is filled in place: the writable segments are mapped with `GuestMemory.sg` into
 * a reusable array of views and the source writes straight into guest memory. At most
 * `maxRequestBytes` are filled per request (§5.4.6.2: the device MAY use less than the whole
 * buffer; the used length says how much), so one kick costs at most queue size ×
 * `maxRequestBytes` bytes of entropy; the optional token-bucket rate limit (`bytesPerSecond`)
 * bounds it over time, leaving the remaining requests on the ring until tokens accumulate.
 *
 * Suspend / resume: no `saveState` — requests complete synchronously, so nothing is in flight
 * at a suspend, and the rate limit's bucket starts full at the destination.
 *
 * Hostile chains: §5.4.6.1 says the driver MUST NOT put device-readable buffers in the queue.
 * A chain that does is refused as a whole (used length 0, `RngRequestError`
 * "rng-readable-descriptor" counted with `ctx.noteFault`) rather than served: a driver that
 * breaks the layout gets no entropy, and the device never guesses which part the driver meant.
 * A chain with no writable byte is refused the same way ("rng-no-writable"). A hostile *ring*
 * (`ChainError` / `RingError` from `pop`) puts the device into DEVICE_NEEDS_RESET through the
 * core.
 *
 * @example
 * ```ts
 * const device = new MmioDevice(new RngDevice({ bytesPerSecond: 1 << 20 }), { memory });
 * ```
 */
export class RngDevice implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId = DeviceId.RNG;
  /** @inheritdoc */
  readonly features: bigint = [
    Feature.RING_INDIRECT_DESC,
    Feature.RING_EVENT_IDX,
    Feature.RING_PACKED,
    Feature.IN_ORDER,
    Feature.RING_RESET,
  ].reduce((m, bit) => m | featureMask(bit), 0n);
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** §5.4.4: the entropy device has no configuration space. */
  readonly configSize = 0;
  /** Counters. */
  readonly stats: RngDeviceStats = {
    requests: 0,
    bytes: 0,
    malformed: 0,
    throttled: 0,
    sourceErrors: 0,
  };
  /** The last entropy source failure, for diagnostics. */
  lastSourceError: unknown = undefined;

  readonly #source: EntropySource;
  readonly #maxBytes: number;
  readonly #rate: number;
  readonly #burst: number;
  readonly #timer: RngTimer | undefined;
  readonly #views: Uint8Array[] = [];
  readonly #tmp: Uint8Array[] = [];
  #chain: DescriptorChain | undefined;
  #ctx: DeviceContext | undefined;
  #tokens = 0;
  #last = 0;
  #wake: unknown;
  #waking = false;
  readonly #onWake = (): void => {
    this.#waking = false;
    this.#wake = undefined;
    const ctx = this.#ctx;
    if (ctx !== undefined) ctx.guard(() => this.#drain());
  };

  /**
   * @param options - queue size, source, per-request cap, rate limit
   * @throws RangeError naming the bad option; TypeError if no source or timer is available
   */
  constructor(options: RngDeviceOptions = {}) {
    const qs = checkQueueSizeOption("options.queueSize", options.queueSize ?? 64);
    const max = options.maxRequestBytes ?? 65536;
    if (!Number.isInteger(max) || max < 1 || max > RNG_MAX_REQUEST_BYTES) {
      throw new RangeError(
        `options.maxRequestBytes must be an integer in [1, ${RNG_MAX_REQUEST_BYTES}], got ${max}`,
      );
    }
    const rate = options.bytesPerSecond;
    if (rate !== undefined && (!Number.isFinite(rate) || rate <= 0)) {
      throw new RangeError(`options.bytesPerSecond must be a positive number, got ${rate}`);
    }
    const burst = options.burstBytes ?? Math.min(Math.max(rate ?? 1, 1), 1 << 30);
    if (!Number.isFinite(burst) || burst < 1) {
      throw new RangeError(`options.burstBytes must be at least 1, got ${burst}`);
    }
    this.queueMaxSizes = [qs];
    this.#source = options.source ?? new CryptoEntropySource();
    this.#maxBytes = max;
    this.#rate = rate ?? 0;
    this.#burst = burst;
    this.#timer = rate === undefined ? undefined : (options.timer ?? defaultTimer());
    this.#tokens = burst;
    this.#last = this.#timer?.now() ?? 0;
  }

  /** Whether a rate-limit wake-up is pending (requests wait on the ring for tokens). */
  get throttled(): boolean {
    return this.#waking;
  }

  /** §5.4.4: no configuration space; never called by the core (`configSize` is 0). */
  readConfig(_offset: number, _size: 1 | 2 | 4): number {
    return 0;
  }

  /** §5.4.4: no configuration space; never called by the core (`configSize` is 0). */
  writeConfig(_offset: number, _size: 1 | 2 | 4, _value: number): void {}

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#makeChain();
    this.#drain();
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    if (index === RngQueue.REQUEST) this.#drain();
  }

  /** @inheritdoc */
  onQueueEnable(index: number): void {
    if (index === RngQueue.REQUEST) this.#makeChain();
  }

  /** @inheritdoc */
  onQueueReset(index: number): void {
    if (index === RngQueue.REQUEST) this.#cancelWake();
  }

  /** Forget the context and any pending wake-up; the rate-limit bucket is refilled. */
  reset(): void {
    this.#cancelWake();
    this.#ctx = undefined;
    this.#tokens = this.#burst;
  }

  #makeChain(): void {
    const q = this.#ctx?.queue(RngQueue.REQUEST);
    if (q !== undefined && (this.#chain === undefined || this.#chain.capacity < q.size)) {
      this.#chain = new DescriptorChain(q.size);
    }
  }

  #cancelWake(): void {
    if (this.#waking) this.#timer?.cancel(this.#wake);
    this.#waking = false;
    this.#wake = undefined;
  }

  /** Serve available requests while tokens last. A `VirtioError` from `pop` propagates. */
  #drain(): void {
    const ctx = this.#ctx;
    const q = ctx?.queue(RngQueue.REQUEST);
    const chain = this.#chain;
    if (ctx === undefined || q === undefined || chain === undefined || this.#waking) return;
    const limited = this.#timer !== undefined;
    if (limited) this.#refill();
    let pushed = false;
    for (;;) {
      if (limited && this.#tokens < 1) {
        this.#sleep();
        break;
      }
      if (!q.pop(chain)) break;
      this.stats.requests++;
      const n = this.#serve(ctx, chain);
      q.push(chain.head, n);
      pushed = true;
    }
    if (pushed) ctx.signalUsed(RngQueue.REQUEST);
  }

  /** Fill one request in place. @returns the used length */
  #serve(ctx: DeviceContext, chain: DescriptorChain): number {
    if (chain.readableCount > 0 || chain.writableBytes === 0) {
      // §5.4.6.1: the driver MUST NOT place device-readable buffers into the queue.
      this.stats.malformed++;
      ctx.noteFault(
        new RngRequestError(
          chain.readableCount > 0 ? "rng-readable-descriptor" : "rng-no-writable",
          chain.head,
          chain.readableBytes,
          chain.writableBytes,
        ),
      );
      return 0;
    }
    let want = Math.min(chain.writableBytes, this.#maxBytes);
    if (this.#timer !== undefined) want = Math.min(want, Math.floor(this.#tokens));
    const mem = ctx.memory;
    const views = this.#views;
    views.length = 0;
    let left = want;
    for (let i = 0; i < chain.count && left > 0; i++) {
      const n = Math.min(chain.lens[i]!, left);
      if (n === 0) continue;
      gatherInto(mem, chain.addrs[i]!, n, this.#tmp, views);
      left -= n;
    }
    try {
      for (let i = 0; i < views.length; i++) this.#source.fill(views[i]!);
    } catch (e) {
      // A host failure, not a guest fault: hand out nothing rather than predictable bytes.
      this.stats.sourceErrors++;
      this.lastSourceError = e;
      views.length = 0;
      return 0;
    }
    views.length = 0;
    if (this.#timer !== undefined) this.#tokens -= want;
    this.stats.bytes += want;
    // §5.4.6.2: one or more random bytes; the used length says how many.
    return want;
  }

  #refill(): void {
    const now = this.#timer!.now();
    const dt = Math.max(0, now - this.#last);
    this.#last = now;
    this.#tokens = Math.min(this.#burst, this.#tokens + (dt * this.#rate) / 1000);
  }

  #sleep(): void {
    this.stats.throttled++;
    const need = Math.min(this.#burst, WAKE_TOKENS, this.#maxBytes) - this.#tokens;
    const ms = Math.max(1, Math.ceil((need * 1000) / this.#rate));
    this.#waking = true;
    this.#wake = this.#timer!.schedule(this.#onWake, ms);
  }
}

/** Append views of `[addr, addr + len)` to `out` (guest memory may split it into pieces). */
function gatherInto(
  mem: GuestMemory,
  addr: number,
  len: number,
  tmp: Uint8Array[],
  out: Uint8Array[],
): void {
  tmp.length = 0;
  const parts = mem.sg(addr, len, tmp, "write");
  for (let i = 0; i < parts.length; i++) out.push(parts[i]!);
  tmp.length = 0;
}
