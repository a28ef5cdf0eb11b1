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

/**
 * Sorted extents with sequence-aware insertion: records can complete out of order (writes are
 * concurrent), so an insert only replaces the parts of older records and leaves any part a
 * newer record already covers. Memory is one small object per extent: at most 2 + (number of
 * records) extents, usually far fewer (overwrites merge away).
 */
export class ExtentMap {
  /** The extents, sorted by `start`. */
  readonly list: Extent[] = [];

  /** Number of extents. */
  get size(): number {
    return this.list.length;
  }

  /** Forget everything. */
  clear(): void {
    this.list.length = 0;
  }

  /** Index of the first extent whose `end` is past `sector` (list.length if none). */
  first(sector: number): number {
    const l = this.list;
    let lo = 0;
    let hi = l.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (l[mid]!.end <= sector) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Record that sectors `[start, start + count)` now hold the data at log offset `off` (−1:
   * zeroes), written by record `seq`.
   */
  insert(start: number, count: number, off: number, seq: number): void {
    if (count <= 0) return;
    const end = start + count;
    const l = this.list;
    const i = this.first(start);
    let j = i;
    const pieces: Extent[] = [];
    let cursor = start;
    const fresh = (a: number, b: number): void => {
      if (b > a)
        push(pieces, { start: a, end: b, off: off < 0 ? -1 : off + (a - start) * 512, seq });
    };
    while (j < l.length && l[j]!.start < end) {
      const x = l[j]!;
      if (x.start < start) push(pieces, { start: x.start, end: start, off: x.off, seq: x.seq });
      const a = Math.max(x.start, start);
      const b = Math.min(x.end, end);
      fresh(cursor, a);
      if (x.seq > seq) push(pieces, { start: a, end: b, off: shift(x, a), seq: x.seq });
      else fresh(a, b);
      cursor = b;
      if (x.end > end) push(pieces, { start: end, end: x.end, off: shift(x, end), seq: x.seq });
      j++;
    }
    fresh(cursor, end);
    if (pieces.length < 1024) {
      l.splice(i, j - i, ...pieces);
      return;
    }
    // Spreading very many arguments can overflow the stack: rebuild the tail instead.
    const rest = l.slice(j);
    l.length = i;
    for (const p of pieces) l.push(p);
    for (const p of rest) l.push(p);
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
