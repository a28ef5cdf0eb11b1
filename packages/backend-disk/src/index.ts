/**
 * Block back-ends for `@virtio-ts/devices`: {@link MemoryDisk} (a byte array) and
 * {@link FileDisk} (a host file through `node:fs/promises`). They implement `BlockBackend` and
 * never see a ring.
 *
 * @packageDocumentation
 */
export * from "./file-disk.js";
export * from "./memory-disk.js";
