// VsockDevice against raw driver queues (VIRTIO 1.3 §5.10): the protocol from the device's
// side, and every kind of hostile packet or buffer a guest can send.
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  Feature,
  VsockConfig,
  VsockEvent,
  VsockHdr,
  VsockOp,
  VsockShutdownFlags,
} from "@virtio-ts/spec";
import { InThreadMmio, type MmioDriverTransport } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  VsockDevice,
  type VsockDeviceOptions,
  VsockFault,
  type VsockStream,
} from "../src/index.js";

const CID = 5;

interface Pkt {
  srcCid?: number;
  dstCid?: number;
  srcPort: number;
  dstPort: number;
  op: number;
  type?: number;
  flags?: number;
  bufAlloc?: number;
  fwdCnt?: number;
  payload?: Uint8Array;
  len?: number;
}

function encode(p: Pkt): Uint8Array {
  const payload = p.payload ?? new Uint8Array(0);
  const b = new Uint8Array(VsockHdr.SIZE + payload.length);
  const v = new DataView(b.buffer);
  v.setUint32(VsockHdr.SRC_CID, p.srcCid ?? CID, true);
  v.setUint32(VsockHdr.DST_CID, p.dstCid ?? 2, true);
  v.setUint32(VsockHdr.SRC_PORT, p.srcPort, true);
  v.setUint32(VsockHdr.DST_PORT, p.dstPort, true);
  v.setUint32(VsockHdr.LEN, p.len ?? payload.length, true);
  v.setUint16(VsockHdr.TYPE, p.type ?? 1, true);
  v.setUint16(VsockHdr.OP, p.op, true);
  v.setUint32(VsockHdr.FLAGS, p.flags ?? 0, true);
  v.setUint32(VsockHdr.BUF_ALLOC, p.bufAlloc ?? 65536, true);
  v.setUint32(VsockHdr.FWD_CNT, p.fwdCnt ?? 0, true);
  b.set(payload, VsockHdr.SIZE);
  return b;
}

interface Seen {
  op: number;
  srcPort: number;
  dstPort: number;
  len: number;
  flags: number;
  bufAlloc: number;
  payload: Uint8Array;
}

class Guest {
  readonly memory: GuestMemory = createGuestMemory({ size: 4 << 20 });
  readonly dev: VsockDevice;
  readonly t: MmioDriverTransport;
  readonly q: DriverQueue<number>[] = [];
  readonly faults: unknown[] = [];
  #heap = 0x100000;
  readonly #bufs = new Map<number, { addr: number; len: number }>();
  #id = 0;

  constructor(options: Partial<VsockDeviceOptions> = {}) {
    this.dev = new VsockDevice({ guestCid: CID, queueSize: 64, ...options });
    const vm = new InThreadMmio(this.dev, { memory: this.memory, delivery: "none" });
    this.t = vm.transport;
    this.t.negotiate((o) => o & ~(1n << BigInt(Feature.RING_PACKED)));
    for (let i = 0; i < 3; i++) {
      const base = 0x10000 + i * 0x4000;
      this.q.push(
        this.t.setupQueue<number>(i, this.memory, {
          size: 64,
          desc: base,
          driver: base + 0x400,
          device: base + 0x800,
        }),
      );
    }
    this.t.driverOk();
  }

  #alloc(n: number): number {
    const a = this.#heap;
    this.#heap += (n + 15) & ~15;
    return a;
  }

  /** Send a packet on the transmit queue (one descriptor, or `writable` to break the rules). */
  send(bytes: Uint8Array, writable = false): number {
    const a = this.#alloc(bytes.length);
    this.memory.write(a, bytes);
    const id = ++this.#id;
    const seg = [{ addr: a, len: bytes.length }];
    this.q[1]!.add(writable ? [] : seg, writable ? seg : [], id);
    if (this.q[1]!.publish()) this.t.notify(1);
    return id;
  }

  /** Post `n` receive buffers of `len` bytes (readable ones with `readable`). */
  post(n: number, len = 4096, readable = false, qi = 0): void {
    for (let i = 0; i < n; i++) {
      const a = this.#alloc(len);
      const id = ++this.#id;
      this.#bufs.set(id, { addr: a, len });
      const seg = [{ addr: a, len }];
      this.q[qi]!.add(readable ? seg : [], readable ? [] : seg, id);
    }
    if (this.q[qi]!.publish()) this.t.notify(qi);
  }

  /** Packets the device put in receive buffers since the last call. */
  received(): Seen[] {
    const out: Seen[] = [];
    for (let id = this.q[0]!.reap(); id !== undefined; id = this.q[0]!.reap()) {
      const len = this.q[0]!.lastLen;
      const b = this.#bufs.get(id)!;
      if (len < VsockHdr.SIZE) continue;
      const h = new DataView(this.memory.slice(b.addr, VsockHdr.SIZE).slice().buffer);
      const plen = h.getUint32(VsockHdr.LEN, true);
      out.push({
        op: h.getUint16(VsockHdr.OP, true),
        srcPort: h.getUint32(VsockHdr.SRC_PORT, true),
        dstPort: h.getUint32(VsockHdr.DST_PORT, true),
        len: plen,
        flags: h.getUint32(VsockHdr.FLAGS, true),
        bufAlloc: h.getUint32(VsockHdr.BUF_ALLOC, true),
        payload: this.memory.slice(b.addr + VsockHdr.SIZE, plen).slice(),
      });
    }
    return out;
  }

  /** Used lengths of transmit chains, by id. */
  txUsed(): Map<number, number> {
    const m = new Map<number, number>();
    for (let id = this.q[1]!.reap(); id !== undefined; id = this.q[1]!.reap()) {
      m.set(id, this.q[1]!.lastLen);
    }
    return m;
  }
}

describe("VsockDevice (VIRTIO 1.3 §5.10)", () => {
  it("offers streams, and guest_cid reads as a le64 with the upper 32 bits zero (§5.10.4)", () => {
    const dev = new VsockDevice({ guestCid: 0x1234_5678 });
    expect(dev.features & 1n).toBe(1n); // VIRTIO_VSOCK_F_STREAM
    expect(dev.queueMaxSizes).toEqual([128, 128, 128]);
    expect(dev.readConfig(VsockConfig.GUEST_CID, 4)).toBe(0x1234_5678);
    expect(dev.readConfig(VsockConfig.GUEST_CID + 4, 4)).toBe(0);
    expect(dev.readConfig(1, 1)).toBe(0x56);
    expect(dev.readConfig(2, 2)).toBe(0x1234);
    expect(() => new VsockDevice({ guestCid: 2 })).toThrow(/options\.guestCid/);
    expect(() => new VsockDevice({ guestCid: 0xffffffff })).toThrow(/options\.guestCid/);
  });

  it("answers REQUEST with RESPONSE and its credit, delivers RW to the host stream, and sends the host's data back within the guest's credit", () => {
    const g = new Guest();
    const streams: VsockStream[] = [];
    g.dev.listen(80, (s) => {
      streams.push(s);
      s.on("data", (d) => s.write(d));
    });
    g.post(8);
    g.send(encode({ srcPort: 1000, dstPort: 80, op: VsockOp.REQUEST, bufAlloc: 3 }));
    expect(g.received()).toMatchObject([
      { op: VsockOp.RESPONSE, srcPort: 80, dstPort: 1000, bufAlloc: 262144 },
    ]);
    g.send(
      encode({
        srcPort: 1000,
        dstPort: 80,
        op: VsockOp.RW,
        bufAlloc: 3,
        payload: new Uint8Array([1, 2, 3, 4, 5]),
      }),
    );
    // The echo is held to the guest's credit of 3 bytes, then a CREDIT_REQUEST asks for more.
    expect(g.received()).toMatchObject([
      { op: VsockOp.RW, len: 3, payload: new Uint8Array([1, 2, 3]) },
      { op: VsockOp.CREDIT_REQUEST },
    ]);
    g.send(
      encode({ srcPort: 1000, dstPort: 80, op: VsockOp.CREDIT_UPDATE, bufAlloc: 3, fwdCnt: 3 }),
    );
    expect(g.received()).toMatchObject([
      { op: VsockOp.RW, len: 2, payload: new Uint8Array([4, 5]) },
    ]);
    expect(streams[0]!.bytesRead).toBe(5);
  });

  it("a guest's SHUTDOWN of both directions ends the host stream and is answered with RST (§5.10.6.5)", () => {
    const g = new Guest();
    const events: string[] = [];
    g.dev.listen(80, (s) => {
      s.on("end", () => events.push("end"));
      s.on("close", (e) => events.push(`close ${e}`));
    });
    g.post(8);
    g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    g.send(
      encode({
        srcPort: 1,
        dstPort: 80,
        op: VsockOp.SHUTDOWN,
        flags: VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND,
      }),
    );
    expect(g.received().map((p) => p.op)).toEqual([VsockOp.RESPONSE, VsockOp.RST]);
    expect(events).toEqual(["end", "close false"]);
    expect(g.dev.connectionCount).toBe(0);
  });

  it("refuses requests to ports nobody listens on and packets of no connection with RST, counting them", () => {
    const g = new Guest();
    g.post(8);
    g.send(encode({ srcPort: 1, dstPort: 81, op: VsockOp.REQUEST }));
    g.send(encode({ srcPort: 2, dstPort: 82, op: VsockOp.RW, payload: new Uint8Array(4) }));
    g.send(encode({ srcPort: 3, dstPort: 83, op: VsockOp.RST })); // never answered
    expect(g.received()).toMatchObject([
      { op: VsockOp.RST, srcPort: 81, dstPort: 1 },
      { op: VsockOp.RST, srcPort: 82, dstPort: 2 },
    ]);
    expect(g.dev.stats).toMatchObject({ refused: 1, unknownConnection: 1 });
  });

  it("refuses a seqpacket request (not offered) with RST", () => {
    const g = new Guest();
    g.dev.listen(80);
    g.post(4);
    g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST, type: 2 }));
    expect(g.received().map((p) => p.op)).toEqual([VsockOp.RST]);
    expect(g.dev.connectionCount).toBe(0);
  });

  it("drops packets with a src_cid other than the guest's or a dst_cid other than the host's (§5.10.6.4), without answering", () => {
    const g = new Guest();
    g.dev.listen(80);
    g.post(4);
    g.send(encode({ srcCid: 6, srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    g.send(encode({ dstCid: 3, srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    expect(g.received()).toEqual([]);
    expect(g.dev.stats.wrongCid).toBe(2);
    expect(g.dev.connectionCount).toBe(0);
  });

  it("resets a connection whose guest sends past its credit, so unread bytes never exceed bufferBytes", () => {
    const g = new Guest({ bufferBytes: 4096 });
    let stream!: VsockStream;
    const errors: unknown[] = [];
    g.dev.listen(80, (s) => {
      stream = s;
      s.pause(); // the host application reads nothing
      s.on("error", (e) => errors.push(e));
    });
    g.post(8);
    g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    for (let i = 0; i < 3; i++) {
      g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.RW, payload: new Uint8Array(2000) }));
    }
    expect(stream.heldBytes).toBe(4000);
    expect(g.dev.stats.creditViolations).toBe(1);
    expect(errors).toMatchObject([{ code: "ECONNRESET" }]);
    expect(g.received().map((p) => p.op)).toEqual([VsockOp.RESPONSE, VsockOp.RST]);
  });

  it("refuses requests past maxConnections with RST", () => {
    const g = new Guest({ maxConnections: 3 });
    g.dev.listen(80);
    g.post(16);
    for (let p = 1; p <= 5; p++) g.send(encode({ srcPort: p, dstPort: 80, op: VsockOp.REQUEST }));
    expect(g.received().map((p) => p.op)).toEqual([
      VsockOp.RESPONSE,
      VsockOp.RESPONSE,
      VsockOp.RESPONSE,
      VsockOp.RST,
      VsockOp.RST,
    ]);
    expect(g.dev.connectionCount).toBe(3);
  });

  it("keeps at most 256 RSTs for packets of no connection while the guest posts no receive buffer", () => {
    const g = new Guest();
    for (let i = 0; i < 300; i++) {
      g.send(encode({ srcPort: i, dstPort: 9, op: VsockOp.RW, payload: new Uint8Array(1) }));
      g.txUsed();
    }
    expect(g.dev.stats.rstDropped).toBe(44);
    g.post(64);
    expect(g.received()).toHaveLength(64);
  });

  it("returns malformed buffers with length 0 as VsockFaults and keeps serving: short header, bad len, writable in tx, readable in rx", () => {
    const g = new Guest();
    g.dev.listen(80);
    const short = g.send(new Uint8Array(20));
    const bad = g.send(
      encode({ srcPort: 1, dstPort: 80, op: VsockOp.RW, len: 100, payload: new Uint8Array(4) }),
    );
    const w = g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }), true);
    expect(g.txUsed()).toEqual(
      new Map([
        [short, 0],
        [bad, 0],
        [w, 0],
      ]),
    );
    expect(g.dev.stats.malformed).toBe(3);
    // A readable receive buffer is skipped (returned with length 0); the next one is used.
    g.post(1, 4096, true);
    g.post(1);
    g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    expect(g.received().map((p) => p.op)).toEqual([VsockOp.RESPONSE]);
    expect(g.dev.stats.malformed).toBe(4);
    expect(new VsockFault("vsock-short-header", 1, 20).code).toBe("vsock-short-header");
  });

  it("writes TRANSPORT_RESET to the event queue and fails every host stream (§5.10.6.7)", () => {
    const g = new Guest();
    const errors: unknown[] = [];
    g.dev.listen(80, (s) => s.on("error", (e) => errors.push(e)));
    g.post(4);
    g.send(encode({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    g.dev.transportReset();
    expect(errors).toMatchObject([{ code: "ERR_VSOCK_RESET" }]);
    // No event buffer yet: the event waits for one.
    g.post(1, VsockEvent.SIZE, false, 2);
    const id = g.q[2]!.reap();
    expect(id).toBeDefined();
    expect(g.q[2]!.lastLen).toBe(4);
    expect(g.dev.stats.transportResets).toBe(1);
  });
});
