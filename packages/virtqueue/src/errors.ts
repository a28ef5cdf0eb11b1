// CONTRACT FILE (written by the lead). Add subclasses as needed; keep the two-tier shape.
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
 * One descriptor chain is malformed. Its head is known: the device may return it used with
 * length 0 and continue, but by default enters DEVICE_NEEDS_RESET (VIRTIO 1.3 §2.1.2).
 */
export abstract class ChainError extends VirtqueueError {
  /** @inheritdoc */
  readonly scope = "chain" as const;
  /** Head descriptor index (split) or buffer ID position (packed) of the bad chain. */
  abstract readonly head: number;
}

/** The ring is inconsistent (bad index, bad head, bad layout): stop the queue, set NEEDS_RESET. */
export abstract class RingError extends VirtqueueError {
  /** @inheritdoc */
  readonly scope = "ring" as const;
}

/**
 * A queue's configuration (size, area addresses, alignment) is invalid. Raised when the queue
 * is enabled, not in the ring loops; on a device the transport answers by refusing the queue or
 * setting DEVICE_NEEDS_RESET.
 */
export class QueueConfigError extends VirtqueueError {
  /** @inheritdoc */
  readonly code = "queue-config" as const;
  /** @inheritdoc */
  readonly scope = "ring" as const;
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
