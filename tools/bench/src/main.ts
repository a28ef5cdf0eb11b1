// virtio-ts benchmarks. Every figure is printed beside a baseline measured in the same run.
//   node --expose-gc tools/bench/dist/main.js [split] [--quick]
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceLoop, DriverLoop } from "./split-workload.js";

const quick = process.argv.includes("--quick");
const only = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const SIZE = 256;
const BATCH = 32;
const OPS = quick ? 500_000 : 5_000_000;

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(0)}k`;
}

function buildC(): string {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-bench-"));
  const bin = join(dir, "split_ring");
  const src = fileURLToPath(new URL("../c/split_ring.c", import.meta.url));
  execFileSync("gcc", ["-O2", "-pthread", "-o", bin, src]);
  return bin;
}

function jsSingle(ops: number): number {
  const mem = createGuestMemory({ size: 1 << 20 });
  const drv = new DriverLoop(mem, SIZE, BATCH);
  const dev = new DeviceLoop(mem, SIZE);
  const t0 = performance.now();
  while (drv.reaped < ops) {
    drv.add(ops);
    dev.step();
    drv.reap();
  }
  return ops / ((performance.now() - t0) / 1000);
}

async function jsThreads(ops: number): Promise<number> {
  const buffer = new SharedArrayBuffer(1 << 20);
  const start = new SharedArrayBuffer(8);
  const url = new URL("./split-worker.js", import.meta.url);
  const common = { buffer, size: SIZE, batch: BATCH, total: ops, start };
  const results = ["device", "driver"].map((role) => {
    const w = new Worker(url, { workerData: { ...common, role } });
    return new Promise<{ done: number; ms?: number }>((resolve, reject) => {
      w.once("message", (m) => {
        resolve(m);
        void w.terminate();
      });
      w.once("error", reject);
    });
  });
  const go = new Int32Array(start);
  while (Atomics.load(go, 1) < 2) await new Promise((r) => setTimeout(r, 5));
  Atomics.store(go, 0, 1);
  Atomics.notify(go, 0);
  const [, driver] = await Promise.all(results);
  return ops / (driver!.ms! / 1000);
}

function heapGrowth(ops: number): { before: number; after: number } | undefined {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return undefined;
  const mem = createGuestMemory({ size: 1 << 20 });
  const drv = new DriverLoop(mem, SIZE, BATCH);
  const dev = new DeviceLoop(mem, SIZE);
  const run = (n: number) => {
    const target = drv.reaped + n;
    while (drv.reaped < target) {
      drv.add(target);
      dev.step();
      drv.reap();
    }
  };
  run(2_000_000); // warm up: let the JIT settle (its own allocations are not per-op garbage)
  gc();
  const before = process.memoryUsage().heapUsed;
  run(ops);
  const after = process.memoryUsage().heapUsed; // no gc(): garbage would show here
  return { before, after };
}

async function splitBench(): Promise<void> {
  const bin = buildC();
  console.log(
    `split ring round trips (add+publish -> pop -> push -> reap), queue ${SIZE}, batch ${BATCH}, ${fmt(OPS)} ops`,
  );
  jsSingle(Math.min(OPS, 200_000)); // warm-up
  const js1 = jsSingle(OPS);
  const c1 = Number(
    execFileSync(bin, ["single", `${SIZE}`, `${BATCH}`, `${OPS}`], { encoding: "utf8" }),
  );
  const js2 = await jsThreads(OPS);
  const c2 = Number(
    execFileSync(bin, ["threads", `${SIZE}`, `${BATCH}`, `${OPS}`], { encoding: "utf8" }),
  );
  console.table([
    {
      case: "one thread",
      "virtio-ts ops/s": fmt(js1),
      "C ops/s": fmt(c1),
      "TS / C": (js1 / c1).toFixed(2),
    },
    {
      case: "two threads (busy poll)",
      "virtio-ts ops/s": fmt(js2),
      "C ops/s": fmt(c2),
      "TS / C": (js2 / c2).toFixed(2),
    },
  ]);
  const heapOps = quick ? 1_000_000 : 4_000_000;
  const heap = heapGrowth(heapOps);
  if (heap) {
    const grew = heap.after - heap.before;
    console.log(
      `heap growth over ${fmt(heapOps)} round trips (forced GC before, 128 MiB semi-space so no scavenge hides garbage): ${(grew / 1024).toFixed(1)} KiB (${(grew / heapOps).toFixed(3)} bytes/op)`,
    );
  } else console.log("heap growth: run with node --expose-gc to measure");
}

if (only.length === 0 || only.includes("split")) await splitBench();
