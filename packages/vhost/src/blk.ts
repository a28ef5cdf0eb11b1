/**
 * vhost-blk: a `BlkDevice` whose data plane (rings and disk I/O) runs in a worker.
 * @module
 */
import { statSync } from "node:fs";
import { FileDisk, MemoryDisk } from "@virtio-ts/backend-disk";
import {
  BackendError,
  BlkDevice,
  type BlkDeviceOptions,
  type BlockBackend,
} from "@virtio-ts/devices";
import { VhostDevice, type VhostDeviceOptions } from "./vhost-device.js";

/** The disk a vhost-blk worker opens. */
export type VhostBlkImage =
  | {
      /** A raw image file, opened in the worker with `FileDisk.open`. */
      readonly kind: "file";
      /** Path of the image. */
      readonly path: string;
      /** Open read-only (the device offers VIRTIO_BLK_F_RO). Default false. */
      readonly readOnly?: boolean;
    }
  | {
      /** A disk in memory shared with the VMM thread (a `MemoryDisk` over it). */
      readonly kind: "memory";
      /** The disk contents, a multiple of 512 bytes. */
      readonly buffer: SharedArrayBuffer;
      /** Refuse writes. Default false. */
      readonly readOnly?: boolean;
    };

/** Arguments of {@link createBlkModel} and {@link blkDescription} (structured-cloneable). */
export interface VhostBlkArgs {
  /** The disk. */
  readonly image: VhostBlkImage;
  /** BlkDevice options (queue size, serial, limits); identical on both sides. */
  readonly device?: BlkDeviceOptions;
}

/**
 * Worker-side factory: the data-plane `BlkDevice` over a `FileDisk` or `MemoryDisk`. Named in
 * a {@link VhostWorkerSpec} as `{ module: <this module>, export: "createBlkModel", args }`.
 * @throws BackendError if the file cannot be opened
 */
export async function createBlkModel(args: VhostBlkArgs): Promise<BlkDevice> {
  const img = args.image;
  const readOnly = img.readOnly === true;
  const disk: BlockBackend =
    img.kind === "file"
      ? await FileDisk.open(img.path, { readOnly })
      : new MemoryDisk(new Uint8Array(img.buffer), { readOnly });
  return new BlkDevice(disk, args.device ?? {});
}

/**
 * A block back-end that only describes a disk (capacity, block size, read-only) and refuses
 * I/O: the VMM-side description of a vhost-blk device, whose I/O happens in the worker.
 */
export class DescriptionDisk implements BlockBackend {
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;

  /**
   * @param capacity - size in 512-byte sectors
   * @param readOnly - whether the disk refuses writes
   * @param blockSize - preferred block size (default 512)
   */
  constructor(capacity: number, readOnly: boolean, blockSize = 512) {
    this.capacity = capacity;
    this.readOnly = readOnly;
    this.blockSize = blockSize;
  }

  /** Always rejects: the data plane is elsewhere. */
  read(): Promise<void> {
    return Promise.reject(new BackendError("io", "DescriptionDisk does no I/O"));
  }
  /** Always rejects: the data plane is elsewhere. */
  write(): Promise<void> {
    return this.read();
  }
  /** Always rejects: the data plane is elsewhere. */
  flush(): Promise<void> {
    return this.read();
  }
  /** Always rejects: the data plane is elsewhere. */
  discard(): Promise<void> {
    return this.read();
  }
  /** Always rejects: the data plane is elsewhere. */
  writeZeroes(): Promise<void> {
    return this.read();
  }
}

/**
 * VMM-side description of the device {@link createBlkModel} builds from the same `args`: a
 * `BlkDevice` over a {@link DescriptionDisk} of the same capacity, so features and configuration
 * space are identical.
 * @throws RangeError naming `args.image` if the image size is not a multiple of 512; the
 *   `statSync` error if the file does not exist
 */
export function blkDescription(args: VhostBlkArgs): BlkDevice {
  const img = args.image;
  const bytes = img.kind === "file" ? statSync(img.path).size : img.buffer.byteLength;
  if (bytes % 512 !== 0) {
    throw new RangeError(`args.image must be a multiple of 512 bytes, got ${bytes}`);
  }
  return new BlkDevice(new DescriptionDisk(bytes / 512, img.readOnly === true), args.device ?? {});
}

/**
 * A vhost-blk device: {@link blkDescription} on the VMM thread, {@link createBlkModel} in the
 * worker.
 * @param args - disk and BlkDevice options
 * @param options - the other {@link VhostDeviceOptions}
 */
export function createVhostBlk(
  args: VhostBlkArgs,
  options: Omit<VhostDeviceOptions, "description" | "worker"> = {},
): VhostDevice {
  return new VhostDevice({
    ...options,
    description: blkDescription(args),
    worker: { module: new URL("./blk.js", import.meta.url), export: "createBlkModel", args },
  });
}
