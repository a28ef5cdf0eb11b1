/**
 * vhost-blk: a `BlkDevice` whose data plane (rings and disk I/O) runs in a worker.
 * @module
 */
import {
  BackendError,
  BlkDevice,
  type BlkDeviceOptions,
  type BlockBackend,
} from "@virtio-ts/devices";
import { VhostDevice, type VhostDeviceOptions } from "./vhost-device.js";

/**
 * Where the worker gets its block back-end: a module it imports and the name of an export,
 * a function `(args) => BlockBackend | Promise<BlockBackend>` (back-ends cannot cross threads,
 * so the worker opens its own). The host knows no back-end: any `BlockBackend` works, e.g.
 * `@virtio-ts/backend-disk/node`'s `openDisk` with a `DiskSpec`.
 */
export interface VhostBlkBackendSpec {
  /** URL of the module, as a string (it is posted to the worker), e.g. `import.meta.resolve(...)`. */
  readonly module: string;
  /** Name of the factory export. */
  readonly export: string;
  /** Structured-cloneable argument of the factory. */
  readonly args?: unknown;
}

/** The disk as the VMM-side description sees it; the worker's back-end must match it. */
export interface VhostBlkDisk {
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  /** Whether writes are refused. Default false. */
  readonly readOnly?: boolean;
  /** Preferred block size (a power of 2, at least 512). Default 512. */
  readonly blockSize?: number;
}

/** Arguments of {@link createBlkModel} and {@link blkDescription} (structured-cloneable). */
export interface VhostBlkArgs {
  /** How the worker builds its back-end. */
  readonly backend: VhostBlkBackendSpec;
  /** The disk's geometry (e.g. backend-disk's `describeDisk(spec)`). */
  readonly disk: VhostBlkDisk;
  /** BlkDevice options (queue size, serial, limits); identical on both sides. */
  readonly device?: BlkDeviceOptions;
}

/**
 * Worker-side factory: the data-plane `BlkDevice` over the back-end `args.backend` builds.
 * Named in a {@link VhostWorkerSpec} as `{ module: <this module>, export: "createBlkModel", args }`.
 * @throws TypeError if the backend factory is missing; RangeError if the back-end it built
 *   does not match `args.disk`; whatever the factory throws
 */
export async function createBlkModel(args: VhostBlkArgs): Promise<BlkDevice> {
  const spec = args.backend;
  const mod = (await import(spec.module)) as Record<string, unknown>;
  const factory = mod[spec.export];
  if (typeof factory !== "function") {
    throw new TypeError(`args.backend: ${spec.module} has no function export ${spec.export}`);
  }
  const disk = (await factory(spec.args)) as BlockBackend;
  const d = args.disk;
  if (
    disk?.capacity !== d.capacity ||
    disk.readOnly !== (d.readOnly === true) ||
    disk.blockSize !== (d.blockSize ?? 512)
  ) {
    throw new RangeError(
      `args.disk (${d.capacity} sectors, readOnly ${d.readOnly === true}) does not describe the back-end the worker opened (${disk?.capacity} sectors, readOnly ${disk?.readOnly})`,
    );
  }
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
 * `BlkDevice` over a {@link DescriptionDisk} of `args.disk`'s geometry, so features and
 * configuration space are identical.
 * @throws RangeError naming `args.disk` for a capacity that is not a safe integer
 */
export function blkDescription(args: VhostBlkArgs): BlkDevice {
  const d = args.disk;
  if (!Number.isSafeInteger(d?.capacity) || d.capacity < 0) {
    throw new RangeError(`args.disk.capacity must be a number of sectors, got ${d?.capacity}`);
  }
  return new BlkDevice(
    new DescriptionDisk(d.capacity, d.readOnly === true, d.blockSize ?? 512),
    args.device ?? {},
  );
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
