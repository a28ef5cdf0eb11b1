// wake: what one cross-thread wake-up costs on this machine, in Node and in C, in the same run.
//
// A kick or an interrupt that finds the other side asleep is a wake-up: Atomics.notify (V8's
// futex emulation, or for an Atomics.waitAsync waiter a task posted to its event loop) in
// Node, FUTEX_WAKE in C. Two sides ping-pong, so every round trip is two wake-ups of a
// sleeping thread:
//   - C: two pthreads on futex words (c/wake.c, gcc -O2, built in this run);
//   - Node, two workers: SharedDoorbell.ring / waitSync (Atomics.wait) on both sides;
//   - Node, main thread ↔ worker: the main thread sleeps in SharedDoorbell.wait
//     (Atomics.waitAsync, as a VMM thread waits for a vhost worker's interrupt).
// Prints round trips per second, µs per round trip (wall and process CPU) and µs spent inside
// one ring (notify) call, and each Node case as a ratio to C. The vhost bench's interrupts and
// kicks are such wake-ups; this row says how much of their cost is the machine's.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { Worker } from "node:worker_threads";
import { SharedDoorbell } from "@virtio-ts/transport";
import { buildC } from "./build-c.js";

/** One measured case. */
interface WakeRun {
  readonly rounds: number;
  /** Elapsed ns. */
  readonly ns: number;
  /** Process CPU ns (all threads). */
  readonly cpuNs: number;
  /** ns spent inside ring / FUTEX_WAKE, both sides together. */
  readonly ringNs: number;
}

function runC(bin: string, rounds: number): WakeRun {
  const out = execFileSync(bin, [`${rounds}`], { encoding: "utf8", timeout: 120_000 });
  const [n, ns, cpuNs, ringNs] = out.trim().split(/\s+/).map(Number);
  return { rounds: n!, ns: ns!, cpuNs: cpuNs!, ringNs: ringNs! };
}

const cpuNow = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) * 1000;
};

function spawn(
  role: "peer" | "answer",
  kick: SharedDoorbell,
  irq: SharedDoorbell,
  rounds: number,
): { worker: Worker; report: Promise<{ ns: number; ringNs: number; cpuNs?: number }> } {
  const worker = new Worker(new URL("./wake-worker.js", import.meta.url), {
    workerData: { role, kick: kick.handle, irq: irq.handle, rounds },
  });
  const report = new Promise<{ ns: number; ringNs: number; cpuNs?: number }>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
    worker.once("exit", (code) => reject(new Error(`wake worker exited with ${code}`)));
  });
  return { worker, report };
}

/** Two workers, both sleeping in Atomics.wait. */
async function twoWorkers(rounds: number): Promise<WakeRun> {
  const kick = new SharedDoorbell();
  const irq = new SharedDoorbell();
  const a = spawn("answer", kick, irq, rounds);
  const p = spawn("peer", kick, irq, rounds);
  const [ra, rp] = await Promise.all([a.report, p.report]);
  await Promise.all([a.worker.terminate(), p.worker.terminate()]);
  // The first round (start-up) is not timed on either side.
  return { rounds: rounds - 1, ns: rp.ns, cpuNs: rp.cpuNs!, ringNs: ra.ringNs + rp.ringNs };
}

/** The main thread sleeps in Atomics.waitAsync (SharedDoorbell.wait); a worker answers. */
async function mainAndWorker(rounds: number): Promise<WakeRun> {
  const kick = new SharedDoorbell();
  const irq = new SharedDoorbell();
  const a = spawn("answer", kick, irq, rounds);
  // Let the worker start and go to sleep before timing.
  kick.ring();
  while (irq.take() === 0) {
    if (!(await irq.wait(60_000))) throw new Error("wake bench: the worker did not answer in 60 s");
  }
  let ringNs = 0;
  const cpu0 = cpuNow();
  const t0 = performance.now();
  for (let i = 1; i < rounds; i++) {
    const t = performance.now();
    kick.ring();
    ringNs += (performance.now() - t) * 1e6;
    while (irq.take() === 0) {
      if (!(await irq.wait(60_000))) throw new Error(`wake: no answer in round ${i}`);
    }
  }
  const ns = (performance.now() - t0) * 1e6;
  const cpuNs = cpuNow() - cpu0;
  const ra = await a.report;
  await a.worker.terminate();
  return { rounds: rounds - 1, ns, cpuNs, ringNs: ringNs + ra.ringNs };
}

function median(runs: WakeRun[]): WakeRun {
  return [...runs].sort((x, y) => y.rounds / y.ns - x.rounds / x.ns)[Math.floor(runs.length / 2)]!;
}

/** The wake bench (see the top of this file). */
export async function wakeBench(quick: boolean, reps: number): Promise<void> {
  const rounds = quick ? 5_000 : 50_000;
  console.log(
    `wake: ping-pong between two threads, each wake finding the other asleep; ${rounds.toLocaleString("en")} ` +
      `round trips (2 wake-ups each), median of ${reps}; ring = time inside one Atomics.notify / FUTEX_WAKE call`,
  );
  const c = buildC("wake");
  if (typeof c === "string") console.log(`  C baseline skipped: ${c}`);
  const cases: [string, () => Promise<WakeRun>][] = [
    ["C, two pthreads, futex", async () => runC((c as { bin: string }).bin, rounds)],
    ["Node, two workers, Atomics.wait", () => twoWorkers(rounds)],
    ["Node, main (waitAsync) <-> worker", () => mainAndWorker(rounds)],
  ];
  if (typeof c === "string") cases.shift();
  try {
    // Warm up each case, then measure them interleaved.
    for (const [, run] of cases) await run();
    const runs = cases.map(() => [] as WakeRun[]);
    for (let r = 0; r < reps; r++)
      for (const [i, [, run]] of cases.entries()) runs[i]!.push(await run());
    const results = runs.map(median);
    const base = typeof c === "string" ? undefined : results[0];
    const us = (ns: number, n: number) => (ns / n / 1000).toFixed(1);
    console.log(
      `${"".padEnd(36)}${"round trips/s".padStart(14)}${"µs/rt".padStart(8)}${"CPU µs/rt".padStart(11)}` +
        `${"µs/ring".padStart(9)}${"× C".padStart(7)}`,
    );
    for (const [i, [name]] of cases.entries()) {
      const r = results[i]!;
      const rate = r.rounds / (r.ns / 1e9);
      const vsC = base === undefined ? "–" : (rate / (base.rounds / (base.ns / 1e9))).toFixed(2);
      console.log(
        `${name.padEnd(36)}${Math.round(rate).toLocaleString("en").padStart(14)}${us(r.ns, r.rounds).padStart(8)}` +
          `${us(r.cpuNs, r.rounds).padStart(11)}${us(r.ringNs, 2 * r.rounds).padStart(9)}${vsC.padStart(7)}`,
      );
    }
  } finally {
    if (typeof c !== "string") rmSync(c.dir, { recursive: true, force: true });
  }
}
