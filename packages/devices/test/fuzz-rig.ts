// The guest side of the device fuzz loops (fuzz-devices.test.ts): one MmioDevice in front of a
// device model, driven through MmioDriverTransport and raw driver queues by a seeded, hostile
// guest that posts chains, rewrites descriptors and scribbles on the rings between kicks, resets
// queues and the device. Every host entry point goes through `host()`: any exception escaping the
// host (MmioDevice.read/write, a back-end's sink) fails the run naming the seed and op index.
import { createGuestMemory, type GuestMemory, VirtioError } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import {
  type DeviceModel,
  MmioDevice,
  MmioDriverTransport,
  RateLimitedLog,
} from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";

export const OPS = Number(process.env.FUZZ_OPS ?? 20_000);
/** Fixed in CI; a longer run (FUZZ_OPS set) explores a new seed unless FUZZ_SEED is given. */
export const BASE_SEED = Number(
  process.env.FUZZ_SEED ?? (process.env.FUZZ_OPS ? Date.now() & 0x7fffffff : 20260301),
);

/** xorshift32: `rand(n)` is in [0, n). */
export function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % n;
  };
}

/** An exception that escaped the host: the run fails with it (never caught by the guest). */
export class HostEscape extends Error {
  constructor(where: string, cause: unknown) {
    super(`${where}: ${cause instanceof Error ? `${cause.name}: ${cause.message}` : cause}`, {
      cause,
    });
  }
}

/** A broken invariant (the back-end saw bytes it should not have, a bound was exceeded). */
export class InvariantBroken extends Error {}

export const MEM_SIZE = 0x100000;
/** Random guest buffers live here. */
export const DATA = 0x20000;
export const DATA_END = 0xf0000;
/** Buffers of the well-formed checks after a reset (never scribbled). */
export const CLEAN = 0xf0000;
const RING_BASE = 0x1000;
const RING_STRIDE = 0x1000;
const INDIRECT_BASE = 0x10000;
const INDIRECT_STRIDE = 0x1000;
const INDIRECT_ENTRIES = 4;

export interface RigStats {
  ops: number;
  posted: number;
  kicks: number;
  reaped: number;
  descMutations: number;
  scribbles: number;
  deviceResets: number;
  queueResets: number;
  needsReset: number;
  guestErrors: number;
  featuresRefused: number;
  verified: number;
}

/** One fuzz run against one device model and ring layout. */
export class Rig {
  readonly mem: GuestMemory;
  readonly device: MmioDevice;
  readonly t: MmioDriverTransport;
  readonly rand: (n: number) => number;
  readonly queues: (DriverQueue<number> | undefined)[] = [];
  readonly sizes: (number | undefined)[] = [];
  /** Segments posted since the last reset (while clean): [addr, len, writable]. */
  readonly segments: [number, number, boolean][] = [];
  /** Writable bytes of each chain posted since the last reset, by token. */
  readonly writableOf = new Map<number, number>();
  /** Largest readable total of a chain posted since the last reset. */
  maxReadable = 0;
  readonly stats: RigStats = {
    ops: 0,
    posted: 0,
    kicks: 0,
    reaped: 0,
    descMutations: 0,
    scribbles: 0,
    deviceResets: 0,
    queueResets: 0,
    needsReset: 0,
    guestErrors: 0,
    featuresRefused: 0,
    verified: 0,
  };
  negotiated = 0n;
  op = 0;
  /** Ring memory was rewritten by the guest since the last reset (precise accounting is off). */
  dirty = false;
  readonly #base: Uint8Array;
  readonly #token = { n: 0 };
  /** Queue size of the well-formed checks (random sizes otherwise). */
  #fixedSize: number | undefined = undefined;

  constructor(
    readonly name: string,
    readonly seed: number,
    readonly model: DeviceModel,
    readonly packed: boolean,
    /** Queues the guest sets up (all of the device's by default). */
    readonly queueCount: number,
  ) {
    this.rand = rng(seed);
    this.mem = createGuestMemory({ size: MEM_SIZE, shared: false });
    this.#base = this.mem.slice(0, MEM_SIZE);
    this.device = new MmioDevice(model, {
      memory: this.mem,
      log: new RateLimitedLog({ sink: () => {} }),
    });
    this.t = new MmioDriverTransport({
      read: (o, s) => this.host("MmioDevice.read", () => this.device.read(o, s)),
      write: (o, s, v) => this.host("MmioDevice.write", () => this.device.write(o, s, v)),
    });
  }

  /** Where the run is, for failure messages. */
  where(what: string): string {
    return `${this.name} seed ${this.seed} (FUZZ_SEED=${BASE_SEED}) op ${this.op}: ${what}`;
  }

  /** Call into the host; anything it throws is a host bug. */
  host<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof HostEscape || e instanceof InvariantBroken) throw e;
      throw new HostEscape(this.where(what), e);
    }
  }

  check(ok: boolean, what: string): void {
    if (!ok) throw new InvariantBroken(this.where(what));
  }

  /** A view of guest memory lies inside the mapping. */
  checkView(v: Uint8Array, what: string): void {
    this.check(
      v.buffer === this.#base.buffer &&
        v.byteOffset >= this.#base.byteOffset &&
        v.byteOffset + v.length <= this.#base.byteOffset + MEM_SIZE,
      `${what}: view outside guest memory`,
    );
  }

  /**
   * While the rings are clean, a view the device hands a back-end lies inside one segment the
   * guest posted in that direction: the back-end never sees bytes the guest did not supply.
   */
  checkSupplied(v: Uint8Array, writable: boolean, what: string): void {
    this.checkView(v, what);
    if (this.dirty || this.segments.length >= 100_000) return;
    const a = v.byteOffset - this.#base.byteOffset;
    const e = a + v.length;
    for (const [addr, len, w] of this.segments) {
      if (w === writable && a >= addr && e <= addr + len) return;
    }
    this.check(
      false,
      `${what}: ${v.length} bytes at ${a} are in no ${writable ? "writable" : "readable"} segment the guest posted`,
    );
  }

  get status(): number {
    return this.t.status;
  }

  get needsReset(): boolean {
    return (this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  get has(): (bit: number) => boolean {
    return (bit) => hasFeature(this.negotiated, bit);
  }

  /**
   * Run a guest step. A VirtioError (a driver queue refusing a corrupted ring, a transport
   * error) makes the guest start over with a fresh device; host escapes propagate.
   */
  guest(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      this.stats.guestErrors++;
      this.init(true);
    }
  }

  /**
   * Reset and set the device up again: negotiate (all offered features and queues of 8, or a
   * random subset and random queue sizes), enable every queue, DRIVER_OK. A refused feature set is retried with everything.
   */
  init(randomFeatures: boolean, ready = true): void {
    this.#fixedSize = randomFeatures ? undefined : 8;
    this.stats.deviceResets++;
    this.queues.length = 0;
    this.sizes.length = 0;
    this.dirty = false;
    this.segments.length = 0;
    this.writableOf.clear();
    this.maxReadable = 0;
    const ring = featureMask(Feature.RING_PACKED);
    const pick = (offered: bigint): bigint => {
      let m = this.packed ? ring : 0n;
      for (let b = 0n; b < 64n; b++) {
        const bit = 1n << b;
        if (bit === ring || (offered & bit) === 0n) continue;
        if (!randomFeatures || this.rand(4) !== 0) m |= bit;
      }
      return m;
    };
    try {
      this.negotiated = this.t.negotiate(pick);
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      this.stats.featuresRefused++;
      this.negotiated = this.t.negotiate((o) => (this.packed ? o : o & ~ring));
    }
    for (let i = 0; i < this.queueCount; i++) this.setupQueue(i);
    if (ready) this.t.driverOk();
  }

  setupQueue(i: number): void {
    const max = this.t.queueMaxSize(i);
    const size = this.packed ? [8, 5, 16, 3][this.rand(4)]! : [8, 4, 16, 2][this.rand(4)]!;
    const s = Math.min(this.#fixedSize ?? size, max);
    const desc = RING_BASE + i * RING_STRIDE;
    this.queues[i] = this.t.setupQueue<number>(
      i,
      this.mem,
      { size: s, desc, driver: desc + 0x400, device: desc + 0x800 },
      {
        indirect: {
          addr: INDIRECT_BASE + i * INDIRECT_STRIDE,
          maxEntries: Math.min(INDIRECT_ENTRIES, s),
        },
      },
    );
    this.sizes[i] = s;
  }

  /** Post a chain (not published). @returns its token, or undefined if the ring is full */
  post(qi: number, readable: Segment[], writable: Segment[]): number | undefined {
    const q = this.queues[qi];
    if (q === undefined) return undefined;
    const max = this.sizes[qi]!;
    // The driver queue refuses more segments than the queue size: trim (a well-behaved guest).
    while (readable.length + writable.length > max) {
      if (writable.length > 1 || readable.length === 0) writable.pop();
      else readable.pop();
    }
    if (readable.length + writable.length === 0) return undefined;
    const token = ++this.#token.n;
    if (!q.add(readable, writable, token)) return undefined;
    this.stats.posted++;
    let r = 0;
    let w = 0;
    for (const s of readable) {
      r += s.len;
      if (this.segments.length < 100_000) this.segments.push([s.addr, s.len, false]);
    }
    for (const s of writable) {
      w += s.len;
      if (this.segments.length < 100_000) this.segments.push([s.addr, s.len, true]);
    }
    this.maxReadable = Math.max(this.maxReadable, r);
    this.writableOf.set(token, w);
    return token;
  }

  kick(qi: number): void {
    const q = this.queues[qi];
    if (q === undefined) {
      // A kick on a queue that is not set up: the device must ignore it.
      this.t.notify(qi);
      return;
    }
    q.publish();
    this.stats.kicks++;
    this.t.notify(qi);
  }

  /** Reap every used buffer of queue `qi`; `each(token, len)` sees them. */
  reap(qi: number, each?: (token: number, len: number) => void): void {
    const q = this.queues[qi];
    if (q === undefined) return;
    for (let tok = q.reap(); tok !== undefined; tok = q.reap()) {
      this.stats.reaped++;
      const w = this.writableOf.get(tok);
      // The device never reports more bytes written than the chain offered (§2.7.8.1).
      if (!this.dirty && w !== undefined) {
        this.check(q.lastLen <= w, `used length ${q.lastLen} > writable ${w} (token ${tok})`);
      }
      each?.(tok, q.lastLen);
    }
  }

  /** A random guest buffer address with `len` bytes after it inside the data area. */
  addr(len: number): number {
    return DATA + this.rand(Math.max(1, DATA_END - DATA - len));
  }

  /** A random length: mostly small, sometimes 0, sometimes large (within memory). */
  len(typical: number): number {
    switch (this.rand(10)) {
      case 0:
        return 0;
      case 1:
        return 1 + this.rand(4);
      case 2:
        return this.rand(0x10000);
      default:
        return 1 + this.rand(typical);
    }
  }

  segs(n: number, typical: number): Segment[] {
    const out: Segment[] = [];
    for (let i = 0; i < n; i++) {
      const len = this.len(typical);
      out.push({ addr: this.addr(len), len });
    }
    return out;
  }

  /** Write `bytes` (or random bytes) at `addr`. */
  fill(addr: number, len: number): void {
    for (let i = 0; i < len; i++) this.mem.writeU8(addr + i, this.rand(256));
  }

  /**
   * Rewrite one field of a random descriptor of queue `qi` (address, length, flags, next/id)
   * with a hostile value: zero, huge, near the end of memory, random.
   */
  mutateDescriptor(qi: number): void {
    const size = this.sizes[qi];
    if (size === undefined) return;
    this.dirty = true;
    this.stats.descMutations++;
    const indirect = this.rand(4) === 0;
    const at = indirect
      ? INDIRECT_BASE + qi * INDIRECT_STRIDE + 16 * this.rand(size * INDIRECT_ENTRIES)
      : RING_BASE + qi * RING_STRIDE + 16 * this.rand(size);
    const field = this.rand(4);
    const pick = this.rand(6);
    if (field === 0) {
      const v = [0, MEM_SIZE - 1, MEM_SIZE, 0xffffffff, this.addr(16), this.rand(MEM_SIZE)][pick]!;
      this.mem.writeU32(at, v);
      this.mem.writeU32(at + 4, pick === 3 ? this.rand(2) : 0);
    } else if (field === 1) {
      const v = [0, 1, MEM_SIZE, 0xffffffff, this.rand(0x20000), 0x80000000][pick]!;
      this.mem.writeU32(at + 8, v >>> 0);
    } else if (field === 2) {
      // split: flags at +12 (NEXT 1, WRITE 2, INDIRECT 4); packed: id at +12.
      this.mem.writeU16(at + 12, this.rand(8) === 0 ? this.rand(0x10000) : this.rand(8));
    } else {
      // split: next at +14; packed: flags at +14 (AVAIL/USED bits 7/15, NEXT 1, WRITE 2, INDIRECT 4).
      this.mem.writeU16(at + 14, this.rand(2) ? this.rand(0x10000) : this.rand(size + 2));
    }
  }

  /** Overwrite 1 to 4 random bytes of a ring area (descriptors, driver or device area). */
  scribbleRing(qi: number): void {
    if (this.sizes[qi] === undefined) return;
    this.dirty = true;
    this.stats.scribbles++;
    const size = this.sizes[qi]!;
    const base = RING_BASE + qi * RING_STRIDE;
    const areas: [number, number][] = [
      [base, 16 * size],
      [base + 0x400, this.packed ? 4 : 6 + 2 * size],
      [base + 0x800, this.packed ? 4 : 6 + 8 * size],
    ];
    const [at, len] = areas[this.rand(3)]!;
    const n = 1 + this.rand(4);
    const p = at + this.rand(Math.max(1, len - n));
    for (let k = 0; k < n; k++) this.mem.writeU8(p + k, this.rand(256));
  }

  /** Overwrite random bytes of the data area (request buffers being processed or posted). */
  scribbleData(): void {
    const n = 1 + this.rand(64);
    this.fill(this.addr(n), n);
  }

  /** Reset queue `qi` alone (RING_RESET, when negotiated) and maybe set it up again. */
  resetQueue(qi: number): void {
    if (!this.has(Feature.RING_RESET) || qi >= this.queueCount) return;
    this.stats.queueResets++;
    this.t.resetQueue(qi);
    this.queues[qi] = undefined;
    this.sizes[qi] = undefined;
    if (this.rand(4) !== 0) this.setupQueue(qi);
  }

  /** Count NEEDS_RESET and check it comes with a typed fault; the guest resets (mostly). */
  afterOp(): void {
    if (this.needsReset) {
      this.stats.needsReset++;
      const fault = this.device.core.lastFault;
      this.check(fault instanceof VirtioError, "NEEDS_RESET without a VirtioError fault");
      if (this.rand(4) !== 0) this.guest(() => this.init(true));
    }
  }

  /** The common hostile-guest operations; returns false if `k` is not one of them. */
  commonOp(k: number): boolean {
    const qi = this.rand(this.queueCount);
    switch (k) {
      case 0:
        this.guest(() => this.mutateDescriptor(qi));
        return true;
      case 1:
        this.guest(() => this.scribbleRing(qi));
        return true;
      case 2:
        this.guest(() => this.scribbleData());
        return true;
      case 3:
        this.guest(() => this.resetQueue(qi));
        return true;
      case 4:
        this.guest(() => this.kick(qi));
        return true;
      case 5:
        this.guest(() => {
          if (this.rand(8) === 0) this.init(true);
          else this.reap(qi);
        });
        return true;
      default:
        return false;
    }
  }
}

export function toBytes(a: readonly number[]): Uint8Array {
  return new Uint8Array(a);
}

/** Heap in use after a forced collection when `--expose-gc` is on, else undefined. */
export function heapAfterGc(): number | undefined {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) return undefined;
  g();
  return process.memoryUsage().heapUsed;
}
