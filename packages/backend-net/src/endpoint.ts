import type { NetFrameSink } from "@virtio-ts/devices";
import { ETH_HLEN } from "@virtio-ts/spec";
import { FrameRing } from "./frame-ring.js";

/**
 * Why a frame was dropped. Each reason has its own counter in {@link NetPortStats.drops}.
 * - `runt`: shorter than an Ethernet header (14 bytes).
 * - `oversize`: longer than the configured maximum frame size.
 * - `queueFull`: the receiving device refused it and the bounded receive queue was full.
 * - `down`: nobody was attached to receive it, or it was queued when the device detached.
 * - `loop`: forwarding re-entered the switch deeper than its recursion budget (a device that
 *   transmits from inside `deliver`, in a cycle).
 * - `sameSegment`: the destination was learned on the port the frame came in on.
 * - `sinkError`: the receiving device's `deliver` threw.
 */
export type NetDropReason =
  | "runt"
  | "oversize"
  | "queueFull"
  | "down"
  | "loop"
  | "sameSegment"
  | "sinkError";

/**
 * Counters of one switch port or veth end, seen from the port (as on a switch): `rx` is what
 * the port received from the device attached to it (its `NetBackend.transmit` calls that
 * were accepted), `tx` is what the port delivered to that device's `NetFrameSink`.
 * Counters only grow.
 */
export interface NetPortStats {
  /** Frames received from the attached device and accepted for forwarding. */
  readonly rxFrames: number;
  /** Bytes of those frames. */
  readonly rxBytes: number;
  /** Frames delivered to the attached device (`deliver` returned true). */
  readonly txFrames: number;
  /** Bytes of those frames. */
  readonly txBytes: number;
  /** Dropped frames by reason; a frame counts once, at the port that dropped it. */
  readonly drops: Readonly<Record<NetDropReason, number>>;
}

/** Options of the per-port bounded receive queue. */
export interface NetQueueOptions {
  /**
   * Frames a port holds when its device refuses a delivery (no receive buffers), until
   * `NetBackend.rxReady`. Beyond this, frames are dropped as `queueFull`. Default 256;
   * 0 disables queueing.
   */
  readonly queueFrames?: number;
  /**
   * Byte budget of that queue (one arena allocated on first use). Default 1 MiB.
   */
  readonly queueBytes?: number;
}

/** Default {@link NetQueueOptions.queueFrames}. */
export const DEFAULT_QUEUE_FRAMES = 256;
/** Default {@link NetQueueOptions.queueBytes}. */
export const DEFAULT_QUEUE_BYTES = 1 << 20;
/**
 * Default maximum frame size: the largest IPv4 datagram (65535) plus an Ethernet header with
 * one VLAN tag (18). Frames never carry an FCS or a `virtio_net_hdr` here.
 */
export const DEFAULT_MAX_FRAME_SIZE = 65_535 + 18;
/**
 * The Ethernet header: destination MAC, source MAC, EtherType. Shorter frames are runts.
 * @deprecated The same value as `ETH_HLEN` of `@virtio-ts/spec`, the one home of the Ethernet
 *   constants; use that.
 */
export const ETH_HEADER_LEN: number = ETH_HLEN;

/** @internal */
export interface MutableStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  drops: Record<NetDropReason, number>;
}

/** @internal */
export function newStats(): MutableStats {
  return {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    drops: {
      runt: 0,
      oversize: 0,
      queueFull: 0,
      down: 0,
      loop: 0,
      sameSegment: 0,
      sinkError: 0,
    },
  };
}

/** @internal */
export function checkCount(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number") throw new TypeError(`${name} must be a number`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** @internal */
export function checkSink(sink: unknown): NetFrameSink {
  if (
    typeof sink !== "object" ||
    sink === null ||
    typeof (sink as NetFrameSink).deliver !== "function"
  ) {
    throw new TypeError("sink must be an object with a deliver(frame) method");
  }
  return sink as NetFrameSink;
}

/**
 * The receive side of one port: the attached sink, the bounded queue of refused frames and
 * the counters. Shared by switch ports and veth ends.
 *
 * @internal
 */
export class Endpoint {
  readonly stats: MutableStats = newStats();
  readonly ring: FrameRing;
  #sink: NetFrameSink | undefined;
  #flushing = false;
  #generation = 0;

  constructor(options: NetQueueOptions | undefined) {
    const frames = checkCount(
      "options.queueFrames",
      options?.queueFrames ?? DEFAULT_QUEUE_FRAMES,
      0,
      1 << 20,
    );
    const bytes = checkCount(
      "options.queueBytes",
      options?.queueBytes ?? DEFAULT_QUEUE_BYTES,
      0,
      1 << 30,
    );
    this.ring = new FrameRing(Math.max(frames, 1), frames === 0 ? 0 : bytes);
  }

  get attached(): boolean {
    return this.#sink !== undefined;
  }

  attach(sink: NetFrameSink): void {
    this.#sink = checkSink(sink);
    this.flush();
  }

  detach(): void {
    this.#sink = undefined;
    this.#generation++;
    // Frames queued for a device that went away are stale: a reset guest must not see them.
    this.stats.drops.down += this.ring.clear();
  }

  /** Give one frame to the attached device: deliver now, queue it, or drop and count. */
  offer(frame: Uint8Array): void {
    const sink = this.#sink;
    if (sink === undefined) {
      this.stats.drops.down++;
      return;
    }
    // Deliver directly only when nothing older is waiting, so frames keep their order.
    if (this.ring.length === 0 && !this.#flushing) {
      let ok: boolean;
      try {
        ok = sink.deliver(frame);
      } catch {
        this.stats.drops.sinkError++;
        return;
      }
      if (ok) {
        this.stats.txFrames++;
        this.stats.txBytes += frame.length;
        return;
      }
    }
    if (!this.ring.push(frame)) this.stats.drops.queueFull++;
  }

  /** Deliver queued frames until the device refuses one. */
  flush(): void {
    // A deliver that calls rxReady again must not start a second, interleaved flush.
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      for (;;) {
        const sink = this.#sink; // re-read: deliver may detach or re-attach
        const frame = this.ring.peek();
        if (sink === undefined || frame === undefined) break;
        const generation = this.#generation;
        let delivered: boolean;
        let threw = false;
        try {
          delivered = sink.deliver(frame);
        } catch {
          this.stats.drops.sinkError++;
          delivered = false;
          threw = true;
        }
        if (delivered) {
          this.stats.txFrames++;
          this.stats.txBytes += frame.length;
        }
        if (generation !== this.#generation) {
          // A detach inside deliver emptied the queue and counted this frame as dropped too.
          if (delivered) this.stats.drops.down--;
          continue;
        }
        if (!delivered && !threw) break;
        this.ring.shift();
      }
    } finally {
      this.#flushing = false;
    }
  }
}
