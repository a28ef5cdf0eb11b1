import { VirtioError } from "@virtio-ts/memory";
import {
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlCmd,
  NetFeature,
  NetHdr,
  NetHdrFlags,
  NetMqPairs,
  NetStatus,
} from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import { ChainError, DescriptorChain, type DeviceQueue } from "@virtio-ts/virtqueue";
import type { NetBackend, NetFrameSink } from "./net-backend.js";
import { completeChecksum } from "./net-checksum.js";

/** Why a guest's transmit frame, receive buffer or control command was refused. */
export type NetGuestFaultCode =
  /** A transmit chain shorter than the negotiated `virtio_net_hdr`. */
  | "net-tx-short-header"
  /** A transmit frame shorter than an Ethernet header (14 bytes), e.g. a header-only chain. */
  | "net-tx-runt"
  /** A transmit frame longer than `mtu + 14`. */
  | "net-tx-oversize"
  /** `gso_type` is not VIRTIO_NET_HDR_GSO_NONE (no HOST_TSO / HOST_UFO is offered). */
  | "net-tx-gso"
  /** NEEDS_CSUM without VIRTIO_NET_F_CSUM, or `csum_start + csum_offset + 2` past the frame. */
  | "net-tx-bad-csum"
  /** A receive buffer too small for the header (or, without MRG_RXBUF, for the frame). */
  | "net-rx-small-buffer"
  /** A control command with no device-writable byte for the ack. */
  | "net-ctrl-no-ack";

/**
 * A guest fault the virtio-net device survived: one frame, receive buffer or control command
 * was malformed. Reported through `ctx.noteFault` (never thrown out of the device) and counted
 * in {@link NetDeviceStats}; the chain is completed and the device keeps serving.
 */
export class NetGuestFault extends VirtioError {
  /** @inheritdoc */
  readonly code: NetGuestFaultCode;
  /** The chain's id (split: head index; packed: buffer ID). */
  readonly head: number;
  /** The offending value (a length, `gso_type`, `csum_start + csum_offset`). */
  readonly value: number;

  /**
   * @param code - what is wrong
   * @param head - chain id
   * @param value - offending value
   */
  constructor(code: NetGuestFaultCode, head: number, value: number) {
    super(`virtio-net ${code} (chain ${head}, value ${value})`);
    this.code = code;
    this.head = head;
    this.value = value;
  }
}

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

/** Counters of a {@link NetDevice} (mutated in place). */
export interface NetDeviceStats {
  /** Frames handed to the back-end (accepted or not). */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
  /** Frames the back-end refused (`transmit` returned false or threw). */
  txBackendDrops: number;
  /** Transmit chains shorter than the header. */
  txShortHeader: number;
  /** Transmit frames shorter than 14 bytes (a header-only chain among them). */
  txRunt: number;
  /** Transmit frames longer than `mtu + 14`. */
  txOversize: number;
  /** Transmit frames with `gso_type` set. */
  txGso: number;
  /** Transmit frames with a bad NEEDS_CSUM request. */
  txBadCsum: number;
  /** Frames copied into guest receive buffers. */
  rxFrames: number;
  /** Bytes of those frames (without the header). */
  rxBytes: number;
  /** `deliver` calls refused for want of a receive buffer (or before DRIVER_OK). */
  rxNoBuffer: number;
  /** Frames dropped by the receive filter (RX mode and MAC table, §5.1.6.5.1–2). */
  rxFiltered: number;
  /** Frames dropped because they are shorter than 14 or longer than `mtu + 14` bytes. */
  rxBadFrame: number;
  /** Frames dropped while the link is down. */
  rxLinkDown: number;
  /** Receive buffers returned unused because they were too small. */
  rxSmallBuffers: number;
  /** Control commands answered VIRTIO_NET_OK. */
  ctrlOk: number;
  /** Control commands answered VIRTIO_NET_ERR (or unanswerable). */
  ctrlErr: number;
  /** Malformed chains (`ChainError` from the ring) returned with length 0. */
  badChains: number;
}

/** The receive filter state set through the control queue (§5.1.6.5.1, §5.1.6.5.2). */
export interface NetRxFilter {
  /** VIRTIO_NET_CTRL_RX_PROMISC. */
  readonly promisc: boolean;
  /** VIRTIO_NET_CTRL_RX_ALLMULTI. */
  readonly allmulti: boolean;
  /** VIRTIO_NET_CTRL_RX_ALLUNI. */
  readonly alluni: boolean;
  /** VIRTIO_NET_CTRL_RX_NOMULTI. */
  readonly nomulti: boolean;
  /** VIRTIO_NET_CTRL_RX_NOUNI. */
  readonly nouni: boolean;
  /** VIRTIO_NET_CTRL_RX_NOBCAST. */
  readonly nobcast: boolean;
  /** Unicast MAC table entries (copies). */
  readonly unicast: readonly Uint8Array[];
  /** Multicast MAC table entries (copies). */
  readonly multicast: readonly Uint8Array[];
  /** The unicast table overflowed: every unicast frame passes. */
  readonly unicastOverflow: boolean;
  /** The multicast table overflowed: every multicast frame passes. */
  readonly multicastOverflow: boolean;
}

const ETH_HLEN = 14;
const MAC_LEN = 6;
/** Segments per chain the device accepts (§2.7.4.1 "reasonable limit"); Linux uses ≤ 19. */
const MAX_SEGMENTS = 64;
/** `queueMicrotask` (Node and browsers; typed here without the DOM or Node libraries). */
const hostGlobals = globalThis as unknown as { queueMicrotask(fn: () => void): void };
const queueTask = (fn: () => void): void => hostGlobals.queueMicrotask(fn);

/** Transmit views cached by length (a direct-mapped cache, see `#txView`). */
const TX_VIEW_CACHE = 64;
const DEFAULT_MAC = new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

/** Receive-side state of one receive queue: chains popped but not yet used for a frame. */
class RxQueueState {
  /** Cursors; the first `count` hold popped chains, in ring order. */
  readonly held: DescriptorChain[] = [];
  count = 0;
  /** Writable bytes of the held chains. */
  bytes = 0;

  cursor(i: number): DescriptorChain {
    let c = this.held[i];
    if (c === undefined) {
      // Grows to at most the queue size (a queue never has more chains), then is reused.
      c = new DescriptorChain(MAX_SEGMENTS);
      this.held[i] = c;
    }
    return c;
  }

  clear(): void {
    this.count = 0;
    this.bytes = 0;
  }
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
  /** The last exception a back-end threw from `transmit` (a contract violation), for diagnostics. */
  lastBackendError: unknown = undefined;

  readonly #defaultMac: Uint8Array;
  readonly #mac = new Uint8Array(MAC_LEN);
  #status: number;
  readonly #maxFrame: number;
  readonly #tableEntries: number;
  #ctx: DeviceContext | undefined = undefined;
  readonly #coalesceTx: boolean;
  /** Transmit queues with a notification due at the end of the task (bit per pair). */
  #txDue = 0;
  #txDueCtx: DeviceContext | undefined = undefined;
  readonly #flushTx = (): void => {
    const ctx = this.#txDueCtx;
    const due = this.#txDue;
    this.#txDue = 0;
    this.#txDueCtx = undefined;
    // A reset in between made the context stale: its queues belong to nobody now.
    if (ctx === undefined || ctx !== this.#ctx) return;
    for (let p = 0; p < 32; p++) if ((due & (1 << p)) !== 0) ctx.signalUsed(2 * p + 1);
  };
  // Negotiated, cached at activation (bigint tests are too slow for the per-frame path).
  #hdrLen: number = NetHdr.SIZE;
  #mrg = false;
  #csum = false;
  #ctrlRx = false;
  #ctrlRxExtra = false;
  #ctrlMacAddr = false;
  #announce = false;
  #mq = false;
  #statusFeature = false;
  #ctrlIndex = 2;
  #pairs = 1;
  // Receive filter (§5.1.6.5.1).
  #promisc = false;
  #allmulti = false;
  #alluni = false;
  #nomulti = false;
  #nouni = false;
  #nobcast = false;
  #uni: Uint8Array;
  #uniCount = 0;
  #uniOverflow = false;
  #multi: Uint8Array;
  #multiCount = 0;
  #multiOverflow = false;
  /** Staging tables for MAC_TABLE_SET (swapped in on success, so a bad command changes nothing). */
  #uniStage: Uint8Array;
  #multiStage: Uint8Array;
  // Per queue state, created once.
  readonly #rx: RxQueueState[] = [];
  readonly #txChains: DescriptorChain[] = [];
  readonly #ctrlChain: DescriptorChain;
  readonly #txBuf: Uint8Array;
  readonly #txViews: (Uint8Array | undefined)[] = new Array(TX_VIEW_CACHE).fill(undefined);
  readonly #txHdr = new Uint8Array(NetHdr.SIZE);
  readonly #rxHdr = new Uint8Array(NetHdr.SIZE);
  #rxHdrView: Uint8Array = this.#rxHdr;
  readonly #scratch = new Uint8Array(8);
  #rxStarved = false;
  /** Argument of `#receiveBound` (passed in a field so `deliver` allocates no closure). */
  #rxFrame: Uint8Array | undefined = undefined;
  readonly #receiveBound = (): boolean => this.#receive(this.#rxFrame!);

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
    this.#coalesceTx = txi === "coalesced";
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
    const qs = checkQueueSize("options.queueSize", options.queueSize ?? 256);
    const cqs = checkQueueSize("options.ctrlQueueSize", options.ctrlQueueSize ?? 64);
    const entries = options.macTableEntries ?? 64;
    if (!Number.isInteger(entries) || entries < 1 || entries > 1024) {
      throw new RangeError(
        `options.macTableEntries must be an integer in [1, 1024], got ${entries}`,
      );
    }
    this.backend = backend;
    this.mtu = mtu;
    this.maxQueuePairs = pairs;
    this.#maxFrame = mtu + ETH_HLEN;
    this.#tableEntries = entries;
    this.#defaultMac = new Uint8Array(mac);
    this.#mac.set(mac);
    this.#status = options.linkUp === false ? 0 : NetStatus.LINK_UP;
    this.#uni = new Uint8Array(entries * MAC_LEN);
    this.#multi = new Uint8Array(entries * MAC_LEN);
    this.#uniStage = new Uint8Array(entries * MAC_LEN);
    this.#multiStage = new Uint8Array(entries * MAC_LEN);
    this.#txBuf = new Uint8Array(this.#maxFrame);
    this.#ctrlChain = new DescriptorChain(MAX_SEGMENTS);
    const sizes: number[] = [];
    for (let i = 0; i < pairs; i++) {
      sizes.push(qs, qs);
      this.#rx.push(new RxQueueState());
      this.#txChains.push(new DescriptorChain(MAX_SEGMENTS));
    }
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

  /** The current MAC address (config `mac`; changed by MAC_ADDR_SET, restored by a reset). */
  get mac(): Uint8Array {
    return new Uint8Array(this.#mac);
  }

  /** Config `status`: VIRTIO_NET_S_LINK_UP and VIRTIO_NET_S_ANNOUNCE bits. */
  get status(): number {
    return this.#status;
  }

  /** Queue pairs in use (1 until the driver sends VQ_PAIRS_SET). */
  get queuePairs(): number {
    return this.#pairs;
  }

  /** A snapshot of the receive filter state (allocates; for tests and diagnostics). */
  get rxFilter(): NetRxFilter {
    const list = (t: Uint8Array, n: number): Uint8Array[] =>
      Array.from({ length: n }, (_, i) => t.slice(i * MAC_LEN, i * MAC_LEN + MAC_LEN));
    return {
      promisc: this.#promisc,
      allmulti: this.#allmulti,
      alluni: this.#alluni,
      nomulti: this.#nomulti,
      nouni: this.#nouni,
      nobcast: this.#nobcast,
      unicast: list(this.#uni, this.#uniCount),
      multicast: list(this.#multi, this.#multiCount),
      unicastOverflow: this.#uniOverflow,
      multicastOverflow: this.#multiOverflow,
    };
  }

  /**
   * Set the link state (VIRTIO_NET_S_LINK_UP) and, when the driver negotiated STATUS, send a
   * configuration change notification (§5.1.4). While the link is down received frames are
   * dropped (counted in `rxLinkDown`); transmission continues.
   * @param up - the new state
   */
  setLinkUp(up: boolean): void {
    const next = up ? this.#status | NetStatus.LINK_UP : this.#status & ~NetStatus.LINK_UP;
    if (next === this.#status) return;
    this.#status = next;
    if (this.#ctx !== undefined && this.#statusFeature) this.#ctx.notifyConfigChange();
  }

  /**
   * Ask the driver to announce itself (after a migration): set VIRTIO_NET_S_ANNOUNCE and send a
   * configuration change notification (§5.1.6.5.4). The driver sends gratuitous packets and
   * acknowledges with ANNOUNCE_ACK, which clears the bit.
   * @returns false (nothing done) unless the device is active and GUEST_ANNOUNCE was negotiated
   */
  announce(): boolean {
    const ctx = this.#ctx;
    if (ctx === undefined || !this.#announce) return false;
    this.#status |= NetStatus.ANNOUNCE;
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
    if (at < MAC_LEN) return this.#mac[at]!;
    switch (at) {
      case NetConfig.STATUS:
        return this.#status & 0xff;
      case NetConfig.STATUS + 1:
        return this.#status >>> 8;
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
    const f = ctx.features;
    this.#ctx = ctx;
    this.#mrg = hasFeature(f, NetFeature.MRG_RXBUF);
    // §5.1.6.1: the header is 12 bytes with VERSION_1 or MRG_RXBUF, else the legacy 10.
    this.#hdrLen = this.#mrg || hasFeature(f, Feature.VERSION_1) ? NetHdr.SIZE : NetHdr.LEGACY_SIZE;
    this.#rxHdrView = this.#rxHdr.subarray(0, this.#hdrLen);
    this.#csum = hasFeature(f, NetFeature.CSUM);
    this.#ctrlRx = hasFeature(f, NetFeature.CTRL_RX);
    this.#ctrlRxExtra = hasFeature(f, NetFeature.CTRL_RX_EXTRA);
    this.#ctrlMacAddr = hasFeature(f, NetFeature.CTRL_MAC_ADDR);
    this.#announce = hasFeature(f, NetFeature.GUEST_ANNOUNCE);
    this.#mq = hasFeature(f, NetFeature.MQ);
    this.#statusFeature = hasFeature(f, NetFeature.STATUS);
    // §5.1.2: the control queue follows the last pair the device has (N = 1 without MQ).
    this.#ctrlIndex = this.#mq ? 2 * this.maxQueuePairs : 2;
    this.#pairs = 1;
    this.backend.attach(this);
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    const ctx = this.#ctx;
    if (ctx === undefined) return;
    if (index === this.#ctrlIndex) {
      this.#control(ctx);
    } else if (index < 2 * this.maxQueuePairs && (this.#mq || index < 2)) {
      if ((index & 1) === 1) this.#transmit(ctx, index);
      else if (this.#rxStarved) {
        // New receive buffers: a back-end holding refused frames may deliver them now.
        this.#rxStarved = false;
        this.backend.rxReady?.();
      }
    }
  }

  /** A receive queue enabled again after a queue reset: a starved back-end may retry. */
  onQueueEnable(index: number): void {
    if ((index & 1) === 0 && index < 2 * this.maxQueuePairs && this.#rxStarved) {
      this.#rxStarved = false;
      this.backend.rxReady?.();
    }
  }

  /** Forget the chains held from a receive queue that was reset (§2.6.1.1.1). */
  onQueueReset(index: number): void {
    if ((index & 1) === 0 && index < 2 * this.maxQueuePairs) this.#rx[index >> 1]!.clear();
  }

  /**
   * Forget everything negotiated and in flight: filter state, tables, pairs, announce bit, held
   * receive chains; restore the MAC from the options. The back-end is detached.
   */
  reset(): void {
    if (this.#ctx !== undefined) this.backend.detach();
    this.#ctx = undefined;
    for (const r of this.#rx) r.clear();
    this.#mac.set(this.#defaultMac);
    this.#status &= ~NetStatus.ANNOUNCE;
    this.#promisc = false;
    this.#allmulti = false;
    this.#alluni = false;
    this.#nomulti = false;
    this.#nouni = false;
    this.#nobcast = false;
    this.#uniCount = 0;
    this.#multiCount = 0;
    this.#uniOverflow = false;
    this.#multiOverflow = false;
    this.#pairs = 1;
    this.#rxStarved = false;
  }

  // ---- receive (§5.1.6.3, §5.1.6.4) ----

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
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset) {
      this.stats.rxNoBuffer++;
      return false;
    }
    const len = frame.length;
    if (len < ETH_HLEN || len > this.#maxFrame) {
      this.stats.rxBadFrame++;
      return true;
    }
    if ((this.#status & NetStatus.LINK_UP) === 0) {
      this.stats.rxLinkDown++;
      return true;
    }
    if (this.#ctrlRx && !this.#accepts(frame)) {
      this.stats.rxFiltered++;
      return true;
    }
    this.#rxFrame = frame;
    const ok = ctx.guard(this.#receiveBound) === true;
    this.#rxFrame = undefined;
    if (!ok) {
      this.stats.rxNoBuffer++;
      this.#rxStarved = true;
    }
    return ok;
  }

  /** Copy `frame` into the steered receive queue. A `VirtioError` from the ring propagates. */
  #receive(frame: Uint8Array): boolean {
    const ctx = this.#ctx!;
    const pair = this.#pairs > 1 ? flowHash(frame) % this.#pairs : 0;
    const qi = 2 * pair;
    const q = ctx.queue(qi);
    if (q === undefined) return false;
    const rx = this.#rx[pair]!;
    const h = this.#hdrLen;
    const need = h + frame.length;
    const mem = ctx.memory;
    let returned = false;
    if (!this.#mrg) {
      // §5.1.6.4: without MRG_RXBUF the whole packet goes into one buffer.
      for (;;) {
        const c = rx.cursor(0);
        if (rx.count === 0) {
          if (!this.#pop(ctx, q, c)) {
            if (returned) ctx.signalUsed(qi);
            return false;
          }
          rx.count = 1;
          rx.bytes = c.writableBytes;
        }
        if (rx.bytes >= need) break;
        // §5.1.6.3.1: buffers SHOULD hold 1526 bytes (the largest frame here); a smaller one
        // cannot take this frame: return it unused.
        this.#smallBuffer(ctx, q, c, rx.bytes);
        rx.clear();
        returned = true;
      }
      const c = rx.held[0]!;
      this.#writeHeader(mem, c, 1);
      c.copyToWritable(mem, h, frame);
      q.push(c.head, need);
      rx.clear();
    } else {
      // §5.1.6.4: with MRG_RXBUF, take buffers until the packet fits; `num_buffers` says how many.
      while (rx.bytes < need) {
        if (rx.count >= q.size) {
          // Every buffer the queue can hold is held and the frame still does not fit: the
          // driver posts buffers too small for any frame. Return them all unused, drop it.
          for (let i = 0; i < rx.count; i++) {
            const c = rx.held[i]!;
            this.#smallBuffer(ctx, q, c, c.writableBytes);
          }
          rx.clear();
          ctx.signalUsed(qi);
          return true;
        }
        const c = rx.cursor(rx.count);
        if (!this.#pop(ctx, q, c)) {
          if (returned) ctx.signalUsed(qi);
          return false;
        }
        // §5.1.6.3.1: with MRG_RXBUF each buffer MUST be at least the header size.
        if (c.writableBytes < h) {
          this.#smallBuffer(ctx, q, c, c.writableBytes);
          returned = true;
          continue;
        }
        rx.count++;
        rx.bytes += c.writableBytes;
      }
      let n = 0;
      let left = need;
      while (left > 0) left -= rx.held[n++]!.writableBytes;
      this.#writeHeader(mem, rx.held[0]!, n);
      // Scatter the frame: after the header in the first buffer, then buffer by buffer.
      let off = 0;
      for (let i = 0; i < n; i++) {
        const c = rx.held[i]!;
        const at = i === 0 ? h : 0;
        const room = c.writableBytes - at;
        const take = Math.min(room, frame.length - off);
        const piece = off === 0 && take === frame.length ? frame : frame.subarray(off, off + take);
        c.copyToWritable(mem, at, piece);
        q.push(c.head, at + take);
        off += take;
      }
      // Keep the chains not used (rare: a frame smaller than the held ones), in order.
      const held = rx.held;
      let bytes = 0;
      for (let i = n; i < rx.count; i++) {
        const t = held[i - n]!;
        held[i - n] = held[i]!;
        held[i] = t;
        bytes += held[i - n]!.writableBytes;
      }
      rx.count -= n;
      rx.bytes = bytes;
    }
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    ctx.signalUsed(qi);
    return true;
  }

  #writeHeader(mem: DeviceContext["memory"], c: DescriptorChain, numBuffers: number): void {
    // flags 0 (no DATA_VALID: the device verified nothing), gso_type NONE, hdr_len, gso_size,
    // csum_start, csum_offset 0. §5.1.6.4.1: num_buffers is 1 without MRG_RXBUF (VERSION_1).
    const hdr = this.#rxHdr;
    hdr[NetHdr.NUM_BUFFERS] = numBuffers & 0xff;
    hdr[NetHdr.NUM_BUFFERS + 1] = numBuffers >>> 8;
    c.copyToWritable(mem, 0, this.#rxHdrView);
  }

  #smallBuffer(ctx: DeviceContext, q: DeviceQueue, c: DescriptorChain, bytes: number): void {
    this.stats.rxSmallBuffers++;
    ctx.noteFault(new NetGuestFault("net-rx-small-buffer", c.head, bytes));
    q.push(c.head, 0);
  }

  /** Whether the receive filter passes `frame` (§5.1.6.5.1, §5.1.6.5.2). */
  #accepts(f: Uint8Array): boolean {
    if (this.#promisc) return true;
    if ((f[0]! & 1) !== 0) {
      if (
        f[0] === 0xff &&
        f[1] === 0xff &&
        f[2] === 0xff &&
        f[3] === 0xff &&
        f[4] === 0xff &&
        f[5] === 0xff
      ) {
        return !this.#nobcast;
      }
      if (this.#nomulti) return false;
      if (this.#allmulti || this.#multiOverflow) return true;
      return inTable(this.#multi, this.#multiCount, f);
    }
    if (this.#nouni) return false;
    if (this.#alluni || this.#uniOverflow) return true;
    return inTable(this.#mac, 1, f) || inTable(this.#uni, this.#uniCount, f);
  }

  // ---- transmit (§5.1.6.2) ----

  #transmit(ctx: DeviceContext, qi: number): void {
    const q = ctx.queue(qi);
    if (q === undefined) return;
    const chain = this.#txChains[qi >> 1]!;
    let pushed = false;
    for (;;) {
      q.disableNotifications();
      while (this.#pop(ctx, q, chain)) {
        this.#transmitOne(ctx, chain);
        // The device writes nothing into a transmit buffer.
        q.push(chain.head, 0);
        pushed = true;
      }
      if (!q.enableNotifications()) break;
    }
    if (!pushed) return;
    const pair = qi >> 1;
    if (!this.#coalesceTx || pair >= 32) {
      ctx.signalUsed(qi);
      return;
    }
    if (this.#txDue === 0) queueTask(this.#flushTx);
    this.#txDue |= 1 << pair;
    this.#txDueCtx = ctx;
  }

  #transmitOne(ctx: DeviceContext, chain: DescriptorChain): void {
    const s = this.stats;
    const mem = ctx.memory;
    const h = this.#hdrLen;
    const r = chain.readableBytes;
    if (r < h) {
      s.txShortHeader++;
      ctx.noteFault(new NetGuestFault("net-tx-short-header", chain.head, r));
      return;
    }
    const hdr = this.#txHdr;
    chain.copyFromReadable(mem, 0, h === NetHdr.SIZE ? hdr : hdr.subarray(0, h));
    const len = r - h;
    if (len < ETH_HLEN) {
      s.txRunt++;
      ctx.noteFault(new NetGuestFault("net-tx-runt", chain.head, len));
      return;
    }
    if (len > this.#maxFrame) {
      s.txOversize++;
      ctx.noteFault(new NetGuestFault("net-tx-oversize", chain.head, len));
      return;
    }
    // §5.1.6.2.1: without HOST_TSO4/6/UFO (none offered) the driver MUST set gso_type NONE.
    const gso = hdr[NetHdr.GSO_TYPE]!;
    if (gso !== 0) {
      s.txGso++;
      ctx.noteFault(new NetGuestFault("net-tx-gso", chain.head, gso));
      return;
    }
    const frame = this.#txView(len);
    chain.copyFromReadable(mem, h, frame);
    if ((hdr[NetHdr.FLAGS]! & NetHdrFlags.NEEDS_CSUM) !== 0) {
      // §5.1.6.2.1: NEEDS_CSUM only with CSUM negotiated. §5.1.6.2.2: the device completes
      // the checksum from csum_start, stored at csum_start + csum_offset.
      const start = hdr[NetHdr.CSUM_START]! | (hdr[NetHdr.CSUM_START + 1]! << 8);
      const off = hdr[NetHdr.CSUM_OFFSET]! | (hdr[NetHdr.CSUM_OFFSET + 1]! << 8);
      if (!this.#csum || !completeChecksum(frame, start, off)) {
        s.txBadCsum++;
        ctx.noteFault(new NetGuestFault("net-tx-bad-csum", chain.head, start + off));
        return;
      }
    }
    s.txFrames++;
    s.txBytes += len;
    let ok = false;
    try {
      ok = this.backend.transmit(frame);
    } catch (e) {
      // The contract says never throw; a buggy back-end must not stop the queue.
      this.lastBackendError = e;
    }
    if (!ok) s.txBackendDrops++;
  }

  /**
   * A view of the first `len` bytes of the transmit buffer. Views are cached by length in a
   * small direct-mapped table, so steady traffic of a few frame sizes allocates nothing.
   */
  #txView(len: number): Uint8Array {
    const slot = len % TX_VIEW_CACHE;
    let v = this.#txViews[slot];
    if (v === undefined || v.length !== len) {
      v = this.#txBuf.subarray(0, len);
      this.#txViews[slot] = v;
    }
    return v;
  }

  // ---- control queue (§5.1.6.5) ----

  #control(ctx: DeviceContext): void {
    const q = ctx.queue(this.#ctrlIndex);
    if (q === undefined) return;
    const chain = this.#ctrlChain;
    const ack = this.#scratch.subarray(0, 1);
    let pushed = false;
    while (this.#pop(ctx, q, chain)) {
      pushed = true;
      if (chain.writableBytes < 1) {
        this.stats.ctrlErr++;
        ctx.noteFault(new NetGuestFault("net-ctrl-no-ack", chain.head, 0));
        q.push(chain.head, 0);
        continue;
      }
      const ok = this.#command(ctx, chain);
      if (ok) this.stats.ctrlOk++;
      else this.stats.ctrlErr++;
      ack[0] = ok ? NetCtrlAck.OK : NetCtrlAck.ERR;
      // §5.1.6.5: `ack` is the first device-writable byte.
      chain.copyToWritable(ctx.memory, 0, ack);
      q.push(chain.head, 1);
    }
    if (pushed) ctx.signalUsed(this.#ctrlIndex);
  }

  /** Run one control command. @returns whether it succeeded (VIRTIO_NET_OK). */
  #command(ctx: DeviceContext, chain: DescriptorChain): boolean {
    const mem = ctx.memory;
    const total = chain.readableBytes;
    if (total < 2) return false;
    const b = this.#scratch;
    chain.copyFromReadable(mem, 0, b.subarray(0, 2));
    const cls = b[0]!;
    const cmd = b[1]!;
    const dataLen = total - 2;
    switch (cls) {
      case NetCtrlClass.RX: {
        // §5.1.6.5.1: each RX command carries one byte, 0 = off.
        if (!this.#ctrlRx || dataLen !== 1) return false;
        if (cmd > NetCtrlCmd.RX_ALLMULTI && !this.#ctrlRxExtra) return false;
        chain.copyFromReadable(mem, 2, b.subarray(0, 1));
        const on = b[0] !== 0;
        switch (cmd) {
          case NetCtrlCmd.RX_PROMISC:
            this.#promisc = on;
            return true;
          case NetCtrlCmd.RX_ALLMULTI:
            this.#allmulti = on;
            return true;
          case NetCtrlCmd.RX_ALLUNI:
            this.#alluni = on;
            return true;
          case NetCtrlCmd.RX_NOMULTI:
            this.#nomulti = on;
            return true;
          case NetCtrlCmd.RX_NOUNI:
            this.#nouni = on;
            return true;
          case NetCtrlCmd.RX_NOBCAST:
            this.#nobcast = on;
            return true;
          default:
            return false;
        }
      }
      case NetCtrlClass.MAC:
        if (cmd === NetCtrlCmd.MAC_TABLE_SET) return this.#ctrlRx && this.#macTable(ctx, chain);
        if (cmd === NetCtrlCmd.MAC_ADDR_SET) {
          // §5.1.6.5.2: six bytes; the device uses them as its address and in config `mac`.
          if (!this.#ctrlMacAddr || dataLen !== MAC_LEN) return false;
          chain.copyFromReadable(mem, 2, b.subarray(0, MAC_LEN));
          this.#mac.set(b.subarray(0, MAC_LEN));
          return true;
        }
        return false;
      case NetCtrlClass.ANNOUNCE:
        // §5.1.6.5.4: ANNOUNCE_ACK (no data) clears VIRTIO_NET_S_ANNOUNCE.
        if (!this.#announce || cmd !== NetCtrlCmd.ANNOUNCE_ACK || dataLen !== 0) return false;
        this.#status &= ~NetStatus.ANNOUNCE;
        return true;
      case NetCtrlClass.MQ: {
        if (!this.#mq || cmd !== NetCtrlCmd.MQ_VQ_PAIRS_SET || dataLen !== 2) return false;
        chain.copyFromReadable(mem, 2, b.subarray(0, 2));
        const n = b[0]! | (b[1]! << 8);
        // §5.1.6.5.5: 1 ≤ virtqueue_pairs ≤ max_virtqueue_pairs, else VIRTIO_NET_ERR.
        if (n < NetMqPairs.MIN || n > this.maxQueuePairs) return false;
        this.#pairs = n;
        return true;
      }
      default:
        return false;
    }
  }

  /**
   * MAC_TABLE_SET (§5.1.6.5.2): two `virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6] }`
   * (unicast, then multicast) filling the command exactly. Counts are distrusted: each must fit
   * in the bytes left, and entries past the table size set the overflow flag instead of being
   * stored. Parsed into staging tables and swapped in only on success.
   */
  #macTable(ctx: DeviceContext, chain: DescriptorChain): boolean {
    const mem = ctx.memory;
    const total = chain.readableBytes;
    const b = this.#scratch;
    let at = 2;
    let uniCount = 0;
    let uniOverflow = false;
    let multiCount = 0;
    let multiOverflow = false;
    for (let t = 0; t < 2; t++) {
      if (total - at < 4) return false;
      chain.copyFromReadable(mem, at, b.subarray(0, 4));
      at += 4;
      const n = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
      // n < 2^32, so n * 6 is exact.
      if (n * MAC_LEN > total - at) return false;
      const stage = t === 0 ? this.#uniStage : this.#multiStage;
      const kept = Math.min(n, this.#tableEntries);
      for (let i = 0; i < kept; i++) {
        chain.copyFromReadable(mem, at + i * MAC_LEN, stage.subarray(i * MAC_LEN, i * MAC_LEN + 6));
      }
      at += n * MAC_LEN;
      if (t === 0) {
        uniCount = kept;
        uniOverflow = n > kept;
      } else {
        multiCount = kept;
        multiOverflow = n > kept;
      }
    }
    if (at !== total) return false;
    [this.#uni, this.#uniStage] = [this.#uniStage, this.#uni];
    [this.#multi, this.#multiStage] = [this.#multiStage, this.#multi];
    this.#uniCount = uniCount;
    this.#uniOverflow = uniOverflow;
    this.#multiCount = multiCount;
    this.#multiOverflow = multiOverflow;
    return true;
  }

  /**
   * Pop the next chain into `c`. A malformed chain (`ChainError`) is returned with length 0,
   * counted, and skipped; a `RingError` propagates (the caller's guard sets NEEDS_RESET).
   */
  #pop(ctx: DeviceContext, q: DeviceQueue, c: DescriptorChain): boolean {
    for (;;) {
      try {
        return q.pop(c);
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        this.stats.badChains++;
        ctx.noteFault(e);
        q.push(e.head, 0);
      }
    }
  }
}

function checkQueueSize(name: string, qs: number): number {
  if (!Number.isInteger(qs) || qs < 2 || qs > 32768 || (qs & (qs - 1)) !== 0) {
    throw new RangeError(`${name} must be a power of 2 in [2, 32768], got ${qs}`);
  }
  return qs;
}

/** Whether the destination MAC of `f` is one of the first `n` entries of `table`. */
function inTable(table: Uint8Array, n: number, f: Uint8Array): boolean {
  for (let i = 0, at = 0; i < n; i++, at += MAC_LEN) {
    if (
      table[at] === f[0] &&
      table[at + 1] === f[1] &&
      table[at + 2] === f[2] &&
      table[at + 3] === f[3] &&
      table[at + 4] === f[4] &&
      table[at + 5] === f[5]
    ) {
      return true;
    }
  }
  return false;
}

function fnv(h: number, f: Uint8Array, from: number, to: number): number {
  let x = h;
  for (let i = from; i < to; i++) x = Math.imul(x ^ f[i]!, 0x01000193);
  return x;
}

/**
 * The receive steering hash (see {@link NetDevice}): FNV-1a over the IPv4 addresses and, for an
 * unfragmented TCP or UDP packet, the ports; over the source MAC for anything else. Reads only
 * inside `f` (at least 14 bytes).
 */
export function flowHash(f: Uint8Array): number {
  let h = 0x811c9dc5;
  const len = f.length;
  if (len >= 34 && f[12] === 0x08 && f[13] === 0x00 && f[14]! >> 4 === 4) {
    h = fnv(h, f, 26, 34);
    const ihl = (f[14]! & 0x0f) * 4;
    const proto = f[23];
    const fragmented = ((f[20]! & 0x1f) | f[21]!) !== 0;
    const l4 = ETH_HLEN + ihl;
    if (ihl >= 20 && !fragmented && (proto === 6 || proto === 17) && l4 + 4 <= len) {
      h = fnv(h, f, l4, l4 + 4);
    }
  } else {
    h = fnv(h, f, 6, 12);
  }
  return h >>> 0;
}
