import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { BlkDevice } from "@virtio-ts/devices";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileDisk } from "../src/node.js";
import { buildPackage } from "./helpers/build.js";
import { stageForOtherUser } from "./helpers/stage.js";

let dir = "";

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "virtio-ts-disk-"));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function image(name: string, size: number, fill = 0): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, new Uint8Array(size).fill(fill));
  return path;
}

function fixture(name: string): string {
  return fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
}

describe("FileDisk", () => {
  it("takes its capacity from the file size and reads what it writes with readv/writev", async () => {
    const path = await image("rw.img", 8 * 512);
    const disk = await FileDisk.open(path, { blockSize: 4096 });
    expect([disk.capacity, disk.blockSize, disk.readOnly]).toEqual([8, 4096, false]);
    const data = Uint8Array.from({ length: 1536 }, (_, i) => i * 13);
    await disk.write(3, [data.subarray(0, 7), data.subarray(7, 1000), data.subarray(1000)]);
    const a = new Uint8Array(512);
    const b = new Uint8Array(1024);
    await disk.read(3, [a, b]);
    expect([...a, ...b]).toEqual([...data]);
    await disk.flush();
    await disk.close();
    const onDisk = await readFile(path);
    expect(new Uint8Array(onDisk.subarray(3 * 512, 6 * 512))).toEqual(data);
  });

  it("reads into views of a SharedArrayBuffer (guest memory)", async () => {
    const path = await image("sab.img", 1024, 0x3c);
    const disk = await FileDisk.open(path);
    const shared = new Uint8Array(new SharedArrayBuffer(1024));
    await disk.read(0, [shared.subarray(0, 512), shared.subarray(512)]);
    expect(shared.every((b) => b === 0x3c)).toBe(true);
    await disk.close();
  });

  it("writeZeroes zeroes exactly the range; discard leaves the data (documented no-op)", async () => {
    const path = await image("zero.img", 4 * 512, 0xaa);
    const disk = await FileDisk.open(path, { fullSync: true });
    await disk.writeZeroes(1, 2, true);
    await disk.discard(3, 1);
    await disk.flush();
    await disk.close();
    const b = await readFile(path);
    expect([b[511], b[512], b[1535], b[1536], b[2047]]).toEqual([0xaa, 0, 0, 0xaa, 0xaa]);
  });

  it("a missing file is BackendError not-found naming the path", async () => {
    const path = join(dir, "nope.img");
    await expect(FileDisk.open(path)).rejects.toMatchObject({
      name: "BackendError",
      code: "not-found",
      path,
    });
  });

  it("a file whose size is not a multiple of 512 is BackendError bad-size", async () => {
    const path = await image("odd.img", 1000);
    await expect(FileDisk.open(path)).rejects.toMatchObject({
      code: "bad-size",
      message: expect.stringMatching(/1000 bytes, not a multiple of 512/),
    });
  });

  it("a directory is BackendError bad-size (not a regular file)", async () => {
    await expect(FileDisk.open(dir, { readOnly: true })).rejects.toMatchObject({
      code: "bad-size",
    });
  });

  it("a read-only disk refuses writes with BackendError read-only", async () => {
    const path = await image("ro.img", 1024);
    const disk = await FileDisk.open(path, { readOnly: true });
    expect(disk.readOnly).toBe(true);
    await expect(disk.write(0, [new Uint8Array(512)])).rejects.toMatchObject({
      code: "read-only",
    });
    await disk.close();
  });

  it("out-of-range requests and use after close are BackendErrors", async () => {
    const path = await image("range.img", 1024);
    const disk = await FileDisk.open(path);
    await expect(disk.read(2, [new Uint8Array(512)])).rejects.toMatchObject({
      code: "out-of-range",
    });
    await disk.close();
    await disk.close();
    await expect(disk.flush()).rejects.toMatchObject({ code: "closed" });
  });

  it("close waits for the reads and writes in flight, then refuses new ones", async () => {
    const path = await image("inflight.img", 256 * 512, 0x5a);
    const disk = await FileDisk.open(path);
    const bufs = Array.from({ length: 64 }, () => new Uint8Array(2048));
    const reads = bufs.map((b, i) => disk.read(i * 4, [b]));
    const writes = bufs.map((_, i) => disk.write(i * 4, [new Uint8Array(512).fill(i)]));
    const closed = disk.close();
    await expect(disk.read(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "closed" });
    await Promise.all([...reads, ...writes]);
    await closed;
    // Every read completed on this file (0x5a, or a byte an earlier write of it left).
    for (const [i, b] of bufs.entries()) {
      expect(b.subarray(512).every((x) => x === 0x5a)).toBe(true);
      expect(b[0] === 0x5a || b[0] === i).toBe(true);
    }
    const onDisk = await readFile(path);
    for (let i = 0; i < 64; i++) expect(onDisk[i * 4 * 512]).toBe(i);
  });

  it("serves a BlkDevice (the back-end interface is satisfied)", async () => {
    const path = await image("blk.img", 64 * 512);
    const disk = await FileDisk.open(path);
    const model = new BlkDevice(disk, { serial: "file" });
    expect(model.readConfig(0, 4)).toBe(64);
    await disk.close();
  });
});

describe('FileDisk with io: "sync"', () => {
  it("reads what it writes on the calling thread: readSync / writeSync, and read / write already settled", async () => {
    const path = await image("sync.img", 16 * 512);
    const disk = await FileDisk.open(path, { io: "sync" });
    const pool = await FileDisk.open(path, { readOnly: true });
    expect([typeof disk.readSync, typeof disk.writeSync]).toEqual(["function", "function"]);
    expect([pool.readSync, pool.writeSync]).toEqual([undefined, undefined]);
    const data = Uint8Array.from({ length: 2048 }, (_, i) => (i * 31) & 0xff);
    disk.writeSync!(2, [data.subarray(0, 100), data.subarray(100, 1536), data.subarray(1536)]);
    // Visible to another descriptor at once: the write is in the page cache on return.
    const seen = new Uint8Array(2048);
    await pool.read(2, [seen]);
    expect(seen).toEqual(data);
    const shared = new Uint8Array(new SharedArrayBuffer(2048));
    disk.readSync!(2, [shared.subarray(0, 512), shared.subarray(512)]);
    expect(shared).toEqual(data);
    // read / write: the bytes are there before the promise is awaited.
    const into = new Uint8Array(512);
    const p = disk.read(3, [into]);
    expect(into).toEqual(data.subarray(512, 1024));
    await p;
    const w = disk.write(10, [new Uint8Array(512).fill(9)]);
    // In the file before any await (readFileSync goes around this disk altogether).
    expect(
      readFileSync(path)
        .subarray(10 * 512, 11 * 512)
        .every((b) => b === 9),
    ).toBe(true);
    await w;
    await disk.flush();
    await Promise.all([disk.close(), pool.close()]);
  });

  it("writeZeroes gives the event loop a turn between its 1 MiB chunks, and zeroes the range", async () => {
    const path = await image("sync-zero.img", 8 << 20, 0x77);
    const disk = await FileDisk.open(path, { io: "sync" });
    let turns = 0;
    let ticking = true;
    const tick = (): void => {
      turns++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    await disk.writeZeroes(1, 4 * 2048, false); // 4 MiB from sector 1: four chunks
    ticking = false;
    expect(turns).toBeGreaterThanOrEqual(3);
    const b = readFileSync(path);
    expect([b[511], b[512], b[512 + (4 << 20) - 1], b[512 + (4 << 20)]]).toEqual([
      0x77, 0, 0, 0x77,
    ]);
    await disk.close();
  });

  it("refuses out-of-range, read-only and closed requests: readSync / writeSync throw BackendErrors, read / write reject", async () => {
    const path = await image("sync-bad.img", 4 * 512);
    const disk = await FileDisk.open(path, { io: "sync" });
    expect(() => disk.readSync!(4, [new Uint8Array(512)])).toThrow(
      expect.objectContaining({ name: "BackendError", code: "out-of-range" }),
    );
    await expect(disk.read(3, [new Uint8Array(1024)])).rejects.toMatchObject({
      code: "out-of-range",
    });
    const ro = await FileDisk.open(path, { io: "sync", readOnly: true });
    expect(() => ro.writeSync!(0, [new Uint8Array(512)])).toThrow(
      expect.objectContaining({ code: "read-only" }),
    );
    await Promise.all([disk.close(), ro.close()]);
    expect(() => disk.readSync!(0, [new Uint8Array(512)])).toThrow(
      expect.objectContaining({ code: "closed" }),
    );
    await expect(disk.write(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "closed" });
  });

  it("a read past the end of a file that shrank under it is BackendError io (unexpected end of file)", async () => {
    const path = await image("sync-shrink.img", 8 * 512, 0x11);
    const disk = await FileDisk.open(path, { io: "sync" });
    await writeFile(path, new Uint8Array(4 * 512 + 100));
    expect(() => disk.readSync!(4, [new Uint8Array(1024)])).toThrow(
      expect.objectContaining({
        code: "io",
        message: expect.stringMatching(/unexpected end of file/),
      }),
    );
    await disk.close();
  });

  it("options.io must be pool or sync", async () => {
    const path = await image("sync-opt.img", 512);
    await expect(FileDisk.open(path, { io: "uring" as "sync" })).rejects.toThrow(
      /options\.io must be "pool" or "sync", got uring/,
    );
  });
});

describe("FileDisk in a child process", () => {
  beforeAll(() => buildPackage());

  it("a file the user may not write is BackendError permission, and the same user opens a writable one", async () => {
    // The child loads a staged copy of the package, so where the checkout lives (even a 0700
    // folder) does not matter; the images sit in the same world-readable stage.
    const stage = await stageForOtherUser("@virtio-ts/backend-disk", ["open-disk.mjs"]);
    try {
      const locked = join(stage.dir, "locked.img");
      const writable = join(stage.dir, "writable.img");
      await writeFile(locked, new Uint8Array(1024));
      await writeFile(writable, new Uint8Array(1024));
      await chmod(locked, 0o444);
      await chmod(writable, 0o666);
      // Root ignores file modes: run the probe as nobody then.
      const uid = process.getuid?.() === 0 ? 65534 : undefined;
      const allowed = await runNode(stage.fixture("open-disk.mjs"), [writable], uid);
      expect(allowed.stdout.trim(), allowed.stderr).toBe("ok");
      const denied = await runNode(stage.fixture("open-disk.mjs"), [locked], uid);
      expect(denied.stdout.trim(), denied.stderr).toBe("BackendError permission");
    } finally {
      stage.cleanup();
    }
  });

  it("data written and flushed survives SIGKILL of the writer", async () => {
    const path = await image("crash.img", 16 * 512);
    const child = spawn(process.execPath, [fixture("crash-writer.mjs"), path], {
      stdio: ["ignore", "pipe", "inherit"],
    });
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

    const disk = await FileDisk.open(path, { readOnly: true });
    const got = new Uint8Array(1024);
    await disk.read(5, [got]);
    await disk.close();
    const want = Uint8Array.from({ length: 1024 }, (_, i) => (i * 31 + 7) & 0xff);
    expect(got).toEqual(want);
  });
});

function runNode(
  script: string,
  args: string[],
  uid: number | undefined,
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      ...(uid === undefined ? {} : { uid, gid: uid }),
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) => resolve({ stdout, stderr, code }));
  });
}
