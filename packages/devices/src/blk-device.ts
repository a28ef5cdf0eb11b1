import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
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
} from "@virtio-ts/spec";
import type { DeviceContext, DeviceModel } from "@virtio-ts/transport";
import { checkQueueSizeOption, DescriptorChain } from "@virtio-ts/virtqueue";
import type { BlockBackend } from "./blk-backend.js";

/** A virtio-blk request type parsed from the guest's `type` field, with an unknown arm. */
export type BlkRequestKind =
  | {
      /** VIRTIO_BLK_T_IN: read sectors into the writable data. */
      readonly kind: "in";
    }
  | {
      /** VIRTIO_BLK_T_OUT: write the readable data to sectors. */
      readonly kind: "out";
    }
  | {
      /** VIRTIO_BLK_T_FLUSH: make completed writes durable. */
      readonly kind: "flush";
    }
  | {
      /** VIRTIO_BLK_T_GET_ID: return the 20-byte device ID string. */
      readonly kind: "get-id";
    }
  | {
      /** VIRTIO_BLK_T_DISCARD: discard the ranges that follow the header. */
      readonly kind: "discard";
    }
  | {
      /** VIRTIO_BLK_T_WRITE_ZEROES: zero the ranges that follow the header. */
      readonly kind: "write-zeroes";
    }
  | {
      /** Any other value: completed with VIRTIO_BLK_S_UNSUPP. */
      readonly kind: "unsupported";
      /** The value the guest wrote. */
      readonly raw: number;
    };

const KIND_IN = { kind: "in" } as const;
const KIND_OUT = { kind: "out" } as const;
const KIND_FLUSH = { kind: "flush" } as const;
const KIND_GET_ID = { kind: "get-id" } as const;
const KIND_DISCARD = { kind: "discard" } as const;
const KIND_WRITE_ZEROES = { kind: "write-zeroes" } as const;

/**
 * Parse the untrusted `virtio_blk_req.type` field. Known kinds are shared constant objects (no
 * allocation); anything else, including GET_LIFETIME and SECURE_ERASE which this device does
 * not implement, is `{ kind: "unsupported", raw }`.
 * @param raw - the little-endian u32 the guest wrote
 * @see VIRTIO 1.3 §5.2.6
 */
export function parseBlkRequestType(raw: number): BlkRequestKind {
  switch (raw) {
    case BlkRequestType.IN:
      return KIND_IN;
    case BlkRequestType.OUT:
      return KIND_OUT;
    case BlkRequestType.FLUSH:
      return KIND_FLUSH;
    case BlkRequestType.GET_ID:
      return KIND_GET_ID;
    case BlkRequestType.DISCARD:
      return KIND_DISCARD;
    case BlkRequestType.WRITE_ZEROES:
      return KIND_WRITE_ZEROES;
    default:
      return { kind: "unsupported", raw: raw >>> 0 };
  }
}

/** Why a virtio-blk request chain could not be parsed. */
export type BlkGuestRequestErrorCode =
  /** No device-writable byte for the status: nothing can be reported, used length 0. */
  | "blk-no-status"
  /** Fewer than 16 readable bytes for `struct virtio_blk_outhdr`: status IOERR. */
  | "blk-short-header"
  /** DISCARD / WRITE_ZEROES payload not a whole number of 16-byte ranges: status IOERR. */
  | "blk-bad-ranges";

/**
 * One virtio-blk request is malformed (a guest fault the device survives). It is reported
 * through `ctx.noteFault`, never thrown to the VMM: the request completes with IOERR when it has
 * a status byte, or with used length 0 when it has none, and the device keeps serving.
 */
export class BlkGuestRequestError extends VirtioError {
  /** @inheritdoc */
  readonly code: BlkGuestRequestErrorCode;
  /** The chain's id (split: head descriptor index; packed: buffer ID). */
  readonly head: number;
  /** Device-readable bytes in the chain (guest-controlled). */
  readonly readableBytes: number;
  /** Device-writable bytes in the chain (guest-controlled). */
  readonly writableBytes: number;

  /**
   * @param code - what is wrong
   * @param head - chain id
   * @param readableBytes - readable bytes of the chain
   * @param writableBytes - writable bytes of the chain
   */
  constructor(
    code: BlkGuestRequestErrorCode,
    head: number,
    readableBytes: number,
    writableBytes: number,
  ) {
    super(
      `virtio-blk request ${code} (chain ${head}, ${readableBytes} readable, ${writableBytes} writable bytes)`,
    );
    this.code = code;
    this.head = head;
    this.readableBytes = readableBytes;
    this.writableBytes = writableBytes;
  }
}

/** Options of a {@link BlkDevice}. */
export interface BlkDeviceOptions {
  /** Maximum size of the request queue (a power of 2, 2 to 32768). Default 256. */
  readonly queueSize?: number;
  /** Device ID string returned by GET_ID: ASCII, at most 20 bytes. Default "" (all NUL). */
  readonly serial?: string;
  /** `size_max`: largest segment the driver may use, in bytes. Default 1 MiB. */
  readonly sizeMax?: number;
  /** `max_discard_sectors` (default 2^22, 2 GiB) and `max_write_zeroes_sectors` (same). */
  readonly maxDiscardSectors?: number;
  /** `max_write_zeroes_sectors`. Default 2^22. */
  readonly maxWriteZeroesSectors?: number;
  /** `max_discard_seg` and `max_write_zeroes_seg`: ranges per request (1 to 256). Default 16. */
  readonly maxRanges?: number;
  /**
   * Request queues (1 to 64). More than one offers VIRTIO_BLK_F_MQ with `num_queues`; each queue
   * is served independently (its own request slots, its own resets). Default 1.
   */
  readonly numQueues?: number;
  /** `opt_io_size` of VIRTIO_BLK_F_TOPOLOGY, in logical blocks (0 = no preference). Default 0. */
  readonly optimalIoBlocks?: number;
}

/** Counters of a {@link BlkDevice} (mutated in place). */
export interface BlkDeviceStats {
  /** Requests popped from the queue. */
  requests: number;
  /** Requests completed with VIRTIO_BLK_S_OK. */
  ok: number;
  /** Requests completed with VIRTIO_BLK_S_IOERR (bad range, read-only, malformed, back-end). */
  ioErrors: number;
  /** Requests completed with VIRTIO_BLK_S_UNSUPP. */
  unsupported: number;
  /** Malformed chains (also reported through `ctx.noteFault`). */
  malformed: number;
  /** Back-end promises that rejected. */
  backendErrors: number;
  /** Completions dropped because the device or queue was reset meanwhile. */
  stale: number;
}

const HDR = BlkOutHdr.SIZE;
const RANGE = BlkDiscardWriteZeroes.SIZE;
const SECTOR_SHIFT_DIV = BLK_SECTOR_SIZE;
const TWO_32 = 0x1_0000_0000;
/** Back-end operations of `#call`. */
const OP_READ = 0;
const OP_WRITE = 1;
const OP_FLUSH = 2;

/**
 * One in-flight request: a reusable chain cursor plus everything needed to finish it. Slots are
 * created when the queue is enabled (as many as the queue size), so a request allocates only
 * its back-end promise and the `sg` view arrays.
 */
class Slot {
  readonly chain: DescriptorChain;
  readonly header = new Uint8Array(HDR);
  readonly range = new Uint8Array(RANGE);
  readonly iov: Uint8Array[] = [];
  readonly tmp: Uint8Array[] = [];
  /** Copied ranges (sector, count, flags) of a DISCARD / WRITE_ZEROES request. */
  readonly ranges: Float64Array;
  rangeCount = 0;
  rangeNext = 0;
  zeroes = false;
  statusAddr = 0;
  written = 0;
  /** The request queue this slot serves. */
  queue = 0;
  /** Settlement callbacks, bound once per slot by the device (no closure per request). */
  onOk: () => void = noop;
  onErr: (e: unknown) => void = noop;
  onRange: () => void = noop;

  constructor(size: number, maxRanges: number) {
    this.chain = new DescriptorChain(size);
    this.ranges = new Float64Array(maxRanges * 3);
  }
}

/**
 * The virtio-blk device model (VIRTIO 1.3 §5.2): request queues (one, or `numQueues` with MQ) whose chains are
 * `struct virtio_blk_req` — a 16-byte readable header (`type`, `reserved`, `sector`), the data,
 * and a one-byte writable status as the very last byte — served by a {@link BlockBackend}.
 *
 * Offered features: SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH, TOPOLOGY, MQ (with `numQueues` > 1), and either RO (read-only back-end) or
 * DISCARD + WRITE_ZEROES (writable back-end); ring features INDIRECT_DESC, EVENT_IDX,
 * RING_PACKED and RING_RESET. Not IN_ORDER: requests complete out of order.
 *
 * Requests run asynchronously: each popped chain takes a slot from a pool sized by the queue
 * size (no honest driver can have more chains outstanding), calls the back-end, and on
 * settlement writes the status byte, pushes the chain used and calls `ctx.signalUsed`. A
 * completion after a device or queue reset is dropped (its buffers belong to nobody now); a
 * back-end cannot be cancelled, so a read may still land in guest memory after a reset.
 *
 * Status rules (§5.2.6.2): IN/OUT whose data length is not a multiple of 512 or whose range
 * passes `capacity` → IOERR; OUT, DISCARD or WRITE_ZEROES on a read-only device → IOERR; an
 * unknown type, or DISCARD / WRITE_ZEROES when not negotiated → UNSUPP; DISCARD with the unmap
 * flag or any range with an unknown flag → UNSUPP; more ranges than `max_*_seg` → UNSUPP;
 * a range longer than `max_*_sectors` or past `capacity` → IOERR; back-end rejection → IOERR.
 *
 * Malformed chains (guest faults, counted with `ctx.noteFault`, device keeps running): no
 * writable byte for the status → used with length 0 (nothing can be reported); fewer than 16
 * readable header bytes → IOERR. A hostile *ring* (a `ChainError` / `RingError` from `pop`)
 * puts the device into DEVICE_NEEDS_RESET through the core.
 *
 * Suspend / resume: no `saveState` — the driver changes nothing in the device (no
 * CONFIG_WCE) and the requests in flight move with the core's queue state, served again at
 * the destination. What must move besides is the disk: the source's {@link BlkDevice.whenIdle}
 * (awaited by `core.abandon()`), then the back-end flushed and copied or shared.
 *
 * @example
 * ```ts
 * const device = new MmioDevice(new BlkDevice(backend, { serial: "disk0" }), { memory });
 * ```
 */
export class BlkDevice implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId = DeviceId.BLOCK;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize = BlkConfig.SIZE;
  /** The back-end requests are delegated to. */
  readonly backend: BlockBackend;
  /** Counters. */
  readonly stats: BlkDeviceStats = {
    requests: 0,
    ok: 0,
    ioErrors: 0,
    unsupported: 0,
    malformed: 0,
    backendErrors: 0,
    stale: 0,
  };
  /** The last back-end rejection, for diagnostics. */
  lastBackendError: unknown = undefined;

  readonly #config = new Uint8Array(BlkConfig.SIZE);
  readonly #cfg = new DataView(this.#config.buffer);
  readonly #id = new Uint8Array(BLK_ID_BYTES);
  #capacity: number;
  readonly #readOnly: boolean;
  readonly #maxRanges: number;
  readonly #maxDiscard: number;
  readonly #maxZeroes: number;
  #ctx: DeviceContext | undefined = undefined;
  /** Free request slots, per queue. */
  #free: Slot[][];
  #inFlight = 0;
  /** Per queue: bumped by a device or queue reset, so older completions are dropped. */
  readonly #gens: number[];
  #idle: (() => void)[] = [];
  /** Arguments of `#finishDone`, passed in fields so a completion allocates no closure. */
  #doneCtx: DeviceContext | undefined = undefined;
  #doneSlot: Slot | undefined = undefined;
  #doneStatus = 0;
  /** Bound once: finish the completion described by the `#done*` fields, under `ctx.guard`. */
  readonly #finishDone = (): void => {
    const ctx = this.#doneCtx;
    const slot = this.#doneSlot;
    this.#doneCtx = undefined;
    this.#doneSlot = undefined;
    if (ctx === undefined || slot === undefined) return;
    this.#finish(ctx, slot, this.#doneStatus);
    ctx.signalUsed(slot.queue);
    // A slot is free again: take chains left waiting when the pool was exhausted.
    this.#drain(slot.queue);
  };

  /**
   * @param backend - the storage
   * @param options - queue size, serial, limits
   * @throws RangeError naming `backend.capacity`, `backend.blockSize` or the bad option
   */
  constructor(backend: BlockBackend, options: BlkDeviceOptions = {}) {
    const capacity = backend.capacity;
    if (!Number.isSafeInteger(capacity) || capacity < 0) {
      throw new RangeError(`backend.capacity must be a non-negative safe integer, got ${capacity}`);
    }
    const bs = backend.blockSize;
    if (!Number.isInteger(bs) || bs < 512 || bs > 0x8000_0000 || (bs & (bs - 1)) !== 0) {
      throw new RangeError(`backend.blockSize must be a power of 2 of at least 512, got ${bs}`);
    }
    const qs = checkQueueSizeOption("options.queueSize", options.queueSize ?? 256);
    const sizeMax = checkU32("options.sizeMax", options.sizeMax ?? 1 << 20, 1);
    const maxRanges = checkU32("options.maxRanges", options.maxRanges ?? 16, 1);
    if (maxRanges > 256)
      throw new RangeError(`options.maxRanges must be at most 256, got ${maxRanges}`);
    this.#maxDiscard = checkU32(
      "options.maxDiscardSectors",
      options.maxDiscardSectors ?? 1 << 22,
      1,
    );
    this.#maxZeroes = checkU32(
      "options.maxWriteZeroesSectors",
      options.maxWriteZeroesSectors ?? 1 << 22,
      1,
    );
    const serial = options.serial ?? "";
    // biome-ignore lint/suspicious/noControlCharactersInRegex: ASCII range check
    if (serial.length > BLK_ID_BYTES || !/^[\x00-\x7f]*$/.test(serial)) {
      throw new RangeError(`options.serial must be at most 20 ASCII characters, got "${serial}"`);
    }
    for (let i = 0; i < serial.length; i++) this.#id[i] = serial.charCodeAt(i);

    this.backend = backend;
    this.#capacity = capacity;
    this.#readOnly = backend.readOnly;
    this.#maxRanges = maxRanges;
    const nq = options.numQueues ?? 1;
    if (!Number.isInteger(nq) || nq < 1 || nq > 64) {
      throw new RangeError(`options.numQueues must be an integer in [1, 64], got ${nq}`);
    }
    const opt = options.optimalIoBlocks ?? 0;
    if (!Number.isInteger(opt) || opt < 0 || opt > 0xffff_ffff) {
      throw new RangeError(`options.optimalIoBlocks must be an integer in [0, 2^32), got ${opt}`);
    }
    this.queueMaxSizes = new Array<number>(nq).fill(qs);
    this.#free = Array.from({ length: nq }, () => []);
    this.#gens = new Array<number>(nq).fill(0);

    let f = [
      BlkFeature.SIZE_MAX,
      BlkFeature.SEG_MAX,
      BlkFeature.BLK_SIZE,
      BlkFeature.FLUSH,
      BlkFeature.TOPOLOGY,
      Feature.RING_INDIRECT_DESC,
      Feature.RING_EVENT_IDX,
      Feature.RING_PACKED,
      Feature.RING_RESET,
    ].reduce((m, bit) => m | featureMask(bit), 0n);
    if (nq > 1) f |= featureMask(BlkFeature.MQ);
    if (this.#readOnly) f |= featureMask(BlkFeature.RO);
    else f |= featureMask(BlkFeature.DISCARD) | featureMask(BlkFeature.WRITE_ZEROES);
    this.features = f;

    // §5.2.4: the configuration layout; fields of features not offered stay 0.
    const c = this.#cfg;
    c.setUint32(BlkConfig.CAPACITY, capacity % TWO_32, true);
    c.setUint32(BlkConfig.CAPACITY + 4, Math.floor(capacity / TWO_32), true);
    c.setUint32(BlkConfig.SIZE_MAX, sizeMax, true);
    // Two descriptors go to the header and the status (as Linux and QEMU count seg_max).
    c.setUint32(BlkConfig.SEG_MAX, qs - 2, true);
    c.setUint32(BlkConfig.BLK_SIZE, bs, true);
    // §5.2.4 TOPOLOGY: logical blocks of 512 bytes per physical block (`blk_size`) as a power of
    // 2, no misalignment, the physical block as the minimum I/O size (in logical blocks).
    c.setUint8(BlkConfig.PHYSICAL_BLOCK_EXP, Math.log2(bs / BLK_SECTOR_SIZE));
    c.setUint8(BlkConfig.ALIGNMENT_OFFSET, 0);
    c.setUint16(BlkConfig.MIN_IO_SIZE, bs / BLK_SECTOR_SIZE, true);
    c.setUint32(BlkConfig.OPT_IO_SIZE, opt, true);
    c.setUint16(BlkConfig.NUM_QUEUES, nq, true);
    if (!this.#readOnly) {
      c.setUint32(BlkConfig.MAX_DISCARD_SECTORS, this.#maxDiscard, true);
      c.setUint32(BlkConfig.MAX_DISCARD_SEG, maxRanges, true);
      c.setUint32(BlkConfig.DISCARD_SECTOR_ALIGNMENT, bs / BLK_SECTOR_SIZE, true);
      c.setUint32(BlkConfig.MAX_WRITE_ZEROES_SECTORS, this.#maxZeroes, true);
      c.setUint32(BlkConfig.MAX_WRITE_ZEROES_SEG, maxRanges, true);
      c.setUint8(BlkConfig.WRITE_ZEROES_MAY_UNMAP, 1);
    }
  }

  /** `capacity` in 512-byte sectors, as the configuration space shows it now. */
  get capacity(): number {
    return this.#capacity;
  }

  /**
   * The back-end was resized: read its `capacity` again, show it in the configuration space
   * and, once the device is active, send a configuration change notification so the driver
   * reads it (VIRTIO 1.3 §5.2.4, §2.5.1: the device changed a field, so the generation moves
   * and the driver is notified). Requests are checked against the new capacity from now on;
   * requests in flight keep the check they passed.
   * @returns the new capacity (sectors)
   * @throws RangeError naming `backend.capacity` if it is not a non-negative safe integer
   */
  updateCapacity(): number {
    const capacity = this.backend.capacity;
    if (!Number.isSafeInteger(capacity) || capacity < 0) {
      throw new RangeError(`backend.capacity must be a non-negative safe integer, got ${capacity}`);
    }
    if (capacity === this.#capacity) return capacity;
    this.#capacity = capacity;
    this.#cfg.setUint32(BlkConfig.CAPACITY, capacity % TWO_32, true);
    this.#cfg.setUint32(BlkConfig.CAPACITY + 4, Math.floor(capacity / TWO_32), true);
    this.#ctx?.notifyConfigChange();
    return capacity;
  }

  /** Requests handed to the back-end and not yet completed. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Resolves when no request is in flight (at once if none is). For tests and orderly
   * shutdown; completions that arrive after a reset count as done.
   */
  whenIdle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    const c = this.#cfg;
    if (size === 1) return c.getUint8(offset);
    if (size === 2) return c.getUint16(offset, true);
    return c.getUint32(offset, true);
  }

  /**
   * Every field is read-only for the driver without VIRTIO_BLK_F_CONFIG_WCE (not offered), so
   * writes are ignored.
   */
  writeConfig(_offset: number, _size: 1 | 2 | 4, _value: number): void {}

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    for (let i = 0; i < this.#free.length; i++) this.#makePool(i);
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    if (index < this.#free.length) this.#drain(index);
  }

  /** @inheritdoc */
  onQueueEnable(index: number): void {
    if (index < this.#free.length) this.#makePool(index);
  }

  /** Forget in-flight requests of the reset queue (their completions are dropped). */
  onQueueReset(index: number): void {
    if (index >= this.#free.length) return;
    this.#gens[index]!++;
    this.#free[index] = [];
  }

  /** Forget everything in flight; the back-end (disk contents) stays. */
  reset(): void {
    for (let i = 0; i < this.#free.length; i++) {
      this.#gens[i]!++;
      this.#free[i] = [];
    }
    this.#ctx = undefined;
  }

  #makePool(index: number): void {
    const q = this.#ctx?.queue(index);
    const gen = ++this.#gens[index]!;
    const free: Slot[] = [];
    this.#free[index] = free;
    if (q === undefined) return;
    for (let i = 0; i < q.size; i++) {
      const slot = new Slot(q.size, this.#maxRanges);
      slot.queue = index;
      slot.onOk = () => this.#complete(slot, gen, BlkStatus.OK);
      slot.onErr = (e) => this.#complete(slot, gen, BlkStatus.IOERR, true, e);
      slot.onRange = () => this.#nextRange(slot, gen);
      free.push(slot);
    }
  }

  /** Pop and start requests of queue `index` while slots are free. A `VirtioError` from `pop` propagates. */
  #drain(index: number): void {
    const ctx = this.#ctx;
    const q = ctx?.queue(index);
    if (ctx === undefined || q === undefined) return;
    const free = this.#free[index]!;
    let synchronous = false;
    while (free.length > 0) {
      const slot = free[free.length - 1]!;
      if (!q.pop(slot.chain)) break;
      free.pop();
      this.stats.requests++;
      if (this.#start(ctx, slot)) synchronous = true;
    }
    if (synchronous) ctx.signalUsed(index);
  }

  /** Start one request. @returns true if it completed synchronously (pushed, not signalled). */
  #start(ctx: DeviceContext, slot: Slot): boolean {
    const chain = slot.chain;
    const mem = ctx.memory;
    slot.written = 0;
    const wb = chain.writableBytes;
    if (wb === 0) {
      // §5.2.6: the status is the last writable byte; without one nothing can be reported.
      this.stats.malformed++;
      ctx.noteFault(new BlkGuestRequestError("blk-no-status", chain.head, chain.readableBytes, 0));
      ctx.queue(slot.queue)!.push(chain.head, 0);
      this.#free[slot.queue]!.push(slot);
      return true;
    }
    slot.statusAddr = lastWritableByte(chain);
    if (chain.readableBytes < HDR) {
      this.stats.malformed++;
      ctx.noteFault(
        new BlkGuestRequestError("blk-short-header", chain.head, chain.readableBytes, wb),
      );
      return this.#finish(ctx, slot, BlkStatus.IOERR);
    }
    const h = slot.header;
    chain.copyFromReadable(mem, 0, h);
    const type = (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
    // Exact while hi < 2^21; anything larger is far past any capacity and fails the range check.
    const sector = u32At(h, BlkOutHdr.SECTOR) + u32At(h, BlkOutHdr.SECTOR + 4) * TWO_32;
    const kind = parseBlkRequestType(type);
    switch (kind.kind) {
      case "in": {
        const len = wb - 1;
        if (!this.#rangeOk(sector, len)) return this.#finish(ctx, slot, BlkStatus.IOERR);
        gather(chain, mem, true, 0, len, slot);
        slot.written = len;
        return this.#call(ctx, slot, OP_READ, sector);
      }
      case "out": {
        // §5.2.6.2: a write on a device offering RO fails with IOERR and writes no data.
        if (this.#readOnly) return this.#finish(ctx, slot, BlkStatus.IOERR);
        const len = chain.readableBytes - HDR;
        if (!this.#rangeOk(sector, len)) return this.#finish(ctx, slot, BlkStatus.IOERR);
        gather(chain, mem, false, HDR, len, slot);
        return this.#call(ctx, slot, OP_WRITE, sector);
      }
      case "flush":
        return this.#call(ctx, slot, OP_FLUSH, 0);
      case "get-id": {
        // §5.2.6: 20 bytes of ID string; a shorter buffer gets what fits.
        const n = Math.min(BLK_ID_BYTES, wb - 1);
        slot.written = chain.copyToWritable(
          mem,
          0,
          n === BLK_ID_BYTES ? this.#id : this.#id.subarray(0, n),
        );
        return this.#finish(ctx, slot, BlkStatus.OK);
      }
      case "discard":
      case "write-zeroes": {
        const zeroes = kind.kind === "write-zeroes";
        const bit = zeroes ? BlkFeature.WRITE_ZEROES : BlkFeature.DISCARD;
        if (!hasFeature(ctx.features, bit)) return this.#finish(ctx, slot, BlkStatus.UNSUPP);
        if (this.#readOnly) return this.#finish(ctx, slot, BlkStatus.IOERR);
        return this.#ranges(ctx, slot, zeroes);
      }
      default:
        // §5.2.6.2: unknown request types complete with VIRTIO_BLK_S_UNSUPP.
        return this.#finish(ctx, slot, BlkStatus.UNSUPP);
    }
  }

  /** Whether `len` bytes from `sector` are whole sectors inside the disk. */
  #rangeOk(sector: number, len: number): boolean {
    if (len % SECTOR_SHIFT_DIV !== 0) return false;
    const n = len / SECTOR_SHIFT_DIV;
    return sector <= this.#capacity && n <= this.#capacity - sector;
  }

  #ranges(ctx: DeviceContext, slot: Slot, zeroes: boolean): boolean {
    const chain = slot.chain;
    const bytes = chain.readableBytes - HDR;
    if (bytes === 0 || bytes % RANGE !== 0) {
      this.stats.malformed++;
      ctx.noteFault(
        new BlkGuestRequestError(
          "blk-bad-ranges",
          chain.head,
          chain.readableBytes,
          chain.writableBytes,
        ),
      );
      return this.#finish(ctx, slot, BlkStatus.IOERR);
    }
    const count = bytes / RANGE;
    // §5.2.6.2: more segments than max_discard_seg / max_write_zeroes_seg → UNSUPP.
    if (count > this.#maxRanges) return this.#finish(ctx, slot, BlkStatus.UNSUPP);
    const max = zeroes ? this.#maxZeroes : this.#maxDiscard;
    const allowed = zeroes ? BlkDiscardWriteZeroes.FLAG_UNMAP : 0;
    const r = slot.range;
    const out = slot.ranges;
    for (let i = 0; i < count; i++) {
      // Copy each range once; the guest may rewrite its buffer meanwhile.
      chain.copyFromReadable(ctx.memory, HDR + i * RANGE, r);
      const sector = u32At(r, 0) + u32At(r, 4) * TWO_32;
      const n = u32At(r, BlkDiscardWriteZeroes.NUM_SECTORS);
      const flags = u32At(r, BlkDiscardWriteZeroes.FLAGS);
      // §5.2.6.2: unknown flags, or unmap on a discard, → UNSUPP.
      if ((flags & ~allowed) !== 0) return this.#finish(ctx, slot, BlkStatus.UNSUPP);
      // §5.2.6.2: more than max_*_sectors or past capacity → IOERR.
      if (n > max || sector > this.#capacity || n > this.#capacity - sector) {
        return this.#finish(ctx, slot, BlkStatus.IOERR);
      }
      out[i * 3] = sector;
      out[i * 3 + 1] = n;
      out[i * 3 + 2] = flags;
    }
    slot.zeroes = zeroes;
    slot.rangeCount = count;
    slot.rangeNext = 0;
    this.#inFlight++;
    this.#nextRange(slot, this.#gens[slot.queue]!);
    return false;
  }

  /** Run the next DISCARD / WRITE_ZEROES range of `slot`, or complete it. */
  #nextRange(slot: Slot, gen: number): void {
    if (slot.rangeNext >= slot.rangeCount) {
      this.#complete(slot, gen, BlkStatus.OK);
      return;
    }
    const i = slot.rangeNext++ * 3;
    const sector = slot.ranges[i]!;
    const n = slot.ranges[i + 1]!;
    const unmap = (slot.ranges[i + 2]! & BlkDiscardWriteZeroes.FLAG_UNMAP) !== 0;
    let p: Promise<void>;
    try {
      p = slot.zeroes
        ? this.backend.writeZeroes(sector, n, unmap)
        : this.backend.discard(sector, n);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(slot.onRange, slot.onErr);
  }

  /**
   * Hand `slot` to the back-end: `op` (OP_READ / OP_WRITE with `slot.iov`, or OP_FLUSH) at
   * `sector`. An operation code rather than a callback, so a request allocates no closure.
   */
  #call(ctx: DeviceContext, slot: Slot, op: number, sector: number): boolean {
    const b = this.backend;
    // A back-end with the bytes at hand completes inside the notification (pushed now,
    // signalled by #drain after the batch): no event-loop turn between the guest's kick and
    // its completion.
    const sync = op === OP_READ ? b.readSync : op === OP_WRITE ? b.writeSync : undefined;
    if (sync !== undefined) {
      try {
        sync.call(b, sector, slot.iov);
      } catch (e) {
        this.stats.backendErrors++;
        this.lastBackendError = e;
        return this.#finish(ctx, slot, BlkStatus.IOERR);
      }
      return this.#finish(ctx, slot, BlkStatus.OK);
    }
    this.#inFlight++;
    let p: Promise<void>;
    try {
      p =
        op === OP_READ
          ? b.read(sector, slot.iov)
          : op === OP_WRITE
            ? b.write(sector, slot.iov)
            : b.flush();
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(slot.onOk, slot.onErr);
    return false;
  }

  /** Write the status, push the chain used (not signalled). @returns true */
  #finish(ctx: DeviceContext, slot: Slot, status: number): boolean {
    if (status === BlkStatus.OK) this.stats.ok++;
    else if (status === BlkStatus.IOERR) this.stats.ioErrors++;
    else this.stats.unsupported++;
    if (status !== BlkStatus.OK) slot.written = 0;
    ctx.memory.writeU8(slot.statusAddr, status);
    // The used length counts the data written plus the status byte (§2.7.8, §5.2.6).
    ctx.queue(slot.queue)!.push(slot.chain.head, slot.written + 1);
    this.#free[slot.queue]!.push(slot);
    return true;
  }

  /** Back-end settlement of an asynchronous request. */
  #complete(slot: Slot, gen: number, status: number, rejected = false, error?: unknown): void {
    this.#inFlight--;
    if (rejected) {
      this.stats.backendErrors++;
      this.lastBackendError = error;
    }
    const ctx = this.#ctx;
    // A device reset (reset()) or a reset of this queue (onQueueReset) bumped the queue's
    // generation: its buffers belong to nobody now. Resets of *other* queues do not matter,
    // which the device-wide ctx.epoch could not tell apart.
    if (gen !== this.#gens[slot.queue] || ctx === undefined) {
      this.stats.stale++;
    } else {
      this.#doneCtx = ctx;
      this.#doneSlot = slot;
      this.#doneStatus = status;
      ctx.guard(this.#finishDone);
    }
    if (this.#inFlight === 0 && this.#idle.length > 0) {
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
  }
}

function noop(): void {}

function checkU32(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min || v > 0xffff_ffff) {
    throw new RangeError(`${name} must be an integer in [${min}, 2^32), got ${v}`);
  }
  return v;
}

function u32At(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

/** Guest address of the last byte of the writable part (the caller checked it is not empty). */
function lastWritableByte(chain: DescriptorChain): number {
  for (let i = chain.count - 1; i >= chain.readableCount; i--) {
    const len = chain.lens[i]!;
    if (len > 0) return chain.addrs[i]! + len - 1;
  }
  return 0; // unreachable: writableBytes > 0
}

/** Fill `slot.iov` with views of `len` bytes of one part of the chain, from `offset`. */
function gather(
  chain: DescriptorChain,
  mem: GuestMemory,
  writable: boolean,
  offset: number,
  len: number,
  slot: Slot,
): void {
  const iov = slot.iov;
  let k = 0;
  const from = writable ? chain.readableCount : 0;
  const to = writable ? chain.count : chain.readableCount;
  let skip = offset;
  let left = len;
  for (let i = from; i < to && left > 0; i++) {
    const segLen = chain.lens[i]!;
    if (skip >= segLen) {
      skip -= segLen;
      continue;
    }
    const n = Math.min(segLen - skip, left);
    const views = mem.sg(chain.addrs[i]! + skip, n, slot.tmp, writable ? "write" : "read");
    for (let j = 0; j < views.length; j++) iov[k++] = views[j]!;
    left -= n;
    skip = 0;
  }
  // Only a changed count touches `length` (its setter is a builtin call on every request).
  if (iov.length !== k) iov.length = k;
}
