import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BLOCK, type BlkDemoResult, DISK_BYTES, pattern, runBlkDemo } from "../src/blk-demo.js";

describe("the block-device demo", () => {
  let dir: string;
  let result: BlkDemoResult;
  const lines: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "virtio-ts-demo-test-"));
    result = await runBlkDemo({ dir, requests: 16, log: (l) => lines.push(l) });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads back every block it wrote, byte for byte", () => {
    // 2 EVENT_IDX settings × (16 blocks at QD1 + 64 at QD32).
    expect(result.blocksVerified).toBe(160);
    expect(result.mismatches).toBe(0);
  });

  it("leaves the last pattern it wrote in the image file itself, where plain fs reads it", async () => {
    const image = await readFile(join(dir, "disk.img"));
    expect(image.length).toBe(DISK_BYTES);
    const last = pattern(0, "written last, then flushed");
    expect(new Uint8Array(image.subarray(0, BLOCK))).toEqual(last);
    expect(result.fileHead).toEqual(last.subarray(0, 128));
    // The demo's second request (i = 1) goes to block 2654435761 mod 4096 = 2481; its last
    // writer is the QD32 phase without EVENT_IDX.
    const b = 2481;
    expect(new Uint8Array(image.subarray(b * BLOCK, (b + 1) * BLOCK))).toEqual(
      pattern(b, "evidx=off qd=32"),
    );
  });

  it("costs exactly one kick, one interrupt and three exits per request at queue depth 1", () => {
    const qd1 = result.rows.filter((r) => r.depth === 1);
    expect(qd1.map((r) => `${r.eventIdx ? "on" : "off"} ${r.kind}`)).toEqual([
      "on write 4K",
      "on flush",
      "on read 4K",
      "off write 4K",
      "off flush",
      "off read 4K",
    ]);
    for (const r of qd1) {
      expect(r.byRegister).toEqual({
        QueueNotify: r.requests,
        InterruptStatus: r.requests,
        InterruptACK: r.requests,
      });
      expect(r.exits).toBe(3 * r.requests);
      expect(r.interrupts).toBe(r.requests);
    }
  });

  it("kicks once per burst at queue depth 32, not once per request, and acknowledges each interrupt it takes once", () => {
    const qd32 = result.rows.filter((x) => x.depth === 32);
    expect(qd32).toHaveLength(6);
    for (const r of qd32) {
      // The requests one interrupt handler starts share a kick (the driver's block plug): at
      // most one per interrupt, plus the first burst.
      expect(r.byRegister.QueueNotify).toBeGreaterThanOrEqual(1);
      expect(r.byRegister.QueueNotify).toBeLessThanOrEqual(r.interrupts + 1);
      expect(r.byRegister.QueueNotify).toBeLessThan(r.requests / 4);
      expect(r.interrupts).toBeGreaterThanOrEqual(1);
      expect(r.interrupts).toBeLessThanOrEqual(r.requests);
      expect(r.byRegister.InterruptStatus).toBe(r.interrupts);
      expect(r.byRegister.InterruptACK).toBe(r.interrupts);
      expect(r.exits).toBe((r.byRegister.QueueNotify ?? 0) + 2 * r.interrupts);
    }
  });

  it("prints a table row per setting and a hexdump of the image's first bytes", () => {
    expect(lines.filter((l) => /^\s+(on|off)\s+(1|32)\s/.test(l))).toHaveLength(12);
    expect(lines).toContain(
      "  00000000  76 69 72 74 69 6f 2d 74 73 20 62 6c 6f 63 6b 20  |virtio-ts block |",
    );
  });
});
