// Hostile front-ends from outside the process (issue 20, attacks 4 and 7): a child process
// (fixtures/vhost-user-attacker.mjs) shrinks its memory file under the back-end's mapping,
// floods it with idle connections, or maps address space connection after connection. Each
// time the back-end process survives, closes only the offending connections with a typed
// error, counts them, and a well-behaved front-end on another connection keeps being served.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { DeviceId } from "@virtio-ts/spec";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createSharedMemory,
  type SharedGuestMemory,
  type VhostUserBackendError,
  type VhostUserBackendOptions,
  VhostUserBlkBackend,
  VhostUserDriverTransport,
  type VhostUserError,
} from "../src/index.js";

const fixture = fileURLToPath(new URL("./fixtures/vhost-user-attacker.mjs", import.meta.url));
let dir: string;
const cleanups: (() => unknown)[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "vu-hostile-"));
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Served {
  readonly backend: VhostUserBlkBackend;
  readonly closes: (VhostUserError | undefined)[];
}

let sockets = 0;
async function serve(options: VhostUserBackendOptions = {}): Promise<Served> {
  const closes: (VhostUserError | undefined)[] = [];
  const disk = MemoryDisk.ofSize(4 << 20);
  const backend = new VhostUserBlkBackend(
    new BlkDevice(disk, { queueSize: 16 }),
    join(dir, `b${sockets++}.sock`),
    { log: () => {}, onConnectionClose: (e) => closes.push(e), ...options },
  );
  await backend.listening;
  cleanups.push(() => backend.close());
  return { backend, closes };
}

/** A well-behaved front-end: BlkDriver over our transport, doing I/O on demand. */
async function goodClient(
  path: string,
): Promise<{ blk: BlkDriver; t: VhostUserDriverTransport; close(): void }> {
  const mem: SharedGuestMemory = createSharedMemory({ size: 2 << 20 });
  const t = await VhostUserDriverTransport.connect(path, { deviceId: DeviceId.BLOCK, memory: mem });
  const blk = new BlkDriver(t, mem.memory, new SlabAllocator(0x100000, 4096, 128), {
    ringBase: 0x10000,
    queueSize: 16,
  });
  t.onInterrupt(() => blk.onInterrupt());
  const close = (): void => {
    t.close();
    mem.close();
  };
  cleanups.push(close);
  return { blk, t, close };
}

/** One read-after-write round trip; returns its latency in ms. */
async function roundTrip(blk: BlkDriver, sector: number): Promise<number> {
  const t0 = performance.now();
  const data = new Uint8Array(512).fill(sector & 0xff);
  await blk.write(sector, data);
  expect(await blk.read(sector, 512)).toEqual(data);
  return performance.now() - t0;
}

/** Keep a good client busy while `during` runs: round trips every few ms. */
async function servedThroughout<T>(
  blk: BlkDriver,
  during: Promise<T>,
): Promise<{ value: T; trips: number; worstMs: number }> {
  let done = false;
  let trips = 0;
  let worstMs = 0;
  const loop = (async () => {
    while (!done) {
      worstMs = Math.max(worstMs, await roundTrip(blk, 100 + (trips % 50)));
      trips++;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const value = await during;
  done = true;
  await loop;
  return { value, trips, worstMs };
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
}

interface Attack {
  readonly result: Promise<Record<string, unknown>>;
  release(): void;
}

/** Run the attacker child; with `hold`, it keeps its connections until `release`. */
function attack(options: Record<string, unknown>): Attack {
  const child = spawn(process.execPath, [fixture, JSON.stringify(options)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  // The attacker may be gone by the time it is told to exit (its connection closed under it, and
  // it ended): writing to its stdin then fails with EPIPE, which is expected here and must not
  // surface as an uncaught exception of the test run.
  child.stdin.on("error", () => {});
  let out = "";
  child.stdout.setEncoding("utf8");
  const result = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout.on("data", (d: string) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
    });
    child.once("exit", (code, signal) => {
      if (!out.includes("\n"))
        reject(new Error(`attacker exited (${code ?? signal}) with "${out}"`));
    });
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  cleanups.push(async () => {
    child.stdin.end("exit\n");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
    child.kill("SIGKILL");
  });
  return { result, release: () => child.stdin.end("exit\n") };
}

describe("a front-end that shrinks its memory file under the mapping (issue 20, attack 4)", () => {
  it("an unsealable memfd is mapped behind the SIGBUS guard: the fault closes that connection with reason memory-fault, the process and another device's client go on", async () => {
    const good = await serve();
    const victim = await serve();
    const { blk } = await goodClient(good.backend.path);
    await roundTrip(blk, 1);
    const run = await servedThroughout(
      blk,
      attack({ path: victim.backend.path, attack: "shrink", memfd: "plain" }).result,
    );
    // The attacker could shrink its file (nothing sealed it), and its connection was closed.
    expect(run.value).toMatchObject({ truncate: "ok", closedByPeer: true });
    expect(victim.backend.stats).toMatchObject({ guardedMappings: 1, memoryFaults: 1 });
    const e = victim.closes.find((c) => c !== undefined) as VhostUserBackendError;
    expect(e.reason).toBe("memory-fault");
    expect(e.message).toContain("SIGBUS caught by the guard");
    // The other device's client was served throughout, within a stated bound.
    expect(run.trips).toBeGreaterThan(0);
    expect(run.worstMs).toBeLessThan(2000);
    // And the attacked device serves the next front-end.
    const after = await goodClient(victim.backend.path);
    await roundTrip(after.blk, 7);
  });

  it("a sealable memfd gets F_SEAL_SHRINK from the back-end, so the shrink fails (EPERM) and nothing faults", async () => {
    const victim = await serve();
    const r = await attack({
      path: victim.backend.path,
      attack: "shrink",
      memfd: "sealable",
      waitMs: 300,
    }).result;
    expect(r).toMatchObject({ truncate: "EPERM" });
    expect(victim.backend.stats).toMatchObject({ sealedMappings: 1, memoryFaults: 0 });
  });

  it("a memfd sealed as QEMU seals it (F_SEAL_SHRINK | GROW | SEAL) cannot shrink: mapped without a guard", async () => {
    const victim = await serve();
    const r = await attack({
      path: victim.backend.path,
      attack: "shrink",
      memfd: "sealed",
      waitMs: 300,
    }).result;
    expect(r).toMatchObject({ truncate: "EPERM" });
    expect(victim.backend.stats).toMatchObject({ sealedMappings: 1, guardedMappings: 0 });
  });

  it('with unsealedMemory: "refuse" an unsealable memfd closes the connection at SET_MEM_TABLE (reason bad-region)', async () => {
    const victim = await serve({ unsealedMemory: "refuse" });
    const r = await attack({ path: victim.backend.path, attack: "shrink", memfd: "plain" }).result;
    expect(r).toMatchObject({ closedByPeer: true });
    const e = victim.closes.find((c) => c !== undefined) as VhostUserBackendError;
    expect(e.reason).toBe("bad-region");
    expect(e.message).toContain("not sealed against shrinking");
    expect(victim.backend.stats).toMatchObject({ guardedMappings: 0, memoryFaults: 0 });
  });
});

describe("limits across connections (issue 20, attack 7)", () => {
  it("connections past maxConnections are refused, silent ones are closed after handshakeTimeoutMs, and the client already connected is served throughout", async () => {
    const s = await serve({ maxConnections: 8, handshakeTimeoutMs: 600 });
    const first = await goodClient(s.backend.path);
    const blk = first.blk;
    const flood = attack({
      path: s.backend.path,
      attack: "flood",
      count: 200,
      waitMs: 1500,
      hold: true,
    });
    const run = await servedThroughout(blk, flood.result);
    // 7 slots were left; the other 193 were closed at once, the 7 after the handshake timeout.
    expect(run.value).toMatchObject({ connected: 200, closedByPeer: 200 });
    expect(s.backend.stats).toMatchObject({ refused: 193, handshakeTimeouts: 7, connections: 1 });
    expect(run.worstMs).toBeLessThan(2000);
    // Once the first one leaves, a new well-behaved front-end gets a slot and the device.
    first.close();
    await waitFor(() => s.backend.connections === 0);
    await roundTrip((await goodClient(s.backend.path)).blk, 3);
  });

  it("mapped bytes across connections stop at maxMappedBytes: the connection that would pass it is closed (reason limit) and the bytes come back when the attacker goes", async () => {
    const GiB = 2 ** 30;
    const s = await serve({ maxMappedBytes: 64 * GiB, maxConnections: 64 });
    const { blk } = await goodClient(s.backend.path);
    const base = s.backend.stats.mappedBytes;
    // 10 connections, each 8 regions of 4 GiB (32 GiB of address space each).
    const flood = attack({
      path: s.backend.path,
      attack: "map",
      connections: 10,
      regions: 8,
      regionGiB: 4,
      hold: true,
    });
    const run = await servedThroughout(blk, flood.result);
    // The good client's 2 MiB leave room for one 32 GiB table, not two.
    expect(run.value).toEqual({ accepted: 1, closed: 9 });
    const st = s.backend.stats;
    expect(st.mappedBytes).toBe(base + 32 * GiB);
    expect(st.mappedBytesPeak).toBeLessThanOrEqual(64 * GiB);
    expect(st.mapRefusals).toBe(9);
    const limits = s.closes.filter((e) => (e as VhostUserBackendError)?.reason === "limit");
    expect(limits).toHaveLength(9);
    expect(limits[0]!.message).toContain(
      "would pass the back-end's limit of 68719476736 mapped bytes",
    );
    expect(run.worstMs).toBeLessThan(2000);
    // The attacker leaves: its mappings (never used by a ring) are unmapped at once.
    flood.release();
    await waitFor(() => s.backend.stats.mappedBytes === base);
    expect(s.backend.stats.mappedBytes).toBe(base);
    await roundTrip(blk, 9);
  });
});
