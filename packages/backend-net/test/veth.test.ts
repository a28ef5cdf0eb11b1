import { describe, expect, it } from "vitest";
import { VethPair } from "../src/index.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";

const A = "02:00:00:00:00:0a";

describe("VethPair", () => {
  it("delivers what one end transmits to the device on the other end, both ways", () => {
    const { a, b } = new VethPair();
    const sa = new RecordingSink();
    const sb = new RecordingSink();
    a.attach(sa);
    b.attach(sb);
    expect(a.transmit(frame(BROADCAST, A, 1))).toBe(true);
    expect(b.transmit(frame(BROADCAST, A, 2))).toBe(true);
    expect([sa.tags, sb.tags]).toEqual([[2], [1]]);
    expect(a.stats).toMatchObject({ rxFrames: 1, rxBytes: 60, txFrames: 1, txBytes: 60 });
  });

  it("queues up to queueFrames refused frames, counts drops beyond and flushes on rxReady", () => {
    const { a, b } = new VethPair({ queueFrames: 3 });
    const sb = new RecordingSink();
    sb.accept = false;
    b.attach(sb);
    for (let i = 0; i < 7; i++) a.transmit(frame(BROADCAST, A, i));
    expect([b.queuedFrames, b.stats.drops.queueFull]).toEqual([3, 4]);
    sb.accept = true;
    b.rxReady();
    expect(sb.tags).toEqual([0, 1, 2]);
  });

  it("drops everything with queueFrames 0 when the device has no room", () => {
    const { a, b } = new VethPair({ queueFrames: 0 });
    b.attach({ deliver: () => false });
    a.transmit(frame(BROADCAST, A));
    expect([b.queuedFrames, b.stats.drops.queueFull]).toEqual([0, 1]);
  });

  it("drops runts and oversize frames and counts them on the sending end", () => {
    const { a, b } = new VethPair({ maxFrameSize: 100 });
    const sb = new RecordingSink();
    b.attach(sb);
    expect(a.transmit(new Uint8Array(10))).toBe(false);
    expect(a.transmit(frame(BROADCAST, A, 0, 101))).toBe(false);
    expect(a.stats.drops).toMatchObject({ runt: 1, oversize: 1 });
    expect(sb.frames.length).toBe(0);
  });

  it("echoes through an end whose device transmits from inside deliver", () => {
    const { a, b } = new VethPair();
    b.attach({ deliver: (f) => b.transmit(f) });
    const sa = new RecordingSink();
    a.attach(sa);
    a.transmit(frame(BROADCAST, A, 4));
    expect(sa.tags).toEqual([4]);
  });

  it("bounds an echo loop between two devices that both retransmit", () => {
    const { a, b } = new VethPair({ maxForwardDepth: 3 });
    a.attach({ deliver: (f) => a.transmit(f) });
    b.attach({ deliver: (f) => b.transmit(f) });
    expect(a.transmit(frame(BROADCAST, A))).toBe(true);
    expect(a.stats.drops.loop + b.stats.drops.loop).toBe(1);
  });
});
