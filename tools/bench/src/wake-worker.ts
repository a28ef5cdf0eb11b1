// The worker side of the wake bench (wake.ts): answer every kick with an interrupt through two
// SharedDoorbells, sleeping in Atomics.wait between them, and report the time spent in `ring`.
import { parentPort, workerData } from "node:worker_threads";
import { SharedDoorbell, type SharedDoorbellHandle } from "@virtio-ts/transport";

const data = workerData as {
  kick: SharedDoorbellHandle;
  irq: SharedDoorbellHandle;
  rounds: number;
  /**
   * "answer": wait for a kick, ring the interrupt (the device side); "peer": ring a kick, wait
   * for the interrupt, timing the loop (the driver side of the worker ↔ worker case).
   */
  role: "peer" | "answer";
};
const kick = SharedDoorbell.from(data.kick);
const irq = SharedDoorbell.from(data.irq);
let ringNs = 0;
/** Sleep until `bell` rings, at most a minute: a lost wake-up fails the bench, never hangs it. */
function sleepOn(bell: SharedDoorbell, what: string): void {
  while (bell.take() === 0) {
    if (!bell.waitSync(60_000)) throw new Error(`wake bench: no ${what} within 60 s`);
  }
}
if (data.role === "answer") {
  for (let i = 0; i < data.rounds; i++) {
    sleepOn(kick, "kick");
    const t = performance.now();
    irq.ring();
    ringNs += (performance.now() - t) * 1e6;
  }
} else {
  // Wait for the answering worker to be up and asleep before timing.
  kick.ring();
  sleepOn(irq, "interrupt");
  // process.cpuUsage in a worker is the whole process's: both sides of the ping-pong.
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 1; i < data.rounds; i++) {
    const t = performance.now();
    kick.ring();
    ringNs += (performance.now() - t) * 1e6;
    sleepOn(irq, "interrupt");
  }
  const ns = (performance.now() - t0) * 1e6;
  const c = process.cpuUsage(c0);
  parentPort!.postMessage({ ns, ringNs, cpuNs: (c.user + c.system) * 1000 });
}
if (data.role === "answer") parentPort!.postMessage({ ns: 0, ringNs });
