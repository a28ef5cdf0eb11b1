import { describe, expect, it } from "vitest";
import { runContract, vsockDriverSuite } from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { creditBlindDriver, highSrcCid, vsockDriverAdapter } from "./broken/vsock-drivers.js";
import { TRANSPORTS } from "./drivers.js";

for (const transport of TRANSPORTS) {
  describeContract(vsockDriverSuite, vsockDriverAdapter(), { name: "VsockDriver", transport });

  describe(`the virtio-vsock driver suite over ${transport}`, () => {
    it("passes VsockDriver on every check", async () => {
      const report = await runContract(vsockDriverSuite, vsockDriverAdapter(), { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(vsockDriverSuite.checks.map((c) => c.name));
    });

    it("fails only the source-CID check for a driver that sets src_cid's reserved upper bits", async () => {
      const report = await runContract(vsockDriverSuite, highSrcCid, { transport });
      expect(report.failed).toEqual([
        "uses guest_cid as the source CID of every packet, upper 32 bits zero",
      ]);
    });

    it("fails only the credit check for a driver that misreads the host's buf_alloc", async () => {
      const report = await runContract(vsockDriverSuite, creditBlindDriver, { transport });
      expect(report.failed).toEqual(["sends RW payload only within the host's free buffer space"]);
    });
  });
}
