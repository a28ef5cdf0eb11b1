// NetDevice behind MmioDevice, driven by raw driver queues (never through NetDriver): the tests
// write headers, frames and control commands into guest memory themselves.
import { createGuestMemory, type GuestMemory, GuestMemoryMap } from "@virtio-ts/memory";
import {
  DeviceStatus,
  Feature,
  featureMask,
  flowHash,
  hasFeature,
  MmioInterrupt,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlCmd,
  NetFeature,
  NetHdrFlags,
  NetStatus,
} from "@virtio-ts/spec";
import {
  InThreadMmio,
  type MmioDevice,
  type MmioDriverTransport,
  RateLimitedLog,
  restoreMmioDevice,
  saveMmioDevice,
} from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type NetBackend,
  NetDevice,
  type NetDeviceOptions,
  type NetFrameSink,
} from "../src/net.js";

class TestBackend implements NetBackend {
  readonly sent: Uint8Array[] = [];
  /** The views `transmit` was given (valid only during the call: for their identity). */
  readonly given: Uint8Array[] = [];
  sink: NetFrameSink | undefined;
  readyCalls = 0;
  refuse = false;
  transmit(frame: Uint8Array): boolean {
    this.given.push(frame);
    this.sent.push(frame.slice());
    return !this.refuse;
  }
  attach(sink: NetFrameSink): void {
    this.sink = sink;
  }
  detach(): void {
    this.sink = undefined;
  }
  rxReady(): void {
    this.readyCalls++;
  }
}

const MAC = new Uint8Array([0x02, 0, 0, 0, 0, 0x01]);
const OTHER = new Uint8Array([0x02, 0, 0, 0, 0, 0x99]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const QS = 16;
const ALL = ~0n;

interface Used {
  readonly addr: number;
  readonly len: number;
}

class Nic {
  readonly memory: GuestMemory;
  readonly backend = new TestBackend();
  readonly model: NetDevice;
  readonly device: MmioDevice;
  readonly t: MmioDriverTransport;
  readonly negotiated: bigint;
  readonly queues: DriverQueue<number>[] = [];
  readonly hdrLen: number;
  #next = 0x40000;

  constructor(
    o: {
      packed?: boolean;
      accept?: bigint;
      device?: NetDeviceOptions;
      /** Queues to set up (default: every queue of the negotiated layout). */
      queues?: number;
      /** Guest memory (default: 2 MiB in one region). */
      memory?: GuestMemory;
    } = {},
  ) {
    this.memory = o.memory ?? createGuestMemory({ size: 0x200000 });
    this.model = new NetDevice(this.backend, { mac: MAC, queueSize: QS, ...o.device });
    {
      const vm = new InThreadMmio(this.model, {
        memory: this.memory,
        log: new RateLimitedLog({ sink: () => {} }),
        delivery: "none",
      });
      this.device = vm.device;
      this.t = vm.transport;
    }
    const packedBit = featureMask(Feature.RING_PACKED);
    this.negotiated = this.t.negotiate(
      (offered) => offered & (o.accept ?? ALL) & (o.packed ? ALL : ~packedBit),
    );
    const mq = hasFeature(this.negotiated, NetFeature.MQ);
    const n = o.queues ?? (mq ? 2 * this.model.maxQueuePairs + 1 : 3);
    for (let i = 0; i < n; i++) {
      if (!mq && i > 2) break;
      const base = 0x1000 + i * 0x400;
      this.queues.push(
        this.t.setupQueue<number>(i, this.memory, {
          size: QS,
          desc: base,
          driver: base + 0x100,
          device: base + 0x200,
        }),
      );
    }
    this.t.driverOk();
    this.hdrLen = 12;
  }

  get ctrlIndex(): number {
    return hasFeature(this.negotiated, NetFeature.MQ) ? 2 * this.model.maxQueuePairs : 2;
  }

  alloc(len: number): number {
    const a = this.#next;
    this.#next += Math.max(16, (len + 15) & ~15);
    return a;
  }

  /** Post `count` receive buffers of `len` bytes on queue `q`. */
  postRx(count: number, len: number, q = 0): number[] {
    const addrs: number[] = [];
    for (let i = 0; i < count; i++) {
      const a = this.alloc(len);
      this.memory.fill(a, len, 0xee);
      expect(this.queues[q]!.add([], [{ addr: a, len }], a)).toBe(true);
      addrs.push(a);
    }
    if (this.queues[q]!.publish()) this.t.notify(q);
    return addrs;
  }

  /** Reap every used buffer of queue `q`. */
  reap(q: number): Used[] {
    const out: Used[] = [];
    const dq = this.queues[q]!;
    for (let tok = dq.reap(); tok !== undefined; tok = dq.reap()) {
      out.push({ addr: tok, len: dq.lastLen });
    }
    return out;
  }

  /** Transmit raw readable segments (header and frame bytes as the test lays them out). */
  txRaw(parts: readonly Uint8Array[], q = 1, at?: number): Used[] {
    // `at`: place the parts back to back from that guest address instead of allocating.
    let next = at;
    const segs: Segment[] = parts.map((p) => {
      const a = next ?? this.alloc(p.length);
      if (next !== undefined) next += p.length;
      this.memory.write(a, p);
      return { addr: a, len: p.length };
    });
    expect(this.queues[q]!.add(segs, [], segs[0]!.addr)).toBe(true);
    if (this.queues[q]!.publish()) this.t.notify(q);
    return this.reap(q);
  }

  /** Transmit `frame` behind `hdr` (default: a zero header), header and frame in one buffer. */
  tx(frame: Uint8Array, hdr: Uint8Array = new Uint8Array(12), q = 1): Used[] {
    const b = new Uint8Array(hdr.length + frame.length);
    b.set(hdr);
    b.set(frame, hdr.length);
    return this.txRaw([b], q);
  }

  /** Send one control command; returns the ack byte, or undefined when nothing was used. */
  ctrlRaw(readable: Uint8Array, ackLen = 1): { ack: number; used: number } {
    const q = this.queues[this.ctrlIndex]!;
    const r = this.alloc(Math.max(1, readable.length));
    this.memory.write(r, readable);
    const ack = this.alloc(1);
    this.memory.writeU8(ack, 0xaa);
    const readableSegs = readable.length > 0 ? [{ addr: r, len: readable.length }] : [];
    const writable = ackLen > 0 ? [{ addr: ack, len: ackLen }] : [];
    expect(q.add(readableSegs, writable, ack)).toBe(true);
    if (q.publish()) this.t.notify(this.ctrlIndex);
    const done = this.reap(this.ctrlIndex);
    expect(done).toHaveLength(1);
    return { ack: this.memory.readU8(ack), used: done[0]!.len };
  }

  ctrl(cls: number, cmd: number, data: readonly number[] | Uint8Array = []): number {
    return this.ctrlRaw(new Uint8Array([cls, cmd, ...data])).ack;
  }

  deliver(frame: Uint8Array): boolean {
    expect(this.backend.sink).toBe(this.model);
    return this.backend.sink!.deliver(frame);
  }

  /** Header and frame of a used receive buffer. */
  rxBuffer(u: Used): { hdr: Uint8Array; data: Uint8Array } {
    const all = this.memory.slice(u.addr, u.len).slice();
    return { hdr: all.subarray(0, 12), data: all.subarray(12) };
  }
}

/** Guest memory of two adjacent regions of `half` bytes each, the second from `half`. */
function twoRegions(half: number): GuestMemoryMap {
  return new GuestMemoryMap([
    { guestBase: 0, size: half, buffer: new SharedArrayBuffer(half) },
    { guestBase: half, size: half, buffer: new SharedArrayBuffer(half) },
  ]);
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

function pattern(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

function u16be(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function hdr(
  o: { flags?: number; gso?: number; csumStart?: number; csumOffset?: number } = {},
): Uint8Array {
  const h = new Uint8Array(12);
  const v = new DataView(h.buffer);
  h[0] = o.flags ?? 0;
  h[1] = o.gso ?? 0;
  v.setUint16(6, o.csumStart ?? 0, true);
  v.setUint16(8, o.csumOffset ?? 0, true);
  return h;
}

/** Reference RFC 1071 checksum computed independently of the code under test. */
function refChecksum(bytes: number[]): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) + (bytes[i + 1] ?? 0);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

const IP_A = [10, 0, 0, 1];
const IP_B = [10, 0, 0, 2];

/**
 * An IPv4 packet with a TCP or UDP payload, the L4 checksum field holding the pseudo-header
 * sum (as a sender using checksum offload leaves it), plus the reference full checksum.
 */
function l4Packet(
  proto: 6 | 17,
  payload: Uint8Array,
  srcPort = 1234,
  dstPort = 80,
): { frame: Uint8Array; csumStart: number; csumOffset: number; expected: number } {
  const l4Hdr = proto === 17 ? 8 : 20;
  const l4Len = l4Hdr + payload.length;
  const ip = new Uint8Array(20 + l4Len);
  ip[0] = 0x45;
  ip[2] = (20 + l4Len) >> 8;
  ip[3] = (20 + l4Len) & 0xff;
  ip[8] = 64;
  ip[9] = proto;
  ip.set(IP_A, 12);
  ip.set(IP_B, 16);
  const ipc = refChecksum([...ip.subarray(0, 20)]);
  ip[10] = ipc >> 8;
  ip[11] = ipc & 0xff;
  const l4 = ip.subarray(20);
  l4[0] = srcPort >> 8;
  l4[1] = srcPort & 0xff;
  l4[2] = dstPort >> 8;
  l4[3] = dstPort & 0xff;
  if (proto === 17) {
    l4[4] = l4Len >> 8;
    l4[5] = l4Len & 0xff;
  } else {
    l4[12] = 5 << 4; // data offset
    l4[13] = 0x18; // PSH, ACK
    l4[14] = 0xff;
  }
  l4.set(payload, l4Hdr);
  const pseudo = [...IP_A, ...IP_B, 0, proto, l4Len >> 8, l4Len & 0xff];
  const csumOffset = proto === 17 ? 6 : 16;
  const expected = refChecksum([...pseudo, ...l4]);
  // The partial value: the (uncomplemented) pseudo-header sum.
  const partial = ~refChecksum(pseudo) & 0xffff;
  l4[csumOffset] = partial >> 8;
  l4[csumOffset + 1] = partial & 0xff;
  return { frame: ether(OTHER, MAC, 0x0800, ip), csumStart: 34, csumOffset, expected };
}

describe("NetDevice configuration and features", () => {
  it("offers MAC, STATUS, MTU, MRG_RXBUF, CSUM, GUEST_CSUM, the control features and MQ only for several pairs", () => {
    const one = new NetDevice(new TestBackend());
    const four = new NetDevice(new TestBackend(), { maxQueuePairs: 4 });
    for (const bit of [
      NetFeature.MAC,
      NetFeature.STATUS,
      NetFeature.MTU,
      NetFeature.MRG_RXBUF,
      NetFeature.CSUM,
      NetFeature.GUEST_CSUM,
      NetFeature.CTRL_VQ,
      NetFeature.CTRL_RX,
      NetFeature.CTRL_RX_EXTRA,
      NetFeature.CTRL_MAC_ADDR,
      NetFeature.GUEST_ANNOUNCE,
    ]) {
      expect(hasFeature(one.features, bit)).toBe(true);
    }
    expect(hasFeature(one.features, NetFeature.MQ)).toBe(false);
    expect(hasFeature(four.features, NetFeature.MQ)).toBe(true);
    for (const bit of [NetFeature.HOST_TSO4, NetFeature.HOST_UFO, NetFeature.GUEST_TSO4]) {
      expect(hasFeature(one.features, bit)).toBe(false);
    }
    expect(one.queueMaxSizes).toEqual([256, 256, 64]);
    expect(four.queueMaxSizes).toHaveLength(9);
  });

  it("exposes mac, status, max_virtqueue_pairs and mtu in config space (§5.1.4)", () => {
    const nic = new Nic({ device: { mtu: 9000, maxQueuePairs: 3, linkUp: true } });
    const mac = nic.t.readConfig((c) => Array.from({ length: 6 }, (_, i) => c.u8(i)));
    expect(mac).toEqual([...MAC]);
    expect(nic.t.readConfig((c) => c.u16(NetConfig.STATUS))).toBe(NetStatus.LINK_UP);
    expect(nic.t.readConfig((c) => c.u16(NetConfig.MAX_VIRTQUEUE_PAIRS))).toBe(3);
    expect(nic.t.readConfig((c) => c.u16(NetConfig.MTU))).toBe(9000);
    nic.t.writeConfig(0, 1, 0x77);
    expect(nic.t.readConfig((c) => c.u8(0))).toBe(MAC[0]);
  });

  it("rejects bad options with RangeErrors naming them", () => {
    const b = new TestBackend();
    expect(() => new NetDevice(b, { mtu: 67 })).toThrow(/options\.mtu/);
    expect(() => new NetDevice(b, { mac: new Uint8Array(5) })).toThrow(/options\.mac/);
    expect(() => new NetDevice(b, { maxQueuePairs: 0 })).toThrow(/options\.maxQueuePairs/);
    expect(() => new NetDevice(b, { queueSize: 100 })).toThrow(/options\.queueSize/);
    expect(() => new NetDevice(b, { macTableEntries: 0 })).toThrow(/options\.macTableEntries/);
    expect(() => new NetDevice({} as NetBackend)).toThrow(TypeError);
  });

  it("refuses FEATURES_OK for CTRL_RX without CTRL_VQ (§5.1.3.1)", () => {
    const model = new NetDevice(new TestBackend());
    expect(
      model.validateFeatures(featureMask(NetFeature.CTRL_RX) | featureMask(Feature.VERSION_1)),
    ).toBe(false);
    expect(
      model.validateFeatures(
        featureMask(NetFeature.CTRL_RX_EXTRA) | featureMask(NetFeature.CTRL_VQ),
      ),
    ).toBe(false);
    expect(
      model.validateFeatures(featureMask(NetFeature.CTRL_RX) | featureMask(NetFeature.CTRL_VQ)),
    ).toBe(true);
  });

  it("setLinkUp clears LINK_UP and sends a configuration change notification", () => {
    const nic = new Nic();
    nic.t.takeInterrupt();
    nic.model.setLinkUp(false);
    expect(nic.t.takeInterrupt() & MmioInterrupt.CONFIG).toBe(MmioInterrupt.CONFIG);
    expect(nic.t.readConfig((c) => c.u16(NetConfig.STATUS))).toBe(0);
    nic.postRx(1, 2048);
    expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(50)))).toBe(true);
    expect(nic.model.stats.rxLinkDown).toBe(1);
    expect(nic.reap(0)).toHaveLength(0);
  });
});

for (const packed of [false, true]) {
  const ring = packed ? "packed" : "split";

  describe(`NetDevice transmit (${ring} ring)`, () => {
    it("hands header-stripped frames to the back-end and completes the buffer with length 0 (§5.1.6.2)", () => {
      const nic = new Nic({ packed });
      const f1 = ether(OTHER, MAC, 0x0800, pattern(100));
      const f2 = ether(BCAST, MAC, 0x0806, pattern(28, 2));
      expect(nic.tx(f1)).toEqual([expect.objectContaining({ len: 0 })]);
      // Header and frame in separate descriptors, the frame itself split oddly.
      expect(nic.txRaw([hdr(), f2.subarray(0, 5), f2.subarray(5)])).toHaveLength(1);
      expect(nic.backend.sent).toEqual([f1, f2]);
      expect(nic.model.stats.txFrames).toBe(2);
      expect(nic.model.stats.txBytes).toBe(f1.length + f2.length);
    });

    it("completes the partial checksum of a UDP and a TCP packet before transmission (§5.1.6.2.2)", () => {
      const nic = new Nic({ packed });
      for (const proto of [17, 6] as const) {
        const p = l4Packet(proto, pattern(proto === 17 ? 333 : 1000, proto));
        nic.tx(
          p.frame,
          hdr({
            flags: NetHdrFlags.NEEDS_CSUM,
            csumStart: p.csumStart,
            csumOffset: p.csumOffset,
          }),
        );
        const out = nic.backend.sent.at(-1)!;
        expect(u16be(out, p.csumStart + p.csumOffset)).toBe(p.expected);
        // Only the checksum field differs from what the guest sent.
        const want = p.frame.slice();
        want[p.csumStart + p.csumOffset] = p.expected >> 8;
        want[p.csumStart + p.csumOffset + 1] = p.expected & 0xff;
        expect(out).toEqual(want);
      }
      expect(nic.model.stats.txBadCsum).toBe(0);
    });

    it("reads a header split across descriptors (and a zero-length first one) as one header: checksum completed, gso_type refused", () => {
      const nic = new Nic({ packed });
      const p = l4Packet(17, pattern(200, 3));
      const h = hdr({
        flags: NetHdrFlags.NEEDS_CSUM,
        csumStart: p.csumStart,
        csumOffset: p.csumOffset,
      });
      // The header's bytes in three pieces: 0 bytes, 7 (flags .. csum_start's low byte), 5.
      const pieces = [new Uint8Array(0), h.subarray(0, 7), h.subarray(7), p.frame];
      expect(nic.txRaw(pieces)).toHaveLength(1);
      const out = nic.backend.sent.at(-1)!;
      expect(u16be(out, p.csumStart + p.csumOffset)).toBe(p.expected);
      expect(nic.model.stats.txFrames).toBe(1);
      // gso_type in the second piece of a split header is still seen, and refused (§5.1.6.2.1).
      const g = hdr({ gso: 1 });
      expect(nic.txRaw([g.subarray(0, 1), g.subarray(1), p.frame])).toHaveLength(1);
      expect(nic.model.stats.txGso).toBe(1);
      expect(nic.backend.sent).toHaveLength(1);
    });

    it("hands the back-end a view of guest memory when the frame lies in one descriptor, and a copy when it does not", () => {
      const nic = new Nic({ packed });
      const at = 0x8000;
      const f = ether(OTHER, MAC, 0x0800, pattern(1486, 4));
      const view = (i: number): number | undefined => nic.memory.addressOf!(nic.backend.given[i]!);
      // Header and frame in one descriptor; header alone, frame in the next: both in place.
      const one = new Uint8Array(12 + f.length);
      one.set(f, 12);
      nic.txRaw([one], 1, at);
      nic.txRaw([hdr(), f], 1, at);
      expect([view(0), view(1)]).toEqual([at + 12, at + 12]);
      expect(nic.backend.given[0]!.length).toBe(f.length);
      // The frame over two descriptors, and a split header: copies.
      nic.txRaw([hdr(), f.subarray(0, 700), f.subarray(700)], 1, at);
      nic.txRaw([hdr().subarray(0, 5), hdr().subarray(5), f], 1, at);
      expect([view(2), view(3)]).toEqual([undefined, undefined]);
      expect(nic.backend.sent).toEqual([f, f, f, f]);
    });

    it("copies a frame whose checksum it completes, leaving the guest's driver-readable buffer unwritten (§2.7.5.1)", () => {
      const nic = new Nic({ packed });
      const p = l4Packet(17, pattern(500, 6));
      const at = 0x8000;
      const h = hdr({
        flags: NetHdrFlags.NEEDS_CSUM,
        csumStart: p.csumStart,
        csumOffset: p.csumOffset,
      });
      nic.txRaw([h, p.frame], 1, at);
      expect(nic.memory.addressOf!(nic.backend.given[0]!)).toBeUndefined();
      expect(u16be(nic.backend.sent[0]!, p.csumStart + p.csumOffset)).toBe(p.expected);
      expect(nic.memory.slice(at + 12, p.frame.length)).toEqual(p.frame);
    });

    it("copies a frame that lies across two adjacent memory regions, bytes intact", () => {
      const half = 0x100000;
      const nic = new Nic({ packed, memory: twoRegions(half) });
      const f = ether(OTHER, MAC, 0x0800, pattern(600, 7));
      nic.txRaw([hdr(), f], 1, half - 100);
      expect(nic.memory.addressOf!(nic.backend.given[0]!)).toBeUndefined();
      expect(nic.backend.sent).toEqual([f]);
    });

    it("reads a header that straddles two adjacent memory regions in place, checksum fields included", () => {
      const half = 0x100000;
      const nic = new Nic({ packed, memory: twoRegions(half) });
      const p = l4Packet(6, pattern(300, 5));
      const h = hdr({
        flags: NetHdrFlags.NEEDS_CSUM,
        csumStart: p.csumStart,
        csumOffset: p.csumOffset,
      });
      const b = new Uint8Array(h.length + p.frame.length);
      b.set(h);
      b.set(p.frame, h.length);
      // One descriptor from 7 bytes below the boundary: csum_start's two bytes lie in two regions.
      expect(nic.txRaw([b], 1, half - 7)).toEqual([expect.objectContaining({ len: 0 })]);
      expect(nic.model.stats.txFrames).toBe(1);
      expect(nic.model.stats.txBadCsum).toBe(0);
      expect(nic.t.needsReset).toBe(false);
      expect(u16be(nic.backend.sent[0]!, p.csumStart + p.csumOffset)).toBe(p.expected);
    });

    it("drops and counts a truncated header, a header-only frame, an oversize frame, gso_type and bad csum offsets, then keeps working", () => {
      const nic = new Nic({ packed, device: { mtu: 1000 } });
      const good = ether(OTHER, MAC, 0x0800, pattern(60));
      expect(nic.txRaw([new Uint8Array(8)])).toHaveLength(1);
      expect(nic.txRaw([hdr()])).toHaveLength(1);
      expect(nic.tx(ether(OTHER, MAC, 0x0800, pattern(1001)))).toHaveLength(1);
      expect(nic.tx(good, hdr({ gso: 1 }))).toHaveLength(1);
      expect(
        nic.tx(good, hdr({ flags: NetHdrFlags.NEEDS_CSUM, csumStart: 60, csumOffset: 13 })),
      ).toHaveLength(1);
      expect(nic.backend.sent).toHaveLength(0);
      const s = nic.model.stats;
      expect([s.txShortHeader, s.txRunt, s.txOversize, s.txGso, s.txBadCsum]).toEqual([
        1, 1, 1, 1, 1,
      ]);
      expect(nic.device.core.faultCounts.get("net-tx-gso")).toBe(1);
      // A frame of exactly mtu + 14 bytes still goes out, and so does the next good one.
      const max = ether(OTHER, MAC, 0x0800, pattern(1000));
      nic.tx(max);
      nic.tx(good);
      expect(nic.backend.sent).toEqual([max, good]);
      expect(nic.t.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    });

    it("drops NEEDS_CSUM when the driver did not negotiate CSUM (§5.1.6.2.1)", () => {
      const nic = new Nic({ packed, accept: ~featureMask(NetFeature.CSUM) });
      const p = l4Packet(17, pattern(20));
      nic.tx(p.frame, hdr({ flags: NetHdrFlags.NEEDS_CSUM, csumStart: 34, csumOffset: 6 }));
      expect(nic.backend.sent).toHaveLength(0);
      expect(nic.model.stats.txBadCsum).toBe(1);
    });

    it("counts frames the back-end refuses and still completes them", () => {
      const nic = new Nic({ packed });
      nic.backend.refuse = true;
      expect(nic.tx(ether(OTHER, MAC, 0x0800, pattern(40)))).toHaveLength(1);
      expect(nic.model.stats.txBackendDrops).toBe(1);
    });
  });

  describe(`NetDevice receive (${ring} ring)`, () => {
    it("copies a frame behind a header with num_buffers 1 into one buffer (§5.1.6.4)", () => {
      const nic = new Nic({ packed });
      nic.postRx(2, 2048);
      const f = ether(MAC, OTHER, 0x0800, pattern(200));
      expect(nic.deliver(f)).toBe(true);
      const used = nic.reap(0);
      expect(used).toHaveLength(1);
      expect(used[0]!.len).toBe(12 + f.length);
      const { hdr: h, data } = nic.rxBuffer(used[0]!);
      expect([...h]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      expect(data).toEqual(f);
      expect(nic.model.stats.rxFrames).toBe(1);
    });

    it("returns false without a receive buffer and calls rxReady after the driver adds one", () => {
      const nic = new Nic({ packed });
      const f = ether(MAC, OTHER, 0x0800, pattern(64));
      expect(nic.deliver(f)).toBe(false);
      expect(nic.model.stats.rxNoBuffer).toBe(1);
      expect(nic.backend.readyCalls).toBe(0);
      nic.postRx(1, 2048);
      expect(nic.backend.readyCalls).toBe(1);
      expect(nic.deliver(f)).toBe(true);
    });

    it("spreads a frame larger than one buffer over several with num_buffers (MRG_RXBUF, §5.1.6.4)", () => {
      const nic = new Nic({ packed, device: { mtu: 4000 } });
      const bufs = nic.postRx(5, 1024);
      const f = ether(MAC, OTHER, 0x0800, pattern(3000));
      expect(nic.deliver(f)).toBe(true);
      const used = nic.reap(0);
      expect(used.map((u) => u.len)).toEqual([1024, 1024, 12 + f.length - 2048]);
      expect(used.map((u) => u.addr)).toEqual(bufs.slice(0, 3));
      expect(nic.memory.readU16(bufs[0]! + 10)).toBe(3);
      const joined = new Uint8Array(12 + f.length);
      let at = 0;
      for (const u of used) {
        joined.set(nic.memory.slice(u.addr, u.len), at);
        at += u.len;
      }
      expect(joined.subarray(12)).toEqual(f);
      // The remaining two buffers take the next frames.
      expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(100)))).toBe(true);
      expect(nic.reap(0).map((u) => u.addr)).toEqual([bufs[3]]);
    });

    it("holds chains taken for a merged frame until enough buffers arrive, copying nothing meanwhile", () => {
      const nic = new Nic({ packed, device: { mtu: 4000 } });
      const first = nic.postRx(2, 1024);
      const f = ether(MAC, OTHER, 0x0800, pattern(3000, 5));
      expect(nic.deliver(f)).toBe(false);
      expect(nic.reap(0)).toHaveLength(0);
      expect(nic.memory.readU8(first[0]!)).toBe(0xee);
      nic.postRx(2, 1024);
      expect(nic.deliver(f)).toBe(true);
      expect(nic.reap(0).map((u) => u.len)).toEqual([1024, 1024, 12 + f.length - 2048]);
    });

    it("forgets held chains when the receive queue is reset (§2.6.1.1.1)", () => {
      const nic = new Nic({ packed, device: { mtu: 4000 } });
      nic.postRx(2, 1024);
      const f = ether(MAC, OTHER, 0x0800, pattern(3000, 7));
      expect(nic.deliver(f)).toBe(false);
      nic.t.resetQueue(0);
      nic.queues[0] = nic.t.setupQueue<number>(0, nic.memory, {
        size: QS,
        desc: 0x1000,
        driver: 0x1100,
        device: 0x1200,
      });
      const fresh = nic.postRx(3, 1024);
      expect(nic.deliver(f)).toBe(true);
      expect(nic.reap(0).map((u) => u.addr)).toEqual(fresh);
    });

    it("without MRG_RXBUF returns a too-small buffer unused, counts it and uses the next one", () => {
      const nic = new Nic({ packed, accept: ~featureMask(NetFeature.MRG_RXBUF) });
      nic.postRx(1, 100);
      nic.postRx(1, 1526);
      const f = ether(MAC, OTHER, 0x0800, pattern(500));
      expect(nic.deliver(f)).toBe(true);
      expect(nic.reap(0).map((u) => u.len)).toEqual([0, 12 + f.length]);
      expect(nic.model.stats.rxSmallBuffers).toBe(1);
      expect(nic.device.core.faultCounts.get("net-rx-small-buffer")).toBe(1);
    });

    it("with MRG_RXBUF returns buffers smaller than the header unused (§5.1.6.3.1)", () => {
      const nic = new Nic({ packed });
      nic.postRx(1, 8);
      nic.postRx(1, 2048);
      expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(80)))).toBe(true);
      expect(nic.reap(0).map((u) => u.len)).toEqual([0, 12 + 94]);
      expect(nic.model.stats.rxSmallBuffers).toBe(1);
    });

    it("drops runt and oversize frames from the back-end", () => {
      const nic = new Nic({ packed, device: { mtu: 500 } });
      nic.postRx(2, 2048);
      expect(nic.deliver(new Uint8Array(13))).toBe(true);
      expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(501)))).toBe(true);
      expect(nic.model.stats.rxBadFrame).toBe(2);
      expect(nic.reap(0)).toHaveLength(0);
    });
  });

  describe(`NetDevice receive filtering (${ring} ring, §5.1.6.5.1–2)`, () => {
    const toMe = ether(MAC, OTHER, 0x0800, pattern(50));
    const toOther = ether(OTHER, MAC, 0x0800, pattern(50));
    const bcast = ether(BCAST, OTHER, 0x0806, pattern(28));
    const mcast = new Uint8Array([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    const toGroup = ether(mcast, OTHER, 0x0800, pattern(50));

    function received(nic: Nic, f: Uint8Array): boolean {
      nic.postRx(1, 2048);
      nic.deliver(f);
      const got = nic.reap(0);
      return got.length === 1 && got[0]!.len > 12;
    }

    it("drops unicast to another MAC unless promiscuous; passes its own MAC and broadcast", () => {
      const nic = new Nic({ packed });
      expect(received(nic, toMe)).toBe(true);
      expect(received(nic, toOther)).toBe(false);
      expect(received(nic, bcast)).toBe(true);
      expect(received(nic, toGroup)).toBe(false);
      expect(nic.model.stats.rxFiltered).toBe(2);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, [1])).toBe(NetCtrlAck.OK);
      expect(received(nic, toOther)).toBe(true);
      expect(received(nic, toGroup)).toBe(true);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, [0])).toBe(NetCtrlAck.OK);
      expect(received(nic, toOther)).toBe(false);
    });

    it("passes everything when CTRL_RX was not negotiated", () => {
      const nic = new Nic({
        packed,
        accept: ~(featureMask(NetFeature.CTRL_RX) | featureMask(NetFeature.CTRL_RX_EXTRA)),
      });
      expect(received(nic, toOther)).toBe(true);
      expect(received(nic, toGroup)).toBe(true);
    });

    it("applies the unicast and multicast tables of MAC_TABLE_SET, and ALLMULTI", () => {
      const nic = new Nic({ packed });
      const table = [1, 0, 0, 0, ...OTHER, 1, 0, 0, 0, ...mcast];
      expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, table)).toBe(NetCtrlAck.OK);
      expect(nic.model.rxFilter.unicast).toEqual([OTHER]);
      expect(nic.model.rxFilter.multicast).toEqual([mcast]);
      expect(received(nic, toOther)).toBe(true);
      expect(received(nic, toGroup)).toBe(true);
      const otherGroup = ether(new Uint8Array([0x01, 0, 0x5e, 0, 0, 1]), OTHER, 0x0800, pattern(9));
      expect(received(nic, otherGroup)).toBe(false);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, [1])).toBe(NetCtrlAck.OK);
      expect(received(nic, otherGroup)).toBe(true);
    });

    it("sets the overflow flag instead of storing more entries than the table holds", () => {
      const nic = new Nic({ packed, device: { macTableEntries: 1 } });
      const two = [2, 0, 0, 0, ...OTHER, ...BCAST.map(() => 0x0a), 0, 0, 0, 0];
      expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, two)).toBe(NetCtrlAck.OK);
      expect(nic.model.rxFilter.unicastOverflow).toBe(true);
      expect(nic.model.rxFilter.unicast).toHaveLength(1);
      expect(
        received(nic, ether(new Uint8Array([2, 9, 9, 9, 9, 9]), OTHER, 0x800, pattern(9))),
      ).toBe(true);
    });

    it("honours NOBCAST, NOUNI, NOMULTI and ALLUNI with CTRL_RX_EXTRA", () => {
      const nic = new Nic({ packed });
      nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_NOBCAST, [1]);
      expect(received(nic, bcast)).toBe(false);
      nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_ALLUNI, [1]);
      expect(received(nic, toOther)).toBe(true);
      nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_NOUNI, [1]);
      expect(received(nic, toMe)).toBe(false);
      nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, [1]);
      nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_NOMULTI, [1]);
      expect(received(nic, toGroup)).toBe(false);
    });

    it("MAC_ADDR_SET changes the filtered address and config mac; a reset restores it", () => {
      const nic = new Nic({ packed });
      expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, OTHER)).toBe(NetCtrlAck.OK);
      expect(nic.t.readConfig((c) => Array.from({ length: 6 }, (_, i) => c.u8(i)))).toEqual([
        ...OTHER,
      ]);
      expect(received(nic, toOther)).toBe(true);
      expect(received(nic, toMe)).toBe(false);
      nic.t.reset();
      expect(nic.model.mac).toEqual(MAC);
    });
  });

  describe(`NetDevice control queue (${ring} ring, §5.1.6.5)`, () => {
    it("answers VIRTIO_NET_ERR to a bad class, a bad command, a short command and wrong data sizes, and keeps working", () => {
      const nic = new Nic({ packed });
      expect(nic.ctrl(0x7f, 0)).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.RX, 0x40, [1])).toBe(NetCtrlAck.ERR);
      expect(nic.ctrlRaw(new Uint8Array([NetCtrlClass.RX]))).toEqual({
        ack: NetCtrlAck.ERR,
        used: 1,
      });
      expect(nic.ctrlRaw(new Uint8Array(0))).toEqual({ ack: NetCtrlAck.ERR, used: 1 });
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC)).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, [1, 1])).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, [1, 2, 3])).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.ANNOUNCE, NetCtrlCmd.ANNOUNCE_ACK, [0])).toBe(NetCtrlAck.ERR);
      // MQ is not offered with one pair.
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [1, 0])).toBe(NetCtrlAck.ERR);
      expect(nic.model.stats.ctrlErr).toBe(9);
      expect(nic.model.rxFilter.promisc).toBe(false);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, [1])).toBe(NetCtrlAck.OK);
      expect(nic.model.rxFilter.promisc).toBe(true);
      expect(nic.t.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
    });

    it("refuses a MAC table whose entry count lies about its size and leaves the table unchanged", () => {
      const nic = new Nic({ packed });
      const ok = [1, 0, 0, 0, ...OTHER, 0, 0, 0, 0];
      expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, ok)).toBe(NetCtrlAck.OK);
      for (const bad of [
        [0xff, 0xff, 0xff, 0xff, ...OTHER, 0, 0, 0, 0], // 2^32 - 1 entries
        [1, 0, 0, 0, ...OTHER], // multicast count missing
        [0, 0, 0, 0, 1, 0, 0, 0], // one multicast entry announced, none present
        [0, 0, 0, 0, 0, 0, 0, 0, 9], // trailing byte
      ]) {
        expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, bad)).toBe(NetCtrlAck.ERR);
      }
      expect(nic.model.rxFilter.unicast).toEqual([OTHER]);
    });

    it("completes a command without an ack byte with length 0 and counts it", () => {
      const nic = new Nic({ packed });
      expect(nic.ctrlRaw(new Uint8Array([0, 0, 1]), 0).used).toBe(0);
      expect(nic.device.core.faultCounts.get("net-ctrl-no-ack")).toBe(1);
      expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, [1])).toBe(NetCtrlAck.OK);
    });

    it("announce() sets ANNOUNCE with a config change and ANNOUNCE_ACK clears it (§5.1.6.5.4)", () => {
      const nic = new Nic({ packed });
      nic.t.takeInterrupt();
      expect(nic.model.announce()).toBe(true);
      expect(nic.t.takeInterrupt() & MmioInterrupt.CONFIG).toBe(MmioInterrupt.CONFIG);
      expect(nic.t.readConfig((c) => c.u16(NetConfig.STATUS))).toBe(
        NetStatus.LINK_UP | NetStatus.ANNOUNCE,
      );
      expect(nic.ctrl(NetCtrlClass.ANNOUNCE, NetCtrlCmd.ANNOUNCE_ACK)).toBe(NetCtrlAck.OK);
      expect(nic.model.status).toBe(NetStatus.LINK_UP);
    });

    it("announce() does nothing without GUEST_ANNOUNCE", () => {
      const nic = new Nic({ packed, accept: ~featureMask(NetFeature.GUEST_ANNOUNCE) });
      expect(nic.model.announce()).toBe(false);
      expect(nic.model.status & NetStatus.ANNOUNCE).toBe(0);
    });
  });

  describe(`NetDevice multiqueue (${ring} ring, §5.1.6.5.5)`, () => {
    it("puts the control queue after the last pair and validates VQ_PAIRS_SET against 1..max_virtqueue_pairs", () => {
      const nic = new Nic({ packed, device: { maxQueuePairs: 3 } });
      expect(nic.ctrlIndex).toBe(6);
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [0, 0])).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [4, 0])).toBe(NetCtrlAck.ERR);
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [3])).toBe(NetCtrlAck.ERR);
      expect(nic.model.queuePairs).toBe(1);
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [3, 0])).toBe(NetCtrlAck.OK);
      expect(nic.model.queuePairs).toBe(3);
    });

    it("steers each flow to the receive queue its hash picks, using every active queue", () => {
      const nic = new Nic({ packed, device: { maxQueuePairs: 2 } });
      const flows = Array.from({ length: 16 }, (_, i) => l4Packet(17, pattern(10), 1000 + i, 53));
      // Before VQ_PAIRS_SET everything lands on receiveq1.
      nic.postRx(QS, 2048, 0);
      nic.postRx(QS, 2048, 2);
      for (const f of flows.slice(0, 2)) {
        f.frame.set(MAC, 0);
        nic.deliver(f.frame);
      }
      expect(nic.reap(0)).toHaveLength(2);
      expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [2, 0])).toBe(NetCtrlAck.OK);
      const want = [0, 0];
      for (const f of flows) {
        f.frame.set(MAC, 0);
        want[flowHash(f.frame) % 2]!++;
        expect(nic.deliver(f.frame)).toBe(true);
      }
      expect(want[0]).toBeGreaterThan(0);
      expect(want[1]).toBeGreaterThan(0);
      expect(nic.reap(0)).toHaveLength(want[0]!);
      expect(nic.reap(2)).toHaveLength(want[1]!);
      // Frames of one flow always take the same queue.
      const f = flows[0]!.frame;
      expect(flowHash(f)).toBe(flowHash(f.slice()));
    });

    it("transmits from the second pair's transmit queue", () => {
      const nic = new Nic({ packed, device: { maxQueuePairs: 2 } });
      const f = ether(OTHER, MAC, 0x0800, pattern(70));
      expect(nic.tx(f, hdr(), 3)).toHaveLength(1);
      expect(nic.backend.sent).toEqual([f]);
    });
  });
}

describe("NetDevice hostile rings", () => {
  it("returns a malformed transmit chain with length 0, counts it, and transmits the next frame", () => {
    const nic = new Nic();
    const q = nic.queues[1]!;
    // A descriptor outside guest memory is a ChainError for this chain only.
    expect(q.add([{ addr: 0x7ff_fff0_0000, len: 64 }], [], 1)).toBe(true);
    if (q.publish()) nic.t.notify(1);
    expect(nic.reap(1)).toEqual([{ addr: 1, len: 0 }]);
    expect(nic.model.stats.badChains).toBe(1);
    const f = ether(OTHER, MAC, 0x0800, pattern(30));
    nic.tx(f);
    expect(nic.backend.sent).toEqual([f]);
    expect(nic.t.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  });

  it("enters DEVICE_NEEDS_RESET when deliver meets a corrupted available ring (§2.1.2)", () => {
    const nic = new Nic();
    // avail.idx jumps past the queue size: a RingError inside deliver goes through ctx.guard.
    nic.memory.writeU16(0x1000 + 0x100 + 2, QS + 5);
    expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(30)))).toBe(false);
    expect(nic.t.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    expect(nic.deliver(ether(MAC, OTHER, 0x0800, pattern(30)))).toBe(false);
  });

  it("detaches from the back-end on reset and refuses frames afterwards", () => {
    const nic = new Nic();
    const sink = nic.backend.sink!;
    nic.t.reset();
    expect(nic.backend.sink).toBeUndefined();
    expect(sink.deliver(ether(MAC, OTHER, 0x0800, pattern(30)))).toBe(false);
  });
});

describe("NetDevice state for suspend / resume", () => {
  it("moves what the driver set through the control queue — MAC, RX modes, MAC tables, queue pairs — to a resumed device, so its configuration matches", async () => {
    const nic = new Nic({ device: { maxQueuePairs: 2 } });
    const newMac = [2, 0, 0, 0, 0, 0x42];
    expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, newMac)).toBe(NetCtrlAck.OK);
    expect(nic.ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, [1])).toBe(NetCtrlAck.OK);
    const table = [1, 0, 0, 0, 2, 0, 0, 0, 0, 7, 1, 0, 0, 0, 1, 0, 0x5e, 0, 0, 9];
    expect(nic.ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, table)).toBe(NetCtrlAck.OK);
    expect(nic.ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, [2, 0])).toBe(NetCtrlAck.OK);
    await nic.device.core.suspend();
    const bytes = saveMmioDevice(nic.device);
    const fresh = new NetDevice(new TestBackend(), { mac: MAC, queueSize: QS, maxQueuePairs: 2 });
    // The configuration (mac) differs until the model state is restored: the resume checks it.
    restoreMmioDevice(bytes, fresh, { memory: nic.memory });
    expect([...fresh.mac]).toEqual(newMac);
    expect(fresh.queuePairs).toBe(2);
    expect(fresh.rxFilter).toEqual(nic.model.rxFilter);
    expect(fresh.rxFilter.allmulti).toBe(true);
  });

  it("refuses model state it cannot parse with DeviceStateFormatError naming the byte", () => {
    const good = new NetDevice(new TestBackend(), { mac: MAC }).saveState();
    const fresh = () => new NetDevice(new TestBackend(), { mac: MAC });
    const cases: [Uint8Array, number][] = [
      [good.subarray(0, 8), 0],
      [Uint8Array.from(good, (b, i) => (i === 0 ? 9 : b)), 0],
      [Uint8Array.from(good, (b, i) => (i === 9 ? 5 : b)), 9], // 5 pairs of a 1-pair device
      [Uint8Array.from(good, (b, i) => (i === 12 ? 3 : b)), 12], // tables longer than the bytes
    ];
    for (const [bytes, at] of cases) {
      expect(() => fresh().restoreState(bytes)).toThrow(
        expect.objectContaining({ code: "device-state-format", offset: at }),
      );
    }
  });
});

describe("NetDevice transmit interrupts (options.txInterrupts)", () => {
  const frame = () => ether(OTHER, MAC, 0x0800, pattern(60));

  it("immediate (the default) raises the used buffer notification inside each kick", () => {
    const nic = new Nic();
    nic.tx(frame());
    expect(nic.device.core.interruptStatus & MmioInterrupt.USED_BUFFER).toBe(
      MmioInterrupt.USED_BUFFER,
    );
  });

  it("coalesced sends the frames at once but one notification per task, from a microtask, for all of its kicks", async () => {
    const nic = new Nic({ device: { txInterrupts: "coalesced" } });
    const before = nic.device.core.stats.usedInterrupts;
    expect(nic.tx(frame())).toHaveLength(1);
    expect(nic.tx(frame())).toHaveLength(1);
    expect(nic.tx(frame())).toHaveLength(1);
    expect(nic.backend.sent).toHaveLength(3);
    expect(nic.device.core.interruptStatus & MmioInterrupt.USED_BUFFER).toBe(0);
    await Promise.resolve();
    expect(nic.device.core.interruptStatus & MmioInterrupt.USED_BUFFER).toBe(
      MmioInterrupt.USED_BUFFER,
    );
    expect(nic.device.core.stats.usedInterrupts - before).toBe(1);
  });

  it("coalesced drops a notification that a device reset made stale", async () => {
    const nic = new Nic({ device: { txInterrupts: "coalesced" } });
    nic.tx(frame());
    nic.device.reset();
    await Promise.resolve();
    expect(nic.device.core.interruptStatus).toBe(0);
  });

  it("rejects an unknown mode with a RangeError naming options.txInterrupts", () => {
    expect(
      () =>
        new NetDevice(new TestBackend(), {
          txInterrupts: "sometimes" as unknown as "immediate",
        }),
    ).toThrow(/options\.txInterrupts/);
  });
});
