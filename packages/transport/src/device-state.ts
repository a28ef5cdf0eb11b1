/**
 * The state of a suspended device as bytes: what `VirtioDeviceCore.saveState` captures and
 * `VirtioDeviceCore.restoreState` takes back, encoded in a versioned, checksummed format that
 * can cross a thread, a process or a machine. Decoding treats the bytes as hostile: anything
 * malformed, of another version or with a bad checksum is a typed {@link DeviceStateError},
 * nothing else is thrown, and nothing is allocated beyond the input's length.
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";
import type { InFlightChain, QueueState } from "@virtio-ts/virtqueue";

/** The format version {@link encodeDeviceState} writes and {@link decodeDeviceState} reads. */
export const DEVICE_STATE_VERSION = 1;

/** One queue of a {@link DeviceState}. */
export interface QueueSnapshot {
  /** Whether the queue was enabled (QueueReady, or a legacy non-zero QueuePFN). */
  readonly ready: boolean;
  /** The size the driver chose. */
  readonly size: number;
  /** Descriptor Area address (the enabled ring's, or what the driver wrote so far). */
  readonly desc: number;
  /** Driver Area address. */
  readonly driver: number;
  /** Device Area address. */
  readonly device: number;
  /** Legacy: QueuePFN (0 when not in use). */
  readonly pfn: number;
  /** Legacy: QueueAlign. */
  readonly align: number;
  /** Where the ring stands (device side), `DeviceQueue.getState`. */
  readonly state: QueueState;
  /** Chains popped and not pushed, served again first after the move. */
  readonly inFlight: readonly InFlightChain[];
}

/**
 * Everything a device needs to go on elsewhere: the core's registers, every queue with its
 * ring position and the chains in flight, the model's own state and the transport's.
 *
 * Field writers: the source device fills it; at the destination every field is untrusted
 * until `VirtioDeviceCore.restoreState` has checked it against the new device.
 */
export interface DeviceState {
  /** Device type (§5). */
  readonly deviceId: number;
  /** Whether the device ran the legacy interface. */
  readonly legacy: boolean;
  /** Whether the model had been activated (DRIVER_OK, or a legacy first use). */
  readonly active: boolean;
  /** The device status byte (§2.1). */
  readonly status: number;
  /** Interrupt status bits not yet acknowledged (bit 0 used buffer, bit 1 configuration). */
  readonly interruptStatus: number;
  /** The configuration generation (§2.5). */
  readonly configGeneration: number;
  /** Feature bits the device offered; the destination must offer the same. */
  readonly offeredFeatures: bigint;
  /** Feature bits the driver accepted (final after FEATURES_OK). */
  readonly driverFeatures: bigint;
  /** The device configuration space, byte for byte, to check the destination against. */
  readonly config: Uint8Array;
  /** One entry per queue of the device. */
  readonly queues: readonly QueueSnapshot[];
  /** What `DeviceModel.saveState` returned (empty when the model keeps no state of its own). */
  readonly model: Uint8Array;
  /** Opaque transport registers (MMIO selectors, later PCI), empty if none were saved. */
  readonly transport: Uint8Array;
}

/** Why device state bytes were refused. */
export type DeviceStateErrorCode =
  /** Not device state, truncated, or a field out of range. */
  | "device-state-format"
  /** A format version this code does not read. */
  | "device-state-version"
  /** The checksum does not match: the bytes were damaged (or forged without care). */
  | "device-state-checksum"
  /** The destination device differs (type, features, queues, configuration, model). */
  | "device-state-mismatch";

/**
 * Device state bytes (or a decoded state) were refused. Hostile or damaged input never makes
 * the decoder or the restore throw anything else; a model's own `restoreState` may add its own
 * `VirtioError`.
 */
export abstract class DeviceStateError extends VirtioError {
  /** Why. */
  abstract override readonly code: DeviceStateErrorCode;
}

/** The bytes are not a device state of this format (magic, length, a field out of range). */
export class DeviceStateFormatError extends DeviceStateError {
  /** @inheritdoc */
  readonly code = "device-state-format" as const;
  /** Byte offset where decoding stopped. */
  readonly offset: number;
  /**
   * @param message - what is wrong
   * @param offset - byte offset in the input
   */
  constructor(message: string, offset: number) {
    super(`device state: ${message} (at byte ${offset})`);
    this.offset = offset;
  }
}

/** The bytes carry a format version this code does not read. */
export class DeviceStateVersionError extends DeviceStateError {
  /** @inheritdoc */
  readonly code = "device-state-version" as const;
  /** The version found. */
  readonly version: number;
  /** The version this code reads ({@link DEVICE_STATE_VERSION}). */
  readonly supported: number;
  /** @param version - the version found */
  constructor(version: number) {
    super(
      `device state version ${version} is not supported (this code reads ${DEVICE_STATE_VERSION})`,
    );
    this.version = version;
    this.supported = DEVICE_STATE_VERSION;
  }
}

/** The checksum over the bytes does not match the one they carry. */
export class DeviceStateChecksumError extends DeviceStateError {
  /** @inheritdoc */
  readonly code = "device-state-checksum" as const;
  /** The CRC-32 the bytes carry. */
  readonly expected: number;
  /** The CRC-32 computed over them. */
  readonly actual: number;
  /**
   * @param expected - carried checksum
   * @param actual - computed checksum
   */
  constructor(expected: number, actual: number) {
    super(
      `device state checksum 0x${actual.toString(16)} does not match 0x${expected.toString(16)}: damaged bytes`,
    );
    this.expected = expected;
    this.actual = actual;
  }
}

/** The state does not fit the destination device (another type, disk, feature set…). */
export class DeviceStateMismatchError extends DeviceStateError {
  /** @inheritdoc */
  readonly code = "device-state-mismatch" as const;
  /** What differs, e.g. "deviceId", "offeredFeatures", "config[8]", "queues[1].state". */
  readonly field: string;
  /**
   * @param field - what differs
   * @param message - detail
   * @param cause - the underlying error, if any
   */
  constructor(field: string, message: string, cause?: unknown) {
    super(
      `device state does not fit this device: ${field}: ${message}`,
      cause === undefined ? undefined : { cause },
    );
    this.field = field;
  }
}

// ---- encoding ----
//
// All little-endian.
//   header   "VTDS" magic (u32 0x53445456), version u16, flags u16 (bit 0 legacy, bit 1
//            active), body length u32
//   body     deviceId u16, status u8, interruptStatus u8, configGeneration u32,
//            offeredFeatures 4 × u32, driverFeatures 4 × u32,
//            config length u16 + bytes, queue count u16, then per queue:
//              flags u8 (bit 0 ready, 1 availWrap, 2 usedWrap), pad u8, size u16,
//              availIdx u16, usedIdx u16, desc u64, driver u64, device u64, pfn u32, align u32,
//              in-flight count u16, then per chain: id u16, descriptor count u16, 16 bytes each
//            model length u32 + bytes, transport length u32 + bytes
//   trailer  CRC-32 (IEEE 802.3, as zlib) of header and body, u32

const MAGIC = 0x53445456; // "VTDS"
const HEADER = 12;
const FEATURE_WORDS = 4;
const QUEUE_FIXED = 1 + 1 + 2 + 2 + 2 + 3 * 8 + 4 + 4 + 2;
const F_LEGACY = 1;
const F_ACTIVE = 2;
const Q_READY = 1;
const Q_AVAIL_WRAP = 2;
const Q_USED_WRAP = 4;

/** Slicing-by-8 tables: `CRC_TABLE[k·256 + b]` is the CRC of byte `b` followed by `k` zero bytes. */
const CRC_TABLE = (() => {
  const t = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) {
      const p = t[(k - 1) * 256 + n]!;
      t[k * 256 + n] = (p >>> 8) ^ t[p & 0xff]!;
    }
  }
  return t;
})();

/**
 * CRC-32 (IEEE 802.3, reflected, the zlib / PNG checksum) of `data`, eight bytes a step
 * (slicing-by-8: a guest's RAM image of tens of MiB is checked in about 100 ms).
 * @param data - the bytes
 * @returns the checksum, an unsigned 32-bit integer
 */
export function crc32(data: Uint8Array): number {
  const t = CRC_TABLE;
  const n = data.length;
  let c = 0xffffffff;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const a = (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)) ^ c;
    c =
      t[1792 + (a & 0xff)]! ^
      t[1536 + ((a >>> 8) & 0xff)]! ^
      t[1280 + ((a >>> 16) & 0xff)]! ^
      t[1024 + (a >>> 24)]! ^
      t[768 + data[i + 4]!]! ^
      t[512 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
  }
  for (; i < n; i++) c = t[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function checkU(name: string, v: number, bits: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 2 ** bits - 1) {
    throw new RangeError(`${name} must be an integer in [0, 2^${bits}), got ${v}`);
  }
}

function checkAddr(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${v}`);
  }
}

/**
 * Encode a device state (see the format above).
 * @param state - from `VirtioDeviceCore.saveState`
 * @returns the bytes, checksummed
 * @throws RangeError naming a field of `state` that does not fit the format
 */
export function encodeDeviceState(state: DeviceState): Uint8Array {
  checkU("state.deviceId", state.deviceId, 16);
  checkU("state.status", state.status, 8);
  checkU("state.interruptStatus", state.interruptStatus, 8);
  checkU("state.configGeneration", state.configGeneration, 32);
  checkU("state.config.length", state.config.length, 16);
  checkU("state.queues.length", state.queues.length, 16);
  checkU("state.model.length", state.model.length, 32);
  checkU("state.transport.length", state.transport.length, 32);
  for (const [name, f] of [
    ["state.offeredFeatures", state.offeredFeatures],
    ["state.driverFeatures", state.driverFeatures],
  ] as const) {
    if (typeof f !== "bigint" || f < 0n || f >> BigInt(32 * FEATURE_WORDS) !== 0n) {
      throw new RangeError(`${name} must be a bigint of at most ${32 * FEATURE_WORDS} bits`);
    }
  }
  let bodyLen = 2 + 1 + 1 + 4 + 2 * 4 * FEATURE_WORDS + 2 + state.config.length + 2;
  state.queues.forEach((q, i) => {
    const n = `state.queues[${i}]`;
    checkU(`${n}.size`, q.size, 16);
    checkU(`${n}.state.availIdx`, q.state.availIdx, 16);
    checkU(`${n}.state.usedIdx`, q.state.usedIdx, 16);
    checkAddr(`${n}.desc`, q.desc);
    checkAddr(`${n}.driver`, q.driver);
    checkAddr(`${n}.device`, q.device);
    checkU(`${n}.pfn`, q.pfn, 32);
    checkU(`${n}.align`, q.align, 32);
    checkU(`${n}.inFlight.length`, q.inFlight.length, 16);
    bodyLen += QUEUE_FIXED;
    q.inFlight.forEach((c, k) => {
      checkU(`${n}.inFlight[${k}].id`, c.id, 16);
      if (c.descriptors.length % 4 !== 0) {
        throw new RangeError(`${n}.inFlight[${k}].descriptors must hold 4 words per descriptor`);
      }
      checkU(`${n}.inFlight[${k}].descriptors.length / 4`, c.descriptors.length / 4, 16);
      bodyLen += 4 + 4 * c.descriptors.length;
    });
  });
  bodyLen += 4 + state.model.length + 4 + state.transport.length;
  const out = new Uint8Array(HEADER + bodyLen + 4);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint16(4, DEVICE_STATE_VERSION, true);
  v.setUint16(6, (state.legacy ? F_LEGACY : 0) | (state.active ? F_ACTIVE : 0), true);
  v.setUint32(8, bodyLen, true);
  let at = HEADER;
  v.setUint16(at, state.deviceId, true);
  v.setUint8(at + 2, state.status);
  v.setUint8(at + 3, state.interruptStatus);
  v.setUint32(at + 4, state.configGeneration, true);
  at += 8;
  for (const f of [state.offeredFeatures, state.driverFeatures]) {
    for (let w = 0; w < FEATURE_WORDS; w++, at += 4) {
      v.setUint32(at, Number((f >> BigInt(32 * w)) & 0xffffffffn), true);
    }
  }
  v.setUint16(at, state.config.length, true);
  out.set(state.config, at + 2);
  at += 2 + state.config.length;
  v.setUint16(at, state.queues.length, true);
  at += 2;
  for (const q of state.queues) {
    v.setUint8(
      at,
      (q.ready ? Q_READY : 0) |
        (q.state.availWrap ? Q_AVAIL_WRAP : 0) |
        (q.state.usedWrap ? Q_USED_WRAP : 0),
    );
    v.setUint16(at + 2, q.size, true);
    v.setUint16(at + 4, q.state.availIdx, true);
    v.setUint16(at + 6, q.state.usedIdx, true);
    v.setBigUint64(at + 8, BigInt(q.desc), true);
    v.setBigUint64(at + 16, BigInt(q.driver), true);
    v.setBigUint64(at + 24, BigInt(q.device), true);
    v.setUint32(at + 32, q.pfn, true);
    v.setUint32(at + 36, q.align, true);
    v.setUint16(at + 40, q.inFlight.length, true);
    at += QUEUE_FIXED;
    for (const c of q.inFlight) {
      const n = c.descriptors.length / 4;
      v.setUint16(at, c.id, true);
      v.setUint16(at + 2, n, true);
      at += 4;
      for (let k = 0; k < c.descriptors.length; k++, at += 4) {
        v.setUint32(at, c.descriptors[k]!, true);
      }
    }
  }
  v.setUint32(at, state.model.length, true);
  out.set(state.model, at + 4);
  at += 4 + state.model.length;
  v.setUint32(at, state.transport.length, true);
  out.set(state.transport, at + 4);
  at += 4 + state.transport.length;
  v.setUint32(at, crc32(out.subarray(0, at)), true);
  return out;
}

/**
 * Decode bytes from {@link encodeDeviceState}. The bytes are untrusted: the header is checked
 * first (magic, then version, then length), then the checksum, then every field while it is
 * parsed.
 * @param bytes - the encoded state
 * @returns a state whose byte fields are copies (the input may be reused)
 * @throws DeviceStateFormatError, DeviceStateVersionError, DeviceStateChecksumError — and
 *   nothing else, for any input
 */
export function decodeDeviceState(bytes: Uint8Array): DeviceState {
  if (!(bytes instanceof Uint8Array)) throw new DeviceStateFormatError("not a Uint8Array", 0);
  if (bytes.length < HEADER + 4) throw new DeviceStateFormatError("shorter than a header", 0);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) throw new DeviceStateFormatError("no VTDS magic", 0);
  const version = v.getUint16(4, true);
  if (version !== DEVICE_STATE_VERSION) throw new DeviceStateVersionError(version);
  const flags = v.getUint16(6, true);
  const bodyLen = v.getUint32(8, true);
  if (bytes.length !== HEADER + bodyLen + 4) {
    throw new DeviceStateFormatError(
      `a body of ${bodyLen} bytes needs ${HEADER + bodyLen + 4} bytes, got ${bytes.length}`,
      8,
    );
  }
  const end = HEADER + bodyLen;
  const expected = v.getUint32(end, true);
  const actual = crc32(bytes.subarray(0, end));
  if (expected !== actual) throw new DeviceStateChecksumError(expected, actual);
  if ((flags & ~(F_LEGACY | F_ACTIVE)) !== 0) {
    throw new DeviceStateFormatError(`unknown flags 0x${flags.toString(16)}`, 6);
  }
  let at = HEADER;
  const need = (n: number, what: string): void => {
    if (at + n > end) throw new DeviceStateFormatError(`truncated ${what}`, at);
  };
  need(8 + 2 * 4 * FEATURE_WORDS + 2, "device fields");
  const deviceId = v.getUint16(at, true);
  const status = v.getUint8(at + 2);
  const interruptStatus = v.getUint8(at + 3);
  const configGeneration = v.getUint32(at + 4, true);
  at += 8;
  const features = (): bigint => {
    let f = 0n;
    for (let w = 0; w < FEATURE_WORDS; w++, at += 4) {
      f |= BigInt(v.getUint32(at, true)) << BigInt(32 * w);
    }
    return f;
  };
  const offeredFeatures = features();
  const driverFeatures = features();
  const configLen = v.getUint16(at, true);
  at += 2;
  need(configLen + 2, "configuration");
  const config = bytes.slice(at, at + configLen);
  at += configLen;
  const nQueues = v.getUint16(at, true);
  at += 2;
  const queues: QueueSnapshot[] = [];
  for (let i = 0; i < nQueues; i++) {
    need(QUEUE_FIXED, `queue ${i}`);
    const qf = v.getUint8(at);
    if ((qf & ~(Q_READY | Q_AVAIL_WRAP | Q_USED_WRAP)) !== 0 || v.getUint8(at + 1) !== 0) {
      throw new DeviceStateFormatError(`queue ${i} flags 0x${qf.toString(16)}`, at);
    }
    const addr = (o: number): number => {
      const a = v.getBigUint64(o, true);
      if (a > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new DeviceStateFormatError(`queue ${i} address above 2^53`, o);
      }
      return Number(a);
    };
    const size = v.getUint16(at + 2, true);
    const state: QueueState = {
      availIdx: v.getUint16(at + 4, true),
      usedIdx: v.getUint16(at + 6, true),
      availWrap: (qf & Q_AVAIL_WRAP) !== 0,
      usedWrap: (qf & Q_USED_WRAP) !== 0,
    };
    const desc = addr(at + 8);
    const driver = addr(at + 16);
    const device = addr(at + 24);
    const pfn = v.getUint32(at + 32, true);
    const align = v.getUint32(at + 36, true);
    const nChains = v.getUint16(at + 40, true);
    at += QUEUE_FIXED;
    const inFlight: InFlightChain[] = [];
    for (let k = 0; k < nChains; k++) {
      need(4, `queue ${i} chain ${k}`);
      const id = v.getUint16(at, true);
      const nDesc = v.getUint16(at + 2, true);
      at += 4;
      need(16 * nDesc, `queue ${i} chain ${k} descriptors`);
      const words = new Uint32Array(4 * nDesc);
      for (let w = 0; w < words.length; w++, at += 4) words[w] = v.getUint32(at, true);
      inFlight.push({ id, descriptors: words });
    }
    queues.push({
      ready: (qf & Q_READY) !== 0,
      size,
      desc,
      driver,
      device,
      pfn,
      align,
      state,
      inFlight,
    });
  }
  const blob = (what: string): Uint8Array => {
    need(4, what);
    const n = v.getUint32(at, true);
    at += 4;
    need(n, what);
    const b = bytes.slice(at, at + n);
    at += n;
    return b;
  };
  const model = blob("model state");
  const transport = blob("transport state");
  if (at !== end) throw new DeviceStateFormatError(`${end - at} bytes after the state`, at);
  return {
    deviceId,
    legacy: (flags & F_LEGACY) !== 0,
    active: (flags & F_ACTIVE) !== 0,
    status,
    interruptStatus,
    configGeneration,
    offeredFeatures,
    driverFeatures,
    config,
    queues,
    model,
    transport,
  };
}
