import { describe, expect, it } from "vitest";
import { BalloonFeature, BalloonQueue, balloonQueueIndex, featureMask } from "../src/index.js";

const STATS = featureMask(BalloonFeature.STATS_VQ);
const HINT = featureMask(BalloonFeature.FREE_PAGE_HINT);
const REPORT = featureMask(BalloonFeature.PAGE_REPORTING);

describe("balloonQueueIndex", () => {
  it("puts inflateq at 0 and deflateq at 1 whatever the features", () => {
    for (const f of [0n, STATS, STATS | HINT | REPORT]) {
      expect(balloonQueueIndex(BalloonQueue.INFLATE, f)).toBe(0);
      expect(balloonQueueIndex(BalloonQueue.DEFLATE, f)).toBe(1);
    }
  });

  it("numbers the optional queues densely over the negotiated ones, as Linux's find_vqs does", () => {
    expect(balloonQueueIndex(BalloonQueue.REPORTING, REPORT)).toBe(2);
    expect(balloonQueueIndex(BalloonQueue.REPORTING, STATS | REPORT)).toBe(3);
    expect(balloonQueueIndex(BalloonQueue.REPORTING, STATS | HINT | REPORT)).toBe(4);
    expect(balloonQueueIndex(BalloonQueue.FREE_PAGE, HINT)).toBe(2);
    expect(balloonQueueIndex(BalloonQueue.STATS, STATS | REPORT)).toBe(2);
  });

  it("returns undefined for a queue whose feature is not negotiated", () => {
    expect(balloonQueueIndex(BalloonQueue.STATS, REPORT)).toBeUndefined();
    expect(balloonQueueIndex(BalloonQueue.REPORTING, STATS)).toBeUndefined();
    expect(balloonQueueIndex(BalloonQueue.FREE_PAGE, STATS | REPORT)).toBeUndefined();
  });

  it("gives the indices of the §5.5.2 list with fixed numbering", () => {
    expect(balloonQueueIndex(BalloonQueue.REPORTING, REPORT, true)).toBe(4);
    expect(balloonQueueIndex(BalloonQueue.STATS, STATS, true)).toBe(2);
    expect(balloonQueueIndex(BalloonQueue.FREE_PAGE, HINT, true)).toBe(3);
    expect(balloonQueueIndex(BalloonQueue.STATS, 0n, true)).toBeUndefined();
  });
});
