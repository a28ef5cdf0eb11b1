import { RngDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { type RngDeviceAdapter, rngDeviceSuite, runContract } from "../src/index.js";
import { TapModel } from "../src/tap.js";
import { describeContract } from "../src/vitest.js";
import { TRANSPORTS } from "./drivers.js";

/** Writes 0xee over the device-readable descriptors of every chain before serving it. */
const scribbler: RngDeviceAdapter = {
  create: () =>
    new TapModel(new RngDevice(), {
      onPop(_index, chain, ctx) {
        for (let i = 0; i < chain.readableCount; i++) {
          ctx.memory.fill(chain.addrs[i]!, chain.lens[i]!, 0xee);
        }
      },
    }),
};

for (const transport of TRANSPORTS) {
  describeContract(
    rngDeviceSuite,
    { create: () => new RngDevice() },
    { name: "RngDevice", transport },
  );

  describe(`the virtio-rng device suite over ${transport}`, () => {
    it("passes RngDevice on every check", async () => {
      const report = await runContract(
        rngDeviceSuite,
        { create: () => new RngDevice() },
        { transport },
      );
      expect(report.failed).toEqual([]);
      expect(report.passed).toHaveLength(rngDeviceSuite.checks.length);
    });

    it("fails only the readable-descriptor check for a device that writes readable buffers", async () => {
      const report = await runContract(rngDeviceSuite, scribbler, { transport });
      expect(report.failed).toEqual(["never writes into device-readable descriptors"]);
    });
  });
}
