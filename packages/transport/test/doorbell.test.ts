// Doorbells in one thread, and across threads: the worker fixture runs the built JavaScript
// (packages/transport/dist), so this file builds the package first (incrementally).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { beforeAll, describe, expect, it } from "vitest";
import { LocalDoorbell, SharedDoorbell } from "../src/index.js";

describe("LocalDoorbell", () => {
  it("counts rings until taken, and take resets the count", () => {
    const bell = new LocalDoorbell();
    bell.ring();
    bell.ring(3);
    expect(bell.pending()).toBe(4);
    expect(bell.take()).toBe(4);
    expect(bell.take()).toBe(0);
    expect(() => bell.ring(0)).toThrow(RangeError);
  });

  it("sync delivery calls the handler inside ring", () => {
    let calls = 0;
    const bell = new LocalDoorbell({ delivery: "sync", onRing: () => calls++ });
    bell.ring();
    bell.ring();
    expect(calls).toBe(2);
  });

  it("microtask delivery coalesces the rings of one task into one call", async () => {
    const seen: number[] = [];
    const bell = new LocalDoorbell({ onRing: () => seen.push(bell.take()) });
    bell.ring();
    bell.ring();
    expect(seen).toEqual([]);
    await Promise.resolve();
    expect(seen).toEqual([2]);
  });

  it("wait resolves true at once for a pending ring, on a later ring, and false on timeout", async () => {
    const bell = new LocalDoorbell();
    bell.ring();
    await expect(bell.wait()).resolves.toBe(true);
    bell.take();
    const later = bell.wait(10_000);
    bell.ring();
    await expect(later).resolves.toBe(true);
    bell.take();
    await expect(bell.wait(1)).resolves.toBe(false);
    expect(() => bell.wait(-1)).toThrow(RangeError);
  });
});

describe("SharedDoorbell in one thread", () => {
  it("rings, peeks and takes through one Int32 word that another view sees", () => {
    const buffer = new SharedArrayBuffer(16);
    const a = new SharedDoorbell(buffer, 8);
    const b = SharedDoorbell.from(a.handle);
    a.ring(2);
    expect(new Int32Array(buffer)[2]).toBe(2);
    expect(b.pending()).toBe(2);
    expect(b.take()).toBe(2);
    expect(a.pending()).toBe(0);
    expect(() => new SharedDoorbell(buffer, 6)).toThrow(/byteOffset/);
    expect(() => new SharedDoorbell(buffer, 16)).toThrow(/byteOffset/);
    expect(() => new SharedDoorbell(new ArrayBuffer(4) as unknown as SharedArrayBuffer)).toThrow(
      TypeError,
    );
  });

  it("waitSync returns at once when a ring is pending and false after its timeout", () => {
    const bell = new SharedDoorbell();
    expect(bell.waitSync(0)).toBe(false);
    bell.ring();
    expect(bell.waitSync()).toBe(true);
  });

  it("wait (Atomics.waitAsync) stays pending through a stale notify and resolves true on the ring", async () => {
    const bell = new SharedDoorbell();
    let settled: boolean | undefined;
    const p = bell.wait(10_000).then((v) => {
      settled = v;
      return v;
    });
    // A notify with nothing rung reaches the waiter (1 woken)...
    expect(Atomics.notify(bell.word, 0)).toBe(1);
    await new Promise((r) => setTimeout(r, 20));
    // ...which went back to sleep instead of resolving false before its timeout.
    expect(settled).toBeUndefined();
    bell.ring();
    await expect(p).resolves.toBe(true);
  });

  it("wait (Atomics.waitAsync) resolves on a ring from the same thread and false on timeout", async () => {
    const bell = new SharedDoorbell();
    const p = bell.wait(10_000);
    setTimeout(() => bell.ring(), 1);
    await expect(p).resolves.toBe(true);
    expect(bell.take()).toBe(1);
    await expect(bell.wait(1)).resolves.toBe(false);
  });
});

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const distEntry = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const fixture = new URL("./fixtures/doorbell-worker.mjs", import.meta.url);

interface WorkerResult {
  role: string;
  rounds: number;
  rings: number;
}

function run(data: Record<string, unknown>): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    // execArgv [] drops vitest's loader flags: the worker resolves @virtio-ts/* to dist like any consumer.
    const w = new Worker(fixture, { workerData: data, execArgv: [] });
    w.once("message", resolve);
    w.once("error", reject);
    w.once("exit", (code) => {
      if (code !== 0) reject(new Error(`worker exited with ${code}`));
    });
  });
}

/**
 * A worker (fixture role "once") asleep in `kick.waitSync(timeoutMs)`, proven asleep: a notify
 * with nothing rung (what a ring's late Atomics.notify looks like to a thread that already took
 * that ring's count) is repeated until it reaches the worker, which must then sleep on.
 */
async function workerAsleepInWaitSync(
  timeoutMs: number,
): Promise<{ kick: SharedDoorbell; result: Promise<WorkerResult> }> {
  const kick = new SharedDoorbell();
  const irq = new SharedDoorbell();
  const result = run({ kick: kick.handle, irq: irq.handle, total: 1, timeoutMs, role: "once" });
  expect(await irq.wait(30_000)).toBe(true);
  let woken = 0;
  for (const end = Date.now() + 30_000; woken === 0 && Date.now() < end; ) {
    await new Promise((r) => setTimeout(r, 5));
    woken = Atomics.notify(kick.word, 0);
  }
  expect(woken).toBe(1);
  await new Promise((r) => setTimeout(r, 20));
  return { kick, result };
}

describe("SharedDoorbell across threads", () => {
  beforeAll(() => {
    const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
    try {
      execFileSync(process.execPath, [tsc, "-b", packageDir], { stdio: "pipe" });
    } catch (e) {
      if (!existsSync(distEntry)) {
        throw new Error(
          `tsc -b packages/transport failed:\n${String((e as { stdout?: unknown }).stdout)}`,
        );
      }
    }
  });

  it("a driver worker and a device worker ping-pong 20000 kicks and interrupts with no lost wakeup", async () => {
    const kick = new SharedDoorbell();
    const irq = new SharedDoorbell();
    // A lost wakeup hangs one side forever; the timeout only has to outlast the longest time a
    // thread can go unscheduled on a loaded 2-core machine (10 s was seen to be too short).
    const common = { kick: kick.handle, irq: irq.handle, total: 20_000, timeoutMs: 60_000 };
    const [driver, device] = await Promise.all([
      run({ ...common, role: "driver" }),
      run({ ...common, role: "device" }),
    ]);
    expect(driver).toEqual({ role: "driver", rounds: 20_000, rings: 20_000 });
    expect(device.rings).toBe(20_000);
    expect(device.rounds).toBe(20_000);
  }, 150_000);

  it("rings in bursts reach a worker that sleeps between them, each counted once (20000 rings)", async () => {
    const kick = new SharedDoorbell();
    const irq = new SharedDoorbell();
    const common = { kick: kick.handle, irq: irq.handle, total: 20_000, timeoutMs: 60_000 };
    const [burst, device] = await Promise.all([
      run({ ...common, role: "burst" }),
      run({ ...common, role: "device" }),
    ]);
    expect(burst.rings).toBe(20_000);
    // Every ring is counted exactly once, however they coalesced...
    expect(device.rings).toBe(20_000);
    // ...and some did coalesce: fewer wake-ups than rings (the bursts alone guarantee it).
    expect(device.rounds).toBeLessThan(20_000);
    expect(device.rounds).toBeGreaterThan(0);
  }, 150_000);

  it("waitSync sleeps on through a stale notify (one that finds the word 0) until the ring", async () => {
    const { kick, result } = await workerAsleepInWaitSync(30_000);
    kick.ring(3);
    // It returned on the ring (true, 3 taken), not on the stale wake-up (false, 0).
    expect(await result).toEqual({ role: "once", rounds: 1, rings: 3 });
  });

  it("a ring wakes the sleeper even when another producer's count is already on the word", async () => {
    // The worker's waitSync would give up after 20 s; the ring below must wake it long before.
    const { kick, result } = await workerAsleepInWaitSync(20_000);
    // Producer A added its count and stalled before notifying; producer B rings.
    Atomics.add(kick.word, 0, 1);
    const t0 = Date.now();
    kick.ring();
    expect(await result).toEqual({ role: "once", rounds: 1, rings: 2 });
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("the main thread waits with Atomics.waitAsync for a worker's interrupts", async () => {
    const kick = new SharedDoorbell();
    const irq = new SharedDoorbell();
    const device = run({
      kick: kick.handle,
      irq: irq.handle,
      total: 200,
      timeoutMs: 10_000,
      role: "device",
    });
    let rings = 0;
    for (let i = 0; i < 200; i++) {
      kick.ring();
      expect(await irq.wait(10_000)).toBe(true);
      rings += irq.take();
    }
    expect(rings).toBe(200);
    expect((await device).rings).toBe(200);
  });
});
