/**
 * virtio-blk driver (guest side).
 * @see VIRTIO 1.3 §5.2 "Block Device"
 * @module
 */
import { type GuestMemory, GuestMemoryError, GuestMemoryMap, VirtioError } from "@virtio-ts/memory";
import {
  BLK_ID_BYTES,
  BLK_SECTOR_SIZE,
  BlkConfig,
  BlkDiscardWriteZeroes,
  BlkFeature,
  BlkOutHdr,
  BlkRequestType,
  BlkStatus,
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
  MmioInterrupt,
} from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import {
  checkQueueSizeOption,
  type DriverQueue,
  indirectAreaSize,
  ringAreaBytes,
  ringLayoutAt,
  type Segment,
} from "@virtio-ts/virtqueue";
import { checkAllocatorPlacement, checkRingPlacement } from "./placement.js";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

/**
 * A virtio-blk request completed with a status other than OK (VIRTIO 1.3 §5.2.6): the device
 * reported IOERR (I/O error, out-of-range sectors, a write to a read-only disk) or UNSUPP
 * (the request type is not supported, or the driver did not negotiate it).
 */
export class BlkStatusError extends VirtioError {
  /** "blk-ioerr" for `BlkStatus.IOERR`, "blk-unsupp" for `BlkStatus.UNSUPP`. */
  readonly code: "blk-ioerr" | "blk-unsupp";
  /** The status byte: `BlkStatus.IOERR` or `BlkStatus.UNSUPP`. */
  readonly status: BlkStatus;
  /** The request type ({@link BlkRequestType}). */
  readonly type: number;
  /** The request's first sector (0 for FLUSH and GET_ID). */
  readonly sector: number;

  /**
   * @param status - IOERR or UNSUPP
   * @param type - request type
   * @param sector - first sector of the request
   */
  constructor(
    status: typeof BlkStatus.IOERR | typeof BlkStatus.UNSUPP,
    type: number,
    sector: number,
  ) {
    const code = status === BlkStatus.IOERR ? "blk-ioerr" : "blk-unsupp";
    super(`virtio-blk request type ${type} at sector ${sector} failed: ${code}`);
    this.code = code;
    this.status = status;
    this.type = type;
    this.sector = sector;
  }
}

/** Why the blk driver gave up on what the device did. */
export type BlkDeviceFaultCode =
  /** The device is not a block device (DeviceID is not 2). */
  | "blk-not-block"
  /** A configuration field is unusable (`size_max` below 512, `blk_size` not a power of 2 ≥ 512). */
  | "blk-bad-config"
  /** A used length did not cover the status byte (or, for IN / GET_ID, the data before it). */
  | "blk-short-used"
  /** The status byte is not OK, IOERR or UNSUPP. */
  | "blk-bad-status"
  /**
   * The device corrupted the ring (a `RingError` while reaping): every request in flight or
   * waiting is rejected with this fault, and so is every later request, until a new driver is
   * set up on a reset device.
   */
  | "blk-ring-broken"
  /**
   * The device set DEVICE_NEEDS_RESET (§2.1.2), seen on a configuration change interrupt: every
   * request in flight or waiting is rejected with this fault, and so is every later one, until
   * a new driver is set up on a reset device.
   */
  | "blk-needs-reset";

/**
 * The device broke the virtio-blk protocol (drivers distrust devices). Raised at construction
 * for a bad device or configuration, and as the rejection of the one request whose completion
 * was malformed; other requests are unaffected.
 */
export class BlkDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: BlkDeviceFaultCode;
  /** The offending value (used length, status byte, config field or DeviceID). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   */
  constructor(code: BlkDeviceFaultCode, message: string, value: number) {
    super(`${code}: ${message}`);
    this.code = code;
    this.value = value;
  }
}

/** Options of a {@link BlkDriver}. */
export interface BlkDriverOptions {
  /**
   * Guest address of the driver-owned ring area, {@link BlkDriver.ringBytes} bytes, 16-aligned:
   * descriptor table, available ring, used ring and (with indirect descriptors) the indirect
   * tables, in that order.
   */
  readonly ringBase: number;
  /** Queue size, a power of 2 up to the device's QueueNumMax (default min(128, QueueNumMax)). */
  readonly queueSize?: number;
  /** Data segments per request at most (default 16; also bounded by `seg_max`, queue size). */
  readonly maxSegments?: number;
  /** Whether to accept VIRTIO_F_INDIRECT_DESC when offered (default true). */
  readonly indirect?: boolean;
  /**
   * Whether to accept VIRTIO_F_EVENT_IDX when offered (default true). Without it, notification
   * suppression falls back to the flags words (`VIRTQ_AVAIL_F_NO_INTERRUPT`,
   * `VIRTQ_USED_F_NO_NOTIFY`), as with a device that does not offer it. @see VIRTIO 1.3 §2.7.10
   */
  readonly eventIdx?: boolean;
  /**
   * Whether to accept VIRTIO_F_RING_PACKED when offered (default true). The ring area has the
   * same size either way: the packed descriptor ring takes the descriptor table's place and the
   * two event suppression structures the available and used rings' places.
   */
  readonly packed?: boolean;
  /** Whether to accept VIRTIO_F_IN_ORDER when offered (default true). */
  readonly inOrder?: boolean;
}

/** The feature bits {@link BlkDriver} accepts when offered (§5.2.3). */
export const BLK_DRIVER_FEATURES: bigint = [
  BlkFeature.FLUSH,
  BlkFeature.BLK_SIZE,
  BlkFeature.SEG_MAX,
  BlkFeature.SIZE_MAX,
  BlkFeature.RO,
  BlkFeature.DISCARD,
  BlkFeature.WRITE_ZEROES,
  Feature.RING_EVENT_IDX,
  Feature.RING_INDIRECT_DESC,
  Feature.RING_PACKED,
  Feature.IN_ORDER,
].reduce((m, bit) => m | featureMask(bit), 0n);

const HDR_STATUS = 16;
const TWO_32 = 0x1_0000_0000;

/** A {@link Segment} the driver refills for each request (the queue copies it at `add`). */
interface MutableSegment {
  addr: number;
  len: number;
}

function noop(): void {}

/** `queueMicrotask` (in every browser and in Node; the ES2022 library does not declare it). */
const queueTask: (fn: () => void) => void = (
  globalThis as unknown as { queueMicrotask(fn: () => void): void }
).queueMicrotask.bind(globalThis);
const HDR_EXTRA = 32;

interface Request {
  readonly type: number;
  readonly sector: number;
  /** Readable payload written into the data slots (OUT) or into the header slot (ranges). */
  readonly out: Uint8Array | undefined;
  /** Where IN data goes (a caller-visible buffer). */
  readonly into: Uint8Array | undefined;
  /** Bytes of data (IN/OUT) or of the GET_ID response. */
  readonly length: number;
  /** Settles the caller's promise: with `into` for a single-part read, else undefined. */
  readonly resolve: (value: Uint8Array | undefined) => void;
  readonly reject: (e: unknown) => void;
  hdr: number;
  /** Data slots while on the ring ({@link NO_SLOTS} otherwise). */
  slots: number[];
  /** Index in the driver's list of requests on the ring, -1 when not on it. */
  live: number;
}

/**
 * Guest-side virtio-blk driver over a {@link DriverTransport} (virtio-mmio, virtio-pci,
 * vhost-user; VIRTIO 1.3 §5.2): negotiates features, reads the configuration, sets up request
 * queue 0 and serves `read`, `write`, `flush`, `discard`, `writeZeroes` and `getId` as promises,
 * many in flight. The ring is packed when the device offers VIRTIO_F_RING_PACKED (accepted by
 * default; `options.packed: false` declines it) and split otherwise (§2.7, §2.8); the ring area
 * at `options.ringBase` has the same size either way.
 *
 * Memory: rings live at `options.ringBase`; request headers, status bytes, ranges and data
 * bounce through `allocator` slots (one header slot per request plus data slots). A request
 * waits in a FIFO when descriptors or slots run out and is submitted, in order, as earlier ones
 * complete; nothing else is buffered.
 *
 * Completion: after notifying, the driver does nothing until {@link BlkDriver.poll} or
 * {@link BlkDriver.onInterrupt} is called; they reap used buffers, settle promises and submit
 * waiting requests.
 *
 * @example
 * ```ts
 * const blk = new BlkDriver(transport, memory, new SlabAllocator(0x40000, 4096, 64), { ringBase: 0x10000 });
 * const p = blk.read(0, 4096);
 * // ... the device runs, then the interrupt handler calls blk.onInterrupt()
 * const data = await p;
 * ```
 */
export class BlkDriver {
  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  /**
   * The slab as one view when it lies in one memory region (else undefined): request headers
   * and status bytes are this driver's own memory, written and read without a checked call each.
   */
  readonly #slabView: DataView | undefined;
  /** The ring area (rings and indirect tables): `[#areaStart, #areaEnd)`. */
  #areaStart = 0;
  #areaEnd = 0;
  readonly #q: DriverQueue<Request>;
  readonly #features: bigint;
  readonly #segLen: number;
  readonly #maxBytes: number;
  readonly #waiting: Request[] = [];
  /** `#complete` bound once, for `reapAll`. */
  readonly #onUsed = (req: Request, len: number): void => this.#complete(req, len);
  /** Requests on the ring, so a broken ring can reject them all (tokens are opaque to us). */
  readonly #live: Request[] = [];
  #broken: BlkDeviceFault | undefined;
  #waitHead = 0;
  #inFlight = 0;
  #capacity = 0n;
  /** `capacity` as a number when it is a safe integer (always, in practice), else -1. */
  #capacitySectors = -1;
  /** Scratch segment lists for `add` (it copies them into descriptors): no arrays per request. */
  readonly #readable: MutableSegment[] = [];
  readonly #writable: MutableSegment[] = [];
  readonly #segs: MutableSegment[] = [];
  #nSeg = 0;
  /** Entries of `#readable` / `#writable` filled for the request being started. */
  #nReadable = 0;
  #nWritable = 0;
  /** A kick is queued for the end of this task (see `#kick`). */
  #kickQueued = false;
  /** `max_discard_sectors` / `max_write_zeroes_sectors` (0 when not negotiated). */
  readonly #maxDiscard: number;
  readonly #maxZeroes: number;
  /** `write_zeroes_may_unmap` (re-read on a configuration change, §5.2.6). */
  #mayUnmap: boolean;
  readonly #blockSize: number;

  /**
   * Bytes of the ring area {@link BlkDriverOptions.ringBase} must point at.
   * @param queueSize - queue size
   * @param maxSegments - data segments per request (for the indirect tables)
   * @param indirect - whether indirect tables are reserved
   */
  static ringBytes(queueSize: number, maxSegments = 16, indirect = true): number {
    const end = ringAreaBytes(queueSize);
    return indirect ? end + indirectAreaSize(queueSize, Math.min(queueSize, maxSegments + 2)) : end;
  }

  /**
   * Initialise the device (§3.1.1 and §5.2.5): negotiate, read the configuration, set up
   * queue 0, set DRIVER_OK.
   *
   * @param transport - the device's transport (not yet initialised; it is reset)
   * @param memory - guest memory holding the rings and the allocator's region
   * @param allocator - slots for request headers, status bytes and data bounce buffers (at
   *   least 2 slots)
   * @param options - ring address, queue size, segment limit
   * @throws TransportError from negotiation / queue setup; BlkDeviceFault "blk-not-block" or
   *   "blk-bad-config" (FAILED is then set); RangeError naming an invalid option, or naming
   *   `allocator` / `options.ringBase` when the slots or the ring area are not inside guest
   *   memory (or overlap), with the address the memory must reach
   */
  constructor(
    transport: DriverTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: BlkDriverOptions,
  ) {
    if (allocator.slots < 2) {
      throw new RangeError(`allocator must have at least 2 slots, got ${allocator.slots}`);
    }
    checkAllocatorPlacement(memory, allocator);
    const maxSegOpt = options.maxSegments ?? 16;
    if (!Number.isInteger(maxSegOpt) || maxSegOpt < 1) {
      throw new RangeError(`options.maxSegments must be a positive integer, got ${maxSegOpt}`);
    }
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    this.#slabView = slabView(memory, allocator);
    const info = transport.probe();
    if (info.deviceId !== DeviceId.BLOCK) {
      throw new BlkDeviceFault("blk-not-block", `DeviceID is ${info.deviceId}`, info.deviceId);
    }
    let wanted = BLK_DRIVER_FEATURES;
    if (options.indirect === false) wanted &= ~featureMask(Feature.RING_INDIRECT_DESC);
    if (options.packed === false) wanted &= ~featureMask(Feature.RING_PACKED);
    if (options.inOrder === false) wanted &= ~featureMask(Feature.IN_ORDER);
    if (options.eventIdx === false) wanted &= ~featureMask(Feature.RING_EVENT_IDX);
    const f = transport.negotiate(wanted);
    this.#features = f;
    const cfg = transport.readConfig((c) => ({
      capacity: c.u64(BlkConfig.CAPACITY),
      sizeMax: hasFeature(f, BlkFeature.SIZE_MAX) ? c.u32(BlkConfig.SIZE_MAX) : 0,
      segMax: hasFeature(f, BlkFeature.SEG_MAX) ? c.u32(BlkConfig.SEG_MAX) : 0,
      blkSize: hasFeature(f, BlkFeature.BLK_SIZE) ? c.u32(BlkConfig.BLK_SIZE) : BLK_SECTOR_SIZE,
      maxDiscard: hasFeature(f, BlkFeature.DISCARD) ? c.u32(BlkConfig.MAX_DISCARD_SECTORS) : 0,
      maxZeroes: hasFeature(f, BlkFeature.WRITE_ZEROES)
        ? c.u32(BlkConfig.MAX_WRITE_ZEROES_SECTORS)
        : 0,
      mayUnmap: hasFeature(f, BlkFeature.WRITE_ZEROES)
        ? c.u8(BlkConfig.WRITE_ZEROES_MAY_UNMAP) !== 0
        : false,
    }));
    const bad = (msg: string, v: number): never => {
      transport.fail();
      throw new BlkDeviceFault("blk-bad-config", msg, v);
    };
    // A size_max of 0 with SIZE_MAX says nothing usable; like Linux, take it as no limit
    // (qemu-storage-daemon 7.2's vhost-user-blk export reports exactly that).
    const sizeMaxSet = hasFeature(f, BlkFeature.SIZE_MAX) && cfg.sizeMax !== 0;
    if (sizeMaxSet && cfg.sizeMax < BLK_SECTOR_SIZE) {
      bad("size_max is below 512", cfg.sizeMax);
    }
    if (cfg.blkSize < BLK_SECTOR_SIZE || (cfg.blkSize & (cfg.blkSize - 1)) !== 0) {
      bad("blk_size is not a power of 2 of at least 512", cfg.blkSize);
    }
    // §5.2.5: with DISCARD / WRITE_ZEROES the driver reads the per-request limits; a device that
    // offers the command with a limit of 0 sectors could never serve it.
    if (hasFeature(f, BlkFeature.DISCARD) && cfg.maxDiscard === 0) {
      bad("max_discard_sectors is 0 with VIRTIO_BLK_F_DISCARD", 0);
    }
    if (hasFeature(f, BlkFeature.WRITE_ZEROES) && cfg.maxZeroes === 0) {
      bad("max_write_zeroes_sectors is 0 with VIRTIO_BLK_F_WRITE_ZEROES", 0);
    }
    this.#setCapacity(cfg.capacity);
    this.#blockSize = cfg.blkSize;
    this.#maxDiscard = cfg.maxDiscard;
    this.#maxZeroes = cfg.maxZeroes;
    this.#mayUnmap = cfg.mayUnmap;

    const max = transport.queueMaxSize(0);
    const size = checkQueueSizeOption("options.queueSize", options.queueSize ?? Math.min(128, max));
    const indirect = hasFeature(f, Feature.RING_INDIRECT_DESC);
    // §5.2.5: with SEG_MAX the driver MUST NOT put more than seg_max data segments in a request.
    let segs = Math.min(maxSegOpt, size - 2, allocator.slots - 1);
    if (hasFeature(f, BlkFeature.SEG_MAX) && cfg.segMax > 0) segs = Math.min(segs, cfg.segMax);
    if (segs < 1) throw new RangeError(`options.queueSize ${size} leaves no data segment`);
    // §5.2.5: with SIZE_MAX no segment may exceed size_max. Segments are whole sectors.
    let segLen = allocator.slotSize;
    if (sizeMaxSet) segLen = Math.min(segLen, cfg.sizeMax);
    segLen -= segLen % BLK_SECTOR_SIZE;
    this.#segLen = segLen;
    this.#maxBytes = segLen * segs;
    if (segLen === 0) {
      throw new RangeError(`allocator.slotSize must be at least 512, got ${allocator.slotSize}`);
    }

    const base = options.ringBase;
    const end = base + ringAreaBytes(size);
    this.#areaStart = base;
    this.#areaEnd = base + BlkDriver.ringBytes(size, segs, indirect);
    checkRingPlacement(
      memory,
      allocator,
      base,
      BlkDriver.ringBytes(size, segs, indirect),
      `BlkDriver.ringBytes(${size}, ${segs}, ${indirect})`,
    );
    this.#q = transport.setupQueue<Request>(
      0,
      memory,
      ringLayoutAt(base, size),
      indirect ? { indirect: { addr: end, maxEntries: Math.min(size, segs + 2) } } : {},
    );
    transport.driverOk();
  }

  /** Disk size in 512-byte sectors (`capacity`, re-read on a configuration interrupt). */
  get capacity(): bigint {
    return this.#capacity;
  }

  /** `blk_size` when negotiated, else 512. Informational: requests are in 512-byte sectors. */
  get blockSize(): number {
    return this.#blockSize;
  }

  /** Whether the device is read-only (VIRTIO_BLK_F_RO negotiated): writes fail with IOERR. */
  get readOnly(): boolean {
    return hasFeature(this.#features, BlkFeature.RO);
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** Largest data length of one device request; longer `read` / `write` calls are split. */
  get maxTransferBytes(): number {
    return this.#maxBytes;
  }

  /** Requests submitted to the device and not yet reaped. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Requests waiting in the FIFO for descriptors or memory slots. */
  get waiting(): number {
    return this.#waiting.length - this.#waitHead;
  }

  /**
   * Read `length` bytes starting at `sector`.
   * @param sector - first 512-byte sector
   * @param length - bytes, a positive multiple of 512
   * @returns the data
   * @throws BlkStatusError (rejection) for IOERR / UNSUPP; BlkDeviceFault for a malformed
   *   completion; RangeError naming `sector` or `length`
   */
  read(sector: number, length: number): Promise<Uint8Array> {
    try {
      checkSector(sector);
      checkLength(length, "length");
      this.#checkCapacity(sector, length / BLK_SECTOR_SIZE);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#readParts(sector, new Uint8Array(length));
  }

  /**
   * Read `dst.length` bytes starting at `sector` into `dst` (the caller's buffer, reused across
   * requests: no allocation for the data). `dst` must not be read or written until the
   * promise settles; it is filled when the request completes. When `dst` is a view of this
   * driver's guest memory (`memory.slice(addr, len)`, writable, clear of the ring area and the
   * allocator's slots), the device writes it directly, with no copy through a bounce slot.
   * @param sector - first 512-byte sector
   * @param dst - where the data goes: a positive multiple of 512 bytes
   * @returns `dst`
   * @throws BlkStatusError (rejection) for IOERR / UNSUPP; BlkDeviceFault for a malformed
   *   completion; RangeError (rejection) naming `sector` or `dst.length`
   */
  readInto(sector: number, dst: Uint8Array): Promise<Uint8Array> {
    try {
      checkSector(sector);
      checkLength(dst.length, "dst.length");
      this.#checkCapacity(sector, dst.length / BLK_SECTOR_SIZE);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#readParts(sector, dst);
  }

  /** Submit the reads of `out` (one device request per `maxTransferBytes`); settles with `out`. */
  #readParts(sector: number, out: Uint8Array): Promise<Uint8Array> {
    const length = out.length;
    // One device request (the usual case): its promise settles with `out` itself.
    if (length <= this.#maxBytes) {
      return this.#submit(BlkRequestType.IN, sector, undefined, out, length) as Promise<Uint8Array>;
    }
    const parts: Promise<unknown>[] = [];
    for (let off = 0; off < length; off += this.#maxBytes) {
      const n = Math.min(this.#maxBytes, length - off);
      parts.push(
        this.#submit(
          BlkRequestType.IN,
          sector + off / BLK_SECTOR_SIZE,
          undefined,
          out.subarray(off, off + n),
          n,
        ),
      );
    }
    return Promise.all(parts).then(() => out);
  }

  /**
   * Write `data` starting at `sector`. The bytes are copied when the request is submitted,
   * so `data` must not change until the promise settles.
   * @param sector - first 512-byte sector
   * @param data - a positive multiple of 512 bytes
   * @throws BlkStatusError (rejection) for IOERR (e.g. read-only disk) / UNSUPP; RangeError
   *   naming `sector` or `data`
   */
  write(sector: number, data: Uint8Array): Promise<void> {
    try {
      checkSector(sector);
      checkLength(data.length, "data.length");
      this.#checkCapacity(sector, data.length / BLK_SECTOR_SIZE);
    } catch (e) {
      return Promise.reject(e);
    }
    if (data.length <= this.#maxBytes) {
      return this.#submit(
        BlkRequestType.OUT,
        sector,
        data,
        undefined,
        data.length,
      ) as Promise<void>;
    }
    const parts: Promise<unknown>[] = [];
    for (let off = 0; off < data.length; off += this.#maxBytes) {
      const n = Math.min(this.#maxBytes, data.length - off);
      parts.push(
        this.#submit(
          BlkRequestType.OUT,
          sector + off / BLK_SECTOR_SIZE,
          data.subarray(off, off + n),
          undefined,
          n,
        ),
      );
    }
    return Promise.all(parts).then(noop);
  }

  /**
   * Flush the device's write cache (§5.2.6). Without VIRTIO_BLK_F_FLUSH the device has no
   * volatile cache to flush, and this resolves at once.
   * @throws BlkStatusError (rejection) for IOERR
   */
  async flush(): Promise<void> {
    if (!hasFeature(this.#features, BlkFeature.FLUSH)) return;
    await this.#submit(BlkRequestType.FLUSH, 0, undefined, undefined, 0);
  }

  /**
   * Discard `count` sectors at `sector`: one single-range request per `max_discard_sectors`
   * (§5.2.5), all in flight at once.
   * @throws BlkStatusError UNSUPP (rejection, nothing sent) if DISCARD was not negotiated, or
   *   the device's IOERR / UNSUPP; RangeError naming `sector` or `count`
   */
  async discard(sector: number, count: number): Promise<void> {
    await this.#ranges(BlkRequestType.DISCARD, BlkFeature.DISCARD, sector, count, 0);
  }

  /**
   * Write zeroes to `count` sectors at `sector`: one single-range request per
   * `max_write_zeroes_sectors` (§5.2.5), all in flight at once. `unmap` lets the device
   * deallocate; it is sent only while the device reports `write_zeroes_may_unmap`.
   * @throws BlkStatusError UNSUPP (rejection, nothing sent) if WRITE_ZEROES was not
   *   negotiated, or the device's IOERR / UNSUPP; RangeError naming `sector` or `count`
   */
  async writeZeroes(sector: number, count: number, unmap = false): Promise<void> {
    await this.#ranges(
      BlkRequestType.WRITE_ZEROES,
      BlkFeature.WRITE_ZEROES,
      sector,
      count,
      unmap && this.#mayUnmap ? BlkDiscardWriteZeroes.FLAG_UNMAP : 0,
    );
  }

  /**
   * The device ID string (GET_ID, §5.2.6): up to 20 bytes, cut at the first NUL. Bytes are
   * decoded as Latin-1, so any device output maps to a string.
   * @throws BlkStatusError (rejection) for IOERR / UNSUPP
   */
  async getId(): Promise<string> {
    const buf = new Uint8Array(BLK_ID_BYTES);
    await this.#submit(BlkRequestType.GET_ID, 0, undefined, buf, BLK_ID_BYTES);
    let n = buf.indexOf(0);
    if (n < 0) n = BLK_ID_BYTES;
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(buf[i] as number);
    return s;
  }

  /**
   * Reap every used buffer, settle its promise, then submit waiting requests.
   * @returns the number of requests completed
   * @throws RingError from the queue if the device corrupted the used ring
   */
  poll(): number {
    if (this.#broken !== undefined) return 0;
    let done = 0;
    const q = this.#q;
    try {
      done = reapAll(q, this.#onUsed);
    } catch (e) {
      // A device that corrupts the used ring: never throw out of the driver's loop; fail
      // everything that depends on this ring instead (drivers distrust devices).
      if (!(e instanceof VirtioError)) throw e;
      this.#breakRing(e);
      return done;
    }
    if (done > 0) this.#drain();
    return done;
  }

  /** Reject every request on the ring or waiting for it, and every later one. */
  #breakRing(cause: VirtioError): void {
    this.#fail(
      new BlkDeviceFault("blk-ring-broken", `the device broke the ring: ${cause.message}`, 0),
    );
  }

  /**
   * §5.2.6.1: the driver MUST NOT submit a request that would read or write beyond `capacity`.
   * @throws RangeError naming `sector` when `sector + sectors` passes the capacity
   */
  #checkCapacity(sector: number, sectors: number): void {
    const n = this.#capacitySectors;
    // Exact: sector and n are safe integers, so n - sector is too.
    if (n >= 0 ? sectors <= n - sector : BigInt(sector) + BigInt(sectors) <= this.#capacity) return;
    {
      const cap = this.#capacity;
      throw new RangeError(
        `sector ${sector} + ${sectors} sectors passes the disk's capacity of ${cap} sectors (§5.2.6.1)`,
      );
    }
  }

  #setCapacity(cap: bigint): void {
    this.#capacity = cap;
    this.#capacitySectors = cap <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(cap) : -1;
  }

  /** Reject every request on the ring or waiting for it with `fault`, and every later one. */
  #fail(fault: BlkDeviceFault): void {
    this.#broken = fault;
    const victims = [...this.#live, ...this.#waiting.slice(this.#waitHead)];
    this.#live.length = 0;
    this.#waiting.length = 0;
    this.#waitHead = 0;
    this.#inFlight = 0;
    for (const req of victims) req.reject(fault);
  }

  /**
   * Interrupt handler: acknowledge InterruptStatus, re-read `capacity` on a configuration
   * change (§5.2.6: the device may resize), then {@link BlkDriver.poll}.
   * @returns the number of requests completed
   */
  onInterrupt(): number {
    const s = this.#t.takeInterrupt();
    if ((s & MmioInterrupt.CONFIG) !== 0) {
      // §2.1.2: a device that sets DEVICE_NEEDS_RESET sends a configuration change notification;
      // its queues may hold anything, so nothing more is reaped from them.
      if (this.#broken === undefined && this.#t.needsReset) {
        this.#fail(
          new BlkDeviceFault(
            "blk-needs-reset",
            "the device set DEVICE_NEEDS_RESET; reset it and set up a new driver",
            this.#t.status,
          ),
        );
        return 0;
      }
      const c = this.#t.readConfig((c) => ({
        capacity: c.u64(BlkConfig.CAPACITY),
        mayUnmap: hasFeature(this.#features, BlkFeature.WRITE_ZEROES)
          ? c.u8(BlkConfig.WRITE_ZEROES_MAY_UNMAP) !== 0
          : false,
      }));
      this.#setCapacity(c.capacity);
      this.#mayUnmap = c.mayUnmap;
    }
    return this.poll();
  }

  #ranges(
    type: number,
    feature: number,
    sector: number,
    count: number,
    flags: number,
  ): Promise<void> {
    checkSector(sector);
    if (!Number.isSafeInteger(count) || count < 1 || !Number.isSafeInteger(sector + count)) {
      throw new RangeError(
        `count must be a positive integer with sector + count safe, got ${count}`,
      );
    }
    if (!hasFeature(this.#features, feature)) {
      return Promise.reject(new BlkStatusError(BlkStatus.UNSUPP, type, sector));
    }
    this.#checkCapacity(sector, count);
    const max = type === BlkRequestType.DISCARD ? this.#maxDiscard : this.#maxZeroes;
    if (count <= max) return this.#range(type, sector, count, flags);
    const parts: Promise<void>[] = [];
    for (let at = sector, left = count; left > 0; ) {
      const n = Math.min(left, max);
      parts.push(this.#range(type, at, n, flags));
      at += n;
      left -= n;
    }
    return Promise.all(parts).then(() => undefined);
  }

  /** One single-range DISCARD / WRITE_ZEROES request (§5.2.6: `virtio_blk_discard_write_zeroes`). */
  #range(type: number, sector: number, count: number, flags: number): Promise<void> {
    // Settles with undefined (only reads settle with their buffer).
    const r = new Uint8Array(BlkDiscardWriteZeroes.SIZE);
    const v = new DataView(r.buffer);
    v.setBigUint64(BlkDiscardWriteZeroes.SECTOR, BigInt(sector), true);
    v.setUint32(BlkDiscardWriteZeroes.NUM_SECTORS, count, true);
    v.setUint32(BlkDiscardWriteZeroes.FLAGS, flags, true);
    return this.#submit(type, sector, r, undefined, 0) as Promise<void>;
  }

  #submit(
    type: number,
    sector: number,
    out: Uint8Array | undefined,
    into: Uint8Array | undefined,
    length: number,
  ): Promise<Uint8Array | undefined> {
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    return new Promise<Uint8Array | undefined>((resolve, reject) => {
      const req: Request = {
        type,
        sector,
        out,
        into,
        length,
        resolve,
        reject,
        hdr: -1,
        slots: NO_SLOTS,
        live: -1,
      };
      // Strict FIFO: nothing overtakes a waiting request.
      if (this.waiting > 0 || !this.#start(req)) this.#waiting.push(req);
      else this.#kick();
    });
  }

  /** Try to put `req` on the ring. Returns false (nothing held) if resources are short. */
  #start(req: Request): boolean {
    const dataBased = req.type === BlkRequestType.IN || req.type === BlkRequestType.OUT;
    // A read into a buffer that is already guest memory goes there directly: the device writes
    // the caller's bytes, as a real driver's reads land in the guest's own pages (no bounce).
    const direct =
      req.type === BlkRequestType.IN && req.into !== undefined ? this.#directAddress(req.into) : -1;
    const nSlots = 1 + (dataBased && direct < 0 ? Math.ceil(req.length / this.#slab.slotSize) : 0);
    if (this.#slab.available < nSlots) return false;
    const mem = this.#mem;
    const hdr = this.#slab.alloc() as number;
    // le64 sector as two le32 halves (sector is a safe integer): no BigInt per request. The
    // status byte gets a value the device must overwrite: a completion that leaves it is caught
    // in #complete.
    const lo = req.sector % TWO_32;
    const hi = Math.floor(req.sector / TWO_32);
    const v = this.#slabView;
    if (v !== undefined) {
      const o = hdr - this.#slab.base;
      v.setUint32(o + BlkOutHdr.TYPE, req.type, true);
      v.setUint32(o + BlkOutHdr.IOPRIO, 0, true);
      v.setUint32(o + BlkOutHdr.SECTOR, lo, true);
      v.setUint32(o + BlkOutHdr.SECTOR + 4, hi, true);
      v.setUint8(o + HDR_STATUS, 0xff);
    } else {
      mem.writeU32(hdr + BlkOutHdr.TYPE, req.type);
      mem.writeU32(hdr + BlkOutHdr.IOPRIO, 0);
      mem.writeU32(hdr + BlkOutHdr.SECTOR, lo);
      mem.writeU32(hdr + BlkOutHdr.SECTOR + 4, hi);
      mem.writeU8(hdr + HDR_STATUS, 0xff);
    }
    const readable = this.#readable;
    const writable = this.#writable;
    this.#nSeg = 0;
    this.#nReadable = 0;
    this.#nWritable = 0;
    this.#seg(readable, hdr, BlkOutHdr.SIZE);
    if (direct >= 0) {
      // §5.2.5: segments of at most size_max, and at most seg_max of them (length ≤ #maxBytes).
      for (let s = 0; s < req.length; s += this.#segLen) {
        this.#seg(writable, direct + s, Math.min(this.#segLen, req.length - s));
      }
    } else if (dataBased) {
      const data = req.type === BlkRequestType.OUT ? readable : writable;
      let left = req.length;
      let off = 0;
      const slots: number[] = [];
      req.slots = slots;
      while (left > 0) {
        const slot = this.#slab.alloc() as number;
        slots.push(slot);
        const inSlot = Math.min(left, this.#slab.slotSize);
        if (req.out !== undefined) {
          mem.write(
            slot,
            inSlot === req.out.length ? req.out : req.out.subarray(off, off + inSlot),
          );
        }
        for (let s = 0; s < inSlot; s += this.#segLen) {
          this.#seg(data, slot + s, Math.min(this.#segLen, inSlot - s));
        }
        left -= inSlot;
        off += inSlot;
      }
    } else if (req.out !== undefined) {
      mem.write(hdr + HDR_EXTRA, req.out);
      this.#seg(readable, hdr + HDR_EXTRA, req.out.length);
    } else if (req.length > 0) {
      this.#seg(writable, hdr + HDR_EXTRA, req.length);
    }
    // §5.2.6: the status byte is the last device-writable byte.
    this.#seg(writable, hdr + HDR_STATUS, 1);
    // The scratch lists keep their length from request to request (usually the same): only a
    // change pays the `length` setter.
    if (readable.length !== this.#nReadable) readable.length = this.#nReadable;
    if (writable.length !== this.#nWritable) writable.length = this.#nWritable;
    req.hdr = hdr;
    if (!this.#q.add(readable, writable, req)) {
      this.#release(req);
      return false;
    }
    this.#inFlight++;
    // Swap-remove list (no hashing per request): req.live is its index.
    req.live = this.#live.length;
    this.#live.push(req);
    return true;
  }

  /**
   * The guest address of `view` if the device may write it directly: inside guest memory,
   * writable, and clear of this driver's ring area and slab. Else -1 (the read bounces).
   */
  #directAddress(view: Uint8Array): number {
    const gpa = this.#mem.addressOf?.(view);
    if (gpa === undefined) return -1;
    const len = view.length;
    const slab = this.#slab;
    if (
      !this.#mem.check(gpa, len, "write") ||
      (gpa < this.#areaEnd && this.#areaStart < gpa + len) ||
      (gpa < slab.base + slab.byteLength && slab.base < gpa + len)
    ) {
      return -1;
    }
    return gpa;
  }

  /** Append a segment to `list`, reusing the driver's scratch objects. */
  #seg(list: MutableSegment[], addr: number, len: number): void {
    let s = this.#segs[this.#nSeg];
    if (s === undefined) {
      s = { addr: 0, len: 0 };
      this.#segs.push(s);
    }
    this.#nSeg++;
    s.addr = addr;
    s.len = len;
    if (list === this.#readable) list[this.#nReadable++] = s;
    else list[this.#nWritable++] = s;
  }

  #release(req: Request): void {
    if (req.hdr >= 0) this.#slab.free(req.hdr);
    const slots = req.slots;
    req.hdr = -1;
    req.slots = NO_SLOTS;
    for (let i = 0; i < slots.length; i++) this.#slab.free(slots[i]!);
  }

  /**
   * Publish at once (the request is on the ring when `read` / `write` returns), but notify the
   * device once for every request started in this task: the first publish that needs a kick
   * queues a microtask that runs after the others (Linux's block plug). With EVENT_IDX the
   * requests published after it need none (§2.7.10: the device has not moved avail_event yet),
   * so a queue of requests issued together (32 lanes continuing after one interrupt) costs one
   * kick. A late kick after a reset is a spurious notification, which a device tolerates
   * (§2.3).
   */
  #kick(): void {
    if (!this.#q.publish() || this.#kickQueued) return;
    this.#kickQueued = true;
    queueTask(this.#notify);
  }

  readonly #notify = (): void => {
    this.#kickQueued = false;
    if (this.#broken !== undefined) return;
    this.#t.notify(0);
  };

  #drain(): void {
    let started = false;
    const w = this.#waiting;
    while (this.#waitHead < w.length) {
      const req = w[this.#waitHead] as Request;
      if (!this.#start(req)) break;
      w[this.#waitHead++] = undefined as unknown as Request;
      started = true;
    }
    if (this.#waitHead === w.length) {
      w.length = 0;
      this.#waitHead = 0;
    } else if (this.#waitHead > 1024 && this.#waitHead * 2 > w.length) {
      w.splice(0, this.#waitHead);
      this.#waitHead = 0;
    }
    if (started) this.#kick();
  }

  #complete(req: Request, len: number): void {
    this.#inFlight--;
    const live = this.#live;
    const last = live.pop()!;
    if (last !== req) {
      live[req.live] = last;
      last.live = req.live;
    }
    req.live = -1;
    const mem = this.#mem;
    try {
      // Distrust the device: the used length must reach the status byte (§5.2.6 layout).
      const need = (req.into !== undefined ? req.length : 0) + 1;
      if (len < 1) {
        throw new BlkDeviceFault("blk-short-used", "used length does not cover the status", len);
      }
      const v = this.#slabView;
      const status =
        v !== undefined
          ? v.getUint8(req.hdr - this.#slab.base + HDR_STATUS)
          : mem.readU8(req.hdr + HDR_STATUS);
      if (status === BlkStatus.IOERR || status === BlkStatus.UNSUPP) {
        throw new BlkStatusError(status, req.type, req.sector);
      }
      if (status !== BlkStatus.OK) {
        throw new BlkDeviceFault("blk-bad-status", `status byte is ${status}`, status);
      }
      if (len < need && req.type === BlkRequestType.IN) {
        throw new BlkDeviceFault("blk-short-used", `IN used length ${len} < ${need}`, len);
      }
      if (req.into !== undefined) {
        if (req.type === BlkRequestType.GET_ID) {
          mem.read(req.hdr + HDR_EXTRA, req.into);
        } else if (req.slots.length === 1 && req.into.length === req.length) {
          mem.read(req.slots[0]!, req.into);
        } else {
          // Bounced through several slots (none for a read the device wrote directly). Indexed
          // loops here and in #release: NO_SLOTS is frozen, and V8 iterates a frozen array with
          // `for...of` through the generic iterator protocol.
          const slots = req.slots;
          let off = 0;
          for (let i = 0; i < slots.length; i++) {
            const n = Math.min(this.#slab.slotSize, req.length - off);
            mem.read(slots[i]!, req.into.subarray(off, off + n));
            off += n;
          }
        }
      }
      this.#release(req);
      // A single-part read settles with its buffer (BlkDriver.read returns it as is).
      req.resolve(req.type === BlkRequestType.IN ? req.into : undefined);
    } catch (e) {
      this.#release(req);
      req.reject(e);
    }
  }
}

/** The `slots` of a request holding none: shared and frozen, so a stray push throws. */
const NO_SLOTS = Object.freeze([]) as unknown as number[];

function checkSector(sector: number): void {
  if (!Number.isSafeInteger(sector) || sector < 0) {
    throw new RangeError(`sector must be a non-negative safe integer, got ${sector}`);
  }
}

function checkLength(n: number, name: string): void {
  if (!Number.isSafeInteger(n) || n <= 0 || n % BLK_SECTOR_SIZE !== 0) {
    throw new RangeError(`${name} must be a positive multiple of 512, got ${n}`);
  }
}

/**
 * The allocator's whole area as one view, or undefined if it spans memory regions or the memory
 * is not a plain {@link GuestMemoryMap} (a wasm memory's buffer can be replaced, a translated
 * memory's mapping can change: there every access goes through the memory's own calls).
 */
function slabView(memory: GuestMemory, allocator: SlabAllocator): DataView | undefined {
  if (!(memory instanceof GuestMemoryMap)) return undefined;
  try {
    return memory.dataView(allocator.base, allocator.byteLength, "write");
  } catch (e) {
    if (e instanceof GuestMemoryError) return undefined;
    throw e;
  }
}
