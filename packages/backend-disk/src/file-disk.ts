import { constants, type FileHandle, open } from "node:fs/promises";
import {
  BackendError,
  type BackendErrorCode,
  type BlockBackend,
  BlockGuard,
} from "@virtio-ts/devices";

const SECTOR = 512;
/** Zeroes written per `writev` by `writeZeroes` (allocated once per disk, lazily). */
const ZERO_CHUNK = 1 << 20;

/** Options of {@link FileDisk.open}. */
export interface FileDiskOptions {
  /** Open the file read-only and refuse writes (the device offers VIRTIO_BLK_F_RO). Default false. */
  readonly readOnly?: boolean;
  /** Preferred block size (a power of 2, at least 512). Default 512. */
  readonly blockSize?: number;
  /**
   * `flush` calls `fsync` instead of `fdatasync` (also flushes metadata such as mtime; the
   * size never changes, so `fdatasync` is enough for the data). Default false.
   */
  readonly fullSync?: boolean;
}

/**
 * A disk backed by a host file (a raw image), through `node:fs/promises` positional I/O: reads
 * are `readv` and writes `writev` at `sector × 512`, so requests never share a file position
 * and run concurrently. The file's size, fixed at open, is the capacity; it must be a
 * multiple of 512.
 *
 * Durability: a completed `write` is in the host page cache; `flush` (`fdatasync`, or `fsync`
 * with `fullSync`) makes every write completed before it durable, which is what a guest's
 * VIRTIO_BLK_T_FLUSH asks for. Data survives the death of this process as soon as the write
 * completes (the kernel owns it), and a host crash once flushed.
 *
 * `discard` is a no-op: Node has no `fallocate(PUNCH_HOLE)`, and the standard lets discarded
 * sectors keep their contents. `writeZeroes` writes zero blocks (`unmap` is ignored, the space
 * stays allocated).
 *
 * @example
 * ```ts
 * const disk = await FileDisk.open("disk.img");
 * const device = new BlkDevice(disk, { serial: "disk0" });
 * // … at shutdown
 * await disk.close();
 * ```
 */
export class FileDisk implements BlockBackend {
  /** Path the disk was opened from. */
  readonly path: string;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  readonly #fh: FileHandle;
  readonly #fullSync: boolean;
  #zeroes: Uint8Array | undefined = undefined;
  readonly #guard: BlockGuard;

  private constructor(path: string, fh: FileHandle, size: number, options: FileDiskOptions) {
    this.path = path;
    this.#fh = fh;
    this.capacity = size / SECTOR;
    this.blockSize = options.blockSize ?? SECTOR;
    this.readOnly = options.readOnly ?? false;
    this.#fullSync = options.fullSync ?? false;
    this.#guard = new BlockGuard(`disk image ${path}`, this.capacity, this.readOnly, path);
  }

  /**
   * Open an existing image file.
   * @param path - the file; it is never created or resized
   * @param options - read-only, block size, sync mode
   * @throws BackendError "not-found" (no such file), "permission" (EACCES/EPERM, e.g. a
   *   read-only file opened for writing), "bad-size" (not a regular file, or size not a multiple
   *   of 512), "io" (anything else); RangeError naming `options.blockSize`
   */
  static async open(path: string, options: FileDiskOptions = {}): Promise<FileDisk> {
    const bs = options.blockSize ?? SECTOR;
    if (!Number.isInteger(bs) || bs < SECTOR || (bs & (bs - 1)) !== 0) {
      throw new RangeError(`options.blockSize must be a power of 2 of at least 512, got ${bs}`);
    }
    let fh: FileHandle;
    try {
      fh = await open(path, options.readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (e) {
      throw hostError(e, `cannot open disk image ${path}`, path);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) {
        throw new BackendError("bad-size", `disk image ${path} is not a regular file`, { path });
      }
      if (st.size % SECTOR !== 0) {
        throw new BackendError(
          "bad-size",
          `disk image ${path} is ${st.size} bytes, not a multiple of 512`,
          { path },
        );
      }
      return new FileDisk(path, fh, st.size, options);
    } catch (e) {
      await fh.close();
      throw e instanceof BackendError ? e : hostError(e, `cannot stat ${path}`, path);
    }
  }

  /** @inheritdoc */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    const pos = this.#guard.span(sector, total(iovecs));
    try {
      await transfer(this.#fh, iovecs, pos, false);
    } catch (e) {
      throw this.#wrap(e, `read at sector ${sector}`);
    }
  }

  /** @inheritdoc */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#guard.writable();
    const pos = this.#guard.span(sector, total(iovecs));
    try {
      await transfer(this.#fh, iovecs, pos, true);
    } catch (e) {
      throw this.#wrap(e, `write at sector ${sector}`);
    }
  }

  /** `fdatasync` (or `fsync` with `fullSync`): completed writes become durable. */
  async flush(): Promise<void> {
    this.#guard.open();
    try {
      if (this.#fullSync) await this.#fh.sync();
      else await this.#fh.datasync();
    } catch (e) {
      throw this.#wrap(e, "flush");
    }
  }

  /** A no-op after the range check (see the class description). */
  async discard(sector: number, count: number): Promise<void> {
    this.#guard.writable();
    this.#guard.span(sector, count * SECTOR);
  }

  /** Writes zeroes in chunks of 1 MiB; `unmap` is ignored. */
  async writeZeroes(sector: number, count: number, _unmap: boolean): Promise<void> {
    this.#guard.writable();
    let pos = this.#guard.span(sector, count * SECTOR);
    let left = count * SECTOR;
    this.#zeroes ??= new Uint8Array(ZERO_CHUNK);
    const z = this.#zeroes;
    try {
      while (left > 0) {
        const n = Math.min(left, ZERO_CHUNK);
        await transfer(this.#fh, [n === ZERO_CHUNK ? z : z.subarray(0, n)], pos, true);
        pos += n;
        left -= n;
      }
    } catch (e) {
      throw this.#wrap(e, `write zeroes at sector ${sector}`);
    }
  }

  /** Close the file. Later operations reject with BackendError "closed". Idempotent. */
  async close(): Promise<void> {
    if (this.#guard.closed) return;
    this.#guard.closed = true;
    await this.#fh.close();
  }

  #wrap(e: unknown, what: string): BackendError {
    return e instanceof BackendError ? e : hostError(e, `${this.path}: ${what} failed`, this.path);
  }
}

/** Map a Node system error to a BackendError code. */
function hostError(e: unknown, message: string, path: string): BackendError {
  const code = (e as { code?: unknown } | null)?.code;
  let kind: BackendErrorCode = "io";
  if (code === "ENOENT" || code === "ENOTDIR") kind = "not-found";
  else if (code === "EACCES" || code === "EPERM" || code === "EROFS") kind = "permission";
  else if (code === "EISDIR") kind = "bad-size";
  const detail = e instanceof Error ? e.message : String(e);
  return new BackendError(kind, `${message}: ${detail}`, { cause: e, path });
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}

/**
 * `readv` / `writev` all of `iovecs` at `pos`, resuming after short transfers (the kernel may
 * transfer less than asked, e.g. for more than 2 GiB or across a signal).
 */
async function transfer(
  fh: FileHandle,
  iovecs: readonly Uint8Array[],
  pos: number,
  write: boolean,
): Promise<void> {
  let bufs: readonly Uint8Array[] = iovecs;
  let at = pos;
  for (;;) {
    let want = 0;
    for (const b of bufs) want += b.length;
    if (want === 0) return;
    const done = write
      ? (await fh.writev(bufs as Uint8Array[], at)).bytesWritten
      : (await fh.readv(bufs as Uint8Array[], at)).bytesRead;
    if (done === want) return;
    if (done === 0) {
      // Only a read can hit end of file (the file shrank under us).
      throw new BackendError("io", `unexpected end of file at byte ${at}`);
    }
    at += done;
    // Drop the buffers (and part of one) already transferred.
    let skip = done;
    const rest: Uint8Array[] = [];
    for (const b of bufs) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    bufs = rest;
  }
}
