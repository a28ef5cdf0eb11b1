// NbdServer against clients that attack it from outside the process: the server runs in a child
// process (helpers/nbd-child.ts) so its RSS can be measured and its survival checked; the
// attackers and a well-behaved client (helpers/honest-client.ts) use real TCP sockets.
import type { Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { NbdDisk } from "../src/node.js";
import { honestClient, sleep } from "./helpers/honest-client.js";
import { alive, type ServerChild, startServerChild, statsWhen } from "./helpers/nbd-child.js";
import { cat, greet, opt, type RawPeer, rawConnect, rawGo, request } from "./nbd-raw.js";

const MiB = 1 << 20;
/** The stated latency bound for a well-behaved client while an attack runs. */
const HONEST_LATENCY_MS = 1000;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(
  diskBytes: number,
  options: Parameters<typeof startServerChild>[1],
): Promise<ServerChild> {
  const s = await startServerChild(diskBytes, options);
  cleanups.push(() => s.stop());
  return s;
}

async function attacker(port: number): Promise<RawPeer> {
  const p = await rawConnect(port);
  cleanups.push(() => void p.socket.destroy());
  return p;
}

/** Write `chunk` until the socket refuses more for `stallMs` (the server stopped reading). */
async function floodUntilStalled(s: Socket, chunk: Uint8Array, stallMs: number): Promise<number> {
  let sent = 0;
  for (;;) {
    if (s.destroyed) return sent;
    sent += chunk.length;
    if (!s.write(chunk)) {
      const drained = await Promise.race([
        new Promise<boolean>((r) => s.once("drain", () => r(true))),
        new Promise<boolean>((r) => s.once("close", () => r(false))),
        sleep(stallMs).then(() => false),
      ]);
      if (!drained) return sent;
    }
  }
}

/**
 * An attacker that stopped reading does not notice the server closing it; a write does (EPIPE
 * or ECONNRESET). Write a byte every 50 ms until the socket closes; fail after 3 s.
 */
async function closedAfterPokes(p: RawPeer): Promise<void> {
  const until = performance.now() + 3000;
  while (!p.socket.destroyed) {
    if (performance.now() > until) throw new Error("the server never closed the attacker");
    p.socket.write(new Uint8Array(1));
    await sleep(50);
  }
}

/** Wait until `socket` drains or closes, leaving no listener behind (each wait adds two). */
function drainOrClose(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off("drain", done);
      socket.off("close", done);
      resolve();
    };
    socket.once("drain", done);
    socket.once("close", done);
  });
}

describe("NbdServer survives hostile clients (server in a child process)", () => {
  it("a client flooding options without reading the replies stalls itself: RSS bounded, cut off at handshakeTimeoutMs, others served", async () => {
    const srv = await server(8 * MiB, { handshakeTimeoutMs: 2000 });
    const base = await srv.stats();
    const a = await attacker(srv.port);
    await greet(a);
    // 4096 unknown options (each answered with NBD_REP_ERR_UNSUP and a message) per write.
    const burst = cat(...Array.from({ length: 4096 }, () => opt(0x5555)));
    const t0 = performance.now();
    const honest = honestClient(srv.port, a.closed);
    const sent = await floodUntilStalled(a.socket, burst, 500);
    const stalledAt = performance.now() - t0;
    const cut = await statsWhen(srv, (s) => s.stats.handshakeTimeouts > 0, 10_000);
    const cutAt = performance.now() - t0;
    await closedAfterPokes(a);
    const h = await honest;
    const after = await statsWhen(srv, (s) => s.stats.connections === 0);
    expect(cut.stats.handshakeTimeouts).toBe(1);
    // Before the fix the server queued replies without bound: 271 MiB sent, 8.3 GiB RSS, death.
    expect(sent).toBeLessThan(64 * MiB);
    expect(stalledAt).toBeLessThan(2500);
    expect(cutAt).toBeLessThan(2000 + 1500);
    expect(after.stats.handshakeTimeouts).toBe(1);
    expect(after.errors.timeout).toBe(1);
    expect(after.peakRss - base.rss).toBeLessThan(64 * MiB);
    expect(alive(srv)).toBe(true);
    expect(h).toMatchObject({ mismatches: 0, errors: [] });
    expect(h.rounds).toBeGreaterThan(0);
    expect(h.maxLatencyMs).toBeLessThan(HONEST_LATENCY_MS);
  });

  it("a client that pipelines 9000 READs of 32 MiB and resets costs bounded work: the server stops, others wait under 1 s", async () => {
    const srv = await server(64 * MiB, {});
    const base = await srv.stats();
    const stopHonest = sleep(3000);
    const honest = honestClient(srv.port, stopHonest, { bytes: 512 });
    const a = await attacker(srv.port);
    await rawGo(a, "disk");
    const reads = cat(...Array.from({ length: 9000 }, (_, i) => request(0, i + 1, 0, 32 * MiB)));
    a.socket.write(reads);
    await sleep(100); // the server has started on them
    a.socket.resetAndDestroy();
    const h = await honest;
    const after = await srv.stats();
    // Before the fix the server ran all of them back to back: a 512-byte read took 15.5 s.
    expect(h).toMatchObject({ mismatches: 0, errors: [] });
    expect(h.maxLatencyMs).toBeLessThan(HONEST_LATENCY_MS);
    // Work stopped at the reset: a handful of the 9000 ran (the honest client's are small).
    const attackerReads = after.stats.requests - 3 * h.rounds;
    expect(attackerReads).toBeLessThan(100);
    expect(after.stats.discardedBytes + after.stats.abandoned).toBeGreaterThan(0);
    expect(after.stats.bufferedBytes).toBe(0);
    expect(after.peakRss - base.rss).toBeLessThan(256 * MiB);
    expect(alive(srv)).toBe(true);
  });

  it("100 clients announcing a 32 MiB WRITE each and trickling it: RSS stays within maxTotalBufferedBytes, they are cut at requestTimeoutMs, others served", async () => {
    const srv = await server(64 * MiB, {
      maxTotalBufferedBytes: 128 * MiB,
      maxConnections: 128,
      requestTimeoutMs: 3000,
    });
    const base = await srv.stats();
    const stopHonest = sleep(6000);
    const honest = honestClient(srv.port, stopHonest);
    const attackers = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const a = await attacker(srv.port);
        await rawGo(a, "disk");
        a.socket.write(request(1, i + 1, 0, 32 * MiB));
        return a;
      }),
    );
    // Each sends 24 MiB as fast as the server takes it, then one byte a second.
    const chunk = new Uint8Array(MiB).fill(0xa5);
    const pumping = attackers.map(async (a) => {
      for (let i = 0; i < 24 && !a.socket.destroyed; i++) {
        if (!a.socket.write(chunk)) await drainOrClose(a.socket);
      }
      while (!a.socket.destroyed) {
        a.socket.write(new Uint8Array(1));
        await sleep(1000);
      }
    });
    const h = await honest;
    const after = await srv.stats();
    for (const a of attackers) a.socket.destroy();
    await Promise.all(pumping);
    // Before the fix: RSS from 52 MiB to 3.28 GiB. Now within the documented bound: twice the
    // shared budget (buffers in use, and as many not yet reclaimed by the GC) plus 64 MiB.
    expect(after.peakRss - base.rss).toBeLessThan(2 * 128 * MiB + 64 * MiB);
    expect(after.stats.peakBufferedBytes).toBeLessThanOrEqual(128 * MiB + 101 * 256 * 1024);
    expect(after.stats.requestTimeouts).toBeGreaterThanOrEqual(4);
    expect(h).toMatchObject({ mismatches: 0, errors: [] });
    expect(h.maxLatencyMs).toBeLessThan(HONEST_LATENCY_MS);
    expect(alive(srv)).toBe(true);
  });

  it("a client that never reads its READ replies is cut at requestTimeoutMs and its buffers are freed", async () => {
    const srv = await server(64 * MiB, { requestTimeoutMs: 1000 });
    const base = await srv.stats();
    const a = await attacker(srv.port);
    await rawGo(a, "disk");
    a.socket.pause(); // never read: the replies pile up in the kernel, then in the server
    const t0 = performance.now();
    a.socket.write(cat(...Array.from({ length: 8 }, (_, i) => request(0, i + 1, 0, 32 * MiB))));
    const honest = honestClient(srv.port, sleep(1500));
    const cut = await statsWhen(srv, (s) => s.stats.requestTimeouts > 0, 10_000);
    const cutAt = performance.now() - t0;
    await closedAfterPokes(a);
    const h = await honest;
    const after = await statsWhen(srv, (s) => s.stats.connections === 0);
    expect(cutAt).toBeLessThan(1000 + 2000);
    expect(cut.stats.requestTimeouts).toBe(1);
    expect(after.stats.bufferedBytes).toBe(0);
    // The connection's budget (64 MiB) bounds what it could make the server hold.
    expect(after.peakRss - base.rss).toBeLessThan(64 * MiB + 64 * MiB);
    expect(h).toMatchObject({ mismatches: 0, errors: [] });
    expect(h.maxLatencyMs).toBeLessThan(HONEST_LATENCY_MS);
  });

  it("300 idle connections: maxConnections are held, the rest refused at accept, the handshake deadline frees the slots", async () => {
    const srv = await server(8 * MiB, { maxConnections: 50, handshakeTimeoutMs: 1000 });
    const base = await srv.stats();
    const idle = await Promise.all(Array.from({ length: 300 }, () => attacker(srv.port)));
    await Promise.all(idle.map((p) => p.closed));
    // A client sees its socket close before the server's own close handler frees the slot:
    // wait (at most 5 s) for the server to count them all gone.
    const mid = await statsWhen(srv, (s) => s.stats.connections === 0);
    expect(mid.stats).toMatchObject({ accepted: 50, rejected: 250, handshakeTimeouts: 50 });
    expect(mid.stats.connections).toBe(0);
    expect(mid.peakRss - base.rss).toBeLessThan(64 * MiB);
    // The slots are free again: a real client gets in and is served.
    const h = await honestClient(srv.port, Promise.resolve());
    expect(h).toMatchObject({ rounds: 1, mismatches: 0, errors: [] });
  });

  it("idleTimeoutMs closes a client idle in transmission and leaves a busy one alone", async () => {
    const srv = await server(8 * MiB, { idleTimeoutMs: 500 });
    const idle = await NbdDisk.connect({ host: "127.0.0.1", port: srv.port }, "disk");
    cleanups.push(() => idle.close());
    const h = await honestClient(srv.port, sleep(1500));
    const e = await idle.read(0, [new Uint8Array(512)]).catch((x: unknown) => x);
    expect(e).toMatchObject({ name: "BackendError", code: "io" });
    const after = await srv.stats();
    expect(after.stats.idleTimeouts).toBe(1);
    expect(h).toMatchObject({ mismatches: 0, errors: [] });
    expect(h.rounds).toBeGreaterThan(3);
  });

  it("bad limit options are RangeErrors naming them", async () => {
    const { NbdServer } = await import("../src/node.js");
    for (const [name, value] of [
      ["maxConnections", 0],
      ["maxTotalBufferedBytes", 1024],
      ["handshakeTimeoutMs", -1],
      ["idleTimeoutMs", 1.5],
      ["requestTimeoutMs", 2 ** 32],
    ] as const) {
      expect(() => new NbdServer({ exports: {}, [name]: value })).toThrow(
        new RegExp(`options\\.${name}`),
      );
    }
  });
});
