import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import {
  type BlkDeviceAdapter,
  blkDeviceSuite,
  blkDriverSuite,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { BLK_DRIVER_KNOWN_FAILURES, blkDriverAdapter, TRANSPORTS } from "./drivers.js";

/** Our device model, as a third party would wrap theirs: the hooks get a BlkDevice, no cast. */
const referenceDevice: BlkDeviceAdapter<BlkDevice> = {
  create: ({ image, readOnly }) =>
    new BlkDevice(new MemoryDisk(image, { readOnly }), { serial: "ref" }),
  readDisk: (model, sector, length) =>
    (model.backend as MemoryDisk).bytes.slice(sector * 512, sector * 512 + length),
  whenIdle: (model) => model.whenIdle(),
};

/** A BlkDevice counting the calls of its own whenIdle. */
class CountingBlk extends BlkDevice {
  static idleCalls = 0;
  override whenIdle(): Promise<void> {
    CountingBlk.idleCalls++;
    return super.whenIdle();
  }
}

/** Without a whenIdle hook the suite uses the model's own (here CountingBlk.whenIdle). */
const withoutHook: BlkDeviceAdapter<CountingBlk> = {
  create: ({ image, readOnly }) => new CountingBlk(new MemoryDisk(image, { readOnly })),
};

for (const transport of TRANSPORTS) {
  describeContract(blkDeviceSuite, referenceDevice, {
    name: "BlkDevice over MemoryDisk",
    transport,
  });

  describe(`the reference implementations over ${transport}`, () => {
    it("pass every check of the virtio-blk device suite through runContract", async () => {
      const report = await runContract(blkDeviceSuite, referenceDevice, { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toHaveLength(blkDeviceSuite.checks.length);
      expect(report.ok).toBe(true);
      expect(report.transport).toBe(transport);
    });
  });

  describeContract(blkDriverSuite, blkDriverAdapter(), {
    name: "BlkDriver",
    knownFailures: BLK_DRIVER_KNOWN_FAILURES,
    transport,
  });

  describe(`the reference driver over ${transport}`, () => {
    it("passes every check of the virtio-blk driver suite except its known failures", async () => {
      const report = await runContract(blkDriverSuite, blkDriverAdapter(), { transport });
      expect(report.failed).toEqual(BLK_DRIVER_KNOWN_FAILURES);
      expect(report.passed).toHaveLength(
        blkDriverSuite.checks.length - BLK_DRIVER_KNOWN_FAILURES.length,
      );
    });
  });
}

describe("the virtio-blk device suite without a whenIdle hook", () => {
  it("passes, waiting on the model's own whenIdle", async () => {
    const report = await runContract(blkDeviceSuite, withoutHook);
    expect(report.failed).toEqual([]);
    expect(CountingBlk.idleCalls).toBeGreaterThan(0);
  });
});
