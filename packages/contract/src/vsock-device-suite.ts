/**
 * "any virtio-vsock device": checks a third-party virtio-vsock {@link DeviceModel} (VIRTIO 1.3
 * §5.10) through our virtio-mmio or virtio-pci transport and raw driver queues the suite fills
 * with packets it builds itself, against an echo service the adapter runs on the device's host
 * side.
 * @module
 */
import {
  DeviceId,
  featureMask,
  VsockCid,
  VsockConfig,
  VsockFeature,
  VsockHdr,
  VsockOp,
  VsockShutdownFlags,
  VsockType,
} from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { noThrow, type QueuePending, QueueRig } from "./queue-rig.js";

/** What the suite asks the adapter's factory for. */
export interface VsockDeviceSetup {
  /** The guest's context ID the device reports in `guest_cid`. */
  readonly guestCid: number;
  /**
   * A host port on which the device's host side accepts stream connections and sends back
   * every byte received, in order, until the guest stops sending.
   */
  readonly echoPort: number;
}

/**
 * How the "any virtio-vsock device" suite reaches a third-party socket device.
 *
 * Implementer contract: `create` returns a fresh, never activated {@link DeviceModel} with
 * device ID 19 and `guest_cid` `setup.guestCid`, whose host side listens on `setup.echoPort`
 * and echoes each connection's bytes back (and nothing listens on any other host port).
 */
export interface VsockDeviceAdapter<M extends DeviceModel = DeviceModel> {
  /** A fresh socket device as `setup` says. */
  create(setup: VsockDeviceSetup): M | Promise<M>;
  /**
   * Optional: resolves when the model has no work in flight (or after one round of it).
   * Default: the model's own `whenIdle` (an optional hook of the device contract), if any.
   */
  whenIdle?(model: M): Promise<void>;
}

const CID = 0x1234;
const ECHO = 7;
const RX = 0;
const TX = 1;
const HDR = VsockHdr.SIZE;

/** One packet the suite sends or saw. */
interface Packet {
  readonly srcCid: number;
  readonly srcCidHigh: number;
  readonly dstCid: number;
  readonly dstCidHigh: number;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly len: number;
  readonly type: number;
  readonly op: number;
  readonly flags: number;
  readonly bufAlloc: number;
  readonly fwdCnt: number;
  readonly payload: Uint8Array;
  /** Used length of the receive buffer it came in, and that buffer's size. */
  readonly used: number;
  readonly size: number;
}

interface Out {
  srcPort: number;
  dstPort: number;
  op: number;
  type?: number;
  flags?: number;
  bufAlloc?: number;
  fwdCnt?: number;
  payload?: Uint8Array;
}

function encode(p: Out): Uint8Array {
  const payload = p.payload ?? new Uint8Array(0);
  const b = new Uint8Array(HDR + payload.length);
  const v = new DataView(b.buffer);
  v.setUint32(VsockHdr.SRC_CID, CID, true);
  v.setUint32(VsockHdr.DST_CID, VsockCid.HOST, true);
  v.setUint32(VsockHdr.SRC_PORT, p.srcPort, true);
  v.setUint32(VsockHdr.DST_PORT, p.dstPort, true);
  v.setUint32(VsockHdr.LEN, payload.length, true);
  v.setUint16(VsockHdr.TYPE, p.type ?? VsockType.STREAM, true);
  v.setUint16(VsockHdr.OP, p.op, true);
  v.setUint32(VsockHdr.FLAGS, p.flags ?? 0, true);
  v.setUint32(VsockHdr.BUF_ALLOC, p.bufAlloc ?? 65536, true);
  v.setUint32(VsockHdr.FWD_CNT, p.fwdCnt ?? 0, true);
  b.set(payload, HDR);
  return b;
}

/** The guest side of a device under test: raw queues and the packets the device sent. */
class VsockRig {
  readonly rig: QueueRig;
  readonly seen: Packet[] = [];
  #posted: { p: QueuePending; size: number }[] = [];

  constructor(rig: QueueRig) {
    this.rig = rig;
  }

  /** Post `n` receive buffers of `size` bytes. */
  post(n: number, size = 4096): void {
    for (let i = 0; i < n; i++) {
      this.#posted.push({
        p: noThrow("posting a receive buffer", () => this.rig.submit(RX, [], [size], 0xcc)),
        size,
      });
    }
  }

  /** Send one packet on the transmit queue. */
  send(p: Out): QueuePending {
    return noThrow(`sending op ${p.op}`, () => this.rig.submit(TX, [encode(p)]));
  }

  /** Run the device until `cond` (or a bounded number of turns); collect what it sent. */
  async until(cond: () => boolean): Promise<boolean> {
    const ok = await this.rig.until(() => {
      this.#collect();
      return cond();
    });
    this.#collect();
    return ok;
  }

  /** Run a few turns (a device that would misbehave has the time to), then collect. */
  async settle(): Promise<void> {
    await this.rig.until(() => false, 20);
    this.#collect();
  }

  /** Packets the device sent from host port `h` to guest port `g`. */
  on(g: number, h: number): Packet[] {
    return this.seen.filter((p) => p.dstPort === g && p.srcPort === h);
  }

  #collect(): void {
    const keep: { p: QueuePending; size: number }[] = [];
    for (const b of this.#posted) {
      if (!this.rig.isDone(b.p)) {
        keep.push(b);
        continue;
      }
      const c = this.rig.completion(b.p);
      expectThat(
        "used length of a receive buffer (§2.7.8, §5.10.6)",
        c.len <= b.size,
        `<= ${b.size}`,
        c.len,
      );
      if (c.len < HDR) {
        throw new ContractViolation(
          "used length of a receive buffer (§5.10.6)",
          `>= ${HDR}`,
          c.len,
        );
      }
      const v = new DataView(c.data.buffer, c.data.byteOffset, HDR);
      const len = v.getUint32(VsockHdr.LEN, true);
      expectThat(
        "payload len of a packet against its used length (§5.10.6)",
        HDR + len <= c.len,
        `<= ${c.len - HDR}`,
        len,
      );
      this.seen.push({
        srcCid: v.getUint32(VsockHdr.SRC_CID, true),
        srcCidHigh: v.getUint32(VsockHdr.SRC_CID + 4, true),
        dstCid: v.getUint32(VsockHdr.DST_CID, true),
        dstCidHigh: v.getUint32(VsockHdr.DST_CID + 4, true),
        srcPort: v.getUint32(VsockHdr.SRC_PORT, true),
        dstPort: v.getUint32(VsockHdr.DST_PORT, true),
        len,
        type: v.getUint16(VsockHdr.TYPE, true),
        op: v.getUint16(VsockHdr.OP, true),
        flags: v.getUint32(VsockHdr.FLAGS, true),
        bufAlloc: v.getUint32(VsockHdr.BUF_ALLOC, true),
        fwdCnt: v.getUint32(VsockHdr.FWD_CNT, true),
        payload: c.data.slice(HDR, HDR + len),
        used: c.len,
        size: b.size,
      });
    }
    this.#posted = keep;
  }
}

async function rig(a: VsockDeviceAdapter, kind: ContractTransport): Promise<VsockRig> {
  const model = await a.create({ guestCid: CID, echoPort: ECHO });
  if (model.deviceId !== DeviceId.VSOCK) {
    throw new ContractViolation("the model's deviceId (§5.10.1)", DeviceId.VSOCK, model.deviceId);
  }
  const q = new QueueRig(model, kind, a.whenIdle?.bind(a)).init(
    (o) => o & featureMask(VsockFeature.STREAM),
    () => [0, 1, 2],
  );
  return new VsockRig(q);
}

/** Connect guest port `g` to the echo port; returns the RESPONSE. */
async function connect(r: VsockRig, g: number, bufAlloc = 65536): Promise<Packet> {
  r.send({ srcPort: g, dstPort: ECHO, op: VsockOp.REQUEST, bufAlloc });
  await r.until(() => r.on(g, ECHO).length > 0);
  const got = r.on(g, ECHO);
  expectThat("a reply to a REQUEST to the listening port", got.length > 0, "RESPONSE", "nothing");
  expectEqual(
    "op of the reply to a REQUEST to the listening port (§5.10.6.5)",
    got[0]!.op,
    VsockOp.RESPONSE,
  );
  return got[0]!;
}

function rwBytes(ps: readonly Packet[]): Uint8Array {
  const rw = ps.filter((p) => p.op === VsockOp.RW);
  const out = new Uint8Array(rw.reduce((n, p) => n + p.len, 0));
  let at = 0;
  for (const p of rw) {
    out.set(p.payload, at);
    at += p.len;
  }
  return out;
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 13 + (i >> 7)) & 0xff;
  return b;
}

const checks: ContractCheck<VsockDeviceAdapter>[] = [
  {
    name: "reports a guest_cid that is not reserved, its upper 32 bits zero",
    spec: "§5.10.4, §5.10.6.4.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const lo = r.rig.transport.readConfig((c) => c.u32(VsockConfig.GUEST_CID));
      const hi = r.rig.transport.readConfig((c) => c.u32(VsockConfig.GUEST_CID + 4));
      expectEqual("the upper 32 bits of guest_cid", hi, 0);
      expectThat(
        "guest_cid (0, 1, 2 and 0xffffffff are reserved)",
        lo > VsockCid.HOST && lo !== VsockCid.ANY,
        "not reserved",
        lo,
      );
      expectEqual("guest_cid", lo, CID);
    },
  },
  {
    name: "answers a REQUEST to a listening port with RESPONSE from the host to guest_cid, with valid credit fields",
    spec: "§5.10.6.5, §5.10.6.3.2, §5.10.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(4);
      const p = await connect(r, 1001);
      expectEqual("src_cid of the RESPONSE", p.srcCid, VsockCid.HOST);
      expectEqual("dst_cid of the RESPONSE", p.dstCid, CID);
      expectEqual("upper 32 bits of src_cid and dst_cid", p.srcCidHigh | p.dstCidHigh, 0);
      expectEqual("type of the RESPONSE", p.type, VsockType.STREAM);
      expectThat("buf_alloc of the RESPONSE", p.bufAlloc > 0, "> 0", p.bufAlloc);
    },
  },
  {
    name: "carries a stream's bytes in order, byte-exact, split to fit the receive buffers",
    spec: "§5.10.6.2, §5.10.6.4, §2.7.8",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(64, 300);
      await connect(r, 1002);
      const data = bytes(10_000, 3);
      for (let at = 0; at < data.length; at += 2500) {
        r.send({
          srcPort: 1002,
          dstPort: ECHO,
          op: VsockOp.RW,
          payload: data.subarray(at, at + 2500),
        });
      }
      await r.until(() => rwBytes(r.on(1002, ECHO)).length >= data.length);
      expectEqual("the echoed stream", rwBytes(r.on(1002, ECHO)), data);
    },
  },
  {
    name: "sends RW payload only within the guest's free buffer space",
    spec: "§5.10.6.3.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(32);
      await connect(r, 1003, 100);
      const data = bytes(300, 5);
      r.send({ srcPort: 1003, dstPort: ECHO, op: VsockOp.RW, bufAlloc: 100, payload: data });
      // The guest's buffer holds 100 bytes; it reads nothing until it says so.
      await r.until(() => rwBytes(r.on(1003, ECHO)).length >= 100);
      await r.settle();
      let sent = rwBytes(r.on(1003, ECHO)).length;
      expectThat(
        "RW bytes sent to a guest with buf_alloc 100 and fwd_cnt 0",
        sent <= 100,
        "<= 100",
        sent,
      );
      // Grant room in two steps, checking the device stays within each.
      for (const fwd of [100, 200]) {
        r.send({
          srcPort: 1003,
          dstPort: ECHO,
          op: VsockOp.CREDIT_UPDATE,
          bufAlloc: 100,
          fwdCnt: fwd,
        });
        await r.until(() => rwBytes(r.on(1003, ECHO)).length >= fwd + 100);
        await r.settle();
        sent = rwBytes(r.on(1003, ECHO)).length;
        expectThat(
          `RW bytes sent after fwd_cnt ${fwd}`,
          sent <= fwd + 100,
          `<= ${fwd + 100}`,
          sent,
        );
      }
      expectEqual("the echoed stream", rwBytes(r.on(1003, ECHO)), data);
    },
  },
  {
    name: "answers a REQUEST to a port nobody listens on with RST",
    spec: "§5.10.6.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(4);
      r.send({ srcPort: 1004, dstPort: ECHO + 1, op: VsockOp.REQUEST });
      await r.until(() => r.on(1004, ECHO + 1).length > 0);
      expectEqual(
        "op of the reply to a REQUEST to a port nobody listens on",
        r.on(1004, ECHO + 1)[0]?.op,
        VsockOp.RST,
      );
    },
  },
  {
    name: "answers a packet of an unknown type with RST",
    spec: "§5.10.6.4.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(4);
      r.send({ srcPort: 1005, dstPort: ECHO, op: VsockOp.REQUEST, type: 9 });
      await r.until(() => r.on(1005, ECHO).length > 0);
      expectEqual("op of the reply to a packet of type 9", r.on(1005, ECHO)[0]?.op, VsockOp.RST);
    },
  },
  {
    name: "processes the transmit queue while the guest posts no receive buffer",
    spec: "§5.10.6.1.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const ps = [1, 2, 3, 4, 5, 6].map((i) =>
        r.send({ srcPort: 1100 + i, dstPort: ECHO, op: VsockOp.REQUEST }),
      );
      await r.rig.until(() => ps.every((p) => r.rig.isDone(p)));
      const used = ps.filter((p) => r.rig.isDone(p)).length;
      expectEqual("transmit buffers used with no receive buffer posted", used, ps.length);
      r.post(8);
      await r.until(() => r.seen.length >= 6);
      expectEqual(
        "RESPONSEs once receive buffers are posted",
        r.seen.filter((p) => p.op === VsockOp.RESPONSE).length,
        6,
      );
    },
  },
  {
    name: "answers a guest's SHUTDOWN of both directions with RST (clean disconnect)",
    spec: "§5.10.6.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      r.post(8);
      await connect(r, 1006);
      r.send({
        srcPort: 1006,
        dstPort: ECHO,
        op: VsockOp.SHUTDOWN,
        flags: VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND,
      });
      await r.until(() => r.on(1006, ECHO).some((p) => p.op === VsockOp.RST));
      expectThat(
        "an RST after the guest's SHUTDOWN of both directions",
        r.on(1006, ECHO).some((p) => p.op === VsockOp.RST),
        "RST",
        r
          .on(1006, ECHO)
          .map((p) => p.op)
          .join(","),
      );
    },
  },
];

/**
 * The "any virtio-vsock device" suite (VIRTIO 1.3 §5.10): `guest_cid` not reserved with zero
 * upper bits; REQUEST answered with RESPONSE (host to guest, valid credit) or RST when nothing
 * listens; streams carried byte-exact and split to fit receive buffers; RW only within the
 * guest's free buffer space; RST for an unknown type; the transmit queue processed with no
 * receive buffer posted; RST after a guest's full SHUTDOWN.
 */
export const vsockDeviceSuite: ContractSuite<VsockDeviceAdapter> = {
  name: "any virtio-vsock device",
  checks,
};
