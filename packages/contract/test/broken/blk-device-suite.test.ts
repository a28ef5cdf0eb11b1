import { describe, expect, it } from "vitest";
import { blkDeviceSuite, ContractViolation, runContract } from "../../src/index.js";
import { TRANSPORTS } from "../drivers.js";
import { ignoresReadOnly, okOutOfRange, wrongUsedLength } from "./blk-devices.js";

const all = blkDeviceSuite.checks.map((c) => c.name);

async function failures(
  adapter: Parameters<typeof runContract>[1],
  transport: (typeof TRANSPORTS)[number],
) {
  const report = await runContract(blkDeviceSuite, adapter as never, { transport });
  expect(report.passed.length + report.failed.length).toBe(all.length);
  return report;
}

for (const transport of TRANSPORTS) {
  describe(`the virtio-blk device suite against broken devices over ${transport}`, () => {
    it("fails only the read-only check for a device that writes despite VIRTIO_BLK_F_RO", async () => {
      const report = await failures(ignoresReadOnly, transport);
      expect(report.failed).toEqual([
        "fails OUT on a read-only device with IOERR and writes no data",
      ]);
      const r = report.results.find((x) => x.outcome === "failed");
      expect(r?.outcome === "failed" && r.error).toBeInstanceOf(ContractViolation);
      const v = (r as { error: ContractViolation }).error;
      expect(v.check).toBe("fails OUT on a read-only device with IOERR and writes no data");
      expect(v.expected).toBe("IOERR");
      expect(v.seen).toBe("OK");
    });

    it("fails only the used-length check for a device that leaves the status byte out of len", async () => {
      const report = await failures(wrongUsedLength, transport);
      expect(report.failed).toEqual([
        "reports the used length as the bytes written including the status byte",
      ]);
      const v = (report.results.find((x) => x.outcome === "failed") as { error: ContractViolation })
        .error;
      expect(v.expected).toBe(2049);
      expect(v.seen).toBe(2048);
    });

    it("fails only the capacity-bounds check for a device that answers OK past the end", async () => {
      const report = await failures(okOutOfRange, transport);
      expect(report.failed).toEqual(["fails requests beyond capacity with IOERR"]);
      const r = report.results.find((x) => x.outcome === "failed");
      expect(r?.outcome === "failed" ? r.reason : "").toContain("sector 256 (capacity 256)");
    });
  });
}
