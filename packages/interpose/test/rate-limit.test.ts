import { MemoryDisk } from "@virtio-ts/backend-disk";
import type { BlockBackend } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { compose, RateLimitGroup, rateLimit } from "../src/index.js";
import { FakeClock } from "./helpers/rate-limit-clock.js";

const MiB = 1 << 20;

/** A guest that keeps `depth` writes of `size` bytes in flight until stopped; counts bytes done. */
class BusyGuest {
  bytes = 0;
  ops = 0;
  #on = true;
  constructor(backend: BlockBackend, size: number, depth: number) {
    const buf = new Uint8Array(size).fill(7);
    const lane = async (): Promise<void> => {
      while (this.#on) {
        await backend.write(0, [buf]);
        if (!this.#on) return;
        this.bytes += size;
        this.ops++;
      }
    };
    for (let i = 0; i < depth; i++) void lane();
  }
  stop(): void {
    this.#on = false;
  }
}

function share(a: number, b: number): number {
  return a / (a + b);
}

describe("RateLimitGroup", () => {
  it("limits one member to the byte rate plus the burst", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, burstBytes: 128 << 10, clock });
    const g = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 64 << 10, 4);
    await clock.advance(10_000);
    g.stop();
    // 10 s at 1 MiB/s plus the initial 128 KiB burst, to within one 64 KiB request.
    expect(g.bytes).toBeGreaterThanOrEqual(10 * MiB + (128 << 10) - (64 << 10));
    expect(g.bytes).toBeLessThanOrEqual(10 * MiB + (128 << 10) + (64 << 10));
  });

  it("gives two busy devices of equal weight half of the bytes each, within 10%", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, clock });
    const a = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 64 << 10, 32);
    const b = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 64 << 10, 2);
    await clock.advance(10_000);
    a.stop();
    b.stop();
    expect(a.bytes + b.bytes).toBeGreaterThan(9.5 * MiB);
    expect(Math.abs(share(a.bytes, b.bytes) - 0.5)).toBeLessThanOrEqual(0.05);
  });

  it("shares bytes, not requests: 4 KiB requests get as many bytes as 64 KiB requests", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, clock });
    const big = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 64 << 10, 8);
    const small = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 4 << 10, 8);
    await clock.advance(10_000);
    big.stop();
    small.stop();
    expect(Math.abs(share(small.bytes, big.bytes) - 0.5)).toBeLessThanOrEqual(0.05);
    expect(small.ops).toBeGreaterThan(12 * big.ops);
  });

  it("splits by weight: weight 3 against weight 1 gets three quarters, within 10%", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: 2 * MiB, clock });
    const heavy = new BusyGuest(rateLimit(group, { weight: 3 })(MemoryDisk.ofSize(MiB)), 32768, 8);
    const light = new BusyGuest(rateLimit(group, { weight: 1 })(MemoryDisk.ofSize(MiB)), 32768, 8);
    await clock.advance(10_000);
    heavy.stop();
    light.stop();
    const s = share(heavy.bytes, light.bytes);
    expect(s).toBeGreaterThanOrEqual(0.75 * 0.9);
    expect(s).toBeLessThanOrEqual(0.75 * 1.1);
    expect(1 - s).toBeGreaterThanOrEqual(0.25 * 0.9);
    expect(1 - s).toBeLessThanOrEqual(0.25 * 1.1);
  });

  it("is work-conserving: an idle member's share goes to the busy one until it wakes up", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, clock });
    const diskB = rateLimit(group)(MemoryDisk.ofSize(MiB));
    const a = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 64 << 10, 8);
    await clock.advance(5_000);
    // B was idle: A had the whole group (5 s at 1 MiB/s, plus the burst).
    expect(a.bytes).toBeGreaterThanOrEqual(4.9 * MiB);
    const aBefore = a.bytes;
    const b = new BusyGuest(diskB, 64 << 10, 8);
    await clock.advance(5_000);
    a.stop();
    b.stop();
    expect(Math.abs(share(a.bytes - aBefore, b.bytes) - 0.5)).toBeLessThanOrEqual(0.05);
  });

  it("serves a newcomer's single request within two rounds even behind a deep backlog", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, clock });
    const hog = rateLimit(group)(MemoryDisk.ofSize(MiB));
    const quiet = rateLimit(group)(MemoryDisk.ofSize(MiB));
    const big = new Uint8Array(64 << 10);
    let hogDone = 0;
    for (let i = 0; i < 500; i++) void hog.write(0, [big]).then(() => hogDone++);
    await clock.advance(1_000);
    const started = clock.now();
    let doneAt = -1;
    void quiet.read(0, [new Uint8Array(4096)]).then(() => {
      doneAt = clock.now();
    });
    await clock.advance(1_000);
    // One 64 KiB quantum of the hog, then the newcomer's turn: about 62.5 ms, far from the
    // ~30 s the hog's backlog would take in FIFO order.
    expect(doneAt - started).toBeGreaterThan(0);
    expect(doneAt - started).toBeLessThanOrEqual(130);
    expect(hogDone).toBeLessThan(40);
  });

  it("limits requests per second and shares them between members", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ opsPerSecond: 100, burstOps: 5, clock });
    const a = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 512, 16);
    const b = new BusyGuest(rateLimit(group)(MemoryDisk.ofSize(MiB)), 4096, 16);
    await clock.advance(10_000);
    a.stop();
    b.stop();
    expect(a.ops + b.ops).toBeGreaterThanOrEqual(1000);
    expect(a.ops + b.ops).toBeLessThanOrEqual(1006);
    expect(Math.abs(share(a.ops, b.ops) - 0.5)).toBeLessThanOrEqual(0.05);
  });

  it("passes data, flushes, discards and write-zeroes through to the inner back-end", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ bytesPerSecond: MiB, opsPerSecond: 1000, clock });
    const disk = new MemoryDisk(new Uint8Array(8192).fill(1));
    const limited = compose(disk, rateLimit(group));
    expect([limited.capacity, limited.blockSize, limited.readOnly]).toEqual([16, 512, false]);
    await limited.write(2, [new Uint8Array(512).fill(0xaa)]);
    await limited.writeZeroes(4, 2, false);
    await limited.discard(8, 1);
    await limited.flush();
    const back = new Uint8Array(512 * 5);
    await limited.read(2, [back]);
    // Sector 2 written, 3 untouched, 4–5 zeroed, 6 untouched.
    expect([back[0], back[511], back[512], back[1024], back[2047], back[2048]]).toEqual([
      0xaa, 0xaa, 1, 0, 0, 1,
    ]);
    expect(disk.bytes[8 * 512]).toBe(0);
  });

  it("rejects requests past the member's queue bound with BackendError io and counts them", async () => {
    const clock = new FakeClock();
    const group = new RateLimitGroup({ opsPerSecond: 1, burstOps: 1, maxQueued: 2, clock });
    const member = group.member(MemoryDisk.ofSize(MiB));
    const results: string[] = [];
    for (let i = 0; i < 4; i++) {
      member.flush().then(
        () => results.push(`ok ${i}`),
        (e: { code?: string }) => results.push(`err ${i} ${e.code}`),
      );
    }
    await clock.advance(0);
    // The first passes on the burst, two wait (the bound), the fourth is refused.
    expect(results.sort()).toEqual(["err 3 io", "ok 0"]);
    await clock.advance(999);
    expect(results).toEqual(["err 3 io", "ok 0"]);
    await clock.advance(1);
    expect(results).toEqual(["err 3 io", "ok 0", "ok 1"]);
    await clock.advance(1_000);
    expect(results).toEqual(["err 3 io", "ok 0", "ok 1", "ok 2"]);
    expect(member.stats).toEqual({ ops: 3, bytes: 0, throttled: 2, rejected: 1 });
  });

  it("rejects bad configuration with errors naming the option", () => {
    expect(() => new RateLimitGroup({})).toThrow(TypeError);
    expect(() => new RateLimitGroup({ bytesPerSecond: 0 })).toThrow(/options\.bytesPerSecond/);
    expect(() => new RateLimitGroup({ opsPerSecond: -1 })).toThrow(/options\.opsPerSecond/);
    expect(() => new RateLimitGroup({ bytesPerSecond: 1, burstBytes: 0 })).toThrow(
      /options\.burstBytes/,
    );
    expect(() => new RateLimitGroup({ opsPerSecond: 1, maxQueued: 0 })).toThrow(
      /options\.maxQueued/,
    );
    const group = new RateLimitGroup({ opsPerSecond: 1 });
    expect(() => rateLimit(group, { weight: 0 })).toThrow(/options\.weight/);
    expect(() => group.member(MemoryDisk.ofSize(512), { weight: Number.NaN })).toThrow(
      /options\.weight/,
    );
  });
});
