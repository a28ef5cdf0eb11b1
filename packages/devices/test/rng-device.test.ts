import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { DeviceId, DeviceStatus, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio, type MmioDevice, type MmioDriverTransport } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  CryptoEntropySource,
  type EntropySource,
  RngDevice,
  type RngDeviceOptions,
  RngRequestError,
  type RngTimer,
} from "../src/rng.js";

/** A deterministic source: byte i of the stream is (i * 7 + 1) & 0xff. */
class CountingSource implements EntropySource {
  at = 0;
  calls = 0;
  fill(buf: Uint8Array): void {
    this.calls++;
    for (let i = 0; i < buf.length; i++) buf[i] = (this.at++ * 7 + 1) & 0xff;
  }
}

class FakeTimer implements RngTimer {
  t = 0;
  pending: { fn: () => void; at: number } | undefined;
  now(): number {
    return this.t;
  }
  schedule(fn: () => void, ms: number): unknown {
    this.pending = { fn, at: this.t + ms };
    return this.pending;
  }
  cancel(h: unknown): void {
    if (this.pending === h) this.pending = undefined;
  }
  advance(ms: number): void {
    this.t += ms;
    const p = this.pending;
    if (p !== undefined && p.at <= this.t) {
      this.pending = undefined;
      p.fn();
    }
  }
}

interface Rig {
  memory: GuestMemory;
  model: RngDevice;
  device: MmioDevice;
  t: MmioDriverTransport;
  q: DriverQueue<number>;
  negotiated: bigint;
}

function rig(options: RngDeviceOptions = {}, packed = false): Rig {
  const memory = createGuestMemory({ size: 0x100000 });
  const model = new RngDevice({ source: new CountingSource(), queueSize: 16, ...options });
  const { device, transport: t } = new InThreadMmio(model, { memory, delivery: "none" });
  const negotiated = t.negotiate((o) => (packed ? o : o & ~featureMask(Feature.RING_PACKED)));
  const q = t.setupQueue<number>(0, memory, {
    size: 16,
    desc: 0x1000,
    driver: 0x2000,
    device: 0x3000,
  });
  t.driverOk();
  return { memory, model, device, t, q, negotiated };
}

function kick(r: Rig): void {
  if (r.q.publish()) r.t.notify(0);
}

describe("RngDevice", () => {
  it("is an entropy device (ID 4) with no configuration space and one queue", () => {
    const m = new RngDevice({ source: new CountingSource() });
    expect(m.deviceId).toBe(DeviceId.RNG);
    expect(m.deviceId).toBe(4);
    expect(m.configSize).toBe(0);
    expect(m.queueMaxSizes).toEqual([64]);
    expect(hasFeature(m.features, Feature.RING_PACKED)).toBe(true);
  });

  it("fills a device-writable buffer with bytes from the source and reports the length (§5.4.6.2)", () => {
    const r = rig();
    r.memory.fill(0x10000, 64, 0xee);
    r.q.add([], [{ addr: 0x10000, len: 64 }], 1);
    kick(r);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(64);
    const got = r.memory.slice(0x10000, 64);
    for (let i = 0; i < 64; i++) expect(got[i]).toBe((i * 7 + 1) & 0xff);
    expect(r.model.stats).toMatchObject({ requests: 1, bytes: 64, malformed: 0 });
  });

  it("fills every writable segment of a chain in order", () => {
    const r = rig();
    r.q.add(
      [],
      [
        { addr: 0x10000, len: 3 },
        { addr: 0x20000, len: 5 },
      ],
      7,
    );
    kick(r);
    expect(r.q.reap()).toBe(7);
    expect(r.q.lastLen).toBe(8);
    expect([...r.memory.slice(0x10000, 3), ...r.memory.slice(0x20000, 5)]).toEqual(
      Array.from({ length: 8 }, (_, i) => (i * 7 + 1) & 0xff),
    );
  });

  it("caps the bytes of one request at maxRequestBytes and leaves the rest untouched", () => {
    const r = rig({ maxRequestBytes: 100 });
    r.memory.fill(0x10000, 4096, 0xee);
    r.q.add([], [{ addr: 0x10000, len: 4096 }], 1);
    kick(r);
    r.q.reap();
    expect(r.q.lastLen).toBe(100);
    expect(r.memory.readU8(0x10000 + 99)).toBe((99 * 7 + 1) & 0xff);
    expect(r.memory.readU8(0x10000 + 100)).toBe(0xee);
  });

  it("refuses a chain with a device-readable descriptor with length 0 and counts it (§5.4.6.1)", () => {
    const r = rig();
    r.memory.fill(0x10000, 16, 0xee);
    r.q.add([{ addr: 0x11000, len: 8 }], [{ addr: 0x10000, len: 16 }], 1);
    r.q.add([], [{ addr: 0x12000, len: 8 }], 2);
    kick(r);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(0);
    expect(r.q.reap()).toBe(2);
    expect(r.q.lastLen).toBe(8);
    expect(r.memory.slice(0x10000, 16)).toEqual(new Uint8Array(16).fill(0xee));
    expect(r.model.stats.malformed).toBe(1);
    expect(r.device.core.faultCounts.get("rng-readable-descriptor")).toBe(1);
    expect(r.device.core.lastFault).toBeInstanceOf(RngRequestError);
    expect(r.device.core.needsReset).toBe(false);
  });

  it("refuses a readable-only chain (no writable byte) with length 0", () => {
    const r = rig();
    r.q.add([{ addr: 0x11000, len: 8 }], [], 1);
    kick(r);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(0);
    expect(r.device.core.faultCounts.get("rng-readable-descriptor")).toBe(1);
  });

  it("serves requests over a packed ring when RING_PACKED is negotiated", () => {
    const r = rig({}, true);
    expect(hasFeature(r.negotiated, Feature.RING_PACKED)).toBe(true);
    for (let i = 0; i < 4; i++) r.q.add([], [{ addr: 0x10000 + i * 0x100, len: 32 }], i);
    kick(r);
    for (let i = 0; i < 4; i++) {
      expect(r.q.reap()).toBe(i);
      expect(r.q.lastLen).toBe(32);
    }
    expect(r.model.stats.bytes).toBe(128);
  });

  it("returns length 0 and counts a source failure instead of throwing", () => {
    const failing: EntropySource = {
      fill() {
        throw new Error("no entropy");
      },
    };
    const r = rig({ source: failing });
    r.q.add([], [{ addr: 0x10000, len: 8 }], 1);
    kick(r);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(0);
    expect(r.model.stats.sourceErrors).toBe(1);
    expect(r.device.core.needsReset).toBe(false);
  });

  it("rate-limits to bytesPerSecond, leaving requests on the ring until tokens accumulate", () => {
    const timer = new FakeTimer();
    const r = rig({ bytesPerSecond: 1000, burstBytes: 100, timer });
    for (let i = 0; i < 4; i++) r.q.add([], [{ addr: 0x10000 + i * 0x100, len: 100 }], i);
    kick(r);
    expect(r.q.reap()).toBe(0);
    expect(r.q.lastLen).toBe(100);
    expect(r.q.reap()).toBeUndefined();
    expect(r.model.throttled).toBe(true);
    expect(r.model.stats.throttled).toBe(1);
    // 100 tokens at 1000 B/s take 100 ms.
    timer.advance(99);
    expect(r.q.reap()).toBeUndefined();
    timer.advance(1);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(100);
    timer.advance(100);
    timer.advance(100);
    expect(r.q.reap()).toBe(2);
    expect(r.q.reap()).toBe(3);
    expect(r.model.stats.bytes).toBe(400);
  });

  it("a device reset cancels a pending rate-limit wake-up", () => {
    const timer = new FakeTimer();
    const r = rig({ bytesPerSecond: 10, burstBytes: 10, timer });
    r.q.add([], [{ addr: 0x10000, len: 10 }], 0);
    r.q.add([], [{ addr: 0x10100, len: 10 }], 1);
    kick(r);
    expect(timer.pending).toBeDefined();
    r.t.reset();
    expect(timer.pending).toBeUndefined();
    expect(r.model.throttled).toBe(false);
  });

  it("rejects bad options with a RangeError naming the option", () => {
    expect(() => new RngDevice({ queueSize: 3 })).toThrow(/options\.queueSize/);
    expect(() => new RngDevice({ maxRequestBytes: 0 })).toThrow(/options\.maxRequestBytes/);
    expect(() => new RngDevice({ bytesPerSecond: -1 })).toThrow(/options\.bytesPerSecond/);
  });
});

describe("CryptoEntropySource", () => {
  it("calls getRandomValues in chunks of at most 65536 bytes", () => {
    const sizes: number[] = [];
    const src = new CryptoEntropySource({
      getRandomValues(a: Uint8Array) {
        sizes.push(a.length);
        a.fill(0xab);
        return a;
      },
    });
    const buf = new Uint8Array(150_000);
    src.fill(buf);
    expect(sizes).toEqual([65536, 65536, 150_000 - 131072]);
    expect(buf.every((b) => b === 0xab)).toBe(true);
  });

  it("fills a view of a SharedArrayBuffer through its scratch buffer", () => {
    const seen: boolean[] = [];
    const src = new CryptoEntropySource({
      getRandomValues(a: Uint8Array) {
        seen.push(a.buffer instanceof SharedArrayBuffer);
        a.fill(0x5a);
        return a;
      },
    });
    const shared = new Uint8Array(new SharedArrayBuffer(100));
    src.fill(shared.subarray(10, 90));
    expect(seen).toEqual([false]);
    expect(shared[9]).toBe(0);
    expect(shared[10]).toBe(0x5a);
    expect(shared[89]).toBe(0x5a);
    expect(shared[90]).toBe(0);
  });

  it("uses globalThis.crypto by default and produces non-constant output", () => {
    const src = new CryptoEntropySource();
    const a = new Uint8Array(64);
    src.fill(a);
    expect(new Set(a).size).toBeGreaterThan(8);
  });

  it("the device status stays clean through a normal session", () => {
    const r = rig({ source: new CryptoEntropySource() });
    r.q.add([], [{ addr: 0x10000, len: 32 }], 1);
    kick(r);
    expect(r.q.reap()).toBe(1);
    expect(r.q.lastLen).toBe(32);
    expect(r.t.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  });
});
