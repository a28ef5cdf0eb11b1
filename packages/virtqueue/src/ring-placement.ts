/**
 * Where a driver puts a queue it allocates itself: the three areas back to back from one base
 * address. Drivers, test rigs and tools place rings with it instead of each keeping a copy.
 * @module
 */
import { splitAvailSize, splitDescTableSize, splitUsedSize } from "@virtio-ts/spec";
import type { QueueLayout } from "./types.js";

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * The layout of a queue of `size` entries placed at `base`: the descriptor table (16 bytes per
 * entry), then the driver area, then the device area at the next 4-byte boundary. The split
 * sizes are the larger, so the same area serves a packed ring too (its descriptor ring is as
 * large as the split descriptor table, its event structures smaller than the rings).
 *
 * @param base - guest address of the area; give a 16-aligned one (the descriptor table's
 *   alignment, VIRTIO 1.3 §2.7 "Virtqueue Part Alignment"), which the queue checks when mapped
 * @param size - queue size
 * @returns the three area addresses and the size
 * @throws RangeError naming `base` unless it is a non-negative safe integer, or `size` unless
 *   it is an integer in [1, 32768]
 *
 * @example
 * ```ts
 * const layout = ringLayoutAt(0x10000, 256);
 * const next = 0x10000 + ringAreaBytes(256); // where the next queue may start
 * ```
 */
export function ringLayoutAt(base: number, size: number): QueueLayout {
  if (!Number.isSafeInteger(base) || base < 0) {
    throw new RangeError(`base must be a non-negative safe integer, got ${base}`);
  }
  if (!Number.isInteger(size) || size < 1 || size > 32768) {
    throw new RangeError(`size must be an integer in [1, 32768], got ${size}`);
  }
  const driver = base + splitDescTableSize(size);
  const device = alignUp(driver + splitAvailSize(size), 4);
  return { size, desc: base, driver, device };
}

/**
 * Bytes a {@link ringLayoutAt} area takes for a queue of `size` entries, rounded up to 16 so
 * the next queue's descriptor table can follow at once.
 * @param size - queue size, in [1, 32768]
 * @throws RangeError naming `size`
 */
export function ringAreaBytes(size: number): number {
  const l = ringLayoutAt(0, size);
  return alignUp(l.device + splitUsedSize(size), 16);
}

/**
 * Check a host-chosen queue size option (a device's or driver's `queueSize`): a power of 2 in
 * [2, 32768], a size both ring layouts take (a split ring's size is a power of 2, §2.7; at most
 * 32768 entries, §2.7 / §2.8).
 * @param name - the option, for the message (e.g. "options.queueSize")
 * @param size - the value given
 * @returns `size`
 * @throws RangeError naming `name` otherwise
 */
export function checkQueueSizeOption(name: string, size: number): number {
  if (!Number.isInteger(size) || size < 2 || size > 32768 || (size & (size - 1)) !== 0) {
    throw new RangeError(`${name} must be a power of 2 in [2, 32768], got ${size}`);
  }
  return size;
}
