// The device side of the demo, in its own thread: sleeps on the kick word, pops and validates
// chains, answers each request with its text upper-cased, decides interrupts. Everything it
// wants to say goes to the main thread as messages, which prints them in order.
import { parentPort, workerData } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { vringNeedEvent } from "@virtio-ts/spec";
import { DescriptorChain, SplitDeviceQueue, VirtqueueError } from "@virtio-ts/virtqueue";
import {
  AVAIL_EVENT,
  Bell,
  type DeviceReport,
  FEATURES,
  hex,
  QUEUE,
  USED_EVENT,
} from "./shared.js";

const { memBuffer, bellBuffer } = workerData as {
  memBuffer: SharedArrayBuffer;
  bellBuffer: SharedArrayBuffer;
};
// The same SharedArrayBuffer the driver uses: this thread sees the guest's memory directly.
const mem = new GuestMemoryMap([{ guestBase: 0, size: memBuffer.byteLength, buffer: memBuffer }]);
const bell = new Int32Array(bellBuffer);
const queue = new SplitDeviceQueue(mem, QUEUE, FEATURES);
const chain = new DescriptorChain(QUEUE.size);
const scratch = new Uint8Array(256);
const decoder = new TextDecoder();
const encoder = new TextEncoder();
const send = (m: DeviceReport) => parentPort!.postMessage(m);

function describeChain(): string {
  const segs: string[] = [];
  for (let i = 0; i < chain.count; i++) {
    segs.push(`${chain.writable(i) ? "W" : "R"} ${hex(chain.addr(i))}+${chain.len(i)}`);
  }
  return segs.join(", ");
}

let lastSignalled = 0;
for (;;) {
  // Read the kick counter *before* asking for kicks and looking again: a kick that lands in
  // between changes the counter, so Atomics.wait returns at once instead of missing it.
  const kicksSeen = Atomics.load(bell, Bell.KICK);
  if (!queue.enableNotifications()) {
    send({
      type: "idle",
      line: `device: ring empty; asked for a kick at avail_event = ${mem.readU16(AVAIL_EVENT)}, asleep in Atomics.wait`,
    });
    Atomics.wait(bell, Bell.KICK, kicksSeen);
  }
  if (Atomics.load(bell, Bell.STOP) === 1) break;
  const lines = [`device: woke up (kick counter ${Atomics.load(bell, Bell.KICK)})`];
  queue.disableNotifications(); // busy now: no kicks needed until we ask again
  try {
    while (queue.pop(chain)) {
      const n = chain.copyFromReadable(mem, 0, scratch.subarray(0, chain.readableBytes));
      const text = decoder.decode(scratch.subarray(0, n));
      const answer = encoder.encode(text.toUpperCase());
      const written = chain.copyToWritable(mem, 0, answer);
      const slot = queue.getState().usedIdx % QUEUE.size;
      queue.push(chain.head, written);
      lines.push(
        `device: popped head ${chain.head} [${describeChain()}] read "${text}"`,
        `        wrote "${decoder.decode(answer)}" (${written} B) -> used.ring[${slot}] = { id ${chain.head}, len ${written} }`,
      );
    }
    const usedIdx = queue.getState().usedIdx;
    const usedEvent = mem.readU16(USED_EVENT);
    const irq = queue.needsInterrupt();
    const rule = `vring_need_event(used_event ${usedEvent}, new ${usedIdx}, old ${lastSignalled}) = ${vringNeedEvent(usedEvent, usedIdx, lastSignalled)}`;
    lastSignalled = usedIdx;
    lines.push(
      `device: used.idx = ${usedIdx} (Atomics.store after the entries); ${rule}`,
      irq
        ? "device: -> interrupt (Atomics.notify on the interrupt word)"
        : "device: -> no interrupt: the driver said it is polling",
    );
    send({ type: "lines", lines });
    if (irq) {
      Atomics.add(bell, Bell.IRQ, 1);
      Atomics.notify(bell, Bell.IRQ);
    }
  } catch (e) {
    if (!(e instanceof VirtqueueError)) throw e;
    send({ type: "lines", lines });
    const fields: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(e)) if (k !== "code" && k !== "scope") fields[k] = v;
    send({ type: "fault", name: e.name, scope: e.scope, code: e.code, fields, message: e.message });
    // A real device would now set DEVICE_NEEDS_RESET and stop this queue: wait to be told to exit.
    while (Atomics.load(bell, Bell.STOP) === 0) Atomics.wait(bell, Bell.STOP, 0);
    break;
  }
}
