// vhost-net end to end: NetDriver (this thread, the "guest") → MmioDevice hosting a
// VhostNetDevice (this thread, the "VMM", with the Switch port and the frame pump) → NetDevice in
// a worker thread over shared guest memory, frames crossing in SharedArrayBuffer channels. The
// worker runs the built JavaScript (packages/*/dist), so this file builds the package first.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Switch, type SwitchPort } from "@virtio-ts/backend-net";
import { NetDevice } from "@virtio-ts/devices";
import { NetDriver, type NetDriverOptions, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceStatus, Feature, hasFeature, NetStatus } from "@virtio-ts/spec";
import { MmioDevice, MmioDriverTransport, RateLimitedLog } from "@virtio-ts/transport";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { FrameChannel, VhostNetDevice } from "../src/index.js";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const WORKER = new URL("../dist/vhost-worker.js", import.meta.url);
const NET = new URL("../dist/net.js", import.meta.url);
const CRASH = new URL("./fixtures/crash-net.mjs", import.meta.url);

function buildDist(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  try {
    execFileSync(process.execPath, [tsc, "-b", packageDir], { stdio: "pipe" });
  } catch (e) {
    const out = String((e as { stdout?: unknown }).stdout ?? "");
    if (!existsSync(fileURLToPath(NET))) throw new Error(`cannot build packages/vhost:\n${out}`);
    console.warn(`tsc -b packages/vhost failed; running the existing dist.\n${out}`);
  }
}

const open: { close(): Promise<void> | void }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Block this thread (no event-loop turn: the VMM-side pump cannot run) until `cond` holds. */
function blockUntil(cond: () => boolean, ms = 10_000): void {
  const w = new Int32Array(new SharedArrayBuffer(4));
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not reached in time (blocking)");
    Atomics.wait(w, 0, 0, 1);
  }
}

const MAC_A = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0a);
const MAC_B = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0b);
const BCAST = new Uint8Array(6).fill(0xff);
const IP_A = [10, 0, 0, 1];
const IP_B = [10, 0, 0, 2];

interface Nic {
  readonly kind: "vhost" | "thread";
  readonly port: SwitchPort;
  readonly mmio: MmioDevice;
  readonly vhost: VhostNetDevice | undefined;
  readonly model: NetDevice | undefined;
  readonly driver: NetDriver;
  /** The guest resets the device and sets it up again. */
  reinit(): void;
}

interface NicOptions {
  readonly slots?: number;
  readonly packed?: boolean;
  readonly driver?: Partial<NetDriverOptions>;
  readonly crash?: boolean;
  readonly queueFrames?: number;
}

function nic(sw: Switch, kind: "vhost" | "thread", mac: Uint8Array, o: NicOptions = {}): Nic {
  const port = sw.createPort({ name: kind, queueFrames: o.queueFrames ?? 256 });
  const memory = createGuestMemory({ size: 0x800000 });
  const device = { mac, queueSize: 64, ctrlQueueSize: 16 };
  const log = new RateLimitedLog({ sink: () => {} });
  let vhost: VhostNetDevice | undefined;
  let model: NetDevice | undefined;
  let driver: NetDriver | undefined;
  let mmio: MmioDevice;
  if (kind === "vhost") {
    const v = new VhostNetDevice(port, {
      device,
      channelSlots: o.slots ?? 64,
      script: WORKER,
      module: NET,
      requestTimeoutMs: 5000,
      ...(o.crash === true ? { module: CRASH } : {}),
    });
    vhost = v;
    mmio = new MmioDevice(v, { memory, interrupt: () => v.call.ring(), log });
  } else {
    model = new NetDevice(port, device);
    // Level-triggered line: run the handler once per event-loop turn, never inside device code.
    let pending = false;
    mmio = new MmioDevice(model, {
      memory,
      log,
      interrupt: () => {
        if (pending) return;
        pending = true;
        setImmediate(() => {
          pending = false;
          driver?.onInterrupt();
        });
      },
    });
  }
  const transport = new MmioDriverTransport({
    read: (off, size) => mmio.read(off, size),
    write: (off, size, v) => mmio.write(off, size, v),
  });
  const newDriver = () =>
    new NetDriver(transport, memory, new SlabAllocator(0x100000, 2048, 512), {
      ringBase: 0x10000,
      queueSize: 64,
      packed: o.packed ?? true,
      ...o.driver,
    });
  driver = newDriver();
  let running = true;
  // The guest's interrupt handler for the vhost NIC: sleep on the call doorbell (irqfd).
  const pump =
    vhost === undefined
      ? Promise.resolve()
      : (async () => {
          while (running) {
            await vhost.call.wait(20);
            vhost.call.take();
            driver?.onInterrupt();
          }
        })();
  open.push({
    close: async () => {
      running = false;
      await pump;
      await vhost?.close();
      port.close();
    },
  });
  return {
    kind,
    port,
    mmio,
    vhost,
    model,
    get driver() {
      return driver!;
    },
    reinit() {
      driver = newDriver();
    },
  };
}

function vhostNic(sw: Switch, mac: Uint8Array, o: NicOptions = {}): Nic {
  return nic(sw, "vhost", mac, o);
}

/** Internet checksum (RFC 1071) of `b[from, to)`. */
function inetChecksum(b: Uint8Array, from: number, to: number): number {
  let s = 0;
  for (let i = from; i < to; i += 2) s += (b[i]! << 8) | (i + 1 < to ? b[i + 1]! : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

function arp(
  op: 1 | 2,
  sha: Uint8Array,
  spa: number[],
  tha: Uint8Array,
  tpa: number[],
): Uint8Array {
  const f = new Uint8Array(42);
  f.set(op === 1 ? BCAST : tha, 0);
  f.set(sha, 6);
  f.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, op], 12);
  f.set(sha, 22);
  f.set(spa, 28);
  f.set(op === 1 ? new Uint8Array(6) : tha, 32);
  f.set(tpa, 38);
  return f;
}

/** An ICMP echo (request 8 / reply 0) with 56 bytes of payload; `icmpSum` false leaves it 0. */
function icmpEcho(
  type: 0 | 8,
  dst: Uint8Array,
  src: Uint8Array,
  ipSrc: number[],
  ipDst: number[],
  seq: number,
  icmpSum = true,
): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + 56);
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x08, 0x00], 12);
  const ipLen = 20 + 8 + 56;
  f.set([0x45, 0, ipLen >> 8, ipLen & 0xff, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0], 14);
  f.set(ipSrc, 26);
  f.set(ipDst, 30);
  const ipSum = inetChecksum(f, 14, 34);
  f[24] = ipSum >> 8;
  f[25] = ipSum & 0xff;
  f.set([type, 0, 0, 0, 0x42, 0x42, seq >> 8, seq & 0xff], 34);
  for (let i = 0; i < 56; i++) f[42 + i] = (i * 7 + seq) & 0xff;
  if (icmpSum) {
    const s = inetChecksum(f, 34, f.length);
    f[36] = s >> 8;
    f[37] = s & 0xff;
  }
  return f;
}

async function receive(n: Nic, ms = 10_000): Promise<Uint8Array> {
  let f: Uint8Array | undefined;
  await until(() => {
    f = n.driver.tryReceive();
    return f !== undefined;
  }, ms);
  return f!;
}

/** A frame from A to B with EtherType 0x88b5 and a sequence number at bytes 14..17. */
function seqFrame(seq: number, size: number, dst = MAC_B, src = MAC_A): Uint8Array {
  const f = new Uint8Array(size);
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x88, 0xb5, seq >>> 24, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff], 12);
  for (let i = 18; i < size; i++) f[i] = (i + seq) & 0xff;
  return f;
}
const seqOf = (f: Uint8Array) => ((f[14]! << 24) | (f[15]! << 16) | (f[16]! << 8) | f[17]!) >>> 0;

describe("FrameChannel", () => {
  it("carries frames in order through fixed slots and refuses (counting) a push when every slot is taken", () => {
    const producer = FrameChannel.create(4, 100);
    const consumer = FrameChannel.from(producer.handle);
    for (let i = 0; i < 4; i++) expect(producer.push(seqFrame(i, 20 + i))).toBe(true);
    expect(producer.push(seqFrame(4, 20))).toBe(false);
    expect(producer.push(new Uint8Array(101))).toBe(false);
    expect(producer.stats).toMatchObject({ pushed: 4, drops: 1, oversize: 1, queued: 4 });
    // One data doorbell for the empty → non-empty transition, not one per frame.
    expect(producer.stats.dataRings).toBe(1);
    for (let i = 0; i < 4; i++) {
      const f = consumer.peek()!;
      expect(f).toEqual(seqFrame(i, 20 + i));
      consumer.shift();
    }
    expect(consumer.peek()).toBeUndefined();
  });

  it("rings the space doorbell once half the slots are free after a refused push, and clear() discards and counts", () => {
    const p = FrameChannel.create(4, 64);
    const c = FrameChannel.from(p.handle);
    for (let i = 0; i < 4; i++) p.push(seqFrame(i, 30));
    expect(p.push(seqFrame(9, 30))).toBe(false);
    c.shift();
    expect(p.spaceBell.pending()).toBe(0);
    c.shift();
    expect(p.spaceBell.pending()).toBe(1);
    expect(c.clear()).toBe(2);
    expect(c.stats).toMatchObject({ discarded: 2, queued: 0 });
  });

  it("never reads outside its slot when the length word is corrupted", () => {
    const p = FrameChannel.create(2, 64);
    const c = FrameChannel.from(p.handle);
    p.push(seqFrame(1, 40));
    // The length table follows the 16 header words.
    new Int32Array(p.handle.buffer, 16 * 4, 2)[0] = 1 << 30;
    expect(c.peek()!.length).toBe(0);
  });
});

describe("vhost-net: NetDevice in a worker thread, its back-end a Switch port on the VMM thread", () => {
  beforeAll(buildDist, 120_000);

  it.each([
    ["an in-thread NetDevice", "thread"] as const,
    ["another vhost-net NIC", "vhost"] as const,
  ])(
    "exchanges an ARP request/reply and an ICMP echo with %s through a Switch, byte for byte, with no kick handled on the VMM thread",
    async (_name, other) => {
      const sw = new Switch();
      const a = vhostNic(sw, MAC_A);
      const b = nic(sw, other, MAC_B);
      // ARP: who has 10.0.0.2? (broadcast) — 10.0.0.2 is at MAC_B (unicast reply).
      const request = arp(1, MAC_A, IP_A, BCAST, IP_B);
      await a.driver.send(request);
      expect(await receive(b)).toEqual(request);
      const reply = arp(2, MAC_B, IP_B, MAC_A, IP_A);
      await b.driver.send(reply);
      expect(await receive(a)).toEqual(reply);
      // ICMP echo request with the ICMP checksum left to the device (VIRTIO_NET_F_CSUM,
      // §5.1.6.2.2): the worker's NetDevice completes it; B sees the correct checksum.
      const ping = icmpEcho(8, MAC_B, MAC_A, IP_A, IP_B, 1, false);
      await a.driver.send(ping, { csum: { start: 34, offset: 2 } });
      const got = await receive(b);
      expect(got).toEqual(icmpEcho(8, MAC_B, MAC_A, IP_A, IP_B, 1));
      expect(inetChecksum(got, 34, got.length)).toBe(0);
      const pong = icmpEcho(0, MAC_A, MAC_B, IP_B, IP_A, 1);
      await b.driver.send(pong);
      expect(await receive(a)).toEqual(pong);
      // The switch learned both NICs on their ports.
      expect(sw.lookup("02:00:00:00:00:0a")).toBe(a.port);
      expect(sw.lookup("02:00:00:00:00:0b")).toBe(b.port);
      const s = a.vhost!.stats;
      expect(s.vmmNotifies).toBe(0);
      expect(s.workerKicks).toBeGreaterThan(0);
      expect(s.workerInterrupts).toBeGreaterThan(0);
      expect(a.vhost!.netStats.pump.txFrames).toBe(2);
      expect(a.vhost!.netStats.pump.rxFrames).toBe(2);
      expect(a.vhost!.netStats.tx.drops + a.vhost!.netStats.rx.drops).toBe(0);
    },
  );

  it("drops and counts a transmit burst larger than the tx channel while the VMM thread is busy, and delivers the frames that fit in order", async () => {
    const sw = new Switch();
    const a = vhostNic(sw, MAC_A, { slots: 8 });
    const b = nic(sw, "thread", MAC_B);
    const buffer = a.vhost!.tx.handle.buffer;
    const bytes = buffer.byteLength;
    // Post 48 frames without yielding, then keep this thread busy (the pump cannot run) until
    // the worker has handled all of them: 8 fit in the channel, 40 are dropped.
    for (let i = 0; i < 48; i++) expect(a.driver.trySend(seqFrame(i, 1000))).toBe(true);
    blockUntil(() => a.vhost!.tx.stats.pushed + a.vhost!.tx.stats.drops === 48);
    expect(a.vhost!.tx.stats).toMatchObject({ pushed: 8, drops: 40, queued: 8 });
    const got: Uint8Array[] = [];
    await until(() => {
      for (let f = b.driver.tryReceive(); f !== undefined; f = b.driver.tryReceive()) got.push(f);
      return got.length === 8;
    });
    expect(got).toEqual(Array.from({ length: 8 }, (_, i) => seqFrame(i, 1000)));
    expect(a.vhost!.netStats.pump.txFrames).toBe(8);
    // Memory is bounded by the channel: same buffer, same size.
    expect(a.vhost!.tx.handle.buffer).toBe(buffer);
    expect(buffer.byteLength).toBe(bytes);
    // Every transmit chain was completed to the guest, dropped or not (used.idx caught up).
    const [, txState] = await a.vhost!.stop();
    expect(txState?.usedIdx).toBe(txState?.availIdx);
  });

  it("holds a receive burst in the guest, the rx channel and the port's bounded queue, drops (counting) the rest, and releases it in order as the guest reads", async () => {
    const sw = new Switch();
    const a = vhostNic(sw, MAC_A, {
      slots: 16,
      queueFrames: 32,
      driver: { rxBuffers: 8, rxQueueLimit: 8 },
    });
    const inject = sw.createPort({ name: "inject" });
    inject.attach({ deliver: () => true });
    open.push({ close: () => inject.close() });
    const N = 300;
    let maxQueued = 0;
    for (let i = 0; i < N; i++) {
      inject.transmit(seqFrame(i, 200, MAC_A, MAC_B));
      maxQueued = Math.max(maxQueued, a.vhost!.rx.length);
      // Give the worker and the pump a turn now and then, as a real sender would.
      if (i % 50 === 49) await new Promise((r) => setImmediate(r));
    }
    const drops = () => a.port.stats.drops.queueFull;
    expect(drops()).toBeGreaterThan(0);
    const got: Uint8Array[] = [];
    await until(() => {
      for (let f = a.driver.tryReceive(); f !== undefined; f = a.driver.tryReceive()) got.push(f);
      return got.length + drops() === N;
    });
    // Nothing lost silently, nothing reordered, bytes intact.
    const seqs = got.map(seqOf);
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!)).toBe(true);
    for (const f of got) expect(f).toEqual(seqFrame(seqOf(f), 200, MAC_A, MAC_B));
    // Bounded everywhere: at least guest + channel + port queue were used before dropping.
    expect(got.length).toBeGreaterThanOrEqual(16 + 32);
    expect(maxQueued).toBeLessThanOrEqual(16);
    expect(a.port.queuedFrames).toBe(0);
    const p = a.vhost!.netStats.pump;
    expect(p.rxRefused).toBeGreaterThan(0);
    expect(p.spaceWakeups).toBeGreaterThan(0);
    expect(p.rxFrames).toBe(got.length);
  });

  it.each([
    ["a fresh worker", "split", true],
    ["the same worker", "split", false],
    ["a fresh worker", "packed", true],
    ["the same worker", "packed", false],
  ] as const)(
    "stops (GET_VRING_BASE) and resumes (SET_VRING_BASE) in %s mid-traffic on a %s ring without losing or repeating a transmitted frame",
    async (_name, ring, fresh) => {
      const sw = new Switch();
      const a = vhostNic(sw, MAC_A, { packed: ring === "packed" });
      const b = nic(sw, "thread", MAC_B);
      expect(hasFeature(a.driver.features, Feature.RING_PACKED)).toBe(ring === "packed");
      const N = 600;
      const WINDOW = 24;
      const got: Uint8Array[] = [];
      const reap = () => {
        for (let f = b.driver.tryReceive(); f !== undefined; f = b.driver.tryReceive()) got.push(f);
      };
      let sent = 0;
      const sender = (async () => {
        while (sent < N) {
          reap();
          if (sent - got.length >= WINDOW) {
            await new Promise((r) => setTimeout(r, 1));
            continue;
          }
          await a.driver.send(seqFrame(sent, 64 + (sent % 1400)));
          sent++;
        }
      })();
      const restarts: number[] = [];
      for (let k = 0; k < 4; k++) {
        await until(() => sent >= ((k + 1) * N) / 6);
        restarts.push(sent);
        await a.vhost!.restart({ fresh });
      }
      await sender;
      await until(() => {
        reap();
        return got.length >= N;
      });
      expect(restarts.every((c) => c < N)).toBe(true);
      expect(got.map(seqOf)).toEqual(Array.from({ length: N }, (_, i) => i));
      for (let i = 0; i < N; i++) expect(got[i]).toEqual(seqFrame(i, 64 + (i % 1400)));
      expect(a.vhost!.netStats.tx.drops).toBe(0);
      expect(a.vhost!.stats.workersStarted).toBe(fresh ? 5 : 1);
      // One used entry per transmitted frame on the tx ring (queue 1).
      const [, tx] = await a.vhost!.stop();
      const at = ring === "split" ? N : N % 64;
      expect(tx?.availIdx).toBe(at);
      expect(tx?.usedIdx).toBe(at);
    },
  );

  it("§2.1.2: a worker that dies puts the device into DEVICE_NEEDS_RESET with a config interrupt, and a reset starts a fresh worker that carries traffic", async () => {
    const sw = new Switch();
    const a = nic(sw, "vhost", MAC_A, { crash: true });
    const b = nic(sw, "thread", MAC_B);
    await a.driver.send(seqFrame(1, 100));
    expect(await receive(b)).toEqual(seqFrame(1, 100));
    const fatal = seqFrame(2, 100);
    fatal[12] = 0xde;
    fatal[13] = 0xad;
    await a.driver.send(fatal);
    await until(() => a.mmio.core.needsReset);
    expect(a.vhost!.lastError?.code).toBe("vhost-worker-died");
    expect(a.mmio.core.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(
      DeviceStatus.DEVICE_NEEDS_RESET,
    );
    // The configuration change interrupt reached the driver through the call doorbell.
    await until(() => {
      try {
        a.driver.trySend(seqFrame(3, 100));
        return false;
      } catch (e) {
        return (e as { code?: string }).code === "net-needs-reset";
      }
    });
    expect(a.vhost!.workerAlive).toBe(false);
    a.reinit();
    expect(a.mmio.core.needsReset).toBe(false);
    const hello = seqFrame(4, 100, MAC_A, MAC_B);
    await b.driver.send(hello);
    expect(await receive(a)).toEqual(hello);
    await a.driver.send(seqFrame(5, 100));
    expect(await receive(b)).toEqual(seqFrame(5, 100));
    expect(a.vhost!.stats.workersStarted).toBe(2);
  });

  it("§5.1.4: keeps config on the VMM thread coherent with the worker's control queue: MAC_ADDR_SET, link changes and announcements", async () => {
    const sw = new Switch();
    const announced: number[] = [];
    const a = vhostNic(sw, MAC_A, { driver: { onAnnounce: () => announced.push(1) } });
    expect(a.vhost!.mac).toEqual(MAC_A);
    const next = Uint8Array.of(0x02, 0, 0, 0, 0, 0x77);
    await a.driver.setMac(next);
    expect(a.vhost!.mac).toEqual(next);
    expect(a.mmio.read(0x100 + 5, 1)).toBe(0x77);
    a.vhost!.setLinkUp(false);
    await until(() => !a.driver.linkUp);
    expect(a.vhost!.status & NetStatus.LINK_UP).toBe(0);
    a.vhost!.setLinkUp(true);
    await until(() => a.driver.linkUp);
    expect(a.vhost!.announce()).toBe(true);
    await until(() => a.driver.stats.announcements === 1);
    expect(announced).toEqual([1]);
    expect(a.vhost!.status & NetStatus.ANNOUNCE).toBe(0);
    // A device reset restores the configured MAC (§5.1.6.5.2 changes last until reset).
    a.reinit();
    expect(a.vhost!.mac).toEqual(MAC_A);
    expect(a.driver.mac).toEqual(MAC_A);
  });
});
