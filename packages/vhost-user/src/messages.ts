/**
 * The vhost-user message codec: constants, the 12-byte header, and the payload layouts of QEMU
 * `docs/interop/vhost-user.rst` ("Message Specification"). Role-agnostic: the front-end encodes
 * requests and decodes replies; a back-end does the opposite with the same functions.
 *
 * Every decoder takes bytes from an untrusted peer: it checks the exact size first and throws
 * {@link VhostUserError} "bad-size" (never reads out of bounds, never allocates in proportion to
 * a peer's number beyond the fixed limits here).
 * @module
 */
import { VhostUserError } from "./errors.js";

/**
 * Message types sent by the front-end (vhost-user.rst "Front-end message types"; ids as there).
 * Only the ones this package uses are encoded by helpers, but all are named so a log can say
 * which one a peer sent.
 */
export const VhostUserRequest = {
  /** Reply: u64 device features (bit 30: VHOST_USER_F_PROTOCOL_FEATURES). */
  GET_FEATURES: 1,
  /** u64 features the front-end accepts. */
  SET_FEATURES: 2,
  /** No payload: the sender owns the session. */
  SET_OWNER: 3,
  /** Deprecated. */
  RESET_OWNER: 4,
  /** Memory regions description, one fd per region. */
  SET_MEM_TABLE: 5,
  /** u64 log size (fd with LOG_SHMFD). */
  SET_LOG_BASE: 6,
  /** Log eventfd. */
  SET_LOG_FD: 7,
  /** Vring state: queue size. */
  SET_VRING_NUM: 8,
  /** Vring address description. */
  SET_VRING_ADDR: 9,
  /** Vring state: next available index. */
  SET_VRING_BASE: 10,
  /** Vring state; reply: vring state (stops the ring). */
  GET_VRING_BASE: 11,
  /** u64 ring index (bit 8: no fd); kick eventfd. */
  SET_VRING_KICK: 12,
  /** u64 ring index (bit 8: no fd); call eventfd. */
  SET_VRING_CALL: 13,
  /** u64 ring index (bit 8: no fd); error eventfd. */
  SET_VRING_ERR: 14,
  /** Reply: u64 protocol features. */
  GET_PROTOCOL_FEATURES: 15,
  /** u64 protocol features the front-end accepts. */
  SET_PROTOCOL_FEATURES: 16,
  /** Reply: u64 number of queues (with PROTOCOL_F_MQ). */
  GET_QUEUE_NUM: 17,
  /** Vring state: num 1 enables, 0 disables. */
  SET_VRING_ENABLE: 18,
  /** u64 (MAC in the first 6 bytes). */
  SEND_RARP: 19,
  /** u64 MTU. */
  NET_SET_MTU: 20,
  /** Back-end request channel socket fd. */
  SET_BACKEND_REQ_FD: 21,
  /** IOTLB message. */
  IOTLB_MSG: 22,
  /** Vring state: endianness. */
  SET_VRING_ENDIAN: 23,
  /** Device config space; reply: device config space (with PROTOCOL_F_CONFIG). */
  GET_CONFIG: 24,
  /** Device config space. */
  SET_CONFIG: 25,
  /** Crypto session description. */
  CREATE_CRYPTO_SESSION: 26,
  /** u64 session id. */
  CLOSE_CRYPTO_SESSION: 27,
  /** Reply: userfault fd. */
  POSTCOPY_ADVISE: 28,
  /** No payload. */
  POSTCOPY_LISTEN: 29,
  /** Reply: u64. */
  POSTCOPY_END: 30,
  /** Inflight description. */
  GET_INFLIGHT_FD: 31,
  /** Inflight description. */
  SET_INFLIGHT_FD: 32,
  /** GPU socket fd. */
  GPU_SET_SOCKET: 33,
  /** No payload (with PROTOCOL_F_RESET_DEVICE). */
  RESET_DEVICE: 34,
  /** Vring state (in-band kick). */
  VRING_KICK: 35,
  /** Reply: u64 maximum memory slots. */
  GET_MAX_MEM_SLOTS: 36,
  /** Single memory region description, one fd. */
  ADD_MEM_REG: 37,
  /** Single memory region description. */
  REM_MEM_REG: 38,
  /** u64 device status (with PROTOCOL_F_STATUS). */
  SET_STATUS: 39,
  /** Reply: u64 device status. */
  GET_STATUS: 40,
} as const;

/**
 * Message types the back-end sends on the back-end request channel (vhost-user.rst "Back-end
 * message types"; `VHOST_USER_SLAVE_*` in QEMU 7.2's text), after SET_BACKEND_REQ_FD.
 */
export const VhostUserBackendRequest = {
  /** IOTLB miss or access failure. */
  IOTLB_MSG: 1,
  /** No payload: the device configuration changed; the front-end reads it with GET_CONFIG. */
  CONFIG_CHANGE_MSG: 2,
  /** Vring area description, with an fd: a host notifier for a queue. */
  VRING_HOST_NOTIFIER_MSG: 3,
  /** Vring state: an in-band used-buffer notification. */
  VRING_CALL: 4,
  /** Vring state: an in-band error notification. */
  VRING_ERR: 5,
} as const;

/** Bits of the header's `flags` word (vhost-user.rst "Header"). */
export const VhostUserFlag = {
  /** The only protocol version: the low 2 bits are 0x1. */
  VERSION: 0x1,
  /** Mask of the version bits. */
  VERSION_MASK: 0x3,
  /** Bit 2: this message is a reply (set on every reply from the back-end). */
  REPLY: 0x4,
  /** Bit 3: the sender wants a REPLY_ACK status reply (vhost-user.rst "REPLY_ACK"). */
  NEED_REPLY: 0x8,
} as const;

/** Protocol feature bits (vhost-user.rst "Protocol features"). */
export const VhostUserProtocolFeature = {
  /** Multiple queues: GET_QUEUE_NUM. */
  MQ: 0,
  /** Log in shared memory. */
  LOG_SHMFD: 1,
  /** SEND_RARP. */
  RARP: 2,
  /** NEED_REPLY on any request, answered with a u64 status (0 = success). */
  REPLY_ACK: 3,
  /** NET_SET_MTU. */
  MTU: 4,
  /** Back-end request channel (`SLAVE_REQ` in older texts). */
  BACKEND_REQ: 5,
  /** SET_VRING_ENDIAN. */
  CROSS_ENDIAN: 6,
  /** Crypto sessions. */
  CRYPTO_SESSION: 7,
  /** Postcopy migration. */
  PAGEFAULT: 8,
  /** GET_CONFIG / SET_CONFIG. */
  CONFIG: 9,
  /** Fds on the back-end channel. */
  BACKEND_SEND_FD: 10,
  /** Host notifiers. */
  HOST_NOTIFIER: 11,
  /** Inflight I/O tracking. */
  INFLIGHT_SHMFD: 12,
  /** RESET_DEVICE. */
  RESET_DEVICE: 13,
  /** In-band notifications. */
  INBAND_NOTIFICATIONS: 14,
  /** GET_MAX_MEM_SLOTS / ADD_MEM_REG / REM_MEM_REG. */
  CONFIGURE_MEM_SLOTS: 15,
  /** SET_STATUS / GET_STATUS. */
  STATUS: 16,
} as const;

/** Feature bit 30 in GET_FEATURES / SET_FEATURES: the back-end speaks protocol features. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
/** Header size: u32 request, u32 flags, u32 size. */
export const VHOST_USER_HEADER_SIZE = 12;
/** At most this many regions (and fds) in SET_MEM_TABLE (QEMU's VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_MEMORY_MAX_REGIONS = 8;
/** At most this many fds on any one message (SET_MEM_TABLE's 8; the back-end channel's 8). */
export const VHOST_USER_MAX_FDS = 8;
/** Largest config payload (QEMU's VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;
/**
 * Largest payload either side accepts: the largest layout used here (a config message with 256
 * bytes, 268; a full memory table, 264) rounded up. A header announcing more closes the
 * connection before anything is read.
 */
export const VHOST_USER_MAX_PAYLOAD = 512;
/** SET_VRING_KICK / CALL / ERR payload: bits 0–7 are the ring index. */
export const VHOST_USER_VRING_IDX_MASK = 0xff;
/** SET_VRING_KICK / CALL / ERR payload: bit 8 set means no fd is attached (poll instead). */
export const VHOST_USER_VRING_NOFD_MASK = 0x100;
/** Vring address flag VHOST_VRING_F_LOG (bit 0): log writes to the used ring. */
export const VHOST_VRING_F_LOG = 0x1;

/** Payload sizes of the fixed layouts (vhost-user.rst "Payload"). */
export const VhostUserPayloadSize = {
  /** A single 64-bit integer. */
  U64: 8,
  /** A vring state description: u32 index, u32 num. */
  VRING_STATE: 8,
  /** A vring address description: u32 index, u32 flags, u64 desc, used, avail, log. */
  VRING_ADDR: 40,
  /** Memory regions description header: u32 nregions, u32 padding. */
  MEMORY_HEADER: 8,
  /** One memory region: u64 guest_phys_addr, memory_size, userspace_addr, mmap_offset. */
  MEMORY_REGION: 32,
  /** Single memory region description: u64 padding, then one region. */
  SINGLE_MEMORY_REGION: 40,
  /** Config description header: u32 offset, size, flags. */
  CONFIG_HEADER: 12,
  /**
   * Inflight description: u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size, and
   * the 4 bytes of padding C puts at the end of QEMU's `VhostUserInflight` (it sends 24).
   */
  INFLIGHT: 24,
} as const;

/**
 * "All numbers are in the machine native byte order" (vhost-user.rst): the peer is a process
 * on the same host. Computed once.
 */
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A decoded message header. */
export interface VhostUserHeader {
  /** Message type ({@link VhostUserRequest}). Untrusted. */
  readonly request: number;
  /** Flags word ({@link VhostUserFlag}). Untrusted. */
  readonly flags: number;
  /** Payload size in bytes. Untrusted. */
  readonly size: number;
}

/** One whole message as it crosses the socket. */
export interface VhostUserMessage extends VhostUserHeader {
  /** The payload (`size` bytes). */
  readonly payload: Uint8Array;
  /** File descriptors that came with it (SCM_RIGHTS); whoever takes the message owns them. */
  readonly fds: readonly number[];
}

/** A vring state description (vhost-user.rst "A vring state description"). */
export interface VringState {
  /** Ring index (u32). */
  readonly index: number;
  /** A number whose meaning depends on the message: size, base, enable (u32). */
  readonly num: number;
}

/** A vring address description (vhost-user.rst "A vring address description"). */
export interface VringAddr {
  /** Ring index (u32). */
  readonly index: number;
  /** Flags (u32): {@link VHOST_VRING_F_LOG}. */
  readonly flags: number;
  /** User (front-end virtual) address of the descriptor table (u64). */
  readonly desc: bigint;
  /** User address of the used ring (u64). */
  readonly used: bigint;
  /** User address of the available ring (u64). */
  readonly avail: bigint;
  /** Guest address for logging the used ring (u64). */
  readonly log: bigint;
}

/** One memory region (vhost-user.rst "Memory regions description"). */
export interface MemoryRegion {
  /** Guest-physical address of the region (u64). */
  readonly guestPhysAddr: bigint;
  /** Size in bytes (u64). */
  readonly memorySize: bigint;
  /** Front-end virtual address of the region (u64): ring addresses are given in these. */
  readonly userspaceAddr: bigint;
  /** Where the region starts in the mapping of its fd (u64). */
  readonly mmapOffset: bigint;
}

/** A device config space access (vhost-user.rst "Virtio device config space"). */
export interface ConfigSpace {
  /** Offset in the device's configuration space (u32). */
  readonly offset: number;
  /** Flags (u32): 0 writable fields, 1 live migration. */
  readonly flags: number;
  /** The bytes (its length is the message's `size` field, at most 256). */
  readonly data: Uint8Array;
}

function checkU32(v: number, name: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new RangeError(`${name} must be an integer in [0, 2^32), got ${v}`);
  }
}

function checkU64(v: bigint, name: string): void {
  if (typeof v !== "bigint" || v < 0n || v > 0xffffffffffffffffn) {
    throw new RangeError(`${name} must be a bigint in [0, 2^64), got ${String(v)}`);
  }
}

function requireSize(payload: Uint8Array, size: number, request: number, what: string): DataView {
  if (payload.length !== size) {
    throw new VhostUserError(
      "bad-size",
      `${what} payload must be ${size} bytes, got ${payload.length}`,
      request,
      payload.length,
    );
  }
  return new DataView(payload.buffer, payload.byteOffset, payload.length);
}

/**
 * Encode a whole message: header then payload.
 * @param request - message type
 * @param flags - flags word (include {@link VhostUserFlag}.VERSION)
 * @param payload - payload bytes (at most {@link VHOST_USER_MAX_PAYLOAD})
 * @returns `12 + payload.length` bytes
 * @throws RangeError naming `request`, `flags` or `payload`
 */
export function encodeMessage(
  request: number,
  flags: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  checkU32(request, "request");
  checkU32(flags, "flags");
  if (!(payload instanceof Uint8Array) || payload.length > VHOST_USER_MAX_PAYLOAD) {
    throw new RangeError(`payload must be a Uint8Array of at most ${VHOST_USER_MAX_PAYLOAD} bytes`);
  }
  const out = new Uint8Array(VHOST_USER_HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, LE);
  v.setUint32(4, flags, LE);
  v.setUint32(8, payload.length, LE);
  out.set(payload, VHOST_USER_HEADER_SIZE);
  return out;
}

/**
 * Decode a 12-byte header. Checks nothing but the length: the caller applies its limits.
 * @param bytes - at least 12 bytes
 * @returns request, flags and size
 * @throws RangeError naming `bytes` if shorter than 12
 */
export function decodeHeader(bytes: Uint8Array): VhostUserHeader {
  if (bytes.length < VHOST_USER_HEADER_SIZE) {
    throw new RangeError(`bytes must hold a ${VHOST_USER_HEADER_SIZE}-byte header`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, VHOST_USER_HEADER_SIZE);
  return { request: v.getUint32(0, LE), flags: v.getUint32(4, LE), size: v.getUint32(8, LE) };
}

/**
 * A u64 payload (features, protocol features, queue count, REPLY_ACK status).
 * @param value - the integer
 * @returns 8 bytes
 * @throws RangeError naming `value`
 */
export function encodeU64(value: bigint): Uint8Array {
  checkU64(value, "value");
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value, LE);
  return out;
}

/**
 * Decode a u64 payload.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the integer
 * @throws VhostUserError "bad-size" unless exactly 8 bytes
 */
export function decodeU64(payload: Uint8Array, request = 0): bigint {
  return requireSize(payload, VhostUserPayloadSize.U64, request, "u64").getBigUint64(0, LE);
}

/**
 * A vring state description.
 * @param state - index and num
 * @returns 8 bytes
 * @throws RangeError naming `state.index` or `state.num`
 */
export function encodeVringState(state: VringState): Uint8Array {
  checkU32(state.index, "state.index");
  checkU32(state.num, "state.num");
  const out = new Uint8Array(8);
  const v = new DataView(out.buffer);
  v.setUint32(0, state.index, LE);
  v.setUint32(4, state.num, LE);
  return out;
}

/**
 * Decode a vring state description.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns index and num
 * @throws VhostUserError "bad-size" unless exactly 8 bytes
 */
export function decodeVringState(payload: Uint8Array, request = 0): VringState {
  const v = requireSize(payload, VhostUserPayloadSize.VRING_STATE, request, "vring state");
  return { index: v.getUint32(0, LE), num: v.getUint32(4, LE) };
}

/**
 * A vring address description.
 * @param addr - index, flags and the four addresses
 * @returns 40 bytes
 * @throws RangeError naming the invalid field
 */
export function encodeVringAddr(addr: VringAddr): Uint8Array {
  checkU32(addr.index, "addr.index");
  checkU32(addr.flags, "addr.flags");
  checkU64(addr.desc, "addr.desc");
  checkU64(addr.used, "addr.used");
  checkU64(addr.avail, "addr.avail");
  checkU64(addr.log, "addr.log");
  const out = new Uint8Array(VhostUserPayloadSize.VRING_ADDR);
  const v = new DataView(out.buffer);
  v.setUint32(0, addr.index, LE);
  v.setUint32(4, addr.flags, LE);
  v.setBigUint64(8, addr.desc, LE);
  v.setBigUint64(16, addr.used, LE);
  v.setBigUint64(24, addr.avail, LE);
  v.setBigUint64(32, addr.log, LE);
  return out;
}

/**
 * Decode a vring address description.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the description
 * @throws VhostUserError "bad-size" unless exactly 40 bytes
 */
export function decodeVringAddr(payload: Uint8Array, request = 0): VringAddr {
  const v = requireSize(payload, VhostUserPayloadSize.VRING_ADDR, request, "vring address");
  return {
    index: v.getUint32(0, LE),
    flags: v.getUint32(4, LE),
    desc: v.getBigUint64(8, LE),
    used: v.getBigUint64(16, LE),
    avail: v.getBigUint64(24, LE),
    log: v.getBigUint64(32, LE),
  };
}

/**
 * The ring-fd payload of SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR: the index in bits
 * 0–7, bit 8 when no fd is attached.
 * @param index - ring index, 0–255
 * @param noFd - whether no fd is attached (the other side polls instead)
 * @returns 8 bytes
 * @throws RangeError naming `index`
 */
export function encodeVringFd(index: number, noFd = false): Uint8Array {
  if (!Number.isInteger(index) || index < 0 || index > VHOST_USER_VRING_IDX_MASK) {
    throw new RangeError(`index must be an integer in [0, 255], got ${index}`);
  }
  return encodeU64(BigInt(index | (noFd ? VHOST_USER_VRING_NOFD_MASK : 0)));
}

/** The decoded payload of SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR. */
export interface VringFd {
  /** Ring index (bits 0–7). */
  readonly index: number;
  /** Bit 8: no fd is attached. */
  readonly noFd: boolean;
}

/**
 * Decode a ring-fd payload.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the ring index and whether the no-fd bit is set
 * @throws VhostUserError "bad-size" unless 8 bytes
 */
export function decodeVringFd(payload: Uint8Array, request = 0): VringFd {
  const u = decodeU64(payload, request);
  return {
    index: Number(u & BigInt(VHOST_USER_VRING_IDX_MASK)),
    noFd: (u & BigInt(VHOST_USER_VRING_NOFD_MASK)) !== 0n,
  };
}

function writeRegion(v: DataView, at: number, r: MemoryRegion, name: string): void {
  checkU64(r.guestPhysAddr, `${name}.guestPhysAddr`);
  checkU64(r.memorySize, `${name}.memorySize`);
  checkU64(r.userspaceAddr, `${name}.userspaceAddr`);
  checkU64(r.mmapOffset, `${name}.mmapOffset`);
  v.setBigUint64(at, r.guestPhysAddr, LE);
  v.setBigUint64(at + 8, r.memorySize, LE);
  v.setBigUint64(at + 16, r.userspaceAddr, LE);
  v.setBigUint64(at + 24, r.mmapOffset, LE);
}

function readRegion(v: DataView, at: number): MemoryRegion {
  return {
    guestPhysAddr: v.getBigUint64(at, LE),
    memorySize: v.getBigUint64(at + 8, LE),
    userspaceAddr: v.getBigUint64(at + 16, LE),
    mmapOffset: v.getBigUint64(at + 24, LE),
  };
}

/**
 * A memory regions description (SET_MEM_TABLE): u32 nregions, u32 padding, then the regions.
 * Like QEMU, only the regions present are sent (size `8 + 32 * n`).
 * @param regions - 1 to 8 regions
 * @returns the payload
 * @throws RangeError naming `regions` or a field of `regions[i]`
 */
export function encodeMemoryTable(regions: readonly MemoryRegion[]): Uint8Array {
  if (!Array.isArray(regions) || regions.length < 1 || regions.length > VHOST_MEMORY_MAX_REGIONS) {
    throw new RangeError(`regions must hold 1 to ${VHOST_MEMORY_MAX_REGIONS} regions`);
  }
  const out = new Uint8Array(
    VhostUserPayloadSize.MEMORY_HEADER + VhostUserPayloadSize.MEMORY_REGION * regions.length,
  );
  const v = new DataView(out.buffer);
  v.setUint32(0, regions.length, LE);
  regions.forEach((r, i) => {
    writeRegion(
      v,
      VhostUserPayloadSize.MEMORY_HEADER + i * VhostUserPayloadSize.MEMORY_REGION,
      r,
      `regions[${i}]`,
    );
  });
  return out;
}

/**
 * Decode a memory regions description. The count is checked against the limit before the size,
 * and the size must be exactly `8 + 32 * nregions`.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the regions
 * @throws VhostUserError "bad-size" for a short payload, more than 8 regions, or a size that
 *   does not match the count
 */
export function decodeMemoryTable(
  payload: Uint8Array,
  request: number = VhostUserRequest.SET_MEM_TABLE,
): MemoryRegion[] {
  if (payload.length < VhostUserPayloadSize.MEMORY_HEADER) {
    throw new VhostUserError(
      "bad-size",
      "memory table shorter than its header",
      request,
      payload.length,
    );
  }
  const n = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, LE);
  if (n > VHOST_MEMORY_MAX_REGIONS) {
    throw new VhostUserError("bad-size", `memory table has ${n} regions (max 8)`, request, n);
  }
  const v = requireSize(
    payload,
    VhostUserPayloadSize.MEMORY_HEADER + n * VhostUserPayloadSize.MEMORY_REGION,
    request,
    `memory table of ${n} regions`,
  );
  const out: MemoryRegion[] = [];
  for (let i = 0; i < n; i++) {
    out.push(
      readRegion(v, VhostUserPayloadSize.MEMORY_HEADER + i * VhostUserPayloadSize.MEMORY_REGION),
    );
  }
  return out;
}

/**
 * A single memory region description (ADD_MEM_REG / REM_MEM_REG): u64 padding, one region.
 * @param region - the region
 * @returns 40 bytes
 * @throws RangeError naming a field of `region`
 */
export function encodeSingleMemoryRegion(region: MemoryRegion): Uint8Array {
  const out = new Uint8Array(VhostUserPayloadSize.SINGLE_MEMORY_REGION);
  writeRegion(new DataView(out.buffer), 8, region, "region");
  return out;
}

/**
 * Decode a single memory region description.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the region
 * @throws VhostUserError "bad-size" unless exactly 40 bytes
 */
export function decodeSingleMemoryRegion(payload: Uint8Array, request = 0): MemoryRegion {
  return readRegion(
    requireSize(
      payload,
      VhostUserPayloadSize.SINGLE_MEMORY_REGION,
      request,
      "single memory region",
    ),
    8,
  );
}

/** An inflight description (GET_INFLIGHT_FD, SET_INFLIGHT_FD; vhost-user.rst "Inflight description"). */
export interface InflightDescription {
  /** Size in bytes of the area tracking I/O in flight (u64; 0 in a GET_INFLIGHT_FD request). */
  readonly mmapSize: bigint;
  /** Where the area starts in the fd (u64). */
  readonly mmapOffset: bigint;
  /** Number of virtqueues (u16). */
  readonly numQueues: number;
  /** Size of each virtqueue (u16). */
  readonly queueSize: number;
}

/**
 * An inflight description.
 * @param d - the description
 * @returns 24 bytes
 * @throws RangeError naming the invalid field
 */
export function encodeInflight(d: InflightDescription): Uint8Array {
  checkU64(d.mmapSize, "d.mmapSize");
  checkU64(d.mmapOffset, "d.mmapOffset");
  for (const k of ["numQueues", "queueSize"] as const) {
    if (!Number.isInteger(d[k]) || d[k] < 0 || d[k] > 0xffff) {
      throw new RangeError(`d.${k} must be an integer in [0, 65535], got ${d[k]}`);
    }
  }
  const out = new Uint8Array(VhostUserPayloadSize.INFLIGHT);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, d.mmapSize, LE);
  v.setBigUint64(8, d.mmapOffset, LE);
  v.setUint16(16, d.numQueues, LE);
  v.setUint16(18, d.queueSize, LE);
  return out;
}

/**
 * Decode an inflight description (24 bytes as QEMU sends it; 20, without the padding, is
 * accepted too).
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns the description
 * @throws VhostUserError "bad-size" unless 20 or 24 bytes
 */
export function decodeInflight(payload: Uint8Array, request = 0): InflightDescription {
  if (payload.length !== VhostUserPayloadSize.INFLIGHT && payload.length !== 20) {
    throw new VhostUserError(
      "bad-size",
      `inflight description payload must be 24 bytes, got ${payload.length}`,
      request,
      payload.length,
    );
  }
  const v = new DataView(payload.buffer, payload.byteOffset, payload.length);
  return {
    mmapSize: v.getBigUint64(0, LE),
    mmapOffset: v.getBigUint64(8, LE),
    numQueues: v.getUint16(16, LE),
    queueSize: v.getUint16(18, LE),
  };
}

/**
 * A config description (GET_CONFIG request and reply, SET_CONFIG): u32 offset, u32 size, u32
 * flags, then `size` bytes. For a GET_CONFIG request the bytes are zeros of the wanted size.
 * @param config - offset, flags and the bytes (at most 256)
 * @returns `12 + data.length` bytes
 * @throws RangeError naming `config.offset`, `config.flags` or `config.data`
 */
export function encodeConfig(config: ConfigSpace): Uint8Array {
  checkU32(config.offset, "config.offset");
  checkU32(config.flags, "config.flags");
  if (!(config.data instanceof Uint8Array) || config.data.length > VHOST_USER_MAX_CONFIG_SIZE) {
    throw new RangeError(
      `config.data must be a Uint8Array of at most ${VHOST_USER_MAX_CONFIG_SIZE} bytes`,
    );
  }
  const out = new Uint8Array(VhostUserPayloadSize.CONFIG_HEADER + config.data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, config.offset, LE);
  v.setUint32(4, config.data.length, LE);
  v.setUint32(8, config.flags, LE);
  out.set(config.data, VhostUserPayloadSize.CONFIG_HEADER);
  return out;
}

/**
 * Decode a config description: its inner `size` must be at most 256 and match the payload.
 * @param payload - untrusted payload
 * @param request - message type, for the error
 * @returns offset, flags and a copy of the bytes
 * @throws VhostUserError "bad-size"
 */
export function decodeConfig(
  payload: Uint8Array,
  request: number = VhostUserRequest.GET_CONFIG,
): ConfigSpace {
  if (payload.length < VhostUserPayloadSize.CONFIG_HEADER) {
    throw new VhostUserError(
      "bad-size",
      "config payload shorter than its header",
      request,
      payload.length,
    );
  }
  const v = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const size = v.getUint32(4, LE);
  if (
    size > VHOST_USER_MAX_CONFIG_SIZE ||
    payload.length !== VhostUserPayloadSize.CONFIG_HEADER + size
  ) {
    throw new VhostUserError(
      "bad-size",
      `config size field ${size} does not match a ${payload.length}-byte payload (max 256)`,
      request,
      size,
    );
  }
  return {
    offset: v.getUint32(0, LE),
    flags: v.getUint32(8, LE),
    data: payload.slice(VhostUserPayloadSize.CONFIG_HEADER),
  };
}

/**
 * The name of a message type for error messages ("GET_FEATURES", or "request 99").
 * @param request - message type
 * @returns its name
 */
export function requestName(request: number): string {
  for (const [name, id] of Object.entries(VhostUserRequest)) if (id === request) return name;
  return `request ${request}`;
}
