import {
  BlkConfig,
  BlkDiscardWriteZeroes,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import { describe, expect, it } from "vitest";
import { parseBlkRequestType } from "../src/blk-device.js";
import { BlkDevice, BlkGuestRequestError } from "../src/index.js";
import { concat, Harness, range, sectorsOf } from "./helpers/harness.js";
import { TestBackend } from "./helpers/test-backend.js";

const T = BlkRequestType;
const S = BlkStatus;

describe("BlkDevice configuration and features", () => {
  it("offers SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH, DISCARD and WRITE_ZEROES for a writable disk", () => {
    const h = new Harness();
    for (const bit of [
      BlkFeature.SIZE_MAX,
      BlkFeature.SEG_MAX,
      BlkFeature.BLK_SIZE,
      BlkFeature.FLUSH,
      BlkFeature.DISCARD,
      BlkFeature.WRITE_ZEROES,
    ]) {
      expect(hasFeature(h.negotiated, bit)).toBe(true);
    }
    expect(hasFeature(h.model.features, BlkFeature.RO)).toBe(false);
    expect(hasFeature(h.model.features, Feature.IN_ORDER)).toBe(false);
    expect(h.model.deviceId).toBe(DeviceId.BLOCK);
  });

  it("exposes capacity, size_max, seg_max, blk_size and the discard limits in config space (§5.2.4)", () => {
    const h = new Harness(new TestBackend(64), { queueSize: 16, maxRanges: 4 });
    const cfg = h.driver.readConfig((c) => ({
      capacity: c.u64(BlkConfig.CAPACITY),
      sizeMax: c.u32(BlkConfig.SIZE_MAX),
      segMax: c.u32(BlkConfig.SEG_MAX),
      blkSize: c.u32(BlkConfig.BLK_SIZE),
      maxDiscard: c.u32(BlkConfig.MAX_DISCARD_SECTORS),
      maxDiscardSeg: c.u32(BlkConfig.MAX_DISCARD_SEG),
      align: c.u32(BlkConfig.DISCARD_SECTOR_ALIGNMENT),
      maxZeroes: c.u32(BlkConfig.MAX_WRITE_ZEROES_SECTORS),
      maxZeroesSeg: c.u32(BlkConfig.MAX_WRITE_ZEROES_SEG),
      mayUnmap: c.u8(BlkConfig.WRITE_ZEROES_MAY_UNMAP),
    }));
    expect(cfg).toEqual({
      capacity: 64n,
      sizeMax: 1 << 20,
      segMax: 14,
      blkSize: 4096,
      maxDiscard: 1 << 22,
      maxDiscardSeg: 4,
      align: 8,
      maxZeroes: 1 << 22,
      maxZeroesSeg: 4,
      mayUnmap: 1,
    });
  });

  it("encodes a capacity above 2^32 sectors in both halves of the le64 field", () => {
    const big = { ...new TestBackend(1), capacity: 2 ** 33 + 5 } as unknown as TestBackend;
    const model = new BlkDevice(big);
    expect(model.readConfig(BlkConfig.CAPACITY, 4)).toBe(5);
    expect(model.readConfig(BlkConfig.CAPACITY + 4, 4)).toBe(2);
  });

  it("offers RO and neither DISCARD nor WRITE_ZEROES for a read-only back-end", () => {
    const model = new BlkDevice(new TestBackend(8, { readOnly: true }));
    expect(hasFeature(model.features, BlkFeature.RO)).toBe(true);
    expect(hasFeature(model.features, BlkFeature.DISCARD)).toBe(false);
    expect(hasFeature(model.features, BlkFeature.WRITE_ZEROES)).toBe(false);
    expect(model.readConfig(BlkConfig.MAX_DISCARD_SECTORS, 4)).toBe(0);
  });

  it("rejects bad back-end geometry and options with RangeErrors naming them", () => {
    const odd = { ...new TestBackend(1), blockSize: 1000 } as unknown as TestBackend;
    expect(() => new BlkDevice(odd)).toThrow(/backend\.blockSize/);
    const neg = { ...new TestBackend(1), capacity: -1 } as unknown as TestBackend;
    expect(() => new BlkDevice(neg)).toThrow(/backend\.capacity/);
    expect(() => new BlkDevice(new TestBackend(1), { queueSize: 3 })).toThrow(/options\.queueSize/);
    expect(() => new BlkDevice(new TestBackend(1), { serial: "x".repeat(21) })).toThrow(
      /options\.serial/,
    );
  });

  it("ignores configuration writes (no CONFIG_WCE)", () => {
    const model = new BlkDevice(new TestBackend(8));
    model.writeConfig(BlkConfig.CAPACITY, 4, 99);
    expect(model.readConfig(BlkConfig.CAPACITY, 4)).toBe(8);
  });
});

describe("BlkDevice requests", () => {
  it("parses request types into a union with an unsupported arm", () => {
    expect(parseBlkRequestType(T.IN)).toEqual({ kind: "in" });
    expect(parseBlkRequestType(T.WRITE_ZEROES)).toEqual({ kind: "write-zeroes" });
    expect(parseBlkRequestType(T.GET_LIFETIME)).toEqual({ kind: "unsupported", raw: 10 });
    expect(parseBlkRequestType(-1)).toEqual({ kind: "unsupported", raw: 0xffffffff });
  });

  it("OUT writes the data to the back-end and completes OK with used length 1", async () => {
    const h = new Harness();
    const data = sectorsOf(2, (i) => i * 7);
    const r = await h.run(T.OUT, 3, { out: data });
    expect(r).toMatchObject({ status: S.OK, len: 1 });
    expect(h.backend.bytes.subarray(3 * 512, 5 * 512)).toEqual(data);
    expect(h.backend.calls).toEqual([{ op: "write", sector: 3, bytes: 1024, segments: 1 }]);
  });

  it("IN reads into scattered buffers and reports data plus status as the used length", async () => {
    const h = new Harness();
    const data = sectorsOf(3, (i) => i ^ 0x5a);
    h.backend.bytes.set(data, 10 * 512);
    const r = await h.run(T.IN, 10, { inLens: [512, 1024] });
    expect(r).toMatchObject({ status: S.OK, len: 3 * 512 + 1 });
    const got = new Uint8Array(1536);
    h.memory.read(r.req.data, got.subarray(0, 512));
    // The second buffer was allocated right after the first (both 16-aligned multiples of 512).
    h.memory.read(r.req.data + 512, got.subarray(512));
    expect(got).toEqual(data);
    expect(h.backend.calls[0]).toEqual({ op: "read", sector: 10, bytes: 1536, segments: 2 });
  });

  it("a request reusing a slot gets exactly its own segments, not the previous request's", async () => {
    const h = new Harness();
    h.backend.bytes.set(
      sectorsOf(4, (i) => i + 11),
      0,
    );
    // Three data descriptors, then one, then two: each back-end call sees only its own views
    // (the device reuses one iovec array per slot and trims it).
    const a = await h.run(T.IN, 0, { inLens: [512, 512, 1024] });
    const b = await h.run(T.IN, 1, { inLens: [512] });
    const c = await h.run(T.IN, 2, { inLens: [512, 512] });
    expect([a.len, b.len, c.len]).toEqual([2049, 513, 1025]);
    expect(h.backend.calls).toEqual([
      { op: "read", sector: 0, bytes: 2048, segments: 3 },
      { op: "read", sector: 1, bytes: 512, segments: 1 },
      { op: "read", sector: 2, bytes: 1024, segments: 2 },
    ]);
    const got = new Uint8Array(512);
    h.memory.read(b.req.data, got);
    expect(got).toEqual(h.backend.bytes.subarray(512, 1024));
  });

  it("OUT with data split across header and data descriptors at odd boundaries is gathered in order", async () => {
    const h = new Harness();
    const hdr = h.alloc(16 + 512);
    h.memory.writeU32(hdr, T.OUT);
    h.memory.writeU64(hdr + 8, 1n);
    const data = sectorsOf(1, (i) => i + 1);
    h.memory.write(hdr + 16, data);
    const status = h.alloc(1);
    // Header and the first 100 data bytes in one descriptor, the rest in another.
    h.q.add(
      [
        { addr: hdr, len: 116 },
        { addr: hdr + 116, len: 412 },
      ],
      [{ addr: status, len: 1 }],
      99,
    );
    h.kick();
    await h.model.whenIdle();
    expect(h.q.reap()).toBe(99);
    expect(h.memory.readU8(status)).toBe(S.OK);
    expect(h.backend.bytes.subarray(512, 1024)).toEqual(data);
  });

  it("FLUSH calls the back-end's flush and completes OK", async () => {
    const h = new Harness();
    const r = await h.run(T.FLUSH, 0);
    expect(r).toMatchObject({ status: S.OK, len: 1 });
    expect(h.backend.calls).toEqual([{ op: "flush" }]);
  });

  it("GET_ID writes the 20-byte serial, NUL-padded, and reports 21 bytes used", async () => {
    const h = new Harness(new TestBackend(8), { queueSize: 16, serial: "disk0" });
    const r = await h.run(T.GET_ID, 0, { inLens: [20] });
    expect(r).toMatchObject({ status: S.OK, len: 21 });
    const id = new Uint8Array(20);
    h.memory.read(r.req.data, id);
    expect(id).toEqual(concat(new TextEncoder().encode("disk0"), new Uint8Array(15)));
  });

  it("GET_ID with a short buffer gets the bytes that fit", async () => {
    const h = new Harness();
    const r = await h.run(T.GET_ID, 0, { inLens: [4] });
    expect(r).toMatchObject({ status: S.OK, len: 5 });
    expect(h.memory.readU32(r.req.data)).toBe(0x74726976); // "virt"
  });

  it("DISCARD passes every range to the back-end in order", async () => {
    const h = new Harness();
    const r = await h.run(T.DISCARD, 0, { out: concat(range(0, 8), range(16, 4)) });
    expect(r).toMatchObject({ status: S.OK, len: 1 });
    expect(h.backend.calls).toEqual([
      { op: "discard", sector: 0, count: 8 },
      { op: "discard", sector: 16, count: 4 },
    ]);
  });

  it("WRITE_ZEROES zeroes the ranges and passes the unmap flag", async () => {
    const h = new Harness();
    h.backend.bytes.fill(0xaa);
    const r = await h.run(T.WRITE_ZEROES, 0, {
      out: concat(range(2, 2, BlkDiscardWriteZeroes.FLAG_UNMAP), range(10, 1)),
    });
    expect(r).toMatchObject({ status: S.OK, len: 1 });
    expect(h.backend.calls).toEqual([
      { op: "writeZeroes", sector: 2, count: 2, unmap: true },
      { op: "writeZeroes", sector: 10, count: 1, unmap: false },
    ]);
    expect(h.backend.bytes.subarray(1024, 2048).every((b) => b === 0)).toBe(true);
    expect(h.backend.bytes[2048]).toBe(0xaa);
  });
});

describe("BlkDevice error statuses (§5.2.6.2)", () => {
  it("IN past the capacity completes with IOERR without calling the back-end", async () => {
    const h = new Harness();
    const r = await h.run(T.IN, 63, { inLens: [1024] });
    expect(r).toMatchObject({ status: S.IOERR, len: 1 });
    expect(h.backend.calls).toEqual([]);
  });

  it("IN at a sector above 2^53 completes with IOERR", async () => {
    const h = new Harness();
    const r = await h.run(T.IN, 0xffff_ffff_ffff_fff0n, { inLens: [512] });
    expect(r.status).toBe(S.IOERR);
  });

  it("OUT whose data length is not a multiple of 512 completes with IOERR", async () => {
    const h = new Harness();
    const r = await h.run(T.OUT, 0, { out: new Uint8Array(100) });
    expect(r.status).toBe(S.IOERR);
    expect(h.backend.calls).toEqual([]);
  });

  it("§5.2.6.2: OUT on a read-only device completes with IOERR and writes no data", async () => {
    const h = new Harness(new TestBackend(8, { readOnly: true }));
    expect(hasFeature(h.negotiated, BlkFeature.RO)).toBe(true);
    const r = await h.run(T.OUT, 0, { out: sectorsOf(1, () => 1) });
    expect(r.status).toBe(S.IOERR);
    expect(h.backend.calls).toEqual([]);
    expect(h.backend.bytes.every((b) => b === 0)).toBe(true);
  });

  it("an unknown request type completes with UNSUPP", async () => {
    const h = new Harness();
    expect((await h.run(T.GET_LIFETIME, 0, { inLens: [8] })).status).toBe(S.UNSUPP);
    expect((await h.run(0x1234, 0)).status).toBe(S.UNSUPP);
    expect(h.model.stats.unsupported).toBe(2);
  });

  it("DISCARD when the driver did not accept VIRTIO_BLK_F_DISCARD completes with UNSUPP", async () => {
    const h = new Harness(
      new TestBackend(64),
      { queueSize: 16 },
      (o) => o & ~featureMask(Feature.RING_PACKED) & ~featureMask(BlkFeature.DISCARD),
    );
    expect((await h.run(T.DISCARD, 0, { out: range(0, 1) })).status).toBe(S.UNSUPP);
    expect(h.backend.calls).toEqual([]);
  });

  it("DISCARD with the unmap flag or an unknown flag completes with UNSUPP", async () => {
    const h = new Harness();
    expect((await h.run(T.DISCARD, 0, { out: range(0, 1, 1) })).status).toBe(S.UNSUPP);
    expect((await h.run(T.WRITE_ZEROES, 0, { out: range(0, 1, 2) })).status).toBe(S.UNSUPP);
    expect(h.backend.calls).toEqual([]);
  });

  it("more ranges than max_discard_seg completes with UNSUPP", async () => {
    const h = new Harness(new TestBackend(64), { queueSize: 16, maxRanges: 1 });
    const r = await h.run(T.DISCARD, 0, { out: concat(range(0, 1), range(1, 1)) });
    expect(r.status).toBe(S.UNSUPP);
  });

  it("a range longer than max_write_zeroes_sectors or past the capacity completes with IOERR", async () => {
    const h = new Harness(new TestBackend(64), { queueSize: 16, maxWriteZeroesSectors: 8 });
    expect((await h.run(T.WRITE_ZEROES, 0, { out: range(0, 9) })).status).toBe(S.IOERR);
    expect((await h.run(T.DISCARD, 0, { out: range(60, 5) })).status).toBe(S.IOERR);
    expect(h.backend.calls).toEqual([]);
  });

  it("a back-end rejection completes the request with IOERR and is counted", async () => {
    const h = new Harness();
    const boom = new Error("disk on fire");
    h.backend.failNext = boom;
    const r = await h.run(T.IN, 0, { inLens: [512] });
    expect(r).toMatchObject({ status: S.IOERR, len: 1 });
    expect(h.model.stats.backendErrors).toBe(1);
    expect(h.model.lastBackendError).toBe(boom);
    // The device keeps serving.
    expect((await h.run(T.FLUSH, 0)).status).toBe(S.OK);
  });

  it("a back-end that throws synchronously is reported as IOERR too", async () => {
    const backend = new TestBackend(8);
    backend.flush = () => {
      throw new Error("sync throw");
    };
    const h = new Harness(backend);
    expect((await h.run(T.FLUSH, 0)).status).toBe(S.IOERR);
  });
});

describe("BlkDevice malformed requests", () => {
  it("a header shorter than 16 bytes completes with IOERR and is noted as a guest fault", async () => {
    const h = new Harness();
    const r = await h.run(T.IN, 0, { headerLen: 8, inLens: [512] });
    expect(r).toMatchObject({ status: S.IOERR, len: 1 });
    expect(h.device.core.faultCounts.get("blk-short-header")).toBe(1);
    expect(h.device.core.lastFault).toBeInstanceOf(BlkGuestRequestError);
    expect(h.device.core.needsReset).toBe(false);
    expect(h.model.stats.malformed).toBe(1);
  });

  it("a chain without a writable status byte is returned with used length 0, device still live", async () => {
    const h = new Harness();
    const r = await h.run(T.FLUSH, 0, { statusByte: false });
    expect(r.len).toBe(0);
    expect(h.memory.readU8(r.req.status)).toBe(0xff);
    expect(h.device.core.faultCounts.get("blk-no-status")).toBe(1);
    expect(h.device.core.needsReset).toBe(false);
    expect(h.backend.calls).toEqual([]);
    expect((await h.run(T.FLUSH, 0)).status).toBe(S.OK);
  });

  it("DISCARD with a payload that is not whole 16-byte ranges completes with IOERR", async () => {
    const h = new Harness();
    expect((await h.run(T.DISCARD, 0, { out: new Uint8Array(10) })).status).toBe(S.IOERR);
    expect((await h.run(T.DISCARD, 0)).status).toBe(S.IOERR);
    expect(h.device.core.faultCounts.get("blk-bad-ranges")).toBe(2);
  });
  it("§2.1.2: a hostile ring (avail entry naming a head past the queue size) sets DEVICE_NEEDS_RESET", () => {
    const h = new Harness();
    // Raw split-ring writes (avail ring at 0x2000: flags, idx, ring[]), bypassing our driver.
    h.memory.writeU16(0x2004, 99);
    h.memory.writeU16(0x2002, 1);
    h.driver.notify(0);
    expect(h.device.core.needsReset).toBe(true);
    expect(h.backend.calls).toEqual([]);
  });
});

describe("BlkDevice asynchronous completion", () => {
  it("completes requests out of order as the back-end finishes them", async () => {
    const h = new Harness();
    h.backend.hold = true;
    h.backend.bytes.fill(1, 0, 512);
    h.backend.bytes.fill(2, 512, 1024);
    const a = h.add(T.IN, 0, { inLens: [512] });
    const b = h.add(T.IN, 1, { inLens: [512] });
    h.kick();
    await new Promise((r) => setImmediate(r));
    expect(h.model.inFlight).toBe(2);
    expect(h.backend.parked.length).toBe(2);
    await h.backend.release(1);
    expect(h.q.reap()).toBe(b.token);
    expect(h.q.reap()).toBeUndefined();
    expect(h.memory.readU8(b.data)).toBe(2);
    await h.backend.release(0);
    expect(h.q.reap()).toBe(a.token);
    expect(h.memory.readU8(a.data)).toBe(1);
    expect(h.model.inFlight).toBe(0);
  });

  it("sends a used buffer interrupt for each asynchronous completion", async () => {
    const h = new Harness();
    await h.run(T.FLUSH, 0);
    expect(h.device.core.stats.usedInterrupts).toBe(1);
    expect(h.driver.takeInterrupt() & 1).toBe(1);
  });

  it("drops a completion that arrives after a device reset, touching no guest memory", async () => {
    const h = new Harness();
    h.backend.hold = true;
    const a = h.add(T.FLUSH, 0);
    h.kick();
    await new Promise((r) => setImmediate(r));
    h.driver.reset();
    await h.backend.release(0);
    await h.model.whenIdle();
    expect(h.model.stats.stale).toBe(1);
    expect(h.memory.readU8(a.status)).toBe(0xff);
  });

  it("keeps as many requests in flight as the ring holds and completes them in reverse", async () => {
    const h = new Harness();
    h.backend.hold = true;
    // Two descriptors per FLUSH request: 8 fill the 16-entry descriptor table.
    const reqs = Array.from({ length: 8 }, () => h.add(T.FLUSH, 0));
    h.kick();
    await new Promise((r) => setImmediate(r));
    expect(h.model.inFlight).toBe(8);
    for (let i = 7; i >= 0; i--) await h.backend.release(i);
    const reaped: number[] = [];
    for (let t = h.q.reap(); t !== undefined; t = h.q.reap()) reaped.push(t);
    expect(reaped).toEqual(reqs.map((r) => r.token).reverse());
    for (const r of reqs) expect(h.memory.readU8(r.status)).toBe(S.OK);
  });

  it("whenIdle resolves at once when nothing is in flight", async () => {
    const h = new Harness();
    await expect(h.model.whenIdle()).resolves.toBeUndefined();
  });
});

describe("BlkDevice with a back-end that completes synchronously (readSync / writeSync)", () => {
  class SyncBackend extends TestBackend {
    syncCalls = 0;
    failSync: Error | undefined = undefined;
    readSync(sector: number, iovecs: readonly Uint8Array[]): void {
      this.syncCalls++;
      if (this.failSync !== undefined) throw this.failSync;
      let at = sector * 512;
      for (const v of iovecs) {
        v.set(this.bytes.subarray(at, at + v.length));
        at += v.length;
      }
    }
    writeSync(sector: number, iovecs: readonly Uint8Array[]): void {
      this.syncCalls++;
      let at = sector * 512;
      for (const v of iovecs) {
        this.bytes.set(v, at);
        at += v.length;
      }
    }
  }

  it("completes a read inside the notification: the used entry and the interrupt are there when the kick returns", () => {
    const b = new SyncBackend(64);
    const h = new Harness(b);
    b.bytes.set(
      sectorsOf(1, (i) => i + 3),
      5 * 512,
    );
    const req = h.add(T.IN, 5, { inLens: [512] });
    h.kick();
    expect(h.device.core.interruptStatus & 1).toBe(1);
    expect(h.q.reap()).toBe(req.token);
    expect(h.q.lastLen).toBe(513);
    expect(h.memory.readU8(req.status)).toBe(S.OK);
    expect(h.memory.readU8(req.data + 1)).toBe(4);
    expect(b.syncCalls).toBe(1);
    expect(b.calls).toEqual([]);
  });

  it("completes a write inside the notification and the bytes are on the back-end", () => {
    const b = new SyncBackend(64);
    const h = new Harness(b);
    const data = sectorsOf(2, (i) => i * 5);
    const req = h.add(T.OUT, 7, { out: data });
    h.kick();
    expect(h.q.reap()).toBe(req.token);
    expect(h.memory.readU8(req.status)).toBe(S.OK);
    expect(b.bytes.subarray(7 * 512, 9 * 512)).toEqual(data);
  });

  it("answers IOERR with used length 1 when the synchronous read throws, and counts the back-end error", () => {
    const b = new SyncBackend(64);
    const h = new Harness(b);
    b.failSync = new Error("disk gone");
    const req = h.add(T.IN, 1, { inLens: [512] });
    h.kick();
    expect(h.q.reap()).toBe(req.token);
    expect(h.q.lastLen).toBe(1);
    expect(h.memory.readU8(req.status)).toBe(S.IOERR);
    expect(h.model.stats.backendErrors).toBe(1);
    expect(h.model.lastBackendError).toBe(b.failSync);
  });

  it("still sends FLUSH through the asynchronous flush()", async () => {
    const b = new SyncBackend(64);
    const h = new Harness(b);
    const r = await h.run(T.FLUSH, 0);
    expect(r.status).toBe(S.OK);
    expect(b.calls).toEqual([{ op: "flush" }]);
  });
});
