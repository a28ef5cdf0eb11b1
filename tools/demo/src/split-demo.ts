// virtio-ts demo, part 2: a guest driver (this thread) and a device (a worker thread) share one split
// virtqueue in a SharedArrayBuffer and print every step; then a hostile guest writes a
// descriptor loop straight into memory and the device rejects it with a typed error.
//
// The two threads only talk through guest memory and two doorbell words. The device's
// messages below exist only so this thread can print them in order.
import { Worker } from "node:worker_threads";
import { createGuestMemory } from "@virtio-ts/memory";
import { SplitDescFlags, vringNeedEvent } from "@virtio-ts/spec";
import { SplitDriverQueue } from "@virtio-ts/virtqueue";
import {
  AVAIL_EVENT,
  Bell,
  type DeviceReport,
  type FaultReport,
  FEATURES,
  hex,
  MEM_SIZE,
  QUEUE,
  USED_EVENT,
} from "./shared.js";

/**
 * The split-ring walkthrough: a guest driver on this thread and a device on a worker thread
 * exchange buffers over one split virtqueue in a SharedArrayBuffer, printing every step; then a
 * hostile guest writes a descriptor loop and the device rejects it with a typed error.
 */
export async function runSplitDemo(): Promise<void> {
  const mem = createGuestMemory({ size: MEM_SIZE, shared: true });
  const memBuffer = mem.regions[0]!.buffer;
  const bell = new Int32Array(new SharedArrayBuffer(Bell.COUNT * 4));
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const IN = 0x4000; // request text, device-readable
  const OUT = 0x6000; // answers, device-writable
  const SLOT = 0x100;

  function heading(text: string): void {
    console.log(`\n== ${text} ${"=".repeat(Math.max(0, 76 - text.length))}`);
  }

  function flagNames(flags: number): string {
    const names: string[] = [];
    if (flags & SplitDescFlags.NEXT) names.push("NEXT");
    if (flags & SplitDescFlags.WRITE) names.push("WRITE");
    if (flags & SplitDescFlags.INDIRECT) names.push("INDIRECT");
    return names.length > 0 ? names.join("|") : "0";
  }

  /** A descriptor as it sits in guest memory (16 bytes: le64 addr, le32 len, le16 flags, le16 next). */
  function showDesc(i: number): string {
    const at = QUEUE.desc + 16 * i;
    const flags = mem.readU16(at + 12);
    const next = flags & SplitDescFlags.NEXT ? `, next ${mem.readU16(at + 14)}` : "";
    const who = flags & SplitDescFlags.WRITE ? "device writes" : "device reads";
    return `desc[${i}] @${hex(at)} = { addr ${hex(Number(mem.readU64(at)))}, len ${mem.readU32(at + 8)}, flags ${flagNames(flags)}${next} }  (${who})`;
  }

  // ---- the device thread, and the way its reports reach the console in order -------------
  const worker = new Worker(new URL("./device-worker.js", import.meta.url), {
    workerData: { memBuffer, bellBuffer: bell.buffer },
  });
  const inbox: DeviceReport[] = [];
  let wake: (() => void) | undefined;
  worker.on("message", (m: DeviceReport) => {
    inbox.push(m);
    wake?.();
  });
  worker.on("error", (e) => {
    console.error("device thread failed:", e);
    process.exit(1);
  });

  /** Print the device's lines until it reports `until` (idle or fault); return that report. */
  async function deviceSays<K extends "idle" | "fault">(
    until: K,
  ): Promise<Extract<DeviceReport, { type: K }>> {
    for (;;) {
      while (inbox.length === 0) await new Promise<void>((r) => (wake = r));
      const m = inbox.shift()!;
      if (m.type === "lines") for (const l of m.lines) console.log(l);
      else if (m.type === "idle") console.log(m.line);
      if (m.type === until) return m as Extract<DeviceReport, { type: K }>;
      if (m.type === "fault") throw new Error(`unexpected fault: ${m.message}`);
    }
  }

  function kick(who: "driver" | "guest"): void {
    Atomics.add(bell, Bell.KICK, 1);
    Atomics.notify(bell, Bell.KICK);
    console.log(`${who}: kick (Atomics.add + Atomics.notify on the kick word)`);
  }

  async function interrupt(seen: number): Promise<void> {
    const r = await Atomics.waitAsync(bell, Bell.IRQ, seen, 2000).value;
    if (r === "timed-out") throw new Error("no interrupt arrived");
    console.log(`driver: interrupt received (interrupt counter ${Atomics.load(bell, Bell.IRQ)})`);
  }

  // ---- the guest driver -------------------------------------------------------------------
  const driver = new SplitDriverQueue<string>(mem, QUEUE, FEATURES);
  let slot = 0;

  /** Add one request: its text (device-readable) and a 32-byte answer buffer (device-writable). */
  function post(text: string): void {
    const inAddr = IN + slot * SLOT;
    const outAddr = OUT + slot * SLOT;
    slot++;
    mem.write(inAddr, encoder.encode(text));
    const availSlot = driver.getState().availIdx % QUEUE.size;
    driver.add([{ addr: inAddr, len: text.length }], [{ addr: outAddr, len: 32 }], text);
    const head = mem.readU16(QUEUE.driver + 4 + 2 * availSlot);
    const second = mem.readU16(QUEUE.desc + 16 * head + 14);
    console.log(`driver: add "${text}": text at ${hex(inAddr)}, answer buffer at ${hex(outAddr)}`);
    console.log(`        ${showDesc(head)}`);
    console.log(`        ${showDesc(second)}`);
    console.log(`        avail.ring[${availSlot}] = ${head} (the chain's head)`);
  }

  function publish(): boolean {
    const old = mem.readU16(QUEUE.driver + 2);
    const event = mem.readU16(AVAIL_EVENT);
    const needKick = driver.publish();
    const now = driver.getState().availIdx;
    console.log(
      `driver: publish: avail.idx ${old} -> ${now} (Atomics.store, after the descriptors and ring entries)`,
    );
    console.log(
      `        avail_event = ${event}: vring_need_event(${event}, new ${now}, old ${old}) = ${vringNeedEvent(event, now, old)} -> ${needKick ? "kick needed" : "no kick needed"}`,
    );
    return needKick;
  }

  const posted = ["hello", "virtio", "from a guest", "ring", "buffers"];

  function reapAll(): void {
    for (let text = driver.reap(); text !== undefined; text = driver.reap()) {
      const i = posted.indexOf(text);
      const answer = decoder.decode(mem.slice(OUT + i * SLOT, driver.lastLen));
      console.log(
        `driver: reaped token "${text}": the device wrote ${driver.lastLen} B: "${answer}"`,
      );
    }
  }

  // ---- the script -------------------------------------------------------------------------
  console.log(
    "virtio-ts demo, part 2: one split virtqueue (VIRTIO 1.3 §2.7) in a SharedArrayBuffer",
  );
  console.log(`  guest memory: ${MEM_SIZE / 1024} KiB SharedArrayBuffer, shared by both threads`);
  console.log(
    `  queue size ${QUEUE.size}: descriptor table ${hex(QUEUE.desc)}, available ring ${hex(QUEUE.driver)}, used ring ${hex(QUEUE.device)}`,
  );
  console.log(
    "  negotiated VIRTIO_F_EVENT_IDX: each side publishes the index at which it wants to be told (§2.7.10)",
  );
  console.log(
    "  guest driver = main thread, device = worker thread; kick and interrupt = Atomics.notify on shared words",
  );
  await deviceSays("idle");

  heading("round 1: three requests, one kick, one interrupt");
  for (const t of posted.slice(0, 3)) post(t);
  let irqSeen = Atomics.load(bell, Bell.IRQ);
  if (publish()) kick("driver");
  await deviceSays("idle");
  await interrupt(irqSeen);
  reapAll();

  heading("round 2: the driver polls, and one kick covers two publishes");
  driver.disableInterrupts();
  console.log(
    `driver: interrupts off while it polls: used_event = ${mem.readU16(USED_EVENT)} (one behind what it reaped)`,
  );
  post(posted[3]!);
  const kickA = publish();
  console.log("driver: (rings the doorbell after the next publish)");
  post(posted[4]!);
  const kickB = publish();
  console.log(
    "        the device has not read past the index it asked for yet, so the kick still to come covers both",
  );
  irqSeen = Atomics.load(bell, Bell.IRQ);
  if (kickA || kickB) kick("driver");
  await deviceSays("idle");
  console.log(
    `driver: polling the used ring (interrupt counter still ${Atomics.load(bell, Bell.IRQ)}, was ${irqSeen})`,
  );
  reapAll();
  driver.enableInterrupts();
  console.log(`driver: interrupts on again: used_event = ${mem.readU16(USED_EVENT)}`);

  heading("a hostile guest writes a descriptor loop");
  const head = 7;
  const at = QUEUE.desc + 16 * head;
  mem.writeU64(at, BigInt(IN));
  mem.writeU32(at + 8, 16);
  mem.writeU16(at + 12, SplitDescFlags.NEXT);
  mem.writeU16(at + 14, head); // next = itself
  const availIdx = mem.readU16(QUEUE.driver + 2);
  mem.writeU16(QUEUE.driver + 4 + 2 * (availIdx % QUEUE.size), head);
  mem.writeU16(QUEUE.driver + 2, (availIdx + 1) & 0xffff);
  console.log("guest: bypasses the driver and writes raw ring memory:");
  console.log(`        ${showDesc(head)}  <- next points to itself`);
  console.log(
    `        avail.ring[${availIdx % QUEUE.size}] = ${head}; avail.idx ${availIdx} -> ${(availIdx + 1) & 0xffff}`,
  );
  kick("guest");
  const fault: FaultReport = await deviceSays("fault");
  console.log(
    `device: pop() threw ${fault.name} (a ${fault.scope === "chain" ? "ChainError" : "RingError"})`,
  );
  console.log(`        code:    "${fault.code}"`);
  console.log(`        fields:  ${JSON.stringify(fault.fields)}`);
  console.log(`        message: ${fault.message}`);
  console.log(
    "device: the chain walk marks every descriptor it visits, so the second visit to desc[7] ends it:",
  );
  console.log(
    "        no hang, no allocation. The device now sets DEVICE_NEEDS_RESET in its status and stops",
  );
  console.log("        using the queue until the driver resets the device (VIRTIO 1.3 §2.1.2).");

  Atomics.store(bell, Bell.STOP, 1);
  Atomics.notify(bell, Bell.STOP);
  Atomics.notify(bell, Bell.KICK);
  await worker.terminate();
  console.log("\ndone.");
}
