/**
 * virtio-vsock driver (guest side): stream sockets to the host (CID 2) over a receive queue, a
 * transmit queue and an event queue.
 * @see VIRTIO 1.3 §5.10 "Socket Device"
 * @module
 */
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  DeviceId,
  Feature,
  featureMask,
  MmioInterrupt,
  VsockCid,
  VsockConfig,
  VsockEvent,
  VsockEventId,
  VsockFeature,
  VsockHdr,
  VsockOp,
  VsockQueue,
  VsockShutdownFlags,
  VsockType,
} from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import {
  checkQueueSizeOption,
  type DriverQueue,
  ringAreaBytes,
  ringLayoutAt,
  type Segment,
} from "@virtio-ts/virtqueue";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

const HDR = VsockHdr.SIZE;

/** Why the vsock driver distrusts what the device did. */
export type VsockDeviceFaultCode =
  /** The device is not a socket device (DeviceID is not 19). */
  | "vsock-not-vsock"
  /** `guest_cid` is reserved (0, 1, 2, 0xffffffff) or has upper bits set. */
  | "vsock-bad-cid"
  /** A received packet shorter than its header, or whose `len` passes the used length. */
  | "vsock-bad-packet"
  /** A packet not addressed to this guest, or not from the host. */
  | "vsock-wrong-cid"
  /** The device sent more than the credit this driver advertised. */
  | "vsock-credit"
  /** The device corrupted a ring (`cause`): every connection failed. */
  | "vsock-ring-broken";

/**
 * The socket device broke its protocol (drivers distrust devices). Thrown at construction for a
 * bad device; otherwise counted in {@link VsockDriver.stats} (last one in `lastFault`).
 */
export class VsockDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: VsockDeviceFaultCode;
  /** The offending value. */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   * @param cause - the underlying error, if any
   */
  constructor(code: VsockDeviceFaultCode, message: string, value: number, cause?: unknown) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.value = value;
  }
}

/** Why a guest vsock connection failed. */
export type VsockConnectionErrorCode =
  /** The host answered the request with RST. */
  | "refused"
  /** The host reset the connection. */
  | "reset"
  /** A transport reset event (or a broken ring) dropped every connection. */
  | "transport-reset"
  /** The connection was closed by this side. */
  | "closed";

/** A guest vsock connection failed (rejections of {@link VsockConnection} methods). */
export class VsockConnectionError extends VirtioError {
  /** What happened. */
  readonly code: VsockConnectionErrorCode;

  /**
   * @param code - what happened
   * @param message - detail
   */
  constructor(code: VsockConnectionErrorCode, message: string) {
    super(`vsock ${code}: ${message}`);
    this.code = code;
  }
}

/** Options of a {@link VsockDriver}. */
export interface VsockDriverOptions {
  /** Guest address of the driver-owned ring area ({@link VsockDriver.ringBytes} bytes, 16-aligned). */
  readonly ringBase: number;
  /** Size of every queue, a power of 2 up to QueueNumMax (default min(64, QueueNumMax)). */
  readonly queueSize?: number;
  /** Receive buffers kept posted (default 16; each one allocator slot). */
  readonly rxBuffers?: number;
  /** `buf_alloc` of every connection: bytes the host may send unread (default 65536). */
  readonly bufferBytes?: number;
  /** Whether to accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
}

/** Counters of a {@link VsockDriver} (mutated in place). */
export interface VsockDriverStats {
  /** Packets received. */
  packetsIn: number;
  /** Packets sent. */
  packetsOut: number;
  /** Payload bytes received. */
  bytesIn: number;
  /** Payload bytes sent. */
  bytesOut: number;
  /** Device faults counted. */
  faults: number;
  /** TRANSPORT_RESET events received. */
  transportResets: number;
}

/** The feature bits {@link VsockDriver} accepts when offered (§5.10.3). */
export const VSOCK_DRIVER_FEATURES: bigint = [
  VsockFeature.STREAM,
  Feature.RING_EVENT_IDX,
  Feature.RING_INDIRECT_DESC,
  Feature.RING_PACKED,
].reduce((m, b) => m | featureMask(b), 0n);

const KIND_RX = 0;
const KIND_TX = 1;
const KIND_EVENT = 2;

interface Buf {
  readonly kind: number;
  readonly addr: number;
  /** Transmit: the write this packet carries bytes of. */
  write: PendingWrite | undefined;
}

interface PendingWrite {
  readonly data: Uint8Array;
  off: number;
  packets: number;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

class Conn {
  state: "connecting" | "open" | "closed" = "connecting";
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  txCnt = 0;
  rxCnt = 0;
  fwdCnt = 0;
  fwdSent = 0;
  peerShut = 0;
  shutdownSent = 0;
  creditRequested = false;
  readonly chunks: Uint8Array[] = [];
  chunkOff = 0;
  readonly readers: ((v: Uint8Array | null) => void)[] = [];
  readonly readerErrors: ((e: unknown) => void)[] = [];
  readonly writes: PendingWrite[] = [];
  /** Control packets waiting for a transmit slot. */
  readonly control: { op: number; flags: number }[] = [];
  error: VsockConnectionError | undefined = undefined;
  opened: ((c: VsockConnection) => void) | undefined = undefined;
  failed: ((e: unknown) => void) | undefined = undefined;
  conn: VsockConnection | undefined = undefined;

  constructor(
    readonly localPort: number,
    readonly peerCid: number,
    readonly peerPort: number,
  ) {}

  get credit(): number {
    return this.peerBufAlloc - ((this.txCnt - this.peerFwdCnt) >>> 0);
  }
}

/** One stream connection of the guest (from {@link VsockDriver.connect} or a listener). */
export class VsockConnection {
  /** The guest port. */
  readonly localPort: number;
  /** The peer's CID (2: the host). */
  readonly remoteCid: number;
  /** The peer's port. */
  readonly remotePort: number;
  readonly #d: VsockDriver;
  readonly #c: Conn;

  /** @internal */
  constructor(d: VsockDriver, c: Conn) {
    this.#d = d;
    this.#c = c;
    this.localPort = c.localPort;
    this.remoteCid = c.peerCid;
    this.remotePort = c.peerPort;
  }

  /** Whether the connection is closed (reset, shut down both ways, or closed here). */
  get closed(): boolean {
    return this.#c.state === "closed";
  }

  /**
   * Send bytes (copied when packed). Resolves once the device used every packet carrying them.
   * @throws VsockConnectionError (rejection) once the connection is gone
   */
  write(data: Uint8Array): Promise<void> {
    return this.#d.write(this.#c, data);
  }

  /**
   * The next bytes received, or null once the host sent SHUTDOWN (end of stream).
   * @throws VsockConnectionError (rejection) if the connection is reset
   */
  read(): Promise<Uint8Array | null> {
    return this.#d.read(this.#c);
  }

  /** Send SHUTDOWN (SEND): the host sees the end of the stream. */
  end(): void {
    this.#d.shutdown(this.#c, VsockShutdownFlags.SEND);
  }

  /** Close both directions (SHUTDOWN with both flags; the host answers RST). */
  close(): void {
    this.#d.shutdown(this.#c, VsockShutdownFlags.SEND | VsockShutdownFlags.RECEIVE);
  }
}

/** A guest port accepting connections ({@link VsockDriver.listen}). */
export interface VsockListener {
  /** The guest port. */
  readonly port: number;
  /** The next connection the host made to the port. */
  accept(): Promise<VsockConnection>;
  /** Stop accepting (further requests are refused with RST). */
  close(): void;
}

/**
 * Guest-side virtio-vsock driver over any {@link DriverTransport} (VIRTIO 1.3 §5.10), stream
 * sockets only: {@link VsockDriver.connect} opens a connection to a host port,
 * {@link VsockDriver.listen} accepts the host's. Receive buffers (one allocator slot each:
 * header and payload in one descriptor) and event buffers are kept posted; every packet sent
 * is one slot. Credit (§5.10.6.3): a connection advertises `bufferBytes`, and sends a
 * CREDIT_UPDATE as the application reads; it sends no more than the host's credit and asks
 * with CREDIT_REQUEST when it runs out. A TRANSPORT_RESET event (§5.10.6.7) fails every
 * connection and makes the driver read `guest_cid` again.
 *
 * Distrust: packets not addressed to this guest's CID from the host, shorter than a header or
 * with a `len` past the used length are dropped and counted ({@link VsockDeviceFault}); a
 * device sending past the credit has that connection reset; a corrupted ring fails every
 * connection ("vsock-ring-broken").
 *
 * Completion: nothing happens until {@link VsockDriver.poll} or {@link VsockDriver.onInterrupt}.
 *
 * @example
 * ```ts
 * const vsock = new VsockDriver(transport, memory, new SlabAllocator(0x40000, 4096, 64), { ringBase: 0x10000 });
 * const c = await vsock.connect(1234); // host CID 2, port 1234
 * await c.write(new TextEncoder().encode("hello"));
 * const reply = await c.read();
 * ```
 */
export class VsockDriver {
  /** Counters. */
  readonly stats: VsockDriverStats = {
    packetsIn: 0,
    packetsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    faults: 0,
    transportResets: 0,
  };
  /** The last device fault counted, for diagnostics. */
  lastFault: VsockDeviceFault | undefined = undefined;
  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #features: bigint;
  readonly #bufAlloc: number;
  readonly #queues: DriverQueue<Buf>[] = [];
  /** Connections by guest port, then peer port (the peer CID is checked on each packet). */
  readonly #conns = new Map<number, Map<number, Conn>>();
  #count = 0;
  readonly #listeners = new Map<
    number,
    { waiting: ((c: VsockConnection) => void)[]; ready: VsockConnection[]; open: boolean }
  >();
  /** Connections with something to send, in turn. */
  readonly #sendQueue: Conn[] = [];
  readonly #hdr = new Uint8Array(HDR);
  readonly #hv = new DataView(this.#hdr.buffer);
  readonly #seg: Segment[] = [{ addr: 0, len: 0 }];
  readonly #none: Segment[] = [];
  readonly #onUsed = (b: Buf, len: number): void => this.#used(b, len);
  #cid: number;
  #nextPort = 1024;
  #broken: VsockDeviceFault | undefined = undefined;
  #kick = [false, false, false];

  /**
   * Bytes of the ring area {@link VsockDriverOptions.ringBase} must point at.
   * @param queueSize - size of every queue
   */
  static ringBytes(queueSize: number): number {
    return 3 * ringAreaBytes(queueSize);
  }

  /**
   * Initialise the device (§3.1.1, §5.10.5): negotiate, read `guest_cid`, set up the three
   * queues, set DRIVER_OK, post receive and event buffers.
   * @param transport - the device's transport (it is reset)
   * @param memory - guest memory holding the rings and the allocator's region
   * @param allocator - slots for packets (slot size ≥ 128: the header and some payload)
   * @param options - ring area, queue size, buffers, credit
   * @throws TransportError from negotiation / queue setup; VsockDeviceFault "vsock-not-vsock" /
   *   "vsock-bad-cid" (FAILED is then set); RangeError naming an invalid option
   */
  constructor(
    transport: DriverTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: VsockDriverOptions,
  ) {
    if (allocator.slotSize < 128) {
      throw new RangeError(`allocator.slotSize must be at least 128, got ${allocator.slotSize}`);
    }
    const rxBuffers = options.rxBuffers ?? 16;
    if (!Number.isInteger(rxBuffers) || rxBuffers < 1) {
      throw new RangeError(`options.rxBuffers must be a positive integer, got ${rxBuffers}`);
    }
    const buf = options.bufferBytes ?? 65536;
    if (!Number.isInteger(buf) || buf < 1024 || buf > 2 ** 30) {
      throw new RangeError(`options.bufferBytes must be an integer in [1024, 2^30], got ${buf}`);
    }
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    this.#bufAlloc = buf;
    const info = transport.probe();
    if (info.deviceId !== DeviceId.VSOCK) {
      transport.fail();
      throw new VsockDeviceFault("vsock-not-vsock", `DeviceID is ${info.deviceId}`, info.deviceId);
    }
    let wanted = VSOCK_DRIVER_FEATURES;
    if (options.packed === false) wanted &= ~featureMask(Feature.RING_PACKED);
    this.#features = transport.negotiate(wanted);
    this.#cid = this.#readCid();
    const max = transport.queueMaxSize(0);
    const size = checkQueueSizeOption("options.queueSize", options.queueSize ?? Math.min(64, max));
    const area = ringAreaBytes(size);
    for (let i = 0; i < 3; i++) {
      this.#queues[i] = transport.setupQueue<Buf>(
        i,
        memory,
        ringLayoutAt(options.ringBase + i * area, size),
      );
    }
    transport.driverOk();
    for (let i = 0; i < Math.min(rxBuffers, size); i++) this.#post(KIND_RX, VsockQueue.RX);
    for (let i = 0; i < Math.min(4, size); i++) this.#post(KIND_EVENT, VsockQueue.EVENT);
    this.#flushKicks();
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** This guest's context ID (`guest_cid`). */
  get guestCid(): number {
    return this.#cid;
  }

  /** Connections open or being opened. */
  get connectionCount(): number {
    return this.#count;
  }

  #find(local: number, cid: number, peer: number): Conn | undefined {
    const c = this.#conns.get(local)?.get(peer);
    return c !== undefined && c.peerCid === cid ? c : undefined;
  }

  #add(c: Conn): void {
    let m = this.#conns.get(c.localPort);
    if (m === undefined) {
      m = new Map();
      this.#conns.set(c.localPort, m);
    }
    m.set(c.peerPort, c);
    this.#count++;
  }

  #remove(c: Conn): void {
    const m = this.#conns.get(c.localPort);
    if (m?.get(c.peerPort) !== c) return;
    m.delete(c.peerPort);
    if (m.size === 0) this.#conns.delete(c.localPort);
    this.#count--;
  }

  /**
   * Connect to `port` of `cid` (default the host).
   * @param port - the peer port
   * @param cid - the peer CID (default 2, the host)
   * @returns the connection, once the peer answered RESPONSE
   * @throws RangeError naming `port` or `cid`; VsockConnectionError "refused" (rejection)
   */
  connect(port: number, cid: number = VsockCid.HOST): Promise<VsockConnection> {
    if (!Number.isInteger(port) || port < 0 || port >= 0xffffffff) {
      throw new RangeError(`port must be an integer in [0, 0xfffffffe], got ${port}`);
    }
    if (!Number.isInteger(cid) || cid < 0 || cid >= 0xffffffff) {
      throw new RangeError(`cid must be an integer in [0, 0xfffffffe], got ${cid}`);
    }
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    const local = this.#ephemeral(cid, port);
    const c = new Conn(local, cid, port);
    this.#add(c);
    return new Promise((resolve, reject) => {
      c.opened = resolve;
      c.failed = reject;
      this.#control(c, VsockOp.REQUEST, 0);
      this.#flushKicks();
    });
  }

  /**
   * Accept connections to guest port `port`.
   * @param port - the guest port
   * @returns the listener
   * @throws RangeError naming `port` if invalid or already listened on
   */
  listen(port: number): VsockListener {
    if (!Number.isInteger(port) || port < 0 || port >= 0xffffffff) {
      throw new RangeError(`port must be an integer in [0, 0xfffffffe], got ${port}`);
    }
    if (this.#listeners.has(port)) throw new RangeError(`port ${port} is already listened on`);
    const l = {
      waiting: [] as ((c: VsockConnection) => void)[],
      ready: [] as VsockConnection[],
      open: true,
    };
    this.#listeners.set(port, l);
    return {
      port,
      accept: () => {
        const ready = l.ready.shift();
        if (ready !== undefined) return Promise.resolve(ready);
        return new Promise((resolve) => l.waiting.push(resolve));
      },
      close: () => {
        l.open = false;
        this.#listeners.delete(port);
      },
    };
  }

  /** Process used buffers of every queue (the interrupt handler's work). */
  poll(): void {
    if (this.#broken !== undefined) return;
    for (let i = 0; i < 3; i++) {
      try {
        reapAll(this.#queues[i]!, this.#onUsed);
      } catch (e) {
        this.#break(e);
        return;
      }
    }
    this.#pumpTx();
    this.#flushKicks();
  }

  /** The interrupt handler: take the interrupt causes, re-read `guest_cid` on a config change, poll. */
  onInterrupt(): void {
    const causes = this.#t.takeInterrupt();
    if ((causes & MmioInterrupt.CONFIG) !== 0 && !this.#t.needsReset) this.#rereadCid();
    this.poll();
  }

  // ---- used buffers ----

  #used(b: Buf, len: number): void {
    if (b.kind === KIND_TX) {
      this.#slab.free(b.addr);
      const w = b.write;
      if (w !== undefined && --w.packets === 0 && w.off === w.data.length) w.resolve();
      return;
    }
    if (b.kind === KIND_EVENT) {
      if (
        len >= VsockEvent.SIZE &&
        this.#mem.readU32(b.addr + VsockEvent.ID) === VsockEventId.TRANSPORT_RESET
      ) {
        this.stats.transportResets++;
        this.#rereadCid();
        this.#failAll(
          new VsockConnectionError("transport-reset", "the device reset the transport"),
        );
      }
      this.#repost(b, VsockQueue.EVENT, VsockEvent.SIZE);
      return;
    }
    this.#packet(b, len);
    this.#repost(b, VsockQueue.RX, this.#slab.slotSize);
  }

  #packet(b: Buf, len: number): void {
    this.stats.packetsIn++;
    if (len < HDR || len > this.#slab.slotSize) {
      this.#fault("vsock-bad-packet", `used length ${len}`, len);
      return;
    }
    this.#mem.read(b.addr, this.#hdr);
    const h = this.#hv;
    const plen = h.getUint32(VsockHdr.LEN, true);
    if (plen > len - HDR) {
      this.#fault("vsock-bad-packet", `len ${plen} past the used length ${len}`, plen);
      return;
    }
    const dstCid = h.getUint32(VsockHdr.DST_CID, true);
    const srcCid = h.getUint32(VsockHdr.SRC_CID, true);
    if (
      dstCid !== this.#cid ||
      h.getUint32(VsockHdr.DST_CID + 4, true) !== 0 ||
      h.getUint32(VsockHdr.SRC_CID + 4, true) !== 0
    ) {
      this.#fault("vsock-wrong-cid", `a packet for CID ${dstCid}`, dstCid);
      return;
    }
    const peer = h.getUint32(VsockHdr.SRC_PORT, true);
    const local = h.getUint32(VsockHdr.DST_PORT, true);
    const op = h.getUint16(VsockHdr.OP, true);
    if (h.getUint16(VsockHdr.TYPE, true) !== VsockType.STREAM) {
      if (op !== VsockOp.RST) this.#rstTo(local, srcCid, peer);
      return;
    }
    const c = this.#find(local, srcCid, peer);
    if (c === undefined) {
      if (op === VsockOp.REQUEST) {
        this.#accept(local, srcCid, peer);
        return;
      }
      if (op !== VsockOp.RST) this.#rstTo(local, srcCid, peer);
      return;
    }
    c.peerBufAlloc = h.getUint32(VsockHdr.BUF_ALLOC, true);
    c.peerFwdCnt = h.getUint32(VsockHdr.FWD_CNT, true);
    c.creditRequested = false;
    switch (op) {
      case VsockOp.RESPONSE:
        if (c.state !== "connecting") {
          this.#reset(c, "reset", "an unexpected RESPONSE");
          return;
        }
        c.state = "open";
        c.conn = new VsockConnection(this, c);
        c.opened?.(c.conn);
        c.opened = c.failed = undefined;
        this.#wantSend(c);
        return;
      case VsockOp.RW: {
        if (c.state !== "open" || (c.peerShut & VsockShutdownFlags.SEND) !== 0) {
          this.#reset(c, "reset", "data after its SHUTDOWN");
          return;
        }
        if (plen > this.#bufAlloc - ((c.rxCnt - c.fwdCnt) >>> 0)) {
          this.#fault("vsock-credit", `${plen} bytes past the credit`, plen);
          this.#reset(c, "reset", "data past its credit");
          return;
        }
        if (plen === 0) return;
        const data = this.#mem.slice(b.addr + HDR, plen).slice();
        c.rxCnt = (c.rxCnt + plen) >>> 0;
        this.stats.bytesIn += plen;
        const reader = c.readers.shift();
        if (reader !== undefined) {
          c.readerErrors.shift();
          this.#consumed(c, plen);
          reader(data);
        } else {
          c.chunks.push(data);
        }
        return;
      }
      case VsockOp.CREDIT_UPDATE:
        this.#wantSend(c);
        return;
      case VsockOp.CREDIT_REQUEST:
        this.#control(c, VsockOp.CREDIT_UPDATE, 0);
        return;
      case VsockOp.SHUTDOWN: {
        c.peerShut |=
          h.getUint32(VsockHdr.FLAGS, true) &
          (VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND);
        if ((c.peerShut & VsockShutdownFlags.SEND) !== 0 && c.chunks.length === 0) {
          for (const r of c.readers.splice(0)) r(null);
          c.readerErrors.length = 0;
        }
        if (c.peerShut === (VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND)) {
          // §5.10.6.5: answer a full shutdown with RST.
          this.#control(c, VsockOp.RST, 0);
          this.#close(c, undefined);
        }
        return;
      }
      case VsockOp.RST:
        if (c.state === "connecting") {
          this.#close(
            c,
            new VsockConnectionError("refused", `port ${peer} of CID ${srcCid} refused`),
          );
        } else if (c.shutdownSent !== 0 || c.peerShut !== 0) {
          this.#close(c, undefined);
        } else {
          this.#close(c, new VsockConnectionError("reset", "the peer reset the connection"));
        }
        return;
      default:
        this.#reset(c, "reset", `op ${op}`);
        return;
    }
  }

  #accept(local: number, cid: number, peer: number): void {
    const l = this.#listeners.get(local);
    if (l === undefined || !l.open) {
      this.#rstTo(local, cid, peer);
      return;
    }
    const h = this.#hv;
    const c = new Conn(local, cid, peer);
    c.peerBufAlloc = h.getUint32(VsockHdr.BUF_ALLOC, true);
    c.peerFwdCnt = h.getUint32(VsockHdr.FWD_CNT, true);
    c.state = "open";
    c.conn = new VsockConnection(this, c);
    this.#add(c);
    this.#control(c, VsockOp.RESPONSE, 0);
    const waiting = l.waiting.shift();
    if (waiting !== undefined) waiting(c.conn);
    else l.ready.push(c.conn);
  }

  // ---- connection API (called by VsockConnection) ----

  /** @internal */
  write(c: Conn, data: Uint8Array): Promise<void> {
    if (!(data instanceof Uint8Array)) throw new TypeError("data must be a Uint8Array");
    if (c.error !== undefined) return Promise.reject(c.error);
    if (c.state === "closed" || (c.shutdownSent & VsockShutdownFlags.SEND) !== 0) {
      return Promise.reject(new VsockConnectionError("closed", "write after end"));
    }
    if (data.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      c.writes.push({ data, off: 0, packets: 0, resolve, reject });
      this.#wantSend(c);
      this.#flushKicks();
    });
  }

  /** @internal */
  read(c: Conn): Promise<Uint8Array | null> {
    const chunk = c.chunks.shift();
    if (chunk !== undefined) {
      this.#consumed(c, chunk.length);
      this.#flushKicks();
      return Promise.resolve(chunk);
    }
    if (c.error !== undefined) return Promise.reject(c.error);
    if ((c.peerShut & VsockShutdownFlags.SEND) !== 0 || c.state === "closed") {
      return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      c.readers.push(resolve);
      c.readerErrors.push(reject);
    });
  }

  /** @internal */
  shutdown(c: Conn, flags: number): void {
    if (c.state === "closed") return;
    const add = flags & ~c.shutdownSent;
    if (add === 0) return;
    c.shutdownSent |= add;
    this.#control(c, VsockOp.SHUTDOWN, c.shutdownSent);
    this.#flushKicks();
  }

  // ---- transmit ----

  #consumed(c: Conn, n: number): void {
    c.fwdCnt = (c.fwdCnt + n) >>> 0;
    if ((c.fwdCnt - c.fwdSent) >>> 0 >= this.#bufAlloc / 4 && c.state === "open") {
      this.#control(c, VsockOp.CREDIT_UPDATE, 0);
    }
  }

  #control(c: Conn, op: number, flags: number): void {
    // One pending packet of each kind is enough (credit and shutdown state are sent whole).
    if (c.control.some((p) => p.op === op)) {
      if (op === VsockOp.SHUTDOWN) for (const p of c.control) if (p.op === op) p.flags = flags;
      return;
    }
    c.control.push({ op, flags });
    this.#wantSend(c);
  }

  #wantSend(c: Conn): void {
    if (!this.#sendQueue.includes(c)) this.#sendQueue.push(c);
    this.#pumpTx();
  }

  #pumpTx(): void {
    const q = this.#queues[VsockQueue.TX]!;
    while (this.#sendQueue.length > 0 && q.numFree > 0) {
      const c = this.#sendQueue[0]!;
      const addr = this.#slab.alloc();
      if (addr === undefined) return;
      const sent = this.#buildTx(c, addr, q);
      if (!sent) {
        this.#slab.free(addr);
        this.#sendQueue.shift();
        continue;
      }
      // Round robin: a connection with more to send goes to the back.
      this.#sendQueue.shift();
      if (this.#hasSendable(c)) this.#sendQueue.push(c);
    }
  }

  #hasSendable(c: Conn): boolean {
    if (c.control.some((p) => p.op !== VsockOp.SHUTDOWN || c.writes.length === 0)) return true;
    return this.#dataSendable(c);
  }

  #dataSendable(c: Conn): boolean {
    return c.state === "open" && c.writes.length > 0 && (c.credit > 0 || !c.creditRequested);
  }

  /** Put `c`'s next packet in the slot at `addr` and on the ring; false if it has nothing. */
  #buildTx(c: Conn, addr: number, q: DriverQueue<Buf>): boolean {
    // A SHUTDOWN waits for the data written before it (§5.10.6.5: it ends the stream).
    const at = c.control.findIndex((p) => p.op !== VsockOp.SHUTDOWN || c.writes.length === 0);
    const ctl = at < 0 ? undefined : c.control.splice(at, 1)[0];
    let op: number;
    let flags = 0;
    let n = 0;
    let w: PendingWrite | undefined;
    if (ctl !== undefined) {
      op = ctl.op;
      flags = ctl.flags;
    } else if (c.state === "open" && c.writes.length > 0) {
      if (c.credit <= 0) {
        if (c.creditRequested) return false;
        c.creditRequested = true;
        op = VsockOp.CREDIT_REQUEST;
      } else {
        w = c.writes[0]!;
        n = Math.min(w.data.length - w.off, c.credit, this.#slab.slotSize - HDR);
        this.#mem.write(addr + HDR, w.data.subarray(w.off, w.off + n));
        w.off += n;
        w.packets++;
        if (w.off === w.data.length) c.writes.shift();
        c.txCnt = (c.txCnt + n) >>> 0;
        this.stats.bytesOut += n;
        op = VsockOp.RW;
      }
    } else {
      return false;
    }
    const v = this.#hv;
    v.setUint32(VsockHdr.SRC_CID, this.#cid, true);
    v.setUint32(VsockHdr.SRC_CID + 4, 0, true);
    v.setUint32(VsockHdr.DST_CID, c.peerCid, true);
    v.setUint32(VsockHdr.DST_CID + 4, 0, true);
    v.setUint32(VsockHdr.SRC_PORT, c.localPort, true);
    v.setUint32(VsockHdr.DST_PORT, c.peerPort, true);
    v.setUint32(VsockHdr.LEN, n, true);
    v.setUint16(VsockHdr.TYPE, VsockType.STREAM, true);
    v.setUint16(VsockHdr.OP, op, true);
    v.setUint32(VsockHdr.FLAGS, flags, true);
    v.setUint32(VsockHdr.BUF_ALLOC, this.#bufAlloc, true);
    v.setUint32(VsockHdr.FWD_CNT, c.fwdCnt, true);
    c.fwdSent = c.fwdCnt;
    this.#mem.write(addr, this.#hdr);
    const seg = this.#seg[0] as { addr: number; len: number };
    seg.addr = addr;
    seg.len = HDR + n;
    q.add(this.#seg, this.#none, { kind: KIND_TX, addr, write: w });
    this.stats.packetsOut++;
    this.#kick[VsockQueue.TX] = true;
    return true;
  }

  #rstTo(local: number, cid: number, peer: number): void {
    // An RST for no connection: a throwaway connection record carries it.
    const c = new Conn(local, cid, peer);
    c.state = "closed";
    c.control.push({ op: VsockOp.RST, flags: 0 });
    this.#sendQueue.push(c);
    this.#pumpTx();
  }

  // ---- buffers ----

  #post(kind: number, qi: number): void {
    const addr = this.#slab.alloc();
    if (addr === undefined) return;
    this.#repost(
      { kind, addr, write: undefined },
      qi,
      kind === KIND_EVENT ? VsockEvent.SIZE : this.#slab.slotSize,
    );
  }

  #repost(b: Buf, qi: number, len: number): void {
    const seg = this.#seg[0] as { addr: number; len: number };
    seg.addr = b.addr;
    seg.len = len;
    this.#queues[qi]!.add(this.#none, this.#seg, b);
    this.#kick[qi] = true;
  }

  #flushKicks(): void {
    for (let i = 0; i < 3; i++) {
      if (!this.#kick[i]) continue;
      this.#kick[i] = false;
      if (this.#queues[i]!.publish()) this.#t.notify(i);
    }
  }

  // ---- failure ----

  #reset(c: Conn, code: VsockConnectionErrorCode, why: string): void {
    this.#control(c, VsockOp.RST, 0);
    this.#close(c, new VsockConnectionError(code, `the device sent ${why}`));
  }

  #close(c: Conn, error: VsockConnectionError | undefined): void {
    if (c.state === "closed" && error === undefined) return;
    const wasConnecting = c.state === "connecting";
    c.state = "closed";
    c.error = error;
    this.#remove(c);
    if (wasConnecting) {
      c.failed?.(error ?? new VsockConnectionError("closed", "closed"));
      c.opened = c.failed = undefined;
    }
    const e = error ?? new VsockConnectionError("closed", "the connection is closed");
    for (const w of c.writes.splice(0)) w.reject(e);
    if (error === undefined) for (const r of c.readers.splice(0)) r(null);
    else for (const r of c.readerErrors.splice(0)) r(error);
    c.readers.length = 0;
    c.readerErrors.length = 0;
  }

  #failAll(e: VsockConnectionError): void {
    const all: Conn[] = [];
    for (const m of this.#conns.values()) for (const c of m.values()) all.push(c);
    for (const c of all) {
      c.control.length = 0;
      this.#close(c, e);
    }
    this.#sendQueue.length = 0;
  }

  #break(e: unknown): void {
    const f = new VsockDeviceFault(
      "vsock-ring-broken",
      `the device corrupted a ring: ${(e as Error)?.message}`,
      0,
      e,
    );
    this.#broken = f;
    this.stats.faults++;
    this.lastFault = f;
    this.#failAll(new VsockConnectionError("transport-reset", f.message));
  }

  #fault(code: VsockDeviceFaultCode, message: string, value: number): void {
    const f = new VsockDeviceFault(code, message, value);
    this.stats.faults++;
    this.lastFault = f;
  }

  /** §5.10.6.7: after a transport reset the driver reads `guest_cid` again. */
  #rereadCid(): void {
    const [lo, hi] = this.#t.readConfig((c) => [
      c.u32(VsockConfig.GUEST_CID),
      c.u32(VsockConfig.GUEST_CID + 4),
    ]);
    if (hi !== 0 || lo! <= VsockCid.HOST || lo === VsockCid.ANY) {
      this.#fault("vsock-bad-cid", `guest_cid is ${hi}:${lo}`, lo!);
      return;
    }
    this.#cid = lo!;
  }

  #readCid(): number {
    const [lo, hi] = this.#t.readConfig((c) => [
      c.u32(VsockConfig.GUEST_CID),
      c.u32(VsockConfig.GUEST_CID + 4),
    ]);
    if (hi !== 0 || lo! <= VsockCid.HOST || lo === VsockCid.ANY) {
      this.#t.fail();
      throw new VsockDeviceFault("vsock-bad-cid", `guest_cid is ${hi}:${lo}`, lo!);
    }
    return lo!;
  }

  #ephemeral(cid: number, port: number): number {
    for (let i = 0; i < 0x10000; i++) {
      const p = this.#nextPort;
      this.#nextPort = p >= 0xfffffffe ? 1024 : p + 1;
      if (!this.#listeners.has(p) && this.#find(p, cid, port) === undefined) return p;
    }
    throw new RangeError("no free guest port");
  }
}
