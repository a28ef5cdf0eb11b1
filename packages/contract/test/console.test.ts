import { ConsoleDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import {
  type ConsoleDeviceAdapter,
  ContractViolation,
  consoleDeviceSuite,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { lateEmergency, smallMaxPorts } from "./broken/console-devices.js";
import { TRANSPORTS } from "./drivers.js";

const ours: ConsoleDeviceAdapter = {
  create: (backend, { ports }) =>
    new ConsoleDevice(backend, {
      ports: Array.from({ length: ports }, (_, i) => ({ console: i === 0 })),
    }),
};

function only(report: Awaited<ReturnType<typeof runContract>>): ContractViolation {
  expect(report.failed).toHaveLength(1);
  const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
  expect(r.error).toBeInstanceOf(ContractViolation);
  return r.error as ContractViolation;
}

for (const transport of TRANSPORTS) {
  describeContract(consoleDeviceSuite, ours, { name: "ConsoleDevice", transport });

  describe(`the virtio-console device suite over ${transport}`, () => {
    it("passes ConsoleDevice on every check", async () => {
      const report = await runContract(consoleDeviceSuite, ours, { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(consoleDeviceSuite.checks.map((c) => c.name));
    });

    it("fails only the emerg_wr check for a device that ignores emerg_wr before FEATURES_OK", async () => {
      const report = await runContract(consoleDeviceSuite, lateEmergency, { transport });
      expect(report.failed).toEqual([
        "passes a byte written to emerg_wr before feature negotiation to the back-end",
      ]);
      const v = only(report);
      expect([v.expected, v.seen]).toEqual(["33", ""]);
    });

    it("fails only the handshake check for a device that adds a port at max_nr_ports", async () => {
      const report = await runContract(consoleDeviceSuite, smallMaxPorts, { transport });
      expect(report.failed).toEqual([
        "completes the multiport handshake: DEVICE_READY, DEVICE_ADD, PORT_READY, CONSOLE_PORT and PORT_OPEN",
      ]);
      const v = only(report);
      expect(v.message).toContain("max_nr_ports with two ports");
      expect([v.expected, v.seen]).toEqual([">= 2", 1]);
    });
  });
}
