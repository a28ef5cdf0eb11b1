// One side of the two-worker split-ring benchmark; both sides busy-poll (like the C baseline).
import { parentPort, workerData } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { DeviceLoop, DriverLoop } from "./split-workload.js";

const { role, buffer, size, batch, total, start } = workerData as {
  role: "driver" | "device";
  buffer: SharedArrayBuffer;
  size: number;
  batch: number;
  total: number;
  start: SharedArrayBuffer;
};
const mem = new GuestMemoryMap([{ guestBase: 0, size: buffer.byteLength, buffer }]);
const go = new Int32Array(start);
if (role === "device") {
  const dev = new DeviceLoop(mem, size);
  Atomics.add(go, 1, 1);
  Atomics.wait(go, 0, 0);
  while (dev.done < total) dev.step();
  parentPort!.postMessage({ done: dev.done });
} else {
  const drv = new DriverLoop(mem, size, batch);
  Atomics.add(go, 1, 1);
  Atomics.wait(go, 0, 0);
  const t0 = performance.now();
  while (drv.reaped < total) {
    drv.add(total);
    drv.reap();
  }
  parentPort!.postMessage({ done: drv.reaped, ms: performance.now() - t0 });
}
