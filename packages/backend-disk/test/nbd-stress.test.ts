// Stress stage: several attacks at once against one NbdServer while a well-behaved client
// verifies its data. The server runs in a child process over a real image file (FileDisk,
// flush = fdatasync); the attackers run in another child (fixtures/nbd-attackers.mjs: option
// floods, pipelined READs with a reset, 30 slow 32 MiB WRITEs, bursts of idle connections, a
// client that never reads its replies, garbage); the honest client runs here. Bounded: 30 s of
// attacks, well under the 3-minute budget of the stage.
import { spawn } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { honestClient, roundData } from "./helpers/honest-client.js";
import { alive, type ServerChild, startServerChild } from "./helpers/nbd-child.js";

const MiB = 1 << 20;
const ATTACK_SECONDS = 30;
const BYTES = 64 * 1024;
const SLOTS = 16;
/** Stated bounds for the honest client and the server while everything runs at once. */
const HONEST_LATENCY_MS = 2000;
const TOTAL_BUDGET = 128 * MiB;

let dir = "";
let srv: ServerChild | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "virtio-ts-nbd-stress-"));
});

afterAll(async () => {
  await srv?.stop();
  await rm(dir, { recursive: true, force: true });
});

function attackers(port: number): Promise<Record<string, number>> {
  const script = fileURLToPath(new URL("./fixtures/nbd-attackers.mjs", import.meta.url));
  const child = spawn(
    process.execPath,
    [script, JSON.stringify({ port, seconds: ATTACK_SECONDS })],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve, reject) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), (ATTACK_SECONDS + 30) * 1000);
    child.once("exit", (code) => {
      clearTimeout(kill);
      if (code === 0) resolve(JSON.parse(out) as Record<string, number>);
      else reject(new Error(`the attacker process exited with ${code}`));
    });
  });
}

describe("stress: NbdServer under several attacks at once", () => {
  it(
    "serves a well-behaved client within 2 s per operation and loses nothing it acknowledged, with RSS bounded, while six attacks run for 30 s",
    async () => {
      const image = join(dir, "disk.img");
      const fh = await open(image, "w");
      await fh.truncate(64 * MiB);
      await fh.close();
      srv = await startServerChild(
        0,
        {
          maxConnections: 64,
          maxTotalBufferedBytes: TOTAL_BUDGET,
          handshakeTimeoutMs: 2000,
          requestTimeoutMs: 3000,
        },
        image,
      );
      const base = await srv.stats();
      const attack = attackers(srv.port);
      const honest = honestClient(srv.port, attack, { bytes: BYTES, slots: SLOTS });
      const counts = await attack;
      const h = await honest;
      const after = await srv.stats();

      // Every attack ran, and each defence shows in the counters.
      for (const [name, n] of Object.entries(counts)) {
        expect(n, `attack ${name} ran`).toBeGreaterThan(0);
      }
      expect(after.stats.handshakeTimeouts).toBeGreaterThan(0); // option floods, idle bursts
      expect(after.stats.requestTimeouts).toBeGreaterThan(0); // slow writers, the non-reader
      expect(after.stats.rejected).toBeGreaterThan(0); // past maxConnections
      expect(after.stats.protocolErrors).toBeGreaterThan(0); // garbage
      expect(after.stats.abandoned + after.stats.discardedBytes).toBeGreaterThan(0); // resets
      expect(after.stats.peakBufferedBytes).toBeLessThanOrEqual(TOTAL_BUDGET + 64 * 256 * 1024);
      // The server lived, in bounded memory.
      expect(alive(srv)).toBe(true);
      // The documented bound (README): twice the budget (buffers in use, and as many again not
      // yet reclaimed by the garbage collector) plus 64 MiB.
      expect(after.peakRss - base.rss).toBeLessThan(2 * TOTAL_BUDGET + 64 * MiB);
      // The honest client was served throughout, and every byte read back as written.
      expect(h).toMatchObject({ mismatches: 0, errors: [] });
      expect(h.rounds).toBeGreaterThan(20);
      expect(h.maxLatencyMs).toBeLessThan(HONEST_LATENCY_MS);

      // Nothing acknowledged is lost: kill the server (no clean shutdown) and read the image.
      srv.process.kill("SIGKILL");
      await srv.exited;
      const img = await open(image, "r");
      try {
        const buf = new Uint8Array(BYTES);
        for (let slot = 0; slot < SLOTS; slot++) {
          const round = h.flushed[slot]!;
          if (round < 0) continue;
          await img.read(buf, 0, BYTES, slot * BYTES);
          expect(Buffer.from(buf).equals(roundData(BYTES, round)), `slot ${slot}`).toBe(true);
        }
      } finally {
        await img.close();
      }
      console.log(
        `stress: arrayBuffers peak ${(after.peakArrayBuffers / MiB).toFixed(0)} MiB, ${h.rounds} verified rounds, max latency ${h.maxLatencyMs.toFixed(0)} ms, server RSS +${((after.peakRss - base.rss) / MiB).toFixed(0)} MiB at peak, attacks ${JSON.stringify(counts)}, server stats ${JSON.stringify(after.stats)}`,
      );
    },
    (ATTACK_SECONDS + 60) * 1000,
  );
});
