/**
 * The in-memory index of a {@link SnapshotLog}: which log record holds the newest data of each
 * sector, as sorted, non-overlapping extents. Internal (not exported from the package).
 */

/** One run of sectors `[start, end)` whose newest data is at log byte `off` (or zeroes). */
export interface Extent {
  /** First sector. */
  start: number;
  /** One past the last sector. */
  end: number;
  /** Log byte offset of sector `start`'s data; −1 when the run reads as zeroes. */
  off: number;
  /** Sequence number of the record that wrote it (a newer record wins). */
  seq: number;
}

/** One record as {@link ExtentMap.build} takes it. */
export interface LogExtentRecord {
  /** First sector. */
  readonly sector: number;
  /** Sectors (at least 1). */
  readonly count: number;
  /** Log byte offset of the data; −1 for zeroes. */
  readonly off: number;
  /** Sequence number (distinct per record; a higher one wins). */
  readonly seq: number;
}

/** Extents per chunk, normally; a chunk is split when it passes twice this. */
const CHUNK = 512;

/**
 * Sorted extents with sequence-aware insertion: records can complete out of order (writes are
 * concurrent), so an insert only replaces the parts of older records and leaves any part a
 * newer record already covers. Memory is one small object per extent: at most 2 + (number of
 * records) extents, usually far fewer (overwrites merge away).
 *
 * The extents live in chunks of a few hundred (a two-level sorted list), so an insert costs
 * O(log n + chunk size) rather than moving every later extent: with one flat array, a guest
 * writing random sectors made each write O(n) and a long log quadratic to build.
 */
export class ExtentMap {
  /** Non-empty chunks; their concatenation is sorted by `start`. */
  #chunks: Extent[][] = [];
  #size = 0;

  /** Number of extents. */
  get size(): number {
    return this.#size;
  }

  /** Forget everything. */
  clear(): void {
    this.#chunks = [];
    this.#size = 0;
  }

  /** Every extent, in order (a new array: for tests and for committing). */
  toArray(): Extent[] {
    return this.#chunks.flat();
  }

  /**
   * The extent that holds all of sectors `[from, to)` (`from < to`), or undefined when none
   * does (the range is not in the map, or spans several extents): the common case of a read,
   * answered without building a list.
   */
  covering(from: number, to: number): Extent | undefined {
    const x = this.first(from);
    return x !== undefined && x.start <= from && x.end >= to ? x : undefined;
  }

  /**
   * The first extent that ends after sector `from`, or undefined: a range `[from, to)` touches
   * no extent when this is undefined or starts at `to` or later, and lies in one extent when
   * this holds it whole (what a read needs to know, from one lookup).
   */
  first(from: number): Extent | undefined {
    const [c, i] = this.#find(from);
    return this.#chunks[c]?.[i];
  }

  /**
   * The extents that overlap sectors `[from, to)`, in order: a snapshot, so a caller that
   * awaits between them is not disturbed by inserts meanwhile.
   */
  overlapping(from: number, to: number): Extent[] {
    const out: Extent[] = [];
    const ch = this.#chunks;
    let [c, i] = this.#find(from);
    for (; c < ch.length; c++, i = 0) {
      const chunk = ch[c]!;
      for (; i < chunk.length; i++) {
        const x = chunk[i]!;
        if (x.start >= to) return out;
        out.push(x);
      }
    }
    return out;
  }

  /**
   * Replace the contents with the extents of `records` (in any order; a higher `seq` wins where
   * they overlap): the same result as inserting them one by one, in O(n log n). Used when
   * opening a log, where every record is known at once.
   *
   * A sweep over the records sorted by start sector, with a max-heap (by `seq`) of the records
   * covering the current sector; the heap's top owns each stretch until it ends or a record
   * starts. Records that ended are popped lazily, when they reach the top.
   */
  build(records: readonly LogExtentRecord[]): void {
    const l: Extent[] = [];
    const n = records.length;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => records[a]!.sector - records[b]!.sector);
    const heap = new RecordHeap(records);
    const end = (r: number): number => records[r]!.sector + records[r]!.count;
    let i = 0;
    let pos = 0;
    for (;;) {
      while (heap.size > 0 && end(heap.top()) <= pos) heap.pop();
      if (heap.size === 0) {
        if (i >= n) break;
        pos = Math.max(pos, records[order[i]!]!.sector);
      }
      while (i < n && records[order[i]!]!.sector <= pos) {
        const r = order[i++]!;
        if (end(r) > pos) heap.push(r);
      }
      while (heap.size > 0 && end(heap.top()) <= pos) heap.pop();
      if (heap.size === 0) continue;
      const r = records[heap.top()]!;
      const next = Math.min(r.sector + r.count, i < n ? records[order[i]!]!.sector : Infinity);
      const off = r.off < 0 ? -1 : r.off + (pos - r.sector) * 512;
      push(l, { start: pos, end: next, off, seq: r.seq });
      pos = next;
    }
    this.#chunks = [];
    for (let at = 0; at < l.length; at += CHUNK) this.#chunks.push(l.slice(at, at + CHUNK));
    this.#size = l.length;
  }

  /**
   * Record that sectors `[start, start + count)` now hold the data at log offset `off` (−1:
   * zeroes), written by record `seq`.
   */
  insert(start: number, count: number, off: number, seq: number): void {
    if (count <= 0) return;
    const end = start + count;
    const ch = this.#chunks;
    let [c0, i0] = this.#find(start);
    // A record that rewrites exactly one extent's sectors (a guest rewriting a block): replace
    // that extent, or keep it if a newer record wrote it. The general path below gives the same
    // extents, with a list of pieces and a splice. A new object, not a change to the old one:
    // lists handed out by `overlapping` keep what they held.
    const same = ch[c0]?.[i0];
    if (same !== undefined && same.start === start && same.end === end) {
      if (same.seq < seq) ch[c0]![i0] = { start, end, off, seq };
      return;
    }
    if (ch.length === 0) {
      ch.push([]);
      c0 = 0;
    } else if (c0 === ch.length) {
      // Past every extent: append to the last chunk.
      c0 = ch.length - 1;
      i0 = ch[c0]!.length;
    }
    const pieces: Extent[] = [];
    let cursor = start;
    const fresh = (a: number, b: number): void => {
      if (b > a)
        push(pieces, { start: a, end: b, off: off < 0 ? -1 : off + (a - start) * 512, seq });
    };
    // Walk the overlapped extents from (c0, i0) to (c1, i1), exclusive.
    let c1 = c0;
    let i1 = i0;
    let removed = 0;
    for (;;) {
      const chunk = ch[c1]!;
      if (i1 === chunk.length) {
        if (c1 + 1 < ch.length && ch[c1 + 1]![0]!.start < end) {
          c1++;
          i1 = 0;
          continue;
        }
        break;
      }
      const x = chunk[i1]!;
      if (x.start >= end) break;
      if (x.start < start) push(pieces, { start: x.start, end: start, off: x.off, seq: x.seq });
      const a = Math.max(x.start, start);
      const b = Math.min(x.end, end);
      fresh(cursor, a);
      if (x.seq > seq) push(pieces, { start: a, end: b, off: shift(x, a), seq: x.seq });
      else fresh(a, b);
      cursor = b;
      if (x.end > end) push(pieces, { start: end, end: x.end, off: shift(x, end), seq: x.seq });
      i1++;
      removed++;
    }
    fresh(cursor, end);
    this.#size += pieces.length - removed;
    const first = ch[c0]!;
    if (c1 === c0 && pieces.length < 1024) {
      first.splice(i0, i1 - i0, ...pieces);
    } else {
      // Spanning chunks (or very many pieces): rebuild the first chunk, drop the middle ones.
      const rest = c1 === c0 ? first.slice(i1) : [];
      first.length = i0;
      for (const p of pieces) first.push(p);
      for (const p of rest) first.push(p);
      if (c1 > c0) {
        const last = ch[c1]!.slice(i1);
        ch.splice(c0 + 1, c1 - c0, ...(last.length > 0 ? [last] : []));
      }
    }
    this.#rebalance(c0);
  }

  /**
   * Split chunk `c` when oversized; merge it with the next one when both are small (so a long
   * run of overwrites cannot leave many tiny chunks).
   */
  #rebalance(c: number): void {
    const ch = this.#chunks;
    const chunk = ch[c]!;
    const next = ch[c + 1];
    if (chunk.length > 2 * CHUNK) {
      const parts: Extent[][] = [];
      for (let at = 0; at < chunk.length; at += CHUNK) parts.push(chunk.slice(at, at + CHUNK));
      ch.splice(c, 1, ...parts);
    } else if (next !== undefined && chunk.length + next.length <= CHUNK) {
      for (const x of next) chunk.push(x);
      ch.splice(c + 1, 1);
    }
  }

  /**
   * Chunk and index of the first extent whose `end` is past `sector`; `[chunks.length, 0]` if
   * there is none.
   */
  #find(sector: number): [number, number] {
    const ch = this.#chunks;
    let lo = 0;
    let hi = ch.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = ch[mid]!;
      if (c[c.length - 1]!.end <= sector) lo = mid + 1;
      else hi = mid;
    }
    if (lo === ch.length) return [lo, 0];
    const c = ch[lo]!;
    let a = 0;
    let b = c.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (c[mid]!.end <= sector) a = mid + 1;
      else b = mid;
    }
    return [lo, a];
  }
}

/** A binary max-heap of record indices ordered by the records' `seq`. */
class RecordHeap {
  readonly #records: readonly LogExtentRecord[];
  readonly #a: number[] = [];

  constructor(records: readonly LogExtentRecord[]) {
    this.#records = records;
  }

  get size(): number {
    return this.#a.length;
  }

  top(): number {
    return this.#a[0]!;
  }

  push(r: number): void {
    const a = this.#a;
    const seq = this.#records[r]!.seq;
    let i = a.length;
    a.push(r);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.#records[a[p]!]!.seq >= seq) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = r;
  }

  pop(): void {
    const a = this.#a;
    const last = a.pop()!;
    if (a.length === 0) return;
    const recs = this.#records;
    const seq = recs[last]!.seq;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const r = l + 1;
      const c = r < a.length && recs[a[r]!]!.seq > recs[a[l]!]!.seq ? r : l;
      if (recs[a[c]!]!.seq <= seq) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
  }
}

/** Log offset of `sector` inside extent `x`. */
export function shift(x: Extent, sector: number): number {
  return x.off < 0 ? -1 : x.off + (sector - x.start) * 512;
}

/** Append `p`, extending the last piece instead when `p` continues it (same record, contiguous). */
function push(pieces: Extent[], p: Extent): void {
  const last = pieces[pieces.length - 1];
  if (
    last !== undefined &&
    last.end === p.start &&
    last.seq === p.seq &&
    (last.off < 0 ? p.off < 0 : p.off === last.off + (last.end - last.start) * 512)
  ) {
    last.end = p.end;
    return;
  }
  pieces.push(p);
}
