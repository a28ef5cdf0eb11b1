/**
 * "any virtio-console driver": checks a third-party console driver (VIRTIO 1.3 §5.3) against
 * our ConsoleDevice with two ports (multiport offered), behind a recording register bus and a
 * model wrapper that watches every buffer and control message the driver makes available.
 * @module
 */
import { ConsoleDevice } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { ConsoleControl, ConsoleEvent, ConsoleFeature, hasFeature } from "@virtio-ts/spec";
import type { ConfigWritableTransport } from "@virtio-ts/transport";
import { pattern } from "./blk-rig.js";
import { RecordingConsoleBackend } from "./console-device-suite.js";
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

/** Guest memory and device access the suite gives a console driver under test. */
export type ConsoleDriverEnv = DriverEnv;

/**
 * How the "any virtio-console driver" suite reaches a third-party console driver.
 *
 * Implementer contract: `attach` is called once per check with a fresh, reset device offering
 * MULTIPORT with ports 0 (a console) and 1; it initialises the device (§3.1.1) and returns when
 * the driver is ready (with MULTIPORT, after sending DEVICE_READY). `write(port, data)` settles
 * when the device has used the data. `received(port)` returns every byte received on the port
 * so far. The suite runs the device and calls `interrupt` whenever the device's interrupt line
 * is asserted; the driver must not wait for anything else.
 */
export interface ConsoleDriverAdapter {
  /** Initialise the device behind `transport` and get ready. */
  attach(
    transport: ConfigWritableTransport,
    memory: GuestMemory,
    env: ConsoleDriverEnv,
  ): Promise<void> | void;
  /** Send `data` on `port`. */
  write(port: number, data: Uint8Array): Promise<void>;
  /** Every byte received on `port` so far, in order. */
  received(port: number): Uint8Array;
  /** Open the guest side of `port` (MULTIPORT: PORT_OPEN 1); optional. */
  openPort?(port: number): void;
  /** The interrupt handler: take the interrupt and reap completions. */
  interrupt(): void;
}

const MEM_SIZE = 0x800000;
const REGION = { base: 0x100000, size: 0x700000 } as const;
const CTRL_RX = 2;
const CTRL_TX = 3;

interface CtrlMsg {
  readonly id: number;
  readonly event: number;
  readonly value: number;
}

class ConsoleDriverRig {
  readonly memory = createGuestMemory({ size: MEM_SIZE });
  readonly backend = new RecordingConsoleBackend();
  readonly console: ConsoleDevice;
  readonly side: DriverSide;
  readonly events: BusEvent[] = [];
  readonly accepted = [0, 0];
  /** Direction faults: a writable descriptor in a transmit queue, or a readable one in receive. */
  readonly direction: string[] = [];
  readonly control: CtrlMsg[] = [];

  constructor(
    readonly adapter: ConsoleDriverAdapter,
    readonly kind: ContractTransport,
  ) {
    this.console = new ConsoleDevice(this.backend, {
      ports: [{ console: true }, { name: "contract.1" }],
      maxPorts: 2,
    });
    const tap = new TapModel(this.console, {
      onPop: (q, chain, ctx) => {
        const transmit = q === CTRL_TX || (q !== CTRL_RX && (q & 1) === 1);
        if (transmit && chain.writableBytes > 0) {
          this.direction.push(`queue ${q}: ${chain.writableBytes} device-writable bytes`);
        }
        if (!transmit && chain.readableBytes > 0) {
          this.direction.push(`queue ${q}: ${chain.readableBytes} device-readable bytes`);
        }
        if (q === CTRL_TX && chain.readableBytes >= ConsoleControl.SIZE) {
          const m = new Uint8Array(ConsoleControl.SIZE);
          chain.copyFromReadable(ctx.memory, 0, m);
          const v = new DataView(m.buffer);
          this.control.push({
            id: v.getUint32(ConsoleControl.ID, true),
            event: v.getUint16(ConsoleControl.EVENT, true),
            value: v.getUint16(ConsoleControl.VALUE, true),
          });
        }
      },
    });
    this.side = driverSide(tap, this.memory, kind, this.events, this.accepted);
  }

  /** The offered features as the registers show them (transport bits included). */
  get offered(): bigint {
    return this.side.offeredFeatures();
  }

  get acceptedFeatures(): bigint {
    return joinFeatureWords(this.accepted);
  }

  get multiport(): boolean {
    return hasFeature(this.acceptedFeatures, ConsoleFeature.MULTIPORT);
  }

  /** Run the device and the driver's interrupt handler for a while, or until `cond` holds. */
  async run(cond: () => boolean = () => false, turns = MAX_TURNS): Promise<boolean> {
    for (let i = 0; i < turns && !cond(); i++) {
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
    return cond();
  }

  /** Settle `p` while running the device (bounded). */
  async settle<T>(p: Promise<T>, what: string): Promise<T> {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    await this.run(() => done);
    if (!done) {
      throw new ContractViolation(`${what}: the driver's promise`, "settled", "still pending");
    }
    try {
      return await tracked;
    } catch (e) {
      throw new ContractViolation(what, "resolves", e instanceof Error ? e.message : String(e));
    }
  }

  expectDirections(): void {
    expectEqual("buffers with the wrong direction (§5.3.6.1)", this.direction.join("; "), "");
  }
}

async function rig(
  adapter: ConsoleDriverAdapter,
  kind: ContractTransport,
): Promise<ConsoleDriverRig> {
  const r = new ConsoleDriverRig(adapter, kind);
  await attachDriver(r.side, kind, REGION, (t, env) => adapter.attach(t, r.memory, env));
  await r.run(undefined, 8);
  return r;
}

async function roundTrip(r: ConsoleDriverRig, port: number, seed: number): Promise<void> {
  const out = pattern(300, seed);
  const before = r.backend.output.get(port)?.length ?? 0;
  await r.settle(r.adapter.write(port, out), `write on port ${port}`);
  const got = Uint8Array.from((r.backend.output.get(port) ?? []).slice(before));
  expectEqual(`bytes the device got on port ${port}`, got, out);
  const inp = pattern(120, seed + 1);
  const had = r.adapter.received(port).length;
  const n = r.console.input(port, inp);
  expectEqual(`input the device took for port ${port}`, n, inp.length);
  await r.run(() => r.adapter.received(port).length >= had + inp.length);
  expectEqual(
    `bytes the driver received on port ${port}`,
    r.adapter.received(port).subarray(had),
    inp,
  );
}

const checks: ContractCheck<ConsoleDriverAdapter>[] = [
  {
    name: "initialises the device in the order of §3.1.1",
    spec: "§3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      checkInit(r.events);
    },
  },
  {
    name: "accepts only offered features",
    spec: "§2.2.1, §3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      expectEqual("features accepted but not offered", r.acceptedFeatures & ~r.offered, 0n);
    },
  },
  {
    name: "moves bytes both ways on port 0 with buffers of the right direction",
    spec: "§5.3.6, §5.3.6.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await roundTrip(r, 0, 1);
      r.expectDirections();
    },
  },
  {
    name: "sends DEVICE_READY, then PORT_READY for every port added, when MULTIPORT is negotiated",
    spec: "§5.3.6.2",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      if (!r.multiport) return;
      const { DEVICE_READY, PORT_READY, PORT_OPEN } = ConsoleEvent;
      await r.run(() => r.control.filter((m) => m.event === PORT_READY).length >= 2);
      const ready = r.control.findIndex((m) => m.event === DEVICE_READY);
      expectThat(
        "DEVICE_READY from the driver",
        ready >= 0 && r.control[ready]!.value === 1,
        "DEVICE_READY value 1",
        JSON.stringify(r.control),
      );
      for (const p of [0, 1]) {
        const i = r.control.findIndex((m) => m.event === PORT_READY && m.id === p);
        expectThat(
          `PORT_READY for port ${p} after its DEVICE_ADD`,
          i > ready && r.control[i]!.value === 1,
          `PORT_READY {id ${p}, value 1} after DEVICE_READY`,
          JSON.stringify(r.control),
        );
      }
      r.expectDirections();
      if (adapter.openPort === undefined) return;
      adapter.openPort(1);
      await r.run(() => r.control.some((m) => m.event === PORT_OPEN && m.id === 1), 40);
      expectThat(
        "PORT_OPEN for port 1 after openPort(1)",
        r.control.some((m) => m.event === PORT_OPEN && m.id === 1 && m.value === 1),
        "PORT_OPEN {id 1, value 1}",
        JSON.stringify(r.control),
      );
      await roundTrip(r, 1, 3);
    },
  },
];

/**
 * The "any virtio-console driver" suite (VIRTIO 1.3 §5.3): §3.1.1 initialisation order, only
 * offered features, bytes both ways on port 0 with transmit buffers device-readable and
 * receive buffers device-writable, and with MULTIPORT the DEVICE_READY / PORT_READY / PORT_OPEN
 * messages and data on port 1. The device is our ConsoleDevice with ports 0 (a console) and 1.
 */
export const consoleDriverSuite: ContractSuite<ConsoleDriverAdapter> = {
  name: "any virtio-console driver",
  checks,
};
