/**
 * virtio-blk driver entry point.
 * @module
 */
export * from "./blk-driver.js";
export * from "./slab.js";
