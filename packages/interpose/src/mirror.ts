import { BackendError, type BlockBackend, sectorRangeFits } from "@virtio-ts/devices";

const SECTOR = 512;

/**
 * When a {@link MirrorBackend} acknowledges a write-type request or a flush: after every
 * member (`"all"`), after a majority `⌊n/2⌋ + 1` (`"quorum"`), or after that many members (a
 * number from 1 to n). Only healthy members count, and the member reads are served from must
 * be one of them.
 */
export type MirrorAck = "all" | "quorum" | number;

/** Options of {@link mirror}. */
export interface MirrorOptions {
  /** Acknowledgement policy. Default `"all"`. */
  readonly ack?: MirrorAck;
  /**
   * Sectors per dirty-region bit (the resync grain). Default 2048 (1 MiB): a 1 TiB disk needs a
   * 128 KiB bitmap per member.
   */
  readonly extentSectors?: number;
  /**
   * Bytes of write data that may be held in private copies for members still writing after the
   * request was acknowledged. Past it, a write waits for every member before it is acknowledged.
   * Default 64 MiB.
   */
  readonly maxLagBytes?: number;
}

/**
 * State of one member: `healthy` (serves reads, counts for acknowledgements), `failed` (an
 * operation on it failed; it receives nothing and its missed writes are recorded as dirty
 * extents), `resyncing` ({@link MirrorBackend.resync} is copying its dirty extents; it receives
 * new writes but does not count yet).
 */
export type MirrorMemberState = "healthy" | "failed" | "resyncing";

/** What one {@link MirrorBackend.resync} did. */
export interface MirrorResyncResult {
  /** Members that were copied, flushed and are healthy again. */
  readonly rejoined: readonly number[];
  /** Members that failed again during the copy (their remaining dirty extents are kept). */
  readonly stillFailed: readonly number[];
  /** Extents copied. */
  readonly copiedExtents: number;
}

/** Counters of a {@link MirrorBackend} (mutated in place). */
export interface MirrorStats {
  /** Write-type requests acknowledged before every member had finished (data copied). */
  earlyAcks: number;
  /** Reads that failed on the read member and were retried on another. */
  readFailovers: number;
  /** Requests rejected because the policy could not be met. */
  rejected: number;
}

const HEALTHY = 0;
const FAILED = 1;
const RESYNCING = 2;
const STATE_NAMES: readonly MirrorMemberState[] = ["healthy", "failed", "resyncing"];

/**
 * Operations issued to one member between two barriers. A barrier closes the current epoch and
 * resolves when its operations and those of every earlier epoch have settled — without waiting
 * for operations issued after it (so a stream of new writes cannot starve it).
 */
class Epoch {
  pending = 0;
  #release: (() => void) | undefined = undefined;
  readonly #prev: Promise<void> | undefined;

  constructor(prev: Promise<void> | undefined) {
    this.#prev = prev;
  }

  done(): void {
    if (--this.pending === 0 && this.#release !== undefined) this.#release();
  }

  close(): Promise<void> {
    const own =
      this.pending === 0
        ? undefined
        : new Promise<void>((r) => {
            this.#release = r;
          });
    if (own === undefined) return this.#prev ?? Promise.resolve();
    return this.#prev === undefined ? own : Promise.all([this.#prev, own]).then(noop);
  }
}

/**
 * The state of one write-type request (or flush) in flight across the members, pooled: its
 * per-member settlement callbacks are made once, when the object is, so a request allocates
 * no closure (only its promise).
 */
class MirrorOp {
  /** `onOk[i]` / `onErr[i]`: member `i` settled this request. */
  readonly onOk: (() => void)[] = [];
  readonly onErr: ((e: unknown) => void)[] = [];
  /** The epoch of member `i` this request was counted in. */
  readonly epochs: (Epoch | undefined)[] = [];
  /** Whether member `i` was healthy (its success counts toward the policy) at issue. */
  readonly counts: boolean[] = [];
  op = 0;
  sector = 0;
  count = 0;
  pending = 0;
  okMask = 0;
  okHealthy = 0;
  settled = false;
  early = false;
  firstError: unknown = undefined;
  scratch: Uint8Array | undefined = undefined;
  resolve: () => void = noop;
  reject: (e: unknown) => void = noop;
}

/** Write-type operation kinds. */
const OP_WRITE = 0;
const OP_DISCARD = 1;
const OP_ZEROES = 2;
const OP_FLUSH = 3;

/**
 * Replication, one-many: every write-type request and every flush goes to all members; reads
 * come from one healthy member (the primary, `backends[0]`, until it fails).
 *
 * - **Acknowledgement.** A write, discard, write-zeroes or flush resolves once `k` healthy
 *   members (see {@link MirrorAck}) — including the current read member — completed it. When
 *   fewer than `k` members are healthy the request is rejected at once (`BackendError` "io")
 *   without touching any member. When not enough members can still succeed, it is rejected.
 * - **Guest memory.** iovecs are valid only until the request settles. When `k` is smaller
 *   than the number of members written (so a member may still be writing after the
 *   acknowledgement), the data is **copied once** into a private buffer (pooled, at most
 *   `maxLagBytes` held) and every member writes from that copy; otherwise, or when the budget is
 *   spent, the members write straight from the iovecs and the request settles only after
 *   *every* member settled (success or failure) — guest memory is never read after settlement.
 * - **Flush.** Each member's flush is issued after the writes issued to that member before the
 *   flush have settled, so `k` acknowledged flushes mean every acknowledged write is durable on
 *   at least `k` members. A failed flush marks the whole member dirty (which writes it lost is
 *   unknown).
 * - **Reads** go to the read member. If it fails, it is marked failed (and the range dirty), the
 *   first healthy member becomes the read member — after the writes already issued to it have
 *   settled, so an acknowledged write is never read back stale — and the read is retried there.
 * - **Failure and resync.** A member whose operation fails is marked `failed`; from then on it
 *   receives nothing and every write-type request marks its extents (`extentSectors` each) in the
 *   member's dirty bitmap (fixed size, allocated once). {@link MirrorBackend.resync} copies the
 *   dirty extents from the read member, one at a time, while new writes overlapping the extent
 *   being copied wait; then flushes the member, which rejoins as `healthy`.
 *
 * Up to 31 members. Capacity and block size are the primary's; every replica must be at least
 * as large; no member may be read-only.
 */
export class MirrorBackend implements BlockBackend {
  /** The members: primary first. */
  readonly members: readonly BlockBackend[];
  /** Members that must complete a request before it is acknowledged. */
  readonly ackCount: number;
  /** Sectors per dirty bit. */
  readonly extentSectors: number;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly = false;
  /** Counters. */
  readonly stats: MirrorStats = { earlyAcks: 0, readFailovers: 0, rejected: 0 };
  /** The last error of each member (undefined while it has none). */
  readonly lastErrors: unknown[];

  readonly #state: Uint8Array;
  readonly #dirty: Uint8Array[];
  readonly #dirtyCount: Uint32Array;
  readonly #extents: number;
  readonly #epochs: Epoch[];

  /** Free request states (see MirrorOp), and the promise executor bound once. */
  readonly #ops: MirrorOp[] = [];
  readonly #opNew: (resolve: () => void, reject: (e: unknown) => void) => void;
  /** The request state the executor fills (set just before `new Promise`). */
  #opNext: MirrorOp | undefined = undefined;
  readonly #maxLag: number;
  #lag = 0;
  readonly #pool = new Map<number, Uint8Array[]>();
  #pooled = 0;
  #source = 0;
  #gate: Promise<void> | undefined = undefined;
  #lockExtent = -1;
  #lockWait: Promise<void> | undefined = undefined;
  #resync: Promise<MirrorResyncResult> | undefined = undefined;

  /**
   * Prefer {@link mirror}.
   * @param backends - primary, then replicas
   * @param options - acknowledgement policy, extent size, lag budget
   * @throws RangeError naming `backends` (1 to 31 members), `backends[i].capacity`,
   *   `options.ack`, `options.extentSectors` or `options.maxLagBytes`; TypeError naming a
   *   read-only `backends[i]`
   */
  constructor(backends: readonly BlockBackend[], options: MirrorOptions = {}) {
    const n = backends.length;
    if (n < 1 || n > 31) throw new RangeError(`backends must hold 1 to 31 members, got ${n}`);
    const primary = backends[0]!;
    for (let i = 0; i < n; i++) {
      const b = backends[i]!;
      if (b.readOnly) throw new TypeError(`backends[${i}] is read-only`);
      if (b.capacity < primary.capacity) {
        throw new RangeError(
          `backends[${i}].capacity (${b.capacity}) is smaller than the primary's (${primary.capacity})`,
        );
      }
    }
    const ack = options.ack ?? "all";
    let k: number;
    if (ack === "all") k = n;
    else if (ack === "quorum") k = Math.floor(n / 2) + 1;
    else if (typeof ack === "number" && Number.isInteger(ack) && ack >= 1 && ack <= n) k = ack;
    else {
      throw new RangeError(
        `options.ack must be "all", "quorum" or an integer from 1 to ${n} (the member count), got ${String(ack)}`,
      );
    }
    const ext = options.extentSectors ?? 2048;
    if (!Number.isSafeInteger(ext) || ext < 1) {
      throw new RangeError(`options.extentSectors must be a positive integer, got ${ext}`);
    }
    const lag = options.maxLagBytes ?? 64 << 20;
    if (!Number.isSafeInteger(lag) || lag < 0) {
      throw new RangeError(`options.maxLagBytes must be a non-negative integer, got ${lag}`);
    }
    this.members = Object.freeze([...backends]);
    this.ackCount = k;
    this.extentSectors = ext;
    this.capacity = primary.capacity;
    this.blockSize = primary.blockSize;
    this.#maxLag = lag;
    this.#extents = Math.ceil(primary.capacity / ext);
    this.#state = new Uint8Array(n);
    this.#dirty = backends.map(() => new Uint8Array(Math.ceil(this.#extents / 8)));
    this.#dirtyCount = new Uint32Array(n);
    this.#opNew = (resolve, reject) => this.#opStart(resolve, reject);
    this.#epochs = backends.map(() => new Epoch(undefined));
    this.lastErrors = backends.map(() => undefined);
  }

  /** Index of the member reads are served from (-1 when none is healthy). */
  get readMember(): number {
    return this.#source;
  }

  /**
   * State of member `i`.
   * @param i - member index (0 = primary)
   */
  state(i: number): MirrorMemberState {
    return STATE_NAMES[this.#state[i] ?? FAILED]!;
  }

  /**
   * Dirty extents recorded for member `i` (what a resync would copy).
   * @param i - member index
   */
  dirtyExtents(i: number): number {
    return this.#dirtyCount[i] ?? 0;
  }

  /**
   * Mark member `i` failed by hand (e.g. before maintenance): it stops receiving requests and
   * its missed writes are tracked until {@link MirrorBackend.resync}.
   * @param i - member index
   * @param reason - recorded in {@link MirrorBackend.lastErrors}
   * @throws RangeError naming `i`
   */
  markFailed(i: number, reason: unknown = new Error("marked failed")): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.members.length) {
      throw new RangeError(`i must be a member index, got ${i}`);
    }
    this.#fail(i, reason);
  }

  /** @inheritdoc */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let bytes = 0;
    for (const v of iovecs) bytes += v.length;
    if (!sectorRangeFits(sector, bytes, this.capacity)) throw this.#outOfRange(sector);
    for (let attempt = 0; attempt < this.members.length; attempt++) {
      while (this.#gate !== undefined) await this.#gate;
      const src = this.#source;
      if (src < 0) break;
      try {
        await this.members[src]!.read(sector, iovecs);
        return;
      } catch (e) {
        // The range may be unreadable there: have a resync rewrite it.
        this.#markDirty(src, sector, bytes / SECTOR);
        this.#fail(src, e);
        this.stats.readFailovers++;
      }
    }
    throw new BackendError("io", "mirror: no healthy member left to read from", {
      cause: this.lastErrors[0],
    });
  }

  /** @inheritdoc */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let bytes = 0;
    for (const v of iovecs) bytes += v.length;
    if (!sectorRangeFits(sector, bytes, this.capacity)) throw this.#outOfRange(sector);
    // Checked again right before #run, with no await in between (see #run).
    while (this.#locks(sector, bytes / SECTOR)) await this.#lockWait;
    return this.#run(OP_WRITE, sector, bytes / SECTOR, iovecs, bytes, false);
  }

  /** @inheritdoc */
  async discard(sector: number, count: number): Promise<void> {
    if (!this.#countFits(sector, count)) throw this.#outOfRange(sector);
    while (this.#locks(sector, count)) await this.#lockWait;
    return this.#run(OP_DISCARD, sector, count, undefined, 0, false);
  }

  /** @inheritdoc */
  async writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    if (!this.#countFits(sector, count)) throw this.#outOfRange(sector);
    while (this.#locks(sector, count)) await this.#lockWait;
    return this.#run(OP_ZEROES, sector, count, undefined, 0, unmap);
  }

  /** @inheritdoc */
  flush(): Promise<void> {
    return this.#run(OP_FLUSH, 0, 0, undefined, 0, false);
  }

  /**
   * Copy every failed member's dirty extents from the read member, flush it, and make it
   * healthy again. New writes keep flowing meanwhile (those overlapping the extent being copied
   * wait for it). Calls while a resync runs share it.
   * @returns which members rejoined, which failed again, how many extents were copied
   * @throws BackendError "io" (as a rejection) when no healthy member is left to copy from
   */
  resync(): Promise<MirrorResyncResult> {
    if (this.#resync === undefined) {
      this.#resync = this.#doResync().finally(() => {
        this.#resync = undefined;
      });
    }
    return this.#resync;
  }

  async #doResync(): Promise<MirrorResyncResult> {
    const rejoined: number[] = [];
    const stillFailed: number[] = [];
    let copied = 0;
    const E = this.extentSectors;
    let buf: Uint8Array | undefined;
    for (let i = 0; i < this.members.length; i++) {
      if (this.#state[i] !== FAILED) continue;
      this.#state[i] = RESYNCING;
      const target = this.members[i]!;
      const bits = this.#dirty[i]!;
      for (let x = 0; x < this.#extents && this.#state[i] === RESYNCING; x++) {
        if ((bits[x >> 3]! & (1 << (x & 7))) === 0) continue;
        const first = x * E;
        const count = Math.min(E, this.capacity - first);
        buf ??= new Uint8Array(E * SECTOR);
        const view = buf.subarray(0, count * SECTOR);
        let release: () => void = noop;
        this.#lockExtent = x;
        this.#lockWait = new Promise<void>((r) => {
          release = r;
        });
        try {
          for (;;) {
            while (this.#gate !== undefined) await this.#gate;
            const src = this.#source;
            if (src < 0) {
              this.#state[i] = FAILED;
              throw new BackendError("io", "mirror: no healthy member left to resync from");
            }
            // Writes to this extent issued before the lock must land on both sides first.
            await Promise.all([this.#barrier(src), this.#barrier(i)]);
            try {
              await this.members[src]!.read(first, [view]);
            } catch (e) {
              this.#markDirty(src, first, count);
              this.#fail(src, e);
              continue;
            }
            break;
          }
          if (this.#state[i] !== RESYNCING) break;
          bits[x >> 3]! &= ~(1 << (x & 7));
          this.#dirtyCount[i]!--;
          try {
            await target.write(first, [view]);
            copied++;
          } catch (e) {
            this.#markDirty(i, first, count);
            this.#fail(i, e);
          }
        } finally {
          this.#lockExtent = -1;
          this.#lockWait = undefined;
          release();
        }
      }
      if (this.#state[i] === RESYNCING) {
        try {
          await this.#barrier(i);
          if (this.#state[i] !== RESYNCING) throw this.lastErrors[i];
          await target.flush();
        } catch (e) {
          this.#markAll(i);
          this.#fail(i, e);
        }
      }
      if (this.#state[i] === RESYNCING && this.#dirtyCount[i] === 0) {
        this.#state[i] = HEALTHY;
        this.lastErrors[i] = undefined;
        if (this.#source < 0) this.#source = i;
        rejoined.push(i);
      } else {
        this.#state[i] = FAILED;
        stillFailed.push(i);
      }
    }
    return { rejoined, stillFailed, copiedExtents: copied };
  }

  /** Whether the resync lock covers an extent of `[sector, sector + count)`. */
  #locks(sector: number, count: number): boolean {
    if (this.#lockWait === undefined || count === 0) return false;
    const x = this.#lockExtent;
    const E = this.extentSectors;
    return x * E < sector + count && (x + 1) * E > sector;
  }

  /**
   * Issue one write-type operation (or a flush) to every healthy and resyncing member and
   * settle it by the policy. Must run synchronously after the lock check (no await before the
   * members are called), so a resync barrier sees every operation that passed the check.
   */
  #run(
    op: number,
    sector: number,
    count: number,
    iovecs: readonly Uint8Array[] | undefined,
    bytes: number,
    unmap: boolean,
  ): Promise<void> {
    const n = this.members.length;
    const k = this.ackCount;
    let healthy = 0;
    let targets = 0;
    for (let i = 0; i < n; i++) {
      const s = this.#state[i];
      if (s === HEALTHY) healthy++;
      if (s !== FAILED) targets++;
    }
    if (healthy < k || this.#source < 0) {
      this.stats.rejected++;
      return Promise.reject(
        new BackendError(
          "io",
          `mirror: ${healthy} healthy member(s), the policy needs ${k}; nothing was written`,
          { cause: this.lastErrors.find((e) => e !== undefined) },
        ),
      );
    }
    if (op !== OP_FLUSH) {
      for (let i = 0; i < n; i++) if (this.#state[i] === FAILED) this.#markDirty(i, sector, count);
    }
    // A member may outlive the acknowledgement: it must not read guest memory then.
    let early = k < targets;
    let data = iovecs;
    let scratch: Uint8Array | undefined;
    if (early && op === OP_WRITE && iovecs !== undefined) {
      scratch = this.#takeScratch(bytes);
      if (scratch === undefined) early = false;
      else {
        let at = 0;
        for (const v of iovecs) {
          scratch.set(v, at);
          at += v.length;
        }
        data = [scratch];
      }
    }
    const o = this.#ops.pop() ?? this.#makeOp();
    o.op = op;
    o.sector = sector;
    o.count = count;
    o.pending = targets;
    o.okMask = 0;
    o.okHealthy = 0;
    o.settled = false;
    o.early = early;
    o.firstError = undefined;
    o.scratch = scratch;
    this.#opNext = o;
    const promise = new Promise<void>(this.#opNew);
    for (let i = 0; i < n; i++) {
      const state = this.#state[i];
      o.epochs[i] = undefined;
      if (state === FAILED) continue;
      o.counts[i] = state === HEALTHY;
      // A flush waits for the operations issued to this member before it (not for itself).
      const before = op === OP_FLUSH && this.#epochs[i]!.pending > 0 ? this.#barrier(i) : undefined;
      const epoch = this.#epochs[i]!;
      epoch.pending++;
      o.epochs[i] = epoch;
      let p: Promise<void>;
      try {
        const m = this.members[i]!;
        if (op === OP_WRITE) p = m.write(sector, data!);
        else if (op === OP_DISCARD) p = m.discard(sector, count);
        else if (op === OP_ZEROES) p = m.writeZeroes(sector, count, unmap);
        else {
          p =
            before === undefined
              ? m.flush()
              : before.then(() => {
                  if (this.#state[i] === FAILED) throw this.lastErrors[i];
                  return m.flush();
                });
        }
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(o.onOk[i], o.onErr[i]);
    }
    return promise;
  }

  /** The `new Promise` executor of `#run`: keeps the settlers in the op being started. */
  #opStart(resolve: () => void, reject: (e: unknown) => void): void {
    const o = this.#opNext!;
    this.#opNext = undefined;
    o.resolve = resolve;
    o.reject = reject;
  }

  /** A request state with its per-member callbacks (made once, then pooled). */
  #makeOp(): MirrorOp {
    const o = new MirrorOp();
    for (let i = 0; i < this.members.length; i++) {
      o.onOk.push(() => this.#memberOk(o, i));
      o.onErr.push((e) => this.#memberErr(o, i, e));
      o.epochs.push(undefined);
      o.counts.push(false);
    }
    return o;
  }

  #memberOk(o: MirrorOp, i: number): void {
    o.epochs[i]!.done();
    o.pending--;
    // A member that failed meanwhile (another request) still completed this one.
    o.okMask |= 1 << i;
    if (o.counts[i]) o.okHealthy++;
    this.#settle(o);
  }

  #memberErr(o: MirrorOp, i: number, e: unknown): void {
    o.epochs[i]!.done();
    o.pending--;
    o.firstError ??= e;
    if (o.op === OP_FLUSH) this.#markAll(i);
    else this.#markDirty(i, o.sector, o.count);
    this.#fail(i, e);
    this.#settle(o);
  }

  /** Settle `o` by the policy once it can be; recycle it when every member has answered. */
  #settle(o: MirrorOp): void {
    const src = this.#source;
    const srcOk = src >= 0 && (o.okMask & (1 << src)) !== 0;
    if (!o.settled && (o.early || o.pending === 0)) {
      if (o.okHealthy >= this.ackCount && srcOk) {
        o.settled = true;
        if (o.pending > 0) this.stats.earlyAcks++;
        o.resolve();
      } else if (o.pending === 0 || this.#source < 0) {
        o.settled = true;
        this.stats.rejected++;
        o.reject(
          new BackendError("io", "mirror: too few members completed the request", {
            cause: o.firstError,
          }),
        );
      }
    }
    if (o.pending === 0) {
      if (o.scratch !== undefined) this.#giveScratch(o.scratch);
      o.scratch = undefined;
      o.resolve = noop;
      o.reject = noop;
      o.firstError = undefined;
      this.#ops.push(o);
    }
  }

  /** Close member `i`'s epoch: resolves when everything issued to it so far has settled. */
  #barrier(i: number): Promise<void> {
    const old = this.#epochs[i]!;
    const done = old.close();
    this.#epochs[i] = new Epoch(done);
    return done;
  }

  #fail(i: number, e: unknown): void {
    this.lastErrors[i] = e;
    if (this.#state[i] === FAILED) return;
    this.#state[i] = FAILED;
    if (i !== this.#source) return;
    let next = -1;
    for (let j = 0; j < this.members.length; j++) {
      if (this.#state[j] === HEALTHY) {
        next = j;
        break;
      }
    }
    this.#source = next;
    if (next < 0) return;
    // Reads wait until writes already issued to the new read member have landed there.
    const gate = this.#barrier(next).then(() => {
      if (this.#gate === gate) this.#gate = undefined;
    });
    this.#gate = gate;
  }

  #markDirty(i: number, sector: number, count: number): void {
    if (count <= 0) return;
    const E = this.extentSectors;
    const bits = this.#dirty[i]!;
    const last = Math.min(Math.floor((sector + count - 1) / E), this.#extents - 1);
    for (let x = Math.floor(sector / E); x <= last; x++) {
      const m = 1 << (x & 7);
      if ((bits[x >> 3]! & m) === 0) {
        bits[x >> 3]! |= m;
        this.#dirtyCount[i]!++;
      }
    }
  }

  #markAll(i: number): void {
    this.#markDirty(i, 0, this.capacity);
  }

  #takeScratch(bytes: number): Uint8Array | undefined {
    const list = this.#pool.get(bytes);
    const pooled = list?.pop();
    if (pooled !== undefined) {
      this.#pooled -= bytes;
      this.#lag += bytes;
      return pooled;
    }
    if (this.#lag + this.#pooled + bytes > this.#maxLag) {
      // Drop pooled buffers of other sizes before giving up.
      if (this.#lag + bytes > this.#maxLag) return undefined;
      this.#pool.clear();
      this.#pooled = 0;
    }
    this.#lag += bytes;
    return new Uint8Array(bytes);
  }

  #giveScratch(buf: Uint8Array): void {
    this.#lag -= buf.length;
    let list = this.#pool.get(buf.length);
    if (list === undefined) {
      list = [];
      this.#pool.set(buf.length, list);
    }
    list.push(buf);
    this.#pooled += buf.length;
  }

  #countFits(sector: number, count: number): boolean {
    return (
      Number.isSafeInteger(sector) &&
      Number.isSafeInteger(count) &&
      sector >= 0 &&
      count >= 0 &&
      sector <= this.capacity &&
      count <= this.capacity - sector
    );
  }

  #outOfRange(sector: number): BackendError {
    return new BackendError(
      "out-of-range",
      `mirror: request at sector ${sector} passes capacity ${this.capacity}`,
    );
  }
}

/**
 * Replicate one disk onto several back-ends (see {@link MirrorBackend}).
 * @param backends - primary first, then replicas
 * @param options - acknowledgement policy (`"all"` by default), extent size, lag budget
 * @throws RangeError / TypeError naming the bad argument (see {@link MirrorBackend})
 * @example
 * ```ts
 * const disk = mirror([local, remoteA, remoteB], { ack: "quorum" });
 * // later, after remoteB came back:
 * const { rejoined } = await disk.resync();
 * ```
 */
export function mirror(
  backends: readonly BlockBackend[],
  options: MirrorOptions = {},
): MirrorBackend {
  return new MirrorBackend(backends, options);
}

function noop(): void {}
