// virtio-ts demo: a guest driver (this thread) and a device (a worker thread) share one split
// virtqueue in a SharedArrayBuffer. Then a hostile guest writes a descriptor loop.
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { NO_RING_FEATURES, SplitDriverQueue } from "@virtio-ts/virtqueue";
import { type BatchReport, type FaultReport, IRQ, KICK, MEM_SIZE, QUEUE, STOP } from "./shared.js";

const memBuffer = new SharedArrayBuffer(MEM_SIZE);
const bellBuffer = new SharedArrayBuffer(16);
const mem = new GuestMemoryMap([{ guestBase: 0, size: MEM_SIZE, buffer: memBuffer }]);
const bell = new Int32Array(bellBuffer);
const hex = (n: number) => `0x${n.toString(16)}`;

console.log("virtio-ts demo: one split virtqueue in a SharedArrayBuffer");
console.log(
  `  queue size ${QUEUE.size}; descriptor table ${hex(QUEUE.desc)}, avail ring ${hex(QUEUE.driver)}, used ring ${hex(QUEUE.device)}`,
);
console.log(
  "  guest driver = main thread, device = worker thread, kick/interrupt = Atomics.notify\n",
);

const worker = new Worker(new URL("./device-worker.js", import.meta.url), {
  workerData: { memBuffer, bellBuffer },
});
const messages: (BatchReport | FaultReport)[] = [];
let wake: (() => void) | undefined;
worker.on("message", (m: BatchReport | FaultReport) => {
  messages.push(m);
  wake?.();
});
async function nextMessage(): Promise<BatchReport | FaultReport> {
  while (messages.length === 0) await new Promise<void>((r) => (wake = r));
  return messages.shift()!;
}
function kick(): void {
  Atomics.add(bell, KICK, 1);
  Atomics.notify(bell, KICK);
}

const driver = new SplitDriverQueue<string>(mem, QUEUE, NO_RING_FEATURES);
const words = ["hello", "virtio", "from a guest"];
const enc = new TextEncoder();
const dec = new TextDecoder();
words.forEach((w, i) => {
  const inAddr = 0x10000 + i * 0x100;
  const outAddr = 0x20000 + i * 0x100;
  mem.write(inAddr, enc.encode(w));
  driver.add([{ addr: inAddr, len: w.length }], [{ addr: outAddr, len: 64 }], w);
  console.log(
    `driver: added "${w}": readable ${hex(inAddr)}+${w.length}, writable ${hex(outAddr)}+64`,
  );
});
const irqsBefore = Atomics.load(bell, IRQ);
const needKick = driver.publish();
console.log(
  `driver: published avail.idx=${driver.getState().availIdx}; device asked for a kick: ${needKick}`,
);
if (needKick) kick();

const report = await nextMessage();
if (report.type === "batch") for (const l of report.lines) console.log(l);
await Atomics.waitAsync(bell, IRQ, irqsBefore, 5000).value;
console.log(`driver: interrupt received (${Atomics.load(bell, IRQ) - irqsBefore})`);
for (let t = driver.reap(); t !== undefined; t = driver.reap()) {
  const i = words.indexOf(t);
  const reply = dec.decode(mem.slice(0x20000 + i * 0x100, driver.lastLen));
  console.log(`driver: reaped "${t}" -> ${driver.lastLen} bytes: "${reply}"`);
}

console.log("\nNow a hostile guest writes a descriptor whose next field points to itself:");
const head = 5;
const at = QUEUE.desc + 16 * head;
mem.writeU64(at, 0x10000n);
mem.writeU32(at + 8, 16);
mem.writeU16(at + 12, 1); // VIRTQ_DESC_F_NEXT
mem.writeU16(at + 14, head); // next = itself
const availIdx = mem.readU16(QUEUE.driver + 2);
mem.writeU16(QUEUE.driver + 4 + 2 * (availIdx % QUEUE.size), head);
Atomics.store(new Uint16Array(memBuffer, QUEUE.driver, 2), 1, (availIdx + 1) & 0xffff);
console.log(
  `guest: desc[${head}] = { addr 0x10000, len 16, flags NEXT, next ${head} }; avail.idx=${availIdx + 1}; kick`,
);
kick();
const fault = await nextMessage();
if (fault.type === "fault") {
  console.log(`device: rejected the chain with ${fault.error.name} (code "${fault.error.code}")`);
  console.log(`        fields: ${JSON.stringify(fault.error.fields)}`);
  console.log(
    "        the device would now set DEVICE_NEEDS_RESET (VIRTIO 1.3 §2.1.2); the host loop never hangs.",
  );
} else {
  console.log("unexpected: the device accepted a looping chain");
  process.exitCode = 1;
}
Atomics.store(bell, STOP, 1);
kick();
await Promise.race([once(worker, "exit"), new Promise((r) => setTimeout(r, 1000))]);
await worker.terminate();
console.log("\ndone.");
