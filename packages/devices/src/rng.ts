/**
 * virtio-rng: the {@link RngDevice} entropy device model and the {@link EntropySource} it draws
 * random bytes from.
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */
export * from "./rng-device.js";
