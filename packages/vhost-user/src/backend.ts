/**
 * The vhost-user **back-end** side (QEMU `docs/interop/vhost-user.rst`): a unix-socket server
 * that serves an unchanged virtio-ts `DeviceModel` (the very `BlkDevice` the VMM hosts
 * in-process) to a front-end such as QEMU's `vhost-user-blk-pci`. Each connection is a
 * `Session` (`session.ts`) over the front-end's memory as `MemoryTable` (`memory-table.ts`)
 * maps it.
 * @module
 */
import { rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { BlkConfig, BlkFeature, DeviceId, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import { type DeviceModel, RateLimitedLog } from "@virtio-ts/transport";
import { VhostUserBackendError, type VhostUserError } from "./errors.js";
import { MapBudget, type MapPolicy, type UnsealedMemoryPolicy } from "./memory-table.js";
import { requestName, VHOST_USER_F_PROTOCOL_FEATURES } from "./messages.js";
import { loadNative } from "./native.js";
import { Session, type SessionHost, VHOST_USER_BACKEND_PROTOCOL_FEATURES } from "./session.js";

const PF_BIT = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
/** Ring features this back-end cannot serve: RING_RESET (it needs RESET_VRING). */
const UNSERVED = featureMask(Feature.RING_RESET);
const TIB = 2 ** 40;

/** Options of a {@link VhostUserBackend}. */
export interface VhostUserBackendOptions {
  /** GET_VRING_BASE waits at most this long for in-flight requests (default 5000 ms). */
  readonly drainTimeoutMs?: number;
  /**
   * Called when a connection closes: `error` says why (undefined for an orderly hang-up by
   * the front-end). Default: `console.warn` for errors.
   */
  readonly onConnectionClose?: (error: VhostUserError | undefined) => void;
  /** Where guest faults and model failures are reported (rate-limited: 10 a minute, then a count). Default: `console.warn`. */
  readonly log?: (message: string) => void;
  /**
   * Connections served at once (default 16); one more is accepted and closed at once, and
   * counted in `stats.refused`. A front-end needs one per device (QEMU reconnecting briefly
   * holds two).
   */
  readonly maxConnections?: number;
  /**
   * Bytes of front-end memory mapped at once, across every connection (default 2 TiB of the
   * 128 TiB of x86-64 user address space). A mapping that would pass it closes its connection
   * with reason "limit". Mapped bytes are given back when a connection closes and its device is
   * idle, or when the garbage collector frees them.
   */
  readonly maxMappedBytes?: number;
  /**
   * Memory regions per connection (default 32): GET_MAX_MEM_SLOTS answers it, ADD_MEM_REG and
   * SET_MEM_TABLE (at most 8 by its layout) past it close the connection.
   */
  readonly maxMemorySlots?: number;
  /**
   * A connection that has not sent SET_OWNER after this long is closed with reason "limit"
   * (default 10 000 ms; 0 waits forever). QEMU sends it at once.
   */
  readonly handshakeTimeoutMs?: number;
  /**
   * What to do with a memory fd the front-end could shrink under our mapping (see
   * {@link UnsealedMemoryPolicy}); default "guard". Sealed memfds (QEMU's default) and memfds
   * that accept F_SEAL_SHRINK are mapped without a guard either way.
   */
  readonly unsealedMemory?: UnsealedMemoryPolicy;
  /**
   * Protocol features offered (default {@link VHOST_USER_BACKEND_PROTOCOL_FEATURES}; must be a
   * subset of it). Clearing CONFIGURE_MEM_SLOTS, say, makes QEMU send SET_MEM_TABLE instead.
   */
  readonly protocolFeatures?: bigint;
}

/** Counters of a {@link VhostUserBackend} (a live view: read it at any time). */
export interface VhostUserBackendStats {
  /** Connections open now. */
  readonly connections: number;
  /** Connections accepted since the back-end started. */
  readonly accepted: number;
  /** Connections closed at once because `maxConnections` were open. */
  readonly refused: number;
  /** Connections closed for sending no SET_OWNER within `handshakeTimeoutMs`. */
  readonly handshakeTimeouts: number;
  /** Connections closed with an error (a protocol violation, a limit, a memory fault). */
  readonly closedWithError: number;
  /** Bytes of front-end memory mapped now, across connections. */
  readonly mappedBytes: number;
  /** The most bytes mapped at once. */
  readonly mappedBytesPeak: number;
  /** Mappings refused by `maxMappedBytes`. */
  readonly mapRefusals: number;
  /** Mappings of fds sealed against shrinking (no guard needed). */
  readonly sealedMappings: number;
  /** Mappings behind the SIGBUS guard (fds that could not be sealed). */
  readonly guardedMappings: number;
  /** SIGBUS faults the guard caught (each closed its connection). */
  readonly memoryFaults: number;
  /** Requests received, by name (`SET_MEM_TABLE`: 1, ...). */
  readonly requests: Readonly<Record<string, number>>;
  /** Descriptor chains popped from each ring, across connections (index = ring index). */
  readonly chainsPerRing: readonly number[];
}

/**
 * A vhost-user back-end (QEMU docs/interop/vhost-user.rst, the back-end role) serving one
 * virtio-ts `DeviceModel` on a unix socket, e.g. for QEMU's `-device vhost-user-blk-pci`.
 *
 * Each connection is a session with its own SET_OWNER / features / memory table / vring state.
 * GET_FEATURES answers the model's features (without RING_RESET) plus VERSION_1 and
 * VHOST_USER_F_PROTOCOL_FEATURES (bit 30); the protocol features offered are
 * {@link VHOST_USER_BACKEND_PROTOCOL_FEATURES}. The message set, against vhost-user.rst:
 *
 * - session: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER, RESET_OWNER (disables
 *   the rings), RESET_DEVICE, GET_QUEUE_NUM (MQ), GET/SET_STATUS (STATUS; recorded only);
 * - memory: SET_MEM_TABLE, and with CONFIGURE_MEM_SLOTS GET_MAX_MEM_SLOTS, ADD_MEM_REG,
 *   REM_MEM_REG — every region's fd mapped MAP_SHARED at its `mmap_offset`, sealed against
 *   shrinking or mapped behind the SIGBUS guard (`unsealedMemory`); ring addresses from
 *   SET_VRING_ADDR are front-end user addresses, translated through the regions;
 * - rings: SET_VRING_NUM / ADDR / BASE / KICK / CALL / ERR / ENABLE and GET_VRING_BASE, split
 *   and packed (for packed rings the base carries both positions and wrap counters, as QEMU
 *   encodes them); a ring runs once it has its size, addresses and kick fd (and, with protocol
 *   features, SET_VRING_ENABLE 1); GET_VRING_BASE stops it, waits for in-flight requests, and
 *   returns where it stands;
 * - configuration: GET_CONFIG, SET_CONFIG (flag 0: through the model's `writeConfig`; the
 *   migration flag is refused), and CONFIG_CHANGE_MSG on the back-end channel
 *   (SET_BACKEND_REQ_FD) when the model calls `notifyConfigChange`;
 * - reconnect: GET_INFLIGHT_FD / SET_INFLIGHT_FD (INFLIGHT_SHMFD) — split rings record every
 *   request in flight in a sealed memfd the front-end keeps, and a restarted back-end serves
 *   them again first (vhost-user.rst "Inflight I/O tracking").
 *
 * Not implemented (closed as "unsupported"): SET_LOG_BASE / SET_LOG_FD (dirty logging for
 * migration), SEND_RARP, NET_SET_MTU, IOTLB_MSG, SET_VRING_ENDIAN, crypto sessions, postcopy,
 * GPU_SET_SOCKET, VRING_KICK (in-band notifications), and any newer request.
 *
 * The front-end is untrusted: wrong sizes, wrong fd counts, non-eventfd kick/call fds,
 * overlapping or out-of-file regions, vring addresses outside every region, requests before
 * SET_OWNER or while a ring runs, unknown requests, a memory file shrunk under our mapping:
 * that connection is closed with a {@link VhostUserError} (often a
 * {@link VhostUserBackendError} with a `reason`), reported to `onConnectionClose`; other
 * connections go on. Only one connection at a time may run the device's rings ("busy"
 * otherwise). Global limits — connections, mapped bytes across connections, memory slots,
 * the handshake time — have safe defaults and are counted in {@link VhostUserBackend.stats}.
 */
export class VhostUserBackend {
  /** The socket path. */
  readonly path: string;
  /** The device model served. */
  readonly model: DeviceModel;
  /** Resolves once the socket listens; rejects if it cannot. */
  readonly listening: Promise<void>;
  /** GET_VRING_BASE drain bound (ms). */
  readonly drainTimeoutMs: number;
  /** Features GET_FEATURES answers. */
  readonly offeredFeatures: bigint;
  /** Protocol features GET_PROTOCOL_FEATURES answers. */
  readonly protocolFeatures: bigint;
  /** Connections served at once. */
  readonly maxConnections: number;
  /** Memory regions per connection. */
  readonly maxMemorySlots: number;
  /** SET_OWNER deadline of a new connection (ms; 0: none). */
  readonly handshakeTimeoutMs: number;
  readonly #server: Server;
  readonly #sessions = new Set<Session>();
  readonly #onClose: (error: VhostUserError | undefined) => void;
  readonly #log: (message: string) => void;
  readonly #faults: RateLimitedLog;
  readonly #budget: MapBudget;
  readonly #policy: MapPolicy;
  readonly #requests = new Map<number, number>();
  #pops: number[] = [];
  readonly #counts = { accepted: 0, refused: 0, handshakeTimeouts: 0, closedWithError: 0 };
  #owner: object | undefined = undefined;
  #closed = false;

  /**
   * Listen on `path` (a stale socket file there is removed first) and serve `model`.
   * @param model - the device model (not yet activated; this back-end activates it)
   * @param path - unix socket path (at most 107 bytes)
   * @param options - limits, drain timeout, close callback, log
   * @throws TypeError naming `model` or `path`; RangeError naming the bad option;
   *   NativeAddonMissingError if the addon is not built
   */
  constructor(model: DeviceModel, path: string, options: VhostUserBackendOptions = {}) {
    if (typeof model?.activate !== "function" || !Array.isArray(model.queueMaxSizes)) {
      throw new TypeError("model must be a DeviceModel");
    }
    if (typeof path !== "string" || path.length === 0 || Buffer.byteLength(path) > 107) {
      throw new TypeError(`path must be a unix socket path of 1 to 107 bytes, got ${String(path)}`);
    }
    const drain = options.drainTimeoutMs ?? 5000;
    if (!(drain > 0 && drain <= 3_600_000)) {
      throw new RangeError(`options.drainTimeoutMs must be in (0, 3600000], got ${drain}`);
    }
    this.maxConnections = intOption("options.maxConnections", options.maxConnections, 16, 1, 65536);
    const maxMapped = intOption(
      "options.maxMappedBytes",
      options.maxMappedBytes,
      2 * TIB,
      4096,
      Number.MAX_SAFE_INTEGER,
    );
    this.maxMemorySlots = intOption("options.maxMemorySlots", options.maxMemorySlots, 32, 1, 512);
    this.handshakeTimeoutMs = intOption(
      "options.handshakeTimeoutMs",
      options.handshakeTimeoutMs,
      10_000,
      0,
      3_600_000,
    );
    const unsealed = options.unsealedMemory ?? "guard";
    if (unsealed !== "guard" && unsealed !== "refuse") {
      throw new RangeError(`options.unsealedMemory must be "guard" or "refuse", got ${unsealed}`);
    }
    const pf = options.protocolFeatures ?? VHOST_USER_BACKEND_PROTOCOL_FEATURES;
    if (typeof pf !== "bigint" || (pf & ~VHOST_USER_BACKEND_PROTOCOL_FEATURES) !== 0n) {
      throw new RangeError(
        "options.protocolFeatures must be a subset of VHOST_USER_BACKEND_PROTOCOL_FEATURES",
      );
    }
    const native = loadNative();
    this.model = model;
    this.path = path;
    this.drainTimeoutMs = drain;
    this.protocolFeatures = pf;
    this.offeredFeatures =
      (this.servedFeatures(model.features) & ~UNSERVED) | featureMask(Feature.VERSION_1) | PF_BIT;
    this.#budget = new MapBudget(maxMapped);
    this.#policy = {
      native,
      budget: this.#budget,
      unsealed,
      counters: { sealed: 0, guarded: 0, faults: 0 },
    };
    this.#log = options.log ?? ((msg) => console.warn(msg));
    this.#faults = new RateLimitedLog({ sink: this.#log });
    this.#onClose =
      options.onConnectionClose ??
      ((e) => {
        if (e !== undefined) this.#log(`vhost-user: connection closed: ${e.message}`);
      });
    rmSync(path, { force: true });
    this.#server = createServer({ pauseOnConnect: true }, (s) => this.#accept(s));
    this.listening = new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(path, () => {
        this.#server.off("error", reject);
        this.#server.on("error", (e) => this.#log(`vhost-user: server error: ${e.message}`));
        resolve();
      });
    });
    this.listening.catch(() => {});
  }

  /**
   * The device features this back-end serves for a model offering `features` (before
   * VERSION_1 and bit 30 are added). Subclasses drop what their front-end emulates itself.
   * @param features - the model's features
   * @returns the features to offer
   */
  protected servedFeatures(features: bigint): bigint {
    return features;
  }

  /**
   * The features the model sees once the front-end acked `acked` (bit 30 removed).
   * Subclasses add what the front-end emulates for the model (a control queue).
   * @param acked - SET_FEATURES without bit 30
   * @returns the model's negotiated features
   */
  protected modelFeatures(acked: bigint): bigint {
    return acked;
  }

  /**
   * Whether ring `index` can be served at size `num` (the front-end chose it after reading the
   * configuration). Subclasses override it to refuse a size the configuration already promised more than.
   * @param index - ring index
   * @param num - ring size from SET_VRING_NUM
   * @returns undefined if fine, else why not (the connection is closed with that message)
   */
  protected ringSizeProblem(index: number, num: number): string | undefined {
    void index;
    void num;
    return undefined;
  }

  /** Number of open connections. */
  get connections(): number {
    return this.#sessions.size;
  }

  /** Counters: connections, limits, mappings, faults and requests (a fresh snapshot). */
  get stats(): VhostUserBackendStats {
    const requests: Record<string, number> = {};
    for (const [r, n] of this.#requests) requests[requestName(r)] = n;
    const c = this.#policy.counters;
    const chainsPerRing = this.model.queueMaxSizes.map((_, i) => this.#pops[i] ?? 0);
    for (const s of this.#sessions) {
      s.livePops().forEach((n, i) => {
        chainsPerRing[i] = (chainsPerRing[i] ?? 0) + n;
      });
    }
    return {
      connections: this.#sessions.size,
      ...this.#counts,
      mappedBytes: this.#budget.used,
      mappedBytesPeak: this.#budget.peak,
      mapRefusals: this.#budget.refusals,
      sealedMappings: c.sealed,
      guardedMappings: c.guarded,
      memoryFaults: c.faults,
      requests,
      chainsPerRing,
    };
  }

  /**
   * Serve an already connected AF_UNIX stream socket (a socketpair end, say).
   * @param fd - the socket, non-blocking; owned by the back-end from now on
   * @throws RangeError if the back-end is closed or `maxConnections` are open (the fd is then
   *   the caller's to close)
   */
  attach(fd: number): void {
    if (this.#closed) throw new RangeError("this back-end is closed");
    if (this.#sessions.size >= this.maxConnections) {
      this.#counts.refused++;
      throw new RangeError(`this back-end already serves ${this.maxConnections} connections`);
    }
    this.#counts.accepted++;
    const s = new Session(this.#host(), fd, this.model);
    if (s.closed) return;
    this.#sessions.add(s);
    if (this.handshakeTimeoutMs > 0) {
      const timer = setTimeout(() => {
        if (s.closed || s.owned) return;
        this.#counts.handshakeTimeouts++;
        s.close(
          new VhostUserBackendError(
            "limit",
            `no SET_OWNER within ${this.handshakeTimeoutMs} ms of connecting`,
          ),
        );
      }, this.handshakeTimeoutMs);
      timer.unref?.();
      this.#timers.set(s, timer);
    }
  }

  readonly #timers = new Map<Session, ReturnType<typeof setTimeout>>();

  #accept(socket: Socket): void {
    if (this.#sessions.size >= this.maxConnections || this.#closed) {
      // Over the limit: refuse before taking anything from the peer.
      if (!this.#closed) this.#counts.refused++;
      socket.destroy();
      return;
    }
    // libuv owns the accepted fd; take our own copy by passing it through a socketpair
    // (SCM_RIGHTS duplicates it), then let Node close its handle.
    const n = loadNative();
    const handleFd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let fd: number | undefined;
    if (typeof handleFd === "number" && handleFd >= 0) {
      let pair: [number, number] | undefined;
      try {
        pair = n.socketPair();
        n.sendMsg(pair[0], new Uint8Array(1), [handleFd]);
        const [, fds] = n.recvMsg(pair[1], new Uint8Array(1), 1);
        fd = fds[0];
        for (const extra of fds.slice(1)) n.closeFd(extra);
      } catch (e) {
        this.#log(`vhost-user: cannot take the accepted connection: ${(e as Error).message}`);
      } finally {
        if (pair !== undefined) {
          n.closeFd(pair[0]);
          n.closeFd(pair[1]);
        }
      }
    }
    socket.destroy();
    if (fd === undefined) return;
    try {
      this.attach(fd);
    } catch (e) {
      n.closeFd(fd);
      this.#log(`vhost-user: cannot serve the connection: ${(e as Error).message}`);
    }
  }

  #host(): SessionHost {
    const report = (message: string): void => {
      try {
        // Rate-limited: a hostile guest or front-end can cause a report per kick.
        this.#faults.log(message);
      } catch {
        // a throwing log must not break the event loop
      }
    };
    const release = (s: object): void => {
      if (this.#owner === s) this.#owner = undefined;
    };
    return {
      offeredFeatures: this.offeredFeatures,
      protocolFeatures: this.protocolFeatures,
      drainTimeoutMs: this.drainTimeoutMs,
      maxMemorySlots: this.maxMemorySlots,
      mapPolicy: this.#policy,
      ringSizeProblem: (index, num) => this.ringSizeProblem(index, num),
      modelFeatures: (acked) => this.modelFeatures(acked),
      countPops: (index, pops) => {
        this.#pops[index] = (this.#pops[index] ?? 0) + pops;
      },
      countRequest: (r) => {
        // Bounded: request ids are u32, but only those with a name get their own counter.
        const key = requestName(r).startsWith("request ") ? -1 : r;
        this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
      },
      // Only one connection at a time runs the model's rings.
      claim: (s) => {
        if (this.#owner !== undefined && this.#owner !== s) return false;
        this.#owner = s;
        return true;
      },
      release,
      sessionClosed: (s, error) => {
        this.#sessions.delete(s as Session);
        const timer = this.#timers.get(s as Session);
        if (timer !== undefined) clearTimeout(timer);
        this.#timers.delete(s as Session);
        release(s);
        if (error !== undefined) this.#counts.closedWithError++;
        try {
          this.#onClose(error);
        } catch (e) {
          report(`vhost-user: onConnectionClose threw: ${(e as Error)?.message}`);
        }
      },
      report,
    };
  }

  /**
   * Stop listening, close every connection (stopping their rings without draining) and remove
   * the socket file.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#sessions]) s.close();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
}

function intOption(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${v}`);
  }
  return v;
}

/**
 * {@link VhostUserBackend} for a virtio-blk model (`BlkDevice` over a `FileDisk`, say): the
 * back-end of QEMU's `-device vhost-user-blk-pci,chardev=c0 -chardev socket,id=c0,path=SOCK`.
 */
export class VhostUserBlkBackend extends VhostUserBackend {
  /**
   * @param model - a block device model (`deviceId` 2)
   * @param path - unix socket path
   * @param options - see {@link VhostUserBackendOptions}
   * @throws TypeError if the model is not a block device; otherwise as {@link VhostUserBackend}
   */
  constructor(model: DeviceModel, path: string, options: VhostUserBackendOptions = {}) {
    if (model?.deviceId !== DeviceId.BLOCK) {
      throw new TypeError(`model must be a block device (deviceId 2), got ${model?.deviceId}`);
    }
    super(model, path, options);
    this.#model = model;
  }

  readonly #model: DeviceModel;

  /**
   * A front-end's ring must hold the longest request the configuration allows: `seg_max` data
   * segments plus header and status (Linux trusts `seg_max`, and a longer chain than the ring
   * is a driver error the device refuses, VIRTIO 1.3 §2.7.5.3.1, which would stall the guest).
   * QEMU's vhost-user-blk picks the ring size itself (`queue-size`, default 128), so build the
   * `BlkDevice` with the same `queueSize` (its `seg_max` is `queueSize - 2`).
   */
  protected override ringSizeProblem(index: number, num: number): string | undefined {
    if (!hasFeature(this.#model.features, BlkFeature.SEG_MAX)) return undefined;
    const segMax = this.#model.readConfig(BlkConfig.SEG_MAX, 4);
    if (num >= segMax + 2) return undefined;
    return `ring ${index} has ${num} entries but the device's seg_max ${segMax} needs ${segMax + 2}: give the BlkDevice queueSize ${num} (or the front-end queue-size=${segMax + 2})`;
  }
}
