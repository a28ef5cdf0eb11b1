/**
 * virtio-net: the {@link NetDevice} model and the {@link NetBackend} it moves frames through.
 * @see VIRTIO 1.3 §5.1 "Network Device"
 * @module
 */
export * from "./net-backend.js";
export * from "./net-device.js";
