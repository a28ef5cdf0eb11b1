import { Feature, hasFeature } from "@virtio-ts/spec";
import type { RingFeatures } from "./types.js";

/**
 * The ring features a negotiated feature set enables: VIRTIO_F_INDIRECT_DESC (28),
 * VIRTIO_F_EVENT_IDX (29) and VIRTIO_F_IN_ORDER (35) (VIRTIO 1.3 §6). Pass the features both
 * sides *negotiated* (after FEATURES_OK), not what one side offers.
 *
 * @param features the negotiated feature bits, a 64-bit (or wider) mask.
 * @returns a new RingFeatures object.
 * @throws TypeError if `features` is not a bigint.
 *
 * @example
 * ```ts
 * ringFeatures(featureMask(Feature.RING_EVENT_IDX)); // { indirect: false, eventIdx: true, inOrder: false }
 * ```
 */
export function ringFeatures(features: bigint): RingFeatures {
  if (typeof features !== "bigint") throw new TypeError("features must be a bigint bit mask");
  return {
    indirect: hasFeature(features, Feature.RING_INDIRECT_DESC),
    eventIdx: hasFeature(features, Feature.RING_EVENT_IDX),
    inOrder: hasFeature(features, Feature.IN_ORDER),
  };
}

/** No ring features: plain split ring with flag-based notification suppression. */
export const NO_RING_FEATURES: RingFeatures = Object.freeze({
  indirect: false,
  eventIdx: false,
  inOrder: false,
});
