/**
 * Block back-ends for `@virtio-ts/devices`. This entry is browser-safe (no `node:` import, no
 * Node global): {@link MemoryDisk}, a byte array. The Node-only back-ends — `FileDisk` (a host
 * file through `node:fs/promises`), `NbdDisk` and `NbdServer` (NBD over `node:net`), and
 * `openDisk` / `describeDisk` (a disk described by cloneable data) — are in the
 * `@virtio-ts/backend-disk/node` entry. They implement or use `BlockBackend` and never see a
 * ring.
 *
 * @packageDocumentation
 */
export { MemoryDisk, type MemoryDiskOptions } from "./memory-disk.js";
