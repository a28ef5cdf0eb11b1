// The device side of the demo: runs in its own thread, sleeps on the kick word, processes
// chains (upper-cases the readable text into the writable buffer), and raises interrupts.
import { parentPort, workerData } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import {
  DescriptorChain,
  NO_RING_FEATURES,
  SplitDeviceQueue,
  VirtqueueError,
} from "@virtio-ts/virtqueue";
import { IRQ, KICK, MEM_SIZE, QUEUE, STOP } from "./shared.js";

const { memBuffer, bellBuffer } = workerData as {
  memBuffer: SharedArrayBuffer;
  bellBuffer: SharedArrayBuffer;
};
const mem = new GuestMemoryMap([{ guestBase: 0, size: MEM_SIZE, buffer: memBuffer }]);
const bell = new Int32Array(bellBuffer);
const queue = new SplitDeviceQueue(mem, QUEUE, NO_RING_FEATURES);
const chain = new DescriptorChain(QUEUE.size);
const text = new Uint8Array(256);
const decoder = new TextDecoder();
const hex = (n: number) => `0x${n.toString(16)}`;

let seenKicks = 0;
for (;;) {
  Atomics.wait(bell, KICK, seenKicks); // ioeventfd analogue: sleep until the driver kicks
  seenKicks = Atomics.load(bell, KICK);
  if (Atomics.load(bell, STOP) === 1) break;
  const lines: string[] = [`device: woke up on kick #${seenKicks}`];
  try {
    while (queue.pop(chain)) {
      const segs = [];
      for (let i = 0; i < chain.count; i++) {
        segs.push(`${chain.writable(i) ? "W" : "R"} ${hex(chain.addr(i))}+${chain.len(i)}`);
      }
      const n = chain.copyFromReadable(
        mem,
        0,
        text.subarray(0, Math.min(chain.readableBytes, text.length)),
      );
      const input = decoder.decode(text.subarray(0, n));
      const output = new TextEncoder().encode(input.toUpperCase());
      const written = chain.copyToWritable(mem, 0, output);
      queue.push(chain.head, written);
      lines.push(
        `device: popped head ${chain.head} [${segs.join(", ")}] "${input}" -> wrote ${written} bytes`,
      );
    }
    const irq = queue.needsInterrupt();
    lines.push(`device: used.idx=${queue.getState().usedIdx}; interrupt needed: ${irq}`);
    parentPort!.postMessage({ type: "batch", lines });
    if (irq) {
      Atomics.add(bell, IRQ, 1); // irqfd analogue
      Atomics.notify(bell, IRQ);
    }
  } catch (e) {
    if (!(e instanceof VirtqueueError)) throw e;
    const fields: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(e)) fields[k] = v;
    parentPort!.postMessage({
      type: "fault",
      error: { name: e.name, code: e.code, fields, message: e.message },
    });
    break;
  }
}
