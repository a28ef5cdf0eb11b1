/**
 * The kit's own block back-end (internal): the disk bytes in memory, a log of every request
 * the device sent it, and an optional bad sector whose reads and writes fail, to provoke
 * VIRTIO_BLK_S_IOERR. The suites need no back-end package.
 * @module
 */
import { BackendError, type BlockBackend, sectorRangeFits } from "@virtio-ts/devices";

const SECTOR = 512;

/** One request the device sent to a {@link RecordingDisk}. */
export interface DiskRequest {
  readonly op: "read" | "write" | "flush" | "discard" | "write-zeroes";
  readonly sector: number;
  /** Bytes (read, write) or sectors (discard, write-zeroes); 0 for flush. */
  readonly length: number;
}

/** See the module comment. */
export class RecordingDisk implements BlockBackend {
  /** The disk contents (a multiple of 512 bytes), changed in place by writes. */
  readonly bytes: Uint8Array;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize = SECTOR;
  /** @inheritdoc */
  readonly readOnly: boolean;
  /** A sector whose reads and writes fail with BackendError "io", if any. */
  readonly badSector: number | undefined;
  /** Every request received, in order. */
  readonly requests: DiskRequest[] = [];

  /**
   * @param bytes - the contents (used in place)
   * @param options - read-only, bad sector
   */
  constructor(
    bytes: Uint8Array,
    options: { readonly readOnly?: boolean; readonly badSector?: number } = {},
  ) {
    this.bytes = bytes;
    this.capacity = Math.floor(bytes.length / SECTOR);
    this.readOnly = options.readOnly === true;
    this.badSector = options.badSector;
  }

  /** @inheritdoc */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let at = this.#span("read", sector, iovecs);
    for (const v of iovecs) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  /** @inheritdoc */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#writable();
    let at = this.#span("write", sector, iovecs);
    for (const v of iovecs) {
      this.bytes.set(v, at);
      at += v.length;
    }
  }

  /** @inheritdoc */
  async flush(): Promise<void> {
    this.requests.push({ op: "flush", sector: 0, length: 0 });
  }

  /** @inheritdoc */
  async discard(sector: number, count: number): Promise<void> {
    this.#writable();
    this.#range("discard", sector, count);
  }

  /** @inheritdoc */
  async writeZeroes(sector: number, count: number): Promise<void> {
    this.#writable();
    this.#range("write-zeroes", sector, count);
    this.bytes.fill(0, sector * SECTOR, (sector + count) * SECTOR);
  }

  #writable(): void {
    if (this.readOnly) throw new BackendError("read-only", "the contract disk is read-only");
  }

  #range(op: DiskRequest["op"], sector: number, count: number): void {
    this.requests.push({ op, sector, length: count });
    if (!sectorRangeFits(sector, count * SECTOR, this.capacity)) {
      throw new BackendError("out-of-range", `${count} sectors at ${sector}`);
    }
  }

  /** Log and check a read or write; returns its byte offset. */
  #span(op: "read" | "write", sector: number, iovecs: readonly Uint8Array[]): number {
    let n = 0;
    for (const v of iovecs) n += v.length;
    this.requests.push({ op, sector, length: n });
    if (!sectorRangeFits(sector, n, this.capacity)) {
      throw new BackendError("out-of-range", `${n} bytes at sector ${sector}`);
    }
    const bad = this.badSector;
    if (bad !== undefined && sector <= bad && bad < sector + n / SECTOR) {
      throw new BackendError("io", `bad sector ${bad}`);
    }
    return sector * SECTOR;
  }
}
