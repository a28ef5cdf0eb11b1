/**
 * The 32-bit available buffer notification value used when VIRTIO_F_NOTIFICATION_DATA is
 * negotiated:
 *
 * ```c
 * le32 { vq_index: 16; next_off: 15; next_wrap: 1; };
 * ```
 *
 * - Split ring: `next_off` is the 15 low bits of the available index the driver will write next
 *   and `next_wrap` its bit 15, so bits 16–31 together are simply that 16-bit index.
 * - Packed ring: `next_off` is the descriptor ring offset where the next available descriptor
 *   will be written and `next_wrap` the driver's wrap counter for it.
 *
 * Without the feature a notification carries only the queue index (virtio-mmio: the 16-bit
 * index written to `QueueNotify`).
 *
 * @see VIRTIO 1.3 §2.9 "Driver Notifications", §4.2.3.3 "Available Buffer Notifications"
 * @module
 */

/** The fields of a decoded notification value. Every field comes from the driver: untrusted. */
export interface NotificationData {
  /** `vq_index`: the queue being notified (bits 0–15). Check it against the queue count. */
  queueIndex: number;
  /** `next_off` (bits 16–30). Split: avail index & 0x7fff; packed: ring offset (check < size). */
  nextOff: number;
  /** `next_wrap` (bit 31). Split: bit 15 of the avail index; packed: the avail wrap counter. */
  nextWrap: 0 | 1;
}

/**
 * Encode a notification value from its three fields.
 *
 * @param queueIndex - `vq_index`, an integer in [0, 0xffff]
 * @param nextOff - `next_off`, an integer in [0, 0x7fff]
 * @param nextWrap - `next_wrap` (`true` or 1 for 1)
 * @returns the unsigned 32-bit value to write to the notification register
 * @throws RangeError naming `queueIndex` or `nextOff` when out of range
 * @see VIRTIO 1.3 §2.9
 */
export function encodeNotificationData(
  queueIndex: number,
  nextOff: number,
  nextWrap: boolean | 0 | 1,
): number {
  if (!Number.isInteger(queueIndex) || queueIndex < 0 || queueIndex > 0xffff) {
    throw new RangeError(`queueIndex must be an integer in [0, 0xffff], got ${queueIndex}`);
  }
  if (!Number.isInteger(nextOff) || nextOff < 0 || nextOff > 0x7fff) {
    throw new RangeError(`nextOff must be an integer in [0, 0x7fff], got ${nextOff}`);
  }
  return (queueIndex | (nextOff << 16) | (nextWrap ? 0x80000000 : 0)) >>> 0;
}

/**
 * Notification value for a split ring: `next_off`/`next_wrap` are the 16-bit available index
 * the driver will write next (after a publish, `avail.idx`).
 *
 * @param queueIndex - queue index, an integer in [0, 0xffff]
 * @param availIdx - the next available index, an integer in [0, 0xffff]
 * @throws RangeError naming the argument when out of range
 * @see VIRTIO 1.3 §2.9
 * @example
 * ```ts
 * splitNotificationData(1, 0x8003); // 0x80030001
 * ```
 */
export function splitNotificationData(queueIndex: number, availIdx: number): number {
  if (!Number.isInteger(availIdx) || availIdx < 0 || availIdx > 0xffff) {
    throw new RangeError(`availIdx must be an integer in [0, 0xffff], got ${availIdx}`);
  }
  return encodeNotificationData(queueIndex, availIdx & 0x7fff, availIdx >>> 15 === 1);
}

/**
 * Notification value for a packed ring: the ring offset of the next available descriptor and
 * the driver's avail wrap counter.
 *
 * @param queueIndex - queue index, an integer in [0, 0xffff]
 * @param nextOff - ring offset, an integer in [0, 0x7fff]
 * @param wrap - the avail wrap counter
 * @throws RangeError naming the argument when out of range
 * @see VIRTIO 1.3 §2.9
 */
export function packedNotificationData(
  queueIndex: number,
  nextOff: number,
  wrap: boolean | 0 | 1,
): number {
  return encodeNotificationData(queueIndex, nextOff, wrap);
}

/**
 * Decode a notification value (any number; taken modulo 2^32) into `out`, allocating nothing.
 *
 * @param value - the value the driver wrote
 * @param out - object to fill (default: a new one)
 * @returns `out`
 * @see VIRTIO 1.3 §2.9
 */
export function decodeNotificationData(
  value: number,
  out: NotificationData = { queueIndex: 0, nextOff: 0, nextWrap: 0 },
): NotificationData {
  const v = value >>> 0;
  out.queueIndex = v & 0xffff;
  out.nextOff = (v >>> 16) & 0x7fff;
  out.nextWrap = (v >>> 31) as 0 | 1;
  return out;
}

/**
 * The 16-bit available index of a split-ring notification (`next_off | next_wrap << 15`).
 * Untrusted: a device may use it only as a hint, the ring's `avail.idx` is authoritative.
 */
export function splitAvailIndex(data: NotificationData): number {
  return data.nextOff | (data.nextWrap << 15);
}
