/**
 * virtio-rng (entropy device) constants.
 *
 * The entropy device has no feature bits and no configuration space: the driver posts
 * device-writable buffers on its one queue and the device fills them with random bytes,
 * reporting how many it wrote in the used length.
 *
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */

/** Virtqueue indices of the entropy device. §5.4.2 */
export const RngQueue = {
  /** `requestq`: device-writable buffers to be filled with random bytes. */
  REQUEST: 0,
} as const;
/** One entropy-device queue index. */
export type RngQueue = (typeof RngQueue)[keyof typeof RngQueue];

/** Number of virtqueues of the entropy device. §5.4.2 */
export const RNG_NUM_QUEUES = 1;
