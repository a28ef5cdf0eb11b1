// The lab's migration demonstration, on the library's suspend / save / restore
// (@virtio-ts/transport; the format itself is tested there).
import { describe, expect, it } from "vitest";
import { makeImage } from "../src/rigs.js";
import { migrationScenario } from "../src/scenarios.js";

const image = makeImage(1 << 20);

describe("suspend / encode / resume in the lab", () => {
  it("drain: completes every request exactly once across the move, 24 drained from the back-end, 8 left in the ring for the new device", async () => {
    const m = await migrationScenario(image, 24, 8, "drain");
    expect(m.inBackendAtStop).toBe(24);
    expect(m.unpoppedAtStop).toBe(8);
    expect(m.drainedUnreaped).toBe(24);
    expect(m.inFlightInState).toBe(0);
    expect(m.oldServed).toBe(24);
    expect(m.newServed).toBe(8);
    expect(m.completedOnce).toBe(32);
    expect(m.anomalies).toBe(0);
  });

  it("in-flight: saves the 24 requests still in the back-end with the state; the new device serves all 32 exactly once", async () => {
    const m = await migrationScenario(image, 24, 8, "in-flight");
    expect(m.inFlightInState).toBe(24);
    expect(m.drainedUnreaped).toBe(0);
    expect(m.oldServed).toBe(0);
    expect(m.newServed).toBe(32);
    expect(m.completedOnce).toBe(32);
    expect(m.anomalies).toBe(0);
  });

  it("resumes a device stopped with nothing in the back-end: the new device serves all 5 requests left in the ring", async () => {
    const m = await migrationScenario(image, 0, 5);
    expect(m.oldServed).toBe(0);
    expect(m.newServed).toBe(5);
    expect(m.completedOnce).toBe(5);
  });
});
