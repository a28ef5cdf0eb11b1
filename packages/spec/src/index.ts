/**
 * Constants and wire layouts of the OASIS VIRTIO 1.x specification.
 *
 * Every value here is checked against the Linux UAPI headers (`/usr/include/linux/virtio_*.h`)
 * by a test that compiles a C program with gcc. Constants are plain objects `as const`, so each
 * is usable both as a value (`DeviceStatus.DRIVER_OK`) and as a type (`DeviceStatus`).
 *
 * @packageDocumentation
 */
export * from "./balloon.js";
export * from "./blk.js";
export * from "./console.js";
export * from "./features.js";
export * from "./ids.js";
export * from "./mmio.js";
export * from "./net.js";
export * from "./pci.js";
export * from "./ring.js";
export * from "./rng.js";
export * from "./status.js";
export * from "./vsock.js";
