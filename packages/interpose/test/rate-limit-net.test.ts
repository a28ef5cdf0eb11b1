import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { rateLimitNet } from "../src/index.js";
import { FakeClock } from "./helpers/rate-limit-clock.js";

/** A NetBackend that records copies of the frames it is given. */
class Recorder implements NetBackend {
  readonly frames: number[][] = [];
  accept = true;
  sink: NetFrameSink | undefined;
  transmit(frame: Uint8Array): boolean {
    if (!this.accept) return false;
    this.frames.push([...frame]);
    return true;
  }
  attach(sink: NetFrameSink): void {
    this.sink = sink;
  }
  detach(): void {
    this.sink = undefined;
  }
}

function frame(tag: number, len = 60): Uint8Array {
  return new Uint8Array(len).fill(tag);
}

describe("rateLimitNet", () => {
  it("sends frames within the burst at once and queues the rest, in order", async () => {
    const clock = new FakeClock();
    const inner = new Recorder();
    const net = rateLimitNet(inner, { framesPerSecond: 10, burstFrames: 2, clock });
    const guestBuf = frame(1);
    expect(net.transmit(guestBuf)).toBe(true);
    expect(net.transmit(frame(2))).toBe(true);
    expect(net.transmit(guestBuf)).toBe(true); // queued: a copy, so the guest may reuse it
    guestBuf.fill(9);
    expect(net.transmit(frame(4))).toBe(true);
    expect(inner.frames.map((f) => f[0])).toEqual([1, 2]);
    expect(net.queuedFrames).toBe(2);
    await clock.advance(100);
    expect(inner.frames.map((f) => f[0])).toEqual([1, 2, 1]);
    await clock.advance(100);
    expect(inner.frames.map((f) => f[0])).toEqual([1, 2, 1, 4]);
    expect(net.stats).toEqual({ sent: 4, sentBytes: 240, queued: 2, dropped: 0, innerDropped: 0 });
  });

  it("drops and counts frames beyond the bounded queue, and transmit returns false", async () => {
    const clock = new FakeClock();
    const inner = new Recorder();
    const net = rateLimitNet(inner, { framesPerSecond: 1, burstFrames: 1, queueFrames: 3, clock });
    const accepted = Array.from({ length: 10 }, (_, i) => net.transmit(frame(i)));
    expect(accepted).toEqual([true, true, true, true, false, false, false, false, false, false]);
    expect(net.stats.dropped).toBe(6);
    await clock.advance(10_000);
    expect(inner.frames.map((f) => f[0])).toEqual([0, 1, 2, 3]);
  });

  it("limits bytes per second, holding queue storage to queueBytes", async () => {
    const clock = new FakeClock();
    const inner = new Recorder();
    // 10 000 bytes/s, 1000-byte frames: 10 frames per second after a 2-frame burst.
    const net = rateLimitNet(inner, {
      bytesPerSecond: 10_000,
      burstBytes: 2000,
      queueBytes: 2500,
      clock,
    });
    const accepted = Array.from({ length: 6 }, (_, i) => net.transmit(frame(i, 1000)));
    // Two pass, two fit in 2500 bytes of queue, the rest are dropped.
    expect(accepted).toEqual([true, true, true, true, false, false]);
    await clock.advance(100);
    expect(inner.frames.length).toBe(3);
    // Storage wraps: a frame fits again at the start once the oldest left.
    expect(net.transmit(frame(7, 1000))).toBe(true);
    await clock.advance(1000);
    expect(inner.frames.map((f) => f[0])).toEqual([0, 1, 2, 3, 7]);
    expect(inner.frames.every((f) => f.length === 1000 && f.every((b) => b === f[0]))).toBe(true);
  });

  it("passes attach, detach and rxReady through unlimited", () => {
    const inner = new Recorder();
    const net = rateLimitNet(inner, { framesPerSecond: 1 });
    const sink: NetFrameSink = { deliver: () => true };
    net.attach(sink);
    expect(inner.sink).toBe(sink);
    net.rxReady();
    net.detach();
    expect(inner.sink).toBeUndefined();
  });

  it("counts queued frames the inner back-end refuses later", async () => {
    const clock = new FakeClock();
    const inner = new Recorder();
    const net = rateLimitNet(inner, { framesPerSecond: 1, burstFrames: 1, clock });
    net.transmit(frame(1));
    net.transmit(frame(2));
    inner.accept = false;
    await clock.advance(1000);
    expect(net.stats.innerDropped).toBe(1);
    expect(net.stats.sent).toBe(1);
  });

  it("rejects bad configuration with errors naming the option", () => {
    const inner = new Recorder();
    expect(() => rateLimitNet(inner, {})).toThrow(TypeError);
    expect(() => rateLimitNet(inner, { framesPerSecond: 0 })).toThrow(/options\.framesPerSecond/);
    expect(() => rateLimitNet(inner, { bytesPerSecond: -1 })).toThrow(/options\.bytesPerSecond/);
    expect(() => rateLimitNet(inner, { framesPerSecond: 1, queueFrames: 1.5 })).toThrow(
      /options\.queueFrames/,
    );
    expect(() => rateLimitNet(inner, { framesPerSecond: 1, queueBytes: -1 })).toThrow(
      /options\.queueBytes/,
    );
  });
});
