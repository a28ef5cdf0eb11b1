import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import {
  checkCount,
  DEFAULT_MAX_FRAME_SIZE,
  Endpoint,
  ETH_HEADER_LEN,
  type NetPortStats,
  type NetQueueOptions,
} from "./endpoint.js";

/** Options of a {@link VethPair}. */
export interface VethPairOptions extends NetQueueOptions {
  /** Longest frame accepted (bytes, Ethernet header included). Default 65553. */
  readonly maxFrameSize?: number;
  /** How deep `transmit` may re-enter itself (echo loops) before dropping as `loop`. Default 8. */
  readonly maxForwardDepth?: number;
}

const END_TOKEN: unique symbol = Symbol("VethEnd");

/**
 * One end of a {@link VethPair}: what it transmits is delivered to the other end's sink
 * (or queued there, bounded, or dropped and counted).
 */
export class VethEnd implements NetBackend {
  /** @internal */
  readonly endpoint: Endpoint;
  /** @internal */
  peer!: VethEnd;
  readonly #maxFrameSize: number;
  readonly #maxDepth: number;
  #depth = 0;

  /** @internal Use {@link VethPair}. */
  constructor(endpoint: Endpoint, maxFrameSize: number, maxDepth: number, token: typeof END_TOKEN) {
    if (token !== END_TOKEN) throw new TypeError("use new VethPair() to create veth ends");
    this.endpoint = endpoint;
    this.#maxFrameSize = maxFrameSize;
    this.#maxDepth = maxDepth;
  }

  /**
   * Counters of this end: `rx` counts frames this end's device transmitted, `tx` frames
   * delivered to this end's device (a live view).
   */
  get stats(): NetPortStats {
    return this.endpoint.stats;
  }

  /** Frames waiting in this end's receive queue. */
  get queuedFrames(): number {
    return this.endpoint.ring.length;
  }

  /**
   * Send one frame to the other end.
   * @param frame - a plain Ethernet frame, valid only during the call
   * @returns false if dropped at ingress (runt, oversize, loop)
   */
  transmit(frame: Uint8Array): boolean {
    const stats = this.endpoint.stats;
    if (frame.length < ETH_HEADER_LEN) {
      stats.drops.runt++;
      return false;
    }
    if (frame.length > this.#maxFrameSize) {
      stats.drops.oversize++;
      return false;
    }
    if (this.#depth >= this.#maxDepth) {
      stats.drops.loop++;
      return false;
    }
    stats.rxFrames++;
    stats.rxBytes += frame.length;
    this.#depth++;
    try {
      this.peer.endpoint.offer(frame);
    } finally {
      this.#depth--;
    }
    return true;
  }

  /**
   * Deliver frames from the other end to `sink`; queued frames are delivered at once.
   * @param sink - the device's receive path
   * @throws TypeError if `sink` has no `deliver` method
   */
  attach(sink: NetFrameSink): void {
    this.endpoint.attach(sink);
  }

  /** Stop delivering; queued frames are dropped (counted as `down`). */
  detach(): void {
    this.endpoint.detach();
  }

  /** The device has receive buffers again: deliver queued frames until it refuses one. */
  rxReady(): void {
    this.endpoint.flush();
  }
}

/**
 * Two `NetBackend`s wired back to back, like a Linux veth pair: a frame transmitted on
 * {@link VethPair.a} is delivered to the device attached to {@link VethPair.b}, and the other
 * way round. No learning, no filtering; each end has its own bounded receive queue.
 *
 * @example
 * ```ts
 * import { VethPair } from "@virtio-ts/backend-net";
 *
 * const { a, b } = new VethPair();
 * b.attach({ deliver: (frame) => b.transmit(frame) }); // echo everything back
 * a.attach({ deliver: (frame) => (console.log("echo", frame.length), true) });
 * a.transmit(new Uint8Array(60));
 * ```
 */
export class VethPair {
  /** One end. */
  readonly a: VethEnd;
  /** The other end. */
  readonly b: VethEnd;

  /**
   * @param options - queue bounds (per end) and maximum frame size
   * @throws RangeError / TypeError naming the bad option
   */
  constructor(options: VethPairOptions = {}) {
    const max = checkCount(
      "options.maxFrameSize",
      options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      ETH_HEADER_LEN,
      1 << 24,
    );
    const depth = checkCount("options.maxForwardDepth", options.maxForwardDepth ?? 8, 1, 1024);
    this.a = new VethEnd(new Endpoint(options), max, depth, END_TOKEN);
    this.b = new VethEnd(new Endpoint(options), max, depth, END_TOKEN);
    this.a.peer = this.b;
    this.b.peer = this.a;
  }
}
