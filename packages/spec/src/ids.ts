/**
 * Device IDs (the `DeviceID` register / PCI subsystem ID). Only the types virtio-ts models or is
 * likely to meet are listed; the rest are in VIRTIO 1.3 §5.
 *
 * @see VIRTIO 1.3 §5 "Device Types"
 */
export const DeviceId = {
  /** Reserved: "no device" (a virtio-mmio slot with nothing behind it). */
  INVALID: 0,
  /** Network card. §5.1 */
  NET: 1,
  /** Block device. §5.2 */
  BLOCK: 2,
  /** Console. §5.3 */
  CONSOLE: 3,
  /** Entropy source. §5.4 */
  RNG: 4,
  /** Traditional memory balloon. §5.5 */
  BALLOON: 5,
  /** SCSI host. §5.6 */
  SCSI: 8,
  /** 9P transport. */
  NINE_P: 9,
  /** GPU device. §5.7 */
  GPU: 16,
  /** Input device. §5.8 */
  INPUT: 18,
  /** Socket device. §5.10 */
  VSOCK: 19,
  /** Crypto device. §5.9 */
  CRYPTO: 20,
  /** IOMMU device. §5.13 */
  IOMMU: 23,
  /** Memory device. §5.15 */
  MEM: 24,
  /** Sound device. §5.14 */
  SOUND: 25,
  /** File system device. §5.11 */
  FS: 26,
  /** PMEM device. §5.19 */
  PMEM: 27,
  /** I2C adapter. §5.16 */
  I2C_ADAPTER: 34,
  /** GPIO device. §5.17 */
  GPIO: 41,
} as const;

/** One device ID (a value of {@link DeviceId}). */
export type DeviceId = (typeof DeviceId)[keyof typeof DeviceId];
