import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";
import { BlkDevice } from "@virtio-ts/devices";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encrypt,
  LOG_HEADER_BYTES,
  LOG_RECORD_HEADER_BYTES,
  type SnapshotLog,
  SnapshotLogError,
  snapshotLog,
} from "../src/node.js";
import { buildInterpose } from "./helpers/build-for-child.js";
import { pseudoRandom, RamDisk, splitAt } from "./helpers/ram-disk.js";

let dir = "";
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "virtio-ts-log-"));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function logPath(): string {
  n++;
  return join(dir, `l${n}.log`);
}

/** The whole disk as the guest sees it. */
async function contents(disk: SnapshotLog): Promise<Uint8Array> {
  const out = new Uint8Array(disk.capacity * 512);
  await disk.read(0, [out]);
  return out;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * Start a commit, which waits until no read or write is active, and say how it ended within 2 s:
 * "committed", "failed", or "still waiting" (a request that never released the log).
 */
async function commitOutcome(log: SnapshotLog): Promise<string> {
  const committed = log.commit().then(
    () => "committed",
    () => "failed",
  );
  const late = new Promise<string>((r) => setTimeout(() => r("still waiting"), 2000));
  return Promise.race([committed, late]);
}

/** Apply a write to a reference model. */
function put(model: Uint8Array, sector: number, data: Uint8Array): void {
  model.set(data, sector * 512);
}

describe("snapshotLog", () => {
  it("appends writes to the log, reads the newest data over the base, never writes the base", async () => {
    const base = new RamDisk(16, { fill: 0xee });
    const log = await snapshotLog(base, logPath(), { create: true });
    expect([log.capacity, log.blockSize, log.readOnly, log.logBytes]).toEqual([
      16,
      512,
      false,
      512,
    ]);
    const data = pseudoRandom(3 * 512, 1);
    await log.write(2, splitAt(data, 5, 700));
    expect(log.logBytes).toBe(LOG_HEADER_BYTES + LOG_RECORD_HEADER_BYTES + 3 * 512);
    const got = new Uint8Array(6 * 512);
    await log.read(0, splitAt(got, 1, 1025, 2000));
    const want = new Uint8Array(6 * 512).fill(0xee);
    want.set(data, 1024);
    expect(got).toEqual(want);
    expect(base.calls.filter((c) => !c.startsWith("read"))).toEqual([]);
    expect(base.bytes.every((b) => b === 0xee)).toBe(true);
    await log.close();
  });

  it("matches a reference model over 300 random (partly concurrent) writes, zeroings and reopen", async () => {
    const base = new RamDisk(64, { fill: 0x11 });
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    const model = base.bytes.slice();
    const rnd = pseudoRandom(4096, 2);
    let r = 0;
    const next = (m: number): number => rnd[r++ % rnd.length]! % m;
    for (let round = 0; round < 60; round++) {
      // Five requests issued together: they may complete in any order, the later one wins.
      const batch: Promise<void>[] = [];
      for (let k = 0; k < 5; k++) {
        const count = 1 + next(6);
        const sector = next(64 - count + 1);
        if (next(5) === 0) {
          model.fill(0, sector * 512, (sector + count) * 512);
          batch.push(log.writeZeroes(sector, count, false));
        } else {
          const data = pseudoRandom(count * 512, round * 8 + k + 3);
          put(model, sector, data);
          batch.push(log.write(sector, splitAt(data, next(count * 512))));
        }
      }
      await Promise.all(batch);
      if (round % 10 === 0) expect(same(await contents(log), model)).toBe(true);
      // Short reads, split into iovecs: most lie inside one record or zeroed run (one log read
      // or a fill), the others span several, a gap or the base.
      for (let k = 0; k < 4; k++) {
        const count = 1 + next(4);
        const sector = next(64 - count + 1);
        const got = new Uint8Array(count * 512).fill(0xa5); // so a zeroed run must be filled
        await log.read(sector, splitAt(got, next(count * 512)));
        expect(same(got, model.subarray(sector * 512, (sector + count) * 512))).toBe(true);
      }
    }
    expect(same(await contents(log), model)).toBe(true);
    expect(log.sequence).toBe(300);
    await log.flush();
    await log.close();
    const again = await snapshotLog(base, path);
    expect(same(await contents(again), model)).toBe(true);
    expect(again.tornBytes).toBe(0);
    await again.close();
  });

  it("64 writes issued together are appended as one batch, in order, and close waits for them and for reads in flight", async () => {
    const base = new RamDisk(256, { fill: 0x22 });
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    const writes = Array.from({ length: 64 }, (_, i) =>
      log.write(i * 2, [pseudoRandom(1024, i + 40)]),
    );
    // Nothing is in the file before the next turn: the records wait in one batch.
    expect(statSync(path).size).toBe(LOG_HEADER_BYTES);
    await Promise.all(writes);
    expect(log.logBytes).toBe(LOG_HEADER_BYTES + 64 * (LOG_RECORD_HEADER_BYTES + 1024));
    const outs = Array.from({ length: 64 }, () => new Uint8Array(1024));
    let settled = 0;
    const reads = outs.map((o, i) => log.read(i * 2, [o]).finally(() => settled++));
    // close() resolves only after every read in flight has settled.
    const closed = log.close().then(() => settled);
    await Promise.all(reads);
    expect(await closed).toBe(64);
    for (const [i, o] of outs.entries()) expect(o).toEqual(pseudoRandom(1024, i + 40));
    const again = await snapshotLog(base, path);
    expect(again.sequence).toBe(64);
    await again.close();
  });

  it("a read inside one logged extent, or outside every extent, releases the log when it settles: a commit after it completes", async () => {
    const base = new RamDisk(16, { fill: 0x5a });
    const log = await snapshotLog(base, logPath(), { create: true });
    await log.write(4, [pseudoRandom(1024, 7)]);
    const got = new Uint8Array(1024);
    await log.read(4, [got]);
    expect(got).toEqual(pseudoRandom(1024, 7));
    // Sectors 8–11: no record wrote them, so the base answers (split across two buffers).
    const fromBase = [new Uint8Array(512), new Uint8Array(1536)];
    await log.read(8, fromBase);
    expect(fromBase.every((b) => b.every((x) => x === 0x5a))).toBe(true);
    expect(base.calls.filter((c) => c.startsWith("read"))).toHaveLength(1);
    // A commit waits until no read or write is active; a read never released would hang it.
    expect(await commitOutcome(log)).toBe("committed");
    await log.close();
  });

  it("a log read that finds the file cut short rejects with BackendError io, and the log is released", async () => {
    const path = logPath();
    const log = await snapshotLog(new RamDisk(16), path, { create: true });
    await log.write(4, [pseudoRandom(1024, 8)]);
    await log.flush();
    // Cut the file behind the log's back: the record's data is gone.
    await writeFile(path, (await readFile(path)).subarray(0, LOG_HEADER_BYTES));
    await expect(log.read(4, [new Uint8Array(1024)])).rejects.toMatchObject({
      name: "BackendError",
      code: "io",
    });
    // A commit waits until no request is active: it ends (here it fails, the log being cut).
    expect(["committed", "failed"]).toContain(await commitOutcome(log));
    await log.close();
  });

  it("a read refused by fs.readv itself (an iovec that is not a view) rejects and releases the log", async () => {
    const log = await snapshotLog(new RamDisk(16), logPath(), { create: true });
    await log.write(4, [pseudoRandom(1024, 9)]);
    const notAView = { length: 1024 } as unknown as Uint8Array;
    await expect(log.read(4, [notAView])).rejects.toThrow();
    expect(["committed", "failed"]).toContain(await commitOutcome(log));
    await log.close();
  });

  it("close waits for a read paused between its pieces, which then reads the log after the base", async () => {
    const base = new RamDisk(16, { fill: 0x33 });
    const log = await snapshotLog(base, logPath(), { create: true });
    await log.write(2, [pseudoRandom(512, 11)]);
    // Sectors 1–2: the base's sector 1, then the log's sector 2. The base answers when told to.
    let answer!: () => void;
    const baseRead = base.read.bind(base);
    base.read = (sector, iovecs) =>
      new Promise<void>((r) => {
        answer = r;
      }).then(() => baseRead(sector, iovecs));
    const got = new Uint8Array(1024);
    const read = log.read(1, [got]);
    await new Promise((r) => setTimeout(r, 10));
    let closed = false;
    const closing = log.close().then(() => {
      closed = true;
    });
    await new Promise((r) => setTimeout(r, 10));
    expect(closed).toBe(false);
    answer();
    await read;
    await closing;
    const want = new Uint8Array(1024).fill(0x33);
    want.set(pseudoRandom(512, 11), 512);
    expect(got).toEqual(want);
  });

  it("a base read that fails rejects with the base's error and releases the log", async () => {
    const base = new RamDisk(16);
    const log = await snapshotLog(base, logPath(), { create: true });
    const broken = new Error("base read failed");
    base.read = () => Promise.reject(broken);
    await expect(log.read(8, [new Uint8Array(512)])).rejects.toBe(broken);
    const thrown = new Error("base read threw");
    base.read = () => {
      throw thrown;
    };
    await expect(log.read(8, [new Uint8Array(512)])).rejects.toBe(thrown);
    expect(["committed", "failed"]).toContain(await commitOutcome(log));
    await log.close();
  });

  it("discard leaves the data; flush fdatasyncs and appends one flush marker per flushed batch", async () => {
    const log = await snapshotLog(new RamDisk(8), logPath(), { create: true });
    await log.write(0, [new Uint8Array(512).fill(7)]);
    await log.discard(0, 8);
    const size = log.logBytes;
    await log.flush();
    expect(log.logBytes).toBe(size + LOG_RECORD_HEADER_BYTES);
    await log.flush();
    expect(log.logBytes).toBe(size + LOG_RECORD_HEADER_BYTES);
    const got = new Uint8Array(512);
    await log.read(0, [got]);
    expect(got.every((b) => b === 7)).toBe(true);
    await log.close();
  });

  it("rolls back to a named snapshot durably, dropping later writes and snapshots", async () => {
    const base = new RamDisk(16);
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    await log.write(1, [new Uint8Array(512).fill(1)]);
    const s1 = await log.snapshot("clean");
    expect(s1).toEqual({ name: "clean", sequence: 2, logBytes: log.logBytes - 32 });
    await log.write(1, [new Uint8Array(512).fill(2)]);
    await log.write(2, [new Uint8Array(512).fill(2)]);
    await log.snapshot("later");
    await log.writeZeroes(1, 1, false);
    expect(log.snapshots.map((s) => s.name)).toEqual(["clean", "later"]);
    await log.rollback("clean");
    expect(log.snapshots.map((s) => s.name)).toEqual(["clean"]);
    expect(log.logBytes).toBe(s1.logBytes);
    expect((await stat(path)).size).toBe(s1.logBytes);
    const want = new Uint8Array(16 * 512);
    want.fill(1, 512, 1024);
    expect(same(await contents(log), want)).toBe(true);
    // New writes continue the sequence after the marker, and a reopen sees the same state.
    await log.write(3, [new Uint8Array(512).fill(3)]);
    want.fill(3, 1536, 2048);
    await log.flush();
    await log.close();
    const again = await snapshotLog(base, path);
    expect(again.snapshots).toEqual([s1]);
    expect(same(await contents(again), want)).toBe(true);
    await again.close();
  });

  it("rejects duplicate, empty and unknown snapshot names with RangeErrors naming name", async () => {
    const log = await snapshotLog(new RamDisk(8), logPath(), { create: true });
    await log.snapshot("a");
    await expect(log.snapshot("a")).rejects.toThrow(/^name: a snapshot called "a" already exists/);
    await expect(log.snapshot("")).rejects.toThrow(/^name must be 1 to 255 bytes/);
    await expect(log.snapshot("x".repeat(256))).rejects.toThrow(/^name must be 1 to 255 bytes/);
    await expect(log.rollback("b")).rejects.toThrow(/^name: no snapshot called "b"/);
    await log.close();
  });

  it("commits: writes the base, flushes it while the log is intact, then truncates the log", async () => {
    const base = new RamDisk(32, { fill: 0x55 });
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    const model = base.bytes.slice();
    const a = pseudoRandom(5 * 512, 4);
    await log.write(3, [a]);
    put(model, 3, a);
    await log.writeZeroes(5, 4, false);
    model.fill(0, 5 * 512, 9 * 512);
    await log.snapshot("s");
    const b = pseudoRandom(512, 5);
    await log.write(20, [b]);
    put(model, 20, b);
    let logSizeAtBaseFlush = -1;
    base.onFlush = () => {
      logSizeAtBaseFlush = statSync(path).size;
    };
    await log.commit();
    expect(logSizeAtBaseFlush).toBeGreaterThan(LOG_HEADER_BYTES);
    expect(statSync(path).size).toBe(LOG_HEADER_BYTES);
    expect([log.logBytes, log.extentCount, log.sequence, log.snapshots.length]).toEqual([
      512, 0, 0, 0,
    ]);
    expect(same(base.bytes, model)).toBe(true);
    expect(same(await contents(log), model)).toBe(true);
    await log.write(0, [new Uint8Array(512).fill(9)]);
    model.fill(9, 0, 512);
    await log.flush();
    await log.close();
    const again = await snapshotLog(base, path);
    expect(same(await contents(again), model)).toBe(true);
    await again.close();
  });

  it("a commit that fails before the log is truncated leaves the log to serve the same data", async () => {
    const base = new RamDisk(16);
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    await log.write(4, [new Uint8Array(1024).fill(4)]);
    await log.flush();
    const size = log.logBytes;
    const before = await contents(log);
    base.onFlush = () => {
      throw new Error("power cut");
    };
    await expect(log.commit()).rejects.toThrow("power cut");
    expect((await stat(path)).size).toBe(size);
    await log.close();
    base.onFlush = undefined;
    const again = await snapshotLog(base, path);
    expect(same(await contents(again), before)).toBe(true);
    await again.commit();
    expect(same(base.bytes, before)).toBe(true);
    await again.close();
  });

  it("commit refuses a read-only base with BackendError read-only", async () => {
    const log = await snapshotLog(new RamDisk(8, { readOnly: true }), logPath(), { create: true });
    await expect(log.commit()).rejects.toMatchObject({ name: "BackendError", code: "read-only" });
    await log.close();
  });

  it("stacks under encrypt: the log file holds only ciphertext and reads back the plaintext", async () => {
    const path = logPath();
    const log = await snapshotLog(new RamDisk(32), path, { create: true });
    const disk = encrypt(log, pseudoRandom(64, 77));
    const text = new TextEncoder().encode("TOP SECRET PAYLOAD ".repeat(108).slice(0, 2048));
    await disk.write(4, [text]);
    await disk.flush();
    expect(Buffer.from(await readFile(path)).indexOf("SECRET")).toBe(-1);
    const back = new Uint8Array(2048);
    await disk.read(4, [back]);
    expect(back).toEqual(text);
    await log.close();
  });

  it("serves a BlkDevice", async () => {
    const log = await snapshotLog(new RamDisk(64), logPath(), { create: true });
    expect(new BlkDevice(log, { serial: "log" }).readConfig(0, 4)).toBe(64);
    await log.close();
  });
});

describe("snapshotLog crash consistency", () => {
  /** A log with flushed history and three unflushed records after it. */
  async function history(): Promise<{
    path: string;
    bytes: Uint8Array;
    flushedAt: number;
    markerAt: number;
    stages: { end: number; model: Uint8Array }[];
  }> {
    const base = new RamDisk(32, { fill: 0xee });
    const path = logPath();
    const log = await snapshotLog(base, path, { create: true });
    const model = base.bytes.slice();
    for (let i = 0; i < 12; i++) {
      const count = 1 + (i % 3);
      const data = pseudoRandom(count * 512, 40 + i);
      await log.write((i * 5) % 28, [data]);
      put(model, (i * 5) % 28, data);
    }
    await log.writeZeroes(2, 3, false);
    model.fill(0, 1024, 2560);
    const markerAt = log.logBytes;
    await log.flush();
    const flushedAt = log.logBytes;
    const stages = [{ end: flushedAt, model: model.slice() }];
    await log.write(3, [pseudoRandom(512, 90)]);
    put(model, 3, pseudoRandom(512, 90));
    stages.push({ end: log.logBytes, model: model.slice() });
    await log.writeZeroes(4, 3, false);
    model.fill(0, 4 * 512, 7 * 512);
    stages.push({ end: log.logBytes, model: model.slice() });
    await log.write(2, splitAt(pseudoRandom(1024, 91), 100));
    put(model, 2, pseudoRandom(1024, 91));
    stages.push({ end: log.logBytes, model: model.slice() });
    await log.close();
    return { path, bytes: await readFile(path), flushedAt, markerAt, stages };
  }

  it("a log cut at every byte of its last records reopens at the last complete record, never losing flushed data", async () => {
    const h = await history();
    expect(h.bytes.length).toBe(h.stages[3]!.end);
    const copy = `${h.path}.cut`;
    const base = new RamDisk(32, { fill: 0xee });
    let checked = 0;
    for (let t = h.markerAt; t <= h.bytes.length; t++) {
      await writeFile(copy, h.bytes.subarray(0, t));
      const readOnly = t % 37 !== 0;
      const log = await snapshotLog(base, copy, { readOnly });
      let stage = h.stages[0]!;
      for (const s of h.stages) if (s.end <= t) stage = s;
      const complete = t < h.flushedAt ? h.markerAt : stage.end;
      expect(log.tornBytes).toBe(t - complete);
      expect(same(await contents(log), stage.model)).toBe(true);
      await log.close();
      // A writable open cuts the torn bytes off, so new records follow a valid one.
      if (!readOnly) expect((await stat(copy)).size).toBe(complete);
      checked++;
    }
    expect(checked).toBe(h.bytes.length - h.markerAt + 1);
  });

  it("a damaged record before the last flush marker is SnapshotLogError corrupt and is never applied", async () => {
    const h = await history();
    const bad = Uint8Array.from(h.bytes);
    const second = LOG_HEADER_BYTES + LOG_RECORD_HEADER_BYTES + 512; // record 2 starts here
    bad[second + LOG_RECORD_HEADER_BYTES + 100]! ^= 0x01; // a payload byte
    const path = `${h.path}.bad`;
    await writeFile(path, bad);
    const err = await snapshotLog(new RamDisk(32, { fill: 0xee }), path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotLogError);
    expect(err).toMatchObject({ code: "corrupt", offset: second, path });
  });

  it("a damaged record after the last flush is a torn tail: ignored with everything after it", async () => {
    const h = await history();
    const bad = Uint8Array.from(h.bytes);
    bad[h.stages[1]!.end + 20]! ^= 0x80; // the ZEROES record's count field
    const path = `${h.path}.tail`;
    await writeFile(path, bad);
    const log = await snapshotLog(new RamDisk(32, { fill: 0xee }), path);
    expect(log.tornBytes).toBe(h.bytes.length - h.stages[1]!.end);
    expect(same(await contents(log), h.stages[1]!.model)).toBe(true);
    await log.close();
  });
});

describe("snapshotLog configuration errors", () => {
  it("a missing log without options.create is BackendError not-found naming logPath", async () => {
    const path = join(dir, "missing.log");
    await expect(snapshotLog(new RamDisk(8), path)).rejects.toMatchObject({
      name: "BackendError",
      code: "not-found",
      path,
      message: expect.stringMatching(/^logPath .* does not exist/),
    });
  });

  it("a file that is not a log, a damaged header, or another base size is a SnapshotLogError", async () => {
    const junk = join(dir, "junk.log");
    await writeFile(junk, new Uint8Array(4096).fill(1));
    await expect(snapshotLog(new RamDisk(8), junk)).rejects.toMatchObject({ code: "not-a-log" });
    const path = logPath();
    await (await snapshotLog(new RamDisk(8), path, { create: true })).close();
    await expect(snapshotLog(new RamDisk(9), path)).rejects.toMatchObject({
      code: "base-mismatch",
      message: expect.stringMatching(/base\.capacity is 9/),
    });
    const bytes = await readFile(path);
    bytes[26]! ^= 1; // inside the log id
    await writeFile(path, bytes);
    await expect(snapshotLog(new RamDisk(8), path)).rejects.toMatchObject({
      code: "corrupt-header",
    });
  });

  it("options.create never overwrites, and bad options are RangeErrors naming them", async () => {
    const path = logPath();
    const log = await snapshotLog(new RamDisk(8), path, { create: true });
    await log.write(0, [new Uint8Array(512).fill(5)]);
    await log.close();
    const again = await snapshotLog(new RamDisk(8), path, { create: true });
    expect(again.sequence).toBe(1);
    await again.close();
    await expect(snapshotLog(new RamDisk(8), path, { maxExtents: 0 })).rejects.toThrow(
      /^options\.maxExtents/,
    );
  });

  it("a read-only log refuses writes, snapshots and rollback with BackendError read-only", async () => {
    const path = logPath();
    await (await snapshotLog(new RamDisk(8), path, { create: true })).close();
    const log = await snapshotLog(new RamDisk(8), path, { readOnly: true });
    await expect(log.write(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "read-only" });
    await expect(log.snapshot("s")).rejects.toMatchObject({ code: "read-only" });
    await log.close();
    await expect(log.read(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "closed" });
  });

  it("refuses new writes once the index reaches options.maxExtents", async () => {
    const log = await snapshotLog(new RamDisk(16), logPath(), { create: true, maxExtents: 2 });
    await log.write(0, [new Uint8Array(512)]);
    await log.write(4, [new Uint8Array(512)]);
    await expect(log.write(8, [new Uint8Array(512)])).rejects.toMatchObject({
      code: "io",
      message: expect.stringMatching(/options\.maxExtents/),
    });
    await log.close();
  });
});

describe("snapshotLog in a child process", () => {
  beforeAll(() => buildInterpose());

  it("data written and flushed survives SIGKILL of the writer", async () => {
    const path = logPath();
    const script = fileURLToPath(new URL("./fixtures/snapshot-crash-writer.mjs", import.meta.url));
    const child = spawn(process.execPath, [script, path], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      let buf = "";
      child.stdout.on("data", (d: Buffer) => {
        buf += d.toString();
        if (buf.includes("flushed")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`writer exited early with ${code}`)));
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_code, signal) => resolve(signal)),
    );
    child.kill("SIGKILL");
    expect(await exited).toBe("SIGKILL");

    const log = await snapshotLog(new RamDisk(64, { fill: 0xee }), path);
    const got = new Uint8Array(8 * 512);
    await log.read(4, [got]);
    const want = new Uint8Array(8 * 512).fill(0xee);
    want.set(
      Uint8Array.from({ length: 1024 }, (_, i) => (i * 31 + 7) & 0xff),
      512,
    );
    want.fill(0, 5 * 512, 7 * 512);
    expect(got).toEqual(want);
    expect(log.sequence).toBeGreaterThanOrEqual(3);
    await log.close();
  });
});

describe("snapshotLog detects lost flushed data (a file cut short)", () => {
  /** A log with `rounds` flushed writes (and a snapshot every 10), as the child writes it. */
  async function flushedLog(rounds: number): Promise<{
    path: string;
    bytes: Uint8Array;
    /** logBytes after each round's flush, i.e. its durable end. */
    ends: number[];
    /** Record boundaries (offsets where a record starts or the file ends). */
    boundaries: number[];
  }> {
    const path = logPath();
    const log = await snapshotLog(new RamDisk(64, { fill: 0xee }), path, { create: true });
    const ends: number[] = [];
    const boundaries = [LOG_HEADER_BYTES];
    for (let k = 0; k < rounds; k++) {
      await log.write(k % 64, [new Uint8Array(512).fill(k & 0xff)]);
      boundaries.push(log.logBytes);
      if (k % 10 === 9) await log.snapshot(`s${k}`);
      else await log.flush();
      ends.push(log.durableBytes);
      boundaries.push(log.logBytes); // after the snapshot and/or flush marker
    }
    await log.close();
    return { path, bytes: await readFile(path), ends, boundaries };
  }

  it("a cut at any record boundary before the durable end is SnapshotLogError truncated, and the file is left as it was", async () => {
    const h = await flushedLog(30);
    const durable = h.ends.at(-1)!;
    const cuts = [...new Set(h.boundaries)].filter((b) => b < durable);
    expect(cuts.length).toBeGreaterThan(40);
    const copy = `${h.path}.cut`;
    for (const cut of cuts) {
      await writeFile(copy, h.bytes.subarray(0, cut));
      const err = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SnapshotLogError);
      expect(err).toMatchObject({ code: "truncated", offset: cut, durableBytes: durable });
      // A writable open that fails never truncates the evidence away.
      expect((await stat(copy)).size).toBe(cut);
    }
  });

  it("acceptLoss opens a cut log at its last valid record, reports lostBytes once and records the new durable end", async () => {
    const h = await flushedLog(30);
    const durable = h.ends.at(-1)!;
    // Past round 14's flush marker (32 bytes), inside round 15's write.
    const cut = h.ends[14]! + 100;
    const copy = `${h.path}.lossy`;
    await writeFile(copy, h.bytes.subarray(0, cut));
    const log = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy, { acceptLoss: true });
    expect(log.logBytes).toBe(h.ends[14]! + LOG_RECORD_HEADER_BYTES);
    expect(log.lostBytes).toBe(durable - log.logBytes);
    expect(log.durableBytes).toBe(log.logBytes);
    expect(log.snapshots.map((s) => s.name)).toEqual(["s9"]); // s19 and s29 are gone
    const b = new Uint8Array(512);
    await log.read(14, [b]);
    expect(b[0]).toBe(14);
    await log.read(15, [b]);
    expect(b[0]).toBe(0xee);
    await log.close();
    const again = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy);
    expect([again.lostBytes, again.tornBytes]).toEqual([0, 0]);
    await again.close();
  });

  it("one damaged mark slot falls back to the other; two are SnapshotLogError corrupt-header", async () => {
    const h = await flushedLog(4);
    const copy = `${h.path}.slot`;
    const bad = Uint8Array.from(h.bytes);
    // The newest mark (generation 5: create, then four flushes) is in slot 5 mod 2 = 1.
    bad[64 + 32 + 8]! ^= 0x40;
    await writeFile(copy, bad);
    const log = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy, { readOnly: true });
    expect(log.durableBytes).toBe(h.ends[2]);
    await log.close();
    bad[64 + 8]! ^= 0x40;
    await writeFile(copy, bad);
    await expect(snapshotLog(new RamDisk(64), copy)).rejects.toMatchObject({
      code: "corrupt-header",
      offset: 64,
    });
  });

  it("a version-1 log (no durable end) still opens, and a writable open upgrades it to version 2", async () => {
    const h = await flushedLog(3);
    const v1 = Uint8Array.from(h.bytes);
    const dv = new DataView(v1.buffer);
    dv.setUint32(8, 1, true);
    dv.setUint32(32, crc32(v1.subarray(0, 32)), true);
    v1.fill(0, 64, 128);
    const copy = `${h.path}.v1`;
    await writeFile(copy, v1);
    const ro = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy, { readOnly: true });
    expect(ro.sequence).toBeGreaterThan(3);
    await ro.close();
    const rw = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy);
    expect(rw.durableBytes).toBe(v1.length);
    await rw.close();
    const after = await readFile(copy);
    expect(new DataView(after.buffer, after.byteOffset).getUint32(8, true)).toBe(2);
    await writeFile(copy, after.subarray(0, after.length - 1));
    await expect(snapshotLog(new RamDisk(64), copy)).rejects.toMatchObject({ code: "truncated" });
  });

  it("rollback and commit lower the durable end first, so the shorter file opens cleanly", async () => {
    const path = logPath();
    const base = new RamDisk(64, { fill: 0xee });
    const log = await snapshotLog(base, path, { create: true });
    await log.write(1, [new Uint8Array(512).fill(1)]);
    const snap = await log.snapshot("one");
    await log.write(2, [new Uint8Array(512).fill(2)]);
    await log.flush();
    expect(log.durableBytes).toBeGreaterThan(snap.logBytes);
    await log.rollback("one");
    expect(log.durableBytes).toBe(snap.logBytes);
    await log.close();
    const again = await snapshotLog(base, path);
    expect(again.logBytes).toBe(snap.logBytes);
    await again.commit();
    expect(again.durableBytes).toBe(LOG_HEADER_BYTES);
    await again.close();
    const empty = await snapshotLog(base, path);
    expect([empty.logBytes, empty.lostBytes]).toEqual([LOG_HEADER_BYTES, 0]);
    await empty.close();
  });
});

describe("snapshotLog cut after its writer is killed (child process)", () => {
  beforeAll(() => buildInterpose());

  it("200 random cuts of a SIGKILLed writer's log: every loss of flushed data is reported, every other cut keeps all of it", async () => {
    const path = logPath();
    const script = fileURLToPath(new URL("./fixtures/snapshot-flush-writer.mjs", import.meta.url));
    const child = spawn(process.execPath, [script, path], { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_code, signal) => resolve(signal)),
    );
    // The last flush the child reported complete: its round and durable end.
    const last = await new Promise<{ round: number; durable: number }>((resolve, reject) => {
      let buf = "";
      child.stdout.on("data", (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split("\n");
        buf = lines.pop()!;
        for (const l of lines) {
          const r = JSON.parse(l) as { round: number; durable: number };
          if (r.round >= 80) {
            child.kill("SIGKILL");
            resolve(r);
            return;
          }
        }
      });
      child.on("exit", (code) => reject(new Error(`writer exited early with ${code}`)));
    });
    expect(await exited).toBe("SIGKILL");
    const bytes = await readFile(path);
    expect(bytes.length).toBeGreaterThanOrEqual(last.durable);
    const copy = `${path}.cut`;
    let reported = 0;
    let intact = 0;
    let x = 12345;
    for (let i = 0; i < 200; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const cut = LOG_HEADER_BYTES + (x % (bytes.length - LOG_HEADER_BYTES + 1));
      await writeFile(copy, bytes.subarray(0, cut));
      const opened = await snapshotLog(new RamDisk(64, { fill: 0xee }), copy).catch(
        (e: unknown) => e,
      );
      if (cut < last.durable) {
        // Before the fix: 198 of 200 such cuts opened as a clean, shorter log.
        expect(opened).toMatchObject({ name: "SnapshotLogError", code: "truncated" });
        reported++;
        continue;
      }
      // Everything flushed is there: round k's pattern for the newest k writing each sector.
      const log = opened as SnapshotLog;
      const b = new Uint8Array(512);
      for (let s = 0; s < 64; s++) {
        await log.read(s, [b]);
        let k = last.round - ((last.round - s + 64 * 4) % 64);
        // An unflushed write of a later round may have survived too; it is newer, never older.
        if (b[0] !== (k & 0xff)) k += 64;
        expect(b[0]).toBe(k & 0xff);
      }
      expect(log.snapshots.length).toBeGreaterThanOrEqual(Math.floor((last.round + 1) / 10));
      await log.close();
      intact++;
    }
    expect(reported + intact).toBe(200);
    expect(reported).toBeGreaterThan(100);
  });
});
