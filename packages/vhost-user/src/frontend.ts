/**
 * The vhost-user front-end: the side that owns the guest memory and the virtqueues and hands
 * them to a back-end process (QEMU's role in docs/interop/vhost-user.rst).
 * @module
 */
import { VhostUserConnection } from "./connection.js";
import { VhostUserError } from "./errors.js";
import {
  decodeConfig,
  decodeInflight,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeSingleMemoryRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  type InflightDescription,
  type MemoryRegion,
  requestName,
  VHOST_MEMORY_MAX_REGIONS,
  VHOST_USER_MAX_CONFIG_SIZE,
  VhostUserFlag,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
  type VringAddr,
} from "./messages.js";
import { loadNative } from "./native.js";

/** Options of a {@link VhostUserFrontend}. */
export interface VhostUserFrontendOptions {
  /**
   * Milliseconds to wait for each reply before closing the connection with "timeout" (default
   * 30 000; 0 waits forever). A back-end that never answers cannot hang the caller.
   */
  readonly replyTimeoutMs?: number;
}

/** A memory region to send with SET_MEM_TABLE, with the fd it is mapped from. */
export interface MemoryRegionWithFd extends MemoryRegion {
  /** The fd the back-end maps (`mmapOffset` into it). */
  readonly fd: number;
}

/** The in-flight area a back-end handed out with GET_INFLIGHT_FD. */
export interface InflightArea {
  /** The area's memfd (the caller's to keep and close). */
  readonly fd: number;
  /** Its description, to send back with SET_INFLIGHT_FD. */
  readonly inflight: InflightDescription;
}

interface Pending {
  readonly request: number;
  /** "reply": the message has a reply body; "ack": a REPLY_ACK u64 status. */
  readonly kind: "reply" | "ack";
  /** Fds the reply must carry (GET_INFLIGHT_FD: 1; every other reply: 0). */
  readonly fds: number;
  /** Decodes the payload; owns `fds` (closes them if it throws). */
  readonly decode: (payload: Uint8Array, fds: readonly number[]) => unknown;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: VhostUserError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

const REPLY_FLAGS = VhostUserFlag.VERSION | VhostUserFlag.REPLY;

/**
 * A vhost-user front-end connection. Each method sends one request (vhost-user.rst "Front-end
 * message types") and resolves when it is done: with the reply's content for requests that
 * have one (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG, GET_VRING_BASE),
 * and for the others at once, or, once PROTOCOL_F_REPLY_ACK is negotiated, when the back-end
 * acknowledges (NEED_REPLY; a non-zero status rejects with {@link VhostUserError} "nack").
 *
 * Requests may be issued without awaiting the previous one: they are sent in call order and
 * replies are matched in that order (the back-end answers in order). Sending is synchronous,
 * so the order of calls is the order on the wire.
 *
 * The back-end is untrusted: a reply to a request that expects none, to a different request,
 * with flags other than VERSION|REPLY, with fds, or of the wrong size, closes this connection
 * with a {@link VhostUserError}, and every request still waiting is rejected with it.
 */
export class VhostUserFrontend {
  readonly #conn: VhostUserConnection;
  readonly #timeout: number;
  readonly #pending: Pending[] = [];
  readonly #closeListeners: ((e: VhostUserError | undefined) => void)[] = [];
  #protocolFeatures = 0n;
  #closeReason: VhostUserError | undefined;
  #closed = false;

  private constructor(
    open: (h: ConstructorParameters<typeof VhostUserConnection>[1]) => VhostUserConnection,
    options: VhostUserFrontendOptions,
  ) {
    const t = options.replyTimeoutMs ?? 30_000;
    if (!Number.isInteger(t) || t < 0 || t > 0x7fffffff) {
      throw new RangeError(`options.replyTimeoutMs must be a non-negative integer, got ${t}`);
    }
    this.#timeout = t;
    this.#conn = open({
      onMessage: (m) => this.#onMessage(m),
      onClose: (e) => this.#onClose(e),
    });
  }

  /**
   * Connect to a back-end listening on a unix socket (qemu-storage-daemon's
   * `addr.type=unix,addr.path=…`).
   * @param path - socket path
   * @param options - reply timeout
   * @returns the front-end (nothing has been sent yet)
   * @throws TypeError naming `path`; RangeError naming an option; Error "E<errno>" if the
   *   connect fails; NativeAddonMissingError if the addon is not built
   */
  static connect(path: string, options: VhostUserFrontendOptions = {}): VhostUserFrontend {
    return new VhostUserFrontend((h) => VhostUserConnection.connect(path, h), options);
  }

  /**
   * Use an already connected AF_UNIX stream socket (one end of a socketpair, an fd handed over
   * by a management process). The front-end owns it from now on.
   * @param fd - the socket
   * @param options - reply timeout
   * @returns the front-end
   * @throws RangeError naming `fd` or an option
   */
  static fromFd(fd: number, options: VhostUserFrontendOptions = {}): VhostUserFrontend {
    return new VhostUserFrontend((h) => new VhostUserConnection(fd, h), options);
  }

  /** Whether the connection is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Why the connection closed (undefined while open, or after an orderly {@link VhostUserFrontend.close}). */
  get closeReason(): VhostUserError | undefined {
    return this.#closeReason;
  }

  /** The protocol features set with {@link VhostUserFrontend.setProtocolFeatures} (0 before). */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  /**
   * Call `listener(error)` when the connection closes (at once if it already has).
   * @param listener - receives the reason, undefined for an orderly close
   */
  onClose(listener: (error: VhostUserError | undefined) => void): void {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    if (this.#closed) listener(this.#closeReason);
    else this.#closeListeners.push(listener);
  }

  /**
   * Close the connection (idempotent); requests still waiting are rejected with "closed".
   */
  close(): void {
    this.#conn.close();
  }

  /**
   * VHOST_USER_GET_FEATURES (1).
   * @returns the device features (bit 30: VHOST_USER_F_PROTOCOL_FEATURES)
   */
  getFeatures(): Promise<bigint> {
    return this.#call(VhostUserRequest.GET_FEATURES, undefined, [], (p) =>
      decodeU64(p, VhostUserRequest.GET_FEATURES),
    );
  }

  /**
   * VHOST_USER_SET_FEATURES (2).
   * @param features - the accepted features (with bit 30 when protocol features are in use)
   */
  setFeatures(features: bigint): Promise<void> {
    return this.#post(VhostUserRequest.SET_FEATURES, encodeU64(features));
  }

  /** VHOST_USER_SET_OWNER (3): this front-end owns the session. */
  setOwner(): Promise<void> {
    return this.#post(VhostUserRequest.SET_OWNER);
  }

  /**
   * VHOST_USER_GET_PROTOCOL_FEATURES (15); only legal if GET_FEATURES offered bit 30.
   * @returns the protocol features ({@link VhostUserProtocolFeature} bits)
   */
  getProtocolFeatures(): Promise<bigint> {
    return this.#call(VhostUserRequest.GET_PROTOCOL_FEATURES, undefined, [], (p) =>
      decodeU64(p, VhostUserRequest.GET_PROTOCOL_FEATURES),
    );
  }

  /**
   * VHOST_USER_SET_PROTOCOL_FEATURES (16). From the next request on, REPLY_ACK (if in
   * `features`) makes every request without a reply body wait for the back-end's status.
   * @param features - a subset of the offered protocol features
   */
  setProtocolFeatures(features: bigint): Promise<void> {
    const p = this.#post(VhostUserRequest.SET_PROTOCOL_FEATURES, encodeU64(features));
    this.#protocolFeatures = features;
    return p;
  }

  /**
   * VHOST_USER_GET_QUEUE_NUM (17), with PROTOCOL_F_MQ.
   * @returns the number of queues the back-end supports (1 to 65535; anything else closes the
   *   connection with "bad-reply")
   */
  getQueueNum(): Promise<number> {
    return this.#call(VhostUserRequest.GET_QUEUE_NUM, undefined, [], (p) => {
      const n = decodeU64(p, VhostUserRequest.GET_QUEUE_NUM);
      if (n < 1n || n > 0xffffn) {
        throw new VhostUserError(
          "bad-reply",
          `GET_QUEUE_NUM reported ${n} queues`,
          VhostUserRequest.GET_QUEUE_NUM,
          Number(n > 0xffffffffn ? 0xffffffffn : n),
        );
      }
      return Number(n);
    });
  }

  /**
   * VHOST_USER_GET_CONFIG (24), with PROTOCOL_F_CONFIG: read `size` bytes of the device
   * configuration space at `offset`. The reply must have exactly that size; an empty reply is
   * the back-end's error indication and rejects with "nack" (the connection stays open).
   * @param offset - offset in the configuration space
   * @param size - bytes, 1 to 256
   * @param flags - 0 (the default) or 1 (live migration)
   * @returns the bytes
   * @throws RangeError naming `size`
   */
  getConfig(offset: number, size: number, flags = 0): Promise<Uint8Array> {
    if (!Number.isInteger(size) || size < 1 || size > VHOST_USER_MAX_CONFIG_SIZE) {
      throw new RangeError(`size must be an integer in [1, 256], got ${size}`);
    }
    const req = encodeConfig({ offset, flags, data: new Uint8Array(size) });
    return this.#call(VhostUserRequest.GET_CONFIG, req, [], (p) => {
      const c = decodeConfig(p, VhostUserRequest.GET_CONFIG);
      if (c.data.length === 0) {
        throw new VhostUserError(
          "nack",
          "GET_CONFIG failed: the back-end replied with an empty config (its error indication)",
          VhostUserRequest.GET_CONFIG,
        );
      }
      if (c.data.length !== size) {
        throw new VhostUserError(
          "bad-size",
          `GET_CONFIG reply has ${c.data.length} bytes, ${size} were asked for`,
          VhostUserRequest.GET_CONFIG,
          c.data.length,
        );
      }
      return c.data;
    });
  }

  /**
   * VHOST_USER_SET_CONFIG (25), with PROTOCOL_F_CONFIG: write `data` into the device
   * configuration space at `offset`. With REPLY_ACK a refusal rejects with "nack".
   * @param offset - offset in the configuration space
   * @param data - the bytes, 1 to 256
   * @param flags - 0 (the default: a field the driver wrote) or 1 (live migration)
   * @throws RangeError naming `data`
   */
  setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    if (
      !(data instanceof Uint8Array) ||
      data.length < 1 ||
      data.length > VHOST_USER_MAX_CONFIG_SIZE
    ) {
      throw new RangeError("data must be a Uint8Array of 1 to 256 bytes");
    }
    return this.#post(VhostUserRequest.SET_CONFIG, encodeConfig({ offset, flags, data }));
  }

  /**
   * VHOST_USER_SET_MEM_TABLE (5): the guest memory regions, each with its fd in SCM_RIGHTS
   * (in region order).
   * @param regions - 1 to 8 regions
   * @throws RangeError naming `regions` or a field
   */
  setMemTable(regions: readonly MemoryRegionWithFd[]): Promise<void> {
    if (
      !Array.isArray(regions) ||
      regions.length < 1 ||
      regions.length > VHOST_MEMORY_MAX_REGIONS
    ) {
      throw new RangeError(`regions must hold 1 to ${VHOST_MEMORY_MAX_REGIONS} regions`);
    }
    const payload = encodeMemoryTable(regions);
    return this.#post(
      VhostUserRequest.SET_MEM_TABLE,
      payload,
      regions.map((r) => r.fd),
    );
  }

  /**
   * VHOST_USER_SET_VRING_NUM (8): the queue size.
   * @param index - ring index
   * @param num - queue size
   */
  setVringNum(index: number, num: number): Promise<void> {
    return this.#post(VhostUserRequest.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  /**
   * VHOST_USER_SET_VRING_ADDR (9): ring addresses as user (front-end virtual) addresses.
   * @param addr - the description
   */
  setVringAddr(addr: VringAddr): Promise<void> {
    return this.#post(VhostUserRequest.SET_VRING_ADDR, encodeVringAddr(addr));
  }

  /**
   * VHOST_USER_SET_VRING_BASE (10): the next available index the back-end will read.
   * @param index - ring index
   * @param num - available index
   */
  setVringBase(index: number, num: number): Promise<void> {
    return this.#post(VhostUserRequest.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  /**
   * VHOST_USER_GET_VRING_BASE (11): stops the ring and returns its next available index. A
   * reply for another ring closes the connection with "bad-reply".
   * @param index - ring index
   * @returns the available index
   */
  getVringBase(index: number): Promise<number> {
    const req = encodeVringState({ index, num: 0 });
    return this.#call(VhostUserRequest.GET_VRING_BASE, req, [], (p) => {
      const s = decodeVringState(p, VhostUserRequest.GET_VRING_BASE);
      if (s.index !== index) {
        throw new VhostUserError(
          "bad-reply",
          `GET_VRING_BASE for ring ${index} answered for ring ${s.index}`,
          VhostUserRequest.GET_VRING_BASE,
          s.index,
        );
      }
      return s.num;
    });
  }

  /**
   * VHOST_USER_SET_VRING_KICK (12): the eventfd the front-end writes to notify the ring.
   * @param index - ring index (0–255)
   * @param fd - the eventfd, or undefined for "no fd" (bit 8: the back-end polls)
   */
  setVringKick(index: number, fd: number | undefined): Promise<void> {
    return this.#post(
      VhostUserRequest.SET_VRING_KICK,
      encodeVringFd(index, fd === undefined),
      fd === undefined ? [] : [fd],
    );
  }

  /**
   * VHOST_USER_SET_VRING_CALL (13): the eventfd the back-end writes after using buffers.
   * @param index - ring index (0–255)
   * @param fd - the eventfd, or undefined for "no fd" (the front-end polls)
   */
  setVringCall(index: number, fd: number | undefined): Promise<void> {
    return this.#post(
      VhostUserRequest.SET_VRING_CALL,
      encodeVringFd(index, fd === undefined),
      fd === undefined ? [] : [fd],
    );
  }

  /**
   * VHOST_USER_SET_VRING_ENABLE (18); only with VHOST_USER_F_PROTOCOL_FEATURES negotiated.
   * @param index - ring index
   * @param enable - enable (1) or disable (0)
   */
  setVringEnable(index: number, enable: boolean): Promise<void> {
    return this.#post(
      VhostUserRequest.SET_VRING_ENABLE,
      encodeVringState({ index, num: enable ? 1 : 0 }),
    );
  }

  /**
   * VHOST_USER_SET_BACKEND_REQ_FD (21), with PROTOCOL_F_BACKEND_REQ: the socket the back-end
   * sends its own requests on (CONFIG_CHANGE_MSG…). The back-end gets its own copy of `fd`.
   * @param fd - one end of a socketpair; read the other end (`VhostUserConnection`)
   */
  setBackendReqFd(fd: number): Promise<void> {
    return this.#post(VhostUserRequest.SET_BACKEND_REQ_FD, undefined, [fd]);
  }

  /**
   * VHOST_USER_GET_INFLIGHT_FD (31), with PROTOCOL_F_INFLIGHT_SHMFD: the back-end allocates
   * the area that tracks requests in flight for `numQueues` queues of `queueSize` and returns
   * it. Keep the fd and hand it to the next back-end with {@link VhostUserFrontend.setInflightFd}.
   * @param numQueues - queues to track (1–65535)
   * @param queueSize - their size (1–32768)
   * @returns the area's fd (now the caller's to close) and description
   */
  getInflightFd(numQueues: number, queueSize: number): Promise<InflightArea> {
    const req = encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize });
    return this.#call(
      VhostUserRequest.GET_INFLIGHT_FD,
      req,
      [],
      (p, fds) => {
        const inflight = decodeInflight(p, VhostUserRequest.GET_INFLIGHT_FD);
        if (inflight.mmapSize === 0n || fds.length !== 1) {
          throw new VhostUserError(
            "bad-reply",
            "GET_INFLIGHT_FD: the back-end returned no area",
            VhostUserRequest.GET_INFLIGHT_FD,
          );
        }
        return { fd: fds[0]!, inflight };
      },
      1,
    );
  }

  /**
   * VHOST_USER_SET_INFLIGHT_FD (32): hand the in-flight area back (to a restarted back-end,
   * which serves again the requests it records). The back-end gets its own copy of `fd`.
   * @param fd - the area's fd from {@link VhostUserFrontend.getInflightFd}
   * @param inflight - its description, as returned
   */
  setInflightFd(fd: number, inflight: InflightDescription): Promise<void> {
    return this.#post(VhostUserRequest.SET_INFLIGHT_FD, encodeInflight(inflight), [fd]);
  }

  /**
   * VHOST_USER_GET_MAX_MEM_SLOTS (36), with PROTOCOL_F_CONFIGURE_MEM_SLOTS.
   * @returns the most memory regions the back-end maps
   */
  getMaxMemSlots(): Promise<bigint> {
    return this.#call(VhostUserRequest.GET_MAX_MEM_SLOTS, undefined, [], (p) =>
      decodeU64(p, VhostUserRequest.GET_MAX_MEM_SLOTS),
    );
  }

  /**
   * VHOST_USER_ADD_MEM_REG (37): map one more region.
   * @param region - the region and its fd (the back-end gets its own copy)
   */
  addMemReg(region: MemoryRegionWithFd): Promise<void> {
    return this.#post(VhostUserRequest.ADD_MEM_REG, encodeSingleMemoryRegion(region), [region.fd]);
  }

  /**
   * VHOST_USER_REM_MEM_REG (38): unmap the region with this guest address, user address and
   * size.
   * @param region - the region (its mmap offset is ignored)
   */
  remMemReg(region: MemoryRegion): Promise<void> {
    return this.#post(VhostUserRequest.REM_MEM_REG, encodeSingleMemoryRegion(region));
  }

  /**
   * VHOST_USER_SET_STATUS (39), with PROTOCOL_F_STATUS.
   * @param status - the device status byte (§2.1)
   */
  setStatus(status: number): Promise<void> {
    if (!Number.isInteger(status) || status < 0 || status > 0xff) {
      throw new RangeError(`status must be a byte, got ${status}`);
    }
    return this.#post(VhostUserRequest.SET_STATUS, encodeU64(BigInt(status)));
  }

  /**
   * VHOST_USER_GET_STATUS (40), with PROTOCOL_F_STATUS.
   * @returns the device status byte
   */
  getStatus(): Promise<number> {
    return this.#call(VhostUserRequest.GET_STATUS, undefined, [], (p) => {
      const v = decodeU64(p, VhostUserRequest.GET_STATUS);
      if (v > 0xffn) {
        throw new VhostUserError("bad-reply", `GET_STATUS answered 0x${v.toString(16)}`, 40);
      }
      return Number(v);
    });
  }

  /** VHOST_USER_RESET_DEVICE (34), with PROTOCOL_F_RESET_DEVICE: rings stop, state resets. */
  resetDevice(): Promise<void> {
    return this.#post(VhostUserRequest.RESET_DEVICE);
  }

  /** A request without a reply body: REPLY_ACK when negotiated, else done once sent. */
  #post(request: number, payload?: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const ack =
      (this.#protocolFeatures & (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK))) !== 0n;
    if (!ack) {
      if (this.#closed) return Promise.reject(this.#closedError(request));
      return this.#conn.send(request, 0, payload, fds)
        ? Promise.resolve()
        : Promise.reject(this.#closedError(request));
    }
    return this.#enqueue(request, VhostUserFlag.NEED_REPLY, payload, fds, "ack", (p) => {
      const status = decodeU64(p, request);
      if (status !== 0n) {
        throw new VhostUserError(
          "nack",
          `${requestName(request)} failed: the back-end replied with status ${status}`,
          request,
          Number(status > 0xffffffffn ? 0xffffffffn : status),
        );
      }
      return undefined;
    }) as Promise<void>;
  }

  /** A request with a reply body. */
  #call<T>(
    request: number,
    payload: Uint8Array | undefined,
    fds: readonly number[],
    decode: (p: Uint8Array, fds: readonly number[]) => T,
    replyFds = 0,
  ): Promise<T> {
    return this.#enqueue(request, 0, payload, fds, "reply", decode, replyFds) as Promise<T>;
  }

  #enqueue(
    request: number,
    flags: number,
    payload: Uint8Array | undefined,
    fds: readonly number[],
    kind: Pending["kind"],
    decode: (p: Uint8Array, fds: readonly number[]) => unknown,
    replyFds = 0,
  ): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closedError(request));
    return new Promise((resolve, reject) => {
      const entry: Pending = {
        request,
        kind,
        fds: replyFds,
        decode,
        resolve,
        reject,
        timer: undefined,
      };
      this.#pending.push(entry);
      if (!this.#conn.send(request, flags, payload, fds)) return; // rejected by #onClose
      if (this.#timeout > 0) {
        entry.timer = setTimeout(() => {
          this.#conn.close(
            new VhostUserError(
              "timeout",
              `no reply to ${requestName(request)} within ${this.#timeout} ms`,
              request,
            ),
          );
        }, this.#timeout);
        entry.timer.unref?.();
      }
    });
  }

  #closedError(request: number): VhostUserError {
    return (
      this.#closeReason ??
      new VhostUserError("closed", `the connection is closed (${requestName(request)})`, request)
    );
  }

  #onMessage(m: VhostUserMessage): void {
    const head = this.#pending.shift();
    const fail = (e: VhostUserError): void => {
      if (head !== undefined) {
        clearTimeout(head.timer);
        head.reject(e);
      }
      this.#conn.close(e);
    };
    const wantFds = head?.request === m.request ? head.fds : 0;
    if (m.fds.length !== wantFds && (m.fds.length > 0 || m.payload.length > 0)) {
      // Only the GET_INFLIGHT_FD reply carries an fd: close stray ones, and the connection.
      // (A reply without its fd but with a payload is refused too; an empty one is the
      // back-end's way to say it failed, handled by the decoder.)
      this.#closeFds(m.fds);
      fail(
        new VhostUserError(
          "too-many-fds",
          `${requestName(m.request)} from the back-end carried ${m.fds.length} file descriptors, expected ${wantFds}`,
          m.request,
          m.fds.length,
        ),
      );
      return;
    }
    if (head === undefined) {
      this.#closeFds(m.fds);
      fail(
        new VhostUserError(
          "unexpected-message",
          `the back-end sent ${requestName(m.request)} while no reply was expected`,
          m.request,
        ),
      );
      return;
    }
    if (m.request !== head.request) {
      this.#closeFds(m.fds);
      fail(
        new VhostUserError(
          "unexpected-message",
          `expected a reply to ${requestName(head.request)}, got ${requestName(m.request)}`,
          m.request,
        ),
      );
      return;
    }
    if (m.flags !== REPLY_FLAGS) {
      // QEMU's own check (vhost_user_read_header): a reply's flags are exactly VERSION|REPLY.
      this.#closeFds(m.fds);
      fail(
        new VhostUserError(
          "bad-flags",
          `reply to ${requestName(m.request)} has flags 0x${m.flags.toString(16)}, expected 0x5`,
          m.request,
          m.flags,
        ),
      );
      return;
    }
    clearTimeout(head.timer);
    let value: unknown;
    try {
      value = head.decode(m.payload, m.fds);
    } catch (e) {
      this.#closeFds(m.fds);
      const err =
        e instanceof VhostUserError
          ? e
          : new VhostUserError("bad-reply", `${(e as Error).message}`, m.request);
      head.reject(err);
      // A refusal keeps the connection; anything malformed ends it.
      if (err.code !== "nack") this.#conn.close(err);
      return;
    }
    head.resolve(value);
  }

  #closeFds(fds: readonly number[]): void {
    // A delivered message's fds are ours; the addon is loaded (the connection exists).
    const n = loadNative();
    for (const fd of fds) {
      try {
        n.closeFd(fd);
      } catch {
        // EBADF: nothing to release.
      }
    }
  }

  #onClose(e: VhostUserError | undefined): void {
    this.#closed = true;
    this.#closeReason = e;
    const err = e ?? new VhostUserError("closed", "the connection was closed by this side");
    for (const p of this.#pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    for (const l of this.#closeListeners.splice(0)) l(e);
  }
}
