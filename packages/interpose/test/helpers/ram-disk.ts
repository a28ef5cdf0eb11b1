// A minimal in-memory BlockBackend for the encrypt and snapshot-log tests (this package does
// not depend on @virtio-ts/backend-disk). Counts calls so tests can check what reached it.
import { BackendError, type BlockBackend, sectorRangeFits } from "@virtio-ts/devices";

export class RamDisk implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly capacity: number;
  readonly blockSize = 512;
  readonly readOnly: boolean;
  readonly calls: string[] = [];
  /** Called by flush (tests use it to observe ordering or inject a failure). */
  onFlush: (() => void | Promise<void>) | undefined = undefined;

  constructor(sectors: number, options: { readOnly?: boolean; fill?: number } = {}) {
    this.bytes = new Uint8Array(sectors * 512).fill(options.fill ?? 0);
    this.capacity = sectors;
    this.readOnly = options.readOnly ?? false;
  }

  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let at = this.#span(sector, iovecs);
    this.calls.push(`read ${sector}`);
    for (const v of iovecs) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) throw new BackendError("read-only", "RamDisk is read-only");
    let at = this.#span(sector, iovecs);
    this.calls.push(`write ${sector}`);
    for (const v of iovecs) {
      this.bytes.set(v, at);
      at += v.length;
    }
  }

  async flush(): Promise<void> {
    this.calls.push("flush");
    await this.onFlush?.();
  }

  async discard(sector: number, count: number): Promise<void> {
    this.calls.push(`discard ${sector} ${count}`);
  }

  async writeZeroes(sector: number, count: number, _unmap: boolean): Promise<void> {
    this.calls.push(`writeZeroes ${sector} ${count}`);
    this.bytes.fill(0, sector * 512, (sector + count) * 512);
  }

  #span(sector: number, iovecs: readonly Uint8Array[]): number {
    let len = 0;
    for (const v of iovecs) len += v.length;
    if (!sectorRangeFits(sector, len, this.capacity)) {
      throw new BackendError("out-of-range", `RamDisk: ${len} bytes at ${sector}`);
    }
    return sector * 512;
  }
}

/** Deterministic bytes (xorshift32) so failures reproduce. */
export function pseudoRandom(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** Split `buf` into views at the given byte offsets (like guest iovecs). */
export function splitAt(buf: Uint8Array, ...cuts: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let from = 0;
  for (const c of cuts) {
    out.push(buf.subarray(from, c));
    from = c;
  }
  out.push(buf.subarray(from));
  return out;
}
