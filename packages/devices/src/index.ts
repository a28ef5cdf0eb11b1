/**
 * virtio device models (the host side that consumes virtqueues) and the back-end interfaces
 * they delegate real I/O to. A back-end never sees a ring. The `./blk` subpath holds only the
 * block device.
 *
 * @packageDocumentation
 */
export * from "./backend-error.js";
export * from "./balloon.js";
export * from "./blk.js";
export * from "./console.js";
export * from "./net.js";
export * from "./rng.js";
