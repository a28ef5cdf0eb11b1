/**
 * vitest binding: one `it` per check of a suite, so a third party sees each rule as a test.
 * Subpath `@virtio-ts/contract/vitest`; needs vitest (an optional peer dependency).
 * @module
 */
import { describe, it } from "vitest";
import { type ContractSuite, type ContractTransport, runCheck } from "./contract.js";

/** Options of {@link describeContract}. */
export interface DescribeContractOptions {
  /** Name of the implementation, appended to the suite name in the `describe` title. */
  readonly name?: string;
  /** Names of checks expected to fail (a checked-in known-failure list): they run with `it.fails`. */
  readonly knownFailures?: readonly string[];
  /** Per-check timeout in milliseconds (default vitest's). */
  readonly timeout?: number;
  /** The transport to run over (default "mmio"); "pci" appends "over virtio-pci" to the title. */
  readonly transport?: ContractTransport;
}

/**
 * Register a vitest `describe` block for `suite` with one `it` per check; a failing check's
 * test fails with the `ContractViolation` message (which rule, expected vs seen).
 *
 * @param suite - the suite, e.g. `blkDeviceSuite`
 * @param adapter - the implementation under test, in the suite's adapter type
 * @param options - title suffix, known failures, timeout, transport
 * @throws RangeError naming `options.knownFailures` if it names a check the suite lacks, or
 *   `options.transport` if it is neither "mmio" nor "pci"
 *
 * @example
 * ```ts
 * import { blkDeviceSuite } from "@virtio-ts/contract";
 * import { describeContract } from "@virtio-ts/contract/vitest";
 * const adapter = { create: ({ image, readOnly }) => new MyBlk(image, readOnly) };
 * describeContract(blkDeviceSuite, adapter);
 * describeContract(blkDeviceSuite, adapter, { transport: "pci" });
 * ```
 */
export function describeContract<A>(
  suite: ContractSuite<A>,
  adapter: A,
  options: DescribeContractOptions = {},
): void {
  const known = new Set(options.knownFailures ?? []);
  for (const k of known) {
    if (!suite.checks.some((c) => c.name === k)) {
      throw new RangeError(`options.knownFailures names no check of "${suite.name}": "${k}"`);
    }
  }
  const transport = options.transport ?? "mmio";
  if (transport !== "mmio" && transport !== "pci") {
    throw new RangeError(`options.transport must be "mmio" or "pci", got ${String(transport)}`);
  }
  const over = transport === "pci" ? " over virtio-pci" : "";
  const title =
    options.name === undefined ? `${suite.name}${over}` : `${suite.name}: ${options.name}${over}`;
  describe(title, () => {
    for (const check of suite.checks) {
      const body = async () => {
        const r = await runCheck(check, adapter, transport);
        if (r.outcome === "failed") throw r.error;
      };
      const name = `${check.name} (${check.spec})`;
      if (known.has(check.name)) it.fails(name, body, options.timeout);
      else it(name, body, options.timeout);
    }
  });
}
