// Driver and device in two worker threads on one SharedArrayBuffer (split and packed rings),
// woken only by kicks and
// interrupts (Atomics.wait/notify) with VIRTIO_F_EVENT_IDX suppression on. Every token must
// come back exactly once with its token-derived length and reply, and the run must finish:
// the workers sleep without a timeout, so a lost wakeup hangs them, and a watchdog here turns
// that hang into a failure that dumps the ring indices.
//
// The workers run the built JavaScript (packages/*/dist), so this file builds the package
// first (incrementally; `pnpm test` has already done it).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { Feature, featureMask, splitAvailEventOffset, splitUsedEventOffset } from "@virtio-ts/spec";
import { ringFeatures } from "@virtio-ts/virtqueue";
import { beforeAll, describe, expect, it } from "vitest";
import { Ctl, SLOT_BYTES } from "./fixtures/cross-thread-shared.mjs";

const TOTAL = 1_000_000;
const SIZE = 256;
const LAYOUT = { size: SIZE, desc: 0x1000, driver: 0x2000, device: 0x3000 } as const;
const DATA_BASE = 0x10000;
const MEM_SIZE = DATA_BASE + SIZE * SLOT_BYTES;
const packageDir = fileURLToPath(new URL("..", import.meta.url));
const distEntry = fileURLToPath(new URL("../dist/index.js", import.meta.url));

/** Build packages/virtqueue (and what it references) so the workers run current code. */
function buildDist(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  try {
    execFileSync(process.execPath, [tsc, "-b", packageDir], { stdio: "pipe" });
  } catch (e) {
    const out = String((e as { stdout?: unknown }).stdout ?? "");
    if (!existsSync(distEntry)) {
      throw new Error(
        `packages/virtqueue/dist is missing and \`tsc -b packages/virtqueue\` failed; run \`pnpm build\`.\n${out}`,
      );
    }
    console.warn(`tsc -b packages/virtqueue failed; running the existing dist.\n${out}`);
  }
  if (!existsSync(distEntry)) {
    throw new Error(
      "packages/virtqueue/dist/index.js is missing: run `pnpm build` (pnpm test does)",
    );
  }
}

interface PairResult {
  readonly device: { done: number };
  readonly driver: { sent: number; reaped: number };
  readonly ctl: Int32Array;
  readonly seen: Uint8Array;
}

/** What the watchdog prints when nothing moves: ring indices and both sides' counters. */
function dump(memBuffer: SharedArrayBuffer, ctl: Int32Array, packed: boolean): string {
  const m = new DataView(memBuffer);
  const u16 = (at: number) => m.getUint16(at, true);
  const { driver, device } = LAYOUT;
  const c = (i: number) => Atomics.load(ctl, i);
  const ring = packed
    ? [
        `driver event off_wrap=${u16(driver)} flags=${u16(driver + 2)}`,
        `device event off_wrap=${u16(device)} flags=${u16(device + 2)}`,
      ]
    : [
        `avail.flags=${u16(driver)} avail.idx=${u16(driver + 2)} used_event=${u16(driver + splitUsedEventOffset(SIZE))}`,
        `used.flags=${u16(device)} used.idx=${u16(device + 2)} avail_event=${u16(device + splitAvailEventOffset(SIZE))}`,
      ];
  return [
    ...ring,
    `device done=${c(Ctl.DEVICE_DONE)} sleeps=${c(Ctl.DEVICE_SLEEPS)} interrupts sent=${c(Ctl.IRQS_SENT)}`,
    `driver reaped=${c(Ctl.DRIVER_REAPED)} sleeps=${c(Ctl.DRIVER_SLEEPS)} kicks sent=${c(Ctl.KICKS_SENT)}`,
    `kick word=${c(Ctl.KICK)} irq word=${c(Ctl.IRQ)} errors=${c(Ctl.ERRORS)}`,
  ].join("\n  ");
}

/**
 * Run a driver worker and a device worker over one ring until `total` buffers are reaped.
 * Rejects (after terminating both) if a worker fails or if neither side makes progress for
 * `stallMs`, with a dump of the ring.
 */
function runPair(
  total: number,
  stallMs: number,
  options: { dropKicks?: boolean; packed?: boolean } = {},
): Promise<PairResult> {
  const memBuffer = new SharedArrayBuffer(MEM_SIZE);
  const ctlBuffer = new SharedArrayBuffer(Ctl.COUNT * 4);
  const seenBuffer = new SharedArrayBuffer(total);
  const ctl = new Int32Array(ctlBuffer);
  const features = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
  const common = {
    memBuffer,
    ctlBuffer,
    seenBuffer,
    layout: LAYOUT,
    features,
    total,
    dataBase: DATA_BASE,
    options,
  };
  const script = new URL("./fixtures/cross-thread-worker.mjs", import.meta.url);
  // execArgv [] drops vitest's loader flags: the workers resolve @virtio-ts/* to dist like any consumer.
  const workers = (["device", "driver"] as const).map(
    (role) => new Worker(script, { workerData: { ...common, role }, execArgv: [] }),
  );
  return new Promise<PairResult>((resolve, reject) => {
    const results: Record<string, unknown> = {};
    let lastProgress = -1;
    let lastChange = Date.now();
    const stop = (error?: Error) => {
      clearInterval(watchdog);
      for (const w of workers) void w.terminate();
      if (error) reject(error);
    };
    const watchdog = setInterval(() => {
      const progress = Atomics.load(ctl, Ctl.DEVICE_DONE) + Atomics.load(ctl, Ctl.DRIVER_REAPED);
      if (progress !== lastProgress) {
        lastProgress = progress;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > stallMs) {
        stop(
          new Error(
            `no progress for ${stallMs} ms (a lost wakeup?):\n  ${dump(memBuffer, ctl, options.packed === true)}`,
          ),
        );
      }
    }, 50);
    for (const w of workers) {
      w.once("error", (e) => stop(e instanceof Error ? e : new Error(String(e))));
      w.once("message", (m: { role: string }) => {
        results[m.role] = m;
        if (results.device && results.driver) {
          stop();
          resolve({
            device: results.device as PairResult["device"],
            driver: results.driver as PairResult["driver"],
            ctl,
            seen: new Uint8Array(seenBuffer),
          });
        }
      });
    }
  });
}

describe.each([
  ["split", false],
  ["packed", true],
] as const)("%s ring across two threads with EVENT_IDX", (_name, packed) => {
  beforeAll(buildDist, 120_000);

  it(`returns each of ${TOTAL.toLocaleString("en")} tokens exactly once with its length, and never loses a wakeup`, async () => {
    const r = await runPair(TOTAL, 10_000, { packed });
    expect(r.device.done).toBe(TOTAL);
    expect(r.driver).toEqual({ role: "driver", sent: TOTAL, reaped: TOTAL });
    expect(Atomics.load(r.ctl, Ctl.ERRORS)).toBe(0);
    expect(r.seen.indexOf(0)).toBe(-1);
    // Both sides really slept and were woken (the run did not succeed by pure polling).
    expect(Atomics.load(r.ctl, Ctl.KICKS_SENT)).toBeGreaterThan(0);
    expect(Atomics.load(r.ctl, Ctl.IRQS_SENT)).toBeGreaterThan(0);
  }, 60_000);

  it("reports a driver that swallows its kicks as a stall with the ring state, instead of hanging", async () => {
    await expect(runPair(TOTAL, 1_000, { dropKicks: true, packed })).rejects.toThrow(
      packed
        ? /no progress for 1000 ms[\s\S]*device event off_wrap=\d+[\s\S]*kicks sent=0/
        : /no progress for 1000 ms[\s\S]*avail\.idx=\d+[\s\S]*avail_event=\d+[\s\S]*kicks sent=0/,
    );
  }, 30_000);
});
