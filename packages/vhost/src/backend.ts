/**
 * The back-end side of the vhost control protocol: it owns a device model (the very same
 * `DeviceModel` class the VMM thread would host, e.g. `BlkDevice`), builds its virtqueues from
 * the SET_VRING_* state over the shared guest memory, and serves kicks from the kick doorbells
 * with a worker-side `DeviceContext`. It runs in a worker thread (see `vhost-worker.ts`); it
 * is transport-agnostic, so tests can also drive it in-thread through a MessageChannel.
 *
 * @module
 */
import { GuestMemoryMap, VirtioError } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask, MmioInterrupt } from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  RateLimitedLog,
  SharedDoorbell,
} from "@virtio-ts/transport";
import {
  createDeviceQueue,
  type DeviceQueue,
  GatedDeviceQueue,
  QueueConfigError,
  type QueueLayout,
  type QueueState,
} from "@virtio-ts/virtqueue";
import {
  ControlWord,
  type VhostErrorCode,
  type VhostMessage,
  type VhostRequest,
  type VhostRequestType,
} from "./protocol.js";

/** Options of a {@link VhostBackend}. */
export interface VhostBackendOptions {
  /**
   * After a kick, keep polling the rings (one round per event-loop turn, with driver
   * notifications disabled) for this many microseconds before sleeping on the kick word again
   * (vhost's busy-loop timeout, VHOST_SET_VRING_BUSYLOOP_TIMEOUT). Default 0: sleep at once.
   */
  readonly pollUs?: number;
  /**
   * Interrupt moderation by count within one call of the model: once a single call (a kick's
   * drain, one completion callback) has used this many buffers of a ring, decide its used
   * buffer notification now (EVENT_IDX or the driver's flags, §2.7.10) instead of at the end of
   * the worker's turn. A model with a synchronous back-end completes a whole burst inside one
   * call; the driver can then reap and refill the ring while the model works on, the two
   * threads overlap, and the worker need not sleep between bursts. Completions that arrive in
   * callbacks of their own (an asynchronous back-end) are not affected. 0: decide only at the
   * end of the turn. Default 8.
   */
  readonly usedBatch?: number;
  /**
   * Chains one call of the model may take for a kick before the worker lets control requests
   * and timers run and then serves the ring again (vhost's weight, `vhost_exceeds_weight`).
   * Default 256.
   */
  readonly weight?: number;
  /** GET_VRING_BASE waits at most this long for in-flight requests. Default 5000 ms. */
  readonly drainTimeoutMs?: number;
  /** Where guest faults are logged (rate-limited). Default: a `RateLimitedLog` on console.warn. */
  readonly log?: RateLimitedLog;
}

const V1 = featureMask(Feature.VERSION_1);
const ZERO_STATE: QueueState = { availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true };

/** A request refused with an error reply (never escapes {@link VhostBackend.handle}). */
class Refusal extends Error {
  readonly code: VhostErrorCode;
  constructor(code: VhostErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** One vring as the back-end sees it (vhost's `struct vhost_virtqueue`). */
class Ring {
  num = 0;
  layout: QueueLayout | undefined = undefined;
  base: QueueState = ZERO_STATE;
  kick: SharedDoorbell | undefined = undefined;
  call: SharedDoorbell | undefined = undefined;
  queue: GatedDeviceQueue | undefined = undefined;
  /** Bumped whenever the ring stops: a serving loop of an older generation exits. */
  gen = 0;
  serving = false;
  /**
   * `signalUsed` was called this turn; the decision waits for the end of the turn (or for
   * `usedBatch` buffers used in one call of the model).
   */
  signalPending = false;
  /** Buffers used since the last notification decision within model call `usedCall`. */
  usedSince = 0;
  usedCall = 0;
  /** Decide the used buffer notification of the running queue (run it under the guard). */
  decide: () => void = () => {};

  /** Stop serving: the loop of this generation exits at its next wake-up. */
  stop(): void {
    this.gen++;
    this.queue = undefined;
    // Wake a loop sleeping on the kick word so it sees the new generation and exits. The extra
    // count is a spurious kick for whoever serves the ring next (allowed, VIRTIO 1.3 §2.3).
    if (this.serving) this.kick?.ring();
  }
}

/**
 * Worker-side vhost back-end: handles {@link VhostRequest}s in order (each gets exactly one
 * reply), runs the model, and posts {@link VhostEvent}s. Nothing a request carries makes it
 * throw: bad arguments and requests in the wrong state get error replies. Model code runs inside
 * a guard: a `VirtioError` puts the device into DEVICE_NEEDS_RESET (a "fail" event); other
 * exceptions are bugs and propagate (in a worker they end it, which the front-end detects).
 */
export class VhostBackend implements DeviceContext {
  /** The device model, once the factory resolved. */
  model: DeviceModel | undefined = undefined;
  readonly #modelPromise: Promise<DeviceModel>;
  readonly #post: (m: VhostMessage) => void;
  readonly #pollMs: number;
  readonly #usedBatch: number;
  readonly #weight: number;
  readonly #drainMs: number;
  readonly #log: RateLimitedLog;
  #ctl: Int32Array | undefined = undefined;
  #rings: Ring[] = [];
  #memory: GuestMemoryMap | undefined = undefined;
  #features: bigint | undefined = undefined;
  #active = false;
  #failed = false;
  #ownerEpoch = 0;
  #localEpoch = 0;
  #depth = 0;
  /** Outer model calls so far (see `usedBatch`). */
  #calls = 0;
  #queueChain: Promise<void> = Promise.resolve();
  /** Rings whose used notification is decided at the end of this turn (see `signalUsed`). */
  readonly #signals: number[] = [];
  readonly #flushSignals = (): void => this.#decideSignals();

  /**
   * @param model - the model, or a promise of it (a factory still opening its back-end)
   * @param post - where replies and events go (`parentPort.postMessage`)
   * @param options - busy-poll time, drain timeout, log
   * @throws RangeError naming `options.pollUs`, `options.usedBatch`, `options.weight` or
   *   `options.drainTimeoutMs`
   */
  constructor(
    model: DeviceModel | Promise<DeviceModel>,
    post: (m: VhostMessage) => void,
    options: VhostBackendOptions = {},
  ) {
    const pollUs = options.pollUs ?? 0;
    if (!(pollUs >= 0 && pollUs <= 1e7)) {
      throw new RangeError(`options.pollUs must be a number in [0, 1e7], got ${pollUs}`);
    }
    const usedBatch = options.usedBatch ?? 8;
    if (!(Number.isInteger(usedBatch) && usedBatch >= 0 && usedBatch <= 65536)) {
      throw new RangeError(`options.usedBatch must be an integer in [0, 65536], got ${usedBatch}`);
    }
    this.#usedBatch = usedBatch;
    const weight = options.weight ?? 256;
    if (!(Number.isInteger(weight) && weight >= 1 && weight <= 65536)) {
      throw new RangeError(`options.weight must be an integer in [1, 65536], got ${weight}`);
    }
    this.#weight = weight;
    const drain = options.drainTimeoutMs ?? 5000;
    if (!(drain > 0 && drain <= 3_600_000)) {
      throw new RangeError(`options.drainTimeoutMs must be in (0, 3600000], got ${drain}`);
    }
    this.#pollMs = pollUs / 1000;
    this.#drainMs = drain;
    this.#post = post;
    this.#log = options.log ?? new RateLimitedLog();
    this.#modelPromise = Promise.resolve(model);
    // Keep an unhandled rejection from killing the worker before SET_OWNER reports it.
    this.#modelPromise.catch(() => {});
  }

  /**
   * Handle one message from the front-end. Requests are processed strictly in arrival order
   * (a GET_VRING_BASE that drains delays the ones after it), each answered exactly once.
   * Messages without a numeric `id` and a string `type` are ignored.
   */
  handle(message: unknown): void {
    if (typeof message !== "object" || message === null) return;
    const m = message as { id?: unknown; type?: unknown };
    if (typeof m.id !== "number" || typeof m.type !== "string") return;
    const req = message as VhostRequest;
    this.#queueChain = this.#queueChain.then(() => this.#dispatch(req));
  }

  async #dispatch(req: VhostRequest): Promise<void> {
    let value: bigint | QueueState | undefined;
    try {
      value = await this.#request(req);
    } catch (e) {
      if (e instanceof Refusal) {
        this.#post({ type: "reply", id: req.id, ok: false, code: e.code, message: e.message });
        return;
      }
      throw e;
    }
    this.#post({ type: "reply", id: req.id, ok: true, value });
  }

  async #request(req: VhostRequest): Promise<bigint | QueueState | undefined> {
    const type: VhostRequestType = req.type;
    if (type === "SET_OWNER")
      return this.#setOwner(req as Extract<VhostRequest, { type: "SET_OWNER" }>);
    const model = this.model;
    if (model === undefined || this.#ctl === undefined) {
      if (isKnown(type)) throw new Refusal("vhost-bad-state", `${type} before SET_OWNER`);
      throw new Refusal("vhost-bad-argument", `unknown request ${String(type)}`);
    }
    switch (req.type) {
      case "RESET_OWNER":
        this.#resetOwner();
        return undefined;
      case "GET_FEATURES":
        return model.features | V1;
      case "SET_FEATURES":
        this.#setFeatures(model, req.features);
        return undefined;
      case "SET_MEM_TABLE":
        this.#setMemTable(req.regions);
        return undefined;
      case "SET_VRING_NUM": {
        const r = this.#stoppedRing(req.index, type);
        const max = model.queueMaxSizes[req.index]!;
        if (!Number.isInteger(req.num) || req.num < 1 || req.num > max) {
          throw new Refusal(
            "vhost-bad-argument",
            `SET_VRING_NUM: num must be in [1, ${max}], got ${req.num}`,
          );
        }
        r.num = req.num;
        return undefined;
      }
      case "SET_VRING_ADDR": {
        const r = this.#stoppedRing(req.index, type);
        for (const k of ["desc", "driver", "device"] as const) {
          if (!Number.isSafeInteger(req[k]) || req[k] < 0) {
            throw new Refusal(
              "vhost-bad-argument",
              `SET_VRING_ADDR: ${k} must be a guest address, got ${req[k]}`,
            );
          }
        }
        r.layout = { size: 0, desc: req.desc, driver: req.driver, device: req.device };
        return undefined;
      }
      case "SET_VRING_BASE": {
        const r = this.#stoppedRing(req.index, type);
        const s = req.state;
        if (
          typeof s !== "object" ||
          s === null ||
          !isU16(s.availIdx) ||
          !isU16(s.usedIdx) ||
          typeof s.availWrap !== "boolean" ||
          typeof s.usedWrap !== "boolean"
        ) {
          throw new Refusal("vhost-bad-argument", "SET_VRING_BASE: state must be a QueueState");
        }
        r.base = {
          availIdx: s.availIdx,
          usedIdx: s.usedIdx,
          availWrap: s.availWrap,
          usedWrap: s.usedWrap,
        };
        return undefined;
      }
      case "SET_VRING_KICK":
      case "SET_VRING_CALL": {
        const r = this.#stoppedRing(req.index, type);
        let d: SharedDoorbell;
        try {
          d = SharedDoorbell.from(req.doorbell);
        } catch (e) {
          throw new Refusal("vhost-bad-argument", `${type}: ${(e as Error).message}`);
        }
        if (req.type === "SET_VRING_KICK") r.kick = d;
        else r.call = d;
        return undefined;
      }
      case "SET_VRING_ENABLE":
        if (req.enable) this.#enableRing(model, req.index);
        else this.#disableRing(model, this.#ring(req.index, type), req.index, req.epoch);
        return undefined;
      case "GET_VRING_BASE":
        return this.#getVringBase(model, req.index);
      case "SET_STATUS":
        if ((req.status & DeviceStatus.DRIVER_OK) !== 0) this.#activate(model, req.epoch);
        return undefined;
      default:
        throw new Refusal("vhost-bad-argument", `unknown request ${String(type)}`);
    }
  }

  async #setOwner(req: Extract<VhostRequest, { type: "SET_OWNER" }>): Promise<undefined> {
    if (this.#ctl !== undefined) throw new Refusal("vhost-bad-state", "SET_OWNER: already owned");
    const buf = req.control?.buffer;
    if (!(buf instanceof SharedArrayBuffer) || buf.byteLength < ControlWord.COUNT * 4) {
      throw new Refusal(
        "vhost-bad-argument",
        "SET_OWNER: control.buffer must be a SharedArrayBuffer of the control block size",
      );
    }
    let model: DeviceModel;
    try {
      model = await this.#modelPromise;
    } catch (e) {
      throw new Refusal(
        "vhost-factory",
        `the model factory failed: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    this.model = model;
    this.#ctl = new Int32Array(buf, 0, ControlWord.COUNT);
    this.#rings = model.queueMaxSizes.map(() => new Ring());
    return undefined;
  }

  #resetOwner(): void {
    for (const r of this.#rings) r.stop();
    this.#localEpoch++;
    this.model?.reset();
    this.#rings = this.model === undefined ? [] : this.model.queueMaxSizes.map(() => new Ring());
    this.#memory = undefined;
    this.#features = undefined;
    this.#active = false;
    this.#failed = false;
    this.#ctl = undefined;
  }

  #setFeatures(model: DeviceModel, features: bigint): void {
    if (this.#active) throw new Refusal("vhost-bad-state", "SET_FEATURES after DRIVER_OK");
    if (typeof features !== "bigint" || features < 0n) {
      throw new Refusal(
        "vhost-bad-argument",
        "SET_FEATURES: features must be a non-negative bigint",
      );
    }
    // Like vhost's SET_FEATURES (EOPNOTSUPP): only bits the model offers, plus VERSION_1.
    const extra = features & ~(model.features | V1);
    if (extra !== 0n) {
      throw new Refusal(
        "vhost-bad-argument",
        `SET_FEATURES: bits 0x${extra.toString(16)} are not supported`,
      );
    }
    if (model.validateFeatures?.(features) === false) {
      throw new Refusal("vhost-bad-argument", "SET_FEATURES: the model refuses this combination");
    }
    this.#features = features;
  }

  #setMemTable(regions: unknown): void {
    if (this.#active) throw new Refusal("vhost-bad-state", "SET_MEM_TABLE after DRIVER_OK");
    if (!Array.isArray(regions) || regions.length === 0 || regions.length > 256) {
      throw new Refusal("vhost-bad-argument", "SET_MEM_TABLE: regions must be 1 to 256 regions");
    }
    try {
      const map = new GuestMemoryMap(regions);
      if (!map.shared) throw new TypeError("every region must be a SharedArrayBuffer");
      this.#memory = map;
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError) {
        throw new Refusal("vhost-bad-argument", `SET_MEM_TABLE: ${e.message}`);
      }
      throw e;
    }
  }

  #ring(index: number, type: string): Ring {
    const r = Number.isInteger(index) ? this.#rings[index] : undefined;
    if (r === undefined) {
      throw new Refusal("vhost-bad-argument", `${type}: index must be a queue index, got ${index}`);
    }
    return r;
  }

  #stoppedRing(index: number, type: string): Ring {
    const r = this.#ring(index, type);
    if (r.queue !== undefined)
      throw new Refusal("vhost-bad-state", `${type}: ring ${index} is running`);
    return r;
  }

  #enableRing(model: DeviceModel, index: number): void {
    const r = this.#ring(index, "SET_VRING_ENABLE");
    if (r.queue !== undefined) return;
    const mem = this.#memory;
    const f = this.#features;
    if (mem === undefined || f === undefined || r.num === 0 || r.layout === undefined) {
      throw new Refusal(
        "vhost-bad-state",
        `SET_VRING_ENABLE: ring ${index} needs SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM and SET_VRING_ADDR first`,
      );
    }
    if (r.kick === undefined || r.call === undefined) {
      throw new Refusal(
        "vhost-bad-state",
        `SET_VRING_ENABLE: ring ${index} needs SET_VRING_KICK and SET_VRING_CALL first`,
      );
    }
    const layout = { ...r.layout, size: r.num };
    let q: DeviceQueue;
    try {
      q = createDeviceQueue(mem, layout, f);
      q.setState(r.base);
    } catch (e) {
      if (e instanceof QueueConfigError || e instanceof RangeError) {
        throw new Refusal("vhost-bad-argument", `SET_VRING_ENABLE: ring ${index}: ${e.message}`);
      }
      throw e;
    }
    r.layout = layout;
    // The model's view of the ring: stoppable for GET_VRING_BASE, and with kicks off while the
    // model is busy (vhost_disable_notify / vhost_enable_notify).
    const gated = new GatedDeviceQueue(q, { suppressWhileBusy: true });
    r.queue = gated;
    r.decide = () => {
      if (gated.needsInterrupt()) this.interrupt(index);
    };
    if (this.#usedBatch > 0) gated.onPushed = (n) => this.#onPushed(r, gated, n);
    if (this.#active) {
      this.#run(() => model.onQueueEnable?.(index));
      this.#serve(index, r);
    }
  }

  #disableRing(model: DeviceModel, r: Ring, index: number, epoch: unknown): void {
    if (r.queue !== undefined) {
      r.base = r.queue.getState();
      r.stop();
      this.#localEpoch++;
      this.#run(() => model.onQueueReset?.(index), true);
    }
    // The front-end bumped EPOCH before sending this (so nothing touched the ring meanwhile);
    // it tells us the value to serve under from now on. A later device reset bumps it again.
    if (this.#active && isU32(epoch)) this.#ownerEpoch = epoch;
  }

  async #getVringBase(model: DeviceModel, index: number): Promise<QueueState> {
    const r = this.#ring(index, "GET_VRING_BASE");
    const q = r.queue;
    if (q === undefined) return r.base;
    // vhost-user.rst: GET_VRING_BASE stops the ring. Stop popping, let what is in flight
    // complete (bounded), then save where the ring stands.
    q.stopping = true;
    let drained = q.inFlight === 0;
    if (!drained) {
      drained = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), this.#drainMs);
        q.onIdle = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
      q.onIdle = undefined;
    }
    const state = q.getState();
    r.base = state;
    r.stop();
    this.#localEpoch++;
    this.#run(() => model.onQueueReset?.(index), true);
    if (!drained) {
      throw new Refusal(
        "vhost-drain-timeout",
        `GET_VRING_BASE: ring ${index} still had ${q.inFlight} requests in flight after ${this.#drainMs} ms`,
      );
    }
    return state;
  }

  #activate(model: DeviceModel, epoch: unknown): void {
    if (this.#active) return;
    if (this.#features === undefined || this.#memory === undefined) {
      throw new Refusal(
        "vhost-bad-state",
        "SET_STATUS DRIVER_OK before SET_FEATURES and SET_MEM_TABLE",
      );
    }
    if (!isU32(epoch)) throw new Refusal("vhost-bad-argument", "SET_STATUS: epoch must be a u32");
    this.#ownerEpoch = epoch;
    this.#active = true;
    this.#run(() => model.activate(this));
    this.#rings.forEach((r, i) => {
      if (r.queue !== undefined) this.#serve(i, r);
    });
  }

  /**
   * Serve ring `index` until it stops: process it once (it may already hold buffers, and kicks
   * may have arrived before we listened), then sleep on the kick word (`Atomics.waitAsync`, so
   * back-end completions and control messages keep running), optionally busy-polling first.
   */
  #serve(index: number, r: Ring): void {
    const gen = r.gen;
    const kick = r.kick!;
    r.serving = true;
    const loop = async (): Promise<void> => {
      while (r.gen === gen && !this.#failed) {
        kick.take();
        Atomics.add(this.#ctl!, ControlWord.KICKS_SEEN, 1);
        const q = r.queue;
        const before = q?.pops ?? 0;
        this.#notify(index, r);
        if (this.#pollMs > 0) await this.#poll(index, r, gen);
        if (r.gen !== gen || q === undefined) break;
        // Before sleeping, ask for kicks again (the driver only kicks past avail_event). If
        // buffers arrived meanwhile and the last pass made progress, serve them first; if it
        // made none, the model is saturated and pops again from its own completions.
        if (this.#guard(() => q.enableNotifications(), false) === true && q.pops !== before) {
          // Progress, and more buffers: serve them after one event-loop turn, so that a driver
          // that keeps the ring fed cannot keep control requests waiting.
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        if (kick.pending() === 0) await kick.wait();
      }
      if (r.gen === gen) r.serving = false;
    };
    loop().catch((e) => {
      // A bug in model code (not a VirtioError): let the worker die; the front-end sees it.
      setTimeout(() => {
        throw e;
      });
    });
  }

  /** Busy-poll ring `index` with notifications off, one round per event-loop turn. */
  async #poll(index: number, r: Ring, gen: number): Promise<void> {
    const q = r.queue;
    if (q === undefined) return;
    q.polling = true;
    q.disableNotifications();
    let deadline = performance.now() + this.#pollMs;
    for (;;) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (r.gen !== gen || this.#failed) {
        q.polling = false;
        return;
      }
      const before = q.inFlight;
      this.#notify(index, r);
      if (q.inFlight > before) {
        Atomics.add(this.#ctl!, ControlWord.POLLS, 1);
        deadline = performance.now() + this.#pollMs;
      } else if (performance.now() >= deadline) {
        // Re-enable kicks; if buffers arrived in between, keep polling (no lost wake-up).
        if (!this.#guard(() => q.enableNotifications(), false)) {
          q.polling = false;
          return;
        }
        deadline = performance.now() + this.#pollMs;
        q.disableNotifications();
      }
    }
  }

  /**
   * One call of the model for a kick of ring `index`, taking at most `weight` chains (vhost's
   * `vhost_exceeds_weight`): a model with a synchronous back-end would otherwise go on
   * for as long as the driver keeps the ring fed, holding BUSY and leaving control requests
   * and the reset fence waiting. The serving loop finds the rest when it re-enables
   * notifications, and serves it after a turn of the event loop.
   */
  #notify(index: number, r: Ring): void {
    const q = r.queue;
    if (q === undefined || !this.#active) return;
    const model = this.model!;
    q.popBudget = this.#weight;
    try {
      this.#run(() => model.onQueueNotify(index, undefined));
    } finally {
      q.popBudget = Number.POSITIVE_INFINITY;
    }
  }

  /**
   * Run model code in the busy region; unless `evenIfStale` (forgetting state touches no guest
   * memory), skip it when the front-end reset the device since activation.
   */
  #run(fn: () => void, evenIfStale = false): void {
    this.#guard(fn, evenIfStale);
  }

  // ---- DeviceContext ----

  /** @inheritdoc */
  get memory(): GuestMemoryMap {
    const m = this.#memory;
    if (m === undefined) throw new RangeError("memory: no SET_MEM_TABLE yet");
    return m;
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
    // The sum of two counters that only grow changes whenever either does.
    const shared = this.#ctl === undefined ? 0 : Atomics.load(this.#ctl, ControlWord.EPOCH);
    return (shared + this.#localEpoch) >>> 0;
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
    const ctl = this.#ctl;
    if (!this.#active || r?.queue === undefined || r.call === undefined || ctl === undefined) {
      return false;
    }
    if (Atomics.load(ctl, ControlWord.EPOCH) !== this.#ownerEpoch) return false;
    // Set the status bit before ringing: a driver woken by the call reads InterruptStatus.
    Atomics.or(ctl, ControlWord.ISR, MmioInterrupt.USED_BUFFER);
    Atomics.add(ctl, ControlWord.INTERRUPTS, 1);
    r.call.ring();
    return true;
  }

  /**
   * Decide the used buffer notification of ring `index` at the end of this turn of the
   * worker's event loop, once for every completion of the turn (interrupt moderation: the
   * back-end's completions of one poll phase arrive together, and each `needsInterrupt` with
   * EVENT_IDX would otherwise interrupt as soon as the guest re-armed). The driver sees the
   * interrupt one turn later, microseconds, and the VMM thread wakes once per batch.
   * @returns true if the decision is scheduled (false for a ring that is not running)
   */
  signalUsed(index: number): boolean {
    const r = this.#rings[index];
    if (r?.queue === undefined) return false;
    if (!r.signalPending) {
      r.signalPending = true;
      if (this.#signals.length === 0) setImmediate(this.#flushSignals);
      this.#signals.push(index);
    }
    return true;
  }

  /**
   * `count` buffers of ring `r` (running queue `q`) were used: after `usedBatch` of them in this
   * model call since the last decision, decide the notification now.
   */
  #onPushed(r: Ring, q: GatedDeviceQueue, count: number): void {
    if (r.usedCall !== this.#calls) {
      r.usedCall = this.#calls;
      r.usedSince = 0;
    }
    r.usedSince += count;
    if (r.usedSince < this.#usedBatch || r.queue !== q) return;
    r.usedSince = 0;
    // A nested guard: a hostile event suppression area (an offset past the ring) fails the
    // device here instead of throwing out of the model's push, whose buffers are used already.
    this.#guard(r.decide, false);
  }

  #decideSignals(): void {
    const list = this.#signals;
    for (let k = 0; k < list.length; k++) {
      const index = list[k]!;
      const r = this.#rings[index];
      if (r === undefined) continue;
      r.signalPending = false;
      // Stopped or reset since: a new ring starts from scratch (§2.6.1).
      if (r.queue === undefined) continue;
      this.#guard(r.decide, false);
    }
    list.length = 0;
  }

  /** @inheritdoc */
  notifyConfigChange(): void {
    this.#post({ type: "config-change" });
  }

  /** @inheritdoc */
  fail(error: VirtioError): void {
    this.noteFault(error);
    if (this.#failed) return;
    this.#failed = true;
    this.#post({ type: "fail", code: error.code, message: error.message });
  }

  /** @inheritdoc */
  noteFault(error: VirtioError): void {
    if (this.#ctl !== undefined) Atomics.add(this.#ctl, ControlWord.FAULTS, 1);
    this.#log.log(
      `vhost device ${this.model?.deviceId}: guest fault ${error.name}: ${error.message}`,
    );
  }

  /**
   * Run `fn` as model code: inside the busy region (see {@link ControlWord}), skipped when the
   * front-end reset the device since activation; a `VirtioError` becomes
   * {@link VhostBackend.fail}.
   */
  guard<T>(fn: () => T): T | undefined {
    return this.#guard(fn, false);
  }

  #guard<T>(fn: () => T, evenIfStale: boolean): T | undefined {
    const ctl = this.#ctl;
    if (ctl === undefined) return undefined;
    const outer = this.#depth === 0;
    if (outer) {
      this.#calls++;
      // Dekker-style handshake with the front-end's reset: publish BUSY, then read EPOCH (both
      // seq-cst). The front-end bumps EPOCH, then waits for BUSY 0.
      Atomics.store(ctl, ControlWord.BUSY, 1);
      if (
        !evenIfStale &&
        this.#active &&
        Atomics.load(ctl, ControlWord.EPOCH) !== this.#ownerEpoch
      ) {
        Atomics.store(ctl, ControlWord.BUSY, 0);
        return undefined;
      }
    }
    this.#depth++;
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      this.fail(e);
      return undefined;
    } finally {
      this.#depth--;
      if (outer) Atomics.store(ctl, ControlWord.BUSY, 0);
    }
  }
}

const KNOWN: ReadonlySet<string> = new Set<VhostRequestType>([
  "SET_OWNER",
  "RESET_OWNER",
  "GET_FEATURES",
  "SET_FEATURES",
  "SET_MEM_TABLE",
  "SET_VRING_NUM",
  "SET_VRING_ADDR",
  "SET_VRING_BASE",
  "GET_VRING_BASE",
  "SET_VRING_KICK",
  "SET_VRING_CALL",
  "SET_VRING_ENABLE",
  "SET_STATUS",
]);

function isKnown(type: string): boolean {
  return KNOWN.has(type);
}

function isU16(x: unknown): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= 0 && x <= 0xffff;
}

function isU32(x: unknown): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}
