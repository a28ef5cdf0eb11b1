/**
 * virtio-rng driver (guest side).
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
import { DeviceId, Feature, featureMask, RngQueue } from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import { type DriverQueue, ringAreaBytes, ringLayoutAt } from "@virtio-ts/virtqueue";
import { checkAllocatorPlacement, checkRingPlacement } from "./placement.js";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

/** Why the rng driver gave up on what the device did. */
export type RngDeviceFaultCode =
  /** The device is not an entropy device (DeviceID is not 4). */
  | "rng-not-entropy"
  /** The device returned many buffers in a row with no byte in them. */
  | "rng-no-entropy"
  /**
   * The device corrupted the ring (a `RingError` while reaping, `cause`): a used index that
   * jumps, an id not in flight, or a used length larger than the posted buffer
   * (`UsedLenTooLargeError`). Every pending read is rejected with this fault, and so is every
   * later one, until a new driver is set up on a reset device.
   */
  | "rng-ring-broken";

/**
 * The entropy device broke its protocol (drivers distrust devices). Raised at construction for
 * a device of the wrong type, and as the rejection of a pending read.
 */
export class RngDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: RngDeviceFaultCode;
  /** The offending value (used length, count, or DeviceID). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   * @param cause - the underlying error (the queue's `RingError`), if any
   */
  constructor(code: RngDeviceFaultCode, message: string, value: number, cause?: unknown) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.value = value;
  }
}

/** Options of a {@link RngDriver}. */
export interface RngDriverOptions {
  /**
   * Guest address of the driver-owned ring area, {@link RngDriver.ringBytes} bytes, 16-aligned.
   */
  readonly ringBase: number;
  /** Queue size, a power of 2 up to the device's QueueNumMax (default min(64, QueueNumMax)). */
  readonly queueSize?: number;
  /** Requests in flight at most (default: queue size, bounded by the allocator's slots). */
  readonly maxInFlight?: number;
  /** Whether to accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
}

/** Completions with used length 0 in a row after which the oldest read is rejected. */
const MAX_EMPTY = 32;

/** A `read(n)` call waiting for bytes. */
interface PendingRead {
  readonly out: Uint8Array;
  filled: number;
  readonly resolve: (b: Uint8Array) => void;
  readonly reject: (e: unknown) => void;
}

/** One posted buffer (the token on the ring). */
interface Req {
  addr: number;
  len: number;
}

/**
 * Guest-side virtio-rng driver over an {@link DriverTransport} (VIRTIO 1.3 §5.4): sets up
 * the request queue (split, or packed when the device offers VIRTIO_F_RING_PACKED) and serves
 * `read(n)` by keeping several device-writable buffers (one allocator slot each) in flight.
 *
 * Reads are served in FIFO order from completions in completion order. A device may fill less
 * than a whole buffer (§5.4.6.2); §5.4.6.1 says the driver MUST examine the used length, so only
 * that many bytes are taken, and more buffers are posted until every read is full. The device
 * is distrusted: a used length longer than the buffer, like any corrupted ring entry, rejects
 * every pending read with {@link RngDeviceFault} "rng-ring-broken" (its `cause` is the queue's
 * `RingError`); 32 empty completions in a row reject the oldest read with "rng-no-entropy".
 *
 * Completion: the driver does nothing until {@link RngDriver.poll} or
 * {@link RngDriver.onInterrupt} is called.
 *
 * @example
 * ```ts
 * const rng = new RngDriver(transport, memory, new SlabAllocator(0x40000, 4096, 8), { ringBase: 0x10000 });
 * const p = rng.read(32);
 * // ... the device runs, then the interrupt handler calls rng.onInterrupt()
 * const bytes = await p;
 * ```
 */
export class RngDriver {
  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #q: DriverQueue<Req>;
  /** `#complete` bound once, for `reapAll`. */
  readonly #onUsed = (req: Req, len: number): void => this.#complete(req, len);
  readonly #features: bigint;
  readonly #maxInFlight: number;
  readonly #reads: PendingRead[] = [];
  readonly #live = new Set<Req>();
  readonly #seg = [{ addr: 0, len: 0 }];
  #readHead = 0;
  /** Bytes still wanted by pending reads. */
  #need = 0;
  /** Bytes asked for by buffers in flight. */
  #asked = 0;
  #empty = 0;
  #broken: RngDeviceFault | undefined;

  /**
   * Bytes of the ring area {@link RngDriverOptions.ringBase} must point at.
   * @param queueSize - queue size
   */
  static ringBytes(queueSize: number): number {
    return ringAreaBytes(queueSize);
  }

  /**
   * Initialise the device (§3.1.1): negotiate, set up the request queue, set DRIVER_OK.
   * @param transport - the device's transport (it is reset)
   * @param memory - guest memory holding the ring and the allocator's region
   * @param allocator - slots for request buffers (one per request in flight)
   * @param options - ring address, queue size, in-flight bound
   * @throws TransportError from negotiation / queue setup; RngDeviceFault "rng-not-entropy"
   *   (FAILED is then set); RangeError naming an invalid option, or naming
   *   `allocator` / `options.ringBase` when the slots or the ring area are not inside guest
   *   memory (or overlap), with the address the memory must reach
   */
  constructor(
    transport: DriverTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: RngDriverOptions,
  ) {
    checkAllocatorPlacement(memory, allocator);
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    const info = transport.probe();
    if (info.deviceId !== DeviceId.RNG) {
      transport.fail();
      throw new RngDeviceFault("rng-not-entropy", `DeviceID is ${info.deviceId}`, info.deviceId);
    }
    let wanted = featureMask(Feature.RING_EVENT_IDX) | featureMask(Feature.RING_PACKED);
    if (options.packed === false) wanted &= ~featureMask(Feature.RING_PACKED);
    this.#features = transport.negotiate(wanted);
    const max = transport.queueMaxSize(RngQueue.REQUEST);
    const size = options.queueSize ?? Math.min(64, max);
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`options.queueSize must be a power of 2 in [1, 32768], got ${size}`);
    }
    const mif = options.maxInFlight ?? size;
    if (!Number.isInteger(mif) || mif < 1) {
      throw new RangeError(`options.maxInFlight must be a positive integer, got ${mif}`);
    }
    this.#maxInFlight = Math.min(mif, size, allocator.slots);
    const bytes = ringAreaBytes(size);
    checkRingPlacement(memory, allocator, options.ringBase, bytes, `ringAreaBytes(${size})`);
    this.#q = transport.setupQueue<Req>(
      RngQueue.REQUEST,
      memory,
      ringLayoutAt(options.ringBase, size),
    );
    transport.driverOk();
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** Buffers posted to the device and not yet reaped. */
  get inFlight(): number {
    return this.#live.size;
  }

  /** Reads not yet fully served. */
  get pendingReads(): number {
    return this.#reads.length - this.#readHead;
  }

  /**
   * Read `n` random bytes from the device.
   * @param n - bytes wanted, an integer in [0, 2^30]
   * @returns exactly `n` bytes
   * @throws RangeError naming `n`; RngDeviceFault (rejection) if the device misbehaves
   */
  read(n: number): Promise<Uint8Array> {
    if (!Number.isInteger(n) || n < 0 || n > 1 << 30) {
      throw new RangeError(`n must be an integer in [0, 2^30], got ${n}`);
    }
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    if (n === 0) return Promise.resolve(new Uint8Array(0));
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#reads.push({ out: new Uint8Array(n), filled: 0, resolve, reject });
      this.#need += n;
      this.#fillRing();
    });
  }

  /**
   * Reap every used buffer and hand its bytes to pending reads, then post more buffers.
   * @returns the number of buffers reaped
   */
  poll(): number {
    if (this.#broken !== undefined) return 0;
    const q = this.#q;
    let done = 0;
    try {
      done = reapAll(q, this.#onUsed);
    } catch (e) {
      // A device that corrupts the used ring: never throw out of the driver loop.
      if (!(e instanceof VirtioError)) throw e;
      this.#breakRing(e);
      return done;
    }
    if (done > 0) this.#fillRing();
    return done;
  }

  /**
   * Interrupt handler: acknowledge InterruptStatus, then {@link RngDriver.poll}.
   * @returns the number of buffers reaped
   */
  onInterrupt(): number {
    this.#t.takeInterrupt();
    return this.poll();
  }

  #complete(req: Req, len: number): void {
    this.#live.delete(req);
    this.#asked -= req.len;
    this.#slab.free(req.addr);
    // A used length above req.len never gets here: the driver queue raises
    // UsedLenTooLargeError (a RingError) for it, which breaks the ring below.
    if (len === 0) {
      if (++this.#empty >= MAX_EMPTY) {
        this.#empty = 0;
        this.#failOldest(
          new RngDeviceFault("rng-no-entropy", `${MAX_EMPTY} empty completions`, MAX_EMPTY),
        );
      }
      return;
    }
    this.#empty = 0;
    // §5.4.6.1: only the first `len` bytes are random.
    let at = req.addr;
    let left = len;
    const reads = this.#reads;
    while (left > 0 && this.#readHead < reads.length) {
      const r = reads[this.#readHead]!;
      const n = Math.min(left, r.out.length - r.filled);
      this.#mem.read(at, r.out.subarray(r.filled, r.filled + n));
      r.filled += n;
      this.#need -= n;
      at += n;
      left -= n;
      if (r.filled === r.out.length) {
        this.#shift();
        r.resolve(r.out);
      }
    }
  }

  #shift(): void {
    this.#reads[this.#readHead++] = undefined as unknown as PendingRead;
    if (this.#readHead === this.#reads.length) {
      this.#reads.length = 0;
      this.#readHead = 0;
    } else if (this.#readHead > 1024 && this.#readHead * 2 > this.#reads.length) {
      this.#reads.splice(0, this.#readHead);
      this.#readHead = 0;
    }
  }

  #failOldest(fault: RngDeviceFault): void {
    if (this.#readHead >= this.#reads.length) return;
    const r = this.#reads[this.#readHead]!;
    this.#need -= r.out.length - r.filled;
    this.#shift();
    r.reject(fault);
  }

  /** Post buffers for the bytes still wanted, while slots and ring room last. */
  #fillRing(): void {
    const q = this.#q;
    const seg = this.#seg;
    let added = false;
    while (this.#need > this.#asked && this.#live.size < this.#maxInFlight) {
      const addr = this.#slab.alloc();
      if (addr === undefined) break;
      const len = Math.min(this.#slab.slotSize, this.#need - this.#asked);
      const req: Req = { addr, len };
      seg[0]!.addr = addr;
      seg[0]!.len = len;
      // §5.4.6.1: device-writable buffers only.
      if (!q.add([], seg, req)) {
        this.#slab.free(addr);
        break;
      }
      this.#live.add(req);
      this.#asked += len;
      added = true;
    }
    if (added && q.publish()) this.#t.notify(RngQueue.REQUEST);
  }

  #breakRing(cause: VirtioError): void {
    const fault = new RngDeviceFault(
      "rng-ring-broken",
      `the device broke the ring: ${cause.message}`,
      0,
      cause,
    );
    this.#broken = fault;
    // The device may still write into the posted buffers: their slots stay allocated.
    this.#live.clear();
    const victims = this.#reads.slice(this.#readHead);
    this.#reads.length = 0;
    this.#readHead = 0;
    this.#need = 0;
    this.#asked = 0;
    for (const r of victims) r.reject(fault);
  }
}
