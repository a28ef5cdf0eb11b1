// virtio-net frames per second through the whole stack, in one thread: NetDriver (guest A) ->
// MmioDriverTransport -> MmioDevice -> NetDevice tx -> backend-net Switch -> NetDevice rx (guest
// B) -> NetDriver receive, beside the same frames moved without virtio in the same run: through
// the Switch with only the virtio path's copies in and out of shared guest memory (the device's,
// and with the drivers' too: the floors this design cannot go under), through the bare Switch,
// through a bare VethPair, and through a MessageChannel (postMessage of the Uint8Array, which
// structured-clones, i.e. copies, the bytes).
import { MessageChannel } from "node:worker_threads";
import { Switch, VethPair } from "@virtio-ts/backend-net";
import { type NetBackend, NetDevice } from "@virtio-ts/devices";
import { NetDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { Feature, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio, type MmioDevice } from "@virtio-ts/transport";

/** Frame sizes measured (bytes, Ethernet header included, no FCS). */
export const NET_FRAME_SIZES = [64, 1500] as const;
/** Frames the driver posts before it services interrupts (it stops earlier when the ring is full). */
export const NET_BATCH = 64;
/** Queue size of every virtio-net queue in the bench. */
export const NET_QUEUE = 256;
/** Frames per postMessage window: the sender waits for the window to arrive before the next. */
export const NET_MC_WINDOW = 1024;

const MAC_A = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0a);
const MAC_B = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0b);

/** One measured run. */
export interface NetRun {
  /** Frames timed (all received and checked). */
  readonly frames: number;
  /** Bytes of those frames. */
  readonly bytes: number;
  /** Nanoseconds they took. */
  readonly ns: number;
  /** MMIO exits of both NICs during the timed part (0 without virtio). */
  readonly exits: number;
  /** Interrupts both guests took during the timed part (0 without virtio). */
  readonly irqs: number;
}

/** The paths the bench measures, in the order it prints them. */
const NET_PATHS = ["virtio", "copies", "deviceCopies", "switch", "veth", "channel"] as const;
/** A path the bench measures. */
export type NetPath = (typeof NET_PATHS)[number];

/** A frame from A to B with EtherType 0x88b5 (local experimental); bytes 14..17 carry `seq`. */
function makeFrame(size: number): Uint8Array {
  const f = new Uint8Array(size);
  f.set(MAC_B, 0);
  f.set(MAC_A, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 18; i < size; i++) f[i] = i & 0xff;
  return f;
}

const setSeq = (f: Uint8Array, seq: number) => {
  f[14] = seq >>> 24;
  f[15] = (seq >>> 16) & 0xff;
  f[16] = (seq >>> 8) & 0xff;
  f[17] = seq & 0xff;
};
const getSeq = (f: Uint8Array) => ((f[14]! << 24) | (f[15]! << 16) | (f[16]! << 8) | f[17]!) >>> 0;

/** A guest whose interrupt line only latches; the bench loop runs the handler between batches. */
interface BenchGuest {
  readonly driver: NetDriver;
  readonly mmio: MmioDevice;
  /** The in-thread wiring; its line is polled (`take`), not delivered. */
  readonly vm: InThreadMmio;
  /** Interrupt handler runs. */
  readonly irqs: number;
}

function guest(backend: NetBackend, mac: Uint8Array): BenchGuest {
  const memory = createGuestMemory({ size: 0x400000 });
  const model = new NetDevice(backend, { mac, queueSize: NET_QUEUE });
  const vm = new InThreadMmio(model, { memory, delivery: "none" });
  const driver = new NetDriver(vm.transport, memory, new SlabAllocator(0x100000, 2048, 1024), {
    ringBase: 0x10000,
    queueSize: NET_QUEUE,
  });
  vm.line.handler = () => driver.onInterrupt();
  return {
    driver,
    mmio: vm.device,
    vm,
    get irqs() {
      return vm.line.taken;
    },
  };
}

/** Run the interrupt handler if the line is up (level-triggered: one run per raise). */
function service(g: BenchGuest): void {
  g.vm.line.take();
}

function fail(path: NetPath, got: number, want: number): never {
  throw new Error(`${path}: frame ${want} arrived as ${got} (lost or reordered)`);
}

/**
 * A -> B through virtio-net on both sides and the switch between them, one thread: A posts up to
 * {@link NET_BATCH} frames with one `trySendBatch` (one kick at most; the device transmits
 * inside the exit, the switch forwards, B's device copies into B's receive buffers), then B's and
 * A's interrupt handlers run if their lines are up, and B takes every received frame with
 * `tryReceiveView` (lent, checked in place, no copy).
 */
export function runVirtio(
  size: number,
  n: number,
  warm: number,
  hooks: { onWarm?: () => void; onDone?: () => void } = {},
): NetRun {
  const sw = new Switch();
  const a = guest(sw.createPort({ name: "a" }), MAC_A);
  const b = guest(sw.createPort({ name: "b" }), MAC_B);
  // B speaks once so the switch learns it: the measured frames are known unicast, not floods.
  const hello = makeFrame(60);
  hello.set(MAC_A, 0);
  hello.set(MAC_B, 6);
  b.driver.trySend(hello);
  service(a);
  while (a.driver.tryReceive() !== undefined);
  service(b);
  if (!hasFeature(a.driver.features, Feature.RING_PACKED)) {
    throw new Error(
      "virtio: expected the packed ring to be negotiated (the bench's label says so)",
    );
  }
  // One frame array per batch position: trySendBatch copies them all at once.
  const batch = Array.from({ length: NET_BATCH }, () => makeFrame(size));
  const total = warm + n;
  let sent = 0;
  let received = 0;
  let bytes = 0;
  let t0 = 0n;
  let exits0 = 0;
  let irqs0 = 0;
  let idle = 0;
  if (warm === 0) t0 = process.hrtime.bigint();
  while (received < total) {
    const want = Math.min(NET_BATCH, total - sent);
    for (let i = 0; i < want; i++) setSeq(batch[i]!, sent + i);
    const k = want > 0 ? a.driver.trySendBatch(batch, 0, want) : 0;
    sent += k;
    service(b);
    let got = 0;
    for (let f = b.driver.tryReceiveView(); f !== undefined; f = b.driver.tryReceiveView()) {
      const seq = getSeq(f);
      if (seq !== received || f.length !== size) fail("virtio", seq, received);
      received++;
      got++;
      if (received > warm) bytes += f.length;
      else if (received === warm) {
        hooks.onWarm?.();
        t0 = process.hrtime.bigint();
        exits0 = a.mmio.exits + b.mmio.exits;
        irqs0 = a.irqs + b.irqs;
      }
    }
    service(a);
    if (k === 0 && got === 0) {
      // Nothing moved: reap by polling, as a driver with interrupts off would; give up if stuck.
      a.driver.poll();
      b.driver.poll();
      if (++idle > 1000) throw new Error(`virtio: stuck after ${received} of ${total} frames`);
    } else {
      idle = 0;
    }
  }
  const ns = Number(process.hrtime.bigint() - t0);
  hooks.onDone?.();
  return {
    frames: n,
    bytes,
    ns,
    exits: a.mmio.exits + b.mmio.exits - exits0,
    irqs: a.irqs + b.irqs - irqs0,
  };
}

/** Two ports of a fresh Switch that has learned B's MAC on `rx`: frames to B are known unicast. */
function learnedSwitch(): { tx: NetBackend; rx: NetBackend } {
  const sw = new Switch();
  const tx = sw.createPort();
  const rx = sw.createPort();
  const hello = makeFrame(60);
  hello.set(MAC_A, 0);
  hello.set(MAC_B, 6);
  rx.transmit(hello);
  return { tx, rx };
}

/**
 * A -> B without virtio: `transmit` on one end, and a sink on the other that checks the
 * sequence number and copies the frame into a receive buffer, as a device copies into guest
 * memory.
 */
function runBackend(path: "switch" | "veth", size: number, n: number, warm: number): NetRun {
  let tx: NetBackend;
  let rx: NetBackend;
  if (path === "switch") ({ tx, rx } = learnedSwitch());
  else {
    const pair = new VethPair();
    tx = pair.a;
    rx = pair.b;
  }
  const buffer = new Uint8Array(2048);
  let received = 0;
  rx.attach({
    deliver(f) {
      const seq = getSeq(f);
      if (seq !== received) fail(path, seq, received);
      buffer.set(f);
      received++;
      return true;
    },
  });
  const frame = makeFrame(size);
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < warm + n; i++) {
    if (i === warm) t0 = process.hrtime.bigint();
    setSeq(frame, i);
    tx.transmit(frame);
  }
  const ns = Number(process.hrtime.bigint() - t0);
  if (received !== warm + n) fail(path, received, warm + n);
  return { frames: n, bytes: n * size, ns, exits: 0, irqs: 0 };
}

/** Bytes of a guest-memory slot on the `copies` paths (the bench's slab slot size). */
const COPY_SLOT = 2048;

/**
 * The copies a virtio-net path cannot avoid, and its switch, without rings, drivers or devices:
 * what moving a frame from guest A to guest B costs in V8 before any virtio work. Per frame, at
 * the virtio path's alignments (header 4 bytes into a slot, frame 8-aligned) and footprints
 * (A's slots reused per batch, B's cycling through a queue's worth): a device reads the
 * header's flags and gso_type from A's shared memory and transmits the frame into a bare
 * Switch as a view of A's memory (made per frame, as `NetDevice` does: a frame's address
 * varies); B's port copies the frame and a header into B's shared memory; the
 * sequence number is checked. With `driver`, also what the drivers do: A's driver copies a
 * header and the frame into A's memory first, and B's driver lends the frame where it lies (a
 * view of B's memory, made per frame), where the check reads it. Every copy is
 * `Uint8Array#set`, with a view where a range is needed, as any JavaScript code must.
 */
function runCopies(driver: boolean, size: number, n: number, warm: number): NetRun {
  const path: NetPath = driver ? "copies" : "deviceCopies";
  const { tx, rx } = learnedSwitch();
  const memA = new Uint8Array(new SharedArrayBuffer(NET_BATCH * COPY_SLOT));
  const memB = new Uint8Array(new SharedArrayBuffer(NET_QUEUE * COPY_SLOT));
  const hdr = new Uint8Array(12);
  let flags = 0;
  let received = 0;
  let slotB = 0;
  rx.attach({
    deliver(f) {
      const at = slotB * COPY_SLOT;
      slotB = slotB + 1 === NET_QUEUE ? 0 : slotB + 1;
      memB.set(hdr, at + 4);
      memB.set(f, at + 16);
      let seq = getSeq(f);
      if (driver) seq = getSeq(memB.subarray(at + 16, at + 16 + f.length));
      if (seq !== received) fail(path, seq, received);
      received++;
      return true;
    },
  });
  const frame = makeFrame(size);
  // Without the driver's copy, each slot holds the frame as a guest left it (views made once,
  // the sequence number set in place).
  const slotsA = Array.from({ length: NET_BATCH }, (_, k) => {
    const v = memA.subarray(k * COPY_SLOT + 16, k * COPY_SLOT + 16 + size);
    v.set(frame);
    return v;
  });
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < warm + n; i++) {
    if (i === warm) t0 = process.hrtime.bigint();
    const k = i % NET_BATCH;
    const at = k * COPY_SLOT;
    if (driver) {
      setSeq(frame, i);
      memA.set(hdr, at + 4);
      memA.set(frame, at + 16);
    } else setSeq(slotsA[k]!, i);
    flags |= memA[at + 4]! | memA[at + 5]!; // flags, gso_type
    tx.transmit(memA.subarray(at + 16, at + 16 + size));
  }
  const ns = Number(process.hrtime.bigint() - t0);
  if (received !== warm + n) fail(path, received, warm + n);
  if (flags !== 0) throw new Error(`${path}: a header's flags or gso_type read non-zero`);
  return { frames: n, bytes: n * size, ns, exits: 0, irqs: 0 };
}

/**
 * A -> B through a MessageChannel in this thread: `port1.postMessage(frame)` (structured clone:
 * a copy of the bytes) in windows of {@link NET_MC_WINDOW}; the sender waits until port2's
 * listener has had the whole window, then posts the next.
 */
async function runChannel(size: number, n: number, warm: number): Promise<NetRun> {
  const { port1, port2 } = new MessageChannel();
  let received = 0;
  let target = 0;
  let wake: (() => void) | undefined;
  let t0 = 0n;
  port2.on("message", (f: Uint8Array) => {
    const seq = getSeq(f);
    if (seq !== received) fail("channel", seq, received);
    received++;
    if (received === warm) t0 = process.hrtime.bigint();
    if (received === target) wake?.();
  });
  const frame = makeFrame(size);
  const total = warm + n;
  if (warm === 0) t0 = process.hrtime.bigint();
  let sent = 0;
  while (sent < total) {
    target = Math.min(total, sent + NET_MC_WINDOW);
    const arrived = new Promise<void>((r) => {
      wake = r;
    });
    while (sent < target) {
      setSeq(frame, sent++);
      port1.postMessage(frame);
    }
    await arrived;
  }
  const ns = Number(process.hrtime.bigint() - t0);
  port1.close();
  port2.close();
  return { frames: n, bytes: n * size, ns, exits: 0, irqs: 0 };
}

const perSecond = (r: NetRun) => r.frames / (r.ns / 1e9);
const gbits = (r: NetRun) => (r.bytes * 8) / r.ns;

function median(runs: NetRun[]): NetRun {
  const sorted = [...runs].sort((x, y) => perSecond(x) - perSecond(y));
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** One printed row: a frame size and a path with its median run. */
export interface NetBenchRow {
  /** Frame size in bytes. */
  readonly size: number;
  /** The path. */
  readonly path: NetPath;
  /** Its median run. */
  readonly run: NetRun;
}

const LABEL: Record<NetPath, string> = {
  virtio: "virtio-net A -> switch -> B",
  copies: "Switch + 2 frame copies",
  deviceCopies: "Switch + device's copy",
  switch: "Switch only (no virtio)",
  veth: "VethPair only (no virtio)",
  channel: "MessageChannel postMessage",
};

/**
 * The `net` bench: frames/s and Gbit/s of 64 B and 1500 B frames from NIC A to NIC B through
 * the switch, beside the baselines measured in the same run (the paths alternate within
 * each repetition), median of `reps` by frames/s.
 * @param quick - a tenth of the frames
 * @param reps - runs per path and size
 * @returns the rows it printed
 */
export async function netBench(quick: boolean, reps: number): Promise<NetBenchRow[]> {
  const frames = (size: number) => (quick ? 0.1 : 1) * (size <= 64 ? 200_000 : 100_000);
  console.log(
    `virtio-net frames A -> B, one thread: NetDriver.trySendBatch -> MMIO -> NetDevice tx -> Switch -> ` +
      `NetDevice rx -> NetDriver.tryReceiveView (queue ${NET_QUEUE}, packed ring and EVENT_IDX negotiated, batches of up ` +
      `to ${NET_BATCH} frames between interrupt handler runs), vs the same frames through the Switch with only the copies of the virtio path ` +
      `(header fields read, the frame passed as a view of A's shared memory and copied into B's, no rings), a bare Switch, ` +
      `a bare VethPair (sink copies each frame into a buffer) and a MessageChannel (postMessage of the ` +
      `Uint8Array: a structured-clone copy; windows of ${NET_MC_WINDOW}); Gbit/s counts frame bytes; ` +
      `first fifth warm-up; median of ${reps}`,
  );
  const rows: NetBenchRow[] = [];
  // Warm every path's code at both sizes first, so the first measured case is not also the
  // one that pays for compilation.
  for (const size of NET_FRAME_SIZES) {
    runVirtio(size, 20_000, 0);
    runCopies(true, size, 20_000, 0);
    runCopies(false, size, 20_000, 0);
    runBackend("switch", size, 20_000, 0);
    runBackend("veth", size, 20_000, 0);
    await runChannel(size, 20_000, 0);
  }
  for (const size of NET_FRAME_SIZES) {
    const n = frames(size);
    const warm = Math.floor(n / 5);
    const runs = {} as Record<NetPath, NetRun[]>;
    for (const p of NET_PATHS) runs[p] = [];
    for (let i = 0; i < reps; i++) {
      runs.virtio.push(runVirtio(size, n, warm));
      runs.copies.push(runCopies(true, size, n, warm));
      runs.deviceCopies.push(runCopies(false, size, n, warm));
      runs.switch.push(runBackend("switch", size, n, warm));
      runs.veth.push(runBackend("veth", size, n, warm));
      runs.channel.push(await runChannel(size, n, warm));
    }
    for (const path of NET_PATHS) {
      rows.push({ size, path, run: median(runs[path]) });
    }
  }
  const cell = (s: string, w: number, left = false) => (left ? s.padEnd(w) : s.padStart(w));
  console.log(
    `${cell("", 6, true)}  ${cell("path", 28, true)}  ${cell("frames/s", 10)}  ${cell("Gbit/s", 7)}  ` +
      `${cell("virtio/this", 11)}  ${cell("exits/frame", 11)}  ${cell("irqs/frame", 10)}`,
  );
  for (const row of rows) {
    const v = rows.find((r) => r.size === row.size && r.path === "virtio")!.run;
    const r = row.run;
    const virtio = row.path === "virtio";
    console.log(
      `${cell(`${row.size} B`, 6, true)}  ${cell(LABEL[row.path], 28, true)}  ` +
        `${cell(`${(perSecond(r) / 1e6).toFixed(3)} M`, 10)}  ${cell(gbits(r).toFixed(2), 7)}  ` +
        `${cell((perSecond(v) / perSecond(r)).toFixed(3), 11)}  ` +
        `${cell(virtio ? (r.exits / r.frames).toFixed(2) : "-", 11)}  ` +
        `${cell(virtio ? (r.irqs / r.frames).toFixed(3) : "-", 10)}`,
    );
  }
  // What the copies alone leave: a path that makes them can reach at most this share of the
  // bare Switch's frame rate, with rings, drivers and devices free.
  for (const size of NET_FRAME_SIZES) {
    const rate = (path: NetPath) =>
      perSecond(rows.find((r) => r.size === size && r.path === path)!.run);
    const sw = rate("switch");
    console.log(
      `${size} B: of the bare Switch's rate, the device's one copy alone leaves ` +
        `${(rate("deviceCopies") / sw).toFixed(3)}, the two frame copies ${(rate("copies") / sw).toFixed(3)}; ` +
        `virtio-net reaches ${(rate("virtio") / sw).toFixed(3)}`,
    );
  }
  return rows;
}
