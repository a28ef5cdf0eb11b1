import { describe, expect, it } from "vitest";
import { balloonDriverSuite, ContractViolation, runContract } from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { balloonDriverAdapter, eagerReport, noActual, ragged } from "./broken/balloon-drivers.js";
import { TRANSPORTS } from "./drivers.js";

function only(report: Awaited<ReturnType<typeof runContract>>): ContractViolation {
  expect(report.failed).toHaveLength(1);
  const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
  expect(r.error).toBeInstanceOf(ContractViolation);
  return r.error as ContractViolation;
}

for (const transport of TRANSPORTS) {
  describeContract(balloonDriverSuite, balloonDriverAdapter(), {
    name: "BalloonDriver",
    transport,
  });

  describe(`the virtio-balloon driver suite over ${transport}`, () => {
    it("passes BalloonDriver on every check", async () => {
      const report = await runContract(balloonDriverSuite, balloonDriverAdapter(), { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(balloonDriverSuite.checks.map((c) => c.name));
    });

    it("fails only the actual check for a driver that never writes actual", async () => {
      const report = await runContract(balloonDriverSuite, noActual, { transport });
      expect(report.failed).toEqual([
        "updates actual after changing the number of pages in the balloon",
      ]);
      expect([only(report).expected, only(report).seen]).toEqual([300, 0]);
    });

    it("fails only the stats check for a driver whose stats buffers are not whole entries", async () => {
      const report = await runContract(balloonDriverSuite, ragged, { transport });
      expect(report.failed).toEqual([
        "keeps one stats buffer of whole 10-byte entries available, with the same tags every time",
      ]);
      expect([only(report).expected, only(report).seen]).toEqual([0, 2]);
    });

    it("fails only the report check for a driver that reuses reported pages before the acknowledgement", async () => {
      const report = await runContract(balloonDriverSuite, eagerReport, { transport });
      expect(report.failed).toEqual([
        "does not use reported pages before the device has acknowledged the report",
      ]);
      expect(only(report).seen).toBe("resolved");
    });
  });
}
