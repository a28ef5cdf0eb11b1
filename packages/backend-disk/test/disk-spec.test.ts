// DiskSpec: a disk described by plain data, opened in another thread (a vhost worker).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MemoryDisk } from "../src/index.js";
import { describeDisk, FileDisk, openDisk } from "../src/node.js";

describe("openDisk / describeDisk", () => {
  it("opens a memory spec as a MemoryDisk over the shared bytes, with the geometry describeDisk announced", async () => {
    const buffer = new SharedArrayBuffer(8 * 512);
    const spec = { kind: "memory", buffer, readOnly: true } as const;
    const disk = await openDisk(spec);
    expect(disk).toBeInstanceOf(MemoryDisk);
    expect(describeDisk(spec)).toEqual({ capacity: 8, readOnly: true, blockSize: 512 });
    expect([disk.capacity, disk.readOnly, disk.blockSize]).toEqual([8, true, 512]);
    new Uint8Array(buffer)[512] = 7;
    const got = new Uint8Array(512);
    await disk.read(1, [got]);
    expect(got[0]).toBe(7);
  });

  it("opens a file spec as a FileDisk, and describes it from its size without opening it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "disk-spec-"));
    try {
      const path = join(dir, "d.img");
      writeFileSync(path, new Uint8Array(16 * 512));
      expect(describeDisk({ kind: "file", path })).toEqual({
        capacity: 16,
        readOnly: false,
        blockSize: 512,
      });
      const disk = await openDisk({ kind: "file", path });
      expect(disk).toBeInstanceOf(FileDisk);
      expect(disk.capacity).toBe(16);
      expect(disk.readSync).toBeUndefined();
      // io: "sync" reaches FileDisk (a vhost worker opens its image this way).
      const sync = await openDisk({ kind: "file", path, io: "sync" });
      expect(typeof sync.readSync).toBe("function");
      await Promise.all([(disk as FileDisk).close(), (sync as FileDisk).close()]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses an unknown kind with a TypeError, and a size that is not whole sectors with a RangeError", async () => {
    await expect(openDisk({ kind: "tape" } as never)).rejects.toThrow(TypeError);
    expect(() => describeDisk({ kind: "memory", buffer: new SharedArrayBuffer(100) })).toThrow(
      RangeError,
    );
  });
});
