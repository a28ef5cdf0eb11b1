import { BalloonDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import {
  type BalloonDeviceAdapter,
  balloonDeviceSuite,
  ContractViolation,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { eagerStats, silentTarget, zeroPoison } from "./broken/balloon-devices.js";
import { TRANSPORTS } from "./drivers.js";

const ours: BalloonDeviceAdapter = {
  create({ ram, host }) {
    const d = new BalloonDevice({ ram, host });
    return { model: d, setTarget: (p) => d.setTarget(p), requestStats: () => d.requestStats() };
  },
};

const fixed: BalloonDeviceAdapter = {
  queueNumbering: "fixed",
  create({ ram, host }) {
    const d = new BalloonDevice({ ram, host, queueNumbering: "fixed" });
    return { model: d, setTarget: (p) => d.setTarget(p), requestStats: () => d.requestStats() };
  },
};

function only(report: Awaited<ReturnType<typeof runContract>>): ContractViolation {
  expect(report.failed).toHaveLength(1);
  const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
  expect(r.error).toBeInstanceOf(ContractViolation);
  return r.error as ContractViolation;
}

for (const transport of TRANSPORTS) {
  describeContract(balloonDeviceSuite, ours, { name: "BalloonDevice", transport });

  describe(`the virtio-balloon device suite over ${transport}`, () => {
    it("passes BalloonDevice on every check, with dense and with fixed queue numbering", async () => {
      for (const a of [ours, fixed]) {
        const report = await runContract(balloonDeviceSuite, a, { transport });
        expect(report.failed).toEqual([]);
        expect(report.passed).toEqual(balloonDeviceSuite.checks.map((c) => c.name));
      }
    });

    it("fails only the target check for a device that sends no configuration change notification", async () => {
      const report = await runContract(balloonDeviceSuite, silentTarget, { transport });
      expect(report.failed).toEqual([
        "shows the host's target in num_pages and sends a configuration change notification",
      ]);
      expect([only(report).expected, only(report).seen]).toEqual(["pending", "none"]);
    });

    it("fails only the holding check for a device that returns stats buffers at once", async () => {
      const report = await runContract(balloonDeviceSuite, eagerStats, { transport });
      expect(report.failed).toEqual([
        "holds the stats buffer until the host asks for statistics, then uses it",
      ]);
      expect(only(report).seen).toBe("used at once");
    });

    it("fails only the PAGE_POISON check for a device that zeroes reported pages regardless", async () => {
      const report = await runContract(balloonDeviceSuite, zeroPoison, { transport });
      expect(report.failed).toEqual([
        "changes reported pages to nothing but poison_val under PAGE_POISON",
      ]);
      expect(only(report).seen).toBe("0x0 at offset 0");
    });
  });
}
