import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { CaptureDirection } from "../src/index.js";
import {
  LINKTYPE_ETHERNET,
  PcapFormatError,
  PcapngWriter,
  readPcap,
  readPcapng,
} from "../src/node.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "vts-pcap-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A frame whose bytes encode `n`, so frames can be told apart after a round trip. */
function frame(n: number, len = 60): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (n * 31 + i) & 0xff;
  return f;
}

/** A clock that advances 1.5 ms per reading from a fixed instant. */
function stepClock(startMs = 1_700_000_000_000.25): () => number {
  let t = startMs;
  return () => {
    const now = t;
    t += 1.5;
    return now;
  };
}

describe("PcapngWriter and readPcapng", () => {
  it("round-trips frames, lengths, microsecond timestamps, directions and interfaces", async () => {
    const path = join(dir, "rt.pcapng");
    const w = new PcapngWriter(path, {
      interfaces: ["vm0", "vm1"],
      snaplen: 100,
      now: stepClock(),
      flushIntervalMs: 0,
    });
    const dirs: CaptureDirection[] = ["outbound", "inbound", "unknown", "outbound"];
    const lens = [60, 61, 1514, 14];
    for (let i = 0; i < 4; i++) w.record(i % 2, frame(i, lens[i]), dirs[i]!);
    await w.close();

    const cap = readPcapng(readFileSync(path));
    expect(cap.interfaces.map((i) => [i.name, i.linkType, i.snaplen, i.unitsPerSecond])).toEqual([
      ["vm0", LINKTYPE_ETHERNET, 100, 1_000_000n],
      ["vm1", LINKTYPE_ETHERNET, 100, 1_000_000n],
    ]);
    expect(cap.packets.map((p) => p.interfaceId)).toEqual([0, 1, 0, 1]);
    expect(cap.packets.map((p) => p.direction)).toEqual(dirs);
    expect(cap.packets.map((p) => p.originalLength)).toEqual([60, 61, 1514, 14]);
    expect(cap.packets.map((p) => p.data.length)).toEqual([60, 61, 100, 14]);
    expect(cap.packets[0]!.data).toEqual(frame(0, 60));
    expect(cap.packets[1]!.data).toEqual(frame(1, 61));
    expect(cap.packets[2]!.data).toEqual(frame(2, 1514).subarray(0, 100));
    expect(cap.packets.map((p) => p.timestampNs)).toEqual([
      1_700_000_000_000_250_000n,
      1_700_000_000_001_750_000n,
      1_700_000_000_003_250_000n,
      1_700_000_000_004_750_000n,
    ]);
    expect(w.stats).toMatchObject({ records: 4, dropped: 0, truncated: 1, writeErrors: 0 });
    expect(w.stats.bytesWritten).toBe(statSync(path).size);
  });

  it("retracts the last record while it is still buffered, and only that one", async () => {
    const path = join(dir, "retract.pcapng");
    const w = new PcapngWriter(path, { flushIntervalMs: 0, now: stepClock() });
    const t1 = w.record(0, frame(1), "inbound");
    const t2 = w.record(0, frame(2), "inbound");
    expect(w.retract(t1)).toBe(false);
    expect(w.retract(t2)).toBe(true);
    expect(w.retract(t2)).toBe(false);
    w.record(0, frame(3), "outbound");
    await w.close();
    const cap = readPcapng(readFileSync(path));
    expect(cap.packets.map((p) => p.data[0])).toEqual([frame(1)[0], frame(3)[0]]);
    expect(w.stats.records).toBe(2);
  });

  it("drops and counts records instead of growing when the disk falls behind", async () => {
    const path = join(dir, "burst.pcapng");
    const w = new PcapngWriter(path, { snaplen: 1514, bufferBytes: 4096, flushIntervalMs: 0 });
    // Synchronous burst: no write can complete before it ends, so at most two buffers fill.
    for (let i = 0; i < 1000; i++) w.record(0, frame(i, 200), "outbound");
    expect(w.stats.dropped).toBeGreaterThan(900);
    expect(w.stats.records + w.stats.dropped).toBe(1000);
    await w.close();
    const cap = readPcapng(readFileSync(path));
    expect(cap.packets.length).toBe(w.stats.records);
    // The frames kept are the first ones, in order, without gaps.
    expect(cap.packets.map((p) => p.data[0])).toEqual(
      Array.from({ length: w.stats.records }, (_, i) => frame(i, 200)[0]),
    );
  });

  it("drops and counts records after close", async () => {
    const w = new PcapngWriter(join(dir, "closed.pcapng"), { flushIntervalMs: 0 });
    await w.close();
    expect(w.record(0, frame(0), "outbound")).toBe(0);
    expect(w.stats.dropped).toBe(1);
  });

  it("rotates by size, keeping the newest files and starting each with its own headers", async () => {
    const path = join(dir, "rot.pcapng");
    // Header ~ 100 bytes, each 100-byte frame takes a 144-byte block: 3 packets per file.
    const w = new PcapngWriter(path, {
      rotateBytes: 600,
      keep: 2,
      flushIntervalMs: 0,
      interfaces: ["rot0"],
    });
    for (let i = 0; i < 14; i++) {
      w.record(0, frame(i, 100), "outbound");
      await w.flush(); // let each rotation complete so none is dropped
    }
    await w.close();
    expect(w.stats.dropped).toBe(0);
    expect(w.stats.rotations).toBe(4); // files of 3,3,3,3,2 packets
    expect(existsSync(join(dir, "rot.3.pcapng"))).toBe(false);
    const older = readPcapng(readFileSync(join(dir, "rot.2.pcapng")));
    const previous = readPcapng(readFileSync(join(dir, "rot.1.pcapng")));
    const current = readPcapng(readFileSync(path));
    const first = (c: typeof current): number[] => c.packets.map((p) => p.data[0]!);
    expect(first(older)).toEqual([6, 7, 8].map((i) => frame(i, 100)[0]!));
    expect(first(previous)).toEqual([9, 10, 11].map((i) => frame(i, 100)[0]!));
    expect(first(current)).toEqual([12, 13].map((i) => frame(i, 100)[0]!));
    for (const name of ["rot.pcapng", "rot.1.pcapng", "rot.2.pcapng"]) {
      expect(statSync(join(dir, name)).size).toBeLessThanOrEqual(600);
      expect(readPcapng(readFileSync(join(dir, name))).interfaces[0]!.name).toBe("rot0");
    }
  });

  it("rejects a non-positive rotation size, naming rotateBytes", () => {
    expect(() => new PcapngWriter(join(dir, "x.pcapng"), { rotateBytes: 0 })).toThrow(RangeError);
    expect(() => new PcapngWriter(join(dir, "x.pcapng"), { rotateBytes: -5 })).toThrow(
      /rotateBytes/,
    );
  });

  it("rejects an unwritable capture path, naming path", () => {
    const bad = join(dir, "no-such-dir", "x.pcapng");
    expect(() => new PcapngWriter(bad)).toThrow(RangeError);
    expect(() => new PcapngWriter(bad)).toThrow(/path .*no-such-dir/);
  });

  it("rejects a snaplen below an Ethernet header and a buffer smaller than one record", () => {
    expect(() => new PcapngWriter(join(dir, "x.pcapng"), { snaplen: 10 })).toThrow(/snaplen/);
    expect(
      () => new PcapngWriter(join(dir, "y.pcapng"), { snaplen: 2000, bufferBytes: 1000 }),
    ).toThrow(/bufferBytes/);
  });
});

describe("readPcapng on hostile input", () => {
  it("rejects a file that is not pcapng with a bad-magic PcapFormatError", () => {
    expect(() => readPcapng(new Uint8Array(64))).toThrow(PcapFormatError);
    try {
      readPcapng(new Uint8Array(64));
    } catch (e) {
      expect((e as PcapFormatError).code).toBe("bad-magic");
    }
  });

  it("rejects a truncated file with a truncated PcapFormatError", async () => {
    const path = join(dir, "t.pcapng");
    const w = new PcapngWriter(path, { flushIntervalMs: 0 });
    w.record(0, frame(1), "outbound");
    await w.close();
    const bytes = readFileSync(path);
    expect(() => readPcapng(bytes.subarray(0, bytes.length - 10))).toThrow(/truncated/);
  });

  it("only ever returns a capture or throws PcapFormatError for random corruptions", async () => {
    const path = join(dir, "fuzz.pcapng");
    const w = new PcapngWriter(path, { flushIntervalMs: 0, interfaces: ["a", "b"] });
    for (let i = 0; i < 5; i++) w.record(i % 2, frame(i, 40 + i), "inbound");
    await w.close();
    const good = new Uint8Array(readFileSync(path));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.nat(good.length),
        (edits, cut) => {
          const bad = good.slice(0, Math.max(cut, 1));
          for (const [at, value] of edits) if (at < bad.length) bad[at] = value;
          try {
            const cap = readPcapng(bad);
            for (const p of cap.packets) expect(p.data.length).toBeLessThanOrEqual(bad.length);
          } catch (e) {
            expect(e).toBeInstanceOf(PcapFormatError);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe("readPcap (classic libpcap)", () => {
  it("parses a nanosecond little-endian file with its lengths and timestamps", () => {
    const out = new Uint8Array(24 + 16 + 4);
    const v = new DataView(out.buffer);
    v.setUint32(0, 0xa1b23c4d, true);
    v.setUint16(4, 2, true);
    v.setUint16(6, 4, true);
    v.setUint32(16, 65535, true);
    v.setUint32(20, 1, true);
    v.setUint32(24, 1_700_000_000, true);
    v.setUint32(28, 123_456_789, true);
    v.setUint32(32, 4, true);
    v.setUint32(36, 60, true);
    out.set([1, 2, 3, 4], 40);
    const cap = readPcap(out);
    expect(cap.interfaces[0]).toMatchObject({ linkType: 1, snaplen: 65535 });
    expect(cap.packets).toHaveLength(1);
    expect(cap.packets[0]).toMatchObject({
      timestampNs: 1_700_000_000_123_456_789n,
      originalLength: 60,
      direction: "unknown",
    });
    expect([...cap.packets[0]!.data]).toEqual([1, 2, 3, 4]);
  });

  it("rejects a record that claims more bytes than the file has", () => {
    const out = new Uint8Array(24 + 16);
    const v = new DataView(out.buffer);
    v.setUint32(0, 0xa1b2c3d4, true);
    v.setUint32(32, 1000, true);
    expect(() => readPcap(out)).toThrow(/truncated/);
  });
});
