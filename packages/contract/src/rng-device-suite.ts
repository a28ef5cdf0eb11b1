/**
 * "any virtio-rng device": checks a third-party entropy device model (VIRTIO 1.3 §5.4) through
 * our virtio-mmio transport and a raw driver queue.
 * @module
 */
import { DeviceId } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { BlkRig, INDIRECT_BIT, PACKED_BIT, type Pending, pattern } from "./blk-rig.js";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { macrotask } from "./wait.js";

/**
 * How the "any virtio-rng device" suite reaches a third-party entropy device.
 *
 * Implementer contract: `create` returns a fresh, never activated `DeviceModel` with device ID
 * 4 each time it is called, producing entropy without a rate limit slower than the suite's
 * bounded waits (a few hundred macrotasks per request).
 */
export interface RngDeviceAdapter<M extends DeviceModel = DeviceModel> {
  /** A fresh entropy device model. */
  create(): M | Promise<M>;
  /**
   * Optional: resolves when the model has no work in flight (or after one round of it).
   * Default: the model's own `whenIdle` (an optional hook of the device contract), if any.
   */
  whenIdle?(model: M): Promise<void>;
}

async function rig(a: RngDeviceAdapter, kind: ContractTransport, ring = 0n): Promise<BlkRig> {
  const model = await a.create();
  if (model.deviceId !== DeviceId.RNG) {
    throw new ContractViolation("the model's deviceId (§5.4.1)", DeviceId.RNG, model.deviceId);
  }
  return BlkRig.wrap(model, a.whenIdle?.bind(a), kind).init({ sectors: 0, accept: 0n, ring });
}

const CANARY = 0x5a;

/** The first `len` bytes look random: few equal the canary, not all the same. */
function expectRandom(what: string, data: Uint8Array, len: number): void {
  const head = data.subarray(0, len);
  let canary = 0;
  for (const b of head) if (b === CANARY) canary++;
  expectThat(
    `${what}: bytes left at the canary value within the used length`,
    canary <= len / 32 + 4,
    `at most ${Math.floor(len / 32 + 4)}`,
    canary,
  );
  if (len >= 16) {
    expectThat(
      `${what}: bytes within the used length`,
      new Set(head).size > 1,
      "not all equal",
      `all 0x${head[0]!.toString(16)}`,
    );
  }
}

async function fillAndCheck(r: BlkRig, lens: readonly number[], what: string): Promise<void> {
  const ps: Pending[] = lens.map((n) => r.submitRaw([], [n], CANARY));
  const split = r.submitRaw([], [100, 1, 411], CANARY);
  const cs = await r.wait([...ps, split], what);
  const sizes = [...lens, 512];
  cs.forEach((c, i) => {
    const size = sizes[i]!;
    expectThat(
      `${what}: used length of a ${size}-byte buffer`,
      c.len >= 1 && c.len <= size,
      `in [1, ${size}]`,
      c.len,
    );
    expectRandom(`${what}: ${size}-byte buffer`, c.data, c.len);
  });
  const a = cs[0]!.data.subarray(0, Math.min(cs[0]!.len, 16));
  const b = cs[1]!.data.subarray(0, Math.min(cs[1]!.len, 16));
  if (a.length === 16 && b.length === 16) {
    expectThat(
      `${what}: two buffers`,
      a.some((x, i) => x !== b[i]),
      "different bytes",
      "the same 16 bytes",
    );
  }
}

const checks: ContractCheck<RngDeviceAdapter>[] = [
  {
    name: "fills writable buffers with random bytes up to a used length within the buffer",
    spec: "§5.4.6.2, §2.7.8",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await fillAndCheck(r, [64, 64, 1, 4096], "split ring");
    },
  },
  {
    name: "never writes into device-readable descriptors",
    spec: "§5.4.6.1, §2.6.4",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const ro = pattern(256, 31);
      let p: ReturnType<BlkRig["submitRaw"]>;
      try {
        p = r.submitRaw([ro], [256], CANARY);
      } catch (e) {
        throw new ContractViolation("the register access", "no exception", String(e));
      }
      for (let i = 0; i < 8 && !r.isDone(p); i++) await r.turn();
      const back = new Uint8Array(256);
      r.memory.read(p.outSegs[0]!.addr, back);
      expectEqual("the device-readable buffer after the request", back, ro);
      if (!r.needsReset) {
        // The device must keep serving well-formed requests.
        await fillAndCheck(r, [128, 128], "after a chain with a readable descriptor");
      }
    },
  },
  {
    name: "serves buffers through indirect descriptor tables when VIRTIO_F_INDIRECT_DESC is offered",
    spec: "§2.7.5.3",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, INDIRECT_BIT);
      if ((r.offered & INDIRECT_BIT) === 0n) return;
      const p = r.submitRaw([], [64, 64, 64, 64], CANARY);
      const [c] = await r.wait([p], "indirect");
      expectThat(
        "used length of a 256-byte indirect chain",
        c!.len >= 1 && c!.len <= 256,
        "in [1, 256]",
        c!.len,
      );
      expectRandom("indirect chain", c!.data, c!.len);
    },
  },
  {
    name: "serves buffers on a packed virtqueue when VIRTIO_F_RING_PACKED is offered",
    spec: "§2.8",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport, PACKED_BIT);
      if ((r.offered & PACKED_BIT) === 0n) return;
      for (let i = 0; i < r.queueSize + 8; i += 8) {
        await fillAndCheck(r, [32, 32, 32, 32, 32, 32, 32], `packed ring, round ${i / 8}`);
      }
    },
  },
  {
    name: "lands no completion after a reset with buffers in flight",
    spec: "§2.4.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      const ps = Array.from({ length: 4 }, () => r.submitRaw([], [4096], CANARY));
      r.transport.reset();
      const used = r.usedIdx();
      const before = ps.map((p) => r.memory.slice(p.inSegs[0]!.addr, 4096).slice());
      for (let i = 0; i < 10; i++) {
        await r.idle();
        await macrotask();
      }
      expectEqual("used.idx after the reset", r.usedIdx(), used);
      ps.forEach((p, i) => {
        expectEqual(
          `buffer ${i} after the reset`,
          r.memory.slice(p.inSegs[0]!.addr, 4096),
          before[i]!,
        );
      });
    },
  },
];

/**
 * The "any virtio-rng device" suite (VIRTIO 1.3 §5.4): random bytes within the used length,
 * used lengths within the buffer, device-readable descriptors left alone, indirect tables and
 * packed rings when offered, nothing completed after a reset. A device may fill less than the
 * whole buffer (§5.4.6.2), so only the used length is checked for randomness.
 */
export const rngDeviceSuite: ContractSuite<RngDeviceAdapter> = {
  name: "any virtio-rng device",
  checks,
};
