/**
 * virtio-net driver entry point.
 * @module
 */
export * from "./net-driver.js";
export * from "./slab.js";
