/**
 * One vhost-user front-end connection as the back-end serves it (QEMU
 * `docs/interop/vhost-user.rst`): the message loop, the vring state SET_VRING_* sets, the
 * rings it runs over the front-end's memory (split or packed), in-flight tracking, the
 * back-end request channel, and the `DeviceContext` the model sees.
 * @module
 */
import { readlinkSync } from "node:fs";
import { type GuestMemory, type GuestMemoryMap, VirtioError } from "@virtio-ts/memory";
import { Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import {
  createDeviceQueue,
  type DeviceQueue,
  GatedDeviceQueue,
  type QueueLayout,
  type QueueState,
} from "@virtio-ts/virtqueue";
import { BackendChannel } from "./backend-channel.js";
import { VhostUserConnection } from "./connection.js";
import { VhostUserBackendError, VhostUserError } from "./errors.js";
import { InflightQueueRegion, InflightTrackingQueue, inflightQueueRegionSize } from "./inflight.js";
import { type MapPolicy, type Mapping, MemoryTable, mapMemoryFd } from "./memory-table.js";
import {
  decodeConfig,
  decodeInflight,
  decodeMemoryTable,
  decodeSingleMemoryRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeU64,
  encodeVringState,
  requestName,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserFlag,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "./messages.js";
import { FileSeal, loadNative, type NativeWatch, type VhostUserNative } from "./native.js";

const PF_BIT = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
const PF = VhostUserProtocolFeature;
const bit = (b: number): bigint => 1n << BigInt(b);

/**
 * Protocol features a back-end offers by default (vhost-user.rst "Protocol features"): MQ,
 * REPLY_ACK, BACKEND_REQ (config-change notifications), CONFIG, INFLIGHT_SHMFD, RESET_DEVICE,
 * CONFIGURE_MEM_SLOTS and STATUS.
 */
export const VHOST_USER_BACKEND_PROTOCOL_FEATURES: bigint =
  bit(PF.MQ) |
  bit(PF.REPLY_ACK) |
  bit(PF.BACKEND_REQ) |
  bit(PF.CONFIG) |
  bit(PF.INFLIGHT_SHMFD) |
  bit(PF.RESET_DEVICE) |
  bit(PF.CONFIGURE_MEM_SLOTS) |
  bit(PF.STATUS);

/** One vring's state as SET_VRING_* left it (vhost-user.rst "Ring states"). */
class Ring {
  num = 0;
  /** Guest-physical addresses (translated from the front-end's user addresses). */
  desc: number | undefined = undefined;
  avail: number | undefined = undefined;
  used: number | undefined = undefined;
  /**
   * SET_VRING_BASE's `num` as sent: split, the next available index; packed, bits 0–14 the
   * next available position, bit 15 its wrap counter, bits 16–30 the next used position, bit
   * 31 its wrap counter (QEMU's `virtio_queue_get_last_avail_idx`).
   */
  base = 0;
  kickFd: number | undefined = undefined;
  kickWatch: NativeWatch | undefined = undefined;
  callFd: number | undefined = undefined;
  errFd: number | undefined = undefined;
  enabled = false;
  queue: GatedDeviceQueue | undefined = undefined;
  layout: QueueLayout | undefined = undefined;
}

/**
 * Requests that may come before SET_OWNER: QEMU 7.2's vhost_user_backend_init sends them
 * first (GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS and
 * SET_BACKEND_REQ_FD), vhost_dev_init sends SET_OWNER after.
 */
const BEFORE_OWNER: ReadonlySet<number> = new Set([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.SET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.GET_MAX_MEM_SLOTS,
  VhostUserRequest.SET_BACKEND_REQ_FD,
  VhostUserRequest.SET_OWNER,
]);

/** Requests that carry fds, and how many (the others carry none). */
const FD_COUNT: ReadonlyMap<number, "ring" | number | "0or1"> = new Map<
  number,
  "ring" | number | "0or1"
>([
  [VhostUserRequest.SET_MEM_TABLE, -1],
  [VhostUserRequest.SET_VRING_KICK, "ring"],
  [VhostUserRequest.SET_VRING_CALL, "ring"],
  [VhostUserRequest.SET_VRING_ERR, "ring"],
  [VhostUserRequest.SET_BACKEND_REQ_FD, 1],
  [VhostUserRequest.SET_INFLIGHT_FD, 1],
  [VhostUserRequest.ADD_MEM_REG, 1],
  // vhost-user.rst REM_MEM_REG: "the back-end MAY accept messages with one file descriptor"
  // (and MUST close it without using it).
  [VhostUserRequest.REM_MEM_REG, "0or1"],
]);

/** What a session needs from its server. */
export interface SessionHost {
  readonly offeredFeatures: bigint;
  readonly protocolFeatures: bigint;
  readonly drainTimeoutMs: number;
  readonly maxMemorySlots: number;
  readonly mapPolicy: MapPolicy;
  claim(s: object): boolean;
  release(s: object): void;
  sessionClosed(s: object, error: VhostUserError | undefined): void;
  report(message: string): void;
  ringSizeProblem(index: number, num: number): string | undefined;
  /** The features the model sees, from those the front-end acked (without bit 30). */
  modelFeatures(acked: bigint): bigint;
  /** Count one request of this type. */
  countRequest(request: number): void;
  /** Count chains popped from ring `index` (added when a ring stops). */
  countPops(index: number, pops: number): void;
}

/** The inflight area (GET/SET_INFLIGHT_FD) of a session. */
interface Inflight {
  readonly mapping: Mapping;
  readonly numQueues: number;
  readonly queueSize: number;
  readonly packed: boolean;
  readonly regions: (InflightQueueRegion | undefined)[];
}

/** One front-end connection: its vring state and memory, and the DeviceContext of the model. */
export class Session implements DeviceContext {
  readonly #srv: SessionHost;
  readonly #n: VhostUserNative;
  readonly #conn: VhostUserConnection;
  readonly #model: DeviceModel;
  readonly #rings: Ring[];
  readonly #table: MemoryTable;
  #chain: Promise<void> = Promise.resolve();
  #owner = false;
  #acked: bigint | undefined = undefined;
  #features: bigint | undefined = undefined;
  #protocol = 0n;
  #status = 0;
  #backendChannel: BackendChannel | undefined = undefined;
  #inflight: Inflight | undefined = undefined;
  #epoch = 0;
  #failed = false;
  /** Whether a ring ever ran over this session's memory (its back-end may still touch it). */
  #ran = false;
  closed = false;

  /**
   * @param srv - the server
   * @param fd - the connected socket (owned from now on)
   * @param model - the device model served
   */
  constructor(srv: SessionHost, fd: number, model: DeviceModel) {
    this.#srv = srv;
    this.#n = loadNative();
    this.#model = model;
    this.#rings = model.queueMaxSizes.map(() => new Ring());
    this.#table = new MemoryTable(srv.mapPolicy, srv.maxMemorySlots, () => this.#memoryFault());
    this.#conn = new VhostUserConnection(fd, {
      onMessage: (m) => this.#enqueue(m),
      onClose: (e) => this.#closed(e),
    });
  }

  /** Whether SET_OWNER was received (the handshake is done). */
  get owned(): boolean {
    return this.#owner;
  }

  /** Close the connection (with `error` when the front-end broke the protocol). */
  close(error?: VhostUserError): void {
    this.#conn.close(error);
  }

  #memoryFault(): void {
    if (this.closed) return;
    this.close(
      new VhostUserBackendError(
        "memory-fault",
        "the front-end shrank a memory file under the back-end's mapping (SIGBUS caught by the guard)",
      ),
    );
  }

  // ---- message handling ----

  #enqueue(m: VhostUserMessage): void {
    this.#srv.countRequest(m.request);
    this.#chain = this.#chain.then(async () => {
      if (this.closed) {
        this.#closeFds(m.fds);
        return;
      }
      try {
        await this.#handle(m);
      } catch (e) {
        // Close the fds this message brought, except those a ring kept (closed with the ring).
        const kept = new Set(this.#rings.flatMap((r) => [r.kickFd, r.callFd, r.errFd]));
        this.#closeFds(m.fds.filter((fd) => !kept.has(fd)));
        this.close(
          e instanceof VhostUserError
            ? e
            : new VhostUserBackendError(
                "internal",
                `handling ${requestName(m.request)}: ${(e as Error)?.message ?? String(e)}`,
                m.request,
              ),
        );
      }
    });
  }

  #closeFds(fds: readonly number[]): void {
    for (const fd of fds) {
      try {
        this.#n.closeFd(fd);
      } catch {
        // already closed
      }
    }
  }

  #reply(m: VhostUserMessage, payload: Uint8Array, fds: readonly number[] = []): void {
    this.#conn.send(m.request, VhostUserFlag.REPLY, payload, fds);
  }

  #has(feature: number): boolean {
    return (this.#protocol & bit(feature)) !== 0n;
  }

  /** REPLY_ACK (vhost-user.rst "REPLY_ACK"): a u64 status when NEED_REPLY is set. */
  #ack(m: VhostUserMessage, status = 0n): void {
    if (this.#has(PF.REPLY_ACK) && (m.flags & VhostUserFlag.NEED_REPLY) !== 0) {
      this.#conn.send(m.request, VhostUserFlag.REPLY, encodeU64(status));
    }
  }

  #fdCount(m: VhostUserMessage, want: number): void {
    if (m.fds.length !== want) {
      throw new VhostUserError(
        "too-many-fds",
        `${requestName(m.request)} carried ${m.fds.length} file descriptors, expected ${want}`,
        m.request,
        m.fds.length,
      );
    }
  }

  #ring(index: number, m: VhostUserMessage): Ring {
    const r = this.#rings[index];
    if (r === undefined) {
      throw new VhostUserBackendError(
        "bad-value",
        `${requestName(m.request)}: ring index ${index} (the device has ${this.#rings.length})`,
        m.request,
        index,
      );
    }
    return r;
  }

  #stopped(index: number, m: VhostUserMessage): Ring {
    const r = this.#ring(index, m);
    if (r.queue !== undefined) {
      throw new VhostUserBackendError(
        "bad-state",
        `${requestName(m.request)} while ring ${index} is running (GET_VRING_BASE stops it first)`,
        m.request,
        index,
      );
    }
    return r;
  }

  /** A request gated by a protocol feature that was not negotiated. */
  #needs(feature: number, m: VhostUserMessage): void {
    if (!this.#has(feature)) {
      const name = Object.entries(PF).find(([, v]) => v === feature)?.[0] ?? `${feature}`;
      throw new VhostUserBackendError(
        "bad-state",
        `${requestName(m.request)} without VHOST_USER_PROTOCOL_F_${name} negotiated`,
        m.request,
      );
    }
  }

  async #handle(m: VhostUserMessage): Promise<void> {
    const R = VhostUserRequest;
    if (!this.#owner && !BEFORE_OWNER.has(m.request)) {
      throw new VhostUserBackendError(
        "bad-state",
        `${requestName(m.request)} before SET_OWNER`,
        m.request,
      );
    }
    const fds = FD_COUNT.get(m.request);
    if (fds === undefined) this.#fdCount(m, 0);
    else if (typeof fds === "number" && fds >= 0) this.#fdCount(m, fds);
    else if (fds === "0or1" && m.fds.length > 1) this.#fdCount(m, 1);
    switch (m.request) {
      case R.GET_FEATURES:
        decodeEmpty(m);
        this.#reply(m, encodeU64(this.#srv.offeredFeatures));
        return;
      case R.SET_FEATURES: {
        const f = decodeU64(m.payload, m.request);
        const extra = f & ~this.#srv.offeredFeatures;
        if (extra !== 0n) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_FEATURES: bits 0x${extra.toString(16)} were not offered`,
            m.request,
          );
        }
        if (this.#running()) {
          // QEMU sends SET_FEATURES once per vhost device sharing the connection (each queue
          // pair of a net device): the same value is no change.
          if (f === this.#acked) {
            this.#ack(m);
            return;
          }
          throw new VhostUserBackendError(
            "bad-state",
            "SET_FEATURES changing the features while a ring runs",
            m.request,
          );
        }
        const dev = this.#srv.modelFeatures(f & ~PF_BIT);
        if (this.#model.validateFeatures?.(dev) === false) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_FEATURES: the device refuses 0x${dev.toString(16)}`,
            m.request,
          );
        }
        this.#acked = f;
        this.#features = dev;
        this.#ack(m);
        return;
      }
      case R.GET_PROTOCOL_FEATURES:
        decodeEmpty(m);
        this.#reply(m, encodeU64(this.#srv.protocolFeatures));
        return;
      case R.SET_PROTOCOL_FEATURES: {
        const pf = decodeU64(m.payload, m.request);
        const extra = pf & ~this.#srv.protocolFeatures;
        if (extra !== 0n) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_PROTOCOL_FEATURES: bits 0x${extra.toString(16)} were not offered`,
            m.request,
          );
        }
        this.#protocol = pf;
        this.#ack(m);
        return;
      }
      case R.GET_QUEUE_NUM:
        decodeEmpty(m);
        this.#reply(m, encodeU64(BigInt(this.#rings.length)));
        return;
      case R.GET_MAX_MEM_SLOTS:
        decodeEmpty(m);
        this.#reply(m, encodeU64(BigInt(this.#srv.maxMemorySlots)));
        return;
      case R.SET_OWNER:
        // QEMU sends it once per vhost device sharing the connection (each queue pair of a
        // net device), so a repeat is no error (libvhost-user ignores it too).
        decodeEmpty(m);
        this.#owner = true;
        this.#ack(m);
        return;
      case R.RESET_OWNER:
        // Deprecated (vhost-user.rst): "disable all rings" is what back-ends should do.
        decodeEmpty(m);
        this.#reset(true);
        this.#ack(m);
        return;
      case R.RESET_DEVICE:
        this.#needs(PF.RESET_DEVICE, m);
        decodeEmpty(m);
        this.#reset(true);
        this.#ack(m);
        return;
      case R.GET_CONFIG: {
        const c = decodeConfig(m.payload, m.request);
        this.#reply(m, encodeConfig({ ...c, data: this.#readConfig(c.offset, c.data.length) }));
        return;
      }
      case R.SET_CONFIG: {
        const c = decodeConfig(m.payload, m.request);
        this.#ack(m, this.#writeConfig(c.offset, c.flags, c.data) ? 0n : 1n);
        return;
      }
      case R.SET_MEM_TABLE: {
        const regions = decodeMemoryTable(m.payload, m.request);
        this.#fdCount(m, regions.length);
        try {
          this.#table.setAll(regions, m.fds, m.request);
        } finally {
          // The mappings stay; the fds are not needed any more.
          this.#closeFds(m.fds);
        }
        this.#retire();
        this.#ack(m);
        return;
      }
      case R.ADD_MEM_REG: {
        this.#needs(PF.CONFIGURE_MEM_SLOTS, m);
        const region = decodeSingleMemoryRegion(m.payload, m.request);
        try {
          this.#table.add(region, m.fds[0]!, m.request);
        } finally {
          this.#closeFds(m.fds);
        }
        this.#ack(m);
        return;
      }
      case R.REM_MEM_REG: {
        this.#needs(PF.CONFIGURE_MEM_SLOTS, m);
        this.#closeFds(m.fds);
        const region = decodeSingleMemoryRegion(m.payload, m.request);
        this.#table.remove(region, m.request);
        this.#retire();
        this.#ack(m);
        return;
      }
      case R.SET_VRING_NUM: {
        const s = decodeVringState(m.payload, m.request);
        const r = this.#stopped(s.index, m);
        // The front-end picks the size (QEMU's queue-size property; vhost-user has no way to
        // announce a maximum): any size up to 32768 (VIRTIO 1.3 §2.7, §2.8); the ring's own
        // rules (a power of 2 for a split ring) are checked when it starts.
        const max = 32768;
        if (s.num < 1 || s.num > max) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_VRING_NUM: ring ${s.index} size ${s.num} (max ${max})`,
            m.request,
            s.num,
          );
        }
        const why = this.#srv.ringSizeProblem(s.index, s.num);
        if (why !== undefined) {
          throw new VhostUserBackendError("bad-value", `SET_VRING_NUM: ${why}`, m.request, s.num);
        }
        r.num = s.num;
        this.#ack(m);
        return;
      }
      case R.SET_VRING_BASE: {
        const s = decodeVringState(m.payload, m.request);
        const r = this.#stopped(s.index, m);
        // Checked against the ring type and size when the ring starts.
        r.base = s.num;
        this.#ack(m);
        return;
      }
      case R.SET_VRING_ADDR: {
        const a = decodeVringAddr(m.payload, m.request);
        const r = this.#stopped(a.index, m);
        if (this.#table.count === 0) {
          throw new VhostUserBackendError(
            "bad-state",
            "SET_VRING_ADDR before SET_MEM_TABLE (its addresses are translated through the table)",
            m.request,
          );
        }
        // vhost-user.rst "Vring address description": front-end user (virtual) addresses.
        r.desc = this.#table.translate(a.desc, "desc", m.request);
        r.avail = this.#table.translate(a.avail, "avail", m.request);
        r.used = this.#table.translate(a.used, "used", m.request);
        this.#ack(m);
        this.#tryStart(a.index, m);
        return;
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR: {
        const v = decodeVringFd(m.payload, m.request);
        this.#fdCount(m, v.noFd ? 0 : 1);
        const r = this.#ring(v.index, m);
        const fd = m.fds[0];
        if (fd !== undefined && !isEventFd(fd)) {
          throw new VhostUserBackendError(
            "bad-value",
            `${requestName(m.request)}: ring ${v.index}: the fd is not an eventfd`,
            m.request,
          );
        }
        if (m.request === R.SET_VRING_KICK) {
          if (fd === undefined) {
            throw new VhostUserBackendError(
              "unsupported",
              "SET_VRING_KICK without an fd (polling mode) is not supported",
              m.request,
            );
          }
          this.#stopped(v.index, m);
          this.#replaceFd(r, "kickFd", fd);
        } else if (m.request === R.SET_VRING_CALL) {
          this.#replaceFd(r, "callFd", fd);
          // A new call fd after a reconnect: the guest may have missed the last notification
          // (libvhost-user does the same); a spurious one is harmless.
          if (fd !== undefined && r.queue !== undefined) this.interrupt(v.index);
        } else {
          this.#replaceFd(r, "errFd", fd);
        }
        this.#ack(m);
        // vhost-user.rst "Ring states": without PROTOCOL_FEATURES the ring starts enabled;
        // it starts running once it has a kick fd.
        if (m.request === R.SET_VRING_KICK) this.#tryStart(v.index, m);
        return;
      }
      case R.SET_VRING_ENABLE: {
        const s = decodeVringState(m.payload, m.request);
        const r = this.#ring(s.index, m);
        if (s.num > 1) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_VRING_ENABLE: ring ${s.index}: num ${s.num} is neither 0 nor 1`,
            m.request,
            s.num,
          );
        }
        r.enabled = s.num === 1;
        this.#ack(m);
        if (r.enabled) this.#tryStart(s.index, m);
        else if (r.queue !== undefined) await this.#stopRing(s.index, r);
        return;
      }
      case R.GET_VRING_BASE: {
        const s = decodeVringState(m.payload, m.request);
        const r = this.#ring(s.index, m);
        if (r.queue !== undefined) await this.#stopRing(s.index, r);
        r.enabled = false;
        this.#reply(m, encodeVringState({ index: s.index, num: r.base }));
        return;
      }
      case R.SET_BACKEND_REQ_FD: {
        this.#needs(PF.BACKEND_REQ, m);
        decodeEmpty(m);
        this.#backendChannel?.close();
        const channel = new BackendChannel(m.fds[0]!, (e) => {
          if (e !== undefined)
            this.#srv.report(`vhost-user: back-end channel closed: ${e.message}`);
          if (this.#backendChannel === channel) this.#backendChannel = undefined;
        });
        this.#backendChannel = channel;
        this.#ack(m);
        return;
      }
      case R.GET_INFLIGHT_FD:
        this.#needs(PF.INFLIGHT_SHMFD, m);
        this.#getInflight(m);
        return;
      case R.SET_INFLIGHT_FD:
        this.#needs(PF.INFLIGHT_SHMFD, m);
        try {
          this.#setInflight(m);
        } finally {
          this.#closeFds(m.fds);
        }
        this.#ack(m);
        return;
      case R.SET_STATUS: {
        this.#needs(PF.STATUS, m);
        const status = decodeU64(m.payload, m.request);
        if (status > 0xffn) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_STATUS: 0x${status.toString(16)} is not a device status byte`,
            m.request,
          );
        }
        // Recorded only. QEMU 7.2 sends SET_STATUS 0 *before* GET_VRING_BASE when it stops the
        // device (vhost_dev_stop), so acting on 0 as a reset would drop the requests in flight
        // GET_VRING_BASE is about to drain; rings start and stop by the vring messages.
        this.#status = Number(status);
        this.#ack(m);
        return;
      }
      case R.GET_STATUS:
        this.#needs(PF.STATUS, m);
        decodeEmpty(m);
        this.#reply(m, encodeU64(BigInt(this.#status)));
        return;
      default:
        throw new VhostUserBackendError(
          "unsupported",
          `${requestName(m.request)} is not implemented by this back-end`,
          m.request,
        );
    }
  }

  #readConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    const cs = this.#model.configSize;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      if (at < cs) out[i] = this.#model.readConfig(at, 1);
    }
    return out;
  }

  /**
   * SET_CONFIG: vhost-user.rst, the back-end MUST NOT accept writes to read-only fields unless
   * the live-migration flag is set. Flag 0 (the guest wrote a field): the bytes are written
   * through the model's `writeConfig` in naturally aligned accesses (the model keeps what its
   * driver may write and ignores the rest, as a device's configuration space does). Flag 1
   * (restoring a migrated configuration) is refused: nothing here restores configuration.
   * @returns whether it was accepted
   */
  #writeConfig(offset: number, flags: number, data: Uint8Array): boolean {
    if (flags !== 0 || data.length === 0 || offset + data.length > this.#model.configSize) {
      return false;
    }
    let i = 0;
    while (i < data.length) {
      const at = offset + i;
      const left = data.length - i;
      const size: 1 | 2 | 4 = at % 4 === 0 && left >= 4 ? 4 : at % 2 === 0 && left >= 2 ? 2 : 1;
      let v = 0;
      for (let k = size - 1; k >= 0; k--) v = v * 256 + data[i + k]!;
      const ok = this.guard(() => {
        this.#model.writeConfig(at, size, v);
        return true;
      });
      if (ok !== true) return false;
      i += size;
    }
    return true;
  }

  #replaceFd(r: Ring, key: "kickFd" | "callFd" | "errFd", fd: number | undefined): void {
    const old = r[key];
    if (old !== undefined) this.#closeFds([old]);
    r[key] = fd;
  }

  // ---- in-flight tracking ----

  /** GET_INFLIGHT_FD: a new, zeroed, sealed memfd sized for the queues asked for. */
  #getInflight(m: VhostUserMessage): void {
    const d = decodeInflight(m.payload, m.request);
    const { numQueues, queueSize } = this.#checkInflightShape(d.numQueues, d.queueSize, m);
    const packed = hasFeature(this.#acked ?? 0n, Feature.RING_PACKED);
    const size = inflightQueueRegionSize(queueSize, packed) * numQueues;
    const n = this.#n;
    const fd = n.memfdCreate("vhost-user-inflight", size, true);
    try {
      if (!n.addSeals(fd, FileSeal.GROW | FileSeal.SHRINK | FileSeal.SEAL)) {
        throw new VhostUserBackendError("internal", "cannot seal the inflight memfd", m.request);
      }
      this.#useInflight(fd, 0, numQueues, queueSize, packed, m);
      this.#reply(
        m,
        encodeInflight({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues, queueSize }),
        [fd],
      );
    } finally {
      n.closeFd(fd);
    }
  }

  /** SET_INFLIGHT_FD: the area a previous back-end (or this one) handed out, back again. */
  #setInflight(m: VhostUserMessage): void {
    const d = decodeInflight(m.payload, m.request);
    const { numQueues, queueSize } = this.#checkInflightShape(d.numQueues, d.queueSize, m);
    const packed = hasFeature(this.#acked ?? 0n, Feature.RING_PACKED);
    const need = BigInt(inflightQueueRegionSize(queueSize, packed) * numQueues);
    if (d.mmapSize < need || d.mmapOffset % 64n !== 0n || d.mmapOffset > 1n << 52n) {
      throw new VhostUserBackendError(
        "bad-value",
        `SET_INFLIGHT_FD: ${d.mmapSize} bytes at offset ${d.mmapOffset} cannot hold ${numQueues} queues of ${queueSize} (${need} bytes, offset a multiple of 64)`,
        m.request,
      );
    }
    this.#useInflight(m.fds[0]!, Number(d.mmapOffset), numQueues, queueSize, packed, m);
  }

  #checkInflightShape(
    numQueues: number,
    queueSize: number,
    m: VhostUserMessage,
  ): { numQueues: number; queueSize: number } {
    if (numQueues < 1 || numQueues > this.#rings.length || queueSize < 1 || queueSize > 32768) {
      throw new VhostUserBackendError(
        "bad-value",
        `${requestName(m.request)}: ${numQueues} queues of ${queueSize} (the device has ${this.#rings.length} queues of at most 32768)`,
        m.request,
      );
    }
    if (this.#running()) {
      throw new VhostUserBackendError(
        "bad-state",
        `${requestName(m.request)} while a ring runs`,
        m.request,
      );
    }
    return { numQueues, queueSize };
  }

  #useInflight(
    fd: number,
    offset: number,
    numQueues: number,
    queueSize: number,
    packed: boolean,
    m: VhostUserMessage,
  ): void {
    const per = inflightQueueRegionSize(queueSize, packed);
    const mapping = mapMemoryFd(
      this.#srv.mapPolicy,
      fd,
      offset,
      per * numQueues,
      requestName(m.request),
      m.request,
      () => this.#memoryFault(),
    );
    // Packed rings are not tracked: QEMU 7.2 cannot resume a packed ring after a back-end
    // crash anyway (virtio_queue_packed_restore_last_avail_idx does nothing), so the area is
    // only kept for the front-end.
    const regions: (InflightQueueRegion | undefined)[] = [];
    for (let i = 0; i < numQueues; i++) {
      regions.push(
        packed
          ? undefined
          : new InflightQueueRegion(mapping.buffer, mapping.byteOffset + i * per, queueSize),
      );
    }
    this.#dropInflight();
    this.#inflight = { mapping, numQueues, queueSize, packed, regions };
  }

  #dropInflight(): void {
    const old = this.#inflight;
    this.#inflight = undefined;
    // Nothing runs over it (checked before replacing; the session is closing otherwise).
    old?.mapping.release();
  }

  // ---- rings ----

  #running(): boolean {
    return this.#rings.some((r) => r.queue !== undefined);
  }

  /** Start ring `index` if everything it needs is set (vhost-user.rst "Ring states"). */
  #tryStart(index: number, m: VhostUserMessage): void {
    const r = this.#rings[index]!;
    const f = this.#acked;
    const mem = this.#table.memory;
    if (r.queue !== undefined || f === undefined || mem === undefined) return;
    if (r.num === 0 || r.desc === undefined || r.avail === undefined || r.used === undefined) {
      return;
    }
    if (r.kickFd === undefined) return;
    if ((f & PF_BIT) !== 0n && !r.enabled) return;
    if (!this.#srv.claim(this)) {
      throw new VhostUserBackendError(
        "busy",
        "another front-end connection is serving this device",
        m.request,
      );
    }
    const layout: QueueLayout = { size: r.num, desc: r.desc, driver: r.avail, device: r.used };
    let q: DeviceQueue;
    let resubmitted = 0;
    try {
      ({ queue: q, resubmitted } = this.#openQueue(index, mem, layout, f & ~PF_BIT, r.base));
    } catch (e) {
      if (!this.#running()) this.#srv.release(this);
      throw new VhostUserBackendError(
        "bad-address",
        `ring ${index} (size ${r.num}, desc 0x${r.desc.toString(16)}, avail 0x${r.avail.toString(16)}, used 0x${r.used.toString(16)}, base 0x${r.base.toString(16)}): ${(e as Error).message}`,
        m.request,
      );
    }
    const first = !this.#running();
    r.layout = layout;
    r.queue = new GatedDeviceQueue(q);
    this.#ran = true;
    this.#epoch++;
    const kick = r.kickFd;
    try {
      r.kickWatch = this.#n.watch(kick, () => {
        if (this.closed || r.queue === undefined) return;
        this.#n.eventfdRead(kick);
        this.#notify(index);
      });
    } catch (e) {
      r.queue = undefined;
      if (first) this.#srv.release(this);
      throw new VhostUserBackendError(
        "bad-value",
        `ring ${index}: cannot watch the kick fd: ${(e as Error).message}`,
        m.request,
      );
    }
    if (resubmitted > 0) {
      this.#srv.report(
        `vhost-user: ring ${index}: serving again ${resubmitted} requests the previous back-end left in flight`,
      );
    }
    if (first) {
      this.#failed = false;
      this.guard(() => this.#model.activate(this));
    } else {
      this.guard(() => this.#model.onQueueEnable?.(index));
    }
    // Buffers may already be available (a restart, or kicks before we watched).
    this.#notify(index);
  }

  /**
   * The device queue for a ring, positioned where SET_VRING_BASE (or, with in-flight
   * tracking, the inflight area) says, with the requests a previous back-end left in flight
   * queued to be popped first.
   */
  #openQueue(
    index: number,
    mem: GuestMemory,
    layout: QueueLayout,
    features: bigint,
    base: number,
  ): { queue: DeviceQueue; resubmitted: number } {
    const q = createDeviceQueue(mem, layout, features);
    if (hasFeature(features, Feature.RING_PACKED)) {
      // QEMU's virtio_queue_get_last_avail_idx for packed rings: avail position and wrap
      // counter in the low half, used position and wrap counter in the high half (§2.8.1).
      const state: QueueState = {
        availIdx: base & 0x7fff,
        availWrap: (base & 0x8000) !== 0,
        usedIdx: (base >>> 16) & 0x7fff,
        usedWrap: (base & 0x8000_0000) !== 0,
      };
      q.setState(state);
      return { queue: q, resubmitted: 0 };
    }
    if (base > 0xffff) throw new RangeError(`base ${base} is not a split-ring index`);
    // The used index lives in guest memory (the front-end may have restarted us mid-way).
    const usedIdx = mem.readU16(layout.device + 2);
    const region = this.#inflight?.regions[index];
    if (region === undefined || region.size !== layout.size) {
      q.setState({ availIdx: base, usedIdx, availWrap: true, usedWrap: true });
      return { queue: q, resubmitted: 0 };
    }
    // vhost-user.rst "When reconnecting": resume after what is used or in flight, and serve
    // the requests in flight again first, in the order they were popped. SET_VRING_BASE is
    // not used: after a back-end crash QEMU only knows used.idx (libvhost-user does the same).
    const rec = region.recover(usedIdx);
    q.setState({ availIdx: rec.availIdx, usedIdx, availWrap: true, usedWrap: true });
    if (rec.heads.length > 0) q.restoreInFlight(rec.heads.map((id) => ({ id, descriptors: NONE })));
    const tracked = new InflightTrackingQueue(
      q,
      region,
      usedIdx,
      hasFeature(features, Feature.IN_ORDER),
    );
    return { queue: tracked, resubmitted: rec.heads.length };
  }

  #notify(index: number): void {
    if (this.#rings[index]?.queue === undefined || this.#failed) return;
    this.guard(() => this.#model.onQueueNotify(index, undefined));
  }

  /** GET_VRING_BASE: stop popping, let in-flight requests finish (bounded), save the index. */
  async #stopRing(index: number, r: Ring): Promise<void> {
    const q = r.queue!;
    q.stopping = true;
    if (q.inFlight > 0) {
      const drained = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), this.#srv.drainTimeoutMs);
        q.onIdle = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
      q.onIdle = undefined;
      // The connection closed meanwhile: its clean-up already stopped everything.
      if (this.closed) return;
      if (!drained) {
        this.#srv.report(
          `vhost-user: ring ${index}: ${q.inFlight} requests still in flight after ${this.#srv.drainTimeoutMs} ms; stopping anyway`,
        );
      }
    }
    const s = q.getState();
    r.base = hasFeature(this.#acked ?? 0n, Feature.RING_PACKED)
      ? (s.availIdx |
          (s.availWrap ? 0x8000 : 0) |
          (s.usedIdx << 16) |
          (s.usedWrap ? 0x8000_0000 : 0)) >>>
        0
      : s.availIdx;
    this.#halt(index, r);
    if (!this.#running()) {
      this.#model.reset();
      this.#srv.release(this);
      this.#retire();
    }
  }

  /** Chains popped from each ring that runs now (for the back-end's counters). */
  livePops(): number[] {
    return this.#rings.map((r) => r.queue?.pops ?? 0);
  }

  #halt(index: number, r: Ring): void {
    if (r.queue !== undefined) this.#srv.countPops(index, r.queue.pops);
    if (r.kickWatch !== undefined) this.#n.unwatch(r.kickWatch);
    r.kickWatch = undefined;
    r.queue = undefined;
    this.#epoch++;
    try {
      this.#model.onQueueReset?.(index);
    } catch {
      // forgetting state must not fail; a throwing model is reported by the next guard
    }
  }

  /**
   * Mappings replaced or removed: unmap them once nothing can touch them — at once if no ring
   * of this session ever ran over them; else, once no ring runs and the model's back-end is
   * idle (bounded by the drain timeout); failing that, leave them to the garbage collector,
   * which unmaps a buffer only once no pending request holds it.
   */
  #retire(): void {
    const t = this.#table;
    if (t.retired.length === 0 || this.#running()) return;
    if (!this.#ran) {
      t.dropRetired(true);
      return;
    }
    const batch = t.retired;
    t.retired = [];
    void this.#whenModelIdle().then((idle) => {
      if (idle && !this.#running()) for (const mapping of batch) mapping.release();
      // else: unreachable once dropped; collected (and unmapped) when nothing holds them.
    });
  }

  async #whenModelIdle(): Promise<boolean> {
    const idle = this.#model.whenIdle?.();
    if (idle === undefined) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.#srv.drainTimeoutMs);
    });
    try {
      return await Promise.race([idle.then(() => true), late]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Stop every ring (without draining), forget the vring state and features; with
   * `keepOwner` (RESET_DEVICE) the session stays owned and keeps its memory table.
   */
  #reset(keepOwner: boolean): void {
    const wasRunning = this.#running();
    this.#rings.forEach((r, i) => {
      if (r.queue !== undefined) this.#halt(i, r);
    });
    if (wasRunning) {
      this.#model.reset();
      this.#srv.release(this);
    }
    for (const r of this.#rings) {
      this.#closeFds([r.kickFd, r.callFd, r.errFd].filter((fd): fd is number => fd !== undefined));
      r.kickFd = r.callFd = r.errFd = undefined;
      r.num = 0;
      r.base = 0;
      r.enabled = false;
      r.desc = r.avail = r.used = undefined;
    }
    this.#acked = undefined;
    this.#features = undefined;
    this.#status = 0;
    if (!keepOwner) this.#owner = false;
  }

  #closed(error: VhostUserError | undefined): void {
    this.closed = true;
    try {
      this.#reset(false);
      this.#backendChannel?.close();
      this.#backendChannel = undefined;
      this.#table.retireAll();
      this.#retire();
      this.#dropInflightWhenIdle();
    } catch (e) {
      this.#srv.report(`vhost-user: cleanup failed: ${(e as Error).message}`);
    }
    this.#srv.sessionClosed(this, error?.code === "peer-closed" ? undefined : error);
  }

  #dropInflightWhenIdle(): void {
    const inflight = this.#inflight;
    this.#inflight = undefined;
    if (inflight === undefined) return;
    // The model may still complete a request and write its region (it was reset, so it
    // drops the completion, but the tracking queue is past that point): wait for idle.
    void this.#whenModelIdle().then((idle) => {
      if (idle) inflight.mapping.release();
    });
  }

  // ---- DeviceContext ----

  /** @inheritdoc */
  get memory(): GuestMemoryMap {
    const mem = this.#table.memory;
    if (mem === undefined) throw new RangeError("memory: no memory table yet");
    return mem;
  }
  /** @inheritdoc */
  get features(): bigint {
    return this.#features ?? 0n;
  }
  /** @inheritdoc */
  get numQueues(): number {
    return this.#rings.length;
  }
  /** @inheritdoc */
  get epoch(): number {
    return this.#epoch;
  }
  /** @inheritdoc */
  get needsReset(): boolean {
    return this.#failed;
  }
  /** @inheritdoc */
  queue(index: number): DeviceQueue | undefined {
    return this.#rings[index]?.queue;
  }
  /** @inheritdoc */
  queueLayout(index: number): QueueLayout | undefined {
    const r = this.#rings[index];
    return r?.queue === undefined ? undefined : r.layout;
  }
  /** @inheritdoc */
  interrupt(index: number): boolean {
    const r = this.#rings[index];
    if (this.closed || r?.queue === undefined || r.callFd === undefined) return false;
    try {
      this.#n.eventfdWrite(r.callFd, 1);
    } catch {
      return false;
    }
    return true;
  }
  /** @inheritdoc */
  signalUsed(index: number): boolean {
    const q = this.#rings[index]?.queue;
    if (q === undefined || !q.needsInterrupt()) return false;
    return this.interrupt(index);
  }
  /**
   * The model changed its configuration (a disk that grew): with the back-end request channel
   * (PROTOCOL_F_BACKEND_REQ and SET_BACKEND_REQ_FD), send CONFIG_CHANGE_MSG; the front-end
   * reads the configuration again with GET_CONFIG and interrupts the guest. Without the channel
   * the change is seen at the front-end's next GET_CONFIG only.
   */
  notifyConfigChange(): void {
    if (this.closed || !this.#has(PF.CONFIG)) return;
    this.#backendChannel?.configChanged();
  }
  /** @inheritdoc */
  fail(error: VirtioError): void {
    this.noteFault(error);
    if (this.#failed) return;
    this.#failed = true;
    // vhost-user.rst SET_VRING_ERR: the error eventfd is how the back-end reports a failure.
    for (const r of this.#rings) {
      if (r.errFd !== undefined) {
        try {
          this.#n.eventfdWrite(r.errFd, 1);
        } catch {
          // the front-end closed it
        }
      }
    }
  }
  /** @inheritdoc */
  noteFault(error: VirtioError): void {
    this.#srv.report(`vhost-user device ${this.#model.deviceId}: ${error.name}: ${error.message}`);
  }
  /** @inheritdoc */
  guard<T>(fn: () => T): T | undefined {
    if (this.closed) return undefined;
    try {
      return fn();
    } catch (e) {
      if (e instanceof VirtioError) {
        this.fail(e);
        return undefined;
      }
      // A bug in model code: end this connection, keep the process serving others.
      queueMicrotask(() =>
        this.close(
          new VhostUserBackendError(
            "internal",
            `the device model threw: ${(e as Error)?.message ?? String(e)}`,
          ),
        ),
      );
      return undefined;
    }
  }
}

const NONE = new Uint32Array(0);

function decodeEmpty(m: VhostUserMessage): void {
  // GET_* requests carry no payload; QEMU sends size 0. Tolerate a u64 of padding as some
  // front-ends send, refuse anything larger.
  if (m.payload.length !== 0 && m.payload.length !== 8) {
    throw new VhostUserError(
      "bad-size",
      `${requestName(m.request)} has a ${m.payload.length}-byte payload, expected none`,
      m.request,
      m.payload.length,
    );
  }
}

function isEventFd(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === "anon_inode:[eventfd]";
  } catch {
    return false;
  }
}
