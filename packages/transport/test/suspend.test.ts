// Suspend / save / restore of a device in one process: a driver with requests in flight, the
// device stopped and saved, a fresh device resumed from the bytes over the same guest memory.
// Every request completes exactly once, with the right data; the model's own state moves; a
// state that does not fit the new device is refused with a typed error naming the field.
import { createGuestMemory, type GuestMemoryMap } from "@virtio-ts/memory";
import { DeviceStatus, Feature, featureMask, MmioReg } from "@virtio-ts/spec";
import { type DriverQueue, ringLayoutAt } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  type DeviceState,
  DeviceStateMismatchError,
  decodeDeviceState,
  encodeDeviceState,
  MmioDevice,
  MmioDriverTransport,
  restoreMmioDevice,
  saveMmioDevice,
  VirtioDeviceCore,
} from "../src/index.js";
import { HeldModel } from "./helpers/held-model.js";

const LAYOUT = ringLayoutAt(0x1000, 32);
const REQ = 0x4000;

interface Guest {
  memory: GuestMemoryMap;
  device: MmioDevice;
  model: HeldModel;
  q: DriverQueue<number>;
  irqs: number;
  /** Post request t: 4 bytes [t, t, t, t] in, 4 bytes out. */
  post(t: number): void;
  kick(): void;
  /** Tokens reaped with what came back in each reply. */
  reaped: Map<number, number[]>;
  reap(): void;
}

function guest(features = 0n): Guest {
  const memory = createGuestMemory({ size: 0x10000 });
  const model = new HeldModel(features | featureMask(Feature.RING_INDIRECT_DESC));
  const g = {
    memory,
    model,
    irqs: 0,
    reaped: new Map<number, number[]>(),
  } as Guest;
  g.device = new MmioDevice(model, { memory, interrupt: () => g.irqs++ });
  // The driver reaches whichever device is current (the VMM re-routes the MMIO window).
  const t = new MmioDriverTransport({
    read: (o, s) => g.device.read(o, s),
    write: (o, s, v) => g.device.write(o, s, v),
  });
  t.negotiate((offered) => offered);
  g.q = t.setupQueue<number>(0, memory, LAYOUT);
  t.driverOk();
  g.post = (tok) => {
    memory.write(REQ + tok * 8, Uint8Array.of(tok, tok, tok, tok));
    expect(
      g.q.add([{ addr: REQ + tok * 8, len: 4 }], [{ addr: REQ + tok * 8 + 4, len: 4 }], tok),
    ).toBe(true);
  };
  g.kick = () => {
    if (g.q.publish()) t.notify(0);
  };
  g.reap = () => {
    for (let tok = g.q.reap(); tok !== undefined; tok = g.q.reap()) {
      expect(g.reaped.has(tok)).toBe(false);
      const reply = new Uint8Array(g.q.lastLen);
      memory.read(REQ + tok * 8 + 4, reply);
      g.reaped.set(tok, [...reply]);
    }
  };
  return g;
}

/** Move the suspended device `g.device` to a fresh one over the same memory. */
function move(g: Guest, bytes: Uint8Array): HeldModel {
  const model = new HeldModel(g.model.features);
  g.device = restoreMmioDevice(bytes, model, { memory: g.memory, interrupt: () => g.irqs++ });
  g.model = model;
  return model;
}

describe.each([
  ["split", 0n],
  ["packed", featureMask(Feature.RING_PACKED)],
] as const)("suspend / save / restore on a %s ring", (_name, ring) => {
  it("completes every request exactly once when requests are still in the back-end at the save: they are served again by the new device", async () => {
    const g = guest(ring);
    for (let t = 0; t < 6; t++) g.post(t);
    g.kick();
    const old = g.model;
    expect(old.held).toHaveLength(6);
    // Two done before the stop, the newest first: on the packed ring their used descriptors
    // overwrite the first lists, still in flight, so only the device's copy describes them.
    old.release(2, true);
    for (let t = 6; t < 9; t++) g.post(t);
    await g.device.core.suspend();
    g.kick(); // the vCPU kicks once more before it stops: held, not delivered
    expect(old.held).toHaveLength(4);
    const bytes = saveMmioDevice(g.device);
    const held = old.held.slice();
    await g.device.core.abandon();
    // The old device forgot its 4 requests: whatever its back-end finishes late completes
    // nothing (the reset dropped them), so nothing completes twice.
    expect(old.held).toHaveLength(0);
    expect(held).toHaveLength(4);
    expect(g.device.core.status).toBe(0);
    const fresh = move(g, bytes);
    // Resumed: the 4 chains in flight come back first, then the 3 never popped.
    expect(fresh.held.map((h) => h.chain.readableBytes)).toEqual([4, 4, 4, 4, 4, 4, 4]);
    fresh.release();
    g.reap();
    expect([...g.reaped.keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    for (const [t, reply] of g.reaped) expect(reply).toEqual([t + 1, t + 1, t + 1, t + 1]);
    // The model's own state moved: 2 served before, 7 after.
    expect(fresh.served).toBe(9);
  });

  it("with drainTimeoutMs, lets the back-end finish what it holds before the save, so nothing is in flight in the state", async () => {
    const g = guest(ring);
    for (let t = 0; t < 3; t++) g.post(t);
    g.kick();
    setTimeout(() => g.model.release(), 5);
    await g.device.core.suspend({ drainTimeoutMs: 2000 });
    expect(g.device.core.inFlight).toBe(0);
    const state = g.device.core.saveState();
    expect(state.queues[0]!.inFlight).toEqual([]);
    g.reap();
    expect(g.reaped.size).toBe(3);
  });

  it("resume() in place after a cancelled move serves what arrived while suspended", async () => {
    const g = guest(ring);
    await g.device.core.suspend();
    g.post(0);
    g.kick();
    expect(g.model.held).toHaveLength(0);
    g.device.core.resume();
    expect(g.model.held).toHaveLength(1);
    g.model.release();
    g.reap();
    expect(g.reaped.get(0)).toEqual([1, 1, 1, 1]);
  });
});

describe("device state of a live device", () => {
  it("keeps the pending interrupt: the destination's line is raised again until the driver acknowledges (VIRTIO 1.3 §4.2.2)", async () => {
    const g = guest();
    g.post(0);
    g.kick();
    g.model.release();
    expect(g.device.core.interruptStatus & 1).toBe(1);
    await g.device.core.suspend();
    const bytes = saveMmioDevice(g.device);
    const before = g.irqs;
    move(g, bytes);
    expect(g.irqs).toBeGreaterThan(before);
    expect(g.device.read(MmioReg.INTERRUPT_STATUS, 4) & 1).toBe(1);
  });

  it("keeps the MMIO selector registers a driver may be using (QueueSel)", async () => {
    const g = guest();
    g.device.write(MmioReg.QUEUE_SEL, 4, 0);
    const maxBefore = g.device.read(MmioReg.QUEUE_NUM_MAX, 4);
    await g.device.core.suspend();
    move(g, saveMmioDevice(g.device));
    expect(g.device.read(MmioReg.QUEUE_NUM_MAX, 4)).toBe(maxBefore);
    expect(g.device.read(MmioReg.QUEUE_READY, 4)).toBe(1);
    expect(g.device.read(MmioReg.STATUS, 4)).toBe(
      DeviceStatus.ACKNOWLEDGE |
        DeviceStatus.DRIVER |
        DeviceStatus.FEATURES_OK |
        DeviceStatus.DRIVER_OK,
    );
  });

  it("holds kicks while suspended: the model sees none, and they are counted as ignored", async () => {
    const g = guest();
    await g.device.core.suspend();
    const ignored = g.device.core.stats.ignoredNotifies;
    g.post(0);
    g.kick();
    expect(g.model.held).toHaveLength(0);
    expect(g.device.core.stats.ignoredNotifies).toBe(ignored + 1);
  });

  it("refuses to save a device that is not suspended, with a RangeError", () => {
    const g = guest();
    expect(() => g.device.core.saveState()).toThrow(/suspended/);
    return expect(g.device.core.abandon()).rejects.toThrow(/suspended/);
  });

  it("refuses to restore into a device that is not fresh, with a RangeError", async () => {
    const g = guest();
    await g.device.core.suspend();
    const state = g.device.core.saveState();
    expect(() => g.device.core.restoreState(state)).toThrow(/fresh device/);
  });

  it("ends a suspension when the device is reset", async () => {
    const g = guest();
    await g.device.core.suspend();
    g.device.core.reset();
    expect(g.device.core.suspended).toBe(false);
  });
});

describe("a state that does not fit the destination", () => {
  async function savedState() {
    const g = guest();
    g.post(0);
    g.kick();
    await g.device.core.suspend();
    return { g, state: decodeDeviceState(saveMmioDevice(g.device)) };
  }

  function restoreInto(model: HeldModel, state: ReturnType<typeof decodeDeviceState>) {
    const core = new VirtioDeviceCore(model, { memory: createGuestMemory({ size: 0x10000 }) });
    try {
      core.restoreState(state);
    } catch (e) {
      return e;
    }
    return undefined;
  }

  it.each([
    ["another device type", (s: DeviceState): DeviceState => ({ ...s, deviceId: 9 }), "deviceId"],
    [
      "other offered features",
      (s: DeviceState): DeviceState => ({ ...s, offeredFeatures: s.offeredFeatures | 1n }),
      "offeredFeatures",
    ],
    ["another queue count", (s: DeviceState): DeviceState => ({ ...s, queues: [] }), "queues"],
    [
      "a legacy state into a modern device",
      (s: DeviceState): DeviceState => ({ ...s, legacy: true }),
      "legacy",
    ],
    [
      "a queue larger than this device's maximum",
      (s: DeviceState): DeviceState => ({ ...s, queues: [{ ...s.queues[0]!, size: 64 }] }),
      "queues[0].size",
    ],
    [
      "a ring position out of range",
      (s: DeviceState): DeviceState => ({
        ...s,
        queues: [{ ...s.queues[0]!, inFlight: [{ id: 99, descriptors: new Uint32Array(0) }] }],
      }),
      "queues[0].state",
    ],
  ])("refuses %s with DeviceStateMismatchError naming the field", async (_what, edit, field) => {
    const { state } = await savedState();
    const e = restoreInto(new HeldModel(featureMask(Feature.RING_INDIRECT_DESC)), edit(state));
    expect(e).toBeInstanceOf(DeviceStateMismatchError);
    expect((e as DeviceStateMismatchError).field).toBe(field);
    expect((e as DeviceStateMismatchError).code).toBe("device-state-mismatch");
  });

  it("refuses a configuration space that differs (another disk size) naming the byte", async () => {
    const { state } = await savedState();
    const e = restoreInto(new HeldModel(featureMask(Feature.RING_INDIRECT_DESC), 0x1235), state);
    expect(e).toMatchObject({ code: "device-state-mismatch", field: "config[0]" });
  });

  it("passes on the model's own typed error for model state it cannot parse", async () => {
    const { state } = await savedState();
    const e = restoreInto(new HeldModel(featureMask(Feature.RING_INDIRECT_DESC)), {
      ...state,
      model: Uint8Array.of(1, 2, 3),
    });
    expect(e).toMatchObject({ code: "test-bad-model-state" });
  });

  it("refuses MMIO transport registers of the wrong size as a mismatch", async () => {
    const { g } = await savedState();
    const state = g.device.core.saveState(new Uint8Array(7));
    expect(() =>
      restoreMmioDevice(encodeDeviceState(state), new HeldModel(g.model.features), {
        memory: g.memory,
      }),
    ).toThrow(DeviceStateMismatchError);
  });
});
