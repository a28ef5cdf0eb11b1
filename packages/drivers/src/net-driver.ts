/**
 * virtio-net driver (guest side): initialisation, the public API and the interrupt handler;
 * the transmit, receive and control paths are in `net-driver-tx.ts`, `net-driver-rx.ts` and
 * `net-driver-ctrl.ts`.
 * @see VIRTIO 1.3 §5.1 "Network Device"
 * @module
 */
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  DeviceId,
  ETH_ALEN,
  ETH_HLEN,
  Feature,
  featureMask,
  hasFeature,
  MmioInterrupt,
  NetConfig,
  NetCtrlClass,
  NetCtrlCmd,
  NetFeature,
  NetHdr,
  NetMqPairs,
  NetStatus,
} from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import {
  checkQueueSizeOption,
  type DriverQueue,
  ringAreaBytes,
  ringLayoutAt,
} from "@virtio-ts/virtqueue";
import { type CtrlReq, NetDriverCore } from "./net-driver-core.js";
import { NetDriverCtrl } from "./net-driver-ctrl.js";
import { NetDriverRx } from "./net-driver-rx.js";
import { NetDriverTx } from "./net-driver-tx.js";
import {
  NET_DRIVER_FEATURES,
  NetCtrlError,
  NetDeviceFault,
  type NetDriverOptions,
  type NetDriverStats,
  type NetRxMode,
  type NetSendOptions,
  RX_MODE_CMD,
} from "./net-driver-types.js";
import { checkAllocatorPlacement, checkRingPlacement } from "./placement.js";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

const MAC_LEN = ETH_ALEN;

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
 * The paths live in their own modules: `net-driver-tx.ts` (transmit), `net-driver-rx.ts`
 * (receive), `net-driver-ctrl.ts` (control queue), over the shared state of `net-driver-core.ts`;
 * options, counters and errors are in `net-driver-types.ts`.
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

  readonly #t: DriverTransport;
  readonly #c: NetDriverCore;
  readonly #tx: NetDriverTx;
  readonly #rx: NetDriverRx;
  readonly #ctrl: NetDriverCtrl;
  readonly #mac = new Uint8Array(MAC_LEN);
  readonly #mtu: number;
  readonly #maxPairs: number;
  readonly #setUpPairs: number;
  readonly #onAnnounce: (() => void) | undefined;
  /** The transmit path's `free`, bound once for `reapAll`. */
  readonly #onTxUsed = (slot: number): void => this.#tx.free(slot);
  #status: number;
  #announcing = false;

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
   *   `allocator` whose slots cannot hold a frame, or naming
   *   `allocator` / `options.ringBase` when the slots or the ring area are not inside guest
   *   memory (or overlap), with the address the memory must reach
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
    checkAllocatorPlacement(memory, allocator);
    this.#t = transport;
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
    const maxFrame = cfg.mtu + ETH_HLEN;
    const mrg = hasFeature(f, NetFeature.MRG_RXBUF);
    // §5.1.6.1: 12 bytes with VERSION_1 or MRG_RXBUF.
    const hdrLen = mrg || hasFeature(f, Feature.VERSION_1) ? NetHdr.SIZE : NetHdr.LEGACY_SIZE;
    if (!mrg && allocator.slotSize < hdrLen + maxFrame) {
      // §5.1.6.3.1: without MRG_RXBUF every receive buffer must hold a whole frame.
      throw new RangeError(
        `allocator.slotSize must be at least ${hdrLen + maxFrame} without MRG_RXBUF, got ${allocator.slotSize}`,
      );
    }
    const c = new NetDriverCore(transport, memory, allocator, this.stats, f, hdrLen, mrg, maxFrame);
    this.#c = c;
    this.#maxPairs = cfg.pairs;
    const pairs = Math.min(wantPairs, cfg.pairs);
    this.#setUpPairs = pairs;
    const mq = hasFeature(f, NetFeature.MQ);
    c.ctrlIndex = mq ? 2 * cfg.pairs : 2;

    const size = checkQueueSizeOption(
      "options.queueSize",
      options.queueSize ?? Math.min(256, transport.queueMaxSize(0)),
    );
    // Buffers one largest frame needs (1 without MRG_RXBUF, where a slot holds a frame).
    const perFrame = Math.ceil((hdrLen + maxFrame) / allocator.slotSize);
    const rxBuffers = options.rxBuffers ?? Math.min(size, Math.max(size >> 1, 2 * perFrame));
    if (!Number.isInteger(rxBuffers) || rxBuffers < perFrame || rxBuffers > size) {
      // Fewer posted buffers than a largest frame needs would stall reception for good.
      throw new RangeError(
        `options.rxBuffers must be an integer in [${perFrame}, ${size}] (buffers per largest frame, queue size), got ${rxBuffers}`,
      );
    }
    const reserve = perFrame + 1;
    if (allocator.slots < perFrame + reserve) {
      // Room for one largest frame in each direction plus a command, or nothing can progress.
      throw new RangeError(
        `allocator must have at least ${perFrame + reserve} slots, got ${allocator.slots}`,
      );
    }
    const area = ringAreaBytes(size);
    const nQueues = 2 * pairs + (hasFeature(f, NetFeature.CTRL_VQ) ? 1 : 0);
    checkRingPlacement(
      memory,
      allocator,
      options.ringBase,
      nQueues * area,
      `${nQueues} queues × ringAreaBytes(${size})`,
    );
    let at = options.ringBase;
    const setup = <T>(index: number): DriverQueue<T> => {
      const s = Math.min(size, transport.queueMaxSize(index));
      const q = transport.setupQueue<T>(index, memory, ringLayoutAt(at, s));
      at += area;
      return q;
    };
    for (let p = 0; p < pairs; p++) {
      c.rxQ.push(setup<number>(2 * p));
      c.txQ.push(setup<number>(2 * p + 1));
    }
    c.ctrlQ = hasFeature(f, NetFeature.CTRL_VQ) ? setup<CtrlReq>(c.ctrlIndex) : undefined;
    this.#tx = new NetDriverTx(c);
    this.#rx = new NetDriverRx(c, pairs, rxBuffers, limit, reserve);
    this.#ctrl = new NetDriverCtrl(c);
    transport.driverOk();
    // §5.1.5: fill the receive queue (only pair 1 is in use until VQ_PAIRS_SET).
    this.#rx.fill(0);
    c.kick();
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
    return this.#c.features;
  }

  /** `max_virtqueue_pairs` (1 without VIRTIO_NET_F_MQ). */
  get maxQueuePairs(): number {
    return this.#maxPairs;
  }

  /** Queue pairs in use (1 until {@link NetDriver.setQueuePairs}). */
  get queuePairs(): number {
    return this.#c.pairs;
  }

  /** Received frames waiting for {@link NetDriver.frames}. */
  get pendingFrames(): number {
    return this.#rx.pending;
  }

  /** The last malformed receive buffer's fault (the buffer was dropped). */
  get lastFault(): NetDeviceFault | undefined {
    return this.#rx.lastFault;
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
    this.#tx.checkFrame(frame, options);
    const c = this.#c;
    if (c.broken !== undefined) throw c.broken;
    if (!this.#tx.post(frame, options)) return false;
    c.kick();
    return true;
  }

  /**
   * Post frames `frames[start]`, `frames[start + 1]`, … for transmission while there is room,
   * then notify the device once (one `QueueNotify` per batch instead of one per frame; with
   * VIRTIO_F_EVENT_IDX often none, §2.7.10). Each frame is copied, behind a `virtio_net_hdr`,
   * into allocator slots, as {@link NetDriver.trySend} does; `options` applies to every frame.
   * @param frames - Ethernet frames (no FCS) of 14 to `mtu + 14` bytes each
   * @param start - index of the first frame to post (default 0)
   * @param end - index after the last frame to post (default `frames.length`)
   * @param options - checksum offload request for every frame
   * @returns how many frames were posted, in order from `start` (fewer than `end - start` when
   *   descriptors or slots ran short: wait for {@link NetDriver.whenWritable})
   * @throws RangeError naming `frames`, `start`, `end` or the bad frame (`frames[i]`), before
   *   anything is posted; NetDeviceFault if the driver stopped
   */
  trySendBatch(
    frames: readonly Uint8Array[],
    start = 0,
    end: number = frames?.length,
    options?: NetSendOptions,
  ): number {
    if (!Array.isArray(frames)) throw new TypeError("frames must be an array of Uint8Array");
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > frames.length) {
      throw new RangeError(
        `start and end must be integers with 0 <= start <= end <= frames.length (${frames.length}), got ${start} and ${end}`,
      );
    }
    const tx = this.#tx;
    for (let i = start; i < end; i++) {
      try {
        tx.checkFrame(frames[i]!, options);
      } catch (e) {
        throw new RangeError(`frames[${i}]: ${(e as Error).message}`);
      }
    }
    const c = this.#c;
    if (c.broken !== undefined) throw c.broken;
    let i = start;
    while (i < end && tx.post(frames[i]!, options)) i++;
    if (i > start) c.kick();
    return i - start;
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
    const tx = this.#tx;
    tx.checkFrame(frame, options);
    const c = this.#c;
    if (c.broken !== undefined) return Promise.reject(c.broken);
    if (tx.sends.length === 0 && tx.post(frame, options)) {
      c.kick();
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      tx.sends.push({ frame, options, resolve, reject });
    });
  }

  /**
   * Resolves at the next transmit completion (when room may have appeared), or at once if the
   * driver stopped (the next `trySend` then throws).
   */
  whenWritable(): Promise<void> {
    if (this.#c.broken !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.#tx.writable.push(resolve));
  }

  /**
   * Take one received frame without waiting.
   * @returns the frame, or undefined if none is buffered
   */
  tryReceive(): Uint8Array | undefined {
    const rx = this.#rx;
    const f = rx.take();
    // Also when nothing was left: take() ended a loan, which may have freed room or a slot,
    // and the poll that follows may reap a frame that is then there to take.
    if (this.#afterTake(rx) && f === undefined) return rx.take();
    return f;
  }

  /**
   * Take one received frame without waiting and without a copy. A frame the device put in one
   * receive buffer is lent where it lies, as a view of guest memory (over a `SharedArrayBuffer`
   * when guest memory is shared); the buffer is posted again only once the loan ends. Any other
   * frame (spread over several buffers, or one arriving while `rxBuffers` frames are already
   * held in their buffers or the allocator is short of slots) is lent as a view of the driver's
   * frame store, where it was copied when reaped.
   *
   * Ownership: the view is lent. It stays valid, and its bytes unchanged, until the next call
   * of `tryReceiveView`, {@link NetDriver.tryReceive}, {@link NetDriver.poll},
   * {@link NetDriver.onInterrupt} or a `frames()` iterator's `next()`; after that its bytes
   * belong to the device or to later frames. Use it synchronously, or copy what you keep
   * (`view.slice()`, which also gives an unshared copy for APIs that refuse shared memory,
   * such as `TextDecoder`: whether a given frame is lent from guest memory or from the store
   * depends on load, so always slice for them). A frame lent from guest memory is only as
   * steady as the device: one in another thread that breaks the protocol by writing a buffer
   * it has used can still change its bytes; the driver checked its length and header.
   * @returns the frame, or undefined if none is buffered
   */
  tryReceiveView(): Uint8Array | undefined {
    const rx = this.#rx;
    // The previous loan ends here: its buffer or its bytes in the store are free again.
    rx.release();
    this.#afterTake(rx);
    return rx.takeView();
  }

  /**
   * After a frame left the queue: if reaping stopped for lack of room, there is room again;
   * if a receive buffer came back while a queue was short of slots, it can be posted. Both
   * need a poll (reap, refill, notify).
   * @returns whether it polled
   */
  #afterTake(rx: NetDriverRx): boolean {
    if (!rx.stalled && !rx.refillDue) return false;
    rx.stalled = false;
    rx.refillDue = false;
    this.poll();
    return true;
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
        const broken = this.#c.broken;
        if (broken !== undefined) return Promise.reject(broken);
        return new Promise((resolve, reject) => this.#rx.waiters.push({ resolve, reject }));
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
    return this.#ctrl.send(NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, new Uint8Array([on ? 1 : 0]));
  }

  /**
   * Receive all multicast frames or not (VIRTIO_NET_CTRL_RX_ALLMULTI, §5.1.6.5.1).
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported" without CTRL_RX, or "net-ctrl-err"
   */
  setAllMulticast(on: boolean): Promise<void> {
    return this.#ctrl.send(NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, new Uint8Array([on ? 1 : 0]));
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
    if (!this.#c.has(NetFeature.CTRL_RX_EXTRA)) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", NetCtrlClass.RX, cmd));
    }
    return this.#ctrl.send(NetCtrlClass.RX, cmd, new Uint8Array([on ? 1 : 0]));
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
    const slotSize = this.#c.slab.slotSize;
    if (n + 3 > slotSize) {
      throw new RangeError(
        `unicast and multicast hold too many addresses for one ${slotSize}-byte slot`,
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
    return this.#ctrl.send(NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, data);
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
    await this.#ctrl.send(NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, copy);
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
    await this.#ctrl.send(NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, data);
    this.#c.pairs = n;
    for (let p = 0; p < n; p++) this.#rx.fill(p);
    this.#c.kick();
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
    if (data.length + 3 > this.#c.slab.slotSize) {
      throw new RangeError(`data must fit one slot with the header and ack, got ${data.length}`);
    }
    return this.#ctrl.submit(cls & 0xff, cmd & 0xff, data);
  }

  /**
   * Interrupt handler: acknowledge InterruptStatus; on a configuration change re-read `status`
   * (link state; VIRTIO_NET_S_ANNOUNCE starts an announcement: `onAnnounce`, then
   * ANNOUNCE_ACK, §5.1.6.5.4); then {@link NetDriver.poll}.
   * @returns the number of buffers reaped
   */
  onInterrupt(): number {
    const s = this.#t.takeInterrupt();
    if ((s & MmioInterrupt.CONFIG) !== 0 && this.#c.broken === undefined) {
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
      if (this.#c.has(NetFeature.STATUS)) {
        this.#status = this.#t.readConfig((c) => c.u16(NetConfig.STATUS));
        if (
          (this.#status & NetStatus.ANNOUNCE) !== 0 &&
          this.#c.has(NetFeature.GUEST_ANNOUNCE) &&
          !this.#announcing
        ) {
          this.#announcing = true;
          this.#onAnnounce?.();
          this.#ctrl.send(NetCtrlClass.ANNOUNCE, NetCtrlCmd.ANNOUNCE_ACK, new Uint8Array(0)).then(
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
    const c = this.#c;
    if (c.broken !== undefined) return 0;
    const tx = this.#tx;
    let n = 0;
    let txDone = false;
    try {
      for (const q of c.txQ) {
        const freed = reapAll(q, this.#onTxUsed);
        if (freed > 0) txDone = true;
        n += freed;
      }
      const cq = c.ctrlQ;
      if (cq !== undefined) n += reapAll(cq, this.#ctrl.onUsed);
      for (let p = 0; p < c.rxQ.length; p++) n += this.#rx.reap(p);
    } catch (e) {
      // A device that corrupts a ring: stop everything that depends on the rings.
      if (!(e instanceof VirtioError)) throw e;
      this.#fail(new NetDeviceFault("net-ring-broken", `the device broke a ring: ${e.message}`, 0));
      return n;
    }
    // Reaped buffers free slots and descriptors: waiting sends may fit now.
    if (tx.sends.length > 0) tx.drainSends();
    if (txDone && tx.writable.length > 0) {
      const w = tx.writable.splice(0);
      for (const r of w) r();
    }
    this.#ctrl.drain();
    c.kick();
    return n;
  }

  /** Stop: reject every pending operation with `fault`, and every later one. */
  #fail(fault: NetDeviceFault): void {
    this.#c.broken = fault;
    const ctrl = [...this.#ctrl.live, ...this.#ctrl.waiting];
    this.#ctrl.live.clear();
    this.#ctrl.waiting.length = 0;
    for (const r of ctrl) r.reject(fault);
    for (const s of this.#tx.sends.splice(0)) s.reject(fault);
    for (const w of this.#tx.writable.splice(0)) w();
    for (const w of this.#rx.waiters.splice(0)) w.reject(fault);
  }
}
