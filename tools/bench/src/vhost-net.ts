// vhost-net: 64 B and 1500 B frames A -> B through a backend-net Switch, NetDriver on both guests,
// with the NetDevice of both NICs in the VMM thread (in-thread) vs in vhost workers (vhost-net:
// rings in the worker, frames crossing to the VMM-side Switch port through SharedArrayBuffer
// channels). Both cases run in the same process, interleaved; the guest drivers run on the main
// thread in both.
//
// "VMM calls/frame": handler invocations on the VMM thread per frame — in-thread, the models'
// onQueueNotify (one per QueueNotify exit) plus the interrupt callbacks; vhost-net, the wake-ups
// of the frame pumps (tx doorbell, rx space doorbell) plus any onQueueNotify / interrupt callback
// reaching the VMM thread. "irqs/frame": used-buffer interrupts raised (both NICs).
import { Switch } from "@virtio-ts/backend-net";
import { type NetBackend, NetDevice } from "@virtio-ts/devices";
import { NetDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import { VhostNetDevice } from "@virtio-ts/vhost";

const SIZES = [64, 1500] as const;
const QUEUE = 256;
/** Frames A may have in flight (sent, not yet received by B). */
const WINDOW = 192;
const MAC_A = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0a);
const MAC_B = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0b);

type Kind = "in-thread" | "vhost-net";

interface Result {
  readonly kind: Kind;
  readonly frames: number;
  readonly ns: number;
  readonly cpuUs: number;
  readonly vmmCalls: number;
  readonly irqs: number;
  readonly kicks: number;
}

interface Guest {
  readonly driver: NetDriver;
  readonly mmio: MmioDevice;
  readonly vhost: VhostNetDevice | undefined;
  /** Interrupt line latched (in-thread) / callbacks on the VMM thread. */
  pending: boolean;
  irqCallbacks: number;
}

function guest(kind: Kind, backend: NetBackend, mac: Uint8Array): Guest {
  const memory = createGuestMemory({ size: 0x800000 });
  const device = { mac, queueSize: QUEUE };
  const vhost = kind === "vhost-net" ? new VhostNetDevice(backend, { device }) : undefined;
  const g = { pending: false, irqCallbacks: 0, vhost } as {
    -readonly [K in keyof Guest]: Guest[K];
  };
  g.mmio = new MmioDevice(vhost ?? new NetDevice(backend, device), {
    memory,
    interrupt: () => {
      g.irqCallbacks++;
      g.pending = true;
      vhost?.call.ring();
    },
  });
  const mmio = g.mmio;
  const transport = new MmioDriverTransport({
    read: (off, size) => mmio.read(off, size),
    write: (off, size, v) => mmio.write(off, size, v),
  });
  g.driver = new NetDriver(transport, memory, new SlabAllocator(0x100000, 2048, 2048), {
    ringBase: 0x10000,
    queueSize: QUEUE,
  });
  return g;
}

/** Run the guest's interrupt handler if its line is up (in-thread latch or vhost call doorbell). */
function service(g: Guest): void {
  const v = g.vhost;
  if (v !== undefined) {
    if (v.call.pending() === 0) return;
    v.call.take();
  } else {
    if (!g.pending) return;
    g.pending = false;
  }
  g.driver.onInterrupt();
}

function frameOf(size: number): Uint8Array {
  const f = new Uint8Array(size);
  f.set(MAC_B, 0);
  f.set(MAC_A, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 18; i < size; i++) f[i] = i & 0xff;
  return f;
}

const setSeq = (f: Uint8Array, s: number) => {
  f[14] = s >>> 24;
  f[15] = (s >>> 16) & 0xff;
  f[16] = (s >>> 8) & 0xff;
  f[17] = s & 0xff;
};
const getSeq = (f: Uint8Array) => ((f[14]! << 24) | (f[15]! << 16) | (f[16]! << 8) | f[17]!) >>> 0;

function vmmCalls(g: Guest): number {
  const v = g.vhost;
  if (v === undefined) return (g.mmio.exitCounts().QueueNotify ?? 0) + g.irqCallbacks;
  return v.pump.txWakeups + v.pump.spaceWakeups + v.stats.vmmNotifies + g.irqCallbacks;
}

function irqs(g: Guest): number {
  return g.vhost === undefined ? g.irqCallbacks : g.vhost.stats.workerInterrupts;
}

async function run(kind: Kind, size: number, n: number): Promise<Result> {
  const sw = new Switch();
  const pa = sw.createPort({ name: "a" });
  const pb = sw.createPort({ name: "b" });
  const a = guest(kind, pa, MAC_A);
  const b = guest(kind, pb, MAC_B);
  const idle = async () => {
    if (kind === "vhost-net") await Promise.race([a.vhost!.call.wait(2), b.vhost!.call.wait(2)]);
    else await new Promise((r) => setImmediate(r));
  };
  try {
    // B speaks first so the switch learns it: the measured frames are known unicast.
    const hello = frameOf(60);
    hello.set(MAC_A, 0);
    hello.set(MAC_B, 6);
    b.driver.trySend(hello);
    while (a.driver.tryReceive() === undefined) {
      service(a);
      service(b);
      if (a.driver.pendingFrames === 0) await idle();
    }
    const warm = Math.floor(n / 5);
    const total = warm + n;
    const frame = frameOf(size);
    let sent = 0;
    let received = 0;
    let t0 = 0n;
    let cpu0 = process.cpuUsage();
    let calls0 = 0;
    let irqs0 = 0;
    let kicks0 = 0;
    const snapshot = () => {
      t0 = process.hrtime.bigint();
      cpu0 = process.cpuUsage();
      calls0 = vmmCalls(a) + vmmCalls(b);
      irqs0 = irqs(a) + irqs(b);
      kicks0 = (a.mmio.exitCounts().QueueNotify ?? 0) + (b.mmio.exitCounts().QueueNotify ?? 0);
    };
    if (warm === 0) snapshot();
    while (received < total) {
      let progress = false;
      while (sent < total && sent - received < WINDOW) {
        setSeq(frame, sent);
        if (!a.driver.trySend(frame)) break;
        sent++;
        progress = true;
      }
      service(b);
      for (let f = b.driver.tryReceive(); f !== undefined; f = b.driver.tryReceive()) {
        if (getSeq(f) !== received || f.length !== size) {
          throw new Error(`${kind}: frame ${received} arrived as ${getSeq(f)} (lost or reordered)`);
        }
        received++;
        progress = true;
        if (received === warm) snapshot();
      }
      service(a);
      if (!progress || kind === "vhost-net") await idle();
    }
    const ns = Number(process.hrtime.bigint() - t0);
    const cpu = process.cpuUsage(cpu0);
    return {
      kind,
      frames: n,
      ns,
      cpuUs: cpu.user + cpu.system,
      vmmCalls: vmmCalls(a) + vmmCalls(b) - calls0,
      irqs: irqs(a) + irqs(b) - irqs0,
      kicks:
        (a.mmio.exitCounts().QueueNotify ?? 0) + (b.mmio.exitCounts().QueueNotify ?? 0) - kicks0,
    };
  } finally {
    await a.vhost?.close();
    await b.vhost?.close();
    pa.close();
    pb.close();
  }
}

const fps = (r: Result) => r.frames / (r.ns / 1e9);

function median(runs: Result[]): Result {
  return [...runs].sort((x, y) => fps(x) - fps(y))[Math.floor(runs.length / 2)]!;
}

/** The vhost-net bench (see the top of this file). */
export async function vhostNetBench(quick: boolean, reps: number): Promise<void> {
  const n = quick ? 20_000 : 100_000;
  console.log(
    `vhost-net: frames A -> Switch -> B, NetDriver on both guests, queue ${QUEUE}, window ${WINDOW}, ` +
      `${n.toLocaleString("en")} frames per run (+20 % warm-up), median of ${reps}`,
  );
  console.log(
    `${"".padEnd(22)}${"frames/s".padStart(11)}${"× in-thread".padStart(13)}` +
      `${"VMM calls/frame".padStart(17)}${"irqs/frame".padStart(12)}${"kicks/frame".padStart(13)}` +
      `${"CPU µs/frame".padStart(14)}`,
  );
  for (const size of SIZES) {
    const kinds: Kind[] = ["in-thread", "vhost-net"];
    for (const k of kinds) await run(k, size, Math.floor(n / 10)); // warm-up (JIT)
    const runs = new Map<Kind, Result[]>(kinds.map((k) => [k, []]));
    for (let r = 0; r < reps; r++) for (const k of kinds) runs.get(k)!.push(await run(k, size, n));
    const base = median(runs.get("in-thread")!);
    for (const k of kinds) {
      const m = median(runs.get(k)!);
      console.log(
        `${`${size} B ${k}`.padEnd(22)}${Math.round(fps(m)).toLocaleString("en").padStart(11)}` +
          `${(fps(m) / fps(base)).toFixed(2).padStart(13)}` +
          `${(m.vmmCalls / m.frames).toFixed(3).padStart(17)}` +
          `${(m.irqs / m.frames).toFixed(3).padStart(12)}` +
          `${(m.kicks / m.frames).toFixed(3).padStart(13)}` +
          `${(m.cpuUs / m.frames).toFixed(2).padStart(14)}`,
      );
    }
  }
}
