import type { AccessKind, GuestMemory } from "@virtio-ts/memory";
import { PACKED_QUEUE_MAX_SIZE, PackedAlign, PackedDesc, PackedEvent } from "@virtio-ts/spec";
import { QueueConfigError } from "./errors.js";
import { checkRingArea, unmappableRing } from "./layout-check.js";
import type { QueueLayout } from "./types.js";

/**
 * Typed-array views over the three areas of a packed ring, created once when the queue is
 * enabled so the ring loops never allocate. Little-endian host assumed (checked at map time).
 *
 * Index map (in elements, not bytes):
 * - `desc` (Uint32Array, 4 words per descriptor): `[4i]` addr low, `[4i+1]` addr high,
 *   `[4i+2]` len, `[4i+3]` id (low 16 bits) | flags (high 16 bits). Keeping id and flags in one
 *   word lets each side publish a descriptor's id together with its flags in one atomic store.
 * - `driverEvent` (Uint16Array, 2): Driver Event Suppression, `[0]` off_wrap, `[1]` flags.
 *   Written by the driver, read (untrusted) by the device.
 * - `deviceEvent` (Uint16Array, 2): Device Event Suppression, `[0]` off_wrap, `[1]` flags.
 *   Written by the device, read (untrusted) by the driver.
 *
 * The descriptor ring is written by both sides (available descriptors by the driver, used
 * descriptors by the device), VIRTIO 1.3 §2.8. Flags and event words must be accessed with
 * `Atomics` when the memory is shared.
 */
export interface PackedRingViews {
  /** Queue size. */
  readonly size: number;
  /** Descriptor ring, 4 u32 words per descriptor. */
  readonly desc: Uint32Array;
  /** Driver Event Suppression structure (Driver Area) as two u16 words. */
  readonly driverEvent: Uint16Array;
  /** Device Event Suppression structure (Device Area) as two u16 words. */
  readonly deviceEvent: Uint16Array;
}

const littleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Validate a packed queue layout and map its three areas.
 *
 * Checks (VIRTIO 1.3 §2.8 "Packed Virtqueues" and §2.8.10.1 "Structure Size and Alignment"):
 * size is an integer in [1, 32768] (not necessarily a power of 2); the descriptor ring is
 * 16-aligned and both event suppression structures 4-aligned; each area lies inside guest
 * memory and inside one region (like QEMU's vhost, virtio-ts needs each area host-contiguous).
 * The descriptor ring must be readable and writable by both sides.
 *
 * @param side which side maps the ring: the driver writes the Driver Area, the device the
 *   Device Area (IOMMU permissions are checked accordingly).
 * @throws QueueConfigError naming the offending field.
 */
export function mapPackedRing(
  mem: GuestMemory,
  layout: QueueLayout,
  side: "driver" | "device",
): PackedRingViews {
  if (!littleEndianHost) {
    throw new QueueConfigError("big-endian hosts are not supported", "host", 0);
  }
  const { size, desc, driver, device } = layout;
  if (!Number.isInteger(size) || size < 1 || size > PACKED_QUEUE_MAX_SIZE) {
    throw new QueueConfigError(
      `queue size must be an integer in [1, ${PACKED_QUEUE_MAX_SIZE}]`,
      "size",
      size,
    );
  }
  const drv: AccessKind = side === "driver" ? "write" : "read";
  const dev: AccessKind = side === "device" ? "write" : "read";
  checkRingArea(mem, "desc", desc, PackedDesc.SIZE * size, PackedAlign.DESC, "read");
  checkRingArea(mem, "desc", desc, PackedDesc.SIZE * size, PackedAlign.DESC, "write");
  checkRingArea(mem, "driver", driver, PackedEvent.SIZE, PackedAlign.DRIVER, drv);
  checkRingArea(mem, "device", device, PackedEvent.SIZE, PackedAlign.DEVICE, dev);
  try {
    return {
      size,
      desc: mem.u32View(desc, 4 * size, "write"),
      driverEvent: mem.u16View(driver, 2, drv),
      deviceEvent: mem.u16View(device, 2, dev),
    };
  } catch (e) {
    // The areas were checked above, so what is left is an area that crosses a region boundary.
    throw unmappableRing(e, desc);
  }
}

/**
 * Pack a ring position and a wrap counter into the `desc` word of an event suppression
 * structure (VIRTIO 1.3 §2.8.14: offset in bits 0–14, wrap counter in bit 15).
 */
export function packedOffWrap(position: number, wrap: boolean): number {
  return wrap ? position | 0x8000 : position;
}

/**
 * The packed-ring form of `vring_need_event`: whether moving a ring position forward by
 * `moved` descriptors, to `(position, wrap)`, passed the descriptor named by `offWrap` (an
 * event suppression `desc` word whose offset the caller has checked to be below `size`).
 *
 * A position and its wrap counter name one of `2·size` consecutive ring steps (wrap counter 1:
 * steps [0, size), wrap counter 0: [size, 2·size)); the event triggers iff its step lies within
 * the last `moved` steps, counted modulo `2·size`. Having moved `2·size` or more steps passes
 * every step, so the answer is then true (at worst one extra notification, never a lost one).
 *
 * @see VIRTIO 1.3 §2.8.10 and Linux `virtqueue_kick_prepare_packed` / QEMU `vring_packed_need_event`
 */
export function packedNeedEvent(
  size: number,
  offWrap: number,
  position: number,
  wrap: boolean,
  moved: number,
): boolean {
  const cycle = 2 * size;
  if (moved >= cycle) return true;
  const event = (offWrap & 0x7fff) + ((offWrap & 0x8000) !== 0 ? 0 : size);
  const now = position + (wrap ? 0 : size);
  // now - event - 1 lies in [-cycle, cycle): one added cycle makes it non-negative.
  return (now - event - 1 + cycle) % cycle < moved;
}
