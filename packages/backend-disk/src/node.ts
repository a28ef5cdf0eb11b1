/**
 * The Node-only block back-ends of `@virtio-ts/backend-disk` (import them from
 * `@virtio-ts/backend-disk/node`): {@link FileDisk} (a host file through `node:fs/promises`),
 * {@link NbdDisk} (an NBD export, e.g. qemu-nbd) and {@link NbdServer} (exports any
 * `BlockBackend` over NBD, `node:net`), and {@link openDisk} / {@link describeDisk} (a disk
 * described by plain cloneable data, opened in another thread). `MemoryDisk`, which runs
 * anywhere, is in the package's root entry.
 *
 * @module
 */
export { type DiskGeometry, type DiskSpec, describeDisk, openDisk } from "./disk-spec.js";
export { FileDisk, type FileDiskOptions } from "./file-disk.js";
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
