// An in-memory BlockBackend for the device tests: records every call and, while `hold` is
// true, parks operations until the test releases them (to complete requests out of order).
import type { BlockBackend } from "../../src/index.js";

export interface Call {
  op: "read" | "write" | "flush" | "discard" | "writeZeroes";
  sector?: number;
  count?: number;
  unmap?: boolean;
  bytes?: number;
  segments?: number;
}

export class TestBackend implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly capacity: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly calls: Call[] = [];
  hold = false;
  failNext: Error | undefined = undefined;
  readonly parked: (() => void)[] = [];

  constructor(sectors: number, options: { readOnly?: boolean; blockSize?: number } = {}) {
    this.bytes = new Uint8Array(sectors * 512);
    this.capacity = sectors;
    this.blockSize = options.blockSize ?? 4096;
    this.readOnly = options.readOnly ?? false;
  }

  async #gate(): Promise<void> {
    const err = this.failNext;
    this.failNext = undefined;
    if (this.hold) await new Promise<void>((resolve) => this.parked.push(resolve));
    if (err !== undefined) throw err;
  }

  /** Release parked operation `i` (in park order) and let its continuation run. */
  async release(i: number): Promise<void> {
    const r = this.parked[i];
    if (r === undefined) throw new RangeError(`no parked operation ${i}`);
    r();
    await new Promise((resolve) => setImmediate(resolve));
  }

  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let n = 0;
    for (const v of iovecs) n += v.length;
    this.calls.push({ op: "read", sector, bytes: n, segments: iovecs.length });
    await this.#gate();
    let at = sector * 512;
    for (const v of iovecs) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let n = 0;
    for (const v of iovecs) n += v.length;
    this.calls.push({ op: "write", sector, bytes: n, segments: iovecs.length });
    // Copy before parking, as a real back-end submitting the I/O would.
    let at = sector * 512;
    const staged = iovecs.map((v) => v.slice());
    await this.#gate();
    for (const v of staged) {
      this.bytes.set(v, at);
      at += v.length;
    }
  }

  async flush(): Promise<void> {
    this.calls.push({ op: "flush" });
    await this.#gate();
  }

  async discard(sector: number, count: number): Promise<void> {
    this.calls.push({ op: "discard", sector, count });
    await this.#gate();
  }

  async writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    this.calls.push({ op: "writeZeroes", sector, count, unmap });
    await this.#gate();
    this.bytes.fill(0, sector * 512, (sector + count) * 512);
  }
}
