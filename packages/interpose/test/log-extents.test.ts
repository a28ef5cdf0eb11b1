import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ExtentMap } from "../src/log-extents.js";

function dump(m: ExtentMap): [number, number, number, number][] {
  return m.toArray().map((x) => [x.start, x.end, x.off, x.seq]);
}

describe("ExtentMap", () => {
  it("splits an older extent around a newer write and keeps offsets sector-exact", () => {
    const m = new ExtentMap();
    m.insert(0, 10, 1000, 1);
    m.insert(3, 2, 9000, 2);
    expect(dump(m)).toEqual([
      [0, 3, 1000, 1],
      [3, 5, 9000, 2],
      [5, 10, 1000 + 5 * 512, 1],
    ]);
  });

  it("keeps the parts a newer record already covers when an older one completes later", () => {
    const m = new ExtentMap();
    m.insert(4, 2, 5000, 7); // record 7 completed first
    m.insert(2, 6, 100, 6); // record 6 completes afterwards
    expect(dump(m)).toEqual([
      [2, 4, 100, 6],
      [4, 6, 5000, 7],
      [6, 8, 100 + 4 * 512, 6],
    ]);
  });

  it("zero extents have offset -1 and a covering write replaces many extents with one", () => {
    const m = new ExtentMap();
    for (let i = 0; i < 10; i++) m.insert(i * 2, 1, i * 600, i + 1);
    m.insert(5, 3, -1, 11);
    expect(m.toArray().find((x) => x.start === 5)).toEqual({ start: 5, end: 8, off: -1, seq: 11 });
    m.insert(0, 30, 50_000, 12);
    expect(dump(m)).toEqual([[0, 30, 50_000, 12]]);
    expect(m.overlapping(29, 31)).toEqual([{ start: 0, end: 30, off: 50_000, seq: 12 }]);
    expect(m.overlapping(30, 40)).toEqual([]);
  });

  it("rebuilds correctly when one insert keeps more than a thousand newer pieces", () => {
    const m = new ExtentMap();
    for (let i = 0; i < 1500; i++) m.insert(i * 2 + 1, 1, i * 1000, 10 + i);
    m.insert(0, 3000, 0, 1); // older than all of them: fills only the gaps
    expect(m.size).toBe(3000);
    const l = m.toArray();
    expect(l[0]).toEqual({ start: 0, end: 1, off: 0, seq: 1 });
    expect(l[1]).toEqual({ start: 1, end: 2, off: 0, seq: 10 });
    expect(l[2998]).toEqual({ start: 2998, end: 2999, off: 2998 * 512, seq: 1 });
    expect(l[2999]).toEqual({ start: 2999, end: 3000, off: 1499 * 1000, seq: 1509 });
  });
});

describe("ExtentMap over many extents (chunked)", () => {
  it("matches a per-sector model over 6000 random inserts that split, span and merge chunks", () => {
    const size = 20_000;
    const model = new Float64Array(size).fill(-2); // -2: never written
    const seqOf = new Float64Array(size);
    const m = new ExtentMap();
    let x = 99;
    const rnd = (n: number) => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return x % n;
    };
    for (let seq = 1; seq <= 6000; seq++) {
      // Mostly single sectors (many extents), sometimes a long write across many chunks.
      const count = rnd(50) === 0 ? 1 + rnd(3000) : 1 + rnd(3);
      const start = rnd(size - count);
      const off = rnd(4) === 0 ? -1 : 512 + seq * 10_000;
      m.insert(start, count, off, seq);
      for (let s = start; s < start + count; s++) {
        model[s] = off < 0 ? -1 : off + (s - start) * 512;
        seqOf[s] = seq;
      }
    }
    const got = new Float64Array(size).fill(-2);
    let prevEnd = 0;
    for (const e of m.toArray()) {
      expect(e.start).toBeGreaterThanOrEqual(prevEnd);
      prevEnd = e.end;
      for (let s = e.start; s < e.end; s++) got[s] = e.off < 0 ? -1 : e.off + (s - e.start) * 512;
    }
    expect(got).toEqual(model);
    expect(m.size).toBe(m.toArray().length);
    // overlapping() returns exactly the extents touching the range.
    for (let k = 0; k < 200; k++) {
      const a = rnd(size);
      const b = a + 1 + rnd(500);
      const want = m.toArray().filter((e) => e.end > a && e.start < b);
      expect(m.overlapping(a, b)).toEqual(want);
      // covering() is the one extent holding the whole range, exactly when there is one.
      expect(m.covering(a, b)).toEqual(
        want.length === 1 && want[0]!.start <= a && want[0]!.end >= b ? want[0] : undefined,
      );
      // first() is the first extent ending after a: the first that touches the range, if any.
      const first = m.first(a);
      expect(first === undefined || first.start >= b ? [] : [first]).toEqual(want.slice(0, 1));
      expect(first).toEqual(m.toArray().find((e) => e.end > a));
    }
  });
});

describe("ExtentMap.insert rewriting one extent's exact sectors (the fast path)", () => {
  it("keeps the newer record when an older one over the same sectors completes later", () => {
    const m = new ExtentMap();
    m.insert(8, 8, 4096, 5);
    m.insert(8, 8, 9999, 3); // record 3 completes after record 5: the data stays record 5's
    expect(dump(m)).toEqual([[8, 16, 4096, 5]]);
    m.insert(8, 8, 20_000, 6);
    expect(dump(m)).toEqual([[8, 16, 20_000, 6]]);
  });

  it("leaves a list handed out by overlapping() as it was", () => {
    const m = new ExtentMap();
    m.insert(0, 8, 1000, 1);
    m.insert(8, 8, 2000, 2);
    const before = m.overlapping(0, 16);
    m.insert(8, 8, 3000, 3);
    expect(before).toEqual([
      { start: 0, end: 8, off: 1000, seq: 1 },
      { start: 8, end: 16, off: 2000, seq: 2 },
    ]);
    expect(m.overlapping(8, 16)).toEqual([{ start: 8, end: 16, off: 3000, seq: 3 }]);
  });
});

describe("ExtentMap.covering (the read fast path)", () => {
  it("returns the one extent holding the whole range, and nothing for a range it does not hold whole", () => {
    const m = new ExtentMap();
    m.insert(8, 8, 4096, 1); // [8, 16)
    m.insert(16, 8, -1, 2); // [16, 24) zeroes
    expect(m.covering(8, 16)).toEqual({ start: 8, end: 16, off: 4096, seq: 1 });
    expect(m.covering(10, 12)).toEqual({ start: 8, end: 16, off: 4096, seq: 1 });
    expect(m.covering(16, 24)).toEqual({ start: 16, end: 24, off: -1, seq: 2 });
    expect(m.covering(12, 20)).toBeUndefined(); // two extents
    expect(m.covering(4, 10)).toBeUndefined(); // starts in a gap
    expect(m.covering(20, 30)).toBeUndefined(); // runs past the last extent
    expect(m.covering(24, 25)).toBeUndefined(); // after every extent
    expect(new ExtentMap().covering(0, 1)).toBeUndefined();
  });
});

describe("ExtentMap.build (opening a log)", () => {
  function perSector(m: ExtentMap, size: number): string[] {
    const out: string[] = new Array(size).fill("base");
    for (const x of m.toArray()) {
      for (let s = x.start; s < x.end; s++) {
        out[s] = `${x.off < 0 ? -1 : x.off + (s - x.start) * 512}@${x.seq}`;
      }
    }
    return out;
  }

  it("gives exactly the extents of inserting the records one by one, in any order of completion", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            sector: fc.integer({ min: 0, max: 200 }),
            count: fc.integer({ min: 1, max: 40 }),
            zero: fc.boolean(),
          }),
          { maxLength: 80 },
        ),
        fc.integer(),
        (raw, seed) => {
          const records = raw.map((r, i) => ({
            sector: r.sector,
            count: r.count,
            off: r.zero ? -1 : 512 + i * 100_000,
            seq: i + 1,
          }));
          const one = new ExtentMap();
          for (const r of records) one.insert(r.sector, r.count, r.off, r.seq);
          // Writes complete out of order: insert in a shuffled order too.
          const shuffled = [...records];
          let x = seed >>> 0;
          for (let i = shuffled.length - 1; i > 0; i--) {
            x = (Math.imul(x, 1103515245) + 12345) >>> 0;
            const j = x % (i + 1);
            [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
          }
          const two = new ExtentMap();
          for (const r of shuffled) two.insert(r.sector, r.count, r.off, r.seq);
          const built = new ExtentMap();
          built.build(shuffled);
          expect(dump(built)).toEqual(dump(one));
          expect(perSector(built, 260)).toEqual(perSector(two, 260));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("replaces what the map held and handles no records", () => {
    const m = new ExtentMap();
    m.insert(0, 4, 512, 1);
    m.build([]);
    expect(m.size).toBe(0);
    m.build([{ sector: 10, count: 2, off: -1, seq: 3 }]);
    expect(dump(m)).toEqual([[10, 12, -1, 3]]);
  });
});
