/**
 * A disk described by plain, structured-cloneable data, so it can be opened in another thread
 * (a vhost worker): the worker imports this module and calls {@link openDisk} with the spec.
 * @module
 */
import { statSync } from "node:fs";
import { FileDisk } from "./file-disk.js";
import { MemoryDisk } from "./memory-disk.js";

const SECTOR = 512;

/** A disk to open: an image file, or memory shared between threads. */
export type DiskSpec =
  | {
      /** A raw image file, opened with `FileDisk.open`. */
      readonly kind: "file";
      /** Path of the image. */
      readonly path: string;
      /** Open read-only. Default false. */
      readonly readOnly?: boolean;
      /** How requests reach the file (`FileDiskOptions.io`): `"pool"` (default) or `"sync"`. */
      readonly io?: "pool" | "sync";
    }
  | {
      /** A `MemoryDisk` over a SharedArrayBuffer (the same bytes in every thread). */
      readonly kind: "memory";
      /** The disk contents, a multiple of 512 bytes. */
      readonly buffer: SharedArrayBuffer;
      /** Refuse writes. Default false. */
      readonly readOnly?: boolean;
    };

/** What a device needs to know of a disk before it is opened (its description). */
export interface DiskGeometry {
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Preferred block size in bytes. */
  readonly blockSize: number;
}

/**
 * Open the disk `spec` describes.
 *
 * @example
 * ```ts
 * // vhost-blk: the worker opens the disk itself (back-ends cannot cross threads).
 * const spec: DiskSpec = { kind: "file", path: "disk.img" };
 * const vhost = createVhostBlk({
 *   backend: { module: import.meta.resolve("@virtio-ts/backend-disk/node"), export: "openDisk", args: spec },
 *   disk: describeDisk(spec),
 * });
 * ```
 * @param spec - the disk
 * @throws BackendError (as a rejection) if the file cannot be opened; RangeError naming
 *   `spec.buffer` for a memory disk that is not whole sectors, or `options.io` for a bad `io`;
 *   TypeError naming `spec`
 */
export async function openDisk(spec: DiskSpec): Promise<FileDisk | MemoryDisk> {
  const readOnly = spec?.readOnly === true;
  if (spec?.kind === "file") {
    return FileDisk.open(
      spec.path,
      spec.io === undefined ? { readOnly } : { readOnly, io: spec.io },
    );
  }
  if (spec?.kind === "memory") return new MemoryDisk(new Uint8Array(spec.buffer), { readOnly });
  throw new TypeError('spec must be { kind: "file", path } or { kind: "memory", buffer }');
}

/**
 * The geometry {@link openDisk} will find, without opening the disk (the file is only
 * `stat`ed): what a VMM-side device description needs.
 * @param spec - the disk
 * @throws RangeError naming `spec` if its size is not a multiple of 512 bytes; the `statSync`
 *   error if the file does not exist; TypeError naming `spec`
 */
export function describeDisk(spec: DiskSpec): DiskGeometry {
  let bytes: number;
  if (spec?.kind === "file") bytes = statSync(spec.path).size;
  else if (spec?.kind === "memory") bytes = spec.buffer.byteLength;
  else throw new TypeError('spec must be { kind: "file", path } or { kind: "memory", buffer }');
  if (bytes % SECTOR !== 0) {
    throw new RangeError(`spec must name a disk of whole 512-byte sectors, got ${bytes} bytes`);
  }
  return { capacity: bytes / SECTOR, readOnly: spec.readOnly === true, blockSize: SECTOR };
}
