import { type NetBackend, NetDevice, type NetFrameSink } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
  NetCtrlClass,
  NetCtrlCmd,
  NetFeature,
  NetStatus,
} from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  InThreadMmio,
  type MmioDevice,
  MmioDriverTransport,
  RateLimitedLog,
} from "@virtio-ts/transport";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  NetCtrlError,
  NetDeviceFault,
  NetDriver,
  type NetDriverOptions,
  SlabAllocator,
} from "../src/index.js";

/** One end of a test cable: what one NIC transmits the other receives (bounded hold queue). */
class Wire implements NetBackend {
  peer: Wire | undefined;
  sink: NetFrameSink | undefined;
  readonly held: Uint8Array[] = [];
  drops = 0;
  /** The frames dropped (the peer's hold queue was full). */
  readonly dropped: Uint8Array[] = [];
  transmit(frame: Uint8Array): boolean {
    const copy = frame.slice();
    const p = this.peer!;
    if (p.held.length === 0 && p.sink?.deliver(copy) === true) return true;
    if (p.held.length < 64) {
      p.held.push(copy);
      return true;
    }
    this.drops++;
    this.dropped.push(copy);
    return false;
  }
  attach(sink: NetFrameSink): void {
    this.sink = sink;
    this.rxReady();
  }
  detach(): void {
    this.sink = undefined;
  }
  rxReady(): void {
    while (this.held.length > 0 && this.sink?.deliver(this.held[0]!) === true) this.held.shift();
  }
}

interface Nic {
  readonly memory: GuestMemory;
  readonly model: NetDevice;
  readonly device: MmioDevice;
  readonly driver: NetDriver;
  readonly wire: Wire;
  readonly slab: SlabAllocator;
}

const MAC_A = new Uint8Array([0x02, 0, 0, 0, 0, 0x0a]);
const MAC_B = new Uint8Array([0x02, 0, 0, 0, 0, 0x0b]);
const BCAST = new Uint8Array(6).fill(0xff);
const IP_A = [192, 168, 7, 1];
const IP_B = [192, 168, 7, 2];

interface NicOptions {
  packed?: boolean;
  mtu?: number;
  pairs?: number;
  slotSize?: number;
  slots?: number;
  queueSize?: number;
  driver?: Partial<NetDriverOptions>;
}

function nic(mac: Uint8Array, wire: Wire, o: NicOptions = {}): Nic {
  const memory = createGuestMemory({ size: 0x800000 });
  const model = new NetDevice(wire, {
    mac,
    mtu: o.mtu ?? 1500,
    maxQueuePairs: o.pairs ?? 1,
    queueSize: 64,
    ctrlQueueSize: 16,
  });
  const { device, transport } = new InThreadMmio(model, {
    memory,
    log: new RateLimitedLog({ sink: () => {} }),
    delivery: "none",
  });
  const slab = new SlabAllocator(0x100000, o.slotSize ?? 2048, o.slots ?? 512);
  const driver = new NetDriver(transport, memory, slab, {
    ringBase: 0x10000,
    queueSize: o.queueSize ?? 32,
    packed: o.packed ?? false,
    maxQueuePairs: o.pairs ?? 1,
    ...o.driver,
  });
  return { memory, model, device, driver, wire, slab };
}

function pair(o: NicOptions = {}, ob: NicOptions = o): { a: Nic; b: Nic } {
  const wa = new Wire();
  const wb = new Wire();
  wa.peer = wb;
  wb.peer = wa;
  return { a: nic(MAC_A, wa, o), b: nic(MAC_B, wb, ob) };
}

/** Let both drivers reap until nothing moves (the devices run synchronously on kicks). */
function pump(...nics: Nic[]): void {
  for (let round = 0; round < 16; round++) {
    let moved = 0;
    for (const n of nics) moved += n.driver.onInterrupt();
    if (moved === 0) return;
  }
}

function drain(n: Nic): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let f = n.driver.tryReceive(); f !== undefined; f = n.driver.tryReceive()) out.push(f);
  return out;
}

function ether(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(payload, 14);
  return f;
}

/** Reference RFC 1071 checksum, written independently of the code under test. */
function refChecksum(bytes: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) + (bytes[i + 1] ?? 0);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

function arp(op: 1 | 2, sha: Uint8Array, spa: number[], tha: Uint8Array, tpa: number[]) {
  const p = new Uint8Array(28);
  p.set([0, 1, 0x08, 0x00, 6, 4, 0, op]);
  p.set(sha, 8);
  p.set(spa, 14);
  p.set(tha, 18);
  p.set(tpa, 24);
  return ether(op === 1 ? BCAST : tha, sha, 0x0806, p);
}

function ipv4(proto: number, src: number[], dst: number[], l4: Uint8Array): Uint8Array {
  const ip = new Uint8Array(20 + l4.length);
  ip[0] = 0x45;
  ip[2] = ip.length >> 8;
  ip[3] = ip.length & 0xff;
  ip[8] = 64;
  ip[9] = proto;
  ip.set(src, 12);
  ip.set(dst, 16);
  const c = refChecksum(ip.subarray(0, 20));
  ip[10] = c >> 8;
  ip[11] = c & 0xff;
  ip.set(l4, 20);
  return ip;
}

/** ICMP echo (type 8 request / 0 reply) with its checksum filled in, or left 0. */
function icmpEcho(type: 0 | 8, id: number, seq: number, data: Uint8Array, fill = true) {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  m[4] = id >> 8;
  m[5] = id & 0xff;
  m[6] = seq >> 8;
  m[7] = seq & 0xff;
  m.set(data, 8);
  if (fill) {
    const c = refChecksum(m);
    m[2] = c >> 8;
    m[3] = c & 0xff;
  }
  return m;
}

function pattern(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 13 + seed * 101) & 0xff;
  return b;
}

/** A UDP or TCP frame whose checksum field holds the pseudo-header sum, and the reference frame. */
function l4Frame(proto: 6 | 17, payload: Uint8Array, sport = 4000, dport = 53) {
  const hl = proto === 17 ? 8 : 20;
  const l4 = new Uint8Array(hl + payload.length);
  l4.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff]);
  if (proto === 17) l4.set([l4.length >> 8, l4.length & 0xff], 4);
  else l4.set([5 << 4, 0x10, 0x20, 0], 12);
  l4.set(payload, hl);
  const off = proto === 17 ? 6 : 16;
  const pseudo = [...IP_A, ...IP_B, 0, proto, l4.length >> 8, l4.length & 0xff];
  const full = refChecksum([...pseudo, ...l4]);
  const partial = ~refChecksum(pseudo) & 0xffff;
  const ref = ether(MAC_B, MAC_A, 0x0800, ipv4(proto, IP_A, IP_B, l4));
  ref.set([full >> 8, full & 0xff], 34 + off);
  const frame = ref.slice();
  frame.set([partial >> 8, partial & 0xff], 34 + off);
  return { frame, ref, csum: { start: 34, offset: off } };
}

for (const packed of [false, true]) {
  const ring = packed ? "packed" : "split";

  describe(`NetDriver with NetDevice back to back (${ring} ring)`, () => {
    it("negotiates and reads the MAC, MTU and link status", () => {
      const { a } = pair({ packed, mtu: 1400 });
      expect(a.driver.mac).toEqual(MAC_A);
      expect(a.driver.mtu).toBe(1400);
      expect(a.driver.linkUp).toBe(true);
      const f = a.driver.features;
      for (const bit of [NetFeature.MRG_RXBUF, NetFeature.CSUM, NetFeature.CTRL_VQ]) {
        expect(hasFeature(f, bit)).toBe(true);
      }
      expect(hasFeature(f, Feature.RING_PACKED)).toBe(packed);
    });

    it("exchanges an ARP request and reply byte for byte", () => {
      const { a, b } = pair({ packed });
      const request = arp(1, MAC_A, IP_A, new Uint8Array(6), IP_B);
      expect(a.driver.trySend(request)).toBe(true);
      pump(a, b);
      const got = drain(b);
      expect(got).toEqual([request]);
      const req = got[0]!;
      // B answers for its address: op 2, from B to A.
      expect([...req.subarray(38, 42)]).toEqual(IP_B);
      const reply = arp(2, MAC_B, IP_B, req.subarray(22, 28), [...req.subarray(28, 32)]);
      expect(b.driver.trySend(reply)).toBe(true);
      pump(a, b);
      expect(drain(a)).toEqual([reply]);
      expect(a.model.stats.txFrames).toBe(1);
      expect(b.model.stats.rxFrames).toBe(1);
    });

    it("exchanges an ICMP echo request and reply, the request checksummed by the device", async () => {
      const { a, b } = pair({ packed });
      const data = pattern(56);
      const echo = icmpEcho(8, 0x1234, 1, data, false);
      const request = ether(MAC_B, MAC_A, 0x0800, ipv4(1, IP_A, IP_B, echo));
      // ICMP has no pseudo-header: the field starts at 0 and the device fills it in.
      await a.driver.send(request, { csum: { start: 34, offset: 2 } });
      pump(a, b);
      const [got] = drain(b);
      const want = ether(MAC_B, MAC_A, 0x0800, ipv4(1, IP_A, IP_B, icmpEcho(8, 0x1234, 1, data)));
      expect(got).toEqual(want);
      // B builds the reply from the request.
      const reply = ether(
        MAC_A,
        MAC_B,
        0x0800,
        ipv4(1, IP_B, IP_A, icmpEcho(0, 0x1234, 1, got!.subarray(42))),
      );
      await b.driver.send(reply);
      pump(a, b);
      const [back] = drain(a);
      expect(back).toEqual(reply);
      expect(refChecksum(back!.subarray(34))).toBe(0);
      expect(back!.subarray(42)).toEqual(data);
    });

    it("completes UDP and TCP checksums through the device (CSUM) and in the driver without it", () => {
      for (const csum of [true, false]) {
        const { a, b } = pair({ packed, driver: { csum } });
        expect(hasFeature(a.driver.features, NetFeature.CSUM)).toBe(csum);
        for (const proto of [17, 6] as const) {
          const p = l4Frame(proto, pattern(proto === 17 ? 100 : 1200, proto));
          expect(a.driver.trySend(p.frame, { csum: p.csum })).toBe(true);
          pump(a, b);
          expect(drain(b)).toEqual([p.ref]);
        }
      }
    });

    it("reassembles frames larger than one receive buffer (MRG_RXBUF num_buffers)", () => {
      const { a, b } = pair({ packed, mtu: 9000, slotSize: 512 });
      expect(hasFeature(b.driver.features, NetFeature.MRG_RXBUF)).toBe(true);
      const free = b.slab.available;
      const frames = [8000, 1514, 500, 9014, 60].map((n, i) =>
        ether(MAC_B, MAC_A, 0x88b5, pattern(n - 14, i)),
      );
      for (const f of frames) {
        a.driver.trySend(f);
        pump(a, b);
      }
      expect(drain(b)).toEqual(frames);
      expect(b.driver.stats.rxFaults).toBe(0);
      // Every buffer reaped was posted again: no slot leaked.
      expect(b.slab.available).toBe(free);
    });

    it("without MRG_RXBUF requires slots that hold a whole frame and still receives frames", () => {
      expect(() => pair({ packed, slotSize: 512, driver: { mrgRxbuf: false } })).toThrow(
        /allocator\.slotSize/,
      );
      const { a, b } = pair({ packed, driver: { mrgRxbuf: false } });
      expect(hasFeature(b.driver.features, NetFeature.MRG_RXBUF)).toBe(false);
      const f = ether(MAC_B, MAC_A, 0x0800, pattern(1500));
      a.driver.trySend(f);
      pump(a, b);
      expect(drain(b)).toEqual([f]);
    });

    it("filters unicast for another MAC unless promiscuous, and applies the MAC table and allmulti", async () => {
      const { a, b } = pair({ packed });
      const settle = async <T>(p: Promise<T>): Promise<T> => {
        pump(a, b);
        return p;
      };
      const stranger = new Uint8Array([0x02, 1, 2, 3, 4, 5]);
      const group = new Uint8Array([0x01, 0, 0x5e, 1, 2, 3]);
      const send = (dst: Uint8Array): Uint8Array[] => {
        a.driver.trySend(ether(dst, MAC_A, 0x0800, pattern(46)));
        pump(a, b);
        return drain(b);
      };
      expect(send(stranger)).toHaveLength(0);
      expect(send(BCAST)).toHaveLength(1);
      expect(send(group)).toHaveLength(0);
      expect(b.model.stats.rxFiltered).toBe(2);
      await settle(b.driver.setPromiscuous(true));
      expect(send(stranger)).toHaveLength(1);
      await settle(b.driver.setPromiscuous(false));
      await settle(b.driver.setMacTable([stranger], [group]));
      expect(send(stranger)).toHaveLength(1);
      expect(send(group)).toHaveLength(1);
      expect(send(new Uint8Array([0x01, 0, 0x5e, 9, 9, 9]))).toHaveLength(0);
      await settle(b.driver.setAllMulticast(true));
      expect(send(new Uint8Array([0x01, 0, 0x5e, 9, 9, 9]))).toHaveLength(1);
      await settle(b.driver.setRxMode("nobcast", true));
      expect(send(BCAST)).toHaveLength(0);
      const newMac = new Uint8Array([0x02, 0xaa, 0, 0, 0, 1]);
      await settle(b.driver.setMac(newMac));
      expect(b.driver.mac).toEqual(newMac);
      expect(b.model.mac).toEqual(newMac);
      expect(send(newMac)).toHaveLength(1);
      expect(send(MAC_B)).toHaveLength(0);
    });

    it("rejects a command the device refuses with NetCtrlError net-ctrl-err", async () => {
      const { a, b } = pair({ packed });
      const p = b.driver.command(0x7f, 0);
      pump(a, b);
      await expect(p).rejects.toMatchObject({ code: "net-ctrl-err", cls: 0x7f, cmd: 0 });
      await expect(b.driver.setQueuePairs(2)).rejects.toThrow(RangeError);
      expect(() => b.driver.setMacTable([new Uint8Array(5)], [])).toThrow(RangeError);
    });

    it("uses several queue pairs after setQueuePairs and delivers every flow", async () => {
      const { a, b } = pair({ packed, pairs: 2 });
      expect(b.driver.maxQueuePairs).toBe(2);
      const sets = [a, b].map((n) => n.driver.setQueuePairs(2));
      pump(a, b);
      await Promise.all(sets);
      expect(b.model.queuePairs).toBe(2);
      expect(b.driver.queuePairs).toBe(2);
      const frames = Array.from(
        { length: 24 },
        (_, i) => l4Frame(17, pattern(30, i), 5000 + i).ref,
      );
      for (const f of frames) {
        expect(a.driver.trySend(f)).toBe(true);
        pump(a, b);
      }
      const got = drain(b);
      expect(got).toHaveLength(frames.length);
      expect(new Set(got.map((f) => f[35]))).toEqual(new Set(frames.map((f) => f[35])));
      // Both receive queues carried traffic.
      expect(b.device.core.queue(0)!.getState().usedIdx).toBeGreaterThan(0);
      expect(b.device.core.queue(2)!.getState().usedIdx).toBeGreaterThan(0);
      const bad = b.driver.command(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, new Uint8Array(2));
      pump(a, b);
      await expect(bad).rejects.toBeInstanceOf(NetCtrlError);
    });

    it("applies back-pressure: trySend fails on a full transmit queue and send waits for room", async () => {
      const { a, b } = pair({ packed, queueSize: 8 });
      const f = ether(MAC_B, MAC_A, 0x0800, pattern(100));
      let sent = 0;
      while (a.driver.trySend(f)) sent++;
      expect(sent).toBe(8);
      let done = false;
      const waiting = a.driver.send(f).then(() => {
        done = true;
      });
      const writable = a.driver.whenWritable();
      await Promise.resolve();
      expect(done).toBe(false);
      pump(a, b);
      await writable;
      await waiting;
      expect(done).toBe(true);
      expect(a.driver.stats.txFrames).toBe(9);
    });

    it("buffers at most rxQueueLimit frames and leaves the rest on the ring until they are taken", async () => {
      const { a, b } = pair({ packed }, { packed, driver: { rxQueueLimit: 2 } });
      const frames = Array.from({ length: 5 }, (_, i) =>
        ether(MAC_B, MAC_A, 0x0800, pattern(60, i)),
      );
      for (const f of frames) a.driver.trySend(f);
      pump(a, b);
      expect(b.driver.pendingFrames).toBe(2);
      expect(b.model.stats.rxFrames).toBe(5);
      const it = b.driver.frames();
      const got: Uint8Array[] = [];
      for (let i = 0; i < 5; i++) got.push((await it.next()).value as Uint8Array);
      expect(got).toEqual(frames);
      const later = it.next();
      a.driver.trySend(frames[0]!);
      pump(a, b);
      expect((await later).value).toEqual(frames[0]);
      expect(await it.return!()).toEqual({ value: undefined, done: true });
    });

    it("answers an announcement request with onAnnounce and ANNOUNCE_ACK (§5.1.6.5.4)", async () => {
      let calls = 0;
      const { a, b } = pair({ packed }, { packed, driver: { onAnnounce: () => calls++ } });
      expect(b.model.announce()).toBe(true);
      pump(a, b);
      expect(calls).toBe(1);
      expect(b.model.status & NetStatus.ANNOUNCE).toBe(0);
      await new Promise((r) => setImmediate(r));
      expect(b.driver.stats.announcements).toBe(1);
    });

    it("follows link state changes on a configuration interrupt", () => {
      const { a, b } = pair({ packed });
      b.model.setLinkUp(false);
      pump(a, b);
      expect(b.driver.linkUp).toBe(false);
    });
  });
}

/** A deliberately misbehaving net device: receive completions are whatever the test injects. */
class EvilNetDevice implements DeviceModel {
  readonly deviceId = DeviceId.NET;
  readonly features = [NetFeature.MAC, NetFeature.MRG_RXBUF, NetFeature.MTU].reduce(
    (m, b) => m | featureMask(b),
    0n,
  );
  readonly queueMaxSizes = [16, 16];
  readonly configSize = 12;
  #ctx: DeviceContext | undefined;
  readonly #chain = new DescriptorChain(16);
  readConfig(offset: number, size: 1 | 2 | 4): number {
    if (offset === 10 && size === 2) return 1500;
    return offset < 6 && size === 1 ? MAC_B[offset]! : 0;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
  }
  onQueueNotify(): void {}
  reset(): void {}
  /** Fill the next receive buffer with `bytes` and report `used` bytes. */
  inject(bytes: Uint8Array, used = bytes.length): void {
    expect(this.tryInject(bytes, used)).toBe(true);
  }
  /** As `inject`; false (nothing done) when the driver has posted no buffer. */
  tryInject(bytes: Uint8Array, used = bytes.length): boolean {
    const ctx = this.#ctx!;
    const q = ctx.queue(0)!;
    if (!q.pop(this.#chain)) return false;
    this.#chain.copyToWritable(ctx.memory, 0, bytes);
    q.push(this.#chain.head, used);
    ctx.interrupt(0);
    return true;
  }
}

function evil(slots = 64): { model: EvilNetDevice; driver: NetDriver; device: MmioDevice } {
  const memory = createGuestMemory({ size: 0x400000 });
  const model = new EvilNetDevice();
  const { device, transport } = new InThreadMmio(model, { memory, delivery: "none" });
  const driver = new NetDriver(transport, memory, new SlabAllocator(0x100000, 512, slots), {
    ringBase: 0x10000,
    queueSize: 16,
  });
  return { model, driver, device };
}

function rxHdr(numBuffers: number, o: { gso?: number; flags?: number } = {}): Uint8Array {
  const h = new Uint8Array(12);
  h[0] = o.flags ?? 0;
  h[1] = o.gso ?? 0;
  h[10] = numBuffers & 0xff;
  h[11] = numBuffers >> 8;
  return h;
}

function withHdr(h: Uint8Array, frame: Uint8Array): Uint8Array {
  const b = new Uint8Array(h.length + frame.length);
  b.set(h);
  b.set(frame, h.length);
  return b;
}

/** A frame from A to B whose bytes 14 and 15 carry `seq` (little-endian), `len` bytes long. */
function frameOf(seq: number, len: number): Uint8Array {
  const f = ether(MAC_B, MAC_A, 0x88b5, pattern(len - 14, seq));
  f[14] = seq & 0xff;
  f[15] = seq >> 8;
  return f;
}

describe("NetDriver batched send and lending receive", () => {
  it("trySendBatch posts every frame that fits with one QueueNotify and says how many", () => {
    const { a, b } = pair({ packed: true });
    const frames = Array.from({ length: 10 }, (_, i) => frameOf(i, 60 + i * 90));
    const kicks = a.device.exitCounts().QueueNotify ?? 0;
    expect(a.driver.trySendBatch(frames, 2, 9)).toBe(7);
    expect((a.device.exitCounts().QueueNotify ?? 0) - kicks).toBe(1);
    pump(a, b);
    expect(drain(b)).toEqual(frames.slice(2, 9));
  });

  it("trySendBatch stops when the ring is full and posts the rest after completions", () => {
    const { a, b } = pair({ queueSize: 8 });
    const frames = Array.from({ length: 20 }, (_, i) => frameOf(i, 100));
    const sent = a.driver.trySendBatch(frames);
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(20);
    pump(a, b);
    let more = sent;
    for (let round = 0; more < 20 && round < 20; round++) {
      more += a.driver.trySendBatch(frames, more);
      pump(a, b);
    }
    expect(drain(b)).toEqual(frames);
  });

  it("trySendBatch checks every frame before posting any, naming the bad one", () => {
    const { a } = pair();
    const frames = [frameOf(0, 60), new Uint8Array(5)];
    expect(() => a.driver.trySendBatch(frames)).toThrow(/frames\[1\]/);
    expect(a.driver.stats.txFrames).toBe(0);
    expect(() => a.driver.trySendBatch(frames, 1, 3)).toThrow(/start and end/);
  });

  it("tryReceiveView lends each frame in order, byte for byte, through many wraps of the frame store", () => {
    // 18 slots: 16 receive buffers and the 2 refills keep for transmission. Holding a frame in
    // its buffer would leave a refill short, so every frame goes through the store.
    const { a, b } = pair({}, { slots: 18, driver: { rxQueueLimit: 8 } });
    let next = 0;
    let seen = 0;
    const sizes = [60, 1514, 333, 1000, 64, 1499, 777];
    for (let round = 0; round < 60; round++) {
      const batch = Array.from({ length: 6 }, () => {
        const f = frameOf(next, sizes[next % sizes.length]!);
        next++;
        return f;
      });
      expect(a.driver.trySendBatch(batch)).toBe(6);
      pump(a, b);
      for (let f = b.driver.tryReceiveView(); f !== undefined; f = b.driver.tryReceiveView()) {
        expect(f).toEqual(frameOf(seen, sizes[seen % sizes.length]!));
        expect(b.memory.addressOf!(f)).toBeUndefined();
        seen++;
      }
    }
    expect(seen).toBe(next);
  });

  it("holds the first rxBuffers waiting frames in their receive buffers, unposted while refills post others, and lends them from guest memory", () => {
    const { a, b } = pair({}, { driver: { rxQueueLimit: 64 } });
    const frames = Array.from({ length: 40 }, (_, i) => frameOf(i, 200 + i * 30));
    // Five rounds of 8: B reaps and refills after each, and takes nothing until the end.
    for (let r = 0; r < 5; r++) {
      expect(a.driver.trySendBatch(frames, 8 * r, 8 * r + 8)).toBe(8);
      pump(a, b);
    }
    expect(b.driver.pendingFrames).toBe(40);
    const addrs: (number | undefined)[] = [];
    const got: Uint8Array[] = [];
    for (let f = b.driver.tryReceiveView(); f !== undefined; f = b.driver.tryReceiveView()) {
      addrs.push(b.memory.addressOf!(f));
      got.push(f.slice());
    }
    // Intact: the refills of rounds 2–5 never handed a held buffer back to the device.
    expect(got).toEqual(frames);
    // rxBuffers (16 here): lent where the device wrote them, each in its own buffer; the rest
    // were copied into the driver's store.
    const held = addrs.slice(0, 16);
    expect(held.every((x) => x !== undefined)).toBe(true);
    expect(new Set(held).size).toBe(16);
    expect(addrs.slice(16)).toEqual(new Array(24).fill(undefined));
    // Every buffer came back: the next frames flow as before.
    a.driver.trySendBatch(frames, 0, 8);
    pump(a, b);
    expect(drain(b)).toEqual(frames.slice(0, 8));
  });

  it("a receive queue left short of slots is refilled as soon as a held frame is taken", () => {
    // 30 slots of 512 bytes, queue 16: rxBuffers 8, and refills leave 4 slots (a largest frame
    // and a command) for transmission.
    const { model, driver } = evil(30);
    const f = (i: number) => ether(MAC_B, MAC_A, 0x88b5, pattern(86, i));
    // 8 frames, held in their buffers (22 free slots: a refill of 8 and the reserve of 4 still
    // fit); the refill posts 8 more.
    for (let i = 0; i < 8; i++) model.inject(withHdr(rxHdr(1), f(i)));
    driver.onInterrupt();
    // 11 transmissions this device never completes hold 11 slots: 3 left.
    for (let i = 0; i < 11; i++) expect(driver.trySend(f(100 + i))).toBe(true);
    // 8 more frames: copied (8 are held already), their buffers freed; the refill stops at 7
    // buffers with 4 slots left.
    for (let i = 8; i < 16; i++) model.inject(withHdr(rxHdr(1), f(i)));
    driver.onInterrupt();
    for (let i = 16; i < 23; i++) model.inject(withHdr(rxHdr(1), f(i)));
    expect(model.tryInject(withHdr(rxHdr(1), f(23)))).toBe(false);
    // Taking a held frame frees its slot, and the queue gets a buffer at once (no interrupt).
    expect(driver.tryReceive()).toEqual(f(0));
    expect(model.tryInject(withHdr(rxHdr(1), f(23)))).toBe(true);
    driver.onInterrupt();
    const rest: Uint8Array[] = [];
    for (let x = driver.tryReceive(); x !== undefined; x = driver.tryReceive()) rest.push(x);
    expect(rest).toEqual(Array.from({ length: 23 }, (_, i) => f(i + 1)));
  });

  it("ending a loan on a full one-frame queue reaps again: a frames() reader gets the frames left on the ring", async () => {
    const { a, b } = pair({}, { driver: { rxQueueLimit: 1 } });
    const sent = [frameOf(1, 100), frameOf(2, 100), frameOf(3, 100)];
    a.driver.trySendBatch(sent);
    pump(a, b);
    // One frame queued; reaping stopped (back-pressure) with two on the used ring.
    expect(b.driver.tryReceiveView()).toEqual(sent[0]);
    const it = b.driver.frames();
    const within = <T>(p: Promise<T>) =>
      Promise.race([p, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 1000))]);
    expect(await within(it.next())).toEqual({ value: sent[1], done: false });
    expect(await within(it.next())).toEqual({ value: sent[2], done: false });
  });

  it("a lent view stays unchanged until the next receive call, and tryReceive still copies", () => {
    const { a, b } = pair();
    a.driver.trySendBatch([frameOf(1, 200), frameOf(2, 300)]);
    pump(a, b);
    const v = b.driver.tryReceiveView()!;
    const before = v.slice();
    const copy = b.driver.tryReceive()!; // ends the loan
    expect(before).toEqual(frameOf(1, 200));
    expect(copy).toEqual(frameOf(2, 300));
    expect(copy.buffer).not.toBe(v.buffer);
    expect(b.driver.tryReceiveView()).toBeUndefined();
  });
});

describe("NetDriver receive over random workloads (property)", () => {
  type Op =
    | { readonly kind: "send"; readonly sizes: readonly number[] }
    | { readonly kind: "view" | "copy"; readonly n: number }
    | { readonly kind: "pump" };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant("send" as const),
      sizes: fc.array(fc.integer({ min: 16, max: 1514 }), { minLength: 1, maxLength: 12 }),
    }),
    fc.record({ kind: fc.constantFrom("view" as const, "copy" as const), n: fc.nat(12) }),
    fc.constant({ kind: "pump" as const }),
  );
  const seqOf = (f: Uint8Array) => f[14]! | (f[15]! << 8);

  it("delivers every frame the wire carried, in order and byte for byte, and a lent view stays intact until the next receive call, whatever the allocator, slot size, queue limit and mix of lent, copied and late takes", () => {
    fc.assert(
      fc.property(
        fc.record({
          slots: fc.integer({ min: 18, max: 80 }),
          slotSize: fc.constantFrom(512, 2048),
          limit: fc.integer({ min: 1, max: 40 }),
          packed: fc.boolean(),
          ops: fc.array(op, { maxLength: 50 }),
        }),
        (w) => {
          const { a, b } = pair(
            { packed: w.packed },
            {
              packed: w.packed,
              slots: w.slots,
              slotSize: w.slotSize,
              driver: { rxQueueLimit: w.limit },
            },
          );
          const sent: Uint8Array[] = [];
          const got: Uint8Array[] = [];
          let seq = 0;
          let lent: { view: Uint8Array; copy: Uint8Array } | undefined;
          // A loan ends at B's next receive call or poll; until then its bytes must not change.
          const endLoan = () => {
            if (lent !== undefined) expect(lent.view).toEqual(lent.copy);
            lent = undefined;
          };
          const take = (kind: "view" | "copy", n: number) => {
            for (let i = 0; i < n; i++) {
              endLoan();
              const f = kind === "view" ? b.driver.tryReceiveView() : b.driver.tryReceive();
              if (f === undefined) return;
              got.push(f.slice());
              if (kind === "view") lent = { view: f, copy: f.slice() };
            }
          };
          for (const o of w.ops) {
            if (o.kind === "send") {
              const frames = o.sizes.map((len) => frameOf(seq++, len));
              const k = a.driver.trySendBatch(frames);
              sent.push(...frames.slice(0, k));
              seq -= frames.length - k;
            } else if (o.kind === "pump") {
              endLoan();
              pump(a, b);
            } else take(o.kind, o.n);
          }
          // Drain: reap, take, and let the wire hand on what it held, until nothing moves.
          for (let round = 0; round < 400; round++) {
            endLoan();
            pump(a, b);
            const before = got.length;
            take("copy", 1000);
            if (got.length === before && b.wire.held.length === 0 && b.driver.pendingFrames === 0)
              break;
          }
          const dropped = new Set(a.wire.dropped.map(seqOf));
          expect(got.map(seqOf)).toEqual(sent.map(seqOf).filter((s) => !dropped.has(s)));
          expect(got).toEqual(sent.filter((f) => !dropped.has(seqOf(f))));
          expect(b.driver.stats.rxFaults).toBe(0);
          // Every held buffer went back to the allocator: only posted receive buffers (at most
          // rxBuffers, 16 for queues of 32) still use slots.
          expect(b.slab.slots - b.slab.available).toBeLessThanOrEqual(16);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe("NetDriver distrusts the device", () => {
  const good = ether(MAC_B, MAC_A, 0x0800, pattern(100));

  it("drops buffers with a short or oversized used length, impossible num_buffers or gso_type, and keeps receiving", () => {
    const { model, driver } = evil();
    model.inject(withHdr(rxHdr(1), good), 8); // shorter than the header
    model.inject(withHdr(rxHdr(0), good)); // num_buffers 0
    model.inject(withHdr(rxHdr(999), good)); // more than the queue holds
    model.inject(withHdr(rxHdr(1, { gso: 1 }), good)); // GSO not negotiated
    model.inject(withHdr(rxHdr(1), good.subarray(0, 10))); // runt frame
    driver.onInterrupt();
    expect(driver.stats.rxFaults).toBe(5);
    expect(driver.lastFault).toBeInstanceOf(NetDeviceFault);
    expect(driver.tryReceive()).toBeUndefined();
    model.inject(withHdr(rxHdr(1), good));
    driver.onInterrupt();
    expect(driver.tryReceive()).toEqual(good);
  });

  it("discards a merged frame that grows past mtu + 14 but consumes all its buffers", () => {
    const { model, driver } = evil();
    // Receive buffers are 508 bytes: the 512-byte slots start 4 bytes in (8-aligned frames).
    model.inject(withHdr(rxHdr(5), pattern(496)));
    for (let i = 0; i < 4; i++) model.inject(pattern(508, i));
    model.inject(withHdr(rxHdr(1), good));
    driver.onInterrupt();
    expect(driver.lastFault?.code).toBe("net-bad-frame");
    expect(driver.tryReceive()).toEqual(good);
    expect(driver.tryReceive()).toBeUndefined();
  });

  it("stops with net-ring-broken on a corrupted used ring and rejects pending and later work", async () => {
    const { model, driver, device } = evil();
    const it = driver.frames();
    const pending = it.next();
    // used.idx of the receive queue jumps far ahead.
    const used = device.core.queueAddress(0, "device");
    model.inject(withHdr(rxHdr(1), good));
    device.core.memory.writeU16(used + 2, 200);
    driver.onInterrupt();
    await expect(pending).rejects.toMatchObject({ code: "net-ring-broken" });
    await expect(driver.send(good)).rejects.toBeInstanceOf(NetDeviceFault);
    expect(() => driver.trySend(good)).toThrow(NetDeviceFault);
  });

  it("stops with net-needs-reset when the device sets DEVICE_NEEDS_RESET", async () => {
    const { driver, device } = evil();
    class Broken extends VirtioError {
      readonly code = "test-broken";
    }
    device.core.fail(new Broken("gone"));
    driver.onInterrupt();
    await expect(driver.frames().next()).rejects.toMatchObject({ code: "net-needs-reset" });
  });

  it("refuses a non-network device and bad options", () => {
    const memory = createGuestMemory({ size: 0x100000 });
    const t = new MmioDriverTransport({ read: () => 0, write: () => {} });
    expect(
      () =>
        new NetDriver(t, memory, new SlabAllocator(0x80000, 2048, 4), {
          ringBase: 0x1000,
          maxQueuePairs: 0,
        }),
    ).toThrow(/options\.maxQueuePairs/);
  });
});
