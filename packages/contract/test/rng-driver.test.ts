import { RngDriver, SlabAllocator } from "@virtio-ts/drivers";
import { describe, expect, it } from "vitest";
import {
  ContractViolation,
  type RngDriverAdapter,
  rngDriverSuite,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { wholeBuffer } from "./broken/rng-drivers.js";
import { TRANSPORTS } from "./drivers.js";

/** Our RngDriver, as a third party would wrap theirs. */
function ours(packed?: boolean): RngDriverAdapter {
  let d: RngDriver | undefined;
  return {
    attach(transport, memory, env) {
      d = new RngDriver(transport, memory, new SlabAllocator(env.region.base + 0x80000, 512, 16), {
        ringBase: env.region.base,
        ...(packed === undefined ? {} : { packed }),
      });
    },
    read: (n) => d!.read(n),
    interrupt: () => void d!.onInterrupt(),
  };
}

for (const transport of TRANSPORTS) {
  describeContract(rngDriverSuite, ours(), { name: "RngDriver", transport });
  describeContract(rngDriverSuite, ours(false), { name: "RngDriver on split rings", transport });

  describe(`the virtio-rng driver suite over ${transport}`, () => {
    it("passes RngDriver on every check", async () => {
      const report = await runContract(rngDriverSuite, ours(), { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(rngDriverSuite.checks.map((c) => c.name));
    });

    it("fails only the used-length check for a driver that returns whole buffers", async () => {
      const report = await runContract(rngDriverSuite, wholeBuffer(), { transport });
      expect(report.failed).toEqual([
        "uses only the first used-length bytes of a partly filled buffer",
      ]);
      const r = report.results.find((x) => x.outcome === "failed") as { error: unknown };
      const v = r.error as ContractViolation;
      expect(v).toBeInstanceOf(ContractViolation);
      expect(v.expected).toBe("none");
      expect(v.seen).toBe("at offset 5");
    });
  });
}
