import { BackendError, type BlockBackend } from "@virtio-ts/devices";
import type { BlockWrapper } from "./compose.js";
import { checkPositive, type RateClock, systemClock, TokenBucket } from "./token-bucket.js";

/** Options of a {@link RateLimitGroup}. At least one of the two rates is required. */
export interface RateLimitGroupOptions {
  /** Data bytes per second shared by the group (reads, writes, write-zeroes ranges). */
  readonly bytesPerSecond?: number;
  /** Requests per second shared by the group (every request counts one). */
  readonly opsPerSecond?: number;
  /** Byte bucket size. Default a tenth of a second's worth, at least 64 KiB. */
  readonly burstBytes?: number;
  /** Request bucket size. Default a tenth of a second's worth, at least 1. */
  readonly burstOps?: number;
  /**
   * Bytes a member of weight 1 may send per scheduling round (the deficit-round-robin quantum).
   * Smaller is fairer at a finer grain, larger costs fewer rounds. Default 64 KiB.
   */
  readonly quantumBytes?: number;
  /**
   * Requests each member may have waiting for tokens (the queue bound); more are rejected with
   * `BackendError` "io". Default 32768, the largest virtqueue, so a device whose in-flight
   * requests are bounded by its queue never reaches it.
   */
  readonly maxQueued?: number;
  /** Time source (default {@link systemClock}); tests inject a fake one. */
  readonly clock?: RateClock;
}

/** Options of one member of a {@link RateLimitGroup}. */
export interface RateLimitOptions {
  /** Share of the group relative to the other members' weights (default 1, finite > 0). */
  readonly weight?: number;
}

/** Counters of a {@link RateLimitedBackend} (mutated in place). */
export interface RateLimitStats {
  /** Requests passed to the inner back-end. */
  ops: number;
  /** Bytes charged for them. */
  bytes: number;
  /** Requests that had to wait for tokens or for their turn. */
  throttled: number;
  /** Requests rejected because the member's queue was full. */
  rejected: number;
}

/** A waiting request: its charge and the resolver that lets it through. */
interface Ticket {
  bytes: number;
  cost: number;
  resolve: () => void;
}

/** One member's bounded FIFO of tickets (a ring that grows by doubling up to the bound). */
class TicketQueue {
  #buf: (Ticket | undefined)[] = new Array(8);
  #head = 0;
  length = 0;

  push(t: Ticket): void {
    if (this.length === this.#buf.length) {
      const old = this.#buf;
      const next: (Ticket | undefined)[] = new Array(old.length * 2);
      for (let i = 0; i < this.length; i++) next[i] = old[(this.#head + i) % old.length];
      this.#buf = next;
      this.#head = 0;
    }
    this.#buf[(this.#head + this.length) % this.#buf.length] = t;
    this.length++;
  }

  peek(): Ticket | undefined {
    return this.length === 0 ? undefined : this.#buf[this.#head];
  }

  shift(): Ticket | undefined {
    if (this.length === 0) return undefined;
    const t = this.#buf[this.#head];
    this.#buf[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#buf.length;
    this.length--;
    return t;
  }
}

/** @internal Scheduling state of one member, owned by its group. */
class Member {
  readonly queue = new TicketQueue();
  readonly quantum: number;
  deficit = 0;
  turnStarted = false;
  active = false;

  constructor(quantum: number) {
    this.quantum = quantum;
  }
}

/**
 * A budget of bytes/s and requests/s shared by several block devices (each device's back-end
 * wrapped with {@link rateLimit}), so that one busy guest cannot monopolize a disk or a link.
 *
 * - **Buckets.** One {@link TokenBucket} for bytes and one for requests; a request passes when
 *   both can pay for it (read / write: its data length and 1 request; write-zeroes: its range
 *   in bytes and 1 request; flush and discard: 1 request, no bytes).
 * - **Fairness.** Requests that cannot pass at once wait in their member's FIFO; the group serves
 *   the FIFOs by **deficit round robin** (Shreedhar & Varghese 1995): each round a backlogged
 *   member earns `weight × quantum` of credit, spends it on its oldest requests, and gives the
 *   turn to the next member. The credit is measured in bucket time (a request costs
 *   `max(bytes / bytesPerSecond, 1 / opsPerSecond)` seconds), so members get the bottleneck
 *   resource in proportion to their weights whatever their request sizes.
 * - **Work-conserving.** Only backlogged members take part in a round, so an idle member's share
 *   goes to the busy ones; a member that is behind never banks credit while idle.
 * - **Fast path.** When nothing is waiting anywhere in the group and the buckets can pay, a
 *   request passes straight through without allocating; otherwise it waits (one promise).
 * - **Bounds.** At most `maxQueued` waiting requests per member; one timer per group.
 *
 * Requests are charged when they pass, not when they complete; a failing inner request is not
 * refunded.
 *
 * @example
 * ```ts
 * const group = new RateLimitGroup({ bytesPerSecond: 100 << 20, opsPerSecond: 5000 });
 * const a = new BlkDevice(rateLimit(group)(diskA));
 * const b = new BlkDevice(rateLimit(group, { weight: 2 })(diskB)); // twice a's share
 * ```
 */
export class RateLimitGroup {
  /** The byte bucket, if bytes are limited. */
  readonly bytes: TokenBucket | undefined;
  /** The request bucket, if requests are limited. */
  readonly ops: TokenBucket | undefined;
  /** Waiting requests allowed per member. */
  readonly maxQueued: number;
  readonly #clock: RateClock;
  readonly #quantum: number;
  /** Seconds per byte and per request (0 when unlimited): the DRR cost of a request. */
  readonly #secPerByte: number;
  readonly #secPerOp: number;
  /** Backlogged members in round order; `#cur` is the one whose turn it is. */
  readonly #active: Member[] = [];
  #cur = 0;
  #timer: unknown = undefined;
  readonly #onTimer = (): void => {
    this.#timer = undefined;
    this.#pump();
  };

  /**
   * @param options - rates, bursts, quantum, queue bound, clock
   * @throws TypeError when neither rate is given; RangeError naming the option that is not a
   *   finite positive number (`options.maxQueued`: a positive integer)
   */
  constructor(options: RateLimitGroupOptions) {
    const { bytesPerSecond: bps, opsPerSecond: ops } = options;
    if (bps === undefined && ops === undefined) {
      throw new TypeError("options must set bytesPerSecond or opsPerSecond");
    }
    this.#clock = options.clock ?? systemClock;
    let quantum = 0;
    if (bps !== undefined) {
      checkPositive("options.bytesPerSecond", bps);
      const burst = options.burstBytes ?? Math.max(bps / 10, 65536);
      checkPositive("options.burstBytes", burst);
      this.bytes = new TokenBucket(bps, burst, this.#clock);
      const qb = options.quantumBytes ?? 65536;
      checkPositive("options.quantumBytes", qb);
      quantum = qb / bps;
    }
    if (ops !== undefined) {
      checkPositive("options.opsPerSecond", ops);
      const burst = options.burstOps ?? Math.max(ops / 10, 1);
      checkPositive("options.burstOps", burst);
      this.ops = new TokenBucket(ops, burst, this.#clock);
      quantum = Math.max(quantum, 1 / ops);
    }
    this.#secPerByte = bps === undefined ? 0 : 1 / bps;
    this.#secPerOp = ops === undefined ? 0 : 1 / ops;
    this.#quantum = quantum;
    const mq = options.maxQueued ?? 32768;
    if (!Number.isSafeInteger(mq) || mq < 1) {
      throw new RangeError(`options.maxQueued must be a positive integer, got ${mq}`);
    }
    this.maxQueued = mq;
  }

  /**
   * Wrap `inner` as a new member of this group.
   * @param inner - the device's back-end
   * @param options - weight
   * @throws RangeError naming `options.weight`
   */
  member(inner: BlockBackend, options: RateLimitOptions = {}): RateLimitedBackend {
    return new RateLimitedBackend(this, inner, options);
  }

  /** @internal */
  _newMember(weight: number): Member {
    return new Member(weight * this.#quantum);
  }

  /**
   * @internal Pass now (true) if nothing waits and the buckets can pay, charging them.
   */
  _tryPass(bytes: number): boolean {
    if (this.#active.length > 0 || this.#wait(bytes) > 0) return false;
    this.#charge(bytes);
    return true;
  }

  /** @internal Queue a ticket for `m` and run the scheduler; false if the queue is full. */
  _enqueue(m: Member, t: Ticket): boolean {
    if (m.queue.length >= this.maxQueued) return false;
    t.cost = Math.max(t.bytes * this.#secPerByte, this.#secPerOp);
    m.queue.push(t);
    if (!m.active) {
      m.active = true;
      m.deficit = 0;
      m.turnStarted = false;
      // Join at the end of the round: just before the member whose turn it is.
      this.#active.splice(this.#cur, 0, m);
      this.#cur = (this.#cur + 1) % this.#active.length;
    }
    this.#pump();
    return true;
  }

  /** Milliseconds until both buckets can pay for `bytes` and one request. */
  #wait(bytes: number): number {
    const a = this.bytes?.msUntil(bytes) ?? 0;
    const b = this.ops?.msUntil(1) ?? 0;
    return Math.max(a, b);
  }

  #charge(bytes: number): void {
    this.bytes?.take(bytes);
    this.ops?.take(1);
  }

  /** Deficit round robin over the backlogged members, gated by the buckets. */
  #pump(): void {
    if (this.#timer !== undefined) return;
    const act = this.#active;
    while (act.length > 0) {
      if (this.#cur >= act.length) this.#cur = 0;
      const m = act[this.#cur]!;
      if (!m.turnStarted) {
        m.turnStarted = true;
        // Alone in the group, a request needing many rounds of credit gets it at once.
        m.deficit += act.length === 1 ? Math.max(m.quantum, m.queue.peek()!.cost) : m.quantum;
      }
      for (let t = m.queue.peek(); t !== undefined; t = m.queue.peek()) {
        if (t.cost > m.deficit * (1 + 1e-9)) break;
        const wait = this.#wait(t.bytes);
        if (wait > 0) {
          this.#timer = this.#clock.setTimer(wait, this.#onTimer);
          return;
        }
        this.#charge(t.bytes);
        m.deficit -= t.cost;
        m.queue.shift();
        t.resolve();
      }
      m.turnStarted = false;
      if (m.queue.length === 0) {
        m.active = false;
        m.deficit = 0;
        act.splice(this.#cur, 1);
      } else {
        this.#cur++;
      }
    }
    this.#cur = 0;
  }
}

/**
 * A {@link BlockBackend} whose requests pass through a {@link RateLimitGroup} before reaching
 * `inner`. Capacity, block size and read-only flag are the inner ones.
 */
export class RateLimitedBackend implements BlockBackend {
  /** The group this member belongs to. */
  readonly group: RateLimitGroup;
  /** The wrapped back-end. */
  readonly inner: BlockBackend;
  /** This member's weight. */
  readonly weight: number;
  /** Counters. */
  readonly stats: RateLimitStats = { ops: 0, bytes: 0, throttled: 0, rejected: 0 };
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  readonly #m: Member;

  /**
   * Prefer {@link rateLimit} or {@link RateLimitGroup.member}.
   * @param group - the shared budget
   * @param inner - the back-end to protect
   * @param options - weight
   * @throws RangeError naming `options.weight`
   */
  constructor(group: RateLimitGroup, inner: BlockBackend, options: RateLimitOptions = {}) {
    const w = options.weight ?? 1;
    checkPositive("options.weight", w);
    this.group = group;
    this.inner = inner;
    this.weight = w;
    this.capacity = inner.capacity;
    this.blockSize = inner.blockSize;
    this.readOnly = inner.readOnly;
    this.#m = group._newMember(w);
  }

  /** @inheritdoc */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    await this.#admit(total(iovecs));
    return this.inner.read(sector, iovecs);
  }

  /** @inheritdoc */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    await this.#admit(total(iovecs));
    return this.inner.write(sector, iovecs);
  }

  /** @inheritdoc */
  async flush(): Promise<void> {
    await this.#admit(0);
    return this.inner.flush();
  }

  /** @inheritdoc */
  async discard(sector: number, count: number): Promise<void> {
    await this.#admit(0);
    return this.inner.discard(sector, count);
  }

  /** @inheritdoc */
  async writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    await this.#admit(count * 512);
    return this.inner.writeZeroes(sector, count, unmap);
  }

  /** Resolves when the request may pass (at once, without a promise, on the fast path). */
  #admit(bytes: number): Promise<void> | undefined {
    const s = this.stats;
    s.ops++;
    s.bytes += bytes;
    if (this.group._tryPass(bytes)) return undefined;
    s.throttled++;
    return new Promise<void>((resolve, reject) => {
      if (!this.group._enqueue(this.#m, { bytes, cost: 0, resolve })) {
        s.ops--;
        s.bytes -= bytes;
        s.throttled--;
        s.rejected++;
        reject(
          new BackendError(
            "io",
            `rate limiter: ${this.group.maxQueued} requests already waiting for this device`,
          ),
        );
      }
    });
  }
}

/**
 * A wrapper for {@link compose}: `rateLimit(group, { weight })(inner)` makes `inner` a member
 * of `group` (see {@link RateLimitGroup}).
 * @param group - the shared budget
 * @param options - this member's weight (default 1)
 * @throws TypeError naming `group`; RangeError naming `options.weight`
 */
export function rateLimit(group: RateLimitGroup, options: RateLimitOptions = {}): BlockWrapper {
  if (!(group instanceof RateLimitGroup)) throw new TypeError("group must be a RateLimitGroup");
  checkPositive("options.weight", options.weight ?? 1);
  return (inner) => new RateLimitedBackend(group, inner, options);
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}
