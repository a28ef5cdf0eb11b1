/**
 * "any virtio-console device": checks a third-party virtio-console {@link DeviceModel} (VIRTIO
 * 1.3 §5.3) through our virtio-mmio transport, raw driver queues the suite fills itself, and a
 * recording {@link ConsoleBackend} the suite hands to the adapter's factory.
 * @module
 */
import type { ConsoleBackend, ConsoleInputSink } from "@virtio-ts/devices";
import {
  ConsoleConfig,
  ConsoleControl,
  ConsoleEvent,
  ConsoleFeature,
  DeviceId,
  DeviceStatus,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { pattern } from "./blk-rig.js";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import { noThrow, type QueuePending, QueueRig } from "./queue-rig.js";
import { macrotask } from "./wait.js";

/** One `portOpen` call a {@link RecordingConsoleBackend} recorded. */
export interface PortOpenReport {
  /** Port number. */
  readonly port: number;
  /** Whether the guest opened (true) or closed the port. */
  readonly open: boolean;
}

/**
 * The console back-end the suite gives a device under test: it records output per port, the
 * bytes written to `emerg_wr` and port open / close reports, and injects input through the sink
 * the device attaches.
 */
export class RecordingConsoleBackend implements ConsoleBackend {
  /** The sink the device attached, or undefined before `attach`. */
  sink: ConsoleInputSink | undefined = undefined;
  /** Output bytes per port, concatenated. */
  readonly output = new Map<number, number[]>();
  /** Bytes the device passed on from `emerg_wr`. */
  readonly emergency: number[] = [];
  /** `portOpen` reports, in order. */
  readonly opens: PortOpenReport[] = [];

  /** Keep `sink` for injection. */
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }

  /** Record guest output; always accepts it. */
  write(port: number, data: Uint8Array): boolean {
    let o = this.output.get(port);
    if (o === undefined) {
      o = [];
      this.output.set(port, o);
    }
    for (const b of data) o.push(b);
    return true;
  }

  /** Record a port open / close. */
  portOpen(port: number, open: boolean): void {
    this.opens.push({ port, open });
  }

  /** Record an emergency byte. */
  emergencyWrite(byte: number): void {
    this.emergency.push(byte);
  }
}

/** What the suite asks the adapter's factory for. */
export interface ConsoleDeviceSetup {
  /**
   * Ports the device must have from the start, numbered 0 to `ports - 1`, host side open;
   * port 0 is a console. With `ports > 1` the device offers VIRTIO_CONSOLE_F_MULTIPORT and
   * `max_nr_ports >= ports`.
   */
  readonly ports: number;
}

/**
 * How the "any virtio-console device" suite reaches a third-party console device.
 *
 * Implementer contract: `create` returns a fresh, never activated {@link DeviceModel} with
 * device ID 3 that writes guest output to `backend.write(port, bytes)`, reports guest
 * PORT_OPEN through `backend.portOpen`, passes `emerg_wr` bytes to `backend.emergencyWrite` (or
 * `write(0, …)`), and takes host input through the sink it passes to `backend.attach`.
 */
export interface ConsoleDeviceAdapter<M extends DeviceModel = DeviceModel> {
  /** A fresh console device over `backend`, with the ports `setup` asks for. */
  create(backend: ConsoleBackend, setup: ConsoleDeviceSetup): M | Promise<M>;
  /**
   * Optional: resolves when the model has no work in flight (or after one round of it).
   * Default: the model's own `whenIdle` (an optional hook of the device contract), if any.
   */
  whenIdle?(model: M): Promise<void>;
}

const MULTIPORT = featureMask(ConsoleFeature.MULTIPORT);
const CTRL_RX = 2;
const CTRL_TX = 3;
const CTRL_BUF = 64;
const { DEVICE_READY, DEVICE_ADD, PORT_READY, CONSOLE_PORT, PORT_OPEN } = ConsoleEvent;

interface Console {
  readonly rig: QueueRig;
  readonly backend: RecordingConsoleBackend;
}

async function make(
  a: ConsoleDeviceAdapter,
  kind: ContractTransport,
  ports: number,
): Promise<Console> {
  const backend = new RecordingConsoleBackend();
  const model = await a.create(backend, { ports });
  if (model.deviceId !== DeviceId.CONSOLE) {
    throw new ContractViolation("the model's deviceId (§5.3.1)", DeviceId.CONSOLE, model.deviceId);
  }
  return { rig: new QueueRig(model, kind, a.whenIdle?.bind(a)), backend };
}

async function single(a: ConsoleDeviceAdapter, kind: ContractTransport): Promise<Console> {
  const c = await make(a, kind, 1);
  c.rig.init(
    () => 0n,
    () => [0, 1],
  );
  return c;
}

/** Queue indices of port `p` (§5.3.2): 0/1 for port 0, then 4/5, 6/7… */
function rxq(p: number): number {
  return p === 0 ? 0 : 2 * p + 2;
}

function message(id: number, event: number, value: number): Uint8Array {
  const m = new Uint8Array(ConsoleControl.SIZE);
  const v = new DataView(m.buffer);
  v.setUint32(ConsoleControl.ID, id, true);
  v.setUint16(ConsoleControl.EVENT, event, true);
  v.setUint16(ConsoleControl.VALUE, value, true);
  return m;
}

interface Msg {
  readonly id: number;
  readonly event: number;
  readonly value: number;
}

/** Control receive side: keeps buffers posted and decodes what the device sends. */
class Control {
  readonly got: Msg[] = [];
  #posted: QueuePending[] = [];
  constructor(readonly rig: QueueRig) {
    for (let i = 0; i < 16; i++) this.#post();
  }
  #post(): void {
    this.#posted.push(this.rig.submit(CTRL_RX, [], [CTRL_BUF], 0));
  }
  /** Collect the messages used so far, reposting buffers. */
  collect(): Msg[] {
    this.rig.reap();
    const keep: QueuePending[] = [];
    for (const p of this.#posted) {
      if (!this.rig.isDone(p)) {
        keep.push(p);
        continue;
      }
      const c = this.rig.completion(p);
      if (c.len < ConsoleControl.SIZE) {
        throw new ContractViolation(
          "used length of a control message (§5.3.6.2)",
          `>= ${ConsoleControl.SIZE}`,
          c.len,
        );
      }
      const v = new DataView(c.data.buffer, c.data.byteOffset);
      this.got.push({
        id: v.getUint32(ConsoleControl.ID, true),
        event: v.getUint16(ConsoleControl.EVENT, true),
        value: v.getUint16(ConsoleControl.VALUE, true),
      });
    }
    const used = this.#posted.length - keep.length;
    this.#posted = keep;
    for (let i = 0; i < used; i++) this.#post();
    return this.got;
  }
  /** Send a message on the control transmit queue and wait until it is used. */
  async send(m: Uint8Array, what: string): Promise<void> {
    await this.rig.wait([this.rig.submit(CTRL_TX, [m])], what);
  }
  /** Wait (bounded) until a message matching `f` arrived. */
  async expect(f: (m: Msg) => boolean, what: string, expected: string): Promise<Msg> {
    await this.rig.until(() => this.collect().some(f));
    const m = this.got.find(f);
    if (m === undefined) {
      throw new ContractViolation(
        what,
        expected,
        this.got.map((x) => `{id ${x.id}, event ${x.event}, value ${x.value}}`).join(", ") ||
          "no control message",
      );
    }
    return m;
  }
}

/** Send `data` from the guest on `port` and check the back-end got exactly it. */
async function output(c: Console, port: number, data: Uint8Array, what: string): Promise<void> {
  const before = c.backend.output.get(port)?.length ?? 0;
  const tq = rxq(port) + 1;
  const [u] = await c.rig.wait(
    [c.rig.submit(tq, [data.subarray(0, 3), data.subarray(3)])],
    `${what}: transmit`,
  );
  expectEqual(`${what}: used length of a transmit buffer (nothing written)`, u!.len, 0);
  await c.rig.until(() => (c.backend.output.get(port)?.length ?? 0) >= before + data.length);
  const out = Uint8Array.from((c.backend.output.get(port) ?? []).slice(before));
  expectEqual(`${what}: bytes the back-end got on port ${port}`, out, data);
}

/** Inject `data` on `port` and check it lands in a guest receive buffer. */
async function input(c: Console, port: number, data: Uint8Array, what: string): Promise<void> {
  const p = c.rig.submit(rxq(port), [], [256], 0xcc);
  const sink = c.backend.sink;
  if (sink === undefined) {
    throw new ContractViolation(`${what}: the back-end's sink`, "attached by the device", "none");
  }
  const n = sink.input(port, data);
  expectEqual(`${what}: bytes input() accepted with a receive buffer posted`, n, data.length);
  const [r] = await c.rig.wait([p], `${what}: receive`);
  expectEqual(`${what}: used length of the receive buffer`, r!.len, data.length);
  expectEqual(`${what}: bytes in the guest's buffer`, r!.data.subarray(0, r!.len), data);
}

/** Negotiate MULTIPORT with two ports, and run the handshake up to PORT_OPEN from the device. */
async function multiport(
  a: ConsoleDeviceAdapter,
  kind: ContractTransport,
): Promise<
  | undefined
  | {
      c: Console;
      ctrl: Control;
      max: number;
    }
> {
  const c = await make(a, kind, 2);
  c.rig.init(
    (offered) => offered & MULTIPORT,
    (f) => (hasFeature(f, ConsoleFeature.MULTIPORT) ? [0, 1, 2, 3, 4, 5] : [0, 1]),
  );
  if (!hasFeature(c.rig.features, ConsoleFeature.MULTIPORT)) return undefined;
  const max = c.rig.transport.readConfig((r) => r.u32(ConsoleConfig.MAX_NR_PORTS));
  const ctrl = new Control(c.rig);
  return { c, ctrl, max };
}

const checks: ContractCheck<ConsoleDeviceAdapter>[] = [
  {
    name: "moves bytes both ways on port 0",
    spec: "§5.3.6, §5.3.6.1",
    async run({ adapter, transport }) {
      const c = await single(adapter, transport);
      await output(c, 0, pattern(200, 1), "guest output");
      await input(c, 0, pattern(100, 2), "host input");
      await output(c, 0, Uint8Array.of(0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x0d, 0x0a), "again");
    },
  },
  {
    name: "completes the multiport handshake: DEVICE_READY, DEVICE_ADD, PORT_READY, CONSOLE_PORT and PORT_OPEN",
    spec: "§5.3.6.2, §5.3.6.2.1",
    async run({ adapter, transport }) {
      const m = await multiport(adapter, transport);
      if (m === undefined) return;
      const { c, ctrl, max } = m;
      expectThat("max_nr_ports with two ports", max >= 2, ">= 2", max);
      await ctrl.send(message(0, DEVICE_READY, 1), "DEVICE_READY");
      for (const p of [0, 1]) {
        await ctrl.expect(
          (x) => x.event === DEVICE_ADD && x.id === p,
          `DEVICE_ADD for port ${p}`,
          `DEVICE_ADD {id ${p}}`,
        );
      }
      const adds = ctrl.got.filter((x) => x.event === DEVICE_ADD);
      for (const x of adds) {
        expectThat(`DEVICE_ADD port id`, x.id < max, `< max_nr_ports (${max})`, x.id);
      }
      expectEqual(
        "DEVICE_ADD messages (one per port)",
        new Set(adds.map((x) => x.id)).size,
        adds.length,
      );
      for (const p of [0, 1]) await ctrl.send(message(p, PORT_READY, 1), `PORT_READY ${p}`);
      await ctrl.expect(
        (x) => x.event === CONSOLE_PORT && x.id === 0,
        "CONSOLE_PORT for port 0 after PORT_READY",
        "CONSOLE_PORT {id 0}",
      );
      for (const p of [0, 1]) {
        await ctrl.expect(
          (x) => x.event === PORT_OPEN && x.id === p && x.value === 1,
          `PORT_OPEN for port ${p} (host side open)`,
          `PORT_OPEN {id ${p}, value 1}`,
        );
      }
      await ctrl.send(message(1, PORT_OPEN, 1), "PORT_OPEN 1 from the driver");
      await c.rig.until(() => c.backend.opens.length > 0, 20);
      expectThat(
        "the guest's PORT_OPEN reported to the back-end",
        c.backend.opens.some((o) => o.port === 1 && o.open),
        "portOpen(1, true)",
        JSON.stringify(c.backend.opens),
      );
      await output(c, 1, pattern(50, 3), "port 1 output");
      await input(c, 1, pattern(40, 4), "port 1 input");
    },
  },
  {
    name: "ignores a control message for a port that does not exist",
    spec: "§5.3.6.2, §5.3.6.2.1",
    async run({ adapter, transport }) {
      const m = await multiport(adapter, transport);
      if (m === undefined) return;
      const { c, ctrl, max } = m;
      await ctrl.send(message(0, DEVICE_READY, 1), "DEVICE_READY");
      await ctrl.expect((x) => x.event === DEVICE_ADD && x.id === 1, "DEVICE_ADD 1", "DEVICE_ADD");
      // Ports 0 and 1 exist; nothing at or above max_nr_ports can.
      const ghosts = [Math.max(max, 2), 0x7fff_fff0, 0xffff_ffff];
      const before = ctrl.collect().length;
      noThrow("control messages for unknown ports", () => {
        for (const g of ghosts) {
          c.rig.submit(CTRL_TX, [message(g, PORT_READY, 1)]);
          c.rig.submit(CTRL_TX, [message(g, PORT_OPEN, 1)]);
        }
      });
      for (let i = 0; i < 8; i++) await c.rig.turn();
      ctrl.collect();
      const about = ctrl.got.slice(before).filter((x) => ghosts.includes(x.id));
      expectEqual(
        "control messages the device sent about unknown ports",
        about.map((x) => `{id ${x.id}, event ${x.event}}`).join(", "),
        "",
      );
      expectEqual(
        "portOpen reports for unknown ports",
        c.backend.opens.filter((o) => ghosts.includes(o.port)).length,
        0,
      );
      expectThat("DEVICE_NEEDS_RESET", !c.rig.needsReset, "clear", "set");
      // The known ports still work.
      await ctrl.send(message(0, PORT_READY, 1), "PORT_READY 0");
      await output(c, 0, pattern(30, 5), "port 0 after the unknown-port messages");
    },
  },
  {
    name: "passes a byte written to emerg_wr before feature negotiation to the back-end",
    spec: "§5.3.4, §5.3.5.1",
    async run({ adapter, transport }) {
      const c = await make(adapter, transport, 1);
      const link = c.rig.link;
      link.writeStatus(0);
      link.writeStatus(DeviceStatus.ACKNOWLEDGE);
      link.writeStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
      const offered = link.offeredFeatures();
      if (!hasFeature(offered, ConsoleFeature.EMERG_WRITE)) return;
      noThrow("emerg_wr before FEATURES_OK", () =>
        link.writeConfig(ConsoleConfig.EMERG_WR, 4, 0x1234_5621),
      );
      for (let i = 0; i < 4; i++) {
        await c.rig.idle();
        await macrotask();
      }
      const seen = [...c.backend.emergency, ...(c.backend.output.get(0) ?? [])];
      expectEqual(
        "bytes at the back-end after writing 0x12345621 to emerg_wr",
        seen.join(","),
        "33",
      );
    },
  },
];

/**
 * The "any virtio-console device" suite (VIRTIO 1.3 §5.3): bytes both ways on port 0, the
 * multiport handshake (DEVICE_READY → DEVICE_ADD per port → PORT_READY → CONSOLE_PORT and
 * PORT_OPEN, guest PORT_OPEN reported, data on port 1), control messages for unknown ports
 * ignored, and `emerg_wr` honoured before feature negotiation. Multiport and emergency-write
 * checks pass when the feature is not offered.
 */
export const consoleDeviceSuite: ContractSuite<ConsoleDeviceAdapter> = {
  name: "any virtio-console device",
  checks,
};
