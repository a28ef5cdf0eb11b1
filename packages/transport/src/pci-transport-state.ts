/**
 * The registers of a virtio-pci function as the opaque transport section of a
 * {@link DeviceState}: configuration space, MSI-X table and pending bits, the vectors mapped
 * to queues and configuration changes, the common configuration's selectors and the
 * presented `config_generation`. {@link VirtioPciDevice} writes and reads it; nothing else
 * needs the layout.
 * @module
 */
import { DeviceStateFormatError, DeviceStateMismatchError } from "./device-state.js";

/** What a virtio-pci function keeps besides its device core. */
export interface PciTransportRegisters {
  /** The 256 bytes of configuration space (header, BARs, capabilities, MSI-X control). */
  readonly config: Uint8Array;
  /** The MSI-X table: 4 words per vector (address low, address high, data, vector control). */
  readonly msixTable: Uint32Array;
  /** The MSI-X pending bit array, 2 words per 64 vectors. */
  readonly msixPba: Uint32Array;
  /** `queue_msix_vector` of each queue (§4.1.4.3). */
  readonly queueVectors: Uint16Array;
  /** `config_msix_vector`. */
  readonly configVector: number;
  /** `device_feature_select`. */
  readonly deviceFeatureSelect: number;
  /** `driver_feature_select`. */
  readonly driverFeatureSelect: number;
  /** `queue_select`. */
  readonly queueSelect: number;
  /** The 8-bit `config_generation` the driver last read. */
  readonly generation: number;
  /** The core's 32-bit generation when the driver last read it. */
  readonly seenGeneration: number;
}

// Layout (little-endian):
//   0 magic "VTPC" u32, 4 version u8, 5 flags u8 (0), 6 queue count u16, 8 MSI-X vectors u16,
//   10 reserved u16 (0), 12 device_feature_select u32, 16 driver_feature_select u32,
//   20 queue_select u16, 22 config_msix_vector u16, 24 config_generation u8, 25 3 bytes (0),
//   28 seen core generation u32, 32 configuration space 256 bytes,
//   288 queue_msix_vector u16 per queue, then the MSI-X table (16 bytes per vector), then the
//   pending bit array (8 bytes per 64 vectors).
const MAGIC = 0x43505456; // "VTPC"
const VERSION = 1;
const FIXED = 32;
const CONFIG_BYTES = 256;

function size(queues: number, vectors: number): number {
  return FIXED + CONFIG_BYTES + 2 * queues + 16 * vectors + 8 * Math.ceil(vectors / 64);
}

/**
 * Encode a function's registers.
 * @param r - the registers (copied)
 * @returns the bytes of the transport section
 */
export function encodePciTransportState(r: PciTransportRegisters): Uint8Array {
  const nq = r.queueVectors.length;
  const nv = r.msixTable.length / 4;
  const out = new Uint8Array(size(nq, nv));
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint8(4, VERSION);
  v.setUint16(6, nq, true);
  v.setUint16(8, nv, true);
  v.setUint32(12, r.deviceFeatureSelect >>> 0, true);
  v.setUint32(16, r.driverFeatureSelect >>> 0, true);
  v.setUint16(20, r.queueSelect, true);
  v.setUint16(22, r.configVector, true);
  v.setUint8(24, r.generation);
  v.setUint32(28, r.seenGeneration >>> 0, true);
  out.set(r.config.subarray(0, CONFIG_BYTES), FIXED);
  let at = FIXED + CONFIG_BYTES;
  for (let i = 0; i < nq; i++, at += 2) v.setUint16(at, r.queueVectors[i]!, true);
  for (let i = 0; i < r.msixTable.length; i++, at += 4) v.setUint32(at, r.msixTable[i]!, true);
  for (let i = 0; i < r.msixPba.length; i++, at += 4) v.setUint32(at, r.msixPba[i]!, true);
  return out;
}

/**
 * Decode the transport section of a virtio-pci device's state, for a function with `queues`
 * queues and `vectors` MSI-X vectors. Only the framing is checked here; the values are checked
 * against the destination by `VirtioPciDevice.restoreState`.
 * @param bytes - the transport section (untrusted)
 * @param queues - the destination's queue count
 * @param vectors - the destination's MSI-X vector count
 * @returns the registers (fresh arrays)
 * @throws DeviceStateMismatchError when the bytes are not virtio-pci registers or were saved
 *   from a function with another queue or vector count; DeviceStateFormatError when they are
 *   malformed
 */
export function decodePciTransportState(
  bytes: Uint8Array,
  queues: number,
  vectors: number,
): PciTransportRegisters {
  const bad = (why: string, at: number): never => {
    throw new DeviceStateFormatError(`virtio-pci registers: ${why}`, at);
  };
  if (bytes.length < FIXED) {
    throw new DeviceStateMismatchError(
      "transport",
      `${bytes.length} bytes are not the registers of a virtio-pci function`,
    );
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) {
    throw new DeviceStateMismatchError(
      "transport",
      "not the registers of a virtio-pci function (no VTPC magic)",
    );
  }
  if (v.getUint8(4) !== VERSION) bad(`version ${v.getUint8(4)} (this code reads ${VERSION})`, 4);
  if (v.getUint8(5) !== 0 || v.getUint16(10, true) !== 0) bad("reserved bits set", 5);
  if (v.getUint8(25) !== 0 || v.getUint16(26, true) !== 0) bad("reserved bytes set", 25);
  const nq = v.getUint16(6, true);
  const nv = v.getUint16(8, true);
  if (nq !== queues) {
    throw new DeviceStateMismatchError(
      "pci.numQueues",
      `saved ${nq} queue vectors, this function has ${queues} queues`,
    );
  }
  if (nv !== vectors) {
    throw new DeviceStateMismatchError(
      "pci.msixVectors",
      `saved ${nv} MSI-X vectors, this function has ${vectors}`,
    );
  }
  if (bytes.length !== size(nq, nv)) {
    bad(`${bytes.length} bytes, ${size(nq, nv)} expected for ${nq} queues, ${nv} vectors`, 0);
  }
  let at = FIXED + CONFIG_BYTES;
  const queueVectors = new Uint16Array(nq);
  for (let i = 0; i < nq; i++, at += 2) queueVectors[i] = v.getUint16(at, true);
  const msixTable = new Uint32Array(4 * nv);
  for (let i = 0; i < msixTable.length; i++, at += 4) msixTable[i] = v.getUint32(at, true);
  const msixPba = new Uint32Array(2 * Math.ceil(nv / 64));
  for (let i = 0; i < msixPba.length; i++, at += 4) msixPba[i] = v.getUint32(at, true);
  return {
    config: bytes.slice(FIXED, FIXED + CONFIG_BYTES),
    msixTable,
    msixPba,
    queueVectors,
    configVector: v.getUint16(22, true),
    deviceFeatureSelect: v.getUint32(12, true),
    driverFeatureSelect: v.getUint32(16, true),
    queueSelect: v.getUint16(20, true),
    generation: v.getUint8(24),
    seenGeneration: v.getUint32(28, true),
  };
}
