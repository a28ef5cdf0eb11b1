// One side of the two-worker split-ring bench, the same loop as device_thread / run_threads in
// c/split_ring.c: doorbells are Int32 counters woken with Atomics.notify, EVENT_IDX decides
// when a kick or an interrupt is needed, and each side sleeps (Atomics.wait) only after
// re-enabling notifications and finding the ring still empty.
import { parentPort, workerData } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { BATCH, Ctl, DeviceSide, DriverSide, type Rate, warmOps } from "./split-workload.js";

function ring(ctl: Int32Array, word: number): void {
  Atomics.add(ctl, word, 1);
  Atomics.notify(ctl, word);
}

function device(mem: GuestMemoryMap, ctl: Int32Array, total: number): void {
  const dev = new DeviceSide(mem);
  const q = dev.q;
  while (dev.done < total) {
    const kicks = Atomics.load(ctl, Ctl.KICK);
    if (dev.serve(BATCH) > 0) {
      if (q.needsInterrupt()) {
        Atomics.add(ctl, Ctl.IRQS, 1);
        ring(ctl, Ctl.IRQ);
      }
      q.disableNotifications();
      continue;
    }
    if (q.enableNotifications()) continue;
    Atomics.wait(ctl, Ctl.KICK, kicks);
  }
}

function driver(mem: GuestMemoryMap, ctl: Int32Array, total: number): Rate {
  const drv = new DriverSide(mem);
  const q = drv.q;
  const warm = warmOps(total);
  let tWarm = 0;
  const onWarm = () => {
    tWarm = performance.now();
  };
  // The driver's constructor initialised the ring; let the device start now.
  ring(ctl, Ctl.READY);
  while (drv.reaped < total) {
    const irqs = Atomics.load(ctl, Ctl.IRQ);
    const added = drv.addBatch(total);
    if (added > 0 && q.publish()) {
      Atomics.add(ctl, Ctl.KICKS, 1);
      ring(ctl, Ctl.KICK);
    }
    if (drv.reapAll(warm, onWarm) > 0) {
      q.disableInterrupts();
      continue;
    }
    if (added > 0) continue;
    if (q.enableInterrupts()) continue;
    Atomics.wait(ctl, Ctl.IRQ, irqs);
  }
  return { ops: total - warm, ns: (performance.now() - tWarm) * 1e6 };
}

if (parentPort) {
  const { role, buffer, ctlBuffer, total } = workerData as {
    role: "driver" | "device";
    buffer: SharedArrayBuffer;
    ctlBuffer: SharedArrayBuffer;
    total: number;
  };
  const mem = new GuestMemoryMap([{ guestBase: 0, size: buffer.byteLength, buffer }]);
  const ctl = new Int32Array(ctlBuffer);
  if (role === "device") {
    while (Atomics.load(ctl, Ctl.READY) === 0) Atomics.wait(ctl, Ctl.READY, 0);
    device(mem, ctl, total);
    parentPort.postMessage({ role });
  } else parentPort.postMessage({ role, ...driver(mem, ctl, total) });
}
