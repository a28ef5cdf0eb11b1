// A fault-injecting BlockBackend wrapper for the mirror tests: fails chosen operations, or holds
// them pending until released, and logs what reached it.
import { BackendError, type BlockBackend } from "@virtio-ts/devices";

type Op = "read" | "write" | "flush" | "discard" | "writeZeroes";

export class Faulty implements BlockBackend {
  readonly inner: BlockBackend;
  readonly capacity: number;
  readonly blockSize: number;
  readonly readOnly = false;
  readonly log: string[] = [];
  /** Operations that reject with BackendError "io". */
  readonly failing = new Set<Op>();
  /** Operations that wait for `release()` before reaching the inner back-end. */
  readonly holding = new Set<Op>();
  #held: (() => void)[] = [];

  constructor(inner: BlockBackend) {
    this.inner = inner;
    this.capacity = inner.capacity;
    this.blockSize = inner.blockSize;
  }

  /** Operations waiting for `release`. */
  get held(): number {
    return this.#held.length;
  }

  /** Let every held operation proceed. */
  release(): void {
    const h = this.#held;
    this.#held = [];
    for (const go of h) go();
  }

  async #gate(op: Op, what: string): Promise<void> {
    if (this.holding.has(op)) await new Promise<void>((r) => this.#held.push(r));
    this.log.push(what);
    if (this.failing.has(op)) throw new BackendError("io", `injected ${op} failure`);
  }

  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    await this.#gate("read", `read ${sector}`);
    return this.inner.read(sector, iovecs);
  }

  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    await this.#gate("write", `write ${sector}`);
    return this.inner.write(sector, iovecs);
  }

  async flush(): Promise<void> {
    await this.#gate("flush", "flush");
    return this.inner.flush();
  }

  async discard(sector: number, count: number): Promise<void> {
    await this.#gate("discard", `discard ${sector} ${count}`);
    return this.inner.discard(sector, count);
  }

  async writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    await this.#gate("writeZeroes", `writeZeroes ${sector} ${count}`);
    return this.inner.writeZeroes(sector, count, unmap);
  }
}
