import { VirtioError } from "@virtio-ts/memory";

/**
 * Base of every error caused by what a virtqueue's other side wrote into shared memory.
 * `code` is a literal per kind of hostile input; fields carry the offending values.
 */
export abstract class VirtqueueError extends VirtioError {
  /** "chain": only one request is bad; "ring": the queue is inconsistent and must stop. */
  abstract readonly scope: "chain" | "ring";
}

/**
 * One descriptor chain is malformed. Its head is known and the avail entry has been consumed:
 * the device may return the head used with length 0 and continue, but by default enters
 * DEVICE_NEEDS_RESET (VIRTIO 1.3 §2.1.2).
 */
export abstract class ChainError extends VirtqueueError {
  /** @inheritdoc */
  readonly scope = "chain" as const;
  /** Head descriptor index (split) or buffer ID (packed) of the bad chain. */
  readonly head: number;
  /** Index of the offending descriptor (in the indirect table when `indirect` is true). */
  readonly index: number;
  /** Whether the offending descriptor is inside an indirect table. */
  readonly indirect: boolean;

  /** @param message text; @param head chain head; @param index offending descriptor; @param indirect inside a table. */
  constructor(message: string, head: number, index: number, indirect: boolean) {
    super(
      `${message} (chain head ${head}, ${indirect ? "indirect entry" : "descriptor"} ${index})`,
    );
    this.head = head;
    this.index = index;
    this.indirect = indirect;
  }
}

/** The ring is inconsistent (bad index, bad head, bad layout): stop the queue, set NEEDS_RESET. */
export abstract class RingError extends VirtqueueError {
  /** @inheritdoc */
  readonly scope = "ring" as const;
}

/** A chain revisits a descriptor: a loop. VIRTIO 1.3 §2.7.5.2 (chains end). */
export class DescriptorLoopError extends ChainError {
  /** @inheritdoc */
  readonly code = "descriptor-loop" as const;
}

/** A chain has more descriptors than the queue size (or the cursor's capacity). §2.7.5.3.1 */
export class ChainTooLongError extends ChainError {
  /** @inheritdoc */
  readonly code = "chain-too-long" as const;
  /** The limit that was exceeded. */
  readonly limit: number;
  /** @param head chain head; @param index descriptor at which the limit was passed; @param indirect inside a table; @param limit the limit. */
  constructor(head: number, index: number, indirect: boolean, limit: number) {
    super(`descriptor chain longer than ${limit}`, head, index, indirect);
    this.limit = limit;
  }
}

/** A `next` field points outside the descriptor table (or indirect table). §2.7.5 */
export class NextOutOfRangeError extends ChainError {
  /** @inheritdoc */
  readonly code = "next-out-of-range" as const;
  /** The offending `next` value. */
  readonly next: number;
  /** @param head chain head; @param index descriptor; @param indirect inside a table; @param next its next; @param tableSize entries in the table. */
  constructor(head: number, index: number, indirect: boolean, next: number, tableSize: number) {
    super(`next ${next} outside a table of ${tableSize}`, head, index, indirect);
    this.next = next;
  }
}

/** A device-readable descriptor follows a device-writable one. VIRTIO 1.3 §2.7.4.2 */
export class ReadableAfterWritableError extends ChainError {
  /** @inheritdoc */
  readonly code = "readable-after-writable" as const;
}

/** A buffer lies (partly) outside guest memory, wraps 2^64, or lacks the needed permission. */
export class BufferOutOfBoundsError extends ChainError {
  /** @inheritdoc */
  readonly code = "buffer-out-of-bounds" as const;
  /** Guest address of the buffer (≥ 2^53 values are approximate, see `@virtio-ts/memory`). */
  readonly addr: number;
  /** Length of the buffer. */
  readonly len: number;
  /** @param head chain head; @param index descriptor; @param indirect inside a table; @param addr buffer address; @param len buffer length. */
  constructor(head: number, index: number, indirect: boolean, addr: number, len: number) {
    super(`buffer [0x${addr.toString(16)}, +${len}) outside guest memory`, head, index, indirect);
    this.addr = addr;
    this.len = len;
  }
}

/**
 * A chain's buffers add up to 2^32 bytes or more (lengths are le32). Split ring: readable and
 * writable together, VIRTIO 1.3 §2.7.5.2 ("no longer than 2^32 bytes in total", less one byte).
 */
export class TotalLengthOverflowError extends ChainError {
  /** @inheritdoc */
  readonly code = "total-length-overflow" as const;
}

/** VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated. §2.7.5.3.1 */
export class IndirectNotNegotiatedError extends ChainError {
  /** @inheritdoc */
  readonly code = "indirect-not-negotiated" as const;
}

/** INDIRECT and NEXT set together. VIRTIO 1.3 §2.7.5.3.1 */
export class IndirectWithNextError extends ChainError {
  /** @inheritdoc */
  readonly code = "indirect-with-next" as const;
}

/** An indirect table whose length is zero or not a multiple of 16. §2.7.5.3.1 */
export class IndirectTableLengthError extends ChainError {
  /** @inheritdoc */
  readonly code = "indirect-table-length" as const;
  /** The table length in bytes. */
  readonly len: number;
  /** @param head chain head; @param index descriptor; @param len the table length. */
  constructor(head: number, index: number, len: number) {
    super(`indirect table length ${len} is not a non-zero multiple of 16`, head, index, false);
    this.len = len;
  }
}

/** An indirect table entry with INDIRECT set (only one table per descriptor). §2.7.5.3.1 */
export class NestedIndirectError extends ChainError {
  /** @inheritdoc */
  readonly code = "nested-indirect" as const;
}

/** An indirect table that lies outside guest memory. */
export class IndirectTableOutOfBoundsError extends ChainError {
  /** @inheritdoc */
  readonly code = "indirect-table-out-of-bounds" as const;
  /** Table address. */
  readonly addr: number;
  /** Table length. */
  readonly len: number;
  /** @param head chain head; @param index descriptor; @param addr table address; @param len table length. */
  constructor(head: number, index: number, addr: number, len: number) {
    super(
      `indirect table [0x${addr.toString(16)}, +${len}) outside guest memory`,
      head,
      index,
      false,
    );
    this.addr = addr;
    this.len = len;
  }
}

/** `avail.idx` moved more than queue size past the last consumed index. §2.7.6 */
export class AvailIndexJumpError extends RingError {
  /** @inheritdoc */
  readonly code = "avail-index-jump" as const;
  /** `avail.idx` as read. */
  readonly availIdx: number;
  /** Next index the device was going to consume. */
  readonly lastAvailIdx: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param availIdx read value; @param lastAvailIdx device's position; @param queueSize queue size. */
  constructor(availIdx: number, lastAvailIdx: number, queueSize: number) {
    super(`avail.idx ${availIdx} is more than ${queueSize} ahead of ${lastAvailIdx}`);
    this.availIdx = availIdx;
    this.lastAvailIdx = lastAvailIdx;
    this.queueSize = queueSize;
  }
}

/**
 * An available-ring entry (chain head) outside the descriptor table (§2.7.6), or a packed
 * buffer ID ≥ queue size.
 */
export class HeadOutOfRangeError extends RingError {
  /** @inheritdoc */
  readonly code = "head-out-of-range" as const;
  /** The head as read. */
  readonly head: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param head read value; @param queueSize queue size. */
  constructor(head: number, queueSize: number) {
    super(`available head ${head} outside a queue of ${queueSize}`);
    this.head = head;
    this.queueSize = queueSize;
  }
}

/** The same head (split) or buffer ID (packed) made available again while still in flight. */
export class HeadInFlightError extends RingError {
  /** @inheritdoc */
  readonly code = "head-in-flight" as const;
  /** The head or buffer ID. */
  readonly head: number;
  /** @param head the head or buffer ID. */
  constructor(head: number) {
    super(`head ${head} made available while still in flight`);
    this.head = head;
  }
}

/** Driver side: `used.idx` moved more than queue size past the last reaped index. */
export class UsedIndexJumpError extends RingError {
  /** @inheritdoc */
  readonly code = "used-index-jump" as const;
  /** `used.idx` as read. */
  readonly usedIdx: number;
  /** Next index the driver was going to reap. */
  readonly lastUsedIdx: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param usedIdx read value; @param lastUsedIdx driver's position; @param queueSize queue size. */
  constructor(usedIdx: number, lastUsedIdx: number, queueSize: number) {
    super(`used.idx ${usedIdx} is more than ${queueSize} ahead of ${lastUsedIdx}`);
    this.usedIdx = usedIdx;
    this.lastUsedIdx = lastUsedIdx;
    this.queueSize = queueSize;
  }
}

/** Driver side: the device returned an id that is not the head of a chain in flight. */
export class UsedIdNotInFlightError extends RingError {
  /** @inheritdoc */
  readonly code = "used-id-not-in-flight" as const;
  /** The id as read. */
  readonly id: number;
  /** @param id the id the device wrote. */
  constructor(id: number) {
    super(`device returned id ${id}, which is not in flight`);
    this.id = id;
  }
}

/** Driver side: the device reported writing more bytes than the chain's writable part holds. §2.7.8.1 */
export class UsedLenTooLargeError extends RingError {
  /** @inheritdoc */
  readonly code = "used-len-too-large" as const;
  /** The chain id. */
  readonly id: number;
  /** The length the device reported. */
  readonly len: number;
  /** Writable bytes the driver offered. */
  readonly writableBytes: number;
  /** @param id chain id; @param len reported length; @param writableBytes what was offered. */
  constructor(id: number, len: number, writableBytes: number) {
    super(`device reported ${len} bytes written to id ${id}, which offers ${writableBytes}`);
    this.id = id;
    this.len = len;
    this.writableBytes = writableBytes;
  }
}

/**
 * A queue's configuration (size, area addresses, alignment) is invalid. Raised when the queue
 * is set up, not in the ring loops; a transport answers by refusing the queue or setting
 * DEVICE_NEEDS_RESET.
 */
export class QueueConfigError extends RingError {
  /** @inheritdoc */
  readonly code = "queue-config" as const;
  /** Which setting is wrong ("size", "desc", "driver", "device", "layout"). */
  readonly field: string;
  /** The offending value. */
  readonly value: number;

  /** @param reason what is wrong; @param field which setting; @param value its value. */
  constructor(reason: string, field: string, value: number) {
    super(`invalid virtqueue ${field}: ${reason} (got ${value})`);
    this.field = field;
    this.value = value;
  }
}

// ---- Packed ring (VIRTIO 1.3 §2.8) ----

/**
 * Packed ring: a descriptor after the first of a chain is not marked available with the wrap
 * counter its ring position implies (VIRTIO 1.3 §2.8.6: flags "must be set/cleared correctly
 * in all descriptors in the list"). The driver exposes a chain's first descriptor last, so a
 * correct driver never shows a partial chain: the ring is inconsistent.
 */
export class PackedDescNotAvailableError extends RingError {
  /** @inheritdoc */
  readonly code = "packed-desc-not-available" as const;
  /** Ring position of the offending descriptor. */
  readonly position: number;
  /** Its `flags` as read. */
  readonly flags: number;
  /** The avail wrap counter expected at that position. */
  readonly wrap: boolean;
  /** @param position ring position; @param flags flags as read; @param wrap expected wrap counter. */
  constructor(position: number, flags: number, wrap: boolean) {
    super(
      `packed descriptor ${position} inside a chain is not available (flags 0x${flags.toString(16)}, wrap ${wrap ? 1 : 0})`,
    );
    this.position = position;
    this.flags = flags;
    this.wrap = wrap;
  }
}

/**
 * Packed ring, found when saving the chains in flight: a buffer was popped while the driver
 * had more descriptors outstanding than the queue size, so the device kept no copy of its list
 * (VIRTIO 1.3 §2.8.10.1: Queue Size is the most descriptors the driver may have made available
 * and not got back used). Only a driver that breaks that rule causes it.
 */
export class PackedOvercommitError extends RingError {
  /** @inheritdoc */
  readonly code = "packed-overcommit" as const;
  /** The buffer ID whose list was not kept. */
  readonly id: number;
  /** The queue size. */
  readonly queueSize: number;
  /** @param id buffer ID; @param queueSize the queue size. */
  constructor(id: number, queueSize: number) {
    super(
      `packed buffer ${id} was popped with more than ${queueSize} descriptors outstanding: its list was not kept`,
    );
    this.id = id;
    this.queueSize = queueSize;
  }
}

/**
 * Packed ring: a chain whose descriptors all carry NEXT for a whole queue size, so it never
 * ends and its buffer ID (in the last descriptor, VIRTIO 1.3 §2.8.6) is unknown. §2.8.17: a
 * driver MUST NOT create a descriptor list longer than the queue size.
 */
export class PackedChainUnterminatedError extends RingError {
  /** @inheritdoc */
  readonly code = "packed-chain-unterminated" as const;
  /** Ring position of the chain's first descriptor. */
  readonly position: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param position first descriptor; @param queueSize queue size. */
  constructor(position: number, queueSize: number) {
    super(
      `packed chain starting at descriptor ${position} does not end within ${queueSize} descriptors`,
    );
    this.position = position;
    this.queueSize = queueSize;
  }
}

/**
 * Packed ring: an event suppression structure in RING_EVENT_FLAGS_DESC mode names a descriptor
 * offset outside the ring (VIRTIO 1.3 §2.8.14: the offset is a ring position, so below the
 * queue size). Raised by the device for the driver's structure and by the driver for the
 * device's.
 */
export class EventOffsetOutOfRangeError extends RingError {
  /** @inheritdoc */
  readonly code = "event-offset-out-of-range" as const;
  /** Which structure: "driver" (Driver Event Suppression) or "device" (Device Event Suppression). */
  readonly area: "driver" | "device";
  /** The raw `desc` word (offset in bits 0–14, wrap counter in bit 15). */
  readonly offWrap: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param area which structure; @param offWrap raw word; @param queueSize queue size. */
  constructor(area: "driver" | "device", offWrap: number, queueSize: number) {
    super(`${area} event offset ${offWrap & 0x7fff} outside a queue of ${queueSize}`);
    this.area = area;
    this.offWrap = offWrap;
    this.queueSize = queueSize;
  }
}

// ---- Split ring, driver side ----

/**
 * Driver side: the device returned a used element whose `id` is not a descriptor index at all
 * (≥ queue size). VIRTIO 1.3 §2.7.8: `id` is "the head entry of the descriptor chain", so it
 * indexes the descriptor table. An id that is in range but not the head of a published chain
 * is a {@link UsedIdNotInFlightError}.
 */
export class UsedIdOutOfRangeError extends RingError {
  /** @inheritdoc */
  readonly code = "used-id-out-of-range" as const;
  /** The id as read (a le32, so up to 2^32 − 1). */
  readonly id: number;
  /** Queue size. */
  readonly queueSize: number;
  /** @param id the id the device wrote; @param queueSize queue size. */
  constructor(id: number, queueSize: number) {
    super(`device returned id ${id}, outside a queue of ${queueSize}`);
    this.id = id;
    this.queueSize = queueSize;
  }
}
