import { VirtioError } from "@virtio-ts/memory";

/** Why a driver-side transport gave up on a device. */
export type TransportErrorCode =
  | "bad-magic"
  | "unsupported-version"
  | "no-device"
  | "not-modern"
  | "features-refused"
  | "reset-timeout"
  | "config-unstable"
  | "queue-unavailable"
  | "queue-in-use"
  | "queue-too-large"
  | "queue-refused"
  | "not-virtio"
  | "missing-capability"
  | "bad-capability"
  | "vector-refused";

/**
 * Driver side: the device behaved in a way the driver cannot work with (drivers distrust
 * devices too). `code` names what happened, `value` is the offending register value when
 * there is one.
 *
 * - "bad-magic", "unsupported-version": `MagicValue` / `Version` are wrong (VIRTIO 1.3
 *   §4.2.2.2: the driver MUST ignore such a device).
 * - "no-device": `DeviceID` is 0, a placeholder slot (§4.2.3.1.1: abort, no error reported by
 *   Linux; we throw so the caller can skip it).
 * - "not-modern": a version 2 device does not offer VIRTIO_F_VERSION_1.
 * - "features-refused": FEATURES_OK did not stick (§3.1.1 step 6).
 * - "reset-timeout": `Status` did not read 0 after a reset within the retry bound (§2.4.2).
 * - "config-unstable": `ConfigGeneration` kept changing past the retry bound (§2.5.1).
 * - "queue-unavailable", "queue-in-use", "queue-too-large", "queue-refused": virtqueue setup
 *   (§4.2.3.2): `QueueNumMax` is 0, the queue is already live, the wanted size exceeds the
 *   maximum, or `QueueReady` / `QueuePFN` did not read back as set (virtio-pci: `queue_size`
 *   is 0, `queue_enable` reads 1 before setup, the size exceeds `queue_size`, `queue_enable`
 *   does not read back 1).
 * - "not-virtio" (virtio-pci): the Vendor ID is not 0x1af4 or the Device ID is outside
 *   0x1000–0x107f (§4.1.2.2: the driver MUST match only those).
 * - "missing-capability" (virtio-pci): no common configuration, notification or ISR
 *   capability usable (§4.1.5.1.1), or no device configuration capability when the driver
 *   reads the configuration.
 * - "bad-capability" (virtio-pci): a capability's structure does not fit in its BAR, is
 *   misaligned or too short, a queue's notification address falls outside the notification
 *   structure, or the capability list loops.
 * - "vector-refused" (virtio-pci): `config_msix_vector` / `queue_msix_vector` read back
 *   NO_VECTOR after the driver mapped a vector (§4.1.5.1.2.2: the driver MUST check).
 */
export class TransportError extends VirtioError {
  /** What went wrong. */
  readonly code: TransportErrorCode;
  /** The register value that caused it, when there is one (otherwise 0). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - human-readable detail
   * @param value - the offending register value, if any
   */
  constructor(code: TransportErrorCode, message: string, value = 0) {
    super(`${code}: ${message}`);
    this.code = code;
    this.value = value;
  }
}
