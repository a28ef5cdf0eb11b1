/**
 * Virtqueue wire layouts: split (§2.7) and packed (§2.8) rings.
 *
 * All multi-byte ring fields are little-endian in VIRTIO 1.x. Offsets are in bytes
 * from the start of the structure they belong to.
 *
 * @module
 */

/** Largest queue size of a split virtqueue (a power of 2, at most 32768). §2.7 */
export const SPLIT_QUEUE_MAX_SIZE = 32768;
/** Largest queue size of a packed virtqueue (at most 32768, need not be a power of 2). §2.8 */
export const PACKED_QUEUE_MAX_SIZE = 32768;

/** Split descriptor flags (`struct virtq_desc.flags`). §2.7.5 */
export const SplitDescFlags = {
  /** This marks a buffer as continuing via the next field. */
  NEXT: 1,
  /** This marks a buffer as device write-only (otherwise device read-only). */
  WRITE: 2,
  /** This means the buffer contains a list of buffer descriptors. */
  INDIRECT: 4,
} as const;
/** One split descriptor flag. */
export type SplitDescFlags = (typeof SplitDescFlags)[keyof typeof SplitDescFlags];

/** `struct virtq_avail.flags`: the driver asks the device not to interrupt. §2.7.6 */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** `struct virtq_used.flags`: the device asks the driver not to notify (kick). §2.7.8 */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** `struct virtq_desc` layout: 16 bytes. §2.7.5 */
export const SplitDesc = {
  /** Size of one descriptor in bytes. */
  SIZE: 16,
  /** `le64 addr`: guest-physical address of the buffer. */
  ADDR: 0,
  /** `le32 len`: length of the buffer in bytes. */
  LEN: 8,
  /** `le16 flags`: {@link SplitDescFlags}. */
  FLAGS: 12,
  /** `le16 next`: index of the next descriptor when NEXT is set. */
  NEXT: 14,
} as const;

/** `struct virtq_avail` layout (driver area). §2.7.6 */
export const SplitAvail = {
  /** `le16 flags`. */
  FLAGS: 0,
  /** `le16 idx`: where the driver will put the next entry (modulo queue size). */
  IDX: 2,
  /** `le16 ring[queue size]` starts here. */
  RING: 4,
  /** Size of one ring entry. */
  ENTRY_SIZE: 2,
} as const;

/** `struct virtq_used` layout (device area). §2.7.8 */
export const SplitUsed = {
  /** `le16 flags`. */
  FLAGS: 0,
  /** `le16 idx`: where the device will put the next entry (modulo queue size). */
  IDX: 2,
  /** `struct virtq_used_elem ring[queue size]` starts here. */
  RING: 4,
  /** Size of one `struct virtq_used_elem { le32 id; le32 len; }`. */
  ENTRY_SIZE: 8,
  /** Offset of `id` inside a used element. */
  ELEM_ID: 0,
  /** Offset of `len` inside a used element. */
  ELEM_LEN: 4,
} as const;

/** Required alignment of each split virtqueue part, in bytes. §2.7 table "Virtqueue Part Alignment" */
export const SplitAlign = {
  /** Descriptor table. */
  DESC: 16,
  /** Available ring (driver area). */
  AVAIL: 2,
  /** Used ring (device area). */
  USED: 4,
} as const;

/** Size in bytes of the descriptor table of a split queue of `size` entries. §2.7 */
export function splitDescTableSize(size: number): number {
  return SplitDesc.SIZE * size;
}

/** Size in bytes of the available ring, including `used_event`. §2.7 */
export function splitAvailSize(size: number): number {
  return 6 + 2 * size;
}

/** Size in bytes of the used ring, including `avail_event`. §2.7 */
export function splitUsedSize(size: number): number {
  return 6 + 8 * size;
}

/** Offset of `used_event` in the available ring (only meaningful with EVENT_IDX). §2.7.6 */
export function splitUsedEventOffset(size: number): number {
  return SplitAvail.RING + 2 * size;
}

/** Offset of `avail_event` in the used ring (only meaningful with EVENT_IDX). §2.7.8 */
export function splitAvailEventOffset(size: number): number {
  return SplitUsed.RING + 8 * size;
}

/** Queue alignment of the legacy (pre-1.0) contiguous layout on most platforms. §2.7.2 */
export const LEGACY_VRING_ALIGN = 4096;

/**
 * Offsets of the three parts of a legacy contiguous split ring, as Linux's `vring_init`
 * places them: descriptor table at 0, available ring right after it, used ring at the
 * next multiple of `align`.
 *
 * @see VIRTIO 1.3 §2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout"
 */
export function legacySplitLayout(
  size: number,
  align: number = LEGACY_VRING_ALIGN,
): LegacySplitLayout {
  const avail = splitDescTableSize(size);
  const used = alignUp(avail + splitAvailSize(size), align);
  return { desc: 0, avail, used, total: used + splitUsedSize(size) };
}

/** Byte offsets of a legacy contiguous split ring, from the start of the ring memory. */
export interface LegacySplitLayout {
  /** Descriptor table offset (always 0). */
  readonly desc: number;
  /** Available ring offset. */
  readonly avail: number;
  /** Used ring offset (a multiple of the alignment). */
  readonly used: number;
  /** Total size in bytes (`vring_size`). */
  readonly total: number;
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/**
 * The `vring_need_event` rule: whether a notification is needed for an index move from
 * `oldIdx` to `newIdx` when the other side asked to be notified at `eventIdx`.
 * All arguments are 16-bit ring indices.
 *
 * @see VIRTIO 1.3 §2.7.10 "Driver notifications" and Linux `virtio_ring.h`
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** Packed descriptor flags (`struct pvirtq_desc.flags`); NEXT, WRITE, INDIRECT as split. §2.8 */
export const PackedDescFlags = {
  /** Continues via the next descriptor in the ring. */
  NEXT: 1,
  /** Device write-only buffer. */
  WRITE: 2,
  /** The buffer contains a table of descriptors. */
  INDIRECT: 4,
  /** Bit 7: the driver's avail wrap counter when it made the descriptor available. §2.8.1 */
  AVAIL: 1 << 7,
  /** Bit 15: the device's used wrap counter when it marked the descriptor used. §2.8.1 */
  USED: 1 << 15,
} as const;
/** One packed descriptor flag. */
export type PackedDescFlags = (typeof PackedDescFlags)[keyof typeof PackedDescFlags];

/** `struct pvirtq_desc` layout: 16 bytes. §2.8.13 */
export const PackedDesc = {
  /** Size of one packed descriptor. */
  SIZE: 16,
  /** `le64 addr`. */
  ADDR: 0,
  /** `le32 len`. */
  LEN: 8,
  /** `le16 id`: buffer ID. */
  ID: 12,
  /** `le16 flags`. */
  FLAGS: 14,
} as const;

/** `struct pvirtq_event_suppress` layout: 4 bytes, 4-aligned. §2.8.14 */
export const PackedEvent = {
  /** Size of the structure. */
  SIZE: 4,
  /** `le16 desc`: bits 0–14 event offset, bit 15 event wrap counter. */
  OFF_WRAP: 0,
  /** `le16 flags`: {@link PackedEventFlags}. */
  FLAGS: 2,
} as const;

/** Event suppression flags of the packed ring. §2.8.10 */
export const PackedEventFlags = {
  /** Notifications enabled. */
  ENABLE: 0,
  /** Notifications disabled. */
  DISABLE: 1,
  /** Notify only when the descriptor at the given offset/wrap is reached (needs EVENT_IDX). */
  DESC: 2,
} as const;
/** One packed event-suppression flags value. */
export type PackedEventFlags = (typeof PackedEventFlags)[keyof typeof PackedEventFlags];

/**
 * Bit number of the wrap counter inside `pvirtq_event_suppress.desc` (`off_wrap`); bits 0–14
 * hold the descriptor ring offset. Linux calls it `VRING_PACKED_EVENT_F_WRAP_CTR`.
 *
 * @see VIRTIO 1.3 §2.8.14 "Event Suppression Structure Format"
 */
export const PACKED_EVENT_F_WRAP_CTR = 15;

/** Mask of the descriptor ring offset in an `off_wrap` word (bits 0–14). §2.8.14 */
export const PACKED_EVENT_OFFSET_MASK = 0x7fff;

/**
 * Encode an `off_wrap` word of the packed event suppression structure: the ring offset at
 * which the writer wants an event, and the wrap counter that offset belongs to.
 *
 * @param offset - descriptor ring offset, an integer in [0, 0x7fff] (below the queue size).
 * @param wrapCounter - the wrap counter (`true` or `1` for 1).
 * @throws RangeError if `offset` is not an integer in [0, 0x7fff].
 * @see VIRTIO 1.3 §2.8.14 "Event Suppression Structure Format"
 */
export function packedEventOffWrap(offset: number, wrapCounter: boolean | 0 | 1): number {
  if (!Number.isInteger(offset) || offset < 0 || offset > PACKED_EVENT_OFFSET_MASK) {
    throw new RangeError(
      `packedEventOffWrap(offset): offset must be an integer in [0, 0x7fff], got ${offset}`,
    );
  }
  return offset | (wrapCounter ? 1 << PACKED_EVENT_F_WRAP_CTR : 0);
}

/**
 * The descriptor ring offset (bits 0–14) of an `off_wrap` word. The word is read from shared
 * memory and is not trusted: the caller still checks the offset against its queue size.
 *
 * @see VIRTIO 1.3 §2.8.14
 */
export function packedEventOffset(offWrap: number): number {
  return offWrap & PACKED_EVENT_OFFSET_MASK;
}

/** The wrap counter (bit 15) of an `off_wrap` word, as 0 or 1. §2.8.14 */
export function packedEventWrapCounter(offWrap: number): 0 | 1 {
  return ((offWrap >>> PACKED_EVENT_F_WRAP_CTR) & 1) as 0 | 1;
}

/** Required alignment of each packed virtqueue part, in bytes. §2.8.10.1 */
export const PackedAlign = {
  /** Descriptor ring. */
  DESC: 16,
  /** Driver event suppression area. */
  DRIVER: 4,
  /** Device event suppression area. */
  DEVICE: 4,
} as const;
