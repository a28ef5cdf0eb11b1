import { NetDevice } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import {
  ContractViolation,
  type NetDeviceAdapter,
  netDeviceSuite,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";
import { forwardsHeader, zeroNumBuffers } from "./broken/net-devices.js";
import { TRANSPORTS } from "./drivers.js";

const MAC = Uint8Array.of(0x02, 0, 0, 0, 0, 0x07);
const ours: NetDeviceAdapter = {
  mac: MAC,
  create: (backend) => new NetDevice(backend, { mac: MAC }),
};

const all = netDeviceSuite.checks.map((c) => c.name);

function violation(report: Awaited<ReturnType<typeof runContract>>, name: string) {
  const r = report.results.find((x) => x.name === name);
  expect(r?.outcome).toBe("failed");
  const v = (r as { error: unknown }).error;
  expect(v).toBeInstanceOf(ContractViolation);
  return v as ContractViolation;
}

for (const transport of TRANSPORTS) {
  describeContract(netDeviceSuite, ours, { name: "NetDevice", transport });

  describe(`the virtio-net device suite over ${transport}`, () => {
    it("passes NetDevice on every check, MRG_RXBUF and CSUM included", async () => {
      const report = await runContract(netDeviceSuite, ours, { transport });
      expect(report.failed).toEqual([]);
      expect(report.passed).toEqual(all);
    });

    it("passes NetDevice with a 9000-byte MTU", async () => {
      const report = await runContract(
        netDeviceSuite,
        { create: (b) => new NetDevice(b, { mtu: 9000 }) },
        { transport },
      );
      expect(report.failed).toEqual([]);
    });

    it("fails only the transmit check for a device that forwards the header", async () => {
      const report = await runContract(netDeviceSuite, forwardsHeader, { transport });
      expect(report.failed).toEqual([
        "passes a transmitted frame to the back-end without the virtio_net_hdr",
      ]);
      const v = violation(report, report.failed[0]!);
      expect((v.expected as Uint8Array).length).toBe(60);
      expect((v.seen as Uint8Array).length).toBe(72);
    });

    it("fails only the receive check for a device that writes num_buffers 0", async () => {
      const report = await runContract(netDeviceSuite, zeroNumBuffers, { transport });
      expect(report.failed).toEqual([
        "delivers a received frame behind a virtio_net_hdr_v1 with num_buffers 1",
      ]);
      const v = violation(report, report.failed[0]!);
      expect([v.expected, v.seen]).toEqual([1, 0]);
      expect(v.message).toContain("num_buffers of a 60-byte frame");
    });
  });
}
