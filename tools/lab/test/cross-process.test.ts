// Suspend / encode / resume across processes: a guest workload is stopped in one Node process
// with requests in flight in the device's back-end and more unpopped in the ring; its device
// state, its RAM and its disk go over a unix socket to another process, which resumes the
// device from the bytes and lets the guest go on. Every request completes exactly once, reads
// return the right data and the disk ends up as it should.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DestinationReport, SourceReport } from "../src/migrate-peer.js";

const children: ChildProcess[] = [];
let dir = "";

beforeAll(() => {
  // The peers run plain Node over the compiled lab: build it (incrementally) first.
  const tsc = fileURLToPath(new URL("../../../node_modules/typescript/bin/tsc", import.meta.url));
  execFileSync(process.execPath, [tsc, "-b", fileURLToPath(new URL("..", import.meta.url))], {
    stdio: "inherit",
  });
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-migrate-"));
});

afterAll(() => {
  for (const c of children) c.kill();
  rmSync(dir, { recursive: true, force: true });
});

/** Run a peer; resolve with the JSON it prints after `word`, once `ready` (if given) showed. */
function peer<T>(role: string, path: string, onReady?: () => void): Promise<T> {
  const script = fileURLToPath(new URL("../dist/migrate-peer.js", import.meta.url));
  const child = spawn(process.execPath, [script, role, path], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  return new Promise<T>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${role} gave no report in 20 s`)), 20_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (onReady !== undefined && out.includes("listening")) {
        const go = onReady;
        onReady = undefined;
        go();
      }
      const m = new RegExp(`^${role} (\\{.*\\})$`, "m").exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(JSON.parse(m[1]!) as T);
      }
    });
    child.once("exit", (code) => {
      if (code !== 0) {
        clearTimeout(timer);
        reject(new Error(`${role} exited with ${code}`));
      }
    });
  });
}

describe("a guest moved between two processes", () => {
  it("completes every request exactly once, with the right data and the right disk, after its device state, RAM and disk crossed a socket", async () => {
    const path = join(dir, "migrate.sock");
    let source: Promise<SourceReport> | undefined;
    const destination = peer<DestinationReport>("destination", path, () => {
      source = peer<SourceReport>("source", path);
    });
    const d = await destination;
    const s = await source!;
    // The source stopped with 24 requests in the back-end and 12 more unpopped in the ring.
    expect(s).toMatchObject({
      postedBefore: 32,
      completedBefore: 8,
      inFlight: 24,
      postedWhileSuspended: 12,
    });
    expect(s.bytes.disk).toBe(1 << 20);
    // The destination took those 36 at its resume kick, then served 8 new ones.
    expect(d.poppedAtResume).toBe(36);
    expect(d.posted).toBe(52);
    expect(d).toMatchObject({ once: 52, missing: 0, duplicated: 0, failed: 0, wrongData: 0 });
    expect(d.diskRight).toBe(true);
  });
});
