/**
 * One vhost-user front-end connection as the back-end serves it (QEMU
 * `docs/interop/vhost-user.rst`): the message loop, the vring state SET_VRING_* sets, the
 * rings it runs over the front-end's memory, and the `DeviceContext` the model sees.
 * @module
 */
import { readlinkSync } from "node:fs";
import { type GuestMemoryMap, VirtioError } from "@virtio-ts/memory";
import { featureMask } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import {
  createDeviceQueue,
  type DeviceQueue,
  GatedDeviceQueue,
  type QueueLayout,
} from "@virtio-ts/virtqueue";
import { VhostUserConnection } from "./connection.js";
import { VhostUserBackendError, VhostUserError } from "./errors.js";
import { MemoryTable } from "./memory-table.js";
import {
  decodeConfig,
  decodeMemoryTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeU64,
  encodeVringState,
  requestName,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserFlag,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "./messages.js";
import { loadNative, type NativeWatch, type VhostUserNative } from "./native.js";

const PF_BIT = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);

/** Protocol features offered (vhost-user.rst "Protocol features"): MQ, REPLY_ACK, CONFIG. */
export const VHOST_USER_BACKEND_PROTOCOL_FEATURES: bigint =
  (1n << BigInt(VhostUserProtocolFeature.MQ)) |
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG));

/** One vring's state as SET_VRING_* left it (vhost-user.rst "Ring states"). */
class Ring {
  num = 0;
  /** Guest-physical addresses (translated from the front-end's user addresses). */
  desc: number | undefined = undefined;
  avail: number | undefined = undefined;
  used: number | undefined = undefined;
  base = 0;
  kickFd: number | undefined = undefined;
  kickWatch: NativeWatch | undefined = undefined;
  callFd: number | undefined = undefined;
  errFd: number | undefined = undefined;
  enabled = false;
  queue: GatedDeviceQueue | undefined = undefined;
  layout: QueueLayout | undefined = undefined;
}

/** Requests that may come before SET_OWNER (QEMU's vhost_user_backend_init sends them first). */
const BEFORE_OWNER: ReadonlySet<number> = new Set([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.SET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.SET_OWNER,
]);

/** What a session needs from its server. */
export interface SessionHost {
  readonly offeredFeatures: bigint;
  readonly drainTimeoutMs: number;
  claim(s: object): boolean;
  release(s: object): void;
  sessionClosed(s: object, error: VhostUserError | undefined): void;
  report(message: string): void;
  ringSizeProblem(index: number, num: number): string | undefined;
}

/** One front-end connection: its vring state and memory, and the DeviceContext of the model. */
export class Session implements DeviceContext {
  readonly #srv: SessionHost;
  readonly #n: VhostUserNative;
  readonly #conn: VhostUserConnection;
  readonly #model: DeviceModel;
  readonly #rings: Ring[];
  #chain: Promise<void> = Promise.resolve();
  #owner = false;
  #features: bigint | undefined = undefined;
  #protocol = 0n;
  #table: MemoryTable | undefined = undefined;
  #epoch = 0;
  #failed = false;
  closed = false;

  constructor(srv: SessionHost, fd: number, model: DeviceModel) {
    this.#srv = srv;
    this.#n = loadNative();
    this.#model = model;
    this.#rings = model.queueMaxSizes.map(() => new Ring());
    this.#conn = new VhostUserConnection(fd, {
      onMessage: (m) => this.#enqueue(m),
      onClose: (e) => this.#closed(e),
    });
  }

  /** Close the connection (with `error` when the front-end broke the protocol). */
  close(error?: VhostUserError): void {
    this.#conn.close(error);
  }

  // ---- message handling ----

  #enqueue(m: VhostUserMessage): void {
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

  #reply(m: VhostUserMessage, payload: Uint8Array): void {
    this.#conn.send(m.request, VhostUserFlag.REPLY, payload);
  }

  /** REPLY_ACK (vhost-user.rst "REPLY_ACK"): a u64 status when NEED_REPLY is set. */
  #ack(m: VhostUserMessage, status = 0n): void {
    const negotiated = (this.#protocol & (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK))) !== 0n;
    if (negotiated && (m.flags & VhostUserFlag.NEED_REPLY) !== 0) {
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

  async #handle(m: VhostUserMessage): Promise<void> {
    const R = VhostUserRequest;
    if (!this.#owner && !BEFORE_OWNER.has(m.request)) {
      throw new VhostUserBackendError(
        "bad-state",
        `${requestName(m.request)} before SET_OWNER`,
        m.request,
      );
    }
    const takesFds =
      m.request === R.SET_MEM_TABLE ||
      m.request === R.SET_VRING_KICK ||
      m.request === R.SET_VRING_CALL ||
      m.request === R.SET_VRING_ERR;
    if (!takesFds) this.#fdCount(m, 0);
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
          throw new VhostUserBackendError("bad-state", "SET_FEATURES while a ring runs", m.request);
        }
        const dev = f & ~PF_BIT;
        if (this.#model.validateFeatures?.(dev) === false) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_FEATURES: the device refuses 0x${dev.toString(16)}`,
            m.request,
          );
        }
        this.#features = f;
        this.#ack(m);
        return;
      }
      case R.GET_PROTOCOL_FEATURES:
        decodeEmpty(m);
        this.#reply(m, encodeU64(VHOST_USER_BACKEND_PROTOCOL_FEATURES));
        return;
      case R.SET_PROTOCOL_FEATURES: {
        const pf = decodeU64(m.payload, m.request);
        const extra = pf & ~VHOST_USER_BACKEND_PROTOCOL_FEATURES;
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
      case R.SET_OWNER:
        decodeEmpty(m);
        if (this.#owner) {
          throw new VhostUserBackendError("bad-state", "SET_OWNER twice", m.request);
        }
        this.#owner = true;
        this.#ack(m);
        return;
      case R.RESET_OWNER:
      case R.RESET_DEVICE:
        decodeEmpty(m);
        this.#reset();
        this.#ack(m);
        return;
      case R.GET_CONFIG: {
        const c = decodeConfig(m.payload, m.request);
        this.#reply(m, encodeConfig({ ...c, data: this.#readConfig(c.offset, c.data.length) }));
        return;
      }
      case R.SET_CONFIG:
        // vhost-user.rst SET_CONFIG: the back-end must not accept writes to read-only fields;
        // every virtio-blk field offered here is read-only (no CONFIG_WCE), so refuse.
        decodeConfig(m.payload, m.request);
        this.#ack(m, 1n);
        return;
      case R.SET_MEM_TABLE:
        this.#setMemTable(m);
        this.#ack(m);
        return;
      case R.SET_VRING_NUM: {
        const s = decodeVringState(m.payload, m.request);
        const r = this.#stopped(s.index, m);
        // The front-end picks the size (QEMU's queue-size property; vhost-user has no way to
        // announce a maximum), so any split-ring size is accepted (VIRTIO 1.3 §2.7: ≤ 32768).
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
        if (s.num > 0xffff) {
          throw new VhostUserBackendError(
            "bad-value",
            `SET_VRING_BASE: ring ${s.index} base ${s.num} is not a split-ring index`,
            m.request,
            s.num,
          );
        }
        r.base = s.num;
        this.#ack(m);
        return;
      }
      case R.SET_VRING_ADDR: {
        const a = decodeVringAddr(m.payload, m.request);
        const r = this.#stopped(a.index, m);
        const table = this.#table;
        if (table === undefined) {
          throw new VhostUserBackendError(
            "bad-state",
            "SET_VRING_ADDR before SET_MEM_TABLE (its addresses are translated through the table)",
            m.request,
          );
        }
        // vhost-user.rst "Vring address description": front-end user (virtual) addresses.
        r.desc = table.translate(a.desc, "desc", m.request);
        r.avail = table.translate(a.avail, "avail", m.request);
        r.used = table.translate(a.used, "used", m.request);
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

  #replaceFd(r: Ring, key: "kickFd" | "callFd" | "errFd", fd: number | undefined): void {
    const old = r[key];
    if (old !== undefined) this.#closeFds([old]);
    r[key] = fd;
  }

  #setMemTable(m: VhostUserMessage): void {
    const regions = decodeMemoryTable(m.payload, m.request);
    this.#fdCount(m, regions.length);
    const table = MemoryTable.map(this.#n, regions, m.fds, m.request);
    // The fds may be closed now: the mappings stay. Old mappings are unmapped when their
    // buffers are collected (a running ring keeps its own until it stops).
    this.#closeFds(m.fds);
    this.#table = table;
  }

  #running(): boolean {
    return this.#rings.some((r) => r.queue !== undefined);
  }

  /** Start ring `index` if everything it needs is set (vhost-user.rst "Ring states"). */
  #tryStart(index: number, m: VhostUserMessage): void {
    const r = this.#rings[index]!;
    const f = this.#features;
    const mem = this.#table?.memory;
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
    try {
      // A split ring: RING_PACKED is never offered (UNSERVED), so SET_FEATURES cannot carry it.
      q = createDeviceQueue(mem, layout, f & ~PF_BIT);
      // The used index lives in guest memory (the front-end may have restarted us mid-way).
      const usedIdx = mem.readU16(r.used + 2);
      q.setState({ availIdx: r.base, usedIdx, availWrap: true, usedWrap: true });
    } catch (e) {
      if (!this.#running()) this.#srv.release(this);
      throw new VhostUserBackendError(
        "bad-address",
        `ring ${index} (size ${r.num}, desc 0x${r.desc.toString(16)}, avail 0x${r.avail.toString(16)}, used 0x${r.used.toString(16)}): ${(e as Error).message}`,
        m.request,
      );
    }
    const first = !this.#running();
    r.layout = layout;
    r.queue = new GatedDeviceQueue(q);
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
    if (first) {
      this.#failed = false;
      this.guard(() => this.#model.activate(this));
    } else {
      this.guard(() => this.#model.onQueueEnable?.(index));
    }
    // Buffers may already be available (a restart, or kicks before we watched).
    this.#notify(index);
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
    r.base = q.getState().availIdx;
    this.#halt(index, r);
    if (!this.#running()) {
      this.#model.reset();
      this.#srv.release(this);
    }
  }

  #halt(index: number, r: Ring): void {
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

  #reset(): void {
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
    this.#features = undefined;
    this.#table = undefined;
    this.#owner = false;
  }

  #closed(error: VhostUserError | undefined): void {
    this.closed = true;
    try {
      this.#reset();
    } catch (e) {
      this.#srv.report(`vhost-user: cleanup failed: ${(e as Error).message}`);
    }
    this.#srv.sessionClosed(this, error?.code === "peer-closed" ? undefined : error);
  }

  // ---- DeviceContext ----

  /** @inheritdoc */
  get memory(): GuestMemoryMap {
    const table = this.#table;
    if (table === undefined) throw new RangeError("memory: no SET_MEM_TABLE yet");
    return table.memory;
  }
  /** @inheritdoc */
  get features(): bigint {
    return (this.#features ?? 0n) & ~PF_BIT;
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
  /** @inheritdoc */
  notifyConfigChange(): void {
    // Needs the back-end request channel (PROTOCOL_F_BACKEND_REQ), not offered.
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
