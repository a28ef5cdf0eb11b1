/**
 * The framework-neutral core of a conformance suite: named checks that throw
 * {@link ContractViolation}, and {@link runContract} that runs them and reports.
 * @module
 */

/**
 * A check found that the implementation under test breaks a rule. Carries the check's name, the
 * spec section it enforces, and what was expected against what was seen, so a report says
 * which rule broke and how without reading the check's source.
 */
export class ContractViolation extends Error {
  /** Name of the check that failed (filled in by {@link runContract} if the check left it empty). */
  check: string;
  /** The VIRTIO section the broken rule comes from, e.g. "§5.2.6.2". */
  readonly spec: string;
  /** What the rule requires, in words or as a value. */
  readonly expected: unknown;
  /** What the implementation did. */
  readonly seen: unknown;

  /**
   * @param what - short description of what was checked
   * @param expected - the required value or behaviour
   * @param seen - what the implementation did
   * @param spec - section of the rule (default: the check's own section, filled in by the runner)
   * @param check - name of the check (default: filled in by the runner)
   */
  constructor(what: string, expected: unknown, seen: unknown, spec = "", check = "") {
    super(`${what}: expected ${show(expected)}, seen ${show(seen)}`);
    this.name = "ContractViolation";
    this.check = check;
    this.spec = spec;
    this.expected = expected;
    this.seen = seen;
  }
}

function show(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "bigint") return `0x${v.toString(16)}`;
  if (v instanceof Uint8Array) {
    const head = Array.from(v.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join(" ");
    return `bytes[${v.length}] ${head}${v.length > 16 ? " …" : ""}`;
  }
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Throw a {@link ContractViolation} unless `seen === expected` (`Object.is`; byte arrays are
 * compared by content).
 * @param what - what is compared, for the message
 * @param seen - the value the implementation produced
 * @param expected - the required value
 * @throws ContractViolation when they differ
 */
export function expectEqual(what: string, seen: unknown, expected: unknown): void {
  if (seen instanceof Uint8Array && expected instanceof Uint8Array) {
    if (seen.length === expected.length && seen.every((b, i) => b === expected[i])) return;
    throw new ContractViolation(what, expected, seen);
  }
  if (!Object.is(seen, expected)) throw new ContractViolation(what, expected, seen);
}

/**
 * Throw a {@link ContractViolation} unless `ok` holds.
 * @param what - the rule, for the message
 * @param ok - whether it holds
 * @param expected - what the rule requires
 * @param seen - what was observed
 * @throws ContractViolation when `ok` is false
 */
export function expectThat(what: string, ok: boolean, expected: unknown, seen: unknown): void {
  if (!ok) throw new ContractViolation(what, expected, seen);
}

/**
 * Which transport the suites put between their side and the implementation under test:
 * virtio-mmio (VIRTIO 1.3 §4.2, the default) or virtio-pci (§4.1: a modern PCI function with
 * its structures in a memory BAR and INTx interrupts). A device suite wraps the model under
 * test in our device side of that transport; a driver suite hands the driver under test our
 * driver transport of that kind.
 */
export type ContractTransport = "mmio" | "pci";

/** What a check gets when it runs. */
export interface ContractContext<A> {
  /** The implementation under test, as the suite's adapter type wraps it. */
  readonly adapter: A;
  /** Name of the running check. */
  readonly check: string;
  /** The transport to run over. */
  readonly transport: ContractTransport;
}

/**
 * One rule of a suite.
 *
 * Implementer contract: `run` builds whatever it needs afresh (checks are independent and may
 * run in any order), throws a {@link ContractViolation} when the implementation breaks the rule,
 * and bounds every wait (a silent implementation fails, it never hangs the run).
 */
export interface ContractCheck<A> {
  /** Name of the check; reads as a sentence and is unique in its suite. */
  readonly name: string;
  /** The VIRTIO 1.3 section(s) the check enforces, e.g. "§5.2.6.2". */
  readonly spec: string;
  /** Run the check against the adapter; resolves if the rule holds. */
  run(ctx: ContractContext<A>): Promise<void>;
}

/**
 * A named list of checks against one kind of implementation (a virtio-blk device model, a
 * virtio-blk driver…), parameterised by the adapter type through which it reaches the
 * implementation.
 */
export interface ContractSuite<A> {
  /** Name of the suite, e.g. "any virtio-blk device". */
  readonly name: string;
  /** The checks, in report order. */
  readonly checks: readonly ContractCheck<A>[];
}

/** Result of one check in a {@link ContractReport}. */
export type ContractResult =
  | {
      /** The rule holds. */
      readonly outcome: "passed";
      /** Check name. */
      readonly name: string;
      /** Spec section of the check. */
      readonly spec: string;
    }
  | {
      /** The rule is broken, or the check could not run. */
      readonly outcome: "failed";
      /** Check name. */
      readonly name: string;
      /** Spec section of the check. */
      readonly spec: string;
      /** One-line reason (the violation's or error's message). */
      readonly reason: string;
      /**
       * The {@link ContractViolation} thrown, or any other error (the implementation threw, or
       * a bug in the adapter).
       */
      readonly error: unknown;
    };

/** What {@link runContract} returns. */
export interface ContractReport {
  /** Name of the suite. */
  readonly suite: string;
  /** Every check's result, in suite order. */
  readonly results: readonly ContractResult[];
  /** Names of the checks that passed. */
  readonly passed: readonly string[];
  /** Names of the checks that failed. */
  readonly failed: readonly string[];
  /** Whether every check passed. */
  readonly ok: boolean;
  /** The transport the checks ran over. */
  readonly transport: ContractTransport;
}

/** Options of {@link runContract}. */
export interface RunContractOptions {
  /** Run only the checks whose name this returns true for. Default: all. */
  readonly filter?: (check: { readonly name: string; readonly spec: string }) => boolean;
  /** The transport to run over (default "mmio"). */
  readonly transport?: ContractTransport;
}

/**
 * Run one check and return its result; never throws for a failing check.
 * @param check - the check
 * @param adapter - the implementation under test
 * @param transport - the transport to run over (default "mmio")
 * @returns passed, or failed with the reason
 * @throws RangeError naming `transport` if it is neither "mmio" nor "pci"
 */
export async function runCheck<A>(
  check: ContractCheck<A>,
  adapter: A,
  transport: ContractTransport = "mmio",
): Promise<ContractResult> {
  if (transport !== "mmio" && transport !== "pci") {
    throw new RangeError(`transport must be "mmio" or "pci", got ${String(transport)}`);
  }
  try {
    await check.run({ adapter, check: check.name, transport });
    return { outcome: "passed", name: check.name, spec: check.spec };
  } catch (e) {
    if (e instanceof ContractViolation && e.check === "") e.check = check.name;
    const reason = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { outcome: "failed", name: check.name, spec: check.spec, reason, error: e };
  }
}

/**
 * Run every check of `suite` against `adapter`, one after the other, and report.
 *
 * @param suite - the suite
 * @param adapter - the implementation under test, wrapped in the suite's adapter type
 * @param options - optional filter and transport
 * @returns the report (never rejects because a check failed)
 * @throws TypeError naming `suite` if it has no `checks` array; RangeError naming
 *   `options.transport` if it is neither "mmio" nor "pci"
 *
 * @example
 * ```ts
 * const report = await runContract(blkDeviceSuite, myAdapter); // over virtio-mmio
 * const overPci = await runContract(blkDeviceSuite, myAdapter, { transport: "pci" });
 * if (!report.ok) console.log(report.results.filter((r) => r.outcome === "failed"));
 * ```
 */
export async function runContract<A>(
  suite: ContractSuite<A>,
  adapter: A,
  options: RunContractOptions = {},
): Promise<ContractReport> {
  if (suite === null || typeof suite !== "object" || !Array.isArray(suite.checks)) {
    throw new TypeError("suite must be a ContractSuite with a checks array");
  }
  const transport = options.transport ?? "mmio";
  if (transport !== "mmio" && transport !== "pci") {
    throw new RangeError(`options.transport must be "mmio" or "pci", got ${String(transport)}`);
  }
  const results: ContractResult[] = [];
  for (const check of suite.checks) {
    if (options.filter !== undefined && !options.filter(check)) continue;
    results.push(await runCheck(check, adapter, transport));
  }
  return {
    suite: suite.name,
    transport,
    results,
    passed: results.filter((r) => r.outcome === "passed").map((r) => r.name),
    failed: results.filter((r) => r.outcome === "failed").map((r) => r.name),
    ok: results.every((r) => r.outcome === "passed"),
  };
}
