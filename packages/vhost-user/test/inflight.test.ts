// The in-flight area (vhost-user.rst "Inflight I/O tracking", split rings): what a back-end
// killed at any instant leaves behind is exactly what its successor must serve again.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { InflightQueueRegion, inflightQueueRegionSize } from "../src/inflight.js";

function region(size = 8): { r: InflightQueueRegion; buf: ArrayBuffer } {
  const buf = new ArrayBuffer(inflightQueueRegionSize(size, false) + 64);
  return { r: new InflightQueueRegion(buf, 64, size), buf };
}

describe("InflightQueueRegion", () => {
  it("sizes a queue's region as libvhost-user does: 16-byte header, 16 bytes per entry, 64-byte aligned", () => {
    expect(inflightQueueRegionSize(128, false)).toBe(2112);
    expect(inflightQueueRegionSize(16, false)).toBe(320);
    expect(inflightQueueRegionSize(1, false)).toBe(64);
    expect(inflightQueueRegionSize(16, true)).toBe(576);
  });

  it("initialises a fresh region (version 0): nothing to resubmit, resume at used.idx", () => {
    const { r } = region();
    expect(r.version).toBe(0);
    expect(r.recover(7)).toEqual({ heads: [], availIdx: 7, fresh: true });
    expect(r.version).toBe(1);
    expect(r.usedIdx).toBe(7);
  });

  it("returns the heads in flight in pop order and resumes after them", () => {
    const { r, buf } = region();
    r.recover(0);
    for (const h of [3, 5, 1]) r.popped(h);
    r.beforePush(5);
    r.afterPush(5, 1);
    // A new back-end over the same memory.
    const again = new InflightQueueRegion(buf, 64, 8);
    expect(again.recover(1)).toEqual({ heads: [3, 1], availIdx: 3, fresh: false });
  });

  it("commits the last batch when the back-end died after publishing used.idx but before clearing its flags", () => {
    const { r, buf } = region();
    r.recover(0);
    for (const h of [3, 5, 1]) r.popped(h);
    r.beforePush(5);
    // ...the used ring now holds head 5 and used.idx is 1, then SIGKILL.
    const again = new InflightQueueRegion(buf, 64, 8);
    expect(again.recover(1)).toEqual({ heads: [3, 1], availIdx: 3, fresh: false });
    expect(again.usedIdx).toBe(1);
  });

  it("refuses a region whose desc_num or last_batch_head is impossible (the front-end can write it)", () => {
    const { r, buf } = region();
    r.recover(0);
    new Uint16Array(buf, 64)[5] = 9; // desc_num
    expect(() => new InflightQueueRegion(buf, 64, 8).recover(0)).toThrow(
      /desc_num 9 differs from the queue size 8/,
    );
    new Uint16Array(buf, 64)[5] = 8;
    new Uint16Array(buf, 64)[6] = 200; // last_batch_head
    expect(() => new InflightQueueRegion(buf, 64, 8).recover(1)).toThrow(
      /last_batch_head 200 is not a head/,
    );
  });

  it("refuses a region that does not fit the area", () => {
    expect(() => new InflightQueueRegion(new ArrayBuffer(100), 0, 8)).toThrow(RangeError);
    expect(() => new InflightQueueRegion(new ArrayBuffer(4096), 4, 8)).toThrow(RangeError);
  });

  it("property: killed between any two steps, the successor resubmits exactly the requests whose completion the driver has not seen, in pop order", () => {
    // A model of the ring: pops take the next free head; a push completes any head in flight
    // and publishes used.idx between the region's two steps, as the tracking queue does.
    const op = fc.oneof(
      fc.constant({ kind: "pop" as const }),
      fc.nat(7).map((k) => ({ kind: "push" as const, k })),
    );
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 60 }),
        fc.nat(200),
        fc.boolean(),
        (ops, cut, midPush) => {
          const size = 8;
          const { r, buf } = region(size);
          r.recover(0);
          let used = 0;
          const inFlight: number[] = []; // in pop order
          let steps = 0;
          for (const o of ops) {
            if (steps++ === cut) break;
            if (o.kind === "pop") {
              const free = [...Array(size).keys()].filter((h) => !inFlight.includes(h));
              if (free.length === 0) continue;
              const h = free[0]!;
              r.popped(h);
              inFlight.push(h);
            } else {
              if (inFlight.length === 0) continue;
              const h = inFlight[o.k % inFlight.length]!;
              r.beforePush(h);
              used = (used + 1) & 0xffff; // the device publishes the used entry and used.idx
              inFlight.splice(inFlight.indexOf(h), 1);
              if (midPush && steps === cut) break; // killed before the flags are cleared
              r.afterPush(h, used);
            }
          }
          const rec = new InflightQueueRegion(buf, 64, size).recover(used);
          expect(rec.heads).toEqual(inFlight);
          expect(rec.availIdx).toBe((used + inFlight.length) & 0xffff);
        },
      ),
      { numRuns: 300 },
    );
  });
});
