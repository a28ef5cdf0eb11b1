import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import type { CaptureDirection } from "./pcap.js";

/**
 * Where a {@link sniff} wrapper sends the frames it sees: a `PcapngWriter` (`@virtio-ts/interpose/node`) or anything
 * shaped like it.
 *
 * Implementer contract: `record` copies what it keeps before returning (the frame may be a view
 * of guest memory), never throws and never blocks; `retract` undoes the record `token` names
 * when it can.
 */
export interface FrameRecorder {
  /**
   * Record one frame.
   * @param iface - capture interface index
   * @param frame - the frame, valid only during the call
   * @param direction - seen from the guest
   * @returns a token for `retract`, 0 if the record was dropped
   */
  record(iface: number, frame: Uint8Array, direction: CaptureDirection): number;
  /**
   * Undo a record if still possible.
   * @param token - what `record` returned
   * @returns whether it was undone
   */
  retract(token: number): boolean;
}

/** Options of {@link sniff}. */
export interface SniffOptions {
  /** Capture interface index passed to the recorder. Default 0. */
  readonly iface?: number;
}

/**
 * A {@link NetBackend} that passes every frame through to `inner` unchanged and records it on
 * the way: frames the guest transmits as `outbound`, frames `inner` delivers to the guest as
 * `inbound`. Recording never changes what the guest sees: a dropped capture record (the
 * recorder is full or failed) is counted by the recorder, the frame still goes through.
 *
 * **Ordering.** Each frame is recorded *before* it is passed on, so a reply produced
 * synchronously while a frame is being handled is recorded after that frame. A delivery the
 * guest refuses (no receive buffers; `inner` will offer it again) is retracted from the
 * capture so the retry is not recorded twice; if other frames were recorded in between, the
 * refused copy stays in the capture.
 *
 * @param inner - the back-end to observe
 * @param recorder - where records go, typically a `PcapngWriter` (`@virtio-ts/interpose/node`)
 * @param options - the capture interface index
 * @returns the wrapper, to hand to the device in place of `inner`
 * @throws TypeError if `inner` or `recorder` has the wrong shape; RangeError for a bad `options.iface` (negative, or not one of the
 *   recorder's `interfaces` when it lists them)
 *
 * @example
 * ```ts
 * import { sniff } from "@virtio-ts/interpose";
 * import { PcapngWriter } from "@virtio-ts/interpose/node";
 * import type { NetBackend } from "@virtio-ts/devices";
 *
 * declare const port: NetBackend;
 * const pcap = new PcapngWriter("/tmp/vm0.pcapng", { interfaces: ["vm0"] });
 * const tapped: NetBackend = sniff(port, pcap);
 * ```
 */
export function sniff(
  inner: NetBackend,
  recorder: FrameRecorder,
  options: SniffOptions = {},
): NetBackend {
  if (
    typeof inner !== "object" ||
    inner === null ||
    typeof inner.transmit !== "function" ||
    typeof inner.attach !== "function" ||
    typeof inner.detach !== "function"
  ) {
    throw new TypeError("inner must be a NetBackend (transmit, attach, detach)");
  }
  if (
    typeof recorder !== "object" ||
    recorder === null ||
    typeof recorder.record !== "function" ||
    typeof recorder.retract !== "function"
  ) {
    throw new TypeError("recorder must have record and retract methods");
  }
  const iface = options.iface ?? 0;
  if (!Number.isInteger(iface) || iface < 0 || iface > 0xffff_ffff) {
    throw new RangeError(`options.iface must be a non-negative integer, got ${String(iface)}`);
  }
  const names = (recorder as { interfaces?: unknown }).interfaces;
  if (Array.isArray(names) && iface >= names.length) {
    throw new RangeError(
      `options.iface must be below the recorder's ${names.length} interfaces, got ${iface}`,
    );
  }
  return new SniffedBackend(inner, recorder, iface);
}

class SniffedBackend implements NetBackend {
  readonly #inner: NetBackend;
  readonly #recorder: FrameRecorder;
  readonly #iface: number;
  #sink: NetFrameSink | undefined;
  /** Made once: delivering allocates nothing. */
  readonly #wrapped: NetFrameSink = {
    deliver: (frame: Uint8Array): boolean => {
      const sink = this.#sink;
      if (sink === undefined) return false;
      const token = this.#recorder.record(this.#iface, frame, "inbound");
      const ok = sink.deliver(frame);
      if (!ok) this.#recorder.retract(token);
      return ok;
    },
  };

  constructor(inner: NetBackend, recorder: FrameRecorder, iface: number) {
    this.#inner = inner;
    this.#recorder = recorder;
    this.#iface = iface;
  }

  transmit(frame: Uint8Array): boolean {
    this.#recorder.record(this.#iface, frame, "outbound");
    return this.#inner.transmit(frame);
  }

  attach(sink: NetFrameSink): void {
    if (typeof sink !== "object" || sink === null || typeof sink.deliver !== "function") {
      throw new TypeError("sink must have a deliver method");
    }
    this.#sink = sink;
    this.#inner.attach(this.#wrapped);
  }

  detach(): void {
    this.#sink = undefined;
    this.#inner.detach();
  }

  rxReady(): void {
    this.#inner.rxReady?.();
  }
}
