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
import type { VhostUserError } from "./errors.js";
import { VHOST_USER_F_PROTOCOL_FEATURES } from "./messages.js";
import { loadNative } from "./native.js";
import { Session, type SessionHost } from "./session.js";

const PF_BIT = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
/** Ring features this back-end cannot serve: packed rings, and RING_RESET (needs RESET_VRING). */
const UNSERVED = featureMask(Feature.RING_PACKED) | featureMask(Feature.RING_RESET);

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
}

/**
 * A vhost-user back-end (QEMU docs/interop/vhost-user.rst, the back-end role) serving one
 * virtio-ts `DeviceModel` on a unix socket, e.g. for QEMU's `-device vhost-user-blk-pci`.
 *
 * Each connection is a session with its own SET_OWNER / features / memory table / vring state.
 * GET_FEATURES answers the model's features (without packed rings and RING_RESET) plus
 * VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES (bit 30); protocol features MQ, REPLY_ACK and
 * CONFIG. GET_CONFIG reads the model's configuration space; SET_CONFIG is refused (status 1).
 * SET_MEM_TABLE maps every region's fd MAP_SHARED at its `mmap_offset`; ring addresses from
 * SET_VRING_ADDR are front-end user addresses, translated through the regions'
 * `userspace_addr` to guest-physical. A ring runs once it has its size, addresses and kick fd
 * (and, with protocol features, SET_VRING_ENABLE 1); GET_VRING_BASE stops it, waits for
 * in-flight requests, and returns the next available index.
 *
 * The front-end is untrusted: wrong sizes, wrong fd counts, non-eventfd kick/call fds,
 * overlapping or out-of-file regions, vring addresses outside every region, requests before
 * SET_OWNER or while a ring runs, unknown requests: that connection is closed with a
 * {@link VhostUserError} (often a {@link VhostUserBackendError} with a `reason`), reported to
 * `onConnectionClose`; other connections go on. Only one connection at a time may run the
 * device's rings ("busy" otherwise).
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
  readonly #server: Server;
  readonly #sessions = new Set<object>();
  readonly #onClose: (error: VhostUserError | undefined) => void;
  readonly #log: (message: string) => void;
  readonly #faults: RateLimitedLog;
  #owner: object | undefined = undefined;
  #closed = false;

  /**
   * Listen on `path` (a stale socket file there is removed first) and serve `model`.
   * @param model - the device model (not yet activated; this back-end activates it)
   * @param path - unix socket path (at most 107 bytes)
   * @param options - drain timeout, close callback, log
   * @throws TypeError naming `model` or `path`; RangeError naming `options.drainTimeoutMs`;
   *   NativeAddonMissingError if the addon is not built
   */
  /**
   * Whether ring `index` can be served at size `num` (the front-end chose it after reading the
   * configuration). Subclasses override it to refuse a size the configuration already promised more than.
   * @param index - ring index
   * @param num - ring size from SET_VRING_NUM
   * @returns undefined if fine, else why not (the connection is closed with that message)
   * @internal
   */
  ringSizeProblem(index: number, num: number): string | undefined {
    void index;
    void num;
    return undefined;
  }

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
    loadNative();
    this.model = model;
    this.path = path;
    this.drainTimeoutMs = drain;
    this.offeredFeatures = (model.features & ~UNSERVED) | featureMask(Feature.VERSION_1) | PF_BIT;
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

  /** Number of open connections. */
  get connections(): number {
    return this.#sessions.size;
  }

  /**
   * Serve an already connected AF_UNIX stream socket (a socketpair end, say).
   * @param fd - the socket, non-blocking; owned by the back-end from now on
   */
  attach(fd: number): void {
    if (this.#closed) throw new RangeError("this back-end is closed");
    const s = new Session(this.#host(), fd, this.model);
    if (!s.closed) this.#sessions.add(s);
  }

  #accept(socket: Socket): void {
    // libuv owns the accepted fd; take our own copy by passing it through a socketpair
    // (SCM_RIGHTS duplicates it), then let Node close its handle.
    const n = loadNative();
    const handleFd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let fd: number | undefined;
    if (typeof handleFd === "number" && handleFd >= 0 && !this.#closed) {
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
      drainTimeoutMs: this.drainTimeoutMs,
      ringSizeProblem: (index, num) => this.ringSizeProblem(index, num),
      // Only one connection at a time runs the model's rings.
      claim: (s) => {
        if (this.#owner !== undefined && this.#owner !== s) return false;
        this.#owner = s;
        return true;
      },
      release,
      sessionClosed: (s, error) => {
        this.#sessions.delete(s);
        release(s);
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
    for (const s of [...this.#sessions]) (s as Session).close();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
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
  override ringSizeProblem(index: number, num: number): string | undefined {
    if (!hasFeature(this.#model.features, BlkFeature.SEG_MAX)) return undefined;
    const segMax = this.#model.readConfig(BlkConfig.SEG_MAX, 4);
    if (num >= segMax + 2) return undefined;
    return `ring ${index} has ${num} entries but the device's seg_max ${segMax} needs ${segMax + 2}: give the BlkDevice queueSize ${num} (or the front-end queue-size=${segMax + 2})`;
  }
}
