/**
 * virtio drivers (guest side) over `@virtio-ts/transport`. The `./blk` subpath holds the
 * block driver and its slab allocator.
 *
 * @packageDocumentation
 */
export * from "./balloon.js";
export * from "./blk-driver.js";
export * from "./console.js";
export * from "./net.js";
export * from "./rng.js";
export * from "./slab.js";
