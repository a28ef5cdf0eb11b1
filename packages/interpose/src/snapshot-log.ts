import { randomBytes } from "node:crypto";
import { readv, writev } from "node:fs";
import { constants, type FileHandle, open } from "node:fs/promises";
import { dirname } from "node:path";
import { crc32 } from "node:zlib";
import {
  BackendError,
  type BackendErrorCode,
  type BlockBackend,
  BlockGuard,
  sectorRangeFits,
} from "@virtio-ts/devices";
import { ExtentMap, shift } from "./log-extents.js";

const SECTOR = 512;
const TWO_32 = 2 ** 32;

/** Magic at byte 0 of a snapshot log file: ASCII `VTS-RLOG`. */
export const LOG_FILE_MAGIC = "VTS-RLOG";
/**
 * Version of the log format written by {@link SnapshotLog}. Version 2 added the durable marks
 * in the header; version 1 logs are read, and upgraded by a writable open.
 */
export const LOG_FILE_VERSION = 2;
/** Bytes of the log file header; the first record starts here. */
export const LOG_HEADER_BYTES = 512;
/** Bytes of a record header; a record's payload follows it. */
export const LOG_RECORD_HEADER_BYTES = 32;

/** Record types of the log (`type` field of a record header). */
export const LogRecordType = {
  /** Guest data: `count` sectors at `sector`, payload `count × 512` bytes. */
  WRITE: 1,
  /** `count` sectors at `sector` read as zeroes; no payload. */
  ZEROES: 2,
  /** A named snapshot: payload is the UTF-8 name (`count` bytes, 1–255). */
  SNAPSHOT: 3,
  /**
   * Written after an fdatasync completed: every byte before log offset `sector` was durable.
   * Lets opening tell a torn tail (ignored) from damage to flushed data (refused). No payload.
   */
  FLUSH: 4,
} as const;

// Record header offsets (little-endian).
const R_TYPE = 4;
const R_SEQ = 8;
const R_SECTOR = 16;
const R_COUNT = 24;
const R_CRC = 28;
const RECORD_MAGIC = Buffer.from("VRlg", "latin1");
// File header offsets.
const H_VERSION = 8;
const H_HEADER_BYTES = 12;
const H_CAPACITY = 16;
const H_LOG_ID = 24;
const H_CRC = 32;
/** Two durable-mark slots (written alternately, so a torn write leaves the other intact). */
const H_MARKS = 64;
const MARK_BYTES = 32;
// Mark slot offsets (little-endian).
const M_GEN = 0;
const M_END = 8;
const M_SEQ = 16;
const M_CRC = 24;

/** Records read at once while scanning, and log data copied per step while committing. */
const IO_CHUNK = 1 << 20;
/** Write scratch buffers kept for reuse; larger writes allocate. */
const POOL_MAX = 8;
const POOL_BYTES = LOG_RECORD_HEADER_BYTES + 128 * 1024;
/** Record buffers of up to 16 KiB of data: one per request in flight at a deep queue. */
const SMALL_POOL_MAX = 64;
const SMALL_POOL_BYTES = LOG_RECORD_HEADER_BYTES + 16 * 1024;
/** Records appended in one `pwritev` at most (Linux IOV_MAX is 1024). */
const BATCH_MAX = 256;

// Appends issued in one turn of the event loop are written together on the next one.
const nextTurn: (fn: () => void) => void =
  typeof setImmediate === "function" ? (fn) => setImmediate(fn) : (fn) => setTimeout(fn, 0);

/** Records whose positions follow each other, written with one `pwritev`. */
interface AppendBatch {
  readonly pos: number;
  bytes: number;
  readonly recs: Uint8Array[];
  readonly settle: ((e: unknown) => void)[];
}

/** Options of {@link snapshotLog}. */
export interface SnapshotLogOptions {
  /** Create the log file when it does not exist (never overwrites one). Default false. */
  readonly create?: boolean;
  /** Open the log read-only: writes are refused and a torn tail is ignored, not truncated. */
  readonly readOnly?: boolean;
  /**
   * Refuse new writes once the index holds this many extents (memory is about 100 bytes per
   * extent); {@link SnapshotLog.commit} empties it. Default 2^20.
   */
  readonly maxExtents?: number;
  /**
   * Open a log that lost flushed data (SnapshotLogError "truncated" or "corrupt") anyway, at its
   * last valid record; {@link SnapshotLog.lostBytes} says how much acknowledged data is gone. A
   * writable open then cuts the file there and records the new durable end, so the loss is
   * reported once. The recovery path: copy the file aside first if the missing part may still
   * be found. Default false.
   */
  readonly acceptLoss?: boolean;
}

/** A named snapshot in the log. */
export interface SnapshotInfo {
  /** Its name. */
  readonly name: string;
  /** Sequence number of its marker record. */
  readonly sequence: number;
  /** Log size just after its marker: {@link SnapshotLog.rollback} truncates the log here. */
  readonly logBytes: number;
}

/** Why a log file was refused, as a literal a caller can switch on. */
export type SnapshotLogErrorCode =
  /** The file does not start with {@link LOG_FILE_MAGIC}. */
  | "not-a-log"
  /** A version this code does not know. */
  | "unsupported"
  /** The file header fails its CRC-32 or is inconsistent. */
  | "corrupt-header"
  /** A record before the durable end (or a flush marker) is damaged: flushed data is lost. */
  | "corrupt"
  /**
   * The file is shorter than its durable end (the header's mark): it was cut, and records that
   * a completed flush had made durable are gone.
   */
  | "truncated"
  /** The log was made over a base of another capacity. */
  | "base-mismatch";

/** A snapshot log file cannot be used. Raised when opening; never by I/O on an open log. */
export class SnapshotLogError extends Error {
  /** What went wrong. */
  readonly code: SnapshotLogErrorCode;
  /** The log file's path. */
  readonly path: string;
  /** Byte offset of the damage in the file, when there is one. */
  readonly offset: number | undefined;
  /**
   * For "truncated" and "corrupt": the durable end the log had reached (every byte before it
   * was flushed), so `durableBytes − offset` bytes of acknowledged data are missing or damaged.
   */
  readonly durableBytes: number | undefined;

  /**
   * @param code - what went wrong
   * @param message - text for humans, naming the argument at fault
   * @param path - the log file
   * @param offset - where in the file, if known
   * @param durableBytes - the durable end recorded before the loss, if known
   */
  constructor(
    code: SnapshotLogErrorCode,
    message: string,
    path: string,
    offset?: number,
    durableBytes?: number,
  ) {
    super(message);
    this.name = "SnapshotLogError";
    this.code = code;
    this.path = path;
    this.offset = offset;
    this.durableBytes = durableBytes;
  }
}

/**
 * A {@link BlockBackend} that never writes its base: every write is appended to a redo log
 * file as a checksummed record, and reads take each sector from the newest record that wrote
 * it (through an in-memory extent index built when opening) or else from the base. Named
 * snapshots are marker records; {@link SnapshotLog.rollback} truncates the log back to one,
 * {@link SnapshotLog.commit} merges the log into the base. Open one with {@link snapshotLog}.
 *
 * Log file: a 512-byte header, then records back to back (formats in the package README):
 * each a 32-byte header {magic, type, sequence, sector, count, CRC-32} and a payload. The
 * CRC-32 covers the header and payload and is seeded with the log's random id, so records
 * from another log, stale bytes and guest data that imitates a record do not verify.
 *
 * Durability and crashes:
 * - A write completes once its record is in the file (host page cache). Records issued in
 *   one turn of the event loop are written together on the next turn, with one `pwritev`
 *   (positions are reserved in issue order, so the batch is contiguous): a deep queue costs
 *   one write and one thread-pool job per batch, not per record. `flush` waits for
 *   every record issued before it, fdatasyncs the log, appends a FLUSH marker, then records
 *   the durable end (offset and sequence number) in one of two checksummed slots of the file
 *   header and fdatasyncs again: when `flush` resolves, the header says how far the file must
 *   reach.
 * - Opening reads and checks every record in order, stopping at the first that is
 *   incomplete or fails its checksum or sequence. Stopping before the durable end means
 *   flushed data is gone: SnapshotLogError "truncated" (the file was cut) or "corrupt" (a
 *   record is damaged), never a silently shorter log; `options.acceptLoss` opens it anyway
 *   and reports {@link SnapshotLog.lostBytes}. Stopping after it is a torn tail (writes never
 *   flushed): it is ignored and truncated away, and a torn record is never applied.
 * - `discard` is a no-op (sectors keep their contents); `writeZeroes` appends a ZEROES record.
 * - A failed append leaves a hole: the log then refuses further writes (reopen it).
 *
 * Memory: one index entry per extent (see `maxExtents`), at most one per record plus two.
 * Opening reads the whole log once to check every checksum and builds the index in
 * O(n log n) for n records.
 */
export class SnapshotLog implements BlockBackend {
  /** The base image (only {@link SnapshotLog.commit} writes it). */
  readonly base: BlockBackend;
  /** The log file's path. */
  readonly path: string;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  /** Bytes of torn tail found (and, unless read-only, truncated) when the log was opened. */
  readonly tornBytes: number;
  /**
   * Bytes of acknowledged (flushed) data found missing or damaged when the log was opened with
   * `options.acceptLoss`; 0 otherwise.
   */
  readonly lostBytes: number;
  readonly #fh: FileHandle;
  readonly #seed: number;
  readonly #maxExtents: number;
  readonly #index = new ExtentMap();
  readonly #pending = new Set<Promise<void>>();
  /**
   * Reads not yet settled (every path, from the moment their arguments passed), and close()'s
   * wake-up when none is left: close() must not take the descriptor from under a read, also
   * one waiting between its pieces (on the base, or on a commit).
   */
  #reads = 0;
  #readsDrained: (() => void) | undefined = undefined;
  readonly #pool: Uint8Array[] = [];
  readonly #smallPool: Uint8Array[] = [];
  /** The append batch still open for records (written on the next turn). */
  #batch: AppendBatch | undefined = undefined;
  readonly #fd: number;
  #snapshots: SnapshotInfo[] = [];
  #tail = LOG_HEADER_BYTES;
  #seq = 0;
  #markedEnd = LOG_HEADER_BYTES;
  /** The durable mark last written to the header (and fdatasynced). */
  #mark: DurableMark = { gen: 0, end: LOG_HEADER_BYTES, seq: 0 };
  #markChain: Promise<void> = Promise.resolve();
  #broken: BackendError | undefined = undefined;
  readonly #guard: BlockGuard;
  #active = 0;
  #exclusive: Promise<void> | undefined = undefined;
  #idle: (() => void) | undefined = undefined;

  private constructor(
    base: BlockBackend,
    path: string,
    fh: FileHandle,
    logId: Uint8Array,
    readOnly: boolean,
    maxExtents: number,
    tornBytes: number,
    lostBytes: number,
  ) {
    this.base = base;
    this.path = path;
    this.#fh = fh;
    this.#fd = fh.fd;
    this.#seed = crc32(logId);
    this.capacity = base.capacity;
    this.blockSize = base.blockSize;
    this.readOnly = readOnly;
    this.#maxExtents = maxExtents;
    this.tornBytes = tornBytes;
    this.#guard = new BlockGuard(`snapshot log ${path}`, this.capacity, readOnly, path);
    this.lostBytes = lostBytes;
  }

  /** @internal */
  static async open(
    base: BlockBackend,
    path: string,
    options: SnapshotLogOptions = {},
  ): Promise<SnapshotLog> {
    if (typeof path !== "string" || path.length === 0) {
      throw new TypeError("logPath must be a non-empty string");
    }
    if (!Number.isSafeInteger(base?.capacity) || base.capacity < 0) {
      throw new RangeError(
        `base.capacity must be a non-negative safe integer, got ${base?.capacity}`,
      );
    }
    const maxExtents = options.maxExtents ?? 1 << 20;
    if (!Number.isSafeInteger(maxExtents) || maxExtents < 1) {
      throw new RangeError(`options.maxExtents must be a positive integer, got ${maxExtents}`);
    }
    const readOnly = options.readOnly ?? false;
    let fh: FileHandle;
    try {
      fh = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (e) {
      if ((e as { code?: unknown }).code === "ENOENT" && options.create && !readOnly) {
        fh = await createLog(path, base.capacity);
      } else if ((e as { code?: unknown }).code === "ENOENT") {
        throw new BackendError(
          "not-found",
          `logPath ${path} does not exist (pass options.create to start a new log)`,
          { cause: e, path },
        );
      } else {
        throw hostError(e, `cannot open logPath ${path}`, path);
      }
    }
    try {
      const size = (await fh.stat()).size;
      const header = await readHeader(fh, path, size, base.capacity);
      const seed = crc32(header.logId);
      const scan = await scanLog(
        fh,
        path,
        size,
        seed,
        base.capacity,
        header.mark,
        options.acceptLoss === true,
      );
      let mark = header.mark ?? { gen: 0, end: LOG_HEADER_BYTES, seq: 0 };
      if (!readOnly) {
        if (scan.tornAt < size) {
          await fh.truncate(scan.tornAt);
          await fh.datasync();
        }
        if (header.mark === undefined || scan.lostBytes > 0) {
          // A version-1 log becomes version 2 (everything left in the file is durable now),
          // and an accepted loss is recorded so the next open does not report it again.
          mark = { gen: mark.gen + 1, end: scan.tornAt, seq: scan.lastSeq };
          await writeAll(fh, encodeHeader(base.capacity, header.logId, mark, seed), 0);
          await fh.datasync();
        }
      }
      const log = new SnapshotLog(
        base,
        path,
        fh,
        header.logId,
        readOnly,
        maxExtents,
        size - scan.tornAt,
        scan.lostBytes,
      );
      log.#mark = mark;
      log.#adopt(scan);
      return log;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** The named snapshots, oldest first. */
  get snapshots(): readonly SnapshotInfo[] {
    return this.#snapshots;
  }

  /** Current size of the log file in bytes (header and records, including ones in flight). */
  get logBytes(): number {
    return this.#tail;
  }

  /** Number of extents in the in-memory index. */
  get extentCount(): number {
    return this.#index.size;
  }

  /** Sequence number of the newest record (0 for an empty log). */
  get sequence(): number {
    return this.#seq;
  }

  /**
   * The durable end recorded in the header: every byte of the log before it was made durable
   * by a completed flush, and opening refuses a file that no longer reaches it.
   */
  get durableBytes(): number {
    return this.#mark.end;
  }

  /** @inheritdoc */
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    // The common cases without async layers: no exclusive section (commit, rollback) pending,
    // the log open, and the whole read inside one logged extent (one readv of the log) or
    // outside every extent (one read of the base). Anything else, including arguments that
    // would throw, takes #readAny, which checks them and rejects.
    if (this.#exclusive === undefined && !this.#guard.closed) {
      try {
        const len = total(iovecs);
        if (len > 0 && sectorRangeFits(sector, len, this.capacity)) {
          const end = sector + len / SECTOR;
          const x = this.#index.first(sector);
          if (x === undefined || x.start >= end) return this.#readBase(sector, iovecs);
          if (x.start <= sector && x.end >= end && x.off >= 0) {
            return this.#readOne(iovecs, shift(x, sector));
          }
        }
      } catch {
        // #readAny throws the same error as a rejection.
      }
    }
    return this.#readAny(sector, iovecs);
  }

  /** `read`'s fast path for a range no record wrote: the base's read, counted in #active. */
  #readBase(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#active++;
    try {
      return this.base.read(sector, iovecs).then(
        () => this.#leave(),
        (e: unknown) => {
          this.#leave();
          throw e;
        },
      );
    } catch (e) {
      // A base that throws instead of rejecting (or returns no promise) still releases the log.
      this.#leave();
      return Promise.reject(e);
    }
  }

  /**
   * `read`'s fast path: one extent, one readv of the log, one promise settled from the readv
   * callback. Counted in #active (a commit or rollback waits for it) and in #reads (close()
   * waits for it before the descriptor goes).
   */
  #readOne(iovecs: readonly Uint8Array[], pos: number): Promise<void> {
    this.#active++;
    this.#reads++;
    return new Promise<void>((resolve, reject) => {
      const done = (e: unknown): void => {
        this.#leave();
        this.#readEnd();
        if (e === undefined) resolve();
        else reject(this.#fail(e, `read at byte ${pos}`));
      };
      try {
        readvAllThen(this.#fd, iovecs, pos, done);
      } catch (e) {
        // fs.readv refuses bad arguments synchronously (e.g. an iovec that is not a view).
        done(e);
      }
    });
  }

  /** `read` in general: waits out an exclusive section, walks every extent the read touches. */
  async #readAny(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    const len = total(iovecs);
    this.#guard.span(sector, len);
    this.#reads++;
    try {
      await this.#readPieces(sector, iovecs, len);
    } finally {
      this.#readEnd();
    }
  }

  /** A read settled: count it out of #reads, and wake close() when it was the last. */
  #readEnd(): void {
    if (--this.#reads === 0 && this.#readsDrained !== undefined) {
      const drained = this.#readsDrained;
      this.#readsDrained = undefined;
      drained();
    }
  }

  /** #readAny's body: waits out an exclusive section, then walks every extent the read touches. */
  async #readPieces(sector: number, iovecs: readonly Uint8Array[], len: number): Promise<void> {
    while (this.#exclusive !== undefined) await this.#exclusive;
    this.#active++;
    try {
      const end = sector + len / SECTOR;
      // Most reads lie in one extent: one log read (or zero fill), no list of pieces.
      const one = len > 0 ? this.#index.covering(sector, end) : undefined;
      if (one !== undefined) {
        if (one.off < 0) for (const v of iovecs) v.fill(0);
        else await this.#readLog(iovecs, shift(one, sector));
        return;
      }
      let cursor = sector;
      // A snapshot of the extents: writes completing during the awaits below must not shift
      // what this loop walks.
      for (const x of this.#index.overlapping(sector, end)) {
        const a = Math.max(x.start, sector);
        const b = Math.min(x.end, end);
        if (a > cursor) {
          await this.base.read(cursor, slice(iovecs, (cursor - sector) * SECTOR, a - cursor));
        }
        const parts = slice(iovecs, (a - sector) * SECTOR, b - a);
        if (x.off < 0) for (const p of parts) p.fill(0);
        else await this.#readLog(parts, shift(x, a));
        cursor = b;
      }
      if (cursor < end) {
        await this.base.read(cursor, slice(iovecs, (cursor - sector) * SECTOR, end - cursor));
      }
    } finally {
      this.#leave();
    }
  }

  /** Appends a WRITE record (a private copy of the data: the guest may change `iovecs`). */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#guard.writable();
    const len = total(iovecs);
    this.#guard.span(sector, len);
    while (this.#exclusive !== undefined) await this.#exclusive;
    this.#active++;
    try {
      const rec = this.#take(LOG_RECORD_HEADER_BYTES + len);
      try {
        let at = LOG_RECORD_HEADER_BYTES;
        for (const v of iovecs) {
          rec.set(v, at);
          at += v.length;
        }
        const view = rec.subarray(0, LOG_RECORD_HEADER_BYTES + len);
        await this.#append(view, LogRecordType.WRITE, sector, len / SECTOR);
      } finally {
        this.#give(rec);
      }
    } finally {
      this.#leave();
    }
  }

  /**
   * Waits for every record issued before it, fdatasyncs the log, then appends a FLUSH marker
   * (made durable by the next flush). The base is not touched.
   */
  async flush(): Promise<void> {
    this.#guard.open();
    while (this.#exclusive !== undefined) await this.#exclusive;
    this.#active++;
    try {
      await this.#sync();
    } finally {
      this.#leave();
    }
  }

  /** A no-op after the checks: discarded sectors keep their contents (allowed by the contract). */
  async discard(sector: number, count: number): Promise<void> {
    this.#guard.writable();
    this.#guard.span(sector, count * SECTOR);
  }

  /** Appends a ZEROES record (no payload); `unmap` is ignored. */
  async writeZeroes(sector: number, count: number, _unmap: boolean): Promise<void> {
    this.#guard.writable();
    this.#guard.span(sector, count * SECTOR);
    while (this.#exclusive !== undefined) await this.#exclusive;
    this.#active++;
    try {
      const rec = new Uint8Array(LOG_RECORD_HEADER_BYTES);
      await this.#append(rec, LogRecordType.ZEROES, sector, count);
    } finally {
      this.#leave();
    }
  }

  /**
   * Name the current state: every write completed before this call is part of the snapshot,
   * none issued after it. Appends a SNAPSHOT marker and flushes (the marker is durable when
   * this resolves).
   * @param name - 1 to 255 bytes of UTF-8, unique in this log
   * @throws RangeError naming `name`; BackendError on I/O failure
   */
  async snapshot(name: string): Promise<SnapshotInfo> {
    this.#guard.writable();
    const bytes = typeof name === "string" ? Buffer.from(name, "utf8") : undefined;
    if (bytes === undefined || bytes.length === 0 || bytes.length > 255) {
      throw new RangeError(`name must be 1 to 255 bytes of UTF-8, got ${JSON.stringify(name)}`);
    }
    if (this.#snapshots.some((s) => s.name === name)) {
      throw new RangeError(`name: a snapshot called ${JSON.stringify(name)} already exists`);
    }
    while (this.#exclusive !== undefined) await this.#exclusive;
    this.#active++;
    try {
      const rec = new Uint8Array(LOG_RECORD_HEADER_BYTES + bytes.length);
      rec.set(bytes, LOG_RECORD_HEADER_BYTES);
      const { seq, end } = await this.#append(rec, LogRecordType.SNAPSHOT, 0, bytes.length);
      const info: SnapshotInfo = { name, sequence: seq, logBytes: end };
      this.#snapshots.push(info);
      await this.#sync();
      return info;
    } finally {
      this.#leave();
    }
  }

  /**
   * Return to a named snapshot: waits for requests in flight (new ones wait), truncates the
   * log just after the snapshot's marker, fdatasyncs it, and rebuilds the index. Writes and
   * snapshots made after it are gone; the snapshot itself stays.
   * @param name - a name from {@link SnapshotLog.snapshots}
   * @throws RangeError naming `name` when there is no such snapshot; BackendError on I/O
   *   failure
   */
  async rollback(name: string): Promise<void> {
    this.#guard.writable();
    const target = this.#snapshots.find((s) => s.name === name);
    if (target === undefined) {
      throw new RangeError(`name: no snapshot called ${JSON.stringify(name)} in ${this.path}`);
    }
    await this.#lock(async () => {
      try {
        // Lower the durable end first: a crash before the truncation then leaves later records
        // as an unflushed tail (the rollback did not happen), never a "truncated" log.
        if (this.#mark.end > target.logBytes) {
          await this.#writeMark(target.logBytes, target.sequence);
        }
        await this.#fh.truncate(target.logBytes);
        await this.#fh.datasync();
        const scan = await scanLog(
          this.#fh,
          this.path,
          target.logBytes,
          this.#seed,
          this.capacity,
          this.#mark,
          false,
        );
        this.#adopt(scan);
      } catch (e) {
        throw this.#fail(e, "rollback");
      }
    });
  }

  /**
   * Merge the log into the base and empty it. Crash-safe by ordering: (1) write every
   * indexed extent to the base, (2) flush the base, (3) truncate the log to its header and
   * fdatasync it. A crash before (3) completes leaves the whole log in place and reopening
   * serves the same data (the log still wins over the partly written base); committing
   * again finishes the job. Snapshots are dropped with the log.
   * @throws BackendError "read-only" when the base (or this log) is read-only, or on I/O
   *   failure
   */
  async commit(): Promise<void> {
    this.#guard.writable();
    if (this.base.readOnly) {
      throw new BackendError("read-only", `cannot commit ${this.path}: the base is read-only`, {
        path: this.path,
      });
    }
    await this.#lock(async () => {
      const chunk = new Uint8Array(Math.min(IO_CHUNK, Math.max(SECTOR, this.#tail)));
      for (const x of this.#index.toArray()) {
        if (x.off < 0) {
          await this.base.writeZeroes(x.start, x.end - x.start, false);
          continue;
        }
        for (let s = x.start; s < x.end; ) {
          const n = Math.min(x.end - s, chunk.length / SECTOR);
          const part = chunk.subarray(0, n * SECTOR);
          await this.#readLog([part], shift(x, s));
          await this.base.write(s, [part]);
          s += n;
        }
      }
      await this.base.flush();
      try {
        // The durable end goes back to the header before the records go (see rollback).
        await this.#writeMark(LOG_HEADER_BYTES, 0);
        await this.#fh.truncate(LOG_HEADER_BYTES);
        await this.#fh.datasync();
      } catch (e) {
        throw this.#fail(e, "commit");
      }
      this.#index.clear();
      this.#snapshots = [];
      this.#tail = LOG_HEADER_BYTES;
      this.#markedEnd = LOG_HEADER_BYTES;
      this.#seq = 0;
    });
  }

  /** Wait for records in flight, then close the file. Later operations reject. Idempotent. */
  async close(): Promise<void> {
    if (this.#guard.closed) return;
    this.#guard.closed = true;
    if (this.#reads > 0) {
      await new Promise<void>((r) => {
        this.#readsDrained = r;
      });
    }
    await Promise.allSettled([...this.#pending]);
    await this.#fh.close();
  }

  /** Fill in the header of `rec`, append it, and index it once it is in the file. */
  async #append(
    rec: Uint8Array,
    type: number,
    sector: number,
    count: number,
  ): Promise<{ seq: number; end: number }> {
    if (this.#broken !== undefined) throw this.#broken;
    if (type === LogRecordType.WRITE || type === LogRecordType.ZEROES) {
      if (this.#index.size >= this.#maxExtents) {
        throw new BackendError(
          "io",
          `${this.path}: index full (${this.#index.size} extents, options.maxExtents); commit the log`,
          { path: this.path },
        );
      }
    }
    // Reserve the position and sequence synchronously, so concurrent appends never overlap.
    const seq = ++this.#seq;
    const pos = this.#tail;
    this.#tail += rec.length;
    encodeRecord(rec, type, seq, sector, count, this.#seed);
    const p = this.#write(rec, pos);
    this.#pending.add(p);
    try {
      await p;
    } catch (e) {
      // A hole in the log: records after it would be dropped at the next open, so refuse
      // to append more and let the caller reopen.
      this.#broken = this.#fail(e, `append at byte ${pos}`);
      throw this.#broken;
    } finally {
      this.#pending.delete(p);
    }
    if (type === LogRecordType.WRITE) {
      this.#index.insert(sector, count, pos + LOG_RECORD_HEADER_BYTES, seq);
    } else if (type === LogRecordType.ZEROES) {
      this.#index.insert(sector, count, -1, seq);
    }
    return { seq, end: pos + rec.length };
  }

  /**
   * Append `rec` at `pos` (the current end: positions are reserved in order) as part of the
   * open batch; the batch is written with one `pwritev` on the next turn of the event loop, so
   * the records of a deep queue cost one write between them instead of one each. Settles when
   * the batch is written (all of it, short writes resumed) or failed.
   */
  #write(rec: Uint8Array, pos: number): Promise<void> {
    let b = this.#batch;
    if (b === undefined || b.pos + b.bytes !== pos || b.recs.length >= BATCH_MAX) {
      b = { pos, bytes: 0, recs: [], settle: [] };
      this.#batch = b;
      const batch = b;
      nextTurn(() => this.#writeBatch(batch));
    }
    b.recs.push(rec);
    b.bytes += rec.length;
    const settle = b.settle;
    return new Promise<void>((resolve, reject) => {
      settle.push((e) => (e === undefined ? resolve() : reject(e)));
    });
  }

  #writeBatch(b: AppendBatch): void {
    if (this.#batch === b) this.#batch = undefined;
    const done = (e: unknown): void => {
      for (const s of b.settle) s(e);
    };
    let bufs = b.recs;
    let at = b.pos;
    let left = b.bytes;
    const step = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err !== null) done(err);
      else if (n === left) done(undefined);
      else if (n === 0) done(new BackendError("io", `wrote 0 bytes at ${at}`));
      else {
        at += n;
        left -= n;
        bufs = dropPrefix(bufs, n);
        writev(this.#fd, bufs, at, step);
      }
    };
    try {
      writev(this.#fd, bufs, at, step);
    } catch (e) {
      done(e);
    }
  }

  async #sync(): Promise<void> {
    if (this.#broken !== undefined) throw this.#broken;
    // Sampled together: the record ending at `end` has sequence number `seq` (positions and
    // sequence numbers are reserved together, in order).
    const end = this.#tail;
    const seq = this.#seq;
    if (this.#pending.size > 0) await Promise.all([...this.#pending]);
    try {
      await this.#fh.datasync();
    } catch (e) {
      throw this.#fail(e, "fdatasync");
    }
    if (end > this.#markedEnd && !this.readOnly) {
      // Claimed before the await so concurrent flushes write one marker; afterwards it is the
      // marker's own end, so a flush with nothing new since writes none.
      this.#markedEnd = end;
      const marker = new Uint8Array(LOG_RECORD_HEADER_BYTES);
      const m = await this.#append(marker, LogRecordType.FLUSH, end, 0);
      // Only when nothing slipped in between: such a record is not covered by this marker.
      if (m.end - LOG_RECORD_HEADER_BYTES === end && this.#markedEnd === end)
        this.#markedEnd = m.end;
    }
    if (!this.readOnly) await this.#publishMark(end, seq);
  }

  /**
   * Record in the header that the log is durable up to `end` (the record ending there has
   * sequence `seq`), unless an earlier or concurrent flush already recorded as much. Mark
   * writes run one at a time, so the header's mark never moves backwards.
   */
  #publishMark(end: number, seq: number): Promise<void> {
    const run = async (): Promise<void> => {
      if (end <= this.#mark.end) return;
      await this.#writeMark(end, seq);
    };
    const p = this.#markChain.then(run);
    this.#markChain = p.catch(() => {});
    return p;
  }

  /** Write the next mark slot (the other one keeps the previous mark) and fdatasync it. */
  async #writeMark(end: number, seq: number): Promise<void> {
    const mark: DurableMark = { gen: this.#mark.gen + 1, end, seq };
    try {
      await writeAll(this.#fh, encodeMark(mark, this.#seed), markSlot(mark.gen));
      await this.#fh.datasync();
    } catch (e) {
      this.#broken = this.#fail(e, "recording the durable end");
      throw this.#broken;
    }
    this.#mark = mark;
  }

  #adopt(scan: Scan): void {
    // One bulk build, not one insert per record: inserting is O(extents) each, so replaying a
    // long log was quadratic (113 s for 400k records).
    this.#index.build(scan.records);
    this.#snapshots = scan.snapshots;
    this.#tail = scan.tornAt;
    this.#seq = scan.lastSeq;
    this.#markedEnd = scan.markedEnd;
  }

  async #readLog(parts: readonly Uint8Array[], pos: number): Promise<void> {
    // In #pending too: close() waits for it before the descriptor goes.
    const p = readvAll(this.#fd, parts, pos);
    this.#pending.add(p);
    try {
      await p;
    } catch (e) {
      throw this.#fail(e, `read at byte ${pos}`);
    } finally {
      this.#pending.delete(p);
    }
  }

  #leave(): void {
    this.#active--;
    if (this.#active === 0 && this.#idle !== undefined) {
      const wake = this.#idle;
      this.#idle = undefined;
      wake();
    }
  }

  /** Run `fn` with no other request in flight; requests arriving meanwhile wait. */
  async #lock(fn: () => Promise<void>): Promise<void> {
    // Check and take in one synchronous step after the last await, so two locks never
    // both pass (the same pattern guards every request's `#active++`).
    while (this.#exclusive !== undefined) await this.#exclusive;
    let release!: () => void;
    this.#exclusive = new Promise<void>((r) => {
      release = r;
    });
    try {
      if (this.#active > 0) {
        await new Promise<void>((r) => {
          this.#idle = r;
        });
      }
      await fn();
    } finally {
      this.#exclusive = undefined;
      release();
    }
  }

  #take(len: number): Uint8Array {
    if (len <= SMALL_POOL_BYTES) return this.#smallPool.pop() ?? new Uint8Array(SMALL_POOL_BYTES);
    if (len > POOL_BYTES) return new Uint8Array(len);
    return this.#pool.pop() ?? new Uint8Array(POOL_BYTES);
  }

  #give(buf: Uint8Array): void {
    if (buf.length === SMALL_POOL_BYTES) {
      if (this.#smallPool.length < SMALL_POOL_MAX) this.#smallPool.push(buf);
    } else if (buf.length === POOL_BYTES && this.#pool.length < POOL_MAX) this.#pool.push(buf);
  }

  #fail(e: unknown, what: string): BackendError {
    return e instanceof BackendError ? e : hostError(e, `${this.path}: ${what} failed`, this.path);
  }
}

/**
 * Open (or with `options.create`, start) the redo log at `logPath` over `base`; see
 * {@link SnapshotLog}.
 * @param base - the image the log overlays; only {@link SnapshotLog.commit} writes to it
 * @param logPath - the log file
 * @param options - create, read-only, index limit
 * @throws BackendError "not-found" naming `logPath` when it is missing and `create` is not
 *   set, other BackendError codes for host failures; SnapshotLogError for a file that is not
 *   a usable log; RangeError naming `base.capacity` or `options.maxExtents`
 * @example
 * ```ts
 * const log = await snapshotLog(await FileDisk.open("base.img", { readOnly: true }),
 *   "base.img.log", { create: true });
 * await log.snapshot("clean");
 * // … guest runs …
 * await log.rollback("clean");
 * ```
 */
export function snapshotLog(
  base: BlockBackend,
  logPath: string,
  options: SnapshotLogOptions = {},
): Promise<SnapshotLog> {
  return SnapshotLog.open(base, logPath, options);
}

interface Scan {
  records: { sector: number; count: number; off: number; seq: number }[];
  snapshots: SnapshotInfo[];
  /** End of the last valid record: where the next append goes. */
  tornAt: number;
  lastSeq: number;
  /** End of the last FLUSH marker: a flush with nothing appended after it writes no marker. */
  markedEnd: number;
  /** Flushed bytes missing or damaged, dropped because the caller accepted the loss. */
  lostBytes: number;
}

/** The durable end recorded in a header slot. */
interface DurableMark {
  /** Generation: the slot with the higher one is current. */
  readonly gen: number;
  /** Every byte of the log before this offset is durable. */
  readonly end: number;
  /** Sequence number of the record ending at `end` (0 when `end` is the header's end). */
  readonly seq: number;
}

function markSlot(gen: number): number {
  return H_MARKS + (gen % 2) * MARK_BYTES;
}

function encodeMark(mark: DurableMark, seed: number): Uint8Array {
  const b = new Uint8Array(MARK_BYTES);
  const dv = new DataView(b.buffer);
  setU64(dv, M_GEN, mark.gen);
  setU64(dv, M_END, mark.end);
  setU64(dv, M_SEQ, mark.seq);
  dv.setUint32(M_CRC, crc32(b.subarray(0, M_CRC), seed), true);
  return b;
}

function decodeMark(h: Uint8Array, at: number, seed: number): DurableMark | undefined {
  const b = h.subarray(at, at + MARK_BYTES);
  const dv = new DataView(b.buffer, b.byteOffset, MARK_BYTES);
  if (dv.getUint32(M_CRC, true) !== crc32(b.subarray(0, M_CRC), seed)) return undefined;
  const mark = { gen: getU64(dv, M_GEN), end: getU64(dv, M_END), seq: getU64(dv, M_SEQ) };
  if (
    !Number.isSafeInteger(mark.gen) ||
    !Number.isSafeInteger(mark.end) ||
    !Number.isSafeInteger(mark.seq) ||
    mark.gen < 1 ||
    mark.end < LOG_HEADER_BYTES
  ) {
    return undefined;
  }
  return mark;
}

/** A version-2 file header: identity, its CRC, and `mark` in its slot. */
function encodeHeader(
  capacity: number,
  logId: Uint8Array,
  mark: DurableMark,
  seed: number,
): Uint8Array {
  const h = new Uint8Array(LOG_HEADER_BYTES);
  const dv = new DataView(h.buffer);
  h.set(Buffer.from(LOG_FILE_MAGIC, "latin1"), 0);
  dv.setUint32(H_VERSION, LOG_FILE_VERSION, true);
  dv.setUint32(H_HEADER_BYTES, LOG_HEADER_BYTES, true);
  setU64(dv, H_CAPACITY, capacity);
  h.set(logId, H_LOG_ID);
  dv.setUint32(H_CRC, crc32(h.subarray(0, H_CRC)), true);
  h.set(encodeMark(mark, seed), markSlot(mark.gen));
  return h;
}

async function createLog(path: string, capacity: number): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await open(path, "wx+");
  } catch (e) {
    throw hostError(e, `cannot create logPath ${path}`, path);
  }
  try {
    const logId = randomBytes(8);
    const h = encodeHeader(
      capacity,
      logId,
      { gen: 1, end: LOG_HEADER_BYTES, seq: 0 },
      crc32(logId),
    );
    await writeAll(fh, h, 0);
    await fh.datasync();
    // The new directory entry must be durable too, or a crash could lose the whole file.
    const dir = await open(dirname(path), constants.O_RDONLY);
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    return fh;
  } catch (e) {
    await fh.close();
    throw hostError(e, `cannot initialise logPath ${path}`, path);
  }
}

/** What the file header says: the log id, and the durable mark (version 2 only). */
interface Header {
  readonly logId: Uint8Array;
  readonly mark: DurableMark | undefined;
}

async function readHeader(
  fh: FileHandle,
  path: string,
  size: number,
  capacity: number,
): Promise<Header> {
  const h = new Uint8Array(LOG_HEADER_BYTES);
  if (size >= LOG_HEADER_BYTES) await readAll(fh, [h], 0);
  if (
    size < LOG_HEADER_BYTES ||
    Buffer.from(h.subarray(0, 8)).toString("latin1") !== LOG_FILE_MAGIC
  ) {
    throw new SnapshotLogError(
      "not-a-log",
      `logPath ${path} is not a snapshot log (no ${LOG_FILE_MAGIC} header)`,
      path,
    );
  }
  const dv = new DataView(h.buffer);
  if (dv.getUint32(H_CRC, true) !== crc32(h.subarray(0, H_CRC))) {
    throw new SnapshotLogError(
      "corrupt-header",
      `logPath ${path}: header CRC-32 mismatch`,
      path,
      0,
    );
  }
  const version = dv.getUint32(H_VERSION, true);
  if (
    (version !== 1 && version !== LOG_FILE_VERSION) ||
    dv.getUint32(H_HEADER_BYTES, true) !== LOG_HEADER_BYTES
  ) {
    throw new SnapshotLogError(
      "unsupported",
      `logPath ${path}: unsupported version ${version}`,
      path,
    );
  }
  const logCapacity = getU64(dv, H_CAPACITY);
  if (logCapacity !== capacity) {
    throw new SnapshotLogError(
      "base-mismatch",
      `logPath ${path} was made for a base of ${logCapacity} sectors; base.capacity is ${capacity}`,
      path,
    );
  }
  const logId = h.slice(H_LOG_ID, H_LOG_ID + 8);
  if (version === 1) return { logId, mark: undefined };
  const seed = crc32(logId);
  const a = decodeMark(h, markSlot(0), seed);
  const b = decodeMark(h, markSlot(1), seed);
  const mark = a === undefined ? b : b === undefined || a.gen > b.gen ? a : b;
  if (mark === undefined) {
    throw new SnapshotLogError(
      "corrupt-header",
      `logPath ${path}: neither durable-end slot of the header is valid`,
      path,
      H_MARKS,
    );
  }
  return { logId, mark };
}

/**
 * Read and check every record from the header to `size`. Stops at the first record that is
 * incomplete, fails its CRC, has an unknown type or the wrong sequence number; decides
 * whether that is a torn tail or damage to flushed data (see {@link SnapshotLog}).
 */
async function scanLog(
  fh: FileHandle,
  path: string,
  size: number,
  seed: number,
  capacity: number,
  mark: DurableMark | undefined,
  acceptLoss: boolean,
): Promise<Scan> {
  const scan: Scan = {
    records: [],
    snapshots: [],
    tornAt: LOG_HEADER_BYTES,
    lastSeq: 0,
    markedEnd: LOG_HEADER_BYTES,
    lostBytes: 0,
  };
  const durable = mark?.end ?? LOG_HEADER_BYTES;
  const buf = Buffer.alloc(IO_CHUNK);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  let winStart = 0;
  let winEnd = 0;
  let pos = LOG_HEADER_BYTES;
  // Make [p, p + n) available in buf (n ≤ IO_CHUNK); false at end of file.
  const need = async (p: number, n: number): Promise<boolean> => {
    if (p + n > size) return false;
    if (p >= winStart && p + n <= winEnd) return true;
    const len = Math.min(IO_CHUNK, size - p);
    await readAll(fh, [buf.subarray(0, len)], p);
    winStart = p;
    winEnd = p + len;
    return true;
  };
  for (;;) {
    if (!(await need(pos, LOG_RECORD_HEADER_BYTES))) break;
    let o = pos - winStart;
    if (buf.compare(RECORD_MAGIC, 0, 4, o, o + 4) !== 0) break;
    const type = dv.getUint16(o + R_TYPE, true);
    const seq = getU64(dv, o + R_SEQ);
    const sector = getU64(dv, o + R_SECTOR);
    const count = dv.getUint32(o + R_COUNT, true);
    const want = dv.getUint32(o + R_CRC, true);
    const payload = payloadBytes(type, count);
    if (payload < 0 || seq !== scan.lastSeq + 1 || dv.getUint16(o + 6, true) !== 0) break;
    if (
      (type === LogRecordType.WRITE || type === LogRecordType.ZEROES) &&
      !sectorRangeFits(sector, count * SECTOR, capacity)
    ) {
      break;
    }
    const end = pos + LOG_RECORD_HEADER_BYTES + payload;
    if (end > size) break;
    // The flushed records end exactly at the mark, the last with the mark's sequence number;
    // anything else up to the mark is not what was flushed.
    if (pos < durable && (end > durable || (end === durable && seq !== mark!.seq))) break;
    let crc = crc32(buf.subarray(o, o + R_CRC), seed);
    let name = "";
    if (payload <= IO_CHUNK - LOG_RECORD_HEADER_BYTES) {
      await need(pos, LOG_RECORD_HEADER_BYTES + payload);
      o = pos - winStart;
      const body = buf.subarray(o + LOG_RECORD_HEADER_BYTES, o + LOG_RECORD_HEADER_BYTES + payload);
      crc = crc32(body, crc);
      if (type === LogRecordType.SNAPSHOT) name = body.toString("utf8");
    } else {
      for (let p = pos + LOG_RECORD_HEADER_BYTES; p < end; p += IO_CHUNK) {
        const n = Math.min(IO_CHUNK, end - p);
        await need(p, n);
        crc = crc32(buf.subarray(p - winStart, p - winStart + n), crc);
      }
    }
    if (crc !== want) break;
    if (type === LogRecordType.WRITE) {
      scan.records.push({ sector, count, off: pos + LOG_RECORD_HEADER_BYTES, seq });
    } else if (type === LogRecordType.ZEROES) {
      scan.records.push({ sector, count, off: -1, seq });
    } else if (type === LogRecordType.SNAPSHOT) {
      scan.snapshots.push({ name, sequence: seq, logBytes: end });
    } else {
      scan.markedEnd = end;
    }
    scan.lastSeq = seq;
    pos = end;
  }
  scan.tornAt = pos;
  const recovery = "pass options.acceptLoss to open it at its last valid record";
  if (pos < durable) {
    scan.lostBytes = durable - pos;
    if (!acceptLoss && size < durable) {
      throw new SnapshotLogError(
        "truncated",
        `logPath ${path} was cut at byte ${size}, but flushes had made it durable up to byte ${durable}: ${durable - pos} bytes of acknowledged data are gone; ${recovery}`,
        path,
        pos,
        durable,
      );
    }
    if (!acceptLoss) {
      throw new SnapshotLogError(
        "corrupt",
        `logPath ${path}: the record at byte ${pos} is damaged, but flushes had made the log durable up to byte ${durable}; refusing to drop flushed data (${recovery})`,
        path,
        pos,
        durable,
      );
    }
  } else if (pos < size) {
    const vouched = await laterFlushMarker(fh, pos, size, seed);
    if (vouched !== undefined) {
      scan.lostBytes = vouched.durableEnd - pos;
      if (!acceptLoss) {
        throw new SnapshotLogError(
          "corrupt",
          `logPath ${path}: the record at byte ${pos} is damaged, but a flush marker at byte ${vouched.at} says it was durable; refusing to drop flushed data (${recovery})`,
          path,
          pos,
          vouched.durableEnd,
        );
      }
    }
  }
  return scan;
}

/** A valid FLUSH record after `from` whose durable end passes `from`, if any. */
async function laterFlushMarker(
  fh: FileHandle,
  from: number,
  size: number,
  seed: number,
): Promise<{ at: number; durableEnd: number } | undefined> {
  const buf = Buffer.alloc(IO_CHUNK);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  // Windows overlap by a record header, so a marker straddling two windows is still seen.
  for (
    let w = from + 1;
    w + LOG_RECORD_HEADER_BYTES <= size;
    w += IO_CHUNK - LOG_RECORD_HEADER_BYTES
  ) {
    const len = Math.min(IO_CHUNK, size - w);
    await readAll(fh, [buf.subarray(0, len)], w);
    for (let o = buf.indexOf(RECORD_MAGIC, 0); o >= 0 && o + LOG_RECORD_HEADER_BYTES <= len; ) {
      if (
        dv.getUint16(o + R_TYPE, true) === LogRecordType.FLUSH &&
        dv.getUint32(o + R_COUNT, true) === 0 &&
        crc32(buf.subarray(o, o + R_CRC), seed) === dv.getUint32(o + R_CRC, true) &&
        getU64(dv, o + R_SECTOR) > from
      ) {
        return { at: w + o, durableEnd: getU64(dv, o + R_SECTOR) };
      }
      o = buf.indexOf(RECORD_MAGIC, o + 1);
    }
    if (w + len >= size) break;
  }
  return undefined;
}

function payloadBytes(type: number, count: number): number {
  switch (type) {
    case LogRecordType.WRITE:
      return count > 0 ? count * SECTOR : -1;
    case LogRecordType.ZEROES:
      return count > 0 ? 0 : -1;
    case LogRecordType.SNAPSHOT:
      return count >= 1 && count <= 255 ? count : -1;
    case LogRecordType.FLUSH:
      return count === 0 ? 0 : -1;
    default:
      return -1;
  }
}

function encodeRecord(
  rec: Uint8Array,
  type: number,
  seq: number,
  sector: number,
  count: number,
  seed: number,
): void {
  const dv = new DataView(rec.buffer, rec.byteOffset, LOG_RECORD_HEADER_BYTES);
  rec.set(RECORD_MAGIC, 0);
  dv.setUint16(R_TYPE, type, true);
  dv.setUint16(R_TYPE + 2, 0, true);
  setU64(dv, R_SEQ, seq);
  setU64(dv, R_SECTOR, sector);
  dv.setUint32(R_COUNT, count, true);
  const crc = crc32(rec.subarray(LOG_RECORD_HEADER_BYTES), crc32(rec.subarray(0, R_CRC), seed));
  dv.setUint32(R_CRC, crc, true);
}

function setU64(dv: DataView, at: number, v: number): void {
  dv.setUint32(at, v % TWO_32, true);
  dv.setUint32(at + 4, Math.floor(v / TWO_32), true);
}

/** A little-endian u64; values past 2^53 come back unsafe and fail the callers' checks. */
function getU64(dv: DataView, at: number): number {
  return dv.getUint32(at, true) + dv.getUint32(at + 4, true) * TWO_32;
}

/** The parts of `iovecs` covering `sectors` sectors from byte `from` (zero-copy views). */
function slice(iovecs: readonly Uint8Array[], from: number, sectors: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = from;
  let want = sectors * SECTOR;
  for (const v of iovecs) {
    if (want === 0) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, want);
    out.push(v.subarray(skip, skip + n));
    want -= n;
    skip = 0;
  }
  return out;
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}

async function writeAll(fh: FileHandle, buf: Uint8Array, pos: number): Promise<void> {
  let at = 0;
  while (at < buf.length) {
    const { bytesWritten } = await fh.write(buf, at, buf.length - at, pos + at);
    if (bytesWritten === 0) throw new BackendError("io", `wrote 0 bytes at ${pos + at}`);
    at += bytesWritten;
  }
}

/** `preadv` all of `bufs` at `pos`, resuming after short reads. */
function readvAll(fd: number, bufs: readonly Uint8Array[], pos: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    readvAllThen(fd, bufs, pos, (e) => (e === undefined ? resolve() : reject(e)));
  });
}

/**
 * `preadv` all of `bufs` at `pos` through the callback API, resuming after short reads; `done`
 * gets undefined or the error (a short file is BackendError "io").
 */
function readvAllThen(
  fd: number,
  bufs: readonly Uint8Array[],
  pos: number,
  done: (e: unknown) => void,
): void {
  let rest = bufs;
  let at = pos;
  let left = 0;
  for (const b of bufs) left += b.length;
  const step = (err: NodeJS.ErrnoException | null, n: number): void => {
    if (err !== null) done(err);
    else if (n === left) done(undefined);
    else if (n === 0) done(new BackendError("io", `unexpected end of log at byte ${at}`));
    else {
      at += n;
      left -= n;
      rest = dropPrefix(rest, n);
      readv(fd, rest, at, step);
    }
  };
  if (left === 0) done(undefined);
  else readv(fd, rest, at, step);
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

async function readAll(fh: FileHandle, bufs: Uint8Array[], pos: number): Promise<void> {
  let at = pos;
  for (const b of bufs) {
    let got = 0;
    while (got < b.length) {
      const { bytesRead } = await fh.read(b, got, b.length - got, at + got);
      if (bytesRead === 0)
        throw new BackendError("io", `unexpected end of log at byte ${at + got}`);
      got += bytesRead;
    }
    at += b.length;
  }
}

/** Map a Node system error to a BackendError code. */
function hostError(e: unknown, message: string, path: string): BackendError {
  if (e instanceof BackendError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  let kind: BackendErrorCode = "io";
  if (code === "ENOENT" || code === "ENOTDIR") kind = "not-found";
  else if (code === "EACCES" || code === "EPERM" || code === "EROFS") kind = "permission";
  else if (code === "EISDIR") kind = "bad-size";
  const detail = e instanceof Error ? e.message : String(e);
  return new BackendError(kind, `${message}: ${detail}`, { cause: e, path });
}
