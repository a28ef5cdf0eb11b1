/**
 * "any virtio-net device": checks a third-party virtio-net {@link DeviceModel} (VIRTIO 1.3
 * §5.1) through our virtio-mmio transport, raw driver queues the suite fills itself, and a
 * recording {@link NetBackend} the suite hands to the adapter's factory.
 * @module
 */
import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import {
  DeviceId,
  featureMask,
  hasFeature,
  NetConfig,
  NetCtrlAck,
  NetFeature,
  NetHdr,
  NetHdrFlags,
  NetStatus,
} from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { pattern } from "./blk-rig.js";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { noThrow, QueueRig } from "./queue-rig.js";
import { MAX_TURNS } from "./wait.js";

/**
 * The network back-end the suite gives a device under test: it records every frame the device
 * transmits (copies) and injects frames through the sink the device attaches.
 */
export class RecordingNetBackend implements NetBackend {
  /** Frames the device transmitted, in order (copies). */
  readonly frames: Uint8Array[] = [];
  /** The sink the device attached, or undefined before `attach` / after `detach`. */
  sink: NetFrameSink | undefined = undefined;
  /** Times the device called `rxReady`. */
  rxReadyCalls = 0;

  /** Record `frame`; always accepts it. */
  transmit(frame: Uint8Array): boolean {
    this.frames.push(frame.slice());
    return true;
  }

  /** Keep `sink` for injection. */
  attach(sink: NetFrameSink): void {
    this.sink = sink;
  }

  /** Forget the sink. */
  detach(): void {
    this.sink = undefined;
  }

  /** Count the call. */
  rxReady(): void {
    this.rxReadyCalls++;
  }
}

/**
 * How the "any virtio-net device" suite reaches a third-party network device.
 *
 * Implementer contract: `create` returns a fresh, never activated {@link DeviceModel} with
 * device ID 1 that moves plain Ethernet frames (no `virtio_net_hdr`) to and from `backend`
 * (the {@link NetBackend} contract of `@virtio-ts/devices`: `transmit` per guest frame, frames
 * delivered through the sink passed to `attach`), every time it is called.
 */
export interface NetDeviceAdapter<M extends DeviceModel = DeviceModel> {
  /** A fresh device model whose network is `backend`. */
  create(backend: NetBackend): M | Promise<M>;
  /** Optional: the MAC address the device must report in config `mac` when it offers MAC. */
  readonly mac?: Uint8Array;
  /**
   * Optional: resolves when the model has no work in flight (or after one round of it).
   * Default: the model's own `whenIdle` (an optional hook of the device contract), if any.
   */
  whenIdle?(model: M): Promise<void>;
}

const RX = 0;
const TX = 1;
const CTRL = 2;
const HDR = NetHdr.SIZE;
/** Receive buffer size without MRG_RXBUF: a 1514-byte frame plus the header, rounded up. */
const RX_BUF = 1600;
const CANARY = 0x5a;

const BITS = {
  mac: featureMask(NetFeature.MAC),
  status: featureMask(NetFeature.STATUS),
  mtu: featureMask(NetFeature.MTU),
  csum: featureMask(NetFeature.CSUM),
  ctrl: featureMask(NetFeature.CTRL_VQ),
  mrg: featureMask(NetFeature.MRG_RXBUF),
};
/** Bits that change nothing the suite relies on (no offloads to the guest, no filtering). */
const BASE = BITS.mac | BITS.status | BITS.mtu | BITS.ctrl;

interface Net {
  readonly rig: QueueRig;
  readonly backend: RecordingNetBackend;
  readonly mtu: number;
}

async function net(a: NetDeviceAdapter, kind: ContractTransport, extra = 0n): Promise<Net> {
  const backend = new RecordingNetBackend();
  const model = await a.create(backend);
  if (model.deviceId !== DeviceId.NET) {
    throw new ContractViolation("the model's deviceId (§5.1.1)", DeviceId.NET, model.deviceId);
  }
  const rig = new QueueRig(model, kind, a.whenIdle?.bind(a)).init(
    (offered) => offered & (BASE | extra),
    (f) => (hasFeature(f, NetFeature.CTRL_VQ) ? [RX, TX, CTRL] : [RX, TX]),
  );
  const mtu = hasFeature(rig.features, NetFeature.MTU)
    ? rig.transport.readConfig((c) => c.u16(NetConfig.MTU))
    : 1500;
  return { rig, backend, mtu };
}

/** An Ethernet frame of `len` bytes: broadcast destination, a local source, EtherType 0x88b5. */
function frame(len: number, seed: number): Uint8Array {
  const f = pattern(len, seed);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0x00, 0x5e, 0x10, 0x00, seed & 0xff], 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

/** A `virtio_net_hdr_v1` with `flags`, `gso_type`, `csum_start` and `csum_offset`. */
function header(o: { flags?: number; gso?: number; start?: number; offset?: number } = {}) {
  const h = new Uint8Array(HDR);
  h[NetHdr.FLAGS] = o.flags ?? 0;
  h[NetHdr.GSO_TYPE] = o.gso ?? 0;
  h[NetHdr.CSUM_START] = (o.start ?? 0) & 0xff;
  h[NetHdr.CSUM_START + 1] = (o.start ?? 0) >>> 8;
  h[NetHdr.CSUM_OFFSET] = (o.offset ?? 0) & 0xff;
  h[NetHdr.CSUM_OFFSET + 1] = (o.offset ?? 0) >>> 8;
  return h;
}

function u16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

function endsWith(f: Uint8Array, tail: Uint8Array): boolean {
  if (f.length < tail.length) return false;
  const off = f.length - tail.length;
  return tail.every((b, i) => f[off + i] === b);
}

/** Wait (bounded) until the back-end holds `n` frames, then a few turns more for extras. */
async function frames(n: Net, count: number, what: string): Promise<Uint8Array[]> {
  await n.rig.until(() => n.backend.frames.length >= count);
  for (let i = 0; i < 4; i++) await n.rig.turn();
  expectEqual(`${what}: frames the back-end received`, n.backend.frames.length, count);
  return n.backend.frames;
}

/** Deliver `f` through the device's sink, retrying (bounded) while it refuses. */
async function inject(n: Net, f: Uint8Array, what: string): Promise<void> {
  for (let i = 0; i < MAX_TURNS; i++) {
    if (n.backend.sink?.deliver(f)) return;
    await n.rig.turn();
  }
  throw new ContractViolation(
    `${what}: deliver() after DRIVER_OK with receive buffers posted`,
    "the frame accepted",
    n.backend.sink === undefined ? "no sink attached to the back-end" : "refused every time",
  );
}

/** The header at the start of an rx completion, and the payload after it. */
function split(data: Uint8Array, len: number): { hdr: Uint8Array; body: Uint8Array } {
  return { hdr: data.subarray(0, HDR), body: data.subarray(HDR, len) };
}

const checks: ContractCheck<NetDeviceAdapter>[] = [
  {
    name: "offers a configuration consistent with its feature bits",
    spec: "§5.1.4, §5.1.4.1",
    async run({ adapter, transport }) {
      const { rig, mtu } = await net(adapter, transport);
      const f = rig.offered;
      const cfg = rig.transport.readConfig((c) => ({
        mac: Uint8Array.from({ length: 6 }, (_, i) => c.u8(NetConfig.MAC + i)),
        status: c.u16(NetConfig.STATUS),
        pairs: c.u16(NetConfig.MAX_VIRTQUEUE_PAIRS),
      }));
      if (hasFeature(f, NetFeature.MAC) && adapter.mac !== undefined) {
        expectEqual("config mac with VIRTIO_NET_F_MAC", cfg.mac, adapter.mac);
      }
      if (hasFeature(rig.features, NetFeature.STATUS)) {
        // Only LINK_UP and ANNOUNCE are defined; ANNOUNCE needs GUEST_ANNOUNCE (not negotiated).
        expectEqual(
          "config status bits other than VIRTIO_NET_S_LINK_UP (GUEST_ANNOUNCE not negotiated)",
          cfg.status & ~NetStatus.LINK_UP,
          0,
        );
      }
      if (hasFeature(f, NetFeature.MTU)) {
        expectThat(
          "config mtu with VIRTIO_NET_F_MTU",
          mtu >= 68 && mtu <= 65535,
          "in [68, 65535]",
          mtu,
        );
      }
      if (hasFeature(f, NetFeature.MQ)) {
        expectThat(
          "config max_virtqueue_pairs with VIRTIO_NET_F_MQ",
          cfg.pairs >= 1 && cfg.pairs <= 0x8000,
          "in [1, 0x8000]",
          cfg.pairs,
        );
      }
    },
  },
  {
    name: "passes a transmitted frame to the back-end without the virtio_net_hdr",
    spec: "§5.1.6.2, §5.1.4.1",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      const a = frame(60, 1);
      const b = frame(1000, 2);
      const big = frame(Math.min(n.mtu + 14, 9014), 3);
      const ps = [
        // Header and frame in one descriptor, then in separate ones, then split at odd points.
        rig.submit(TX, [Uint8Array.from([...header(), ...a])]),
        rig.submit(TX, [header(), b.subarray(0, 7), b.subarray(7, 501), b.subarray(501)]),
        // §5.1.4.1: with MTU negotiated, frames up to mtu + 14 bytes MUST be forwarded.
        rig.submit(TX, [header().subarray(0, 5), header().subarray(5), big]),
      ];
      await rig.wait(ps, "transmit");
      const got = await frames(n, 3, "three transmitted frames");
      expectEqual("frame 1 at the back-end (header and frame in one descriptor)", got[0], a);
      expectEqual("frame 2 at the back-end (header in its own descriptor)", got[1], b);
      expectEqual(`frame 3 (${big.length} bytes, mtu ${n.mtu}) at the back-end`, got[2], big);
    },
  },
  {
    name: "delivers a received frame behind a virtio_net_hdr_v1 with num_buffers 1",
    spec: "§5.1.6.3, §5.1.6.4, §5.1.6.4.1",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      for (const [len, seed] of [
        [60, 4],
        [Math.min(1514, n.mtu + 14), 5],
      ] as const) {
        const p = rig.submit(RX, [], [RX_BUF], CANARY);
        const f = frame(len, seed);
        await inject(n, f, `a ${len}-byte frame`);
        const [c] = await rig.wait([p], `receive of a ${len}-byte frame`);
        expectEqual(`used length of a ${len}-byte frame`, c!.len, HDR + len);
        const { hdr, body } = split(c!.data, c!.len);
        expectEqual(`num_buffers of a ${len}-byte frame`, u16(hdr, NetHdr.NUM_BUFFERS), 1);
        expectEqual("gso_type (no GUEST_TSO/UFO negotiated)", hdr[NetHdr.GSO_TYPE], 0);
        expectEqual("flags (GUEST_CSUM not negotiated)", hdr[NetHdr.FLAGS], 0);
        expectEqual(`the ${len}-byte frame after the header`, body, f);
      }
    },
  },
  {
    name: "merges a frame across receive buffers with num_buffers when VIRTIO_NET_F_MRG_RXBUF is negotiated",
    spec: "§5.1.6.3.1, §5.1.6.4, §5.1.6.4.1",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport, BITS.mrg);
      const { rig } = n;
      if (!hasFeature(rig.features, NetFeature.MRG_RXBUF)) return;
      const ps = Array.from({ length: 12 }, () => rig.submit(RX, [], [256], CANARY));
      const f = frame(1000, 6);
      await inject(n, f, "a 1000-byte frame");
      const order = rig.usedOrder.get(RX)!;
      await rig.until(() => order.length >= 1);
      expectThat("receive buffers used for a 1000-byte frame", order.length >= 1, ">= 1", 0);
      const byId = new Map(ps.map((p) => [p.id, p]));
      const first = rig.completion(byId.get(order[0]!)!);
      const nb = u16(first.data, NetHdr.NUM_BUFFERS);
      expectThat(
        "num_buffers of a 1000-byte frame in 256-byte buffers",
        nb >= Math.ceil((HDR + 1000) / 256) && nb <= ps.length,
        `in [${Math.ceil((HDR + 1000) / 256)}, ${ps.length}]`,
        nb,
      );
      await rig.until(() => order.length >= nb);
      expectEqual("used buffers of the merged frame (num_buffers)", order.length, nb);
      const cs = order.map((id) => rig.completion(byId.get(id)!));
      const joined = new Uint8Array(cs.reduce((s, c) => s + c.len, 0));
      let off = 0;
      for (const c of cs) {
        expectThat("used length of a 256-byte receive buffer", c.len <= 256, "<= 256", c.len);
        joined.set(c.data.subarray(0, c.len), off);
        off += c.len;
      }
      expectEqual("total used length of the merged frame", joined.length, HDR + 1000);
      expectEqual("the frame after the header, across the buffers", joined.subarray(HDR), f);
      // A small frame still fits in one buffer: num_buffers 1.
      const g = frame(100, 7);
      await inject(n, g, "a 100-byte frame");
      await rig.until(() => order.length >= nb + 1);
      expectEqual("used buffers after a 100-byte frame", order.length, nb + 1);
      const c = rig.completion(byId.get(order[nb]!)!);
      expectEqual("num_buffers of a 100-byte frame", u16(c.data, NetHdr.NUM_BUFFERS), 1);
      expectEqual("the 100-byte frame", c.data.subarray(HDR, c.len), g);
    },
  },
  {
    name: "drops a transmit chain shorter than the header or with gso_type set, and still completes it",
    spec: "§5.1.6.2, §5.1.6.2.1, §2.7.8",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      const ok = frame(80, 8);
      const ps = noThrow("malformed transmit chains", () => [
        // 10 bytes: a legacy-sized header only, short of the 12 bytes of virtio_net_hdr_v1.
        rig.submit(TX, [header().subarray(0, 10)]),
        rig.submit(TX, [new Uint8Array(5)]),
        // gso_type TCPV4 without VIRTIO_NET_F_HOST_TSO4 negotiated.
        rig.submit(TX, [header({ gso: 1 }), frame(200, 9)]),
        rig.submit(TX, [header(), ok]),
      ]);
      await rig.wait(ps, "malformed and valid transmit chains");
      const got = await frames(n, 1, "after two short chains, a GSO frame and a valid frame");
      expectThat(
        "the forwarded frame",
        endsWith(got[0]!, ok),
        "the valid 80-byte frame",
        `${got[0]!.length} bytes`,
      );
      expectThat("DEVICE_NEEDS_RESET after a malformed frame", !rig.needsReset, "clear", "set");
    },
  },
  {
    name: "reports used lengths within the device-writable part of each buffer",
    spec: "§2.7.8, §5.1.6.2, §5.1.6.4",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      const tx = [
        rig.submit(TX, [header(), frame(64, 10)]),
        rig.submit(TX, [header(), frame(1200, 11)]),
      ];
      const cs = await rig.wait(tx, "transmit");
      for (const [i, c] of cs.entries()) {
        expectEqual(`used length of transmit chain ${i} (no writable bytes)`, c.len, 0);
      }
      for (const size of [HDR + 60, RX_BUF, 4096]) {
        const p = rig.submit(RX, [], [size], CANARY);
        await inject(n, frame(60, size), `a 60-byte frame into a ${size}-byte buffer`);
        const [c] = await rig.wait([p], "receive");
        expectThat(
          `used length of a ${size}-byte receive buffer`,
          c!.len <= size,
          `<= ${size}`,
          c!.len,
        );
      }
    },
  },
  {
    name: "completes a partial checksum when VIRTIO_NET_F_CSUM is negotiated",
    spec: "§5.1.6.2",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport, BITS.csum);
      const { rig } = n;
      if (!hasFeature(rig.features, NetFeature.CSUM)) return;
      const f = frame(120, 12);
      const start = 34;
      const offset = 6;
      // A seed in the checksum field (as a pseudo-header sum would be).
      f[start + offset] = 0x12;
      f[start + offset + 1] = 0x34;
      const want = f.slice();
      let s = 0;
      for (let i = start; i < want.length; i += 2) s += (want[i]! << 8) | (want[i + 1] ?? 0);
      while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
      const sum = ~s & 0xffff;
      want[start + offset] = sum >>> 8;
      want[start + offset + 1] = sum & 0xff;
      const p = rig.submit(TX, [header({ flags: NetHdrFlags.NEEDS_CSUM, start, offset }), f]);
      await rig.wait([p], "NEEDS_CSUM frame");
      const [got] = await frames(n, 1, "a NEEDS_CSUM frame");
      const tail = got!.subarray(Math.max(0, got!.length - f.length));
      expectEqual(
        `checksum at csum_start ${start} + csum_offset ${offset}`,
        (tail[start + offset]! << 8) | tail[start + offset + 1]!,
        sum,
      );
      expectEqual("the rest of the frame", tail, want);
    },
  },
  {
    name: "answers a control command of an unknown class with VIRTIO_NET_ERR",
    spec: "§5.1.6.5",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      if (!hasFeature(rig.features, NetFeature.CTRL_VQ)) return;
      // 0xee is no class of §5.1.6.5.
      const ps = [
        rig.submit(CTRL, [Uint8Array.of(0xee, 0), Uint8Array.of(1)], [1], 0x77),
        rig.submit(CTRL, [Uint8Array.of(0xee, 3)], [1], 0x77),
      ];
      const cs = await rig.wait(ps, "control commands");
      cs.forEach((c, i) => {
        expectEqual(`ack of unknown-class command ${i}`, c.data[0], NetCtrlAck.ERR);
        expectThat(`used length of command ${i} (the ack byte)`, c.len === 1, 1, c.len);
      });
    },
  },
  {
    name: "survives a descriptor loop: DEVICE_NEEDS_RESET with a notification, or the chain returned",
    spec: "§2.1.2, §2.7.5.2",
    async run({ adapter, transport }) {
      const n = await net(adapter, transport);
      const { rig } = n;
      const p = noThrow("descriptor loop", () =>
        rig.submit(TX, [header(), frame(64, 13)], [], 0, true, true),
      );
      for (let i = 0; i < 20 && !rig.needsReset && !rig.isDone(p); i++) await rig.turn();
      if (rig.needsReset) {
        expectThat(
          "configuration change bit in InterruptStatus with DEVICE_NEEDS_RESET",
          rig.configInterrupt,
          "set",
          "not set",
        );
        return;
      }
      // §2.1.2 lets a device recover instead: then the chain must come back and the queue serve.
      expectThat("the looping chain", rig.isDone(p), "used, or DEVICE_NEEDS_RESET set", "neither");
      expectEqual("used length of the looping transmit chain", rig.completion(p).len, 0);
      const ok = frame(70, 14);
      await rig.wait([rig.submit(TX, [header(), ok])], "a valid frame after the loop");
      const got = await frames(n, 1, "a valid frame after the loop");
      expectThat("the forwarded frame", endsWith(got[0]!, ok), "the valid frame", got[0]!.length);
    },
  },
];

/**
 * The "any virtio-net device" suite (VIRTIO 1.3 §5.1): configuration per offered feature,
 * transmit without the header (MTU-sized frames included), receive behind a
 * `virtio_net_hdr_v1` with `num_buffers` (merged with MRG_RXBUF), short or GSO transmit chains
 * dropped but completed, used lengths, checksum completion with CSUM, VIRTIO_NET_ERR for an
 * unknown control class, and a descriptor loop either putting the device into
 * DEVICE_NEEDS_RESET (with a configuration change notification) or being returned while the
 * queue keeps serving (§2.1.2 makes DEVICE_NEEDS_RESET a MAY).
 *
 * The suite negotiates MAC, STATUS, MTU and CTRL_VQ when offered (plus MRG_RXBUF, CSUM or MQ in
 * the checks about them), never a receive offload or filtering; checks of an optional feature
 * pass when it is not offered.
 */
export const netDeviceSuite: ContractSuite<NetDeviceAdapter> = {
  name: "any virtio-net device",
  checks,
};
