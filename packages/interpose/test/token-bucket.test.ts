import { describe, expect, it } from "vitest";
import { TokenBucket } from "../src/index.js";
import { FakeClock } from "./helpers/rate-limit-clock.js";

describe("TokenBucket", () => {
  it("starts full and refuses a take larger than what is left", () => {
    const clock = new FakeClock();
    const b = new TokenBucket(1000, 100, clock);
    expect(b.tryTake(60)).toBe(true);
    expect(b.tryTake(60)).toBe(false);
    expect(b.level).toBe(40);
  });

  it("refills at the rate from the injected clock and never above the burst", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket(1000, 100, clock);
    b.take(100);
    await clock.advance(30);
    expect(b.level).toBeCloseTo(30, 9);
    await clock.advance(1000);
    expect(b.level).toBe(100);
  });

  it("tells how long until a take can succeed", () => {
    const clock = new FakeClock();
    const b = new TokenBucket(500, 50, clock);
    b.take(50);
    expect(b.msUntil(25)).toBeCloseTo(50, 9);
    expect(b.msUntil(0)).toBe(0);
  });

  it("lets a request larger than the burst through a full bucket and makes it pay afterwards", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket(100, 10, clock);
    expect(b.tryTake(50)).toBe(true);
    expect(b.level).toBe(-40);
    // 40 tokens of debt, then 10 for the next full-burst request: 500 ms.
    expect(b.msUntil(50)).toBeCloseTo(500, 9);
    await clock.advance(499);
    expect(b.canTake(50)).toBe(false);
    await clock.advance(1);
    expect(b.canTake(50)).toBe(true);
  });

  it("rejects a non-positive or non-finite rate or burst with a RangeError naming it", () => {
    expect(() => new TokenBucket(0, 1)).toThrow(/^rate must be/);
    expect(() => new TokenBucket(-5, 1)).toThrow(RangeError);
    expect(() => new TokenBucket(1, Number.POSITIVE_INFINITY)).toThrow(/^burst must be/);
    expect(() => new TokenBucket(Number.NaN, 1)).toThrow(/rate/);
  });
});
