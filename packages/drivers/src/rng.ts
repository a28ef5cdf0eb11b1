/**
 * virtio-rng driver: {@link RngDriver} and the ring layout helpers it shares with other drivers.
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */
export * from "./rng-driver.js";
export * from "./slab.js";
