// Mode 4, pass-through: the guest's driver owns an assignable disk function directly. The
// function reaches guest memory only through an IOMMU (`TranslatedMemory` over `DmaWindows`)
// that maps the guest's own buffers; submissions and completions never pass through VMM code,
// so nothing can be interposed, there is one owner, and a DMA outside the windows is refused.
import type { BlockBackend } from "@virtio-ts/devices";
import type { SlabAllocator } from "@virtio-ts/drivers";
import {
  type DmaWindow,
  DmaWindows,
  type GuestMemory,
  GuestMemoryError,
  TranslatedMemory,
  VirtioError,
} from "@virtio-ts/memory";

/** Why the assignable function refused something. */
export type PassthroughErrorCode =
  /** The function already has an owner: a second attach (a VMM interposer, another guest). */
  | "already-owned"
  /** The function was detached from this owner. */
  | "detached"
  /** A DMA address range is outside the owner's windows (an IOMMU translation fault). */
  | "dma-outside-window";

/** The assignable function refused an attach or a DMA. */
export class PassthroughError extends VirtioError {
  /** What was refused. */
  readonly code: PassthroughErrorCode;
  /** The owner holding the function (for "already-owned"). */
  readonly owner: string | undefined;
  /** The IO-virtual address of a refused DMA (else -1). */
  readonly iova: number;
  /** Its length in bytes (else 0). */
  readonly len: number;

  /**
   * @param code - what was refused
   * @param message - detail
   * @param fields - owner, iova and length of the refused operation
   */
  constructor(
    code: PassthroughErrorCode,
    message: string,
    fields: { owner?: string; iova?: number; len?: number; cause?: unknown } = {},
  ) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.code = code;
    this.owner = fields.owner;
    this.iova = fields.iova ?? -1;
    this.len = fields.len ?? 0;
  }
}

/**
 * A disk that can be assigned to exactly one owner (an SR-IOV virtual function, an NVMe
 * namespace handed to a guest). The host keeps no hook into the data path: after
 * {@link AssignableDisk.attach} the back-end is reachable only through the returned
 * {@link PassthroughFunction}.
 */
export class AssignableDisk {
  readonly #backend: BlockBackend;
  #owner: string | undefined;
  #fn: PassthroughFunction | undefined;

  /** @param backend - the disk (kept private: no interposer can be inserted later) */
  constructor(backend: BlockBackend) {
    this.#backend = backend;
  }

  /** The current owner, if any. */
  get owner(): string | undefined {
    return this.#owner;
  }

  /** Disk size in 512-byte sectors. */
  get capacity(): number {
    return this.#backend.capacity;
  }

  /**
   * Give the function to `owner`, confined to `windows` of `memory` (the IOMMU table).
   * @param owner - who owns it (for refusals)
   * @param memory - the owner's guest-physical memory
   * @param windows - the only ranges the function may DMA to / from
   * @param interrupt - the owner's interrupt line (a posted interrupt: no VMM exit)
   * @throws PassthroughError "already-owned" if another owner holds it
   */
  attach(
    owner: string,
    memory: GuestMemory,
    windows: readonly DmaWindow[],
    interrupt: () => void,
  ): PassthroughFunction {
    if (this.#owner !== undefined) {
      throw new PassthroughError(
        "already-owned",
        `the disk is assigned to ${this.#owner}; ${owner} cannot attach`,
        { owner: this.#owner },
      );
    }
    const fn = new PassthroughFunction(this.#backend, memory, windows, interrupt);
    this.#owner = owner;
    this.#fn = fn;
    return fn;
  }

  /** Take the function back (its handle refuses everything afterwards). */
  detach(): void {
    this.#fn?.revoke();
    this.#fn = undefined;
    this.#owner = undefined;
  }
}

/** Counters of a {@link PassthroughFunction}. */
export interface PassthroughStats {
  /** Commands submitted (doorbell writes into the function's own registers: no exit). */
  submitted: number;
  /** Commands completed. */
  completed: number;
  /** DMAs refused by the IOMMU. */
  refused: number;
  /** Interrupts posted to the owner. */
  interrupts: number;
}

/**
 * The owner's handle on an assigned disk: commands name IO-virtual addresses, which the
 * function's IOMMU translates; completions land in a completion list and one posted interrupt
 * covers all that are ready when the owner's handler runs. Nothing here throws for a bad
 * address: the command completes with a `PassthroughError` instead.
 */
export class PassthroughFunction {
  /** Counters. */
  readonly stats: PassthroughStats = { submitted: 0, completed: 0, refused: 0, interrupts: 0 };
  /** The IOMMU table (the owner may map / unmap its own windows). */
  readonly iommu: DmaWindows;
  readonly #backend: BlockBackend;
  readonly #dma: TranslatedMemory;
  readonly #irq: () => void;
  readonly #done: { tag: number; error: unknown }[] = [];
  readonly #iov: Uint8Array[] = [];
  #revoked = false;

  /**
   * @param backend - the disk
   * @param memory - the owner's memory
   * @param windows - the DMA windows
   * @param interrupt - the owner's interrupt line
   */
  constructor(
    backend: BlockBackend,
    memory: GuestMemory,
    windows: readonly DmaWindow[],
    interrupt: () => void,
  ) {
    this.#backend = backend;
    this.iommu = new DmaWindows(windows);
    this.#dma = new TranslatedMemory(memory, this.iommu.translate);
    this.#irq = interrupt;
  }

  /** Called by {@link AssignableDisk.detach}. */
  revoke(): void {
    this.#revoked = true;
  }

  /**
   * Submit a read of `len` bytes at `sector` into IO-virtual `iova` (one doorbell write).
   * Completion (with `tag`) appears in {@link PassthroughFunction.takeCompletions}.
   */
  read(sector: number, iova: number, len: number, tag: number): void {
    this.#submit(false, sector, iova, len, tag);
  }

  /** Submit a write of `len` bytes from IO-virtual `iova` to `sector`. */
  write(sector: number, iova: number, len: number, tag: number): void {
    this.#submit(true, sector, iova, len, tag);
  }

  #submit(write: boolean, sector: number, iova: number, len: number, tag: number): void {
    this.stats.submitted++;
    if (this.#revoked) {
      this.#post(tag, new PassthroughError("detached", "the function was detached"));
      return;
    }
    let views: Uint8Array[];
    try {
      // The IOMMU: every byte must translate with the right permission, or nothing moves.
      views = this.#dma.sg(iova, len, this.#iov, write ? "read" : "write").slice();
    } catch (e) {
      if (!(e instanceof GuestMemoryError) && !(e instanceof RangeError)) throw e;
      this.stats.refused++;
      this.#post(
        tag,
        new PassthroughError(
          "dma-outside-window",
          `DMA of ${len} bytes at IOVA 0x${iova.toString(16)} refused by the IOMMU`,
          { iova, len, cause: e },
        ),
      );
      return;
    }
    let p: Promise<void>;
    try {
      p = write ? this.#backend.write(sector, views) : this.#backend.read(sector, views);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      () => this.#post(tag, undefined),
      (e: unknown) => this.#post(tag, e),
    );
  }

  #post(tag: number, error: unknown): void {
    this.stats.completed++;
    const wasEmpty = this.#done.length === 0;
    this.#done.push({ tag, error });
    if (wasEmpty) {
      this.stats.interrupts++;
      this.#irq();
    }
  }

  /**
   * The owner's handler takes every completion ready now.
   * @param out - filled with `[tag, error]` pairs (error undefined on success)
   * @returns how many
   */
  takeCompletions(out: (readonly [number, unknown])[]): number {
    out.length = 0;
    for (const c of this.#done) out.push([c.tag, c.error]);
    this.#done.length = 0;
    return out.length;
  }
}

/**
 * The guest's driver for a {@link PassthroughFunction}: buffers come from its allocator inside
 * the DMA window (`iova = gpa - windowGpa`), reads copy out of guest memory (a guest-side copy,
 * as every driver does), and the interrupt handler settles promises.
 */
export class PassthroughDriver {
  readonly #fn: PassthroughFunction;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #iovaOffset: number;
  readonly #pending = new Map<
    number,
    { slot: number; into: Uint8Array; resolve: () => void; reject: (e: unknown) => void }
  >();
  readonly #waiting: (() => void)[] = [];
  readonly #done: (readonly [number, unknown])[] = [];
  #tag = 0;

  /**
   * @param fn - the assigned function
   * @param memory - guest memory
   * @param allocator - DMA buffers, inside the window
   * @param windowGpa - guest-physical address mapped at IOVA 0
   */
  constructor(
    fn: PassthroughFunction,
    memory: GuestMemory,
    allocator: SlabAllocator,
    windowGpa: number,
  ) {
    this.#fn = fn;
    this.#mem = memory;
    this.#slab = allocator;
    this.#iovaOffset = windowGpa;
  }

  /**
   * Read `length` bytes (whole sectors, at most one slot) at `sector`.
   * @throws RangeError naming `length`; rejects with PassthroughError or a back-end error
   */
  async read(sector: number, length: number): Promise<Uint8Array> {
    if (length <= 0 || length % 512 !== 0 || length > this.#slab.slotSize) {
      throw new RangeError(`length must be whole sectors up to one slot, got ${length}`);
    }
    let slot = this.#slab.alloc();
    while (slot === undefined) {
      await new Promise<void>((r) => this.#waiting.push(r));
      slot = this.#slab.alloc();
    }
    const into = new Uint8Array(length);
    const s = slot;
    await new Promise<void>((resolve, reject) => {
      const tag = this.#tag++;
      this.#pending.set(tag, { slot: s, into, resolve, reject });
      this.#fn.read(sector, s - this.#iovaOffset, length, tag);
    });
    return into;
  }

  /**
   * Ask the function to DMA a read into an arbitrary IO-virtual address (what a buggy or hostile
   * guest driver could do); resolves with the error the function reported, or undefined.
   */
  rawRead(sector: number, iova: number, length: number): Promise<unknown> {
    return new Promise((resolve) => {
      const tag = this.#tag++;
      this.#pending.set(tag, {
        slot: -1,
        into: new Uint8Array(0),
        resolve: () => resolve(undefined),
        reject: resolve,
      });
      this.#fn.read(sector, iova, length, tag);
    });
  }

  /**
   * The interrupt handler.
   * @returns requests completed
   */
  onInterrupt(): number {
    const n = this.#fn.takeCompletions(this.#done);
    for (const [tag, error] of this.#done) {
      const p = this.#pending.get(tag);
      if (p === undefined) continue; // the device invented a tag: ignore it (distrust devices)
      this.#pending.delete(tag);
      if (p.slot >= 0) {
        if (error === undefined) this.#mem.read(p.slot, p.into);
        this.#slab.free(p.slot);
        this.#waiting.shift()?.();
      }
      if (error === undefined) p.resolve();
      else p.reject(error);
    }
    return n;
  }
}
