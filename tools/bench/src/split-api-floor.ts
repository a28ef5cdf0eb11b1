// The floor of the split-ring *API*: the library's calls (add with segment objects, publish,
// reap; pop into a DescriptorChain, use / push, needsInterrupt), with the checks the library
// makes on them (host arguments: token, segment objects and values, total length; guest input:
// used and avail index jumps, head range, in-flight state, loops, chain length, readable after
// writable, bounds, total, next; used id, published state and length), written as lean as we
// know how for exactly what the bench runs: direct chains, VIRTIO_F_EVENT_IDX, no indirect
// tables, no IN_ORDER, no suspend / resume, no options, plain Errors.
//
// split-floor.ts prices the work with no API at all (one hand-inlined function); this prices
// the API shape itself. What separates the library from this row is its features; what separates
// this row from split-floor.ts is calls, objects and per-call state, which any implementation of
// these calls pays in V8. Not a queue anyone should use.
import type { GuestMemory } from "@virtio-ts/memory";
import type {
  DescriptorChain,
  DeviceQueue,
  DriverQueue,
  QueueLayout,
  Segment,
} from "@virtio-ts/virtqueue";

const TWO_32 = 4294967296;

/**
 * The split ring's four views (as the library's `mapSplitRing` lays them out): each side maps
 * what it writes with "write" access and the rest with "read".
 */
function ringViews(mem: GuestMemory, layout: QueueLayout, side: "driver" | "device") {
  const size = layout.size;
  const drv = side === "driver" ? "write" : "read";
  const dev = side === "driver" ? "read" : "write";
  return {
    desc: mem.u32View(layout.desc, 4 * size, drv),
    avail: mem.u16View(layout.driver, 3 + size, drv),
    used16: mem.u16View(layout.device, 3 + 4 * size, dev),
    used32: mem.u32View(layout.device + 4, 2 * size, dev),
  };
}

/** Driver side of the API floor (see the file comment). */
export class ApiFloorDriver implements DriverQueue<number> {
  readonly size: number;
  readonly #mask: number;
  readonly #desc: Uint32Array;
  readonly #avail: Uint16Array;
  readonly #used16: Uint16Array;
  readonly #used32: Uint32Array;
  readonly #availEventAt: number;
  readonly #usedEventAt: number;
  readonly #next: Uint16Array;
  readonly #descCount: Uint16Array;
  readonly #writable: Uint32Array;
  readonly #inFlight: Uint8Array;
  /** The publish generation each head was added in (published once the generation moved on). */
  readonly #addedIn: Float64Array;
  #generation = 0;
  readonly #tokens: (number | undefined)[];
  #freeHead = 0;
  #numFree: number;
  #availIdx = 0;
  #publishedIdx = 0;
  #lastUsed = 0;
  #shadowUsed = 0;
  #lastLen = 0;

  /** Map the ring (driver access) and zero it. */
  constructor(mem: GuestMemory, layout: QueueLayout) {
    const size = layout.size;
    this.size = size;
    this.#mask = size - 1;
    const v = ringViews(mem, layout, "driver");
    this.#desc = v.desc;
    this.#avail = v.avail;
    this.#used16 = v.used16;
    this.#used32 = v.used32;
    this.#availEventAt = 2 + 4 * size;
    this.#usedEventAt = 2 + size;
    this.#next = new Uint16Array(size);
    this.#descCount = new Uint16Array(size);
    this.#writable = new Uint32Array(size);
    this.#inFlight = new Uint8Array(size);
    this.#addedIn = new Float64Array(size);
    this.#tokens = new Array<number | undefined>(size).fill(undefined);
    this.#numFree = size;
    this.reset();
  }

  get numFree(): number {
    return this.#numFree;
  }

  get lastLen(): number {
    return this.#lastLen;
  }

  add(readable: readonly Segment[], writable: readonly Segment[], token: number): boolean {
    const nr = readable.length;
    const n = nr + writable.length;
    if (token === undefined || n === 0) throw new RangeError("token or segments missing");
    if (n > this.#numFree) return false;
    const desc = this.#desc;
    const next = this.#next;
    const head = this.#freeHead;
    let idx = head;
    let last = head;
    let total = 0;
    let writableBytes = 0;
    for (let i = 0; i < n; i++) {
      const s = i < nr ? readable[i] : writable[i - nr];
      if (typeof s !== "object" || s === null) throw new TypeError("segment is not an object");
      const addr = s.addr;
      const len = s.len;
      if (
        !(typeof addr === "number" && addr >= 0 && Number.isSafeInteger(addr)) ||
        !(typeof len === "number" && len >>> 0 === len)
      ) {
        throw new RangeError("segment addr or len out of range");
      }
      total += len;
      if (i >= nr) writableBytes += len;
      last = idx;
      idx = next[idx]!;
      const w = last * 4;
      desc[w] = addr;
      desc[w + 1] = addr > 0xffffffff ? Math.floor(addr / TWO_32) : 0;
      desc[w + 2] = len;
      desc[w + 3] = ((i < nr ? 1 : 3) | (idx << 16)) >>> 0; // NEXT, WRITE
    }
    desc[last * 4 + 3] = n > nr ? 2 : 0;
    if (total >= TWO_32) throw new RangeError("chain of 2^32 bytes or more");
    this.#freeHead = idx;
    this.#numFree -= n;
    this.#descCount[head] = n;
    this.#writable[head] = writableBytes;
    this.#tokens[head] = token;
    this.#inFlight[head] = 1;
    const pos = this.#availIdx;
    this.#avail[2 + (pos & this.#mask)] = head;
    this.#addedIn[head] = this.#generation;
    this.#availIdx = (pos + 1) & 0xffff;
    return true;
  }

  publish(): boolean {
    const newIdx = this.#availIdx;
    const old = this.#publishedIdx;
    if (newIdx === old) return false;
    this.#publishedIdx = newIdx;
    this.#generation++;
    Atomics.store(this.#avail, 1, newIdx);
    const event = Atomics.load(this.#used16, this.#availEventAt);
    return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
  }

  reap(): number | undefined {
    const last = this.#lastUsed;
    if (last === this.#shadowUsed) {
      const usedIdx = Atomics.load(this.#used16, 1);
      const pending = (usedIdx - last) & 0xffff;
      if (pending === 0) return undefined;
      if (pending > this.size) throw new Error("used index jump");
      this.#shadowUsed = usedIdx;
    }
    const slot = (last & this.#mask) << 1;
    const id = this.#used32[slot]!;
    const len = this.#used32[slot + 1]!;
    if (id >= this.size || this.#inFlight[id] !== 1 || this.#addedIn[id] === this.#generation) {
      throw new Error("used id not in flight");
    }
    if (len > this.#writable[id]!) throw new Error("used length too large");
    const token = this.#tokens[id];
    this.#tokens[id] = undefined;
    const count = this.#descCount[id]!;
    const next = this.#next;
    let tail = id;
    for (let i = count - 1; i > 0; i--) tail = next[tail]!;
    next[tail] = this.#freeHead;
    this.#freeHead = id;
    this.#numFree += count;
    this.#inFlight[id] = 0;
    const after = (last + 1) & 0xffff;
    this.#lastUsed = after;
    this.#lastLen = len;
    if (after === this.#shadowUsed) Atomics.store(this.#avail, this.#usedEventAt, after);
    return token;
  }

  enableInterrupts(): boolean {
    Atomics.store(this.#avail, this.#usedEventAt, this.#lastUsed);
    return Atomics.load(this.#used16, 1) !== this.#lastUsed;
  }

  disableInterrupts(): void {
    Atomics.store(this.#avail, this.#usedEventAt, (this.#lastUsed - 1) & 0xffff);
  }

  reset(): void {
    this.#desc.fill(0);
    this.#avail.fill(0);
    this.#used16.fill(0);
    this.#used32.fill(0);
    for (let i = 0; i < this.size; i++) this.#next[i] = i + 1;
    this.#inFlight.fill(0);
    this.#tokens.fill(undefined);
    this.#freeHead = 0;
    this.#numFree = this.size;
    this.#availIdx = 0;
    this.#publishedIdx = 0;
    this.#lastUsed = 0;
    this.#shadowUsed = 0;
  }
}

/** What the bench's device side calls. */
export type BenchDeviceQueue = Pick<
  DeviceQueue,
  "pop" | "push" | "use" | "needsInterrupt" | "enableNotifications" | "disableNotifications"
>;

/** Device side of the API floor (see the file comment). */
export class ApiFloorDevice implements BenchDeviceQueue {
  readonly size: number;
  readonly #mask: number;
  readonly #desc: Uint32Array;
  readonly #avail: Uint16Array;
  readonly #used16: Uint16Array;
  readonly #used32: Uint32Array;
  readonly #availEventAt: number;
  readonly #usedEventAt: number;
  readonly #inFlight: Uint8Array;
  readonly #writable: Uint32Array;
  readonly #visited: Uint32Array;
  readonly #rangeStart: number;
  readonly #rangeEnd: number;
  #epoch = 0;
  #lastAvail = 0;
  #shadowAvail = 0;
  #usedIdx = 0;
  #publishedUsed = 0;
  #signalled = 0;
  #signalledValid = false;
  #notify = true;

  /** Map the ring (device access); memory without a stable range is refused. */
  constructor(mem: GuestMemory, layout: QueueLayout) {
    const size = layout.size;
    this.size = size;
    this.#mask = size - 1;
    const v = ringViews(mem, layout, "device");
    this.#desc = v.desc;
    this.#avail = v.avail;
    this.#used16 = v.used16;
    this.#used32 = v.used32;
    this.#availEventAt = 2 + 4 * size;
    this.#usedEventAt = 2 + size;
    this.#inFlight = new Uint8Array(size);
    this.#writable = new Uint32Array(size);
    this.#visited = new Uint32Array(size);
    const range = mem.stableRange;
    if (range === undefined) throw new RangeError("the API floor needs memory with a stable range");
    this.#rangeStart = range.start;
    this.#rangeEnd = range.end;
  }

  pop(chain: DescriptorChain): boolean {
    const size = this.size;
    const last = this.#lastAvail;
    if (last === this.#shadowAvail) {
      const availIdx = Atomics.load(this.#avail, 1);
      const pending = (availIdx - last) & 0xffff;
      if (pending === 0) return false;
      if (pending > size) throw new Error("avail index jump");
      this.#shadowAvail = availIdx;
    }
    const head = this.#avail[2 + (last & this.#mask)]!;
    const after = (last + 1) & 0xffff;
    this.#lastAvail = after;
    if (this.#notify && after === this.#shadowAvail) {
      Atomics.store(this.#used16, this.#availEventAt, after);
    }
    if (head >= size || this.#inFlight[head] === 1) throw new Error("bad head");
    this.#inFlight[head] = 1;
    const desc = this.#desc;
    let budget = chain.capacity;
    if (budget > size) budget = size;
    const visited = this.#visited;
    let epoch = (this.#epoch + 1) >>> 0;
    if (epoch === 0) {
      visited.fill(0);
      epoch = 1;
    }
    this.#epoch = epoch;
    const addrs = chain.addrs;
    const lens = chain.lens;
    const rangeStart = this.#rangeStart;
    const rangeEnd = this.#rangeEnd;
    let count = 0;
    let readableCount = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let idx = head;
    for (;;) {
      if (visited[idx] === epoch) throw new Error("loop");
      visited[idx] = epoch;
      const w = idx << 2;
      const addr = desc[w + 1]! * TWO_32 + desc[w]!;
      const len = desc[w + 2]!;
      const fn = desc[w + 3]!;
      if ((fn & 4) !== 0) throw new Error("indirect");
      const writable = (fn & 2) !== 0;
      if (!writable && count !== readableCount) throw new Error("readable after writable");
      if (count >= budget) throw new Error("too long");
      if (!(addr >= rangeStart && len <= rangeEnd - addr)) throw new Error("out of bounds");
      addrs[count] = addr;
      lens[count] = len;
      count++;
      if (writable) writableBytes += len;
      else {
        readableCount++;
        readableBytes += len;
      }
      if (readableBytes + writableBytes > 0xffffffff) throw new Error("total");
      if ((fn & 1) === 0) break;
      if (fn >>> 16 >= size) throw new Error("next");
      idx = fn >>> 16;
    }
    chain.begin(head);
    chain.setTotals(count, readableCount, readableBytes, writableBytes);
    this.#writable[head] = writableBytes;
    return true;
  }

  use(head: number, written: number): void {
    if (
      !(typeof head === "number" && head >>> 0 === head && head < this.size) ||
      this.#inFlight[head] !== 1 ||
      !(typeof written === "number" && written >>> 0 === written) ||
      written > this.#writable[head]!
    ) {
      throw new RangeError("head or written out of range");
    }
    this.#inFlight[head] = 0;
    const usedIdx = this.#usedIdx;
    const slot = (usedIdx & this.#mask) << 1;
    this.#used32[slot] = head;
    this.#used32[slot + 1] = written;
    this.#usedIdx = (usedIdx + 1) & 0xffff;
  }

  push(head: number, written: number): void {
    this.use(head, written);
    this.#publishUsed();
  }

  #publishUsed(): void {
    this.#publishedUsed = this.#usedIdx;
    Atomics.store(this.#used16, 1, this.#usedIdx);
  }

  needsInterrupt(): boolean {
    const now = this.#usedIdx;
    if (this.#publishedUsed !== now) this.#publishUsed();
    const old = this.#signalled;
    const valid = this.#signalledValid;
    this.#signalled = now;
    this.#signalledValid = true;
    if (now === old) return false;
    const event = Atomics.load(this.#avail, this.#usedEventAt);
    return !valid || ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  enableNotifications(): boolean {
    this.#notify = true;
    Atomics.store(this.#used16, this.#availEventAt, this.#lastAvail);
    return Atomics.load(this.#avail, 1) !== this.#lastAvail;
  }

  disableNotifications(): void {
    this.#notify = false;
  }
}
