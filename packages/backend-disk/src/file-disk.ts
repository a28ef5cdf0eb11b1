import { readv, readvSync, writev, writevSync } from "node:fs";
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
  /**
   * How reads and writes reach the file:
   * - `"pool"` (default): `fs.readv` / `fs.writev` with a callback, run by libuv's thread pool,
   *   so the calling thread never blocks on the disk. Each request is a hand-off to a pool thread
   *   and a wake-up back.
   * - `"sync"`: `fs.readvSync` / `fs.writevSync` on the calling thread, which blocks for each
   *   request (Firecracker's block device does the same with its "Sync" engine): no hand-off
   *   and no wake-up, so the cheapest on a page-cache-hot image, but only for a thread that
   *   does nothing else meanwhile — a vhost worker's data plane, not an emulator's main thread.
   *   The promise a request returns is already settled when the call returns.
   *
   * `flush` goes through the thread pool either way.
   */
  readonly io?: "pool" | "sync";
}

/**
 * A disk backed by a host file (a raw image), through `node:fs/promises` positional I/O: reads
 * are `readv` and writes `writev` at `sector × 512`, so requests never share a file position
 * and run concurrently. The file's size, fixed at open, is the capacity; it must be a
 * multiple of 512.
 *
 * Reads and writes go to `fs.readv` / `fs.writev` on the file descriptor with a callback, one
 * promise per request: the `FileHandle` methods wrap each call in several promises, an
 * allocated result and stat arrays, which cost about as much main-thread time as the I/O
 * submission itself (see tools/bench). `close` waits for the requests in flight before closing
 * the descriptor, so none can reach a file opened later under the same number.
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
  readonly #fd: number;
  readonly #sync: boolean;
  /** Reads and writes submitted and not yet settled; `close` waits for 0. */
  #inFlight = 0;
  #onIdle: (() => void) | undefined = undefined;

  private constructor(path: string, fh: FileHandle, size: number, options: FileDiskOptions) {
    this.path = path;
    this.#fh = fh;
    this.#fd = fh.fd;
    this.capacity = size / SECTOR;
    this.blockSize = options.blockSize ?? SECTOR;
    this.readOnly = options.readOnly ?? false;
    this.#fullSync = options.fullSync ?? false;
    this.#sync = options.io === "sync";
    this.#guard = new BlockGuard(`disk image ${path}`, this.capacity, this.readOnly, path);
    this.readSync = this.#sync
      ? (sector, iovecs) =>
          this.#transferSync(iovecs, this.#guard.span(sector, total(iovecs)), false, sector)
      : undefined;
    this.writeSync = this.#sync
      ? (sector, iovecs) => {
          this.#guard.writable();
          this.#transferSync(iovecs, this.#guard.span(sector, total(iovecs)), true, sector);
        }
      : undefined;
  }

  /**
   * Open an existing image file.
   * @param path - the file; it is never created or resized
   * @param options - read-only, block size, sync mode
   * @throws BackendError "not-found" (no such file), "permission" (EACCES/EPERM, e.g. a
   *   read-only file opened for writing), "bad-size" (not a regular file, or size not a multiple
   *   of 512), "io" (anything else); RangeError naming `options.blockSize` or `options.io`
   */
  static async open(path: string, options: FileDiskOptions = {}): Promise<FileDisk> {
    const bs = options.blockSize ?? SECTOR;
    if (!Number.isInteger(bs) || bs < SECTOR || (bs & (bs - 1)) !== 0) {
      throw new RangeError(`options.blockSize must be a power of 2 of at least 512, got ${bs}`);
    }
    const io = options.io ?? "pool";
    if (io !== "pool" && io !== "sync") {
      throw new RangeError(`options.io must be "pool" or "sync", got ${String(io)}`);
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
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let pos: number;
    try {
      pos = this.#guard.span(sector, total(iovecs));
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#io(iovecs, pos, false, sector);
  }

  /** @inheritdoc */
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let pos: number;
    try {
      this.#guard.writable();
      pos = this.#guard.span(sector, total(iovecs));
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#io(iovecs, pos, true, sector);
  }

  /**
   * `readv` / `writev` all of `iovecs` at `pos` through the callback API, resuming after short
   * transfers (the kernel may transfer less than asked, e.g. for more than 2 GiB or across a
   * signal). Counted in flight until it settles.
   */
  #io(iovecs: readonly Uint8Array[], pos: number, write: boolean, sector: number): Promise<void> {
    if (this.#sync) return this.#ioSync(iovecs, pos, write, sector);
    return new Promise<void>((resolve, reject) => {
      this.#inFlight++;
      const settle = (e: unknown): void => {
        if (--this.#inFlight === 0 && this.#onIdle !== undefined) this.#onIdle();
        if (e === undefined) resolve();
        else reject(this.#wrap(e, `${write ? "write" : "read"} at sector ${sector}`));
      };
      let bufs = iovecs as Uint8Array[];
      let at = pos;
      let want = total(bufs);
      const step = (err: NodeJS.ErrnoException | null, done: number): void => {
        if (err !== null) settle(err);
        else if (done === want) settle(undefined);
        else if (done === 0) {
          // Only a read can hit end of file (the file shrank under us).
          settle(new BackendError("io", `unexpected end of file at byte ${at}`));
        } else {
          at += done;
          bufs = dropPrefix(bufs, done);
          want -= done;
          submit();
        }
      };
      const submit = (): void => {
        if (want === 0) {
          settle(undefined);
          return;
        }
        try {
          if (write) writev(this.#fd, bufs, at, step);
          else readv(this.#fd, bufs, at, step);
        } catch (e) {
          settle(e);
        }
      };
      submit();
    });
  }

  /** `#transferSync` as a settled promise (the `"sync"` mode's `read` / `write`). */
  #ioSync(
    iovecs: readonly Uint8Array[],
    pos: number,
    write: boolean,
    sector: number,
  ): Promise<void> {
    try {
      this.#transferSync(iovecs, pos, write, sector);
    } catch (e) {
      return Promise.reject(e);
    }
    return Promise.resolve();
  }

  /**
   * `readvSync` / `writevSync` all of `iovecs` at `pos` on this thread, resuming after short
   * transfers as `#io` does.
   * @throws BackendError (the host error wrapped)
   */
  #transferSync(iovecs: readonly Uint8Array[], pos: number, write: boolean, sector: number): void {
    let bufs = iovecs as Uint8Array[];
    let at = pos;
    let want = total(bufs);
    try {
      while (want > 0) {
        const done = write ? writevSync(this.#fd, bufs, at) : readvSync(this.#fd, bufs, at);
        if (done === want) return;
        // Only a read can hit end of file (the file shrank under us).
        if (done === 0) throw new BackendError("io", `unexpected end of file at byte ${at}`);
        at += done;
        bufs = dropPrefix(bufs, done);
        want -= done;
      }
    } catch (e) {
      throw this.#wrap(e, `${write ? "write" : "read"} at sector ${sector}`);
    }
  }

  /**
   * With `io: "sync"`: {@link FileDisk.read} done before returning, so a `BlkDevice` completes
   * the request inside the guest's notification. Undefined otherwise.
   * @throws BackendError for a range outside the disk, a closed disk or a host I/O error
   */
  readonly readSync: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;

  /**
   * With `io: "sync"`: {@link FileDisk.write} done before returning. Undefined otherwise.
   * @throws BackendError when read-only, for a range outside the disk, a closed disk or a host
   *   I/O error
   */
  readonly writeSync: ((sector: number, iovecs: readonly Uint8Array[]) => void) | undefined;

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
        await this.#io([n === ZERO_CHUNK ? z : z.subarray(0, n)], pos, true, sector);
        pos += n;
        left -= n;
        // With io "sync" each chunk is written before #io returns: give the event loop a turn
        // between chunks, so a guest's request for gigabytes of zeroes cannot hold the thread.
        if (this.#sync && left > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } catch (e) {
      throw this.#wrap(e, `write zeroes at sector ${sector}`);
    }
  }

  /** Close the file. Later operations reject with BackendError "closed". Idempotent. */
  async close(): Promise<void> {
    if (this.#guard.closed) return;
    this.#guard.closed = true;
    // The guard refuses new requests now; the descriptor stays open until those in flight
    // settle, so none of them can reach a file opened later under the same number.
    if (this.#inFlight > 0) {
      await new Promise<void>((resolve) => {
        this.#onIdle = resolve;
      });
    }
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

/** `bufs` without its first `n` bytes (whole buffers dropped, the next one cut). */
function dropPrefix(bufs: readonly Uint8Array[], n: number): Uint8Array[] {
  let skip = n;
  const rest: Uint8Array[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}
