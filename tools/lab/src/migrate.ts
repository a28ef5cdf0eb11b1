// Suspend / encode / resume of a paravirtualized device: stop the queue (the device pops
// nothing more), drain what the back-end has in flight, encode device + queue state to bytes,
// and rebuild a fresh MmioDevice + device model from those bytes over the same guest memory
// and disk. Chains the old device never popped stay in the available ring; the new device pops
// them after a resume kick, so every request completes exactly once.
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import { DeviceStatus, MmioInterrupt, MmioVersion } from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  FEATURE_WORDS,
  MmioDevice,
  type MmioDeviceOptions,
  type NotificationData,
} from "@virtio-ts/transport";
import type { DescriptorChain, DeviceQueue, QueueState } from "@virtio-ts/virtqueue";

class GatedQueue implements DeviceQueue {
  readonly #gate: QueueGate;
  readonly #q: DeviceQueue;

  constructor(gate: QueueGate, q: DeviceQueue) {
    this.#gate = gate;
    this.#q = q;
  }
  get size(): number {
    return this.#q.size;
  }
  pop(chain: DescriptorChain): boolean {
    return !this.#gate.stopped && this.#q.pop(chain);
  }
  push(head: number, written: number): void {
    this.#q.push(head, written);
  }
  pushBatch(count: number, written: number): void {
    this.#q.pushBatch(count, written);
  }
  needsInterrupt(): boolean {
    return this.#q.needsInterrupt();
  }
  enableNotifications(): boolean {
    return !this.#gate.stopped && this.#q.enableNotifications();
  }
  disableNotifications(): void {
    this.#q.disableNotifications();
  }
  getState(): QueueState {
    return this.#q.getState();
  }
  setState(state: QueueState): void {
    this.#q.setState(state);
  }
}

/**
 * A {@link DeviceModel} wrapper that can stop its model's queues: while stopped, `pop` finds
 * nothing, so the model starts no new request, while completions of requests already in the
 * back-end still push used buffers and notify. This is the VMM's "stop the device" before
 * migration (QEMU's vm_stop + drain; vhost's GET_VRING_BASE), done from outside the model.
 */
export class QueueGate implements DeviceModel {
  /** The wrapped model. */
  readonly inner: DeviceModel;
  /** @inheritdoc */
  readonly deviceId: number;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize: number;
  /** Whether the queues are stopped. */
  stopped = false;
  #ctx: DeviceContext | undefined;
  readonly #gated = new Map<DeviceQueue, GatedQueue>();
  readonly #view: DeviceContext;

  /** @param inner - the model to gate */
  constructor(inner: DeviceModel) {
    this.inner = inner;
    this.deviceId = inner.deviceId;
    this.features = inner.features;
    this.queueMaxSizes = inner.queueMaxSizes;
    this.configSize = inner.configSize;
    const self = this;
    const ctx = (): DeviceContext => {
      if (self.#ctx === undefined) throw new TypeError("QueueGate used before activation");
      return self.#ctx;
    };
    this.#view = {
      get memory(): GuestMemory {
        return ctx().memory;
      },
      get features(): bigint {
        return ctx().features;
      },
      get numQueues(): number {
        return ctx().numQueues;
      },
      get epoch(): number {
        return ctx().epoch;
      },
      get needsReset(): boolean {
        return ctx().needsReset;
      },
      queue(index: number): DeviceQueue | undefined {
        const q = ctx().queue(index);
        if (q === undefined) return undefined;
        let g = self.#gated.get(q);
        if (g === undefined) {
          g = new GatedQueue(self, q);
          self.#gated.set(q, g);
        }
        return g;
      },
      queueLayout: (index) => ctx().queueLayout?.(index),
      interrupt: (index) => ctx().interrupt(index),
      signalUsed: (index) => ctx().signalUsed(index),
      notifyConfigChange: () => ctx().notifyConfigChange(),
      fail: (e) => ctx().fail(e),
      noteFault: (e) => ctx().noteFault(e),
      guard: (fn) => ctx().guard(fn),
    };
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.inner.readConfig(offset, size);
  }
  /** @inheritdoc */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.inner.writeConfig(offset, size, value);
  }
  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.inner.activate(this.#view);
  }
  /** @inheritdoc */
  onQueueNotify(index: number, data: NotificationData | undefined): void {
    if (!this.stopped) this.inner.onQueueNotify(index, data);
  }
  /** @inheritdoc */
  onQueueEnable(index: number): void {
    this.inner.onQueueEnable?.(index);
  }
  /** @inheritdoc */
  onQueueReset(index: number): void {
    this.inner.onQueueReset?.(index);
  }
  /** @inheritdoc */
  reset(): void {
    this.#gated.clear();
    this.inner.reset();
  }
  /** @inheritdoc */
  validateFeatures(features: bigint): boolean {
    return this.inner.validateFeatures?.(features) ?? true;
  }
}

/** Why migration bytes were refused. */
export type MigrationErrorCode =
  /** Not our format, or truncated / inconsistent. */
  | "bad-stream"
  /** The destination device differs (type, offered features, configuration, queues). */
  | "incompatible"
  /** The source was failed or needed a reset: nothing to resume. */
  | "source-failed"
  /** The destination refused a step of the replay (features, a queue). */
  | "refused";

/** The migration stream was refused (hostile or incompatible bytes never throw anything else). */
export class MigrationError extends VirtioError {
  /** Why. */
  readonly code: MigrationErrorCode;
  /** Byte offset in the stream where it went wrong (-1 when not about parsing). */
  readonly offset: number;

  /**
   * @param code - why
   * @param message - detail
   * @param offset - stream offset, or -1
   */
  constructor(code: MigrationErrorCode, message: string, offset = -1) {
    super(`${code}: ${message}`);
    this.code = code;
    this.offset = offset;
  }
}

/** The state of one queue in a {@link DeviceSnapshot}. */
export interface QueueSnapshot {
  /** Whether the queue was enabled. */
  readonly ready: boolean;
  /** Queue size. */
  readonly size: number;
  /** Descriptor area address. */
  readonly desc: number;
  /** Driver area address. */
  readonly driver: number;
  /** Device area address. */
  readonly device: number;
  /** Ring indices ({@link DeviceQueue.getState}). */
  readonly state: QueueState;
}

/** Everything a virtio-mmio device needs to resume elsewhere. */
export interface DeviceSnapshot {
  /** Device type. */
  readonly deviceId: number;
  /** MMIO Version register (only 2 is resumable). */
  readonly mmioVersion: number;
  /** Device status. */
  readonly status: number;
  /** Interrupt status bits pending (not yet acknowledged). */
  readonly interruptStatus: number;
  /** Features the device offered (the destination must offer the same). */
  readonly offered: bigint;
  /** Negotiated features. */
  readonly features: bigint;
  /** The device configuration space, byte for byte. */
  readonly config: Uint8Array;
  /** Per queue. */
  readonly queues: readonly QueueSnapshot[];
}

const MAGIC = 0x474d5456; // "VTMG" little-endian
const FORMAT = 1;
const QUEUE_BYTES = 1 + 1 + 2 + 2 + 2 + 3 * 8;
const MAX_CONFIG = 0xf00; // the MMIO config window

/**
 * Capture a stopped, drained device. Call with no request in the back-end (after the queue is
 * stopped and the model idle): state that lives only in flight is not captured.
 * @param mmio - the device
 */
export function snapshot(mmio: MmioDevice): DeviceSnapshot {
  const core = mmio.core;
  const config = new Uint8Array(core.model.configSize);
  for (let i = 0; i < config.length; i++) config[i] = core.model.readConfig(i, 1);
  const queues: QueueSnapshot[] = [];
  for (let i = 0; i < core.numQueues; i++) {
    const q = core.queue(i);
    queues.push({
      ready: core.queueReady(i),
      size: core.queueSize(i),
      desc: core.queueAddress(i, "desc"),
      driver: core.queueAddress(i, "driver"),
      device: core.queueAddress(i, "device"),
      state: q?.getState() ?? { availIdx: 0, usedIdx: 0, availWrap: true, usedWrap: true },
    });
  }
  return {
    deviceId: core.model.deviceId,
    mmioVersion: mmio.version,
    status: core.status,
    interruptStatus: core.interruptStatus,
    offered: core.offeredFeatures,
    features: core.features,
    config,
    queues,
  };
}

function putFeatures(v: DataView, at: number, f: bigint): void {
  for (let w = 0; w < FEATURE_WORDS; w++) {
    v.setUint32(at + 4 * w, Number((f >> BigInt(32 * w)) & 0xffffffffn), true);
  }
}

function getFeatures(v: DataView, at: number): bigint {
  let f = 0n;
  for (let w = 0; w < FEATURE_WORDS; w++)
    f |= BigInt(v.getUint32(at + 4 * w, true)) << BigInt(32 * w);
  return f;
}

/**
 * Encode a snapshot: "VTMG", format, device ID, MMIO version, status, interrupt status,
 * offered and negotiated features (4 × u32 each), configuration length + bytes, queue count,
 * then per queue ready, wrap flags, size, avail and used index, three u64 addresses. All
 * little-endian.
 */
export function encodeSnapshot(s: DeviceSnapshot): Uint8Array {
  const head = 4 + 2 + 2 + 4 + 32 + 2;
  const out = new Uint8Array(head + s.config.length + 2 + s.queues.length * QUEUE_BYTES);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint16(4, FORMAT, true);
  v.setUint16(6, s.deviceId, true);
  v.setUint8(8, s.mmioVersion);
  v.setUint8(9, s.status);
  v.setUint8(10, s.interruptStatus);
  putFeatures(v, 12, s.offered);
  putFeatures(v, 28, s.features);
  v.setUint16(44, s.config.length, true);
  out.set(s.config, head);
  let at = head + s.config.length;
  v.setUint16(at, s.queues.length, true);
  at += 2;
  for (const q of s.queues) {
    v.setUint8(at, q.ready ? 1 : 0);
    v.setUint8(at + 1, (q.state.availWrap ? 1 : 0) | (q.state.usedWrap ? 2 : 0));
    v.setUint16(at + 2, q.size & 0xffff, true);
    v.setUint16(at + 4, q.state.availIdx, true);
    v.setUint16(at + 6, q.state.usedIdx, true);
    v.setBigUint64(at + 8, BigInt(q.desc), true);
    v.setBigUint64(at + 16, BigInt(q.driver), true);
    v.setBigUint64(at + 24, BigInt(q.device), true);
    at += QUEUE_BYTES;
  }
  return out;
}

/**
 * Decode bytes from {@link encodeSnapshot}. Untrusted input: anything malformed is a
 * {@link MigrationError} "bad-stream" with the offset; nothing else is thrown.
 */
export function decodeSnapshot(bytes: Uint8Array): DeviceSnapshot {
  const bad = (why: string, at: number): never => {
    throw new MigrationError("bad-stream", why, at);
  };
  const head = 46;
  if (!(bytes instanceof Uint8Array) || bytes.length < head) bad("shorter than the header", 0);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) bad("no VTMG magic", 0);
  if (v.getUint16(4, true) !== FORMAT) bad(`format ${v.getUint16(4, true)} unknown`, 4);
  const cfgLen = v.getUint16(44, true);
  if (cfgLen > MAX_CONFIG) bad(`configuration of ${cfgLen} bytes`, 44);
  let at = head + cfgLen;
  if (bytes.length < at + 2) bad("truncated configuration", head);
  const config = bytes.slice(head, at);
  const n = v.getUint16(at, true);
  at += 2;
  if (bytes.length !== at + n * QUEUE_BYTES) bad(`${n} queues need ${n * QUEUE_BYTES} bytes`, at);
  const queues: QueueSnapshot[] = [];
  const addr = (o: number): number => {
    const a = v.getBigUint64(o, true);
    if (a > BigInt(Number.MAX_SAFE_INTEGER)) bad("queue address above 2^53", o);
    return Number(a);
  };
  for (let i = 0; i < n; i++, at += QUEUE_BYTES) {
    const ready = v.getUint8(at);
    const wraps = v.getUint8(at + 1);
    if (ready > 1 || wraps > 3) bad(`queue ${i} flags`, at);
    queues.push({
      ready: ready === 1,
      size: v.getUint16(at + 2, true),
      desc: addr(at + 8),
      driver: addr(at + 16),
      device: addr(at + 24),
      state: {
        availIdx: v.getUint16(at + 4, true),
        usedIdx: v.getUint16(at + 6, true),
        availWrap: (wraps & 1) !== 0,
        usedWrap: (wraps & 2) !== 0,
      },
    });
  }
  return {
    deviceId: v.getUint16(6, true),
    mmioVersion: v.getUint8(8),
    status: v.getUint8(9),
    interruptStatus: v.getUint8(10),
    offered: getFeatures(v, 12),
    features: getFeatures(v, 28),
    config,
    queues,
  };
}

/**
 * Build a device from migration bytes: a fresh `MmioDevice` over `model` (a new instance of the
 * same model class over the same back-end) and `options.memory`, brought to the saved state by
 * the VMM itself — status, features, queue addresses, ring indices — then DRIVER_OK, the pending
 * interrupt re-raised, and one resume kick per queue so chains published but never popped are
 * served. Register accesses the VMM makes here are not guest exits (counters are zeroed).
 * @param bytes - from {@link encodeSnapshot}
 * @param model - the destination model (not yet activated)
 * @param options - memory, interrupt line
 * @throws MigrationError for bad or incompatible bytes (never anything else for the bytes)
 */
export function resumeFrom(
  bytes: Uint8Array,
  model: DeviceModel,
  options: Omit<MmioDeviceOptions, "version">,
): MmioDevice {
  const s = decodeSnapshot(bytes);
  if (s.mmioVersion !== MmioVersion.MODERN) {
    throw new MigrationError("incompatible", `MMIO version ${s.mmioVersion} is not resumable`);
  }
  if ((s.status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)) !== 0) {
    throw new MigrationError("source-failed", `source status 0x${s.status.toString(16)}`);
  }
  const mmio = new MmioDevice(model, { ...options, version: MmioVersion.MODERN });
  const core = mmio.core;
  if (model.deviceId !== s.deviceId) {
    throw new MigrationError("incompatible", `device ID ${model.deviceId} ≠ ${s.deviceId}`);
  }
  if (core.offeredFeatures !== s.offered) {
    throw new MigrationError("incompatible", "the destination offers different features");
  }
  if (model.configSize !== s.config.length || core.numQueues !== s.queues.length) {
    throw new MigrationError("incompatible", "configuration size or queue count differs");
  }
  for (let i = 0; i < s.config.length; i++) {
    if (model.readConfig(i, 1) !== s.config[i]) {
      throw new MigrationError("incompatible", `configuration byte ${i} differs`);
    }
  }
  if ((s.status & DeviceStatus.DRIVER_OK) === 0) return mmio; // nothing negotiated yet
  core.writeStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  for (let w = 0; w < FEATURE_WORDS; w++) {
    core.writeDriverFeatureWord(w, Number((s.features >> BigInt(32 * w)) & 0xffffffffn));
  }
  core.writeStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  if ((core.status & DeviceStatus.FEATURES_OK) === 0) {
    throw new MigrationError("refused", `features: ${core.featuresRefusal ?? "refused"}`);
  }
  s.queues.forEach((q, i) => {
    if (!q.ready) return;
    core.setQueueSize(i, q.size);
    for (const [area, a] of [
      ["desc", q.desc],
      ["driver", q.driver],
      ["device", q.device],
    ] as const) {
      core.setQueueAddressWord(i, area, false, a % 0x100000000);
      core.setQueueAddressWord(i, area, true, Math.floor(a / 0x100000000));
    }
    core.setQueueReady(i, 1);
    const dq = core.queue(i);
    if (dq === undefined) throw new MigrationError("refused", `queue ${i} was refused`);
    try {
      dq.setState(q.state);
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new MigrationError("refused", `queue ${i} state: ${e.message}`);
    }
  });
  core.writeStatus(s.status);
  if ((s.interruptStatus & MmioInterrupt.USED_BUFFER) !== 0) core.interrupt(0);
  s.queues.forEach((q, i) => {
    if (q.ready) core.notify(i);
  });
  mmio.resetCounters();
  return mmio;
}
