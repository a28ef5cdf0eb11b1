import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  BalloonConfig,
  BalloonFeature,
  BalloonStatTag,
  DeviceId,
  DeviceStatus,
  Feature,
  featureMask,
  hasFeature,
  MmioInterrupt,
} from "@virtio-ts/spec";
import { MmioDevice, MmioDriverTransport, RateLimitedLog } from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  BalloonDevice,
  type BalloonDeviceOptions,
  BalloonRequestError,
  BalloonStateError,
  type BalloonTimer,
} from "../src/balloon.js";

const MIB = 1 << 20;
/** Guest memory is 16 MiB; the balloon's RAM is its first 8 MiB unless a test says otherwise. */
const MEM = 16 * MIB;
const RAM = 8 * MIB;
/** Pages the tests inflate live from 4 MiB up, far from the rings and buffers. */
const P0 = (4 * MIB) / 4096;
const BIT = (b: number) => featureMask(b);

class FakeTimer implements BalloonTimer {
  t = 0;
  pending: { fn: () => void; at: number } | undefined;
  scheduled = 0;
  now(): number {
    return this.t;
  }
  schedule(fn: () => void, ms: number): unknown {
    this.scheduled++;
    this.pending = { fn, at: this.t + ms };
    return this.pending;
  }
  cancel(h: unknown): void {
    if (this.pending === h) this.pending = undefined;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    while (this.pending !== undefined && this.pending.at <= end) {
      const p = this.pending;
      this.t = p.at;
      this.pending = undefined;
      p.fn();
    }
    this.t = end;
  }
}

interface Heard {
  inflated: [number, number][];
  deflated: [number, number][];
  reported: [number, number][];
  actual: number[];
  stats: number;
}

interface Rig {
  memory: GuestMemory;
  model: BalloonDevice;
  device: MmioDevice;
  t: MmioDriverTransport;
  qs: Map<string, DriverQueue<number>>;
  idx: Map<string, number>;
  heard: Heard;
  timer: FakeTimer;
  irqs: number[];
  heap: number;
}

interface RigOptions {
  readonly accept?: (offered: bigint) => bigint;
  readonly beforeOk?: (r: Rig) => void;
  readonly ok?: boolean;
}

function rig(options: Partial<BalloonDeviceOptions> = {}, o: RigOptions = {}): Rig {
  const memory = createGuestMemory({ size: MEM });
  const heard: Heard = { inflated: [], deflated: [], reported: [], actual: [], stats: 0 };
  const timer = new FakeTimer();
  const irqs: number[] = [];
  const model = new BalloonDevice({
    ram: RAM,
    timer,
    host: {
      inflated: (g, b) => heard.inflated.push([g, b]),
      deflated: (g, b) => heard.deflated.push([g, b]),
      reported: (g, b) => heard.reported.push([g, b]),
      actual: (p) => heard.actual.push(p),
      stats: () => heard.stats++,
    },
    ...options,
  });
  const device = new MmioDevice(model, {
    memory,
    interrupt: (s) => irqs.push(s),
    // Guest faults are what these tests provoke; keep them out of the output.
    log: new RateLimitedLog({ sink: () => {} }),
  });
  const t = new MmioDriverTransport({
    read: (off, s) => device.read(off, s),
    write: (off, s, v) => device.write(off, s, v),
  });
  const r: Rig = {
    memory,
    model,
    device,
    t,
    qs: new Map(),
    idx: new Map(),
    heard,
    timer,
    irqs,
    heap: 0x100000,
  };
  const features = t.negotiate(
    o.accept ?? ((offered) => offered & ~featureMask(Feature.RING_PACKED)),
  );
  const names: [string, number][] = [
    ["inflate", 0],
    ["deflate", 0],
  ];
  if (hasFeature(features, BalloonFeature.STATS_VQ)) names.push(["stats", 0]);
  if (hasFeature(features, BalloonFeature.PAGE_REPORTING)) names.push(["reporting", 0]);
  const fixed = options.queueNumbering === "fixed";
  names.forEach(([name], i) => {
    const index = fixed ? { inflate: 0, deflate: 1, stats: 2, reporting: 4 }[name]! : i;
    const base = 0x1000 + index * 0x2000;
    r.idx.set(name, index);
    r.qs.set(
      name,
      t.setupQueue<number>(index, memory, {
        size: 32,
        desc: base,
        driver: base + 0x400,
        device: base + 0x800,
      }),
    );
  });
  o.beforeOk?.(r);
  if (o.ok ?? true) t.driverOk();
  return r;
}

function buf(r: Rig, n: number): number {
  const a = r.heap;
  r.heap += (n + 15) & ~15;
  return a;
}

/** Post one chain on queue `name` and kick. */
function post(r: Rig, name: string, out: Segment[], inn: Segment[] = [], token = 1): void {
  const q = r.qs.get(name)!;
  if (!q.add(out, inn, token)) throw new Error("queue full");
  q.publish();
  r.t.notify(r.idx.get(name)!);
}

/** A PFN array buffer in guest memory. */
function pfns(r: Rig, list: readonly number[]): Segment {
  const a = buf(r, 4 * list.length);
  for (const [i, p] of list.entries()) r.memory.writeU32(a + 4 * i, p);
  return { addr: a, len: 4 * list.length };
}

function reaped(r: Rig, name: string): number[] {
  const q = r.qs.get(name)!;
  const out: number[] = [];
  for (let t = q.reap(); t !== undefined; t = q.reap()) out.push(t);
  return out;
}

/** A stats buffer of [tag, value] entries. */
function statsBuf(r: Rig, entries: readonly [number, number][]): Segment {
  const a = buf(r, 10 * entries.length);
  entries.forEach(([tag, v], i) => {
    r.memory.writeU16(a + 10 * i, tag);
    r.memory.writeU64(a + 10 * i + 2, BigInt(v));
  });
  return { addr: a, len: 10 * entries.length };
}

const faults = (r: Rig) => Object.fromEntries(r.device.core.faultCounts);

describe("BalloonDevice: identity, features and configuration", () => {
  it("is a balloon (ID 5) with a 16-byte configuration and four queues, FREE_PAGE_HINT not offered", () => {
    const m = new BalloonDevice({ ram: RAM });
    expect(m.deviceId).toBe(DeviceId.BALLOON);
    expect(m.deviceId).toBe(5);
    expect(m.configSize).toBe(BalloonConfig.SIZE);
    expect(m.queueMaxSizes).toEqual([128, 128, 128, 128]);
    for (const b of [
      BalloonFeature.MUST_TELL_HOST,
      BalloonFeature.STATS_VQ,
      BalloonFeature.PAGE_POISON,
      BalloonFeature.PAGE_REPORTING,
    ]) {
      expect(hasFeature(m.features, b), `bit ${b}`).toBe(true);
    }
    expect(hasFeature(m.features, BalloonFeature.FREE_PAGE_HINT)).toBe(false);
    expect(hasFeature(m.features, BalloonFeature.DEFLATE_ON_OOM)).toBe(false);
    expect(m.ramPages).toBe(RAM / 4096);
  });

  it("numbers the queues of the §5.5.2 list with fixed indices on request (0–4, absent ones of size 0)", () => {
    expect(new BalloonDevice({ ram: RAM, queueNumbering: "fixed" }).queueMaxSizes).toEqual([
      128, 128, 128, 0, 128,
    ]);
    expect(
      new BalloonDevice({ ram: RAM, statsQueue: false, pageReporting: false }).queueMaxSizes,
    ).toEqual([128, 128]);
    expect(
      hasFeature(
        new BalloonDevice({ ram: RAM, deflateOnOom: true }).features,
        BalloonFeature.DEFLATE_ON_OOM,
      ),
    ).toBe(true);
  });

  it("refuses bad options with a RangeError naming them", () => {
    expect(() => new BalloonDevice({ ram: 4095 })).toThrow(/options\.ram\[0\]/);
    expect(() => new BalloonDevice({ ram: [] })).toThrow(/options\.ram/);
    expect(
      () =>
        new BalloonDevice({
          ram: [
            { base: 0, size: 8192 },
            { base: 4096, size: 8192 },
          ],
        }),
    ).toThrow(/overlaps/);
    expect(() => new BalloonDevice({ ram: RAM, queueSize: 16 })).toThrow(/options\.queueSize/);
    expect(() => new BalloonDevice({ ram: RAM, maxPfnsPerRequest: 0 })).toThrow(
      /options\.maxPfnsPerRequest/,
    );
    expect(() => new BalloonDevice({ ram: RAM, statsIntervalMs: -1 })).toThrow(
      /options\.statsIntervalMs/,
    );
    expect(() => new BalloonDevice({ ram: 2 ** 45 })).toThrow(/2\^44/);
  });

  it("shows the host's target in num_pages and sends a configuration change notification (§5.5.6)", () => {
    const r = rig();
    const gen = r.t.configGeneration();
    r.irqs.length = 0;
    r.model.setTarget(1234);
    expect(r.t.readConfig((c) => c.u32(BalloonConfig.NUM_PAGES))).toBe(1234);
    expect(r.t.configGeneration()).not.toBe(gen);
    expect(r.irqs.some((s) => (s & MmioInterrupt.CONFIG) !== 0)).toBe(true);
    expect(r.model.target).toBe(1234);
    expect(() => r.model.setTarget(RAM / 4096 + 1)).toThrow(/pages must be an integer/);
    expect(() => r.model.setTarget(1.5)).toThrow(RangeError);
  });

  it("takes actual from the driver (§5.5.6.1) and tells the host once the top byte is written", () => {
    const r = rig();
    r.t.writeConfig(BalloonConfig.ACTUAL, 4, 0x01020304);
    expect(r.model.actual).toBe(0x01020304);
    expect(r.t.readConfig((c) => c.u32(BalloonConfig.ACTUAL))).toBe(0x01020304);
    // Legacy style: one byte at a time, least significant first (§5.5.6.2.1).
    for (let i = 0; i < 4; i++) r.t.writeConfig(BalloonConfig.ACTUAL + i, 1, 0x10 + i);
    expect(r.model.actual).toBe(0x13121110);
    expect(r.heard.actual).toEqual([0x01020304, 0x13121110]);
    // num_pages and free_page_hint_cmd_id are the device's.
    r.t.writeConfig(BalloonConfig.NUM_PAGES, 4, 99);
    r.t.writeConfig(BalloonConfig.FREE_PAGE_HINT_CMD_ID, 4, 99);
    expect(r.t.readConfig((c) => c.u32(BalloonConfig.NUM_PAGES))).toBe(0);
    expect(r.t.readConfig((c) => c.u32(BalloonConfig.FREE_PAGE_HINT_CMD_ID))).toBe(0);
  });
});

describe("BalloonDevice: inflate and deflate (§5.5.6)", () => {
  it("acknowledges an inflate array, discards its pages and tells the host contiguous runs", () => {
    const r = rig();
    r.memory.fill(P0 * 4096 - 16, 5 * 4096 + 32, 0x77);
    post(r, "inflate", [pfns(r, [P0, P0 + 1, P0 + 2, P0 + 4])]);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(r.heard.inflated).toEqual([
      [P0 * 4096, 3 * 4096],
      [(P0 + 4) * 4096, 4096],
    ]);
    expect(r.model.inflatedPages).toBe(4);
    expect(r.model.isInflated(P0 + 2)).toBe(true);
    expect(r.model.isInflated(P0 + 3)).toBe(false);
    // Zeroed exactly the inflated 4 KiB pages, nothing around them.
    expect(r.memory.slice(P0 * 4096 - 16, 16).every((b) => b === 0x77)).toBe(true);
    expect(r.memory.slice(P0 * 4096, 3 * 4096).every((b) => b === 0)).toBe(true);
    expect(r.memory.slice((P0 + 3) * 4096, 4096).every((b) => b === 0x77)).toBe(true);
    expect(r.memory.slice((P0 + 4) * 4096, 4096).every((b) => b === 0)).toBe(true);
    expect(r.memory.slice((P0 + 5) * 4096, 16).every((b) => b === 0x77)).toBe(true);
    const runs: [number, number][] = [];
    r.model.forEachInflatedRun((g, b) => runs.push([g, b]));
    expect(runs).toEqual(r.heard.inflated);
    expect(r.model.stats).toMatchObject({ inflateRequests: 1, pagesInflated: 4, malformed: 0 });
  });

  it("reads PFNs as 4096-byte frame numbers, whatever the guest page size (16 PFNs per 64 KiB page)", () => {
    const r = rig();
    const page64k = P0 + 16; // a 64 KiB-aligned guest page is 16 consecutive 4 KiB PFNs
    post(r, "inflate", [
      pfns(
        r,
        Array.from({ length: 16 }, (_, i) => page64k + i),
      ),
    ]);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(r.heard.inflated).toEqual([[page64k * 4096, 65536]]);
  });

  it("gives pages back on deflate and tells the host", () => {
    const r = rig();
    post(r, "inflate", [pfns(r, [P0, P0 + 1, P0 + 2])]);
    post(r, "deflate", [pfns(r, [P0 + 1, P0 + 2])], [], 2);
    expect(reaped(r, "deflate")).toEqual([2]);
    expect(r.heard.deflated).toEqual([[(P0 + 1) * 4096, 8192]]);
    expect(r.model.inflatedPages).toBe(1);
    expect(r.model.stats.pagesDeflated).toBe(2);
  });

  it("parses PFNs that straddle descriptor boundaries at any byte offset", () => {
    const r = rig();
    const whole = pfns(r, [P0 + 7, P0 + 9, P0 + 8]);
    post(r, "inflate", [
      { addr: whole.addr, len: 3 },
      { addr: whole.addr + 3, len: 0 },
      { addr: whole.addr + 3, len: 6 },
      { addr: whole.addr + 9, len: 3 },
    ]);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(r.model.inflatedPages).toBe(3);
    expect([P0 + 7, P0 + 8, P0 + 9].every((p) => r.model.isInflated(p))).toBe(true);
  });

  it("skips PFNs outside guest RAM, serves the rest and writes nothing outside RAM (hostile PFNs)", () => {
    const r = rig();
    const outside = RAM / 4096 + 3; // mapped guest memory, but not the balloon's RAM
    r.memory.fill(outside * 4096, 4096, 0x55);
    post(r, "inflate", [pfns(r, [outside, P0, 0xffffffff, 0x10000000])]);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(r.model.inflatedPages).toBe(1);
    expect(r.heard.inflated).toEqual([[P0 * 4096, 4096]]);
    expect(r.memory.slice(outside * 4096, 4096).every((b) => b === 0x55)).toBe(true);
    expect(faults(r)).toEqual({ "balloon-pfn-out-of-range": 1 });
    const e = r.device.core.lastFault as BalloonRequestError;
    expect(e).toBeInstanceOf(BalloonRequestError);
    expect(e).toMatchObject({ queue: "inflate", value: outside, count: 3 });
    expect(r.device.core.needsReset).toBe(false);
  });

  it("refuses a PFN array that is not whole 32-bit entries, or longer than maxPfnsPerRequest, as a whole", () => {
    const r = rig({ maxPfnsPerRequest: 4 });
    const a = pfns(r, [P0, P0 + 1]);
    post(r, "inflate", [{ addr: a.addr, len: 7 }]);
    post(r, "inflate", [pfns(r, [P0, P0 + 1, P0 + 2, P0 + 3, P0 + 4])], [], 2);
    expect(reaped(r, "inflate")).toEqual([1, 2]);
    expect(r.model.inflatedPages).toBe(0);
    expect(faults(r)).toEqual({
      "balloon-pfn-array-length": 1,
      "balloon-pfn-array-too-long": 1,
    });
    // And keeps serving.
    post(r, "inflate", [pfns(r, [P0])], [], 3);
    expect(reaped(r, "inflate")).toEqual([3]);
    expect(r.model.inflatedPages).toBe(1);
  });

  it("counts PFNs inflated twice or deflated while not inflated as faults and skips them", () => {
    const r = rig();
    post(r, "inflate", [pfns(r, [P0, P0])]);
    post(r, "deflate", [pfns(r, [P0 + 1, P0])], [], 2);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(reaped(r, "deflate")).toEqual([2]);
    expect(r.model.inflatedPages).toBe(0);
    expect(r.heard.inflated).toEqual([[P0 * 4096, 4096]]);
    expect(r.heard.deflated).toEqual([[P0 * 4096, 4096]]);
    expect(faults(r)).toEqual({
      "balloon-pfn-already-inflated": 1,
      "balloon-pfn-not-inflated": 1,
    });
  });

  it("ignores device-writable descriptors on the inflate queue and leaves them unwritten", () => {
    const r = rig();
    const w = buf(r, 64);
    r.memory.fill(w, 64, 0xcc);
    post(r, "inflate", [pfns(r, [P0])], [{ addr: w, len: 64 }]);
    expect(reaped(r, "inflate")).toEqual([1]);
    expect(r.qs.get("inflate")!.lastLen).toBe(0);
    expect(r.memory.slice(w, 64).every((b) => b === 0xcc)).toBe(true);
    expect(r.model.inflatedPages).toBe(1);
    expect(faults(r)).toEqual({ "balloon-writable-descriptor": 1 });
  });

  it("never allocates past its bitmap: the inflated set equals a model over random hostile PFN streams", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            deflate: fc.boolean(),
            list: fc.array(
              fc.oneof(
                fc.integer({ min: P0, max: P0 + 63 }),
                fc.integer({ min: 0, max: 0xffffffff }),
              ),
              { maxLength: 12 },
            ),
          }),
          { maxLength: 20 },
        ),
        (ops) => {
          // RAM is 64 pages at P0: every other PFN, rings included, is outside it.
          const r = rig({ ram: [{ base: P0 * 4096, size: 64 * 4096 }] });
          const set = new Set<number>();
          let token = 1;
          for (const op of ops) {
            r.heap = 0x100000;
            post(r, op.deflate ? "deflate" : "inflate", [pfns(r, op.list)], [], token);
            expect(reaped(r, op.deflate ? "deflate" : "inflate")).toEqual([token]);
            token++;
            for (const p of op.list) {
              if (p < P0 || p >= P0 + 64) continue;
              if (op.deflate) set.delete(p);
              else set.add(p);
            }
          }
          expect(r.model.inflatedPages).toBe(set.size);
          for (let p = P0; p < P0 + 64; p++) expect(r.model.isInflated(p)).toBe(set.has(p));
          expect(r.device.core.needsReset).toBe(false);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("BalloonDevice: memory statistics (§5.5.6.3)", () => {
  const linuxStats: [number, number][] = [
    [BalloonStatTag.SWAP_IN, 0],
    [BalloonStatTag.SWAP_OUT, 0],
    [BalloonStatTag.MAJFLT, 12],
    [BalloonStatTag.MINFLT, 3456],
    [BalloonStatTag.HTLB_PGALLOC, 0],
    [BalloonStatTag.HTLB_PGFAIL, 0],
    [BalloonStatTag.MEMFREE, 200 * MIB],
    [BalloonStatTag.MEMTOT, 240 * MIB],
    [BalloonStatTag.AVAIL, 210 * MIB],
    [BalloonStatTag.CACHES, 5 * MIB],
  ];

  it("holds the driver's buffer, reads it, and returns it only when the host asks for stats", () => {
    const r = rig();
    post(r, "stats", [statsBuf(r, linuxStats)]);
    expect(reaped(r, "stats")).toEqual([]);
    const s = r.model.guestStats!;
    expect(s).toMatchObject({
      seq: 1,
      memFree: 200 * MIB,
      memTotal: 240 * MIB,
      available: 210 * MIB,
      caches: 5 * MIB,
      majorFaults: 12,
      minorFaults: 3456,
      hugetlbAllocations: 0,
      unknownTags: 0,
    });
    expect(r.heard.stats).toBe(1);
    expect(r.model.requestStats()).toBe(true);
    expect(reaped(r, "stats")).toEqual([1]);
    // Nothing held until the driver answers.
    expect(r.model.requestStats()).toBe(false);
    post(r, "stats", [statsBuf(r, [[BalloonStatTag.MEMFREE, 100 * MIB]])], [], 2);
    expect(r.model.guestStats).toMatchObject({ seq: 2, memFree: 100 * MIB, memTotal: undefined });
  });

  it("accepts entries in any order and ignores unknown tags (§5.5.6.3.2 MUST)", () => {
    const r = rig();
    post(r, "stats", [
      statsBuf(r, [
        [BalloonStatTag.MEMTOT, 7],
        [0x1234, 99],
        [BalloonStatTag.SWAP_IN, 2 ** 40],
        [BalloonStatTag.MEMFREE, 5],
      ]),
    ]);
    expect(r.model.guestStats).toMatchObject({
      memTotal: 7,
      memFree: 5,
      swapIn: 2 ** 40,
      unknownTags: 1,
    });
    expect(faults(r)).toEqual({});
  });

  it("holds but does not read a stats buffer that is not whole 10-byte entries or is too long", () => {
    const r = rig();
    const a = statsBuf(r, linuxStats);
    post(r, "stats", [{ addr: a.addr, len: 16 }]);
    expect(r.model.guestStats).toBeUndefined();
    expect(faults(r)).toEqual({ "balloon-stats-length": 1 });
    expect(r.model.requestStats()).toBe(true);
    expect(reaped(r, "stats")).toEqual([1]);
    const big = buf(r, 4100);
    post(r, "stats", [{ addr: big, len: 4100 }], [], 2);
    expect(faults(r)).toMatchObject({ "balloon-stats-too-long": 1 });
    expect(r.model.requestStats()).toBe(true);
    expect(reaped(r, "stats")).toEqual([2]);
    post(r, "stats", [statsBuf(r, linuxStats)], [], 3);
    expect(r.model.guestStats?.memFree).toBe(200 * MIB);
  });

  it("keeps extra stats buffers (§5.5.6.3.1: at most one) and returns them all with the next request", () => {
    const r = rig();
    post(r, "stats", [statsBuf(r, linuxStats)], [], 1);
    post(r, "stats", [statsBuf(r, linuxStats)], [], 2);
    expect(reaped(r, "stats")).toEqual([]);
    expect(faults(r)).toEqual({ "balloon-stats-extra-buffer": 1 });
    expect(r.model.requestStats()).toBe(true);
    expect(reaped(r, "stats")).toEqual([1, 2]);
  });

  it("asks for stats at the interval the host set, and stops on request and on reset", () => {
    const r = rig({ statsIntervalMs: 1000 });
    post(r, "stats", [statsBuf(r, linuxStats)], [], 1);
    const answer = () => {
      for (const t of reaped(r, "stats")) post(r, "stats", [statsBuf(r, linuxStats)], [], t + 1);
    };
    r.timer.advance(999);
    expect(r.model.stats.statsRequests).toBe(0);
    r.timer.advance(1);
    expect(r.model.stats.statsRequests).toBe(1);
    answer();
    expect(r.model.guestStats).toMatchObject({ seq: 2, at: 1000 });
    r.timer.advance(1000);
    answer();
    r.timer.advance(1000);
    answer();
    expect(r.model.guestStats).toMatchObject({ seq: 4, at: 3000 });
    r.model.setStatsInterval(0);
    r.timer.advance(5000);
    expect(r.model.stats.statsRequests).toBe(3);
    r.model.setStatsInterval(500);
    r.timer.advance(500);
    expect(r.model.stats.statsRequests).toBe(4);
    r.device.core.reset();
    r.timer.advance(5000);
    expect(r.model.stats.statsRequests).toBe(4);
    expect(r.timer.pending).toBeUndefined();
  });

  it("returns no held stats buffer after a device reset (§2.4.1)", () => {
    const r = rig();
    post(r, "stats", [statsBuf(r, linuxStats)]);
    const usedIdx = r.memory.readU16(0x1000 + 2 * 0x2000 + 0x800 + 2);
    r.t.reset();
    expect(r.model.requestStats()).toBe(false);
    expect(r.memory.readU16(0x1000 + 2 * 0x2000 + 0x800 + 2)).toBe(usedIdx);
  });
});

describe("BalloonDevice: free page reporting (§5.5.6.7)", () => {
  it("discards reported runs, tells the host and acknowledges the report", () => {
    const r = rig();
    r.memory.fill(P0 * 4096, 8 * 4096, 0x99);
    post(
      r,
      "reporting",
      [],
      [
        { addr: P0 * 4096, len: 4 * 4096 },
        { addr: (P0 + 6) * 4096, len: 2 * 4096 },
      ],
    );
    expect(reaped(r, "reporting")).toEqual([1]);
    expect(r.heard.reported).toEqual([
      [P0 * 4096, 4 * 4096],
      [(P0 + 6) * 4096, 2 * 4096],
    ]);
    expect(r.memory.slice(P0 * 4096, 4 * 4096).every((b) => b === 0)).toBe(true);
    expect(r.memory.slice((P0 + 4) * 4096, 2 * 4096).every((b) => b === 0x99)).toBe(true);
    expect(r.model.stats.pagesReported).toBe(6);
    // Reported pages are not in the balloon: the guest takes them back without telling.
    expect(r.model.inflatedPages).toBe(0);
  });

  it("skips runs that are not whole aligned pages or lie outside RAM, and readable descriptors", () => {
    const r = rig();
    const outside = RAM + 8 * 4096;
    r.memory.fill(outside, 4096, 0x44);
    r.memory.fill(P0 * 4096, 3 * 4096, 0x44);
    const ro = buf(r, 8);
    post(
      r,
      "reporting",
      [{ addr: ro, len: 8 }],
      [
        { addr: P0 * 4096 + 512, len: 4096 },
        { addr: (P0 + 2) * 4096, len: 100 },
        { addr: outside, len: 4096 },
        { addr: RAM - 4096, len: 8192 },
        { addr: (P0 + 1) * 4096, len: 4096 },
      ],
    );
    expect(reaped(r, "reporting")).toEqual([1]);
    expect(r.heard.reported).toEqual([[(P0 + 1) * 4096, 4096]]);
    expect(r.memory.slice(outside, 4096).every((b) => b === 0x44)).toBe(true);
    expect(r.memory.slice(P0 * 4096, 4096).every((b) => b === 0x44)).toBe(true);
    expect(faults(r)).toEqual({
      "balloon-report-readable-descriptor": 1,
      "balloon-report-misaligned": 1,
      "balloon-report-out-of-range": 1,
    });
    expect((r.device.core.lastFault as BalloonRequestError).count).toBe(2);
  });

  it("fills reported pages with poison_val under PAGE_POISON (§5.5.6.7.2 MUST NOT write anything else)", () => {
    const r = rig(
      {},
      { beforeOk: (x) => x.t.writeConfig(BalloonConfig.POISON_VAL, 4, 0xaaaaaaaa) },
    );
    expect(r.model.poisonValue).toBe(0xaaaaaaaa);
    r.memory.fill(P0 * 4096, 4096, 0x11);
    post(r, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    expect(reaped(r, "reporting")).toEqual([1]);
    expect(r.memory.slice(P0 * 4096, 4096).every((b) => b === 0xaa)).toBe(true);
    // §5.5.6.6.1: poison_val is not changed while DRIVER_OK is set.
    r.t.writeConfig(BalloonConfig.POISON_VAL, 4, 0);
    expect(r.model.poisonValue).toBe(0xaaaaaaaa);
  });

  it("leaves reported pages alone when poison_val's bytes differ, or with discard 'keep'", () => {
    const r = rig(
      {},
      { beforeOk: (x) => x.t.writeConfig(BalloonConfig.POISON_VAL, 4, 0x12345678) },
    );
    r.memory.fill(P0 * 4096, 4096, 0x11);
    post(r, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    expect(r.memory.slice(P0 * 4096, 4096).every((b) => b === 0x11)).toBe(true);
    expect(r.heard.reported).toHaveLength(1);
    const k = rig({ discard: "keep" });
    k.memory.fill(P0 * 4096, 8192, 0x11);
    post(k, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    post(k, "inflate", [pfns(k, [P0 + 1])], [], 2);
    expect(k.memory.slice(P0 * 4096, 8192).every((b) => b === 0x11)).toBe(true);
  });

  it("does not accept PAGE_POISON's poison_val without the feature", () => {
    const r = rig(
      {},
      {
        accept: (o) => o & ~BIT(Feature.RING_PACKED) & ~BIT(BalloonFeature.PAGE_POISON),
        beforeOk: (x) => x.t.writeConfig(BalloonConfig.POISON_VAL, 4, 0xaaaaaaaa),
      },
    );
    expect(r.model.poisonValue).toBeUndefined();
    r.memory.fill(P0 * 4096, 4096, 0x11);
    post(r, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    expect(r.memory.slice(P0 * 4096, 4096).every((b) => b === 0)).toBe(true);
  });
});

describe("BalloonDevice: queue numbering, reset and state", () => {
  it("finds the reporting queue at index 2 when the stats queue is not negotiated (Linux's dense numbering)", () => {
    const r = rig(
      {},
      { accept: (o) => o & ~BIT(Feature.RING_PACKED) & ~BIT(BalloonFeature.STATS_VQ) },
    );
    expect(r.idx.get("reporting")).toBe(2);
    post(r, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    expect(reaped(r, "reporting")).toEqual([1]);
    expect(r.heard.reported).toHaveLength(1);
  });

  it("serves the reporting queue at index 4 with fixed numbering", () => {
    const r = rig({ queueNumbering: "fixed" });
    expect(r.idx.get("reporting")).toBe(4);
    post(r, "reporting", [], [{ addr: P0 * 4096, len: 4096 }]);
    expect(reaped(r, "reporting")).toEqual([1]);
    post(r, "stats", [statsBuf(r, [[BalloonStatTag.MEMFREE, 1]])]);
    expect(r.model.guestStats?.memFree).toBe(1);
  });

  it("serves the stats buffer a driver kicked before DRIVER_OK once the device goes live (§5.5.5)", () => {
    const r = rig({}, { ok: false });
    post(r, "stats", [statsBuf(r, [[BalloonStatTag.MEMFREE, 42]])]);
    expect(r.model.guestStats).toBeUndefined();
    r.t.driverOk();
    expect(r.model.guestStats?.memFree).toBe(42);
  });

  it("returns every inflated page to the guest on reset, telling the host, and keeps the target", () => {
    const r = rig();
    r.model.setTarget(10);
    post(r, "inflate", [pfns(r, [P0, P0 + 1, P0 + 5])]);
    r.t.writeConfig(BalloonConfig.ACTUAL, 4, 3);
    r.t.reset();
    expect(r.heard.deflated).toEqual([
      [P0 * 4096, 8192],
      [(P0 + 5) * 4096, 4096],
    ]);
    expect(r.model.inflatedPages).toBe(0);
    expect(r.model.actual).toBe(0);
    expect(r.model.target).toBe(10);
    expect(r.device.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  });

  it("saves and restores actual, poison_val, num_pages and the inflated pages", () => {
    const r = rig(
      {},
      { beforeOk: (x) => x.t.writeConfig(BalloonConfig.POISON_VAL, 4, 0xaaaaaaaa) },
    );
    r.model.setTarget(7);
    post(r, "inflate", [pfns(r, [P0, P0 + 1, P0 + 9])]);
    r.t.writeConfig(BalloonConfig.ACTUAL, 4, 3);
    const bytes = r.model.saveState();
    expect(bytes.length).toBe(20 + 2 * 8);
    const copy = new BalloonDevice({ ram: RAM });
    copy.restoreState(bytes);
    expect(copy.target).toBe(7);
    expect(copy.actual).toBe(3);
    expect(copy.readConfig(BalloonConfig.POISON_VAL, 4)).toBe(0xaaaaaaaa);
    expect(copy.inflatedPages).toBe(3);
    expect([P0, P0 + 1, P0 + 9].every((p) => copy.isInflated(p))).toBe(true);
  });

  it("refuses hostile state bytes with BalloonStateError and changes nothing", () => {
    const r = rig();
    post(r, "inflate", [pfns(r, [P0])]);
    const good = r.model.saveState();
    const m = new BalloonDevice({ ram: RAM });
    const bad = (mutate: (v: DataView) => void) => {
      const b = good.slice();
      mutate(new DataView(b.buffer));
      return b;
    };
    for (const b of [
      good.subarray(0, 19),
      bad((v) => v.setUint32(0, 1, true)),
      bad((v) => v.setUint8(4, 9)),
      bad((v) => v.setUint32(20, RAM / 4096, true)),
      bad((v) => v.setUint32(24, 0, true)),
      bad((v) => v.setUint32(16, RAM / 4096 + 1, true)),
      (() => {
        const b = new Uint8Array(36);
        b.set(good);
        new DataView(b.buffer).setUint32(28, P0, true);
        new DataView(b.buffer).setUint32(32, 1, true);
        return b;
      })(),
    ]) {
      expect(() => m.restoreState(b)).toThrow(BalloonStateError);
    }
    expect(m.inflatedPages).toBe(0);
  });
});

describe("BalloonDevice: hostile rings under the host's calls", () => {
  it("enters DEVICE_NEEDS_RESET instead of throwing when requestStats meets a corrupt ring (§2.1.2)", () => {
    const r = rig({}, { accept: (o) => o & ~BIT(Feature.RING_PACKED) });
    post(r, "stats", [statsBuf(r, [[BalloonStatTag.MEMFREE, 1]])]);
    // Corrupt the stats queue's avail.idx far past the queue: the next push / pop sees a bad ring.
    const avail = 0x1000 + 2 * 0x2000 + 0x400;
    r.memory.writeU16(avail + 2, 0x4000);
    r.t.notify(2);
    expect(r.device.core.needsReset).toBe(true);
    expect(() => r.model.requestStats()).not.toThrow();
  });
});
