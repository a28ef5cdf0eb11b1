/**
 * Block back-ends for `@virtio-ts/devices`: {@link MemoryDisk} (a byte array),
 * {@link FileDisk} (a host file through `node:fs/promises`), {@link NbdDisk} (an NBD export,
 * e.g. qemu-nbd) and {@link NbdServer} (exports any `BlockBackend` over NBD). They implement or
 * use `BlockBackend` and never see a ring.
 *
 * @packageDocumentation
 */
export { type DiskGeometry, type DiskSpec, describeDisk, openDisk } from "./disk-spec.js";
export { FileDisk, type FileDiskOptions } from "./file-disk.js";
export { MemoryDisk, type MemoryDiskOptions } from "./memory-disk.js";
export {
  type NbdAddress,
  type NbdBlockSizes,
  NbdDisk,
  type NbdDiskOptions,
  type NbdExportInfo,
  type NbdTcpAddress,
  type NbdUnixAddress,
} from "./nbd-disk.js";
export { NbdServer, type NbdServerOptions, type NbdServerStats } from "./nbd-server.js";
export { NbdError, type NbdErrorCode } from "./nbd-wire.js";
