import { Worker } from "node:worker_threads";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask } from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  type DeviceNotifiers,
  SharedDoorbell,
} from "@virtio-ts/transport";
import type { QueueState } from "@virtio-ts/virtqueue";
import {
  ControlWord,
  VhostError,
  type VhostMemoryRegion,
  type VhostMessage,
  type VhostRequest,
} from "./protocol.js";

/** Which module builds the data-plane model inside the worker, and with what. */
export interface VhostWorkerSpec {
  /** URL (or `file:` path string) of an ES module the worker imports. */
  readonly module: string | URL;
  /**
   * Name of its export: a function `(args) => DeviceModel | Promise<DeviceModel>`. Back-ends
   * cannot cross threads, so the worker builds its own (opens the file, maps the buffer).
   */
  readonly export: string;
  /** Structured-cloneable argument of the factory (a path, a SharedArrayBuffer, options). */
  readonly args?: unknown;
}

/** Options of a {@link VhostDevice}. */
export interface VhostDeviceOptions {
  /**
   * A VMM-side instance of the same model class, used only for the control plane: device ID,
   * features, queue sizes and configuration space. Its queue methods are never called.
   */
  readonly description: DeviceModel;
  /** How the worker builds the data-plane instance. */
  readonly worker: VhostWorkerSpec;
  /** Busy-poll time after a kick, in µs (see `VhostBackendOptions.pollUs`). Default 0. */
  readonly pollUs?: number;
  /**
   * Buffers one call of the model uses before the worker decides a notification without
   * waiting for the end of its turn (see `VhostBackendOptions.usedBatch`). Default 8; 0 turns
   * it off.
   */
  readonly usedBatch?: number;
  /** A control request without reply after this long fails the device. Default 10000 ms. */
  readonly requestTimeoutMs?: number;
  /** GET_VRING_BASE drain bound in the worker. Default 5000 ms. */
  readonly drainTimeoutMs?: number;
  /**
   * A device reset waits at most this long for the worker to leave model code (see
   * {@link ControlWord}.BUSY) before returning. Default 100 ms.
   */
  readonly resetWaitMs?: number;
  /**
   * The worker entry script. Default: `vhost-worker.js` next to this module (the built
   * package). Tests running from TypeScript sources point it at `dist/vhost-worker.js`.
   */
  readonly script?: string | URL;
  /**
   * The call doorbell (irqfd analogue) the worker rings for used buffer notifications and this
   * device rings for configuration changes it raises itself. Default: a new one.
   */
  readonly call?: SharedDoorbell;
}

/** Counters of a {@link VhostDevice}. */
export interface VhostStats {
  /** Kicks that reached `onQueueNotify` on the VMM thread (0 while the doorbells work). */
  readonly vmmNotifies: number;
  /** Kick wake-ups the worker handled. */
  readonly workerKicks: number;
  /** Used buffer notifications the worker sent. */
  readonly workerInterrupts: number;
  /** Guest faults the worker's model reported. */
  readonly workerFaults: number;
  /** Busy-poll rounds that found work. */
  readonly workerPolls: number;
  /** Workers started (1 + restarts and respawns). */
  readonly workersStarted: number;
}

interface Pending {
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: VhostError) => void;
  readonly timer: ReturnType<typeof setTimeout>;
  readonly type: VhostRequest["type"];
}

type Body<T extends VhostRequest["type"]> = Omit<Extract<VhostRequest, { type: T }>, "id" | "type">;

const NO_NOTIFICATION_DATA = ~featureMask(Feature.NOTIFICATION_DATA);
const ZERO_STATE: QueueState = { availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true };

/**
 * The VMM side of a vhost device: a {@link DeviceModel} an `MmioDevice` hosts unchanged, whose
 * data plane runs in a worker thread (vhost-net / vhost-blk's point: a kick costs no exit
 * handled by the VMM thread). The VMM thread keeps the control plane (status, features,
 * configuration space through `options.description`); the worker hosts the same model class
 * over the shared guest memory and runs the rings and the back-end I/O.
 *
 * Notifications: each queue's kick goes to a {@link SharedDoorbell} (the ioeventfd analogue,
 * installed through {@link DeviceModel.notifiers}); QueueNotify writes ring it and the model's
 * `onQueueNotify` is never called on the VMM thread. The worker sets InterruptStatus bit 0 in a
 * shared word and rings {@link VhostDevice.call} (the irqfd analogue), which the driver side
 * waits on. Configuration change interrupts (including DEVICE_NEEDS_RESET) are raised by the
 * core on this thread: wire the core's `interrupt` option to `call.ring()` too, or rely on this
 * device ringing `call` after the failures it detects itself.
 *
 * Control: on activation (DRIVER_OK) it sends SET_OWNER (first time), SET_FEATURES,
 * SET_MEM_TABLE, per enabled queue SET_VRING_NUM / ADDR / BASE / KICK / CALL / ENABLE, and
 * SET_STATUS; a failed or unanswered request, a "fail" event from the worker's model, or the
 * worker's death puts the device into DEVICE_NEEDS_RESET (VIRTIO 1.3 §2.1.2) and rejects the
 * pending requests; the next activation after the driver's reset starts a fresh worker. A
 * device reset first fences the worker off guest memory (the EPOCH / BUSY handshake of
 * {@link ControlWord}), then sends RESET_OWNER.
 *
 * Guest memory must be a `GuestMemoryMap` over SharedArrayBuffers. VIRTIO_F_NOTIFICATION_DATA
 * is never offered (the kick word carries no data).
 *
 * @example
 * ```ts
 * const vhost = new VhostDevice({
 *   description: blkDescription(args),
 *   worker: { module: new URL("./blk.js", import.meta.url), export: "createBlkModel", args },
 * });
 * const mmio = new MmioDevice(vhost, { memory, interrupt: () => vhost.call.ring() });
 * ```
 */
export class VhostDevice implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId: number;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize: number;
  /** The kick doorbells, one per queue, and the shared interrupt status word. */
  readonly notifiers: DeviceNotifiers;
  /** The kick doorbells (ioeventfd analogues), one per queue. */
  readonly kicks: readonly SharedDoorbell[];
  /** The call doorbell (irqfd analogue): the driver side waits on it. */
  readonly call: SharedDoorbell;
  /** The model used for the control plane. */
  readonly description: DeviceModel;
  /** The failure that put the device into DEVICE_NEEDS_RESET (the first one), for diagnostics. */
  lastError: VhostError | undefined = undefined;

  readonly #spec: VhostWorkerSpec;
  readonly #script: string | URL;
  readonly #ctl: Int32Array;
  readonly #pollUs: number;
  readonly #usedBatch: number;
  readonly #timeoutMs: number;
  readonly #drainMs: number;
  readonly #resetWaitMs: number;
  #worker: Worker | undefined = undefined;
  #owned = false;
  #ctx: DeviceContext | undefined = undefined;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #vmmNotifies = 0;
  #started = 0;
  #lastSent: Promise<unknown> = Promise.resolve();

  /**
   * @param options - description model, worker factory, timeouts
   * @throws TypeError naming `options.description` or `options.worker`; RangeError naming a
   *   bad timeout
   */
  constructor(options: VhostDeviceOptions) {
    const d = options.description;
    if (typeof d !== "object" || d === null || !Array.isArray(d.queueMaxSizes)) {
      throw new TypeError("options.description must be a DeviceModel");
    }
    const w = options.worker;
    if (typeof w !== "object" || w === null || typeof w.export !== "string") {
      throw new TypeError("options.worker must be { module, export, args? }");
    }
    this.#pollUs = checkRange("options.pollUs", options.pollUs ?? 0, 0, 1e7);
    this.#usedBatch = checkRange("options.usedBatch", options.usedBatch ?? 8, 0, 65536);
    if (!Number.isInteger(this.#usedBatch)) {
      throw new RangeError(`options.usedBatch must be an integer, got ${this.#usedBatch}`);
    }
    this.#timeoutMs = checkRange(
      "options.requestTimeoutMs",
      options.requestTimeoutMs ?? 10_000,
      1,
      3_600_000,
    );
    this.#drainMs = checkRange(
      "options.drainTimeoutMs",
      options.drainTimeoutMs ?? 5000,
      1,
      3_600_000,
    );
    this.#resetWaitMs = checkRange("options.resetWaitMs", options.resetWaitMs ?? 100, 0, 60_000);
    this.description = d;
    this.deviceId = d.deviceId;
    this.features = d.features & NO_NOTIFICATION_DATA;
    this.queueMaxSizes = d.queueMaxSizes;
    this.configSize = d.configSize;
    this.#spec = w;
    this.#script = options.script ?? new URL("./vhost-worker.js", import.meta.url);
    const n = d.queueMaxSizes.length;
    const bells = new SharedArrayBuffer(Math.max(1, n) * SharedDoorbell.BYTES);
    this.kicks = d.queueMaxSizes.map((_, i) => new SharedDoorbell(bells, i * SharedDoorbell.BYTES));
    this.call = options.call ?? new SharedDoorbell();
    this.#ctl = new Int32Array(new SharedArrayBuffer(ControlWord.COUNT * 4));
    this.notifiers = {
      kicks: this.kicks,
      interruptStatus: this.#ctl.subarray(ControlWord.ISR, ControlWord.ISR + 1),
    };
  }

  /** Counters, read from the shared control block. */
  get stats(): VhostStats {
    const c = this.#ctl;
    return {
      vmmNotifies: this.#vmmNotifies,
      workerKicks: Atomics.load(c, ControlWord.KICKS_SEEN),
      workerInterrupts: Atomics.load(c, ControlWord.INTERRUPTS),
      workerFaults: Atomics.load(c, ControlWord.FAULTS),
      workerPolls: Atomics.load(c, ControlWord.POLLS),
      workersStarted: this.#started,
    };
  }

  /** Whether a worker is running. */
  get workerAlive(): boolean {
    return this.#worker !== undefined;
  }

  /** The worker's thread id (changes when a fresh worker starts), or -1. */
  get workerThreadId(): number {
    return this.#worker?.threadId ?? -1;
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.description.readConfig(offset, size);
  }

  /** @inheritdoc */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.description.writeConfig(offset, size, value);
  }

  /** @inheritdoc */
  validateFeatures(features: bigint): boolean {
    return this.description.validateFeatures?.(features) ?? true;
  }

  /** DRIVER_OK: hand the device to the worker (starting one if none runs). */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    const regions = sharedRegions(ctx.memory);
    if (regions === undefined) {
      this.#fault(
        new VhostError(
          "vhost-bad-argument",
          "guest memory must be a GuestMemoryMap over SharedArrayBuffers",
        ),
      );
      return;
    }
    this.#ensureWorker();
    // Each ring starts where the core's queue stands: 0 for a new device, the saved position
    // for one the host restored (VirtioDeviceCore.restoreState).
    this.#start(
      ctx,
      regions,
      this.queueMaxSizes.map((_, i) => ctx.queue(i)?.getState()),
    );
  }

  /**
   * Not called while the kick doorbells are installed (the core rings them instead). If a
   * transport calls it anyway, the kick is forwarded to the worker.
   */
  onQueueNotify(index: number): void {
    this.#vmmNotifies++;
    this.kicks[index]?.ring();
  }

  /** A queue was enabled after activation (after a queue reset): start its ring. */
  onQueueEnable(index: number): void {
    const ctx = this.#ctx;
    if (ctx === undefined || this.#worker === undefined) return;
    this.#setupRing(ctx, index, ZERO_STATE);
  }

  /**
   * A queue was reset or disabled (§2.6.1): fence the worker off guest memory, then stop the
   * ring without draining (its requests belong to nobody now).
   */
  onQueueReset(index: number): void {
    if (this.#worker === undefined) return;
    const epoch = this.#fence();
    this.#send("SET_VRING_ENABLE", { index, enable: false, epoch });
  }

  /** The device was reset: fence the worker off guest memory and reset its model. */
  reset(): void {
    this.#ctx = undefined;
    if (this.#worker === undefined) return;
    this.#fence();
    if (this.#owned) {
      this.#owned = false;
      this.#send("RESET_OWNER", {}).catch(() => {});
    }
  }

  /**
   * Stop every running ring (GET_VRING_BASE: the worker stops popping, lets in-flight requests
   * complete, and reports where each ring stands).
   * @returns each queue's state (undefined for queues not enabled)
   * @throws VhostError if there is no active device or a ring did not drain
   */
  async stop(): Promise<(QueueState | undefined)[]> {
    const ctx = this.#ctx;
    if (ctx === undefined || this.#worker === undefined) {
      throw new VhostError("vhost-bad-state", "stop: the device is not active");
    }
    const states = await Promise.all(
      this.queueMaxSizes.map((_, i) =>
        ctx.queueLayout?.(i) === undefined
          ? undefined
          : (this.#send("GET_VRING_BASE", { index: i }) as Promise<QueueState>),
      ),
    );
    return states;
  }

  /**
   * Suspend hook of the device contract: stop the rings in the worker, draining what is in
   * flight, and report where each stands (as {@link VhostDevice.stop}). The host saves these
   * states; the worker keeps running, idle.
   * @throws VhostError if the device is not active or a ring did not drain
   */
  stopRings(): Promise<(QueueState | undefined)[]> {
    return this.stop();
  }

  /**
   * Suspend hook of the device contract: a cancelled suspend restarts the rings in the same
   * worker from the states {@link VhostDevice.stopRings} reported. A failure puts the device
   * into DEVICE_NEEDS_RESET.
   * @param states - per queue, where its ring stood
   */
  startRings(states: readonly (QueueState | undefined)[]): void {
    const ctx = this.#ctx;
    const regions = ctx === undefined ? undefined : sharedRegions(ctx.memory);
    if (ctx === undefined || regions === undefined || this.#worker === undefined) return;
    this.#start(ctx, regions, states).catch(() => {});
  }

  /**
   * Stop the rings (as {@link VhostDevice.stop}) and resume them where they stopped
   * (SET_VRING_BASE), in the same worker or, with `fresh`, in a new one (the old worker is
   * terminated once its rings drained). No request is lost or repeated: the guest keeps
   * kicking meanwhile and the kick words keep the count.
   * @throws VhostError if the device is not active or a step failed (the device then needs a
   *   reset)
   */
  async restart(options: { readonly fresh?: boolean } = {}): Promise<void> {
    const ctx = this.#ctx;
    const states = await this.stop();
    if (ctx !== this.#ctx || ctx === undefined) {
      throw new VhostError("vhost-bad-state", "restart: the device was reset meanwhile");
    }
    if (options.fresh === true) {
      const old = this.#worker;
      this.#worker = undefined;
      this.#owned = false;
      this.#rejectAll(new VhostError("vhost-worker-died", "worker replaced"));
      await old?.terminate();
      this.#ensureWorker();
    }
    const regions = sharedRegions(ctx.memory)!;
    await this.#start(ctx, regions, states);
  }

  /** Resolves once every control request sent so far has been answered (rejects if one failed). */
  async settled(): Promise<void> {
    await this.#lastSent;
  }

  /** Terminate the worker (the device stops serving; a later activation starts a new one). */
  async close(): Promise<void> {
    const w = this.#worker;
    this.#worker = undefined;
    this.#owned = false;
    this.#rejectAll(new VhostError("vhost-worker-died", "closed"));
    await w?.terminate();
  }

  // ---- internals ----

  #ensureWorker(): void {
    if (this.#worker !== undefined) return;
    const w = new Worker(this.#script, {
      workerData: {
        module: String(this.#spec.module),
        export: this.#spec.export,
        args: this.#spec.args,
        pollUs: this.#pollUs,
        usedBatch: this.#usedBatch,
        drainTimeoutMs: this.#drainMs,
      },
      // The worker resolves @virtio-ts/* like any consumer (no test-runner loader flags); under
      // `node --cpu-prof` the data plane thread is profiled too.
      execArgv: process.execArgv.filter((a) => a.startsWith("--cpu-prof")),
    });
    this.#worker = w;
    this.#started++;
    w.on("message", (m: VhostMessage) => {
      if (this.#worker === w) this.#onMessage(m);
    });
    const died = (why: string) => {
      if (this.#worker !== w) return;
      this.#worker = undefined;
      this.#owned = false;
      const e = new VhostError("vhost-worker-died", why);
      this.#rejectAll(e);
      this.#fault(e);
    };
    w.on("error", (e) => died(`worker error: ${e instanceof Error ? e.message : String(e)}`));
    w.on("messageerror", () => died("worker message could not be deserialized"));
    w.on("exit", (code) => died(`worker exited with code ${code}`));
  }

  /** Send the activation sequence; `states` resumes rings (empty: fresh rings from 0). */
  #start(
    ctx: DeviceContext,
    regions: VhostMemoryRegion[],
    states: readonly (QueueState | undefined)[],
  ): Promise<unknown> {
    if (!this.#owned) {
      this.#owned = true;
      this.#send("SET_OWNER", { control: { buffer: this.#ctl.buffer as SharedArrayBuffer } });
      this.#send("SET_FEATURES", { features: ctx.features });
      this.#send("SET_MEM_TABLE", { regions });
    }
    for (let i = 0; i < this.queueMaxSizes.length; i++) {
      if (ctx.queueLayout?.(i) !== undefined) this.#setupRing(ctx, i, states[i] ?? ZERO_STATE);
    }
    return this.#send("SET_STATUS", {
      status: DeviceStatus.DRIVER_OK,
      epoch: Atomics.load(this.#ctl, ControlWord.EPOCH),
    });
  }

  #setupRing(ctx: DeviceContext, index: number, base: QueueState): void {
    const l = ctx.queueLayout?.(index);
    if (l === undefined) return;
    this.#send("SET_VRING_NUM", { index, num: l.size });
    this.#send("SET_VRING_ADDR", { index, desc: l.desc, driver: l.driver, device: l.device });
    this.#send("SET_VRING_BASE", { index, state: base });
    this.#send("SET_VRING_KICK", { index, doorbell: this.kicks[index]!.handle });
    this.#send("SET_VRING_CALL", { index, doorbell: this.call.handle });
    this.#send("SET_VRING_ENABLE", { index, enable: true });
  }

  /**
   * Fence the worker off guest memory: bump EPOCH, then wait (bounded) until the worker is not
   * inside model code. After this, the worker's next guard sees the new epoch and skips.
   * @returns the new epoch
   */
  #fence(): number {
    const c = this.#ctl;
    const epoch = (Atomics.add(c, ControlWord.EPOCH, 1) + 1) >>> 0;
    const deadline = performance.now() + this.#resetWaitMs;
    // Model code holds BUSY for one kick's or one completion's work: at most 256 chains per
    // call (the worker's weight), microseconds each, a millisecond or so with a synchronous
    // back-end; the bound covers a worker that died inside it.
    while (Atomics.load(c, ControlWord.BUSY) !== 0 && performance.now() < deadline) {
      Atomics.wait(c, ControlWord.BUSY, 1, 1);
    }
    return epoch;
  }

  #send<T extends VhostRequest["type"]>(type: T, body: Body<T>): Promise<unknown> {
    const w = this.#worker;
    if (w === undefined) {
      const rejected = Promise.reject(new VhostError("vhost-worker-died", "no worker", type));
      rejected.catch(() => {});
      return rejected;
    }
    const id = this.#nextId++;
    const p = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        const e = new VhostError("vhost-timeout", `no reply in ${this.#timeoutMs} ms`, type);
        reject(e);
        this.#fault(e);
      }, this.#timeoutMs);
      timer.unref?.();
      this.#pending.set(id, { resolve, reject, timer, type });
    });
    // Every request's failure fails the device; callers that await it see the error too.
    p.catch((e: VhostError) => {
      if (e.code !== "vhost-worker-died") this.#fault(e);
    });
    this.#lastSent = p;
    w.postMessage({ ...body, type, id });
    return p;
  }

  #onMessage(m: VhostMessage): void {
    if (typeof m !== "object" || m === null) return;
    if (m.type === "reply") {
      const p = this.#pending.get(m.id);
      if (p === undefined) return;
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(new VhostError(m.code, m.message, p.type));
    } else if (m.type === "fail") {
      this.#fault(new VhostError("vhost-device-failed", `${m.code}: ${m.message}`));
    } else if (m.type === "config-change") {
      this.#ctx?.notifyConfigChange();
      this.call.ring();
    }
  }

  #rejectAll(e: VhostError): void {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.#pending.clear();
  }

  /** DEVICE_NEEDS_RESET (§2.1.2) with a configuration change interrupt the driver can see. */
  #fault(e: VhostError): void {
    const ctx = this.#ctx;
    // Keep the first cause: requests after it fail too, only because of it.
    if (ctx?.needsReset === true) return;
    this.lastError = e;
    if (ctx === undefined) return;
    ctx.fail(e);
    this.call.ring();
  }
}

function sharedRegions(memory: unknown): VhostMemoryRegion[] | undefined {
  if (!(memory instanceof GuestMemoryMap) || !memory.shared) return undefined;
  return memory.regions.map((r) => ({
    guestBase: r.guestBase,
    size: r.size,
    buffer: r.buffer as SharedArrayBuffer,
    byteOffset: r.byteOffset,
  }));
}

function checkRange(name: string, v: number, min: number, max: number): number {
  if (typeof v !== "number" || !(v >= min && v <= max)) {
    throw new RangeError(`${name} must be a number in [${min}, ${max}], got ${v}`);
  }
  return v;
}
