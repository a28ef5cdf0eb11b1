import { describe, expect, it } from "vitest";
import { blkDriverSuite, ContractViolation, runContract } from "../../src/index.js";
import { BLK_DRIVER_KNOWN_FAILURES, TRANSPORTS } from "../drivers.js";
import { ignoresSegMax, skipsFeaturesOk } from "./blk-drivers.js";

for (const transport of TRANSPORTS) {
  describe(`the virtio-blk driver suite against broken drivers over ${transport}`, () => {
    it("fails only the §3.1.1 order check for a driver that skips FEATURES_OK", async () => {
      const report = await runContract(blkDriverSuite, skipsFeaturesOk, { transport });
      expect(report.failed).toContain("initialises the device in the order of §3.1.1");
      const r = report.results.find(
        (x) => x.name === "initialises the device in the order of §3.1.1",
      );
      const v = (r as { error: ContractViolation }).error;
      expect(v).toBeInstanceOf(ContractViolation);
      expect(v.spec).toBe("§3.1.1");
      expect(v.message).toContain("FEATURES_OK");
      // The broken driver is BlkDriver with one bug added: its own known failures stay.
      expect(report.failed).toEqual([
        "initialises the device in the order of §3.1.1",
        ...BLK_DRIVER_KNOWN_FAILURES,
      ]);
    });

    it("fails only the seg_max check for a driver that puts more segments in a request than seg_max", async () => {
      const report = await runContract(blkDriverSuite, ignoresSegMax, { transport });
      expect(report.failed).toEqual([
        "respects seg_max and size_max",
        ...BLK_DRIVER_KNOWN_FAILURES,
      ]);
      const r = report.results.find((x) => x.name === "respects seg_max and size_max");
      expect(r?.outcome === "failed" ? r.reason : "").toMatch(/\d+ data segments with seg_max 3/);
    });
  });
}
