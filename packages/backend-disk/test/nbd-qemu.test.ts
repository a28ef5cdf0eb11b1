// NbdDisk and NbdServer against implementations nobody here wrote: qemu-nbd as the server,
// qemu-io and qemu-img as clients (QEMU 7.2, Debian qemu-utils).
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryDisk } from "../src/index.js";
import { FileDisk, NbdDisk, NbdServer } from "../src/node.js";
import { freePort, type QemuNbd, requireTool, run, startQemuNbd } from "./nbd-peers.js";

let dir = "";
const daemons: QemuNbd[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "virtio-ts-nbd-"));
});

afterAll(async () => {
  for (const d of daemons) d.stop();
  await rm(dir, { recursive: true, force: true });
});

async function image(name: string, size: number, fill = 0): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, new Uint8Array(size).fill(fill));
  return path;
}

function pattern(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed + (i >> 9)) & 0xff);
}

describe("NbdDisk against qemu-nbd", () => {
  it("reads back a pattern it wrote, and the image file holds it after flush", async () => {
    const path = await image("tcp.img", 1 << 20, 0x11);
    const port = await freePort();
    daemons.push(await startQemuNbd(path, { port }, join(dir, "tcp.pid")));
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "disk0");
    expect([disk.capacity, disk.readOnly, disk.info.viaGo]).toEqual([2048, false, true]);
    // qemu-nbd answers the NBD_INFO_BLOCK_SIZE request (proto.md "Size constraints").
    expect(disk.info.blockSizes?.minimum).toBeLessThanOrEqual(512);
    const data = pattern(64 * 1024, 7);
    // Gathered from three iovecs of odd sizes.
    await disk.write(8, [
      data.subarray(0, 1000),
      data.subarray(1000, 40_000),
      data.subarray(40_000),
    ]);
    const back = new Uint8Array(64 * 1024);
    await disk.read(8, [back.subarray(0, 512), back.subarray(512)]);
    expect(back).toEqual(data);
    await disk.flush();
    await disk.close();
    const file = await readFile(path);
    expect(new Uint8Array(file.subarray(8 * 512, 8 * 512 + data.length))).toEqual(data);
    expect([file[8 * 512 - 1], file[8 * 512 + data.length]]).toEqual([0x11, 0x11]);
  });

  it("writeZeroes (with and without unmap) and discard reach the image over a unix socket", async () => {
    const path = await image("unix.img", 256 * 1024, 0xee);
    const socket = join(dir, "nbd.sock");
    daemons.push(await startQemuNbd(path, { socket }, join(dir, "unix.pid"), ["--discard=unmap"]));
    const disk = await NbdDisk.connect({ path: socket }, "disk0");
    const flags = disk.info.transmissionFlags;
    // NBD_FLAG_SEND_FLUSH (bit 2), SEND_TRIM (bit 5), SEND_WRITE_ZEROES (bit 6).
    expect([(flags >> 2) & 1, (flags >> 5) & 1, (flags >> 6) & 1]).toEqual([1, 1, 1]);
    await disk.writeZeroes(0, 8, false); // NBD_CMD_FLAG_NO_HOLE
    await disk.writeZeroes(64, 16, true); // may punch a hole; must read as zeroes
    await disk.discard(200, 8); // contents afterwards unspecified
    await disk.flush();
    const z = new Uint8Array(16 * 512).fill(1);
    await disk.read(64, [z]);
    expect(z.every((b) => b === 0)).toBe(true);
    await disk.close();
    const file = await readFile(path);
    expect([file[0], file[8 * 512 - 1], file[8 * 512], file[64 * 512], file[80 * 512 - 1]]).toEqual(
      [0, 0, 0xee, 0, 0],
    );
    expect(file[80 * 512]).toBe(0xee);
  });

  it("keeps 32 requests in flight and matches every reply to its request by cookie", async () => {
    const path = await image("qd.img", 1 << 20);
    const port = await freePort();
    daemons.push(await startQemuNbd(path, { port }, join(dir, "qd.pid")));
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "disk0");
    const writes = Array.from({ length: 32 }, (_, i) => disk.write(i * 8, [pattern(4096, i)]));
    expect(disk.inFlight).toBe(32);
    await Promise.all(writes);
    const bufs = Array.from({ length: 32 }, () => new Uint8Array(4096));
    await Promise.all(bufs.map((b, i) => disk.read(i * 8, [b])));
    expect(bufs).toEqual(bufs.map((_, i) => pattern(4096, i)));
    await disk.close();
  });

  it("an unknown export name is BackendError not-found carrying NBD_REP_ERR_UNKNOWN", async () => {
    const path = await image("name.img", 4096);
    const port = await freePort();
    daemons.push(await startQemuNbd(path, { port }, join(dir, "name.pid")));
    await expect(NbdDisk.connect({ host: "127.0.0.1", port }, "nope")).rejects.toMatchObject({
      name: "BackendError",
      code: "not-found",
      message: expect.stringContaining("NBD_REP_ERR_UNKNOWN"),
    });
    // The refusal was a soft disconnect: the daemon still serves the right name.
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "disk0");
    expect(disk.capacity).toBe(8);
    await disk.close();
  });

  it("a read-only export (qemu-nbd -r) sets readOnly and refuses writes locally", async () => {
    const path = await image("ro.img", 4096, 0x5a);
    const port = await freePort();
    daemons.push(await startQemuNbd(path, { port }, join(dir, "ro.pid"), ["-r"]));
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "disk0");
    expect(disk.readOnly).toBe(true);
    await expect(disk.write(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "read-only" });
    const b = new Uint8Array(512);
    await disk.read(7, [b]);
    expect(b.every((x) => x === 0x5a)).toBe(true);
    await disk.close();
  });
});

describe("NbdServer against qemu-io and qemu-img", () => {
  let server: NbdServer;
  let port = 0;
  const mem = MemoryDisk.ofSize(1 << 20);
  let fileDisk: FileDisk;
  let filePath = "";
  const errors: Error[] = [];

  beforeAll(async () => {
    requireTool("qemu-io");
    requireTool("qemu-img");
    filePath = await image("served.img", 512 * 1024);
    fileDisk = await FileDisk.open(filePath);
    server = new NbdServer({
      exports: {
        mem,
        file: fileDisk,
        ro: new MemoryDisk(new Uint8Array(4096), { readOnly: true }),
      },
      onConnectionError: (e) => errors.push(e),
    });
    const a = await server.listen({ host: "127.0.0.1", port: 0 });
    port = typeof a === "string" ? 0 : a.port;
  });

  afterAll(async () => {
    await server.close();
    await fileDisk.close();
  });

  it("qemu-io writes a 0xab pattern, reads it back verified, and the MemoryDisk holds it", async () => {
    const out = await run(requireTool("qemu-io"), [
      "-f",
      "raw",
      "-c",
      "write -P 0xab 0 64k",
      "-c",
      "read -P 0xab 0 64k",
      "-c",
      "flush",
      `nbd://127.0.0.1:${port}/mem`,
    ]);
    expect(out).toContain("wrote 65536/65536 bytes at offset 0");
    expect(out).toContain("read 65536/65536 bytes at offset 0");
    expect(out).not.toContain("Pattern verification failed");
    expect(mem.bytes.subarray(0, 65536).every((b) => b === 0xab)).toBe(true);
    expect(mem.bytes[65536]).toBe(0);
  });

  it("qemu-io write -z and discard become writeZeroes and discard on the back-end", async () => {
    mem.bytes.fill(0x77, 128 * 1024, 320 * 1024);
    const out = await run(requireTool("qemu-io"), [
      "-f",
      "raw",
      "-c",
      "write -z 128k 64k",
      "-c",
      "discard 192k 64k",
      "-c",
      "read -P 0 128k 64k",
      `nbd://127.0.0.1:${port}/mem`,
    ]);
    expect(out).toContain("wrote 65536/65536 bytes at offset 131072");
    expect(out).toContain("discard 65536/65536 bytes at offset 196608");
    expect(out).not.toContain("Pattern verification failed");
    // MemoryDisk zeroes on discard too; the untouched tail keeps its bytes.
    expect([mem.bytes[128 * 1024], mem.bytes[256 * 1024 - 1], mem.bytes[256 * 1024]]).toEqual([
      0, 0, 0x77,
    ]);
  });

  it("qemu-img info reports the virtual size of a FileDisk export", async () => {
    const json = JSON.parse(
      await run(requireTool("qemu-img"), ["info", "--output=json", `nbd://127.0.0.1:${port}/file`]),
    ) as { "virtual-size": number; format: string };
    expect([json["virtual-size"], json.format]).toEqual([512 * 1024, "raw"]);
  });

  it("qemu-img convert copies a FileDisk export byte for byte", async () => {
    const data = pattern(512 * 1024, 3);
    await fileDisk.write(0, [data]);
    const out = join(dir, "converted.img");
    await run(requireTool("qemu-img"), [
      "convert",
      "-f",
      "raw",
      "-O",
      "raw",
      `nbd://127.0.0.1:${port}/file`,
      out,
    ]);
    const copy = await readFile(out);
    // Buffer.equals: a deep toEqual over 512 KiB takes seconds.
    expect([copy.length, copy.equals(data)]).toEqual([data.length, true]);
  });

  it("qemu-io sees a read-only export fail writes (NBD_FLAG_READ_ONLY) and still reads it", async () => {
    const qemuIo = requireTool("qemu-io");
    await expect(
      run(qemuIo, ["-f", "raw", "-c", "write 0 512", `nbd://127.0.0.1:${port}/ro`]),
    ).rejects.toThrow(/read.only|Permission|not permitted/i);
    const out = await run(qemuIo, [
      "-f",
      "raw",
      "-r",
      "-c",
      "read -P 0 0 4k",
      `nbd://127.0.0.1:${port}/ro`,
    ]);
    expect(out).toContain("read 4096/4096 bytes at offset 0");
  });

  it("qemu-io gets an error for an export that does not exist and the server keeps serving", async () => {
    const qemuIo = requireTool("qemu-io");
    await expect(
      run(qemuIo, ["-f", "raw", "-c", "read 0 512", `nbd://127.0.0.1:${port}/missing`]),
    ).rejects.toThrow(/export|not available|unknown/i);
    const out = await run(qemuIo, [
      "-f",
      "raw",
      "-c",
      "read -P 0xab 0 4k",
      `nbd://127.0.0.1:${port}/mem`,
    ]);
    expect(out).toContain("read 4096/4096 bytes at offset 0");
    expect(errors).toEqual([]);
  });
});
