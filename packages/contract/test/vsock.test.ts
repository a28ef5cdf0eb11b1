import { describe, expect, it } from "vitest";
import { ContractViolation, runContract, vsockDeviceSuite } from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import {
  creditBlind,
  echoDevice,
  reservedCid,
  unknownTypeIgnored,
} from "./broken/vsock-devices.js";
import { TRANSPORTS } from "./drivers.js";

const ours = { create: echoDevice };

function only(report: Awaited<ReturnType<typeof runContract>>): ContractViolation {
  expect(report.failed).toHaveLength(1);
  const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
  expect(r.error).toBeInstanceOf(ContractViolation);
  return r.error as ContractViolation;
}

for (const transport of TRANSPORTS) {
  describeContract(vsockDeviceSuite, ours, { name: "VsockDevice", transport });

  describe(`the virtio-vsock device suite over ${transport}`, () => {
    it("passes VsockDevice on every check", async () => {
      const report = await runContract(vsockDeviceSuite, ours, { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(vsockDeviceSuite.checks.map((c) => c.name));
    });

    it("fails only the guest_cid check for a device reporting the host's CID", async () => {
      const report = await runContract(vsockDeviceSuite, reservedCid, { transport });
      expect(report.failed).toEqual([
        "reports a guest_cid that is not reserved, its upper 32 bits zero",
      ]);
      expect(only(report).seen).toBe(2);
    });

    it("fails only the unknown-type check for a device that answers nothing to type 9", async () => {
      const report = await runContract(vsockDeviceSuite, unknownTypeIgnored, { transport });
      expect(report.failed).toEqual(["answers a packet of an unknown type with RST"]);
    });

    it("fails only the credit check for a device that misreads the guest's buf_alloc", async () => {
      const report = await runContract(vsockDeviceSuite, creditBlind, { transport });
      expect(report.failed).toEqual(["sends RW payload only within the guest's free buffer space"]);
      expect(only(report).expected).toBe("<= 100");
    });
  });
}
