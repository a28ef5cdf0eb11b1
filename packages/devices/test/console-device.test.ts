import { PassThrough } from "node:stream";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import {
  ConsoleConfig,
  ConsoleEvent,
  ConsoleFeature,
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
  MmioInterrupt,
  MmioReg,
} from "@virtio-ts/spec";
import {
  DeviceStateFormatError,
  DeviceStateMismatchError,
  MmioDevice,
  MmioDriverTransport,
  restoreMmioDevice,
  saveMmioDevice,
} from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleDeviceOptions,
  ConsoleFault,
  type ConsoleInputSink,
  StreamConsoleBackend,
} from "../src/console.js";

const QS = 16;
const STRIDE = 0x400;

class RecordingBackend implements ConsoleBackend {
  sink: ConsoleInputSink | undefined;
  out: { port: number; data: number[] }[] = [];
  opens: [number, boolean][] = [];
  spaces: number[] = [];
  emerg: number[] = [];
  accept = true;
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }
  write(port: number, data: Uint8Array): boolean {
    this.out.push({ port, data: [...data] });
    return this.accept;
  }
  inputSpace(port: number): void {
    this.spaces.push(port);
  }
  portOpen(port: number, open: boolean): void {
    this.opens.push([port, open]);
  }
  emergencyWrite(byte: number): void {
    this.emerg.push(byte);
  }
  text(port = 0): string {
    return String.fromCharCode(...this.out.filter((o) => o.port === port).flatMap((o) => o.data));
  }
}

interface Msg {
  id: number;
  event: number;
  value: number;
  extra: number[];
}

class Rig {
  readonly memory: GuestMemory = createGuestMemory({ size: 0x100000 });
  backend: ConsoleBackend;
  model: ConsoleDevice;
  /** The device the driver reaches (replaced by {@link Rig.move}). */
  device: MmioDevice;
  readonly t: MmioDriverTransport;
  readonly q: DriverQueue<number>[] = [];
  readonly negotiated: bigint;
  #next = 0x40000;
  #token = 0;

  constructor(
    options: ConsoleDeviceOptions = {},
    o: { packed?: boolean; backend?: ConsoleBackend; accept?: (f: bigint) => bigint } = {},
  ) {
    this.backend = o.backend ?? new RecordingBackend();
    this.model = new ConsoleDevice(this.backend, { queueSize: QS, ...options });
    this.device = new MmioDevice(this.model, { memory: this.memory });
    // The driver reaches whichever device is current (a move re-routes the MMIO window).
    this.t = new MmioDriverTransport({
      read: (offset, size) => this.device.read(offset, size),
      write: (offset, size, value) => this.device.write(offset, size, value),
    });
    this.negotiated = this.t.negotiate((f) => {
      let a = o.accept?.(f) ?? f;
      if (!o.packed) a &= ~featureMask(Feature.RING_PACKED);
      return a;
    });
    const n = hasFeature(this.negotiated, ConsoleFeature.MULTIPORT)
      ? this.model.queueMaxSizes.length
      : 2;
    for (let i = 0; i < n; i++) {
      const base = 0x1000 + i * STRIDE;
      this.q.push(
        this.t.setupQueue<number>(i, this.memory, {
          size: QS,
          desc: base,
          driver: base + 0x100,
          device: base + 0x200,
        }),
      );
    }
    this.t.driverOk();
  }

  /**
   * Suspend the device, save it, abandon it and resume a fresh ConsoleDevice (built with
   * `options`) over a fresh back-end from the bytes; the driver carries on with it.
   */
  async move(options: ConsoleDeviceOptions = {}): Promise<Uint8Array> {
    await this.device.core.suspend();
    const bytes = saveMmioDevice(this.device);
    await this.device.core.abandon();
    this.backend = new RecordingBackend();
    this.model = new ConsoleDevice(this.backend, { queueSize: QS, ...options });
    this.device = restoreMmioDevice(bytes, this.model, { memory: this.memory });
    return bytes;
  }

  get rec(): RecordingBackend {
    return this.backend as RecordingBackend;
  }

  alloc(len: number): number {
    const a = this.#next;
    this.#next += Math.max(16, (len + 15) & ~15);
    return a;
  }

  kick(qi: number): void {
    if (this.q[qi]!.publish()) this.t.notify(qi);
  }

  /** Post a receive buffer of `len` bytes on queue `qi`; returns its address and token. */
  postRx(qi: number, len: number): { addr: number; token: number } {
    const addr = this.alloc(len);
    const token = ++this.#token;
    if (!this.q[qi]!.add([], [{ addr, len }], token)) throw new Error("queue full");
    this.kick(qi);
    return { addr, token };
  }

  /** Transmit `bytes` on queue `qi`. */
  tx(qi: number, bytes: Uint8Array | string): number {
    const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    const addr = this.alloc(b.length);
    this.memory.write(addr, b);
    const token = ++this.#token;
    if (!this.q[qi]!.add([{ addr, len: b.length }], [], token)) throw new Error("queue full");
    this.kick(qi);
    return token;
  }

  reap(qi: number): { token: number; len: number }[] {
    const out: { token: number; len: number }[] = [];
    const q = this.q[qi]!;
    for (let t = q.reap(); t !== undefined; t = q.reap()) out.push({ token: t, len: q.lastLen });
    return out;
  }

  control(id: number, event: number, value: number): void {
    const m = new Uint8Array(8);
    const v = new DataView(m.buffer);
    v.setUint32(0, id, true);
    v.setUint16(4, event, true);
    v.setUint16(6, value, true);
    this.tx(3, m);
  }

  /** Post `n` control receive buffers, then collect every control message sent so far. */
  readonly #ctrlBufs = new Map<number, number>();

  readControl(n = 8): Msg[] {
    const bufs = this.#ctrlBufs;
    for (let i = 0; i < n; i++) {
      const { addr, token } = this.postRx(2, 64);
      bufs.set(token, addr);
    }
    return this.reap(2).map(({ token, len }) => {
      const m = this.memory.slice(bufs.get(token)!, len);
      const v = new DataView(m.buffer, m.byteOffset, m.byteLength);
      return {
        id: v.getUint32(0, true),
        event: v.getUint16(4, true),
        value: v.getUint16(6, true),
        extra: [...m.subarray(8)],
      };
    });
  }
}

describe("ConsoleDevice, port 0", () => {
  it("is a console (ID 3) offering EMERG_WRITE, and SIZE only when a size is given", () => {
    const a = new ConsoleDevice(new RecordingBackend());
    expect(a.deviceId).toBe(DeviceId.CONSOLE);
    expect(hasFeature(a.features, ConsoleFeature.EMERG_WRITE)).toBe(true);
    expect(hasFeature(a.features, ConsoleFeature.SIZE)).toBe(false);
    expect(hasFeature(a.features, ConsoleFeature.MULTIPORT)).toBe(false);
    expect(a.queueMaxSizes).toHaveLength(2);
    const b = new ConsoleDevice(new RecordingBackend(), { size: { cols: 80, rows: 25 } });
    expect(hasFeature(b.features, ConsoleFeature.SIZE)).toBe(true);
    expect(b.readConfig(ConsoleConfig.COLS, 2)).toBe(80);
    expect(b.readConfig(ConsoleConfig.ROWS, 2)).toBe(25);
    expect(b.readConfig(ConsoleConfig.MAX_NR_PORTS, 4)).toBe(1);
  });

  it("passes transmitted bytes to the back-end and returns the buffer with length 0", () => {
    const r = new Rig();
    const tok = r.tx(1, "hello");
    expect(r.rec.text()).toBe("hello");
    expect(r.reap(1)).toEqual([{ token: tok, len: 0 }]);
    expect(r.model.stats.txBytes).toBe(5);
  });

  it("buffers input until the guest posts a receive buffer, then delivers it", () => {
    const r = new Rig();
    expect(r.rec.sink!.input(0, new TextEncoder().encode("abc"))).toBe(3);
    expect(r.model.portState(0).pendingInput).toBe(3);
    const { addr, token } = r.postRx(0, 64);
    expect(r.reap(0)).toEqual([{ token, len: 3 }]);
    expect(String.fromCharCode(...r.memory.slice(addr, 3))).toBe("abc");
    expect(r.model.portState(0).pendingInput).toBe(0);
  });

  it("delivers input straight into posted buffers, splitting it across them", () => {
    const r = new Rig();
    const a = r.postRx(0, 4);
    const b = r.postRx(0, 4);
    expect(r.rec.sink!.input(0, new TextEncoder().encode("0123456"))).toBe(7);
    expect(r.reap(0)).toEqual([
      { token: a.token, len: 4 },
      { token: b.token, len: 3 },
    ]);
    expect(String.fromCharCode(...r.memory.slice(a.addr, 4), ...r.memory.slice(b.addr, 3))).toBe(
      "0123456",
    );
  });

  it("keeps at most pendingInputBytes without guest buffers, drops and counts the rest, then reports space", () => {
    const r = new Rig({ pendingInputBytes: 16 });
    const data = new Uint8Array(40).map((_, i) => i);
    expect(r.model.inputRoom(0)).toBe(16);
    expect(r.rec.sink!.input(0, data)).toBe(16);
    expect(r.model.stats.inputDropped).toBe(24);
    expect(r.model.inputRoom(0)).toBe(0);
    const { addr } = r.postRx(0, 64);
    expect(r.reap(0)[0]!.len).toBe(16);
    expect([...r.memory.slice(addr, 16)]).toEqual([...data.subarray(0, 16)]);
    expect(r.rec.spaces).toEqual([0]);
  });

  it("pending input wraps around its ring buffer in order", () => {
    const r = new Rig({ pendingInputBytes: 8 });
    r.rec.sink!.input(0, new Uint8Array([1, 2, 3, 4, 5, 6]));
    const a = r.postRx(0, 4);
    expect(r.reap(0)[0]!.len).toBe(4);
    r.rec.sink!.input(0, new Uint8Array([7, 8, 9, 10, 11, 12]));
    const b = r.postRx(0, 16);
    expect(r.reap(0)[0]!.len).toBe(8);
    expect([...r.memory.slice(a.addr, 4)]).toEqual([1, 2, 3, 4]);
    expect([...r.memory.slice(b.addr, 8)]).toEqual([5, 6, 7, 8, 9, 10, 11, 12]);
  });

  it("pauses a port's transmit queue when the back-end returns false, until resumeOutput", () => {
    const r = new Rig();
    r.rec.accept = false;
    r.tx(1, "a");
    r.tx(1, "b");
    expect(r.rec.text()).toBe("a");
    expect(r.reap(1)).toHaveLength(1);
    r.rec.accept = true;
    r.model.resumeOutput(0);
    expect(r.rec.text()).toBe("ab");
    expect(r.reap(1)).toHaveLength(1);
  });

  it("truncates a transmit buffer at maxTransmitBytes and counts the rest", () => {
    const r = new Rig({ maxTransmitBytes: 4 });
    r.tx(1, "abcdefgh");
    expect(r.rec.text()).toBe("abcd");
    expect(r.model.stats.txDropped).toBe(4);
  });

  it("works over a packed ring when RING_PACKED is negotiated", () => {
    const r = new Rig({}, { packed: true });
    expect(hasFeature(r.negotiated, Feature.RING_PACKED)).toBe(true);
    r.tx(1, "packed");
    expect(r.rec.text()).toBe("packed");
    const { addr } = r.postRx(0, 16);
    r.rec.sink!.input(0, new Uint8Array([9, 8, 7]));
    expect(r.reap(0)[0]!.len).toBe(3);
    expect([...r.memory.slice(addr, 3)]).toEqual([9, 8, 7]);
    expect(r.reap(1)).toHaveLength(1);
  });

  it("resize updates cols/rows and sends a configuration change notification (§5.3.6)", () => {
    const r = new Rig({ size: { cols: 80, rows: 25 } });
    r.t.takeInterrupt();
    r.model.resize(132, 43);
    expect(r.t.interruptStatus() & MmioInterrupt.CONFIG).toBe(MmioInterrupt.CONFIG);
    expect(r.t.readConfig((c) => [c.u16(ConsoleConfig.COLS), c.u16(ConsoleConfig.ROWS)])).toEqual([
      132, 43,
    ]);
    expect(() => r.model.resize(70000, 1)).toThrow(/cols/);
  });

  it("sends the lower byte written to emerg_wr to the back-end (§5.3.5.1)", () => {
    const r = new Rig();
    r.t.writeConfig(ConsoleConfig.EMERG_WR, 4, 0x1241);
    expect(r.rec.emerg).toEqual([0x41]);
    expect(r.model.stats.emergencyWrites).toBe(1);
  });

  it("accepts an emerg_wr write on an unconfigured device, before any negotiation (§5.3.5.1)", () => {
    const rec = new RecordingBackend();
    const model = new ConsoleDevice(rec, { queueSize: QS });
    const device = new MmioDevice(model, { memory: createGuestMemory({ size: 0x10000 }) });
    device.write(MmioReg.CONFIG + ConsoleConfig.EMERG_WR, 4, 0x4f);
    // Other configuration writes before FEATURES_OK are still refused by the core.
    device.write(MmioReg.CONFIG + ConsoleConfig.COLS, 2, 80);
    expect(rec.emerg).toEqual([0x4f]);
    expect(device.read(MmioReg.CONFIG + ConsoleConfig.COLS, 2)).toBe(0);
  });

  it("emergency writes go to write(0, …) when the back-end has no emergencyWrite", () => {
    const got: number[][] = [];
    const write = (_p: number, d: Uint8Array): boolean => {
      got.push([...d]);
      return true;
    };
    const r = new Rig({}, { backend: { write } });
    r.t.writeConfig(ConsoleConfig.EMERG_WR, 4, 0x21);
    expect(got).toEqual([[0x21]]);
  });
});

describe("ConsoleDevice, hostile buffers", () => {
  it("returns a receive buffer with a readable descriptor with length 0 and counts it (§5.3.6.1)", () => {
    const r = new Rig();
    r.q[0]!.add([{ addr: 0x50000, len: 8 }], [{ addr: 0x50100, len: 8 }], 77);
    r.kick(0);
    const ok = r.postRx(0, 8);
    r.rec.sink!.input(0, new Uint8Array([1, 2]));
    expect(r.reap(0)).toEqual([
      { token: 77, len: 0 },
      { token: ok.token, len: 2 },
    ]);
    expect(r.device.core.faultCounts.get("console-readable-in-rx")).toBe(1);
    expect(r.device.core.needsReset).toBe(false);
  });

  it("drops a transmit buffer with a writable descriptor and counts it (§5.3.6.1)", () => {
    const r = new Rig();
    r.memory.write(0x50000, new Uint8Array([0x41]));
    r.q[1]!.add([{ addr: 0x50000, len: 1 }], [{ addr: 0x50100, len: 8 }], 5);
    r.kick(1);
    expect(r.rec.out).toEqual([]);
    expect(r.reap(1)).toEqual([{ token: 5, len: 0 }]);
    expect(r.device.core.lastFault).toBeInstanceOf(ConsoleFault);
    expect(r.device.core.faultCounts.get("console-writable-in-tx")).toBe(1);
  });
});

describe("ConsoleDevice, multiport (§5.3.6.2)", () => {
  const ports = [{}, { name: "org.test.1" }, { name: "spare", open: false }];

  it("offers MULTIPORT with max_nr_ports and 2·(ports+1) queues", () => {
    const m = new ConsoleDevice(new RecordingBackend(), { ports, maxPorts: 4 });
    expect(hasFeature(m.features, ConsoleFeature.MULTIPORT)).toBe(true);
    expect(m.readConfig(ConsoleConfig.MAX_NR_PORTS, 4)).toBe(4);
    expect(m.queueMaxSizes).toHaveLength(10);
  });

  it("answers DEVICE_READY with DEVICE_ADD for every port, and PORT_READY with CONSOLE_PORT, PORT_NAME and PORT_OPEN", () => {
    const r = new Rig({ ports });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    expect(r.readControl()).toEqual([
      { id: 0, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
      { id: 1, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
      { id: 2, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
    ]);
    r.control(0, ConsoleEvent.PORT_READY, 1);
    r.control(1, ConsoleEvent.PORT_READY, 1);
    r.control(2, ConsoleEvent.PORT_READY, 1);
    expect(r.readControl()).toEqual([
      { id: 0, event: ConsoleEvent.CONSOLE_PORT, value: 1, extra: [] },
      { id: 0, event: ConsoleEvent.PORT_OPEN, value: 1, extra: [] },
      {
        id: 1,
        event: ConsoleEvent.PORT_NAME,
        value: 0,
        extra: [...new TextEncoder().encode("org.test.1")],
      },
      { id: 1, event: ConsoleEvent.PORT_OPEN, value: 1, extra: [] },
      {
        id: 2,
        event: ConsoleEvent.PORT_NAME,
        value: 0,
        extra: [...new TextEncoder().encode("spare")],
      },
    ]);
    expect(r.model.portState(1)).toMatchObject({ exists: true, ready: true, guestOpen: false });
    expect(r.device.core.stats.faults).toBe(0);
  });

  it("keeps control messages until the driver posts control receive buffers", () => {
    const r = new Rig({ ports });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    expect(r.model.controlPending).toBe(3);
    expect(r.readControl(1)).toHaveLength(1);
    expect(r.model.controlPending).toBe(2);
    expect(r.readControl(4)).toHaveLength(2);
  });

  it("delivers port input only after the guest opened the port, and reports PORT_OPEN to the back-end", () => {
    const r = new Rig({ ports });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.control(1, ConsoleEvent.PORT_READY, 1);
    const buf = r.postRx(4, 16); // receiveq(port1)
    r.rec.sink!.input(1, new Uint8Array([5, 6]));
    expect(r.reap(4)).toEqual([]);
    r.control(1, ConsoleEvent.PORT_OPEN, 1);
    expect(r.rec.opens).toEqual([[1, true]]);
    expect(r.reap(4)).toEqual([{ token: buf.token, len: 2 }]);
    r.tx(5, "to-host"); // transmitq(port1)
    expect(r.rec.text(1)).toBe("to-host");
    r.control(1, ConsoleEvent.PORT_OPEN, 0);
    expect(r.rec.opens).toEqual([
      [1, true],
      [1, false],
    ]);
  });

  it("sends RESIZE with cols then rows to ready console ports", () => {
    const r = new Rig({ ports, size: { cols: 80, rows: 24 } });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.control(0, ConsoleEvent.PORT_READY, 1);
    r.readControl();
    r.model.resize(100, 50);
    expect(r.readControl()).toEqual([
      { id: 0, event: ConsoleEvent.RESIZE, value: 0, extra: [100, 0, 50, 0] },
    ]);
  });

  it("hot-plugs and unplugs ports with DEVICE_ADD / DEVICE_REMOVE", () => {
    const r = new Rig({ ports: [{}], maxPorts: 4 });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.readControl();
    r.model.addPort(3, { name: "late" });
    r.model.removePort(3);
    expect(r.readControl()).toEqual([
      { id: 3, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
      { id: 3, event: ConsoleEvent.DEVICE_REMOVE, value: 0, extra: [] },
    ]);
    // §5.3.6.2.1: never a port ≥ max_nr_ports, never one that exists.
    expect(() => r.model.addPort(4)).toThrow(RangeError);
    expect(() => r.model.addPort(0)).toThrow(/already exists/);
    expect(() => r.model.removePort(2)).toThrow(/port/);
  });

  it("counts a truncated control message, a bad port id and a device-only event, and keeps serving", () => {
    const r = new Rig({ ports });
    r.tx(3, new Uint8Array([0, 0, 0, 0])); // 4 of 8 bytes
    r.control(0, ConsoleEvent.PORT_READY, 1); // before DEVICE_READY
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.control(99, ConsoleEvent.PORT_READY, 1);
    r.control(0xffffffff, ConsoleEvent.PORT_OPEN, 1);
    r.control(1, ConsoleEvent.DEVICE_ADD, 0);
    r.control(0, ConsoleEvent.DEVICE_READY, 1); // a second one
    const f = r.device.core.faultCounts;
    expect(f.get("console-short-control")).toBe(1);
    expect(f.get("console-bad-port")).toBe(3);
    expect(f.get("console-bad-event")).toBe(2);
    expect(r.model.stats.malformed).toBe(6);
    expect(r.device.core.needsReset).toBe(false);
    expect(r.reap(3)).toHaveLength(7);
    expect(r.readControl()).toHaveLength(3);
  });

  it("drops transmit data for a port that does not exist", () => {
    const r = new Rig({ ports: [{}], maxPorts: 2 });
    r.tx(5, "ghost");
    expect(r.rec.out).toEqual([]);
    expect(r.model.stats.txDropped).toBe(5);
  });
});

describe("ConsoleDevice suspend / resume", () => {
  const ports = [{}, { name: "org.test.1" }];

  it("moves input the guest has not taken yet, and the guest receives it from the new device", async () => {
    const r = new Rig({ pendingInputBytes: 8 });
    r.rec.sink!.input(0, new Uint8Array([1, 2, 3, 4, 5, 6]));
    const a = r.postRx(0, 4);
    r.rec.sink!.input(0, new Uint8Array([7, 8, 9, 10, 11, 12]));
    expect(r.reap(0)).toEqual([{ token: a.token, len: 4 }]);
    // 8 bytes wait, wrapped around the ring buffer.
    expect(r.model.portState(0).pendingInput).toBe(8);
    await r.move({ pendingInputBytes: 8 });
    expect(r.model.portState(0).pendingInput).toBe(8);
    expect(r.model.inputRoom(0)).toBe(0);
    const b = r.postRx(0, 16);
    expect(r.reap(0)).toEqual([{ token: b.token, len: 8 }]);
    expect([...r.memory.slice(b.addr, 8)]).toEqual([5, 6, 7, 8, 9, 10, 11, 12]);
    // The new back-end hears that there is room again.
    expect(r.rec.spaces).toEqual([0]);
    r.tx(1, "after");
    expect(r.rec.text()).toBe("after");
  });

  it("§5.3.6.2: moves the multiport session (DEVICE_READY, PORT_READY, PORT_OPEN), a hot-plugged port, waiting control messages and the size", async () => {
    const r = new Rig({ ports, maxPorts: 4, size: { cols: 80, rows: 24 } });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.control(1, ConsoleEvent.PORT_READY, 1);
    r.control(1, ConsoleEvent.PORT_OPEN, 1);
    r.model.addPort(3, { name: "late" });
    r.model.resize(100, 50);
    r.rec.sink!.input(3, new Uint8Array([42]));
    // No control receive buffer posted yet: every message the device sent waits.
    expect(r.model.controlPending).toBe(5);
    // The destination is built as the source was at first: port 3 and the size come from the state.
    await r.move({ ports, maxPorts: 4, size: { cols: 80, rows: 24 } });
    expect(r.model.size).toEqual({ cols: 100, rows: 50 });
    expect(r.model.portState(1)).toMatchObject({ exists: true, ready: true, guestOpen: true });
    expect(r.model.portState(3)).toMatchObject({ exists: true, ready: false, pendingInput: 1 });
    const name1 = [...new TextEncoder().encode("org.test.1")];
    expect(r.readControl()).toEqual([
      { id: 0, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
      { id: 1, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
      { id: 1, event: ConsoleEvent.PORT_NAME, value: 0, extra: name1 },
      { id: 1, event: ConsoleEvent.PORT_OPEN, value: 1, extra: [] },
      { id: 3, event: ConsoleEvent.DEVICE_ADD, value: 0, extra: [] },
    ]);
    r.control(3, ConsoleEvent.PORT_READY, 1);
    expect(r.readControl()).toEqual([
      {
        id: 3,
        event: ConsoleEvent.PORT_NAME,
        value: 0,
        extra: [...new TextEncoder().encode("late")],
      },
      { id: 3, event: ConsoleEvent.PORT_OPEN, value: 1, extra: [] },
    ]);
    r.control(3, ConsoleEvent.PORT_OPEN, 1);
    const buf = r.postRx(8, 4); // receiveq(port3)
    expect(r.reap(8)).toEqual([{ token: buf.token, len: 1 }]);
    expect(r.memory.slice(buf.addr, 1)[0]).toBe(42);
    // A second DEVICE_READY is still out of sequence at the destination.
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    expect(r.device.core.faultCounts.get("console-bad-event")).toBe(1);
  });

  it("refuses a state from a console with another max_nr_ports, or more input than this one keeps, as a mismatch", () => {
    const src = new ConsoleDevice(new RecordingBackend(), { ports, maxPorts: 4 });
    expect(() =>
      new ConsoleDevice(new RecordingBackend(), { ports, maxPorts: 3 }).restoreState(
        src.saveState(),
      ),
    ).toThrow(DeviceStateMismatchError);
    const one = new ConsoleDevice(new RecordingBackend());
    one.input(0, new Uint8Array(100));
    const small = new ConsoleDevice(new RecordingBackend(), { pendingInputBytes: 64 });
    expect(() => small.restoreState(one.saveState())).toThrow(
      expect.objectContaining({ field: "console.ports[0].pendingInput" }),
    );
  });

  it("refuses hostile state bytes with DeviceStateFormatError and changes nothing", () => {
    const r = new Rig({ ports, maxPorts: 2 });
    r.control(0, ConsoleEvent.DEVICE_READY, 1);
    r.rec.sink!.input(0, new Uint8Array([1, 2, 3]));
    const good = r.model.saveState();
    const edit = (at: number, value: number) => {
      const b = good.slice();
      b[at] = value;
      return b;
    };
    // Header 16 bytes; port 0 at 16: flags, name length, pending length u32.
    for (const b of [
      good.subarray(0, 15),
      edit(0, 0),
      edit(4, 2),
      edit(5, 2),
      edit(16, 0x40), // an unknown port flag
      edit(16, 0x10 | 1), // guest open without ready
      edit(17, 3), // a name length on an unnamed port
      edit(18, 0xff), // pending input past the end
      edit(12, 1), // a control message that is not there
      Uint8Array.of(...good, 0),
    ]) {
      const m = new ConsoleDevice(new RecordingBackend(), { ports, maxPorts: 2 });
      expect(() => m.restoreState(b)).toThrow(DeviceStateFormatError);
      expect(m.portState(0)).toEqual(
        new ConsoleDevice(new RecordingBackend(), { ports, maxPorts: 2 }).portState(0),
      );
      expect(m.controlPending).toBe(0);
    }
  });
});

describe("StreamConsoleBackend", () => {
  it("copies readable data to the guest and guest output to the writable", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const chunks: Buffer[] = [];
    output.on("data", (c: Buffer) => chunks.push(c));
    const r = new Rig({}, { backend: new StreamConsoleBackend(input, output) });
    const buf = r.postRx(0, 64);
    input.write("ping");
    await new Promise((res) => setImmediate(res));
    expect(r.reap(0)).toEqual([{ token: buf.token, len: 4 }]);
    expect(String.fromCharCode(...r.memory.slice(buf.addr, 4))).toBe("ping");
    r.tx(1, "pong");
    await new Promise((res) => setImmediate(res));
    expect(Buffer.concat(chunks).toString()).toBe("pong");
  });

  it("pauses the readable when the device's pending input is full and loses nothing", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const backend = new StreamConsoleBackend(input, output);
    const r = new Rig({ pendingInputBytes: 32 }, { backend });
    const data = new Uint8Array(1000).map((_, i) => (i * 31) & 0xff);
    for (let i = 0; i < 1000; i += 100) input.write(data.subarray(i, i + 100));
    await new Promise((res) => setImmediate(res));
    expect(backend.paused).toBe(true);
    expect(r.model.portState(0).pendingInput).toBe(32);
    const got: number[] = [];
    for (let round = 0; round < 200 && got.length < 1000; round++) {
      const bufs = [r.postRx(0, 64), r.postRx(0, 64)];
      for (const { token, len } of r.reap(0)) {
        const b = bufs.find((x) => x.token === token)!;
        got.push(...r.memory.slice(b.addr, len));
      }
      await new Promise((res) => setImmediate(res));
    }
    expect(got).toEqual([...data]);
    expect(r.model.stats.inputDropped).toBe(0);
    expect(backend.paused).toBe(false);
  });

  it("stops the transmit queue while the writable is over its high-water mark, resuming on drain", async () => {
    const input = new PassThrough();
    const output = new PassThrough({ highWaterMark: 4 });
    const r = new Rig({}, { backend: new StreamConsoleBackend(input, output) });
    r.tx(1, "12345678");
    r.tx(1, "abc");
    expect(r.reap(1)).toHaveLength(1);
    const got: Buffer[] = [];
    output.on("data", (c: Buffer) => got.push(c));
    await new Promise((res) => setImmediate(res));
    await new Promise((res) => setImmediate(res));
    expect(r.reap(1)).toHaveLength(1);
    expect(Buffer.concat(got).toString()).toBe("12345678abc");
  });
});

describe("ConsoleDevice options", () => {
  it("rejects bad options with a RangeError naming the option", () => {
    const b = new RecordingBackend();
    expect(() => new ConsoleDevice(b, { queueSize: 5 })).toThrow(/options\.queueSize/);
    expect(() => new ConsoleDevice(b, { maxPorts: 0 })).toThrow(/options\.maxPorts/);
    expect(() => new ConsoleDevice(b, { ports: [{}, {}], multiport: false })).toThrow(
      /options\.multiport/,
    );
    expect(() => new ConsoleDevice(b, { pendingInputBytes: 0 })).toThrow(
      /options\.pendingInputBytes/,
    );
    expect(() => new ConsoleDevice(b, { size: { cols: -1, rows: 0 } })).toThrow(/options\.size/);
    expect(() => new ConsoleDevice(b).input(5, new Uint8Array(1))).toThrow(/port/);
  });
});
