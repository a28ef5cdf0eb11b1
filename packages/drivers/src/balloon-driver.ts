/**
 * virtio-balloon driver (guest side).
 * @see VIRTIO 1.3 §5.5 "Traditional Memory Balloon Device"
 * @module
 */
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
  MmioInterrupt,
  splitAvailSize,
  splitDescTableSize,
  splitUsedSize,
} from "@virtio-ts/spec";
import type { ConfigWritableTransport } from "@virtio-ts/transport";
import type { DriverQueue, QueueLayout, Segment } from "@virtio-ts/virtqueue";
import { reapAll } from "./reap.js";

/**
 * Where the balloon gets pages from and gives them back to: the guest's page allocator.
 *
 * Implementer contract: `alloc` takes one free 4 KiB page out of the guest's use and returns
 * its page frame number (guest address / 4096), or undefined when none can be spared (the
 * driver stops inflating, as Linux's "out of puff"). Pages stay the balloon's until `free`
 * hands them back, after the device acknowledged the deflate. Never return a page twice.
 */
export interface BalloonPageAllocator {
  /** Take one free 4 KiB page for the balloon. @returns its PFN, or undefined */
  alloc(): number | undefined;
  /**
   * Give a page taken by `alloc` back to the guest.
   * @param pfn - its page frame number
   */
  free(pfn: number): void;
}

/** Memory statistics a guest reports (§5.5.6.4): bytes for memory figures, counts for the rest. */
export interface BalloonStatsSample {
  /** VIRTIO_BALLOON_S_SWAP_IN. */
  readonly swapIn?: number;
  /** VIRTIO_BALLOON_S_SWAP_OUT. */
  readonly swapOut?: number;
  /** VIRTIO_BALLOON_S_MAJFLT. */
  readonly majorFaults?: number;
  /** VIRTIO_BALLOON_S_MINFLT. */
  readonly minorFaults?: number;
  /** VIRTIO_BALLOON_S_MEMFREE. */
  readonly memFree?: number;
  /** VIRTIO_BALLOON_S_MEMTOT. */
  readonly memTotal?: number;
  /** VIRTIO_BALLOON_S_AVAIL. */
  readonly available?: number;
  /** VIRTIO_BALLOON_S_CACHES. */
  readonly caches?: number;
  /** VIRTIO_BALLOON_S_HTLB_PGALLOC. */
  readonly hugetlbAllocations?: number;
  /** VIRTIO_BALLOON_S_HTLB_PGFAIL. */
  readonly hugetlbFailures?: number;
}

const STAT_TAGS: readonly [keyof BalloonStatsSample, number][] = [
  ["swapIn", BalloonStatTag.SWAP_IN],
  ["swapOut", BalloonStatTag.SWAP_OUT],
  ["majorFaults", BalloonStatTag.MAJFLT],
  ["minorFaults", BalloonStatTag.MINFLT],
  ["memFree", BalloonStatTag.MEMFREE],
  ["memTotal", BalloonStatTag.MEMTOT],
  ["available", BalloonStatTag.AVAIL],
  ["caches", BalloonStatTag.CACHES],
  ["hugetlbAllocations", BalloonStatTag.HTLB_PGALLOC],
  ["hugetlbFailures", BalloonStatTag.HTLB_PGFAIL],
];

/** Options of a {@link BalloonDriver}. */
export interface BalloonDriverOptions {
  /**
   * Guest address of the driver's area, {@link BalloonDriver.areaBytes} bytes, 16-aligned:
   * the rings and the PFN and stats buffers. Nothing else may use it.
   */
  readonly base: number;
  /** Where inflated pages come from and deflated pages go. */
  readonly pages: BalloonPageAllocator;
  /** Queue size, a power of 2 from 32 up to the device's maximum (default min(64, maximum)). */
  readonly queueSize?: number;
  /** Memory statistics to send when the device asks (§5.5.6.3); none: STATS_VQ is not accepted. */
  readonly stats?: () => BalloonStatsSample;
  /** Accept VIRTIO_BALLOON_F_PAGE_REPORTING so {@link BalloonDriver.report} works (default true). */
  readonly reporting?: boolean;
  /** Accept VIRTIO_BALLOON_F_DEFLATE_ON_OOM so {@link BalloonDriver.deflateOnOom} works (default false). */
  readonly deflateOnOom?: boolean;
  /**
   * The value the guest initialises free pages with: accept PAGE_POISON, write it to
   * `poison_val` and fill deflated pages with it before handing them back (§5.5.6.6.1). Without
   * it PAGE_POISON is refused (§5.5.3.1: the driver SHOULD clear it if it does not write
   * poison_val), and reported pages come back uninitialised.
   */
  readonly poisonValue?: number;
  /** Accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
  /** Queue numbering the device uses (default "dense", see `balloonQueueIndex`). */
  readonly queueNumbering?: "dense" | "fixed";
}

/** Why the balloon driver gave up on what the device did. */
export type BalloonDeviceFaultCode =
  /** The device is not a memory balloon (DeviceID is not 5). */
  | "balloon-not-balloon"
  /**
   * The device corrupted a ring (a `RingError` while reaping, `cause`). Pending reports and
   * waits are rejected; the pages in flight stay the balloon's.
   */
  | "balloon-ring-broken";

/** The balloon device broke its protocol (drivers distrust devices). */
export class BalloonDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: BalloonDeviceFaultCode;
  /** The offending value (DeviceID, or 0). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   * @param cause - the underlying error, if any
   */
  constructor(code: BalloonDeviceFaultCode, message: string, value: number, cause?: unknown) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.value = value;
  }
}

/** Counters of a {@link BalloonDriver}. */
export interface BalloonDriverStats {
  /** Inflate buffers sent. */
  inflates: number;
  /** Deflate buffers sent. */
  deflates: number;
  /** Reports sent. */
  reports: number;
  /** Statistics buffers sent. */
  statsSent: number;
  /** Times the allocator had no page to give (inflation stopped short). */
  outOfPages: number;
}

/** PFNs per inflate / deflate buffer (as Linux: VIRTIO_BALLOON_ARRAY_PFNS_MAX). */
export const BALLOON_PFNS_PER_REQUEST = 256;

const STATS_BYTES = STAT_TAGS.length * BalloonStat.SIZE;

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Bytes of one ring (split sizes, which also hold a packed ring). */
function ringBytes(size: number): number {
  const driver = splitDescTableSize(size);
  const device = alignUp(driver + splitAvailSize(size), 4);
  return alignUp(device + splitUsedSize(size), 16);
}

function ringAt(base: number, size: number): QueueLayout {
  const driver = base + splitDescTableSize(size);
  return { size, desc: base, driver, device: alignUp(driver + splitAvailSize(size), 4) };
}

type Waiter = { resolve: () => void; reject: (e: unknown) => void };
type Report = { readonly segs: readonly Segment[]; readonly waiter: Waiter };

/**
 * Guest-side virtio-balloon driver over a {@link ConfigWritableTransport} (VIRTIO 1.3 §5.5):
 * follows the device's `num_pages` by inflating (pages from the caller's
 * {@link BalloonPageAllocator}) and deflating (pages back to it), writes `actual` after each
 * acknowledged request, answers statistics requests from a caller-supplied sampler, and reports
 * runs of free pages on request.
 *
 * One inflate or deflate buffer (up to 256 PFNs) is in flight at a time, like Linux; pages go
 * back to the allocator only after the device acknowledged the deflate (MUST_TELL_HOST order,
 * §5.5.6.1), and pages taken for an inflate are never touched again until deflated. A reported
 * run must not be used until {@link BalloonDriver.report}'s promise resolves (§5.5.6.7.1).
 *
 * Completion: the driver does nothing until {@link BalloonDriver.onInterrupt} (or
 * {@link BalloonDriver.poll} and {@link BalloonDriver.update}) is called.
 *
 * @example
 * ```ts
 * const balloon = new BalloonDriver(transport, memory, { base: 0x10000, pages: allocator,
 *   stats: () => ({ memFree: freeBytes(), memTotal: totalBytes() }) });
 * // interrupt handler: balloon.onInterrupt(); it re-reads num_pages on a configuration change
 * await balloon.settled(); // the balloon has reached the target (or the allocator ran dry)
 * await balloon.report([{ addr: 0x400000, len: 0x400000 }]); // then reuse those pages
 * ```
 */
export class BalloonDriver {
  /** Counters. */
  readonly stats: BalloonDriverStats = {
    inflates: 0,
    deflates: 0,
    reports: 0,
    statsSent: 0,
    outOfPages: 0,
  };

  readonly #t: ConfigWritableTransport;
  readonly #mem: GuestMemory;
  readonly #pages: BalloonPageAllocator;
  readonly #features: bigint;
  readonly #sampler: (() => BalloonStatsSample) | undefined;
  readonly #poison: number | undefined;
  readonly #qi: number[] = [-1, -1, -1, -1, -1];
  readonly #queues: (DriverQueue<number> | undefined)[] = [];
  readonly #pfnBuf: number;
  readonly #statsBuf: number;
  readonly #statsKeys: (keyof BalloonStatsSample)[] = [];
  /** Pages in the balloon, last in first out. */
  readonly #inBalloon: number[] = [];
  /** PFNs of the inflate or deflate buffer in flight. */
  readonly #inFlight: number[] = [];
  readonly #seg = [{ addr: 0, len: 0 }];
  readonly #reports: Report[] = [];
  readonly #reportsInFlight = new Map<number, Waiter>();
  readonly #settled: Waiter[] = [];
  readonly #onUsed = (token: number, _len: number): void => this.#complete(token);
  #nextReport = 3;
  #busy: "inflate" | "deflate" | undefined;
  #target = 0;
  /** Moving towards the target (set by `update`, cleared once there or out of pages). */
  #chasing = false;
  #dry = false;
  #broken: BalloonDeviceFault | undefined;

  /**
   * Bytes of the area {@link BalloonDriverOptions.base} must point at.
   * @param queueSize - queue size
   */
  static areaBytes(queueSize: number): number {
    return 4 * ringBytes(queueSize) + 4 * BALLOON_PFNS_PER_REQUEST + alignUp(STATS_BYTES, 16);
  }

  /**
   * Initialise the device (§3.1.1, §5.5.5): negotiate, set up the queues, write `poison_val`,
   * post the first statistics buffer, set DRIVER_OK, then notify the stats queue and read the
   * target.
   * @param transport - the device's transport (it is reset)
   * @param memory - guest memory holding the area and the pages
   * @param options - area, page allocator, stats sampler, features
   * @throws TransportError from negotiation / queue setup; BalloonDeviceFault
   *   "balloon-not-balloon" (FAILED is then set); RangeError naming an invalid option
   */
  constructor(
    transport: ConfigWritableTransport,
    memory: GuestMemory,
    options: BalloonDriverOptions,
  ) {
    this.#t = transport;
    this.#mem = memory;
    this.#pages = options.pages;
    const base = options.base;
    if (!Number.isSafeInteger(base) || base < 0 || base % 16 !== 0) {
      throw new RangeError(`options.base must be a 16-aligned address, got ${base}`);
    }
    const poison = options.poisonValue;
    if (poison !== undefined && (!Number.isInteger(poison) || poison < 0 || poison > 0xffffffff)) {
      throw new RangeError(`options.poisonValue must be a u32, got ${poison}`);
    }
    const info = transport.probe();
    if (info.deviceId !== DeviceId.BALLOON) {
      transport.fail();
      throw new BalloonDeviceFault(
        "balloon-not-balloon",
        `DeviceID is ${info.deviceId}`,
        info.deviceId,
      );
    }
    let want =
      featureMask(Feature.RING_EVENT_IDX) |
      featureMask(Feature.RING_PACKED) |
      // §5.5.3.1: the driver SHOULD accept MUST_TELL_HOST; this driver always tells first.
      featureMask(BalloonFeature.MUST_TELL_HOST);
    if (options.packed === false) want &= ~featureMask(Feature.RING_PACKED);
    if (options.stats !== undefined) want |= featureMask(BalloonFeature.STATS_VQ);
    if (options.reporting ?? true) want |= featureMask(BalloonFeature.PAGE_REPORTING);
    if (options.deflateOnOom === true) want |= featureMask(BalloonFeature.DEFLATE_ON_OOM);
    if (poison !== undefined) want |= featureMask(BalloonFeature.PAGE_POISON);
    this.#features = transport.negotiate(want);
    const f = this.#features;
    this.#poison = hasFeature(f, BalloonFeature.PAGE_POISON) ? poison : undefined;
    this.#sampler = hasFeature(f, BalloonFeature.STATS_VQ) ? options.stats : undefined;
    const fixed = options.queueNumbering === "fixed";
    let size = options.queueSize;
    const roles = [
      BalloonQueue.INFLATE,
      BalloonQueue.DEFLATE,
      BalloonQueue.STATS,
      BalloonQueue.REPORTING,
    ] as const;
    for (const q of roles) {
      const i = balloonQueueIndex(q, f, fixed);
      if (i === undefined) continue;
      this.#qi[q] = i;
      const max = transport.queueMaxSize(i);
      size ??= Math.min(64, max);
    }
    size ??= 64;
    if (!Number.isInteger(size) || size < 32 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`options.queueSize must be a power of 2 in [32, 32768], got ${size}`);
    }
    const ring = ringBytes(size);
    for (const q of roles) {
      const i = this.#qi[q]!;
      if (i < 0) continue;
      this.#queues[q] = transport.setupQueue<number>(i, memory, ringAt(base + q * ring, size));
    }
    this.#pfnBuf = base + 4 * ring;
    this.#statsBuf = this.#pfnBuf + 4 * BALLOON_PFNS_PER_REQUEST;
    if (this.#poison !== undefined) {
      // §5.5.6.6.1: populate poison_val before setting DRIVER_OK.
      transport.writeConfig(BalloonConfig.POISON_VAL, 4, this.#poison);
    }
    // §5.5.5: one initialised buffer on the stats queue before DRIVER_OK, notified after it.
    const statsPosted = this.#postStats();
    transport.driverOk();
    if (statsPosted) transport.notify(this.#qi[BalloonQueue.STATS]!);
    this.update();
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** Pages in the balloon (acknowledged by the device). */
  get pages(): number {
    return this.#inBalloon.length;
  }

  /** The last `num_pages` read from the device. */
  get target(): number {
    return this.#target;
  }

  /** Whether the balloon is at the target with nothing in flight (or the allocator ran dry). */
  get isSettled(): boolean {
    return this.#busy === undefined && !this.#chasing;
  }

  /**
   * Resolves once the balloon has reached the target and nothing is in flight, or the allocator
   * has no page left to give (see {@link BalloonDriver.pages}).
   * @throws BalloonDeviceFault (rejection) if the device breaks a ring meanwhile
   */
  settled(): Promise<void> {
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    if (this.isSettled) return Promise.resolve();
    return new Promise((resolve, reject) => this.#settled.push({ resolve, reject }));
  }

  /**
   * Interrupt handler: take the interrupt; on a configuration change re-read `num_pages`
   * ({@link BalloonDriver.update}); reap every queue ({@link BalloonDriver.poll}).
   * @returns the number of buffers reaped
   */
  onInterrupt(): number {
    const cause = this.#t.takeInterrupt();
    const n = this.poll();
    if ((cause & MmioInterrupt.CONFIG) !== 0) this.update();
    return n;
  }

  /**
   * Read `num_pages` and start moving towards it (§5.5.6 step 1). A new target also lets an
   * inflation that ran out of pages try again.
   */
  update(): void {
    if (this.#broken !== undefined || this.#t.needsReset) return;
    const target = this.#t.readConfig((c) => c.u32(BalloonConfig.NUM_PAGES));
    if (target !== this.#target) this.#dry = false;
    this.#target = target;
    this.#chasing = true;
    this.#step();
  }

  /**
   * Reap every queue: acknowledged inflates and deflates, statistics requests, reports.
   * @returns the number of buffers reaped
   */
  poll(): number {
    if (this.#broken !== undefined) return 0;
    let n = 0;
    try {
      for (const q of this.#queues) if (q !== undefined) n += reapAll(q, this.#onUsed);
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      this.#break(e);
      return n;
    }
    this.#step();
    this.#flushReports();
    return n;
  }

  /**
   * Report runs of free pages (§5.5.6.7): the device may discard their contents. The caller must
   * not use the pages until the promise resolves (§5.5.6.7.1); afterwards they are free again
   * (their contents undefined, or `poisonValue` under PAGE_POISON).
   * @param runs - whole 4 KiB pages at 4 KiB-aligned addresses, at most the queue size of runs
   * @throws RangeError naming `runs` (not negotiated, misaligned, too many);
   *   BalloonDeviceFault (rejection) if the device breaks the ring
   */
  report(runs: readonly Segment[]): Promise<void> {
    const q = this.#queues[BalloonQueue.REPORTING];
    if (q === undefined) {
      throw new RangeError(
        "runs cannot be reported: VIRTIO_BALLOON_F_PAGE_REPORTING is not negotiated",
      );
    }
    if (runs.length === 0 || runs.length > q.size) {
      throw new RangeError(`runs must hold 1 to ${q.size} runs, got ${runs.length}`);
    }
    for (const [i, r] of runs.entries()) {
      if (
        !Number.isSafeInteger(r.addr) ||
        r.addr % BALLOON_PAGE_SIZE !== 0 ||
        !Number.isInteger(r.len) ||
        r.len <= 0 ||
        r.len % BALLOON_PAGE_SIZE !== 0 ||
        r.len > 0xfffff000
      ) {
        throw new RangeError(`runs[${i}] must be whole 4 KiB pages at a 4 KiB-aligned address`);
      }
    }
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    return new Promise((resolve, reject) => {
      this.#reports.push({
        segs: runs.map((r) => ({ addr: r.addr, len: r.len })),
        waiter: { resolve, reject },
      });
      this.#flushReports();
    });
  }

  /**
   * Take up to `pages` pages back from the balloon because the guest is out of memory
   * (VIRTIO_BALLOON_F_DEFLATE_ON_OOM, §5.5.6.1), even though `num_pages` has not dropped. Still
   * through the deflateq, so the device knows. Without the feature the driver MUST NOT, and
   * nothing happens.
   * @param pages - at most this many (the request in flight finishes first)
   * @returns pages the deflate will give back (0 without the feature or when busy)
   */
  deflateOnOom(pages: number): number {
    if (!hasFeature(this.#features, BalloonFeature.DEFLATE_ON_OOM) || this.#busy !== undefined) {
      return 0;
    }
    const n = Math.min(pages, this.#inBalloon.length, BALLOON_PFNS_PER_REQUEST);
    if (n <= 0) return 0;
    // Like Linux, do not chase the target again until the device changes it.
    this.#chasing = false;
    this.#send("deflate", n);
    return n;
  }

  // ---- internals ----

  /** Start the next inflate or deflate buffer if none is in flight. */
  #step(): void {
    if (this.#busy !== undefined || this.#broken !== undefined) {
      this.#wake();
      return;
    }
    const have = this.#inBalloon.length;
    const target = this.#target;
    if (this.#chasing) {
      if (have < target && !this.#dry) {
        this.#send("inflate", Math.min(target - have, BALLOON_PFNS_PER_REQUEST));
      } else if (have > target) {
        this.#send("deflate", Math.min(have - target, BALLOON_PFNS_PER_REQUEST));
      }
      if (this.#busy === undefined) this.#chasing = false;
    }
    this.#wake();
  }

  #send(kind: "inflate" | "deflate", n: number): void {
    const pfns = this.#inFlight;
    pfns.length = 0;
    if (kind === "inflate") {
      for (let i = 0; i < n; i++) {
        const pfn = this.#pages.alloc();
        if (pfn === undefined) {
          this.#dry = true;
          this.stats.outOfPages++;
          break;
        }
        pfns.push(pfn);
      }
    } else {
      // §5.5.6: deflate pages previously given to the balloon (and acknowledged).
      for (let i = 0; i < n; i++) pfns.push(this.#inBalloon.pop()!);
    }
    if (pfns.length === 0) return;
    for (let i = 0; i < pfns.length; i++) this.#mem.writeU32(this.#pfnBuf + 4 * i, pfns[i]!);
    const role = kind === "inflate" ? BalloonQueue.INFLATE : BalloonQueue.DEFLATE;
    const q = this.#queues[role]!;
    this.#seg[0]!.addr = this.#pfnBuf;
    this.#seg[0]!.len = 4 * pfns.length;
    if (!q.add(this.#seg, [], role)) {
      // An empty queue always takes one buffer; the device has not returned an old one.
      this.#undo(kind);
      return;
    }
    this.#busy = kind;
    if (kind === "inflate") this.stats.inflates++;
    else this.stats.deflates++;
    if (q.publish()) this.#t.notify(this.#qi[role]!);
  }

  #undo(kind: "inflate" | "deflate"): void {
    for (const pfn of this.#inFlight) {
      if (kind === "inflate") this.#pages.free(pfn);
      else this.#inBalloon.push(pfn);
    }
    this.#inFlight.length = 0;
  }

  #complete(token: number): void {
    if (token === BalloonQueue.INFLATE || token === BalloonQueue.DEFLATE) {
      const pfns = this.#inFlight;
      if (token === BalloonQueue.INFLATE) {
        for (let i = 0; i < pfns.length; i++) this.#inBalloon.push(pfns[i]!);
      } else {
        // §5.5.6.1 with MUST_TELL_HOST: use the pages only after the deflate is acknowledged.
        for (let i = 0; i < pfns.length; i++) {
          if (this.#poison !== undefined) this.#fillPoison(pfns[i]!);
          this.#pages.free(pfns[i]!);
        }
      }
      pfns.length = 0;
      this.#busy = undefined;
      // §5.5.6.1: the driver MUST update actual after changing the number of pages.
      this.#t.writeConfig(BalloonConfig.ACTUAL, 4, this.#inBalloon.length);
    } else if (token === BalloonQueue.STATS) {
      // §5.5.6.3: the device used the buffer to ask for new statistics: answer with a new one.
      if (this.#postStats()) this.#t.notify(this.#qi[BalloonQueue.STATS]!);
    } else {
      const w = this.#reportsInFlight.get(token);
      this.#reportsInFlight.delete(token);
      w?.resolve();
    }
  }

  /** §5.5.6.6.1: deflated pages are initialised with poison_val before reuse. */
  #fillPoison(pfn: number): void {
    const p = this.#poison!;
    const addr = pfn * BALLOON_PAGE_SIZE;
    if (p === ((p & 0xff) * 0x01010101) >>> 0) {
      this.#mem.fill(addr, BALLOON_PAGE_SIZE, p & 0xff);
      return;
    }
    for (let i = 0; i < BALLOON_PAGE_SIZE; i += 4) this.#mem.writeU32(addr + i, p);
  }

  /** Write the current statistics and add the stats buffer; false without a stats queue. */
  #postStats(): boolean {
    const q = this.#queues[BalloonQueue.STATS];
    const sampler = this.#sampler;
    if (q === undefined || sampler === undefined) return false;
    const sample = sampler();
    const keys = this.#statsKeys;
    if (this.stats.statsSent === 0) {
      // §5.5.6.3.1: the same subset of statistics in every buffer: fixed by the first sample.
      for (const [k] of STAT_TAGS) if (sample[k] !== undefined) keys.push(k);
    }
    let at = this.#statsBuf;
    for (const [k, tag] of STAT_TAGS) {
      if (!keys.includes(k)) continue;
      const v = sample[k] ?? 0;
      this.#mem.writeU16(at + BalloonStat.TAG, tag);
      this.#mem.writeU64(at + BalloonStat.VAL, BigInt(Math.max(0, Math.floor(v))));
      at += BalloonStat.SIZE;
    }
    this.#seg[0]!.addr = this.#statsBuf;
    this.#seg[0]!.len = at - this.#statsBuf;
    // §5.5.6.3.1: at most one buffer available at a time; this is the only one.
    if (!q.add(this.#seg, [], BalloonQueue.STATS)) return false;
    this.stats.statsSent++;
    q.publish();
    return true;
  }

  #flushReports(): void {
    const q = this.#queues[BalloonQueue.REPORTING];
    if (q === undefined || this.#broken !== undefined) return;
    let added = false;
    while (this.#reports.length > 0) {
      const r = this.#reports[0]!;
      const token = this.#nextReport++;
      // §5.5.6.7: the pages are handed over as device-writable buffers.
      if (!q.add([], r.segs, token)) {
        this.#nextReport--;
        break;
      }
      this.#reports.shift();
      this.#reportsInFlight.set(token, r.waiter);
      this.stats.reports++;
      added = true;
    }
    if (added && q.publish()) this.#t.notify(this.#qi[BalloonQueue.REPORTING]!);
  }

  #wake(): void {
    if (!this.isSettled || this.#settled.length === 0) return;
    const ws = this.#settled.splice(0);
    for (const w of ws) w.resolve();
  }

  #break(cause: VirtioError): void {
    const fault = new BalloonDeviceFault(
      "balloon-ring-broken",
      `the device broke a ring: ${cause.message}`,
      0,
      cause,
    );
    this.#broken = fault;
    const waiters = [
      ...this.#settled.splice(0),
      ...this.#reports.splice(0).map((r) => r.waiter),
      ...this.#reportsInFlight.values(),
    ];
    this.#reportsInFlight.clear();
    for (const w of waiters) w.reject(fault);
  }
}
