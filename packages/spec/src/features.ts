/**
 * Feature bit numbers that are not specific to one device type (bits 24 to 41).
 *
 * Feature sets are 64-bit (and may grow beyond), so virtio-ts represents a feature
 * set as a `bigint` bit mask; use {@link featureMask} to turn a bit number into a mask.
 *
 * @see VIRTIO 1.3 §6 "Reserved Feature Bits"
 */
export const Feature = {
  /**
   * Legacy only: the device notifies when a queue runs empty even if notifications are
   * suppressed. §6.3 "Legacy Interface: Reserved Feature Bits"
   */
  NOTIFY_ON_EMPTY: 24,
  /** Legacy only: the device accepts any framing of a request across descriptors. §6.3 */
  ANY_LAYOUT: 27,
  /** The driver can use descriptors with VIRTQ_DESC_F_INDIRECT set. §2.7.5.3 */
  RING_INDIRECT_DESC: 28,
  /** Enables the used_event and avail_event fields (notification suppression). §2.7.7 */
  RING_EVENT_IDX: 29,
  /** Compliance with VIRTIO 1.x (non-legacy interface). */
  VERSION_1: 32,
  /** The device can be used on a platform where access to memory is limited or translated (IOMMU). */
  ACCESS_PLATFORM: 33,
  /** Support for the packed virtqueue layout. §2.8 */
  RING_PACKED: 34,
  /** All buffers are used by the device in the same order in which they were made available. */
  IN_ORDER: 35,
  /** Memory accesses by driver and device are ordered in a way described by the platform. */
  ORDER_PLATFORM: 36,
  /** The device supports Single Root I/O Virtualization (PCI only). */
  SR_IOV: 37,
  /** The driver passes extra data (besides the queue index) in its device notifications. §2.9 */
  NOTIFICATION_DATA: 38,
  /** The driver uses the data provided by the device as a virtqueue identifier. */
  NOTIF_CONFIG_DATA: 39,
  /** The driver can reset a queue individually. §2.6.1 */
  RING_RESET: 40,
  /** The device supports administration virtqueues. */
  ADMIN_VQ: 41,
} as const;

/** A common feature bit number (a value of {@link Feature}). */
export type Feature = (typeof Feature)[keyof typeof Feature];

/** First and last bit number reserved for transport/ring features, inclusive. §6 */
export const FEATURE_TRANSPORT_FIRST = 24;
/** Last bit number of the reserved transport/ring range (inclusive). §6 */
export const FEATURE_TRANSPORT_LAST = 41;

/** The mask of every bit in the reserved transport/ring range, {@link FEATURE_TRANSPORT_FIRST} to {@link FEATURE_TRANSPORT_LAST}. §6 */
export const FEATURE_TRANSPORT_MASK: bigint =
  ((1n << BigInt(FEATURE_TRANSPORT_LAST + 1)) - 1n) ^
  ((1n << BigInt(FEATURE_TRANSPORT_FIRST)) - 1n);

/**
 * The bit mask of one feature bit number.
 *
 * @throws RangeError if `bit` is not an integer in [0, 127].
 */
export function featureMask(bit: number): bigint {
  if (!Number.isInteger(bit) || bit < 0 || bit > 127) {
    throw new RangeError(`featureMask(bit): bit must be an integer in [0, 127], got ${bit}`);
  }
  return 1n << BigInt(bit);
}

/** Whether the feature set `features` has bit number `bit` set. */
export function hasFeature(features: bigint, bit: number): boolean {
  return ((features >> BigInt(bit)) & 1n) === 1n;
}
