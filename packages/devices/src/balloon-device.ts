import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import {
  BALLOON_PAGE_SIZE,
  BalloonConfig,
  BalloonFeature,
  BalloonQueue,
  BalloonStat,
  BalloonStatTag,
  balloonQueueIndex,
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { defaultTimer } from "./host-timer.js";

/** A range of guest-physical RAM the balloon may take pages from (4096-aligned). */
export interface BalloonRamRange {
  /** Guest-physical address of the first byte, a multiple of 4096. */
  readonly base: number;
  /** Length in bytes, a positive multiple of 4096. */
  readonly size: number;
}

/**
 * The latest memory statistics the guest sent on the stats queue (VIRTIO 1.3 §5.5.6.3),
 * mutated in place by the device each time a buffer arrives. A field the driver did not supply
 * is undefined (§5.5.6.3.1: it supplies the same subset every time). Memory figures are in
 * bytes, the others are counts; values above 2^53 lose precision (they are `number`s).
 * Everything here comes from the guest: untrusted, for policy and display only.
 */
export interface BalloonGuestStats {
  /** Buffers received so far (1 for the first). */
  seq: number;
  /** When this buffer arrived, on the device's timer clock (milliseconds). */
  at: number;
  /** VIRTIO_BALLOON_S_SWAP_IN: memory swapped in (bytes). */
  swapIn: number | undefined;
  /** VIRTIO_BALLOON_S_SWAP_OUT: memory swapped out (bytes). */
  swapOut: number | undefined;
  /** VIRTIO_BALLOON_S_MAJFLT: major page faults. */
  majorFaults: number | undefined;
  /** VIRTIO_BALLOON_S_MINFLT: minor page faults. */
  minorFaults: number | undefined;
  /** VIRTIO_BALLOON_S_MEMFREE: memory not used for anything (bytes). */
  memFree: number | undefined;
  /** VIRTIO_BALLOON_S_MEMTOT: total memory (bytes; Linux: `totalram`, which inflating lowers without DEFLATE_ON_OOM). */
  memTotal: number | undefined;
  /** VIRTIO_BALLOON_S_AVAIL: memory available for new work without swapping (bytes). */
  available: number | undefined;
  /** VIRTIO_BALLOON_S_CACHES: quickly reclaimable memory, e.g. file caches (bytes). */
  caches: number | undefined;
  /** VIRTIO_BALLOON_S_HTLB_PGALLOC: successful hugetlb allocations. */
  hugetlbAllocations: number | undefined;
  /** VIRTIO_BALLOON_S_HTLB_PGFAIL: failed hugetlb allocations. */
  hugetlbFailures: number | undefined;
  /** Entries with a tag this device does not know, ignored (§5.5.6.3.2). */
  unknownTags: number;
}

/**
 * The host (VMM) side of a {@link BalloonDevice}: what it hears from the balloon. Every method
 * is optional and called synchronously from the device's queue processing, before the request
 * is acknowledged, with plain numbers (no allocation per call).
 *
 * Implementer contract: return quickly, never throw (an exception propagates out of the
 * register access that kicked the queue), and never touch guest memory outside the range
 * given. Ranges are whole 4 KiB pages of guest RAM (`gpa` a multiple of 4096).
 */
export interface BalloonHost {
  /**
   * Pages went into the balloon (inflateq). Until `deflated` names them they are the host's:
   * the guest must not use them (§5.5.6.1; with DEFLATE_ON_OOM too, it deflates first), so a
   * VMM can release their memory and leave them out of a migration. The device has already
   * discarded their contents (`discard` option) when this is called.
   */
  inflated?(gpa: number, bytes: number): void;
  /**
   * Pages came back out of the balloon (deflateq): the guest will use them again (after this
   * acknowledgement with MUST_TELL_HOST, possibly already without it).
   */
  deflated?(gpa: number, bytes: number): void;
  /**
   * A run of free pages was reported (reporting_vq, §5.5.6.7). The device has already discarded
   * their contents (zeroed, or filled with `poison_val` under PAGE_POISON). Unlike inflated
   * pages, the guest takes reported pages back without telling once the report is acknowledged:
   * a VMM may drop their backing now (reads then return zeros), but a migration can skip them
   * only if it tracks writes after this call, or checks that they still read as zeros.
   */
  reported?(gpa: number, bytes: number): void;
  /** New memory statistics arrived (the object is the device's, mutated in place). */
  stats?(stats: Readonly<BalloonGuestStats>): void;
  /** The driver updated `actual` (§5.5.6.1), in 4 KiB pages. Untrusted: see `inflatedPages`. */
  actual?(pages: number): void;
}

/** A timer API (stats polling); `setTimeout` / `clearTimeout` shaped. */
export interface BalloonTimer {
  /** Current time in milliseconds. */
  now(): number;
  /** Call `fn` after `ms` milliseconds; returns a handle for {@link BalloonTimer.cancel}. */
  schedule(fn: () => void, ms: number): unknown;
  /** Cancel a scheduled call. */
  cancel(handle: unknown): void;
}

/** Options of a {@link BalloonDevice}. */
export interface BalloonDeviceOptions {
  /**
   * Guest RAM the balloon may take pages from: a size in bytes (RAM from guest address 0), or
   * the RAM ranges (each 4096-aligned, not overlapping, below 2^44 = PFN 2^32). PFNs outside
   * them are refused. The inflated-page bitmap has one bit per 4 KiB page of these ranges.
   */
  readonly ram: number | readonly BalloonRamRange[];
  /** Maximum size of each queue (a power of 2, 32 to 32768; Linux needs 32 for reporting). Default 128. */
  readonly queueSize?: number;
  /** Offer VIRTIO_BALLOON_F_STATS_VQ (default true). */
  readonly statsQueue?: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_REPORTING (default true). */
  readonly pageReporting?: boolean;
  /** Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM (default false; see the class comment). */
  readonly deflateOnOom?: boolean;
  /** Offer VIRTIO_BALLOON_F_MUST_TELL_HOST (default true). */
  readonly mustTellHost?: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_POISON (default true; Linux accepts it only with poisoning on). */
  readonly pagePoison?: boolean;
  /**
   * What the device does to the contents of inflated and reported pages before acknowledging
   * them: "zero" (default) fills them with zeros (reported pages under PAGE_POISON: with
   * `poison_val`, or left alone if its four bytes differ), as releasing their memory would;
   * "keep" leaves them as they are.
   */
  readonly discard?: "zero" | "keep";
  /**
   * Number the queues as §5.5.2 lists them (0–4, "fixed") or densely over the negotiated
   * optional queues as Linux and QEMU do ("dense", default). See `balloonQueueIndex`.
   */
  readonly queueNumbering?: "dense" | "fixed";
  /** Ask the driver for new statistics every this many milliseconds (0, default: only on `requestStats`). */
  readonly statsIntervalMs?: number;
  /** Page frame numbers one inflate / deflate buffer may carry (1 to 2^20, default 65536). */
  readonly maxPfnsPerRequest?: number;
  /** The host's callbacks. */
  readonly host?: BalloonHost;
  /** Clock and timer for stats polling and timestamps. Default `Date.now` and `globalThis.setTimeout`. */
  readonly timer?: BalloonTimer;
}

/** Counters of a {@link BalloonDevice} (mutated in place). */
export interface BalloonDeviceStats {
  /** Inflate buffers served. */
  inflateRequests: number;
  /** Deflate buffers served. */
  deflateRequests: number;
  /** Reporting buffers served. */
  reportRequests: number;
  /** Statistics buffers received. */
  statsBuffers: number;
  /** Statistics requests sent (held buffers returned to the driver). */
  statsRequests: number;
  /** Pages put into the balloon, cumulative. */
  pagesInflated: number;
  /** Pages taken out of the balloon (deflated, or given back by a reset), cumulative. */
  pagesDeflated: number;
  /** Pages reported free, cumulative. */
  pagesReported: number;
  /** Malformed requests or entries (each also reported through `ctx.noteFault`). */
  malformed: number;
}

/** Why a balloon request (or part of it) was refused. */
export type BalloonRequestErrorCode =
  /** An inflate / deflate / stats buffer has device-writable descriptors (they are ignored). */
  | "balloon-writable-descriptor"
  /** An inflate / deflate buffer is not a whole number of 32-bit PFNs: refused whole. */
  | "balloon-pfn-array-length"
  /** An inflate / deflate buffer carries more PFNs than `maxPfnsPerRequest`: refused whole. */
  | "balloon-pfn-array-too-long"
  /** PFNs outside the balloon's RAM were skipped (`value`: the first, `count`: how many). */
  | "balloon-pfn-out-of-range"
  /** Inflated PFNs already in the balloon were skipped. */
  | "balloon-pfn-already-inflated"
  /** Deflated PFNs not in the balloon were skipped. */
  | "balloon-pfn-not-inflated"
  /** A stats buffer whose length is not a multiple of 10 (misaligned entries): values ignored. */
  | "balloon-stats-length"
  /** A stats buffer over 4096 bytes: values ignored. */
  | "balloon-stats-too-long"
  /** More than one stats buffer made available (§5.5.6.3.1: at most one). */
  | "balloon-stats-extra-buffer"
  /** A reporting buffer has device-readable descriptors (they are ignored). */
  | "balloon-report-readable-descriptor"
  /** A reported run is not whole 4 KiB pages at a 4 KiB-aligned address: skipped. */
  | "balloon-report-misaligned"
  /** A reported run is outside the balloon's RAM: skipped. */
  | "balloon-report-out-of-range";

/**
 * One balloon request is malformed (a guest fault the device survives). Reported through
 * `ctx.noteFault`, never thrown: the valid part of the request is served, the buffer is
 * returned used (length 0), and the device keeps serving.
 */
export class BalloonRequestError extends VirtioError {
  /** @inheritdoc */
  readonly code: BalloonRequestErrorCode;
  /** The queue: "inflate", "deflate", "stats" or "reporting". */
  readonly queue: string;
  /** The chain's id (split: head index; packed: buffer ID). */
  readonly head: number;
  /** The offending value: the first bad PFN, address or length (guest-controlled). */
  readonly value: number;
  /** How many entries of the request were affected. */
  readonly count: number;

  /**
   * @param code - what is wrong
   * @param queue - which queue
   * @param head - chain id
   * @param value - first offending value
   * @param count - entries affected
   */
  constructor(
    code: BalloonRequestErrorCode,
    queue: string,
    head: number,
    value: number,
    count: number,
  ) {
    super(`virtio-balloon ${queue} request ${code} (chain ${head}, value ${value}, ${count}×)`);
    this.code = code;
    this.queue = queue;
    this.head = head;
    this.value = value;
    this.count = count;
  }
}

/** Bytes {@link BalloonDevice.saveState} bytes are refused with. */
export class BalloonStateError extends VirtioError {
  /** @inheritdoc */
  readonly code = "balloon-state" as const;
  /** Byte offset where decoding stopped. */
  readonly offset: number;
  /**
   * @param message - what is wrong
   * @param offset - byte offset in the input
   */
  constructor(message: string, offset: number) {
    super(`virtio-balloon state: ${message} (at byte ${offset})`);
    this.offset = offset;
  }
}

/** The largest stats buffer whose values the device reads (409 entries). */
export const BALLOON_STATS_MAX_BYTES = 4096;

const ROLE_NONE = -1;
const STATE_MAGIC = 0x4e4c4256; // "VBLN"
const STATE_VERSION = 1;
const STATE_HEADER = 20;

/** Runs of set bits, as [first page index, pages]. */
class PageBitmap {
  readonly words: Uint32Array;
  count = 0;
  constructor(readonly pages: number) {
    this.words = new Uint32Array(Math.ceil(pages / 32));
  }
  has(i: number): boolean {
    return (this.words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }
  set(i: number): void {
    this.words[i >>> 5]! |= 1 << (i & 31);
    this.count++;
  }
  clear(i: number): void {
    this.words[i >>> 5]! &= ~(1 << (i & 31));
    this.count--;
  }
  reset(): void {
    this.words.fill(0);
    this.count = 0;
  }
  /** Call `fn(first, pages)` for each run of set bits, in order. */
  runs(fn: (first: number, pages: number) => void): void {
    const w = this.words;
    let start = -1;
    for (let i = 0; i < w.length; i++) {
      const word = w[i]!;
      if (word === 0 && start < 0) continue;
      if (word === 0xffffffff && start >= 0) continue;
      for (let b = 0; b < 32; b++) {
        const p = i * 32 + b;
        if (p >= this.pages) break;
        const on = (word & (1 << b)) !== 0;
        if (on && start < 0) start = p;
        else if (!on && start >= 0) {
          fn(start, p - start);
          start = -1;
        }
      }
    }
    if (start >= 0) fn(start, this.pages - start);
  }
}

function ramRanges(ram: BalloonDeviceOptions["ram"]): BalloonRamRange[] {
  const list = typeof ram === "number" ? [{ base: 0, size: ram }] : [...ram];
  if (list.length === 0) throw new RangeError("options.ram must name at least one range");
  const sorted = list.sort((a, b) => a.base - b.base);
  let end = 0;
  for (const [i, r] of sorted.entries()) {
    if (
      !Number.isSafeInteger(r.base) ||
      !Number.isSafeInteger(r.size) ||
      r.base < 0 ||
      r.size <= 0 ||
      r.base % BALLOON_PAGE_SIZE !== 0 ||
      r.size % BALLOON_PAGE_SIZE !== 0 ||
      r.base + r.size > 2 ** 44
    ) {
      throw new RangeError(
        `options.ram[${i}] must be 4096-aligned with a positive size, below 2^44, got base ${r.base} size ${r.size}`,
      );
    }
    if (r.base < end) throw new RangeError(`options.ram[${i}] overlaps the range before it`);
    end = r.base + r.size;
  }
  return sorted.map((r) => ({ base: r.base, size: r.size }));
}

function emptyStats(): BalloonGuestStats {
  return {
    seq: 0,
    at: 0,
    swapIn: undefined,
    swapOut: undefined,
    majorFaults: undefined,
    minorFaults: undefined,
    memFree: undefined,
    memTotal: undefined,
    available: undefined,
    caches: undefined,
    hugetlbAllocations: undefined,
    hugetlbFailures: undefined,
    unknownTags: 0,
  };
}

/**
 * The traditional memory balloon device (VIRTIO 1.3 §5.5) with memory statistics and free page
 * reporting, and the host policy API a VMM steers it with.
 *
 * **Host policy.** {@link BalloonDevice.setTarget} sets `num_pages` (4 KiB pages the host wants
 * back) and sends a configuration change notification; the driver inflates or deflates towards
 * it and writes `actual`. {@link BalloonDevice.inflatedPages} is the device's own count, from a
 * bitmap with one bit per 4 KiB page of guest RAM (bounded by RAM, whatever the guest sends).
 * The {@link BalloonHost} callbacks hear each inflated, deflated and reported range, so a VMM
 * can release that memory and leave it out of a migration. Statistics: the device keeps the
 * driver's stats buffer (§5.5.6.3) and returns it to ask for fresh figures, on
 * {@link BalloonDevice.requestStats} or every `statsIntervalMs` (a timer the host controls);
 * {@link BalloonDevice.guestStats} holds the latest.
 *
 * **Features offered:** MUST_TELL_HOST (the guest tells before reusing a page, so the bitmap is
 * exact), STATS_VQ, PAGE_POISON, PAGE_REPORTING, DEFLATE_ON_OOM only when asked; ring features
 * INDIRECT_DESC, EVENT_IDX, RING_PACKED, RING_RESET. Not FREE_PAGE_HINT: a hinted page stays
 * valid only until the guest writes it again, which a VMM can use only with write tracking
 * (QEMU clears hinted pages from the migration dirty bitmap and relies on KVM dirty logging to
 * catch later writes); JS emulators have none, and page reporting frees the same memory with
 * semantics that need none (the device discards before acknowledging).
 *
 * **DEFLATE_ON_OOM** (§5.5.6.1): when negotiated, a guest running out of memory may take pages
 * back from the balloon even while `num_pages` ≥ `actual`, but still through the deflateq, so
 * the bitmap and `deflated` stay exact; `actual` then drops below the target. A host should not
 * simply raise the target again (the guest needs the memory). Linux 6.1 deflates 1 MiB per
 * OOM notification and, with the feature, does not lower MemTotal when inflating (ballooned
 * pages count as used); without it, inflating lowers MemTotal (`adjust_managed_page_count`).
 *
 * **Queue numbering:** Linux numbers the optional queues densely by negotiated features
 * (`balloonQueueIndex`); the device maps indices to queues at DRIVER_OK accordingly
 * (`queueNumbering: "fixed"` for the §5.5.2 list).
 *
 * **Hostile guests:** PFNs outside RAM, already inflated or not inflated are skipped; a buffer
 * that is not whole PFNs or carries more than `maxPfnsPerRequest` is refused; stats buffers of a
 * length not a multiple of 10 or over 4096 bytes are held but not read; reported runs must be
 * whole aligned pages inside RAM. Each is a {@link BalloonRequestError} through
 * `ctx.noteFault`; the buffer is returned (length 0) and the device keeps serving. A hostile
 * ring (`ChainError` / `RingError`) puts the device into DEVICE_NEEDS_RESET through the core.
 * The device writes guest memory only to discard validated pages of RAM.
 *
 * @example
 * ```ts
 * const balloon = new BalloonDevice({ ram: 256 << 20, statsIntervalMs: 1000, host: {
 *   inflated: (gpa, bytes) => vmm.release(gpa, bytes),
 *   stats: (s) => console.log(s.memFree),
 * } });
 * const device = new MmioDevice(balloon, { memory });
 * balloon.setTarget((64 << 20) / 4096); // ask for 64 MiB back
 * ```
 */
export class BalloonDevice implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId = DeviceId.BALLOON;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** §5.5.4: `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val`. */
  readonly configSize: number = BalloonConfig.SIZE;
  /** The RAM ranges the balloon covers, sorted. */
  readonly ram: readonly BalloonRamRange[];
  /** Pages of RAM the balloon covers. */
  readonly ramPages: number;
  /** Counters. */
  readonly stats: BalloonDeviceStats = {
    inflateRequests: 0,
    deflateRequests: 0,
    reportRequests: 0,
    statsBuffers: 0,
    statsRequests: 0,
    pagesInflated: 0,
    pagesDeflated: 0,
    pagesReported: 0,
    malformed: 0,
  };

  readonly #host: BalloonHost;
  readonly #timer: BalloonTimer;
  readonly #discard: boolean;
  readonly #fixed: boolean;
  readonly #maxPfns: number;
  readonly #firstPfn: number[];
  readonly #maps: PageBitmap[];
  readonly #guestStats = emptyStats();
  readonly #statsBuf = new Uint8Array(BALLOON_STATS_MAX_BYTES);
  readonly #statsView = new DataView(this.#statsBuf.buffer);
  readonly #views: Uint8Array[] = [];
  readonly #roles: Int8Array;
  readonly #held: Int32Array;
  #heldCount = 0;
  /** One cursor: no queue is larger than the maximum size it was made for. */
  readonly #chain: DescriptorChain;
  #ctx: DeviceContext | undefined;
  #target = 0;
  #actual = 0;
  #poison = 0;
  #interval: number;
  #tick: unknown;
  #ticking = false;
  #legacyFirstStats = false;
  // Run being gathered by #pfn (first page index in range #runRange, pages).
  #runRange = -1;
  #runFirst = 0;
  #runPages = 0;
  #lastRange = 0;
  // Per-request fault tallies.
  #bad = 0;
  #badValue = 0;
  #dup = 0;
  #dupValue = 0;
  readonly #onTick = (): void => {
    this.#ticking = false;
    const ctx = this.#ctx;
    if (ctx === undefined) return;
    this.requestStats();
    this.#arm();
  };

  /**
   * @param options - RAM, queue size, features, host callbacks, stats interval
   * @throws RangeError naming the bad option; TypeError if no timer is available
   */
  constructor(options: BalloonDeviceOptions) {
    if (options === undefined || options === null) {
      throw new TypeError("options (with options.ram) are required");
    }
    this.ram = ramRanges(options.ram);
    const qs = options.queueSize ?? 128;
    if (!Number.isInteger(qs) || qs < 32 || qs > 32768 || (qs & (qs - 1)) !== 0) {
      throw new RangeError(`options.queueSize must be a power of 2 in [32, 32768], got ${qs}`);
    }
    const maxPfns = options.maxPfnsPerRequest ?? 65536;
    if (!Number.isInteger(maxPfns) || maxPfns < 1 || maxPfns > 1 << 20) {
      throw new RangeError(
        `options.maxPfnsPerRequest must be an integer in [1, 2^20], got ${maxPfns}`,
      );
    }
    const interval = options.statsIntervalMs ?? 0;
    if (!Number.isFinite(interval) || interval < 0) {
      throw new RangeError(`options.statsIntervalMs must be >= 0, got ${interval}`);
    }
    const discard = options.discard ?? "zero";
    if (discard !== "zero" && discard !== "keep") {
      throw new RangeError(`options.discard must be "zero" or "keep", got ${String(discard)}`);
    }
    const numbering = options.queueNumbering ?? "dense";
    if (numbering !== "dense" && numbering !== "fixed") {
      throw new RangeError(
        `options.queueNumbering must be "dense" or "fixed", got ${String(numbering)}`,
      );
    }
    const stats = options.statsQueue ?? true;
    const reporting = options.pageReporting ?? true;
    const bits: number[] = [
      Feature.RING_INDIRECT_DESC,
      Feature.RING_EVENT_IDX,
      Feature.RING_PACKED,
      Feature.RING_RESET,
    ];
    if (options.mustTellHost ?? true) bits.push(BalloonFeature.MUST_TELL_HOST);
    if (stats) bits.push(BalloonFeature.STATS_VQ);
    if (options.deflateOnOom ?? false) bits.push(BalloonFeature.DEFLATE_ON_OOM);
    if (options.pagePoison ?? true) bits.push(BalloonFeature.PAGE_POISON);
    if (reporting) bits.push(BalloonFeature.PAGE_REPORTING);
    this.features = bits.reduce((m, b) => m | featureMask(b), 0n);
    this.#fixed = numbering === "fixed";
    this.queueMaxSizes = this.#fixed
      ? [qs, qs, stats ? qs : 0, 0, reporting ? qs : 0]
      : [qs, qs, ...(stats ? [qs] : []), ...(reporting ? [qs] : [])];
    this.#roles = new Int8Array(this.queueMaxSizes.length).fill(ROLE_NONE);
    this.#held = new Int32Array(qs);
    this.#chain = new DescriptorChain(qs);
    this.#host = options.host ?? {};
    this.#timer = options.timer ?? defaultTimer();
    this.#discard = discard === "zero";
    this.#maxPfns = maxPfns;
    this.#interval = interval;
    this.#firstPfn = this.ram.map((r) => r.base / BALLOON_PAGE_SIZE);
    this.#maps = this.ram.map((r) => new PageBitmap(r.size / BALLOON_PAGE_SIZE));
    this.ramPages = this.#maps.reduce((n, m) => n + m.pages, 0);
  }

  // ---- host policy API ----

  /** `num_pages`: the balloon size the host asked for, in 4 KiB pages. */
  get target(): number {
    return this.#target;
  }

  /**
   * Ask the guest for a balloon of `pages` 4 KiB pages (`num_pages`, §5.5.4) and send a
   * configuration change notification (once the driver is live; a driver that starts later reads
   * it at probe). The driver inflates towards a higher target and deflates towards a lower one.
   * @param pages - an integer in [0, {@link BalloonDevice.ramPages}]
   * @throws RangeError naming `pages`
   */
  setTarget(pages: number): void {
    if (!Number.isInteger(pages) || pages < 0 || pages > this.ramPages) {
      throw new RangeError(`pages must be an integer in [0, ${this.ramPages}], got ${pages}`);
    }
    if (pages === this.#target) return;
    this.#target = pages;
    this.#ctx?.notifyConfigChange();
  }

  /** `actual` as the driver last wrote it (4 KiB pages; untrusted, see `inflatedPages`). */
  get actual(): number {
    return this.#actual;
  }

  /** Pages in the balloon as the device counted them from the inflate and deflate queues. */
  get inflatedPages(): number {
    let n = 0;
    for (const m of this.#maps) n += m.count;
    return n;
  }

  /** `poison_val` when VIRTIO_BALLOON_F_PAGE_POISON was negotiated, else undefined. */
  get poisonValue(): number | undefined {
    const ctx = this.#ctx;
    return ctx !== undefined && hasFeature(ctx.features, BalloonFeature.PAGE_POISON)
      ? this.#poison
      : undefined;
  }

  /** The latest statistics from the guest, or undefined before the first buffer. */
  get guestStats(): Readonly<BalloonGuestStats> | undefined {
    return this.#guestStats.seq === 0 ? undefined : this.#guestStats;
  }

  /** The stats polling interval in milliseconds (0: only {@link BalloonDevice.requestStats}). */
  get statsIntervalMs(): number {
    return this.#interval;
  }

  /**
   * Poll the guest's statistics every `ms` milliseconds (0 stops polling). Takes effect at once
   * on a live device: the next request goes out `ms` from now.
   * @param ms - a finite number >= 0
   * @throws RangeError naming `ms`
   */
  setStatsInterval(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`ms must be >= 0, got ${ms}`);
    this.#interval = ms;
    this.#disarm();
    this.#arm();
  }

  /**
   * Ask the driver for fresh statistics now (§5.5.6.3): return the stats buffer(s) the device
   * holds. The driver answers with a new buffer; {@link BalloonHost.stats} hears it.
   * @returns false when there is no buffer to return (no stats queue, not live, or the driver
   *   has not answered the previous request yet)
   */
  requestStats(): boolean {
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset || this.#heldCount === 0) return false;
    const index = this.#indexOf(BalloonQueue.STATS);
    const q = index === undefined ? undefined : ctx.queue(index);
    if (index === undefined || q === undefined) return false;
    // A hostile ring (say a bad used_event) is the guest's fault: DEVICE_NEEDS_RESET, not an
    // exception out of the host's call.
    return (
      ctx.guard(() => {
        // §5.5.6.3 step 1: the device uses the buffer and sends a used buffer notification.
        for (let i = 0; i < this.#heldCount; i++) q.push(this.#held[i]!, 0);
        this.#heldCount = 0;
        this.stats.statsRequests++;
        ctx.signalUsed(index);
        return true;
      }) ?? false
    );
  }

  /** Whether the 4 KiB page `pfn` is in the balloon. */
  isInflated(pfn: number): boolean {
    const r = this.#rangeOf(pfn);
    return r >= 0 && this.#maps[r]!.has(pfn - this.#firstPfn[r]!);
  }

  /**
   * Call `fn(gpa, bytes)` for each run of inflated pages, in address order: what a migration
   * can leave out (the guest must not use these pages until it deflates them).
   * @param fn - receives each run
   */
  forEachInflatedRun(fn: (gpa: number, bytes: number) => void): void {
    this.#maps.forEach((m, r) => {
      const base = this.ram[r]!.base;
      m.runs((first, pages) => fn(base + first * BALLOON_PAGE_SIZE, pages * BALLOON_PAGE_SIZE));
    });
  }

  // ---- DeviceModel ----

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    const word = offset & ~3;
    let v = 0;
    switch (word) {
      case BalloonConfig.NUM_PAGES:
        v = this.#target;
        break;
      case BalloonConfig.ACTUAL:
        v = this.#actual;
        break;
      case BalloonConfig.FREE_PAGE_HINT_CMD_ID:
        v = 0; // FREE_PAGE_HINT is not offered; the field reads as VIRTIO_BALLOON_CMD_ID_STOP
        break;
      case BalloonConfig.POISON_VAL:
        v = this.#poison;
        break;
    }
    const shift = (offset & 3) * 8;
    return size === 4 ? v >>> 0 : (v >>> shift) & ((1 << (8 * size)) - 1);
  }

  /** @inheritdoc */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    const word = offset & ~3;
    const shift = (offset & 3) * 8;
    const mask = size === 4 ? 0xffffffff : ((1 << (8 * size)) - 1) << shift;
    const merge = (old: number) => ((old & ~mask) | ((value << shift) & mask)) >>> 0;
    if (word === BalloonConfig.ACTUAL) {
      this.#actual = merge(this.#actual);
      // Legacy drivers wrote `actual` a byte at a time: use it once its top byte is written
      // (§5.5.6.2.1, SHOULD NOT use it before).
      if (offset + size === BalloonConfig.ACTUAL + 4) this.#host.actual?.(this.#actual);
    } else if (word === BalloonConfig.POISON_VAL) {
      // §5.5.6.6.1: the driver MUST NOT modify poison_val while DRIVER_OK is set.
      if (this.#ctx === undefined) this.#poison = merge(this.#poison);
    }
    // num_pages and free_page_hint_cmd_id are the device's: driver writes are ignored.
  }

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    const f = ctx.features;
    this.#roles.fill(ROLE_NONE);
    for (const q of [
      BalloonQueue.INFLATE,
      BalloonQueue.DEFLATE,
      BalloonQueue.STATS,
      BalloonQueue.REPORTING,
    ] as const) {
      const i = balloonQueueIndex(q, f, this.#fixed);
      if (i !== undefined && i < this.#roles.length) this.#roles[i] = q;
    }
    this.#legacyFirstStats = !hasFeature(f, Feature.VERSION_1);
    // Buffers may wait already: Linux kicks the stats queue before DRIVER_OK (§5.5.5).
    for (let i = 0; i < this.#roles.length; i++) this.#serve(i);
    this.#arm();
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    this.#serve(index);
  }

  /** @inheritdoc */
  onQueueEnable(index: number): void {
    this.#serve(index);
  }

  /** @inheritdoc */
  onQueueReset(index: number): void {
    // §2.6.1.1.1: never touch the reset queue's buffers again.
    if (this.#roles[index] === BalloonQueue.STATS) this.#heldCount = 0;
  }

  /**
   * The device was reset: the held stats buffer is forgotten, polling stops, `actual` and
   * `poison_val` go back to 0, and every page still in the balloon goes back to the guest (a
   * new driver starts with an empty balloon): {@link BalloonHost.deflated} hears each run.
   * `num_pages` (the host's target) is kept.
   */
  reset(): void {
    this.#disarm();
    this.#ctx = undefined;
    this.#heldCount = 0;
    this.#actual = 0;
    this.#poison = 0;
    this.#roles.fill(ROLE_NONE);
    if (this.inflatedPages > 0) {
      this.forEachInflatedRun((gpa, bytes) => {
        this.stats.pagesDeflated += bytes / BALLOON_PAGE_SIZE;
        this.#host.deflated?.(gpa, bytes);
      });
      for (const m of this.#maps) m.reset();
    }
  }

  /**
   * Suspend / resume: the balloon's own state (what the driver changed through it): `actual`,
   * `poison_val`, `num_pages` and the pages in the balloon, as runs. Held stats buffers are the
   * core's chains in flight, not part of it.
   * @returns versioned bytes for {@link BalloonDevice.restoreState}
   */
  saveState(): Uint8Array {
    const runs: number[] = [];
    this.#maps.forEach((m, r) => {
      const first = this.#firstPfn[r]!;
      m.runs((p, n) => runs.push(first + p, n));
    });
    const out = new Uint8Array(STATE_HEADER + runs.length * 4);
    const v = new DataView(out.buffer);
    v.setUint32(0, STATE_MAGIC, true);
    v.setUint8(4, STATE_VERSION);
    v.setUint32(8, this.#actual, true);
    v.setUint32(12, this.#poison, true);
    v.setUint32(16, this.#target, true);
    for (let i = 0; i < runs.length; i++) v.setUint32(STATE_HEADER + 4 * i, runs[i]!, true);
    return out;
  }

  /**
   * Take back what {@link BalloonDevice.saveState} returned (on a fresh device with the same RAM).
   * The bytes are untrusted: runs outside RAM, overlapping runs or a bad header are refused.
   * @param state - the bytes
   * @throws BalloonStateError when they do not decode or do not fit this device's RAM
   */
  restoreState(state: Uint8Array): void {
    if (state.length < STATE_HEADER || (state.length - STATE_HEADER) % 8 !== 0) {
      throw new BalloonStateError(`length ${state.length} is not 20 + 8·runs`, 0);
    }
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (v.getUint32(0, true) !== STATE_MAGIC) throw new BalloonStateError("bad magic", 0);
    if (v.getUint8(4) !== STATE_VERSION) {
      throw new BalloonStateError(`version ${v.getUint8(4)} is not ${STATE_VERSION}`, 4);
    }
    const target = v.getUint32(16, true);
    if (target > this.ramPages) throw new BalloonStateError(`num_pages ${target} > RAM`, 16);
    const maps = this.#maps.map((m) => new PageBitmap(m.pages));
    for (let at = STATE_HEADER; at < state.length; at += 8) {
      const pfn = v.getUint32(at, true);
      const n = v.getUint32(at + 4, true);
      const r = this.#rangeOf(pfn);
      const first = r < 0 ? 0 : pfn - this.#firstPfn[r]!;
      if (r < 0 || n === 0 || n > maps[r]!.pages - first) {
        throw new BalloonStateError(`run of ${n} pages at PFN ${pfn} is outside RAM`, at);
      }
      for (let i = first; i < first + n; i++) {
        if (maps[r]!.has(i)) throw new BalloonStateError(`runs overlap at PFN ${pfn}`, at);
        maps[r]!.set(i);
      }
    }
    this.#actual = v.getUint32(8, true);
    this.#poison = v.getUint32(12, true);
    this.#target = target;
    maps.forEach((m, r) => {
      this.#maps[r]!.words.set(m.words);
      this.#maps[r]!.count = m.count;
    });
  }

  // ---- queues ----

  #indexOf(queue: BalloonQueue): number | undefined {
    const roles = this.#roles;
    for (let i = 0; i < roles.length; i++) if (roles[i] === queue) return i;
    return undefined;
  }

  /** Serve every available buffer of queue `index`. A `VirtioError` from `pop` propagates. */
  #serve(index: number): void {
    const ctx = this.#ctx;
    if (ctx === undefined) return;
    const role = this.#roles[index];
    const q = ctx.queue(index);
    if (q === undefined || role === undefined || role === ROLE_NONE) return;
    const chain = this.#chain;
    let pushed = false;
    while (q.pop(chain)) {
      switch (role) {
        case BalloonQueue.INFLATE:
        case BalloonQueue.DEFLATE:
          this.#pfnRequest(ctx, chain, role === BalloonQueue.DEFLATE);
          // §5.5.6: the device acknowledges inflate and deflate requests by using the descriptor.
          q.push(chain.head, 0);
          pushed = true;
          break;
        case BalloonQueue.STATS:
          this.#statsBuffer(ctx, chain);
          break;
        case BalloonQueue.REPORTING:
          this.#report(ctx, chain);
          // §5.5.6.7: acknowledge the report by using the descriptor.
          q.push(chain.head, 0);
          pushed = true;
          break;
      }
    }
    if (pushed) ctx.signalUsed(index);
  }

  #fault(
    ctx: DeviceContext,
    code: BalloonRequestErrorCode,
    queue: string,
    head: number,
    value: number,
    count: number,
  ): void {
    this.stats.malformed++;
    ctx.noteFault(new BalloonRequestError(code, queue, head, value, count));
  }

  /** Index of the RAM range holding 4 KiB page `pfn`, or -1. */
  #rangeOf(pfn: number): number {
    const first = this.#firstPfn;
    const maps = this.#maps;
    let r = this.#lastRange;
    if (pfn >= first[r]! && pfn - first[r]! < maps[r]!.pages) return r;
    for (r = 0; r < first.length; r++) {
      if (pfn >= first[r]! && pfn - first[r]! < maps[r]!.pages) {
        this.#lastRange = r;
        return r;
      }
    }
    return -1;
  }

  /** An inflate or deflate buffer: an array of le32 PFNs (§5.5.6). */
  #pfnRequest(ctx: DeviceContext, chain: DescriptorChain, deflate: boolean): void {
    const name = deflate ? "deflate" : "inflate";
    if (deflate) this.stats.deflateRequests++;
    else this.stats.inflateRequests++;
    if (chain.count > chain.readableCount) {
      this.#fault(
        ctx,
        "balloon-writable-descriptor",
        name,
        chain.head,
        chain.writableBytes,
        chain.count - chain.readableCount,
      );
    }
    const bytes = chain.readableBytes;
    if (bytes % 4 !== 0) {
      this.#fault(ctx, "balloon-pfn-array-length", name, chain.head, bytes, 1);
      return;
    }
    if (bytes / 4 > this.#maxPfns) {
      this.#fault(ctx, "balloon-pfn-array-too-long", name, chain.head, bytes / 4, 1);
      return;
    }
    this.#bad = 0;
    this.#dup = 0;
    this.#runRange = -1;
    const mem = ctx.memory;
    const views = this.#views;
    let acc = 0;
    let have = 0;
    for (let s = 0; s < chain.readableCount; s++) {
      const len = chain.lens[s]!;
      if (len === 0) continue;
      views.length = 0;
      mem.sg(chain.addrs[s]!, len, views, "read");
      for (let v = 0; v < views.length; v++) {
        const b = views[v]!;
        for (let k = 0; k < b.length; k++) {
          acc |= b[k]! << (8 * have);
          if (++have === 4) {
            this.#pfn(mem, acc >>> 0, deflate);
            acc = 0;
            have = 0;
          }
        }
      }
    }
    views.length = 0;
    this.#flushRun(mem, deflate);
    if (this.#bad > 0) {
      this.#fault(ctx, "balloon-pfn-out-of-range", name, chain.head, this.#badValue, this.#bad);
    }
    if (this.#dup > 0) {
      this.#fault(
        ctx,
        deflate ? "balloon-pfn-not-inflated" : "balloon-pfn-already-inflated",
        name,
        chain.head,
        this.#dupValue,
        this.#dup,
      );
    }
  }

  /** One PFN of an inflate or deflate array; contiguous pages gather into one run. */
  #pfn(mem: GuestMemory, pfn: number, deflate: boolean): void {
    const r = this.#rangeOf(pfn);
    if (r < 0 || !mem.check(pfn * BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE, "write")) {
      if (this.#bad++ === 0) this.#badValue = pfn;
      this.#flushRun(mem, deflate);
      return;
    }
    const map = this.#maps[r]!;
    const i = pfn - this.#firstPfn[r]!;
    if (map.has(i) === deflate) {
      if (deflate) map.clear(i);
      else map.set(i);
    } else {
      if (this.#dup++ === 0) this.#dupValue = pfn;
      this.#flushRun(mem, deflate);
      return;
    }
    if (this.#runRange === r && this.#runFirst + this.#runPages === i) {
      this.#runPages++;
      return;
    }
    this.#flushRun(mem, deflate);
    this.#runRange = r;
    this.#runFirst = i;
    this.#runPages = 1;
  }

  #flushRun(mem: GuestMemory, deflate: boolean): void {
    const r = this.#runRange;
    if (r < 0) return;
    this.#runRange = -1;
    const gpa = this.ram[r]!.base + this.#runFirst * BALLOON_PAGE_SIZE;
    const bytes = this.#runPages * BALLOON_PAGE_SIZE;
    if (deflate) {
      this.stats.pagesDeflated += this.#runPages;
      this.#host.deflated?.(gpa, bytes);
    } else {
      this.stats.pagesInflated += this.#runPages;
      // §5.5.6.2: the device MAY modify the contents of a page in the balloon after detecting its
      // PFN in an inflate request and before acknowledging it.
      if (this.#discard) mem.fill(gpa, bytes, 0);
      this.#host.inflated?.(gpa, bytes);
    }
  }

  /** A stats buffer (§5.5.6.3): read it, hold it until the next request. */
  #statsBuffer(ctx: DeviceContext, chain: DescriptorChain): void {
    this.stats.statsBuffers++;
    if (this.#heldCount > 0) {
      // §5.5.6.3.1: the driver MUST make at most one buffer available. Keep them all (bounded by
      // the queue size) and return them together with the next request: returning the extra one
      // now would make the driver post another, forever.
      this.#fault(ctx, "balloon-stats-extra-buffer", "stats", chain.head, this.#heldCount + 1, 1);
    }
    if (this.#heldCount < this.#held.length) this.#held[this.#heldCount++] = chain.head;
    if (chain.count > chain.readableCount) {
      this.#fault(
        ctx,
        "balloon-writable-descriptor",
        "stats",
        chain.head,
        chain.writableBytes,
        chain.count - chain.readableCount,
      );
    }
    const len = chain.readableBytes;
    if (len > BALLOON_STATS_MAX_BYTES) {
      this.#fault(ctx, "balloon-stats-too-long", "stats", chain.head, len, 1);
      return;
    }
    if (len % BalloonStat.SIZE !== 0) {
      this.#fault(ctx, "balloon-stats-length", "stats", chain.head, len, 1);
      return;
    }
    if (this.#legacyFirstStats) {
      // §5.5.6.3.3: legacy drivers historically sent an uninitialised first buffer.
      this.#legacyFirstStats = false;
      return;
    }
    chain.copyFromReadable(ctx.memory, 0, this.#statsBuf);
    const s = this.#guestStats;
    s.swapIn = s.swapOut = s.majorFaults = s.minorFaults = undefined;
    s.memFree = s.memTotal = s.available = s.caches = undefined;
    s.hugetlbAllocations = s.hugetlbFailures = undefined;
    s.unknownTags = 0;
    const v = this.#statsView;
    // §5.5.6.3.2: entries in any order; unknown tags ignored.
    for (let at = 0; at < len; at += BalloonStat.SIZE) {
      const tag = v.getUint16(at + BalloonStat.TAG, true);
      const val =
        v.getUint32(at + BalloonStat.VAL + 4, true) * 2 ** 32 +
        v.getUint32(at + BalloonStat.VAL, true);
      switch (tag) {
        case BalloonStatTag.SWAP_IN:
          s.swapIn = val;
          break;
        case BalloonStatTag.SWAP_OUT:
          s.swapOut = val;
          break;
        case BalloonStatTag.MAJFLT:
          s.majorFaults = val;
          break;
        case BalloonStatTag.MINFLT:
          s.minorFaults = val;
          break;
        case BalloonStatTag.MEMFREE:
          s.memFree = val;
          break;
        case BalloonStatTag.MEMTOT:
          s.memTotal = val;
          break;
        case BalloonStatTag.AVAIL:
          s.available = val;
          break;
        case BalloonStatTag.CACHES:
          s.caches = val;
          break;
        case BalloonStatTag.HTLB_PGALLOC:
          s.hugetlbAllocations = val;
          break;
        case BalloonStatTag.HTLB_PGFAIL:
          s.hugetlbFailures = val;
          break;
        default:
          s.unknownTags++;
      }
    }
    s.seq++;
    s.at = this.#timer.now();
    this.#host.stats?.(s);
  }

  /** A reporting buffer (§5.5.6.7): device-writable runs of free pages. */
  #report(ctx: DeviceContext, chain: DescriptorChain): void {
    this.stats.reportRequests++;
    if (chain.readableCount > 0) {
      this.#fault(
        ctx,
        "balloon-report-readable-descriptor",
        "reporting",
        chain.head,
        chain.readableBytes,
        chain.readableCount,
      );
    }
    const mem = ctx.memory;
    const poisoned = hasFeature(ctx.features, BalloonFeature.PAGE_POISON);
    const p = this.#poison;
    const b0 = p & 0xff;
    // §5.5.6.7.2: with PAGE_POISON the device MUST NOT change a reported page to anything but
    // poison_val; a value whose four bytes differ cannot be written with a byte fill: keep.
    const fill = !this.#discard ? -1 : !poisoned ? 0 : p === (b0 * 0x01010101) >>> 0 ? b0 : -1;
    let misaligned = 0;
    let misValue = 0;
    let outside = 0;
    let outValue = 0;
    for (let s = chain.readableCount; s < chain.count; s++) {
      const addr = chain.addrs[s]!;
      const len = chain.lens[s]!;
      if (len === 0 || addr % BALLOON_PAGE_SIZE !== 0 || len % BALLOON_PAGE_SIZE !== 0) {
        if (misaligned++ === 0) misValue = addr;
        continue;
      }
      const pfn = addr / BALLOON_PAGE_SIZE;
      const r = this.#rangeOf(pfn);
      const pages = len / BALLOON_PAGE_SIZE;
      if (
        r < 0 ||
        pfn - this.#firstPfn[r]! + pages > this.#maps[r]!.pages ||
        !mem.check(addr, len, "write")
      ) {
        if (outside++ === 0) outValue = addr;
        continue;
      }
      // §5.5.6.7.2: without PAGE_POISON the device MAY modify reported pages before
      // acknowledging the report.
      if (fill >= 0) mem.fill(addr, len, fill);
      this.stats.pagesReported += pages;
      this.#host.reported?.(addr, len);
    }
    if (misaligned > 0) {
      this.#fault(ctx, "balloon-report-misaligned", "reporting", chain.head, misValue, misaligned);
    }
    if (outside > 0) {
      this.#fault(ctx, "balloon-report-out-of-range", "reporting", chain.head, outValue, outside);
    }
  }

  // ---- stats polling ----

  #arm(): void {
    if (this.#ticking || this.#interval <= 0 || this.#ctx === undefined) return;
    if (this.#indexOf(BalloonQueue.STATS) === undefined) return;
    this.#ticking = true;
    this.#tick = this.#timer.schedule(this.#onTick, this.#interval);
  }

  #disarm(): void {
    if (this.#ticking) this.#timer.cancel(this.#tick);
    this.#ticking = false;
    this.#tick = undefined;
  }
}
