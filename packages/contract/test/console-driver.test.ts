import { describe, expect, it } from "vitest";
import { ContractViolation, consoleDriverSuite, runContract } from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { consoleDriverAdapter, skipsFeaturesOk } from "./broken/console-drivers.js";
import { TRANSPORTS } from "./drivers.js";

for (const transport of TRANSPORTS) {
  describeContract(consoleDriverSuite, consoleDriverAdapter(), {
    name: "ConsoleDriver",
    transport,
  });
  describeContract(consoleDriverSuite, consoleDriverAdapter(undefined, { multiport: false }), {
    name: "ConsoleDriver without MULTIPORT",
    transport,
  });

  describe(`the virtio-console driver suite over ${transport}`, () => {
    it("passes ConsoleDriver on every check", async () => {
      const report = await runContract(consoleDriverSuite, consoleDriverAdapter(), { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(consoleDriverSuite.checks.map((c) => c.name));
    });

    it("fails only the §3.1.1 order check for a driver that skips FEATURES_OK", async () => {
      const report = await runContract(consoleDriverSuite, skipsFeaturesOk, { transport });
      expect(report.failed).toEqual(["initialises the device in the order of §3.1.1"]);
      const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
      const v = r.error as ContractViolation;
      expect(v).toBeInstanceOf(ContractViolation);
      expect(v.spec).toBe("§3.1.1");
      expect(v.message).toContain("FEATURES_OK");
    });
  });
}
