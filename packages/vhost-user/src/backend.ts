/**
 * The vhost-user **back-end** side (QEMU `docs/interop/vhost-user.rst`): a unix-socket server
 * that serves an unchanged virtio-ts `DeviceModel` (the very `BlkDevice` the VMM hosts
 * in-process) to a front-end such as QEMU's `vhost-user-blk-pci`, over the front-end's guest
 * memory mapped from the fds of SET_MEM_TABLE.
 *
 * Per connection it keeps the vring state set by SET_VRING_*; a ring runs a
 * `SplitDeviceQueue` over the mapped memory, kicks come from the kick eventfd, and the model's
 * interrupts write the call eventfd. The model sees an ordinary `DeviceContext`.
 * @module
 */
import { fstatSync, readlinkSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { GuestMemoryMap, VirtioError } from "@virtio-ts/memory";
import { BlkConfig, BlkFeature, DeviceId, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import {
  createDeviceQueue,
  type DeviceQueue,
  GatedDeviceQueue,
  type QueueLayout,
} from "@virtio-ts/virtqueue";
import { VhostUserConnection } from "./connection.js";
import { VhostUserError, type VhostUserErrorCode } from "./errors.js";
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
  type MemoryRegion,
  requestName,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserFlag,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "./messages.js";
import { loadNative, type NativeWatch, type VhostUserNative } from "./native.js";

const PAGE = 4096;
const PF_BIT = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
/** Ring features this back-end cannot serve: packed rings, and RING_RESET (needs RESET_VRING). */
const UNSERVED = featureMask(Feature.RING_PACKED) | featureMask(Feature.RING_RESET);

/** Protocol features offered (vhost-user.rst "Protocol features"): MQ, REPLY_ACK, CONFIG. */
export const VHOST_USER_BACKEND_PROTOCOL_FEATURES: bigint =
  (1n << BigInt(VhostUserProtocolFeature.MQ)) |
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG));

/**
 * Why the back-end closed a connection: the base {@link VhostUserError} code, plus a finer
 * `reason` for what the front-end did wrong.
 */
export type VhostUserBackendReason =
  /** A request that needs SET_OWNER (or other set-up) first, or one not allowed while the ring runs. */
  | "bad-state"
  /** SET_MEM_TABLE regions that overlap, are empty, exceed their fd, or cannot be mapped. */
  | "bad-region"
  /** A vring address outside every memory region, or a ring that does not fit in one. */
  | "bad-address"
  /** A number out of range: ring index, size, base, feature bits. */
  | "bad-value"
  /** A request or feature this back-end does not implement. */
  | "unsupported"
  /** Another connection is serving the device. */
  | "busy"
  /** The device model threw something other than a VirtioError (a bug), or a system call failed. */
  | "internal";

/** A front-end broke vhost-user.rst; the connection was closed with this error. */
export class VhostUserBackendError extends VhostUserError {
  /** What the front-end did wrong. */
  readonly reason: VhostUserBackendReason;

  /**
   * @param reason - the finer reason
   * @param message - human-readable detail
   * @param request - message type involved
   * @param value - offending value
   */
  constructor(reason: VhostUserBackendReason, message: string, request = 0, value = 0) {
    const code: VhostUserErrorCode =
      reason === "unsupported"
        ? "unsupported"
        : reason === "internal"
          ? "io-error"
          : "unexpected-message";
    super(code, `${reason}: ${message}`, request, value);
    this.reason = reason;
  }
}

/** Options of a {@link VhostUserBackend}. */
export interface VhostUserBackendOptions {
  /** GET_VRING_BASE waits at most this long for in-flight requests (default 5000 ms). */
  readonly drainTimeoutMs?: number;
  /**
   * Called when a connection closes: `error` says why (undefined for an orderly hang-up by
   * the front-end). Default: `console.warn` for errors.
   */
  readonly onConnectionClose?: (error: VhostUserError | undefined) => void;
  /** Where guest faults and model failures are reported. Default: `console.warn`. */
  readonly log?: (message: string) => void;
}

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

/** A mapped SET_MEM_TABLE region, for user-address translation. */
interface MappedRegion {
  readonly gpa: number;
  readonly size: number;
  readonly uaddr: bigint;
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
interface SessionHost {
  readonly offeredFeatures: bigint;
  readonly drainTimeoutMs: number;
  claim(s: object): boolean;
  release(s: object): void;
  sessionClosed(s: object, error: VhostUserError | undefined): void;
  report(message: string): void;
  ringSizeProblem(index: number, num: number): string | undefined;
}

/** One front-end connection: its vring state and memory, and the DeviceContext of the model. */
class Session implements DeviceContext {
  readonly #srv: SessionHost;
  readonly #n: VhostUserNative;
  readonly #conn: VhostUserConnection;
  readonly #model: DeviceModel;
  readonly #rings: Ring[];
  #chain: Promise<void> = Promise.resolve();
  #owner = false;
  #features: bigint | undefined = undefined;
  #protocol = 0n;
  #mem: GuestMemoryMap | undefined = undefined;
  #regions: MappedRegion[] = [];
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
        if (this.#mem === undefined) {
          throw new VhostUserBackendError(
            "bad-state",
            "SET_VRING_ADDR before SET_MEM_TABLE (its addresses are translated through the table)",
            m.request,
          );
        }
        // vhost-user.rst "Vring address description": front-end user (virtual) addresses.
        r.desc = this.#translate(a.desc, "desc", m);
        r.avail = this.#translate(a.avail, "avail", m);
        r.used = this.#translate(a.used, "used", m);
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
    if (regions.length === 0) {
      throw new VhostUserBackendError("bad-region", "SET_MEM_TABLE with no regions", m.request);
    }
    const mapped: MappedRegion[] = [];
    const options = regions.map((reg, i) => {
      const r = this.#mapRegion(reg, m.fds[i]!, i, m.request);
      mapped.push({ gpa: r.guestBase, size: r.size, uaddr: reg.userspaceAddr });
      return r;
    });
    // User ranges must not overlap either, or a ring address would be ambiguous.
    const byU = [...mapped].sort((a, b) => (a.uaddr < b.uaddr ? -1 : a.uaddr > b.uaddr ? 1 : 0));
    for (let i = 1; i < byU.length; i++) {
      if (byU[i]!.uaddr < byU[i - 1]!.uaddr + BigInt(byU[i - 1]!.size)) {
        throw new VhostUserBackendError(
          "bad-region",
          `SET_MEM_TABLE: user ranges overlap at 0x${byU[i]!.uaddr.toString(16)}`,
          m.request,
        );
      }
    }
    let map: GuestMemoryMap;
    try {
      map = new GuestMemoryMap(options);
    } catch (e) {
      throw new VhostUserBackendError(
        "bad-region",
        `SET_MEM_TABLE: ${(e as Error).message}`,
        m.request,
      );
    }
    // The fds may be closed now: the mappings stay. Old mappings are unmapped when their
    // buffers are collected (a running ring keeps its own until it stops).
    this.#closeFds(m.fds);
    this.#mem = map;
    this.#regions = mapped;
  }

  #mapRegion(
    reg: MemoryRegion,
    fd: number,
    i: number,
    request: number,
  ): { guestBase: number; size: number; buffer: ArrayBuffer; byteOffset: number } {
    const bad = (why: string): never => {
      throw new VhostUserBackendError(
        "bad-region",
        `SET_MEM_TABLE region ${i}: ${why}`,
        request,
        i,
      );
    };
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (reg.memorySize === 0n) bad("empty");
    if (reg.guestPhysAddr + reg.memorySize > max) bad("guest range beyond 2^53");
    if (reg.mmapOffset + reg.memorySize > max) bad("mmap range beyond 2^53");
    if (reg.userspaceAddr + reg.memorySize > 1n << 64n) bad("user range beyond 2^64");
    const size = Number(reg.memorySize);
    const offset = Number(reg.mmapOffset);
    const gpa = Number(reg.guestPhysAddr);
    if ((gpa - offset) % 8 !== 0) bad("guest address and mmap offset are not equally aligned");
    let st: ReturnType<typeof fstatSync>;
    try {
      st = fstatSync(fd);
    } catch (e) {
      return bad(`fstat failed: ${(e as Error).message}`);
    }
    // Touching pages beyond the end of the file would raise SIGBUS: refuse such regions.
    if (!st.isFile()) bad("the fd is not a memory file (memfd, shm, hugetlbfs)");
    if (offset + size > st.size) {
      bad(`mmap_offset + memory_size (${offset + size}) exceeds the fd's size (${st.size})`);
    }
    const inPage = offset % PAGE;
    const mapSize = Math.ceil((size + inPage) / PAGE) * PAGE;
    try {
      const [buffer] = this.#n.mmapShared(fd, mapSize, offset - inPage);
      return { guestBase: gpa, size, buffer, byteOffset: inPage };
    } catch (e) {
      return bad(`mmap failed: ${(e as Error).message}`);
    }
  }

  #translate(uaddr: bigint, what: string, m: VhostUserMessage): number {
    for (const r of this.#regions) {
      if (uaddr >= r.uaddr && uaddr < r.uaddr + BigInt(r.size)) {
        return r.gpa + Number(uaddr - r.uaddr);
      }
    }
    throw new VhostUserBackendError(
      "bad-address",
      `SET_VRING_ADDR: ${what} address 0x${uaddr.toString(16)} is outside every memory region`,
      m.request,
    );
  }

  #running(): boolean {
    return this.#rings.some((r) => r.queue !== undefined);
  }

  /** Start ring `index` if everything it needs is set (vhost-user.rst "Ring states"). */
  #tryStart(index: number, m: VhostUserMessage): void {
    const r = this.#rings[index]!;
    const f = this.#features;
    const mem = this.#mem;
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
    this.#mem = undefined;
    this.#regions = [];
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
    if (this.#mem === undefined) throw new RangeError("memory: no SET_MEM_TABLE yet");
    return this.#mem;
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
        this.#log(message);
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
