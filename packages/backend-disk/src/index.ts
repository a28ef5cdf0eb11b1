/**
 * Block back-ends for `@virtio-ts/devices`: {@link MemoryDisk} (a byte array),
 * {@link FileDisk} (a host file through `node:fs/promises`), {@link NbdDisk} (an NBD export,
 * e.g. qemu-nbd) and {@link NbdServer} (exports any `BlockBackend` over NBD). They implement or
 * use `BlockBackend` and never see a ring.
 *
 * @packageDocumentation
 */
export * from "./disk-spec.js";
export * from "./file-disk.js";
export * from "./memory-disk.js";
export * from "./nbd-disk.js";
export * from "./nbd-server.js";
export { NbdError, type NbdErrorCode } from "./nbd-wire.js";
