// Driver and device in two worker threads on one SharedArrayBuffer, woken only by kicks and
// interrupts with EVENT_IDX suppression: every token must come back exactly once with its
// length, and no wait may time out (a timeout is a lost wakeup).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { Feature, featureMask } from "@virtio-ts/spec";
import { ringFeatures } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";

const TOTAL = 1_000_000;
const dist = fileURLToPath(new URL("../dist/index.js", import.meta.url));

function runWorker(data: Record<string, unknown>): Promise<Record<string, number>> {
  const w = new Worker(new URL("./fixtures/cross-thread-worker.mjs", import.meta.url), { workerData: data, execArgv: [] });
  return new Promise((resolve, reject) => {
    w.once("message", (m) => {
      resolve(m);
      void w.terminate();
    });
    w.once("error", reject);
  });
}

describe("split ring across two threads", () => {
  it(`delivers ${TOTAL.toLocaleString("en")} buffers exactly once with the right length and no lost wakeup`, async () => {
    expect(existsSync(dist), "packages/virtqueue/dist is missing: run `pnpm build` (pnpm test does)").toBe(true);
    const size = 256;
    const memBuffer = new SharedArrayBuffer(1 << 20);
    const bellBuffer = new SharedArrayBuffer(16);
    const seenBuffer = new SharedArrayBuffer(TOTAL);
    const layout = { size, desc: 0x1000, driver: 0x1000 + 16 * size, device: 0x3000 + 16 * size };
    const features = ringFeatures(featureMask(Feature.RING_EVENT_IDX));
    const common = { memBuffer, bellBuffer, seenBuffer, layout, features, total: TOTAL, dataBase: 0x20000 };
    const [device, driver] = await Promise.all([
      runWorker({ ...common, role: "device" }),
      runWorker({ ...common, role: "driver" }),
    ]);
    expect(device.done).toBe(TOTAL);
    expect(driver).toMatchObject({ sent: TOTAL, reaped: TOTAL, wrong: 0 });
    const seen = new Uint8Array(seenBuffer);
    expect(seen.indexOf(0)).toBe(-1);
    expect(new Int32Array(bellBuffer)[2]).toBe(0);
  }, 120_000);
});
