import { describe, expect, it } from "vitest";
import {
  type ContractSuite,
  ContractViolation,
  expectEqual,
  expectThat,
  runContract,
} from "../src/index.js";
import { describeContract } from "../src/vitest.js";

const suite: ContractSuite<{ value: number }> = {
  name: "toy",
  checks: [
    {
      name: "value is 1",
      spec: "§0.1",
      async run({ adapter }) {
        expectEqual("value", adapter.value, 1);
      },
    },
    {
      name: "value is positive",
      spec: "§0.2",
      async run({ adapter }) {
        expectThat("value", adapter.value > 0, "> 0", adapter.value);
      },
    },
    {
      name: "adapter does not throw",
      spec: "§0.3",
      async run({ adapter }) {
        if (adapter.value === 7) throw new TypeError("boom");
      },
    },
  ],
};

describe("runContract", () => {
  it("reports every check as passed when the rules hold", async () => {
    const r = await runContract(suite, { value: 1 });
    expect(r).toMatchObject({ suite: "toy", ok: true, failed: [] });
    expect(r.passed).toEqual(["value is 1", "value is positive", "adapter does not throw"]);
  });

  it("names the failed check with expected and seen values and fills in the check name", async () => {
    const r = await runContract(suite, { value: 2 });
    expect(r.ok).toBe(false);
    expect(r.failed).toEqual(["value is 1"]);
    const f = r.results[0];
    expect(f?.outcome).toBe("failed");
    if (f?.outcome !== "failed") return;
    expect(f.spec).toBe("§0.1");
    expect(f.reason).toBe("ContractViolation: value: expected 1, seen 2");
    const v = f.error as ContractViolation;
    expect(v).toBeInstanceOf(ContractViolation);
    expect(v.check).toBe("value is 1");
    expect([v.expected, v.seen]).toEqual([1, 2]);
  });

  it("reports an error other than a violation as a failure with its message", async () => {
    const r = await runContract(suite, { value: 7 });
    expect(r.failed).toEqual(["value is 1", "adapter does not throw"]);
    expect(r.results[2]).toMatchObject({ outcome: "failed", reason: "TypeError: boom" });
  });

  it("runs only the checks the filter selects", async () => {
    const r = await runContract(suite, { value: 5 }, { filter: (c) => c.spec === "§0.2" });
    expect(r.passed).toEqual(["value is positive"]);
    expect(r.results).toHaveLength(1);
  });

  it("hands each check the transport of the run (mmio by default) and reports it", async () => {
    const seen: string[] = [];
    const probe: ContractSuite<null> = {
      name: "probe",
      checks: [
        { name: "records", spec: "§4", run: async ({ transport }) => void seen.push(transport) },
      ],
    };
    expect((await runContract(probe, null)).transport).toBe("mmio");
    expect((await runContract(probe, null, { transport: "pci" })).transport).toBe("pci");
    expect(seen).toEqual(["mmio", "pci"]);
    await expect(runContract(probe, null, { transport: "ccw" as "pci" })).rejects.toThrow(
      /options\.transport/,
    );
  });

  it("throws a TypeError naming suite for something that is not a suite", async () => {
    await expect(runContract({} as never, {})).rejects.toThrow(/suite must be a ContractSuite/);
  });

  it("compares byte arrays by content in expectEqual", () => {
    expect(() =>
      expectEqual("bytes", new Uint8Array([1, 2]), new Uint8Array([1, 2])),
    ).not.toThrow();
    expect(() => expectEqual("bytes", new Uint8Array([1, 2]), new Uint8Array([1, 3]))).toThrow(
      "bytes: expected bytes[2] 01 03, seen bytes[2] 01 02",
    );
  });
});

describe("describeContract", () => {
  it("refuses an unknown transport, naming options.transport", () => {
    expect(() => describeContract(suite, { value: 1 }, { transport: "ccw" as "pci" })).toThrow(
      /options\.transport/,
    );
  });

  it("refuses a known failure that names no check, naming options.knownFailures", () => {
    expect(() => describeContract(suite, { value: 1 }, { knownFailures: ["nope"] })).toThrow(
      RangeError,
    );
    expect(() => describeContract(suite, { value: 1 }, { knownFailures: ["nope"] })).toThrow(
      /options\.knownFailures/,
    );
  });
});

describeContract(
  suite,
  { value: 3 },
  { name: "toy with a known failure", knownFailures: ["value is 1"] },
);
