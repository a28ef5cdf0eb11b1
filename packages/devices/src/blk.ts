/**
 * virtio-blk: the {@link BlkDevice} model and the {@link BlockBackend} it delegates I/O to.
 * @see VIRTIO 1.3 §5.2 "Block Device"
 * @module
 */
export * from "./backend-error.js";
export * from "./blk-backend.js";
export * from "./blk-device.js";
