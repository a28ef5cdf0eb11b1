/**
 * The one place a device host turns negotiated features into a device queue.
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import { Feature, hasFeature } from "@virtio-ts/spec";
import { PackedDeviceQueue } from "./packed-device.js";
import { ringFeatures } from "./ring-features.js";
import { SplitDeviceQueue } from "./split-device.js";
import type { QueueLayout } from "./types.js";

/**
 * The device side of a queue as the negotiated features ask for it: a
 * {@link PackedDeviceQueue} when VIRTIO_F_RING_PACKED was negotiated, else a
 * {@link SplitDeviceQueue}; with the ring features (INDIRECT_DESC, EVENT_IDX, IN_ORDER) taken
 * from the same bits. Every device host (the in-thread device core, the vhost worker, the
 * vhost-user back-end) builds its queues here.
 *
 * @param memory - guest memory the ring lives in (behind an IOMMU with ACCESS_PLATFORM)
 * @param layout - size and the three area addresses the driver configured
 * @param features - the negotiated feature bits (after FEATURES_OK), not the offered ones
 * @throws QueueConfigError if the layout is invalid for that ring type (size, alignment,
 *   outside memory); TypeError if `features` is not a bigint
 * @see VIRTIO 1.3 §2.7, §2.8, §6
 *
 * @example
 * ```ts
 * const q = createDeviceQueue(memory, { size: 256, desc, driver, device }, negotiated);
 * ```
 */
export function createDeviceQueue(
  memory: GuestMemory,
  layout: QueueLayout,
  features: bigint,
): SplitDeviceQueue | PackedDeviceQueue {
  const rf = ringFeatures(features);
  return hasFeature(features, Feature.RING_PACKED)
    ? new PackedDeviceQueue(memory, layout, rf)
    : new SplitDeviceQueue(memory, layout, rf);
}
