import { describe, expect, it } from "vitest";
import { ExtentMap } from "../src/log-extents.js";

function dump(m: ExtentMap): [number, number, number, number][] {
  return m.list.map((x) => [x.start, x.end, x.off, x.seq]);
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
    expect(m.list.find((x) => x.start === 5)).toEqual({ start: 5, end: 8, off: -1, seq: 11 });
    m.insert(0, 30, 50_000, 12);
    expect(dump(m)).toEqual([[0, 30, 50_000, 12]]);
    expect(m.first(29)).toBe(0);
    expect(m.first(30)).toBe(1);
  });

  it("rebuilds correctly when one insert keeps more than a thousand newer pieces", () => {
    const m = new ExtentMap();
    for (let i = 0; i < 1500; i++) m.insert(i * 2 + 1, 1, i * 1000, 10 + i);
    m.insert(0, 3000, 0, 1); // older than all of them: fills only the gaps
    expect(m.size).toBe(3000);
    expect(m.list[0]).toEqual({ start: 0, end: 1, off: 0, seq: 1 });
    expect(m.list[1]).toEqual({ start: 1, end: 2, off: 0, seq: 10 });
    expect(m.list[2998]).toEqual({ start: 2998, end: 2999, off: 2998 * 512, seq: 1 });
    expect(m.list[2999]).toEqual({ start: 2999, end: 3000, off: 1499 * 1000, seq: 1509 });
  });
});
