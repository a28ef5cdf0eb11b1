/**
 * The virtio-vsock device model (VIRTIO 1.3 §5.10): stream sockets between the host (CID 2)
 * and one guest, over a receive queue (device → driver), a transmit queue (driver → device)
 * and an event queue. The host side is {@link VsockStream} / {@link VsockServer}.
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";
import {
  DeviceId,
  Feature,
  featureMask,
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
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import { checkQueueSizeOption, DescriptorChain, type DeviceQueue } from "@virtio-ts/virtqueue";
import {
  type VsockConnectOptions,
  VsockError,
  VsockServer,
  VsockStream,
  type VsockStreamOwner,
} from "./vsock-stream.js";

/** Options of a {@link VsockDevice}. */
export interface VsockDeviceOptions {
  /** The guest's context ID (`guest_cid`): 3 to 0xfffffffe (0–2 and 0xffffffff are reserved). */
  readonly guestCid: number;
  /** Maximum size of every queue (a power of 2, 2 to 32768). Default 128. */
  readonly queueSize?: number;
  /**
   * `buf_alloc` of every host socket: bytes the guest may send that the host application has
   * not read yet (4096 to 2^30). Default 262144. The guest cannot send more (credit, §5.10.6.3);
   * one that does has its connection reset.
   */
  readonly bufferBytes?: number;
  /** Connections at once; a request past it is refused with RST. Default 1024. */
  readonly maxConnections?: number;
  /** Largest payload of one packet sent to the guest. Default 65536. */
  readonly maxPacketBytes?: number;
}

/** Counters of a {@link VsockDevice} (mutated in place). */
export interface VsockDeviceStats {
  /** Packets the driver sent (transmit queue). */
  packetsFromGuest: number;
  /** Packets the device sent (receive queue). */
  packetsToGuest: number;
  /** Payload bytes from the guest delivered to host streams. */
  bytesFromGuest: number;
  /** Payload bytes sent to the guest. */
  bytesToGuest: number;
  /** Connections established (either direction). */
  connections: number;
  /** Connection requests answered with RST (no listener, too many connections, bad type). */
  refused: number;
  /** Packets for no connection answered with RST. */
  unknownConnection: number;
  /** Packets dropped for a wrong `src_cid` or `dst_cid` (§5.10.6.4). */
  wrongCid: number;
  /** Connections reset because the guest sent past its credit. */
  creditViolations: number;
  /** Malformed buffers (also reported through `ctx.noteFault`). */
  malformed: number;
  /** RST replies not sent because their bounded queue was full. */
  rstDropped: number;
  /** TRANSPORT_RESET events written to the event queue. */
  transportResets: number;
}

/** Why a vsock buffer was refused. */
export type VsockFaultCode =
  /** A transmit buffer shorter than `struct virtio_vsock_hdr` (44 bytes). */
  | "vsock-short-header"
  /** `len` does not match the payload the buffer holds. */
  | "vsock-bad-length"
  /** A device-readable descriptor in the receive or event queue (§5.10.6.1). */
  | "vsock-readable-in-rx"
  /** A device-writable descriptor in the transmit queue (§5.10.6.1). */
  | "vsock-writable-in-tx"
  /** A receive buffer too small for a header, or an event buffer below 4 bytes. */
  | "vsock-short-buffer";

/**
 * The driver sent a malformed vsock buffer (a guest fault the device survives): reported
 * through `ctx.noteFault`, never thrown; the buffer is returned used with length 0.
 */
export class VsockFault extends VirtioError {
  /** What is wrong. */
  readonly code: VsockFaultCode;
  /** The queue involved. */
  readonly queue: number;
  /** The offending value (a length), or 0. */
  readonly value: number;

  /**
   * @param code - what is wrong
   * @param queue - queue index
   * @param value - offending value
   */
  constructor(code: VsockFaultCode, queue: number, value: number) {
    super(`virtio-vsock ${code} (queue ${queue}, value ${value})`);
    this.code = code;
    this.queue = queue;
    this.value = value;
  }
}

const HDR = VsockHdr.SIZE;
const EPHEMERAL_FIRST = 49152;
/** A close we started waits this long for the guest's RST, then sends one (§5.10.6.5). */
const CLOSE_TIMEOUT_MS = 8000;
/** Bounded queue of RSTs for packets that match no connection. */
const MAX_PENDING_RST = 256;

/** One connection (internal). */
class Conn {
  state: "connecting" | "open" = "connecting";
  sendRequest = false;
  sendResponse = false;
  sendCredit = false;
  /** A CREDIT_REQUEST went out and the guest has sent nothing since. */
  creditRequested = false;
  sendRst = false;
  /** SHUTDOWN flags to send once the queued data is out (0: none). */
  shutdown = 0;
  shutdownSent = false;
  /** SHUTDOWN flags the guest sent. */
  peerShut = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** Payload bytes sent. */
  txCnt = 0;
  /** Payload bytes received. */
  rxCnt = 0;
  /** Received bytes the application took. */
  fwdCnt = 0;
  /** `fwd_cnt` as last told to the guest. */
  fwdSent = 0;
  readonly tx: Uint8Array[] = [];
  txOff = 0;
  ready = false;
  timer: unknown = undefined;

  constructor(
    readonly localPort: number,
    readonly peerPort: number,
    readonly stream: VsockStream,
  ) {}

  /** Bytes the guest can still take (§5.10.6.3: buf_alloc − (tx_cnt − fwd_cnt)). */
  get credit(): number {
    return this.peerBufAlloc - ((this.txCnt - this.peerFwdCnt) >>> 0);
  }
}

/**
 * The virtio-vsock device model (VIRTIO 1.3 §5.10), stream sockets only: the host (CID 2)
 * listens on ports ({@link VsockDevice.listen}) and connects to guest ports
 * ({@link VsockDevice.connect}); each connection is a {@link VsockStream} shaped like a
 * `net.Socket`. Offered: VIRTIO_VSOCK_F_STREAM (a driver that negotiates no type bit gets
 * streams too, §5.10.3); ring features INDIRECT_DESC, EVENT_IDX, RING_PACKED.
 *
 * Protocol (§5.10.6): REQUEST → RESPONSE, or RST when nothing listens on the port or too many
 * connections are open; RW carries payload within the receiver's credit (`buf_alloc` minus
 * bytes in flight, advertised in every header with `fwd_cnt`); CREDIT_UPDATE is sent as the
 * host application reads, CREDIT_REQUEST answered; SHUTDOWN half-closes (`end`); a guest that
 * shuts down both directions is answered with RST and the connection is gone; packets for no
 * connection are answered with RST (bounded). The event queue carries TRANSPORT_RESET
 * ({@link VsockDevice.transportReset}).
 *
 * Hostile guests: packets with a `src_cid` other than the guest's or a `dst_cid` other than the
 * host's are dropped and counted (as vhost-vsock does); a guest sending past its credit has
 * the connection reset (memory per connection stays below `bufferBytes`); connections are
 * bounded by `maxConnections`; malformed buffers (short header, `len` not matching the payload,
 * a readable descriptor in the receive or event queue, a writable one in the transmit queue)
 * are returned with length 0 and reported as a {@link VsockFault}; a hostile ring puts the
 * device into DEVICE_NEEDS_RESET through the core.
 *
 * @example
 * ```ts
 * const vsock = new VsockDevice({ guestCid: 3 });
 * vsock.listen(1234, (s) => s.on("data", (d) => s.write(d))); // an echo server on host port 1234
 * const device = new MmioDevice(vsock, { memory });
 * ```
 */
export class VsockDevice implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId = DeviceId.VSOCK;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize = VsockConfig.SIZE;
  /** `buf_alloc` of host sockets. */
  readonly bufferBytes: number;
  /** Connections at once. */
  readonly maxConnections: number;
  /** Counters. */
  readonly stats: VsockDeviceStats = {
    packetsFromGuest: 0,
    packetsToGuest: 0,
    bytesFromGuest: 0,
    bytesToGuest: 0,
    connections: 0,
    refused: 0,
    unknownConnection: 0,
    wrongCid: 0,
    creditViolations: 0,
    malformed: 0,
    rstDropped: 0,
    transportResets: 0,
  };
  #guestCid: number;
  readonly #maxPacket: number;
  readonly #servers = new Map<number, VsockServer>();
  /** Connections by host port, then guest port. */
  readonly #conns = new Map<number, Map<number, Conn>>();
  #count = 0;
  readonly #ready: Conn[] = [];
  /** RSTs to send for packets of no connection: [host port, guest port] pairs. */
  readonly #rst: number[] = [];
  #nextPort = EPHEMERAL_FIRST;
  #ctx: DeviceContext | undefined = undefined;
  #eventPending = false;
  #pumping = false;
  readonly #rxChain: DescriptorChain;
  readonly #txChain: DescriptorChain;
  readonly #evChain: DescriptorChain;
  readonly #hdr = new Uint8Array(HDR);
  readonly #hv = new DataView(this.#hdr.buffer);
  readonly #out = new Uint8Array(HDR);
  readonly #ov = new DataView(this.#out.buffer);
  readonly #owner: VsockStreamOwner;

  /**
   * @param options - guest CID, queue size, limits
   * @throws RangeError naming the bad option
   */
  constructor(options: VsockDeviceOptions) {
    this.#guestCid = checkCid(options?.guestCid, "options.guestCid");
    const qs = checkQueueSizeOption("options.queueSize", options.queueSize ?? 128);
    this.bufferBytes = intOption("options.bufferBytes", options.bufferBytes, 262144, 4096, 2 ** 30);
    this.maxConnections = intOption(
      "options.maxConnections",
      options.maxConnections,
      1024,
      1,
      65536,
    );
    this.#maxPacket = intOption(
      "options.maxPacketBytes",
      options.maxPacketBytes,
      65536,
      1,
      2 ** 20,
    );
    this.queueMaxSizes = [qs, qs, qs];
    this.#rxChain = new DescriptorChain(qs);
    this.#txChain = new DescriptorChain(qs);
    this.#evChain = new DescriptorChain(qs);
    this.features = [
      VsockFeature.STREAM,
      Feature.RING_INDIRECT_DESC,
      Feature.RING_EVENT_IDX,
      Feature.RING_PACKED,
    ].reduce((m, b) => m | featureMask(b), 0n);
    // A throwing listener is the host application's bug: reported, never thrown at the guest.
    const report = (e: unknown): void => {
      this.#ctx?.noteFault(e instanceof VirtioError ? e : new VsockListenerError(e));
    };
    this.#owner = {
      write: (s, data) => this.#write(s, data),
      end: (s) => this.#end(s),
      destroy: (s) => this.#destroy(s),
      consumed: (s, n) => this.#consumed(s, n),
      report,
    };
  }

  /** The guest's context ID (`guest_cid`). */
  get guestCid(): number {
    return this.#guestCid;
  }

  /** Connections open now (or being opened). */
  get connectionCount(): number {
    return this.#count;
  }

  /**
   * Accept guest connections to host port `port`, like `net.createServer(onConnection).listen(port)`.
   * @param port - host port (0 to 0xffffffff; 0xffffffff is VMADDR_PORT_ANY and refused)
   * @param onConnection - called with each new connection (also the server's `connection` event)
   * @returns the server
   * @throws RangeError naming `port` if it is out of range or already listened on
   */
  listen(port: number, onConnection?: (stream: VsockStream) => void): VsockServer {
    if (!Number.isInteger(port) || port < 0 || port >= 0xffffffff) {
      throw new RangeError(`port must be an integer in [0, 0xfffffffe], got ${port}`);
    }
    if (this.#servers.has(port)) throw new RangeError(`port ${port} is already listened on`);
    const server = new VsockServer(
      port,
      (s) => {
        if (this.#servers.get(s.port) === s) this.#servers.delete(s.port);
      },
      this.#owner.report,
    );
    if (onConnection !== undefined) server.on("connection", onConnection);
    this.#servers.set(port, server);
    return server;
  }

  /**
   * Connect to guest port `port` (like `net.connect`): the stream emits `connect` once the
   * guest accepts, or `error` (ECONNREFUSED, ETIMEDOUT). Before the device is active the request
   * waits.
   * @param port - guest port (0 to 0xfffffffe)
   * @param options - timeout, high-water mark
   * @returns the stream
   * @throws RangeError naming `port`, or if `maxConnections` are open or no host port is free
   */
  connect(port: number, options: VsockConnectOptions = {}): VsockStream {
    if (!Number.isInteger(port) || port < 0 || port >= 0xffffffff) {
      throw new RangeError(`port must be an integer in [0, 0xfffffffe], got ${port}`);
    }
    if (this.#count >= this.maxConnections) {
      throw new RangeError(`already ${this.maxConnections} connections`);
    }
    const local = this.#ephemeral(port);
    const hwm = intOption("options.highWaterMark", options.highWaterMark, 65536, 1, 2 ** 30);
    const timeout = intOption("options.timeoutMs", options.timeoutMs, 10_000, 1, 3_600_000);
    const stream = new VsockStream(this.#owner, local, this.#guestCid, port, hwm);
    const c = this.#add(local, port, stream);
    c.sendRequest = true;
    c.timer = setTimer(() => {
      c.timer = undefined;
      if (this.#find(local, port) !== c || c.state !== "connecting") return;
      this.#forget(c);
      c.sendRst = true;
      this.#schedule(c);
      stream.fail(new VsockError("ETIMEDOUT", "no answer from the guest", local, port));
      this.#kickPump();
    }, timeout);
    this.#schedule(c);
    this.#kickPump();
    return stream;
  }

  /**
   * Tell the driver its transport was reset (after a migration, or to drop every connection):
   * every connection fails with ERR_VSOCK_RESET, `guest_cid` changes to `newGuestCid` if given
   * (with a configuration change notification), and a TRANSPORT_RESET event is written to the
   * event queue (now, or when the driver next posts an event buffer). §5.10.6.7
   * @param newGuestCid - the guest's new context ID
   * @throws RangeError naming `newGuestCid`
   */
  transportReset(newGuestCid?: number): void {
    if (newGuestCid !== undefined) {
      const cid = checkCid(newGuestCid, "newGuestCid");
      if (cid !== this.#guestCid) {
        this.#guestCid = cid;
        this.#ctx?.notifyConfigChange();
      }
    }
    this.#dropAll("transport reset");
    this.#eventPending = true;
    const ctx = this.#ctx;
    if (ctx !== undefined) ctx.guard(() => this.#deliverEvents(ctx));
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    // §5.10.4: le64 guest_cid; the upper 32 bits are reserved and zero.
    const at = offset - VsockConfig.GUEST_CID;
    if (at >= 4) return 0;
    const v = Math.floor(this.#guestCid / 2 ** (8 * at));
    return size === 4 ? v >>> 0 : v & (size === 2 ? 0xffff : 0xff);
  }

  /** `guest_cid` is read-only (§5.10.4): writes are ignored. */
  writeConfig(_offset: number, _size: 1 | 2 | 4, _value: number): void {}

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#pump(ctx);
    this.#deliverEvents(ctx);
    this.#receive(ctx);
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    const ctx = this.#ctx;
    if (ctx === undefined) return;
    if (index === VsockQueue.TX) this.#receive(ctx);
    else if (index === VsockQueue.RX) this.#pump(ctx);
    else if (index === VsockQueue.EVENT) this.#deliverEvents(ctx);
  }

  /**
   * Forget every connection (they fail with ERR_VSOCK_RESET) and what was waiting for the
   * driver; servers keep listening.
   */
  reset(): void {
    this.#ctx = undefined;
    this.#eventPending = false;
    this.#rst.length = 0;
    this.#dropAll("device reset");
  }

  // ---- transmit queue: packets from the guest ----

  #receive(ctx: DeviceContext): void {
    const q = ctx.queue(VsockQueue.TX);
    if (q === undefined) return;
    const chain = this.#txChain;
    let popped = false;
    for (;;) {
      while (q.pop(chain)) {
        popped = true;
        this.stats.packetsFromGuest++;
        this.#packet(ctx, chain);
        q.push(chain.head, 0);
      }
      if (!q.enableNotifications()) break;
    }
    if (popped) ctx.signalUsed(VsockQueue.TX);
    this.#pump(ctx);
  }

  /** One packet from the guest (its chain stays popped: the caller returns it). */
  #packet(ctx: DeviceContext, chain: DescriptorChain): void {
    if (chain.readableCount < chain.count) {
      this.#fault(ctx, "vsock-writable-in-tx", VsockQueue.TX, chain.count);
      return;
    }
    if (chain.copyFromReadable(ctx.memory, 0, this.#hdr) < HDR) {
      this.#fault(ctx, "vsock-short-header", VsockQueue.TX, chain.readableBytes);
      return;
    }
    const h = this.#hv;
    const len = h.getUint32(VsockHdr.LEN, true);
    if (len !== chain.readableBytes - HDR) {
      this.#fault(ctx, "vsock-bad-length", VsockQueue.TX, len);
      return;
    }
    // §5.10.6.4 (as vhost-vsock): only packets from the guest's CID to the host are taken.
    if (
      h.getUint32(VsockHdr.SRC_CID, true) !== this.#guestCid ||
      h.getUint32(VsockHdr.SRC_CID + 4, true) !== 0 ||
      h.getUint32(VsockHdr.DST_CID, true) !== VsockCid.HOST ||
      h.getUint32(VsockHdr.DST_CID + 4, true) !== 0
    ) {
      this.stats.wrongCid++;
      return;
    }
    const peer = h.getUint32(VsockHdr.SRC_PORT, true);
    const local = h.getUint32(VsockHdr.DST_PORT, true);
    const op = h.getUint16(VsockHdr.OP, true);
    const type = h.getUint16(VsockHdr.TYPE, true);
    const c = this.#find(local, peer);
    if (type !== VsockType.STREAM) {
      // Seqpacket was not offered: refuse whatever it is.
      if (op !== VsockOp.RST) this.#refuse(local, peer, c);
      return;
    }
    if (c === undefined) {
      if (op === VsockOp.REQUEST) {
        this.#accept(local, peer);
        return;
      }
      if (op !== VsockOp.RST) {
        this.stats.unknownConnection++;
        this.#queueRst(local, peer);
      }
      return;
    }
    c.peerBufAlloc = h.getUint32(VsockHdr.BUF_ALLOC, true);
    c.peerFwdCnt = h.getUint32(VsockHdr.FWD_CNT, true);
    c.creditRequested = false;
    switch (op) {
      case VsockOp.RESPONSE:
        if (c.state !== "connecting") {
          this.#reset(c, "an unexpected RESPONSE");
          return;
        }
        c.state = "open";
        if (c.timer !== undefined) clearTimer(c.timer);
        c.timer = undefined;
        this.stats.connections++;
        this.#schedule(c);
        c.stream.opened();
        return;
      case VsockOp.RW:
        this.#rw(ctx, c, chain, len);
        return;
      case VsockOp.CREDIT_UPDATE:
        this.#schedule(c);
        return;
      case VsockOp.CREDIT_REQUEST:
        c.sendCredit = true;
        this.#schedule(c);
        return;
      case VsockOp.SHUTDOWN: {
        const flags =
          h.getUint32(VsockHdr.FLAGS, true) &
          (VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND);
        c.peerShut |= flags;
        if ((flags & VsockShutdownFlags.SEND) !== 0) c.stream.peerEnded();
        if ((c.peerShut & VsockShutdownFlags.RECEIVE) !== 0) {
          // The guest takes nothing more: what we still hold for it is dropped.
          const dropped = this.#pendingBytes(c);
          c.tx.length = 0;
          c.txOff = 0;
          if (dropped > 0) c.stream.sent(dropped);
        }
        if (c.peerShut === (VsockShutdownFlags.RECEIVE | VsockShutdownFlags.SEND)) {
          // §5.10.6.5: a clean disconnect ends with an RST from the peer of the shutdown.
          this.#forget(c);
          c.sendRst = true;
          this.#schedule(c);
          c.stream.closed();
        } else {
          this.#schedule(c);
        }
        return;
      }
      case VsockOp.RST:
        this.#forget(c);
        if (c.state === "connecting") {
          c.stream.fail(
            new VsockError("ECONNREFUSED", "the guest refused the connection", local, peer),
          );
        } else if (c.shutdownSent || c.peerShut !== 0) {
          c.stream.closed();
        } else {
          c.stream.fail(
            new VsockError("ECONNRESET", "the guest reset the connection", local, peer),
          );
        }
        return;
      case VsockOp.REQUEST:
        this.#reset(c, "a second REQUEST for an existing connection");
        return;
      default:
        this.#reset(c, `op ${op}`);
        return;
    }
  }

  #accept(local: number, peer: number): void {
    const server = this.#servers.get(local);
    if (server === undefined || !server.listening || this.#count >= this.maxConnections) {
      this.#refuse(local, peer, undefined);
      return;
    }
    const h = this.#hv;
    const stream = new VsockStream(this.#owner, local, this.#guestCid, peer, 65536);
    const c = this.#add(local, peer, stream);
    c.peerBufAlloc = h.getUint32(VsockHdr.BUF_ALLOC, true);
    c.peerFwdCnt = h.getUint32(VsockHdr.FWD_CNT, true);
    c.state = "open";
    c.sendResponse = true;
    this.stats.connections++;
    this.#schedule(c);
    stream.opened();
    server.emit("connection", stream);
  }

  #refuse(local: number, peer: number, c: Conn | undefined): void {
    this.stats.refused++;
    if (c !== undefined) this.#reset(c, "a refused request");
    else this.#queueRst(local, peer);
  }

  #rw(ctx: DeviceContext, c: Conn, chain: DescriptorChain, len: number): void {
    if (len === 0) return;
    if ((c.peerShut & VsockShutdownFlags.SEND) !== 0 || c.state !== "open") {
      this.#reset(c, "data after its SHUTDOWN");
      return;
    }
    // §5.10.6.3: the driver MUST NOT send more than the credit we advertised.
    if (len > this.bufferBytes - ((c.rxCnt - c.fwdCnt) >>> 0)) {
      this.stats.creditViolations++;
      this.#reset(c, `${len} bytes past its credit`);
      return;
    }
    // Copied: the application keeps the bytes, the guest may reuse its buffer at once.
    const data = new Uint8Array(len);
    chain.copyFromReadable(ctx.memory, HDR, data);
    c.rxCnt = (c.rxCnt + len) >>> 0;
    this.stats.bytesFromGuest += len;
    c.stream.received(data);
  }

  // ---- receive queue: packets to the guest ----

  #schedule(c: Conn): void {
    if (c.ready) return;
    c.ready = true;
    this.#ready.push(c);
  }

  #kickPump(): void {
    const ctx = this.#ctx;
    if (ctx !== undefined) ctx.guard(() => this.#pump(ctx));
  }

  /** Whether connection `c` has a packet to send now. */
  #sendable(c: Conn): boolean {
    if (c.sendRst || c.sendRequest || c.sendResponse) return true;
    if (c.state !== "open") return false;
    const pending = this.#pendingBytes(c);
    if (pending > 0 && (c.peerShut & VsockShutdownFlags.RECEIVE) === 0) {
      // Data waits: send it while there is credit, else ask for credit once.
      return c.credit > 0 || !c.creditRequested;
    }
    return (c.shutdown !== 0 && pending === 0) || c.sendCredit;
  }

  #pump(ctx: DeviceContext): void {
    if (this.#pumping) return;
    const q = ctx.queue(VsockQueue.RX);
    if (q === undefined) return;
    this.#pumping = true;
    let used = false;
    try {
      for (;;) {
        // RSTs to no connection first, then the connections in turn (one packet each).
        const c = this.#rst.length > 0 ? undefined : this.#peekReady();
        if (c === undefined && this.#rst.length === 0) break;
        if (!this.#popRx(ctx, q) && !(q.enableNotifications() && this.#popRx(ctx, q))) break;
        used = true;
        const chain = this.#rxChain;
        let n = 0;
        if (c === undefined) {
          const local = this.#rst.shift()!;
          const peer = this.#rst.shift()!;
          this.#header(local, peer, VsockOp.RST, 0, 0, undefined);
        } else {
          this.#ready.shift();
          c.ready = false;
          n = this.#build(ctx, c, chain, chain.writableBytes - HDR);
          if (this.#sendable(c)) this.#schedule(c);
        }
        this.stats.packetsToGuest++;
        chain.copyToWritable(ctx.memory, 0, this.#out);
        q.push(chain.head, HDR + n);
      }
    } finally {
      this.#pumping = false;
    }
    if (used) ctx.signalUsed(VsockQueue.RX);
  }

  /** The first connection of the ready list with a packet to send (others are dropped from it). */
  #peekReady(): Conn | undefined {
    while (this.#ready.length > 0) {
      const c = this.#ready[0]!;
      if (this.#sendable(c)) return c;
      this.#ready.shift();
      c.ready = false;
    }
    return undefined;
  }

  /** Pop a usable receive buffer into the rx cursor (malformed ones are returned and counted). */
  #popRx(ctx: DeviceContext, q: DeviceQueue): boolean {
    const chain = this.#rxChain;
    while (q.pop(chain)) {
      if (chain.readableCount > 0) {
        this.#fault(ctx, "vsock-readable-in-rx", VsockQueue.RX, chain.readableCount);
        q.push(chain.head, 0);
        continue;
      }
      if (chain.writableBytes < HDR) {
        this.#fault(ctx, "vsock-short-buffer", VsockQueue.RX, chain.writableBytes);
        q.push(chain.head, 0);
        continue;
      }
      return true;
    }
    return false;
  }

  /** Build connection `c`'s next packet into the header scratch and `chain`; returns the payload size. */
  #build(ctx: DeviceContext, c: Conn, chain: DescriptorChain, room: number): number {
    if (c.sendRst) {
      c.sendRst = false;
      this.#header(c.localPort, c.peerPort, VsockOp.RST, 0, 0, c);
      return 0;
    }
    if (c.sendRequest) {
      c.sendRequest = false;
      this.#header(c.localPort, c.peerPort, VsockOp.REQUEST, 0, 0, c);
      return 0;
    }
    if (c.sendResponse) {
      c.sendResponse = false;
      this.#header(c.localPort, c.peerPort, VsockOp.RESPONSE, 0, 0, c);
      return 0;
    }
    const pending = this.#pendingBytes(c);
    if (pending > 0 && (c.peerShut & VsockShutdownFlags.RECEIVE) === 0 && c.credit > 0) {
      const n = Math.min(pending, c.credit, room, this.#maxPacket);
      let copied = 0;
      while (copied < n) {
        const b = c.tx[0]!;
        const take = Math.min(b.length - c.txOff, n - copied);
        chain.copyToWritable(ctx.memory, HDR + copied, b.subarray(c.txOff, c.txOff + take));
        copied += take;
        c.txOff += take;
        if (c.txOff === b.length) {
          c.tx.shift();
          c.txOff = 0;
        }
      }
      c.txCnt = (c.txCnt + n) >>> 0;
      this.stats.bytesToGuest += n;
      this.#header(c.localPort, c.peerPort, VsockOp.RW, n, 0, c);
      c.stream.sent(n);
      return n;
    }
    if (pending > 0 && (c.peerShut & VsockShutdownFlags.RECEIVE) === 0 && !c.creditRequested) {
      // §5.10.6.3: out of credit: ask the guest where it stands.
      c.creditRequested = true;
      this.#header(c.localPort, c.peerPort, VsockOp.CREDIT_REQUEST, 0, 0, c);
      return 0;
    }
    if (c.shutdown !== 0 && pending === 0) {
      const flags = c.shutdown;
      c.shutdown = 0;
      c.shutdownSent = true;
      this.#header(c.localPort, c.peerPort, VsockOp.SHUTDOWN, 0, flags, c);
      return 0;
    }
    c.sendCredit = false;
    this.#header(c.localPort, c.peerPort, VsockOp.CREDIT_UPDATE, 0, 0, c);
    return 0;
  }

  /** Fill the outgoing header (credit fields from `c`, or 0 for an RST to no connection). */
  #header(
    local: number,
    peer: number,
    op: number,
    len: number,
    flags: number,
    c: Conn | undefined,
  ): void {
    const v = this.#ov;
    v.setUint32(VsockHdr.SRC_CID, VsockCid.HOST, true);
    v.setUint32(VsockHdr.SRC_CID + 4, 0, true);
    v.setUint32(VsockHdr.DST_CID, this.#guestCid, true);
    v.setUint32(VsockHdr.DST_CID + 4, 0, true);
    v.setUint32(VsockHdr.SRC_PORT, local, true);
    v.setUint32(VsockHdr.DST_PORT, peer, true);
    v.setUint32(VsockHdr.LEN, len, true);
    v.setUint16(VsockHdr.TYPE, VsockType.STREAM, true);
    v.setUint16(VsockHdr.OP, op, true);
    v.setUint32(VsockHdr.FLAGS, flags, true);
    v.setUint32(VsockHdr.BUF_ALLOC, c === undefined ? 0 : this.bufferBytes, true);
    v.setUint32(VsockHdr.FWD_CNT, c === undefined ? 0 : c.fwdCnt, true);
    if (c !== undefined) {
      c.fwdSent = c.fwdCnt;
      c.sendCredit = false;
    }
  }

  #queueRst(local: number, peer: number): void {
    if (this.#rst.length >= 2 * MAX_PENDING_RST) {
      this.stats.rstDropped++;
      return;
    }
    this.#rst.push(local, peer);
  }

  // ---- event queue ----

  #deliverEvents(ctx: DeviceContext): void {
    if (!this.#eventPending) return;
    const q = ctx.queue(VsockQueue.EVENT);
    if (q === undefined) return;
    const chain = this.#evChain;
    while (this.#eventPending && q.pop(chain)) {
      if (chain.readableCount > 0 || chain.writableBytes < VsockEvent.SIZE) {
        this.#fault(
          ctx,
          chain.readableCount > 0 ? "vsock-readable-in-rx" : "vsock-short-buffer",
          VsockQueue.EVENT,
          chain.writableBytes,
        );
        q.push(chain.head, 0);
        continue;
      }
      const ev = new Uint8Array(VsockEvent.SIZE);
      new DataView(ev.buffer).setUint32(VsockEvent.ID, VsockEventId.TRANSPORT_RESET, true);
      chain.copyToWritable(ctx.memory, 0, ev);
      q.push(chain.head, VsockEvent.SIZE);
      this.#eventPending = false;
      this.stats.transportResets++;
      ctx.signalUsed(VsockQueue.EVENT);
    }
  }

  // ---- host side ----

  #write(s: VsockStream, data: Uint8Array): void {
    const c = this.#find(s.localPort, s.remotePort);
    if (c === undefined || c.stream !== s) return;
    c.tx.push(data);
    this.#schedule(c);
    this.#kickPump();
  }

  #end(s: VsockStream): void {
    const c = this.#find(s.localPort, s.remotePort);
    if (c === undefined || c.stream !== s) return;
    // Half-close; if the guest already closed its sending side, close both (Linux then RSTs).
    c.shutdown =
      VsockShutdownFlags.SEND |
      ((c.peerShut & VsockShutdownFlags.SEND) !== 0 ? VsockShutdownFlags.RECEIVE : 0);
    if (c.timer === undefined) {
      c.timer = setTimer(() => {
        c.timer = undefined;
        if (this.#find(c.localPort, c.peerPort) !== c) return;
        // No RST within the time: close it ourselves (§5.10.6.5).
        this.#forget(c);
        c.sendRst = true;
        this.#schedule(c);
        c.stream.closed();
        this.#kickPump();
      }, CLOSE_TIMEOUT_MS);
    }
    this.#schedule(c);
    this.#kickPump();
  }

  #destroy(s: VsockStream): void {
    const c = this.#find(s.localPort, s.remotePort);
    if (c === undefined || c.stream !== s) return;
    this.#forget(c);
    c.sendRst = true;
    this.#schedule(c);
    s.closed();
    this.#kickPump();
  }

  #consumed(s: VsockStream, n: number): void {
    const c = this.#find(s.localPort, s.remotePort);
    if (c === undefined || c.stream !== s) return;
    c.fwdCnt = (c.fwdCnt + n) >>> 0;
    // Tell the guest about the room freed once it is worth a packet (a quarter of the buffer),
    // so a sender waiting for credit never waits forever.
    if ((c.fwdCnt - c.fwdSent) >>> 0 >= this.bufferBytes / 4) {
      c.sendCredit = true;
      this.#schedule(c);
      this.#kickPump();
    }
  }

  // ---- connection table ----

  #find(local: number, peer: number): Conn | undefined {
    return this.#conns.get(local)?.get(peer);
  }

  #add(local: number, peer: number, stream: VsockStream): Conn {
    const c = new Conn(local, peer, stream);
    let m = this.#conns.get(local);
    if (m === undefined) {
      m = new Map();
      this.#conns.set(local, m);
    }
    m.set(peer, c);
    this.#count++;
    return c;
  }

  /** Remove `c` from the table (its pending packets may still go out). */
  #forget(c: Conn): void {
    const m = this.#conns.get(c.localPort);
    if (m?.get(c.peerPort) !== c) return;
    m.delete(c.peerPort);
    if (m.size === 0) this.#conns.delete(c.localPort);
    this.#count--;
    if (c.timer !== undefined) clearTimer(c.timer);
    c.timer = undefined;
    c.sendRequest = false;
    c.sendResponse = false;
    c.sendCredit = false;
    c.shutdown = 0;
    c.tx.length = 0;
  }

  /** Reset `c` (RST to the guest) and fail its stream. */
  #reset(c: Conn, why: string): void {
    this.#forget(c);
    c.sendRst = true;
    this.#schedule(c);
    c.stream.fail(new VsockError("ECONNRESET", `the guest sent ${why}`, c.localPort, c.peerPort));
  }

  #dropAll(why: string): void {
    const all: Conn[] = [];
    for (const m of this.#conns.values()) for (const c of m.values()) all.push(c);
    for (const c of all) this.#forget(c);
    this.#ready.length = 0;
    for (const c of all) {
      c.ready = false;
      c.sendRst = false;
      c.stream.fail(new VsockError("ERR_VSOCK_RESET", why, c.localPort, c.peerPort));
    }
  }

  #pendingBytes(c: Conn): number {
    let n = -c.txOff;
    for (const b of c.tx) n += b.length;
    return n;
  }

  #ephemeral(peer: number): number {
    for (let i = 0; i < 0x10000; i++) {
      const p = this.#nextPort;
      this.#nextPort = p >= 0xfffffffe ? EPHEMERAL_FIRST : p + 1;
      if (!this.#servers.has(p) && this.#find(p, peer) === undefined) return p;
    }
    throw new RangeError("no free host port");
  }

  #fault(ctx: DeviceContext, code: VsockFaultCode, queue: number, value: number): void {
    this.stats.malformed++;
    ctx.noteFault(new VsockFault(code, queue, value));
  }
}

/** A host listener of a vsock stream or server threw (reported through `ctx.noteFault`). */
export class VsockListenerError extends VirtioError {
  /** Always "vsock-listener-threw". */
  readonly code = "vsock-listener-threw";

  /** @param cause - what the listener threw */
  constructor(cause: unknown) {
    super(`a vsock listener threw: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
}

interface TimerGlobals {
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

/** `globalThis.setTimeout` (Node and browsers; the package keeps their types out). */
function setTimer(fn: () => void, ms: number): unknown {
  const set = (globalThis as TimerGlobals).setTimeout;
  if (set === undefined) throw new TypeError("globalThis.setTimeout is missing");
  return set(fn, ms);
}

function clearTimer(handle: unknown): void {
  (globalThis as TimerGlobals).clearTimeout?.(handle);
}

function checkCid(cid: unknown, name: string): number {
  if (
    typeof cid !== "number" ||
    !Number.isInteger(cid) ||
    cid <= VsockCid.HOST ||
    cid >= VsockCid.ANY
  ) {
    throw new RangeError(`${name} must be an integer in [3, 0xfffffffe], got ${String(cid)}`);
  }
  return cid;
}

function intOption(
  name: string,
  v: number | undefined,
  dflt: number,
  min: number,
  max: number,
): number {
  const x = v ?? dflt;
  if (!Number.isInteger(x) || x < min || x > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${x}`);
  }
  return x;
}
