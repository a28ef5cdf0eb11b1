import {
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleDeviceOptions,
  type ConsoleInputSink,
} from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { ConsoleFeature, Feature, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio } from "@virtio-ts/transport";
import { ringAreaBytes, ringLayoutAt } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  ConsoleDeviceFault,
  ConsoleDriver,
  type ConsoleDriverOptions,
  type ConsolePortEvent,
  SlabAllocator,
} from "../src/index.js";

const RING = 0x10000;
const QS = 16;

class Backend implements ConsoleBackend {
  sink!: ConsoleInputSink;
  out = new Map<number, number[]>();
  opens: [number, boolean][] = [];
  emerg: number[] = [];
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }
  write(port: number, data: Uint8Array): boolean {
    const o = this.out.get(port) ?? [];
    o.push(...data);
    this.out.set(port, o);
    return true;
  }
  portOpen(port: number, open: boolean): void {
    this.opens.push([port, open]);
  }
  emergencyWrite(byte: number): void {
    this.emerg.push(byte);
  }
  text(port = 0): string {
    return String.fromCharCode(...(this.out.get(port) ?? []));
  }
}

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

function setup(
  devOptions: ConsoleDeviceOptions = {},
  drvOptions: Partial<ConsoleDriverOptions> = {},
) {
  const memory: GuestMemory = createGuestMemory({ size: 0x400000 });
  const backend = new Backend();
  const model = new ConsoleDevice(backend, { queueSize: QS, ...devOptions });
  const { device, transport } = new InThreadMmio(model, { memory, delivery: "none" });
  const slab = new SlabAllocator(0x200000, 512, 128);
  const events: ConsolePortEvent[] = [];
  const received: { port: number; text: string }[] = [];
  const driver = new ConsoleDriver(transport, memory, slab, {
    ringBase: RING,
    queueSize: QS,
    ...drvOptions,
  });
  driver.onPortEvent((e) => events.push(e));
  driver.onReceive((d, port) => received.push({ port, text: dec(d) }));
  /** Run the interrupt handler until nothing more happens (the device is synchronous). */
  const pump = () => {
    for (let i = 0; i < 32 && driver.onInterrupt() > 0; i++);
  };
  pump();
  return { memory, backend, model, device, transport, slab, driver, events, received, pump };
}

async function settle<T>(p: Promise<T>, pump: () => void): Promise<T> {
  let done = false;
  const tracked = p.finally(() => {
    done = true;
  });
  tracked.catch(() => {});
  for (let i = 0; i < 100 && !done; i++) {
    pump();
    await Promise.resolve();
  }
  return tracked;
}

describe("ConsoleDriver, port 0", () => {
  it("writes bytes that reach the device back-end on port 0", async () => {
    const s = setup({}, { packed: false });
    await settle(s.driver.write(enc("hello, host\n")), s.pump);
    expect(s.backend.text()).toBe("hello, host\n");
    expect(s.driver.pendingWrites).toBe(0);
    expect(s.driver.stats.txBytes).toBe(12);
  });

  it("splits a write larger than a slot into several transmit buffers", async () => {
    const s = setup();
    const big = new Uint8Array(5000).map((_, i) => i & 0xff);
    await settle(s.driver.write(big), s.pump);
    expect(s.backend.out.get(0)).toEqual([...big]);
  });

  it("hands received bytes to listeners and refills receive buffers automatically", () => {
    const s = setup({}, { rxBuffers: 2 });
    for (let i = 0; i < 10; i++) {
      expect(s.backend.sink.input(0, enc(`line ${i};`))).toBe(7);
      s.pump();
    }
    expect(s.received.map((r) => r.text).join("")).toBe(
      Array.from({ length: 10 }, (_, i) => `line ${i};`).join(""),
    );
    expect(s.received.every((r) => r.port === 0)).toBe(true);
    expect(s.model.stats.inputDropped).toBe(0);
  });

  it("reads the size from the configuration and follows a configuration change (§5.3.6)", () => {
    const s = setup({ size: { cols: 80, rows: 25 } });
    expect(hasFeature(s.driver.features, ConsoleFeature.SIZE)).toBe(true);
    expect(s.driver.size).toEqual({ cols: 80, rows: 25 });
    s.model.resize(120, 40);
    s.pump();
    expect(s.driver.size).toEqual({ cols: 120, rows: 40 });
    expect(s.events).toContainEqual({ kind: "resize", port: 0, cols: 120, rows: 40 });
  });

  it("has no size when SIZE is not offered", () => {
    expect(setup().driver.size).toBeUndefined();
  });

  it("emergency-writes a byte through emerg_wr", () => {
    const s = setup();
    expect(s.driver.emergencyWrite(0x42)).toBe(true);
    expect(s.backend.emerg).toEqual([0x42]);
    expect(() => s.driver.emergencyWrite(256)).toThrow(/byte/);
    const t = setup({ emergencyWrite: false });
    expect(t.driver.emergencyWrite(0x42)).toBe(false);
    expect(t.backend.emerg).toEqual([]);
  });

  it("negotiates RING_PACKED when offered and works over packed rings", async () => {
    const s = setup();
    expect(hasFeature(s.driver.features, Feature.RING_PACKED)).toBe(true);
    await settle(s.driver.write(enc("packed")), s.pump);
    s.backend.sink.input(0, enc("back"));
    s.pump();
    expect(s.backend.text()).toBe("packed");
    expect(s.received).toEqual([{ port: 0, text: "back" }]);
  });

  it("rejects writes to a port that is not there with RangeError naming port", () => {
    const s = setup();
    expect(() => s.driver.write(enc("x"), 1)).toThrow(/^port must/);
  });
});

describe("ConsoleDriver, multiport (§5.3.6.2)", () => {
  const ports = [{}, { name: "org.virtio-ts.agent" }, { name: "logs", open: false }];

  it("runs the handshake: DEVICE_READY, DEVICE_ADD → PORT_READY, CONSOLE_PORT → PORT_OPEN 1 (§5.3.6.2.2)", () => {
    const s = setup({ ports, size: { cols: 80, rows: 24 } });
    expect(s.driver.multiport).toBe(true);
    expect(s.driver.ports()).toEqual([
      {
        id: 0,
        name: undefined,
        console: true,
        guestOpen: true,
        hostOpen: true,
        size: { cols: 80, rows: 24 },
      },
      {
        id: 1,
        name: "org.virtio-ts.agent",
        console: false,
        guestOpen: false,
        hostOpen: true,
        size: undefined,
      },
      { id: 2, name: "logs", console: false, guestOpen: false, hostOpen: false, size: undefined },
    ]);
    // §5.3.6.2.2: the driver answered CONSOLE_PORT with PORT_OPEN 1.
    expect(s.model.portState(0)).toMatchObject({ ready: true, guestOpen: true });
    expect(s.model.portState(1)).toMatchObject({ ready: true, guestOpen: false });
    expect(s.events.map((e) => e.kind)).toEqual([
      "add",
      "add",
      "add",
      "console",
      "host-open",
      "name",
      "host-open",
      "name",
    ]);
    expect(s.device.core.stats.faults).toBe(0);
  });

  it("finds ports by name, opens one, and moves bytes both ways on it", async () => {
    const s = setup({ ports });
    const agent = s.driver.portByName("org.virtio-ts.agent");
    expect(agent?.id).toBe(1);
    // Port 0 was opened by the driver in answer to CONSOLE_PORT.
    expect(s.backend.opens).toEqual([[0, true]]);
    s.driver.openPort(1);
    s.pump();
    expect(s.backend.opens).toEqual([
      [0, true],
      [1, true],
    ]);
    await settle(s.driver.write(enc('{"hello":1}'), 1), s.pump);
    expect(s.backend.text(1)).toBe('{"hello":1}');
    expect(s.backend.text(0)).toBe("");
    s.backend.sink.input(1, enc("reply"));
    s.pump();
    expect(s.received).toEqual([{ port: 1, text: "reply" }]);
    s.driver.closePort(1);
    s.pump();
    expect(s.backend.opens).toEqual([
      [0, true],
      [1, true],
      [1, false],
    ]);
  });

  it("reports host open/close and RESIZE as port events", () => {
    const s = setup({ ports, size: { cols: 80, rows: 24 } });
    s.events.length = 0;
    s.model.setHostOpen(2, true);
    s.model.resize(100, 30);
    s.pump();
    expect(s.events).toContainEqual({ kind: "host-open", port: 2, open: true });
    expect(s.events).toContainEqual({ kind: "resize", port: 0, cols: 100, rows: 30 });
    expect(s.driver.size).toEqual({ cols: 100, rows: 30 });
  });

  it("follows hot-plug and unplug of ports", () => {
    const s = setup({ ports: [{}], maxPorts: 4 });
    s.events.length = 0;
    s.model.addPort(3, { name: "late" });
    s.pump();
    expect(s.driver.portByName("late")?.id).toBe(3);
    s.model.removePort(3);
    s.pump();
    expect(s.driver.portByName("late")).toBeUndefined();
    expect(s.events.map((e) => e.kind)).toEqual(["add", "name", "host-open", "remove"]);
  });

  it("refuses ports beyond options.maxPorts with PORT_READY 0", () => {
    const s = setup({ ports: [{}, {}, {}], maxPorts: 3 }, { maxPorts: 2 });
    expect(s.driver.ports().map((p) => p.id)).toEqual([0, 1]);
    expect(s.model.portState(2).ready).toBe(false);
  });

  it("works without MULTIPORT when the driver declines it", () => {
    const s = setup({ ports }, { multiport: false });
    expect(s.driver.multiport).toBe(false);
    expect(s.driver.ports().map((p) => p.id)).toEqual([0]);
  });
});

describe("ConsoleDriver distrusts the device", () => {
  it("counts a control message from a hostile device naming an unknown port, and keeps going", () => {
    const s = setup({ ports: [{}, {}] }, { packed: false, maxPorts: 2 });
    const before = s.driver.stats.faults;
    s.model.setHostOpen(1, false);
    // The device queued PORT_OPEN 0 for port 1 and copied it into a control buffer; corrupt the
    // used buffer before the driver reaps it.
    const used = ringLayoutDevice(2);
    const idx = s.memory.readU16(used + 2);
    const id = s.memory.readU32(used + 4 + ((idx - 1) & (QS - 1)) * 8);
    const addr = findCtrlBuffer(s.memory, id);
    s.memory.writeU32(addr, 0x7fff_0000);
    s.pump();
    expect(s.driver.stats.faults).toBe(before + 1);
    expect(s.driver.lastFault).toMatchObject({ code: "console-bad-control", value: 0x7fff_0000 });
    // Still serving.
    s.backend.sink.input(0, enc("ok"));
    s.pump();
    expect(s.received).toContainEqual({ port: 0, text: "ok" });
  });

  it("rejects pending writes with console-ring-broken when a used length exceeds the buffer", async () => {
    const s = setup({}, { packed: false });
    s.backend.sink.input(0, enc("x"));
    const used = ringLayoutDevice(0);
    const idx = s.memory.readU16(used + 2);
    s.memory.writeU32(used + 4 + ((idx - 1) & (QS - 1)) * 8 + 4, 1 << 20);
    const w = s.driver.write(enc("queued"));
    s.pump();
    const err = await w.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConsoleDeviceFault);
    expect(err).toMatchObject({
      code: "console-ring-broken",
      cause: { code: "used-len-too-large" },
    });
    await expect(s.driver.write(enc("later"))).rejects.toBe(err);
  });
});

/** Device area address of queue `qi` in the driver's ring area (split layout). */
function ringLayoutDevice(qi: number): number {
  return ringLayoutAt(RING + qi * ringAreaBytes(QS), QS).device;
}

/** Address of the buffer of descriptor `id` in the control receiveq's descriptor table. */
function findCtrlBuffer(memory: GuestMemory, id: number): number {
  const desc = RING + 2 * ringAreaBytes(QS);
  return Number(memory.readU64(desc + id * 16));
}
