// The floor of the interposer bench's snapshotLog row: the least a file-backed, checksummed write
// log costs per request, measured in the same run. Each write's bytes get a CRC-32 (node:zlib,
// as snapshotLog's records do, so a torn tail can be found after a crash) into a 64-byte header,
// and header and bytes are appended to a file: the records of one event-loop turn together in one
// pwritev through libuv's thread pool, each write acknowledged once its record is in the file (as
// snapshotLog acknowledges it). Each read is one preadv from the file.
//
// It is a price, not a disk: no index, no snapshots, no flush marks, no recovery, no copy of the
// guest's bytes into the record (snapshotLog copies them so a guest changing its buffer during
// the write cannot make a record fail its own checksum), no resumed short writes; a read returns
// whatever the file holds at a position derived from the sector. Everything snapshotLog does
// beyond this is its own cost; this row is the part any such log pays to the file system.
import { closeSync, openSync, readv, writev } from "node:fs";
import { crc32 } from "node:zlib";
import type { BlockBackend } from "@virtio-ts/devices";

/** Bytes of a record header: sector, length, CRC-32 (the rest zero). */
const HEADER = 64;
/** Buffers per pwritev at most (Linux IOV_MAX). */
const IOV_MAX = 1024;

interface Batch {
  readonly pos: number;
  readonly bufs: Uint8Array[];
  bytes: number;
  readonly settle: ((e: Error | undefined) => void)[];
}

/** See the top of this file. */
export class FileLogFloor implements BlockBackend {
  readonly capacity: number;
  readonly blockSize = 512;
  readonly readOnly = false;
  readonly #fd: number;
  #tail = 0;
  #batch: Batch | undefined;

  /**
   * @param path - the log file, created or truncated
   * @param capacity - sectors the disk presents
   */
  constructor(path: string, capacity: number) {
    this.#fd = openSync(path, "w+");
    this.capacity = capacity;
  }

  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    const header = new Uint8Array(HEADER);
    const dv = new DataView(header.buffer);
    let crc = 0;
    let len = 0;
    for (const v of iovecs) {
      crc = crc32(v, crc);
      len += v.length;
    }
    dv.setFloat64(0, sector, true);
    dv.setUint32(8, len, true);
    dv.setUint32(12, crc, true);
    const pos = this.#tail;
    this.#tail += HEADER + len;
    let b = this.#batch;
    if (b === undefined || b.bufs.length + 1 + iovecs.length > IOV_MAX) {
      const batch: Batch = { pos, bufs: [], bytes: 0, settle: [] };
      b = batch;
      this.#batch = batch;
      setImmediate(() => this.#flushBatch(batch));
    }
    b.bufs.push(header, ...iovecs);
    b.bytes += HEADER + len;
    const settle = b.settle;
    return new Promise<void>((resolve, reject) => {
      settle.push((e) => (e === undefined ? resolve() : reject(e)));
    });
  }

  #flushBatch(b: Batch): void {
    if (this.#batch === b) this.#batch = undefined;
    writev(this.#fd, b.bufs, b.pos, (err, n) => {
      const e =
        err ?? (n === b.bytes ? undefined : new Error(`short write: ${n} of ${b.bytes} bytes`));
      for (const s of b.settle) s(e ?? undefined);
    });
  }

  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let len = 0;
    for (const v of iovecs) len += v.length;
    const span = this.#tail - len;
    // Spread over the whole file, as a log's records are.
    const pos = span > 0 ? (Math.imul(sector, 0x9e3779b1) >>> 0) % span : 0;
    return new Promise<void>((resolve, reject) => {
      readv(this.#fd, iovecs, pos, (err) => (err === null ? resolve() : reject(err)));
    });
  }

  async flush(): Promise<void> {}
  async discard(): Promise<void> {}
  async writeZeroes(): Promise<void> {}

  /** Close the file (the caller removes it). */
  close(): void {
    closeSync(this.#fd);
  }
}
