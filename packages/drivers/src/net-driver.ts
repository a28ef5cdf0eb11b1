/**
 * virtio-net driver (guest side).
 * @see VIRTIO 1.3 §5.1 "Network Device"
 * @module
 */
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  completeChecksum,
  DeviceId,
  ETH_ALEN,
  ETH_HLEN,
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
  NetHdr,
  NetHdrFlags,
  NetMqPairs,
  NetStatus,
} from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import { type DriverQueue, ringAreaBytes, ringLayoutAt } from "@virtio-ts/virtqueue";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

/** Why the net driver distrusts what the device did. */
export type NetDeviceFaultCode =
  /** The device is not a network device (DeviceID is not 1). */
  | "net-not-net"
  /** A configuration field is unusable (`mtu` below 68, `max_virtqueue_pairs` out of range). */
  | "net-bad-config"
  /** A used length shorter than the header, or longer than the buffer. */
  | "net-bad-used-len"
  /** `num_buffers` is 0, above 1 without MRG_RXBUF, or more than the queue can hold. */
  | "net-bad-num-buffers"
  /** A received frame shorter than 14 or longer than `mtu + 14` bytes. */
  | "net-bad-frame"
  /** A received header with `gso_type` set (no GUEST_TSO/UFO was negotiated) or unusable NEEDS_CSUM. */
  | "net-bad-header"
  /** A control command's ack byte is neither VIRTIO_NET_OK nor VIRTIO_NET_ERR. */
  | "net-bad-ack"
  /** The device corrupted a ring (a `RingError` while reaping): the driver stops. */
  | "net-ring-broken"
  /** The device set DEVICE_NEEDS_RESET (§2.1.2): the driver stops. */
  | "net-needs-reset";

/**
 * The device broke the virtio-net protocol (drivers distrust devices). Raised at construction
 * for a bad device or configuration; recorded in {@link NetDriver.lastFault} (and counted) for
 * a malformed received buffer, which is dropped; and, for "net-ring-broken" /
 * "net-needs-reset", the rejection of every pending and later operation.
 */
export class NetDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: NetDeviceFaultCode;
  /** The offending value (a length, `num_buffers`, ack byte, config field or DeviceID). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   */
  constructor(code: NetDeviceFaultCode, message: string, value: number) {
    super(`${code}: ${message}`);
    this.code = code;
    this.value = value;
  }
}

/**
 * A control command failed (VIRTIO 1.3 §5.1.6.5): the device answered VIRTIO_NET_ERR
 * ("net-ctrl-err"), or the feature it needs was not negotiated so it was never sent
 * ("net-ctrl-unsupported").
 */
export class NetCtrlError extends VirtioError {
  /** Which of the two. */
  readonly code: "net-ctrl-err" | "net-ctrl-unsupported";
  /** The command class ({@link NetCtrlClass}). */
  readonly cls: number;
  /** The command ({@link NetCtrlCmd}). */
  readonly cmd: number;

  /**
   * @param code - device error or not negotiated
   * @param cls - command class
   * @param cmd - command
   */
  constructor(code: "net-ctrl-err" | "net-ctrl-unsupported", cls: number, cmd: number) {
    super(`virtio-net control command ${cls}.${cmd} failed: ${code}`);
    this.code = code;
    this.cls = cls;
    this.cmd = cmd;
  }
}

/** Options of a {@link NetDriver}. */
export interface NetDriverOptions {
  /**
   * Guest address of the driver-owned ring area, {@link NetDriver.ringBytes} bytes, 16-aligned:
   * one area per queue (every receive and transmit queue of the pairs set up, then the control
   * queue).
   */
  readonly ringBase: number;
  /** Size of every queue, a power of 2 (default min(256, QueueNumMax)); capped per queue by QueueNumMax. */
  readonly queueSize?: number;
  /** Queue pairs to set up at most (default 1; VIRTIO_NET_F_MQ is accepted only above 1). */
  readonly maxQueuePairs?: number;
  /**
   * Receive buffers posted per receive queue: at least what one largest frame needs, at most the
   * queue size (default: half the queue size, or twice what a largest frame needs if more).
   */
  readonly rxBuffers?: number;
  /** Received frames buffered for {@link NetDriver.frames} before reaping stops (default 256). */
  readonly rxQueueLimit?: number;
  /** Accept VIRTIO_NET_F_MRG_RXBUF when offered (default true). */
  readonly mrgRxbuf?: boolean;
  /** Accept VIRTIO_NET_F_CSUM (checksum offload on transmit) when offered (default true). */
  readonly csum?: boolean;
  /** Accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
  /** Accept VIRTIO_F_EVENT_IDX when offered (default true). */
  readonly eventIdx?: boolean;
  /** MAC to use when the device offers no VIRTIO_NET_F_MAC (default: random, locally administered). */
  readonly mac?: Uint8Array;
  /**
   * Called when the device asks for an announcement (VIRTIO_NET_S_ANNOUNCE, §5.1.6.5.4), before
   * the driver acknowledges it: send gratuitous ARP / neighbour advertisements here.
   */
  readonly onAnnounce?: () => void;
}

/** Per-frame transmit options of {@link NetDriver.trySend} / {@link NetDriver.send}. */
export interface NetSendOptions {
  /**
   * Ask for checksum completion (VIRTIO_NET_HDR_F_NEEDS_CSUM, §5.1.6.2): the checksum field at
   * `csumStart + csumOffset` holds the pseudo-header sum, and the one's complement sum from
   * `csumStart` to the end of the frame goes there. Done by the device with VIRTIO_NET_F_CSUM,
   * otherwise by the driver before sending.
   */
  readonly csum?: NetCsumRequest;
}

/** Where a partial checksum starts and where it goes (`csum_start` / `csum_offset`, §5.1.6.2). */
export interface NetCsumRequest {
  /** Offset in the frame where summing starts (`csum_start`). */
  readonly start: number;
  /** Offset of the 16-bit checksum field from `start` (`csum_offset`). */
  readonly offset: number;
}

/** Counters of a {@link NetDriver} (mutated in place). */
export interface NetDriverStats {
  /** Frames put on a transmit queue. */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
  /** Frames received and queued for {@link NetDriver.frames}. */
  rxFrames: number;
  /** Bytes of those frames. */
  rxBytes: number;
  /** Malformed received buffers dropped (each a {@link NetDeviceFault}, the last one kept). */
  rxFaults: number;
  /** Announcements acknowledged. */
  announcements: number;
}

/** The feature bits {@link NetDriver} accepts when offered (§5.1.3), before options. */
export const NET_DRIVER_FEATURES: bigint = [
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
  NetFeature.MQ,
  Feature.RING_EVENT_IDX,
  Feature.RING_PACKED,
].reduce((m, bit) => m | featureMask(bit), 0n);

/** The extra RX modes of VIRTIO_NET_F_CTRL_RX_EXTRA (§5.1.6.5.1). */
export type NetRxMode = "alluni" | "nomulti" | "nouni" | "nobcast";

const RX_MODE_CMD: Record<NetRxMode, number> = {
  alluni: NetCtrlCmd.RX_ALLUNI,
  nomulti: NetCtrlCmd.RX_NOMULTI,
  nouni: NetCtrlCmd.RX_NOUNI,
  nobcast: NetCtrlCmd.RX_NOBCAST,
};

const MAC_LEN = ETH_ALEN;

interface CtrlReq {
  readonly cls: number;
  readonly cmd: number;
  readonly data: Uint8Array;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
  slot: number;
}

interface PendingSend {
  readonly frame: Uint8Array;
  readonly options: NetSendOptions | undefined;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

/** Reassembly state of one receive queue (a frame spread over `num_buffers` buffers). */
class RxState {
  /** Buffers still expected for the frame being reassembled (0: none in progress). */
  left = 0;
  got = 0;
  /** The frame is malformed: consume its buffers, then drop it. */
  discard = false;
  flags = 0;
  csumStart = 0;
  csumOffset = 0;
  /** Buffers posted and not yet reaped. */
  posted = 0;
  readonly buf: Uint8Array;
  constructor(maxFrame: number) {
    this.buf = new Uint8Array(maxFrame);
  }
}

/** Mutable segment objects reused for every `add` (the queue copies them into descriptors). */
interface MutSegment {
  addr: number;
  len: number;
}

/**
 * Guest-side virtio-net driver over an {@link DriverTransport} (VIRTIO 1.3 §5.1).
 *
 * Initialisation (§5.1.5): negotiates (see {@link NET_DRIVER_FEATURES} and the options), reads
 * `mac`, `status`, `mtu` and `max_virtqueue_pairs`, sets up the receive/transmit pairs and the
 * control queue, sets DRIVER_OK, then fills the receive queue(s).
 *
 * Memory: every buffer is an `allocator` slot. A receive buffer is one slot (header and frame;
 * without MRG_RXBUF the slot must hold `12 + mtu + 14` bytes). A transmit frame takes
 * `ceil((12 + length) / slotSize)` slots, one descriptor each; a control command takes one.
 *
 * Transmit: {@link NetDriver.trySend} copies the frame behind a `virtio_net_hdr_v1` and posts
 * it, or returns false when descriptors or slots are short; {@link NetDriver.send} waits (FIFO)
 * for room; {@link NetDriver.whenWritable} resolves at the next transmit completion. With
 * several pairs in use, a frame goes to the pair its flow hashes to (IPv4 addresses and ports).
 *
 * Receive: buffers are refilled as they are reaped. With MRG_RXBUF a frame spread over
 * `num_buffers` buffers is reassembled. Received frames wait in a bounded queue for
 * {@link NetDriver.frames} / {@link NetDriver.tryReceive}; when it is full the driver stops
 * reaping, so the used buffers stay with the driver and the device runs out of buffers (the
 * back-end then holds or drops frames) — back-pressure, never an unbounded queue.
 *
 * Distrust: a used length shorter than the header or longer than the buffer, a bad
 * `num_buffers`, a frame outside [14, mtu + 14] bytes or a header with `gso_type` set drops
 * that frame, counts it in `stats.rxFaults` and records a {@link NetDeviceFault} in
 * {@link NetDriver.lastFault}. A corrupted ring or DEVICE_NEEDS_RESET stops the driver: pending
 * operations reject and later ones too.
 *
 * Completion: the driver does nothing until {@link NetDriver.poll} or
 * {@link NetDriver.onInterrupt} is called.
 *
 * @example
 * ```ts
 * const nic = new NetDriver(transport, memory, new SlabAllocator(0x100000, 2048, 512), { ringBase: 0x10000 });
 * nic.trySend(frame);
 * // ... the device runs, then the interrupt handler calls nic.onInterrupt()
 * for await (const rx of nic.frames()) console.log(rx.length);
 * ```
 */
export class NetDriver {
  /** Counters. */
  readonly stats: NetDriverStats = {
    txFrames: 0,
    txBytes: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxFaults: 0,
    announcements: 0,
  };
  /** The last malformed receive buffer's fault (the buffer was dropped). */
  lastFault: NetDeviceFault | undefined = undefined;

  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #features: bigint;
  readonly #hdrLen: number;
  readonly #mrg: boolean;
  readonly #mac = new Uint8Array(MAC_LEN);
  readonly #mtu: number;
  readonly #maxFrame: number;
  readonly #maxPairs: number;
  readonly #setUpPairs: number;
  readonly #rxQ: DriverQueue<number>[] = [];
  readonly #txQ: DriverQueue<number>[] = [];
  /** `#freeTx` / `#completeCtrl` bound once, for `reapAll`. */
  readonly #onTxUsed = (slot: number): void => this.#freeTx(slot);
  readonly #onCtrlUsed = (req: CtrlReq, len: number): void => this.#completeCtrl(req, len);
  readonly #rx: RxState[] = [];
  readonly #ctrlQ: DriverQueue<CtrlReq> | undefined;
  readonly #ctrlIndex: number;
  readonly #rxBuffers: number;
  readonly #rxLimit: number;
  readonly #onAnnounce: (() => void) | undefined;
  /** Next slot of a multi-slot transmit frame, by slot number (-1: last). Allocation-free links. */
  readonly #txNext: Int32Array;
  readonly #segs: MutSegment[] = [];
  readonly #noSegs: MutSegment[] = [];
  readonly #rxSeg: MutSegment[] = [{ addr: 0, len: 1 }];
  readonly #hdrScratch = new Uint8Array(NetHdr.SIZE);
  /** `#hdrScratch` cut to the negotiated header length. */
  readonly #hdrView: Uint8Array;
  /** Slots receive refills leave free: one largest transmit frame plus one control command. */
  readonly #reserve: number;
  #status: number;
  #pairs = 1;
  #broken: NetDeviceFault | undefined;
  #announcing = false;
  readonly #frames: Uint8Array[] = [];
  #frameHead = 0;
  #rxStalled = false;
  readonly #frameWaiters: {
    resolve: (r: IteratorResult<Uint8Array>) => void;
    reject: (e: unknown) => void;
  }[] = [];
  readonly #sends: PendingSend[] = [];
  readonly #writable: (() => void)[] = [];
  readonly #ctrlWaiting: CtrlReq[] = [];
  readonly #ctrlLive = new Set<CtrlReq>();

  /**
   * Bytes of the ring area {@link NetDriverOptions.ringBase} must point at.
   * @param queueSize - queue size
   * @param queuePairs - queue pairs set up (the control queue is included)
   */
  static ringBytes(queueSize: number, queuePairs = 1): number {
    return ringAreaBytes(queueSize) * (2 * queuePairs + 1);
  }

  /**
   * Initialise the device (§3.1.1, §5.1.5).
   *
   * @param transport - the device's transport (not yet initialised; it is reset)
   * @param memory - guest memory holding the rings and the allocator's region
   * @param allocator - slots for every buffer (receive buffers, transmit frames, commands)
   * @param options - ring address, queue size, pairs, buffering and feature choices
   * @throws TransportError from negotiation / queue setup; NetDeviceFault "net-not-net" or
   *   "net-bad-config" (FAILED is then set); RangeError naming an invalid option or an
   *   `allocator` whose slots cannot hold a frame
   */
  constructor(
    transport: DriverTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: NetDriverOptions,
  ) {
    const wantPairs = options.maxQueuePairs ?? 1;
    if (!Number.isInteger(wantPairs) || wantPairs < 1 || wantPairs > NetMqPairs.MAX) {
      throw new RangeError(
        `options.maxQueuePairs must be an integer in [1, 32768], got ${wantPairs}`,
      );
    }
    const limit = options.rxQueueLimit ?? 256;
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(`options.rxQueueLimit must be a positive integer, got ${limit}`);
    }
    if (options.mac !== undefined && options.mac.length !== MAC_LEN) {
      throw new RangeError(`options.mac must be 6 bytes, got ${options.mac.length}`);
    }
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    this.#rxLimit = limit;
    this.#onAnnounce = options.onAnnounce;
    const info = transport.probe();
    if (info.deviceId !== DeviceId.NET) {
      throw new NetDeviceFault("net-not-net", `DeviceID is ${info.deviceId}`, info.deviceId);
    }
    let wanted = NET_DRIVER_FEATURES;
    if (options.mrgRxbuf === false) wanted &= ~featureMask(NetFeature.MRG_RXBUF);
    if (options.csum === false) wanted &= ~featureMask(NetFeature.CSUM);
    if (options.packed === false) wanted &= ~featureMask(Feature.RING_PACKED);
    if (options.eventIdx === false) wanted &= ~featureMask(Feature.RING_EVENT_IDX);
    if (wantPairs === 1) wanted &= ~featureMask(NetFeature.MQ);
    const f = transport.negotiate((offered) => {
      let a = offered & wanted;
      // §5.1.3.1: no feature whose dependency is missing.
      if (!hasFeature(a, NetFeature.CTRL_VQ)) {
        a &= ~[
          NetFeature.CTRL_RX,
          NetFeature.CTRL_RX_EXTRA,
          NetFeature.CTRL_MAC_ADDR,
          NetFeature.GUEST_ANNOUNCE,
          NetFeature.MQ,
        ].reduce((m, b) => m | featureMask(b), 0n);
      }
      if (!hasFeature(a, NetFeature.CTRL_RX)) a &= ~featureMask(NetFeature.CTRL_RX_EXTRA);
      return a;
    });
    this.#features = f;
    const cfg = transport.readConfig((c) => ({
      mac: hasFeature(f, NetFeature.MAC)
        ? Array.from({ length: MAC_LEN }, (_, i) => c.u8(NetConfig.MAC + i))
        : undefined,
      status: hasFeature(f, NetFeature.STATUS) ? c.u16(NetConfig.STATUS) : NetStatus.LINK_UP,
      pairs: hasFeature(f, NetFeature.MQ) ? c.u16(NetConfig.MAX_VIRTQUEUE_PAIRS) : 1,
      mtu: hasFeature(f, NetFeature.MTU) ? c.u16(NetConfig.MTU) : 1500,
    }));
    const bad = (msg: string, v: number): never => {
      transport.fail();
      throw new NetDeviceFault("net-bad-config", msg, v);
    };
    // §5.1.4.1: the device MUST NOT set mtu below 68; max_virtqueue_pairs is 1 to 0x8000.
    if (cfg.mtu < 68) bad("mtu is below 68", cfg.mtu);
    if (cfg.pairs < NetMqPairs.MIN || cfg.pairs > NetMqPairs.MAX) {
      bad("max_virtqueue_pairs is outside [1, 0x8000]", cfg.pairs);
    }
    if (cfg.mac !== undefined) this.#mac.set(cfg.mac);
    else if (options.mac !== undefined) this.#mac.set(options.mac);
    else {
      // §5.1.5: without VIRTIO_NET_F_MAC the driver picks a random address.
      const c = (globalThis as { crypto?: { getRandomValues(b: Uint8Array): Uint8Array } }).crypto;
      if (c !== undefined) c.getRandomValues(this.#mac);
      else for (let i = 0; i < MAC_LEN; i++) this.#mac[i] = Math.floor(Math.random() * 256);
      this.#mac[0] = (this.#mac[0]! & 0xfe) | 0x02; // unicast, locally administered
    }
    this.#status = cfg.status;
    this.#mtu = cfg.mtu;
    this.#maxFrame = cfg.mtu + ETH_HLEN;
    this.#mrg = hasFeature(f, NetFeature.MRG_RXBUF);
    // §5.1.6.1: 12 bytes with VERSION_1 or MRG_RXBUF.
    this.#hdrLen = this.#mrg || hasFeature(f, Feature.VERSION_1) ? NetHdr.SIZE : NetHdr.LEGACY_SIZE;
    if (!this.#mrg && allocator.slotSize < this.#hdrLen + this.#maxFrame) {
      // §5.1.6.3.1: without MRG_RXBUF every receive buffer must hold a whole frame.
      throw new RangeError(
        `allocator.slotSize must be at least ${this.#hdrLen + this.#maxFrame} without MRG_RXBUF, got ${allocator.slotSize}`,
      );
    }
    this.#maxPairs = cfg.pairs;
    const pairs = Math.min(wantPairs, cfg.pairs);
    this.#setUpPairs = pairs;
    const mq = hasFeature(f, NetFeature.MQ);
    this.#ctrlIndex = mq ? 2 * cfg.pairs : 2;

    const size = options.queueSize ?? Math.min(256, transport.queueMaxSize(0));
    if (!Number.isInteger(size) || size < 2 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`options.queueSize must be a power of 2 in [2, 32768], got ${size}`);
    }
    // Buffers one largest frame needs (1 without MRG_RXBUF, where a slot holds a frame).
    const perFrame = Math.ceil((this.#hdrLen + this.#maxFrame) / allocator.slotSize);
    const rxBuffers = options.rxBuffers ?? Math.min(size, Math.max(size >> 1, 2 * perFrame));
    if (!Number.isInteger(rxBuffers) || rxBuffers < perFrame || rxBuffers > size) {
      // Fewer posted buffers than a largest frame needs would stall reception for good.
      throw new RangeError(
        `options.rxBuffers must be an integer in [${perFrame}, ${size}] (buffers per largest frame, queue size), got ${rxBuffers}`,
      );
    }
    this.#reserve = perFrame + 1;
    if (allocator.slots < perFrame + this.#reserve) {
      // Room for one largest frame in each direction plus a command, or nothing can progress.
      throw new RangeError(
        `allocator must have at least ${perFrame + this.#reserve} slots, got ${allocator.slots}`,
      );
    }
    this.#hdrView = this.#hdrScratch.subarray(0, this.#hdrLen);
    this.#rxBuffers = rxBuffers;
    this.#txNext = new Int32Array(allocator.slots).fill(-1);
    const area = ringAreaBytes(size);
    let at = options.ringBase;
    const setup = <T>(index: number): DriverQueue<T> => {
      const s = Math.min(size, transport.queueMaxSize(index));
      const q = transport.setupQueue<T>(index, memory, ringLayoutAt(at, s));
      at += area;
      return q;
    };
    for (let p = 0; p < pairs; p++) {
      this.#rxQ.push(setup<number>(2 * p));
      this.#txQ.push(setup<number>(2 * p + 1));
      this.#rx.push(new RxState(this.#maxFrame));
    }
    this.#ctrlQ = hasFeature(f, NetFeature.CTRL_VQ) ? setup<CtrlReq>(this.#ctrlIndex) : undefined;
    transport.driverOk();
    // §5.1.5: fill the receive queue (only pair 1 is in use until VQ_PAIRS_SET).
    this.#fill(0);
    this.#kick();
  }

  /** The MAC address (config `mac`, or chosen by the driver; changed by {@link NetDriver.setMac}). */
  get mac(): Uint8Array {
    return new Uint8Array(this.#mac);
  }

  /** `mtu` when negotiated, else 1500. Frames may be up to `mtu + 14` bytes. */
  get mtu(): number {
    return this.#mtu;
  }

  /** Whether the link is up (VIRTIO_NET_S_LINK_UP; always true without VIRTIO_NET_F_STATUS). */
  get linkUp(): boolean {
    return (this.#status & NetStatus.LINK_UP) !== 0;
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** `max_virtqueue_pairs` (1 without VIRTIO_NET_F_MQ). */
  get maxQueuePairs(): number {
    return this.#maxPairs;
  }

  /** Queue pairs in use (1 until {@link NetDriver.setQueuePairs}). */
  get queuePairs(): number {
    return this.#pairs;
  }

  /** Received frames waiting for {@link NetDriver.frames}. */
  get pendingFrames(): number {
    return this.#frames.length - this.#frameHead;
  }

  /**
   * Post one frame for transmission if there is room: the frame is copied, behind a
   * `virtio_net_hdr` (§5.1.6.2), into allocator slots, and the device is notified.
   * @param frame - an Ethernet frame (no FCS) of 14 to `mtu + 14` bytes
   * @param options - checksum offload request
   * @returns false (nothing sent) when descriptors or slots are short: wait for
   *   {@link NetDriver.whenWritable}
   * @throws RangeError naming `frame` or `options.csum`; NetDeviceFault if the driver stopped
   */
  trySend(frame: Uint8Array, options?: NetSendOptions): boolean {
    this.#checkFrame(frame, options);
    if (this.#broken !== undefined) throw this.#broken;
    if (!this.#post(frame, options)) return false;
    this.#kick();
    return true;
  }

  /**
   * Send one frame, waiting (in FIFO order with other waiting `send` calls) for room on the
   * transmit queue. Resolves when the frame is on the ring; the bytes are copied then, so keep
   * `frame` unchanged until the promise settles.
   * @param frame - an Ethernet frame of 14 to `mtu + 14` bytes
   * @param options - checksum offload request
   * @throws RangeError (synchronously) naming `frame` or `options.csum`; NetDeviceFault
   *   (rejection) if the driver stopped
   */
  send(frame: Uint8Array, options?: NetSendOptions): Promise<void> {
    this.#checkFrame(frame, options);
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    if (this.#sends.length === 0 && this.#post(frame, options)) {
      this.#kick();
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      this.#sends.push({ frame, options, resolve, reject });
    });
  }

  /**
   * Resolves at the next transmit completion (when room may have appeared), or at once if the
   * driver stopped (the next `trySend` then throws).
   */
  whenWritable(): Promise<void> {
    if (this.#broken !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.#writable.push(resolve));
  }

  /**
   * Take one received frame without waiting.
   * @returns the frame, or undefined if none is buffered
   */
  tryReceive(): Uint8Array | undefined {
    if (this.#frameHead === this.#frames.length) return undefined;
    const f = this.#frames[this.#frameHead]!;
    this.#frames[this.#frameHead++] = undefined as unknown as Uint8Array;
    if (this.#frameHead === this.#frames.length) {
      this.#frames.length = 0;
      this.#frameHead = 0;
    }
    if (this.#rxStalled) {
      // Room again: reap the used buffers left on the ring.
      this.#rxStalled = false;
      this.poll();
    }
    return f;
  }

  /**
   * Received frames, in arrival order (per receive queue). `next()` waits for a frame; it
   * rejects with the fault once the driver stopped. `return()` ends this iterator only.
   */
  frames(): AsyncIterableIterator<Uint8Array> {
    let done = false;
    const it: AsyncIterableIterator<Uint8Array> = {
      next: (): Promise<IteratorResult<Uint8Array>> => {
        if (done) return Promise.resolve({ value: undefined, done: true });
        const f = this.tryReceive();
        if (f !== undefined) return Promise.resolve({ value: f, done: false });
        if (this.#broken !== undefined) return Promise.reject(this.#broken);
        return new Promise((resolve, reject) => this.#frameWaiters.push({ resolve, reject }));
      },
      return: (): Promise<IteratorResult<Uint8Array>> => {
        done = true;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  /**
   * Turn promiscuous mode on or off (VIRTIO_NET_CTRL_RX_PROMISC, §5.1.6.5.1).
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_RX, or "net-ctrl-err"
   */
  setPromiscuous(on: boolean): Promise<void> {
    return this.#ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, new Uint8Array([on ? 1 : 0]));
  }

  /**
   * Receive all multicast frames or not (VIRTIO_NET_CTRL_RX_ALLMULTI, §5.1.6.5.1).
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_RX, or "net-ctrl-err"
   */
  setAllMulticast(on: boolean): Promise<void> {
    return this.#ctrl(NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, new Uint8Array([on ? 1 : 0]));
  }

  /**
   * One of the VIRTIO_NET_F_CTRL_RX_EXTRA modes (§5.1.6.5.1).
   * @param mode - "alluni", "nomulti", "nouni" or "nobcast"
   * @param on - the new state
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_RX_EXTRA, or
   *   "net-ctrl-err"; RangeError naming `mode`
   */
  setRxMode(mode: NetRxMode, on: boolean): Promise<void> {
    const cmd = RX_MODE_CMD[mode];
    if (cmd === undefined) throw new RangeError(`mode must be a NetRxMode, got ${String(mode)}`);
    if (!hasFeature(this.#features, NetFeature.CTRL_RX_EXTRA)) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", NetCtrlClass.RX, cmd));
    }
    return this.#ctrl(NetCtrlClass.RX, cmd, new Uint8Array([on ? 1 : 0]));
  }

  /**
   * Set the unicast and multicast MAC filter tables (VIRTIO_NET_CTRL_MAC_TABLE_SET, §5.1.6.5.2).
   * @param unicast - unicast addresses (6 bytes each) accepted besides the device's own
   * @param multicast - multicast addresses accepted
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_RX, or "net-ctrl-err";
   *   RangeError naming `unicast` / `multicast` for a bad address or tables too large for a slot
   */
  setMacTable(unicast: readonly Uint8Array[], multicast: readonly Uint8Array[]): Promise<void> {
    const n = 8 + MAC_LEN * (unicast.length + multicast.length);
    if (n + 3 > this.#slab.slotSize) {
      throw new RangeError(
        `unicast and multicast hold too many addresses for one ${this.#slab.slotSize}-byte slot`,
      );
    }
    const data = new Uint8Array(n);
    const v = new DataView(data.buffer);
    let at = 0;
    for (const [name, list] of [
      ["unicast", unicast],
      ["multicast", multicast],
    ] as const) {
      v.setUint32(at, list.length, true);
      at += 4;
      for (const m of list) {
        if (!(m instanceof Uint8Array) || m.length !== MAC_LEN) {
          throw new RangeError(`${name} entries must be 6-byte Uint8Arrays`);
        }
        data.set(m, at);
        at += MAC_LEN;
      }
    }
    return this.#ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, data);
  }

  /**
   * Set the device's MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET, §5.1.6.5.2); {@link NetDriver.mac}
   * changes when the device accepts.
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_MAC_ADDR, or
   *   "net-ctrl-err"; RangeError naming `mac`
   */
  async setMac(mac: Uint8Array): Promise<void> {
    if (!(mac instanceof Uint8Array) || mac.length !== MAC_LEN) {
      throw new RangeError("mac must be a 6-byte Uint8Array");
    }
    const copy = new Uint8Array(mac);
    await this.#ctrl(NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, copy);
    this.#mac.set(copy);
  }

  /**
   * Use `n` queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, §5.1.6.5.5). On success the new
   * receive queues are filled and transmission spreads over `n` pairs.
   * @param n - 1 to the number of pairs set up (`min(options.maxQueuePairs, max_virtqueue_pairs)`)
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without MQ, or "net-ctrl-err";
   *   RangeError naming `n`
   */
  async setQueuePairs(n: number): Promise<void> {
    if (!Number.isInteger(n) || n < 1 || n > this.#setUpPairs) {
      throw new RangeError(`n must be an integer in [1, ${this.#setUpPairs}], got ${n}`);
    }
    const data = new Uint8Array([n & 0xff, n >>> 8]);
    await this.#ctrl(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, data);
    this.#pairs = n;
    for (let p = 0; p < n; p++) this.#fill(p);
    this.#kick();
  }

  /**
   * Send a raw control command (for commands without a method, and for tests).
   * @param cls - class ({@link NetCtrlClass})
   * @param cmd - command ({@link NetCtrlCmd})
   * @param data - command-specific data
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_VQ, or "net-ctrl-err";
   *   RangeError naming `data` if it does not fit a slot
   */
  command(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (data.length + 3 > this.#slab.slotSize) {
      throw new RangeError(`data must fit one slot with the header and ack, got ${data.length}`);
    }
    return this.#submitCtrl(cls & 0xff, cmd & 0xff, data);
  }

  /**
   * Interrupt handler: acknowledge InterruptStatus; on a configuration change re-read `status`
   * (link state; VIRTIO_NET_S_ANNOUNCE starts an announcement: `onAnnounce`, then
   * ANNOUNCE_ACK, §5.1.6.5.4); then {@link NetDriver.poll}.
   * @returns the number of buffers reaped
   */
  onInterrupt(): number {
    const s = this.#t.takeInterrupt();
    if ((s & MmioInterrupt.CONFIG) !== 0 && this.#broken === undefined) {
      if (this.#t.needsReset) {
        this.#fail(
          new NetDeviceFault(
            "net-needs-reset",
            "the device set DEVICE_NEEDS_RESET; reset it and set up a new driver",
            this.#t.status,
          ),
        );
        return 0;
      }
      if (hasFeature(this.#features, NetFeature.STATUS)) {
        this.#status = this.#t.readConfig((c) => c.u16(NetConfig.STATUS));
        if (
          (this.#status & NetStatus.ANNOUNCE) !== 0 &&
          hasFeature(this.#features, NetFeature.GUEST_ANNOUNCE) &&
          !this.#announcing
        ) {
          this.#announcing = true;
          this.#onAnnounce?.();
          this.#ctrl(NetCtrlClass.ANNOUNCE, NetCtrlCmd.ANNOUNCE_ACK, new Uint8Array(0)).then(
            () => {
              this.#announcing = false;
              this.stats.announcements++;
            },
            () => {
              this.#announcing = false;
            },
          );
        }
      }
    }
    return this.poll();
  }

  /**
   * Reap every used buffer: free transmitted frames, settle control commands, take received
   * frames (while the frame queue has room) and refill; then submit waiting sends and commands.
   * @returns the number of buffers reaped
   */
  poll(): number {
    if (this.#broken !== undefined) return 0;
    let n = 0;
    let txDone = false;
    try {
      for (const q of this.#txQ) {
        const freed = reapAll(q, this.#onTxUsed);
        if (freed > 0) txDone = true;
        n += freed;
      }
      const cq = this.#ctrlQ;
      if (cq !== undefined) n += reapAll(cq, this.#onCtrlUsed);
      for (let p = 0; p < this.#rxQ.length; p++) n += this.#reapRx(p);
    } catch (e) {
      // A device that corrupts a ring: stop everything that depends on the rings.
      if (!(e instanceof VirtioError)) throw e;
      this.#fail(new NetDeviceFault("net-ring-broken", `the device broke a ring: ${e.message}`, 0));
      return n;
    }
    // Reaped buffers free slots and descriptors: waiting sends may fit now.
    if (this.#sends.length > 0) this.#drainSends();
    if (txDone && this.#writable.length > 0) {
      const w = this.#writable.splice(0);
      for (const r of w) r();
    }
    this.#drainCtrl();
    this.#kick();
    return n;
  }

  // ---- transmit ----

  #checkFrame(frame: Uint8Array, options: NetSendOptions | undefined): void {
    if (
      !(frame instanceof Uint8Array) ||
      frame.length < ETH_HLEN ||
      frame.length > this.#maxFrame
    ) {
      throw new RangeError(
        `frame must be a Uint8Array of 14 to ${this.#maxFrame} bytes, got ${frame?.length}`,
      );
    }
    const c = options?.csum;
    if (c !== undefined) {
      const { start, offset } = c;
      if (
        !Number.isInteger(start) ||
        !Number.isInteger(offset) ||
        start < 0 ||
        offset < 0 ||
        start > 0xffff ||
        offset > 0xffff ||
        start + offset + 2 > frame.length
      ) {
        throw new RangeError(
          `options.csum must have start + offset + 2 within the frame, got ${start} + ${offset}`,
        );
      }
    }
  }

  /** Put `frame` on its pair's transmit queue. @returns false if resources are short. */
  #post(frame: Uint8Array, options: NetSendOptions | undefined): boolean {
    const pair = this.#pairs > 1 ? flowHash(frame) % this.#pairs : 0;
    const q = this.#txQ[pair]!;
    const slotSize = this.#slab.slotSize;
    const h = this.#hdrLen;
    const total = h + frame.length;
    const nSlots = Math.ceil(total / slotSize);
    if (this.#slab.available < nSlots || q.numFree < nSlots) return false;
    const mem = this.#mem;
    const hdr = this.#hdrScratch;
    hdr.fill(0);
    let body = frame;
    const c = options?.csum;
    if (c !== undefined) {
      if (hasFeature(this.#features, NetFeature.CSUM)) {
        // §5.1.6.2: the device completes the checksum from csum_start into csum_offset.
        hdr[NetHdr.FLAGS] = NetHdrFlags.NEEDS_CSUM;
        hdr[NetHdr.CSUM_START] = c.start & 0xff;
        hdr[NetHdr.CSUM_START + 1] = c.start >>> 8;
        hdr[NetHdr.CSUM_OFFSET] = c.offset & 0xff;
        hdr[NetHdr.CSUM_OFFSET + 1] = c.offset >>> 8;
      } else {
        // §5.1.6.2.1: no NEEDS_CSUM without CSUM; complete it here instead.
        body = new Uint8Array(frame);
        completeChecksum(body, c.start, c.offset);
      }
    }
    // gso_type NONE, num_buffers 0 on transmit (§5.1.6.2: the driver sets it to 0).
    const segs = this.#segs;
    while (segs.length < nSlots) segs.push({ addr: 0, len: 0 });
    segs.length = nSlots;
    let prev = -1;
    let first = -1;
    let off = 0; // bytes of header+frame written
    for (let i = 0; i < nSlots; i++) {
      const slot = this.#slab.alloc() as number;
      const idx = (slot - this.#slab.base) / slotSize;
      if (prev >= 0) this.#txNext[prev] = idx;
      else first = slot;
      this.#txNext[idx] = -1;
      prev = idx;
      const n = Math.min(slotSize, total - off);
      let dst = slot;
      let left = n;
      if (off < h) {
        const k = Math.min(h - off, left);
        mem.write(dst, k === h ? this.#hdrView : hdr.subarray(off, off + k));
        dst += k;
        left -= k;
        off += k;
      }
      if (left > 0) {
        const from = off - h;
        // The common case (the frame fits one slot) writes the caller's array without a view.
        mem.write(dst, left === body.length ? body : body.subarray(from, from + left));
        off += left;
      }
      const s = segs[i]!;
      s.addr = slot;
      s.len = n;
    }
    if (!q.add(segs, this.#noSegs, first)) {
      this.#freeTx(first);
      return false;
    }
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
    return true;
  }

  #freeTx(first: number): void {
    const slab = this.#slab;
    let idx = (first - slab.base) / slab.slotSize;
    // Bounded by the slot count: a token that is not a slot we linked ends the walk.
    for (let guard = 0; idx >= 0 && guard < this.#txNext.length; guard++) {
      const next = this.#txNext[idx]!;
      this.#txNext[idx] = -1;
      slab.free(slab.base + idx * slab.slotSize);
      idx = next;
    }
  }

  #drainSends(): void {
    const s = this.#sends;
    let i = 0;
    while (i < s.length && this.#post(s[i]!.frame, s[i]!.options)) i++;
    if (i === 0) return;
    const done = s.splice(0, i);
    for (const p of done) p.resolve();
  }

  // ---- receive ----

  /** Post receive buffers on pair `p` until `rxBuffers` are posted or slots run out. */
  #fill(p: number): void {
    const q = this.#rxQ[p];
    const rx = this.#rx[p];
    if (q === undefined || rx === undefined || this.#broken !== undefined) return;
    const seg = this.#rxSeg[0]!;
    while (rx.posted < this.#rxBuffers && q.numFree > 0 && this.#slab.available > this.#reserve) {
      const slot = this.#slab.alloc() as number;
      seg.addr = slot;
      seg.len = this.#slab.slotSize;
      if (!q.add(this.#noSegs, this.#rxSeg, slot)) {
        this.#slab.free(slot);
        break;
      }
      rx.posted++;
    }
  }

  #reapRx(p: number): number {
    const q = this.#rxQ[p]!;
    const rx = this.#rx[p]!;
    let n = 0;
    for (;;) {
      q.disableInterrupts();
      while (this.pendingFrames < this.#rxLimit) {
        const slot = q.reap();
        if (slot === undefined) break;
        rx.posted--;
        n++;
        this.#rxBuffer(rx, slot, q.lastLen);
        this.#slab.free(slot);
      }
      if (this.pendingFrames >= this.#rxLimit) {
        // Back-pressure: leave used buffers on the ring until a frame is taken.
        this.#rxStalled = true;
        break;
      }
      if (!q.enableInterrupts()) break;
    }
    if (n > 0 && p < this.#pairs) this.#fill(p);
    return n;
  }

  #fault(code: NetDeviceFaultCode, message: string, value: number): void {
    this.stats.rxFaults++;
    this.lastFault = new NetDeviceFault(code, message, value);
  }

  /** One used receive buffer of `len` bytes (distrusted) at `slot`. */
  #rxBuffer(rx: RxState, slot: number, len: number): void {
    const mem = this.#mem;
    const h = this.#hdrLen;
    if (len > this.#slab.slotSize) {
      // Longer than the buffer: the device wrote past it or lies; drop the whole frame.
      this.#fault("net-bad-used-len", `used length ${len} exceeds the buffer`, len);
      if (rx.left > 0) rx.discard = true;
      else return;
      len = 0;
    }
    if (rx.left === 0) {
      if (len < h) {
        this.#fault("net-bad-used-len", `used length ${len} is shorter than the header`, len);
        return;
      }
      const flags = mem.readU8(slot + NetHdr.FLAGS);
      const gso = mem.readU8(slot + NetHdr.GSO_TYPE);
      let nb = h === NetHdr.SIZE ? mem.readU16(slot + NetHdr.NUM_BUFFERS) : 1;
      if (!this.#mrg && nb !== 1) {
        // §5.1.6.4: without MRG_RXBUF the device sets num_buffers to 1.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} without MRG_RXBUF`, nb);
        nb = 1;
        rx.discard = true;
      } else if (nb === 0 || nb > this.#rxQ[0]!.size) {
        // More buffers than a queue holds can never arrive: drop this buffer alone.
        this.#fault("net-bad-num-buffers", `num_buffers ${nb} is impossible`, nb);
        return;
      } else {
        rx.discard = false;
      }
      if (gso !== 0) {
        this.#fault("net-bad-header", `gso_type ${gso} was not negotiated`, gso);
        rx.discard = true;
      }
      rx.flags = flags;
      rx.csumStart = mem.readU16(slot + NetHdr.CSUM_START);
      rx.csumOffset = mem.readU16(slot + NetHdr.CSUM_OFFSET);
      rx.got = 0;
      rx.left = nb;
      this.#append(rx, slot + h, len - h);
    } else {
      this.#append(rx, slot, len);
    }
    rx.left--;
    if (rx.left === 0) this.#finishFrame(rx);
  }

  #append(rx: RxState, addr: number, n: number): void {
    if (rx.discard || n === 0) return;
    if (rx.got + n > this.#maxFrame) {
      this.#fault("net-bad-frame", `frame longer than ${this.#maxFrame} bytes`, rx.got + n);
      rx.discard = true;
      return;
    }
    this.#mem.read(addr, rx.buf.subarray(rx.got, rx.got + n));
    rx.got += n;
  }

  #finishFrame(rx: RxState): void {
    if (rx.discard) {
      rx.discard = false;
      return;
    }
    if (rx.got < ETH_HLEN) {
      this.#fault("net-bad-frame", `frame of ${rx.got} bytes`, rx.got);
      return;
    }
    const frame = rx.buf.slice(0, rx.got);
    if ((rx.flags & NetHdrFlags.NEEDS_CSUM) !== 0) {
      // §5.1.6.4: a partial checksum on receive is only allowed with GUEST_CSUM; complete it.
      if (
        !hasFeature(this.#features, NetFeature.GUEST_CSUM) ||
        !completeChecksum(frame, rx.csumStart, rx.csumOffset)
      ) {
        this.#fault("net-bad-header", "unusable NEEDS_CSUM on receive", rx.csumStart);
        return;
      }
    }
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    const w = this.#frameWaiters.shift();
    if (w !== undefined) w.resolve({ value: frame, done: false });
    else this.#frames.push(frame);
  }

  // ---- control queue ----

  #ctrl(cls: number, cmd: number, data: Uint8Array): Promise<void> {
    const need =
      cls === NetCtrlClass.RX
        ? cmd <= NetCtrlCmd.RX_ALLMULTI
          ? NetFeature.CTRL_RX
          : NetFeature.CTRL_RX_EXTRA
        : cls === NetCtrlClass.MAC
          ? cmd === NetCtrlCmd.MAC_TABLE_SET
            ? NetFeature.CTRL_RX
            : NetFeature.CTRL_MAC_ADDR
          : cls === NetCtrlClass.ANNOUNCE
            ? NetFeature.GUEST_ANNOUNCE
            : NetFeature.MQ;
    if (!hasFeature(this.#features, need)) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", cls, cmd));
    }
    return this.#submitCtrl(cls, cmd, data);
  }

  #submitCtrl(cls: number, cmd: number, data: Uint8Array): Promise<void> {
    if (this.#ctrlQ === undefined) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", cls, cmd));
    }
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    return new Promise<void>((resolve, reject) => {
      const req: CtrlReq = { cls, cmd, data, resolve, reject, slot: -1 };
      if (this.#ctrlWaiting.length > 0 || !this.#startCtrl(req)) this.#ctrlWaiting.push(req);
      else this.#kick();
    });
  }

  /** Layout in one slot: class, command, data (readable); ack in the last byte (writable). */
  #startCtrl(req: CtrlReq): boolean {
    const q = this.#ctrlQ!;
    if (this.#slab.available < 1 || q.numFree < 2) return false;
    const slot = this.#slab.alloc() as number;
    const mem = this.#mem;
    mem.writeU8(slot, req.cls);
    mem.writeU8(slot + 1, req.cmd);
    if (req.data.length > 0) mem.write(slot + 2, req.data);
    const ack = slot + this.#slab.slotSize - 1;
    // A value the device must overwrite: a completion that leaves it is caught.
    mem.writeU8(ack, 0xff);
    req.slot = slot;
    if (!q.add([{ addr: slot, len: 2 + req.data.length }], [{ addr: ack, len: 1 }], req)) {
      this.#slab.free(slot);
      return false;
    }
    this.#ctrlLive.add(req);
    return true;
  }

  #drainCtrl(): void {
    const w = this.#ctrlWaiting;
    let i = 0;
    while (i < w.length && this.#startCtrl(w[i]!)) i++;
    if (i > 0) w.splice(0, i);
  }

  #completeCtrl(req: CtrlReq, len: number): void {
    this.#ctrlLive.delete(req);
    const ack = this.#mem.readU8(req.slot + this.#slab.slotSize - 1);
    this.#slab.free(req.slot);
    if (len < 1) {
      req.reject(new NetDeviceFault("net-bad-used-len", "control ack not written", len));
    } else if (ack === NetCtrlAck.OK) {
      req.resolve();
    } else if (ack === NetCtrlAck.ERR) {
      req.reject(new NetCtrlError("net-ctrl-err", req.cls, req.cmd));
    } else {
      req.reject(new NetDeviceFault("net-bad-ack", `ack byte is ${ack}`, ack));
    }
  }

  // ---- shared ----

  #kick(): void {
    if (this.#broken !== undefined) return;
    for (let p = 0; p < this.#rxQ.length; p++) {
      if (this.#rxQ[p]!.publish()) this.#t.notify(2 * p);
      if (this.#txQ[p]!.publish()) this.#t.notify(2 * p + 1);
    }
    if (this.#ctrlQ?.publish()) this.#t.notify(this.#ctrlIndex);
  }

  /** Stop: reject every pending operation with `fault`, and every later one. */
  #fail(fault: NetDeviceFault): void {
    this.#broken = fault;
    const ctrl = [...this.#ctrlLive, ...this.#ctrlWaiting];
    this.#ctrlLive.clear();
    this.#ctrlWaiting.length = 0;
    for (const r of ctrl) r.reject(fault);
    for (const s of this.#sends.splice(0)) s.reject(fault);
    for (const w of this.#writable.splice(0)) w();
    for (const w of this.#frameWaiters.splice(0)) w.reject(fault);
  }
}
