/**
 * "any virtio-rng driver": checks a third-party entropy driver (VIRTIO 1.3 §5.4) against our
 * RngDevice with a known byte stream, behind a recording register bus and a model wrapper that
 * watches every buffer the driver makes available.
 * @module
 */
import { RngDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import type { DriverTransport } from "@virtio-ts/transport";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import type { DriverEnv } from "./driver-env.js";
import { type BusEvent, checkInit, joinFeatureWords } from "./init-order.js";
import { attachDriver, type DriverSide, driverSide } from "./rig-link.js";
import { TapModel } from "./tap.js";
import { MAX_TURNS, macrotask } from "./wait.js";

/** Guest memory and device access the suite gives an entropy driver under test. */
export type RngDriverEnv = DriverEnv;

/**
 * How the "any virtio-rng driver" suite reaches a third-party entropy driver.
 *
 * Implementer contract: `attach` is called once per check with a fresh, reset device; it
 * initialises the device (§3.1.1) through `transport` (virtio-mmio or virtio-pci, as
 * `env.transport` says; or `env.bus` / `env.pci`) and returns when the driver is ready. `read(n)` resolves with `n` random bytes taken from the device. The suite
 * runs the device and calls `interrupt` whenever the device's interrupt line is asserted; the
 * driver must not wait for anything else.
 */
export interface RngDriverAdapter {
  /** Initialise the device behind `transport` and get ready for reads. */
  attach(transport: DriverTransport, memory: GuestMemory, env: RngDriverEnv): Promise<void> | void;
  /** `n` random bytes from the device. */
  read(n: number): Promise<Uint8Array>;
  /** The interrupt handler: take the interrupt and reap completions. */
  interrupt(): void;
}

const MEM_SIZE = 0x800000;
const REGION = { base: 0x100000, size: 0x700000 } as const;
/** What the suite writes into every buffer the driver posts, before the device fills it. */
const MARK = 0xee;

/** A pseudo-random byte stream the suite records (xorshift32), never {@link MARK}. */
class KnownSource {
  readonly produced: number[] = [];
  #x = 0x2545f491;
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) {
      let b = MARK;
      while (b === MARK) {
        this.#x ^= this.#x << 13;
        this.#x ^= this.#x >>> 17;
        this.#x ^= this.#x << 5;
        b = this.#x & 0xff;
      }
      buf[i] = b;
      this.produced.push(b);
    }
  }
}

interface RigOptions {
  /** Bytes the device fills per buffer at most (it may fill less, §5.4.6.2). */
  readonly maxRequestBytes?: number;
}

class RngDriverRig {
  readonly memory = createGuestMemory({ size: MEM_SIZE });
  readonly source = new KnownSource();
  readonly tap: TapModel;
  readonly side: DriverSide;
  readonly events: BusEvent[] = [];
  readonly accepted = [0, 0];
  /** Device-readable bytes found in chains the driver made available. */
  readableChains = 0;
  chains = 0;

  constructor(
    readonly adapter: RngDriverAdapter,
    readonly kind: ContractTransport,
    o: RigOptions,
  ) {
    const rng = new RngDevice({
      source: this.source,
      queueSize: 64,
      ...(o.maxRequestBytes === undefined ? {} : { maxRequestBytes: o.maxRequestBytes }),
    });
    this.tap = new TapModel(rng, {
      onPop: (_i, chain, ctx) => {
        this.chains++;
        if (chain.readableCount > 0) this.readableChains++;
        for (let i = chain.readableCount; i < chain.count; i++) {
          ctx.memory.fill(chain.addrs[i]!, chain.lens[i]!, MARK);
        }
      },
    });
    this.side = driverSide(this.tap, this.memory, kind, this.events, this.accepted);
  }

  /** The offered features as the registers show them (transport bits included). */
  get offered(): bigint {
    return this.side.offeredFeatures();
  }

  get acceptedFeatures(): bigint {
    return joinFeatureWords(this.accepted);
  }

  /** Run the device and the driver's interrupt handler until `p` settles (bounded). */
  async settle<T>(p: Promise<T>, what: string): Promise<T> {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < MAX_TURNS && !done; i++) {
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
    if (!done) {
      throw new ContractViolation(`${what}: the driver's promise`, "settled", "still pending");
    }
    return tracked;
  }

  /** `read(n)`, settled, as a ContractViolation if it rejects or returns another length. */
  async read(n: number): Promise<Uint8Array> {
    let b: Uint8Array;
    try {
      b = await this.settle(this.adapter.read(n), `read(${n})`);
    } catch (e) {
      if (e instanceof ContractViolation) throw e;
      throw new ContractViolation(`read(${n})`, "resolves", e instanceof Error ? e.message : e);
    }
    expectEqual(`length of read(${n})`, b.length, n);
    return b;
  }
}

async function rig(
  adapter: RngDriverAdapter,
  kind: ContractTransport,
  o: RigOptions = {},
): Promise<RngDriverRig> {
  const r = new RngDriverRig(adapter, kind, o);
  await attachDriver(r.side, kind, REGION, (t, env) => adapter.attach(t, r.memory, env));
  return r;
}

/** Every byte of `got` came from the device, in the device's order (bytes may be skipped). */
function expectFromDevice(what: string, got: Uint8Array, produced: readonly number[]): void {
  const mark = got.indexOf(MARK);
  expectThat(
    `${what}: bytes the device did not write (0x${MARK.toString(16)}, beyond the used length)`,
    mark < 0,
    "none",
    `at offset ${mark}`,
  );
  let j = 0;
  for (let i = 0; i < got.length; i++) {
    while (j < produced.length && produced[j] !== got[i]) j++;
    if (j === produced.length) {
      throw new ContractViolation(
        `${what}: byte ${i} in the order the device produced`,
        "a byte of the device's stream, in order",
        `0x${got[i]!.toString(16)}`,
      );
    }
    j++;
  }
}

const checks: ContractCheck<RngDriverAdapter>[] = [
  {
    name: "initialises the device in the order of §3.1.1",
    spec: "§3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.read(16);
      checkInit(r.events);
    },
  },
  {
    name: "accepts only offered features",
    spec: "§2.2.1, §3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const extra = r.acceptedFeatures & ~r.offered;
      expectEqual("features accepted but not offered", extra, 0n);
    },
  },
  {
    name: "makes only device-writable buffers available",
    spec: "§5.4.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.read(64);
      await r.read(3000);
      expectThat("buffers made available", r.chains > 0, "at least one", 0);
      expectEqual("chains with a device-readable descriptor", r.readableChains, 0);
    },
  },
  {
    name: "returns exactly n bytes of the device's stream for read(n)",
    spec: "§5.4.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const got: Uint8Array[] = [];
      for (const n of [1, 17, 4096, 10_000]) got.push(await r.read(n));
      const all = new Uint8Array(got.reduce((s, b) => s + b.length, 0));
      let off = 0;
      for (const b of got) {
        all.set(b, off);
        off += b.length;
      }
      expectFromDevice("four reads", all, r.source.produced);
    },
  },
  {
    name: "uses only the first used-length bytes of a partly filled buffer",
    spec: "§5.4.6.1, §5.4.6.2, §2.7.8",
    async run({ adapter, transport }) {
      // The device fills at most 5 bytes of each buffer; the rest keeps the suite's mark.
      const r = await rig(adapter, transport, { maxRequestBytes: 5 });
      const a = await r.read(64);
      const b = await r.read(3);
      expectFromDevice("read(64) from a device filling 5 bytes a buffer", a, r.source.produced);
      expectFromDevice("read(3) after it", b, r.source.produced);
    },
  },
];

/**
 * The "any virtio-rng driver" suite (VIRTIO 1.3 §5.4): §3.1.1 initialisation order, only
 * offered features accepted, only device-writable buffers, `read(n)` returning `n` bytes of the
 * device's stream, and only the first used-length bytes of a buffer the device filled in part.
 * The device is our RngDevice over a known byte stream, so every byte returned is traced back to
 * the device.
 */
export const rngDriverSuite: ContractSuite<RngDriverAdapter> = {
  name: "any virtio-rng driver",
  checks,
};
