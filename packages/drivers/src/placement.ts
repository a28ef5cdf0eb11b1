/**
 * Checks, at a driver's construction, that what the host placed in guest memory fits there: the
 * allocator's slots and the ring area. Without it a slab outside guest memory fails only at the
 * first request (a `GuestMemoryError` out-of-bounds deep inside a submit); with it the
 * constructor throws a `RangeError` that says what to change.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import type { SlabAllocator } from "./slab.js";

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * Throw unless the allocator's whole region `[base, base + slotSize * slots)` is writable guest
 * memory. Call before touching the device.
 * @param memory - the guest memory the driver was given
 * @param allocator - the driver's allocator
 * @throws RangeError naming `allocator`, with the end address the memory must reach
 */
export function checkAllocatorPlacement(memory: GuestMemory, allocator: SlabAllocator): void {
  const { base, byteLength } = allocator;
  if (memory.check(base, byteLength, "write")) return;
  throw new RangeError(
    `allocator: its ${allocator.slots} slots of ${allocator.slotSize} bytes at ` +
      `[${hex(base)}, ${hex(base + byteLength)}) are not all in writable guest memory: make the ` +
      `guest memory reach ${hex(base + byteLength)} (from address 0: createGuestMemory({ size: ` +
      `${hex(base + byteLength)} })) or give the SlabAllocator a base and slot count that fit in it`,
  );
}

/**
 * Throw unless the ring area `[ringBase, ringBase + bytes)` is writable guest memory and does not
 * overlap the allocator's region. Call once the queue sizes are known, before setting up queues.
 * @param memory - the guest memory the driver was given
 * @param allocator - the driver's allocator
 * @param ringBase - `options.ringBase`
 * @param bytes - the ring area's size (the driver's `ringBytes(...)` for the negotiated sizes)
 * @param what - how the size was computed, for the message (e.g. "BlkDriver.ringBytes(128)")
 * @throws RangeError naming `options.ringBase`
 */
export function checkRingPlacement(
  memory: GuestMemory,
  allocator: SlabAllocator,
  ringBase: number,
  bytes: number,
  what: string,
): void {
  if (!Number.isSafeInteger(ringBase) || ringBase < 0 || ringBase % 16 !== 0) {
    throw new RangeError(
      `options.ringBase must be a non-negative 16-aligned integer, got ${ringBase}`,
    );
  }
  const end = ringBase + bytes;
  if (!memory.check(ringBase, bytes, "write")) {
    throw new RangeError(
      `options.ringBase: the ring area [${hex(ringBase)}, ${hex(end)}) (${what} = ${bytes} bytes) ` +
        `is not all in writable guest memory: make the guest memory reach ${hex(end)}, or move ` +
        `ringBase or choose a smaller queueSize`,
    );
  }
  const slabEnd = allocator.base + allocator.byteLength;
  if (ringBase < slabEnd && allocator.base < end) {
    throw new RangeError(
      `options.ringBase: the ring area [${hex(ringBase)}, ${hex(end)}) (${what} = ${bytes} bytes) ` +
        `overlaps the allocator's slots [${hex(allocator.base)}, ${hex(slabEnd)}): place them apart`,
    );
  }
}
