/**
 * The virtio-net device model: its options, identity, configuration space, activation and
 * reset, and its state for suspend / resume. The receive, transmit and control paths are in
 * `net-rx.ts`, `net-tx.ts` and `net-ctrl.ts`.
 * @module
 */
import {
  DeviceId,
  ETH_ALEN,
  ETH_HLEN,
  Feature,
  featureMask,
  hasFeature,
  NetConfig,
  NetFeature,
  NetMqPairs,
  NetStatus,
} from "@virtio-ts/spec";
import { type DeviceContext, type DeviceModel, DeviceStateFormatError } from "@virtio-ts/transport";
import { checkQueueSizeOption } from "@virtio-ts/virtqueue";
import type { NetBackend, NetFrameSink } from "./net-backend.js";
import { NetControl } from "./net-ctrl.js";
import type { NetRxFilter } from "./net-filter.js";
import { NetReceiver } from "./net-rx.js";
import { type NetDeviceStats, NetState } from "./net-state.js";
import { NetTransmitter } from "./net-tx.js";

const MAC_LEN = ETH_ALEN;
const DEFAULT_MAC = new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/** Version byte of {@link NetDevice.saveState}'s bytes. */
const STATE_VERSION = 1;

/** Options of a {@link NetDevice}. */
export interface NetDeviceOptions {
  /** The MAC address in config `mac` (6 bytes). Default 52:54:00:12:34:56. */
  readonly mac?: Uint8Array;
  /** `mtu` (68 to 65535). Default 1500. Frames longer than `mtu + 14` are dropped both ways. */
  readonly mtu?: number;
  /**
   * `max_virtqueue_pairs` (1 to 256). Default 1. VIRTIO_NET_F_MQ is offered when above 1.
   */
  readonly maxQueuePairs?: number;
  /** Maximum size of every receive and transmit queue (a power of 2, 2 to 32768). Default 256. */
  readonly queueSize?: number;
  /** Maximum size of the control queue (a power of 2, 2 to 32768). Default 64. */
  readonly ctrlQueueSize?: number;
  /** Unicast and multicast MAC filter table entries (1 to 1024 each). Default 64. */
  readonly macTableEntries?: number;
  /** Initial link state (VIRTIO_NET_S_LINK_UP). Default true. */
  readonly linkUp?: boolean;
  /**
   * When a transmit queue's used buffer notification goes out (the device chooses, after the
   * used index is written, VIRTIO 1.3 §2.7.7). "immediate" (default): at the end of each
   * notification's batch. "coalesced": once per task, from a microtask, for every transmit of
   * the task — interrupt moderation: an emulator that runs its guest in time slices (v86)
   * then takes one interrupt per slice instead of one per frame. Frames still leave at once.
   */
  readonly txInterrupts?: "immediate" | "coalesced";
}

/**
 * The virtio-net device model (VIRTIO 1.3 §5.1): receive/transmit queue pairs and a control
 * queue, moving plain Ethernet frames to and from a {@link NetBackend}.
 *
 * Queues: `receiveq1, transmitq1, …, receiveqN, transmitqN, controlq` with N =
 * `maxQueuePairs`; without VIRTIO_NET_F_MQ negotiated the control queue is queue 2 (§5.1.2).
 *
 * Offered features: MAC, STATUS, MTU, MRG_RXBUF, CSUM, GUEST_CSUM, CTRL_VQ, CTRL_RX,
 * CTRL_RX_EXTRA, CTRL_MAC_ADDR, GUEST_ANNOUNCE, MQ (when `maxQueuePairs > 1`); ring features
 * INDIRECT_DESC, EVENT_IDX, RING_PACKED, RING_RESET. No GSO of any kind.
 *
 * Every buffer starts with `struct virtio_net_hdr_v1` (12 bytes; 10 for a legacy driver without
 * MRG_RXBUF, §5.1.6.1).
 *
 * **Transmit** (§5.1.6.2): each chain's readable part is the header then the frame. The frame is
 * copied into a device buffer (the guest may rewrite its memory meanwhile, and a checksum is
 * written into the copy, never into a device-readable buffer), its partial checksum is
 * completed when the header asks for it (CSUM, §5.1.6.2.2), and it is passed to
 * {@link NetBackend.transmit}. Dropped and counted in {@link NetDevice.stats}: a chain shorter
 * than the header, a frame shorter than 14 or longer than `mtu + 14` bytes, `gso_type` other
 * than NONE, NEEDS_CSUM without CSUM or with `csum_start + csum_offset + 2` past the frame.
 * Every transmit chain is completed (used length 0).
 *
 * **Receive** (§5.1.6.3, §5.1.6.4): {@link NetDevice.deliver} filters the frame (see below),
 * picks a receive queue, and copies header and frame into guest buffers — one buffer, or with
 * MRG_RXBUF as many as needed with `num_buffers` in the first header. The header has flags 0,
 * `gso_type` NONE and `num_buffers`; with GUEST_CSUM negotiated the device still never sets
 * NEEDS_CSUM or DATA_VALID: it has not verified the checksums of frames from the back-end, so
 * the driver must. Without a large enough buffer `deliver` returns false and copies nothing;
 * chains already taken for a merged frame stay held for the next frame. The copy allocates
 * nothing when the frame fits in one buffer; a merged frame makes one view per extra buffer.
 *
 * **Filtering** (§5.1.6.5.1, §5.1.6.5.2) applies once CTRL_RX is negotiated (without it every
 * frame passes, as QEMU's compatibility default): promiscuous passes all; broadcast passes unless
 * NOBCAST; other multicast fails with NOMULTI, passes with ALLMULTI, a multicast table overflow
 * or a table match; unicast fails with NOUNI, passes with ALLUNI, a unicast table overflow, the
 * device MAC or a table match. After a reset: all modes off, tables empty.
 *
 * **Multiqueue** (§5.1.6.5.5): the driver enables pairs with VQ_PAIRS_SET (1 to
 * `max_virtqueue_pairs`, initially 1). Receive steering: an FNV-1a hash of the IPv4 source and
 * destination addresses, plus the TCP/UDP ports of an unfragmented packet, or of the source MAC
 * for anything else, modulo the active pair count — one flow always lands on one queue.
 *
 * **Suspend / resume**: {@link NetDevice.saveState} carries what the driver changed through the
 * control queue — MAC, status, active pairs, receive filter — to a resumed device.
 *
 * The paths live in their own modules: `net-rx.ts` (receive), `net-tx.ts` (transmit),
 * `net-ctrl.ts` (control queue), `net-filter.ts` (receive filter), over the shared state of
 * `net-state.ts`.
 *
 * **Control queue** (§5.1.6.5): RX modes (CTRL_RX; ALLUNI/NOMULTI/NOUNI/NOBCAST with
 * CTRL_RX_EXTRA), MAC_TABLE_SET (CTRL_RX; at most `macTableEntries` per table, more set the
 * table's overflow flag), MAC_ADDR_SET (CTRL_MAC_ADDR, also updates config `mac`),
 * ANNOUNCE_ACK (GUEST_ANNOUNCE), VQ_PAIRS_SET (MQ). A command with a wrong size, an unknown
 * class or command, or one whose feature was not negotiated is answered VIRTIO_NET_ERR.
 *
 * Malformed chains (a `ChainError`) are returned with length 0 and counted; an inconsistent
 * ring (a `RingError`) puts the device into DEVICE_NEEDS_RESET.
 *
 * @example
 * ```ts
 * const nic = new NetDevice(backend, { mac: new Uint8Array([2, 0, 0, 0, 0, 1]) });
 * const device = new MmioDevice(nic, { memory });
 * ```
 */
export class NetDevice implements DeviceModel, NetFrameSink {
  /** @inheritdoc */
  readonly deviceId = DeviceId.NET;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** `struct virtio_net_config` up to `mtu` (§5.1.4). */
  readonly configSize = NetConfig.MTU + 2;
  /** The network behind the device. */
  readonly backend: NetBackend;
  /** `max_virtqueue_pairs`. */
  readonly maxQueuePairs: number;
  /** `mtu`. */
  readonly mtu: number;
  /** Counters. */
  readonly stats: NetDeviceStats = {
    txFrames: 0,
    txBytes: 0,
    txBackendDrops: 0,
    txShortHeader: 0,
    txRunt: 0,
    txOversize: 0,
    txGso: 0,
    txBadCsum: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxNoBuffer: 0,
    rxFiltered: 0,
    rxBadFrame: 0,
    rxLinkDown: 0,
    rxSmallBuffers: 0,
    ctrlOk: 0,
    ctrlErr: 0,
    badChains: 0,
  };
  readonly #defaultMac: Uint8Array;
  readonly #st: NetState;
  readonly #rx: NetReceiver;
  readonly #tx: NetTransmitter;
  readonly #ctrl: NetControl;

  /**
   * @param backend - the network
   * @param options - MAC, MTU, queue pairs and sizes, table size, link state
   * @throws RangeError naming the bad option; TypeError naming `backend`
   */
  constructor(backend: NetBackend, options: NetDeviceOptions = {}) {
    if (
      typeof backend?.transmit !== "function" ||
      typeof backend.attach !== "function" ||
      typeof backend.detach !== "function"
    ) {
      throw new TypeError("backend must implement NetBackend (transmit, attach, detach)");
    }
    const txi = options.txInterrupts ?? "immediate";
    if (txi !== "immediate" && txi !== "coalesced") {
      throw new RangeError(`options.txInterrupts must be "immediate" or "coalesced", got ${txi}`);
    }
    const mac = options.mac ?? DEFAULT_MAC;
    if (!(mac instanceof Uint8Array) || mac.length !== MAC_LEN) {
      throw new RangeError(`options.mac must be a Uint8Array of 6 bytes`);
    }
    const mtu = options.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new RangeError(`options.mtu must be an integer in [68, 65535], got ${mtu}`);
    }
    const pairs = options.maxQueuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < NetMqPairs.MIN || pairs > 256) {
      throw new RangeError(`options.maxQueuePairs must be an integer in [1, 256], got ${pairs}`);
    }
    const qs = checkQueueSizeOption("options.queueSize", options.queueSize ?? 256);
    const cqs = checkQueueSizeOption("options.ctrlQueueSize", options.ctrlQueueSize ?? 64);
    const entries = options.macTableEntries ?? 64;
    if (!Number.isInteger(entries) || entries < 1 || entries > 1024) {
      throw new RangeError(
        `options.macTableEntries must be an integer in [1, 1024], got ${entries}`,
      );
    }
    this.backend = backend;
    this.mtu = mtu;
    this.maxQueuePairs = pairs;
    this.#defaultMac = new Uint8Array(mac);
    const st = new NetState(
      pairs,
      mtu + ETH_HLEN,
      entries,
      options.linkUp === false ? 0 : NetStatus.LINK_UP,
      this.stats,
    );
    st.mac.set(mac);
    this.#st = st;
    this.#rx = new NetReceiver(st, pairs);
    this.#tx = new NetTransmitter(st, backend, pairs, txi === "coalesced");
    this.#ctrl = new NetControl(st);
    const sizes: number[] = [];
    for (let i = 0; i < pairs; i++) sizes.push(qs, qs);
    sizes.push(cqs);
    this.queueMaxSizes = sizes;
    const bits: number[] = [
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
      Feature.RING_INDIRECT_DESC,
      Feature.RING_EVENT_IDX,
      Feature.RING_PACKED,
      Feature.RING_RESET,
    ];
    if (pairs > 1) bits.push(NetFeature.MQ);
    this.features = bits.reduce((m, bit) => m | featureMask(bit), 0n);
  }

  /** The last exception a back-end threw from `transmit` (a contract violation), for diagnostics. */
  get lastBackendError(): unknown {
    return this.#tx.lastBackendError;
  }

  /** The current MAC address (config `mac`; changed by MAC_ADDR_SET, restored by a reset). */
  get mac(): Uint8Array {
    return new Uint8Array(this.#st.mac);
  }

  /** Config `status`: VIRTIO_NET_S_LINK_UP and VIRTIO_NET_S_ANNOUNCE bits. */
  get status(): number {
    return this.#st.status;
  }

  /** Queue pairs in use (1 until the driver sends VQ_PAIRS_SET). */
  get queuePairs(): number {
    return this.#st.pairs;
  }

  /** A snapshot of the receive filter state (allocates; for tests and diagnostics). */
  get rxFilter(): NetRxFilter {
    return this.#st.filter.snapshot();
  }

  /**
   * Set the link state (VIRTIO_NET_S_LINK_UP) and, when the driver negotiated STATUS, send a
   * configuration change notification (§5.1.4). While the link is down received frames are
   * dropped (counted in `rxLinkDown`); transmission continues.
   * @param up - the new state
   */
  setLinkUp(up: boolean): void {
    const st = this.#st;
    const next = up ? st.status | NetStatus.LINK_UP : st.status & ~NetStatus.LINK_UP;
    if (next === st.status) return;
    st.status = next;
    if (st.ctx !== undefined && st.statusFeature) st.ctx.notifyConfigChange();
  }

  /**
   * Ask the driver to announce itself (after a migration): set VIRTIO_NET_S_ANNOUNCE and send a
   * configuration change notification (§5.1.6.5.4). The driver sends gratuitous packets and
   * acknowledges with ANNOUNCE_ACK, which clears the bit.
   * @returns false (nothing done) unless the device is active and GUEST_ANNOUNCE was negotiated
   */
  announce(): boolean {
    const st = this.#st;
    const ctx = st.ctx;
    if (ctx === undefined || !st.announce) return false;
    st.status |= NetStatus.ANNOUNCE;
    ctx.notifyConfigChange();
    return true;
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.#configByte(offset + i);
    return v;
  }

  #configByte(at: number): number {
    const st = this.#st;
    if (at < MAC_LEN) return st.mac[at]!;
    switch (at) {
      case NetConfig.STATUS:
        return st.status & 0xff;
      case NetConfig.STATUS + 1:
        return st.status >>> 8;
      case NetConfig.MAX_VIRTQUEUE_PAIRS:
        return this.maxQueuePairs & 0xff;
      case NetConfig.MAX_VIRTQUEUE_PAIRS + 1:
        return this.maxQueuePairs >>> 8;
      case NetConfig.MTU:
        return this.mtu & 0xff;
      case NetConfig.MTU + 1:
        return this.mtu >>> 8;
      default:
        return 0;
    }
  }

  /**
   * Every field is read-only for a VERSION_1 driver (§5.1.4.2: the driver MUST NOT write the
   * configuration; the MAC changes through MAC_ADDR_SET), so writes are ignored.
   */
  writeConfig(_offset: number, _size: 1 | 2 | 4, _value: number): void {}

  /**
   * Refuse feature sets that break the dependencies of §5.1.3.1: CTRL_RX, GUEST_ANNOUNCE, MQ
   * and CTRL_MAC_ADDR need CTRL_VQ; CTRL_RX_EXTRA needs CTRL_RX.
   */
  validateFeatures(features: bigint): boolean {
    const has = (b: number): boolean => hasFeature(features, b);
    if (
      !has(NetFeature.CTRL_VQ) &&
      (has(NetFeature.CTRL_RX) ||
        has(NetFeature.GUEST_ANNOUNCE) ||
        has(NetFeature.MQ) ||
        has(NetFeature.CTRL_MAC_ADDR))
    ) {
      return false;
    }
    return !has(NetFeature.CTRL_RX_EXTRA) || has(NetFeature.CTRL_RX);
  }

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#st.ctx = ctx;
    this.#st.negotiate(ctx.features);
    this.backend.attach(this);
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    const st = this.#st;
    const ctx = st.ctx;
    if (ctx === undefined) return;
    if (index === st.ctrlIndex) {
      this.#ctrl.serve(ctx);
    } else if (index < 2 * this.maxQueuePairs && (st.mq || index < 2)) {
      if ((index & 1) === 1) this.#tx.transmit(ctx, index);
      else this.#rxReady();
    }
  }

  /** New receive buffers: a back-end holding refused frames may deliver them now. */
  #rxReady(): void {
    if (!this.#rx.starved) return;
    this.#rx.starved = false;
    this.backend.rxReady?.();
  }

  /** A receive queue enabled again after a queue reset: a starved back-end may retry. */
  onQueueEnable(index: number): void {
    if ((index & 1) === 0 && index < 2 * this.maxQueuePairs) this.#rxReady();
  }

  /** Forget the chains held from a receive queue that was reset (§2.6.1.1.1). */
  onQueueReset(index: number): void {
    if ((index & 1) === 0 && index < 2 * this.maxQueuePairs) this.#rx.forget(index >> 1);
  }

  /**
   * Forget everything negotiated and in flight: filter state, tables, pairs, announce bit, held
   * receive chains; restore the MAC from the options. The back-end is detached.
   */
  reset(): void {
    const st = this.#st;
    if (st.ctx !== undefined) this.backend.detach();
    st.ctx = undefined;
    this.#rx.clear();
    st.mac.set(this.#defaultMac);
    st.status &= ~NetStatus.ANNOUNCE;
    st.filter.reset();
    st.pairs = 1;
  }

  /**
   * Receive one Ethernet frame from the back-end: filter it, steer it to a receive queue and
   * copy it, behind a `virtio_net_hdr`, into guest buffers. Frames the filter rejects, frames
   * shorter than 14 or longer than `mtu + 14` bytes and frames arriving while the link is down
   * are dropped and counted (and `true` is returned: they are consumed).
   *
   * @param frame - the frame (copied before this returns)
   * @returns false if the guest had no receive buffer for it (nothing copied) or the device is
   *   not running
   */
  deliver(frame: Uint8Array): boolean {
    return this.#rx.deliver(frame);
  }

  // ---- suspend / resume ----

  /**
   * What the driver changed through the device, for a resumed device: config `mac` and
   * `status`, the active queue pairs and the receive filter (modes and MAC tables). Version 1
   * layout: version u8, mac 6 bytes, status u16, pairs u16, modes u8 (promisc, allmulti, alluni,
   * nomulti, nouni, nobcast, unicast overflow, multicast overflow), unicast count u16, multicast
   * count u16, then the addresses, 6 bytes each.
   */
  saveState(): Uint8Array {
    const st = this.#st;
    const f = st.filter.snapshot();
    const out = new Uint8Array(16 + MAC_LEN * (f.unicast.length + f.multicast.length));
    const v = new DataView(out.buffer);
    out[0] = STATE_VERSION;
    out.set(st.mac, 1);
    v.setUint16(7, st.status, true);
    v.setUint16(9, st.pairs, true);
    const modes = [
      f.promisc,
      f.allmulti,
      f.alluni,
      f.nomulti,
      f.nouni,
      f.nobcast,
      f.unicastOverflow,
      f.multicastOverflow,
    ];
    out[11] = modes.reduce((m, on, i) => m | (on ? 1 << i : 0), 0);
    v.setUint16(12, f.unicast.length, true);
    v.setUint16(14, f.multicast.length, true);
    let at = 16;
    for (const a of [...f.unicast, ...f.multicast]) {
      out.set(a, at);
      at += MAC_LEN;
    }
    return out;
  }

  /**
   * Take back {@link NetDevice.saveState}'s bytes (before activation). Untrusted: a wrong
   * version or length, pairs out of `[1, max_virtqueue_pairs]`, or a status with unknown bits
   * is refused.
   * @throws DeviceStateFormatError naming the offending byte
   */
  restoreState(state: Uint8Array): void {
    const bad = (why: string, at: number): never => {
      throw new DeviceStateFormatError(`virtio-net state: ${why}`, at);
    };
    if (state.length < 16) bad("shorter than 16 bytes", 0);
    if (state[0] !== STATE_VERSION) bad(`version ${state[0]}`, 0);
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    const status = v.getUint16(7, true);
    if ((status & ~(NetStatus.LINK_UP | NetStatus.ANNOUNCE)) !== 0)
      bad(`status 0x${status.toString(16)}`, 7);
    const pairs = v.getUint16(9, true);
    if (pairs < NetMqPairs.MIN || pairs > this.maxQueuePairs) bad(`${pairs} queue pairs`, 9);
    const nUni = v.getUint16(12, true);
    const nMulti = v.getUint16(14, true);
    if (state.length !== 16 + MAC_LEN * (nUni + nMulti))
      bad("length disagrees with the tables", 12);
    const modes = state[11]!;
    const list = (from: number, n: number): Uint8Array[] =>
      Array.from({ length: n }, (_, i) =>
        state.slice(from + i * MAC_LEN, from + (i + 1) * MAC_LEN),
      );
    const st = this.#st;
    st.mac.set(state.subarray(1, 1 + MAC_LEN));
    st.status = status;
    st.pairs = pairs;
    st.filter.restore({
      promisc: (modes & 1) !== 0,
      allmulti: (modes & 2) !== 0,
      alluni: (modes & 4) !== 0,
      nomulti: (modes & 8) !== 0,
      nouni: (modes & 16) !== 0,
      nobcast: (modes & 32) !== 0,
      unicastOverflow: (modes & 64) !== 0,
      multicastOverflow: (modes & 128) !== 0,
      unicast: list(16, nUni),
      multicast: list(16 + MAC_LEN * nUni, nMulti),
    });
  }
}
