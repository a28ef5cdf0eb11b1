import type { AccessKind, GuestMemory } from "@virtio-ts/memory";
import {
  SPLIT_QUEUE_MAX_SIZE,
  SplitAlign,
  splitAvailSize,
  splitDescTableSize,
  splitUsedSize,
} from "@virtio-ts/spec";
import { QueueConfigError } from "./errors.js";
import { checkRingArea, unmappableRing } from "./layout-check.js";
import type { QueueLayout } from "./types.js";

/**
 * Typed-array views over the three areas of a split ring, created once when the queue is
 * enabled so the ring loops never allocate. Little-endian host assumed (checked at load).
 *
 * Index map (all in elements, not bytes):
 * - `desc`  (Uint32Array, 4 words per descriptor): `[4i]` addr low, `[4i+1]` addr high,
 *   `[4i+2]` len, `[4i+3]` flags (low 16 bits) | next (high 16 bits).
 * - `avail` (Uint16Array, 3 + size): `[0]` flags, `[1]` idx, `[2+i]` ring[i], `[2+size]` used_event.
 * - `used16` (Uint16Array, 3 + 4·size): `[0]` flags, `[1]` idx, `[2+4·size]` avail_event.
 * - `used32` (Uint32Array, 2·size, starting at used+4): `[2i]` id, `[2i+1]` len.
 *
 * Shared index/flag/event words must be accessed with `Atomics` when the memory is shared.
 */
export interface SplitRingViews {
  /** Queue size. */
  readonly size: number;
  /** Descriptor table, 4 u32 words per descriptor. */
  readonly desc: Uint32Array;
  /** Available ring as u16 words. */
  readonly avail: Uint16Array;
  /** Used ring as u16 words (flags, idx, avail_event). */
  readonly used16: Uint16Array;
  /** Used ring elements as u32 words (id, len pairs). */
  readonly used32: Uint32Array;
}

const littleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Validate a split queue layout and map its three areas.
 *
 * Checks (VIRTIO 1.3 §2.7 "Split Virtqueues", table "Virtqueue Part Alignment"): size is a
 * power of 2 in [1, 32768]; the descriptor table is 16-aligned, the available ring 2-aligned
 * and the used ring 4-aligned; each area lies inside guest memory (and inside one region:
 * like QEMU's vhost, virtio-ts needs each ring area host-contiguous).
 *
 * @param mem guest memory (possibly behind an IOMMU).
 * @param layout the queue size and the three area addresses.
 * @param side which side maps the ring: the driver writes the descriptor table and available
 *   ring, the device the used ring; each area is mapped with that access (IOMMU permissions).
 * @throws QueueConfigError naming the offending field.
 */
export function mapSplitRing(
  mem: GuestMemory,
  layout: QueueLayout,
  side: "driver" | "device",
): SplitRingViews {
  if (!littleEndianHost) {
    throw new QueueConfigError("big-endian hosts are not supported", "host", 0);
  }
  const { size, desc, driver, device } = layout;
  if (
    !Number.isInteger(size) ||
    size < 1 ||
    size > SPLIT_QUEUE_MAX_SIZE ||
    (size & (size - 1)) !== 0
  ) {
    throw new QueueConfigError(
      `queue size must be a power of 2 in [1, ${SPLIT_QUEUE_MAX_SIZE}]`,
      "size",
      size,
    );
  }
  const drv: AccessKind = side === "driver" ? "write" : "read";
  const dev: AccessKind = side === "device" ? "write" : "read";
  checkRingArea(mem, "desc", desc, splitDescTableSize(size), SplitAlign.DESC, drv);
  checkRingArea(mem, "driver", driver, splitAvailSize(size), SplitAlign.AVAIL, drv);
  checkRingArea(mem, "device", device, splitUsedSize(size), SplitAlign.USED, dev);
  try {
    return {
      size,
      desc: mem.u32View(desc, 4 * size, drv),
      avail: mem.u16View(driver, 3 + size, drv),
      used16: mem.u16View(device, 3 + 4 * size, dev),
      used32: mem.u32View(device + 4, 2 * size, dev),
    };
  } catch (e) {
    // The areas were checked above, so what is left is an area that crosses a region boundary
    // or a permission the translation layer refused.
    throw unmappableRing(e, desc);
  }
}
